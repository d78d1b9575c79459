"""Tests of ``cluster/jobqueue_batch.py``, the SLURM/PBS recipe, without a batch system.

Its checks and errors, the job script it prints, and how it runs ``roidask batch``
(on a stand-in for dask-jobqueue's cluster: submitting jobs needs a batch system, which
``tests/test_slurm.py`` brings up).
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from roidask.cluster import TLSCredentials

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = ROOT / "cluster"
RECIPE = CLUSTER_DIR / "jobqueue_batch.py"


def test_jobqueue_batch_prints_job_script():
    out = subprocess.run(
        [sys.executable, str(RECIPE), "--print-job-script",
         "--kind", "slurm", "--cores", "8", "--memory", "32GiB", "--walltime", "02:00:00",
         "--queue", "normal", "--job-extra=--gres=gpu:0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("#!/usr/bin/env bash")
    for directive in (
        "-p normal",
        "--cpus-per-task=8",
        "--mem=32G",
        "-t 02:00:00",
        "--gres=gpu:0",
    ):
        assert f"#SBATCH {directive}\n" in out.stdout
    assert "distributed.cli.dask_worker" in out.stdout


def test_jobqueue_batch_reports_bad_options():
    out = subprocess.run(
        [sys.executable, str(RECIPE), "--print-job-script",
         "--cores", "8", "--memory", "32GiB", "--walltime", "2 hours"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "jobqueue_batch: error: walltime: expected a time limit such as '02:00:00' or "
        "'1-00:00:00', got '2 hours'"
    )


def load_recipe():
    spec = importlib.util.spec_from_file_location("jobqueue_batch", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeJobqueueCluster:
    scheduler_address = "tls://10.0.0.1:8786"
    dashboard_link = ""

    def __init__(self, kind, **options):
        self.kind, self.options, self.scaled, self.closed = kind, options, [], False
        d = Path("/shared/.roidask-tls-x")
        self.tls_credentials = TLSCredentials(d, d / "ca.pem", d / "cert.pem", d / "key.pem")

        self.workers, self.scheduler_info = {}, {"workers": {}}

    def scale(self, **kwargs):  # submits one job per job asked for
        self.scaled.append(kwargs)
        self.workers = {
            f"w{i}": SimpleNamespace(job_id=str(100 + i)) for i in range(kwargs["jobs"])
        }

    async def _correct_state(self):  # the submissions' outcome (all submitted here)
        pass

    def sync(self, func):
        return asyncio.run(func())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


def test_jobqueue_batch_runs_roidask_batch_on_the_cluster(monkeypatch):
    made, calls = [], []

    def fake_cluster(kind, **options):
        made.append(FakeJobqueueCluster(kind, **options))
        return made[-1]

    def fake_main(argv):
        calls.append(argv)
        if "--check" in argv:  # the batch's checks, before any job is submitted
            assert not made
            return 0
        assert not made[0].closed  # the cluster is up while the batch runs
        return 3

    monkeypatch.setattr("roidask.cluster.jobqueue_cluster", fake_cluster)
    monkeypatch.setattr("roidask.cli.main", fake_main)
    rc = load_recipe().main(
        ["--kind", "pbs", "--cores", "8", "--memory", "32GiB", "--walltime", "02:00:00",
         "--jobs", "4", "--queue", "normal", "--interface", "ib0", "--job-name", "roi",
         "--shared-temp-directory", "/shared", "manifest.tsv",
         "--out", "results", "--fwhm", "6", "--", "--atlas", "harvard"]
    )  # fmt: skip
    assert rc == 3  # roidask batch's status is the script's
    (cluster,) = made
    assert cluster.kind == "pbs"
    assert cluster.options["cores"] == 8
    assert cluster.options["memory"] == "32GiB"
    assert cluster.options["queue"] == "normal"
    assert cluster.options["interface"] == "ib0"
    assert cluster.options["job_name"] == "roi"
    assert cluster.options["shared_temp_directory"] == "/shared"
    assert cluster.scaled == [{"jobs": 4}]
    assert cluster.closed
    assert calls == [
        ["batch", "manifest.tsv", "--out", "results", "--fwhm", "6", "--atlas", "harvard",
         "--check"],
        ["batch", "manifest.tsv", "--out", "results", "--fwhm", "6", "--atlas", "harvard",
         "--scheduler", "tls://10.0.0.1:8786",
         "--tls-ca-file=/shared/.roidask-tls-x/ca.pem",
         "--tls-cert=/shared/.roidask-tls-x/cert.pem",
         "--tls-key=/shared/.roidask-tls-x/key.pem"],
    ]  # fmt: skip
