"""Running many subjects on one dask cluster: granularity, resume, memory fitting, progress.

Each subject runs the ROI pipeline exactly as ``roidask run`` and its outputs are
written atomically into ``DIR/sub-<id>/``. How a batch spreads over the
cluster is its *granularity*:

* ``"subject"``: one task per subject. The worker that takes it runs the whole
  subject as ``roidask run`` does in its own process: dask's threaded scheduler
  inside the worker, BLAS on one thread, the ``.nii.gz`` decoded once in time
  order, no temporary store, the outputs written by the worker. A worker of
  ``n`` threads runs ``n`` subjects at once, each on one thread (a subject gets
  more of its worker's threads when the batch has fewer subjects than the
  cluster has threads). Tasks return a small status row: this process never
  holds a subject's data. Imports and thread pools are set up once per worker
  process, then reused by every subject it runs.
* ``"block"``: each subject's pass is one graph of blocks of volumes spread over
  all the workers, driven from this process (one thread per subject in flight,
  by default as many as the cluster has worker threads, 2 to 8). One subject can
  use every worker, but each worker process reading blocks of a ``.nii.gz``
  decodes the file from its start, and the pass's partial results (the ROI box
  of all volumes among them) move from worker to worker: a subject takes about
  twice as long as with ``"subject"``, even alone on two workers (BENCHMARKS.md).
* ``"auto"`` (default): ``"subject"``; a subject whose pass does not fit a worker
  thread's memory with the default blocks (the pass's memory model,
  :func:`roidask.onepass.memory_plan`, asked by the worker that took it) runs as
  ``"block"`` instead, with the blocks the model picks (it may also drop the ROI
  box). With ``"subject"`` such a subject runs in its worker with those blocks.

Worker memory is bounded by the blocks in flight, not by the number of subjects:
the read handles a worker caches for a subject's NIfTI files are dropped when
the subject is done. Without a ``distributed`` client, subjects run in this
process's threads (the granularity does not apply).

Before anything is written, every input file of every subject must exist and be
readable and non-empty, and every existing output folder must be roidask's.
Every subject's results also go into one study store, ``DIR/study.zarr``
(:mod:`roidask.outputs.study`): the subject's run (on its worker) writes its node,
this driver publishes it once complete; a published node that must be rewritten
is unpublished by the driver first (the task hands the subject back to do so). The
root of the store is rewritten for groups of subjects, not for each: finished
subjects are published together, and subjects handed back to be rewritten (a rerun
with other parameters) are hidden together, then run again.

Resume: a subject whose ``provenance.json`` records the same fingerprint
(parameters and input checksums), and whose study node too, is skipped; the
others are redone. A failing
subject (bad file, ...) is reported in ``DIR/batch.tsv`` and does not stop the
others. A lost scheduler stops the batch (a :class:`ClusterError`): the subjects not
done are left pending. So does an interruption (Ctrl-C, SIGTERM: ``KeyboardInterrupt``),
after which no subject and no write of one starts, here or on a worker, the writes under
way end (:class:`_Writes`), and a subject completed whose row had not reached this driver
(its worker finished it just before) is recorded as done from its folder and study node
(:meth:`_Batch.stop`). A worker lost mid-batch only costs time: distributed runs its subject
tasks again on other workers (or recomputes its blocks), the next attempt
removes what the lost one left half-written, and the outputs are the same bits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import io
import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from roidask import _progress
from roidask._atomic import (
    MARKER,
    FolderLock,
    InputIndex,
    changed_since_commit,
    check_destination,
    check_not_input,
    clean_stale,
    read_marker,
    write_text,
)
from roidask._malloc import reuse_freed_buffers
from roidask._pool import thread_pool
from roidask._validate import check_bool, check_choice, check_optional_int
from roidask.batch.files import OpenFiles
from roidask.batch.group import (
    GROUP_KIND,
    PERMUTATION_RECORD,
    GroupPermutation,
    group_is_current,
    group_level,
)
from roidask.batch.manifest import (
    CHECK_THREADS,
    SubjectSpec,
    check_specs,
    check_subjects,
    current_subject,
    subject_context,
)
from roidask.cluster import active_client, connection_lost, describe_client, lost_connection_error
from roidask.exceptions import (
    ClusterError,
    InvalidParameterError,
    OutputError,
    RoidaskError,
    RoidaskWarning,
    StaleResultsWarning,
    StudyNodeWarning,
)
from roidask.io.conversions import as_image
from roidask.io.labels import volume_labels
from roidask.io.labels import warnings_shown as labels_warnings_shown
from roidask.io.locations import (
    Location,
    PathOrURL,
    RemoteLease,
    S3Path,
    absolute,
    as_location,
    changed_files,
    check_output,
    check_writable,
    file_states,
    folder_marker,
    output_lock,
    remote_marker,
    remove_files,
    write_file,
)
from roidask.io.nifti import NiftiSource, release_handles
from roidask.io.store_read import CHUNK_GRIDS_ATTR, missing_chunks
from roidask.onepass import USABLE_FRACTION, WORKER_BASE_BYTES, MemoryPlan, memory_plan
from roidask.outputs.provenance import input_records, utc_now
from roidask.outputs.study import (
    FINGERPRINT_ATTR,
    GROUP_NODE,
    STUDY_NAME,
    Study,
    SubjectNode,
    check_node_writable,
    check_nodes_writable,
    check_study,
    node_attrs,
)
from roidask.outputs.writer import SUBJECT_KIND
from roidask.pipeline import (
    PipelineParams,
    compute_here,
    mask_values,
    n_rois_text,
    params_attrs,
)
from roidask.runner import run_subject

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

__all__ = [
    "BATCH_COLUMNS",
    "BATCH_KIND",
    "GRANULARITIES",
    "check_batch_folder",
    "fingerprint",
    "prepare_batch_folder",
    "run_batch",
]

#: Columns of ``batch.tsv``.
BATCH_COLUMNS = ("subject", "status", "wall_s", "n_rois", "out", "error")
#: Kind recorded in the ownership marker of a batch folder.
BATCH_KIND = "batch"
#: Values of ``run_batch(granularity=...)`` (see the module's documentation).
GRANULARITIES = ("auto", "subject", "block")
#: ``batch.tsv`` is rewritten at most this often (seconds) while subjects finish.
STATUS_INTERVAL_S = 0.5

# Status of a row sent back by a subject task whose pass does not fit its worker.
_TO_BLOCK = "to-block"
# Status of a row sent back by a subject whose published study node must be rewritten.
_TO_UNPUBLISH = "to-unpublish"
# Status of the row of a subject whose task was cancelled with the scheduler's connection.
_LOST = "lost"
#: While subjects wait, the scheduler's workers are counted this often (seconds) ...
WORKERS_CHECK_S = 10.0
#: ... and a scheduler without workers is said to be so after this long, then as often.
NO_WORKER_SAY_S = 60.0
#: Tries to rewrite a study's root to hide nodes when nothing else is left to do,
#: before their subjects fail (a rewrite that fails meanwhile is tried again later).
HIDE_TRIES = 3
_DEFAULT_PLAN = MemoryPlan(None, None)


#: How several labels files make runs (:func:`roidask.io.labels.volume_labels`): version 2
#: counts files that number their runs alike as runs of their own. In the fingerprint of a
#: subject with several labels files, so that outputs made by version 1 are made again.
_LABELS_RUNS_VERSION = 2


def fingerprint(spec: SubjectSpec, params: PipelineParams) -> tuple[str, list[dict]]:
    """Hash of the parameters and input checksums that decide a subject's outputs.

    Parameters
    ----------
    spec : SubjectSpec
        The subject, whose input files' checksums count
        (:func:`roidask.outputs.provenance.input_records`).
    params : PipelineParams
        The analysis parameters.

    Returns
    -------
    digest : str
        SHA-256 (hex) of the parameters and the inputs' checksums: a subject whose
        folder records it is complete with these inputs and parameters.
    inputs : list of dict
        The input records (path, size in bytes, checksum), for provenance.
    """
    inputs = input_records([*spec.bold, *spec.labels, spec.mask])
    checksums = [r.get("sha256") or r.get("etag") or r.get("etags_sha256") for r in inputs]
    record: dict = {"params": params.to_dict(), "inputs": checksums}
    if len(spec.labels) > 1:
        record["labels_runs"] = _LABELS_RUNS_VERSION
    payload = json.dumps(record, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest(), inputs


def _is_complete(
    out: Path | S3Path, digest: str, marker: dict | None, *, plots: bool = False
) -> bool:
    """``out`` holds a finished run with fingerprint ``digest`` and all its outputs, each
    as ``marker`` (``out``'s, read once by the caller) recorded it (:func:`changed_files`);
    with ``plots``, its figures too (a run made with ``--no-plots`` is not one with
    figures)."""
    if isinstance(out, S3Path) and not (marker or {}).get("complete"):
        return False  # an upload not finished (pending marker) or never started
    if not (out / MARKER).is_file():
        return False  # its marker (the record of its files) gone
    prov = out / "provenance.json"
    if not prov.is_file():
        return False
    try:
        record = json.loads(prov.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("fingerprint") != digest:
        return False
    outputs = record.get("outputs", [])
    if not all((out / name).exists() for name in outputs):
        return False
    if plots and not any(str(name).startswith("figures/") for name in outputs):
        return False
    return not changed_files(out, marker)  # a file gone since: not complete


def check_batch_folder(
    out_dir: PathOrURL, specs: list[SubjectSpec], *, study: bool = True
) -> Location:
    """Check that a batch may write ``out_dir`` (before any data is read; writes nothing).

    A new folder (or an empty one) will become a roidask batch folder; an existing
    one must be one already. Every subject's output folder (and ``group/``) that
    exists must be roidask's (:func:`roidask._atomic.check_destination`), and no
    input of any subject may lie in one of them. ``study``: the batch writes the
    study store, which, if there, must be a readable roidask study; a batch that does
    not write it must not leave an earlier one out of date. No other batch or group
    level may be writing the folder or its study store (a local folder's lock is tried).

    Parameters
    ----------
    out_dir : path or ``s3://`` URL
        The batch folder.
    specs : list of SubjectSpec
        The batch's subjects, at least one (their output folders and inputs).
    study : bool
        The batch writes the study store ``out_dir/study.zarr``.

    Returns
    -------
    Path or S3Path
        ``out_dir``, absolute.

    Raises
    ------
    RoidaskTypeError, ManifestError
        ``specs`` is not a non-empty list of :class:`SubjectSpec`.
    OutputError
        The parent is missing or read-only, the folder is not roidask's, a subject's
        folder holds files roidask did not write, an input lies in an output folder, the
        study store is damaged or would be left out of date, or another command is
        writing the folder.
    """
    specs = check_specs(specs)
    study = check_bool(study, "study")
    out = absolute(as_location(out_dir, "out_dir"))  # workers write in it from their folders
    inputs = InputIndex(p for spec in specs for p in spec.files)  # checked against every folder
    _check_study_of(out, study, [spec.out_name for spec in specs])
    if isinstance(out, S3Path):
        return _check_remote_batch_folder(out, specs, inputs)
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


def _check_study_of(out: Location, study: bool, nodes: list[str]) -> None:
    """:func:`check_batch_folder`'s checks of ``out/study.zarr`` (and of its ``nodes``, which
    the batch may rewrite, and the group node) and of the locks."""
    store = out / STUDY_NAME
    if not study and store.exists():
        raise OutputError(
            f"out {out}: holds {STUDY_NAME}, the study store of an earlier batch, which a "
            "batch that does not write it (study=False) would leave out of date; "
            f"let the batch write it, or remove {store} first",
            param="out",
        )
    if isinstance(out, Path):  # refused now rather than once a cluster has started
        for folder in (out, out / STUDY_NAME):
            if folder.is_dir() and not folder.is_symlink():
                FolderLock(folder, param="out").release()
    if study and store.exists():
        check_study(store, param="out")
        check_nodes_writable(store, [*nodes, GROUP_NODE])


def _check_remote_batch_folder(
    out: S3Path, specs: list[SubjectSpec], inputs: InputIndex
) -> S3Path:
    """:func:`check_batch_folder` for an ``s3://`` prefix."""
    RemoteLease.probe(out, param="out")  # refused now rather than once a cluster has started
    check_not_input(out, inputs, param="out")
    check_writable(out, "out")  # reachable and writable
    if out.is_dir():
        marker = remote_marker(out)
        if marker is None and not (out / "batch.tsv").is_file():
            raise OutputError(
                f"out {out}: exists and is not a roidask batch folder (no {MARKER}); choose an "
                "empty or new prefix",
                param="out",
            )
        if marker is not None and marker["kind"] not in (BATCH_KIND, None):
            raise OutputError(
                f"out {out}: is a roidask {marker['kind']} folder, not a batch folder",
                param="out",
            )
        targets = [(out / spec.out_name, SUBJECT_KIND) for spec in specs]
        for target, kind in [*targets, (out / "group", GROUP_KIND)]:
            check_output(target, param="out", inputs=inputs, overwrite=True, kind=kind)
    return out


def prepare_batch_folder(out_dir: PathOrURL, specs: list[SubjectSpec]) -> Location:
    """Check the batch folder (:func:`check_batch_folder`), then create and mark it."""
    return _mark_batch_folder(check_batch_folder(out_dir, specs))


def _mark_batch_folder(out: Location) -> Location:
    """Create checked batch folder ``out`` and write its marker (if not there yet)."""
    if isinstance(out, S3Path):
        if remote_marker(out) is None:
            record: dict = {"written_by": "roidask", "kind": BATCH_KIND, "created_utc": utc_now()}
            write_file(out / MARKER, json.dumps({**record, "files": []}, indent=2).encode())
        return out
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


# --------------------------------------------------------------------------- the cluster


def _thread_budget(memory_limit: float | None, nthreads: int) -> float | None:
    """Task memory (bytes) of one worker thread for the pass's memory model; None: no limit."""
    if not memory_limit:
        return None
    return (memory_limit * USABLE_FRACTION - WORKER_BASE_BYTES) / max(1, nthreads)


@dataclass(frozen=True)
class _Cluster:
    """What a batch needs to know of the cluster behind the active client."""

    budget: float | None  # smallest task memory per worker thread (None: no limit)
    threads: int  # worker threads, all workers together
    in_process: bool  # the workers are threads of this process
    address: str


def _cluster_resources(client) -> _Cluster:
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # pragma: no cover - distributed without n_workers=
        info = client.scheduler_info()
    budgets, threads = [], 0
    for w in info.get("workers", {}).values():
        nthreads = max(1, int(w.get("nthreads") or 1))
        threads += nthreads
        budget = _thread_budget(w.get("memory_limit") or 0, nthreads)
        if budget is not None:
            budgets.append(budget)
    address = client.scheduler.address
    in_process = address.startswith("inproc://")
    if not in_process and threads:
        try:
            in_process = os.getpid() in client.run(os.getpid).values()
        except Exception:  # a worker lost meanwhile: asked again by the tasks
            pass
    return _Cluster(min(budgets) if budgets else None, threads, in_process, address)


def _granularity(granularity: str, cluster: _Cluster | None) -> str:
    """``"subject"``, ``"block"`` or ``"local"`` (no cluster: this process's threads)."""
    if cluster is None:
        return "local"
    if cluster.in_process:
        if granularity == "subject":
            raise InvalidParameterError(
                "granularity: 'subject' runs each subject inside a worker process, but the "
                "workers of this cluster are threads of this process (processes=False); "
                "expected 'auto' or 'block', got 'subject'",
                param="granularity",
            )
        return "block"
    return "subject" if granularity == "auto" else granularity


# --------------------------------------------------------------------------- one subject


@dataclass(frozen=True)
class _Job:
    """Everything one subject's run needs (sent to a worker with ``"subject"``)."""

    spec: SubjectSpec
    out: Location
    params: PipelineParams
    chunks: object
    plots: bool
    budget: float | None  # task memory per thread for the memory plan
    scheduler: str  # recorded in provenance.json
    fit_only: bool = False  # give the subject back (to block) if it does not fit
    digest: str | None = None  # fingerprint already computed (a subject given back)
    inputs: list[dict] | None = None
    study: Location | None = None  # the study store the subject's node goes to
    published: bool = False  # the study lists the node: to rewrite it, hand it back first
    batch_id: str = ""  # recorded in provenance.json: outputs this batch wrote are its own


def _row(spec: SubjectSpec, out: Location, **values) -> dict:
    row = {"subject": spec.subject, "status": "", "wall_s": "", "n_rois": "", "out": str(out)}
    row["error"] = ""
    row.update(values)
    return row


def _subject_plan(spec: SubjectSpec, budget: float | None, params: PipelineParams) -> MemoryPlan:
    if budget is None:
        return _DEFAULT_PLAN
    try:
        sources = [NiftiSource.open(p, ndim=4, param="bold") for p in spec.bold]
        mask = mask_values(as_image(spec.mask, ndim=3, param="mask_img"))
    except (RoidaskError, OSError):
        return _DEFAULT_PLAN  # run_subject reports the bad file
    return memory_plan(
        sources,
        mask,
        budget,
        fwhm=params.fwhm,
        dilation_iterations=params.dilation_iterations,
        moment_groups=_moment_groups(spec, sources, params),
    )


def _moment_groups(spec: SubjectSpec, sources, params: PipelineParams) -> int:
    """Moment groups of the subject's pass (:mod:`roidask.ops.folds`): 1, 2, or its runs."""
    if params.roi_definition == "same":
        return 1
    if params.roi_definition == "split-half":
        return 2
    try:  # leave-one-run-out: a group per run (the labels file is small)
        runs = volume_labels(
            list(spec.labels),
            n_volumes_per_run=[s.n_volumes for s in sources],
            tr_s=sources[0].tr_s,
        )["run"]
    except (RoidaskError, OSError):
        return max(len(spec.bold), 2)  # run_subject reports the bad file
    return max(int(runs.nunique()), 2)


def _node_complete(job: _Job, digest: str, marker: dict | None) -> bool:
    """The subject's study node is complete with ``digest`` (published or not), or no study.

    Complete: its ``zarr.json`` says so, and every chunk of its inventory is there (a
    listing, no chunk read): a node with a deleted chunk, which plain xarray would read
    as NaN, is written again rather than skipped.
    """
    if job.study is None:
        return True
    attrs = node_attrs(job.study, job.out.name)
    if attrs is None or attrs.get(FINGERPRINT_ATTR) != digest:
        return False
    node = job.study / job.out.name
    if missing_chunks(node, attrs.get(CHUNK_GRIDS_ATTR) or {}):
        return False
    return _same_sizes_as_folder(node, marker)


def _same_sizes_as_folder(node: Location, marker: dict | None) -> bool:
    """A node holds the bytes of its subject's ``results.zarr`` (but its ``zarr.json``):
    every file of the node has the size the folder's ``marker`` recorded for it, so a
    truncated chunk (which a listing of names misses) is written again, not skipped."""
    recorded = (marker or {}).get("bytes")
    if not isinstance(recorded, dict):
        return True  # a folder written before sizes were recorded
    prefix = "results.zarr/"
    wanted = {k[len(prefix) :]: n for k, n in recorded.items() if k.startswith(prefix)}
    wanted.pop("zarr.json", None)  # the node's own: its attributes differ
    # sizes only: the node's files are other copies (no times, ETags of their own), and
    # reading every chunk of every node at each rerun is what the inventory avoids
    return not changed_since_commit({"bytes": wanted}, file_states(node, wanted))


def _finished_row(job: _Job, digest: str | None = None) -> dict | None:
    """The status row of a subject whose folder (and study node) hold a complete run with
    fingerprint ``digest``: ``done`` if this batch wrote it (a run on a worker lost before
    it reported), else ``skipped``; None if there is none.

    Without ``digest`` (the inputs are not hashed again), only a run this batch wrote is
    taken, with the fingerprint its ``provenance.json`` records (a subject that completed
    as the batch was stopped); its ``wall_s`` is the run's, from its provenance.
    """
    out = job.out
    try:
        prov = json.loads((out / "provenance.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(prov, dict):
        return None
    ours = bool(job.batch_id) and prov.get("batch_id") == job.batch_id
    wall_s: object = ""
    if digest is None:
        digest = prov.get("fingerprint")
        if not ours or not isinstance(digest, str):
            return None
        wall_s = _run_wall_s(prov)
    marker = folder_marker(out)  # read once for both checks (a GET in S3)
    if not _is_complete(out, digest, marker, plots=job.plots):
        return None
    if not _node_complete(job, digest, marker):
        return None
    try:
        n_rois = _n_rois_cell(prov["fold_n_rois"] if "fold_n_rois" in prov else prov["n_rois"])
    except (KeyError, TypeError, ValueError):  # not roidask's record
        n_rois = ""
    status = "done" if ours else "skipped"
    return _row(job.spec, out, status=status, wall_s=wall_s, n_rois=n_rois, _digest=digest)


def _n_rois_cell(counts: int | list[int]) -> int | str:
    """``batch.tsv``'s ``n_rois`` of a subject: its number of ROIs, or with folds the
    number of each fold, ``"3;4"`` (:func:`roidask.pipeline.n_rois_text`)."""
    return n_rois_text(counts) if isinstance(counts, list) else int(counts)


def _run_wall_s(prov: dict) -> float | str:
    """A run's wall time (s) from its provenance record (to the second); "" if unknown."""
    try:
        started = datetime.datetime.fromisoformat(prov["started_utc"])
        finished = datetime.datetime.fromisoformat(prov["finished_utc"])
    except (KeyError, TypeError, ValueError):
        return ""
    return round((finished - started).total_seconds(), 2)


class _NotWanted(Exception):
    """The batch that sent a subject's task is gone: its outputs are not written."""


_default_showwarning = warnings.showwarning


def _show_subject_warning(message, category, filename, lineno, file=None, line=None):
    """How a worker shows a roidask warning: one line naming the subject, as ``roidask``
    shows its own (not Python's default, with a source line and no subject)."""
    if issubclass(category, RoidaskWarning):
        subject = current_subject()
        where = f"subject {subject!r}: " if subject is not None else ""
        print(f"roidask: warning: {where}{message}", file=sys.stderr, flush=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


class _Writes:
    """The subjects of this process writing their outputs, by batch.

    A subject's run asks before each write (:meth:`run`: its ``before_write``); it is
    refused once its batch is stopped, and otherwise counts as writing until the run
    ends. A batch stopped (Ctrl-C, SIGTERM) calls :meth:`stop` in each process running
    its subjects (this one, its workers): no write of it starts any more and those under
    way end, before the batch reads which subjects are complete for ``batch.tsv``
    (:meth:`_Batch.record_stopped`).
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._writing: dict[str, int] = {}  # batch id -> runs writing
        self._stopped: set[str] = set()  # batch ids (a few bytes per stopped batch)

    @contextlib.contextmanager
    def run(self, batch_id: str) -> Iterator[Callable[[], None]]:
        """A subject's run for batch ``batch_id``: yields the check made before each write
        (raises :class:`_NotWanted` once the batch is stopped)."""
        entered = False

        def may_write() -> None:
            nonlocal entered
            with self._changed:
                if batch_id in self._stopped:
                    raise _NotWanted("not written: its batch was stopped")
                if not entered:
                    self._writing[batch_id] = self._writing.get(batch_id, 0) + 1
                    entered = True

        try:
            yield may_write
        finally:
            if entered:
                with self._changed:
                    self._writing[batch_id] -= 1
                    if not self._writing[batch_id]:
                        del self._writing[batch_id]
                    self._changed.notify_all()

    def stop(self, batch_id: str, timeout: float) -> bool:
        """Refuse the writes of batch ``batch_id`` from now on, and wait (at most ``timeout``
        seconds) for those under way to end; True if none is left."""
        with self._changed:
            self._stopped.add(batch_id)
            return self._changed.wait_for(lambda: batch_id not in self._writing, timeout)


_WRITES = _Writes()
#: A stopped batch waits at most this long (seconds) for its subjects' writes under way.
STOP_WRITES_WAIT_S = 10.0


async def _stop_writes_here(batch_id: str, timeout: float) -> bool:
    """:meth:`_Writes.stop` in a worker process (``client.run``), off its event loop."""
    return await asyncio.to_thread(_WRITES.stop, batch_id, timeout)


def _stop_batch_writes(batch_id: str, client: Client | None) -> None:
    """Stop batch ``batch_id``'s writes: :meth:`_Writes.stop` in this process and, with
    ``client``, on every worker of its cluster at once. Returns once all have answered
    (no write of the batch under way any more), at most :data:`STOP_WRITES_WAIT_S` and a
    second later."""
    asked = None
    if client is not None:

        def ask() -> None:
            with contextlib.suppress(Exception):  # a worker gone: its writes with it
                client.run(_stop_writes_here, batch_id, STOP_WRITES_WAIT_S, on_error="ignore")

        asked = threading.Thread(target=ask, name="roidask-stop", daemon=True)
        asked.start()
    deadline = time.monotonic() + STOP_WRITES_WAIT_S + 1.0
    _WRITES.stop(batch_id, STOP_WRITES_WAIT_S)
    if asked is not None:
        asked.join(max(0.0, deadline - time.monotonic()))


def _run_one(job: _Job, wanted: Callable[[], bool] | None = None) -> dict:
    """Run one subject where this is called; a status row (never raises for a subject).

    ``wanted``: asked before each write (a worker's task: whether its batch still wants
    it); a batch stopped meanwhile (:class:`_Writes`) writes nothing more either.
    """
    # its warnings name it; those of its labels the batch's input checks showed already
    with (
        subject_context(job.spec.subject),
        labels_warnings_shown(),
        _WRITES.run(job.batch_id) as may_write,
    ):

        def before_write() -> None:
            if wanted is not None and not wanted():
                raise _NotWanted("not written: its batch was cancelled or lost its client")
            may_write()

        return _run_subject_row(job, before_write)


def _run_subject_row(job: _Job, before_write: Callable[[], None]) -> dict:
    """:func:`_run_one`, in the subject's context."""
    start = time.perf_counter()
    spec, out = job.spec, job.out
    row = _row(spec, out)
    try:
        if isinstance(out, Path):
            clean_stale(out)
        digest, inputs = job.digest, job.inputs
        if (out / "provenance.json").is_file():  # done before? (hashes the inputs)
            if digest is None:
                digest, inputs = fingerprint(spec, job.params)
            finished = _finished_row(job, digest)
            if finished is not None:
                return finished
        plan = _subject_plan(spec, job.budget, job.params)
        if job.fit_only and plan != _DEFAULT_PLAN:
            row.update(status=_TO_BLOCK, _digest=digest, _inputs=inputs)
            return row
        if digest is None:
            digest, inputs = fingerprint(spec, job.params)
        if job.study is not None and job.published:
            row.update(status=_TO_UNPUBLISH, _digest=digest, _inputs=inputs)
            return row
        node = None
        if job.study is not None:
            check_node_writable(job.study / out.name)  # before out is replaced
            node = SubjectNode(job.study, out.name, spec.subject, digest)
        extra: dict = {
            "fingerprint": digest,
            "subject": spec.subject,
            "scheduler": job.scheduler,
            "batch_id": job.batch_id,
        }
        subject_chunks = job.chunks if job.chunks is not None else plan.chunks
        if job.chunks is None and plan.chunks is not None:
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
            params=job.params,
            chunks=subject_chunks,
            box_max_bytes=plan.box_max_bytes,
            plots=job.plots,
            overwrite=True,
            progress=False,
            inputs=list(inputs or []),
            extra_provenance=extra,
            before_write=before_write,
            study_node=node,
        )
        row.update(status="done", n_rois=_n_rois_cell(result.roi_counts()), _digest=digest)
    except _NotWanted as exc:
        row.update(status="failed", error=str(exc))
    except (RoidaskError, OSError) as exc:
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # an unexpected bug must not stop the other subjects
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        row.update(status="failed", error=f"unexpected error: {tb}")
    row["wall_s"] = round(time.perf_counter() - start, 2)
    return row


def _files(spec: SubjectSpec) -> list[Location]:
    """The NIfTI files of a subject whose read handles a process may cache."""
    return [*spec.bold, spec.mask]


# ----------------------------------------------------------- a subject inside a worker

# A worker process runs subjects in threads of its own (created once, reused): in
# them dask finds no worker, so anything a subject computes stays in this process
# (a task's own thread would hand dask.compute calls back to the cluster).
_WORKER_THREADS: dict[int, ThreadPoolExecutor] = {}  # by size (one, in practice)
_WORKER_LOCK = threading.Lock()
_WORKER_FILES = OpenFiles(release=release_handles)


def _worker_threads(n: int) -> ThreadPoolExecutor:
    """This worker process's ``n`` threads for subjects (its task threads: one each)."""
    with _WORKER_LOCK:
        pool = _WORKER_THREADS.get(n)
        if pool is None:
            pool = _WORKER_THREADS[n] = ThreadPoolExecutor(n, thread_name_prefix="roidask-subject")
        return pool


def _run_in_worker(job: _Job, threads: int, wanted: Callable[[], bool]) -> dict:
    files = _files(job.spec)
    _WORKER_FILES.acquire(files)
    try:
        with compute_here(threads):
            return _run_one(job, wanted)
    finally:
        _WORKER_FILES.release(files)


def _subject_task(job: _Job, threads: int) -> dict:
    """A dask task: one whole subject on the worker that runs it; returns its status row.

    ``threads``: threads each subject may use (at most the worker's). A subject
    computed after its batch is gone (the client killed or cancelled: the
    scheduler forgets the task) is not written.
    """
    from distributed import get_worker

    reuse_freed_buffers()  # a worker started by a nanny maps and unmaps every buffer
    warnings.showwarning = _show_subject_warning  # this process runs roidask's tasks
    worker = get_worker()
    key = worker.get_current_task()
    nthreads = max(1, int(worker.state.nthreads))
    threads = max(1, min(nthreads, threads))
    job = replace(
        job,
        budget=_thread_budget(worker.memory_manager.memory_limit, nthreads),
        scheduler=f"dask worker {worker.address}, {threads} thread{'s' if threads > 1 else ''}",
    )

    def wanted() -> bool:  # read from another thread: a snapshot is enough here
        task = worker.state.tasks.get(key)
        return task is not None and task.state != "cancelled"

    return _worker_threads(nthreads).submit(_run_in_worker, job, threads, wanted).result()


# --------------------------------------------------------------------------- progress


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _Report:
    """Subjects done / skipped / failed of ``total``, with an ETA.

    On a terminal (and with ``progress``): one bar on stderr, failures printed
    above it. Otherwise plain lines, one per finished subject: to ``log`` if
    given, else to stderr with ``progress``.
    """

    def __init__(self, total: int, *, progress: bool, log: Callable[[str], None] | None):
        self.total = total
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.bar = _progress.Progress(total, "subjects", enabled=progress)
        if log is None and progress and not self.bar.enabled:

            def log(line: str) -> None:
                print(line, file=sys.stderr, flush=True)

        self.log = log
        self._start = time.perf_counter()

    def line(self, text: str) -> None:
        """A line for the log (and above the bar)."""
        if self.log is not None:
            self.log(text)
        self.bar.write(text)

    def summary(self) -> str:
        c = self.counts
        finished = sum(c.values())
        text = f"{finished}/{self.total}: done {c['done']}, failed {c['failed']}"
        if c["skipped"]:
            text += f", skipped {c['skipped']}"
        ran = c["done"] + c["failed"]
        left = self.total - finished
        if ran and left:
            eta = (time.perf_counter() - self._start) / ran * left
            text += f", ETA {_duration(eta)}"
        return text

    def finished(self, row: dict) -> None:
        self.counts[row["status"]] += 1
        what = row["status"]
        if row["error"]:
            what += f" ({row['error']})"
        elif row["status"] == "done":
            what += f" in {row['wall_s']} s"
        summary = self.summary()
        if self.log is not None:
            self.log(f"{row['subject']}: {what} [{summary}]")
        if row["status"] == "failed":
            self.bar.write(f"{row['subject']}: {what}")
        self.bar.update(1, note=summary)

    def tick(self) -> None:
        self.bar.update(0, note=self.summary())

    def close(self) -> None:
        self.bar.close()


class _StatusFile:
    """``batch.tsv``, rewritten (atomically) at most every :data:`STATUS_INTERVAL_S`."""

    def __init__(self, out_dir: Location, specs: list[SubjectSpec]):
        self.path = out_dir / "batch.tsv"
        self.rows = {s.subject: _row(s, out_dir / s.out_name, status="pending") for s in specs}
        self.order = [s.subject for s in specs]
        self._dirty, self._last = True, 0.0
        self.flush(force=True)

    def set(self, row: dict) -> None:
        self.rows[row["subject"]] = {k: row[k] for k in BATCH_COLUMNS}
        self._dirty = True

    def flush(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._dirty and (force or now - self._last >= STATUS_INTERVAL_S):
            frame = self.table()  # in the manifest's order, as the group level takes them
            write_file(self.path, frame.to_csv(sep="\t", index=False).encode())
            self._dirty, self._last = False, now

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([self.rows[s] for s in self.order], columns=list(BATCH_COLUMNS))


# --------------------------------------------------------------------------- the batch


def run_batch(
    specs: list[SubjectSpec],
    out_dir: PathOrURL,
    *,
    params: PipelineParams | None = None,
    chunks=None,
    plots: bool = True,
    max_concurrent: int | None = None,
    granularity: str = "auto",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    study: bool = True,
    permutation: GroupPermutation | None = None,
    check_inputs: bool = True,
) -> pd.DataFrame:
    """Run the ROI pipeline for every subject, concurrently, then the group level.

    Runs on the active ``distributed`` client (see
    :func:`roidask.cluster.get_client`); without one, in this process's threads.

    Parameters
    ----------
    specs : list of SubjectSpec
        The subjects, at least one (:func:`roidask.batch.read_manifest`).
    out_dir : path
        Batch folder: ``sub-<id>/`` per subject, ``batch.tsv``, ``group/`` and
        ``study.zarr``.
    params : PipelineParams, optional
        Analysis parameters; None (the default): ``PipelineParams()``.
    chunks : dict or str, optional
        BOLD chunking, in voxels and volumes (results do not depend on it).
    plots : bool
        Write each subject's figures.
    max_concurrent : int, optional
        Subjects in flight at once (default: with ``"subject"`` granularity, as many
        as the workers take; with ``"block"``, the cluster's worker threads, at
        least 2 and at most 8, each subject's graph being parallel on its own).
    granularity : {"auto", "subject", "block"}
        One task per subject run whole by one worker, or each subject's blocks
        spread over all workers; ``"auto"``: per subject, by blocks for a subject
        that does not fit a worker thread's memory (see
        :mod:`roidask.batch.schedule`).
    progress : bool
        Report progress on stderr: a bar of subjects done / failed / total with an
        ETA on a terminal, one plain line per finished subject otherwise; the
        cluster and its dashboard address first.
    log : callable, optional
        Receives the plain progress lines (then not printed).
    study : bool
        Also write every subject's results, and the group level, into the study
        store ``out_dir/study.zarr`` (:mod:`roidask.outputs.study`).
    permutation : GroupPermutation, optional
        Add a sign-flip permutation test of the subjects' t maps to the group level
        (:func:`roidask.batch.group.group_level`).
    check_inputs : bool
        Check every subject's inputs first (:func:`check_subjects`); ``False`` when
        the caller has just done so with the same ``params`` and ``chunks``.

    Returns
    -------
    pandas.DataFrame
        The rows of ``batch.tsv``: subject, status (done, skipped, failed),
        wall_s, n_rois (with folds, each fold's count: ``"3;4"``), out, error.

    Raises
    ------
    RoidaskTypeError, ManifestError
        ``specs`` is not a non-empty list of :class:`SubjectSpec` (a batch of no
        subject is refused, as ``roidask batch`` refuses a manifest without subject
        rows; nothing is written).
    InvalidParameterError
        ``granularity`` is not one of :data:`GRANULARITIES`, or is ``"subject"``
        on a cluster whose workers are threads of this process.
    RoidaskError
        A subject's inputs are not valid: a file is missing, unreadable or empty, a
        header, labels file or mask is wrong, or they disagree with each other or
        with ``params`` (see :func:`check_subjects`; nothing is written).
    OutputError
        ``out_dir`` cannot be written (see :func:`check_batch_folder`).
    ClusterError
        The connection to the scheduler was lost: the subjects done so far are kept,
        those not done are ``pending`` in ``batch.tsv`` (a subject that a worker
        still finishes is found complete by the next batch); no group level.
    KeyboardInterrupt
        Ctrl-C, or SIGTERM in the ``roidask`` command: as a lost scheduler, once the
        writes under way have ended (at most :data:`STOP_WRITES_WAIT_S`); every subject
        complete by then is ``done`` in ``batch.tsv``.
    """
    specs = check_specs(specs)
    max_concurrent = check_optional_int(max_concurrent, "max_concurrent", minimum=1)
    check_choice(granularity, "granularity", GRANULARITIES)
    plots = check_bool(plots, "plots")
    progress = check_bool(progress, "progress")
    study = check_bool(study, "study")
    check_inputs = check_bool(check_inputs, "check_inputs")
    params = PipelineParams.of(params)
    client = active_client()
    cluster = _cluster_resources(client) if client is not None else None
    mode = _granularity(granularity, cluster)
    out_dir = check_batch_folder(out_dir, specs, study=study)  # reads no input
    if check_inputs:
        check_subjects(specs, params=params, chunks=chunks)  # reads headers, labels and masks
    _mark_batch_folder(out_dir)
    with contextlib.ExitStack() as held:
        lock = output_lock(out_dir, param="out")  # one batch at a time
        held.callback(lock.release)
        study_store = None
        if study:
            study_store = held.enter_context(Study(out_dir / STUDY_NAME, param="out"))
        report = _Report(len(specs), progress=progress, log=log)
        if progress or log is not None:
            where = describe_client(client) if client is not None else "this process's threads"
            how = {
                "subject": f"one task per subject (granularity {granularity})",
                "block": f"blocks of each subject over all workers (granularity {granularity})",
                "local": "granularity does not apply",
            }[mode]
            report.line(f"batch: {_progress.plural(len(specs), 'subject')}, {how}; {where}")
        status = _StatusFile(out_dir, specs)
        try:
            _Batch(specs, out_dir, params, chunks, plots, max_concurrent, granularity, mode,
                   client, cluster, status, report, study_store).run()  # fmt: skip
            if study_store is not None:  # the batch is whole: its subjects are the study's
                _hide_other_subjects(study_store, specs)
        finally:
            status.flush(force=True)
            report.close()

        table = status.table()
        done = [
            out_dir / s.out_name
            for s in specs
            if status.rows[s.subject]["status"] in ("done", "skipped")
        ]
        group_error = out_dir / "group-error.txt"
        if group_error.is_file():  # from an earlier run
            remove_files(out_dir, [group_error.name])
        group_done = False
        if len(done) >= 2 and group_is_current(
            done, out_dir / "group", study=study_store, permutation=permutation
        ):  # the same subjects' results: kept as it is (with a test `roidask group` added)
            group_done = True
            if study_store is not None and not study_store.is_published(GROUP_NODE):
                study_store.publish(GROUP_NODE)  # hidden as a subject's node was rewritten
            if report.log is not None:
                report.log("group level: of the same subjects' results as before: kept")
        elif len(done) >= 2:
            earlier = _added_permutation_test(out_dir / "group") if permutation is None else None
            try:
                group_level(done, out_dir / "group", study=study_store, permutation=permutation)
                group_done = True
                _stale_permutations(out_dir, earlier, "replaced with the group level")
            except RoidaskError as exc:
                if report.log is not None:
                    report.log(f"group level: failed ({exc})")
                write_file(group_error, f"{exc}\n".encode())
        if not group_done:  # no group level of these subjects: an earlier one is not theirs
            earlier = _added_permutation_test(out_dir / "group")
            _remove_group_folder(out_dir / "group")
            _stale_permutations(out_dir, earlier, "removed with the group level")
            if study_store is not None:
                study_store.unpublish(GROUP_NODE)
        lock.check()  # an s3:// lease that lapsed: another batch may have written meanwhile
        return table


def _added_permutation_test(group: Location) -> tuple[str, str] | None:
    """What the permutation test of an earlier group level in ``group`` did ("15
    permutations") and the ``roidask group`` options that make it again; None when it
    has none."""
    marker = folder_marker(group)
    if marker is None or marker.get("kind") != GROUP_KIND:
        return None
    if PERMUTATION_RECORD not in marker.get("files", []):
        return None
    try:
        record = json.loads((group / PERMUTATION_RECORD).read_text())
        params = record["parameters"]
        options = [f"--permutations {int(params['n_perm'])}"]
        if not params.get("two_sided", True):
            options.append("--one-sided")
        if params.get("cluster_threshold") is not None:
            options.append(f"--cluster-threshold {params['cluster_threshold']}")
        if params.get("connectivity", 6) != 6:
            options.append(f"--cluster-connectivity {params['connectivity']}")
        if params.get("seed", 0) != 0:
            options.append(f"--seed {params['seed']}")
        if params.get("mask") is not None:
            options.append(f"--mask {params['mask']}")
        return f"{int(record['n_perm'])} permutations", " ".join(options)
    except (OSError, ValueError, KeyError, TypeError):
        return "parameters unreadable", "--permutations N"


def _stale_permutations(out_dir: Location, earlier: tuple[str, str] | None, what: str) -> None:
    """Warn that the permutation test ``earlier`` (:func:`_added_permutation_test`) of the
    batch folder's group level, of other subjects' results, is gone (``what`` happened)."""
    if earlier is None:
        return
    warnings.warn(
        f"{out_dir / 'group'}: its permutation test ({earlier[0]}) was of other subjects' "
        f"results and is {what}; run `roidask group {out_dir} {earlier[1]}` again",
        StaleResultsWarning,
        stacklevel=3,
    )


def _group_inputs(group: Location) -> dict[str, str] | None:
    """The subjects of the group level in ``group`` and their results' fingerprints
    (``subjects.tsv``; empty where it records none); None without a group level."""
    marker = folder_marker(group)
    if marker is None or marker.get("kind") != GROUP_KIND:
        return None
    try:
        table = pd.read_csv(
            io.StringIO((group / "subjects.tsv").read_text()),
            sep="\t",
            dtype=str,
            keep_default_na=False,
        )
        return dict(zip(table["subject"], table["fingerprint"], strict=True))
    except (OSError, ValueError, KeyError):
        return {}


def _remove_group_folder(group: Location) -> None:
    """Remove the group folder an earlier batch wrote: the files its marker lists, the
    marker last (a kill in between leaves a folder roidask still knows as its own)."""
    marker = folder_marker(group)
    if marker is None or marker.get("kind") != GROUP_KIND:
        return
    remove_files(group, [f for f in marker.get("files", []) if f != MARKER])
    remove_files(group, [MARKER], prune=True)


def _hide_other_subjects(study: Study, specs: list[SubjectSpec]) -> None:
    """Hide the nodes of subjects an earlier batch published and this one does not have,
    once this batch is whole (one rewrite of the root, now): the study holds this batch's
    subjects, as its group level does. Their files stay (a later batch with them publishes
    them again); a node that cannot be hidden stays listed, with a warning."""
    names = {spec.out_name for spec in specs}
    others = sorted(n for n in study.listed() if n not in names and n != GROUP_NODE)
    if not others:
        return
    for name in others:
        study.unpublish_later(name)
    failed = study.flush(force=True)
    hidden = [n for n in others if n not in failed]
    if hidden:
        shown = ", ".join(hidden[:5]) + (f" and {len(hidden) - 5} more" if len(hidden) > 5 else "")
        warnings.warn(
            f"{study.path}: {len(hidden)} subject(s) of an earlier batch that this one does "
            f"not have are hidden from it ({shown}); their files are kept",
            StudyNodeWarning,
            stacklevel=4,
        )
    for name in [n for n in others if n in failed]:
        warnings.warn(
            f"{study.path}: node {name!r}, of a subject this batch does not have, is still "
            f"listed ({type(failed[name]).__name__}: {failed[name]})",
            StudyNodeWarning,
            stacklevel=4,
        )


class _Batch:
    """Subjects as worker tasks and/or block graphs driven from here, until all are done."""

    def __init__(
        self,
        specs: list[SubjectSpec],
        out_dir: Location,
        params: PipelineParams,
        chunks: object,
        plots: bool,
        max_concurrent: int | None,
        granularity: str,
        mode: str,
        client: Client | None,
        cluster: _Cluster | None,
        status: _StatusFile,
        report: _Report,
        study: Study | None,
    ):
        self.out_dir, self.params, self.chunks, self.plots = out_dir, params, chunks, plots
        self.mode, self.client, self.cluster = mode, client, cluster
        self.auto = granularity == "auto"
        self.status, self.report, self.study = status, report, study
        self.subjects = {spec.out_name: spec.subject for spec in specs}  # study node -> subject
        self.events: queue.Queue = queue.Queue()
        self.waiting = deque(specs)  # subjects not yet submitted
        threads = cluster.threads if cluster is not None else 0
        if mode == "subject":
            self.limit = max_concurrent or len(specs)
            # threads per subject: more than one when there are fewer subjects than threads
            self.threads = max(1, threads // max(1, len(specs)))
        else:
            self.limit = max_concurrent or max(1, min(len(specs), 8, max(2, threads)))
        self.block_threads = max_concurrent or max(1, min(8, max(2, threads)))
        # subjects that can compute at once (fewer in flight: a worker thread is idle)
        self.capacity = max(1, min(self.limit, threads)) if mode == "subject" else self.limit
        self.in_flight: dict = {}  # future -> spec
        self.stopped = False  # interrupted: :meth:`stop` done
        # when the workers were counted; since when there was none, when that was said
        self.workers_counted = time.monotonic()
        self.no_worker_since: float | None = None
        self.no_worker_said: float | None = None
        self.hiding: dict = {}  # node name -> (spec, kind, row): run again once hidden
        self.ready: deque = deque()  # (spec, kind, row) hidden, to run again first
        self.kinds: dict = {}  # future -> "task" (on a worker) or "block" (driven from here)
        self.pool: ThreadPoolExecutor | None = None
        self.open_files = OpenFiles()
        self.token = uuid.uuid4().hex[:8]
        self.batch_id = uuid.uuid4().hex  # in each subject's provenance.json
        # the parameters as a node's attributes hold them (JSON values)
        self.params_attrs = json.loads(json.dumps(params_attrs(params)))
        # the group level in the folder: of which subjects' results (None: none)
        self.group_inputs = _group_inputs(out_dir / "group")

    def job(self, spec: SubjectSpec, **values) -> _Job:
        if self.cluster is None:
            scheduler = "this process"
        else:
            scheduler = f"dask cluster {self.cluster.address} (blocks over all workers)"
        return _Job(
            spec=spec,
            out=self.out_dir / spec.out_name,
            params=self.params,
            chunks=self.chunks,
            plots=self.plots,
            budget=self.cluster.budget if self.cluster is not None else None,
            scheduler=scheduler,
            batch_id=self.batch_id,
            **{
                "study": self.study.path if self.study is not None else None,
                "published": self.study is not None and self.study.is_published(spec.out_name),
                **values,
            },
        )

    # -- submitting
    def submit_task(self, spec: SubjectSpec, **values) -> None:
        assert self.client is not None  # "subject" needs a cluster
        fut = self.client.submit(
            _subject_task,
            self.job(spec, fit_only=self.auto, **values),
            self.threads,
            key=f"roidask-subject-{self.token}-{spec.out_name}",
            pure=False,
        )
        self.in_flight[fut] = spec
        self.kinds[fut] = "task"
        fut.add_done_callback(self.events.put)

    def submit_block(self, job: _Job) -> None:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.block_threads, thread_name_prefix="roidask-block")
        fut = self.pool.submit(self.drive, job)
        self.in_flight[fut] = job.spec
        self.kinds[fut] = "block"
        fut.add_done_callback(self.events.put)

    def drive(self, job: _Job) -> dict:
        """A subject's block graphs, computed on the cluster (or here) from this thread."""
        files = _files(job.spec)
        self.open_files.acquire(files)
        try:
            return _run_one(job)
        finally:
            self.open_files.release(files)

    def submit_next(self) -> None:
        while self.ready and len(self.in_flight) < self.limit:
            self.resubmit(*self.ready.popleft(), hidden=True)
        while self.waiting and len(self.in_flight) < self.limit:
            spec = self.waiting.popleft()
            if self.other_parameters(spec):  # to rewrite: hidden first, without a probe task
                kind = "task" if self.mode == "subject" else "block"
                out = self.out_dir / spec.out_name
                self.resubmit(spec, kind, _row(spec, out, status=_TO_UNPUBLISH, _digest=None,
                                               _inputs=None))  # fmt: skip
                continue
            if self.mode == "subject":
                self.submit_task(spec)
            else:
                self.submit_block(self.job(spec))

    def other_parameters(self, spec: SubjectSpec) -> bool:
        """The subject's published node holds the results of other analysis parameters,
        so it is to be rewritten whatever its inputs (a task would hash the inputs only to
        hand the subject back). False when unknown: the subject's task finds out."""
        if self.study is None or not self.study.is_published(spec.out_name):
            return False
        attrs = self.study.attrs_when_opened(spec.out_name)  # the root's copy: no read
        if attrs is None:
            return False
        return any(k in attrs and attrs[k] != v for k, v in self.params_attrs.items())

    # -- results
    def row_of(self, fut, spec: SubjectSpec) -> dict:
        try:
            row = fut.result()
        except (Exception, asyncio.CancelledError) as exc:  # e.g. its workers kept dying
            if self.client is not None and connection_lost(self.client, exc):
                return _row(spec, self.out_dir / spec.out_name, status=_LOST)
            text = " ".join(str(exc).split())
            return _row(
                spec,
                self.out_dir / spec.out_name,
                status="failed",
                error=f"{type(exc).__name__}: {text}",
            )
        # a subject driven from here fails when its blocks are cancelled with the
        # connection: not its own error
        if row["status"] == "failed" and self.client is not None and connection_lost(self.client):
            return _row(spec, self.out_dir / spec.out_name, status=_LOST)
        return row

    def retire_stale_group(self, spec: SubjectSpec, row: dict) -> None:
        """A subject's results changed: the folder's group level is not of them any more.
        It is removed at once (as the study's ``group`` node is hidden), not at the end
        of the batch, so a batch stopped in between never leaves a group level of other
        results beside the subjects' new ones; the batch writes it again at its end."""
        if self.group_inputs is None or self.group_inputs.get(spec.out_name) == row.get("_digest"):
            return
        group = self.out_dir / "group"
        earlier = _added_permutation_test(group)
        _remove_group_folder(group)
        self.group_inputs = None
        _stale_permutations(self.out_dir, earlier, "removed with the group level")

    def say_if_no_worker(self) -> None:
        """Say so when the scheduler has had no worker for :data:`NO_WORKER_SAY_S` (its
        workers died, or their batch jobs have not started): the batch waits for workers
        to join, which would otherwise look like a hang."""
        now = time.monotonic()
        if self.client is None or now - self.workers_counted < WORKERS_CHECK_S:
            return
        self.workers_counted = now
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # the connection: connection_lost() says it next time
            return
        if workers:
            self.no_worker_since = self.no_worker_said = None
            return
        since = self.no_worker_since = self.no_worker_since or now
        said = self.no_worker_said
        if now - since < NO_WORKER_SAY_S or (said is not None and now - said < NO_WORKER_SAY_S):
            return
        self.no_worker_said = now
        address = self.cluster.address if self.cluster is not None else "?"
        text = (
            f"batch: the dask scheduler at {address} has had no worker for "
            f"{_duration(now - since)}: waiting for workers to join (Ctrl-C stops the "
            "batch; the subjects completed are kept)"
        )
        if self.report.log is None and not self.report.bar.enabled:
            print(text, file=sys.stderr, flush=True)  # said even with --quiet
        else:
            self.report.line(text)

    def lost(self, *also: SubjectSpec) -> ClusterError:
        """The error of a batch whose client lost its scheduler: the subjects not done are
        left pending in ``batch.tsv`` (whatever a worker may still finish is found
        complete by the next batch). ``also``: subjects whose task was lost with it (no
        longer in flight)."""
        assert self.cluster is not None
        self.stop(also)  # the subjects complete already are done
        rows = self.status.rows.values()
        done = sum(row["status"] in ("done", "skipped") for row in rows)
        pending = sum(row["status"] == "pending" for row in rows)
        return lost_connection_error(
            self.cluster.address,
            f"during the batch; the subjects completed are kept ({done} of {len(rows)}, "
            f"{pending} pending in {self.status.path}): run the same command again to "
            "finish the batch",
        )

    def stop(self, also: tuple[SubjectSpec, ...] = ()) -> None:
        """The batch is interrupted with subjects in flight (Ctrl-C, SIGTERM, its scheduler
        lost; ``also``: subjects no longer in flight, lost with it): those not started never
        will be, no write of its subjects starts any more (here and on its workers) and
        those under way end (at most :data:`STOP_WRITES_WAIT_S`); then the subjects this
        batch completed that it has not heard of (their rows on their way) are recorded as
        done (:meth:`record_stopped`), so that ``batch.tsv`` tells which subjects a stopped
        batch left complete. Once only."""
        if self.stopped:
            return
        self.stopped = True
        connected = self.client is not None and not connection_lost(self.client)
        tasks = [f for f, kind in self.kinds.items() if kind == "task"]
        if tasks and connected:
            assert self.client is not None
            with contextlib.suppress(Exception):
                self.client.cancel(tasks)
        if self.pool is not None:  # the subjects driven from here that have not started
            self.pool.shutdown(wait=False, cancel_futures=True)
        # stopped again while it waits (a second Ctrl-C): the batch is stopping already, so
        # it goes on at once to record what is complete, publish it and shut down
        with contextlib.suppress(KeyboardInterrupt):
            _stop_batch_writes(self.batch_id, self.client if tasks and connected else None)
        try:
            self.record_stopped([*also, *self.in_flight.values()])
        except Exception as exc:  # what is recorded stays; the others stay pending
            self.report.line(
                f"batch: the subjects completed before the stop could not all be recorded "
                f"({type(exc).__name__}: {exc}); those left pending are found complete by "
                "the next batch"
            )

    def record_stopped(self, specs: list[SubjectSpec]) -> None:
        """Of ``specs`` (in flight as the batch stopped), the subjects whose folder (and study
        node) this batch completed are done in ``batch.tsv``, with their ROI counts and run
        time from ``provenance.json``, and are published in the study at the batch's last
        rewrite of its root; a group level of other results than theirs goes, as it would
        had the batch heard of them. Reads the provenance of those whose folder exists
        (one listing of the batch folder; an ``s3://`` one's concurrently)."""
        try:
            there = {p.name for p in self.out_dir.iterdir()}
        except (OSError, RoidaskError):
            there = {spec.out_name for spec in specs}
        specs = [spec for spec in dict.fromkeys(specs) if spec.out_name in there]

        def finished(spec: SubjectSpec) -> dict | None:
            try:
                return _finished_row(self.job(spec))
            except (OSError, RoidaskError):  # unreadable now: left pending
                return None

        remote = isinstance(self.out_dir, S3Path)
        with thread_pool(CHECK_THREADS if remote else 1, "roidask-stopped") as pool:
            rows = list(pool.map(finished, specs))
        for spec, row in zip(specs, rows, strict=True):
            if row is None:
                continue
            self.status.set(row)
            self.retire_stale_group(spec, row)
            if self.study is not None:
                self.study.publish_later(spec.out_name, fingerprint=row["_digest"])

    def resubmit(self, spec: SubjectSpec, kind: str, row: dict, *, hidden: bool = False) -> None:
        """Submit again a subject handed back by its run (known fingerprint and inputs);
        one whose published node is to be rewritten once the node is ``hidden``
        (:meth:`publish` hides it and calls this again)."""
        values = {"digest": row["_digest"], "inputs": row["_inputs"]}
        if row["status"] == _TO_UNPUBLISH:
            assert self.study is not None
            if not hidden:
                self.study.unpublish_later(spec.out_name)
                self.hiding[spec.out_name] = (spec, kind, row)
                return
            values["published"] = False
        if row["status"] == _TO_BLOCK or kind == "block":  # does not fit a worker thread
            self.submit_block(self.job(spec, **values))
        else:
            self.submit_task(spec, **values)

    def publish(
        self,
        row: dict | None,
        spec: SubjectSpec | None,
        *,
        force: bool = False,
        final: bool | None = None,
    ) -> None:
        """List a done or skipped subject's node in the study, with others finished meanwhile,
        and hide the nodes of subjects handed back to be rewritten, in one rewrite of the
        root (:meth:`roidask.outputs.study.Study.flush`); then run those subjects again. A
        node that cannot be published or hidden makes its subject failed.

        Nodes to hide wait for the next rewrite like nodes to publish, unless a worker
        thread would have nothing to do meanwhile (or ``force``); their subjects then
        run before the ones not yet submitted (:meth:`submit_next`). A root that cannot
        be rewritten is tried again later, unless this is the ``final`` try (by default:
        if ``force``), which fails the subjects.
        """
        if self.study is None:
            return
        if row is not None and spec is not None and row["status"] in ("done", "skipped"):
            self.study.publish_later(spec.out_name, fingerprint=row["_digest"])
        idle = bool(self.hiding) and not self.waiting and len(self.in_flight) < self.capacity
        final = force if final is None else final
        for name, exc in self.study.flush(force=force or idle, final=final).items():
            error = f"{type(exc).__name__}: {exc}"
            if name in self.hiding:  # not run again
                spec, _, _ = self.hiding.pop(name)
                failed = _row(spec, self.out_dir / spec.out_name, status="failed", error=error)
                self.status.set(failed)
                self.report.finished(failed)
                continue
            failed = {**self.status.rows[self.subjects[name]], "status": "failed"}
            failed["error"] = error
            self.status.set(failed)
            self.report.line(f"{failed['subject']}: failed ({failed['error']})")
        for name in [n for n in self.hiding if not self.study.is_published(n)]:
            self.ready.append(self.hiding.pop(name))

    def run(self) -> None:
        try:
            self.submit_next()
            stalled = 0  # tries to hide nodes with nothing else to do, the root not rewritten
            while self.in_flight or self.hiding:
                if not self.in_flight:  # only subjects to run again once hidden
                    self.publish(None, None, final=stalled >= HIDE_TRIES - 1)
                    if self.hiding and not self.ready and not self.waiting:  # not rewritten
                        stalled += 1
                        time.sleep(0.5 * stalled)
                    else:
                        stalled = 0
                    self.submit_next()
                    continue
                try:
                    fut = self.events.get(timeout=STATUS_INTERVAL_S)
                except queue.Empty:
                    if self.client is not None and connection_lost(self.client):
                        raise self.lost() from None  # subjects driven from here wait on it
                    self.say_if_no_worker()
                    self.publish(None, None)
                    self.submit_next()
                    self.status.flush()
                    self.report.tick()
                    continue
                spec = self.in_flight.pop(fut)
                kind = self.kinds.pop(fut)
                row = self.row_of(fut, spec)
                del fut  # a task's result is released on the cluster
                if row["status"] == _LOST:  # every subject in flight is lost with it
                    raise self.lost(spec)
                if row["status"] in (_TO_BLOCK, _TO_UNPUBLISH):
                    self.resubmit(spec, kind, row)
                    self.publish(None, None)  # hides nodes (to run again) when it is time
                    self.submit_next()
                    continue
                self.status.set(row)
                if row["status"] in ("done", "skipped"):  # skipped: done by a batch stopped
                    self.retire_stale_group(spec, row)
                self.publish(row, spec)  # may make it failed
                self.status.flush()
                self.report.finished({**row, **self.status.rows[row["subject"]]})
                self.submit_next()
            self.publish(None, None, force=True)
        finally:
            if self.study is not None:  # interrupted: not run again, so left as they are
                for name in self.hiding:
                    self.study.cancel_unpublish(name)
                self.hiding.clear()
            if self.in_flight:  # interrupted (Ctrl-C, SIGTERM, the scheduler lost)
                self.stop()
            with contextlib.suppress(Exception):  # interrupted: what finished is published
                self.publish(None, None, force=True)
            if self.pool is not None:
                self.pool.shutdown(wait=not self.in_flight, cancel_futures=True)
