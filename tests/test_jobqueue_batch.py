"""Tests of ``cluster/jobqueue_batch.py``, the SLURM/PBS recipe, without a batch system.

Its checks and errors, the job script it prints, and how it runs ``roidask batch``
(on a stand-in for dask-jobqueue's cluster: submitting jobs needs a batch system, which
``tests/test_slurm.py`` brings up).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
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
         "--jobs", "4", "--queue", "normal", "--interface", "lo", "--job-name", "roi",
         "--shared-temp-directory", "/shared", "manifest.tsv",
         "--out", "results", "--fwhm", "6", "--", "--atlas", "harvard"]
    )  # fmt: skip
    assert rc == 3  # roidask batch's status is the script's
    (cluster,) = made
    assert cluster.kind == "pbs"
    assert cluster.options["cores"] == 8
    assert cluster.options["memory"] == "32GiB"
    assert cluster.options["queue"] == "normal"
    assert cluster.options["interface"] == "lo"
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


# --------------------------------------------------------------------------- refusals

#: A job's size, valid.
JOB = ["--cores", "8", "--memory", "32GiB", "--walltime", "02:00:00"]
HELP = " (see jobqueue_batch.py --help)"


def run_recipe(argv: list[str], capsys) -> tuple[int, list[str]]:
    """The recipe run in this process: its exit status and the lines of its stderr."""
    try:
        status = load_recipe().main(argv)
    except SystemExit as exc:  # argparse's exit
        status = exc.code
    return status, capsys.readouterr().err.splitlines()


@pytest.fixture
def nothing_runs(monkeypatch):
    """The test fails if the recipe runs the batch (its checks included), starts a cluster
    or renders a job script."""

    def refuse(name):
        def refused(*args, **kwargs):
            raise AssertionError(f"{name} ran")

        return refused

    for name in ("roidask.cli.main", "roidask.cluster.jobqueue_cluster",
                 "roidask.cluster.job_script"):  # fmt: skip
        monkeypatch.setattr(name, refuse(name))


REFUSED = {
    # the network interface the scheduler listens on: this host's
    "interface": ([*JOB, "--interface", "nosuch0", "manifest.tsv", "--out", "out"],
                  r"--interface: expected a network interface of this host, where the scheduler "
                  r"listens \((\w+, )*lo(, \w+)*\), got 'nosuch0'"),
    # processes per job: 1 to --cores (dask-jobqueue divides the cores among them)
    "processes-0": ([*JOB, "--processes", "0", "--print-job-script"],
                    re.escape("--processes: expected a positive integer, got 0" + HELP)),
    "processes-negative": ([*JOB, "--processes", "-2", "--print-job-script"],
                           re.escape("--processes: expected a positive integer, got -2" + HELP)),
    "processes-over-cores": ([*JOB, "--processes", "16", "manifest.tsv", "--out", "out"],
                             re.escape("--processes: expected at most --cores (8) worker "
                                       "processes per job (each has cores/processes threads), "
                                       "got 16")),
    # the flags named, not the library's parameters
    "cores": (["--cores", "-8", "--memory", "32GiB", "--walltime", "02:00:00",
               "--print-job-script"],
              re.escape("--cores: expected a positive integer, got -8" + HELP)),
    "memory": (["--cores", "8", "--memory", "3", "--walltime", "02:00:00", "manifest.tsv",
                "--out", "out"],
               r"--memory: '3' is less than a worker process needs before any task .*"),
    "walltime": (["--cores", "8", "--memory", "32GiB", "--walltime", "2 hours",
                  "--print-job-script"],
                 re.escape("--walltime: expected a time limit such as '02:00:00' or "
                           "'1-00:00:00', got '2 hours'")),
    # PBS's walltime is HH:MM:SS
    "walltime-pbs-days": (["--kind", "pbs", "--cores", "8", "--memory", "32GiB", "--walltime",
                           "1-00:00:00", "--print-job-script"],
                          re.escape("--walltime: expected a PBS time limit HH:MM:SS (the hours "
                                    "may exceed 24, e.g. '36:00:00'), got '1-00:00:00'")),
    "walltime-pbs-short": (["--kind", "pbs", "--cores", "8", "--memory", "32GiB", "--walltime",
                            "02:00", "manifest.tsv", "--out", "out"],
                           r"--walltime: expected a PBS time limit HH:MM:SS .*, got '02:00'"),
    # argparse's errors: one line too, the same prefix, a hint to --help
    "missing-flag": (["--cores", "8", "--memory", "32GiB", "manifest.tsv", "--out", "out"],
                     re.escape("the following arguments are required: --walltime" + HELP)),
    "bad-kind": ([*JOB, "--kind", "sge", "--print-job-script"],
                 r"--kind: invalid choice: 'sge' .*" + re.escape(HELP)),
    "unknown-flag": ([*JOB, "--fwhmm", "6", "manifest.tsv", "--out", "out"],
                     re.escape("--fwhmm: not an option of this script or of roidask batch"
                               + HELP)),
    "two-manifests": ([*JOB, "a.tsv", "b.tsv", "--out", "out"],
                      re.escape("b.tsv: unexpected argument (MANIFEST is 'a.tsv')" + HELP)),
    "no-manifest": ([*JOB, "--out", "out"],
                    re.escape("MANIFEST and --out are required (unless --print-job-script)"
                              + HELP)),
    # the batch's flags this script sets itself: before MANIFEST as after it
    "batch-flag-before-manifest": ([*JOB, "--n-work", "4", "manifest.tsv", "--out", "out"],
                                   r"--n-workers: not used here \(.*\)"),
    "check": ([*JOB, "manifest.tsv", "--check", "--out", "out"], r"--check: not used here .*"),
}  # fmt: skip


@pytest.mark.parametrize(("argv", "want"), REFUSED.values(), ids=REFUSED.keys())
def test_wrong_options_are_one_line_naming_the_flag(nothing_runs, capsys, argv, want):
    """Refused before anything runs (the batch's checks included), in one line that names
    the flag, the expectation and the value: not a traceback, not the library's parameter
    names, not argparse's usage block."""
    status, lines = run_recipe(argv, capsys)
    assert status == 2, lines
    assert len(lines) == 1, lines
    assert re.fullmatch("jobqueue_batch: error: " + want, lines[0]), lines[0]


def test_an_interface_without_ipv4_is_refused(nothing_runs, capsys):
    """distributed's scheduler listens on the interface's IPv4 address."""
    interfaces = psutil.net_if_addrs()
    without = [n for n, addrs in interfaces.items()
               if not any(a.family == socket.AF_INET for a in addrs)]  # fmt: skip
    if not without:
        pytest.skip("every network interface of this host has an IPv4 address")
    argv = [*JOB, "--interface", without[0], "manifest.tsv", "--out", "out"]
    status, lines = run_recipe(argv, capsys)
    assert status == 2
    assert lines == [
        f"jobqueue_batch: error: --interface: expected an interface with an IPv4 address, "
        f"where the scheduler listens ({', '.join(sorted(set(interfaces) - set(without)))}), "
        f"got {without[0]!r}, which has none"
    ]


def test_a_missing_shared_temp_directory_is_named_by_its_flag(monkeypatch, capsys, tmp_path):
    """Refused by roidask.cluster before anything is written (after the batch's checks)."""
    checks = []
    monkeypatch.setattr("roidask.cli.main", lambda argv: checks.append(argv) or 0)
    missing = tmp_path / "missing"
    argv = [*JOB, "--shared-temp-directory", str(missing), "manifest.tsv", "--out", "out"]
    status, lines = run_recipe(argv, capsys)
    assert status == 2
    assert lines == [
        f"jobqueue_batch: error: --shared-temp-directory: expected an existing directory for "
        f"the cluster's TLS credentials, got {str(missing)!r}"
    ]
    assert [argv[-1] for argv in checks] == ["--check"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["--help"], [*JOB, "manifest.tsv", "--out", "out"]])
