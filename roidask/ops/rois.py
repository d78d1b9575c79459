"""Selecting, splitting, describing and writing ROIs of a 3D label image.

A label image is a 3D integer image: 0 is background, every other value an
ROI (e.g. the output of :func:`roidask.ops.label.label`, or an atlas). Floats
are accepted when every voxel is a non-negative whole number.

Every function that returns a new label image numbers its ROIs 1, 2, ... in
raster-scan order of each ROI's first voxel (C order over ``(x, y, z)``), the
rule of :func:`scipy.ndimage.label`, so the numbering never depends on the
chunking and ``remove_small(label(m), min_voxels=n)`` is numbered as scipy
would number the kept components. These functions are lazy: one pass of
per-chunk partial results (counts, first voxels) is reduced in one small task,
then each chunk is renumbered through the resulting lookup table.

:func:`roi_table` and :func:`write_atlas` compute (they return a table and
write files); the table is built in one pass of per-chunk partial sums.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from roidask._docs import fill_doc
from roidask._validate import check_bool, check_int
from roidask.exceptions import EmptyMaskWarning, InvalidParameterError, OutputExistsError
from roidask.io.chunks import chunk_location
from roidask.io.conversions import ImageLike, as_image
from roidask.io.grid import affine_of, check_same_grid, voxel_to_world, voxel_volume_mm3
from roidask.io.image import to_nifti
from roidask.io.nifti import is_nifti_path
from roidask.io.tables import ROI_TABLE_COLUMNS, write_roi_table
from roidask.ops._blocks import reduce_blocks
from roidask.ops.label import labels_image

__all__ = [
    "MIDLINE_ATOL_MM",
    "ROI_TABLE_COLUMNS",
    "as_labels",
    "keep_largest",
    "remove_small",
    "roi_table",
    "split_hemispheres",
    "write_atlas",
]

#: Voxels whose world x is within this distance of 0 (mm) are on the midline.
MIDLINE_ATOL_MM = 1e-6
#: Largest label for which lookups use a dense table (bigger ones use a sorted search).
_DENSE_LUT_MAX = 2**22
_SHOWN_VALUES = 8


# -- label images --------------------------------------------------------------------------
def _check_labels_block(block: np.ndarray, *, param: str, block_info=None) -> np.ndarray:
    if block.dtype.kind == "f":
        good = np.isfinite(block) & (block >= 0) & (block == np.round(block))
    else:
        good = block >= 0
    if good.all():
        return block.astype(np.int64, copy=False)
    bad = np.unique(block[~good])
    shown = ", ".join(repr(v) for v in bad[:_SHOWN_VALUES].tolist())
    more = f" and {bad.size - _SHOWN_VALUES} more" if bad.size > _SHOWN_VALUES else ""
    raise InvalidParameterError(
        f"{param}: expected non-negative whole-number labels (0 = background), found the "
        f"value(s) {shown}{more}{chunk_location(block_info)}",
        param=param,
    )


def as_labels(labels_img: ImageLike, *, param: str = "labels_img") -> xr.DataArray:
    """A 3D label image as lazy int64 labels, checking the values when computed.

    Parameters
    ----------
    labels_img : ImageLike
        3D image of non-negative whole numbers (bool is read as 0/1).
    param : str
        Parameter name used in error messages.

    Returns
    -------
    xarray.DataArray
        int64, same grid, chunks and attrs.

    Raises
    ------
    ImageDimensionError
        Not 3D.
    InvalidParameterError
        Non-numeric data (immediately); negative, fractional or non-finite
        values (when computed, listing them).
    """
    img = as_image(labels_img, ndim=3, param=param)
    if img.dtype.kind not in "biuf":
        raise InvalidParameterError(
            f"{param}: expected integer labels, got data of type {img.dtype}", param=param
        )
    if img.dtype.kind in "bu":
        data = img.data.astype(np.int64)
    else:
        data = img.data.map_blocks(
            partial(_check_labels_block, param=param),
            dtype=np.int64,
            meta=np.empty((0, 0, 0), dtype=np.int64),
        )
    return img.copy(data=data)


# -- relabelling by keys -------------------------------------------------------------------
def _identity_keys(block: np.ndarray, offset, affine) -> np.ndarray:
    return block


def _hemisphere_keys(block: np.ndarray, offset, affine) -> np.ndarray:
    idx = [np.arange(n, dtype=np.float64) + o for n, o in zip(block.shape, offset, strict=True)]
    x_mm = (
        affine[0, 0] * idx[0][:, None, None]
        + affine[0, 1] * idx[1][None, :, None]
        + affine[0, 2] * idx[2][None, None, :]
        + affine[0, 3]
    )
    right = x_mm >= -MIDLINE_ATOL_MM
    return np.where(block > 0, block * 2 + right, 0)


def _key_stats(block, *, key_func, affine, shape, offset, block_index):
    keys = key_func(block, offset, affine)
    u, first, counts = np.unique(keys.ravel(), return_index=True, return_counts=True)
    keep = u != 0
    u, first, counts = u[keep], first[keep], counts[keep]
    coords = np.unravel_index(first, keys.shape)
    glob = np.ravel_multi_index(tuple(c + o for c, o in zip(coords, offset, strict=True)), shape)
    return u.astype(np.int64), glob.astype(np.int64), counts.astype(np.int64)


def _relabel_table(parts, *, rule, k):
    keys = np.concatenate([p[0] for p in parts])
    uk, inv = np.unique(keys, return_inverse=True)
    counts = np.zeros(uk.size, dtype=np.int64)
    np.add.at(counts, inv, np.concatenate([p[2] for p in parts]))
    first = np.full(uk.size, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inv, np.concatenate([p[1] for p in parts]))
    if rule == "min_voxels":
        kept = np.flatnonzero(counts >= k)
    elif rule == "largest":
        kept = np.lexsort((first, -counts))[:k]
    else:
        kept = np.arange(uk.size)
    values = np.zeros(uk.size, dtype=np.int32)
    values[kept[np.argsort(first[kept], kind="stable")]] = np.arange(
        1, kept.size + 1, dtype=np.int32
    )
    dense = None
    if uk.size == 0 or uk[-1] <= _DENSE_LUT_MAX:
        dense = np.zeros((int(uk[-1]) if uk.size else 0) + 1, dtype=np.int32)
        dense[uk] = values
    return {"keys": uk, "values": values, "dense": dense, "n": int(kept.size)}


def _apply_relabel(block, table, *, key_func, affine, block_info=None):
    offset = tuple(int(a) for a, _ in block_info[0]["array-location"])
    keys = key_func(block, offset, affine)
    if table["dense"] is not None:
        return table["dense"][keys]
    uk, values = table["keys"], table["values"]
    if uk.size == 0:
        return np.zeros(keys.shape, dtype=np.int32)
    pos = np.clip(np.searchsorted(uk, keys), 0, uk.size - 1)
    return np.where(uk[pos] == keys, values[pos], 0).astype(np.int32)


def _n_rois(table) -> np.int64:
    return np.int64(table["n"])


def _relabel(
    labels: xr.DataArray, *, key_func, rule: str, k: int = 0
) -> tuple[xr.DataArray, da.Array]:
    affine = affine_of(labels)
    shape = tuple(int(n) for n in labels.shape)
    arr = labels.data
    table = reduce_blocks(
        partial(_key_stats, key_func=key_func, affine=affine, shape=shape),
        [arr],
        partial(_relabel_table, rule=rule, k=k),
        name=f"rois-{rule}",
        token_extra=(key_func.__name__, affine.tobytes(), k),
    )
    data = da.map_blocks(
        partial(_apply_relabel, key_func=key_func, affine=affine),
        arr,
        table,
        dtype=np.int32,
        meta=np.empty((0, 0, 0), dtype=np.int32),
    )
    n = da.from_delayed(dask.delayed(_n_rois, pure=True)(table), shape=(), dtype=np.int64)
    return labels_image(data, labels), n


@fill_doc
def remove_small(labels_img: ImageLike, *, min_voxels: int) -> tuple[xr.DataArray, da.Array]:
    """Drop the ROIs with fewer than ``min_voxels`` voxels, and renumber (lazy).

    Parameters
    ----------
    %(labels_img)s
    min_voxels : int
        Minimum ROI size in voxels (>= 1); ROIs of exactly this size are kept.

    Returns
    -------
    labels, n_labels : xarray.DataArray, dask.array.Array
        int32 labels 1..K in raster order of each kept ROI's first voxel, same grid
        and chunks, and their lazy count ``n_labels`` (K, a dask scalar).

    Raises
    ------
    InvalidParameterError
        Bad ``min_voxels`` (immediately), bad label values (when computed).
    ImageDimensionError
        Not 3D.
    """
    k = check_int(min_voxels, "min_voxels", minimum=1, meaning="minimum ROI size in voxels")
    return _relabel(as_labels(labels_img), key_func=_identity_keys, rule="min_voxels", k=k)


@fill_doc
def keep_largest(labels_img: ImageLike, *, k: int) -> tuple[xr.DataArray, da.Array]:
    """Keep the ``k`` largest ROIs (by voxel count), and renumber (lazy).

    Equal sizes are ranked by first voxel (the ROI whose first voxel comes
    first in C order wins). Fewer than ``k`` ROIs: all are kept.

    Parameters
    ----------
    %(labels_img)s
    k : int
        Number of ROIs to keep (>= 1).

    Returns
    -------
    labels, n_labels : xarray.DataArray, dask.array.Array
        int32 labels 1..min(k, n) in raster order of each kept ROI's first
        voxel (not by size), and their lazy count ``n_labels``.

    Raises
    ------
    InvalidParameterError
        Bad ``k`` (immediately), bad label values (when computed).
    ImageDimensionError
        Not 3D.
    """
    k = check_int(k, "k", minimum=1, meaning="number of ROIs to keep")
    return _relabel(as_labels(labels_img), key_func=_identity_keys, rule="largest", k=k)


@fill_doc
def split_hemispheres(labels_img: ImageLike) -> tuple[xr.DataArray, da.Array]:
    """Split every ROI into its left and right parts by the sign of world x (lazy).

    World x is the first row of the affine applied to each voxel's indices; in
    NIfTI's RAS+ world space x < 0 is the subject's left and x > 0 the right.
    Voxels on the midline (|x| <= :data:`MIDLINE_ATOL_MM`) count as **right**
    (x >= 0). Each part becomes its own ROI; an ROI on one side only stays
    whole.

    Parameters
    ----------
    %(labels_img)s

    Returns
    -------
    labels, n_labels : xarray.DataArray, dask.array.Array
        int32 labels 1..K in raster order of each part's first voxel, with the
        lazy count ``n_labels``. Use :func:`roi_table` (``com_x_mm``) to
        see which side each part is on.

    Raises
    ------
    InvalidParameterError
        Bad label values (when computed).
    ImageDimensionError
        Not 3D.
    """
    return _relabel(as_labels(labels_img), key_func=_hemisphere_keys, rule="all")


# -- table ---------------------------------------------------------------------------------
def _table_block(lab, stat=None, *, shape, offset, block_index):
    ii, jj, kk = np.nonzero(lab)
    if ii.size == 0:
        return None
    u, inv = np.unique(lab[ii, jj, kk], return_inverse=True)
    gi, gj, gk = ii + offset[0], jj + offset[1], kk + offset[2]
    part = {
        "label": u.astype(np.int64),
        "n": np.bincount(inv, minlength=u.size).astype(np.int64),
        "sums": [
            np.bincount(inv, weights=g.astype(np.float64), minlength=u.size) for g in (gi, gj, gk)
        ],
    }
    if stat is not None:
        values = stat[ii, jj, kk].astype(np.float64)
        valid = ~np.isnan(values)
        iv, vv = inv[valid], values[valid]
        flat = np.ravel_multi_index((gi[valid], gj[valid], gk[valid]), shape)
        part["n_valid"] = np.bincount(iv, minlength=u.size).astype(np.int64)
        part["sum_value"] = np.bincount(iv, weights=vv, minlength=u.size)
        part["peak_value"], part["peak_flat"] = _peaks(iv, vv, flat, u.size)
    return part


def _peaks(group, values, flat, n):
    """Max value per group, ties broken by the smallest flat index; NaN/-1 if none."""
    peak_value = np.full(n, np.nan)
    peak_flat = np.full(n, -1, dtype=np.int64)
    if group.size:
        order = np.lexsort((flat, -values, group))
        g = group[order]
        firsts = order[np.flatnonzero(np.r_[True, g[1:] != g[:-1]])]
        peak_value[group[firsts]] = values[firsts]
        peak_flat[group[firsts]] = flat[firsts]
    return peak_value, peak_flat


def _empty_table() -> pd.DataFrame:
    columns = {c: pd.Series(dtype=np.float64) for c in ROI_TABLE_COLUMNS}
    columns["label"] = pd.Series(dtype=np.int64)
    columns["n_voxels"] = pd.Series(dtype=np.int64)
    return pd.DataFrame(columns)


def _combine_table(parts, *, affine, shape, has_stat):
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    labels = np.concatenate([p["label"] for p in parts])
    u, inv = np.unique(labels, return_inverse=True)
    n = np.bincount(inv, weights=np.concatenate([p["n"] for p in parts]), minlength=u.size)
    sums = [
        np.bincount(inv, weights=np.concatenate([p["sums"][a] for p in parts]), minlength=u.size)
        for a in range(3)
    ]
    com_vox = np.stack(sums, axis=1) / n[:, None]
    com_mm = voxel_to_world(affine, com_vox)
    table = {
        "label": u.astype(np.int64),
        "n_voxels": n.astype(np.int64),
        "volume_mm3": n * voxel_volume_mm3(affine),
        "com_x_mm": com_mm[:, 0],
        "com_y_mm": com_mm[:, 1],
        "com_z_mm": com_mm[:, 2],
    }
    peak_mm = np.full((u.size, 3), np.nan)
    peak_value = np.full(u.size, np.nan)
    mean_value = np.full(u.size, np.nan)
    if has_stat:
        n_valid = np.bincount(
            inv, weights=np.concatenate([p["n_valid"] for p in parts]), minlength=u.size
        )
        total = np.bincount(
            inv, weights=np.concatenate([p["sum_value"] for p in parts]), minlength=u.size
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_value = np.where(n_valid > 0, total / np.maximum(n_valid, 1), np.nan)
        pv = np.concatenate([p["peak_value"] for p in parts])
        pf = np.concatenate([p["peak_flat"] for p in parts])
        has = ~np.isnan(pv)
        peak_value, peak_flat = _peaks(inv[has], pv[has], pf[has], u.size)
        found = peak_flat >= 0
        vox = np.stack(np.unravel_index(peak_flat[found], shape), axis=1).astype(np.float64)
        peak_mm[found] = voxel_to_world(affine, vox)
    table.update(
        peak_x_mm=peak_mm[:, 0],
        peak_y_mm=peak_mm[:, 1],
        peak_z_mm=peak_mm[:, 2],
        peak_value=peak_value,
        mean_value=mean_value,
    )
    return pd.DataFrame(table, columns=list(ROI_TABLE_COLUMNS))


def _table_graph(labels: xr.DataArray, stat_img):
    arrays = [labels.data]
    if stat_img is not None:
        stat = as_image(stat_img, ndim=3, param="stat_img")
        check_same_grid(labels, stat, names=("labels_img", "stat_img"))
        if stat.dtype.kind not in "biuf":
            raise InvalidParameterError(
                f"stat_img: expected real-valued voxels, got data of type {stat.dtype}",
                param="stat_img",
            )
        data = stat.data
        if data.chunks != labels.data.chunks:
            data = data.rechunk(labels.data.chunks)
        arrays.append(data)
    affine = affine_of(labels)
    shape = tuple(int(n) for n in labels.shape)
    return reduce_blocks(
        partial(_table_block, shape=shape),
        arrays,
        partial(_combine_table, affine=affine, shape=shape, has_stat=stat_img is not None),
        name="roi-table",
        token_extra=(affine.tobytes(),),
    )


def _finish_table(table, param: str = "labels_img") -> pd.DataFrame:
    if table is None:
        warnings.warn(
            f"{param}: no labelled voxels (every voxel is 0); the ROI table is empty",
            EmptyMaskWarning,
            stacklevel=3,
        )
        return _empty_table()
    return table


@fill_doc
def roi_table(labels_img: ImageLike, *, stat_img: ImageLike | None = None) -> pd.DataFrame:
    """One row per ROI: size, volume, centre of mass and peak, in world mm (computes).

    Parameters
    ----------
    %(labels_img)s
    stat_img : ImageLike, optional
        3D statistic map on the same grid, for the peak and mean columns.

    Returns
    -------
    pandas.DataFrame
        Sorted by ``label``, columns :data:`ROI_TABLE_COLUMNS`:
        ``label`` (int64), ``n_voxels`` (int64), ``volume_mm3`` (n_voxels times
        the voxel volume, mm^3), ``com_x_mm``/``com_y_mm``/``com_z_mm`` (centre
        of mass, the affine applied to the mean voxel index, mm),
        ``peak_x_mm``/``peak_y_mm``/``peak_z_mm`` and ``peak_value`` (position
        in mm and value of the largest statistic in the ROI; ties go to the
        first voxel in C order), ``mean_value`` (mean statistic). NaN voxels of
        ``stat_img`` are ignored; peak and mean columns are NaN without
        ``stat_img`` (or if all of an ROI is NaN). Computed in one pass of
        per-chunk partial sums.

    Warns
    -----
    EmptyMaskWarning
        No voxel is labelled; the table is empty (with the columns above).

    Raises
    ------
    GridMismatchError
        ``stat_img`` is on another grid.
    ImageDimensionError
        An image is not 3D.
    InvalidParameterError
        Bad label values (listing them).
    """
    labels = as_labels(labels_img)
    (table,) = dask.compute(_table_graph(labels, stat_img))
    return _finish_table(table)


# -- atlas ---------------------------------------------------------------------------------
def _output_paths(out, table_path) -> tuple[Path, Path]:
    out = Path(out)
    if is_nifti_path(out):
        nifti = out
        stem = out.name[: -len(".nii.gz")] if out.name.lower().endswith(".gz") else out.stem
    else:
        if out.exists() and not out.is_dir():
            raise InvalidParameterError(
                f"out: expected a .nii/.nii.gz file name or a folder, got the file {out}",
                param="out",
            )
        nifti, stem = out / "atlas.nii.gz", "atlas"
    tsv = Path(table_path) if table_path is not None else nifti.with_name(f"{stem}.tsv")
    return nifti, tsv


def write_atlas(
    labels_img: ImageLike,
    out,
    *,
    table_path=None,
    stat_img: ImageLike | None = None,
    table: pd.DataFrame | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write a label atlas as int32 NIfTI on its grid, plus its ROI table as TSV.

    Parameters
    ----------
    labels_img : ImageLike
        3D label image (0 = background), e.g. from :func:`roidask.ops.label.label`.
    out : path
        ``.nii``/``.nii.gz`` file name, or a folder (created if missing; its
        parent must exist) that receives ``atlas.nii.gz`` and ``atlas.tsv``.
    table_path : path, optional
        TSV file for the table; default: next to the NIfTI, same stem, ``.tsv``.
    stat_img : ImageLike, optional
        Statistic map for the table's peak and mean columns (see :func:`roi_table`).
    table : pandas.DataFrame, optional
        An already computed :func:`roi_table` to write instead of computing one
        (then ``stat_img`` must be None).
    overwrite : bool
        Replace existing files.

    Returns
    -------
    (Path, Path)
        The NIfTI and TSV files. Each is written to a temporary name and
        renamed into place; the labels and table are computed in one pass
        before anything is written.

    Warns
    -----
    EmptyMaskWarning
        No voxel is labelled (the atlas is all 0 and the table has no rows).

    Raises
    ------
    OutputExistsError
        A file exists and ``overwrite`` is false (checked before computing).
    GridMismatchError, ImageDimensionError, InvalidParameterError
        As :func:`roi_table`; also labels beyond int32, a ``table`` with other
        columns, or ``table`` together with ``stat_img``.
    """
    nifti, tsv = _output_paths(out, table_path)
    overwrite = check_bool(overwrite, "overwrite")
    if table is not None:
        if stat_img is not None:
            raise InvalidParameterError(
                "table and stat_img: give a computed table or a stat_img to compute one, not both",
                param="table",
            )
        if not isinstance(table, pd.DataFrame) or list(table.columns) != list(ROI_TABLE_COLUMNS):
            got = list(table.columns) if isinstance(table, pd.DataFrame) else type(table).__name__
            raise InvalidParameterError(
                f"table: expected a roi_table DataFrame with columns {list(ROI_TABLE_COLUMNS)}, "
                f"got {got}",
                param="table",
            )
    for path, param in ((nifti, "out"), (tsv, "table_path" if table_path else "out")):
        if path.exists() and not overwrite:
            raise OutputExistsError(
                f"{path}: already exists; pass overwrite=True to replace it", param=param
            )
        folder = path.parent
        if not folder.is_dir() and not (folder == Path(out) and folder.parent.is_dir()):
            raise InvalidParameterError(f"{param}: folder {folder} does not exist", param=param)
    labels = as_labels(labels_img)
    if table is None:
        values, computed = dask.compute(labels.data, _table_graph(labels, stat_img))
        table = _finish_table(computed)
    else:
        (values,) = dask.compute(labels.data)
    if values.size and values.max() > np.iinfo(np.int32).max:
        raise InvalidParameterError(
            f"labels_img: label {int(values.max())} does not fit in int32 NIfTI labels",
            param="labels_img",
        )
    nifti.parent.mkdir(exist_ok=True)
    to_nifti(values.astype(np.int32), nifti, dtype=np.int32, reference=labels, overwrite=overwrite)
    write_roi_table(table, tsv, overwrite=overwrite)
    return nifti, tsv
