"""Thresholding, binarisation and mask algebra: numpy parity, grids, laziness, bad input."""

from __future__ import annotations

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from helpers.lazy import raise_if_dask_computes
from nilearn.image import smooth_img
from scipy import ndimage, stats

from roidask.exceptions import GridMismatchError, ImageDimensionError, InvalidParameterError
from roidask.ops.threshold import (
    as_mask,
    binarize_img,
    mask_and,
    mask_difference,
    mask_not,
    mask_or,
    resample_mask,
    threshold_img,
)
from roidask.pipeline import mask_values


def as_img(data, chunks=-1, affine=None) -> xr.DataArray:
    affine = np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine
    arr = da.from_array(np.asarray(data), chunks=chunks)
    return xr.DataArray(arr, dims=("x", "y", "z"), attrs={"affine": np.asarray(affine).tolist()})


@pytest.fixture(scope="module")
def seed_logp(haxby_arrays):
    """-log10 p of the face vs house t-test on the 6 mm smoothed slice (NaN -> 0, clip 10)."""
    data, affine, conditions = haxby_arrays
    smoothed = smooth_img(nib.Nifti1Image(data, affine), fwhm=6).get_fdata()
    _, p = stats.ttest_ind(
        smoothed[..., conditions == "face"], smoothed[..., conditions == "house"], axis=-1
    )
    logp = -np.log10(p)
    logp[np.isnan(logp)] = 0
    return np.minimum(logp, 10), affine


@pytest.fixture
def values(rng):
    v = rng.normal(0, 2, size=(9, 8, 7))
    v[0, 0, 0] = np.nan
    v[1, 1, 1], v[2, 2, 2], v[3, 3, 3] = 1.5, -1.5, 2.0  # on the thresholds
    return v


def test_seed_threshold_and_mask_equals_numpy(seed_logp, haxby):
    logp, affine = seed_logp
    vt = nib.load(haxby.mask).get_fdata() != 0
    expected = (logp >= 5) & vt  # the seed: log_p[log_p < 5] = 0, then AND the mask
    logp_img = as_img(logp, (7, 3, 1), affine)
    got = mask_and(threshold_img(logp_img, threshold=5), haxby.mask)
    np.testing.assert_array_equal(expected, got.values)
    assert got.dtype == bool
    assert int(ndimage.label(ndimage.binary_dilation(got.values))[1]) == 5
    np.testing.assert_array_equal(
        np.where(logp >= 5, logp, 0),
        threshold_img(logp_img, threshold=5, binarize=False).values,
    )


@pytest.mark.parametrize(
    ("kwargs", "reference"),
    [
        ({"threshold": 1.5}, lambda v: v >= 1.5),
        ({"threshold": 1.5, "inclusive": False}, lambda v: v > 1.5),
        ({"threshold": -1.5, "mode": "below"}, lambda v: v <= -1.5),
        ({"threshold": -1.5, "mode": "below", "inclusive": False}, lambda v: v < -1.5),
        ({"threshold": 1.5, "mode": "absolute"}, lambda v: np.abs(v) >= 1.5),
        ({"threshold": 1.5, "mode": "two-sided"}, lambda v: np.abs(v) >= 1.5),
        ({"threshold": (-1.5, 2.0), "mode": "two-sided"}, lambda v: (v <= -1.5) | (v >= 2.0)),
        (
            {"threshold": (-1.5, 2.0), "mode": "two-sided", "inclusive": False},
            lambda v: (v < -1.5) | (v > 2.0),
        ),
    ],
)
def test_threshold_modes_equal_numpy(values, kwargs, reference):
    expected = reference(values)  # NaN compares False: never passes
    img = as_img(values, (2, 3, 7))
    np.testing.assert_array_equal(expected, threshold_img(img, **kwargs).values)
    np.testing.assert_array_equal(
        np.where(expected, values, 0), threshold_img(img, binarize=False, **kwargs).values
    )


