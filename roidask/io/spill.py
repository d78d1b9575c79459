"""A temporary file of raw voxels cut in spatial tiles: written block by block, read by tile.

:mod:`roidask.onepass` writes into it, while it reads each block of whole
volumes, the voxels that the ROI extraction may need when they do not fit in
memory; the extraction then reads back only the tiles that its ROIs' smoothed
weights touch (:func:`roidask.ops.extract.extract_signals` never reads a chunk
without ROI voxels, and a tile is a chunk of :meth:`SpillFile.to_dask`).

Layout
------
The volume is cut into a grid of tiles (:func:`tile_grid`): each tile spans the
whole x axis and at most :data:`TILE_EDGE` voxels of y and z (near-equal parts,
:func:`tile_bounds`); only the tiles asked for are stored (``kept``). Kept tile
``k`` holds its voxels for every volume from byte ``starts[k]``, in the order of
its ``(x, y, z, time)`` array in Fortran order (x fastest, time slowest). So a
block of volumes is one contiguous piece of every tile, written at an offset
known in advance (blocks are written by concurrent tasks, in any order, on any
worker sharing the folder, with no coordination), and any range of volumes of a
tile is one ``pread``. A block read from NIfTI is Fortran-ordered too: the piece
of a tile is then a list of contiguous ``(x, y)`` slabs of the block, written
with one ``pwritev`` and no copy. (Tiles cut along x would make those slabs rows
of a few dozen bytes; the ROIs of both hemispheres span x anyway.)

The data is raw (the values the pass reads, in their type), not compressed: on a
whole-brain block (97x115x97x3 int16, realistic noise) blosc-lz4 costs ~9 ms of
CPU per 6.5 MB for 16-24 % less data, which on 1452 volumes is more than the
whole extraction; and writing the same blocks as zarr chunks (32^3 x 3 voxels)
costs ~1.2 ms per chunk, 80 ms per block. The file goes through the page cache
(not the process's memory) and is removed as soon as the extraction is done.

The file is created by :func:`spill_file` as a locked temporary sibling
(:func:`roidask._atomic.scratch_file`): removed when the run ends, succeeds or
fails, and, if the process is killed, by the next run's
:func:`roidask._atomic.clean_stale`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
from dask.base import tokenize

from roidask._atomic import clean_stale, scratch_file
from roidask.exceptions import InvalidParameterError, OutputError

__all__ = ["SPILL_NAME", "TILE_EDGE", "SpillFile", "spill_file", "tile_bounds", "tile_grid"]

#: Largest tile edge along y and z, voxels. A whole-brain tile (97 x 16 x 14) is
#: 42 KiB (int16) per volume: large enough for few reads and writes per block, small
#: enough that the file holds little more than the mask's box and the extraction
#: reads little more than the ROIs' neighbourhoods. On the whole-brain subject (VT
#: mask of 101k voxels, box 33 % of the volume, 16 ROIs), edges of 32, 24, 16, 12, 8
#: keep 74, 68, 53, 47, 44 % of the volume and read back 74, 44, 41, 34, 30 %.
TILE_EDGE = 16
#: Buffers written by one ``pwritev`` call (below IOV_MAX: 1024 on Linux and macOS).
_IOV_MAX = 512
#: Name whose temporary siblings (``.roidask-voxels.roidask-tmp-<pid>-<hex>``) are
#: the spill files of a folder.
SPILL_NAME = "roidask-voxels"


def tile_grid(shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile bounds along x (one tile: the whole axis), y and z (:func:`tile_bounds`)."""
    x, y, z = (int(n) for n in shape[:3])
    return np.array([0, x], dtype=np.int64), tile_bounds(y), tile_bounds(z)


