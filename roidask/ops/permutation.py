"""Group inference by sign-flipping permutations on dask: max-t, cluster size and mass FWE.

:func:`permuted_ttest_1samp` is the one-sample test of nilearn's
:func:`nilearn.mass_univariate.permuted_ols` with ``tested_vars`` a column of
ones (what :func:`nilearn.glm.second_level.non_parametric_inference` runs for
an intercept-only design): under the null hypothesis each subject's map is
symmetric around 0, so multiplying it by -1 ("sign flip") leaves the
distribution unchanged. For each set of flips the voxelwise one-sample t map
is computed; the maximum statistic over the brain (``max |t|`` two-sided, ``max
t`` one-sided), and with a cluster-forming threshold the largest cluster size
and mass, form the null distributions that control the family-wise error.

Definitions (nilearn's, checked against it in ``tests/ops/test_permutation.py``):

* ``t`` is Student's one-sample t with ``n - 1`` degrees of freedom, mean over
  ``std(ddof=1) / sqrt(n)`` (nilearn's normalised-regression formula is the
  same number);
* p-values count the unpermuted statistic once, on top of the ``n_perm``
  permutations: ``p = (1 + #{h0 >= observed}) / (n_perm + 1)``, the formula of
  nilearn's voxel-level ``logp_max_t`` (``h0`` is the null distribution of the
  maximum; a draw that equals the identity counts like any other);
* exhaustive flips enumerate the ``2**n - 1`` sign vectors other than the
  identity, so the same formula gives the exact permutation p-value
  ``#{all 2**n flips: max >= observed} / 2**n``; random flips draw ``n_perm``
  sign vectors uniformly, with replacement (identity included), as nilearn;
* clusters are the face-connected (by default) sets of voxels with
  ``t > thr`` (and, two-sided, separately ``t < -thr``), where ``thr`` is the
  t value of the cluster-forming p (``scipy.stats.t.isf(p / 2, n - 1)``
  two-sided, ``isf(p, n - 1)`` one-sided, as nilearn's ``threshold``); the size
  is the number of voxels, the mass the sum of ``|t| - thr`` over them.
  Cluster p-values use the same ``(1 + count) / (n_perm + 1)`` (nilearn uses
  ``count / n_perm`` clipped to ``[1/n_perm, 1 - 1/n_perm]`` there).

How it runs: one task per subject block extracts the masked voxels into an
``(n_subjects, n_voxels)`` float64 matrix; one task per chunk of
``chunk_perm`` permutations computes the sums of all its flipped maps as
matrix products ``flips @ data`` (batches of 128 permutations aligned on the
permutation index, blocks of 2048 voxels), turns them into t with the
per-voxel sum of squares (invariant under sign flips), and returns only the
maximum statistic (and largest cluster size and mass) of each permutation;
one last task turns the null distributions into p-value maps. Memory is the
data matrix plus one batch per running task (a few MB; with clusters, the
batch's t maps, ~16 MB at most), whatever ``n_perm``. The flips of
permutation ``i`` are a function of ``(seed, i)`` only (a
:class:`numpy.random.SeedSequence` per block of 1024 permutations), so results
do not depend on the scheduler, the number of workers or ``chunk_perm``.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from scipy import ndimage, special

from roidask._validate import check_bool, check_int
from roidask.exceptions import ImageDimensionError, ImageTypeError, InvalidParameterError
from roidask.io.conversions import ImageLike, as_image
from roidask.io.grid import SPATIAL_DIMS, check_same_grid, grid_attrs
from roidask.ops import moments as mom_ops
from roidask.ops.label import resolve_structure
from roidask.ops.threshold import as_mask

__all__ = [
    "DEFAULT_CHUNK_PERM",
    "MAX_EXHAUSTIVE_SUBJECTS",
    "check_cluster_threshold",
    "permuted_ttest_1samp",
]

#: Permutations per dask task unless ``chunk_perm`` says otherwise.
DEFAULT_CHUNK_PERM = 512
#: ``exhaustive=True`` enumerates ``2**n - 1`` flips; refused above this many subjects.
MAX_EXHAUSTIVE_SUBJECTS = 24
#: Permutations per random stream: block ``b`` is drawn from ``SeedSequence(seed, (b,))``.
_FLIP_BLOCK = 1024
#: Permutations per batch of matrix products (a power of two).
_MAX_BATCH_ROWS = 128
#: Voxels per matrix product: a batch's sums and t stay in the CPU caches.
_VOXEL_BLOCK = 2048
#: With clusters, at most this many bytes of float64 t maps per batch.
_BATCH_BYTES = 16 * 2**20
_LOG10_2 = float(np.log10(2.0))
_LN10 = float(np.log(10.0))


# -- arguments -----------------------------------------------------------------------------
def check_cluster_threshold(value, *, two_sided: bool) -> float | None:
    """A cluster-forming threshold (uncorrected p) for :func:`permuted_ttest_1samp`, or None."""
    if value is None:
        return None
    upper = 1.0 if two_sided else 0.5
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and np.isfinite(float(value))
        and 0.0 < float(value) < upper
    )
    if not ok:
        side = "two-sided" if two_sided else "one-sided"
        extra = "" if two_sided else "; the t threshold must be > 0"
        raise InvalidParameterError(
            f"cluster_threshold: expected an uncorrected cluster-forming p-value in "
            f"(0, {upper:g}) for a {side} test (nilearn's threshold{extra}), got {value!r}",
            param="cluster_threshold",
        )
    return float(value)


def _check_sign_flips(sign_flips, n_subjects: int) -> np.ndarray:
    try:
        arr = np.asarray(sign_flips)
    except Exception:  # pragma: no cover - exotic objects
        raise InvalidParameterError(
            f"sign_flips: expected an array of +1/-1, got {type(sign_flips).__name__}",
            param="sign_flips",
        ) from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != n_subjects:
        raise InvalidParameterError(
            f"sign_flips: expected shape (n_perm >= 1, {n_subjects}) (one row of +1/-1 per "
            f"permutation, one column per subject), got shape {arr.shape}",
            param="sign_flips",
        )
    if arr.dtype.kind not in "iuf" or not np.all((arr == 1) | (arr == -1)):
        found = np.unique(arr)[:8].tolist() if arr.dtype.kind in "iufb" else arr.dtype
        raise InvalidParameterError(
            f"sign_flips: expected only +1 and -1, found {found}", param="sign_flips"
        )
    return arr.astype(np.int8)


def _subject_stack(imgs) -> tuple[xr.DataArray, da.Array]:
    """(grid reference, lazy ``(x, y, z, subject)`` array) of the subjects' 3D maps."""
    if isinstance(imgs, xr.DataArray) and "subject" in imgs.dims:
        if tuple(imgs.dims) != (*SPATIAL_DIMS, "subject"):
            raise ImageDimensionError(
                f"imgs: DataArray has dims {tuple(imgs.dims)}; expected "
                "('x', 'y', 'z', 'subject')",
                param="imgs",
            )
        if "affine" not in imgs.attrs:
            raise ImageTypeError(
                f"imgs: DataArray {imgs.name!r} has no 'affine' attribute, so its grid is "
                "unknown; set attrs['affine'] (4x4 voxel -> mm)",
                param="imgs",
            )
        data = imgs.data
        if not isinstance(data, da.Array):
            data = da.from_array(np.asarray(data), chunks=-1)
        return imgs, data
    if isinstance(imgs, Sequence) and not isinstance(imgs, str | bytes):
        maps = [as_image(img, ndim=3, param=f"imgs[{i}]") for i, img in enumerate(imgs)]
        if not maps:
            raise InvalidParameterError(
                "imgs: expected subjects' 3D maps, got an empty list", param="imgs"
            )
        for i, m in enumerate(maps[1:], start=1):
            check_same_grid(maps[0], m, names=("imgs[0]", f"imgs[{i}]"))
        return maps[0], da.stack([m.data for m in maps], axis=-1)
    img = as_image(imgs, param="imgs")
    if img.ndim != 4:
        raise ImageDimensionError(
            f"imgs: got a {img.ndim}D image with shape {tuple(img.shape)}; expected the "
            "subjects' maps: a list of 3D images, a 4D image (last axis = subjects) or a "
            "DataArray with dims (x, y, z, subject)",
            param="imgs",
        )
    return img, img.data


