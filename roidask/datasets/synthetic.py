"""Synthetic Haxby-like subjects with known ground truth.

:func:`make_synthetic_subject` writes one subject folder that looks like a
Haxby 2001 subject (4D int16 BOLD, ``labels.txt`` with the real condition
sequence, a ventral-temporal mask) plus the ground truth: where face- and
house-selective voxels were planted and how strong their effects are.

Signal model, per voxel ``v`` and volume ``t``::

    bold[v, t] = | B[v] * (1 + d[t] + (V[v] * s[t] + F[v] * f[t] + H[v] * h[t]) / 100)
                   + sd[v] * e[v, t] |

* ``B`` is a smooth baseline brain, 1000-2000 inside an ellipsoidal brain and
  ~0 outside;
* ``d`` is a run-wise drift: an offset, a linear and a quadratic term per run;
* ``s``, ``f`` and ``h`` are the block regressors of "any stimulus", "face" and
  "house" from the labels, each run convolved with a double-gamma HRF (or plain
  boxcars with ``hrf=False``), scaled so that a sustained block reaches 1;
* ``V`` is a general visual response (``visual_pct``, in percent signal change)
  over the ventral-temporal (VT) mask; ``F`` and ``H`` are the face- and
  house-selective responses (``effect_pct`` at the centre of each planted
  region, falling off smoothly to ~60 % at its edge, 0 outside it);
* ``e`` is white Gaussian noise with ``sd = noise_pct / 100 * B`` inside the
  brain plus a small background level everywhere.

The planted regions are a left and right lateral fusiform "face" blob and a left
and right medial parahippocampal "house" blob, all inside the bilateral VT mask.
Positions are defined relative to the brain ellipsoid, so any grid works; the
ellipsoid has the size of a real brain when the field of view allows it
(the default 40x64x64 grid of 3.5x3.75x3.75 mm) and fills 90 % of the field
of view on smaller grids.

The 4D file is generated and written a block of volumes at a time (a dask array
streamed through :func:`roidask.io.nifti.write_nifti`), so memory use does not
grow with the number of volumes.  The noise of volume ``t`` comes from its own
random stream seeded by ``(seed, t)``, so the data are identical for a given
``seed`` whatever the block size or the number of threads.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import nibabel as nib
import numpy as np
from scipy import ndimage

from roidask._atomic import MARKER, read_marker, write_text
from roidask._progress import Progress
from roidask._validate import check_bool, check_choice, check_int, check_real
from roidask.datasets.haxby_slice import haxby_slice
from roidask.exceptions import InvalidParameterError, OutputError, OutputExistsError
from roidask.io.labels import read_labels
from roidask.io.nifti import write_nifti

__all__ = [
    "SyntheticSubject",
    "haxby_condition_sequence",
    "make_synthetic_dataset",
    "make_synthetic_subject",
]

#: File names of a synthetic subject folder.
SUBJECT_FILES = {
    "bold": "bold.nii.gz",
    "labels": "labels.txt",
    "mask_vt": "mask_vt.nii.gz",
    "brain_mask": "brain_mask.nii.gz",
    "truth_face": "truth_face.nii.gz",
    "truth_house": "truth_house.nii.gz",
    "truth": "truth.json",
}
#: Kind recorded in the ownership marker of a synthetic subject folder.
SYNTHETIC_KIND = "synthetic-subject"
_GENERATOR = "roidask.datasets.make_synthetic_subject"

# Brain ellipsoid semi-axes (mm) when the field of view is large enough, and the
# fraction of the field of view it fills otherwise.
_BRAIN_SEMI_AXES_MM = (66.0, 86.0, 64.0)
_BRAIN_FOV_FRACTION = 0.45
# Regions in brain-normalised coordinates (the brain ellipsoid is the unit ball,
# x < 0 left); (centre, semi-axes) of the right hemisphere, mirrored for the left.
_VT = ((0.44, -0.36, -0.46), (0.30, 0.36, 0.20))
_REGIONS = {
    "face": ((0.60, -0.50, -0.52), (0.11, 0.10, 0.11)),  # lateral, posterior fusiform
    "house": ((0.28, -0.20, -0.42), (0.10, 0.12, 0.10)),  # medial, anterior parahippocampal
}
_CENTRE_JITTER = 0.02  # sd of the per-subject shift of region centres (normalised)
_MIN_RADIUS_VOXELS = 0.87  # > sqrt(3) / 2: regions always hold the voxel nearest their centre
_BLOCK_VOLUMES = 32  # volumes written at a time
_TASK_VOLUMES = 8  # volumes generated per dask task (4 tasks per written block)
_BACKGROUND_SD = 5.0  # noise level outside the brain (raw units)


@dataclass(frozen=True)
class SyntheticSubject:
    """Paths of one synthetic subject's files.

    Attributes
    ----------
    root : Path
        The subject folder.
    bold : Path
        4D BOLD series ``bold.nii.gz`` (int16, scaled or not, or float32).
    labels : Path
        ``labels.txt`` (header ``labels chunks``, one row per volume).
    mask_vt : Path
        Bilateral ventral-temporal mask (uint8).
    brain_mask : Path
        Brain mask (uint8).
    truth_face, truth_house : Path
        Planted face- and house-selective voxels (uint8 masks).
    truth : Path
        ``truth.json``: parameters, seed, effect sizes and region centres (mm).
    seed : int
        Seed the subject was generated with.
    """

    root: Path
    bold: Path
    labels: Path
    mask_vt: Path
    brain_mask: Path
    truth_face: Path
    truth_house: Path
    truth: Path
    seed: int


def haxby_condition_sequence(n_volumes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The real Haxby 2001 condition sequence (1452 volumes, 12 runs of 121).

    Parameters
    ----------
    n_volumes : int, optional
        Number of volumes. Fewer than 1452 gives a prefix of the sequence; more
        repeats it, the runs of each repetition numbered after the previous ones
        (12, 13, ...). Default: 1452.

    Returns
    -------
    conditions : ndarray of str, shape (n_volumes,)
    runs : ndarray of int64, shape (n_volumes,)
    """
    table = read_labels(haxby_slice().labels)
    conditions = table["condition"].to_numpy().astype(str)
    runs = table["run"].to_numpy().astype(np.int64)
    n_seq = len(conditions)
    n = n_seq if n_volumes is None else n_volumes
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InvalidParameterError(f"n_volumes: expected a positive integer, got {n_volumes!r}")
    idx = np.arange(int(n))
    repeat = idx // n_seq
    n_runs = int(runs.max()) + 1
    return conditions[idx % n_seq], runs[idx % n_seq] + n_runs * repeat


