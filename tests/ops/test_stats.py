"""Voxelwise statistics against scipy / sklearn / numpy, chunking, laziness and bad input.

References: scipy.stats.ttest_ind (Student, Welch), scipy.stats.ttest_1samp,
scipy.stats.f_oneway and sklearn.feature_selection.f_classif, numpy moments. Our
moments are float64 two-pass per chunk merged pairwise, so they agree with the
references to ~1e-12; the brief's 1e-6 relative tolerance is asserted.
"""

from __future__ import annotations

import math
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from helpers.lazy import raise_if_dask_computes
from hypothesis import given
from hypothesis import strategies as st
from scipy import special
from scipy import stats as sst
from sklearn.feature_selection import f_classif

from roidask.exceptions import ConditionError, ImageDimensionError, InvalidParameterError
from roidask.io import bold_from_nifti
from roidask.ops.stats import (
    clip_logp,
    condition_moments,
    ftest_img,
    mean_img,
    std_img,
    tsnr_img,
    ttest_1samp_img,
    ttest_img,
)

RTOL = 1e-6


def make_bold(data, labels, chunks=None) -> xr.DataArray:
    """A roidask BOLD image: dask-backed voxels, in-memory labels (as roidask.io makes them)."""
    n_t = data.shape[3]
    dims = ("x", "y", "z", "time")
    chunks = chunks or {}
    arr = da.from_array(np.asarray(data), chunks=tuple(chunks.get(d, -1) for d in dims))
    return xr.DataArray(
        arr,
        dims=dims,
        name="bold",
        coords={
            "time": ("time", np.arange(n_t) * 2.0),
            "condition": ("time", np.asarray(labels, dtype=str)),
            "run": ("time", np.zeros(n_t, dtype=np.int64)),
        },
        attrs={"affine": np.diag([3.0, 3.0, 3.0, 1.0]).tolist(), "voxel_size_mm": [3.0] * 3},
    )


def quiet_reference(func, *args, **kwargs):
    """scipy/sklearn warn about constant voxels; the reference values are what we want."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return func(*args, **kwargs)


def computed(obj):
    """Compute a lazy result, failing on any warning (no RuntimeWarning spam)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return obj.compute()


