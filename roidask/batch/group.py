"""The group level of a batch: a second-level test over the subjects' maps, ROI overlap."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.local
import numpy as np
import pandas as pd

from roidask._atomic import OutputFolder, check_destination, clean_stale
from roidask.exceptions import GridMismatchError, InvalidParameterError
from roidask.io.conversions import as_image
from roidask.io.grid import check_same_grid
from roidask.io.image import like_image, to_nifti
from roidask.io.nifti import release_handles
from roidask.ops import moments as mom

__all__ = ["GROUP_KIND", "group_level"]

#: Kind recorded in the ownership marker of a group folder.
GROUP_KIND = "group"


def group_level(subject_dirs: list[Path], out: Path) -> Path:
    """Second-level one-sample t-test of subjects' t maps, and the ROI overlap map.

    Writes ``out/`` atomically: ``tstat.nii.gz``, ``logp.nii.gz`` (-log10 p,
    two-sided, unclipped), ``roi_overlap.nii.gz`` (number of subjects with an
    ROI at each voxel, int16), ``roi_overlap_fraction.nii.gz`` and
    ``subjects.tsv``.

    The subjects' maps are read one after the other, in this process (each is
    one small volume): the t-test's moments and the overlap are accumulated as
    they come, so memory does not grow with the number of subjects.

    Raises
    ------
    InvalidParameterError
        Fewer than 2 subjects.
    GridMismatchError
        Subjects' maps are not on one grid (shape and affine); no resampling.
    """
    if len(subject_dirs) < 2:
        raise InvalidParameterError(
            f"subject_dirs: a group level needs at least 2 subjects, got {len(subject_dirs)}",
            param="subject_dirs",
        )
    clean_stale(out)
    check_destination(out, param="out", overwrite=True, kind=GROUP_KIND)
    # small volumes: computed here, never shipped to a cluster and back
    with dask.config.set(scheduler=dask.local.get_sync):
        ref, moments, overlap = None, None, None
        for d in subject_dirs:
            files = (d / "tstat.nii.gz", d / "atlas.nii.gz")
            try:
                tmap, atlas = (as_image(f, ndim=3, param=f"{d.name}/{f.name}") for f in files)
                if ref is None:
                    ref = tmap
                else:
                    try:
                        check_same_grid(ref, tmap, names=(subject_dirs[0].name, d.name))
                    except GridMismatchError as exc:
                        raise GridMismatchError(
                            f"group level needs every subject on one grid: {exc}"
                        ) from None
                values = np.asarray(tmap.values, dtype=np.float64)
                rois = (np.asarray(atlas.values) > 0).astype(np.int16)
            finally:
                release_handles(files)
            one = mom.Moments(1, values, np.zeros_like(values))
            moments = one if moments is None else mom.merge(moments, one)
            overlap = rois if overlap is None else overlap + rois
        assert ref is not None and moments is not None and overlap is not None
        stats = mom.ttest_1samp(moments, popmean=0.0)
        n = len(subject_dirs)
        with OutputFolder(out, kind=GROUP_KIND) as tmp:
            to_nifti(like_image(stats.t, ref), tmp / "tstat.nii.gz", dtype=np.float32)
            to_nifti(like_image(stats.logp, ref), tmp / "logp.nii.gz", dtype=np.float32)
            to_nifti(like_image(overlap, ref), tmp / "roi_overlap.nii.gz", dtype=np.int16)
            to_nifti(
                like_image(overlap.astype(np.float32) / n, ref),
                tmp / "roi_overlap_fraction.nii.gz",
                dtype=np.float32,
            )
            pd.DataFrame({"subject": [d.name for d in subject_dirs]}).to_csv(
                tmp / "subjects.tsv", sep="\t", index=False
            )
    return out