def _hrf(tr_s: float) -> np.ndarray:
    """Double-gamma HRF (SPM-like: peak ~5 s, undershoot ~15 s) sampled every TR, sum 1."""
    t = np.arange(0.0, 32.0, tr_s)
    peak = t**5 * np.exp(-t) / math.gamma(6)
    under = t**15 * np.exp(-t) / math.gamma(16)
    h = peak - under / 6.0
    return h / h.sum()


def _regressors(conditions: np.ndarray, runs: np.ndarray, *, tr_s: float, hrf: bool):
    """Regressors (3, n_volumes) float32: any stimulus, face, house; per-run HRF convolution."""
    boxcars = np.stack([conditions != "rest", conditions == "face", conditions == "house"]).astype(
        np.float64
    )
    if not hrf:
        return boxcars.astype(np.float32)
    kernel = _hrf(tr_s)
    out = np.empty_like(boxcars)
    for run in np.unique(runs):
        sel = np.flatnonzero(runs == run)
        for k in range(boxcars.shape[0]):
            out[k, sel] = np.convolve(boxcars[k, sel], kernel)[: len(sel)]
    return out.astype(np.float32)


def _drift(
    runs: np.ndarray, rng: np.random.Generator, *, run_offset_pct: float, drift_pct: float
) -> np.ndarray:
    """Fractional run-wise drift (n_volumes,): an offset, linear and quadratic terms per run.

    The offset has sd ``run_offset_pct`` percent; the linear term changes by a
    N(0, ``drift_pct``) percent from the start to the end of the run, and the
    quadratic term bows by a N(0, ``drift_pct``) percent from ends to middle.
    """
    out = np.zeros(len(runs), dtype=np.float64)
    for run in np.unique(runs):
        sel = np.flatnonzero(runs == run)
        u = np.linspace(-1.0, 1.0, len(sel)) if len(sel) > 1 else np.zeros(1)
        offset = rng.normal(0.0, run_offset_pct / 100.0)
        slope, curve = rng.normal(0.0, drift_pct / 100.0, size=2)
        out[sel] = offset + 0.5 * slope * u + curve * (u**2 - 1.0 / 3.0)
    return out.astype(np.float32)


