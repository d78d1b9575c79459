"""Per-block reductions as a flat dask graph (shared by labelling and ROI tables)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from roidask.io.chunks import block_offsets

__all__ = ["reduce_blocks"]


def reduce_blocks(
    func: Callable,
    arrays: Sequence[da.Array],
    combine: Callable,
    *,
    name: str,
    token_extra=(),
) -> Delayed:
    """One task per chunk, then one combining task, as a three-layer graph.

    ``func(*blocks, offset=(x0, y0, z0), block_index=(i, j, k))`` is called on the
    aligned blocks of ``arrays`` (same chunks); ``combine(list_of_results)`` gets
    the per-block results in C order of the block grid. Unlike one ``delayed``
    call per block, the graph has a fixed number of layers, so building and
    optimising it stays fast with thousands of chunks.
    """
    first = arrays[0]
    token = tokenize(name, [a.name for a in arrays], token_extra)
    scan, merged = f"{name}-scan-{token}", f"{name}-merge-{token}"
    offsets = block_offsets(first.chunks)
    layer = {}
    for idx in np.ndindex(*first.numblocks):
        off = tuple(int(offsets[a][idx[a]]) for a in range(first.ndim))
        task_func = partial(func, offset=off, block_index=tuple(int(i) for i in idx))
        layer[(scan, *idx)] = (task_func, *[(a.name, *idx) for a in arrays])
    graph = HighLevelGraph.from_collections(scan, layer, dependencies=list(arrays))  # type: ignore[arg-type,list-item,dict-item]  # dask's Key typing
    graph = HighLevelGraph(
        {**graph.layers, merged: {merged: (combine, list(layer))}},
        {**graph.dependencies, merged: {scan}},
    )
    return Delayed(merged, graph)
