"""Many subjects on one dask cluster: manifests, concurrent runs, resume, group level.

Each subject runs the ROI pipeline exactly as ``roidask run`` and writes
``DIR/sub-<id>/`` atomically. Subjects run concurrently (one driver thread each,
by default as many as the cluster has worker threads, 2 to 8) on one shared
``distributed`` client, so the scheduler interleaves their tasks; memory per
worker is bounded by the chunk size, not by the number of subjects. Without
``chunks``, the default blocks of whole volumes are used (outputs bit-identical
to ``roidask run``) unless the workers' memory limits are too small for them:
blocks then hold fewer volumes, and the ROI box the pass keeps for the
extraction is dropped if it does not fit (the extraction then reads the data a
second time), so a 400 MiB worker still processes a 475 MB subject. Read
handles a worker caches for a subject's NIfTI files are dropped when the subject
is done, so worker memory does not grow with the batch.

Resume: a subject whose ``provenance.json`` records the same fingerprint
(parameters and input checksums) is skipped; the others are redone. A failing
subject (bad file, ...) is reported in ``DIR/batch.tsv`` and does not stop the
others. A worker lost mid-batch only costs time: its tasks are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from roidask.exceptions import (
    GridMismatchError,
    InvalidParameterError,
    LabelsError,
    RoidaskError,
    RoidaskTypeError,
)

__all__ = ["SubjectSpec", "group_level", "read_manifest", "run_batch"]

_MANIFEST_COLUMNS = ("subject", "bold", "labels", "mask")
_SUBJECT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_BATCH_COLUMNS = ("subject", "status", "wall_s", "n_rois", "out", "error")


@dataclass(frozen=True)
class SubjectSpec:
    """One subject of a batch: BOLD run(s), label file(s) and a mask."""

    subject: str
    bold: tuple[Path, ...]
    labels: tuple[Path, ...]
    mask: Path

    @property
    def out_name(self) -> str:
        return self.subject if self.subject.startswith("sub-") else f"sub-{self.subject}"


def _split(value: str, base: Path) -> tuple[Path, ...]:
    parts = [p.strip() for p in str(value).split(";") if p.strip()]
    return tuple(p if p.is_absolute() else base / p for p in map(Path, parts))


def read_manifest(manifest: str | os.PathLike, *, mask: str | os.PathLike | None = None):
    """Subjects of a batch from a TSV manifest or a BIDS-like folder.

    Parameters
    ----------
    manifest : path
        A TSV with columns ``subject, bold, labels, mask`` (several runs or label
        files separated by ``;``; relative paths are relative to the manifest),
        or a folder with ``sub-*/func/*_bold.nii.gz`` and matching
        ``*_events.tsv`` files (mask: ``sub-*/func/*_mask.nii.gz`` or ``mask``).
    mask : path, optional
        Mask for every subject of a BIDS-like folder without its own.

    Returns
    -------
    list of SubjectSpec
    """
    path = Path(manifest)
    if path.is_dir():
        return _read_bids(path, mask=mask)
    if not path.is_file():
        raise LabelsError(f"{path}: no such manifest (expected a TSV file or a BIDS-like folder)")
    table = pd.read_csv(path, sep="\t", dtype=str).fillna("")
    table.columns = [str(c).strip() for c in table.columns]
    table = table.apply(lambda col: col.str.strip())
    missing = [c for c in _MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise LabelsError(
            f"{path}: missing column(s) {missing}; a manifest needs {list(_MANIFEST_COLUMNS)}, "
            f"got {list(table.columns)}"
        )
    if table["subject"].duplicated().any():
        dup = sorted(set(table["subject"][table["subject"].duplicated()]))
        raise LabelsError(f"{path}: subject(s) {dup} listed more than once")
    if table.empty:
        raise LabelsError(f"{path}: no subject rows (expected one line per subject)")
    specs = []
    for i, row in table.iterrows():
        if not row["subject"] or not row["bold"] or not row["labels"]:
            raise LabelsError(f"{path}: line {i + 2}: subject, bold and labels are required")
        if not _SUBJECT_RE.match(row["subject"]):
            raise LabelsError(
                f"{path}: line {i + 2}: subject {row['subject']!r} is not a valid name "
                "(letters, digits, '.', '_' and '-', not starting with '.' or '-')"
            )
        row_mask = row["mask"] or (str(mask) if mask else "")
        if not row_mask:
            raise LabelsError(f"{path}: line {i + 2}: no mask for subject {row['subject']!r}")
        specs.append(
            SubjectSpec(
                subject=row["subject"],
                bold=_split(row["bold"], path.parent),
                labels=_split(row["labels"], path.parent),
                mask=_split(row_mask, path.parent)[0],
            )
        )
    _check_out_names(specs, path)
    return specs


def _check_out_names(specs: list[SubjectSpec], source: Path) -> None:
    """Two subjects must not share an output folder (``01`` and ``sub-01`` do)."""
    seen: dict[str, str] = {}
    for spec in specs:
        other = seen.setdefault(spec.out_name, spec.subject)
        if other != spec.subject:
            raise LabelsError(
                f"{source}: subjects {other!r} and {spec.subject!r} would both write "
                f"{spec.out_name}/; rename one"
            )


def _natural_key(path: Path) -> list:
    """Sort key putting ``run-2`` before ``run-10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _read_bids(root: Path, *, mask) -> list[SubjectSpec]:
    specs = []
    for sub in sorted((p for p in root.glob("sub-*") if p.is_dir()), key=_natural_key):
        bolds = sorted((sub / "func").glob("*_bold.nii*"), key=_natural_key)
        if not bolds:
            continue
        events = []
        for b in bolds:
            stem = b.name.split("_bold.nii")[0]
            ev = b.with_name(f"{stem}_events.tsv")
            if not ev.is_file():
                raise LabelsError(f"{b}: no matching events file {ev.name}")
            events.append(ev)
        masks = sorted((sub / "func").glob("*_mask.nii*"))
        if len(masks) > 1:
            raise LabelsError(
                f"{sub}: several masks in func/ ({', '.join(m.name for m in masks)}); "
                "keep one *_mask.nii.gz"
            )
        subject_mask = masks[0] if masks else (Path(mask) if mask else None)
        if subject_mask is None:
            raise LabelsError(f"{sub}: no *_mask.nii.gz in func/ and no --mask given")
        specs.append(SubjectSpec(sub.name, tuple(bolds), tuple(events), subject_mask))
    if not specs:
        raise LabelsError(f"{root}: no sub-*/func/*_bold.nii.gz files found")
    return specs


def fingerprint(spec: SubjectSpec, params) -> tuple[str, list[dict]]:
    """Hash of the parameters and input checksums that decide a subject's outputs."""
    from roidask.results import input_records

    inputs = input_records([*spec.bold, *spec.labels, spec.mask])
    payload = json.dumps(
        {"params": params.to_dict(), "inputs": [r["sha256"] for r in inputs]}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest(), inputs


def _is_complete(out: Path, digest: str) -> bool:
    """``out`` holds a finished run with fingerprint ``digest`` and all its outputs."""
    prov = out / "provenance.json"
    if not prov.is_file():
        return False
    try:
        record = json.loads(prov.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("fingerprint") != digest:
        return False
    return all((out / name).exists() for name in record.get("outputs", []))


def _clean_stale(out_dir: Path) -> None:
    """Remove temporary folders left by a killed batch (never complete outputs)."""
    for p in out_dir.glob(".*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out_dir.glob(".*.convert-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out_dir.glob(".*.old-*"):
        shutil.rmtree(p, ignore_errors=True)


class _OpenFiles:
    """Input files of the subjects in flight; a file's read handles are dropped when done.

    Workers cache one read handle per NIfTI file (a ``.nii.gz`` one holds its
    seek index and a ~16 MB read buffer, even for a small mask): without this a
    worker's memory grows with every subject of the batch until it is paused or
    killed.
    """

    def __init__(self):
        self._count: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, files) -> None:
        with self._lock:
            for f in {os.path.realpath(p) for p in files}:
                self._count[f] = self._count.get(f, 0) + 1

    def release(self, files) -> None:
        done = []
        with self._lock:
            for f in {os.path.realpath(p) for p in files}:
                self._count[f] -= 1
                if not self._count[f]:
                    del self._count[f]
                    done.append(f)
        if done:
            _release_handles(done)


def _release_handles(paths: list[str]) -> None:
    """Drop the cached read handles of ``paths`` here and on every worker."""
    from roidask.io.nifti import release_handles
    from roidask.pipeline import _active_client

    release_handles(paths)
    client = _active_client()
    if client is None:
        return
    try:
        client.run(release_handles, paths, on_error="ignore")
    except Exception:  # a worker lost meanwhile: its handles went with it
        pass


#: Resident memory of a worker process once roidask's operations are imported
#: (~200 MB with dask/distributed 2026), which its tasks cannot use.
_WORKER_BASE_BYTES = 200 * 2**20
#: Peak memory of one task of the pipeline's pass: this many times its block of
#: whole volumes (in the data's type: decoded block, smoothed contrast volumes),
#: plus a fixed part and the partial results (float64 maps) of about this many
#: blocks (the running total, a merge's output, a block waiting to be merged).
_TASK_EXPANSION = 6
_TASK_FIXED_BYTES = 16 * 2**20
_LIVE_PARTIALS = 3
#: The ROI box the pass keeps is held twice at its peak on a worker: in the
#: running partial and while it is sent to the client.
_BOX_EXPANSION = 2
#: A box is kept only if blocks of at least this many volumes still fit next to it.
_MIN_BLOCK_VOLUMES = 8
#: Fraction of a worker's memory limit tasks may fill (dask pauses a worker at 80 %).
_USABLE_FRACTION = 0.75


def _cluster_resources(client) -> tuple[float | None, int]:
    """Smallest task memory budget per worker thread (None: no limit) and total threads."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # pragma: no cover - distributed without n_workers=
        info = client.scheduler_info()
    budgets, threads = [], 0
    for w in info.get("workers", {}).values():
        nthreads = max(1, int(w.get("nthreads") or 1))
        threads += nthreads
        limit = w.get("memory_limit") or 0
        if limit:
            budgets.append((limit * _USABLE_FRACTION - _WORKER_BASE_BYTES) / nthreads)
    return (min(budgets) if budgets else None), threads


@dataclass(frozen=True)
class MemoryPlan:
    """How a subject's pass fits a worker thread's memory (see :func:`_memory_plan`)."""

    chunks: dict | None  # BOLD time chunks, None: the pipeline's default blocks
    box_max_bytes: int | None  # the ROI box allowed in memory, None: the default


def _memory_plan(spec: SubjectSpec, budget: float | None, params) -> MemoryPlan:
    """Time blocks and ROI box whose pass tasks fit ``budget`` bytes per worker thread.

    The pipeline reads blocks of whole volumes; with small worker memory the
    blocks hold fewer volumes (down to one). Maps and signals then differ from a
    default run by float64 rounding only (partial moments merged in another order).
    The ROI box kept by the pass (raw voxels of all volumes) lives on a worker
    until the subject is done: it is kept only if it fits next to the smallest
    blocks, and its share of the budget shrinks the blocks; otherwise the
    extraction reads the data a second time.
    """
    from roidask.io.image import as_image, normalize_chunks
    from roidask.io.nifti import NiftiSource
    from roidask.ops.onepass import PARTIAL_MAPS
    from roidask.pipeline import BOX_MAX_BYTES, box_bytes, pass_box

    default = MemoryPlan(None, None)
    if budget is None:
        return default
    try:
        sources = [NiftiSource.open(p, ndim=4) for p in spec.bold]
        mask = as_image(spec.mask, ndim=3, param="mask_img")
        box = pass_box(np.asarray(mask.values) != 0, sources[0].affine, params)
    except (RoidaskError, RoidaskTypeError, OSError):
        return default  # run_subject reports the bad file
    x, y, z = sources[0].volume_shape
    volume_bytes = x * y * z * sources[0].dtype.itemsize
    n_volumes = sum(s.n_volumes for s in sources)
    n_t = normalize_chunks(None, (x, y, z, n_volumes), sources[0].dtype.itemsize)["time"]
    fixed = _TASK_FIXED_BYTES + _LIVE_PARTIALS * PARTIAL_MAPS * 8 * x * y * z
    size = 0 if box is None else box_bytes(box, n_volumes, sources[0].dtype)
    kept = _BOX_EXPANSION * size if size <= BOX_MAX_BYTES else 0  # else never kept
    if kept and fixed + kept + _TASK_EXPANSION * _MIN_BLOCK_VOLUMES * volume_bytes > budget:
        kept = 0  # the box does not fit: read twice
    room = max(budget - fixed - kept, 0) / _TASK_EXPANSION
    fits = max(1, int(room // volume_bytes))
    return MemoryPlan(
        chunks=None if fits >= n_t else {"time": fits},
        box_max_bytes=None if kept or box is None else 0,
    )


def _write_status(out_dir: Path, rows: dict[str, dict], lock: threading.Lock) -> None:
    with lock:
        frame = pd.DataFrame([rows[k] for k in sorted(rows)], columns=list(_BATCH_COLUMNS))
        tmp = out_dir / f".batch.tsv.tmp-{os.getpid()}"
        frame.to_csv(tmp, sep="\t", index=False)
        os.replace(tmp, out_dir / "batch.tsv")


def run_batch(
    specs: list[SubjectSpec],
    out_dir: str | os.PathLike,
    *,
    params=None,
    chunks=None,
    plots: bool = True,
    max_concurrent: int | None = None,
    progress: bool = False,
    log=None,
) -> pd.DataFrame:
    """Run the ROI pipeline for every subject, concurrently, then the group level.

    Must be called with a ``distributed`` client active (see
    :func:`roidask.cluster.get_client`); subjects share it.

    Parameters
    ----------
    specs : list of SubjectSpec
    out_dir : path
        Batch folder: ``sub-<id>/`` per subject, ``batch.tsv``, ``group/``.
    params : PipelineParams, optional
    chunks : dict or str, optional
        BOLD chunking (results do not depend on it).
    plots : bool
        Write each subject's figures.
    max_concurrent : int, optional
        Subjects in flight at once (default: the cluster's worker threads, at
        least 2 and at most 8; each subject's graph is parallel on its own).
    progress : bool
        Print one line per finished subject.
    log : callable, optional
        Receives progress lines (default: print to stderr when ``progress``).

    Returns
    -------
    pandas.DataFrame
        The rows of ``batch.tsv``: subject, status (done, skipped, failed),
        wall_s, n_rois, out, error.
    """
    import sys

    from roidask.pipeline import PipelineParams, _active_client
    from roidask.results import run_subject

    if max_concurrent is not None and (
        isinstance(max_concurrent, bool)
        or not isinstance(max_concurrent, int)
        or max_concurrent < 1
    ):
        raise InvalidParameterError(
            f"max_concurrent: expected a positive number of subjects, got {max_concurrent!r}"
        )
    params = params or PipelineParams()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale(out_dir)
    if log is None:

        def log(line):
            if progress:
                print(line, file=sys.stderr, flush=True)

    lock = threading.Lock()
    rows: dict[str, dict] = {}
    open_files = _OpenFiles()

    def one(spec: SubjectSpec) -> dict:
        start = time.perf_counter()
        out = out_dir / spec.out_name
        row = {"subject": spec.subject, "out": str(out), "error": "", "n_rois": "", "wall_s": ""}
        files = [*spec.bold, spec.mask]
        open_files.acquire(files)
        try:
            digest, inputs = fingerprint(spec, params)
            if _is_complete(out, digest):
                prov = json.loads((out / "provenance.json").read_text())
                row.update(status="skipped", n_rois=prov.get("n_rois", ""))
                return row
            extra = {"fingerprint": digest, "subject": spec.subject}
            plan = _memory_plan(spec, budget, params)
            subject_chunks = chunks if chunks is not None else plan.chunks
            if chunks is None and plan.chunks is not None:
                extra["chunks"] = plan.chunks
            if plan.box_max_bytes is not None:
                extra["box_max_bytes"] = plan.box_max_bytes
            result = run_subject(
                bold=list(spec.bold),
                labels=list(spec.labels),
                store=None,
                subject=None,
                mask=spec.mask,
                out=out,
                params=params,
                chunks=subject_chunks,
                box_max_bytes=plan.box_max_bytes,
                plots=plots,
                overwrite=True,
                progress=False,
                inputs=inputs,
                extra_provenance=extra,
            )
            row.update(status="done", n_rois=result.n_rois)
        except (RoidaskError, RoidaskTypeError, OSError) as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # an unexpected bug must not stop the other subjects
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            row.update(status="failed", error=f"unexpected error: {tb}")
        finally:
            open_files.release(files)
        row["wall_s"] = round(time.perf_counter() - start, 2)
        return row

    client = _active_client()
    budget, threads = _cluster_resources(client) if client is not None else (None, 0)
    n = max_concurrent or max(1, min(len(specs), 8, max(2, threads)))
    for spec in specs:
        rows[spec.subject] = {
            "subject": spec.subject,
            "status": "pending",
            "wall_s": "",
            "n_rois": "",
            "out": str(out_dir / spec.out_name),
            "error": "",
        }
    _write_status(out_dir, rows, lock)
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="roidask-subject") as pool:
        futures = {pool.submit(one, spec): spec for spec in specs}
        for fut in as_completed(futures):
            row = fut.result()
            rows[row["subject"]] = row
            _write_status(out_dir, rows, lock)
            log(
                f"{row['subject']}: {row['status']}"
                + (f" ({row['error']})" if row["error"] else f" in {row['wall_s']} s")
            )
    done = [
        out_dir / s.out_name for s in specs if rows[s.subject]["status"] in ("done", "skipped")
    ]
    group_error = out_dir / "group-error.txt"
    group_error.unlink(missing_ok=True)  # from an earlier run
    if len(done) >= 2:
        try:
            group_level(done, out_dir / "group")
        except (RoidaskError, RoidaskTypeError) as exc:
            log(f"group level: failed ({exc})")
            group_error.write_text(f"{exc}\n")
    return pd.DataFrame([rows[s.subject] for s in specs], columns=list(_BATCH_COLUMNS))


def group_level(subject_dirs: list[Path], out: Path) -> Path:
    """Second-level one-sample t-test of subjects' t maps, and the ROI overlap map.

    Writes ``out/`` atomically: ``tstat.nii.gz``, ``logp.nii.gz`` (-log10 p,
    two-sided, unclipped), ``roi_overlap.nii.gz`` (number of subjects with an
    ROI at each voxel, int16), ``roi_overlap_fraction.nii.gz`` and
    ``subjects.tsv``.

    Raises
    ------
    GridMismatchError
        Subjects' maps are not on one grid (shape and affine); no resampling.
    """
    import uuid

    import dask.array as da
    import xarray as xr

    from roidask.io.image import as_image, check_same_grid, like_image, to_nifti
    from roidask.ops.stats import ttest_1samp_img

    tmaps = [
        as_image(d / "tstat.nii.gz", ndim=3, param=f"{d.name}/tstat.nii.gz") for d in subject_dirs
    ]
    atlases = [
        as_image(d / "atlas.nii.gz", ndim=3, param=f"{d.name}/atlas.nii.gz") for d in subject_dirs
    ]
    ref = tmaps[0]
    for d, t in zip(subject_dirs[1:], tmaps[1:], strict=True):
        try:
            check_same_grid(ref, t, names=(f"{subject_dirs[0].name}", f"{d.name}"))
        except GridMismatchError as exc:
            raise GridMismatchError(
                f"group level needs every subject on one grid: {exc}"
            ) from None
    stack = da.stack([t.data.astype(np.float64) for t in tmaps], axis=-1)
    n = len(tmaps)
    series = xr.DataArray(
        stack,
        dims=("x", "y", "z", "time"),
        coords={
            "time": np.arange(n, dtype=float),
            "condition": ("time", ["tmap"] * n),
            "run": ("time", np.arange(n)),
        },
        attrs=dict(ref.attrs),
    )
    stats = ttest_1samp_img(series, condition="tmap", popmean=0.0)
    overlap = sum((a.data > 0).astype(np.int16) for a in atlases)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        to_nifti(like_image(stats["t"].data, ref), tmp / "tstat.nii.gz", dtype=np.float32)
        to_nifti(like_image(stats["logp"].data, ref), tmp / "logp.nii.gz", dtype=np.float32)
        to_nifti(like_image(overlap, ref), tmp / "roi_overlap.nii.gz", dtype=np.int16)
        to_nifti(
            like_image(overlap.astype(np.float32) / n, ref),
            tmp / "roi_overlap_fraction.nii.gz",
            dtype=np.float32,
        )
        pd.DataFrame({"subject": [d.name for d in subject_dirs]}).to_csv(
            tmp / "subjects.tsv", sep="\t", index=False
        )
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _release_handles([d / f for d in subject_dirs for f in ("tstat.nii.gz", "atlas.nii.gz")])
    return out
