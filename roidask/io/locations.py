"""Where a file or store is: a local path or an object in S3 (``s3://bucket/key``).

Every input and output of roidask may be an ``s3://`` URL. :func:`as_location`
turns a ``str``/``PathLike`` into a :class:`pathlib.Path`, or an :class:`S3Path` for an
``s3://`` URL (``Path("s3://b/k")`` would silently read ``s3:/b/k``). An :class:`S3Path`
offers the part of :class:`pathlib.Path` that roidask uses on files and stores
(``/``, ``name``, ``parent``, ``exists``, ``is_dir``, ``iterdir``, ``read_bytes``,
``read_text``), so code that reads a store works on both, plus what an object store
adds: ranged reads, one-GET streams, listings, puts and deletes.

Requests go through `obstore <https://developmentseed.org/obstore>`_ (chosen by
measurement, BENCHMARKS.md "Reading a seed-sized subject from S3"); zarr stores
through ``zarr.storage.ObjectStore`` (:func:`zarr_store`). Credentials, region and
endpoint come from the standard AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``/``AWS_REGION``,
``AWS_ENDPOINT_URL``); without keys in the environment, the profile's keys and
region in ``~/.aws/credentials`` and ``~/.aws/config`` (:func:`aws_file_settings`), else
boto3's credential chain (SSO, instance roles) when boto3 is installed; where none gives
credentials, unsigned requests (a public bucket's), never obstore's own look-up of the
instance-metadata service (:func:`_credentials`). An ``http://`` endpoint (a local server)
is allowed as such. A URL's key is read as written (:meth:`S3Path.from_url`).

Failures are one-line :class:`~roidask.exceptions.RoidaskOSError` messages naming the
URL, what was expected and what the server said: a missing bucket or object, denied
access, an unreachable endpoint (:func:`s3_error`).

Outputs keep the guarantees they have on disk as far as S3 allows (:func:`publish_folder`):
a folder is built locally and uploaded, its ownership marker ``.roidask.json`` last; until
then the prefix holds a *pending* marker listing every object the upload may write, so a
killed upload is recognised as roidask's and incomplete; objects roidask did not write are
never deleted (:func:`check_remote_destination` refuses such a prefix). With no rename
in S3, an output being replaced is deleted before any new object is put and zarr's
metadata follows its chunks, so no moment shows a mix of two outputs; roidask's readers
refuse an input in a prefix marked incomplete (:func:`check_finished`).
"""

from __future__ import annotations

import argparse
import collections
import configparser
import contextlib
import datetime
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import obstore
import obstore.exceptions as obs_errors
import zarr.storage
from isal import isal_zlib
from obstore.store import S3Store

from roidask._atomic import (
    MARKER,
    FolderLock,
    InputIndex,
    OutputFolder,
    changed_since_commit,
    check_destination,
    check_not_input,
    checked_again,
    clean_stale,
    crc32c_reader,
    create_locked,
    file_state,
    read_marker,
)
from roidask._atomic import write_bytes as write_local_bytes
from roidask._pool import thread_pool
from roidask._validate import check_bool, check_path
from roidask._validate import check_input_file as check_local_file
from roidask.exceptions import (
    CorruptFileError,
    IncompleteOutputError,
    InvalidParameterError,
    LockWarning,
    ObjectStoreError,
    OutputError,
    OutputExistsError,
    RoidaskError,
    RoidaskOSError,
    UnreadableFileError,
)

__all__ = [
    "SCHEME",
    "Location",
    "MissingChunkError",
    "PathOrURL",
    "RemoteLease",
    "S3Path",
    "absolute",
    "as_location",
    "as_location_list",
    "changed_files",
    "check_again_remote",
    "check_finished",
    "check_input_file",
    "check_output",
    "check_remote_destination",
    "check_writable",
    "delete_prefix_keys",
    "file_states",
    "folder_marker",
    "foreign_in_group",
    "incomplete_output",
    "is_remote",
    "is_zarr_file",
    "left_incomplete",
    "list_files",
    "local_scratch",
    "location_arg",
    "location_exists",
    "object_record",
    "open_table",
    "output_folder",
    "output_lock",
    "publish_folder",
    "put_files",
    "put_if_absent",
    "remote_marker",
    "remove_files",
    "s3_error",
    "stored_where",
    "uploading",
    "version_tag",
    "write_file",
    "zarr_store",
]

SCHEME = "s3://"
#: Bytes per piece of a streamed GET (the memory a stream holds is about one piece).
STREAM_PIECE_BYTES = 2**20
#: Bytes of decompressed data produced at a time by :class:`ObjectStream`.
_OUT_PIECE_BYTES = 4 * 2**20
_PUT_THREADS = 8


# -- the S3 client ---------------------------------------------------------------------------
_STORES: dict[tuple, S3Store] = {}
_STORES_LOCK = threading.Lock()
#: The variables a client depends on (one is made per process and their values).
_ENV_KEYS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_SKIP_SIGNATURE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
#: Settings of the shared AWS files (``~/.aws/credentials``, ``~/.aws/config``) roidask reads.
_FILE_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "region")


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _retry_config() -> dict:
    # Transient failures are retried; a refused connection fails within ~3 s
    # (object_store's default, 10 retries within 180 s, hides a wrong endpoint).
    return {
        "max_retries": 5,
        "backoff": {
            "init_backoff": datetime.timedelta(milliseconds=100),
            "max_backoff": datetime.timedelta(seconds=15),
            "base": 2,
        },
        "retry_timeout": datetime.timedelta(seconds=120),
    }


def _new_store(bucket: str, prefix: str | None) -> S3Store:
    kwargs: dict[str, Any] = {"retry_config": _retry_config()}
    endpoint = _endpoint()
    if endpoint:
        kwargs["endpoint"] = endpoint
        if endpoint.startswith("http://"):
            kwargs["client_options"] = {"allow_http": True}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    region = region or aws_file_settings().get("region")
    if region:
        kwargs["region"] = region
    kwargs.update(_credentials().kwargs)
    return S3Store(bucket, prefix=prefix or None, **kwargs)


@dataclass(frozen=True)
class _Credentials:
    """How requests are signed: the :class:`S3Store` arguments, and why unsigned if so."""

    kwargs: dict[str, Any]
    unsigned: str | None = None  # why requests are sent unsigned (for an access-denied error)


_CREDENTIALS: dict[tuple, _Credentials] = {}
_CREDENTIALS_LOCK = threading.Lock()  # taken inside _STORES_LOCK (a client being made)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _credentials() -> _Credentials:
    """The credentials of this process's requests, found once per environment.

    In order: ``AWS_SKIP_SIGNATURE`` (unsigned, as asked); keys in the environment
    (obstore reads them); the profile's keys in the shared files
    (:func:`aws_file_settings`); boto3's chain when boto3 is installed (SSO, roles,
    credential processes, web identity, containers, and the instance-metadata service
    unless ``AWS_EC2_METADATA_DISABLED``), else obstore's own chain where the environment
    names a web identity or a container's role. When none gives credentials, requests are sent
    unsigned (``skip_signature``: what a public bucket such as OpenNeuro's answers), and
    obstore's own chain, whose last resort is the instance-metadata address
    169.254.169.254 (where boto3 already looked, or was told not to), is never tried.
    """
    key = (os.getpid(), tuple(os.environ.get(k) for k in _ENV_KEYS))
    with _CREDENTIALS_LOCK:
        found = _CREDENTIALS.get(key)
    if found is None:
        found = _find_credentials()
        with _CREDENTIALS_LOCK:
            found = _CREDENTIALS.setdefault(key, found)
    return found


def _find_credentials() -> _Credentials:
    if _truthy("AWS_SKIP_SIGNATURE"):
        return _Credentials({"skip_signature": True}, "AWS_SKIP_SIGNATURE is set")
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return _Credentials({})  # obstore reads the environment's keys itself
    files = aws_file_settings()
    if files.get("aws_access_key_id") and files.get("aws_secret_access_key"):
        keys = {
            "access_key_id": files["aws_access_key_id"],
            "secret_access_key": files["aws_secret_access_key"],
        }
        if files.get("aws_session_token"):
            keys["session_token"] = files["aws_session_token"]
        return _Credentials(keys)
    provider, why = _boto3_credentials()
    if provider is not None:
        return _Credentials({"credential_provider": provider})
    if why == _NO_BOTO3 and any(os.environ.get(k) for k in _ROLE_KEYS):
        return _Credentials({})  # a role the environment names: obstore's own chain reads it
    return _Credentials({"skip_signature": True}, why)


