"""Tests of ``roidask batch``: many subjects on one dask.distributed cluster.

Subjects are small synthetic ones generated once per module. Every subject's
outputs are compared, bit for bit (NIfTI and TSV bytes, zarr arrays), with a
single-process ``roidask run`` of that subject. Schedulers, workers and batch
processes are real processes on 127.0.0.1, each in its own process group that
the fixtures kill in ``finally``; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import psutil
import pytest
import xarray as xr
import zarr
from helpers.cluster import (
    DASK,
    forkserver_of,
    kill_group,
    make_ca_and_cert,
    process_group,
    running,
    start,
    start_cluster,
    stop,
    tls_cli_args,
    wait_for_worker,
    worker_log,
)
from helpers.files import as_roidask_wrote, same_size_edit, write_manifest
from helpers.results import DATA_FILES
from scipy import stats

from roidask._atomic import MARKER
from roidask.batch import SubjectSpec, check_batch_folder, check_subjects, group_level, run_batch
from roidask.exceptions import (
    GridMismatchError,
    InvalidParameterError,
    ManifestError,
    OutputError,
    RoidaskTypeError,
    StudyNodeWarning,
)
from roidask.outputs.study import node_attrs

pytestmark = pytest.mark.timeout(180)

ROIDASK = Path(sys.executable).with_name("roidask")
SHAPE = (16, 20, 12)
N_VOLUMES = 726
N_SUBJECTS = 4
# provenance.json fields that legitimately differ between `roidask run` and a batch
VOLATILE = {
    "timings_s",
    "peak_rss_bytes",
    "scheduler",
    "fingerprint",
    "batch_id",
    "subject",
    "chunks",
    "started_utc",
    "finished_utc",
    "command_line",
}


# --------------------------------------------------------------------------- helpers


def files_of(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def read_zarr(path: Path) -> tuple[dict, dict]:
    # the files themselves (test_pipeline reads the consolidated metadata)
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    return {k: group[k][...] for k in sorted(group.array_keys())}, dict(group.attrs)


def assert_same_outputs(got: Path, ref: Path, *, figures: bool) -> None:
    """``got`` holds exactly ``ref``'s outputs (a `roidask run`), data bit-identical."""
    expected = files_of(ref)
    if not figures:
        expected = [f for f in expected if not f.startswith("figures/")]
    assert files_of(got) == expected
    for name in DATA_FILES:
        assert (got / name).read_bytes() == (ref / name).read_bytes(), f"{got.name}/{name}"
    arrays, attrs = read_zarr(got / "results.zarr")
    ref_arrays, ref_attrs = read_zarr(ref / "results.zarr")
    assert attrs == ref_attrs
    assert list(arrays) == list(ref_arrays)
    for key, value in arrays.items():
        want = ref_arrays[key]
        assert value.dtype == want.dtype and value.shape == want.shape, key
        floating = value.dtype.kind in "fc"
        assert np.array_equal(value, want, equal_nan=floating), f"{got.name}: {key} differs"
    prov = json.loads((got / "provenance.json").read_text())
    ref_prov = json.loads((ref / "provenance.json").read_text())
    if not figures:
        ref_prov["outputs"] = [o for o in ref_prov["outputs"] if not o.startswith("figures/")]
    assert {k: v for k, v in prov.items() if k not in VOLATILE} == {
        k: v for k, v in ref_prov.items() if k not in VOLATILE
    }
    assert len(prov["fingerprint"]) == 64
    assert set(prov["timings_s"]) == set(ref_prov["timings_s"])


def ran_as(sub: Path) -> str:
    """The granularity a subject ran with, from its provenance."""
    scheduler = json.loads((sub / "provenance.json").read_text())["scheduler"]
    if scheduler.startswith("dask worker "):  # the whole subject in one worker
        return "subject"
    assert scheduler.startswith("dask cluster "), scheduler
    return "block"


def batch_table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "batch.tsv", sep="\t", dtype=str, keep_default_na=False)


def statuses(out: Path) -> dict[str, str]:
    """Subject -> status from ``batch.tsv`` ({} while it does not exist yet)."""
    try:
        table = batch_table(out)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return {}
    return dict(zip(table["subject"], table["status"], strict=True))


def hidden_entries(out: Path) -> list[str]:
    """Temporary folders/files of an interrupted write (not roidask's ownership marker)."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != MARKER)


def batch_cmd(manifest: Path, out: Path, *args: str) -> list[str]:
    return [
        str(ROIDASK),
        "batch",
        str(manifest),
        "--out",
        str(out),
        "--no-plots",
        "--quiet",
        *args,
    ]


def run_cmd(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def wait_until(predicate, *, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            text = log.read_text() if log else ""
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{text}")
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Generated subjects ``sub-01..04``; ``rows`` are manifest rows relative to ``root``."""
    from roidask.datasets import make_synthetic_dataset

    root = tmp_path_factory.mktemp("batch-data")
    subjects = make_synthetic_dataset(
        root / "data",
        n_subjects=N_SUBJECTS,
        shape=SHAPE,
        n_volumes=N_VOLUMES,
        effect_pct=3.0,
    )
    rows = [
        (
            f"{i:02d}",
            s.bold.relative_to(root),
            s.labels.relative_to(root),
            s.mask_vt.relative_to(root),
        )
        for i, s in enumerate(subjects, start=1)
    ]
    return {"root": root, "subjects": subjects, "rows": rows}


def manifest_for(dataset, path: Path, ids: list[int]) -> Path:
    """A manifest of subjects ``ids`` (1-based) with absolute paths, written at ``path``."""
    root = dataset["root"]
    rows = [
        (sid, root / bold, root / labels, root / mask)
        for sid, bold, labels, mask in (dataset["rows"][i - 1] for i in ids)
    ]
    return write_manifest(path, rows)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """Each subject through a single-process ``roidask run``: sub-0i/ (figures: sub-01)."""
    from roidask.cli import main

    ref = tmp_path_factory.mktemp("reference")
    for i, s in enumerate(dataset["subjects"], start=1):
        argv = ["run", str(s.bold), "--labels", str(s.labels), "--mask", str(s.mask_vt)]
        argv += ["--out", str(ref / f"sub-{i:02d}"), "--quiet", *(["--no-plots"] if i > 1 else [])]
        assert main(argv) == 0
    return ref


@pytest.fixture
def tcp_cluster(tmp_path):
    """A scheduler and two single-threaded workers (no nanny, 1 GiB each)."""
    logs = tmp_path / "cluster"
    logs.mkdir()
    address, procs = start_cluster(logs, n_workers=2, memory_limit="1GiB")
    try:
        yield address, procs, logs
    finally:
        stop(procs)


def connect(address: str, procs, logs: Path, n: int):
    from distributed import Client

    client = Client(address, timeout=10, set_as_default=False)
    wait_for_worker(client, procs, logs, n=n)
    return client


def cached_handles(client) -> dict[str, int]:
    """Number of NIfTI read handles each worker keeps open."""
    return client.run(lambda: len(__import__("roidask.io.nifti", fromlist=["x"])._HANDLES))


# --------------------------------------------------------------------------- 2. embedded


