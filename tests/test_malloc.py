"""glibc malloc settings of roidask's processes and of the dask workers running subjects."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

# Faults of 20 buffers of 8 MiB, each filled then freed, before and after
# reuse_freed_buffers(), in a process started as distributed's nannies start workers.
CODE = """
import ctypes
import resource
import numpy as np
from roidask._malloc import reuse_freed_buffers

# page faults counted per 4 KiB page: no transparent huge pages (PR_SET_THP_DISABLE)
ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0)

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        buffer = np.ones(2**20)  # 8 MiB
        del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

mapped = faults()
assert reuse_freed_buffers() is True
faults()  # the first buffer from the heap is faulted in once
print(mapped, faults())
"""


def test_a_worker_reuses_freed_buffers():
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}  # as a nanny starts a worker
    proc = subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    mapped, reused = map(int, proc.stdout.split())
    pages = 20 * 8 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert mapped >= pages // 8  # every buffer mapped and faulted in again
    assert reused <= pages // 100  # the same heap memory, reused
