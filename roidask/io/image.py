"""The xarray image model and the one function that normalises image arguments.

A roidask image is an :class:`xarray.DataArray` backed by dask:

* 3D maps have dims ``("x", "y", "z")``;
* BOLD series have dims ``("x", "y", "z", "time")`` with coordinates ``time``
  (seconds from the first volume), ``condition`` (str) and ``run`` (int) along
  ``time``.

The grid travels in ``attrs``: ``affine`` (4x4 nested list, voxel -> mm),
``voxel_size_mm``, ``xyz_units``, ``time_units``, ``tr_s`` (BOLD),
``source_files`` and ``nifti_header`` (base64 of the source header), so that
any result can be written back as NIfTI on the source grid (:func:`to_nifti`).

Every public function that takes an image calls :func:`as_image`, which accepts
a path (``.nii``/``.nii.gz`` file or a roidask zarr store), a nibabel image or
an xarray object, and always returns the same kind of object.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from roidask.exceptions import (
    GridMismatchError,
    ImageDimensionError,
    ImageTypeError,
    InvalidParameterError,
)
from roidask.io.nifti import NiftiSource, header_from_b64, header_to_b64, is_nifti_path

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "SPATIAL_DIMS",
    "affine_of",
    "as_image",
    "bold_from_nifti",
    "check_same_grid",
    "default_chunks",
    "grid_attrs",
    "image_from_nifti",
    "like_image",
    "normalize_chunks",
    "select_conditions",
    "to_nifti",
]

SPATIAL_DIMS = ("x", "y", "z")
BOLD_DIMS = ("x", "y", "z", "time")
#: Target size of one chunk of the BOLD array (whole volumes), in bytes.
DEFAULT_CHUNK_BYTES = 16 * 2**20
#: Affines closer than this (max absolute difference, mm) are the same grid.
AFFINE_ATOL_MM = 1e-3

_GRID_KEYS = ("affine", "voxel_size_mm", "xyz_units", "nifti_header")


# -- grid metadata ----------------------------------------------------------------------
def affine_of(img: xr.DataArray) -> np.ndarray:
    """The 4x4 voxel-to-mm affine of a roidask image."""
    try:
        return np.asarray(img.attrs["affine"], dtype=np.float64).reshape(4, 4)
    except KeyError:
        raise ImageTypeError(
            f"image {img.name!r} has no 'affine' attribute; expected a roidask image "
            "(see roidask.io.as_image)"
        ) from None


def grid_attrs(img: xr.DataArray) -> dict:
    """The attrs that describe the voxel grid (to copy onto derived 3D maps)."""
    return {k: img.attrs[k] for k in _GRID_KEYS if k in img.attrs}


def _attrs_from_source(src: NiftiSource) -> dict:
    xyz_units, t_units = src.header.get_xyzt_units()
    attrs = {
        "affine": src.affine.tolist(),
        "voxel_size_mm": list(src.voxel_size_mm),
        "xyz_units": xyz_units,
        "nifti_header": header_to_b64(src.header),
        "source_files": [str(src.path)],
    }
    if src.ndim == 4:
        attrs["time_units"] = "s"
        attrs["source_time_units"] = t_units
    return attrs


def check_same_grid(
    a: xr.DataArray,
    b: xr.DataArray,
    *,
    names: tuple[str, str] = ("img", "other"),
    atol_mm: float = AFFINE_ATOL_MM,
) -> None:
    """Raise :class:`GridMismatchError` unless ``a`` and ``b`` share shape and affine."""
    sa, sb = tuple(a.shape[:3]), tuple(b.shape[:3])
    fa, fb = affine_of(a), affine_of(b)
    if sa != sb or not np.allclose(fa, fb, rtol=0, atol=atol_mm):
        raise GridMismatchError(
            f"{names[0]} and {names[1]} are on different voxel grids: "
            f"{names[0]} has shape {sa} and affine {np.round(fa, 4).tolist()}, "
            f"{names[1]} has shape {sb} and affine {np.round(fb, 4).tolist()}; "
            "resample one onto the other first (roidask never resamples silently)"
        )


# -- chunking -----------------------------------------------------------------------------
def default_chunks(
    shape: Sequence[int], itemsize: int, *, target_bytes: int = DEFAULT_CHUNK_BYTES
):
    """Whole volumes, as many per chunk as fit in ``target_bytes`` (at least one)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 3:
        return dict(zip(SPATIAL_DIMS, shape, strict=True))
    volume_bytes = int(np.prod(shape[:3])) * int(itemsize)
    n_t = max(1, min(shape[3], target_bytes // max(volume_bytes, 1)))
    return dict(zip(BOLD_DIMS, (*shape[:3], n_t), strict=True))


def normalize_chunks(chunks, shape: Sequence[int], itemsize: int) -> dict[str, int]:
    """Chunk sizes per dim from a dict, a ``"x=..,y=..,time=.."`` string, or None.

    Missing dims take the default (whole volumes, ~16 MB chunks); ``-1`` means
    the whole axis.

    Raises
    ------
    InvalidParameterError
        Unknown dimension names, or sizes that are not positive integers.
    """
    dims = BOLD_DIMS[: len(shape)]
    out = default_chunks(shape, itemsize)
    if chunks is None:
        return out
    if isinstance(chunks, str):
        parsed = {}
        for part in filter(None, (p.strip() for p in chunks.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise InvalidParameterError(
                    f"chunks: {part!r} is not of the form dim=size (e.g. x=20,y=32,time=100)"
                )
            parsed[key.strip()] = value.strip()
        chunks = parsed
    if not isinstance(chunks, Mapping):
        raise InvalidParameterError(
            f"chunks: expected a mapping like {{'x': 20, 'time': 100}} or 'x=20,time=100', "
            f"got {chunks!r}"
        )
    for key, value in chunks.items():
        if key not in dims:
            raise InvalidParameterError(
                f"chunks: unknown dimension {key!r}; expected some of {list(dims)}"
            )
        try:
            size = int(value)
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"chunks: size for {key!r} must be an integer, got {value!r}"
            ) from None
        n = shape[dims.index(key)]
        if size == -1:
            size = n
        if size < 1:
            raise InvalidParameterError(
                f"chunks: size for {key!r} must be >= 1 (or -1 for the whole axis), got {size}"
            )
        out[key] = min(size, n)
    return out


# -- construction from NIfTI --------------------------------------------------------------
class _SourceArray:
    """Array-like view of a NiftiSource for :func:`dask.array.from_array`."""

    def __init__(self, source: NiftiSource):
        self.source = source
        self.shape = source.shape
        self.dtype = source.dtype
        self.ndim = source.ndim

    def __getitem__(self, index):
        if self.ndim == 3:
            return self.source.read()[index]
        t = index[3]
        start, stop, step = t.indices(self.shape[3])
        block = self.source.read(start, stop)
        return block[(*index[:3], slice(None, None, step))]


def _token(source: NiftiSource, chunks) -> str:
    """Deterministic graph key: same file, same modification time, same chunks."""
    from dask.base import tokenize

    return tokenize(str(source.path), source.path.stat().st_mtime_ns, chunks)


def _source_dask(source: NiftiSource, chunks: dict[str, int]) -> da.Array:
    dims = BOLD_DIMS[: source.ndim]
    read_chunks = tuple(source.shape[:3]) + ((chunks["time"],) if source.ndim == 4 else ())
    arr = da.from_array(
        _SourceArray(source),
        chunks=read_chunks,
        asarray=True,
        lock=False,
        fancy=False,
        meta=np.empty((0,) * source.ndim, dtype=source.dtype),
        name=f"nifti-{source.path.name}-{_token(source, read_chunks)}",
    )
    target = tuple(chunks[d] for d in dims)
    if target != read_chunks:
        arr = arr.rechunk(target)
    return arr


def image_from_nifti(path: str | os.PathLike, *, chunks=None) -> xr.DataArray:
    """A 3D NIfTI file as a lazy roidask image (dims x, y, z)."""
    src = NiftiSource.open(path, ndim=3)
    chunks = normalize_chunks(chunks, src.shape, src.dtype.itemsize)
    arr = _source_dask(src, chunks)
    return xr.DataArray(
        arr, dims=SPATIAL_DIMS, name=Path(path).name, attrs=_attrs_from_source(src)
    )


def bold_from_nifti(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    labels: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    tr_s: float | None = None,
    chunks=None,
) -> xr.DataArray:
    """One or more 4D NIfTI runs as one lazy BOLD DataArray, concatenated along time.

    Parameters
    ----------
    paths : path or list of paths
        4D ``.nii``/``.nii.gz`` runs on the same grid, in acquisition order.
    labels : path or list of paths, optional
        Haxby ``labels.txt`` file(s) or one BIDS ``events.tsv`` per run; see
        :func:`roidask.io.labels.volume_labels`. Without labels every volume's
        condition is ``"unknown"`` and its run is the file index.
    tr_s : float, optional
        Repetition time in seconds; defaults to the header's ``pixdim[4]``.
    chunks : dict or str, optional
        Chunk sizes per dim (``x``, ``y``, ``z``, ``time``); default whole volumes,
        about 16 MB per chunk.

    Returns
    -------
    xarray.DataArray
        Dims ``(x, y, z, time)``, dask-backed, source dtype (floats if the file is
        scaled), coordinates ``time`` (s), ``condition`` and ``run``. No voxel
        data is read until computed.
    """
    from roidask.io.labels import volume_labels

    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not paths:
        raise InvalidParameterError("bold: at least one 4D NIfTI file is needed")
    sources = [NiftiSource.open(p, ndim=4) for p in paths]
    first = sources[0]
    for src in sources[1:]:
        if src.volume_shape != first.volume_shape or not np.allclose(
            src.affine, first.affine, rtol=0, atol=AFFINE_ATOL_MM
        ):
            raise GridMismatchError(
                f"{src.path}: run is on a different grid from {first.path}: shape "
                f"{src.volume_shape} affine {np.round(src.affine, 4).tolist()} vs shape "
                f"{first.volume_shape} affine {np.round(first.affine, 4).tolist()}; "
                "all runs must share shape and affine"
            )
        if src.dtype != first.dtype:
            raise GridMismatchError(
                f"{src.path}: data type {src.dtype} differs from {first.path} ({first.dtype}); "
                "all runs must share one data type"
            )
    if tr_s is None:
        tr_s = first.tr_s
    elif not (isinstance(tr_s, int | float) and tr_s > 0):
        raise InvalidParameterError(f"tr_s: expected a positive number of seconds, got {tr_s!r}")
    n_per_run = [s.n_volumes for s in sources]
    n_total = int(sum(n_per_run))
    if labels is None:
        condition = np.full(n_total, "unknown")
        run = np.repeat(np.arange(len(sources)), n_per_run)
    else:
        if isinstance(labels, str | os.PathLike):
            labels = [labels]
        table = volume_labels(
            list(labels),
            n_volumes_per_run=n_per_run,
            tr_s=tr_s,
            bold_names=[str(s.path) for s in sources],
        )
        condition = table["condition"].to_numpy().astype(str)
        run = table["run"].to_numpy().astype(np.int64)
    full_shape = (*first.volume_shape, n_total)
    chunks = normalize_chunks(chunks, full_shape, first.dtype.itemsize)
    parts = [_source_dask(src, chunks) for src in sources]
    arr = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=3)
    target = tuple(chunks[d] for d in BOLD_DIMS)
    if arr.chunks != da.core.normalize_chunks(target, full_shape):
        arr = arr.rechunk(target)
    attrs = _attrs_from_source(first)
    attrs["source_files"] = [str(s.path) for s in sources]
    attrs["tr_s"] = float(tr_s) if tr_s else None
    step = float(tr_s) if tr_s else 1.0
    if not tr_s:
        attrs["time_units"] = "volumes"
    return xr.DataArray(
        arr,
        dims=BOLD_DIMS,
        name="bold",
        coords={
            "time": ("time", np.arange(n_total) * step, {"units": attrs["time_units"]}),
            "condition": ("time", condition),
            "run": ("time", run),
        },
        attrs=attrs,
    )


def _from_nibabel(img: nib.spatialimages.SpatialImage, *, chunks) -> xr.DataArray:
    if not isinstance(img, nib.Nifti1Image):
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    fname = img.get_filename()
    if fname and is_nifti_path(fname) and not img.in_memory:
        shape = img.shape
        if len(shape) == 4:
            return bold_from_nifti(fname, chunks=chunks)
        return image_from_nifti(fname, chunks=chunks)
    data = np.asanyarray(img.dataobj)
    shape = data.shape
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    data = data.reshape(shape)
    if data.ndim not in (3, 4):
        raise ImageDimensionError(f"nibabel image has shape {shape}; expected 3D or 4D")
    chunks = normalize_chunks(chunks, data.shape, data.dtype.itemsize)
    dims = BOLD_DIMS[: data.ndim]
    arr = da.from_array(data, chunks=tuple(chunks[d] for d in dims))
    header = img.header
    xyz_units, _ = header.get_xyzt_units()
    attrs = {
        "affine": np.asarray(img.affine, dtype=np.float64).tolist(),
        "voxel_size_mm": np.sqrt((np.asarray(img.affine)[:3, :3] ** 2).sum(axis=0)).tolist(),
        "xyz_units": xyz_units,
        "nifti_header": header_to_b64(header),
        "source_files": [],
    }
    coords = {}
    if data.ndim == 4:
        zooms = header.get_zooms()
        tr = float(zooms[3]) if len(zooms) > 3 and zooms[3] > 0 else None
        attrs.update(tr_s=tr, time_units="s" if tr else "volumes")
        n = data.shape[3]
        coords = {
            "time": np.arange(n) * (tr or 1.0),
            "condition": ("time", np.full(n, "unknown")),
            "run": ("time", np.zeros(n, dtype=np.int64)),
        }
    return xr.DataArray(
        arr, dims=dims, coords=coords, name="bold" if data.ndim == 4 else None, attrs=attrs
    )


def _from_xarray(obj, *, param: str, subject: str | None) -> xr.DataArray:
    if isinstance(obj, xr.DataTree):
        from roidask.io.store import subject_dataset

        obj = subject_dataset(obj, subject=subject, param=param)
    if isinstance(obj, xr.Dataset):
        if "bold" in obj.data_vars:
            obj = obj["bold"]
        elif len(obj.data_vars) == 1:
            obj = obj[next(iter(obj.data_vars))]
        else:
            raise ImageTypeError(
                f"{param}: Dataset has variables {list(obj.data_vars)} and no 'bold'; "
                "pass the DataArray to use"
            )
    dims = tuple(obj.dims)
    if dims not in (SPATIAL_DIMS, BOLD_DIMS):
        raise ImageDimensionError(
            f"{param}: DataArray has dims {dims}; expected ('x', 'y', 'z') or "
            "('x', 'y', 'z', 'time')"
        )
    if "affine" not in obj.attrs:
        raise ImageTypeError(
            f"{param}: DataArray {obj.name!r} has no 'affine' attribute, so its grid is "
            "unknown; build it with roidask (as_image, open_subject) or set attrs['affine']"
        )
    if not isinstance(obj.data, da.Array):
        obj = obj.copy(data=da.from_array(np.asarray(obj.data), chunks=-1))
    return obj


def as_image(
    img,
    *,
    ndim: int | None = None,
    param: str = "img",
    subject: str | None = None,
    chunks=None,
) -> xr.DataArray:
    """Normalise any accepted image argument to a lazy roidask DataArray.

    Parameters
    ----------
    img : path, nibabel image, xarray.DataArray, Dataset or DataTree
        A ``.nii``/``.nii.gz`` file, a roidask zarr store (its ``bold``), a nibabel
        image, or an xarray object in roidask layout.
    ndim : {3, 4}, optional
        Required number of dimensions.
    param : str
        Parameter name used in error messages.
    subject : str, optional
        Subject group, when ``img`` is a store or DataTree with several subjects.
    chunks : dict or str, optional
        Chunks for images read from files (ignored for xarray input).

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims ``(x, y, z)`` or ``(x, y, z, time)``, grid in attrs.

    Raises
    ------
    ImageTypeError
        ``img`` is of an unsupported type (e.g. a bare numpy array, which has no grid).
    ImageDimensionError
        ``img`` does not have ``ndim`` dimensions.
    """
    if isinstance(img, str | os.PathLike):
        path = Path(img)
        if is_nifti_path(path):
            src = NiftiSource.open(path)
            out = (
                bold_from_nifti(path, chunks=chunks)
                if src.ndim == 4
                else image_from_nifti(path, chunks=chunks)
            )
        elif path.is_dir():
            from roidask.io.store import open_subject

            out = open_subject(path, subject=subject)["bold"]
            if chunks is not None:
                out = out.chunk(normalize_chunks(chunks, out.shape, out.dtype.itemsize))
        else:
            raise ImageTypeError(
                f"{param}: {path} is neither a .nii/.nii.gz file nor a roidask zarr store"
            )
    elif isinstance(img, nib.spatialimages.SpatialImage):
        out = _from_nibabel(img, chunks=chunks)
    elif isinstance(img, xr.DataArray | xr.Dataset | xr.DataTree):
        out = _from_xarray(img, param=param, subject=subject)
    else:
        raise ImageTypeError(
            f"{param}: expected a path, a nibabel image or an xarray object, got "
            f"{type(img).__name__}"
            + (
                " (a bare array has no voxel grid; wrap it with roidask.io.like_image)"
                if isinstance(img, np.ndarray | da.Array)
                else ""
            )
        )
    if ndim is not None and out.ndim != ndim:
        kind = "a 4D BOLD series" if ndim == 4 else "a 3D image"
        raise ImageDimensionError(
            f"{param}: got a {out.ndim}D image with shape {tuple(out.shape)}; expected {kind}"
        )
    return out


def like_image(
    data, reference: xr.DataArray, *, name: str | None = None, attrs=None
) -> xr.DataArray:
    """Wrap a 3D (or 4D) array as a roidask image on ``reference``'s grid.

    The counterpart of nilearn's ``new_img_like``. 4D data must have as many
    volumes as ``reference`` has (its time coordinates are copied).
    """
    if isinstance(data, xr.DataArray):
        data = data.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=-1, name=False)  # no hashing of data
    if tuple(data.shape[:3]) != tuple(reference.shape[:3]):
        raise GridMismatchError(
            f"like_image: data has spatial shape {tuple(data.shape[:3])}, reference "
            f"{reference.name!r} has {tuple(reference.shape[:3])}"
        )
    dims = BOLD_DIMS[: data.ndim]
    coords = {}
    if data.ndim == 4:
        coords = {k: v for k, v in reference.coords.items() if v.dims == ("time",)}
    new_attrs = grid_attrs(reference)
    if data.ndim == 4:
        new_attrs.update(
            {k: reference.attrs[k] for k in ("tr_s", "time_units") if k in reference.attrs}
        )
    new_attrs.update(attrs or {})
    return xr.DataArray(data, dims=dims, coords=coords, name=name, attrs=new_attrs)


def to_nifti(img, path: str | os.PathLike, *, dtype=None, reference=None) -> Path:
    """Write a 3D/4D result as NIfTI on its source grid, atomically.

    Parameters
    ----------
    img : xarray.DataArray, dask or numpy array, or nibabel image
        The result. Bare arrays need ``reference`` for the grid.
    path : str or path-like
        ``.nii`` or ``.nii.gz`` output file.
    dtype : dtype, optional
        On-disk type (default: the data's; bool is written as uint8).
    reference : roidask image, optional
        Grid (affine, header) for bare arrays.
    """
    from roidask.io.nifti import write_nifti

    if isinstance(img, nib.spatialimages.SpatialImage):
        img = as_image(img)
    if isinstance(img, xr.DataArray):
        grid = img if "affine" in img.attrs else reference
        data = img.data
    else:
        grid, data = reference, img
    if grid is None:
        raise ImageTypeError(
            "to_nifti: a bare array has no voxel grid; pass reference= a roidask image"
        )
    grid = as_image(grid, param="reference")
    if isinstance(img, xr.DataArray) and tuple(img.dims[:3]) != SPATIAL_DIMS:
        raise ImageDimensionError(f"to_nifti: dims {img.dims}; expected x, y, z first")
    header = header_from_b64(grid.attrs["nifti_header"]) if "nifti_header" in grid.attrs else None
    return write_nifti(
        data,
        path,
        affine=affine_of(grid),
        header=header,
        dtype=dtype,
        tr_s=grid.attrs.get("tr_s"),
    )


def select_conditions(img, conditions, *, param: str = "conditions") -> xr.DataArray:
    """The volumes of ``img`` whose condition is one of ``conditions`` (lazy).

    Raises
    ------
    ConditionError
        A condition is not present (the message lists the known ones).
    """
    from roidask.exceptions import ConditionError

    bold = as_image(img, ndim=4, param="img")
    if isinstance(conditions, str):
        conditions = [conditions]
    known = sorted(str(c) for c in set(np.asarray(bold["condition"].values).astype(str)))
    unknown = [c for c in conditions if c not in known]
    if unknown:
        raise ConditionError(f"{param}: unknown condition(s) {unknown}; the data has {known}")
    keep = np.isin(np.asarray(bold["condition"].values).astype(str), list(conditions))
    return bold.isel(time=np.flatnonzero(keep))
