"""Tests of roidask.plotting: ortho cuts, stat maps, ROI overlays, boxplots, seed figures."""

from __future__ import annotations

import dask
import dask.array as da
import matplotlib
import matplotlib.image
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage, stats

from roidask import plotting
from roidask.exceptions import (
    ConditionError,
    EmptyMaskWarning,
    GridMismatchError,
    ImageDimensionError,
    InvalidParameterError,
)
from roidask.io import like_image

matplotlib.use("Agg")

SHAPE = (20, 24, 18)
# x flipped (LAS, like the Haxby file) and anisotropic voxels: 2 x 3 x 4 mm
AFFINE = np.array([[-2.0, 0, 0, 19.0], [0, 3.0, 0, -36.0], [0, 0, 4.0, -34.0], [0, 0, 0, 1.0]])
BLOB_IJK = (15, 12, 9)  # world x = 19 - 2 * 15 = -11 mm: left hemisphere


def _image(data, affine=AFFINE, name="img"):
    return xr.DataArray(
        da.from_array(np.asarray(data), chunks=-1),
        dims=("x", "y", "z"),
        name=name,
        attrs={"affine": np.asarray(affine).tolist()},
    )


def _blob(shape=SHAPE, centre=BLOB_IJK, sigma=2.0):
    grid = np.indices(shape, dtype=np.float64)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return np.exp(-d2 / (2 * sigma**2))


def _views(fig):
    return {ax.get_label(): ax for ax in fig.axes if ax.get_label() in plotting.VIEW_NAMES}


def _layer(ax, label):
    (img,) = [im for im in ax.images if im.get_label() == label]
    return img


def _texts(ax):
    return {t.get_text() for t in ax.texts}


def _check_png(path, fig):
    assert path.is_file() and path.stat().st_size > 5_000
    pixels = matplotlib.image.imread(path)
    w, h = fig.get_size_inches() * plotting.DPI
    assert pixels.shape[:2] == (int(h), int(w))
    assert pixels[..., :3].std() > 0.05  # not blank
    assert not list(path.parent.glob(".*.tmp-*"))  # atomic write left no temp file


@pytest.fixture(scope="module")
def synthetic():
    return _image(_blob(), name="blob")


@pytest.fixture(scope="module")
def haxby_maps(haxby_bold):
    """(mean EPI, -log10 p face vs house, integer label image) on the Haxby slice grid."""
    data = np.asarray(haxby_bold.values, dtype=np.float64)
    cond = haxby_bold.condition.values
    mean = like_image(data.mean(axis=-1), haxby_bold, name="mean")
    _, p = stats.ttest_ind(data[..., cond == "face"], data[..., cond == "house"], axis=-1)
    logp = -np.log10(p)
    logp[~np.isfinite(logp)] = 0.0
    labels, _ = ndimage.label(logp > 3)
    sizes = np.bincount(labels.ravel())[1:]
    big = np.argsort(sizes)[::-1][:2] + 1
    atlas = np.where(labels == big[0], 3, np.where(labels == big[1], 7, 0)).astype(np.int32)
    return mean, like_image(logp, haxby_bold, name="logp"), like_image(atlas, haxby_bold)


# -- world <-> voxel ----------------------------------------------------------------------
def test_world_voxel_helpers_match_the_affine_inverse(rng):
    oblique = np.eye(4)
    oblique[:3, :3] = rng.normal(size=(3, 3)) + 3 * np.eye(3)
    oblique[:3, 3] = rng.normal(size=3) * 50
    for affine in (AFFINE, oblique):
        ijk = rng.uniform(0, 20, size=(7, 3))
        xyz = plotting.voxel_to_world(affine, ijk)
        expected = (np.linalg.inv(affine) @ np.c_[xyz, np.ones(7)].T).T[:, :3]
        np.testing.assert_allclose(plotting.world_to_voxel(affine, xyz), expected, atol=1e-9)
        np.testing.assert_allclose(plotting.world_to_voxel(affine, xyz), ijk, atol=1e-9)
        np.testing.assert_allclose(xyz, (affine @ np.c_[ijk, np.ones(7)].T).T[:, :3])
    # a roidask image may stand in for its affine; single points keep shape (3,)
    np.testing.assert_allclose(
        plotting.world_to_voxel(_image(_blob()), [19.0, -36.0, -34.0]), [0, 0, 0], atol=1e-12
    )
    with pytest.raises(InvalidParameterError, match="coords_mm"):
        plotting.world_to_voxel(AFFINE, [1.0, 2.0])


