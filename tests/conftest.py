"""Shared fixtures and helpers for the roidask test suite."""

from __future__ import annotations

import contextlib
import os

import dask
import matplotlib
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

matplotlib.use("Agg")

settings.register_profile(
    "roidask",
    deadline=None,
    max_examples=int(os.environ.get("ROIDASK_HYPOTHESIS_EXAMPLES", "25")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.load_profile("roidask")


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
def raise_if_dask_computes(max_computes: int = 0):
    """Fail if dask computes more than ``max_computes`` times inside the block,
    and fail if any NIfTI voxel data is read (graph building must be lazy)."""
    from roidask.io import nifti

    reads = []
    original_read, original_iter = nifti.NiftiSource.read, nifti.NiftiSource.iter_blocks

    def counting_read(self, *args, **kwargs):
        reads.append(self.path)
        return original_read(self, *args, **kwargs)

    def counting_iter(self, *args, **kwargs):
        reads.append(self.path)
        return original_iter(self, *args, **kwargs)

    scheduler = CountingScheduler(max_computes)
    nifti.NiftiSource.read = counting_read
    nifti.NiftiSource.iter_blocks = counting_iter
    try:
        with dask.config.set(scheduler=scheduler):
            yield scheduler
    finally:
        nifti.NiftiSource.read = original_read
        nifti.NiftiSource.iter_blocks = original_iter
    if max_computes == 0 and reads:
        raise AssertionError(f"voxel data was read while building a graph: {reads}")


@pytest.fixture(scope="session")
def haxby():
    """Paths of the real Haxby 2001 slice bundled with roidask."""
    from roidask.datasets import haxby_slice

    return haxby_slice()


@pytest.fixture(scope="session")
def haxby_bold(haxby):
    """The Haxby slice as a lazy BOLD DataArray with conditions and runs."""
    from roidask.io import bold_from_nifti

    return bold_from_nifti(haxby.bold, labels=haxby.labels)


@pytest.fixture(scope="session")
def haxby_arrays(haxby):
    """(data float64 (40, 20, 1, 1452), affine, conditions) as nibabel/pandas read them."""
    import nibabel as nib
    import pandas as pd

    img = nib.load(haxby.bold)
    labels = pd.read_csv(haxby.labels, sep=" ")
    return img.get_fdata(), img.affine, labels["labels"].to_numpy()


@pytest.fixture(scope="session")
def seed_maps(haxby):
    """nilearn's example on the Haxby slice (tests/seed_reference.py): maps, atlas, signals."""
    from seed_reference import seed_pipeline

    return seed_pipeline(str(haxby.bold), str(haxby.labels), str(haxby.mask))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