#: Variables that name a role's credentials (EKS web identity, ECS/Batch task roles): without
#: boto3, obstore's own chain reads them (an EC2 instance role is found by boto3 only).
_ROLE_KEYS = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_NO_BOTO3 = (
    "no AWS credentials were found (boto3, which finds those of SSO, roles and instances, is "
    "not installed)"
)


def aws_file_settings() -> dict[str, str]:
    """Keys and region of the AWS profile in the shared files, as the AWS CLI reads them.

    The profile is ``AWS_PROFILE`` (or ``AWS_DEFAULT_PROFILE``, else ``default``); keys
    come from ``AWS_SHARED_CREDENTIALS_FILE`` (default ``~/.aws/credentials``), then
    ``AWS_CONFIG_FILE`` (default ``~/.aws/config``, sections ``[profile NAME]``), which
    also gives the region. Missing or unreadable files give nothing.
    """
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    aws = Path.home() / ".aws"
    credentials = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or aws / "credentials"
    config = os.environ.get("AWS_CONFIG_FILE") or aws / "config"
    section = profile if profile == "default" else f"profile {profile}"
    settings: dict[str, str] = {}
    for path, name in ((credentials, profile), (config, section)):
        parser = configparser.RawConfigParser()
        try:
            parser.read(os.path.expanduser(path))
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        if parser.has_section(name):
            for key in _FILE_KEYS:
                value = parser.get(name, key, fallback="").strip()
                if value and key not in settings:
                    settings[key] = value
    return settings


def _boto3_credentials() -> tuple[Any, str]:
    """boto3's credential chain (config files, profiles, SSO, roles, instance metadata) as
    an obstore credential provider: ``(provider, "")``, or ``(None, why)`` it gives none."""
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None, _NO_BOTO3
    try:
        return Boto3CredentialProvider(), ""
    except ValueError:  # the chain found nothing
        return None, "no AWS credentials were found"
    except Exception as exc:  # a profile boto3 could not use (an expired SSO login...)
        said = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return None, f"boto3 found no usable AWS credentials ({said})"


def _store(bucket: str, prefix: str = "") -> S3Store:
    """An obstore S3 client for ``bucket`` (under ``prefix``), cached per process and env."""
    key = (os.getpid(), bucket, prefix, tuple(os.environ.get(k) for k in _ENV_KEYS))
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = _new_store(bucket, prefix)
    return store


# -- errors ----------------------------------------------------------------------------------
_CODE_RE = re.compile(r"<Code>([^<]+)</Code>")
_STATUS_RE = re.compile(r"status code: (\d{3} [A-Za-z ]+?)(?::|$)")


def _what_server_said(exc: BaseException) -> str:
    text = str(exc)
    code = _CODE_RE.search(text)
    status = _STATUS_RE.search(text)
    parts = [p for p in (code and code.group(1), status and status.group(1).strip()) if p]
    if parts:
        return "the server answered " + ", ".join(parts)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _bucket_exists(bucket: str) -> bool | None:
    try:
        obstore.list_with_delimiter(_store(bucket), prefix=None)
    except Exception as exc:
        if "NoSuchBucket" in str(exc):
            return False
        return None
    return True


def s3_error(
    exc: BaseException,
    location: S3Path,
    *,
    param: str | None = None,
    expected: str = "object",
    error: type[RoidaskOSError] = UnreadableFileError,
) -> RoidaskOSError:
    """The one-line error for a failed request about ``location`` (no traceback).

    A missing bucket or object and denied access raise ``error`` (reading an input:
    :class:`~roidask.exceptions.UnreadableFileError`, writing an output:
    :class:`~roidask.exceptions.OutputError`); an unreachable endpoint and any other
    failure :class:`~roidask.exceptions.ObjectStoreError`. ``exc`` may be such an error
    already, raised by a request about ``location`` or an object inside it that did not
    know the parameter: it is then named by ``param`` and ``location`` if it concerns
    the bucket or the endpoint (no such bucket, denied access, unreachable), else
    prefixed by ``param``.
    """
    where = f"{param} {location}" if param else str(location)
    if isinstance(exc, RoidaskOSError):
        return _named(exc, param, location, error)
    said = _what_server_said(exc)
    text = str(exc)
    if isinstance(exc, obs_errors.PermissionDeniedError | obs_errors.UnauthenticatedError) or (
        "AccessDenied" in text or "403 Forbidden" in text
    ):
        unsigned = _credentials().unsigned
        unset = "unset it and " if _truthy("AWS_SKIP_SIGNATURE") else ""
        how = (
            f"{unsigned}, so the request was sent unsigned, as to a public bucket; {unset}give "
            "credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in ~/.aws, "
            "AWS_PROFILE, or boto3's chain: SSO, roles) or check the bucket's policy"
            if unsigned
            else "check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or ~/.aws) "
            "and the bucket's policy"
        )
        return error(f"{where}: access denied ({said}); {how}", param=param)
    if "NoSuchBucket" in text or (
        isinstance(exc, FileNotFoundError) and _bucket_exists(location.bucket) is False
    ):
        return error(f"{where}: no such bucket {location.bucket!r} ({said})", param=param)
    if isinstance(exc, FileNotFoundError):
        return error(f"{where}: no such {expected} ({said})", param=param)
    if "error sending request" in text or "Connect" in text or "dns error" in text:
        endpoint = _endpoint()
        what = (
            f"the S3 endpoint {endpoint} (connection failed); check AWS_ENDPOINT_URL and the "
            "network"
            if endpoint
            else "AWS S3 (connection failed; no AWS_ENDPOINT_URL is set, so AWS's own endpoint "
            "was used); check the network, or set AWS_ENDPOINT_URL to your S3 server"
        )
        return ObjectStoreError(f"{where}: cannot reach {what}", param=param)
    return ObjectStoreError(f"{where}: S3 request failed ({said})", param=param)


#: The reasons :func:`s3_error` gives that concern a bucket or the endpoint, not one object.
_BUCKET_WIDE = re.compile(r": (?=no such bucket |access denied |cannot reach )")


def _named(
    exc: RoidaskOSError, param: str | None, location: S3Path, error: type[RoidaskOSError]
) -> RoidaskOSError:
    """:func:`s3_error`'s error ``exc`` as an error of parameter ``param`` (see there); a
    missing or denied one (:class:`~roidask.exceptions.UnreadableFileError`) as ``error``."""
    if param is None or exc.param is not None:
        return exc
    text = str(exc)
    bucket_wide = _BUCKET_WIDE.search(text)
    if bucket_wide and text.startswith(SCHEME):
        text = f"{param} {location}{text[bucket_wide.start() :]}"
    else:
        text = f"{param} {text}"
    kind = error if type(exc) is UnreadableFileError else type(exc)
    return kind(text, param=param)


#: Names :func:`check_writable`'s probe objects start with: another command's probe,
#: there for a moment, is never taken for an object of the prefix.
_PROBE = ".roidask-probe-"


def _is_probe(key: str) -> bool:
    return key.rpartition("/")[2].startswith(_PROBE)


