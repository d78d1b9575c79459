"""The command line: convert and info, one-line errors without tracebacks, and the
reliability of every command (issue 13): user files kept, damaged stores refused, bad inputs
refused before anything is written, killed commands cleaned up."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from unittest.mock import ANY

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from helpers.files import (
    damage_chunk,
    format1_store,
    same_size_edit,
    tree,
    write_bold,
    write_events,
    write_image,
    write_manifest,
)
from helpers.lazy import voxel_reads
from helpers.privileges import roidask_cmd, run_unprivileged

from roidask.cli import main
from roidask.io import open_subject
from roidask.outputs.study import prepare_study, publish, write_node


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "roidask.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_convert_and_info(haxby, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    rc = main(
        [
            "convert",
            str(haxby.bold),
            "--labels",
            str(haxby.labels),
            "--out",
            str(store),
            "--subject",
            "subj1",
            "--chunks",
            "x=10,time=500",
            "--mask",
            str(haxby.mask),
        ]
    )
    assert rc == 0
    ds = open_subject(store, "subj1")
    assert ds["bold"].chunks[0] == (10, 10, 10, 10)
    assert "mask" in ds
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "subj1" in out and "40x20x1x1452 int16" in out
    assert "face (108)" in out and "rest (588)" in out and "runs: 12" in out


def test_errors_are_one_line_without_traceback(haxby, tmp_path):
    store = tmp_path / "s.zarr"
    short = tmp_path / "labels.txt"
    short.write_text("labels chunks\nface 0\n")
    proc = run_cli("convert", haxby.bold, "--labels", short, "--out", store)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("roidask: error:")]
    assert len(lines) == 1 and "1 label rows but the BOLD data has 1452 volumes" in lines[0]
    assert not store.exists()


def test_existing_store_needs_overwrite(haxby, tmp_path):
    store = tmp_path / "s.zarr"
    assert (
        main(
            [
                "convert",
                str(haxby.bold),
                "--labels",
                str(haxby.labels),
                "--out",
                str(store),
                "--quiet",
            ]
        )
        == 0
    )
    proc = run_cli("convert", haxby.bold, "--labels", haxby.labels, "--out", store)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    proc = run_cli(
        "convert",
        haxby.bold,
        "--labels",
        haxby.labels,
        "--out",
        store,
        "--overwrite",
        "--tr",
        "2.0",
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(open_subject(store)["time"].values[:3], [0.0, 2.0, 4.0])


def test_cli_limits_malloc_arenas(monkeypatch):
    import sys

    from roidask._malloc import limit_malloc_arenas

    if sys.platform.startswith("linux"):
        assert limit_malloc_arenas() is True  # glibc's mallopt accepted the setting
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the user's own setting wins


# ============================================================================================
# Reliability (issue 13): nothing of the user's is ever deleted, damaged stores are never read
# as whole, every bad input is one line (exit 2) before anything is written or read.
# ============================================================================================
CHUNK = "c/0/0/0/3"  # volumes 300-399 of the Haxby slice, chunked by 100 volumes


def cli(capsys, *args):
    """``roidask ARGS`` in this process: (exit status, stdout, stderr)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's errors
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error(stderr: str) -> str:
    """The one ``roidask: error:`` line of ``stderr`` (and nothing else), without its prefix."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roidask: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0].removeprefix("roidask: error: ")


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def copy_haxby(haxby, folder):
    """``folder``, made to hold a copy of the Haxby slice's bold, labels and mask."""
    folder.mkdir(parents=True)
    for src in (haxby.bold, haxby.labels, haxby.mask):
        shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture
def data(haxby, tmp_path):
    """A folder of the user's: the Haxby slice's bold, labels and mask."""
    return copy_haxby(haxby, tmp_path / "data")


def run_args(data, out, *extra):
    return [
        "run",
        data / "bold.nii.gz",
        "--labels",
        data / "labels.txt",
        "--mask",
        data / "mask.nii.gz",
        "--out",
        out,
        "--quiet",
        *extra,
    ]


def convert_args(data, out, *extra):
    return [
        "convert",
        data / "bold.nii.gz",
        "--labels",
        data / "labels.txt",
        "--out",
        out,
        "--quiet",
        *extra,
    ]


def batch_args(data, out, *extra):
    manifest = write_manifest(
        data.parent / "manifest.tsv",
        [("sub-01", data / "bold.nii.gz", data / "labels.txt", data / "mask.nii.gz")],
    )
    return ["batch", manifest, "--out", out, "--quiet", "--no-plots", *extra]


ARGS = {"run": run_args, "convert": convert_args, "batch": batch_args}


# -- 1. --overwrite never deletes what roidask did not write ----------------------------------
@pytest.mark.parametrize("command", ["run", "convert", "batch"])
def test_overwrite_on_the_input_folder_is_refused(data, capsys, command):
    before = tree(data)
    extra = ["--overwrite"] if command != "batch" else []
    rc, _, err = cli(capsys, *ARGS[command](data, data, *extra))
    assert rc == 2
    line = one_error(err)
    assert (
        line
        == {
            "run": f"--out {data}: contains the input {data}/bold.nii.gz; roidask never writes "
            "over its inputs, choose another output",
            "convert": f"--out {data}: exists and is not a roidask store; roidask only adds "
            "subjects to its own stores, choose another output",
            "batch": f"--out {data}: exists and is not a roidask batch folder (no .roidask.json); "
            "choose an empty or new folder",
        }[command]
    )
    assert tree(data) == before


@pytest.mark.parametrize("command", ["run", "convert", "batch"])
def test_overwrite_on_a_foreign_folder_is_refused(data, tmp_path, capsys, command):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    before = tree(tmp_path)
    extra = ["--overwrite"] if command != "batch" else []
    rc, _, err = cli(capsys, *ARGS[command](data, mine, *extra))
    assert rc == 2
    assert one_error(err).startswith(f"--out {mine}: exists and ")
    assert tree(tmp_path) == {**before, **({"manifest.tsv": ANY} if command == "batch" else {})}
    assert (mine / "notes.txt").read_text() == "my notes\n"


def test_run_overwrite_replaces_its_own_folder(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, *run_args(data, out, "--no-plots"))[0] == 0
    assert cli(capsys, *run_args(data, out, "--no-plots", "--fwhm", "4"))[0] == 2  # exists
    rc, _, err = cli(capsys, *run_args(data, out, "--no-plots", "--fwhm", "4", "--overwrite"))
    assert rc == 0, err
    assert json.loads((out / "provenance.json").read_text())["parameters"]["fwhm"] == 4.0
    assert hidden(tmp_path) == []


