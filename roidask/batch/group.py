"""The group level of a batch: a second-level test over the subjects' maps, ROI overlap,
and, on request, inference by sign-flipping permutations on the dask cluster.

The second level takes each subject's ``tstat`` map (the t statistic of the
contrast over all of its volumes, whatever the ROI definition). t maps rather
than contrast estimates: roidask's subject-level effects are differences of
BOLD intensities in each scanner's arbitrary units (not scaled to percent
signal change), so subjects of brighter scans would weigh more; t maps are
unitless, and a sign flip needs only that a subject's map be symmetric around 0
under the null hypothesis, which holds for t maps (nilearn's
``non_parametric_inference`` takes either).

:func:`group_level` writes ``OUT/group/`` (and the study's ``group`` node) for
the subjects of a batch; :func:`group_from` runs it on an existing batch folder
or study store (``roidask group``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.local
import numpy as np
import pandas as pd
import xarray as xr

from roidask import __version__ as roidask_version
from roidask._atomic import MARKER, FolderLock, read_marker
from roidask._validate import check_bool, check_int
from roidask.batch.files import release_everywhere
from roidask.exceptions import (
    GridMismatchError,
    IncompleteBatchWarning,
    InvalidParameterError,
    OutputError,
)
from roidask.io.conversions import as_image
from roidask.io.grid import (
    affine_of,
    check_same_grid,
    grid_attrs,
    spatial_coords,
    voxel_size_mm,
)
from roidask.io.image import image_on_grid, to_nifti
from roidask.io.locations import (
    Location,
    changed_files,
    check_output,
    folder_marker,
    output_folder,
)
from roidask.io.nifti import release_handles
from roidask.io.store_read import CHUNK_GRIDS_ATTR, checked_variables, missing_chunks
from roidask.ops import moments as mom
from roidask.ops.label import resolve_structure
from roidask.ops.permutation import (
    DEFAULT_CHUNK_PERM,
    check_cluster_threshold,
    permuted_ttest_1samp,
)
from roidask.outputs.study import (
    FINGERPRINT_ATTR,
    GROUP_NODE,
    STUDY_ATTR,
    STUDY_NAME,
    Study,
    node_attrs,
    published,
)
from roidask.pipeline import compute, mask_values

__all__ = [
    "GROUP_KIND",
    "GROUP_VARIABLES",
    "PERMUTATION_VARIABLES",
    "GroupPermutation",
    "GroupPlan",
    "group_from",
    "group_is_current",
    "group_level",
    "prepare_group",
]

#: Kind recorded in the ownership marker of a group folder.
GROUP_KIND = "group"
#: The group level's maps (``<name>.nii.gz``, and the study's ``group`` node): long_name, units.
GROUP_VARIABLES = {
    "tstat": ("one-sample t statistic of the subjects' tstat maps (mean > 0)", "1"),
    "logp": ("-log10 p of the one-sample t-test (two-sided, unclipped)", "1"),
    "roi_overlap": ("number of subjects with an ROI at the voxel", "1"),
    "roi_overlap_fraction": ("fraction of the subjects with an ROI at the voxel", "1"),
}
#: With permutations: ``<name>.nii.gz`` and variables of the ``group`` node (3D maps,
#: NaN outside the voxels tested), and the null distributions along ``permutation``.
PERMUTATION_VARIABLES = {
    "perm_mask": ("voxels tested by the permutation test (finite in every subject)", "1"),
    "perm_logp_max_t": ("-log10 p, FWE-corrected by the maximum statistic (max-t)", "1"),
    "perm_cluster_size": ("voxels of the voxel's cluster (0 outside clusters)", "1"),
    "perm_cluster_mass": ("sum of |t| - threshold over the voxel's cluster", "1"),
    "perm_logp_max_size": ("-log10 p of the voxel's cluster, FWE-corrected (size)", "1"),
    "perm_logp_max_mass": ("-log10 p of the voxel's cluster, FWE-corrected (mass)", "1"),
    "perm_h0_max_t": ("null distribution of the maximum statistic over the mask", "1"),
    "perm_h0_max_size": ("null distribution of the largest cluster size", "1"),
    "perm_h0_max_mass": ("null distribution of the largest cluster mass", "1"),
}
#: Variables of :func:`roidask.ops.permutation.permuted_ttest_1samp` and their names here.
_FROM_PERMUTATION = {
    "mask": "perm_mask",
    "logp_max_t": "perm_logp_max_t",
    "size": "perm_cluster_size",
    "mass": "perm_cluster_mass",
    "logp_max_size": "perm_logp_max_size",
    "logp_max_mass": "perm_logp_max_mass",
    "h0_max_t": "perm_h0_max_t",
    "h0_max_size": "perm_h0_max_size",
    "h0_max_mass": "perm_h0_max_mass",
}
_NIFTI_TYPES = {"perm_mask": np.uint8, "perm_cluster_size": np.int32}
#: The null distributions, one row per permutation.
PERMUTATION_TABLE = "perm_null.tsv"
PERMUTATION_RECORD = "permutation.json"


@dataclass(frozen=True)
class GroupPermutation:
    """Options of the group level's permutation test (``roidask group``, ``batch --permutations``).

    A one-sample sign-flip test of the subjects' t maps
    (:func:`roidask.ops.permutation.permuted_ttest_1samp`): voxel-level FWE by
    max-t, and cluster-level FWE (size and mass) with a cluster-forming threshold.

    Attributes
    ----------
    n_perm : int
        Random sign flips (exhaustive instead when ``2**n - 1 <= n_perm``).
    two_sided : bool
        ``|t|`` (effects of either sign) or ``t`` (positive effects).
    cluster_threshold : float or None
        Cluster-forming uncorrected p (None: no cluster inference).
    connectivity : {6, 18, 26}
        Cluster neighbourhood.
    seed : int
        Seed of the random flips (results do not depend on the workers).
    chunk_perm : int
        Permutations per dask task.
    mask : path or None
        Mask of the voxels tested (default: finite in every subject, non-zero in one).
    """

    n_perm: int = 10000
    two_sided: bool = True
    cluster_threshold: float | None = None
    connectivity: int = 6
    seed: int = 0
    chunk_perm: int = DEFAULT_CHUNK_PERM
    mask: str | os.PathLike | None = None

    def __post_init__(self):
        check_int(self.n_perm, "n_perm", minimum=1)
        check_bool(self.two_sided, "two_sided")
        check_cluster_threshold(self.cluster_threshold, two_sided=self.two_sided)
        resolve_structure(self.connectivity, labelling=True)
        check_int(self.seed, "seed", minimum=0)
        check_int(self.chunk_perm, "chunk_perm", minimum=1)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mask"] = None if self.mask is None else str(self.mask)
        return out


# -- the inputs ------------------------------------------------------------------------------
@dataclass
class _Subjects:
    """The subjects' maps for the group level (lazy images), and the files to release."""

    names: list[str]
    tmaps: list[xr.DataArray]
    rois: list[xr.DataArray]  # bool: the subject has an ROI at the voxel (any fold)
    files: list[list[Location]]  # per subject, the files its maps read (handles to release)
    fingerprints: list[str]  # per subject, its results' fingerprint ("" if unknown)


