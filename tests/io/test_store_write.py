"""Conversion of NIfTI runs into zarr stores: round trips, layout, atomicity, bad input."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from helpers.files import tree
from helpers.lazy import voxel_reads
from helpers.threads import at_once
from hypothesis import given
from hypothesis import strategies as st

from roidask.exceptions import (
    ConditionError,
    CorruptFileError,
    GridMismatchError,
    ImageDimensionError,
    IncompleteStoreError,
    InvalidParameterError,
    LabelsError,
    NonFiniteVoxelsWarning,
    OutputError,
    OutputExistsError,
    RoidaskTypeError,
    StoreError,
)
from roidask.io import convert, list_subjects, open_store, open_subject, write_image
from roidask.io.store_read import COMPLETE_ATTR
from roidask.ops import select_conditions

AFFINE = np.diag([3.5, 3.75, 3.75, 1.0])
AFFINE[:3, 3] = [-70.0, -100.0, -60.0]


def write_run(path, data, affine=AFFINE, tr=2.5, slope=None, inter=None):
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    zooms = list(img.header.get_zooms())
    if len(zooms) == 4:
        zooms[3] = tr
        img.header.set_zooms(zooms)
    if slope is not None:
        img.header.set_slope_inter(slope, inter or 0.0)
    nib.save(img, str(path))
    return path


def write_labels(path, conditions, runs=None):
    runs = np.zeros(len(conditions), dtype=int) if runs is None else runs
    pd.DataFrame({"labels": conditions, "chunks": runs}).to_csv(path, sep=" ", index=False)
    return path


# -- real data round trip ---------------------------------------------------------------
def test_haxby_round_trip(haxby, tmp_path):
    store = convert(haxby.bold, labels=haxby.labels, out=tmp_path / "s.zarr", mask_img=haxby.mask)
    img = nib.load(haxby.bold)
    ds = open_subject(store, "sub-01")
    # reference, ours
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), ds["bold"].values)
    assert ds["bold"].dtype == np.int16
    labels = pd.read_csv(haxby.labels, sep=" ")
    np.testing.assert_array_equal(labels["labels"].to_numpy(), ds["condition"].values)
    np.testing.assert_array_equal(labels["chunks"].to_numpy(), ds["run"].values)
    np.testing.assert_allclose(img.affine, np.asarray(ds["bold"].attrs["affine"]))
    np.testing.assert_allclose(ds["time"].values, np.arange(1452) * 2.5)
    assert ds["bold"].attrs["tr_s"] == 2.5
    np.testing.assert_array_equal(nib.load(haxby.mask).get_fdata(), ds["mask"].values)


def test_plain_xarray_reads_the_store(haxby, tmp_path):
    store = convert(haxby.bold, labels=haxby.labels, out=tmp_path / "s.zarr", subject="subj1")
    convert(haxby.bold, labels=haxby.labels, out=store, subject="subj2", chunks="x=7,y=9")
    tree = xr.open_datatree(store, engine="zarr")
    assert sorted(tree.children) == ["subj1", "subj2"]
    one = xr.open_zarr(store, group="subj2")
    assert one["bold"].dims == ("x", "y", "z", "time")
    assert one["bold"].chunks[:2] == ((7,) * 5 + (5,), (9, 9, 2))
    assert list_subjects(store) == ["subj1", "subj2"]
    assert sorted(open_store(store).children) == ["subj1", "subj2"]
    # conditions are numpy strings (zarr's fixed_length_utf32), not StringDType
    for opened in (one, tree["subj2"]):
        assert opened["condition"].dtype.kind == "U"
        labels = opened["condition"].astype(str).values
        assert (labels == "face").sum() == 108


def test_multi_run_equals_concatenation(tmp_path, rng):
    runs = [rng.integers(-300, 3000, size=(5, 6, 4, n), dtype=np.int16) for n in (7, 5, 9)]
    paths = [write_run(tmp_path / f"run{i}.nii.gz", r) for i, r in enumerate(runs)]
    conds = [f"c{i % 3}" for i in range(21)]
    labels = write_labels(tmp_path / "labels.txt", conds, np.repeat([0, 1, 2], [7, 5, 9]))
    store = convert(paths, labels=labels, out=tmp_path / "s.zarr", chunks="time=4,y=4")
    ds = open_subject(store)
    np.testing.assert_array_equal(np.concatenate(runs, axis=3), ds["bold"].values)
    np.testing.assert_array_equal(ds["run"].values, np.repeat([0, 1, 2], [7, 5, 9]))
    assert ds["bold"].attrs["source_files"] == [str(p) for p in paths]


def test_per_run_labels_files(tmp_path, rng):
    runs = [rng.integers(0, 100, size=(3, 3, 2, n), dtype=np.int16) for n in (4, 6)]
    paths = [write_run(tmp_path / f"r{i}.nii", r) for i, r in enumerate(runs)]
    labs = [
        write_labels(tmp_path / f"l{i}.txt", ["a"] * r.shape[3], [i] * r.shape[3])
        for i, r in enumerate(runs)
    ]
    ds = open_subject(convert(paths, labels=labs, out=tmp_path / "s.zarr"))
    np.testing.assert_array_equal(ds["run"].values, [0] * 4 + [1] * 6)


def test_events_tsv_labels(tmp_path, rng):
    data = rng.integers(0, 100, size=(3, 3, 2, 10), dtype=np.int16)
    run = write_run(tmp_path / "run.nii.gz", data, tr=2.0)
    events = tmp_path / "sub-01_task-x_events.tsv"
    pd.DataFrame(
        {"onset": [2.0, 9.0], "duration": [4.0, 6.0], "trial_type": ["face", "house"]}
    ).to_csv(events, sep="\t", index=False)
    ds = open_subject(convert(run, labels=events, out=tmp_path / "s.zarr"))
    # volume i starts at 2 i s: face covers [2, 6) -> volumes 1, 2; house [9, 15) -> 5, 6, 7
    expected = ["rest", "face", "face", "rest", "rest", "house", "house", "house", "rest", "rest"]
    assert list(ds["condition"].values) == expected


@pytest.mark.filterwarnings("error")  # nothing escapes (zarr, xarray, roidask)
def test_scaled_input_is_honoured(tmp_path, rng):
    data = rng.integers(0, 1000, size=(4, 3, 2, 6), dtype=np.int16)
    run = write_run(tmp_path / "run.nii.gz", data, slope=0.5, inter=10.0)
    labels = write_labels(tmp_path / "l.txt", ["a"] * 6)
    ds = open_subject(convert(run, labels=labels, out=tmp_path / "s.zarr"))
    arr = zarr.open_array(str(tmp_path / "s.zarr" / "sub-01" / "bold"))
    assert arr.dtype == np.int16  # stored as the source type
    np.testing.assert_allclose(nib.load(run).get_fdata(), ds["bold"].values, rtol=1e-6)


@pytest.mark.parametrize(
    "second",
    [
        dict(dtype=np.int16, slope=2.0, inter=-7.0),  # another scaling
        dict(dtype=np.float32),  # the same values' type, unscaled
    ],
)
def test_runs_scaled_otherwise_are_stored_as_their_values(tmp_path, rng, second):
    one = rng.integers(0, 1000, size=(4, 3, 2, 6), dtype=np.int16)
    two = rng.integers(0, 1000, size=(4, 3, 2, 5)).astype(second["dtype"])
    runs = [
        write_run(tmp_path / "a.nii.gz", one, slope=0.5, inter=3.0),
        write_run(
            tmp_path / "b.nii.gz", two, slope=second.get("slope"), inter=second.get("inter")
        ),
    ]
    labels = write_labels(tmp_path / "l.txt", ["a"] * 11, runs=[0] * 6 + [1] * 5)
    store = convert(runs, labels=labels, out=tmp_path / "s.zarr")
    want = np.concatenate([nib.load(r).get_fdata() for r in runs], axis=3)
    np.testing.assert_array_equal(want, open_subject(store)["bold"].values)
    assert zarr.open_array(str(store / "sub-01" / "bold")).dtype == np.float64  # nibabel's


@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.integers(1, 12)),
    dtype=st.sampled_from(["int16", "uint8", "int32", "float32", "float64"]),
    cx=st.integers(1, 6),
    cz=st.integers(1, 4),
    ct=st.integers(1, 12),
)
def test_round_trip_property(tmp_path_factory, shape, dtype, cx, cz, ct):
    tmp = tmp_path_factory.mktemp("p")
    rng = np.random.default_rng(sum(shape))
    data = (rng.standard_normal(shape) * 100).astype(dtype)
    run = write_run(tmp / "run.nii.gz", data)
    labels = write_labels(tmp / "l.txt", ["a", "b"] * (shape[3] // 2) + ["a"] * (shape[3] % 2))
    store = convert(run, labels=labels, out=tmp / "s.zarr", chunks={"x": cx, "z": cz, "time": ct})
    bold = open_subject(store)["bold"]
    assert bold.dtype == np.dtype(dtype)
    assert bold.chunks[0][0] == min(cx, shape[0]) and bold.chunks[3][0] == min(ct, shape[3])
    np.testing.assert_array_equal(np.asanyarray(nib.load(run).dataobj), bold.values)


# -- bad input: a clear error and nothing written -----------------------------------------
@pytest.fixture
def small(tmp_path, rng):
    data = rng.integers(0, 100, size=(4, 5, 3, 8), dtype=np.int16)
    return (
        write_run(tmp_path / "run.nii.gz", data),
        write_labels(tmp_path / "labels.txt", ["face", "house"] * 4),
        tmp_path,
    )


def assert_nothing_written(tmp_path):
    leftovers = [p.name for p in tmp_path.iterdir() if ".zarr" in p.name]
    assert leftovers == [], leftovers


def test_not_a_nifti(small):
    _, labels, tmp = small
    bad = tmp / "notes.nii"
    bad.write_text("this is not an image" * 30)
    with pytest.raises(CorruptFileError, match=r"notes\.nii"):
        convert(bad, labels=labels, out=tmp / "s.zarr")
    assert_nothing_written(tmp)


def test_truncated_gzip(small):
    run, labels, tmp = small
    raw = run.read_bytes()
    cut = tmp / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.nii\.gz"):
        convert(cut, labels=labels, out=tmp / "s.zarr")
    assert_nothing_written(tmp)


def test_corrupt_gzip_stream(small):
    run, labels, tmp = small
    raw = bytearray(gzip.compress(gzip.decompress(run.read_bytes())))
    raw[len(raw) // 2 : len(raw) // 2 + 40] = b"\x00" * 40
    bad = tmp / "bad.nii.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=r"bad\.nii\.gz"):
        convert(bad, labels=labels, out=tmp / "s.zarr")
    assert_nothing_written(tmp)


def test_3d_where_4d_expected(small):
    _, labels, tmp = small
    vol = write_run(tmp / "vol.nii.gz", np.zeros((4, 5, 3), dtype=np.int16))
    with pytest.raises(ImageDimensionError, match=r"vol\.nii\.gz.*3D.*expected 4D"):
        convert(vol, labels=labels, out=tmp / "s.zarr")
    assert_nothing_written(tmp)


@pytest.mark.parametrize("what", ["shape", "affine"])
def test_runs_on_different_grids(small, what):
    run, _, tmp = small
    if what == "shape":
        other = write_run(tmp / "other.nii.gz", np.zeros((4, 5, 2, 8), dtype=np.int16))
    else:
        moved = AFFINE.copy()
        moved[0, 3] += 2.0
        other = write_run(tmp / "other.nii.gz", np.zeros((4, 5, 3, 8), dtype=np.int16), moved)
    labels = write_labels(tmp / "l16.txt", ["a"] * 16)
    with pytest.raises(GridMismatchError, match=r"other\.nii\.gz.*different grid"):
        convert([run, other], labels=labels, out=tmp / "s.zarr")
    assert_nothing_written(tmp)


def test_runs_with_different_trs(small):
    run, _, tmp = small  # TR 2.5 s
    other = write_run(tmp / "other.nii.gz", np.zeros((4, 5, 3, 8), dtype=np.int16), tr=2.0)
    labels = write_labels(tmp / "l16.txt", ["a"] * 16)
    with pytest.raises(
        GridMismatchError,
        match=r"other\.nii\.gz: its header's TR \(2 s\) differs from .*run"
        r"\.nii\.gz's \(2\.5 s\); .* give the TR: tr_s=SECONDS",
    ):
        convert([run, other], labels=labels, out=tmp / "s.zarr")
    assert_nothing_written(tmp)
    # the TR given: the headers are not used
    store = convert([run, other], labels=labels, out=tmp / "s.zarr", tr_s=2.0)
    assert open_subject(store)["bold"].attrs["tr_s"] == 2.0


def test_runs_of_another_data_type_name_both_types(small):
    run, _, tmp = small  # int16, unscaled
    data = np.zeros((4, 5, 3, 8), dtype=np.int16)
    other = write_run(tmp / "other.nii.gz", data, slope=2.0)
    labels = write_labels(tmp / "l16.txt", ["a"] * 16)
    with pytest.raises(
        GridMismatchError,
        match=r"data type float64: int16 scaled by scl_slope/scl_inter differs from .*\(int16\)",
    ):
        convert([run, other], labels=labels, out=tmp / "s.zarr")
    assert_nothing_written(tmp)


def test_label_count_mismatch(small):
    run, _, tmp = small
    labels = write_labels(tmp / "short.txt", ["face"] * 5)
    with pytest.raises(LabelsError, match=r"short\.txt: 5 label rows .* 8 volumes"):
        convert(run, labels=labels, out=tmp / "s.zarr")
    assert_nothing_written(tmp)


def test_events_missing_columns(small):
    run, _, tmp = small
    ev = tmp / "x_events.tsv"
    pd.DataFrame({"onset": [0.0], "trial_type": ["face"]}).to_csv(ev, sep="\t", index=False)
    with pytest.raises(LabelsError, match=r"x_events\.tsv: missing column\(s\) \['duration'\]"):
        convert(run, labels=ev, out=tmp / "s.zarr")
    assert_nothing_written(tmp)


def test_events_negative_duration(small):
    run, _, tmp = small
    ev = tmp / "x_events.tsv"
    pd.DataFrame(
        {"onset": [0.0, 4.0], "duration": [2.0, -1.0], "trial_type": ["face", "house"]}
    ).to_csv(ev, sep="\t", index=False)
    with pytest.raises(LabelsError, match=r"x_events\.tsv: line 3: negative duration"):
        convert(run, labels=ev, out=tmp / "s.zarr")
    assert_nothing_written(tmp)


def test_unknown_condition(small):
    run, labels, tmp = small
    ds = open_subject(convert(run, labels=labels, out=tmp / "s.zarr"))
    with pytest.raises(ConditionError, match=r"\['cat'\].*\['face', 'house'\]"):
        select_conditions(ds["bold"], conditions=["face", "cat"])


def test_header_larger_than_file(small):
    _, labels, tmp = small
    img = nib.Nifti1Image(np.zeros((4, 5, 3, 8), dtype=np.int16), AFFINE)
    raw = img.header.binaryblock + b"\x00" * 4 + np.zeros(4 * 5 * 3 * 4, np.int16).tobytes()
    short = tmp / "short.nii"
    short.write_bytes(raw)  # header promises 8 volumes, the file holds 4
    with pytest.raises(CorruptFileError, match=r"short\.nii: header says shape \(4, 5, 3, 8\)"):
        convert(short, labels=labels, out=tmp / "s.zarr")
    assert_nothing_written(tmp)


def test_nonfinite_voxels_are_counted(tmp_path, rng):
    data = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    data[0, 0, 0, 1] = np.nan
    data[1, 2, 1, 3] = np.inf
    run = write_run(tmp_path / "run.nii.gz", data)
    labels = write_labels(tmp_path / "l.txt", ["a"] * 4)
    with pytest.warns(NonFiniteVoxelsWarning, match="2 NaN/inf"):
        store = convert(run, labels=labels, out=tmp_path / "s.zarr")
    assert open_subject(store)["bold"].attrs["n_nonfinite"] == 2


def test_existing_subject_without_overwrite(small):
    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    before = open_subject(store)["bold"].values
    with pytest.raises(OutputExistsError, match=r"already holds subject 'sub-01'"):
        convert(run, labels=labels, out=store)
    np.testing.assert_array_equal(before, open_subject(store)["bold"].values)
    convert(run, labels=labels, out=store, overwrite=True, chunks="time=3")
    assert open_subject(store)["bold"].chunks[3][0] == 3


def test_non_store_target_is_refused(small):
    run, labels, tmp = small
    (tmp / "s.zarr").mkdir()
    (tmp / "s.zarr" / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a roidask store"):
        convert(run, labels=labels, out=tmp / "s.zarr", overwrite=True)
    assert (tmp / "s.zarr" / "precious.txt").read_text() == "keep me"


def test_failed_conversion_leaves_nothing(small, monkeypatch):
    run, labels, tmp = small
    from roidask.io import store_write as store_mod

    def exploding(sources, block, **kwargs):
        yield 0, sources[0].read(0, 1)
        raise KeyboardInterrupt  # killed mid-conversion

    monkeypatch.setattr(store_mod, "_stream_blocks", exploding)
    with pytest.raises(KeyboardInterrupt):
        convert(run, labels=labels, out=tmp / "s.zarr", chunks="time=1")
    assert sorted(p.name for p in tmp.iterdir()) == ["labels.txt", "run.nii.gz"]


def test_incomplete_group_is_refused(small):
    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    shutil.copytree(store / "sub-01", store / "sub-02")
    zarr.open_group(str(store / "sub-02"), mode="r+").attrs[COMPLETE_ATTR] = False
    with pytest.raises(IncompleteStoreError, match=r"sub-02.*not completely written"):
        open_subject(store, "sub-02")
    with pytest.raises(IncompleteStoreError, match="sub-02"):
        open_store(store)
    assert list_subjects(store) == ["sub-01"]


def test_missing_subject_lists_known(small):
    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    with pytest.raises(StoreError, match=r"no subject 'sub-09'.*\['sub-01'\]"):
        open_subject(store, "sub-09")


def test_every_chunk_is_written_with_a_checksum(tmp_path):
    """A chunk equal to the fill value is written too (a missing chunk is damage), and every
    array's codecs end with crc32c."""
    import json

    data = np.zeros((3, 3, 2, 6), dtype=np.int16)
    run = write_run(tmp_path / "run.nii.gz", data)
    labels = write_labels(tmp_path / "l.txt", ["a"] * 6)
    store = convert(run, labels=labels, out=tmp_path / "s.zarr", chunks="time=2")
    chunks = sorted(p.name for p in (store / "sub-01" / "bold" / "c" / "0" / "0" / "0").iterdir())
    assert chunks == ["0", "1", "2"]
    for name in ("bold", "time", "condition", "run"):
        meta = json.loads((store / "sub-01" / name / "zarr.json").read_text())
        assert meta["codecs"][-1]["name"] == "crc32c", name