def test_run_overwrite_refuses_a_same_size_edit_and_replaces_a_copy(data, tmp_path, capsys):
    """A user's edit of roidask's file that keeps its size (a cell fixed in rois.tsv)
    makes it theirs: --overwrite refuses, nothing touched. A copy of the folder that did
    not keep the files' times (``cp -r``) is still roidask's: --overwrite replaces it."""
    out = tmp_path / "out"
    assert cli(capsys, *run_args(data, out, "--no-plots"))[0] == 0
    copy = shutil.copytree(out, tmp_path / "copy", copy_function=shutil.copy)
    rois = out / "rois.tsv"
    rois.write_bytes(same_size_edit(rois.read_bytes()))
    before = tree(tmp_path)
    rc, _, err = cli(capsys, *run_args(data, out, "--no-plots", "--overwrite"))
    assert rc == 2
    assert one_error(err).startswith(
        f"--out {out}: holds 1 file(s) roidask did not write, or changed since "
        "(rois.tsv (changed)); "
    )
    assert tree(tmp_path) == before
    rc, _, err = cli(capsys, *run_args(data, copy, "--no-plots", "--fwhm", "4", "--overwrite"))
    assert rc == 0, err
    assert json.loads((copy / "provenance.json").read_text())["parameters"]["fwhm"] == 4.0


@pytest.mark.parametrize("command", ["run", "convert", "convert-chunk", "batch"])
def test_a_roidask_folder_holding_a_foreign_file_is_refused(data, tmp_path, capsys, command):
    """A user's file in what roidask would replace; also one named like a chunk that the
    array's inventory does not list (convert-chunk)."""
    from roidask._atomic import OutputFolder

    out = tmp_path / "out"
    if command == "convert-chunk":
        assert cli(capsys, *convert_args(data, out))[0] == 0
        notes = out / "sub-01" / "bold" / "c" / "0" / "0" / "0" / "9"
        want = (
            f"--out {out}: subject folder sub-01/ holds files roidask did not write "
            "(bold/c/0/0/0/9)"
        )
        command = "convert"
    elif command == "run":
        assert cli(capsys, *run_args(data, out, "--no-plots"))[0] == 0
        notes = out / "notes.txt"
        want = (
            f"--out {out}: holds 1 file(s) roidask did not write, or changed since (notes.txt); "
        )
    elif command == "convert":
        assert cli(capsys, *convert_args(data, out))[0] == 0
        notes = out / "sub-01" / "notes.txt"
        want = f"--out {out}: subject folder sub-01/ holds files roidask did not write (notes.txt)"
    else:  # a batch folder whose sub-01/ (roidask's) holds a file of the user's
        out.mkdir()
        (out / ".roidask.json").write_text(
            json.dumps({"written_by": "roidask", "kind": "batch", "files": []})
        )
        with OutputFolder(out / "sub-01", kind="subject-results") as tmp:
            (tmp / "rois.tsv").write_text("label\n")
        notes = out / "sub-01" / "notes.txt"
        want = (
            f"--out {out}/sub-01: holds 1 file(s) roidask did not write, or changed since "
            "(notes.txt); "
        )
    notes.write_text("my notes\n")
    before = tree(tmp_path)
    extra = ["--overwrite"] if command != "batch" else []
    rc, _, err = cli(capsys, *ARGS[command](data, out, *extra))
    assert rc == 2
    assert one_error(err).startswith(want)
    assert tree(tmp_path) == {**before, **({"manifest.tsv": ANY} if command == "batch" else {})}


# -- 2. damaged stores -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def haxby_store(haxby, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "haxby.zarr"
    assert (
        main(
            [
                "convert",
                str(haxby.bold),
                "--labels",
                str(haxby.labels),
                "--out",
                str(out),
                "--chunks",
                "time=100",
                "--quiet",
            ]
        )
        == 0
    )
    return out


@pytest.fixture
def store(haxby_store, tmp_path):
    return shutil.copytree(haxby_store, tmp_path / "haxby.zarr")


@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
def test_damaged_store_through_run(store, haxby, tmp_path, capsys, how):
    damage_chunk(store, f"sub-01/bold/{CHUNK}", how)
    out = tmp_path / "out"
    rc, stdout, err = cli(
        capsys,
        "run",
        "--store",
        store,
        "--mask",
        haxby.mask,
        "--out",
        out,
        "--quiet",
        "--no-plots",
    )
    assert rc == 2
    line = one_error(err)
    if how == "delete":
        assert line == (
            f"--store {store}: subject 'sub-01' is damaged: 1 chunk(s) missing (bold/{CHUNK}); "
            "convert the subject again"
        )
    else:
        assert line == (
            f"--store {store}: chunk {CHUNK} of sub-01/bold is damaged (it fails its CRC-32C "
            "checksum); the store cannot be trusted, convert the subject again (roidask info "
            "--verify lists every damaged chunk)"
        )
    assert "ROIs found" not in stdout
    assert not out.exists() and hidden(tmp_path) == []


@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
def test_damaged_store_through_info(store, capsys, how):
    damage_chunk(store, f"sub-01/bold/{CHUNK}", how)
    rc, out, _ = cli(capsys, "info", store)
    if how == "delete":  # the chunk inventory shows it without reading a chunk
        assert rc == 1
        assert f"  damaged: {store}: subject 'sub-01' is damaged: 1 chunk(s) missing " in out
    else:  # a describe reads no chunk: it says so
        assert rc == 0
        assert "40x20x1x1452 int16" in out and "not read here; --verify reads and checks" in out
    rc, out, _ = cli(capsys, "info", "--verify", store)
    assert rc == 1
    reason = "missing" if how == "delete" else "it fails its CRC-32C checksum"
    assert out.splitlines() == [
        f"store {store}: 1 damaged chunk(s)",
        f"  sub-01/bold/{CHUNK}: {reason}",
    ]


def _edit_json(path, edit):
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "how",
    ["subject folder removed", "zarr.json removed", "not complete", "bold shape", "no crc32c"],
)
def test_info_and_verify_report_what_the_root_lists_that_is_not_whole(store, capsys, how):
    """What the root's consolidated metadata lists (what plain xarray reads) and the disk
    does not hold as listed is damage: info and --verify name it (exit status 1)."""
    subject = store / "sub-01"
    if how == "subject folder removed":
        shutil.rmtree(subject)
        want = "sub-01/zarr.json: listed by the store's root but missing on disk"
    elif how == "zarr.json removed":
        (subject / "zarr.json").unlink()
        want = "sub-01/zarr.json: listed by the store's root but missing on disk"
    elif how == "not complete":
        _edit_json(subject / "zarr.json", lambda r: r["attributes"].pop("roidask_complete"))
        want = "sub-01/zarr.json: listed by the store's root as complete but not complete on disk"
    elif how == "bold shape":
        _edit_json(subject / "bold" / "zarr.json", lambda r: r.update(shape=[40, 20, 1, 1000]))
        want = "sub-01/bold/zarr.json: its metadata differs from the root's record (edited?)"
    else:  # the checksum codec removed, then a chunk damaged: verify must not pass it
        _edit_json(subject / "bold" / "zarr.json", lambda r: r["codecs"].pop())
        want = "sub-01/bold/zarr.json: its zarr.json has no crc32c checksum codec (removed?)"
    rc, out, _ = cli(capsys, "info", store)
    assert rc == 1 and want.split(": ", 1)[1] in out and "damaged" in out, out
    rc, out, _ = cli(capsys, "info", "--verify", store)
    assert rc == 1 and f"  {want}" in out, out
    # counted as what they are: no chunk is damaged
    assert out.splitlines()[0] == f"store {store}: 1 damaged metadata file(s)"


