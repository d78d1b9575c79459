"""The xarray image model: roidask images built from NIfTI files, arrays and references.

A roidask image is an :class:`xarray.DataArray` backed by dask:

* 3D maps have dims ``("x", "y", "z")``;
* BOLD series have dims ``("x", "y", "z", "time")`` with coordinates ``time``
  (seconds from the first volume), ``condition`` (str) and ``run`` (int) along
  ``time``.

The grid travels in ``attrs`` (see :mod:`roidask.io.grid`): ``affine``,
``voxel_size_mm``, ``xyz_units``, ``nifti_header``; BOLD series add ``tr_s``,
``time_units`` and ``source_files``; so any result can be written back as NIfTI
on the source grid (:func:`to_nifti`).

Functions taking "any image" (a path, a nibabel image, an xarray object or a
store) normalise it with :func:`roidask.io.conversions.as_image`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from dask.base import tokenize

from roidask._validate import NO_CONDITION, check_bool, check_name
from roidask.exceptions import (
    GridMismatchError,
    ImageDimensionError,
    ImageTypeError,
    InvalidParameterError,
)
from roidask.io.chunks import normalize_chunks
from roidask.io.grid import (
    BOLD_DIMS,
    SPATIAL_DIMS,
    affine_of,
    grid_attrs,
    same_grid,
    voxel_size_mm,
)
from roidask.io.labels import volume_labels
from roidask.io.locations import (
    PathOrURL,
    as_location,
    as_location_list,
    check_finished,
    version_tag,
)
from roidask.io.nifti import (
    SCALED_DTYPE,
    NiftiSource,
    check_mark,
    header_from_b64,
    header_to_b64,
    header_tr_s,
    is_nifti_path,
    nifti_dtype,
    read_scaling,
    scale_stored,
    write_nifti,
)
from roidask.io.niizarr import NiftiZarrSource, is_nifti_zarr, write_nifti_zarr

__all__ = [
    "IMAGE_SUFFIXES",
    "SCALING_COORDS",
    "VolumeSource",
    "bold_coords",
    "bold_from_nifti",
    "check_header_shape",
    "check_voxel_order",
    "image_from_nibabel",
    "image_from_nifti",
    "image_label",
    "image_on_grid",
    "is_image_name",
    "is_image_path",
    "open_source",
    "scaled_values",
    "shared_scaling",
    "stored_scaling",
    "to_nifti",
    "volume_coords",
    "volume_scaling",
]


#: A file of volumes read block by block: NIfTI (``.nii``/``.nii.gz``) or NIfTI-Zarr.
VolumeSource = NiftiSource | NiftiZarrSource


def is_image_path(path: PathOrURL) -> bool:
    """True for a NIfTI file name or a NIfTI-Zarr folder (``.nii.zarr``)."""
    return is_nifti_path(path) or is_nifti_zarr(path)


#: The names of image files and folders: NIfTI and NIfTI-Zarr.
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nii.zarr")


def is_image_name(path: PathOrURL) -> bool:
    """True if ``path`` is named as an image (:data:`IMAGE_SUFFIXES`), whatever it holds."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def open_source(
    path: PathOrURL, *, ndim: int | tuple[int, ...] | None = None, param: str = "img"
) -> VolumeSource:
    """The validated source of an image file: NIfTI, or NIfTI-Zarr for ``*.nii.zarr``."""
    as_location(path, param)
    if is_nifti_zarr(path):
        check_finished(path, param, folder=True)  # a NIfTI file: check_input_file's
        return NiftiZarrSource.open(path, ndim=ndim)
    return NiftiSource.open(path, ndim=ndim, param=param)


def shared_scaling(sources: Sequence[VolumeSource]) -> bool:
    """True if every run stores one type with one scaling (``scl_slope``,
    ``scl_inter``): their stored values with that scaling are then every run's values.
    Runs scaled otherwise (or some not at all) must be read scaled."""
    first = sources[0]
    key = (first.raw_dtype.newbyteorder("="), first.slope, first.inter)
    return all(
        src.is_scaled and (src.raw_dtype.newbyteorder("="), src.slope, src.inter) == key
        for src in sources
    )


