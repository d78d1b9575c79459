"""The one entry point for image arguments: :func:`as_image` (nilearn's ``check_niimg``).

Every public function that takes an image calls :func:`as_image`, which accepts
a path (a ``.nii``/``.nii.gz`` file or a roidask zarr store), a nibabel image or
an xarray object (DataArray, Dataset or DataTree in roidask's layout) and always
returns the same kind of object: a lazy, dask-backed :class:`xarray.DataArray`
with the grid in its attrs.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from roidask._validate import check_bool, check_choice
from roidask.exceptions import (
    ImageDimensionError,
    ImageTypeError,
    InvalidParameterError,
    StoreError,
    UnreadableFileError,
)
from roidask.io.chunks import normalize_chunks
from roidask.io.grid import BOLD_DIMS, SPATIAL_DIMS
from roidask.io.image import (
    bold_from_nifti,
    check_header_shape,
    image_from_nibabel,
    image_from_nifti,
    image_on_grid,
    is_image_path,
    open_source,
    scaled_values,
)
from roidask.io.locations import (
    PathOrURL,
    S3Path,
    as_location,
    check_finished,
    location_exists,
    zarr_store,
)
from roidask.io.store_read import (
    STORE_ATTR,
    STUDY_ATTR,
    checked_variables,
    group_records,
    ignore_consolidated_warning,
    list_subjects,
    open_subject,
    root_record,
    subject_dataset,
)

__all__ = ["ImageLike", "as_image", "like_image", "open_map"]

#: What an image argument may be: a path (NIfTI file or roidask store), a nibabel
#: image, or an xarray DataArray / Dataset / DataTree in roidask's layout. Any nibabel
#: image type-checks (``nib.load`` is typed to return a ``FileBasedImage``); one that is
#: not a volume (a ``SpatialImage``: e.g. a GIFTI surface) is refused when given.
ImageLike = (
    PathOrURL | nib.filebasedimages.FileBasedImage | xr.DataArray | xr.Dataset | xr.DataTree
)


def _no_subject(subject: str | None, what: str) -> None:
    """Refuse ``subject`` for an image that is one subject's already (never ignored)."""
    if subject is not None:
        raise InvalidParameterError(
            f"subject: {subject!r} selects a subject of a store or a DataTree; {what} is one "
            "image, so leave subject out",
            param="subject",
        )


def _choose_subject(
    exc: StoreError, where: str, names: list[str], how: str, *, param: str, subject_param
) -> StoreError:
    """The error for a store or DataTree of several subjects and no subject chosen: ``exc``
    (pass ``subject=``) for a function that has a ``subject_param``, otherwise how to
    choose one (``how``, formatted with the first subject)."""
    if subject_param is not None or not names:
        return exc
    return StoreError(
        f"{where}: holds subjects {names}; choose one, e.g. {how.format(names[0])}",
        param=param,
    )


def _from_xarray(
    obj, *, param: str, subject: str | None, subject_param: str | None = None
) -> xr.DataArray:
    if isinstance(obj, xr.DataTree):
        try:
            obj = subject_dataset(obj, subject=subject, param=param)
        except StoreError as exc:
            if subject is not None or exc.param != "subject":
                raise
            raise _choose_subject(
                exc, f"{param} (a DataTree)", sorted(obj.children), "tree[{!r}]",
                param=param, subject_param=subject_param,
            ) from None  # fmt: skip
    if isinstance(obj, xr.Dataset):
        if "bold" in obj.data_vars:
            obj = obj["bold"]
        elif len(obj.data_vars) == 1:
            obj = obj[next(iter(obj.data_vars))]
        else:
            raise ImageTypeError(
                f"{param}: Dataset has variables {list(obj.data_vars)} and no 'bold'; "
                "pass the DataArray to use",
                param=param,
            )
    dims = tuple(obj.dims)
    if dims not in (SPATIAL_DIMS, BOLD_DIMS):
        raise ImageDimensionError(
            f"{param}: DataArray has dims {dims}; expected ('x', 'y', 'z') or "
            "('x', 'y', 'z', 'time')",
            param=param,
        )
    if "affine" not in obj.attrs:
        raise ImageTypeError(
            f"{param}: DataArray {obj.name!r} has no 'affine' attribute, so its grid is "
            "unknown; build it with roidask (as_image, open_subject) or set attrs['affine']",
            param=param,
        )
    check_header_shape(obj, param)
    if not isinstance(obj.data, da.Array):
        obj = obj.copy(data=da.from_array(np.asarray(obj.data), chunks=-1))
    return obj


