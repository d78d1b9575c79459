"""Figures of nilearn's ROI-extraction example, drawn with matplotlib alone.

Orthogonal cuts (sagittal, coronal, axial) of 3D maps, stat maps and ROI
overlays over a background, and per-condition boxplots of ROI signals.

Conventions
-----------
* Cut coordinates are world coordinates ``(x, y, z)`` in **mm** (RAS+, as the
  NIfTI affine defines them); a cut goes through the **nearest voxel**.
* Views are drawn in the **neurological convention**: the subject's left is on
  the left of coronal and axial views (world x increases to the right), anterior
  is on the right of sagittal views and up in axial views, superior is up.
* Axes are in mm, so anisotropic voxels keep their true proportions; all three
  views share one mm scale. Affines are mapped onto the nearest axis-aligned
  orientation (axis permutations and flips are exact; oblique affines are shown
  without resampling, so their mm axes are approximate).
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import matplotlib
import nibabel as nib
import numpy as np
import xarray as xr
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from roidask.exceptions import (
    ConditionError,
    EmptyMaskWarning,
    InvalidParameterError,
    RoidaskTypeError,
)
from roidask.io.conversions import as_image
from roidask.io.grid import affine_of, check_same_grid

__all__ = [
    "DPI",
    "VIEW_NAMES",
    "cut_voxel_indices",
    "find_cut_coords",
    "plot_condition_boxplots",
    "plot_ortho",
    "plot_roi",
    "plot_stat_map",
    "save_seed_figures",
    "voxel_to_world",
    "world_to_voxel",
]

#: Resolution of the PNG files written (dots per inch).
DPI = 100
#: Labels of the three view axes of an ortho figure (``Axes.get_label()``).
VIEW_NAMES = ("sagittal", "coronal", "axial")

_AXIS_NAMES = "xyz"
# (name, world axis cut, world axis shown horizontally, world axis shown vertically)
_VIEWS = (("sagittal", 0, 1, 2), ("coronal", 1, 0, 2), ("axial", 2, 0, 1))
# (text at the low end, text at the high end) of the horizontal world axis
_SIDE_TEXT = {0: ("L", "R"), 1: ("P", "A")}
_CONVENTION = "neurological convention: left hemisphere (L) on the left"
_MIN_WIDTH_FRACTION = 0.2


# -- world <-> voxel -----------------------------------------------------------------------
def _affine_array(affine) -> np.ndarray:
    if isinstance(affine, xr.DataArray):
        return affine_of(affine)
    try:
        a = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"affine: expected a 4x4 voxel-to-mm matrix or a roidask image, got {affine!r}"
        ) from None
    if a.shape != (4, 4):
        raise InvalidParameterError(f"affine: expected shape (4, 4), got {a.shape}")
    return a


def _coords_array(coords, *, param: str) -> np.ndarray:
    try:
        c = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"{param}: expected 3 numbers or an (n, 3) array, got {coords!r}"
        ) from None
    if c.ndim == 0 or c.shape[-1] != 3:
        raise InvalidParameterError(
            f"{param}: expected 3 numbers or an (n, 3) array, got shape {c.shape}"
        )
    return c


def world_to_voxel(affine, coords_mm) -> np.ndarray:
    """World coordinates (mm) to continuous voxel coordinates, via the inverse affine.

    Parameters
    ----------
    affine : array-like, shape (4, 4), or roidask image
        Voxel-to-mm transform (or an image carrying it in ``attrs["affine"]``).
    coords_mm : array-like, shape (3,) or (n, 3)
        World coordinates ``(x, y, z)`` in mm.

    Returns
    -------
    ndarray, shape (3,) or (n, 3)
        Voxel coordinates ``(i, j, k)`` (floats; round to get the nearest voxel).
    """
    a = _affine_array(affine)
    c = _coords_array(coords_mm, param="coords_mm")
    inv = np.linalg.inv(a)
    return c @ inv[:3, :3].T + inv[:3, 3]


def voxel_to_world(affine, ijk) -> np.ndarray:
    """Voxel coordinates ``(i, j, k)`` to world coordinates ``(x, y, z)`` in mm.

    Parameters
    ----------
    affine : array-like, shape (4, 4), or roidask image
        Voxel-to-mm transform.
    ijk : array-like, shape (3,) or (n, 3)
        Voxel coordinates (integers are voxel centres).

    Returns
    -------
    ndarray, shape (3,) or (n, 3)
        World coordinates in mm.
    """
    a = _affine_array(affine)
    v = _coords_array(ijk, param="ijk")
    return v @ a[:3, :3].T + a[:3, 3]


# -- grid geometry -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    """Voxel grid of a 3D image and its mapping onto the world axes."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    vox: tuple[int, int, int]  # voxel axis shown along world axis w
    flip: tuple[bool, bool, bool]  # voxel index up -> world coordinate down, per world axis

    @classmethod
    def of(cls, img: xr.DataArray) -> _Grid:
        a = affine_of(img)
        ornt = nib.orientations.io_orientation(a)
        if not np.all(np.isfinite(ornt)):
            raise InvalidParameterError(
                f"image {img.name!r}: affine {np.round(a, 4).tolist()} is degenerate; "
                "cannot orient the views"
            )
        vox, flip = [0, 0, 0], [False, False, False]
        for k, (w, sign) in enumerate(ornt):
            vox[int(w)] = k
            flip[int(w)] = bool(sign < 0)
        return cls(a, tuple(int(n) for n in img.shape[:3]), tuple(vox), tuple(flip))

    def step(self, w: int) -> float:
        """Voxel size (mm) along world axis ``w``."""
        return abs(float(self.affine[w, self.vox[w]]))

    def bounds(self) -> np.ndarray:
        """Bounding box of the volume (voxel edges), shape (3, 2): [min, max] mm per axis."""
        edges = [(-0.5, n - 0.5) for n in self.shape]
        corners = np.array(np.meshgrid(*edges, indexing="ij")).reshape(3, -1).T
        world = voxel_to_world(self.affine, corners)
        return np.stack([world.min(axis=0), world.max(axis=0)], axis=1)

    def extent(self, w: int, ijk: np.ndarray) -> tuple[float, float]:
        """[low, high] mm covered by the voxels along world axis ``w`` through ``ijk``."""
        k = self.vox[w]
        base = np.asarray(ijk, dtype=np.float64).copy()
        base[k] = 0
        centres = self.affine[w, k] * np.array([0, self.shape[k] - 1]) + (
            self.affine[w, :3] @ base + self.affine[w, 3]
        )
        half = self.step(w) / 2
        return float(centres.min() - half), float(centres.max() + half)


