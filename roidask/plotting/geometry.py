"""Geometry of the figures: world <-> voxel, cut coordinates, views of a voxel grid.

No matplotlib here: these functions work on affines, grids and arrays only.

Conventions
-----------
* Cut coordinates are world coordinates ``(x, y, z)`` in **mm** (RAS+, as the
  NIfTI affine defines them); a cut goes through the **nearest voxel**.
* A view shows the plane through that voxel perpendicular to one world axis:
  ``sagittal`` (x cut, y horizontal, z vertical), ``coronal`` (y cut, x
  horizontal, z vertical) and ``axial`` (z cut, x horizontal, y vertical). The
  2D arrays of a view are ``(vertical, horizontal)`` with world coordinates
  increasing along both axes.
* Affines are mapped onto the nearest axis-aligned orientation (axis
  permutations and flips are exact; oblique affines are shown without
  resampling, so their mm axes are approximate).
* A mask or ROI is a boolean image or one whose finite values are all 0 or 1;
  its default cut goes through the voxel of the mask nearest to its centre of
  mass, other images are cut through their peak (largest absolute finite value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dask
import nibabel as nib
import numpy as np
import xarray as xr

from roidask.exceptions import InvalidParameterError
from roidask.io.conversions import as_image
from roidask.io.grid import affine_of

__all__ = [
    "VIEW_NAMES",
    "cut_voxel_indices",
    "find_cut_coords",
    "voxel_to_world",
    "world_to_voxel",
]

AXIS_NAMES = "xyz"
# (name, world axis cut, world axis shown horizontally, world axis shown vertically)
VIEWS = (("sagittal", 0, 1, 2), ("coronal", 1, 0, 2), ("axial", 2, 0, 1))
#: Labels of the three view axes of an ortho figure (``Axes.get_label()``).
VIEW_NAMES = tuple(view[0] for view in VIEWS)


# -- world <-> voxel -----------------------------------------------------------------------
def _affine_array(affine) -> np.ndarray:
    if isinstance(affine, xr.DataArray):
        return affine_of(affine)
    try:
        a = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"affine: expected a 4x4 voxel-to-mm matrix or a roidask image, got {affine!r}",
            param="affine",
        ) from None
    if a.shape != (4, 4):
        raise InvalidParameterError(
            f"affine: expected shape (4, 4), got {a.shape}", param="affine"
        )
    return a


def _coords_array(coords, *, param: str) -> np.ndarray:
    try:
        c = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"{param}: expected 3 numbers or an (n, 3) array, got {coords!r}", param=param
        ) from None
    if c.ndim == 0 or c.shape[-1] != 3:
        raise InvalidParameterError(
            f"{param}: expected 3 numbers or an (n, 3) array, got shape {c.shape}", param=param
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


# -- grid ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """Voxel grid of a 3D image and its mapping onto the world axes (package-internal)."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    vox: tuple[int, int, int]  # voxel axis shown along world axis w
    flip: tuple[bool, bool, bool]  # voxel index up -> world coordinate down, per world axis

    @classmethod
    def of(cls, img: xr.DataArray) -> Grid:
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
        x, y, z = (int(n) for n in img.shape[:3])
        return cls(a, (x, y, z), (vox[0], vox[1], vox[2]), (flip[0], flip[1], flip[2]))

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

    def world(self, ijk) -> np.ndarray:
        """World coordinates (mm) of voxel ``ijk``."""
        return voxel_to_world(self.affine, ijk)


