"""convert, info and run with s3:// inputs and outputs (issue 18), against a moto S3 server
on loopback: results bit-identical to the same commands on local files, the on-disk
guarantees on S3 (marker last, foreign objects refused, a killed upload rewritten), and the
one-line errors for a missing bucket or object, denied access and an unreachable endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import helpers.s3 as s3_helpers
import nibabel as nib
import numpy as np
import obstore
import pytest
import zarr
from helpers.files import same_size_edit, write_bold
from helpers.results import DATA_FILES
from helpers.threads import at_once
from obstore.store import S3Store

from roidask.cli import main
from roidask.exceptions import IncompleteStoreError, OutputError, OutputExistsError

# one moto server for this module's tests
s3_server = s3_helpers.s3_server
s3_bucket = s3_helpers.s3_bucket

RUN_OPTIONS = ("--no-plots", "--quiet")


def run_args(bold, labels, mask, out) -> list[str]:
    """``roidask run`` arguments (NIfTI, labels, mask, output: paths or URLs)."""
    return ["run", str(bold), "--labels", str(labels), "--mask", str(mask), "--out", str(out),
            *RUN_OPTIONS]  # fmt: skip


def _store(url: str) -> S3Store:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return S3Store(bucket, prefix=prefix or None)


def put_files(url: str, files: dict[str, Path | bytes]) -> dict[str, str]:
    """Upload files to ``url/name``; return name -> URL."""
    store = _store(url)
    for name, src in files.items():
        obstore.put(store, name, src if isinstance(src, bytes) else Path(src).read_bytes())
    return {name: f"{url}/{name}" for name in files}


def objects(url: str) -> dict[str, bytes]:
    """Every object under ``url``: relative key -> bytes."""
    store = _store(url)
    keys = [m["path"] for page in obstore.list(store) for m in page]
    return {k: bytes(obstore.get(store, k).bytes()) for k in keys}


def local_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def inputs(haxby, s3_bucket):
    """The Haxby slice in S3: name -> s3:// URL."""
    return put_files(
        f"{s3_bucket}/in",
        {"bold.nii.gz": haxby.bold, "labels.txt": haxby.labels, "mask.nii.gz": haxby.mask},
    )