# -- converts adding subjects to one store at the same time (a job array) -----------------
def _converts_at_once(monkeypatch, jobs, *, meet_at="_mark_complete"):
    """``convert(**job)`` for each job at once, all past their checks before any commits."""
    from roidask.io import store_write as store_mod

    return at_once(monkeypatch, store_mod, meet_at, [lambda j=j: convert(**j) for j in jobs])


def _root_subjects(store):
    root = json.loads((store / "zarr.json").read_text())
    return sorted(k for k in root["consolidated_metadata"]["metadata"] if "/" not in k)


def test_converts_creating_one_store_at_once_keep_every_subject(small, monkeypatch):
    run, labels, tmp = small
    out = tmp / "s.zarr"
    jobs = [dict(bold=run, labels=labels, out=out, subject=f"sub-{i}") for i in range(4)]
    results = _converts_at_once(monkeypatch, jobs)
    assert results == [out] * 4
    assert list_subjects(out) == _root_subjects(out) == [f"sub-{i}" for i in range(4)]
    assert_nothing_left = [p.name for p in tmp.iterdir() if p.name.startswith(".")]
    assert assert_nothing_left == []


def test_converts_adding_to_one_store_at_once_take_turns(small, monkeypatch):
    run, labels, tmp = small
    out = convert(run, labels=labels, out=tmp / "s.zarr", subject="sub-0")
    from roidask.io import store_write as store_mod

    real, inside, most = store_mod.consolidate, [0], [0]

    def slow_consolidate(path):  # a wide window for another root rewrite to overlap
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.2)
        try:
            real(path)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(store_mod, "consolidate", slow_consolidate)
    jobs = [dict(bold=run, labels=labels, out=out, subject=f"sub-{i}") for i in range(1, 4)]
    assert _converts_at_once(monkeypatch, jobs) == [out] * 3
    assert most[0] == 1  # one root rewrite at a time
    assert list_subjects(out) == _root_subjects(out) == [f"sub-{i}" for i in range(4)]


