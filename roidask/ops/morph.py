"""Binary morphology of 3D masks across chunks, identical to :mod:`scipy.ndimage`.

Dilation, erosion, opening and closing are local: a voxel of the result depends
only on the voxels within ``iterations x radius`` of it (``radius`` = half the
structuring element's size along each axis). Each chunk is processed with
scipy together with that many voxels of its neighbours
(:func:`dask.array.map_overlap`, chunks smaller than the overlap are merged
first), and the overlap is cut off again. No padding is added at the edges of
the array (``boundary="none"``), so scipy applies its own ``border_value`` at
the true edges in every iteration, and the result is the same as scipy's on the
whole array whatever the chunking.

Hole filling is global (a hole is background that cannot be reached from the
border of the array, however far away) and is done exactly with connected
components of the background across chunks (:mod:`roidask.ops.label`).
"""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from roidask._docs import fill_doc
from roidask._validate import check_int
from roidask.exceptions import InvalidParameterError
from roidask.io.chunks import merge_small_chunks
from roidask.io.conversions import ImageLike
from roidask.ops.label import fill_holes_array, resolve_structure
from roidask.ops.threshold import as_mask

__all__ = [
    "binary_closing",
    "binary_dilation",
    "binary_erosion",
    "binary_fill_holes",
    "binary_opening",
]


def _border_value(value) -> int:
    if isinstance(value, bool | np.bool_) or value in (0, 1):
        return int(value)
    raise InvalidParameterError(
        f"border_value: expected 0 or 1 (value of the voxels outside the image), got {value!r}",
        param="border_value",
    )


def _ops_block(block: np.ndarray, *, steps, structure, iterations, border_value) -> np.ndarray:
    out = block
    for step in steps:
        func = ndimage.binary_dilation if step == "dilate" else ndimage.binary_erosion
        out = func(out, structure=structure, iterations=iterations, border_value=border_value)
    return out


