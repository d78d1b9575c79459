"""nilearn's "Computing a ROI mask manually" example, verbatim in its numerics.

Used as the reference of the pipeline parity tests (nilearn and scipy only,
no roidask code).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from nilearn.image import get_data, load_img, mean_img, new_img_like, smooth_img
from nilearn.maskers import NiftiLabelsMasker
from scipy import stats
from scipy.ndimage import binary_dilation, label


def seed_pipeline(
    func_filename,
    labels_filename,
    mask_vt_filename,
    *,
    fwhm=6.0,
    contrast=("face", "house"),
    threshold=5.0,
    stats_dtype=None,
):
    """Return the seed's arrays: mean EPI, -log10 p (clipped), masks, labels, signals.

    ``stats_dtype=np.float64`` runs the t-test on the smoothed data cast to float64:
    the example feeds scipy float32 data, and scipy then computes t and p in float32
    (relative errors up to ~2.5e-2 in -log10 p for p near 1, and p underflowing to
    0 beyond ~1e-38), which roidask does not reproduce (float64 accumulators).
    """
    haxby_labels = pd.read_csv(labels_filename, sep=" ")["labels"]
    fmri_img = smooth_img(func_filename, fwhm=fwhm)
    mean = get_data(mean_img(fmri_img, copy_header=True))
    fmri_data = get_data(fmri_img)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat_data = fmri_data if stats_dtype is None else fmri_data.astype(stats_dtype)
        _, p_values = stats.ttest_ind(
            stat_data[..., haxby_labels == contrast[0]],
            stat_data[..., haxby_labels == contrast[1]],
            axis=-1,
        )
        log_p_values = -np.log10(p_values)
    log_p_values[np.isnan(log_p_values)] = 0.0
    log_p_values[log_p_values > 10.0] = 10.0
    unthresholded = log_p_values.copy()
    log_p_values[log_p_values < threshold] = 0
    bin_p_values = log_p_values != 0
    vt = get_data(load_img(mask_vt_filename)).astype(bool)
    bin_p_values_and_vt = np.logical_and(bin_p_values, vt)
    dil_bin_p_values_and_vt = binary_dilation(bin_p_values_and_vt)
    labels, n_labels = label(dil_bin_p_values_and_vt)

    labels_img = new_img_like(fmri_img, labels)
    signals = {}
    if n_labels:
        masker = NiftiLabelsMasker(
            labels_img, resampling_target=None, standardize=None, detrend=False
        )
        condition_names = haxby_labels.unique()
        n_cond_img = fmri_data[..., haxby_labels == contrast[1]].shape[-1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for cond in condition_names:
                cond_maps = new_img_like(
                    fmri_img, fmri_data[..., haxby_labels == cond][..., :n_cond_img]
                )
                signals[cond] = masker.fit_transform(cond_maps)  # (n_cond_img, n_labels)
    return {
        "mean_epi": mean,
        "logp": unthresholded,
        "roi_mask": bin_p_values_and_vt,
        "dilated": dil_bin_p_values_and_vt,
        "atlas": labels,
        "n_labels": n_labels,
        "signals": signals,
        "conditions": haxby_labels.to_numpy(),
    }


def masker_signals(bold, labels_img, strategy="mean", **kwargs):
    """Reference: NiftiLabelsMasker as (n_roi, n_time), warnings silenced locally."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masker = NiftiLabelsMasker(
            labels_img,
            standardize=None,
            detrend=False,
            strategy=strategy,
            resampling_target=None,
            reports=False,
            **kwargs,
        )
        return masker.fit_transform(bold).T


def seed_fold(
    func_filename,
    labels_filename,
    mask_vt_filename,
    *,
    roi_runs,
    signal_runs,
    fwhm=6.0,
    contrast=("face", "house"),
    threshold=5.0,
):
    """The example's steps with ROIs from the volumes of ``roi_runs`` alone (t-test in
    float64) and signals of the volumes of ``signal_runs`` (NiftiLabelsMasker).

    Returns ``logp`` (clipped), ``atlas``, ``n_labels`` and ``signals``
    ((n_labels, n_signal_volumes), or None without ROI).
    """
    table = pd.read_csv(labels_filename, sep=" ")
    conditions, runs = table["labels"].to_numpy(), table["chunks"].to_numpy()
    fmri_img = smooth_img(func_filename, fwhm=fwhm)
    fmri_data = get_data(fmri_img)
    used = np.isin(runs, roi_runs)
    data = fmri_data[..., used].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        _, p_values = stats.ttest_ind(
            data[..., conditions[used] == contrast[0]],
            data[..., conditions[used] == contrast[1]],
            axis=-1,
        )
        log_p_values = -np.log10(p_values)
    log_p_values[np.isnan(log_p_values)] = 0.0
    log_p_values[log_p_values > 10.0] = 10.0
    vt = get_data(load_img(mask_vt_filename)).astype(bool)
    labels, n_labels = label(binary_dilation((log_p_values >= threshold) & vt))
    signals = None
    if n_labels:
        held_out = new_img_like(fmri_img, fmri_data[..., np.isin(runs, signal_runs)])
        signals = masker_signals(held_out, new_img_like(fmri_img, labels))
    return {"logp": log_p_values, "atlas": labels, "n_labels": n_labels, "signals": signals}
