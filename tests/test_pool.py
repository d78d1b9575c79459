"""thread_pool: its exit waits for the tasks, except after an interruption (Ctrl-C,
SIGTERM), when queued tasks are cancelled and running ones get INTERRUPT_WAIT_S."""

from __future__ import annotations

import threading
import time

import pytest

from roidask import _pool
from roidask._pool import thread_pool


def test_the_tasks_are_waited_for_after_success_and_errors():
    done = []
    with thread_pool(2) as pool:
        pool.submit(lambda: (time.sleep(0.3), done.append(1)))
    assert done == [1]
    release = threading.Event()
    with pytest.raises(RuntimeError), thread_pool(1) as pool:
        pool.submit(lambda: (release.wait(5), done.append(2)))
        queued = pool.submit(done.append, 3)
        release.set()
        raise RuntimeError("a failed write")
    assert done == [1, 2] and queued.cancelled()  # the running one ended, the queued went


def test_an_interruption_does_not_wait_for_long_tasks(monkeypatch):
    monkeypatch.setattr(_pool, "INTERRUPT_WAIT_S", 0.5)
    stop = threading.Event()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), thread_pool(1) as pool:
        running = pool.submit(stop.wait, 30)
        queued = pool.submit(stop.wait, 30)
        raise KeyboardInterrupt
    assert time.monotonic() - started < 5  # not 30 s: the command stops now
    assert queued.cancelled() and not running.done()
    stop.set()
