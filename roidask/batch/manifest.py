"""Which subjects a batch runs: TSV manifests and BIDS-like folders.

A manifest is a TSV with columns ``subject, bold, labels, mask`` (several runs
or label files separated by ``;``; relative paths are relative to the manifest);
a BIDS-like folder holds ``sub-*/func/*_bold.nii.gz`` with matching
``*_events.tsv`` files and a mask (``sub-*/func/*_mask.nii.gz`` or one for all).
A BIDS-like folder is read for one task (``task=``, where it has several); every
``sub-*`` folder in it is a subject, which needs runs; runs in sessions
(``ses-*/func/``) and two files of one run are refused, never left out or read twice.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import pandas as pd

from roidask._pool import thread_pool
from roidask._validate import SUBJECT_NAME_RE, check_bids_label, only_applies
from roidask.exceptions import (
    InvalidParameterError,
    ManifestError,
    RoidaskError,
    RoidaskTypeError,
)
from roidask.io.locations import (
    Location,
    PathOrURL,
    S3Path,
    absolute,
    as_location,
    check_input_file,
    is_remote,
    open_table,
)
from roidask.io.nifti import release_handles
from roidask.io.niizarr import is_nifti_zarr
from roidask.pipeline import PipelineParams
from roidask.runner import check_subject

__all__ = [
    "MANIFEST_COLUMNS",
    "SubjectSpec",
    "check_specs",
    "check_subjects",
    "current_subject",
    "read_manifest",
    "subject_context",
]

#: Columns of a TSV manifest.
MANIFEST_COLUMNS = ("subject", "bold", "labels", "mask")


@dataclass(frozen=True)
class SubjectSpec:
    """One subject of a batch: BOLD run(s), label file(s) and a mask."""

    subject: str
    bold: tuple[Path | S3Path, ...]
    labels: tuple[Path | S3Path, ...]
    mask: Path | S3Path

    def __post_init__(self) -> None:
        # the paths go to dask workers, whose working folders are not this process's
        object.__setattr__(self, "bold", tuple(absolute(p) for p in self.bold))
        object.__setattr__(self, "labels", tuple(absolute(p) for p in self.labels))
        object.__setattr__(self, "mask", absolute(self.mask))

    @property
    def out_name(self) -> str:
        return self.subject if self.subject.startswith("sub-") else f"sub-{self.subject}"

    @property
    def files(self) -> tuple[Location, ...]:
        """Every input file of the subject: BOLD run(s), label file(s), mask."""
        return (*self.bold, *self.labels, self.mask)


def check_specs(specs, param: str = "specs") -> list[SubjectSpec]:
    """The subjects of a batch, checked before anything is read or written.

    Parameters
    ----------
    specs : list of SubjectSpec
        The subjects (:func:`read_manifest` reads them from a manifest).
    param : str
        The parameter's name, for messages.

    Returns
    -------
    list of SubjectSpec
        ``specs``, as a list.

    Raises
    ------
    RoidaskTypeError
        ``specs`` is not a list or tuple of :class:`SubjectSpec` (a manifest's path is
        read with :func:`read_manifest` first).
    ManifestError
        ``specs`` is empty: a batch of no subject is refused, as ``roidask batch``
        refuses a manifest without subject rows.
    """
    if isinstance(specs, str | bytes) or not isinstance(specs, Sequence):
        hint = (
            " (a manifest? read it with roidask.read_manifest first)"
            if isinstance(specs, str | bytes | PathLike)
            else ""
        )
        raise RoidaskTypeError(
            f"{param}: expected a list of roidask.batch.SubjectSpec, got "
            f"{type(specs).__name__} {specs!r}{hint}",
            param=param,
        )
    for i, spec in enumerate(specs):
        if not isinstance(spec, SubjectSpec):
            raise RoidaskTypeError(
                f"{param}[{i}]: expected a roidask.batch.SubjectSpec (e.g. from "
                f"read_manifest), got {type(spec).__name__} {spec!r}",
                param=param,
            )
    if not specs:
        raise ManifestError(
            f"{param}: no subjects, got {specs!r}; expected at least one SubjectSpec (a "
            "manifest line per subject)",
            param=param,
        )
    return list(specs)


_SUBJECT = threading.local()  # the subject a thread checks or runs (:func:`current_subject`)


def current_subject() -> str | None:
    """The batch subject this thread is checking or running, if any (warnings name it)."""
    return getattr(_SUBJECT, "name", None)


@contextlib.contextmanager
def subject_context(subject: str) -> Iterator[None]:
    """Within the block, :func:`current_subject` is ``subject`` (in this thread)."""
    before, _SUBJECT.name = current_subject(), subject
    try:
        yield
    finally:
        _SUBJECT.name = before


def check_subjects(
    specs: list[SubjectSpec], *, params: PipelineParams | None = None, chunks=None
) -> None:
    """Check every subject's inputs as ``roidask run`` would, before a batch writes
    anything: the files exist and are not empty, the headers, labels and mask are
    valid and agree with each other and with ``params``, and no two subjects share an
    output folder.

    Reads headers, labels and masks (about 8 ms per subject on local files;
    concurrently from object storage), never a BOLD voxel; see
    :func:`roidask.runner.check_subject`.

    Parameters
    ----------
    specs : list of SubjectSpec
        The subjects, at least one (:func:`read_manifest`).
    params : PipelineParams, optional
        Analysis parameters; None (the default): ``PipelineParams()``.
    chunks : dict or str, optional
        BOLD chunking, in voxels and volumes (as the batch will read the runs).

    Raises
    ------
    RoidaskTypeError, ManifestError
        ``specs`` is not a non-empty list of :class:`SubjectSpec` (:func:`check_specs`).
    ManifestError
        Two subjects would write the same folder (``01`` and ``sub-01``).
    RoidaskError
        The first subject (in manifest order) whose inputs are not valid: its
        error, as ``manifest: subject '03': ...``, with how many other subjects
        failed and which.
    """
    specs = check_specs(specs)
    _check_out_names(specs, "manifest")
    params = PipelineParams.of(params)

    def check(spec: SubjectSpec) -> RoidaskError | None:
        try:
            with subject_context(spec.subject):  # its warnings name it
                _check_files(spec)  # named by the manifest's columns
                check_subject(list(spec.bold), labels=list(spec.labels), mask=spec.mask,
                              params=params, chunks=chunks)  # fmt: skip
        except RoidaskError as error:
            return error
        finally:  # the mask was read: its handle is not kept in this process
            release_handles([spec.mask])
        return None

    # local files: ~8 ms of Python per subject, which threads would only slow down
    remote = any(isinstance(p, S3Path) for spec in specs for p in spec.files)
    with thread_pool(CHECK_THREADS if remote else 1, "roidask-check") as pool:
        found = [(s, e) for s, e in zip(specs, pool.map(check, specs), strict=True) if e]
    if found:
        (spec, error), others = found[0], [s.subject for s, _ in found[1:]]
        raise _subject_error(error, spec.subject, others) from None


#: Threads that check a batch's subjects when inputs are in object storage (requests).
CHECK_THREADS = 8


def _check_files(spec: SubjectSpec) -> None:
    """Every input file of ``spec`` exists, is readable and is not empty."""
    columns = [("bold", p, "BOLD image") for p in spec.bold]
    columns += [("labels", p, "labels file") for p in spec.labels]
    columns.append(("mask", spec.mask, "mask image"))
    for column, path, what in columns:
        if column != "labels" and is_nifti_zarr(path):
            continue  # a NIfTI-Zarr image (a folder), validated when opened
        check_input_file(path, column, what=what)


#: The manifest's column of a subject's image that the library names by its parameter.
_COLUMN_OF = {"mask_img": "mask", "bold_img": "bold"}


def _subject_error(exc: RoidaskError, subject: str, others: list[str]) -> RoidaskError:
    """``exc`` as the error of ``subject`` of a manifest, naming the others that failed.

    An image the library names by its parameter (``mask_img``) is named by its column;
    the error keeps the parameter of ``exc`` as ``subject_param`` (the command line names
    the flag of an analysis parameter, ``--contrast``).
    """
    text = str(exc)
    column = _COLUMN_OF.get(exc.param or "")
    if column is not None and text.startswith(f"{exc.param} "):
        text = column + text[len(exc.param or "") :]
    more = ""
    if others:
        shown = ", ".join(repr(s) for s in others[:5])
        etc = ", ..." if len(others) > 5 else ""
        more = f" ({len(others)} other subject(s) have invalid inputs too: {shown}{etc})"
    error = type(exc)(f"manifest: subject {subject!r}: {text}{more}", param="manifest")
    # a flag's name for an analysis parameter, never for a manifest's own columns
    named = column is not None or exc.param in MANIFEST_COLUMNS
    error.subject_param = None if named else exc.param
    return error


def _split(value: str, base: Path | S3Path) -> tuple[Path | S3Path, ...]:
    """Paths of a manifest cell; relative ones are relative to the manifest's location
    (so an ``s3://`` manifest's relative paths are ``s3://`` too)."""
    parts = [p.strip() for p in str(value).split(";") if p.strip()]
    return tuple(
        as_location(p) if is_remote(p) or Path(p).is_absolute() else base / p for p in parts
    )


def read_manifest(
    manifest: PathOrURL, *, mask: PathOrURL | None = None, task: str | None = None
) -> list[SubjectSpec]:
    """Subjects of a batch from a TSV manifest or a BIDS-like folder.

    Parameters
    ----------
    manifest : path
        A TSV with columns ``subject, bold, labels, mask`` (several runs or label
        files separated by ``;``, one mask per subject; relative paths are relative
        to the manifest; cells are read as written, only an empty one is missing; no
        ``mask`` column with ``mask``), or a folder with ``sub-*/func/*_bold.nii.gz``
        and matching ``*_events.tsv`` files (mask: ``sub-*/func/*_mask.nii.gz`` or
        ``mask``).
    mask : path, optional
        Mask for every subject without its own (an empty mask cell, or no mask in
        its ``func/``); refused where every subject has its own.

    task : str, optional
        The task whose runs a BIDS-like folder gives (``task-<task>`` in the file
        names); needed where its BOLD files are of several tasks.

    Returns
    -------
    list of SubjectSpec

    Raises
    ------
    ManifestError
        The manifest or folder is not as described: a missing column or cell, two
        masks in a cell or a ``func/``, runs of several tasks without ``task``, two
        files of one run, runs in sessions (``ses-*/func/``), a subject folder with
        no BOLD run, a run without its events file, ``mask`` where every subject has
        its own.
    InvalidParameterError
        ``task`` is not a BIDS label, or is given with a TSV manifest.
    """
    path = as_location(manifest, "manifest")
    if mask is not None:
        as_location(mask, "mask")
    if task is not None:
        check_bids_label(task, "task")
    if isinstance(path, S3Path) and not path.is_file() and path.is_dir():
        raise ManifestError(
            f"manifest {path}: a BIDS-like folder in S3 is not read; give a TSV manifest",
            param="manifest",
        )
    if isinstance(path, Path) and path.is_dir():
        return _read_bids(path, mask=mask, task=task)
    if not path.exists():
        raise ManifestError(
            f"manifest {path}: no such file (expected a TSV file or a BIDS-like folder)",
            param="manifest",
        )
    if task is not None:
        raise InvalidParameterError(
            only_applies(["task"], "a BIDS-like folder")
            + f" ({path} is a TSV manifest, whose rows list the runs)",
            param="task",
        )
    check_input_file(path, "manifest", what="manifest (TSV)")
    try:
        with warnings.catch_warnings():  # more fields than the header: an error, not data lost
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # text as written: subjects NA, None or 01 are names (an empty cell is empty)
            table = pd.read_csv(
                open_table(path), sep="\t", dtype=str, index_col=False, na_filter=False
            )
    except (
        pd.errors.ParserError,
        pd.errors.ParserWarning,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
    ) as exc:
        raise ManifestError(
            f"manifest {path}: not a readable TSV table ({exc})", param="manifest"
        ) from None
    table.columns = [str(c).strip() for c in table.columns]
    table = table.apply(lambda col: col.str.strip())
    # the mask column is needed only without a mask for every subject
    needed = [c for c in MANIFEST_COLUMNS if c != "mask" or mask is None]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {missing}; a manifest needs {list(MANIFEST_COLUMNS)} "
            f"(mask: unless mask=PATH is given), got {list(table.columns)}"
        )
    if "mask" not in table.columns:
        table["mask"] = ""
    if table["subject"].duplicated().any():
        dup = sorted(set(table["subject"][table["subject"].duplicated()]))
        raise ManifestError(f"{path}: subject(s) {dup} listed more than once")
    if table.empty:
        raise ManifestError(
            f"manifest {path}: has a header but no subject rows (expected one line per subject)",
            param="manifest",
        )
    specs = []
    for i, row in table.iterrows():
        if not row["subject"] or not row["bold"] or not row["labels"]:
            raise ManifestError(f"{path}: line {i + 2}: subject, bold and labels are required")
        if not SUBJECT_NAME_RE.match(row["subject"]):
            raise ManifestError(
                f"{path}: line {i + 2}: subject {row['subject']!r} is not a valid name "
                "(ASCII letters, digits, '.', '_' and '-', not starting with '.' or '-')"
            )
        for column in ("bold", "labels"):
            if not _split(row[column], path.parent):
                raise ManifestError(
                    f"{path}: line {i + 2}: the {column} cell {row[column]!r} holds no path "
                    "(several are separated by ';')"
                )
        row_masks = _split(row["mask"], path.parent)
        if len(row_masks) > 1:
            raise ManifestError(
                f"{path}: line {i + 2}: the mask cell {row['mask']!r} holds {len(row_masks)} "
                "paths; a subject has one mask"
            )
        if not row_masks and not mask:
            raise ManifestError(f"{path}: line {i + 2}: no mask for subject {row['subject']!r}")
        specs.append(
            SubjectSpec(
                subject=row["subject"],
                bold=_split(row["bold"], path.parent),
                labels=_split(row["labels"], path.parent),
                mask=row_masks[0] if row_masks else as_location(mask),  # type: ignore[arg-type]
            )
        )
    own = [bool(row["mask"]) for _, row in table.iterrows()]
    _check_common_mask(mask, own, path, "its mask cell", "empty the subjects' mask cells")
    _check_out_names(specs, path)
    return specs


