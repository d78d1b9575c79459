"""Moments (count, mean, sum of squared deviations) and the tests built on them.

Every statistic of roidask over volumes comes from :class:`Moments`: each block
of data gives its exact two-pass float64 moments (:func:`moments_of`), partial
moments are merged with the formula of Chan, Golub & LeVeque (1979) - two at a
time (:func:`merge`, the pass's chain) or many at once along an axis
(:func:`merge_along`, dask tree reductions) - and the t and F tests are
computed from the merged moments (:func:`ttest_ind`, :func:`ttest_1samp`,
:func:`f_oneway`), with scipy's conventions and named fields.

Stacked layout: where moments travel as one array (dask reductions), the three
fields lie along one axis in the order of :data:`FIELDS` (:func:`stack`,
:func:`unstack`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from roidask.ops.pvalues import f_pvalues, t_pvalues

__all__ = [
    "FIELDS",
    "FTest",
    "Moments",
    "TTest",
    "f_oneway",
    "merge",
    "merge_all",
    "merge_along",
    "merge_leave_one_out",
    "moments_of",
    "stack",
    "ttest_1samp",
    "ttest_ind",
    "unstack",
]


class Moments(NamedTuple):
    """Per-element number of samples, mean and sum of squared deviations from the mean.

    ``count`` may be a number (the same for every element) or an array that
    broadcasts against ``mean`` and ``m2``. The sample variance is
    ``m2 / (count - 1)``.
    """

    # The field shadows the method tuple.count (mypy: incompatible override); the name is
    # kept: it is the stacked layout's field name (FIELDS), read across the package.
    count: np.ndarray | int  # type: ignore[assignment]
    mean: np.ndarray
    m2: np.ndarray


#: Order of the fields in the stacked layout.
FIELDS = Moments._fields


class TTest(NamedTuple):
    """A t-test: statistic, two-sided p, ``-log10 p`` (unclipped) and degrees of freedom."""

    t: np.ndarray
    p: np.ndarray
    logp: np.ndarray
    df: np.ndarray


class FTest(NamedTuple):
    """A one-way F-test: statistic, upper-tail p and ``-log10 p`` (unclipped)."""

    F: np.ndarray
    p: np.ndarray
    logp: np.ndarray


def moments_of(x: np.ndarray) -> Moments:
    """Exact two-pass float64 moments over the last axis of ``x``.

    Deviations are formed one sample at a time: float64 accumulators without a
    float64 copy of ``x`` (fastest when each sample is contiguous, Fortran order).
    """
    mean = x.mean(axis=-1, dtype=np.float64)
    m2 = np.zeros_like(mean)
    dev = np.empty_like(mean)
    for t in range(x.shape[-1]):
        np.subtract(x[..., t], mean, out=dev)
        dev *= dev
        m2 += dev
    return Moments(int(x.shape[-1]), mean, m2)


def merge(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two disjoint sets of samples with scalar counts (Chan et al.)."""
    na, nb = int(a.count), int(b.count)
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    delta = b.mean - a.mean
    return Moments(n, a.mean + delta * (nb / n), a.m2 + (b.m2 + delta * delta * (na * nb / n)))


