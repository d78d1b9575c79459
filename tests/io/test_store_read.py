"""Reading stores: damage detected and named (store, array, chunk), corrupt metadata named,
stores of format 1 (no checksums) still read, with a warning."""

from __future__ import annotations

import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
from helpers.files import damage_chunk, format1_store

from roidask.exceptions import (
    DamagedStoreError,
    InvalidParameterError,
    RoidaskTypeError,
    StoreError,
    UnverifiedStoreWarning,
)
from roidask.io import convert, list_subjects, open_store, open_subject, verify_store
from roidask.io.store_read import CHUNK_GRIDS_ATTR, DamagedChunk, is_store, require_store

CHUNK = "c/0/0/0/3"  # volumes 300-399 of the Haxby slice's bold


@pytest.fixture(scope="module")
def haxby_store(haxby, tmp_path_factory):
    """The Haxby slice converted with 100-volume chunks (15 chunks of bold)."""
    out = tmp_path_factory.mktemp("store") / "haxby.zarr"
    return convert(haxby.bold, labels=haxby.labels, out=out, chunks="time=100")


@pytest.fixture
def store(haxby_store, tmp_path):
    """A copy of the Haxby store to damage."""
    return shutil.copytree(haxby_store, tmp_path / "haxby.zarr")


@pytest.fixture(scope="module")
def haxby_data(haxby):
    return np.asanyarray(nib.load(haxby.bold).dataobj)


def test_a_whole_store_opens_and_verifies(store, haxby_data):
    ds = open_subject(store)
    assert ds.attrs[CHUNK_GRIDS_ATTR] == {
        "bold": [1, 1, 1, 15],
        "condition": [1],
        "run": [1],
        "time": [1],
    }
    np.testing.assert_array_equal(ds["bold"].values, haxby_data)
    assert verify_store(store) == []


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ({"x": 0}, r"^chunks: size for 'x' must be >= 1 \(or -1 for the whole axis\), got 0$"),
        ("bad", r"^chunks: 'bad' is not of the form dim=size"),
        ({"q": 1}, r"^chunks: unknown dimension 'q'; expected some of \['x', 'y', 'z', 'time'\]$"),
        (5, r"^chunks: expected a mapping like .* or 'x=20,time=100', got 5$"),
    ],
    ids=["zero", "not-dim-size", "unknown-dim", "int"],
)
def test_open_subject_checks_chunks_as_as_image_does(haxby_store, chunks, message):
    """The one check of chunks (normalize_chunks'): the same error, whichever opens it."""
    from roidask import as_image

    for call in (lambda: open_subject(haxby_store, chunks=chunks),
                 lambda: as_image(haxby_store, chunks=chunks)):  # fmt: skip
        with pytest.raises(InvalidParameterError, match=message) as info:
            call()
        assert info.value.param == "chunks"


def test_open_subject_rechunks_the_dims_named_and_keeps_the_others_on_disk(haxby_store):
    bold = open_subject(haxby_store, chunks="x=15,time=-1")["bold"]
    assert bold.chunks == ((15, 15, 10), (20,), (1,), (1452,))
    bold = open_subject(haxby_store, chunks={"y": 8})["bold"]
    assert bold.chunks == ((40,), (8, 8, 4), (1,), (100,) * 14 + (52,))
    assert open_subject(haxby_store)["bold"].chunks == ((40,), (20,), (1,), (100,) * 14 + (52,))


def test_a_deleted_chunk_is_damage_found_on_open(store):
    damage_chunk(store, f"sub-01/bold/{CHUNK}", "delete")
    with pytest.raises(DamagedStoreError) as info:
        open_subject(store)  # a listing: no chunk is read
    assert str(info.value) == (
        f"store {store}: subject 'sub-01' is damaged: 1 chunk(s) missing (bold/{CHUNK}); "
        "convert the subject again"
    )
    assert info.value.param == "store"
    assert verify_store(store) == [DamagedChunk("sub-01", "bold", CHUNK, "missing")]


