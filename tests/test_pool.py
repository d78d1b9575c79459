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
    started, release = threading.Event(), threading.Event()

    def first():
        started.set()
        release.wait(30)
        done.append(2)

    with pytest.raises(RuntimeError), thread_pool(1) as pool:
        pool.submit(first)
        queued = pool.submit(done.append, 3)
        assert started.wait(30)  # the first runs, the second waits for the one thread
        threading.Timer(0.5, release.set).start()  # ends after the queued one is cancelled
        raise RuntimeError("a failed write")
    assert done == [1, 2] and queued.cancelled()  # the running one ended, the queued went


def test_an_interruption_does_not_wait_for_long_tasks(monkeypatch):
    monkeypatch.setattr(_pool, "INTERRUPT_WAIT_S", 0.5)
    started, stop = threading.Event(), threading.Event()

    def long_task():
        started.set()
        stop.wait(30)

    begin = time.monotonic()
    with pytest.raises(KeyboardInterrupt), thread_pool(1) as pool:
        running = pool.submit(long_task)
        queued = pool.submit(stop.wait, 30)
        assert started.wait(30)
        raise KeyboardInterrupt
    assert time.monotonic() - begin < 10  # not 30 s: the command stops now
    assert queued.cancelled() and not running.done()
    stop.set()
