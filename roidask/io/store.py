"""Zarr v3 stores of BOLD data: layout, streamed atomic conversion, opening.

Layout::

    STORE/                      zarr v3 group, attrs {"roidask_store": 1}
      <subject>/                one group per subject (xarray Dataset)
        bold   (x, y, z, time)  source dtype; scaling kept as scale_factor/add_offset
        time, condition, run    coordinates along time
        mask   (x, y, z)        optional 3D images stored beside the BOLD data
      zarr.json                 root metadata, consolidated after every commit

``xr.open_datatree(STORE, engine="zarr")`` shows every subject and
``xr.open_zarr(STORE, group=subject)`` one of them.

Atomicity: a subject is written into a temporary store next to ``STORE`` and
moved into place by a rename once every chunk is written; its group then gets
the attribute ``roidask_complete = True`` and the root metadata is consolidated.
:func:`open_subject` refuses groups without that attribute (missing zarr chunks
would otherwise read silently as fill values).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from roidask._progress import Progress
from roidask.exceptions import (
    IncompleteStoreError,
    InvalidParameterError,
    NonFiniteVoxelsWarning,
    OutputExistsError,
    StoreError,
)
from roidask.io.image import (
    BOLD_DIMS,
    SPATIAL_DIMS,
    as_image,
    bold_from_nifti,
    check_same_grid,
    grid_attrs,
)
from roidask.io.nifti import NiftiSource

__all__ = [
    "COMPLETE_ATTR",
    "STORE_ATTR",
    "convert",
    "list_subjects",
    "open_store",
    "open_subject",
    "subject_dataset",
    "write_image",
]

STORE_ATTR = "roidask_store"
STORE_FORMAT = 1
COMPLETE_ATTR = "roidask_complete"
_SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _ignore_consolidated_warning() -> None:
    """Silence zarr's warning that consolidated metadata is not in the v3 spec.

    roidask consolidates the metadata of its stores and results on purpose (so that
    plain ``xr.open_zarr`` / ``open_datatree`` need no fallback), and zarr warns about
    it every time, from any thread. A process-wide filter for that one message, not
    :class:`warnings.catch_warnings`: blocks of it in concurrent threads (subjects
    written at once) restore each other's filters and can leave "ignore everything"
    behind. Idempotent (the filter is not added twice).
    """
    warnings.filterwarnings(
        "ignore", message="Consolidated metadata is currently not part", category=UserWarning
    )


_ignore_consolidated_warning()


def _bold_codecs():
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]


def _consolidate(path: Path) -> None:
    _ignore_consolidated_warning()  # again: a caller's catch_warnings may have dropped it
    zarr.consolidate_metadata(str(path))


def _dataset_to_zarr(ds, path: Path) -> None:
    """Write a small Dataset as a new zarr v3 store at ``path`` (consolidated metadata).

    The store is built in memory and its files written in one go: zarr writes each
    array's metadata, attributes and chunks as separate files, each through its
    event loop and a thread, which for ~25 small arrays costs more than the bytes
    (0.2 s on disk vs 0.12 s).
    """
    from zarr.storage import MemoryStore

    _ignore_consolidated_warning()  # thread-safe, unlike catch_warnings (writers run in threads)
    files = {}
    ds.to_zarr(MemoryStore(files), mode="w", zarr_format=3, consolidated=True)
    for key, buffer in files.items():
        target = path / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buffer.to_bytes())


def _is_store(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:
        return False
    return STORE_ATTR in group.attrs


def _check_subject_name(subject: str) -> None:
    if not isinstance(subject, str) or not _SUBJECT_RE.match(subject):
        raise InvalidParameterError(
            f"subject: {subject!r} is not a valid group name; expected letters, digits, "
            "'.', '_' or '-' (e.g. 'sub-01')"
        )


def list_subjects(store: str | os.PathLike, *, include_incomplete: bool = False) -> list[str]:
    """Names of the subject groups in a roidask store, sorted."""
    path = _require_store(store)
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    names = []
    for name, sub in group.groups():
        if include_incomplete or sub.attrs.get(COMPLETE_ATTR) is True:
            names.append(name)
    return sorted(names)


def _require_store(store) -> Path:
    path = Path(store)
    if not path.exists():
        raise StoreError(f"{path}: no such store")
    if not _is_store(path):
        raise StoreError(
            f"{path}: not a roidask store (expected a zarr v3 group with attribute "
            f"{STORE_ATTR!r}; create one with roidask convert)"
        )
    return path


def open_subject(store: str | os.PathLike, subject: str | None = None, *, chunks="auto-disk"):
    """Open one subject of a store as a lazy :class:`xarray.Dataset`.

    Parameters
    ----------
    store : path
        A roidask zarr store.
    subject : str, optional
        Subject group; may be omitted when the store holds exactly one.
    chunks : optional
        Dask chunks; default: the on-disk chunks.

    Raises
    ------
    StoreError
        Not a store, or no such subject (the message lists the subjects).
    IncompleteStoreError
        The subject's group was not completely written.
    """
    path = _require_store(store)
    complete = list_subjects(path)
    if subject is None:
        if len(complete) != 1:
            raise StoreError(
                f"{path}: holds subjects {complete}; pass subject= (--subject) to choose one"
            )
        subject = complete[0]
    if subject not in complete:
        every = list_subjects(path, include_incomplete=True)
        if subject in every:
            raise IncompleteStoreError(
                f"{path}: subject {subject!r} was not completely written (interrupted "
                "conversion?); convert it again with overwrite"
            )
        raise StoreError(f"{path}: no subject {subject!r}; the store holds {complete}")
    kwargs = {} if chunks == "auto-disk" else {"chunks": chunks}
    ds = xr.open_zarr(str(path), group=subject, consolidated=False, **kwargs)
    # Small per-volume coordinates are loaded (no voxel data is read).
    ds = ds.assign_coords(
        condition=("time", np.asarray(ds["condition"].values).astype(object).astype(str)),
        run=("time", np.asarray(ds["run"].values).astype(np.int64)),
    )
    ds.attrs["subject"] = subject
    ds.attrs["store"] = str(path)
    for name in ds.data_vars:
        ds[name].attrs.setdefault("subject", subject)
    return ds


def open_store(store: str | os.PathLike) -> xr.DataTree:
    """Open a whole store as a lazy :class:`xarray.DataTree` of complete subjects."""
    path = _require_store(store)
    incomplete = sorted(
        set(list_subjects(path, include_incomplete=True)) - set(list_subjects(path))
    )
    if incomplete:
        raise IncompleteStoreError(
            f"{path}: subject(s) {incomplete} were not completely written; convert them "
            "again with overwrite"
        )
    return xr.open_datatree(str(path), engine="zarr", consolidated=False)


def subject_dataset(tree: xr.DataTree, *, subject: str | None, param: str = "img") -> xr.Dataset:
    """One subject's Dataset from a DataTree opened with :func:`open_store`."""
    names = sorted(tree.children)
    if subject is None:
        if tree.has_data:
            return tree.to_dataset()
        if len(names) != 1:
            raise StoreError(f"{param}: DataTree holds subjects {names}; pass subject=")
        subject = names[0]
    if subject not in tree.children:
        raise StoreError(f"{param}: no subject {subject!r}; the DataTree holds {names}")
    return tree[subject].to_dataset()