def _cut_ijk(grid: _Grid, cut_coords, *, param: str = "cut_coords") -> np.ndarray:
    """Validated nearest voxel (i, j, k) of cut coordinates in mm."""
    c = _coords_array(cut_coords, param=param)
    if c.shape != (3,):
        raise InvalidParameterError(
            f"{param}: expected 3 world coordinates (x, y, z) in mm, got shape {c.shape}"
        )
    bounds = grid.bounds()
    for w in range(3):
        lo, hi = bounds[w]
        tol = 1e-6 * max(1.0, abs(lo), abs(hi))
        if not (np.isfinite(c[w]) and lo - tol <= c[w] <= hi + tol):
            raise InvalidParameterError(
                f"{param}: {_AXIS_NAMES[w]} = {c[w]:g} mm is outside the volume; the valid "
                f"range along {_AXIS_NAMES[w]} is [{lo:g}, {hi:g}] mm (cut_coords are world "
                "coordinates (x, y, z) in mm; all valid ranges: "
                + ", ".join(
                    f"{_AXIS_NAMES[i]} [{bounds[i, 0]:g}, {bounds[i, 1]:g}]" for i in range(3)
                )
                + ")"
            )
    ijk = np.rint(world_to_voxel(grid.affine, c)).astype(np.int64)
    return np.clip(ijk, 0, np.asarray(grid.shape) - 1)


def cut_voxel_indices(img, cut_coords) -> tuple[int, int, int]:
    """The voxel ``(i, j, k)`` that cuts at ``cut_coords`` (mm) go through.

    Parameters
    ----------
    img : path, nibabel image or roidask image
        A 3D image (only its grid is used).
    cut_coords : sequence of 3 floats
        World coordinates ``(x, y, z)`` in mm.

    Returns
    -------
    tuple of 3 int
        Nearest voxel indices.

    Raises
    ------
    InvalidParameterError
        A coordinate lies outside the volume (the message gives the valid range in mm).
    ImageDimensionError
        ``img`` is not 3D.
    """
    img = as_image(img, ndim=3, param="img")
    return tuple(int(i) for i in _cut_ijk(_Grid.of(img), cut_coords))


