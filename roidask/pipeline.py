"""The ROI pipeline of nilearn's "Computing a Region of Interest (ROI) mask manually".

Smooth (FWHM 6 mm), mean EPI, voxelwise two-sample t-test (face vs house),
-log10 p (NaN -> 0, clipped at 10), threshold at 5, AND with a mask, binary
dilation, connected components (scipy numbering), per-ROI signals for every
volume, label atlas.

The BOLD data is read once:

1. **one pass** (:func:`roidask.onepass.contrast_pass`) - one dask graph over
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
   :data:`roidask.onepass.BOX_MAX_BYTES` (e.g. a whole-brain mask), the pass
   writes the voxels near the mask to a temporary file cut in spatial tiles
   instead (``temp_dir``), and the extraction reads back only the tiles the ROIs
   touch; the file is removed when the run ends, succeeds or fails.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import dask
import dask.local
import dask.threaded
import numpy as np
import pandas as pd
import xarray as xr

from roidask import __version__ as roidask_version
from roidask._blas import one_blas_thread
from roidask._progress import dask_progress
from roidask._validate import (
    TTESTS,
    check_bool,
    check_choice,
    check_contrast,
    check_int,
    check_optional_int,
    check_real,
    check_ttest_counts,
    ttest_defined,
    volume_conditions,
)
from roidask.cluster import active_client
from roidask.exceptions import (
    EmptyMaskWarning,
    GridMismatchError,
    InvalidParameterError,
    NonFiniteVoxelsWarning,
    RoidaskTypeError,
)
from roidask.io.chunks import normalize_chunks
from roidask.io.conversions import ImageLike, as_image
from roidask.io.grid import affine_of, check_same_grid, spatial_coords, voxel_size_mm
from roidask.io.image import image_label, image_on_grid, volume_coords
from roidask.io.spill import spill_file
from roidask.io.store_read import RESULTS_ATTR
from roidask.io.store_write import dataset_zarr_files
from roidask.io.tables import ROI_TABLE_COLUMNS
from roidask.onepass import box_image, contrast_pass, kept_voxels, pass_chunks, spill_image
from roidask.ops import moments as mom_ops
from roidask.ops.extract import LINEAR_STRATEGIES, STRATEGIES, extract_signals
from roidask.ops.folds import ROI_DEFINITIONS, Fold, FoldPlan, fold_moments, fold_plan
from roidask.ops.kernels import fwhm_to_sigma_voxels
from roidask.ops.label import CONNECTIVITIES, label
from roidask.ops.morph import binary_dilation
from roidask.ops.rois import keep_largest, remove_small, roi_table
from roidask.ops.smooth import smooth_img
from roidask.ops.stats import clip_logp
from roidask.ops.threshold import check_binary, mask_and, threshold_img

__all__ = [
    "RESULTS_ATTR",
    "RESULTS_FORMAT",
    "RESULTS_VARIABLES",
    "ROI_DEFINITIONS",
    "TESTS",
    "PipelineParams",
    "PipelineResult",
    "check_inputs",
    "compute",
    "compute_here",
    "mask_values",
    "n_rois_text",
    "params_attrs",
    "results_dataset",
    "roi_folds",
    "roi_pipeline",
]

#: Most dilation iterations (``dilation_iterations``): more than any grid's axes add up
#: to; larger values would only overflow the ROI box's size.
MAX_DILATION = 10_000
#: Two-sample tests of :class:`PipelineParams` (``test``).
TESTS = TTESTS


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
    roi_definition : {"same", "split-half", "leave-one-run-out"}
        Which volumes define the ROIs and which give their signals
        (:mod:`roidask.ops.folds`): all of them for both (``"same"``, the example;
        the selection biases the reported effect), or ROIs from some runs and
        signals from the others, in folds (split-half: odd and even runs, both
        ways; leave-one-run-out: one fold per run). Every fold comes from the
        same single read of the data.
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
    roi_definition: str = "same"

    def __post_init__(self):
        contrast = tuple(self.contrast) if not isinstance(self.contrast, str) else ()
        if len(contrast) != 2 or contrast[0] == contrast[1]:
            raise InvalidParameterError(
                f"contrast: expected two different condition names, got {self.contrast!r}",
                param="contrast",
            )
        object.__setattr__(self, "contrast", contrast)
        check_choice(self.test, "test", TESTS)
        if self.clip is not None:
            check_real(self.clip, "clip", positive=True)
        check_real(self.threshold, "threshold", positive=True)
        if self.clip is not None and self.threshold > self.clip:
            raise InvalidParameterError(
                f"threshold: {self.threshold:g} is above clip {self.clip:g}, where -log10 p is "
                "clipped: no voxel could pass; expected threshold <= clip",
                param="threshold",
            )
        check_int(self.dilation_iterations, "dilation_iterations", minimum=0, maximum=MAX_DILATION)
        check_choice(self.connectivity, "connectivity", CONNECTIVITIES)
        check_int(self.min_roi_voxels, "min_roi_voxels", minimum=1)
        check_optional_int(self.keep_largest, "keep_largest", minimum=1)
        check_choice(self.strategy, "strategy", STRATEGIES)
        check_choice(self.roi_definition, "roi_definition", ROI_DEFINITIONS)
        fwhm_to_sigma_voxels(np.eye(4), self.fwhm)  # validates the value

    @classmethod
    def of(cls, params: PipelineParams | None, param: str = "params") -> PipelineParams:
        """``params``, or the defaults for None; anything else is refused (one line).

        Parameters
        ----------
        params : PipelineParams or None
            The parameters given to a function.
        param : str
            That function's name for them, in the message.

        Returns
        -------
        PipelineParams
            ``params``, or ``PipelineParams()`` for None.

        Raises
        ------
        RoidaskTypeError
            ``params`` is neither a :class:`PipelineParams` nor None.
        """
        if params is None:
            return cls()
        if not isinstance(params, cls):
            raise RoidaskTypeError(
                f"{param}: expected a roidask.PipelineParams (e.g. PipelineParams(fwhm=6.0)), "
                f"got {type(params).__name__} {params!r}",
                param=param,
            )
        return params

    def to_dict(self) -> dict:
        """The parameters as JSON-ready values."""
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
        before dilation), ``dilated_mask`` and ``atlas`` (int32 labels). With
        folds (an independent ``roi_definition``), ``mean_epi``, ``tstat`` and
        ``logp`` are those of every volume, and ``fold_tstat``, ``fold_logp``
        (the t-test of the fold's ROI-defining runs), ``roi_mask``,
        ``dilated_mask`` and ``atlas`` have a leading ``fold`` dimension.
    signals : xarray.DataArray
        ``(roi, time)`` signals with ``condition``, ``run`` and ``time`` coords;
        with folds ``(fold, roi, time)``: each fold's ROIs on its signal runs'
        volumes, NaN on the other volumes (and for labels the fold lacks).
    rois : pandas.DataFrame
        One row per ROI (label, size, volume, centre of mass, peak); with folds, a
        leading ``fold`` column.
    params : PipelineParams
    timings_s : dict
        Wall time of each stage in seconds (``statistics``: the pass and the
        t-test; ``rois``; ``extraction``), and the CPU seconds of the pass's tasks
        (``pass_statistics_cpu``, ``pass_temporary_writes_cpu``: summed over threads).
    folds : tuple of Fold or None
        The folds (:class:`roidask.ops.folds.Fold`: ROI runs, signal runs) of an
        independent ROI definition; None with ``"same"``.
    """

    maps: xr.Dataset
    signals: xr.DataArray
    rois: pd.DataFrame
    params: PipelineParams
    timings_s: dict = field(default_factory=dict)
    folds: tuple[Fold, ...] | None = None
    _zarr_files: dict[str, bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def n_rois(self) -> int:
        """ROIs found (summed over the folds)."""
        return len(self.rois)

    def fold_n_rois(self) -> list[int]:
        """ROIs of each fold (one number with ``"same"``)."""
        if self.folds is None:
            return [len(self.rois)]
        counts = self.rois["fold"].value_counts()
        return [int(counts.get(k, 0)) for k in range(len(self.folds))]

    def roi_counts(self) -> int | list[int]:
        """The ROIs found as ``results.zarr``'s ``n_rois`` attribute holds them: their
        number, or with folds the number of each fold (never summed: see
        :func:`n_rois_text`)."""
        return self.fold_n_rois() if self.folds is not None else self.n_rois

    def fold_signals(self, k: int) -> xr.DataArray:
        """Fold ``k``'s ``(roi, time)`` signals: its ROIs, on its signal volumes only.

        Parameters
        ----------
        k : int
            The fold (0, 1, ...; ignored with ``"same"``, which has one).

        Returns
        -------
        xarray.DataArray
            The signals, dims ``(roi, time)`` (``time`` in s); with ``"same"``, every
            ROI on every volume (:attr:`signals`).
        """
        if self.folds is None:
            return self.signals
        fold = self.signals.isel(fold=k).drop_vars(["signal_volume", "roi_runs", "signal_runs"])
        fold = fold.isel(time=np.flatnonzero(self.signals["signal_volume"].values[k]))
        labels = self.rois.loc[self.rois["fold"] == k, "label"].to_numpy()
        return fold.sel(roi=labels)

    def folds_table(self) -> pd.DataFrame:
        """One row per fold: ``fold``, ``roi_runs``, ``signal_runs`` (run values), ``n_rois``."""
        folds = self.folds or ()
        return pd.DataFrame(
            {
                "fold": np.arange(len(folds), dtype=np.int64),
                "roi_runs": [_runs_text(f.roi_runs) for f in folds],
                "signal_runs": [_runs_text(f.signal_runs) for f in folds],
                "n_rois": np.asarray(self.fold_n_rois() if folds else [], dtype=np.int64),
            }
        )

    def fold_title(self, k: int) -> str:
        """Fold ``k`` in words (its runs), for messages and figures.

        Parameters
        ----------
        k : int
            The fold (0, 1, ...; ignored with ``"same"``).

        Returns
        -------
        str
            ``"fold 0: ROIs from runs 1 3, signals of runs 0 2"``; ``"every volume"``
            with ``"same"``.
        """
        if self.folds is None:
            return "every volume"
        fold = self.folds[k]
        return (
            f"fold {k}: ROIs from runs {_runs_text(fold.roi_runs)}, signals of runs "
            f"{_runs_text(fold.signal_runs)}"
        )

    def roi_effects(self) -> pd.DataFrame:
        """The contrast's effect in each ROI, on the volumes whose signals are reported.

        One row per (fold and) ROI: ``fold`` (0 with ``"same"``), ``roi`` (label),
        ``effect`` (mean signal of the first contrast condition minus that of the
        second, BOLD intensity), ``t`` (the two-sample t statistic of the same
        signals, ``params.test``) and ``selection_sign`` (+1 or -1: the sign of
        the ROI-defining t statistic, averaged over the ROI's voxels). With ROIs
        selected on the same volumes (``"same"``), ``effect * selection_sign`` is
        biased upwards even on null data (circular analysis); with ROIs defined
        on other runs it is not.
        """
        rows = []
        first, second = self.params.contrast
        for k in range(len(self.folds or [None])):
            signals = self.fold_signals(k)
            if not signals.sizes["roi"]:
                continue
            conditions = np.asarray(signals["condition"].values).astype(str)
            values = np.asarray(signals.transpose("roi", "time").values, dtype=np.float64)
            na = int(np.count_nonzero(conditions == first))
            nb = int(np.count_nonzero(conditions == second))
            # no t-test with too few volumes (e.g. a held-out run without both conditions)
            if not ttest_defined((na, nb), self.params.test):
                effect = t = np.full(values.shape[0], np.nan)
            else:
                a = mom_ops.moments_of(values[:, conditions == first])
                b = mom_ops.moments_of(values[:, conditions == second])
                effect = a.mean - b.mean
                t = mom_ops.ttest_ind(a, b, equal_var=self.params.test == "student").t
            atlas_map = self.maps["atlas"] if self.folds is None else self.maps["atlas"][k]
            defining_map = self.maps["tstat"] if self.folds is None else self.maps["fold_tstat"][k]
            atlas, defining = np.asarray(atlas_map.values), np.asarray(defining_map.values)
            for i, roi in enumerate(np.asarray(signals["roi"].values)):
                inside = defining[atlas == roi]
                rows.append(
                    {
                        "fold": k,
                        "roi": int(roi),
                        "effect": float(effect[i]),
                        "t": float(t[i]),
                        "selection_sign": 1 if np.nanmean(inside) >= 0 else -1,
                    }
                )
        columns = ["fold", "roi", "effect", "t", "selection_sign"]
        return pd.DataFrame(rows, columns=columns)

    def to_dataset(self) -> xr.Dataset:
        """Everything as one xarray Dataset: the schema of ``results.zarr`` and study nodes.

        See :func:`results_dataset`.
        """
        return results_dataset(self)

    def zarr_files(self) -> dict[str, bytes]:
        """:meth:`to_dataset` encoded as the files of a zarr v3 store, encoded once: the
        output folder's ``results.zarr`` and the subject's study node are the same
        bytes. Do not modify the returned mapping (copy it)."""
        if self._zarr_files is None:
            self._zarr_files = dataset_zarr_files(self.to_dataset())
        return self._zarr_files


#: Version of the results schema (:func:`results_dataset`), in the attribute
#: ``roidask_results_format``: 2 adds the ``roi_definition`` attribute and, with an
#: independent ROI definition, the ``fold`` dimension (format 1 had neither).
RESULTS_FORMAT = 2
# The root attribute of a results.zarr (and of a study's subject node), RESULTS_ATTR
# ("roidask_results_format", its value the format), is defined with the other stores'
# markers in roidask.io.store_read.
#: long_name and units of each variable of the results schema ("1": dimensionless,
#: counts, labels and BOLD intensities, which have no physical unit).
RESULTS_VARIABLES = {
    "mean_epi": ("mean EPI, smoothed (BOLD intensity, arbitrary scanner units)", "1"),
    "tstat": ("t statistic of the contrast (first minus second condition)", "1"),
    "logp": ("-log10 p of the two-sample t-test (NaN -> 0, clipped at clip)", "1"),
    "fold_tstat": ("t statistic of the contrast on the fold's ROI-defining runs", "1"),
    "fold_logp": ("-log10 p of the t-test on the fold's ROI-defining runs (as logp)", "1"),
    "roi_mask": ("1 where logp >= threshold inside the mask (before dilation)", "1"),
    "dilated_mask": ("roi_mask after binary dilation (1 inside)", "1"),
    "atlas": ("ROI label of each voxel (0: background; scipy.ndimage.label numbering)", "1"),
    "signals": ("{strategy} over the ROI's voxels of the smoothed BOLD (scanner units)", "1"),
    "roi_n_voxels": ("number of voxels in the ROI", "1"),
    "roi_volume_mm3": ("volume of the ROI", "mm3"),
    "roi_com_x_mm": ("world x of the ROI's centre of mass", "mm"),
    "roi_com_y_mm": ("world y of the ROI's centre of mass", "mm"),
    "roi_com_z_mm": ("world z of the ROI's centre of mass", "mm"),
    "roi_peak_x_mm": ("world x of the ROI's largest logp", "mm"),
    "roi_peak_y_mm": ("world y of the ROI's largest logp", "mm"),
    "roi_peak_z_mm": ("world z of the ROI's largest logp", "mm"),
    "roi_peak_value": ("largest logp in the ROI", "1"),
    "roi_mean_value": ("mean logp over the ROI", "1"),
}
_TIME_COORDS = {
    "condition": {"long_name": "condition of the volume (from the labels)"},
    "run": {"long_name": "run of the volume", "units": "1"},
    "volume": {"long_name": "index of the volume in the concatenated runs", "units": "1"},
}
_MAPS = ("mean_epi", "tstat", "logp", "roi_mask", "dilated_mask", "atlas")
#: With folds: the maps with a leading ``fold`` dimension.
_FOLD_MAPS = ("fold_tstat", "fold_logp", "roi_mask", "dilated_mask", "atlas")
_FOLD_COORDS = {
    "fold": {
        "long_name": "ROI set: fold of the ROI definition (ROIs from roi_runs, signals from "
        "signal_runs)",
        "units": "1",
    },
    "roi_runs": {"long_name": "runs whose volumes defined the fold's ROIs (run values)"},
    "signal_runs": {"long_name": "runs whose volumes' signals the fold reports (run values)"},
    "signal_volume": {
        "long_name": "the fold reports this volume's signal (a signal run's)",
        "units": "1",
    },
}


def _with_attrs(name: str, var: xr.DataArray | np.ndarray, dims=None, **fields) -> xr.Variable:
    long_name, units = RESULTS_VARIABLES[name]
    long_name = long_name.format(**fields)
    if isinstance(var, xr.DataArray):
        attrs = {**var.attrs, "long_name": long_name, "units": units}
        return xr.Variable(var.dims, np.asarray(var.values), attrs)
    return xr.Variable(dims, np.asarray(var), {"long_name": long_name, "units": units})


def results_dataset(result: PipelineResult) -> xr.Dataset:
    """A subject's results as one Dataset, read by plain xarray (``results.zarr``, study).

    One schema whatever the number of ROIs (0 included), every array in memory:

    * maps ``mean_epi``, ``tstat``, ``logp`` (float32), ``roi_mask``,
      ``dilated_mask`` (uint8) and ``atlas`` (int32) on ``(x, y, z)``, each
      keeping the grid attributes of a roidask image (``roidask.io.to_nifti``
      writes it back on the source grid);
    * coordinates ``x``, ``y``, ``z`` (voxel indices, int64) and, when the affine
      is axis-aligned, ``x_mm``, ``y_mm``, ``z_mm`` (world mm of the voxel centres;
      :func:`roidask.io.grid.spatial_coords`);
    * ``signals`` on ``(roi, time)`` (float64; float32 from float32 data), with
      ``time`` (s, the index), ``condition`` (fixed-width unicode, numpy ``<U``),
      ``run`` and ``volume`` (int64) along ``time``;
    * the ROI table (:data:`roidask.io.tables.ROI_TABLE_COLUMNS`) as variables
      ``roi_<column>`` along ``roi``, whose values are the atlas labels (int64);
    * ``long_name`` and ``units`` on every variable (:data:`RESULTS_VARIABLES`);
    * dataset attributes a reader uses as they are (no JSON to parse): the
      parameters (``contrast`` as a list, ``fwhm_mm``, ``test``, ``clip``,
      ``threshold``, ``dilation_iterations``, ``connectivity``,
      ``min_roi_voxels``, ``keep_largest``, ``strategy``; ``null`` when unset),
      ``tr_s``, ``n_rois``, the grid (``affine``: 4x4 nested list mapping voxel
      indices ``(x, y, z, 1)`` to world mm, NIfTI RAS+; ``voxel_size_mm``;
      ``xyz_units``), ``source`` (roidask's version) and
      ``roidask_results_format`` (:data:`RESULTS_FORMAT`) and ``roi_definition``.

    With an independent ROI definition (folds), the same plus a ``fold`` dimension
    (the ROI set each signal comes from): coordinates ``fold`` (0, 1, ...),
    ``roi_runs`` and ``signal_runs`` (the fold's run values, space-separated
    strings) along ``fold`` and ``signal_volume`` (bool, ``(fold, time)``: the
    volumes whose signals the fold reports); ``mean_epi``, ``tstat`` and ``logp``
    stay on ``(x, y, z)`` (every volume), ``fold_tstat``, ``fold_logp`` (the
    fold's ROI-defining t-test), ``roi_mask``, ``dilated_mask`` and ``atlas`` are
    on ``(fold, x, y, z)``, ``signals`` on ``(fold, roi, time)`` (NaN outside
    the fold's signal volumes, and for a label the fold does not have), the ROI
    table on ``(fold, roi)`` (``roi_n_voxels`` 0 and the others NaN where the
    fold lacks the label; ``roi`` holds every label of any fold) and the
    attribute ``n_rois`` is a list (ROIs per fold).

    Parameters
    ----------
    result : PipelineResult
        One subject's computed results (:func:`roi_pipeline`).

    Returns
    -------
    xarray.Dataset
        The results as above, in memory.
    """
    if result.folds is not None:
        return _fold_results_dataset(result)
    maps = result.maps
    ref = maps["logp"]
    affine = affine_of(ref)
    coords: dict = dict(spatial_coords(ref.shape, affine))
    table = result.rois.set_index("label")
    labels = table.index.to_numpy().astype(np.int64)
    signals = result.signals.transpose("roi", "time")
    if not np.array_equal(np.asarray(signals["roi"].values), labels):
        raise AssertionError("signals and the ROI table have different ROIs")  # a bug
    coords["roi"] = ("roi", labels, {"long_name": "ROI label (its value in atlas)", "units": "1"})
    coords.update(_time_coords(signals))
    data = {name: _with_attrs(name, maps[name]) for name in _MAPS}
    data["signals"] = _with_attrs(
        "signals", np.asarray(signals.values), ("roi", "time"), strategy=result.params.strategy
    )
    for column in table.columns:
        name = f"roi_{column}"
        dtype = np.int64 if column == "n_voxels" else np.float64
        data[name] = _with_attrs(name, table[column].to_numpy().astype(dtype), ("roi",))
    attrs = _results_attrs(result, ref, len(labels))
    return xr.Dataset(data, coords=coords, attrs=attrs)


def n_rois_text(n_rois: int | list[int]) -> str:
    """ROI counts as ``batch.tsv`` (its ``n_rois`` column) and ``roidask info`` show them.

    Parameters
    ----------
    n_rois : int or list of int
        The ROIs of one ROI set, or of each fold in fold order (an independent
        ``roi_definition``: the ``n_rois`` attribute of ``results.zarr`` and of a study
        node, ``fold_n_rois`` in ``provenance.json``).

    Returns
    -------
    str
        ``"7"``, or the folds' counts separated by ``;`` (``"3;4"``: 3 ROIs defined in
        fold 0, 4 in fold 1), as a manifest separates a subject's runs. Folds are never
        summed: their ROIs are separate sets, from different runs, and often the same
        regions found again.
    """
    if isinstance(n_rois, list | tuple):
        return ";".join(str(int(n)) for n in n_rois)
    return str(int(n_rois))


def params_attrs(params: PipelineParams) -> dict:
    """The parameters as attributes of ``results.zarr`` and of a study's subject node
    (``fwhm`` as ``fwhm_mm``), JSON values.

    Parameters
    ----------
    params : PipelineParams
        The analysis parameters.

    Returns
    -------
    dict
        One JSON value per parameter (:meth:`PipelineParams.to_dict`), ``fwhm``
        named ``fwhm_mm`` (its unit).
    """
    return {("fwhm_mm" if k == "fwhm" else k): v for k, v in params.to_dict().items()}


def _results_attrs(result: PipelineResult, ref: xr.DataArray, n_rois) -> dict:
    affine = affine_of(ref)
    params = params_attrs(result.params)
    return {
        "title": "roidask ROI analysis of one subject",
        "source": f"roidask {roidask_version}",
        RESULTS_ATTR: RESULTS_FORMAT,
        **params,
        "tr_s": result.signals.attrs.get("tr_s"),
        "n_rois": n_rois,
        "affine": affine.tolist(),
        "voxel_size_mm": voxel_size_mm(affine).tolist(),
        "xyz_units": ref.attrs.get("xyz_units", "mm"),
    }


def _time_coords(signals: xr.DataArray) -> dict:
    time = signals["time"]
    attrs = {
        "long_name": "start of the volume's acquisition, from the first volume (volume x TR)",
        "units": time.attrs.get("units", "s"),  # "volumes" without a repetition time
    }
    coords = {"time": ("time", np.asarray(time.values, dtype=np.float64), attrs)}
    n_time = time.size
    volume = signals["volume"].values if "volume" in signals.coords else np.arange(n_time)
    time_values = {
        "condition": np.asarray(signals["condition"].values).astype(str),
        "run": np.asarray(signals["run"].values, dtype=np.int64),
        "volume": np.asarray(volume, dtype=np.int64),
    }
    for name, values in time_values.items():
        coords[name] = ("time", values, _TIME_COORDS[name])
    return coords


def _fold_results_dataset(result: PipelineResult) -> xr.Dataset:
    """:func:`results_dataset` with a ``fold`` dimension (independent ROI definitions)."""
    assert result.folds is not None  # results_dataset calls it only with folds
    maps = result.maps
    ref = maps["logp"]
    coords: dict = dict(spatial_coords(ref.shape, affine_of(ref)))
    signals = result.signals.transpose("fold", "roi", "time")
    labels = np.asarray(signals["roi"].values).astype(np.int64)
    coords["roi"] = ("roi", labels, {"long_name": "ROI label (its value in atlas)", "units": "1"})
    coords.update(_time_coords(signals))
    coords.update(_fold_coords(result.folds))
    coords["signal_volume"] = (
        ("fold", "time"),
        np.asarray(signals["signal_volume"].values, dtype=bool),
        _FOLD_COORDS["signal_volume"],
    )
    data = {name: _with_attrs(name, maps[name]) for name in ("mean_epi", "tstat", "logp")}
    data.update({name: _with_attrs(name, maps[name]) for name in _FOLD_MAPS})
    data["signals"] = _with_attrs(
        "signals",
        np.asarray(signals.values),
        ("fold", "roi", "time"),
        strategy=result.params.strategy,
    )
    n_folds = len(result.folds)
    table = result.rois
    fold_index = table["fold"].to_numpy(dtype=np.int64)
    roi_index = np.searchsorted(labels, table["label"].to_numpy(dtype=np.int64))
    for column in ROI_TABLE_COLUMNS[1:]:
        name = f"roi_{column}"
        if column == "n_voxels":
            values = np.zeros((n_folds, labels.size), dtype=np.int64)
        else:
            values = np.full((n_folds, labels.size), np.nan)
        values[fold_index, roi_index] = table[column].to_numpy()
        data[name] = _with_attrs(name, values, ("fold", "roi"))
    attrs = _results_attrs(result, ref, result.fold_n_rois())
    return xr.Dataset(data, coords=coords, attrs=attrs)


# Threads of this thread's local computations, set by compute_here (None: not set).
_HERE = threading.local()


@contextlib.contextmanager
def compute_here(threads: int) -> Iterator[None]:
    """In this thread, :func:`compute` uses dask's threaded scheduler with ``threads`` threads.

    Even with a ``distributed`` client active: a batch runs each subject's whole
    pipeline inside one worker's task this way, as ``roidask run`` does in its own
    process. Nestable; other threads are not affected.

    Parameters
    ----------
    threads : int
        Threads of dask's threaded scheduler for the computations of this thread.

    Yields
    ------
    None
        Within the block, :func:`compute` runs here with ``threads`` threads.
    """
    previous = getattr(_HERE, "threads", None)
    _HERE.threads = int(threads)
    try:
        yield
    finally:
        _HERE.threads = previous


def compute(*objs, progress: bool = False, local: bool = False):
    """Compute dask-backed objects together (shared reads), with optional progress.

    Uses the active ``distributed`` client if there is one (with its terminal
    progress bar) unless ``local`` or within :func:`compute_here`; otherwise
    dask's default scheduler (the threaded one in this process with ``local``, with
    :func:`compute_here`'s threads there). Meanwhile BLAS runs on one thread in
    this process, so results do not depend on the number of threads (see
    :mod:`roidask._blas`). Progress bars are drawn on a terminal only.

    Parameters
    ----------
    *objs : dask collections or xarray objects
        What to compute, together (chunks they share are read once).
    progress : bool
        Draw a progress bar on stderr (on a terminal).
    local : bool
        Compute in this process's threads, even with a ``distributed`` client active.

    Returns
    -------
    tuple
        The computed objects, in order (numpy arrays, xarray objects in memory).
    """
    progress = check_bool(progress, "progress")
    local = check_bool(local, "local")
    threads = getattr(_HERE, "threads", None)
    local = local or threads is not None
    client = None if local else active_client()
    # A callable, not "threads": dask imports distributed to resolve scheduler names.
    scheduler = {"scheduler": dask.threaded.get} if local else {}
    if threads is not None:
        scheduler["num_workers"] = threads
    with one_blas_thread():
        if client is not None:
            futures = client.compute(list(objs))
            if progress and sys.stderr.isatty():
                from distributed import progress as dist_progress

                dist_progress(futures)
                print(file=sys.stderr)
            return tuple(client.gather(futures))
        with dask_progress(progress):
            return dask.compute(*objs, **scheduler)


def _here_unless_persisted(collection):
    """The scheduler that reads a small collection: this thread, unless its data were
    persisted on a cluster (futures), which only the cluster holds.

    A function, not the name ``"sync"``: naming a scheduler makes dask import
    ``distributed`` (~0.5 s) to look for a client.
    """
    if "distributed" in sys.modules:  # imported already: free
        from distributed import futures_of

        if futures_of(collection):
            return None  # the active client
    return dask.local.get_sync


def mask_values(mask: xr.DataArray, *, param: str = "mask_img") -> np.ndarray:
    """The voxels of a 3D mask image as booleans, checking that it is binary and not empty.

    Parameters
    ----------
    mask : xarray.DataArray
        A 3D roidask image (:func:`roidask.io.as_image`); read here (small).
    param : str
        The caller's name for ``mask``, in messages.

    Returns
    -------
    ndarray of bool
        The mask's voxels, shape ``(x, y, z)``.

    Raises
    ------
    InvalidParameterError
        Values other than 0 and 1 (the message lists them), or no voxel inside.
    """
    data = mask.data  # small: read here, never sent to a cluster and back
    if dask.is_dask_collection(data):
        (data,) = dask.compute(data, scheduler=_here_unless_persisted(data))
    values = np.asarray(data)
    label = image_label(mask, param)
    inside = check_binary(values, param=param, label=label)
    if not inside.any():
        raise InvalidParameterError(
            f"{label}: mask is empty (every voxel is 0); expected at least one voxel inside",
            param=param,
        )
    return inside


def check_inputs(
    bold: xr.DataArray, mask: xr.DataArray, params: PipelineParams | None = None
) -> np.ndarray:
    """Validate a BOLD image, a mask and the parameters together, before the data pass.

    Reads the mask (small) but no BOLD voxel.

    Parameters
    ----------
    bold : xarray.DataArray
        4D BOLD series, a roidask image (:func:`roidask.io.as_image`) with its
        ``condition`` and ``run`` coordinates.
    mask : xarray.DataArray
        3D binary mask, a roidask image.
    params : PipelineParams, optional
        Analysis parameters; None (the default): ``PipelineParams()``.

    Returns
    -------
    ndarray of bool
        The mask's voxels.

    Raises
    ------
    GridMismatchError
        The mask is not on the BOLD grid.
    ConditionError
        A contrast condition is missing, or ``params.test`` is not defined with its
        volumes (Student's needs at least 1 of each condition and 3 in all, Welch's
        at least 2 of each).
    InvalidParameterError
        The mask is not binary, or empty.
    RoidaskTypeError
        ``params`` is not a :class:`PipelineParams`.
    """
    params = PipelineParams.of(params)
    try:
        check_same_grid(bold, mask, names=("the BOLD series", "the mask"))
    except GridMismatchError as exc:  # named by the mask, as the file (or flag) to change
        label = image_label(mask, "mask_img")
        raise GridMismatchError(f"{label}: {exc}", param="mask_img") from None
    check_contrast(params.contrast, volume_conditions(bold), test=params.test)
    roi_folds(bold, params)
    return mask_values(mask)


def roi_folds(bold: xr.DataArray, params: PipelineParams | None = None) -> FoldPlan:
    """The folds of ``params.roi_definition`` over the runs of ``bold`` (reads no voxel).

    See :mod:`roidask.ops.folds`: runs are the values of the ``run`` coordinate, in
    increasing order.

    Parameters
    ----------
    bold : xarray.DataArray
        4D BOLD series, a roidask image with its ``condition`` and ``run``
        coordinates (no ``run``: one run).
    params : PipelineParams, optional
        Analysis parameters (``roi_definition``, ``contrast``, ``test``); None (the
        default): ``PipelineParams()``.

    Returns
    -------
    FoldPlan
        The folds: which runs define each fold's ROIs and which give its signals
        (:func:`roidask.ops.folds.fold_plan`).

    Raises
    ------
    InvalidParameterError
        An independent definition with fewer than 2 runs.
    ConditionError
        A fold's ROI-defining runs hold too few volumes of the contrast conditions for
        ``params.test`` (:func:`roidask._validate.ttest_defined`).
    RoidaskTypeError
        ``params`` is not a :class:`PipelineParams`.
    """
    params = PipelineParams.of(params)
    runs = bold["run"].values if "run" in bold.coords else np.zeros(bold.sizes["time"])
    plan = fold_plan(runs, params.roi_definition)
    if not plan.independent:
        return plan
    conditions = volume_conditions(bold)
    for k, fold in enumerate(plan.folds):
        used = conditions[plan.roi_volumes(k)]
        check_ttest_counts(
            {c: int(np.count_nonzero(used == c)) for c in params.contrast},
            params.test,
            param="roi_definition",
            holder=f"fold {k} of {params.roi_definition!r} defines its ROIs on runs "
            f"{list(fold.roi_runs)}, which hold",
        )
    return plan


def _empty_signals(bold: xr.DataArray, strategy: str) -> xr.DataArray:
    attrs = {"strategy": strategy}
    attrs.update({k: bold.attrs[k] for k in ("tr_s", "time_units") if k in bold.attrs})
    return xr.DataArray(
        np.zeros((0, bold.sizes["time"])),
        dims=("roi", "time"),
        coords={
            "roi": np.zeros(0, dtype=np.int32),
            **volume_coords(bold),
        },
        name="signals",
        attrs=attrs,
    )


def _empty_rois() -> pd.DataFrame:
    return pd.DataFrame(
        {
            c: pd.Series(dtype=np.int64 if c in ("label", "n_voxels") else np.float64)
            for c in ROI_TABLE_COLUMNS
        }
    )


def roi_pipeline(
    bold_img: ImageLike,
    *,
    mask_img: ImageLike,
    params: PipelineParams | None = None,
    subject: str | None = None,
    chunks=None,
    box_max_bytes: int | None = None,
    temp_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> PipelineResult:
    """Run the seed ROI analysis on one subject and return computed results.

    Parameters
    ----------
    bold_img : ImageLike
        4D BOLD with ``condition`` labels (see :func:`roidask.io.bold_from_nifti`,
        :func:`roidask.io.open_subject`).
    mask_img : ImageLike
        3D binary mask on the BOLD grid (e.g. ventral temporal).
    params : PipelineParams, optional
        Analysis options; defaults are nilearn's example.
    subject : str, optional
        Subject of a multi-subject store.
    chunks : dict or str, optional
        Chunking of the BOLD data. The pass works on blocks of whole volumes: the
        time chunks (at most :data:`roidask.onepass.BLOCK_MAX_BYTES`) set the blocks,
        spatial chunks are merged. Results do not depend on it beyond float64 rounding.
    box_max_bytes : int, optional
        Largest box of raw voxels (bytes, all volumes) the pass keeps in memory for
        the extraction (default :data:`roidask.onepass.BOX_MAX_BYTES`); with a larger
        box, or 0, the pass writes the voxels near the mask to a temporary file in
        ``temp_dir``. Results do not depend on it beyond float64 rounding.
    temp_dir : path, optional
        Existing folder for that temporary file (default: the system's temporary
        folder; on a cluster of several machines, a folder they share). It holds at
        most the raw data (e.g. 3 GB for a 97x115x97x1452 int16 run) and is removed
        when the run ends; files left by killed runs are removed by the next run.
    progress : bool
        Show progress bars on stderr (on a terminal).

    Returns
    -------
    PipelineResult

    Raises
    ------
    GridMismatchError, ConditionError, ImageDimensionError, InvalidParameterError
        Before any voxel data is read.
    OutputError
        ``temp_dir`` is not a writable folder or lacks the space the temporary file
        needs (before any voxel data is read), or writing it fails.

    Warns
    -----
    NonFiniteVoxelsWarning
        The data holds NaN or infinite values (counted as 0, as nilearn does).
    EmptyMaskWarning
        No voxel of the mask passes the threshold: no ROI.
    """
    params = PipelineParams.of(params)
    box_max_bytes = check_optional_int(box_max_bytes, "box_max_bytes", minimum=0)
    progress = check_bool(progress, "progress")
    bold = as_image(
        bold_img, ndim=4, param="bold_img", subject=subject, subject_param="subject", stored=True
    )
    if chunks is not None:
        bold = bold.chunk(normalize_chunks(chunks, bold.shape, bold.dtype.itemsize))
    bold = pass_chunks(bold)
    mask = as_image(mask_img, ndim=3, param="mask_img")
    mask_np = check_inputs(bold, mask, params)
    plan = roi_folds(bold, params)
    timings = {}

    keep = kept_voxels(
        mask_np,
        affine_of(bold),
        n_volumes=bold.sizes["time"],
        dtype=bold.dtype,
        fwhm=params.fwhm,
        dilation_iterations=params.dilation_iterations,
        box_max_bytes=box_max_bytes,
    )
    with contextlib.ExitStack() as stack:
        spill = None
        if keep.tiles is not None:  # too large for memory: a temporary file, removed on exit
            spill = stack.enter_context(
                spill_file(
                    tempfile.gettempdir() if temp_dir is None else temp_dir,
                    shape=bold.shape,
                    dtype=bold.dtype,
                    kept=keep.tiles,
                )
            )
        # 1. one pass: mean EPI, smoothed contrast moments (per moment group of runs with
        # an independent ROI definition) and the ROI box, one read.
        t0 = time.perf_counter()
        (one,) = compute(
            contrast_pass(
                bold,
                contrast=params.contrast,
                fwhm=params.fwhm,
                box=keep.box,
                spill=spill,
                groups=plan.groups if plan.n_groups > 1 else None,
            ),
            progress=progress,
        )
        if one.n_nonfinite:
            files = ", ".join(bold.attrs.get("source_files") or []) or "bold_img"
            warnings.warn(
                f"{files}: {one.n_nonfinite} NaN/inf voxel values (set to 0 before smoothing, as "
                "nilearn does)",
                NonFiniteVoxelsWarning,
                stacklevel=2,
            )
        mean_np = smooth_img(
            image_on_grid((one.total / one.n_volumes).astype(np.float32), bold), fwhm=params.fwhm
        ).values
        equal_var = params.test == "student"
        tt = mom_ops.ttest_ind(*one.contrast, equal_var=equal_var)
        logp_np = clip_logp(image_on_grid(tt.logp, bold), clip=params.clip).values
        # the t-tests that define each fold's ROIs (with "same": the one above)
        defining = [(tt.t, logp_np)]
        if plan.independent:
            defining = []
            for pair in fold_moments(plan, one.groups):
                ft = mom_ops.ttest_ind(*pair, equal_var=equal_var)
                defining.append(
                    (ft.t, clip_logp(image_on_grid(ft.logp, bold), clip=params.clip).values)
                )
        timings["statistics"] = time.perf_counter() - t0
        timings["pass_statistics_cpu"] = one.cpu_s["statistics"]
        timings["pass_temporary_writes_cpu"] = one.cpu_s["temporary_writes"]

        # 2. ROIs: small 3D operations on the computed maps (per fold).
        t0 = time.perf_counter()
        mean_epi = image_on_grid(np.asarray(mean_np, dtype=np.float32), bold, name="mean_epi")
        tstat = image_on_grid(np.asarray(tt.t, dtype=np.float32), bold, name="tstat")
        logp = image_on_grid(np.asarray(logp_np, dtype=np.float32), bold, name="logp")
        if plan.independent:
            set_tstats = [
                image_on_grid(np.asarray(t, dtype=np.float32), bold, name="fold_tstat")
                for t, _ in defining
            ]
            set_logps = [
                image_on_grid(np.asarray(lp, dtype=np.float32), bold, name="fold_logp")
                for _, lp in defining
            ]
        else:
            set_tstats, set_logps = [tstat], [logp]
        lazy = [_define_rois(lp, mask_np, bold, params) for lp in set_logps]
        flat = compute(*[arr for trio in lazy for arr in trio], local=True)
        roi_nps, dil_nps, atlas_nps = flat[0::3], flat[1::3], flat[2::3]
        atlases = [
            image_on_grid(np.asarray(a, dtype=np.int32), bold, name="atlas") for a in atlas_nps
        ]
        for k, (atlas_np, roi_np, lp) in enumerate(zip(atlas_nps, roi_nps, set_logps,
                                                          strict=True)):  # fmt: skip
            if not np.any(atlas_np):
                peak = float(np.max(np.asarray(lp.values)[mask_np]))
                where = _fold_words(plan, k)
                n_above = int(np.count_nonzero(roi_np))
                why = (
                    f"the {n_above} voxel(s) of mask_img with -log10 p >= "
                    f"{params.threshold:g} form no ROI of min_roi_voxels "
                    f"({params.min_roi_voxels}) voxels or more"
                    if n_above
                    else f"no voxel of mask_img has -log10 p >= {params.threshold:g} (the "
                    f"peak inside the mask is {peak:.6g})"
                )
                warnings.warn(
                    f"no ROI{where}: {why}; outputs are written with an empty ROI table",
                    EmptyMaskWarning,
                    stacklevel=2,
                )
        timings["rois"] = time.perf_counter() - t0

        # 3. extraction: all ROIs, all (reported) volumes, smoothed ROI weights on the raw
        # data; with folds, every fold's graph reads the same kept voxels, computed at once.
        t0 = time.perf_counter()
        linear = params.strategy in LINEAR_STRATEGIES
        source = None
        tables, pending = [], {}
        for k, atlas in enumerate(atlases):
            if not np.any(atlas_nps[k]):  # already warned above
                tables.append(_empty_rois())
                continue
            tables.append(roi_table(atlas, stat_img=set_logps[k]))
            if source is None:
                # stored integers stay so for the linear strategies (scaled as gathered)
                if one.box is not None:  # the ROIs' raw voxels were kept by the pass
                    source = box_image(one, bold, values=not linear)
                else:  # or written to the temporary file: only the tiles ROIs touch are read
                    source = spill_image(one, bold, values=not linear)
            if one.box is not None:
                roi_atlas = image_on_grid(
                    np.asarray(atlas_nps[k], dtype=np.int32)[one.box], source
                )
            else:
                roi_atlas = atlas
            volumes = source
            if plan.independent:
                volumes = source.isel(time=plan.signal_volumes(k))
            if not linear:
                volumes = smooth_img(volumes, fwhm=params.fwhm)
            pending[k] = extract_signals(
                volumes,
                roi_atlas,
                strategy=params.strategy,
                fwhm=params.fwhm if linear else None,
            )
        if pending:
            # The box is already in memory here: extract it in this process.
            values = compute(
                *[s.data for s in pending.values()], progress=progress, local=one.spill is None
            )
            pending = {
                k: s.copy(data=v) for (k, s), v in zip(pending.items(), values, strict=True)
            }
        timings["extraction"] = time.perf_counter() - t0

    if plan.independent:
        maps = xr.Dataset(
            {
                "mean_epi": mean_epi,
                "tstat": tstat,
                "logp": logp,
                "fold_tstat": _by_fold(set_tstats),
                "fold_logp": _by_fold(set_logps),
                "roi_mask": _by_fold(
                    [image_on_grid(np.asarray(r).astype(np.uint8), bold) for r in roi_nps]
                ),
                "dilated_mask": _by_fold(
                    [image_on_grid(np.asarray(d).astype(np.uint8), bold) for d in dil_nps]
                ),
                "atlas": _by_fold(atlases),
            }
        )
        signals = _fold_signals(bold, plan, pending, params.strategy)
        rois = _fold_table(tables)
    else:
        maps = xr.Dataset(
            {
                "mean_epi": mean_epi,
                "tstat": tstat,
                "logp": logp,
                "roi_mask": image_on_grid(np.asarray(roi_nps[0]).astype(np.uint8), bold),
                "dilated_mask": image_on_grid(np.asarray(dil_nps[0]).astype(np.uint8), bold),
                "atlas": atlases[0],
            }
        )
        signals = pending[0] if pending else _empty_signals(bold, params.strategy)
        rois = tables[0]
    # in memory, coordinates included (those of a rechunked run are small dask arrays)
    maps, signals = compute(maps, signals, local=True)
    return PipelineResult(
        maps=maps,
        signals=signals,
        rois=rois,
        params=params,
        timings_s=timings,
        folds=plan.folds if plan.independent else None,
    )


def _define_rois(logp: xr.DataArray, mask_np: np.ndarray, bold, params: PipelineParams):
    """Lazy ROI mask (threshold AND mask), its dilation and the atlas of a -log10 p map."""
    roi_mask = mask_and(
        threshold_img(logp, threshold=params.threshold), image_on_grid(mask_np, bold)
    )
    dilated = (
        binary_dilation(
            roi_mask, iterations=params.dilation_iterations, connectivity=params.connectivity
        )
        if params.dilation_iterations
        else roi_mask
    )
    atlas, _ = label(dilated, connectivity=params.connectivity)
    if params.min_roi_voxels > 1:
        atlas, _ = remove_small(atlas, min_voxels=params.min_roi_voxels)
    if params.keep_largest is not None:
        atlas, _ = keep_largest(atlas, k=params.keep_largest)
    return roi_mask.data, dilated.data, atlas.data


def _fold_words(plan: FoldPlan, k: int) -> str:
    if not plan.independent:
        return ""
    runs = " ".join(str(r) for r in plan.folds[k].roi_runs)
    return f" in fold {k} (ROIs from runs {runs})"


def _runs_text(runs) -> str:
    return " ".join(str(int(r)) for r in runs)


def _fold_coords(folds) -> dict:
    """The ``fold`` index and what each fold used, as coordinates along ``fold``."""
    return {
        "fold": ("fold", np.arange(len(folds), dtype=np.int64), _FOLD_COORDS["fold"]),
        "roi_runs": (
            "fold",
            np.array([_runs_text(f.roi_runs) for f in folds]),
            _FOLD_COORDS["roi_runs"],
        ),
        "signal_runs": (
            "fold",
            np.array([_runs_text(f.signal_runs) for f in folds]),
            _FOLD_COORDS["signal_runs"],
        ),
    }


def _by_fold(images: list[xr.DataArray]) -> xr.DataArray:
    """3D images of the folds stacked along a leading ``fold`` dimension (grid attrs kept)."""
    data = np.stack([np.asarray(img.values) for img in images])
    return xr.DataArray(data, dims=("fold", *images[0].dims), attrs=dict(images[0].attrs))


def _fold_signals(bold, plan: FoldPlan, computed: dict, strategy: str) -> xr.DataArray:
    """``(fold, roi, time)`` signals: each fold's on its signal volumes, NaN elsewhere.

    ``roi`` holds every label of any fold (sorted); a fold without that label is NaN.
    """
    labels = sorted({int(r) for s in computed.values() for r in s["roi"].values})
    dtype = np.result_type(*[s.dtype for s in computed.values()]) if computed else np.float64
    values = np.full((len(plan.folds), len(labels), bold.sizes["time"]), np.nan, dtype=dtype)
    position = {label: i for i, label in enumerate(labels)}
    for k, s in computed.items():
        rows = np.asarray([position[int(r)] for r in s["roi"].values], dtype=np.intp)
        values[k][np.ix_(rows, plan.signal_volumes(k))] = np.asarray(s.values)
    coords = {
        "roi": np.asarray(labels, dtype=np.int32),
        "volume": ("time", np.arange(bold.sizes["time"])),  # as extract_signals
        **volume_coords(bold),
        **_fold_coords(plan.folds),
        "signal_volume": (
            ("fold", "time"),
            np.stack([np.isin(plan.groups, f.signal_groups) for f in plan.folds]),
            _FOLD_COORDS["signal_volume"],
        ),
    }
    attrs = {"strategy": strategy}
    attrs.update({k: bold.attrs[k] for k in ("tr_s", "time_units") if k in bold.attrs})
    return xr.DataArray(
        values, dims=("fold", "roi", "time"), coords=coords, name="signals", attrs=attrs
    )


def _fold_table(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The folds' ROI tables as one, with a leading ``fold`` column."""
    frames = [t.assign(fold=k) for k, t in enumerate(tables) if len(t)]
    out = pd.concat(frames, ignore_index=True) if frames else _empty_rois().assign(fold=0)
    out["fold"] = out["fold"].astype(np.int64)
    return out[["fold", *ROI_TABLE_COLUMNS]]
