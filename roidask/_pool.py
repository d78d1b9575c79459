"""Thread pools that never hold up an interruption for long.

``with ThreadPoolExecutor(...)`` waits for its running tasks when the block ends, also
when it ends by Ctrl-C or SIGTERM (a :class:`KeyboardInterrupt`): a command writing
its outputs would then ignore the interruption until every write is done. Every
pool roidask's commands wait on is :func:`thread_pool`, whose exit waits for its
tasks after success or an error (files are closed before the caller cleans up), and
after an interruption cancels what is queued and gives the running tasks at most
:data:`INTERRUPT_WAIT_S` seconds: usually enough for a write to end before the
caller removes its temporary output, never long enough to hold the command; what
still runs then ends with the process.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

__all__ = ["INTERRUPT_WAIT_S", "thread_pool"]

#: Seconds the running tasks of a pool get to end after an interruption.
INTERRUPT_WAIT_S = 2.0


class _Pool(ThreadPoolExecutor):
    """A ThreadPoolExecutor that knows its futures (to wait for them a bounded time)."""

    def __init__(self, max_workers: int, name: str):
        super().__init__(max_workers, thread_name_prefix=name)
        self.futures: weakref.WeakSet[Future] = weakref.WeakSet()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future = super().submit(fn, *args, **kwargs)
        self.futures.add(future)
        return future


@contextlib.contextmanager
def thread_pool(max_workers: int, name: str = "roidask") -> Iterator[ThreadPoolExecutor]:
    """A thread pool shut down when the block ends: waiting for its tasks, except after an
    interruption (see the module).

    Parameters
    ----------
    max_workers : int
        Threads of the pool.
    name : str
        Prefix of the threads' names.

    Yields
    ------
    concurrent.futures.ThreadPoolExecutor
    """
    pool = _Pool(max_workers, name)
    try:
        yield pool
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        wait(list(pool.futures), timeout=INTERRUPT_WAIT_S)
        raise
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