# -- S3 locations ----------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class S3Path:
    """An object or a "folder" (key prefix) in an S3 bucket, with the Path API roidask uses.

    Holds no client (pickles cheaply to dask workers); requests go through a client
    cached per process. ``str()`` gives the URL.
    """

    bucket: str
    key: str = ""
    _dir: bool | None = field(default=None, compare=False, repr=False)  # known from a listing

    @classmethod
    def from_url(cls, url: str, param: str | None = None) -> S3Path:
        """Parse ``s3://BUCKET/KEY``: the one place where URLs become locations.

        The key is taken as written, as S3 reads it: a trailing ``/`` (a folder) is
        dropped, but a URL whose key has an empty segment (``a//b``), a ``.`` or a
        ``..`` one is refused (``param`` names it), since S3 would read another object
        than the path it looks like (``a//b`` and ``a/b`` are two keys; ``..`` is no
        parent).
        """
        where = f"{param} {url}" if param else url
        rest = url[len(SCHEME) :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise UnreadableFileError(
                f"{where}: an s3:// URL needs a bucket (s3://BUCKET/KEY)", param=param
            )
        key = key.removesuffix("/")
        odd = [part for part in key.split("/") if part in ("", ".", "..")] if key else []
        if odd:
            segment = "an empty segment ('//')" if "" in odd else f"a {odd[0]!r} segment"
            raise InvalidParameterError(
                f"{where}: the key has {segment}; S3 reads keys as written, not as paths "
                "(a//b, a/./b and a/b are three objects), so write the URL without it",
                param=param,
            )
        return cls(bucket, key)

    # -- names ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> S3Path:
        return S3Path(self.bucket, self.key.rpartition("/")[0])

    @property
    def parents(self) -> list[S3Path]:
        out, p = [], self
        while p.key:
            p = p.parent
            out.append(p)
        return out

    def __truediv__(self, other: str | os.PathLike) -> S3Path:
        other = os.fspath(other)
        if other.startswith(SCHEME):
            return S3Path.from_url(other)
        return S3Path.from_url(f"{self.url}/{other}")

    def joinpath(self, *others: str) -> S3Path:
        out = self
        for o in others:
            out = out / o
        return out

    def relative_to(self, other: S3Path) -> str:
        if other.bucket != self.bucket or not (
            other.key == "" or self.key == other.key or self.key.startswith(other.key + "/")
        ):
            raise ValueError(f"{self} is not inside {other}")
        return self.key[len(other.key) :].lstrip("/")

    def resolve(self) -> S3Path:
        return self

    def is_relative_to(self, other: S3Path) -> bool:
        try:
            self.relative_to(other)
        except ValueError:
            return False
        return True

    def _prefix(self) -> str | None:
        return f"{self.key}/" if self.key else None

    # -- requests ------------------------------------------------------------------------
    def head(self, *, param: str | None = None, expected: str = "object") -> dict:
        """The object's metadata (``size``, ``e_tag``, ...); one-line errors if missing."""
        try:
            return dict(obstore.head(_store(self.bucket), self.key))
        except Exception as exc:
            raise s3_error(exc, self, param=param, expected=expected) from None

    def _list_dir(self) -> Any:
        try:
            listing = obstore.list_with_delimiter(_store(self.bucket), prefix=self._prefix())
        except Exception as exc:
            raise s3_error(exc, self, expected="folder") from None
        objects = [m for m in listing["objects"] if not _is_probe(m["path"])]
        return {**listing, "objects": objects}

    def is_file(self) -> bool:
        if self._dir is not None:
            return not self._dir
        try:
            obstore.head(_store(self.bucket), self.key)
        except FileNotFoundError as exc:
            if _bucket_exists(self.bucket) is False:
                raise s3_error(exc, self) from None
            return False
        except Exception as exc:
            raise s3_error(exc, self) from None
        return bool(self.key)

    def is_dir(self) -> bool:
        if self._dir is not None:
            return self._dir
        listing = self._list_dir()
        return bool(listing["objects"] or listing["common_prefixes"])

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def is_symlink(self) -> bool:
        return False

    def iterdir(self) -> Iterator[S3Path]:
        listing = self._list_dir()
        for prefix in listing["common_prefixes"]:
            yield S3Path(self.bucket, prefix.rstrip("/"), True)
        for meta in listing["objects"]:
            yield S3Path(self.bucket, meta["path"], False)

    def read_bytes(self) -> bytes:
        try:
            return bytes(obstore.get(_store(self.bucket), self.key).bytes())
        except FileNotFoundError:
            raise  # as a local file: callers test for absence
        except Exception as exc:
            raise s3_error(exc, self) from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def read_range(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object)."""
        if length <= 0:
            return b""
        try:
            return bytes(
                obstore.get_range(_store(self.bucket), self.key, start=start, length=length)
            )
        except Exception as exc:
            if "Range" in str(exc) and "416" in str(exc):
                return b""
            raise s3_error(exc, self) from None

    def stream(self, piece_bytes: int = STREAM_PIECE_BYTES) -> Iterator[memoryview]:
        """The object's bytes as one GET, in pieces of about ``piece_bytes``."""
        try:
            result = obstore.get(_store(self.bucket), self.key)
            for piece in result.stream(min_chunk_size=piece_bytes):
                yield memoryview(piece)
        except Exception as exc:
            raise s3_error(exc, self) from None

    def write_bytes(self, data: bytes) -> None:
        """Put one object (a PUT replaces an object whole: readers see old or new)."""
        try:
            obstore.put(_store(self.bucket), self.key, data)
        except Exception as exc:
            raise s3_error(exc, self, error=OutputError) from None

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def list_objects(self) -> dict[str, dict]:
        """Every object under this prefix: relative key -> metadata (size, e_tag)."""
        try:
            pages = obstore.list(_store(self.bucket), prefix=self._prefix())
            out = {}
            for page in pages:
                for meta in page:
                    if not _is_probe(meta["path"]):
                        out[meta["path"][len(self.key) :].lstrip("/")] = dict(meta)
            return out
        except Exception as exc:
            raise s3_error(exc, self, expected="folder") from None


# -- leases: one writer of an s3:// output at a time -------------------------------------------
#: Ends the name of a lease object, beside the prefix it is for (``.<name>.roidask-lease``).
LEASE_SUFFIX = ".roidask-lease"
_UNLEASED: set[str] = set()  # buckets said to have no conditional writes (once per process)


class _NoConditionalWrites(Exception):
    """The object store refused a conditional PUT as not implemented."""


def _pid_scope() -> str | None:
    """Where a process ID means one process: this kernel's boot and PID namespace."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _ended(record: dict) -> bool:
    """True if the lease's holder ran in this PID scope and its process is gone (killed)."""
    scope, pid = record.get("pid_scope"), record.get("pid")
    if scope is None or scope != _pid_scope() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's
    return False


class RemoteLease:
    """An exclusive lease on an ``s3://`` output: what :class:`~roidask._atomic.FolderLock`
    is on disk, where there is no ``flock``.

    The lease is an object beside the prefix (``.<name>.roidask-lease``, as temporary
    siblings are on disk, so the prefix itself holds only the output), created with a
    conditional PUT (``If-None-Match: *``): of two commands, one gets it. Its holder
    renews it every ``lease_s / 4`` seconds (a PUT conditional on its ETag, from a
    thread) and deletes it on :meth:`release`. A lease not renewed for ``lease_s``
    seconds, by the object's ``Last-Modified`` (its holder was killed), has lapsed, as
    has at once one whose holder ran on this machine (the same kernel boot and PID
    namespace) and is gone: the next command takes it over with a PUT conditional on
    the lapsed ETag. A holder that
    could not renew for that long and was taken over learns it at its next renewal;
    :meth:`check` then raises. Needs conditional writes (AWS S3, MinIO, moto) and
    clocks within ``lease_s`` of the server's.

    Parameters
    ----------
    folder : S3Path
        The output prefix.
    param : str
        The parameter ``folder`` came from (for messages).
    wait : bool
        Wait while another command holds it (a short commit: publishing a folder);
        else refuse at once (a batch).
    part : str, optional
        A part of ``folder`` the lease is for alone (a subject of a store: converts of
        other subjects upload at the same time); its lease object is beside ``folder``
        too (``.<name>.<part>.roidask-lease``), never in it.

    Raises
    ------
    OutputError
        Another command holds the lease (``wait=False``), or the store refused the
        request.
    """

    #: Seconds a lease lasts without renewal.
    lease_s: float = 120.0
    #: Seconds between two looks at a lease held by another command (``wait=True``).
    poll_s: float = 0.5
    _thread: threading.Thread | None

    def __init__(self, folder: S3Path, *, param: str, wait: bool = False, part: str | None = None):
        self._setup(folder, param, part)
        try:
            looks = 0
            while (holder := self._take()) is not None:
                if not wait:
                    raise OutputError(self._held_message(holder), param=param)
                time.sleep(min(self.poll_s * 2 ** min(looks, 4), 5.0))  # backs off to 5 s
                looks += 1
        except _NoConditionalWrites:
            self._unsupported()
            return
        thread = threading.Thread(target=self._renew, name="roidask-lease", daemon=True)
        thread.start()
        self._thread = thread

    def _unsupported(self) -> None:
        """A store without conditional writes: written without a lease, as a file system
        without ``flock`` is (:class:`~roidask.exceptions.LockWarning`, once per bucket)."""
        if self.folder.bucket not in _UNLEASED:
            _UNLEASED.add(self.folder.bucket)
            warnings.warn(
                f"{self.param} {self.folder}: the object store does not support conditional "
                "writes, so no lease is taken; nothing stops another command from writing it "
                "meanwhile: run one at a time",
                LockWarning,
                stacklevel=3,
            )

    @classmethod
    def probe(cls, folder: S3Path, *, param: str) -> None:
        """Refuse ``folder`` now if another command holds its lease (takes nothing)."""
        probe = cls.__new__(cls)
        probe._setup(folder, param)
        holder = probe._look()
        if holder is not None and not holder["lapsed"]:
            raise OutputError(probe._held_message(holder), param=param)

    def _setup(self, folder: S3Path, param: str, part: str | None = None) -> None:
        self.folder = folder if part is None else folder / part
        self.param = param
        name = folder.name or folder.bucket
        self.lease = folder.parent / f".{name}{f'.{part}' if part else ''}{LEASE_SUFFIX}"
        self.lost = False
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread = None
        self._token = secrets.token_hex(8)

    def _record(self) -> bytes:
        """The lease's content: who holds it, and a token that makes its ETag (the
        content's MD5) differ from any other holder's, for the conditional renewals."""
        return json.dumps(
            {
                "written_by": "roidask",
                "kind": "lease",
                "for": self.folder.url,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_scope": _pid_scope(),
                "token": self._token,
                "lease_s": self.lease_s,
            }
        ).encode()

    def _request(self, call, *args, **kwargs):
        try:
            return call(_store(self.lease.bucket), self.lease.key, *args, **kwargs)
        except (FileNotFoundError, obs_errors.AlreadyExistsError, obs_errors.PreconditionError):
            raise
        except Exception as exc:
            said = str(exc)
            if "mode" in kwargs and (
                isinstance(exc, obs_errors.NotSupportedError)
                or "NotImplemented" in said
                or "501 Not Implemented" in said
            ):
                raise _NoConditionalWrites from None
            raise s3_error(
                exc, self.folder, param=self.param, expected="prefix", error=OutputError
            ) from None

    def _look(self) -> dict | None:
        """The lease object's record, with its ``age_s``, ``e_tag`` and whether it
        ``lapsed``; None if there is none."""
        try:
            meta = self._request(obstore.head)
            raw = bytes(self._request(obstore.get).bytes())
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        record = record if isinstance(record, dict) else {}
        age_s = (datetime.datetime.now(datetime.UTC) - meta["last_modified"]).total_seconds()
        try:
            lease_s = float(record.get("lease_s", type(self).lease_s))
        except (TypeError, ValueError):
            lease_s = type(self).lease_s
        lapsed = age_s > lease_s or _ended(record)
        return {**record, "age_s": max(age_s, 0.0), "e_tag": meta["e_tag"], "lapsed": lapsed}

    def _take(self) -> dict | None:
        """Take the lease: None once held, else the live holder's record."""
        for _ in range(10):
            try:
                self._etag = self._request(obstore.put, self._record(), mode="create")["e_tag"]
                return None
            except (obs_errors.AlreadyExistsError, obs_errors.PreconditionError):
                pass  # held, or lapsed
            holder = self._look()
            if holder is None:
                continue  # released meanwhile
            if holder.get("token") == self._token:  # this one's (a retried PUT that had won)
                self._etag = holder["e_tag"]
                return None
            if not holder["lapsed"]:
                return holder
            try:  # lapsed: take it over, unless another command just did
                mode = {"e_tag": holder["e_tag"]}
                self._etag = self._request(obstore.put, self._record(), mode=mode)["e_tag"]
                return None
            except (obs_errors.PreconditionError, FileNotFoundError):
                continue
        holder = self._look()
        return holder if holder is not None and not holder["lapsed"] else {"age_s": 0.0}

    def _held_message(self, holder: dict) -> str:
        who = f"pid {holder['pid']} on {holder.get('host', '?')}, " if "pid" in holder else ""
        return (
            f"{self.param} {self.folder}: another roidask command is writing it ({who}lease "
            f"{self.lease} renewed {holder['age_s']:.0f} s ago); wait for it to end, or "
            "choose another output (the lease of a command that was killed is taken over "
            f"at once on its machine, elsewhere {type(self).lease_s:.0f} s after its last "
            "renewal)"
        )

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self._etag = self._request(
                    obstore.put, self._record(), mode={"e_tag": self._etag}
                )["e_tag"]
            except (obs_errors.PreconditionError, FileNotFoundError):
                holder = self._look()
                if holder is not None and holder.get("token") == self._token:
                    self._etag = holder["e_tag"]  # a retried renewal that had been written
                    continue
                self.lost = True  # taken over after it lapsed, or removed
                return
            except Exception:  # a failed request: the next renewal tries again
                continue

    def check(self) -> None:
        """Raise if the lease was lost (what this command wrote may be mixed with another's)."""
        if self.lost:
            raise OutputError(
                f"{self.param} {self.folder}: lost its lease {self.lease} to another roidask "
                f"command (not renewed for {self.lease_s:.0f} s); what each wrote may be mixed: "
                "run it again",
                param=self.param,
            )

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this command's (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        etag, self._etag = self._etag, None
        if etag is None or self.lost:
            return
        with contextlib.suppress(Exception):  # else it lapses after lease_s
            if self._request(obstore.head)["e_tag"] == etag:
                self._request(obstore.delete)

    def __enter__(self) -> RemoteLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def output_lock(
    location: Path | S3Path, *, param: str, wait: bool = False
) -> FolderLock | RemoteLease:
    """Hold ``location`` for this command alone: the one way roidask locks an output.

    Parameters
    ----------
    location : Path or S3Path
        A folder (:class:`~roidask._atomic.FolderLock`, an ``flock``) or an ``s3://``
        prefix (:class:`RemoteLease`, a lease object beside it).
    param : str
        The parameter ``location`` came from (for messages).
    wait : bool
        Wait for another command holding it (short commits that commands take turns
        for); else refuse at once.

    Returns
    -------
    FolderLock or RemoteLease
        Held until ``release()`` (or the end of a ``with`` block); call ``check()``
        before the last write (a lease can lapse, an ``flock`` cannot).

    Raises
    ------
    OutputError
        Another command holds it (``wait=False``).
    """
    if isinstance(location, S3Path):
        return RemoteLease(location, param=param, wait=wait)
    return FolderLock(location, param=param, wait=wait)


#: A location once parsed: a local path or an object (prefix) in S3.
Location = Path | S3Path
#: A location as roidask's functions accept it: a path, or an ``s3://`` URL (str) or S3Path.
PathOrURL = str | os.PathLike | S3Path


def absolute(location: str | os.PathLike | S3Path) -> Path | S3Path:
    """:func:`as_location`, a local path made absolute (not resolved: links stay): what is
    sent to dask workers, whose working folders are not this process's.

    Parameters
    ----------
    location : str, path or S3Path

    Returns
    -------
    Path or S3Path
        An absolute local path, or the ``s3://`` location unchanged.
    """
    loc = as_location(location)
    return Path(os.path.abspath(loc)) if isinstance(loc, Path) else loc


def location_exists(location: Location, param: str) -> bool:
    """Whether a file, folder, object or prefix exists; a failed request (no such bucket,
    denied access, an unreachable endpoint) is one line naming ``param``."""
    try:
        return location.exists()
    except RoidaskOSError as exc:
        if isinstance(location, S3Path):
            raise s3_error(exc, location, param=param) from None
        raise


def stored_where(location: Location) -> str:
    """Where a message says the files of ``location`` are: ``"on disk"``, or ``"in the
    bucket"`` for an ``s3://`` location."""
    return "in the bucket" if isinstance(location, S3Path) else "on disk"


def is_remote(location: Any) -> bool:
    """True for an ``s3://`` URL (string) or an :class:`S3Path`."""
    return isinstance(location, S3Path) or (
        isinstance(location, str) and location.startswith(SCHEME)
    )


def as_location(location: str | os.PathLike | S3Path, param: str | None = None) -> Path | S3Path:
    """``location`` as a :class:`~pathlib.Path`, or an :class:`S3Path` for ``s3://``.

    With ``param`` (where a path enters the public API), what is not a path (``None``, a
    number) is refused naming it (:func:`roidask._validate.check_path`).
    """
    if isinstance(location, S3Path):
        return location
    if param is not None:
        check_path(location, param)
    if isinstance(location, str) and location.startswith(SCHEME):
        return S3Path.from_url(location, param)
    return Path(location)


def as_location_list(value: Any, param: str) -> list:
    """One path (or ``s3://`` URL) or a list or tuple of them, as a list of the values given,
    each checked as :func:`as_location` checks one (``param`` names the parameter)."""
    items = [value] if isinstance(value, PathOrURL) else value
    if not isinstance(items, list | tuple):
        check_path(value, param, what="a path or a list of paths")  # raises: not a path
    for item in items:
        as_location(item, param)
    return list(items)


def location_arg(text: str) -> str | Path:
    """argparse ``type=`` for a file or folder argument: ``s3://`` URLs stay strings (an
    empty one is refused: ``Path("")`` would be the current folder; so is a URL
    :meth:`S3Path.from_url` refuses, the flag named)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    if not text.startswith(SCHEME):
        return Path(text)
    try:
        S3Path.from_url(text)  # refused here, naming the flag, before anything runs
    except RoidaskError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def check_input_file(location, param: str, *, what: str = "file") -> Path | S3Path:
    """An existing, readable, non-empty file or object (checked before anything reads it).

    Local files: :func:`roidask._validate.check_input_file`. Objects: one HEAD.
    """
    loc = as_location(location, param)
    if isinstance(loc, Path):
        return check_local_file(loc, param, what=what)
    if not loc.key:
        raise UnreadableFileError(f"{param} {loc}: expected a {what}, got a bucket", param=param)
    try:
        size = obstore.head(_store(loc.bucket), loc.key)["size"]
    except FileNotFoundError as exc:
        check_finished(loc, param, folder=False)  # deleted by an upload that was cut?
        if _bucket_exists(loc.bucket) is not False and loc.is_dir():
            raise UnreadableFileError(
                f"{param} {loc}: is a folder; expected a {what}", param=param
            ) from None
        raise s3_error(exc, loc, param=param, expected=what) from None
    except Exception as exc:
        raise s3_error(exc, loc, param=param, expected=what) from None
    if not size:
        raise CorruptFileError(
            f"{param} {loc}: is empty (0 bytes); expected a {what}", param=param
        )
    check_finished(loc, param, folder=False)
    return loc


def open_table(location) -> Path | io.BytesIO:
    """What pandas reads for a small text file: the local path, or an object's bytes."""
    loc = as_location(location)
    return loc if isinstance(loc, Path) else io.BytesIO(loc.read_bytes())


def version_tag(location) -> str:
    """What changes when a file's content does: local mtime (ns), or an object's ETag.

    For a folder on S3 (a zarr array or group), the ETag of its ``zarr.json``.
    """
    loc = as_location(location)
    if isinstance(loc, Path):
        return str(loc.stat().st_mtime_ns)
    target = loc if loc.is_file() else loc / "zarr.json"
    return str(target.head().get("e_tag"))


# Files zarr itself may leave in a group folder (metadata, chunks, partial writes).
_ZARR_FILE_RE = re.compile(r"^(?:.*/)?(?:zarr\.json(?:\.[0-9a-f]+\.partial)?|c/[0-9/]+)$")


def is_zarr_file(key: str) -> bool:
    """``key`` (a ``/``-separated path in a zarr store) is a name zarr writes."""
    return _ZARR_FILE_RE.match(key) is not None


def foreign_in_group(group_dir: Location) -> list[str]:
    """Files in a zarr group folder (or objects under an S3 prefix) that zarr did not
    write (relative paths, sorted)."""
    return [name for name in list_files(group_dir) if not is_zarr_file(name)]


def list_files(location) -> list[str]:
    """Every file under a folder (relative paths, ``/``-separated, sorted); a symbolic
    link to a folder is listed as a file (it is not followed)."""
    loc = as_location(location)
    if isinstance(loc, S3Path):
        return sorted(loc.list_objects())
    if not loc.is_dir():
        return []
    return sorted(
        Path(dirpath, f).relative_to(loc).as_posix()
        for dirpath, dirs, files in os.walk(loc)
        for f in [*files, *(d for d in dirs if os.path.islink(os.path.join(dirpath, d)))]
    )


def object_record(location) -> dict:
    """Provenance of an S3 input without reading it: URL, size and ETag(s).

    A prefix (a store) gets its total size and the SHA-256 of its sorted
    ``key etag`` listing, so any changed object changes the record.
    """
    loc = as_location(location)
    if not isinstance(loc, S3Path):
        raise TypeError(f"object_record: {loc} is not an s3:// location")
    if loc.is_file():
        meta = loc.head()
        return {"path": loc.url, "bytes": int(meta["size"]), "etag": str(meta.get("e_tag"))}
    objects = loc.list_objects()
    listing = "\n".join(f"{k} {m.get('e_tag')}" for k, m in sorted(objects.items()))
    return {
        "path": loc.url,
        "bytes": int(sum(m["size"] for m in objects.values())),
        "etags_sha256": hashlib.sha256(listing.encode()).hexdigest(),
    }


# -- streams ---------------------------------------------------------------------------------
class ObjectStream:
    """A file-like reader over one GET of an object, gunzipped on the fly if ``gzip``.

    ``read(n)`` returns at most ``n`` bytes (fewer only at the end). Decompressed data
    is produced in pieces of at most :data:`_OUT_PIECE_BYTES` and joined once per
    ``read``, so the memory held is about one GET piece, the bytes asked for and
    their pieces (2 x ``n``), whatever the size of the object. The gzip members'
    CRCs and sizes are checked as they end (``isal_zlib``).
    """

    def __init__(self, location: S3Path, *, gzip: bool, piece_bytes: int = STREAM_PIECE_BYTES):
        self.location = location
        self._pieces: Any = location.stream(piece_bytes)  # a generator (closed on close)
        self._dec = isal_zlib.decompressobj(wbits=31) if gzip else None
        self._out: collections.deque = collections.deque()  # decompressed, not yet read
        self._out_bytes = 0
        self._input: memoryview | bytes = b""  # compressed, not yet fed
        self._done = False
        self.pos = 0

    def _next_input(self) -> bool:
        if self._done:
            return False
        try:
            self._input = next(self._pieces)
        except StopIteration:
            self._done = True
            return False
        return True

    def _produce(self) -> bytes:
        """The next piece of (decompressed) data; empty at the end of the object."""
        dec = self._dec
        if dec is None:
            if not self._input and not self._next_input():
                return b""
            data, self._input = bytes(self._input), b""
            return data
        while True:
            if dec.unconsumed_tail:
                return dec.decompress(dec.unconsumed_tail, _OUT_PIECE_BYTES)
            if dec.eof:
                rest = dec.unused_data
                if not rest and not self._input and not self._next_input():
                    return b""
                self._dec = dec = isal_zlib.decompressobj(wbits=31)  # next gzip member
                if rest:
                    self._input = rest
                continue
            if not self._input and not self._next_input():
                raise EOFError(f"{self.location}: gzip stream ended early (truncated file)")
            data, self._input = dec.decompress(self._input, _OUT_PIECE_BYTES), b""
            if data or dec.eof or dec.unconsumed_tail:
                return data

    def read(self, n: int = -1) -> bytes | bytearray:
        """Up to ``n`` bytes (all that is left if ``n < 0``), fewer only at the end."""
        if n is None or n < 0:
            parts = [*self._out, *iter(self._produce, b"")]
            self._out.clear()
            self._out_bytes = 0
            whole = b"".join(parts)
            self.pos += len(whole)
            return whole
        out = bytearray(n)  # filled piece by piece: the bytes asked for plus one piece
        view, got = memoryview(out), 0
        while got < n:
            piece = self._out.popleft() if self._out else self._produce()
            if not piece:
                if self._dec is not None and not self._dec.eof and not self._done:
                    continue  # the decompressor needs more input to give output
                break
            take = min(len(piece), n - got)
            view[got : got + take] = piece[:take]
            got += take
            if take < len(piece):
                self._out.appendleft(piece[take:])
        self._out_bytes = sum(len(p) for p in self._out)
        view.release()
        if got < n:
            del out[got:]
        self.pos += got
        return out

    def peek(self, n: int = 1) -> bytes:
        while self._out_bytes < n:
            piece = self._produce()
            if not piece:
                if self._dec is not None and not self._dec.eof and not self._done:
                    continue
                break
            self._out.append(piece)
            self._out_bytes += len(piece)
        return b"".join(self._out)[:n]

    def seek(self, offset: int, whence: int = 0) -> int:
        """Forward only (skips by reading)."""
        target = offset if whence == 0 else self.pos + offset
        if target < self.pos:
            raise OSError(f"{self.location}: a stream cannot seek backwards")
        while self.pos < target:
            if not self.read(min(target - self.pos, STREAM_PIECE_BYTES)):
                break
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self._pieces.close()
        self._out.clear()
        self._out_bytes = 0

    def __enter__(self) -> ObjectStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RangeFile(io.RawIOBase):
    """A seekable raw file over ranged GETs of an object (wrap it in a BufferedReader)."""

    def __init__(self, location: S3Path, size: int | None = None):
        super().__init__()
        self.location = location
        self.size = int(location.head()["size"]) if size is None else size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self._pos)
        if n <= 0:
            return 0
        data = self.location.read_range(self._pos, n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


#: The first ranged GET of :func:`read_prefix` on a gzipped object (each next one 4x more).
_PREFIX_RANGE_BYTES = 64 * 2**10


def read_prefix(location: S3Path, n: int, *, gzip: bool) -> bytes:
    """The first ``n`` bytes of an object's (decompressed) content, fewer if shorter.

    Read with ranged GETs, from 64 KiB up, growing 4x until ``n`` bytes are decoded: an
    open-ended GET closed after a header's few hundred bytes would still have brought
    megabytes of a large ``.nii.gz`` over the network.
    """
    if not gzip:
        return location.read_range(0, n)
    inflate = isal_zlib.decompressobj(wbits=31)
    out = bytearray()
    start, length = 0, _PREFIX_RANGE_BYTES
    while len(out) < n and not inflate.eof:
        data = location.read_range(start, length)
        if not data:
            break
        start += len(data)
        length = min(4 * length, 64 * 2**20)
        out += inflate.decompress(data, n - len(out))
    return bytes(out)


# -- zarr ------------------------------------------------------------------------------------
def zarr_store(location, *, read_only: bool = True, chunks_required: bool = False):
    """What zarr/xarray open for a store: the local path as ``str``, or an ``ObjectStore``.

    With ``chunks_required`` (a store whose every chunk is written, roidask's since format
    2), a chunk that is absent when read raises :class:`MissingChunkError` instead of
    reading as the fill value (zarr 3.1 has no setting for this): e.g. one deleted after
    the store was opened. No listing: zarr's own read finds it absent.
    """
    loc = as_location(location)
    if isinstance(loc, Path):
        if not chunks_required:
            return str(loc)
        return _ChunksRequired(zarr.storage.LocalStore(str(loc), read_only=read_only))
    store = zarr.storage.ObjectStore(_store(loc.bucket, loc.key), read_only=read_only)
    return _ChunksRequired(store) if chunks_required else store


class MissingChunkError(FileNotFoundError):
    """A chunk that a store must hold is absent (:func:`zarr_store` with ``chunks_required``)."""


#: A chunk key of zarr v3's default encoding: ``.../c/0/3/1`` (``c`` alone: a 0-d array).
_CHUNK_KEY = re.compile(r"(?:^|/)c(?:/\d+)*$")


class _ChunksRequired(zarr.storage.WrapperStore):
    """A zarr store whose absent chunks are errors (metadata keys may be absent)."""

    def _check(self, key: str, found) -> None:
        if found is None and _CHUNK_KEY.search(key):
            raise MissingChunkError(f"chunk {key} is missing")

    async def get(self, key, prototype, byte_range=None):
        found = await self._store.get(key, prototype, byte_range)
        self._check(key, found)
        return found

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        found = await self._store.get_partial_values(prototype, key_ranges)
        for (key, _), buf in zip(key_ranges, found, strict=True):
            self._check(key, buf)
        return found


# -- outputs ---------------------------------------------------------------------------------
def remote_marker(folder: S3Path) -> dict | None:
    """The ownership marker of a prefix roidask wrote (with ``complete``), or None."""
    try:
        record = json.loads((folder / MARKER).read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("written_by") != "roidask":
        return None
    if not isinstance(record.get("files"), list):
        return None
    record.setdefault("complete", True)
    return record


#: Seconds an ``s3://`` prefix found complete (or not an output) is taken as such
#: (:func:`incomplete_output`): the checks as a command opens its inputs ask once.
FINISHED_S = 5.0
_FINISHED: dict[S3Path, float] = {}
_FINISHED_LOCK = threading.Lock()


def incomplete_output(location: PathOrURL, *, folder: bool | None = None) -> S3Path | None:
    """The ``s3://`` output that ``location`` is, or is in, if its upload did not finish
    (its marker says ``complete: false``: the command writing it was killed, or is still
    running); None for a local path, or an output that is complete or not roidask's.

    One GET of the marker of the prefix ``location`` is in (roidask's outputs are one
    level deep: a run's or a batch subject's folder, ``group/``), and, for a folder
    (``folder``: True, or None when unknown), one of its own (a batch subject's folder
    given as such). A prefix found complete (or no output) is not asked again for
    :data:`FINISHED_S` seconds (one GET per input prefix: a command opens each input
    several times as it starts), unless this process uploads it meanwhile. A marker that
    cannot be read (access denied) proves nothing.
    """
    loc = as_location(location)
    if not isinstance(loc, S3Path):
        return None
    prefixes = [p for p in ([loc] if folder is not False else []) + [loc.parent] if p.key]
    for prefix in prefixes:
        if time.monotonic() - _FINISHED.get(prefix, -math.inf) < FINISHED_S:
            continue
        try:
            marker = remote_marker(prefix)
        except UnreadableFileError:
            continue
        if marker is not None and marker["complete"] is False:
            return prefix
        now = time.monotonic()
        with _FINISHED_LOCK:
            if len(_FINISHED) > 1000:  # (a long batch reads many prefixes)
                for old in [p for p, t in _FINISHED.items() if now - t >= FINISHED_S]:
                    del _FINISHED[old]
            _FINISHED[prefix] = now
    return None


def check_finished(
    location: PathOrURL, param: str | None = None, *, folder: bool | None = None
) -> None:
    """Refuse an input that is (in) an ``s3://`` output whose upload did not finish
    (:func:`incomplete_output`), before anything of it is read.

    Raises
    ------
    IncompleteOutputError
        One line naming ``location``, the output, and the command to rerun.
    """
    prefix = incomplete_output(location, folder=folder)
    if prefix is None:
        return
    loc = as_location(location)
    where = f"{param} {loc}" if param else str(loc)
    raise IncompleteOutputError(
        f"{where}: incomplete: the roidask command writing {prefix} did not finish (killed, or "
        f"still running: its {MARKER} says complete: false); rerun that command",
        param=param,
    )


def check_remote_destination(
    out: S3Path,
    *,
    param: str,
    inputs: Iterable | InputIndex = (),
    overwrite: bool = False,
    kind: str | None = None,
    probe: bool = True,
) -> S3Path:
    """:func:`roidask._atomic.check_destination` for an ``s3://`` prefix.

    An empty prefix may be written (the bucket must exist and be reachable); one
    with objects only if it holds roidask's marker (of ``kind``) and nothing but
    the objects it lists; an incomplete output (a pending marker left by a killed
    upload) may be rewritten without ``overwrite``. With ``probe``, a probe object is
    put and deleted (the prefix may be written); without, as an upload checks the
    prefix again before it commits (:func:`publish_folder`'s ``before_commit``).
    """
    check_not_input(out, inputs, param=param)
    if not out.key:
        raise OutputError(
            f"{param} {out}: give a prefix inside the bucket (s3://BUCKET/PREFIX)", param=param
        )
    try:
        objects = out.list_objects()
    except RoidaskOSError as exc:
        raise _as_output_error(exc, out, param) from None
    if not objects:
        if probe:
            check_writable(out, param)
        return out
    marker = remote_marker(out)
    if marker is None:
        raise OutputError(
            f"{param} {out}: exists and was not written by roidask (no {MARKER}); roidask "
            "only replaces its own outputs, choose another output",
            param=param,
        )
    if kind is not None and marker.get("kind") not in (kind, None):
        raise OutputError(
            f"{param} {out}: is a roidask {marker['kind']} folder, not a {kind} folder; "
            "choose another output",
            param=param,
        )
    listed = {*marker["files"], MARKER}
    foreign = [k for k in objects if k not in listed]
    if marker["complete"]:  # a user's edit of roidask's object: theirs now
        states = {k: _object_state(m) for k, m in objects.items()}
        foreign += [f"{k} (changed)" for k in changed_since_commit(marker, states) if k in states]
    if foreign:
        foreign.sort()
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise OutputError(
            f"{param} {out}: holds {len(foreign)} object(s) roidask did not write, or changed "
            f"since ({shown}); move them elsewhere or choose another output",
            param=param,
        )
    if marker["complete"] and not overwrite:
        raise OutputExistsError(
            f"{param} {out}: already exists; pass overwrite=True to replace it", param=param
        )
    if probe:
        check_writable(out, param)
    return out


def check_writable(out: S3Path, param: str) -> None:
    """Put and delete a probe object under ``out`` (as on disk: a probe file), and the
    probes a killed command left there."""
    probe = out / f"{_PROBE}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        obstore.put(_store(probe.bucket), probe.key, b"")
        # with the probes of killed commands (another's, live, is there for a moment only
        # and is deleted by it too: deleting an object twice is no error)
        listing = obstore.list_with_delimiter(_store(out.bucket), prefix=out._prefix())
        probes = {m["path"] for m in listing["objects"] if _is_probe(m["path"])}
        obstore.delete(_store(probe.bucket), sorted(probes | {probe.key}))
    except Exception as exc:
        raise s3_error(exc, out, param=param, expected="prefix", error=OutputError) from None


def _as_output_error(exc: RoidaskOSError, out: S3Path, param: str) -> RoidaskOSError:
    named = s3_error(exc, out, param=param, error=OutputError)
    if isinstance(named, OutputError):
        return OutputError(str(named).replace(" no such folder", " cannot be listed"), param=param)
    return named


def check_output(
    out, *, param: str, inputs: Iterable | InputIndex = (), overwrite: bool = False, kind=None
):
    """Check a local or remote output folder before anything is read (see the two checks)."""
    overwrite = check_bool(overwrite, "overwrite")
    loc = as_location(out, param)
    if isinstance(loc, S3Path):
        return check_remote_destination(
            loc, param=param, inputs=inputs, overwrite=overwrite, kind=kind
        )
    clean_stale(loc)
    return check_destination(loc, param=param, inputs=inputs, overwrite=overwrite, kind=kind)


def put_files(root: Path, dest: S3Path, names: Iterable[str]) -> dict[str, str | None]:
    """Upload the files ``root/name`` to ``dest/name`` (concurrently; each PUT is atomic).

    Returns
    -------
    dict
        Name to the ETag its PUT returned (None if the server returned none): a file
        over 16 MiB is put in parts, and its ETag is then not the MD5 of its content,
        but it is the one listings give for the object until it is replaced.
    """

    def put(name: str) -> str | None:
        target = dest / name
        try:
            with open(root / name, "rb") as fh:
                done = obstore.put(_store(target.bucket), target.key, fh, chunk_size=16 * 2**20)
        except Exception as exc:
            raise s3_error(exc, target, error=OutputError) from None
        return done.get("e_tag")

    names = list(names)
    with thread_pool(_PUT_THREADS, "roidask-put") as pool:
        futures = [pool.submit(put, n) for n in names]
        return {n: f.result() for n, f in zip(names, futures, strict=True)}


def delete_prefix_keys(dest: S3Path, names: Iterable[str]) -> None:
    """Delete the objects ``dest/name`` (only names roidask listed as its own)."""
    keys = [(dest / n).key for n in names]
    for start in range(0, len(keys), 1000):
        try:
            obstore.delete(_store(dest.bucket), keys[start : start + 1000])
        except Exception as exc:
            raise s3_error(exc, dest, error=OutputError) from None


def folder_marker(folder: Location) -> dict | None:
    """The ownership marker of a roidask output folder or ``s3://`` prefix, or None."""
    return remote_marker(folder) if isinstance(folder, S3Path) else read_marker(folder)


def _object_state(meta: dict) -> dict:
    """What :func:`roidask._atomic.changed_since_commit` compares of an object now, from
    its listing: ``size`` and ``etag``."""
    return {"size": int(meta.get("size", -1)), "etag": meta.get("e_tag")}


def file_states(folder: Location, names: Iterable[str]) -> dict[str, dict]:
    """The state of the files ``names`` of ``folder`` that are there, as
    :func:`roidask._atomic.changed_since_commit` compares it: a listing in S3 (``size``,
    ``etag``), a ``stat`` each on disk (``size``, ``mtime_ns``); nothing is read.

    Parameters
    ----------
    folder : Path or S3Path
    names : iterable of str
        Paths relative to ``folder``.

    Returns
    -------
    dict
        Name to state, for the names that exist.
    """
    names = set(names)
    if isinstance(folder, S3Path):
        listing = folder.list_objects()
        return {k: _object_state(m) for k, m in listing.items() if k in names}
    states = {}
    for name in names:
        with contextlib.suppress(OSError):
            states[name] = file_state((folder / name).stat())
    return states


def changed_files(folder: Location, marker: dict | None = None) -> list[str]:
    """Files of a roidask output folder (or ``s3://`` prefix) changed since it was
    committed, or gone, as its marker (``marker``, else read) recorded them
    (:func:`roidask._atomic.changed_since_commit`: on disk, a file is read only if its
    size and modification time cannot tell; in S3, one listing). Sorted; empty for a
    folder whose marker records no sizes (roidask 0.1's, and those written before sizes
    were)."""
    marker = folder_marker(folder) if marker is None else marker
    recorded = (marker or {}).get("bytes")
    if not isinstance(recorded, dict):
        return []
    crc = None if isinstance(folder, S3Path) else crc32c_reader(folder)
    return changed_since_commit(marker or {}, file_states(folder, recorded), crc32c=crc)


#: The names of zarr's metadata objects (v3, and v2's): put after every chunk of their
#: store, so that zarr opens a store only once its data is all there.
_ZARR_METADATA = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})