def test_a_subject_written_meanwhile_needs_overwrite(small, monkeypatch):
    run, labels, tmp = small
    out = tmp / "s.zarr"
    jobs = [dict(bold=run, labels=labels, out=out, subject="sub-01", chunks=f"time={c}")
            for c in (2, 4)]  # fmt: skip
    results = _converts_at_once(monkeypatch, jobs)
    kept = [r for r in results if r == out]
    refused = [r for r in results if isinstance(r, OutputExistsError)]
    assert len(kept) == len(refused) == 1, results
    assert "written meanwhile by another convert" in str(refused[0])
    assert list_subjects(out) == ["sub-01"]
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []


def test_the_temporary_store_stays_locked_while_it_is_written(small, monkeypatch):
    # another convert's clean-up of killed runs' leftovers, during this one's write
    from roidask._atomic import clean_stale
    from roidask.io import store_write as store_mod

    run, labels, tmp = small
    real = store_mod._stream_blocks

    def others_clean_up(sources, block, **kwargs):
        assert clean_stale(tmp / "s.zarr") == []
        yield from real(sources, block, **kwargs)

    monkeypatch.setattr(store_mod, "_stream_blocks", others_clean_up)
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    assert list_subjects(store) == ["sub-01"]


@pytest.mark.parametrize("what", ["folder", "file"])
def test_what_a_user_put_at_out_meanwhile_is_never_written_into(small, monkeypatch, what):
    from roidask.io import store_write as store_mod

    run, labels, tmp = small
    out = tmp / "s.zarr"
    real = store_mod._mark_complete

    def meanwhile(group):  # while the subject is converted: the user's folder or file
        if what == "folder":
            out.mkdir()
            (out / "zarr.json").write_text("mine")
        else:
            out.write_text("mine")
        real(group)

    monkeypatch.setattr(store_mod, "_mark_complete", meanwhile)
    with pytest.raises(OutputError, match=r"s\.zarr: .*(not a roidask store|a file was put)"):
        convert(run, labels=labels, out=out)
    assert (out / "zarr.json" if what == "folder" else out).read_text() == "mine"
    assert sorted(p.name for p in tmp.iterdir()) == ["labels.txt", "run.nii.gz", "s.zarr"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"out": None}, r"^out: expected a path \(str or os\.PathLike\), got NoneType$"),
        ({"labels": 5}, r"^labels: expected a path or a list of paths .*got int$"),
        ({"bold": None}, r"^bold: expected a path or a list of paths .*got NoneType$"),
    ],
    ids=["out", "labels", "bold"],
)
def test_a_path_parameter_that_is_not_a_path_is_named(haxby, tmp_path, kwargs, message):
    args = {"bold": haxby.bold, "labels": haxby.labels, "out": tmp_path / "s.zarr", **kwargs}
    with pytest.raises(RoidaskTypeError, match=message) as info:
        convert(args.pop("bold"), **args)
    assert info.value.param == next(iter(kwargs))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["x.nii.gz", "x.NII", "x.nii.zarr", "s3://bucket/study/x.nii.gz"])
