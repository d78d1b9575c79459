"""``roidask export``: any output map (a NIfTI file of a subject's folder, a variable of its
results.zarr or of a study store's node, locally or in S3) as NIfTI-Zarr that
``niizarr.zarr2nii`` opens with the same data and affine (issue 18)."""

from __future__ import annotations

import re

import helpers.s3 as s3_helpers
import nibabel as nib
import niizarr
import numpy as np
import obstore
import pytest
from obstore.store import S3Store

from roidask.cli import main
from roidask.io import convert

s3_server = s3_helpers.s3_server
s3_bucket = s3_helpers.s3_bucket


@pytest.fixture
def results(haxby_outputs):
    """A subject's output folder (``roidask run``), beside a study store holding it."""
    return haxby_outputs


def zarr2nibabel(path, tmp_path) -> nib.Nifti1Image:
    target = tmp_path / "back.nii.gz"
    niizarr.zarr2nii(str(path), str(target))
    return nib.load(target)


def test_export_nifti_and_zarr_variables(results, tmp_path, capsys):
    want = nib.load(results / "tstat.nii.gz")
    sources = {
        "file": [str(results / "tstat.nii.gz")],
        "results": [str(results / "results.zarr"), "--variable", "tstat"],
        "study": [str(results.parent / "study.zarr"), "--node", "sub-01", "--variable", "tstat"],
    }
    for name, args in sources.items():
        out = tmp_path / f"{name}.nii.zarr"
        assert main(["export", *args, "--out", str(out)]) == 0, capsys.readouterr().err
        got = zarr2nibabel(out, tmp_path)
        np.testing.assert_array_equal(np.asanyarray(got.dataobj), want.get_fdata(dtype=np.float32))
        np.testing.assert_allclose(got.affine, want.affine, atol=1e-5)
    # the atlas keeps its integers
    out = tmp_path / "atlas.nii.zarr"
    assert (
        main(["export", str(results / "results.zarr"), "--variable", "atlas", "--out", str(out)])
        == 0
    )
    got = zarr2nibabel(out, tmp_path)
    atlas = nib.load(results / "atlas.nii.gz")
    assert np.asanyarray(got.dataobj).dtype.kind == "i"
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), np.asanyarray(atlas.dataobj))


