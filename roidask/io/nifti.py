"""NIfTI files: validated headers, lazy block reads and streamed writes.

Reading goes through :class:`NiftiSource`, which validates a file's header up
front (readable, 3D/4D, data fits in the file) and reads blocks of whole
volumes on demand.  A ``.nii.gz`` file is decompressed by one sequential ``isal``
stream per process, which serves blocks requested in increasing order (as dask
mostly does) and keeps up to ``_WINDOW_BYTES`` of the data it skips over, so that
a block requested slightly out of order comes from memory; a block behind the
stream and no longer kept is read through ``indexed_gzip`` (random access).

Writing streams a 3D or 4D array (numpy, dask or xarray) volume block by volume
block into a temporary file that is renamed into place when complete.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import dask.array as da
import indexed_gzip
import nibabel as nib
import numpy as np
from isal import igzip, isal_zlib
from nibabel.volumeutils import native_code

from roidask._atomic import atomic_file, check_parent, checked_again
from roidask._pool import thread_pool
from roidask._validate import check_bool, check_dtype, check_int, check_path, check_real
from roidask.exceptions import (
    CorruptFileError,
    ImageDimensionError,
    ImageTypeError,
    InvalidParameterError,
    OutputError,
    OutputExistsError,
    RoidaskTypeError,
)
from roidask.io.grid import check_affine, voxel_size_mm
from roidask.io.locations import (
    ObjectStream,
    PathOrURL,
    RangeFile,
    S3Path,
    as_location,
    check_input_file,
    read_prefix,
    version_tag,
)

__all__ = [
    "EXPORT_MARK",
    "NIFTI_DTYPES",
    "SCALED_DTYPE",
    "TIME_UNITS_S",
    "NiftiSource",
    "VolumeProperties",
    "as_stored",
    "check_mark",
    "header_from_b64",
    "header_to_b64",
    "header_tr_s",
    "is_nifti_path",
    "nifti_dtype",
    "read_scaling",
    "release_handles",
    "scale_stored",
    "write_nifti",
]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: The errors a damaged gzip stream raises while it is decoded.
_GZIP_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    zlib.error,
    cast("type[BaseException]", isal_zlib.error),
)
_GZIP_MAGIC = b"\x1f\x8b"


#: The mark of the files ``roidask export`` writes: a single file has no folder marker,
#: so this is how a later ``export --overwrite`` knows the file is roidask's to replace
#: (:func:`_written_with_mark`; a file without it is never replaced).
EXPORT_MARK = "written by roidask export"
_SHA256_TAG = " sha256:"
_DESCRIP_OFFSET = 148  # of ``descrip`` in a NIfTI-1 header
_DESCRIP_BYTES = 80
_DIGEST_CHARS = 40  # of the hex digest: the mark, the tag and these fit in descrip


def _descrip(path: Path) -> str | None:
    """The header's ``descrip`` of NIfTI file ``path``; None if it cannot be read as one."""
    try:
        img = _load_header(path, path.name.lower().endswith(".gz"))
        header = nib.Nifti1Header.from_header(img.header)
        return bytes(header["descrip"].item()).decode("latin-1")
    except Exception:  # any unreadable file is simply not ours
        return None


def _gzip_comment(path: Path) -> str | None:
    """The comment (``FCOMMENT``) of the gzip header of ``path``; None if it has none."""
    try:
        with open(path, "rb") as f:
            head = f.read(10)
            if len(head) < 10 or head[:2] != _GZIP_MAGIC:
                return None
            flags = head[3]
            if flags & 4:  # FEXTRA
                (size,) = struct.unpack("<H", f.read(2))
                f.read(size)
            for flag in (8, 16):  # FNAME, then FCOMMENT: zero-terminated
                if flags & flag:
                    field = bytearray()
                    while (byte := f.read(1)) not in (b"", b"\0"):
                        field += byte
                    if flag == 16:
                        return field.decode("latin-1")
    except OSError:
        return None
    return None