#: What a path given as an image may be (for messages).
_IMAGE_PATHS = "a .nii/.nii.gz file, a .nii.zarr image or a roidask zarr store"


def as_image(
    img: ImageLike,
    *,
    ndim: int | None = None,
    param: str = "img",
    subject: str | None = None,
    chunks=None,
    stored: bool = False,
    subject_param: str | None = None,
) -> xr.DataArray:
    """Normalise any accepted image argument to a lazy roidask DataArray.

    Parameters
    ----------
    img : path, nibabel image, xarray.DataArray, Dataset or DataTree
        A ``.nii``/``.nii.gz`` file, a ``.nii.zarr`` NIfTI-Zarr image, a roidask zarr
        store (its ``bold``), a nibabel
        image, or an xarray object in roidask layout.
    ndim : {3, 4}, optional
        Required number of dimensions (default: either).
    param : str
        Parameter name used in error messages.
    subject : str, optional
        Subject group, when ``img`` is a store or DataTree with several subjects.
    chunks : dict or str, optional
        Chunks for images read from files (ignored for xarray input).
    stored : bool
        Keep an image of stored integers (``bold_from_nifti(..., scaled=False)``)
        whose volumes share one scaling as it is, with its ``scl_slope``/``scl_inter``
        coordinates, for a function that honours them (the ROI pipeline,
        ``extract_signals``); volumes scaled differently (runs joined with
        ``xr.concat``) are scaled to their values, each with its own scaling. By
        default (False) such an image is scaled to its values (float64,
        :func:`roidask.io.image.scaled_values`), as every other function needs.
    subject_param : str, optional
        The caller's parameter that selects a subject (``"subject"``), for the message
        when ``img`` is a store or DataTree of several subjects and none is chosen;
        None (the default): the message says how to choose one with
        :func:`roidask.io.open_subject`.

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims ``(x, y, z)`` or ``(x, y, z, time)``, grid in attrs.
        No voxel data is read. A scaled NIfTI image is float64 values whatever its
        kind (a path, a nibabel image, a store), as nibabel and nilearn read it.

    Raises
    ------
    ImageTypeError
        ``img`` is of an unsupported type (e.g. a bare numpy array, which has no grid),
        or holds floats but carries the scaling of stored integers (scaled by hand
        with its ``scl_slope``/``scl_inter`` coordinates kept).
    ImageDimensionError
        ``img`` does not have ``ndim`` dimensions.
    InvalidParameterError
        ``ndim`` is not 3, 4 or None.
    UnreadableFileError, CorruptFileError, StoreError
        A path that cannot be read as an image.
    IncompleteOutputError
        An ``s3://`` path in an output whose upload did not finish (marked incomplete:
        :func:`roidask.io.locations.check_finished`).
    """
    check_choice(ndim, "ndim", (None, 3, 4))
    stored = check_bool(stored, "stored")
    if isinstance(img, PathOrURL):
        path = as_location(img, param)
        if not location_exists(path, param):
            check_finished(path, param)  # deleted by an upload that was cut?
            what = "object or prefix" if isinstance(path, S3Path) else "file or folder"
            raise UnreadableFileError(
                f"{param} {path}: no such {what}; expected {_IMAGE_PATHS}", param=param
            )
        if is_image_path(path):
            _no_subject(subject, f"{param} {path}")
            src = open_source(path, param=param)
            out = (
                bold_from_nifti(path, chunks=chunks)
                if src.ndim == 4
                else image_from_nifti(path, chunks=chunks, param=param)
            )
        elif path.is_dir():
            if not any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zarray")):
                raise UnreadableFileError(
                    f"{param} {path}: is a folder, not an image; expected {_IMAGE_PATHS}",
                    param=param,
                )
            try:
                out = open_subject(path, subject=subject, param=param)["bold"]
            except StoreError as exc:
                if subject is not None or exc.param != "subject":
                    raise
                raise _choose_subject(
                    exc, f"{param} {path}", list_subjects(path),
                    f"roidask.open_subject({str(path)!r}, {{!r}})['bold']",
                    param=param, subject_param=subject_param,
                ) from None  # fmt: skip
            if chunks is not None:
                out = out.chunk(normalize_chunks(chunks, out.shape, out.dtype.itemsize))
        else:
            raise ImageTypeError(
                f"{param} {path}: is neither a .nii/.nii.gz file, a .nii.zarr image nor a "
                "roidask zarr store",
                param=param,
            )
    elif isinstance(img, nib.spatialimages.SpatialImage):
        _no_subject(subject, f"{param} (a nibabel image)")
        out = image_from_nibabel(img, chunks=chunks, param=param)
    elif isinstance(img, nib.filebasedimages.FileBasedImage):
        raise ImageTypeError(
            f"{param}: a nibabel {type(img).__name__} is not a volume (no voxel grid); "
            "expected a NIfTI-like image (a nibabel SpatialImage, e.g. Nifti1Image)",
            param=param,
        )
    elif isinstance(img, xr.DataArray | xr.Dataset | xr.DataTree):
        if isinstance(img, xr.DataArray):
            _no_subject(subject, f"{param} (an xarray.DataArray)")
        out = _from_xarray(img, param=param, subject=subject, subject_param=subject_param)
    else:
        raise ImageTypeError(
            f"{param}: expected a path, a nibabel image or an xarray object, got "
            f"{type(img).__name__}"
            + (
                " (a bare array has no voxel grid; wrap it with roidask.io.like_image)"
                if isinstance(img, np.ndarray | da.Array)
                else ""
            ),
            param=param,
        )
    # stored integers: their values, unless kept for a function that scales them per
    # task (stored) and their volumes share one scaling; floats carrying one: refused
    one_volume = ndim == 3 and out.ndim == 4  # taken as a 3D image below: its values
    out = scaled_values(out, param=param, keep_shared=stored and not one_volume)
    if ndim == 3 and out.ndim == 4 and out.shape[-1] == 1:  # one volume: a 3D image (nilearn)
        out = out.isel({out.dims[-1]: 0}, drop=True)
    if ndim is not None and out.ndim != ndim:
        kind = "a 4D BOLD series" if ndim == 4 else "a 3D image"
        where = f"{param} {img}" if isinstance(img, PathOrURL) else param
        raise ImageDimensionError(
            f"{where}: got a {out.ndim}D image with shape {tuple(out.shape)}; expected {kind}",
            param=param,
        )
    return out