def test_a_store_array_without_its_checksum_codec_is_refused_when_read(store, haxby, capsys):
    from roidask.exceptions import DamagedStoreError
    from roidask.io import open_subject

    _edit_json(store / "sub-01" / "bold" / "zarr.json", lambda r: r["codecs"].pop())
    with pytest.raises(DamagedStoreError, match=r"sub-01/bold is damaged: its zarr.json has no "):
        open_subject(store)


def test_a_full_disk_names_the_output(haxby, tmp_path, capsys, monkeypatch):
    """An OSError of a refused write names no file (``[Errno 28] No space left on device``):
    the line names the output being written."""
    import errno

    from roidask.io import store_write as store_mod

    def full(arr, t0, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "_write_block", full)
    out = tmp_path / "s.zarr"
    rc, _, err = cli(capsys, "convert", haxby.bold, "--labels", haxby.labels, "--out", out,
                     "--quiet")  # fmt: skip
    assert rc == 1
    assert one_error(err) == f"--out {out}: cannot write it (No space left on device)"
    assert not out.exists() and hidden(tmp_path) == []


def test_a_whole_store_verifies(store, capsys):
    rc, out, _ = cli(capsys, "info", "--verify", store)
    assert rc == 0 and "every chunk of every subject reads and passes its checksum" in out


@pytest.mark.parametrize("kind", ["results", "study"])
@pytest.mark.parametrize("how", ["delete", "flip"])
def test_info_describes_and_verifies_results_and_studies(
    haxby_outputs, tmp_path, capsys, kind, how
):
    """``info`` on a results.zarr or a study store: what it holds (no voxel read), and with
    --verify every chunk checked; a deleted chunk is found from the inventory alone."""
    results, study = haxby_outputs / "results.zarr", haxby_outputs.parent / "study.zarr"
    store = shutil.copytree(results if kind == "results" else study, tmp_path / "copy.zarr")
    rc, out, _ = cli(capsys, "info", store)
    assert rc == 0
    if kind == "results":
        assert out.splitlines()[0] == f"results {store}: one subject's results (format 2)"
        assert "ROIs: 5\n" in out and "maps: atlas 40x20x1 int32," in out
        assert "signals: signals 5x1452 float64" in out and "chunks: all present" in out
    else:
        assert "\nsubjects: 1: sub-01 (5 ROIs)\ngroup level: none\n" in out
    rc, out, _ = cli(capsys, "info", "--verify", store)
    assert (rc, out) == (0, f"{kind} {store}: every chunk reads and passes its checksum\n")
    node = "" if kind == "results" else "sub-01/"
    damage_chunk(store, f"{node}logp/c/0/0/0", how)
    rc, out, _ = cli(capsys, "info", store)
    if how == "delete":  # the inventory shows it, no chunk read
        assert rc == 1
        assert (
            f"damaged: {store}: logp is damaged: 1 chunk(s) missing" in out
            if kind == "results"
            else "damaged: node sub-01: 1 chunk(s) missing (logp/c/0/0/0)" in out
        )
    else:
        assert rc == 0
    rc, out, _ = cli(capsys, "info", "--verify", store)
    reason = "missing" if how == "delete" else "it fails its CRC-32C checksum"
    assert (rc, out.splitlines()) == (
        1,
        [f"{kind} {store}: 1 damaged chunk(s)", f"  {node}logp/c/0/0/0: {reason}"],
    )


@pytest.mark.parametrize("how", ["truncated", "incomplete", "rewritten"])
def test_info_names_a_study_node_whose_zarr_json_is_damaged(haxby_outputs, tmp_path, capsys, how):
    """A published node whose own ``zarr.json`` is damaged, not marked complete, or
    rewritten since: ``info`` names it without --verify (a read per node, no chunk)."""
    study = shutil.copytree(haxby_outputs.parent / "study.zarr", tmp_path / "study.zarr")
    meta = study / "sub-01" / "zarr.json"
    record = json.loads(meta.read_text())
    if how == "truncated":
        meta.write_text(meta.read_text()[:100])
    else:
        key = "roidask_complete" if how == "incomplete" else "threshold"
        record["attributes"][key] = False if how == "incomplete" else 9.0
        meta.write_text(json.dumps(record))
    rc, out, _ = cli(capsys, "info", study)
    reason = "rewritten since it was published" if how == "rewritten" else "published but not"
    assert rc == 1 and f"damaged: node sub-01: zarr.json {reason}" in out, out
    assert "nodes: each complete" not in out


@pytest.mark.parametrize("how", ["deleted", "edited"])
def test_info_names_a_study_nodes_array_whose_zarr_json_is_damaged(
    haxby_outputs, tmp_path, capsys, how
):
    """An array's own ``zarr.json`` inside a published node, gone or edited (its shape):
    ``info`` names it without --verify (a read per array, no chunk)."""
    study = shutil.copytree(haxby_outputs.parent / "study.zarr", tmp_path / "study.zarr")
    meta = study / "sub-01" / "tstat" / "zarr.json"
    if how == "deleted":
        meta.unlink()
        reason = "missing on disk, though the root lists it"
    else:
        record = json.loads(meta.read_text())
        record["shape"] = [2, 2, 2]
        meta.write_text(json.dumps(record))
        reason = "its metadata in the root differs from its own zarr.json (edited?)"
    rc, out, _ = cli(capsys, "info", study)
    assert rc == 1 and f"damaged: node sub-01: tstat/zarr.json {reason}" in out, out
    assert "nodes: each complete" not in out


@pytest.mark.parametrize("command", ["info", "run"])
def test_corrupt_zarr_json_is_named(store, haxby, tmp_path, capsys, command):
    meta = store / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    args = (
        ["info", store]
        if command == "info"
        else ["run", "--store", store, "--mask", haxby.mask, "--out", tmp_path / "out", "--quiet"]
    )
    rc, _, err = cli(capsys, *args)
    assert rc == 2
    line = one_error(err)
    flag = "" if command == "info" else "--store "
    assert line.startswith(f"{flag}{meta}: corrupt zarr.json (the root metadata is not valid ")
    assert not (tmp_path / "out").exists()


def test_a_format_1_store_runs_with_a_warning(haxby, haxby_bold, tmp_path, capsys):
    store = format1_store(tmp_path / "old.zarr", haxby_bold.load())
    rc, out, err = cli(
        capsys,
        "run",
        "--store",
        store,
        "--mask",
        haxby.mask,
        "--out",
        tmp_path / "out",
        "--quiet",
        "--no-plots",
    )
    assert rc == 0, err
    assert err.splitlines() == [
        f"roidask: warning: {store}: subject 'sub-01' was written without chunk checksums "
        "(store format 1); damaged or missing chunks cannot be detected. Convert it again to "
        "add them."
    ]
    assert "ROIs found: 5" in out


