"""Connected components across chunks: same voxels and same numbering as scipy.ndimage.label."""

from __future__ import annotations

import itertools

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers.lazy import raise_if_dask_computes
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from roidask.exceptions import ImageDimensionError, InvalidParameterError
from roidask.ops.label import label, resolve_structure

RANK = {6: 1, 18: 2, 26: 3}


def as_img(data, chunks=-1, affine=None) -> xr.DataArray:
    affine = np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine
    arr = da.from_array(np.asarray(data), chunks=chunks)
    return xr.DataArray(arr, dims=("x", "y", "z"), attrs={"affine": np.asarray(affine).tolist()})


@st.composite
def partition(draw, n: int) -> tuple[int, ...]:
    """Chunk sizes along an axis of n voxels (1-voxel chunks included)."""
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    edges = [0, *cuts, n]
    return tuple(b - a for a, b in itertools.pairwise(edges))


@st.composite
def chunked_masks(draw, max_side: int = 9):
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    density = draw(st.sampled_from([0.15, 0.3, 0.5, 0.7]))
    seed = draw(st.integers(0, 2**32 - 1))
    mask = np.random.default_rng(seed).random(shape) < density
    chunks = tuple(draw(partition(n)) for n in shape)
    return mask, chunks


@pytest.fixture(scope="module")
def seed_masks(seed_maps, haxby_arrays):
    """The seed pipeline in nilearn/scipy: threshold 5 AND mask, dilated (5 components)."""
    return {
        "roi": seed_maps["roi_mask"],
        "dilated": seed_maps["dilated"],
        "affine": haxby_arrays[1],
    }


def test_scipy_numbers_components_by_first_voxel_in_c_order(rng):
    # The claim label() relies on, checked on scipy itself: label k+1's first voxel
    # (C order over x, y, z) comes after label k's.
    for _ in range(40):
        mask = rng.random(tuple(rng.integers(1, 12, 3))) < rng.uniform(0.1, 0.7)
        for rank in (1, 2, 3):
            labels, n = ndimage.label(mask, ndimage.generate_binary_structure(3, rank))
            present, first = np.unique(labels.ravel(), return_index=True)
            first = first[present > 0]
            assert present[present > 0].tolist() == list(range(1, n + 1))
            assert np.all(np.diff(first) > 0)


@pytest.mark.parametrize(
    "chunks",
    [-1, (1, 1, 1), (7, 3, 1), ((13, 1, 26), (1, 18, 1), (1,)), (40, 1, 1)],
    ids=["whole", "1-voxel", "7x3", "irregular", "y-slices"],
)
def test_seed_components_equal_scipy_with_numbering(seed_masks, chunks):
    dilated = seed_masks["dilated"]
    expected, n_expected = ndimage.label(dilated)
    assert n_expected == 5
    labels, labels_n = dask.compute(
        *label(as_img(dilated.astype(np.int16), chunks, seed_masks["affine"]))
    )
    np.testing.assert_array_equal(expected, labels.values)
    assert int(labels_n) == n_expected
    assert labels.dtype == np.int32
    # a user porting the seed's ``labels == 5`` gets the same region
    np.testing.assert_array_equal(expected == 5, labels.values == 5)


@given(chunked_masks(), st.sampled_from([6, 18, 26]))
def test_random_masks_equal_scipy_for_any_chunking(case, connectivity):
    mask, chunks = case
    expected, n = ndimage.label(mask, ndimage.generate_binary_structure(3, RANK[connectivity]))
    lazy, lazy_n = label(as_img(mask, chunks), connectivity=connectivity)
    assert lazy.chunks == tuple(chunks)
    labels, labels_n = dask.compute(lazy, lazy_n)
    np.testing.assert_array_equal(expected, labels.values)
    assert int(labels_n) == n


