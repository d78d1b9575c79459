"""``roidask batch`` with no shared file system (issue 18): an s3:// manifest whose paths are
all s3://, s3:// outputs, a real scheduler and two worker processes on loopback against a
moto S3 server; results bit-identical to the same batch on local files; a killed batch
resumes."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers.s3 as s3_helpers
import numpy as np
import obstore
import pandas as pd
import pytest
import xarray as xr
from helpers.cluster import kill_group, start, start_cluster, stop
from helpers.files import write_manifest
from helpers.results import DATA_FILES
from obstore.store import S3Store

from roidask.io.locations import zarr_store

pytestmark = pytest.mark.timeout(300)

s3_server = s3_helpers.s3_server
ROIDASK = Path(sys.executable).with_name("roidask")
N_SUBJECTS = 3
GROUP_FILES = ("tstat.nii.gz", "logp.nii.gz", "roi_overlap.nii.gz")


def _store(url: str) -> S3Store:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return S3Store(bucket, prefix=prefix or None)


def objects(url: str) -> dict[str, dict]:
    """Every object under ``url``: relative key -> metadata."""
    return {m["path"]: m for page in obstore.list(_store(url)) for m in page}


def get(url: str, key: str) -> bytes:
    return bytes(obstore.get(_store(url), key).bytes())


def statuses(url: str) -> dict[str, str]:
    try:
        table = pd.read_csv(
            __import__("io").BytesIO(get(url, "batch.tsv")), sep="\t", dtype=str
        ).fillna("")
    except FileNotFoundError:
        return {}
    return dict(zip(table["subject"], table["status"], strict=True))


def batch_cmd(manifest: str, out: str, address: str, *args: str) -> list[str]:
    return [str(ROIDASK), "batch", manifest, "--out", out, "--no-plots", "--quiet",
            "--scheduler", address, *args]  # fmt: skip


def run_cmd(cmd: list[str], timeout: float = 200) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, s3_server):
    """Subjects on disk (manifest with relative paths) and the same files in S3."""
    from roidask.datasets import make_synthetic_dataset

    root = tmp_path_factory.mktemp("s3-batch-data")
    subjects = make_synthetic_dataset(
        root / "data", n_subjects=N_SUBJECTS, shape=(12, 14, 10), n_volumes=240, effect_pct=3.0
    )
    rows = [
        (f"{i:02d}", *(p.relative_to(root) for p in (s.bold, s.labels, s.mask_vt)))
        for i, s in enumerate(subjects, start=1)
    ]
    manifest = write_manifest(root / "manifest.tsv", rows)
    bucket = s3_server.new_bucket("batch")
    store = _store(bucket)
    for path in [manifest, *(p for s in subjects for p in (s.bold, s.labels, s.mask_vt))]:
        obstore.put(store, path.relative_to(root).as_posix(), path.read_bytes())
    return {"root": root, "manifest": manifest, "bucket": bucket}


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and two single-threaded worker processes on 127.0.0.1 (moto's env)."""
    logs = tmp_path / "cluster"
    logs.mkdir()
    address, procs = start_cluster(logs, n_workers=2, memory_limit="1GiB")
    try:
        yield address
    finally:
        stop(procs)


def test_batch_from_and_to_s3_matches_local_and_resumes(dataset, cluster, tmp_path):
    bucket = dataset["bucket"]
    manifest = f"{bucket}/manifest.tsv"
    out = f"{bucket}/out"
    # killed after a first subject is done (one subject at a time)
    batch = start(batch_cmd(manifest, out, cluster, "--max-concurrent", "1"), tmp_path / "b.log")
    try:
        deadline = time.monotonic() + 150
        while "done" not in statuses(out).values():
            assert batch.poll() is None, (tmp_path / "b.log").read_text()
            assert time.monotonic() < deadline, "no subject done in time"
            time.sleep(0.05)
        assert ".out.roidask-lease" in objects(bucket)  # the batch holds the prefix
    finally:
        kill_group(batch)
    assert batch.returncode == -signal.SIGKILL
    done = sorted(s for s, st in statuses(out).items() if st == "done")
    assert 1 <= len(done) < N_SUBJECTS
    before = {
        k: (m["e_tag"], m["last_modified"])
        for k, m in objects(out).items()
        if k.startswith(f"sub-{done[0]}/")
    }
    assert f"sub-{done[0]}/.roidask.json" in before

    proc = run_cmd(batch_cmd(manifest, out, cluster))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = statuses(out)
    assert final == {f"{i:02d}": "skipped" if f"{i:02d}" in done else "done"
                     for i in range(1, N_SUBJECTS + 1)}  # fmt: skip
    after = objects(out)
    # the skipped subject: untouched (not written again, even with the same bytes)
    assert {k: (after[k]["e_tag"], after[k]["last_modified"]) for k in before} == before

    # the same batch on local files, on the same cluster: the same bits
    local = tmp_path / "local"
    proc = run_cmd(batch_cmd(str(dataset["manifest"]), str(local), cluster))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    here = sorted(
        p.relative_to(local).as_posix()
        for p in local.rglob("*")
        if p.is_file() and p.name != "batch.tsv"
    )
    assert sorted(k for k in after if k != "batch.tsv") == here
    for i in range(1, N_SUBJECTS + 1):
        sub = f"sub-{i:02d}"
        for name in DATA_FILES:
            assert get(out, f"{sub}/{name}") == (local / sub / name).read_bytes(), (sub, name)
        chunks = [k for k in here if k.startswith(f"{sub}/results.zarr/") and "/c/" in k]
        assert chunks and all(get(out, k) == (local / k).read_bytes() for k in chunks)
        provenance = json.loads(get(out, f"{sub}/provenance.json"))
        assert provenance["scheduler"].startswith("dask worker ")  # run inside a worker
        assert all(r["path"].startswith("s3://") and r["etag"] for r in provenance["inputs"])
    for name in GROUP_FILES:
        assert get(out, f"group/{name}") == (local / "group" / name).read_bytes(), name
    # the same subjects (their results' fingerprints differ: S3 inputs are known by ETag)
    remote = pd.read_csv(io.BytesIO(get(out, "group/subjects.tsv")), sep="\t")
    assert (
        remote["subject"].tolist()
        == pd.read_csv(local / "group" / "subjects.tsv", sep="\t")["subject"].tolist()
    )
    # the study store, read by plain xarray from S3
    tree = xr.open_datatree(zarr_store(f"{out}/study.zarr"), engine="zarr")
    want = xr.open_datatree(str(local / "study.zarr"), engine="zarr")
    assert (
        sorted(tree.children)
        == sorted(want.children)
        == ["group", *(f"sub-{i:02d}" for i in range(1, N_SUBJECTS + 1))]
    )
    for name, node in want.children.items():
        for var in node.data_vars:
            a, b = tree[name][var].values, node[var].values
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), (name, var)