# -- cut coordinates -----------------------------------------------------------------------
def cut_ijk(grid: Grid, cut_coords, *, param: str = "cut_coords") -> np.ndarray:
    """Validated nearest voxel (i, j, k) of cut coordinates in mm (package-internal)."""
    c = _coords_array(cut_coords, param=param)
    if c.shape != (3,):
        raise InvalidParameterError(
            f"{param}: expected 3 world coordinates (x, y, z) in mm, got shape {c.shape}",
            param=param,
        )
    bounds = grid.bounds()
    for w in range(3):
        lo, hi = bounds[w]
        tol = 1e-6 * max(1.0, abs(lo), abs(hi))
        if not (np.isfinite(c[w]) and lo - tol <= c[w] <= hi + tol):
            raise InvalidParameterError(
                f"{param}: {AXIS_NAMES[w]} = {c[w]:g} mm is outside the volume; the valid "
                f"range along {AXIS_NAMES[w]} is [{lo:g}, {hi:g}] mm (cut_coords are world "
                "coordinates (x, y, z) in mm; all valid ranges: "
                + ", ".join(
                    f"{AXIS_NAMES[i]} [{bounds[i, 0]:g}, {bounds[i, 1]:g}]" for i in range(3)
                )
                + ")",
                param=param,
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
    i, j, k = (int(v) for v in cut_ijk(Grid.of(img), cut_coords))
    return i, j, k


def is_mask(vol: np.ndarray) -> bool:
    """Whether ``vol`` is a mask: boolean, or all its finite values are 0 or 1."""
    if vol.dtype == np.bool_:
        return True
    finite = vol[np.isfinite(vol)] if vol.dtype.kind == "f" else vol
    return finite.size > 0 and bool(np.all((finite == 0) | (finite == 1)))


def _peak_ijk(vol: np.ndarray) -> np.ndarray | None:
    mag = np.abs(np.where(np.isfinite(vol), vol, 0)) if vol.dtype.kind == "f" else np.abs(vol)
    if mag.size == 0 or not np.any(mag):
        return None
    return np.array(np.unravel_index(int(np.argmax(mag)), vol.shape))


def _centre_of_mass_ijk(mask: np.ndarray, grid: Grid) -> np.ndarray | None:
    """Centre of mass of ``mask``, snapped to the nearest voxel inside the mask."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    vox_mm = np.sqrt((grid.affine[:3, :3] ** 2).sum(axis=0))
    com = idx.mean(axis=0)
    d2 = (((idx - com) * vox_mm) ** 2).sum(axis=1)
    return idx[int(np.argmin(d2))]


def default_ijk(vol: np.ndarray, grid: Grid, *, roi: bool) -> np.ndarray:
    """Default cut voxel of ``vol`` (package-internal).

    The voxel of the non-zero voxels nearest their centre of mass (``roi=True``), else
    the peak; the central voxel of the grid if ``vol`` has no non-zero voxel.
    """
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
    grid = Grid.of(img)
    vol = np.asarray(img.data.compute())
    ijk = default_ijk(vol, grid, roi=is_mask(vol))
    x, y, z = (float(v) for v in grid.world(ijk))
    return x, y, z


# -- cuts ----------------------------------------------------------------------------------
def as_float(a):
    """Integer and boolean arrays as float64; float arrays unchanged (package-internal)."""
    return a.astype(np.float64) if a.dtype.kind in "biu" else a


def _view_slice(arr, grid: Grid, ijk: np.ndarray, view) -> np.ndarray:
    """2D cut of a 3D (numpy or dask) array as (vertical, horizontal), world-increasing."""
    _, w, h, v = view
    index: list[int | slice] = [slice(None)] * 3
    index[grid.vox[w]] = int(ijk[grid.vox[w]])
    s = arr[tuple(index)]
    if grid.vox[h] < grid.vox[v]:
        s = s.T
    if grid.flip[h]:
        s = s[:, ::-1]
    if grid.flip[v]:
        s = s[::-1, :]
    return s


def view_cuts(arrays: Sequence, grid: Grid, ijk: np.ndarray, *extra):
    """The three view cuts of each array through ``ijk`` (package-internal).

    Computed in one dask pass together with the ``extra`` dask values; returns
    ``(cuts, extra_values)`` with ``cuts[a][v]`` the numpy cut of array ``a`` in view ``v``.
    """
    lazy = [[_view_slice(a, grid, ijk, view) for view in VIEWS] for a in arrays]
    computed = dask.compute(lazy, *extra)
    cuts = [[np.asarray(s) for s in per] for per in computed[0]]
    return cuts, computed[1:]