#: ``subjects.tsv`` of a group folder: the subjects and the fingerprints of their results.
SUBJECTS_TABLE = "subjects.tsv"


def subject_fingerprint(folder: Location) -> str:
    """The fingerprint (parameters and input checksums) a subject folder's
    ``provenance.json`` records, "" when it records none."""
    try:
        record = json.loads((folder / "provenance.json").read_text())
    except (OSError, ValueError):
        return ""
    value = record.get("fingerprint") if isinstance(record, dict) else None
    return value if isinstance(value, str) else ""


def group_fingerprint(names: Sequence[str], fingerprints: Sequence[str]) -> str | None:
    """What a group level's maps are of: its subjects and their results' fingerprints, in
    any order (``roidask group`` on a study store takes them sorted, a batch in its
    manifest's order: the same test); None when one is unknown: such a group level is
    never reused."""
    if not names or not all(fingerprints):
        return None
    payload = json.dumps(sorted(zip(names, fingerprints, strict=True)))
    return hashlib.sha256(payload.encode()).hexdigest()


def _check_subject_folder(folder: Location) -> None:
    """Refuse a subject folder whose files are not the ones roidask wrote: its marker
    gone, or a file missing or changed since the marker recorded it (:func:`changed_files`)."""
    if not (folder / MARKER).is_file():
        raise OutputError(
            f"{folder}: its {MARKER} is gone, so its maps cannot be told from files put there "
            "since; run the batch again to write the subject again",
            param="study",
        )
    changed = changed_files(folder)
    if changed:
        raise OutputError(
            f"{folder}: {', '.join(changed[:5])} changed or removed since roidask wrote "
            "it; move the changed files elsewhere and run the batch again",
            param="study",
        )


