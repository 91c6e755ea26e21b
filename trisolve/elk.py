"""ELK: the Levenberg-Marquardt (damped Newton) step by a parallel Kalman filter and RTS smoother.

Newton / DEER (see :mod:`trisolve.scan`) corrects the iterate ``x`` of ``x_i = F_i(x_{i-1})`` by
``delta`` solving ``delta_t = J_t delta_{t-1} + r_t`` over the window rows ``t = 0 .. w - 1``
(``r_t = F_i(x) - x_i``, ``J_t = dF_i/dx_{i-1}``, ``delta_{-1} = c``, zero unless a carry is given).
Far from the solution that step can be huge (an expanding ``J`` amplifies it like ``prod ||J_t||``).
ELK [ELK]_ damps it with a trust region: the Levenberg-Marquardt step with parameter ``lam >= 0``
is the minimiser of::

    sum_t || delta_t - J_t delta_{t-1} - r_t ||^2  +  sum_t lam_t || delta_t ||^2

i.e. ``(A^T A + Lam) delta = A^T r'`` with ``(A delta)_t = delta_t - J_t delta_{t-1}``,
``r'_0 = r_0 + J_0 c`` and ``r'_t = r_t`` otherwise. ``lam = 0`` is Newton (``A delta = r'``, the
affine scan); ``lam -> inf`` shrinks the step to zero, and ``|| delta ||`` decreases monotonically
as ``lam`` grows.

The model
---------
The minimiser is the posterior mean of the linear-Gaussian state-space model::

    delta_t = J_t delta_{t-1} + r_t + q_t,       q_t ~ N(0, I)           (dynamics, delta_{-1} = c known)
    y_t     = 0 = delta_t + v_t,                 v_t ~ N(0, I / lam_t)    (pseudo-observations)

so a Kalman filter followed by a Rauch-Tung-Striebel (RTS) smoother computes it exactly. The
observations are used in information form -- they add precision ``lam_t I`` -- so nothing divides
by ``lam``: with ``kappa_t = lam_t / (1 + lam_t)`` and ``s_t = 1 / (1 + lam_t)`` every quantity below
is finite at ``lam_t = 0`` (no observation: the filter predicts only). A scalar ``lam == 0`` returns
:func:`trisolve.scan.affine_scan` directly (the Newton step, bit for bit).

The two scans
-------------
Both passes are associative scans in the sense of Särkkä & García-Fernández [SGF]_, evaluated by
an odd-even reduction (``O(log w)`` depth, ``O(w)`` element combinations, no ``log w`` factor):

1. **Filter** (forward prefix scan). Row ``t`` is the element ``(A, b, C, eta, J)`` describing
   ``p(delta_t | delta_{t-1}, y_t) = N(A delta_{t-1} + b, C)`` and the likelihood
   ``p(y_t | delta_{t-1})`` in information form ``(eta, J)``. With ``H = Q = I``, ``R = I / lam_t``::

       A_t = s_t J_t        b_t = s_t r_t        C_t = s_t I
       eta_t = -kappa_t J_t^T r_t                J_t = kappa_t J_t^T J_t

   and row 0 conditions on the known ``delta_{-1} = c``: ``A_0 = 0``, ``b_0 = s_0 (r_0 + J_0 c)``,
   ``C_0 = s_0 I``, ``eta_0 = 0``, ``J_0 = 0``. Elements ``i`` (earlier) and ``j`` (later) combine as::

       A_ij   = A_j (I + C_i J_j)^{-1} A_i
       b_ij   = A_j (I + C_i J_j)^{-1} (b_i + C_i eta_j) + b_j
       C_ij   = A_j (I + C_i J_j)^{-1} C_i A_j^T + C_j
       eta_ij = A_i^T (I + J_j C_i)^{-1} (eta_j - J_j b_i) + eta_i
       J_ij   = A_i^T (I + J_j C_i)^{-1} J_j A_i + J_i

   The prefix ending at row ``t`` holds the filtered mean ``m_t`` (``b``) and covariance ``P_t`` (``C``).
   ``C`` and ``J`` are symmetric positive semi-definite, so ``I + C_i J_j`` is never singular; one
   linear solve with ``2 d + 1`` right-hand sides gives every inverse product (``(I + J_j C_i)^{-1}``
   is its transpose).

2. **Smoother** (backward scan). The RTS elements ``(E, g, L)`` of [SGF]_ are::

       E_t = P_t J_{t+1}^T (J_{t+1} P_t J_{t+1}^T + I)^{-1},    g_t = m_t - E_t (J_{t+1} m_t + r_{t+1})
       E_{w-1} = 0,                                              g_{w-1} = m_{w-1}

   Only the smoothed *means* are needed, ``delta_t = E_t delta_{t+1} + g_t``: an affine recurrence
   run backwards, so the smoother is :func:`trisolve.scan.affine_scan` on the reversed rows (the
   covariance part ``L`` is never formed).

Shapes, kinds, cost and memory
------------------------------
``r`` and the result are ``(w, *batch, d)`` (``(w, S, d)``: ``S`` independent samples, ``d`` state
values); ``carry`` is ``(*batch, d)`` or ``(1, *batch, d)``; ``lam`` is a number or a per-row table ``(w,)``.

* ``kind="diagonal"``: ``J`` is ``(w, *batch, d)`` (elementwise, quasi-DEER). Every entry is an
  independent scalar Kalman filter: the operators are elementwise products and one division.
  ``O(w S d)`` work and memory.
* ``kind="dense"``: ``J`` is ``(w, *batch, d, d)``, ``[output, input]``. ``d x d`` blocks per row and
  sample, combined with batched ``matmul`` and ``linalg.solve``: ``O(w S d^3)`` work,
  ``O(w S d^2)`` memory (five blocks per row in the filter, ``E`` in the smoother).

Both kinds have depth ``O(log w)``. Everything is array-API code on the namespace ``xp`` (NumPy,
PyTorch, array-api-strict, CuPy); the dtype is that of ``r`` and nothing is read back to the host
(a per-row ``lam`` is a host table -- a sequence or NumPy array -- validated on the host and moved
to the device once).

References
----------
.. [ELK] X. Gonzalez, A. Warrington, J. T. H. Smith, S. W. Linderman, "Towards Scalable and Stable
   Parallelization of Nonlinear RNNs", NeurIPS 2024.
.. [SGF] S. Särkkä, Á. F. García-Fernández, "Temporal Parallelization of Bayesian Smoothers",
   IEEE Transactions on Automatic Control 66(1), 2021.

Examples
--------
>>> import numpy as np
>>> import array_api_compat.numpy as xp
>>> from trisolve.elk import damped_scan
>>> J, r = np.full((3, 1, 1), 0.5), np.ones((3, 1, 1))
>>> damped_scan(J, r, 0.0, kind="diagonal", xp=xp)[:, 0, 0].tolist()   # Newton: 1, 1.5, 1.75
[1.0, 1.5, 1.75]
>>> bool(np.linalg.norm(damped_scan(J, r, 1.0, kind="diagonal", xp=xp)) < np.linalg.norm(r))
True
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from ._backend import device as _device
from ._backend import from_host
from ._validate import check_float
from .scan import affine_scan

__all__ = ["damped_scan"]

_Elems = tuple[Any, ...]


# --------------------------------------------------------------------------- validation


def _check_lam(lam: Any, w: int) -> float | np.ndarray:
    """``lam`` as a finite float ``>= 0`` or a host float64 table ``(w,)`` of them."""
    hint = "(the Levenberg-Marquardt / trust-region parameter: 0 is Newton, larger values shrink the step; inf is not allowed)"
    if isinstance(lam, numbers.Real) and not isinstance(lam, bool):
        return check_float("lam", lam, 0.0, hint=hint)
    if isinstance(lam, bool):
        raise TypeError(f"lam must be a real number or a per-row table of shape ({w},) {hint}, got bool {lam!r}.")
    try:
        table = np.asarray(lam, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"lam must be a real number or a per-row host table (sequence or NumPy array) of shape ({w},) {hint}, got {type(lam).__name__}."
        ) from exc
    if table.ndim == 0:
        return check_float("lam", float(table), 0.0, hint=hint)
    if table.shape != (w,):
        raise ValueError(f"a per-row lam must have shape ({w},) (one value per window row), got shape {table.shape}.")
    bad = ~(np.isfinite(table) & (table >= 0))
    if bad.any():
        t = int(np.flatnonzero(bad)[0])
        raise ValueError(f"lam must be finite and >= 0 on every row {hint}; row {t} has {float(table[t])!r}.")
    return table


def _check_shapes(J: Any, r: Any, kind: str, carry: Any) -> None:
    rs, js = tuple(r.shape), tuple(J.shape)
    if len(rs) < 2:
        raise ValueError(f"r must have shape (w, *batch, d) with at least 2 axes, got {rs}.")
    if kind == "diagonal":
        if js != rs:
            raise ValueError(f'kind="diagonal" needs J of the shape of r {rs}, got {js}.')
    elif kind == "dense":
        if js != (*rs, rs[-1]):
            raise ValueError(f'kind="dense" needs J of shape {(*rs, rs[-1])} ([output, input] blocks), got {js}.')
    else:
        raise ValueError(f'kind must be "diagonal" or "dense", got {kind!r}.')
    if carry is not None and tuple(carry.shape) not in (rs[1:], (1, *rs[1:])):
        raise ValueError(f"carry must have shape {rs[1:]} or {(1, *rs[1:])} (delta_(-1)), got {tuple(carry.shape)}.")


# --------------------------------------------------------------------------- generic odd-even prefix scan


def _interleave(even: Any, odd: Any, w: int, xp: Any) -> Any:
    """Rows ``even_0, odd_0, even_1, odd_1, ...`` (``len(even) = w - w // 2``, ``len(odd) = w // 2``)."""
    m = w // 2
    inter = xp.reshape(xp.stack([even[:m, ...], odd], axis=1), (2 * m, *odd.shape[1:]))
    return inter if w == 2 * m else xp.concat([inter, even[m:, ...]], axis=0)


def _prefix_scan(elems: _Elems, op: Callable[[_Elems, _Elems], _Elems], xp: Any) -> _Elems:
    """All prefixes ``a_0 o a_1 o ... o a_t`` of an associative ``op(earlier, later)``, by odd-even reduction.

    Pairs ``(a_{2k}, a_{2k+1})`` are combined, the half-length scan gives the prefixes at the odd
    rows, and each even row ``2k >= 2`` is one combination from the odd prefix before it:
    depth ``O(log w)``, ``< 2 w`` combinations in all.
    """
    w = elems[0].shape[0]
    if w == 1:
        return elems
    m = w // 2
    odd = _prefix_scan(op(tuple(e[0 : 2 * m : 2, ...] for e in elems), tuple(e[1 : 2 * m : 2, ...] for e in elems)), op, xp)
    n_even = w - m
    even = tuple(e[0:1, ...] for e in elems)
    if n_even > 1:
        rest = op(tuple(p[: n_even - 1, ...] for p in odd), tuple(e[2:w:2, ...] for e in elems))
        even = tuple(xp.concat([e0, e1], axis=0) for e0, e1 in zip(even, rest))
    return tuple(_interleave(e, o, w, xp) for e, o in zip(even, odd))


# --------------------------------------------------------------------------- filtering operators


def _filter_op_diagonal(ei: _Elems, ej: _Elems) -> _Elems:
    """The filtering combination for scalar (elementwise) elements: ``(I + C_i J_j)^{-1}`` is ``1 / den``."""
    Ai, bi, Ci, etai, Ji = ei
    Aj, bj, Cj, etaj, Jj = ej
    den = 1.0 + Ci * Jj  # >= 1: C, J >= 0
    Aj_den, Ai_den = Aj / den, Ai / den
    return (
        Aj_den * Ai,
        Aj_den * (bi + Ci * etaj) + bj,
        Aj_den * Ci * Aj + Cj,
        Ai_den * (etaj - Jj * bi) + etai,
        Ai_den * Jj * Ai + Ji,
    )


def _sym(M: Any, xp: Any) -> Any:
    return 0.5 * (M + xp.matrix_transpose(M))


def _make_filter_op_dense(xp: Any) -> Callable[[_Elems, _Elems], _Elems]:
    def op(ei: _Elems, ej: _Elems) -> _Elems:
        Ai, bi, Ci, etai, Ji = ei
        Aj, bj, Cj, etaj, Jj = ej
        d = Ai.shape[-1]
        M = xp.eye(d, dtype=Ai.dtype, device=_device(Ai)) + xp.matmul(Ci, Jj)  # I + C_i J_j, nonsingular
        rhs = xp.concat([Ai, Ci, (bi + xp.matmul(Ci, etaj[..., None])[..., 0])[..., None]], axis=-1)
        X = xp.linalg.solve(M, rhs)  # (I + C_i J_j)^{-1} [A_i | C_i | b_i + C_i eta_j]
        XA, XC, Xb = X[..., :d], X[..., d : 2 * d], X[..., 2 * d :]
        XAt = xp.matrix_transpose(XA)  # A_i^T (I + J_j C_i)^{-1}
        return (
            xp.matmul(Aj, XA),
            xp.matmul(Aj, Xb)[..., 0] + bj,
            _sym(xp.matmul(xp.matmul(Aj, XC), xp.matrix_transpose(Aj)), xp) + Cj,
            xp.matmul(XAt, (etaj - xp.matmul(Jj, bi[..., None])[..., 0])[..., None])[..., 0] + etai,
            _sym(xp.matmul(XAt, xp.matmul(Jj, Ai)), xp) + Ji,
        )

    return op


# --------------------------------------------------------------------------- the step


def damped_scan(J: Any, r: Any, lam: Any, *, kind: str, xp: Any, carry: Any = None) -> Any:
    """The ELK / Levenberg-Marquardt step: ``argmin sum_t ||delta_t - J_t delta_{t-1} - r_t||^2 + lam_t ||delta_t||^2``.

    Parameters
    ----------
    J : array
        The linear part: ``(w, *batch, d)`` for ``kind="diagonal"`` (elementwise) or
        ``(w, *batch, d, d)`` for ``kind="dense"`` (``[output, input]`` blocks).
    r : array, shape ``(w, *batch, d)``
        The residual rows (``(w, S, d)`` for ``S`` samples of ``d`` values).
    lam : float or sequence of shape ``(w,)``
        The trust-region parameter, finite and ``>= 0``: a number, or one value per row (a host
        table). ``0`` is the Newton step (:func:`trisolve.scan.affine_scan`); larger values shrink it.
    kind : {"diagonal", "dense"}
    xp : namespace
        The array-API namespace of ``J`` and ``r``.
    carry : array, shape ``(*batch, d)`` or ``(1, *batch, d)``, optional
        A known ``delta_{-1}`` (the correction of the row before the window); zero if omitted.

    Returns
    -------
    array, shape ``(w, *batch, d)``, dtype of ``r``
        The posterior mean of the state-space model of the module docstring, by a parallel Kalman
        filter and RTS smoother (depth ``O(log w)``).

    Raises
    ------
    ValueError
        ``lam`` negative, infinite or NaN, a per-row ``lam`` of the wrong length, an unknown
        ``kind``, or shapes that do not fit.
    """
    _check_shapes(J, r, kind, carry)
    w = r.shape[0]
    lam = _check_lam(lam, w)
    dense = kind == "dense"
    if carry is not None:  # r'_0 = r_0 + J_0 c
        c = xp.reshape(carry, (1, *r.shape[1:]))
        r = xp.concat([r[0:1, ...] + (xp.matmul(J[0:1, ...], c[..., None])[..., 0] if dense else J[0:1, ...] * c), r[1:, ...]], axis=0)
    if isinstance(lam, float) and lam == 0.0:
        return affine_scan(J, r, xp=xp)  # Newton, exactly
    if isinstance(lam, float):
        s, kappa = 1.0 / (1.0 + lam), lam / (1.0 + lam)
        s_r = s_J = s
        kappa_r = kappa_J = kappa
    else:
        bdims = (1,) * (len(r.shape) - 1)
        s_host, kappa_host = 1.0 / (1.0 + lam), lam / (1.0 + lam)
        s_r = from_host(s_host.reshape((w, *bdims)), xp, dtype=r.dtype, device=_device(r))
        kappa_r = from_host(kappa_host.reshape((w, *bdims)), xp, dtype=r.dtype, device=_device(r))
        s_J = xp.reshape(s_r, (w, *bdims, 1)) if dense else s_r
        kappa_J = xp.reshape(kappa_r, (w, *bdims, 1)) if dense else kappa_r

    # ---- filter elements; row 0 conditions on the known delta_{-1} (J'_0 = 0)
    J0 = xp.concat([xp.zeros_like(J[0:1, ...]), J[1:, ...]], axis=0)
    if dense:
        d = r.shape[-1]
        eye = xp.eye(d, dtype=r.dtype, device=_device(r))
        J0t = xp.matrix_transpose(J0)
        elems = (
            s_J * J0,
            s_r * r,
            s_J * xp.broadcast_to(eye, J.shape),
            -kappa_r * xp.matmul(J0t, r[..., None])[..., 0],
            kappa_J * xp.matmul(J0t, J0),
        )
        op = _make_filter_op_dense(xp)
    else:
        elems = (s_J * J0, s_r * r, s_J * xp.ones_like(r), -kappa_r * J0 * r, kappa_J * J0 * J0)
        op = _filter_op_diagonal
    _, m, P, _, _ = _prefix_scan(elems, op, xp)  # filtered means (w, *batch, d) and covariances
    if w == 1:
        return m

    # ---- smoother elements: delta_t = E_t delta_{t+1} + g_t, E_{w-1} = 0, g_{w-1} = m_{w-1}
    F, u, Pt, mt = J[1:, ...], r[1:, ...], P[:-1, ...], m[:-1, ...]
    if dense:
        FP = xp.matmul(F, Pt)  # J_{t+1} P_t
        Pp = xp.matmul(FP, xp.matrix_transpose(F)) + eye  # predicted covariance, >= I
        E = xp.matrix_transpose(xp.linalg.solve(Pp, FP))  # P_t F^T Pp^{-1}  (Pp, P_t symmetric)
        pred = xp.matmul(F, mt[..., None])[..., 0] + u
        g = mt - xp.matmul(E, pred[..., None])[..., 0]
    else:
        E = Pt * F / (F * Pt * F + 1.0)
        g = mt - E * (F * mt + u)
    E = xp.concat([E, xp.zeros_like(E[0:1, ...])], axis=0)
    g = xp.concat([g, m[w - 1 :, ...]], axis=0)
    return xp.flip(affine_scan(xp.flip(E, axis=0), xp.flip(g, axis=0), xp=xp), axis=0)
