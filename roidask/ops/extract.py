"""Per-ROI signal extraction from chunked BOLD data, in one pass, as nilearn's masker.

:func:`extract_signals` is the out-of-core counterpart of
``nilearn.maskers.NiftiLabelsMasker(labels_img, strategy=...).fit_transform(bold)``:
one value per ROI (label) and volume, for all ROIs at once.

How it is computed
------------------
The label image (3D, small) is read when :func:`extract_signals` is called: it
defines the ``roi`` axis, and it is validated there. From it, every spatial
chunk of the BOLD array gets a *plan*: the flat indices of the voxels that
belong to some ROI, sorted by ROI. The graph then has, per BOLD chunk, one task
that gathers those voxels' time series and reduces them segment by segment
(``numpy.ufunc.reduceat``) into per-ROI partial results, and a dask tree
reduction over the spatial chunks that combines the partials:

* ``mean``, ``sum``: partial sums (added);
* ``minimum``, ``maximum``: partial minima/maxima;
* ``variance``, ``standard_deviation``: partial count, mean and sum of squared
  deviations per chunk (two-pass within the chunk), merged with the exact
  pairwise formula of Chan et al., so the result is the centred two-pass value
  of ``scipy.ndimage.variance`` without a second pass over the data;
* ``median`` (exact): the ROI voxels' time series of each time chunk are
  gathered from all spatial chunks into one block of shape
  ``(n_roi_voxels, n_volumes_in_chunk)`` and the median of each ROI's rows is
  taken with :func:`numpy.partition` (mean of the two middle values for an
  even count, as ``scipy.ndimage.median``). Memory per task is that block.

Spatial chunks without ROI voxels are never read. Nothing holds the whole 4D
array, and there is never one task per ROI.

Smoothing (``fwhm``) is linear, so for ``mean`` and ``sum`` it is folded into
the weights: with the separable Gaussian operator ``S = G_z G_y G_x``
(``scipy.ndimage.gaussian_filter1d``, ``mode="reflect"``, ``truncate=4``, as
nilearn's ``smooth_img``), the sum of the smoothed data over an ROI is
``<S^T 1_roi, x>``. Each ``G`` is built exactly, boundaries included, by
filtering the columns of an identity matrix, and ``S^T 1_roi`` is computed per
ROI on its bounding box (grown by the kernel radius). The signals are then a
sparse weights-by-data product per chunk: exact, with no smoothed volume ever
formed. Non-finite voxels are set to 0 first, as nilearn does.

Non-finite BOLD values count as 0 for every strategy (nilearn replaces them by
0 before extracting).
"""

from __future__ import annotations

import itertools
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import nibabel as nib
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from scipy import ndimage, sparse

from roidask.exceptions import (
    ConditionError,
    EmptyMaskWarning,
    InvalidParameterError,
    OutputExistsError,
)
from roidask.io.image import affine_of, as_image, check_same_grid
from roidask.ops.clean import apply_cleaning, plan_cleaning
from roidask.ops.kernels import TRUNCATE, fwhm_to_sigma_voxels

__all__ = [
    "LINEAR_STRATEGIES",
    "STRATEGIES",
    "extract_signals",
    "select_condition",
    "signals_to_frame",
    "stack_conditions",
    "write_signals_tsv",
]

#: Reduction strategies, as ``NiftiLabelsMasker(strategy=...)``.
STRATEGIES = (
    "mean",
    "median",
    "sum",
    "minimum",
    "maximum",
    "standard_deviation",
    "variance",
)
#: Strategies that are linear in the data (smoothing can be folded into weights).
LINEAR_STRATEGIES = ("mean", "sum")
_KIND = {
    "mean": "sum",
    "sum": "sum",
    "minimum": "min",
    "maximum": "max",
    "variance": "moments",
    "standard_deviation": "moments",
    "median": "median",
}
_N_STATS = {"sum": 1, "min": 1, "max": 1, "moments": 3}


# -- label image ------------------------------------------------------------------------
def _values_3d(original, img: xr.DataArray) -> np.ndarray:
    """Voxel values of a small 3D image (in-memory inputs are used without dask)."""
    if isinstance(original, nib.spatialimages.SpatialImage) and original.in_memory:
        return np.asanyarray(original.dataobj).reshape(img.shape)
    if isinstance(original, xr.DataArray) and not isinstance(original.data, da.Array):
        return np.asarray(original.data)
    return np.asarray(img.data.compute())


