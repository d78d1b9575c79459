"""Sign-flip permutation t-test against nilearn's permuted_ols and an exact enumeration.

References:

* nilearn's :func:`~nilearn.mass_univariate.permuted_ols` with ``tested_vars`` a
  column of ones. nilearn draws its flips at random (never exhaustively), so
  identical p-values are checked on identical flips: :func:`nilearn_flips`
  replays nilearn's draws (its seeding and its cumulative sign products) and
  passes them as ``sign_flips``. The replay is itself checked: the null
  distributions must then equal nilearn's.
* An exact enumeration of all ``2**n`` flips with :func:`scipy.stats.ttest_1samp`
  (and :func:`scipy.ndimage.label` for clusters): exhaustive p-values must be
  identical to ``#{flips: max >= observed} / 2**n``.
* Random flips against the exact p: within the binomial Monte Carlo error,
  ``|p_hat - p| <= 4 * sqrt(p (1 - p) / n_perm) + 1 / n_perm`` at every voxel
  (4 binomial standard errors, plus the offset of counting the unpermuted
  statistic, or of nilearn clipping its cluster p-values to
  ``[1/n_perm, 1 - 1/n_perm]``); nilearn's random p-values satisfy the same bound.
"""

from __future__ import annotations

import itertools
import warnings
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback
from helpers.lazy import raise_if_dask_computes
from hypothesis import given, settings
from hypothesis import strategies as st
from nilearn.maskers import NiftiMasker
from nilearn.mass_univariate import permuted_ols
from scipy import ndimage
from scipy import stats as sst

from roidask.exceptions import (
    GridMismatchError,
    ImageDimensionError,
    ImageTypeError,
    InvalidParameterError,
)
from roidask.ops.permutation import permuted_ttest_1samp
from roidask.pipeline import compute

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
SHAPE = (17, 20, 16)  # an ellipsoid mask of ~2900 voxels: two blocks of 2048


# -- data and references ---------------------------------------------------------------------
def _ellipsoid(shape, scale=2.2) -> np.ndarray:
    g = np.indices(shape).astype(float)
    half = np.array(shape, dtype=float)[:, None, None, None] / 2
    return (((g - half + 0.5) / (half * 2 / scale)) ** 2).sum(0) <= 1


def _maps(n_subjects: int, shape=SHAPE, seed=1, effect=1.6) -> np.ndarray:
    """Smooth noise maps with a blob of real effect, like subjects' first-level maps."""
    rng = np.random.default_rng(seed)
    noise = [
        ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) * 3 for _ in range(n_subjects)
    ]
    g = np.indices(shape).astype(float)
    blob = np.exp(-(((g - np.array([5, 7, 6])[:, None, None, None]) ** 2).sum(0)) / 4)
    return np.stack(noise, axis=-1) + effect * blob[..., None]


def subjects_array(maps: np.ndarray) -> xr.DataArray:
    return xr.DataArray(
        maps, dims=("x", "y", "z", "subject"), attrs={"affine": AFFINE.tolist()}, name="maps"
    )


def mask_image(mask: np.ndarray) -> xr.DataArray:
    return xr.DataArray(mask, dims=("x", "y", "z"), attrs={"affine": AFFINE.tolist()})


@pytest.fixture(scope="module")
def group():
    maps = _maps(10)
    mask = _ellipsoid(SHAPE)
    return SimpleNamespace(maps=maps, mask=mask, mask_img=mask_image(mask))


def data_of(group, n: int) -> tuple[xr.DataArray, np.ndarray]:
    """The first ``n`` subjects: as a DataArray, and nilearn's (n, n_voxels) matrix."""
    maps = group.maps[..., :n]
    return subjects_array(maps), maps[group.mask].T


