"""smooth_img against nilearn.image.smooth_img: values, types, chunking, laziness, errors.

Tolerance: both sides run the same float32 scipy passes on the same values, so they
agree to float32 rounding (in practice bit for bit). We assert rtol=1e-6 plus an
absolute tolerance of 1e-6 x max|reference|: float32 rounding of the intermediate
passes is relative to the data scale, not to a voxel's own value, which matters
where smoothed random data crosses zero.
"""

from __future__ import annotations

import warnings

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from helpers.lazy import raise_if_dask_computes
from hypothesis import given
from hypothesis import strategies as st
from nilearn import image as nimage

from roidask.exceptions import InvalidParameterError
from roidask.io import as_image, bold_from_nifti
from roidask.ops.kernels import fwhm_to_sigma_voxels
from roidask.ops.smooth import smooth_array, smooth_img, smoothing_dtype


def _nilearn(img, fwhm) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn warns for fwhm=0
        out = nimage.smooth_img(img, fwhm)
    return np.asanyarray(out.dataobj)


def assert_matches(ours, ref):
    ours = np.asarray(ours)
    assert ours.dtype == ref.dtype
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6 * scale)


def _affine(vox=(2.0, 3.0, 2.5)):
    aff = np.diag([*vox, 1.0])
    aff[:3, 3] = [-10.0, 4.0, 7.5]
    return aff


@pytest.fixture(scope="module")
def haxby_head(haxby):
    """The first 40 volumes of the real Haxby slice, as nibabel and as roidask images."""
    return nimage.index_img(str(haxby.bold), slice(0, 40))


@pytest.mark.parametrize("fwhm", [6.0, (None, 5.0, 12.0), 0])
@pytest.mark.parametrize(
    "chunks", ["x=7,y=7,time=13", "x=1,y=2,time=40"], ids=["x7-y7-t13", "x1-y2"]
)
def test_matches_nilearn_on_haxby_slice(haxby, haxby_head, fwhm, chunks):
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks=chunks).isel(time=slice(0, 40))
    ours = smooth_img(bold, fwhm=fwhm)
    assert ours.dims == bold.dims
    assert ours.chunks == bold.chunks
    assert ours.dtype == np.float32  # int16 source
    np.testing.assert_array_equal(ours["condition"].values, bold["condition"].values)
    assert_matches(ours.values, _nilearn(haxby_head, fwhm))


def test_matches_nilearn_on_whole_haxby_series(haxby):
    ours = smooth_img(haxby.bold, fwhm=6)
    assert isinstance(ours, xr.DataArray)
    assert_matches(ours.values, _nilearn(str(haxby.bold), 6))


@pytest.mark.parametrize("fwhm", [5.0, (3.0, None, 9.0), 25.0, None])
@pytest.mark.parametrize(
    "chunks",
    [{"x": 7}, {"x": 1, "y": 1, "z": 1}, {"x": 4, "y": 5, "z": 2, "time": 1}],
    ids=["x7", "1-voxel", "mixed"],
)
def test_matches_nilearn_on_random_4d(rng, fwhm, chunks):
    data = rng.normal(0.0, 30.0, size=(15, 7, 6, 2)).astype(np.float32)
    data[3, 4, 5, 0] = np.nan
    data[0, 0, 0, 1] = np.inf
    data[14, 6, 5, 1] = -np.inf
    nimg = nib.Nifti1Image(data, _affine())
    ours = smooth_img(as_image(nimg).chunk(chunks), fwhm=fwhm)
    values = ours.values
    assert np.isfinite(values).all()
    assert_matches(values, _nilearn(nimg, fwhm))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(np.int16, np.float32), (np.uint8, np.float32), (np.int64, np.float64),
     (np.float64, np.float64), (np.float32, np.float32)],
)  # fmt: skip
def test_types_as_nilearn(rng, dtype, expected):
    data = rng.integers(0, 200, size=(9, 8, 7)).astype(dtype)
    nimg = nib.Nifti1Image(data, _affine(), dtype=dtype)
    ours = smooth_img(as_image(nimg).chunk({"x": 2, "y": 3}), fwhm=4.0)
    assert ours.dtype == expected
    assert_matches(ours.values, _nilearn(nimg, 4.0))


@pytest.mark.parametrize("kind", ["path", "nib.load", "nib.load, get_fdata", "store",
                                  "bold_from_nifti(scaled=False)"])  # fmt: skip
