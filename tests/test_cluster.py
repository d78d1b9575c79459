"""Tests of roidask.cluster and of the recipes under cluster/.

Schedulers and workers run as real processes bound to 127.0.0.1 and are
killed in the fixtures' ``finally``; every wait has a deadline.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from helpers.cluster import (
    closed_port,
    kill_group,
    make_ca_and_cert,
    start,
    start_cluster,
    stop,
    tls_cli_args,
    wait_for_scheduler_file,
    wait_for_worker,
)

from roidask.cluster import (
    TLSCredentials,
    dashboard_link,
    describe_client,
    get_client,
    job_script,
)
from roidask.exceptions import ClusterError, InvalidParameterError, RoidaskError

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = ROOT / "cluster"


# --------------------------------------------------------------------------- helpers


def dask_sum():
    import dask.array as da

    return int(da.arange(100, chunks=10).sum().compute())


# --------------------------------------------------------------------------- import cost


def test_import_does_not_import_distributed():
    code = (
        "import sys, roidask.cluster; "
        "bad = [m for m in ('distributed', 'dask_jobqueue', 'cryptography') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------- embedded


def test_embedded_client_computes_on_loopback_and_closes():
    with get_client(n_workers=1, threads_per_worker=1, memory_limit="1GiB") as client:
        assert dask_sum() == 4950  # the client is the default scheduler inside the block
        assert client.submit(sum, [1, 2, 3]).result(timeout=10) == 6
        info = client.scheduler_info()
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert len(info["workers"]) == 1
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in info["workers"])
        (worker,) = info["workers"].values()
        assert worker["nthreads"] == 1
        assert worker["memory_limit"] == 2**30
        line = describe_client(client)
        assert line == (
            f"dask scheduler {client.scheduler.address}: 1 worker, 1 thread, 1.00 GiB memory"
        )
        assert dashboard_link(client) is None
        cluster = client.cluster
        # the scheduler's HTTP endpoint (/health) stays on loopback too, off port 8787
        http = cluster.scheduler.services["dashboard"]
        assert http.address == "127.0.0.1"
        assert http.port != 8787
    assert client.status == "closed"
    assert cluster.status.name == "closed"


def test_more_workers_than_cores_share_the_machine_s_memory():
    """By default the workers share the machine's memory, however many there are:
    distributed's own "auto" gives each a per-core share, which more workers than
    cores would overcommit."""
    from roidask.cluster import _machine_memory

    n = max(1, os.cpu_count() or 1) + 1
    with get_client(n_workers=n, threads_per_worker=1) as client:
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
    assert limits == [_machine_memory() // n] * n


def test_closing_the_embedded_cluster_under_a_busy_worker_logs_nothing(capfd):
    """Closed while a worker computes (Ctrl-C, SIGTERM, an error), the embedded cluster's
    nanny kills it after a few seconds: it says so in this process, where it runs, after
    roidask's own last line; it does not say it of clusters of others."""
    import logging

    with get_client(n_workers=1, threads_per_worker=1, memory_limit="1GiB") as client:
        future = client.submit(time.sleep, 60, pure=False)  # noqa: F841 (kept: computed)
        deadline = time.monotonic() + 20
        while not any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(client.processing().values())
    assert "still alive" not in capfd.readouterr().err
    assert logging.getLogger("distributed.nanny").filters == []


