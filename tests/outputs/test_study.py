"""The study store ``OUT/study.zarr``: one DataTree of every subject that plain xarray reads.

The store's mechanics (nodes written, published, hidden, verified) on small
hand-made Datasets; then real batches of small synthetic subjects (one without
ROIs): the nodes equal the subjects' NIfTI and TSV outputs, xarray alone reads
them (a subprocess that never imports roidask), and a batch SIGKILLed after its
first subject leaves a store whose visible subjects are whole, which the rerun
completes without computing a subject twice.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers.s3 as s3_helpers
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from helpers.cluster import kill_group, start
from helpers.files import damage_chunk, locked_by_another_process, write_manifest
from helpers.results import assert_matches_outputs, assert_results_schema, run_plain_reader, schema

from roidask.batch import SubjectSpec, run_batch
from roidask.exceptions import EmptyMaskWarning, OutputError, StoreError, StudyNodeWarning
from roidask.outputs.study import (
    FINGERPRINT_ATTR,
    STUDY_ATTR,
    Study,
    prepare_study,
    publish,
    published,
    unpublish,
    verify_study,
    write_node,
)

pytestmark = pytest.mark.timeout(180)

# one moto server for this module's S3 test
s3_server = s3_helpers.s3_server
s3_bucket = s3_helpers.s3_bucket

ROIDASK = Path(sys.executable).with_name("roidask")
SHAPE = (16, 20, 12)
N_VOLUMES = 726


def small(seed: int) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {"v": (("x", "time"), rng.random((4, 6))), "n": ("x", np.arange(4))},
        coords={"condition": ("time", np.array(["a", "b", "a", "b", "a", "c"]))},
        attrs={"seed": seed},
    )


def tree_of(path: Path) -> xr.DataTree:
    return xr.open_datatree(path, engine="zarr")


def make_unreadable(monkeypatch, name: str) -> None:
    """Reading node ``name``'s ``zarr.json`` fails with an I/O error (the node is whole)."""
    from roidask.outputs import study as study_module

    real = study_module._node_entries

    def flaky(study, node, fingerprint):
        if node == name:
            raise OSError(5, "Input/output error", str(study / node / "zarr.json"))
        return real(study, node, fingerprint)

    monkeypatch.setattr(study_module, "_node_entries", flaky)


def tree_state(folder: Path) -> dict[str, int]:
    """Every file below ``folder`` and its modification time (ns)."""
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------- the store itself


def test_nodes_are_visible_once_published(tmp_path):
    study = prepare_study(tmp_path / "study.zarr")
    assert sorted(tree_of(study).children) == [] and tree_of(study).attrs[STUDY_ATTR] == 1
    write_node(study, "sub-01", small(1), attrs={FINGERPRINT_ATTR: "f1"})
    write_node(study, "sub-02", small(2))
    assert sorted(tree_of(study).children) == []  # written, not published
    publish(study, "sub-01", fingerprint="f1")
    publish(study, "sub-02")
    tree = tree_of(study)
    assert sorted(tree.children) == ["sub-01", "sub-02"] == published(study)
    xr.testing.assert_equal(tree["sub-01"].to_dataset(), small(1))
    assert tree["sub-01"].attrs["roidask_complete"] is True
    assert tree["sub-02"]["condition"].dtype.kind == "U"
    with pytest.raises(StoreError, match="fingerprint 'f1', expected 'f2'"):
        publish(study, "sub-01", fingerprint="f2")

    # rewriting a node: hidden first, then replaced, then shown again
    assert unpublish(study, "sub-01") and not unpublish(study, "sub-01")
    assert sorted(tree_of(study).children) == ["sub-02"]
    write_node(study, "sub-01", small(3))
    publish(study, "sub-01")
    xr.testing.assert_equal(tree_of(study)["sub-01"].to_dataset(), small(3))
    assert verify_study(study) == []
    # a plain open_zarr of one node works too (its own consolidated metadata)
    xr.testing.assert_equal(xr.open_zarr(study / "sub-02", chunks=None).load(), small(2))


def test_incomplete_nodes_are_never_published(tmp_path, monkeypatch):
    from roidask.outputs import study as study_mod

    study = prepare_study(tmp_path / "study.zarr")
    real = study_mod._write_node_json

    def killed_before_the_last_file(node, record, *, complete):
        if complete:
            raise KeyboardInterrupt
        real(node, record, complete=complete)

    monkeypatch.setattr(study_mod, "_write_node_json", killed_before_the_last_file)
    with pytest.raises(KeyboardInterrupt):
        write_node(study, "sub-01", small(1))
    monkeypatch.undo()
    assert (study / "sub-01" / "v" / "zarr.json").is_file()
    with pytest.raises(StoreError, match="'sub-01' is not complete"):
        publish(study, "sub-01")
    with pytest.raises(StoreError, match="'sub-02' is not complete"):
        publish(study, "sub-02")
    assert published(study) == []
    write_node(study, "sub-01", small(1))  # the rerun rewrites the half-written node
    publish(study, "sub-01")
    assert published(study) == ["sub-01"]


