"""Fixed-step explicit methods: one step from ``t_{i-1}`` to ``t_i`` for a block of rows at once.

Notation (``w`` rows of the block, ``event`` the state's shape):

=========  ======================  ===============================================
``y``      ``(w, *event)``         states ``y_{i-1}`` the steps start from
``h``      ``(w, 1, ..., 1)``      step sizes ``t_i - t_{i-1}``, in ``y``'s dtype
``T[s]``   ``(w,)``                the time of stage ``s`` of each row (``stage_times``)
``f``      ``f(T, Y) -> (w, *event)``   the user's vector field on a block of states
=========  ======================  ===============================================

Each step is written with the operations, in the order, of the library whose convention
names it, so that a sequential loop of that library gives the same bits: ``euler``,
``midpoint`` and ``rk4`` are torchdiffeq's fixed-grid steps (its ``rk4`` is Kutta's 3/8 rule,
``rk4_alt_step_func``); ``Euler``, ``Midpoint``, ``Heun``, ``RK4`` (classic) and ``RK38`` are
the textbook tableaux for :func:`trisolve.solve_ivp`. Stage times are computed in the time
grid's own dtype (as torchdiffeq does) and then cast to the state's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Method", "AdamsBashforth", "ODEINT_METHODS", "SOLVE_IVP_METHODS"]

_ONE_THIRD = 1 / 3
_TWO_THIRDS = 2 / 3


@dataclass(frozen=True)
class Method:
    """An explicit one-step method.

    Attributes
    ----------
    name : str
        The name the front door accepts.
    stages : int
        Evaluations of ``f`` per step.
    stage_times : callable ``(t0, dt, t1) -> tuple``
        The time of each stage from the grid's ``t_{i-1}``, ``t_i - t_{i-1}`` and ``t_i`` (arrays
        ``(n,)`` in the grid's dtype).
    step : callable ``(f, y, h, T) -> y_next``
        One step of every row of a block (notation in the module docstring).
    """

    name: str
    stages: int
    stage_times: Callable[[Any, Any, Any], tuple]
    step: Callable[[Callable, Any, Any, tuple], Any]


def _euler(f, y, h, T):
    return y + h * f(T[0], y)


def _midpoint_torchdiffeq(f, y, h, T):
    # torchdiffeq Midpoint: half_dt = 0.5 * dt; y_mid = y0 + f0 * half_dt; dy = dt * f(t0 + half_dt, y_mid)
    half = 0.5 * h
    return y + h * f(T[1], y + f(T[0], y) * half)


def _rk38_torchdiffeq(f, y, h, T, k1=None):
    # torchdiffeq rk4_alt_step_func (Kutta's 3/8 rule), same operations in the same order
    k1 = f(T[0], y) if k1 is None else k1
    k2 = f(T[1], y + h * k1 * _ONE_THIRD)
    k3 = f(T[2], y + h * (k2 - k1 * _ONE_THIRD))
    k4 = f(T[3], y + h * (k1 - k2 + k3))
    return y + (k1 + 3 * (k2 + k3) + k4) * h * 0.125


def _midpoint(f, y, h, T):
    return y + h * f(T[1], y + (0.5 * h) * f(T[0], y))


def _heun(f, y, h, T):
    k1 = f(T[0], y)
    k2 = f(T[1], y + h * k1)
    return y + (0.5 * h) * (k1 + k2)


def _rk4(f, y, h, T):
    half = 0.5 * h
    k1 = f(T[0], y)
    k2 = f(T[1], y + half * k1)
    k3 = f(T[1], y + half * k2)
    k4 = f(T[2], y + h * k3)
    return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


def _times_start(t0, dt, t1):
    return (t0,)


def _times_half(t0, dt, t1):
    return (t0, t0 + 0.5 * dt)


def _times_thirds(t0, dt, t1):
    return (t0, t0 + dt * _ONE_THIRD, t0 + dt * _TWO_THIRDS, t1)


def _times_ends(t0, dt, t1):
    return (t0, t1)


def _times_rk4(t0, dt, t1):
    return (t0, t0 + 0.5 * dt, t1)


# torchdiffeq fixed_adams.py: _BASHFORTH_COEFFICIENTS[order] / _DIVISOR[order], order 1..11 (max_order <= 12)
_BASHFORTH = [
    [],
    [11],
    [3, -1],
    [23, -16, 5],
    [55, -59, 37, -9],
    [1901, -2774, 2616, -1274, 251],
    [4277, -7923, 9982, -7298, 2877, -475],
    [198721, -447288, 705549, -688256, 407139, -134472, 19087],
    [434241, -1152169, 2183877, -2664477, 2102243, -1041723, 295767, -36799],
    [14097247, -43125206, 95476786, -139855262, 137968480, -91172642, 38833486, -9664106, 1070017],
    [30277247, -104995189, 265932680, -454661776, 538363838, -444772162, 252618224, -94307320, 20884811, -2082753],
    [2132509567, -8271795124, 23591063805, -46113029016, 63716378958, -63176201472, 44857168434, -22329634920, 7417904451, -1479574348, 134211265],
]
_DIVISOR = [None, 11, 2, 12, 24, 720, 1440, 60480, 120960, 3628800, 7257600, 479001600]


@dataclass(frozen=True)
class AdamsBashforth:
    """torchdiffeq's ``explicit_adams``: Adams-Bashforth of order up to ``max_order - 1`` on a fixed grid.

    Step ``i`` (from ``t_{i-1}``) keeps the last ``p = max_order - 1`` values
    ``f_j = f(t_j, y_j)``; with ``q_i = min(i, p)`` of them it takes Kutta's 3/8 RK4 step
    (``k1 = f_{i-1}``) while ``q_i < 3``, else

    .. math:: y_i = y_{i-1} + \\sum_{k < q_i} (h_i \\beta^{(q_i)}_k) f_{i-1-k},

    with the coefficients ``beta`` of order ``q_i`` (as for an even grid, whatever the grid:
    torchdiffeq's choice). Row ``i`` reads rows ``i - q_i .. i - 1``: a band of ``p`` rows.
    The products ``h_i beta_k`` are formed in float64 and summed in torchdiffeq's order.
    """

    name: str = "explicit_adams"
    max_order: int = 12

    @property
    def band(self) -> int:
        return self.max_order - 1

    def coefficients(self, dt64: Any) -> Any:
        """``C`` ``(n, p)`` float64 (``dt64`` the grid steps as float64): ``C[i - 1, k] = h_i beta^{(q_i)}_k``, zero for ``k >= q_i``."""
        import torch

        n, p = dt64.shape[0], self.band
        C = torch.zeros((n, p), dtype=torch.float64, device=dt64.device)
        for i in range(1, n + 1):
            q = min(i, p)
            if q >= 3:
                beta = torch.tensor([b / _DIVISOR[q] for b in _BASHFORTH[q]], dtype=torch.float64, device=dt64.device)
                C[i - 1, :q] = dt64[i - 1] * beta
        return C

    def rows(self, f: Callable, x: Any, lo: int, hi: int, tables: Any, *, offset: int = 0) -> Any:
        """``F_i`` for ``i`` in ``[lo, hi)``: ``(hi - lo, *event)``; reads rows ``max(0, lo - p)`` to ``hi - 2``.

        ``x[r]`` is row ``r + offset`` of the trajectory (``offset <= max(0, lo - p)``).
        """
        import torch

        h, times, grid_times, C = tables  # (n, 1..), thirds stage times (n,) x 4, t_j (n + 1,), (n, p) in y's dtype
        p = self.band
        j0 = max(0, lo - p)
        fj = f(grid_times[j0 : hi - 1], x[j0 - offset : hi - 1 - offset, ...])  # f_j for j in [j0, hi - 1)        (hi - 1 - j0, *event)
        event = tuple(x.shape[1:])
        rk_hi = min(hi, max(lo, 3 if p >= 3 else hi))  # rows i < 3 (q_i < 3) take the RK4 step
        parts = []
        if rk_hi > lo:
            s = slice(lo - 1, rk_hi - 1)
            y = x[lo - 1 - offset : rk_hi - 1 - offset, ...]
            parts.append(_rk38_torchdiffeq(f, y, h[s, ...], tuple(T[s] for T in times), k1=fj[lo - 1 - j0 : rk_hi - 1 - j0, ...]))
        if hi > rk_hi:
            w = hi - rk_hi
            pad = torch.zeros((p, *event), dtype=x.dtype, device=x.device)
            fpad = torch.cat([pad, fj], dim=0)  # row r of fpad is f_{j0 - p + r}
            acc = 0
            for k in range(p):  # sum over k in torchdiffeq's order; C[i-1, k] = 0 exactly where i - 1 - k < 0 (padded)
                start = rk_hi - 1 - k - (j0 - p)
                ck = C[rk_hi - 1 : hi - 1, k].reshape((w,) + (1,) * len(event))
                acc = acc + ck * fpad[start : start + w, ...]
            parts.append(x[rk_hi - 1 - offset : hi - 1 - offset, ...] + acc)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


#: torchdiffeq's fixed-grid methods, by its names
ODEINT_METHODS = {
    "euler": Method("euler", 1, _times_start, _euler),
    "midpoint": Method("midpoint", 2, _times_half, _midpoint_torchdiffeq),
    "rk4": Method("rk4", 4, _times_thirds, _rk38_torchdiffeq),
}

#: fixed-step explicit methods of :func:`trisolve.solve_ivp`
SOLVE_IVP_METHODS = {
    "Euler": Method("Euler", 1, _times_start, _euler),
    "Midpoint": Method("Midpoint", 2, _times_half, _midpoint),
    "Heun": Method("Heun", 2, _times_ends, _heun),
    "RK4": Method("RK4", 4, _times_rk4, _rk4),
    "RK38": Method("RK38", 4, _times_thirds, _rk38_torchdiffeq),
}