def test_embedded_threads_client_uses_no_socket():
    with get_client(processes=False, n_workers=1, threads_per_worker=2) as client:
        assert client.scheduler.address.startswith("inproc://")
        assert dask_sum() == 4950
        assert "1 worker, 2 threads" in describe_client(client)
    assert client.status == "closed"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_workers": 0}, r"n_workers: expected a positive integer, got 0"),
        ({"threads_per_worker": 1.5}, r"threads_per_worker: .* got 1.5"),
        ({"memory_limit": "4 potatoes"}, r"memory_limit: expected a size .*'4 potatoes'"),
        ({"memory_limit": -5}, r"memory_limit: expected a positive size, got -5"),
        ({"tls_ca_file": "ca.pem"}, r"tls_ca_file: applies only to a 'tls://HOST:PORT' .*none"),
        ({"scheduler": "http://127.0.0.1:8786"}, r"expected an address 'tcp://HOST:PORT'"),
        ({"scheduler": "tcp://127.0.0.1:http"}, r"got 'tcp://127.0.0.1:http'"),
        ({"scheduler": "127.0.0.1:8786"}, r"got '127.0.0.1:8786'"),
        (
            {"scheduler": "tcp://h:1", "n_workers": 2},
            r"^n_workers: applies only to an embedded cluster, not to the scheduler at 'tcp://h:1'$",
        ),
        ({"scheduler": "tcp://h:1", "memory_limit": "1GiB"}, r"memory_limit: applies only"),
        ({"scheduler": "tcp://h:1", "host": "0.0.0.0"}, r"host: applies only to an embedded"),
        ({"host": "tcp://0.0.0.0"}, r"host: expected an address to listen on .*'tcp://0.0.0.0'"),
        (
            {"scheduler": "tcp://h:1", "tls_cert": "c.pem"},
            r"tls_cert: applies only to a 'tls://HOST:PORT' .* got 'tcp://h:1'",
        ),
        (
            {"scheduler": "tls://h:1", "tls_cert": "c.pem"},
            r"tls_ca_file, tls_key: required to connect to 'tls://h:1'",
        ),
        ({"scheduler": "tcp://h:1", "timeout": 0}, r"timeout: expected a positive number"),
    ],
)
def test_get_client_rejects_bad_options(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match), get_client(**kwargs):
        pytest.fail("a client was made")  # pragma: no cover


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"n_workers": 5},
            r"^n_workers: 5 worker processes would each have 204.80 MiB of this machine's "
            r"1.00 GiB of memory, less than a worker needs before any task \(256MiB\); "
            r"expected at most 4 workers$",
        ),
        (
            {"n_workers": 1, "memory_limit": "10PB"},
            r"^memory_limit: '10PB' is more than this machine's memory \(1.00 GiB\); "
            r"expected at most 1.00 GiB$",
        ),
        (
            {"n_workers": 2, "memory_limit": "600MiB"},
            r"^memory_limit: '600MiB' for each of 2 workers \(1.17 GiB in all\) is more than "
            r"this machine's memory \(1.00 GiB\); expected at most 512.00 MiB per worker, "
            r"or fewer workers$",
        ),
    ],
)
def test_embedded_workers_need_memory_the_machine_has(monkeypatch, kwargs, match):
    """Workers whose memory the machine does not have are refused before any starts: a
    share of the memory under what a worker process needs (``--n-workers 1000``), or
    limits above the machine's, which distributed would ignore with a warning (and the
    batch would fit its blocks to)."""
    from distributed import system

    monkeypatch.setattr(system, "MEMORY_LIMIT", 2**30)
    with pytest.raises(InvalidParameterError, match=match) as info:
        with get_client(**kwargs):
            pytest.fail("a cluster was started")  # pragma: no cover
    assert info.value.param == ("memory_limit" if "memory_limit" in kwargs else "n_workers")


def test_get_client_names_missing_tls_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked")
    missing = tmp_path / "nope" / "cert.pem"
    with (
        pytest.raises(InvalidParameterError, match=r"tls_cert: no such file '.*nope/cert.pem'"),
        get_client("tls://127.0.0.1:1", tls_ca_file=ca, tls_cert=missing, tls_key=ca),
    ):
        pytest.fail("a client was made")  # pragma: no cover


def test_dashboard_without_bokeh_is_a_clear_error():
    if importlib.util.find_spec("bokeh") is not None:
        pytest.skip("bokeh is installed: the dashboard would start")
    with pytest.raises(InvalidParameterError, match=r"dashboard=True: .* needs bokeh"):
        with get_client(dashboard=True, n_workers=1):
            pytest.fail("a client was made")  # pragma: no cover


# --------------------------------------------------------------------------- remote tcp


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tcp-cluster")
    address, procs = start_cluster(tmp)
    try:
        yield address, procs, tmp
    finally:
        stop(procs)