def _is_mask(vol: np.ndarray) -> bool:
    if vol.dtype == np.bool_:
        return True
    finite = vol[np.isfinite(vol)] if vol.dtype.kind == "f" else vol
    return finite.size > 0 and bool(np.all((finite == 0) | (finite == 1)))


def _peak_ijk(vol: np.ndarray) -> np.ndarray | None:
    mag = np.abs(np.where(np.isfinite(vol), vol, 0)) if vol.dtype.kind == "f" else np.abs(vol)
    if mag.size == 0 or not np.any(mag):
        return None
    return np.array(np.unravel_index(int(np.argmax(mag)), vol.shape))


def _centre_of_mass_ijk(mask: np.ndarray, grid: _Grid) -> np.ndarray | None:
    """Centre of mass of ``mask``, snapped to the nearest voxel inside the mask."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    vox_mm = np.sqrt((grid.affine[:3, :3] ** 2).sum(axis=0))
    com = idx.mean(axis=0)
    d2 = (((idx - com) * vox_mm) ** 2).sum(axis=1)
    return idx[int(np.argmin(d2))]


def _default_ijk(vol: np.ndarray, grid: _Grid, *, roi: bool) -> np.ndarray:
    ijk = _centre_of_mass_ijk(vol != 0, grid) if roi else _peak_ijk(vol)
    if ijk is None:
        ijk = (np.asarray(grid.shape) - 1) // 2
    return ijk


def find_cut_coords(img) -> tuple[float, float, float]:
    """Default cut coordinates (mm): centre of mass of a mask/ROI, else the peak.

    A mask or ROI is a boolean image or one whose values are all 0 or 1; its
    cut goes through the voxel of the mask nearest to its centre of mass. Other
    images are cut through their peak (largest absolute finite value). An empty
    or all-zero image is cut through its central voxel.

    Parameters
    ----------
    img : path, nibabel image or roidask image
        A 3D image (computed whole).

    Returns
    -------
    tuple of 3 float
        World coordinates ``(x, y, z)`` in mm of a voxel centre.
    """
    img = as_image(img, ndim=3, param="img")
    grid = _Grid.of(img)
    vol = np.asarray(img.data.compute())
    ijk = _default_ijk(vol, grid, roi=_is_mask(vol))
    return tuple(float(v) for v in voxel_to_world(grid.affine, ijk))


# -- slicing -------------------------------------------------------------------------------
def _view_slice(arr, grid: _Grid, ijk: np.ndarray, view) -> np.ndarray:
    """2D cut of a 3D (numpy or dask) array as (vertical, horizontal), world-increasing."""
    _, w, h, v = view
    index = [slice(None)] * 3
    index[grid.vox[w]] = int(ijk[grid.vox[w]])
    s = arr[tuple(index)]
    if grid.vox[h] < grid.vox[v]:
        s = s.T
    if grid.flip[h]:
        s = s[:, ::-1]
    if grid.flip[v]:
        s = s[::-1, :]
    return s


def _cuts(arrays: Sequence, grid: _Grid, ijk: np.ndarray, *extra):
    """Three view cuts of each array, computed together with ``extra`` dask values."""
    lazy = [[_view_slice(a, grid, ijk, view) for view in _VIEWS] for a in arrays]
    computed = dask.compute(lazy, *extra)
    cuts = [[np.asarray(s) for s in per] for per in computed[0]]
    return cuts, computed[1:]


def _finite_range(slices: Sequence[np.ndarray]) -> tuple[float, float]:
    vals = [s[np.isfinite(s)] for s in slices if s.size]
    vals = np.concatenate(vals) if vals else np.empty(0)
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


# -- figure scaffolding --------------------------------------------------------------------
@dataclass
class _Panel:
    ax: object
    view: tuple
    extent: tuple[float, float, float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]


def _ortho_axes(grid: _Grid, ijk: np.ndarray, *, side: bool) -> tuple[Figure, list[_Panel]]:
    geo = []
    for view in _VIEWS:
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


def _finish(fig: Figure, panels: list[_Panel], grid: _Grid, ijk: np.ndarray, title) -> None:
    point = voxel_to_world(grid.affine, ijk)
    text_style = {"color": "white", "fontsize": 11, "fontweight": "bold"}
    for p in panels:
        name, w, h, v = p.view
        ax = p.ax
        ax.set_xlim(*p.xlim)
        ax.set_ylim(*p.ylim)
        ax.set_aspect("equal", adjustable="box")
        ax.axvline(point[h], color="#66ccff", lw=0.6, alpha=0.8)
        ax.axhline(point[v], color="#66ccff", lw=0.6, alpha=0.8)
        ax.set_xlabel(f"{_AXIS_NAMES[h]} (mm)")
        ax.set_ylabel(f"{_AXIS_NAMES[v]} (mm)")
        ax.set_title(f"{name}: {_AXIS_NAMES[w]} = {point[w]:.1f} mm", fontsize=10)
        low, high = _SIDE_TEXT[h]
        ax.text(0.02, 0.97, low, transform=ax.transAxes, ha="left", va="top", **text_style)
        ax.text(0.98, 0.97, high, transform=ax.transAxes, ha="right", va="top", **text_style)
        ax.tick_params(labelsize=8)
    fig.supxlabel(_CONVENTION, fontsize=8)
    if title:
        fig.suptitle(title)


def _save_png(fig: Figure, out) -> Path:
    """Write ``fig`` as a PNG at ``out`` atomically (temporary name, then rename)."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise InvalidParameterError(f"out: {str(path)!r} must be a .png file name")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _bg_image(bg_img, ref: xr.DataArray | None, *, param: str) -> xr.DataArray:
    bg = as_image(bg_img, ndim=3, param=param)
    if ref is not None:
        check_same_grid(ref, bg, names=(ref.name or "image", param))
    return bg


