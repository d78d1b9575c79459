"""A subject's output folder: ``results.zarr`` as plain xarray reads it (the results schema).

Two small synthetic subjects, one with ROIs and one without, run end to end
(:func:`roidask.runner.run_subject`); their ``results.zarr`` is read back by
xarray alone (in a subprocess that never imports roidask) and compared with the
NIfTI and TSV files beside it.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import xarray as xr
from helpers.results import assert_matches_outputs, assert_results_schema, run_plain_reader, schema

from roidask.exceptions import EmptyMaskWarning
from roidask.pipeline import PipelineParams
from roidask.runner import run_subject

SHAPE = (16, 20, 12)
N_VOLUMES = 726


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Output folders ``rois`` (>= 2 ROIs) and ``none`` (0 ROIs) and their ROI counts."""
    from roidask.datasets import make_synthetic_subject

    root = tmp_path_factory.mktemp("writer")
    subjects = {
        "rois": make_synthetic_subject(
            root / "data-rois", shape=SHAPE, n_volumes=N_VOLUMES, effect_pct=3.0, seed=2
        ),
        "none": make_synthetic_subject(  # no face/house effect: nothing passes threshold 5
            root / "data-none", shape=SHAPE, n_volumes=N_VOLUMES, effect_pct=0.0, seed=5
        ),
    }
    out = {}
    for name, s in subjects.items():
        kwargs = dict(bold=[s.bold], labels=[s.labels], store=None, subject=None)
        with pytest.warns(EmptyMaskWarning) if name == "none" else contextlib.nullcontext():
            result = run_subject(
                **kwargs, mask=s.mask_vt, out=root / name, params=PipelineParams(), plots=False
            )
        out[name] = (root / name, result.n_rois)
    assert out["rois"][1] >= 2 and out["none"][1] == 0
    return out


@pytest.mark.parametrize("name", ["rois", "none"])
def test_results_zarr_schema_and_values(outputs, name):
    folder, n_rois = outputs[name]
    with xr.open_zarr(folder / "results.zarr", chunks=None) as ds:
        assert_results_schema(ds, n_rois=n_rois)
        assert_matches_outputs(ds, folder)
        assert ds.attrs["fwhm_mm"] == 6.0 and ds.attrs["contrast"] == ["face", "house"]
        assert ds.attrs["tr_s"] == 2.5 and ds.attrs["threshold"] == 5.0
        assert ds.attrs["keep_largest"] is None
        assert ds["signals"].attrs["long_name"].startswith("mean over the ROI")
        assert ds["roi_volume_mm3"].attrs["units"] == "mm3"


def test_zero_roi_schema_is_the_same(outputs):
    """One schema whatever the ROI count: 0 ROIs give a roi dimension of size 0."""
    with (
        xr.open_zarr(outputs["rois"][0] / "results.zarr", chunks=None) as with_rois,
        xr.open_zarr(outputs["none"][0] / "results.zarr", chunks=None) as without,
    ):
        assert schema(without) == schema(with_rois)
        assert without.sizes["roi"] == 0 and without["signals"].shape == (0, N_VOLUMES)
        assert without["roi_n_voxels"].dtype == np.int64


def test_plain_xarray_reads_results_zarr(outputs):
    """groupby, string coordinates and selection with xarray alone (roidask not imported)."""
    path = outputs["rois"][0] / "results.zarr"
    out = run_plain_reader(
        f"""
        import numpy as np
        import xarray as xr

        path = {str(path)!r}
        eager = [
            xr.open_datatree(path, engine="zarr").to_dataset(),
            xr.open_zarr(path, chunks=None),
        ]
        for ds in eager:
            means = ds["signals"].groupby("condition").mean()
            assert means.dims == ("roi", "condition"), means.dims
            assert "face" in means["condition"].values.astype(str)
            conditions = ds["condition"].values.astype(str)  # numpy strings, not StringDType
            assert ds["condition"].dtype.kind == "U", ds["condition"].dtype
            face = ds["signals"].sel(time=ds["condition"] == "face")
            assert face.sizes["time"] == int((conditions == "face").sum()) > 0
            assert ds.sel(x=3)["logp"].dims == ("y", "z")
            assert float(ds["x_mm"][1] - ds["x_mm"][0]) == ds.attrs["voxel_size_mm"][0]

        # xr.open_zarr's default (chunks={{}}) makes every non-index coordinate a dask
        # array, and xarray refuses to group by one: load them first (README).
        lazy = xr.open_zarr(path)
        try:
            lazy["signals"].groupby("condition").mean()
        except ValueError as exc:
            assert "UniqueGrouper" in str(exc), exc
        else:
            raise AssertionError("xarray now groups by a dask coordinate: update the README")
        loaded = lazy["signals"].load().groupby("condition").mean()
        np.testing.assert_array_equal(
            loaded, eager[1]["signals"].groupby("condition").mean()
        )
        print("conditions:", len(loaded["condition"]))
        """
    )
    assert "conditions: 9" in out