# -- 3. unreadable files, unwritable destinations ---------------------------------------------
UNREADABLE = {
    "bold.nii.gz": "{path}: permission denied (the NIfTI image (.nii or .nii.gz) is not "
    "readable by this user)",
    "labels.txt": "--labels {path}: permission denied (the labels file is not readable by "
    "this user)",
    "mask.nii.gz": "--mask {path}: permission denied (the NIfTI image (.nii or .nii.gz) is "
    "not readable by this user)",
}
UNREADABLE_IN_BATCH = {
    "bold.nii.gz": "manifest: subject 'sub-01': bold {path}: permission denied (the BOLD "
    "image is not readable by this user)",
    "labels.txt": "manifest: subject 'sub-01': labels {path}: permission denied (the labels "
    "file is not readable by this user)",
    "mask.nii.gz": "manifest: subject 'sub-01': mask {path}: permission denied (the mask "
    "image is not readable by this user)",
    "manifest.tsv": "{path}: permission denied (the manifest (TSV) is not readable by this user)",
}


UNREADABLE_CASES = [
    *(("run", n) for n in UNREADABLE),
    *(("convert", n) for n in UNREADABLE),
    *(("batch", n) for n in UNREADABLE_IN_BATCH),
]
READ_ONLY_CASES = ["run", "convert", "batch"]


@pytest.fixture(scope="module")
def unprivileged_runs(haxby, tmp_path_factory):
    """Every unreadable-input and read-only-destination case, each in its own folder, run
    in one process that file permissions apply to (one start-up for all)."""
    root = tmp_path_factory.mktemp("unprivileged")
    cases, info = [], {}
    for command, name in UNREADABLE_CASES:
        folder = root / f"unreadable-{command}-{name}"
        data = copy_haxby(haxby, folder / "data")
        argv = ARGS[command](data, folder / "out")
        if command == "convert" and name == "mask.nii.gz":
            argv += ["--mask", data / name]
        path = folder / name if name == "manifest.tsv" else data / name
        path.chmod(0o000)
        info[command, name] = (len(cases), folder, path, tree(folder))
        cases.append({"argv": argv})
    for command in READ_ONLY_CASES:
        folder = root / f"read-only-{command}"
        data = copy_haxby(haxby, folder / "data")
        ro = folder / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        reads = folder / "reads.log"
        info[command] = (len(cases), folder, ro, reads)
        cases.append({"argv": ARGS[command](data, ro / "out"), "reads": str(reads)})
    results = run_unprivileged(cases, root)
    return {key: (results[i], *rest) for key, (i, *rest) in info.items()}


@pytest.mark.parametrize(("command", "name"), UNREADABLE_CASES)
def test_unreadable_input(unprivileged_runs, command, name):
    result, folder, path, before = unprivileged_runs[command, name]
    assert result["rc"] == 2, result["stderr"]
    want = (UNREADABLE_IN_BATCH if command == "batch" else UNREADABLE)[name]
    assert one_error(result["stderr"]) == want.format(path=path)
    assert tree(folder) == before  # nothing written


@pytest.mark.parametrize("command", READ_ONLY_CASES)
def test_out_in_a_read_only_folder(unprivileged_runs, command):
    """Refused in one line before any voxel is read (a spy logs every NIfTI read)."""
    result, _, ro, reads = unprivileged_runs[command]
    assert result["rc"] == 2, result["stderr"]
    assert one_error(result["stderr"]) == (
        f"--out {ro}/out: cannot write into {ro} (permission denied)"
    )
    assert not reads.exists()  # no voxel was read
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "convert"])
def test_out_without_its_parent_fails_before_reading(data, tmp_path, capsys, command):
    out = tmp_path / "results" / "subj2"
    with voxel_reads() as reads:
        rc, _, err = cli(capsys, *ARGS[command](data, out))
    assert rc == 2
    assert one_error(err) == (
        f"--out {out}: its parent folder {tmp_path}/results does not exist; create it first"
    )
    assert reads == []
    assert not (tmp_path / "results").exists()


# -- 4. bad inputs: one line each, before anything is written ---------------------------------
NIFTI = "expected a NIfTI image (.nii or .nii.gz)"