def merge_all(parts) -> Moments:
    """Moments of the union of disjoint sets of samples: :func:`merge` in the given order."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge_all: no moments to merge")
    total = parts[0]
    for part in parts[1:]:
        total = merge(total, part)
    return total


def merge_leave_one_out(parts) -> list[Moments]:
    """For each part, the moments of all the *other* parts, in ``3 k`` merges for ``k`` parts.

    Prefix and suffix merges (part ``i``'s complement is the merge of parts ``0 .. i-1``
    with parts ``i+1 .. k-1``), not a subtraction from the total: every value is a
    merge of exact partial moments. Needs at least 2 parts.
    """
    parts = list(parts)
    if len(parts) < 2:
        raise ValueError("merge_leave_one_out: needs at least 2 parts")
    prefix = [parts[0]]
    for part in parts[1:-1]:
        prefix.append(merge(prefix[-1], part))
    suffix = [parts[-1]]
    for part in reversed(parts[1:-1]):
        suffix.append(merge(part, suffix[-1]))
    suffix.reverse()  # suffix[i]: parts i+1 .. k-1
    out = [suffix[0]]
    out += [merge(prefix[i - 1], suffix[i]) for i in range(1, len(parts) - 1)]
    out.append(prefix[-1])
    return out


def merge_along(m: Moments, axis: int, *, keepdims: bool = False) -> Moments:
    """Merge partial moments along ``axis`` (counts may differ per element and be 0)."""
    n = np.broadcast_to(np.asarray(m.count, dtype=np.float64), np.shape(m.mean))
    total = n.sum(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        grand = np.where(total > 0, (n * m.mean).sum(axis=axis, keepdims=True) / total, 0.0)
    dev = np.where(n > 0, m.mean - grand, 0.0)
    m2 = m.m2.sum(axis=axis, keepdims=True) + (n * dev * dev).sum(axis=axis, keepdims=True)
    if not keepdims:
        total, grand, m2 = (np.squeeze(v, axis=axis) for v in (total, grand, m2))
    return Moments(total, grand, m2)


def stack(m: Moments, axis: int = -1) -> np.ndarray:
    """The three fields as one float64 array, along a new ``axis`` (see :data:`FIELDS`)."""
    count = np.broadcast_to(np.asarray(m.count, dtype=np.float64), np.shape(m.mean))
    return np.stack([count, m.mean, m.m2], axis=axis)


def unstack(arr: np.ndarray, axis: int = -1) -> Moments:
    """Inverse of :func:`stack`."""
    count, mean, m2 = (np.take(arr, i, axis=axis) for i in range(len(FIELDS)))
    return Moments(count, mean, m2)


# -- tests from moments ------------------------------------------------------------------------
def ttest_ind(a: Moments, b: Moments, *, equal_var: bool = True) -> TTest:
    """Two-sample t-test from the moments of each sample, as :func:`scipy.stats.ttest_ind`.

    ``equal_var=True``: Student's test with pooled variance (``df = na + nb - 2``);
    False: Welch's test (per-element Welch-Satterthwaite ``df``). Constant
    elements follow scipy: NaN when both samples have the same constant value,
    ``±inf`` (``p = 0``) when only the means differ.
    """
    na, nb = a.count, b.count
    with np.errstate(all="ignore"):
        if equal_var:
            df = np.full_like(a.mean, float(na + nb - 2))
            pooled = (a.m2 + b.m2) / df
            denom = np.sqrt(pooled * (1.0 / na + 1.0 / nb))
        else:
            va, vb = a.m2 / (na - 1) / na, b.m2 / (nb - 1) / nb
            df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
            df = np.where(np.isnan(df), 1.0, df)  # as scipy: only 0/0 when both are constant
            denom = np.sqrt(va + vb)
        t = (a.mean - b.mean) / denom
    p, logp = t_pvalues(t, df)
    return TTest(t, p, logp, df)


def ttest_1samp(m: Moments, *, popmean: float = 0.0) -> TTest:
    """One-sample t-test from moments, as :func:`scipy.stats.ttest_1samp`."""
    n = m.count
    df = np.full_like(m.mean, float(n - 1))
    with np.errstate(all="ignore"):
        t = (m.mean - popmean) / np.sqrt(m.m2 / (n - 1) / n)
    p, logp = t_pvalues(t, df)
    return TTest(t, p, logp, df)


def f_oneway(counts: np.ndarray, means: np.ndarray, m2: np.ndarray) -> FTest:
    """One-way ANOVA F-test from per-group moments, as :func:`scipy.stats.f_oneway`.

    ``counts`` has one entry per group; ``means`` and ``m2`` end with the group axis.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n_total = counts.sum()
    k = counts.size
    grand = (means * counts).sum(axis=-1, keepdims=True) / n_total
    ss_between = (counts * (means - grand) ** 2).sum(axis=-1)
    ss_within = m2.sum(axis=-1)
    dfn, dfd = float(k - 1), float(n_total - k)
    with np.errstate(all="ignore"):
        f = (ss_between / dfn) / (ss_within / dfd)
    p, logp = f_pvalues(f, dfn, dfd)
    return FTest(f, p, logp)
