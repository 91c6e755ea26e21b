"""Update maps ``G``: the fixed-point map a solver iterates on the window ``[lo, hi)``.

Every map has the same fixed point as the system, ``x_i = F_i(x)``; they differ in how fast
information travels along the rows (DESIGN 2.1). Notation (window-local row ``t = i - lo``,
``x_{lo-1}`` is the last final row, ``k`` the order, ``s = max(i - k, lo - 1)`` the anchor):

==============  =====================================================================
``OneStep``     ``G_i = F_i(x)``: one row of exact information per round.
``Unrolled``    ``G_i = Phi(s->i) x_s + sum_{l=s+1}^{i} Phi(l->i) u_l`` -- the linear part of
                a :class:`~trisolve.SemilinearSystem` substituted into itself ``k - 1``
                times, ``Phi(l->i) = a_{l+1} ... a_i``, ``u_l = F_l(x) - a_l x_{l-1}``.
``Picard``      ``G_i = x_s + sum_{l=s+1}^{i} (F_l(x) - x_{l-1})`` -- ParaDiGMS's map; works
                for any system.
==============  =====================================================================

``g`` (the network) is still evaluated once per row per round: only the cheap linear part
is unrolled, so the cost of a round does not depend on ``k``. ``order=None`` means the
whole window (``k >= hi - lo``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import device, from_host
from .systems import Evaluation, SemilinearSystem

__all__ = ["UpdateMap", "OneStep", "Unrolled", "Picard"]


def _check_order(order: Any) -> None:
    if order is None:
        return
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
        raise TypeError(f"order must be an int >= 1 or None (the whole window), got {type(order).__name__}.")
    if order < 1:
        raise ValueError(f"order must be >= 1 (1 is the original recurrence), got {order}.")


class UpdateMap:
    """Base of the update maps. ``apply`` returns ``G(x)`` rows ``(hi - lo, *event)``."""

    order: int | None = 1

    @property
    def is_one_step(self) -> bool:
        """Whether ``G = F`` (then the map residual is the first-order residual)."""
        return self.order == 1

    def check(self, system: Any) -> None:
        """Raise if this map cannot be used with ``system``; also checks ``order <= n``."""
        if self.order is not None and self.order > system.n:
            raise ValueError(f"order must be between 1 and n = {system.n}, got {self.order}; use order=None for the whole window.")

    def apply(self, x: Any, ev: Evaluation, lo: int, hi: int, system: Any, *, xp: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class OneStep(UpdateMap):
    """``G_i = F_i(x)``: the original recurrence (order 1), for any system."""

    @property
    def order(self) -> int:  # type: ignore[override]
        return 1

    def apply(self, x, ev, lo, hi, system, *, xp):
        return ev.f


def _anchor(w: int, k: int | None) -> np.ndarray:
    """Window-local anchor index ``s_t = max(t - k, -1)`` of every row ``t`` (host ints)."""
    t = np.arange(w)
    return np.full(w, -1) if k is None or k >= w else np.maximum(t - k, -1)


def _gather_rows(x: Any, rows: np.ndarray, *, xp: Any) -> Any:
    idx = xp.asarray(rows.astype(np.int64), device=device(x))
    return xp.take(x, idx, axis=0)


@dataclass(frozen=True)
class Picard(UpdateMap):
    """ParaDiGMS's map: ``G_i = x_s + sum_{l=s+1}^{i} (F_l(x) - x_{l-1})``, ``s = max(i - k, lo - 1)``.

    Its map residual is the running sum of one-step residuals over ``(s, i]``.

    Parameters
    ----------
    order : int or None
        ``k``; ``None`` (default) sums from the last final row.
    """

    order: int | None = None

    def __post_init__(self) -> None:
        _check_order(self.order)

    def apply(self, x, ev, lo, hi, system, *, xp):
        w = hi - lo
        d = ev.f - x[lo - 1 : hi - 1, ...]  # one-step changes   (w, *event)
        csum = xp.cumulative_sum(d, axis=0)  # (w, *event)
        s = _anchor(w, self.order)
        if np.all(s == -1):
            return x[lo - 1 : lo, ...] + csum
        zero = xp.zeros((1, *csum.shape[1:]), dtype=csum.dtype, device=device(x))
        cpad = xp.concat([zero, csum], axis=0)  # C_{-1} = 0        (w + 1, *event)
        return _gather_rows(x, lo + s, xp=xp) + csum - _gather_rows(cpad, s + 1, xp=xp)


def window_products(a: np.ndarray, k: int | None) -> np.ndarray:
    """``P_t = a[max(t - k + 1, 0)] * ... * a[t]`` for every ``t`` (host float64).

    Binary lifting over powers of two: ``O(w log k)`` products, no logarithms, so zeros and
    negative entries are exact.
    """
    w = a.shape[0]
    if k is None or k >= w:
        return np.cumprod(a)
    out = np.ones(w)
    pos = np.arange(w)
    q = a.copy()  # products of length 2^t ending at each row, truncated at row 0
    shift, remaining = 1, k
    while remaining:
        if remaining & 1:
            valid = pos >= 0
            out[valid] *= q[pos[valid]]
            pos = pos - shift
        remaining >>= 1
        nq = q.copy()
        nq[shift:] *= q[:-shift]
        q, shift = nq, shift * 2
    return out


def linear_scan(a: np.ndarray, v: Any, *, xp: Any) -> Any:
    """Solve ``y_t = a_t y_{t-1} + v_t`` with ``y_{-1} = 0`` for all ``t`` at once.

    Hillis-Steele doubling: ``ceil(log2 w)`` vectorised steps. Invariant after the step
    with offset ``h``: ``y_t`` sums the terms ``l`` in ``(t - 2h, t]`` and ``A_t`` is the
    product of ``a`` over the same rows.

    Parameters
    ----------
    a : ndarray, shape ``(w,)``
        Host float64 coefficients.
    v : array, shape ``(w, *event)``
    """
    w = a.shape[0]
    y = v
    A = np.asarray(a, dtype=np.float64)
    bshape = (1,) * (len(v.shape) - 1)
    h = 1
    while h < w:
        coef = xp.reshape(from_host(A[h:], xp, dtype=v.dtype, device=device(v)), (w - h, *bshape))
        y = xp.concat([y[:h, ...], y[h:, ...] + coef * y[:-h, ...]], axis=0)
        A = np.concatenate([A[:h], A[h:] * A[:-h]])
        h *= 2
    return y


@dataclass(frozen=True)
class Unrolled(UpdateMap):
    """The order-``k`` equivalent system of a :class:`~trisolve.SemilinearSystem` (DESIGN 2.1).

    ``G_i = Phi(s->i) x_s + sum_{l=s+1}^{i} Phi(l->i) u_l`` with ``s = max(i - k, lo - 1)``.
    The inner sum ``W_i`` obeys ``W_i = a_i W_{i-1} + u_i - Phi(i-k -> i) u_{i-k}`` (the last
    term only once ``i - k >= lo``), a linear recurrence evaluated by :func:`linear_scan`;
    the scalar products come from :func:`window_products` in float64 on the host.

    Parameters
    ----------
    order : int or None
        ``k``; ``None`` (default) unrolls back to the last final row. ``order=1`` is the
        original recurrence.
    """

    order: int | None = None

    def __post_init__(self) -> None:
        _check_order(self.order)

    def check(self, system):
        super().check(system)
        if self.order != 1 and not isinstance(system, SemilinearSystem):
            raise TypeError(
                "Unrolled(order != 1) needs a SemilinearSystem (it unrolls the linear part a_i x_{i-1}); "
                f"got {type(system).__name__}. Use Picard(...) or OneStep() for black-box systems."
            )

    def apply(self, x, ev, lo, hi, system, *, xp):
        if self.order == 1:
            return ev.f
        w = hi - lo
        k = self.order if self.order is not None and self.order < w else None
        a = system.a[lo - 1 : hi - 1]  # a_local[t] multiplies x_{lo+t-1}
        phi = window_products(a, k)  # Phi(s_t -> t)                    (w,)
        bshape = (1,) * (len(x.shape) - 1)
        u = ev.u
        if k is not None:
            tail = xp.reshape(from_host(phi[k:], xp, dtype=u.dtype, device=device(u)), (w - k, *bshape))
            v = xp.concat([u[:k, ...], u[k:, ...] - tail * u[:-k, ...]], axis=0)
        else:
            v = u
        W = linear_scan(a, v, xp=xp)  # (w, *event)
        s = _anchor(w, k)
        xs = x[lo - 1 : lo, ...] if k is None else _gather_rows(x, lo + s, xp=xp)
        return xp.reshape(from_host(phi, xp, dtype=x.dtype, device=device(x)), (w, *bshape)) * xs + W
