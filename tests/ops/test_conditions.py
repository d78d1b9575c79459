"""Volumes and signals selected by condition (the seed's X1/X2 stacks), against nilearn."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from helpers.seed import masker_signals

from roidask.exceptions import ConditionError, InvalidParameterError
from roidask.ops.conditions import select_condition, select_conditions, stack_conditions
from roidask.ops.extract import extract_signals


def computed(signals):
    with dask.config.set(scheduler="sync"):
        return signals.values


def test_select_and_stack_conditions(haxby_bold, haxby_img, seed_rois, haxby_arrays):
    conditions = haxby_arrays[2]
    reference = masker_signals(haxby_img, seed_rois)
    signals = extract_signals(haxby_bold, seed_rois)
    face = select_condition(signals, condition="face")
    np.testing.assert_allclose(computed(face), reference[:, conditions == "face"], rtol=1e-12)

    stacked = stack_conditions(signals, conditions=["face", "house"], n_volumes=50)
    assert stacked.dims == ("condition", "sample", "roi")
    assert stacked.shape == (2, 50, 5)
    x1 = computed(stacked.sel(condition="face"))
    x2 = computed(stacked.sel(condition="house"))
    np.testing.assert_allclose(x1, reference[:, conditions == "face"][:, :50].T, rtol=1e-12)
    np.testing.assert_allclose(x2, reference[:, conditions == "house"][:, :50].T, rtol=1e-12)
    np.testing.assert_array_equal(
        stacked["volume"].sel(condition="house").values,
        np.flatnonzero(conditions == "house")[:50],
    )

    every = stack_conditions(signals)
    assert every["condition"].values.tolist() == list(dict.fromkeys(conditions))
    assert every.sizes["sample"] == 108  # smallest condition count (rest has 588)


def test_unknown_condition_is_refused(haxby_bold, seed_rois):
    signals = extract_signals(haxby_bold, seed_rois)
    with pytest.raises(ConditionError, match=r"'faces' not found.*'face'"):
        select_condition(signals, condition="faces")
    with pytest.raises(ConditionError, match=r"\['dog'\] not found"):
        stack_conditions(signals, conditions=["face", "dog"])


def test_no_condition_is_refused(haxby_bold):
    with pytest.raises(InvalidParameterError, match=r"^conditions: expected at least one.*\[\]"):
        select_conditions(haxby_bold, conditions=[])


def test_too_many_volumes_per_condition_is_refused(haxby_bold, seed_rois):
    signals = extract_signals(haxby_bold, seed_rois)
    with pytest.raises(ConditionError, match=r"109 volumes.*'face': 108"):
        stack_conditions(signals, conditions=["face", "rest"], n_volumes=109)
    with pytest.raises(InvalidParameterError, match="n_volumes"):
        stack_conditions(signals, n_volumes=0)


def test_select_conditions_takes_conditions_as_its_siblings_do(haxby_bold):
    """Keyword-only, a list or tuple of names: a bare string (one name or a list of
    letters?) is refused with the message of ftest_img and condition_moments."""
    from roidask.ops import condition_moments, ftest_img

    message = r"^conditions: expected a list or tuple of condition names, got the string 'face'$"
    for func in (select_conditions, ftest_img, condition_moments):
        with pytest.raises(InvalidParameterError, match=message) as info:
            func(haxby_bold, conditions="face")
        assert info.value.param == "conditions"
        with pytest.raises(TypeError, match="positional argument"):
            func(haxby_bold, ["face", "house"])
    face = select_conditions(haxby_bold, conditions=["face"])
    assert set(face["condition"].values.tolist()) == {"face"} and face.sizes["time"] == 108


def test_select_condition_takes_its_condition_by_keyword(haxby_bold, seed_rois):
    signals = extract_signals(haxby_bold, seed_rois)
    with pytest.raises(TypeError, match="positional argument"):
        select_condition(signals, "face")
    assert select_condition(signals, condition="face").sizes["time"] == 108