def check_header_shape(img: xr.DataArray, param: str) -> None:
    """Refuse an image whose voxels are not those of the grid its attributes describe.

    An image cropped, flipped or reordered with xarray (``isel``, a slice, ``roll``,
    ``sortby``) keeps its attributes: the affine and NIfTI header of the whole grid in
    its original order, so its voxels would be placed at the wrong positions in mm (ROI
    centres, masks on "the same grid", written files). Two things tell:

    * the header's dimensions: the image's shape must be theirs (a crop);
    * the voxel-index coordinates ``x``, ``y``, ``z`` that results carry
      (``results.zarr``, study nodes, :func:`roidask.io.open_map`): each must be
      ``0, 1, ..., n - 1`` in order (a crop, a flip, a permutation, a
      ``roll(..., roll_coords=True)``).

    An image without these coordinates (a BOLD series from a file or a store, an image
    from nibabel or built with ``like_image``) can only be checked for its shape:
    flipped or reordered along x, y or z, it cannot be told from the original, and is
    placed as its attributes say. Nor can xarray's default ``roll``, which moves the
    values under unchanged coordinates. An image without a header (built from an array, or
    whose attributes were set for the crop) is not checked.

    Raises
    ------
    GridMismatchError
        ``img``'s spatial shape is not its header's, or its voxel-index coordinates
        are not in order from 0.
    """
    header = img.attrs.get("nifti_header")
    if not isinstance(header, str):
        return
    try:
        dims = tuple(int(n) for n in header_from_b64(header)["dim"][1:4])
    except (ValueError, TypeError):
        return
    shape = tuple(int(n) for n in img.shape[:3])
    if shape != dims:
        raise GridMismatchError(
            f"{param}: its voxels {shape} are not those of the grid its attributes describe "
            f"{dims} (attrs['affine'], attrs['nifti_header']): an image cropped or indexed "
            "with xarray keeps the whole grid's affine; crop before roidask reads it (e.g. "
            "nibabel's img.slicer), or set attrs['affine'] to the crop's and drop "
            "attrs['nifti_header']",
            param=param,
        )
    check_voxel_order(img, param)


def check_voxel_order(img: xr.DataArray, param: str) -> None:
    """Refuse an image whose voxel-index coordinates ``x``, ``y``, ``z`` (if it has them)
    are not ``0, 1, ..., n - 1`` in order: flipped, permuted, rolled or cropped with
    xarray (see :func:`check_header_shape`).

    Raises
    ------
    GridMismatchError
        The first such coordinate, named with its first values.
    """
    for dim in SPATIAL_DIMS:
        if dim not in img.coords or img.coords[dim].dtype.kind not in "iu":
            continue  # no voxel indices (or another coordinate, e.g. positions in mm)
        index = np.asarray(img.coords[dim].values)
        if not np.array_equal(index, np.arange(index.size)):
            shown = ", ".join(str(int(i)) for i in index[:5]) + (", ..." if index.size > 5 else "")
            raise GridMismatchError(
                f"{param}: its voxel indices along {dim} are [{shown}], not 0 to "
                f"{index.size - 1} in order: an image flipped, reordered or cropped with "
                "xarray keeps the whole grid's affine, so its voxels would be placed at "
                f"the wrong positions; put them back in order (.sortby({dim!r})) or crop "
                "before roidask reads it (e.g. nibabel's img.slicer)",
                param=param,
            )


def image_label(img: xr.DataArray, param: str) -> str:
    """How a message names an image: its parameter and its files (``mask_img mask.nii.gz``),
    or ``mask_img (an in-memory image)`` (never its name: xarray names an unnamed image
    after its dask array's key)."""
    files = img.attrs.get("source_files") or []
    return f"{param} {', '.join(map(str, files))}" if files else f"{param} (an in-memory image)"


def _read_as(src: VolumeSource) -> str:
    """A run's data type as read, and as stored when its scaling makes it another."""
    if src.dtype == src.raw_dtype.newbyteorder("="):
        return str(src.dtype)
    return f"{src.dtype}: {src.raw_dtype.newbyteorder('=')} scaled by scl_slope/scl_inter"


def _attrs_from_source(src: VolumeSource) -> dict:
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


def bold_coords(
    n_volumes: int,
    *,
    tr_s: float | None,
    condition: Sequence[str] | np.ndarray | None = None,
    run: Sequence[int] | np.ndarray | None = None,
) -> dict:
    """The ``time`` (s, or volumes without a TR), ``condition`` and ``run`` coordinates."""
    step = float(tr_s) if tr_s else 1.0
    condition = np.full(n_volumes, NO_CONDITION) if condition is None else np.asarray(condition)
    run = np.zeros(n_volumes, dtype=np.int64) if run is None else np.asarray(run)
    return {
        "time": ("time", np.arange(n_volumes) * step, {"units": "s" if tr_s else "volumes"}),
        "condition": ("time", condition.astype(str)),
        "run": ("time", run.astype(np.int64)),
    }


# -- construction from NIfTI --------------------------------------------------------------
class _SourceArray:
    """Array-like view of a NiftiSource for :func:`dask.array.from_array`.

    ``scaled=False``: the stored values, without the file's scaling.
    """

    def __init__(self, source: NiftiSource, scaled: bool = True):
        self.source = source
        self.scaled = scaled
        self.shape = source.shape
        self.dtype = source.dtype if scaled else source.raw_dtype.newbyteorder("=")
        self.ndim = source.ndim

    def __getitem__(self, index):
        if self.ndim == 3:
            return self.source.read(scaled=self.scaled)[index]
        t = index[3]
        start, stop, step = t.indices(self.shape[3])
        block = self.source.read(start, stop, scaled=self.scaled)
        return block[(*index[:3], slice(None, None, step))]