def _folder_subjects(subject_dirs: Sequence[Location]) -> _Subjects:
    names, tmaps, rois, files, fingerprints = [], [], [], [], []
    for d in subject_dirs:
        _check_subject_folder(d)
        names.append(d.name)
        fingerprints.append(subject_fingerprint(d))
        tmaps.append(as_image(d / "tstat.nii.gz", ndim=3, param=f"{d.name}/tstat.nii.gz"))
        atlases = [d / "atlas.nii.gz"] if (d / "atlas.nii.gz").exists() else []
        atlases = atlases or sorted(
            (p for p in d.iterdir() if fnmatch.fnmatch(p.name, "atlas_fold-*.nii.gz")), key=str
        )
        if not atlases:
            raise OutputError(f"{d}: holds no atlas.nii.gz (nor atlas_fold-*.nii.gz)")
        present = [as_image(a, ndim=3, param=f"{d.name}/{a.name}").data > 0 for a in atlases]
        rois.append(tmaps[-1].copy(data=da.stack(present).any(axis=0)))
        files.append([d / "tstat.nii.gz", *atlases])
    return _Subjects(names, tmaps, rois, files, fingerprints)


def _study_subjects(study: Path) -> _Subjects:
    names = [n for n in published(study) if n != GROUP_NODE]
    tmaps, rois, fingerprints = [], [], []
    for name in names:  # lazy zarr reads (checked: a damaged chunk is an error): no handle kept
        value = (node_attrs(study, name) or {}).get(FINGERPRINT_ATTR)
        fingerprints.append(value if isinstance(value, str) else "")
        maps = checked_variables(study, ["tstat", "atlas"], group=name, param="study")
        tmaps.append(as_image(maps["tstat"], ndim=3, param=f"{name}/tstat"))
        atlas = maps["atlas"] > 0
        if "fold" in atlas.dims:
            atlas = atlas.any("fold")
        rois.append(tmaps[-1].copy(data=atlas.transpose("x", "y", "z").data))
    return _Subjects(names, tmaps, rois, [[] for _ in names], fingerprints)


# -- the group level -------------------------------------------------------------------------
def _group_dataset(maps: dict[str, np.ndarray], ref: xr.DataArray, subjects: list[str], perm):
    """The second-level maps as the study's ``group`` node (the results' grid schema)."""
    affine = affine_of(ref)
    variables = {**GROUP_VARIABLES, **PERMUTATION_VARIABLES}
    data = {}
    for name, values in maps.items():
        text, units = variables[name]
        dims = ("permutation",) if name.startswith("perm_h0") else ("x", "y", "z")
        attrs: dict[str, Any] = {"long_name": text, "units": units}
        if dims != ("permutation",):
            attrs = {**grid_attrs(ref), **attrs}
        data[name] = xr.Variable(dims, values, attrs)
    attrs = {
        "title": "roidask group level: one-sample t-test of the subjects' t maps, ROI overlap",
        "source": f"roidask {roidask_version}",
        "subjects": list(subjects),
        "n_subjects": len(subjects),
        "affine": affine.tolist(),
        "voxel_size_mm": voxel_size_mm(affine).tolist(),
        "xyz_units": ref.attrs.get("xyz_units", "mm"),
    }
    if perm is not None:
        attrs["title"] += "; permutation test (sign flips)"
        attrs.update({f"permutation_{k}": v for k, v in _perm_record(perm).items()})
    return xr.Dataset(data, coords=spatial_coords(ref.shape, affine), attrs=attrs)


