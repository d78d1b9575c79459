"""P-values of t and F statistics, and ``-log10 p`` that never underflows.

``p`` is scipy's (:func:`scipy.special.stdtr`, :func:`scipy.special.fdtrc`).
``-log10 p`` comes from ``p`` where ``p >= 1e-100`` and otherwise from the log
of the regularized incomplete beta function by its continued fraction, so it
stays finite (and increasing in ``|t|`` or ``F``) far below the smallest
float64 ``p``.
"""

from __future__ import annotations

import numpy as np
from scipy import special

__all__ = ["LOGP_SWITCH", "f_pvalues", "neg_log10_betainc", "t_pvalues"]

#: Below this p, -log10(p) comes from the continued fraction of log I_x(a, b).
LOGP_SWITCH = 1e-100
_LN10 = float(np.log(10.0))


def _log_betainc_cf(a, b, logx, log1mx, *, max_iter: int = 500):
    """``log I_x(a, b)`` by the continued fraction (modified Lentz), for small ``x``.

    Accurate to ~1e-12 relative where ``x < (a + 1) / (a + b + 2)``, the region of
    tiny tail probabilities; ``logx = -inf`` gives ``-inf``.
    """
    tiny = 1e-300
    x = np.exp(logx)
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    done = np.zeros(x.shape, dtype=bool)
    for m in range(1, max_iter + 1):
        m2 = 2.0 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1.0 + aa / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            delta = d * c
            h = np.where(done, h, h * delta)
        done |= np.abs(delta - 1.0) < 1e-15
        if done.all():
            break
    return a * logx + b * log1mx - special.betaln(a, b) - np.log(a) + np.log(h)


def neg_log10_betainc(p, a, b, logx, log1mx):
    """``-log10 p`` for ``p = I_x(a, b)``: from ``p`` where it is not tiny, else from logs."""
    with np.errstate(all="ignore"):
        out = -np.log10(p)
        small = ~(p >= LOGP_SWITCH) & np.isfinite(logx) & ~np.isnan(p)
        if np.any(small):
            aa, bb, lx, l1 = (np.broadcast_to(v, p.shape)[small] for v in (a, b, logx, log1mx))
            out[small] = -_log_betainc_cf(aa, bb, lx, l1) / _LN10
    return out


def t_pvalues(t, df):
    """Two-sided p and -log10 p of Student's t with ``df`` degrees of freedom."""
    with np.errstate(all="ignore"):
        abs_t = np.abs(t)
        p = 2.0 * special.stdtr(df, -abs_t)
        # p = I_x(df/2, 1/2) with x = df / (df + t^2), in logs that do not overflow.
        r = df / (abs_t * abs_t)
        log1mx = -np.log1p(r)
        logx = -(2.0 * np.log(abs_t) - np.log(df)) + log1mx
        logp = neg_log10_betainc(p, df / 2.0, np.full_like(df, 0.5), logx, log1mx)
        logp = np.where(np.isinf(abs_t) & ~np.isnan(df), np.inf, logp)
    return p, logp


def f_pvalues(f, dfn, dfd):
    """Upper-tail p and -log10 p of the F distribution with ``(dfn, dfd)`` dof."""
    with np.errstate(all="ignore"):
        p = special.fdtrc(dfn, dfd, f)
        # p = I_x(dfd/2, dfn/2) with x = dfd / (dfd + dfn F).
        r = dfd / (dfn * f)
        log1mx = -np.log1p(r)
        logx = -(np.log(dfn) + np.log(f) - np.log(dfd)) + log1mx
        a = np.full_like(f, dfd / 2.0)
        b = np.full_like(f, dfn / 2.0)
        logp = neg_log10_betainc(p, a, b, logx, log1mx)
        logp = np.where(np.isposinf(f), np.inf, logp)
    return p, logp
