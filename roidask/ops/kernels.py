"""Gaussian smoothing kernels as nilearn defines them (FWHM in mm -> sigma in voxels)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter1d

from roidask._validate import check_fwhm
from roidask.io.grid import voxel_size_mm

__all__ = [
    "FWHM_OVER_SIGMA",
    "TRUNCATE",
    "fwhm_to_sigma_voxels",
    "gaussian_filter_matrix",
    "gaussian_radius",
    "sigma_to_fwhm_mm",
]

#: FWHM = sqrt(8 ln 2) sigma for a Gaussian.
FWHM_OVER_SIGMA = float(np.sqrt(8 * np.log(2)))
#: Kernel half-width in standard deviations (scipy's default, used by nilearn).
TRUNCATE = 4.0
#: Largest smoothing FWHM (mm) per axis: wider than any brain many times over; larger
#: values would only make kernels of billions of voxels.
MAX_FWHM_MM = 1000.0


def fwhm_to_sigma_voxels(
    affine: np.ndarray, fwhm: float | Sequence[float | None] | None
) -> np.ndarray:
    """Per-axis Gaussian sigma in voxels for a FWHM in mm, as nilearn's ``smooth_array``.

    Voxel sizes are the column norms of ``affine[:3, :3]``; a scalar ``fwhm``
    applies to all three spatial axes, a sequence gives one FWHM (mm) per axis,
    ``None`` or ``0`` means no smoothing (sigma 0).

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        Voxel-to-mm transform.
    fwhm : float, sequence of 3 floats/None, or None
        Full width at half maximum in mm.

    Returns
    -------
    ndarray, shape (3,)
        Sigma per spatial axis, in voxels (0 where no smoothing).

    Raises
    ------
    InvalidParameterError
        Negative, non-finite, not a number (a string, a bool) or wrongly sized ``fwhm``.
    """
    mm = check_fwhm(fwhm, "fwhm", maximum=MAX_FWHM_MM)
    return mm / (FWHM_OVER_SIGMA * voxel_size_mm(affine))


def gaussian_radius(sigma: float, truncate: float = TRUNCATE) -> int:
    """Kernel radius in voxels of ``scipy.ndimage.gaussian_filter1d`` (0 if sigma is 0)."""
    if sigma <= 0:
        return 0
    return int(truncate * float(sigma) + 0.5)


def sigma_to_fwhm_mm(affine: np.ndarray, sigma) -> list[float]:
    """Inverse of :func:`fwhm_to_sigma_voxels`: per-axis FWHM in mm of sigmas in voxels."""
    return [float(v) for v in np.asarray(sigma) * voxel_size_mm(affine) * FWHM_OVER_SIGMA]


@lru_cache(maxsize=64)
def _filter_matrix64(n: int, sigma: float) -> np.ndarray:
    matrix = gaussian_filter1d(np.eye(n), sigma, axis=0, mode="reflect", truncate=TRUNCATE)
    matrix.flags.writeable = False
    return matrix


@lru_cache(maxsize=64)
def _filter_matrix_typed(n: int, sigma: float, dtype: np.dtype) -> np.ndarray:
    matrix = _filter_matrix64(n, sigma).astype(dtype)
    matrix.flags.writeable = False
    return matrix


def gaussian_filter_matrix(n: int, sigma: float, dtype=np.float64) -> np.ndarray:
    """``G`` with ``G @ line == gaussian_filter1d(line, sigma)`` for lines of ``n`` samples.

    scipy's filter (``mode="reflect"``, ``truncate=4``, edges included) applied to
    the identity, in float64 and then cast to ``dtype``; cached and read-only.
    """
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return _filter_matrix64(int(n), float(sigma))
    return _filter_matrix_typed(int(n), float(sigma), dtype)