def tile_bounds(n: int, edge: int | None = None) -> np.ndarray:
    """Bounds ``[0, ..., n]`` cutting an axis of ``n`` voxels into near-equal tiles.

    Tiles have at most ``edge`` voxels (default :data:`TILE_EDGE`).
    """
    edge = TILE_EDGE if edge is None else edge
    parts = max(1, -(-int(n) // int(edge)))
    return np.array([i * int(n) // parts for i in range(parts + 1)], dtype=np.int64)


@dataclass(frozen=True, eq=False)
class SpillFile:
    """A tiled voxel file (see the module docstring); picklable, holds no open file.

    Attributes
    ----------
    path : Path
        The file.
    shape : (int, int, int, int)
        ``(x, y, z, n_volumes)`` of the series.
    dtype : numpy.dtype
        Type of the stored values.
    bounds : tuple of 3 ndarray
        Tile bounds per axis (:func:`tile_grid`).
    starts : ndarray of int64, shape (tiles_x, tiles_y, tiles_z)
        Byte offset of every kept tile; -1 for the tiles not stored.
    """

    path: Path
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    bounds: tuple[np.ndarray, np.ndarray, np.ndarray]
    starts: np.ndarray

    @classmethod
    def layout(cls, path: Path, shape, dtype, kept: np.ndarray) -> SpillFile:
        """The file's layout for ``shape`` and the kept tiles (a boolean tile grid)."""
        shape = tuple(int(n) for n in shape)
        bounds = tile_grid(shape)
        grid = tuple(len(b) - 1 for b in bounds)
        kept = np.asarray(kept, dtype=bool)
        if kept.shape != grid:
            raise InvalidParameterError(
                f"kept: expected a tile grid of shape {grid}, got {kept.shape}", param="kept"
            )
        sizes = np.einsum("i,j,k->ijk", *(np.diff(b) for b in bounds), dtype=np.int64) * (
            shape[3] * np.dtype(dtype).itemsize
        )
        ends = np.cumsum(np.where(kept, sizes, 0).ravel()).reshape(grid)
        starts = np.where(kept, ends - sizes, -1).astype(np.int64)
        return cls(Path(path), shape, np.dtype(dtype).newbyteorder("="), bounds, starts)

    # -- geometry -------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int, int]:
        """Tiles per axis."""
        return self.starts.shape  # type: ignore[return-value]

    @property
    def kept(self) -> np.ndarray:
        """Boolean tile grid: the tiles stored."""
        return self.starts >= 0

    @property
    def nbytes(self) -> int:
        """Size of the file: every kept tile, every volume."""
        return int(sum(self._tile_bytes(t) for t in zip(*np.nonzero(self.kept), strict=True)))

    def tile_slices(self, tile) -> tuple[slice, slice, slice]:
        """The voxels of ``tile`` (its index in the grid) as 3 slices."""
        return tuple(
            slice(int(b[i]), int(b[i + 1])) for b, i in zip(self.bounds, tile, strict=True)
        )  # type: ignore[return-value]

    def _tile_shape(self, tile) -> tuple[int, int, int]:
        return tuple(int(b[i + 1] - b[i]) for b, i in zip(self.bounds, tile, strict=True))  # type: ignore[return-value]

    def _volume_bytes(self, tile) -> int:
        return int(np.prod(self._tile_shape(tile))) * self.dtype.itemsize

    def _tile_bytes(self, tile) -> int:
        return self._volume_bytes(tile) * self.shape[3]

    # -- writing (pass tasks) -----------------------------------------------------------
    @functools.cached_property
    def _kept_tiles(self) -> list[tuple[tuple[slice, slice, slice], int, int]]:
        """(voxels, first byte, bytes per volume) of every kept tile, in file order."""
        tiles = zip(*np.nonzero(self.kept), strict=True)
        out = [(self.tile_slices(t), int(self.starts[t]), self._volume_bytes(t)) for t in tiles]
        return sorted(out, key=lambda item: item[1])

    def write_block(self, block: np.ndarray, start: int) -> None:
        """Store volumes ``start : start + block.shape[3]`` of every kept tile.

        ``block`` holds whole volumes ``(x, y, z, t)``, in any memory order.
        """
        slabs = block.dtype == self.dtype and block.flags.f_contiguous
        # (t, z, y, x) in C order: the Fortran-ordered (x, y, z, t) bytes of a tile
        volumes = block.transpose(3, 2, 1, 0)
        fd = self._open(os.O_WRONLY)
        try:
            for (_, sy, sz), first, volume_bytes in self._kept_tiles:
                offset = first + start * volume_bytes
                if slabs:  # every (x, y) slab of the tile is contiguous in the block
                    pieces = [
                        volumes[t, z, sy].reshape(-1)
                        for t in range(block.shape[3])
                        for z in range(sz.start, sz.stop)
                    ]
                else:
                    pieces = [np.ascontiguousarray(volumes[:, sz, sy], dtype=self.dtype)]
                self._pwrite(fd, [memoryview(p.data).cast("B") for p in pieces], offset)
        finally:
            os.close(fd)

    def _pwrite(self, fd: int, buffers: list[memoryview], offset: int) -> None:
        try:
            while buffers:
                batch = buffers[:_IOV_MAX]
                n = os.pwritev(fd, batch, offset)
                if n == 0:
                    raise OSError(0, "nothing written")
                offset += n
                while batch and n >= len(batch[0]):  # drop what was written
                    n -= len(batch.pop(0))
                    buffers.pop(0)
                if n:  # a buffer written in part
                    buffers[0] = buffers[0][n:]
        except OSError as exc:
            raise OutputError(
                f"temp_dir {self.path.parent}: cannot write the temporary voxel file "
                f"{self.path.name} ({exc.strerror or exc}); free some space there or give "
                "another temp_dir",
                param="temp_dir",
            ) from None

    def _open(self, flags: int) -> int:
        try:
            return os.open(self.path, flags)
        except FileNotFoundError:
            raise OutputError(
                f"temp_dir {self.path.parent}: the temporary voxel file {self.path.name} is "
                "missing (removed, or not visible from this machine: on a cluster of several "
                "machines, give a temp_dir that they share)",
                param="temp_dir",
            ) from None

    # -- reading (extraction tasks) -----------------------------------------------------
    def read(self, tile, start: int, stop: int) -> np.ndarray:
        """Volumes ``start:stop`` of ``tile``, an ``(x, y, z, t)`` array (Fortran order).

        A tile that is not stored reads as zeros (the extraction never needs it).
        """
        tile = tuple(int(i) for i in tile)
        tx, ty, tz = self._tile_shape(tile)
        out = np.empty((stop - start, tz, ty, tx), dtype=self.dtype)
        if self.starts[tile] < 0:
            out[...] = 0
            return out.transpose(3, 2, 1, 0)
        offset = int(self.starts[tile]) + start * self._volume_bytes(tile)
        buf = memoryview(out.data).cast("B")
        fd = self._open(os.O_RDONLY)
        try:
            while buf:
                n = os.preadv(fd, [buf], offset)
                if n == 0:
                    raise OutputError(f"{self.path}: the temporary voxel file is truncated")
                buf, offset = buf[n:], offset + n
        finally:
            os.close(fd)
        return out.transpose(3, 2, 1, 0)

    def to_dask(self, *, max_chunk_bytes: int) -> da.Array:
        """The stored series as a lazy ``(x, y, z, t)`` dask array, one chunk per tile in space.

        Time chunks hold as many volumes as fit in ``max_chunk_bytes`` for the
        largest tile. Computing a chunk reads one range of one tile (one ``pread``);
        chunks of tiles not stored are zeros.
        """
        largest = max(
            self._volume_bytes(t) for t in itertools.product(*(range(n) for n in self.grid))
        )
        per_chunk = max(1, int(max_chunk_bytes) // largest)
        chunks = (*(tuple(np.diff(b).tolist()) for b in self.bounds), per_chunk)
        return da.from_array(
            _SpillArray(self),
            chunks=chunks,
            name=f"roidask-voxels-{tokenize(str(self.path), self.shape, self.starts)}",
            lock=False,
            asarray=False,
            fancy=False,
            meta=np.empty((0, 0, 0, 0), dtype=self.dtype),
        )


class _SpillArray:
    """Array-like view of a :class:`SpillFile` for :func:`dask.array.from_array`."""

    def __init__(self, spill: SpillFile):
        self.spill = spill
        self.shape = spill.shape
        self.dtype = spill.dtype
        self.ndim = 4

    def __getitem__(self, index) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (4 - len(index))
        ranges = [s.indices(n)[:2] for s, n in zip(index, self.shape, strict=True)]
        (t0, t1) = ranges[3]
        out = None
        tiles = [
            range(
                int(np.searchsorted(b, lo, side="right")) - 1,
                int(np.searchsorted(b, hi, side="left")),
            )
            for b, (lo, hi) in zip(self.spill.bounds, ranges[:3], strict=True)
        ]
        for tile in itertools.product(*tiles):
            own = self.spill.tile_slices(tile)
            if own == tuple(slice(lo, hi) for lo, hi in ranges[:3]):
                return self.spill.read(tile, t0, t1)  # a whole tile: no copy
            if out is None:
                shape = [hi - lo for lo, hi in ranges]
                out = np.empty(shape, dtype=self.dtype, order="F")
            values = self.spill.read(tile, t0, t1)
            src, dst = [], []
            for s, (lo, hi) in zip(own, ranges[:3], strict=True):
                a, b = max(s.start, lo), min(s.stop, hi)
                src.append(slice(a - s.start, b - s.start))
                dst.append(slice(a - lo, b - lo))
            out[(*dst, slice(None))] = values[(*src, slice(None))]
        if out is None:
            out = np.empty([hi - lo for lo, hi in ranges], dtype=self.dtype, order="F")
        return out


@contextlib.contextmanager
def spill_file(
    folder: str | os.PathLike, *, shape, dtype, kept: np.ndarray
) -> Iterator[SpillFile]:
    """Create the tiled voxel file of a series in ``folder``; removed when the block exits.

    The stale files of killed runs in ``folder`` are removed first
    (:func:`roidask._atomic.clean_stale`).

    Parameters
    ----------
    folder : path
        An existing, writable folder (beside the outputs, or a scratch folder).
    shape : (int, int, int, int)
        ``(x, y, z, n_volumes)``.
    dtype : numpy.dtype
        Type of the values stored.
    kept : ndarray of bool
        The tiles stored, on the grid of :func:`tile_bounds` of each axis.

    Raises
    ------
    OutputError
        ``folder`` is missing, not a folder or not writable, or lacks the space
        the file needs (checked before anything is written).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise OutputError(
            f"temp_dir {folder}: expected an existing folder for the temporary voxel file",
            param="temp_dir",
        )
    clean_stale(folder / SPILL_NAME)
    layout = SpillFile.layout(folder / "unused", shape, dtype, kept)
    need = layout.nbytes
    free = shutil.disk_usage(folder).free
    if need > free:
        raise OutputError(
            f"temp_dir {folder}: the temporary voxel file needs {need / 2**20:.0f} MiB, only "
            f"{free / 2**20:.0f} MiB are free there; free some space or give another temp_dir",
            param="temp_dir",
        )
    with contextlib.ExitStack() as stack:
        try:
            path = stack.enter_context(scratch_file(folder / SPILL_NAME))
        except OSError as exc:
            raise OutputError(
                f"temp_dir {folder}: cannot create the temporary voxel file "
                f"({exc.strerror or exc})",
                param="temp_dir",
            ) from None
        os.truncate(path, need)
        yield SpillFile(path, layout.shape, layout.dtype, layout.bounds, layout.starts)