def test_a_store_named_as_an_image_is_refused_before_anything_is_read(haxby, tmp_path, name):
    """``convert(..., out="x.nii.gz")`` created a zarr store of that name, which
    ``as_image`` then refused as a folder: refused, before any input is read (and,
    of an s3:// name, before the object store is asked anything)."""
    out = name if name.startswith("s3://") else tmp_path / name
    with (
        voxel_reads() as reads,
        pytest.raises(
            InvalidParameterError,
            match=rf"^out {re.escape(str(out))}: is named as an image \(\.nii, \.nii\.gz, "
            r"\.nii\.zarr\), but convert writes a zarr store; name it e.g\. study\.zarr "
            r"\(an image is written by roidask\.to_nifti\)$",
        ) as info,
    ):
        convert(haxby.bold, labels=haxby.labels, out=out)
    assert info.value.param == "out" and reads == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["overwrite", "progress"])
def test_a_flag_that_is_not_a_bool_is_refused_before_anything_is_read(haxby, tmp_path, flag):
    """``progress="x"`` was taken as true; both are checked before the store's location
    (local or s3://) is looked at."""
    for out in (tmp_path / "s.zarr", "s3://bucket/s.zarr"):
        with (
            voxel_reads() as reads,
            pytest.raises(InvalidParameterError, match=rf"^{flag}: expected True or False, "),
        ):
            convert(haxby.bold, labels=haxby.labels, out=out, **{flag: "x"})
        assert reads == []
    assert list(tmp_path.iterdir()) == []