def _data_digest(path: Path, offset: int) -> str:
    """SHA-256 of an uncompressed NIfTI file's bytes: its header (the first ``offset``
    bytes) without ``descrip``, where the digest itself is kept, then its voxels."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(offset)
        digest.update(head[:_DESCRIP_OFFSET] + head[_DESCRIP_OFFSET + _DESCRIP_BYTES :])
        while block := f.read(2**22):
            digest.update(block)
    return digest.hexdigest()


def _written_with_mark(path: Path, mark: str) -> bool:
    """``path`` is a file :func:`to_nifti` wrote with ``mark`` and nothing changed since.

    The header's ``descrip`` alone would not tell: tools that derive an image from
    another (nibabel with ``img.header``) copy it. So a ``.nii.gz`` must also carry the
    mark in its gzip header, which a tool writing the file anew does not keep, and a
    ``.nii`` the SHA-256 of its bytes (header and voxels), which any change breaks.
    """
    descrip = _descrip(path)
    if descrip is None or not descrip.startswith(mark):
        return False
    if path.name.lower().endswith(".gz"):
        return descrip == mark and _gzip_comment(path) == mark
    expected = descrip[len(mark) :]
    if not expected.startswith(_SHA256_TAG):
        return False
    try:
        return _data_digest(path, 352)[:_DIGEST_CHARS] == expected[len(_SHA256_TAG) :]
    except OSError:
        return False


class _MarkedGzipWriter(io.RawIOBase):
    """A gzip stream (one member, isal level 1) whose header carries ``comment``."""

    def __init__(self, raw, name: str, comment: str):
        self._raw = raw
        self._deflate = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
        self._crc = 0
        self._size = 0
        name_bytes = name.removesuffix(".gz").encode("latin-1", "replace")
        # ID1 ID2 CM FLG(FNAME|FCOMMENT) MTIME(0) XFL OS(unix), as IGzipFile with mtime=0
        raw.write(_GZIP_MAGIC + b"\x08\x18" + b"\0" * 4 + b"\x00\x03")
        raw.write(name_bytes + b"\0" + comment.encode("latin-1") + b"\0")

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self._crc = isal_zlib.crc32(view, self._crc)
        self._size += len(view)
        self._raw.write(self._deflate.compress(view))
        return len(view)

    def close(self) -> None:
        if not self.closed:
            self._raw.write(self._deflate.flush())
            self._raw.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        super().close()


def is_nifti_path(path: PathOrURL) -> bool:
    """True if ``path`` names a ``.nii`` or ``.nii.gz`` file (by suffix)."""
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


#: The type of scaled values (``scl_slope``/``scl_inter``), whatever the stored type: as
#: nibabel scales them (``get_fdata``, ``np.asanyarray(img.dataobj)``, so nilearn), and as
#: xarray decodes a roidask store's ``scale_factor``/``add_offset``. A scaled image is
#: thus the same float64 values from a file, a nibabel image or a store.
SCALED_DTYPE = np.dtype(np.float64)


def read_scaling(slope, inter) -> tuple[float, float]:
    """A header's ``scl_slope``, ``scl_inter`` as they scale the stored values: a missing,
    non-finite or zero slope is 1, a missing or non-finite intercept 0 (nibabel's rule)."""
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def scale_stored(stored: np.ndarray, slope: float, inter: float, dtype=None) -> np.ndarray:
    """Stored NIfTI values scaled, ``stored * slope + inter``, in the float ``dtype``.

    Rounded as :meth:`NiftiSource.read` reads them: cast, multiply, add. ``dtype``
    defaults to :data:`SCALED_DTYPE` (float64, as nibabel); the result keeps the
    memory order of ``stored``. (Measured and not faster: a table of every scaled
    16-bit value, a gather; casting within the multiplication.)
    """
    dtype = SCALED_DTYPE if dtype is None else np.dtype(dtype)
    out = stored.astype(dtype)
    out *= dtype.type(slope)
    out += dtype.type(inter)
    return out


def header_to_b64(header: nib.Nifti1Header) -> str:
    """The 348-byte NIfTI-1 header (or 540-byte NIfTI-2) as base64 text for attrs."""
    return base64.b64encode(header.binaryblock).decode("ascii")


def header_from_b64(text: str) -> nib.Nifti1Header:
    """Inverse of :func:`header_to_b64`."""
    raw = base64.b64decode(text.encode("ascii"))
    klass = nib.Nifti2Header if len(raw) == 540 else nib.Nifti1Header
    return klass(binaryblock=raw, check=False)


def _gzip_isize(path: Path | S3Path) -> int | None:
    """Uncompressed size modulo 2**32 from a gzip trailer, or None if unreadable."""
    if isinstance(path, S3Path):
        size = int(path.head()["size"])
        tail = path.read_range(size - 4, 4) if size >= 4 else b""
        return struct.unpack("<I", tail)[0] if len(tail) == 4 else None
    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return struct.unpack("<I", f.read(4))[0]
    except OSError:
        return None


#: Decoded sizes of gzip files of several members, by path and version: a file is
#: decoded once per process to be checked, not at each open.
_DECODED_SIZES: dict[tuple[str, str], int] = {}


def _decoded_size(path: Path | S3Path, param: str) -> int:
    """Bytes a gzip file decodes to, every member of it (decoded once, never held)."""
    key = (str(path), version_tag(path))
    if key in _DECODED_SIZES:
        return _DECODED_SIZES[key]
    total = 0
    try:
        with _sequential(path, True) as fh:
            while piece := fh.read(_SKIP_PIECE_BYTES):
                total += len(piece)
    except (*_GZIP_ERRORS, gzip.BadGzipFile) as exc:  # type: ignore[misc]
        raise CorruptFileError(
            f"{param} {path}: gzip stream is corrupt or truncated after {total} bytes ({exc})",
            param=param,
        ) from None
    _DECODED_SIZES[key] = total
    return total


class VolumeProperties:
    """What a source of volumes derives from its ``shape``, dtypes, scaling, affine and header.

    Shared by :class:`NiftiSource` and :class:`roidask.io.niizarr.NiftiZarrSource`, which
    define ``shape``, ``raw_dtype``, ``slope``, ``inter``, ``affine`` and ``header``.
    """

    shape: tuple[int, ...]
    raw_dtype: np.dtype
    slope: float
    inter: float
    affine: np.ndarray
    header: nib.Nifti1Header

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def n_volumes(self) -> int:
        return self.shape[3] if self.ndim == 4 else 1

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return tuple(self.shape[:3])  # type: ignore[return-value]

    @property
    def volume_nbytes(self) -> int:
        return int(np.prod(self.volume_shape)) * self.raw_dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.volume_nbytes * self.n_volumes

    @property
    def is_scaled(self) -> bool:
        return self.slope != 1.0 or self.inter != 0.0

    @property
    def dtype(self) -> np.dtype:
        """Data type of the values :meth:`read` returns (scaling applied)."""
        return SCALED_DTYPE if self.is_scaled else self.raw_dtype.newbyteorder("=")

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in voxel_size_mm(self.affine))  # type: ignore[return-value]

    @property
    def tr_s(self) -> float | None:
        """Repetition time in seconds from ``pixdim[4]`` and the time units, if set."""
        return header_tr_s(self.header) if self.ndim == 4 else None


def header_tr_s(header: nib.Nifti1Header) -> float | None:
    """Repetition time in seconds of a 4D image's header: ``pixdim[4]`` in its time unit
    (``msec``, ``usec``; seconds otherwise), None if not set."""
    zooms = header.get_zooms()
    if len(zooms) < 4 or not zooms[3] or zooms[3] <= 0:
        return None
    _, t_unit = header.get_xyzt_units()
    return float(zooms[3]) * TIME_UNITS_S.get(t_unit, 1.0)


#: Seconds per NIfTI time unit (``xyzt_units``); other units count as seconds.
TIME_UNITS_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


