"""Selecting volumes and signals by condition: the volumes of a BOLD series, the samples
of ROI signals (the seed's ``X1``/``X2`` stacks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from roidask._docs import fill_doc
from roidask._validate import check_conditions, check_int, volume_conditions
from roidask.exceptions import ConditionError, InvalidParameterError
from roidask.io.conversions import ImageLike, as_image

__all__ = ["select_condition", "select_conditions", "stack_conditions"]


@fill_doc
def select_conditions(
    img: ImageLike, *, conditions: Sequence[str], param: str = "conditions"
) -> xr.DataArray:
    """The volumes of ``img`` whose condition is one of ``conditions`` (lazy).

    Parameters
    ----------
    %(bold_img)s
    conditions : sequence of str
        Distinct condition names, at least one (a list or tuple, as for
        :func:`~roidask.ops.ftest_img`: ``["face"]`` for one).
    param : str
        The caller's name for ``conditions``, in messages (``"contrast"`` for a
        function that selects its contrast's volumes).

    Returns
    -------
    xarray.DataArray
        The selected volumes, in time order, with their coordinates.

    Raises
    ------
    ConditionError
        A condition is not present (the message lists the known ones).
    InvalidParameterError
        ``conditions`` is a string, is empty, or names a condition twice.
    """
    bold = as_image(img, ndim=4, param="img")
    _, index, _ = check_conditions(conditions, volume_conditions(bold), param=param)
    return bold.isel(time=index)


def _conditions_of(signals: xr.DataArray, param: str = "signals") -> np.ndarray:
    if not isinstance(signals, xr.DataArray) or "time" not in signals.dims:
        got = signals.dims if isinstance(signals, xr.DataArray) else type(signals).__name__
        raise InvalidParameterError(
            f"{param}: expected an xarray.DataArray with a 'time' dimension, got {got}",
            param=param,
        )
    return volume_conditions(signals, param)


def _in_order(values: np.ndarray) -> list[str]:
    uniq, first = np.unique(values, return_index=True)
    return uniq[np.argsort(first)].tolist()


def select_condition(signals: xr.DataArray, *, condition: str) -> xr.DataArray:
    """The volumes of one condition (lazy), e.g. the ``face`` blocks of every run.

    Parameters
    ----------
    signals : xarray.DataArray
        Output of :func:`extract_signals` (any array with ``time`` and a
        ``condition`` coordinate).
    condition : str
        Condition name.

    Returns
    -------
    xarray.DataArray
        ``signals`` restricted to the volumes of ``condition``, in time order;
        ``volume``, ``time`` and ``run`` keep the original values.

    Raises
    ------
    ConditionError
        ``condition`` does not occur (the message lists those that do).
    """
    conds = _conditions_of(signals)
    if not isinstance(condition, str) or condition not in set(conds.tolist()):
        raise ConditionError(
            f"condition: {condition!r} not found; available conditions: {_in_order(conds)}",
            param="condition",
        )
    return signals.isel(time=np.flatnonzero(conds == condition))


def stack_conditions(
    signals: xr.DataArray,
    *,
    conditions: Sequence[str] | None = None,
    n_volumes: int | None = None,
) -> xr.DataArray:
    """The first ``n_volumes`` volumes of each condition, stacked (lazy).

    The seed pipeline's ``X1`` (face) and ``X2`` (house) are
    ``stack_conditions(signals, conditions=["face", "house"]).sel(condition=...)``.

    Parameters
    ----------
    signals : xarray.DataArray
        Output of :func:`extract_signals`, dims ``(roi, time)``.
    conditions : sequence of str, optional
        Conditions to stack, in this order; default all, in order of first
        appearance.
    n_volumes : int, optional
        Volumes per condition (the first ones in time); default the smallest
        count among ``conditions``.

    Returns
    -------
    xarray.DataArray
        Dims ``(condition, sample, roi)`` (other dims of ``signals`` after
        ``sample``); 2D coords ``time``, ``run``, ``volume`` over
        ``(condition, sample)`` give each sample's origin.

    Raises
    ------
    ConditionError
        Unknown condition, or a condition with fewer than ``n_volumes`` volumes.
    InvalidParameterError
        ``conditions`` empty or with duplicates, ``n_volumes`` not a positive integer.
    """
    conds = _conditions_of(signals)
    available = _in_order(conds)
    if conditions is None:
        conditions = available
    else:
        if isinstance(conditions, str) or not isinstance(conditions, Sequence | np.ndarray):
            raise InvalidParameterError(
                f"conditions: expected a sequence of condition names, got {conditions!r}",
                param="conditions",
            )
        conditions = [str(c) for c in conditions]
        if not conditions:
            raise InvalidParameterError(
                "conditions: expected at least one condition, got []", param="conditions"
            )
        if len(set(conditions)) != len(conditions):
            raise InvalidParameterError(
                f"conditions: duplicate names in {conditions}", param="conditions"
            )
        unknown = [c for c in conditions if c not in available]
        if unknown:
            raise ConditionError(
                f"conditions: {unknown} not found; available conditions: {available}",
                param="conditions",
            )
    counts = {c: int((conds == c).sum()) for c in conditions}
    if n_volumes is None:
        n_volumes = min(counts.values())
    else:
        n_volumes = check_int(n_volumes, "n_volumes", minimum=1)
    short = {c: n for c, n in counts.items() if n < n_volumes}
    if short:
        raise ConditionError(
            f"n_volumes: {n_volumes} volumes per condition requested but {short} have fewer",
            param="n_volumes",
        )
    n_volumes = int(n_volumes)
    index = np.stack([np.flatnonzero(conds == c)[:n_volumes] for c in conditions])
    time_coords = [k for k, v in signals.coords.items() if v.dims == ("time",)]
    pieces = []
    for ix in index:
        piece = signals.isel(time=ix).drop_vars(time_coords)
        pieces.append(piece.rename(time="sample"))
    out = xr.concat(pieces, dim=pd.Index(conditions, name="condition"))
    out = out.assign_coords(sample=np.arange(n_volumes))
    out = out.transpose("condition", "sample", ...)
    return out.assign_coords(
        {
            k: (("condition", "sample"), np.asarray(signals[k].values)[index])
            for k in time_coords
            if k != "condition"
        }
    )
