"""Lazy voxelwise statistics over time: mean/std/tSNR maps, t-tests, one-way F-test.

Everything is built on :func:`condition_moments`, one pass over the BOLD data
(a dask tree reduction along time) giving, per voxel and condition, the number
of volumes, the mean and the sum of squared deviations ``m2``. Each time chunk
contributes its own exact two-pass moments in float64 and partial moments are
merged pairwise with Chan et al.'s formula, so the result is numerically stable
(int16 data around 10000 with a variance of 1e-2 is fine) and does not depend
on the chunking beyond float64 rounding.

The tests are those of :func:`scipy.stats.ttest_ind` (Student and Welch),
:func:`scipy.stats.ttest_1samp` and :func:`scipy.stats.f_oneway` /
:func:`sklearn.feature_selection.f_classif`, with the same conventions for
constant voxels (``t = ±inf, p = 0`` when only the means differ, NaN when
nothing differs). Besides ``p`` every test returns ``logp = -log10(p)``
computed from the log of the regularized incomplete beta function, so it stays
finite (and increasing in ``|t|`` or ``F``) far below the smallest float64 ``p``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from functools import partial

import dask.array as da
import numpy as np
import xarray as xr
from scipy import special

from roidask.exceptions import ConditionError, InvalidParameterError
from roidask.io.image import SPATIAL_DIMS, as_image, grid_attrs

__all__ = [
    "clip_logp",
    "condition_moments",
    "ftest_img",
    "mean_img",
    "std_img",
    "tsnr_img",
    "ttest_1samp_img",
    "ttest_img",
]

#: Partial moments merged per node of the reduction tree.
_SPLIT_EVERY = 8
#: Below this p, -log10(p) comes from the continued fraction of log I_x(a, b).
_LOGP_SWITCH = 1e-100
_LN10 = float(np.log(10.0))


# -- argument checks ---------------------------------------------------------------------
def _volume_conditions(bold: xr.DataArray) -> np.ndarray:
    if "condition" not in bold.coords or bold["condition"].dims != ("time",):
        raise ConditionError(
            "img: the BOLD series has no 'condition' coordinate along time; load it with "
            "labels (roidask.io.bold_from_nifti(..., labels=...)) to use conditions"
        )
    return np.asarray(bold["condition"].values).astype(str)


def _check_conditions(
    bold: xr.DataArray, conditions, *, param: str, min_count: int = 1
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Validate condition names; return them, the volume indices used and per-volume codes."""
    if isinstance(conditions, str) or not np.iterable(conditions):
        what = f"the string {conditions!r}" if isinstance(conditions, str) else repr(conditions)
        raise InvalidParameterError(
            f"{param}: expected a list or tuple of condition names, got {what}"
        )
    names = [str(c) if isinstance(c, np.str_) else c for c in conditions]
    bad = [c for c in names if not isinstance(c, str)]
    if bad:
        raise InvalidParameterError(
            f"{param}: condition names must be strings, got {bad!r} in {names!r}"
        )
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise InvalidParameterError(f"{param}: condition(s) {dupes} given more than once")
    labels = _volume_conditions(bold)
    known = sorted(set(labels.tolist()))
    unknown = [c for c in names if c not in known]
    if unknown:
        raise ConditionError(f"{param}: unknown condition(s) {unknown}; the data has {known}")
    counts = {c: int(np.count_nonzero(labels == c)) for c in names}
    few = {c: n for c, n in counts.items() if n < min_count}
    if few:
        detail = ", ".join(f"{c!r} has {n}" for c, n in few.items())
        raise ConditionError(
            f"{param}: each condition needs at least {min_count} volumes for this test; "
            f"{detail} volume(s)"
        )
    index = np.flatnonzero(np.isin(labels, names))
    lookup = {c: k for k, c in enumerate(names)}
    codes = np.asarray([lookup[c] for c in labels[index]], dtype=np.int64)
    return names, index, codes


def _check_condition_name(condition, *, param: str = "condition") -> str:
    if not isinstance(condition, str):
        raise InvalidParameterError(
            f"{param}: expected one condition name (str), got {condition!r}"
        )
    return condition


