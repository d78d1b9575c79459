"""Temporal cleaning of ROI signals, run by run, as :func:`nilearn.signal.clean`.

Three operations that nilearn users rely on are provided, each matching
``nilearn.signal.clean(signals, runs=runs, ...)`` to floating-point precision:

* ``detrend``: remove the mean and the least-squares linear trend of each run;
* high-pass filtering, either with a discrete cosine basis
  (``filter="cosine"``, nilearn's ``filter="cosine", high_pass=...``; the
  cosine regressors are detrended when ``detrend`` is set, z-scored and
  projected out) or with a zero-phase order-5 Butterworth filter
  (``filter="butterworth"``, scipy's ``butter`` + ``sosfiltfilt`` with odd
  padding, exactly as nilearn calls them; low-pass and band-pass too);
* ``standardize="zscore_sample"``: z-score each run (sample standard deviation,
  ``ddof=1``; near-constant series are only centred).

The steps run in nilearn's order: detrend, Butterworth filter, cosine
projection, standardize. Each run (the ``run`` coordinate along ``time``) is
cleaned independently and stays at its place in time (nilearn stacks runs in
sorted order, which is the same for the usual sorted, contiguous runs).

Cleaning needs whole runs, so the signals are rechunked to one chunk along
``time`` (they are small: ROIs x volumes); other dimensions keep their chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr
from scipy import linalg

from roidask._validate import check_bool, check_choice, check_real
from roidask.exceptions import InvalidParameterError

__all__ = ["FILTERS", "STANDARDIZE_METHODS", "CleanPlan", "clean_signals", "plan_cleaning"]

#: Accepted values of ``standardize`` (None: no standardization).
STANDARDIZE_METHODS = ("zscore_sample",)
#: Accepted values of ``filter``.
FILTERS = ("cosine", "butterworth")
#: Order of nilearn's Butterworth filter.
BUTTERWORTH_ORDER = 5
_EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class CleanPlan:
    """Validated cleaning options and the per-run regressors/filters they need.

    Built by :func:`plan_cleaning` before any graph exists; ``groups`` holds the
    time indices of each run, ``cosines`` the cosine drift regressors of each
    run (or None) and ``sos`` the Butterworth filter (or None).
    """

    detrend: bool
    standardize: str | None
    groups: tuple[np.ndarray, ...]
    cosines: tuple[np.ndarray | None, ...]
    sos: np.ndarray | None
    description: str

    @property
    def active(self) -> bool:
        """True when any cleaning step is requested."""
        return (
            self.detrend
            or self.standardize is not None
            or self.sos is not None
            or any(c is not None for c in self.cosines)
        )


def _cosine_drift(n: int, high_pass_hz: float, tr_s: float) -> np.ndarray:
    """DCT-II drift regressors without the constant, as nilearn's ``create_cosine_drift``."""
    frame_times = np.arange(n) * tr_s
    dt = (frame_times[-1] - frame_times[0]) / (n - 1)
    order = min(n - 1, int(np.floor(2 * n * high_pass_hz * dt)))
    times = np.arange(n)
    drift = np.empty((n, order))
    normalizer = np.sqrt(2.0 / n)
    for k in range(1, order + 1):
        drift[:, k - 1] = normalizer * np.cos((np.pi / n) * (times + 0.5) * k)
    return drift


def _sosfiltfilt_edge(sos: np.ndarray) -> int:
    """Default padding length of :func:`scipy.signal.sosfiltfilt` (needs runs longer)."""
    ntaps = 2 * len(sos) + 1
    ntaps -= min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * ntaps


def _positive(value, name: str, unit: str) -> float | None:
    return None if value is None else check_real(value, name, positive=True, unit=unit)