def test_write_image_refuses_a_name_that_is_not_a_str(small):
    """``name=3`` was a raw TypeError of ``re.match`` once the store was read."""
    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    img = nib.Nifti1Image(np.ones((4, 5, 3), dtype=np.int16), AFFINE)
    before = tree(store)
    with pytest.raises(RoidaskTypeError, match=r"^name: expected a name \(str\), got 3$"):
        write_image(img, store, subject="sub-01", name=3)
    assert tree(store) == before


# -- overwrite replaces only what roidask wrote ---------------------------------------------
def _user_array(path):
    arr = zarr.create_array(
        str(path), shape=(3,), chunks=(3,), dtype="f4", zarr_format=3, dimension_names=["v"]
    )
    arr[:] = [1, 2, 3]


@pytest.mark.parametrize(
    "where", ["derived/myres/data", "myarr", "bold/c/0/0/0/extra/c/0", "mask2"]
)
def test_overwrite_keeps_zarr_arrays_a_user_put_in_a_subject(small, where):
    """A zarr array (or group) a user wrote inside a subject, nested or not, is not roidask's:
    the subject is not replaced, and the message names it."""
    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    if where.startswith("bold/"):
        (store / "sub-01" / where).parent.mkdir(parents=True)
        (store / "sub-01" / where).write_bytes(b"x")
    else:
        zarr.open_group(str(store / "sub-01"), mode="r+")  # the group is there
        _user_array(store / "sub-01" / where)
    with pytest.raises(OutputError, match=rf"sub-01/ holds files roidask did not write \({where}"):
        convert(run, labels=labels, out=store, overwrite=True)
    assert (store / "sub-01" / where).exists()


