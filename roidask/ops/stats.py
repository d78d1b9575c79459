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

from collections.abc import Sequence
from functools import partial

import dask.array as da
import numpy as np
import xarray as xr

from roidask._docs import fill_doc
from roidask._validate import (
    check_bool,
    check_condition_name,
    check_conditions,
    check_contrast,
    check_int,
    check_real,
    volume_conditions,
)
from roidask.exceptions import InvalidParameterError
from roidask.io.conversions import ImageLike, as_image
from roidask.io.grid import SPATIAL_DIMS, grid_attrs
from roidask.ops import moments as mom_ops
from roidask.ops.moments import FTest, Moments, TTest

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


#: Positions of the fields in stacked moments.
_COUNT, _MEAN, _M2 = (mom_ops.FIELDS.index(f) for f in ("count", "mean", "m2"))


def _check_conditions(bold: xr.DataArray, conditions, *, param: str, min_count: int = 1):
    return check_conditions(conditions, volume_conditions(bold), param=param, min_count=min_count)


# -- one-pass moments --------------------------------------------------------------------
def _chunk_moments(block: np.ndarray, codes: np.ndarray, *, n_groups: int) -> np.ndarray:
    """Exact (two-pass, float64) moments per group of one time chunk, stacked.

    Returns shape ``(x, y, z, 1, n_groups, 3)``, the fields last (see
    :data:`roidask.ops.moments.FIELDS`), counts broadcast over voxels so partials
    can be merged blindly.
    """
    out = np.zeros((*block.shape[:3], 1, n_groups, 3), dtype=np.float64)
    for k in range(n_groups):
        idx = np.flatnonzero(codes == k)
        if idx.size == 0:
            continue
        x = block[..., idx] if idx.size < block.shape[3] else block
        out[..., 0, k, :] = mom_ops.stack(mom_ops.moments_of(x))
    return out


def _merge_stacked(parts: np.ndarray, axis, keepdims: bool) -> np.ndarray:
    axis = axis[0] if isinstance(axis, tuple) else axis
    merged = mom_ops.merge_along(mom_ops.unstack(parts), axis, keepdims=keepdims)
    return mom_ops.stack(merged)


def _identity(x, axis=None, keepdims=True):
    return x


def _moments(data: da.Array, codes: np.ndarray, n_groups: int) -> da.Array:
    """Lazy ``(x, y, z, n_groups, 3)`` stacked moments (count, mean, m2) per group."""
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
        combine=_merge_stacked,
        aggregate=_merge_stacked,
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


@fill_doc
def condition_moments(img: ImageLike, *, conditions: Sequence[str]) -> xr.Dataset:
    """Per-condition voxelwise count, mean and sum of squared deviations, in one pass.

    Parameters
    ----------
    %(bold_img)s
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
    mom = _selected_moments(bold, index, codes, len(names))
    counts = np.bincount(codes, minlength=len(names)).astype(np.int64)
    dims = (*SPATIAL_DIMS, "condition")
    grid = grid_attrs(bold)
    return xr.Dataset(
        {
            "count": ("condition", counts, {"units": "volumes"}),
            "mean": (dims, mom[..., _MEAN], {**grid, "units": "signal"}),
            "m2": (dims, mom[..., _M2], {**grid, "units": "signal^2"}),
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
        name = check_condition_name(condition)
        _, index, codes = _check_conditions(bold, [name], param="condition")
    return bold, _selected_moments(bold, index, codes, 1)[..., 0, :], int(index.size)


def mean_img(img: ImageLike, *, condition: str | None = None) -> xr.DataArray:
    """Voxelwise mean over time (optionally over the volumes of one condition).

    Parameters
    ----------
    img : ImageLike
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
        name = check_condition_name(condition)
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
        return np.sqrt(np.maximum(mom[..., _M2], 0.0) / (n - ddof))


@fill_doc
def std_img(img: ImageLike, *, condition: str | None = None, ddof: int = 0) -> xr.DataArray:
    """Voxelwise standard deviation over time (optionally within one condition).

    Parameters
    ----------
    img : ImageLike
        4D BOLD series.
    %(condition)s
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
    ddof = check_int(ddof, "ddof", minimum=0)
    bold, mom, n = _time_moments(img, condition)
    if n - ddof <= 0:
        raise InvalidParameterError(
            f"ddof: must be smaller than the number of volumes ({n}), got {ddof}", param="ddof"
        )
    std = mom.map_blocks(_std_block, n=n, ddof=int(ddof), drop_axis=3, dtype=np.float64)
    return _map(
        bold, std.astype(np.float32), "std", condition=condition or "", ddof=int(ddof), n_volumes=n
    )


def _tsnr_block(mom: np.ndarray, *, n: int) -> np.ndarray:
    std = np.sqrt(np.maximum(mom[..., _M2], 0.0) / n)
    out = np.zeros_like(std)
    np.divide(mom[..., _MEAN], std, out=out, where=std > 0)
    return out


@fill_doc
def tsnr_img(img: ImageLike, *, condition: str | None = None) -> xr.DataArray:
    """Voxelwise temporal signal-to-noise ratio, mean / std over time (ddof 0).

    Parameters
    ----------
    img : ImageLike
        4D BOLD series.
    %(condition)s

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


# -- tests ------------------------------------------------------------------------------------
def _groups(mom: np.ndarray, counts) -> list[Moments]:
    """Per-group moments with scalar counts from stacked ``(..., n_groups, 3)`` moments."""
    return [Moments(int(n), mom[..., g, _MEAN], mom[..., g, _M2]) for g, n in enumerate(counts)]