# Extra planted regions (regions_per_hemisphere > 1): centres at least this far apart
# (mm, beyond twice the largest region semi-axis) so that smoothed, dilated regions stay
# apart; inside this fraction of the brain ellipsoid; and off the midline.
_REGION_GAP_MM = 8.0
_REGION_MAX_RADIUS = 0.8
_REGION_TRIES = 20000


def _region_centres(
    per_hemisphere: int, vt_axes: np.ndarray, semi_axes_mm: np.ndarray, rng: np.random.Generator
) -> dict[str, list[np.ndarray]]:
    """Right-hemisphere centres (brain-normalised) of the planted regions of each category.

    The first region of each category is the fixed one of :data:`_REGIONS`; the
    others are drawn inside the (scaled) VT ellipsoid, far enough from every other
    centre and from the mirrored centres of the left hemisphere.
    """
    centres = {c: [np.asarray(centre)] for c, (centre, _) in _REGIONS.items()}
    largest = max(max(axes) for _, axes in _REGIONS.values())
    gap = 2 * largest * float(np.max(semi_axes_mm)) + _REGION_GAP_MM
    vt_centre = np.asarray(_VT[0])
    placed = [c for cs in centres.values() for c in cs]
    for k in range(1, per_hemisphere):
        for category in _REGIONS:
            for _ in range(_REGION_TRIES):
                p = rng.uniform(-1.0, 1.0, size=3)
                if p @ p > 1.0:
                    continue
                c = vt_centre + vt_axes * p
                mm = c * semi_axes_mm
                others = [o * semi_axes_mm for o in placed]
                others += [o * semi_axes_mm * (-1.0, 1.0, 1.0) for o in placed]
                if (
                    np.sqrt(c @ c) <= _REGION_MAX_RADIUS
                    and 2 * mm[0] >= gap
                    and all(np.linalg.norm(mm - o) >= gap for o in others)
                ):
                    break
            else:
                raise InvalidParameterError(
                    f"regions_per_hemisphere: cannot place {per_hemisphere} regions of each "
                    f"category per hemisphere {gap:.0f} mm apart in the VT mask (found room "
                    f"for {k}); expected fewer regions or a larger vt_scale",
                    param="regions_per_hemisphere",
                )
            centres[category].append(c)
            placed.append(c)
    return centres


