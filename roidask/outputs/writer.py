"""A subject's output folder, written atomically.

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
    provenance.json      versions, parameters, inputs with checksums, timings
    .roidask.json        roidask's ownership marker (every file it wrote)

With an independent ROI definition (``roi_definition``: folds of runs,
:mod:`roidask.ops.folds`), ``mean_epi``, ``tstat`` and ``logp`` are those of
every volume, and each fold ``k`` has its own maps::

    tstat_fold-<k>.nii.gz, logp_fold-<k>.nii.gz   the t-test of its ROI-defining runs
    roi_mask_fold-<k>.nii.gz, atlas_fold-<k>.nii.gz
    folds.tsv            fold, roi_runs, signal_runs, n_rois
    rois.tsv, signals.tsv  with a leading ``fold`` column; signals.tsv holds each
                         fold's ROIs on its signal runs' volumes only
    figures/             mean_epi.png, logp.png, atlas_fold-<k>.png, boxplots_fold-<k>.png

Everything is written into a locked temporary sibling folder that replaces
``DIR`` in one rename when complete (:class:`roidask._atomic.OutputFolder`), so a
failed or killed run never leaves a half-written ``DIR`` and a replaced ``DIR``
is never missing. ``DIR`` itself is replaced only if roidask wrote it
(:func:`prepare_output`, before any data is read).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from roidask._atomic import OutputFolder
from roidask._pool import thread_pool
from roidask._validate import check_bool
from roidask.io.image import to_nifti
from roidask.io.locations import (
    Location,
    PathOrURL,
    S3Path,
    check_again_remote,
    check_output,
    local_scratch,
    publish_folder,
)
from roidask.io.store_write import write_zarr_files
from roidask.io.tables import write_folds_tsv, write_roi_table, write_signals_tsv
from roidask.ops.rois import write_atlas
from roidask.outputs.provenance import provenance_record, utc_now
from roidask.pipeline import PipelineResult
from roidask.plotting import save_fold_figures, save_seed_figures

__all__ = ["OUTPUT_FILES", "SUBJECT_KIND", "output_files", "prepare_output", "write_results"]

#: Files of every subject output folder (figures come on top).
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
#: Kind recorded in the ownership marker of a subject output folder.
SUBJECT_KIND = "subject-results"
#: Maps written per fold (``<name>_fold-<k>.nii.gz``) with an independent ROI definition.
FOLD_MAP_FILES = {
    "tstat": "fold_tstat",
    "logp": "fold_logp",
    "roi_mask": "roi_mask",
    "atlas": "atlas",
}


def output_files(result: PipelineResult) -> list[str]:
    """The files (figures aside) :func:`write_results` writes for ``result``."""
    if result.folds is None:
        return list(OUTPUT_FILES)
    files = ["mean_epi.nii.gz", "tstat.nii.gz", "logp.nii.gz"]
    for k in range(len(result.folds)):
        files += [f"{name}_fold-{k}.nii.gz" for name in FOLD_MAP_FILES]
    return [*files, "folds.tsv", "rois.tsv", "signals.tsv", "results.zarr", "provenance.json"]


def prepare_output(
    out_dir: PathOrURL,
    *,
    inputs: Iterable[PathOrURL] = (),
    overwrite: bool = False,
    param: str = "out",
) -> Path | S3Path:
    """Check (before any data is read) that ``out_dir`` may be written; clean stale siblings.

    See :func:`roidask._atomic.check_destination` (an ``s3://`` prefix:
    :func:`roidask.io.locations.check_remote_destination`).
    """
    return check_output(
        out_dir, param=param, inputs=inputs, overwrite=overwrite, kind=SUBJECT_KIND
    )


def _write_maps(result: PipelineResult, tmp: Path) -> None:
    maps = result.maps
    for name in ("mean_epi", "tstat", "logp"):
        to_nifti(maps[name], tmp / f"{name}.nii.gz", dtype=np.float32)
    if result.folds is not None:
        dtypes = {"roi_mask": np.uint8, "atlas": np.int32}
        for k in range(len(result.folds)):
            for name, variable in FOLD_MAP_FILES.items():
                to_nifti(
                    maps[variable].isel(fold=k).drop_vars("fold", errors="ignore"),
                    tmp / f"{name}_fold-{k}.nii.gz",
                    dtype=dtypes.get(name, np.float32),
                )
        write_roi_table(result.rois, tmp / "rois.tsv")
        write_folds_tsv(result.folds_table(), tmp / "folds.tsv")
        return
    to_nifti(maps["roi_mask"], tmp / "roi_mask.nii.gz", dtype=np.uint8)
    write_atlas(
        maps["atlas"], tmp / "atlas.nii.gz", table_path=tmp / "rois.tsv", table=result.rois
    )


def _write_dataset(result: PipelineResult, tmp: Path) -> None:
    write_zarr_files(result.zarr_files(), tmp / "results.zarr")


def write_results(
    result: PipelineResult,
    out_dir: PathOrURL,
    *,
    inputs: list[dict] | Future | None = None,
    plots: bool = True,
    overwrite: bool = False,
    extra_provenance: dict | None = None,
    started_utc: str | None = None,
    before_commit: Callable[[], None] | None = None,
) -> Location:
    """Write a :class:`~roidask.pipeline.PipelineResult` into ``out_dir`` atomically.

    Parameters
    ----------
    result : PipelineResult
    out_dir : path
        Folder to create. An existing folder is replaced only with ``overwrite``,
        and only if roidask wrote it (see :func:`prepare_output`).
    inputs : list of dict, or a Future of it, optional
        Input records for provenance (:func:`roidask.outputs.provenance.input_records`);
        a future is waited for when ``provenance.json`` is written.
    plots : bool
        Write ``figures/*.png``.
    overwrite : bool
        Replace an existing ``out_dir`` that roidask wrote.
    extra_provenance : dict, optional
        More provenance fields (scheduler, chunks, ...).
    started_utc : str, optional
        When the run started (default: now).
    before_commit : callable, optional
        Called once every file is written, before the folder is moved into place (or
        uploaded); an exception it raises discards the folder and leaves ``out`` as it was.

    Returns
    -------
    Path or S3Path
        ``out_dir``. An ``s3://`` prefix is built in a local temporary folder and
        uploaded, its ownership marker last (:func:`roidask.io.locations.publish_folder`).
    """
    plots = check_bool(plots, "plots")
    overwrite = check_bool(overwrite, "overwrite")
    started_utc = started_utc or utc_now()
    input_list = inputs.result() if isinstance(inputs, Future) else inputs
    out = prepare_output(
        out_dir, inputs=[r["path"] for r in input_list or []], overwrite=overwrite
    )
    folder = (result, plots, started_utc, input_list, extra_provenance)
    if isinstance(out, S3Path):
        with local_scratch("out") as tmp:
            local = tmp / (out.name or "out")
            _write_folder(local, *folder)

            def commit_check() -> None:  # once the upload holds the prefix's lease
                if before_commit is not None:  # a task that waited for the lease while
                    before_commit()  # the next batch published the subject writes nothing
                # objects put there meanwhile, or an output another run completed
                check_again_remote(out, kind=SUBJECT_KIND, overwrite=overwrite)

            return publish_folder(local, out, before_commit=commit_check)
    return _write_folder(out, *folder, before_commit=before_commit, overwrite=overwrite)


def _write_folder(
    out: Path,
    result: PipelineResult,
    plots: bool,
    started_utc: str,
    input_list: list[dict] | None,
    extra_provenance: dict | None,
    before_commit: Callable[[], None] | None = None,
    overwrite: bool = True,
) -> Path:
    with OutputFolder(out, kind=SUBJECT_KIND, overwrite=overwrite) as tmp:
        # Independent files, written concurrently (gzip, CSV formatting and zarr's
        # I/O overlap); the first error is raised once all are done.
        with thread_pool(3, "roidask-write") as writers:
            pending: list[Future] = [
                writers.submit(_write_maps, result, tmp),
                writers.submit(write_signals_tsv, result.signals, tmp / "signals.tsv"),
                writers.submit(_write_dataset, result, tmp),
            ]
        for done in pending:
            done.result()
        figures = []
        if plots and result.folds is not None:
            counts = result.fold_n_rois()
            maps = result.maps
            figures = save_fold_figures(
                tmp / "figures",
                mean_img=maps["mean_epi"],
                logp_img=maps["logp"],
                atlases=[maps["atlas"].isel(fold=k) if n else None for k, n in enumerate(counts)],
                signals=[result.fold_signals(k) if n else None for k, n in enumerate(counts)],
                titles=[result.fold_title(k) for k in range(len(counts))],
            )
        elif plots:
            maps = result.maps
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
        provenance = provenance_record(
            started_utc=started_utc,
            parameters=result.params.to_dict(),
            inputs=input_list,
            outputs=[*output_files(result), *(f"figures/{Path(f).name}" for f in figures)],
            timings_s=result.timings_s,
            extra={
                "n_rois": int(result.n_rois),
                **({"fold_n_rois": result.fold_n_rois()} if result.folds is not None else {}),
                **(extra_provenance or {}),
            },
        )
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if before_commit is not None:  # an exception: the folder is discarded, out untouched
            before_commit()
    return out
