"""Tests of roidask.plotting.seed_figures: the seed example's figure set."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from plotting_helpers import condition_signals, image_layer, legend_texts, view_axes
from scipy import ndimage

from roidask import plotting
from roidask.exceptions import GridMismatchError, ImageDimensionError, InvalidParameterError
from roidask.io import like_image
from roidask.ops.extract import extract_signals


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
        signals=condition_signals(rng),
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


def _seed_inputs(haxby_maps, haxby_bold):
    mean, logp, atlas = haxby_maps
    values = np.asarray(logp.values)
    return {
        "mean_img": mean,
        "logp_img": logp,
        "threshold": 3.0,
        "roi_mask_img": like_image((values > 3).astype(np.uint8), mean),
        "dilated_img": like_image(ndimage.binary_dilation(values > 3).astype(np.uint8), mean),
        "atlas_img": atlas,
        "signals": extract_signals(haxby_bold, atlas, strategy="mean").compute(),
    }


def test_seed_figures_name_what_they_show(haxby_maps, haxby_bold):
    """Each ROI's legend names that ROI, masks get no label legend, the boxplots' y axis
    says what the signal is, and no title calls the analysis mask ventral temporal."""
    inputs = _seed_inputs(haxby_maps, haxby_bold)
    atlas = np.asarray(inputs["atlas_img"].values)
    figures = dict(plotting.seed_figures(**inputs, cut_coords=[-25, -37, 0]))
    assert list(figures) == [
        "mean_epi.png",
        "logp.png",
        "logp_thresholded.png",
        "roi_mask.png",
        "dilated_mask.png",
        "roi_3.png",
        "roi_7.png",
        "boxplots.png",
    ]
    for label in (3, 7):
        fig = figures[f"roi_{label}.png"]
        n = int((atlas == label).sum())
        assert legend_texts(fig) == [("", [f"ROI {label} ({n} voxels)"])]
        assert fig.get_suptitle() == f"Connected components: ROI {label}"
        shown = image_layer(view_axes(fig)["axial"], "roi").get_array()
        assert shown.count() == n  # one axial slice: the whole ROI, and only it
    for name in ("roi_mask.png", "dilated_mask.png"):
        assert figures[name].legends == []
    assert figures["roi_mask.png"].get_suptitle() == (
        "ROI mask: -log10 p >= 3 within the analysis mask"
    )
    assert figures["dilated_mask.png"].get_suptitle() == "Dilated ROI mask"
    box = figures["boxplots.png"]
    assert [ax.get_ylabel() for ax in box.axes] == ["mean BOLD signal in ROI (scanner units)"] * 2
    for fig in figures.values():
        assert "ventral" not in fig.get_suptitle().lower()


def test_seed_inputs_are_checked_before_anything_is_written(haxby_maps, haxby_bold, tmp_path):
    inputs = _seed_inputs(haxby_maps, haxby_bold)
    out = tmp_path / "figs"
    bad = [
        ({"atlas_img": inputs["mean_img"]}, InvalidParameterError, "atlas_img.*non-integer"),
        ({"threshold": -1}, InvalidParameterError, "threshold"),
        ({"threshold": None}, InvalidParameterError, "threshold"),
        ({"cut_coords": [0, 0, -6]}, InvalidParameterError, "z = -6 mm"),
        ({"signals": inputs["signals"].isel(roi=[])}, InvalidParameterError, "no ROI"),
        ({"logp_img": inputs["logp_img"].isel(x=slice(1, None))}, GridMismatchError, "logp_img"),
        ({"roi_mask_img": haxby_bold}, ImageDimensionError, "roi_mask_img.*3D"),
    ]
    for change, error, match in bad:
        with pytest.raises(error, match=match):
            plotting.save_seed_figures(out, **{**inputs, **change})
        assert not out.exists()