def _bad(tmp_path, data, case):
    """(argv, the expected error line) of a bad-input case."""
    folder = tmp_path / "folder"
    folder.mkdir()
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    bold, labels, mask = data / "bold.nii.gz", data / "labels.txt", data / "mask.nii.gz"

    def run(bold=bold, labels=labels, mask=mask):
        return ["run", bold, "--labels", labels, "--mask", mask, "--out", out, "--quiet"]

    def convert(bold=bold, labels=labels):
        return ["convert", bold, "--labels", labels, "--out", out, "--quiet"]

    if case == "bold-is-a-folder":
        return run(bold=folder), f"{folder}: is a folder; {NIFTI}"
    if case == "labels-is-a-folder":
        return run(labels=folder), f"--labels {folder}: is a folder; expected a labels file"
    if case == "mask-is-a-folder":
        return run(mask=folder), (
            f"--mask {folder}: is a folder, not an image; expected a .nii/.nii.gz file, a "
            ".nii.zarr image or a roidask zarr store"
        )
    if case == "convert-bold-is-a-folder":
        return convert(bold=folder), f"{folder}: is a folder; {NIFTI}"
    if case == "empty-bold":
        return run(bold=empty), f"{empty}: is empty (0 bytes); {NIFTI}"
    if case == "convert-empty-bold":
        return convert(bold=empty), f"{empty}: is empty (0 bytes); {NIFTI}"
    if case == "convert-out-named-as-an-image":  # a store named so: a folder as_image refuses
        image = tmp_path / "sub-01_bold.nii.gz"
        return ["convert", bold, "--labels", labels, "--out", image, "--quiet"], (
            f"--out {image}: is named as an image (.nii, .nii.gz, .nii.zarr), but convert "
            "writes a zarr store; name it e.g. study.zarr (an image is written by roidask export)"
        )
    if case == "empty-labels":
        path = tmp_path / "labels.txt"
        path.write_bytes(b"")
        return run(labels=path), f"--labels {path}: is empty (0 bytes); expected a labels file"
    if case == "empty-mask":
        return run(mask=empty), f"--mask {empty}: is empty (0 bytes); {NIFTI}"
    if case == "empty-manifest":
        manifest = tmp_path / "m.tsv"
        manifest.write_bytes(b"")
        want = f"{manifest}: is empty (0 bytes); expected a manifest (TSV)"
        return ["batch", manifest, "--out", out], want
    if case == "header-only-manifest":
        manifest = tmp_path / "m.tsv"
        manifest.write_text("subject\tbold\tlabels\tmask\n")
        want = f"{manifest}: has a header but no subject rows (expected one line per subject)"
        return ["batch", manifest, "--out", out], want
    if case in ("mask-all-zero", "mask-not-binary"):
        img = nib.load(mask)
        values = np.asanyarray(img.dataobj).astype(np.float32)
        values = values * 0 if case == "mask-all-zero" else values * 2
        path = write_image(tmp_path / f"{case}.nii.gz", values, img.affine)
        if case == "mask-all-zero":
            want = "mask is empty (every voxel is 0); expected at least one voxel inside"
        else:
            want = (
                "expected a binary mask (every voxel 0 or 1), found the value(s) 2; binarize "
                "it first (roidask.ops.binarize_img: nonzero = inside, or threshold_img)"
            )
        return run(mask=path), f"--mask {path}: {want}"
    if case == "batch-invalid-subjects":  # contents, found before a cluster starts
        img = nib.load(mask)
        values = np.asanyarray(img.dataobj).astype(np.float32) * 2
        two = write_image(tmp_path / "mask-two.nii.gz", values, img.affine)
        chairs = tmp_path / "labels-chairs.txt"
        chairs.write_text(labels.read_text().replace("house", "chair"))
        rows = [("01", bold, labels, mask), ("02", bold, labels, two), ("03", bold, chairs, mask)]
        manifest = write_manifest(tmp_path / "manifest.tsv", rows)
        return ["batch", manifest, "--out", out], (
            f"manifest: subject '02': mask {two}: expected a binary mask (every voxel 0 or "
            "1), found the value(s) 2; binarize it first (roidask.ops.binarize_img: nonzero = "
            "inside, or threshold_img) (1 other subject(s) have invalid inputs too: '03')"
        )
    if case == "batch-unknown-contrast":  # an analysis flag of a subject's error: the flag
        argv = batch_args(data, out, "--contrast", "face", "dog")
        return argv, (
            "manifest: subject 'sub-01': --contrast: unknown condition(s) ['dog']; the data "
            "has ['bottle', 'cat', 'chair', 'face', 'house', 'rest', 'scissors', "
            "'scrambledpix', 'shoe']"
        )
    if case in ("store-with-labels", "store-with-tr"):  # what the store holds is not replaced
        store = tmp_path / "store.zarr"
        assert main(["convert", str(bold), "--labels", str(labels), "--out", str(store)]) == 0
        flag, given = ("--labels", labels) if case == "store-with-labels" else ("--tr", "2 s")
        argv = ["run", "--store", store, "--mask", mask, "--out", out, "--quiet"]
        return [*argv, flag, labels if flag == "--labels" else "2"], (
            f"{flag}: not used with a store (given: {given}); the store holds its subjects' "
            "conditions, runs and repetition time: drop it, or run on the NIfTI files instead"
        )
    if case == "subject-without-store":
        return [*run(), "--subject", "sub-01"], (
            "--subject: only used with a store (given: 'sub-01', with BOLD files)"
        )
    if case == "demo-out-is-a-file":
        notes = tmp_path / "notes.txt"
        notes.write_text("mine")
        return ["demo", "--out", notes, "--quiet"], (
            f"--out {notes}: is a file; expected a folder (the demo writes haxby-slice/ in it)"
        )
    if case == "demo-out-parent-missing":  # as every command: the folder asked for only
        path = tmp_path / "no" / "demo"
        return ["demo", "--out", path, "--quiet"], (
            f"--out {path}: its parent folder {path.parent} does not exist; create it first"
        )
    if case in ("demo-out-holds-a-foreign-folder", "demo-out-links-to-it"):  # no cluster yet
        (tmp_path / "demo" / "haxby-slice").mkdir(parents=True)
        (tmp_path / "demo" / "haxby-slice" / "notes.txt").write_text("mine")
        if case == "demo-out-links-to-it":  # a link to a folder is that folder
            (tmp_path / "link").symlink_to(tmp_path / "demo")
            return ["demo", "--out", tmp_path / "link", "--quiet"], (
                f"--out {tmp_path / 'link' / 'haxby-slice'}: exists and was not written by "
                "roidask (no .roidask.json); roidask only replaces its own outputs, choose "
                "another output"
            )
        return ["demo", "--out", tmp_path / "demo", "--quiet"], (
            f"--out {tmp_path / 'demo' / 'haxby-slice'}: exists and was not written by roidask "
            "(no .roidask.json); roidask only replaces its own outputs, choose another output"
        )
    if case in ("threads-per-worker-0", "batch-threads-per-worker-0"):
        command = "batch" if case.startswith("batch") else "run"
        argv = run() if command == "run" else batch_args(data, out)
        want = f"--threads-per-worker: expected a positive integer, got 0 (see roidask {command} "
        return [*argv, "--threads-per-worker", "0"], want + "--help)"
    if case == "events-not-named-events-tsv":
        path = write_events(tmp_path / "conditions.tsv", [(0.0, 2.5, "face")])
        return run(labels=path), (
            f"--labels {path}: has the columns of a BIDS events table but is not named "
            "*_events.tsv; rename it (e.g. sub-01_task-x_run-1_events.tsv) so it is read as events"
        )
    if case == "complex-bold":
        src = nib.load(bold)
        path = tmp_path / "complex.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(src.dataobj).astype(np.complex64), src.affine), path)
        return run(bold=path), (
            f"{path}: voxels of data type complex64; expected integer or real floating-point "
            "voxels"
        )
    if case == "subject-too-long":
        return [*convert(), "--subject", "a" * 300], (
            "--subject: a subject name of 300 bytes is too long for a folder name; expected at "
            "most 200"
        )
    if case == "bad-scheduler":
        return [*run(), "--scheduler", "bogus"], (
            "--scheduler: expected an address 'tcp://HOST:PORT' or 'tls://HOST:PORT', got 'bogus'"
        )
    if case == "bad-memory-limit":
        return [*run(), "--scheduler", "local", "--memory-limit", "lots"], (
            "--memory-limit: expected a size such as '4GiB' or '500MB', got 'lots'"
        )
    if case == "tiny-memory-limit":
        return [*run(), "--scheduler", "local", "--memory-limit", "1MiB"], (
            "--memory-limit: '1MiB' is less than a worker process needs before any task "
            "(~200 MB once roidask is imported); expected at least 256MiB"
        )
    if case == "seed-without-permutations":
        return batch_args(data, out, "--seed", "3"), (
            "--seed: applies only to the permutation test; add --permutations N"
        )
    if case == "embedded-options-with-an-address":
        argv = [*batch_args(data, out), "--scheduler", "tcp://127.0.0.1:1"]
        return [*argv, "--n-workers", "3", "--memory-limit", "1GiB"], (
            "--n-workers, --memory-limit: apply only to an embedded cluster, not to the "
            "scheduler at 'tcp://127.0.0.1:1'"
        )
    if case == "tls-options-without-tls":
        return [*batch_args(data, out), "--tls-ca-file", "ca.pem", "--tls-key", "k.pem"], (
            "--tls-ca-file, --tls-key: apply only to a 'tls://HOST:PORT' scheduler address; got "
            "none (an embedded cluster)"
        )
    if case == "tls-options-missing":
        argv = [*batch_args(data, out), "--scheduler", "tls://127.0.0.1:1", "--tls-cert", "c"]
        return argv, (
            "--tls-ca-file, --tls-key: required to connect to 'tls://127.0.0.1:1' (TLS needs "
            "the CA certificate, the client certificate and its key)"
        )
    if case == "run-embedded-option-without-scheduler":
        return [*run(), "--n-workers", "2"], (
            "--n-workers: applies only to an embedded cluster; add --scheduler local"
        )
    if case == "run-tls-option-without-scheduler":
        return [*run(), "--tls-cert", "c.pem"], (
            "--tls-cert: applies only to a 'tls://HOST:PORT' scheduler address; add "
            "--scheduler tls://HOST:PORT"
        )
    if case == "negative-memory-limit":
        return [*batch_args(data, out), "--memory-limit", "-1GiB"], (
            "--memory-limit: expected a positive size, got '-1GiB'"
        )
    if case == "out-starting-with-a-dash":
        return [*run()[:-2], "--out", "-x"], (
            "--out: expected one argument (a value that starts with '-' is written --out=VALUE)"
            " (see roidask run --help)"
        )
    if case == "events-without-tr":
        bold0 = write_bold(tmp_path / "notr_bold.nii.gz", 10, tr_s=0.0)
        events = write_events(tmp_path / "sub-01_events.tsv", [(0.0, 4.0, "face")])
        return convert(bold=bold0, labels=events), (
            "--tr: events.tsv files need the repetition time and the BOLD header has none; add "
            "--tr SECONDS"
        )
    raise AssertionError(case)