def _integer_labels(values: np.ndarray, param: str) -> np.ndarray:
    """Label values as int64, or InvalidParameterError naming the non-integer values."""
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        return values.astype(np.int64)
    if values.dtype.kind != "f":
        raise InvalidParameterError(
            f"{param}: expected integer label values, got dtype {values.dtype}"
        )
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        distinct = np.unique(values[bad])
        shown = ", ".join(f"{v:g}" for v in distinct[:5]) + (" ..." if distinct.size > 5 else "")
        raise InvalidParameterError(
            f"{param}: expected integer label values, got "
            f"{int(bad.sum())} voxel(s) with non-integer values [{shown}] "
            f"({distinct.size} distinct); round or relabel the image"
        )
    return values.astype(np.int64)


def _requested_labels(labels, background_label: int) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, str | bytes) or not isinstance(labels, Sequence | np.ndarray):
        raise InvalidParameterError(
            f"labels: expected a sequence of integer label values, got {labels!r}"
        )
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidParameterError(
            f"labels: expected a non-empty 1D sequence of integer label values, got {labels!r}"
        )
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InvalidParameterError(f"labels: expected integer label values, got {labels!r}")
    arr = arr.astype(np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise InvalidParameterError(
            f"labels: duplicate label values {uniq[counts > 1].tolist()}; give each label once"
        )
    if (arr == background_label).any():
        raise InvalidParameterError(
            f"labels: contains the background label {background_label}; background is "
            "never extracted"
        )
    return arr


@dataclass(frozen=True)
class _Rois:
    values: np.ndarray  # (n_roi,) label values, output order
    index: np.ndarray  # (X, Y, Z) int32, ROI position per voxel, -1 elsewhere
    counts: np.ndarray  # (n_roi,) voxels per ROI (after the mask)


def _resolve_rois(
    lab: np.ndarray,
    mask: np.ndarray | None,
    requested: np.ndarray | None,
    background_label: int,
) -> _Rois:
    present = np.unique(lab)
    present = present[present != background_label]
    if present.size == 0:
        raise InvalidParameterError(
            f"labels_img: every voxel is background ({background_label}); expected at least "
            "one labelled voxel"
        )
    values = present if requested is None else requested
    effective = lab if mask is None else np.where(mask, lab, background_label)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    pos = np.clip(np.searchsorted(sorted_values, effective), 0, sorted_values.size - 1)
    hit = (sorted_values[pos] == effective) & (effective != background_label)
    index = np.where(hit, order[pos], -1).astype(np.int32)
    counts = np.bincount(index[index >= 0], minlength=values.size).astype(np.int64)
    absent = [int(v) for v in values if v not in set(present.tolist())]
    masked = [int(v) for v, c in zip(values, counts, strict=True) if c == 0 and v not in absent]
    if absent or masked:
        parts = []
        if absent:
            parts.append(f"absent from labels_img: {absent}")
        if masked:
            parts.append(f"no voxel left inside mask_img: {masked}")
        warnings.warn(
            f"labels {'; '.join(parts)}; their signals are all NaN",
            EmptyMaskWarning,
            stacklevel=3,
        )
    return _Rois(values=values, index=index, counts=counts)


def _mask_values(mask_img, bold: xr.DataArray) -> np.ndarray | None:
    if mask_img is None:
        return None
    mask = as_image(mask_img, ndim=3, param="mask_img")
    check_same_grid(bold, mask, names=("bold_img", "mask_img"))
    values = _values_3d(mask_img, mask)
    if values.dtype.kind not in "biuf":
        raise InvalidParameterError(f"mask_img: expected numeric values, got dtype {values.dtype}")
    return np.isfinite(values) & (values != 0)


# -- per-chunk plans ----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Plan:
    """What one spatial chunk contributes: voxel rows (flat, C order in the chunk)."""

    vox: np.ndarray
    rois: np.ndarray | None = None  # ROI position per voxel (sorted), indicator plans
    present: np.ndarray | None = None  # ROIs present in the chunk
    starts: np.ndarray | None = None  # first row of each present ROI
    weights: sparse.csr_matrix | None = None  # (n_roi, len(vox)), smoothing plans


def _bounds(chunks3) -> list[np.ndarray]:
    return [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks3]


def _indicator_plans(index: np.ndarray, chunks3) -> dict[tuple[int, int, int], _Plan]:
    bounds = _bounds(chunks3)
    plans = {}
    for block in itertools.product(*(range(len(c)) for c in chunks3)):
        sl = tuple(slice(b[n], b[n + 1]) for b, n in zip(bounds, block, strict=True))
        sub = index[sl].ravel()
        vox = np.flatnonzero(sub >= 0)
        if vox.size == 0:
            continue
        rois = sub[vox]
        order = np.argsort(rois, kind="stable")
        vox, rois = vox[order], rois[order]
        present, starts = np.unique(rois, return_index=True)
        plans[block] = _Plan(vox=vox, rois=rois, present=present, starts=starts)
    return plans


def _axis_operator(n: int, sigma: float) -> np.ndarray | None:
    """Matrix G of the 1D Gaussian filter on n samples (y = G x), None if sigma is 0."""
    if sigma <= 0:
        return None
    return ndimage.gaussian_filter1d(np.eye(n), sigma, axis=0, mode="reflect", truncate=TRUNCATE)


def _smoothing_weights(index: np.ndarray, n_roi: int, sigma: np.ndarray):
    """Triplets (flat voxel, roi, weight) of ``S^T 1_roi`` for every ROI."""
    shape = index.shape
    ops = [_axis_operator(n, s) for n, s in zip(shape, sigma, strict=True)]
    boxes = ndimage.find_objects(index + 1, max_label=n_roi)
    flats, rois, weights = [], [], []
    for r, box in enumerate(boxes):
        if box is None:
            continue
        w = (index[box] == r).astype(np.float64)
        out = []
        for axis, (g, sl) in enumerate(zip(ops, box, strict=True)):
            if g is None:
                out.append(sl)
                continue
            rows = g[sl.start : sl.stop]  # G[j, :] for j in the box
            support = np.flatnonzero(np.any(rows != 0, axis=0))
            lo, hi = int(support[0]), int(support[-1]) + 1
            w = np.moveaxis(np.tensordot(rows[:, lo:hi].T, w, axes=(1, axis)), 0, axis)
            out.append(slice(lo, hi))
        nz = np.nonzero(w)
        coords = tuple(nz[d] + out[d].start for d in range(3))
        flats.append(np.ravel_multi_index(coords, shape))
        rois.append(np.full(nz[0].size, r, dtype=np.int64))
        weights.append(w[nz])
    return np.concatenate(flats), np.concatenate(rois), np.concatenate(weights)


def _weight_plans(index: np.ndarray, n_roi: int, sigma: np.ndarray, chunks3):
    """Per-chunk sparse (n_roi, n_vox) weight matrices of the smoothed ROI indicators."""
    flat, rois, weights = _smoothing_weights(index, n_roi, sigma)
    bounds = _bounds(chunks3)
    coords = np.unravel_index(flat, index.shape)
    bidx = [np.searchsorted(bounds[d], coords[d], side="right") - 1 for d in range(3)]
    sizes = [np.asarray(c)[b] for c, b in zip(chunks3, bidx, strict=True)]
    offset = [coords[d] - bounds[d][bidx[d]] for d in range(3)]
    local = (offset[0] * sizes[1] + offset[1]) * sizes[2] + offset[2]  # C order in the chunk
    block_id = np.ravel_multi_index(bidx, tuple(len(c) for c in chunks3))
    order = np.argsort(block_id, kind="stable")
    ids, starts = np.unique(block_id[order], return_index=True)
    ends = np.append(starts[1:], order.size)
    plans = {}
    for bid, a, b in zip(ids, starts, ends, strict=True):
        sel = order[a:b]
        vox, col = np.unique(local[sel], return_inverse=True)
        mat = sparse.csr_matrix((weights[sel], (rois[sel], col)), shape=(n_roi, vox.size))
        block = tuple(int(i) for i in np.unravel_index(bid, tuple(len(c) for c in chunks3)))
        plans[block] = _Plan(vox=vox, weights=mat)
    return plans


# -- chunk kernels --------------------------------------------------------------------------
def _gather(block: np.ndarray, vox: np.ndarray, dtype) -> np.ndarray:
    """Rows of the plan's voxels, (n_vox, n_t), non-finite values set to 0."""
    rows = block.reshape(-1, block.shape[-1])[vox].astype(dtype, copy=False)
    if rows.dtype.kind == "f":
        rows[~np.isfinite(rows)] = 0
    return rows


def _gather_rows(block: np.ndarray, *, vox: np.ndarray, work) -> np.ndarray:
    return _gather(block, vox, work)


def _chunk_partial(block: np.ndarray, *, plan: _Plan, kind: str, n_roi: int) -> np.ndarray:
    """Per-ROI partial statistics of one chunk, shape (n_stats, n_roi, n_t)."""
    v = _gather(block, plan.vox, np.float64)
    n_t = v.shape[1]
    if plan.weights is not None:
        return np.asarray(plan.weights @ v)[None]
    if kind == "sum":
        out = np.zeros((1, n_roi, n_t))
        out[0, plan.present] = np.add.reduceat(v, plan.starts, axis=0)
    elif kind == "min":
        out = np.full((1, n_roi, n_t), np.inf)
        out[0, plan.present] = np.minimum.reduceat(v, plan.starts, axis=0)
    elif kind == "max":
        out = np.full((1, n_roi, n_t), -np.inf)
        out[0, plan.present] = np.maximum.reduceat(v, plan.starts, axis=0)
    else:  # moments: count, mean, sum of squared deviations
        n = np.diff(np.append(plan.starts, v.shape[0]))
        mean = np.add.reduceat(v, plan.starts, axis=0) / n[:, None]
        dev = v - np.repeat(mean, n, axis=0)
        out = np.zeros((3, n_roi, n_t))
        out[0, plan.present] = n[:, None]
        out[1, plan.present] = mean
        out[2, plan.present] = np.add.reduceat(dev * dev, plan.starts, axis=0)
    return out


def _merge_moments(x: np.ndarray, axis=0, keepdims=True) -> np.ndarray:
    """Combine (count, mean, M2) partials stacked along axis 0 (Chan et al.)."""
    n, mean, m2 = x[:, 0], x[:, 1], x[:, 2]
    total = n.sum(axis=0)
    weighted = (n * mean).sum(axis=0)
    grand = np.divide(weighted, total, out=np.zeros_like(weighted), where=total > 0)
    m2 = (m2 + n * (mean - grand) ** 2).sum(axis=0)
    out = np.stack([total, grand, m2])
    return out[None] if keepdims else out


def _moments_chunk(x, axis=None, keepdims=True):
    return x


def _moments_aggregate(x, axis=None, keepdims=False):
    return _merge_moments(x, keepdims=keepdims)


def _median_rows(
    rows: np.ndarray, *, order: np.ndarray, present: np.ndarray, starts: np.ndarray, n_roi: int
) -> np.ndarray:
    """Exact per-ROI median of gathered rows (as ``scipy.ndimage.median``)."""
    v = rows[order]
    out = np.full((n_roi, v.shape[1]), np.nan)
    ends = np.append(starts[1:], v.shape[0])
    for r, a, b in zip(present, starts, ends, strict=True):
        n, h = b - a, (b - a) // 2
        if n % 2:
            out[r] = np.partition(v[a:b], h, axis=0)[h]
        else:
            part = np.partition(v[a:b], (h - 1, h), axis=0)
            out[r] = (part[h - 1] + part[h]) / 2.0
    return out


# -- graph ------------------------------------------------------------------------------------
def _reduce_partials(arr: da.Array, plans: dict, kind: str, n_roi: int, token: str) -> da.Array:
    """(n_stats, n_roi, n_time) statistics combined over the spatial chunks."""
    k = _N_STATS[kind]
    parts = []
    for block, plan in plans.items():
        sub = arr.blocks[block]
        parts.append(
            da.blockwise(
                _chunk_partial,
                "krt",
                sub,
                "xyzt",
                new_axes={"k": k, "r": n_roi},
                concatenate=True,
                dtype=np.float64,
                meta=np.empty((0, 0, 0), dtype=np.float64),
                name=f"roi-partial-{token}-{'-'.join(map(str, block))}",
                plan=plan,
                kind=kind,
                n_roi=n_roi,
            )
        )
    if len(parts) == 1:
        return parts[0]
    stacked = da.stack(parts)
    if kind == "sum":
        return stacked.sum(axis=0)
    if kind == "min":
        return stacked.min(axis=0)
    if kind == "max":
        return stacked.max(axis=0)
    return da.reduction(
        stacked,
        chunk=_moments_chunk,
        combine=_merge_moments,
        aggregate=_moments_aggregate,
        axis=0,
        keepdims=False,
        dtype=np.float64,
        concatenate=True,
        meta=np.empty((0, 0, 0), dtype=np.float64),
        name=f"roi-moments-{token}",
    )


def _median_graph(arr: da.Array, plans: dict, n_roi: int, token: str) -> da.Array:
    work = arr.dtype if arr.dtype.kind == "f" else np.dtype(np.float64)
    parts, rois = [], []
    for block, plan in plans.items():
        sub = arr.blocks[block]
        parts.append(
            da.blockwise(
                _gather_rows,
                "vt",
                sub,
                "xyzt",
                new_axes={"v": plan.vox.size},
                concatenate=True,
                dtype=work,
                meta=np.empty((0, 0), dtype=work),
                name=f"roi-gather-{token}-{'-'.join(map(str, block))}",
                vox=plan.vox,
                work=work,
            )
        )
        rois.append(plan.rois)
    rows = (parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0)).rechunk({0: -1})
    roi_of_row = np.concatenate(rois)
    order = np.argsort(roi_of_row, kind="stable")
    present, starts = np.unique(roi_of_row[order], return_index=True)
    return rows.map_blocks(
        _median_rows,
        order=order,
        present=present,
        starts=starts,
        n_roi=n_roi,
        chunks=((n_roi,), rows.chunks[1]),
        dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64),
        name=f"roi-median-{token}",
    )


