"""The study store: every subject's results in one zarr store that plain xarray opens.

Layout of ``OUT/study.zarr`` (written by ``roidask batch``)::

    study.zarr/             zarr v3 group, attrs {"roidask_study": STUDY_FORMAT}
      zarr.json             root metadata; its consolidated metadata lists the
                            *published* nodes only
      sub-<id>/             one node per subject: the Dataset of results.zarr
                            (:func:`roidask.pipeline.results_dataset`), attrs
                            ``roidask_complete``, ``roidask_fingerprint``, ``subject``
      group/                the second level: t and -log10 p maps of a one-sample
                            t-test of the subjects' t maps, the ROI overlap

``xr.open_datatree(OUT / "study.zarr", engine="zarr")`` reads the consolidated
metadata, so it sees the published nodes and nothing else.

Crash safety (plain zarr v3; why not Icechunk: ``BENCHMARKS.md``, "Study store"):

* a node is written by the process that writes the subject's output folder, as
  files of its own prefix: every array first, the node's ``zarr.json`` (with
  ``roidask_complete`` and the fingerprint) last (:func:`write_node`); the files
  of the study root are never touched by it, so concurrent subjects cannot
  corrupt each other;
* only the batch driver publishes: it rewrites the root ``zarr.json`` (atomically:
  temporary file renamed over it) to list the node once it is complete
  (:func:`publish`), and drops a node from it before the node is rewritten
  (:func:`unpublish`); :class:`Study` serialises the driver's threads;
* a node half written by a killed process is invisible (not published) and is
  rewritten by the rerun; the batch skips a subject whose node is complete with
  the same fingerprint (:meth:`Study.has`) and whose output folder is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from roidask._atomic import (
    FolderLock,
    atomic_file,
    clean_stale,
    create_locked,
    rename_no_replace,
)
from roidask._pool import thread_pool
from roidask.exceptions import OutputError, StoreError, StudyNodeWarning
from roidask.io.locations import (
    Location,
    PathOrURL,
    S3Path,
    as_location,
    list_files,
    remove_files,
    stored_where,
    write_file,
    zarr_store,
)
from roidask.io.store_read import (
    CHUNK_GRIDS_ATTR,
    COMPLETE_ATTR,
    STUDY_ATTR,
    DamagedChunk,
    foreign_files,
    ignore_consolidated_warning,
    shown,
    verify_groups,
)
from roidask.io.store_write import dataset_zarr_files
from roidask.outputs.provenance import utc_now
from roidask.pipeline import PipelineResult

__all__ = [
    "FINGERPRINT_ATTR",
    "GROUP_NODE",
    "STUDY_ATTR",
    "STUDY_FORMAT",
    "STUDY_NAME",
    "Study",
    "SubjectNode",
    "check_node_writable",
    "check_nodes",
    "check_nodes_writable",
    "check_study",
    "edited_in_root",
    "node_attrs",
    "open_study",
    "prepare_study",
    "publish",
    "publish_many",
    "published",
    "unpublish",
    "verify_study",
    "write_node",
    "write_node_files",
]

# The root attribute marking a study store, STUDY_ATTR ("roidask_study", its value the format),
# is defined with the other stores' markers in roidask.io.store_read.
#: Format written by this version.
STUDY_FORMAT = 1
#: Node attribute: the fingerprint (parameters and input checksums) of a subject's results.
FINGERPRINT_ATTR = "roidask_fingerprint"
#: Node attribute: the SHA-256 of the node's ``zarr.json`` without it (an edit is seen).
DIGEST_ATTR = "roidask_metadata_sha256"
#: Name of the study store in a batch folder, and of its second-level node.
STUDY_NAME = "study.zarr"
GROUP_NODE = "group"
_META = "zarr.json"
_EMPTY_CONSOLIDATED = {"kind": "inline", "must_understand": False, "metadata": {}}


# -- the root ----------------------------------------------------------------------------------
def _without_arrays(pairs: list[tuple[str, Any]]) -> dict | None:
    """``json.loads`` hook: an array's metadata becomes None as soon as it is parsed."""
    for key, value in pairs:
        if key == "node_type" and value == "array":
            return None
    return dict(pairs)


def _read_json(path: Location, what: str, *, arrays: bool = True) -> dict:
    try:
        hook = None if arrays else _without_arrays
        record = json.loads(path.read_text(), object_pairs_hook=hook)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{path}: cannot read the {what} metadata ({exc})") from None
    if not isinstance(record, dict) or record.get("zarr_format") != 3:
        raise StoreError(f"{path}: not zarr v3 {what} metadata")
    return record


