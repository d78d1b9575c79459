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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from dask.base import tokenize
from scipy import ndimage, sparse

from roidask._validate import check_choice
from roidask.exceptions import EmptyMaskWarning, InvalidParameterError
from roidask.io.chunks import block_bounds
from roidask.io.conversions import ImageLike, as_image
from roidask.io.grid import affine_of, check_same_grid
from roidask.io.image import stored_scaling, volume_coords
from roidask.io.nifti import scale_stored
from roidask.ops import moments as mom_ops
from roidask.ops.clean import apply_cleaning, plan_cleaning
from roidask.ops.kernels import fwhm_to_sigma_voxels, gaussian_filter_matrix, gaussian_radius

__all__ = ["LINEAR_STRATEGIES", "STRATEGIES", "extract_signals"]

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
            f"{param}: expected integer label values, got dtype {values.dtype}", param=param
        )
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        distinct = np.unique(values[bad])
        shown = ", ".join(f"{v:g}" for v in distinct[:5]) + (" ..." if distinct.size > 5 else "")
        raise InvalidParameterError(
            f"{param}: expected integer label values, got "
            f"{int(bad.sum())} voxel(s) with non-integer values [{shown}] "
            f"({distinct.size} distinct); round or relabel the image",
            param=param,
        )
    return values.astype(np.int64)


