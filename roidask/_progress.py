"""Terminal progress bars (stderr), shown only when stderr is a terminal.

Redirected output (a log file, a batch job's output) gets no bar: carriage
returns and escape codes would fill it. Callers that want plain lines in logs
print them themselves.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from dask.diagnostics import ProgressBar

__all__ = ["Progress", "dask_progress", "on_terminal", "plural"]


def plural(n, word: str) -> str:
    """``n`` and ``word``, with an ``s`` unless ``n`` is 1: "1 ROI", "3 ROIs", "? ROIs"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def on_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Print ``label [#####     ] 50% 1.2 s`` to stderr, throttled to ~10 updates/s.

    Parameters
    ----------
    total : int
        Units of work (volumes, bytes, ...).
    label : str
        Text before the bar.
    enabled : bool
        When false nothing is printed (the library default; the CLI enables it).
        A bar is only ever drawn on a terminal.
    """

    def __init__(self, total: int, label: str, *, enabled: bool = True, width: int = 30):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = bool(enabled) and on_terminal()
        self.width = width
        self.done = 0
        self.note = ""
        self._start = time.perf_counter()
        self._last = 0.0
        self._drawn = 0  # characters of the bar on screen

    def update(self, n: int, *, note: str | None = None) -> None:
        """Add ``n`` units done; ``note`` (if given) replaces the text after the bar."""
        self.done += n
        if note is not None:
            self.note = note
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * self.width)
        text = f"{self.label} [{bar:<{self.width}}] {frac:4.0%} {now - self._start:5.1f} s"
        if self.note:
            text += f" {self.note}"
        # spaces over what a longer previous line left
        sys.stderr.write(f"\r{text}{' ' * max(self._drawn - len(text), 0)}")
        sys.stderr.flush()
        self._drawn = len(text)

    def write(self, line: str) -> None:
        """Print ``line`` on its own line above the bar (drawn again below it)."""
        if not self.enabled:
            return
        sys.stderr.write(f"\r{line}{' ' * max(self._drawn - len(line), 0)}\n")
        self._drawn = 0
        self._draw(time.perf_counter())

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def dask_progress(enabled: bool) -> Iterator[None]:
    """dask's own bar for a local (threaded) compute, on a terminal only."""
    if not (enabled and on_terminal()):
        yield
        return
    with ProgressBar(out=sys.stderr, minimum=0.5):
        yield
