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
# # ROIs without double dipping
#
# nilearn's example defines its ROIs with a face-vs-house t-test and then reports the
# same volumes' signals inside them. The selection biases the reported effect: ROIs
# chosen because their voxels differ between faces and houses in these volumes show
# that difference again in these volumes, even where there is no effect at all
# (circular analysis; Kriegeskorte et al. 2009, Nat Neurosci 12:535).
#
# `roi_definition` (`roidask run/batch --roi-definition`) defines the ROIs on other runs
# than the signals it reports: `split-half` (ROIs from the odd runs, signals of the
# even runs, and the reverse) or `leave-one-run-out` (per run, ROIs from the other
# runs). Every fold comes from one read of the data: the pass keeps the contrast's
# moments per run and merges them per fold.
#
# Here the real Haxby slice's conditions are shuffled across its volumes, which leaves
# no face-vs-house effect, and each scheme's reported effect is measured.

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np

from roidask.datasets import haxby_slice
from roidask.exceptions import EmptyMaskWarning
from roidask.io import bold_from_nifti
from roidask.pipeline import PipelineParams, roi_pipeline

haxby = haxby_slice()
bold = bold_from_nifti(haxby.bold, labels=haxby.labels)
print("runs:", sorted(set(bold["run"].values.tolist())))

# %% [markdown]
# ## On the real data
#
# The folds of split-half: each fold's ROIs come from half of the runs, its signals from
# the other half. `roi_effects()` gives each ROI's face-minus-house difference on the
# volumes it reports, its t statistic, and the sign of the t-test that selected it.

# %%
real = roi_pipeline(bold, mask_img=haxby.mask, params=PipelineParams(roi_definition="split-half"))
print(real.folds_table().to_string(index=False))
real.roi_effects().round(2)

# %% [markdown]
# ## On null data: conditions shuffled
#
# Sixteen shuffles of the conditions across the volumes; ROIs at p < 0.05 (`threshold`
# 1.3) so that the null data have some. Per shuffle and scheme, the mean over ROIs (and
# folds) of the reported face-minus-house t, in the direction the ROI was selected for.

# %%
schemes = ["same", "split-half", "leave-one-run-out"]
conditions = bold["condition"].values
null = {scheme: [] for scheme in schemes}
for seed in range(16):
    shuffled = bold.assign_coords(
        condition=("time", np.random.default_rng(seed).permutation(conditions))
    )
    for scheme in schemes:
        params = PipelineParams(roi_definition=scheme, threshold=1.3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmptyMaskWarning)  # a shuffle without ROI
            effects = roi_pipeline(shuffled, mask_img=haxby.mask, params=params).roi_effects()
        effects = effects.dropna()
        if len(effects):
            null[scheme].append(float((effects["t"] * effects["selection_sign"]).mean()))
for scheme in schemes:
    values = np.array(null[scheme])
    se = values.std(ddof=1) / np.sqrt(len(values))
    print(f"{scheme}: mean {values.mean():+.2f} (SE {se:.2f}) over {len(values)} shuffles")

# %% [markdown]
# ## The selection bias
#
# With `same`, every shuffle that finds ROIs shows an effect near t = 2 in the selected
# direction where there is none; with ROIs defined on other runs, the effect is centred on 0.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for i, scheme in enumerate(schemes):
    values = np.array(null[scheme])
    jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(values))
    ax.plot(i + jitter, values, "o", alpha=0.7)
    ax.errorbar(
        i + 0.3,
        values.mean(),
        yerr=2 * values.std(ddof=1) / np.sqrt(len(values)),
        fmt="s",
        color="k",
        capsize=4,
    )
ax.axhline(0, color="0.5", lw=1)
ax.set_xticks(range(len(schemes)), schemes)
ax.set_ylabel("reported t, in the selected direction")
ax.set_title("Null data (shuffled conditions): mean over ROIs per shuffle (±2 SE)")
fig.tight_layout()
plt.show()