def assert_same(ours, ref, rtol=RTOL):
    """Equal to ``rtol`` where finite; NaN and ±inf at exactly the same voxels."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=rtol, atol=0)


def assert_logp(ours_logp, ref_p):
    """-log10 p equals the reference where the reference p is a normal float > 1e-300."""
    ref_p = np.asarray(ref_p, dtype=np.float64)
    ours_logp = np.asarray(ours_logp)
    ok = ref_p > 1e-300
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(ours_logp[ok], -np.log10(ref_p[ok]), rtol=RTOL, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(ours_logp), np.isnan(ref_p))


# -- the real Haxby slice ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def haxby_chunked(haxby):
    return bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="x=7,y=6,time=50")


@pytest.mark.parametrize("equal_var", [True, False])
def test_ttest_matches_scipy_on_haxby(haxby_chunked, haxby_arrays, equal_var):
    data, _, labels = haxby_arrays
    ref = quiet_reference(
        sst.ttest_ind,
        data[..., labels == "face"],
        data[..., labels == "house"],
        axis=-1,
        equal_var=equal_var,
    )
    ours = computed(ttest_img(haxby_chunked, contrast=("face", "house"), equal_var=equal_var))
    assert set(ours.data_vars) == {"t", "p", "logp", "df"}
    assert ours["t"].dims == ("x", "y", "z")
    assert np.isnan(ref.statistic).any()  # background voxels are constant zeros
    assert_same(ours["t"], ref.statistic)
    assert_same(ours["p"], ref.pvalue)
    assert_logp(ours["logp"], ref.pvalue)
    assert_same(ours["df"], np.broadcast_to(ref.df, ref.statistic.shape))
    assert ours.attrs["affine"] == haxby_chunked.attrs["affine"]


def test_conditions_stored_as_variable_length_strings(haxby_chunked, haxby_arrays):
    """Stores of earlier converts hold ``condition`` as zarr's variable-length strings,
    which plain xarray (and ``roidask.open_store``) read as numpy ``StringDType``."""
    data, _, labels = haxby_arrays
    strings = np.asarray(labels, dtype=np.dtypes.StringDType())
    bold = haxby_chunked.assign_coords(condition=("time", strings))
    ref = quiet_reference(
        sst.ttest_ind, data[..., labels == "face"], data[..., labels == "house"], axis=-1
    )
    ours = computed(ttest_img(bold, contrast=("face", "house")))
    assert_same(ours["t"], ref.statistic)
    face = computed(mean_img(bold, condition="face"))
    np.testing.assert_allclose(face, data[..., labels == "face"].mean(axis=-1), rtol=1e-5)


def test_ftest_matches_sklearn_and_scipy_on_haxby(haxby_chunked, haxby_arrays):
    data, _, labels = haxby_arrays
    names = sorted(set(labels))
    keep = np.isin(labels, names)
    samples = data.reshape(-1, data.shape[3])[:, keep].T
    f_ref, p_ref = quiet_reference(f_classif, samples, labels[keep])
    ours = computed(ftest_img(haxby_chunked, conditions=names))
    assert_same(ours["F"].values.ravel(), f_ref)
    assert_same(ours["p"].values.ravel(), p_ref)
    assert_logp(ours["logp"].values.ravel(), p_ref)
    groups = [data[..., labels == c] for c in names]
    scipy_ref = quiet_reference(sst.f_oneway, *groups, axis=-1)
    assert_same(ours["F"], scipy_ref.statistic)
    assert float(ours["df_between"]) == len(names) - 1
    assert float(ours["df_within"]) == keep.sum() - len(names)


def test_ttest_1samp_matches_scipy_on_haxby(haxby_chunked, haxby_arrays):
    data, _, labels = haxby_arrays
    ref = quiet_reference(sst.ttest_1samp, data[..., labels == "face"], 700.0, axis=-1)
    ours = computed(ttest_1samp_img(haxby_chunked, condition="face", popmean=700.0))
    assert_same(ours["t"], ref.statistic)
    assert_same(ours["p"], ref.pvalue)
    assert_logp(ours["logp"], ref.pvalue)
    assert np.all(ours["df"].values == 107)


def test_moments_and_maps_match_numpy_on_haxby(haxby_chunked, haxby_arrays):
    data, _, labels = haxby_arrays
    mom = computed(condition_moments(haxby_chunked, conditions=["rest", "face"]))
    np.testing.assert_array_equal(mom["count"].values, [588, 108])
    assert list(mom["condition"].values) == ["rest", "face"]
    for i, cond in enumerate(["rest", "face"]):
        sel = data[..., labels == cond]
        np.testing.assert_allclose(mom["mean"][..., i], sel.mean(-1), rtol=1e-12)
        m2 = ((sel - sel.mean(-1, keepdims=True)) ** 2).sum(-1)
        np.testing.assert_allclose(mom["m2"][..., i], m2, rtol=1e-10)

    face = data[..., labels == "face"]
    mean = computed(mean_img(haxby_chunked, condition="face"))
    std = computed(std_img(haxby_chunked, condition="face", ddof=1))
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, face.mean(-1), rtol=RTOL)
    np.testing.assert_allclose(std, face.std(-1, ddof=1), rtol=RTOL)
    np.testing.assert_allclose(computed(mean_img(haxby_chunked)), data.mean(-1), rtol=RTOL)

    all_std = data.std(-1)
    expected = np.zeros_like(all_std)
    np.divide(data.mean(-1), all_std, out=expected, where=all_std > 0)
    tsnr = computed(tsnr_img(haxby_chunked))
    assert tsnr.dtype == np.float32
    np.testing.assert_allclose(tsnr, expected, rtol=RTOL)
    assert (tsnr.values[all_std == 0] == 0).all() and (all_std == 0).any()


# -- random data -----------------------------------------------------------------------------
@pytest.fixture
def random_bold(rng):
    labels = np.array(["a"] * 9 + ["b"] * 14 + ["c"] * 5 + ["d"] * 2)
    labels = labels[rng.permutation(labels.size)]
    data = rng.normal(1000.0, 5.0, size=(6, 5, 4, labels.size))
    data[..., labels == "b"] += rng.normal(0.0, 4.0, size=(6, 5, 4, 1))
    data[..., labels == "c"] *= 3.0  # unequal variances: Welch differs from Student
    return data, labels


@pytest.mark.parametrize("equal_var", [True, False])
@pytest.mark.parametrize(
    "chunks", [{}, {"x": 4, "y": 2, "time": 7}, {"x": 1, "z": 3, "time": 1}], ids=str
)
def test_ttest_matches_scipy_on_random_data(random_bold, equal_var, chunks):
    data, labels = random_bold
    bold = make_bold(data, labels, chunks)
    for a, b in [("a", "b"), ("c", "a"), ("d", "b")]:
        ref = sst.ttest_ind(
            data[..., labels == a], data[..., labels == b], axis=-1, equal_var=equal_var
        )
        ours = computed(ttest_img(bold, contrast=(a, b), equal_var=equal_var))
        assert_same(ours["t"], ref.statistic)
        assert_same(ours["p"], ref.pvalue)
        assert_logp(ours["logp"], ref.pvalue)
        assert_same(ours["df"], np.broadcast_to(ref.df, ref.statistic.shape))
    assert ours.attrs["test"] == ("student" if equal_var else "welch")


def test_ftest_and_1samp_match_scipy_on_random_data(random_bold):
    data, labels = random_bold
    bold = make_bold(data, labels, {"x": 4, "y": 3, "time": 6})
    names = ["a", "b", "c", "d"]
    ref = sst.f_oneway(*(data[..., labels == c] for c in names), axis=-1)
    ours = computed(ftest_img(bold, conditions=names))
    assert_same(ours["F"], ref.statistic)
    assert_same(ours["p"], ref.pvalue)
    f_sk, _ = f_classif(data.reshape(-1, labels.size).T, labels)
    assert_same(ours["F"].values.ravel(), f_sk)
    one = sst.ttest_1samp(data[..., labels == "c"], 3000.0, axis=-1)
    ours1 = computed(ttest_1samp_img(bold, condition="c", popmean=3000.0))
    assert_same(ours1["t"], one.statistic)
    assert_same(ours1["p"], one.pvalue)


def test_moments_are_stable_for_large_offsets(rng):
    """A naive sum/sum-of-squares in float64 loses everything here; two-pass does not."""
    labels = np.array(["on", "off"] * 40)
    small = rng.normal(0.0, 1e-3, size=(3, 2, 2, 80))
    for data, rtol in [
        ((10000 + rng.integers(0, 2, size=(3, 2, 2, 80))).astype(np.int16), 1e-10),
        (1e6 + small, 1e-6),
    ]:
        bold = make_bold(data, labels, {"x": 2, "time": 9})
        mom = computed(condition_moments(bold, conditions=["on", "off"]))
        var_ref = data[..., labels == "off"].astype(np.float64).var(-1)
        np.testing.assert_allclose(mom["m2"].values[..., 1] / 40, var_ref, rtol=rtol)
        std = computed(std_img(bold))
        np.testing.assert_allclose(std, data.astype(np.float64).std(-1), rtol=1e-5)


def test_logp_is_finite_and_monotone_where_p_underflows(rng):
    n = 101
    labels = np.array(["a"] * n + ["b"] * n)
    noise = rng.normal(0.0, 1.0, size=(1, 1, 1, 2 * n))
    shift = np.logspace(-1, 6, 60).reshape(60, 1, 1, 1)
    data = noise + shift * (labels == "a")
    bold = make_bold(data, labels, {"x": 7, "time": 50})
    ours = computed(ttest_img(bold, contrast=("a", "b")))
    t, p, logp = (ours[v].values.ravel() for v in ("t", "p", "logp"))
    assert np.all(np.diff(t) > 0)
    assert np.isfinite(logp).all()
    assert np.all(np.diff(logp) > 0)
    assert (p == 0).any() and logp.max() > 1000  # well past float64's smallest p
    ref_p = sst.ttest_ind(data[..., labels == "a"], data[..., labels == "b"], axis=-1).pvalue
    assert_logp(logp, ref_p.ravel())
    # Independent reference where p underflows: I_x(df/2, 1/2) by its 2F1 series.
    df, x = 2.0 * n - 2, (2.0 * n - 2) / (2.0 * n - 2 + t**2)
    a, b = df / 2, 0.5
    log_p = (
        a * np.log(x) + b * np.log1p(-x) - math.log(a) - special.betaln(a, b)
        + np.log(special.hyp2f1(a + b, 1.0, a + 1.0, x))
    )  # fmt: skip
    tiny = ref_p.ravel() < 1e-250
    assert tiny.sum() > 10
    np.testing.assert_allclose(logp[tiny], -log_p[tiny] / np.log(10), rtol=1e-9)
    # With two groups, F = t**2 and the F-test's p is the two-sided t-test's p.
    f = computed(ftest_img(bold, conditions=["a", "b"]))
    np.testing.assert_allclose(f["F"].values.ravel(), t**2, rtol=1e-9)
    np.testing.assert_allclose(f["logp"].values.ravel(), logp, rtol=1e-9)


def test_clip_logp_is_the_seed_convention():
    logp = make_bold(np.zeros((2, 2, 2, 1)), ["a"]).isel(time=0, drop=True)
    values = np.array([np.nan, 0.0, 3.5, 10.0, 10.5, 300.0, np.inf, np.nan]).reshape(2, 2, 2)
    logp = logp.copy(data=da.from_array(values, chunks=1))
    with raise_if_dask_computes():
        out = clip_logp(logp)
        raw = clip_logp(logp, nan_to_zero=False, clip=None)
    np.testing.assert_array_equal(out.values.ravel(), [0, 0, 3.5, 10, 10, 10, 10, 0])
    np.testing.assert_array_equal(raw.values, values)
    assert out.attrs["affine"] == logp.attrs["affine"]


# -- properties ------------------------------------------------------------------------------
@st.composite
def labelled_data(draw, integer=False):
    n_cond = draw(st.integers(2, 3))
    counts = [draw(st.integers(2, 6)) for _ in range(n_cond)]
    labels = np.repeat([f"c{i}" for i in range(n_cond)], counts)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    labels = labels[rng.permutation(labels.size)]
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if integer:  # few levels: many constant voxels, exactly representable means
        data = rng.integers(0, 2, size=(*shape, labels.size)) * draw(st.integers(1, 3))
        data = data.astype(np.int16)
    else:
        data = rng.normal(
            draw(st.floats(-1e3, 1e3)), draw(st.floats(0.1, 10)), (*shape, labels.size)
        )
    chunks = {
        dim: draw(st.integers(1, n))
        for dim, n in zip(("x", "y", "z", "time"), (*shape, labels.size), strict=True)
    }
    return data, labels, chunks


@given(labelled_data())
def test_results_do_not_depend_on_chunking(case):
    data, labels, chunks = case
    names = sorted(set(labels))
    whole, split = make_bold(data, labels), make_bold(data, labels, chunks)
    for func, kwargs in [
        (condition_moments, {"conditions": names}),
        (ttest_img, {"contrast": names[:2], "equal_var": False}),
        (ftest_img, {"conditions": names}),
        (std_img, {"condition": names[-1]}),
    ]:
        a, b = computed(func(whole, **kwargs)), computed(func(split, **kwargs))
        if isinstance(a, xr.DataArray):
            a, b = a.to_dataset(name="v"), b.to_dataset(name="v")
        for var in a.data_vars:
            np.testing.assert_allclose(a[var], b[var], rtol=1e-9, atol=1e-9)


@given(labelled_data(integer=True))
def test_constant_voxels_like_scipy(case):
    data, labels, chunks = case
    bold = make_bold(data, labels, chunks)
    names = sorted(set(labels))
    groups = [data[..., labels == c].astype(np.float64) for c in names]
    for equal_var in (True, False):
        ref = quiet_reference(sst.ttest_ind, groups[0], groups[1], axis=-1, equal_var=equal_var)
        ours = computed(ttest_img(bold, contrast=names[:2], equal_var=equal_var))
        assert_same(ours["t"], ref.statistic)
        assert_same(ours["p"], ref.pvalue)
        assert_same(ours["df"], np.broadcast_to(ref.df, ref.statistic.shape))
    ref_f = quiet_reference(sst.f_oneway, *groups, axis=-1)
    ours_f = computed(ftest_img(bold, conditions=names))
    assert_same(ours_f["F"], ref_f.statistic)
    assert_same(ours_f["p"], ref_f.pvalue)


@st.composite
def one_volume_data(draw):
    """One volume of ``one``, 2 or more of ``many`` (some ``rest`` between), any chunking;
    integer data with few levels gives constant voxels (t = ±inf or NaN, as scipy)."""
    n_many, n_rest = draw(st.integers(2, 7)), draw(st.integers(0, 3))
    labels = np.array(["one"] + ["many"] * n_many + ["rest"] * n_rest)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    labels = labels[rng.permutation(labels.size)]
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    if draw(st.booleans()):
        data = (rng.integers(0, 2, size=(*shape, labels.size)) * 3).astype(np.int16)
    else:
        data = rng.normal(draw(st.floats(-1e3, 1e3)), draw(st.floats(0.1, 10)),
                          (*shape, labels.size))  # fmt: skip
    chunks = {
        dim: draw(st.integers(1, n))
        for dim, n in zip(("x", "y", "z", "time"), (*shape, labels.size), strict=True)
    }
    return data, labels, chunks


@given(one_volume_data())
def test_student_with_one_volume_of_a_condition_like_scipy_any_chunking(case):
    data, labels, chunks = case
    bold = make_bold(data, labels, chunks)
    for contrast in [("one", "many"), ("many", "one")]:
        groups = [data[..., labels == c].astype(np.float64) for c in contrast]
        ref = quiet_reference(sst.ttest_ind, *groups, axis=-1)
        ours = computed(ttest_img(bold, contrast=contrast))
        assert_same(ours["t"], ref.statistic)
        assert_same(ours["p"], ref.pvalue)
        assert_logp(ours["logp"], ref.pvalue)
        assert_same(ours["df"], np.broadcast_to(ref.df, ref.statistic.shape))
        whole = computed(ttest_img(make_bold(data, labels), contrast=contrast))
        for var in whole.data_vars:
            np.testing.assert_allclose(ours[var], whole[var], rtol=1e-9, atol=1e-9)


@given(st.integers(0, 2**16), st.integers(2, 5))
def test_single_volume_conditions_in_f_test_and_means(seed, n_single):
    rng = np.random.default_rng(seed)
    labels = np.array([f"s{i}" for i in range(n_single)] + ["many"] * 4)
    data = rng.normal(size=(3, 2, 1, labels.size))
    bold = make_bold(data, labels, {"x": 2, "time": 3})
    names = sorted(set(labels))
    ref = sst.f_oneway(*(data[..., labels == c] for c in names), axis=-1)
    ours = computed(ftest_img(bold, conditions=names))
    assert_same(ours["F"], ref.statistic)
    assert_same(ours["p"], ref.pvalue)
    np.testing.assert_allclose(computed(mean_img(bold, condition="s0")), data[..., 0], rtol=1e-6)
    assert (computed(std_img(bold, condition="s0")).values == 0).all()
    assert (computed(tsnr_img(bold, condition="s0")).values == 0).all()


# -- laziness and bad input ------------------------------------------------------------------
def test_building_every_op_computes_and_reads_nothing(haxby):
    with raise_if_dask_computes():
        bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="x=7,y=3,time=50")
        results = [
            mean_img(bold),
            mean_img(haxby.bold),
            std_img(bold, condition="face", ddof=1),
            tsnr_img(bold),
            condition_moments(bold, conditions=["face", "house", "cat"]),
            ttest_img(bold),
            ttest_img(bold, contrast=["house", "face"], equal_var=False),
            ttest_1samp_img(bold, condition="rest", popmean=1.0),
            ftest_img(bold, conditions=["face", "house", "cat", "shoe"]),
        ]
        results.append(clip_logp(results[5]["logp"]))
    for res in results:
        variables = res.data_vars.values() if isinstance(res, xr.Dataset) else [res]
        for var in variables:
            if var.ndim == 3:
                assert isinstance(var.data, da.Array)
                assert var.shape == (40, 20, 1)


@pytest.mark.parametrize(
    "build",
    [
        lambda b: ttest_img(b, contrast=("face", "houses")),
        lambda b: ttest_1samp_img(b, condition="faces"),
        lambda b: ftest_img(b, conditions=["face", "dog"]),
        lambda b: condition_moments(b, conditions=["Face"]),
        lambda b: mean_img(b, condition="nope"),
    ],
)
def test_unknown_condition_lists_known_ones(haxby, build):
    with raise_if_dask_computes():
        bold = bold_from_nifti(haxby.bold, labels=haxby.labels)
        with pytest.raises(ConditionError, match=r"unknown condition.*\['bottle', 'cat', "):
            build(bold)


def test_too_few_volumes_for_a_ttest(rng):
    """Welch's test needs 2 volumes of each condition (scipy: NaN), Student's 1 of each and
    3 in all (df = n1 + n2 - 2), the one-sample test 2; refused before any compute."""
    labels = ["a", "a", "a", "b", "c"]
    bold = make_bold(rng.normal(size=(2, 2, 1, 5)), labels)
    needs = (
        r"Welch's t-test \(equal_var=False\) needs at least 2 volumes of each condition "
        r"\(Student's t-test, equal_var=True: at least 1 volume of each condition and 3 in all\)$"
    )
    with raise_if_dask_computes():
        with pytest.raises(ConditionError, match=r"^contrast: the data hold 3 volumes of 'a' "
                           r"and 1 of 'b'; " + needs) as info:  # fmt: skip
            ttest_img(bold, contrast=("a", "b"), equal_var=False)
        assert info.value.param == "contrast"
        with pytest.raises(ConditionError, match=r"^contrast: the data hold 1 volume of 'b' "
                           r"and 3 of 'a'; Welch's"):  # fmt: skip
            ttest_img(bold, contrast=("b", "a"), equal_var=False)
        with pytest.raises(
            ConditionError,
            match=r"^contrast: the data hold 1 volume of 'b' and 1 of 'c'; Student's t-test "
            r"\(equal_var=True\) needs at least 1 volume of each condition and 3 in all "
            r"\(Welch's t-test, equal_var=False: at least 2 volumes of each condition\)$",
        ):
            ttest_img(bold, contrast=("b", "c"))
        with pytest.raises(ConditionError, match=r"'b' has 1 volume"):
            ttest_1samp_img(bold, condition="b")
        ttest_img(bold, contrast=("a", "b"))  # Student's: defined


@pytest.mark.parametrize("contrast", [("face", "house"), ("house", "face")])
def test_student_with_one_volume_of_a_condition_matches_scipy_on_haxby(
    haxby_chunked, haxby_arrays, contrast
):
    """One face volume (the others relabelled) vs the 108 house volumes: Student's test
    pools the variance of the house volumes (df = 107), as scipy."""
    data, _, labels = haxby_arrays
    labels = np.where(labels == "face", "other", labels)
    labels[np.flatnonzero(haxby_arrays[2] == "face")[40]] = "face"
    bold = haxby_chunked.assign_coords(condition=("time", labels))
    ref = quiet_reference(
        sst.ttest_ind, data[..., labels == contrast[0]], data[..., labels == contrast[1]], axis=-1
    )
    ours = computed(ttest_img(bold, contrast=contrast))
    assert ours.attrs["n_volumes"] == [1, 108][:: 1 if contrast[0] == "face" else -1]
    assert np.isfinite(ref.statistic).sum() > 500 and (ref.df == 107).all()
    assert_same(ours["t"], ref.statistic)
    assert_same(ours["p"], ref.pvalue)
    assert_logp(ours["logp"], ref.pvalue)
    assert_same(ours["df"], np.broadcast_to(ref.df, ref.statistic.shape))


def test_3d_image_where_4d_is_needed(haxby):
    with raise_if_dask_computes():
        for func, kwargs in [
            (mean_img, {}),
            (std_img, {}),
            (tsnr_img, {}),
            (ttest_img, {}),
            (ttest_1samp_img, {"condition": "face"}),
            (ftest_img, {"conditions": ["face", "house"]}),
            (condition_moments, {"conditions": ["face"]}),
        ]:
            with pytest.raises(
                ImageDimensionError, match=r"img( \S+)?: got a 3D image.*expected a 4D"
            ):
                func(haxby.mask, **kwargs)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda b: ttest_img(b, contrast="face"),
            "contrast: expected a list or tuple of condition",
        ),
        (lambda b: ttest_img(b, contrast=("face", "face")), "given more than once"),
        (lambda b: ttest_img(b, equal_var="yes"), "equal_var: expected True or False"),
        (lambda b: ttest_1samp_img(b, condition="face", popmean=np.nan), "popmean"),
        (lambda b: ttest_1samp_img(b, condition=["face"]), "condition: expected one"),
        (lambda b: ftest_img(b, conditions=["face"]), "at least 2 conditions"),
        (lambda b: ftest_img(b, conditions="face"), "conditions: expected a list"),
        (lambda b: std_img(b, ddof=-1), "ddof: expected an integer >= 0"),
        (lambda b: std_img(b, condition="face", ddof=108), r"smaller than .*\(108\)"),
        (lambda b: clip_logp(ttest_img(b)["logp"], clip=0), "clip: expected a positive"),
    ],
)
def test_bad_parameters_are_refused_before_any_compute(haxby, build, match):
    with raise_if_dask_computes():
        bold = bold_from_nifti(haxby.bold, labels=haxby.labels)
        with pytest.raises(InvalidParameterError, match=match):
            build(bold)


def test_f_test_needs_more_volumes_than_conditions(rng):
    bold = make_bold(rng.normal(size=(2, 1, 1, 2)), ["a", "b"])
    with pytest.raises(InvalidParameterError, match=r"more volumes \(2\) than conditions \(2\)"):
        ftest_img(bold, conditions=["a", "b"])


def test_series_without_conditions(haxby):
    """A series read without labels: the message says so and how to give them, not that
    'face' is unknown among ['unknown']."""
    for call, param, asked in [
        (lambda: ttest_img(haxby.bold), "contrast", "'face' or 'house'"),
        (lambda: mean_img(haxby.bold, condition="face"), "condition", "'face'"),
    ]:
        with pytest.raises(ConditionError) as info:
            call()
        assert str(info.value) == (
            f"{param}: the image has no condition labels (every volume's condition is "
            f"'unknown'), so no {asked} volumes; give them with labels=PATH, a labels.txt or "
            "one events.tsv per run (bold_from_nifti(..., labels=...), convert(..., labels=...))"
        )
        assert info.value.param == param
    bold = make_bold(np.zeros((1, 1, 1, 3)), ["a"] * 3).drop_vars("condition")
    with pytest.raises(ConditionError, match="no 'condition' coordinate"):
        mean_img(bold, condition="a")