@dataclass(frozen=True)
class NiftiSource(VolumeProperties):
    """A validated NIfTI file whose voxel data can be read block by block.

    Build it with :meth:`NiftiSource.open`; it holds no open file, so it
    pickles cheaply into dask graphs and to distributed workers.

    Attributes
    ----------
    path : Path or S3Path
        The file (or object, :mod:`roidask.io.locations`).
    shape : tuple of int
        Image shape, 3D ``(x, y, z)`` or 4D ``(x, y, z, t)``.
    raw_dtype : numpy.dtype
        On-disk data type (with the file's byte order).
    offset : int
        Byte offset of the voxel data in the (uncompressed) stream.
    slope, inter : float
        Scaling (``scl_slope``, ``scl_inter``); ``1, 0`` when unscaled.
    affine : ndarray, shape (4, 4)
        Voxel to world (mm) transform.
    header : nibabel header
        The file's header.
    """

    path: Path | S3Path
    shape: tuple[int, ...]
    raw_dtype: np.dtype
    offset: int
    slope: float
    inter: float
    affine: np.ndarray = field(repr=False)
    header: nib.Nifti1Header = field(repr=False)

    # -- construction --------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: PathOrURL,
        *,
        ndim: int | tuple[int, ...] | None = None,
        param: str = "img",
    ):
        """Read and validate the header of ``path``.

        Parameters
        ----------
        path : str or path-like
            A ``.nii`` or ``.nii.gz`` file.
        ndim : int or tuple of int, optional
            Accepted numbers of dimensions (e.g. ``4`` for BOLD).
        param : str
            The parameter that named the file, for messages.

        Raises
        ------
        UnreadableFileError
            Missing, a folder, or not readable.
        CorruptFileError
            Empty, not a NIfTI, gzip stream corrupt, or the header's shape x
            dtype needs more bytes than the file holds.
        ImageDimensionError
            The image does not have an accepted number of dimensions.
        """
        path = check_input_file(path, param, what="NIfTI image (.nii or .nii.gz)")
        if isinstance(path, S3Path):
            magic = path.read_range(0, 2)
        else:
            with open(path, "rb") as f:
                magic = f.read(2)
        gz = magic == _GZIP_MAGIC
        if path.name.lower().endswith(".gz") and not gz:
            raise CorruptFileError(
                f"{param} {path}: named .gz but is not gzip-compressed (first bytes {magic!r})",
                param=param,
            )
        if gz and not path.name.lower().endswith(".gz"):  # its voxels would be read raw
            raise CorruptFileError(
                f"{param} {path}: is gzip-compressed but not named .gz; rename it {path.name}.gz",
                param=param,
            )
        try:
            img = _load_header(path, gz, param=param)
        except CorruptFileError:
            raise
        except (*_GZIP_ERRORS, OSError, gzip.BadGzipFile) as exc:  # type: ignore[misc]
            raise CorruptFileError(
                f"{param} {path}: not a readable NIfTI file (truncated or corrupt gzip?): {exc}",
                param=param,
            ) from None
        except Exception as exc:  # nibabel raises many types for garbage headers
            raise CorruptFileError(
                f"{param} {path}: not a NIfTI-1/NIfTI-2 image ({type(exc).__name__}: {exc})",
                param=param,
            ) from None
        header = img.header
        shape = tuple(int(n) for n in img.shape)
        # NIfTI allows trailing singleton dims (x, y, z, 1, 1); keep at most 4.
        while len(shape) > 4 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) > 4:
            raise ImageDimensionError(
                f"{param} {path}: image has {len(shape)} dimensions {shape}; expected 3D or 4D",
                param=param,
            )
        if ndim is not None:
            accepted = (ndim,) if isinstance(ndim, int) else tuple(ndim)
            if len(shape) not in accepted:
                want = " or ".join(f"{n}D" for n in accepted)
                raise ImageDimensionError(
                    f"{param} {path}: image is {len(shape)}D with shape {shape}; expected {want}",
                    param=param,
                )
        raw_dtype = header.get_data_dtype()
        if raw_dtype.kind not in "biuf":  # complex, RGB (structured)
            raise ImageTypeError(
                f"{param} {path}: voxels of data type {raw_dtype}; expected integer or real "
                "floating-point voxels",
                param=param,
            )
        # The proxy resolves offsets of 0 and extensions as nibabel reads them.
        proxy: Any = img.dataobj  # an ArrayProxy: the file's layout and scaling
        offset = int(proxy.offset)
        slope, inter = read_scaling(proxy.slope, proxy.inter)
        check_affine(img.affine, param=param, source=path)
        source = cls(
            path=path,
            shape=shape,
            raw_dtype=raw_dtype,
            offset=offset,
            slope=slope,
            inter=inter,
            affine=np.asarray(img.affine, dtype=np.float64),
            header=header,
        )
        source._check_size(gz, param)
        return source

    def _check_size(self, gz: bool, param: str) -> None:
        needed = self.offset + self.nbytes
        if gz:
            isize = _gzip_isize(self.path)
            # The trailer holds the size modulo 2**32 (only trusted below that), and only
            # the last member's: a file of several members (cat a.gz b.gz, bgzip) holds
            # more, so a short trailer is checked by decoding the stream once.
            if isize is not None and needed < 2**32 and isize < needed:
                held = _decoded_size(self.path, param)
                if held < needed:
                    raise CorruptFileError(
                        f"{param} {self.path}: header says shape {self.shape} x "
                        f"{self.raw_dtype.name} = {needed} bytes with the header, but the gzip "
                        f"stream holds {held} bytes (truncated file?)",
                        param=param,
                    )
        else:
            if isinstance(self.path, S3Path):
                size = int(self.path.head()["size"])
            else:
                size = self.path.stat().st_size
            if size < needed:
                raise CorruptFileError(
                    f"{param} {self.path}: header says shape {self.shape} x "
                    f"{self.raw_dtype.name} = {needed} bytes with the header, but the file "
                    f"holds {size} bytes",
                    param=param,
                )

    # -- reading ---------------------------------------------------------------------
    def read(self, start: int = 0, stop: int | None = None, *, scaled: bool = True) -> np.ndarray:
        """Read volumes ``start:stop`` as an ``(x, y, z, t)`` array (``(x, y, z)`` if 3D).

        Scaling (slope/intercept) is applied when ``scaled`` is true; otherwise the
        raw on-disk values are returned in native byte order.
        """
        stop = self.n_volumes if stop is None else stop
        n = stop - start
        try:
            buf = _handle(self.path).read_at(
                self.offset + start * self.volume_nbytes, n * self.volume_nbytes
            )
        except (*_GZIP_ERRORS, OSError) as exc:  # type: ignore[misc]
            raise CorruptFileError(
                f"{self.path}: could not read volumes {start}:{stop} ({exc}); "
                "the file is truncated or its gzip stream is corrupt"
            ) from None
        if len(buf) != n * self.volume_nbytes:
            raise CorruptFileError(
                f"{self.path}: expected {n * self.volume_nbytes} bytes for volumes "
                f"{start}:{stop}, got {len(buf)} (truncated file)"
            )
        arr = np.frombuffer(memoryview(buf).toreadonly(), dtype=self.raw_dtype)
        shape = (*self.volume_shape, n) if self.ndim == 4 else self.volume_shape
        arr = arr.reshape(shape, order="F").astype(self.raw_dtype.newbyteorder("="), copy=False)
        if scaled and self.is_scaled:
            return scale_stored(arr, self.slope, self.inter, self.dtype)
        return arr

    def iter_blocks(self, block_volumes: int, *, scaled: bool = True):
        """Yield ``(start, stop, array)`` for consecutive blocks, read sequentially.

        Uses one sequential decompressing stream (``isal`` for ``.nii.gz``),
        which is faster than random access when a whole file is read once.
        """
        gz = self.path.name.lower().endswith(".gz")
        try:
            with _sequential(self.path, gz) as fh:
                fh.seek(self.offset)
                for start in range(0, self.n_volumes, block_volumes):
                    stop = min(start + block_volumes, self.n_volumes)
                    n = stop - start
                    buf = fh.read(n * self.volume_nbytes)
                    if len(buf) != n * self.volume_nbytes:
                        raise CorruptFileError(
                            f"{self.path}: expected {n * self.volume_nbytes} bytes for volumes "
                            f"{start}:{stop}, got {len(buf)} (truncated file)"
                        )
                    arr = np.frombuffer(memoryview(buf).toreadonly(), dtype=self.raw_dtype)
                    arr = arr.reshape((*self.volume_shape, n), order="F")
                    arr = arr.astype(self.raw_dtype.newbyteorder("="), copy=False)
                    if scaled and self.is_scaled:
                        arr = scale_stored(arr, self.slope, self.inter, self.dtype)
                    yield start, stop, arr
        except (*_GZIP_ERRORS, gzip.BadGzipFile) as exc:  # type: ignore[misc]
            raise CorruptFileError(
                f"{self.path}: gzip stream is corrupt or truncated ({exc})"
            ) from None
        except OSError as exc:
            if isinstance(exc, CorruptFileError):
                raise
            raise CorruptFileError(f"{self.path}: read failed ({exc})") from None

    # -- pickling: never carry file handles ------------------------------------------
    def __reduce__(self):
        return (
            _rebuild_source,
            (
                self.path,
                self.shape,
                self.raw_dtype.str,
                self.offset,
                self.slope,
                self.inter,
                self.affine,
                header_to_b64(self.header),
            ),
        )


