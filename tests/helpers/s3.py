"""A local S3 server (moto) on 127.0.0.1 for tests and benchmarks, reached through env vars.

:func:`moto_s3` starts ``moto.server`` in a child process (its own session, so it
never outlives the caller and does not share this process's GIL) on a free
loopback port, points the standard AWS variables at it for this process and
every subprocess started meanwhile, and stops it after::

    with moto_s3() as s3:                      # s3.endpoint_url == "http://127.0.0.1:PORT"
        bucket = s3.new_bucket("study")         # "s3://study"
        ...                                     # boto3 / s3fs / obstore / xarray, no config

The pytest fixtures ``s3_server`` (session scope) and ``s3_bucket`` (a fresh bucket
per test, ``"s3://<name>"``) wrap it; import them into a test module or conftest.

Variables set (and restored after): ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` and ``AWS_REGION`` (us-east-1),
``AWS_ALLOW_HTTP=true`` (obstore/object_store refuses ``http://`` endpoints without
it), ``AWS_CONFIG_FILE`` / ``AWS_SHARED_CREDENTIALS_FILE`` pointing at an empty file (a
developer's ``~/.aws`` profile cannot leak in), and, so that no request for instance
metadata (169.254.169.254) leaves the machine: ``AWS_EC2_METADATA_DISABLED=true``
(boto3's credential chain skips the instance-metadata service; obstore does not read
this variable) and ``AWS_METADATA_ENDPOINT`` at a closed loopback port (where obstore's
own chain, which a client made without keys and without ``skip_signature`` falls back
to, fails at once; roidask's clients never do: without credentials they send unsigned
requests). ``AWS_PROFILE``, ``AWS_SESSION_TOKEN`` and ``AWS_ENDPOINT_URL_S3`` are
removed.

Gotchas met while checking boto3, s3fs and obstore against it:

* Addressing: with an IP endpoint every client uses path-style requests
  (``http://127.0.0.1:PORT/bucket/key``); nothing to set. Virtual-host style
  (``bucket.127.0.0.1``) cannot resolve, so do not force it.
* Region: moto accepts any region, but boto3 needs one set (``AWS_DEFAULT_REGION``),
  obstore reads ``AWS_REGION``/``AWS_DEFAULT_REGION``; bucket creation outside
  us-east-1 needs a ``LocationConstraint``.
* s3fs caches file-system instances per constructor arguments and directory
  listings per instance: an ``S3FileSystem()`` made before the variables changed keeps
  the old endpoint (``skip_instance_cache=True`` or ``S3FileSystem.clear_instance_cache()``),
  and ``ls``/``exists`` after another client wrote may be stale until
  ``fs.invalidate_cache()`` (or ``use_listings_cache=False``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ACCESS_KEY_ID = "testing-key"
SECRET_ACCESS_KEY = "testing-secret"
REGION = "us-east-1"
_REMOVED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT")


def free_port() -> int:
    """A loopback port free at the time of the call (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoS3:
    """A running moto S3 server and the environment that points at it."""

    endpoint_url: str
    env: dict[str, str]
    process: subprocess.Popen
    buckets: list[str] = field(default_factory=list)

    def client(self):
        """A boto3 S3 client (from the environment alone)."""
        import boto3

        return boto3.client("s3")

    def new_bucket(self, prefix: str = "roidask") -> str:
        """Create a bucket with a unique name; return ``"s3://<name>"``."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return f"s3://{name}"


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"moto server at {url} not ready after {timeout_s} s")


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def moto_s3(*, log: str | os.PathLike | None = None, timeout_s: float = 30) -> Iterator[MotoS3]:
    """Start moto's S3 server on 127.0.0.1 and point the AWS variables at it.

    The variables are set in ``os.environ`` (so subprocesses inherit them) and
    restored when the block exits; the server process group is then stopped.
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="roidask-s3-")))
        empty = tmp / "empty-aws-config"
        empty.write_text("")
        out = open(log, "ab") if log else subprocess.DEVNULL
        if log:
            stack.callback(out.close)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(_stop, proc)
        _wait_ready(endpoint, proc, timeout_s)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_METADATA_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # closed
            "AWS_CONFIG_FILE": str(empty),
            "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        }
        saved = {k: os.environ.get(k) for k in (*env, *_REMOVED)}
        stack.callback(_restore_env, saved)
        for k in _REMOVED:
            os.environ.pop(k, None)
        os.environ.update(env)
        with contextlib.suppress(ImportError):  # instances made with the old variables
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
        yield MotoS3(endpoint_url=endpoint, env=env, process=proc)


@dataclass
class Request:
    """One request :func:`recording_http_server` answered."""

    method: str
    path: str
    user_agent: str


@contextlib.contextmanager
def recording_http_server() -> Iterator[tuple[str, list[Request]]]:
    """An HTTP server on 127.0.0.1 that answers every GET and PUT 404 and records them:
    ``(url, requests)``. E.g. an instance-metadata service that has no credentials
    (``AWS_METADATA_ENDPOINT`` for obstore, ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` for
    boto3), to see who asks it."""
    import http.server
    import threading

    requests: list[Request] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            agent = self.headers.get("User-Agent", "")
            requests.append(Request(self.command, self.path, agent))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = answer

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _restore_env(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """A moto S3 server for the whole session, AWS variables pointing at it."""
    with moto_s3() as s3:
        yield s3


@pytest.fixture
def s3_bucket(s3_server: MotoS3) -> str:
    """A fresh, empty bucket on :func:`s3_server`: ``"s3://<name>"``."""
    return s3_server.new_bucket()