def _token(source: NiftiSource, chunks) -> str:
    """Deterministic graph key: same file, same modification time (ETag on S3), same chunks."""
    return tokenize(str(source.path), version_tag(source.path), chunks)


def _source_dask(source: VolumeSource, chunks: dict[str, int], scaled: bool = True) -> da.Array:
    if isinstance(source, NiftiZarrSource):  # chunked already: read its chunks directly
        return source.to_dask(chunks)
    dims = BOLD_DIMS[: source.ndim]
    read_chunks = tuple(source.shape[:3]) + ((chunks["time"],) if source.ndim == 4 else ())
    values = _SourceArray(source, scaled=scaled)
    stored = "" if scaled or not source.is_scaled else "stored-"
    arr = da.from_array(
        values,
        chunks=read_chunks,
        asarray=True,
        lock=False,
        fancy=False,
        meta=np.empty((0,) * source.ndim, dtype=values.dtype),
        name=f"nifti-{stored}{source.path.name}-{_token(source, read_chunks)}",
    )
    target = tuple(chunks[d] for d in dims)
    if target != read_chunks:
        arr = arr.rechunk(target)
    return arr


def image_from_nifti(path: PathOrURL, *, chunks=None, param: str = "img") -> xr.DataArray:
    """A 3D NIfTI file as a lazy roidask image (dims x, y, z).

    Parameters
    ----------
    path : path or ``s3://`` URL
        A 3D ``.nii``/``.nii.gz`` file (or a ``.nii.zarr`` NIfTI-Zarr image).
    chunks : dict or str, optional
        Chunk sizes in voxels (:func:`roidask.io.chunks.normalize_chunks`); default:
        the whole volume.
    param : str
        The caller's name for ``path``, in messages.

    Returns
    -------
    xarray.DataArray
        Lazy (no voxel is read), dims ``(x, y, z)``, the grid (affine, voxel sizes in
        mm, header) in its attrs; a file scaled by ``scl_slope``/``scl_inter`` is
        float64 values.

    Raises
    ------
    UnreadableFileError, CorruptFileError
        ``path`` is missing, unreadable or not a NIfTI image.
    ImageDimensionError
        The image is not 3D.
    InvalidParameterError
        Invalid ``chunks``.
    """
    return _image_from_source(open_source(path, ndim=3, param=param), chunks=chunks)


def _image_from_source(src: VolumeSource, *, chunks) -> xr.DataArray:
    chunks = normalize_chunks(chunks, src.shape, src.dtype.itemsize)
    arr = _source_dask(src, chunks)
    return xr.DataArray(arr, dims=SPATIAL_DIMS, name=src.path.name, attrs=_attrs_from_source(src))


