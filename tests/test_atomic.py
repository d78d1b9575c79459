"""roidask._atomic: destinations checked before anything is read, outputs committed in one
rename, nothing deleted that roidask did not write, and what killed runs leave cleaned up."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import pytest
from helpers.files import locked_by_another_process, same_size_edit, tree
from hypothesis import example, given, settings
from hypothesis import strategies as st

from roidask import _atomic
from roidask._atomic import (
    MARKER,
    RECORDS,
    FolderLock,
    InputIndex,
    OutputFolder,
    atomic_file,
    changed_since_commit,
    check_destination,
    clean_stale,
    is_roidask_folder,
    read_marker,
    swap_into_place,
    temp_sibling,
    write_text,
)
from roidask.exceptions import OutputError, OutputExistsError, RoidaskOSError


def roidask_folder(path, files=("a.txt",), kind="subject-results"):
    """A folder as OutputFolder commits it: ``files`` and the marker listing them."""
    with OutputFolder(path, kind=kind) as tmp:
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(f"{name} by roidask\n")
    return path


# -- check_destination -------------------------------------------------------------------------
def test_a_new_destination_is_accepted_and_nothing_is_created(tmp_path):
    assert check_destination(tmp_path / "out", param="out") == tmp_path / "out"
    assert list(tmp_path.iterdir()) == []  # the write probe is gone


def test_missing_parent_is_refused(tmp_path):
    with pytest.raises(
        OutputError,
        match=r"^out .*results/subj2: its parent folder .*results "
        r"does not exist; create it first$",
    ) as info:
        check_destination(tmp_path / "results" / "subj2", param="out")
    assert info.value.param == "out"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"file is not a folder"):
        check_destination(tmp_path / "file" / "out", param="out")


@pytest.mark.parametrize(
    ("where", "how"), [("same", "is"), ("inside-out", "contains"), ("out-inside", "is inside")]
)
def test_an_input_folder_is_never_an_output(tmp_path, where, how):
    data = tmp_path / "data"
    data.mkdir()
    (data / "bold.nii.gz").write_bytes(b"bold")
    before = tree(tmp_path)
    out, inputs = {
        "same": (data, [data]),
        "inside-out": (data, [data / "bold.nii.gz"]),  # out contains an input
        "out-inside": (data / "results", [data]),  # out inside an input (a store)
    }[where]
    with pytest.raises(OutputError, match=rf"^out {out}: {how} the input .*never writes over"):
        check_destination(out, param="out", inputs=inputs, overwrite=True)
    assert tree(tmp_path) == before


def _overlaps(a: str, b: str) -> bool:
    """The reference: ``a`` is ``b``, or one lies inside the other (whole path components)."""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


_PARTS = st.lists(st.sampled_from(["a", "ab", "b", "data", "data2"]), min_size=1, max_size=4)


@settings(max_examples=300)  # cheap: no files
@given(
    inputs=st.lists(st.tuples(st.booleans(), _PARTS), max_size=6),
    outs=st.lists(st.tuples(st.booleans(), _PARTS), min_size=1, max_size=6),
)
@example(inputs=[(False, ["data"])], outs=[(False, ["data2"]), (False, ["data", "b"])])
@example(inputs=[(True, ["a", "b"])], outs=[(True, ["a", "ab"]), (True, ["a"]), (False, ["a"])])
def test_input_index_finds_what_each_output_overlaps(inputs, outs):
    """Equal to comparing the output with every input (a batch's thousands of folders
    against thousands of inputs: one index, a lookup per level of the output's path);
    siblings sharing a prefix (``data``, ``data2``) do not overlap, nor do a bucket's
    keys and local paths."""

    def location(remote, parts):
        return f"s3://bucket/{'/'.join(parts)}" if remote else "/" + "/".join(parts)

    given_inputs = [location(*i) for i in inputs]
    index = InputIndex(given_inputs)
    for out in (location(*o) for o in outs):
        expected = [i for i in given_inputs if _overlaps(i, out)]
        found = index.overlap(out)
        assert (found is None) == (not expected), (out, given_inputs, found)
        assert found is None or found in expected


def test_input_index_follows_symbolic_links(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    index = InputIndex([tmp_path / "link" / "bold.nii.gz"])
    assert index.overlap(tmp_path / "data") == tmp_path / "link" / "bold.nii.gz"
    assert index.overlap(tmp_path / "data2") is None
    assert index.overlap(tmp_path / "data" / "bold.nii.gz" / "x") is not None  # inside


def test_a_folder_roidask_did_not_write_is_never_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(
        OutputError,
        match=rf"mine: exists and was not written by roidask \(no "
        rf"{MARKER}\); roidask only replaces its own outputs",
    ):
        check_destination(out, param="out", overwrite=True)
    # a marker of another program, or a provenance.json without roidask's fields
    (out / MARKER).write_text(json.dumps({"written_by": "other", "files": ["notes.txt"]}))
    (out / "provenance.json").write_text(json.dumps({"outputs": ["notes.txt"]}))
    with pytest.raises(OutputError, match="was not written by roidask"):
        check_destination(out, param="out", overwrite=True)
    assert (out / "notes.txt").read_text() == "my notes"


def test_a_file_or_symlink_is_never_replaced(tmp_path):
    (tmp_path / "out").write_text("a file of mine")
    with pytest.raises(OutputError, match=r"out: exists and is not a folder roidask wrote"):
        check_destination(tmp_path / "out", param="out", overwrite=True)
    target = roidask_folder(tmp_path / "real")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OutputError, match=r"link: exists and is not a folder roidask wrote"):
        check_destination(tmp_path / "link", param="out", overwrite=True)


def test_a_roidask_folder_holding_a_foreign_file_is_refused(tmp_path):
    out = roidask_folder(tmp_path / "out", files=("a.txt", "figures/f.png"))
    check_destination(out, param="out", overwrite=True)  # all its files are roidask's
    (out / "figures" / "my-edit.png").write_bytes(b"user")
    (out / "notes.txt").write_text("user")
    with pytest.raises(
        OutputError,
        match=r"out: holds 2 file\(s\) roidask did not write, or changed since "
        r"\(figures/my-edit.png, notes.txt\)",
    ):
        check_destination(out, param="out", overwrite=True)
    assert (out / "notes.txt").read_text() == "user"


@pytest.mark.parametrize(
    "edit",
    [
        "appended",
        "same-size",
        "folder",
        "folder-for-a-file",
        "link-for-a-file",
        "link-for-a-folder",
    ],
)
def test_a_roidask_folder_a_user_added_to_is_refused(tmp_path, edit):
    out = roidask_folder(tmp_path / "out", files=("rois.tsv", "figures/f.png"))
    if edit == "appended":  # a user's line in roidask's table: theirs now
        with open(out / "rois.tsv", "a") as f:
            f.write("my note\n")
        shown = "rois.tsv (changed)"
    elif edit == "same-size":  # a cell fixed, or a map replaced by one of the same size
        (out / "rois.tsv").write_bytes(same_size_edit((out / "rois.tsv").read_bytes()))
        shown = "rois.tsv (changed)"
    elif edit == "folder":  # a user's (empty) folder
        (out / "my_notes").mkdir()
        shown = "my_notes/"
    elif edit == "folder-for-a-file":  # a user's folder where roidask's file was
        (out / "rois.tsv").unlink()
        (out / "rois.tsv").mkdir()
        (out / "rois.tsv" / "mine.txt").write_text("notes")
        shown = "rois.tsv/, rois.tsv/mine.txt"
    elif edit == "link-for-a-file":  # to a copy of the same bytes, kept elsewhere
        kept = shutil.copy(out / "rois.tsv", tmp_path / "rois-kept.tsv")
        (out / "rois.tsv").unlink()
        (out / "rois.tsv").symlink_to(kept)
        shown = "rois.tsv"
    else:  # the figures moved elsewhere, a link left in their place
        shutil.move(out / "figures", tmp_path / "figures-kept")
        (out / "figures").symlink_to(tmp_path / "figures-kept")
        shown = "figures"
    with pytest.raises(
        OutputError, match=rf"did not write, or changed since \({re.escape(shown)}\)"
    ):
        check_destination(out, param="out", overwrite=True)


def test_the_marker_records_each_file_s_size_time_and_crc32c(tmp_path):
    with OutputFolder(tmp_path / "out", kind="subject-results") as tmp:
        (tmp / "check.txt").write_text("123456789")  # CRC-32C's check value: e3069283
        (tmp / "old.txt").write_text("old")
        os.utime(tmp / "old.txt", ns=(10**18, 10**18))  # modified long before the commit
    out = tmp_path / "out"
    record = json.loads((out / MARKER).read_text())
    assert record["bytes"] == {"check.txt": 9, "old.txt": 3}
    assert record["crc32c"]["check.txt"] == "e3069283"
    assert record["mtime_ns"]["old.txt"] == 10**18
    marker = read_marker(out)
    assert {f: marker[f] for f in RECORDS if f in marker} == {
        f: record[f] for f in ("bytes", "mtime_ns", "crc32c")
    }


def test_a_file_as_committed_is_not_read(tmp_path):
    """Same size and modification time as the marker recorded: unchanged, and not read
    (rsync's quick check), so an edit that also restores the time is not seen. Another
    time: its content is compared."""
    past = time.time_ns() - 3600 * 10**9
    with OutputFolder(tmp_path / "out", kind="subject-results") as tmp:
        (tmp / "rois.tsv").write_text("label\tvoxels\n1\t12\n")
        os.utime(tmp / "rois.tsv", ns=(past, past))
    rois = tmp_path / "out" / "rois.tsv"
    rois.write_bytes(same_size_edit(rois.read_bytes()))
    os.utime(rois, ns=(past, past))
    assert check_destination(rois.parent, param="out", overwrite=True) == rois.parent
    os.utime(rois, ns=(past + 1, past + 1))
    with pytest.raises(OutputError, match=r"changed since \(rois.tsv \(changed\)\)"):
        check_destination(rois.parent, param="out", overwrite=True)


def test_a_file_modified_as_its_folder_is_committed_is_always_read(tmp_path):
    """A file whose time is not before the marker's creation could be edited within the
    same tick of the file system's clock and keep its time: its time is not recorded, and
    its content is compared whatever its time."""
    late = time.time_ns() + 3600 * 10**9  # (a clock tick, made long)
    with OutputFolder(tmp_path / "out", kind="subject-results") as tmp:
        (tmp / "rois.tsv").write_text("label\tvoxels\n1\t12\n")
        os.utime(tmp / "rois.tsv", ns=(late, late))
    out = tmp_path / "out"
    record = json.loads((out / MARKER).read_text())
    assert "rois.tsv" not in record["mtime_ns"] and "rois.tsv" in record["crc32c"]
    check_destination(out, param="out", overwrite=True)  # read: as committed
    (out / "rois.tsv").write_bytes(same_size_edit((out / "rois.tsv").read_bytes()))
    os.utime(out / "rois.tsv", ns=(late, late))
    with pytest.raises(OutputError, match=r"changed since \(rois.tsv \(changed\)\)"):
        check_destination(out, param="out", overwrite=True)


def test_a_copy_that_did_not_keep_the_times_is_still_roidask_s(tmp_path):
    """``cp -r`` (no ``-p``): every file has another time, the same content: roidask's
    (each file read once); a same-size edit of the copy is still the user's."""
    past = time.time_ns() - 3600 * 10**9
    with OutputFolder(tmp_path / "out", kind="subject-results") as tmp:
        for name in ("rois.tsv", "results.zarr/a/c/0"):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(f"{name} by roidask\n")
            os.utime(tmp / name, ns=(past, past))
    out = tmp_path / "out"
    copy = shutil.copytree(out, tmp_path / "copy", copy_function=shutil.copy)
    recorded = json.loads((copy / MARKER).read_text())["mtime_ns"]
    assert recorded == {"rois.tsv": past, "results.zarr/a/c/0": past}
    assert (copy / "rois.tsv").stat().st_mtime_ns != past
    assert check_destination(copy, param="out", overwrite=True) == copy
    (copy / "rois.tsv").write_bytes(same_size_edit((copy / "rois.tsv").read_bytes()))
    with pytest.raises(OutputError, match=r"changed since \(rois.tsv \(changed\)\)"):
        check_destination(copy, param="out", overwrite=True)


@pytest.mark.parametrize("kept", [("bytes",), ()], ids=["sizes-only", "no-records"])
def test_older_markers_are_read_as_before(tmp_path, kept):
    """Markers written before times and CRC-32Cs were recorded (sizes only), or before
    sizes were: a same-size edit cannot be told (the folder is still roidask's); one of
    another size is refused where sizes were recorded."""
    out = roidask_folder(tmp_path / "out", files=("rois.tsv",))
    record = json.loads((out / MARKER).read_text())
    dropped = set(RECORDS) - set(kept)
    (out / MARKER).write_text(json.dumps({k: v for k, v in record.items() if k not in dropped}))
    assert set(RECORDS) & set(read_marker(out)) == set(kept)
    (out / "rois.tsv").write_bytes(same_size_edit((out / "rois.tsv").read_bytes()))
    assert check_destination(out, param="out", overwrite=True) == out
    with open(out / "rois.tsv", "a") as f:
        f.write("my note\n")
    if kept:
        with pytest.raises(OutputError, match=r"changed since \(rois.tsv \(changed\)\)"):
            check_destination(out, param="out", overwrite=True)
    else:
        assert check_destination(out, param="out", overwrite=True) == out


def test_objects_are_compared_by_their_etag_quoted_or_not():
    """In S3 the listing's ETag against the PUT's (some servers drop the quotes from one)."""
    marker = {"bytes": {"a": 3, "b": 3}, "etag": {"a": '"9a0364b9"', "b": '"e1faffb3-2"'}}
    found = {"a": {"size": 3, "etag": "9a0364b9"}, "b": {"size": 3, "etag": '"e1faffb3-2"'}}
    assert changed_since_commit(marker, found) == []
    found["b"]["etag"] = '"e1faffb3"'  # the same bytes put again, in one part: another ETag
    assert changed_since_commit(marker, found) == ["b"]
    found["a"]["etag"] = None  # a listing without ETags: the sizes are compared
    assert changed_since_commit(marker, found) == ["b"]
    del found["a"]
    assert changed_since_commit(marker, found) == ["a", "b"]


def test_a_file_is_read_once_per_process_until_it_changes(tmp_path, monkeypatch):
    """A folder copied without its times is checked several times by one command: each
    file's CRC-32C is read once, and again only once it was written (even with its size
    and modification time put back)."""
    reads = []
    real = _atomic.google_crc32c.extend
    monkeypatch.setattr(
        _atomic.google_crc32c, "extend", lambda c, b: reads.append(1) or real(c, b)
    )
    path = tmp_path / "rois.tsv"
    path.write_bytes(b"123456789")
    assert _atomic.file_crc32c(path) == "e3069283" == _atomic.file_crc32c(path)
    assert len(reads) == 1
    before = path.stat()
    time.sleep(0.01)
    path.write_bytes(b"123456780")  # a same-size edit, its time restored
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert _atomic.file_crc32c(path) != "e3069283"
    assert len(reads) == 2


def test_results_zarr_files_belong_to_the_folder(tmp_path):
    # a listed folder (results.zarr) owns whatever zarr wrote inside it
    with OutputFolder(tmp_path / "out", kind="subject-results") as tmp:
        (tmp / "results.zarr" / "bold" / "c").mkdir(parents=True)
        (tmp / "results.zarr" / "bold" / "c" / "0").write_bytes(b"chunk")
    record = read_marker(tmp_path / "out")
    assert record["files"] == ["results.zarr/bold/c/0"]
    check_destination(tmp_path / "out", param="out", overwrite=True)


def test_own_folder_needs_overwrite_and_kind(tmp_path):
    out = roidask_folder(tmp_path / "out")
    with pytest.raises(OutputExistsError, match=r"out: already exists; pass overwrite=True"):
        check_destination(out, param="out")
    with pytest.raises(OutputError, match=r"is a roidask subject-results folder, not a group"):
        check_destination(out, param="out", overwrite=True, kind="group")
    assert check_destination(out, param="out", overwrite=True, kind="subject-results") == out


def test_folders_of_roidask_0_1_are_recognised_by_their_provenance(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "atlas.nii.gz").write_bytes(b"x")
    record = {"roidask_version": "0.1.0", "outputs": ["atlas.nii.gz"]}
    (out / "provenance.json").write_text(json.dumps(record))
    assert is_roidask_folder(out)
    assert check_destination(out, param="out", overwrite=True) == out


# -- commits -----------------------------------------------------------------------------------
def test_output_folder_commits_with_a_marker(tmp_path):
    out = roidask_folder(tmp_path / "out", files=("b.txt", "sub/c.txt"), kind="group")
    record = json.loads((out / MARKER).read_text())
    assert record["written_by"] == "roidask" and record["kind"] == "group"
    assert record["files"] == ["b.txt", "sub/c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no sibling left


def test_the_current_folder_is_never_an_output_replaced_whole(tmp_path, monkeypatch):
    """``--out .`` (or a folder above the current one) is refused: replacing it would leave
    the user's shell in a deleted folder, the outputs seemingly gone. An output folder
    built for ``.`` is still a sibling of the folder, renamed in by its name."""
    out = roidask_folder(tmp_path / "out")
    (out / "figures").mkdir()
    for here, target, what in [(out, ".", "is the"), (out / "figures", "..", "is above the")]:
        monkeypatch.chdir(here)
        want = (
            rf"^out {re.escape(target)}: {what} current folder \({re.escape(str(here))}\), "
            rf".*cd {re.escape(str(tmp_path))}\)$"
        )
        with pytest.raises(OutputError, match=want):
            check_destination(Path(target), param="out", overwrite=True, kind="subject-results")
    monkeypatch.chdir(out)
    (out / "figures").rmdir()  # not roidask's: it would not be replaced
    clean_stale(".")
    with OutputFolder(".", kind="subject-results") as tmp:
        assert tmp.parent == tmp_path
        (tmp / "a.txt").write_text("new")
    assert (tmp_path / "out" / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_output_folder_leaves_the_old_one_untouched(tmp_path):
    out = roidask_folder(tmp_path / "out")
    before = tree(out)
    with pytest.raises(RuntimeError), OutputFolder(out, kind="subject-results") as tmp:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("failed mid-write")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_swap_into_place_exchanges_in_one_call(tmp_path, monkeypatch):
    """There is no moment without ``target``: it is never renamed away; the new folder
    and the old one are exchanged, and the old content is removed only afterwards."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "v").write_text("old")
    new = tmp_path / ".out.new"
    new.mkdir()
    (new / "v").write_text("new")
    renames, seen_at_removal = [], []
    real_rename, real_remove = os.rename, _atomic._remove

    def rename(src, dst, *args, **kwargs):
        renames.append((str(src), str(dst)))
        return real_rename(src, dst, *args, **kwargs)

    def remove(path):
        seen_at_removal.append(((target / "v").read_text(), (path / "v").read_text()))
        real_remove(path)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(_atomic, "_remove", remove)
    swap_into_place(new, target)
    assert (target / "v").read_text() == "new"
    assert renames == []  # target was never moved aside
    assert seen_at_removal == [("new", "old")]  # removed: the old content, after the swap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_swap_without_renameat2_moves_the_old_folder_aside(tmp_path, monkeypatch):
    """Where RENAME_EXCHANGE is unsupported: rename aside, rename in, remove; the aside
    name is one clean_stale recognises, so a crash in between loses nothing for good."""
    monkeypatch.setattr(_atomic, "_exchange", lambda a, b: False)
    target = roidask_folder(tmp_path / "out")
    new = temp_sibling(target)
    new.mkdir()
    (new / "v").write_text("new")
    aside = []
    real_remove = _atomic._remove

    def remove(path):
        aside.append(path.name)
        real_remove(path)

    monkeypatch.setattr(_atomic, "_remove", remove)
    swap_into_place(new, target)
    assert (target / "v").read_text() == "new"
    (name,) = aside
    assert name.startswith(".out.roidask-old-")
    # the same name left behind by a killed process is cleaned up
    (tmp_path / name).mkdir()
    assert [p.name for p in clean_stale(target)] == [name]


def test_swap_into_place_on_a_new_target(tmp_path):
    new = tmp_path / ".new"
    new.mkdir()
    swap_into_place(new, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file(tmp_path):
    path = write_text(tmp_path / "f.tsv", "one\n")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert path.read_text() == "one\n"
    with atomic_file(path) as tmp:
        tmp.write_text("two\n")
    assert path.read_text() == "two\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.tsv"]


# -- stale siblings ----------------------------------------------------------------------------
def test_clean_stale_removes_only_roidask_temporaries_of_that_name(tmp_path):
    out = tmp_path / "out"
    stale_dir = tmp_path / ".out.roidask-tmp-123-0123abcd"
    stale_dir.mkdir()
    (stale_dir / "x").write_text("half written")
    stale_old = tmp_path / ".out.roidask-old-9-89abcdef"
    stale_old.write_text("old")
    keep = [
        ".out.roidask-tmp-123-0123abcdX",  # not a name roidask gives
        ".out.roidask-tmp-notes",
        ".other.roidask-tmp-1-0123abcd",  # another destination's
        "out.roidask-tmp-1-0123abcd",  # not hidden
        "notes.txt",
    ]
    for name in keep:
        (tmp_path / name).write_text("user")
    removed = clean_stale(out)
    assert sorted(p.name for p in removed) == sorted([stale_dir.name, stale_old.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_clean_stale_never_removes_a_sibling_a_live_process_holds(tmp_path):
    out = tmp_path / "out"
    live = tmp_path / ".out.roidask-tmp-4242-feedbeef"
    live.mkdir()
    (live / "partial.nii.gz").write_bytes(b"being written")
    with locked_by_another_process(live):
        assert clean_stale(out) == []
        assert (live / "partial.nii.gz").read_bytes() == b"being written"
        # this process's own lock (another open file) protects it just the same
        with OutputFolder(out, kind="subject-results") as tmp:
            assert clean_stale(out) == []
            assert tmp.is_dir()
    # the holder is gone (killed): its sibling is stale now
    assert clean_stale(out) == [live]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_lock_admits_one_process_at_a_time(tmp_path):
    """A second writer of a folder is refused with one line while the first lives; the
    kernel drops the lock of a killed one; nothing is written into the folder."""
    folder = tmp_path / "batch"
    folder.mkdir()
    with locked_by_another_process(folder):
        with pytest.raises(OutputError, match=r"^out .*batch: another roidask command is "
                           r"writing it \(a batch or a group level still running\)"):  # fmt: skip
            FolderLock(folder, param="out")
    with FolderLock(folder, param="out") as held:  # the holder was killed
        with pytest.raises(OutputError, match="another roidask command"):
            FolderLock(folder, param="out")  # another open file: refused in one process too
    held.release()  # idempotent
    FolderLock(folder, param="out").release()
    assert list(folder.iterdir()) == []


def test_a_folder_that_cannot_be_locked_is_written_with_a_warning(tmp_path, monkeypatch):
    """NFS refuses ``flock`` on a folder (EBADF): written as before, said once per folder."""
    import errno
    import fcntl

    from roidask.exceptions import LockWarning

    def no_lock(fd, operation):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", no_lock)
    monkeypatch.setattr(_atomic, "_UNLOCKED", set())
    with pytest.warns(LockWarning, match=r"^out .*: cannot be locked on this file system "
                      r"\(Bad file descriptor\); nothing stops another roidask"):  # fmt: skip
        FolderLock(tmp_path, param="out").release()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LockWarning)
        FolderLock(tmp_path, param="out").release()  # said once


def test_output_folder_names_an_unwritable_parent(tmp_path):
    with pytest.raises(OutputError, match=r"cannot create a folder in") as info:
        OutputFolder(tmp_path / "missing" / "out", kind="x").open()
    assert isinstance(info.value, RoidaskOSError)


@pytest.mark.parametrize("folder", [True, False])
def test_a_new_temporary_sibling_is_locked_once_it_exists(tmp_path, monkeypatch, folder):
    # Another process's clean_stale may remove a new sibling before it is locked (the
    # name already looks like a killed run's): it is then made again, and locked.
    real, removed = _atomic._lock, []

    def removed_first(fd):
        if not removed:  # what the other process does in that moment
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            removed.append(path)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return real(fd)

    monkeypatch.setattr(_atomic, "_lock", removed_first)
    tmp, fd = _atomic.create_locked(tmp_path / "out", folder=folder)
    try:
        assert removed and removed[0] != tmp
        assert tmp.is_dir() if folder else tmp.is_file()
        monkeypatch.setattr(_atomic, "_lock", real)
        assert clean_stale(tmp_path / "out") == []  # held: never taken for a killed run's
        assert tmp.exists()
    finally:
        os.close(fd)
    assert clean_stale(tmp_path / "out") == [tmp]  # released: a leftover


def test_an_output_folder_interrupted_while_it_commits_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(new, target):  # Ctrl-C or SIGTERM as the folder is moved into place
        raise KeyboardInterrupt

    monkeypatch.setattr(_atomic, "swap_into_place", interrupted)
    monkeypatch.setattr(_atomic, "rename_no_replace", interrupted)
    with pytest.raises(KeyboardInterrupt), OutputFolder(tmp_path / "out", kind="k") as tmp:
        (tmp / "a.txt").write_text("a")
    assert list(tmp_path.iterdir()) == []


# -- destinations changed while a command runs ----------------------------------------------
@pytest.mark.parametrize("renameat2", [True, False])
def test_a_folder_created_at_out_meanwhile_is_never_replaced(tmp_path, monkeypatch, renameat2):
    """``out`` was absent when checked; a user creates it (with their files) while the
    command runs: the commit leaves it as it is, with or without ``overwrite``, and
    keeps nothing of its own."""
    if not renameat2:
        monkeypatch.setattr(_atomic, "_rename2", lambda a, b, flags: False)
    out = tmp_path / "out"
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"created or changed while this command ran"):
            with OutputFolder(out, kind="subject-results", overwrite=overwrite) as tmp:
                (tmp / "a.txt").write_text("roidask")
                out.mkdir()
                (out / "mine.txt").write_text("precious")
        assert tree(out) == {"mine.txt": b"precious"}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
        shutil.rmtree(out)


def test_a_roidask_folder_changed_meanwhile_is_never_replaced(tmp_path):
    """With ``overwrite``, roidask's own ``out`` is replaced only if it is still as
    roidask wrote it when the new one is committed; without, never."""
    out = roidask_folder(tmp_path / "out")
    with pytest.raises(OutputError, match=r"holds 1 file\(s\) roidask did not write.*left as"):
        with OutputFolder(out, kind="subject-results", overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
            (out / "notes.txt").write_text("mine")
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "a.txt").read_text() == "a.txt by roidask\n"
    (out / "notes.txt").unlink()
    with pytest.raises(OutputExistsError, match=r"already exists; pass overwrite=True"):
        with OutputFolder(out, kind="subject-results", overwrite=False) as tmp:
            (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "a.txt by roidask\n"
    with OutputFolder(out, kind="subject-results", overwrite=True) as tmp:  # as it wrote it
        (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("renameat2", [True, False])
def test_a_file_created_meanwhile_is_never_replaced_without_overwrite(
    tmp_path, monkeypatch, renameat2
):
    if not renameat2:  # then a hard link, which fails where the file exists
        monkeypatch.setattr(_atomic, "_rename2", lambda a, b, flags: False)
    path = tmp_path / "f.tsv"
    with pytest.raises(OutputExistsError, match=r"f.tsv: created by another process"):
        with atomic_file(path, overwrite=False) as tmp:
            tmp.write_text("roidask")
            path.write_text("precious")
    assert path.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["f.tsv"]
    checked = []
    with atomic_file(path, check=lambda: checked.append(path.read_text())) as tmp:
        tmp.write_text("two")
    assert checked == ["precious"] and path.read_text() == "two"


_PROBES = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)  # a probe (check_not_held), held here for 0.2 s
print("probing", flush=True)
time.sleep(0.2)
"""


def test_a_folder_lock_waits_out_another_command_s_probe(tmp_path):
    # a batch starting while a `run` probed its folder failed: "another roidask command
    # is writing it"
    import subprocess
    import sys

    probe = subprocess.Popen([sys.executable, "-c", _PROBES, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert probe.stdout is not None and probe.stdout.readline().strip() == "probing"
        with FolderLock(tmp_path, param="out"):
            pass
    finally:
        probe.kill()
        probe.wait()
    with locked_by_another_process(tmp_path), pytest.raises(OutputError, match="another roidask"):
        FolderLock(tmp_path, param="out")  # held for good: refused
