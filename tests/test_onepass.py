"""The pipeline's single read (contrast_pass) against references, on any chunking.

Pairs (reference, ours): the float64 sum of every volume vs numpy; the moments of
the smoothed contrast volumes vs nilearn's ``smooth_img`` followed by numpy's
two-pass mean and squared deviations; the kept box vs slicing the array; and
signals extracted from the box vs extracted from the whole volumes (nilearn-exact
``extract_signals``), for every strategy.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from helpers.lazy import raise_if_dask_computes
from hypothesis import given, settings
from hypothesis import strategies as st
from nilearn.image import smooth_img as nilearn_smooth
from scipy import ndimage

from roidask.exceptions import ConditionError, InvalidParameterError
from roidask.io import as_image, bold_from_nifti, like_image
from roidask.io import spill as spill_module
from roidask.io.nifti import NiftiSource
from roidask.io.spill import spill_file
from roidask.onepass import (
    KeptVoxels,
    MemoryPlan,
    box_bytes,
    box_image,
    contrast_pass,
    kept_voxels,
    memory_plan,
    pass_box,
    pass_tiles,
    roi_box,
    spill_image,
)
from roidask.ops.extract import STRATEGIES, extract_signals
from roidask.ops.kernels import fwhm_to_sigma_voxels, gaussian_radius
from roidask.ops.smooth import smooth_img, smoothing_dtype

CONDITIONS = np.array(["rest", "face", "house", "face", "cat", "house", "face", "house"] * 3)


def make_bold(data, affine, chunks):
    bold = as_image(nib.Nifti1Image(data, affine), chunks=chunks)
    return bold.assign_coords(condition=("time", CONDITIONS[: data.shape[3]]))


def reference_moments(data, affine, fwhm, conditions=None):
    """nilearn-smoothed contrast volumes -> float64 (mean, m2, n, max |x|) per condition."""
    conditions = CONDITIONS[: data.shape[3]] if conditions is None else conditions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smoothed = np.asanyarray(nilearn_smooth(nib.Nifti1Image(data, affine), fwhm).dataobj)
    out = []
    for cond in ("face", "house"):
        x = smoothed[..., conditions == cond].astype(np.float64)
        with np.errstate(invalid="ignore"):  # no volume of cond (a moment group): NaN
            mean = x.mean(axis=-1) if x.shape[-1] else np.full(x.shape[:-1], np.nan)
        scale = float(np.abs(x).max()) if x.size else 0.0
        out.append((mean, ((x - mean[..., None]) ** 2).sum(axis=-1), x.shape[-1], scale))
    return out


def assert_moments_match(got_mean, got_m2, mean, m2, n, scale, dtype):
    """Moments of volumes smoothed in ``dtype`` equal the reference's to its rounding.

    The pass smooths with matrix products (``smooth_array``): each smoothed value
    is within a few units of ``dtype``'s rounding (eps * ``scale``) of nilearn's,
    so the mean is too, and the sum of squared deviations within
    2 * sqrt(n * m2) times that (plus its square).
    """
    err = 8 * np.finfo(dtype).eps * scale
    np.testing.assert_allclose(got_mean, mean, rtol=0, atol=err + 1e-12 * scale)
    np.testing.assert_allclose(
        got_m2, m2, rtol=1e-9, atol=2 * np.sqrt(n * m2.max()) * err + n * err**2 + 1e-12
    )


@st.composite
def problems(draw):
    shape = tuple(draw(st.integers(1, n)) for n in (9, 8, 6))
    n_t = draw(st.integers(6, 24))
    sizes = [draw(st.integers(max(1, -(-n // 3)), n)) for n in (*shape, n_t)]
    return {
        "shape": shape,
        "n_t": n_t,
        "chunks": dict(zip(("x", "y", "z", "time"), sizes, strict=True)),
        "dtype": draw(st.sampled_from(["int16", "float32", "float64"])),
        "non_finite": draw(st.booleans()),
        "fwhm": draw(st.sampled_from([None, 3.0, 6.0, (4.0, None, 9.0)])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def random_data(problem):
    rng = np.random.default_rng(problem["seed"])
    size = (*problem["shape"], problem["n_t"])
    if problem["dtype"] == "int16":
        data = rng.integers(900, 1100, size=size).astype(np.int16)
    else:
        data = rng.normal(1000, 20, size=size).astype(problem["dtype"])
        if problem["non_finite"]:
            bad = rng.random(size) < 0.05
            data[bad] = rng.choice([np.nan, np.inf, -np.inf], size=int(bad.sum()))
    affine = np.diag([*rng.uniform(1.5, 4, size=3), 1.0])
    return data, affine


@given(problem=problems())
def test_random_pass_matches_references_any_chunking(problem):
    data, affine = random_data(problem)
    bold = make_bold(data, affine, problem["chunks"])
    box = (slice(1, None), slice(0, 3), slice(None))
    got = contrast_pass(bold, contrast=("face", "house"), fwhm=problem["fwhm"], box=box).compute()

    assert got.n_volumes == data.shape[3]
    # NaN/inf as 0, as nilearn's smooth_img sets them before its mean_img
    want_total = np.where(np.isfinite(data), data, 0).sum(axis=3, dtype=np.float64)
    np.testing.assert_allclose(got.total, want_total, rtol=1e-12)
    assert got.n_nonfinite == data.size - np.isfinite(data).sum()
    dtype = smoothing_dtype(data.dtype)
    references = reference_moments(data, affine, problem["fwhm"])
    for g, (mean, m2, n, scale) in enumerate(references):
        moments = got.contrast[g]
        assert moments.count == n
        assert_moments_match(moments.mean, moments.m2, mean, m2, n, scale, dtype)
    kept = np.concatenate(got.box_blocks, axis=3)
    np.testing.assert_array_equal(kept, data[box])
    assert kept.dtype == data.dtype


@settings(max_examples=15)
@given(problem=problems(), n_groups=st.integers(2, 4), group_seed=st.integers(0, 2**16))
def test_moments_per_group_match_references_any_chunking(problem, n_groups, group_seed):
    """Moment groups (e.g. runs): each group's moments are those of its volumes alone,
    the merged ones those of every volume."""
    data, affine = random_data(problem)
    bold = make_bold(data, affine, problem["chunks"])
    n_t = data.shape[3]
    groups = np.random.default_rng(group_seed).integers(0, n_groups, size=n_t)
    got = contrast_pass(
        bold, contrast=("face", "house"), fwhm=problem["fwhm"], groups=groups
    ).compute()
    assert len(got.groups) == groups.max() + 1
    dtype = smoothing_dtype(data.dtype)
    conditions = CONDITIONS[:n_t]
    for g, pair in enumerate(got.groups):
        inside = groups == g
        references = reference_moments(
            data[..., inside], affine, problem["fwhm"], conditions[inside]
        )
        for c, (mean, m2, n, scale) in enumerate(references):
            assert pair[c].count == n
            if n == 0:  # no volume of the condition in the group: zero maps
                assert not pair[c].mean.any() and not pair[c].m2.any()
                continue
            assert_moments_match(pair[c].mean, pair[c].m2, mean, m2, n, scale, dtype)
    for c, (mean, m2, n, scale) in enumerate(reference_moments(data, affine, problem["fwhm"])):
        assert got.contrast[c].count == n
        assert_moments_match(got.contrast[c].mean, got.contrast[c].m2, mean, m2, n, scale, dtype)


@settings(max_examples=20)
@given(problem=problems(), pick=st.integers(0, 2**16), n_groups=st.integers(1, 3))
def test_a_condition_of_one_volume_any_chunking(problem, pick, n_groups):
    """One face volume (Student's t-test is defined with it): its moments are its smoothed
    values with m2 = 0 exactly, in the merged moments and in its moment group."""
    data, affine = random_data(problem)
    n_t = data.shape[3]
    conditions = np.where(CONDITIONS[:n_t] == "face", "rest", CONDITIONS[:n_t])
    faces = np.flatnonzero(CONDITIONS[:n_t] == "face")
    one = int(faces[pick % faces.size])
    conditions[one] = "face"
    bold = make_bold(data, affine, problem["chunks"]).assign_coords(condition=("time", conditions))
    groups = np.random.default_rng(pick).integers(0, n_groups, size=n_t)
    got = contrast_pass(
        bold, contrast=("face", "house"), fwhm=problem["fwhm"], groups=groups
    ).compute()
    dtype = smoothing_dtype(data.dtype)
    references = reference_moments(data, affine, problem["fwhm"], conditions)
    assert [m.count for m in got.contrast] == [1, int((conditions == "house").sum())]
    for c, (mean, m2, n, scale) in enumerate(references):
        assert_moments_match(got.contrast[c].mean, got.contrast[c].m2, mean, m2, n, scale, dtype)
    face = got.contrast[0]
    assert np.isfinite(face.mean).all() and (face.m2 == 0).all()
    alone = got.groups[groups[one]][0]
    assert alone.count == 1
    np.testing.assert_array_equal(alone.mean, face.mean)
    assert (alone.m2 == 0).all()


def test_one_group_gives_the_bits_of_no_groups(haxby):
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="time=100")
    plain = contrast_pass(bold, contrast=("face", "house"), fwhm=6.0).compute()
    one = contrast_pass(
        bold, contrast=("face", "house"), fwhm=6.0, groups=np.zeros(1452, int)
    ).compute()
    for a, b in zip(plain.contrast, one.contrast, strict=True):
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.m2, b.m2)
    assert len(one.groups) == 1 and one.groups[0] == one.contrast
    with pytest.raises(InvalidParameterError, match=r"groups: expected 1452 integers >= 0"):
        contrast_pass(bold, contrast=("face", "house"), fwhm=6.0, groups=np.zeros(10, int))
    with pytest.raises(InvalidParameterError, match=r"groups: expected 1452 integers >= 0"):
        contrast_pass(bold, contrast=("face", "house"), fwhm=6.0, groups=-np.ones(1452, int))


def test_pass_on_real_haxby_matches_nilearn(haxby):
    img = nib.load(haxby.bold)
    data = np.asanyarray(img.dataobj)
    labels = np.loadtxt(haxby.labels, dtype=str, skiprows=1)[:, 0]
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="time=100")
    got = contrast_pass(bold, contrast=("face", "house"), fwhm=6.0).compute()
    references = reference_moments(data, img.affine, 6.0, conditions=labels)
    for g, (mean, m2, n, scale) in enumerate(references):
        moments = got.contrast[g]
        assert moments.count == n == 108
        assert_moments_match(moments.mean, moments.m2, mean, m2, n, scale, np.float32)
    np.testing.assert_allclose(got.total, data.sum(axis=3, dtype=np.float64), rtol=1e-12)
    assert got.box is None and got.box_blocks == []


def test_building_the_pass_reads_nothing(haxby):
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="x=13,time=200")
    with raise_if_dask_computes():
        graph = contrast_pass(bold, contrast=("face", "house"), fwhm=6.0, box=None)
    assert [m.count for m in graph.compute().contrast] == [108, 108]


def test_pass_errors(haxby):
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels)
    with pytest.raises(ConditionError, match=r"unknown condition\(s\) \['dog'\]"):
        contrast_pass(bold, contrast=("face", "dog"), fwhm=6.0)
    with pytest.raises(InvalidParameterError, match="fwhm"):
        contrast_pass(bold, contrast=("face", "house"), fwhm=-1.0)
    with pytest.raises(InvalidParameterError, match="expected a 3D array"):
        roi_box(np.ones((2, 2)), grow_voxels=(1, 1))


def test_roi_box_grows_and_clips():
    mask = np.zeros((10, 8, 6), dtype=bool)
    assert roi_box(mask, grow_voxels=(1, 1, 1)) is None
    mask[4:6, 3, 5] = True
    assert roi_box(mask, grow_voxels=(2, 4, 1)) == (slice(2, 8), slice(0, 8), slice(4, 6))


# -- the box holds everything the ROI signals need ------------------------------------------
@st.composite
def box_problems(draw):
    return {
        "shape": tuple(draw(st.integers(3, n)) for n in (12, 11, 9)),
        "n_t": draw(st.integers(6, 10)),
        "iterations": draw(st.integers(0, 2)),
        "connectivity": draw(st.sampled_from([1, 3])),
        "fwhm": draw(st.sampled_from([None, 4.0, 7.0, (9.0, 3.0, None)])),
        "time_chunk": draw(st.integers(1, 6)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def box_case(problem: dict):
    """A problem's data, affine, mask and an atlas of 1-3 labels within the dilated mask."""
    rng = np.random.default_rng(problem["seed"])
    shape, n_t = problem["shape"], problem["n_t"]
    data = rng.normal(100, 10, size=(*shape, n_t)).astype(np.float32)
    affine = np.diag([*rng.uniform(2, 4, size=3), 1.0])
    mask = rng.random(shape) < 0.05
    mask[tuple(rng.integers(0, s) for s in shape)] = True
    structure = ndimage.generate_binary_structure(3, problem["connectivity"])
    grown = ndimage.binary_dilation(mask, structure, iterations=problem["iterations"] or 1)
    grown = grown if problem["iterations"] else mask
    atlas = np.where(grown & (rng.random(shape) < 0.7), rng.integers(1, 4, size=shape), 0)
    atlas.flat[np.flatnonzero(grown)[0]] = 1
    return data, affine, mask, atlas


@given(problem=box_problems())
def test_signals_from_the_box_equal_whole_volume_signals(problem):
    data, affine, mask, atlas = box_case(problem)
    sigma = fwhm_to_sigma_voxels(affine, problem["fwhm"])
    grow = [problem["iterations"] + gaussian_radius(s) for s in sigma]
    box = roi_box(mask, grow_voxels=grow)

    bold = make_bold(data, affine, {"time": problem["time_chunk"]})
    atlas_img = nib.Nifti1Image(atlas.astype(np.int32), affine)
    kept = contrast_pass(bold, contrast=("face", "house"), fwhm=problem["fwhm"], box=box)
    sub = box_image(kept.compute(), bold)
    assert sub.shape == (*[s.stop - s.start for s in box], data.shape[-1])
    sub_atlas = like_image(atlas[box].astype(np.int32), sub)
    for strategy in STRATEGIES:
        linear = strategy in ("mean", "sum")
        kwargs = {"fwhm": problem["fwhm"]} if linear else {}
        full_src = bold if linear else smooth_img(bold, fwhm=problem["fwhm"])
        box_src = sub if linear else smooth_img(sub, fwhm=problem["fwhm"])
        want = extract_signals(full_src, atlas_img, strategy=strategy, **kwargs).values
        got = extract_signals(box_src, sub_atlas, strategy=strategy, **kwargs).values
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=strategy)


