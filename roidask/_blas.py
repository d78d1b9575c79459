"""BLAS on one thread while roidask computes, so the bits of its products never vary.

Multi-threaded BLAS (OpenBLAS) splits a matrix product differently with its
number of threads, so the last bits of :func:`roidask.ops.smooth.smooth_array`
would depend on it (and on how busy BLAS is): a run on a cluster and on 1 or 2
threads would differ. dask's threads are roidask's parallelism, so each product
runs on one BLAS thread: :func:`roidask.pipeline.compute` holds this limit while
dask computes in this process (its threads and an in-process cluster's inherit
it); ``distributed``'s nannies start worker processes with
``OPENBLAS_NUM_THREADS=1`` (its default ``pre-spawn-environ``).

The limit is process-wide (OpenBLAS has no per-thread setting that threadpoolctl
uses) and reference-counted: set when the first caller enters, restored to the
caller's setting when the last one leaves. It must be taken by the thread that
submits the computation, not inside tasks: a limit set from a task's thread is
not seen reliably by OpenBLAS once another thread has set one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

__all__ = ["one_blas_thread"]

_lock = threading.Lock()
_users = 0
_limit: threadpool_limits | None = None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Context in which BLAS uses one thread (nestable, from several threads)."""
    global _users, _limit
    with _lock:
        if _users == 0:
            _limit = threadpool_limits(limits=1, user_api="blas")
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _limit is not None:
                _limit.restore_original_limits()
                _limit = None