def test_connect_to_running_scheduler(tcp_cluster):
    address, procs, tmp = tcp_cluster
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", address)
    with get_client(address) as client:
        wait_for_worker(client, procs, tmp)
        assert client.scheduler.address == address
        assert dask_sum() == 4950
        assert describe_client(client).startswith(f"dask scheduler {address}: 1 worker, 1 thread")
    assert client.status == "closed"
    # closing the client leaves the scheduler and its worker running
    assert all(p.poll() is None for p in procs)
    # options of the embedded cluster the CLI always passes are ignored with an address
    with get_client(address, processes=False, dashboard=False) as client:
        assert client.submit(pow, 2, 10).result(timeout=10) == 1024


def test_a_scheduler_without_a_dashboard_gets_no_link(tcp_cluster):
    """A scheduler started with --no-dashboard still serves /health over HTTP (its
    services name a "dashboard" port): no link to a /status it does not serve."""
    address = tcp_cluster[0]
    with get_client(address) as client:
        assert dashboard_link(client) is None
        assert "dashboard" not in describe_client(client)


def test_a_scheduler_serving_its_dashboard_gets_a_link(tmp_path):
    """The link is printed when the scheduler has the dashboard's (bokeh) application: here
    a stand-in of that name, added by a preload (bokeh is not needed to print it)."""
    preload = tmp_path / "fake_dashboard.py"
    preload.write_text(
        "def dask_setup(scheduler):\n"
        "    app = type('BokehApplication', (), {})()\n"
        "    scheduler.http_application.applications.append(app)\n"
    )
    sched_file, log = tmp_path / "scheduler.json", tmp_path / "scheduler.log"
    cmd = [str(Path(sys.executable).with_name("dask")), "scheduler", "--host", "127.0.0.1",
           "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file",
           str(sched_file), "--preload", str(preload)]  # fmt: skip
    proc = start(cmd, log)
    try:
        address = wait_for_scheduler_file(sched_file, proc, log)
        with get_client(address) as client:
            port = client.scheduler_info()["services"]["dashboard"]
            link = f"http://127.0.0.1:{port}/status"
            assert dashboard_link(client) == link
            assert describe_client(client).endswith(f"memory, dashboard {link}")
    finally:
        stop([proc])


def test_unreachable_scheduler_fails_fast_naming_address():
    address = f"tcp://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=re.escape(f"at '{address}' (timeout 2 s)")) as info:
        with get_client(address, timeout=2):
            pytest.fail("connected to a closed port")  # pragma: no cover
    assert time.monotonic() - t0 < 8
    assert isinstance(info.value, RoidaskError)  # the CLI prints it as one line


@pytest.mark.parametrize("when", ["computing", "sending", "after the client gave up"])
def test_a_lost_scheduler_is_one_cluster_error(tmp_path, capfd, when):
    """The scheduler killed under a client: the work fails with one ClusterError naming
    the address, not the FutureCancelledError of whatever was computing, and nothing of
    distributed's reconnection is logged (the error says it)."""
    address, procs = start_cluster(tmp_path)
    try:
        lost = rf"scheduler: lost the connection to the dask scheduler at '{re.escape(address)}'"
        with pytest.raises(ClusterError, match=lost + " before the work was done"):
            with get_client(address, timeout=2) as client:
                wait_for_worker(client, procs, tmp_path)
                future = client.submit(time.sleep, 30, pure=False)
                if when == "sending":  # as a batch's driver does: "Batched Comm Closed"
                    os.kill(procs[0].pid, signal.SIGKILL)  # sent to, before it is seen gone
                    for i in range(200):
                        future = client.submit(pow, 2, i, pure=False)
                    time.sleep(0.5)
                kill_group(procs[0])  # the scheduler
                if when == "after the client gave up":
                    deadline = time.monotonic() + 20
                    while client.status != "closed" and time.monotonic() < deadline:
                        time.sleep(0.05)
                    assert client.status == "closed"
                    future = client.submit(pow, 2, 10)
                future.result(timeout=20)
    finally:
        stop(procs)
    err = capfd.readouterr().err
    assert "reconnect" not in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    if shutil.which("openssl") is None:  # pragma: no cover
        pytest.skip("the openssl command is needed to make test certificates")
    tmp = tmp_path_factory.mktemp("tls-cluster")
    certs = make_ca_and_cert(tmp / "certs")
    address, procs = start_cluster(tmp, tls_cli_args(certs), protocol="tls")
    try:
        yield address, procs, tmp, certs
    finally:
        stop(procs)