def _requested_labels(labels, background_label: int) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, str | bytes) or not isinstance(labels, Sequence | np.ndarray):
        raise InvalidParameterError(
            f"labels: expected a sequence of integer label values, got {labels!r}", param="labels"
        )
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidParameterError(
            f"labels: expected a non-empty 1D sequence of integer label values, got {labels!r}",
            param="labels",
        )
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InvalidParameterError(
                f"labels: expected integer label values, got {labels!r}", param="labels"
            )
    arr = arr.astype(np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise InvalidParameterError(
            f"labels: duplicate label values {uniq[counts > 1].tolist()}; give each label once",
            param="labels",
        )
    if (arr == background_label).any():
        raise InvalidParameterError(
            f"labels: contains the background label {background_label}; background is "
            "never extracted",
            param="labels",
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
            "one labelled voxel",
            param="labels_img",
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
        raise InvalidParameterError(
            f"mask_img: expected numeric values, got dtype {values.dtype}", param="mask_img"
        )
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


def _indicator_plans(index: np.ndarray, chunks3) -> dict[tuple[int, ...], _Plan]:
    bounds = block_bounds(chunks3)
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


def _smoothing_weights(index: np.ndarray, n_roi: int, sigma: np.ndarray):
    """Triplets (flat voxel, roi, weight) of ``S^T 1_roi`` for every ROI."""
    shape = index.shape
    ops = [
        # radius 0: the identity, as smooth_img (scipy divides by zero when sigma**2
        # underflows)
        gaussian_filter_matrix(n, s) if gaussian_radius(s) > 0 else None
        for n, s in zip(shape, sigma, strict=True)
    ]
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
    bounds = block_bounds(chunks3)
    coords = np.unravel_index(flat, index.shape)
    bidx = [np.searchsorted(bounds[d], coords[d], side="right") - 1 for d in range(3)]
    sizes = [np.asarray(c)[b] for c, b in zip(chunks3, bidx, strict=True)]
    offset = [coords[d] - bounds[d][bidx[d]] for d in range(3)]
    local = (offset[0] * sizes[1] + offset[1]) * sizes[2] + offset[2]  # C order in the chunk
    block_id = np.ravel_multi_index(bidx, tuple(len(c) for c in chunks3))
    order = np.argsort(block_id, kind="stable")
    ids, starts = np.unique(np.asarray(block_id)[order], return_index=True)
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
def _gather(block: np.ndarray, vox: np.ndarray, dtype, scaling=None) -> np.ndarray:
    """Rows of the plan's voxels, (n_vox, n_t), non-finite values set to 0.

    With ``scaling`` (:func:`roidask.io.image.stored_scaling`) the chunk holds stored
    integers: the gathered rows are scaled (the same values as scaling the chunk).


    ``vox`` are flat C-order indices in the chunk. A Fortran-ordered chunk (NIfTI
    blocks, the pass's box and temporary file) is gathered without copying the
    whole chunk to C order first: each volume is contiguous there. The rows are
    C-ordered either way (the reductions' rounding depends on the memory order).
    """
    n_t = block.shape[-1]
    if block.ndim > 2 and block.flags.f_contiguous and not block.flags.c_contiguous:
        shape = block.shape[:-1]
        vox_f = np.ravel_multi_index(np.unravel_index(vox, shape), shape, order="F")
        volumes = block.reshape(-1, n_t, order="F").T  # (n_t, n_voxels), C-contiguous
        rows = np.ascontiguousarray(volumes[:, vox_f].T)
    else:
        rows = block.reshape(-1, n_t)[vox]
    if scaling is not None:
        rows = scale_stored(rows, *scaling)
    rows = rows.astype(dtype, copy=False)
    if rows.dtype.kind == "f":
        rows[~np.isfinite(rows)] = 0
    return rows


def _gather_rows(block: np.ndarray, *, vox: np.ndarray, work, scaling) -> np.ndarray:
    return _gather(block, vox, work, scaling)


def _chunk_partial(
    block: np.ndarray, *, plan: _Plan, kind: str, n_roi: int, scaling
) -> np.ndarray:
    """Per-ROI partial statistics of one chunk, shape (n_stats, n_roi, n_t)."""
    v = _gather(block, plan.vox, np.float64, scaling)
    n_t = v.shape[1]
    if plan.weights is not None:
        return np.asarray(plan.weights @ v)[None]
    starts = plan.starts
    assert starts is not None  # an indicator plan (no weights)
    if kind == "sum":
        out = np.zeros((1, n_roi, n_t))
        out[0, plan.present] = np.add.reduceat(v, starts, axis=0)
    elif kind == "min":
        out = np.full((1, n_roi, n_t), np.inf)
        out[0, plan.present] = np.minimum.reduceat(v, starts, axis=0)
    elif kind == "max":
        out = np.full((1, n_roi, n_t), -np.inf)
        out[0, plan.present] = np.maximum.reduceat(v, starts, axis=0)
    else:  # moments, stacked along axis 0 (roidask.ops.moments.FIELDS)
        n = np.diff(np.append(starts, v.shape[0]))
        mean = np.add.reduceat(v, starts, axis=0) / n[:, None]
        dev = v - np.repeat(mean, n, axis=0)
        m2 = np.add.reduceat(dev * dev, starts, axis=0)
        out = np.zeros((3, n_roi, n_t))
        out[:, plan.present] = mom_ops.stack(mom_ops.Moments(n[:, None], mean, m2), axis=0)
    return out


def _merge_moments(x: np.ndarray, axis=0, keepdims=True) -> np.ndarray:
    """Combine stacked moment partials (fields on axis 1) along axis 0."""
    merged = mom_ops.merge_along(mom_ops.unstack(x, axis=1), 0)
    out = mom_ops.stack(merged, axis=0)
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
def _per_chunk(func, sub: da.Array, out: str, new_axes: dict, dtype, name: str, **kwargs):
    """``func`` on every chunk of ``sub`` (one spatial chunk), new axes ``out`` + time.

    The spatial indices are kept (as axes of length 1, then dropped) rather than
    contracted, so every chunk reaches ``func`` as read: contracting them makes
    dask copy each chunk (``concatenate3``) even when there is only one.
    """
    result = da.blockwise(
        _keep_spatial_axes,
        f"{out}xyz",
        sub,
        "xyzt",
        new_axes=new_axes,
        adjust_chunks={"x": 1, "y": 1, "z": 1},
        dtype=dtype,
        meta=np.empty((0,) * (len(out) + 3), dtype=dtype),
        name=name,
        kernel=func,
        **kwargs,
    )
    return result[(Ellipsis, 0, 0, 0)]


def _keep_spatial_axes(block: np.ndarray, *, kernel, **kwargs) -> np.ndarray:
    return kernel(block, **kwargs)[..., None, None, None]


def _reduce_partials(
    arr: da.Array, plans: dict, kind: str, n_roi: int, token: str, scaling
) -> da.Array:
    """(n_stats, n_roi, n_time) statistics combined over the spatial chunks."""
    k = _N_STATS[kind]
    parts = []
    for block, plan in plans.items():
        parts.append(
            _per_chunk(
                _chunk_partial,
                arr.blocks[block],
                "krt",
                {"k": k, "r": n_roi},
                np.float64,
                f"roi-partial-{token}-{'-'.join(map(str, block))}",
                plan=plan,
                kind=kind,
                n_roi=n_roi,
                scaling=scaling,
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


def _median_graph(arr: da.Array, plans: dict, n_roi: int, token: str, scaling) -> da.Array:
    values = arr.dtype if scaling is None else scaling[2]
    work = values if values.kind == "f" else np.dtype(np.float64)
    parts, rois = [], []
    for block, plan in plans.items():
        parts.append(
            _per_chunk(
                _gather_rows,
                arr.blocks[block],
                "vt",
                {"v": plan.vox.size},
                work,
                f"roi-gather-{token}-{'-'.join(map(str, block))}",
                vox=plan.vox,
                work=work,
                scaling=scaling,
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
    bold_img: ImageLike,
    labels_img: ImageLike,
    *,
    strategy: str = "mean",
    labels: Sequence[int] | None = None,
    mask_img: ImageLike | None = None,
    background_label: int = 0,
    fwhm: float | Sequence[float | None] | None = None,
    detrend: bool = False,
    standardize: str | None = None,
    high_pass_hz: float | None = None,
    low_pass_hz: float | None = None,
    filter: str = "cosine",
    tr_s: float | None = None,
) -> xr.DataArray:
    """Every ROI's signal for every volume, in one pass over the chunked BOLD data.

    Equivalent to ``NiftiLabelsMasker(labels_img, mask_img=mask_img,
    strategy=strategy, smoothing_fwhm=fwhm, standardize=None, detrend=False,
    resampling_target=None).fit_transform(bold_img).T`` followed by the optional
    cleaning of :func:`roidask.ops.clean.clean_signals`; see the module docstring
    for the algorithm.

    Parameters
    ----------
    bold_img : ImageLike
        4D BOLD series (see :func:`roidask.io.as_image`); any chunking. A series of
        stored integers and their scaling (``bold_from_nifti(..., scaled=False)``,
        :func:`roidask.io.image.stored_scaling`) is scaled voxel by voxel as read
        (volumes scaled differently, chunk by chunk first).
    labels_img : ImageLike
        3D integer label image on the BOLD grid; ``background_label`` (0) is no
        region. Read when this function is called (it defines the ``roi`` axis): a
        lazy label image (e.g. :func:`~roidask.ops.label`'s) is computed then.
    strategy : str
        One of :data:`STRATEGIES` (as nilearn): ``mean``, ``median``, ``sum``,
        ``minimum``, ``maximum``, ``standard_deviation``, ``variance``
        (population variance, ``ddof=0``). The median is exact.
    labels : sequence of int, optional
        Label values to extract, in this order. Default: every non-background
        value of ``labels_img``, sorted. Labels without voxels give all-NaN rows
        and an :class:`~roidask.exceptions.EmptyMaskWarning`.
    mask_img : ImageLike, optional
        3D mask on the BOLD grid; voxels outside (0 or non-finite) count as
        background. Labels left without voxels are kept as all-NaN rows with an
        :class:`~roidask.exceptions.EmptyMaskWarning`. Read when this function is
        called, as ``labels_img`` is (it decides each ROI's voxels and ``n_voxels``):
        a lazy mask (e.g. a thresholded map) is computed then.
    background_label : int
        Label value meaning "no region" (default 0).
    fwhm : float or sequence of 3, optional
        Gaussian smoothing FWHM in mm applied before extraction, exactly (as
        ``nilearn.image.smooth_img``); only for the linear strategies ``mean``
        and ``sum``.
    detrend, standardize, high_pass_hz, low_pass_hz, filter, tr_s
        Optional run-wise cleaning of the signals, as
        :func:`roidask.ops.clean.clean_signals` (default: none, as the seed).
        ``tr_s`` defaults to the BOLD's ``tr_s``.

    Returns
    -------
    xarray.DataArray
        Dims ``(roi, time)``, lazy and dask-backed (one chunk along ``roi``, the
        BOLD's chunks along ``time``); coords ``roi`` (label values),
        ``n_voxels`` (per ROI, after the mask), ``volume`` (index in the
        series) and the BOLD's ``time`` (s), ``condition`` and ``run``. float32
        if the BOLD's values are float32 (as nilearn), float64 otherwise. Units are the
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
    check_choice(strategy, "strategy", STRATEGIES)
    if fwhm is not None and strategy not in LINEAR_STRATEGIES:
        raise InvalidParameterError(
            f"fwhm: smoothing can only be folded exactly into linear strategies "
            f"{list(LINEAR_STRATEGIES)}, got strategy={strategy!r}; smooth the BOLD "
            "first (roidask.ops.smooth) for a non-linear strategy",
            param="fwhm",
        )
    if isinstance(background_label, bool) or not isinstance(background_label, int | np.integer):
        raise InvalidParameterError(
            f"background_label: expected an integer label value, got {background_label!r}",
            param="background_label",
        )
    requested = _requested_labels(labels, int(background_label))
    bold = as_image(bold_img, ndim=4, param="bold_img", stored=True)  # scaled as gathered
    if bold.dtype.kind not in "biuf":
        raise InvalidParameterError(
            f"bold_img: expected real-valued voxel data, got dtype {bold.dtype}", param="bold_img"
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
        tr_s=bold.attrs.get("tr_s") if tr_s is None else tr_s,
    )
    mask = _mask_values(mask_img, bold)
    lab = _integer_labels(_values_3d(labels_img, lab_img), "labels_img")
    rois = _resolve_rois(lab, mask, requested, int(background_label))
    n_roi = rois.values.size

    arr = bold.data
    scaling = stored_scaling(bold, param="bold_img")  # stored integers: scaled as gathered
    values_dtype = bold.dtype if scaling is None else scaling[2]
    chunks3 = arr.chunks[:3]
    kind = _KIND[strategy]
    smooth = any(gaussian_radius(s) > 0 for s in sigma)
    token = tokenize(arr.name, rois.index, strategy, sigma.tolist())
    if smooth:
        plans = _weight_plans(rois.index, n_roi, sigma, chunks3)
    else:
        plans = _indicator_plans(rois.index, chunks3)

    if not plans:
        values = da.full((n_roi, arr.shape[3]), np.nan, chunks=((n_roi,), arr.chunks[3]))
    elif kind == "median":
        values = _median_graph(arr, plans, n_roi, token, scaling)
    else:
        stats = _reduce_partials(arr, plans, kind, n_roi, token, scaling)
        safe = np.maximum(rois.counts, 1)[:, None].astype(np.float64)
        if strategy == "mean":
            values = stats[0] / safe
        elif kind == "moments":
            values = stats[mom_ops.FIELDS.index("m2")] / safe
            if strategy == "standard_deviation":
                values = da.sqrt(values)
        else:
            values = stats[0]
    out_dtype = np.dtype(np.float32) if values_dtype == np.float32 else np.dtype(np.float64)
    values = da.where((rois.counts > 0)[:, None], values, np.nan).astype(out_dtype)

    coords = {
        "roi": ("roi", rois.values),
        "n_voxels": ("roi", rois.counts),
        **volume_coords(bold),  # values: not the scaling of stored integers
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
