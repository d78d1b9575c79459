"""One read of a BOLD series for the ROI pipeline: sum, smoothed contrast moments, a box.

The ROI pipeline needs three things from the volumes of a series:

* the voxelwise sum of every volume (the mean EPI is the smoothed mean, and
  smoothing is linear, so only the mean is smoothed);
* the two-pass moments (count, mean, sum of squared deviations) of the
  *smoothed* volumes of the two contrast conditions, for the t-test;
* the signals of ROIs that are only known once the t-test is done.

ROIs lie inside the mask grown by the dilation, and a smoothed ROI signal only
depends on raw voxels within the smoothing kernel's radius of the ROI. So one
read of the data is enough: every block of whole volumes contributes its float64
sum, the float64 moments of its smoothed contrast volumes (smoothed as nilearn
does to the rounding of float32 by :func:`roidask.ops.smooth.smooth_array`; two-pass
within the block, merged pairwise with Chan et al.'s formula) and a copy of its raw voxels
inside that *box*. The ROI signals are then extracted from the box alone, with
the same result as from the whole volumes (see :func:`roi_box`).

Blocks hold whole volumes, so smoothing needs no overlap between blocks; the
graph is one task per block (reading it and reducing it at once) and a chain of
merges in time order, built lazily by :func:`contrast_pass` (nothing is read until
it is computed). The chain, rather than a tree, makes dask take the blocks in
file order, which a sequential ``.nii.gz`` decoder needs, and holds at most a few
partials at a time.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from roidask.exceptions import InvalidParameterError
from roidask.io.image import affine_of, as_image
from roidask.ops.kernels import fwhm_to_sigma_voxels
from roidask.ops.smooth import smooth_array, smoothing_dtype
from roidask.ops.stats import _check_conditions, _volume_moments

__all__ = ["PassResult", "box_image", "contrast_pass", "roi_box"]

#: Float64 maps in one block's partial result (sum, two means, two m2).
PARTIAL_MAPS = 5


@dataclass
class PassResult:
    """What :func:`contrast_pass` computes.

    Attributes
    ----------
    total : ndarray (x, y, z), float64
        Sum of every volume, in the data's units.
    n_volumes : int
        Number of volumes summed.
    counts : ndarray (2,), int64
        Volumes of each contrast condition.
    mean, m2 : ndarray (x, y, z, 2), float64
        Per condition, the mean and the sum of squared deviations of the
        smoothed volumes.
    box : tuple of 3 slices or None
        The spatial box whose raw voxels were kept.
    box_blocks : list of ndarray (bx, by, bz, t_block)
        The raw (unsmoothed) voxels of ``box``, one array per block, in time order.
    """

    total: np.ndarray
    n_volumes: int
    counts: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    box: tuple[slice, slice, slice] | None
    box_blocks: list[np.ndarray]

    def moments(self) -> np.ndarray:
        """``(x, y, z, 2, 3)`` array of (mean, m2, count) as :mod:`roidask.ops.stats` uses."""
        count = np.broadcast_to(self.counts.astype(np.float64), self.mean.shape)
        return np.stack([self.mean, self.m2, count], axis=-1)


def roi_box(mask: np.ndarray, *, grow_voxels: Sequence[int]) -> tuple[slice, slice, slice] | None:
    """Bounding box of a mask's nonzero voxels grown by ``grow_voxels`` per axis (clipped).

    With ``grow_voxels = dilation_iterations + smoothing kernel radius`` (per axis,
    in voxels), the box holds every raw voxel the smoothed signal of an ROI inside
    the dilated mask depends on, and every such ROI voxel is at least the kernel
    radius away from a box face that is not a face of the volume. Smoothing or
    building smoothed ROI weights on the box alone (``mode="reflect"`` at the
    volume's own faces) therefore gives exactly the values of the whole volume
    at the ROI voxels.

    Returns
    -------
    tuple of 3 slices, or None if the mask is empty.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InvalidParameterError(f"mask: expected a 3D array, got shape {mask.shape}")
    nonzero = np.argwhere(mask != 0)
    if nonzero.size == 0:
        return None
    lo, hi = nonzero.min(axis=0), nonzero.max(axis=0) + 1
    grow = np.asarray(grow_voxels, dtype=np.int64)
    lo = np.maximum(lo - grow, 0)
    hi = np.minimum(hi + grow, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _block_partial(
    block: np.ndarray,
    codes: np.ndarray,
    *,
    sigma: np.ndarray,
    work_dtype: np.dtype,
    box: tuple[slice, slice, slice] | None,
) -> dict:
    """Sum, contrast moments and boxed raw voxels of one block of whole volumes."""
    if block.dtype.kind in "iub" and block.dtype.itemsize <= 2 and block.shape[3] < 2**15:
        # exact in int32 (and faster than converting every voxel to float64); einsum
        # sums the contiguous time axis of a C-ordered (zarr) block twice as fast
        if block.flags.c_contiguous:
            total = np.einsum("...t->...", block, dtype=np.int32).astype(np.float64)
        else:
            total = block.sum(axis=3, dtype=np.int32).astype(np.float64)
    else:
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, as numpy's sum
            total = block.sum(axis=3, dtype=np.float64)
    part = {
        "total": total,
        "n": block.shape[3],
        "counts": np.zeros(2, dtype=np.int64),
        "mean": None,  # (x, y, z, 2) float64 once a block has contrast volumes
        "m2": None,
        "box": [] if box is None else [block[(*box, slice(None))].copy()],
    }
    if np.any(codes >= 0):
        part["mean"] = np.zeros((*block.shape[:3], 2))
        part["m2"] = np.zeros((*block.shape[:3], 2))
        for g in range(2):
            volumes = np.flatnonzero(codes == g)
            if volumes.size:
                smoothed = smooth_array(block[..., volumes], sigma, work_dtype)
                part["mean"][..., g], part["m2"][..., g] = _volume_moments(smoothed)
                part["counts"][g] = volumes.size
    return part


def _block_partial_object(block, codes, **kwargs) -> np.ndarray:
    out = np.empty(1, dtype=object)
    out[0] = _block_partial(block, codes, **kwargs)
    return out.reshape(1, 1, 1, 1)


def _merge_two(a: dict, b: dict) -> dict:
    """Partials of two consecutive blocks merged (Chan et al. for the moments)."""
    counts = a["counts"] + b["counts"]
    if b["mean"] is None or a["mean"] is None:
        mean, m2 = (a["mean"], a["m2"]) if b["mean"] is None else (b["mean"], b["m2"])
    else:
        mean, m2 = a["mean"].copy(), a["m2"].copy()
        for g in range(2):
            na, nb = int(a["counts"][g]), int(b["counts"][g])
            if nb == 0:
                continue
            if na == 0:
                mean[..., g], m2[..., g] = b["mean"][..., g], b["m2"][..., g]
                continue
            n = na + nb
            delta = b["mean"][..., g] - a["mean"][..., g]
            mean[..., g] += delta * (nb / n)
            m2[..., g] += b["m2"][..., g] + delta * delta * (na * nb / n)
    with np.errstate(invalid="ignore"):
        total = a["total"] + b["total"]
    return {
        "total": total,
        "n": a["n"] + b["n"],
        "counts": counts,
        "mean": mean,
        "m2": m2,
        "box": a["box"] + b["box"],
    }


def _finish(part: dict, box) -> PassResult:
    empty = np.zeros((*part["total"].shape, 2))
    return PassResult(
        total=part["total"],
        n_volumes=int(part["n"]),
        counts=part["counts"],
        mean=empty if part["mean"] is None else part["mean"],
        m2=empty if part["m2"] is None else part["m2"],
        box=box,
        box_blocks=part["box"],
    )


def contrast_pass(
    img,
    *,
    contrast: Sequence[str],
    fwhm,
    box: tuple[slice, slice, slice] | None = None,
) -> Delayed:
    """Lazy single read of a BOLD series: sum, smoothed contrast moments, boxed voxels.

    Parameters
    ----------
    img : path, nibabel image or xarray.DataArray
        4D BOLD series with a ``condition`` coordinate. Its chunks are merged to
        whole volumes (time chunks are kept): one task per time chunk.
    contrast : (str, str)
        The two conditions whose smoothed volumes' moments are computed.
    fwhm : float, sequence of 3, or None
        Smoothing FWHM in mm, as :func:`roidask.ops.smooth.smooth_img`.
    box : tuple of 3 slices, optional
        Spatial box whose raw voxels are kept for every volume
        (see :func:`roi_box`).

    Returns
    -------
    dask.delayed.Delayed
        Computes to a :class:`PassResult`. Building it reads no voxel data.

    Raises
    ------
    ConditionError
        A contrast condition is missing or has fewer than 2 volumes.
    InvalidParameterError
        Bad ``contrast`` or ``fwhm``.
    """
    bold = as_image(img, ndim=4, param="img")
    _, index, group = _check_conditions(bold, list(contrast), param="contrast", min_count=2)
    codes = np.full(bold.sizes["time"], -1, dtype=np.int64)
    codes[index] = group
    sigma = fwhm_to_sigma_voxels(affine_of(bold), fwhm)

    data = bold.data
    if any(len(c) > 1 for c in data.chunks[:3]):
        data = data.rechunk({0: -1, 1: -1, 2: -1})
    # One task per block that reads it and reduces it at once (blockwise fusion), so
    # a block is never held waiting for its reduction.
    parts = da.blockwise(
        _block_partial_object,
        "xyzt",
        data,
        "xyzt",
        da.from_array(codes, chunks=(data.chunks[3],)),
        "t",
        sigma=sigma,
        work_dtype=smoothing_dtype(bold.dtype),
        box=box,
        # no index is contracted, so blocks are passed as read (no concatenation copy)
        adjust_chunks={"x": 1, "y": 1, "z": 1, "t": 1},
        meta=np.empty((0, 0, 0, 0), dtype=object),
    )
    parts = [dask.delayed(operator.getitem)(p, (0, 0, 0, 0)) for p in parts.to_delayed().ravel()]
    merge = dask.delayed(_merge_two, pure=True)
    total = parts[0]
    for part in parts[1:]:
        total = merge(total, part)
    return dask.delayed(_finish, pure=True)(total, box)


def box_image(result: PassResult, bold: xr.DataArray) -> xr.DataArray:
    """The kept raw voxels as a 4D roidask image on the box (affine shifted to it)."""
    from roidask.io.image import BOLD_DIMS

    if result.box is None:
        raise InvalidParameterError("box_image: the pass kept no box")
    # name=False: no hashing of the kept voxels to name the chunks
    arr = da.concatenate(
        [da.from_array(b, chunks=b.shape, name=False) for b in result.box_blocks], axis=3
    )
    affine = affine_of(bold).copy()
    offset = np.array([s.start for s in result.box] + [1.0])
    affine[:, 3] = affine @ offset
    coords = {k: v for k, v in bold.coords.items() if v.dims == ("time",)}
    attrs = {k: v for k, v in bold.attrs.items() if k != "nifti_header"}
    attrs["affine"] = affine.tolist()
    return xr.DataArray(arr, dims=BOLD_DIMS, coords=coords, name=bold.name, attrs=attrs)
