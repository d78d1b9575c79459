"""The group level of a batch: a second-level test over the subjects' maps, ROI overlap."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from roidask import __version__ as roidask_version
from roidask._atomic import OutputFolder, check_destination, clean_stale
from roidask.batch.files import release_everywhere
from roidask.exceptions import GridMismatchError
from roidask.io.conversions import as_image
from roidask.io.grid import (
    affine_of,
    check_same_grid,
    grid_attrs,
    spatial_coords,
    voxel_size_mm,
)
from roidask.io.image import bold_coords, like_image, to_nifti
from roidask.ops.stats import ttest_1samp_img
from roidask.outputs.study import Study

__all__ = ["GROUP_KIND", "GROUP_VARIABLES", "group_level"]

#: Kind recorded in the ownership marker of a group folder.
GROUP_KIND = "group"
#: The group level's maps (``<name>.nii.gz``, and the study's ``group`` node): long_name, units.
GROUP_VARIABLES = {
    "tstat": ("one-sample t statistic of the subjects' tstat maps (mean > 0)", "1"),
    "logp": ("-log10 p of the one-sample t-test (two-sided, unclipped)", "1"),
    "roi_overlap": ("number of subjects with an ROI at the voxel", "1"),
    "roi_overlap_fraction": ("fraction of the subjects with an ROI at the voxel", "1"),
}


def _group_dataset(maps: dict[str, np.ndarray], ref: xr.DataArray, subjects: list[str]):
    """The second-level maps as the study's ``group`` node (the results' grid schema)."""
    affine = affine_of(ref)
    data = {
        name: xr.Variable(
            ("x", "y", "z"), maps[name], {**grid_attrs(ref), "long_name": text, "units": units}
        )
        for name, (text, units) in GROUP_VARIABLES.items()
    }
    attrs = {
        "title": "roidask group level: one-sample t-test of the subjects' t maps, ROI overlap",
        "source": f"roidask {roidask_version}",
        "subjects": list(subjects),
        "n_subjects": len(subjects),
        "affine": affine.tolist(),
        "voxel_size_mm": voxel_size_mm(affine).tolist(),
        "xyz_units": ref.attrs.get("xyz_units", "mm"),
    }
    return xr.Dataset(data, coords=spatial_coords(ref.shape, affine), attrs=attrs)


def group_level(subject_dirs: list[Path], out: Path, *, study: Study | None = None) -> Path:
    """Second-level one-sample t-test of subjects' t maps, and the ROI overlap map.

    Writes ``out/`` atomically: ``tstat.nii.gz``, ``logp.nii.gz`` (-log10 p,
    two-sided, unclipped), ``roi_overlap.nii.gz`` (number of subjects with an
    ROI at each voxel, int16), ``roi_overlap_fraction.nii.gz`` and
    ``subjects.tsv``. With ``study``, the same maps become its ``group`` node
    (written and published once ``out`` is).

    Raises
    ------
    GridMismatchError
        Subjects' maps are not on one grid (shape and affine); no resampling.
    """
    clean_stale(out)
    check_destination(out, param="out", overwrite=True, kind=GROUP_KIND)
    tmaps = [
        as_image(d / "tstat.nii.gz", ndim=3, param=f"{d.name}/tstat.nii.gz") for d in subject_dirs
    ]
    atlases = [
        as_image(d / "atlas.nii.gz", ndim=3, param=f"{d.name}/atlas.nii.gz") for d in subject_dirs
    ]
    ref = tmaps[0]
    for d, t in zip(subject_dirs[1:], tmaps[1:], strict=True):
        try:
            check_same_grid(ref, t, names=(f"{subject_dirs[0].name}", f"{d.name}"))
        except GridMismatchError as exc:
            raise GridMismatchError(
                f"group level needs every subject on one grid: {exc}"
            ) from None
    stack = da.stack([t.data.astype(np.float64) for t in tmaps], axis=-1)
    n = len(tmaps)
    series = xr.DataArray(
        stack,
        dims=("x", "y", "z", "time"),
        coords=bold_coords(n, tr_s=None, condition=["tmap"] * n, run=np.arange(n)),
        attrs=dict(ref.attrs),
    )
    stats = ttest_1samp_img(series, condition="tmap", popmean=0.0)
    overlap = sum((a.data > 0).astype(np.int16) for a in atlases)
    try:
        t, logp, count = dask.compute(stats["t"].data, stats["logp"].data, overlap)
        maps: dict[str, np.ndarray] = {
            "tstat": np.asarray(t, dtype=np.float32),
            "logp": np.asarray(logp, dtype=np.float32),
            "roi_overlap": np.asarray(count, dtype=np.int16),
            "roi_overlap_fraction": np.asarray(count, dtype=np.float32) / n,
        }
        with OutputFolder(out, kind=GROUP_KIND) as tmp:
            for name, values in maps.items():
                to_nifti(like_image(values, ref), tmp / f"{name}.nii.gz", dtype=values.dtype)
            pd.DataFrame({"subject": [d.name for d in subject_dirs]}).to_csv(
                tmp / "subjects.tsv", sep="\t", index=False
            )
    finally:
        release_everywhere([d / f for d in subject_dirs for f in ("tstat.nii.gz", "atlas.nii.gz")])
    if study is not None:
        study.write_group(_group_dataset(maps, ref, [d.name for d in subject_dirs]))
    return out
