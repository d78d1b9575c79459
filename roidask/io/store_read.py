"""Reading roidask zarr stores: opening subjects, and detecting damage.

Layout (written by :mod:`roidask.io.store_write`)::

    STORE/                      zarr v3 group, attrs {"roidask_store": FORMAT}
      <subject>/                one group per subject (an xarray Dataset)
        bold   (x, y, z, time)  source dtype; scaling kept as scale_factor/add_offset
        time, condition, run    coordinates along time
        mask   (x, y, z)        optional 3D images stored beside the BOLD data
      zarr.json                 root metadata, consolidated after every commit

A subject group is visible only once complete (attribute ``roidask_complete``).
Since format 2 every chunk ends with a CRC-32C checksum (zarr's ``crc32c``
codec), every chunk is written (none is left to the fill value), and the
complete group records its arrays' chunk grids. :func:`open_subject` checks
that every chunk exists (a listing, no data read) and returns arrays whose
reads name the store, array and chunk of any chunk that fails its checksum, or
that was deleted since (read through ``zarr_store(..., chunks_required=True)``: an
error, not the fill value) (:class:`~roidask.exceptions.DamagedStoreError`);
:func:`verify_store` reads everything and reports every damaged chunk. Format 1
stores (no checksums) still open, with an
:class:`~roidask.exceptions.UnverifiedStoreWarning`.
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from zarr.codecs import Crc32cCodec

from roidask._atomic import MARKER
from roidask._validate import check_bool, check_subject_name
from roidask.exceptions import (
    DamagedStoreError,
    IncompleteStoreError,
    RoidaskOSError,
    StoreError,
    UnverifiedStoreWarning,
)
from roidask.io.chunks import parse_chunks
from roidask.io.locations import (
    Location,
    MissingChunkError,
    PathOrURL,
    S3Path,
    as_location,
    check_finished,
    list_files,
    location_exists,
    remote_marker,
    stored_where,
    version_tag,
    zarr_store,
)

__all__ = [
    "CHUNK_GRIDS_ATTR",
    "COMPLETE_ATTR",
    "RESULTS_ATTR",
    "STORE_ATTR",
    "STORE_FORMAT",
    "STUDY_ATTR",
    "UPLOAD_KIND",
    "DamagedChunk",
    "checked_variables",
    "checksum_problem",
    "chunk_grids",
    "foreign_files",
    "group_records",
    "ignore_consolidated_warning",
    "is_store",
    "list_subjects",
    "missing_chunks",
    "open_store",
    "open_subject",
    "pending_upload",
    "require_store",
    "root_disagreements",
    "root_record",
    "shown",
    "subject_dataset",
    "subject_layout",
    "verify_groups",
    "verify_store",
]

#: Root attribute marking a roidask store; its value is the store format.
STORE_ATTR = "roidask_store"
#: Format written by this version: 2 adds chunk checksums and chunk inventories.
STORE_FORMAT = 2
#: Subject group attribute set last, when every chunk is written.
COMPLETE_ATTR = "roidask_complete"
#: Subject group attribute: the chunk grid of every array (the chunk inventory).
CHUNK_GRIDS_ATTR = "roidask_chunk_grids"
#: Root attribute of a study store (:mod:`roidask.outputs.study`), and of one subject's
#: ``results.zarr`` (:mod:`roidask.pipeline`): named here, so that a store of another kind
#: than the one a function reads is said to be what it is.
STUDY_ATTR = "roidask_study"
RESULTS_ATTR = "roidask_results_format"


def ignore_consolidated_warning() -> None:
    """Silence zarr's warnings about three things roidask's stores do on purpose.

    * Consolidated metadata "is not part of the v3 specification": roidask
      consolidates the metadata of its stores and results so that plain
      ``xr.open_zarr`` / ``open_datatree`` need no fallback.
    * Fixed-width unicode arrays (numpy ``<U``, e.g. the ``condition``
      coordinate) have "no Zarr V3 specification": zarr stores them with the
      ``fixed_length_utf32`` data type (registered in zarr-extensions, read by
      zarr-python and zarrs) and reads them back as ``<U``, so plain xarray gives
      numpy strings (``.astype(str)`` works); zarr's variable-length ``string``
      type reads back as numpy ``StringDType``, where it does not. Any other data
      type's warning is silenced too: a store roidask reads may hold a user's array of
      such a type.
    * A subject's ``.roidask.json`` (the pending marker of an upload to an ``s3://``
      store, left there if it was killed) "is not recognized as a component of a Zarr
      hierarchy": it is roidask's, and ``info`` names it.

    Process-wide filters for these messages, not :class:`warnings.catch_warnings`:
    blocks of it in concurrent threads (subjects written at once) restore each
    other's filters and can leave "ignore everything" behind. Idempotent (a filter
    is not added twice).
    """
    warnings.filterwarnings(
        "ignore", message="Consolidated metadata is currently not part", category=UserWarning
    )
    warnings.filterwarnings(  # any data type's (a user's array in a store read, too)
        "ignore",
        message=r"The data type \(.*\) does not have a Zarr V3 specification",
        category=FutureWarning,
    )
    warnings.filterwarnings(
        "ignore",
        message=rf"Object at (?:.*/)?{re.escape(MARKER)} is not recognized as a component",
        category=UserWarning,
    )


ignore_consolidated_warning()


# -- what a store is -------------------------------------------------------------------------
def _read_metadata(path: Path | S3Path, what: str, *, param: str | None = None) -> dict:
    """A ``zarr.json`` as a dict; StoreError naming it when corrupt or unreadable.

    ``param`` (the store's parameter name) starts the message when given.
    """
    meta = path / "zarr.json"
    where = f"{param} {meta}" if param else str(meta)
    try:
        record = json.loads(meta.read_text())
    except (FileNotFoundError, RoidaskOSError):
        raise  # absent; or an object store's one-line error (denied, unreachable)
    except PermissionError:
        raise StoreError(
            f"{where}: permission denied (the {what} metadata is not readable by this user)",
            param=param,
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StoreError(
            f"{where}: corrupt zarr.json (the {what} metadata is not valid JSON: {exc}); the "
            "store is damaged",
            param=param,
        ) from None
    if not isinstance(record, dict) or "zarr_format" not in record:
        raise StoreError(
            f"{where}: corrupt zarr.json (the {what} metadata has no zarr_format); the store "
            "is damaged",
            param=param,
        )
    return record


def root_record(path: Path | S3Path, *, param: str | None = None) -> dict | None:
    """The root ``zarr.json`` of the zarr store ``path`` as a dict, None if it has none;
    StoreError when it is corrupt or unreadable."""
    try:
        return _read_metadata(path, "root", param=param)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _other_kind(path: Path | S3Path, attrs: dict, param: str) -> StoreError | None:
    """What a roidask store that holds no BOLD series (a study, a subject's results) is,
    and how to read it; None for other stores."""
    if STUDY_ATTR in attrs:
        return StoreError(
            f"{param} {path}: is a roidask study store (a node per subject and the group "
            "level), not a BOLD store; read a node's maps with roidask.io.open_map, or the "
            "whole with xarray.open_datatree",
            param=param,
        )
    if RESULTS_ATTR in attrs:
        return StoreError(
            f"{param} {path}: is one subject's results store (its maps, ROI table and "
            "signals), not a BOLD store; read its maps with roidask.io.open_map, or the "
            "whole with xarray.open_zarr",
            param=param,
        )
    return None


def is_store(path: PathOrURL) -> bool:
    """True if ``path`` is a folder holding a roidask store (its root metadata says so)."""
    path = as_location(path)
    try:
        record = _read_metadata(path, "root")
    except (FileNotFoundError, NotADirectoryError, StoreError):
        return False
    return STORE_ATTR in (record.get("attributes") or {})


def require_store(store: PathOrURL, *, param: str = "store") -> Path | S3Path:
    """``store`` as a Path (S3Path for ``s3://``), or StoreError saying why it is not a
    roidask store."""
    path = as_location(store, param)
    check_finished(path, param, folder=True)  # in an s3:// output whose upload was cut
    if not location_exists(path, param):
        raise StoreError(f"{param} {path}: no such store", param=param)
    if not path.is_dir():
        raise StoreError(
            f"{param} {path}: is a file, not a store (a zarr store is a folder)", param=param
        )
    try:
        record = _read_metadata(path, "root", param=param)
    except FileNotFoundError:  # (an s3:// output whose upload was cut: check_finished)
        inside = [n for n in ("results.zarr", "study.zarr") if (path / n).is_dir()]
        if inside:  # a run's or a batch's output folder
            raise StoreError(
                f"{param} {path}: a roidask output folder, not a store; its results are in "
                f"{path / inside[0]}",
                param=param,
            ) from None
        raise StoreError(
            f"{param} {path}: not a zarr store (no zarr.json); create one with roidask.io.convert",
            param=param,
        ) from None
    attrs = record.get("attributes") or {}
    if STORE_ATTR not in attrs:
        other = _other_kind(path, attrs, param)
        if other is not None:
            raise other
        raise StoreError(
            f"{param} {path}: a zarr group but not a roidask store (no attribute "
            f"{STORE_ATTR!r}); create one with roidask.io.convert",
            param=param,
        )
    return path


def group_records(path: Path | S3Path, param: str | None = None) -> dict[str, dict]:
    """Every child group's attributes, read from the group metadata files (not consolidated)."""
    out = {}
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            record = _read_metadata(child, f"group {child.name!r}", param=param)
        except FileNotFoundError:
            continue
        if record.get("node_type") == "group":
            out[child.name] = record.get("attributes") or {}
    return out


def list_subjects(store: PathOrURL, *, include_incomplete: bool = False) -> list[str]:
    """Names of the subject groups in a roidask store, sorted.

    Parameters
    ----------
    store : path or ``s3://`` URL
        A roidask zarr store (:func:`roidask.io.convert`'s).
    include_incomplete : bool
        Also list the subjects whose conversion did not finish (default: complete
        subjects only).

    Returns
    -------
    list of str
        The subjects' names, sorted.

    Raises
    ------
    StoreError
        ``store`` is not a roidask store.
    """
    include_incomplete = check_bool(include_incomplete, "include_incomplete")
    path = require_store(store)
    return [
        name
        for name, attrs in group_records(path).items()
        if include_incomplete or attrs.get(COMPLETE_ATTR) is True
    ]


# -- chunk inventories -----------------------------------------------------------------------
def _chunk_key(coords) -> str:
    return "c/" + "/".join(str(int(c)) for c in coords)


def _present_chunk_keys(array_dir: Path | S3Path) -> set[str]:
    return {"c/" + name for name in list_files(array_dir / "c")}


def _array_dirs(path: Location, subject: str) -> list[Location]:
    """The folders of a subject group that hold an array or group (a ``zarr.json``)."""
    group = path / subject
    return sorted(
        p
        for p in group.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "zarr.json").exists()
    )


_NO_CHECKSUM = (
    "its zarr.json has no crc32c checksum codec (removed?): its chunks cannot be checked"
)


def checksum_problem(meta: dict) -> str | None:
    """Why the chunks of an array (its ``zarr.json`` as a dict) of a checksummed store
    (format 2) cannot be checked, or None: every such array ends its codecs with crc32c."""
    if meta.get("node_type") != "array":
        return None
    codecs = meta.get("codecs") or []
    last = codecs[-1] if codecs and isinstance(codecs[-1], dict) else {}
    return _NO_CHECKSUM if last.get("name") != "crc32c" else None


def _check_array_metadata(
    path: Location, subject: str, param: str | None, grids: dict | None = None
) -> None:
    """Read every array's ``zarr.json`` of a subject (cheap); StoreError if one is corrupt,
    DamagedStoreError if an array of its chunk inventory ``grids`` has no checksum codec
    or no ``zarr.json`` at all."""
    for name in sorted(grids or {}):
        if not (path / subject / name / "zarr.json").exists():
            raise DamagedStoreError(
                f"{param} {path}: {subject}/{name} is damaged: its zarr.json is missing; "
                f"{_CONVERT_AGAIN}",
                param=param,
            )
    for folder in _array_dirs(path, subject):
        meta = _read_metadata(folder, f"array {subject}/{folder.name}", param=param)
        problem = checksum_problem(meta) if grids and folder.name in grids else None
        if problem:
            raise DamagedStoreError(
                f"{param} {path}: {subject}/{folder.name} is damaged: {problem}; {_CONVERT_AGAIN}",
                param=param,
            )


def missing_chunks(group: Location, grids: dict) -> list[tuple[str, str]]:
    """``(array, chunk key)`` of the chunks the inventory ``grids`` lists that ``group``
    (the group's folder) does not hold."""
    missing = []
    for name, grid in grids.items():
        present = _present_chunk_keys(group / name)
        for coords in np.ndindex(*grid):
            key = _chunk_key(coords)
            if key not in present:
                missing.append((name, key))
    return missing


#: The arrays a format-1 subject (no chunk inventory recorded) may hold that roidask wrote.
_FORMAT1_ARRAYS = ("bold", "time", "condition", "run", "mask")
# zarr's temporary file beside one it writes (``name.<uuid hex>.partial``; ``zarr.json``:
# ``zarr.<hex>.partial``)
_PARTIAL_RE = re.compile(r"^(.*?)\.[0-9a-f]{32}\.partial$")


def _in_layout(key: str, grids: Mapping[str, Sequence[int]]) -> bool:
    """``key`` is a file of roidask's layout of a group whose arrays are ``grids``."""
    partial = _PARTIAL_RE.match(key)
    if partial:
        base = partial.group(1)
        key = f"{base}.json" if base.rsplit("/", 1)[-1] == "zarr" else base
    if key == "zarr.json":
        return True
    array, sep, rest = key.partition("/")
    grid = grids.get(array)
    if grid is None or not sep:
        return False
    if rest == "zarr.json":
        return True
    if rest == "c":
        parts: list[str] = []
    elif rest.startswith("c/"):
        parts = rest[2:].split("/")
    else:
        return False
    return len(parts) == len(grid) and all(
        p.isdigit() and int(p) < int(n) for p, n in zip(parts, grid, strict=True)
    )


def foreign_files(keys: Iterable[str], grids: Mapping[str, Sequence[int]]) -> list[str]:
    """The files among ``keys`` (paths in a group's folder, ``/``-separated) that are not
    of the layout roidask writes for a group whose arrays are those of the chunk inventory
    ``grids``: the group's ``zarr.json``, and each listed array's ``zarr.json`` and chunk
    keys within its grid. Anything else (another array or group, a nested one, a chunk
    beyond the grid, a file) is not roidask's. Sorted, each once."""
    return sorted({key for key in keys if not _in_layout(key, grids)})


def shown(names: Sequence[str], limit: int = 5) -> str:
    """``names`` for a message: the first ``limit``, then how many more."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _group_json(group: Location) -> dict | None:
    try:
        record = json.loads((group / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def subject_layout(store: Location, subject: str) -> dict[str, list[int]] | None:
    """The arrays of subject ``subject`` of the roidask store ``store`` that roidask wrote
    (name to chunk grid), or None if nothing proves the group there is a roidask subject.

    The proof is the chunk inventory its ``zarr.json`` records (a group with roidask's
    attributes), or, if that file is lost, the one the root's consolidated metadata
    recorded for it; a format-1 subject (no inventory) holds roidask's arrays only.
    """
    record = _group_json(store / subject)
    attrs = (record or {}).get("attributes") or {}
    if record is not None and record.get("node_type") == "group" and "roidask_format" in attrs:
        grids = attrs.get(CHUNK_GRIDS_ATTR)
        if isinstance(grids, dict):
            return grids
        found = {}
        for name in _FORMAT1_ARRAYS:
            meta = _group_json(store / subject / name)
            if meta is not None and meta.get("node_type") == "array":
                found.update(chunk_grids({name: meta}))
        return found
    if record is not None:
        return None  # a group or array roidask did not write
    root = _group_json(store) or {}
    listed = ((root.get("consolidated_metadata") or {}).get("metadata") or {}).get(subject)
    listed_attrs = (listed or {}).get("attributes") if isinstance(listed, dict) else None
    if isinstance(listed_attrs, dict) and "roidask_format" in listed_attrs:
        grids = listed_attrs.get(CHUNK_GRIDS_ATTR)
        if isinstance(grids, dict):
            return grids
    return None


#: The kind of the pending marker (``.roidask.json``, ``complete: false``) an upload of a
#: subject to an ``s3://`` store puts under the subject's prefix before its first object
#: and deletes after its ``zarr.json``: it lists every object the upload may leave, so that a
#: killed upload is recognised as roidask's.
UPLOAD_KIND = "store-subject-upload"


def pending_upload(prefix: Location) -> set[str]:
    """The objects under ``prefix`` (a subject of an ``s3://`` store) that a killed upload
    listed in its pending marker, with the marker; empty if there is none."""
    if not isinstance(prefix, S3Path):
        return set()
    marker = remote_marker(prefix)
    if marker is None or marker.get("kind") != UPLOAD_KIND:
        return set()
    return {*marker["files"], MARKER}


def chunk_grids(arrays: Mapping[str, Any]) -> dict[str, list[int]]:
    """The chunk inventory of a group: chunks per dimension of each of its arrays.

    ``arrays``: array name to its zarr v3 metadata (a dict, as in a consolidated
    ``zarr.json``) or to an open zarr array; other nodes are ignored.
    """
    grids = {}
    for name, meta in arrays.items():
        if isinstance(meta, dict):
            if meta.get("node_type") != "array":
                continue
            shape = meta["shape"]
            chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
        else:
            shape, chunks = meta.shape, meta.chunks
        grids[name] = [-(-int(n) // int(c)) for n, c in zip(shape, chunks, strict=True)]
    return grids


# -- reading with damage named ---------------------------------------------------------------
#: What to do about a damaged chunk: of a converted subject, of what a run or batch wrote.
_CONVERT_AGAIN = "convert the subject again"
_WRITE_AGAIN = "write it again (rerun the roidask run or batch that wrote it)"


class _CheckedArray:
    """Array-like over one stored variable whose read errors name the damaged chunk.

    Indexing reads the region through xarray's lazily decoded variable (the same
    decoding as ``xr.open_zarr``: scale_factor/add_offset applied), so values are
    those of plain xarray.
    """

    def __init__(
        self,
        variable: xr.Variable,
        store: Location,
        subject: str,
        name: str,
        chunks,
        *,
        param: str = "store",
        remedy: str = _CONVERT_AGAIN,
        required: bool = False,
    ):
        self.variable = variable
        self.required = required  # every chunk written: an absent one is damage
        self.store = store
        self.subject = subject
        self.name = name
        self.param, self.remedy = param, remedy  # how errors name the store, what to do
        # the array's folder and how messages name it ("" subject: the store's root group)
        self.location = store / subject / name if subject else store / name
        self.label = f"{subject}/{name}" if subject else name
        self.chunks = tuple(int(c) for c in chunks)
        self.shape = variable.shape
        self.dtype = variable.dtype
        self.ndim = variable.ndim

    def __getitem__(self, index):
        try:
            return np.asarray(self.variable[index].values)
        except DamagedStoreError:
            raise
        except Exception as exc:
            raise _damage(self, index, exc) from None


def _damage(array: _CheckedArray, index, exc: Exception) -> DamagedStoreError:
    """The error for a failed read of ``index``: the damaged chunk(s) located and named."""
    zarr_array = zarr.open_array(
        zarr_store(array.location, chunks_required=array.required), mode="r"
    )
    ranges = []
    for sl, size, c in zip(index, array.shape, array.chunks, strict=False):
        start, stop, _ = sl.indices(size)
        ranges.append(range(start // c, (max(stop, start + 1) - 1) // c + 1))
    bad = [
        coords
        for coords in itertools.product(*ranges)
        if _chunk_error(zarr_array, coords) is not None
    ]
    where = ", ".join(_chunk_key(c) for c in bad) or "in the region read"
    return DamagedStoreError(
        f"{array.param} {array.store}: chunk {where} of {array.label} is damaged "
        f"({_reason(exc)}); the store cannot be trusted, {array.remedy} (verify_store lists "
        "every damaged chunk)",
        param=array.param,
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, MissingChunkError):  # deleted since the store was opened
        return "it is missing"
    text = str(exc)
    if "checksum" in text.lower():
        return "it fails its CRC-32C checksum"
    if "blosc" in text.lower() or "decompress" in text.lower():
        return "it cannot be decompressed: truncated or corrupt"
    return f"{type(exc).__name__}: {text[:200]}"


def _metadata_reason(exc: StoreError) -> str:
    """The part of a corrupt-metadata message after the file name."""
    text = str(exc)
    return text[text.index("corrupt zarr.json") :] if "corrupt zarr.json" in text else text


def _chunk_error(zarr_array, coords) -> str | None:
    """Why the chunk at ``coords`` cannot be read, or None if it reads."""
    region = tuple(
        slice(i * c, min((i + 1) * c, n))
        for i, c, n in zip(coords, zarr_array.chunks, zarr_array.shape, strict=True)
    )
    try:
        zarr_array[region]
    except Exception as exc:
        return _reason(exc)
    return None


def _checked(
    var: xr.DataArray,
    store: Location,
    subject: str,
    name: str,
    *,
    required: bool,
    **naming: str,
) -> da.Array:
    """``var`` as a dask array of its on-disk chunks, read through :class:`_CheckedArray`
    (``naming``: its ``param`` and ``remedy``; ``required``: ``var`` was opened through
    ``zarr_store(..., chunks_required=True)``, its absent chunks are damage)."""
    disk = var.encoding.get("preferred_chunks") or {}
    disk_chunks = [disk.get(d, n) for d, n in zip(var.dims, var.shape, strict=True)]
    array = _CheckedArray(
        var.variable, store, subject, name, disk_chunks, required=required, **naming
    )
    token = tokenize(str(store), subject, name, version_tag(array.location))
    return da.from_array(
        array,
        chunks=array.chunks,
        asarray=False,
        lock=False,
        fancy=False,
        name=f"store-{name}-{token}",
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
    )


def checked_variables(
    store: PathOrURL, names: Sequence[str], *, group: str | None = None, param: str = "store"
) -> dict[str, xr.DataArray]:
    """Variables ``names`` of a zarr group (a study node, a ``results.zarr``, a subject) as
    lazy DataArrays whose reads check every chunk and name a damaged one, as
    :func:`open_subject` reads a subject's arrays (the group is opened once).

    If the group records its chunk inventory (:data:`CHUNK_GRIDS_ATTR`: study nodes,
    converted subjects), a listed chunk that is absent raises here, before anything is
    read: zarr would read it as the fill value.

    Raises
    ------
    DamagedStoreError
        The group, or a chunk of the inventory, is missing; an array of the inventory has
        no checksum codec.
    """
    path = as_location(store)
    folder = path / group if group else path
    try:  # the inventory first: with one, every chunk must be there when read too
        record = _read_metadata(folder, f"group {group!r}" if group else "root", param=param)
        required = CHUNK_GRIDS_ATTR in (record.get("attributes") or {})
    except (OSError, StoreError):
        required = False  # opening it names what is wrong
    try:
        ds = xr.open_zarr(
            zarr_store(path, chunks_required=required),
            group=group,
            consolidated=False,
            chunks=None,
        )
    except zarr.errors.NodeNotFoundError:
        what = f"node {group!r}" if group else "its root group"
        raise DamagedStoreError(
            f"{param} {path}: {what} is missing {stored_where(path)} (no "
            f"{folder / 'zarr.json'}); "
            f"{_WRITE_AGAIN}",
            param=param,
        ) from None
    grids = ds.attrs.get(CHUNK_GRIDS_ATTR) or {}
    missing = missing_chunks(folder, {n: grids[n] for n in names if n in grids})
    if missing:  # named by the first array missing chunks
        array = missing[0][0]
        keys = [k for a, k in missing if a == array]
        raise DamagedStoreError(
            f"{param} {path}: {f'{group}/{array}' if group else array} is damaged: "
            f"{len(keys)} chunk(s) missing ({', '.join(keys[:5])}"
            f"{' ...' if len(keys) > 5 else ''}); {_WRITE_AGAIN}",
            param=param,
        )
    for name in names:
        compressors = ds[name].encoding.get("compressors") or ()  # as opened: nothing read
        if name in grids and not (compressors and isinstance(compressors[-1], Crc32cCodec)):
            raise DamagedStoreError(
                f"{param} {path}: {f'{group}/{name}' if group else name} is damaged: "
                f"{_NO_CHECKSUM}; "
                f"{_WRITE_AGAIN}",
                param=param,
            )
    out = {}
    for name in names:
        var = ds[name]
        data = _checked(
            var, path, group or "", name, required=required, param=param, remedy=_WRITE_AGAIN
        )
        coords = {d: ds[d].values for d in var.dims if d in ds.coords}
        out[name] = xr.DataArray(
            data, dims=var.dims, coords=coords, attrs=dict(var.attrs), name=name
        )
        out[name].encoding = dict(var.encoding)
    return out


def open_subject(
    store: PathOrURL,
    subject: str | None = None,
    *,
    chunks="auto-disk",
    param: str = "store",
) -> xr.Dataset:
    """Open one subject of a store as a lazy :class:`xarray.Dataset`.

    Parameters
    ----------
    store : path
        A roidask zarr store.
    subject : str, optional
        Subject group; may be omitted when the store holds exactly one.
    chunks : dict or str, optional
        Dask chunk sizes in voxels (``x``, ``y``, ``z``) and volumes (``time``), as
        ``{"x": 20, "time": 100}`` or ``"x=20,time=100"`` (``-1``: the whole axis),
        checked as :func:`roidask.io.as_image` checks them
        (:func:`roidask.io.chunks.parse_chunks`); the dims not named keep their
        on-disk chunks. Default (``"auto-disk"`` or None): the on-disk chunks.
    param : str
        Parameter name of the store, for messages.

    Returns
    -------
    xarray.Dataset
        Data variables are dask arrays whose reads check every chunk's checksum and
        name a damaged chunk; ``condition`` (str) and ``run`` (int) coordinates are
        loaded (no voxel data is read).

    Raises
    ------
    StoreError
        Not a store, corrupt metadata, or no such subject (the message lists them).
    IncompleteStoreError
        The subject's group was not completely written.
    DamagedStoreError
        A chunk recorded by the store is missing.
    IncompleteOutputError
        An ``s3://`` store in an output whose upload did not finish.
    InvalidParameterError
        ``chunks`` is not a mapping or ``dim=size`` string of the dims ``x``, ``y``,
        ``z``, ``time`` with positive integer sizes (or -1).

    Warns
    -----
    UnverifiedStoreWarning
        The store was written without checksums (format 1).
    """
    path = require_store(store, param=param)
    records = group_records(path, param)
    complete = sorted(n for n, a in records.items() if a.get(COMPLETE_ATTR) is True)
    if subject is None:
        if len(complete) != 1:
            if not complete:
                _refuse_damaged(path, None, param)
            raise StoreError(
                f"subject: {path} holds subjects {complete}; pass subject= to choose one",
                param="subject",
            )
        subject = complete[0]
    check_subject_name(subject)
    if subject not in complete:
        if subject in records:
            raise IncompleteStoreError(
                f"{param} {path}: subject {subject!r} was not completely written (interrupted "
                "conversion?); convert it again with overwrite=True",
                param=param,
            )
        _refuse_damaged(path, subject, param)
        raise StoreError(
            f"subject: no subject {subject!r} in {path}; the store holds {complete}",
            param="subject",
        )
    attrs = records[subject]
    grids = attrs.get(CHUNK_GRIDS_ATTR)
    if grids is None:
        warnings.warn(
            f"{path}: subject {subject!r} was written without chunk checksums (store format "
            f"{attrs.get('roidask_format', 1)}); damaged or missing chunks cannot be detected. "
            "Convert it again to add them.",
            UnverifiedStoreWarning,
            stacklevel=2,
        )
    else:
        missing = missing_chunks(path / subject, grids)
        if missing:
            shown = ", ".join(f"{n}/{k}" for n, k in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DamagedStoreError(
                f"{param} {path}: subject {subject!r} is damaged: {len(missing)} chunk(s) "
                f"missing ({shown}{more}); convert the subject again",
                param=param,
            )
    _check_array_metadata(path, subject, param, grids)
    try:
        ds = xr.open_zarr(
            zarr_store(path, chunks_required=grids is not None),
            group=subject,
            consolidated=False,
            chunks=None,
        )
        condition = np.asarray(ds["condition"].values).astype(object).astype(str)
        run = np.asarray(ds["run"].values).astype(np.int64)
        time = np.asarray(ds["time"].values)
    except (DamagedStoreError, StoreError):
        raise
    except Exception as exc:
        raise DamagedStoreError(
            f"{param} {path}: subject {subject!r} cannot be read ({_reason(exc)}); convert the "
            "subject again",
            param=param,
        ) from None
    # the sizes given, checked as as_image checks them (on the BOLD series' shape); the
    # dims not named keep their on-disk chunks
    widest = max(ds.data_vars.values(), key=lambda v: v.ndim, default=None)
    on_disk = chunks is None or (isinstance(chunks, str) and chunks == "auto-disk")
    sizes = {} if on_disk or widest is None else parse_chunks(chunks, widest.shape)
    data_vars = {}
    for name, var in ds.data_vars.items():
        arr = _checked(var, path, subject, name, required=grids is not None)
        wanted = {var.dims.index(d): c for d, c in sizes.items() if d in var.dims}
        if wanted:
            arr = arr.rechunk(wanted)
        data_vars[name] = xr.DataArray(arr, dims=var.dims, attrs=dict(var.attrs))
        data_vars[name].encoding = dict(var.encoding)
    out = xr.Dataset(
        data_vars,
        coords={
            "time": ("time", time, dict(ds["time"].attrs)),
            "condition": ("time", condition),
            "run": ("time", run),
        },
        attrs=dict(ds.attrs),
    )
    out.attrs["subject"] = subject
    out.attrs["store"] = str(path)
    for name in out.data_vars:
        out[name].attrs.setdefault("subject", subject)
    return out


def _refuse_damaged(path: Location, subject: str | None, param: str) -> None:
    """Raise if a subject (``subject``, or any) that has no group ``zarr.json`` is not
    absent: the store's root lists it (DamagedStoreError: the store is damaged), or a
    convert killed while it uploaded it left its pending marker (IncompleteStoreError)."""
    lost = [d for d in root_disagreements(path, subject=subject) if not d.array]
    if not lost:
        return
    d = lost[0]
    if d.chunk == MARKER:
        raise IncompleteStoreError(
            f"{param} {path}: subject {d.subject!r} was not completely written (a convert was "
            "killed while it uploaded it); convert it again",
            param=param,
        )
    raise DamagedStoreError(
        f"{param} {path}: the store is damaged: {d.subject}/{d.chunk} {d.reason}; convert "
        "the subject again with overwrite=True (verify_store lists what is damaged)",
        param=param,
    )


def open_store(store: PathOrURL) -> xr.DataTree:
    """Open a whole store as a lazy :class:`xarray.DataTree` of complete subjects.

    Parameters
    ----------
    store : path or ``s3://`` URL
        A roidask zarr store (:func:`roidask.io.convert`'s).

    Returns
    -------
    xarray.DataTree
        One child per subject (its ``bold``, with its ``condition`` and ``run``
        coordinates); lazy, no voxel is read. Its chunks are read as plain xarray
        reads them (:func:`open_subject` names a damaged or missing chunk).

    Raises
    ------
    StoreError
        ``store`` is not a roidask store.
    IncompleteStoreError
        A subject was not completely written (convert it again with
        ``overwrite=True``).
    """
    path = require_store(store)
    records = group_records(path)
    incomplete = sorted(n for n, attrs in records.items() if attrs.get(COMPLETE_ATTR) is not True)
    if incomplete:
        raise IncompleteStoreError(
            f"store {path}: subject(s) {incomplete} were not completely written; convert them "
            "again with overwrite=True",
            param="store",
        )
    return xr.open_datatree(zarr_store(path), engine="zarr", consolidated=False)


def subject_dataset(tree: xr.DataTree, *, subject: str | None, param: str = "img") -> xr.Dataset:
    """One subject's Dataset from a DataTree opened with :func:`open_store`."""
    names = sorted(tree.children)
    if subject is None:
        if tree.has_data:
            return tree.to_dataset()
        if len(names) != 1:
            raise StoreError(
                f"{param}: DataTree holds subjects {names}; pass subject=", param="subject"
            )
        subject = names[0]
    if subject not in tree.children:
        raise StoreError(
            f"subject: no subject {subject!r}; the DataTree holds {names}", param="subject"
        )
    return tree[subject].to_dataset()


# -- verification ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DamagedChunk:
    """One damaged (or missing) chunk found by :func:`verify_store`."""

    subject: str  # the group (a subject, or a study's node)
    array: str
    chunk: str
    reason: str


def verify_store(store: PathOrURL, *, subject: str | None = None) -> list[DamagedChunk]:
    """Read every chunk of every array of a store and check it (checksums, presence).

    Parameters
    ----------
    store : path
        A roidask store.
    subject : str, optional
        Only this subject (default: every subject, complete or not).

    Returns
    -------
    list of DamagedChunk
        Empty when every chunk reads and passes its checksum. Stores without
        checksums (format 1) can only be checked for chunks that fail to decode. A
        subject that a convert killed while it uploaded it left in an ``s3://`` store is
        named by its pending marker alone (:func:`root_disagreements`); its chunks are not
        read.
    """
    path = require_store(store)
    records = group_records(path)
    disagreements = root_disagreements(path)
    names = [subject] if subject is not None else sorted(records)
    for name in names:
        if name not in records and not any(d.subject == name for d in disagreements):
            raise StoreError(
                f"subject: no subject {name!r} in {path}; the store holds {sorted(records)}",
                param="subject",
            )
    # a subject a killed upload left is named by its marker: its chunks, half old, half
    # new, are not read (it is to be converted again)
    killed = {d.subject for d in disagreements if d.chunk == MARKER}
    checked = verify_groups(
        path, {name: records[name] for name in names if name in records and name not in killed}
    )
    seen = {(d.subject, d.array, d.chunk) for d in checked}  # named once, by its checked reason
    found = [
        d
        for d in disagreements
        if (subject is None or d.subject == subject) and (d.subject, d.array, d.chunk) not in seen
    ]
    return found + checked


def root_disagreements(store: PathOrURL, *, subject: str | None = None) -> list[DamagedChunk]:
    """What of a store is not as its root's consolidated metadata records it (which plain
    xarray reads), read from the metadata files only (no chunk):

    * a subject the root lists that is not whole in the store: its folder or ``zarr.json``
      gone, not complete, or its attributes changed (array ``""``, chunk ``zarr.json``);
    * an array of a listed subject's chunk inventory whose ``zarr.json`` differs from the
      root's record (its shape, dtype, codecs or ``scale_factor`` edited), or is gone;
    * in an ``s3://`` store, the objects of a convert killed while it uploaded a subject
      (its pending marker, chunk ``.roidask.json``): what its marker lists is roidask's
      upload in progress, not an edit, and is not named apart.

    ``subject``: that subject's only (no listing of the store).
    """
    path = as_location(store)
    where = stored_where(path)
    root = _group_json(path) or {}
    metadata = (root.get("consolidated_metadata") or {}).get("metadata") or {}
    damaged = []
    listed, killed = set(), set()
    for name in sorted(k for k in metadata if "/" not in k and subject in (None, k)):
        entry = metadata[name]
        attrs = (entry.get("attributes") or {}) if isinstance(entry, dict) else {}
        if entry.get("node_type") != "group" or "roidask_format" not in attrs:
            continue  # not a roidask subject
        listed.add(name)
        found = []
        own = _group_json(path / name)
        own_attrs = (own or {}).get("attributes") or {}
        reason = (
            f"listed by the store's root but missing {where}"
            if own is None and not (path / name / "zarr.json").exists()
            else f"listed by the store's root but unreadable {where}"
            if own is None
            else f"listed by the store's root as complete but not complete {where}"
            if own_attrs.get(COMPLETE_ATTR) is not True and attrs.get(COMPLETE_ATTR) is True
            else "its attributes differ from the root's record (edited?)"
            if own_attrs != attrs
            else None
        )
        if reason:
            found.append(DamagedChunk(name, "", "zarr.json", reason))
        grids = attrs.get(CHUNK_GRIDS_ATTR)
        for array in sorted(grids) if isinstance(grids, dict) and own is not None else ():
            recorded = metadata.get(f"{name}/{array}")
            if recorded is None:
                continue
            meta = _group_json(path / name / array)
            if meta is None:
                gone = not (path / name / array / "zarr.json").exists()
                why = f"missing {where}, though the root lists it" if gone else "unreadable"
            elif meta != recorded:
                why = "its metadata differs from the root's record (edited?)"
            else:
                continue
            found.append(DamagedChunk(name, array, "zarr.json", why))
        pending = pending_upload(path / name) if found else set()
        if pending:  # what a killed upload was rewriting: named by its marker, below
            killed.add(name)
            found = [d for d in found if f"{d.array}/{d.chunk}".lstrip("/") not in pending]
        damaged += found
    if isinstance(path, S3Path):
        children = (
            [path / subject]
            if subject is not None
            else sorted(p for p in path.iterdir() if p.is_dir())
        )
        for child in children:
            attrs = (_group_json(child) or {}).get("attributes") or {}
            if child.name in killed or (
                (attrs.get(COMPLETE_ATTR) is not True or child.name not in listed)
                and pending_upload(child)
            ):
                why = "left by a convert killed while it uploaded it; convert it again"
                damaged.append(DamagedChunk(child.name, "", MARKER, why))
    return damaged


def verify_groups(path: PathOrURL, records: dict[str, dict]) -> list[DamagedChunk]:
    """Check every chunk of the groups ``records`` (name -> attributes) of the store ``path``.

    A chunk listed in a group's chunk inventory (:data:`CHUNK_GRIDS_ATTR`) but absent
    is reported ``missing``; every present chunk is read (checksum, decompression).
    """
    path = as_location(path)
    damaged = []
    for name, attrs in records.items():
        grids = attrs.get(CHUNK_GRIDS_ATTR) or {}
        for array_name, key in missing_chunks(path / name, grids):
            damaged.append(DamagedChunk(name, array_name, key, "missing"))
        missing = {(d.array, d.chunk) for d in damaged if d.subject == name}
        for folder in _array_dirs(path, name):
            array_name = folder.name
            try:
                meta = _read_metadata(folder, f"array {name}/{array_name}")
                arr = zarr.open_array(zarr_store(folder), mode="r")
            except StoreError as exc:
                damaged.append(DamagedChunk(name, array_name, "zarr.json", _metadata_reason(exc)))
                continue
            except Exception as exc:
                damaged.append(DamagedChunk(name, array_name, "zarr.json", _reason(exc)))
                continue
            problem = checksum_problem(meta) if array_name in grids else None
            if problem:
                damaged.append(DamagedChunk(name, array_name, "zarr.json", problem))
            grid = tuple(-(-n // c) for n, c in zip(arr.shape, arr.chunks, strict=True))
            for coords in np.ndindex(*grid):
                key = _chunk_key(coords)
                if (array_name, key) in missing:
                    continue
                reason = _chunk_error(arr, coords)
                if reason is not None:
                    damaged.append(DamagedChunk(name, array_name, key, reason))
    return damaged