def _check_real(value, *, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise InvalidParameterError(f"{param}: expected a finite number, got {value!r}")
    return float(value)


# -- one-pass moments --------------------------------------------------------------------
def _volume_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass float64 mean and sum of squared deviations over the last axis of ``x``.

    Deviations are formed one volume at a time: float64 accumulators without a
    float64 copy of ``x`` (fastest when each volume is contiguous, Fortran order).
    """
    mean = x.mean(axis=-1, dtype=np.float64)
    m2 = np.zeros_like(mean)
    dev = np.empty_like(mean)
    for t in range(x.shape[-1]):
        np.subtract(x[..., t], mean, out=dev)
        dev *= dev
        m2 += dev
    return mean, m2


def _chunk_moments(block: np.ndarray, codes: np.ndarray, *, n_groups: int) -> np.ndarray:
    """Exact (two-pass, float64) mean, m2 and count per group of one time chunk.

    Returns shape ``(x, y, z, 1, n_groups, 3)``: ``[..., 0]`` mean, ``[..., 1]`` m2,
    ``[..., 2]`` count (broadcast over voxels so partials can be merged blindly).
    """
    out = np.zeros((*block.shape[:3], 1, n_groups, 3), dtype=np.float64)
    for k in range(n_groups):
        idx = np.flatnonzero(codes == k)
        if idx.size == 0:
            continue
        x = block[..., idx] if idx.size < block.shape[3] else block
        out[..., 0, k, 0], out[..., 0, k, 1] = _volume_moments(x)
        out[..., 0, k, 2] = idx.size
    return out


def _merge_moments(parts: np.ndarray, axis, keepdims: bool) -> np.ndarray:
    """Merge partial (mean, m2, count) along ``axis`` (Chan, Golub & LeVeque 1979)."""
    axis = axis[0] if isinstance(axis, tuple) else axis
    mean, m2, n = parts[..., 0], parts[..., 1], parts[..., 2]
    total = n.sum(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        grand = np.where(total > 0, (n * mean).sum(axis=axis, keepdims=True) / total, 0.0)
    dev = np.where(n > 0, mean - grand, 0.0)
    m2_total = m2.sum(axis=axis, keepdims=True) + (n * dev * dev).sum(axis=axis, keepdims=True)
    out = np.stack([grand, m2_total, total], axis=-1)
    return out if keepdims else np.squeeze(out, axis=axis)


def _identity(x, axis=None, keepdims=True):
    return x


def _moments(data: da.Array, codes: np.ndarray, n_groups: int) -> da.Array:
    """Lazy ``(x, y, z, n_groups, 3)`` float64 array of mean, m2, count per group."""
    codes_da = da.from_array(codes, chunks=(data.chunks[3],))
    partials = da.blockwise(
        partial(_chunk_moments, n_groups=n_groups),
        "ijktgm",
        data,
        "ijkt",
        codes_da,
        "t",
        new_axes={"g": n_groups, "m": 3},
        adjust_chunks={"t": 1},
        dtype=np.float64,
        meta=np.empty((0,) * 6, dtype=np.float64),
    )
    return da.reduction(
        partials,
        chunk=_identity,
        combine=_merge_moments,
        aggregate=_merge_moments,
        axis=3,
        keepdims=False,
        dtype=np.float64,
        split_every=_SPLIT_EVERY,
        concatenate=True,
        meta=np.empty((0,) * 5, dtype=np.float64),
        name="condition-moments",
    )


def _selected_moments(bold: xr.DataArray, index: np.ndarray, codes: np.ndarray, n_groups):
    data: da.Array = bold.data
    if index.size != bold.sizes["time"]:
        data = data[..., index]
    return _moments(data, codes, n_groups)


def _map(bold: xr.DataArray, arr: da.Array, name: str, **attrs) -> xr.DataArray:
    return xr.DataArray(arr, dims=SPATIAL_DIMS, name=name, attrs={**grid_attrs(bold), **attrs})


def condition_moments(img, *, conditions: Sequence[str]) -> xr.Dataset:
    """Per-condition voxelwise count, mean and sum of squared deviations, in one pass.

    Parameters
    ----------
    img : path, nibabel image or xarray.DataArray
        4D BOLD series with a ``condition`` coordinate along time.
    conditions : sequence of str
        Condition names (at least one), each present in the data.

    Returns
    -------
    xarray.Dataset
        ``count (condition)``: number of volumes (int64, known without computing);
        ``mean (x, y, z, condition)``: mean signal, in the data's units;
        ``m2 (x, y, z, condition)``: sum of squared deviations from that mean,
        in squared data units. ``mean`` and ``m2`` are float64 and lazy, from a
        single dask reduction over time (float64 accumulators, chunk-wise
        two-pass moments merged pairwise, so large offsets are harmless).
        The sample variance is ``m2 / (count - 1)``.

    Raises
    ------
    ImageDimensionError
        ``img`` is not 4D.
    ConditionError
        A condition is not in the data (the message lists the known ones), or
        the series has no ``condition`` coordinate.
    InvalidParameterError
        ``conditions`` is not a non-empty list of distinct names.
    """
    bold = as_image(img, ndim=4, param="img")
    names, index, codes = _check_conditions(bold, conditions, param="conditions")
    if not names:
        raise InvalidParameterError("conditions: expected at least one condition name, got []")
    mom = _selected_moments(bold, index, codes, len(names))
    counts = np.bincount(codes, minlength=len(names)).astype(np.int64)
    dims = (*SPATIAL_DIMS, "condition")
    grid = grid_attrs(bold)
    return xr.Dataset(
        {
            "count": ("condition", counts, {"units": "volumes"}),
            "mean": (dims, mom[..., 0], {**grid, "units": "signal"}),
            "m2": (dims, mom[..., 1], {**grid, "units": "signal^2"}),
        },
        coords={"condition": ("condition", np.asarray(names, dtype=str))},
        attrs=grid,
    )


# -- mean / std / tSNR -------------------------------------------------------------------
def _time_moments(img, condition):
    bold = as_image(img, ndim=4, param="img")
    if condition is None:
        n = bold.sizes["time"]
        index = np.arange(n)
        codes = np.zeros(n, dtype=np.int64)
    else:
        name = _check_condition_name(condition)
        _, index, codes = _check_conditions(bold, [name], param="condition")
    return bold, _selected_moments(bold, index, codes, 1)[..., 0, :], int(index.size)


def mean_img(img, *, condition: str | None = None) -> xr.DataArray:
    """Voxelwise mean over time (optionally over the volumes of one condition).

    Parameters
    ----------
    img : path, nibabel image or xarray.DataArray
        4D BOLD series.
    condition : str, optional
        Only average the volumes with this condition label.

    Returns
    -------
    xarray.DataArray
        3D float32 map (accumulated in float64), in the data's units, lazy.

    Raises
    ------
    ImageDimensionError
        ``img`` is not 4D.
    ConditionError
        ``condition`` is not in the data (the message lists the known ones).
    """
    bold = as_image(img, ndim=4, param="img")
    data: da.Array = bold.data
    if condition is not None:
        name = _check_condition_name(condition)
        _, index, _ = _check_conditions(bold, [name], param="condition")
        if index.size != bold.sizes["time"]:
            data = data[..., index]
    n = int(data.shape[3])
    # A plain float64 sum (numpy converts in small buffers, no float64 copy of the
    # chunk) is all a mean needs; the moments pass is for variances.
    total = data.sum(axis=3, dtype=np.float64, split_every=_SPLIT_EVERY)
    return _map(
        bold, (total / n).astype(np.float32), "mean", condition=condition or "", n_volumes=n
    )


def _std_block(mom: np.ndarray, *, n: int, ddof: int) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.maximum(mom[..., 1], 0.0) / (n - ddof))


def std_img(img, *, condition: str | None = None, ddof: int = 0) -> xr.DataArray:
    """Voxelwise standard deviation over time (optionally within one condition).

    Parameters
    ----------
    img : path, nibabel image or xarray.DataArray
        4D BOLD series.
    condition : str, optional
        Only use the volumes with this condition label.
    ddof : int, default 0
        Delta degrees of freedom: the divisor is ``n_volumes - ddof`` (0 as numpy
        and nilearn, 1 for the sample standard deviation).

    Returns
    -------
    xarray.DataArray
        3D float32 map (computed in float64), in the data's units, lazy.

    Raises
    ------
    ImageDimensionError
        ``img`` is not 4D.
    ConditionError
        ``condition`` is not in the data.
    InvalidParameterError
        ``ddof`` is not an integer in ``[0, n_volumes)``.
    """
    if isinstance(ddof, bool) or not isinstance(ddof, numbers.Integral) or ddof < 0:
        raise InvalidParameterError(f"ddof: expected an integer >= 0, got {ddof!r}")
    bold, mom, n = _time_moments(img, condition)
    if n - ddof <= 0:
        raise InvalidParameterError(
            f"ddof: must be smaller than the number of volumes ({n}), got {ddof}"
        )
    std = mom.map_blocks(_std_block, n=n, ddof=int(ddof), drop_axis=3, dtype=np.float64)
    return _map(
        bold, std.astype(np.float32), "std", condition=condition or "", ddof=int(ddof), n_volumes=n
    )


def _tsnr_block(mom: np.ndarray, *, n: int) -> np.ndarray:
    std = np.sqrt(np.maximum(mom[..., 1], 0.0) / n)
    out = np.zeros_like(std)
    np.divide(mom[..., 0], std, out=out, where=std > 0)
    return out


def tsnr_img(img, *, condition: str | None = None) -> xr.DataArray:
    """Voxelwise temporal signal-to-noise ratio, mean / std over time (ddof 0).

    Parameters
    ----------
    img : path, nibabel image or xarray.DataArray
        4D BOLD series.
    condition : str, optional
        Only use the volumes with this condition label.

    Returns
    -------
    xarray.DataArray
        3D float32 map (unitless, computed in float64), lazy. Voxels whose
        standard deviation is exactly 0 (e.g. background) get 0, as nipype's
        and fMRIPrep's tSNR maps.

    Raises
    ------
    ImageDimensionError
        ``img`` is not 4D.
    ConditionError
        ``condition`` is not in the data.
    """
    bold, mom, n = _time_moments(img, condition)
    tsnr = mom.map_blocks(_tsnr_block, n=n, drop_axis=3, dtype=np.float64)
    return _map(bold, tsnr.astype(np.float32), "tsnr", condition=condition or "", n_volumes=n)


# -- p-values without underflow ----------------------------------------------------------
def _log_betainc_cf(a, b, logx, log1mx, *, max_iter: int = 500):
    """``log I_x(a, b)`` by the continued fraction (modified Lentz), for small ``x``.

    Accurate to ~1e-12 relative where ``x < (a + 1) / (a + b + 2)``, the region of
    tiny tail probabilities; ``logx = -inf`` gives ``-inf``.
    """
    tiny = 1e-300
    x = np.exp(logx)
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    done = np.zeros(x.shape, dtype=bool)
    for m in range(1, max_iter + 1):
        m2 = 2.0 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1.0 + aa / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            delta = d * c
            h = np.where(done, h, h * delta)
        done |= np.abs(delta - 1.0) < 1e-15
        if done.all():
            break
    return a * logx + b * log1mx - special.betaln(a, b) - np.log(a) + np.log(h)


def _neg_log10_betainc(p, a, b, logx, log1mx):
    """``-log10 p`` for ``p = I_x(a, b)``: from ``p`` where it is not tiny, else from logs."""
    with np.errstate(all="ignore"):
        out = -np.log10(p)
        small = ~(p >= _LOGP_SWITCH) & np.isfinite(logx) & ~np.isnan(p)
        if np.any(small):
            aa, bb, lx, l1 = (np.broadcast_to(v, p.shape)[small] for v in (a, b, logx, log1mx))
            out[small] = -_log_betainc_cf(aa, bb, lx, l1) / _LN10
    return out


def _t_pvalues(t, df):
    """Two-sided p and -log10 p of Student's t with ``df`` degrees of freedom."""
    with np.errstate(all="ignore"):
        abs_t = np.abs(t)
        p = 2.0 * special.stdtr(df, -abs_t)
        # p = I_x(df/2, 1/2) with x = df / (df + t^2), in logs that do not overflow.
        r = df / (abs_t * abs_t)
        log1mx = -np.log1p(r)
        logx = -(2.0 * np.log(abs_t) - np.log(df)) + log1mx
        logp = _neg_log10_betainc(p, df / 2.0, np.full_like(df, 0.5), logx, log1mx)
        logp = np.where(np.isinf(abs_t) & ~np.isnan(df), np.inf, logp)
    return p, logp


def _f_pvalues(f, dfn, dfd):
    """Upper-tail p and -log10 p of the F distribution with ``(dfn, dfd)`` dof."""
    with np.errstate(all="ignore"):
        p = special.fdtrc(dfn, dfd, f)
        # p = I_x(dfd/2, dfn/2) with x = dfd / (dfd + dfn F).
        r = dfd / (dfn * f)
        log1mx = -np.log1p(r)
        logx = -(np.log(dfn) + np.log(f) - np.log(dfd)) + log1mx
        a = np.full_like(f, dfd / 2.0)
        b = np.full_like(f, dfn / 2.0)
        logp = _neg_log10_betainc(p, a, b, logx, log1mx)
        logp = np.where(np.isposinf(f), np.inf, logp)
    return p, logp


# -- tests ------------------------------------------------------------------------------------
def _ttest_block(mom: np.ndarray, *, na: int, nb: int, equal_var: bool) -> np.ndarray:
    mean_a, mean_b = mom[..., 0, 0], mom[..., 1, 0]
    m2_a, m2_b = mom[..., 0, 1], mom[..., 1, 1]
    with np.errstate(all="ignore"):
        if equal_var:
            df = np.full_like(mean_a, float(na + nb - 2))
            pooled = (m2_a + m2_b) / df
            denom = np.sqrt(pooled * (1.0 / na + 1.0 / nb))
        else:
            va, vb = m2_a / (na - 1) / na, m2_b / (nb - 1) / nb
            df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
            df = np.where(np.isnan(df), 1.0, df)  # as scipy: only 0/0 when both are constant
            denom = np.sqrt(va + vb)
        t = (mean_a - mean_b) / denom
    p, logp = _t_pvalues(t, df)
    return np.stack([t, p, logp, df], axis=-1)


def _ttest_1samp_block(mom: np.ndarray, *, n: int, popmean: float) -> np.ndarray:
    mean, m2 = mom[..., 0, 0], mom[..., 0, 1]
    df = np.full_like(mean, float(n - 1))
    with np.errstate(all="ignore"):
        t = (mean - popmean) / np.sqrt(m2 / (n - 1) / n)
    p, logp = _t_pvalues(t, df)
    return np.stack([t, p, logp, df], axis=-1)


def _stat_dataset(bold, out: da.Array, names: Sequence[str], attrs: dict, units: dict):
    grid = grid_attrs(bold)
    data = {
        name: (SPATIAL_DIMS, out[..., i], {**grid, "units": units.get(name, "1")})
        for i, name in enumerate(names)
    }
    return xr.Dataset(data, attrs={**grid, **attrs})


def ttest_img(
    img, *, contrast: Sequence[str] = ("face", "house"), equal_var: bool = True
) -> xr.Dataset:
    """Voxelwise two-sample t-test between two conditions, as :func:`scipy.stats.ttest_ind`.

    Parameters
    ----------
    img : path, nibabel image or xarray.DataArray
        4D BOLD series with a ``condition`` coordinate.
    contrast : (str, str), default ("face", "house")
        Conditions ``(a, b)``; ``t > 0`` where ``a`` has the higher mean.
    equal_var : bool, default True
        True: Student's test with pooled variance (``df = n_a + n_b - 2``), the
        seed's default. False: Welch's test (per-voxel Welch-Satterthwaite ``df``).

    Returns
    -------
    xarray.Dataset
        Lazy float64 3D maps ``t``, ``p`` (two-sided), ``logp`` (``-log10 p``,
        unclipped, finite wherever ``t`` is, even far below ``p = 1e-300``) and
        ``df`` (degrees of freedom). Constant voxels follow scipy: NaN where
        both conditions have the same constant value, ``±inf`` (``p = 0``,
        ``logp = inf``) where only the means differ. Computed from one
        :func:`condition_moments` pass over the volumes of both conditions.

    Raises
    ------
    ImageDimensionError
        ``img`` is not 4D.
    ConditionError
        A condition is unknown (the known ones are listed) or has < 2 volumes.
    InvalidParameterError
        ``contrast`` is not two distinct names, or ``equal_var`` is not a bool.
    """
    bold = as_image(img, ndim=4, param="img")
    pair = None if isinstance(contrast, str) or not np.iterable(contrast) else list(contrast)
    if pair is None or len(pair) != 2:
        raise InvalidParameterError(
            f"contrast: expected two condition names (a, b), got {contrast!r}"
        )
    if not isinstance(equal_var, bool | np.bool_):
        raise InvalidParameterError(f"equal_var: expected True or False, got {equal_var!r}")
    names, index, codes = _check_conditions(bold, pair, param="contrast", min_count=2)
    na, nb = (int(n) for n in np.bincount(codes, minlength=2))
    mom = _selected_moments(bold, index, codes, 2)
    out = da.blockwise(
        partial(_ttest_block, na=na, nb=nb, equal_var=bool(equal_var)),
        "ijks",
        mom,
        "ijkgm",
        new_axes={"s": 4},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0,) * 4, dtype=np.float64),
    )
    return _stat_dataset(
        bold,
        out,
        ("t", "p", "logp", "df"),
        {
            "test": "student" if equal_var else "welch",
            "contrast": list(names),
            "n_volumes": [na, nb],
        },
        {"logp": "-log10(p)", "df": "degrees of freedom"},
    )