# -- public API ---------------------------------------------------------------------------------
def extract_signals(
    bold_img,
    labels_img,
    *,
    strategy: str = "mean",
    labels: Sequence[int] | None = None,
    mask_img=None,
    background_label: int = 0,
    fwhm: float | Sequence[float | None] | None = None,
    detrend: bool = False,
    standardize: str | None = None,
    high_pass_hz: float | None = None,
    low_pass_hz: float | None = None,
    filter: str = "cosine",
    t_r_s: float | None = None,
) -> xr.DataArray:
    """Every ROI's signal for every volume, in one pass over the chunked BOLD data.

    Equivalent to ``NiftiLabelsMasker(labels_img, mask_img=mask_img,
    strategy=strategy, smoothing_fwhm=fwhm, standardize=None, detrend=False,
    resampling_target=None).fit_transform(bold_img).T`` followed by the optional
    cleaning of :func:`roidask.ops.clean.clean_signals`; see the module docstring
    for the algorithm.

    Parameters
    ----------
    bold_img : path, nibabel image or xarray object
        4D BOLD series (see :func:`roidask.io.as_image`); any chunking.
    labels_img : path, nibabel image or xarray object
        3D integer label image on the BOLD grid; ``background_label`` (0) is no
        region. Read when this function is called (it defines the ``roi`` axis).
    strategy : str
        One of :data:`STRATEGIES` (as nilearn): ``mean``, ``median``, ``sum``,
        ``minimum``, ``maximum``, ``standard_deviation``, ``variance``
        (population variance, ``ddof=0``). The median is exact.
    labels : sequence of int, optional
        Label values to extract, in this order. Default: every non-background
        value of ``labels_img``, sorted. Labels without voxels give all-NaN rows
        and an :class:`~roidask.exceptions.EmptyMaskWarning`.
    mask_img : path, nibabel image or xarray object, optional
        3D mask on the BOLD grid; voxels outside (0 or non-finite) count as
        background. Labels left without voxels are kept as all-NaN rows with an
        :class:`~roidask.exceptions.EmptyMaskWarning`.
    background_label : int
        Label value meaning "no region" (default 0).
    fwhm : float or sequence of 3, optional
        Gaussian smoothing FWHM in mm applied before extraction, exactly (as
        ``nilearn.image.smooth_img``); only for the linear strategies ``mean``
        and ``sum``.
    detrend, standardize, high_pass_hz, low_pass_hz, filter, t_r_s
        Optional run-wise cleaning of the signals, as
        :func:`roidask.ops.clean.clean_signals` (default: none, as the seed).
        ``t_r_s`` defaults to the BOLD's ``tr_s``.

    Returns
    -------
    xarray.DataArray
        Dims ``(roi, time)``, lazy and dask-backed (one chunk along ``roi``, the
        BOLD's chunks along ``time``); coords ``roi`` (label values),
        ``n_voxels`` (per ROI, after the mask), ``volume`` (index in the
        series) and the BOLD's ``time`` (s), ``condition`` and ``run``. float32
        if the BOLD is float32 (as nilearn), float64 otherwise. Units are the
        BOLD's (squared for ``variance``).

    Raises
    ------
    InvalidParameterError
        Unknown strategy, ``fwhm`` with a non-linear strategy, bad ``labels``,
        non-integer label values, a label image that is all background, or bad
        cleaning options.
    ImageDimensionError
        ``bold_img`` is not 4D, or ``labels_img``/``mask_img`` not 3D.
    GridMismatchError
        ``labels_img`` or ``mask_img`` is not on the BOLD grid.
    """
    if strategy not in STRATEGIES:
        raise InvalidParameterError(
            f"strategy: unknown strategy {strategy!r}; expected one of {list(STRATEGIES)}"
        )
    if fwhm is not None and strategy not in LINEAR_STRATEGIES:
        raise InvalidParameterError(
            f"fwhm: smoothing can only be folded exactly into linear strategies "
            f"{list(LINEAR_STRATEGIES)}, got strategy={strategy!r}; smooth the BOLD "
            "first (roidask.ops.smooth) for a non-linear strategy"
        )
    if isinstance(background_label, bool) or not isinstance(background_label, int | np.integer):
        raise InvalidParameterError(
            f"background_label: expected an integer label value, got {background_label!r}"
        )
    requested = _requested_labels(labels, int(background_label))
    bold = as_image(bold_img, ndim=4, param="bold_img")
    if bold.dtype.kind not in "biuf":
        raise InvalidParameterError(
            f"bold_img: expected real-valued voxel data, got dtype {bold.dtype}"
        )
    sigma = fwhm_to_sigma_voxels(affine_of(bold), fwhm)
    lab_img = as_image(labels_img, ndim=3, param="labels_img")
    check_same_grid(bold, lab_img, names=("bold_img", "labels_img"))
    runs = bold["run"].values if "run" in bold.coords else np.zeros(bold.sizes["time"], int)
    clean_plan = plan_cleaning(
        runs,
        detrend=detrend,
        standardize=standardize,
        high_pass_hz=high_pass_hz,
        low_pass_hz=low_pass_hz,
        filter=filter,
        t_r_s=bold.attrs.get("tr_s") if t_r_s is None else t_r_s,
    )
    mask = _mask_values(mask_img, bold)
    lab = _integer_labels(_values_3d(labels_img, lab_img), "labels_img")
    rois = _resolve_rois(lab, mask, requested, int(background_label))
    n_roi = rois.values.size

    arr = bold.data
    chunks3 = arr.chunks[:3]
    kind = _KIND[strategy]
    smooth = bool(np.any(sigma > 0))
    token = tokenize(arr.name, rois.index, strategy, sigma.tolist())
    if smooth:
        plans = _weight_plans(rois.index, n_roi, sigma, chunks3)
    else:
        plans = _indicator_plans(rois.index, chunks3)

    if not plans:
        values = da.full((n_roi, arr.shape[3]), np.nan, chunks=((n_roi,), arr.chunks[3]))
    elif kind == "median":
        values = _median_graph(arr, plans, n_roi, token)
    else:
        stats = _reduce_partials(arr, plans, kind, n_roi, token)
        safe = np.maximum(rois.counts, 1)[:, None].astype(np.float64)
        if strategy == "mean":
            values = stats[0] / safe
        elif kind == "moments":
            values = stats[2] / safe
            if strategy == "standard_deviation":
                values = da.sqrt(values)
        else:
            values = stats[0]
    out_dtype = np.dtype(np.float32) if bold.dtype == np.float32 else np.dtype(np.float64)
    values = da.where((rois.counts > 0)[:, None], values, np.nan).astype(out_dtype)

    coords = {
        "roi": ("roi", rois.values),
        "n_voxels": ("roi", rois.counts),
        **{k: v for k, v in bold.coords.items() if v.dims == ("time",)},
    }
    if "volume" not in coords:
        coords["volume"] = ("time", np.arange(bold.sizes["time"]))
    attrs = {"strategy": strategy, "background_label": int(background_label)}
    for key in ("tr_s", "time_units", "source_files"):
        if bold.attrs.get(key) is not None:
            attrs[key] = bold.attrs[key]
    if fwhm is not None:
        attrs["fwhm_mm"] = np.atleast_1d(np.asarray(fwhm, dtype=object)).tolist()
    signals = xr.DataArray(
        values, dims=("roi", "time"), coords=coords, name="signals", attrs=attrs
    )
    return apply_cleaning(signals, clean_plan)


