"""Provenance of a run: what was read (with checksums), with what, where and when."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import resource
import socket
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from roidask.io.locations import is_remote, object_record

__all__ = [
    "CORE_LIBRARIES",
    "file_sha256",
    "input_paths",
    "input_records",
    "library_versions",
    "peak_rss_bytes",
    "provenance_record",
    "start_input_records",
    "utc_now",
]

#: Libraries whose versions decide roidask's numbers, recorded in every provenance.
CORE_LIBRARIES = (
    "roidask",
    "numpy",
    "scipy",
    "dask",
    "distributed",
    "xarray",
    "zarr",
    "nibabel",
    "pandas",
)


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (``2026-11-28T02:33:38+00:00``)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`CORE_LIBRARIES` (``"missing"`` when not installed)."""
    out = {}
    for name in CORE_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def file_sha256(path: str | os.PathLike, *, block_bytes: int = 4 * 2**20) -> str:
    """SHA-256 of a file (hex); for a directory (zarr store), of its sorted file tree."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(block_bytes):
                digest.update(block)
    return digest.hexdigest()


def input_records(paths) -> list[dict]:
    """Path, size and SHA-256 of each input file (an ``s3://`` object: its size and ETag,
    :func:`roidask.io.locations.object_record`, read from the listing, not the data)."""
    out = []
    for p in paths:
        if is_remote(p):
            out.append(object_record(p))
            continue
        p = Path(p)
        size = (
            sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            if p.is_dir()
            else p.stat().st_size
        )
        out.append({"path": str(p.resolve()), "bytes": int(size), "sha256": file_sha256(p)})
    return out


def input_paths(*, bold, labels, store, mask) -> list:
    """The files a run reads: a store and the mask, or the BOLD runs, labels and mask."""
    if store is not None:
        return [store, mask]
    return [*(bold or []), *(labels or []), mask]


def start_input_records(paths) -> Future:
    """:func:`input_records` of ``paths``, computed in a background thread.

    Hashing releases the GIL, so it overlaps with the imports and the pipeline;
    the writer waits for it. An unreadable file is reported by the run's own
    validation, not by this future.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="roidask-hash")
    try:
        return pool.submit(input_records, list(paths))
    finally:
        pool.shutdown(wait=False)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (bytes)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def provenance_record(
    *,
    started_utc: str,
    parameters: dict,
    inputs: list[dict] | Future | None,
    outputs: list[str],
    timings_s: dict,
    extra: dict | None = None,
) -> dict:
    """The ``provenance.json`` of a run.

    Holds the UTC start time, the command line, the versions of roidask and of
    its core libraries, the host, the parameters, the inputs with their
    checksums, the outputs, the timings and the peak memory, plus ``extra``
    fields (scheduler, chunks, ...).
    """
    versions = library_versions()
    return {
        "roidask_version": versions["roidask"],
        "started_utc": started_utc,
        "finished_utc": utc_now(),
        "command_line": list(sys.argv),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "libraries": versions,
        "parameters": parameters,
        "inputs": (inputs.result() if isinstance(inputs, Future) else inputs) or [],
        "timings_s": {k: round(v, 3) for k, v in timings_s.items()},
        "peak_rss_bytes": peak_rss_bytes(),
        "outputs": sorted(outputs),
        **(extra or {}),
    }