class _Model:
    """Everything needed to generate any block of volumes of one subject."""

    def __init__(
        self,
        *,
        shape: tuple[int, int, int],
        voxel_size_mm: tuple[float, float, float],
        n_volumes: int | None,
        tr_s: float,
        seed: int,
        effect_pct: float,
        visual_pct: float,
        noise_pct: float,
        run_offset_pct: float,
        drift_pct: float,
        hrf: bool,
        vt_scale: float = 1.0,
        regions_per_hemisphere: int = 1,
        dtype: str = "int16",
        scl_slope: float = 1.0,
        scl_inter: float = 0.0,
    ):
        self.shape = shape
        self.seed = seed
        self.dtype = np.dtype(dtype)
        self.scl_slope = scl_slope
        self.scl_inter = scl_inter
        vox = np.asarray(voxel_size_mm, dtype=np.float64)
        self.affine = np.diag([*vox, 1.0])
        self.affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * vox
        fov = np.asarray(shape) * vox
        self.semi_axes_mm = np.minimum(_BRAIN_SEMI_AXES_MM, _BRAIN_FOV_FRACTION * fov)

        # World (mm) and brain-normalised coordinates of every voxel centre.
        grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
        mm = [g * vox[i] + self.affine[i, 3] for i, g in enumerate(grids)]
        u = [m / self.semi_axes_mm[i] for i, m in enumerate(mm)]
        r2 = u[0] ** 2 + u[1] ** 2 + u[2] ** 2
        self.brain = r2 <= 1.0

        anat_rng = np.random.default_rng([seed, 1])
        sigma_vox = 10.0 / vox  # 10 mm smooth intensity variations
        field = ndimage.gaussian_filter(anat_rng.standard_normal(shape), sigma_vox, mode="wrap")
        field /= max(np.abs(field).max(), 1e-12)
        base = 1450.0 + 350.0 * field + 150.0 * (1.0 - r2)  # in [950, 1950] inside
        base = np.clip(base, 1000.0, 2000.0) * self.brain
        self.baseline = ndimage.gaussian_filter(base, 0.6, mode="constant")  # soft edge

        # Ventral-temporal mask and planted regions (mirrored in both hemispheres).
        min_r_norm = _MIN_RADIUS_VOXELS * vox / self.semi_axes_mm
        jitter_rng = np.random.default_rng([seed, 3])
        self.mask_vt = np.zeros(shape, dtype=bool)
        vt_centre = _VT[0]
        vt_axes = np.asarray(_VT[1]) * vt_scale
        for side in (-1.0, 1.0):
            c = np.asarray(vt_centre) * (side, 1.0, 1.0)
            d2 = sum(((u[i] - c[i]) / vt_axes[i]) ** 2 for i in range(3))
            self.mask_vt |= d2 <= 1.0
        self.mask_vt &= self.brain
        self.regions = []
        self.truth = {}
        self.profile = {}
        centres = _region_centres(
            regions_per_hemisphere, vt_axes, self.semi_axes_mm, np.random.default_rng([seed, 4])
        )
        extra_jitter_rng = np.random.default_rng([seed, 5])  # the first regions as by default
        for category, (_, axes) in _REGIONS.items():
            truth = np.zeros(shape, dtype=bool)
            profile = np.zeros(shape, dtype=np.float64)
            axes_n = np.maximum(np.asarray(axes), min_r_norm)
            for k, centre in enumerate(centres[category]):
                suffix = f"_{k + 1}" if k else ""
                for side, hemi in ((-1.0, "left"), (1.0, "right")):
                    c = np.asarray(centre) * (side, 1.0, 1.0)
                    rng = extra_jitter_rng if k else jitter_rng
                    c = c + rng.normal(0.0, _CENTRE_JITTER, size=3)
                    d2 = sum(((u[i] - c[i]) / axes_n[i]) ** 2 for i in range(3))
                    inside = (d2 <= 1.0) & self.brain
                    truth |= inside
                    profile = np.maximum(profile, np.where(inside, np.exp(-0.5 * d2), 0.0))
                    self.regions.append(
                        {
                            "name": f"{category}_{hemi}{suffix}",
                            "category": category,
                            "hemisphere": hemi,
                            "centre_mm": [round(float(v), 3) for v in c * self.semi_axes_mm],
                            "semi_axes_mm": [
                                round(float(v), 3) for v in axes_n * self.semi_axes_mm
                            ],
                            "n_voxels": int(inside.sum()),
                        }
                    )
            self.truth[category] = truth
            self.profile[category] = profile
            self.mask_vt |= truth  # planted regions lie inside the VT mask on any grid
        empty = [r["name"] for r in self.regions if r["n_voxels"] == 0]
        if (self.truth["face"] & self.truth["house"]).any():
            empty.append("face and house overlap")
        if empty:
            raise InvalidParameterError(
                f"shape: grid {shape} with voxels {tuple(float(v) for v in vox)} mm is too "
                f"coarse to place the planted region(s) {empty} inside the brain; expected "
                "a larger grid (e.g. at least 12x14x10 voxels)"
            )

        self.conditions, self.runs = haxby_condition_sequence(n_volumes)
        self.n_volumes = len(self.conditions)
        self.regs = _regressors(self.conditions, self.runs, tr_s=tr_s, hrf=hrf)
        self.drift = _drift(
            self.runs,
            np.random.default_rng([seed, 2]),
            run_offset_pct=run_offset_pct,
            drift_pct=drift_pct,
        )

        # Arrays in (z, y, x) C order: a block (t, z, y, x) in C order has the byte
        # layout of an (x, y, z, t) NIfTI block in Fortran order.
        maps = np.stack(
            [
                visual_pct * self.mask_vt,
                effect_pct * self.profile["face"],
                effect_pct * self.profile["house"],
            ]
        )  # (3, x, y, z), percent
        self._maps = np.ascontiguousarray(
            (maps / 100.0).transpose(0, 3, 2, 1).reshape(3, -1), dtype=np.float32
        )
        self._base = np.ascontiguousarray(self.baseline.T.reshape(-1), dtype=np.float32)
        noise_sd = noise_pct / 100.0 * self.baseline + _BACKGROUND_SD
        self._noise_sd = np.ascontiguousarray(noise_sd.T.reshape(-1), dtype=np.float32)

    def volumes(self, start: int, stop: int) -> np.ndarray:
        """Volumes ``start:stop`` as stored, an ``(x, y, z, t)`` array (Fortran-ordered).

        int16 values are ``rint((value - scl_inter) / scl_slope)``, clipped to the
        type's range; float32 values are the values themselves.
        """
        n_vox = self._base.size
        out = np.empty((stop - start, n_vox), dtype=np.float32)
        for i, t in enumerate(range(start, stop)):
            np.random.default_rng([self.seed, 7, t]).standard_normal(dtype=np.float32, out=out[i])
        out *= self._noise_sd
        modulation = self.regs[:, start:stop].T @ self._maps  # (t, voxels)
        modulation += self.drift[start:stop, None] + np.float32(1.0)
        modulation *= self._base
        out += modulation
        np.abs(out, out=out)
        if self.dtype == np.int16:
            if self.scl_slope != 1.0 or self.scl_inter != 0.0:
                out -= np.float32(self.scl_inter)
                out /= np.float32(self.scl_slope)
            np.rint(out, out=out)
            info = np.iinfo(np.int16)
            np.clip(out, info.min, info.max, out=out)
        x, y, z = self.shape
        stored = out.astype(self.dtype, copy=False)
        return stored.reshape(stop - start, z, y, x).transpose(3, 2, 1, 0)

    def truth_record(self, **params) -> dict:
        counts = {c: int(m.sum()) for c, m in self.truth.items()}
        return {
            "generator": _GENERATOR,
            "seed": self.seed,
            "parameters": params,
            "n_volumes": self.n_volumes,
            "n_runs": len(np.unique(self.runs)),
            "affine": self.affine.tolist(),
            "units": {
                "effect_pct": "percent signal change of the baseline",
                "visual_pct": "percent signal change of the baseline",
                "noise_pct": "noise sd in percent of the baseline",
                "run_offset_pct": "sd of the per-run offset in percent of the baseline",
                "drift_pct": "sd of the per-run linear and quadratic drifts, percent",
                "centre_mm": "RAS world coordinates, mm (x < 0 is left)",
                "tr_s": "seconds",
            },
            "brain": {"centre_mm": [0.0, 0.0, 0.0], "semi_axes_mm": self.semi_axes_mm.tolist()},
            "effects": {
                "face": {
                    "preferred": "face",
                    "contrast": "face > house",
                    "peak_pct": params["effect_pct"],
                },
                "house": {
                    "preferred": "house",
                    "contrast": "house > face",
                    "peak_pct": params["effect_pct"],
                },
                "visual": {
                    "region": "mask_vt",
                    "conditions": "all but rest",
                    "pct": params["visual_pct"],
                },
            },
            "regions": self.regions,
            "n_voxels": {
                "brain_mask": int(self.brain.sum()),
                "mask_vt": int(self.mask_vt.sum()),
                "truth_face": counts["face"],
                "truth_house": counts["house"],
            },
            "files": dict(SUBJECT_FILES),
        }