def test_export_from_s3(results, s3_bucket, tmp_path):
    store = S3Store.from_url(s3_bucket)
    for p in (results / "results.zarr").rglob("*"):
        if p.is_file():
            key = f"sub-01/results.zarr/{p.relative_to(results / 'results.zarr').as_posix()}"
            obstore.put(store, key, p.read_bytes())
    out = tmp_path / "logp.nii.zarr"
    url = f"{s3_bucket}/sub-01/results.zarr"
    assert main(["export", url, "--variable", "logp", "--out", str(out)]) == 0
    got = zarr2nibabel(out, tmp_path)
    want = nib.load(results / "logp.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), want.get_fdata(dtype=np.float32))


def test_export_errors_are_one_line(results, tmp_path, capsys):
    out = tmp_path / "x.nii.zarr"
    assert main(["export", str(results / "results.zarr"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("roidask: error: --variable: expected one of the maps of ")
    assert "'tstat'" in err and "got None" in err and "\n" not in err
    assert main(["export", str(results / "tstat.nii.gz"), "--out", str(tmp_path / "t.txt")]) == 2
    assert "--out" in capsys.readouterr().err
    assert not out.exists()


def test_export_says_which_node_or_store_is_wrong(results, haxby, tmp_path, capsys):
    """A study store needs --node (the message lists its nodes), a node that is not there is
    named with the nodes that are, and a BOLD store is said to hold no maps."""
    study = results.parent / "study.zarr"
    bold_store = convert(haxby.bold, labels=haxby.labels, out=tmp_path / "bold.zarr")
    out = tmp_path / "x.nii.gz"
    cases = [
        ([study, "--variable", "tstat"],
         f"--node: {study} is a study store, whose maps are in its nodes; add --node one of "
         "its nodes ['sub-01']"),
        ([study, "--node", "sub-09", "--variable", "tstat"],
         f"--node: expected one of the nodes of the study store {study} ['sub-01'], got "
         "'sub-09'"),
        ([results / "results.zarr", "--node", "sub-01", "--variable", "tstat"],
         f"--node: {results / 'results.zarr'} has no nodes to choose from (a study store "
         "has), got 'sub-01'"),
        ([study, "--node", "sub-01", "--variable", "nope"],
         f"--variable: expected one of the maps of {study} (node 'sub-01') ['atlas', "
         "'dilated_mask', 'logp', 'mean_epi', 'roi_mask', 'tstat'], got 'nope'"),
        ([bold_store, "--variable", "bold"],
         f"{bold_store}: is a roidask BOLD store (subjects ['sub-01']), which holds BOLD "
         "series, not maps; export a map of a subject's results.zarr or of a study store"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(["export", *map(str, args), "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"roidask: error: {message}\n"
    assert not out.exists()


def test_a_map_without_a_grid_is_refused(tmp_path, capsys):
    import xarray as xr

    store = tmp_path / "plain.zarr"
    xr.Dataset({"m": (("x", "y", "z"), np.zeros((2, 3, 4), np.float32))}).to_zarr(
        store, consolidated=False
    )
    assert (
        main(["export", str(store), "--variable", "m", "--out", str(tmp_path / "m.nii.zarr")]) == 2
    )
    err = capsys.readouterr().err
    assert "DataArray 'm' has no 'affine' attribute, so its grid is unknown" in err
    assert not (tmp_path / "m.nii.zarr").exists()


def test_export_never_replaces_what_roidask_did_not_write(results, tmp_path, capsys):
    """``--overwrite`` replaces a NIfTI file that ``export`` wrote (its header says so), never
    a user's file; and the output is never an input, nor inside one (a store)."""
    import shutil

    from helpers.files import tree

    tstat = results / "tstat.nii.gz"
    out = tmp_path / "t.nii.gz"
    assert main(["export", str(tstat), "--out", str(out)]) == 0
    assert main(["export", str(results / "logp.nii.gz"), "--out", str(out), "--overwrite"]) == 0
    np.testing.assert_array_equal(  # replaced: it was roidask's
        nib.load(out).get_fdata(), nib.load(results / "logp.nii.gz").get_fdata()
    )
    mine = tmp_path / "mine.nii.gz"
    shutil.copy(tstat, mine)  # a user's NIfTI (the same image, not written by export)
    before = tree(tmp_path)
    capsys.readouterr()
    assert main(["export", str(tstat), "--out", str(mine), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "mine.nii.gz: exists and was not written by roidask" in err and "\n" not in err
    # the input itself, and a path inside an input store
    own = results.parent / "own.nii.gz"
    shutil.copy(tstat, own)
    inside = results / "results.zarr" / "m.nii.zarr"
    cases = [(own, own, []), (results / "results.zarr", inside, ["--variable", "tstat"])]
    for map_, target, variable in cases:
        assert main(["export", str(map_), *variable, "--out", str(target), "--overwrite"]) == 2
        assert re.search(r"(is|is inside) the input", capsys.readouterr().err)
    assert tree(tmp_path) == before and not inside.exists()
    assert nib.load(own).get_fdata().tobytes() == nib.load(tstat).get_fdata().tobytes()


@pytest.mark.parametrize("name", ["t.nii.gz", "t.nii", "t.nii.zarr"])
def test_export_overwrite_never_takes_a_derived_file_a_link_or_a_users_file(
    results, tmp_path, capsys, name
):
    """The header's mark is not ownership: nibabel copies it into the images a user derives
    from an export (and into one saved over it), which ``--overwrite`` must not replace;
    nor a link, nor a NIfTI-Zarr folder holding a user's file. What export wrote, unchanged,
    it replaces."""
    from helpers.files import tree

    tstat, logp = results / "tstat.nii.gz", results / "logp.nii.gz"
    out = tmp_path / name
    assert main(["export", str(tstat), "--out", str(out)]) == 0
    assert main(["export", str(logp), "--out", str(out), "--overwrite"]) == 0
    back = zarr2nibabel(out, tmp_path.parent) if name.endswith(".zarr") else nib.load(out)
    np.testing.assert_array_equal(back.get_fdata(), nib.load(logp).get_fdata())
    suffix = name[1:]  # .nii.gz, .nii or .nii.zarr
    link = tmp_path / f"link{suffix}"
    link.symlink_to(out)  # to what export wrote: still not a file of its own to replace
    capsys.readouterr()
    assert main(["export", str(tstat), "--out", str(link), "--overwrite"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err and link.is_symlink()
    mine = []
    if name.endswith(".zarr"):
        (out / "notes.txt").write_text("mine")  # a user's file inside the export's folder
        mine.append(out)
    else:  # images derived by nibabel carry the header (and its mark) over
        exported = nib.load(out)
        data = exported.get_fdata().astype(np.float32)
        data[data < 2] = 0
        for target in (tmp_path / f"mine{suffix}", out):  # a new file, and one saved over
            nib.save(nib.Nifti1Image(data, exported.affine, exported.header), target)
            mine.append(target)
        assert bytes(nib.load(out).header["descrip"].item()).startswith(b"written by roidask")
    before = tree(tmp_path)
    capsys.readouterr()
    for target in mine:
        assert main(["export", str(tstat), "--out", str(target), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and ("did not write" in err or "not written by roidask" in err), err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("damage", ["missing", "flipped"])
@pytest.mark.parametrize("source", ["study", "results"])
def test_export_refuses_a_damaged_store(results, tmp_path, capsys, damage, source):
    """A chunk of a study node or of a subject's results.zarr that is missing (zarr would
    read the fill value) or fails its checksum: one line naming it, and nothing written."""
    import shutil

    if source == "study":
        store = shutil.copytree(results.parent / "study.zarr", tmp_path / "study.zarr")
        group, where = store / "sub-01", ["--node", "sub-01"]
    else:
        store = shutil.copytree(results / "results.zarr", tmp_path / "results.zarr")
        group, where = store, []
    chunks = sorted(p for p in (group / "tstat" / "c").rglob("*") if p.is_file())
    if damage == "missing":
        chunks[0].unlink()
    else:
        data = bytearray(chunks[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunks[0].write_bytes(bytes(data))
    out = tmp_path / "t.nii.gz"
    argv = ["export", str(store), *where, "--variable", "tstat", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    name = "sub-01/tstat" if source == "study" else "tstat"
    assert "\n" not in err and f" {name} is damaged" in err, err
    # named as export names it (no --store there), with what to do about a results store
    assert err.startswith(f"roidask: error: {store}: ") and "write it again" in err, err
    assert not out.exists() and not list(tmp_path.glob(".t.nii.gz*"))


@pytest.mark.parametrize("name", ["t.nii.gz", "t.nii", "t.nii.zarr"])
def test_export_into_a_missing_folder_is_one_line(results, tmp_path, capsys, name):
    """The same line for every format (a raw OS error naming a temporary file before)."""
    out = tmp_path / "missing" / name
    assert main(["export", str(results / "tstat.nii.gz"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"roidask: error: --out {out}: its parent folder {out.parent} does not exist; create "
        "it first"
    )
    assert list(tmp_path.iterdir()) == []
