"""Rendering: orthogonal cuts of 3D maps, stat maps, ROI overlays, condition boxplots.

Drawn with matplotlib alone (imported inside the functions: ``import
roidask.plotting`` does not import it).

Conventions
-----------
* Views are drawn in the **neurological convention**: the subject's left is on
  the left of coronal and axial views (world x increases to the right), anterior
  is on the right of sagittal views and up in axial views, superior is up. Cut
  coordinates and views are described in :mod:`roidask.plotting.geometry`.
* Axes are in mm, so anisotropic voxels keep their true proportions; all three
  views share one mm scale.
* Only the three 2D cuts drawn are computed from lazy (dask) images, plus
  whole-map reductions where a figure needs a global value (default cut
  position, colour range of a stat map, the labels of an ROI image).

Every ``plot_*`` function uses the object-oriented matplotlib API (no pyplot
state, thread-safe, no GUI backend needed), returns the
:class:`matplotlib.figure.Figure` and, when ``out`` is given, also writes it as
a PNG (100 dpi) atomically (temporary name in the same folder, then renamed).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr

from roidask._validate import check_bool
from roidask.exceptions import (
    ConditionError,
    EmptyMaskWarning,
    InvalidParameterError,
    RoidaskTypeError,
)
from roidask.io.conversions import as_image
from roidask.io.grid import check_same_grid
from roidask.plotting.geometry import (
    AXIS_NAMES,
    VIEWS,
    Grid,
    as_float,
    cut_ijk,
    default_ijk,
    is_mask,
    view_cuts,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "plot_condition_boxplots",
    "plot_ortho",
    "plot_roi",
    "plot_stat_map",
]

#: Resolution of the PNG files written (dots per inch).
DPI = 100

# (text at the low end, text at the high end) of the horizontal world axis
_SIDE_TEXT = {0: ("L", "R"), 1: ("P", "A")}
_CONVENTION = "neurological convention: left hemisphere (L) on the left"
_MIN_WIDTH_FRACTION = 0.2
#: Past this many labels, an ROI figure shows a colorbar of labels instead of a legend.
_MAX_LEGEND_LABELS = 12


# -- figure scaffolding --------------------------------------------------------------------
@dataclass
class _Panel:
    ax: Axes
    view: tuple
    extent: tuple[float, float, float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]


def _ortho_axes(grid: Grid, ijk: np.ndarray, *, side: bool) -> tuple[Figure, list[_Panel]]:
    from matplotlib.figure import Figure

    geo = []
    for view in VIEWS:
        _, _, h, v = view
        geo.append((view, grid.extent(h, ijk), grid.extent(v, ijk)))
    height = max(vy[1] - vy[0] for _, _, vy in geo)
    widths = [hx[1] - hx[0] for _, hx, _ in geo]
    ratios = [max(wd, _MIN_WIDTH_FRACTION * max(widths)) for wd in widths]
    fig_w = 12.0 if side else 11.0
    fig_h = min(6.0, max(2.8, 0.85 * fig_w * height / sum(ratios) + 1.3))
    fig_h = round(fig_h * DPI) / DPI  # a whole number of pixels
    fig = Figure(figsize=(fig_w, fig_h), layout="constrained")
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": ratios})
    panels = []
    for ax, (view, hx, vy), span in zip(axes, geo, ratios, strict=True):
        # one mm scale for all views: pad each view to its panel's width and the
        # common height (thin volumes, e.g. one slice, show as a strip in context)
        xmid, ymid = (hx[0] + hx[1]) / 2, (vy[0] + vy[1]) / 2
        ax.set_label(view[0])
        ax.set_facecolor("black")
        panels.append(
            _Panel(
                ax,
                view,
                (*hx, *vy),
                (xmid - span / 2, xmid + span / 2),
                (ymid - height / 2, ymid + height / 2),
            )
        )
    return fig, panels


def _imshow(panel: _Panel, data: np.ndarray, **kwargs):
    return panel.ax.imshow(
        data, origin="lower", extent=panel.extent, interpolation="nearest", **kwargs
    )


def _finish(fig: Figure, panels: list[_Panel], grid: Grid, ijk: np.ndarray, title) -> None:
    point = grid.world(ijk)
    text_style: dict[str, Any] = {"color": "white", "fontsize": 11, "fontweight": "bold"}
    for p in panels:
        name, w, h, v = p.view
        ax = p.ax
        ax.set_xlim(*p.xlim)
        ax.set_ylim(*p.ylim)
        ax.set_aspect("equal", adjustable="box")
        ax.axvline(point[h], color="#66ccff", lw=0.6, alpha=0.8)
        ax.axhline(point[v], color="#66ccff", lw=0.6, alpha=0.8)
        ax.set_xlabel(f"{AXIS_NAMES[h]} (mm)")
        ax.set_ylabel(f"{AXIS_NAMES[v]} (mm)")
        ax.set_title(f"{name}: {AXIS_NAMES[w]} = {point[w]:.1f} mm", fontsize=10)
        low, high = _SIDE_TEXT[h]
        ax.text(0.02, 0.97, low, transform=ax.transAxes, ha="left", va="top", **text_style)
        ax.text(0.98, 0.97, high, transform=ax.transAxes, ha="right", va="top", **text_style)
        ax.tick_params(labelsize=8)
    fig.supxlabel(_CONVENTION, fontsize=8)
    if title:
        fig.suptitle(title)


def _background(panels: list[_Panel], cuts: list[np.ndarray]) -> None:
    lo, hi = _finite_range(cuts)
    for p, cut in zip(panels, cuts, strict=True):
        _imshow(p, cut, cmap="gray", vmin=lo, vmax=hi, label="background")


def save_png(fig: Figure, out) -> Path:
    """Write ``fig`` as a PNG at ``out`` atomically (package-internal).

    Written under a temporary name in the same folder, then renamed; ``out`` must
    end in ``.png``.
    """
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise InvalidParameterError(f"out: {str(path)!r} must be a .png file name", param="out")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _finite_range(slices: Sequence[np.ndarray]) -> tuple[float, float]:
    parts = [s[np.isfinite(s)] for s in slices if s.size]
    vals = np.concatenate(parts) if parts else np.empty(0)
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def background_image(bg_img, ref: xr.DataArray | None, *, param: str) -> xr.DataArray:
    """``bg_img`` as a 3D roidask image on the grid of ``ref`` (package-internal)."""
    bg = as_image(bg_img, ndim=3, param=param)
    if ref is not None:
        check_same_grid(ref, bg, names=(str(ref.name or "image"), param))
    return bg


# -- ortho cuts ----------------------------------------------------------------------------
def plot_ortho(
    img,
    *,
    cut_coords=None,
    title: str | None = None,
    cmap="gray",
    colorbar: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    out=None,
) -> Figure:
    """Three orthogonal cuts (sagittal, coronal, axial) of a 3D image.

    Parameters
    ----------
    img : path, nibabel image or roidask image
        A 3D image, e.g. a mean EPI (lazy images: only the three cuts are computed
        when ``cut_coords`` is given).
    cut_coords : sequence of 3 floats, optional
        World coordinates ``(x, y, z)`` in mm of the cuts (nearest voxel). Default:
        the centre of mass of a mask/ROI (0/1 or boolean image), else the peak
        (largest absolute value); this computes the whole image.
    title : str, optional
        Figure title.
    cmap : str or Colormap
        Colour map (``"gray"``; nilearn's ``plot_epi`` uses ``"nipy_spectral"``).
    colorbar : bool
        Add a colorbar.
    vmin, vmax : float, optional
        Colour range (default: finite min and max of the three cuts).
    out : path, optional
        Also write the figure to this ``.png`` file (100 dpi), atomically.

    Returns
    -------
    matplotlib.figure.Figure
        Three view axes labelled ``"sagittal"``, ``"coronal"``, ``"axial"``
        (plus a colorbar axes if requested), axes in mm, neurological convention.

    Raises
    ------
    ImageDimensionError
        ``img`` is not 3D.
    InvalidParameterError
        ``cut_coords`` outside the volume (the message gives the valid range in mm).
    """
    colorbar = check_bool(colorbar, "colorbar")
    img = as_image(img, ndim=3, param="img")
    grid = Grid.of(img)
    if cut_coords is None:
        vol = np.asarray(img.data.compute())
        ijk = default_ijk(vol, grid, roi=is_mask(vol))
        (cuts,), _ = view_cuts([as_float(vol)], grid, ijk)
    else:
        ijk = cut_ijk(grid, cut_coords)
        (cuts,), _ = view_cuts([as_float(img.data)], grid, ijk)
    lo, hi = _finite_range(cuts)
    vmin = lo if vmin is None else float(vmin)
    vmax = hi if vmax is None else float(vmax)
    fig, panels = _ortho_axes(grid, ijk, side=colorbar)
    images = []
    for p, cut in zip(panels, cuts, strict=True):
        images.append(_imshow(p, cut, cmap=cmap, vmin=vmin, vmax=vmax, label="image"))
    _finish(fig, panels, grid, ijk, title)
    if colorbar:
        fig.colorbar(images[-1], ax=[p.ax for p in panels], shrink=0.8, pad=0.02)
    if out is not None:
        save_png(fig, out)
    return fig


# -- stat maps -----------------------------------------------------------------------------
def check_threshold(threshold) -> float | None:
    """``threshold`` as a finite float >= 0, or None (package-internal)."""
    if threshold is None:
        return None
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"threshold: expected a number >= 0, got {threshold!r}", param="threshold"
        ) from None
    if not (math.isfinite(t) and t >= 0):
        raise InvalidParameterError(
            f"threshold: expected a finite number >= 0, got {threshold!r}", param="threshold"
        )
    return t


def _hide(cut: np.ndarray, threshold: float | None) -> np.ma.MaskedArray:
    bad = ~np.isfinite(cut)
    mag = np.abs(np.where(bad, 0.0, cut))
    hidden = bad | (mag == 0 if threshold is None else mag < threshold)
    return np.ma.masked_array(cut, mask=hidden)


def plot_stat_map(
    stat_img,
    bg_img,
    *,
    threshold: float | None = None,
    cut_coords=None,
    title: str | None = None,
    cmap="inferno",
    vmax: float | None = None,
    colorbar: bool = True,
    out=None,
) -> Figure:
    """A statistical map over a background image, in three orthogonal cuts.

    Parameters
    ----------
    stat_img : path, nibabel image or roidask image
        3D statistical map (e.g. -log10 p-values).
    bg_img : path, nibabel image, roidask image or None
        3D background (e.g. the mean EPI) on the same grid; drawn in gray.
    threshold : float, optional
        Voxels with ``|value| < threshold`` are transparent. Default: only exact
        zeros are transparent. NaN/inf voxels are always transparent.
    cut_coords : sequence of 3 floats, optional
        World coordinates ``(x, y, z)`` in mm (nearest voxel). Default: the peak of
        ``|stat|`` (computes the whole stat map).
    title : str, optional
        Figure title.
    cmap : str or Colormap
        Colour map of the stat values.
    vmax : float, optional
        Top of the colour range (default: the largest finite ``|value|`` of the map).
        The range is ``[-vmax, vmax]`` if the map has negative values, else ``[0, vmax]``.
    colorbar : bool
        Add a colorbar of the stat values.
    out : path, optional
        Also write the figure to this ``.png`` file (100 dpi), atomically.

    Returns
    -------
    matplotlib.figure.Figure
        The stat layer of each view is the image labelled ``"stat"``; its data is a
        masked array whose mask marks the transparent voxels.

    Raises
    ------
    ImageDimensionError
        An image is not 3D.
    GridMismatchError
        ``stat_img`` and ``bg_img`` are on different grids.
    InvalidParameterError
        Bad ``threshold``/``vmax`` or ``cut_coords`` outside the volume.
    """
    colorbar = check_bool(colorbar, "colorbar")
    stat = as_image(stat_img, ndim=3, param="stat_img")
    bg = None if bg_img is None else background_image(bg_img, stat, param="bg_img")
    threshold = check_threshold(threshold)
    if vmax is not None and not (isinstance(vmax, int | float) and vmax > 0):
        raise InvalidParameterError(f"vmax: expected a number > 0, got {vmax!r}", param="vmax")
    grid = Grid.of(stat)
    stat_data = as_float(stat.data)
    if cut_coords is None:
        vol = np.asarray(stat_data.compute())
        shown = np.where(np.abs(vol) >= threshold, vol, 0) if threshold else vol
        ijk = default_ijk(shown, grid, roi=False)
        stat_data = vol
    else:
        ijk = cut_ijk(grid, cut_coords)
    finite = da.where(da.isfinite(stat_data), stat_data, np.nan)
    arrays = [stat_data] + ([] if bg is None else [as_float(bg.data)])
    cuts, (smin, smax) = view_cuts(arrays, grid, ijk, da.nanmin(finite), da.nanmax(finite))
    smin = 0.0 if not np.isfinite(smin) else float(smin)
    smax = 0.0 if not np.isfinite(smax) else float(smax)
    top = float(vmax) if vmax is not None else max(abs(smin), abs(smax)) or 1.0
    bottom = -top if smin < 0 else 0.0
    fig, panels = _ortho_axes(grid, ijk, side=colorbar)
    if bg is not None:
        _background(panels, cuts[1])
    images = []
    for p, cut in zip(panels, cuts[0], strict=True):
        images.append(
            _imshow(p, _hide(cut, threshold), cmap=cmap, vmin=bottom, vmax=top, label="stat")
        )
    _finish(fig, panels, grid, ijk, title)
    if colorbar:
        cb = fig.colorbar(images[-1], ax=[p.ax for p in panels], shrink=0.8, pad=0.02)
        if threshold:
            cb.ax.axhline(threshold, color="white", lw=1)
            if bottom < 0:
                cb.ax.axhline(-threshold, color="white", lw=1)
    if out is not None:
        save_png(fig, out)
    return fig


# -- ROI overlays --------------------------------------------------------------------------
def _label_colors(n: int) -> list:
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        order = [3, 0, 2, 1, 4, 5, 6, 7, 8, 9]  # red first, like nilearn's single ROI
        return [cmap(order[i]) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["gist_rainbow"]
    return [cmap(i / (n - 1)) for i in range(n)]


def _check_label_names(label_names) -> Mapping | None:
    if label_names is None:
        return None
    if not isinstance(label_names, Mapping):
        raise InvalidParameterError(
            "label_names: expected a mapping of label value -> legend text, got "
            f"{type(label_names).__name__}",
            param="label_names",
        )
    return label_names


def label_volume(vol: np.ndarray, *, param: str, name) -> np.ndarray:
    """A computed mask or label volume as int64 labels, NaN/inf as 0 (package-internal).

    Raises :class:`InvalidParameterError` on non-integer values.
    """
    if vol.dtype.kind == "f":
        vol = np.where(np.isfinite(vol), vol, 0)
        if np.any(vol != np.rint(vol)):
            raise InvalidParameterError(
                f"{param}: {name!r} has non-integer values; expected a mask or integer "
                "labels (threshold or round it first)",
                param=param,
            )
    return vol.astype(np.int64)


def plot_roi(
    roi_img,
    bg_img,
    *,
    cut_coords=None,
    title: str | None = None,
    alpha: float = 0.8,
    label_names: Mapping[int, str] | None = None,
    out=None,
) -> Figure:
    """A mask or label image (one colour per label) over a background, in three cuts.

    Parameters
    ----------
    roi_img : path, nibabel image or roidask image
        3D mask (boolean / 0-1) or integer label image; 0 is background. The whole
        image is computed (to know its labels).
    bg_img : path, nibabel image, roidask image or None
        3D background on the same grid, drawn in gray.
    cut_coords : sequence of 3 floats, optional
        World coordinates ``(x, y, z)`` in mm (nearest voxel). Default: the voxel of
        the ROI nearest to its centre of mass.
    title : str, optional
        Figure title.
    alpha : float
        Opacity of the ROI colours.
    label_names : mapping of int to str, optional
        Legend text of labels (e.g. ``{3: "ROI 3 (12 voxels)"}``); labels not in it
        are shown as their value. Giving it always draws a legend, for masks too.
    out : path, optional
        Also write the figure to this ``.png`` file (100 dpi), atomically.

    Returns
    -------
    matplotlib.figure.Figure
        The ROI layer of each view is the image labelled ``"roi"``. A label image
        gets a legend of its labels (title ``"ROI label"``; a colorbar of labels
        past 12 labels); a mask (boolean, or only 0 and 1 values) gets no legend
        unless ``label_names`` is given.

    Raises
    ------
    ImageDimensionError
        An image is not 3D.
    GridMismatchError
        ``roi_img`` and ``bg_img`` are on different grids.
    InvalidParameterError
        Non-integer label values, ``label_names`` not a mapping, or ``cut_coords``
        outside the volume.

    Warns
    -----
    EmptyMaskWarning
        The ROI image has no non-zero voxel (cut through the centre of the volume).
    """
    roi = as_image(roi_img, ndim=3, param="roi_img")
    bg = None if bg_img is None else background_image(bg_img, roi, param="bg_img")
    label_names = _check_label_names(label_names)
    grid = Grid.of(roi)
    if cut_coords is not None:
        ijk = cut_ijk(grid, cut_coords)
    vol = np.asarray(roi.data.compute())
    binary = is_mask(vol)
    vol = label_volume(vol, param="roi_img", name=roi.name)
    labels = np.unique(vol[vol != 0])
    if labels.size == 0:
        warnings.warn(
            f"roi_img: {roi.name!r} has no non-zero voxel; nothing to overlay",
            EmptyMaskWarning,
            stacklevel=2,
        )
    if cut_coords is None:
        ijk = default_ijk(vol, grid, roi=True)
    arrays = [vol] + ([] if bg is None else [as_float(bg.data)])
    cuts, _ = view_cuts(arrays, grid, ijk)
    colors = _label_colors(max(labels.size, 1))
    # a mask has one value: its colour needs no key, unless named
    keyed = labels.size > 0 and (label_names is not None or not binary)
    fig, panels = _ortho_axes(grid, ijk, side=keyed)
    if bg is not None:
        _background(panels, cuts[1])
    images = _roi_layers(panels, cuts[0], labels, colors, alpha)
    _finish(fig, panels, grid, ijk, title)
    if keyed:
        _label_key(fig, images[-1], panels, labels, colors, label_names)
    if out is not None:
        save_png(fig, out)
    return fig


def _roi_layers(panels, cuts, labels: np.ndarray, colors: list, alpha: float) -> list:
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(colors)
    images = []
    for p, cut in zip(panels, cuts, strict=True):
        index = np.ma.masked_array(np.searchsorted(labels, cut), mask=cut == 0)
        images.append(
            _imshow(
                p, index, cmap=cmap, vmin=-0.5, vmax=len(colors) - 0.5, alpha=alpha, label="roi"
            )
        )
    return images


def _label_key(fig, image, panels, labels: np.ndarray, colors: list, label_names) -> None:
    """A legend of the labels (a colorbar of labels past ``_MAX_LEGEND_LABELS``)."""
    from matplotlib.patches import Patch

    names = label_names or {}
    texts = [str(names.get(int(lab), lab)) for lab in labels]
    key_title = None if label_names is not None else "ROI label"
    if labels.size <= _MAX_LEGEND_LABELS:
        handles = [
            Patch(facecolor=c, edgecolor="none", label=t)
            for c, t in zip(colors, texts, strict=True)
        ]
        fig.legend(handles=handles, loc="outside right upper", title=key_title, fontsize=9)
    else:
        cb = fig.colorbar(image, ax=[p.ax for p in panels], shrink=0.8, pad=0.02)
        ticks = np.linspace(0, labels.size - 1, min(labels.size, 10)).round().astype(int)
        cb.set_ticks(ticks, labels=[texts[t] for t in ticks])
        cb.set_label(key_title or "ROI")


# -- boxplots ------------------------------------------------------------------------------
def check_signals(signals, conditions: Sequence[str] | None = None):
    """Validated ``(signals as (roi, time), condition per volume, conditions shown)``.

    Package-internal: the checks of :func:`plot_condition_boxplots`, run before
    anything is drawn or written.
    """
    if not isinstance(signals, xr.DataArray):
        raise RoidaskTypeError(
            f"signals: expected an xarray.DataArray with dims ('roi', 'time'), got "
            f"{type(signals).__name__}",
            param="signals",
        )
    if set(signals.dims) != {"roi", "time"}:
        raise InvalidParameterError(
            f"signals: dims are {tuple(signals.dims)}; expected ('roi', 'time')", param="signals"
        )
    if "condition" not in signals.coords or signals.coords["condition"].dims != ("time",):
        raise InvalidParameterError(
            "signals: needs a 'condition' coordinate along 'time' (one label per volume)",
            param="signals",
        )
    if signals.sizes["roi"] == 0:
        raise InvalidParameterError(
            "signals: has no ROI (the 'roi' dimension is empty)", param="signals"
        )
    signals = signals.transpose("roi", "time")
    cond = np.asarray(signals.coords["condition"].values).astype(str)
    present = list(dict.fromkeys(cond.tolist()))
    if conditions is None:
        conditions = present
    else:
        conditions = [str(c) for c in conditions]
        missing = [c for c in conditions if c not in present]
        if missing or not conditions:
            raise ConditionError(
                f"conditions: {missing or conditions!r} not in signals; available: {present}",
                param="conditions",
            )
    return signals, cond, conditions


def signal_label(attrs: Mapping) -> str:
    """Axis label saying what ROI signals are, from their attrs (package-internal).

    ``strategy`` (set by :func:`roidask.ops.extract.extract_signals`) names the
    reduction over the ROI's voxels, ``cleaning`` the temporal cleaning applied and
    ``units`` the units; without ``units``, z-scored signals are in z-scores and
    reductions of BOLD intensities in (arbitrary) scanner units.
    """
    strategy = attrs.get("strategy")
    cleaning = attrs.get("cleaning")
    cleaning = None if cleaning in (None, "", "none") else str(cleaning)
    units = attrs.get("units")
    if units is None and cleaning is not None and "zscore" in cleaning:
        units = "z-score"
    elif units is None and strategy is not None:
        units = "scanner units²" if strategy == "variance" else "scanner units"
    text = (
        f"{str(strategy).replace('_', ' ')} BOLD signal in ROI"
        if strategy is not None
        else "ROI signal"
    )
    detail = "; ".join(d for d in (units, cleaning and f"cleaned: {cleaning}") if d)
    if not detail:
        return text
    sep = "\n" if cleaning else " "  # a long cleaning description goes on its own line
    return f"{text}{sep}({detail})"


def plot_condition_boxplots(
    signals,
    *,
    conditions: Sequence[str] | None = None,
    out=None,
    title: str | None = None,
) -> Figure:
    """Boxplots of each ROI's signal per condition, one subplot per ROI.

    Parameters
    ----------
    signals : xarray.DataArray
        Dims ``("roi", "time")`` (either order), coordinate ``roi`` (labels) and a
        ``condition`` coordinate along ``time``, as produced by roidask extraction.
        Lazy values are computed. NaNs are left out of the boxes. The y axis says
        what the signal is from its attrs: ``strategy`` (e.g. ``"mean"``),
        ``cleaning`` and ``units`` (default: scanner units, z-score once
        z-scored), e.g. "mean BOLD signal in ROI (scanner units)".
    conditions : sequence of str, optional
        Conditions to show, in this order (default: all, in order of first appearance).
    out : path, optional
        Also write the figure to this ``.png`` file (100 dpi), atomically.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per ROI (labelled ``"roi <label>"``), one box per condition.

    Raises
    ------
    RoidaskTypeError
        ``signals`` is not a DataArray.
    InvalidParameterError
        Missing ``roi``/``time`` dims or the ``condition`` coordinate, or no ROI.
    ConditionError
        A requested condition does not occur in ``signals``.
    """
    from matplotlib.figure import Figure

    signals, cond, conditions = check_signals(signals, conditions)
    values = np.asarray(signals.values, dtype=np.float64)
    rois = signals.coords["roi"].values if "roi" in signals.coords else np.arange(values.shape[0])
    n = values.shape[0]
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    width = max(5.0, 0.6 * len(conditions) + 1.5)
    fig = Figure(figsize=(width * ncols, 4.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    ylabel = signal_label(signals.attrs)
    for ax, label, row in zip(axes, rois, values, strict=False):
        groups = [row[cond == c] for c in conditions]
        groups = [g[np.isfinite(g)] for g in groups]
        ax.boxplot(groups, tick_labels=conditions)
        ax.tick_params(axis="x", labelrotation=25)
        ax.set_title(f"ROI {label} per condition")
        ax.set_label(f"roi {label}")
        ax.set_ylabel(ylabel)
    for ax in axes[n:]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    if out is not None:
        save_png(fig, out)
    return fig