def nilearn_flips(n_subjects: int, n_perm: int, random_state: int, n_jobs: int = 1):
    """The sign flips nilearn's permuted_ols draws (nilearn 0.14, intercept-only design).

    permuted_ols seeds one RandomState per job from ``RandomState(random_state)``
    with ``randint(1, int32 max - 1)``; each job multiplies the data, cumulatively,
    by ``randint(2, size=(n, 1)) * 2 - 1`` before each permutation.
    """
    rs = np.random.RandomState(random_state)
    per_job = [n_perm // n_jobs] * n_jobs
    per_job[-1] += n_perm % n_jobs
    rows = []
    for count in per_job:
        job = np.random.RandomState(rs.randint(1, np.iinfo(np.int32).max - 1))
        current = np.ones((n_subjects, 1), dtype=np.int64)
        for _ in range(count):
            current = current * (job.randint(2, size=(n_subjects, 1)) * 2 - 1)
            rows.append(current[:, 0].copy())
    return np.asarray(rows)


def nilearn_run(x, n_perm, *, two_sided, random_state, mask=None, threshold=None):
    masker = None
    if threshold is not None:
        masker = NiftiMasker(nib.Nifti1Image(mask.astype(np.int8), AFFINE)).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's notices about masker/thresholds
        return permuted_ols(
            np.ones((x.shape[0], 1)),
            x,
            n_perm=n_perm,
            two_sided_test=two_sided,
            random_state=random_state,
            n_jobs=1,
            masker=masker,
            threshold=threshold,
        )


def exact_reference(x, *, two_sided, mask=None, threshold_t=None, structure=None):
    """Exact p-values from all 2**n flips, with scipy (t) and scipy.ndimage (clusters)."""
    n = x.shape[0]
    t_obs = sst.ttest_1samp(x, 0.0).statistic
    h0_t, h0_size = [], []
    for signs in itertools.product([1.0, -1.0], repeat=n):
        t = sst.ttest_1samp(x * np.asarray(signs)[:, None], 0.0).statistic
        h0_t.append(np.abs(t).max() if two_sided else t.max())
        if threshold_t is not None:
            h0_size.append(_max_cluster(t, mask, threshold_t, two_sided, structure))
    stat = np.abs(t_obs) if two_sided else t_obs
    p_t = (np.asarray(h0_t)[None, :] >= stat[:, None]).mean(axis=1)
    if threshold_t is None:
        return p_t, None
    sizes = _cluster_size_map(t_obs, mask, threshold_t, two_sided, structure)
    p_size = (np.asarray(h0_size)[None, :] >= sizes[:, None]).mean(axis=1)
    return p_t, np.where(sizes > 0, p_size, 1.0)


def _cluster_size_map(t, mask, thr, two_sided, structure):
    grid = np.zeros(mask.shape)
    grid[mask] = t
    out = np.zeros(mask.shape, dtype=np.int64)
    for sel in (grid > thr, grid < -thr) if two_sided else (grid > thr,):
        lab, _ = ndimage.label(sel, structure)
        counts = np.bincount(lab.ravel())
        counts[0] = 0
        out += counts[lab]
    return out[mask]


def _max_cluster(t, mask, thr, two_sided, structure):
    return int(_cluster_size_map(t, mask, thr, two_sided, structure).max(initial=0))


def p_of(logp) -> np.ndarray:
    return 10.0 ** -np.asarray(logp)


def run(ds: xr.Dataset) -> xr.Dataset:
    (out,) = compute(ds, local=True)
    return out


# -- t and uncorrected p ------------------------------------------------------------------------
@pytest.mark.parametrize("two_sided", [True, False])
def test_t_and_uncorrected_logp_match_scipy(group, two_sided):
    imgs, x = data_of(group, 8)
    ds = run(permuted_ttest_1samp(imgs, mask_img=group.mask_img, n_perm=10, two_sided=two_sided))
    ref = sst.ttest_1samp(x, 0.0, alternative="two-sided" if two_sided else "greater")
    np.testing.assert_allclose(ds["t"].values[group.mask], ref.statistic, rtol=1e-12)
    np.testing.assert_allclose(ds["logp"].values[group.mask], -np.log10(ref.pvalue), rtol=1e-9)
    assert np.isnan(ds["t"].values[~group.mask]).all()
    assert np.isnan(ds["logp_max_t"].values[~group.mask]).all()
    np.testing.assert_array_equal(ds["mask"].values, group.mask)
    assert ds["t"].dims == ("x", "y", "z") and ds.attrs["affine"] == AFFINE.tolist()
    assert ds.attrs["df"] == 7 and ds.attrs["two_sided"] == int(two_sided)


# -- identical to nilearn on nilearn's flips ------------------------------------------------------
@pytest.mark.parametrize("two_sided", [True, False])
def test_max_t_identical_to_nilearn_on_its_flips(group, two_sided):
    imgs, x = data_of(group, 8)
    n_perm = 400
    ref = nilearn_run(x, n_perm, two_sided=two_sided, random_state=3)
    flips = nilearn_flips(8, n_perm, 3)
    # nilearn's cumulative draws hit the identity (and its negation): ties must count
    assert (np.all(flips == 1, axis=1) | np.all(flips == -1, axis=1)).any()
    ds = run(
        permuted_ttest_1samp(
            imgs, mask_img=group.mask_img, sign_flips=flips, two_sided=two_sided, chunk_perm=97
        )
    )
    np.testing.assert_allclose(ds["h0_max_t"].values, ref["h0_max_t"][0], rtol=1e-12)
    np.testing.assert_allclose(ds["t"].values[group.mask], ref["t"][0], rtol=1e-10)
    np.testing.assert_array_equal(ds["logp_max_t"].values[group.mask], ref["logp_max_t"][0])
    assert ds.attrs["flips"] == "given" and ds.attrs["n_perm"] == n_perm
    assert (ds["logp_max_t"].values[group.mask] > 1).any()  # the blob is significant


@pytest.mark.parametrize("two_sided", [True, False])
def test_cluster_size_and_mass_identical_to_nilearn_on_its_flips(group, two_sided):
    imgs, x = data_of(group, 8)
    n_perm, p_thr = 300, 0.01
    ref = nilearn_run(
        x, n_perm, two_sided=two_sided, random_state=5, mask=group.mask, threshold=p_thr
    )
    ds = run(
        permuted_ttest_1samp(
            imgs,
            mask_img=group.mask_img,
            sign_flips=nilearn_flips(8, n_perm, 5),
            two_sided=two_sided,
            cluster_threshold=p_thr,
            chunk_perm=64,
        )
    )
    m = group.mask
    np.testing.assert_array_equal(ds["h0_max_size"].values, ref["h0_max_size"][0])
    np.testing.assert_allclose(ds["h0_max_mass"].values, ref["h0_max_mass"][0], rtol=1e-12)
    np.testing.assert_array_equal(ds["size"].values[m], ref["size"][0])
    np.testing.assert_allclose(ds["mass"].values[m], ref["mass"][0], rtol=1e-12, atol=1e-12)
    sizes = ds["size"].values[m]
    assert len(np.unique(sizes)) > 2  # several clusters of different sizes
    # nilearn: p = count / n_perm clipped to [1/n_perm, 1 - 1/n_perm]; here (1 + count) /
    # (n_perm + 1). The same counts wherever nilearn's p is not clipped.
    for metric in ("size", "mass"):
        ours = np.rint(p_of(ds[f"logp_max_{metric}"].values[m]) * (n_perm + 1) - 1)
        theirs = np.rint(p_of(ref[f"logp_max_{metric}"][0]) * n_perm)
        clipped = (theirs <= 1) | (theirs >= n_perm - 1)
        in_cluster = sizes > 0
        assert (in_cluster & ~clipped).any()
        np.testing.assert_array_equal(ours[in_cluster & ~clipped], theirs[in_cluster & ~clipped])
        np.testing.assert_array_equal(ds[f"logp_max_{metric}"].values[m][~in_cluster], 0.0)
    assert ds.attrs["cluster_threshold"] == p_thr
    np.testing.assert_allclose(
        ds.attrs["cluster_threshold_t"], sst.t.isf(p_thr / (2 if two_sided else 1), 7)
    )


# -- exhaustive flips: the exact permutation distribution -----------------------------------------
@pytest.mark.parametrize("two_sided", [True, False])
def test_exhaustive_identical_to_exact_enumeration(group, two_sided):
    imgs, x = data_of(group, 8)
    ds = run(permuted_ttest_1samp(imgs, mask_img=group.mask_img, n_perm=255, two_sided=two_sided))
    assert ds.attrs["flips"] == "exhaustive" and ds.attrs["n_perm"] == 255
    p_exact, _ = exact_reference(x, two_sided=two_sided)
    np.testing.assert_array_equal(ds["logp_max_t"].values[group.mask], -np.log10(p_exact))
    # nilearn's counting on the 255 non-identity flips, the unpermuted data counted once
    every = permuted_ttest_1samp(
        imgs, mask_img=group.mask_img, two_sided=two_sided, sign_flips=_all_non_identity(8)
    )
    np.testing.assert_array_equal(run(every)["logp_max_t"].values, ds["logp_max_t"].values)


def _all_non_identity(n: int) -> np.ndarray:
    code = np.arange(1, 2**n)
    return 1 - 2 * ((code[:, None] >> np.arange(n)) & 1)


@settings(max_examples=15)
@given(
    n=st.integers(2, 6),
    n_vox=st.integers(1, 12),
    two_sided=st.booleans(),
    data_seed=st.integers(0, 2**16),
    chunk_perm=st.integers(1, 40),
)
def test_exhaustive_any_data_and_chunking(n, n_vox, two_sided, data_seed, chunk_perm):
    rng = np.random.default_rng(data_seed)
    values = rng.standard_normal((n_vox, 1, 1, n)) + rng.uniform(-1, 1)
    ds = run(
        permuted_ttest_1samp(
            subjects_array(values),
            mask_img=mask_image(np.ones((n_vox, 1, 1), bool)),
            exhaustive=True,
            two_sided=two_sided,
            chunk_perm=chunk_perm,
        )
    )
    p_exact, _ = exact_reference(values[:, 0, 0, :].T, two_sided=two_sided)
    np.testing.assert_array_equal(ds["logp_max_t"].values[:, 0, 0], -np.log10(p_exact))


def test_exhaustive_clusters_with_26_connectivity_identical_to_enumeration(group):
    imgs, x = data_of(group, 7)
    thr_p = 0.05
    ds = run(
        permuted_ttest_1samp(
            imgs, mask_img=group.mask_img, n_perm=127, cluster_threshold=thr_p, connectivity=26
        )
    )
    thr_t = sst.t.isf(thr_p / 2, 6)
    structure = ndimage.generate_binary_structure(3, 3)
    _, p_size = exact_reference(
        x, two_sided=True, mask=group.mask, threshold_t=thr_t, structure=structure
    )
    np.testing.assert_array_equal(ds["logp_max_size"].values[group.mask], -np.log10(p_size))
    face = run(
        permuted_ttest_1samp(imgs, mask_img=group.mask_img, n_perm=127, cluster_threshold=thr_p)
    )
    assert face.attrs["connectivity"] == 6 and ds.attrs["connectivity"] == 26
    assert not np.array_equal(face["h0_max_size"].values, ds["h0_max_size"].values)


def test_touching_positive_and_negative_clusters_are_separate():
    """Two-sided: ``t > thr`` and ``t < -thr`` voxels side by side are two clusters."""
    rng = np.random.default_rng(4)
    effect = np.array([3.0, 3.0, 3.0, -3.0, -3.0, -3.0, 0.0, 0.0])
    values = effect[:, None] + 0.5 * rng.standard_normal((8, 7))
    imgs = subjects_array(values[:, None, None, :])
    mask = np.ones((8, 1, 1), bool)
    ds = run(
        permuted_ttest_1samp(imgs, mask_img=mask_image(mask), n_perm=127, cluster_threshold=0.05)
    )
    np.testing.assert_array_equal(ds["size"].values[:, 0, 0], [3, 3, 3, 3, 3, 3, 0, 0])
    _, p_size = exact_reference(
        values.T,
        two_sided=True,
        mask=mask,
        threshold_t=sst.t.isf(0.025, 6),
        structure=ndimage.generate_binary_structure(3, 1),
    )
    np.testing.assert_array_equal(ds["logp_max_size"].values[:, 0, 0], -np.log10(p_size))


def test_exhaustive_or_random_by_n_perm(group):
    imgs, _ = data_of(group, 8)
    auto = permuted_ttest_1samp(imgs, mask_img=group.mask_img, n_perm=255)
    assert auto.attrs["flips"] == "exhaustive" and auto.sizes["permutation"] == 255
    fewer = permuted_ttest_1samp(imgs, mask_img=group.mask_img, n_perm=254)
    assert fewer.attrs["flips"] == "random" and fewer.sizes["permutation"] == 254
    forced = permuted_ttest_1samp(imgs, mask_img=group.mask_img, n_perm=1000, exhaustive=False)
    assert forced.attrs["flips"] == "random" and forced.sizes["permutation"] == 1000
    many = subjects_array(np.zeros((2, 2, 2, 25)))
    assert permuted_ttest_1samp(many, n_perm=1000).attrs["flips"] == "random"
    with pytest.raises(InvalidParameterError, match=r"exhaustive: 25 subjects .* limited to 24"):
        permuted_ttest_1samp(many, exhaustive=True)


# -- random flips: Monte Carlo error --------------------------------------------------------------
def _within_monte_carlo(p_hat, p, n_perm, k=4.0):
    bound = k * np.sqrt(p * (1 - p) / n_perm) + 1.0 / n_perm + 1e-12  # + rounding
    worst = np.max(np.abs(p_hat - p) - bound)
    assert worst <= 0, f"p deviates from the exact p by {worst:.4f} beyond {k} SE"


def test_random_flips_agree_with_exact_and_nilearn_within_monte_carlo_error(group):
    imgs, x = data_of(group, 10)
    m, p_thr = group.mask, 0.01
    opts = {"mask_img": group.mask_img, "cluster_threshold": p_thr}
    exact = run(permuted_ttest_1samp(imgs, n_perm=1023, **opts))
    assert exact.attrs["flips"] == "exhaustive"
    ours = run(permuted_ttest_1samp(imgs, n_perm=2000, exhaustive=False, seed=7, **opts))
    assert ours.attrs["flips"] == "random" and ours.attrs["seed"] == 7
    ref = nilearn_run(x, 1000, two_sided=True, random_state=0, mask=m, threshold=p_thr)
    for metric in ("t", "size", "mass"):
        p_exact = p_of(exact[f"logp_max_{metric}"].values[m])
        if metric == "t":
            assert np.count_nonzero(p_exact < 0.9) >= 20  # not only p = 1 is checked
        _within_monte_carlo(p_of(ours[f"logp_max_{metric}"].values[m]), p_exact, 2000)
        _within_monte_carlo(p_of(ref[f"logp_max_{metric}"][0]), p_exact, 1000)


# -- reproducibility: workers, chunks, seeds ------------------------------------------------------
def _assert_same_results(got: xr.Dataset, expected: xr.Dataset) -> None:
    assert set(got.data_vars) == set(expected.data_vars)
    for name in expected.data_vars:
        np.testing.assert_array_equal(got[name].values, expected[name].values, err_msg=name)


def _random_run(group, **kwargs) -> xr.Dataset:
    imgs, _ = data_of(group, 8)
    opts = {"n_perm": 300, "exhaustive": False, "seed": 3, "cluster_threshold": 0.01}
    return permuted_ttest_1samp(imgs, mask_img=group.mask_img, **{**opts, **kwargs})


@pytest.fixture(scope="module")
def one_task_result(group):
    """All 300 random permutations in one task, computed by dask's threads."""
    return run(_random_run(group, chunk_perm=300))


@pytest.mark.parametrize("n_workers", [1, 2])
def test_same_result_on_a_cluster_of_1_or_2_workers(group, one_task_result, n_workers):
    from distributed import Client, LocalCluster, get_task_stream

    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=False,
            protocol="tcp",
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
        get_task_stream(client) as stream,
    ):
        (got,) = compute(_random_run(group, chunk_perm=7))
    _assert_same_results(got, one_task_result)
    workers = {t["worker"] for t in stream.data if "permutation-chunk" in str(t["key"])}
    assert len(workers) == n_workers  # the chunks really ran on every worker


