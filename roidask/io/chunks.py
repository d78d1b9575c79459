"""Chunk sizes and chunk positions: the one home of chunk arithmetic.

BOLD data is chunked in whole volumes by default (:func:`default_chunks`);
users give chunks as a dict or a ``"x=20,time=100"`` string
(:func:`normalize_chunks`, whose sizes :func:`parse_chunks` checks: the one check of
them). Block-wise operators find each chunk's offset with :func:`block_offsets` and
name a chunk in messages with :func:`chunk_location`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from roidask.exceptions import InvalidParameterError
from roidask.io.grid import BOLD_DIMS, SPATIAL_DIMS

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "block_bounds",
    "block_offsets",
    "chunk_location",
    "default_chunks",
    "merge_small_chunks",
    "normalize_chunks",
    "parse_chunks",
]

#: Target size of one chunk of the BOLD array (whole volumes), in bytes.
DEFAULT_CHUNK_BYTES = 16 * 2**20


def default_chunks(
    shape: Sequence[int], itemsize: int, *, target_bytes: int = DEFAULT_CHUNK_BYTES
) -> dict[str, int]:
    """Whole volumes, as many per chunk as fit in ``target_bytes`` (at least one)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 3:
        return dict(zip(SPATIAL_DIMS, shape, strict=True))
    volume_bytes = int(np.prod(shape[:3])) * int(itemsize)
    n_t = max(1, min(shape[3], target_bytes // max(volume_bytes, 1)))
    return dict(zip(BOLD_DIMS, (*shape[:3], n_t), strict=True))


def normalize_chunks(chunks, shape: Sequence[int], itemsize: int) -> dict[str, int]:
    """Chunk sizes per dim from a dict, a ``"x=..,y=..,time=.."`` string, or None.

    Missing dims take the default (:func:`default_chunks`: whole volumes, ~16 MB
    chunks); ``-1`` means the whole axis.

    Parameters
    ----------
    chunks : dict, str or None
        Chunk sizes in voxels (``x``, ``y``, ``z``) and volumes (``time``), as
        ``{"x": 20, "time": 100}`` or ``"x=20,time=100"``; None: the defaults.
    shape : sequence of int
        The image's shape, 3D ``(x, y, z)`` or 4D ``(x, y, z, time)``, in voxels and
        volumes.
    itemsize : int
        Bytes per voxel value (for the default chunk size).

    Returns
    -------
    dict of str to int
        A size for every dim of ``shape`` (``x``, ``y``, ``z``, then ``time``), each
        at least 1 and at most the axis' length.

    Raises
    ------
    InvalidParameterError
        Unknown dimension names, or sizes that are not positive integers (or -1).
    """
    out = default_chunks(shape, itemsize)
    out.update(parse_chunks(chunks, shape))
    return out


def parse_chunks(chunks, shape: Sequence[int]) -> dict[str, int]:
    """The chunk sizes that ``chunks`` gives, validated: the one check of a user's chunks.

    Parameters
    ----------
    chunks : dict, str or None
        Chunk sizes in voxels (``x``, ``y``, ``z``) and volumes (``time``), as
        ``{"x": 20, "time": 100}`` or ``"x=20,time=100"``; ``-1`` is the whole axis.
    shape : sequence of int
        The image's shape, 3D ``(x, y, z)`` or 4D ``(x, y, z, time)``: the dims that
        may be named, and the axis lengths.

    Returns
    -------
    dict of str to int
        A size (at least 1, at most the axis' length) for each dim ``chunks``
        names, and for no other (empty for None).

    Raises
    ------
    InvalidParameterError
        ``chunks`` is neither a mapping, a ``dim=size`` string nor None; it names a
        dimension that ``shape`` does not have, or twice; or a size is not a
        positive integer or -1.
    """
    dims = BOLD_DIMS[: len(shape)]
    if chunks is None:
        return {}
    if isinstance(chunks, str):
        parsed = {}
        for part in filter(None, (p.strip() for p in chunks.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise InvalidParameterError(
                    f"chunks: {part!r} is not of the form dim=size (e.g. x=20,y=32,time=100)",
                    param="chunks",
                )
            if key.strip() in parsed:
                raise InvalidParameterError(
                    f"chunks: {key.strip()!r} is given twice in {chunks!r}; expected each "
                    "dimension once",
                    param="chunks",
                )
            parsed[key.strip()] = value.strip()
        chunks = parsed
    if not isinstance(chunks, Mapping):
        raise InvalidParameterError(
            f"chunks: expected a mapping like {{'x': 20, 'time': 100}} or 'x=20,time=100', "
            f"got {chunks!r}",
            param="chunks",
        )
    out = {}
    for key, value in chunks.items():
        if key not in dims:
            raise InvalidParameterError(
                f"chunks: unknown dimension {key!r}; expected some of {list(dims)}",
                param="chunks",
            )
        try:
            size = int(value)
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"chunks: size for {key!r} must be an integer, got {value!r}", param="chunks"
            ) from None
        n = shape[dims.index(key)]
        if size == -1:
            size = n
        if size < 1:
            raise InvalidParameterError(
                f"chunks: size for {key!r} must be >= 1 (or -1 for the whole axis), got {size}",
                param="chunks",
            )
        out[key] = min(size, n)
    return out


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


def block_bounds(chunks: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Chunk boundaries along every axis: ``[0, c0, c0 + c1, ..., n]``."""
    return [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks]


def block_offsets(chunks: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Start index of every chunk along every axis."""
    return [b[:-1] for b in block_bounds(chunks)]


def chunk_location(block_info) -> str:
    """`` in the chunk x[0:20], y[0:32], z[0:32]`` from dask's ``block_info`` (or "")."""
    if not block_info or 0 not in block_info:
        return ""
    loc = block_info[0]["array-location"]
    dims = BOLD_DIMS[: len(loc)]
    return " in the chunk " + ", ".join(
        f"{d}[{a}:{b}]" for d, (a, b) in zip(dims, loc, strict=True)
    )