def _conditions_of(signals: xr.DataArray, param: str = "signals") -> np.ndarray:
    if not isinstance(signals, xr.DataArray) or "time" not in signals.dims:
        got = signals.dims if isinstance(signals, xr.DataArray) else type(signals).__name__
        raise InvalidParameterError(
            f"{param}: expected an xarray.DataArray with a 'time' dimension, got {got}"
        )
    if "condition" not in signals.coords or signals["condition"].dims != ("time",):
        raise InvalidParameterError(
            f"{param}: has no 'condition' coordinate along time; extract from a BOLD "
            "image with labels (roidask.io.bold_from_nifti(..., labels=...))"
        )
    return np.asarray(signals["condition"].values).astype(str)


def _in_order(values: np.ndarray) -> list[str]:
    uniq, first = np.unique(values, return_index=True)
    return uniq[np.argsort(first)].tolist()


def select_condition(signals: xr.DataArray, condition: str) -> xr.DataArray:
    """The volumes of one condition (lazy), e.g. the ``face`` blocks of every run.

    Parameters
    ----------
    signals : xarray.DataArray
        Output of :func:`extract_signals` (any array with ``time`` and a
        ``condition`` coordinate).
    condition : str
        Condition name.

    Returns
    -------
    xarray.DataArray
        ``signals`` restricted to the volumes of ``condition``, in time order;
        ``volume``, ``time`` and ``run`` keep the original values.

    Raises
    ------
    ConditionError
        ``condition`` does not occur (the message lists those that do).
    """
    conds = _conditions_of(signals)
    if not isinstance(condition, str) or condition not in set(conds.tolist()):
        raise ConditionError(
            f"condition: {condition!r} not found; available conditions: {_in_order(conds)}"
        )
    return signals.isel(time=np.flatnonzero(conds == condition))


