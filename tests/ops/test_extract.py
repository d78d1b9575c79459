"""Per-ROI signal extraction: parity with nilearn's NiftiLabelsMasker, laziness, errors."""

from __future__ import annotations

import dask
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from helpers.lazy import CountingScheduler, raise_if_dask_computes
from helpers.seed import masker_signals
from hypothesis import given
from hypothesis import strategies as st
from nilearn.image import smooth_img
from nilearn.signal import clean

from roidask.exceptions import (
    EmptyMaskWarning,
    GridMismatchError,
    ImageDimensionError,
    InvalidParameterError,
)
from roidask.io import as_image
from roidask.ops.conditions import select_condition, stack_conditions
from roidask.ops.extract import (
    STRATEGIES,
    extract_signals,
)

SPLIT_CHUNKS = {"x": 7, "y": 6, "time": 100}  # splits every volume into 18 spatial chunks


def computed(signals):
    with dask.config.set(scheduler="sync"):
        return signals.values


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def haxby_split(haxby_bold, haxby_img):
    """The Haxby BOLD (in memory) in chunks that split every volume spatially."""
    data = dask.array.from_array(
        np.asanyarray(haxby_img.dataobj), chunks=(SPLIT_CHUNKS["x"], SPLIT_CHUNKS["y"], 1, 100)
    )
    return haxby_bold.copy(data=data)


# -- parity on the real Haxby slice ------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_haxby_parity_every_strategy(haxby_bold, haxby_split, haxby_img, seed_rois, strategy):
    reference = masker_signals(haxby_img, seed_rois, strategy)
    assert reference.shape == (5, 1452)
    for bold in (haxby_bold, haxby_split):
        signals = extract_signals(bold, seed_rois, strategy=strategy)
        assert signals.dims == ("roi", "time")
        assert signals.dtype == reference.dtype == np.float64
        np.testing.assert_allclose(computed(signals), reference, rtol=1e-6, atol=1e-9)
    assert signals["roi"].values.tolist() == [1, 2, 3, 4, 5]
    assert (
        signals["n_voxels"].values.tolist()
        == np.bincount(np.asarray(seed_rois.dataobj).ravel())[1:].tolist()
    )
    for name in ("time", "condition", "run"):
        np.testing.assert_array_equal(signals[name].values, haxby_bold[name].values)


@pytest.mark.parametrize("strategy", ["mean", "median", "standard_deviation"])
def test_haxby_parity_on_smoothed_float32_bold(haxby_img, seed_rois, strategy):
    smoothed = smooth_img(haxby_img, fwhm=6)
    assert np.asanyarray(smoothed.dataobj).dtype == np.float32
    reference = masker_signals(smoothed, seed_rois, strategy)
    signals = extract_signals(smoothed, seed_rois, strategy=strategy)
    assert signals.dtype == reference.dtype == np.float32
    np.testing.assert_allclose(computed(signals), reference, rtol=1e-6)


@pytest.mark.parametrize("strategy", ["mean", "sum"])
def test_fwhm_is_exact_smoothing_on_haxby(haxby_bold, haxby_split, haxby_img, seed_rois, strategy):
    reference = masker_signals(smooth_img(haxby_img, fwhm=6), seed_rois, strategy)
    for bold in (haxby_bold, haxby_split):
        signals = extract_signals(bold, seed_rois, strategy=strategy, fwhm=6)
        np.testing.assert_allclose(computed(signals), reference, rtol=1e-5)


def test_fwhm_anisotropic_with_per_axis_fwhm(rng):
    data = rng.normal(100, 20, size=(9, 7, 6, 5))
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    labels = rng.integers(0, 4, size=(9, 7, 6))
    img = nib.Nifti1Image(data, affine)
    labels_img = nib.Nifti1Image(labels.astype(np.int16), affine)
    fwhm = [5.0, None, 9.0]
    reference = masker_signals(smooth_img(img, fwhm=fwhm), labels_img, "mean")
    bold = as_image(img, chunks={"x": 4, "y": 3, "z": 5, "time": 2})
    signals = extract_signals(bold, labels_img, fwhm=fwhm)
    np.testing.assert_allclose(computed(signals), reference, rtol=1e-5)