def status(argv: list[str]) -> int:
    """``main(argv)``'s exit status, argparse's errors included (it exits)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def error_of(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


# -- convert and info -----------------------------------------------------------------------
def test_convert_to_and_from_s3_is_bit_identical(haxby, inputs, s3_bucket, tmp_path, capsys):
    local = tmp_path / "local.zarr"
    common = ["--subject", "sub-01", "--chunks", "x=20,time=300", "--quiet"]
    assert (
        main(
            [
                "convert",
                str(haxby.bold),
                "--labels",
                str(haxby.labels),
                "--out",
                str(local),
                "--mask",
                str(haxby.mask),
                *common,
            ]
        )
        == 0
    )
    remote = f"{s3_bucket}/study.zarr"
    assert (
        main(
            [
                "convert",
                inputs["bold.nii.gz"],
                "--labels",
                inputs["labels.txt"],
                "--out",
                remote,
                "--mask",
                inputs["mask.nii.gz"],
                *common,
            ]
        )
        == 0
    )
    there, here = objects(remote), local_files(local)
    assert sorted(there) == sorted(here)
    chunks = [k for k in here if "/c/" in k]
    assert chunks and all(there[k] == here[k] for k in chunks)  # every chunk, bit for bit
    root = json.loads(there["zarr.json"])
    assert root["attributes"]["roidask_store"] == 2
    assert root["consolidated_metadata"]["metadata"]["sub-01"]["attributes"]["roidask_complete"]

    # info and info --verify read the store in S3
    capsys.readouterr()
    assert main(["info", str(local)]) == 0
    described = capsys.readouterr().out
    assert main(["info", remote]) == 0
    assert capsys.readouterr().out == described.replace(str(local), remote)
    assert "40x20x1x1452" in described
    assert main(["info", "--verify", remote]) == 0
    assert "passes its checksum" in capsys.readouterr().out

    # a second subject is added and the root re-consolidated; a damaged chunk is found
    assert (
        main(
            [
                "convert",
                inputs["bold.nii.gz"],
                "--labels",
                inputs["labels.txt"],
                "--out",
                remote,
                "--subject",
                "sub-02",
                "--quiet",
            ]
        )
        == 0
    )
    root = json.loads(objects(remote)["zarr.json"])
    assert {"sub-01", "sub-02"} <= set(root["consolidated_metadata"]["metadata"])
    key = "sub-01/bold/c/0/0/0/1"
    damaged = bytearray(here[key])
    damaged[len(damaged) // 2] ^= 0xFF
    obstore.put(_store(remote), key, bytes(damaged))
    capsys.readouterr()
    assert main(["info", "--verify", remote]) == 1
    assert "sub-01/bold/c/0/0/0/1: it fails its CRC-32C checksum" in capsys.readouterr().out


def test_convert_replaces_a_subject_in_s3_only_with_overwrite(inputs, s3_bucket, capsys):
    remote = f"{s3_bucket}/s.zarr"
    args = ["convert", inputs["bold.nii.gz"], "--labels", inputs["labels.txt"], "--out", remote]
    assert main([*args, "--chunks", "time=500", "--quiet"]) == 0
    before = objects(remote)
    capsys.readouterr()
    assert main([*args, "--quiet"]) == 2
    assert "already holds subject 'sub-01'" in error_of(capsys)
    assert objects(remote) == before
    # replaced with other chunks: the old chunks roidask wrote are gone, nothing else
    obstore.put(_store(remote), "notes.txt", b"mine")
    assert main([*args, "--chunks", "time=1000", "--overwrite", "--quiet"]) == 0
    after = objects(remote)
    assert after["notes.txt"] == b"mine"
    assert "sub-01/bold/c/0/0/0/2" in before and "sub-01/bold/c/0/0/0/2" not in after
    assert "sub-01/bold/c/0/0/0/1" in after
    # a foreign object inside the subject is refused, before anything is written
    obstore.put(_store(remote), "sub-01/bold/mine.txt", b"mine")
    capsys.readouterr()
    assert main([*args, "--overwrite", "--quiet"]) == 2
    assert "objects roidask did not write (bold/mine.txt)" in error_of(capsys)


def test_a_users_nested_objects_in_an_s3_subject_are_refused(inputs, s3_bucket, capsys):
    remote = f"{s3_bucket}/s.zarr"
    args = ["convert", inputs["bold.nii.gz"], "--labels", inputs["labels.txt"], "--out", remote]
    assert main([*args, "--quiet"]) == 0
    obstore.put(_store(remote), "sub-01/derived/myres/zarr.json", b"{}")
    obstore.put(_store(remote), "sub-01/derived/myres/c/0", b"0")
    capsys.readouterr()
    assert main([*args, "--overwrite", "--quiet"]) == 2
    assert (
        "objects roidask did not write (derived/myres/c/0, derived/myres/zarr.json)"
        in error_of(capsys)
    )
    assert objects(remote)["sub-01/derived/myres/c/0"] == b"0"


def test_a_killed_upload_to_s3_is_reported_and_redone(s3_bucket, tmp_path, monkeypatch, capsys):
    """A convert killed while it uploads a subject leaves chunks and its pending marker:
    info --verify names the subject, and the next convert (no --overwrite needed: the
    subject was never complete) rewrites it; its marker is gone after."""
    from roidask.io import convert, list_subjects, open_subject
    from roidask.io import store_write as store_mod
    from roidask.io.locations import S3Path, left_incomplete

    bold = write_bold(tmp_path / "bold.nii.gz", 6)
    labels = tmp_path / "labels.txt"
    labels.write_text("labels chunks\n" + "face 0\nhouse 0\n" * 3)
    remote = f"{s3_bucket}/k.zarr"
    real = store_mod.put_files

    def killed(root, dest, names):
        real(root, dest, list(names)[:2])
        raise KeyboardInterrupt  # as a SIGKILL: nothing cleaned after

    monkeypatch.setattr(store_mod, "put_files", killed)
    with pytest.raises(KeyboardInterrupt):
        convert(bold, labels=labels, out=remote, subject="sA", chunks="time=2")
    monkeypatch.undo()
    assert "sA/.roidask.json" in objects(remote)
    subject = S3Path.from_url(f"{remote}/sA")
    assert subject in left_incomplete()  # what an interrupted command's last line names
    assert main(["info", "--verify", remote]) == 1
    assert "sA/.roidask.json: left by a convert killed while it uploaded it" in (
        capsys.readouterr().out
    )
    killed = r"subject 'sA' was not completely written \(a convert was killed while it upl"
    with pytest.raises(IncompleteStoreError, match=rf"^store s3://.*: {killed}"):
        open_subject(remote, "sA")  # not "no subject 'sA'": it has no zarr.json yet
    convert(bold, labels=labels, out=remote, subject="sA", chunks="time=2")
    assert list_subjects(remote) == ["sA"] and subject not in left_incomplete()
    assert "sA/.roidask.json" not in objects(remote)
    assert main(["info", "--verify", remote]) == 0


@pytest.mark.parametrize("killed", ["objects put", "group put", "root rewritten"])
def test_a_killed_overwrite_in_s3_is_rewritten_by_the_next_convert(
    s3_bucket, tmp_path, monkeypatch, capsys, killed
):
    """``convert --overwrite`` onto another grid and other chunks, killed once it has put the
    new arrays' zarr.json (which differ from the root's record of the old subject), or the
    group's too (the root not yet rewritten): what the pending marker lists is roidask's
    upload, not a user's edit. info names the killed upload (not an edit; --verify reads
    none of its chunks, half old, half new), run --store's advice works, and the next
    convert, with or without --overwrite, replaces the subject; an object of the user's in
    it is still refused. Killed once the root lists the new subject (only its marker left
    to delete), the subject is published and whole: replacing it needs --overwrite."""
    from roidask.io import convert, list_subjects, open_subject
    from roidask.io import store_write as store_mod

    labels = tmp_path / "labels.txt"
    labels.write_text("labels chunks\n" + "face 0\nhouse 0\n" * 3)
    old = write_bold(tmp_path / "old.nii.gz", 6)
    new = write_bold(tmp_path / "new.nii.gz", 6, shape=(3, 4, 2), seed=1)
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 2), np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])), mask)
    remote = f"{s3_bucket}/k.zarr"
    convert(old, labels=labels, out=remote, subject="sA", chunks="time=2")
    convert(old, labels=labels, out=remote, subject="sB", chunks="time=2")
    if killed == "objects put":  # as a SIGKILL once the new arrays' zarr.json are put, not
        real = store_mod.put_files  # yet the new BOLD chunks (the old ones do not fit them)

        def kill(root, dest, names):
            real(root, dest, [n for n in names if "/bold/c/" not in n])
            raise KeyboardInterrupt

        monkeypatch.setattr(store_mod, "put_files", kill)
    elif killed == "group put":  # as a SIGKILL before the root's last rewrite
        calls = []

        def kill(path):
            calls.extend([path] if str(path).startswith("s3://") else [])  # not the local copy
            if len(calls) == 2:  # the first unpublished the old subject
                raise KeyboardInterrupt
            real(path)

        real = store_mod.consolidate
        monkeypatch.setattr(store_mod, "consolidate", kill)
    else:  # as a SIGKILL before the pending marker is deleted

        def kill(dest, names):
            if ".roidask.json" in names:
                raise KeyboardInterrupt
            real(dest, names)

        real = store_mod.delete_prefix_keys
        monkeypatch.setattr(store_mod, "delete_prefix_keys", kill)
    with pytest.raises(KeyboardInterrupt):
        convert(new, labels=labels, out=remote, subject="sA", chunks="time=3", overwrite=True)
    monkeypatch.undo()
    there = objects(remote)
    assert json.loads(there["sA/bold/zarr.json"])["shape"] == [3, 4, 2, 6]  # the new one's
    assert "sA/.roidask.json" in there
    args = ["run", "--store", remote, "--subject", "sA", "--mask", str(mask),
            "--out", str(tmp_path / "o"), "--threshold", "0.5", *RUN_OPTIONS]  # fmt: skip
    capsys.readouterr()
    if killed == "root rewritten":  # published: as any subject
        assert main(["info", "--verify", remote]) == 0
        with pytest.raises(OutputExistsError, match="already holds subject 'sA'"):
            convert(new, labels=labels, out=remote, subject="sA", chunks="time=3")
        convert(new, labels=labels, out=remote, subject="sA", chunks="time=3", overwrite=True)
        assert "sA/.roidask.json" not in objects(remote)
        assert main(args) == 0
        return
    assert main(["info", remote]) == 1
    out = capsys.readouterr().out
    assert "edited?" not in out
    assert "damaged: sA/.roidask.json: left by a convert killed while it uploaded it" in out
    assert main(["info", "--verify", remote]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"store {remote}: 1 damaged metadata or marker object(s)",
        "  sA/.roidask.json: left by a convert killed while it uploaded it; convert it again",
    ]
    if killed == "objects put":
        assert main(args) == 2
        assert error_of(capsys).endswith(
            "(interrupted conversion?); convert it again with --overwrite"
        )
    # a user's object in the subject, outside what the marker lists, is still refused
    obstore.put(_store(remote), "sA/mine/zarr.json", b"{}")
    with pytest.raises(OutputError, match=r"holds objects roidask did not write \(mine/zarr"):
        convert(new, labels=labels, out=remote, subject="sA", chunks="time=3", overwrite=True)
    obstore.delete(_store(remote), "sA/mine/zarr.json")
    # the advice works, and so does a convert without --overwrite (the upload was killed)
    overwrite = killed == "objects put"
    convert(new, labels=labels, out=remote, subject="sA", chunks="time=3", overwrite=overwrite)
    assert list_subjects(remote) == ["sA", "sB"]
    assert open_subject(remote, "sA")["bold"].shape == (3, 4, 2, 6)
    assert "sA/.roidask.json" not in objects(remote)
    assert main(["info", "--verify", remote]) == 0
    assert main(args) == 0


def test_local_copies_a_killed_command_left_in_tmpdir_are_removed_by_the_next(
    s3_bucket, tmp_path, monkeypatch
):
    """The local copy of what goes to S3 (a converted subject, an output folder) is a locked
    folder in $TMPDIR: a SIGKILLed command's (unlocked) is removed by the next command that
    makes one, a running command's (locked) never; the next command's own is gone after."""
    import tempfile

    from helpers.files import locked_by_another_process

    from roidask.io import convert

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    killed = scratch / ".roidask-convert.roidask-tmp-999999-0123abcd"
    running = scratch / ".roidask-convert.roidask-tmp-999998-4567cdef"
    for folder in (killed, running):
        (folder / "store.zarr").mkdir(parents=True)
    bold = write_bold(tmp_path / "bold.nii.gz", 6)
    labels = tmp_path / "labels.txt"
    labels.write_text("labels chunks\n" + "face 0\nhouse 0\n" * 3)
    with locked_by_another_process(running):
        convert(bold, labels=labels, out=f"{s3_bucket}/s.zarr")
    assert sorted(p.name for p in scratch.iterdir()) == [running.name]


def test_converts_into_one_s3_store_at_once_keep_every_subject(s3_bucket, tmp_path, monkeypatch):
    from roidask.io import convert, list_subjects
    from roidask.io import store_write as store_mod

    bold = write_bold(tmp_path / "bold.nii.gz", 6)
    labels = tmp_path / "labels.txt"
    labels.write_text("labels chunks\n" + "face 0\nhouse 0\n" * 3)
    remote = f"{s3_bucket}/s.zarr"
    calls = [lambda i=i: convert(bold, labels=labels, out=remote, subject=f"sub-{i}")
             for i in range(3)]  # fmt: skip
    # all converted locally before any publishes: they take turns (the store's lease)
    results = at_once(monkeypatch, store_mod, "_mark_complete", calls)
    assert [str(r) for r in results] == [remote] * 3, [repr(r) for r in results]
    root = json.loads(objects(remote)["zarr.json"])
    listed = sorted(k for k in root["consolidated_metadata"]["metadata"] if "/" not in k)
    assert listed == list_subjects(remote) == ["sub-0", "sub-1", "sub-2"]
    assert ".s.zarr.roidask-lease" not in objects(s3_bucket)

    # the same subject twice at once: one is written, the other refused
    calls = [lambda: convert(bold, labels=labels, out=remote, subject="sub-9")] * 2
    results = at_once(monkeypatch, store_mod, "_mark_complete", calls)
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 1 and [str(r) for r in results if r not in refused] == [remote]
    assert "already holds subject 'sub-9' (written meanwhile by another convert)" in str(
        refused[0]
    )
    assert list_subjects(remote) == ["sub-0", "sub-1", "sub-2", "sub-9"]

    # another subject's upload in progress does not hold this one up (only the root's
    # rewrite takes turns)
    from roidask.io.locations import RemoteLease, S3Path

    store = S3Path.from_url(remote)
    with RemoteLease(store, param="out", part="sub-5"):  # sub-5 being uploaded
        done = threading.Thread(
            target=convert, args=(bold,), kwargs=dict(labels=labels, out=remote, subject="sub-6")
        )
        done.start()
        done.join(timeout=60)
        assert not done.is_alive()
    assert "sub-6" in list_subjects(remote)


# -- run ------------------------------------------------------------------------------------
def _results_match(remote: str, local: Path) -> None:
    there, here = objects(remote), local_files(local)
    assert sorted(there) == sorted(here)
    for name in DATA_FILES:
        assert there[name] == here[name], name
    for name in here:
        if name.startswith("results.zarr/") and "/c/" in name:
            assert there[name] == here[name], name
    marker = json.loads(there[".roidask.json"])
    assert marker["written_by"] == "roidask" and marker["kind"] == "subject-results"
    assert set(marker["files"]) == set(here) - {".roidask.json"}


def test_run_with_s3_inputs_and_output_matches_local(haxby, inputs, s3_bucket, tmp_path):
    local = tmp_path / "out"
    assert main(run_args(str(haxby.bold), str(haxby.labels), str(haxby.mask), str(local))) == 0
    remote = f"{s3_bucket}/results/sub-01"
    assert (
        main(run_args(inputs["bold.nii.gz"], inputs["labels.txt"], inputs["mask.nii.gz"], remote))
        == 0
    )
    _results_match(remote, local)
    provenance = json.loads(objects(remote)["provenance.json"])
    records = {r["path"]: r for r in provenance["inputs"]}
    assert records[inputs["bold.nii.gz"]]["bytes"] == haxby.bold.stat().st_size
    assert records[inputs["bold.nii.gz"]]["etag"]  # fingerprinted without a download
    # its results.zarr described and verified where it is
    assert main(["info", f"{remote}/results.zarr"]) == 0
    assert main(["info", "--verify", f"{remote}/results.zarr"]) == 0


def test_run_on_a_store_in_s3_matches_local(haxby, inputs, s3_bucket, tmp_path):
    store = f"{s3_bucket}/s.zarr"
    assert (
        main(
            [
                "convert",
                inputs["bold.nii.gz"],
                "--labels",
                inputs["labels.txt"],
                "--out",
                store,
                "--chunks",
                "time=400",
                "--quiet",
            ]
        )
        == 0
    )
    local = tmp_path / "out"
    assert main(run_args(str(haxby.bold), str(haxby.labels), str(haxby.mask), str(local))) == 0
    remote = f"{s3_bucket}/from-store"
    assert (
        main(
            [
                "run",
                "--store",
                store,
                "--mask",
                inputs["mask.nii.gz"],
                "--out",
                remote,
                *RUN_OPTIONS,
            ]
        )
        == 0
    )
    _results_match(remote, local)


def test_run_output_in_s3_keeps_the_disk_guarantees(haxby, inputs, s3_bucket, capsys):
    out = f"{s3_bucket}/res"
    args = run_args(inputs["bold.nii.gz"], inputs["labels.txt"], inputs["mask.nii.gz"], out)
    # a prefix holding someone's objects is refused, before any voxel is read
    obstore.put(_store(out), "mine.txt", b"mine")
    assert main(args) == 2
    assert "was not written by roidask (no .roidask.json)" in error_of(capsys)
    obstore.delete(_store(out), "mine.txt")
    assert main(args) == 0
    first = objects(out)
    # replacing needs --overwrite; an object added since is refused, never deleted
    capsys.readouterr()
    assert main(args) == 2
    assert "already exists; add --overwrite" in error_of(capsys)
    obstore.put(_store(out), "figures/mine.png", b"mine")
    assert main([*args, "--overwrite"]) == 2
    assert "object(s) roidask did not write, or changed since (figures/mine.png)" in error_of(
        capsys
    )
    obstore.delete(_store(out), "figures/mine.png")
    # an object of roidask's that a user changed since (another size) is theirs: refused
    obstore.put(_store(out), "rois.tsv", first["rois.tsv"] + b"my note\n")
    assert main([*args, "--overwrite"]) == 2
    assert "changed since (rois.tsv (changed))" in error_of(capsys)
    # ... or the same size (a cell fixed; its ETag, in the listing, is another), and a map
    # replaced by one of the same size, put in parts (as roidask puts files over 16 MiB)
    edited = {"rois.tsv": same_size_edit(first["rois.tsv"]),
              "tstat.nii.gz": same_size_edit(first["tstat.nii.gz"])}  # fmt: skip
    for name, data in edited.items():
        obstore.put(_store(out), name, data, use_multipart=name == "tstat.nii.gz")
    assert main([*args, "--overwrite"]) == 2
    assert "changed since (rois.tsv (changed), tstat.nii.gz (changed))" in error_of(capsys)
    now = objects(out)
    assert {k: now[k] for k in edited} == edited  # left as they are
    for name in edited:
        obstore.put(_store(out), name, first[name])
    # a killed upload: pending marker, some objects; the rerun completes it without --overwrite
    store = _store(out)
    obstore.delete(store, [k for k in first if k not in ("rois.tsv", ".roidask.json")])
    pending = {
        "written_by": "roidask",
        "kind": "subject-results",
        "complete": False,
        "files": sorted(first),
    }
    obstore.put(store, ".roidask.json", json.dumps(pending).encode())
    assert main(args) == 0
    again = objects(out)
    assert sorted(again) == sorted(first)
    assert json.loads(again[".roidask.json"]).get("complete", True) is True


@pytest.mark.parametrize("overwrite", [False, True])
def test_objects_put_at_an_s3_output_while_the_run_ran_are_kept(
    haxby, inputs, s3_bucket, overwrite
):
    """The prefix was empty when checked; objects put there before the upload commits (a
    user's, or another run's output completed meanwhile) are never replaced."""
    from roidask.exceptions import OutputError
    from roidask.pipeline import PipelineParams
    from roidask.runner import run_subject

    out = f"{s3_bucket}/res"
    calls = []

    def user_puts_objects():  # the second call: under the prefix's lease, before the upload
        calls.append(len(calls))
        if len(calls) == 2:
            obstore.put(_store(out), "signals.tsv", b"mine")

    with pytest.raises(OutputError, match=r"created or changed while this command ran"):
        run_subject(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                    mask=haxby.mask, out=out, params=PipelineParams(), plots=False,
                    overwrite=overwrite, before_write=user_puts_objects)  # fmt: skip
    assert calls == [0, 1] and objects(out) == {"signals.tsv": b"mine"}


def test_publishing_puts_the_marker_last_and_deletes_only_listed_objects(s3_bucket, tmp_path):
    from roidask.io.locations import S3Path, publish_folder

    local = tmp_path / "f"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("a")
    (local / "sub" / "b.txt").write_text("b")
    marker = {"written_by": "roidask", "kind": "k", "files": ["a.txt", "sub/b.txt"]}
    (local / ".roidask.json").write_text(json.dumps(marker))
    dest = S3Path.from_url(f"{s3_bucket}/f")
    old = {"written_by": "roidask", "kind": "k", "files": ["a.txt", "old.txt"]}
    put_files(
        dest.url, {"old.txt": b"o", "a.txt": b"x", ".roidask.json": json.dumps(old).encode()}
    )
    order = []
    real_put = obstore.put

    def put(store, key, data, *args, **kwargs):
        data = data.read() if hasattr(data, "read") else data
        order.append((key, json.loads(data) if key.endswith(".roidask.json") else None))
        return real_put(store, key, data, *args, **kwargs)

    obstore.put = put
    try:
        publish_folder(local, dest)
    finally:
        obstore.put = real_put
    # the upload holds the prefix's lease (beside it) from first to last, then deletes it
    assert order[0][0] == ".f.roidask-lease"
    assert ".f.roidask-lease" not in objects(s3_bucket)
    order = [(key, record) for key, record in order if not key.endswith(".roidask-lease")]
    markers = [(i, record) for i, (key, record) in enumerate(order) if record is not None]
    # first a pending marker claiming the old and the new objects, the real one last
    assert [i for i, _ in markers] == [0, len(order) - 1]
    assert markers[0][1]["complete"] is False
    assert markers[0][1]["files"] == ["a.txt", "old.txt", "sub/b.txt"]
    assert json.loads(objects(dest.url)[".roidask.json"]) == marker
    assert sorted(objects(dest.url)) == [".roidask.json", "a.txt", "sub/b.txt"]


def test_an_overwrite_cut_short_is_no_mix_and_every_reader_refuses_it(
    haxby, s3_bucket, tmp_path, monkeypatch, capsys
):
    """A run --overwrite to S3 interrupted while it uploads (as Ctrl-C or a kill: nothing
    cleaned after) leaves no object of the old output, only new ones, and no store plain
    xarray opens; its last line says the prefix is left incomplete; every roidask reader
    refuses it in one line (info exits 1, export 2); the rerun, no --overwrite needed,
    writes what a clean run does."""
    import xarray as xr

    from roidask.exceptions import IncompleteOutputError
    from roidask.io import as_image, open_map, open_subject
    from roidask.io.locations import zarr_store

    out = f"{s3_bucket}/res"
    args = run_args(haxby.bold, haxby.labels, haxby.mask, out)
    assert main(args) == 0  # the old output
    old = objects(out)
    again = ["--threshold", "2", "--clip", "3"]  # other maps, another number of ROIs
    local = tmp_path / "clean"  # the new output, as a clean run writes it
    assert main([*run_args(haxby.bold, haxby.labels, haxby.mask, local), *again]) == 0
    new = local_files(local)
    put, real_put, lock = [], obstore.put, threading.Lock()

    def cut(store, key, data, *a, **kw):  # the 4th object of the output, and what follows
        name = key.removeprefix("res/")
        if name != key and name != ".roidask.json" and not name.startswith(".roidask-probe"):
            with lock:  # one at a time (puts run in threads): none in flight when cut
                if len(put) >= 3:
                    raise KeyboardInterrupt
                put.append(name)
                return real_put(store, key, data, *a, **kw)
        return real_put(store, key, data, *a, **kw)

    monkeypatch.setattr(obstore, "put", cut)
    capsys.readouterr()
    assert main([*args, "--overwrite", *again]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        f"roidask: interrupted; {out}: left incomplete (marked so); rerun the command"
    ]
    monkeypatch.undo()
    left = objects(out)
    marker = json.loads(left.pop(".roidask.json"))
    assert marker["complete"] is False and set(old) - {".roidask.json"} <= set(marker["files"])
    # no old object is left: what is there is the 3 new objects put
    assert sorted(left) == sorted(put) and len(put) == 3
    for name, data in left.items():
        assert name == "provenance.json" or data == new[name], name
    with pytest.raises(Exception, match=r"[Nn]o group"):
        xr.open_zarr(zarr_store(f"{out}/results.zarr"))  # plain xarray: no store there
    incomplete = f"the roidask command writing {out} did not finish"
    for command in (["info"], ["info", "--verify"]):
        assert main([*command, f"{out}/results.zarr"]) == 1
        said = capsys.readouterr().out.strip().splitlines()
        assert len(said) == 1 and said[0].startswith(f"{out}/results.zarr: incomplete: ")
        assert incomplete in said[0] and said[0].endswith("rerun that command")
    export = tmp_path / "logp.nii.gz"
    for source in (["results.zarr", "--variable", "logp"], ["roi_mask.nii.gz"]):
        assert main(["export", f"{out}/{source[0]}", *source[1:], "--out", str(export)]) == 2
        assert incomplete in error_of(capsys)
    assert not export.exists()
    with pytest.raises(IncompleteOutputError, match=incomplete):
        open_map(f"{out}/results.zarr", variable="logp")
    with pytest.raises(IncompleteOutputError, match=incomplete):
        open_subject(f"{out}/results.zarr")  # before it is found not to be a BOLD store
    with pytest.raises(IncompleteOutputError, match=f"mask_img {out}/atlas.nii.gz: incomplete"):
        as_image(f"{out}/atlas.nii.gz", param="mask_img")
    assert main([*args, *again]) == 0  # rewritten: no --overwrite needed
    _results_match(out, local)
    assert main(["info", "--verify", f"{out}/results.zarr"]) == 0


# -- errors ---------------------------------------------------------------------------------
def test_missing_bucket_key_and_denied_access_are_one_line_errors(
    haxby, inputs, s3_server, s3_bucket, tmp_path, capsys
):
    out = tmp_path / "out"
    base = ["--labels", inputs["labels.txt"], "--mask", inputs["mask.nii.gz"]]
    assert main(["run", "s3://no-such-bucket-zz/bold.nii.gz", *base, "--out", str(out)]) == 2
    assert error_of(capsys).startswith(
        "roidask: error: s3://no-such-bucket-zz/bold.nii.gz: no such bucket "
        "'no-such-bucket-zz' (the server answered"
    )
    assert main(["run", f"{s3_bucket}/in/nope.nii.gz", *base, "--out", str(out)]) == 2
    line = error_of(capsys)
    assert f"error: {s3_bucket}/in/nope.nii.gz: no such NIfTI image" in line and "404" in line
    assert main(["info", f"{s3_bucket}/nothing.zarr"]) == 2
    assert "no such store" in error_of(capsys)
    assert (
        main(
            [
                "convert",
                inputs["bold.nii.gz"],
                "--labels",
                inputs["labels.txt"],
                "--out",
                "s3://no-such-bucket-zz/s.zarr",
                "--quiet",
            ]
        )
        == 2
    )
    assert error_of(capsys).startswith(
        "roidask: error: --out s3://no-such-bucket-zz/s.zarr: no such bucket 'no-such-bucket-zz'"
    )
    # a missing bucket of an output, a store or a mask is named by its flag
    assert main(run_args(inputs["bold.nii.gz"], inputs["labels.txt"], inputs["mask.nii.gz"],
                         "s3://no-such-bucket-zz/o1")) == 2  # fmt: skip
    assert error_of(capsys).startswith(
        "roidask: error: --out s3://no-such-bucket-zz/o1: no such bucket 'no-such-bucket-zz'"
    )
    assert main(["run", "--store", "s3://no-such-bucket-zz/s.zarr", *base[2:], "--out",
                 str(out)]) == 2  # fmt: skip
    assert error_of(capsys).startswith(
        "roidask: error: --store s3://no-such-bucket-zz/s.zarr: no such bucket "
    )
    assert main(["run", inputs["bold.nii.gz"], *base[:2], "--mask",
                 "s3://no-such-bucket-zz/m.nii.gz", "--out", str(out)]) == 2  # fmt: skip
    assert error_of(capsys).startswith(
        "roidask: error: --mask s3://no-such-bucket-zz/m.nii.gz: no such bucket "
    )
    # a missing mask says what was expected there
    assert main(["run", inputs["bold.nii.gz"], *base[:2], "--mask", f"{s3_bucket}/in/nope.nii.gz",
                 "--out", str(out)]) == 2  # fmt: skip
    assert error_of(capsys) == (
        f"roidask: error: --mask {s3_bucket}/in/nope.nii.gz: no such object or prefix; expected "
        "a .nii/.nii.gz file, a .nii.zarr image or a roidask zarr store"
    )
    assert not out.exists()

    # a bucket whose policy denies everything
    denied = s3_server.new_bucket("denied")
    put_files(denied, {"bold.nii.gz": haxby.bold})
    name = denied.removeprefix("s3://")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"],
            }
        ],
    }
    s3_server.client().put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
    assert main(["run", f"{denied}/bold.nii.gz", *base, "--out", str(out)]) == 2
    line = error_of(capsys)
    assert f"error: {denied}/bold.nii.gz: access denied (the server answered" in line
    assert "403" in line
    assert (
        main(
            run_args(
                inputs["bold.nii.gz"], inputs["labels.txt"], inputs["mask.nii.gz"], f"{denied}/out"
            )
        )
        == 2
    )
    assert f"--out {denied}/out: access denied" in error_of(capsys)
    assert not out.exists()


#: Runs ``roidask`` commands (a JSON list of argument lists) in a child process whose
#: ``socket.connect`` calls are recorded (an audit hook: Python's sockets, e.g. boto3's;
#: obstore's, in Rust, are not seen: they would reach the instance-metadata service of the
#: test below instead); prints the exit statuses and the hosts connected to, as JSON. With
#: a second argument ``no-boto3``, obstore's boto3 provider cannot be imported, as where
#: boto3 is not installed.
_AUDITED = """
import json, sys
if sys.argv[2:] == ["no-boto3"]:
    sys.modules["obstore.auth.boto3"] = None  # import fails with ImportError
