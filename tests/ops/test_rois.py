"""ROI selection, hemisphere split, ROI table and atlas writing: references, files, bad input."""

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

from roidask.exceptions import (
    EmptyMaskWarning,
    GridMismatchError,
    ImageDimensionError,
    InvalidParameterError,
    OutputExistsError,
)
from roidask.ops.label import label
from roidask.ops.rois import (
    ROI_TABLE_COLUMNS,
    keep_largest,
    remove_small,
    roi_table,
    split_hemispheres,
    write_atlas,
)

AFFINE = np.array([[-2.0, 0, 0, 9.0], [0, 2.5, 0, -10.0], [0, 0, 3.0, 4.0], [0, 0, 0, 1]])


def as_img(data, chunks=-1, affine=None) -> xr.DataArray:
    affine = AFFINE if affine is None else affine
    arr = da.from_array(np.asarray(data), chunks=chunks)
    return xr.DataArray(arr, dims=("x", "y", "z"), attrs={"affine": np.asarray(affine).tolist()})


@st.composite
def partition(draw, n: int) -> tuple[int, ...]:
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    return tuple(b - a for a, b in itertools.pairwise([0, *cuts, n]))


@st.composite
def chunked_labels(draw, max_side: int = 9):
    """scipy labels of a random mask, sometimes remapped to sparse ids, and chunks."""
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels, n = ndimage.label(rng.random(shape) < draw(st.sampled_from([0.2, 0.4, 0.6])))
    if draw(st.booleans()):  # atlas-like ids, not 1..n
        ids = np.concatenate(([0], rng.choice(10**6, size=n, replace=False) + 1))
        labels = ids[labels]
    stat = rng.integers(-3, 4, size=shape).astype(np.float64)  # small ints: many ties
    stat[rng.random(shape) < 0.1] = np.nan
    return labels, stat, tuple(draw(partition(n)) for n in shape)


@pytest.fixture(scope="module")
def seed(seed_maps, haxby_arrays):
    """The seed pipeline in nilearn/scipy: -log10 p map and the 5-component atlas."""
    assert seed_maps["n_labels"] == 5
    return {
        "logp": seed_maps["logp"].astype(np.float64),
        "atlas": seed_maps["atlas"],
        "affine": haxby_arrays[1],
    }


# -- references (numpy only) --------------------------------------------------------------
def reference_table(labels, affine, stat=None) -> pd.DataFrame:
    rows = []
    for lab in np.unique(labels[labels > 0]):
        inside = labels == lab
        vox = np.argwhere(inside)  # C order
        com = affine[:3, :3] @ vox.mean(axis=0) + affine[:3, 3]
        row = {
            "label": lab,
            "n_voxels": len(vox),
            "volume_mm3": len(vox) * abs(np.linalg.det(affine[:3, :3])),
            "com_x_mm": com[0],
            "com_y_mm": com[1],
            "com_z_mm": com[2],
            "peak_x_mm": np.nan,
            "peak_y_mm": np.nan,
            "peak_z_mm": np.nan,
            "peak_value": np.nan,
            "mean_value": np.nan,
        }
        if stat is not None and not np.isnan(stat[inside]).all():
            values = stat[inside]
            first_max = np.nanargmax(values)  # first voxel in C order among the ties
            peak = affine[:3, :3] @ vox[first_max] + affine[:3, 3]
            row.update(
                peak_x_mm=peak[0],
                peak_y_mm=peak[1],
                peak_z_mm=peak[2],
                peak_value=values[first_max],
                mean_value=np.nanmean(values),
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(ROI_TABLE_COLUMNS))


def renumber_by_first_voxel(keys: np.ndarray, keep=None) -> np.ndarray:
    present, first = np.unique(keys.ravel(), return_index=True)
    first, present = first[present > 0], present[present > 0]
    if keep is not None:
        first, present = first[np.isin(present, keep)], present[np.isin(present, keep)]
    lut = dict(zip(present[np.argsort(first)].tolist(), range(1, present.size + 1), strict=True))
    return np.vectorize(lambda k: lut.get(k, 0), otypes=[np.int64])(keys)


