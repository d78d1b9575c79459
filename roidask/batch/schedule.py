"""Running many subjects on one dask cluster: concurrency, resume, memory fitting.

Each subject runs the ROI pipeline exactly as ``roidask run`` and writes
``DIR/sub-<id>/`` atomically. Subjects run concurrently (one driver thread each,
by default as many as the cluster has worker threads, 2 to 8) on one shared
``distributed`` client, so the scheduler interleaves their tasks; memory per
worker is bounded by the chunk size, not by the number of subjects. Without
``chunks``, the default blocks of whole volumes are used (outputs bit-identical
to ``roidask run``) unless the workers' memory limits are too small for them:
the pass's memory model (:func:`roidask.onepass.memory_plan`) then picks smaller
blocks and may drop the ROI box. Read handles a worker caches for a subject's
NIfTI files are dropped when the subject is done, so worker memory does not
grow with the batch.

Before anything is written, every input file of every subject must exist and be
readable and non-empty, and every existing output folder must be roidask's.
Every subject's results also go into one study store, ``DIR/study.zarr``
(:mod:`roidask.outputs.study`): the subject's run writes its node, this driver
publishes it once complete.

Resume: a subject whose ``provenance.json`` records the same fingerprint
(parameters and input checksums), and whose study node too, is skipped; the
others are redone. A failing subject (a corrupt file, data on another grid, ...) is reported in
``DIR/batch.tsv`` and does not stop the others. A worker lost mid-batch only
costs time: its tasks are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

from roidask._atomic import MARKER, check_destination, clean_stale, read_marker, write_text
from roidask._validate import check_optional_int
from roidask.batch.files import OpenFiles
from roidask.batch.group import GROUP_KIND, GroupPermutation, group_level
from roidask.batch.manifest import SubjectSpec, check_subject_files
from roidask.cluster import active_client
from roidask.exceptions import OutputError, RoidaskError
from roidask.io.conversions import as_image
from roidask.io.nifti import NiftiSource
from roidask.onepass import USABLE_FRACTION, WORKER_BASE_BYTES, MemoryPlan, memory_plan
from roidask.outputs.provenance import input_records, utc_now
from roidask.outputs.study import GROUP_NODE, STUDY_NAME, Study, SubjectNode
from roidask.outputs.writer import SUBJECT_KIND
from roidask.pipeline import PipelineParams, mask_values
from roidask.runner import run_subject

__all__ = [
    "BATCH_COLUMNS",
    "BATCH_KIND",
    "check_batch_folder",
    "fingerprint",
    "prepare_batch_folder",
    "run_batch",
]

#: Columns of ``batch.tsv``.
BATCH_COLUMNS = ("subject", "status", "wall_s", "n_rois", "out", "error")
#: Kind recorded in the ownership marker of a batch folder.
BATCH_KIND = "batch"


def fingerprint(spec: SubjectSpec, params: PipelineParams) -> tuple[str, list[dict]]:
    """Hash of the parameters and input checksums that decide a subject's outputs."""
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


def _study_has(study: Study | None, spec: SubjectSpec, digest: str) -> bool:
    """The subject's study node is complete with ``digest`` (and is published), or no study."""
    if study is None:
        return True
    if not study.has(spec.out_name, digest):
        return False
    study.publish(spec.out_name, fingerprint=digest)  # a driver killed before publishing it
    return True


def _study_node(study: Study | None, spec: SubjectSpec, digest: str) -> SubjectNode | None:
    """The node the subject's run writes, hidden from readers until it is published."""
    if study is None:
        return None
    study.unpublish(spec.out_name)
    return study.node(spec.out_name, subject=spec.subject, fingerprint=digest)


def check_batch_folder(out_dir: str | os.PathLike, specs: list[SubjectSpec]) -> Path:
    """Check that a batch may write ``out_dir`` (before any data is read; writes nothing).

    A new folder (or an empty one) will become a roidask batch folder; an existing
    one must be one already. Every subject's output folder (and ``group/``) that
    exists must be roidask's (:func:`roidask._atomic.check_destination`), and no
    input of any subject may lie in one of them.

    Raises
    ------
    OutputError
        The parent is missing or read-only, the folder is not roidask's, a subject's
        folder holds files roidask did not write, or an input lies in an output folder.
    """
    out = Path(out_dir)
    inputs = [p for spec in specs for p in spec.files]
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"out {out}: is a file; expected a batch folder", param="out")
    if not out.exists():
        check_destination(out, param="out", inputs=inputs)
    elif any(out.iterdir()):
        marker = read_marker(out)
        if marker is None and not (out / "batch.tsv").is_file():
            raise OutputError(
                f"out {out}: exists and is not a roidask batch folder (no {MARKER}); choose an "
                "empty or new folder",
                param="out",
            )
        if marker is not None and marker["kind"] not in (BATCH_KIND, None):
            raise OutputError(
                f"out {out}: is a roidask {marker['kind']} folder, not a batch folder",
                param="out",
            )
    if out.is_dir():
        targets = [(out / spec.out_name, SUBJECT_KIND) for spec in specs]
        for target, kind in [*targets, (out / "group", GROUP_KIND)]:
            check_destination(target, param="out", inputs=inputs, overwrite=True, kind=kind)
    return out


