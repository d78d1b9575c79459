"""ROIs defined on runs independent of the signals reported in them (no double dipping).

Selecting ROIs with a t-test and then reporting the same volumes' signals inside
them biases the reported effect (circular analysis; Kriegeskorte et al. 2009,
Nat Neurosci 12:535). The ROI definitions of
:class:`roidask.pipeline.PipelineParams` (``roi_definition``):

* ``"same"``: the ROIs and the signals come from every volume (nilearn's example);
* ``"split-half"``: two folds. The runs, in increasing order of their ``run``
  value and counted from 1, are split into the odd ones (1st, 3rd, 5th, ...: the
  run values 0, 2, 4, ... of a 0-based numbering such as Haxby's ``chunks``)
  and the even ones (2nd, 4th, ...). Fold 0 defines its ROIs on the odd runs and
  reports the signals of the even runs; fold 1 the reverse;
* ``"leave-one-run-out"``: one fold per run (in the same order): the ROIs from
  every other run, the signals of that run.

The pass over the data (:func:`roidask.onepass.contrast_pass`) keeps the moments
of the contrast's smoothed volumes per *moment group* of runs instead of one
merged pair (one group for ``"same"``, the odd and the even runs for
``"split-half"``, one per run for ``"leave-one-run-out"``); a fold's t-test is
computed from the merge of its ROI-defining groups' moments (moments are
additive: :func:`roidask.ops.moments.merge`), so every fold comes from one read
of the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from roidask._validate import check_choice
from roidask.exceptions import InvalidParameterError
from roidask.ops import moments as mom_ops
from roidask.ops.moments import Moments

__all__ = ["ROI_DEFINITIONS", "Fold", "FoldPlan", "fold_moments", "fold_plan"]

#: Values of ``roi_definition``: the example's, and the two independent schemes.
ROI_DEFINITIONS = ("same", "split-half", "leave-one-run-out")


@dataclass(frozen=True)
class Fold:
    """One ROI set: the runs that define its ROIs and the runs whose signals it reports.

    Attributes
    ----------
    roi_runs : tuple of int
        ``run`` values of the volumes whose t-test defines the ROIs.
    signal_runs : tuple of int
        ``run`` values of the volumes whose signals are reported in them.
    roi_groups, signal_groups : tuple of int
        The same, as moment groups of the pass (see :class:`FoldPlan`).
    """

    roi_runs: tuple[int, ...]
    signal_runs: tuple[int, ...]
    roi_groups: tuple[int, ...]
    signal_groups: tuple[int, ...]


@dataclass(frozen=True)
class FoldPlan:
    """The folds of an ROI definition over a series' runs.

    Attributes
    ----------
    scheme : str
        One of :data:`ROI_DEFINITIONS`.
    groups : ndarray of int64, shape (n_volumes,)
        The moment group of every volume (0 .. ``n_groups - 1``): the pass keeps
        the contrast moments of each group apart.
    n_groups : int
    folds : tuple of Fold
    """

    scheme: str
    groups: np.ndarray
    n_groups: int
    folds: tuple[Fold, ...]

    @property
    def independent(self) -> bool:
        """True unless ``scheme`` is ``"same"`` (the example's layout, no fold dimension)."""
        return self.scheme != "same"

    def signal_volumes(self, k: int) -> np.ndarray:
        """Indices (time order) of the volumes whose signals fold ``k`` reports."""
        return np.flatnonzero(np.isin(self.groups, self.folds[k].signal_groups))

    def roi_volumes(self, k: int) -> np.ndarray:
        """Indices (time order) of the volumes that define fold ``k``'s ROIs."""
        return np.flatnonzero(np.isin(self.groups, self.folds[k].roi_groups))


def fold_plan(runs, scheme: str, *, param: str = "roi_definition") -> FoldPlan:
    """The moment groups and folds of ``scheme`` for volumes of the given ``runs``.

    Parameters
    ----------
    runs : array-like of int, shape (n_volumes,)
        The ``run`` of every volume (its coordinate along time).
    scheme : {"same", "split-half", "leave-one-run-out"}

    Raises
    ------
    InvalidParameterError
        Unknown scheme, or an independent scheme with fewer than 2 runs.
    """
    check_choice(scheme, param, ROI_DEFINITIONS)
    runs = np.asarray(runs).astype(np.int64)
    values, position = np.unique(runs, return_inverse=True)  # runs in increasing order
    distinct = tuple(int(v) for v in values)
    if scheme == "same":
        groups = np.zeros(runs.shape, dtype=np.int64)
        return FoldPlan(scheme, groups, 1, (Fold(distinct, distinct, (0,), (0,)),))
    if len(distinct) < 2:
        raise InvalidParameterError(
            f"{param}: {scheme!r} needs at least 2 runs (the 'run' coordinate), got "
            f"{len(distinct)} ({list(distinct)}); use 'same', or give the runs' labels",
            param=param,
        )
    if scheme == "split-half":
        groups = (position % 2).astype(np.int64)  # 0: 1st, 3rd, ... runs; 1: 2nd, 4th, ...
        odd, even = distinct[0::2], distinct[1::2]
        folds: tuple[Fold, ...] = (Fold(odd, even, (0,), (1,)), Fold(even, odd, (1,), (0,)))
        return FoldPlan(scheme, groups, 2, folds)
    groups = position.astype(np.int64)
    folds = tuple(
        Fold(
            distinct[:i] + distinct[i + 1 :],
            (run,),
            tuple(g for g in range(len(distinct)) if g != i),
            (i,),
        )
        for i, run in enumerate(distinct)
    )
    return FoldPlan(scheme, groups, len(distinct), folds)


def fold_moments(
    plan: FoldPlan, groups: list[tuple[Moments, Moments]]
) -> list[tuple[Moments, Moments]]:
    """The contrast moments of each fold's ROI-defining volumes, from the groups' moments.

    ``groups[g]`` holds the moments of the two contrast conditions in moment group
    ``g``. Leave-one-run-out folds use prefix and suffix merges
    (:func:`roidask.ops.moments.merge_leave_one_out`): ``3 k`` merges for ``k`` runs.
    """
    if plan.scheme == "leave-one-run-out":
        per_condition = [mom_ops.merge_leave_one_out([g[c] for g in groups]) for c in range(2)]
        return list(zip(*per_condition, strict=True))
    out = []
    for fold in plan.folds:
        first, second = (
            mom_ops.merge_all(groups[g][c] for g in fold.roi_groups) for c in range(2)
        )
        out.append((first, second))
    return out