def _perm_record(perm: xr.Dataset) -> dict:
    """What the permutation test did (JSON-ready): its attributes but the grid."""
    keep = (
        "test",
        "n_subjects",
        "df",
        "two_sided",
        "n_perm",
        "flips",
        "seed",
        "chunk_perm",
        "p_value",
        "cluster_threshold",
        "cluster_threshold_t",
        "connectivity",
    )
    out = {}
    for key in keep:
        if key in perm.attrs:
            value = perm.attrs[key]
            out[key] = value.item() if isinstance(value, np.generic) else value
    if "two_sided" in out:  # an int in the dataset's attributes (zarr/netCDF have no bool)
        out["two_sided"] = bool(out["two_sided"])
    out["maps"] = "the subjects' tstat maps"
    return out


def group_level(
    subject_dirs: Sequence[Location],
    out: Location,
    *,
    study: Study | None = None,
    permutation: GroupPermutation | None = None,
) -> Location:
    """Second-level one-sample t-test of subjects' t maps, the ROI overlap map and,
    with ``permutation``, a sign-flip permutation test of the same maps.

    Writes ``out/`` atomically: ``tstat.nii.gz``, ``logp.nii.gz`` (-log10 p,
    two-sided, unclipped), ``roi_overlap.nii.gz`` (number of subjects with an
    ROI at each voxel, in any fold of an independent ROI definition; int16),
    ``roi_overlap_fraction.nii.gz`` and ``subjects.tsv``. With ``permutation``
    also (computed on the active dask cluster, see :class:`GroupPermutation`):
    ``perm_mask.nii.gz`` (voxels tested), ``perm_logp_max_t.nii.gz``
    (voxel-level FWE-corrected -log10 p) and, with a cluster-forming threshold,
    ``perm_cluster_size.nii.gz``, ``perm_cluster_mass.nii.gz``,
    ``perm_logp_max_size.nii.gz`` and ``perm_logp_max_mass.nii.gz`` (cluster-level
    FWE); ``perm_null.tsv`` (the null distributions of the maxima) and
    ``permutation.json`` (parameters, flips). With ``study``, the same maps become
    its ``group`` node (written and published once ``out`` is).

    The subjects' maps are read one after the other, in this process (each is
    one small volume): the t-test's moments and the overlap are accumulated as
    they come, so memory does not grow with the number of subjects.

    Parameters
    ----------
    subject_dirs : sequence of Path or S3Path
        The subjects' output folders (``roidask run``'s, a batch's ``sub-*/``), at
        least 2.
    out : Path or S3Path
        The group folder, written atomically; an existing one is replaced only if
        roidask wrote it.
    study : Study, optional
        An open study store (:mod:`roidask.outputs.study`) whose ``group`` node gets
        the same maps.
    permutation : GroupPermutation, optional
        Also the sign-flip permutation test.

    Returns
    -------
    Path or S3Path
        ``out``.

    Raises
    ------
    InvalidParameterError
        Fewer than 2 subjects.
    GridMismatchError
        Subjects' maps are not on one grid (shape and affine); no resampling.
    OutputError
        ``out`` cannot be written, or is not roidask's.
    """
    if len(subject_dirs) < 2:
        raise InvalidParameterError(
            f"subject_dirs: a group level needs at least 2 subjects, got {len(subject_dirs)}",
            param="subject_dirs",
        )
    check_output(out, param="out", overwrite=True, kind=GROUP_KIND)
    subjects = _folder_subjects(subject_dirs)
    mask = _check_group(subjects, permutation)
    try:
        return _group(subjects, out, study=study, permutation=permutation, mask=mask)
    finally:
        if permutation is not None:  # the permutation's tasks read the t maps on workers
            release_everywhere([f for files in subjects.files for f in files])


def _check_group(subjects: _Subjects, permutation: GroupPermutation | None) -> xr.DataArray | None:
    """Check the subjects' maps share one grid, and the permutation test's mask (read:
    binary, not empty, on that grid); returns the mask as booleans (None: no mask).

    Reads no map, only the mask.
    """
    names, tmaps = subjects.names, subjects.tmaps
    ref = tmaps[0]
    for name, t in zip(names[1:], tmaps[1:], strict=True):
        try:
            check_same_grid(ref, t, names=(names[0], name))
        except GridMismatchError as exc:
            raise GridMismatchError(
                f"group level needs every subject on one grid: {exc}"
            ) from None
    if permutation is None or permutation.mask is None:
        return None
    mask = as_image(permutation.mask, ndim=3, param="mask")
    try:
        check_same_grid(ref, mask, names=(names[0], "mask"))
    except GridMismatchError as exc:
        raise GridMismatchError(
            f"mask {permutation.mask}: not on the subjects' grid ({exc})", param="mask"
        ) from None
    try:
        return mask.copy(data=mask_values(mask, param="mask"))
    finally:  # read once: no handle kept in this process
        release_handles([permutation.mask])


