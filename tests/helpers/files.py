"""Small input files the tests write: batch manifests."""

from __future__ import annotations

from pathlib import Path


def write_manifest(path: Path, rows: list[tuple]) -> Path:
    """A batch manifest TSV (subject, bold, labels, mask) with one line per row."""
    lines = ["subject\tbold\tlabels\tmask", *("\t".join(map(str, r)) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path
