"""Many subjects on one dask cluster: manifests, concurrent runs, resume, group level.

Each subject runs the ROI pipeline exactly as ``roidask run`` and writes
``DIR/sub-<id>/`` atomically. Subjects run concurrently (one driver thread each)
on one shared ``distributed`` client, so the scheduler interleaves their tasks;
memory per worker is bounded by the chunk size, not by the number of subjects.

Resume: a subject whose ``provenance.json`` records the same fingerprint
(parameters and input checksums) is skipped; the others are redone. A failing
subject (bad file, ...) is reported in ``DIR/batch.tsv`` and does not stop the
others. A worker lost mid-batch only costs time: its tasks are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    LabelsError,
    RoidaskError,
    RoidaskTypeError,
)

__all__ = ["SubjectSpec", "group_level", "read_manifest", "run_batch"]

_MANIFEST_COLUMNS = ("subject", "bold", "labels", "mask")
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
    missing = [c for c in _MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise LabelsError(
            f"{path}: missing column(s) {missing}; a manifest needs {list(_MANIFEST_COLUMNS)}, "
            f"got {list(table.columns)}"
        )
    if table["subject"].duplicated().any():
        dup = sorted(set(table["subject"][table["subject"].duplicated()]))
        raise LabelsError(f"{path}: subject(s) {dup} listed more than once")
    specs = []
    for i, row in table.iterrows():
        if not row["subject"] or not row["bold"] or not row["labels"]:
            raise LabelsError(f"{path}: line {i + 2}: subject, bold and labels are required")
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
    return specs


def _read_bids(root: Path, *, mask) -> list[SubjectSpec]:
    specs = []
    for sub in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        bolds = sorted((sub / "func").glob("*_bold.nii*"))
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
    prov = out / "provenance.json"
    if not prov.is_file():
        return False
    try:
        return json.loads(prov.read_text()).get("fingerprint") == digest
    except (OSError, ValueError):
        return False


def _clean_stale(out_dir: Path) -> None:
    """Remove temporary folders left by a killed batch (never complete outputs)."""
    for p in out_dir.glob(".*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out_dir.glob(".*.convert-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out_dir.glob(".*.old-*"):
        shutil.rmtree(p, ignore_errors=True)


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
        Subjects in flight at once (default: all, up to 8).
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

    from roidask.pipeline import PipelineParams
    from roidask.results import run_subject

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

    def one(spec: SubjectSpec) -> dict:
        start = time.perf_counter()
        out = out_dir / spec.out_name
        row = {"subject": spec.subject, "out": str(out), "error": "", "n_rois": "", "wall_s": ""}
        try:
            digest, inputs = fingerprint(spec, params)
            if _is_complete(out, digest):
                prov = json.loads((out / "provenance.json").read_text())
                row.update(status="skipped", n_rois=prov.get("n_rois", ""))
                return row
            result = run_subject(
                bold=list(spec.bold),
                labels=list(spec.labels),
                store=None,
                subject=None,
                mask=spec.mask,
                out=out,
                params=params,
                chunks=chunks,
                plots=plots,
                overwrite=True,
                progress=False,
                inputs=inputs,
                extra_provenance={"fingerprint": digest, "subject": spec.subject},
            )
            row.update(status="done", n_rois=result.n_rois)
        except (RoidaskError, RoidaskTypeError, OSError) as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # an unexpected bug must not stop the other subjects
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            row.update(status="failed", error=f"unexpected error: {tb}")
        row["wall_s"] = round(time.perf_counter() - start, 2)
        return row

    n = max_concurrent or min(len(specs), 8) or 1
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
    if len(done) >= 2:
        try:
            group_level(done, out_dir / "group")
        except (RoidaskError, RoidaskTypeError) as exc:
            log(f"group level: failed ({exc})")
            (out_dir / "group-error.txt").write_text(f"{exc}\n")
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
    return out
