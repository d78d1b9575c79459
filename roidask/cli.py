"""The ``roidask`` command line.

Each subcommand validates its inputs first; a bad input prints one line
(``roidask: error: ...``) to stderr and exits with status 2, without a
traceback and without leaving partial outputs behind.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from roidask.exceptions import RoidaskError, RoidaskTypeError, RoidaskWarning

__all__ = ["main"]


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert 4D BOLD NIfTI run(s) into a chunked zarr store",
        description="Convert 4D BOLD NIfTI run(s), concatenated along time, with their "
        "labels into a subject group of a chunked zarr v3 store.",
    )
    p.add_argument("bold", nargs="+", type=Path, help="4D .nii/.nii.gz run(s), in order")
    p.add_argument(
        "--labels",
        action="append",
        type=Path,
        required=True,
        help="Haxby labels.txt, or one BIDS events.tsv per run (repeat the flag)",
    )
    p.add_argument("--out", type=Path, required=True, help="store to create or add to")
    p.add_argument("--subject", default="sub-01", help="subject group name (default sub-01)")
    p.add_argument(
        "--tr",
        type=float,
        default=None,
        dest="tr_s",
        help="repetition time in seconds (default: from the header)",
    )
    p.add_argument("--chunks", default=None, help="chunk sizes, e.g. x=20,y=32,z=32,time=100")
    p.add_argument("--mask", type=Path, default=None, help="3D mask stored beside the BOLD data")
    p.add_argument("--overwrite", action="store_true", help="replace the subject if present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    from roidask.io.store import convert

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


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a roidask store")
    p.add_argument("store", type=Path)
    p.set_defaults(func=_cmd_info)


def describe_store(store) -> str:
    """A human-readable summary of a store: subjects, shapes, chunks, conditions, runs."""
    import numpy as np

    from roidask.io.store import list_subjects, open_subject

    lines = [f"store {store}"]
    subjects = list_subjects(store)
    incomplete = sorted(set(list_subjects(store, include_incomplete=True)) - set(subjects))
    lines.append(f"subjects: {len(subjects)} ({', '.join(subjects) or 'none'})")
    if incomplete:
        lines.append(f"incomplete (ignored): {', '.join(incomplete)}")
    for name in subjects:
        ds = open_subject(store, name)
        bold = ds["bold"]
        chunks = "x".join(str(c[0]) for c in bold.chunks)
        lines.append(f"\n[{name}]")
        lines.append(
            f"  bold: shape {'x'.join(map(str, bold.shape))} {bold.dtype}, "
            f"chunks {chunks} ({bold.data.npartitions} chunks)"
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
    return "\n".join(lines)


def _cmd_info(args) -> int:
    print(describe_store(args.store))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from roidask import __version__

    parser = argparse.ArgumentParser(
        prog="roidask",
        description="Parallel, chunked, out-of-core fMRI ROI analysis.",
    )
    parser.add_argument("--version", action="version", version=f"roidask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert(sub)
    _add_info(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", RoidaskWarning)
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except (RoidaskError, RoidaskTypeError) as exc:
            print(f"roidask: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("roidask: interrupted; no partial output was kept", file=sys.stderr)
            return 130


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"roidask: warning: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