@pytest.mark.parametrize("kind", ["group", "array"])
def test_a_user_group_or_array_at_the_root_is_not_a_subject(small, kind):
    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    if kind == "group":
        zarr.open_group(str(store / "userg"), mode="w", zarr_format=3)
        _user_array(store / "userg" / "inner")
    else:
        _user_array(store / "userg")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"userg/ is not a subject roidask wrote") as info:
            convert(run, labels=labels, out=store, subject="userg", overwrite=overwrite)
        assert "subject 'userg'" not in str(info.value)
    assert (store / "userg" / "zarr.json").is_file()


def test_a_subject_that_lost_its_zarr_json_is_replaced_if_the_root_lists_it(small):
    """A subject whose zarr.json is lost is still roidask's when the root's consolidated
    metadata lists it (its chunk inventory there): --overwrite rewrites it; a user's file
    beside its chunks is still refused."""
    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    (store / "sub-01" / "zarr.json").unlink()
    (store / "sub-01" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"did not write \(notes.txt\)"):
        convert(run, labels=labels, out=store, overwrite=True)
    (store / "sub-01" / "notes.txt").unlink()
    convert(run, labels=labels, out=store, overwrite=True)
    assert open_subject(store)["bold"].shape == (4, 5, 3, 8)


@pytest.mark.parametrize("where", ["group", "bold"])
def test_attributes_a_user_added_to_a_subject_are_not_replaced(small, where):
    """An attribute added with zarr (the subject's or an array's): the subject's metadata
    differs from the store root's record of it, so --overwrite refuses it."""
    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    group = zarr.open_group(str(store / "sub-01"), mode="r+", use_consolidated=False)
    (group if where == "group" else group["bold"]).attrs["my_note"] = "mine"
    shown = "zarr.json" if where == "group" else "bold/zarr.json"
    with pytest.raises(
        OutputError, match=rf"sub-01/ was changed since roidask wrote it \({shown}"
    ):
        convert(run, labels=labels, out=store, overwrite=True)
    group = zarr.open_group(str(store / "sub-01"), mode="r", use_consolidated=False)
    assert (group if where == "group" else group["bold"]).attrs["my_note"] == "mine"