def test_a_scaled_nifti_smooths_as_nilearn_whatever_its_kind(tmp_path, rng, kind):
    """(reference, ours): nilearn's smooth_img of int16 with scl_slope/scl_inter (float64,
    as nibabel scales) vs roidask's of the file, a nibabel image loaded or not, its store
    and its stored integers: one type, float64, and the same bits (a path gave float32,
    stored integers were smoothed unscaled)."""
    from roidask.io import convert

    path = tmp_path / "scaled.nii.gz"
    img = nib.Nifti1Image(rng.integers(0, 1000, (9, 8, 7, 6)).astype(np.int16), _affine())
    img.header.set_slope_inter(0.37, 12.5)
    nib.save(img, path)
    labels = tmp_path / "labels.txt"
    labels.write_text("labels chunks\n" + "face 0\n" * 6)
    reference = _nilearn(nib.load(path), 6.0)
    assert reference.dtype == np.float64
    if kind == "path":
        given = path
    elif kind.startswith("nib.load"):
        given = nib.load(path)
        if "get_fdata" in kind:
            given.get_fdata()
    elif kind == "store":
        given = convert(path, labels=labels, out=tmp_path / "s.zarr")
    else:
        given = bold_from_nifti(path, scaled=False)
        assert given.dtype == np.int16
    ours = smooth_img(given, fwhm=6.0)
    assert ours.dtype == np.float64
    np.testing.assert_array_equal(reference, ours.values)


_shapes = st.tuples(st.integers(1, 16), st.integers(1, 7), st.integers(1, 5), st.integers(1, 2))


@given(
    shape=_shapes,
    chunk_fracs=st.tuples(*(st.floats(0.0, 1.0) for _ in range(4))),
    fwhm=st.one_of(
        st.none(),
        st.floats(0.0, 12.0),
        st.tuples(*(st.one_of(st.none(), st.floats(0.0, 12.0)) for _ in range(3))),
    ).filter(  # nilearn/scipy fail on a sigma whose square underflows; we return the input
        lambda f: all(v is None or v == 0 or v > 1e-3 for v in np.ravel(np.array(f, dtype=object)))
    ),
    vox=st.tuples(*(st.floats(0.5, 4.0) for _ in range(3))),
    seed=st.integers(0, 2**16),
)
def test_result_does_not_depend_on_chunking(shape, chunk_fracs, fwhm, vox, seed):
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    nimg = nib.Nifti1Image(data, _affine(vox))
    chunks = {
        dim: max(1, round(frac * n))
        for dim, frac, n in zip(("x", "y", "z", "time"), chunk_fracs, shape, strict=True)
    }
    ours = smooth_img(as_image(nimg).chunk(chunks), fwhm=fwhm).values
    assert_matches(ours, _nilearn(nimg, fwhm))


@given(
    shape=_shapes,
    fwhm=st.sampled_from([None, 3.0, 6.0, (8.0, None, 4.0)]),
    dtype=st.sampled_from(["int16", "float32", "float64"]),
    vox=st.tuples(*(st.floats(0.5, 4.0) for _ in range(3))),
    seed=st.integers(0, 2**16),
)
def test_smooth_array_equals_smooth_img_and_nilearn(shape, fwhm, dtype, vox, seed):
    """The in-memory kernel of the pipeline's pass: nilearn's and our values (to rounding)."""
    rng = np.random.default_rng(seed)
    data = (rng.normal(size=shape) * 300).astype(dtype)
    if dtype != "int16":
        data.flat[rng.integers(data.size)] = np.nan
    nimg = nib.Nifti1Image(data, _affine(vox))
    sigma = fwhm_to_sigma_voxels(_affine(vox), fwhm)
    ours = smooth_array(data, sigma, smoothing_dtype(data.dtype))
    assert ours.flags.f_contiguous and not np.isnan(ours).any()  # NaN counts as 0
    assert ours.shape == data.shape
    assert_matches(ours, smooth_img(as_image(nimg), fwhm=fwhm).values)
    assert_matches(ours, _nilearn(nib.Nifti1Image(data.copy(), _affine(vox)), fwhm))


@pytest.mark.parametrize("matrix_max", [0, 9, 200])
@pytest.mark.parametrize("shape", [(40, 64, 9, 5), (150, 7, 12), (1, 30, 2, 3)])
def test_smooth_array_matrix_and_scipy_axes(monkeypatch, rng, shape, matrix_max):
    """Axes filtered by scipy (longer than MATRIX_MAX_VOXELS) or as matrix products."""
    from roidask.ops import smooth

    monkeypatch.setattr(smooth, "MATRIX_MAX_VOXELS", matrix_max)
    data = (rng.normal(size=shape) * 300).astype(np.int16)
    affine = _affine((3.5, 3.75, 3.0))
    sigma = fwhm_to_sigma_voxels(affine, 6.0)
    ours = smooth_array(data, sigma, np.float32)
    ref = smooth_img(as_image(nib.Nifti1Image(data, affine)), fwhm=6.0).values
    if matrix_max == 0:  # scipy on every axis: smooth_img's values bit for bit
        np.testing.assert_array_equal(ours, ref)
    else:
        assert_matches(ours, ref)
        assert np.abs(ours - ref).max() > 0  # the matrix path was taken


