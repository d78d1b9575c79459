"""One read of a BOLD series for the ROI pipeline: sum, smoothed contrast moments, a box.

The ROI pipeline needs three things from the volumes of a series:

* the voxelwise sum of every volume (the mean EPI is the smoothed mean, and
  smoothing is linear, so only the mean is smoothed);
* the two-pass moments (count, mean, sum of squared deviations) of the
  *smoothed* volumes of the two contrast conditions, for the t-test: one pair
  for the whole series, or one pair per *moment group* of volumes (e.g. per run,
  for ROIs defined on other runs than the signals: :mod:`roidask.ops.folds`),
  which are merged afterwards as needed (moments are additive);
* the signals of ROIs that are only known once the t-test is done.

ROIs lie inside the mask grown by the dilation, and a smoothed ROI signal only
depends on raw voxels within the smoothing kernel's radius of the ROI. So one
read of the data is enough: every block of whole volumes contributes its float64
sum, the float64 moments of its smoothed contrast volumes (smoothed as nilearn
does to the rounding of float32 by :func:`roidask.ops.smooth.smooth_array`; two-pass
within the block, merged pairwise with Chan et al.'s formula) and a copy of its raw voxels
inside that *box*. The ROI signals are then extracted from the box alone, with
the same result as from the whole volumes (see :func:`roi_box`).

A box too large to keep in memory (:data:`BOX_MAX_BYTES`; a whole-brain or large
mask) is not held: every task writes the voxels of its block that lie near the
mask into a temporary file on disk, cut in spatial tiles
(:mod:`roidask.io.spill`), and the extraction reads back only the tiles its ROIs
touch. The data is read once either way, and memory does not depend on the mask.

Blocks hold whole volumes, so smoothing needs no overlap between blocks; the
graph is one task per block (reading it and reducing it at once) and a chain of
merges in time order, built lazily by :func:`contrast_pass` (nothing is read until
it is computed). The chain, rather than a tree, makes dask take the blocks in
file order, which a sequential ``.nii.gz`` decoder needs, and holds at most a few
partials at a time.

This module owns the pass's sizing too: the blocks a task reads
(:data:`BLOCK_MAX_BYTES`, :func:`pass_chunks`, :func:`nifti_block_volumes`), what
it keeps for the extraction, the ROI box in memory or the tiles of a temporary
file (:func:`kept_voxels`, :func:`pass_box`, :func:`pass_tiles`,
:data:`BOX_MAX_BYTES`), and the model of a worker's memory that a batch uses to
fit subjects to small workers (:func:`memory_plan`).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from roidask._validate import check_conditions, volume_conditions
from roidask.exceptions import InvalidParameterError
from roidask.io.chunks import normalize_chunks
from roidask.io.conversions import ImageLike, as_image
from roidask.io.grid import BOLD_DIMS, affine_of, box_affine
from roidask.io.image import VolumeSource, scaled_values, stored_scaling
from roidask.io.nifti import NiftiSource, scale_stored
from roidask.io.spill import SpillFile, tile_grid
from roidask.ops import moments as mom_ops
from roidask.ops.kernels import fwhm_to_sigma_voxels, gaussian_radius
from roidask.ops.moments import Moments
from roidask.ops.smooth import smooth_array, smoothing_dtype

__all__ = [
    "BLOCK_MAX_BYTES",
    "BOX_MAX_BYTES",
    "NIFTI_BLOCK_BYTES",
    "NIFTI_BLOCK_MIN_VOLUMES",
    "KeptVoxels",
    "MemoryPlan",
    "PassResult",
    "box_bytes",
    "box_image",
    "contrast_pass",
    "kept_voxels",
    "memory_plan",
    "nifti_block_volumes",
    "partial_maps",
    "pass_box",
    "pass_chunks",
    "pass_tiles",
    "roi_box",
    "spill_image",
]

#: Largest block (whole volumes, in the data's type) one task reads; longer time
#: chunks are split. Results do not depend on it.
BLOCK_MAX_BYTES = 32 * 2**20
#: Largest box of raw voxels (all volumes) kept in memory by the pass for the
#: extraction; above it the pass writes them to a temporary file instead. A box
#: in memory is a little faster than the file (seed-shaped subject, 35 MB box:
#: 2.36 vs 2.5 s of CPU) but adds to the peak memory (+48 MB), which this limit
#: keeps near the file's: a 40x64x64x1452 run stays under 1/8 of nilearn's memory
#: whatever the mask.
BOX_MAX_BYTES = 48 * 2**20
#: Largest chunk (bytes of raw voxels) the extraction reads from the temporary
#: file at once, and at most two of the pass's blocks (a task of the extraction then
#: holds about what a task of the pass holds). On the whole-brain subject (12
#: tiles, 1452 volumes) 8, 16, 32, 64 MiB took 0.9-1.6, 0.7, 0.8, 1.2 s.
SPILL_CHUNK_BYTES = 16 * 2**20
#: Blocks of volumes read at once when the pass reads NIfTI runs directly: half a
#: store chunk, so decoding (one thread, in file order) overlaps better with the
#: compute of the other blocks, and the pass holds less.
NIFTI_BLOCK_BYTES = 8 * 2**20
#: ... but at least this many volumes: with large volumes (a whole-brain grid) the
#: costs per block (a task, merging float64 maps, temporary-file writes) outweigh
#: the better overlap of smaller blocks.
NIFTI_BLOCK_MIN_VOLUMES = 4
#: Float64 maps in one block's partial result (sum, two means, two m2).
PARTIAL_MAPS = 5
#: Float64 maps each further moment group adds to a partial (two means, two m2).
GROUP_MAPS = 4


@dataclass
class PassResult:
    """What :func:`contrast_pass` computes.

    Attributes
    ----------
    total : ndarray (x, y, z), float64
        Sum of every volume, in the data's units (NaN or infinite values as 0).
    n_volumes : int
        Number of volumes summed.
    n_nonfinite : int
        NaN or infinite voxel values read (set to 0 before smoothing, as nilearn).
    contrast : (Moments, Moments)
        Per contrast condition, the moments (count, mean, m2; float64 maps) of
        its smoothed volumes (all of them: the groups' moments merged in group
        order; with one group, that group's).
    groups : list of (Moments, Moments)
        The same per moment group (``groups`` of :func:`contrast_pass`), in group
        order; a condition without volumes in a group has count 0 and zero maps.
    box : tuple of 3 slices or None
        The spatial box whose raw voxels were kept.
    box_blocks : list of ndarray (bx, by, bz, t_block)
        The raw (unsmoothed) voxels of ``box``, one array per block, in time order.
    spill : SpillFile or None
        The temporary file the raw voxels near the mask were written to instead.
    scaling : (float, float, dtype) or None
        For a series of stored integers (:func:`roidask.io.image.stored_scaling`):
        the kept voxels are the integers, the statistics those of the values.
    cpu_s : dict
        CPU seconds spent by the pass's tasks, summed over them: ``statistics``
        (scaling stored integers, sums, smoothing, moments, merges; not the
        decoding) and ``temporary_writes`` (the spill file).
    """

    total: np.ndarray
    n_volumes: int
    n_nonfinite: int
    contrast: tuple[Moments, Moments]
    box: tuple[slice, slice, slice] | None
    box_blocks: list[np.ndarray] = field(default_factory=list)
    groups: list[tuple[Moments, Moments]] = field(default_factory=list)
    spill: SpillFile | None = None
    cpu_s: dict = field(default_factory=dict)
    scaling: tuple[float, float, np.dtype] | None = None


# -- sizing ----------------------------------------------------------------------------------
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
        raise InvalidParameterError(
            f"mask: expected a 3D array, got shape {mask.shape}", param="mask"
        )
    nonzero = np.argwhere(mask != 0)
    if nonzero.size == 0:
        return None
    lo, hi = nonzero.min(axis=0), nonzero.max(axis=0) + 1
    grow = np.asarray(grow_voxels, dtype=np.int64)
    lo = np.maximum(lo - grow, 0)
    hi = np.minimum(hi + grow, mask.shape)
    x, y, z = (slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return x, y, z


def pass_box(
    mask: np.ndarray, affine: np.ndarray, *, fwhm, dilation_iterations: int
) -> tuple[slice, slice, slice] | None:
    """The ROI box the pass keeps for a boolean ``mask`` (see :func:`roi_box`).

    Every ROI lies in the mask dilated ``dilation_iterations`` times, and its
    smoothed signal needs the kernel's radius around it.
    """
    sigma = fwhm_to_sigma_voxels(affine, fwhm)
    grow = [dilation_iterations + gaussian_radius(s) for s in sigma]
    return roi_box(mask, grow_voxels=grow)


def box_bytes(box: tuple[slice, slice, slice], n_volumes: int, dtype) -> int:
    """Bytes of the raw voxels of ``box`` over ``n_volumes`` volumes of ``dtype``."""
    return int(np.prod([s.stop - s.start for s in box])) * n_volumes * np.dtype(dtype).itemsize


def pass_tiles(
    mask: np.ndarray, affine: np.ndarray, *, fwhm, dilation_iterations: int
) -> np.ndarray:
    """The tiles of the temporary file the pass writes for a boolean ``mask``.

    A tile (:func:`roidask.io.spill.tile_grid`) is kept if it holds a
    voxel within ``dilation_iterations`` + the kernel radius (per axis) of a mask
    voxel: the raw voxels that the smoothed signal of any ROI inside the dilated
    mask depends on (see :func:`roi_box`) all lie in kept tiles.

    Returns
    -------
    ndarray of bool, shape (tiles_x, tiles_y, tiles_z)
    """
    mask = np.asarray(mask) != 0
    sigma = fwhm_to_sigma_voxels(affine, fwhm)
    grow = [dilation_iterations + gaussian_radius(s) for s in sigma]
    bounds = tile_grid(mask.shape)
    kept = np.zeros([len(b) - 1 for b in bounds], dtype=bool)
    nonzero = np.argwhere(mask)
    # the first and last tile within ``grow`` of each mask voxel, per axis
    ranges = []
    for axis, (b, g) in enumerate(zip(bounds, grow, strict=True)):
        last = len(b) - 2
        v = nonzero[:, axis]
        ranges.append(np.clip(np.searchsorted(b, v - g, side="right") - 1, 0, last))
        ranges.append(np.clip(np.searchsorted(b, v + g, side="right") - 1, 0, last))
    for lx, hx, ly, hy, lz, hz in np.unique(np.stack(ranges, axis=1), axis=0):
        kept[lx : hx + 1, ly : hy + 1, lz : hz + 1] = True
    return kept


@dataclass(frozen=True)
class KeptVoxels:
    """What the pass keeps of the raw voxels for the extraction (:func:`kept_voxels`).

    Attributes
    ----------
    box : tuple of 3 slices or None
        The ROI box held in memory.
    tiles : ndarray of bool or None
        Otherwise, the tiles written to a temporary file (:func:`pass_tiles`).
    """

    box: tuple[slice, slice, slice] | None = None
    tiles: np.ndarray | None = None


def kept_voxels(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    n_volumes: int,
    dtype,
    fwhm,
    dilation_iterations: int,
    box_max_bytes: int | None = None,
) -> KeptVoxels:
    """The ROI box in memory, or the tiles of a temporary file when it exceeds the limit.

    ``box_max_bytes`` defaults to :data:`BOX_MAX_BYTES`; 0 always writes the
    temporary file. An empty mask keeps nothing.
    """
    limit = BOX_MAX_BYTES if box_max_bytes is None else box_max_bytes
    box = pass_box(mask, affine, fwhm=fwhm, dilation_iterations=dilation_iterations)
    if box is None:
        return KeptVoxels()
    if box_bytes(box, n_volumes, dtype) <= limit:
        return KeptVoxels(box=box)
    return KeptVoxels(
        tiles=pass_tiles(mask, affine, fwhm=fwhm, dilation_iterations=dilation_iterations)
    )


def pass_chunks(bold: xr.DataArray) -> xr.DataArray:
    """Whole-volume blocks of at most :data:`BLOCK_MAX_BYTES` (time chunks kept where they fit)."""
    volume_bytes = int(np.prod(bold.shape[:3])) * bold.dtype.itemsize
    max_t = max(1, BLOCK_MAX_BYTES // volume_bytes)
    chunks: dict[str, int] = {d: -1 for d in ("x", "y", "z")}
    if max(bold.data.chunks[3]) > max_t:
        chunks["time"] = max_t
    if any(len(c) > 1 for c in bold.data.chunks[:3]) or "time" in chunks:
        bold = bold.chunk(chunks)
    return bold


def nifti_block_volumes(source: VolumeSource) -> int:
    """Volumes per block when the pass reads ``source`` directly (:data:`NIFTI_BLOCK_BYTES`,
    at least :data:`NIFTI_BLOCK_MIN_VOLUMES`)."""
    volume_bytes = int(np.prod(source.volume_shape)) * source.dtype.itemsize
    return max(NIFTI_BLOCK_MIN_VOLUMES, NIFTI_BLOCK_BYTES // volume_bytes)


#: Resident memory of a worker process once roidask's operations are imported
#: (~200 MB with dask/distributed 2026), which its tasks cannot use.
WORKER_BASE_BYTES = 200 * 2**20
#: Peak memory of one task of the pass: this many times its block of whole
#: volumes (in the data's type: decoded block, smoothed contrast volumes), plus a
#: fixed part and the partial results (float64 maps) of about this many blocks
#: (the running total, a merge's output, a block waiting to be merged).
_TASK_EXPANSION = 6
_TASK_FIXED_BYTES = 16 * 2**20
_LIVE_PARTIALS = 3
#: The ROI box the pass keeps is held twice at its peak on a worker: in the
#: running partial and while it is sent to the client.
_BOX_EXPANSION = 2
#: A box is kept only if blocks of at least this many volumes still fit next to it.
_MIN_BLOCK_VOLUMES = 8
#: Fraction of a worker's memory limit tasks may fill (dask pauses a worker at 80 %).
USABLE_FRACTION = 0.75


def partial_maps(moment_groups: int = 1) -> int:
    """Float64 maps (of the grid) the pass's live partials hold at most, per task.

    :data:`_LIVE_PARTIALS` partials: the running total, which holds every moment
    group (:data:`PARTIAL_MAPS` + :data:`GROUP_MAPS` per further group), and
    blocks' partials, each of which touches at most two groups (a block spans a
    run boundary). Per further group (e.g. per run with leave-one-run-out), 4 float64
    maps: 5 MiB on a 40x64x64 grid, 33 MiB on a 97x115x97 grid.
    """
    running = PARTIAL_MAPS + GROUP_MAPS * (moment_groups - 1)
    block = PARTIAL_MAPS + GROUP_MAPS * (min(moment_groups, 2) - 1)
    return running + (_LIVE_PARTIALS - 1) * block


@dataclass(frozen=True)
class MemoryPlan:
    """How a subject's pass fits a worker thread's memory (see :func:`memory_plan`)."""

    chunks: dict | None  # BOLD time chunks; None: the default blocks
    box_max_bytes: int | None  # the ROI box allowed in memory; None: the default; 0: spill


def memory_plan(
    sources: Sequence[NiftiSource],
    mask: np.ndarray,
    budget: float | None,
    *,
    fwhm,
    dilation_iterations: int,
    moment_groups: int = 1,
) -> MemoryPlan:
    """Time blocks and ROI box whose pass tasks fit ``budget`` bytes per worker thread.

    The pass reads blocks of whole volumes; with small worker memory the blocks
    hold fewer volumes (down to one). Maps and signals then differ from a default
    run by float64 rounding only (partial moments merged in another order). The
    ROI box kept by the pass (raw voxels of all volumes) lives on a worker until
    the subject is done: it is kept only if it fits next to the smallest blocks,
    and its share of the budget shrinks the blocks; otherwise the pass writes the
    voxels to a temporary file (:mod:`roidask.io.spill`), which takes no worker
    memory beyond a tile of a block at a time, and the extraction reads chunks of
    at most two blocks (:func:`spill_image`). So memory does not depend on the
    mask's box. With ``moment_groups`` (:func:`contrast_pass`) the running
    partial holds :data:`GROUP_MAPS` more float64 maps per further group (a
    block's own partial touches one or two groups): see :func:`partial_maps`.
    """
    default = MemoryPlan(None, None)
    if budget is None:
        return default
    first = sources[0]
    box = pass_box(mask, first.affine, fwhm=fwhm, dilation_iterations=dilation_iterations)
    x, y, z = first.volume_shape
    volume_bytes = x * y * z * first.dtype.itemsize
    n_volumes = sum(s.n_volumes for s in sources)
    n_t = normalize_chunks(None, (x, y, z, n_volumes), first.dtype.itemsize)["time"]
    fixed = _TASK_FIXED_BYTES + partial_maps(moment_groups) * 8 * x * y * z
    size = 0 if box is None else box_bytes(box, n_volumes, first.dtype)
    kept = _BOX_EXPANSION * size if size <= BOX_MAX_BYTES else 0  # else never kept
    if kept and fixed + kept + _TASK_EXPANSION * _MIN_BLOCK_VOLUMES * volume_bytes > budget:
        kept = 0  # the box does not fit: read twice
    room = max(budget - fixed - kept, 0) / _TASK_EXPANSION
    fits = max(1, int(room // volume_bytes))
    return MemoryPlan(
        chunks=None if fits >= n_t else {"time": fits},
        box_max_bytes=None if kept or box is None else 0,
    )


# -- the pass --------------------------------------------------------------------------------
def _block_sum(block: np.ndarray) -> np.ndarray:
    """Float64 sum of a block's volumes (exact int32 sums for 8/16-bit data)."""
    if block.dtype.kind in "iub" and block.dtype.itemsize <= 2 and block.shape[3] < 2**15:
        # exact in int32 (and faster than converting every voxel to float64); einsum
        # sums the contiguous time axis of a C-ordered (zarr) block twice as fast
        if block.flags.c_contiguous:
            return np.einsum("...t->...", block, dtype=np.int32).astype(np.float64)
        return block.sum(axis=3, dtype=np.int32).astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, as numpy's sum
        return block.sum(axis=3, dtype=np.float64)


@dataclass
class _Partial:
    """One block's (or several consecutive blocks') contribution to the pass."""

    total: np.ndarray
    n: int
    n_nonfinite: int
    contrast: dict[int, tuple[Moments, Moments]]  # per moment group seen
    box: list[np.ndarray]
    spilled: list[tuple[int, int]]  # volume ranges written to the spill file
    cpu: np.ndarray  # CPU seconds: statistics, temporary writes


def _block_partial(
    block: np.ndarray,
    codes: np.ndarray,
    volumes: np.ndarray,
    owners: np.ndarray,
    *,
    sigma: np.ndarray,
    work_dtype: np.dtype,
    box: tuple[slice, slice, slice] | None,
    spill: SpillFile | None,
    scaling: tuple[float, float, np.dtype] | None,
) -> _Partial:
    """Sum, contrast moments and kept raw voxels of one block of whole volumes.

    ``volumes`` are the block's volume indices in the series and ``owners`` their
    moment groups; the kept voxels are copied (``box``) or written to ``spill``.
    With ``scaling`` the block holds stored integers: the statistics are those of
    the scaled values, and the integers are kept. Each condition's volumes are
    smoothed together, then their moments taken per group.
    """
    start = time.thread_time()
    stored, block = block, block if scaling is None else scale_stored(block, *scaling)
    empty = Moments(0, np.zeros(()), np.zeros(()))  # no samples: merge() takes the other side
    contrast: dict[int, list[Moments]] = {}
    for c in range(2):
        index = np.flatnonzero(codes == c)
        if not index.size:
            continue
        smoothed = smooth_array(block[..., index], sigma, work_dtype)
        mine = owners[index]
        present = np.unique(mine).tolist()
        for g in present:
            part = smoothed if len(present) == 1 else smoothed[..., mine == g]
            contrast.setdefault(g, [empty, empty])[c] = mom_ops.moments_of(part)
    total = _block_sum(block)
    nonfinite = 0
    if block.dtype.kind == "f" and not np.isfinite(total).all():  # NaN/inf make the sum so
        # summed as 0, as nilearn's smooth_img sets them before the mean EPI is taken
        finite = np.isfinite(block)
        nonfinite = block.size - int(np.count_nonzero(finite))
        total = _block_sum(np.where(finite, block, 0))
    kept = [] if box is None else [stored[(*box, slice(None))].copy()]
    statistics = time.thread_time() - start
    spilled = []
    if spill is not None:
        spill.write_block(stored, int(volumes[0]))
        spilled = [(int(volumes[0]), int(volumes[0]) + block.shape[3])]
    return _Partial(
        total=total,
        n=block.shape[3],
        n_nonfinite=int(nonfinite),
        contrast={g: (m[0], m[1]) for g, m in contrast.items()},
        box=kept,
        spilled=spilled,
        cpu=np.array([statistics, time.thread_time() - start - statistics]),
    )


def _block_partial_object(block, codes, volumes, owners, **kwargs) -> np.ndarray:
    out = np.empty(1, dtype=object)
    out[0] = _block_partial(block, codes, volumes, owners, **kwargs)
    return out.reshape(1, 1, 1, 1)


def _merge_two(a: _Partial, b: _Partial) -> _Partial:
    """Partials of two consecutive blocks merged (Chan et al. for the moments)."""
    start = time.thread_time()
    with np.errstate(invalid="ignore"):
        total = a.total + b.total
    contrast = {}
    for g in sorted(a.contrast.keys() | b.contrast.keys()):
        if g not in a.contrast:
            contrast[g] = b.contrast[g]
        elif g not in b.contrast:
            contrast[g] = a.contrast[g]
        else:
            ga, gb = a.contrast[g], b.contrast[g]
            contrast[g] = (mom_ops.merge(ga[0], gb[0]), mom_ops.merge(ga[1], gb[1]))
    cpu = a.cpu + b.cpu
    cpu[0] += time.thread_time() - start
    return _Partial(
        total,
        a.n + b.n,
        a.n_nonfinite + b.n_nonfinite,
        contrast,
        a.box + b.box,
        a.spilled + b.spilled,
        cpu,
    )


def _finish(part: _Partial, box, spill: SpillFile | None, scaling, n_groups: int) -> PassResult:
    zeros = np.zeros(part.total.shape)
    empty = Moments(0, zeros, zeros)
    groups: list[tuple[Moments, Moments]] = []
    for g in range(n_groups):
        pair = part.contrast.get(g, (empty, empty))
        first, second = (empty if int(m.count) == 0 else m for m in pair)
        groups.append((first, second))
    if n_groups == 1:
        contrast = groups[0]
    else:
        first, second = (mom_ops.merge_all(pair[c] for pair in groups) for c in range(2))
        contrast = (first, second)
    if spill is not None:
        written = sorted(part.spilled)
        ends = [0] + [stop for _, stop in written]
        if [start for start, _ in written] != ends[:-1] or ends[-1] != part.n:
            raise RuntimeError(f"the pass wrote volumes {written} of {part.n} to {spill.path}")
    return PassResult(
        total=part.total,
        n_volumes=int(part.n),
        n_nonfinite=int(part.n_nonfinite),
        contrast=contrast,
        box=box,
        box_blocks=part.box,
        groups=groups,
        spill=spill,
        cpu_s={"statistics": float(part.cpu[0]), "temporary_writes": float(part.cpu[1])},
        scaling=scaling,
    )


def contrast_pass(
    img: ImageLike,
    *,
    contrast: Sequence[str],
    fwhm,
    box: tuple[slice, slice, slice] | None = None,
    spill: SpillFile | None = None,
    groups=None,
) -> Delayed:
    """Lazy single read of a BOLD series: sum, smoothed contrast moments, kept voxels.

    Parameters
    ----------
    img : ImageLike
        4D BOLD series with a ``condition`` coordinate. Its chunks are merged to
        whole volumes (time chunks are kept): one task per time chunk.
    contrast : (str, str)
        The two conditions whose smoothed volumes' moments are computed.
    fwhm : float, sequence of 3, or None
        Smoothing FWHM in mm, as :func:`roidask.ops.smooth.smooth_img`.
    box : tuple of 3 slices, optional
        Spatial box whose raw voxels are kept in memory for every volume
        (see :func:`roi_box`).
    spill : SpillFile, optional
        Temporary file (:func:`roidask.io.spill.spill_file`, on the grid and
        type of ``img``) into which every task writes the kept tiles of its block.
    groups : array-like of int, shape (n_volumes,), optional
        The moment group of every volume (0, 1, ...; e.g. from
        :func:`roidask.ops.folds.fold_plan`): the contrast moments are kept per
        group (:attr:`PassResult.groups`). Default: one group.

    Returns
    -------
    dask.delayed.Delayed
        Computes to a :class:`PassResult`. Building it reads no voxel data.

    Raises
    ------
    ConditionError
        A contrast condition is missing. The volumes a t-test needs are not
        checked here (the moments of a single volume are its values, with
        ``m2 = 0``): see :func:`roidask._validate.check_contrast`.
    InvalidParameterError
        Bad ``contrast`` or ``fwhm``.
    """
    bold = as_image(img, ndim=4, param="img", stored=True)  # scaled in the tasks
    # moments of any number of volumes: the t-test's rule is its caller's (check_contrast)
    labels = volume_conditions(bold)
    _, index, group = check_conditions(contrast, labels, param="contrast", exact=2)
    codes = np.full(bold.sizes["time"], -1, dtype=np.int64)
    codes[index] = group
    owners = _check_groups(groups, bold.sizes["time"])
    n_groups = int(owners.max()) + 1 if owners.size else 1
    sigma = fwhm_to_sigma_voxels(affine_of(bold), fwhm)
    scaling = stored_scaling(bold, param="img")  # stored integers: scaled in the tasks
    values_dtype = bold.dtype if scaling is None else scaling[2]

    data = bold.data
    if any(len(c) > 1 for c in data.chunks[:3]):
        data = data.rechunk({0: -1, 1: -1, 2: -1})
    # One task per block that reads it and reduces it at once (blockwise fusion), so
    # a block is never held waiting for its reduction.
    if spill is not None and (spill.shape != data.shape or spill.dtype != data.dtype):
        raise InvalidParameterError(
            f"spill: a file for {spill.shape} {spill.dtype} voxels, the series is "
            f"{data.shape} {data.dtype}",
            param="spill",
        )
    parts = da.blockwise(
        _block_partial_object,
        "xyzt",
        data,
        "xyzt",
        da.from_array(codes, chunks=(data.chunks[3],)),
        "t",
        da.from_array(np.arange(len(codes)), chunks=(data.chunks[3],)),
        "t",
        da.from_array(owners, chunks=(data.chunks[3],)),
        "t",
        sigma=sigma,
        work_dtype=smoothing_dtype(values_dtype),
        box=box,
        spill=spill,
        scaling=scaling,
        # no index is contracted, so blocks are passed as read (no concatenation copy)
        adjust_chunks={"x": 1, "y": 1, "z": 1, "t": 1},
        meta=np.empty((0, 0, 0, 0), dtype=object),
    )
    parts = [dask.delayed(operator.getitem)(p, (0, 0, 0, 0)) for p in parts.to_delayed().ravel()]
    merge = dask.delayed(_merge_two, pure=True)
    total = parts[0]
    for part in parts[1:]:
        total = merge(total, part)
    return dask.delayed(_finish, pure=True)(total, box, spill, scaling, n_groups)


def _check_groups(groups, n_volumes: int) -> np.ndarray:
    """Moment groups of :func:`contrast_pass` as int64 (0 .. n - 1), or InvalidParameterError."""
    if groups is None:
        return np.zeros(n_volumes, dtype=np.int64)
    arr = np.asarray(groups)
    if arr.shape != (n_volumes,) or arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
        raise InvalidParameterError(
            f"groups: expected {n_volumes} integers >= 0 (one moment group per volume), got "
            f"shape {arr.shape} of {arr.dtype}",
            param="groups",
        )
    return arr.astype(np.int64)


def box_image(result: PassResult, bold: xr.DataArray, *, values: bool = True) -> xr.DataArray:
    """The kept raw voxels as a 4D roidask image on the box (affine shifted to it).

    For a series of stored integers, ``values=False`` keeps them, with their
    ``scl_slope``/``scl_inter`` coordinates (for :func:`roidask.ops.extract.extract_signals`, which
    scales only the voxels it gathers); otherwise every chunk is scaled.
    """
    if result.box is None:
        raise InvalidParameterError("box_image: the pass kept no box", param="result")
    # name=False: no hashing of the kept voxels to name the chunks
    arr = da.concatenate(
        [da.from_array(b, chunks=b.shape, name=False) for b in result.box_blocks], axis=3
    )
    attrs = {k: v for k, v in bold.attrs.items() if k != "nifti_header"}
    attrs["affine"] = box_affine(affine_of(bold), result.box).tolist()
    return _kept_image(arr, bold, attrs, values)


def _kept_image(arr: da.Array, bold, attrs, values: bool) -> xr.DataArray:
    """Kept voxels as an image: values, or stored integers with their scaling (the
    ``scl_slope``/``scl_inter`` coordinates of ``bold``, when the pass kept stored integers)."""
    coords = {k: v for k, v in bold.coords.items() if v.dims == ("time",)}
    kept = xr.DataArray(arr, dims=BOLD_DIMS, coords=coords, name=bold.name, attrs=dict(attrs))
    return scaled_values(kept) if values else kept


def spill_image(result: PassResult, bold: xr.DataArray, *, values: bool = True) -> xr.DataArray:
    """The voxels the pass wrote to its temporary file, as a lazy 4D roidask image.

    On the whole grid of ``bold`` (tiles not written read as zeros: no ROI signal
    depends on them), chunked in tiles; a chunk holds at most
    :data:`SPILL_CHUNK_BYTES`, and at most two blocks of the pass. Computing a
    chunk reads its tile's volumes with one read. ``values`` as :func:`box_image`.
    """
    if result.spill is None:
        raise InvalidParameterError(
            "spill_image: the pass wrote no temporary file", param="result"
        )
    block = int(np.prod(bold.shape[:3])) * bold.dtype.itemsize * max(bold.data.chunks[3])
    arr = result.spill.to_dask(max_chunk_bytes=min(SPILL_CHUNK_BYTES, 2 * block))
    return _kept_image(arr, bold, bold.attrs, values)
