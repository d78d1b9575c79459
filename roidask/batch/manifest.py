"""Which subjects a batch runs: TSV manifests and BIDS-like folders.

A manifest is a TSV with columns ``subject, bold, labels, mask`` (several runs
or label files separated by ``;``; relative paths are relative to the manifest);
a BIDS-like folder holds ``sub-*/func/*_bold.nii.gz`` with matching
``*_events.tsv`` files and a mask (``sub-*/func/*_mask.nii.gz`` or one for all).
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from roidask._pool import thread_pool
from roidask._validate import SUBJECT_NAME_RE
from roidask.exceptions import ManifestError, RoidaskError
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
    specs: list[SubjectSpec], params: PipelineParams | None = None, *, chunks=None
) -> None:
    """Check every subject's inputs as ``roidask run`` would, before a batch writes
    anything: the files exist and are not empty, the headers, labels and mask are
    valid and agree with each other and with ``params``, and no two subjects share an
    output folder.

    Reads headers, labels and masks (about 8 ms per subject on local files;
    concurrently from object storage), never a BOLD voxel; see
    :func:`roidask.runner.check_subject`.

    Raises
    ------
    ManifestError
        Two subjects would write the same folder (``01`` and ``sub-01``).
    RoidaskError
        The first subject (in manifest order) whose inputs are not valid: its
        error, as ``manifest: subject '03': ...``, with how many other subjects
        failed and which.
    """
    _check_out_names(specs, "manifest")
    params = PipelineParams.of(params)

    def check(spec: SubjectSpec) -> RoidaskError | None:
        try:
            with subject_context(spec.subject):  # its warnings name it
                _check_files(spec)  # named by the manifest's columns
                check_subject(list(spec.bold), list(spec.labels), spec.mask, params,
                              chunks=chunks)  # fmt: skip
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
        raise _subject_error(error, spec, others) from None


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


def _subject_error(exc: RoidaskError, spec: SubjectSpec, others: list[str]) -> RoidaskError:
    """``exc`` as the error of subject ``spec`` of a manifest, naming the others that failed.

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
    error = type(exc)(f"manifest: subject {spec.subject!r}: {text}{more}", param="manifest")
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


def read_manifest(manifest: PathOrURL, *, mask: PathOrURL | None = None):
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

    Returns
    -------
    list of SubjectSpec
    """
    path = as_location(manifest, "manifest")
    if mask is not None:
        as_location(mask, "mask")
    if isinstance(path, S3Path) and not path.is_file() and path.is_dir():
        raise ManifestError(
            f"manifest {path}: a BIDS-like folder in S3 is not read; give a TSV manifest",
            param="manifest",
        )
    if isinstance(path, Path) and path.is_dir():
        return _read_bids(path, mask=mask)
    if not path.exists():
        raise ManifestError(
            f"manifest {path}: no such file (expected a TSV file or a BIDS-like folder)",
            param="manifest",
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
                "(letters, digits, '.', '_' and '-', not starting with '.' or '-')"
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


def _read_bids(root: Path, *, mask) -> list[SubjectSpec]:
    specs = []
    for sub in sorted((p for p in root.glob("sub-*") if p.is_dir()), key=_natural_key):
        bolds = sorted((sub / "func").glob("*_bold.nii*"), key=_natural_key)
        if not bolds and any(sub.glob("ses-*/func/*_bold.nii*")):
            raise ManifestError(
                f"{sub}: its runs are in sessions (ses-*/func/), which a BIDS-like folder is "
                "not read for (sub-*/func/ only); give a TSV manifest listing the runs",
                param="manifest",
            )
        if not bolds:
            continue
        events = []
        for b in bolds:
            stem = b.name.split("_bold.nii")[0]
            ev = b.with_name(f"{stem}_events.tsv")
            if not ev.is_file():
                raise ManifestError(f"{b}: no matching events file {ev.name}")
            events.append(ev)
        masks = sorted((sub / "func").glob("*_mask.nii*"))
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
        specs.append(SubjectSpec(sub.name, tuple(bolds), tuple(events), subject_mask))
    if not specs:
        raise ManifestError(f"{root}: no sub-*/func/*_bold.nii.gz files found")
    return specs