@settings(max_examples=8)
@given(chunk_perm=st.integers(1, 300))
def test_same_result_whatever_chunk_perm(group, one_task_result, chunk_perm):
    _assert_same_results(run(_random_run(group, chunk_perm=chunk_perm)), one_task_result)


def test_flips_depend_only_on_seed_and_permutation_index(group):
    imgs, _ = data_of(group, 8)

    def h0(n_perm, seed):
        ds = permuted_ttest_1samp(
            imgs, mask_img=group.mask_img, n_perm=n_perm, exhaustive=False, seed=seed
        )
        return run(ds)["h0_max_t"].values

    longer = h0(1500, 11)  # crosses a block of 1024 random streams
    np.testing.assert_array_equal(h0(100, 11), longer[:100])
    np.testing.assert_array_equal(h0(1100, 11), longer[:1100])
    assert not np.array_equal(h0(100, 12), longer[:100])


# -- the graph: tasks per chunk, small outputs, lazy ----------------------------------------------
def _nbytes(obj) -> int:
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 8


class _OutputSizes(Callback):
    """Bytes of every task's result, by key (dask's local schedulers)."""

    def __init__(self):
        super().__init__()
        self.nbytes = {}

    def _posttask(self, key, result, dsk, state, worker_id):
        self.nbytes[key] = _nbytes(result)


