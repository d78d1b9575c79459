"""Voxel grids: the affine, voxel sizes, same-grid checks and the dims of roidask images.

A roidask image carries its grid in ``attrs``: ``affine`` (4x4 nested list,
voxel -> mm), ``voxel_size_mm``, ``xyz_units`` and ``nifti_header`` (base64 of
the source header). Every module that needs a voxel size, a grid comparison or
a shifted affine calls this one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from roidask.exceptions import (
    CorruptFileError,
    GridMismatchError,
    ImageTypeError,
    InvalidParameterError,
)

__all__ = [
    "AFFINE_ATOL_MM",
    "BOLD_DIMS",
    "GRID_KEYS",
    "SPATIAL_DIMS",
    "affine_of",
    "box_affine",
    "check_affine",
    "check_same_grid",
    "grid_attrs",
    "same_grid",
    "spatial_coords",
    "voxel_size_mm",
    "voxel_to_world",
    "voxel_volume_mm3",
]

#: Dims of a 3D map and of a 4D BOLD series.
SPATIAL_DIMS = ("x", "y", "z")
BOLD_DIMS = ("x", "y", "z", "time")
#: Affines closer than this (max absolute difference, mm) are the same grid.
AFFINE_ATOL_MM = 1e-3
#: The attrs that describe the voxel grid (copied onto derived maps).
GRID_KEYS = ("affine", "voxel_size_mm", "xyz_units", "nifti_header")


def voxel_size_mm(affine) -> np.ndarray:
    """Voxel size along each array axis (mm): the column norms of ``affine[:3, :3]``.

    Parameters
    ----------
    affine : array-like, shape (4, 4)
        A voxel-to-mm affine (:func:`affine_of`).

    Returns
    -------
    numpy.ndarray
        Three float64 sizes in mm, along the array axes ``x``, ``y``, ``z``.
    """
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def check_affine(affine, *, param: str, source: object = None) -> np.ndarray:
    """Refuse an affine that is not a voxel-to-mm transform (before any voxel is read).

    Parameters
    ----------
    affine : array-like
        The 4x4 voxel-to-mm transform to check.
    param : str
        The parameter that gave it (or named the file it is of), for messages.
    source : object, optional
        The file whose header gave it; None for an affine given as a parameter
        (``write_nifti(..., affine=...)``).

    Returns
    -------
    ndarray, shape (4, 4)
        ``affine`` as float64.

    Raises
    ------
    CorruptFileError
        ``affine`` (of ``source``, given as ``param``) holds a NaN or an infinity, or its
        axes are not three independent directions: a voxel size of 0 (a zero column of
        the sform), or axes in one plane. Smoothing and dilation in mm need each.
    InvalidParameterError
        The same of an affine given as a parameter (no ``source``), or one that is not
        a 4x4 matrix of numbers.
    """
    try:
        matrix4 = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):  # strings, ragged lists
        matrix4 = None
    if matrix4 is None or matrix4.shape != (4, 4):
        got = f"shape {matrix4.shape}" if matrix4 is not None else f"{type(affine).__name__}"
        problem = f"is not a 4x4 matrix of numbers ({got})"
    elif not np.all(np.isfinite(matrix4)):
        problem = "holds NaN or infinite values"
    elif voxel_volume_mm3(matrix4) == 0.0 or np.linalg.matrix_rank(matrix4[:3, :3]) < 3:
        sizes = ", ".join(f"{v:g}" for v in voxel_size_mm(matrix4))
        problem = f"is singular (voxel sizes {sizes} mm)"
    else:
        return matrix4
    if source is None:
        raise InvalidParameterError(
            f"{param}: the affine {problem}; expected a 4x4 voxel-to-mm transform with three "
            "non-zero, independent axes",
            param=param,
        )
    raise CorruptFileError(
        f"{param} {source}: its affine (sform/qform) {problem}; expected a voxel-to-mm "
        "transform with three non-zero, independent axes (fix the header's sform/qform)",
        param=param,
    )


def voxel_volume_mm3(affine) -> float:
    """Volume of one voxel (mm^3): ``|det(affine[:3, :3])|``."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def voxel_to_world(affine, ijk) -> np.ndarray:
    """World coordinates (mm) of voxel indices ``ijk`` (shape (..., 3))."""
    affine = np.asarray(affine, dtype=np.float64)
    return np.asarray(ijk, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]


