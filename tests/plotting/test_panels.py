"""Tests of roidask.plotting.panels: ortho cuts, stat maps, ROI overlays, boxplots."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from plotting_helpers import (
    AFFINE,
    BLOB_IJK,
    SHAPE,
    ax_texts,
    blob,
    check_png,
    condition_signals,
    image,
    image_layer,
    legend_texts,
    view_axes,
)

from roidask import plotting
from roidask.exceptions import (
    ConditionError,
    EmptyMaskWarning,
    GridMismatchError,
    ImageDimensionError,
    InvalidParameterError,
)
from roidask.ops.clean import clean_signals
from roidask.ops.extract import extract_signals


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
    vol = blob()
    fig = plotting.plot_ortho(synthetic, title="blob")  # default cut: the peak
    assert len(fig.axes) == 3
    views = view_axes(fig)
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
        np.testing.assert_array_equal(image_layer(views[name], "image").get_array(), arr)
    # extents in mm: voxel edges, so anisotropic voxels keep their size (2, 3, 4 mm)
    assert image_layer(views["coronal"], "image").get_extent() == pytest.approx([-20, 20, -36, 36])
    assert image_layer(views["sagittal"], "image").get_extent() == pytest.approx(
        [-37.5, 34.5, -36, 36]
    )
    assert image_layer(views["axial"], "image").get_extent() == pytest.approx(
        [-20, 20, -37.5, 34.5]
    )
    for ax in views.values():
        assert ax.get_aspect() == 1.0
    # neurological convention: the left-hemisphere blob is drawn left of x = 0
    coronal = image_layer(views["coronal"], "image").get_array()
    col = int(np.argmax(coronal.max(axis=0)))
    assert -20 + 2 * col + 1 == pytest.approx(-11.0)  # column centre, mm
    for name in ("coronal", "axial"):
        assert {"L", "R"} <= ax_texts(views[name])
        texts = {t.get_text(): t.get_position()[0] for t in views[name].texts}
        assert texts["L"] < texts["R"]
    assert {"P", "A"} <= ax_texts(views["sagittal"])
    assert "neurological" in fig.get_supxlabel()
    assert "x = -11.0 mm" in views["sagittal"].get_title()
    assert views["coronal"].get_xlabel() == "x (mm)"
    assert fig.get_suptitle() == "blob"


def test_plot_ortho_is_independent_of_voxel_axis_order(synthetic):
    """A volume stored with permuted voxel axes (same world image) draws the same cuts."""
    vol = blob()
    permuted_affine = AFFINE.copy()
    permuted_affine[:, :3] = AFFINE[:, [2, 0, 1]]  # voxel axes (z, x, y)
    permuted = image(vol.transpose(2, 0, 1), permuted_affine)
    cut = [-11.0, 0.0, 2.0]
    a = view_axes(plotting.plot_ortho(synthetic, cut_coords=cut))
    b = view_axes(plotting.plot_ortho(permuted, cut_coords=cut))
    for name in plotting.VIEW_NAMES:
        ia, ib = image_layer(a[name], "image"), image_layer(b[name], "image")
        np.testing.assert_array_equal(ia.get_array(), ib.get_array())
        assert ia.get_extent() == pytest.approx(ib.get_extent())


def test_plot_ortho_default_cut_of_a_mask_is_its_centre_of_mass():
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:5, 3:8, 10:13] = True  # centre of mass voxel (3, 5, 11)
    fig = plotting.plot_ortho(image(mask), colorbar=True)
    assert len(fig.axes) == 4  # three views and the colorbar
    xyz = plotting.voxel_to_world(AFFINE, (3, 5, 11))
    assert plotting.find_cut_coords(image(mask)) == pytest.approx(tuple(xyz))
    assert f"x = {xyz[0]:.1f} mm" in view_axes(fig)["sagittal"].get_title()


def test_plot_ortho_computes_only_the_cuts(synthetic, tmp_path):
    touched = set()

    def record(block, block_info=None):
        touched.add(tuple(block_info[0]["chunk-location"]))
        return block

    chunked = da.from_array(blob(), chunks=(5, 6, 6))  # 4 x 4 x 3 = 48 blocks
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
    check_png(tmp_path / "o.png", fig)


def test_plot_ortho_single_slice_haxby(haxby_maps, tmp_path):
    mean, _, _ = haxby_maps
    out = tmp_path / "mean.png"
    fig = plotting.plot_ortho(mean, cut_coords=[-25, -37, 0], title="Mean EPI", out=out)
    views = view_axes(fig)
    assert len(views) == 3
    # one voxel thick through z: sagittal (y, z) and coronal (x, z) cuts are one row
    assert image_layer(views["sagittal"], "image").get_array().shape == (1, 20)
    assert image_layer(views["coronal"], "image").get_array().shape == (1, 40)
    assert image_layer(views["axial"], "image").get_array().shape == (20, 40)
    # all views share one mm height, so the one-slice views are not squashed to nothing
    heights = {name: np.ptp(ax.get_ylim()) for name, ax in views.items()}
    assert heights["sagittal"] == pytest.approx(heights["axial"])
    assert {"L", "R"} <= ax_texts(views["coronal"]) and {"L", "R"} <= ax_texts(views["axial"])
    check_png(out, fig)
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
    axial = view_axes(fig)["axial"]
    stat = image_layer(axial, "stat").get_array()
    assert isinstance(stat, np.ma.MaskedArray)
    expected = values[::-1, :, 0].T  # x flipped in the Haxby affine
    np.testing.assert_array_equal(stat.data, expected)
    np.testing.assert_array_equal(stat.mask, np.abs(expected) < threshold)
    assert 0 < stat.mask.sum() < stat.size
    assert stat.min() >= threshold
    assert image_layer(axial, "background").get_array().shape == (20, 40)
    assert image_layer(axial, "stat").get_clim() == pytest.approx((0.0, values.max()))
    check_png(out, fig)
    # no threshold: only exact zeros are transparent
    fig = plotting.plot_stat_map(logp, mean, cut_coords=[0, 0, 0], vmax=5)
    stat = image_layer(view_axes(fig)["axial"], "stat").get_array()
    np.testing.assert_array_equal(stat.mask, expected == 0)
    assert image_layer(view_axes(fig)["axial"], "stat").get_clim() == (0.0, 5.0)


def test_plot_stat_map_defaults_and_errors(synthetic):
    signed = image(-blob() * 4, name="t")  # negative peak
    fig = plotting.plot_stat_map(signed, synthetic, threshold=1.0)
    views = view_axes(fig)
    assert "x = -11.0 mm" in views["sagittal"].get_title()  # peak of |stat|
    assert image_layer(views["axial"], "stat").get_clim() == pytest.approx((-4.0, 4.0))
    with pytest.raises(InvalidParameterError, match="threshold"):
        plotting.plot_stat_map(signed, synthetic, threshold=-1)
    other = image(blob(), affine=np.diag([2.0, 3.0, 4.0, 1.0]))
    with pytest.raises(GridMismatchError):
        plotting.plot_stat_map(signed, other)


# -- ROI overlays -------------------------------------------------------------------------
def test_plot_roi_labels_legend_and_default_cut(haxby_maps, tmp_path):
    mean, _, atlas = haxby_maps
    labels = np.asarray(atlas.values)
    out = tmp_path / "roi.png"
    fig = plotting.plot_roi(atlas, mean, title="ROIs", out=out)
    axial = view_axes(fig)["axial"]
    roi = image_layer(axial, "roi").get_array()
    expected = labels[::-1, :, 0].T
    np.testing.assert_array_equal(roi.mask, expected == 0)
    # each label its own colour
    img = image_layer(axial, "roi")
    colours = {lab: tuple(img.cmap(img.norm(roi[expected == lab][0]))) for lab in (3, 7)}
    assert colours[3] != colours[7]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["3", "7"]
    # default cut: inside the ROI, near its centre of mass
    ijk = plotting.cut_voxel_indices(atlas, plotting.find_cut_coords(atlas != 0))
    assert labels[ijk] != 0
    check_png(out, fig)


def test_plot_roi_errors_and_empty_roi(synthetic):
    with pytest.raises(InvalidParameterError, match="non-integer"):
        plotting.plot_roi(image(blob()), synthetic)
    with pytest.warns(EmptyMaskWarning, match="no non-zero voxel"):
        fig = plotting.plot_roi(image(np.zeros(SHAPE, dtype=np.int16)), synthetic)
    assert image_layer(view_axes(fig)["axial"], "roi").get_array().mask.all()


def test_plot_roi_masks_get_no_label_legend_label_images_do(haxby_maps):
    mean, _, atlas = haxby_maps
    labels = np.asarray(atlas.values)
    # a mask (boolean, or integers 0/1) has no labels to tell apart: no legend
    for mask in (atlas != 0, (atlas != 0).astype(np.uint8), (atlas != 0).astype(np.float32)):
        fig = plotting.plot_roi(mask, mean, title="mask")
        assert fig.legends == []
        assert len(fig.axes) == 3  # no colorbar of labels either
        assert image_layer(view_axes(fig)["axial"], "roi").get_array().count() > 0
    # a label image keeps its legend of labels, titled
    assert legend_texts(plotting.plot_roi(atlas, mean)) == [("ROI label", ["3", "7"])]
    # a single ROI keeping its label value is named by it, not "1"
    only_7 = atlas.where(atlas == 7, 0)
    assert legend_texts(plotting.plot_roi(only_7, mean)) == [("ROI label", ["7"])]
    # label_names name the labels (and draw a legend even for a mask)
    n7 = int((labels == 7).sum())
    fig = plotting.plot_roi(only_7, mean, label_names={7: f"ROI 7 ({n7} voxels)"})
    assert legend_texts(fig) == [("", [f"ROI 7 ({n7} voxels)"])]
    fig = plotting.plot_roi(atlas, mean, label_names={3: "face"})
    assert legend_texts(fig) == [("", ["face", "7"])]
    fig = plotting.plot_roi(atlas != 0, mean, label_names={1: "ROI mask"})
    assert legend_texts(fig) == [("", ["ROI mask"])]
    with pytest.raises(InvalidParameterError, match="label_names: expected a mapping"):
        plotting.plot_roi(atlas, mean, label_names=["face", "house"])


def test_plot_roi_many_labels_use_a_colorbar_of_names():
    labels = np.zeros(SHAPE, dtype=np.int32)
    for k in range(15):
        labels[k, 2:6, 3:7] = 10 + k
    fig = plotting.plot_roi(image(labels), None, label_names={10: "first"})
    assert fig.legends == []
    (cbar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    ticks = [t.get_text() for t in cbar.get_yticklabels()]
    assert ticks[0] == "first" and ticks[-1] == "24"
    assert cbar.get_ylabel() == "ROI"


# -- boxplots -----------------------------------------------------------------------------
def test_plot_condition_boxplots(rng, tmp_path):
    signals = condition_signals(rng)
    out = tmp_path / "box.png"
    fig = plotting.plot_condition_boxplots(signals, title="signals", out=out)
    assert [ax.get_label() for ax in fig.axes] == ["roi 3", "roi 7"]
    cond = signals.condition.values
    for ax, row in zip(fig.axes, signals.values, strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["rest", "face", "house"]
        medians = [line.get_ydata()[0] for line in ax.lines if line.get_color() == "C1"]
        expected = [np.median(row[cond == c]) for c in ("rest", "face", "house")]
        np.testing.assert_allclose(medians, expected)
    check_png(out, fig)
    fig = plotting.plot_condition_boxplots(signals.T, conditions=["house", "face"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["house", "face"]
    with pytest.raises(ConditionError, match="chair"):
        plotting.plot_condition_boxplots(signals, conditions=["chair"])
    with pytest.raises(InvalidParameterError, match="condition"):
        plotting.plot_condition_boxplots(signals.drop_vars("condition"))


def test_boxplot_y_axis_says_what_the_signal_is(haxby_bold, haxby_maps, rng):
    _, _, atlas = haxby_maps
    signals = extract_signals(haxby_bold, atlas, strategy="mean").compute()
    fig = plotting.plot_condition_boxplots(signals, conditions=["face", "house"])
    assert [ax.get_ylabel() for ax in fig.axes] == ["mean BOLD signal in ROI (scanner units)"] * 2
    fig = plotting.plot_condition_boxplots(
        extract_signals(haxby_bold, atlas, strategy="standard_deviation", labels=[3])
    )
    assert fig.axes[0].get_ylabel() == "standard deviation BOLD signal in ROI (scanner units)"
    zscored = clean_signals(signals, detrend=True, standardize="zscore_sample")
    fig = plotting.plot_condition_boxplots(zscored)
    assert fig.axes[0].get_ylabel() == (
        "mean BOLD signal in ROI\n(z-score; cleaned: linear detrend, zscore_sample)"
    )
    # explicit units win; signals without attrs are not claimed to be BOLD
    fig = plotting.plot_condition_boxplots(
        condition_signals(rng, attrs={"strategy": "mean", "units": "% signal change"})
    )
    assert fig.axes[0].get_ylabel() == "mean BOLD signal in ROI (% signal change)"
    assert plotting.plot_condition_boxplots(condition_signals(rng)).axes[0].get_ylabel() == (
        "ROI signal"
    )
