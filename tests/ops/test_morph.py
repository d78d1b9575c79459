"""Binary morphology across chunks: equal to scipy.ndimage on the whole array."""

from __future__ import annotations

import itertools

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from helpers.lazy import raise_if_dask_computes
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from roidask.exceptions import ImageDimensionError, InvalidParameterError
from roidask.ops import morph

OPS = ("binary_dilation", "binary_erosion", "binary_opening", "binary_closing")
RANK = {6: 1, 18: 2, 26: 3}


def as_img(data, chunks=-1, affine=None) -> xr.DataArray:
    affine = np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine
    arr = da.from_array(np.asarray(data), chunks=chunks)
    return xr.DataArray(arr, dims=("x", "y", "z"), attrs={"affine": np.asarray(affine).tolist()})


@st.composite
def partition(draw, n: int) -> tuple[int, ...]:
    """Chunk sizes along an axis of n voxels (1-voxel chunks included)."""
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    return tuple(b - a for a, b in itertools.pairwise([0, *cuts, n]))


def _boxes(rng, shape, n_boxes: int) -> np.ndarray:
    """Union of random boxes (with a few holes): structure that survives erosion."""
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n_boxes):
        lo = [rng.integers(0, n) for n in shape]
        hi = [lo_ + rng.integers(1, max(2, n // 2 + 2)) for lo_, n in zip(lo, shape, strict=True)]
        mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    mask[rng.random(shape) < 0.05] = False
    return mask


@st.composite
def chunked_masks(draw, max_side: int = 12, densities=(0.2, 0.4, 0.6, 0.8)):
    """Random noise masks or unions of boxes, with chunks cutting every axis."""
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        mask = _boxes(rng, shape, draw(st.integers(1, 6)))
    else:
        mask = rng.random(shape) < draw(st.sampled_from(densities))
    chunks = tuple(draw(partition(n)) for n in shape)
    return mask, chunks


@pytest.fixture(scope="module")
def seed_roi(seed_maps, haxby_arrays):
    """The seed's thresholded map (-log10 p >= 5) AND the slice's mask, and the affine."""
    return seed_maps["roi_mask"], haxby_arrays[1]


@pytest.mark.parametrize(
    "chunks",
    [-1, (1, 20, 1), (40, 1, 1), (7, 3, 1), ((20, 1, 19), (2, 17, 1), (1,))],
    ids=["whole", "x-slices", "y-slices", "7x3", "irregular"],
)
def test_seed_morphology_equals_scipy(seed_roi, chunks):
    roi, affine = seed_roi
    img = as_img(roi.astype(np.uint8), chunks, affine)
    dilated = morph.binary_dilation(img)
    np.testing.assert_array_equal(ndimage.binary_dilation(roi), dilated.values)
    assert int(ndimage.label(dilated.values)[1]) == 5
    for name in OPS[1:]:
        np.testing.assert_array_equal(
            getattr(ndimage, name)(roi), getattr(morph, name)(img).values
        )
    np.testing.assert_array_equal(
        ndimage.binary_fill_holes(ndimage.binary_dilation(roi)),
        morph.binary_fill_holes(dilated).values,
    )


@given(
    chunked_masks(),
    st.sampled_from(OPS),
    st.sampled_from([6, 18, 26]),
    st.integers(1, 3),
    st.sampled_from([0, 1]),
)
def test_random_masks_equal_scipy_for_any_chunking(
    case, name, connectivity, iterations, border_value
):
    mask, chunks = case
    structure = ndimage.generate_binary_structure(3, RANK[connectivity])
    expected = getattr(ndimage, name)(
        mask, structure=structure, iterations=iterations, border_value=border_value
    )
    lazy = getattr(morph, name)(
        as_img(mask, chunks),
        connectivity=connectivity,
        iterations=iterations,
        border_value=border_value,
    )
    assert lazy.chunks == chunks  # the input's chunks are kept
    np.testing.assert_array_equal(expected, lazy.values)


@given(chunked_masks(densities=(0.5, 0.7, 0.85)), st.sampled_from([6, 18, 26]))
def test_random_fill_holes_equal_scipy_for_any_chunking(case, connectivity):
    mask, chunks = case
    structure = ndimage.generate_binary_structure(3, RANK[connectivity])
    expected = ndimage.binary_fill_holes(mask, structure)
    got = morph.binary_fill_holes(as_img(mask, chunks), connectivity=connectivity).values
    np.testing.assert_array_equal(expected, got)


@pytest.mark.parametrize("chunks", [1, 2, (3, 1, 4)])
def test_fill_holes_global_hole_and_tunnel(chunks):
    # a hollow box spanning every chunk: its inside is one hole; a tunnel from the
    # cavity to the array's border (through many chunks) makes it not a hole.
    shell = np.zeros((9, 9, 9), dtype=bool)
    shell[1:8, 1:8, 1:8] = True
    shell[2:7, 2:7, 2:7] = False
    expected = ndimage.binary_fill_holes(shell)
    assert expected.sum() > shell.sum()
    got = morph.binary_fill_holes(as_img(shell, chunks)).values
    np.testing.assert_array_equal(expected, got)
    tunnel = shell.copy()
    tunnel[4, 4, 0:3] = False
    expected = ndimage.binary_fill_holes(tunnel)
    np.testing.assert_array_equal(tunnel, expected)  # nothing to fill
    np.testing.assert_array_equal(expected, morph.binary_fill_holes(as_img(tunnel, chunks)).values)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("iterations", [1, 2])
def test_opening_and_closing_near_chunk_borders(axis, iterations):
    # bars that just survive an opening, and gaps that a closing just fills, placed at
    # every offset from a chunk border: the two steps need twice the overlap of one.
    length = 2 * iterations + 1
    shape = [5, 5, 5]
    shape[axis] = 40
    bars = np.zeros(shape, dtype=bool)
    for start in range(1, 40 - length, length + 2):
        index = [slice(1, 4)] * 3
        index[axis] = slice(start, start + length)
        bars[tuple(index)] = True
    line = np.zeros((3, 3, 3), dtype=bool)
    line[1, 1, 1] = True
    line[tuple(slice(None) if a == axis else 1 for a in range(3))] = True
    for chunk in (2, 3, 4, 5):
        chunks = [5, 5, 5]
        chunks[axis] = chunk
        img = as_img(bars, tuple(chunks))
        for name in ("binary_opening", "binary_closing"):
            expected = getattr(ndimage, name)(bars, structure=line, iterations=iterations)
            got = getattr(morph, name)(img, structure=line, iterations=iterations)
            np.testing.assert_array_equal(expected, got.values)
    assert ndimage.binary_opening(bars, structure=line, iterations=iterations).any()


@pytest.mark.parametrize(
    "structure",
    [np.ones((5, 1, 1), dtype=bool), np.ones((2, 2, 2), dtype=bool), np.ones((1, 3, 5))],
    ids=["x-line-5", "even-2x2x2", "plate-1x3x5"],
)
@pytest.mark.parametrize("name", OPS)
def test_custom_structures_and_chunks_smaller_than_the_overlap(rng, structure, name):
    mask = rng.random((11, 8, 9)) < 0.55
    expected = getattr(ndimage, name)(mask, structure=structure, iterations=3)
    lazy = getattr(morph, name)(as_img(mask, (1, 2, 3)), structure=structure, iterations=3)
    assert lazy.chunks == ((1,) * 11, (2,) * 4, (3,) * 3)
    np.testing.assert_array_equal(expected, lazy.values)


def test_building_graphs_computes_and_reads_nothing(haxby):
    with raise_if_dask_computes():
        results = [getattr(morph, name)(haxby.mask, iterations=2) for name in OPS]
        results.append(morph.binary_fill_holes(haxby.mask, connectivity=26))
    mask = nib.load(haxby.mask)
    for res in results:
        assert isinstance(res.data, da.Array)
        assert res.dtype == bool
        assert res.attrs["affine"] == mask.affine.tolist()
    np.testing.assert_array_equal(
        ndimage.binary_dilation(mask.get_fdata() != 0, iterations=2), results[0].values
    )


def test_non_binary_mask_names_the_values():
    values = np.zeros((4, 5, 6), dtype=np.int16)
    values[0, 0, 0], values[1, 1, 1] = 7, -1  # both in the first chunk
    dilated = morph.binary_dilation(as_img(values, 2))
    with pytest.raises(InvalidParameterError, match=r"mask_img: .*binary mask.*-1, 7"):
        dilated.compute()


def test_4d_image_is_refused(haxby):
    for name in (*OPS, "binary_fill_holes"):
        with pytest.raises(ImageDimensionError, match=r"mask_img( \S+)?: got a 4D image"):
            getattr(morph, name)(haxby.bold)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iterations": 0}, r"iterations: expected an integer >= 1 .*got 0"),
        ({"iterations": 1.5}, r"iterations: expected an integer >= 1 .*got 1\.5"),
        ({"iterations": True}, r"iterations: .*got True"),
        ({"border_value": 2}, r"border_value: expected 0 or 1 .*got 2"),
        ({"connectivity": 8}, r"connectivity: expected 6, 18 or 26 .*got 8"),
        ({"connectivity": 6, "structure": np.ones((3, 3, 3))}, r"give one or the other"),
        ({"structure": np.ones((3, 3))}, r"structure: expected a non-empty 3D array"),
    ],
)
def test_bad_parameters(kwargs, message):
    mask = as_img(np.ones((3, 3, 3), dtype=bool))
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match=message):
        morph.binary_dilation(mask, **kwargs)


def test_fill_holes_needs_a_labelling_structure():
    mask = as_img(np.ones((3, 3, 3), dtype=bool))
    with pytest.raises(InvalidParameterError, match=r"structure: .*3x3x3"):
        morph.binary_fill_holes(mask, structure=np.ones((5, 5, 5)))


@pytest.mark.parametrize("name", [*OPS, "binary_fill_holes"])
def test_docstring_describes_mask_img(name):
    doc = getattr(morph, name).__doc__
    assert "%(" not in doc
    assert "mask_img : ImageLike" in doc
