"""The group level of a batch: a second-level test over the subjects' maps, ROI overlap."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from roidask._atomic import OutputFolder, check_destination, clean_stale
from roidask.batch.files import release_everywhere
from roidask.exceptions import GridMismatchError
from roidask.io.conversions import as_image
from roidask.io.grid import check_same_grid
from roidask.io.image import bold_coords, like_image, to_nifti
from roidask.ops.stats import ttest_1samp_img

__all__ = ["GROUP_KIND", "group_level"]

#: Kind recorded in the ownership marker of a group folder.
GROUP_KIND = "group"


def group_level(subject_dirs: list[Path], out: Path) -> Path:
    """Second-level one-sample t-test of subjects' t maps, and the ROI overlap map.

    Writes ``out/`` atomically: ``tstat.nii.gz``, ``logp.nii.gz`` (-log10 p,
    two-sided, unclipped), ``roi_overlap.nii.gz`` (number of subjects with an
    ROI at each voxel, int16), ``roi_overlap_fraction.nii.gz`` and
    ``subjects.tsv``.

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
        with OutputFolder(out, kind=GROUP_KIND) as tmp:
            to_nifti(like_image(stats["t"].data, ref), tmp / "tstat.nii.gz", dtype=np.float32)
            to_nifti(like_image(stats["logp"].data, ref), tmp / "logp.nii.gz", dtype=np.float32)
            to_nifti(like_image(overlap, ref), tmp / "roi_overlap.nii.gz", dtype=np.int16)
            to_nifti(
                like_image(overlap.astype(np.float32) / n, ref),
                tmp / "roi_overlap_fraction.nii.gz",
                dtype=np.float32,
            )
            pd.DataFrame({"subject": [d.name for d in subject_dirs]}).to_csv(
                tmp / "subjects.tsv", sep="\t", index=False
            )
    finally:
        release_everywhere([d / f for d in subject_dirs for f in ("tstat.nii.gz", "atlas.nii.gz")])
    return out