# -- graph tasks ---------------------------------------------------------------------------
def _extract(block: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked voxels of a ``(x, y, z, s)`` block as a C-contiguous float64 ``(s, v)``."""
    return np.ascontiguousarray(np.asarray(block, dtype=np.float64)[mask].T)


def _design(mask: np.ndarray, *parts: np.ndarray) -> dict:
    """The ``(n, v)`` data matrix and where its voxels are in the grid."""
    mask = np.asarray(mask, dtype=bool)
    coords = np.nonzero(mask)
    if coords[0].size == 0:
        raise InvalidParameterError(
            "mask_img: selects no voxels (without mask_img: no voxel is finite in every "
            "subject and non-zero in at least one); nothing to test",
            param="mask_img",
        )
    x = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    lo = [int(c.min()) for c in coords]
    hi = [int(c.max()) + 1 for c in coords]
    bbox_shape = tuple(h - lo_ for lo_, h in zip(lo, hi, strict=True))
    bbox_index = np.ravel_multi_index(
        tuple(c - lo_ for c, lo_ in zip(coords, lo, strict=True)), bbox_shape
    )
    n = x.shape[0]
    return {
        "x": x,
        # n * sum of squares per voxel: invariant under sign flips
        "nq": n * np.einsum("ij,ij->j", x, x),
        "flat": np.flatnonzero(mask),
        "shape": mask.shape,
        "bbox_index": bbox_index,
        "bbox_shape": bbox_shape,
    }


def _cluster_workspace(design: dict) -> dict:
    """Buffers reused by every :func:`_clusters` call of a task (no page faults per map)."""
    shape = design["bbox_shape"]
    return {"grid": np.zeros(shape, dtype=bool), "lab": np.empty(shape, dtype=np.int32)}


def _clusters(
    t: np.ndarray, design: dict, work: dict, *, threshold_t: float, two_sided: bool, structure
):
    """Clusters of a masked t map: (voxel indices, their labels 1..k, sizes, masses)."""
    flat_grid, flat_lab = work["grid"].reshape(-1), work["lab"].reshape(-1)
    sides = (t > threshold_t, t < -threshold_t) if two_sided else (t > threshold_t,)
    indices, labels = [], []
    n_total = 0
    for sel in sides:
        index = np.flatnonzero(sel)
        if index.size == 0:
            continue
        where = design["bbox_index"][index]
        flat_grid[where] = True
        n = ndimage.label(work["grid"], structure, output=work["lab"])
        flat_grid[where] = False
        indices.append(index)
        labels.append(flat_lab[where].astype(np.int64) + n_total)
        n_total += int(n)
    if not indices:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0)
    index, label = np.concatenate(indices), np.concatenate(labels)
    sizes = np.bincount(label, minlength=n_total + 1)[1:]
    masses = np.bincount(label, weights=np.abs(t[index]) - threshold_t, minlength=n_total + 1)
    return index, label, sizes, masses[1:]


def _one_sided_logp(t: np.ndarray, p_two: np.ndarray, logp_two: np.ndarray) -> np.ndarray:
    """-log10 of the upper-tail p from the two-sided p and -log10 p."""
    with np.errstate(all="ignore"):
        lower = -np.log1p(-p_two / 2.0) / _LN10
        return np.where(t > 0, logp_two + _LOG10_2, lower)


def _observed(design: dict, *, two_sided: bool, threshold_t, structure) -> dict:
    """Statistics of the unpermuted data (small: a few arrays of n_voxels)."""
    x = design["x"]
    t, p, logp, _ = mom_ops.ttest_1samp(mom_ops.moments_of(x.T), popmean=0.0)
    if not two_sided:
        logp = _one_sided_logp(t, p, logp)
    stat = np.abs(t) if two_sided else t
    out = {
        "t": t,
        "logp": logp,
        "stat": stat,
        "max_stat": np.fmax.reduce(stat) if stat.size else np.nan,
        "flat": design["flat"],
        "shape": design["shape"],
    }
    if threshold_t is not None:
        index, label, sizes, masses = _clusters(
            t,
            design,
            _cluster_workspace(design),
            threshold_t=threshold_t,
            two_sided=two_sided,
            structure=structure,
        )
        labels = np.zeros(t.shape, dtype=np.int64)
        labels[index] = label
        out.update(
            labels=labels,
            sizes=sizes,
            masses=masses,
            max_size=int(sizes.max()) if sizes.size else 0,
            max_mass=float(masses.max()) if masses.size else 0.0,
        )
    return out


def _batch_rows(n_vox: int, *, clusters: bool) -> int:
    """Permutations per batch of matrix products: 128, or fewer to keep full t rows small.

    Batches are aligned on the global permutation index (batch ``k`` is
    permutations ``[k B, (k + 1) B)``) and always computed whole, in fixed
    blocks of voxels, so every permutation goes through the same products
    whatever ``chunk_perm``: BLAS rounds differently with the shape of a
    product (small-matrix kernels, matrix-vector for one row), which would
    otherwise change the last bits. With clusters a batch keeps its t maps
    (``rows x n_vox`` float64, at most ~16 MB).
    """
    rows = _MAX_BATCH_ROWS
    if clusters:
        rows = max(1, min(rows, _BATCH_BYTES // (8 * max(n_vox, 1))))
    return 1 << (rows.bit_length() - 1)


def _flip_rows(source: tuple, n: int, lo: int, hi: int) -> np.ndarray:
    """int8 ``(hi - lo, n)`` sign flips of permutations ``lo .. hi - 1``, from ``source``."""
    kind = source[0]
    if kind == "given":
        return source[1][lo:hi]
    if kind == "exhaustive":
        # permutation i is the sign vector whose bits are i + 1 (0, the identity, is skipped)
        code = np.arange(lo + 1, hi + 1, dtype=np.int64)
        bits = (code[:, None] >> np.arange(n, dtype=np.int64)) & 1
        return (1 - 2 * bits).astype(np.int8)
    seed = source[1]
    rows = []
    for block in range(lo // _FLIP_BLOCK, (hi - 1) // _FLIP_BLOCK + 1):
        gen = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(block,)))
        )
        bits = gen.integers(0, 2, size=(_FLIP_BLOCK, n), dtype=np.int8)
        base = block * _FLIP_BLOCK
        rows.append(bits[max(lo, base) - base : min(hi, base + _FLIP_BLOCK) - base])
    return (1 - 2 * np.concatenate(rows)).astype(np.int8)


def _null_chunk(
    design: dict,
    source: tuple,
    start: int,
    stop: int,
    n_total: int,
    *,
    two_sided: bool,
    threshold_t,
    structure,
) -> dict:
    """Max statistic (and largest cluster size and mass) of permutations ``start .. stop - 1``."""
    x, nq = design["x"], design["nq"]
    n, n_vox = x.shape
    n_perm = stop - start
    max_t = np.empty(n_perm)
    identity = np.empty(n_perm, dtype=bool)
    clusters = threshold_t is not None
    if clusters:
        max_size = np.zeros(n_perm, dtype=np.int64)
        max_mass = np.zeros(n_perm)
    rows = _batch_rows(n_vox, clusters=clusters)
    # Buffers reused across batches: no allocation (and no page faults, with
    # the aggressive malloc trimming of dask's worker processes) per product.
    widths = {min(_VOXEL_BLOCK, n_vox), n_vox % _VOXEL_BLOCK or _VOXEL_BLOCK}
    buffers = {w: np.empty((3, rows, w)) for w in widths}
    if clusters:
        t_rows = np.empty((rows, n_vox))
        work = _cluster_workspace(design)
    with np.errstate(all="ignore"):
        for lo in range((start // rows) * rows, stop, rows):
            hi = min(lo + rows, n_total)
            m = hi - lo
            flips = _flip_rows(source, n, lo, hi)
            f = flips.astype(np.float64)
            best = np.full(m, -np.inf)
            # blocks of voxels: the products and their t stay in the CPU caches
            for v0 in range(0, n_vox, _VOXEL_BLOCK):
                v1 = min(v0 + _VOXEL_BLOCK, n_vox)
                buf = buffers[v1 - v0]
                s, w, d = buf[0, :m], buf[1, :m], buf[2, :m]
                np.matmul(f, x[:, v0:v1], out=s)
                # t^2 / (n - 1) = s^2 / (n sum x^2 - s^2): no mean, no second pass
                np.square(s, out=w)
                np.subtract(nq[v0:v1], w, out=d)
                np.maximum(d, 0.0, out=d)
                np.divide(w, d, out=w)
                if not two_sided:
                    np.copysign(w, s, out=w)
                np.fmax(best, np.fmax.reduce(w, axis=1), out=best)
                if clusters:
                    np.abs(w, out=d)
                    d *= n - 1
                    np.sqrt(d, out=d)
                    np.copysign(d, s, out=t_rows[:m, v0:v1])
            keep = slice(max(start, lo) - lo, min(stop, hi) - lo)
            out = slice(max(start, lo) - start, min(stop, hi) - start)
            max_t[out] = np.copysign(np.sqrt(np.abs(best[keep]) * (n - 1)), best[keep])
            kept = flips[keep]
            identity[out] = np.all(kept == 1, axis=1)
            if two_sided:
                identity[out] |= np.all(kept == -1, axis=1)
            if clusters:
                for r_out, r in zip(
                    range(out.start, out.stop), range(keep.start, keep.stop), strict=True
                ):
                    _, _, sizes, masses = _clusters(
                        t_rows[r],
                        design,
                        work,
                        threshold_t=threshold_t,
                        two_sided=two_sided,
                        structure=structure,
                    )
                    if sizes.size:
                        max_size[r_out] = sizes.max()
                        max_mass[r_out] = masses.max()
    result = {"max_t": max_t, "identity": identity}
    if clusters:
        result.update(max_size=max_size, max_mass=max_mass)
    return result


def _fwe_logp(h0: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """-log10 of ``(1 + #{h0 >= observed}) / (len(h0) + 1)``; NaN where observed is NaN."""
    h0_sorted = np.sort(h0)  # NaN last: counted as >=, as nilearn (NaN < x is False)
    count = h0_sorted.size - np.searchsorted(h0_sorted, observed, side="left")
    p = (1.0 + count) / float(h0_sorted.size + 1)
    logp = -np.log10(p)
    return np.where(np.isnan(observed), np.nan, logp)


def _unmask(values: np.ndarray | bool, obs: dict, fill, dtype) -> np.ndarray:
    out = np.full(int(np.prod(obs["shape"])), fill, dtype=dtype)
    out[obs["flat"]] = values
    return out.reshape(obs["shape"])


def _combine(obs: dict, parts: list[dict]) -> dict:
    """p-value maps (full grid) and the null distributions."""
    identity = np.concatenate([p["identity"] for p in parts])
    h0_t = np.concatenate([p["max_t"] for p in parts])
    # A flip that is the identity (or its negation, two-sided) gives exactly the
    # observed maximum: use it, not its rounding through the matrix product.
    h0_t[identity] = obs["max_stat"]
    out = {
        "t": _unmask(obs["t"], obs, np.nan, np.float64),
        "logp": _unmask(obs["logp"], obs, np.nan, np.float64),
        "logp_max_t": _unmask(_fwe_logp(h0_t, obs["stat"]), obs, np.nan, np.float64),
        "mask": _unmask(True, obs, False, bool),
        "h0_max_t": h0_t,
    }
    if "labels" in obs:
        labels = obs["labels"]
        inside = labels > 0
        for name, key, fill, dtype in (
            ("size", "sizes", 0, np.int32),
            ("mass", "masses", 0.0, np.float64),
        ):
            h0 = np.concatenate([p[f"max_{name}"] for p in parts]).astype(np.float64)
            h0[identity] = obs[f"max_{name}"]
            per_cluster = obs[key].astype(np.float64)
            logp = np.zeros(labels.shape)
            logp[inside] = _fwe_logp(h0, per_cluster)[labels[inside] - 1]
            value = np.zeros(labels.shape, dtype=dtype)
            value[inside] = per_cluster[labels[inside] - 1]
            out[name] = _unmask(value, obs, fill, dtype)
            out[f"logp_max_{name}"] = _unmask(logp, obs, np.nan, np.float64)
            out[f"h0_max_{name}"] = h0.astype(np.int64) if name == "size" else h0
    return out


# -- public --------------------------------------------------------------------------------
def permuted_ttest_1samp(
    imgs: ImageLike | Sequence[ImageLike],
    *,
    mask_img: ImageLike | None = None,
    n_perm: int = 10000,
    two_sided: bool = True,
    cluster_threshold: float | None = None,
    connectivity: int = 6,
    seed: int = 0,
    exhaustive: bool | None = None,
    sign_flips=None,
    chunk_perm: int = DEFAULT_CHUNK_PERM,
) -> xr.Dataset:
    """One-sample permutation t-test of subjects' maps (sign flips), with FWE correction.

    nilearn's ``permuted_ols(ones, maps, ...)`` /
    ``non_parametric_inference`` for an intercept-only design, as a lazy dask
    graph: the maximum statistic over the mask controls the family-wise error
    at the voxel level (max-t) and, with ``cluster_threshold``, at the cluster
    level (largest cluster size and mass). See the module docstring for the
    exact definitions.

    Parameters
    ----------
    imgs : list of 3D images, 4D image, or xarray.DataArray (x, y, z, subject)
        The subjects' maps (e.g. first-level t or effect maps), on one grid: a
        list of paths / nibabel images / 3D roidask images, a 4D image whose
        last axis is the subjects, or a DataArray with dims
        ``(x, y, z, subject)`` and an ``affine`` attribute. Flips follow the
        order of the subjects.
    mask_img : path, nibabel image or xarray.DataArray, optional
        3D mask (0/1) on the same grid: the voxels tested. Default: the voxels
        that are finite in every subject and non-zero in at least one.
    n_perm : int, default 10000
        Number of permutations (random sign flips), not counting the
        unpermuted data. Replaced by ``2**n - 1`` when flips are exhaustive.
    two_sided : bool, default True
        True: statistic ``|t|`` (effects of either sign; clusters of ``t > thr``
        and of ``t < -thr``). False: ``t`` (positive effects only).
    cluster_threshold : float, optional
        Cluster-forming threshold as an uncorrected p-value (nilearn's
        ``threshold``), in (0, 1) two-sided, (0, 0.5) one-sided. None: no
        cluster inference.
    connectivity : {6, 18, 26}, default 6
        Neighbourhood of a cluster: voxels sharing a face (6, nilearn's), a face
        or an edge (18), or also a corner (26).
    seed : int, default 0
        Seed of the random flips (``SeedSequence(seed)``; permutation ``i`` comes
        from block ``i // 1024``), so any ``chunk_perm`` and any scheduler give
        the same flips.
    exhaustive : bool, optional
        True: all ``2**n - 1`` non-identity flips (exact p-values; at most
        ``MAX_EXHAUSTIVE_SUBJECTS`` subjects). False: ``n_perm`` random flips.
        None (default): exhaustive when ``2**n - 1 <= n_perm``.
    sign_flips : array-like, shape (n_perm, n_subjects), optional
        Explicit flips (+1/-1 per subject, one row per permutation), e.g. to
        reproduce another tool's permutations; replaces ``n_perm`` and ``seed``.
    chunk_perm : int, default 512
        Permutations per dask task. Changes the parallelism, never the result
        (a multiple of 128 wastes no work: a task computes whole batches).

    Returns
    -------
    xarray.Dataset
        Lazy, one graph (``ds.compute()`` runs it once). 3D float64 maps on the
        grid of ``imgs`` (NaN outside the mask): ``t`` (one-sample t,
        ``n - 1`` df), ``logp`` (uncorrected parametric -log10 p, Student t;
        two-sided, or upper tail), ``logp_max_t`` (voxel-level FWE-corrected
        -log10 p), ``mask`` (bool, the voxels tested); ``h0_max_t``
        (``permutation``): the null distribution of the maximum statistic
        (``|t|`` or ``t``). With ``cluster_threshold``: ``size`` (int32, voxels
        of the voxel's cluster, 0 outside clusters), ``mass`` (sum of
        ``|t| - thr`` over the cluster), ``logp_max_size`` and ``logp_max_mass``
        (cluster-level FWE-corrected -log10 p; 0 outside clusters), and
        ``h0_max_size``, ``h0_max_mass``. Attributes: ``n_perm`` (permutations
        done), ``flips`` (``"exhaustive"``, ``"random"`` or ``"given"``),
        ``seed`` (used by random flips only), ``two_sided``, ``df``,
        ``n_subjects``, ``chunk_perm`` and, with clusters,
        ``cluster_threshold`` (p), ``cluster_threshold_t`` and ``connectivity``.

    Raises
    ------
    InvalidParameterError
        A parameter is out of range (before any data is read); the mask selects
        no voxel (when computed).
    ImageDimensionError, ImageTypeError
        ``imgs`` is not a stack of subjects' 3D maps (see above).
    GridMismatchError
        Subjects' maps or the mask are on different grids.

    Notes
    -----
    The p-values do not depend on the scheduler, the number of workers or
    ``chunk_perm``; neither do the bits of ``h0_*`` when computed with
    :func:`roidask.pipeline.compute` (one BLAS thread, see
    :mod:`roidask._blas`). TFCE is not implemented.
    """
    n_perm = check_int(n_perm, "n_perm", minimum=1)
    two_sided = check_bool(two_sided, "two_sided")
    cluster_p = check_cluster_threshold(cluster_threshold, two_sided=two_sided)
    structure = resolve_structure(connectivity, labelling=True)
    seed = check_int(seed, "seed", minimum=0)
    exhaustive = None if exhaustive is None else check_bool(exhaustive, "exhaustive")
    chunk_perm = check_int(chunk_perm, "chunk_perm", minimum=1)
    if sign_flips is not None and exhaustive:
        raise InvalidParameterError(
            "exhaustive and sign_flips: give one or the other, got exhaustive=True and sign_flips",
            param="sign_flips",
        )

    ref, data = _subject_stack(imgs)
    n = int(data.shape[3])
    if n < 2:
        raise InvalidParameterError(
            f"imgs: a one-sample t-test needs at least 2 subjects' maps, got {n}", param="imgs"
        )
    if sign_flips is not None:
        flips = _check_sign_flips(sign_flips, n)
        kind, n_eff = "given", int(flips.shape[0])
    else:
        if exhaustive is None:
            exhaustive = n <= MAX_EXHAUSTIVE_SUBJECTS and 2**n - 1 <= n_perm
        if exhaustive and n > MAX_EXHAUSTIVE_SUBJECTS:
            raise InvalidParameterError(
                f"exhaustive: {n} subjects have 2**{n} sign flips; exhaustive flips are "
                f"limited to {MAX_EXHAUSTIVE_SUBJECTS} subjects (use random flips, "
                "exhaustive=False)",
                param="exhaustive",
            )
        kind = "exhaustive" if exhaustive else "random"
        n_eff = 2**n - 1 if exhaustive else n_perm

    if mask_img is None:
        mask = da.isfinite(data).all(axis=3) & (data != 0).any(axis=3)
    else:
        mask_xr = as_mask(mask_img, param="mask_img")
        check_same_grid(ref, mask_xr, names=("imgs", "mask_img"))
        mask = mask_xr.data
    mask = mask.rechunk(-1)
    data = data.rechunk({0: -1, 1: -1, 2: -1})

    df = n - 1
    threshold_t = None
    if cluster_p is not None:
        # nilearn's conversion (permuted_least_squares._compute_t_stat_threshold)
        # scipy.stats.t.isf(q, df) is -stdtrit(df, q); scipy.stats is not imported (~0.1 s)
        threshold_t = float(-special.stdtrit(df, cluster_p / 2 if two_sided else cluster_p))
    source: tuple  # (kind, its data): the flips, nothing, or the seed
    if kind == "given":
        # one key holding the flips, read by every chunk (not a copy per task)
        source = ("given", dask.delayed(flips, name=f"permutation-flips-{tokenize(flips)}"))
    elif kind == "exhaustive":
        source = ("exhaustive",)
    else:
        source = ("random", seed)
    bounds = [(a, min(a + chunk_perm, n_eff)) for a in range(0, n_eff, chunk_perm)]

    token = tokenize(
        data.name,
        mask.name,
        two_sided,
        threshold_t,
        structure.tobytes(),
        kind,
        seed,
        n_eff,
        chunk_perm,
        flips if kind == "given" else None,
    )
    opts = {"two_sided": two_sided, "threshold_t": threshold_t, "structure": structure}
    mask_d = mask.to_delayed().ravel()[0]
    parts = [
        dask.delayed(_extract, pure=True)(
            block, mask_d, dask_key_name=f"permutation-extract-{token}-{i}"
        )
        for i, block in enumerate(data.to_delayed().ravel())
    ]
    design = dask.delayed(_design, pure=True)(
        mask_d, *parts, dask_key_name=f"permutation-design-{token}"
    )
    observed = dask.delayed(_observed, pure=True)(
        design, **opts, dask_key_name=f"permutation-observed-{token}"
    )
    chunks = [
        dask.delayed(_null_chunk, pure=True)(
            design, source, a, b, n_eff, **opts, dask_key_name=f"permutation-chunk-{token}-{k}"
        )
        for k, (a, b) in enumerate(bounds)
    ]
    result = dask.delayed(_combine, pure=True)(
        observed, chunks, dask_key_name=f"permutation-combine-{token}"
    )

    shape = tuple(int(s) for s in data.shape[:3])
    grid = grid_attrs(ref)

    def lazy(name, dims_shape, dtype):
        item = dask.delayed(operator.getitem, pure=True)(
            result, name, dask_key_name=f"permutation-get-{name}-{token}"
        )
        return da.from_delayed(item, dims_shape, dtype=dtype, name=f"permutation-{name}-{token}")

    def as_map(name, dtype, units):
        return (SPATIAL_DIMS, lazy(name, shape, dtype), {**grid, "units": units})

    stat_name = "|t|" if two_sided else "t"
    variables = {
        "t": as_map("t", np.float64, "t"),
        "logp": as_map("logp", np.float64, "-log10(p), uncorrected, Student t"),
        "logp_max_t": as_map("logp_max_t", np.float64, "-log10(p), FWE-corrected (max-t)"),
        "mask": as_map("mask", bool, "1"),
        "h0_max_t": (
            ("permutation",),
            lazy("h0_max_t", (n_eff,), np.float64),
            {"units": f"max {stat_name} over the mask"},
        ),
    }
    if threshold_t is not None:
        variables.update(
            size=as_map("size", np.int32, "voxels"),
            mass=as_map("mass", np.float64, "sum of |t| - threshold over the cluster"),
            logp_max_size=as_map(
                "logp_max_size", np.float64, "-log10(p), FWE-corrected (cluster size)"
            ),
            logp_max_mass=as_map(
                "logp_max_mass", np.float64, "-log10(p), FWE-corrected (cluster mass)"
            ),
            h0_max_size=(
                ("permutation",),
                lazy("h0_max_size", (n_eff,), np.int64),
                {"units": "voxels (largest cluster)"},
            ),
            h0_max_mass=(
                ("permutation",),
                lazy("h0_max_mass", (n_eff,), np.float64),
                {"units": "largest cluster mass"},
            ),
        )
    attrs = {
        **grid,
        "test": "one-sample t, sign-flipping permutations",
        "n_subjects": n,
        "df": df,
        "two_sided": int(two_sided),
        "n_perm": n_eff,
        "flips": kind,
        "seed": seed,
        "chunk_perm": chunk_perm,
        "p_value": "(1 + #{h0 >= observed}) / (n_perm + 1)",
    }
    if threshold_t is not None:
        attrs.update(
            cluster_threshold=cluster_p,
            cluster_threshold_t=threshold_t,
            connectivity=int(structure.sum()) - 1,
        )
    return xr.Dataset(variables, attrs=attrs)
