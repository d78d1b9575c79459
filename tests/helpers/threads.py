"""Calls run side by side in threads, all of them past a given point before any goes on:
races between commands (two converts into one store) made deterministic in one process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def at_once(monkeypatch, module: Any, meet_at: str, calls: list[Callable[[], Any]]) -> list:
    """Run each call in its own thread; every thread waits at ``module.meet_at`` (a
    function the calls reach, patched) until all have reached it. Returns each call's
    result, or the exception it raised."""
    barrier = threading.Barrier(len(calls), timeout=60)
    real = getattr(module, meet_at)

    def meet(*args, **kwargs):
        barrier.wait()
        return real(*args, **kwargs)

    results: list = [None] * len(calls)

    def work(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    with monkeypatch.context() as patch:
        patch.setattr(module, meet_at, meet)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return results