def _check_common_mask(
    mask: PathOrURL | None, own: list[bool], source: Location, where: str, remedy: str
) -> None:
    """``mask`` (for every subject without its own) is refused where every subject has its
    own (``own``): it would not be used, yet the batch's provenance would record it."""
    if mask is not None and own and all(own):
        raise ManifestError(
            f"mask {mask}: every subject of {source} has its own mask ({where}), so it would "
            f"not be used; leave it out, or {remedy}",
            param="mask",
        )


def _check_out_names(specs: list[SubjectSpec], source: Location | str) -> None:
    """Two subjects must not share an output folder (``01`` and ``sub-01`` do)."""
    seen: dict[str, str] = {}
    for spec in specs:
        other = seen.setdefault(spec.out_name, spec.subject)
        if other != spec.subject:
            raise ManifestError(
                f"{source}: subjects {other!r} and {spec.subject!r} would both write "
                f"{spec.out_name}/; rename one"
            )


def _natural_key(path: Path) -> list:
    """Sort key putting ``run-2`` before ``run-10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


#: Entities a derivative (fMRIPrep) adds to a run's BOLD name and that the run's events
#: file, named after the raw run, has not (BIDS: ``sub[_ses]_task[_acq]...[_run]_events``).
_DERIVATIVE_ENTITIES = frozenset({"space", "cohort", "res", "den", "desc"})


def _stem(path: Path, suffix: str = "bold") -> str:
    """``sub-01_task-x_run-1`` of ``sub-01_task-x_run-1_bold.nii.gz``."""
    return path.name.split(f"_{suffix}.nii")[0]


def _entity(stem: str, key: str) -> str | None:
    """The value of the entity ``key`` (``task``) in a BIDS name's stem, if it has one."""
    values = [v for k, dash, v in (p.partition("-") for p in stem.split("_")) if dash and k == key]
    return values[0] if values else None