def test_batch_on_embedded_cluster(dataset, reference, tmp_path):
    root = dataset["root"]
    s1 = dataset["subjects"][0]
    truncated = root / "truncated_bold.nii.gz"
    data = s1.bold.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    rows = [*dataset["rows"], ("bad", truncated.name, *dataset["rows"][0][2:])]
    manifest = write_manifest(root / "manifest-bad.tsv", rows)
    out = tmp_path / "batch"
    cluster = ["--n-workers", "2", "--threads-per-worker", "1", "--memory-limit", "1GiB"]
    proc = run_cmd(batch_cmd(manifest, out, *cluster), timeout=150)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "subjects: 5 (done 4, failed 1)" in proc.stdout
    table = batch_table(out)
    assert list(table.columns) == ["subject", "status", "wall_s", "n_rois", "out", "error"]
    assert dict(zip(table["subject"], table["status"], strict=True)) == {
        "01": "done",
        "02": "done",
        "03": "done",
        "04": "done",
        "bad": "failed",
    }
    (error,) = table.loc[table["subject"] == "bad", "error"]
    assert "truncated_bold.nii.gz" in error and "truncat" in error.lower()
    assert f"  bad: {error}" in proc.stdout
    # the failed subject leaves nothing behind, the others are complete
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER,
        "batch.tsv",
        "group",
        "study.zarr",
        "sub-01",
        "sub-02",
        "sub-03",
        "sub-04",
    ]
    for i in range(1, N_SUBJECTS + 1):
        assert_same_outputs(out / f"sub-{i:02d}", reference / f"sub-{i:02d}", figures=False)
        assert ran_as(out / f"sub-{i:02d}") == "subject"  # auto: one task per subject
        n_rois = len(pd.read_csv(reference / f"sub-{i:02d}" / "rois.tsv", sep="\t"))
        assert table.loc[i - 1, "n_rois"] == str(n_rois)

    # group level: one-sample t-test of the subjects' t maps, and the ROI overlap
    group = out / "group"
    tmaps = np.stack(
        [nib.load(out / f"sub-{i:02d}" / "tstat.nii.gz").get_fdata() for i in range(1, 5)],
        axis=-1,
    )
    want = stats.ttest_1samp(tmaps, 0.0, axis=-1)
    got_t = nib.load(group / "tstat.nii.gz")
    assert got_t.get_data_dtype() == np.float32
    np.testing.assert_allclose(got_t.get_fdata(), want.statistic, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        nib.load(group / "logp.nii.gz").get_fdata(), -np.log10(want.pvalue), rtol=1e-4, atol=1e-5
    )
    atlases = [
        np.asarray(nib.load(out / f"sub-{i:02d}" / "atlas.nii.gz").dataobj) for i in range(1, 5)
    ]
    overlap = nib.load(group / "roi_overlap.nii.gz")
    assert overlap.get_data_dtype() == np.int16
    counts = sum((a > 0).astype(int) for a in atlases)
    assert np.array_equal(np.asarray(overlap.dataobj), counts)
    assert counts.max() >= 2  # the subjects' ROIs do overlap
    np.testing.assert_allclose(
        nib.load(group / "roi_overlap_fraction.nii.gz").get_fdata(), counts / 4, rtol=1e-6
    )
    assert np.allclose(got_t.affine, nib.load(reference / "sub-01" / "tstat.nii.gz").affine)
    assert pd.read_csv(group / "subjects.tsv", sep="\t")["subject"].tolist() == [
        "sub-01",
        "sub-02",
        "sub-03",
        "sub-04",
    ]


def test_sigterm_on_embedded_cluster_is_one_line_and_leaves_no_process(dataset, tmp_path):
    """SIGTERM (scancel, timeout) while the embedded cluster's workers compute: roidask's one
    line, which says the subjects done are kept, and no worker log lines (distributed logs a
    warning per task cancelled by a closing worker). No process is left behind: the worker
    processes are gone by the time the roidask process has exited (their nannies, which run
    in it, stop them as the cluster closes), and the forkserver they were forked from, and
    multiprocessing's resource tracker, exit once it has."""
    manifest = manifest_for(dataset, tmp_path / "manifest.tsv", [1, 2, 3, 4])
    out = tmp_path / "batch"
    log = tmp_path / "batch.log"
    cmd = batch_cmd(manifest, out, "--n-workers", "2", "--threads-per-worker", "1")
    batch = start(cmd, log)
    try:
        wait_until(lambda: "done" in statuses(out).values(), timeout=120,
                   what="a first subject done", proc=batch, log=log)  # fmt: skip
        started = psutil.Process(batch.pid).children(recursive=True)
        server = forkserver_of(batch)
        workers = server.children()  # forked by it: the two workers, computing
        assert len(workers) == 2
        batch.terminate()  # the roidask process only, as kill and scancel do
        batch.wait(timeout=60)
        assert running(workers) == []  # stopped before roidask exited, not orphaned
        wait_until(lambda: not process_group(batch), timeout=30,
                   what="the forkserver and the resource tracker to exit")  # fmt: skip
        assert running(started) == []
    finally:
        kill_group(batch)
    assert batch.returncode == 143
    lines = log.read_text().strip().splitlines()
    assert lines == [
        "roidask: terminated (SIGTERM); the subjects completed so far are kept (the same "
        "command runs the rest); no partial output was kept"
    ]
    assert "done" in statuses(out).values()


def subject_writing(out: Path) -> str | None:
    """The subject folder being written in batch folder ``out`` (its temporary sibling
    ``.sub-01.roidask-tmp-*``), if any."""
    try:
        names = [p.name for p in out.iterdir()]
    except FileNotFoundError:
        return None
    return next((n[1:].split(".roidask-tmp-")[0] for n in names
                 if n.startswith(".sub-") and ".roidask-tmp-" in n), None)  # fmt: skip


def test_a_stop_records_the_subjects_completed_before_it(dataset, tmp_path):
    """A batch stopped (SIGTERM) after a worker completed a subject (its folder and study
    node) but before the batch process heard of it: ``batch.tsv`` says so (done, its ROI
    count and run time), the subject not finished is pending, the study lists the one
    completed; the same command then skips it (its files untouched) and runs the other.

    The batch process (the scheduler runs in it) is paused (SIGSTOP) as the worker starts
    writing the first subject, so the worker's result waits unread until SIGTERM comes
    (SIGCONT); the worker, a process of its own, completes the subject meanwhile."""
    manifest = manifest_for(dataset, tmp_path / "manifest.tsv", [1, 2])
    out = tmp_path / "batch"
    log = tmp_path / "batch.log"
    # one worker thread: one subject at a time, the other still to run at the stop
    cmd = batch_cmd(manifest, out, "--n-workers", "1", "--threads-per-worker", "1")
    batch = start(cmd, log)
    try:
        first = wait_until(lambda: subject_writing(out), timeout=120,
                           what="a subject being written", proc=batch, log=log)  # fmt: skip
        os.kill(batch.pid, signal.SIGSTOP)
        assert set(statuses(out).values()) == {"pending"}  # as the batch knows it
        wait_until(lambda: node_attrs(out / "study.zarr", first) is not None, timeout=60,
                   what=f"{first} completed, study node included")  # fmt: skip
        os.kill(batch.pid, signal.SIGTERM)
        os.kill(batch.pid, signal.SIGCONT)
        batch.wait(timeout=60)
    finally:
        kill_group(batch)
    assert batch.returncode == 143, log.read_text()
    done, other = first.removeprefix("sub-"), {"sub-01": "02", "sub-02": "01"}[first]
    table = batch_table(out).set_index("subject")
    assert table.loc[done, "status"] == "done"
    assert table.loc[done, "n_rois"] == str(len(pd.read_csv(out / first / "rois.tsv", sep="\t")))
    assert float(table.loc[done, "wall_s"]) >= 0
    assert table.loc[other, "status"] == "pending" and table.loc[other, "n_rois"] == ""
    assert not (out / f"sub-{other}").exists()
    assert list(xr.open_datatree(out / "study.zarr", engine="zarr").children) == [first]
    provenance = (out / first / "provenance.json").read_bytes()

    proc = run_cmd(cmd, timeout=150)  # the same command finishes the batch
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert statuses(out) == {done: "skipped", other: "done"}
    assert (out / first / "provenance.json").read_bytes() == provenance  # not run again


