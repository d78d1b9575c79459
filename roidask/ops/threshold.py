"""Thresholding, binarisation and mask algebra on 3D roidask images (lazy).

Masks are boolean images. Wherever a mask is needed, an image is accepted if it
is boolean or if all its voxels are 0 or 1 (e.g. an int16 ``mask.nii.gz``);
anything else is an error that lists the values found (raised when the graph
is computed, since checking voxel values means reading them). Use
:func:`binarize_img` (nonzero = inside) or :func:`threshold_img` to turn a map
into a mask.

Images combined by the mask algebra must share one voxel grid (shape and
affine, within :data:`roidask.io.grid.AFFINE_ATOL_MM`); otherwise a
:class:`~roidask.exceptions.GridMismatchError` names both grids. Resampling is
never silent: pass ``resample="nearest"`` to resample the other masks onto the
first one's grid (nearest neighbour, :func:`scipy.ndimage.affine_transform`
with ``order=0``, ``mode="constant"``: voxels that fall outside the other
mask's field of view are outside).
"""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np
import xarray as xr
from dask import delayed
from scipy import ndimage

from roidask._docs import fill_doc
from roidask._validate import check_bool, check_real
from roidask.exceptions import GridMismatchError, ImageTypeError, InvalidParameterError
from roidask.io.chunks import block_offsets, chunk_location
from roidask.io.conversions import ImageLike, as_image
from roidask.io.grid import SPATIAL_DIMS, affine_of, check_same_grid, grid_attrs

__all__ = [
    "RESAMPLE_METHODS",
    "THRESHOLD_MODES",
    "as_mask",
    "binarize_img",
    "mask_and",
    "mask_difference",
    "mask_not",
    "mask_or",
    "resample_mask",
    "threshold_img",
]

#: Accepted ``mode`` values of :func:`threshold_img`.
THRESHOLD_MODES = ("above", "below", "absolute", "two-sided")
#: Accepted ``resample`` values of the mask algebra (``None`` = grids must match).
RESAMPLE_METHODS = ("nearest",)
_SHOWN_VALUES = 8


# -- masks ---------------------------------------------------------------------------------
def check_mask_dtype(dtype: np.dtype, *, param: str, label: str | None = None) -> None:
    """Refuse a mask whose voxels are neither booleans nor real numbers (before reading)."""
    if dtype != np.bool_ and np.dtype(dtype).kind not in "iuf":
        raise InvalidParameterError(
            f"{label or param}: expected a binary mask (bool or numbers 0/1), got data of "
            f"type {dtype}",
            param=param,
        )


def check_binary(
    values: np.ndarray, *, param: str, label: str | None = None, block_info=None
) -> np.ndarray:
    """``values`` (numbers) as booleans, or the error naming the values that are not 0 or 1.

    The one check of a mask's values: :func:`as_mask` (lazily, block by block) and the
    pipeline's masks (read at once). Values are shown as their type holds them
    (``1.0000001`` of float32, not ``1``).

    Raises
    ------
    InvalidParameterError
        A value other than 0 and 1 (``label``, default ``param``, names the image).
    """
    check_mask_dtype(values.dtype, param=param, label=label)
    if values.dtype == np.bool_:
        return values
    good = (values == 0) | (values == 1)
    if good.all():
        return values.astype(bool)
    bad = np.unique(values[~good])
    if bad.dtype.kind == "f":
        parts = [np.format_float_positional(v, trim="-") for v in bad[:_SHOWN_VALUES]]
    else:
        parts = [str(v) for v in bad[:_SHOWN_VALUES].tolist()]
    more = f" and {bad.size - _SHOWN_VALUES} more" if bad.size > _SHOWN_VALUES else ""
    raise InvalidParameterError(
        f"{label or param}: expected a binary mask (every voxel 0 or 1), found the value(s) "
        f"{', '.join(parts)}{more}{chunk_location(block_info)}; binarize it first "
        "(roidask.ops.binarize_img: nonzero = inside, or threshold_img)",
        param=param,
    )


def as_mask(img: ImageLike, *, param: str = "mask_img") -> xr.DataArray:
    """A 3D image as a lazy boolean mask, checking that every voxel is 0 or 1.

    Parameters
    ----------
    img : ImageLike
        3D image, boolean or numeric with values 0 and 1 only.
    param : str
        Parameter name used in error messages.

    Returns
    -------
    xarray.DataArray
        bool, same grid, chunks and attrs. Boolean input is returned as is.

    Raises
    ------
    ImageDimensionError
        ``img`` is not 3D.
    InvalidParameterError
        The data type is not boolean or numeric (immediately), or voxels other
        than 0 and 1 are found (when computed; the message lists them).
    """
    img = as_image(img, ndim=3, param=param)
    check_mask_dtype(img.dtype, param=param)
    if img.dtype == np.bool_:
        return img
    data = img.data.map_blocks(
        partial(check_binary, param=param),
        dtype=bool,
        meta=np.empty((0, 0, 0), dtype=bool),
    )
    return img.copy(data=data)