def _float(a):
    return a.astype(np.float64) if a.dtype.kind in "biu" else a


# -- public plots --------------------------------------------------------------------------
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
    img = as_image(img, ndim=3, param="img")
    grid = _Grid.of(img)
    if cut_coords is None:
        vol = np.asarray(img.data.compute())
        ijk = _default_ijk(vol, grid, roi=_is_mask(vol))
        (cuts,), _ = _cuts([_float(vol)], grid, ijk)
    else:
        ijk = _cut_ijk(grid, cut_coords)
        (cuts,), _ = _cuts([_float(img.data)], grid, ijk)
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
        _save_png(fig, out)
    return fig


def _check_threshold(threshold) -> float | None:
    if threshold is None:
        return None
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"threshold: expected a number >= 0, got {threshold!r}"
        ) from None
    if not (math.isfinite(t) and t >= 0):
        raise InvalidParameterError(f"threshold: expected a finite number >= 0, got {threshold!r}")
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
    stat = as_image(stat_img, ndim=3, param="stat_img")
    bg = None if bg_img is None else _bg_image(bg_img, stat, param="bg_img")
    threshold = _check_threshold(threshold)
    if vmax is not None and not (isinstance(vmax, int | float) and vmax > 0):
        raise InvalidParameterError(f"vmax: expected a number > 0, got {vmax!r}")
    grid = _Grid.of(stat)
    stat_data = _float(stat.data)
    if cut_coords is None:
        vol = np.asarray(stat_data.compute())
        shown = np.where(np.abs(vol) >= threshold, vol, 0) if threshold else vol
        ijk = _default_ijk(shown, grid, roi=False)
        stat_data = vol
    else:
        ijk = _cut_ijk(grid, cut_coords)
    finite = da.where(da.isfinite(stat_data), stat_data, np.nan)
    arrays = [stat_data] + ([] if bg is None else [_float(bg.data)])
    cuts, (smin, smax) = _cuts(arrays, grid, ijk, da.nanmin(finite), da.nanmax(finite))
    smin = 0.0 if not np.isfinite(smin) else float(smin)
    smax = 0.0 if not np.isfinite(smax) else float(smax)
    top = float(vmax) if vmax is not None else max(abs(smin), abs(smax)) or 1.0
    bottom = -top if smin < 0 else 0.0
    fig, panels = _ortho_axes(grid, ijk, side=colorbar)
    if bg is not None:
        lo, hi = _finite_range(cuts[1])
        for p, cut in zip(panels, cuts[1], strict=True):
            _imshow(p, cut, cmap="gray", vmin=lo, vmax=hi, label="background")
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
        _save_png(fig, out)
    return fig


