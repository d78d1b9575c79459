"""Connected components of a 3D mask across chunks, numbered exactly as scipy does.

:func:`label` gives the same array as :func:`scipy.ndimage.label` on the whole
mask, *including the numbering*, whatever the chunking: scipy numbers the
components in raster-scan order of their first voxel (C order over
``(x, y, z)``), so the component whose first voxel comes first is 1, and so on.
A user porting ``labels == 5`` from scipy gets the same region.

How it works (three graph layers, independent of the number of components):

1. **scan** - one task per chunk labels the chunk with scipy, and returns its
   number of local components, the global flat index (C order) of each local
   component's first voxel, and the label planes on the chunk's internal faces;
2. **faces** - one task per internal chunk boundary plane (all chunks of that
   cross-section at once, so edge and corner neighbours across the boundary are
   seen too) lists the pairs of local components that the structuring element
   connects across it;
3. **merge** - one small task joins the pairs with a union-find
   (:func:`scipy.sparse.csgraph.connected_components`), numbers each global
   component by the rank of its first voxel (the minimum over its pieces), and
   returns one lookup table per chunk.

Each output chunk is then labelled again with scipy and mapped through its
lookup table (:func:`dask.array.map_blocks`), so no label array is held between
the passes: memory stays at one chunk per worker plus the face planes.
"""

from __future__ import annotations

from functools import partial

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from scipy import ndimage
from scipy.sparse import coo_matrix

from roidask._docs import fill_doc
from roidask.exceptions import InvalidParameterError
from roidask.io.chunks import block_offsets
from roidask.io.conversions import ImageLike
from roidask.io.grid import SPATIAL_DIMS, grid_attrs
from roidask.ops.threshold import as_mask

__all__ = ["CONNECTIVITIES", "label", "resolve_structure"]

#: Accepted ``connectivity`` values (neighbours of a voxel) and scipy's rank for each.
CONNECTIVITIES = {6: 1, 18: 2, 26: 3}
_MAX_INT32 = np.iinfo(np.int32).max


# -- structuring elements ----------------------------------------------------------------
def resolve_structure(
    connectivity: int | None = None,
    structure=None,
    *,
    labelling: bool = False,
) -> np.ndarray:
    """The 3D boolean structuring element for ``connectivity`` or ``structure``.

    Parameters
    ----------
    connectivity : {6, 18, 26}, optional
        Face (6), face+edge (18) or face+edge+corner (26) neighbours, i.e.
        ``scipy.ndimage.generate_binary_structure(3, 1 | 2 | 3)``.
    structure : array-like of bool, optional
        An explicit 3D structuring element (0/1 or bool values).
    labelling : bool
        The element is used for connected components: it must then be 3x3x3 and
        centrosymmetric, as :func:`scipy.ndimage.label` requires.

    Returns
    -------
    ndarray of bool, 3D
        Default (neither given): ``generate_binary_structure(3, 1)`` (6-connectivity),
        scipy's default.

    Raises
    ------
    InvalidParameterError
        Both given, an unknown connectivity, or a structure that is not a
        non-empty 3D array of 0/1 values (3x3x3 and centrosymmetric if ``labelling``).
    """
    if connectivity is not None and structure is not None:
        raise InvalidParameterError(
            "connectivity and structure: give one or the other, got both "
            f"(connectivity={connectivity!r} and a structure)",
            param="structure",
        )
    if structure is None:
        if connectivity is None:
            connectivity = 6
        if isinstance(connectivity, bool) or connectivity not in CONNECTIVITIES:
            raise InvalidParameterError(
                "connectivity: expected 6, 18 or 26 (neighbours of a voxel), got "
                f"{connectivity!r}",
                param="connectivity",
            )
        return ndimage.generate_binary_structure(3, CONNECTIVITIES[int(connectivity)])
    try:
        arr = np.asarray(structure)
    except Exception:  # pragma: no cover - exotic objects
        raise InvalidParameterError(
            f"structure: expected a 3D array of 0/1 values, got {type(structure).__name__}",
            param="structure",
        ) from None
    if arr.ndim != 3 or arr.size == 0:
        raise InvalidParameterError(
            f"structure: expected a non-empty 3D array (x, y, z), got shape {arr.shape}",
            param="structure",
        )
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iuf" or not np.all((arr == 0) | (arr == 1)):
            found = np.unique(arr)[:10].tolist() if arr.dtype.kind in "iufb" else arr.dtype
            raise InvalidParameterError(
                f"structure: expected 0/1 or boolean values, found {found}", param="structure"
            )
        arr = arr.astype(bool)
    if not arr.any():
        raise InvalidParameterError(
            "structure: has no True element; expected at least one", param="structure"
        )
    if labelling:
        if arr.shape != (3, 3, 3):
            raise InvalidParameterError(
                f"structure: connected components need a 3x3x3 structure, got shape {arr.shape}",
                param="structure",
            )
        if not np.array_equal(arr, arr[::-1, ::-1, ::-1]):
            raise InvalidParameterError(
                "structure: connected components need a centrosymmetric structure "
                "(structure == structure[::-1, ::-1, ::-1]); the one given is not",
                param="structure",
            )
    return arr


