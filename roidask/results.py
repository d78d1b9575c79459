"""Writing a subject's pipeline results into an output folder, atomically.

Layout of ``DIR``::

    mean_epi.nii.gz      smoothed mean EPI
    tstat.nii.gz         t statistic
    logp.nii.gz          -log10 p (NaN -> 0, clipped), unthresholded
    roi_mask.nii.gz      threshold AND mask, before dilation (uint8)
    atlas.nii.gz         int32 component labels after dilation (scipy numbering)
    rois.tsv             one row per ROI
    signals.tsv          roi, condition, run, volume, time_s, value (all volumes)
    results.zarr         all of the above as one xarray Dataset
    figures/*.png        unless plots are off
    provenance.json      version, parameters, inputs with checksums, timings

Everything is written into a temporary sibling folder that is renamed to
``DIR`` only when complete, so a failed run never leaves a half-written ``DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from roidask.exceptions import OutputExistsError, StoreError

__all__ = [
    "file_sha256",
    "input_paths",
    "input_records",
    "run_subject",
    "start_input_records",
    "write_results",
]

OUTPUT_FILES = (
    "mean_epi.nii.gz",
    "tstat.nii.gz",
    "logp.nii.gz",
    "roi_mask.nii.gz",
    "atlas.nii.gz",
    "rois.tsv",
    "signals.tsv",
    "results.zarr",
    "provenance.json",
)


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
    """Path, size and SHA-256 of each input file."""
    out = []
    for p in paths:
        p = Path(p)
        size = (
            sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            if p.is_dir()
            else (p.stat().st_size)
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
    :func:`write_results` waits for it. An unreadable file is reported by the
    run's own validation, not by this future.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="roidask-hash")
    try:
        return pool.submit(input_records, list(paths))
    finally:
        pool.shutdown(wait=False)


def _peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def write_results(
    result,
    out_dir: str | os.PathLike,
    *,
    inputs: list[dict] | None = None,
    plots: bool = True,
    overwrite: bool = False,
    extra_provenance: dict | None = None,
) -> Path:
    """Write a :class:`roidask.pipeline.PipelineResult` into ``out_dir`` atomically.

    Parameters
    ----------
    result : PipelineResult
    out_dir : path
        Folder to create. An existing folder is replaced only with ``overwrite``.
    inputs : list of dict, or a Future of it, optional
        Input records for provenance (see :func:`input_records`); a future is
        waited for when ``provenance.json`` is written.
    plots : bool
        Write ``figures/*.png``.
    overwrite : bool
        Replace an existing ``out_dir``.
    extra_provenance : dict, optional
        More provenance fields (scheduler, wall time, ...).

    Returns
    -------
    Path
        ``out_dir``.
    """
    import roidask
    from roidask.io.image import to_nifti
    from roidask.io.store import _dataset_to_zarr
    from roidask.ops.extract import signals_to_frame
    from roidask.ops.rois import write_atlas

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: output folder exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise StoreError(f"{out}: parent folder {out.parent} does not exist")
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        maps = result.maps

        def write_maps():
            for name in ("mean_epi", "tstat", "logp"):
                to_nifti(maps[name], tmp / f"{name}.nii.gz", dtype=np.float32)
            to_nifti(maps["roi_mask"], tmp / "roi_mask.nii.gz", dtype=np.uint8)
            write_atlas(
                maps["atlas"], tmp / "atlas.nii.gz", table_path=tmp / "rois.tsv", table=result.rois
            )

        def write_signals():
            frame = signals_to_frame(result.signals)
            frame.to_csv(tmp / "signals.tsv", sep="\t", index=False, float_format="%.9g")

        def write_dataset():
            ds = result.to_dataset()
            for var in ds.variables.values():
                var.encoding.clear()
            ds = ds.assign_coords(
                {k: ds[k].astype(object) for k in ("condition",) if k in ds.coords}
            )
            _dataset_to_zarr(ds, tmp / "results.zarr")

        # Independent files, written concurrently (gzip, CSV formatting and zarr's
        # I/O overlap); the first error is raised once all are done.
        with ThreadPoolExecutor(3) as writers:
            pending = [writers.submit(f) for f in (write_maps, write_signals, write_dataset)]
        for done in pending:
            done.result()
        figures = []
        if plots:
            from roidask.plotting import save_seed_figures

            figures = save_seed_figures(
                tmp / "figures",
                mean_img=maps["mean_epi"],
                logp_img=maps["logp"],
                threshold=result.params.threshold,
                roi_mask_img=maps["roi_mask"],
                dilated_img=maps["dilated_mask"],
                atlas_img=maps["atlas"] if result.n_rois else None,
                signals=result.signals if result.n_rois else None,
            )
        provenance = {
            "roidask_version": roidask.__version__,
            "python": platform.python_version(),
            "parameters": result.params.to_dict(),
            "inputs": (inputs.result() if isinstance(inputs, Future) else inputs) or [],
            "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
            "peak_rss_bytes": _peak_rss_bytes(),
            "n_rois": int(result.n_rois),
            "outputs": sorted([*OUTPUT_FILES, *(f"figures/{Path(f).name}" for f in figures)]),
            **(extra_provenance or {}),
        }
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def run_subject(
    *,
    bold,
    labels,
    store,
    subject,
    mask,
    out,
    params,
    chunks=None,
    box_max_bytes=None,
    tr_s=None,
    plots=True,
    overwrite=False,
    progress=False,
    inputs=None,
    extra_provenance=None,
):
    """Validate inputs, run the ROI pipeline on one subject and write its outputs.

    Parameters
    ----------
    bold, labels : list of path, or None
        4D NIfTI run(s) and their labels file(s); or ``None`` with ``store``.
    store, subject : path and str, or None
        A converted store and its subject, instead of ``bold``/``labels``.
    mask : path
        3D mask on the BOLD grid.
    out : path
        Output folder (see the module docstring), written atomically.
    params : PipelineParams
    chunks : dict or str, optional
        BOLD chunking; the results do not depend on it.
    box_max_bytes : int, optional
        Memory for the ROI box kept by the pass (see :func:`roidask.roi_pipeline`).
    tr_s : float, optional
        Repetition time in seconds (default: from the header).
    plots, overwrite, progress : bool
    inputs : list of dict, or a Future of it, optional
        :func:`input_records` of the inputs, precomputed or under way
        (:func:`start_input_records`); by default they are hashed while the
        pipeline runs.
    extra_provenance : dict, optional

    Returns
    -------
    PipelineResult
    """
    from roidask.exceptions import InvalidParameterError
    from roidask.pipeline import roi_pipeline

    if bool(bold) == bool(store):
        raise InvalidParameterError(
            "run: give either BOLD file(s) with --labels, or --store (with --subject)"
        )
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: output folder exists; pass --overwrite to replace it")
    if inputs is None:  # hashed while the pipeline runs
        inputs = start_input_records(input_paths(bold=bold, labels=labels, store=store, mask=mask))
    if store is not None:
        result = roi_pipeline(
            store,
            mask_img=mask,
            params=params,
            subject=subject,
            chunks=chunks,
            box_max_bytes=box_max_bytes,
            progress=progress,
        )
    else:
        result = _run_nifti(
            bold, labels, mask, out, params, chunks, tr_s, progress, box_max_bytes=box_max_bytes
        )
    write_results(
        result,
        out,
        inputs=inputs,
        plots=plots,
        overwrite=overwrite,
        extra_provenance=extra_provenance,
    )
    return result


#: Blocks of volumes read at once when the pipeline reads NIfTI runs directly.
NIFTI_BLOCK_BYTES = 8 * 2**20


def _run_nifti(bold, labels, mask, out: Path, params, chunks, tr_s, progress, box_max_bytes):
    """The pipeline on NIfTI runs: read directly, or through a temporary store.

    The pipeline reads the data once, in time order, which a sequential gzip
    decoder serves best (see :mod:`roidask.io.nifti`); dask's threaded scheduler
    takes the blocks in that order. A ``distributed`` cluster does not keep it
    (it may start with the last blocks, and worker processes would each decode
    the file from its start), so with a cluster ``.nii.gz`` runs are first
    converted (one sequential decode, in this process) into a temporary chunked
    store next to ``out``.
    """
    import tempfile

    from roidask.exceptions import InvalidParameterError
    from roidask.io.image import as_image, bold_from_nifti
    from roidask.io.nifti import NiftiSource
    from roidask.io.store import convert
    from roidask.pipeline import _active_client, check_inputs, roi_pipeline

    if not labels:
        raise InvalidParameterError("run: --labels is required with BOLD files")
    # Validate everything (headers, labels, grids, contrast) before any voxel is read.
    if chunks is None:
        # Blocks half a store chunk: decoding (one thread, in file order) overlaps
        # better with the compute of the other blocks, and the pass holds less.
        first = NiftiSource.open(bold[0], ndim=4)  # header only
        volume_bytes = int(np.prod(first.volume_shape)) * first.dtype.itemsize
        chunks = {"time": max(1, NIFTI_BLOCK_BYTES // volume_bytes)}
    image = bold_from_nifti(bold, labels=labels, tr_s=tr_s, chunks=chunks)
    check_inputs(image, as_image(mask, ndim=3, param="mask_img"), params)
    if not out.parent.exists():
        raise StoreError(f"{out}: parent folder {out.parent} does not exist")
    gz = any(str(p).lower().endswith(".gz") for p in bold)
    if not gz or _active_client() is None:
        return roi_pipeline(
            image, mask_img=mask, params=params, box_max_bytes=box_max_bytes, progress=progress
        )
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.convert-") as tmp:
        store = convert(
            bold,
            labels=labels,
            out=Path(tmp) / "bold.zarr",
            tr_s=tr_s,
            chunks=chunks,
            progress=progress,
        )
        return roi_pipeline(
            store, mask_img=mask, params=params, box_max_bytes=box_max_bytes, progress=progress
        )