def test_binarize_nonzero_is_inside_nan_outside(values):
    values[4] = 0
    expected = (values != 0) & ~np.isnan(values)
    np.testing.assert_array_equal(expected, binarize_img(as_img(values, 3)).values)
    ints = np.arange(24).reshape(2, 3, 4) % 3
    np.testing.assert_array_equal(ints != 0, binarize_img(as_img(ints, 2)).values)


def test_mask_algebra_equals_numpy_with_different_chunks(rng):
    a, b, c = (rng.random((10, 9, 8)) < 0.5 for _ in range(3))
    ia, ib, ic = as_img(a, 3), as_img(b.astype(np.uint8), (5, 2, 8)), as_img(c.astype(float), 1)
    np.testing.assert_array_equal(a & b & c, mask_and(ia, ib, ic).values)
    np.testing.assert_array_equal(a | b | c, mask_or(ia, ib, ic).values)
    np.testing.assert_array_equal(a & ~b, mask_difference(ia, ib).values)
    np.testing.assert_array_equal(~b, mask_not(ib).values)
    assert mask_and(ia, ib).chunks == ia.chunks  # the first mask's chunks


def test_grid_mismatch_states_both_grids(rng):
    a = as_img(rng.random((6, 5, 4)) < 0.5)
    other_shape = as_img(rng.random((6, 5, 3)) < 0.5)
    shifted = as_img(rng.random((6, 5, 4)) < 0.5, affine=np.diag([3.0, 3.0, 3.0, 1.0]) + 0.01)
    with pytest.raises(
        GridMismatchError,
        match=r"mask_img and other_imgs\[0\].*\(6, 5, 4\).*"
        r"\(6, 5, 3\).*resample",
    ):
        mask_and(a, other_shape)
    with pytest.raises(GridMismatchError, match=r"mask_img and other_imgs\[1\]"):
        mask_or(a, a, shifted)
    with pytest.raises(GridMismatchError, match=r"affine"):
        mask_difference(a, shifted)


def test_affines_within_tolerance_are_the_same_grid(rng):
    a = rng.random((4, 4, 4)) < 0.5
    near = as_img(a, affine=np.diag([3.0, 3.0, 3.0, 1.0]) + 1e-5)
    np.testing.assert_array_equal(a, mask_and(as_img(a), near).values)


def test_nearest_resampling_equals_scipy_on_the_whole_array(rng):
    source = rng.random((12, 10, 9)) < 0.5
    src_affine = np.array(
        [[2.0, 0.1, 0, -11.3], [-0.1, 2.0, 0, -9.7], [0, 0, 2.5, -10.2], [0, 0, 0, 1]]
    )
    tgt_affine = np.array(
        [[3.0, 0, 0, -12.0], [0, 3.0, 0, -10.0], [0, 0, 3.0, -11.0], [0, 0, 0, 1]]
    )
    target = rng.random((8, 7, 8)) < 0.7
    transform = np.linalg.solve(src_affine, tgt_affine)
    resampled = ndimage.affine_transform(
        source.astype(np.uint8),
        transform[:3, :3],
        offset=transform[:3, 3],
        output_shape=target.shape,
        order=0,
        mode="constant",
    ).astype(bool)
    assert 0 < resampled.sum() < resampled.size
    src_img = as_img(source, (5, 3, 4), src_affine)
    tgt_img = as_img(target, (3, 2, 8), tgt_affine)
    got = resample_mask(src_img, tgt_img)
    assert got.chunks == tgt_img.chunks
    np.testing.assert_array_equal(resampled, got.values)
    np.testing.assert_array_equal(
        target & resampled, mask_and(tgt_img, src_img, resample="nearest").values
    )
    with pytest.raises(GridMismatchError):
        mask_and(tgt_img, src_img)  # never silent