def bold_from_nifti(
    paths: PathOrURL | Sequence[PathOrURL],
    *,
    labels: PathOrURL | Sequence[PathOrURL] | None = None,
    tr_s: float | None = None,
    chunks=None,
    scaled: bool = True,
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
    scaled : bool
        Apply the files' scaling (``scl_slope``, ``scl_inter``), the default: scaled
        values are float64, as nibabel's ``get_fdata`` and nilearn read them (and
        as xarray reads them from a converted store). With ``False``, runs of
        8/16-bit integers that share one scaling are read as their stored integers
        (a quarter of the bytes of the float64 values) and each volume carries its
        run's scaling as the coordinates ``scl_slope``, ``scl_inter`` along
        ``time`` (float64): its values are ``stored * scl_slope + scl_inter`` (see
        :func:`volume_scaling`), and each volume keeps its own through ``isel``,
        ``sel``, ``xr.concat`` along time and rechunking. Every roidask function
        scales such an image (:func:`roidask.io.as_image`), or honours the scaling
        (the ROI pipeline and ``extract_signals``, which read the integers of
        volumes sharing one scaling); plain xarray arithmetic on it sees the
        integers, and an image of floats that still carries the coordinates is
        refused (scaled by hand: drop them). Other runs are scaled as usual.

    Returns
    -------
    xarray.DataArray
        Dims ``(x, y, z, time)``, dask-backed, source dtype (float64 if the files
        are scaled, unless ``scaled=False``; float runs beside scaled runs are
        float64 too), coordinates ``time`` (s), ``condition`` and ``run``. No
        voxel data is read until computed.
    """
    scaled = check_bool(scaled, "scaled")
    paths = as_location_list(paths, "bold")
    if not paths:
        raise InvalidParameterError("bold: at least one 4D NIfTI file is needed", param="bold")
    if tr_s is not None and (
        isinstance(tr_s, bool) or not isinstance(tr_s, int | float) or not tr_s > 0
    ):
        raise InvalidParameterError(
            f"tr_s: expected a positive number of seconds, got {tr_s!r}", param="tr_s"
        )
    sources = [open_source(p, ndim=4, param="bold") for p in paths]
    return _bold_from_sources(sources, labels=labels, tr_s=tr_s, chunks=chunks, scaled=scaled)


def _bold_from_sources(
    sources: Sequence[VolumeSource], *, labels, tr_s: float | None, chunks, scaled: bool
) -> xr.DataArray:
    """:func:`bold_from_nifti` of opened runs (their header and affine as given)."""
    first = sources[0]
    # scaled runs are float64 values, so are float runs beside them (float32 exactly)
    as_floats = any(s.is_scaled for s in sources) and all(
        s.is_scaled or s.dtype.kind == "f" for s in sources
    )
    for src in sources[1:]:
        if not same_grid(src.volume_shape, src.affine, first.volume_shape, first.affine):
            raise GridMismatchError(
                f"bold {src.path}: run is on a different grid from {first.path}: shape "
                f"{src.volume_shape} affine {np.round(src.affine, 4).tolist()} vs shape "
                f"{first.volume_shape} affine {np.round(first.affine, 4).tolist()}; "
                "all runs must share shape and affine",
                param="bold",
            )
        if src.dtype != first.dtype and not as_floats:
            raise GridMismatchError(
                f"bold {src.path}: data type {_read_as(src)} differs from {first.path} "
                f"({_read_as(first)}); all runs must share one data type",
                param="bold",
            )
        this_tr, first_tr = src.tr_s, first.tr_s
        if tr_s is None and this_tr and first_tr and abs(this_tr - first_tr) > 1e-4 * first_tr:
            raise GridMismatchError(
                f"bold {src.path}: its header's TR ({src.tr_s:g} s) differs from {first.path}'s "
                f"({first.tr_s:g} s); the runs of one subject must share one TR (if a header "
                "is wrong, fix its pixdim[4], or give the TR: tr_s=SECONDS, roidask run or "
                "convert --tr SECONDS)",
                param="bold",
            )
    tr_note = None  # a TR read from a header that gives no time unit
    if tr_s is None:
        tr_s = first.tr_s
        header = getattr(first, "header", None)
        if tr_s is not None and header is not None and header.get_xyzt_units()[1] == "unknown":
            tr_note = (
                f"bold {first.path}: its header gives pixdim[4] = {tr_s:g} with no time unit, "
                "read as a TR in seconds"
            )
    n_per_run = [s.n_volumes for s in sources]
    n_total = int(sum(n_per_run))
    if labels is None:
        condition = None
        run = np.repeat(np.arange(len(sources)), n_per_run)
    else:
        table = volume_labels(
            as_location_list(labels, "labels"),
            n_volumes_per_run=n_per_run,
            tr_s=tr_s,
            tr_note=tr_note,
            bold_names=[str(s.path) for s in sources],
        )
        condition = table["condition"].to_numpy().astype(str)
        run = table["run"].to_numpy().astype(np.int64)
    full_shape = (*first.volume_shape, n_total)
    itemsize = np.result_type(*(s.dtype for s in sources)).itemsize
    chunks = normalize_chunks(chunks, full_shape, itemsize)
    stored = (
        not scaled
        and shared_scaling(sources)
        and all(
            isinstance(src, NiftiSource)
            and src.raw_dtype.kind in "iu"
            and src.raw_dtype.itemsize <= 2
            for src in sources
        )
    )
    parts = [_source_dask(src, chunks, scaled=not stored) for src in sources]
    arr = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=3)
    target = tuple(chunks[d] for d in BOLD_DIMS)
    if arr.chunks != da.core.normalize_chunks(target, full_shape):
        arr = arr.rechunk(target)
    attrs = _attrs_from_source(first)
    attrs["source_files"] = [str(s.path) for s in sources]
    attrs["tr_s"] = float(tr_s) if tr_s else None
    if not tr_s:
        attrs["time_units"] = "volumes"
    coords = bold_coords(n_total, tr_s=tr_s, condition=condition, run=run)
    if stored:  # each volume with its run's scaling (:func:`volume_scaling`)
        for name, per_run in zip(
            SCALING_COORDS, ([s.slope for s in sources], [s.inter for s in sources]), strict=True
        ):
            coords[name] = ("time", np.repeat(np.asarray(per_run, np.float64), n_per_run))
    return xr.DataArray(arr, dims=BOLD_DIMS, name="bold", coords=coords, attrs=attrs)


#: The per-volume coordinates of an image of stored integers (:func:`volume_scaling`):
#: float64 along ``time``, so that xarray keeps each volume's own with its volume
#: (``isel``/``sel``, ``xr.concat`` along time, rechunking).
SCALING_COORDS = ("scl_slope", "scl_inter")

#: The attrs by which earlier roidask versions carried one scaling for a whole image (an
#: image saved with xarray then): still read, as every volume's scaling.
_LEGACY_SCALING_ATTRS = ("scl_slope", "scl_inter", "scaled_dtype")


def volume_scaling(
    img: xr.DataArray, *, param: str = "img"
) -> tuple[np.ndarray, np.ndarray] | None:
    """Each volume's ``(scl_slope, scl_inter)`` of an image of stored integers, else None.

    Such an image (``bold_from_nifti(..., scaled=False)``) carries them as the
    coordinates :data:`SCALING_COORDS` along ``time`` (or scalar ones, after
    ``isel(time=k)``); its values are ``stored * scl_slope + scl_inter``
    (:func:`roidask.io.nifti.scale_stored`), volume by volume. An image written by
    an earlier roidask version carries one scaling in ``attrs`` instead: read as every
    volume's.
    The arrays (float64) have the coordinates' shape, ``(time,)`` or ``()``. Reads
    the coordinates only, never a voxel.

    Raises
    ------
    ImageTypeError
        The image does not hold integers (its values were scaled already, with the
        coordinates kept), carries only one of the two, carries them along another
        dimension than ``time``, or carries both forms.
    """
    present = [name for name in SCALING_COORDS if name in img.coords]
    legacy = "scl_slope" in img.attrs
    if not present and not legacy:
        return None
    if present and legacy:
        raise ImageTypeError(
            f"{param}: carries scl_slope/scl_inter both as coordinates and in attrs; expected "
            "the coordinates only: remove scl_slope, scl_inter and scaled_dtype from its attrs",
            param=param,
        )
    if img.dtype.kind not in "iu":
        remedy = (
            "remove scl_slope, scl_inter and scaled_dtype from its attrs"
            if legacy
            else f"drop the coordinates: .drop_vars({list(SCALING_COORDS)})"
        )
        raise ImageTypeError(
            f"{param}: holds {img.dtype} values but carries scl_slope/scl_inter of stored "
            f"integers{' in attrs' if legacy else ''} (already scaled?); if its values are "
            f"scaled, {remedy}",
            param=param,
        )
    if legacy:
        attrs = img.attrs
        return (
            np.asarray(float(attrs["scl_slope"])),
            np.asarray(float(attrs.get("scl_inter", 0.0))),
        )
    if len(present) != len(SCALING_COORDS):
        missing = next(n for n in SCALING_COORDS if n not in present)
        raise ImageTypeError(
            f"{param}: carries the coordinate {present[0]} of stored integers without "
            f"{missing}; expected both, one of each per volume",
            param=param,
        )
    slopes, inters = (img.coords[name] for name in SCALING_COORDS)
    for coord in (slopes, inters):
        if coord.dims not in ((), ("time",)):
            raise ImageTypeError(
                f"{param}: its coordinate {coord.name} has dims {coord.dims}; expected one "
                "value per volume, along time",
                param=param,
            )
    return _coord_values(slopes), _coord_values(inters)


def _coord_values(coord: xr.DataArray) -> np.ndarray:
    """A coordinate's values as float64 numpy; one chunked by xarray's ``.chunk()`` (which
    chunks coordinates too) is computed in this thread (its few numbers, no voxel)."""
    data = coord.data
    if isinstance(data, da.Array):
        data = data.compute(scheduler="synchronous")
    return np.asarray(data, np.float64)


def stored_scaling(
    img: xr.DataArray, *, param: str = "img"
) -> tuple[float, float, np.dtype] | None:
    """``(scl_slope, scl_inter, dtype)`` of an image of stored integers whose volumes
    share one scaling, else None (an image of values).

    Its values are those :func:`roidask.io.nifti.scale_stored` gives with them, of
    type ``dtype`` (:data:`roidask.io.nifti.SCALED_DTYPE`): the pass and
    ``extract_signals`` scale each task's block with these scalars.

    Raises
    ------
    ImageTypeError
        As :func:`volume_scaling`; or its volumes carry different scalings (runs
        joined with ``xr.concat``): those are scaled to their values first
        (:func:`scaled_values`, as :func:`roidask.io.as_image` does).
    """
    scaling = volume_scaling(img, param=param)
    if scaling is None:
        return None
    slopes, inters = scaling
    if not _one_scaling(slopes, inters):
        raise ImageTypeError(
            f"{param}: its volumes carry different scl_slope/scl_inter; scale it to its "
            "values first (roidask.io.image.scaled_values)",
            param=param,
        )
    return (*_first_scaling(slopes, inters), SCALED_DTYPE)


def _one_scaling(slopes: np.ndarray, inters: np.ndarray) -> bool:
    """True if every volume has the first's slope and intercept (or there is none)."""
    slope, inter = _first_scaling(slopes, inters)
    return bool(np.all(slopes == slope) and np.all(inters == inter))