def prepare_batch_folder(out_dir: str | os.PathLike, specs: list[SubjectSpec]) -> Path:
    """Check the batch folder (:func:`check_batch_folder`), then create and mark it."""
    out = check_batch_folder(out_dir, specs)
    try:
        out.mkdir(exist_ok=True)
        if read_marker(out) is None:
            record = {
                "written_by": "roidask",
                "kind": BATCH_KIND,
                "created_utc": utc_now(),
                "files": [],
            }
            write_text(out / MARKER, json.dumps(record, indent=2) + "\n")
    except PermissionError:
        raise OutputError(
            f"out {out}: cannot write into {out.parent} (permission denied)", param="out"
        ) from None
    return out


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
            budgets.append((limit * USABLE_FRACTION - WORKER_BASE_BYTES) / nthreads)
    return (min(budgets) if budgets else None), threads


def _subject_plan(spec: SubjectSpec, budget: float | None, params: PipelineParams) -> MemoryPlan:
    if budget is None:
        return MemoryPlan(None, None)
    try:
        sources = [NiftiSource.open(p, ndim=4, param="bold") for p in spec.bold]
        mask = mask_values(as_image(spec.mask, ndim=3, param="mask_img"))
    except (RoidaskError, OSError):
        return MemoryPlan(None, None)  # run_subject reports the bad file
    return memory_plan(
        sources,
        mask,
        budget,
        fwhm=params.fwhm,
        dilation_iterations=params.dilation_iterations,
    )


def _write_status(out_dir: Path, rows: dict[str, dict], lock: threading.Lock) -> None:
    with lock:
        frame = pd.DataFrame([rows[k] for k in sorted(rows)], columns=list(BATCH_COLUMNS))
        write_text(out_dir / "batch.tsv", frame.to_csv(sep="\t", index=False))


def run_batch(
    specs: list[SubjectSpec],
    out_dir: str | os.PathLike,
    *,
    params: PipelineParams | None = None,
    chunks=None,
    plots: bool = True,
    max_concurrent: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    study: bool = True,
    permutation: GroupPermutation | None = None,
) -> pd.DataFrame:
    """Run the ROI pipeline for every subject, concurrently, then the group level.

    Must be called with a ``distributed`` client active (see
    :func:`roidask.cluster.get_client`); subjects share it.

    Parameters
    ----------
    specs : list of SubjectSpec
    out_dir : path
        Batch folder: ``sub-<id>/`` per subject, ``batch.tsv``, ``group/`` and
        ``study.zarr``.
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
    study : bool
        Also write every subject's results, and the group level, into the study
        store ``out_dir/study.zarr`` (:mod:`roidask.outputs.study`).
    permutation : GroupPermutation, optional
        Add a sign-flip permutation test of the subjects' t maps to the group level
        (:func:`roidask.batch.group.group_level`).

    Returns
    -------
    pandas.DataFrame
        The rows of ``batch.tsv``: subject, status (done, skipped, failed),
        wall_s, n_rois, out, error.

    Raises
    ------
    UnreadableFileError, CorruptFileError
        An input file is missing, unreadable or empty (nothing is written).
    OutputError
        ``out_dir`` cannot be written (see :func:`prepare_batch_folder`).
    """
    max_concurrent = check_optional_int(max_concurrent, "max_concurrent", minimum=1)
    params = params or PipelineParams()
    check_subject_files(specs)
    out_dir = prepare_batch_folder(out_dir, specs)
    study_store = Study(out_dir / STUDY_NAME, param="out") if study else None
    if log is None:

        def log(line: str) -> None:
            if progress:
                print(line, file=sys.stderr, flush=True)

    lock = threading.Lock()
    rows: dict[str, dict] = {}
    open_files = OpenFiles()

    def one(spec: SubjectSpec) -> dict:
        start = time.perf_counter()
        out = out_dir / spec.out_name
        row = {"subject": spec.subject, "out": str(out), "error": "", "n_rois": "", "wall_s": ""}
        files = [*spec.bold, spec.mask]
        open_files.acquire(files)
        try:
            clean_stale(out)
            digest, inputs = fingerprint(spec, params)
            if _is_complete(out, digest) and _study_has(study_store, spec, digest):
                prov = json.loads((out / "provenance.json").read_text())
                row.update(status="skipped", n_rois=prov.get("n_rois", ""))
                return row
            extra: dict = {"fingerprint": digest, "subject": spec.subject}
            plan = _subject_plan(spec, budget, params)
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
                study_node=_study_node(study_store, spec, digest),
            )
            if study_store is not None:
                study_store.publish(spec.out_name, fingerprint=digest)
            row.update(status="done", n_rois=result.n_rois)
        except (RoidaskError, OSError) as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # an unexpected bug must not stop the other subjects
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            row.update(status="failed", error=f"unexpected error: {tb}")
        finally:
            open_files.release(files)
        row["wall_s"] = round(time.perf_counter() - start, 2)
        return row

    client = active_client()
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
    group_done = False
    if len(done) >= 2:
        try:
            group_level(done, out_dir / "group", study=study_store, permutation=permutation)
            group_done = True
        except RoidaskError as exc:
            log(f"group level: failed ({exc})")
            write_text(group_error, f"{exc}\n")
    if study_store is not None and not group_done:
        study_store.unpublish(GROUP_NODE)  # no group level of these subjects
    return pd.DataFrame([rows[s.subject] for s in specs], columns=list(BATCH_COLUMNS))