# -- writing ---------------------------------------------------------------------------
def _prepare_target(out: Path, subject: str, overwrite: bool) -> bool:
    """Check where the subject will go; return True if the store already exists."""
    if out.exists():
        if not _is_store(out):
            raise OutputExistsError(
                f"{out}: exists and is not a roidask store; choose another --out "
                "(roidask does not overwrite other files)"
            )
        if (out / subject).exists() and not overwrite:
            raise OutputExistsError(
                f"{out}: store already holds subject {subject!r}; pass overwrite=True "
                "(--overwrite) to replace it"
            )
        return True
    if not out.parent.exists():
        raise StoreError(f"{out}: parent folder {out.parent} does not exist")
    return False


def _commit(tmp_store: Path, out: Path, subject: str, existed: bool) -> None:
    group = zarr.open_group(str(tmp_store / subject), mode="r+")
    group.attrs[COMPLETE_ATTR] = True
    if not existed:
        _consolidate(tmp_store)
        os.rename(tmp_store, out)
        return
    old = None
    target = out / subject
    if target.exists():
        old = out / f".{subject}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    os.rename(tmp_store / subject, target)
    _consolidate(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp_store, ignore_errors=True)


def _new_tmp_store(out: Path) -> Path:
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    root.attrs[STORE_ATTR] = STORE_FORMAT
    return tmp


