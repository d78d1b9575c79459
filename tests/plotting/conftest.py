"""Fixtures of the plotting tests: a synthetic blob and maps of the real Haxby slice."""

from __future__ import annotations

import numpy as np
import pytest
from plotting_helpers import blob, image
from scipy import ndimage, stats

from roidask.io import like_image


@pytest.fixture(scope="module")
def synthetic():
    return image(blob(), name="blob")


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
