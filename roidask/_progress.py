"""A minimal terminal progress bar (stderr) for loops roidask drives itself."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """Print ``label [#####     ] 50% 1.2 s`` to stderr, throttled to ~10 updates/s.

    Parameters
    ----------
    total : int
        Units of work (volumes, bytes, ...).
    label : str
        Text before the bar.
    enabled : bool
        When false nothing is printed (library default; the CLI enables it).
    """

    def __init__(self, total: int, label: str, *, enabled: bool = True, width: int = 30):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.width = width
        self.done = 0
        self._start = time.perf_counter()
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * self.width)
            sys.stderr.write(
                f"\r{self.label} [{bar:<{self.width}}] {frac:4.0%} {now - self._start:5.1f} s"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