def test_cut_coordinates_in_mm_map_to_the_nearest_voxel(haxby_bold):
    mean = haxby_bold.isel(time=0)
    affine = np.asarray(haxby_bold.attrs["affine"])
    # voxel (10, 5, 0) is at x = 60.45 - 31 = 29.45, y = -35.625 + 18.75 = -16.875, z = 0
    assert plotting.cut_voxel_indices(mean, [29.45, -16.875, 0.0]) == (10, 5, 0)
    # within half a voxel (3.1 / 3.75 mm) the nearest voxel does not change
    assert plotting.cut_voxel_indices(mean, [29.45 + 1.5, -16.875 - 1.8, 1.8]) == (10, 5, 0)
    assert plotting.cut_voxel_indices(mean, [29.45 - 1.6, -16.875, 0.0]) == (11, 5, 0)
    for ijk in [(0, 0, 0), (39, 19, 0), (22, 7, 0)]:
        xyz = plotting.voxel_to_world(affine, ijk)
        assert plotting.cut_voxel_indices(mean, xyz) == ijk


def test_cut_outside_the_volume_names_value_and_range(haxby_bold):
    mean = haxby_bold.isel(time=0)
    # the example's cut (-25, -37, -6) mm: y = -37 lies in the slab (edge -37.5 mm),
    # but z = -6 mm is outside this one-slice volume (3.75 mm thick, centred on 0)
    with pytest.raises(InvalidParameterError, match=r"z = -6 mm.*\[-1\.875, 1\.875\] mm"):
        plotting.plot_ortho(mean, cut_coords=[-25, -37, -6])
    with pytest.raises(InvalidParameterError, match=r"x = 70 mm.*\[-62, 62\] mm"):
        plotting.cut_voxel_indices(mean, [70, 0, 0])
    with pytest.raises(InvalidParameterError, match="cut_coords"):
        plotting.plot_ortho(mean, cut_coords=[0, 0])


def test_four_d_images_are_rejected(haxby_bold):
    with pytest.raises(ImageDimensionError, match="3D"):
        plotting.plot_ortho(haxby_bold)
    mean = haxby_bold.isel(time=0)
    with pytest.raises(ImageDimensionError, match="bg_img"):
        plotting.plot_stat_map(mean, haxby_bold, cut_coords=[0, 0, 0])
    with pytest.raises(ImageDimensionError, match="roi_img"):
        plotting.plot_roi(haxby_bold, mean)