def test_a_chunk_deleted_after_opening_is_named_when_read(store, haxby_data):
    """Deleted between building a graph and computing it: an error naming the chunk, as
    a corrupt chunk is, never zeros (zarr reads an absent chunk as the fill value)."""
    from roidask.ops import mean_img

    bold = open_subject(store)["bold"]
    mean = mean_img(bold)  # lazy: nothing read yet
    damage_chunk(store, f"sub-01/bold/{CHUNK}", "delete")
    np.testing.assert_array_equal(bold.isel(time=slice(200, 300)).values, haxby_data[..., 200:300])
    for compute in (lambda: mean.values, lambda: bold.isel(time=slice(250, 350)).values):
        with pytest.raises(DamagedStoreError) as info:
            compute()
        assert str(info.value) == (
            f"store {store}: chunk {CHUNK} of sub-01/bold is damaged (it is missing); the "
            "store cannot be trusted, convert the subject again (verify_store lists every "
            "damaged chunk)"
        )
        assert info.value.param == "store"


def test_a_map_chunk_deleted_after_opening_is_named_when_read(haxby_outputs, tmp_path):
    """The same for a map of a results store (read as NaN before)."""
    from roidask.io import open_map

    results = shutil.copytree(haxby_outputs / "results.zarr", tmp_path / "results.zarr")
    tstat = open_map(results, variable="tstat")
    (key,) = [p.relative_to(results) for p in (results / "tstat" / "c").rglob("*") if p.is_file()]
    (results / key).unlink()
    chunk = "/".join(key.parts[1:])
    with pytest.raises(DamagedStoreError) as info:
        _ = tstat.values
    assert str(info.value).startswith(
        f"source {results}: chunk {chunk} of tstat is damaged (it is missing); "
    )


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_corrupt_chunk_is_named_when_read(store, haxby_data, how):
    damage_chunk(store, f"sub-01/bold/{CHUNK}", how)
    bold = open_subject(store)["bold"]
    # the chunks around it read (and equal the source)
    np.testing.assert_array_equal(bold.isel(time=slice(200, 300)).values, haxby_data[..., 200:300])
    np.testing.assert_array_equal(bold.isel(time=slice(400, 500)).values, haxby_data[..., 400:500])
    with pytest.raises(DamagedStoreError) as info:
        _ = bold.isel(time=slice(250, 350)).values
    assert str(info.value).startswith(
        f"store {store}: chunk {CHUNK} of sub-01/bold is damaged (it fails its CRC-32C "
        "checksum); the store cannot be trusted"
    )
    assert verify_store(store) == [
        DamagedChunk("sub-01", "bold", CHUNK, "it fails its CRC-32C checksum")
    ]


def test_several_damaged_chunks_are_all_listed(store):
    damage_chunk(store, "sub-01/bold/c/0/0/0/1", "flip")
    damage_chunk(store, "sub-01/bold/c/0/0/0/7", "truncate")
    damage_chunk(store, "sub-01/run/c/0", "delete")
    found = verify_store(store)
    assert [(d.array, d.chunk, d.reason) for d in found] == [
        ("run", "c/0", "missing"),
        ("bold", "c/0/0/0/1", "it fails its CRC-32C checksum"),
        ("bold", "c/0/0/0/7", "it fails its CRC-32C checksum"),
    ]


@pytest.mark.parametrize(
    ("where", "what"),
    [("", "root"), ("sub-01/", "group 'sub-01'"), ("sub-01/bold/", "array sub-01/bold")],
    ids=["root", "group", "array"],
)
def test_corrupt_metadata_is_named(store, where, what):
    meta = store / f"{where}zarr.json"
    meta.write_text(meta.read_text()[:40])  # cut mid-write
    with pytest.raises(StoreError) as info:
        open_subject(store)
    message = str(info.value)
    assert message.startswith(f"store {meta}: corrupt zarr.json (the {what} metadata is not "), (
        message
    )
    assert "not a zarr store" not in message and "not a roidask store" not in message
    if where == "sub-01/bold/":
        (found,) = verify_store(store)
        assert (found.array, found.chunk) == ("bold", "zarr.json")
        assert found.reason.startswith("corrupt zarr.json")