# -- parity on random data, any chunking ---------------------------------------------------------
@st.composite
def problems(draw):
    shape = tuple(draw(st.integers(1, n)) for n in (6, 6, 5))
    n_t = draw(st.integers(1, 8))
    sizes = [draw(st.integers(max(1, -(-n // 3)), n)) for n in (*shape, n_t)]
    label_values = draw(
        st.lists(st.integers(-5, 300).filter(bool), min_size=1, max_size=4, unique=True)
    )
    return {
        "shape": shape,
        "n_t": n_t,
        "chunks": dict(zip(("x", "y", "z", "time"), sizes, strict=True)),
        "dtype": draw(st.sampled_from(["float64", "float32", "int16"])),
        "labels": label_values,
        "non_finite": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def random_images(problem):
    rng = np.random.default_rng(problem["seed"])
    shape, n_t = problem["shape"], problem["n_t"]
    labels = rng.choice([0, *problem["labels"]], size=shape)
    labels.flat[rng.integers(labels.size)] = problem["labels"][0]
    if problem["dtype"] == "int16":
        data = rng.integers(-300, 300, size=(*shape, n_t)).astype(np.int16)
    else:
        data = rng.normal(100, 20, size=(*shape, n_t)).astype(problem["dtype"])
        if problem["non_finite"]:
            bad = rng.random(data.shape) < 0.1
            data[bad] = rng.choice([np.nan, np.inf, -np.inf], size=int(bad.sum()))
    affine = np.diag([*rng.uniform(1, 4, size=3), 1.0])
    return nib.Nifti1Image(data, affine), nib.Nifti1Image(labels.astype(np.int32), affine)


@given(problem=problems())
def test_random_parity_every_strategy_any_chunking(problem):
    img, labels_img = random_images(problem)
    bold = as_image(img, chunks=problem["chunks"])
    for strategy in STRATEGIES:
        ours = computed(extract_signals(bold, labels_img, strategy=strategy))
        copy = nib.Nifti1Image(np.array(img.dataobj), img.affine)  # nilearn zeroes NaNs in place
        reference = masker_signals(copy, labels_img, strategy)
        assert ours.dtype == reference.dtype
        scale = 1.0 + np.abs(reference).max()
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-9 * scale**2)


@given(problem=problems(), fwhm=st.floats(0.5, 12.0))
def test_random_fwhm_matches_nilearn_smoothing(problem, fwhm):
    img, labels_img = random_images(problem)
    bold = as_image(img, chunks=problem["chunks"])
    for strategy in ("mean", "sum"):
        ours = computed(extract_signals(bold, labels_img, strategy=strategy, fwhm=fwhm))
        copy = nib.Nifti1Image(np.array(img.dataobj), img.affine)
        reference = masker_signals(smooth_img(copy, fwhm), labels_img, strategy)
        scale = np.abs(reference).max() + 1.0
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5 * scale)


def test_roi_spanning_every_chunk(rng):
    data = rng.normal(size=(8, 8, 4, 6))
    labels = np.zeros((8, 8, 4), dtype=np.int16)
    labels[1:7, 1:7, :] = 3  # crosses all 8 spatial chunks below
    labels[0, 0, 0] = 9
    img, labels_img = nib.Nifti1Image(data, np.eye(4)), nib.Nifti1Image(labels, np.eye(4))
    bold = as_image(img, chunks={"x": 4, "y": 4, "z": 2, "time": 4})
    assert bold.data.numblocks == (2, 2, 2, 2)
    for strategy in STRATEGIES:
        reference = masker_signals(img, labels_img, strategy)
        ours = computed(extract_signals(bold, labels_img, strategy=strategy))
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-12)


# -- empty and masked labels -------------------------------------------------------------------
def test_labels_absent_from_image_give_nan_rows(haxby_bold, haxby_img, seed_rois):
    with pytest.warns(EmptyMaskWarning, match=r"absent from labels_img: \[99, 42\]"):
        signals = extract_signals(haxby_bold, seed_rois, labels=[3, 99, 1, 42])
    values = computed(signals)
    assert signals["roi"].values.tolist() == [3, 99, 1, 42]
    assert np.isnan(values[[1, 3]]).all()
    reference = masker_signals(haxby_img, seed_rois)
    np.testing.assert_allclose(values[[0, 2]], reference[[2, 0]], rtol=1e-6)


@pytest.mark.parametrize("strategy", ["mean", "median", "variance"])
def test_mask_removing_a_label_keeps_a_nan_row(haxby_img, seed_rois, strategy):
    labels = np.asarray(seed_rois.dataobj)
    mask = np.ones(labels.shape, dtype=np.uint8)
    mask[labels == 2] = 0
    mask[np.argwhere(labels == 4)[0][0], :, :] = 0  # cut part of label 4 as well
    mask_img = nib.Nifti1Image(mask, seed_rois.affine)
    with pytest.warns(EmptyMaskWarning, match=r"no voxel left inside mask_img: \[2\]"):
        signals = extract_signals(haxby_img, seed_rois, mask_img=mask_img, strategy=strategy)
    values = computed(signals)
    assert np.isnan(values[1]).all() and not np.isnan(values[[0, 2, 3, 4]]).any()
    assert signals["n_voxels"].values[1] == 0
    reference = masker_signals(haxby_img, seed_rois, strategy, mask_img=mask_img)
    assert reference.shape[0] == 4  # nilearn drops the label
    np.testing.assert_allclose(values[[0, 2, 3, 4]], reference, rtol=1e-6)


# -- laziness ------------------------------------------------------------------------------------
def test_building_the_graph_computes_and_reads_nothing(haxby, seed_rois, haxby_split):
    with raise_if_dask_computes():
        for strategy in STRATEGIES:
            extract_signals(haxby.bold, seed_rois, strategy=strategy)
            extract_signals(haxby_split, seed_rois, strategy=strategy)
        extract_signals(haxby.bold, seed_rois, fwhm=6)
        signals = extract_signals(
            haxby_split,
            seed_rois,
            labels=[1, 2, 3, 4, 5],
            detrend=True,
            standardize="zscore_sample",
            high_pass_hz=0.01,
        )
        select_condition(signals, condition="face")
        stack_conditions(signals, conditions=["face", "house"])
    assert isinstance(signals.data, dask.array.Array)


def test_labels_file_is_the_only_data_read(haxby, seed_rois, tmp_path, monkeypatch):
    from roidask.io import nifti

    labels_path = tmp_path / "rois.nii.gz"
    nib.save(seed_rois, labels_path)
    reads = []
    original = nifti.NiftiSource.read

    def spy(self, *args, **kwargs):
        reads.append(self.path)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nifti.NiftiSource, "read", spy)
    with raise_if_dask_computes(max_computes=1) as scheduler:
        signals = extract_signals(haxby.bold, labels_path, strategy="median")
    assert scheduler.total_computes == 1
    assert reads == [labels_path]
    assert signals.sizes == {"roi": 5, "time": 1452}


def test_extraction_with_cleaning_matches_nilearn_clean(haxby_bold, haxby_img, seed_rois):
    runs = haxby_bold["run"].values
    reference = clean(
        masker_signals(haxby_img, seed_rois).T,
        runs=runs,
        detrend=True,
        standardize="zscore_sample",
        filter="cosine",
        high_pass=0.01,
        t_r=2.5,
    ).T
    signals = extract_signals(
        haxby_bold, seed_rois, detrend=True, standardize="zscore_sample", high_pass_hz=0.01
    )
    np.testing.assert_allclose(computed(signals), reference, rtol=1e-6, atol=1e-9)
    assert signals.attrs["cleaning"] == "linear detrend, cosine high-pass 0.01 Hz, zscore_sample"


def test_xarray_and_nibabel_inputs_give_the_same_type(haxby, haxby_img, seed_rois):
    from_path = extract_signals(haxby.bold, seed_rois)
    from_nibabel = extract_signals(haxby_img, seed_rois)
    labels_xr = xr.DataArray(
        np.asarray(seed_rois.dataobj),
        dims=("x", "y", "z"),
        attrs={"affine": seed_rois.affine.tolist()},
    )
    from_xarray = extract_signals(as_image(haxby.bold), labels_xr)
    for out in (from_path, from_nibabel, from_xarray):
        assert isinstance(out, xr.DataArray) and isinstance(out.data, dask.array.Array)
    np.testing.assert_array_equal(computed(from_path), computed(from_xarray))
    np.testing.assert_array_equal(computed(from_path), computed(from_nibabel))


# -- bad input: specific errors before anything is computed -------------------------------------
def test_non_integer_labels_are_refused(haxby_bold, seed_rois):
    labels = np.asarray(seed_rois.dataobj).astype(np.float32)
    labels[3, 4, 0] = 1.5
    labels[5, 5, 0] = 2.25
    bad = nib.Nifti1Image(labels, seed_rois.affine)
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match=r"\[1\.5, 2\.25\]"):
        extract_signals(haxby_bold, bad)


def test_label_grid_mismatch_is_refused(haxby_bold, seed_rois):
    affine = seed_rois.affine.copy()
    affine[0, 3] += 5.0
    shifted = nib.Nifti1Image(np.asarray(seed_rois.dataobj), affine)
    with raise_if_dask_computes(), pytest.raises(GridMismatchError, match="labels_img"):
        extract_signals(haxby_bold, shifted)
    small = nib.Nifti1Image(np.ones((4, 4, 1), dtype=np.int16), seed_rois.affine)
    with raise_if_dask_computes(), pytest.raises(GridMismatchError, match="mask_img"):
        extract_signals(haxby_bold, seed_rois, mask_img=small)


def test_3d_bold_is_refused(haxby_img, seed_rois):
    volume = nib.Nifti1Image(np.asanyarray(haxby_img.dataobj)[..., 0], haxby_img.affine)
    with raise_if_dask_computes(), pytest.raises(ImageDimensionError, match=r"bold_img.*4D"):
        extract_signals(volume, seed_rois)


def test_all_background_labels_are_refused(haxby_bold, seed_rois):
    empty = nib.Nifti1Image(np.zeros(seed_rois.shape, dtype=np.int16), seed_rois.affine)
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match="background"):
        extract_signals(haxby_bold, empty)