BAD_CASES = [
    "bold-is-a-folder",
    "labels-is-a-folder",
    "mask-is-a-folder",
    "convert-bold-is-a-folder",
    "empty-bold",
    "convert-empty-bold",
    "convert-out-named-as-an-image",
    "empty-labels",
    "empty-mask",
    "empty-manifest",
    "header-only-manifest",
    "batch-invalid-subjects",
    "batch-unknown-contrast",
    "store-with-labels",
    "store-with-tr",
    "subject-without-store",
    "demo-out-is-a-file",
    "demo-out-parent-missing",
    "demo-out-holds-a-foreign-folder",
    "demo-out-links-to-it",
    "mask-all-zero",
    "mask-not-binary",
    "threads-per-worker-0",
    "batch-threads-per-worker-0",
    "events-not-named-events-tsv",
    "events-without-tr",
    "complex-bold",
    "subject-too-long",
    "bad-scheduler",
    "bad-memory-limit",
    "tiny-memory-limit",
    "seed-without-permutations",
    "embedded-options-with-an-address",
    "tls-options-without-tls",
    "tls-options-missing",
    "run-embedded-option-without-scheduler",
    "run-tls-option-without-scheduler",
    "negative-memory-limit",
    "out-starting-with-a-dash",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_before_anything_is_written(data, tmp_path, capsys, case):
    argv, want = _bad(tmp_path, data, case)
    before = tree(tmp_path)
    with voxel_reads() as reads:
        rc, _, err = cli(capsys, *argv)
    assert rc == 2
    assert one_error(err) == want
    assert tree(tmp_path) == before  # nothing written
    assert data / "bold.nii.gz" not in reads  # nothing of the BOLD data read


def test_batch_check_makes_every_check_and_starts_nothing(data, tmp_path, capsys, monkeypatch):
    """`roidask batch --check` (what cluster/jobqueue_batch.py runs before it submits jobs):
    the manifest, every subject's inputs and --out checked, then it stops: no cluster,
    nothing written."""
    import roidask.cli

    out = tmp_path / "out"

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(roidask.cli, "_cluster", no_cluster)
    assert main([str(a) for a in batch_args(data, out, "--check")]) == 0
    assert capsys.readouterr().out.strip() == (
        f"checked: 1 subject, their inputs, {out} and the cluster's options"
    )
    assert not out.exists()
    # the cluster's options, as the batch checks them before it starts one
    for flags, error in [
        (["--n-workers", "100000"], "--n-workers: 100000 worker processes would each have"),
        (["--memory-limit", "100TiB"], "--memory-limit: '100TiB' "),
        (["--n-workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "--n-workers: applies only"),
        (["--tls-ca-file", str(data / "labels.txt")], "--tls-ca-file: applies only"),
    ]:
        assert main([str(a) for a in batch_args(data, out, "--check", *flags)]) == 2
        assert capsys.readouterr().err.startswith(f"roidask: error: {error}"), flags
    assert not out.exists()
    (data / "labels.txt").write_text("labels chunks\nface 0\n")  # a volume count mismatch
    assert main([str(a) for a in batch_args(data, out, "--check")]) == 2
    assert capsys.readouterr().err.startswith("roidask: error: manifest: subject 'sub-01': ")
    assert not out.exists()


def test_events_beyond_the_run_warn(tmp_path, capsys):
    bold = write_bold(tmp_path / "run_bold.nii.gz", 20, tr_s=2.0)
    events = write_events(
        tmp_path / "sub-01_events.tsv", [(0.0, 10.0, "a"), (20.0, 10.0, "b"), (44.0, 2.0, "a")]
    )
    mask = write_image(tmp_path / "mask.nii.gz", np.ones((4, 5, 3), dtype=np.uint8))
    rc, _, err = cli(capsys, "convert", bold, "--labels", events, "--out", tmp_path / "s.zarr")
    assert rc == 0, err
    assert err.splitlines() == [
        f"roidask: warning: {events}: 1 event(s) start at or after the end of the run (20 "
        "volumes x 2 s = 40 s), e.g. 'a' at 44 s; they label no volume (wrong TR, or events of "
        "another run?)"
    ]
    rc, _, err = cli(
        capsys,
        "run",
        bold,
        "--labels",
        events,
        "--mask",
        mask,
        "--contrast",
        "a",
        "b",
        "--out",
        tmp_path / "out",
        "--quiet",
        "--no-plots",
    )
    assert rc == 0 and "1 event(s) start at or after the end of the run" in err


def test_nonfinite_voxels_are_reported_by_run(haxby, tmp_path, capsys):
    img = nib.load(haxby.bold)
    values = np.asanyarray(img.dataobj).astype(np.float32)
    values[0, 0, 0, :3] = np.nan
    values[1, 1, 0, 5] = np.inf
    bold = tmp_path / "bold.nii.gz"
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(values, img.affine, header), bold)
    rc, out, err = cli(
        capsys,
        "run",
        bold,
        "--labels",
        haxby.labels,
        "--mask",
        haxby.mask,
        "--out",
        tmp_path / "out",
        "--quiet",
        "--no-plots",
    )
    assert rc == 0
    assert err.splitlines() == [
        f"roidask: warning: {bold}: 4 NaN/inf voxel values (set to 0 before smoothing, as "
        "nilearn does)"
    ]
    assert "ROIs found: 5" in out


@pytest.mark.parametrize("case", ["mask", "out", "tr"])
def test_library_names_parameters_and_the_cli_names_flags(data, tmp_path, capsys, case):
    """The same error: ``mask_img``/``out``/``tr_s`` from the library, ``--mask``/``--out``/
    ``--tr`` from the command line."""
    from roidask.io import bold_from_nifti
    from roidask.pipeline import PipelineParams, roi_pipeline
    from roidask.runner import run_subject

    bold, labels = data / "bold.nii.gz", data / "labels.txt"
    if case == "mask":
        argv, want = _bad(tmp_path, data, "mask-all-zero")
        mask = argv[5]
        with pytest.raises(ValueError) as info:
            roi_pipeline(bold_from_nifti(bold, labels=labels), mask_img=mask)
        library = f"mask_img {mask}: mask is empty"
    elif case == "out":
        out = tmp_path / "results" / "subj2"
        argv, want = run_args(data, out), f"--out {out}: its parent folder"
        with pytest.raises(OSError) as info:
            run_subject(
                bold=[bold],
                labels=[labels],
                store=None,
                subject=None,
                mask=data / "mask.nii.gz",
                out=out,
                params=PipelineParams(),
            )
        library = f"out {out}: its parent folder"
    else:
        argv, want = _bad(tmp_path, data, "events-without-tr")
        with pytest.raises(ValueError) as info:
            bold_from_nifti(argv[1], labels=[argv[3]])
        library = "tr_s: events.tsv files need the repetition time and the BOLD header has none; "
        assert str(info.value).endswith("pass tr_s=SECONDS")
    assert str(info.value).startswith(library)
    rc, _, err = cli(capsys, *argv)
    assert rc == 2 and one_error(err).startswith(want)


# -- 6. killed runs clean up after themselves ---------------------------------------------------
def _kill_mid_write(cmd, out):
    """Start ``cmd``; SIGKILL it as soon as its temporary sibling ``.<out>.roidask-tmp-*``
    (a folder) holds a file; return that sibling. A command that finished first (a fast
    machine) is started again, after its output is removed."""
    prefix = f".{out.name}.roidask-tmp-"
    for _ in range(5):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while proc.poll() is None:
                temps = [p for p in out.parent.iterdir() if p.name.startswith(prefix)]
                temps = [p for p in temps if p.is_dir() and any(True for _ in p.rglob("*"))]
                if temps:
                    proc.kill()
                    proc.wait()
                    return temps[0]
                time.sleep(0.001)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, proc.stderr.read()
        shutil.rmtree(out)
    raise AssertionError(f"{cmd}: finished five times before its temporary folder was seen")


@pytest.mark.parametrize("command", ["run", "convert"])
def test_a_killed_command_is_cleaned_up_by_the_next(data, tmp_path, capsys, command):
    out = tmp_path / ("out" if command == "run" else "s.zarr")
    extra = ["--no-plots"] if command == "run" else ["--chunks", "time=20"]
    args = ARGS[command](data, out, *extra)
    stale = _kill_mid_write(roidask_cmd(*args), out)
    assert stale.exists() and not out.exists()  # killed mid-write: nothing committed
    rc, _, err = cli(capsys, *args)  # the same command again
    assert rc == 0, err
    assert hidden(tmp_path) == []  # the killed command's temporary folder is gone
    if command == "run":
        assert (out / "provenance.json").is_file()
    else:
        assert open_subject(out)["bold"].shape == (40, 20, 1, 1452)


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--out", "s3://bucket/demo"],
        ["group", "s3://bucket/study.zarr"],
        ["export", "x.nii.gz", "--out", "s3://bucket/x.nii.zarr"],
        ["fetch", "haxby", "--data-dir", "s3://bucket/data"],
    ],
)
def test_local_only_arguments_refuse_urls(argv, tmp_path, monkeypatch, capsys):
    """Arguments that take only a local path say so, instead of making ``./s3:/bucket``."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "expected a local path (URLs are not read here), got 's3://bucket/" in err, err
    assert "\n" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--fwhm", "1e308", "--fwhm: must be finite, >= 0 and <= 1000 mm, got 1e+308"),
        (
            "--dilation-iterations",
            "99999999999999999999",
            "--dilation-iterations: expected an integer >= 0 and <= 10000, got " + "9" * 20,
        ),
        (
            "--threshold",
            "12",
            "--threshold: 12 is above clip 10, where -log10 p is clipped: no voxel could pass; "
            "expected threshold <= clip",
        ),
    ],
)
def test_absurdly_large_kernels_are_refused_first(haxby, tmp_path, capsys, flag, value, message):
    """A smoothing or dilation far wider than any brain is a typo: one line, nothing
    written, rather than an overflow or a kernel of exabytes once the data is read; so is
    a threshold no clipped -log10 p can reach."""
    out = tmp_path / "out"
    argv = ["run", haxby.bold, "--labels", haxby.labels, "--mask", haxby.mask, "--out", out]
    rc, _, err = cli(capsys, *argv, flag, value, "--quiet", "--no-plots")
    assert rc == 2 and one_error(err) == message
    assert list(tmp_path.iterdir()) == []


def test_batch_mask_is_never_the_permutation_mask(tmp_path):
    """``batch --mask`` is the subjects' mask (BIDS folders); the permutation test's mask is
    ``group --mask`` only."""
    from roidask.cli import build_parser, group_permutation

    mask = tmp_path / "mask.nii.gz"
    argv = ["batch", "m.tsv", "--out", "o", "--mask", str(mask), "--permutations", "10"]
    assert group_permutation(build_parser().parse_args(argv)).mask is None
    argv = ["group", str(tmp_path), "--mask", str(mask)]
    assert group_permutation(build_parser().parse_args(argv)).mask == mask


def test_run_on_a_cluster_names_its_dashboard_once(data, tmp_path, capsys, monkeypatch):
    """The cluster's line names its dashboard (when it serves one): not a second line."""
    import roidask.cli
    import roidask.cluster

    url = "http://127.0.0.1:8787/status"
    monkeypatch.setattr(roidask.cluster, "dashboard_link", lambda client: url)
    monkeypatch.setattr(roidask.cli, "dashboard_link", lambda client: url, raising=False)
    argv = [a for a in run_args(data, tmp_path / "out", "--no-plots") if a != "--quiet"]
    rc, _, err = cli(capsys, *argv, "--scheduler", "local")
    assert rc == 0, err
    assert err.count(url) == 1, err
    assert "dask: dask scheduler inproc://" in err