def _prefix(path: Path | S3Path, n: int, gz: bool) -> bytes:
    """The first ``n`` bytes of a file's or an object's (decompressed) content."""
    if isinstance(path, S3Path):
        return read_prefix(path, n, gzip=gz)
    with open(path, "rb") as f:
        if not gz:
            return f.read(n)
        # a decompressor, not a gzip reader: those fail on a truncated stream's first
        # bytes when the whole (small) file fits their read-ahead
        inflate = isal_zlib.decompressobj(wbits=31)
        out = b""
        while len(out) < n and not inflate.eof:
            data = inflate.unconsumed_tail or f.read(2**16)
            if not data:
                break
            out += inflate.decompress(data, n - len(out))
        return out


def _load_header(path: Path | S3Path, gz: bool, *, param: str = "img") -> nib.Nifti1Image:
    """The image of a file or an object from its first bytes: header and extensions,
    no voxel data (``nib.load`` of a ``.nii.gz`` decodes megabytes to read a header)."""
    first = _prefix(path, 4, gz)
    sizeof = struct.unpack("<i", first)[0] if len(first) == 4 else 0
    if sizeof not in (348, 540):
        sizeof = struct.unpack(">i", first)[0] if len(first) == 4 else 0
    klass = nib.Nifti2Image if sizeof == 540 else nib.Nifti1Image
    size = 540 if sizeof == 540 else 348
    head = _prefix(path, size + 4, gz)  # the header and the extension flag
    if len(head) < size:
        raise CorruptFileError(
            f"{param} {path}: holds {len(head)} bytes{' once decompressed' if gz else ''}, "
            f"fewer than a NIfTI header ({size} bytes)",
            param=param,
        )
    # the fields only: from_fileobj would read the extensions past these bytes
    header = klass.header_class(head[:size], check=False)
    magic = bytes(header["magic"].item()).rstrip(b"\0")
    if magic not in (b"n+1", b"n+2"):
        raise CorruptFileError(
            f"{param} {path}: not a single-file NIfTI image (magic {magic!r}, expected "
            "b'n+1' or b'n+2'); a .hdr/.img pair or an Analyze image is not read: save it "
            "as .nii.gz first (nibabel)",
            param=param,
        )
    vox_offset = int(header["vox_offset"])
    if len(head) == size + 4 and head[size] and vox_offset > len(head):  # extensions
        if vox_offset > _MAX_EXTENSIONS_BYTES:
            raise CorruptFileError(
                f"{param} {path}: its extensions run to byte {vox_offset} (vox_offset); "
                f"expected at most {_MAX_EXTENSIONS_BYTES} bytes of header and extensions",
                param=param,
            )
        head = _prefix(path, vox_offset, gz)
    return klass.from_bytes(head)


#: Header and extensions read to open an image (CIFTI-sized extensions fit).
_MAX_EXTENSIONS_BYTES = 2**30


def _sequential(path: Path | S3Path, gz: bool):
    """A sequential reader of the (decompressed) bytes: one stream, never the whole file."""
    if isinstance(path, S3Path):
        return ObjectStream(path, gzip=gz)
    return igzip.open(path, "rb") if gz else open(path, "rb")


def _rebuild_source(path, shape, dtype_str, offset, slope, inter, affine, header_b64):
    return NiftiSource(
        as_location(path),
        tuple(shape),
        np.dtype(dtype_str),
        offset,
        slope,
        inter,
        np.asarray(affine),
        header_from_b64(header_b64),
    )