# -- the memory model a batch uses -------------------------------------------------------
def test_memory_plan_shrinks_blocks_and_drops_the_box_for_small_workers(tmp_path):
    """Small workers get blocks of fewer whole volumes, and no ROI box if it does not fit."""
    from roidask import onepass

    path, mask_path = tmp_path / "bold.nii", tmp_path / "mask.nii.gz"
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((40, 64, 64, 300), np.int16), affine), path)
    mask = np.zeros((40, 64, 64), np.uint8)
    mask[10:20, 20:40, 20:30] = 1
    nib.save(nib.Nifti1Image(mask, affine), mask_path)
    sources = [NiftiSource.open(path)]
    inside = mask != 0
    box = box_bytes(pass_box(inside, affine, fwhm=6.0, dilation_iterations=1), 300, np.int16)

    def plan(budget):
        return memory_plan(sources, inside, budget, fwhm=6.0, dilation_iterations=1)

    assert box > 2**20
    assert plan(None) == MemoryPlan(None, None)  # no memory limit
    assert plan(4 * 2**30) == MemoryPlan(None, None)  # all fits
    small = plan(80 * 2**20)  # room for 2 x box and 8-volume blocks
    assert set(small.chunks) == {"time"} and 8 <= small.chunks["time"] < 51
    assert small.box_max_bytes is None
    # 55 MiB: next to the box only blocks of < 8 volumes would fit; without it, more.
    smaller = plan(55 * 2**20)
    assert smaller.box_max_bytes == 0 and 8 <= smaller.chunks["time"] < small.chunks["time"]
    assert plan(2**20) == MemoryPlan({"time": 1}, 0)  # >= one volume
    # moment groups (runs): 4 more float64 maps per group in the running partial
    per_run = plan(80 * 2**20)
    runs = memory_plan(
        sources, inside, 80 * 2**20, fwhm=6.0, dilation_iterations=1, moment_groups=12
    )
    assert onepass.partial_maps(12) - onepass.partial_maps(1) == 4 * 11 + 2 * 4
    assert runs.chunks["time"] < per_run.chunks["time"]
    with pytest.MonkeyPatch.context() as mp:  # a box the pipeline never keeps takes no room
        mp.setattr(onepass, "BOX_MAX_BYTES", box - 1)
        unkept = plan(80 * 2**20)
    assert unkept.box_max_bytes == 0 and unkept.chunks["time"] > small.chunks["time"]