def plan_cleaning(
    runs: np.ndarray,
    *,
    detrend: bool = False,
    standardize: str | None = None,
    high_pass_hz: float | None = None,
    low_pass_hz: float | None = None,
    filter: str = "cosine",
    tr_s: float | None = None,
) -> CleanPlan:
    """Validate cleaning options for a series with the given run of each volume.

    Parameters
    ----------
    runs : ndarray, shape (n_volumes,)
        Run label of each volume (any hashable values); volumes with the same
        label are cleaned together.
    detrend, standardize, high_pass_hz, low_pass_hz, filter, tr_s
        See :func:`clean_signals`.

    Returns
    -------
    CleanPlan

    Raises
    ------
    InvalidParameterError
        Unknown options, missing or non-positive repetition time, cut-off
        frequencies at or above Nyquist, a cosine high-pass too low to create
        any regressor for some run, or runs too short for the Butterworth filter.
    """
    detrend = check_bool(detrend, "detrend")
    if standardize is not None:
        check_choice(standardize, "standardize", STANDARDIZE_METHODS)
    check_choice(filter, "filter", FILTERS)
    high = _positive(high_pass_hz, "high_pass_hz", "Hz")
    low = _positive(low_pass_hz, "low_pass_hz", "Hz")
    tr = _positive(tr_s, "tr_s", "seconds")
    runs = np.asarray(runs)
    values, first = np.unique(runs, return_index=True)
    values = values[np.argsort(first)]
    groups = tuple(np.flatnonzero(runs == v) for v in values)
    cosines: list[np.ndarray | None] = [None] * len(groups)
    sos = None
    steps = []
    if detrend:
        steps.append("linear detrend")
    if high is not None or low is not None:
        if tr is None:
            raise InvalidParameterError(
                "tr_s: filtering needs the repetition time in seconds; the signals have no "
                "'tr_s' attribute, pass tr_s",
                param="tr_s",
            )
        nyquist = 0.5 / tr
        for name, freq in (("high_pass_hz", high), ("low_pass_hz", low)):
            if freq is not None and freq >= nyquist:
                raise InvalidParameterError(
                    f"{name}: {freq} Hz is at or above the Nyquist frequency "
                    f"{nyquist:.6g} Hz (1 / (2 x TR {tr} s)); expected a lower cut-off",
                    param=name,
                )
        if filter == "cosine":
            if low is not None:
                raise InvalidParameterError(
                    "low_pass_hz: low-pass filtering is not available with filter='cosine' "
                    "(as in nilearn); use filter='butterworth'",
                    param="low_pass_hz",
                )
            assert high is not None  # a cosine filter is a high-pass (low refused above)
            too_short = []
            for i, (v, g) in enumerate(zip(values, groups, strict=True)):
                drift = _cosine_drift(len(g), high, tr) if len(g) > 1 else np.empty((1, 0))
                if drift.shape[1] == 0:
                    too_short.append((v.item() if hasattr(v, "item") else v, len(g)))
                cosines[i] = drift
            if too_short:
                raise InvalidParameterError(
                    f"high_pass_hz: {high} Hz creates no cosine regressor for run(s) "
                    f"{[r for r, _ in too_short]} with {[n for _, n in too_short]} volumes at "
                    f"TR {tr} s; a run of n volumes needs high_pass_hz >= 1 / (2 n TR)",
                    param="high_pass_hz",
                )
            steps.append(f"cosine high-pass {high} Hz")
        else:
            if high is not None and low is not None:
                if high >= low:
                    raise InvalidParameterError(
                        f"high_pass_hz: {high} Hz must be below low_pass_hz {low} Hz for "
                        "a band-pass filter",
                        param="high_pass_hz",
                    )
                wn: float | list[float] = [high, low]
                btype = "band"
            elif high is not None:
                wn, btype = high, "high"
            else:
                assert low is not None
                wn, btype = low, "low"
            from scipy import signal as sp_signal  # deliberately lazy: ~1 s, only when used

            sos = sp_signal.butter(
                N=BUTTERWORTH_ORDER, Wn=wn, btype=btype, output="sos", fs=1.0 / tr
            )
            edge = _sosfiltfilt_edge(sos)
            short = [
                (v.item() if hasattr(v, "item") else v, len(g))
                for v, g in zip(values, groups, strict=True)
                if len(g) <= edge
            ]
            if short:
                raise InvalidParameterError(
                    f"filter: the Butterworth filter needs runs of more than {edge} volumes; "
                    f"run(s) {[r for r, _ in short]} have {[n for _, n in short]}",
                    param="filter",
                )
            steps.append(f"Butterworth {btype}-pass {wn} Hz")
    if standardize is not None:
        steps.append(standardize)
    return CleanPlan(
        detrend=bool(detrend),
        standardize=standardize,
        groups=groups,
        cosines=tuple(cosines),
        sos=sos,
        description=", ".join(steps) if steps else "none",
    )


# -- numerics (nilearn's algorithms) --------------------------------------------------
def _detrend(x: np.ndarray) -> np.ndarray:
    """Remove mean and linear trend along axis 0, as nilearn's ``_detrend``."""
    x = x - x.mean(axis=0)
    regressor = np.arange(x.shape[0], dtype=np.float64)
    regressor -= regressor.mean()
    std = np.sqrt((regressor**2).sum())
    if not std < _EPS:
        regressor /= std
    return x - np.outer(regressor, regressor @ x)


def _zscore(x: np.ndarray) -> np.ndarray:
    """Centre and divide by the sample standard deviation (ddof=1); std < eps -> 1."""
    x = x - x.mean(axis=0)
    std = x.std(axis=0, ddof=1)
    std[std < _EPS] = 1.0
    return x / std