# -- cached read handles ---------------------------------------------------------------
# Decompressed bytes a .nii.gz reader keeps of the data it decoded past to reach a
# later block, so that blocks requested slightly out of order come from memory.
_WINDOW_BYTES = 64 * 2**20
# Skipped data beyond the window is decoded and dropped in pieces of this size.
_SKIP_PIECE_BYTES = 16 * 2**20


class _FileReader:
    """Byte ranges of an uncompressed file through one shared handle (thread-safe)."""

    def __init__(self, path: Path | S3Path):
        self.path = path
        if isinstance(path, S3Path):  # ranged GETs through a read buffer
            self._fh: Any = io.BufferedReader(RangeFile(path), 4 * 2**20)
        else:
            self._fh = open(path, "rb")
        self._lock = threading.Lock()

    def read_at(self, offset: int, n: int) -> bytes:
        with self._lock:
            self._fh.seek(offset)
            return self._fh.read(n)

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class _GzipBlockReader:
    """Byte ranges of a gzip file's uncompressed data, requested mostly in order.

    A range at or after the position of a sequential ``isal`` stream is read from
    it, decoding forward over any gap.  The last ``_WINDOW_BYTES`` of a gap are
    kept (oldest dropped first) so a range requested slightly out of order is
    served from memory; a kept segment is freed as it is read.  The latest range
    served is kept too (the spatial chunks of one block are read in turn).  A range
    behind the stream that is not kept is read through ``indexed_gzip`` (random access);
    the stream never goes back (after a decoding error it is dropped and reopened
    by the next forward read).  Both handles are opened on first need.  A short
    result means the data ended early.  Thread-safe (one lock per reader).
    """

    def __init__(self, path: Path | S3Path):
        self.path = path
        self._lock = threading.Lock()
        self._stream: Any = None  # isal.igzip file, at uncompressed offset self._pos
        self._pos = 0
        self._isize: int | None = None  # gzip trailer's size (mod 2**32)
        self._window: list[tuple[int, bytes]] = []  # (offset, skipped bytes), oldest first
        self._window_nbytes = 0
        self._random: Any = None  # indexed_gzip.IndexedGzipFile
        self._last: tuple[int, bytes] = (0, b"")  # the latest range served

    def read_at(self, offset: int, n: int) -> bytes:
        """``n`` bytes of uncompressed data from ``offset`` (fewer if it ends first)."""
        if n <= 0:
            return b""
        with self._lock:
            last_offset, last = self._last
            if last_offset <= offset and offset + n <= last_offset + len(last):
                # The same block again: the spatial chunks of one block of volumes.
                return last[offset - last_offset : offset + n - last_offset]
            buf = self._from_window(offset, n)
            if buf is None:
                buf = self._from_stream(offset, n) if offset >= self._pos else None
            if buf is None:
                buf = self._from_random(offset, n)
            self._last = (offset, buf)
            return buf

    def _from_window(self, offset: int, n: int) -> bytes | None:
        end = offset + n
        i = next(
            (i for i, (s, seg) in enumerate(self._window) if s <= offset and end <= s + len(seg)),
            None,
        )
        if i is None:
            return None
        start, seg = self._window.pop(i)
        self._window_nbytes -= len(seg)
        if len(seg) == n:
            return seg
        rest = []
        if start < offset:
            rest.append((start, seg[: offset - start]))
        if end < start + len(seg):
            rest.append((end, seg[end - start :]))
        self._window[i:i] = rest
        self._window_nbytes += sum(len(part) for _, part in rest)
        return seg[offset - start : end - start]

    def _keep(self, offset: int, seg: bytes) -> None:
        self._window.append((offset, seg))
        self._window_nbytes += len(seg)
        while self._window_nbytes > _WINDOW_BYTES:
            _, old = self._window.pop(0)
            self._window_nbytes -= len(old)

    def _from_stream(self, offset: int, n: int) -> bytes:
        if self._stream is None:
            self._isize = _gzip_isize(self.path)
            self._stream = _sequential(self.path, True)
            self._pos = 0
        stream = self._stream
        try:
            kept_from = max(self._pos, offset - _WINDOW_BYTES)
            while self._pos < kept_from:
                piece = stream.read(min(kept_from - self._pos, _SKIP_PIECE_BYTES))
                if not piece:
                    return b""
                self._pos += len(piece)
            if self._pos < offset:
                seg = stream.read(offset - self._pos)
                if seg:
                    self._keep(self._pos, seg)
                    self._pos += len(seg)
                if self._pos < offset:
                    return b""
            buf = stream.read(n)
            self._pos += len(buf)
            if self._isize is not None and self._pos % 2**32 == self._isize:
                stream.peek(1)  # at the end: makes the stream check the gzip CRC
        except BaseException:
            self._stream = None
            self._pos = 0
            stream.close()
            raise
        return buf

    def _from_random(self, offset: int, n: int) -> bytes:
        if self._random is None:
            if isinstance(self.path, S3Path):  # ranged GETs, read ahead 4 MiB at a time
                raw = io.BufferedReader(RangeFile(self.path), 4 * 2**20)
                self._random = indexed_gzip.IndexedGzipFile(fileobj=raw, spacing=4 * 2**20)
            else:
                self._random = indexed_gzip.IndexedGzipFile(str(self.path), spacing=4 * 2**20)
        try:
            self._random.seek(offset)
            return self._random.read(n)
        except BaseException:
            self._random.close()
            self._random = None
            raise

    def close(self) -> None:
        """Close both decompressors and drop the kept window (reopened if read again)."""
        with self._lock:
            for handle in (self._stream, self._random):
                if handle is not None:
                    handle.close()
            self._stream = self._random = None
            self._pos = 0
            self._window.clear()
            self._window_nbytes = 0
            self._last = (0, b"")


# One reader per (file, process, version), shared by the threads of that process; and
# the name each was resolved to when it opened (release_handles compares names,
# resolving none). A local file replaced at its path (another inode, size or mtime) gets
# a reader of its own: a long-lived worker never reads the old content for the new.
_HANDLES: dict[tuple[str, int, tuple], _FileReader | _GzipBlockReader] = {}
_HANDLE_NAMES: dict[tuple[str, int, tuple], str] = {}
_HANDLES_LOCK = threading.Lock()