def stack_conditions(
    signals: xr.DataArray,
    *,
    conditions: Sequence[str] | None = None,
    n_volumes: int | None = None,
) -> xr.DataArray:
    """The first ``n_volumes`` volumes of each condition, stacked (lazy).

    The seed pipeline's ``X1`` (face) and ``X2`` (house) are
    ``stack_conditions(signals, conditions=["face", "house"]).sel(condition=...)``.

    Parameters
    ----------
    signals : xarray.DataArray
        Output of :func:`extract_signals`, dims ``(roi, time)``.
    conditions : sequence of str, optional
        Conditions to stack, in this order; default all, in order of first
        appearance.
    n_volumes : int, optional
        Volumes per condition (the first ones in time); default the smallest
        count among ``conditions``.

    Returns
    -------
    xarray.DataArray
        Dims ``(condition, sample, roi)`` (other dims of ``signals`` after
        ``sample``); 2D coords ``time``, ``run``, ``volume`` over
        ``(condition, sample)`` give each sample's origin.

    Raises
    ------
    ConditionError
        Unknown condition, or a condition with fewer than ``n_volumes`` volumes.
    InvalidParameterError
        ``conditions`` empty or with duplicates, ``n_volumes`` not a positive integer.
    """
    conds = _conditions_of(signals)
    available = _in_order(conds)
    if conditions is None:
        conditions = available
    else:
        if isinstance(conditions, str) or not isinstance(conditions, Sequence | np.ndarray):
            raise InvalidParameterError(
                f"conditions: expected a sequence of condition names, got {conditions!r}"
            )
        conditions = [str(c) for c in conditions]
        if not conditions:
            raise InvalidParameterError("conditions: expected at least one condition, got []")
        if len(set(conditions)) != len(conditions):
            raise InvalidParameterError(f"conditions: duplicate names in {conditions}")
        unknown = [c for c in conditions if c not in available]
        if unknown:
            raise ConditionError(
                f"conditions: {unknown} not found; available conditions: {available}"
            )
    counts = {c: int((conds == c).sum()) for c in conditions}
    if n_volumes is None:
        n_volumes = min(counts.values())
    elif (
        isinstance(n_volumes, bool) or not isinstance(n_volumes, int | np.integer) or n_volumes < 1
    ):
        raise InvalidParameterError(f"n_volumes: expected a positive integer, got {n_volumes!r}")
    short = {c: n for c, n in counts.items() if n < n_volumes}
    if short:
        raise ConditionError(
            f"n_volumes: {n_volumes} volumes per condition requested but {short} have fewer"
        )
    n_volumes = int(n_volumes)
    index = np.stack([np.flatnonzero(conds == c)[:n_volumes] for c in conditions])
    time_coords = [k for k, v in signals.coords.items() if v.dims == ("time",)]
    pieces = []
    for ix in index:
        piece = signals.isel(time=ix).drop_vars(time_coords)
        pieces.append(piece.rename(time="sample"))
    out = xr.concat(pieces, dim=pd.Index(conditions, name="condition"))
    out = out.assign_coords(sample=np.arange(n_volumes))
    out = out.transpose("condition", "sample", ...)
    return out.assign_coords(
        {
            k: (("condition", "sample"), np.asarray(signals[k].values)[index])
            for k in time_coords
            if k != "condition"
        }
    )


