"""``cluster/jobqueue_batch.py`` end to end on a real single-node SLURM.

``cluster/slurm/local.sh up`` brings up SLURM on this machine (installing
Debian's slurm-wlm and munge if needed; the test is skipped only when that is
impossible: no apt-get, or not root). The dask workers are SLURM jobs; the
scheduler (in the recipe's process) and the workers listen on 127.0.0.1
(``--interface lo``) and speak TLS with the batch's throw-away credentials. One
worker job is cancelled with ``scancel`` while it computes; every subject must
still complete, with the outputs of ``roidask run``. The subjects are variants
of the bundled Haxby slice (flipped, with added noise) so each has its own maps.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers.cluster import kill_group, start
from helpers.results import DATA_FILES

from roidask.cluster import get_client
from roidask.datasets import haxby_slice

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SH = ROOT / "cluster" / "slurm" / "local.sh"
RECIPE = ROOT / "cluster" / "jobqueue_batch.py"
N_SUBJECTS = 6


def wait_until(predicate, *, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the batch exited ({proc.returncode}) before {what}:\n"
                + (log.read_text() if log else "")
            )
        time.sleep(0.05)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what}\n" + (log.read_text() if log else "")
    )


def statuses(out: Path) -> dict[str, str]:
    try:
        table = pd.read_csv(out / "batch.tsv", sep="\t", dtype=str, keep_default_na=False)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return {}
    return dict(zip(table["subject"], table["status"], strict=True))


def squeue(name: str) -> dict[str, str]:
    """Job id -> state of this user's jobs called ``name``."""
    out = subprocess.run(
        ["squeue", "-h", "--name", name, "-o", "%i %T"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    return dict(line.split() for line in out.splitlines() if line.strip())


@pytest.fixture(scope="module")
def slurm():
    proc = subprocess.run(
        ["bash", str(LOCAL_SH), "up"], capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode == 3:
        reason = proc.stderr.strip().splitlines()[-1]
        pytest.skip(f"no SLURM here and it cannot be installed ({reason})")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^debug\*\s+up\s.*\s(idle|mix|alloc)\s", proc.stdout, re.M), proc.stdout


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    """Manifest of variants of the Haxby slice, and each one's ``roidask run`` outputs."""
    from roidask.cli import main

    root = tmp_path_factory.mktemp("slurm-data")
    haxby = haxby_slice()
    bold_img, mask_img = nib.load(haxby.bold), nib.load(haxby.mask)
    bold = np.asarray(bold_img.dataobj)
    mask = np.asarray(mask_img.dataobj)
    rows = ["subject\tbold\tlabels\tmask"]
    (root / "ref").mkdir()
    for i in range(1, N_SUBJECTS + 1):
        rng = np.random.default_rng(i)
        flip = (i - 1) % 3  # none, x, y
        b, m = (bold, mask) if flip == 0 else (np.flip(bold, flip - 1), np.flip(mask, flip - 1))
        noise = rng.integers(-(i - 1) * 4, (i - 1) * 4 + 1, size=b.shape)
        b = np.clip(b.astype(np.int32) + noise, -32768, 32767).astype(np.int16)
        d = root / f"s{i}"
        d.mkdir()
        nib.save(nib.Nifti1Image(b, bold_img.affine, bold_img.header), d / "bold.nii.gz")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(m), mask_img.affine, mask_img.header),
                 d / "mask.nii.gz")  # fmt: skip
        (d / "labels.txt").write_bytes(haxby.labels.read_bytes())
        rows.append(f"{i:02d}\t{d / 'bold.nii.gz'}\t{d / 'labels.txt'}\t{d / 'mask.nii.gz'}")
        argv = ["run", str(d / "bold.nii.gz"), "--labels", str(d / "labels.txt"), "--mask",
                str(d / "mask.nii.gz"), "--out", str(root / "ref" / f"sub-{i:02d}"),
                "--quiet", "--no-plots"]  # fmt: skip
        assert main(argv) == 0
    manifest = root / "manifest.tsv"
    manifest.write_text("\n".join(rows) + "\n")
    tstats = {(root / "ref" / f"sub-{i:02d}" / "tstat.nii.gz").read_bytes() for i in (1, 2, 3)}
    assert len(tstats) == 3  # the variants differ
    return manifest, root / "ref"


def test_jobqueue_batch_on_slurm_survives_a_cancelled_worker_job(slurm, subjects, tmp_path):
    manifest, ref = subjects
    out, logs, shared = tmp_path / "out", tmp_path / "logs", tmp_path / "shared"
    logs.mkdir()
    shared.mkdir()
    log = tmp_path / "batch.log"
    name = f"roidask-test-{os.getpid()}"
    cmd = [sys.executable, str(RECIPE), "--kind", "slurm", "--cores", "1", "--memory", "2GiB",
           "--walltime", "00:20:00", "--jobs", "2", "--interface", "lo", "--job-name", name,
           "--log-directory", str(logs), "--shared-temp-directory", str(shared),
           str(manifest), "--out", str(out), "--no-plots"]  # fmt: skip
    batch = start(cmd, log)
    try:
        found = wait_until(
            lambda: re.search(
                r"scheduler at (tls://127\.0\.0\.1:\d+) \(TLS credentials of this batch in "
                r"(\S+), removed at the end\)",
                log.read_text(),
            ),
            timeout=60, what="the scheduler's address", proc=batch, log=log,
        )  # fmt: skip
        address, tls_dir = found.group(1), Path(found.group(2))
        # the batch's credentials: owner-only, in the directory given
        assert tls_dir.parent == shared
        assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
        files = sorted(p.name for p in tls_dir.iterdir())
        assert files == ["ca.pem", "cert.pem", "key.pem"]
        assert {stat.S_IMODE((tls_dir / f).stat().st_mode) for f in files} == {0o600}
        certs = {"tls_ca_file": tls_dir / "ca.pem", "tls_cert": tls_dir / "cert.pem",
                 "tls_key": tls_dir / "key.pem"}  # fmt: skip

        with get_client(address, timeout=10, **certs) as client:
            client.wait_for_workers(2, timeout=120)
            job_of = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
            assert all(w.startswith("tls://127.0.0.1:") for w in job_of)  # workers speak TLS
            jobs = squeue(name)
            assert sorted(job_of.values()) == sorted(jobs)
            assert set(jobs.values()) == {"RUNNING"}

            def busy_worker():
                done = [s for s, st in statuses(out).items() if st == "done"]
                if not done:
                    return None
                busy = [w for w, keys in client.processing().items() if keys and w in job_of]
                return busy[0] if busy else None

            victim = wait_until(busy_worker, timeout=120, what="a subject done and a busy worker",
                                proc=batch, log=log)  # fmt: skip
            subprocess.run(["scancel", job_of[victim]], check=True, timeout=30)
            at_cancel = statuses(out)
            assert list(at_cancel.values()).count("done") < N_SUBJECTS, at_cancel
            # SLURM ends the job; the scheduler loses its worker; the batch goes on
            wait_until(lambda: job_of[victim] not in squeue(name), timeout=60,
                       what="the cancelled job to end")  # fmt: skip
            # (the other worker may finish the last subjects meanwhile: then the batch,
            # and its scheduler, end first; the outputs below show what it did)
            wait_until(lambda: batch.poll() is not None
                       or victim not in client.scheduler_info()["workers"], timeout=30,
                       what="the scheduler to lose the worker")  # fmt: skip
        rc = batch.wait(timeout=180)
    finally:
        kill_group(batch)
        subprocess.run(["scancel", "--name", name], timeout=30, check=False)
    text = log.read_text()
    assert rc == 0, text
    assert statuses(out) == {f"{i:02d}": "done" for i in range(1, N_SUBJECTS + 1)}, text
    assert f"subjects: {N_SUBJECTS} (done {N_SUBJECTS})" in text
    for i in range(1, N_SUBJECTS + 1):
        sub = f"sub-{i:02d}"
        for f in DATA_FILES:
            assert (out / sub / f).read_bytes() == (ref / sub / f).read_bytes(), f"{sub}/{f}"
    assert (out / "group" / "tstat.nii.gz").is_file()
    # the recipe cancelled the other job and removed the credentials
    wait_until(lambda: not squeue(name), timeout=60, what="the worker jobs to end")
    assert not tls_dir.exists()
    assert list(shared.iterdir()) == []


def recipe(name: str, tmp_path: Path, *extra: str) -> list[str]:
    shared, logs = tmp_path / "shared", tmp_path / "logs"
    shared.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)  # the jobs' slurm-N.out (else in the working folder)
    return [sys.executable, str(RECIPE), "--kind", "slurm", "--cores", "1", "--memory", "1GiB",
            "--walltime", "00:10:00", "--jobs", "1", "--interface", "lo", "--job-name", name,
            "--shared-temp-directory", str(shared), "--log-directory", str(logs),
            *extra]  # fmt: skip