def test_building_graphs_computes_and_reads_nothing(haxby):
    with raise_if_dask_computes():
        stat = threshold_img(haxby.mask, threshold=0.5)
        mask = mask_and(stat, haxby.mask, haxby.mask)
        other = mask_or(mask_not(mask), binarize_img(haxby.mask))
        shifted = as_img(np.ones((5, 5, 1), dtype=bool), affine=nib.load(haxby.mask).affine)
        resampled = mask_and(haxby.mask, shifted, resample="nearest")
    for res in (stat, mask, other, resampled):
        assert isinstance(res, xr.DataArray)
        assert isinstance(res.data, da.Array)
        assert res.attrs["affine"] == nib.load(haxby.mask).affine.tolist()
    np.testing.assert_array_equal(nib.load(haxby.mask).get_fdata() != 0, mask.values)
    assert other.values.all()


def test_same_result_type_for_path_nibabel_and_xarray(haxby):
    img = nib.load(haxby.mask)
    inputs = (haxby.mask, img, as_img(img.get_fdata(), 7, img.affine))
    results = [threshold_img(x, threshold=0.5) for x in inputs]
    for res in results:
        assert isinstance(res, xr.DataArray)
        assert isinstance(res.data, da.Array)
        np.testing.assert_array_equal(img.get_fdata() >= 0.5, res.values)


def test_non_binary_mask_lists_the_values():
    values = np.zeros((4, 4, 4))
    values[0, 0, 0], values[0, 1, 0], values[1, 0, 0] = 2.0, 0.5, np.nan
    lazy = mask_and(as_img(values), as_img(np.ones((4, 4, 4), dtype=bool)))
    with pytest.raises(
        InvalidParameterError, match=r"mask_img: .*found the value\(s\) 0\.5, 2, nan"
    ):
        lazy.compute()
    with pytest.raises(InvalidParameterError, match=r"mask_img: .*binary.*got data of type <U1"):
        as_mask(as_img(np.full((2, 2, 2), "a")))


def test_nearly_binary_values_are_shown_as_their_type_holds_them():
    # a resampled mask: "found the value(s) 1, 1" said nothing of what was wrong
    values = np.zeros((4, 4, 4), dtype=np.float32)
    values[0, 0, 0], values[1, 1, 1] = np.float32(1.0000001), np.float32(0.9999999)
    shown = r"found the value\(s\) 0\.9999999, 1\.0000001[ ;]"
    with pytest.raises(InvalidParameterError, match=shown):
        as_mask(as_img(values)).compute()  # lazily, block by block
    with pytest.raises(InvalidParameterError, match=shown):
        mask_values(as_img(values))  # the pipeline's masks, read at once


def test_4d_image_is_refused(haxby):
    with pytest.raises(ImageDimensionError, match=r"img( \S+)?: got a 4D image"):
        threshold_img(haxby.bold, threshold=1)
    with pytest.raises(ImageDimensionError, match=r"other_imgs\[0\]( \S+)?: got a 4D image"):
        mask_and(haxby.mask, haxby.bold)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 1, "mode": "greater"}, r"mode: expected one of .*'greater'"),
        ({"threshold": np.nan}, r"threshold: expected a finite number, got nan"),
        ({"threshold": True}, r"threshold: expected a finite number, got True"),
        ({"threshold": "5"}, r"threshold: expected a finite number, got '5'"),
        ({"threshold": -1, "mode": "absolute"}, r"threshold: mode 'absolute' needs .*>= 0"),
        ({"threshold": (2, 1), "mode": "two-sided"}, r"low <= high .*\(2\.0, 1\.0\)"),
        ({"threshold": (1, 2, 3), "mode": "two-sided"}, r"one number or \(low, high\)"),
        ({"threshold": 1, "inclusive": "yes"}, r"inclusive: expected True or False"),
    ],
)
def test_bad_threshold_parameters(kwargs, message):
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match=message):
        threshold_img(as_img(np.zeros((2, 2, 2))), **kwargs)


def test_bad_algebra_parameters():
    a = as_img(np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(InvalidParameterError, match=r"resample: expected None .*'linear'"):
        mask_and(a, a, resample="linear")
    with pytest.raises(InvalidParameterError, match=r"^other_imgs: mask_or expected at least one"):
        mask_or(a)