def test_a_stop_waits_for_the_writes_under_way_on_its_workers(tmp_path):
    """Stopping a batch's writes (as a stopped batch does before it records its subjects)
    returns once a write under way on a worker process has ended, and refuses the writes
    it has not begun; another batch's writes go on."""
    from roidask.batch import schedule
    from roidask.cluster import get_client

    def write(batch_id: str, name: str) -> str:  # a subject's writes, on a worker
        with schedule._WRITES.run(batch_id) as may_write:
            may_write()  # begun: counted as under way
            (tmp_path / f"{name}.begun").touch()
            for _ in range(3000):  # until the stop reaches this process (30 s at most)
                try:
                    may_write()
                except schedule._NotWanted:
                    break
                time.sleep(0.01)
            time.sleep(0.3)  # a write that takes its time: the stop waits for it
            (tmp_path / f"{name}.written").touch()
        with schedule._WRITES.run(batch_id) as may_write:  # the next subject: not begun
            try:
                may_write()
            except schedule._NotWanted as exc:
                return str(exc)
        return "written"

    with get_client(n_workers=1, threads_per_worker=2, memory_limit="1GiB") as client:
        stopped = client.submit(write, "stopped", "a", pure=False)
        other = client.submit(write, "other", "b", pure=False)
        wait_until(lambda: (tmp_path / "a.begun").exists() and (tmp_path / "b.begun").exists(),
                   timeout=60, what="the writes begun")  # fmt: skip
        schedule._stop_batch_writes("stopped", client)
        assert (tmp_path / "a.written").exists()  # ended before the stop returned
        assert stopped.result(timeout=60) == "not written: its batch was stopped"
        assert not (tmp_path / "b.written").exists()  # another batch's: going on
        schedule._stop_batch_writes("other", client)
        assert other.result(timeout=60) == "not written: its batch was stopped"


def test_a_subject_of_a_stopped_batch_writes_nothing(dataset, tmp_path):
    """A subject whose batch was stopped while it computed (here: before) writes nothing:
    its run asks before its first write."""
    from roidask.batch import schedule
    from roidask.pipeline import PipelineParams

    s1 = dataset["subjects"][0]
    spec = SubjectSpec("01", (s1.bold,), (s1.labels,), s1.mask_vt)
    job = schedule._Job(spec=spec, out=tmp_path / "sub-01", params=PipelineParams(),
                        chunks=None, plots=False, budget=None, scheduler="this process",
                        batch_id="a stopped batch")  # fmt: skip
    assert schedule._WRITES.stop("a stopped batch", timeout=0)  # nothing under way
    row = schedule._run_one(job)
    assert (row["status"], row["error"]) == ("failed", "not written: its batch was stopped")
    assert list(tmp_path.iterdir()) == []


def test_a_stop_stopped_again_still_records_what_is_complete(monkeypatch):
    """A second Ctrl-C while a stopped batch waits for its writes ends the wait, not the
    stop: the subjects complete are still recorded (a failure to record them is said)."""
    from roidask.batch import schedule

    def stopped_again(batch_id, client):
        raise KeyboardInterrupt

    recorded, said = [], []
    monkeypatch.setattr(schedule, "_stop_batch_writes", stopped_again)
    batch = schedule._Batch.__new__(schedule._Batch)
    batch.stopped, batch.client, batch.kinds, batch.pool = False, None, {}, None
    batch.batch_id, batch.in_flight = "b", {"future": "sub-02"}
    batch.report = schedule._Report(2, progress=False, log=said.append)
    monkeypatch.setattr(batch, "record_stopped", recorded.append, raising=False)
    batch.stop(also=("sub-01",))
    assert recorded == [["sub-01", "sub-02"]]

    def unreadable(specs):
        raise OSError(5, "Input/output error")

    batch.stopped = False
    monkeypatch.setattr(batch, "record_stopped", unreadable, raising=False)
    batch.stop()
    assert any("could not all be recorded (OSError" in line for line in said), said


def test_run_batch_figures_grid_mismatch_and_resume(dataset, reference, tmp_path):
    from roidask.cluster import get_client
    from roidask.datasets import make_synthetic_subject
    from roidask.pipeline import PipelineParams

    odd = make_synthetic_subject(
        tmp_path / "odd-data", shape=(14, 20, 12), n_volumes=N_VOLUMES, effect_pct=3.0, seed=9
    )
    s1 = dataset["subjects"][0]
    specs = [
        SubjectSpec("01", (s1.bold,), (s1.labels,), s1.mask_vt),
        SubjectSpec("odd", (odd.bold,), (odd.labels,), odd.mask_vt),
    ]
    out = tmp_path / "batch"
    lines = []
    with get_client(processes=False, n_workers=1, threads_per_worker=2):
        table = run_batch(specs, out, params=PipelineParams(), plots=True, log=lines.append)
    assert table["status"].tolist() == ["done", "done"]
    # the subjects' outputs (with figures, as `roidask run`) are kept; no group folder,
    # a clear reason instead
    assert_same_outputs(out / "sub-01", reference / "sub-01", figures=True)
    assert (out / "sub-odd" / "tstat.nii.gz").is_file()
    assert not (out / "group").exists()
    reason = (out / "group-error.txt").read_text()
    assert "group level needs every subject on one grid" in reason
    assert "sub-01" in reason and "sub-odd" in reason
    assert any(line.startswith("group level: failed") for line in lines)
    assert hidden_entries(out) == []
    with pytest.raises(GridMismatchError, match="one grid"):
        group_level([reference / "sub-01", out / "sub-odd"], tmp_path / "group")
    assert not (tmp_path / "group").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".group")]

    # resume: complete subjects are skipped; one with a missing output file is redone
    (out / "sub-odd" / "signals.tsv").unlink()
    with get_client(processes=False, n_workers=1, threads_per_worker=2):
        table = run_batch(specs, out, plots=False, log=lines.append)
        with pytest.raises(InvalidParameterError, match=r"max_concurrent: .* got 0"):
            run_batch(specs, out, max_concurrent=0)
    assert table["status"].tolist() == ["skipped", "done"]
    assert (out / "sub-odd" / "signals.tsv").is_file()
    # ... and one with an output changed since (a user's edit, an interrupted copy) is
    # not the batch's to replace: refused, before anything; once removed, it is redone
    tstat = out / "sub-01" / "tstat.nii.gz"
    tstat.write_bytes(tstat.read_bytes()[:100])
    with pytest.raises(OutputError, match=r"sub-01: .*changed since \(tstat.nii.gz \(changed\)\)"):
        run_batch(specs, out, plots=False)
    tstat.unlink()
    (out / "sub-odd" / ".roidask.json").unlink()  # its record of the files' sizes: gone
    with get_client(processes=False, n_workers=1, threads_per_worker=2):
        table = run_batch(specs, out, plots=False)
    assert table["status"].tolist() == ["done", "done"]
    assert (
        nib.load(tstat).get_fdata().shape == nib.load(reference / "sub-01" / "tstat.nii.gz").shape
    )

    # the group level of two subjects on one grid, then of a rerun with the odd one: the
    # earlier group folder is not of these subjects, so it goes (and a reason stays)
    s2 = dataset["subjects"][1]
    pair = [specs[0], SubjectSpec("02", (s2.bold,), (s2.labels,), s2.mask_vt)]
    with get_client(processes=False, n_workers=1, threads_per_worker=2):
        with pytest.warns(StudyNodeWarning, match=r"\(sub-odd\); their files are kept"):
            run_batch(pair, out, plots=False)  # sub-odd no longer listed
        assert (out / "group" / "tstat.nii.gz").is_file() and not (
            out / "group-error.txt"
        ).exists()
        run_batch([*pair, specs[1]], out, plots=False)
    assert not (out / "group").exists() and (out / "group-error.txt").is_file()
    assert hidden_entries(out) == []