def _group(
    subjects: _Subjects,
    out: Location,
    *,
    study: Study | None,
    permutation: GroupPermutation | None,
    mask: xr.DataArray | None,
) -> Location:
    """The group level of checked subjects (:func:`_check_group` gave ``mask``)."""
    names, tmaps = subjects.names, subjects.tmaps
    ref = tmaps[0]
    # small volumes, one subject after the other: computed here, never shipped to a
    # cluster and back; the t-test's moments and the overlap accumulated as they come
    moments, overlap = None, None
    with dask.config.set(scheduler=dask.local.get_sync):
        for tmap, rois, files in zip(tmaps, subjects.rois, subjects.files, strict=True):
            try:
                values, present = dask.compute(tmap.data, rois.data)
            finally:
                release_handles(files)
            values = np.asarray(values, dtype=np.float64)
            one = mom.Moments(1, values, np.zeros_like(values))
            moments = one if moments is None else mom.merge(moments, one)
            present = np.asarray(present).astype(np.int16)
            overlap = present if overlap is None else overlap + present
    assert moments is not None and overlap is not None
    stats = mom.ttest_1samp(moments, popmean=0.0)
    n = len(tmaps)
    maps: dict[str, np.ndarray] = {
        "tstat": np.asarray(stats.t, dtype=np.float32),
        "logp": np.asarray(stats.logp, dtype=np.float32),
        "roi_overlap": overlap,
        "roi_overlap_fraction": overlap.astype(np.float32) / n,
    }
    perm = None
    if permutation is not None:  # on the active dask cluster: chunks of permutations
        options = permutation.to_dict()
        options.pop("mask")
        (perm,) = compute(permuted_ttest_1samp(tmaps, mask_img=mask, **options))
        for source, name in _FROM_PERMUTATION.items():
            if source in perm:
                values = np.asarray(perm[source].values)
                kind = np.float32 if values.ndim == 3 else values.dtype  # maps as the NIfTI
                maps[name] = values.astype(_NIFTI_TYPES.get(name, kind))
    with output_folder(out, kind=GROUP_KIND) as tmp:
        for name, values in maps.items():
            if name.startswith("perm_h0"):
                continue
            dtype = _NIFTI_TYPES.get(name, np.int16 if name == "roi_overlap" else np.float32)
            to_nifti(image_on_grid(values, ref), tmp / f"{name}.nii.gz", dtype=dtype)
        table = pd.DataFrame({"subject": names, "fingerprint": subjects.fingerprints})
        table.to_csv(tmp / SUBJECTS_TABLE, sep="\t", index=False)
        if permutation is not None and perm is not None:
            null = {k.removeprefix("perm_"): v for k, v in maps.items() if k.startswith("perm_h0")}
            null = pd.DataFrame({"permutation": np.arange(perm.sizes["permutation"]), **null})
            null.to_csv(tmp / PERMUTATION_TABLE, sep="\t", index=False, float_format="%.9g")
            record = {**_perm_record(perm), "parameters": permutation.to_dict()}
            (tmp / PERMUTATION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if study is not None:
        digest = group_fingerprint(names, subjects.fingerprints)
        attrs = {FINGERPRINT_ATTR: digest} if digest is not None else None
        study.write_group(_group_dataset(maps, ref, names, perm), attrs=attrs)
    return out


def group_is_current(
    subject_dirs: Sequence[Location],
    out: Location,
    *,
    study: Study | None = None,
    permutation: GroupPermutation | None = None,
) -> bool:
    """``out`` already holds the group level of ``subject_dirs`` as they are now, so a
    rerun of the batch would write it again bit for bit (and lose a permutation test
    that ``roidask group`` added to it): its files as roidask wrote them, its
    ``subjects.tsv`` naming the same subjects with the same results' fingerprints, with
    ``permutation``, a test of the same parameters (never with a ``mask``, whose
    content is not recorded), and with ``study``, its ``group`` node whole and of the
    same subjects (listed or not: the caller publishes it again). Reads small files
    only (no map)."""
    marker = folder_marker(out)
    if marker is None or marker.get("kind") != GROUP_KIND or changed_files(out, marker):
        return False
    if marker.get("complete") is False:  # an s3:// upload killed before its marker
        return False
    names = [d.name for d in subject_dirs]
    digest = group_fingerprint(names, [subject_fingerprint(d) for d in subject_dirs])
    if digest is None:
        return False
    try:
        table = pd.read_csv(
            io.StringIO((out / SUBJECTS_TABLE).read_text()),
            sep="\t",
            dtype=str,
            keep_default_na=False,
        )
    except (OSError, ValueError):
        return False
    if list(table.columns) != ["subject", "fingerprint"]:
        return False  # written before the fingerprints were recorded
    if group_fingerprint(table["subject"].tolist(), table["fingerprint"].tolist()) != digest:
        return False
    if permutation is not None:
        if permutation.mask is not None:
            return False
        try:
            record = json.loads((out / PERMUTATION_RECORD).read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(record, dict) or record.get("parameters") != permutation.to_dict():
            return False
    if study is None:
        return True
    # listed or not: a subject's node rewritten (with the same results) hides it
    attrs = node_attrs(study.path, GROUP_NODE)
    if attrs is None or attrs.get(FINGERPRINT_ATTR) != digest:
        return False
    return not missing_chunks(study.path / GROUP_NODE, attrs.get(CHUNK_GRIDS_ATTR) or {})


# -- roidask group ---------------------------------------------------------------------------
def _is_batch_folder(path: Path) -> bool:
    marker = read_marker(path) if path.is_dir() else None
    return (marker is not None and marker.get("kind") == "batch") or (
        marker is None and (path / "batch.tsv").is_file()
    )


def _is_study(path: Path) -> bool:
    try:
        record = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and STUDY_ATTR in (record.get("attributes") or {})


def _batch_subject_dirs(batch: Path) -> list[Path]:
    """The subjects a batch completed (``batch.tsv``: done or skipped), as folders; an
    :class:`IncompleteBatchWarning` if some are still pending (an interrupted batch)."""
    table = batch / "batch.tsv"
    try:
        rows = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise OutputError(f"{table}: cannot read the batch's status table ({exc})") from None
    if not {"subject", "status", "out"} <= set(rows.columns):
        raise OutputError(f"{table}: not a roidask batch.tsv (columns {list(rows.columns)})")
    done = rows[rows["status"].isin(["done", "skipped"])]
    pending = int((rows["status"] == "pending").sum())
    if pending:  # an interrupted batch (a failed subject is done with, as far as it goes)
        warnings.warn(
            f"{batch}: {pending} of the batch's {len(rows)} subjects are not done (pending in "
            f"batch.tsv: the batch was interrupted); the group level is of the {len(done)} "
            "completed; run the batch again to finish it",
            IncompleteBatchWarning,
            stacklevel=4,
        )
    return [batch / Path(out).name for out in done["out"]]


@dataclass(frozen=True)
class GroupPlan:
    """A checked group level, ready to compute (:func:`prepare_group`)."""

    subjects: _Subjects
    out: Path
    study: Study | None
    permutation: GroupPermutation | None
    mask: xr.DataArray | None
    locks: tuple[FolderLock, ...] = ()  # of the batch folders written, from the checks on

    def run(self) -> Path:
        """Compute and write the group level (the permutation test on the active cluster);
        the folder and store are let go after (a plan runs once)."""
        try:
            _group(self.subjects, self.out, study=self.study, permutation=self.permutation,
                   mask=self.mask)  # fmt: skip
            return self.out
        finally:
            self.close()
            if self.permutation is not None:
                release_everywhere([f for files in self.subjects.files for f in files])

    def close(self) -> None:
        """Let go of the batch folder and the study store without running."""
        if self.study is not None:
            self.study.close()
        for lock in self.locks:
            lock.release()


def group_from(
    path: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    permutation: GroupPermutation | None = None,
) -> Path:
    """The group level of an existing batch folder or study store (``roidask group``).

    :func:`prepare_group` (every check), then :meth:`GroupPlan.run`.

    Parameters
    ----------
    path : path
        A batch folder (its completed subjects' folders, listed in ``batch.tsv``,
        are read; its ``study.zarr``, if any, gets the ``group`` node) or a study
        store (its published subject nodes are read; the store gets the node).
    out : path, optional
        The group folder to (re)write (default: ``group/`` of the batch folder, or
        of the batch folder holding the study store); only a folder roidask wrote
        is replaced. The study's ``group`` node is the batch folder's ``group/``:
        with another ``out`` in a batch folder, it is left as it is.
    permutation : GroupPermutation, optional
        Also the permutation test.

    Returns
    -------
    Path
        The group folder written.

    Raises
    ------
    OutputError
        ``path`` is neither a batch folder nor a study store, ``out`` is missing
        for a study store outside a batch folder, or ``out`` is not roidask's.
    InvalidParameterError
        Fewer than 2 subjects.
    """
    return prepare_group(path, out=out, permutation=permutation).run()


def prepare_group(
    path: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    permutation: GroupPermutation | None = None,
) -> GroupPlan:
    """Check everything :func:`group_from` needs, before anything is computed or written
    (and before ``roidask group`` starts a cluster): the folder or store, ``out``, the
    subjects and their grid, the permutation test's mask. Reads no map but the mask.

    Parameters
    ----------
    path : path
        A batch folder or a study store (as for :func:`group_from`).
    out : path, optional
        The group folder to (re)write (default: as for :func:`group_from`).
    permutation : GroupPermutation, optional
        Also the permutation test.

    Returns
    -------
    GroupPlan
        The checked plan, holding the locks of the folders it will write until its
        :meth:`GroupPlan.run` (or :meth:`GroupPlan.close`).

    Raises
    ------
    RoidaskError
        As :func:`group_from`; also a mask that is not binary, empty or on another grid.
    """
    path = Path(os.path.abspath(path))  # the permutation test's tasks read from workers
    study_path: Path | None
    if _is_study(path):
        study_path, batch = path, path.parent if _is_batch_folder(path.parent) else None
    elif _is_batch_folder(path):
        batch = path
        study_path = path / STUDY_NAME if _is_study(path / STUDY_NAME) else None
    else:
        raise OutputError(
            f"study {path}: neither a roidask batch folder (batch.tsv, {MARKER}) nor a study "
            "store (study.zarr)",
            param="study",
        )
    if out is None:
        if batch is None:
            raise OutputError(
                f"out: {path} is a study store outside a batch folder; give the group folder "
                "to write",
                param="out",
            )
        out = batch / "group"
    out = Path(os.path.abspath(out))
    # the study's group node is the batch folder's group/ in the store: another --out
    # leaves both as they are (they would disagree)
    node_path = study_path if batch is None or out == batch / "group" else None
    # first, before any input is read: hold the batch folders written (the one read, and
    # the one --out is in) and the store, so that another batch or group level writing
    # them is refused; held until run()
    folders = [batch] if batch is not None else []
    if _is_batch_folder(out.parent) and all(not out.parent.samefile(f) for f in folders):
        folders.append(out.parent)
    locks: list[FolderLock] = []
    study = None
    try:
        for folder in folders:
            locks.append(FolderLock(folder, param="study" if folder is batch else "out"))
        study = Study(node_path, param="study") if node_path is not None else None
        from_folders = batch is not None and path == batch
        subject_dirs = _batch_subject_dirs(path) if from_folders else []
        inputs = [*subject_dirs, *([study_path] if study_path is not None else [])]
        check_output(out, param="out", inputs=inputs, overwrite=True, kind=GROUP_KIND)
        if from_folders:
            _check_count(len(subject_dirs), path)
            subjects = _folder_subjects(subject_dirs)
        else:  # path is the study store
            subjects = _study_subjects(path)
            _check_count(len(subjects.names), path)
        mask = _check_group(subjects, permutation)
    except BaseException:
        if study is not None:
            study.close()
        for lock in locks:
            lock.release()
        raise
    return GroupPlan(subjects, out, study, permutation, mask, tuple(locks))


def _check_count(n: int, path: Path) -> None:
    if n < 2:
        raise InvalidParameterError(
            f"study {path}: a group level needs at least 2 completed subjects, found {n}",
            param="study",
        )