def _is_zarr_metadata(name: str) -> bool:
    return name.rpartition("/")[2] in _ZARR_METADATA


def _metadata_levels(names: Iterable[str]) -> list[list[str]]:
    """The zarr metadata objects among ``names`` in the order they are put: the deepest
    first (an array's before its group's), each store's root last."""
    levels: dict[int, list[str]] = collections.defaultdict(list)
    for name in names:
        if _is_zarr_metadata(name):
            levels[name.count("/")].append(name)
    return [sorted(levels[depth]) for depth in sorted(levels, reverse=True)]


def _metadata_first(names: Iterable[str]) -> list[str]:
    """``names`` in the order an old output is deleted: zarr metadata first (each store's
    root first: a store that has lost some of its chunks can no longer be opened), then
    the rest."""
    names = sorted(names)
    metadata = sorted((n for n in names if _is_zarr_metadata(n)), key=lambda n: n.count("/"))
    return [*metadata, *(n for n in names if not _is_zarr_metadata(n))]


#: ``s3://`` prefixes this process began to upload and has not finished: a command
#: interrupted meanwhile left them incomplete (:func:`left_incomplete`).
_UPLOADING: set[S3Path] = set()
_UPLOADING_LOCK = threading.Lock()


@contextlib.contextmanager
def uploading(prefix: S3Path) -> Iterator[None]:
    """Record ``prefix`` as being uploaded until the block ends normally (the prefix is
    then complete: uploads of one prefix take turns); if it raises (an error, Ctrl-C,
    SIGTERM), the prefix stays in :func:`left_incomplete`, which the command's last line
    names."""
    with _UPLOADING_LOCK:
        _UPLOADING.add(prefix)
    with _FINISHED_LOCK:
        _FINISHED.pop(prefix, None)  # incomplete from now on: asked again
    yield
    with _UPLOADING_LOCK:
        _UPLOADING.discard(prefix)