def like_image(data, reference: ImageLike, *, name: str | None = None, attrs=None) -> xr.DataArray:
    """Wrap a 3D (or 4D) array as a roidask image on ``reference``'s grid.

    The counterpart of nilearn's ``new_img_like``. 4D data must have as many
    volumes as ``reference`` has (its time coordinates are copied).

    Parameters
    ----------
    data : numpy array, dask array or xarray.DataArray
        3D ``(x, y, z)`` or 4D ``(x, y, z, time)`` voxel values, of ``reference``'s
        spatial shape; kept lazy (a numpy array is wrapped, not copied).
    reference : ImageLike
        The image whose grid ``data`` is on: a ``.nii``/``.nii.gz`` file, a roidask
        zarr store, a nibabel image or an xarray object in roidask's layout, as every
        image parameter (:func:`as_image`; only its header is read).
    name : str, optional
        The new image's name.
    attrs : dict, optional
        Attributes added to the grid's.

    Returns
    -------
    xarray.DataArray
        ``data`` (lazy) with ``reference``'s grid attributes (affine, voxel sizes in
        mm, header) and, for 4D data, its volumes' coordinates and repetition time
        (s).

    Raises
    ------
    ImageTypeError
        ``reference`` is not an image (see :func:`as_image`).
    UnreadableFileError, CorruptFileError, StoreError
        ``reference`` is a path that cannot be read as an image.
    GridMismatchError
        ``data`` is not of ``reference``'s spatial shape, or is a DataArray whose
        voxel-index coordinates are not in order
        (:func:`roidask.io.image.check_voxel_order`).
    """
    grid = as_image(reference, param="reference")
    return image_on_grid(data, grid, name=name, attrs=attrs)