# -- the temporary file instead of the box --------------------------------------------------
@settings(max_examples=12)
@given(problem=box_problems(), edge=st.integers(2, 5))
def test_signals_from_the_temporary_file_equal_whole_volume_signals(
    problem, edge, tmp_path_factory, monkeypatch
):
    """The pass writes the tiles near the mask; signals read from them are the whole
    volumes' (every strategy), and every tile holds the data of every volume."""
    monkeypatch.setattr(spill_module, "TILE_EDGE", edge)
    data, affine, mask, atlas = box_case(problem)
    tiles = pass_tiles(
        mask, affine, fwhm=problem["fwhm"], dilation_iterations=problem["iterations"]
    )
    bold = make_bold(data, affine, {"time": problem["time_chunk"]})
    atlas_img = nib.Nifti1Image(atlas.astype(np.int32), affine)
    with spill_file(
        tmp_path_factory.mktemp("spill"), shape=data.shape, dtype=data.dtype, kept=tiles
    ) as spill:
        result = contrast_pass(
            bold, contrast=("face", "house"), fwhm=problem["fwhm"], spill=spill
        ).compute()
        for tile in zip(*np.nonzero(tiles), strict=True):
            np.testing.assert_array_equal(
                spill.read(tile, 0, data.shape[-1]), data[(*spill.tile_slices(tile), slice(None))]
            )
        source = spill_image(result, bold)
        for strategy in STRATEGIES:
            linear = strategy in ("mean", "sum")
            kwargs = {"fwhm": problem["fwhm"]} if linear else {}
            full_src = bold if linear else smooth_img(bold, fwhm=problem["fwhm"])
            tile_src = source if linear else smooth_img(source, fwhm=problem["fwhm"])
            want = extract_signals(full_src, atlas_img, strategy=strategy, **kwargs).values
            got = extract_signals(tile_src, atlas_img, strategy=strategy, **kwargs).values
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=strategy)