def _read_root(study: Location, *, param: str = "study", arrays: bool = True) -> dict:
    """The root ``zarr.json``, checked; ``arrays=False``: the arrays' metadata as None
    (the root of a study of thousands of subjects is mostly theirs: ~19 of every 20 KB)."""
    meta = study / _META
    if not meta.is_file():
        raise StoreError(f"{param} {study}: not a roidask study store (no zarr.json)", param=param)
    record = _read_json(meta, "root", arrays=arrays)
    attrs = record.get("attributes") or {}
    if STUDY_ATTR not in attrs:
        raise StoreError(
            f"{param} {study}: a zarr group but not a roidask study store (no attribute "
            f"{STUDY_ATTR!r})",
            param=param,
        )
    if attrs[STUDY_ATTR] != STUDY_FORMAT:
        raise StoreError(
            f"{param} {study}: study store format {attrs[STUDY_ATTR]!r}; this roidask reads "
            f"format {STUDY_FORMAT}",
            param=param,
        )
    consolidated = record.get("consolidated_metadata") or dict(_EMPTY_CONSOLIDATED)
    consolidated.setdefault("metadata", {})
    record["consolidated_metadata"] = consolidated
    return record


def _write_root(study: Location, record: dict) -> None:
    """Replace the root ``zarr.json`` in one rename (readers see the old or the new one)."""
    write_file(study / _META, json.dumps(record, separators=(",", ":")).encode())