def test_tls_client_computes(tls_cluster):
    address, procs, tmp, certs = tls_cluster
    assert re.fullmatch(r"tls://127\.0\.0\.1:\d+", address)
    with get_client(address, **certs) as client:
        wait_for_worker(client, procs, tmp)
        assert client.scheduler.address == address
        assert dask_sum() == 4950
        assert client.security.require_encryption


def test_plain_tcp_client_is_refused_by_tls_scheduler(tls_cluster):
    address = tls_cluster[0]
    plain = address.replace("tls://", "tcp://")
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=re.escape(f"at '{plain}'")) as info:
        with get_client(plain, timeout=3):
            pytest.fail("a plain TCP client was accepted")  # pragma: no cover
    assert time.monotonic() - t0 < 15
    assert "connect to tls://... with tls_ca_file, tls_cert and tls_key" in str(info.value)


def test_tls_client_with_foreign_ca_is_refused(tls_cluster, tmp_path):
    address = tls_cluster[0]
    foreign = make_ca_and_cert(tmp_path / "foreign")
    with pytest.raises(ClusterError, match=re.escape(f"at '{address}'")):
        with get_client(address, timeout=3, **foreign):
            pytest.fail("a certificate from another CA was accepted")  # pragma: no cover


# --------------------------------------------------------------------------- jobqueue


JOB = {"cores": 4, "memory": "16GiB", "walltime": "01:00:00", "queue": "normal"}


def worker_command(script: str) -> str:
    (line,) = [ln for ln in script.splitlines() if "dask_worker" in ln or "dask worker" in ln]
    return line


def test_slurm_job_script():
    script = job_script("slurm", account="proj42", job_extra_directives=["--gres=gpu:0"], **JOB)
    directives = [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]
    assert "#SBATCH -p normal" in directives
    assert "#SBATCH -A proj42" in directives
    assert "#SBATCH --cpus-per-task=4" in directives
    assert "#SBATCH --mem=16G" in directives
    assert "#SBATCH -t 01:00:00" in directives
    assert "#SBATCH --gres=gpu:0" in directives
    command = worker_command(script)
    # the throw-away scheduler's address is replaced by dask-jobqueue's placeholder
    assert "tls://<insert-scheduler-address-here>:8786" in command
    assert "127.0.0.1" not in script
    assert re.search(r"--nthreads \d+ .*--memory-limit", command)
    # the worker speaks TLS with the batch's credentials (their directory: a placeholder)
    assert command.endswith(
        " --protocol tls:// --tls-ca-file <roidask-tls-directory>/ca.pem "
        "--tls-cert <roidask-tls-directory>/cert.pem --tls-key <roidask-tls-directory>/key.pem"
    )


def test_pbs_job_script():
    script = job_script("pbs", python="/opt/py/bin/python", **JOB)
    directives = [ln for ln in script.splitlines() if ln.startswith("#PBS")]
    assert "#PBS -q normal" in directives
    assert "#PBS -l select=1:ncpus=4:mem=16GB" in directives
    assert "#PBS -l walltime=01:00:00" in directives
    command = worker_command(script)
    assert command.startswith(
        "/opt/py/bin/python -m distributed.cli.dask_worker tls://<insert-scheduler-address-here>"
    )
    assert "--protocol tls:// --tls-ca-file <roidask-tls-directory>/ca.pem" in command