def _threshold_block(block, *, mode, low, high, inclusive, binarize):
    x = block
    if mode == "above":
        keep = x >= high if inclusive else x > high
    elif mode == "below":
        keep = x <= low if inclusive else x < low
    else:  # absolute / two-sided: outside (low, high)
        keep = (x <= low) | (x >= high) if inclusive else (x < low) | (x > high)
    if binarize:
        return keep
    return np.where(keep, x, np.zeros((), dtype=x.dtype))


def threshold_img(
    img: ImageLike,
    *,
    threshold,
    mode: str = "above",
    inclusive: bool = True,
    binarize: bool = True,
) -> xr.DataArray:
    """Voxels of a 3D map that pass a threshold, as a mask (default) or a map.

    Parameters
    ----------
    img : ImageLike
        3D map (any real type), e.g. -log10 p or a t statistic.
    threshold : float, or (float, float) for ``mode="two-sided"``
        Threshold in the units of ``img``.
    mode : {"above", "below", "absolute", "two-sided"}
        ``"above"``: keep ``x >= threshold``; ``"below"``: ``x <= threshold``;
        ``"absolute"``: ``|x| >= threshold`` (``threshold >= 0``; nilearn's
        ``two_sided=True``); ``"two-sided"``: ``x <= low`` or ``x >= high`` for
        ``threshold=(low, high)`` with ``low <= high``, a single number ``t``
        meaning ``(-t, t)``.
    inclusive : bool
        Voxels equal to the threshold pass (``>=``/``<=``, as nilearn and the
        seed analysis); ``False`` makes the comparisons strict.
    binarize : bool
        Return a boolean mask (default). ``False`` returns the map with the
        values of the passing voxels and 0 elsewhere (nilearn's ``threshold_img``).

    Returns
    -------
    xarray.DataArray
        Lazy, same grid, chunks and attrs. NaN voxels never pass.

    Raises
    ------
    InvalidParameterError
        Unknown ``mode``, a non-finite or wrongly shaped ``threshold``, a negative
        ``absolute`` threshold, or ``low > high``.
    ImageDimensionError
        ``img`` is not 3D.
    """
    if mode not in THRESHOLD_MODES:
        raise InvalidParameterError(
            f"mode: expected one of {list(THRESHOLD_MODES)}, got {mode!r}", param="mode"
        )
    if mode == "two-sided" and isinstance(threshold, list | tuple | np.ndarray):
        if len(threshold) != 2:
            raise InvalidParameterError(
                f"threshold: mode 'two-sided' takes one number or (low, high), got {threshold!r}",
                param="threshold",
            )
        low, high = (check_real(v, "threshold") for v in threshold)
        if low > high:
            raise InvalidParameterError(
                f"threshold: expected low <= high for mode 'two-sided', got ({low}, {high})",
                param="threshold",
            )
    else:
        t = check_real(threshold, "threshold")
        if mode in ("absolute", "two-sided"):
            if t < 0:
                raise InvalidParameterError(
                    f"threshold: mode {mode!r} needs a threshold >= 0, got {t}", param="threshold"
                )
            low, high = -t, t
        else:
            low = high = t
    inclusive = check_bool(inclusive, "inclusive")
    binarize = check_bool(binarize, "binarize")
    img = as_image(img, ndim=3, param="img")
    if img.dtype.kind not in "biuf":
        raise InvalidParameterError(
            f"img: expected real-valued voxels to threshold, got data of type {img.dtype}",
            param="img",
        )
    dtype = np.dtype(bool) if binarize else img.dtype
    func = partial(
        _threshold_block,
        mode=mode,
        low=low,
        high=high,
        inclusive=bool(inclusive),
        binarize=bool(binarize),
    )
    data = img.data.map_blocks(func, dtype=dtype, meta=np.empty((0, 0, 0), dtype=dtype))
    return img.copy(data=data)