def ttest_1samp_img(img, *, condition: str, popmean: float = 0.0) -> xr.Dataset:
    """Voxelwise one-sample t-test of one condition's volumes, as :func:`scipy.stats.ttest_1samp`.

    Parameters
    ----------
    img : path, nibabel image or xarray.DataArray
        4D BOLD series with a ``condition`` coordinate.
    condition : str
        The condition whose volumes are tested.
    popmean : float, default 0.0
        Mean under the null hypothesis, in the data's units.

    Returns
    -------
    xarray.Dataset
        Lazy float64 3D maps ``t``, ``p`` (two-sided), ``logp`` (``-log10 p``,
        unclipped) and ``df`` (``n - 1``). Constant voxels: ``±inf`` if the
        value differs from ``popmean``, NaN if it equals it (as scipy).

    Raises
    ------
    ImageDimensionError
        ``img`` is not 4D.
    ConditionError
        ``condition`` is unknown or has < 2 volumes.
    InvalidParameterError
        ``condition`` is not a string or ``popmean`` not a finite number.
    """
    bold = as_image(img, ndim=4, param="img")
    name = _check_condition_name(condition)
    popmean = _check_real(popmean, param="popmean")
    _, index, codes = _check_conditions(bold, [name], param="condition", min_count=2)
    n = int(index.size)
    mom = _selected_moments(bold, index, codes, 1)
    out = da.blockwise(
        partial(_ttest_1samp_block, n=n, popmean=popmean),
        "ijks",
        mom,
        "ijkgm",
        new_axes={"s": 4},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0,) * 4, dtype=np.float64),
    )
    return _stat_dataset(
        bold,
        out,
        ("t", "p", "logp", "df"),
        {"test": "one-sample", "condition": name, "popmean": popmean, "n_volumes": n},
        {"logp": "-log10(p)", "df": "degrees of freedom"},
    )