def _version(path: Path | S3Path) -> tuple:
    """What tells two contents of a local path apart, without reading it (a ``stat``)."""
    if isinstance(path, S3Path):
        return ()
    try:
        st = os.stat(path)
    except OSError:
        return ()  # opening it will say what is wrong
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _handle(path: Path | S3Path) -> _FileReader | _GzipBlockReader:
    key = (str(path), os.getpid(), _version(path))
    with _HANDLES_LOCK:
        reader = _HANDLES.get(key)
    if reader is not None:
        return reader
    name = _handle_name(path)  # resolved outside the lock (a syscall per folder level)
    with _HANDLES_LOCK:
        reader = _HANDLES.get(key)
        if reader is None:
            if path.name.lower().endswith(".gz"):
                reader = _GzipBlockReader(path)
            else:
                reader = _FileReader(path)
            _HANDLES[key] = reader
            _HANDLE_NAMES[key] = name
    return reader


def release_handles(paths) -> int:
    """Forget this process's cached read handles of ``paths``; returns how many.

    A ``.nii.gz`` handle holds a decompressing stream, up to ``_WINDOW_BYTES``
    (64 MiB) of data it skipped over and, once a block was read out of order, an
    ``indexed_gzip`` seek index and read buffer; a long-lived worker that reads
    many files (``roidask batch``) must drop them once a file is done. A read in
    progress keeps its handle alive until it finishes, then it is closed when no
    longer referenced.
    """
    wanted = {_handle_name(p) for p in paths}
    pid = os.getpid()
    with _HANDLES_LOCK:
        keys = [k for k in _HANDLES if k[1] == pid and _HANDLE_NAMES.get(k) in wanted]
        dropped = [_HANDLES.pop(k) for k in keys]
        for k in keys:
            _HANDLE_NAMES.pop(k, None)
    return len(dropped)


def _handle_name(path) -> str:
    loc = as_location(path)
    return str(loc) if isinstance(loc, S3Path) else os.path.realpath(loc)


def close_handles() -> None:
    """Close every cached read handle of this process (used by tests and writers)."""
    with _HANDLES_LOCK:
        for reader in _HANDLES.values():
            reader.close()
        _HANDLES.clear()
        _HANDLE_NAMES.clear()


# -- writing ---------------------------------------------------------------------------
#: The data types a NIfTI file stores (nibabel's NIfTI-1 types): ``bool`` is stored as
#: uint8 0/1. (No float16, float128 or complex256: NIfTI-1 has no code nibabel writes.)
NIFTI_DTYPES = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "complex64",
    "complex128",
)
#: Longest ``mark``: the header's 80-byte ``descrip`` keeps it, then (of a ``.nii``) the
#: tag and the digest of the file (:func:`_written_with_mark`).
_MARK_CHARS = _DESCRIP_BYTES - len(_SHA256_TAG) - _DIGEST_CHARS
_SHOWN_VALUES = 3  # of the values a bool refuses


def nifti_dtype(dtype, data_dtype, *, param: str = "dtype", data_param: str = "data") -> np.dtype:
    """The type to write values of type ``data_dtype`` as: ``dtype``, or the data's own.

    Checked before any value is computed. ``bool`` (given, or the data's) is returned as
    it is: :func:`as_stored` stores it as uint8 0/1.

    Parameters
    ----------
    dtype : dtype, str or None
        The type asked for (``param``); None for the data's own.
    data_dtype : dtype
        The type of the values to write (``data_param``).

    Returns
    -------
    numpy.dtype
        One of :data:`NIFTI_DTYPES`, in native byte order.

    Raises
    ------
    InvalidParameterError
        ``dtype`` is not one of :data:`NIFTI_DTYPES`, or is None and the data's type
        is not one.
    ImageTypeError
        The values are not numbers (strings, objects).
    """
    data_dtype = np.dtype(data_dtype)
    if data_dtype.kind not in "biufc":
        raise ImageTypeError(
            f"{data_param}: holds values of type {data_dtype}; NIfTI stores numbers",
            param=data_param,
        )
    if dtype is not None:
        return check_dtype(dtype, param, accepted=NIFTI_DTYPES)
    if data_dtype.name not in NIFTI_DTYPES:
        raise InvalidParameterError(
            f"{param}: not given, and the data's type {data_dtype} is not one NIfTI stores; "
            f"pass {param}= one of {', '.join(NIFTI_DTYPES)}",
            param=param,
        )
    return data_dtype.newbyteorder("=")


def check_mark(mark) -> str | None:
    """``mark`` (:func:`write_nifti`): None, or the text kept in the header's ``descrip``."""
    if mark is None:
        return None
    ok = isinstance(mark, str) and 0 < len(mark) <= _MARK_CHARS and "\0" not in mark
    try:
        ok = ok and bool(mark.encode("latin-1"))
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise InvalidParameterError(
            f"mark: expected None or a str of 1 to {_MARK_CHARS} latin-1 characters (kept "
            f"in the header's descrip with the file's digest), got {mark!r}",
            param="mark",
        )
    return mark


def _number(value) -> str:
    """A value as its type holds it (``3.2`` of float32, not ``3.200000047683716``)."""
    if isinstance(value, np.floating):
        return np.format_float_positional(value, trim="-")
    return str(value)