def test_batch_says_when_its_group_level_failed(haxby, tmp_path, capsys):
    """Subjects on two grids: both done, the group level failed; exit status 1, the reason,
    and group-error.txt (not group/) among the outputs."""
    from roidask.datasets import make_synthetic_subject

    other = make_synthetic_subject(tmp_path / "other", shape=(12, 14, 10), n_volumes=300)
    manifest = write_manifest(
        tmp_path / "manifest.tsv",
        [("01", haxby.bold, haxby.labels, haxby.mask),
         ("02", other.bold, other.labels, other.mask_vt)],
    )  # fmt: skip
    out = tmp_path / "batch"
    rc, stdout, _ = cli(capsys, "batch", manifest, "--out", out, "--quiet", "--no-plots")
    assert rc == 1
    assert "subjects: 2 (done 2)" in stdout
    assert "group level: failed (group level needs every subject on one grid" in stdout
    assert f"outputs: {out} (batch.tsv, sub-*/, group-error.txt, study.zarr)" in stdout
    assert not (out / "group").exists()


def test_a_quiet_demo_prints_nothing_on_stderr(tmp_path, capsys):
    rc, _, err = cli(capsys, "demo", "--out", tmp_path, "--quiet")
    assert rc == 0 and err == ""
    assert (tmp_path / "haxby-slice" / "atlas.nii.gz").is_file()


def test_a_batch_of_one_subject_says_it_has_no_group_level(haxby, tmp_path, capsys):
    manifest = write_manifest(
        tmp_path / "manifest.tsv", [("01", haxby.bold, haxby.labels, haxby.mask)]
    )
    out = tmp_path / "batch"
    argv = ["batch", manifest, "--out", out, "--quiet", "--no-plots", "--permutations", "10"]
    rc, stdout, _ = cli(capsys, *argv)
    assert rc == 0
    assert "group level: none (1 subject completed, 2 needed)" in stdout.splitlines()