@pytest.mark.parametrize(("n_perm", "chunk_perm"), [(1000, 100), (1000, 250), (3000, 250)])
def test_one_task_per_chunk_each_returning_only_maxima(group, n_perm, chunk_perm):
    ds = _random_run(group, n_perm=n_perm, chunk_perm=chunk_perm)
    chunk_keys = [k for k in dict(ds.__dask_graph__()) if str(k).startswith("permutation-chunk")]
    assert len(chunk_keys) == -(-n_perm // chunk_perm)
    with _OutputSizes() as sizes:
        run(ds)
    chunk_bytes = [v for k, v in sizes.nbytes.items() if str(k).startswith("permutation-chunk")]
    assert len(chunk_bytes) == len(chunk_keys)
    # max |t|, identity flag, largest cluster size and mass: 25 bytes per permutation
    assert max(chunk_bytes) <= 25 * chunk_perm + 64
    n_vox = int(group.mask.sum())
    assert max(chunk_bytes) < chunk_perm * n_vox  # far from one map per permutation


def test_building_the_graph_reads_and_computes_nothing(group, tmp_path):
    imgs, _ = data_of(group, 8)
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"sub-{i:02d}_tstat.nii.gz")
        nib.save(nib.Nifti1Image(group.maps[..., i], AFFINE), paths[-1])
    stack4d = tmp_path / "all.nii.gz"
    nib.save(nib.Nifti1Image(group.maps[..., :8], AFFINE), stack4d)
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(group.mask.astype(np.uint8), AFFINE), mask_path)
    opts = {"n_perm": 200, "exhaustive": False, "cluster_threshold": 0.01}
    with raise_if_dask_computes():
        from_files = permuted_ttest_1samp(paths, mask_img=mask_path, **opts)
        from_4d = permuted_ttest_1samp(stack4d, mask_img=mask_path, **opts)
        default_mask = permuted_ttest_1samp(paths, **opts)
    expected = run(permuted_ttest_1samp(imgs, mask_img=group.mask_img, **opts))
    _assert_same_results(run(from_files), expected)
    _assert_same_results(run(from_4d), expected)
    # without a mask: voxels finite everywhere and non-zero somewhere (the whole grid here)
    assert run(default_mask)["mask"].values.all()


