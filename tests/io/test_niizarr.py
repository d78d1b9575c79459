"""NIfTI-Zarr interoperability: roidask <-> the reference implementation (niizarr) and nibabel."""

from __future__ import annotations

import base64

import dask
import dask.array as da
import nibabel as nib
import niizarr
import numpy as np
import pytest
import xarray as xr
import zarr
from helpers.lazy import raise_if_dask_computes

from roidask.exceptions import (
    CorruptFileError,
    ImageDimensionError,
    InvalidParameterError,
    OutputError,
    OutputExistsError,
    UnreadableFileError,
)
from roidask.io import as_image, bold_from_nifti, like_image
from roidask.io import niizarr as rz
from roidask.io.niizarr import is_nifti_zarr, write_nifti_zarr

# Oblique (rotated, sheared) affine with a translation: exercises the sform round trip.
OBLIQUE = np.array(
    [
        [2.5, 0.3, 0.0, -40.0],
        [-0.2, 2.4, 0.1, 12.0],
        [0.0, 0.2, 3.1, 7.5],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
TR_S = 2.0


def save_nifti(path, data, *, slope=None, inter=None, tr_s=TR_S, t_unit="sec"):
    img = nib.Nifti1Image(data, OBLIQUE)
    if data.ndim == 4:
        img.header.set_zooms((*img.header.get_zooms()[:3], tr_s))
        img.header.set_xyzt_units("mm", t_unit)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


def random_data(rng, shape, dtype):
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(-3000, 3000, size=shape, dtype=dtype)


def zarr2nibabel(zpath, tmp_path):
    """What a NIfTI user gets: niizarr.zarr2nii to a .nii.gz file, loaded with nibabel."""
    out = tmp_path / "from-zarr2nii.nii.gz"
    niizarr.zarr2nii(str(zpath), str(out))
    return nib.load(out)


def assert_one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for part in parts:
        assert str(part) in msg, msg


# -- roidask image -> write_nifti_zarr -> niizarr.zarr2nii -> nibabel --------------------------
CASES = {
    "float32-3d": ((6, 7, 5), np.float32, None),
    "float32-4d": ((6, 7, 5, 9), np.float32, None),
    "int16-4d": ((6, 7, 5, 9), np.int16, None),
    "int16-scaled-4d": ((6, 7, 5, 9), np.int16, (0.5, 10.0)),
    "int16-scaled-3d": ((6, 7, 5), np.int16, (0.25, -3.0)),
}


@pytest.mark.parametrize("zarr_format", [3, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_write_then_zarr2nii_gives_same_data_and_affine(tmp_path, rng, case, zarr_format):
    shape, dtype, scaling = CASES[case]
    slope, inter = scaling or (None, None)
    nii = save_nifti(
        tmp_path / "src.nii.gz", random_data(rng, shape, dtype), slope=slope, inter=inter
    )
    img = as_image(nii)  # scaled int16 is read as float64, as nibabel scales it
    expected = img.values
    out = write_nifti_zarr(img, tmp_path / "img.nii.zarr", zarr_format=zarr_format)
    assert out == tmp_path / "img.nii.zarr"
    assert zarr.open_group(str(out), mode="r").metadata.zarr_format == zarr_format

    # In memory: niizarr's image wraps the zarr array; its affine lives in the header.
    mem = niizarr.zarr2nii(str(out))
    raw = np.asarray(mem.dataobj)
    assert raw.dtype == expected.dtype
    np.testing.assert_array_equal(raw, expected)
    np.testing.assert_allclose(mem.header.get_best_affine(), OBLIQUE, rtol=0, atol=1e-5)

    # Through a NIfTI file, read back by nibabel.
    back = zarr2nibabel(out, tmp_path)
    got = np.asanyarray(back.dataobj)
    assert got.dtype == expected.dtype
    assert got.tobytes() == np.ascontiguousarray(expected).tobytes()  # bit-identical
    np.testing.assert_allclose(back.affine, OBLIQUE, rtol=0, atol=1e-5)
    if len(shape) == 4:
        assert back.header.get_zooms()[3] == pytest.approx(TR_S)
        assert back.header.get_xyzt_units() == ("mm", "sec")

    # And roidask reads its own output as the image it wrote.
    again = as_image(out)
    assert again.dims == img.dims and again.dtype == img.dtype
    np.testing.assert_array_equal(again.values, expected)
    np.testing.assert_allclose(again.attrs["affine"], img.attrs["affine"], rtol=0, atol=1e-5)


def test_written_metadata_is_valid_ome_zarr(tmp_path, rng):
    import ome_zarr_models
    from ome_zarr_models import v04, v05

    img = as_image(save_nifti(tmp_path / "a.nii", random_data(rng, (4, 5, 6, 3), np.float32)))
    for fmt, model in ((3, v05.Image), (2, v04.Image)):
        out = write_nifti_zarr(img, tmp_path / f"v{fmt}.nii.zarr", zarr_format=fmt)
        group = zarr.open_group(str(out), mode="r")
        assert isinstance(ome_zarr_models.open_ome_zarr(group), model)
        assert rz.WRITER_ATTR in group.attrs
        assert sorted(k for k, _ in group.arrays()) == ["0", "nifti"]  # level 0 only
        # The header array holds exactly the 348-byte NIfTI-1 header (spec section 2.4).
        assert group["nifti"].shape == (348,) and group["nifti"].dtype == np.uint8


def test_bool_mask_is_stored_as_uint8_and_float_as_rounded_int(tmp_path, rng):
    ref = as_image(save_nifti(tmp_path / "a.nii", random_data(rng, (5, 4, 3), np.float32)))
    mask = like_image(ref.data > 0, ref)
    out = write_nifti_zarr(mask, tmp_path / "mask.nii.zarr")
    got = np.asarray(niizarr.zarr2nii(str(out)).dataobj)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, (ref.values > 0).astype(np.uint8))

    out = write_nifti_zarr(ref * 100, tmp_path / "int.nii.zarr", dtype="int16")
    got = np.asarray(niizarr.zarr2nii(str(out)).dataobj)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, np.rint(ref.values * 100).astype(np.int16))


def test_values_the_dtype_cannot_hold_are_refused_and_nothing_is_kept(tmp_path, rng):
    """They were stored wrapped (1760 as int8 -32); refused as the block holding them is
    computed, naming its volumes (a block of 64 MB here: both), and the temporary folder
    is discarded."""
    ref = as_image(save_nifti(tmp_path / "a.nii", random_data(rng, (5, 4, 3), np.float32)))
    values = np.stack([np.full((5, 4, 3), 100.0), np.full((5, 4, 3), 1760.0)], axis=3)
    bold = like_image(da.from_array(values, chunks=(5, 4, 3, 1)), ref.expand_dims(time=2, axis=3))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(
        InvalidParameterError,
        match=r"^dtype: int8 holds -128\.\.127, found values 100\.\.1760 in volumes 0-1; ",
    ):
        write_nifti_zarr(bold, tmp_path / "out.nii.zarr", dtype="int8", chunks={"time": 1})
    with pytest.raises(InvalidParameterError, match=r"^dtype: expected one of the data types"):
        write_nifti_zarr(bold, tmp_path / "out.nii.zarr", dtype="float16")
    assert sorted(tmp_path.iterdir()) == before


def test_real_haxby_bold_round_trip(tmp_path, haxby, haxby_arrays):
    data, affine, _ = haxby_arrays
    bold = bold_from_nifti(haxby.bold)  # int16, (40, 20, 1, 1452), TR 2.5 s
    out = write_nifti_zarr(bold, tmp_path / "haxby.nii.zarr")
    # Default chunks: 64 voxels (whole axes here) and 1 MiB of volumes: 655 of 1600 bytes.
    assert zarr.open_array(str(out / "0"), mode="r").chunks == (655, 1, 20, 40)
    back = zarr2nibabel(out, tmp_path)
    assert back.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)
    np.testing.assert_allclose(back.affine, affine, rtol=0, atol=1e-5)
    again = as_image(out)
    np.testing.assert_array_equal(again["time"].values, bold["time"].values)
    assert again.attrs["tr_s"] == pytest.approx(2.5)


# -- niizarr.nii2zarr(NIfTI) -> as_image ---------------------------------------------------------
@pytest.mark.parametrize("zarr_version", [3, 2])
@pytest.mark.parametrize(
    ("shape", "dtype", "scaling"),
    [
        ((70, 66, 5, 4), np.int16, (0.5, 10.0)),  # > 64 voxels: nii2zarr writes a pyramid
        ((6, 7, 5), np.float32, None),
        ((6, 7, 5, 3), np.float32, None),
        ((6, 7, 5, 3), np.int16, (0.1, 0.0)),  # slope not exact in binary: roidask's rounding
    ],
)
def test_nii2zarr_then_read_matches_nibabel(tmp_path, rng, shape, dtype, scaling, zarr_version):
    slope, inter = scaling or (None, None)
    nii = save_nifti(
        tmp_path / "a.nii.gz", random_data(rng, shape, dtype), slope=slope, inter=inter
    )
    zpath = tmp_path / "a.nii.zarr"
    niizarr.nii2zarr(str(nii), str(zpath), zarr_version=zarr_version)
    assert zarr.open_group(str(zpath), mode="r").metadata.zarr_format == zarr_version
    assert is_nifti_zarr(zpath)

    img = as_image(zpath)
    ref = nib.load(nii)
    assert isinstance(img.data, da.Array)
    assert img.dims == ("x", "y", "z", "time")[: len(shape)] and img.shape == shape
    np.testing.assert_array_equal(img.attrs["affine"], ref.affine)
    # Scaling applied as nibabel does (float64, like roidask's NIfTI reader).
    np.testing.assert_array_equal(ref.get_fdata(), img.values)
    from_nifti = as_image(nii)  # the same file through roidask's NIfTI reader
    assert img.dtype == from_nifti.dtype
    assert img.values.tobytes() == from_nifti.values.tobytes()
    if len(shape) == 4:
        np.testing.assert_array_equal(img["time"].values, np.arange(shape[3]) * TR_S)
        assert img.attrs["tr_s"] == TR_S
        assert set(img["condition"].values) == {"unknown"}
        assert set(img["run"].values) == {0}
        assert img.name == "bold"


def test_tr_in_milliseconds_is_converted_to_seconds(tmp_path, rng):
    nii = save_nifti(
        tmp_path / "a.nii", random_data(rng, (3, 4, 5, 4), np.float32), tr_s=2500, t_unit="msec"
    )
    niizarr.nii2zarr(str(nii), str(tmp_path / "a.nii.zarr"))
    img = as_image(tmp_path / "a.nii.zarr")
    assert img.attrs["tr_s"] == pytest.approx(2.5)
    np.testing.assert_allclose(img["time"].values, [0, 2.5, 5.0, 7.5])


def test_chunks_are_roidask_chunks_not_the_stored_ones(tmp_path, rng):
    nii = save_nifti(tmp_path / "a.nii", random_data(rng, (6, 7, 5, 10), np.float32))
    niizarr.nii2zarr(str(nii), str(tmp_path / "a.nii.zarr"), chunk=4)  # 4³ x 1 volume stored
    img = as_image(tmp_path / "a.nii.zarr")
    assert img.data.chunksize == (6, 7, 5, 10)  # roidask default: whole volumes
    img = as_image(tmp_path / "a.nii.zarr", chunks="time=3")
    assert img.data.chunks[3] == (3, 3, 3, 1)
    np.testing.assert_array_equal(img.values, nib.load(nii).get_fdata())


def test_legacy_base64_header_in_group_attributes(tmp_path, rng):
    """Drafts before 1.0 kept the header as base64 in the group's 'nifti' attribute."""
    nii = save_nifti(tmp_path / "a.nii", random_data(rng, (3, 4, 5), np.float32))
    zpath = tmp_path / "a.nii.zarr"
    niizarr.nii2zarr(str(nii), str(zpath), zarr_version=2)
    group = zarr.open_group(str(zpath), mode="r+")
    raw = np.asarray(group["nifti"][...]).tobytes()
    del group["nifti"]
    group.attrs["nifti"] = {"base64": base64.b64encode(raw).decode("ascii")}
    img = as_image(zpath)
    np.testing.assert_array_equal(img.attrs["affine"], nib.load(nii).affine)
    np.testing.assert_array_equal(img.values, nib.load(nii).get_fdata())


def test_singleton_channel_axis_is_dropped(tmp_path, rng):
    data = random_data(rng, (3, 4, 5, 6, 1), np.float32)  # NIfTI (x, y, z, t, c=1)
    nib.save(nib.Nifti1Image(data, OBLIQUE), str(tmp_path / "a.nii"))
    niizarr.nii2zarr(str(tmp_path / "a.nii"), str(tmp_path / "a.nii.zarr"))  # axes t, c, z, y, x
    img = as_image(tmp_path / "a.nii.zarr")
    assert img.dims == ("x", "y", "z", "time")
    np.testing.assert_array_equal(img.values, data[..., 0])


def test_source_reads_blocks_like_the_nifti_source(tmp_path, rng):
    """NiftiZarrSource mirrors NiftiSource (read, iter_blocks), for streaming writers."""
    import pickle

    from roidask.io.nifti import NiftiSource

    nii = save_nifti(
        tmp_path / "a.nii.gz", random_data(rng, (6, 7, 5, 9), np.int16), slope=0.5, inter=3.0
    )
    niizarr.nii2zarr(str(nii), str(tmp_path / "a.nii.zarr"), zarr_version=2)
    zsrc = pickle.loads(pickle.dumps(rz.NiftiZarrSource.open(tmp_path / "a.nii.zarr", ndim=4)))
    src = NiftiSource.open(nii)
    for attr in ("shape", "raw_dtype", "slope", "inter", "dtype", "tr_s", "n_volumes"):
        assert getattr(zsrc, attr) == getattr(src, attr), attr
    np.testing.assert_array_equal(zsrc.affine, src.affine)
    for scaled in (False, True):
        got, want = zsrc.read(2, 5, scaled=scaled), src.read(2, 5, scaled=scaled)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        blocks = [(a, b, arr) for a, b, arr in zsrc.iter_blocks(4, scaled=scaled)]
        assert [(a, b) for a, b, _ in blocks] == [(0, 4), (4, 8), (8, 9)]
        np.testing.assert_array_equal(
            np.concatenate([arr for *_, arr in blocks], axis=3), src.read(scaled=scaled)
        )
    with pytest.raises(ImageDimensionError, match="expected 3D"):
        rz.NiftiZarrSource.open(tmp_path / "a.nii.zarr", ndim=3)


# -- laziness and streaming ------------------------------------------------------------------
def test_building_the_image_reads_no_voxel_data(tmp_path, rng):
    nii = save_nifti(
        tmp_path / "a.nii", random_data(rng, (6, 7, 5, 4), np.int16), slope=2.0, inter=0.0
    )
    zpath = tmp_path / "a.nii.zarr"
    niizarr.nii2zarr(str(nii), str(zpath))
    # Replace every stored chunk of level 0 by garbage: a reader touching one would fail.
    chunk_files = [p for p in (zpath / "0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunk_files
    for p in chunk_files:
        p.write_bytes(b"not a blosc chunk")
    with raise_if_dask_computes():
        img = as_image(zpath)
        mean = img.mean("time")  # graph building stays lazy too
    assert img.shape == (6, 7, 5, 4) and mean.shape == (6, 7, 5)
    with pytest.raises(CorruptFileError, match="could not read the stored chunks") as exc:
        img.compute()
    assert_one_line(exc, zpath, "blosc")


def test_4d_is_written_by_blocks_of_whole_time_chunks(tmp_path, rng, monkeypatch):
    img = as_image(save_nifti(tmp_path / "a.nii", random_data(rng, (6, 7, 5, 20), np.float32)))
    volume_bytes = 6 * 7 * 5 * 4
    # Blocks of at most 7 volumes, cut on the 3-volume time chunks: 6 volumes per block.
    monkeypatch.setattr(rz, "_WRITE_BLOCK_BYTES", 7 * volume_bytes)
    with raise_if_dask_computes(max_computes=100) as scheduler:
        out = write_nifti_zarr(img, tmp_path / "a.nii.zarr", chunks="time=3")
    assert scheduler.total_computes == 4  # 20 volumes: 6 + 6 + 6 + 2, never all at once
    z = zarr.open_array(str(out / "0"), mode="r")
    assert z.chunks == (3, 5, 7, 6)
    np.testing.assert_array_equal(np.asarray(niizarr.zarr2nii(str(out)).dataobj), img.values)


def test_default_and_partial_chunks_of_written_images(tmp_path, rng):
    run = as_image(save_nifti(tmp_path / "a.nii", random_data(rng, (70, 66, 40, 3), np.float32)))
    out = write_nifti_zarr(run, tmp_path / "run.nii.zarr")
    # 64 voxels along x, y, z; one 64x64x40 float32 volume (640 KiB) per 1 MiB chunk.
    assert zarr.open_array(str(out / "0"), mode="r").chunks == (1, 40, 64, 64)
    out = write_nifti_zarr(run, tmp_path / "x.nii.zarr", chunks={"x": -1, "time": 2})
    assert zarr.open_array(str(out / "0"), mode="r").chunks == (2, 40, 64, 70)
    np.testing.assert_array_equal(as_image(out).values, run.values)


def test_reads_on_a_distributed_cluster(tmp_path, rng):
    from roidask.cluster import get_client

    nii = save_nifti(
        tmp_path / "a.nii", random_data(rng, (6, 7, 5, 8), np.int16), slope=0.5, inter=0.0
    )
    niizarr.nii2zarr(str(nii), str(tmp_path / "a.nii.zarr"))
    img = as_image(tmp_path / "a.nii.zarr", chunks="time=3")
    # One worker process on 127.0.0.1: the graph (zarr arrays) is pickled to it.
    with get_client(n_workers=1, threads_per_worker=1) as client:
        got = client.compute(img.data.mean(axis=3)).result()
    np.testing.assert_allclose(got, nib.load(nii).get_fdata().mean(axis=3), rtol=1e-6)


# -- errors -----------------------------------------------------------------------------------
def test_read_errors_for_paths_that_are_not_nifti_zarr(tmp_path, rng):
    with pytest.raises(CorruptFileError) as exc:
        rz.NiftiZarrSource.open(tmp_path / "missing.nii.zarr")
    assert_one_line(exc, "missing.nii.zarr", "no such")

    nii = save_nifti(tmp_path / "a.nii", random_data(rng, (3, 4, 5), np.float32))
    with pytest.raises(CorruptFileError) as exc:
        rz.NiftiZarrSource.open(nii)
    assert_one_line(exc, "a.nii", "is a file")

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(CorruptFileError) as exc:
        rz.NiftiZarrSource.open(tmp_path / "plain")
    assert_one_line(exc, "plain", "not a zarr group")

    zarr.open_group(str(tmp_path / "bare.zarr"), mode="w").create_array(
        "0", shape=(2, 2, 2), dtype="f4"
    )
    with pytest.raises(CorruptFileError) as exc:
        rz.NiftiZarrSource.open(tmp_path / "bare.zarr")
    assert_one_line(exc, "bare.zarr", "multiscales")

    ome = tmp_path / "ome.zarr"  # OME-Zarr without the NIfTI header
    niizarr.nii2zarr(str(nii), str(ome))
    del zarr.open_group(str(ome), mode="r+")["nifti"]
    assert not is_nifti_zarr(ome)
    with pytest.raises(CorruptFileError) as exc:
        rz.NiftiZarrSource.open(ome)
    assert_one_line(exc, "ome.zarr", "no 'nifti' header")

    for p in (tmp_path / "missing", nii, tmp_path / "plain", tmp_path / "bare.zarr"):
        assert not is_nifti_zarr(p)
    with pytest.raises(UnreadableFileError) as exc:  # the one entry point says so too
        as_image(tmp_path / "missing.nii.zarr")
    assert_one_line(exc, "missing.nii.zarr", "no such file or folder")


def test_read_errors_for_inconsistent_or_unsupported_images(tmp_path, rng):
    nii = save_nifti(tmp_path / "a.nii", random_data(rng, (3, 4, 5), np.float32))
    bad = tmp_path / "bad.nii.zarr"
    niizarr.nii2zarr(str(nii), str(bad))
    other = nib.Nifti1Image(np.zeros((9, 9, 9), np.float32), OBLIQUE)
    niizarr.write_nifti_header(zarr.open_group(str(bad), mode="r+"), other.header)
    with pytest.raises(CorruptFileError) as exc:
        as_image(bad)
    assert_one_line(exc, "bad.nii.zarr", "(9, 9, 9)", "(3, 4, 5)")

    garbage = tmp_path / "garbage.nii.zarr"
    niizarr.nii2zarr(str(nii), str(garbage))
    zarr.open_group(str(garbage), mode="r+")["nifti"][:] = 7
    with pytest.raises(CorruptFileError) as exc:
        as_image(garbage)
    assert_one_line(exc, "garbage.nii.zarr", "not a NIfTI-1/NIfTI-2 header")

    channels = tmp_path / "channels.nii.zarr"  # 4th dim as channels, not time
    niizarr.nii2zarr(
        nib.Nifti1Image(np.zeros((3, 4, 5, 2), np.float32), OBLIQUE), str(channels), no_time=True
    )
    with pytest.raises(ImageDimensionError) as exc:
        as_image(channels)
    assert_one_line(exc, "channels.nii.zarr", "channel axis of size 2")


def test_bad_chunks_are_rejected(tmp_path, rng):
    nii = save_nifti(tmp_path / "a.nii", random_data(rng, (3, 4, 5), np.float32))
    niizarr.nii2zarr(str(nii), str(tmp_path / "a.nii.zarr"))
    with pytest.raises(InvalidParameterError, match="time"):
        as_image(tmp_path / "a.nii.zarr", chunks={"time": 2})


def test_write_refuses_other_files_and_existing_outputs(tmp_path, rng):
    img = as_image(save_nifti(tmp_path / "a.nii", random_data(rng, (3, 4, 5), np.float32)))

    with pytest.raises(InvalidParameterError) as exc:
        write_nifti_zarr(img, tmp_path / "a.zarr")
    assert_one_line(exc, "a.zarr", ".nii.zarr")
    with pytest.raises(OutputError) as exc:
        write_nifti_zarr(img, tmp_path / "missing" / "a.nii.zarr")
    assert_one_line(exc, "does not exist")

    # A .nii.zarr written by someone else: never replaced, even with overwrite.
    foreign = tmp_path / "foreign.nii.zarr"
    niizarr.nii2zarr(str(tmp_path / "a.nii"), str(foreign))
    before = sorted(p.relative_to(foreign) for p in foreign.rglob("*"))
    for overwrite in (False, True):
        with pytest.raises(OutputError) as exc:
            write_nifti_zarr(img, foreign, overwrite=overwrite)
        assert_one_line(exc, "foreign.nii.zarr", "not written by roidask")
    assert sorted(p.relative_to(foreign) for p in foreign.rglob("*")) == before
    a_file = tmp_path / "file.nii.zarr"
    a_file.write_text("mine")
    with pytest.raises(OutputError):
        write_nifti_zarr(img, a_file, overwrite=True)
    assert a_file.read_text() == "mine"

    # Its own output: replaced only with overwrite.
    out = write_nifti_zarr(img, tmp_path / "ours.nii.zarr")
    with pytest.raises(OutputExistsError) as exc:
        write_nifti_zarr(img * 2, out)
    assert_one_line(exc, "ours.nii.zarr", "overwrite=True")
    np.testing.assert_array_equal(as_image(out).values, img.values)
    write_nifti_zarr(img * 2, out, overwrite=True)
    np.testing.assert_array_equal(as_image(out).values, img.values * 2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_bad_parameters_write_nothing(tmp_path, rng):
    img = as_image(save_nifti(tmp_path / "a.nii", random_data(rng, (3, 4, 5), np.float32)))
    with pytest.raises(InvalidParameterError) as exc:
        write_nifti_zarr(img, tmp_path / "f16.nii.zarr", dtype="float16")
    assert_one_line(exc, "dtype", "float16")
    with pytest.raises(InvalidParameterError, match="zarr_format"):
        write_nifti_zarr(img, tmp_path / "v4.nii.zarr", zarr_format=4)
    with pytest.raises(InvalidParameterError, match="chunks"):
        write_nifti_zarr(img, tmp_path / "c.nii.zarr", chunks="w=3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii"]


def test_a_failed_write_leaves_nothing_behind(tmp_path, rng):
    ref = as_image(save_nifti(tmp_path / "a.nii", random_data(rng, (3, 4, 5, 6), np.float32)))

    def fail_late(block, block_info=None):
        if block_info[0]["array-location"][3][0] >= 4:
            raise RuntimeError("worker lost")
        return block

    data = ref.data.rechunk({3: 2}).map_blocks(fail_late, dtype=ref.dtype)
    broken = xr.DataArray(data, dims=ref.dims, coords=ref.coords, attrs=ref.attrs)
    with dask.config.set(scheduler="sync"), pytest.raises(RuntimeError, match="worker lost"):
        write_nifti_zarr(broken, tmp_path / "b.nii.zarr", chunks="time=2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii"]

    # Over an existing roidask output, a failed overwrite keeps the old one.
    out = write_nifti_zarr(ref, tmp_path / "b.nii.zarr")
    with dask.config.set(scheduler="sync"), pytest.raises(RuntimeError, match="worker lost"):
        write_nifti_zarr(broken, out, overwrite=True, chunks="time=2")
    np.testing.assert_array_equal(as_image(out).values, ref.values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii", "b.nii.zarr"]


def test_the_temporary_folder_stays_locked_while_it_is_written(tmp_path, rng, monkeypatch):
    # another command's clean-up of killed runs' leftovers, during this one's write
    from roidask._atomic import clean_stale

    img = as_image(save_nifti(tmp_path / "a.nii", random_data(rng, (3, 4, 5, 6), np.float32)))
    real = rz._stream_volumes

    def others_clean_up(*args, **kwargs):
        assert clean_stale(tmp_path / "a.nii.zarr") == []
        return real(*args, **kwargs)

    monkeypatch.setattr(rz, "_stream_volumes", others_clean_up)
    out = write_nifti_zarr(img, tmp_path / "a.nii.zarr")
    np.testing.assert_array_equal(as_image(out).values, img.values)