@pytest.mark.parametrize("inside", ["results.zarr", "study.zarr"])
def test_an_output_folder_given_as_a_store_names_the_store_inside(tmp_path, inside):
    """`roidask info results/subj2`: the run's (or batch's) folder, whose store is inside."""
    (tmp_path / "out" / inside).mkdir(parents=True)
    with pytest.raises(StoreError, match=rf"^store .*out: a roidask output folder, not a store; "
                       rf"its results are in .*out/{inside}$"):  # fmt: skip
        open_subject(tmp_path / "out")
    (tmp_path / "other").mkdir()  # no store inside: the message as before
    with pytest.raises(StoreError, match=r"^store .*other: not a zarr store \(no zarr.json\)"):
        open_subject(tmp_path / "other")


@pytest.mark.parametrize("array", ["bold", "condition"])
def test_an_array_whose_zarr_json_is_gone_is_damage(store, array):
    """(xarray would read the rest, or fail with a message about coordinates)"""
    (store / "sub-01" / array / "zarr.json").unlink()
    with pytest.raises(DamagedStoreError, match=rf"sub-01/{array} is damaged: its zarr.json is"):
        open_subject(store)


@pytest.mark.parametrize("subject", ["sub-01", None])
def test_a_subject_that_lost_its_zarr_json_is_damage_not_absence(store, subject):
    """The root lists the subject, its folder holds its arrays, its group's zarr.json is
    gone: the store is damaged (not "no subject 'sub-01'; the store holds []"), and the
    message says what to do and where to see the damage."""
    (store / "sub-01" / "zarr.json").unlink()
    with pytest.raises(DamagedStoreError) as info:
        open_subject(store, subject)
    assert str(info.value) == (
        f"store {store}: the store is damaged: sub-01/zarr.json listed by the store's root but "
        "missing on disk; convert the subject again with overwrite=True (verify_store lists "
        "what is damaged)"
    )
    with pytest.raises(
        StoreError, match=r"^subject: no subject 'sub-02' in .*; the store holds \[\]$"
    ):
        open_subject(store, "sub-02")  # another subject: absent indeed


def test_metadata_without_zarr_format_is_corrupt(store):
    (store / "zarr.json").write_text("{}")
    with pytest.raises(StoreError, match=r"corrupt zarr\.json \(the root metadata has no "):
        require_store(store)
    assert not is_store(store)


def test_a_format_1_store_reads_with_a_warning(haxby_bold, haxby_data, tmp_path):
    store = format1_store(tmp_path / "old.zarr", haxby_bold.load())
    with pytest.warns(UnverifiedStoreWarning, match=r"old\.zarr: subject 'sub-01' was written "
                      r"without chunk checksums \(store format 1\)"):  # fmt: skip
        ds = open_subject(store)
    assert CHUNK_GRIDS_ATTR not in ds.attrs
    np.testing.assert_array_equal(ds["bold"].values, haxby_data)
    np.testing.assert_array_equal(ds["condition"].values, haxby_bold["condition"].values)
    np.testing.assert_array_equal(ds["run"].values, haxby_bold["run"].values)
    assert ds["bold"].attrs["affine"] == haxby_bold.attrs["affine"]
    assert verify_store(store) == []  # nothing to check beyond decoding


def test_a_format_2_store_opens_without_warning(store):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedStoreWarning)
        open_subject(store)


