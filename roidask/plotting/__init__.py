"""Figures of nilearn's ROI-extraction example, drawn with matplotlib alone.

Orthogonal cuts (sagittal, coronal, axial) of 3D maps, stat maps and ROI
overlays over a background, per-condition boxplots of ROI signals, and the
seed example's figure set.

* :mod:`roidask.plotting.geometry`: world <-> voxel coordinates (mm), cut
  coordinates, the views of a voxel grid (no matplotlib).
* :mod:`roidask.plotting.panels`: rendering (:func:`plot_ortho`,
  :func:`plot_stat_map`, :func:`plot_roi`, :func:`plot_condition_boxplots`).
* :mod:`roidask.plotting.seed_figures`: the example's figure set
  (:func:`seed_figures`, :func:`save_seed_figures`), and that of results in folds
  (:func:`save_fold_figures`).

matplotlib is imported only when a figure is drawn, so importing this package
(or running ``roidask run --no-plots``) does not import it.
"""

from roidask.plotting.geometry import (
    VIEW_NAMES,
    cut_voxel_indices,
    find_cut_coords,
    voxel_to_world,
    world_to_voxel,
)
from roidask.plotting.panels import (
    DPI,
    plot_condition_boxplots,
    plot_ortho,
    plot_roi,
    plot_stat_map,
)
from roidask.plotting.seed_figures import save_fold_figures, save_seed_figures, seed_figures

__all__ = [
    "DPI",
    "VIEW_NAMES",
    "cut_voxel_indices",
    "find_cut_coords",
    "plot_condition_boxplots",
    "plot_ortho",
    "plot_roi",
    "plot_stat_map",
    "save_fold_figures",
    "save_seed_figures",
    "seed_figures",
    "voxel_to_world",
    "world_to_voxel",
]