def _clean_run(x: np.ndarray, cosines: np.ndarray | None, plan: CleanPlan) -> np.ndarray:
    """Clean one run; ``x`` has time along axis 0 (float64)."""
    n = x.shape[0]
    if plan.detrend and n > 1:
        x = _detrend(x)
        if cosines is not None:
            cosines = _detrend(cosines)
    if plan.sos is not None:
        from scipy import signal as sp_signal

        x = sp_signal.sosfiltfilt(plan.sos, x, axis=0, padtype="odd", padlen=None)
    if cosines is not None and cosines.shape[1]:
        conf = _zscore(cosines) if n > 1 else cosines
        q, r, _ = linalg.qr(conf, mode="economic", pivoting=True)
        q = q[:, np.abs(np.diag(r)) > _EPS * 100.0]
        x = x - q @ (q.T @ x)
    if plan.standardize == "zscore_sample" and n > 1:
        x = _zscore(x)
    return x


def _clean_block(block: np.ndarray, *, plan: CleanPlan, out_dtype) -> np.ndarray:
    """Clean a block whose last axis is the whole time series."""
    shape = block.shape
    x = np.asarray(block, dtype=np.float64).reshape(-1, shape[-1]).T
    out = np.empty_like(x)
    for group, cosines in zip(plan.groups, plan.cosines, strict=True):
        out[group] = _clean_run(x[group], cosines, plan)
    return out.T.reshape(shape).astype(out_dtype, copy=False)


def clean_signals(
    signals,
    *,
    detrend: bool = False,
    standardize: str | None = None,
    high_pass_hz: float | None = None,
    low_pass_hz: float | None = None,
    filter: str = "cosine",
    tr_s: float | None = None,
    by_run: bool = True,
) -> xr.DataArray:
    """Detrend, filter and standardize signals run by run, as ``nilearn.signal.clean``.

    Parameters
    ----------
    signals : xarray.DataArray
        Signals with a ``time`` dimension (e.g. ``(roi, time)`` from
        :func:`roidask.ops.extract.extract_signals`) and a ``run`` coordinate
        along ``time``.
    detrend : bool
        Remove each run's mean and linear trend (nilearn ``detrend=True``).
    standardize : {None, "zscore_sample"}
        Z-score each run with the sample standard deviation (``ddof=1``).
    high_pass_hz : float, optional
        High-pass cut-off in Hz (cosine basis or Butterworth, see ``filter``).
    low_pass_hz : float, optional
        Low-pass cut-off in Hz (``filter="butterworth"`` only).
    filter : {"cosine", "butterworth"}
        Filtering method, as nilearn's ``filter`` (default cosine drift removal).
    tr_s : float, optional
        Repetition time in seconds; default the ``tr_s`` attribute of ``signals``.
    by_run : bool
        Clean each run independently (default); False cleans the whole series
        at once (nilearn ``runs=None``).

    Returns
    -------
    xarray.DataArray
        Same dims, coordinates and dtype (float32 stays float32, anything else
        becomes float64), dask-backed and lazy, one chunk along ``time``.
        Without any cleaning option the input is returned as a dask-backed
        array, unchanged.

    Raises
    ------
    InvalidParameterError
        Bad options (see :func:`plan_cleaning`) or ``signals`` without a
        ``time`` dimension.
    """
    if not isinstance(signals, xr.DataArray) or "time" not in signals.dims:
        got = signals.dims if isinstance(signals, xr.DataArray) else type(signals).__name__
        raise InvalidParameterError(
            f"signals: expected an xarray.DataArray with a 'time' dimension, got {got}",
            param="signals",
        )
    if not isinstance(by_run, bool | np.bool_):
        raise InvalidParameterError(
            f"by_run: expected True or False, got {by_run!r}", param="by_run"
        )
    n_time = signals.sizes["time"]
    if by_run and "run" in signals.coords and signals["run"].dims == ("time",):
        runs = np.asarray(signals["run"].values)
    else:
        runs = np.zeros(n_time, dtype=np.int64)
    if tr_s is None:
        tr_s = signals.attrs.get("tr_s")
    plan = plan_cleaning(
        runs,
        detrend=detrend,
        standardize=standardize,
        high_pass_hz=high_pass_hz,
        low_pass_hz=low_pass_hz,
        filter=filter,
        tr_s=tr_s,
    )
    return apply_cleaning(signals, plan)


def apply_cleaning(signals: xr.DataArray, plan: CleanPlan) -> xr.DataArray:
    """Apply a validated :class:`CleanPlan` lazily (see :func:`clean_signals`)."""
    if not isinstance(signals.data, da.Array):
        signals = signals.chunk()
    if not plan.active:
        return signals
    dims = signals.dims
    moved = signals.transpose(..., "time")
    dtype = np.dtype(np.float32) if signals.dtype == np.float32 else np.dtype(np.float64)
    data = moved.data.rechunk({moved.ndim - 1: -1})
    cleaned = data.map_blocks(
        _clean_block,
        plan=plan,
        out_dtype=dtype,
        dtype=dtype,
        meta=np.empty((0,) * data.ndim, dtype=dtype),
    )
    out = moved.copy(data=cleaned).transpose(*dims)
    out.attrs = {**signals.attrs, "cleaning": plan.description}
    return out
