"""Chunk-size helpers shared by the overlapping-chunk operators (smooth, morph)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["merge_small_chunks"]


def merge_small_chunks(chunks: Sequence[int], minimum: int) -> tuple[int, ...]:
    """Merge neighbouring chunks until every chunk has at least ``minimum`` elements.

    ``map_overlap`` needs every chunk to be at least as large as the overlap depth;
    a remainder smaller than ``minimum`` is merged into the last chunk.
    """
    out: list[int] = []
    acc = 0
    for size in chunks:
        acc += size
        if acc >= minimum:
            out.append(acc)
            acc = 0
    if acc:
        if out:
            out[-1] += acc
        else:
            out.append(acc)
    return tuple(out)