def _label_colors(n: int) -> list:
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        order = [3, 0, 2, 1, 4, 5, 6, 7, 8, 9]  # red first, like nilearn's single ROI
        return [cmap(order[i]) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["gist_rainbow"]
    return [cmap(i / (n - 1)) for i in range(n)]


def plot_roi(
    roi_img,
    bg_img,
    *,
    cut_coords=None,
    title: str | None = None,
    alpha: float = 0.8,
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
    out : path, optional
        Also write the figure to this ``.png`` file (100 dpi), atomically.

    Returns
    -------
    matplotlib.figure.Figure
        With a legend of the labels (a colorbar of labels past 12 labels); the ROI
        layer of each view is the image labelled ``"roi"``.

    Raises
    ------
    ImageDimensionError
        An image is not 3D.
    GridMismatchError
        ``roi_img`` and ``bg_img`` are on different grids.
    InvalidParameterError
        Non-integer label values, or ``cut_coords`` outside the volume.

    Warns
    -----
    EmptyMaskWarning
        The ROI image has no non-zero voxel (cut through the centre of the volume).
    """
    roi = as_image(roi_img, ndim=3, param="roi_img")
    bg = None if bg_img is None else _bg_image(bg_img, roi, param="bg_img")
    grid = _Grid.of(roi)
    vol = np.asarray(roi.data.compute())
    if vol.dtype.kind == "f":
        vol = np.where(np.isfinite(vol), vol, 0)
        if np.any(vol != np.rint(vol)):
            raise InvalidParameterError(
                f"roi_img: {roi.name!r} has non-integer values; expected a mask or integer "
                "labels (threshold or round it first)"
            )
    vol = vol.astype(np.int64)
    labels = np.unique(vol[vol != 0])
    if labels.size == 0:
        warnings.warn(
            f"roi_img: {roi.name!r} has no non-zero voxel; nothing to overlay",
            EmptyMaskWarning,
            stacklevel=2,
        )
    ijk = _default_ijk(vol, grid, roi=True) if cut_coords is None else _cut_ijk(grid, cut_coords)
    arrays = [vol] + ([] if bg is None else [_float(bg.data)])
    cuts, _ = _cuts(arrays, grid, ijk)
    colors = _label_colors(max(labels.size, 1))
    cmap = ListedColormap(colors)
    fig, panels = _ortho_axes(grid, ijk, side=True)
    if bg is not None:
        lo, hi = _finite_range(cuts[1])
        for p, cut in zip(panels, cuts[1], strict=True):
            _imshow(p, cut, cmap="gray", vmin=lo, vmax=hi, label="background")
    images = []
    for p, cut in zip(panels, cuts[0], strict=True):
        index = np.ma.masked_array(np.searchsorted(labels, cut), mask=cut == 0)
        images.append(
            _imshow(
                p, index, cmap=cmap, vmin=-0.5, vmax=len(colors) - 0.5, alpha=alpha, label="roi"
            )
        )
    _finish(fig, panels, grid, ijk, title)
    if 0 < labels.size <= 12:
        handles = [
            Patch(facecolor=colors[i], edgecolor="none", label=f"{lab}")
            for i, lab in enumerate(labels)
        ]
        fig.legend(handles=handles, loc="outside right upper", title="ROI label", fontsize=9)
    elif labels.size > 12:
        cb = fig.colorbar(images[-1], ax=[p.ax for p in panels], shrink=0.8, pad=0.02)
        ticks = np.linspace(0, labels.size - 1, min(labels.size, 10)).round().astype(int)
        cb.set_ticks(ticks, labels=[str(labels[t]) for t in ticks])
        cb.set_label("ROI label")
    if out is not None:
        _save_png(fig, out)
    return fig


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
        Lazy values are computed. NaNs are left out of the boxes.
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
        Missing ``roi``/``time`` dims or the ``condition`` coordinate.
    ConditionError
        A requested condition does not occur in ``signals``.
    """
    if not isinstance(signals, xr.DataArray):
        raise RoidaskTypeError(
            f"signals: expected an xarray.DataArray with dims ('roi', 'time'), got "
            f"{type(signals).__name__}"
        )
    if set(signals.dims) != {"roi", "time"}:
        raise InvalidParameterError(
            f"signals: dims are {tuple(signals.dims)}; expected ('roi', 'time')"
        )
    if "condition" not in signals.coords or signals.coords["condition"].dims != ("time",):
        raise InvalidParameterError(
            "signals: needs a 'condition' coordinate along 'time' (one label per volume)"
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
                f"conditions: {missing or conditions!r} not in signals; available: {present}"
            )
    values = np.asarray(signals.values, dtype=np.float64)
    rois = signals.coords["roi"].values if "roi" in signals.coords else np.arange(values.shape[0])
    n = values.shape[0]
    if n == 0:
        raise InvalidParameterError("signals: has no ROI (the 'roi' dimension is empty)")
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    width = max(5.0, 0.6 * len(conditions) + 1.5)
    fig = Figure(figsize=(width * ncols, 4.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    unit = signals.attrs.get("units")
    for ax, label, row in zip(axes, rois, values, strict=False):
        groups = [row[cond == c] for c in conditions]
        groups = [g[np.isfinite(g)] for g in groups]
        ax.boxplot(groups, tick_labels=conditions)
        ax.tick_params(axis="x", labelrotation=25)
        ax.set_title(f"ROI {label} per condition")
        ax.set_label(f"roi {label}")
        ax.set_ylabel(f"signal ({unit})" if unit else "signal")
    for ax in axes[n:]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    if out is not None:
        _save_png(fig, out)
    return fig


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
    """Write the figures of nilearn's ROI-extraction example as PNGs.

    Files (in this order): ``mean_epi.png`` (smoothed mean EPI), ``logp.png``
    (-log10 p over the mean EPI), ``logp_thresholded.png``, ``roi_mask.png``
    (intersection with the ventral temporal mask), ``dilated_mask.png``,
    ``roi_<label>.png`` for each label of ``atlas_img`` (cut at its centre of
    mass) and ``boxplots.png``. Each file is written atomically.

    Parameters
    ----------
    out_dir : path
        Output folder (created if missing).
    mean_img : image
        3D mean EPI, the background of every overlay.
    logp_img : image
        3D -log10 p-value map.
    threshold : float
        -log10 p threshold for ``logp_thresholded.png`` (values below are hidden).
    roi_mask_img, dilated_img : image
        3D masks: thresholded map AND ventral-temporal mask, and its dilation.
    atlas_img : image or None
        3D integer label image of the connected components (one ROI per label).
    signals : xarray.DataArray or None
        ROI signals, dims ``("roi", "time")`` with ``condition`` along time.
    cut_coords : sequence of 3 floats, optional
        World coordinates ``(x, y, z)`` in mm for the first five figures (the
        example uses ``(-25, -37, -6)``). Default: the voxel of ``roi_mask_img``
        nearest its centre of mass (the peak of ``logp_img`` if the mask is empty),
        the same for all five.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mean = as_image(mean_img, ndim=3, param="mean_img")
    if cut_coords is None:
        mask = as_image(roi_mask_img, ndim=3, param="roi_mask_img")
        grid = _Grid.of(mask)
        ijk = _centre_of_mass_ijk(np.asarray(mask.data.compute()) != 0, grid)
        if ijk is None:
            logp = as_image(logp_img, ndim=3, param="logp_img")
            ijk = _default_ijk(np.asarray(_float(logp.data).compute()), grid, roi=False)
        cut_coords = tuple(voxel_to_world(grid.affine, ijk))
    paths: list[Path] = []

    def write(name: str, plot, *args, **kwargs) -> None:
        path = out_dir / name
        plot(*args, out=path, **kwargs)
        paths.append(path)

    common = {"cut_coords": cut_coords}
    write(
        "mean_epi.png",
        plot_ortho,
        mean,
        title="Smoothed mean EPI",
        cmap="nipy_spectral",
        colorbar=True,
        **common,
    )
    write("logp.png", plot_stat_map, logp_img, mean, title="p-values (-log10 p)", **common)
    write(
        "logp_thresholded.png",
        plot_stat_map,
        logp_img,
        mean,
        threshold=threshold,
        title=f"Thresholded p-values (-log10 p >= {threshold:g})",
        **common,
    )
    write(
        "roi_mask.png",
        plot_roi,
        roi_mask_img,
        mean,
        title="Intersection with ventral temporal mask",
        **common,
    )
    write("dilated_mask.png", plot_roi, dilated_img, mean, title="Dilated mask", **common)
    if atlas_img is not None:
        atlas = as_image(atlas_img, ndim=3, param="atlas_img")
        vol = np.asarray(atlas.data.compute())
        for label in np.unique(vol[(vol != 0) & np.isfinite(vol)]):
            text = f"{label:g}" if vol.dtype.kind == "f" else str(label)
            single = atlas.copy(data=da.from_array(vol == label, chunks=-1))
            write(
                f"roi_{text}.png",
                plot_roi,
                single,
                mean,
                title=f"Connected components: ROI {text}",
            )
    if signals is not None:
        write("boxplots.png", plot_condition_boxplots, signals, title="ROI signals per condition")
    return paths
