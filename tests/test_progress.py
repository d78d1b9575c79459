"""Progress bars: drawn on a terminal only, never into logs."""

from __future__ import annotations

import subprocess
import sys

from roidask import _progress
from roidask._progress import Progress, plural


def test_no_bar_when_stderr_is_not_a_terminal(capsys):
    with Progress(10, "work") as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""


def test_bar_on_a_terminal(capsys, fake_terminal):
    with Progress(10, "work") as bar:
        bar.update(10)
    err = capsys.readouterr().err
    assert err.startswith("\rwork [") and "100%" in err and err.endswith("\n")


def test_disabled_bar_prints_nothing_even_on_a_terminal(capsys, fake_terminal):
    with Progress(10, "work", enabled=False) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""


def test_on_terminal_follows_isatty():
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    assert _progress.on_terminal(Stream(True)) and not _progress.on_terminal(Stream(False))
    assert not _progress.on_terminal(object())  # no isatty at all


def test_run_log_has_no_escape_codes(haxby, tmp_path):
    """`roidask run` with stderr redirected to a file: no carriage return, no escape code."""
    proc = subprocess.run(
        [sys.executable, "-m", "roidask.cli", "run", str(haxby.bold), "--labels",
         str(haxby.labels), "--mask", str(haxby.mask), "--out", str(tmp_path / "out"),
         "--no-plots"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr


def test_plural():
    assert [plural(n, "ROI") for n in (0, 1, 2, "?")] == ["0 ROIs", "1 ROI", "2 ROIs", "? ROIs"]
