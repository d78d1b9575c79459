"""Folds of runs (split-half, leave-one-run-out) and the merges that give their moments.

References: the folds written out by hand for the real Haxby run sequence and for
runs numbered arbitrarily; the moments of a fold against numpy's two-pass mean and
squared deviations of the fold's samples concatenated.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roidask.exceptions import InvalidParameterError
from roidask.ops import moments as mom_ops
from roidask.ops.folds import fold_moments, fold_plan


def test_split_half_counts_runs_from_one_in_increasing_order():
    runs = np.repeat([0, 1, 2, 3, 4], 3)
    plan = fold_plan(runs, "split-half")
    assert plan.n_groups == 2
    # 1st, 3rd, 5th runs (values 0, 2, 4) are the odd ones: group 0
    np.testing.assert_array_equal(plan.groups, np.repeat([0, 1, 0, 1, 0], 3))
    (a, b) = plan.folds
    assert (a.roi_runs, a.signal_runs) == ((0, 2, 4), (1, 3))
    assert (b.roi_runs, b.signal_runs) == ((1, 3), (0, 2, 4))
    np.testing.assert_array_equal(plan.signal_volumes(0), np.flatnonzero(runs % 2 == 1))
    np.testing.assert_array_equal(plan.roi_volumes(0), np.flatnonzero(runs % 2 == 0))
    # by position, not by value: BIDS-like run numbers 1, 2, 5, 7 (interleaved in time)
    odd = fold_plan(np.array([7, 1, 2, 5, 1, 7]), "split-half")
    assert odd.folds[0].roi_runs == (1, 5) and odd.folds[0].signal_runs == (2, 7)
    np.testing.assert_array_equal(odd.groups, [1, 0, 1, 0, 0, 1])


def test_leave_one_run_out_has_one_fold_per_run():
    runs = np.repeat([3, 1, 2], 2)
    plan = fold_plan(runs, "leave-one-run-out")
    assert plan.n_groups == 3 and len(plan.folds) == 3
    np.testing.assert_array_equal(plan.groups, [2, 2, 0, 0, 1, 1])
    assert [f.signal_runs for f in plan.folds] == [(1,), (2,), (3,)]
    assert [f.roi_runs for f in plan.folds] == [(2, 3), (1, 3), (1, 2)]
    for k in range(3):
        together = np.sort(np.concatenate([plan.roi_volumes(k), plan.signal_volumes(k)]))
        np.testing.assert_array_equal(together, np.arange(6))  # a partition of the volumes


def test_same_is_one_fold_of_every_volume():
    plan = fold_plan(np.repeat([0, 1], 4), "same")
    assert not plan.independent and plan.n_groups == 1 and len(plan.folds) == 1
    np.testing.assert_array_equal(plan.groups, 0)
    np.testing.assert_array_equal(plan.signal_volumes(0), np.arange(8))


@pytest.mark.parametrize("scheme", ["split-half", "leave-one-run-out"])
def test_independent_schemes_need_two_runs(scheme):
    with pytest.raises(InvalidParameterError, match=rf"roi_definition: '{scheme}' needs at"):
        fold_plan(np.zeros(10), scheme)
    with pytest.raises(InvalidParameterError, match=r"roi_definition: expected one of"):
        fold_plan(np.zeros(10), "odd-even")


def _moments(x):
    mean = x.mean(axis=-1)
    return x.shape[-1], mean, ((x - mean[..., None]) ** 2).sum(axis=-1)


@given(
    sizes=st.lists(st.integers(1, 6), min_size=2, max_size=7),
    seed=st.integers(0, 2**16),
)
def test_leave_one_out_merges_equal_the_complements_moments(sizes, seed):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(100, 5, size=(3, n)) for n in sizes]
    got = mom_ops.merge_leave_one_out([mom_ops.moments_of(p) for p in parts])
    for i, m in enumerate(got):
        rest = np.concatenate(parts[:i] + parts[i + 1 :], axis=-1)
        n, mean, m2 = _moments(rest)
        assert m.count == n
        np.testing.assert_allclose(m.mean, mean, rtol=1e-12)
        np.testing.assert_allclose(m.m2, m2, rtol=1e-9)
    total = mom_ops.merge_all(mom_ops.moments_of(p) for p in parts)
    np.testing.assert_allclose(total.m2, _moments(np.concatenate(parts, axis=-1))[2], rtol=1e-9)


@pytest.mark.parametrize("scheme", ["split-half", "leave-one-run-out"])
def test_fold_moments_are_those_of_the_rois_runs(scheme):
    rng = np.random.default_rng(0)
    runs = np.repeat([0, 1, 2, 3, 4], 8)
    condition = np.tile([0, 1, 1, 0, 2, 0, 1, 2], 5)
    x = rng.normal(0, 1, size=(4, runs.size))
    plan = fold_plan(runs, scheme)
    groups = [
        tuple(mom_ops.moments_of(x[:, (plan.groups == g) & (condition == c)]) for c in (0, 1))
        for g in range(plan.n_groups)
    ]
    for k, pair in enumerate(fold_moments(plan, groups)):
        used = np.isin(runs, plan.folds[k].roi_runs)
        for c in (0, 1):
            n, mean, m2 = _moments(x[:, used & (condition == c)])
            assert pair[c].count == n
            np.testing.assert_allclose(pair[c].mean, mean, rtol=1e-12)
            np.testing.assert_allclose(pair[c].m2, m2, rtol=1e-9)