def test_a_link_to_a_folder_in_a_subject_is_the_users(small):
    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    (tmp / "mine").mkdir()
    (store / "sub-01" / "bold" / "c" / "mylink").symlink_to(tmp / "mine")
    with pytest.raises(OutputError, match=r"did not write \(bold/c/mylink\)"):
        convert(run, labels=labels, out=store, overwrite=True)
    assert (store / "sub-01" / "bold" / "c" / "mylink").is_symlink()


def test_a_users_file_where_a_listed_subject_was_is_refused(small):
    """The root still lists the subject, but a file of the user's has its name: refused
    (a subject is a folder), the file kept."""
    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    shutil.rmtree(store / "sub-01")
    (store / "sub-01").write_text("my notes")
    with pytest.raises(OutputError, match=r"sub-01/ is not a subject roidask wrote"):
        convert(run, labels=labels, out=store, overwrite=True)
    assert (store / "sub-01").read_text() == "my notes"


def test_a_subject_folder_nothing_proves_roidasks_is_refused_with_what_to_do(small):
    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    shutil.copytree(store / "sub-01", store / "sub-02")
    (store / "sub-02" / "zarr.json").unlink()  # never listed by the root
    with pytest.raises(OutputError, match=r"sub-02/ is not a subject roidask wrote.*move it out"):
        convert(run, labels=labels, out=store, subject="sub-02", overwrite=True)
    assert (store / "sub-02" / "bold" / "zarr.json").is_file()


