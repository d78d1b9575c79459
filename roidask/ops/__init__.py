"""Lazy operators on roidask images, one module per family (as :mod:`scipy.ndimage`).

Every operator takes an image first (:data:`roidask.io.ImageLike`), options
keyword-only, and returns lazy xarray objects; names follow scipy and nilearn.

========================  ==========================================================
module                    what
========================  ==========================================================
:mod:`.smooth`            Gaussian smoothing (nilearn's ``smooth_img``)
:mod:`.stats`             mean/std/tSNR maps, t-tests, F-test, the seed's -log10 p
:mod:`.moments`           count/mean/m2, their merges, tests from moments
:mod:`.pvalues`           p-values and -log10 p without underflow
:mod:`.threshold`         thresholds and mask algebra
:mod:`.morph`             binary morphology (``binary_dilation``, ...)
:mod:`.label`             connected components (``label``, scipy's numbering)
:mod:`.rois`              ROI selection, tables, atlases
:mod:`.extract`           per-ROI signals (``NiftiLabelsMasker``)
:mod:`.permutation`       group inference by sign flips (``permuted_ols``), on dask
:mod:`.conditions`        volumes and signals by condition
:mod:`.clean`             temporal cleaning of signals (``nilearn.signal.clean``)
:mod:`.kernels`           Gaussian kernels (FWHM in mm -> sigma in voxels)
========================  ==========================================================
"""

from roidask.ops.clean import clean_signals
from roidask.ops.conditions import select_condition, select_conditions, stack_conditions
from roidask.ops.extract import extract_signals
from roidask.ops.label import label
from roidask.ops.morph import (
    binary_closing,
    binary_dilation,
    binary_erosion,
    binary_fill_holes,
    binary_opening,
)
from roidask.ops.permutation import permuted_ttest_1samp
from roidask.ops.rois import keep_largest, remove_small, roi_table, split_hemispheres, write_atlas
from roidask.ops.smooth import smooth_img
from roidask.ops.stats import (
    clip_logp,
    condition_moments,
    ftest_img,
    mean_img,
    std_img,
    tsnr_img,
    ttest_1samp_img,
    ttest_img,
)
from roidask.ops.threshold import (
    binarize_img,
    mask_and,
    mask_difference,
    mask_not,
    mask_or,
    resample_mask,
    threshold_img,
)

__all__ = [
    "binarize_img",
    "binary_closing",
    "binary_dilation",
    "binary_erosion",
    "binary_fill_holes",
    "binary_opening",
    "clean_signals",
    "clip_logp",
    "condition_moments",
    "extract_signals",
    "ftest_img",
    "keep_largest",
    "label",
    "mask_and",
    "mask_difference",
    "mask_not",
    "mask_or",
    "mean_img",
    "permuted_ttest_1samp",
    "remove_small",
    "resample_mask",
    "roi_table",
    "select_condition",
    "select_conditions",
    "smooth_img",
    "split_hemispheres",
    "stack_conditions",
    "std_img",
    "threshold_img",
    "tsnr_img",
    "ttest_1samp_img",
    "ttest_img",
    "write_atlas",
]