def binarize_img(img: ImageLike) -> xr.DataArray:
    """A 3D image as a boolean mask: nonzero voxels are inside, 0 and NaN outside.

    Parameters
    ----------
    img : ImageLike
        3D image of any real type.

    Returns
    -------
    xarray.DataArray
        bool, lazy, same grid, chunks and attrs.

    Raises
    ------
    ImageDimensionError
        ``img`` is not 3D.
    InvalidParameterError
        Non-numeric data.
    """
    img = as_image(img, ndim=3, param="img")
    if img.dtype == np.bool_:
        return img
    if img.dtype.kind not in "iuf":
        raise InvalidParameterError(
            f"img: expected real-valued voxels to binarize, got data of type {img.dtype}",
            param="img",
        )
    data = img.data
    keep = (data != 0) & ~da.isnan(data) if img.dtype.kind == "f" else data != 0
    return img.copy(data=keep)


# -- resampling ----------------------------------------------------------------------------
def _resample_block(source: np.ndarray, *, matrix, offset, shape) -> np.ndarray:
    out = ndimage.affine_transform(
        source.astype(np.uint8),
        matrix,
        offset=offset,
        output_shape=shape,
        order=0,
        mode="constant",
        cval=0,
    )
    return out.astype(bool)


def resample_mask(
    mask_img: ImageLike, target_img: ImageLike, *, param: str = "mask_img"
) -> xr.DataArray:
    """Nearest-neighbour resampling of a 3D mask onto the grid of ``target_img``.

    Each target voxel takes the value of the source voxel nearest to it in
    world space (mm), exactly as :func:`scipy.ndimage.affine_transform` with
    ``order=0`` and ``mode="constant"`` on the whole source: target voxels whose
    source coordinate lies outside ``[0, n - 1]`` along an axis are outside.

    Parameters
    ----------
    mask_img : ImageLike
        3D binary mask to resample.
    target_img : ImageLike
        Any 3D or 4D image whose grid (shape, affine) the result takes.
    param : str
        Name of ``mask_img`` in error messages.

    Returns
    -------
    xarray.DataArray
        bool, lazy, on the target's grid with the target's chunks and grid attrs.
        Each output chunk reads only the part of the source it needs.
    """
    mask = as_mask(mask_img, param=param)
    target = as_image(target_img, param="target_img")
    a_src, a_tgt = affine_of(mask), affine_of(target)
    try:
        transform = np.linalg.solve(a_src, a_tgt)
    except np.linalg.LinAlgError:
        raise ImageTypeError(
            f"{param}: its affine {a_src.tolist()} is singular", param=param
        ) from None
    matrix, shift = transform[:3, :3], transform[:3, 3]
    src_shape = np.asarray(mask.shape)
    tgt_chunks = target.data.chunks[:3]
    starts = block_offsets(tgt_chunks)
    corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1)
    numblocks = tuple(len(c) for c in tgt_chunks)
    blocks = np.empty(numblocks, dtype=object)
    for idx in np.ndindex(*numblocks):
        start = np.array([starts[a][idx[a]] for a in range(3)], dtype=np.float64)
        size = np.array([tgt_chunks[a][idx[a]] for a in range(3)], dtype=np.int64)
        pts = start[:, None] + corners * (size - 1)[:, None]
        coords = matrix @ pts + shift[:, None]
        lo = np.clip(np.floor(coords.min(axis=1)).astype(np.int64) - 1, 0, src_shape)
        hi = np.clip(np.ceil(coords.max(axis=1)).astype(np.int64) + 2, 0, src_shape)
        shape = tuple(int(s) for s in size)
        if np.any(hi <= lo):
            blocks[idx] = da.zeros(shape, dtype=bool, chunks=shape)
            continue
        sub = mask.data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        offset = matrix @ start + shift - lo
        task = delayed(_resample_block, pure=True)(sub, matrix=matrix, offset=offset, shape=shape)
        blocks[idx] = da.from_delayed(task, shape=shape, dtype=bool)
    data = da.block(blocks.tolist()) if blocks.size > 1 else blocks.flat[0]
    return xr.DataArray(data, dims=SPATIAL_DIMS, name=mask.name, attrs=grid_attrs(target))


# -- algebra -------------------------------------------------------------------------------
def _aligned(mask_img, others, *, resample, names) -> tuple[xr.DataArray, list[da.Array]]:
    if resample is not None and resample not in RESAMPLE_METHODS:
        raise InvalidParameterError(
            f"resample: expected None (grids must match) or one of {list(RESAMPLE_METHODS)}, "
            f"got {resample!r}",
            param="resample",
        )
    first = as_mask(mask_img, param=names[0])
    arrays = []
    for other, name in zip(others, names[1:], strict=True):
        m = as_mask(other, param=name)
        if resample is None:
            check_same_grid(first, m, names=(names[0], name))
        else:
            try:
                check_same_grid(first, m, names=(names[0], name))
            except GridMismatchError:
                m = resample_mask(m, first, param=name)
        data = m.data
        if data.chunks != first.data.chunks:
            data = data.rechunk(first.data.chunks)
        arrays.append(data)
    return first, arrays


