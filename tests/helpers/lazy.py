"""Laziness checks: fail if dask computes, or NIfTI voxel data is read, while building graphs."""

from __future__ import annotations

import contextlib

import dask


class CountingScheduler:
    """A dask scheduler that counts computes and fails past ``max_computes``."""

    def __init__(self, max_computes: int = 0):
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"too many dask computations: {self.total_computes} > {self.max_computes}"
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def voxel_reads():
    """Yield a list that records the path of every NIfTI voxel read inside the block
    (``NiftiSource.read`` and ``iter_blocks``, whatever thread reads)."""
    from roidask.io import nifti

    reads: list = []
    original_read, original_iter = nifti.NiftiSource.read, nifti.NiftiSource.iter_blocks

    def counting_read(self, *args, **kwargs):
        reads.append(self.path)
        return original_read(self, *args, **kwargs)

    def counting_iter(self, *args, **kwargs):
        reads.append(self.path)
        return original_iter(self, *args, **kwargs)

    nifti.NiftiSource.read = counting_read
    nifti.NiftiSource.iter_blocks = counting_iter
    try:
        yield reads
    finally:
        nifti.NiftiSource.read = original_read
        nifti.NiftiSource.iter_blocks = original_iter


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0):
    """Fail if dask computes more than ``max_computes`` times inside the block,
    and fail if any NIfTI voxel data is read (graph building must be lazy)."""
    scheduler = CountingScheduler(max_computes)
    with voxel_reads() as reads, dask.config.set(scheduler=scheduler):
        yield scheduler
    if max_computes == 0 and reads:
        raise AssertionError(f"voxel data was read while building a graph: {reads}")
