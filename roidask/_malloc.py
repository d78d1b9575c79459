"""Return freed memory to the operating system promptly (glibc only).

glibc keeps freed blocks of a few MB in per-thread arenas and raises its mmap
threshold after large frees, so a process that decodes and frees many 10-50 MB
chunks from several threads holds on to hundreds of MB it no longer uses.
``dask.distributed`` sets ``MALLOC_TRIM_THRESHOLD_=65536`` for its workers for
the same reason; the ``roidask`` command does the equivalent for its own
process with ``mallopt`` (a library import changes nothing).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["trim_freed_memory"]

#: mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Bytes: free memory above this at the top of the heap is returned to the OS, and
#: allocations of at least this size get their own mapping (unmapped when freed).
TRIM_THRESHOLD_BYTES = 64 * 1024


def trim_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds to 64 KiB; True if they were set.

    Does nothing (False) off Linux/glibc, or when the user set
    ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_MMAP_THRESHOLD_`` themselves.
    """
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return ok and mallopt(_M_MMAP_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