# -- ortho cuts ---------------------------------------------------------------------------
def test_plot_ortho_synthetic_cuts_orientation_and_mm_axes(synthetic):
    vol = _blob()
    fig = plotting.plot_ortho(synthetic, title="blob")  # default cut: the peak
    assert len(fig.axes) == 3
    views = _views(fig)
    assert set(views) == set(plotting.VIEW_NAMES)
    i, j, k = BLOB_IJK
    # displayed arrays are (vertical, horizontal) with world coordinates increasing;
    # x is flipped in this affine, so columns of coronal/axial views are reversed
    expected = {
        "sagittal": vol[i, :, :].T,
        "coronal": vol[::-1, j, :].T,
        "axial": vol[::-1, :, k].T,
    }
    for name, arr in expected.items():
        np.testing.assert_array_equal(_layer(views[name], "image").get_array(), arr)
    # extents in mm: voxel edges, so anisotropic voxels keep their size (2, 3, 4 mm)
    assert _layer(views["coronal"], "image").get_extent() == pytest.approx([-20, 20, -36, 36])
    assert _layer(views["sagittal"], "image").get_extent() == pytest.approx([-37.5, 34.5, -36, 36])
    assert _layer(views["axial"], "image").get_extent() == pytest.approx([-20, 20, -37.5, 34.5])
    for ax in views.values():
        assert ax.get_aspect() == 1.0
    # neurological convention: the left-hemisphere blob is drawn left of x = 0
    coronal = _layer(views["coronal"], "image").get_array()
    col = int(np.argmax(coronal.max(axis=0)))
    assert -20 + 2 * col + 1 == pytest.approx(-11.0)  # column centre, mm
    for name in ("coronal", "axial"):
        assert {"L", "R"} <= _texts(views[name])
        texts = {t.get_text(): t.get_position()[0] for t in views[name].texts}
        assert texts["L"] < texts["R"]
    assert {"P", "A"} <= _texts(views["sagittal"])
    assert "neurological" in fig.get_supxlabel()
    assert "x = -11.0 mm" in views["sagittal"].get_title()
    assert views["coronal"].get_xlabel() == "x (mm)"
    assert fig.get_suptitle() == "blob"


def test_plot_ortho_is_independent_of_voxel_axis_order(synthetic):
    """A volume stored with permuted voxel axes (same world image) draws the same cuts."""
    vol = _blob()
    permuted_affine = AFFINE.copy()
    permuted_affine[:, :3] = AFFINE[:, [2, 0, 1]]  # voxel axes (z, x, y)
    permuted = _image(vol.transpose(2, 0, 1), permuted_affine)
    cut = [-11.0, 0.0, 2.0]
    a = _views(plotting.plot_ortho(synthetic, cut_coords=cut))
    b = _views(plotting.plot_ortho(permuted, cut_coords=cut))
    for name in plotting.VIEW_NAMES:
        ia, ib = _layer(a[name], "image"), _layer(b[name], "image")
        np.testing.assert_array_equal(ia.get_array(), ib.get_array())
        assert ia.get_extent() == pytest.approx(ib.get_extent())


def test_plot_ortho_default_cut_of_a_mask_is_its_centre_of_mass():
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:5, 3:8, 10:13] = True  # centre of mass voxel (3, 5, 11)
    fig = plotting.plot_ortho(_image(mask), colorbar=True)
    assert len(fig.axes) == 4  # three views and the colorbar
    xyz = plotting.voxel_to_world(AFFINE, (3, 5, 11))
    assert plotting.find_cut_coords(_image(mask)) == pytest.approx(tuple(xyz))
    assert f"x = {xyz[0]:.1f} mm" in _views(fig)["sagittal"].get_title()


def test_plot_ortho_computes_only_the_cuts(synthetic, tmp_path):
    touched = set()

    def record(block, block_info=None):
        touched.add(tuple(block_info[0]["chunk-location"]))
        return block

    chunked = da.from_array(_blob(), chunks=(5, 6, 6))  # 4 x 4 x 3 = 48 blocks
    lazy = synthetic.copy(data=chunked.map_blocks(record, dtype=chunked.dtype))
    computes = []

    def counting_scheduler(dsk, keys, **kwargs):
        computes.append(keys)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting_scheduler):
        fig = plotting.plot_ortho(lazy, cut_coords=[-11.0, 0.0, 2.0], out=tmp_path / "o.png")
    assert len(computes) == 1  # the three cuts in one pass
    # three planes through one block index per axis touch 48 - 3*3*2 = 30 blocks
    assert 0 < len(touched) <= 30
    _check_png(tmp_path / "o.png", fig)