def assert_nothing_left(name: str, tmp_path: Path) -> None:
    """The recipe's worker jobs cancelled, its credentials removed."""
    wait_until(lambda: not squeue(name), timeout=60, what="the worker jobs to end")
    assert list((tmp_path / "shared").iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "want"),
    [
        (("--queue", "nosuchpartition"),
         "jobqueue_batch: error: sbatch refused the worker jobs: sbatch: error: invalid "
         "partition specified: nosuchpartition; sbatch: error: Batch job submission failed: "
         "Invalid partition name specified"),
        (("--n-workers", "4"), "--n-workers: not used here"),
        (("--n-work", "4"), "--n-workers: not used here"),  # argparse takes prefixes
        (("--kind", "pbs"), "jobqueue_batch: error: qsub not found: run this on a PBS login "
         "node (or give the --kind of this site's batch system)"),
        (("--threshold", "-1"), "roidask: error: --threshold: "),
    ],
    ids=["bad-partition", "embedded-cluster-flag", "flag-prefix", "no-qsub", "bad-batch-flag"],
)  # fmt: skip
def test_recipe_refuses_what_cannot_run_in_one_line(slurm, subjects, tmp_path, extra, want):
    """Refused before a job is queued (a batch flag: by the batch's own checks), or as soon
    as sbatch refuses the job: not a batch that waits forever for workers."""
    manifest, _ = subjects
    name = f"roidask-refused-{os.getpid()}"
    cmd = recipe(name, tmp_path)
    own = extra[0] in ("--queue", "--kind")  # the script's options, else the batch's
    cmd += [*extra, str(manifest), "--out", str(tmp_path / "out")] if own else [
        str(manifest), "--out", str(tmp_path / "out"), *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert want in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert "submitted" not in proc.stderr  # a batch flag: refused before any job
    assert_nothing_left(name, tmp_path)
    assert not (tmp_path / "out").exists()


def test_recipe_stops_when_no_worker_job_is_left(slurm, subjects, tmp_path):
    """A worker job that ends before its workers join (walltime, scancel, a node failure)
    leaves a scheduler without workers: the recipe stops the batch with one error line
    instead of waiting forever."""
    manifest, _ = subjects
    name = f"roidask-lost-{os.getpid()}"
    log = tmp_path / "batch.log"
    held = "--job-extra=--begin=now+600"  # queued, not started: cancelled before it runs
    cmd = [*recipe(name, tmp_path), held, str(manifest), "--out", str(tmp_path / "out"),
           "--no-plots"]  # fmt: skip
    batch = start(cmd, log)
    try:
        found = wait_until(
            lambda: re.search(r"for the dask workers \((\d+)\)", log.read_text()),
            timeout=60, what="the job's submission", proc=batch, log=log,
        )  # fmt: skip
        subprocess.run(["scancel", found.group(1)], check=True, timeout=30)
        rc = batch.wait(timeout=90)
    finally:
        kill_group(batch)
        subprocess.run(["scancel", "--name", name], timeout=30, check=False)
    text = log.read_text()
    assert rc == 1, text
    assert f"none of the worker jobs ({found.group(1)}) is queued or running any more" in text
    assert text.strip().splitlines()[-1].startswith("roidask: interrupted; the subjects completed")
    assert_nothing_left(name, tmp_path)


@pytest.mark.parametrize(("sig", "status", "how"), [("TERM", 143, "terminated (SIGTERM)"),
                                                    ("INT", 130, "interrupted")])  # fmt: skip
def test_recipe_stopped_by_a_signal_cancels_its_jobs(slurm, subjects, tmp_path, sig, status, how):
    """scancel of the recipe's own job (SIGTERM) and Ctrl-C: the batch's one line and exit
    status (dask-jobqueue's import made Ctrl-C exit 0), the worker jobs cancelled, the
    credentials removed."""
    manifest, _ = subjects
    name = f"roidask-sig-{os.getpid()}"
    log = tmp_path / "batch.log"
    cmd = [*recipe(name, tmp_path), str(manifest), "--out", str(tmp_path / "out"), "--no-plots"]
    batch = start(cmd, log)
    try:
        wait_until(lambda: re.search("^batch: ", log.read_text(), re.M), timeout=60,
                   what="the batch to start", proc=batch, log=log)  # fmt: skip
        batch.send_signal(getattr(signal, f"SIG{sig}"))
        rc = batch.wait(timeout=90)
    finally:
        kill_group(batch)
        subprocess.run(["scancel", "--name", name], timeout=30, check=False)
    text = log.read_text()
    assert rc == status, text
    assert text.strip().splitlines()[-1].startswith(f"roidask: {how}; the subjects"), text
    assert_nothing_left(name, tmp_path)


def test_job_states_tells_ended_jobs_from_an_unanswered_query(slurm, tmp_path, monkeypatch):
    """The watchdog stops a batch only when squeue says its jobs are gone: a query that
    fails (slurmctld busy, a timeout) tells nothing, and the batch goes on."""
    import importlib.util
    import shutil

    scancel = shutil.which("scancel")
    spec = importlib.util.spec_from_file_location("jobqueue_batch", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    held = ["sbatch", "--parsable", "--begin=now+600", "--wrap", "true", "-o",
            str(tmp_path / "held.out")]  # fmt: skip
    job = subprocess.run(held, capture_output=True, text=True, timeout=30, check=True)
    job = job.stdout.strip()
    try:
        assert module.job_states("slurm", [job]) == {job: "PENDING BeginTime"}
        subprocess.run([scancel, job], check=True, timeout=30)
        wait_until(lambda: module.job_states("slurm", [job]) == {}, timeout=60,
                   what="squeue to forget the job")  # fmt: skip
        assert module.job_states("slurm", ["999999"]) == {}  # "Invalid job id specified"
        busy = tmp_path / "bin" / "squeue"
        busy.parent.mkdir()
        busy.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Socket timed out' >&2\nexit 1\n")
        busy.chmod(0o755)
        monkeypatch.setenv("PATH", f"{busy.parent}:{os.environ['PATH']}")
        assert module.job_states("slurm", [job]) is None
        monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
        assert module.job_states("slurm", [job]) is None  # no squeue at all
    finally:
        subprocess.run([scancel, job], timeout=30, check=False)
