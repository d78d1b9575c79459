"""Dask clients and clusters for roidask: embedded, remote (TCP/TLS) and HPC batch queues.

:func:`get_client` is what the command line and the pipeline use: with no
address it starts an embedded :class:`distributed.LocalCluster` bound to
127.0.0.1; with ``tcp://HOST:PORT`` or ``tls://HOST:PORT`` it connects to a
running scheduler within a bounded time. :func:`jobqueue_cluster` and
:func:`job_script` build SLURM/PBS clusters with dask-jobqueue (the
``roidask[jobqueue]`` extra).

A scheduler that listens beyond the loopback interface speaks TLS with
throw-away credentials made for it (:class:`TLSCredentials`: a CA certificate
and a certificate/key it signs, written owner-only, removed when the cluster
closes), so only processes that can read those files can join it or submit
work: always for :func:`jobqueue_cluster` (its workers are other jobs, often on
other nodes), and for :func:`get_client`'s embedded cluster with a non-loopback
``host``.

``distributed``, ``dask_jobqueue`` and ``cryptography`` are imported inside the
functions (deliberately: a run on this process's threads never needs them).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.util
import ipaddress
import logging
import os
import re
import sys
import tempfile
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import dask
from dask.system import CPU_COUNT
from dask.utils import format_bytes, parse_bytes

from roidask._forkserver import WORKER_PRELOAD, quiet_nannies, start_method
from roidask._progress import plural
from roidask._validate import check_bool, only_applies
from roidask.exceptions import ClusterError, InvalidParameterError, RoidaskError

if TYPE_CHECKING:  # pragma: no cover
    from dask_jobqueue import JobQueueCluster
    from distributed import Client
    from distributed.security import Security

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "JOBQUEUE_KINDS",
    "TLSCredentials",
    "active_client",
    "check_client_options",
    "connection_lost",
    "dashboard_link",
    "describe_client",
    "get_client",
    "job_script",
    "jobqueue_cluster",
]

#: Seconds :func:`get_client` waits for a remote scheduler before giving up.
DEFAULT_CONNECT_TIMEOUT_S = 10.0

#: Batch systems :func:`jobqueue_cluster` supports, and their dask-jobqueue classes.
JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}

# What dask-jobqueue itself prints for a job script's scheduler (after the scheme).
_ADDRESS_PLACEHOLDER = "<insert-scheduler-address-here>:8786"

# Clients of embedded clusters started without a dashboard (their scheduler still
# serves /health over HTTP, which is not a dashboard).
_NO_DASHBOARD: weakref.WeakSet = weakref.WeakSet()
# Whether the scheduler of a client serves its dashboard (asked once).
_SERVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: dask setting: how the embedded cluster's nannies start worker processes.
_START_METHOD = "distributed.worker.multiprocessing-method"

_WALLTIME_RE = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")

# What job_script() prints in place of the throw-away credentials' directory.
_TLS_DIR_PLACEHOLDER = "<roidask-tls-directory>"

#: Days the throw-away certificates are valid (they are removed with their cluster).
TLS_VALID_DAYS = 365


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TLSCredentials:
    """Throw-away TLS credentials of one cluster, as owner-only files in one directory.

    ``ca_file`` is a CA certificate made for this cluster alone (its private key
    is never written), ``cert``/``key`` a certificate it signs for both server
    and client use, shared by the scheduler, the workers and the clients. A
    peer without them cannot complete the TLS handshake. Make them with
    :meth:`create`, remove them with :meth:`remove`.
    """

    directory: Path
    ca_file: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, parent: str | os.PathLike) -> TLSCredentials:
        """Write new credentials into a fresh directory under ``parent``.

        Parameters
        ----------
        parent : path
            An existing directory, on a filesystem every process of the cluster
            sees (for batch jobs: a shared one, such as the home directory).

        Returns
        -------
        TLSCredentials
            In ``parent/.roidask-tls-XXXXXXXX/`` (mode 0700): ``ca.pem``,
            ``cert.pem`` and ``key.pem`` (mode 0600).

        Raises
        ------
        InvalidParameterError
            ``parent`` is not an existing directory.
        ImportError
            The ``cryptography`` package is missing.
        """
        # absolute: the worker jobs may start in another directory
        parent = Path(os.path.abspath(os.path.expanduser(os.fspath(parent))))
        if not parent.is_dir():
            raise InvalidParameterError(
                f"shared_temp_directory: expected an existing directory for the cluster's TLS "
                f"credentials, got {str(parent)!r}"
            )
        ca_pem, cert_pem, key_pem = _make_certificates()
        directory = Path(tempfile.mkdtemp(prefix=".roidask-tls-", dir=parent))
        os.chmod(directory, 0o700)
        out = cls(directory, directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
        try:
            for path, data in ((out.ca_file, ca_pem), (out.cert, cert_pem), (out.key, key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    os.fchmod(fh.fileno(), 0o600)
                    fh.write(data)
        except BaseException:
            out.remove()
            raise
        return out

    def security(self) -> Security:
        """A :class:`distributed.security.Security` for every role, encryption required."""
        from distributed.security import Security

        ca, cert, key = str(self.ca_file), str(self.cert), str(self.key)
        return Security(
            tls_ca_file=ca,
            tls_scheduler_cert=cert,
            tls_scheduler_key=key,
            tls_worker_cert=cert,
            tls_worker_key=key,
            tls_client_cert=cert,
            tls_client_key=key,
            require_encryption=True,
        )

    def client_options(self) -> dict[str, str]:
        """``tls_ca_file``, ``tls_cert`` and ``tls_key`` for :func:`get_client`."""
        return {
            "tls_ca_file": str(self.ca_file),
            "tls_cert": str(self.cert),
            "tls_key": str(self.key),
        }

    def remove(self) -> None:
        """Delete the three files and their directory (left if something else is in it)."""
        for path in (self.ca_file, self.cert, self.key):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(FileNotFoundError, OSError):
            self.directory.rmdir()


def _make_certificates() -> tuple[bytes, bytes, bytes]:
    """PEM bytes of a new CA certificate, a certificate it signs and that one's key."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise ImportError(
            "TLS credentials for the cluster need the cryptography package, which is not "
            "installed; install it with: pip install 'roidask[jobqueue]'"
        ) from exc

    now = datetime.datetime.now(datetime.UTC)
    # compute nodes' clocks may lag this one's a little
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=TLS_VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "roidask throw-away CA")])
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "roidask dask cluster")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        # dask does not check host names; a name keeps strict verifiers content
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("dask-internal")]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