@given(
    shape=st.tuples(*(st.integers(1, n) for n in (14, 12, 10))),
    voxels=st.tuples(*(st.sampled_from([1.5, 2.0, 3.0, 4.0]) for _ in range(3))),
    fwhm=st.sampled_from([None, 4.0, 6.0]),
    iterations=st.integers(0, 2),
    edge=st.integers(2, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_pass_tiles_are_the_tiles_near_the_mask(
    shape, voxels, fwhm, iterations, edge, seed, monkeypatch
):
    """(reference, ours): tiles holding a voxel of the mask grown by the dilation and the
    kernel radius per axis (scipy's maximum filter) vs :func:`pass_tiles`."""
    monkeypatch.setattr(spill_module, "TILE_EDGE", edge)
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.03
    affine = np.diag([*voxels, 1.0])
    sigma = fwhm_to_sigma_voxels(affine, fwhm)
    grow = [iterations + gaussian_radius(s) for s in sigma]
    grown = ndimage.maximum_filter(mask, size=[2 * g + 1 for g in grow], mode="constant")
    bounds = spill_module.tile_grid(shape)
    want = np.zeros([len(b) - 1 for b in bounds], dtype=bool)
    for tile in np.ndindex(*want.shape):
        sl = tuple(slice(b[i], b[i + 1]) for b, i in zip(bounds, tile, strict=True))
        want[tile] = grown[sl].any()
    got = pass_tiles(mask, affine, fwhm=fwhm, dilation_iterations=iterations)
    np.testing.assert_array_equal(got, want)


def test_kept_voxels_box_in_memory_or_tiles_on_disk():
    mask = np.zeros((20, 30, 10), dtype=bool)
    mask[5:8, 10:12, 3:6] = True
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    options = {"n_volumes": 100, "dtype": np.int16, "fwhm": 6.0, "dilation_iterations": 1}
    box = pass_box(mask, affine, fwhm=6.0, dilation_iterations=1)
    size = box_bytes(box, 100, np.int16)
    assert kept_voxels(mask, affine, **options, box_max_bytes=size) == KeptVoxels(box=box)
    spilled = kept_voxels(mask, affine, **options, box_max_bytes=size - 1)
    assert spilled.box is None
    np.testing.assert_array_equal(
        spilled.tiles, pass_tiles(mask, affine, fwhm=6.0, dilation_iterations=1)
    )
    assert kept_voxels(mask, affine, **options, box_max_bytes=0).tiles is not None
    assert kept_voxels(mask, affine, **options) == KeptVoxels(box=box)  # BOX_MAX_BYTES
    assert kept_voxels(np.zeros_like(mask), affine, **options) == KeptVoxels()


def test_pass_refuses_a_temporary_file_of_another_series(haxby, tmp_path):
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels)
    with spill_file(
        tmp_path,
        shape=(40, 20, 1, 10),
        dtype=np.int16,
        kept=np.ones([len(b) - 1 for b in spill_module.tile_grid((40, 20, 1))], bool),
    ) as spill:
        with pytest.raises(InvalidParameterError, match=r"spill: a file for \(40, 20, 1, 10\)"):
            contrast_pass(bold, contrast=("face", "house"), fwhm=6.0, spill=spill)