@pytest.mark.parametrize("left", ["absent", "cut short"])
def test_a_write_killed_among_the_arrays_metadata_is_written_again(tmp_path, left):
    # a worker killed while it wrote a node's arrays leaves an array's zarr.json absent or
    # cut short under the node's metadata (not complete): the retry rewrites the node
    from roidask.outputs import study as study_module

    study = prepare_study(tmp_path / "study.zarr")
    write_node(study, "sub-01", small(1))
    meta = study / "sub-01" / "v" / "zarr.json"

    def leave(path: Path) -> None:
        if left == "absent":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:40])

    as_written = meta.read_bytes()
    leave(meta)  # the node complete: the user's damage or edit, never deleted
    with pytest.raises(OutputError, match=r"v/zarr.json changed since roidask wrote it"):
        write_node(study, "sub-01", small(2))
    meta.write_bytes(as_written)  # now as a killed rewrite leaves it: not complete
    record = json.loads((study / "sub-01" / "zarr.json").read_text())
    study_module._write_node_json(study / "sub-01", record, complete=False)
    leave(meta)
    write_node(study, "sub-01", small(2))
    publish(study, "sub-01")
    xr.testing.assert_equal(tree_of(study)["sub-01"].to_dataset(), small(2))


def test_root_rewrite_holds_one_node_at_a_time(tmp_path, monkeypatch):
    """Publishing rebuilds the root from the nodes' own metadata, one node at a time: the
    batch driver's memory stays flat however many subjects the study holds."""
    from roidask.outputs import study as study_module

    st = Study(tmp_path / "study.zarr")
    for i in range(40):
        write_node(st.path, f"sub-{i:02d}", small(i))
        st.publish(f"sub-{i:02d}")
    node_bytes = (st.path / "sub-00" / "zarr.json").stat().st_size
    parsed = []
    real = json.loads

    def loads(text, *args, **kwargs):
        parsed.append(len(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(study_module.json, "loads", loads)
    write_node(st.path, "sub-40", small(40))
    st.publish("sub-40")
    st.unpublish("sub-03")
    monkeypatch.undo()
    assert (st.path / "zarr.json").stat().st_size > 10 * node_bytes  # (nodes are indented)
    assert parsed and max(parsed) < 2 * node_bytes, (max(parsed), node_bytes)
    assert published(st.path) == [f"sub-{i:02d}" for i in range(41) if i != 3]
    tree = tree_of(st.path)
    xr.testing.assert_equal(tree["sub-40"].to_dataset(), small(40))
    xr.testing.assert_equal(tree["sub-39"].to_dataset(), small(39))
    # opening the study again (a rerun) keeps none of the arrays' metadata of the root
    hooks = []

    def loads_root(text, *args, **kwargs):
        if len(text) > 10 * node_bytes:
            hooks.append(kwargs.get("object_pairs_hook"))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(study_module.json, "loads", loads_root)
    st.close()  # one handle at a time
    again = Study(st.path)
    assert published(st.path) == sorted(again._listed)
    monkeypatch.undo()
    assert hooks and all(h is study_module._without_arrays for h in hooks), hooks
    root = study_module._read_root(st.path, arrays=False)["consolidated_metadata"]["metadata"]
    assert root["sub-07/v"] is None and root["sub-07"]["node_type"] == "group"


def test_a_published_node_that_cannot_be_read_stays_listed(tmp_path, monkeypatch):
    """A read error on a published node says nothing about it: the root is left as it
    was (pending nodes wait for a later rewrite, a failed unpublish can be retried);
    a published node that is no longer complete is dropped, with a warning."""

    st = Study(tmp_path / "study.zarr")
    for name in ("sub-01", "sub-02"):
        write_node(st.path, name, small(int(name[-1])))
        st.publish(name)
    write_node(st.path, "sub-03", small(3))
    make_unreadable(monkeypatch, "sub-01")
    monkeypatch.setattr(Study, "interval_s", 0.0)
    st.publish_later("sub-03")
    assert st.flush() == {}  # not now: kept for a later rewrite
    assert st.is_published("sub-03") and published(st.path) == ["sub-01", "sub-02"]
    with pytest.raises(OSError, match="Input/output error"):
        st.unpublish("sub-02")
    assert published(st.path) == ["sub-01", "sub-02"] and st.is_published("sub-02")
    errors = st.flush(force=True)  # the batch's last flush reports it
    assert list(errors) == ["sub-03"] and isinstance(errors["sub-03"], OSError)
    monkeypatch.undo()
    assert st.unpublish("sub-02") is True  # retried
    st.publish("sub-03")
    assert published(st.path) == ["sub-01", "sub-03"]
    (st.path / "sub-01" / "zarr.json").unlink()
    write_node(st.path, "sub-04", small(4))
    with pytest.warns(StudyNodeWarning, match="'sub-01' is not complete.*no longer listed"):
        st.publish("sub-04")
    assert published(st.path) == ["sub-03", "sub-04"]
    xr.testing.assert_equal(tree_of(st.path)["sub-04"].to_dataset(), small(4))
    # a subject dropped so by a rewrite that changes nothing else: the group level of the
    # subjects it had goes at the next one
    st.write_group(small(9))
    (st.path / "sub-03" / "zarr.json").unlink()
    with pytest.warns(StudyNodeWarning, match="'sub-03' is not complete"):
        st.publish("sub-04")  # listed already: no change of its own
    assert published(st.path) == ["group", "sub-04"]
    st.flush(force=True)
    assert published(st.path) == ["sub-04"]


def test_nodes_to_rewrite_are_hidden_together(tmp_path, monkeypatch):
    """A rerun with other parameters rewrites every node: they are hidden in groups, with
    the nodes published meanwhile, in one rewrite of the root each time (not one per
    node: quadratic in a study of thousands); a node stays listed until then."""
    from roidask.outputs import study as study_module

    st = Study(tmp_path / "study.zarr")
    for i in range(1, 5):
        write_node(st.path, f"sub-0{i}", small(i))
    for name in ("sub-01", "sub-02", "sub-03"):
        st.publish(name)
    rewrites = []
    real = study_module._rewrite_root

    def rewrite_root(path, attributes, listed, pending=None):
        rewrites.append((sorted(listed), sorted(pending or {})))
        return real(path, attributes, listed, pending)

    monkeypatch.setattr(study_module, "_rewrite_root", rewrite_root)
    monkeypatch.setattr(Study, "interval_s", math.inf)
    st.unpublish_later("sub-01")
    st.unpublish_later("sub-02")
    st.unpublish_later("sub-09")  # never published: nothing to hide
    st.publish_later("sub-04")
    assert st.flush() == {} and rewrites == []  # within the interval: nothing yet
    assert st.is_published("sub-01") and published(st.path) == ["sub-01", "sub-02", "sub-03"]
    assert st.flush(force=True) == {}
    assert rewrites == [(["sub-03"], ["sub-04"])]  # one rewrite: two hidden, one published
    assert published(st.path) == ["sub-03", "sub-04"]
    assert not st.is_published("sub-01") and not st.is_published("sub-09")
    assert st.flush(force=True) == {} and len(rewrites) == 1  # nothing left to do
    # publishing again cancels a hide
    st.unpublish_later("sub-03")
    st.publish_later("sub-03")
    st.flush(force=True)
    assert published(st.path) == ["sub-03", "sub-04"]

    # a read error leaves the root as it was: kept for a later flush, reported if forced
    real_entries = study_module._node_entries
    make_unreadable(monkeypatch, "sub-03")
    monkeypatch.setattr(Study, "interval_s", 0.0)
    st.unpublish_later("sub-04")
    assert st.flush() == {} and st.is_published("sub-04")
    assert st.flush(force=True, final=False) == {}  # now, but not the last chance
    errors = st.flush(force=True)
    assert list(errors) == ["sub-04"] and isinstance(errors["sub-04"], OSError)
    assert published(st.path) == ["sub-03", "sub-04"] and st.is_published("sub-04")

    # interrupted mid-rewrite: nothing done and nothing forgotten
    def interrupted(study, name, fingerprint):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "_node_entries", interrupted)
    st.unpublish_later("sub-04")
    st.publish_later("sub-01")
    with pytest.raises(KeyboardInterrupt):
        st.flush(force=True)
    monkeypatch.setattr(study_module, "_node_entries", real_entries)
    assert st.flush(force=True) == {}
    assert published(st.path) == ["sub-01", "sub-03"]
    st.unpublish_later("sub-03")
    st.cancel_unpublish("sub-03")  # after all
    assert st.flush(force=True) == {} and published(st.path) == ["sub-01", "sub-03"]


def test_rewrites_read_each_node_once_from_s3(s3_bucket, monkeypatch):
    """On S3 a rewrite reads each listed node's zarr.json with one GET (no HEAD first),
    a window of them at once, and lists them in order."""
    from roidask.io.locations import S3Path

    st = Study(f"{s3_bucket}/study.zarr")
    names = [f"sub-{i:02d}" for i in range(20)]
    for i, name in enumerate(names):
        write_node(st.path, name, small(i))
        st.publish_later(name)
    assert st.flush(force=True) == {}
    heads, gets = [], []
    real_get = S3Path.read_bytes
    monkeypatch.setattr(S3Path, "is_file", lambda self: heads.append(self.key) or True)
    monkeypatch.setattr(S3Path, "read_bytes", lambda self: gets.append(self.key) or real_get(self))
    assert st.unpublish("sub-05") is True
    monkeypatch.undo()
    kept = [n for n in names if n != "sub-05"]
    assert heads == []
    assert sorted(gets) == sorted(f"study.zarr/{n}/zarr.json" for n in kept)
    assert published(st.path) == kept


def test_verify_study_finds_damage(tmp_path):
    study = prepare_study(tmp_path / "study.zarr")
    for i in (1, 2, 3):
        write_node(study, f"sub-0{i}", small(i))
        publish(study, f"sub-0{i}")
    chunk = next((study / "sub-01" / "v" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    write_node(study, "sub-02", small(5))  # rewritten behind the driver's back
    (study / "sub-03" / "n" / "c" / "0").unlink()
    damaged = {(d.subject, d.array, d.reason) for d in verify_study(study)}
    assert ("sub-01", "v", "it fails its CRC-32C checksum") in damaged
    assert ("sub-02", "", "rewritten since it was published") in damaged
    assert ("sub-03", "n", "missing") in damaged


def test_verify_study_finds_metadata_edited_in_the_root(tmp_path):
    # the root's copy of an array's metadata is what xarray reads (a scale_factor added
    # there doubles the values): it must be its array's own
    study = prepare_study(tmp_path / "study.zarr")
    write_node(study, "sub-01", small(1))
    publish(study, "sub-01")
    assert verify_study(study) == []
    root = json.loads((study / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"]["sub-01/v"]["attributes"]["scale_factor"] = 2.0
    (study / "zarr.json").write_text(json.dumps(root))
    damaged = [(d.subject, d.array, d.reason) for d in verify_study(study)]
    assert damaged == [("sub-01", "v", "its metadata in the root differs from its own "
                                     "zarr.json (edited?)")]  # fmt: skip


_KILLED_WHILE_CREATING = """
import os, signal, sys
import roidask.outputs.study as study_module
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
study_module._write_root = killed
study_module.prepare_study(sys.argv[1])
"""


def test_a_run_killed_while_creating_the_study_leaves_none_behind(tmp_path):
    # a batch killed between creating the study's folder and writing its zarr.json left a
    # folder the rerun refused ("not a roidask study store"): the store appears whole
    study = tmp_path / "study.zarr"
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_CREATING, str(study)])
    assert killed.returncode == -signal.SIGKILL
    assert not study.exists()
    assert [p.name for p in tmp_path.iterdir()] != []  # the killed run's temporary sibling
    assert prepare_study(study) == study
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.zarr"]
    assert sorted(p.name for p in study.iterdir()) == ["zarr.json"]
    assert published(study) == []


def test_foreign_folders_and_files_are_left_alone(tmp_path):
    other = tmp_path / "study.zarr"
    other.mkdir()
    (other / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    with pytest.raises(OutputError, match="not a roidask study store"):
        prepare_study(other)
    with pytest.raises(OutputError, match="not a roidask study store"):
        Study(other)
    assert sorted(p.name for p in other.iterdir()) == ["zarr.json"]
    study = prepare_study(tmp_path / "mine.zarr")
    write_node(study, "sub-01", small(1))
    (study / "sub-01" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"notes\.txt"):
        write_node(study, "sub-01", small(2))
    assert (study / "sub-01" / "notes.txt").read_text() == "mine"
    xr.testing.assert_equal(xr.open_zarr(study / "sub-01", chunks=None).load(), small(1))


@pytest.mark.parametrize("what", ["nested", "array", "attribute", "no zarr.json"])
def test_a_users_arrays_groups_and_attributes_in_a_node_are_never_deleted(tmp_path, what):
    """Only the arrays of the node's chunk inventory (and its zarr.json as roidask wrote it,
    by its digest) are roidask's: a user's array, nested group or attribute is refused, as
    are files that no zarr.json proves roidask's."""
    study = prepare_study(tmp_path / "study.zarr")
    node = write_node(study, "sub-01", small(1))
    if what == "nested":
        zarr.open_group(str(node / "derived"), mode="w", zarr_format=3)
        zarr.create_array(str(node / "derived" / "myres"), shape=(2,), dtype="f4")[:] = 1
        want = r"did not write \(derived/myres/c/0, derived/myres/zarr.json, derived/zarr.json\)"
    elif what == "array":
        zarr.create_array(str(node / "myarr"), shape=(2,), dtype="f4")[:] = 1
        want = r"did not write \(myarr/c/0, myarr/zarr.json\)"
    elif what == "attribute":
        zarr.open_group(str(node), mode="r+").attrs["note"] = "mine"
        want = "its zarr.json was changed since roidask wrote it"
    else:
        (node / "zarr.json").unlink()
        want = "no zarr.json of roidask's, so nothing proves they are roidask's"
    before = sorted(p.relative_to(node) for p in node.rglob("*"))
    with pytest.raises(OutputError, match=want):
        write_node(study, "sub-01", small(2))
    assert sorted(p.relative_to(node) for p in node.rglob("*")) == before


# ----------------------------------------------------------------------- a real batch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Subjects 01-03 with ROIs and one, ``zero``, without (no face/house effect)."""
    from roidask.datasets import make_synthetic_dataset, make_synthetic_subject

    root = tmp_path_factory.mktemp("study-data")
    subjects = make_synthetic_dataset(
        root / "data", n_subjects=3, shape=SHAPE, n_volumes=N_VOLUMES, effect_pct=3.0
    )
    zero = make_synthetic_subject(
        root / "zero", shape=SHAPE, n_volumes=N_VOLUMES, effect_pct=0.0, seed=5
    )
    specs = [SubjectSpec(f"{i:02d}", (s.bold,), (s.labels,), s.mask_vt) for i, s in
             enumerate(subjects, start=1)]  # fmt: skip
    specs.append(SubjectSpec("zero", (zero.bold,), (zero.labels,), zero.mask_vt))
    return {"root": root, "specs": specs}


@pytest.fixture(scope="module")
def batch(dataset, tmp_path_factory):
    from roidask.cluster import get_client

    out = tmp_path_factory.mktemp("study-batch") / "batch"
    with (
        get_client(processes=False, n_workers=1, threads_per_worker=2),
        pytest.warns(EmptyMaskWarning),
    ):
        table = run_batch(dataset["specs"], out, plots=False)
    assert table["status"].tolist() == ["done"] * 4
    return out


def test_batch_writes_the_study(batch):
    study = batch / "study.zarr"
    tree = tree_of(study)
    subjects = ["sub-01", "sub-02", "sub-03", "sub-zero"]
    assert sorted(tree.children) == ["group", *subjects]
    for name in subjects:
        ds = tree[name].to_dataset()
        n_rois = len(pd.read_csv(batch / name / "rois.tsv", sep="\t"))
        assert_results_schema(ds, n_rois=n_rois)
        assert_matches_outputs(ds, batch / name)
        assert ds.attrs["subject"] == name.removeprefix("sub-")
        prov = json.loads((batch / name / "provenance.json").read_text())
        assert ds.attrs[FINGERPRINT_ATTR] == prov["fingerprint"]
        # the node is the subject's results.zarr, variable by variable
        with xr.open_zarr(batch / name / "results.zarr", chunks=None) as results:
            xr.testing.assert_identical(
                ds.drop_attrs(deep=False), results.load().drop_attrs(deep=False)
            )
    assert tree["sub-zero"].sizes["roi"] == 0 < tree["sub-01"].sizes["roi"]
    assert schema(tree["sub-zero"].to_dataset()) == schema(tree["sub-01"].to_dataset())

    group = tree["group"].to_dataset()
    assert group.attrs["subjects"] == subjects and group.attrs["n_subjects"] == 4
    for name in ("tstat", "logp", "roi_overlap", "roi_overlap_fraction"):
        img = nib.load(batch / "group" / f"{name}.nii.gz")
        assert np.array_equal(np.asarray(img.dataobj), group[name].values), name
        assert group[name].attrs["units"] == "1"
    assert group["roi_overlap"].dtype == np.int16 and int(group["roi_overlap"].max()) >= 2
    np.testing.assert_allclose(group.attrs["affine"], img.affine)
    assert verify_study(study) == []
    assert not [
        p.name for p in batch.iterdir() if p.name.startswith(".") and p.name != ".roidask.json"
    ]


def test_plain_xarray_analyses_the_study(batch):
    """What the notebook does, with xarray and pandas alone: roidask is never imported."""
    out = run_plain_reader(
        f"""
        import pandas as pd
        import xarray as xr

        tree = xr.open_datatree({str(batch / "study.zarr")!r}, engine="zarr")
        subjects = [name for name in tree.children if name.startswith("sub-")]
        frames = []
        for name in subjects:
            ds = tree[name].to_dataset()
            if ds.sizes["roi"] == 0:
                continue  # no ROI: nothing to average
            means = ds["signals"].groupby("condition").mean()
            frames.append(means.to_dataframe().reset_index().assign(subject=name))
        tidy = pd.concat(frames)
        group = tidy.groupby(["roi", "condition"])["signals"].mean()
        assert set(tidy["subject"]) == {{"sub-01", "sub-02", "sub-03"}}
        print("subjects:", len(subjects), "rows:", len(tidy), "groups:", len(group))
        print("overlap max:", int(tree["group"]["roi_overlap"].max()))
        """
    )
    assert "subjects: 4" in out and "overlap max:" in out


def test_one_batch_or_group_level_at_a_time(batch, dataset, tmp_path, monkeypatch):
    """A batch or group level writing a folder or study store that another command is
    writing is refused with one line, before any input is read, with nothing written; so
    is a batch that would leave an earlier batch's study store out of date (``--no-study``)."""
    import shutil

    from roidask.batch import group as group_module
    from roidask.batch.group import group_from

    def no_input_read(*args):
        raise AssertionError("an input was read before the lock was tried")

    before = tree_state(batch)
    for held in (batch, batch / "study.zarr"):
        with locked_by_another_process(held):
            with pytest.raises(OutputError, match=f"^out {re.escape(str(held))}: another "
                               "roidask command is writing it"):  # fmt: skip
                run_batch(dataset["specs"], batch, plots=False)
    for held in (batch, batch / "study.zarr"):  # the group folder, or the group node
        with locked_by_another_process(held), monkeypatch.context() as patch:
            patch.setattr(group_module, "_batch_subject_dirs", no_input_read)
            with pytest.raises(OutputError, match=f"^study {re.escape(str(held))}: another "):
                group_from(batch)
    # another study's group level written into this batch folder's group/
    other = shutil.copytree(batch / "study.zarr", tmp_path / "other.zarr")
    with locked_by_another_process(batch):
        with pytest.raises(OutputError, match=f"^out {re.escape(str(batch))}: another "):
            group_from(other, out=batch / "group")

    with pytest.raises(OutputError, match=r"holds study.zarr, the study store of an earlier "
                       r"batch, .* \(study=False\) would leave"):  # fmt: skip
        run_batch(dataset["specs"], batch, plots=False, study=False)
    assert tree_state(batch) == before
    # once they are free, a group level runs, and lets them go (a batch runs after it)
    assert group_from(batch) == batch / "group"
    assert run_batch(dataset["specs"], batch, plots=False)["status"].tolist() == ["skipped"] * 4


def test_a_damaged_study_root_says_what_to_do(batch, dataset, tmp_path):
    """A study store whose root zarr.json is damaged, beside complete nodes: roidask's own,
    damaged (remove it and rerun), not 'a folder of someone else'."""
    import shutil

    copy = shutil.copytree(batch, tmp_path / "batch")
    root = copy / "study.zarr" / "zarr.json"
    root.write_bytes(root.read_bytes()[:1000])
    before = tree_state(copy)
    want = r"root metadata .*; it is a damaged roidask study store: remove .*study\.zarr and run"
    with pytest.raises(OutputError, match=want):
        run_batch(dataset["specs"], copy, plots=False)
    assert tree_state(copy) == before


def test_rerun_skips_and_study_can_be_off(batch, dataset, tmp_path):
    from roidask.cluster import get_client

    study = batch / "study.zarr"
    before = {p: p.stat().st_mtime_ns for p in study.rglob("*") if p.is_file()}
    root_json = (study / "zarr.json").read_text()
    with get_client(processes=False, n_workers=1, threads_per_worker=2):
        table = run_batch(dataset["specs"], batch, plots=False)
        assert table["status"].tolist() == ["skipped"] * 4
        # a subject missing from the study is redone, even with its folder complete; the
        # subjects this batch does not have are no longer listed (their files kept)
        unpublish(study, "sub-02")
        shutil.rmtree(study / "sub-02")
        with pytest.warns(StudyNodeWarning, match=r"2 subject\(s\) of an earlier batch .*"
                          r"\(sub-03, sub-zero\); their files are kept"):  # fmt: skip
            table = run_batch(dataset["specs"][:2], batch, plots=False)
        assert table["status"].tolist() == ["skipped", "done"]
        off = tmp_path / "off"
        table = run_batch(dataset["specs"][:2], off, plots=False, study=False)
        assert table["status"].tolist() == ["done", "done"]
    after = {p: p.stat().st_mtime_ns for p in study.rglob("*") if p.is_file()}
    untouched = [
        p for p in before if not {"sub-02", "group"} & set(p.parts) and p != study / "zarr.json"
    ]
    assert all(after[p] == before[p] for p in untouched)
    assert sorted(tree_of(study).children) == ["group", "sub-01", "sub-02"]
    assert tree_of(study)["group"].attrs["subjects"] == ["sub-01", "sub-02"]
    assert json.loads(root_json)["attributes"] == tree_of(study).attrs
    assert not (off / "study.zarr").exists() and (off / "group" / "tstat.nii.gz").is_file()


def test_an_interrupted_batch_hides_no_subject_of_an_earlier_one(dataset, tmp_path, monkeypatch):
    """The nodes of subjects a batch does not have are hidden once the batch is whole: one
    interrupted (Ctrl-C in its first subject) leaves them listed."""
    from roidask.batch import schedule
    from roidask.pipeline import PipelineParams

    specs = dataset["specs"][:2]
    out = tmp_path / "batch"
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["done", "done"]

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(schedule, "run_subject", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_batch(specs[:1], out, plots=False, params=PipelineParams(threshold=4.0))
    assert published(out / "study.zarr") == ["sub-02"]  # sub-01 hidden to be rewritten


def test_a_rerun_redoes_a_subject_whose_node_lost_a_chunk(dataset, tmp_path):
    """A published node with a chunk deleted (plain xarray reads it as NaN) is not
    complete: the rerun writes the subject again instead of skipping it."""
    specs = dataset["specs"][:2]
    out = tmp_path / "batch"
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["done", "done"]
    study = out / "study.zarr"
    damage_chunk(study, "sub-02/tstat/c/0/0/0", "delete")
    assert [d.chunk for d in verify_study(study)] == ["c/0/0/0"]
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["skipped", "done"]
    assert verify_study(study) == []
    assert np.isfinite(tree_of(study)["sub-02"]["tstat"].values).any()


def test_a_published_node_is_hidden_while_it_is_rewritten(dataset, tmp_path, monkeypatch):
    """Other parameters on a rerun: the driver unpublishes the node before the subject's
    run rewrites it, and publishes the new one."""
    from roidask.batch import schedule
    from roidask.pipeline import PipelineParams

    specs = dataset["specs"][:2]
    out = tmp_path / "batch"
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["done", "done"]
    study = out / "study.zarr"
    seen = []
    real = schedule.run_subject

    def run_subject(**kwargs):
        seen.append((kwargs["out"].name, sorted(published(study))))
        return real(**kwargs)

    monkeypatch.setattr(schedule, "run_subject", run_subject)
    monkeypatch.setattr(Study, "interval_s", math.inf)  # hidden only when a thread would idle
    table = run_batch(specs, out, plots=False, params=PipelineParams(threshold=4.0))
    assert table["status"].tolist() == ["done", "done"]
    # each node hidden while rewritten, and the group level of the old ones with the first
    assert sorted(name for name, _ in seen) == ["sub-01", "sub-02"]
    assert all(name not in listed and "group" not in listed for name, listed in seen), seen
    for name in ("sub-01", "sub-02"):
        ds = tree_of(study)[name].to_dataset()
        prov = json.loads((out / name / "provenance.json").read_text())
        assert ds.attrs["threshold"] == 4.0 and ds.attrs[FINGERPRINT_ATTR] == prov["fingerprint"]
    assert "group" in tree_of(study).children


def test_a_rerun_hides_the_nodes_it_rewrites_together(dataset, tmp_path, monkeypatch):
    """Other parameters for every subject: their nodes are hidden in groups before their
    runs rewrite them, not each with its own rewrite of the root; a node that cannot be
    hidden fails its subject (with the error), not the batch."""
    from roidask.batch import schedule
    from roidask.outputs import study as study_module
    from roidask.pipeline import PipelineParams

    specs = [s for s in dataset["specs"] if s.subject != "zero"]
    subjects = ["sub-01", "sub-02", "sub-03"]
    out = tmp_path / "batch"
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["done"] * 3
    study = out / "study.zarr"
    hides, seen = [], []
    real_rewrite, real_run = study_module._rewrite_root, schedule.run_subject

    def rewrite_root(path, attributes, listed, pending=None):
        hidden = set(published(path)) - {*listed, *(pending or {})}
        if hidden:
            hides.append(sorted(hidden))
        return real_rewrite(path, attributes, listed, pending)

    def run_subject(**kwargs):
        seen.append((kwargs["out"].name, published(study)))
        return real_run(**kwargs)

    monkeypatch.setattr(study_module, "_rewrite_root", rewrite_root)
    monkeypatch.setattr(schedule, "run_subject", run_subject)
    monkeypatch.setattr(Study, "interval_s", math.inf)  # hidden only when a thread would idle
    table = run_batch(specs, out, plots=False, params=PipelineParams(threshold=4.0))
    assert table["status"].tolist() == ["done"] * 3
    assert sorted(name for hidden in hides for name in hidden) == ["group", *subjects], hides
    assert len([h for h in hides if h != ["group"]]) <= 2, hides  # not one per subject
    assert sorted(name for name, _ in seen) == subjects
    assert all(name not in listed for name, listed in seen)  # hidden while rewritten
    assert sorted(tree_of(study).children) == ["group", *subjects]
    assert all(tree_of(study)[name].attrs["threshold"] == 4.0 for name in subjects)

    # the root cannot be rewritten (an I/O error): the subject fails with the error and
    # is not run; so does hiding the group node, at the end
    def no_rewrite(path, attributes, listed, pending=None):
        raise OSError(5, "Input/output error", str(path / "zarr.json"))

    monkeypatch.setattr(study_module, "_rewrite_root", no_rewrite)
    seen.clear()
    with pytest.raises(OSError, match="Input/output error"):
        run_batch(specs, out, plots=False, params=PipelineParams(threshold=4.5))
    table = pd.read_csv(out / "batch.tsv", sep="\t", dtype=str, keep_default_na=False)
    row = table.set_index("subject").loc["01"]
    assert row["status"] == "failed" and "Input/output error" in row["error"], row.to_dict()
    assert seen == []  # not run: its node could not be hidden
    assert tree_of(study)["sub-01"].attrs["threshold"] == 4.0  # still listed, untouched


def test_a_root_rewrite_that_fails_once_is_tried_again(dataset, tmp_path, monkeypatch):
    """A rerun with other parameters: the rewrite of the root that would hide a node fails
    once (a brief I/O error) while another subject waits to be published; both are done
    at a later rewrite, and every subject is done."""
    from roidask.outputs import study as study_module
    from roidask.pipeline import PipelineParams

    specs = [s for s in dataset["specs"] if s.subject != "zero"]
    out = tmp_path / "batch"
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["done"] * 3
    real = study_module._rewrite_root
    failed = []

    def rewrite_root(path, attributes, listed, pending=None):
        hidden = set(published(path)) - {*listed, *(pending or {})}
        if hidden and not failed:
            failed.append(sorted(hidden))
            raise OSError(5, "Input/output error (brief)")
        return real(path, attributes, listed, pending)

    monkeypatch.setattr(study_module, "_rewrite_root", rewrite_root)
    monkeypatch.setattr(Study, "interval_s", math.inf)  # rewrites only when a thread idles
    table = run_batch(specs, out, plots=False, params=PipelineParams(threshold=4.0))
    assert failed and table["status"].tolist() == ["done"] * 3, table.to_dict("records")
    tree = tree_of(out / "study.zarr")
    assert all(tree[f"sub-0{i}"].attrs["threshold"] == 4.0 for i in (1, 2, 3))


def test_finished_subjects_are_published_together(dataset, tmp_path, monkeypatch):
    """The root holds every node's metadata: one rewrite per group of finished subjects,
    not per subject (quadratic in a study of thousands), each node checked."""
    from roidask.outputs import study as study_module

    rewrites = []
    real = study_module._rewrite_root

    def rewrite_root(path, attributes, listed, pending=None):
        rewrites.append(sorted({*listed, *(pending or {})}))
        return real(path, attributes, listed, pending)

    monkeypatch.setattr(study_module, "_rewrite_root", rewrite_root)
    monkeypatch.setattr(Study, "interval_s", math.inf)  # only the batch's final flush publishes
    specs = [s for s in dataset["specs"] if s.subject != "zero"]
    out = tmp_path / "batch"
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["done"] * 3
    subjects = ["sub-01", "sub-02", "sub-03"]
    # the subjects at once, then the group level
    assert rewrites == [subjects, ["group", *subjects]]
    # a node that is not complete is not published, the others are
    st = Study(tmp_path / "other.zarr")
    for name in ("sub-01", "sub-02"):
        write_node(st.path, name, tree_of(out / "study.zarr")[name].to_dataset(), attrs={})
    (st.path / "sub-03").mkdir()
    for name in ("sub-01", "sub-02", "sub-03"):
        st.publish_later(name)
    assert st.flush() == {} and published(st.path) == []  # not yet: within the interval
    errors = st.flush(force=True)
    assert list(errors) == ["sub-03"] and "not complete" in str(errors["sub-03"])
    assert published(st.path) == ["sub-01", "sub-02"]
    assert st.is_published("sub-01") and not st.is_published("sub-03")


# ----------------------------------------------------------------------- killed and resumed


def batch_statuses(out: Path) -> dict[str, str]:
    try:
        table = pd.read_csv(out / "batch.tsv", sep="\t", dtype=str, keep_default_na=False)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return {}
    return dict(zip(table["subject"], table["status"], strict=True))


def test_batch_killed_after_a_subject_then_resumed(dataset, tmp_path):
    specs = [s for s in dataset["specs"] if s.subject != "zero"]
    first = dataset["specs"][0]
    extra = SubjectSpec("04", first.bold, first.labels, first.mask)  # 4 subjects, one at a time
    rows = [(s.subject, ";".join(map(str, s.bold)), s.labels[0], s.mask) for s in specs]
    rows.append((extra.subject, extra.bold[0], extra.labels[0], extra.mask))
    manifest = write_manifest(tmp_path / "manifest.tsv", rows)
    out = tmp_path / "batch"
    study = out / "study.zarr"
    cmd = [str(ROIDASK), "batch", str(manifest), "--out", str(out), "--no-plots", "--quiet",
           "--n-workers", "1", "--threads-per-worker", "1", "--max-concurrent", "1"]  # fmt: skip
    log = tmp_path / "batch.log"
    proc = start(cmd, log)
    try:
        deadline = time.monotonic() + 120
        while not (study.is_dir() and [n for n in published(study) if n.startswith("sub-")]):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no subject published in 120 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    visible = [n for n in published(study) if n.startswith("sub-")]
    assert 1 <= len(visible) < 4, visible
    # plain xarray sees whole subjects only: each equals its output folder
    tree = tree_of(study)
    assert sorted(tree.children) == visible
    for name in visible:
        assert_matches_outputs(tree[name].to_dataset(), out / name)
    started = {n: json.loads((out / n / "provenance.json").read_text())["started_utc"]
               for n in visible}  # fmt: skip
    node_files = {
        p: p.stat().st_mtime_ns for n in visible for p in (study / n).rglob("*") if p.is_file()
    }

    # the rerun finishes every subject and computes none twice
    log2 = tmp_path / "rerun.log"
    rerun = start(cmd, log2)
    try:
        assert rerun.wait(timeout=150) == 0, log2.read_text()
    finally:
        kill_group(rerun)
    final = batch_statuses(out)
    assert final == {
        s: ("skipped" if f"sub-{s}" in visible else "done") for s in ("01", "02", "03", "04")
    }
    for name in visible:
        prov = json.loads((out / name / "provenance.json").read_text())
        assert prov["started_utc"] == started[name]
    assert all(p.stat().st_mtime_ns == t for p, t in node_files.items())
    tree = tree_of(study)
    assert sorted(tree.children) == ["group", "sub-01", "sub-02", "sub-03", "sub-04"]
    for name in ("sub-01", "sub-02", "sub-03", "sub-04"):
        assert_matches_outputs(tree[name].to_dataset(), out / name)
    assert verify_study(study) == []


def test_a_rerun_with_other_parameters_runs_each_subject_once(dataset, tmp_path, monkeypatch):
    """A node published with other analysis parameters is hidden and its subject run once:
    no first task that hashes the inputs only to hand the subject back. The same
    parameters: one task each, which finds the subject complete."""
    from roidask.batch import schedule
    from roidask.pipeline import PipelineParams

    specs = [s for s in dataset["specs"] if s.subject != "zero"][:2]
    out = tmp_path / "batch"
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["done"] * 2
    runs = []
    real = schedule._run_one

    def run_one(job, *args, **kwargs):
        runs.append(job.spec.subject)
        return real(job, *args, **kwargs)

    monkeypatch.setattr(schedule, "_run_one", run_one)
    table = run_batch(specs, out, plots=False, params=PipelineParams(threshold=4.0))
    assert table["status"].tolist() == ["done"] * 2
    assert sorted(runs) == sorted(s.subject for s in specs)  # once each (twice before)
    assert all(tree_of(out / "study.zarr")[f"sub-0{i}"].attrs["threshold"] == 4.0 for i in (1, 2))
    runs.clear()
    table = run_batch(specs, out, plots=False, params=PipelineParams(threshold=4.0))
    assert table["status"].tolist() == ["skipped"] * 2 and len(runs) == 2


def test_a_users_nested_objects_in_a_node_in_s3_are_refused_with_one_listing(s3_bucket):
    """In S3 too only the node's layout is roidask's; the up-front check of a batch lists
    the store once for every node."""
    from roidask.io.locations import as_location, write_file
    from roidask.outputs.study import check_nodes_writable

    study = prepare_study(f"{s3_bucket}/study.zarr")
    write_node(study, "sub-01", small(1))
    write_node(study, "sub-02", small(2))
    check_nodes_writable(study, ["sub-01", "sub-02", "sub-03"])
    write_file(as_location(f"{study}/sub-02/derived/myres/zarr.json"), b"{}")
    want = r"study node s3://.*/sub-02: holds files roidask did not write \(derived/myres/zarr"
    with pytest.raises(OutputError, match=want):
        check_nodes_writable(study, ["sub-01", "sub-02"])
    with pytest.raises(OutputError, match=want):
        write_node(study, "sub-02", small(3))
    assert as_location(f"{study}/sub-02/derived/myres/zarr.json").is_file()
