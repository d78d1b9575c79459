"""The figure set of nilearn's ROI-extraction example (the seed analysis).

:func:`seed_figures` builds the figures one at a time (to inspect or show them),
:func:`save_seed_figures` writes them as PNGs (what ``roidask run`` writes in
``figures/``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np

from roidask.exceptions import InvalidParameterError
from roidask.io.conversions import as_image
from roidask.plotting.geometry import Grid, as_float, cut_ijk, default_ijk
from roidask.plotting.panels import (
    background_image,
    check_signals,
    check_threshold,
    label_volume,
    plot_condition_boxplots,
    plot_ortho,
    plot_roi,
    plot_stat_map,
    save_png,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["save_fold_figures", "save_seed_figures", "seed_figures"]


def seed_figures(
    *,
    mean_img,
    logp_img,
    threshold: float,
    roi_mask_img,
    dilated_img,
    atlas_img,
    signals,
    cut_coords=None,
) -> Iterator[tuple[str, Figure]]:
    """The figures of nilearn's ROI-extraction example, one at a time.

    All inputs are checked before this returns; the figures are then built as the
    iterator is consumed (one in memory at a time if the caller drops each).

    Figures (file name, in this order): ``mean_epi.png`` (smoothed mean EPI),
    ``logp.png`` (-log10 p over the mean EPI), ``logp_thresholded.png``,
    ``roi_mask.png`` (the thresholded map AND the analysis mask: a ventral
    temporal mask in nilearn's example, the brain mask of the bundled one-slice
    data), ``dilated_mask.png``, ``roi_<label>.png`` for each label of
    ``atlas_img`` (cut at its centre of mass; its legend names the ROI and its
    voxel count) and ``boxplots.png``. The two masks are drawn without a legend.

    Parameters
    ----------
    mean_img : image
        3D mean EPI, the background of every overlay.
    logp_img : image
        3D -log10 p-value map.
    threshold : float
        -log10 p threshold for ``logp_thresholded.png`` (values below are hidden).
    roi_mask_img, dilated_img : image
        3D masks: thresholded map AND the analysis mask, and its dilation.
    atlas_img : image or None
        3D integer label image of the connected components (one ROI per label).
    signals : xarray.DataArray or None
        ROI signals, dims ``("roi", "time")`` with ``condition`` along time; the
        boxplots' y axis says what they are from their attrs (``strategy``, ...).
    cut_coords : sequence of 3 floats, optional
        World coordinates ``(x, y, z)`` in mm for the first five figures (the
        example uses ``(-25, -37, -6)``). Default: the voxel of ``roi_mask_img``
        nearest its centre of mass (the peak of ``logp_img`` if the mask is empty),
        the same for all five.

    Returns
    -------
    iterator of (str, matplotlib.figure.Figure)
        File name and figure.

    Raises
    ------
    ImageDimensionError
        An image is not 3D.
    GridMismatchError
        An image is not on the grid of ``mean_img``.
    InvalidParameterError
        Bad ``threshold``, ``cut_coords`` outside the volume, non-integer atlas
        labels, or ``signals`` without ROIs or ``condition`` coordinate.
    """
    mean = as_image(mean_img, ndim=3, param="mean_img")
    logp = background_image(logp_img, mean, param="logp_img")
    roi_mask = background_image(roi_mask_img, mean, param="roi_mask_img")
    dilated = background_image(dilated_img, mean, param="dilated_img")
    atlas = None if atlas_img is None else background_image(atlas_img, mean, param="atlas_img")
    checked = check_threshold(threshold)
    if checked is None:
        raise InvalidParameterError(
            "threshold: expected a number >= 0, got None", param="threshold"
        )
    threshold = checked
    if signals is not None:
        check_signals(signals)
    grid = Grid.of(mean)
    if cut_coords is None:
        mask = np.asarray(roi_mask.data.compute()) != 0
        if mask.any():
            ijk = default_ijk(mask, grid, roi=True)
        else:
            ijk = default_ijk(np.asarray(as_float(logp.data).compute()), grid, roi=False)
        cut_coords = tuple(float(c) for c in grid.world(ijk))
    else:
        cut_ijk(grid, cut_coords)  # rejected now if outside the volume
    atlas_vol = None
    if atlas is not None:
        atlas_vol = label_volume(
            np.asarray(atlas.data.compute()), param="atlas_img", name=atlas.name
        )
    return _figures(
        mean, logp, threshold, roi_mask, dilated, atlas, atlas_vol, signals, cut_coords
    )


def _figures(mean, logp, threshold, roi_mask, dilated, atlas, atlas_vol, signals, cut_coords):
    common = {"cut_coords": cut_coords}
    yield (
        "mean_epi.png",
        plot_ortho(mean, title="Smoothed mean EPI", cmap="nipy_spectral", colorbar=True, **common),
    )
    yield "logp.png", plot_stat_map(logp, mean, title="p-values (-log10 p)", **common)
    yield (
        "logp_thresholded.png",
        plot_stat_map(
            logp,
            mean,
            threshold=threshold,
            title=f"Thresholded p-values (-log10 p >= {threshold:g})",
            **common,
        ),
    )
    yield (
        "roi_mask.png",
        plot_roi(
            roi_mask,
            mean,
            title=f"ROI mask: -log10 p >= {threshold:g} within the analysis mask",
            **common,
        ),
    )
    yield "dilated_mask.png", plot_roi(dilated, mean, title="Dilated ROI mask", **common)
    if atlas_vol is not None:
        for label in np.unique(atlas_vol[atlas_vol != 0]):
            inside = atlas_vol == label
            single = atlas.copy(data=da.from_array(np.where(inside, atlas_vol, 0), chunks=-1))
            name = f"ROI {label}"
            yield (
                f"roi_{label}.png",
                plot_roi(
                    single,
                    mean,
                    title=f"Connected components: {name}",
                    label_names={int(label): f"{name} ({int(inside.sum())} voxels)"},
                ),
            )
    if signals is not None:
        yield "boxplots.png", plot_condition_boxplots(signals, title="ROI signals per condition")


def save_seed_figures(
    out_dir,
    *,
    mean_img,
    logp_img,
    threshold: float,
    roi_mask_img,
    dilated_img,
    atlas_img,
    signals,
    cut_coords=None,
) -> list[Path]:
    """Write the figures of nilearn's ROI-extraction example as PNGs (100 dpi).

    The figures of :func:`seed_figures` (same parameters, same order), each
    written atomically to ``out_dir / <name>``; the inputs are all checked before
    the folder is created or any file written.

    Parameters
    ----------
    out_dir : path
        Output folder (created if missing).
    mean_img, logp_img, threshold, roi_mask_img, dilated_img, atlas_img, signals, cut_coords
        As in :func:`seed_figures`.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    figures = seed_figures(
        mean_img=mean_img,
        logp_img=logp_img,
        threshold=threshold,
        roi_mask_img=roi_mask_img,
        dilated_img=dilated_img,
        atlas_img=atlas_img,
        signals=signals,
        cut_coords=cut_coords,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [save_png(fig, out_dir / name) for name, fig in figures]


def save_fold_figures(
    out_dir,
    *,
    mean_img,
    logp_img,
    atlases: Sequence,
    signals: Sequence,
    titles: Sequence[str],
) -> list[Path]:
    """Write the figures of results in folds (ROIs defined on other runs) as PNGs.

    ``mean_epi.png`` and ``logp.png`` (every volume), then per fold ``k``:
    ``atlas_fold-<k>.png`` (its ROIs, one colour per label) and
    ``boxplots_fold-<k>.png`` (its signals per condition, on its signal volumes),
    for the folds that have ROIs. Everything is checked before anything is written.

    Parameters
    ----------
    out_dir : path
        Output folder (created if missing).
    mean_img, logp_img : image
        3D mean EPI (the background) and -log10 p of every volume.
    atlases : sequence of image or None
        Per fold, its 3D label image (None: no ROI, no figure).
    signals : sequence of xarray.DataArray or None
        Per fold, ``(roi, time)`` signals of its ROIs on its signal volumes.
    titles : sequence of str
        Per fold, what it is (e.g. "fold 0: ROIs from runs 0 2 4, signals of runs 1 3 5").
    """
    mean = as_image(mean_img, ndim=3, param="mean_img")
    logp = background_image(logp_img, mean, param="logp_img")
    if not len(atlases) == len(signals) == len(titles):
        raise InvalidParameterError(
            f"atlases, signals, titles: expected one per fold, got {len(atlases)}, "
            f"{len(signals)} and {len(titles)}",
            param="atlases",
        )
    checked = []
    for k, (atlas, sig) in enumerate(zip(atlases, signals, strict=True)):
        if atlas is None:
            continue
        atlas = background_image(atlas, mean, param=f"atlases[{k}]")
        label_volume(np.asarray(atlas.data.compute()), param=f"atlases[{k}]", name=atlas.name)
        check_signals(sig)
        checked.append((k, atlas, sig))

    def figures():
        yield (
            "mean_epi.png",
            plot_ortho(mean, title="Smoothed mean EPI", cmap="nipy_spectral", colorbar=True),
        )
        yield "logp.png", plot_stat_map(logp, mean, title="p-values (-log10 p), every volume")
        for k, atlas, sig in checked:
            yield f"atlas_fold-{k}.png", plot_roi(atlas, mean, title=titles[k])
            yield (
                f"boxplots_fold-{k}.png",
                plot_condition_boxplots(sig, title=f"ROI signals per condition, {titles[k]}"),
            )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [save_png(fig, out_dir / name) for name, fig in figures()]