def as_stored(
    block: np.ndarray, dtype: np.dtype, *, param: str = "dtype", where: str = ""
) -> np.ndarray:
    """The values of ``block`` as NIfTI stores them in type ``dtype``, refusing what it
    cannot hold: values are never wrapped.

    The one cast of the NIfTI writers (:func:`write_nifti`, and
    :func:`roidask.io.niizarr.write_nifti_zarr`), block by block as they are computed.
    Floats written as integers are rounded (``np.rint``) and must then fit the integer
    type; NaN does not fit one. ``bool`` is stored as uint8 and holds 0 and 1 only, as
    a roidask mask (:func:`roidask.ops.threshold.check_binary`): a value such as 3 is
    refused rather than written as 1 (binarize first). Narrower floats (float64 into
    float32) are rounded, as NIfTI writers do, and refused beyond its range (never made
    infinite); complex values fit complex types only.

    Parameters
    ----------
    block : ndarray
        Computed values.
    dtype : numpy.dtype
        One of :data:`NIFTI_DTYPES` (:func:`nifti_dtype`).
    param : str
        The parameter that asked for ``dtype``, for messages.
    where : str
        Where ``block`` is in the image, for messages (``" in volumes 0-63"``).

    Raises
    ------
    InvalidParameterError
        Values ``dtype`` cannot hold, naming ``dtype``, its range and the values found.
    """
    disk = np.dtype(np.uint8) if dtype == np.bool_ else dtype
    data_dtype = block.dtype
    if block.dtype == np.bool_ or (block.dtype == disk and dtype != np.bool_):
        return block.astype(disk, copy=False)
    if block.dtype.kind == "c" and disk.kind != "c":
        raise InvalidParameterError(
            f"{param}: {dtype} cannot hold complex values (found in the data{where}); "
            "choose complex64 or complex128, or write the real part (img.real)",
            param=param,
        )
    if dtype != np.bool_ and (
        not block.size or disk.kind not in "iu" or np.can_cast(block.dtype, disk, "safe")
    ):
        with np.errstate(over="ignore"):
            stored = block.astype(disk)
        if disk.kind in "fc" and not np.can_cast(block.dtype, disk, "safe"):
            beyond = np.isinf(stored) & ~np.isinf(block)  # float64 beyond float32's range
            if beyond.any():
                largest = float(np.finfo(np.dtype(disk.char.lower())).max)  # complex: its part's
                raise InvalidParameterError(
                    f"{param}: {dtype} holds magnitudes up to {largest:.4g}, "
                    f"found {np.abs(block[beyond]).max():.4g}{where}; choose float64",
                    param=param,
                )
        return stored
    numbers = block[~np.isnan(block)] if block.dtype.kind == "f" else block
    low, high = (numbers.min(), numbers.max()) if numbers.size else ("nan", "nan")
    found = f"found values {_number(low)}..{_number(high)}{where}"
    if dtype == np.bool_:
        bad = np.unique(block[(block != 0) & (block != 1)])
        if bad.size:
            shown = ", ".join(_number(v) for v in bad[:_SHOWN_VALUES])
            more = f" and {bad.size - _SHOWN_VALUES} more" if bad.size > _SHOWN_VALUES else ""
            raise InvalidParameterError(
                f"{param}: bool holds 0 and 1 (stored as uint8), {found} ({shown}{more} "
                f"{'is' if bad.size == 1 else 'are'} neither); binarize the image first "
                "(roidask.ops.binarize_img: nonzero = 1, or threshold_img), or choose a "
                "numeric type",
                param=param,
            )
        return block.astype(disk)
    if block.dtype.kind == "f":
        n_nan = int(np.count_nonzero(np.isnan(block)))
        if n_nan:
            raise InvalidParameterError(
                f"{param}: {dtype} cannot hold NaN, found {n_nan} NaN value(s){where}; "
                "choose a float type (float32), or replace them first (img.fillna(0))",
                param=param,
            )
        block = np.rint(block)
    info = np.iinfo(disk)
    if block.min() < info.min or block.max() > info.max:
        raise InvalidParameterError(
            f"{param}: {dtype} holds {info.min}..{info.max}, {found}; choose a type that holds "
            f"them, or leave {param} unset to write the data's ({data_dtype})",
            param=param,
        )
    return block.astype(disk)


