"""Real dask schedulers and workers on 127.0.0.1, and throw-away TLS certificates.

Shared by ``test_cluster.py`` and ``test_batch.py``. Every process is started in
its own session (process group) and :func:`stop` kills the whole group, so a
nanny's worker process never outlives a test; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

DASK = Path(sys.executable).with_name("dask")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` in a new session, stdout and stderr into ``log``."""
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (started by :func:`start`) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running: one that exited is not, even before its
    parent reaps it (a zombie), nor a pid since reused by another process."""
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def forkserver_of(proc: subprocess.Popen) -> psutil.Process:
    """The multiprocessing forkserver ``proc`` started (its embedded workers fork from it)."""
    found = []
    for child in psutil.Process(proc.pid).children():
        try:
            if "multiprocessing.forkserver" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # a short-lived child, gone
            pass
    (server,) = found
    return server


def process_group(proc: subprocess.Popen) -> list[psutil.Process]:
    """The running processes of the process group :func:`start` made for ``proc`` (what it
    started, and theirs, even once ``proc`` exited and they were reparented)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != proc.pid and os.getpgid(p.pid) == proc.pid:
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return running(found)


def stop(procs: list[subprocess.Popen]) -> None:
    """Terminate the workers, then the scheduler; kill what does not exit in 5 s.

    The process group of each is killed last, so no child (a nanny's worker) is left.
    """
    for proc in reversed(procs):
        try:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        finally:
            kill_group(proc)


def wait_for_scheduler_file(path: Path, proc: subprocess.Popen, log: Path, timeout=20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"scheduler exited ({proc.returncode}):\n{log.read_text()}")
        if path.exists():
            try:
                return json.loads(path.read_text())["address"]
            except (ValueError, KeyError):
                pass  # being written
        time.sleep(0.1)
    raise RuntimeError(f"no scheduler file {path} after {timeout} s:\n{log.read_text()}")


def worker_log(tmp: Path, i: int = 0) -> Path:
    """Log file of worker ``i`` started by :func:`start_cluster` in ``tmp``."""
    return tmp / ("worker.log" if i == 0 else f"worker-{i}.log")


def start_cluster(
    tmp: Path,
    tls_args: tuple[str, ...] = (),
    protocol: str = "tcp",
    *,
    n_workers: int = 1,
    memory_limit: str = "1GiB",
    nanny: bool = False,
    nthreads: int = 1,
):
    """A ``dask scheduler`` and ``n_workers`` ``dask worker`` (``nthreads`` each) on 127.0.0.1.

    Returns ``(address, procs)``: the scheduler first, then the workers (the
    nanny process with ``nanny=True``). Logs: ``tmp/scheduler.log`` and
    :func:`worker_log`.
    """
    procs = []
    sched_file = tmp / "scheduler.json"
    try:
        log = tmp / "scheduler.log"
        procs.append(
            start(
                [
                    str(DASK),
                    "scheduler",
                    "--host",
                    f"{protocol}://127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--dashboard-address",
                    "127.0.0.1:0",
                    "--scheduler-file",
                    str(sched_file),
                    *tls_args,
                ],
                log,
            )
        )
        address = wait_for_scheduler_file(sched_file, procs[0], log)
        for i in range(n_workers):
            procs.append(
                start(
                    [
                        str(DASK),
                        "worker",
                        address,
                        "--host",
                        "127.0.0.1",
                        "--nanny" if nanny else "--no-nanny",
                        "--nthreads",
                        str(nthreads),
                        "--memory-limit",
                        memory_limit,
                        "--no-dashboard",
                        "--local-directory",
                        str(tmp / ("worker" if i == 0 else f"worker-{i}")),
                        "--death-timeout",
                        "30",
                        *tls_args,
                    ],
                    worker_log(tmp, i),
                )
            )
        return address, procs
    except BaseException:
        stop(procs)
        raise


def wait_for_worker(client, procs, tmp: Path, n: int = 1) -> None:
    try:
        client.wait_for_workers(n, timeout=20)
    except TimeoutError as exc:
        logs = "\n".join(p.read_text() for p in sorted(tmp.glob("worker*.log")))
        raise AssertionError(
            f"worker did not register; alive={[p.poll() is None for p in procs]}\n{logs}"
        ) from exc


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca_and_cert(d: Path) -> dict[str, Path]:
    """A throw-away CA and a certificate/key it signs for 127.0.0.1 (server and client)."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=roidask test CA", cwd=d)  # fmt: skip
    (d / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    openssl("req", *ec, "-keyout", "key.pem", "-out", "cert.csr", "-subj", "/CN=127.0.0.1",
            cwd=d)  # fmt: skip
    openssl("x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "ext.cnf",
            cwd=d)  # fmt: skip
    return {"tls_ca_file": d / "ca.pem", "tls_cert": d / "cert.pem", "tls_key": d / "key.pem"}


def tls_cli_args(certs: dict[str, Path]) -> tuple[str, ...]:
    """``--tls-ca-file CA --tls-cert CERT --tls-key KEY`` for dask's and roidask's CLIs."""
    return (
        "--tls-ca-file",
        str(certs["tls_ca_file"]),
        "--tls-cert",
        str(certs["tls_cert"]),
        "--tls-key",
        str(certs["tls_key"]),
    )