def _check_group(loc, group: str | None) -> None:
    """:func:`open_map`'s checks of the kind of store ``loc`` and of ``group`` in it."""
    record = root_record(loc, param="source") or {}
    attrs = record.get("attributes") or {}
    if STUDY_ATTR in attrs:  # its published nodes: what the root lists
        listed = (record.get("consolidated_metadata") or {}).get("metadata") or {}
        nodes = sorted(k for k in listed if "/" not in k)
        if group is None:
            raise InvalidParameterError(
                f"group: {loc} is a study store, whose maps are in its nodes; pass group= "
                f"one of its nodes {nodes}",
                param="group",
            )
        if group not in nodes:
            raise InvalidParameterError(
                f"group: expected one of the nodes of the study store {loc} {nodes}, "
                f"got {group!r}",
                param="group",
            )
    elif STORE_ATTR in attrs and group is None:
        raise InvalidParameterError(
            f"source {loc}: is a roidask BOLD store (subjects {list_subjects(loc)}), which "
            "holds BOLD series, not maps; export a map of a subject's results.zarr or of a "
            "study store",
            param="source",
        )
    elif group is not None and group not in (groups := sorted(group_records(loc, "source"))):
        raise InvalidParameterError(
            f"group: expected one of the nodes of {loc} {groups}, got {group!r}"
            if groups
            else f"group: {loc} has no nodes to choose from (a study store has), got {group!r}",
            param="group",
        )


def open_map(
    source: PathOrURL, *, variable: str | None = None, group: str | None = None
) -> xr.DataArray:
    """An output map as a roidask image: a NIfTI file, or a variable of a zarr dataset.

    Parameters
    ----------
    source : path or ``s3://`` URL
        A ``.nii``/``.nii.gz``/``.nii.zarr`` image, or a zarr store holding the map: a
        subject's ``results.zarr``, or a study store (``study.zarr``) with ``group``.
    variable : str, optional
        The variable of a zarr dataset (``tstat``, ``logp``, ``atlas``, ...); required
        for a zarr store.
    group : str, optional
        The node of a study store (``sub-01``, ``group``).

    Returns
    -------
    xarray.DataArray
        Lazy, dims ``(x, y, z)`` (or with ``time``), its grid (``affine``) from the
        variable's attributes (roidask writes it on every map).

    Raises
    ------
    InvalidParameterError
        A zarr store without ``variable``, or an unknown variable; a study store without
        ``group``, or a group that is not there (the messages list what there is); a
        BOLD store (``roidask.io.convert``'s), which holds no maps at its root.
    ImageTypeError
        The variable has no ``affine`` attribute (its grid is unknown).
    IncompleteOutputError
        An ``s3://`` source in an output whose upload did not finish.
    """
    loc = as_location(source)
    if is_image_path(loc) or (isinstance(loc, Path) and loc.is_file()):
        if variable is not None or group is not None:
            param = "variable" if variable is not None else "group"
            raise InvalidParameterError(
                f"{param}: {loc} is an image file, one map; a variable or group is chosen only "
                "in a zarr store",
                param=param,
            )
        return as_image(source, param="source")
    check_finished(loc, "source", folder=True)  # before any of it is read
    if not loc.exists():
        raise UnreadableFileError(f"source {loc}: no such file or store", param="source")
    _check_group(loc, group)
    ignore_consolidated_warning()
    try:
        ds = xr.open_zarr(zarr_store(loc), group=group, consolidated=False)
    except Exception as exc:
        where = f"{loc}" + (f" (node {group!r})" if group else "")
        raise InvalidParameterError(
            f"source {where}: not a zarr dataset ({type(exc).__name__}: {exc})", param="source"
        ) from None
    maps = sorted(str(k) for k, v in ds.data_vars.items() if v.dims[:3] == SPATIAL_DIMS)
    if variable not in maps:
        where = f"{loc}" + (f" (node {group!r})" if group else "")
        raise InvalidParameterError(
            f"variable: expected one of the maps of {where} {maps}, got {variable!r}",
            param="variable",
        )
    # read through the checked reader: a damaged or missing chunk is an error, not zeros
    image = checked_variables(loc, [variable], group=group, param="source")[variable]
    image = image.drop_vars([c for c in image.coords if c not in image.dims])
    return _from_xarray(image, param="source", subject=None)