def test_default_mask_is_finite_and_nonzero_voxels(group):
    maps = group.maps[..., :6] * group.mask[..., None]
    maps[1, 1, 1, 2] = np.nan  # a voxel outside the ellipsoid, NaN in one subject
    maps[5, 6, 4, 3] = np.nan  # a voxel inside: excluded
    inside = group.mask.copy()
    inside[5, 6, 4] = False
    got = run(permuted_ttest_1samp(subjects_array(maps), n_perm=63))
    np.testing.assert_array_equal(got["mask"].values, inside)
    explicit = permuted_ttest_1samp(subjects_array(maps), mask_img=mask_image(inside), n_perm=63)
    _assert_same_results(got, run(explicit))


# -- bad input: rejected before any voxel is read -------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_perm": 0}, r"n_perm: expected an integer >= 1, got 0"),
        ({"n_perm": 10.5}, r"n_perm: expected an integer >= 1, got 10.5"),
        ({"n_perm": True}, r"n_perm: expected an integer >= 1, got True"),
        ({"two_sided": "yes"}, r"two_sided: expected True or False, got 'yes'"),
        ({"cluster_threshold": 3.1}, r"cluster_threshold: .*p-value in \(0, 1\).* got 3.1"),
        ({"cluster_threshold": 0.0}, r"cluster_threshold: .* got 0.0"),
        ({"cluster_threshold": float("nan")}, r"cluster_threshold: .* got nan"),
        (
            {"cluster_threshold": 0.6, "two_sided": False},
            r"cluster_threshold: .*\(0, 0.5\) for a one-sided test .* got 0.6",
        ),
        ({"connectivity": 4}, r"connectivity: expected 6, 18 or 26"),
        ({"seed": -1}, r"seed: expected an integer >= 0, got -1"),
        ({"chunk_perm": 0}, r"chunk_perm: expected an integer >= 1, got 0"),
        ({"exhaustive": "auto"}, r"exhaustive: expected True or False, got 'auto'"),
        ({"sign_flips": np.ones((5, 7))}, r"sign_flips: expected shape \(n_perm >= 1, 8\)"),
        ({"sign_flips": np.zeros((5, 8))}, r"sign_flips: expected only \+1 and -1, found \[0.0\]"),
        (
            {"sign_flips": np.ones((5, 8)), "exhaustive": True},
            r"exhaustive and sign_flips: give one or the other",
        ),
    ],
)
def test_bad_parameters(group, kwargs, match):
    imgs, _ = data_of(group, 8)
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match=match):
        permuted_ttest_1samp(imgs, mask_img=group.mask_img, **kwargs)


