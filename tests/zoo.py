"""Random lower-triangular test systems written with array-API calls only (and one NumPy system: amplifying_recurrence)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import trisolve


def blackbox_system(rng, n, p, event, xp_backend, *, nonlinear=True, scale=0.6, counter=None):
    """``F_i(x) = sum_q W[i,q] * phi(x_{i-1-q}) + b_i`` with ``phi = tanh`` (or identity)."""
    xp = xp_backend.xp
    W = rng.uniform(-scale, scale, size=(n + 1, p))
    for i in range(n + 1):
        W[i, max(i, 0) :] = 0.0  # row i may read rows >= 0 only: q <= i - 1
    b = rng.standard_normal((n + 1, *event))
    Wd = xp_backend.asarray(W)
    bd = xp_backend.asarray(b)

    def fn(x, lo, hi):
        if counter is not None:
            counter.append(hi - lo)
        out = bd[lo:hi, ...]
        for q in range(p):
            j_lo = lo - 1 - q
            rows = x[max(j_lo, 0) : max(hi - 1 - q, 0), ...]
            pad = (hi - lo) - rows.shape[0]  # rows that would read before row 0 (their W is 0)
            if pad:
                rows = xp.concat([xp.zeros((pad, *rows.shape[1:]), dtype=rows.dtype), rows], axis=0)
            phi = xp.tanh(rows) if nonlinear else rows
            out = out + xp.reshape(Wd[lo:hi, q], (hi - lo,) + (1,) * len(event)) * phi
        return out

    return trisolve.BlackBoxSystem(fn, n)


def semilinear_system(rng, n, p, event, xp_backend, *, a_range=(0.5, 1.1), with_c=True, counter=None, linear_fraction=0.0):
    """``x_i = a_i x_{i-1} + sum_q B[i,q] tanh(s_j x_j) + c_i``; a ``linear_fraction`` of the rows
    read no ``g`` (``B[i-1] = 0``: ``x_i = a_i x_{i-1} + c_i``)."""
    xp = xp_backend.xp
    a = rng.uniform(*a_range, size=n)
    B = rng.uniform(-0.5, 0.5, size=(n, p))
    for i in range(1, n + 1):
        B[i - 1, i:] = 0.0
    B[rng.random(n) < linear_fraction] = 0.0
    s = xp_backend.asarray(rng.uniform(0.5, 2.0, size=n + 1))
    c = xp_backend.asarray(rng.standard_normal((n, *event)) * 0.1) if with_c else None

    def g(x, lo, hi):
        if counter is not None:
            counter.append(hi - lo)
        return xp.tanh(xp.reshape(xp.astype(s[lo:hi], x.dtype), (hi - lo,) + (1,) * (len(x.shape) - 1)) * x)

    return trisolve.SemilinearSystem(a, B, g, c=c)


event_shapes = st.sampled_from([(), (3,), (2, 3), (2, 1, 2)])


def rk4_system(f, h, n):
    """Explicit RK4 steps of ``y' = f(y)`` as a black box (``f`` acts on the last axis; any namespace)."""

    def F(x, lo, hi):
        y = x[lo - 1 : hi - 1]
        k1 = f(y)
        k2 = f(y + 0.5 * h * k1)
        k3 = f(y + 0.5 * h * k2)
        k4 = f(y + h * k3)
        return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)

    return trisolve.BlackBoxSystem(F, n)


def amplifying_recurrence(n=40, h=0.1, batch_ndim=0):
    """(NumPy) ``x_i = x_{i-1} + h (L x_{i-1} + sin(3 t_i + x_{i-1}))`` on 4 values a sample, ``L`` with one mode growing at
    rate 2.5: a change of row ``j`` reaches row ``n`` multiplied by up to ``e^(2.5 h (n - j))`` (``2e4`` from row 0).
    Any leading axes of a row are samples (``batch_ndim``)."""
    Q = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0]
    L = Q @ np.diag([2.5, -1.0, -2.0, -0.5]) @ Q.T

    def fn(x, lo, hi):
        p = x[lo - 1 : hi - 1]
        t = np.arange(lo, hi).reshape((-1,) + (1,) * (p.ndim - 1)) * h
        return p + h * (p @ L.T + np.sin(3.0 * t + p))

    return trisolve.BlackBoxSystem(fn, n=n, batch_ndim=batch_ndim)