def left_incomplete() -> list[S3Path]:
    """The ``s3://`` prefixes whose upload this process began and did not finish (marked
    incomplete there: readers refuse them, the next command on them rewrites them)."""
    with _UPLOADING_LOCK:
        return sorted(_UPLOADING)


def publish_folder(
    local: Path,
    dest: S3Path,
    *,
    last: Iterable[str] = (MARKER,),
    before_commit: Callable[[], None] | None = None,
) -> S3Path:
    """Upload a complete local folder to ``dest``, the names in ``last`` last.

    S3 has no rename, so an output cannot appear whole in one step as a local folder
    does. The order makes every moment either the old output, or an incomplete one
    that roidask's readers refuse and plain zarr cannot open, never a mix of the old
    and the new:

    1. a pending marker (``complete: false``) listing the old and the new objects is
       put: from now on roidask's readers refuse the prefix (:func:`check_finished`),
       and a killed upload leaves a prefix recognised as roidask's and incomplete;
    2. the objects of the old output are deleted (only those its marker listed: never
       a user's), zarr metadata first;
    3. every file but zarr's metadata and ``last`` is put (concurrently): chunks,
       images, tables;
    4. zarr's metadata: the deepest first (an array's ``zarr.json`` before its group's),
       each store's root last, so that plain zarr or xarray can open a store only once
       every chunk of it is there;
    5. ``last`` (the folder's marker, already written locally) is put, with the ETag
       each PUT returned (``etag``: an object replaced since has another, which the
       listing that checks a prefix shows; no object is read) instead of the local
       files' modification times.

    The trade-off, for want of an atomic rename: a command killed during an overwrite
    (between 1 and 5) leaves neither the old output nor the new one, but a prefix
    marked incomplete, holding some of the new objects; roidask refuses to read it
    (naming the command to rerun), and the next command writing it rewrites it (no
    ``overwrite`` needed). It costs one more request than uploading over the old
    objects (the delete, one per 1000 objects) and one round of puts per level of zarr
    metadata.

    Uploads to one prefix take turns (:class:`RemoteLease`, waited for), so two
    commands publishing it at once leave one output whole, never a mix of both.
    ``before_commit`` is called once it is this upload's turn, before anything is put:
    an exception it raises leaves ``dest`` as it was.
    """
    names = list_files(local)
    last = [n for n in last if n in names]
    first = [n for n in names if n not in last]
    with output_lock(dest, param="out", wait=True) as lease:  # one upload at a time
        if before_commit is not None:
            before_commit()
        old = remote_marker(dest)
        old_files = set(old["files"]) - {MARKER} if old else set()
        pending = {
            "written_by": "roidask",
            "kind": (old or {}).get("kind") or _local_kind(local),
            "complete": False,
            "files": sorted(old_files | (set(names) - {MARKER})),
        }
        with uploading(dest):
            (dest / MARKER).write_text(json.dumps(pending, indent=2) + "\n")
            if old_files:  # before any new object: a kill from here on leaves no mix
                delete_prefix_keys(dest, _metadata_first(old_files))
            etags = put_files(local, dest, [n for n in first if not _is_zarr_metadata(n)])
            for level in _metadata_levels(first):
                etags.update(put_files(local, dest, level))
            if MARKER in last:
                _record_etags(local / MARKER, etags)
            lease.check()
            put_files(local, dest, last)
    return dest