def _raw_stem(stem: str) -> str:
    """``stem`` without the entities of derivatives (space, desc...): the raw run's name."""
    return "_".join(p for p in stem.split("_") if p.partition("-")[0] not in _DERIVATIVE_ENTITIES)


def _tasks_shown(tasks: set[str | None]) -> str:
    return ", ".join(
        repr(t) if t else "no task- entity" for t in sorted(tasks, key=lambda t: t or "")
    )


def _one_file_per_run(func: Path, bolds: list[Path]) -> None:
    """Two files of one run (``.nii`` and ``.nii.gz``; two spaces of a derivative) would be
    read as two runs: refused."""
    runs: dict[str, list[Path]] = {}
    for bold in bolds:
        runs.setdefault(_raw_stem(_stem(bold)), []).append(bold)
    for same in runs.values():
        if len(same) > 1:
            differ = (
                "their extension"
                if len({_stem(b) for b in same}) == 1
                else f"entities of derivatives ({', '.join(sorted(_DERIVATIVE_ENTITIES))})"
            )
            raise ManifestError(
                f"{func}: {' and '.join(b.name for b in same)} are one run (their names differ "
                f"only in {differ}), which would be read twice; keep one",
                param="manifest",
            )


def _events_of(bold: Path) -> Path:
    """The events file of a BOLD run: named as the BOLD file, or as its raw run (BIDS: a
    derivative's ``space-``, ``desc-``... entities are not in the events file's name)."""
    stem = _stem(bold)
    names = list(dict.fromkeys([f"{stem}_events.tsv", f"{_raw_stem(stem)}_events.tsv"]))
    for name in names:
        if (bold.parent / name).is_file():
            return bold.parent / name
    raise ManifestError(f"{bold}: no matching events file {' or '.join(names)}")


