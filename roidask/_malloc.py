"""Bound the memory glibc keeps for threads (Linux/glibc only).

glibc gives threads their own malloc arenas (up to 8 per core) and keeps the
blocks freed in an arena for reuse. A process in which dask's and zarr's thread
pools decode and free 10-50 MB chunks ends up holding, per arena, buffers it no
longer uses: ~420 MB peak for a run whose live data never exceeds ~150 MB.
Limiting the process to two arenas keeps the reuse (no page faults for every
new buffer, which returning each freed buffer to the OS would cost: ~1 s per
subject, measured) and brings the peak to ~290 MB. The ``roidask`` command sets
it for its own process with ``mallopt``; importing the library changes nothing.

A dask worker that runs whole subjects of a batch gets the same treatment
(:func:`reuse_freed_buffers`): distributed's nannies start workers with
``MALLOC_TRIM_THRESHOLD_=65536``, which also turns off glibc's dynamic mmap
threshold, so that every buffer above 128 KiB is mapped, faulted in page by page
and unmapped again: ~1 s of system time per seed-shaped subject (1 s instead of
0.3 s; measured).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MALLOC_ARENAS", "MMAP_THRESHOLD_BYTES", "limit_malloc_arenas", "reuse_freed_buffers"]

#: mallopt parameters M_TRIM_THRESHOLD, M_MMAP_THRESHOLD and M_ARENA_MAX (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Arenas the ``roidask`` process may use.
MALLOC_ARENAS = 2
#: Buffers up to this size come from (and return to) the heap in a worker running
#: subjects: the limit glibc's own dynamic threshold reaches on 64-bit Linux.
MMAP_THRESHOLD_BYTES = 32 * 2**20


def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def limit_malloc_arenas() -> bool:
    """Limit glibc to :data:`MALLOC_ARENAS` malloc arenas; True if it was set.

    Does nothing (False) off Linux/glibc, or when the user set
    ``MALLOC_ARENA_MAX`` themselves.
    """
    mallopt = _mallopt()
    if mallopt is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return mallopt(_M_ARENA_MAX, MALLOC_ARENAS) == 1


def reuse_freed_buffers() -> bool:
    """Keep freed buffers of up to :data:`MMAP_THRESHOLD_BYTES` for reuse, in few arenas.

    For a dask worker process running whole subjects of a batch: sets the mmap
    threshold to :data:`MMAP_THRESHOLD_BYTES` and the trim threshold to twice
    that (what glibc reaches by itself unless ``MALLOC_TRIM_THRESHOLD_`` is set,
    as distributed's nannies do), and limits the arenas as
    :func:`limit_malloc_arenas`. Memory stays bounded: a freed buffer is reused by
    the next one, and the heap top is returned beyond the trim threshold. True if
    the thresholds were set; nothing happens off Linux/glibc.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    done = mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES) == 1 and done
    limit_malloc_arenas()
    return done