def signals_to_frame(signals: xr.DataArray) -> pd.DataFrame:
    """Tidy table of the signals (computes them).

    Parameters
    ----------
    signals : xarray.DataArray
        Dims ``(roi, time)`` with coords ``condition`` and ``run`` along time
        (output of :func:`extract_signals` or :func:`select_condition`).

    Returns
    -------
    pandas.DataFrame
        One row per ROI and volume (ROI-major), columns ``roi`` (label value),
        ``condition``, ``run``, ``volume`` (index in the concatenated series),
        ``time_s`` (the ``time`` coordinate, seconds) and ``value``.
    """
    conds = _conditions_of(signals)
    if set(signals.dims) != {"roi", "time"}:
        raise InvalidParameterError(f"signals: expected dims ('roi', 'time'), got {signals.dims}")
    if "run" not in signals.coords:
        raise InvalidParameterError("signals: has no 'run' coordinate along time")
    values = np.asarray(signals.transpose("roi", "time").values)
    n_roi, n_t = values.shape
    volume = np.asarray(signals["volume"].values) if "volume" in signals.coords else np.arange(n_t)
    return pd.DataFrame(
        {
            "roi": np.repeat(np.asarray(signals["roi"].values), n_t),
            "condition": np.tile(conds, n_roi),
            "run": np.tile(np.asarray(signals["run"].values), n_roi),
            "volume": np.tile(volume, n_roi),
            "time_s": np.tile(np.asarray(signals["time"].values, dtype=np.float64), n_roi),
            "value": values.ravel(),
        }
    )


def write_signals_tsv(
    signals: xr.DataArray, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write :func:`signals_to_frame` as a tab-separated file, atomically.

    The table goes to a temporary file beside ``path`` that is renamed into
    place when complete; missing values are written as ``n/a`` (BIDS).

    Parameters
    ----------
    signals : xarray.DataArray
        See :func:`signals_to_frame`.
    path : str or path-like
        Output ``.tsv`` file.
    overwrite : bool
        Replace an existing file (default: refuse).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false (checked before computing).
    InvalidParameterError
        The parent directory does not exist.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise InvalidParameterError(f"{path}: directory {path.parent} does not exist")
    frame = signals_to_frame(signals)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