def write_nifti(
    data,
    path: str | os.PathLike,
    *,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    dtype: np.dtype | str | None = None,
    block_volumes: int = 64,
    tr_s: float | None = None,
    scl_slope: float = 1.0,
    scl_inter: float = 0.0,
    overwrite: bool = False,
    mark: str | None = None,
) -> Path:
    """Stream a 3D or 4D array into a NIfTI file, atomically.

    Parameters
    ----------
    data : array-like, shape (x, y, z) or (x, y, z, t)
        numpy or dask array. Dask arrays are computed block by block of
        ``block_volumes`` volumes, so a 4D result is never held whole.
    path : str or path-like
        Output ``.nii`` or ``.nii.gz`` file; written to a temporary name in the
        same folder and renamed into place when complete.
    affine : ndarray, shape (4, 4)
        Voxel to world (mm) transform.
    header : nibabel header, optional
        Template header (units, TR, descriptions are kept; shape, dtype and
        scaling are set from ``data``).
    dtype : dtype, optional
        On-disk data type, one of :data:`NIFTI_DTYPES`; defaults to ``data.dtype``.
        ``bool`` is written as uint8 and holds 0 and 1; floats written as integers
        are rounded. Values the type cannot hold (1760 as int8, NaN as an integer,
        3 as bool) are refused (:func:`as_stored`), not wrapped: the file is then not
        written.
    block_volumes : int
        Volumes computed and written at a time (>= 1).
    tr_s : float, optional
        Repetition time in seconds (> 0), stored as ``pixdim[4]`` of a 4D image.
    scl_slope, scl_inter : float
        Scaling stored in the header (``scl_slope``, ``scl_inter``): ``data``
        holds the stored values (e.g. int16), readers see
        ``stored * scl_slope + scl_inter``. Default: unscaled. Finite, and
        ``scl_slope`` non-zero (NIfTI reads 0 as no scaling).
    overwrite : bool
        Replace an existing ``path`` (default: refuse).
    mark : str, optional
        Written as the header's ``descrip`` (at most 32 latin-1 characters); with
        it, an existing ``path`` is replaced only if it carries ``mark`` too and is as
        it was written (e.g. :data:`EXPORT_MARK`).

    Raises
    ------
    InvalidParameterError
        ``path`` does not end in ``.nii``/``.nii.gz``; a bad ``affine``, ``dtype``,
        ``block_volumes``, ``tr_s``, ``scl_slope``, ``scl_inter`` or ``mark``
        (before anything is computed); values ``dtype`` cannot hold (when computed).
    RoidaskTypeError
        ``header`` is not a nibabel header, ``overwrite`` not a bool.
    ImageDimensionError
        ``data`` is not 3D or 4D.
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    OutputError
        ``path`` exists, and ``mark`` is given and is not the file's ``descrip``.
    """
    path = Path(check_path(path, "path"))
    if not is_nifti_path(path):
        raise InvalidParameterError(
            f"path {path}: output name must end in .nii or .nii.gz", param="path"
        )
    overwrite = check_bool(overwrite, "overwrite")
    mark = check_mark(mark)
    if not (hasattr(data, "shape") and hasattr(data, "dtype")):
        data = np.asarray(data)
    ndim = len(data.shape)
    if ndim not in (3, 4):
        raise ImageDimensionError(
            f"data: has shape {tuple(data.shape)}; expected a 3D or 4D array", param="data"
        )
    requested = nifti_dtype(dtype, data.dtype)
    out_dtype = np.dtype(np.uint8) if requested == np.bool_ else requested
    affine = check_affine(affine, param="affine")
    if header is not None and not isinstance(header, nib.spatialimages.SpatialHeader):
        raise RoidaskTypeError(
            f"header: expected a nibabel header (img.header) or None, got {type(header).__name__}",
            param="header",
        )
    block_volumes = check_int(block_volumes, "block_volumes", minimum=1)
    if tr_s is not None:
        tr_s = check_real(tr_s, "tr_s", positive=True, unit="seconds")
    scl_slope = check_real(scl_slope, "scl_slope", nonzero=True)
    scl_inter = check_real(scl_inter, "scl_inter")
    check_parent(path, param="path")
    _check_replaceable_file(path, overwrite=overwrite, mark=mark)
    hdr = nib.Nifti1Header() if header is None else header.copy()
    if not isinstance(hdr, nib.Nifti1Header):
        hdr = nib.Nifti1Header.from_header(hdr)
    if hdr.endianness != native_code:  # a big-endian source's: the data is written native
        hdr = hdr.as_byteswapped(native_code)
    hdr.set_data_dtype(out_dtype)
    hdr.set_data_shape(tuple(int(n) for n in data.shape))
    zooms = list(hdr.get_zooms())
    zooms[:3] = voxel_size_mm(affine)
    zooms = [*zooms[:3], *([tr_s or (zooms[3] if len(zooms) > 3 else 1.0)] if ndim == 4 else [])]
    hdr.set_zooms(zooms)
    if ndim == 4 and tr_s:
        xyz_unit, _ = hdr.get_xyzt_units()
        hdr.set_xyzt_units(xyz=xyz_unit if xyz_unit != "unknown" else "mm", t="sec")
    img = nib.Nifti1Image(np.empty((0,) * ndim, dtype=out_dtype), affine, hdr)
    img.update_header()
    hdr = img.header
    if mark is not None:
        hdr["descrip"] = mark.encode("latin-1")
    if (scl_slope, scl_inter) != (1.0, 0.0):  # unscaled files keep NaN, as before
        hdr.set_slope_inter(scl_slope, scl_inter)
    hdr.set_qform(affine, code=int(hdr["qform_code"]) or 1)
    hdr.set_sform(affine, code=int(hdr["sform_code"]) or 1)
    hdr.set_data_shape(tuple(int(n) for n in data.shape))
    hdr.set_data_offset(352)

    def check_again() -> None:  # at the commit: the file may have appeared meanwhile
        with checked_again():
            _check_replaceable_file(path, overwrite=overwrite, mark=mark)

    gz = path.name.lower().endswith(".gz")
    n_t = data.shape[3] if ndim == 4 else 1
    with (
        atomic_file(path, overwrite=overwrite, check=check_again) as tmp,
        open(tmp, "wb") as raw,
    ):
        # mtime=0 and the final name in the gzip header (not the temporary one):
        # the same data gives byte-identical files
        fh: Any = raw
        if gz and mark is not None:
            fh = _MarkedGzipWriter(raw, path.name, mark)
        elif gz:
            fh = igzip.IGzipFile(path.name, "wb", compresslevel=1, fileobj=raw, mtime=0)
        with fh:
            fh.write(hdr.binaryblock)
            fh.write(b"\x00" * (352 - len(hdr.binaryblock)))
            for start, block in zip(
                range(0, n_t, block_volumes), _blocks_ahead(data, block_volumes), strict=True
            ):
                stop = min(start + block_volumes, n_t)
                where = f" in volumes {start}-{stop - 1}" if ndim == 4 else ""
                fh.write(as_stored(block, requested, where=where).tobytes(order="F"))
        if mark is not None and not gz:  # the digest of what was written, in descrip
            digest = _data_digest(tmp, 352)[:_DIGEST_CHARS]
            stamp = f"{mark}{_SHA256_TAG}{digest}".encode("latin-1")
            with open(tmp, "r+b") as f:
                f.seek(_DESCRIP_OFFSET)
                f.write(stamp[:_DESCRIP_BYTES].ljust(_DESCRIP_BYTES, b"\0"))
    return path


def _check_replaceable_file(path: Path, *, overwrite: bool, mark: str | None) -> None:
    """``path`` may be written: absent, or (with ``overwrite``) a file carrying ``mark``."""
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"path {path}: already exists; pass overwrite=True to replace it", param="path"
        )
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise OutputError(
            f"path {path}: is a {'symbolic link' if path.is_symlink() else 'folder'}; "
            "expected a new or roidask-written file",
            param="path",
        )
    if path.exists() and mark is not None and not _written_with_mark(path, mark):
        raise OutputError(
            f"path {path}: exists and was not written by roidask, or was changed since "
            f"({mark!r} is not in its header or the file was rewritten); roidask only "
            "replaces its own outputs, choose another output",
            param="path",
        )


def _blocks_ahead(data, block_volumes: int):
    """Blocks of ``block_volumes`` volumes of ``data`` as numpy arrays, in order.

    Dask blocks are computed one ahead in a helper thread, so computing the next
    block overlaps with compressing and writing the current one (2 blocks held).
    """
    n_t = data.shape[3] if len(data.shape) == 4 else 1
    starts = range(0, n_t, block_volumes)

    def get(start: int) -> np.ndarray:
        block = data[..., start : start + block_volumes] if len(data.shape) == 4 else data
        return np.asarray(block.compute() if isinstance(block, da.Array) else block)

    if not isinstance(data, da.Array):
        for start in starts:
            yield get(start)
        return
    with thread_pool(1, "roidask-write-ahead") as ahead:
        pending = ahead.submit(get, starts[0])
        for start in starts[1:]:
            block = pending.result()
            pending = ahead.submit(get, start)
            yield block
        yield pending.result()
