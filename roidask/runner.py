"""One subject, end to end: validate everything, run the pipeline, write the output folder.

:func:`run_subject` is what ``roidask run`` (and each subject of a batch) does:
every input and the destination are validated before any voxel is read, the
pipeline reads the data once, and the outputs are committed atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future

import xarray as xr

from roidask._validate import check_bool
from roidask.exceptions import InvalidParameterError
from roidask.io.conversions import as_image
from roidask.io.image import bold_from_nifti, open_source
from roidask.io.locations import (
    Location,
    PathOrURL,
    S3Path,
    absolute,
    as_location,
    as_location_list,
)
from roidask.onepass import nifti_block_volumes
from roidask.outputs.provenance import input_paths, start_input_records, utc_now
from roidask.outputs.study import SubjectNode
from roidask.outputs.writer import prepare_output, write_results
from roidask.pipeline import PipelineParams, PipelineResult, check_inputs, roi_pipeline

__all__ = ["check_run", "check_subject", "run_subject"]


def run_subject(
    *,
    bold: Sequence[PathOrURL] | None,
    labels: Sequence[PathOrURL] | None,
    store: PathOrURL | None,
    subject: str | None,
    mask: PathOrURL,
    out: PathOrURL,
    params: PipelineParams | None = None,
    chunks=None,
    box_max_bytes: int | None = None,
    tr_s: float | None = None,
    plots: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    inputs: list[dict] | Future | None = None,
    extra_provenance: dict | None = None,
    before_write: Callable[[], None] | None = None,
    study_node: SubjectNode | None = None,
) -> PipelineResult:
    """Validate inputs, run the ROI pipeline on one subject and write its outputs.

    Parameters
    ----------
    bold, labels : list of path, or None
        4D NIfTI run(s) and their labels file(s); or ``None`` with ``store``.
    store, subject : path and str, or None
        A converted store and its subject, instead of ``bold``/``labels``.
    mask : path
        3D binary mask on the BOLD grid.
    out : path
        Output folder (see :mod:`roidask.outputs.writer`), written atomically;
        checked before any voxel is read.
    params : PipelineParams, optional
        Analysis parameters; None (the default): ``PipelineParams()``, as for
        :func:`roidask.pipeline.roi_pipeline`.
    chunks : dict or str, optional
        BOLD chunking, in voxels and volumes; the results do not depend on it.
    box_max_bytes : int, optional
        Memory for the ROI box kept by the pass, in bytes (see
        :func:`roidask.pipeline.roi_pipeline`); a larger box is written to a temporary
        file beside ``out``.
    tr_s : float, optional
        Repetition time in seconds (default: from the header).
    plots : bool
        Draw the figures (``figures/*.png``).
    overwrite : bool
        Replace an existing ``out`` that roidask wrote (default: refuse).
    progress : bool
        Show a progress bar of the pass on stderr.
    inputs : list of dict, or a Future of it, optional
        Input records (path, size in bytes, SHA-256), precomputed or under way; by
        default they are hashed while the pipeline runs.
    extra_provenance : dict, optional
        More fields for ``provenance.json``.
    before_write : callable, optional
        Called once the results are computed, before anything is written, and again
        before the written folder is moved into place and before the study node is
        written; an exception it raises leaves ``out`` (and the node) untouched: a
        batch's task checks that its batch still wants the subject, so that a task
        left running by a killed batch never replaces what the next batch wrote.
    study_node : SubjectNode, optional
        Also write the results as this node of a study store, once ``out`` is
        written (:mod:`roidask.outputs.study`; the batch driver publishes it).

    Returns
    -------
    PipelineResult
        The computed maps, signals and ROI table, as written to ``out``.

    Raises
    ------
    RoidaskError
        An invalid argument or input (see :func:`check_run`), raised before anything
        is written; a failure of the pass or of the writing.
    """
    started = utc_now()
    params = PipelineParams.of(params)
    plots = check_bool(plots, "plots")
    progress = check_bool(progress, "progress")
    bold, labels = _path_lists(bold, labels)
    out, files = check_run(
        bold=bold, labels=labels, store=store, subject=subject, mask=mask, out=out,
        params=params, chunks=chunks, tr_s=tr_s, overwrite=overwrite, read=False,
    )  # fmt: skip
    # checked as given (messages name them so); computed from absolute paths: the tasks
    # of a dask cluster open them in worker processes with other working folders
    bold = [absolute(p) for p in bold] if bold else bold
    labels = [absolute(p) for p in labels] if labels else labels
    mask = absolute(mask)
    store = absolute(store) if store is not None else None
    temp_dir = None if isinstance(out, S3Path) else out.parent  # the pass's temporary file
    if inputs is None:  # hashed while the pipeline runs
        inputs = start_input_records(files)
    if store is not None:
        result = roi_pipeline(
            as_image(store, ndim=4, param="store", subject=subject, subject_param="subject"),
            mask_img=mask,
            params=params,
            chunks=chunks,
            box_max_bytes=box_max_bytes,
            temp_dir=temp_dir,
            progress=progress,
        )
    else:
        result = _run_nifti(
            list(bold or []), list(labels or []), mask, params, chunks, tr_s, progress,
            box_max_bytes=box_max_bytes, temp_dir=temp_dir,
        )  # fmt: skip
    if before_write is not None:
        before_write()
    write_results(
        result,
        out,
        inputs=inputs,
        plots=plots,
        overwrite=overwrite,
        extra_provenance=extra_provenance,
        started_utc=started,
        before_commit=before_write,
    )
    if study_node is not None:
        if before_write is not None:
            before_write()
        study_node.write(result)
    return result


def check_run(
    *,
    bold: Sequence[PathOrURL] | None,
    labels: Sequence[PathOrURL] | None,
    store: PathOrURL | None,
    subject: str | None,
    mask: PathOrURL,
    out: PathOrURL,
    params: PipelineParams | None = None,
    chunks=None,
    tr_s: float | None = None,
    overwrite: bool = False,
    read: bool = True,
) -> tuple[Location, list]:
    """Every check of :func:`run_subject` that comes before its pass (the same arguments).

    The arguments together, the output folder (nothing written), and with ``read``
    the inputs: headers, labels, the mask (read: small) and the parameters, never a
    BOLD voxel. ``roidask run --scheduler`` calls it before it starts a cluster;
    :func:`run_subject` checks the inputs as it builds the pipeline instead
    (``read=False``).

    Parameters
    ----------
    bold : list of path, or None
        4D NIfTI run(s); or ``None`` with ``store``.
    labels : list of path, or None
        Their labels file(s): one labels.txt, or one events.tsv per run.
    store : path or None
        A converted store, instead of ``bold``/``labels``.
    subject : str or None
        The subject of ``store`` (may be omitted when it holds one).
    mask : path
        3D binary mask on the BOLD grid.
    out : path
        Output folder; checked, nothing written.
    params : PipelineParams, optional
        Analysis parameters; None (the default): ``PipelineParams()``.
    chunks : dict or str, optional
        BOLD chunking, in voxels and volumes.
    tr_s : float, optional
        Repetition time in seconds (default: from the header).
    overwrite : bool
        ``out`` may be an existing output of roidask, to be replaced.
    read : bool
        Also check the inputs' headers, labels and mask (read: small).

    Returns
    -------
    out : Path or S3Path
        ``out``, as a location.
    files : list
        The input files (for provenance).

    Raises
    ------
    InvalidParameterError
        Arguments that do not go together (``bold`` and ``store``, ``labels`` or
        ``tr_s`` with a store, ``subject`` without one, ``bold`` without ``labels``).
    RoidaskTypeError
        ``params`` is not a :class:`~roidask.pipeline.PipelineParams`, or a path
        parameter is not a path.
    OutputError
        ``out`` cannot be written (see :func:`roidask.outputs.writer.prepare_output`).
    RoidaskError
        With ``read``, an invalid input (see :func:`check_subject`).
    """
    params = PipelineParams.of(params)
    overwrite = check_bool(overwrite, "overwrite")
    read = check_bool(read, "read")
    bold, labels = _path_lists(bold, labels)
    if store is not None:
        as_location(store, "store")
    as_location(mask, "mask")
    if bool(bold) == bool(store):
        raise InvalidParameterError(
            "bold, store: give either BOLD file(s) with labels, or a store (with its subject)",
            param="bold",
        )
    if store:  # what a store holds already is not taken from elsewhere silently
        given = []
        if labels:
            given.append(("labels", ", ".join(map(str, labels))))
        if tr_s is not None:
            given.append(("tr_s", f"{tr_s:g} s"))
        if given:
            name, shown = given[0]
            raise InvalidParameterError(
                f"{name}: not used with a store (given: {shown}); the store holds its "
                "subjects' conditions, runs and repetition time: drop it, or run on the "
                "NIfTI files instead",
                param=name,
            )
    elif subject is not None:
        raise InvalidParameterError(
            f"subject: only used with a store (given: {subject!r}, with BOLD files)",
            param="subject",
        )
    if bold and not labels:
        raise InvalidParameterError(
            "labels: a labels.txt or one events.tsv per run is required with BOLD files",
            param="labels",
        )
    out = as_location(out, "out")
    files = input_paths(bold=bold, labels=labels, store=store, mask=mask)
    prepare_output(out, inputs=files, overwrite=overwrite)
    if read:
        if store is not None:
            image = as_image(
                store, ndim=4, param="store", subject=subject, subject_param="subject"
            )
            check_inputs(image, as_image(mask, ndim=3, param="mask_img"), params)
        else:
            check_subject(list(bold or []), labels=list(labels or []), mask=mask,
                          params=params, chunks=chunks, tr_s=tr_s)  # fmt: skip
    return out, files


def _path_lists(bold, labels) -> tuple[list | None, list | None]:
    """``bold`` and ``labels`` (one path or a list of paths each, or None) as lists."""
    return (
        None if bold is None else as_location_list(bold, "bold"),
        None if labels is None else as_location_list(labels, "labels"),
    )


def check_subject(
    bold: Sequence[PathOrURL],
    labels: Sequence[PathOrURL],
    mask: PathOrURL,
    *,
    params: PipelineParams | None = None,
    chunks=None,
    tr_s: float | None = None,
) -> xr.DataArray:
    """Validate one subject's NIfTI runs, labels, mask and parameters together.

    Reads the headers, the labels and the mask (small), never a BOLD voxel: what
    :func:`run_subject` checks before its pass, and what a batch checks for every
    subject before it writes anything.

    Parameters
    ----------
    bold : list of path
        4D NIfTI run(s).
    labels : list of path
        Their labels file(s): one labels.txt, or one events.tsv per run.
    mask : path
        3D binary mask on the BOLD grid.
    params : PipelineParams, optional
        Analysis parameters; None (the default): ``PipelineParams()``.
    chunks : dict or str, optional
        BOLD chunking, in voxels and volumes (default: blocks of whole volumes sized
        for the pass).
    tr_s : float, optional
        Repetition time in seconds (default: from the header).

    Returns
    -------
    xarray.DataArray
        The lazy BOLD series (stored integers of scaled int16 runs).

    Raises
    ------
    RoidaskError
        The first problem found, naming the file or parameter (see
        :func:`roidask.io.image.bold_from_nifti` and
        :func:`roidask.pipeline.check_inputs`).
    """
    params = PipelineParams.of(params)
    if chunks is None:
        chunks = {"time": nifti_block_volumes(open_source(bold[0], ndim=4, param="bold"))}
    # stored integers of scaled int16 runs: half the bytes in the box or temporary file
    image = bold_from_nifti(bold, labels=labels, tr_s=tr_s, chunks=chunks, scaled=False)
    check_inputs(image, as_image(mask, ndim=3, param="mask_img"), params)
    return image


def _run_nifti(bold, labels, mask, params, chunks, tr_s, progress, box_max_bytes, temp_dir):
    """The pipeline on NIfTI runs, read directly (a ``.nii.gz`` by one sequential decoder).

    The pass reads blocks of whole volumes in time order, which a sequential
    gzip decoder serves best (see :mod:`roidask.io.nifti`). On a ``distributed``
    cluster the blocks of one subject are spread over worker processes, each of
    which decodes the file from its start (skipped blocks are decoded, not read);
    a batch therefore runs each subject's pass inside one worker whenever it can
    (:mod:`roidask.batch.schedule`).
    """
    image = check_subject(bold, labels=labels, mask=mask, params=params, chunks=chunks, tr_s=tr_s)
    options = {"box_max_bytes": box_max_bytes, "temp_dir": temp_dir, "progress": progress}
    return roi_pipeline(image, mask_img=mask, params=params, **options)
