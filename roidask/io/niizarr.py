"""NIfTI-Zarr (``.nii.zarr``): lazy reading and streamed, atomic writing.

NIfTI-Zarr (specification 1.0 release candidate, reference implementation the
``nifti-zarr`` package, import name ``niizarr``) is an OME-Zarr multiscale image
with the binary NIfTI header of its finest level stored beside it::

    image.nii.zarr/             zarr group (v3 + OME-Zarr 0.5, or v2 + OME-Zarr 0.4)
      zarr.json / .zattrs       "multiscales": axes (t, c, z, y, x subset) and scales
      0/                        level 0: axes in C order (t, z, y, x); x varies fastest
      1/, 2/, ...               optional coarser pyramid levels
      nifti/                    uint8 array of the 348-byte (NIfTI-1) or 540-byte
                                (NIfTI-2) header; its attributes hold a JSON copy

The header takes precedence over the OME metadata: the voxel-to-mm affine is the
header's (sform, else qform, as nibabel chooses), ``scl_slope``/``scl_inter``
scale the stored values, ``pixdim[4]`` is the repetition time.

:class:`NiftiZarrSource` reads it block by block like :class:`roidask.io.nifti.NiftiSource`
(``roidask.io.as_image("x.nii.zarr")`` gives a lazy roidask image, no voxel data
read); :func:`write_nifti_zarr` writes level 0 only, one block of volumes at a time,
into a temporary sibling renamed into place when complete.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import dask.array as da
import nibabel as nib
import numcodecs
import numpy as np
import xarray as xr
import zarr
from dask.array.core import getter
from dask.base import tokenize
from zarr.codecs import BloscCodec

from roidask._atomic import OutputFolder, check_parent, clean_stale
from roidask._validate import check_bool
from roidask.exceptions import (
    CorruptFileError,
    ImageDimensionError,
    ImageTypeError,
    InvalidParameterError,
    OutputError,
    OutputExistsError,
)
from roidask.io.chunks import normalize_chunks
from roidask.io.grid import SPATIAL_DIMS, affine_of
from roidask.io.locations import (
    Location,
    PathOrURL,
    S3Path,
    as_location,
    foreign_in_group,
    version_tag,
    zarr_store,
)
from roidask.io.nifti import (
    VolumeProperties,
    as_stored,
    header_from_b64,
    nifti_dtype,
    read_scaling,
)

__all__ = [
    "WRITER_ATTR",
    "NiftiZarrSource",
    "is_nifti_zarr",
    "write_nifti_zarr",
]

#: Group attribute that marks a ``.nii.zarr`` written by roidask (the only ones it replaces).
WRITER_ATTR = "roidask_nifti_zarr"
WRITER_FORMAT = 1
_SUFFIX = ".nii.zarr"
_NIFTI_MAGICS = (b"n+1", b"ni1", b"n+2", b"ni2")
_OME_AXES = ("t", "c", "z", "y", "x")
#: nibabel's unit names -> UDUNITS-2 names used by OME-Zarr (spec table 4.3).
_SPACE_UNITS = {"meter": "meter", "mm": "millimeter", "micron": "micrometer"}
_TIME_UNITS = {"sec": "second", "msec": "millisecond", "usec": "microsecond"}
#: Default chunks of written images: 64 voxels along x, y, z (the reference default) and as
#: many volumes as fit in _WRITE_CHUNK_BYTES (one volume of a 64x64x40 float32 run).
_WRITE_CHUNK_XYZ = 64
_WRITE_CHUNK_BYTES = 2**20
#: Bytes of volumes computed and written at a time by :func:`write_nifti_zarr`.
_WRITE_BLOCK_BYTES = 64 * 2**20


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _multiscales(attrs) -> list | None:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"]  # OME-Zarr 0.5 (zarr v3)
    return attrs.get("multiscales")  # OME-Zarr 0.4 (zarr v2)


def _header_from_bytes(raw: bytes, where: str) -> nib.Nifti1Header:
    """A nibabel NIfTI-1/NIfTI-2 header from the bytes of the ``nifti`` array."""
    sizes = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    if 348 in sizes and len(raw) >= 348:
        klass = nib.Nifti1Header
    elif 540 in sizes and len(raw) >= 540:
        klass = nib.Nifti2Header
    else:
        raise CorruptFileError(
            f"{where}: not a NIfTI-1/NIfTI-2 header ({len(raw)} bytes, sizeof_hdr "
            f"{int.from_bytes(raw[:4], 'little')}); expected 348 or 540 bytes"
        )
    try:
        header = klass.from_fileobj(io.BytesIO(raw), check=False)
    except Exception as exc:  # nibabel raises many types for garbage headers
        raise CorruptFileError(f"{where}: unreadable NIfTI header ({_first_line(exc)})") from None
    magic = bytes(header["magic"]).rstrip(b"\x00")
    if magic not in _NIFTI_MAGICS:
        raise CorruptFileError(
            f"{where}: NIfTI header has magic {magic!r}; expected one of "
            f"{[m.decode() for m in _NIFTI_MAGICS]}"
        )
    return header


def _strip_trailing_ones(shape) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


@dataclass(frozen=True)
class NiftiZarrSource(VolumeProperties):
    """A validated NIfTI-Zarr image whose level 0 can be read block by block.

    Mirrors :class:`roidask.io.nifti.NiftiSource` (same attributes, :meth:`read`
    and :meth:`iter_blocks`), so that code streaming NIfTI sources (``convert``)
    can take either. Build it with :meth:`NiftiZarrSource.open`; it holds no open
    handle and pickles cheaply.

    Attributes
    ----------
    path : Path
        The ``.nii.zarr`` directory.
    array : str
        Path of the level-0 array inside the group.
    axes : tuple of str
        Names of the level-0 array's axes, in zarr (C) order, e.g. ``("t", "z", "y", "x")``.
    shape : tuple of int
        Image shape in NIfTI order, ``(x, y, z)`` or ``(x, y, z, t)``.
    raw_dtype : numpy.dtype
        Stored data type (native byte order).
    slope, inter : float
        ``scl_slope`` and ``scl_inter`` of the header; ``1, 0`` when unscaled.
    affine : ndarray, shape (4, 4)
        Voxel to world (mm) transform from the header (nibabel's choice of sform/qform).
    header : nibabel header
        The stored NIfTI header.
    """

    path: Path | S3Path
    array: str
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    raw_dtype: np.dtype
    slope: float
    inter: float
    affine: np.ndarray = field(repr=False)
    header: nib.Nifti1Header = field(repr=False)

    @classmethod
    def open(cls, path: PathOrURL, *, ndim: int | tuple[int, ...] | None = None):
        """Read and validate the metadata and header of a ``.nii.zarr`` (no voxel data).

        Raises
        ------
        CorruptFileError
            Missing path, not a zarr group, no OME ``multiscales`` metadata, no
            NIfTI header, or a header that does not match the level-0 array.
        ImageDimensionError
            Not a 3D or 4D image (or not ``ndim``), or a channel axis of size > 1.
        """
        path = as_location(path)
        if not path.exists():
            raise CorruptFileError(f"{path}: no such NIfTI-Zarr directory (.nii.zarr)")
        if not path.is_dir():
            raise CorruptFileError(
                f"{path}: is a file; expected a NIfTI-Zarr directory (.nii.zarr)"
            )
        try:
            group = zarr.open_group(zarr_store(path), mode="r")
        except Exception as exc:
            raise CorruptFileError(
                f"{path}: not a zarr group, so not a NIfTI-Zarr image ({_first_line(exc)})"
            ) from None
        multiscales: Any = _multiscales(group.attrs)
        try:
            axes = tuple(
                a["name"] if isinstance(a, dict) else str(a) for a in multiscales[0]["axes"]
            )
            array_path = str(multiscales[0]["datasets"][0]["path"])
        except (TypeError, KeyError, IndexError):
            raise CorruptFileError(
                f"{path}: no OME-Zarr 'multiscales' metadata with axes and datasets; "
                "not a NIfTI-Zarr image"
            ) from None
        header = cls._read_header(group, path)
        try:
            level0 = group[array_path]
        except KeyError:
            level0 = None
        if not isinstance(level0, zarr.Array):
            raise CorruptFileError(
                f"{path}: multiscales level 0 names {array_path!r}, which is not an array "
                "of the group"
            )
        if len(axes) != level0.ndim or len(set(axes)) != len(axes) or set(axes) - set(_OME_AXES):
            raise CorruptFileError(
                f"{path}: multiscales axes {list(axes)} do not fit level 0 of shape "
                f"{tuple(level0.shape)}; expected distinct names among {list(_OME_AXES)}"
            )
        if not set(SPATIAL_DIMS) <= set(axes):
            raise ImageDimensionError(
                f"{path}: axes {list(axes)}; expected x, y and z (a 3D or 4D image)"
            )
        sizes = dict(zip(axes, (int(n) for n in level0.shape), strict=True))
        if sizes.get("c", 1) != 1:
            raise ImageDimensionError(
                f"{path}: has a channel axis of size {sizes['c']}; roidask reads 3D "
                "(x, y, z) or 4D (x, y, z, time) images"
            )
        shape = tuple(sizes[a] for a in ("x", "y", "z", "t") if a in sizes)
        if ndim is not None:
            accepted = (ndim,) if isinstance(ndim, int) else tuple(ndim)
            if len(shape) not in accepted:
                want = " or ".join(f"{n}D" for n in accepted)
                raise ImageDimensionError(
                    f"{path}: image is {len(shape)}D with shape {shape}; expected {want}"
                )
        header_shape = _strip_trailing_ones(header.get_data_shape())
        if header_shape != _strip_trailing_ones(shape):
            raise CorruptFileError(
                f"{path}: NIfTI header has shape {header_shape} but level 0 holds "
                f"{shape} (x, y, z[, t]); the header must describe level 0"
            )
        slope, inter = read_scaling(*header.get_slope_inter())
        return cls(
            path=path,
            array=array_path,
            axes=axes,
            shape=shape,
            raw_dtype=np.dtype(level0.dtype).newbyteorder("="),
            slope=slope,
            inter=inter,
            affine=np.asarray(header.get_best_affine(), dtype=np.float64),
            header=header,
        )

    @staticmethod
    def _read_header(group, path: Location) -> nib.Nifti1Header:
        if "nifti" in group:
            node = group["nifti"]
            if not isinstance(node, zarr.Array):
                raise CorruptFileError(f"{path}: 'nifti' is a group; expected the header array")
            return _header_from_bytes(np.asarray(node[...]).tobytes(), f"{path}/nifti")
        legacy = group.attrs.get("nifti")  # drafts before 1.0: base64 in the group attributes
        if isinstance(legacy, dict) and isinstance(legacy.get("base64"), str):
            try:
                raw = base64.b64decode(legacy["base64"].encode("ascii"), validate=True)
            except ValueError:
                raise CorruptFileError(
                    f"{path}: attribute nifti.base64 is not valid base64"
                ) from None
            return _header_from_bytes(raw, f"{path} (attribute nifti.base64)")
        raise CorruptFileError(
            f"{path}: no 'nifti' header array; an OME-Zarr image but not a NIfTI-Zarr "
            "(its affine is unknown)"
        )

    # -- reading ---------------------------------------------------------------------
    def zarr_array(self) -> zarr.Array:
        """The level-0 zarr array (opened read-only; metadata only)."""
        return zarr.open_array(zarr_store(self.path / self.array), mode="r")

    def _to_nifti_order(self, arr):
        """Drop a size-1 channel axis and move axes to (x, y, z[, t]) (numpy or dask)."""
        axes = list(self.axes)
        if "c" in axes:
            index = [slice(None)] * len(axes)
            index[axes.index("c")] = 0
            arr = arr[tuple(index)]
            axes.remove("c")
        order = [axes.index(a) for a in ("x", "y", "z", "t") if a in axes]
        return arr.transpose(order)

    def _scale(self, arr):
        if arr.dtype != self.raw_dtype:
            arr = arr.astype(self.raw_dtype)  # native byte order
        if not self.is_scaled:
            return arr
        dtype = self.dtype
        return arr.astype(dtype) * dtype.type(self.slope) + dtype.type(self.inter)

    def read(self, start: int = 0, stop: int | None = None, *, scaled: bool = True) -> np.ndarray:
        """Volumes ``start:stop`` as an ``(x, y, z, t)`` array (``(x, y, z)`` if 3D)."""
        z = self.zarr_array()
        index = [slice(None)] * len(self.axes)
        if "t" in self.axes:
            index[self.axes.index("t")] = slice(start, self.n_volumes if stop is None else stop)
        try:
            arr = np.asarray(z[tuple(index)])
        except Exception as exc:
            raise CorruptFileError(
                f"{self.path}: could not read volumes {start}:{stop} ({_first_line(exc)})"
            ) from None
        arr = self._to_nifti_order(arr)
        return self._scale(arr) if scaled else arr.astype(self.raw_dtype, copy=False)

    def iter_blocks(self, block_volumes: int, *, scaled: bool = True):
        """Yield ``(start, stop, array)`` for consecutive blocks of ``block_volumes``."""
        for start in range(0, self.n_volumes, block_volumes):
            stop = min(start + block_volumes, self.n_volumes)
            yield start, stop, self.read(start, stop, scaled=scaled)

    def to_dask(self, chunks: dict[str, int]) -> da.Array:
        """Level 0 as a lazy ``(x, y, z[, t])`` dask array with ``chunks`` (roidask dims)."""
        z = self.zarr_array()
        by_axis = {"x": chunks["x"], "y": chunks["y"], "z": chunks["z"], "c": 1}
        by_axis["t"] = chunks.get("time", 1)
        zchunks = tuple(by_axis[a] for a in self.axes)
        meta = self.path / self.array
        stamps = [version_tag(p) for p in (self.path, meta) if p.exists()]
        token = tokenize(str(self.path.resolve()), self.array, stamps, zchunks)
        arr = da.from_array(
            z,
            chunks=zchunks,
            name=f"niizarr-{self.path.name}-{token}",
            getitem=partial(_checked_getter, where=str(self.path)),
        )
        return self._scale(self._to_nifti_order(arr))


def _ranges(index) -> str:
    return ", ".join(f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s) for s in index)


def _checked_getter(a, b, asarray=True, lock=None, *, where: str):
    """dask's getter for zarr chunks, with read errors as one-line CorruptFileError."""
    try:
        return getter(a, b, asarray=asarray, lock=lock)
    except Exception as exc:
        raise CorruptFileError(
            f"{where}: could not read the stored chunks at [{_ranges(b)}] "
            f"({_first_line(exc)}); "
            "the NIfTI-Zarr data is corrupt or incomplete"
        ) from None


# -- reading -----------------------------------------------------------------------------
def is_nifti_zarr(path: PathOrURL) -> bool:
    """True if ``path`` is a directory holding a zarr group with a NIfTI-Zarr header.

    A cheap check (metadata only) for dispatching paths; :func:`roidask.io.as_image`
    validates fully.
    """
    path = as_location(path)
    if isinstance(path, S3Path) and not path.name.lower().endswith(_SUFFIX):
        return False  # by name on S3: no request for every .nii.gz
    if not path.is_dir():
        return False
    try:
        group = zarr.open_group(zarr_store(path), mode="r")
    except Exception:
        return False
    legacy = group.attrs.get("nifti")
    return _multiscales(group.attrs) is not None and (
        "nifti" in group or (isinstance(legacy, dict) and "base64" in legacy)
    )


# -- writing -----------------------------------------------------------------------------
def _written_by_roidask(path: Path) -> bool:
    if not path.is_dir():
        return False
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:
        return False
    return group.attrs.get(WRITER_ATTR) == WRITER_FORMAT


def _check_target(path: Path, overwrite: bool) -> None:
    if not path.name.lower().endswith(_SUFFIX) or len(path.name) == len(_SUFFIX):
        raise InvalidParameterError(
            f"path: expected a name ending in {_SUFFIX} (NIfTI-Zarr), got {str(path)!r}",
            param="path",
        )
    check_parent(path, param="path")
    clean_stale(path)
    if os.path.lexists(path):
        if path.is_symlink():
            raise OutputError(
                f"path {path}: is a symbolic link; roidask replaces only what it wrote, choose "
                "another path",
                param="path",
            )
        if not _written_by_roidask(path):
            raise OutputError(
                f"path {path}: exists and was not written by roidask; choose another path "
                "(roidask never replaces other files)",
                param="path",
            )
        if not overwrite:
            raise OutputExistsError(
                f"path {path}: already exists; pass overwrite=True to replace it",
                param="path",
            )
        foreign = foreign_in_group(path)
        if foreign:
            raise OutputError(
                f"path {path}: holds {len(foreign)} file(s) roidask did not write "
                f"({', '.join(foreign[:5])}); roidask never deletes them, move them away",
                param="path",
            )


def _nifti_header(img: xr.DataArray, out_dtype: np.dtype) -> nib.Nifti1Header:
    """The header to store: the image's source header with shape, dtype, grid and TR set."""
    template = img.attrs.get("nifti_header")
    hdr = header_from_b64(template) if template else nib.Nifti1Header()
    shape = tuple(int(n) for n in img.shape)
    if max(shape) > 32767 and not isinstance(hdr, nib.Nifti2Header):
        hdr = nib.Nifti2Header.from_header(hdr)
    hdr.set_data_dtype(out_dtype)  # one of NIFTI_DTYPES (nifti_dtype)
    affine = affine_of(img)
    hdr.set_data_shape(shape)
    zooms = list(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    xyz_unit, t_unit = hdr.get_xyzt_units()
    if img.ndim == 4:
        old = hdr.get_zooms()
        tr_s = img.attrs.get("tr_s")
        if tr_s:
            zooms.append(float(tr_s))
            t_unit = "sec"
        else:
            zooms.append(float(old[3]) if len(old) > 3 and old[3] > 0 else 1.0)
    hdr.set_zooms(zooms)
    hdr.set_xyzt_units(xyz=xyz_unit if xyz_unit != "unknown" else "mm", t=t_unit)
    hdr.set_slope_inter(1.0, 0.0)  # values are stored as they are (see write_nifti_zarr)
    hdr["cal_min"] = hdr["cal_max"] = 0  # display range of the source; unset for new data
    hdr.set_qform(affine, code=int(hdr["qform_code"]) or 1)
    hdr.set_sform(affine, code=int(hdr["sform_code"]) or 1)
    hdr.set_data_offset(352 if isinstance(hdr, nib.Nifti1Header) else 544)
    return hdr


def _compressor(zarr_format: int):
    # Blosc/LZ4 with byte shuffle, the spec's example; zlib is the other codec it allows.
    if zarr_format == 2:
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def _write_chunks(chunks, shape, itemsize: int) -> dict[str, int]:
    """Chunks of a written image: the dims given in ``chunks``, defaults for the others."""
    ndim = len(shape)
    out = {d: min(_WRITE_CHUNK_XYZ, int(n)) for d, n in zip(SPATIAL_DIMS, shape, strict=False)}
    given = {}
    if chunks is not None:
        sizes = normalize_chunks(chunks, shape, itemsize)  # validates
        if isinstance(chunks, str):
            keys = [p.partition("=")[0].strip() for p in chunks.split(",") if p.strip()]
        else:
            keys = list(chunks)
        given = {k: sizes[k] for k in keys}
    out.update({k: v for k, v in given.items() if k in SPATIAL_DIMS})
    if ndim == 4:
        chunk_volume_bytes = out["x"] * out["y"] * out["z"] * itemsize
        default_t = max(1, min(int(shape[3]), _WRITE_CHUNK_BYTES // chunk_volume_bytes))
        out["time"] = given.get("time", default_t)
    return out


def write_nifti_zarr(
    img,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    dtype=None,
    chunks=None,
    zarr_format: int = 3,
) -> Path:
    """Write a 3D or 4D image as NIfTI-Zarr (``.nii.zarr``), atomically.

    ``niizarr.zarr2nii(path)`` then gives the same values and dtype and the same
    affine (float32 precision of the NIfTI header), as :func:`roidask.io.as_image` does.

    Parameters
    ----------
    img : xarray.DataArray
        A roidask image (:func:`roidask.io.to_nifti` with a ``.nii.zarr`` path takes any
        image).
        3D ``(x, y, z)`` or 4D ``(x, y, z, time)``; its grid (``affine``), source
        header (``nifti_header``: units, descriptions, intent) and ``tr_s`` are kept.
    path : str or path-like
        Output directory, named ``*.nii.zarr``. Written to a temporary sibling and
        renamed into place when complete.
    overwrite : bool
        Replace ``path`` if it exists and was written by roidask (never another file).
    dtype : dtype, optional
        Stored data type, one of :data:`roidask.io.nifti.NIFTI_DTYPES`; default the
        image's. ``bool`` is stored as uint8 and holds 0 and 1; floats stored as
        integers are rounded first. Values the type cannot hold are refused
        (:func:`roidask.io.nifti.as_stored`), not wrapped: nothing is then kept.
    chunks : dict or str, optional
        Chunk sizes per dim (``x``, ``y``, ``z``, ``time``; ``-1`` for a whole axis);
        dims not given take the defaults: 64 voxels along x, y and z (as
        ``nii2zarr``), and along time as many volumes as fit in 1 MiB per chunk
        (one volume for a typical 64x64x40 float32 run, ``nii2zarr``'s default;
        more for small volumes, which would otherwise make one tiny file each).
    zarr_format : {3, 2}
        Zarr v3 with OME-Zarr 0.5 metadata (default), or zarr v2 with OME-Zarr 0.4.

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    Only pyramid level 0 is written: NIfTI-Zarr requires a valid OME-Zarr
    multiscale image, and a multiscale with a single dataset is one; fMRI
    volumes are small enough (about 100³ voxels) for viewers to show level 0
    directly. Values are stored as they are with ``scl_slope = 1`` and
    ``scl_inter = 0``: ``niizarr.zarr2nii`` (1.0.0rc8) builds its nibabel image from
    the raw zarr array, and nibabel then drops the header's scaling, so scaled
    integers would come back unscaled. A 4D image is computed and written one
    block of whole volumes (about 64 MB) at a time.

    Raises
    ------
    InvalidParameterError
        ``path`` not named ``*.nii.zarr``, missing parent folder, bad ``chunks``,
        ``zarr_format`` or a ``dtype`` NIfTI cannot store (before anything is computed);
        values ``dtype`` cannot hold (when computed).
    OutputExistsError
        ``path`` exists and ``overwrite`` is false, or it was not written by roidask.
    ImageTypeError, ImageDimensionError
        ``img`` is not a 3D/4D image with a grid.
    """
    path = Path(path)
    image = img
    if not isinstance(image, xr.DataArray) or "affine" not in image.attrs:
        raise ImageTypeError(
            f"img: expected a roidask image (an xarray.DataArray with an affine), got "
            f"{type(img).__name__}; roidask.io.to_nifti(img, 'x.nii.zarr') takes any image",
            param="img",
        )
    if image.ndim not in (3, 4):
        raise ImageDimensionError(
            f"img: expected a 3D or 4D image, got shape {tuple(image.shape)}", param="img"
        )
    if not isinstance(image.data, da.Array):
        image = image.copy(data=da.from_array(np.asarray(image.data), chunks=-1))
    if zarr_format not in (2, 3):
        raise InvalidParameterError(
            f"zarr_format: expected 2 or 3, got {zarr_format!r}", param="zarr_format"
        )
    overwrite = check_bool(overwrite, "overwrite")
    requested = nifti_dtype(dtype, image.dtype, data_param="img")
    _check_target(path, overwrite)
    out_dtype = np.dtype(np.uint8) if requested == np.bool_ else requested
    header = _nifti_header(image, out_dtype)
    chunk_sizes = _write_chunks(chunks, image.shape, out_dtype.itemsize)
    axes = ["t", "z", "y", "x"][4 - image.ndim :]
    zchunks = tuple(chunk_sizes[{"t": "time"}.get(a, a)] for a in axes)
    zshape = tuple(int(n) for n in image.shape[::-1])

    import niizarr  # imports scikit-image (pyramids): about 1 s, only when writing

    folder = OutputFolder(  # marked by WRITER_ATTR; checked again when committed
        path,
        kind="nifti-zarr",
        marker=False,
        replaceable=lambda target: _check_target(target, overwrite),
    )
    tmp = folder.open()
    try:
        group = zarr.open_group(str(tmp), mode="w-", zarr_format=zarr_format)  # type: ignore[arg-type]
        extra = (
            {"dimension_names": axes}
            if zarr_format == 3
            else {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
        )
        level0 = group.create_array(
            "0",
            shape=zshape,
            chunks=zchunks,
            dtype=out_dtype,
            compressors=_compressor(zarr_format),
            fill_value=0,
            **extra,
        )
        level0.attrs["_ARRAY_DIMENSIONS"] = [{"t": "time"}.get(a, a) for a in axes]
        _stream_volumes(image.data, level0, requested, zchunks[0] if image.ndim == 4 else 1)
        xyz_unit, t_unit = header.get_xyzt_units()
        zooms = header.get_zooms()
        niizarr.write_ome_metadata(
            group,
            axes=axes,
            space_scale=[float(zooms[2]), float(zooms[1]), float(zooms[0])],
            time_scale=float(zooms[3]) if image.ndim == 4 else 1.0,
            space_unit=_SPACE_UNITS.get(xyz_unit, "millimeter"),
            time_unit=_TIME_UNITS.get(t_unit, "second"),
            name=image.name if isinstance(image.name, str) else "",
            pyramid_aligns="edge",
            multiscales_type="single level (no pyramid)",
            ome_version="0.5" if zarr_format == 3 else "0.4",
        )
        niizarr.write_nifti_header(group, header)
        group.attrs[WRITER_ATTR] = WRITER_FORMAT
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    return path


def _stream_volumes(data, level0, dtype: np.dtype, chunk_t: int) -> None:
    """Compute ``data`` (x, y, z[, t]) and store it transposed, whole time chunks at a time,
    as type ``dtype`` (:func:`roidask.io.nifti.as_stored`: values it cannot hold refused)."""

    def prepare(block, where: str = "") -> np.ndarray:
        block = np.asarray(block.compute() if isinstance(block, da.Array) else block)
        return as_stored(block, dtype, where=where).transpose()

    if data.ndim == 3:
        level0[...] = prepare(data)
        return
    n_t = data.shape[3]
    volume_bytes = int(np.prod(data.shape[:3])) * np.dtype(level0.dtype).itemsize
    step = chunk_t * max(1, _WRITE_BLOCK_BYTES // max(volume_bytes * chunk_t, 1))
    for start in range(0, n_t, step):
        stop = min(start + step, n_t)
        level0[start:stop] = prepare(data[..., start:stop], f" in volumes {start}-{stop - 1}")