hosts = []
def audit(event, args):
    if event == "socket.connect":
        address = args[1]
        hosts.append(address[0] if isinstance(address, tuple) else str(address))
sys.addaudithook(audit)
from roidask.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "hosts": hosts}))
"""


@pytest.mark.parametrize("metadata", ["disabled", "enabled", "no boto3"])
def test_without_credentials_requests_are_unsigned_and_go_nowhere_else(
    haxby, s3_server, tmp_path, metadata
):
    """No keys, no profile, and boto3's chain finds nothing (it asks the instance-metadata
    service unless AWS_EC2_METADATA_DISABLED), or boto3 is not installed: requests are
    sent unsigned, as a public bucket (OpenNeuro) wants, and obstore does not try the
    instance-metadata service (169.254.169.254) itself. Here that service is a local
    server that has no credentials and records who asks it, so nothing can leave
    127.0.0.1; an object of a private bucket is refused with a line saying that no
    credentials were found."""
    bucket = s3_server.new_bucket("anon")
    name = bucket.removeprefix("s3://")
    client = s3_server.client()
    for acl, folder in (("private", "private"), ("public-read", "public")):
        for key, path in (("bold.nii.gz", haxby.bold), ("labels.txt", haxby.labels),
                          ("mask.nii.gz", haxby.mask)):  # fmt: skip
            client.put_object(Bucket=name, Key=f"{folder}/{key}", Body=path.read_bytes(), ACL=acl)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    if metadata != "disabled":
        del env["AWS_EC2_METADATA_DISABLED"]
    commands = [
        run_args(
            f"{bucket}/{folder}/bold.nii.gz",
            f"{bucket}/{folder}/labels.txt",
            f"{bucket}/{folder}/mask.nii.gz",
            tmp_path / folder,
        )
        for folder in ("private", "public")
    ]
    with s3_helpers.recording_http_server() as (imds, asked):
        env["AWS_METADATA_ENDPOINT"] = env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds
        child = subprocess.run(
            [sys.executable, "-c", _AUDITED, json.dumps(commands), metadata.replace(" ", "-")],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.splitlines()[-1])
    assert result["codes"] == [2, 0], child.stderr
    why = "no AWS credentials were found" + (
        " (boto3, which finds those of SSO, roles and instances, is not installed)"
        if metadata == "no boto3"
        else ""
    )
    assert child.stderr.splitlines() == [
        f"roidask: error: {bucket}/private/bold.nii.gz: access denied (the server answered "
        f"403 Forbidden); {why}, so the request was sent unsigned, as to a public bucket; "
        "give credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in "
        "~/.aws, AWS_PROFILE, or boto3's chain: SSO, roles) or check the bucket's policy"
    ]
    assert (tmp_path / "public" / "signals.tsv").is_file()  # read unsigned
    # only boto3's chain asked the instance-metadata service (from Python, so its
    # connections were seen), and only if allowed to
    agents = [r.user_agent.split()[0] for r in asked]
    if metadata == "enabled":
        assert set(result["hosts"]) == {"127.0.0.1"}
        assert agents and all(a.startswith("Boto3/") for a in agents), agents
    else:
        assert result["hosts"] == [] and agents == []


def test_unreachable_endpoint_is_a_one_line_error(inputs, monkeypatch, tmp_path, capsys):
    closed = s3_helpers.free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    out = tmp_path / "out"
    assert (
        main(
            run_args(inputs["bold.nii.gz"], inputs["labels.txt"], inputs["mask.nii.gz"], str(out))
        )
        == 2
    )
    line = error_of(capsys)
    assert line == (
        f"roidask: error: {inputs['bold.nii.gz']}: cannot reach the S3 endpoint "
        f"http://127.0.0.1:{closed} (connection failed); check AWS_ENDPOINT_URL and the network"
    )
    assert not out.exists()


def test_a_url_that_s3_would_read_as_another_key_is_refused(
    haxby, inputs, s3_server, s3_bucket, capsys
):
    """``s3://b/dbl//bold.nii.gz`` and ``s3://b/dbl/bold.nii.gz`` are two objects: the first
    is refused (never read as the second), naming the URL as given and its flag, before
    anything is read or written; so is a key with a ``.`` or ``..`` segment."""
    name = s3_bucket.removeprefix("s3://")
    for key in ("dbl/bold.nii.gz", "dbl//bold.nii.gz"):  # (obstore cannot write the second)
        s3_server.client().put_object(Bucket=name, Key=key, Body=haxby.bold.read_bytes())
    base = ["--labels", inputs["labels.txt"], "--mask", inputs["mask.nii.gz"], *RUN_OPTIONS]
    out = f"{s3_bucket}/o"
    for bold, flag in ((f"{s3_bucket}/dbl//bold.nii.gz", "BOLD"),
                       (f"{s3_bucket}/dbl/./bold.nii.gz", "BOLD")):  # fmt: skip
        assert status(["run", bold, *base, "--out", out]) == 2
        line = error_of(capsys)
        assert line.startswith(f"roidask: error: {flag} {bold}: the key has "), line
    assert status(["run", inputs["bold.nii.gz"], *base, "--out", f"{s3_bucket}/a/../o"]) == 2
    assert error_of(capsys).startswith(
        f"roidask: error: --out {s3_bucket}/a/../o: the key has a '..' segment; S3 reads keys "
        "as written"
    )
    listed = s3_server.client().list_objects_v2(Bucket=name)["Contents"]  # (obstore cannot)
    assert not any(o["Key"].startswith(("o/", "a/", ".o.")) for o in listed)


def test_damage_in_a_store_in_s3_is_named_as_such(inputs, s3_bucket, tmp_path, capsys):
    """A subject whose group zarr.json was deleted: run --store says the store is damaged
    (not "no subject 'sub-01'; the store holds []") and where to see it; info says it is
    missing "in the bucket", and --verify counts it as a metadata object, not a chunk."""
    store = f"{s3_bucket}/s.zarr"
    assert main(["convert", inputs["bold.nii.gz"], "--labels", inputs["labels.txt"],
                 "--out", store, "--quiet"]) == 0  # fmt: skip
    obstore.delete(_store(store), "sub-01/zarr.json")
    capsys.readouterr()
    for subject in (["--subject", "sub-01"], []):
        args = ["run", "--store", store, *subject, "--mask", inputs["mask.nii.gz"],
                "--out", str(tmp_path / "o"), *RUN_OPTIONS]  # fmt: skip
        assert main(args) == 2
        assert error_of(capsys) == (
            f"roidask: error: --store {store}: the store is damaged: sub-01/zarr.json listed "
            "by the store's root but missing in the bucket; convert the subject again with "
            "--overwrite (roidask info --verify lists what is damaged)"
        )
    assert main(["info", store]) == 1
    want = "sub-01/zarr.json: listed by the store's root but missing in the bucket"
    assert f"damaged: {want}" in capsys.readouterr().out
    assert main(["info", "--verify", store]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"store {store}: 1 damaged metadata or marker object(s)",
        f"  {want}",
    ]


def test_info_on_an_incomplete_output_in_s3_says_so(haxby, inputs, s3_bucket, capsys):
    """An ``s3://`` output whose upload was killed (its marker is the pending one): info
    says it is incomplete, not that its results are in its results.zarr."""
    out = f"{s3_bucket}/res"
    assert main(run_args(inputs["bold.nii.gz"], inputs["labels.txt"], inputs["mask.nii.gz"],
                         out)) == 0  # fmt: skip
    pending = {"written_by": "roidask", "kind": "subject-results", "complete": False,
               "files": sorted(objects(out))}  # fmt: skip
    obstore.put(_store(out), ".roidask.json", json.dumps(pending).encode())
    capsys.readouterr()
    assert main(["info", out]) == 1
    assert capsys.readouterr().out == (
        f"{out}: incomplete: the roidask command writing {out} did not finish (killed, or "
        "still running: its .roidask.json says complete: false); rerun that command\n"
    )


def test_store_opened_from_s3_reads_like_local(haxby, inputs, s3_bucket, tmp_path):
    from roidask.io import convert, open_subject

    remote = f"{s3_bucket}/s.zarr"
    convert(inputs["bold.nii.gz"], labels=inputs["labels.txt"], out=remote, chunks={"time": 700})
    convert(haxby.bold, labels=haxby.labels, out=tmp_path / "s.zarr", chunks={"time": 700})
    a, b = open_subject(remote), open_subject(tmp_path / "s.zarr")
    np.testing.assert_array_equal(a["bold"].values, b["bold"].values)
    assert list(a["condition"].values) == list(b["condition"].values)
    assert isinstance(zarr.open_group(str(tmp_path / "s.zarr"), mode="r"), zarr.Group)


def test_a_subject_being_uploaded_meanwhile_gives_no_zarr_warning(s3_bucket, tmp_path):
    import warnings

    from roidask.io import convert, list_subjects

    bold = write_bold(tmp_path / "bold.nii.gz", 6)
    labels = tmp_path / "labels.txt"
    labels.write_text("labels chunks\n" + "face 0\nhouse 0\n" * 3)
    remote = f"{s3_bucket}/s.zarr"
    convert(bold, labels=labels, out=remote, subject="sub-1")
    # another convert's subject, its objects put, its zarr.json not yet
    obstore.put(_store(remote), "sub-2/bold/c/0/0/0/0", b"chunk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(bold, labels=labels, out=remote, subject="sub-3")
    assert list_subjects(remote) == ["sub-1", "sub-3"]