def test_a_scheduler_without_workers_is_said_to_wait_for_them(dataset, tmp_path, monkeypatch):
    """A scheduler whose workers all died, or whose batch jobs have not started, leaves the
    batch waiting: it says so (not a silent hang), and goes on once a worker joins."""
    from roidask.batch import schedule
    from roidask.cluster import get_client

    monkeypatch.setattr(schedule, "WORKERS_CHECK_S", 0.2)
    monkeypatch.setattr(schedule, "NO_WORKER_SAY_S", 1.0)
    logs = tmp_path / "cluster"
    logs.mkdir()
    address, procs = start_cluster(logs, n_workers=0)
    s1 = dataset["subjects"][0]
    specs = [SubjectSpec("01", (s1.bold,), (s1.labels,), s1.mask_vt)]
    lines: list[str] = []
    said = threading.Event()

    def log(line: str) -> None:
        lines.append(line)
        if "has had no worker" in line:
            said.set()

    def join_once_said() -> None:
        if said.wait(60):
            cmd = [str(DASK), "worker", address, "--host", "127.0.0.1", "--no-nanny",
                   "--nthreads", "1", "--memory-limit", "1GiB", "--no-dashboard",
                   "--local-directory", str(logs / "worker")]  # fmt: skip
            procs.append(start(cmd, logs / "worker.log"))

    joiner = threading.Thread(target=join_once_said)
    joiner.start()
    try:
        with get_client(address, timeout=10):
            table = run_batch(specs, tmp_path / "batch", plots=False, log=log)
    finally:
        said.set()
        joiner.join()
        stop(procs)
    assert table["status"].tolist() == ["done"]
    waiting = [line for line in lines if "has had no worker" in line]
    assert waiting and waiting[0].startswith(f"batch: the dask scheduler at {address} has had no ")
    assert "waiting for workers to join" in waiting[0]


# --------------------------------------------------------------------------- 3. worker lost


@pytest.mark.parametrize("granularity", ["subject", "block"])
def test_worker_killed_mid_batch(dataset, reference, tcp_cluster, tmp_path, granularity):
    address, procs, logs = tcp_cluster
    manifest = manifest_for(dataset, tmp_path / "manifest.tsv", [1, 2, 3, 4])
    out = tmp_path / "batch"
    log = tmp_path / "batch.log"
    with connect(address, procs, logs, n=2) as client:
        pids = client.run(os.getpid)
        victim_proc = procs[2]
        (victim,) = [addr for addr, pid in pids.items() if pid == victim_proc.pid]
        cmd = batch_cmd(manifest, out, "--scheduler", address, "--granularity", granularity)
        batch = start(cmd, log)
        try:

            def victim_busy():
                done = [s for s, st in statuses(out).items() if st == "done"]
                return done and client.processing(workers=[victim]).get(victim)

            wait_until(victim_busy, timeout=120, what="a subject done and tasks on the victim",
                       proc=batch, log=log)  # fmt: skip
            os.kill(victim_proc.pid, signal.SIGKILL)
            victim_proc.wait(timeout=10)
            at_kill = statuses(out)
            assert batch.poll() is None
            assert sorted(at_kill.values()).count("done") < N_SUBJECTS  # killed mid-run
            rc = batch.wait(timeout=150)
        finally:
            kill_group(batch)
        assert rc == 0, log.read_text()
        assert set(statuses(out).values()) == {"done"}
        # the scheduler saw the worker go, and the batch finished on the other one
        assert f"Remove worker addr: {victim}" in (logs / "scheduler.log").read_text()
        (survivor,) = client.scheduler_info()["workers"]
        assert survivor != victim
        # finished subjects' NIfTI read handles are not kept by the workers
        assert cached_handles(client) == {survivor: 0}
    for i in range(1, N_SUBJECTS + 1):
        assert_same_outputs(out / f"sub-{i:02d}", reference / f"sub-{i:02d}", figures=False)
        assert ran_as(out / f"sub-{i:02d}") == granularity
    assert hidden_entries(out) == []


@pytest.mark.parametrize("granularity", ["subject", "block"])
def test_scheduler_lost_mid_batch(dataset, tcp_cluster, tmp_path, granularity):
    """The scheduler killed mid-batch: one error line naming it, the subjects done kept,
    the others pending in batch.tsv (not failed with the cancellation), no group level."""
    address, procs, _logs = tcp_cluster
    manifest = manifest_for(dataset, tmp_path / "manifest.tsv", [1, 2, 3, 4])
    out = tmp_path / "batch"
    log = tmp_path / "batch.log"
    cmd = batch_cmd(manifest, out, "--scheduler", address, "--granularity", granularity,
                    "--max-concurrent", "1")  # fmt: skip
    batch = start(cmd, log)
    try:
        wait_until(lambda: "done" in statuses(out).values(), timeout=120,
                   what="a first subject done", proc=batch, log=log)  # fmt: skip
        kill_group(procs[0])  # the scheduler
        rc = batch.wait(timeout=60)
    finally:
        kill_group(batch)
    lines = log.read_text().strip().splitlines()
    assert rc == 2, lines
    assert len(lines) == 1 and " are kept (" in lines[0], lines
    assert lines == [
        f"roidask: error: --scheduler: lost the connection to the dask scheduler at "
        f"'{address}' during the batch; the subjects completed are kept ("
        + lines[0].split(" are kept (", 1)[1]
    ]
    final = statuses(out)
    assert "failed" not in final.values() and "pending" in final.values(), final
    done = sum(st == "done" for st in final.values())
    assert (
        f"({done} of 4, {4 - done} pending in {out / 'batch.tsv'}): run the same command "
        "again to finish the batch" in lines[0]
    )
    assert not (out / "group").exists() and not (out / "group-error.txt").exists()


# --------------------------------------------------------------------------- 4. resume


