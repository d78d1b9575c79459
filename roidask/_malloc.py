"""Bound the memory glibc keeps for threads (Linux/glibc only).

glibc gives threads their own malloc arenas (up to 8 per core) and keeps the
blocks freed in an arena for reuse. A process in which dask's and zarr's thread
pools decode and free 10-50 MB chunks ends up holding, per arena, buffers it no
longer uses: ~420 MB peak for a run whose live data never exceeds ~150 MB.
Limiting the process to two arenas keeps the reuse (no page faults for every
new buffer, which returning each freed buffer to the OS would cost: ~1 s per
subject, measured) and brings the peak to ~290 MB. The ``roidask`` command sets
it for its own process with ``mallopt``; importing the library changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MALLOC_ARENAS", "limit_malloc_arenas"]

#: mallopt parameter M_ARENA_MAX (glibc malloc.h).
_M_ARENA_MAX = -8
#: Arenas the ``roidask`` process may use.
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> bool:
    """Limit glibc to :data:`MALLOC_ARENAS` malloc arenas; True if it was set.

    Does nothing (False) off Linux/glibc, or when the user set
    ``MALLOC_ARENA_MAX`` themselves.
    """
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_ARENA_MAX, MALLOC_ARENAS) == 1