def _ftest_block(mom: np.ndarray, *, counts: np.ndarray) -> np.ndarray:
    means, m2 = mom[..., 0], mom[..., 1]
    n_total = counts.sum()
    k = counts.size
    grand = (means * counts).sum(axis=-1, keepdims=True) / n_total
    ss_between = (counts * (means - grand) ** 2).sum(axis=-1)
    ss_within = m2.sum(axis=-1)
    dfn, dfd = float(k - 1), float(n_total - k)
    with np.errstate(all="ignore"):
        f = (ss_between / dfn) / (ss_within / dfd)
    p, logp = _f_pvalues(f, dfn, dfd)
    return np.stack([f, p, logp], axis=-1)


def ftest_img(img, *, conditions: Sequence[str]) -> xr.Dataset:
    """Voxelwise one-way ANOVA F-test across conditions, as :func:`scipy.stats.f_oneway`.

    Equal to :func:`sklearn.feature_selection.f_classif` with the volumes of
    ``conditions`` as samples and their conditions as classes.

    Parameters
    ----------
    img : path, nibabel image or xarray.DataArray
        4D BOLD series with a ``condition`` coordinate.
    conditions : sequence of str
        At least two distinct conditions (groups); a condition may have a
        single volume, but there must be more volumes than conditions.

    Returns
    -------
    xarray.Dataset
        Lazy float64 3D maps ``F``, ``p`` (upper tail) and ``logp``
        (``-log10 p``, unclipped), and scalar ``df_between`` (``k - 1``) and
        ``df_within`` (``n - k``). Constant voxels: ``F = inf`` (``p = 0``) when
        only the group means differ, NaN when all volumes are equal (as scipy).

    Raises
    ------
    ImageDimensionError
        ``img`` is not 4D.
    ConditionError
        A condition is unknown (the known ones are listed).
    InvalidParameterError
        Fewer than two distinct conditions, or no more volumes than conditions.
    """
    bold = as_image(img, ndim=4, param="img")
    names, index, codes = _check_conditions(bold, conditions, param="conditions")
    if len(names) < 2:
        raise InvalidParameterError(
            f"conditions: an F-test needs at least 2 conditions, got {names!r}"
        )
    counts = np.bincount(codes, minlength=len(names)).astype(np.float64)
    if index.size <= len(names):
        raise InvalidParameterError(
            f"conditions: an F-test needs more volumes ({index.size}) than conditions "
            f"({len(names)}) to estimate the within-condition variance"
        )
    mom = _selected_moments(bold, index, codes, len(names))
    out = da.blockwise(
        partial(_ftest_block, counts=counts),
        "ijks",
        mom,
        "ijkgm",
        new_axes={"s": 3},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0,) * 4, dtype=np.float64),
    )
    ds = _stat_dataset(
        bold,
        out,
        ("F", "p", "logp"),
        {
            "test": "one-way ANOVA",
            "conditions": list(names),
            "n_volumes": [int(c) for c in counts],
        },
        {"logp": "-log10(p)"},
    )
    ds["df_between"] = ((), np.float64(len(names) - 1), {"units": "degrees of freedom"})
    ds["df_within"] = ((), np.float64(index.size - len(names)), {"units": "degrees of freedom"})
    return ds


