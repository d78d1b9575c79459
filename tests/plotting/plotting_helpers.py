"""Shared synthetic images and figure inspection helpers of the plotting tests."""

from __future__ import annotations

import dask.array as da
import matplotlib.image
import numpy as np
import xarray as xr

from roidask import plotting

SHAPE = (20, 24, 18)
# x flipped (LAS, like the Haxby file) and anisotropic voxels: 2 x 3 x 4 mm
AFFINE = np.array([[-2.0, 0, 0, 19.0], [0, 3.0, 0, -36.0], [0, 0, 4.0, -34.0], [0, 0, 0, 1.0]])
BLOB_IJK = (15, 12, 9)  # world x = 19 - 2 * 15 = -11 mm: left hemisphere


def image(data, affine=AFFINE, name="img"):
    return xr.DataArray(
        da.from_array(np.asarray(data), chunks=-1),
        dims=("x", "y", "z"),
        name=name,
        attrs={"affine": np.asarray(affine).tolist()},
    )


def blob(shape=SHAPE, centre=BLOB_IJK, sigma=2.0):
    grid = np.indices(shape, dtype=np.float64)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return np.exp(-d2 / (2 * sigma**2))


def view_axes(fig):
    return {ax.get_label(): ax for ax in fig.axes if ax.get_label() in plotting.VIEW_NAMES}


def image_layer(ax, label):
    (img,) = [im for im in ax.images if im.get_label() == label]
    return img


def ax_texts(ax):
    return {t.get_text() for t in ax.texts}


def legend_texts(fig):
    """Texts of the figure's legends: ``[(title, [entries])]`` (empty: no legend)."""
    return [
        (leg.get_title().get_text(), [t.get_text() for t in leg.get_texts()])
        for leg in fig.legends
    ]


def check_png(path, fig):
    assert path.is_file() and path.stat().st_size > 5_000
    pixels = matplotlib.image.imread(path)
    w, h = fig.get_size_inches() * plotting.DPI
    assert pixels.shape[:2] == (int(h), int(w))
    assert pixels[..., :3].std() > 0.05  # not blank
    assert not list(path.parent.glob(".*.tmp-*"))  # atomic write left no temp file


def condition_signals(rng, attrs=None):
    conds = np.array(["rest", "face", "house"] * 20)
    values = rng.normal(size=(2, conds.size)) + (conds == "face") * 5.0
    return xr.DataArray(
        values,
        dims=("roi", "time"),
        coords={"roi": [3, 7], "condition": ("time", conds)},
        attrs=attrs or {},
    )