def test_a_python_without_roidask_is_one_line(argv):
    """Run by a Python without roidask (here: one without its site-packages), even --help."""
    out = subprocess.run(
        [sys.executable, "-I", "-S", str(RECIPE), *argv],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        f"jobqueue_batch: error: roidask is not installed in this Python ({sys.executable}); "
        "run this script with the Python roidask is installed in, or install it there: "
        "pip install 'roidask[jobqueue]'"
    ]


# --------------------------------------------------------------------------- roidask batch


def test_options_of_the_batch_go_before_or_after_manifest(monkeypatch, capsys):
    """Wherever they are given, the batch's options reach it whole (a prefix in full, a
    value that starts with '-' as --flag=value); only MANIFEST is MANIFEST."""
    calls = []
    monkeypatch.setattr("roidask.cli.main", lambda argv: calls.append(argv) or 2)
    argv = [*JOB, "--thresh", "3", "--contrast", "face", "house", "--no-plots", "manifest.tsv",
            "--out", "results", "--fwhm=6", "--mask=-m.nii.gz", "--clip", "-1"]  # fmt: skip
    status, _ = run_recipe(argv, capsys)
    assert status == 2  # the status of the batch's checks
    assert calls == [
        ["batch", "manifest.tsv", "--out", "results", "--threshold", "3", "--contrast", "face",
         "house", "--no-plots", "--fwhm", "6", "--mask=-m.nii.gz", "--clip=-1", "--check"]
    ]  # fmt: skip


