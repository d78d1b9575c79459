# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Computing a Region of Interest (ROI) mask manually, with roidask
#
# This is nilearn's example "Computing a Region of Interest (ROI) mask manually"
# redone with roidask: the same steps and the same numbers, as lazy dask graphs over a
# chunked zarr store. It runs on the real Haxby 2001 slice bundled with roidask (one
# axial slice of subject 1, 1452 volumes, with a brain mask of that slice);
# `roidask.datasets.fetch_haxby()` downloads the full subjects (with their ventral
# temporal masks), and every step below works unchanged on them.
#
# Data: PyMVPA example data, Haxby et al. (2001), Science 293:2425-2430.

# %%
import io
import tempfile
from pathlib import Path

import dask
import numpy as np
import xarray as xr
from IPython.display import Image, display

from roidask.datasets import haxby_slice
from roidask.io import convert, open_subject
from roidask.ops import (
    binarize_img,
    binary_dilation,
    clip_logp,
    extract_signals,
    ftest_img,
    label,
    mask_and,
    mean_img,
    select_conditions,
    smooth_img,
    stack_conditions,
    threshold_img,
    ttest_img,
)
from roidask.plotting import DPI, plot_condition_boxplots, plot_ortho, plot_roi, plot_stat_map


def show(fig):
    """Show a roidask figure (a matplotlib Figure) inline, as the PNG roidask writes."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI)
    display(Image(png.getvalue()))


# %% [markdown]
# ## Loading the data
#
# The 4D BOLD run and its labels are converted once into a chunked zarr store (one
# group per subject), here in a temporary folder removed at the end. The chunks split
# every volume in x to show that nothing depends on them.

# %%
data = haxby_slice()
tmp = tempfile.TemporaryDirectory(prefix="roidask-notebook-")
workdir = Path(tmp.name)
store = convert(
    data.bold,
    labels=data.labels,
    out=workdir / "haxby.zarr",
    subject="subj1",
    mask_img=data.mask,
    chunks="x=16,time=400",
)
subject = open_subject(store, "subj1")
bold = subject["bold"]
print(xr.open_datatree(store, engine="zarr"))
names, counts = np.unique(bold["condition"].values, return_counts=True)
print(", ".join(f"{name}: {count}" for name, count in zip(names, counts, strict=True)))

# %% [markdown]
# ## Smoothing and the mean EPI
#
# Smoothing is linear and per volume: the mean of the smoothed series equals the
# smoothed mean, so only one 3D volume is smoothed for the mean EPI.

# %%
mean_epi = smooth_img(mean_img(bold), fwhm=6).compute()
show(plot_ortho(mean_epi, title="Smoothed mean EPI"))

# %% [markdown]
# ## Selecting voxels with a t-test
#
# Only the face and house volumes are smoothed, and their per-condition sums are
# accumulated in one pass over the data; -log10 p is computed from the log survival
# function (no underflow), then the example's convention: NaN -> 0, clip at 10.

# %%
faces_houses = select_conditions(bold, conditions=["face", "house"])
stats = ttest_img(smooth_img(faces_houses, fwhm=6), contrast=("face", "house"))
log_p = clip_logp(stats["logp"], clip=10.0).compute()
show(plot_stat_map(log_p, mean_epi, title="p-values (-log10 p)", cmap="inferno"))

# %% [markdown]
# The F-test across several conditions (`sklearn.feature_selection.f_classif`) is
# available too:

# %%
f_stats = ftest_img(bold, conditions=["face", "house", "cat", "chair"])
print(float(f_stats["F"].max().compute()))

# %% [markdown]
# ## Building the mask: threshold, AND with the brain mask, dilation
#
# nilearn's example keeps the thresholded voxels inside a ventral temporal mask. The
# bundled slice comes with a brain mask of its one axial slice instead (`mask.nii.gz`,
# stored in the subject's group as `mask`), so here the AND keeps the thresholded
# voxels inside the brain; with `fetch_haxby()`, pass the subject's `mask_vt`.

# %%
bin_p = threshold_img(log_p, threshold=5.0)
show(plot_stat_map(log_p, mean_epi, threshold=5.0, title="Thresholded p-values (-log10 p >= 5)"))
brain_mask = binarize_img(subject["mask"])
bin_p_and_mask = mask_and(bin_p, brain_mask)
show(plot_roi(bin_p_and_mask, mean_epi, title="Thresholded p-values AND the slice's brain mask"))
dilated = binary_dilation(bin_p_and_mask)
show(plot_roi(dilated, mean_epi, title="Dilated mask"))

# %% [markdown]
# ## Connected components, numbered exactly as `scipy.ndimage.label`

# %%
labels, n_labels = dask.compute(*label(dilated))
print("components:", int(n_labels))
# the example's first and second ROIs; each keeps its label, which its legend shows
first_roi = labels.where(labels == 5, 0)
second_roi = labels.where(labels == 3, 0)
show(plot_roi(first_roi, mean_epi, title="Connected components: first ROI (label 5)"))
show(plot_roi(second_roi, mean_epi, title="Connected components: second ROI (label 3)"))

# %% [markdown]
# ## Signals of every ROI, every volume, in one pass
#
# `fwhm=6` extracts from the raw data with smoothed ROI weights, which equals extracting
# from the smoothed data (as the example does) without smoothing every volume.

# %%
signals = extract_signals(bold, labels, strategy="mean", fwhm=6).compute()
X = stack_conditions(signals)  # (condition, sample, roi): the example's X1, X2
X1, X2 = X.sel(roi=1).values.T, X.sel(roi=2).values.T
print(X.sizes, X1.shape)
show(plot_condition_boxplots(signals, title="ROI signals per condition"))

# %% [markdown]
# ## The whole analysis in one call
#
# `roi_pipeline` runs the same steps reading the data once: one lazy graph over blocks
# of whole volumes gives the mean, the smoothed face/house moments and the voxels of
# the box where ROIs can appear, from which the ROI signals are extracted exactly;
# `roidask run` is its command line.

# %%
from roidask.pipeline import roi_pipeline

result = roi_pipeline(store, subject="subj1", mask_img=data.mask)
assert np.array_equal(result.maps["atlas"].values, labels.values)
result.rois

# %% [markdown]
# ## Cleaning up
#
# The temporary folder (the zarr store) is removed.

# %%
tmp.cleanup()
print("removed:", not workdir.exists())
