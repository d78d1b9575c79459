"""The group level of a batch: a second-level test over the subjects' maps, ROI overlap."""

from __future__ import annotations

from collections.abc import Sequence

import dask
import dask.local
import numpy as np
import pandas as pd
import xarray as xr

from roidask import __version__ as roidask_version
from roidask.exceptions import GridMismatchError, InvalidParameterError
from roidask.io.conversions import as_image
from roidask.io.grid import (
    affine_of,
    check_same_grid,
    grid_attrs,
    spatial_coords,
    voxel_size_mm,
)
from roidask.io.image import like_image, to_nifti
from roidask.io.locations import Location, check_output, output_folder
from roidask.io.nifti import release_handles
from roidask.ops import moments as mom
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


def group_level(
    subject_dirs: Sequence[Location], out: Location, *, study: Study | None = None
) -> Location:
    """Second-level one-sample t-test of subjects' t maps, and the ROI overlap map.

    Writes ``out/`` atomically: ``tstat.nii.gz``, ``logp.nii.gz`` (-log10 p,
    two-sided, unclipped), ``roi_overlap.nii.gz`` (number of subjects with an
    ROI at each voxel, int16), ``roi_overlap_fraction.nii.gz`` and
    ``subjects.tsv``. With ``study``, the same maps become its ``group`` node
    (written and published once ``out`` is).

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
    check_output(out, param="out", overwrite=True, kind=GROUP_KIND)
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
    maps: dict[str, np.ndarray] = {
        "tstat": np.asarray(stats.t, dtype=np.float32),
        "logp": np.asarray(stats.logp, dtype=np.float32),
        "roi_overlap": overlap,
        "roi_overlap_fraction": overlap.astype(np.float32) / n,
    }
    with output_folder(out, kind=GROUP_KIND) as tmp:
        for name, values in maps.items():
            to_nifti(like_image(values, ref), tmp / f"{name}.nii.gz", dtype=values.dtype)
        pd.DataFrame({"subject": [d.name for d in subject_dirs]}).to_csv(
            tmp / "subjects.tsv", sep="\t", index=False
        )
    if study is not None:
        study.write_group(_group_dataset(maps, ref, [d.name for d in subject_dirs]))
    return out
