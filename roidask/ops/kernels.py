"""Gaussian smoothing kernels as nilearn defines them (FWHM in mm -> sigma in voxels)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from roidask.exceptions import InvalidParameterError

__all__ = ["FWHM_OVER_SIGMA", "TRUNCATE", "fwhm_to_sigma_voxels", "gaussian_radius"]

#: FWHM = sqrt(8 ln 2) sigma for a Gaussian.
FWHM_OVER_SIGMA = float(np.sqrt(8 * np.log(2)))
#: Kernel half-width in standard deviations (scipy's default, used by nilearn).
TRUNCATE = 4.0


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
        Negative, non-finite or wrongly sized ``fwhm``.
    """
    vox_mm = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    if fwhm is None:
        return np.zeros(3)
    values = np.asarray([fwhm], dtype=object).ravel()
    if values.size == 1:
        values = np.repeat(values, 3)
    if values.size != 3:
        raise InvalidParameterError(
            f"fwhm: expected a number or 3 numbers (mm per spatial axis), got {fwhm!r}"
        )
    try:
        mm = np.asarray([0.0 if v is None else float(v) for v in values])
    except (TypeError, ValueError):
        raise InvalidParameterError(f"fwhm: expected numbers of mm, got {fwhm!r}") from None
    if not np.all(np.isfinite(mm)) or np.any(mm < 0):
        raise InvalidParameterError(f"fwhm: must be finite and >= 0 mm, got {fwhm!r}")
    return mm / (FWHM_OVER_SIGMA * vox_mm)


def gaussian_radius(sigma: float, truncate: float = TRUNCATE) -> int:
    """Kernel radius in voxels of ``scipy.ndimage.gaussian_filter1d`` (0 if sigma is 0)."""
    if sigma <= 0:
        return 0
    return int(truncate * float(sigma) + 0.5)