def _no_runs(sub: Path, task: str | None) -> str:
    """Why the subject folder ``sub`` has no BOLD run."""
    func, of_task = sub / "func", f" of task {task!r}" if task else ""
    if not func.is_dir():
        why = f"{sub} has no func/ folder, so no BOLD run{of_task}"
    else:
        others = (
            " (its other files are there: an incomplete download?)" if any(func.iterdir()) else ""
        )
        why = f"{func} has no *_bold.nii.gz file{of_task}{others}"
    return f"bold: {why}; every sub-* folder is a subject (move it out, or give a TSV manifest)"


def _read_bids(root: Path, *, mask, task: str | None) -> list[SubjectSpec]:
    subjects = sorted((p for p in root.glob("sub-*") if p.is_dir()), key=_natural_key)
    found = {
        sub: (
            sorted((sub / "func").glob("*_bold.nii*"), key=_natural_key),
            sorted(sub.glob("ses-*/func/*_bold.nii*"), key=_natural_key),
        )
        for sub in subjects
    }
    tasks = {_entity(_stem(b), "task") for both in found.values() for b in (*both[0], *both[1])}
    if not tasks:
        raise ManifestError(f"{root}: no sub-*/func/*_bold.nii.gz files found")
    if task is None and len(tasks) > 1:  # one analysis of one task, never runs of several
        raise ManifestError(
            f"manifest {root}: BOLD files of {len(tasks)} tasks ({_tasks_shown(tasks)}); a "
            "batch analyses one task: pass task=NAME",
            param="manifest",
        )
    if task is not None and task not in tasks:
        raise ManifestError(
            f"task: no BOLD file of task {task!r} in {root} (tasks found: {_tasks_shown(tasks)})",
            param="task",
        )
    runs_of: dict[Path, list[Path]] = {}
    without: list[Path] = []  # subject folders without a run
    for sub, (bolds, sessions) in found.items():
        if task is not None:
            bolds = [b for b in bolds if _entity(_stem(b), "task") == task]
            sessions = [b for b in sessions if _entity(_stem(b), "task") == task]
        if sessions:  # never left out without a word, with or without runs in func/
            raise ManifestError(
                f"{sub}: has runs in sessions ({sessions[0].relative_to(sub)}), which a "
                "BIDS-like folder is not read for (sub-*/func/ only); give a TSV manifest "
                "listing the runs",
                param="manifest",
            )
        _one_file_per_run(sub / "func", bolds)
        if bolds:
            runs_of[sub] = bolds
        else:  # a subject whose runs are missing is reported, never left out
            without.append(sub)
    if without:
        error = ManifestError(_no_runs(without[0], task), param="bold")
        raise _subject_error(error, without[0].name, [s.name for s in without[1:]])
    specs, own = [], []  # own: the subject has its own mask
    for sub, bolds in runs_of.items():
        events = [_events_of(b) for b in bolds]
        masks = sorted(  # fMRIPrep's brain masks (desc-brain) are not ROI masks
            m for m in (sub / "func").glob("*_mask.nii*")
            if task is None or _entity(_stem(m, "mask"), "task") in (None, task)
            if _entity(_stem(m, "mask"), "desc") != "brain"
        )  # fmt: skip
        if len(masks) > 1:
            raise ManifestError(
                f"{sub}: several masks in func/ ({', '.join(m.name for m in masks)}); "
                "keep one *_mask.nii.gz"
            )
        subject_mask = masks[0] if masks else (as_location(mask) if mask else None)
        if subject_mask is None:
            raise ManifestError(
                f"{sub}: no *_mask.nii.gz in func/ and no mask for every subject given "
                "(mask=PATH)",
                param="manifest",
            )
        own.append(bool(masks))
        specs.append(SubjectSpec(sub.name, tuple(bolds), tuple(events), subject_mask))
    _check_common_mask(mask, own, root, "a *_mask.nii.gz in its func/",
                       "move the subjects' masks out of func/")  # fmt: skip
    return specs