def test_unknown_strategy_lists_the_valid_ones(haxby_bold, seed_rois):
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError) as info:
        extract_signals(haxby_bold, seed_rois, strategy="average")
    assert "'average'" in str(info.value)
    assert all(name in str(info.value) for name in STRATEGIES)


@pytest.mark.parametrize("strategy", ["median", "maximum", "variance"])
def test_fwhm_with_a_non_linear_strategy_is_refused(haxby_bold, seed_rois, strategy):
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match=r"fwhm.*linear"):
        extract_signals(haxby_bold, seed_rois, strategy=strategy, fwhm=6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": [1, 1, 2]}, "duplicate"),
        ({"labels": [0, 1]}, "background"),
        ({"labels": [1.5]}, "integer"),
        ({"fwhm": -2}, "fwhm"),
        ({"high_pass_hz": 0.01, "tr_s": -1}, "tr_s"),
        ({"standardize": "psc"}, "standardize"),
    ],
)
def test_bad_options_are_refused(haxby_bold, seed_rois, kwargs, match):
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match=match):
        extract_signals(haxby_bold, seed_rois, **kwargs)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stored_integers_are_scaled_as_gathered(tmp_path, rng, strategy):
    """(reference, ours): signals of the scaled (float64) values vs of the stored int16 with
    their scaling (``bold_from_nifti(..., scaled=False)``): the same bits."""
    from roidask.io import bold_from_nifti
    from roidask.io.nifti import write_nifti

    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    stored = rng.integers(-3000, 3000, size=(7, 6, 5, 12), dtype=np.int16)
    path = write_nifti(stored, tmp_path / "bold.nii", affine=affine, scl_slope=0.07, scl_inter=9)
    labels = nib.Nifti1Image(rng.integers(0, 4, size=(7, 6, 5)).astype(np.int32), affine)
    kwargs = {"fwhm": 5.0} if strategy in ("mean", "sum") else {}
    for chunks in ({"x": 3, "y": 4, "time": 5}, None):
        values = bold_from_nifti(path, chunks=chunks)
        raw = bold_from_nifti(path, chunks=chunks, scaled=False)
        assert raw.dtype == np.int16 and values.dtype == np.float64
        want = extract_signals(values, labels, strategy=strategy, **kwargs)
        got = extract_signals(raw, labels, strategy=strategy, **kwargs)
        assert got.dtype == want.dtype == np.float64
        np.testing.assert_array_equal(got.values, want.values)


def test_a_fwhm_whose_kernel_has_radius_0_is_no_smoothing(haxby_bold, seed_rois):
    # as smooth_img: one weight, the identity (scipy divides by zero building the kernel
    # once sigma**2 underflows: a ZeroDivisionError after the whole data pass)
    expected = extract_signals(haxby_bold, seed_rois).values
    for fwhm in (1e-300, 0.1):
        got = extract_signals(haxby_bold, seed_rois, fwhm=fwhm).values
        np.testing.assert_array_equal(got, expected)


def test_a_lazy_mask_img_is_computed_when_called_as_labels_img_is(haxby, haxby_bold):
    """As documented: the mask decides each ROI's voxels, so it is read at the call
    (one more compute than without it), not when the signals are computed."""
    from roidask.ops import mean_img, threshold_img

    counts = []
    for mask_img in (None, threshold_img(mean_img(haxby_bold), threshold=100)):
        scheduler = CountingScheduler(max_computes=10)
        with dask.config.set(scheduler=scheduler):
            signals = extract_signals(haxby_bold, haxby.mask, mask_img=mask_img)
        counts.append(scheduler.total_computes)
        assert dask.is_dask_collection(signals.data)  # the signals themselves: lazy
    assert counts == [1, 2]