def test_bad_images(group):
    imgs, _ = data_of(group, 8)
    other_grid = xr.DataArray(
        group.mask, dims=("x", "y", "z"), attrs={"affine": np.eye(4).tolist()}
    )
    with raise_if_dask_computes():
        with pytest.raises(ImageDimensionError, match=r"imgs: got a 3D image .* list of 3D"):
            permuted_ttest_1samp(mask_image(group.maps[..., 0]))
        with pytest.raises(ImageDimensionError, match=r"expected \('x', 'y', 'z', 'subject'\)"):
            permuted_ttest_1samp(imgs.transpose("subject", "x", "y", "z"))
        with pytest.raises(ImageTypeError, match=r"imgs: DataArray 'maps' has no 'affine'"):
            permuted_ttest_1samp(imgs.drop_attrs())
        with pytest.raises(GridMismatchError, match=r"imgs and mask_img are on different"):
            permuted_ttest_1samp(imgs, mask_img=other_grid)
        maps3d = [mask_image(group.maps[..., i]) for i in range(3)]
        with pytest.raises(GridMismatchError, match=r"imgs\[0\] and imgs\[2\]"):
            permuted_ttest_1samp([*maps3d[:2], other_grid.astype(float)])
        with pytest.raises(InvalidParameterError, match=r"at least 2 subjects' maps, got 1"):
            permuted_ttest_1samp(maps3d[:1])
        with pytest.raises(InvalidParameterError, match=r"imgs: .* got an empty list"):
            permuted_ttest_1samp([])
    empty = permuted_ttest_1samp(imgs, mask_img=mask_image(np.zeros(SHAPE, bool)))
    with pytest.raises(InvalidParameterError, match=r"mask_img: selects no voxels"):
        run(empty)