def _combine(mask_img, others, *, resample, op, func_name) -> xr.DataArray:
    if not others:
        raise InvalidParameterError(
            f"other_imgs: {func_name} expected at least one other mask after mask_img, got none",
            param="other_imgs",
        )
    names = ("mask_img", *(f"other_imgs[{i}]" for i in range(len(others))))
    first, arrays = _aligned(mask_img, others, resample=resample, names=names)
    data = first.data
    for arr in arrays:
        data = op(data, arr)
    return first.copy(data=data)


def mask_and(
    mask_img: ImageLike, *other_imgs: ImageLike, resample: str | None = None
) -> xr.DataArray:
    """Voxels inside ``mask_img`` and inside every one of ``other_imgs`` (lazy).

    Parameters
    ----------
    mask_img : ImageLike
        3D binary mask; its grid is the result's grid.
    *other_imgs : ImageLike
        One or more 3D binary masks.
    resample : {None, "nearest"}
        ``None`` (default): all masks must be on ``mask_img``'s grid.
        ``"nearest"``: masks on another grid are resampled onto it
        (:func:`resample_mask`).

    Returns
    -------
    xarray.DataArray
        bool, on ``mask_img``'s grid, chunks and attrs.

    Raises
    ------
    GridMismatchError
        A mask is on another grid and ``resample`` is None (both grids are stated).
    InvalidParameterError
        No other mask, an unknown ``resample``, or non-binary voxels (when computed).
    ImageDimensionError
        A mask is not 3D.
    """
    return _combine(
        mask_img, other_imgs, resample=resample, op=da.logical_and, func_name="mask_and"
    )


@fill_doc
def mask_or(
    mask_img: ImageLike, *other_imgs: ImageLike, resample: str | None = None
) -> xr.DataArray:
    """Voxels inside ``mask_img`` or inside any of ``other_imgs`` (lazy).

    Parameters
    ----------
    %(mask_img)s
        Its grid is the result's grid.
    *other_imgs : ImageLike
        One or more 3D binary masks.
    resample : {None, "nearest"}
        ``None`` (default): all masks must be on ``mask_img``'s grid.
        ``"nearest"``: masks on another grid are resampled onto it
        (:func:`resample_mask`).

    Returns
    -------
    xarray.DataArray
        bool, on ``mask_img``'s grid, chunks and attrs.

    Raises
    ------
    GridMismatchError
        A mask is on another grid and ``resample`` is None (both grids are stated).
    InvalidParameterError
        No other mask, an unknown ``resample``, or non-binary voxels (when computed).
    ImageDimensionError
        A mask is not 3D.
    """
    return _combine(mask_img, other_imgs, resample=resample, op=da.logical_or, func_name="mask_or")


@fill_doc
def mask_difference(
    mask_img: ImageLike, other_img: ImageLike, *, resample: str | None = None
) -> xr.DataArray:
    """Voxels inside ``mask_img`` and outside ``other_img`` (lazy).

    Parameters
    ----------
    %(mask_img)s
        Its grid is the result's grid.
    other_img : ImageLike
        3D binary mask of the voxels to remove.
    resample : {None, "nearest"}
        ``None`` (default): ``other_img`` must be on ``mask_img``'s grid.
        ``"nearest"``: on another grid, it is resampled onto it
        (:func:`resample_mask`).

    Returns
    -------
    xarray.DataArray
        bool, on ``mask_img``'s grid, chunks and attrs.

    Raises
    ------
    GridMismatchError
        ``other_img`` is on another grid and ``resample`` is None (both grids are
        stated).
    InvalidParameterError
        An unknown ``resample``, or non-binary voxels (when computed).
    ImageDimensionError
        A mask is not 3D.
    """
    return _combine(
        mask_img,
        (other_img,),
        resample=resample,
        op=lambda a, b: a & ~b,
        func_name="mask_difference",
    )


@fill_doc
def mask_not(mask_img: ImageLike) -> xr.DataArray:
    """Voxels outside ``mask_img``, on its grid (lazy, bool).

    Parameters
    ----------
    %(mask_img)s

    Returns
    -------
    xarray.DataArray
        bool, on ``mask_img``'s grid, chunks and attrs.

    Raises
    ------
    InvalidParameterError
        Non-binary voxels (when computed).
    ImageDimensionError
        ``mask_img`` is not 3D.
    """
    mask = as_mask(mask_img, param="mask_img")
    return mask.copy(data=~mask.data)