def _check_triplet(name: str, value, *, integer: bool) -> tuple:
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    ok = len(items) == 3 and all(
        (isinstance(v, int | np.integer) and not isinstance(v, bool))
        if integer
        else (isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool))
        for v in items
    )
    if not ok or not all(v > 0 for v in items):
        kind = "integers" if integer else "numbers"
        raise InvalidParameterError(f"{name}: expected 3 positive {kind}, got {value!r}")
    return tuple(int(v) for v in items) if integer else tuple(float(v) for v in items)


def _check_number(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidParameterError(f"{name}: expected a number, got {value!r}")
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        want = "a positive" if positive else "a non-negative"
        raise InvalidParameterError(f"{name}: expected {want} finite number, got {value!r}")
    return float(value)


def make_synthetic_subject(
    out_dir: str | os.PathLike,
    *,
    shape: tuple[int, int, int] = (40, 64, 64),
    n_volumes: int | None = None,
    voxel_size_mm: tuple[float, float, float] = (3.5, 3.75, 3.75),
    tr_s: float = 2.5,
    seed: int = 0,
    effect_pct: float = 2.0,
    visual_pct: float = 0.5,
    noise_pct: float = 1.5,
    run_offset_pct: float = 0.3,
    drift_pct: float = 0.2,
    hrf: bool = True,
    vt_scale: float = 1.0,
    regions_per_hemisphere: int = 1,
    dtype: str = "int16",
    scl_slope: float = 1.0,
    scl_inter: float = 0.0,
    overwrite: bool = False,
    progress: bool = False,
) -> SyntheticSubject:
    """Write a synthetic Haxby-like subject with planted face and house regions.

    Parameters
    ----------
    out_dir : str or path-like
        Subject folder to create (parents are created too).
    shape : tuple of 3 int
        Grid size ``(x, y, z)`` in voxels.
    n_volumes : int, optional
        Number of volumes. Default 1452 (the whole real Haxby sequence, 12 runs
        of 121); fewer gives a prefix of the sequence, more repeats it.
    voxel_size_mm : tuple of 3 float
        Voxel size in mm, on the diagonal of the RAS affine.
    tr_s : float
        Repetition time in seconds (header ``pixdim[4]`` and HRF sampling).
    seed : int
        Random seed (non-negative); the files are identical for equal seeds
        and parameters.
    effect_pct : float
        Face- (house-) selective response at the centre of a planted face
        (house) region, in percent signal change of the baseline.
    visual_pct : float
        Response of the whole VT mask to every non-rest condition, in percent.
    noise_pct : float
        Standard deviation of the white noise inside the brain, in percent of
        the baseline.
    run_offset_pct : float
        Standard deviation of each run's mean signal offset, in percent of the
        baseline.
    drift_pct : float
        Standard deviation of each run's linear drift (start to end) and
        quadratic drift (ends to middle), in percent of the baseline.
    hrf : bool
        Convolve the block regressors with a double-gamma HRF (per run).
    vt_scale : float
        Scale of the ventral-temporal ellipsoids' semi-axes (1: ~19 x 31 x 13 mm each
        on a real-sized brain; 2.3 on the 2 mm MNI grid 97x115x97 gives a mask of
        ~100k voxels). The mask is cut to the brain.
    regions_per_hemisphere : int
        Planted face regions and house regions per hemisphere: 1 (the default)
        gives the four lateral-fusiform and parahippocampal blobs; more are placed
        at random (from ``seed``) inside the VT mask, apart from each other, and
        need a larger ``vt_scale``.
    dtype : {"int16", "float32"}
        Data type of ``bold.nii.gz``.
    scl_slope, scl_inter : float
        NIfTI scaling of int16 data (as fMRIPrep writes it): the file stores
        ``rint((value - scl_inter) / scl_slope)`` and its header the two factors,
        so readers see ``stored * scl_slope + scl_inter``. Default: unscaled.
    overwrite : bool
        Replace existing files of a subject in ``out_dir``.
    progress : bool
        Show a progress bar (stderr) while the BOLD series is written.

    Returns
    -------
    SyntheticSubject
        Paths of ``bold.nii.gz``, ``labels.txt``, ``mask_vt.nii.gz``,
        ``brain_mask.nii.gz``, ``truth_face.nii.gz``, ``truth_house.nii.gz`` and
        ``truth.json``.

    Raises
    ------
    InvalidParameterError
        A parameter is out of range, or the grid is too coarse for the regions.
    OutputExistsError
        ``out_dir`` already holds subject files and ``overwrite`` is false.

    Notes
    -----
    Every file is written to a temporary name and renamed into place;
    ``truth.json`` is written last, so its presence marks a complete subject.
    """
    shape = _check_triplet("shape", shape, integer=True)
    voxel_size_mm = _check_triplet("voxel_size_mm", voxel_size_mm, integer=False)
    tr_s = _check_number("tr_s", tr_s, positive=True)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidParameterError(f"seed: expected a non-negative integer, got {seed!r}")
    seed = int(seed)
    effect_pct = _check_number("effect_pct", effect_pct)
    visual_pct = _check_number("visual_pct", visual_pct)
    noise_pct = _check_number("noise_pct", noise_pct)
    run_offset_pct = _check_number("run_offset_pct", run_offset_pct)
    drift_pct = _check_number("drift_pct", drift_pct)
    vt_scale = check_real(vt_scale, "vt_scale", positive=True)
    regions_per_hemisphere = check_int(regions_per_hemisphere, "regions_per_hemisphere", minimum=1)
    hrf = check_bool(hrf, "hrf")
    overwrite = check_bool(overwrite, "overwrite")
    progress = check_bool(progress, "progress")
    check_choice(dtype, "dtype", ("int16", "float32"))
    scl_slope = check_real(scl_slope, "scl_slope", positive=True)
    scl_inter = check_real(scl_inter, "scl_inter")
    if dtype != "int16" and (scl_slope, scl_inter) != (1.0, 0.0):
        raise InvalidParameterError(
            f"scl_slope, scl_inter: only int16 data is scaled, got dtype={dtype!r} with "
            f"scl_slope={scl_slope:g}, scl_inter={scl_inter:g}",
            param="scl_slope",
        )

    root = Path(out_dir)
    paths = {key: root / name for key, name in SUBJECT_FILES.items()}
    existing = [p.name for p in paths.values() if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{root}: already holds {existing}; pass overwrite=True to replace them "
            "or choose another folder"
        )
    if existing and not _is_synthetic_subject(root):
        raise OutputError(
            f"out_dir {root}: holds {existing}, which roidask did not write (no {MARKER} of a "
            "synthetic subject); roidask only replaces its own files, choose another folder",
            param="out_dir",
        )

    model = _Model(
        shape=shape,
        voxel_size_mm=voxel_size_mm,
        n_volumes=n_volumes,
        tr_s=tr_s,
        seed=seed,
        effect_pct=effect_pct,
        visual_pct=visual_pct,
        noise_pct=noise_pct,
        run_offset_pct=run_offset_pct,
        drift_pct=drift_pct,
        hrf=bool(hrf),
        vt_scale=vt_scale,
        regions_per_hemisphere=int(regions_per_hemisphere),
        dtype=dtype,
        scl_slope=scl_slope,
        scl_inter=scl_inter,
    )
    root.mkdir(parents=True, exist_ok=True)
    # ownership first (the files listed are roidask's from here on), truth.json last
    record = {
        "written_by": "roidask",
        "kind": SYNTHETIC_KIND,
        "files": list(SUBJECT_FILES.values()),
    }
    write_text(root / MARKER, json.dumps(record, indent=2) + "\n")
    if paths["truth"].exists():  # overwrite: the subject is incomplete until rewritten
        paths["truth"].unlink()

    header = nib.Nifti1Header()
    header.set_xyzt_units(xyz="mm", t="sec")
    for key, arr in (
        ("brain_mask", model.brain),
        ("mask_vt", model.mask_vt),
        ("truth_face", model.truth["face"]),
        ("truth_house", model.truth["house"]),
    ):
        write_nifti(
            arr.astype(np.uint8), paths[key], affine=model.affine, header=header, overwrite=True
        )

    lines = [f"{c} {r}" for c, r in zip(model.conditions, model.runs, strict=True)]
    write_text(paths["labels"], "labels chunks\n" + "\n".join(lines) + "\n")

    _write_bold(model, paths["bold"], header=header, tr_s=tr_s, progress=progress)

    params = {
        "shape": list(shape),
        "n_volumes": model.n_volumes,
        "voxel_size_mm": list(voxel_size_mm),
        "tr_s": tr_s,
        "seed": seed,
        "effect_pct": effect_pct,
        "visual_pct": visual_pct,
        "noise_pct": noise_pct,
        "run_offset_pct": run_offset_pct,
        "drift_pct": drift_pct,
        "hrf": bool(hrf),
        "vt_scale": vt_scale,
        "regions_per_hemisphere": int(regions_per_hemisphere),
        "dtype": dtype,
        "scl_slope": scl_slope,
        "scl_inter": scl_inter,
    }
    write_text(paths["truth"], json.dumps(model.truth_record(**params), indent=2) + "\n")
    return SyntheticSubject(root=root, seed=seed, **paths)


def _is_synthetic_subject(root: Path) -> bool:
    """``root``'s subject files are roidask's: its marker, or (written before markers) the
    ``truth.json`` this generator writes last."""
    marker = read_marker(root)
    if marker is not None:
        return marker["kind"] == SYNTHETIC_KIND
    try:
        truth = json.loads((root / SUBJECT_FILES["truth"]).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(truth, dict) and truth.get("generator") == _GENERATOR


def _write_bold(
    model: _Model, path: Path, *, header: nib.Nifti1Header, tr_s: float, progress: bool
) -> None:
    """Stream the 4D series: dask tasks of a few volumes, written block by block."""
    x, y, z = model.shape
    bar = Progress(model.n_volumes, f"{path.name}", enabled=progress)
    lock = threading.Lock()

    def generate(start: int, stop: int) -> np.ndarray:
        block = model.volumes(start, stop)
        with lock:
            bar.update(stop - start)
        return block

    parts = [
        da.from_delayed(
            dask.delayed(generate, pure=True)(start, min(start + _TASK_VOLUMES, model.n_volumes)),
            shape=(x, y, z, min(start + _TASK_VOLUMES, model.n_volumes) - start),
            dtype=model.dtype,
        )
        for start in range(0, model.n_volumes, _TASK_VOLUMES)
    ]
    data = da.concatenate(parts, axis=3)
    with bar, dask.config.set(scheduler="threads"):
        write_nifti(
            data,
            path,
            affine=model.affine,
            header=header,
            dtype=model.dtype,
            block_volumes=_BLOCK_VOLUMES,
            tr_s=tr_s,
            scl_slope=model.scl_slope,
            scl_inter=model.scl_inter,
            overwrite=True,
        )


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    n_subjects: int,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    **subject_options,
) -> list[SyntheticSubject]:
    """Write several synthetic subjects into ``out_dir/sub-01``, ``sub-02``, ...

    Parameters
    ----------
    out_dir : str or path-like
        Dataset folder.
    n_subjects : int
        Number of subjects (positive).
    seed : int
        Base seed; subject ``i`` (1-based) uses ``seed * 1000 + i - 1``, so
        ``sub-01`` of seed 0 equals ``make_synthetic_subject(..., seed=0)``.
    overwrite : bool
        Replace existing subject files.
    progress : bool
        Show one progress bar per subject (stderr).
    **subject_options
        Keyword options of :func:`make_synthetic_subject` (``shape``,
        ``n_volumes``, ``effect_pct``, ...), the same for every subject.

    Returns
    -------
    list of SyntheticSubject
        One record per subject, in order.
    """
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, int) or n_subjects < 1:
        raise InvalidParameterError(f"n_subjects: expected a positive integer, got {n_subjects!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidParameterError(f"seed: expected a non-negative integer, got {seed!r}")
    overwrite = check_bool(overwrite, "overwrite")
    progress = check_bool(progress, "progress")
    root = Path(out_dir)
    width = max(2, len(str(n_subjects)))
    return [
        make_synthetic_subject(
            root / f"sub-{i:0{width}d}",
            seed=seed * 1000 + i - 1,
            overwrite=overwrite,
            progress=progress,
            **subject_options,
        )
        for i in range(1, n_subjects + 1)
    ]