@pytest.mark.parametrize(
    ("kind", "kwargs", "match"),
    [
        ("lsf", {}, r"kind: expected one of 'slurm', 'pbs', got 'lsf'"),
        ("slurm", {"cores": 0}, r"cores: expected a positive integer, got 0"),
        ("slurm", {"memory": "lots"}, r"memory: expected a size .*'lots'"),
        ("pbs", {"walltime": "2h"}, r"walltime: expected a time limit .*'2h'"),
        ("slurm", {"job_extra_directives": "--exclusive"}, r"job_extra_directives: expected a"),
        ("slurm", {"protocol": "tcp://"}, r"protocol: the cluster always uses TLS .*'tcp://'"),
        ("pbs", {"security": False}, r"security: the cluster always uses TLS .* got False"),
        (
            "slurm",
            {"scheduler_options": {"protocol": "tcp"}},
            r"scheduler_options: protocol: the cluster always uses TLS",
        ),
    ],
)
def test_job_script_rejects_bad_options(kind, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        job_script(kind, **{**JOB, **kwargs})


def test_jobqueue_cluster_binds_where_asked_and_submits_nothing(tmp_path):
    from roidask.cluster import jobqueue_cluster

    with jobqueue_cluster(
        "slurm", scheduler_options={"host": "127.0.0.1"}, shared_temp_directory=tmp_path, **JOB
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        assert address in worker_command(cluster.job_script())
        assert not cluster.workers  # nothing submitted before scale()
        assert cluster.scheduler.services["dashboard"].address == "127.0.0.1"


def refused(address: str, **tls) -> ClusterError:
    """The error of a client of ``address`` that the scheduler does not let in."""
    with pytest.raises(ClusterError, match=re.escape(f"at '{address}'")) as info:
        with get_client(address, timeout=3, **tls):
            pytest.fail(f"a client was let in at {address}")  # pragma: no cover
    return info.value


def test_jobqueue_cluster_speaks_tls_with_its_own_credentials(tmp_path):
    """Only holders of the batch's credentials get in: a worker started with the job's
    command computes; a plain TCP client and one with another CA's credentials are
    refused; the credentials are owner-only and removed when the cluster closes."""
    from roidask.cluster import jobqueue_cluster

    shared = tmp_path / "shared"
    shared.mkdir()
    other = TLSCredentials.create(tmp_path)
    with jobqueue_cluster(
        "slurm", cores=1, memory="1GiB", walltime="00:10:00", interface="lo",
        shared_temp_directory=shared,
    ) as cluster:  # fmt: skip
        address = cluster.scheduler_address
        assert re.fullmatch(r"tls://127\.0\.0\.1:\d+", address)
        http = cluster.scheduler.services["dashboard"]  # /health: loopback, not 8787
        assert (http.address, http.port != 8787) == ("127.0.0.1", True)
        tls = cluster.tls_credentials
        assert tls.directory.parent == shared
        assert stat.S_IMODE(tls.directory.stat().st_mode) == 0o700
        assert sorted(p.name for p in tls.directory.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
        for path in (tls.ca_file, tls.cert, tls.key):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert b"PRIVATE KEY" not in tls.ca_file.read_bytes()  # the CA's key is not written

        # the exact command of a worker job joins, over TLS
        command = shlex.split(worker_command(cluster.job_script()))
        assert command[command.index("--tls-key") + 1] == str(tls.key)
        worker = start(command, tmp_path / "worker.log")
        try:
            with get_client(address, **tls.client_options()) as client:
                assert client.security.require_encryption
                wait_for_worker(client, [worker], tmp_path)
                (worker_address,) = client.scheduler_info()["workers"]
                assert worker_address.startswith("tls://127.0.0.1:")
                assert dask_sum() == 4950

            error = refused(address.replace("tls://", "tcp://"))
            assert "connect to tls://... with tls_ca_file, tls_cert and tls_key" in str(error)
            refused(address, **other.client_options())
            # the worker itself refuses a plain client too
            refused(worker_address.replace("tls://", "tcp://"))
        finally:
            stop([worker])
    assert not tls.directory.exists()
    assert list(shared.iterdir()) == []


def test_job_script_leaves_no_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    job_script("slurm", shared_temp_directory=tmp_path / "ignored", **JOB)
    # (distributed's scheduler leaves its dask-scratch-space)
    assert [p.name for p in tmp_path.iterdir() if "roidask" in p.name] == []


def test_tls_credentials_are_checked_and_removed_without_touching_other_files(tmp_path):
    with pytest.raises(
        InvalidParameterError, match=r"shared_temp_directory: expected an existing directory"
    ):
        TLSCredentials.create(tmp_path / "missing")
    tls = TLSCredentials.create(tmp_path)
    other = TLSCredentials.create(tmp_path)
    assert tls.directory != other.directory
    assert tls.ca_file.read_bytes() != other.ca_file.read_bytes()
    mine = tls.directory / "notes.txt"
    mine.write_text("not roidask's")
    tls.remove()
    assert sorted(p.name for p in tls.directory.iterdir()) == ["notes.txt"]
    tls.remove()  # idempotent
    assert other.key.is_file()


def test_embedded_cluster_beyond_loopback_speaks_tls(tmp_path):
    with get_client(
        host="0.0.0.0", n_workers=1, threads_per_worker=1, memory_limit="1GiB"
    ) as client:
        address = client.scheduler.address
        assert address.startswith("tls://")
        assert dask_sum() == 4950
        ca = Path(client.security.tls_ca_file)
        assert stat.S_IMODE(ca.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(Path(client.security.tls_client_key).stat().st_mode) == 0o600
        port = address.rsplit(":", 1)[1]
        # listening on every interface, loopback included: no way in without the files
        refused(f"tcp://127.0.0.1:{port}")
        refused(f"tls://127.0.0.1:{port}", **TLSCredentials.create(tmp_path).client_options())
    assert not ca.parent.exists()
    # a loopback host stays plain TCP
    with get_client(host="localhost", n_workers=1, threads_per_worker=1) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")


def test_missing_dask_jobqueue_names_the_extra(monkeypatch):
    from roidask.cluster import jobqueue_cluster

    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'roidask\[jobqueue\]'"):
        jobqueue_cluster("slurm", **JOB)


# --------------------------------------------------------------------------- recipes


def load_yaml(name: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((CLUSTER_DIR / name).read_text()) if d is not None]
    assert docs, f"{name} has no YAML document"
    return docs


def test_docker_compose():
    (compose,) = load_yaml("docker-compose.yml")
    services = compose["services"]
    assert {"scheduler", "worker", "batch"} <= set(services)
    for svc in services.values():
        assert svc["image"] == "roidask:local"
        assert svc["build"] == {"context": "..", "dockerfile": "cluster/Dockerfile"}
        assert (CLUSTER_DIR / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    sched = services["scheduler"]["command"]
    assert sched[:2] == ["dask", "scheduler"]
    port = sched[sched.index("--port") + 1]
    worker = services["worker"]
    assert worker["command"][:3] == ["dask", "worker", f"tcp://scheduler:{port}"]
    assert worker["command"][worker["command"].index("--memory-limit") + 1] == "4GiB"
    assert worker["deploy"]["replicas"] == 2
    batch = services["batch"]["command"]
    assert batch[:2] == ["roidask", "batch"]
    assert batch[batch.index("--scheduler") + 1] == f"tcp://scheduler:{port}"
    assert services["batch"]["depends_on"]["scheduler"]["condition"] == "service_healthy"
    # workers and the batch client share the data volume at /data
    assert worker["volumes"] == services["batch"]["volumes"]
    assert worker["volumes"][0].endswith(":/data")
    # the dashboard is published on the host's loopback only
    assert all(p.startswith("127.0.0.1:") for p in services["scheduler"].get("ports", []))


def test_dockerfile():
    text = (CLUSTER_DIR / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    # the image installs the versions the tests run with
    assert re.search(r"^RUN pip install -c requirements/constraints\.txt \. ", text, re.M)
    # everything pyproject.toml needs to build is copied in, and exists
    copied = {
        item for sources in re.findall(r"^COPY (.+) \S+$", text, re.M) for item in sources.split()
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {
        "pyproject.toml",
        "requirements/constraints.txt",
        project["project"]["readme"],
        *project["project"].get("license-files", []),
        *(pattern.rstrip("*") for pattern in packages),
    }
    assert needed <= copied, f"the Dockerfile does not COPY {sorted(needed - copied)}"
    for item in copied:
        assert (ROOT / item).exists(), item
    # and the build context lets them through (the ignore file excludes everything else)
    ignore = (CLUSTER_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore
    for item in needed:
        assert f"!{item}" in ignore or f"!{item}/" in ignore, item
