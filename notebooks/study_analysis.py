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
# # A study's ROI signals with plain xarray
#
# `roidask batch` leaves, besides each subject's folder of NIfTI and TSV files, one
# study store: `OUT/study.zarr`, a zarr store that `xarray.open_datatree` opens as a
# DataTree with one node per subject (`sub-<id>`) and a `group` node (the second-level
# maps). Each subject node holds the subject's maps on `(x, y, z)`, its ROI signals on
# `(roi, time)` with `condition` and `run` along time, and its ROI table along `roi`;
# the analysis parameters and the voxel grid are plain attributes.
#
# This notebook is the contract for downstream analyses: after the first cell, which
# generates a small study with roidask, nothing imports roidask. Only xarray, pandas
# and matplotlib read and analyse the store.

# %% [markdown]
# ## A small study
#
# Four synthetic Haxby-like subjects (20x24x16 voxels, 726 volumes, face- and
# house-selective regions planted in a ventral temporal mask), run through the batch
# on an embedded dask cluster, in a temporary folder removed at the end. On the command
# line this is `roidask batch manifest.tsv --out results/`.

# %%
import tempfile
from pathlib import Path

import dask

from roidask.batch import SubjectSpec, run_batch
from roidask.cluster import get_client
from roidask.datasets import make_synthetic_dataset

tmp = tempfile.TemporaryDirectory(prefix="roidask-study-")
workdir = Path(tmp.name)
subjects = make_synthetic_dataset(
    workdir / "data", n_subjects=4, shape=(20, 24, 16), n_volumes=726, effect_pct=5.0
)
specs = [
    SubjectSpec(f"{i:02d}", (s.bold,), (s.labels,), s.mask_vt)
    for i, s in enumerate(subjects, start=1)
]
# the workers' scratch space goes into the temporary folder too
with (
    dask.config.set({"temporary-directory": str(workdir)}),
    get_client(processes=False, n_workers=1, threads_per_worker=2),
):
    batch = run_batch(specs, workdir / "results", plots=False)
study_path = workdir / "results" / "study.zarr"
batch[["subject", "status", "n_rois"]]

# %% [markdown]
# ## Opening the study: xarray only from here on
#
# `open_datatree` reads the store's consolidated metadata: it lists only subjects whose
# results were completely written (a batch killed midway leaves the others invisible,
# and its rerun completes them). Nothing is read but metadata until values are used.

# %%
import matplotlib.pyplot as plt
import pandas as pd
import xarray as xr

tree = xr.open_datatree(study_path, engine="zarr")
subjects = [name for name in tree.children if name.startswith("sub-")]
print("subjects:", subjects)
ds = tree["sub-01"].to_dataset()
ds

# %% [markdown]
# The parameters are attributes (no JSON to parse), the grid too: `affine` maps voxel
# indices `(x, y, z, 1)` to world mm, and `x_mm`, `y_mm`, `z_mm` give the world position
# of each voxel index when the affine is axis-aligned. `condition` is an ordinary string
# coordinate: selection and grouping work on it.

# %%
print({key: ds.attrs[key] for key in ("contrast", "fwhm_mm", "threshold", "tr_s")})
print("ROI centres, x in mm:", ds["roi_com_x_mm"].values.round(1))
face = ds["signals"].sel(time=ds["condition"] == "face")
print("face volumes:", face.sizes["time"])
print("conditions:", sorted(set(ds["condition"].values.tolist())))

# %% [markdown]
# ## Condition means per subject and ROI
#
# `groupby("condition")` averages each ROI's signal over the volumes of each
# condition; dividing by the rest mean gives percent signal change. The ROIs are numbered
# per subject (in scan order), so a label is the same region in every subject only when
# the subjects' ROIs line up: here the four planted regions are found in every subject,
# in the same order, as their centres of mass show.

# %%
centres = xr.concat(
    [tree[name]["roi_com_x_mm"] for name in subjects], dim=pd.Index(subjects, name="subject")
)
print(centres.to_pandas().round(1))


def percent_change(node: xr.DataTree) -> xr.DataArray:
    """Mean signal per ROI and condition, in percent of the ROI's mean at rest."""
    means = node["signals"].groupby("condition").mean()
    return 100 * (means / means.sel(condition="rest") - 1)


per_subject = xr.concat(
    [percent_change(tree[name]) for name in subjects],
    dim=pd.Index(subjects, name="subject"),
    join="outer",  # subjects may have different ROIs: missing ones are NaN
)
per_subject.name = "percent_change"
group = per_subject.mean("subject")  # group mean per ROI and condition (NaN skipped)
group.to_pandas().round(2)

# %% [markdown]
# ## A tidy table
#
# `to_dataframe()` gives one row per subject, ROI and condition, ready for pandas,
# statsmodels or seaborn.

# %%
tidy = per_subject.to_dataframe().dropna().reset_index()
print("tidy:", tidy.shape)
tidy.head(8)

# %% [markdown]
# ## Condition means across subjects
#
# Bars: the group mean per ROI and condition; dots: the subjects. Face-selective
# regions (the lateral ones) respond most to faces, house-selective ones to houses.

# %%
conditions = [c for c in group["condition"].values if c != "rest"]
fig, axes = plt.subplots(1, group.sizes["roi"], figsize=(14, 3.6), sharey=True)
for ax, roi in zip(axes, group["roi"].values, strict=True):
    x = range(len(conditions))
    ax.bar(x, group.sel(roi=roi, condition=conditions), color="0.8")
    for name in subjects:
        values = per_subject.sel(subject=name, roi=roi, condition=conditions)
        ax.plot(x, values, "o", markersize=4, label=name)
    ax.set_xticks(list(x), conditions, rotation=60)
    ax.set_title(f"ROI {roi} (x = {float(centres.sel(roi=roi).mean()):.0f} mm)")
axes[0].set_ylabel("% signal change from rest")
axes[-1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The group node
#
# The second level: a one-sample t-test of the subjects' t maps, and how many subjects
# have an ROI at each voxel, on the same grid, in world mm.

# %%
group_maps = tree["group"].to_dataset()
print("group of:", group_maps.attrs["subjects"])
overlap = group_maps["roi_overlap"]
z = int(overlap.sum(("x", "y")).argmax("z"))
fig, ax = plt.subplots(figsize=(5, 4))
overlap.isel(z=z).plot(x="x_mm", y="y_mm", ax=ax, cmap="viridis")
ax.set_title(f"subjects with an ROI, z = {float(group_maps['z_mm'][z]):.1f} mm")
ax.set_aspect("equal")
plt.show()

# %% [markdown]
# ## Cleaning up
#
# The temporary folder (data and results) is removed.

# %%
tmp.cleanup()
print("removed:", not workdir.exists())