def test_batch_killed_and_resumed(dataset, reference, tcp_cluster, tmp_path):
    address, procs, logs = tcp_cluster
    manifest = manifest_for(dataset, tmp_path / "manifest.tsv", [1, 2, 3, 4])
    out = tmp_path / "batch"
    log = tmp_path / "batch.log"
    cmd = batch_cmd(manifest, out, "--scheduler", address, "--max-concurrent", "1")
    with connect(address, procs, logs, n=2) as client:
        batch = start(cmd, log)
        try:
            wait_until(
                lambda: "done" in statuses(out).values() and any(client.processing().values()),
                timeout=120,
                what="a first subject done and the next one computing",
                proc=batch,
                log=log,
            )
            kill_group(batch)
        finally:
            kill_group(batch)
        assert batch.returncode == -signal.SIGKILL
        at_kill = statuses(out)
        # the subject a worker was computing when its batch died is not written
        wait_until(
            lambda: not any(client.run(lambda dask_worker: len(dask_worker.state.executing))
                            .values()),
            timeout=60,
            what="the workers to finish what they were running",
        )  # fmt: skip
    done = sorted(s for s, st in at_kill.items() if st == "done")
    assert 1 <= len(done) < N_SUBJECTS, at_kill
    assert sorted(p.name for p in out.glob("sub-*")) == [f"sub-{s}" for s in done]
    before = {
        s: {f: (p.stat().st_ino, p.stat().st_mtime_ns) for f in files_of(out / f"sub-{s}")
            for p in [out / f"sub-{s}" / f]}
        for s in done
    }  # fmt: skip

    proc = run_cmd(cmd, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = statuses(out)
    assert final == {s: ("skipped" if s in done else "done") for s in at_kill}
    for s in done:  # untouched: same files, same inodes, same modification times
        after = {
            f: ((out / f"sub-{s}" / f).stat().st_ino, (out / f"sub-{s}" / f).stat().st_mtime_ns)
            for f in files_of(out / f"sub-{s}")
        }
        assert after == before[s]
    assert hidden_entries(out) == []
    for i in range(1, N_SUBJECTS + 1):
        assert_same_outputs(out / f"sub-{i:02d}", reference / f"sub-{i:02d}", figures=False)
    # the group level equals the one of the single-process runs
    want = group_level([reference / f"sub-{i:02d}" for i in range(1, 5)], tmp_path / "group")
    for name in ("tstat.nii.gz", "logp.nii.gz", "roi_overlap.nii.gz"):
        assert (out / "group" / name).read_bytes() == (want / name).read_bytes(), name
    # of the same subjects (`roidask run` records no fingerprint: the batch does)
    ours, theirs = (pd.read_csv(g / "group" / "subjects.tsv", sep="\t") for g in (out, tmp_path))
    assert ours["subject"].tolist() == theirs["subject"].tolist()


# --------------------------------------------------------------------------- 6. TLS


@pytest.fixture
def tls_cluster(tmp_path):
    if shutil.which("openssl") is None:  # pragma: no cover
        pytest.skip("the openssl command is needed to make test certificates")
    logs = tmp_path / "cluster"
    logs.mkdir()
    certs = make_ca_and_cert(tmp_path / "certs")
    address, procs = start_cluster(logs, tls_cli_args(certs), protocol="tls")
    try:
        yield address, procs, logs, certs
    finally:
        stop(procs)


def test_batch_over_tls(dataset, reference, tls_cluster, tmp_path):
    address, _procs, logs, certs = tls_cluster
    manifest = manifest_for(dataset, tmp_path / "manifest.tsv", [1, 2])
    out = tmp_path / "batch"
    proc = run_cmd(batch_cmd(manifest, out, "--scheduler", address, *tls_cli_args(certs)), 150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert statuses(out) == {"01": "done", "02": "done"}
    for i in (1, 2):
        assert_same_outputs(out / f"sub-{i:02d}", reference / f"sub-{i:02d}", figures=False)
    assert (out / "group" / "tstat.nii.gz").is_file()
    assert "Register worker" in (logs / "scheduler.log").read_text()

    plain = address.replace("tls://", "tcp://")
    refused = run_cmd(batch_cmd(manifest, tmp_path / "plain", "--scheduler", plain), 60)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"roidask: error: could not connect to the dask scheduler at '{plain}'")
    assert "connect to tls://... with tls_ca_file, tls_cert and tls_key" in line
    assert not (tmp_path / "plain").exists()


# --------------------------------------------------------------------------- 5. out of core

OOC_WORKER_MEMORY = 400 * 2**20


class PeakRSS:
    """Samples the resident memory of the processes under ``pids`` (their children)."""

    def __init__(self, pids: list[int]):
        self.pids, self.peak, self._stop = pids, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in self.pids:
                try:
                    children = psutil.Process(pid).children(recursive=True)
                except psutil.Error:
                    continue
                for child in children:
                    try:
                        self.peak = max(self.peak, child.memory_info().rss)
                    except psutil.Error:
                        pass
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_out_of_core_batch(tmp_path):
    """Ten times the workers' memory in BOLD data; no worker is killed or lost."""
    from isal import igzip

    from roidask.datasets import make_synthetic_subject

    subject = make_synthetic_subject(tmp_path / "big", seed=3)  # 40x64x64x1452 int16
    bold = tmp_path / "big" / "bold.nii"
    with igzip.open(subject.bold, "rb") as src, open(bold, "wb") as dst:
        shutil.copyfileobj(src, dst, 16 * 2**20)
    subject.bold.unlink()
    nbytes = int(np.prod(nib.load(bold).shape)) * 2
    n_subjects = -(-10 * OOC_WORKER_MEMORY // nbytes)  # >= 10x the workers' memory
    rows = []
    for i in range(1, n_subjects + 1):
        link = tmp_path / "big" / f"bold-{i:02d}.nii"
        os.link(bold, link)  # the same data under several subjects, distinct files
        rows.append((f"s{i:02d}", link.name, "labels.txt", "mask_vt.nii.gz"))
    manifest = write_manifest(tmp_path / "big" / "manifest.tsv", rows)
    assert n_subjects * nbytes >= 10 * OOC_WORKER_MEMORY

    logs = tmp_path / "cluster"
    logs.mkdir()
    address, procs = start_cluster(
        logs,
        n_workers=1,
        memory_limit=str(OOC_WORKER_MEMORY),
        nanny=True,
        nthreads=2,
    )
    out = tmp_path / "batch"
    try:
        with connect(address, procs, logs, n=1) as client:
            (worker,) = client.scheduler_info()["workers"]
            with PeakRSS([p.pid for p in procs[1:]]) as rss:
                proc = run_cmd(batch_cmd(manifest, out, "--scheduler", address), timeout=540)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert list(client.scheduler_info()["workers"]) == [worker]  # never replaced
        scheduler_log = (logs / "scheduler.log").read_text()
    finally:
        stop(procs)
    worker_text = worker_log(logs, 0).read_text()
    for bad in ("exceeded", "Restarting", "was killed", "KilledWorker"):
        assert bad not in worker_text, worker_text[-3000:]
    assert "Remove worker" not in scheduler_log
    mib = 2**20
    print(
        f"\nout of core: {n_subjects} x {nbytes / mib:.0f} MiB of BOLD, worker limit "
        f"{OOC_WORKER_MEMORY / mib:.0f} MiB, peak worker RSS {rss.peak / mib:.0f} MiB"
    )
    assert 0 < rss.peak < OOC_WORKER_MEMORY
    assert set(statuses(out).values()) == {"done"}
    first = out / "sub-s01"
    prov = json.loads((first / "provenance.json").read_text())
    assert prov["box_max_bytes"] == 0  # the ROI box does not fit: a temporary file instead
    assert prov["chunks"]["time"] < 51  # smaller blocks than the default
    for i in range(2, n_subjects + 1):
        for name in ("tstat.nii.gz", "atlas.nii.gz", "signals.tsv"):
            assert (out / f"sub-s{i:02d}" / name).read_bytes() == (first / name).read_bytes()


# --------------------------------------------------------------------------- 7. granularity


def tiny_specs(haxby, root: Path, n: int) -> list[SubjectSpec]:
    """``n`` subjects whose files are symbolic links to the bundled Haxby slice."""
    specs = []
    for i in range(n):
        d = root / f"s{i:04d}"
        d.mkdir(parents=True)
        for name, src in (("bold.nii.gz", haxby.bold), ("labels.txt", haxby.labels),
                          ("mask.nii.gz", haxby.mask)):  # fmt: skip
            (d / name).symlink_to(src)
        bold, labels, mask = d / "bold.nii.gz", d / "labels.txt", d / "mask.nii.gz"
        specs.append(SubjectSpec(d.name, (bold,), (labels,), mask))
    return specs


@pytest.fixture(scope="module")
def haxby_reference(haxby, tmp_path_factory):
    """The Haxby slice through a single-process ``roidask run`` (no figures)."""
    from roidask.cli import main

    out = tmp_path_factory.mktemp("haxby-reference") / "sub-ref"
    argv = ["run", str(haxby.bold), "--labels", str(haxby.labels), "--mask", str(haxby.mask)]
    assert main([*argv, "--out", str(out), "--quiet", "--no-plots"]) == 0
    return out


N_TINY = 200


def test_many_tiny_subjects_flat_worker_memory(haxby, haxby_reference, tcp_cluster, tmp_path):
    """A few hundred subjects, one task each: all done, worker memory flat in N."""
    from distributed import Client

    address, procs, logs = tcp_cluster
    specs = tiny_specs(haxby, tmp_path / "data", N_TINY)
    # the workers' and this process's (the client's) RSS each time a subject finishes
    processes = [psutil.Process(p.pid) for p in procs[1:]] + [psutil.Process()]
    rss: list[list[int]] = []

    def sample(line: str) -> None:
        if not line.startswith("batch:"):
            rss.append([p.memory_info().rss for p in processes])

    out = tmp_path / "batch"
    with Client(address, timeout=10) as client:
        wait_for_worker(client, procs, logs, n=2)
        table = run_batch(specs, out, plots=False, log=sample)
    assert table["status"].tolist() == ["done"] * N_TINY
    assert len(rss) == N_TINY
    for spec in (specs[0], specs[N_TINY // 2], specs[-1]):
        assert_same_outputs(out / spec.out_name, haxby_reference, figures=False)
        assert ran_as(out / spec.out_name) == "subject"
    assert (out / "group" / "roi_overlap.nii.gz").is_file()
    assert hidden_entries(out) == []
    # Warmed up after the first quarter (imports, thread pools, caches): from then
    # on no worker, nor the client, grows beyond noise.
    mib = 2**20
    warm = np.max(rss[N_TINY // 4 : N_TINY // 2], axis=0)
    last = np.max(rss[-N_TINY // 4 :], axis=0)
    print(f"\nRSS MiB (workers, client): warm {warm / mib}, last quarter {last / mib}")
    assert np.all(last - warm < 16 * mib), (warm / mib, last / mib)


def test_subject_that_does_not_fit_runs_by_blocks(haxby, tmp_path, monkeypatch):
    """granularity auto: a subject too large for a worker thread's memory runs as blocks."""
    from distributed import Client

    from roidask.datasets import make_synthetic_subject

    big = make_synthetic_subject(tmp_path / "big", n_volumes=150, effect_pct=3.0)
    specs = [
        SubjectSpec("big", (big.bold,), (big.labels,), big.mask_vt),
        *tiny_specs(haxby, tmp_path / "data", 2),
    ]
    # The worker's limit sizes the blocks; it never pauses or spills the worker here.
    for what in ("target", "spill", "pause", "terminate"):
        monkeypatch.setenv(f"DASK_DISTRIBUTED__WORKER__MEMORY__{what.upper()}", "False")
    logs = tmp_path / "cluster"
    logs.mkdir()
    address, procs = start_cluster(logs, n_workers=1, memory_limit="400MiB")
    out = tmp_path / "batch"
    try:
        with Client(address, timeout=10) as client:
            wait_for_worker(client, procs, logs, n=1)
            table = run_batch(specs, out, plots=True)
    finally:
        stop(procs)
    assert table["status"].tolist() == ["done"] * 3, table["error"].tolist()
    for spec in specs:  # figures too, drawn by the worker (or from here, for "big")
        prov = json.loads((out / spec.out_name / "provenance.json").read_text())
        figures = sorted(p.name for p in (out / spec.out_name / "figures").glob("*.png"))
        assert figures and [f"figures/{f}" for f in figures] == [
            o for o in prov["outputs"] if o.startswith("figures/")
        ]
    assert ran_as(out / "sub-big") == "block"
    prov = json.loads((out / "sub-big" / "provenance.json").read_text())
    assert prov["chunks"]["time"] < 150  # the memory model's smaller blocks
    assert [ran_as(out / s.out_name) for s in specs[1:]] == ["subject", "subject"]


def test_granularity_checked_before_anything_is_written(dataset, tmp_path):
    from roidask.cluster import get_client

    s1 = dataset["subjects"][0]
    specs = [SubjectSpec("01", (s1.bold,), (s1.labels,), s1.mask_vt)]
    out = tmp_path / "batch"
    with pytest.raises(InvalidParameterError, match=r"granularity: expected one of .*'tiles'"):
        run_batch(specs, out, granularity="tiles")
    with get_client(processes=False, n_workers=1, threads_per_worker=1):
        with pytest.raises(InvalidParameterError, match=r"threads of this process"):
            run_batch(specs, out, granularity="subject")
    assert not out.exists()
    manifest = manifest_for(dataset, tmp_path / "manifest.tsv", [1])
    proc = run_cmd(batch_cmd(manifest, out, "--granularity", "tiles"), timeout=60)
    assert proc.returncode == 2 and "--granularity: invalid choice: 'tiles'" in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- 8. progress


def test_batch_progress_bar_on_a_terminal(haxby, tmp_path, capsys, fake_terminal, monkeypatch):
    import roidask.cluster
    from roidask.cluster import get_client

    specs = tiny_specs(haxby, tmp_path / "data", 3)
    bad = tmp_path / "data" / "bad.nii.gz"
    raw = specs[0].bold[0].read_bytes()  # a valid header, a stream that ends early:
    bad.write_bytes(raw[: len(raw) // 2] + raw[-8:])  # the subject fails in its pass
    specs.append(SubjectSpec("bad", (bad,), specs[0].labels, specs[0].mask))
    # a served dashboard (bokeh is not needed to print its address)
    url = "http://127.0.0.1:8787/status"
    monkeypatch.setattr(roidask.cluster, "dashboard_link", lambda client: url)
    with get_client(processes=False, n_workers=1, threads_per_worker=2):
        table = run_batch(specs, tmp_path / "batch", plots=False, progress=True)
    assert table["status"].tolist() == ["done", "done", "done", "failed"]
    err = capsys.readouterr().err
    lines = err.split("\n")
    assert lines[0].startswith("\rbatch: 4 subjects, blocks of each subject over all workers")
    assert f"dashboard {url}" in lines[0]
    # one bar, redrawn in place: subjects done / failed / total, then an ETA while any is left
    assert "\rsubjects [" in err and "ETA " in err
    assert err.rstrip("\n").split("\r")[-1].startswith("subjects [" + "#" * 30 + "] 100%")
    assert err.rstrip().endswith("4/4: done 3, failed 1")
    # the failure on its own line above the bar
    (failure,) = [line.split("\r")[-1] for line in lines if "bad: failed" in line]
    assert failure.startswith("bad: failed (") and "bad.nii.gz" in failure
    assert err.endswith("\n")


def test_batch_progress_lines_in_a_log(haxby, tmp_path, capsys):
    specs = tiny_specs(haxby, tmp_path / "data", 3)
    out = tmp_path / "batch"
    table = run_batch(specs, out, plots=False, progress=True)  # no cluster: this process
    assert table["status"].tolist() == ["done"] * 3
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert lines[0] == "batch: 3 subjects, granularity does not apply; this process's threads"
    finished = sorted(lines[1:4])
    for line, name in zip(finished, ("s0000", "s0001", "s0002"), strict=True):
        assert line.startswith(f"{name}: done in ")
    counts = [line.split("[", 1)[1] for line in lines[1:4]]
    assert counts[0].startswith("1/3: done 1, failed 0, ETA ")
    assert counts[1].startswith("2/3: done 2, failed 0, ETA ")
    assert counts[2] == "3/3: done 3, failed 0]"
    # resumed: complete subjects are skipped, and said so, and so is their group level
    run_batch(specs, out, plots=False, progress=True)
    err = capsys.readouterr().err
    assert err.splitlines()[-2].endswith("[3/3: done 0, failed 0, skipped 3]")
    assert err.splitlines()[-1] == "group level: of the same subjects' results as before: kept"


# --------------------------------------------------------------------------- the batch folder
def _spec(folder: Path, subject: str = "01") -> SubjectSpec:
    files = [folder / n for n in ("bold.nii.gz", "labels.txt", "mask.nii.gz")]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    return SubjectSpec(subject, (files[0],), (files[1],), files[2])


def test_batch_folder_check_resolves_each_input_once(tmp_path, monkeypatch):
    """A rerun checks every subject's folder against every input: with the inputs
    resolved once (an index), not once per folder (quadratic: ~300 s at 1000 subjects)."""
    from roidask.batch.schedule import check_batch_folder, prepare_batch_folder

    specs = [_spec(tmp_path / "data" / f"{i:02d}", f"{i:02d}") for i in range(1, 21)]
    out = tmp_path / "batch"
    prepare_batch_folder(out, specs)
    for spec in specs:
        (out / spec.out_name).mkdir()  # as a batch leaves them (markers below)
        (out / spec.out_name / MARKER).write_text(json.dumps(
            {"written_by": "roidask", "kind": "subject-results", "files": []}))  # fmt: skip
    calls = []
    real = Path.resolve

    def resolve(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "resolve", resolve)
    check_batch_folder(out, specs)
    # 60 inputs, 21 folders (and group/): a resolve each, not 60 per folder (and one per
    # existing folder: is it the current folder?)
    assert len(calls) <= 3 * 20 + 3 * 22, len(calls)


def test_batch_folder_checks_write_nothing_and_keep_user_files(tmp_path):
    from helpers.files import tree

    from roidask._atomic import OutputFolder
    from roidask.batch.schedule import check_batch_folder, prepare_batch_folder
    from roidask.exceptions import OutputError

    spec = _spec(tmp_path / "data")
    out = tmp_path / "batch"
    assert check_batch_folder(out, [spec]) == out and not out.exists()
    with pytest.MonkeyPatch.context() as patch:  # a relative folder: absolute for the workers
        patch.chdir(tmp_path)
        assert check_batch_folder(Path("batch"), [spec]) == out
    prepare_batch_folder(out, [spec])
    assert json.loads((out / MARKER).read_text())["kind"] == "batch"
    # an input of one subject inside another subject's output folder (roidask's)
    with OutputFolder(out / "sub-02", kind="subject-results") as tmp:
        (tmp / "rois.tsv").write_text("label\n")
    inside, other = _spec(out / "sub-02", "03"), _spec(tmp_path / "d2", "02")
    before = tree(tmp_path)
    with pytest.raises(OutputError, match=r"sub-02: contains the input .*sub-02/bold"):
        check_batch_folder(out, [spec, other, inside])
    # a group/ folder of the user's
    (out / "group").mkdir()
    (out / "group" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"group: exists and was not written by roidask"):
        prepare_batch_folder(out, [spec])
    assert tree(tmp_path) == {**before, "batch/group": None, "batch/group/notes.txt": b"mine"}


def test_run_batch_checks_every_input_file_first(tmp_path):
    from roidask.exceptions import CorruptFileError, ManifestError, UnreadableFileError

    good, bad = _spec(tmp_path / "a"), _spec(tmp_path / "b", "02")
    bad.labels[0].write_bytes(b"")
    with pytest.raises(CorruptFileError, match=r"^manifest: subject '02': labels .*: is empty"):
        run_batch([bad], tmp_path / "out")
    bad.labels[0].write_bytes(b"x")
    bad.mask.unlink()
    with pytest.raises(UnreadableFileError, match=r"subject '02': mask .*mask\.nii\.gz: no such"):
        run_batch([bad], tmp_path / "out")
    # every subject is checked (good's files are not NIfTI): the first, and the others
    with pytest.raises(CorruptFileError, match=r"^manifest: subject '01': bold .* too: '02'\)$"):
        run_batch([good, bad], tmp_path / "out")
    # two subjects of the Python API sharing an output folder (the manifest reader checks too)
    twin = SubjectSpec("sub-01", good.bold, good.labels, good.mask)
    with pytest.raises(ManifestError, match=r"'01' and 'sub-01' would both write sub-01/"):
        run_batch([good, twin], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_subject_written_by_a_lost_worker_is_done_not_skipped(haxby, tmp_path):
    """A worker can die after writing a subject and before reporting it: the subject's
    task runs again elsewhere, finds outputs this batch wrote, and reports them done
    (a subject complete from an earlier batch is skipped)."""
    from roidask.batch.schedule import _Job, _run_one
    from roidask.pipeline import PipelineParams

    (spec,) = tiny_specs(haxby, tmp_path / "data", 1)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / spec.out_name
    job = _Job(spec=spec, out=out, params=PipelineParams(), chunks=None, plots=False,
               budget=None, scheduler="test", batch_id="batch-1")  # fmt: skip
    assert _run_one(job)["status"] == "done"
    prov = json.loads((job.out / "provenance.json").read_text())
    assert prov["batch_id"] == "batch-1"
    assert _run_one(job)["status"] == "done"  # the task again, same batch
    later = _Job(**{**job.__dict__, "batch_id": "batch-2"})
    assert _run_one(later)["status"] == "skipped"  # another batch
    assert json.loads((job.out / "provenance.json").read_text()) == prov  # not rewritten


def test_batch_tsv_lists_the_subjects_in_the_manifest_s_order(haxby, tmp_path):
    """As the group level takes them (and `roidask group` on the folder, from batch.tsv)."""
    specs = tiny_specs(haxby, tmp_path / "data", 3)[::-1]
    out = tmp_path / "out"
    run_batch(specs, out, plots=False)
    order = ["s0002", "s0001", "s0000"]
    assert pd.read_csv(out / "batch.tsv", sep="\t")["subject"].tolist() == order
    group = pd.read_csv(out / "group" / "subjects.tsv", sep="\t")["subject"].tolist()
    assert group == [f"sub-{s}" for s in order]


def test_the_group_level_goes_when_the_first_subject_s_results_change(haxby, tmp_path):
    """A rerun with other parameters: the folder's group level (of the old results) is
    removed as soon as a subject has new results, as the study hides its group node, so
    a batch stopped then leaves no group level of other results; written again at the end."""
    from roidask.pipeline import PipelineParams

    specs = tiny_specs(haxby, tmp_path / "data", 2)
    out = tmp_path / "out"
    run_batch(specs, out, plots=False)
    assert (out / "group" / "tstat.nii.gz").is_file()
    seen: list[tuple[str, bool]] = []
    run_batch(specs, out, plots=False, params=PipelineParams(fwhm=5.0),
              log=lambda line: seen.append((line, (out / "group").exists())))  # fmt: skip
    finished = [present for line, present in seen if ": done in " in line]
    assert finished == [False, False]
    assert (out / "group" / "tstat.nii.gz").is_file()
    # a batch stopped before its group level: its subjects done (skipped now), the group
    # level of other results (another fingerprint, as roidask wrote it)
    table = out / "group" / "subjects.tsv"
    text = table.read_text()
    *rows, last = text.splitlines()  # sub-s0001's (both subjects' fingerprints are alike)
    name, digest = last.split("\t")
    table.write_text("\n".join([*rows, f"{name}\t{'f' * 8}{digest[8:]}"]) + "\n")
    as_roidask_wrote(out / "group", "subjects.tsv")
    seen.clear()
    run_batch(specs, out, plots=False, params=PipelineParams(fwhm=5.0),
              log=lambda line: seen.append((line, (out / "group").exists())))  # fmt: skip
    finished = {line.split(":")[0]: present for line, present in seen if ": skipped" in line}
    assert finished["s0001"] is False  # gone once the subject it records otherwise is seen
    assert (out / "group" / "subjects.tsv").read_text() == text


def test_a_subject_run_without_figures_is_made_again_for_figures(haxby, tmp_path):
    """A batch asking for figures redoes a subject an earlier batch ran without them
    (``--no-plots``); a batch without figures skips one that has them."""
    from roidask.batch.schedule import _Job, _run_one
    from roidask.pipeline import PipelineParams

    (spec,) = tiny_specs(haxby, tmp_path / "data", 1)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / spec.out_name
    job = _Job(spec=spec, out=out, params=PipelineParams(), chunks=None, plots=False,
               budget=None, scheduler="test", batch_id="batch-1")  # fmt: skip
    assert _run_one(job)["status"] == "done"
    assert not (out / "figures").exists()
    with_figures = _Job(**{**job.__dict__, "plots": True, "batch_id": "batch-2"})
    assert _run_one(with_figures)["status"] == "done"
    assert sorted(p.name for p in (out / "figures").iterdir())
    without = _Job(**{**job.__dict__, "batch_id": "batch-3"})
    assert _run_one(without)["status"] == "skipped"


def test_a_subjects_warnings_name_it(haxby, tmp_path, monkeypatch, capsys):
    """A warning while a batch subject runs (a worker process, or a thread of the driver)
    is one ``roidask: warning:`` line naming the subject, not Python's default with a
    source line and no subject."""
    import warnings

    from roidask import cli
    from roidask.batch import schedule
    from roidask.exceptions import EmptyMaskWarning
    from roidask.io import labels as labels_module
    from roidask.pipeline import PipelineParams

    seen = []

    def run_subject(**kwargs):
        # the input checks showed the labels' warnings: not shown again here
        seen.append((schedule.current_subject(), labels_module._SHOWN.on))
        for show in (schedule._show_subject_warning, cli._show_warning):
            show(EmptyMaskWarning("no ROI: nothing above 5"), EmptyMaskWarning, "x.py", 1)
        raise OSError("stop here")

    monkeypatch.setattr(schedule, "run_subject", run_subject)
    spec = SubjectSpec("07", (haxby.bold,), (haxby.labels,), haxby.mask)
    job = schedule._Job(spec=spec, out=tmp_path / "sub-07", params=PipelineParams(), chunks=None,
                        plots=False, budget=None, scheduler="here")  # fmt: skip
    row = schedule._run_one(job)
    assert row["status"] == "failed" and seen == [("07", True)]
    assert schedule.current_subject() is None  # only while it runs
    err = capsys.readouterr().err
    line = "roidask: warning: subject '07': no ROI: nothing above 5\n"
    assert err == line + line, err
    # a worker task shows its warnings that way
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.setattr(schedule, "reuse_freed_buffers", lambda: None)  # malloc as it is
    with contextlib.suppress(Exception):  # no worker here: it fails once the hook is set
        schedule._subject_task(job, 1)
    assert warnings.showwarning is schedule._show_subject_warning


def test_subjects_with_several_labels_files_are_made_again_once(haxby, tmp_path):
    """Runs of several labels files numbered alike were pooled before they were counted
    per file: a subject with several labels files has a fingerprint of its own (its old
    outputs are made again); one with a single labels file keeps its fingerprint."""
    import hashlib
    import json

    from roidask.batch.schedule import fingerprint
    from roidask.outputs.provenance import input_records
    from roidask.pipeline import PipelineParams

    def before(spec, params):  # the fingerprint as it was
        inputs = input_records([*spec.bold, *spec.labels, spec.mask])
        sums = [r.get("sha256") for r in inputs]
        payload = json.dumps({"params": params.to_dict(), "inputs": sums}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    params = PipelineParams()
    one = SubjectSpec("a", (haxby.bold,), (haxby.labels,), haxby.mask)
    two = SubjectSpec("b", (haxby.bold, haxby.bold), (haxby.labels, haxby.labels), haxby.mask)
    assert fingerprint(one, params)[0] == before(one, params)
    assert fingerprint(two, params)[0] != before(two, params)


@pytest.mark.parametrize("what", ["file", "array", "attribute"])
def test_a_users_file_in_a_study_node_is_refused_before_anything_is_written(haxby, tmp_path, what):
    """A node a rerun may rewrite holds a user's file, or a zarr array or group the user
    wrote there: the batch is refused up front, before any subject's folder, node or the
    group level is touched."""
    from roidask.pipeline import PipelineParams

    specs = tiny_specs(haxby, tmp_path / "data", 2)
    out = tmp_path / "out"
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["done", "done"]
    node = out / "study.zarr" / specs[1].out_name
    if what == "file":
        (node / "notes.txt").write_text("mine")
        want = r"holds files roidask did not write \(notes.txt\)"
    elif what == "array":
        zarr.create_array(str(node / "derived" / "myres"), shape=(2,), dtype="f4")[:] = 1
        want = r"holds files roidask did not write \(derived/myres/c/0, derived/myres/zarr.json"
    else:  # an attribute of one of its arrays, added with zarr
        zarr.open_array(str(node / "tstat"), mode="r+").attrs["note"] = "mine"
        want = r"tstat/zarr.json changed since roidask wrote it"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(OutputError, match=rf"study node {re.escape(str(node))}: {want}"):
        run_batch(specs, out, params=PipelineParams(fwhm=5.0), plots=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_batch_folder_copied_without_times_is_resumed_and_an_edit_in_it_refused(haxby, tmp_path):
    """A batch folder copied without its files' times (``cp -r``): its complete subject is
    skipped (the content of its files is compared, and is roidask's); a same-size edit of
    a subject's file (a cell fixed in rois.tsv) is the user's: refused, before anything."""
    specs = tiny_specs(haxby, tmp_path / "data", 1)
    out = tmp_path / "out"
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["done"]
    copy = shutil.copytree(out, tmp_path / "copy", copy_function=shutil.copy)
    assert run_batch(specs, copy, plots=False)["status"].tolist() == ["skipped"]
    rois = copy / specs[0].out_name / "rois.tsv"
    rois.write_bytes(same_size_edit(rois.read_bytes()))
    edited = rois.read_bytes()
    with pytest.raises(OutputError, match=r"changed since \(rois.tsv \(changed\)\)"):
        run_batch(specs, copy, plots=False)
    assert rois.read_bytes() == edited


def test_a_study_node_with_a_truncated_chunk_is_written_again(haxby, tmp_path):
    """A rerun lists a node's files with their sizes (those of the subject's results.zarr,
    which its folder's marker records): a truncated chunk, which plain xarray would fail
    on, is written again rather than skipped. No chunk is read."""
    specs = tiny_specs(haxby, tmp_path / "data", 1)
    out = tmp_path / "out"
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["done"]
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["skipped"]
    node = out / "study.zarr" / specs[0].out_name
    chunk = next(p for p in sorted((node / "tstat" / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-3])
    assert run_batch(specs, out, plots=False)["status"].tolist() == ["done"]
    assert (out / "study.zarr" / specs[0].out_name / chunk.relative_to(node)).stat().st_size == (
        out / specs[0].out_name / "results.zarr" / chunk.relative_to(node)
    ).stat().st_size


def test_a_batch_folder_that_is_not_a_path_is_named(haxby):
    specs = [SubjectSpec("01", (haxby.bold,), (haxby.labels,), haxby.mask)]
    with pytest.raises(RoidaskTypeError, match=r"^out_dir: expected a path .*got NoneType$"):
        run_batch(specs, None)


@pytest.mark.parametrize(
    ("specs", "error", "message"),
    [
        (
            "manifest.tsv",
            RoidaskTypeError,
            r"^specs: expected a list of roidask\.batch\.SubjectSpec, got str 'manifest\.tsv' "
            r"\(a manifest\? read it with roidask\.read_manifest first\)$",
        ),
        (
            [1],
            RoidaskTypeError,
            r"^specs\[0\]: expected a roidask\.batch\.SubjectSpec \(e\.g\. from read_manifest\), "
            r"got int 1$",
        ),
        (
            [],
            ManifestError,
            r"^specs: no subjects, got \[\]; expected at least one SubjectSpec \(a manifest "
            r"line per subject\)$",
        ),
    ],
    ids=["path", "not-a-spec", "empty"],
)
def test_subjects_that_are_not_a_list_of_specs_are_refused_before_anything_is_written(
    tmp_path, specs, error, message
):
    """As ``roidask batch`` refuses a manifest without subject rows: no batch.tsv, no
    study.zarr of no subject; never an AttributeError."""
    out = tmp_path / "batch"
    for call in (
        lambda: run_batch(specs, out, plots=False),
        lambda: check_subjects(specs),
        lambda: check_batch_folder(out, specs),
    ):
        with pytest.raises(error, match=message) as info:
            call()
        assert info.value.param == "specs"
    assert list(tmp_path.iterdir()) == []