# -- the seed's -log10 p convention ------------------------------------------------------------
def clip_logp(logp, *, nan_to_zero: bool = True, clip: float | None = 10.0) -> xr.DataArray:
    """The seed pipeline's ``-log10 p`` map: NaN -> 0 and values above ``clip`` -> ``clip``.

    Parameters
    ----------
    logp : xarray.DataArray
        3D ``-log10 p`` map (e.g. ``ttest_img(bold)["logp"]``).
    nan_to_zero : bool, default True
        Replace NaN (constant voxels) with 0.
    clip : float or None, default 10.0
        Upper bound (``-log10 p`` units, 10 means ``p = 1e-10``); ``+inf`` becomes
        ``clip`` too. None: no clipping.

    Returns
    -------
    xarray.DataArray
        Lazy 3D map of the same type and grid.

    Raises
    ------
    InvalidParameterError
        ``clip`` is not a positive number or None, or ``nan_to_zero`` not a bool.
    """
    if clip is not None:
        clip = _check_real(clip, param="clip")
        if clip <= 0:
            raise InvalidParameterError(f"clip: expected a positive number or None, got {clip!r}")
    if not isinstance(nan_to_zero, bool | np.bool_):
        raise InvalidParameterError(f"nan_to_zero: expected True or False, got {nan_to_zero!r}")
    img = as_image(logp, ndim=3, param="logp")
    out = img
    if nan_to_zero:
        out = out.fillna(0)
    if clip is not None:
        out = out.clip(max=clip)
    return out.assign_attrs(img.attrs, logp_clip=clip if clip is not None else "none")
