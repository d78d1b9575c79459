"""Lazy, chunk-independent Gaussian smoothing of roidask images (nilearn's ``smooth_img``).

The result is the same, voxel for voxel and in the same floating-point type, as
:func:`nilearn.image.smooth_img`: per-axis sigma (voxels) from the affine and a
FWHM in mm, :func:`scipy.ndimage.gaussian_filter1d` along x, then y, then z
(``mode="reflect"``, ``truncate=4``), each pass rounded to the working type
(float32 for integer data other than 64-bit), non-finite voxels set to 0 first.
Volumes split across chunks are filtered with :func:`dask.array.map_overlap`
using exactly the kernel radius as overlap, so the result does not depend on
the chunking.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import dask.array as da
import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter1d

from roidask._docs import fill_doc
from roidask.exceptions import InvalidParameterError
from roidask.io.chunks import merge_small_chunks
from roidask.io.conversions import ImageLike, as_image
from roidask.io.grid import affine_of
from roidask.ops.kernels import (
    TRUNCATE,
    fwhm_to_sigma_voxels,
    gaussian_filter_matrix,
    gaussian_radius,
    sigma_to_fwhm_mm,
)

__all__ = ["MATRIX_MAX_VOXELS", "smooth_array", "smooth_img", "smoothing_dtype"]


def smoothing_dtype(dtype) -> np.dtype:
    """The floating-point type nilearn smooths ``dtype`` in.

    Integers become float32, except int64/uint64 which become float64; float32
    and float64 are kept. float16 and bool (which scipy cannot filter) become
    float32.

    Raises
    ------
    InvalidParameterError
        Complex or non-numeric data.
    """
    dtype = np.dtype(dtype)
    if dtype in (np.dtype(np.int64), np.dtype(np.uint64)):
        return np.dtype(np.float64)
    if dtype.kind in "iub" or dtype == np.dtype(np.float16):
        return np.dtype(np.float32)
    if dtype.kind == "f":
        return dtype
    raise InvalidParameterError(
        f"img: cannot smooth data of type {dtype}; expected integer or real floating-point voxels",
        param="img",
    )


#: Axes of at most this many voxels are filtered as a matrix product: the filter
#: of an axis is a dense n x n matrix (scipy's filter applied to the identity, so
#: the same weights and ``reflect`` edges), which BLAS applies to all lines at
#: once, several times faster than scipy's line-by-line loop on short axes.
#: Longer axes use :func:`scipy.ndimage.gaussian_filter1d` (fewer operations).
MATRIX_MAX_VOXELS = 128


def smooth_array(x: np.ndarray, sigma, dtype) -> np.ndarray:
    """Smooth every volume of an in-memory array as :func:`smooth_img` does, fast.

    The same filter (x, then y, then z, each pass rounded to ``dtype``), with
    short axes (at most :data:`MATRIX_MAX_VOXELS`) filtered as matrix products:
    the result equals :func:`smooth_img` (and nilearn) to the rounding of
    ``dtype``, not bit for bit (a few float32 ulp: sums are formed in another
    order). For the statistics of the one-pass pipeline, which reduce it in float64.
    The bits are the same on every call if BLAS runs one thread, as it does in
    :func:`roidask.pipeline.compute` (see :mod:`roidask._blas`).

    Parameters
    ----------
    x : ndarray, (x, y, z) or (x, y, z, t)
        Voxel values (any real type); never modified.
    sigma : sequence of 3 floats
        Gaussian sigma per spatial axis, in voxels
        (:func:`roidask.ops.kernels.fwhm_to_sigma_voxels`).
    dtype : numpy dtype
        Working and output type (:func:`smoothing_dtype` of ``x``'s type).

    Returns
    -------
    ndarray
        Fortran-ordered (each volume contiguous), same shape as ``x``;
        non-finite input voxels count as 0.
    """
    dtype = np.dtype(dtype)
    out = x.astype(dtype, order="F", copy=True)
    if out.dtype.kind == "f" and x.dtype.kind == "f":
        out[~np.isfinite(out)] = 0
    # C-ordered view (t, z, y, x): the volume axis first, x the fastest.
    lines = out.reshape((*out.shape[:3], -1), order="F").T
    spare = None
    for axis, s in enumerate(sigma):
        if gaussian_radius(s) == 0:
            continue
        spare = np.empty_like(lines) if spare is None else spare
        n, c_axis = lines.shape[3 - axis], 3 - axis
        if n > MATRIX_MAX_VOXELS:
            gaussian_filter1d(
                lines, float(s), axis=c_axis, mode="reflect", truncate=TRUNCATE, output=spare
            )
        else:
            matrix = gaussian_filter_matrix(n, float(s), dtype)
            before = int(np.prod(lines.shape[:c_axis]))
            if c_axis == 3:  # x: one product over all lines
                np.matmul(lines.reshape(before, n), matrix.T, out=spare.reshape(before, n))
            else:  # one product per slab of lines
                shape = (before, n, -1)
                np.matmul(matrix, lines.reshape(shape), out=spare.reshape(shape))
        lines, spare = spare, lines
    return lines.T.reshape(x.shape, order="F")


def _finite_block(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    out = block.astype(dtype, copy=True)
    out[~np.isfinite(out)] = 0
    return out


def _gaussian_block(block: np.ndarray, *, sigma: float, axis: int) -> np.ndarray:
    return gaussian_filter1d(
        block, sigma, axis=axis, mode="reflect", truncate=TRUNCATE, output=block.dtype
    )


def _filter_axis(arr: da.Array, axis: int, sigma: float) -> da.Array:
    """``gaussian_filter1d`` along ``axis`` of a dask array, independent of its chunks.

    Chunks are merged so each is at least the kernel radius; the overlap is the
    radius, and no padding is added at the array edges (``boundary="none"``),
    so edge blocks apply scipy's own reflect mode at the true edge of the axis
    and every kept output sees exactly the input values the unchunked filter sees.
    """
    func = partial(_gaussian_block, sigma=float(sigma), axis=axis)
    radius = gaussian_radius(sigma)
    chunks = merge_small_chunks(arr.chunks[axis], radius)
    if chunks != arr.chunks[axis]:
        arr = arr.rechunk({axis: chunks})
    if len(chunks) == 1:
        return arr.map_blocks(func, dtype=arr.dtype)  # type: ignore[arg-type,call-arg]  # dask's typing of map_blocks
    depth = {i: (radius if i == axis else 0) for i in range(arr.ndim)}
    return da.map_overlap(
        func,
        arr,
        depth=depth,
        boundary="none",
        trim=True,
        allow_rechunk=False,
        dtype=arr.dtype,
        meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
    )


@fill_doc
def smooth_img(img: ImageLike, *, fwhm: float | Sequence[float | None] | None) -> xr.DataArray:
    """Smooth a 3D image or every volume of a 4D series with a Gaussian kernel (lazy).

    Identical to :func:`nilearn.image.smooth_img`: the FWHM (mm) is turned into a
    sigma in voxels per spatial axis from the affine's voxel sizes
    (:func:`roidask.ops.kernels.fwhm_to_sigma_voxels`), then
    :func:`scipy.ndimage.gaussian_filter1d` (``mode="reflect"``, ``truncate=4``)
    is applied along x, then y, then z, each pass stored in the working type.
    The time axis is never smoothed.

    Smoothing is linear and acts on each volume separately. Selecting volumes
    first and smoothing only those, e.g.
    ``smooth_img(bold.sel(time=bold.condition.isin(["face", "house"])), fwhm=6)``,
    therefore gives exactly the selected volumes of the smoothed series; this is
    what the pipeline does. For the same reason ``smooth_img(mean)`` equals the
    mean of ``smooth_img(bold)`` up to floating-point rounding.

    Parameters
    ----------
    %(img)s
    %(fwhm)s

    Returns
    -------
    xarray.DataArray
        Dask-backed, same dims, coordinates, attrs and chunks as ``img``;
        float32 for integer input (float64 for int64/uint64), float input keeps
        its type (float16 becomes float32). Non-finite voxels are set to 0
        before filtering, even when no smoothing is asked for, as nilearn does.
        ``attrs["smoothing_fwhm_mm"]`` holds the per-axis FWHM applied (mm).

    Raises
    ------
    InvalidParameterError
        ``fwhm`` is negative, not finite, not a number, or not 1 or 3 values.
    """
    img = as_image(img, param="img")
    affine = affine_of(img)
    sigma = fwhm_to_sigma_voxels(affine, fwhm)
    dtype = smoothing_dtype(img.dtype)

    data: da.Array = img.data
    original_chunks = data.chunks
    if dtype.kind == "f" and img.dtype.kind == "f":
        arr = data.map_blocks(_finite_block, dtype, dtype=dtype)  # type: ignore[arg-type,call-arg]  # dask's typing of map_blocks
    else:
        arr = data.astype(dtype)
    for axis, s in enumerate(sigma):
        # A kernel of radius 0 is the single weight 1.0: the identity (and scipy
        # divides by zero building it when sigma**2 underflows).
        if gaussian_radius(s) > 0:
            arr = _filter_axis(arr, axis, float(s))
    if arr.chunks != original_chunks:
        arr = arr.rechunk(original_chunks)

    return img.copy(data=arr).assign_attrs(smoothing_fwhm_mm=sigma_to_fwhm_mm(affine, sigma))
