"""The image model: as_image normalisation, laziness, chunking, writing back to NIfTI."""

from __future__ import annotations

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from helpers.files import tree
from helpers.lazy import raise_if_dask_computes

from roidask.exceptions import (
    GridMismatchError,
    ImageDimensionError,
    ImageTypeError,
    InvalidParameterError,
    RoidaskTypeError,
    StoreError,
    UnreadableFileError,
)
from roidask.io import (
    as_image,
    bold_from_nifti,
    check_same_grid,
    convert,
    image_from_nifti,
    like_image,
    to_nifti,
)
from roidask.io.chunks import normalize_chunks
from roidask.io.grid import grid_attrs


def test_as_image_accepts_path_nibabel_xarray_and_store(haxby, tmp_path):
    from_path = as_image(haxby.bold)
    from_nib = as_image(nib.load(haxby.bold))
    store = convert(haxby.bold, labels=haxby.labels, out=tmp_path / "s.zarr")
    from_store = as_image(store)
    from_xr = as_image(from_store)
    for img in (from_path, from_nib, from_store, from_xr):
        assert isinstance(img, xr.DataArray)
        assert isinstance(img.data, da.Array)
        assert img.dims == ("x", "y", "z", "time")
        np.testing.assert_allclose(np.asarray(img.attrs["affine"]), nib.load(haxby.bold).affine)
    np.testing.assert_array_equal(from_path.values, from_store.values)


def test_building_graphs_reads_nothing(haxby):
    with raise_if_dask_computes():
        bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="x=7,y=3,time=50")
        assert bold.chunks[0] == (7,) * 5 + (5,)
        mean = bold.astype("float32").mean("time")
    assert mean.shape == (40, 20, 1)


def test_numpy_array_is_refused():
    with pytest.raises(ImageTypeError, match="bare array has no voxel grid"):
        as_image(np.zeros((3, 3, 3)))


@pytest.mark.parametrize("ndim", [5, 2, "4", 3.5, True])
def test_ndim_itself_is_checked(haxby, ndim):
    with pytest.raises(
        InvalidParameterError, match=rf"^ndim: expected one of \[None, 3, 4\], got {ndim!r}$"
    ) as info:
        as_image(haxby.bold, ndim=ndim)
    assert info.value.param == "ndim"


def test_dimension_check(haxby, tmp_path):
    """A file of the wrong dimension is named with its parameter; one volume of a 4D file
    is a 3D image, as nilearn reads a mask of shape (x, y, z, 1)."""
    with pytest.raises(ImageDimensionError, match=r"^mask_img \S+bold\S*: got a 4D image "
                       r"with shape \(40, 20, 1, 1452\); expected a 3D"):  # fmt: skip
        as_image(haxby.bold, ndim=3, param="mask_img")
    mask = nib.load(haxby.mask)
    one = tmp_path / "mask4d.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj)[..., None], mask.affine), one)
    got = as_image(one, ndim=3, param="mask_img")
    assert got.dims == ("x", "y", "z")
    np.testing.assert_array_equal(got.values, np.asarray(mask.dataobj))


def test_grid_mismatch_message_names_both(haxby):
    mask = as_image(haxby.mask)
    other = mask.copy()
    other.attrs = dict(mask.attrs, affine=(np.asarray(mask.attrs["affine"]) * 2).tolist())
    with pytest.raises(GridMismatchError, match=r"mask_img and other .*shape \(40, 20, 1\)"):
        check_same_grid(mask, other, names=("mask_img", "other"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("x=0", "must be >= 1"),
        ("w=3", "unknown dimension 'w'"),
        ("x", "dim=size"),
        ("x=abc", "must be an integer"),
        ("x=5,y=2,x=6", r"^chunks: 'x' is given twice in 'x=5,y=2,x=6'; expected each"),
    ],
)
def test_bad_chunks(spec, message):
    with pytest.raises(InvalidParameterError, match=message):
        normalize_chunks(spec, (4, 4, 4, 10), 2)