def hemisphere_keys(labels: np.ndarray, affine) -> np.ndarray:
    ijk = np.indices(labels.shape).reshape(3, -1).T
    x_mm = (ijk @ affine[0, :3] + affine[0, 3]).reshape(labels.shape)
    return np.where(labels > 0, labels * 2 + (x_mm >= 0), 0)


def assert_tables_equal(expected: pd.DataFrame, got: pd.DataFrame, *, atol: float = 1e-9):
    """``atol=5e-4``: a written rois.tsv, whose mm columns are rounded to a micrometre."""
    assert list(got.columns) == list(ROI_TABLE_COLUMNS)
    pd.testing.assert_frame_equal(
        expected.reset_index(drop=True),
        got.reset_index(drop=True),
        check_dtype=False,
        rtol=1e-8,
        atol=atol,
    )
    assert got["label"].dtype == np.int64
    assert got["n_voxels"].dtype == np.int64


# -- table -----------------------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [-1, 1, (7, 3, 1)])
def test_seed_roi_table_equals_reference(seed, chunks):
    atlas, logp, affine = seed["atlas"], seed["logp"], seed["affine"]
    got = roi_table(as_img(atlas, chunks, affine), stat_img=as_img(logp, 5, affine))
    assert_tables_equal(reference_table(atlas, affine, logp), got)
    assert got["label"].tolist() == [1, 2, 3, 4, 5]
    assert got["n_voxels"].sum() == (atlas > 0).sum()


@given(chunked_labels())
def test_random_roi_tables_equal_reference_with_ties_and_nan(case):
    labels, stat, chunks = case
    if not labels.any():
        with pytest.warns(EmptyMaskWarning):
            assert len(roi_table(as_img(labels, chunks), stat_img=as_img(stat, 2))) == 0
        return
    got = roi_table(as_img(labels, chunks), stat_img=as_img(stat, 2))
    assert_tables_equal(reference_table(labels, AFFINE, stat), got)
    assert_tables_equal(reference_table(labels, AFFINE), roi_table(as_img(labels, chunks)))


def test_peak_ties_across_chunks_go_to_the_first_voxel():
    labels = np.zeros((4, 4, 4), dtype=np.int32)
    labels[1:4, 1:4, 1:4] = 3
    stat = np.zeros((4, 4, 4))
    stat[3, 1, 1] = stat[1, 3, 2] = stat[2, 2, 1] = 5.0  # three tied peaks in three chunks
    stat[1, 1, 1] = np.nan
    for chunks in (1, 2, (3, 1, 4)):
        table = roi_table(as_img(labels, chunks), stat_img=as_img(stat, chunks))
        row = table.iloc[0]
        peak = AFFINE[:3, :3] @ np.array([1, 3, 2]) + AFFINE[:3, 3]
        assert (row.peak_x_mm, row.peak_y_mm, row.peak_z_mm) == tuple(peak)
        assert row.peak_value == 5.0
        assert row.mean_value == pytest.approx(15.0 / 26)


def test_empty_labels_warn_and_give_an_empty_table():
    with pytest.warns(EmptyMaskWarning, match=r"labels_img: no labelled voxels"):
        table = roi_table(as_img(np.zeros((3, 4, 5), dtype=np.int32), 2))
    assert list(table.columns) == list(ROI_TABLE_COLUMNS)
    assert len(table) == 0
    assert table["label"].dtype == np.int64


def test_stat_img_on_another_grid_fails_before_computing(seed):
    atlas = as_img(seed["atlas"], 5, seed["affine"])
    with (
        raise_if_dask_computes(),
        pytest.raises(GridMismatchError, match=r"labels_img and stat_img"),
    ):
        roi_table(atlas, stat_img=as_img(seed["logp"], 5))


def test_4d_images_are_refused(haxby, seed):
    with pytest.raises(ImageDimensionError, match=r"labels_img( \S+)?: got a 4D image"):
        roi_table(haxby.bold)
    with pytest.raises(ImageDimensionError, match=r"stat_img( \S+)?: got a 4D image"):
        roi_table(as_img(seed["atlas"], 5, seed["affine"]), stat_img=haxby.bold)
    with pytest.raises(ImageDimensionError, match=r"labels_img( \S+)?: got a 4D image"):
        remove_small(haxby.bold, min_voxels=2)