def test_kernel_of_radius_zero_is_the_identity(rng):
    data = rng.normal(size=(5, 4, 3)).astype(np.float32)
    nimg = nib.Nifti1Image(data, np.eye(4))
    img = as_image(nimg).chunk({"x": 2})
    # sigma**2 underflows here, which makes scipy (and so nilearn) divide by zero
    np.testing.assert_array_equal(smooth_img(img, fwhm=1e-200).values, data)
    assert_matches(smooth_img(img, fwhm=0.2).values, _nilearn(nimg, 0.2))


def test_time_is_never_smoothed():
    data = np.zeros((7, 7, 7, 3), dtype=np.float32)
    data[3, 3, 3, 1] = 1.0
    img = as_image(nib.Nifti1Image(data, np.eye(4))).chunk({"x": 2, "time": 1})
    out = smooth_img(img, fwhm=4.0).values
    assert np.all(out[..., 0] == 0) and np.all(out[..., 2] == 0)
    assert out[..., 1].sum() == pytest.approx(1.0, rel=1e-5)  # reflect mode keeps mass


def test_smoothing_commutes_with_the_mean(rng):
    data = rng.normal(50.0, 5.0, size=(10, 9, 8, 6))
    img = as_image(nib.Nifti1Image(data, _affine())).chunk({"x": 3, "y": 4})
    mean_of_smooth = smooth_img(img, fwhm=6.0).mean("time")
    smooth_of_mean = smooth_img(img.mean("time").assign_attrs(img.attrs), fwhm=6.0)
    np.testing.assert_allclose(smooth_of_mean.values, mean_of_smooth.values, rtol=1e-12)


def test_selecting_conditions_first_is_exact(haxby):
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="x=9,time=100")
    keep = bold.condition.isin(["face", "house"])
    selected_then_smoothed = smooth_img(bold.sel(time=keep), fwhm=5.0)
    smoothed_then_selected = smooth_img(bold, fwhm=5.0).sel(time=keep)
    np.testing.assert_array_equal(selected_then_smoothed.values, smoothed_then_selected.values)


def test_building_the_graph_reads_nothing(haxby):
    with raise_if_dask_computes():
        bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="x=7,y=3,time=50")
        out = smooth_img(bold, fwhm=(6.0, None, 3.0))
        from_path = smooth_img(haxby.bold, fwhm=6.0)
        mask = smooth_img(haxby.mask, fwhm=4.0)
    assert isinstance(out.data, da.Array) and isinstance(from_path.data, da.Array)
    assert out.attrs["affine"] == bold.attrs["affine"]
    assert mask.dims == ("x", "y", "z")
    assert out.attrs["smoothing_fwhm_mm"] == pytest.approx([6.0, 0.0, 3.0])


@pytest.mark.parametrize(
    "fwhm",
    [-1.0, (2.0, -0.5, None), (1.0, 2.0), "fast", float("nan"), True, "6", (6, "6", 6), b"6"],
)
def test_bad_fwhm_is_refused_before_any_compute(haxby, fwhm):
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match="fwhm"):
        smooth_img(haxby.bold, fwhm=fwhm)


def test_smooth_array_bits_do_not_depend_on_blas_threads(rng):
    """Multi-threaded BLAS splits products differently: roidask computes on one thread."""
    import dask
    from threadpoolctl import threadpool_info, threadpool_limits

    from roidask.pipeline import compute

    data = rng.integers(0, 3000, size=(40, 64, 64, 9)).astype(np.int16)
    sigma = fwhm_to_sigma_voxels(_affine((3.5, 3.75, 3.75)), 6.0)
    with threadpool_limits(limits=1, user_api="blas"):
        one = smooth_array(data, sigma, np.float32)
    tasks = [
        dask.delayed(smooth_array)(data, sigma, np.float32, dask_key_name=f"s{i}")
        for i in range(4)
    ]
    with threadpool_limits(limits=4, user_api="blas"):  # a user's setting
        before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        for local in (True, False):
            with dask.config.set(num_workers=3):
                outs = compute(*tasks, local=local)
            assert all(o.tobytes() == one.tobytes() for o in outs)
        after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert after == before  # the caller's BLAS setting is restored