def _morphology(
    mask_img,
    *,
    steps: tuple[str, ...],
    structure,
    connectivity,
    iterations,
    border_value,
) -> xr.DataArray:
    struct = resolve_structure(connectivity, structure)
    iterations = check_int(
        iterations, "iterations", minimum=1, meaning="repetitions of the operation"
    )
    border_value = _border_value(border_value)
    mask = as_mask(mask_img, param="mask_img")
    arr: da.Array = mask.data
    original = arr.chunks
    reach = [len(steps) * iterations * (s // 2) for s in struct.shape]
    chunks = tuple(
        merge_small_chunks(c, d) if d else tuple(c) for c, d in zip(arr.chunks, reach, strict=True)
    )
    if chunks != arr.chunks:
        arr = arr.rechunk(chunks)
    depth = {a: (d if len(chunks[a]) > 1 else 0) for a, d in enumerate(reach)}
    func = partial(
        _ops_block,
        steps=steps,
        structure=struct,
        iterations=iterations,
        border_value=border_value,
    )
    meta = np.empty((0, 0, 0), dtype=bool)
    if any(depth.values()):
        out = da.map_overlap(
            func,
            arr,
            depth=depth,
            boundary="none",
            trim=True,
            allow_rechunk=False,
            dtype=bool,
            meta=meta,
        )
    else:
        out = arr.map_blocks(func, dtype=bool, meta=meta)  # type: ignore[arg-type,call-arg]  # dask's typing of map_blocks
    if out.chunks != original:
        out = out.rechunk(original)
    return mask.copy(data=out)


_PARAMS_DOC = """
    Parameters
    ----------
    %(mask_img)s
    structure : array-like of bool, 3D, optional
        Structuring element. Default: ``generate_binary_structure(3, 1)``
        (6-connectivity), scipy's default.
    connectivity : {6, 18, 26}, optional
        Instead of ``structure``: face (6), face+edge (18) or face+edge+corner
        (26) neighbours.
    iterations : int
        Number of times the operation is repeated (>= 1), each by one radius of
        the structuring element (one voxel for 6/18/26).
    border_value : {0, 1}
        Value assumed outside the image (scipy's default 0).

    Returns
    -------
    xarray.DataArray
        bool, lazy, same grid, chunks and attrs as ``mask_img``; equal to the
        scipy function on the whole array.

    Raises
    ------
    InvalidParameterError
        Bad ``structure``/``connectivity``/``iterations``/``border_value``
        (immediately); non-binary voxels (when computed).
    ImageDimensionError
        ``mask_img`` is not 3D.
"""


def binary_dilation(
    mask_img: ImageLike,
    *,
    structure=None,
    connectivity=None,
    iterations: int = 1,
    border_value: int = 0,
) -> xr.DataArray:
    return _morphology(
        mask_img,
        steps=("dilate",),
        structure=structure,
        connectivity=connectivity,
        iterations=iterations,
        border_value=border_value,
    )


def binary_erosion(
    mask_img: ImageLike,
    *,
    structure=None,
    connectivity=None,
    iterations: int = 1,
    border_value: int = 0,
) -> xr.DataArray:
    return _morphology(
        mask_img,
        steps=("erode",),
        structure=structure,
        connectivity=connectivity,
        iterations=iterations,
        border_value=border_value,
    )


def binary_opening(
    mask_img: ImageLike,
    *,
    structure=None,
    connectivity=None,
    iterations: int = 1,
    border_value: int = 0,
) -> xr.DataArray:
    return _morphology(
        mask_img,
        steps=("erode", "dilate"),
        structure=structure,
        connectivity=connectivity,
        iterations=iterations,
        border_value=border_value,
    )


def binary_closing(
    mask_img: ImageLike,
    *,
    structure=None,
    connectivity=None,
    iterations: int = 1,
    border_value: int = 0,
) -> xr.DataArray:
    return _morphology(
        mask_img,
        steps=("dilate", "erode"),
        structure=structure,
        connectivity=connectivity,
        iterations=iterations,
        border_value=border_value,
    )


binary_dilation.__doc__ = (
    "Binary dilation of a 3D mask, as :func:`scipy.ndimage.binary_dilation` (lazy).\n"
    + _PARAMS_DOC
)
binary_erosion.__doc__ = (
    "Binary erosion of a 3D mask, as :func:`scipy.ndimage.binary_erosion` (lazy).\n" + _PARAMS_DOC
)
binary_opening.__doc__ = (
    "Erosion then dilation, as :func:`scipy.ndimage.binary_opening` (lazy).\n" + _PARAMS_DOC
)
binary_closing.__doc__ = (
    "Dilation then erosion, as :func:`scipy.ndimage.binary_closing` (lazy).\n\n"
    "    Note that, as in scipy, the erosion also uses ``border_value`` (0), so\n"
    "    foreground touching the edge of the image is eroded from there.\n" + _PARAMS_DOC
)
for _func in (binary_dilation, binary_erosion, binary_opening, binary_closing):
    fill_doc(_func)  # the docstrings are assigned above, after any decorator would have run
del _func


@fill_doc
def binary_fill_holes(mask_img: ImageLike, *, structure=None, connectivity=None) -> xr.DataArray:
    """Fill the holes of a 3D mask, as :func:`scipy.ndimage.binary_fill_holes` (lazy).

    A hole is a connected component of the background (in the sense of
    ``structure``) that cannot be reached from outside the array; it is
    filled. This is global, and done exactly across chunks with connected
    components of the background merged over chunk faces.

    Parameters
    ----------
    %(mask_img)s
    structure : array-like, shape (3, 3, 3), optional
        Centrosymmetric structuring element connecting background voxels.
        Default ``generate_binary_structure(3, 1)`` (scipy's).
    connectivity : {6, 18, 26}, optional
        Instead of ``structure``.

    Returns
    -------
    xarray.DataArray
        bool, lazy, same grid, chunks and attrs. With a single slice (one voxel
        along an axis that the structure connects), all background touches the
        border and nothing is filled, exactly as scipy does in 3D.

    Raises
    ------
    InvalidParameterError
        Bad ``structure``/``connectivity`` (immediately); non-binary voxels
        (when computed).
    ImageDimensionError
        ``mask_img`` is not 3D.
    """
    struct = resolve_structure(connectivity, structure, labelling=True)
    mask = as_mask(mask_img, param="mask_img")
    return mask.copy(data=fill_holes_array(mask.data, struct))