def test_plot_ortho_single_slice_haxby(haxby_maps, tmp_path):
    mean, _, _ = haxby_maps
    out = tmp_path / "mean.png"
    fig = plotting.plot_ortho(mean, cut_coords=[-25, -37, 0], title="Mean EPI", out=out)
    views = _views(fig)
    assert len(views) == 3
    # one voxel thick through z: sagittal (y, z) and coronal (x, z) cuts are one row
    assert _layer(views["sagittal"], "image").get_array().shape == (1, 20)
    assert _layer(views["coronal"], "image").get_array().shape == (1, 40)
    assert _layer(views["axial"], "image").get_array().shape == (20, 40)
    # all views share one mm height, so the one-slice views are not squashed to nothing
    heights = {name: np.ptp(ax.get_ylim()) for name, ax in views.items()}
    assert heights["sagittal"] == pytest.approx(heights["axial"])
    assert {"L", "R"} <= _texts(views["coronal"]) and {"L", "R"} <= _texts(views["axial"])
    _check_png(out, fig)
    with pytest.raises(InvalidParameterError, match=r"\.png"):
        plotting.plot_ortho(mean, cut_coords=[0, 0, 0], out=tmp_path / "mean.jpg")


# -- stat maps ----------------------------------------------------------------------------
def test_plot_stat_map_threshold_hides_values_below_it(haxby_maps, tmp_path):
    mean, logp, _ = haxby_maps
    values = np.asarray(logp.values)
    threshold = 3.0
    out = tmp_path / "logp.png"
    fig = plotting.plot_stat_map(
        logp, mean, threshold=threshold, cut_coords=[0, 0, 0], title="p", out=out
    )
    assert len(fig.axes) == 4  # views + colorbar
    axial = _views(fig)["axial"]
    stat = _layer(axial, "stat").get_array()
    assert isinstance(stat, np.ma.MaskedArray)
    expected = values[::-1, :, 0].T  # x flipped in the Haxby affine
    np.testing.assert_array_equal(stat.data, expected)
    np.testing.assert_array_equal(stat.mask, np.abs(expected) < threshold)
    assert 0 < stat.mask.sum() < stat.size
    assert stat.min() >= threshold
    assert _layer(axial, "background").get_array().shape == (20, 40)
    assert _layer(axial, "stat").get_clim() == pytest.approx((0.0, values.max()))
    _check_png(out, fig)
    # no threshold: only exact zeros are transparent
    fig = plotting.plot_stat_map(logp, mean, cut_coords=[0, 0, 0], vmax=5)
    stat = _layer(_views(fig)["axial"], "stat").get_array()
    np.testing.assert_array_equal(stat.mask, expected == 0)
    assert _layer(_views(fig)["axial"], "stat").get_clim() == (0.0, 5.0)


def test_plot_stat_map_defaults_and_errors(synthetic):
    signed = _image(-_blob() * 4, name="t")  # negative peak
    fig = plotting.plot_stat_map(signed, synthetic, threshold=1.0)
    views = _views(fig)
    assert "x = -11.0 mm" in views["sagittal"].get_title()  # peak of |stat|
    assert _layer(views["axial"], "stat").get_clim() == pytest.approx((-4.0, 4.0))
    with pytest.raises(InvalidParameterError, match="threshold"):
        plotting.plot_stat_map(signed, synthetic, threshold=-1)
    other = _image(_blob(), affine=np.diag([2.0, 3.0, 4.0, 1.0]))
    with pytest.raises(GridMismatchError):
        plotting.plot_stat_map(signed, other)


# -- ROI overlays -------------------------------------------------------------------------
def test_plot_roi_labels_legend_and_default_cut(haxby_maps, tmp_path):
    mean, _, atlas = haxby_maps
    labels = np.asarray(atlas.values)
    out = tmp_path / "roi.png"
    fig = plotting.plot_roi(atlas, mean, title="ROIs", out=out)
    axial = _views(fig)["axial"]
    roi = _layer(axial, "roi").get_array()
    expected = labels[::-1, :, 0].T
    np.testing.assert_array_equal(roi.mask, expected == 0)
    # each label its own colour
    img = _layer(axial, "roi")
    colours = {lab: tuple(img.cmap(img.norm(roi[expected == lab][0]))) for lab in (3, 7)}
    assert colours[3] != colours[7]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["3", "7"]
    # default cut: inside the ROI, near its centre of mass
    ijk = plotting.cut_voxel_indices(atlas, plotting.find_cut_coords(atlas != 0))
    assert labels[ijk] != 0
    _check_png(out, fig)