@pytest.mark.parametrize(
    "before", [["--threshold", "3"], ["--contrast", "face", "house"]], ids=["value", "pair"]
)
def test_the_batch_checks_manifest_given_after_its_options(capsys, tmp_path, before):
    """roidask batch's own checks (run for real) see MANIFEST, not an option's value."""
    missing = tmp_path / "manifest.tsv"
    status, lines = run_recipe([*JOB, *before, str(missing), "--out", str(tmp_path / "out")],
                               capsys)  # fmt: skip
    assert status == 2
    assert lines[-1].startswith(f"roidask: error: {missing}: no such file"), lines
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- job script


@pytest.mark.parametrize(
    ("kind", "walltime", "want"),
    [("slurm", "02:00:00", "#SBATCH -e {}/dask-worker-%J.err\n#SBATCH -o {}/dask-worker-%J.out"),
     ("pbs", "36:00:00", "#PBS -e {}/\n#PBS -o {}/")],
)  # fmt: skip
def test_print_job_script_creates_no_log_directory(tmp_path, kind, walltime, want):
    """--print-job-script submits and writes nothing: the log directory it names is made by
    the batch that runs, not by the script's printing."""
    for logs in ("logs/of/the/batch", str(tmp_path / "absolute" / "logs")):
        out = subprocess.run(
            [sys.executable, str(RECIPE), "--print-job-script", "--kind", kind, "--cores", "8",
             "--memory", "32GiB", "--walltime", walltime, "--log-directory", logs],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert want.format(logs, logs) in out.stdout
        assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- docs


def test_readme_names_the_refused_batch_options():
    """cluster/README.md lists the options of roidask batch the script refuses (not its own
    --dashboard, which it takes)."""
    recipe = load_recipe()
    parser = recipe.build_parser()
    own = {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
    refused = sorted(set(recipe.NOT_PASSED) - own)
    readme = " ".join((CLUSTER_DIR / "README.md").read_text().split())
    listed = re.search(r"(`--[^.]*?) of `roidask batch` are refused", readme)
    assert listed, "cluster/README.md does not list the refused options of roidask batch"
    named = re.findall(r"`(--[\w*-]+)`", listed.group(1))
    tls = [f for f in refused if f.startswith("--tls-")]
    assert sorted(f for n in named for f in (tls if n == "--tls-*" else [n])) == refused
    assert "`--dashboard` is the script's own" in readme