def _is_loopback(host: str) -> bool:
    """``host`` is a loopback address or ``localhost`` (anything else may be reached)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, or an interface's


# --------------------------------------------------------------------------- validation


def _check_positive_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(
            f"{name}: expected a positive integer, got {value!r}", param=name
        )
    return value


#: Least memory a worker (or a job) may be given: its process uses ~200 MB once roidask
#: is imported (``roidask.onepass.WORKER_BASE_BYTES``), before any task.
MIN_WORKER_MEMORY_BYTES = 256 * 2**20


def _parse_memory(name: str, value: Any) -> int | str:
    """``"4GiB"``, ``"500MB"``, an int of bytes or ``"auto"`` -> bytes (or ``"auto"``)."""

    if value is None or value == "auto":
        return "auto"
    if isinstance(value, str):
        try:
            n = parse_bytes(value)
        except (ValueError, TypeError) as exc:
            raise InvalidParameterError(
                f"{name}: expected a size such as '4GiB' or '500MB', got {value!r}", param=name
            ) from exc
    elif isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        raise InvalidParameterError(
            f"{name}: expected a size such as '4GiB' or a number of bytes, got {value!r}",
            param=name,
        )
    if n <= 0:
        raise InvalidParameterError(f"{name}: expected a positive size, got {value!r}", param=name)
    if n < MIN_WORKER_MEMORY_BYTES:
        raise InvalidParameterError(
            f"{name}: {value!r} is less than a worker process needs before any task "
            f"(~200 MB once roidask is imported); expected at least "
            f"{MIN_WORKER_MEMORY_BYTES // 2**20}MiB",
            param=name,
        )
    return n


def _most_workers(machine: int) -> int:
    return max(1, machine // MIN_WORKER_MEMORY_BYTES)


def _check_worker_memory(
    n_workers: int, memory_limit: int | str, memory_value: Any, processes: bool
) -> None:
    """Refuse workers whose memory the machine does not have: an explicit
    ``memory_limit`` that all ``n_workers`` together exceed (distributed would cap it
    silently to the whole machine's, each, and roidask fits its blocks to it), or, with
    ``"auto"``, worker processes whose share is less than one needs before any task."""
    machine = _machine_memory()
    if memory_limit == "auto":
        share = machine // n_workers
        if processes and share < MIN_WORKER_MEMORY_BYTES:
            raise InvalidParameterError(
                f"n_workers: {n_workers} worker processes would each have "
                f"{format_bytes(share)} of this machine's {format_bytes(machine)} of memory, "
                f"less than a worker needs before any task "
                f"({MIN_WORKER_MEMORY_BYTES // 2**20}MiB); expected at most "
                f"{_most_workers(machine)} workers",
                param="n_workers",
            )
        return
    assert isinstance(memory_limit, int)
    if memory_limit * n_workers <= machine:
        return
    if n_workers == 1:
        raise InvalidParameterError(
            f"memory_limit: {memory_value!r} is more than this machine's memory "
            f"({format_bytes(machine)}); expected at most {format_bytes(machine)}",
            param="memory_limit",
        )
    raise InvalidParameterError(
        f"memory_limit: {memory_value!r} for each of {n_workers} workers "
        f"({format_bytes(memory_limit * n_workers)} in all) is more than this machine's "
        f"memory ({format_bytes(machine)}); expected at most "
        f"{format_bytes(machine // n_workers)} per worker, or fewer workers",
        param="memory_limit",
    )


def _check_address(scheduler: Any) -> str:
    if not isinstance(scheduler, str):
        raise InvalidParameterError(
            f"scheduler: expected an address 'tcp://HOST:PORT' or 'tls://HOST:PORT' "
            f"(or None for an embedded cluster), got {scheduler!r}",
            param="scheduler",
        )
    parts = urlsplit(scheduler)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("tcp", "tls")
        or not parts.hostname
        or port == -1
        or parts.path not in ("", "/")
    ):
        raise InvalidParameterError(
            f"scheduler: expected an address 'tcp://HOST:PORT' or 'tls://HOST:PORT', "
            f"got {scheduler!r}",
            param="scheduler",
        )
    return scheduler


def _check_tls_files(files: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in files.items():
        path = Path(os.fspath(value))
        if not path.is_file():
            raise InvalidParameterError(f"{name}: no such file {str(path)!r}", param=name)
        out[name] = str(path)
    return out


def _machine_memory() -> int:
    """The memory the embedded cluster's workers share: this machine's (or its cgroup's or
    rlimit's, if less), as distributed reckons it."""
    from distributed import system

    return int(system.MEMORY_LIMIT)


def _default_workers(
    n_workers: int | None, threads_per_worker: int | None, processes: bool
) -> tuple[int, int]:
    """Workers x threads for this machine: processes of 1 thread on <= 4 cores, no more
    than the memory gives each :data:`MIN_WORKER_MEMORY_BYTES`."""
    cores = max(1, CPU_COUNT)
    if not processes:
        return n_workers or 1, threads_per_worker or max(1, cores // (n_workers or 1))
    if n_workers is None and threads_per_worker is None:
        threads_per_worker = 1 if cores <= 4 else 2
    if n_workers is None:
        assert threads_per_worker is not None
        n_workers = max(1, min(cores // threads_per_worker, _most_workers(_machine_memory())))
    if threads_per_worker is None:
        threads_per_worker = max(1, cores // n_workers)
    return n_workers, threads_per_worker


# --------------------------------------------------------------------------- clients


def active_client() -> Client | None:
    """The ``distributed`` client in use in this thread/process, or None.

    Never imports ``distributed`` (~0.5 s): without it imported there is no client.
    """
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


@dataclass(frozen=True)
class _ClientPlan:
    """What :func:`get_client` starts or connects to, its options checked."""

    address: str | None  # None: an embedded cluster
    workers: int = 0
    threads: int = 0
    memory: int | str = "auto"
    tls_files: dict | None = None


def check_client_options(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    processes: bool = True,
    host: str | None = None,
    tls_ca_file: str | os.PathLike | None = None,
    tls_cert: str | os.PathLike | None = None,
    tls_key: str | os.PathLike | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> None:
    """Make every check :func:`get_client` makes of its options, and start nothing
    (``roidask batch --check``): the same errors, raised the same way.

    Parameters
    ----------
    scheduler : str, optional
        ``None`` (an embedded cluster) or a ``"tcp://HOST:PORT"`` /
        ``"tls://HOST:PORT"`` address (not connected to).
    n_workers, threads_per_worker : int, optional
        Embedded cluster only: worker processes, threads per worker.
    memory_limit : str or int, optional
        Embedded cluster only: memory per worker, ``"4GiB"``-style or bytes.
    processes : bool
        Embedded cluster: workers in separate processes, or threads of this process.
    host : str, optional
        Embedded cluster only: the address its scheduler and workers would listen on.
    tls_ca_file, tls_cert, tls_key : path, optional
        CA certificate, client certificate and client key (with a ``tls://``
        address).
    timeout : float
        Seconds to wait for a remote scheduler (checked to be positive).

    Raises
    ------
    InvalidParameterError
        As :func:`get_client`.
    """
    _plan_client(
        scheduler,
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        memory_limit=memory_limit,
        processes=processes,
        host=host,
        tls_ca_file=tls_ca_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        timeout=timeout,
    )


def _plan_client(
    scheduler: str | None,
    *,
    n_workers: int | None,
    threads_per_worker: int | None,
    memory_limit: str | int | None,
    processes: bool,
    host: str | None,
    tls_ca_file: str | os.PathLike | None,
    tls_cert: str | os.PathLike | None,
    tls_key: str | os.PathLike | None,
    timeout: float,
) -> _ClientPlan:
    """:func:`get_client`'s options checked (nothing started, nothing connected)."""
    check_bool(processes, "processes")
    n_workers = _check_positive_int("n_workers", n_workers)
    threads_per_worker = _check_positive_int("threads_per_worker", threads_per_worker)
    tls = {
        "tls_ca_file": tls_ca_file,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
    }
    given_tls = {k: v for k, v in tls.items() if v is not None}
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidParameterError(
            f"timeout: expected a positive number of seconds, got {timeout!r}"
        )

    if scheduler is None:
        if given_tls:
            raise InvalidParameterError(
                only_applies(list(given_tls), "a 'tls://HOST:PORT' scheduler address")
                + "; got none (an embedded cluster)",
                param=next(iter(given_tls)),
            )
        memory = _parse_memory("memory_limit", memory_limit)
        if host is not None and (not isinstance(host, str) or not host or "://" in host):
            raise InvalidParameterError(
                f"host: expected an address to listen on such as '127.0.0.1' or '0.0.0.0', "
                f"got {host!r}"
            )
        workers, threads = _default_workers(n_workers, threads_per_worker, processes)
        _check_worker_memory(workers, memory, memory_limit, processes)
        if memory == "auto" and processes:  # distributed's "auto" is a share per core
            memory = _machine_memory() // workers
        return _ClientPlan(None, workers, threads, memory)

    address = _check_address(scheduler)
    local_only = {
        "n_workers": n_workers,
        "threads_per_worker": threads_per_worker,
        "memory_limit": memory_limit,
        "host": host,
    }
    local_only = {k: v for k, v in local_only.items() if v is not None}
    if local_only:
        raise InvalidParameterError(
            only_applies(list(local_only), "an embedded cluster")
            + f", not to the scheduler at {address!r}",
            param=next(iter(local_only)),
        )
    if address.startswith("tls://"):
        missing = [k for k, v in tls.items() if v is None]
        if missing:
            raise InvalidParameterError(
                f"{', '.join(missing)}: required to connect to {address!r} (TLS needs the "
                f"CA certificate, the client certificate and its key)",
                param=missing[0],
            )
        return _ClientPlan(address, tls_files=_check_tls_files(tls))
    if given_tls:
        raise InvalidParameterError(
            only_applies(list(given_tls), "a 'tls://HOST:PORT' scheduler address")
            + f"; got {address!r}",
            param=next(iter(given_tls)),
        )
    return _ClientPlan(address)


@contextlib.contextmanager
def get_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    processes: bool = True,
    host: str | None = None,
    tls_ca_file: str | os.PathLike | None = None,
    tls_cert: str | os.PathLike | None = None,
    tls_key: str | os.PathLike | None = None,
    dashboard: bool | str = False,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> Iterator[Client]:
    """A :class:`distributed.Client` for the duration of a ``with`` block.

    Parameters
    ----------
    scheduler : str, optional
        ``None`` (default) starts an embedded :class:`distributed.LocalCluster`
        bound to 127.0.0.1 and closes it on exit. ``"tcp://HOST:PORT"`` or
        ``"tls://HOST:PORT"`` connects to a running scheduler (left running).
    n_workers, threads_per_worker : int, optional
        Embedded cluster only. Default: one single-threaded worker process per
        core on machines of up to 4 cores, two threads per process above (no more
        processes than give each 256 MiB of memory); with ``processes=False`` one
        worker with a thread per core.
    memory_limit : str or int, optional
        Embedded cluster only: memory per worker, ``"4GiB"``-style or bytes, at
        least 256 MiB, and all the workers' together no more than the machine's.
        Default ``"auto"`` (the machine's memory shared among the workers: then
        worker processes whose share would be under 256 MiB are refused).
    processes : bool
        Embedded cluster: workers in separate processes (default) or threads
        of this process (in-process transport, no sockets). Ignored with an
        address.
    host : str, optional
        Embedded cluster only: the address its scheduler and workers listen on.
        Default: 127.0.0.1 (``inproc://`` with ``processes=False``), plain TCP.
        Any address but a loopback one (e.g. ``"0.0.0.0"``, all interfaces)
        makes the cluster speak TLS with throw-away :class:`TLSCredentials`
        in a temporary directory, removed on exit; ``client.security`` names
        their files, for workers or clients that should join.
    tls_ca_file, tls_cert, tls_key : path, optional
        CA certificate, client certificate and client key; all three are
        required with a ``tls://`` address and refused otherwise.
    dashboard : bool or str
        Embedded cluster: serve the dashboard on 127.0.0.1:8787 (``True``) or
        at the given address; off by default, and an error without bokeh.
        Ignored with an address (a running scheduler serves its own).
    timeout : float
        Seconds to wait for a remote scheduler (default 10).

    Yields
    ------
    distributed.Client

    Raises
    ------
    InvalidParameterError
        A malformed address, missing TLS file, TLS options without a
        ``tls://`` address, or ``n_workers``/``threads_per_worker``/
        ``memory_limit``/``host`` with an address; workers whose memory the
        machine does not have (see ``memory_limit``).
    ClusterError
        The scheduler could not be reached (or refused the handshake) within
        ``timeout`` seconds; or the connection to it was lost while the ``with``
        block computed (what failed with it, e.g. a ``FutureCancelledError``, is the
        error's ``__cause__``).

    Notes
    -----
    The embedded cluster's worker processes start from a fresh interpreter that
    imports the main script, as every :mod:`multiprocessing` program's do: a
    script calling ``get_client()`` keeps that code under
    ``if __name__ == "__main__":`` (else each worker would start a cluster of its
    own, and distributed fails with "Nanny failed to start").
    """
    processes = check_bool(processes, "processes")
    _check_dashboard(dashboard)
    plan = _plan_client(
        scheduler,
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        memory_limit=memory_limit,
        processes=processes,
        host=host,
        tls_ca_file=tls_ca_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        timeout=timeout,
    )
    if plan.address is None:
        with _local_client(
            n_workers=plan.workers,
            threads_per_worker=plan.threads,
            memory_limit=plan.memory,
            processes=processes,
            host=host,
            dashboard=dashboard,
        ) as client:
            yield client
        return
    address, security = plan.address, None
    if plan.tls_files:
        from distributed.security import Security

        security = Security(
            tls_ca_file=plan.tls_files["tls_ca_file"],
            tls_client_cert=plan.tls_files["tls_cert"],
            tls_client_key=plan.tls_files["tls_key"],
            require_encryption=True,
        )
    client = _connect(address, security=security, timeout=float(timeout))
    logger, noise = logging.getLogger("distributed.client"), _ReconnectFailed()
    logger.addFilter(noise)  # a connection lost is an error of its own (below)
    # distributed's INFO lines (a send on the lost connection logs "Batched Comm Closed"
    # with its traceback) off, as the embedded cluster has them (silence_logs)
    chatty = logging.getLogger("distributed")
    level = chatty.level
    chatty.setLevel(max(level, logging.WARNING))
    try:
        yield client
    except Exception as exc:
        if isinstance(exc, RoidaskError) or not connection_lost(client, exc):
            raise
        # what was cancelled with the connection (FutureCancelledError, deep in a
        # computation) says nothing of the cause: the one error is the lost scheduler
        raise lost_connection_error(address, "before the work was done") from exc
    finally:
        try:
            _close(client)
        finally:
            logger.removeFilter(noise)
            chatty.setLevel(level)


def connection_lost(client: Client, exc: BaseException | None = None) -> bool:
    """``client`` lost the connection to its scheduler (``exc``: an error it caused).

    True when ``exc`` is a future cancelled for that reason, or when the client is no
    longer running (reconnecting, or closed after failing to): a client is only
    closed by whoever opened it, once done with it.

    Parameters
    ----------
    client : distributed.Client
    exc : BaseException, optional
        An error raised while computing on ``client``.

    Returns
    -------
    bool
    """
    if getattr(exc, "reason", None) == "scheduler-connection-lost":
        return True
    return client.status not in ("running", "newly-created")


def lost_connection_error(address: str, what: str) -> ClusterError:
    """The :class:`ClusterError` of a client that lost its scheduler at ``address``;
    ``what`` says when ("before the work was done")."""
    return ClusterError(
        f"scheduler: lost the connection to the dask scheduler at {address!r} {what}",
        param="scheduler",
    )


class _ReconnectFailed(logging.Filter):
    """Drops distributed's "Failed to reconnect to scheduler after 10.00 seconds, closing
    client": work still to do then fails, as the :class:`ClusterError` of the loss."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to reconnect to scheduler")


class _Silent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _close(client: Client) -> None:
    """Close ``client``; one that lost its scheduler without distributed's log lines.

    Closed while it tries to reconnect, distributed's client logs the cancelled attempt
    (an ERROR with its traceback), or that it failed ("Failed to reconnect to
    scheduler"): once the loss is an error of its own, they say nothing more.
    """
    if client.status == "running":
        client.close()
        return
    logger, noise = logging.getLogger("distributed.client"), _Silent()
    logger.addFilter(noise)
    try:
        client.close()
    finally:
        logger.removeFilter(noise)


def _connect(address: str, *, security: Any, timeout: float) -> Client:
    from distributed import Client
    from distributed.comm.core import CommClosedError

    scheme = address.split("://", 1)[0]
    try:
        return Client(address, security=security, timeout=timeout, set_as_default=True)
    except (OSError, TimeoutError) as exc:
        hint = ""
        if scheme == "tcp" and isinstance(exc, CommClosedError):
            hint = (
                " (a TLS scheduler drops plain connections: if it uses TLS, connect to "
                "tls://... with tls_ca_file, tls_cert and tls_key)"
            )
        raise ClusterError(
            f"could not connect to the dask scheduler at {address!r} (timeout {timeout:g} s): "
            f"expected a running scheduler speaking {scheme}://; got: {exc}{hint}"
        ) from exc


@contextlib.contextmanager
def _local_client(
    *,
    n_workers: int,
    threads_per_worker: int,
    memory_limit: int | str,
    processes: bool,
    host: str | None,
    dashboard: bool | str,
) -> Iterator[Client]:
    from distributed import Client, LocalCluster

    if host is None:
        # in-process workers talk over inproc://, with no socket at all
        host = "127.0.0.1" if processes else None
    if dashboard:
        if importlib.util.find_spec("bokeh") is None:
            raise InvalidParameterError(
                f"dashboard={dashboard!r}: the dask dashboard needs bokeh, which is not "
                f"installed; install it with: pip install 'dask[diagnostics]'"
            )
        dashboard_address = "127.0.0.1:8787" if dashboard is True else str(dashboard)
    else:
        # The scheduler always serves /health and /metrics over HTTP: keep that on a
        # free loopback port rather than the dashboard's 8787.
        dashboard_address = "127.0.0.1:0"
    # Beyond loopback anyone who reaches the port could run code as this user:
    # TLS, with credentials only this process hands out.
    credentials = None
    if host is not None and not _is_loopback(host):
        credentials = TLSCredentials.create(tempfile.gettempdir())
    # Worker processes fork from a server that has roidask imported (restarted
    # workers too: the setting holds while the cluster lives). A forked worker has the
    # server's environment: its nanny hands it this process's, as a spawned one had it
    # (credentials or settings changed since the server started).
    method = start_method() if processes else dask.config.get(_START_METHOD)
    nanny_options = {"env": dict(os.environ)} if processes and method == "forkserver" else {}
    try:
        with (
            dask.config.set({_START_METHOD: method}),
            quiet_nannies() if processes else contextlib.nullcontext(),
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                memory_limit=memory_limit,
                processes=processes,
                host=host,
                security=credentials.security() if credentials else None,
                dashboard_address=dashboard_address,
                scheduler_kwargs={"dashboard": bool(dashboard)},
                # with the user's own (distributed reads its setting only without ours)
                preload=[*dask.config.get("distributed.worker.preload", []), WORKER_PRELOAD],
                **nanny_options,
            ) as cluster,
            Client(cluster, set_as_default=True) as client,
        ):
            if not dashboard:
                _NO_DASHBOARD.add(client)
            yield client
    finally:
        if credentials is not None:
            credentials.remove()


def dashboard_link(client: Client) -> str | None:
    """The URL of the scheduler's dashboard, or ``None`` when it serves none (started
    without it, or without bokeh installed where it runs).

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    str or None
    """
    from distributed.utils import format_dashboard_link

    if client in _NO_DASHBOARD:
        return None
    if client not in _SERVED:
        _SERVED[client] = _serves_dashboard(client)
    if not _SERVED[client]:
        return None
    info = _scheduler_identity(client)
    port = info.get("services", {}).get("dashboard")
    if not port:
        return None
    address = client.scheduler.address
    if address.startswith("inproc://"):
        host = "localhost"
    else:
        host = urlsplit(address).hostname or "localhost"
    return format_dashboard_link(host, port)


def _serves_dashboard(client: Client) -> bool:
    """The scheduler serves the dashboard (bokeh's application on its HTTP server).

    Its HTTP server runs in any case (``services["dashboard"]``, for /health and
    /metrics): without bokeh, or started with ``--no-dashboard``, it has no /status.
    Asked of the scheduler itself; one that refuses (no pickled functions) serves none
    as far as this process can tell.
    """

    def bokeh_served(dask_scheduler=None) -> bool:  # by value: the scheduler needs no roidask
        http = getattr(dask_scheduler, "http_application", None)
        apps = getattr(http, "applications", ())
        return any(type(app).__name__ == "BokehApplication" for app in apps)

    try:
        return bool(client.run_on_scheduler(bokeh_served))
    except Exception:  # e.g. distributed.scheduler.pickle: False
        return False


def describe_client(client: Client) -> str:
    """One line describing the cluster behind ``client``.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    str
        e.g. ``"dask scheduler tcp://127.0.0.1:8786: 2 workers, 2 threads, 3.8 GiB memory"``,
        followed by the dashboard link when there is one.
    """

    info = _scheduler_identity(client)
    workers = info.get("workers", {})
    n_workers = info.get("n_workers", len(workers))
    threads = info.get("total_threads", sum(w.get("nthreads", 0) for w in workers.values()))
    memory = info.get("total_memory", sum(w.get("memory_limit") or 0 for w in workers.values()))

    line = (
        f"dask scheduler {client.scheduler.address}: {plural(n_workers, 'worker')}, "
        f"{plural(threads, 'thread')}, {format_bytes(memory) if memory else 'unlimited'} memory"
    )
    link = dashboard_link(client)
    return f"{line}, dashboard {link}" if link else line


def _scheduler_identity(client: Client) -> dict:
    try:
        return client.scheduler_info(n_workers=-1)
    except TypeError:  # pragma: no cover - distributed without n_workers=
        return client.scheduler_info()


# --------------------------------------------------------------------------- job queues


def _jobqueue_class(kind: Any):
    if not isinstance(kind, str) or kind.lower() not in JOBQUEUE_KINDS:
        raise InvalidParameterError(
            f"kind: expected one of {', '.join(map(repr, JOBQUEUE_KINDS))}, got {kind!r}"
        )
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ImportError(
            f"jobqueue_cluster(kind={kind!r}) needs dask-jobqueue, which is not installed; "
            f"install it with: pip install 'roidask[jobqueue]'"
        ) from exc
    return _closing_with_credentials(getattr(dask_jobqueue, JOBQUEUE_KINDS[kind.lower()]))


@functools.cache
def _closing_with_credentials(cls: type) -> type:
    """``cls`` whose instances remove their :class:`TLSCredentials` once closed."""

    class Cluster(cls):
        tls_credentials: TLSCredentials | None = None

        async def _close(self):
            try:
                await super()._close()
            finally:
                if self.tls_credentials is not None:
                    self.tls_credentials.remove()

    Cluster.__name__ = Cluster.__qualname__ = cls.__name__
    Cluster.__doc__ = cls.__doc__
    return Cluster


def _check_dashboard(dashboard: Any) -> None:
    """``dashboard``: True, False, or the address to serve the dashboard at (a str)."""
    if not isinstance(dashboard, bool) and not (isinstance(dashboard, str) and dashboard.strip()):
        raise InvalidParameterError(
            f"dashboard: expected True, False or an address to serve it at (':8787', "
            f"'127.0.0.1:8787'), got {dashboard!r}",
            param="dashboard",
        )


def _jobqueue_kwargs(
    *,
    cores: Any,
    memory: Any,
    walltime: Any,
    queue: str | None,
    account: str | None,
    python: str | os.PathLike | None,
    job_extra_directives: Sequence[str],
    dashboard: bool | str,
    kwargs: dict,
) -> dict:
    _check_dashboard(dashboard)
    cores = _check_positive_int("cores", cores)
    if cores is None:
        raise InvalidParameterError("cores: expected a positive integer, got None")
    if memory is None:
        raise InvalidParameterError("memory: expected a size such as '32GiB', got None")
    _parse_memory("memory", memory)
    if not isinstance(walltime, str) or not _WALLTIME_RE.match(walltime):
        raise InvalidParameterError(
            f"walltime: expected a time limit such as '02:00:00' or '1-00:00:00', got {walltime!r}"
        )
    if isinstance(job_extra_directives, str):
        raise InvalidParameterError(
            f"job_extra_directives: expected a list of directives, got the string "
            f"{job_extra_directives!r}"
        )
    out = dict(kwargs)
    out.update(
        cores=cores,
        memory=memory if isinstance(memory, str) else f"{memory}B",
        walltime=walltime,
        job_extra_directives=list(job_extra_directives),
    )
    if queue is not None:
        out["queue"] = queue
    if account is not None:
        out["account"] = account
    if python is not None:
        out["python"] = os.fspath(python)
    scheduler_options = dict(out.get("scheduler_options") or {})
    for where, options in (("", out), ("scheduler_options: ", scheduler_options)):
        for name in ("security", "protocol"):
            if options.get(name) not in (None, "tls", "tls://"):
                raise InvalidParameterError(
                    f"{where}{name}: the cluster always uses TLS with credentials made for it; "
                    f"got {options[name]!r}"
                )
            options.pop(name, None)
    if not dashboard:
        # dask-jobqueue's default is a dashboard on :8787 of every interface; without
        # it the scheduler still serves /health and /metrics over plain HTTP: on a free
        # loopback port, not on the scheduler's network
        scheduler_options["dashboard"] = False
        scheduler_options.setdefault("dashboard_address", "127.0.0.1:0")
    elif dashboard is not True:
        scheduler_options["dashboard_address"] = str(dashboard)
    out["scheduler_options"] = scheduler_options
    return out


def jobqueue_cluster(
    kind: str = "slurm",
    *,
    cores: int,
    memory: str | int,
    walltime: str,
    queue: str | None = None,
    account: str | None = None,
    python: str | os.PathLike | None = None,
    job_extra_directives: Sequence[str] = (),
    dashboard: bool | str = False,
    shared_temp_directory: str | os.PathLike | None = None,
    **kwargs: Any,
) -> JobQueueCluster:
    """A dask-jobqueue cluster whose workers run as SLURM or PBS jobs, over TLS.

    The scheduler runs in this process; no job is submitted until
    ``cluster.scale(jobs=N)``. Use it as a context manager so it closes.

    The scheduler, the workers and the clients speak TLS with throw-away
    :class:`TLSCredentials` made for this cluster, in a fresh owner-only
    directory under ``shared_temp_directory`` that the worker jobs read:
    a process without them (another user on the login node, anything that
    reaches the port) cannot join or submit work. They are removed when the
    cluster closes. ``cluster.scheduler_address`` is ``tls://HOST:PORT``;
    ``cluster.tls_credentials.client_options()`` gives the ``tls_*``
    arguments of :func:`get_client` to connect to it.

    Parameters
    ----------
    kind : {"slurm", "pbs"}
    cores : int
        Cores per job.
    memory : str or int
        Memory per job, e.g. ``"32GiB"``.
    walltime : str
        Time limit per job, e.g. ``"02:00:00"``.
    queue, account : str, optional
        Partition/queue and account to charge.
    python : path, optional
        Python on the compute nodes (default: this interpreter).
    job_extra_directives : sequence of str
        Extra ``#SBATCH``/``#PBS`` directives, e.g. ``["--gres=gpu:0"]``.
    dashboard : bool or str
        Serve the scheduler dashboard (``True``: port 8787 on all interfaces,
        or the given address). Off by default.
    shared_temp_directory : path, optional
        A directory on a filesystem the compute nodes share with this host,
        for the TLS credentials. Default: dask-jobqueue's
        ``jobqueue.<kind>.shared-temp-directory`` setting, else the home
        directory.
    **kwargs
        Passed on to ``SLURMCluster``/``PBSCluster``, e.g. ``interface="ib0"``
        (the network the compute nodes reach this host on),
        ``scheduler_options={"host": ...}``, ``processes``,
        ``job_script_prologue``, ``log_directory``; not ``security`` or
        ``protocol``.

    Returns
    -------
    dask_jobqueue.SLURMCluster or dask_jobqueue.PBSCluster
        With a ``tls_credentials`` attribute (:class:`TLSCredentials`).

    Raises
    ------
    ImportError
        dask-jobqueue or cryptography is not installed (the ``roidask[jobqueue]``
        extra).
    InvalidParameterError
        An unknown ``kind``, a malformed size, core count or walltime, a
        missing ``shared_temp_directory``, or ``security``/``protocol``.
    ClusterError
        The scheduler could not listen where asked.
    """

    cls = _jobqueue_class(kind)
    options = _jobqueue_kwargs(
        cores=cores,
        memory=memory,
        walltime=walltime,
        queue=queue,
        account=account,
        python=python,
        job_extra_directives=job_extra_directives,
        dashboard=dashboard,
        kwargs=kwargs,
    )
    if shared_temp_directory is None:
        shared_temp_directory = (
            dask.config.get(f"jobqueue.{kind.lower()}.shared-temp-directory", None) or "~"
        )
    credentials = TLSCredentials.create(shared_temp_directory)
    try:
        cluster = cls(
            protocol="tls://",
            security=credentials.security(),
            shared_temp_directory=str(credentials.directory.parent),
            **options,
        )
    except OSError as exc:
        credentials.remove()
        raise ClusterError(
            f"could not start the {kind} cluster's scheduler with "
            f"scheduler_options={options['scheduler_options']!r}: {exc}"
        ) from exc
    except BaseException:
        credentials.remove()
        raise
    cluster.tls_credentials = credentials
    # also when the cluster is never closed (collected, or the interpreter exits)
    weakref.finalize(cluster, credentials.remove)
    return cluster


def job_script(
    kind: str = "slurm",
    *,
    cores: int,
    memory: str | int,
    walltime: str,
    queue: str | None = None,
    account: str | None = None,
    python: str | os.PathLike | None = None,
    job_extra_directives: Sequence[str] = (),
    **kwargs: Any,
) -> str:
    """The SLURM/PBS script that :func:`jobqueue_cluster` would submit per job.

    Nothing is submitted and no batch system is needed: a throw-away scheduler
    is bound to 127.0.0.1 to render the script, then closed. In the text its
    address is replaced by ``tls://<insert-scheduler-address-here>:8786`` and
    the directory of its TLS credentials by ``<roidask-tls-directory>``.

    Parameters
    ----------
    kind, cores, memory, walltime, queue, account, python, job_extra_directives, **kwargs
        As for :func:`jobqueue_cluster`.

    Returns
    -------
    str
    """
    kwargs.pop("dashboard", None)
    kwargs.pop("shared_temp_directory", None)
    scheduler_options = dict(kwargs.pop("scheduler_options", None) or {})
    scheduler_options.pop("interface", None)
    scheduler_options.update(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0")
    with (
        tempfile.TemporaryDirectory(prefix="roidask-job-script-") as tmp,
        jobqueue_cluster(
            kind,
            cores=cores,
            memory=memory,
            walltime=walltime,
            queue=queue,
            account=account,
            python=python,
            job_extra_directives=job_extra_directives,
            scheduler_options=scheduler_options,
            shared_temp_directory=tmp,
            **kwargs,
        ) as cluster,
    ):
        text = cluster.job_script()
        address = cluster.scheduler_address
        text = text.replace(str(cluster.tls_credentials.directory), _TLS_DIR_PLACEHOLDER)
    if address:
        scheme = address.split("://", 1)[0]
        text = text.replace(address, f"{scheme}://{_ADDRESS_PLACEHOLDER}")
    return text