def prepare_study(study: PathOrURL, *, param: str = "study") -> Location:
    """Create a study store, or check that an existing ``study`` is one (reads no data).

    Raises
    ------
    OutputError
        ``study`` exists and is not a roidask study store (roidask never writes in it).
    """
    path = as_location(study)
    if isinstance(path, Path):
        clean_stale(path / _META)
        clean_stale(path)
    if path.exists():
        return check_study(path, param=param)
    root = {
        "attributes": {
            STUDY_ATTR: STUDY_FORMAT,
            "title": "roidask study: one node per subject, and the group level",
            "created_utc": utc_now(),
        },
        "zarr_format": 3,
        "consolidated_metadata": dict(_EMPTY_CONSOLIDATED),
        "node_type": "group",
    }
    if not isinstance(path, Path):
        _write_root(path, root)  # one PUT: the store appears whole
        return path
    # a local store appears whole too (a folder with its zarr.json, renamed into place):
    # a run killed while creating it leaves a temporary sibling, never a folder that
    # the next run would refuse as "not a roidask study store"
    try:
        tmp, fd = create_locked(path, folder=True)
    except OSError as exc:
        raise OutputError(f"{param} {path}: cannot create it ({exc.strerror or exc})") from None
    try:
        _write_root(tmp, root)
        rename_no_replace(tmp, path)
    except FileExistsError:  # created by another process meanwhile
        return check_study(path, param=param)
    except OSError as exc:
        raise OutputError(f"{param} {path}: cannot create it ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def check_study(study: PathOrURL, *, param: str = "study") -> Location:
    """Check that an existing ``study`` is a readable roidask study store (its root only).

    Raises
    ------
    OutputError
        It is not a roidask study store (roidask never writes in it), or it is one whose
        root metadata is damaged (the message says what to do).
    """
    path = as_location(study)
    try:
        _read_root(path, param=param, arrays=False)
    except StoreError as exc:
        damaged = "cannot read the root metadata" in str(exc) and any(
            node_attrs(path, child.name) is not None for child in _children(path)
        )
        advice = (
            f"it is a damaged roidask study store: remove {path} and run the batch again "
            "(its subjects are run again)"
            if damaged
            else "roidask writes its study store only in a new folder or its own"
        )
        raise OutputError(f"{exc}; {advice}", param=param) from None
    return path


def _children(study: Location) -> list[Location]:
    """The folders (or prefixes) directly below a study store's root, the first 1000 by name
    (every file is listed: only for a store whose root cannot be read)."""
    names = sorted({key.split("/", 1)[0] for key in list_files(study) if "/" in key})
    return [study / name for name in names[:1000]]


def published(study: PathOrURL) -> list[str]:
    """Names of the published nodes (what ``xr.open_datatree`` shows), sorted."""
    metadata = _read_root(as_location(study), arrays=False)["consolidated_metadata"]["metadata"]
    return sorted(k for k in metadata if "/" not in k)


# -- nodes -------------------------------------------------------------------------------------
def node_attrs(study: PathOrURL, name: str) -> dict | None:
    """Attributes of node ``name`` as written on disk (None: no complete node there)."""
    meta = as_location(study) / name / _META
    try:
        record = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    attrs = record.get("attributes") if isinstance(record, dict) else None
    if not isinstance(attrs, dict) or attrs.get(COMPLETE_ATTR) is not True:
        return None
    return attrs


def _digest(record: dict) -> str:
    """The SHA-256 of a node's ``zarr.json`` record without its own digest attribute."""
    attrs = {k: v for k, v in (record.get("attributes") or {}).items() if k != DIGEST_ATTR}
    canonical = json.dumps({**record, "attributes": attrs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _node_record(node: Location) -> dict | None:
    """A node's ``zarr.json`` as written (None: absent or unreadable)."""
    try:
        record = json.loads((node / _META).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_node_writable(node: Location, files: Iterable[str] | None = None) -> bool:
    """Check that a node of a study store may be (re)written: absent (False), or holding
    only what roidask wrote there (True): its ``zarr.json`` as roidask wrote it (its digest),
    and the arrays of the chunk inventory it records with their chunks.

    ``files``: the node's files (relative paths) if already listed.

    Raises
    ------
    OutputError
        ``node`` is a file; or holds anything else (a user's file, array, group or
        attribute), or files without a ``zarr.json`` that proves them roidask's.
    """
    if files is None:
        if not node.exists():
            return False
        if not node.is_dir():
            raise OutputError(f"study node {node}: is a file; roidask only replaces its own nodes")
        if isinstance(node, Path):
            clean_stale(node / _META)  # a killed writer's temporary metadata
        files = list_files(node)
    files = list(files)
    if not files:
        return node.exists()
    record = _node_record(node)
    if record is None:
        raise OutputError(
            f"study node {node}: holds {len(files)} file(s) but no zarr.json of roidask's, so "
            f"nothing proves they are roidask's ({shown(files)}); move the folder away "
            "(the batch then writes the node again)"
        )
    attrs = record.get("attributes") or {}
    if DIGEST_ATTR in attrs and attrs[DIGEST_ATTR] != _digest(record):
        raise OutputError(
            f"study node {node}: its zarr.json was changed since roidask wrote it (an "
            "attribute added or edited?); roidask does not delete it, move the node away"
        )
    grids = attrs.get(CHUNK_GRIDS_ATTR)
    foreign = foreign_files(files, grids if isinstance(grids, dict) else {})
    if foreign:
        raise OutputError(
            f"study node {node}: holds files roidask did not write ({shown(foreign)}); "
            "roidask does not delete them, move them away"
        )
    if isinstance(node, Path):  # an array's attributes edited (a read each: local only)
        recorded = (record.get("consolidated_metadata") or {}).get("metadata") or {}
        # a write killed midway (the node not complete) leaves arrays' zarr.json absent or
        # cut short: its own, replaced by the rerun; a complete node's are a user's edit
        killed = not attrs.get(COMPLETE_ATTR)
        edited = []
        for name in sorted(grids if isinstance(grids, dict) else {}):
            if name not in recorded:
                continue
            found = _json_or_none(node / name / _META)
            if found != recorded[name] and not (killed and found is None):
                edited.append(f"{name}/zarr.json")
        if edited:
            raise OutputError(
                f"study node {node}: {shown(edited)} changed since roidask wrote it (an "
                "attribute added or edited?); roidask does not delete it, move the node away"
            )
    return True


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_nodes_writable(study: PathOrURL, names: Iterable[str]) -> None:
    """:func:`check_node_writable` for the nodes ``names`` of a study store (up front, before
    a batch writes anything); an ``s3://`` store is listed once for all of them."""
    path = as_location(study)
    if isinstance(path, Path):
        for name in names:
            check_node_writable(path / name)
        return
    files: dict[str, list[str]] = {}
    for key in list_files(path):
        node, sep, rest = key.partition("/")
        files.setdefault(node, []).append(rest if sep else "")
    for name in names:
        if "" in files.get(name, ()):
            raise OutputError(
                f"study node {path / name}: is a file; roidask only replaces its own nodes"
            )
        if name in files:
            check_node_writable(path / name, files[name])


def _clear_node(node: Path | S3Path) -> None:
    """Remove a previous version of a node (unpublished): its completion first, then its
    arrays, its ``zarr.json`` last (which proves the files left are roidask's)."""
    if not check_node_writable(node):
        return
    record = _node_record(node)
    if record is not None and (record.get("attributes") or {}).get(COMPLETE_ATTR):
        _write_node_json(node, record, complete=False)  # from here on it reads incomplete
    remove_files(node, [f for f in list_files(node) if f != _META])
    remove_files(node, [_META], prune=True)


def _write_node_json(node: Location, record: dict, *, complete: bool) -> None:
    """Write a node's ``zarr.json`` (complete or not) with its digest."""
    attrs = {k: v for k, v in (record.get("attributes") or {}).items() if k != COMPLETE_ATTR}
    if complete:
        attrs[COMPLETE_ATTR] = True
    attrs.pop(DIGEST_ATTR, None)
    record = {**record, "attributes": attrs}
    attrs[DIGEST_ATTR] = _digest(record)
    write_file(node / _META, json.dumps(record, indent=2).encode())


def write_node(
    study: PathOrURL, name: str, ds: xr.Dataset, *, attrs: dict | None = None
) -> Location:
    """Write ``ds`` as node ``name`` of a study store: arrays first, ``zarr.json`` last.

    The node is not published (see :func:`publish`): call this only for a node the
    driver has unpublished (or never published). A previous version is removed
    first. The node's ``zarr.json`` holds the node's consolidated metadata, the
    chunk inventory and ``attrs`` (e.g. the fingerprint), and
    ``roidask_complete: true``; it is written atomically, after every chunk.

    Returns
    -------
    Path
        The node's folder.
    """
    return write_node_files(study, name, dataset_zarr_files(ds), attrs=attrs)


def write_node_files(
    study: PathOrURL, name: str, files: Mapping[str, bytes], *, attrs: dict | None = None
) -> Location:
    """:func:`write_node` from the Dataset's encoded files (:func:`dataset_zarr_files`)."""
    study = as_location(study)
    node = study / name
    files = dict(files)
    group = json.loads(files.pop(_META))
    # the chunk inventory is in the attributes already (dataset_zarr_files)
    group["attributes"].update(attrs or {})
    _clear_node(node)
    if isinstance(node, Path):
        node.mkdir(parents=True, exist_ok=True)
    # first the node's metadata, not complete: it lists the arrays to come, so the files of
    # a write killed midway are known to be roidask's (and the node reads incomplete)
    _write_node_json(node, group, complete=False)
    if isinstance(node, S3Path):  # one PUT per object, concurrently
        with thread_pool(8, "roidask-put") as pool:
            for done in [pool.submit(write_file, node / k, d) for k, d in files.items()]:
                done.result()
    else:
        for key, data in files.items():
            target = node / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    _write_node_json(node, group, complete=True)
    return node


# -- publishing (the batch driver only) --------------------------------------------------------
def _node_entries(study: Location, name: str, fingerprint: str | None) -> dict[str, dict]:
    """Root consolidated-metadata entries of a complete node (its own ``zarr.json``).

    Raises StoreError if the node is not complete (no ``zarr.json``, not marked
    complete, damaged) or has another fingerprint; an OSError if its metadata could
    not be read (which says nothing about the node).
    """
    node_json = study / name / _META
    node: Any = {}
    try:
        node = json.loads(node_json.read_text())
    except FileNotFoundError:
        pass
    except ValueError as exc:  # UnicodeDecodeError included
        raise StoreError(f"study {study}: node {name!r} has damaged metadata ({exc})") from None
    if not isinstance(node, dict) or (node and node.get("zarr_format") != 3):
        raise StoreError(f"study {study}: node {name!r}: not zarr v3 metadata")
    attrs = node.get("attributes") or {}
    if attrs.get(COMPLETE_ATTR) is not True:
        raise StoreError(f"study {study}: node {name!r} is not complete; it cannot be published")
    if fingerprint is not None and attrs.get(FINGERPRINT_ATTR) != fingerprint:
        raise StoreError(
            f"study {study}: node {name!r} has fingerprint {attrs.get(FINGERPRINT_ATTR)!r}, "
            f"expected {fingerprint!r}"
        )
    children = node.pop("consolidated_metadata", {}).get("metadata", {})
    entries = {name: {**node, "consolidated_metadata": dict(_EMPTY_CONSOLIDATED)}}
    for key, meta in sorted(children.items()):
        if meta.get("node_type") == "group":
            meta = {**meta, "consolidated_metadata": dict(_EMPTY_CONSOLIDATED)}
        entries[f"{name}/{key}"] = meta
    return entries


#: Nodes whose metadata is read at once from object storage (a window, in order).
_S3_READ_WINDOW = 16


def _entries_in_order(
    study: Location, nodes: dict[str, str | None]
) -> Iterator[tuple[str, dict | Exception]]:
    """``(name, entries or the exception)`` for each node, in name order; from S3 a
    window of nodes is read concurrently (a GET each), from disk one after another."""
    names = sorted(nodes)

    def entries(name: str) -> dict | Exception:
        try:
            return _node_entries(study, name, nodes[name])
        except (StoreError, OSError) as exc:
            return exc

    if not isinstance(study, S3Path):
        yield from ((name, entries(name)) for name in names)
        return
    with thread_pool(_S3_READ_WINDOW, "roidask-get") as pool:
        window: deque = deque()
        for name in names:
            window.append((name, pool.submit(entries, name)))
            if len(window) >= _S3_READ_WINDOW:
                first, done = window.popleft()
                yield first, done.result()
        while window:
            first, done = window.popleft()
            yield first, done.result()


def _root_fragments(
    study: Location,
    attributes: dict,
    listed: Iterable[str],
    pending: dict[str, str | None],
    errors: dict,
) -> Iterator[bytes]:
    """The root ``zarr.json`` listing the ``listed`` nodes and the ``pending`` ones.

    Each node's entries are rebuilt from its own ``zarr.json`` (not kept from the
    previous root), so rewriting the root of a study of thousands of subjects holds
    one node's metadata in memory, not all of them. A pending node that cannot be
    listed (not complete, another fingerprint, unreadable) is left out, its error put
    in ``errors``; so is a listed node that is no longer complete. A listed node whose
    metadata cannot be read raises the OSError: the root must not lose it.
    """
    nodes: dict[str, str | None] = {**dict.fromkeys(listed), **pending}
    head = {"attributes": attributes, "zarr_format": 3, "node_type": "group"}
    yield json.dumps(head, separators=(",", ":"))[:-1].encode()
    yield b',"consolidated_metadata":{"kind":"inline","must_understand":false,"metadata":{'
    first = True
    for name, entries in _entries_in_order(study, nodes):
        if isinstance(entries, Exception):
            if name not in pending and not isinstance(entries, StoreError):
                raise entries
            errors[name] = entries
            continue
        for key, meta in entries.items():
            member = json.dumps({key: meta}, separators=(",", ":"))[1:-1]  # "key":{...}
            yield (member if first else "," + member).encode()
            first = False
    yield b"}}}"


def _rewrite_root(
    study: Location,
    attributes: dict,
    listed: Iterable[str],
    pending: dict[str, str | None] | None = None,
) -> dict[str, Exception]:
    """Replace the root ``zarr.json`` (atomically) by one that lists the ``listed`` nodes
    and the ``pending`` ones (name -> expected fingerprint, None: any).

    Returns the nodes left out and why. Raises (the root left as it was) if a listed
    node's metadata cannot be read.
    """
    errors: dict[str, Exception] = {}
    fragments = _root_fragments(study, attributes, listed, pending or {}, errors)
    if isinstance(study, S3Path):  # one PUT
        write_file(study / _META, b"".join(fragments))
    else:  # streamed into a temporary sibling, renamed over the root
        with atomic_file(study / _META) as tmp, tmp.open("wb") as out:
            for fragment in fragments:
                out.write(fragment)
    for name, exc in errors.items():
        if pending is None or name not in pending:
            warnings.warn(f"{exc}; it is no longer listed", StudyNodeWarning, stacklevel=3)
    return errors


def _root_state(study: Location) -> tuple[dict, dict[str, dict]]:
    """The root's attributes, and the nodes it lists with their attributes."""
    root = _read_root(study, arrays=False)
    metadata = root["consolidated_metadata"]["metadata"]
    listed = {k: dict(v.get("attributes") or {}) for k, v in metadata.items() if "/" not in k}
    return root["attributes"], listed


def publish_many(study: PathOrURL, nodes: dict[str, str | None]) -> dict[str, StoreError]:
    """Make several nodes visible in one rewrite of the root ``zarr.json``.

    ``nodes`` maps each node's name to its expected fingerprint (None: any).
    The root is rewritten once, atomically, from the nodes' own ``zarr.json``
    (:func:`_rewrite_root`): one rewrite per batch of nodes (not per node) keeps a
    study of many subjects cheap to publish. One process (the batch driver)
    publishes; concurrent publishers would lose each other's updates.

    Returns
    -------
    dict
        The nodes not published (not complete, or another fingerprint) and why.
    """
    study = as_location(study)
    attributes, listed = _root_state(study)
    errors: dict[str, StoreError] = {}
    # checked first: a node that fails stays as the root lists it (published or not)
    for name, fingerprint in nodes.items():
        try:
            _node_entries(study, name, fingerprint)
        except StoreError as exc:
            errors[name] = exc
    ready = {k: v for k, v in nodes.items() if k not in errors}
    if ready:
        failed = _rewrite_root(study, attributes, set(listed) - set(ready), ready)
        for name, problem in failed.items():
            if name in nodes:
                errors[name] = (
                    problem if isinstance(problem, StoreError) else StoreError(str(problem))
                )
    return {k: errors[k] for k in nodes if k in errors}


def publish(study: PathOrURL, name: str, *, fingerprint: str | None = None) -> None:
    """Make node ``name`` visible: list it in the root's consolidated metadata.

    See :func:`publish_many`.

    Raises
    ------
    StoreError
        The node is not complete, or its fingerprint is not ``fingerprint``.
    """
    errors = publish_many(study, {name: fingerprint})
    if errors:
        raise errors[name]


def unpublish(study: PathOrURL, name: str) -> bool:
    """Hide node ``name`` (before it is rewritten); True if it was published."""
    study = as_location(study)
    attributes, listed = _root_state(study)
    if name not in listed:
        return False
    _rewrite_root(study, attributes, [n for n in listed if n != name])
    return True


@dataclass(frozen=True)
class SubjectNode:
    """Where and how a subject's results go in a study store (picklable: sent to a worker).

    :func:`roidask.runner.run_subject` calls :meth:`write` once the subject's output
    folder is written; the driver publishes the node afterwards.
    """

    study: Location
    name: str
    subject: str
    fingerprint: str

    def write(self, result: PipelineResult) -> Location:
        """Write the node from the subject's results (:meth:`PipelineResult.to_dataset`)."""
        attrs = {"subject": self.subject, FINGERPRINT_ATTR: self.fingerprint}
        return write_node_files(self.study, self.name, result.zarr_files(), attrs=attrs)


class Study:
    """The batch driver's handle on a study store: checks, publishes, unpublishes.

    Thread-safe: the driver's subject threads share one instance, and every
    rewrite of the root ``zarr.json`` holds its lock. Subjects finishing one after
    the other are published in groups (:meth:`publish_later`, :meth:`flush`), and the
    nodes a rerun must rewrite are hidden in groups (:meth:`unpublish_later`): the
    root holds every published node's metadata, so rewriting it for each of
    thousands of subjects would cost time quadratic in their number.

    The ``group`` node describes the published subjects: a rewrite of the root that
    lists a new subject node or hides one hides it too, until the group level is
    written again (:meth:`write_group`), so a batch killed in between never leaves a
    group level of other subjects, or other parameters, beside them.

    One handle per local store at a time, across processes: opening a store that
    another process has open raises :class:`~roidask.exceptions.OutputError`
    (:class:`~roidask._atomic.FolderLock`; :meth:`close`, or ``with Study(...)``,
    lets the next one in). On object storage the batch writing the store holds its folder's
    lease (:class:`~roidask.io.locations.RemoteLease`).
    """

    #: Least time (s) between two rewrites of the root by :meth:`flush` (unless forced).
    interval_s = 0.5

    def __init__(self, path: PathOrURL, *, param: str = "study"):
        self.path = prepare_study(path, param=param)
        # one driver at a time: another batch or group level on this store is refused
        self._folder_lock = (
            FolderLock(self.path, param=param) if isinstance(self.path, Path) else None
        )
        self._lock = threading.Lock()
        # the listed nodes' attributes when this handle opened (what earlier runs published)
        try:
            self._attributes, self._opened = _root_state(self.path)
        except BaseException:
            self.close()
            raise
        self._listed = set(self._opened)  # this driver's view of the root
        self._pending: dict[str, str | None] = {}
        self._hiding: set[str] = set()  # listed nodes to hide at the next flush
        self._last = 0.0  # time.monotonic() of the last rewrite
        self._cost_s = 0.0  # how long the last rewrite took

    def close(self) -> None:
        """Let another driver open the store (releases :class:`~roidask._atomic.FolderLock`)."""
        if self._folder_lock is not None:
            self._folder_lock.release()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, name: str, fingerprint: str) -> bool:
        """Node ``name`` is complete on disk with ``fingerprint``."""
        attrs = node_attrs(self.path, name)
        return attrs is not None and attrs.get(FINGERPRINT_ATTR) == fingerprint

    def attrs_when_opened(self, name: str) -> dict | None:
        """Attributes of node ``name`` as the root listed them when this handle opened
        (None: not listed then); read from the root, not from the node."""
        return self._opened.get(name)

    def listed(self) -> list[str]:
        """The nodes the root lists (or will at the next :meth:`flush`), sorted."""
        with self._lock:
            return sorted((self._listed - self._hiding) | set(self._pending))

    def is_published(self, name: str) -> bool:
        """Node ``name`` is listed in the root (or will be at the next :meth:`flush`)."""
        with self._lock:
            return name in self._listed or name in self._pending

    def node(self, name: str, *, subject: str, fingerprint: str) -> SubjectNode:
        """The node a subject's run writes (after :meth:`unpublish`)."""
        return SubjectNode(self.path, name, subject, fingerprint)

    def publish(self, name: str, *, fingerprint: str | None = None) -> None:
        """Publish node ``name`` now (and anything pending); StoreError if it cannot be."""
        self.publish_later(name, fingerprint=fingerprint)
        errors = self.flush(force=True)
        if name in errors:
            raise errors[name]

    def publish_later(self, name: str, *, fingerprint: str | None = None) -> None:
        """Publish node ``name`` at the next :meth:`flush`."""
        with self._lock:
            self._hiding.discard(name)
            self._pending[name] = fingerprint

    def unpublish_later(self, name: str) -> None:
        """Hide node ``name`` at the next :meth:`flush` (it stays listed until then).

        For a rerun whose parameters changed, where every subject's node must be
        hidden before it is rewritten: hidden in groups, as finished subjects are
        published, rather than with a rewrite of the root each (quadratic).
        """
        with self._lock:
            self._pending.pop(name, None)
            if name in self._listed:
                self._hiding.add(name)

    def cancel_unpublish(self, name: str) -> None:
        """Keep node ``name`` listed after all (an :meth:`unpublish_later` not yet done)."""
        with self._lock:
            self._hiding.discard(name)

    def flush(self, *, force: bool = False, final: bool | None = None) -> dict[str, Exception]:
        """Publish the pending nodes and hide those to hide, in one rewrite of the root:
        if ``force``, or once :attr:`interval_s` (and ten times the last rewrite's duration,
        so that rewriting stays a small share of the time) has passed since the last
        rewrite.

        If the root cannot be rewritten it is left as it was, and the nodes wait for a
        later flush, unless this one is ``final`` (by default: if forced).

        Returns
        -------
        dict
            The nodes that could not be published (not complete, another fingerprint),
            or, if ``final``, published or hidden, and why.
        """
        final = force if final is None else final
        with self._lock:
            wait = max(self.interval_s, 10 * self._cost_s)
            to_do = self._pending or self._hiding
            if not to_do or (not force and time.monotonic() - self._last < wait):
                return {}
            pending, self._pending = self._pending, {}
            hiding, self._hiding = self._hiding, set()
            kept = self._listed - set(pending) - hiding - self._stale_group(pending, hiding)
            start = time.perf_counter()
            errors: dict[str, Exception]
            try:
                errors = _rewrite_root(self.path, self._attributes, kept, pending)
            except BaseException as exc:  # the root left as it was
                if final and isinstance(exc, (StoreError, OSError)):
                    errors = dict.fromkeys([*pending, *hiding], exc)
                else:  # done at a later flush (interrupted: nothing forgotten)
                    self._pending = {**pending, **self._pending}
                    self._hiding |= hiding
                    if not isinstance(exc, (StoreError, OSError)):
                        raise
                    errors = {}
            else:
                self._listed = (kept | set(pending)) - set(errors)
                dropped = set(errors) - set(pending) - hiding - {GROUP_NODE}
                if dropped and GROUP_NODE in self._listed:  # a subject gone: at the next one
                    self._hiding.add(GROUP_NODE)
            self._cost_s = time.perf_counter() - start
            self._last = time.monotonic()
            return {k: v for k, v in errors.items() if k in pending or k in hiding}

    def _stale_group(self, pending: Mapping[str, str | None], hiding: Iterable[str]) -> set[str]:
        """``{"group"}`` if listing ``pending`` and hiding ``hiding`` changes the published
        subjects (a subject listed anew or hidden) and the group node is not rewritten."""
        changed = (set(pending) - self._listed) | set(hiding)
        if GROUP_NODE in pending or not changed - {GROUP_NODE}:
            return set()
        return {GROUP_NODE}

    def unpublish(self, name: str) -> bool:
        """Hide node ``name`` now (before it is rewritten); True if it was published."""
        with self._lock:
            self._pending.pop(name, None)
            self._hiding.discard(name)
            if name not in self._listed:
                return False
            others = self._listed - {name} - self._stale_group({}, {name})
            dropped = _rewrite_root(self.path, self._attributes, others)  # raises: still listed
            self._listed = others - set(dropped)
            return True

    def write_group(self, ds: xr.Dataset, *, attrs: dict | None = None) -> None:
        """Replace the second-level node (unpublish, write, publish)."""
        self.unpublish(GROUP_NODE)
        write_node(self.path, GROUP_NODE, ds, attrs=attrs)
        self.publish(GROUP_NODE)


# -- reading -----------------------------------------------------------------------------------
def open_study(study: PathOrURL) -> xr.DataTree:
    """The published nodes as a lazy DataTree (plain ``xr.open_datatree`` does the same)."""
    path = as_location(study)
    _read_root(path, arrays=False)
    ignore_consolidated_warning()
    return xr.open_datatree(zarr_store(path), engine="zarr")


def verify_study(study: PathOrURL) -> list[DamagedChunk]:
    """Check every published node: complete on disk, as published, every chunk readable.

    Returns
    -------
    list of DamagedChunk
        Empty when the store is whole. A node whose files are not complete, or were
        rewritten after publishing, is reported with array ``""`` and chunk
        ``zarr.json``; missing or corrupt chunks as in :func:`roidask.io.verify_store`.
    """
    path = as_location(study)
    damaged, records = check_nodes(path)
    return damaged + edited_in_root(path, records) + verify_groups(path, records)


def edited_in_root(study: Location, nodes: Iterable[str]) -> list[DamagedChunk]:
    """Arrays of published ``nodes`` whose metadata in the root (what xarray reads:
    its dtype, shape, codecs, ``scale_factor``) differs from their own ``zarr.json``."""
    metadata = _read_root(study)["consolidated_metadata"]["metadata"]
    damaged = []
    for node in nodes:
        arrays = (k for k, m in metadata.items() if k.startswith(f"{node}/"))
        for key in sorted(k for k in arrays if metadata[k].get("node_type") == "array"):
            try:
                own = json.loads((study / key / _META).read_bytes())
            except FileNotFoundError:
                own, reason = None, f"missing {stored_where(study)}, though the root lists it"
            except (OSError, ValueError):
                own, reason = None, "unreadable"
            else:
                reason = "its metadata in the root differs from its own zarr.json (edited?)"
            if own != metadata[key]:
                damaged.append(DamagedChunk(node, key.split("/", 1)[1], _META, reason))
    return damaged


def check_nodes(study: PathOrURL) -> tuple[list[DamagedChunk], dict[str, dict]]:
    """Each published node's own ``zarr.json`` against the root (a read per node, no chunk).

    Returns
    -------
    damaged : list of DamagedChunk
        Nodes whose ``zarr.json`` is missing, unreadable or not complete, or was
        rewritten after publishing (array ``""``, chunk ``zarr.json``).
    records : dict
        The attributes of the other published nodes, by name.
    """
    path = as_location(study)
    metadata = _read_root(path)["consolidated_metadata"]["metadata"]
    damaged: list[DamagedChunk] = []
    records: dict[str, dict] = {}
    for name in sorted(k for k in metadata if "/" not in k):
        attrs = node_attrs(path, name)
        if attrs is None:
            complete = f"published but not complete {stored_where(path)}"
            damaged.append(DamagedChunk(name, "", _META, complete))
        elif attrs != metadata[name].get("attributes"):
            damaged.append(DamagedChunk(name, "", _META, "rewritten since it was published"))
        else:
            records[name] = attrs
    return damaged, records