def test_an_image_added_to_a_subject_joins_its_inventory_but_a_users_array_does_not(small):
    from roidask.io.store_read import CHUNK_GRIDS_ATTR

    run, labels, tmp = small
    store = convert(run, labels=labels, out=tmp / "s.zarr")
    _user_array(store / "sub-01" / "myarr")
    img = nib.Nifti1Image(np.ones((4, 5, 3), dtype=np.int16), AFFINE)
    write_image(img, store, subject="sub-01", name="atlas")
    grids = zarr.open_group(str(store / "sub-01"), mode="r").attrs[CHUNK_GRIDS_ATTR]
    assert "atlas" in grids and "myarr" not in grids
    # a user's array is never replaced by one of roidask's, even with overwrite
    with pytest.raises(OutputError, match=r"sub-01/myarr is not an image roidask wrote"):
        write_image(img, store, subject="sub-01", name="myarr", overwrite=True)
    assert zarr.open_array(str(store / "sub-01" / "myarr"), mode="r")[:].tolist() == [1, 2, 3]
    # roidask's own, as it wrote it: replaced
    img2 = nib.Nifti1Image(np.full((4, 5, 3), 2, dtype=np.int16), AFFINE)
    write_image(img2, store, subject="sub-01", name="atlas", overwrite=True)
    assert (open_subject(store)["atlas"].values == 2).all()
