"""The command line: convert and info, and one-line errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from roidask.cli import main
from roidask.io import open_subject


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "roidask.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_convert_and_info(haxby, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    rc = main(
        [
            "convert",
            str(haxby.bold),
            "--labels",
            str(haxby.labels),
            "--out",
            str(store),
            "--subject",
            "subj1",
            "--chunks",
            "x=10,time=500",
            "--mask",
            str(haxby.mask),
        ]
    )
    assert rc == 0
    ds = open_subject(store, "subj1")
    assert ds["bold"].chunks[0] == (10, 10, 10, 10)
    assert "mask" in ds
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "subj1" in out and "40x20x1x1452 int16" in out
    assert "face (108)" in out and "rest (588)" in out and "runs: 12" in out


def test_errors_are_one_line_without_traceback(haxby, tmp_path):
    store = tmp_path / "s.zarr"
    short = tmp_path / "labels.txt"
    short.write_text("labels chunks\nface 0\n")
    proc = run_cli("convert", haxby.bold, "--labels", short, "--out", store)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("roidask: error:")]
    assert len(lines) == 1 and "1 label rows but the BOLD data has 1452 volumes" in lines[0]
    assert not store.exists()


def test_existing_store_needs_overwrite(haxby, tmp_path):
    store = tmp_path / "s.zarr"
    assert (
        main(
            [
                "convert",
                str(haxby.bold),
                "--labels",
                str(haxby.labels),
                "--out",
                str(store),
                "--quiet",
            ]
        )
        == 0
    )
    proc = run_cli("convert", haxby.bold, "--labels", haxby.labels, "--out", store)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    proc = run_cli(
        "convert",
        haxby.bold,
        "--labels",
        haxby.labels,
        "--out",
        store,
        "--overwrite",
        "--tr",
        "2.0",
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(open_subject(store)["time"].values[:3], [0.0, 2.0, 4.0])


def test_cli_limits_malloc_arenas(monkeypatch):
    import sys

    from roidask._malloc import limit_malloc_arenas

    if sys.platform.startswith("linux"):
        assert limit_malloc_arenas() is True  # glibc's mallopt accepted the setting
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the user's own setting wins