def _ttest_block(mom: np.ndarray, *, na: int, nb: int, equal_var: bool) -> np.ndarray:
    a, b = _groups(mom, (na, nb))
    return np.stack(mom_ops.ttest_ind(a, b, equal_var=equal_var), axis=-1)


def _ttest_1samp_block(mom: np.ndarray, *, n: int, popmean: float) -> np.ndarray:
    (m,) = _groups(mom, (n,))
    return np.stack(mom_ops.ttest_1samp(m, popmean=popmean), axis=-1)


_UNITS = {"logp": "-log10(p)", "df": "degrees of freedom"}


def _test_dataset(bold, mom: da.Array, block_func, fields: Sequence[str], attrs: dict):
    """One lazy 3D map per field of a test computed blockwise from stacked moments."""
    out = da.blockwise(
        block_func,
        "ijks",
        mom,
        "ijkgm",
        new_axes={"s": len(fields)},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0,) * 4, dtype=np.float64),
    )
    grid = grid_attrs(bold)
    data = {
        name: (SPATIAL_DIMS, out[..., i], {**grid, "units": _UNITS.get(name, "1")})
        for i, name in enumerate(fields)
    }
    return xr.Dataset(data, attrs={**grid, **attrs})


@fill_doc
def ttest_img(
    img: ImageLike, *, contrast: Sequence[str] = ("face", "house"), equal_var: bool = True
) -> xr.Dataset:
    """Voxelwise two-sample t-test between two conditions, as :func:`scipy.stats.ttest_ind`.

    Parameters
    ----------
    %(bold_img)s
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
        A condition is unknown (the known ones are listed), or the test is not
        defined with its volumes: Student's needs at least 1 volume of each
        condition and 3 in all (a single volume is its condition's mean, the
        variance is pooled from the other), Welch's at least 2 of each.
    InvalidParameterError
        ``contrast`` is not two distinct names, or ``equal_var`` is not a bool.
    """
    bold = as_image(img, ndim=4, param="img")
    equal_var = check_bool(equal_var, "equal_var")
    names, index, codes = check_contrast(
        contrast,
        volume_conditions(bold),
        test="student" if equal_var else "welch",
        test_param="equal_var",
    )
    na, nb = (int(n) for n in np.bincount(codes, minlength=2))
    return _test_dataset(
        bold,
        _selected_moments(bold, index, codes, 2),
        partial(_ttest_block, na=na, nb=nb, equal_var=equal_var),
        TTest._fields,
        {
            "test": "student" if equal_var else "welch",
            "contrast": list(names),
            "n_volumes": [na, nb],
        },
    )


@fill_doc
def ttest_1samp_img(img: ImageLike, *, condition: str, popmean: float = 0.0) -> xr.Dataset:
    """Voxelwise one-sample t-test of one condition's volumes, as :func:`scipy.stats.ttest_1samp`.

    Parameters
    ----------
    %(bold_img)s
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
    name = check_condition_name(condition)
    popmean = check_real(popmean, "popmean")
    _, index, codes = _check_conditions(bold, [name], param="condition", min_count=2)
    n = int(index.size)
    return _test_dataset(
        bold,
        _selected_moments(bold, index, codes, 1),
        partial(_ttest_1samp_block, n=n, popmean=popmean),
        TTest._fields,
        {"test": "one-sample", "condition": name, "popmean": popmean, "n_volumes": n},
    )


def _ftest_block(mom: np.ndarray, *, counts: np.ndarray) -> np.ndarray:
    return np.stack(mom_ops.f_oneway(counts, mom[..., _MEAN], mom[..., _M2]), axis=-1)


@fill_doc
def ftest_img(img: ImageLike, *, conditions: Sequence[str]) -> xr.Dataset:
    """Voxelwise one-way ANOVA F-test across conditions, as :func:`scipy.stats.f_oneway`.

    Equal to :func:`sklearn.feature_selection.f_classif` with the volumes of
    ``conditions`` as samples and their conditions as classes.

    Parameters
    ----------
    %(bold_img)s
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
            f"conditions: an F-test needs at least 2 conditions, got {names!r}",
            param="conditions",
        )
    counts = np.bincount(codes, minlength=len(names)).astype(np.float64)
    if index.size <= len(names):
        raise InvalidParameterError(
            f"conditions: an F-test needs more volumes ({index.size}) than conditions "
            f"({len(names)}) to estimate the within-condition variance",
            param="conditions",
        )
    ds = _test_dataset(
        bold,
        _selected_moments(bold, index, codes, len(names)),
        partial(_ftest_block, counts=counts),
        FTest._fields,
        {
            "test": "one-way ANOVA",
            "conditions": list(names),
            "n_volumes": [int(c) for c in counts],
        },
    )
    ds["df_between"] = ((), np.float64(len(names) - 1), {"units": "degrees of freedom"})
    ds["df_within"] = ((), np.float64(index.size - len(names)), {"units": "degrees of freedom"})
    return ds


# -- the seed's -log10 p convention ------------------------------------------------------------
def clip_logp(
    logp: ImageLike, *, nan_to_zero: bool = True, clip: float | None = 10.0
) -> xr.DataArray:
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
        clip = check_real(clip, "clip", positive=True)
    nan_to_zero = check_bool(nan_to_zero, "nan_to_zero")
    img = as_image(logp, ndim=3, param="logp")
    out = img
    if nan_to_zero:
        out = out.fillna(0)
    if clip is not None:
        out = out.clip(max=clip)
    return out.assign_attrs(img.attrs, logp_clip=clip if clip is not None else "none")