def _snake(shape: tuple[int, int, int]) -> np.ndarray:
    """One path visiting every (x, y) column with z-runs, crossing every chunk."""
    mask = np.zeros(shape, dtype=bool)
    nx, ny, _ = shape
    for x in range(0, nx, 2):
        ys = range(ny) if (x // 2) % 2 == 0 else range(ny - 1, -1, -1)
        for y in ys:
            mask[x, y, :] = True
        if x + 1 < nx:
            mask[x + 1, ys[-1], :] = True
    return mask


@pytest.mark.parametrize("chunks", [1, 2, (3, 1, 2)])
def test_one_component_spanning_all_chunks(chunks):
    mask = _snake((7, 6, 3))
    expected, n = ndimage.label(mask)
    assert n == 1
    labels, labels_n = dask.compute(*label(as_img(mask, chunks)))
    np.testing.assert_array_equal(expected, labels.values)
    assert int(labels_n) == 1
    # cutting the snake's last turn leaves its tail as component 2
    mask[6, 5, :] = False
    expected, n = ndimage.label(mask)
    assert n == 2
    np.testing.assert_array_equal(expected, label(as_img(mask, chunks))[0].values)


@pytest.mark.parametrize(("connectivity", "n_expected"), [(6, 5), (18, 4), (26, 3)])
def test_edge_and_corner_neighbours_across_chunk_corners(connectivity, n_expected):
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[2, 2, 2] = mask[3, 3, 3] = True  # corner neighbours across a chunk corner
    mask[2, 2, 5] = mask[3, 3, 5] = True  # edge neighbours across a chunk edge
    mask[0, 5, 0] = True  # alone
    expected, n = ndimage.label(mask, ndimage.generate_binary_structure(3, RANK[connectivity]))
    assert n == n_expected
    labels, labels_n = dask.compute(*label(as_img(mask, 3), connectivity=connectivity))
    np.testing.assert_array_equal(expected, labels.values)
    assert int(labels_n) == n_expected


def test_custom_structure_equals_scipy(rng):
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[:, 1, 1] = True  # x-lines only
    structure[0, 0, 0] = structure[2, 2, 2] = True  # one diagonal, both ways
    mask = rng.random((9, 7, 5)) < 0.5
    expected, n = ndimage.label(mask, structure)
    labels, labels_n = dask.compute(*label(as_img(mask, (2, 3, 1)), structure=structure))
    np.testing.assert_array_equal(expected, labels.values)
    assert int(labels_n) == n


def test_empty_and_full_masks():
    empty, empty_n = dask.compute(*label(as_img(np.zeros((5, 4, 3), dtype=bool), 2)))
    assert int(empty_n) == 0
    assert not empty.values.any()
    full, full_n = dask.compute(*label(as_img(np.ones((5, 4, 3), dtype=np.uint8), 2)))
    assert int(full_n) == 1
    assert (full.values == 1).all()


def test_building_the_graph_computes_and_reads_nothing(haxby):
    with raise_if_dask_computes():
        labels, n = label(haxby.mask, connectivity=26)
    assert isinstance(labels.data, da.Array)
    assert isinstance(n, da.Array) and n.shape == ()
    assert labels.dims == ("x", "y", "z")
    assert labels.attrs["affine"] == nib.load(haxby.mask).affine.tolist()
    expected, n_expected = ndimage.label(
        nib.load(haxby.mask).get_fdata() != 0, ndimage.generate_binary_structure(3, 3)
    )
    computed, computed_n = dask.compute(labels, n)
    np.testing.assert_array_equal(expected, computed.values)
    assert int(computed_n) == n_expected


def test_same_result_type_for_path_nibabel_and_xarray(haxby):
    img = nib.load(haxby.mask)
    from_xr = as_img(img.get_fdata(), 7, img.affine)
    results = [label(x)[0] for x in (haxby.mask, img, from_xr)]
    for res in results:
        assert isinstance(res, xr.DataArray)
        assert isinstance(res.data, da.Array)
    np.testing.assert_array_equal(results[0].values, results[2].values)
    np.testing.assert_array_equal(results[1].values, results[2].values)


def test_non_binary_mask_names_the_values():
    values = np.zeros((4, 4, 4))
    values[1, 1, 1], values[2, 2, 2] = 2.0, 0.5
    labels, _ = label(as_img(values, 2))  # lazy: the values are checked when computed
    with pytest.raises(InvalidParameterError, match=r"mask_img: expected a binary mask.*0\.5"):
        labels.compute()


def test_4d_image_is_refused(haxby):
    with pytest.raises(ImageDimensionError, match=r"mask_img( \S+)?: got a 4D image"):
        label(haxby.bold)


def _asymmetric() -> np.ndarray:
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1, 1, 1] = structure[2, 1, 1] = True
    return structure


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"connectivity": 4}, r"connectivity: expected 6, 18 or 26 .*got 4"),
        ({"connectivity": True}, r"connectivity: expected 6, 18 or 26"),
        ({"structure": np.ones((5, 5, 5))}, r"structure: .*3x3x3.*\(5, 5, 5\)"),
        ({"structure": np.ones((3, 3))}, r"structure: expected a non-empty 3D array"),
        ({"structure": np.full((3, 3, 3), 2)}, r"structure: expected 0/1 .*found \[2\]"),
        ({"structure": np.zeros((3, 3, 3))}, r"structure: has no True element"),
        ({"structure": _asymmetric()}, r"centrosymmetric"),
        ({"structure": np.ones((3, 3, 3)), "connectivity": 6}, r"give one or the other"),
    ],
)
def test_bad_structure_or_connectivity(kwargs, message):
    mask = as_img(np.ones((3, 3, 3), dtype=bool))
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match=message):
        label(mask, **kwargs)


def test_default_structure_is_scipy_default():
    np.testing.assert_array_equal(ndimage.generate_binary_structure(3, 1), resolve_structure())


def test_n_labels_survives_a_table(seed_masks):
    # computing labels and count together gives a plain int usable by pandas
    labels, labels_n = dask.compute(*label(as_img(seed_masks["dilated"], 5)))
    counts = pd.Series(labels.values.ravel()).value_counts().drop(0)
    assert len(counts) == int(labels_n) == 5