def test_bad_label_values_are_listed():
    values = np.zeros((4, 4, 4))
    values[0, 0, 0], values[1, 1, 1] = -2.0, 1.5
    with pytest.raises(
        InvalidParameterError,
        match=r"labels_img: .*non-negative whole-number "
        r"labels.*-2\.0, 1\.5",
    ):
        roi_table(as_img(values, 2))
    with pytest.raises(InvalidParameterError, match=r"-1"):
        keep_largest(as_img(np.full((2, 2, 2), -1)), k=1)[0].compute()


# -- selection -------------------------------------------------------------------------------
@given(chunked_labels(), st.integers(1, 6), st.integers(1, 4))
def test_random_selection_equals_reference(case, min_voxels, k):
    labels, _, chunks = case
    img = as_img(labels, chunks)
    sizes = pd.Series(labels[labels > 0]).value_counts()
    big = sizes.index[sizes >= min_voxels].to_numpy()
    small, small_n = dask.compute(*remove_small(img, min_voxels=min_voxels))
    np.testing.assert_array_equal(renumber_by_first_voxel(labels, big), small.values)
    assert int(small_n) == len(big)

    present, first = np.unique(labels.ravel(), return_index=True)
    order = pd.DataFrame({"label": present, "first": first}).query("label > 0")
    order["size"] = order["label"].map(sizes)
    largest = order.sort_values(["size", "first"], ascending=[False, True])["label"][:k]
    kept, kept_n = dask.compute(*keep_largest(img, k=k))
    np.testing.assert_array_equal(renumber_by_first_voxel(labels, largest.to_numpy()), kept.values)
    assert int(kept_n) == len(largest)

    split, split_n = dask.compute(*split_hemispheres(img))
    expected = renumber_by_first_voxel(hemisphere_keys(labels, AFFINE))
    np.testing.assert_array_equal(expected, split.values)
    assert int(split_n) == expected.max()


def test_remove_small_of_label_is_scipy_numbering_of_the_kept_components(seed):
    atlas, affine = seed["atlas"], seed["affine"]
    mask = as_img(atlas > 0, (3, 7, 1), affine)
    kept, kept_n = dask.compute(*remove_small(label(mask)[0], min_voxels=40))
    sizes = np.bincount(atlas.ravel())
    expected, n = ndimage.label(np.isin(atlas, np.flatnonzero(sizes >= 40)[1:]))
    assert n == 3
    np.testing.assert_array_equal(expected, kept.values)
    assert int(kept_n) == 3
    biggest, _ = dask.compute(*keep_largest(label(mask)[0], k=1))
    np.testing.assert_array_equal(atlas == np.argmax(sizes[1:]) + 1, biggest.values == 1)


def test_split_puts_the_midline_on_the_right():
    # x_mm = 8 - 2 i: i < 4 is right (x > 0), i == 4 is the midline (x == 0), i > 4 left
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[0, 3] = 8.0
    labels = np.zeros((9, 3, 2), dtype=np.int16)
    labels[2:7, 1, :] = 1  # crosses the midline
    labels[0, 0, 0] = 2  # right only
    got, got_n = dask.compute(*split_hemispheres(as_img(labels, (4, 2, 1), affine)))
    assert int(got_n) == 3
    assert got.values[0, 0, 0] == 1  # first voxel in C order
    assert got.values[2, 1, 0] == got.values[4, 1, 1] == 2  # right incl. midline
    assert got.values[5, 1, 0] == got.values[6, 1, 1] == 3  # left
    table = roi_table(got)
    assert table["com_x_mm"].iloc[1] >= 0 > table["com_x_mm"].iloc[2]


def test_split_of_the_seed_atlas(seed):
    atlas, affine = seed["atlas"], seed["affine"]
    got, got_n = dask.compute(*split_hemispheres(as_img(atlas, 7, affine)))
    expected = renumber_by_first_voxel(hemisphere_keys(atlas, affine))
    np.testing.assert_array_equal(expected, got.values)
    assert int(got_n) == 6  # one of the 5 components crosses the midline


