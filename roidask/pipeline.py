"""The ROI pipeline of nilearn's "Computing a Region of Interest (ROI) mask manually".

Smooth (FWHM 6 mm), mean EPI, voxelwise two-sample t-test (face vs house),
-log10 p (NaN -> 0, clipped at 10), threshold at 5, AND with a mask, binary
dilation, connected components (scipy numbering), per-ROI signals for every
volume, label atlas.

The BOLD data is read once:

1. **one pass** (:func:`roidask.ops.onepass.contrast_pass`) - one dask graph over
   blocks of whole volumes computes the sum of every volume (the mean EPI is the
   smoothed mean: smoothing is linear), the moments of the smoothed face and
   house volumes (only the contrast's volumes are smoothed) and keeps the raw
   voxels of the box where ROIs can appear (the mask's bounding box grown by
   the dilation and the kernel radius);
2. **ROIs** - 3D operations on the computed maps (threshold, AND, dilation,
   labelling), small;
3. **extraction** - every ROI's signal for every volume from the kept box, with
   smoothed ROI weights (exactly equal to extracting from the smoothed data,
   without smoothing every volume). When the box would hold more than
   :data:`BOX_MAX_BYTES` (e.g. a whole-brain mask), no box is kept and the
   extraction reads the data a second time instead.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from roidask.exceptions import (
    ConditionError,
    EmptyMaskWarning,
    InvalidParameterError,
)
from roidask.io.image import (
    as_image,
    check_same_grid,
    like_image,
    normalize_chunks,
)

__all__ = [
    "PipelineParams",
    "PipelineResult",
    "box_bytes",
    "check_inputs",
    "compute",
    "pass_box",
    "roi_pipeline",
]


@dataclass(frozen=True)
class PipelineParams:
    """Options of the ROI pipeline; the defaults are the nilearn example's.

    Attributes
    ----------
    contrast : (str, str)
        Conditions compared by the t-test (first minus second).
    fwhm : float, sequence of 3 floats, or None
        Smoothing full width at half maximum, mm.
    test : {"student", "welch"}
        Two-sample t-test with equal variances (Student, as the example) or not.
    clip : float or None
        -log10 p values above this are set to it (the example: 10); NaN -> 0.
    threshold : float
        ROI voxels have -log10 p >= threshold (the example: 5).
    dilation_iterations : int
        Binary dilations of the thresholded mask (the example: 1; 0 = none).
    connectivity : {6, 18, 26}
        Neighbourhood for dilation and connected components (the example: 6).
    min_roi_voxels : int
        Components smaller than this are dropped (1 = keep all).
    keep_largest : int or None
        Keep only the k largest components (None = all).
    strategy : str
        Signal extraction strategy, as ``NiftiLabelsMasker(strategy=...)``.
    """

    contrast: tuple[str, str] = ("face", "house")
    fwhm: float | tuple[float, float, float] | None = 6.0
    test: str = "student"
    clip: float | None = 10.0
    threshold: float = 5.0
    dilation_iterations: int = 1
    connectivity: int = 6
    min_roi_voxels: int = 1
    keep_largest: int | None = None
    strategy: str = "mean"

    def __post_init__(self):
        contrast = tuple(self.contrast)
        if len(contrast) != 2 or contrast[0] == contrast[1]:
            raise InvalidParameterError(
                f"contrast: expected two different condition names, got {self.contrast!r}"
            )
        object.__setattr__(self, "contrast", contrast)
        if self.test not in ("student", "welch"):
            raise InvalidParameterError(f"test: expected 'student' or 'welch', got {self.test!r}")
        if self.clip is not None and not self.clip > 0:
            raise InvalidParameterError(f"clip: expected a positive -log10 p, got {self.clip!r}")
        if not np.isfinite(self.threshold) or self.threshold <= 0:
            raise InvalidParameterError(
                f"threshold: expected a positive -log10 p, got {self.threshold!r}"
            )
        if (
            int(self.dilation_iterations) != self.dilation_iterations
            or self.dilation_iterations < 0
        ):
            raise InvalidParameterError(
                f"dilation_iterations: expected an integer >= 0, got {self.dilation_iterations!r}"
            )
        if self.connectivity not in (6, 18, 26):
            raise InvalidParameterError(
                f"connectivity: expected 6, 18 or 26, got {self.connectivity!r}"
            )
        if int(self.min_roi_voxels) != self.min_roi_voxels or self.min_roi_voxels < 1:
            raise InvalidParameterError(
                f"min_roi_voxels: expected an integer >= 1, got {self.min_roi_voxels!r}"
            )
        if self.keep_largest is not None and (
            int(self.keep_largest) != self.keep_largest or self.keep_largest < 1
        ):
            raise InvalidParameterError(
                f"keep_largest: expected an integer >= 1 or None, got {self.keep_largest!r}"
            )
        from roidask.ops.extract import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise InvalidParameterError(
                f"strategy: expected one of {list(STRATEGIES)}, got {self.strategy!r}"
            )
        from roidask.ops.kernels import fwhm_to_sigma_voxels

        fwhm_to_sigma_voxels(np.eye(4), self.fwhm)  # validates the value

    def to_dict(self) -> dict:
        out = asdict(self)
        out["contrast"] = list(self.contrast)
        if isinstance(self.fwhm, tuple):
            out["fwhm"] = list(self.fwhm)
        return out


@dataclass
class PipelineResult:
    """Computed outputs of :func:`roi_pipeline` for one subject.

    Attributes
    ----------
    maps : xarray.Dataset
        3D maps on the BOLD grid: ``mean_epi`` (smoothed mean), ``tstat``,
        ``logp`` (-log10 p, NaN -> 0, clipped), ``roi_mask`` (threshold AND mask,
        before dilation), ``dilated_mask`` and ``atlas`` (int32 labels).
    signals : xarray.DataArray
        ``(roi, time)`` signals with ``condition``, ``run`` and ``time`` coords.
    rois : pandas.DataFrame
        One row per ROI (label, size, volume, centre of mass, peak).
    params : PipelineParams
    timings_s : dict
        Wall time of each stage in seconds.
    """

    maps: xr.Dataset
    signals: xr.DataArray
    rois: pd.DataFrame
    params: PipelineParams
    timings_s: dict = field(default_factory=dict)

    @property
    def n_rois(self) -> int:
        return len(self.rois)

    def to_dataset(self) -> xr.Dataset:
        """Everything as one xarray Dataset (maps, signals, ROI table columns)."""
        ds = self.maps.copy()
        ds["signals"] = self.signals
        table = self.rois.set_index("label") if len(self.rois) else self.rois
        for col in table.columns:
            ds[f"roi_{col}"] = ("roi", table[col].to_numpy())
        ds.attrs["params"] = _json_attrs(self.params.to_dict())
        return ds


def _json_attrs(d: dict) -> str:
    import json

    return json.dumps(d)


def compute(*objs, progress: bool = False, label: str = "", local: bool = False):
    """Compute dask-backed objects together (shared reads), with optional progress.

    Uses the active ``distributed`` client if there is one (with its terminal
    progress bar) unless ``local``; otherwise dask's default scheduler (the threaded
    one in this process with ``local``). Meanwhile BLAS runs on one thread in this
    process, so results do not depend on the number of threads
    (see :mod:`roidask.ops._blas`).
    """
    import dask
    import dask.threaded

    from roidask.ops._blas import one_blas_thread

    client = None if local else _active_client()
    # A callable, not "threads": dask imports distributed to resolve scheduler names.
    scheduler = {"scheduler": dask.threaded.get} if local else {}
    with one_blas_thread():
        if client is not None:
            futures = client.compute(list(objs))
            if progress:
                from distributed import progress as dist_progress

                dist_progress(futures)
                print(file=__import__("sys").stderr)
            return tuple(client.gather(futures))
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar(out=__import__("sys").stderr):
                return dask.compute(*objs, **scheduler)
        return dask.compute(*objs, **scheduler)


def _active_client():
    import sys

    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


#: Largest block (whole volumes, in the data's type) one task reads; longer time
#: chunks are split. Results do not depend on it.
BLOCK_MAX_BYTES = 32 * 2**20
#: Largest box of raw voxels (all volumes) kept by the pass for the extraction;
#: above it the extraction reads the data a second time.
BOX_MAX_BYTES = 128 * 2**20


def _pass_chunks(bold: xr.DataArray) -> xr.DataArray:
    """Whole-volume blocks of at most BLOCK_MAX_BYTES (time chunks kept where they fit)."""
    volume_bytes = int(np.prod(bold.shape[:3])) * bold.dtype.itemsize
    max_t = max(1, BLOCK_MAX_BYTES // volume_bytes)
    chunks = {d: -1 for d in ("x", "y", "z")}
    if max(bold.chunks[3]) > max_t:
        chunks["time"] = max_t
    if any(len(c) > 1 for c in bold.chunks[:3]) or "time" in chunks:
        bold = bold.chunk(chunks)
    return bold


def pass_box(
    mask: np.ndarray, affine: np.ndarray, params: PipelineParams
) -> tuple[slice, slice, slice] | None:
    """The ROI box the pass keeps for a boolean ``mask`` (see :func:`roidask.ops.onepass.roi_box`).

    Every ROI lies in the mask dilated by ``params.dilation_iterations`` and its
    smoothed signal needs the kernel's radius around it.
    """
    from roidask.ops.kernels import fwhm_to_sigma_voxels, gaussian_radius
    from roidask.ops.onepass import roi_box

    sigma = fwhm_to_sigma_voxels(affine, params.fwhm)
    grow = [params.dilation_iterations + gaussian_radius(s) for s in sigma]
    return roi_box(mask, grow_voxels=grow)


def box_bytes(box: tuple[slice, slice, slice], n_volumes: int, dtype) -> int:
    """Bytes of the raw voxels of ``box`` over ``n_volumes`` volumes of ``dtype``."""
    return int(np.prod([s.stop - s.start for s in box])) * n_volumes * np.dtype(dtype).itemsize


def check_inputs(bold: xr.DataArray, mask: xr.DataArray, params: PipelineParams) -> None:
    """Validate a BOLD image, a mask and the parameters together (reads no voxels).

    Raises
    ------
    GridMismatchError
        The mask is not on the BOLD grid.
    ConditionError
        A contrast condition is missing or has fewer than 2 volumes.
    """
    check_same_grid(bold, mask, names=("bold_img", "mask_img"))
    _check_contrast(bold, params.contrast)


def _check_contrast(bold: xr.DataArray, contrast: Sequence[str]) -> None:
    conditions = np.asarray(bold["condition"].values).astype(str)
    known, counts = np.unique(conditions, return_counts=True)
    count = dict(zip(known.tolist(), counts.tolist(), strict=True))
    missing = [c for c in contrast if c not in count]
    if missing:
        raise ConditionError(
            f"contrast: condition(s) {missing} not in the labels; the data has {sorted(count)}"
        )
    few = {c: count[c] for c in contrast if count[c] < 2}
    if few:
        raise ConditionError(f"contrast: a t-test needs >= 2 volumes per condition, got {few}")


def roi_pipeline(
    bold_img,
    *,
    mask_img,
    params: PipelineParams | None = None,
    subject: str | None = None,
    chunks=None,
    box_max_bytes: int | None = None,
    progress: bool = False,
) -> PipelineResult:
    """Run the seed ROI analysis on one subject and return computed results.

    Parameters
    ----------
    bold_img : path, nibabel image, xarray object or store
        4D BOLD with ``condition`` labels (see :func:`roidask.io.bold_from_nifti`,
        :func:`roidask.io.open_subject`).
    mask_img : path, nibabel image or xarray
        3D mask on the BOLD grid (e.g. ventral temporal); nonzero = inside.
    params : PipelineParams, optional
        Analysis options; defaults are nilearn's example.
    subject : str, optional
        Subject of a multi-subject store.
    chunks : dict or str, optional
        Chunking of the BOLD data. The pass works on blocks of whole volumes: the
        time chunks (at most :data:`BLOCK_MAX_BYTES`) set the blocks, spatial
        chunks are merged. Results do not depend on it beyond float64 rounding.
    box_max_bytes : int, optional
        Largest box of raw voxels (bytes, all volumes) the pass keeps in memory for
        the extraction (default :data:`BOX_MAX_BYTES`); with a larger box, or 0,
        the extraction reads the data a second time. Results do not depend on it.
    progress : bool
        Show progress bars on stderr.

    Returns
    -------
    PipelineResult

    Raises
    ------
    GridMismatchError, ConditionError, ImageDimensionError, InvalidParameterError
        Before any voxel data is read.
    """
    from roidask.io.image import affine_of
    from roidask.ops.extract import extract_signals
    from roidask.ops.label import label
    from roidask.ops.morph import binary_dilation
    from roidask.ops.onepass import box_image, contrast_pass
    from roidask.ops.rois import ROI_TABLE_COLUMNS, keep_largest, remove_small, roi_table
    from roidask.ops.smooth import smooth_img
    from roidask.ops.stats import _ttest_block, clip_logp
    from roidask.ops.threshold import mask_and, threshold_img

    params = params or PipelineParams()
    if box_max_bytes is None:
        box_max_bytes = BOX_MAX_BYTES
    if isinstance(box_max_bytes, bool) or not isinstance(box_max_bytes, int | np.integer):
        raise InvalidParameterError(
            f"box_max_bytes: expected an integer number of bytes, got {box_max_bytes!r}"
        )
    if box_max_bytes < 0:
        raise InvalidParameterError(f"box_max_bytes: expected >= 0 bytes, got {box_max_bytes}")
    bold = as_image(bold_img, ndim=4, param="bold_img", subject=subject)
    if chunks is not None:
        bold = bold.chunk(normalize_chunks(chunks, bold.shape, bold.dtype.itemsize))
    bold = _pass_chunks(bold)
    mask = as_image(mask_img, ndim=3, param="mask_img")
    check_inputs(bold, mask, params)
    timings = {}

    # 1. one pass: mean EPI, smoothed contrast moments and the ROI box, one read.
    t0 = time.perf_counter()
    mask_np = np.asarray(mask.values) != 0
    box = pass_box(mask_np, affine_of(bold), params)
    if box is not None and box_bytes(box, bold.sizes["time"], bold.dtype) > box_max_bytes:
        box = None  # the extraction reads the data again
    (one,) = compute(
        contrast_pass(bold, contrast=params.contrast, fwhm=params.fwhm, box=box),
        progress=progress,
        label="statistics",
    )
    mean_np = smooth_img(
        like_image((one.total / one.n_volumes).astype(np.float32), bold), fwhm=params.fwhm
    ).values
    na, nb = (int(n) for n in one.counts)
    tt = _ttest_block(one.moments(), na=na, nb=nb, equal_var=params.test == "student")
    t_np = tt[..., 0]
    logp_np = clip_logp(like_image(tt[..., 2], bold), clip=params.clip).values
    timings["statistics"] = time.perf_counter() - t0

    # 2. ROIs: small 3D operations on the computed maps.
    t0 = time.perf_counter()
    mean_epi = like_image(np.asarray(mean_np, dtype=np.float32), bold, name="mean_epi")
    tstat = like_image(np.asarray(t_np, dtype=np.float32), bold, name="tstat")
    logp = like_image(np.asarray(logp_np, dtype=np.float32), bold, name="logp")
    roi_mask = mask_and(threshold_img(logp, threshold=params.threshold), mask)
    dilated = (
        binary_dilation(
            roi_mask, iterations=params.dilation_iterations, connectivity=params.connectivity
        )
        if params.dilation_iterations
        else roi_mask
    )
    atlas = label(dilated, connectivity=params.connectivity)
    if params.min_roi_voxels > 1:
        atlas = remove_small(atlas, min_voxels=params.min_roi_voxels)
    if params.keep_largest is not None:
        atlas = keep_largest(atlas, k=params.keep_largest)
    roi_np, dil_np, atlas_np = compute(roi_mask.data, dilated.data, atlas.data)
    atlas = like_image(np.asarray(atlas_np, dtype=np.int32), bold, name="atlas")
    if not np.any(atlas_np):
        peak = float(np.max(logp_np[mask_np])) if mask_np.any() else float("nan")
        warnings.warn(
            f"no ROI: no voxel of mask_img has -log10 p >= {params.threshold:g} (the peak "
            f"inside the mask is {peak:.3g}); outputs are written with an empty ROI table",
            EmptyMaskWarning,
            stacklevel=2,
        )
    timings["rois"] = time.perf_counter() - t0

    # 3. extraction: all ROIs, all volumes, smoothed ROI weights on the raw data.
    t0 = time.perf_counter()
    if np.any(atlas_np):
        rois = roi_table(atlas, stat_img=logp)
    else:  # already warned above; an empty table with the usual columns
        rois = pd.DataFrame(
            {
                c: pd.Series(dtype=np.int64 if c in ("label", "n_voxels") else np.float64)
                for c in ROI_TABLE_COLUMNS
            }
        )
    if len(rois):
        if one.box is not None:  # the ROIs' raw voxels were kept by the pass
            source = box_image(one, bold)
            roi_atlas = like_image(np.asarray(atlas_np, dtype=np.int32)[one.box], source)
        else:
            source, roi_atlas = bold, atlas
        linear = params.strategy in ("mean", "sum")
        if not linear:
            source = smooth_img(source, fwhm=params.fwhm)
        signals = extract_signals(
            source,
            roi_atlas,
            strategy=params.strategy,
            **({"fwhm": params.fwhm} if linear else {}),
        )
        # The box is already in memory here: extract it in this process.
        (signals_np,) = compute(
            signals.data, progress=progress, label="extraction", local=one.box is not None
        )
        signals = signals.copy(data=signals_np)
    else:
        signals = xr.DataArray(
            np.zeros((0, bold.sizes["time"])),
            dims=("roi", "time"),
            coords={
                "roi": np.zeros(0, dtype=np.int32),
                **{k: v for k, v in bold.coords.items() if v.dims == ("time",)},
            },
            name="signals",
        )
    timings["extraction"] = time.perf_counter() - t0

    maps = xr.Dataset(
        {
            "mean_epi": mean_epi,
            "tstat": tstat,
            "logp": logp,
            "roi_mask": like_image(np.asarray(roi_np).astype(np.uint8), bold),
            "dilated_mask": like_image(np.asarray(dil_np).astype(np.uint8), bold),
            "atlas": atlas,
        }
    )
    # in memory, coordinates included (those of a rechunked run are small dask arrays)
    maps, signals = compute(maps, signals, local=True)
    return PipelineResult(maps=maps, signals=signals, rois=rois, params=params, timings_s=timings)