# -- scan ----------------------------------------------------------------------------------
def _first_indices(lab: np.ndarray, n: int) -> np.ndarray:
    """Flat C-order index of the first voxel of each label 1..n of a scipy labelling."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    flat = lab.ravel()
    # scipy numbers components by first appearance, so the running maximum rises by
    # exactly one at each component's first voxel.
    rises = np.flatnonzero(np.diff(np.maximum.accumulate(flat), prepend=0))
    if rises.size == n and flat[rises[-1]] == n:
        return rises.astype(np.int64)
    _, first = np.unique(flat, return_index=True)  # pragma: no cover - defensive
    return first[-n:].astype(np.int64)  # pragma: no cover


def _scan_block(
    block: np.ndarray,
    *,
    structure: np.ndarray,
    shape: tuple[int, int, int],
    numblocks: tuple[int, int, int],
    seeded_axes: tuple[bool, bool, bool] | None,
    background: bool,
    offset,
    block_index,
) -> dict:
    fg = ~block if background else block
    lab, n = ndimage.label(fg, structure)
    local_first = _first_indices(lab, n)
    coords = np.unravel_index(local_first, lab.shape)
    first = np.ravel_multi_index(
        tuple(c + o for c, o in zip(coords, offset, strict=True)), shape
    ).astype(np.int64)
    planes = {}
    for axis in range(3):
        if block_index[axis] > 0:
            planes[axis, 0] = np.take(lab, 0, axis=axis)
        if block_index[axis] < numblocks[axis] - 1:
            planes[axis, 1] = np.take(lab, -1, axis=axis)
    seeded = None
    if seeded_axes is not None:
        seeded = np.zeros(n + 1, dtype=bool)
        for axis in range(3):
            if not seeded_axes[axis]:
                continue
            if block_index[axis] == 0:
                seeded[np.take(lab, 0, axis=axis)] = True
            if block_index[axis] == numblocks[axis] - 1:
                seeded[np.take(lab, -1, axis=axis)] = True
        seeded = seeded[1:]
    return {"n": int(n), "first": first, "planes": planes, "seeded": seeded}


# -- faces ---------------------------------------------------------------------------------
def _encode(plane: np.ndarray, block_lin: int) -> np.ndarray:
    out = plane.astype(np.int64)
    np.bitwise_or(out, np.int64(block_lin) << 32, out=out, where=plane > 0)
    return out


def _shifted(n: int, shift: int) -> tuple[slice, slice]:
    return (
        (slice(0, n - shift), slice(shift, n))
        if shift >= 0
        else (slice(-shift, n), slice(0, n + shift))
    )


def _face_pairs(*metas, axis, grid, lins, offsets_perp) -> np.ndarray:
    """Pairs of encoded (block, local label) ids joined across one boundary plane."""
    half = len(metas) // 2
    low = [
        _encode(m["planes"][axis, 1], lin)
        for m, lin in zip(metas[:half], lins[:half], strict=True)
    ]
    high = [
        _encode(m["planes"][axis, 0], lin)
        for m, lin in zip(metas[half:], lins[half:], strict=True)
    ]
    rows, cols = grid
    p0 = np.block([[low[r * cols + c] for c in range(cols)] for r in range(rows)])
    p1 = np.block([[high[r * cols + c] for c in range(cols)] for r in range(rows)])
    pairs = []
    for du, dv in offsets_perp:
        su0, su1 = _shifted(p0.shape[0], du)
        sv0, sv1 = _shifted(p0.shape[1], dv)
        a, b = p0[su0, sv0], p1[su1, sv1]
        hit = (a > 0) & (b > 0)
        if hit.any():
            pairs.append(np.stack([a[hit], b[hit]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


# -- merge ---------------------------------------------------------------------------------
def _components(metas, pairs) -> tuple[int, np.ndarray, np.ndarray]:
    """(number of global components, component of every local label, block bases)."""
    counts = np.array([m["n"] for m in metas], dtype=np.int64)
    base = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return 0, np.zeros(0, dtype=np.int64), base
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    if pairs.size == 0:
        return total, np.arange(total, dtype=np.int64), base
    # deliberately lazy: scipy.sparse.csgraph costs ~0.1 s, and one block never needs it
    from scipy.sparse.csgraph import connected_components

    mask32 = np.int64(0xFFFFFFFF)
    u = base[pairs[:, 0] >> 32] + (pairs[:, 0] & mask32) - 1
    v = base[pairs[:, 1] >> 32] + (pairs[:, 1] & mask32) - 1
    graph = coo_matrix((np.ones(u.size, dtype=np.int8), (u, v)), shape=(total, total)).tocsr()
    n_comp, comp = connected_components(graph, directed=False)
    return int(n_comp), comp.astype(np.int64), base


def _merge_labels(metas, *pairs) -> dict:
    n_comp, comp, base = _components(metas, list(pairs))
    if n_comp > _MAX_INT32:
        raise InvalidParameterError(  # pragma: no cover - needs > 2**31 components
            f"mask_img: {n_comp} connected components do not fit in int32 labels", param="mask_img"
        )
    luts = []
    if n_comp:
        first = np.concatenate([m["first"] for m in metas])
        comp_first = np.full(n_comp, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(comp_first, comp, first)
        rank = np.empty(n_comp, dtype=np.int32)
        rank[np.argsort(comp_first, kind="stable")] = np.arange(1, n_comp + 1, dtype=np.int32)
        final = rank[comp]
    else:
        final = np.zeros(0, dtype=np.int32)
    for m, b in zip(metas, base, strict=True):
        luts.append(np.concatenate(([0], final[b : b + m["n"]])).astype(np.int32))
    return {"luts": luts, "n": n_comp}


def _merge_holes(metas, *pairs) -> dict:
    n_comp, comp, base = _components(metas, list(pairs))
    reaches_border = np.zeros(n_comp, dtype=bool)
    if n_comp:
        seeded = np.concatenate([m["seeded"] for m in metas])
        reaches_border[comp[seeded]] = True
    hole = ~reaches_border[comp] if n_comp else np.zeros(0, dtype=bool)
    luts = [
        np.concatenate(([False], hole[b : b + m["n"]])) for m, b in zip(metas, base, strict=True)
    ]
    return {"luts": luts, "n": int((~reaches_border).sum())}


def _component_graph(arr: da.Array, structure: np.ndarray, *, mode: str) -> Delayed:
    """The scan + faces + merge graph; ``mode`` is ``"label"`` or ``"holes"``."""
    shape = tuple(int(n) for n in arr.shape)
    numblocks = tuple(int(n) for n in arr.numblocks)
    background = mode == "holes"
    seeded_axes = None
    if background:
        # A background voxel on a face of the array is reached from outside (scipy's
        # border_value=1) when the structure has an offset along that axis.
        seeded_axes = tuple(bool(np.delete(structure, 1, axis=a).any()) for a in range(3))
    token = tokenize(arr.name, structure.tobytes(), structure.shape, mode)
    scan, faces, merged = (
        f"{p}-{token}" for p in (f"{mode}-scan", f"{mode}-faces", f"{mode}-merge")
    )
    scan_func = partial(
        _scan_block,
        structure=structure,
        shape=shape,  # type: ignore[arg-type]
        numblocks=numblocks,  # type: ignore[arg-type]
        seeded_axes=seeded_axes,  # type: ignore[arg-type]
        background=background,
    )
    offsets = block_offsets(arr.chunks)
    scan_layer = {}
    for idx in np.ndindex(*numblocks):
        off = tuple(int(offsets[a][idx[a]]) for a in range(3))
        scan_layer[(scan, *idx)] = (
            partial(scan_func, offset=off, block_index=tuple(int(i) for i in idx)),
            (arr.name, *idx),
        )
    face_layer = {}
    for axis in range(3):
        perp = [a for a in range(3) if a != axis]
        # offsets d with d[axis] = +1, as (d[perp0], d[perp1])
        sub = np.take(structure, 2, axis=axis)
        offsets_perp = [(int(i) - 1, int(j) - 1) for i, j in zip(*np.nonzero(sub), strict=True)]
        if not offsets_perp:
            continue
        grid = (numblocks[perp[0]], numblocks[perp[1]])
        for b in range(numblocks[axis] - 1):
            keys, lins = [], []
            for side in (b, b + 1):
                for p, q in np.ndindex(*grid):
                    pos = [0, 0, 0]
                    pos[axis], pos[perp[0]], pos[perp[1]] = side, p, q
                    keys.append((scan, *pos))
                    lins.append(int(np.ravel_multi_index(pos, numblocks)))
            face_layer[(faces, axis, b)] = (
                partial(_face_pairs, axis=axis, grid=grid, lins=lins, offsets_perp=offsets_perp),
                *keys,
            )
    merge_func = _merge_labels if mode == "label" else _merge_holes
    merge_layer = {merged: (merge_func, list(scan_layer), *face_layer)}
    graph = HighLevelGraph.from_collections(scan, scan_layer, dependencies=[arr])  # type: ignore[arg-type,list-item,dict-item]  # dask's Key typing
    graph = HighLevelGraph(
        {**graph.layers, faces: face_layer, merged: merge_layer},  # type: ignore[arg-type,list-item,dict-item]  # dask's Key typing
        {**graph.dependencies, faces: {scan}, merged: {scan, faces}},
    )
    return Delayed(merged, graph)


def _apply_labels(block, merged, *, structure, numblocks, block_id=None) -> np.ndarray:
    lab, _ = ndimage.label(block, structure)
    lut = merged["luts"][int(np.ravel_multi_index(block_id, numblocks))]
    return lut[lab]


def _apply_holes(block, merged, *, structure, numblocks, block_id=None) -> np.ndarray:
    lab, _ = ndimage.label(~block, structure)
    lut = merged["luts"][int(np.ravel_multi_index(block_id, numblocks))]
    return block | lut[lab]


def _n_labels(merged: dict) -> np.int64:
    return np.int64(merged["n"])


def label_array(arr: da.Array, structure: np.ndarray) -> tuple[da.Array, da.Array]:
    """scipy-numbered labels of a boolean dask array, and their count (0-d, lazy)."""
    merged = _component_graph(arr, structure, mode="label")
    labels = da.map_blocks(
        partial(_apply_labels, structure=structure, numblocks=arr.numblocks),
        arr,
        merged,
        dtype=np.int32,
        meta=np.empty((0, 0, 0), dtype=np.int32),
        name=f"label-apply-{merged.key.split('-')[-1]}",
    )
    n = da.from_delayed(dask.delayed(_n_labels, pure=True)(merged), shape=(), dtype=np.int64)
    return labels, n


def fill_holes_array(arr: da.Array, structure: np.ndarray) -> da.Array:
    """``scipy.ndimage.binary_fill_holes`` of a boolean dask array, chunk by chunk."""
    merged = _component_graph(arr, structure, mode="holes")
    return da.map_blocks(
        partial(_apply_holes, structure=structure, numblocks=arr.numblocks),
        arr,
        merged,
        dtype=bool,
        meta=np.empty((0, 0, 0), dtype=bool),
        name=f"fill-holes-apply-{merged.key.split('-')[-1]}",
    )


def labels_image(data: da.Array, reference: xr.DataArray) -> xr.DataArray:
    """Wrap int32 labels as a roidask image on ``reference``'s grid."""
    return xr.DataArray(data, dims=SPATIAL_DIMS, name="labels", attrs=grid_attrs(reference))