def test_building_selection_graphs_computes_and_reads_nothing(haxby):
    with raise_if_dask_computes():
        labels, _ = label(haxby.mask)
        results = [
            remove_small(labels, min_voxels=3),
            keep_largest(haxby.mask, k=1),
            split_hemispheres(labels),
        ]
    for res, n in results:
        assert isinstance(res.data, da.Array) and isinstance(n, da.Array)
        assert res.dtype == np.int32
        assert res.attrs["affine"] == nib.load(haxby.mask).affine.tolist()
    assert int(results[1][1]) == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda img: remove_small(img, min_voxels=0), r"min_voxels: expected an integer >= 1"),
        (lambda img: remove_small(img, min_voxels=2.5), r"min_voxels: .*got 2\.5"),
        (lambda img: keep_largest(img, k=0), r"k: expected an integer >= 1 .*got 0"),
        (lambda img: keep_largest(img, k=True), r"k: .*got True"),
    ],
)
def test_bad_selection_parameters(call, message):
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match=message):
        call(as_img(np.ones((2, 2, 2), dtype=np.int32)))


# -- atlas -----------------------------------------------------------------------------------
def test_write_atlas_nifti_and_tsv(seed, tmp_path):
    atlas, logp, affine = seed["atlas"], seed["logp"], seed["affine"]
    labels, _ = label(as_img(atlas > 0, (7, 3, 1), affine))
    nifti, tsv = write_atlas(labels, tmp_path / "rois.nii.gz", stat_img=as_img(logp, 9, affine))
    assert (nifti, tsv) == (tmp_path / "rois.nii.gz", tmp_path / "rois.tsv")
    img = nib.load(nifti)
    assert img.get_data_dtype() == np.int32
    np.testing.assert_allclose(affine, img.affine, atol=1e-5)
    np.testing.assert_array_equal(atlas, np.asanyarray(img.dataobj))
    written = pd.read_csv(tsv, sep="\t")
    assert_tables_equal(reference_table(atlas, affine, logp), written, atol=5e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rois.nii.gz", "rois.tsv"]


def test_write_atlas_refuses_to_overwrite_before_computing(seed, tmp_path):
    labels = as_img(seed["atlas"], 5, seed["affine"])
    write_atlas(labels, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas.nii.gz", "atlas.tsv"]
    with raise_if_dask_computes(), pytest.raises(OutputExistsError, match=r"atlas\.nii\.gz"):
        write_atlas(labels, tmp_path)
    empty = as_img(np.zeros_like(seed["atlas"]), 5, seed["affine"])
    with pytest.warns(EmptyMaskWarning):
        write_atlas(empty, tmp_path, overwrite=True)
    assert not np.asanyarray(nib.load(tmp_path / "atlas.nii.gz").dataobj).any()
    written = pd.read_csv(tmp_path / "atlas.tsv", sep="\t")
    assert list(written.columns) == list(ROI_TABLE_COLUMNS)
    assert len(written) == 0


def test_write_atlas_with_a_computed_table(seed, tmp_path):
    labels = as_img(seed["atlas"], 5, seed["affine"])
    table = roi_table(labels, stat_img=as_img(seed["logp"], 5, seed["affine"]))
    nifti, tsv = write_atlas(
        labels, tmp_path / "atlas.nii", table_path=tmp_path / "t.tsv", table=table
    )
    assert nifti.exists()
    assert_tables_equal(table, pd.read_csv(tsv, sep="\t"), atol=5e-4)
    with pytest.raises(InvalidParameterError, match=r"table and stat_img"):
        write_atlas(labels, tmp_path / "b.nii.gz", table=table, stat_img=labels)
    with pytest.raises(InvalidParameterError, match=r"table: expected a roi_table DataFrame"):
        write_atlas(labels, tmp_path / "c.nii.gz", table=table[["label"]])
    with pytest.raises(InvalidParameterError, match=r"out: folder .*missing.* does not exist"):
        write_atlas(labels, tmp_path / "missing" / "deeper")