def test_default_chunks_are_whole_volumes():
    chunks = normalize_chunks(None, (40, 64, 64, 1452), 2)
    assert (chunks["x"], chunks["y"], chunks["z"]) == (40, 64, 64)
    assert 8 * 2**20 < chunks["time"] * 40 * 64 * 64 * 2 <= 16 * 2**20


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_write_back_on_source_grid(haxby, tmp_path, suffix):
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="time=100")
    mean = bold.astype("float32").mean("time")
    out = to_nifti(like_image(mean, bold), tmp_path / f"mean{suffix}")
    back = nib.load(out)
    ref = nib.load(haxby.bold)
    np.testing.assert_allclose(back.affine, ref.affine)
    np.testing.assert_allclose(back.get_fdata(), ref.get_fdata().mean(axis=3), rtol=1e-5)
    # a 4D dask result streams back with its TR
    out4 = to_nifti(bold[..., :300], tmp_path / f"first300{suffix}")
    img4 = nib.load(out4)
    assert img4.shape == (40, 20, 1, 300)
    assert img4.header.get_zooms()[3] == pytest.approx(2.5)
    np.testing.assert_array_equal(np.asanyarray(img4.dataobj), ref.dataobj[..., :300])
    # bare arrays need a reference grid
    out3 = to_nifti(np.ones((40, 20, 1), dtype=bool), tmp_path / f"m{suffix}", reference=bold)
    assert nib.load(out3).get_data_dtype() == np.uint8
    with pytest.raises(ImageTypeError, match="reference"):
        to_nifti(np.ones((40, 20, 1)), tmp_path / "x.nii")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii.zarr"])
def test_to_nifti_refuses_values_its_dtype_cannot_hold(haxby, tmp_path, suffix):
    """A mean EPI (0..2474) as int8 was written wrapped (-128..127), as bool as 0..255, and a
    mask times 3 as bool held 3: refused, naming the range found and the type's, and no
    file is left (nor its temporary sibling)."""
    from roidask.ops import mean_img

    mean = mean_img(haxby.bold)
    mask = as_image(haxby.mask)
    for img, dtype, message in [
        (mean, "int8", r"int8 holds -128\.\.127, found values 0\.\.2474\.\d+; choose a type that"),
        (mean, bool, r"bool holds 0 and 1 \(stored as uint8\), found values 0\.\.2474\.\d+ "),
        (mask * 3, bool, r"bool holds 0 and 1 \(stored as uint8\), found values 0\.\.3 \(3 is "),
        (mean.where(mask > 0), "int16", r"int16 cannot hold NaN, found \d+ NaN value\(s\);"),
    ]:
        with pytest.raises(InvalidParameterError, match=rf"^dtype: {message}") as info:
            to_nifti(img, tmp_path / f"out{suffix}", dtype=dtype)
        assert info.value.param == "dtype"
        assert tree(tmp_path) == {}
    written = as_image(to_nifti(mask, tmp_path / f"mask{suffix}", dtype=bool))
    assert written.dtype == np.uint8
    np.testing.assert_array_equal(written.values, mask.values)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii.zarr"])
