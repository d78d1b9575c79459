"""Shared fixtures and helpers for the roidask test suite."""

from __future__ import annotations

import os

import matplotlib
import nibabel as nib
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
def haxby_outputs(haxby, tmp_path_factory):
    """``roidask run`` on the Haxby slice: its output folder ``.../sub-01``, beside a study
    store ``study.zarr`` holding the same results as its published node ``sub-01``.

    Shared: tests damage copies, never these.
    """
    import xarray as xr

    from roidask.cli import main
    from roidask.outputs.study import prepare_study, publish, write_node

    out = tmp_path_factory.mktemp("haxby-outputs") / "sub-01"
    argv = ["run", str(haxby.bold), "--labels", str(haxby.labels), "--mask", str(haxby.mask)]
    assert main([*argv, "--out", str(out), "--no-plots", "--quiet"]) == 0
    study = prepare_study(out.parent / "study.zarr")
    write_node(study, "sub-01", xr.open_zarr(str(out / "results.zarr")).load(),
               attrs={"subject": "01"})  # fmt: skip
    publish(study, "sub-01")
    return out


@pytest.fixture(scope="session")
def seed_maps(haxby):
    """nilearn's example on the Haxby slice (tests/helpers/seed.py): maps, atlas, signals."""
    from helpers.seed import seed_pipeline

    return seed_pipeline(str(haxby.bold), str(haxby.labels), str(haxby.mask))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def haxby_img(haxby):
    img = nib.load(haxby.bold)
    return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)


@pytest.fixture(scope="session")
def seed_rois(seed_maps, haxby_arrays):
    """The seed pipeline's 5 face-vs-house ROIs, built with nilearn and scipy."""
    assert seed_maps["n_labels"] == 5
    return nib.Nifti1Image(seed_maps["atlas"].astype(np.int32), haxby_arrays[1])


@pytest.fixture
def fake_terminal(monkeypatch):
    """Make roidask believe stderr is a terminal, so that it draws its progress bars."""
    from roidask import _progress

    monkeypatch.setattr(_progress, "on_terminal", lambda stream=None: True)


@pytest.fixture(scope="session", autouse=True)
def _close_nifti_handles():
    """Close the NIfTI read handles this process cached (no ResourceWarning at exit)."""
    yield
    from roidask.io.nifti import close_handles

    close_handles()
