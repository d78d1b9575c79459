"""Run-wise signal cleaning: parity with nilearn.signal.clean(..., runs=...)."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from helpers.lazy import raise_if_dask_computes
from hypothesis import given
from hypothesis import strategies as st
from nilearn.signal import clean

from roidask.exceptions import InvalidParameterError
from roidask.ops.clean import clean_signals

TR = 2.0


def make_signals(x: np.ndarray, runs: np.ndarray, *, tr_s=TR, time_chunk=17) -> xr.DataArray:
    """(roi, time) dask-backed signals with a run coordinate, chunked along time."""
    return xr.DataArray(
        da.from_array(x, chunks=(x.shape[0], time_chunk)),
        dims=("roi", "time"),
        coords={
            "roi": np.arange(1, x.shape[0] + 1),
            "time": np.arange(x.shape[1]) * tr_s,
            "run": ("time", runs),
            "condition": ("time", np.full(x.shape[1], "rest")),
        },
        attrs={"tr_s": tr_s},
    )


def nilearn_clean(x: np.ndarray, runs, options: dict, *, t_r=TR) -> np.ndarray:
    """Reference on (roi, time) arrays with roidask option names."""
    high, low = options.get("high_pass_hz"), options.get("low_pass_hz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = clean(
            x.T,
            runs=runs,
            detrend=options.get("detrend", False),
            standardize=options.get("standardize"),
            filter=options.get("filter", "cosine") if (high or low) else False,
            high_pass=high,
            low_pass=low,
            t_r=t_r,
        )
    return out.T


def computed(signals):
    with dask.config.set(scheduler="sync"):
        return signals.values


@pytest.fixture
def series(rng):
    runs = np.repeat([0, 1, 2], [60, 75, 50])
    t = np.arange(runs.size)
    x = 100 + rng.normal(size=(4, runs.size)) * 3 + 0.05 * t + np.sin(t / 9.0)
    return x, runs


CASES = [
    {"detrend": True},
    {"standardize": "zscore_sample"},
    {"detrend": True, "standardize": "zscore_sample"},
    {"high_pass_hz": 0.01},
    {"high_pass_hz": 0.02, "detrend": True},
    {"high_pass_hz": 0.01, "detrend": True, "standardize": "zscore_sample"},
    {"high_pass_hz": 0.01, "filter": "butterworth"},
    {"low_pass_hz": 0.1, "filter": "butterworth", "detrend": True},
    {
        "high_pass_hz": 0.01,
        "low_pass_hz": 0.1,
        "filter": "butterworth",
        "standardize": "zscore_sample",
    },
]


@pytest.mark.parametrize(
    "options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_parity_with_nilearn_clean_by_run(series, options):
    x, runs = series
    cleaned = clean_signals(make_signals(x, runs), **options)
    assert cleaned.dims == ("roi", "time")
    assert cleaned.dtype == np.float64
    np.testing.assert_allclose(
        computed(cleaned), nilearn_clean(x, runs, options), rtol=1e-6, atol=1e-9
    )


@st.composite
def cleaning_problems(draw):
    lengths = draw(st.lists(st.integers(40, 90), min_size=1, max_size=3))
    tr = draw(st.sampled_from([0.7, 1.0, 2.0, 2.5]))
    nyquist = 0.5 / tr
    filt = draw(st.sampled_from(["cosine", "butterworth", None]))
    options = {
        "detrend": draw(st.booleans()),
        "standardize": draw(st.sampled_from([None, "zscore_sample"])),
    }
    if filt == "cosine":
        lowest = 1.0 / (2 * min(lengths) * tr)
        options["high_pass_hz"] = draw(st.floats(lowest * 1.01, nyquist * 0.9))
    elif filt == "butterworth":
        options["filter"] = "butterworth"
        band = draw(st.sampled_from(["high", "low", "band"]))
        if band in ("high", "band"):
            options["high_pass_hz"] = draw(st.floats(nyquist * 0.02, nyquist * 0.3))
        if band in ("low", "band"):
            options["low_pass_hz"] = draw(st.floats(nyquist * 0.4, nyquist * 0.9))
    return lengths, tr, options, draw(st.integers(0, 2**32 - 1))


@given(problem=cleaning_problems())
def test_random_parity_with_nilearn_clean(problem):
    lengths, tr, options, seed = problem
    rng = np.random.default_rng(seed)
    runs = np.repeat(np.arange(len(lengths)), lengths)
    x = rng.normal(50, 5, size=(3, runs.size)) + rng.normal(size=(3, 1)) * np.arange(runs.size)
    cleaned = clean_signals(make_signals(x, runs, tr_s=tr, time_chunk=23), **options)
    reference = nilearn_clean(x, runs, options, t_r=tr)
    np.testing.assert_allclose(computed(cleaned), reference, rtol=1e-6, atol=1e-8)


def test_float32_stays_float32(series):
    x, runs = series
    cleaned = clean_signals(make_signals(x.astype(np.float32), runs), detrend=True)
    assert cleaned.dtype == np.float32
    reference = nilearn_clean(x, runs, {"detrend": True})
    np.testing.assert_allclose(computed(cleaned), reference, rtol=1e-4, atol=1e-4)


def test_nan_rows_stay_nan_and_do_not_leak(series):
    x, runs = series
    x = x.copy()
    x[1] = np.nan
    options = {"detrend": True, "high_pass_hz": 0.01, "standardize": "zscore_sample"}
    out = computed(clean_signals(make_signals(x, runs), **options))
    assert np.isnan(out[1]).all()
    keep = [0, 2, 3]
    np.testing.assert_allclose(out[keep], nilearn_clean(x[keep], runs, options), rtol=1e-6)


def test_non_contiguous_runs_are_cleaned_in_place(rng):
    runs = np.repeat([0, 1, 0, 2], 30)
    x = rng.normal(size=(2, runs.size)) + np.arange(runs.size)
    out = computed(clean_signals(make_signals(x, runs), detrend=True))
    for run in (0, 1, 2):
        sel = runs == run
        np.testing.assert_allclose(
            out[:, sel], nilearn_clean(x[:, sel], None, {"detrend": True}), rtol=1e-9, atol=1e-9
        )


def test_by_run_false_cleans_the_whole_series(series):
    x, runs = series
    options = {"detrend": True, "high_pass_hz": 0.01}
    out = computed(clean_signals(make_signals(x, runs), by_run=False, **options))
    np.testing.assert_allclose(out, nilearn_clean(x, None, options), rtol=1e-6, atol=1e-9)


def test_cleaning_is_lazy_and_keeps_coords(series):
    x, runs = series
    signals = make_signals(x, runs)
    with raise_if_dask_computes():
        cleaned = clean_signals(
            signals, detrend=True, standardize="zscore_sample", high_pass_hz=0.01
        )
    assert isinstance(cleaned.data, da.Array)
    assert cleaned.chunks == ((4,), (runs.size,))
    for name in ("roi", "time", "run", "condition"):
        np.testing.assert_array_equal(cleaned[name].values, signals[name].values)


def test_no_cleaning_returns_the_signals_dask_backed(series):
    x, runs = series
    plain = make_signals(x, runs).compute()
    assert isinstance(plain.data, np.ndarray)
    out = clean_signals(plain)
    assert isinstance(out.data, da.Array)
    np.testing.assert_array_equal(computed(out), x)


# -- bad options: one error each, before any graph -----------------------------------------
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"standardize": "psc"}, "standardize"),
        ({"standardize": True}, "standardize"),
        ({"detrend": "yes"}, "detrend"),
        ({"filter": "fourier", "high_pass_hz": 0.01}, "filter"),
        ({"high_pass_hz": -0.01}, "high_pass_hz"),
        ({"high_pass_hz": 0.3}, "Nyquist"),
        ({"high_pass_hz": 0.001}, r"no cosine regressor.*run\(s\) \[0, 1, 2\]"),
        ({"low_pass_hz": 0.1}, "butterworth"),
        ({"high_pass_hz": 0.1, "low_pass_hz": 0.05, "filter": "butterworth"}, "below"),
    ],
)
def test_bad_options_are_refused(series, options, match):
    x, runs = series
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match=match):
        clean_signals(make_signals(x, runs), **options)


def test_filtering_without_repetition_time_is_refused(series):
    x, runs = series
    signals = make_signals(x, runs)
    signals.attrs.clear()
    with pytest.raises(InvalidParameterError, match="tr_s"):
        clean_signals(signals, high_pass_hz=0.01)
    out = clean_signals(signals, high_pass_hz=0.01, tr_s=TR)
    np.testing.assert_allclose(
        computed(out), nilearn_clean(x, runs, {"high_pass_hz": 0.01}), rtol=1e-6, atol=1e-9
    )


def test_butterworth_on_too_short_runs_is_refused(rng):
    runs = np.repeat([0, 1], [50, 12])
    signals = make_signals(rng.normal(size=(2, 62)), runs)
    with pytest.raises(InvalidParameterError, match=r"run\(s\) \[1\] have \[12\]"):
        clean_signals(signals, high_pass_hz=0.01, filter="butterworth")


def test_signals_without_time_are_refused():
    with pytest.raises(InvalidParameterError, match="'time' dimension"):
        clean_signals(xr.DataArray(np.zeros((2, 3)), dims=("roi", "sample")), detrend=True)
