"""Checks of a subject's results Dataset (results.zarr, a study node) against its files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import xarray as xr

from roidask.outputs.writer import OUTPUT_FILES

#: A subject folder's data files, compared byte for byte across ways of running it.
DATA_FILES = tuple(f for f in OUTPUT_FILES if f not in ("results.zarr", "provenance.json"))

MAPS = {
    "mean_epi": np.float32,
    "tstat": np.float32,
    "logp": np.float32,
    "roi_mask": np.uint8,
    "dilated_mask": np.uint8,
    "atlas": np.int32,
}
ROI_VARIABLES = (
    "roi_n_voxels",
    "roi_volume_mm3",
    "roi_com_x_mm",
    "roi_com_y_mm",
    "roi_com_z_mm",
    "roi_peak_x_mm",
    "roi_peak_y_mm",
    "roi_peak_z_mm",
    "roi_peak_value",
    "roi_mean_value",
)
PARAMETER_ATTRS = (
    "contrast",
    "fwhm_mm",
    "test",
    "clip",
    "threshold",
    "dilation_iterations",
    "connectivity",
    "min_roi_voxels",
    "keep_largest",
    "strategy",
    "tr_s",
    "n_rois",
    "affine",
    "voxel_size_mm",
    "xyz_units",
)


def schema(ds: xr.Dataset) -> dict:
    """What must not depend on the data: names, dims, dtypes, attribute names and units."""
    return {
        "variables": {
            name: (var.dims, str(var.dtype), var.attrs.get("units"), sorted(var.attrs))
            for name, var in ds.data_vars.items()
        },
        "coords": {
            name: (var.dims, var.dtype.kind, var.attrs.get("units"))
            for name, var in ds.coords.items()
        },
        "attrs": sorted(ds.attrs),
    }


def assert_results_schema(ds: xr.Dataset, *, n_rois: int) -> None:
    """The results schema of ``roidask.pipeline.results_dataset``, as plain xarray reads it."""
    assert set(ds.data_vars) == {*MAPS, "signals", *ROI_VARIABLES}
    for name, dtype in MAPS.items():
        assert ds[name].dims == ("x", "y", "z") and ds[name].dtype == dtype, name
    for dim in ("x", "y", "z"):
        assert ds[dim].dtype == np.int64 and ds.indexes[dim].equals(pd.RangeIndex(ds.sizes[dim]))
        assert ds[f"{dim}_mm"].dims == (dim,) and ds[f"{dim}_mm"].attrs["units"] == "mm"
    assert ds["signals"].dims == ("roi", "time") and ds.sizes["roi"] == n_rois
    assert ds["roi"].dtype == np.int64 and ds["time"].dtype == np.float64
    assert ds["time"].attrs["units"] == "s"
    assert ds["condition"].dims == ("time",) and ds["condition"].dtype.kind == "U"
    assert ds["run"].dtype == np.int64 and ds["volume"].dtype == np.int64
    assert ds["roi_n_voxels"].dtype == np.int64
    assert "n_voxels" not in ds.variables and "roi_label" not in ds.variables
    # long_name on every variable, units on every one that is not text (as the README says)
    for name, var in ds.variables.items():
        assert "long_name" in var.attrs, name
        assert ("units" in var.attrs) == (var.dtype.kind not in "UOT"), name
    for key in PARAMETER_ATTRS:
        assert key in ds.attrs, key
    assert isinstance(ds.attrs["contrast"], list)
    assert np.asarray(ds.attrs["affine"]).shape == (4, 4)
    assert ds.attrs["n_rois"] == n_rois
    assert "params" not in ds.attrs  # no JSON to parse


def assert_matches_outputs(ds: xr.Dataset, folder: Path) -> None:
    """``ds`` holds the numbers of the subject's NIfTI and TSV files in ``folder``."""
    for name in set(MAPS) - {"dilated_mask"}:  # the folder has no dilated_mask.nii.gz
        img = nib.load(folder / f"{name}.nii.gz")
        assert np.array_equal(np.asarray(img.dataobj), ds[name].values), name
        np.testing.assert_allclose(ds.attrs["affine"], img.affine, rtol=0, atol=1e-6)
    affine = np.asarray(ds.attrs["affine"])
    for axis, dim in enumerate(("x", "y", "z")):
        want = affine[axis, axis] * ds[dim].values + affine[axis, 3]
        np.testing.assert_allclose(ds[f"{dim}_mm"].values, want, rtol=0, atol=1e-9)
    signals = pd.read_csv(folder / "signals.tsv", sep="\t", keep_default_na=False)
    tidy = ds["signals"].to_dataframe().reset_index()
    assert len(tidy) == len(signals)
    assert tidy["roi"].tolist() == signals["roi"].tolist()
    assert tidy["condition"].astype(str).tolist() == signals["condition"].tolist()
    assert tidy["run"].tolist() == signals["run"].tolist()
    assert tidy["volume"].tolist() == signals["volume"].tolist()
    for ours, theirs, rtol in (("time", "time_s", 1e-9), ("signals", "value", 1e-8)):
        np.testing.assert_allclose(  # %.9g in the TSV
            tidy[ours].to_numpy(float), signals[theirs].to_numpy(float), rtol=rtol
        )
    rois = pd.read_csv(folder / "rois.tsv", sep="\t")
    assert ds["roi"].values.tolist() == rois["label"].tolist()
    assert ds.attrs["n_rois"] == len(rois)
    for column in rois.columns.drop("label"):
        atol = 6e-4 if column.endswith(("_mm", "_mm3")) else 0  # rounded to a micrometre
        np.testing.assert_allclose(
            ds[f"roi_{column}"].values, rois[column].to_numpy(float), rtol=1e-8, atol=atol
        )
    prov = json.loads((folder / "provenance.json").read_text())
    assert ds.attrs["n_rois"] == prov["n_rois"]
    assert ds.attrs["contrast"] == prov["parameters"]["contrast"]
    assert ds.attrs["fwhm_mm"] == prov["parameters"]["fwhm"]


def run_plain_reader(code: str, *, timeout: float = 120) -> str:
    """Run ``code`` in a fresh Python (xarray only) and check it never imported roidask.

    ``code`` reads stores with plain xarray/zarr/pandas; warnings are errors. The
    subprocess inherits PYTHONPATH, so roidask *could* be imported: the check is that
    nothing (no xarray backend entry point, no codec) imports it.
    """
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import sys
        loaded = sorted(m for m in sys.modules if m == "roidask" or m.startswith("roidask."))
        assert not loaded, loaded
        print("roidask imported: no")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "roidask imported: no" in proc.stdout
    return proc.stdout
