"""The ``roidask`` command line: argparse only, a thin shell over the library.

Each subcommand validates its inputs first; a bad input prints one line
(``roidask: error: ...``) to stderr and exits with status 2, without a
traceback and without leaving partial outputs behind. Library errors name
Python parameters; this module alone maps them to the command's flags.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import re
import resource
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import dask
import dask.threaded
import nibabel as nib
import numpy as np
import pandas as pd

from roidask import __version__
from roidask._atomic import check_not_held, check_not_input, check_parent, clean_stale
from roidask._malloc import limit_malloc_arenas
from roidask._progress import plural
from roidask._validate import only_applies
from roidask.batch import (
    GRANULARITIES,
    GroupPermutation,
    check_batch_folder,
    check_subjects,
    current_subject,
    prepare_group,
    read_manifest,
    run_batch,
)
from roidask.cluster import check_client_options, describe_client, get_client
from roidask.datasets import fetch_haxby, haxby_slice, make_synthetic_subject
from roidask.exceptions import (
    IncompleteOutputError,
    InvalidParameterError,
    OutputError,
    RoidaskError,
    RoidaskWarning,
    StoreError,
    Terminated,
)
from roidask.io.conversions import open_map
from roidask.io.image import to_nifti
from roidask.io.locations import (
    as_location,
    check_finished,
    is_remote,
    left_incomplete,
    location_arg,
)
from roidask.io.nifti import EXPORT_MARK
from roidask.io.store_read import (
    CHUNK_GRIDS_ATTR,
    checked_variables,
    list_subjects,
    missing_chunks,
    open_subject,
    root_disagreements,
    verify_groups,
    verify_store,
)
from roidask.io.store_write import convert
from roidask.ops.extract import STRATEGIES
from roidask.outputs.provenance import input_paths, start_input_records
from roidask.outputs.study import (
    GROUP_NODE,
    STUDY_ATTR,
    check_nodes,
    edited_in_root,
    published,
    verify_study,
)
from roidask.outputs.writer import prepare_output
from roidask.pipeline import RESULTS_ATTR, ROI_DEFINITIONS, TESTS, PipelineParams, n_rois_text
from roidask.runner import check_run, run_subject

__all__ = ["build_parser", "entry", "main"]

_DEFAULTS = PipelineParams()

#: Python parameter names and the flag (or positional) that sets them, per command.
FLAGS = {
    "bold": "BOLD",
    "bold_img": "BOLD",
    "labels": "--labels",
    "mask": "--mask",
    "mask_img": "--mask",
    "out": "--out",
    "store": "--store",
    "subject": "--subject",
    "tr_s": "--tr",
    "chunks": "--chunks",
    "overwrite": "--overwrite",
    "fwhm": "--fwhm",
    "contrast": "--contrast",
    "test": "--test",
    "threshold": "--threshold",
    "clip": "--clip",
    "dilation_iterations": "--dilation-iterations",
    "connectivity": "--connectivity",
    "min_roi_voxels": "--min-roi-voxels",
    "keep_largest": "--keep-largest",
    "strategy": "--strategy",
    "roi_definition": "--roi-definition",
    "manifest": "MANIFEST",
    "task": "--task",
    "max_concurrent": "--max-concurrent",
    "granularity": "--granularity",
    "scheduler": "--scheduler",
    "n_workers": "--n-workers",
    "threads_per_worker": "--threads-per-worker",
    "memory_limit": "--memory-limit",
    "tls_ca_file": "--tls-ca-file",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "dashboard": "--dashboard",
    "data_dir": "--data-dir",
    "subjects": "--subjects",
    "url": "--url",
    "n_perm": "--permutations",
    "two_sided": "--one-sided",
    "cluster_threshold": "--cluster-threshold",
    "seed": "--seed",
    "chunk_perm": "--chunk-perm",
}


#: Per command, parameters set by a positional argument rather than the flag of FLAGS.
COMMAND_FLAGS = {
    "info": {"store": "STORE"},
    "group": {"study": "STUDY_OR_BATCH", "connectivity": "--cluster-connectivity"},
    "export": {"path": "--out", "source": "MAP", "group": "--node", "variable": "--variable"},
    "demo": {"out_dir": "--out"},
}

#: Parameters whose False is a flag of the command line, as messages write it (``study=False``).
FALSE_FLAGS = {"study": "--no-study", "plots": "--no-plots"}

#: Library functions named in messages, and the command that does the same.
COMMANDS = {
    "roidask.io.convert": "roidask convert",
    "roidask.io.open_map": "roidask export",
    "roidask.to_nifti": "roidask export",
    "verify_store": "roidask info --verify",
}


#: Parameters a batch subject's error may name that are flags of ``batch`` (``tr_s`` is not).
_BATCH_PARAMS = {f.name for f in dataclasses.fields(PipelineParams)} | {"chunks"}


def format_error(exc: BaseException | str, command: str | None = None) -> str:
    """One line for an error, with Python parameter names replaced by the CLI's flags.

    ``command`` (``"info"``, ``"run"``...) selects the command's own names where a
    parameter is a positional argument there (:data:`COMMAND_FLAGS`).
    """
    flags = {**FLAGS, **COMMAND_FLAGS.get(command or "", {})}
    text = " ".join(str(exc).split())
    param = getattr(exc, "param", None)
    inner = getattr(exc, "subject_param", None)  # a batch subject's error: its parameter
    head = re.match(r"manifest: subject '[^']*': ", text)
    if head and inner in _BATCH_PARAMS and flags.get(inner, "").startswith("--"):
        rest = text[head.end() :]
        if rest.startswith(inner):
            text = head.group(0) + flags[inner] + rest[len(inner) :]
    listed = re.match(r"\w+(?:, \w+)+(?=: )", text)  # "tls_cert, tls_key: ..."
    if listed and all(flags.get(n, "").startswith("--") for n in listed.group(0).split(", ")):
        text = ", ".join(flags[n] for n in listed.group(0).split(", ")) + text[listed.end() :]
    if param in flags and text.startswith(param):
        flag = flags[param]
        if flag.startswith("--"):
            text = flag + text[len(param) :]
        elif text.startswith(f"{param} "):  # a positional: its value (a path) says enough
            text = text[len(param) + 1 :]
    for name, flag in FALSE_FLAGS.items():
        text = re.sub(rf"\b{name}=False\b", flag, text)
    for name, flag in flags.items():
        if flag.startswith("--"):
            text = re.sub(rf"\b{name}=True\b", flag, text)
            text = re.sub(rf"\bpass {name}=(?=\s|$)", f"pass {flag}", text)  # "pass subject= to"
            text = re.sub(rf"\b{name}=(?=[A-Z])", f"{flag} ", text)
            text = re.sub(rf"\b{name}='([\w-]+)'", rf"{flag} \1", text)  # test='welch'
    for function, cmd in COMMANDS.items():
        text = re.sub(rf"(?<![\w.]){re.escape(function)}\b", cmd, text)
    return text.replace("pass --", "add --")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, as every other error of the command line.

    A value that starts with ``-`` and a digit (``--memory-limit -1GiB``) is a value, as
    Python 3.13's argparse reads it, not an unknown option: the option's own check says
    what is wrong with it (no option of roidask is a dash and a digit).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str):
        message = re.sub(r"^argument ", "", " ".join(message.split()))
        message = re.sub(r"^(\S+): (?=s3://)", r"\1 ", message)  # "--mask s3://...: ..."
        missing = re.fullmatch(r"(--[\w-]+)(?:/[^:]*)?: expected one argument", message)
        if missing:  # "--out -x": argparse takes -x for an option
            message += f" (a value that starts with '-' is written {missing.group(1)}=VALUE)"
        self.exit(2, f"roidask: error: {message} (see {self.prog} --help)\n")


# -- argument types ----------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _local_path(text: str) -> Path:
    """argparse ``type=`` for an argument that takes only a local path (not ``s3://``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    if "://" in text:
        raise argparse.ArgumentTypeError(
            f"expected a local path (URLs are not read here), got {text!r}"
        )
    return Path(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


# -- convert -----------------------------------------------------------------------------
def _add_bold_inputs(p, *, required: bool) -> None:
    """BOLD run(s), their labels and the TR: the inputs ``convert`` and ``run`` share."""
    p.add_argument(
        "bold",
        nargs="+" if required else "*",
        type=location_arg,
        metavar="BOLD",
        help="4D .nii/.nii.gz/.nii.zarr run(s), in acquisition order",
    )
    p.add_argument(
        "--labels",
        action="append",
        type=location_arg,
        required=required,
        default=None,
        help="Haxby labels.txt, or one BIDS *_events.tsv per run (repeat the flag)",
    )
    p.add_argument(
        "--tr",
        type=_positive_float,
        default=None,
        dest="tr_s",
        help="repetition time in seconds (default: from the header)",
    )


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert 4D BOLD NIfTI run(s) into a chunked zarr store",
        description="Convert 4D BOLD NIfTI run(s), concatenated along time, with their "
        "labels into a subject group of a chunked zarr v3 store (every chunk checksummed). "
        "The subject appears in the store only once completely written.",
    )
    _add_bold_inputs(p, required=True)
    p.add_argument("--out", type=location_arg, required=True, help="store to create or add to")
    p.add_argument("--subject", default="sub-01", help="subject group name (default: sub-01)")
    p.add_argument(
        "--chunks",
        default=None,
        help="chunk sizes, e.g. x=20,y=32,z=32,time=100 (default: whole volumes, ~16 MB)",
    )
    p.add_argument(
        "--mask", type=location_arg, default=None, help="3D mask stored beside the BOLD data"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the subject if the store holds it (only a subject roidask wrote)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    out = convert(
        args.bold,
        labels=args.labels,
        out=args.out,
        subject=args.subject,
        tr_s=args.tr_s,
        chunks=args.chunks,
        mask_img=args.mask,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote subject {args.subject!r} to {out}")
    return 0


# -- info --------------------------------------------------------------------------------
def _add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="describe a roidask store, results.zarr or study.zarr (and verify it)",
        description="Describe a roidask store (its subjects, shapes, chunks, conditions, "
        "runs and sources), a subject's results.zarr (parameters, grid, ROIs, maps) or a "
        "batch's study.zarr (subjects, group level). With --verify, read every chunk and "
        "check its checksum; the damaged or missing chunks are listed and the exit status "
        "is 1.",
    )
    p.add_argument(
        "store",
        type=location_arg,
        metavar="STORE",
        help="a roidask zarr store (roidask convert), results.zarr or study.zarr",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="read every chunk and check it (default: describe only, no voxel read)",
    )
    p.set_defaults(func=_cmd_info)


def describe_store(store, *, damaged: list | None = None) -> str:
    """A human-readable summary of a store: subjects, shapes, chunks, conditions, runs.

    No voxel is read. A subject whose chunks are missing (its chunk inventory) or
    whose metadata is corrupt is reported as damaged, and its error appended to
    ``damaged`` if given.
    """
    lines = [f"store {store}"]
    subjects = list_subjects(store)
    incomplete = sorted(set(list_subjects(store, include_incomplete=True)) - set(subjects))
    lines.append(f"subjects: {len(subjects)} ({', '.join(subjects) or 'none'})")
    if incomplete:
        lines.append(f"incomplete (ignored): {', '.join(incomplete)}")
    problems = root_disagreements(store)  # what the root lists (plain xarray reads) vs the disk
    for d in problems:
        lines.append(
            f"damaged: {'/'.join(p for p in (d.subject, d.array, d.chunk) if p)}: {d.reason}"
        )
    if damaged is not None:
        damaged.extend(problems)
    for name in subjects:
        try:
            ds = open_subject(store, name)
        except StoreError as exc:
            lines.append(f"\n[{name}]\n  damaged: {format_error(exc, 'info')}")
            if damaged is not None:
                damaged.append(exc)
            continue
        bold = ds["bold"]
        chunks = "x".join(str(c[0]) for c in bold.data.chunks)
        lines.append(f"\n[{name}]")
        lines.append(
            f"  bold: shape {'x'.join(map(str, bold.shape))} {bold.dtype}, "
            f"chunks {chunks} ({plural(bold.data.npartitions, 'chunk')})"
        )
        vox = bold.attrs.get("voxel_size_mm")
        if vox:
            lines.append(
                f"  voxels: {' x '.join(f'{v:g}' for v in vox)} mm, TR {bold.attrs.get('tr_s')} s"
            )
        conds, counts = np.unique(ds["condition"].values, return_counts=True)
        lines.append(
            "  conditions: " + ", ".join(f"{c} ({n})" for c, n in zip(conds, counts, strict=True))
        )
        runs = np.unique(ds["run"].values)
        lines.append(f"  runs: {len(runs)} ({', '.join(map(str, runs))})")
        others = [v for v in ds.data_vars if v != "bold"]
        if others:
            lines.append(
                "  images: "
                + ", ".join(f"{v} {'x'.join(map(str, ds[v].shape))} {ds[v].dtype}" for v in others)
            )
        n_bad = bold.attrs.get("n_nonfinite", 0)
        if n_bad:
            lines.append(f"  non-finite voxel values: {n_bad}")
        files = bold.attrs.get("source_files", [])
        if files:
            lines.append(f"  sources: {', '.join(Path(f).name for f in files)}")
        if CHUNK_GRIDS_ATTR in ds.attrs:
            lines.append(
                "  chunks: all present, each with a CRC-32C checksum (not read here; "
                "--verify reads and checks them)"
            )
    return "\n".join(lines)


def _root_attrs(store) -> dict:
    """The attributes of a zarr store's root group ({} if it has none to read)."""
    try:
        record = json.loads((as_location(store) / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return {}
    attrs = record.get("attributes") if isinstance(record, dict) else None
    return attrs if isinstance(attrs, dict) else {}


def _arrays_line(metadata: dict, dims: tuple[str, ...]) -> str:
    """``name shape dtype`` of the arrays on ``dims`` in consolidated metadata, or on
    ``("fold", *dims)`` (a ``--roi-definition`` with folds: ``fold`` first in the shape)."""
    found = [
        f"{name} {'x'.join(map(str, meta['shape']))} {meta['data_type']}"
        for name, meta in sorted(metadata.items())
        if meta.get("node_type") == "array"
        and tuple(meta.get("dimension_names") or ()) in (dims, ("fold", *dims))
        and "/" not in name
    ]
    return ", ".join(found) or "none"


def describe_results(store, *, damaged: list | None = None) -> str:
    """A summary of a subject's ``results.zarr``: parameters, grid, ROIs, maps (no voxel read).

    A chunk missing from its inventory is reported as damage, and its error appended
    to ``damaged`` if given.
    """
    record = json.loads((as_location(store) / "zarr.json").read_bytes())
    attrs = record["attributes"]
    metadata = record.get("consolidated_metadata", {}).get("metadata", {})
    contrast = attrs.get("contrast") or ["?", "?"]
    grid = next(
        (m["shape"] for n, m in metadata.items() if n == "logp" and m.get("node_type") == "array"),
        None,
    )
    voxels = attrs.get("voxel_size_mm") or []
    lines = [
        f"results {store}: one subject's results (format {attrs[RESULTS_ATTR]})",
        f"contrast: {contrast[0]} vs {contrast[1]} ({attrs.get('test')} t-test), fwhm "
        f"{attrs.get('fwhm_mm')} mm, -log10 p clipped at {attrs.get('clip')}, threshold "
        f"{attrs.get('threshold')}, {attrs.get('dilation_iterations')} dilation(s), "
        f"connectivity {attrs.get('connectivity')}, ROI definition "
        f"{attrs.get('roi_definition')}",
    ]
    if grid:
        size = " x ".join(f"{v:.3g}" for v in voxels)
        lines.append(
            f"grid: {'x'.join(map(str, grid))} voxels of {size} mm, TR {attrs.get('tr_s')} s"
        )
    n_rois = attrs.get("n_rois")
    per_fold = " (per fold)" if isinstance(n_rois, list) else ""
    lines.append(f"ROIs: {_n_rois_shown(n_rois)}{per_fold}")
    lines.append(f"maps: {_arrays_line(metadata, ('x', 'y', 'z'))}")
    lines.append(f"signals: {_arrays_line(metadata, ('roi', 'time'))}")
    if CHUNK_GRIDS_ATTR in attrs:
        try:  # lists the chunks (no data read): a deleted one is named
            checked_variables(store, sorted(attrs[CHUNK_GRIDS_ATTR]))
        except StoreError as exc:
            lines.append(f"damaged: {format_error(exc, 'info')}")
            if damaged is not None:
                damaged.append(exc)
        else:
            lines.append(
                "chunks: all present, each with a CRC-32C checksum (not read here; --verify "
                "reads and checks them)"
            )
    return "\n".join(lines)


def _n_rois_shown(n_rois) -> str:
    """The ``n_rois`` attribute of a ``results.zarr`` or a study node as ``batch.tsv``
    writes it: ``5``, or one count per fold, ``3;4`` (``?``: none)."""
    if n_rois is None:
        return "?"
    try:
        return n_rois_text(n_rois)
    except (TypeError, ValueError):  # not as roidask wrote it
        return str(n_rois)


def _rois_shown(n_rois) -> str:
    """A study node's ``n_rois`` attribute in words: ``5 ROIs``, ``3;4 ROIs per fold``."""
    if isinstance(n_rois, list):
        return f"{_n_rois_shown(n_rois)} ROIs per fold"
    return plural(n_rois if isinstance(n_rois, int) else _n_rois_shown(n_rois), "ROI")


def describe_study(store, *, damaged: list | None = None) -> str:
    """A summary of a study store: its published subjects and group level (no voxel read).

    A published node missing a chunk of its inventory is reported as damaged (the
    chunks are listed, not read), and an error appended to ``damaged`` if given.
    """
    names = published(store)
    subjects = [n for n in names if n != GROUP_NODE]
    record = json.loads((as_location(store) / "zarr.json").read_bytes())
    metadata = record.get("consolidated_metadata", {}).get("metadata", {})
    shown = ", ".join(
        f"{n} ({_rois_shown(metadata.get(n, {}).get('attributes', {}).get('n_rois'))})"
        for n in subjects[:20]
    )
    more = f", ... ({len(subjects) - 20} more)" if len(subjects) > 20 else ""
    lines = [
        f"study {store}: one node per subject and the group level (xr.open_datatree)",
        f"subjects: {len(subjects)}{': ' + shown + more if subjects else ''}",
    ]
    if GROUP_NODE in names:
        group = metadata.get(GROUP_NODE, {}).get("attributes", {})
        lines.append(f"group level: {plural(group.get('n_subjects', '?'), 'subject')}")
    else:
        lines.append("group level: none")
    location, harmed = as_location(store), []
    bad_nodes, _ = check_nodes(location)
    for node in bad_nodes:
        lines.append(f"damaged: node {node.subject}: {node.chunk} {node.reason}")
        harmed.append(node.subject)
    for array in edited_in_root(location, [n for n in names if n not in harmed]):
        lines.append(f"damaged: node {array.subject}: {array.array}/{array.chunk} {array.reason}")
        harmed.append(array.subject)
    for name in names:
        if name in harmed:
            continue
        grids = metadata.get(name, {}).get("attributes", {}).get(CHUNK_GRIDS_ATTR) or {}
        missing = missing_chunks(location / name, grids)
        if missing:
            keys = ", ".join(f"{a}/{k}" for a, k in missing[:5])
            more = " ..." if len(missing) > 5 else ""
            lines.append(f"damaged: node {name}: {len(missing)} chunk(s) missing ({keys}{more})")
            harmed.append(name)
    if damaged is not None:
        damaged.extend(harmed)
    if not harmed:
        lines.append(
            "nodes: each complete when published, all its chunks present, each with a "
            "CRC-32C checksum (not read here; --verify reads and checks them)"
        )
    return "\n".join(lines)


def _damage_count(found: list, store) -> str:
    """How many chunks, and how many other files or objects (metadata, a killed upload's
    marker), ``info --verify`` found damaged."""
    chunks = sum(d.chunk == "c" or d.chunk.startswith("c/") for d in found)
    others = len(found) - chunks
    noun = "metadata or marker object(s)" if is_remote(store) else "metadata file(s)"
    parts = [f"{chunks} damaged chunk(s)"] if chunks else []
    parts += [f"{others} damaged {noun}"] if others else []
    return " and ".join(parts)


def _cmd_info(args) -> int:
    try:  # an s3:// output whose upload was cut: said so, before anything of it is read
        check_finished(args.store, folder=True)
    except IncompleteOutputError as exc:
        print(format_error(exc, "info"))
        return 1
    attrs = _root_attrs(args.store)
    kind = "study" if STUDY_ATTR in attrs else "results" if RESULTS_ATTR in attrs else "store"
    if not args.verify:
        damaged: list = []
        if kind == "study":
            print(describe_study(args.store, damaged=damaged))
        elif kind == "results":
            print(describe_results(args.store, damaged=damaged))
        else:
            print(describe_store(args.store, damaged=damaged))
        if damaged:
            print(f"{kind} {args.store}: damaged; roidask info --verify STORE lists every chunk")
        return 1 if damaged else 0
    if kind == "study":
        found = verify_study(args.store)
    elif kind == "results":
        found = verify_groups(args.store, {"": attrs})
    else:
        found = verify_store(args.store)
    if not found:
        every = "every chunk" + (" of every subject" if kind == "store" else "")
        print(f"{kind} {args.store}: {every} reads and passes its checksum")
        return 0
    print(f"{kind} {args.store}: {_damage_count(found, args.store)}")
    for d in found:
        print(f"  {'/'.join(p for p in (d.subject, d.array, d.chunk) if p)}: {d.reason}")
    return 1


# -- run / batch -------------------------------------------------------------------------
def _add_analysis_options(p) -> None:
    """Options of the ROI analysis shared by ``run`` and ``batch``."""
    d = _DEFAULTS
    g = p.add_argument_group("analysis (defaults: nilearn's ROI example)")
    g.add_argument(
        "--fwhm", type=float, default=d.fwhm, help=f"smoothing FWHM in mm (default: {d.fwhm:g})"
    )
    g.add_argument(
        "--contrast",
        nargs=2,
        default=list(d.contrast),
        metavar=("A", "B"),
        help=f"conditions compared by the t-test, A minus B (default: {' '.join(d.contrast)})",
    )
    g.add_argument(
        "--test",
        choices=TESTS,
        default=d.test,
        help=f"two-sample t-test (default: {d.test}, as scipy's ttest_ind)",
    )
    g.add_argument(
        "--threshold",
        type=float,
        default=d.threshold,
        help=f"-log10 p threshold (default: {d.threshold:g})",
    )
    g.add_argument(
        "--clip",
        type=float,
        default=d.clip,
        help=f"clip -log10 p at this value (default: {d.clip:g})",
    )
    g.add_argument(
        "--dilation-iterations",
        type=int,
        default=d.dilation_iterations,
        help=f"binary dilations of the ROI mask (default: {d.dilation_iterations})",
    )
    g.add_argument(
        "--connectivity",
        type=int,
        choices=[6, 18, 26],
        default=d.connectivity,
        help=f"voxel neighbourhood for dilation and components (default: {d.connectivity})",
    )
    g.add_argument(
        "--min-roi-voxels",
        type=int,
        default=d.min_roi_voxels,
        help=f"drop smaller components (default: {d.min_roi_voxels}, keep all)",
    )
    g.add_argument(
        "--keep-largest",
        type=int,
        default=d.keep_largest,
        help="keep only the k largest ROIs (default: all)",
    )
    g.add_argument(
        "--strategy",
        default=d.strategy,
        choices=STRATEGIES,
        help=f"per-ROI signal strategy, as NiftiLabelsMasker (default: {d.strategy})",
    )
    g.add_argument(
        "--roi-definition",
        default=d.roi_definition,
        choices=ROI_DEFINITIONS,
        help="which runs define the ROIs and which give their signals: 'same' (every "
        "volume for both, the example; the selection biases the reported effect), "
        "'split-half' (ROIs from the odd runs, signals of the even runs, and the reverse; "
        "runs counted from 1 in increasing order of their run value) or "
        "'leave-one-run-out' (per run: ROIs from the other runs); one read of the data "
        f"either way (default: {d.roi_definition})",
    )
    g.add_argument(
        "--chunks",
        default=None,
        help="BOLD chunk sizes, e.g. x=20,y=32,time=100 (default: whole volumes; results "
        "do not depend on it)",
    )
    g.add_argument("--no-plots", action="store_true", help="do not write figures")
    _add_execution_options(p)


def _add_execution_options(p) -> None:
    """Where a command computes: the dask cluster options (``run``, ``batch``, ``group``)."""
    c = p.add_argument_group("execution")
    c.add_argument(
        "--scheduler",
        default=None,
        help="'local' (an embedded dask LocalCluster) or the address tcp://HOST:PORT or "
        "tls://HOST:PORT of a running scheduler (default: `run` computes in this process's "
        "threads, `batch` and `group` start an embedded LocalCluster)",
    )
    c.add_argument(
        "--n-workers",
        type=_positive_int,
        default=None,
        help="embedded cluster workers (default: `batch` and `group`, one process per core, "
        "of 2 threads beyond 4 cores; `run --scheduler local`, one in this process)",
    )
    c.add_argument(
        "--threads-per-worker",
        type=_positive_int,
        default=None,
        help="threads per embedded worker; `run` without --scheduler: threads used "
        "(default: the cores)",
    )
    c.add_argument(
        "--memory-limit",
        default=None,
        help="memory per embedded worker, e.g. 4GiB (default: the machine's memory shared)",
    )
    c.add_argument("--tls-ca-file", default=None, help="CA certificate (tls:// scheduler)")
    c.add_argument("--tls-cert", default=None, help="client certificate (tls:// scheduler)")
    c.add_argument("--tls-key", default=None, help="client private key (tls:// scheduler)")
    c.add_argument(
        "--dashboard", action="store_true", help="serve the dask dashboard (default: off)"
    )
    c.add_argument("--quiet", action="store_true", help="no progress bars")


def pipeline_params(args) -> PipelineParams:
    """PipelineParams from parsed ``run``/``batch`` arguments."""
    return PipelineParams(
        contrast=tuple(args.contrast),
        fwhm=args.fwhm,
        test=args.test,
        clip=args.clip,
        threshold=args.threshold,
        dilation_iterations=args.dilation_iterations,
        connectivity=args.connectivity,
        min_roi_voxels=args.min_roi_voxels,
        keep_largest=args.keep_largest,
        strategy=args.strategy,
        roi_definition=args.roi_definition,
    )


def client_options(args) -> dict:
    """Keyword arguments of :func:`roidask.cluster.get_client` from parsed arguments."""
    return dict(
        n_workers=args.n_workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
        tls_ca_file=args.tls_ca_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        dashboard=args.dashboard,
    )


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run the ROI pipeline on one subject",
        description="Smooth, t-test, threshold, AND mask, dilate, label, extract: the ROI "
        "analysis of nilearn's example, on one subject, written atomically into --out. "
        "Every input and --out are checked before any voxel is read.",
    )
    _add_bold_inputs(p, required=False)
    p.add_argument(
        "--store", type=location_arg, default=None, help="a converted store instead of BOLD"
    )
    p.add_argument(
        "--subject", default=None, help="subject of --store (default: its only subject)"
    )
    p.add_argument(
        "--mask", type=location_arg, required=True, help="3D binary mask (e.g. ventral temporal)"
    )
    p.add_argument("--out", type=location_arg, required=True, help="output folder")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out that roidask wrote (never a folder of yours)",
    )
    _add_analysis_options(p)
    p.set_defaults(func=_cmd_run)


def _summary(result, out, wall_s: float) -> str:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    logp = result.maps["logp"].values
    lines = [f"ROIs found: {result.n_rois}"]
    if result.folds is not None:  # each fold's count, never their sum (as batch.tsv)
        counts = ";".join(str(n) for n in result.fold_n_rois())
        lines[0] = (
            f"ROIs found: {counts} per fold, in {len(result.folds)} folds "
            f"({result.params.roi_definition})"
        )
    for k in range(len(result.folds or [None])):
        if result.folds is not None:
            lines.append(f" {result.fold_title(k)}: {plural(result.fold_n_rois()[k], 'ROI')}")
        rows = result.rois if result.folds is None else result.rois[result.rois["fold"] == k]
        for row in rows.itertuples(index=False):
            lines.append(
                f"  ROI {row.label}: {row.n_voxels} voxels, {row.volume_mm3:.0f} mm3, "
                f"peak -log10 p {row.peak_value:.2f} at "
                f"({row.peak_x_mm:.1f}, {row.peak_y_mm:.1f}, {row.peak_z_mm:.1f}) mm"
            )
    lines.append(f"peak -log10 p: {float(np.nanmax(logp)) if logp.size else float('nan'):.2f}")
    lines.append(f"wall time: {wall_s:.1f} s, peak memory (this process): {peak:.0f} MB")
    lines.append(f"outputs: {out}")
    figs = [] if is_remote(out) else sorted((Path(out) / "figures").glob("*.png"))
    if figs:
        lines.append(f"figures: {Path(out) / 'figures'} ({plural(len(figs), 'PNG file')})")
    return "\n".join(lines)


#: Options of ``run`` that apply only to an embedded cluster, or to a TLS scheduler.
_EMBEDDED_ONLY = ("n_workers", "memory_limit", "dashboard")
_TLS_ONLY = ("tls_ca_file", "tls_cert", "tls_key")


@contextlib.contextmanager
def _threads(n: int) -> Iterator[str]:
    # The scheduler as a function: naming it ("threads") makes dask import
    # distributed (~0.5 s, ~50 MB) to look for a client.
    with dask.config.set(scheduler=dask.threaded.get, num_workers=n):
        yield f"this process, {n} thread{'s' if n > 1 else ''}"


@contextlib.contextmanager
def _cluster(
    address: str | None, args, *, processes: bool, announce: bool = True
) -> Iterator[str]:
    with get_client(address, processes=processes, **client_options(args)) as client:
        if announce and not args.quiet:  # with its dashboard's address, if it serves one
            print(f"dask: {describe_client(client)}", file=sys.stderr)
        yield address or "embedded LocalCluster"


def _run_executor(args):
    """Where ``roidask run`` computes: this process's threads, or a dask cluster."""
    if args.scheduler is not None:
        address = None if args.scheduler == "local" else args.scheduler
        return _cluster(address, args, processes=False)
    for names, what, hint in (
        (_EMBEDDED_ONLY, "an embedded cluster", "--scheduler local"),
        (_TLS_ONLY, "a 'tls://HOST:PORT' scheduler address", "--scheduler tls://HOST:PORT"),
    ):
        given = [FLAGS[k] for k in names if getattr(args, k) not in (None, False)]
        if given:  # as get_client says it of a cluster they do not apply to
            raise InvalidParameterError(f"{only_applies(given, what)}; add {hint}")
    return _threads(args.threads_per_worker or os.cpu_count() or 1)


def _held_elsewhere(out, *, param: str = "out") -> None:
    """Refuse a local ``out`` inside a folder a running batch or group level holds."""
    if isinstance(out, Path):
        check_not_held(out, param=param)


def _cmd_run(args) -> int:
    start = time.perf_counter()
    _held_elsewhere(args.out)
    params = pipeline_params(args)
    if args.scheduler is not None:  # everything checked before a cluster starts
        check_run(
            bold=args.bold, labels=args.labels, store=args.store, subject=args.subject,
            mask=args.mask, out=args.out, params=params, chunks=args.chunks, tr_s=args.tr_s,
            overwrite=args.overwrite,
        )  # fmt: skip
    inputs = start_input_records(
        input_paths(bold=args.bold, labels=args.labels, store=args.store, mask=args.mask)
    )
    with _run_executor(args) as scheduler:
        result = run_subject(
            bold=args.bold,
            labels=args.labels,
            store=args.store,
            subject=args.subject,
            mask=args.mask,
            out=args.out,
            params=params,
            chunks=args.chunks,
            tr_s=args.tr_s,
            plots=not args.no_plots,
            overwrite=args.overwrite,
            progress=not args.quiet,
            inputs=inputs,
            extra_provenance={"scheduler": scheduler, "chunks": args.chunks},
        )
    print(_summary(result, args.out, time.perf_counter() - start))
    return 0


def _add_batch(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="run the ROI pipeline on many subjects on one dask cluster",
        description="Run `roidask run` for every subject of a manifest (TSV with columns "
        "subject, bold, labels, mask; runs separated by ';') or a BIDS-like folder, "
        "concurrently on one dask cluster; then a group level. Completed subjects "
        "(same parameters and inputs) are skipped when the batch is run again.",
    )
    p.add_argument(
        "manifest", type=location_arg, metavar="MANIFEST", help="TSV or BIDS-like folder"
    )
    p.add_argument("--out", type=location_arg, required=True, help="batch output folder")
    p.add_argument(
        "--mask",
        type=location_arg,
        default=None,
        help="mask for every subject without its own (an empty mask cell or no mask "
        "column; no *_mask.nii.gz in a BIDS subject's func/)",
    )
    p.add_argument(
        "--task",
        default=None,
        metavar="NAME",
        help="the task of a BIDS-like folder to analyse (its task-NAME files); needed when "
        "its BOLD files are of several tasks",
    )
    p.add_argument(
        "--max-concurrent",
        type=_positive_int,
        default=None,
        help="subjects in flight at once (default: as many as the workers take; "
        "with --granularity block, the worker threads, 2 to 8)",
    )
    p.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        default="auto",
        help="'subject': one task per subject, run whole by one worker as `roidask run` "
        "would; 'block': each subject's blocks spread over all workers (slower); 'auto' "
        "(default): per subject, by blocks for a subject that does not fit a worker "
        "thread's memory",
    )
    p.add_argument(
        "--no-study",
        action="store_true",
        help="do not write the study store OUT/study.zarr (every subject's results, one "
        "xarray DataTree)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="check the manifest, every subject's inputs and --out as the batch would, "
        "then stop: no cluster, nothing written (e.g. before submitting a job)",
    )
    _add_analysis_options(p)
    _add_permutation_options(p, batch=True)
    p.set_defaults(func=_cmd_batch)


def _cmd_batch(args) -> int:
    start = time.perf_counter()
    params = pipeline_params(args)
    permutation = group_permutation(args)
    specs = read_manifest(args.manifest, mask=args.mask, task=args.task)
    check_batch_folder(args.out, specs, study=not args.no_study)  # reads no input
    check_subjects(specs, params=params, chunks=args.chunks)  # before a cluster is started
    address = None if args.scheduler == "local" else args.scheduler
    if args.check:  # and the cluster's options, as get_client checks them
        options = {k: v for k, v in client_options(args).items() if k != "dashboard"}
        check_client_options(address, processes=True, **options)
        print(
            f"checked: {plural(len(specs), 'subject')}, their inputs, {args.out} and the "
            "cluster's options"
        )
        return 0
    # run_batch announces the cluster, its dashboard and how it spreads the subjects
    try:
        with _cluster(address, args, processes=True, announce=False):
            table = run_batch(
                specs,
                args.out,
                params=params,
                chunks=args.chunks,
                plots=not args.no_plots,
                max_concurrent=args.max_concurrent,
                granularity=args.granularity,
                progress=not args.quiet,
                study=not args.no_study,
                permutation=permutation,
                check_inputs=False,
            )
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the embedded cluster's workers are gone
        out = as_location(args.out)
        if address is None and isinstance(out, Path) and out.is_dir():  # not locked now:
            # what they were writing (one listing of the folder, not one per subject)
            left = {p.name for p in out.iterdir() if ".roidask-tmp-" in p.name}
            for spec in specs:
                if any(n.startswith(f".{spec.out_name}.") for n in left):
                    clean_stale(out / spec.out_name)
        raise
    counts = table["status"].value_counts().to_dict()
    print(f"subjects: {len(table)} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
    for row in table[table["status"] == "failed"].itertuples(index=False):
        print(f"  {row.subject}: {row.error}")
    out = as_location(args.out)
    failed_group = (out / "group-error.txt").is_file()
    if failed_group:
        print(f"group level: failed ({(out / 'group-error.txt').read_bytes().decode().strip()})")
    elif not (out / "group").is_dir():
        completed = int(table["status"].isin(["done", "skipped"]).sum())
        print(f"group level: none ({plural(completed, 'subject')} completed, 2 needed)")
    elif permutation is not None and isinstance(out, Path):
        for line in _permutation_summary(out / "group"):
            print(line)
    written = ["batch.tsv", "sub-*/"]
    if failed_group or (out / "group").is_dir():
        written.append("group-error.txt" if failed_group else "group/")
    if not args.no_study:
        written.append("study.zarr")
    print(f"outputs: {args.out} ({', '.join(written)})")
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    return 1 if counts.get("failed") or failed_group else 0


# -- group -------------------------------------------------------------------------------
def _add_permutation_options(p, *, batch: bool) -> None:
    """The group level's permutation test (``group``, and ``batch --permutations N``)."""
    g = p.add_argument_group(
        "group permutation test (sign flips of the subjects' t maps: max-t and cluster FWE)"
    )
    d = GroupPermutation()
    g.add_argument(
        "--permutations",
        type=_positive_int,
        default=None if batch else d.n_perm,
        help="random sign flips (all 2^n - 1 flips instead when that is not more); "
        + ("default: no permutation test" if batch else f"default: {d.n_perm}"),
    )
    g.add_argument(
        "--cluster-threshold",
        type=float,
        default=d.cluster_threshold,
        metavar="P",
        help="cluster-forming threshold, an uncorrected p (e.g. 0.001), for cluster-size "
        "and cluster-mass FWE p-values (default: no cluster inference)",
    )
    g.add_argument(
        "--one-sided",
        action="store_true",
        help="test positive effects only (default: two-sided, |t|)",
    )
    g.add_argument(
        "--cluster-connectivity",
        type=int,
        choices=[6, 18, 26],
        default=None,
        help=f"cluster neighbourhood (default: {d.connectivity})",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"seed of the random flips; results do not depend on the workers (default: {d.seed})",
    )
    g.add_argument(
        "--chunk-perm",
        type=_positive_int,
        default=None,
        help=f"permutations per dask task (default: {d.chunk_perm}; no effect on results)",
    )
    if not batch:
        g.add_argument(
            "--mask",
            dest="perm_mask",  # batch's --mask is the subjects' mask, never this one
            type=_local_path,
            default=None,
            help="3D mask of the voxels tested (default: voxels finite in every subject's "
            "t map and non-zero in one)",
        )


def group_permutation(args) -> GroupPermutation | None:
    """GroupPermutation from parsed arguments (None: ``batch`` without --permutations)."""
    if args.permutations is None:
        given = [
            flag
            for flag, value in (
                ("--cluster-threshold", args.cluster_threshold),
                ("--one-sided", args.one_sided or None),
                ("--cluster-connectivity", args.cluster_connectivity),
                ("--seed", args.seed),
                ("--chunk-perm", args.chunk_perm),
            )
            if value is not None
        ]
        if given:
            raise InvalidParameterError(
                f"{only_applies(given, 'the permutation test')}; add --permutations N"
            )
        return None
    options = {"connectivity": args.cluster_connectivity, "seed": args.seed,
               "chunk_perm": args.chunk_perm}  # fmt: skip
    return GroupPermutation(
        n_perm=args.permutations,
        two_sided=not args.one_sided,
        cluster_threshold=args.cluster_threshold,
        mask=getattr(args, "perm_mask", None),
        **{k: v for k, v in options.items() if v is not None},  # else GroupPermutation's
    )


def _add_group(sub) -> None:
    p = sub.add_parser(
        "group",
        help="group level of a batch or study store, with a permutation test",
        description="The group level of a finished batch (its completed subjects) or of a "
        "study store (its published subjects): a one-sample t-test of the subjects' t maps, "
        "the ROI overlap, and a sign-flip permutation test of the same maps on a dask "
        "cluster (voxel-level FWE by max-t, cluster-size and cluster-mass FWE with "
        "--cluster-threshold; exhaustive flips when 2^n - 1 <= --permutations). Written "
        "atomically into the batch's group/ and the study's group node, which mirrors it "
        "(another --out in a batch folder leaves both as they are).",
    )
    p.add_argument(
        "study", type=_local_path, metavar="STUDY_OR_BATCH", help="a batch folder or a study.zarr"
    )
    p.add_argument(
        "--out",
        type=_local_path,
        default=None,
        help="group folder to write (default: group/ of the batch folder)",
    )
    _add_permutation_options(p, batch=False)
    _add_execution_options(p)
    p.set_defaults(func=_cmd_group)


def _cmd_group(args) -> int:
    start = time.perf_counter()
    permutation = group_permutation(args)
    plan = prepare_group(args.study, out=args.out, permutation=permutation)  # no cluster yet
    address = None if args.scheduler == "local" else args.scheduler
    node = None if plan.study is None else f"{plan.study.path}, node {GROUP_NODE}"
    with _cluster(address, args, processes=True):
        out = plan.run()
    subjects = pd.read_csv(out / "subjects.tsv", sep="\t")
    print(f"subjects: {len(subjects)}")
    for line in _permutation_summary(out):
        print(line)
    print(f"outputs: {out}" + (f" and {node}" if node else ""))
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    return 0


def _permutation_summary(group: Path) -> list[str]:
    """What a group folder's permutation test did and found, in lines (``group`` and
    ``batch --permutations``), with what no voxel could reach."""
    record = json.loads((group / "permutation.json").read_text())
    n_perm, flips = int(record["n_perm"]), record["flips"]
    lines = [
        f"permutations: {n_perm} ({flips} sign flips"
        + (f", seed {record['seed']})" if flips == "random" else ")")
    ]
    # nibabel's load() is annotated as returning FileBasedImage, which lacks get_fdata
    logp = nib.load(group / "perm_logp_max_t.nii.gz").get_fdata()  # type: ignore[attr-defined]
    significant = int(np.count_nonzero(logp > -np.log10(0.05)))
    lines.append(f"voxels with FWE-corrected p < 0.05 (max-t): {significant}")
    if (group / "perm_logp_max_size.nii.gz").exists():
        size = nib.load(group / "perm_logp_max_size.nii.gz").get_fdata()  # type: ignore[attr-defined]
        lines.append(
            f"voxels in clusters with FWE-corrected p < 0.05 (size): "
            f"{int(np.count_nonzero(size > -np.log10(0.05)))}"
        )
    smallest = 1 / (n_perm + 1)  # the observed maps count as one of the flips
    if smallest >= 0.05:
        why = (
            f"{record.get('n_subjects', '?')} subjects have only {n_perm + 1} sign flips"
            if flips == "exhaustive"
            else "ask for more --permutations"
        )
        lines.append(
            f"note: the smallest p these {n_perm + 1} flips can give is 1/{n_perm + 1} = "
            f"{smallest:.3g}: no voxel can reach p < 0.05 ({why})"
        )
    return lines


# -- fetch / demo ------------------------------------------------------------------------
def _add_fetch(sub) -> None:
    p = sub.add_parser(
        "fetch",
        help="download a public dataset (haxby)",
        description="Download the Haxby et al. (2001) subjects from the public source nilearn "
        "uses, resumably, with size and checksum verification and safe extraction.",
    )
    p.add_argument("dataset", choices=["haxby"], help="dataset to fetch")
    p.add_argument(
        "--subjects",
        type=int,
        nargs="+",
        default=[2],
        help="subject numbers 1-6 (default: 2, nilearn's default)",
    )
    p.add_argument(
        "--data-dir",
        type=_local_path,
        default=None,
        help="data folder (default: $ROIDASK_DATA/haxby2001 or ~/roidask_data/haxby2001)",
    )
    p.add_argument("--url", default=None, help="base URL of the archives (default: nilearn's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fetch)


def _cmd_fetch(args) -> int:
    data = fetch_haxby(
        args.subjects, data_dir=args.data_dir, url=args.url, progress=not args.quiet
    )
    for subj in data.subjects:
        print(f"subject {subj.subject}: bold {subj.bold}")
        print(f"  labels {subj.labels}\n  mask_vt {subj.mask_vt}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the ROI pipeline on the bundled real Haxby slice",
        description="Run `roidask run` on the real Haxby 2001 slice bundled with roidask "
        "(one axial slice and a brain mask of it) on an embedded local dask cluster, or "
        "also on a generated full-size synthetic subject.",
    )
    p.add_argument(
        "--out",
        type=_local_path,
        default=Path("roidask-demo"),
        help="output folder (default: roidask-demo)",
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="also generate a full-size synthetic subject (40x64x64x1452) and run on it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    root = args.out
    if root.exists() and not root.is_dir():  # a link to a folder is that folder
        raise OutputError(
            f"out {root}: is a file; expected a folder (the demo writes haxby-slice/"
            f"{' and synthetic/' if args.synthetic else ''} in it)",
            param="out",
        )
    if root.is_dir():  # before the cluster starts: only roidask's own results are replaced
        for name in ["haxby-slice", *(["synthetic"] if args.synthetic else [])]:
            prepare_output(root / name, overwrite=True)
    check_parent(root, param="out")  # as every command: the folder asked for, no parents
    try:
        root.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"out {root}: cannot create the folder ({exc.strerror or exc})", param="out"
        ) from None
    data = haxby_slice()
    jobs = [("haxby-slice", [data.bold], [data.labels], data.mask)]
    if args.synthetic:
        subj = make_synthetic_subject(
            args.out / "synthetic-data", seed=0, overwrite=True, progress=not args.quiet
        )
        jobs.append(("synthetic", [subj.bold], [subj.labels], subj.mask_vt))
    with get_client(None, processes=False) as client:
        if not args.quiet:
            print(f"dask: {describe_client(client)}", file=sys.stderr)
        for name, bold, labels, mask in jobs:
            start = time.perf_counter()
            out = args.out / name
            result = run_subject(
                bold=bold,
                labels=labels,
                store=None,
                subject=None,
                mask=mask,
                out=out,
                params=PipelineParams(),
                overwrite=True,
                progress=not args.quiet,
            )
            print(f"\n== {name} ==")
            print(_summary(result, out, time.perf_counter() - start))
    return 0


# -- export --------------------------------------------------------------------------------
def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write an output map as NIfTI-Zarr (.nii.zarr) or NIfTI",
        description="Write any output map as a NIfTI-Zarr image (.nii.zarr, read by "
        "niizarr.zarr2nii and DANDI's viewer) or a NIfTI file: a .nii/.nii.gz map of a "
        "subject's folder, or a variable of a results.zarr or of a study store's node.",
    )
    p.add_argument("map", type=location_arg, metavar="MAP", help="a NIfTI file, or a zarr store")
    p.add_argument("--variable", default=None, help="the map of a zarr store (tstat, logp...)")
    p.add_argument("--node", default=None, help="the node of a study store (sub-01, group)")
    p.add_argument(
        "--out",
        type=_local_path,
        required=True,
        help="the image to write (.nii.zarr, .nii, .nii.gz)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out (only roidask's)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    check_not_input(args.out, [args.map], param="out")  # nor inside it (a store)
    _held_elsewhere(args.out)
    image = open_map(args.map, variable=args.variable, group=args.node)
    out = to_nifti(image, args.out, overwrite=args.overwrite, mark=EXPORT_MARK)
    print(f"wrote {out} ({'x'.join(map(str, image.shape))} {image.dtype})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="roidask",
        description="Parallel, chunked, out-of-core fMRI ROI analysis (nilearn's ROI example "
        "on dask, xarray and zarr).",
    )
    parser.add_argument("--version", action="version", version=f"roidask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert(sub)
    _add_info(sub)
    _add_run(sub)
    _add_batch(sub)
    _add_group(sub)
    _add_export(sub)
    _add_fetch(sub)
    _add_demo(sub)
    return parser


_default_showwarning = warnings.showwarning
_COMMAND: list[str | None] = [None]  # the command running, for the names in warnings


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, RoidaskWarning):
        subject = current_subject()  # a batch subject run in this process's threads
        where = f"subject {subject!r}: " if subject is not None else ""
        text = format_error(message, _COMMAND[0])
        print(f"roidask: warning: {where}{text}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


#: A write refused for want of room or permission on the file system: named by the output.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _os_error_line(exc: OSError, args) -> str:
    """The error line of an unforeseen OSError; one that names no file but is a write
    refused (disk full, quota, read-only) is said of the command's output (``--out``)."""
    out = getattr(args, "out", None)
    if exc.filename is None and exc.errno in _WRITE_ERRNOS and out is not None:
        return f"--out {out}: cannot write it ({exc.strerror or exc})"
    return format_error(exc, args.command)


def main(argv: list[str] | None = None) -> int:
    limit_malloc_arenas()
    parser = build_parser()
    args = parser.parse_args(argv)
    _COMMAND[0] = args.command
    with warnings.catch_warnings():
        warnings.simplefilter("always", RoidaskWarning)
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except RoidaskError as exc:
            print(f"roidask: error: {format_error(exc, args.command)}", file=sys.stderr)
            return 2
        except OSError as exc:  # the system refused something no check could foresee
            print(f"roidask: error: {_os_error_line(exc, args)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (roidask._launch)
            Terminated.dropped.clear()  # a dropped stop signalled again: said here
            kept = (
                "the subjects completed so far are kept (the same command runs the rest); "
                if args.command == "batch" and not args.check
                else ""
            )
            print(f"roidask: {Terminated.describe(exc)}; {kept}{_left(args)}", file=sys.stderr)
            return Terminated.status_of(exc)


def _left(args) -> str:
    """What an interrupted command left: nothing partial, or the ``s3://`` prefixes whose
    upload it began and did not finish (there is no rename in S3: marked incomplete, they
    are refused by every roidask reader and rewritten by the next command)."""
    cut = [str(p) for p in left_incomplete()]
    batch = args.command == "batch" and not args.check
    if not cut and batch and is_remote(args.out):
        # subjects uploaded by the cluster's worker processes are not known here
        return (
            "a subject's folder whose upload was cut is left incomplete (marked so); the "
            "same command rewrites it"
        )
    if not cut:
        return "no partial output was kept"
    shown = ", ".join(cut[:3]) + (f" and {len(cut) - 3} more" if len(cut) > 3 else "")
    return f"{shown}: left incomplete (marked so); rerun the command"


def entry() -> None:
    """The ``roidask`` console script: :func:`main`, then a prompt exit.

    Once the command is done (outputs written and closed, streams flushed) the
    process exits without tearing down every imported module one by one, which
    takes ~0.3 s with dask, xarray, zarr and scipy loaded.
    """
    code: int | None = None
    try:
        code = main()
        if Terminated.dropped:  # a stop Python dropped as the command ended: not lost
            stop = (
                Terminated() if Terminated.dropped[-1] == signal.SIGTERM else KeyboardInterrupt()
            )
            code = code or Terminated.status_of(stop)
            print(
                f"roidask: {Terminated.describe(stop)} as it ended; what it wrote is complete",
                file=sys.stderr,
            )
        sys.stdout.flush()
        sys.stderr.flush()
    except KeyboardInterrupt as exc:  # that stop, signalled again after the command ended
        code = code or Terminated.status_of(exc)
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