def test_s3_manifest_paths_and_fingerprints(dataset):
    from roidask.batch.manifest import check_subjects, read_manifest
    from roidask.batch.schedule import fingerprint
    from roidask.exceptions import UnreadableFileError
    from roidask.io.locations import S3Path
    from roidask.pipeline import PipelineParams

    bucket = dataset["bucket"]
    specs = read_manifest(f"{bucket}/manifest.tsv")
    first = specs[0]
    local = read_manifest(dataset["manifest"])  # the same manifest on disk
    root = dataset["root"]
    assert [s.files for s in specs] == [
        tuple(S3Path.from_url(f"{bucket}/{p.relative_to(root).as_posix()}") for p in s.files)
        for s in local
    ]  # relative paths in an s3:// manifest are relative to it
    check_subjects(specs)
    digest, inputs = fingerprint(first, PipelineParams())
    assert all("etag" in r and "sha256" not in r for r in inputs)  # no download
    # another content of one input (same size): another fingerprint
    labels = first.labels[0]
    original = labels.read_bytes()
    changed = original.replace(b"face", b"fAce", 1)
    assert len(changed) == len(original) and changed != original
    obstore.put(_store(bucket), labels.key, changed)
    try:
        assert fingerprint(first, PipelineParams())[0] != digest
    finally:
        obstore.put(_store(bucket), labels.key, original)
    assert fingerprint(first, PipelineParams())[0] == digest
    # absolute s3:// paths in a manifest, and a missing object named in one line
    rows = "subject\tbold\tlabels\tmask\n" + (
        f"x\t{bucket}/data/nope.nii.gz\t{labels}\t{first.mask}\n"
    )
    obstore.put(_store(bucket), "abs.tsv", rows.encode())
    (spec,) = read_manifest(f"{bucket}/abs.tsv")
    assert spec.labels == (labels,)
    on_disk = dataset["root"] / "s3-paths.tsv"  # a local manifest of s3:// paths
    on_disk.write_text(rows)
    assert read_manifest(on_disk) == [spec]
    with pytest.raises(UnreadableFileError, match=r"^manifest: subject 'x': bold s3://.*nope"):
        check_subjects([spec])


def test_a_second_batch_on_an_s3_prefix_is_refused_before_anything(dataset, capsys):
    from roidask.cli import main
    from roidask.io.locations import RemoteLease, S3Path

    bucket = dataset["bucket"]
    out = f"{bucket}/busy"
    with RemoteLease(S3Path.from_url(out), param="out"):  # a batch writing it
        assert main(["batch", f"{bucket}/manifest.tsv", "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another roidask command is writing it" in err[0], err
    assert objects(out) == {}  # nothing written, no cluster started


def test_a_group_level_whose_upload_was_killed_is_not_current(s3_server, tmp_path):
    """A killed upload of ``group/`` leaves its pending marker (and maybe the new
    subjects.tsv): not the group level of these subjects, however its table reads."""
    from roidask.batch.group import group_is_current
    from roidask.io.locations import as_location

    dirs = []
    for i, fingerprint in ((1, "a" * 64), (2, "b" * 64)):
        folder = tmp_path / f"sub-0{i}"
        folder.mkdir()
        (folder / "provenance.json").write_text(json.dumps({"fingerprint": fingerprint}))
        dirs.append(folder)
    group = as_location(f"{s3_server.new_bucket()}/batch/group")
    table = "subject\tfingerprint\n" + "".join(
        f"{d.name}\t{c * 64}\n" for d, c in zip(dirs, "ab", strict=True)
    )
    (group / "subjects.tsv").write_text(table)
    files = ["logp.nii.gz", "subjects.tsv", "tstat.nii.gz"]
    marker = {"written_by": "roidask", "kind": "group", "files": files}
    (group / ".roidask.json").write_text(json.dumps({**marker, "complete": False}))
    assert not group_is_current(dirs, group)
    sizes = {"subjects.tsv": len(table.encode())}
    (group / ".roidask.json").write_text(json.dumps({**marker, "files": ["subjects.tsv"],
                                                     "bytes": sizes}))  # fmt: skip
    assert group_is_current(dirs, group)  # the same table, its upload complete