def _first_scaling(slopes: np.ndarray, inters: np.ndarray) -> tuple[float, float]:
    """The first volume's slope and intercept; ``1, 0`` without volumes."""
    if not slopes.size:
        return 1.0, 0.0
    return float(slopes.flat[0]), float(inters.flat[0])


def volume_coords(img: xr.DataArray) -> dict:
    """The coordinates along ``time`` that name the volumes (``time``, ``condition``,
    ``run``, ...), for what is built from them and holds other values (signals, an
    image of the same volumes): without the scaling of stored integers."""
    return {k: v for k, v in img.coords.items() if v.dims == ("time",) and k not in SCALING_COORDS}


def scaled_values(
    img: xr.DataArray, *, param: str = "img", keep_shared: bool = False
) -> xr.DataArray:
    """An image of stored integers (:func:`volume_scaling`) as its values, lazily; any
    other image as it is.

    Each chunk is scaled as read, each volume with its own slope and intercept: the
    values :func:`roidask.io.nifti.scale_stored` gives for its run, bit for bit
    (float64, as nibabel). ``keep_shared``: an image whose volumes share one scaling
    is kept as it is (its scaling as coordinates, :func:`stored_scaling`) for a
    function that scales each task's block; only volumes scaled differently are
    scaled here.

    The one place where such an image becomes its values: :func:`roidask.io.as_image`
    calls it for every function.
    """
    scaling = volume_scaling(img, param=param)
    if scaling is None:
        return img
    slopes, inters = scaling
    shared = _one_scaling(slopes, inters)
    if keep_shared and shared:
        if not any(name in img.attrs for name in _LEGACY_SCALING_ATTRS):
            return img
        n = img.sizes.get("time")  # the attrs of earlier versions: as coordinates
        return _without_legacy(img).assign_coords(
            {
                name: value if n is None else ("time", np.full(n, value))
                for name, value in zip(SCALING_COORDS, scaling, strict=True)
            }
        )
    data = da.asarray(img.data)  # a loaded image too (to_nifti of .compute()'s result)
    if shared:  # as the pass scales each block
        slope, inter = _first_scaling(slopes, inters)
        scaled = da.map_blocks(scale_stored, data, slope, inter, SCALED_DTYPE, dtype=SCALED_DTYPE)
    else:
        axis = img.get_axis_num("time")
        index = "".join(chr(ord("a") + i) for i in range(data.ndim))
        per_volume = [
            da.from_array(np.broadcast_to(v, (img.sizes["time"],)), chunks=(data.chunks[axis],))
            for v in scaling
        ]
        scaled = da.blockwise(
            _scale_volumes,
            index,
            data,
            index,
            per_volume[0],
            index[axis],
            per_volume[1],
            index[axis],
            axis=axis,
            dtype=SCALED_DTYPE,
        )
    out = _without_legacy(img).drop_vars(SCALING_COORDS, errors="ignore")
    return out.copy(data=scaled)