# -- public --------------------------------------------------------------------------------
@fill_doc
def label(
    mask_img: ImageLike, *, connectivity: int | None = None, structure=None
) -> tuple[xr.DataArray, da.Array]:
    """Connected components of a 3D mask, numbered exactly as :func:`scipy.ndimage.label`.

    The result equals ``scipy.ndimage.label(mask, structure)[0]`` on the whole
    array, voxel for voxel and label for label, for any chunking: components are
    numbered 1, 2, ... in raster-scan order of their first voxel (C order over
    ``(x, y, z)``, ``z`` fastest), background is 0.

    Parameters
    ----------
    %(mask_img)s
    %(connectivity)s
    structure : array-like, shape (3, 3, 3), optional
        Explicit centrosymmetric structuring element, instead of ``connectivity``.

    Returns
    -------
    labels : xarray.DataArray
        int32 labels (0 = background), lazy and dask-backed, with the chunks and
        grid attrs of ``mask_img``.
    n_labels : dask.array.Array
        The number of components, a lazy int64 scalar (as ``dask_image.ndmeasure.label``):
        ``dask.compute(labels, n_labels)`` computes both in one pass. An empty mask
        gives all zeros and 0.

    Raises
    ------
    InvalidParameterError
        Bad ``connectivity``/``structure`` (immediately); a mask with values other
        than 0 and 1 (when computed; the message lists the values found).
    ImageDimensionError
        ``mask_img`` is not 3D.
    """
    struct = resolve_structure(connectivity, structure, labelling=True)
    mask = as_mask(mask_img, param="mask_img")
    data, n = label_array(mask.data, struct)
    return labels_image(data, mask), n