def test_foreign_files_are_those_outside_roidasks_layout():
    """Of a group's files, roidask's are its zarr.json and, for each array of the chunk
    inventory, its zarr.json and chunks within the grid: a chunk beyond the grid or of
    another number of dimensions, another array or group, a nested one, are not."""
    from roidask.io.store_read import foreign_files

    grids = {"bold": [1, 1, 1, 3], "mask": [2, 1, 1]}
    keys = [
        "bold/c/0/0/0/2", "bold/c/0/0/0/3", "bold/c/0/0/0", "bold/zarr.json",
        "mask/c/1/0/0", "mask/c/1/0/x", "other/c/0", "zarr.json", "other/zarr.json",
        "derived/myres/zarr.json", "derived/myres/c/0", "derived/zarr.json",
        "bold/c/0/0/0/notes.txt", "bold/notes.txt", "mask/c/1/0/0/c/0",
        "zarr.0123456789abcdef0123456789abcdef.partial",
    ]  # fmt: skip
    assert foreign_files([*keys, "other/c/0"], grids) == sorted([
        "bold/c/0/0/0", "bold/c/0/0/0/3", "mask/c/1/0/x", "other/c/0", "other/zarr.json",
        "derived/myres/zarr.json", "derived/myres/c/0", "derived/zarr.json",
        "bold/c/0/0/0/notes.txt", "bold/notes.txt", "mask/c/1/0/0/c/0",
    ])  # fmt: skip


@pytest.mark.parametrize("func", [open_subject, open_store, verify_store, list_subjects])
@pytest.mark.parametrize(("value", "got"), [(None, "NoneType"), (123, "int")])
def test_a_store_that_is_not_a_path_is_named(func, value, got):
    with pytest.raises(RoidaskTypeError) as info:
        func(value)
    assert str(info.value) == f"store: expected a path (str or os.PathLike), got {got}"
    assert info.value.param == "store"


def test_a_results_or_study_store_is_named_for_what_it_is(haxby_outputs):
    """Stores of roidask that hold no BOLD series say what they are and how to read them,
    not "create one with roidask.io.convert"."""
    with pytest.raises(
        StoreError,
        match=r"^store \S+results\.zarr: is one subject's results store \(its maps, ROI table "
        r"and signals\), not a BOLD store; read its maps with roidask\.io\.open_map, or the "
        r"whole with xarray\.open_zarr$",
    ):
        open_subject(haxby_outputs / "results.zarr")
    with pytest.raises(
        StoreError,
        match=r"^store \S+study\.zarr: is a roidask study store \(a node per subject and the "
        r"group level\), not a BOLD store; read a node's maps with roidask\.io\.open_map, or "
        r"the whole with xarray\.open_datatree$",
    ):
        verify_store(haxby_outputs.parent / "study.zarr")


def test_a_results_array_without_its_checksum_codec_is_damage(tmp_path):
    """Arrays of a checksummed group (one that records its chunk inventory) must end their
    codecs with crc32c: one whose codec was removed cannot be checked, so is refused on read
    and reported by a verification."""
    import json

    import xarray as xr

    from roidask.exceptions import DamagedStoreError
    from roidask.io.store_read import checked_variables, verify_groups
    from roidask.io.store_write import dataset_zarr_files, write_zarr_files

    path = tmp_path / "r.zarr"
    write_zarr_files(dataset_zarr_files(xr.Dataset({"v": ("x", np.arange(4.0))})), path)
    assert (
        verify_groups(path, {"": json.loads((path / "zarr.json").read_text())["attributes"]}) == []
    )
    meta = json.loads((path / "v" / "zarr.json").read_text())
    meta["codecs"].pop()
    (path / "v" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DamagedStoreError, match=r"v is damaged: its zarr.json has no crc32c"):
        checked_variables(path, ["v"])
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    assert [(d.array, d.chunk) for d in verify_groups(path, {"": attrs})][:1] == [
        ("v", "zarr.json")
    ]


def test_zarrs_warning_about_a_data_type_without_a_v3_specification_is_silenced(tmp_path):
    """Roidask's fixed-width strings, or a user's array of bytes in a store it opens: zarr's
    UnstableSpecificationWarning is not shown."""
    import warnings

    import zarr

    from roidask.io.store_read import ignore_consolidated_warning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ignore_consolidated_warning()
        zarr.create_array(str(tmp_path / "a"), shape=(2,), dtype="S4", zarr_format=3)
        zarr.create_array(str(tmp_path / "b"), shape=(2,), dtype="<U4", zarr_format=3)
    assert [str(w.message) for w in caught] == []