def _scale_volumes(
    stored: np.ndarray, slopes: np.ndarray, inters: np.ndarray, *, axis: int
) -> np.ndarray:
    """A block of stored integers scaled volume by volume along ``axis``: the same
    operations as :func:`roidask.io.nifti.scale_stored` (cast, multiply, add)."""
    shape = [1] * stored.ndim
    shape[axis] = -1
    out = stored.astype(SCALED_DTYPE)
    out *= slopes.reshape(shape)
    out += inters.reshape(shape)
    return out


def _without_legacy(img: xr.DataArray) -> xr.DataArray:
    """``img`` without the scaling attrs of earlier versions (a copy; the data shared)."""
    if not any(name in img.attrs for name in _LEGACY_SCALING_ATTRS):
        return img
    out = img.copy(deep=False)
    out.attrs = {k: v for k, v in img.attrs.items() if k not in _LEGACY_SCALING_ATTRS}
    return out


def image_on_grid(
    data, reference: xr.DataArray, *, name: str | None = None, attrs=None
) -> xr.DataArray:
    """:func:`roidask.io.like_image` for code that holds a roidask image: ``data`` on
    ``reference``'s grid, ``reference`` taken as it is (not converted).

    Parameters
    ----------
    data : numpy array, dask array or xarray.DataArray
        3D ``(x, y, z)`` or 4D ``(x, y, z, time)`` voxel values.
    reference : xarray.DataArray
        A roidask image (with its ``affine``), as :func:`roidask.io.as_image` returns.
    name : str, optional
        The new image's name.
    attrs : dict, optional
        Attributes added to the grid's.

    Returns
    -------
    xarray.DataArray
        ``data`` (lazy) with ``reference``'s grid attributes (affine, voxel sizes in
        mm, header) and, for 4D data, its volumes' coordinates and repetition time.

    Raises
    ------
    ImageTypeError
        ``reference`` is not a roidask image (an xarray.DataArray with an affine).
    GridMismatchError
        ``data`` is not of ``reference``'s spatial shape, or is a DataArray whose
        voxel-index coordinates are not in order (:func:`check_voxel_order`).
    """
    if not isinstance(reference, xr.DataArray) or "affine" not in reference.attrs:
        what = type(reference).__name__
        if isinstance(reference, xr.DataArray):
            what += " without an affine"
        raise ImageTypeError(
            f"reference: expected a roidask image (an xarray.DataArray with an affine), "
            f"got {what}",
            param="reference",
        )
    if name is not None:
        name = check_name(name, "name", what="a name (str) or None")
    if attrs is not None and not isinstance(attrs, Mapping):
        raise InvalidParameterError(
            f"attrs: expected a dict of attributes or None, got {type(attrs).__name__}",
            param="attrs",
        )
    if isinstance(data, xr.DataArray):
        check_voxel_order(data, "data")
        data = data.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=-1, name=False)  # no hashing of data
    if tuple(data.shape[:3]) != tuple(reference.shape[:3]):
        raise GridMismatchError(
            f"data: has spatial shape {tuple(data.shape[:3])}, reference "
            f"{reference.name!r} has {tuple(reference.shape[:3])}; expected the same",
            param="data",
        )
    dims = BOLD_DIMS[: data.ndim]
    coords = {}
    if data.ndim == 4:
        coords = volume_coords(reference)  # new values: not the scaling of its integers
    new_attrs = grid_attrs(reference)
    if data.ndim == 4:
        new_attrs.update(
            {k: reference.attrs[k] for k in ("tr_s", "time_units") if k in reference.attrs}
        )
    new_attrs.update(attrs or {})
    out = xr.DataArray(data, dims=dims, coords=coords, attrs=new_attrs)
    out.name = name  # None stays None (xarray would take the dask array's key)
    return out