def _record_etags(marker: Path, etags: dict[str, str | None]) -> None:
    """Write into a local folder's marker, before it is put, the ETags its files' PUTs
    returned (``etag``), instead of their modification times (``mtime_ns``: the local
    copy's, which an object has not)."""
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(record, dict) or not isinstance(record.get("bytes"), dict):
        return  # not roidask's marker of a folder's files
    record.pop("mtime_ns", None)
    record["etag"] = {n: e for n, e in etags.items() if n in record["bytes"] and e is not None}
    marker.write_text(json.dumps(record, indent=2) + "\n")


@contextlib.contextmanager
def local_scratch(name: str) -> Iterator[Path]:
    """A new folder in the system's temporary folder (``$TMPDIR``) for a local copy of what
    goes to object storage (a converted subject, an output folder), removed after.

    Locked while in use (:func:`roidask._atomic.create_locked`): those a killed command
    left (unlocked) are removed by the next command that makes one of the same ``name``
    (:func:`roidask._atomic.clean_stale`), never those of a command still running.
    """
    anchor = Path(tempfile.gettempdir()) / f"roidask-{name}"
    clean_stale(anchor)
    tmp, fd = create_locked(anchor, folder=True, mode=0o700)  # private, as tempfile's
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


@contextlib.contextmanager
def output_folder(out, *, kind: str) -> Iterator[Path]:
    """:class:`roidask._atomic.OutputFolder` for a local folder or an ``s3://`` prefix.

    Yields the local folder to fill; on success a local ``out`` is swapped into place,
    an ``s3://`` one is built in a local temporary folder and published
    (:func:`publish_folder`). Check ``out`` first (:func:`check_output`).
    """
    loc = as_location(out)
    if isinstance(loc, Path):
        with OutputFolder(loc, kind=kind) as tmp:
            yield tmp
        return
    with local_scratch("out") as tmp:
        local = tmp / (loc.name or "out")
        with OutputFolder(local, kind=kind) as build:
            yield build
        publish_folder(local, loc, before_commit=lambda: check_again_remote(loc, kind=kind))