def _stream_blocks(sources: Sequence[NiftiSource], block: int):
    """Raw volumes of runs in sequence, re-cut into blocks of ``block`` volumes."""
    pending, n_pending, t0 = [], 0, 0
    for src in sources:
        for _, _, arr in src.iter_blocks(block, scaled=False):
            pending.append(arr)
            n_pending += arr.shape[3]
            while n_pending >= block:
                joined = np.concatenate(pending, axis=3) if len(pending) > 1 else pending[0]
                yield t0, joined[..., :block]
                t0 += block
                rest = joined[..., block:]
                pending, n_pending = ([rest] if rest.shape[3] else []), rest.shape[3]
    if n_pending:
        yield t0, np.concatenate(pending, axis=3) if len(pending) > 1 else pending[0]


def _write_block(arr, t0: int, block: np.ndarray) -> int:
    """Write one chunk-aligned block of volumes; return its count of NaN/inf values."""
    bad = int(block.size - np.count_nonzero(np.isfinite(block))) if block.dtype.kind == "f" else 0
    arr[:, :, :, t0 : t0 + block.shape[3]] = block
    return bad


def _write_stream(arr, blocks, bar: Progress, *, writers: int = 2) -> int:
    """Decode blocks in this thread while ``writers`` threads reorder and compress them.

    Blocks are aligned on the store's time chunks, so concurrent writes never touch
    the same zarr chunk. At most ``writers + 1`` blocks are in memory at a time.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    n_nonfinite = 0
    with bar, ThreadPoolExecutor(max_workers=writers, thread_name_prefix="roidask-write") as pool:
        pending = set()
        for t0, block in blocks:
            pending.add(pool.submit(_write_block, arr, t0, block))
            bar.update(block.shape[3])
            if len(pending) >= writers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                n_nonfinite += sum(f.result() for f in done)
        n_nonfinite += sum(f.result() for f in pending)
    return n_nonfinite


def convert(
    bold: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    labels: str | os.PathLike | Sequence[str | os.PathLike] | None,
    out: str | os.PathLike,
    subject: str = "sub-01",
    tr_s: float | None = None,
    chunks=None,
    mask_img=None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Convert 4D NIfTI run(s) into a subject group of a chunked zarr v3 store.

    The runs are streamed: at most one chunk-depth of volumes (plus one read
    block) is in memory at a time, whatever the size of the run.

    Parameters
    ----------
    bold : path or list of paths
        4D ``.nii``/``.nii.gz`` runs on one grid, concatenated along time in order.
    labels : path or list of paths
        Haxby ``labels.txt`` or one BIDS ``events.tsv`` per run (see
        :func:`roidask.io.labels.volume_labels`).
    out : path
        Store to create, or an existing roidask store to add the subject to.
    subject : str
        Group name of the subject (default ``"sub-01"``).
    tr_s : float, optional
        Repetition time in seconds; default from the header.
    chunks : dict or str, optional
        Chunk sizes (``x``, ``y``, ``z``, ``time``); default whole volumes,
        about 16 MB per chunk.
    mask_img : path or image, optional
        A 3D image on the same grid stored as variable ``mask``.
    overwrite : bool
        Replace the subject if the store already holds it.
    progress : bool
        Print a progress bar to stderr.

    Returns
    -------
    Path
        The store.

    Raises
    ------
    CorruptFileError, ImageDimensionError, GridMismatchError, LabelsError,
    OutputExistsError, InvalidParameterError
        Before anything is written.
    """
    out = Path(out)
    _check_subject_name(subject)
    # Validate everything (headers, grids, labels, chunks, target) before writing.
    lazy = bold_from_nifti(bold, labels=labels, tr_s=tr_s, chunks=chunks)
    mask = None
    if mask_img is not None:
        mask = as_image(mask_img, ndim=3, param="mask_img")
        check_same_grid(lazy, mask, names=("bold", "mask_img"))
    existed = _prepare_target(out, subject, overwrite)
    sources = [NiftiSource.open(p) for p in lazy.attrs["source_files"]]
    first = sources[0]
    target_chunks = tuple(lazy.chunksizes[d][0] for d in BOLD_DIMS)

    import dask.array as da

    ds = xr.Dataset(
        {"bold": (BOLD_DIMS, da.empty(lazy.shape, dtype=lazy.dtype, chunks=target_chunks))},
        coords={k: v for k, v in lazy.coords.items()},
    )
    ds["bold"].attrs.update(lazy.attrs)
    ds["condition"] = ds["condition"].astype(object)
    encoding = {"bold": {"chunks": target_chunks, "compressors": _bold_codecs()}}
    if first.is_scaled:
        encoding["bold"].update(
            dtype=first.raw_dtype.newbyteorder("=").name,
            scale_factor=first.slope,
            add_offset=first.inter,
            _FillValue=None,
        )
    if mask is not None:
        ds["mask"] = (SPATIAL_DIMS, mask.data)
        ds["mask"].attrs.update(grid_attrs(mask))
    ds.attrs.update(roidask_format=STORE_FORMAT, subject=subject)

    tmp = _new_tmp_store(out)
    try:
        with warnings.catch_warnings():
            # scaled int storage of float data "without _FillValue": the source has no NaN
            warnings.simplefilter("ignore", xr.SerializationWarning)
            ds.to_zarr(
                str(tmp),
                group=subject,
                mode="w",
                compute=False,
                consolidated=False,
                encoding=encoding,
                zarr_format=3,
            )
        if mask is not None:  # small: write it now
            zarr.open_array(str(tmp / subject / "mask"), mode="r+")[...] = np.asarray(
                mask.data.compute()
            )
        arr = zarr.open_array(str(tmp / subject / "bold"), mode="r+")
        n_nonfinite = _write_stream(
            arr,
            _stream_blocks(sources, target_chunks[3]),
            Progress(lazy.shape[3], f"convert {subject}", enabled=progress),
        )
        group = zarr.open_group(str(tmp / subject), mode="r+")
        group["bold"].attrs["n_nonfinite"] = n_nonfinite
        if n_nonfinite:
            warnings.warn(
                f"{', '.join(lazy.attrs['source_files'])}: {n_nonfinite} NaN/inf voxel values "
                "(kept in the store; set to 0 before smoothing, as nilearn does)",
                NonFiniteVoxelsWarning,
                stacklevel=2,
            )
        _commit(tmp, out, subject, existed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_image(
    img,
    store: str | os.PathLike,
    *,
    subject: str,
    name: str,
    overwrite: bool = False,
) -> None:
    """Store a 3D image (mask, atlas, stat map) beside a subject's BOLD data.

    The image must be on the subject's grid; it is written to a temporary
    location and moved into the group when complete.
    """
    path = _require_store(store)
    ds = open_subject(path, subject)
    image = as_image(img, ndim=3, param="img")
    check_same_grid(ds["bold"], image, names=(f"{path}/{subject}/bold", "img"))
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name) or name in {"bold", *ds.coords}:
        raise InvalidParameterError(
            f"name: {name!r} must be an identifier other than 'bold' and the coordinate names"
        )
    target = path / subject / name
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"{path}: subject {subject!r} already has {name!r}; overwrite=True"
        )
    tmp = path / subject / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        arr = zarr.create_array(
            str(tmp),
            shape=image.shape,
            dtype=image.dtype,
            chunks=image.shape,
            dimension_names=list(SPATIAL_DIMS),
            zarr_format=3,
        )
        arr[...] = np.asarray(image.data.compute())
        arr.attrs.update({k: v for k, v in grid_attrs(image).items()})
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
        _consolidate(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