def test_messages_name_the_flags_the_command_has(haxby, haxby_outputs, tmp_path, capsys):
    """Each error names the flag the user typed (not a Python parameter, nor a flag another
    command has) and what is expected."""
    tstat = haxby_outputs / "tstat.nii.gz"
    run = ["run", haxby.bold, "--labels", haxby.labels, "--mask", haxby.mask, "--quiet"]
    cases = [
        (["export", tstat, "--node", "sub-01", "--out", tmp_path / "t.nii.gz"],
         f"--node: {tstat} is an image file, one map; a variable or group is chosen only "
         "in a zarr store"),
        (["export", tstat, "--out", tmp_path / "t"],
         f"--out {tmp_path / 't'}: output name must end in .nii, .nii.gz or .nii.zarr"),
        ([*run, "--out", ""], "--out: expected a path, got '' (see roidask run --help)"),
        (["fetch", "haxby", "--subjects", "9", "--data-dir", tmp_path / "d"],
         "--subjects: each subject must be one of [1, 2, 3, 4, 5, 6], got 9"),
        (["run", "--store", haxby_outputs / "results.zarr", "--mask", haxby.mask, "--out",
          tmp_path / "r"],
         f"--store {haxby_outputs / 'results.zarr'}: is one subject's results store (its maps, "
         "ROI table and signals), not a BOLD store; read its maps with roidask export, or the "
         "whole with xarray.open_zarr"),
    ]  # fmt: skip
    for argv, message in cases:
        rc, _, err = cli(capsys, *argv)
        assert rc == 2 and one_error(err) == message
    assert list(tmp_path.iterdir()) == []
    # a library hint ("pass subject=") as the flag to add
    from roidask.cli import format_error
    from roidask.exceptions import OutputError, StoreError

    exc = StoreError("subject: s.zarr holds subjects ['a', 'b']; pass subject= to choose one",
                     param="subject")  # fmt: skip
    assert format_error(exc, "run") == (
        "--subject: s.zarr holds subjects ['a', 'b']; add --subject to choose one"
    )
    demo = OutputError("out_dir d/synthetic-data: holds ['bold.nii.gz']", param="out_dir")
    assert format_error(demo, "demo") == "--out d/synthetic-data: holds ['bold.nii.gz']"


def test_group_on_a_study_whose_published_node_is_gone_names_it(haxby_outputs, tmp_path, capsys):
    study = shutil.copytree(haxby_outputs.parent / "study.zarr", tmp_path / "study.zarr")
    shutil.rmtree(study / "sub-01")
    rc, _, err = cli(capsys, "group", study, "--out", tmp_path / "grp", "--quiet")
    assert rc == 2
    assert one_error(err) == (
        f"{study}: node 'sub-01' is missing on disk (no {study}/sub-01/zarr.json); write "
        "it again (rerun the roidask run or batch that wrote it)"
    )
    assert not (tmp_path / "grp").exists()


def test_info_counts_one_in_the_singular(haxby_outputs, tmp_path, capsys):
    """A study node of one ROI and a group level of one subject: "1 ROI", "1 subject"."""
    study = prepare_study(tmp_path / "study.zarr")
    ds = xr.open_zarr(str(haxby_outputs / "results.zarr")).load()
    write_node(study, "sub-01", ds.assign_attrs(n_rois=1), attrs={"subject": "01"})
    write_node(study, "group", ds[["tstat"]], attrs={"n_subjects": 1})
    for node in ("sub-01", "group"):
        publish(study, node)
    rc, out, _ = cli(capsys, "info", study)
    assert rc == 0
    assert "\nsubjects: 1: sub-01 (1 ROI)\ngroup level: 1 subject\n" in out


@pytest.mark.parametrize("case", ["no-study", "locked", "damaged-study"])
def test_batch_folder_refusals_come_before_inputs_are_read(haxby, tmp_path, capsys, monkeypatch,
                                                             case):  # fmt: skip
    """A batch folder that cannot be written (an earlier study store --no-study would leave
    out of date, another batch writing it, a damaged study root) is refused before the
    subjects' inputs are read and before a cluster starts."""
    import json as json_module

    from helpers.files import locked_by_another_process

    from roidask import cli as cli_module

    out = tmp_path / "out"
    (out / "study.zarr" / "sub-01").mkdir(parents=True)
    marker = {"written_by": "roidask", "kind": "batch", "files": []}
    (out / ".roidask.json").write_text(json_module.dumps(marker))
    root = {"zarr_format": 3, "node_type": "group", "attributes": {"roidask_study": 1}}
    (out / "study.zarr" / "zarr.json").write_text(json_module.dumps(root))
    node = {"zarr_format": 3, "node_type": "group", "attributes": {"roidask_complete": True}}
    (out / "study.zarr" / "sub-01" / "zarr.json").write_text(json_module.dumps(node))
    if case == "damaged-study":
        (out / "study.zarr" / "zarr.json").write_text("{not json")
    called = []
    monkeypatch.setattr(cli_module, "check_subjects", lambda *a, **k: called.append("check"))
    monkeypatch.setattr(cli_module, "_cluster", lambda *a, **k: called.append("cluster"))
    manifest = write_manifest(tmp_path / "m.tsv", [("01", haxby.bold, haxby.labels, haxby.mask)])
    argv = ["batch", manifest, "--out", out, "--quiet", "--no-plots"]
    if case == "no-study":
        argv.append("--no-study")
    context = locked_by_another_process(out) if case == "locked" else contextlib.nullcontext()
    with context:
        rc, _, err = cli(capsys, *argv)
    want = {
        "no-study": "holds study.zarr, the study store of an earlier batch, which a batch that "
        "does not write it (--no-study) would leave out of date",
        "locked": "another roidask command is writing it",
        "damaged-study": "it is a damaged roidask study store: remove",
    }[case]
    assert rc == 2 and want in one_error(err) and called == []


@pytest.mark.parametrize("command", ["run", "run nested", "export"])
def test_an_output_inside_a_folder_a_batch_is_writing_is_refused(haxby_outputs, haxby, tmp_path,
                                                                 capsys, command):  # fmt: skip
    # `run --out BATCH/sub-01` while the batch runs replaced what the batch publishes there
    from helpers.files import locked_by_another_process

    batch = tmp_path / "batch"
    batch.mkdir()
    target = (
        batch / {"run": "sub-01", "run nested": "sub-01/again", "export": "logp.nii.gz"}[command]
    )
    if command == "run nested":
        target.parent.mkdir()
    if command.startswith("run"):
        argv = ["run", haxby.bold, "--labels", haxby.labels, "--mask", haxby.mask,
                "--out", target, "--quiet", "--no-plots"]  # fmt: skip
    else:
        argv = ["export", haxby_outputs / "results.zarr", "--variable", "logp", "--out", target]
    with locked_by_another_process(batch):
        rc, _, err = cli(capsys, *argv)
    assert rc == 2 and one_error(err) == (
        f"--out {target}: inside {batch}, which another roidask command is writing (a batch "
        "or a group level still running); wait for it to end, or choose another folder"
    )
    assert [p.name for p in batch.rglob("*")] == (["sub-01"] if command == "run nested" else [])
    rc, _, err = cli(capsys, *argv)  # once the batch has ended
    assert rc == 0, err