def test_to_nifti_refuses_a_bad_dtype_mark_or_flag_before_computing(haxby, tmp_path, suffix):
    """They were a raw TypeError (dtype='foo'), nibabel's HeaderDataError ('float16',
    'U3'), an AttributeError (mark=1), or taken as true (overwrite='no')."""
    bold = bold_from_nifti(haxby.bold)
    for kwargs, param, message in [
        ({"dtype": "foo"}, "dtype", r"expected one of the data types bool, uint8, int8, .*'foo'$"),
        ({"dtype": "float16"}, "dtype", r"expected one of the data types .*, got 'float16'$"),
        ({"dtype": "U3"}, "dtype", r"expected one of the data types .*, got 'U3'$"),
        ({"mark": 1}, "mark", r"expected None or a str of 1 to 32 latin-1 characters .*, got 1$"),
        ({"overwrite": "no"}, "overwrite", r"expected True or False, got 'no'$"),
    ]:
        with (
            raise_if_dask_computes(),
            pytest.raises(InvalidParameterError, match=rf"^{param}: {message}") as info,
        ):
            to_nifti(bold, tmp_path / f"out{suffix}", **kwargs)
        assert info.value.param == param
    text = like_image(np.full(bold.shape[:3], "a"), bold)
    with pytest.raises(
        ImageTypeError, match=r"^img: holds values of type <U1; NIfTI stores numbers$"
    ):
        to_nifti(text, tmp_path / f"out{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_like_image_refuses_a_name_or_attrs_of_another_kind(haxby):
    """``name=3`` was taken (a DataArray named 3), ``attrs=3`` was a raw TypeError."""
    mask = as_image(haxby.mask)
    with pytest.raises(RoidaskTypeError, match=r"^name: expected a name \(str\) or None, got 3$"):
        like_image(np.zeros(mask.shape), mask, name=3)
    with pytest.raises(InvalidParameterError, match=r"^attrs: expected a dict of attributes or "):
        like_image(np.zeros(mask.shape), mask, attrs=3)
    assert like_image(np.zeros(mask.shape), mask, name="zeros").name == "zeros"


def test_stored_integers_of_scaled_runs(tmp_path, rng):
    """``scaled=False``: the stored int16 of runs sharing one scaling, and the scaling in
    attrs; (reference, ours): nibabel's scaled values vs scale_stored of what is read."""
    from roidask.io.image import stored_scaling
    from roidask.io.nifti import scale_stored, write_nifti

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    stored = rng.integers(-2000, 2000, size=(4, 5, 3, 6), dtype=np.int16)
    runs = [
        write_nifti(stored, tmp_path / f"r{i}.nii.gz", affine=affine, scl_slope=0.3, scl_inter=5)
        for i in range(2)
    ]
    image = bold_from_nifti(runs, scaled=False)
    assert image.dtype == np.int16
    assert stored_scaling(image) == (np.float32(0.3), 5.0, np.float64)  # header: float32
    for name, value in (("scl_slope", np.float32(0.3)), ("scl_inter", 5.0)):  # per volume
        assert image[name].dims == ("time",) and image[name].dtype == np.float64
        np.testing.assert_array_equal(image[name].values, np.full(12, value, np.float64))
    assert not {"scl_slope", "scl_inter", "scaled_dtype"} & set(image.attrs)
    np.testing.assert_array_equal(image.values, np.concatenate([stored, stored], axis=3))
    values = bold_from_nifti(runs)
    assert values.dtype == np.float64 and stored_scaling(values) is None  # as nibabel
    np.testing.assert_array_equal(
        scale_stored(image.values, *stored_scaling(image)), values.values
    )
    np.testing.assert_array_equal(nib.load(runs[0]).get_fdata(), values.values[..., :6])
    # runs scaled differently, or not at all: their values, as usual
    other = write_nifti(stored, tmp_path / "other.nii.gz", affine=affine, scl_slope=0.5)
    plain = write_nifti(stored, tmp_path / "plain.nii.gz", affine=affine)
    assert stored_scaling(bold_from_nifti([runs[0], other], scaled=False)) is None
    assert bold_from_nifti([runs[0], other], scaled=False).dtype == np.float64
    assert bold_from_nifti(plain, scaled=False).dtype == np.int16
    assert stored_scaling(bold_from_nifti(plain, scaled=False)) is None


def _scaled_run(tmp_path, rng):
    """An int16 run with scl_slope/scl_inter and labels: (stored, values) images of it."""
    from roidask.io.nifti import write_nifti

    stored = rng.integers(-2000, 2000, size=(6, 5, 4, 12), dtype=np.int16)
    path = write_nifti(stored, tmp_path / "r.nii.gz", affine=np.diag([3.0, 3, 3, 1]),
                       scl_slope=0.3, scl_inter=5, tr_s=2.0)  # fmt: skip
    labels = tmp_path / "labels.txt"
    labels.write_text("labels chunks\n" + "".join(f"{c} 0\n" for c in ["face", "house"] * 6))
    return (
        bold_from_nifti(path, labels=labels, scaled=False, chunks="x=4,time=5"),
        bold_from_nifti(path, labels=labels, chunks="x=4,time=5"),
    )


@pytest.mark.parametrize(
    "func",
    ["smooth_img", "mean_img", "std_img", "tsnr_img", "ttest_img", "ttest_1samp_img",
     "ftest_img", "condition_moments", "select_conditions", "as_image", "to_nifti",
     "to_nifti-float32", "to_nifti-nii.zarr"],
)  # fmt: skip
def test_stored_integers_are_scaled_by_every_function_that_does_not_honour_them(
    tmp_path, rng, func
):
    """(reference, ours): each function of the values of a scaled run vs of its stored
    integers (``scaled=False``), which were taken for values (off by hundreds)."""
    from roidask import ops
    from roidask.io.image import stored_scaling

    stored, values = _scaled_run(tmp_path, rng)
    calls = {
        "smooth_img": lambda img: ops.smooth_img(img, fwhm=6),
        "mean_img": ops.mean_img,
        "std_img": ops.std_img,
        "tsnr_img": ops.tsnr_img,
        "ttest_img": ops.ttest_img,
        "ttest_1samp_img": lambda img: ops.ttest_1samp_img(img, condition="face"),
        "ftest_img": lambda img: ops.ftest_img(img, conditions=["face", "house"]),
        "condition_moments": lambda img: ops.condition_moments(img, conditions=["face"]),
        "select_conditions": lambda img: ops.select_conditions(img, conditions=["house"]),
        "as_image": as_image,
        "to_nifti": lambda img: as_image(to_nifti(img, tmp_path / f"{id(img)}.nii.gz")),
        "to_nifti-float32": lambda img: as_image(
            to_nifti(img, tmp_path / f"{id(img)}.nii", dtype=np.float32)
        ),
        "to_nifti-nii.zarr": lambda img: as_image(to_nifti(img, tmp_path / f"{id(img)}.nii.zarr")),
    }
    reference, ours = calls[func](values), calls[func](stored)
    if isinstance(ours, xr.DataArray):
        assert stored_scaling(ours) is None
        reference, ours = xr.Dataset({"v": reference}), xr.Dataset({"v": ours})
    for name in reference.data_vars:
        assert ours[name].dtype == reference[name].dtype
        np.testing.assert_array_equal(reference[name].values, ours[name].values)
    if func == "to_nifti":  # written as the source: its integers and their scaling
        (written,) = tmp_path.glob(f"{id(stored)}.nii.gz")
        assert nib.load(written).get_data_dtype() == np.int16
        assert nib.load(written).dataobj.slope == np.float32(0.3)


def _runs_scaled_differently(tmp_path, rng, n=(7, 5)):
    """Two int16 runs with different scl_slope/scl_inter: (paths, nibabel's values of
    their volumes, concatenated)."""
    from roidask.io.nifti import write_nifti

    affine = np.diag([3.0, 3, 3, 1])
    paths, values = [], []
    for i, (count, slope, inter) in enumerate(zip(n, (0.01, 0.02), (90.0, 50.0), strict=True)):
        stored = rng.integers(-3000, 3000, size=(4, 5, 3, count), dtype=np.int16)
        path = write_nifti(stored, tmp_path / f"run{i}.nii", affine=affine, scl_slope=slope,
                           scl_inter=inter, tr_s=2.0)  # fmt: skip
        paths.append(path)
        values.append(nib.load(path).get_fdata())
    return paths, np.concatenate(values, axis=3)


def test_each_volume_keeps_its_scaling_through_concat_selection_and_rechunking(tmp_path, rng):
    """Runs of stored integers scaled differently, read with ``scaled=False`` and joined
    with ``xr.concat`` (which kept the first run's scaling attrs: run 2's integers were
    scaled with run 1's slope, off by tens): each volume keeps its own scaling through
    the join (whatever xarray's coords=/compat=), ``isel``/``sel`` and a rechunking whose
    time chunk spans the runs' boundary. (reference, ours): nibabel's values of each
    run, bit for bit; the image is scaled lazily, each chunk as it is read."""
    from roidask.io.image import stored_scaling

    paths, reference = _runs_scaled_differently(tmp_path, rng)
    runs = [bold_from_nifti(p, scaled=False, chunks="time=3") for p in paths]
    for options in ({}, {"coords": "minimal", "compat": "override"}, {"coords": "all"}):
        joined = xr.concat(runs, dim="time", **options).chunk(time=4)  # chunk 4..8: both runs
        assert joined.dtype == np.int16 and joined.chunks[3] == (4, 4, 4)
        with raise_if_dask_computes():
            values = as_image(joined)
            kept = as_image(joined, stored=True)  # for the pass: scaled, as volumes differ
        for ours in (values, kept):
            assert ours.dtype == np.float64 and stored_scaling(ours) is None
            assert ours.chunks == joined.chunks
            np.testing.assert_array_equal(reference, ours.values)
    with pytest.raises(ImageTypeError, match="volumes carry different scl_slope/scl_inter"):
        stored_scaling(joined)
    assert "scl_slope" not in like_image(np.zeros(joined.shape), joined).coords  # values
    # volumes selected: each with its scaling, or one scaling left (kept as integers)
    pick = [8, 0, 11, 6]
    np.testing.assert_array_equal(reference[..., pick], as_image(joined.isel(time=pick)).values)
    joined = joined.assign_coords(time=np.arange(12) * 2.0)  # each run's time from 0: one axis
    times = joined["time"].values
    np.testing.assert_array_equal(
        reference[..., 9:], as_image(joined.sel(time=slice(times[9], None))).values
    )
    one_run = as_image(joined.sel(time=times[7:]), stored=True)
    assert one_run.dtype == np.int16 and stored_scaling(one_run) == (np.float32(0.02), 50.0,
                                                                     np.float64)  # fmt: skip
    np.testing.assert_array_equal(reference[..., 8], as_image(joined.isel(time=8)).values)
    # written: values when the volumes differ, else the integers with their scaling
    written = nib.load(to_nifti(joined, tmp_path / "joined.nii.gz"))
    assert written.get_data_dtype() == np.float64
    np.testing.assert_array_equal(reference, written.get_fdata())
    written = nib.load(to_nifti(joined.isel(time=pick[:2]), tmp_path / "two.nii.gz"))
    np.testing.assert_array_equal(reference[..., pick[:2]], written.get_fdata())
    written = nib.load(to_nifti(joined.isel(time=[9, 8]), tmp_path / "run2.nii.gz"))
    assert written.get_data_dtype() == np.int16 and written.dataobj.slope == np.float32(0.02)
    np.testing.assert_array_equal(reference[..., [9, 8]], written.get_fdata())
    # loaded (.compute(): numpy, not dask), scaled differently or as float32
    written = nib.load(to_nifti(joined.compute(), tmp_path / "loaded.nii.gz"))
    np.testing.assert_array_equal(reference, written.get_fdata())
    one = joined.isel(time=[9, 8]).compute()
    written = nib.load(to_nifti(one, tmp_path / "loaded32.nii.gz", dtype="float32"))
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(reference[..., [9, 8]].astype(np.float32), written.get_fdata())


def test_floats_that_carry_the_scaling_of_stored_integers_are_refused(tmp_path, rng):
    """An image of stored integers scaled by hand (``ints * slope + inter``) keeps its
    scaling coordinates (and its attrs with ``keep_attrs``): it was scaled a second
    time (off by tens). Refused, with what to do, before any voxel is read."""
    from helpers.lazy import voxel_reads

    from roidask.ops import mean_img, smooth_img
    from roidask.pipeline import roi_pipeline

    paths, _ = _runs_scaled_differently(tmp_path, rng)
    ints = bold_from_nifti(paths[0], scaled=False)
    with xr.set_options(keep_attrs=True):
        by_hand = ints.astype(np.float64) * ints["scl_slope"] + ints["scl_inter"]
    message = (
        "{}: holds float64 values but carries scl_slope/scl_inter of stored integers "
        "(already scaled?); if its values are scaled, drop the coordinates: "
        ".drop_vars(['scl_slope', 'scl_inter'])"
    )
    calls = {
        "img": [as_image, lambda img: smooth_img(img, fwhm=6), mean_img,
                lambda img: to_nifti(img, tmp_path / "out.nii.gz")],
        "bold_img": [lambda img: roi_pipeline(img, mask_img=tmp_path / "absent.nii.gz")],
    }  # fmt: skip
    with voxel_reads() as reads:
        for param, funcs in calls.items():
            for func in funcs:
                for img in (by_hand, ints.astype(np.float32)):
                    with pytest.raises(ImageTypeError) as info:
                        func(img)
                    assert str(info.value) == message.format(param).replace(
                        "float64", str(img.dtype)
                    )
                    assert info.value.param == param
    assert not reads and not (tmp_path / "out.nii.gz").exists()
    dropped = by_hand.drop_vars(["scl_slope", "scl_inter"])
    np.testing.assert_array_equal(nib.load(paths[0]).get_fdata(), as_image(dropped).values)


def test_the_scaling_attrs_of_earlier_versions_are_one_scaling_for_every_volume(tmp_path, rng):
    """An image of stored integers saved by an earlier version carries its one scaling in
    attrs (``scl_slope``, ``scl_inter``, ``scaled_dtype``): read as every volume's
    (as coordinates for the pass); floats carrying them are refused."""
    from roidask.io.image import stored_scaling

    paths, reference = _runs_scaled_differently(tmp_path, rng)
    ints = bold_from_nifti(paths[1], scaled=False)
    old = ints.drop_vars(["scl_slope", "scl_inter"]).assign_attrs(
        scl_slope=float(np.float32(0.02)), scl_inter=50.0, scaled_dtype="<f8"
    )
    np.testing.assert_array_equal(reference[..., 7:], as_image(old).values)
    kept = as_image(old, stored=True)
    assert kept.dtype == np.int16 and not {"scl_slope", "scaled_dtype"} & set(kept.attrs)
    np.testing.assert_array_equal(kept["scl_slope"].values, ints["scl_slope"].values)
    assert stored_scaling(kept) == stored_scaling(ints) == stored_scaling(old)
    with pytest.raises(ImageTypeError, match=r"^img: holds float64 values .* in attrs"):
        as_image(old.astype(np.float64))
    with pytest.raises(ImageTypeError, match="both as coordinates and in attrs"):
        as_image(ints.assign_attrs(old.attrs))


def test_a_store_of_several_subjects_says_how_to_choose_one(haxby, tmp_path):
    """A function without a subject parameter (smooth_img) points to open_subject (or the
    DataTree's node), not to a subject= it does not take; roi_pipeline to its subject=."""
    from roidask.io import open_store
    from roidask.ops import smooth_img
    from roidask.pipeline import roi_pipeline

    store = tmp_path / "multi.zarr"
    for name in ("a", "b"):
        convert(haxby.bold, labels=haxby.labels, out=store, subject=name)
    with pytest.raises(StoreError) as info:
        smooth_img(store, fwhm=6)
    assert str(info.value) == (
        f"img {store}: holds subjects ['a', 'b']; choose one, e.g. "
        f"roidask.open_subject('{store}', 'a')['bold']"
    )
    assert info.value.param == "img"
    with pytest.raises(StoreError, match=r"^img \(a DataTree\): holds subjects \['a', 'b'\]; "
                       r"choose one, e\.g\. tree\['a'\]$") as info:  # fmt: skip
        smooth_img(open_store(store), fwhm=6)
    assert info.value.param == "img"
    with pytest.raises(StoreError, match=r"^subject: .* holds subjects \['a', 'b'\]; pass "
                       r"subject= to choose one$") as info:  # fmt: skip
        roi_pipeline(store, mask_img=haxby.mask)
    assert info.value.param == "subject"


def test_a_subject_given_for_one_image_is_refused_not_ignored(haxby):
    from roidask.exceptions import InvalidParameterError

    for img, what in ((haxby.bold, "bold.nii.gz"), (nib.load(haxby.bold), "a nibabel image"),
                      (as_image(haxby.bold), "an xarray.DataArray")):  # fmt: skip
        with pytest.raises(InvalidParameterError, match=rf"^subject: 'sub-09' selects .*{what}"):
            as_image(img, subject="sub-09")
    assert isinstance(as_image(haxby.bold), xr.DataArray)


def test_an_image_cropped_with_xarray_is_refused_not_misplaced(haxby, tmp_path):
    """A crop (isel) keeps the whole grid's affine and header: its voxels would be placed
    at the wrong mm positions. Refused, naming the way out; a crop with its own affine
    (header dropped) is accepted."""
    from roidask.exceptions import GridMismatchError

    bold = as_image(haxby.bold)
    crop = bold.isel(x=slice(6, 20))
    with pytest.raises(GridMismatchError, match=r"^bold_img: its voxels \(14, 20, 1\) are not "):
        as_image(crop, param="bold_img")
    with pytest.raises(GridMismatchError, match=r"img: its voxels .* cropped or indexed"):
        to_nifti(crop.isel(time=0), tmp_path / "crop.nii.gz")
    assert not (tmp_path / "crop.nii.gz").exists()
    from roidask.io.grid import box_affine

    fixed = crop.assign_attrs(
        affine=box_affine(bold.attrs["affine"], (slice(6, 20),) * 3).tolist()
    )
    del fixed.attrs["nifti_header"]
    assert as_image(fixed).shape == (14, 20, 1, bold.shape[3])


@pytest.mark.parametrize(
    ("index", "shown"),
    [
        ({"x": slice(None, None, -1)}, r"x are \[39, 38, 37, 36, 35, \.\.\.\]"),
        ({"x": [1, 0, *range(2, 40)]}, r"x are \[1, 0, 2, 3, 4, \.\.\.\]"),
        ({"y": "roll"}, r"y are \[17, 18, 19, 0, 1, \.\.\.\]"),
    ],
    ids=["flip", "permute", "roll"],
)
def test_a_map_flipped_or_reordered_with_xarray_is_refused_not_misplaced(
    haxby_outputs, tmp_path, index, shown
):
    """A results map keeps its voxel-index coordinates x, y, z through isel and roll; out
    of order, its voxels would be written mirrored on the original affine. Refused by
    every entry (as_image, to_nifti, like_image); put back in order, accepted."""
    from roidask.io import open_map
    from roidask.ops import smooth_img

    pattern = rf": its voxel indices along {shown}, not 0 to \d+ in order: .* \(\.sortby\("
    for tstat in (
        open_map(haxby_outputs / "results.zarr", variable="tstat"),
        xr.open_zarr(haxby_outputs / "results.zarr", chunks=None)["tstat"],
    ):
        moved = tstat.roll(y=3, roll_coords=True) if index == {"y": "roll"} else tstat.isel(index)
        for func, args in (
            (smooth_img, {"fwhm": 6}),
            (to_nifti, {"path": tmp_path / "moved.nii.gz"}),
            (like_image, {"reference": tstat}),
        ):
            with pytest.raises(GridMismatchError, match=pattern) as info:
                func(moved, **args)
            assert info.value.param in ("img", "data")
        assert not (tmp_path / "moved.nii.gz").exists()
        back = moved.sortby(["x", "y"])
        np.testing.assert_array_equal(as_image(back).values, as_image(tstat).values)


def test_like_image_takes_a_reference_of_every_image_kind(haxby, tmp_path):
    """A path, a nibabel image, a store (nilearn's new_img_like takes a file too): the
    grid of as_image's image, the one conversion."""
    expected = as_image(haxby.mask)
    values = np.arange(800.0).reshape(40, 20, 1)
    for reference in (haxby.mask, str(haxby.mask), nib.load(haxby.mask), expected):
        img = like_image(values, reference, name="v")
        assert img.attrs == grid_attrs(expected) and img.name == "v"
        np.testing.assert_array_equal(img.values, values)
    store = convert(haxby.bold, labels=haxby.labels, out=tmp_path / "haxby.zarr")
    for reference in (haxby.bold, store):
        series = like_image(np.zeros((40, 20, 1, 1452), np.float32), reference)
        bold = as_image(reference)
        assert series.attrs == {**grid_attrs(bold), "tr_s": 2.5, "time_units": "s"}
        assert series["condition"].values.tolist() == bold["condition"].values.tolist()


@pytest.mark.parametrize(
    ("reference", "error", "message"),
    [
        (
            "missing.nii.gz",
            UnreadableFileError,
            r"^reference missing\.nii\.gz: no such file or folder; expected a \.nii",
        ),
        (None, ImageTypeError, r"^reference: expected a path, a nibabel image or an xarray "),
        (
            xr.DataArray(np.zeros((40, 20, 1)), dims=("x", "y", "z")),
            ImageTypeError,
            r"^reference: DataArray None has no 'affine' attribute, so its grid is unknown",
        ),
    ],
    ids=["missing", "None", "no-affine"],
)
def test_like_image_refuses_a_reference_that_is_not_an_image(reference, error, message):
    with pytest.raises(error, match=message) as info:
        like_image(np.zeros((40, 20, 1)), reference)
    assert info.value.param == "reference"


def test_a_path_parameter_that_is_not_a_path_is_named(haxby, tmp_path):
    img = as_image(haxby.mask)
    for call, param, got in [
        (lambda: to_nifti(img, None), "path", "NoneType"),
        (lambda: to_nifti(img, 3), "path", "int"),
        (lambda: image_from_nifti(None), "img", "NoneType"),
        (lambda: bold_from_nifti(None), "bold", "NoneType"),
        (lambda: bold_from_nifti(haxby.bold, labels=3), "labels", "int"),
    ]:
        with pytest.raises(RoidaskTypeError, match=rf"^{param}: expected a path.* got {got}$"):
            call()
    assert list(tmp_path.iterdir()) == []


def test_to_nifti_says_a_dataarray_that_is_not_spatial_is_not_an_image(tmp_path):
    signals = xr.DataArray(np.zeros((5, 12)), dims=("roi", "time"), name="signals")
    with pytest.raises(
        ImageDimensionError,
        match=r"^img: DataArray 'signals' has dims \('roi', 'time'\), so it is not a spatial "
        r"image; expected dims x, y, z \(then time\) first$",
    ):
        to_nifti(signals, tmp_path / "signals.nii.gz")
    no_grid = xr.DataArray(np.zeros((2, 2, 2)), dims=("x", "y", "z"), name="tstat")
    with pytest.raises(
        ImageTypeError,
        match=r"^reference: img \(DataArray 'tstat'\) has no 'affine' attribute, so no voxel "
        r"grid; pass reference= a roidask image$",
    ):
        to_nifti(no_grid, tmp_path / "tstat.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_as_image_of_a_results_store_says_what_it_is(haxby_outputs):
    with pytest.raises(StoreError, match=r"^img \S+results\.zarr: is one subject's results st"):
        as_image(haxby_outputs / "results.zarr")


@pytest.mark.parametrize("loaded", [False, True], ids=["lazy", "get_fdata"])
def test_a_nibabel_image_is_read_with_its_header_and_affine_as_edited_in_memory(
    tmp_path, rng, loaded
):
    """(reference, ours): nilearn's smooth_img of a loaded image whose voxel size and TR
    were fixed in memory (set_sform, set_qform, set_zooms) vs roidask's, which used the
    file's header before. The voxels still stream from the file (nothing read while the
    graph is built), and loading the data first (get_fdata) changes nothing."""
    from nilearn.image import smooth_img as nilearn_smooth

    from roidask.ops import smooth_img

    path = tmp_path / "iso1.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(10, 9, 8, 3)).astype(np.float32), np.eye(4)), path)
    img = nib.load(path)
    if loaded:
        img.get_fdata()
    affine = np.diag([3.0, 2.5, 3.5, 1.0])
    affine[:3, 3] = [-12, 7, 30]
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_zooms((3.0, 2.5, 3.5, 2.2))
    with raise_if_dask_computes():
        bold = as_image(img)
        smoothed = smooth_img(img, fwhm=6)
    np.testing.assert_allclose(np.asarray(bold.attrs["affine"]), affine)
    assert bold.attrs["voxel_size_mm"] == [3.0, 2.5, 3.5]
    assert bold.attrs["tr_s"] == pytest.approx(2.2)
    np.testing.assert_allclose(bold["time"].values, [0, 2.2, 4.4])
    assert bold.attrs["source_files"] == [str(path)]  # read lazily from the file
    np.testing.assert_allclose(smoothed.attrs["smoothing_fwhm_mm"], [6.0, 6.0, 6.0])
    reference = nilearn_smooth(img, 6).get_fdata(dtype=np.float32)
    assert smoothed.dtype == reference.dtype == np.float32
    np.testing.assert_allclose(reference, smoothed.values, rtol=0, atol=1e-6)
    # the header written back is the one in memory
    back = nib.load(to_nifti(bold, tmp_path / "back.nii.gz"))
    np.testing.assert_allclose(back.affine, affine)
    assert back.header.get_zooms()[3] == pytest.approx(2.2)


def test_a_nibabel_image_not_of_its_file_any_more_is_read_from_memory(tmp_path, rng):
    """An image whose data object is not its file's (replaced, or the file rewritten since
    it was loaded) is read from its own data, never from the file."""
    path = tmp_path / "a.nii"
    first = rng.normal(size=(4, 5, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(first, np.eye(4)), path)
    img = nib.load(path)
    np.testing.assert_array_equal(as_image(img).values, first)
    nib.save(nib.Nifti1Image(first.astype(np.float64) * 2, np.eye(4)), path)  # rewritten
    np.testing.assert_array_equal(as_image(img).values, np.asanyarray(img.dataobj))
    replaced = nib.Nifti1Image(first + 1, np.eye(4))
    replaced.set_filename(str(path))
    np.testing.assert_array_equal(as_image(replaced).values, first + 1)


def test_what_nib_load_returns_type_checks_and_a_non_volume_is_refused(tmp_path):
    """``nib.load`` is typed to return a FileBasedImage: ImageLike takes it (mypy), and a
    nibabel image that is not a volume (GIFTI) is refused with one line at run time."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from nibabel.gifti import GiftiImage

    import roidask

    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "import nibabel as nib\n\nfrom roidask.ops import smooth_img\n\n"
        'smooth_img(nib.load("bold.nii.gz"), fwhm=6)\n'
    )
    root = Path(roidask.__file__).parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"),
         "--ignore-missing-imports", str(snippet)],
        cwd=root, env={**os.environ, "MYPYPATH": str(root)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    with pytest.raises(ImageTypeError) as info:
        as_image(GiftiImage(), param="mask_img")
    assert str(info.value) == (
        "mask_img: a nibabel GiftiImage is not a volume (no voxel grid); expected a "
        "NIfTI-like image (a nibabel SpatialImage, e.g. Nifti1Image)"
    )
    assert info.value.param == "mask_img"