def check_again_remote(out: S3Path, *, kind: str, overwrite: bool = True) -> None:
    """An ``s3://`` output checked again as its upload commits (it holds the prefix's
    lease): objects put there meanwhile, or an output another command completed, are
    never replaced (:func:`check_remote_destination`, no probe)."""
    with checked_again():
        check_remote_destination(out, param="out", overwrite=overwrite, kind=kind, probe=False)


def put_if_absent(location: S3Path, data: bytes) -> bool:
    """Put an object only if none is there (a conditional PUT: of two commands putting it
    at once, one does).

    Parameters
    ----------
    location : S3Path
    data : bytes

    Returns
    -------
    bool
        Whether this call created it (False: an object was there).

    Raises
    ------
    OutputError, ObjectStoreError
        The request failed (one line, as :func:`s3_error`).
    """
    try:
        obstore.put(_store(location.bucket), location.key, data, mode="create")
    except (obs_errors.AlreadyExistsError, obs_errors.PreconditionError):
        return False
    except Exception as exc:
        raise s3_error(exc, location, error=OutputError) from None
    return True


def write_file(location, data: bytes) -> None:
    """Write a whole file atomically: a local temporary sibling renamed, or one PUT."""
    loc = as_location(location)
    if isinstance(loc, S3Path):
        loc.write_bytes(data)
    else:
        write_local_bytes(loc, data)


def remove_files(folder, names: Iterable[str], *, prune: bool = False) -> None:
    """Remove ``folder/name`` for each name (files roidask listed as its own); with
    ``prune``, then the local folder if no file is left in it."""
    loc = as_location(folder)
    names = list(names)
    if isinstance(loc, S3Path):
        delete_prefix_keys(loc, names)
        return
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (loc / name).unlink()
    if prune and loc.is_dir() and not list_files(loc):
        shutil.rmtree(loc, ignore_errors=True)


def _local_kind(local: Path) -> str | None:
    try:
        return json.loads((local / MARKER).read_text()).get("kind")
    except (OSError, ValueError):
        return None