def spatial_coords(shape: Sequence[int], affine) -> dict[str, tuple]:
    """Coordinates of a 3D grid: voxel indices, and world positions where they are 1D.

    ``x``, ``y``, ``z`` are the voxel indices along each array axis (int64, the
    index coordinates). ``x_mm``, ``y_mm``, ``z_mm`` (float64, along ``x``, ``y``,
    ``z``) are the world positions of the voxel centres, NIfTI's RAS+ space in mm,
    given only when the affine is axis-aligned (``affine[:3, :3]`` diagonal: each
    world position depends on one voxel index); otherwise a voxel's position needs
    the whole affine (``voxel_to_world``).
    """
    affine = np.asarray(affine, dtype=np.float64).reshape(4, 4)
    coords: dict[str, tuple] = {}
    for axis, (dim, n) in enumerate(zip(SPATIAL_DIMS, shape, strict=False)):
        coords[dim] = (
            dim,
            np.arange(int(n), dtype=np.int64),
            {"long_name": f"voxel index along array axis {axis}", "units": "1"},
        )
    linear = affine[:3, :3]
    if np.allclose(linear, np.diag(np.diag(linear)), rtol=0, atol=1e-6 * np.abs(linear).max()):
        for axis, dim in enumerate(SPATIAL_DIMS):
            index = np.arange(int(shape[axis]), dtype=np.float64)
            coords[f"{dim}_mm"] = (
                dim,
                index * linear[axis, axis] + affine[axis, 3],
                {
                    "long_name": f"world {dim} of the voxel centre (NIfTI RAS+ space)",
                    "units": "mm",
                },
            )
    return coords


def affine_of(img: xr.DataArray) -> np.ndarray:
    """The 4x4 voxel-to-mm affine of a roidask image.

    Parameters
    ----------
    img : xarray.DataArray
        A roidask image (:func:`roidask.io.as_image`), whose ``affine`` attribute is
        read.

    Returns
    -------
    numpy.ndarray
        float64, shape (4, 4): voxel indices to world coordinates in mm.

    Raises
    ------
    ImageTypeError
        ``img`` has no ``affine`` attribute.
    """
    try:
        return np.asarray(img.attrs["affine"], dtype=np.float64).reshape(4, 4)
    except KeyError:
        raise ImageTypeError(
            f"image {img.name!r} has no 'affine' attribute; expected a roidask image "
            "(see roidask.io.as_image)"
        ) from None


def grid_attrs(img: xr.DataArray) -> dict:
    """The attrs that describe the voxel grid (to copy onto derived 3D maps)."""
    return {k: img.attrs[k] for k in GRID_KEYS if k in img.attrs}


def box_affine(affine, box: Sequence[slice]) -> np.ndarray:
    """The affine of the sub-grid ``box`` (three slices) of a grid with ``affine``."""
    out = np.asarray(affine, dtype=np.float64).copy()
    out[:, 3] = out @ np.array([s.start or 0 for s in box] + [1.0])
    return out


def same_grid(shape_a, affine_a, shape_b, affine_b, *, atol_mm: float = AFFINE_ATOL_MM) -> bool:
    """True when two grids have the same spatial shape and affines within ``atol_mm``."""
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and bool(
        np.allclose(affine_a, affine_b, rtol=0, atol=atol_mm)
    )


def check_same_grid(
    a: xr.DataArray,
    b: xr.DataArray,
    *,
    names: tuple[str, str] = ("img", "other"),
    atol_mm: float = AFFINE_ATOL_MM,
) -> None:
    """Raise :class:`GridMismatchError` unless ``a`` and ``b`` share shape and affine.

    Parameters
    ----------
    a, b : xarray.DataArray
        Roidask images (3D or 4D; their spatial shapes are compared).
    names : tuple of 2 str
        The names of ``a`` and ``b`` in the message (their parameters); the error's
        ``param`` is the second.
    atol_mm : float
        Largest difference allowed between the affines' entries, in mm.

    Raises
    ------
    GridMismatchError
        Different spatial shapes, or affines further apart than ``atol_mm`` (both
        grids are stated).
    """
    sa, sb = tuple(a.shape[:3]), tuple(b.shape[:3])
    fa, fb = affine_of(a), affine_of(b)
    if not same_grid(sa, fa, sb, fb, atol_mm=atol_mm):
        raise GridMismatchError(
            f"{names[0]} and {names[1]} are on different voxel grids: "
            f"{names[0]} has shape {sa} and affine {np.round(fa, 4).tolist()}, "
            f"{names[1]} has shape {sb} and affine {np.round(fb, 4).tolist()}; "
            "resample one onto the other first (roidask never resamples silently)",
            param=names[1],
        )