def test_plot_roi_errors_and_empty_roi(synthetic):
    with pytest.raises(InvalidParameterError, match="non-integer"):
        plotting.plot_roi(_image(_blob()), synthetic)
    with pytest.warns(EmptyMaskWarning, match="no non-zero voxel"):
        fig = plotting.plot_roi(_image(np.zeros(SHAPE, dtype=np.int16)), synthetic)
    assert _layer(_views(fig)["axial"], "roi").get_array().mask.all()


# -- boxplots -----------------------------------------------------------------------------
def _signals(rng):
    conds = np.array(["rest", "face", "house"] * 20)
    values = rng.normal(size=(2, conds.size)) + (conds == "face") * 5.0
    return xr.DataArray(
        values, dims=("roi", "time"), coords={"roi": [3, 7], "condition": ("time", conds)}
    )


def test_plot_condition_boxplots(rng, tmp_path):
    signals = _signals(rng)
    out = tmp_path / "box.png"
    fig = plotting.plot_condition_boxplots(signals, title="signals", out=out)
    assert [ax.get_label() for ax in fig.axes] == ["roi 3", "roi 7"]
    cond = signals.condition.values
    for ax, row in zip(fig.axes, signals.values, strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["rest", "face", "house"]
        medians = [line.get_ydata()[0] for line in ax.lines if line.get_color() == "C1"]
        expected = [np.median(row[cond == c]) for c in ("rest", "face", "house")]
        np.testing.assert_allclose(medians, expected)
    _check_png(out, fig)
    fig = plotting.plot_condition_boxplots(signals.T, conditions=["house", "face"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["house", "face"]
    with pytest.raises(ConditionError, match="chair"):
        plotting.plot_condition_boxplots(signals, conditions=["chair"])
    with pytest.raises(InvalidParameterError, match="condition"):
        plotting.plot_condition_boxplots(signals.drop_vars("condition"))


# -- the seed's figure set ----------------------------------------------------------------
def test_save_seed_figures(haxby_maps, rng, tmp_path):
    mean, logp, atlas = haxby_maps
    values = np.asarray(logp.values)
    mask = like_image((values > 3).astype(np.int32), mean)
    dilated = like_image(ndimage.binary_dilation(values > 3), mean)
    paths = plotting.save_seed_figures(
        tmp_path / "figs",
        mean_img=mean,
        logp_img=logp,
        threshold=3.0,
        roi_mask_img=mask,
        dilated_img=dilated,
        atlas_img=atlas,
        signals=_signals(rng),
        cut_coords=[-25, -37, 0],
    )
    names = [p.name for p in paths]
    assert names == [
        "mean_epi.png",
        "logp.png",
        "logp_thresholded.png",
        "roi_mask.png",
        "dilated_mask.png",
        "roi_3.png",
        "roi_7.png",
        "boxplots.png",
    ]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(names)
    for p in paths:
        pixels = matplotlib.image.imread(p)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
        assert pixels[..., :3].std() > 0.05


def test_save_seed_figures_default_cut_and_optional_parts(haxby_maps, tmp_path):
    mean, logp, atlas = haxby_maps
    paths = plotting.save_seed_figures(
        tmp_path,
        mean_img=mean,
        logp_img=logp,
        threshold=3.0,
        roi_mask_img=atlas != 0,
        dilated_img=atlas != 0,
        atlas_img=None,
        signals=None,
    )
    assert [p.name for p in paths] == [
        "mean_epi.png",
        "logp.png",
        "logp_thresholded.png",
        "roi_mask.png",
        "dilated_mask.png",
    ]
    assert all(p.stat().st_size > 5_000 for p in paths)
