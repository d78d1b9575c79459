"""Connected components of a large chunked mask: roidask vs dask-image vs scipy.

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/bench_label.py [--size 256] [--chunks 64 32] [--repeats 3]

Prints one row per method and chunk size: wall time (s) of building the graph
and of computing it (threaded scheduler; medians of ``--repeats`` runs, each
from a new graph), the number of graph tasks, and
whether the labels equal scipy's on the whole array (roidask: numbering
included; dask-image renumbers, so only the partition is compared).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from roidask.ops.label import label


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two labellings have the same components (up to renumbering)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _timed(build: Callable, run: Callable, repeats: int):
    """Median build and run wall times (s) over ``repeats`` new graphs, and the last ones."""
    builds, runs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        graph = build()
        builds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = run(graph)
        runs.append(time.perf_counter() - t0)
    return statistics.median(builds), statistics.median(runs), graph, result


def _mask(size: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smoothed noise gives blobs of many sizes, like a thresholded statistic map
    noise = ndimage.uniform_filter(rng.random((size,) * 3, dtype=np.float32), size=3)
    return noise > np.quantile(noise[::4, ::4, ::4], 1 - density)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic mask (voxels)")
    parser.add_argument(
        "--chunks", type=int, nargs="+", default=[64, 32], help="chunk edges to try (voxels)"
    )
    parser.add_argument(
        "--density", type=float, default=0.3, help="fraction of voxels in the mask"
    )
    parser.add_argument("--connectivity", type=int, default=6, choices=(6, 18, 26))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument(
        "--dask-image-max-chunks",
        type=int,
        default=64,
        help="skip dask-image above this many chunks (it takes minutes to hours there)",
    )
    args = parser.parse_args(argv)

    from dask_image import ndmeasure

    mask = _mask(args.size, args.density, args.seed)
    rank = {6: 1, 18: 2, 26: 3}[args.connectivity]
    structure = ndimage.generate_binary_structure(3, rank)
    _, t_scipy, _, (expected, n_expected) = _timed(
        lambda: None, lambda _: ndimage.label(mask, structure), args.repeats
    )
    print(
        f"mask {args.size}^3, density {mask.mean():.3f}, connectivity {args.connectivity}, "
        f"{n_expected} components, {dask.system.CPU_COUNT} threads, "
        f"median of {args.repeats} runs"
    )
    header = f"{'method':<12} {'chunks':>7} {'n_chunks':>8} {'tasks':>7} {'build_s':>8} "
    header += f"{'compute_s':>9} {'correct':>8}"
    print(header)
    print("-" * len(header))
    print(f"{'scipy':<12} {'whole':>7} {1:>8} {'-':>7} {'-':>8} {t_scipy:>9.2f} {'ref':>8}")
    affine = np.eye(4).tolist()
    for c in args.chunks:
        arr = da.from_array(mask, chunks=c)
        n_chunks = int(np.prod(arr.numblocks))

        img = xr.DataArray(arr, dims=("x", "y", "z"), attrs={"affine": affine})
        t_build, t_run, labels, got = _timed(
            lambda img=img: label(img, structure=structure),
            lambda labels: labels.compute(),
            args.repeats,
        )
        tasks = len(dict(labels.data.__dask_graph__()))
        ok = np.array_equal(got.values, expected) and int(got.n_labels) == n_expected
        print(
            f"{'roidask':<12} {c:>7} {n_chunks:>8} {tasks:>7} {t_build:>8.2f} {t_run:>9.2f} "
            f"{'yes' if ok else 'NO':>8}"
        )

        if n_chunks > args.dask_image_max_chunks:
            print(
                f"{'dask-image':<12} {c:>7} {n_chunks:>8}   skipped (over --dask-image-max-chunks)"
            )
            continue
        t_build, t_run, (lab_di, _), (got_di, n_got) = _timed(
            lambda arr=arr: ndmeasure.label(arr, structure=structure),
            lambda graph: dask.compute(*graph),
            args.repeats,
        )
        tasks = len(dict(lab_di.__dask_graph__()))
        ok = int(n_got) == n_expected and _same_partition(got_di, expected)
        print(
            f"{'dask-image':<12} {c:>7} {n_chunks:>8} {tasks:>7} {t_build:>8.2f} {t_run:>9.2f} "
            f"{('yes' if ok else 'NO') + '*':>8}"
        )
    print("* dask-image renumbers components: only the partition is compared")


if __name__ == "__main__":
    main()