def _trim_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """An image shape without trailing singleton dims past the fourth (NIfTI allows them)."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _file_source(img: nib.spatialimages.SpatialImage, param: str) -> NiftiSource | None:
    """The NIfTI file a nibabel image reads its voxels from, with the image's own header
    and affine (edited in memory or not); None if its voxels are not the file's.

    Its voxels are the file's when its data object is still the file's array proxy (the
    file unchanged since it was loaded: same layout and scaling), loaded or not
    (``get_fdata`` caches a copy, which nilearn does not use either).
    """
    fname = img.get_filename()
    proxy = img.dataobj
    if not (
        fname
        and is_nifti_path(fname)
        and isinstance(img, nib.Nifti1Image)
        and isinstance(proxy, nib.arrayproxy.ArrayProxy)
        and isinstance(proxy.file_like, str | os.PathLike)
        and os.fspath(proxy.file_like) == os.fspath(fname)
    ):
        return None
    src = NiftiSource.open(fname, param=param)
    same_file = (
        _trim_shape(proxy.shape) == _trim_shape(src.shape)
        and int(proxy.offset) == src.offset
        and np.dtype(proxy.dtype) == src.raw_dtype
        and read_scaling(proxy.slope, proxy.inter) == (src.slope, src.inter)
    )
    if not same_file:
        return None
    return dataclasses.replace(
        src, affine=np.asarray(img.affine, dtype=np.float64), header=img.header.copy()
    )


def image_from_nibabel(
    img: nib.spatialimages.SpatialImage, *, chunks=None, param: str = "img"
) -> xr.DataArray:
    """A nibabel image as a roidask image, with its affine and header as they are in memory.

    As nilearn uses a nibabel image: ``img.affine`` places the voxels, ``img.header``
    gives the voxel sizes' units and the TR (``set_sform``, ``set_qform`` or
    ``header.set_zooms`` after loading count), and the voxels are ``img.dataobj``'s. An
    image loaded from a NIfTI file reads its voxels from the file lazily, block by block
    (loaded into memory with ``get_fdata`` or not: the same values); another image's
    voxels are taken as they are (``np.asanyarray(img.dataobj)``).
    """
    src = _file_source(img, param)
    if src is not None:
        if src.ndim == 4:
            return _bold_from_sources([src], labels=None, tr_s=None, chunks=chunks, scaled=True)
        return _image_from_source(src, chunks=chunks)
    if not isinstance(img, nib.Nifti1Image):
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    data = np.asanyarray(img.dataobj)
    shape = _trim_shape(data.shape)
    data = data.reshape(shape)
    if data.ndim not in (3, 4):
        raise ImageDimensionError(
            f"{param}: a nibabel image of shape {shape}; expected a 3D or 4D image",
            param=param,
        )
    chunks = normalize_chunks(chunks, data.shape, data.dtype.itemsize)
    dims = BOLD_DIMS[: data.ndim]
    arr = da.from_array(data, chunks=tuple(chunks[d] for d in dims))
    header = img.header
    xyz_units, _ = header.get_xyzt_units()
    affine = np.asarray(img.affine, dtype=np.float64)
    attrs = {
        "affine": affine.tolist(),
        "voxel_size_mm": voxel_size_mm(affine).tolist(),
        "xyz_units": xyz_units,
        "nifti_header": header_to_b64(header),
        "source_files": [],
    }
    coords = {}
    if data.ndim == 4:
        tr = header_tr_s(header)
        attrs.update(tr_s=tr, time_units="s" if tr else "volumes")
        coords = bold_coords(int(np.shape(data)[-1]), tr_s=tr)
    out = xr.DataArray(arr, dims=dims, coords=coords, attrs=attrs)
    out.name = "bold" if data.ndim == 4 else None  # not the dask array's key
    return out


def to_nifti(
    img,
    path: str | os.PathLike,
    *,
    dtype=None,
    reference=None,
    overwrite: bool = False,
    mark: str | None = None,
) -> Path:
    """Write a 3D/4D result as NIfTI on its source grid, atomically.

    Parameters
    ----------
    img : xarray.DataArray, dask or numpy array, or nibabel image
        The result. Bare arrays need ``reference`` for the grid.
    path : str or path-like
        ``.nii`` or ``.nii.gz`` output file, or a ``.nii.zarr`` NIfTI-Zarr folder
        (:func:`roidask.io.niizarr.write_nifti_zarr`).
    dtype : dtype, optional
        On-disk type, one of :data:`roidask.io.nifti.NIFTI_DTYPES` (default: the
        data's). ``bool`` is written as uint8 and holds 0 and 1 (binarize other
        values first); floats written as integers are rounded. Values the type cannot
        hold (1760 as int8, NaN as an integer) are refused when computed, before the
        file is committed: nothing is written. An image of
        stored integers (``bold_from_nifti(..., scaled=False)``) is written, without
        ``dtype``, as its integers with their ``scl_slope``/``scl_inter`` (as its
        source file) when its volumes share one scaling, otherwise as its values.
    reference : roidask image or nibabel image, optional
        Grid (affine, header) for bare arrays.
    overwrite : bool
        Replace an existing ``path`` (default: refuse).
    mark : str, optional
        For a ``.nii``/``.nii.gz`` file: its header's ``descrip`` (at most 32 latin-1
        characters), and an existing file is replaced only if it carries the same
        (:func:`roidask.io.nifti.write_nifti`).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ImageDimensionError
        ``img`` is a DataArray that is not a spatial image (its first dims are not
        x, y, z: e.g. a result's ``signals``).
    ImageTypeError
        No voxel grid: a bare array, or a DataArray without an ``affine``, and no
        ``reference``; or an image of floats carrying the scaling of stored integers
        (:func:`volume_scaling`); or values that are not numbers.
    InvalidParameterError
        A ``dtype`` NIfTI does not store, a bad ``mark`` or ``overwrite`` (before
        anything is computed); values ``dtype`` cannot hold (when computed).
    """
    if isinstance(img, nib.spatialimages.SpatialImage):
        img = image_from_nibabel(img, param="img")
    if isinstance(img, xr.DataArray) and tuple(img.dims[:3]) != SPATIAL_DIMS:
        raise ImageDimensionError(
            f"img: DataArray {img.name!r} has dims {img.dims}, so it is not a spatial image; "
            "expected dims x, y, z (then time) first",
            param="img",
        )
    if isinstance(img, xr.DataArray):
        grid = img if "affine" in img.attrs else reference
        data = img.data
    else:
        grid, data = reference, img
    if grid is None:
        what = (
            f"img (DataArray {img.name!r}) has no 'affine' attribute, so"
            if isinstance(img, xr.DataArray)
            else "a bare array has"
        )
        raise ImageTypeError(
            f"reference: {what} no voxel grid; pass reference= a roidask image",
            param="reference",
        )
    if isinstance(grid, nib.spatialimages.SpatialImage):
        grid = image_from_nibabel(grid, param="reference")
    if not isinstance(grid, xr.DataArray) or "affine" not in grid.attrs:
        raise ImageTypeError(
            f"reference: expected a roidask image (with an affine), got {type(grid).__name__}",
            param="reference",
        )
    if isinstance(img, xr.DataArray) and "affine" in img.attrs:
        check_header_shape(img, "img")
    as_location(path, "path")
    if not is_image_name(path):
        raise InvalidParameterError(
            f"path {path}: output name must end in .nii, .nii.gz or .nii.zarr", param="path"
        )
    data_dtype = data.dtype if hasattr(data, "dtype") else np.asarray(data).dtype
    nifti_dtype(dtype, data_dtype, data_param="img")  # before anything is computed
    overwrite = check_bool(overwrite, "overwrite")
    mark = check_mark(mark)
    if isinstance(img, xr.DataArray):
        # stored integers: as the source file if they share one scaling, else their values
        img = scaled_values(img, keep_shared=dtype is None and is_nifti_path(path))
        data = img.data
    if is_nifti_zarr(path) or str(path).lower().endswith(".nii.zarr"):
        image = img if isinstance(img, xr.DataArray) else image_on_grid(data, grid)
        if "affine" not in image.attrs:
            image = image_on_grid(data, grid, name=str(image.name) if image.name else None)
        return write_nifti_zarr(image, path, dtype=dtype, overwrite=overwrite)
    header = header_from_b64(grid.attrs["nifti_header"]) if "nifti_header" in grid.attrs else None
    scaling = stored_scaling(img) if isinstance(img, xr.DataArray) and dtype is None else None
    slope, inter = (1.0, 0.0) if scaling is None else scaling[:2]  # stored integers: theirs
    return write_nifti(
        data,
        path,
        affine=affine_of(grid),
        header=header,
        dtype=dtype,
        tr_s=grid.attrs.get("tr_s") if np.ndim(data) == 4 else None,  # a 3D map has no TR
        overwrite=overwrite,
        mark=mark,
        scl_slope=slope,
        scl_inter=inter,
    )
