"""The affine scan behind every update map: ``delta_t = J_t delta_{t-1} + r_t`` in log depth.

Every update map of trisolve (DESIGN 9) is one residual scan over the window rows
``t = 0 .. w - 1`` (window-local; global row ``i = lo + t``, ``delta_{-1} = 0``)::

    r_t     = F_i(x) - x_i                       first-order residual     (w, *event)
    delta_t = J_t delta_{t-1} + r_t               map residual R = G(x) - x
    G_t     = F_i(x) + J_t delta_{t-1}            = x_i + delta_t, without the cancellation

with a *linear-part policy* ``J`` chosen by the map:

==================  ===============================  =====================================
map                 ``J_t``                          representation
==================  ===============================  =====================================
``OneStep``         ``0``                            ``None`` (no scan at all)
``Picard``          ``1``                            the Python number ``1.0``
``Unrolled``        ``a_i`` of the semilinear form   per-row scalars, shape ``(w,)``
Newton / DEER       ``dF_i/dx_{i-1}``, diagonal      elementwise, shape ``(w, *event)``
Newton / DEER       ``dF_i/dx_{i-1}``, dense         matrices ``(w, *event[:-1], d, d)``
==================  ===============================  =====================================

A dense ``J_t`` acts on the last event axis (``d = event[-1]``; leading event axes are a
batch). To couple every entry of an event, flatten the event to ``(d,)`` first.

Truncation to order ``k`` keeps the ``k`` newest terms, ``delta_t = sum_{l = max(t-k+1, 0)}^{t}
Phi(l -> t) r_l`` with ``Phi(l -> t) = J_t ... J_{l+1}``; ``order=None`` keeps them all.

Algorithm. The pairs ``(A, y)`` compose associatively,
``(A, y) o (A', y') = (A A', A y' + y)`` (apply ``(A', y')`` first), so the scan is a prefix
composition. The full scan is an odd-even reduction (:func:`_odd_even`): ``O(log w)`` depth,
each level an elementwise product (scalar / diagonal ``J``) or a batched matrix product (dense
``J``), and ``O(w)`` compositions in all (the work of the sequential recurrence times ``d`` for
dense blocks, with no ``log w`` factor). A truncated scan
combines the segments of lengths ``2^b`` for the set bits ``b`` of ``k`` (binary lifting),
``O(w log k)`` work, exact for zero or negative ``J`` (no division, no logarithms). Per-row
scalar ``J`` (a host table moved to the device once per solve) keeps its own dtype (float64
where the device has it) for the products and is cast only when applied to ``r``.

Everything here is array-API code: ``xp`` is passed in, nothing is read back to the host.

Examples
--------
>>> import numpy as np
>>> from trisolve.scan import affine_scan
>>> import array_api_compat.numpy as xp
>>> affine_scan(np.array([0.5, 0.5, 0.5]), np.ones(3), xp=xp).tolist()   # 1, 1.5, 1.75
[1.0, 1.5, 1.75]
>>> affine_scan(1.0, np.ones(4), order=2, xp=xp).tolist()   # sums of the 2 newest terms
[1.0, 2.0, 2.0, 2.0]
"""

from __future__ import annotations

import numbers
from typing import Any

from ._validate import check_int

__all__ = ["affine_scan", "apply_linear", "linear_kind", "shift_rows"]


def linear_kind(J: Any, r: Any) -> str:
    """How ``J`` acts on residual rows ``r`` ``(w, *event)``.

    Returns ``"zero"`` (``None`` or ``0``), ``"one"`` (``1``), ``"constant"`` (another Python
    number), ``"scalar"`` (``(w,)``), ``"diagonal"`` (``r.shape``) or ``"dense"``
    (``(*r.shape, r.shape[-1])``); anything else raises ``ValueError``.
    """
    if J is None:
        return "zero"
    if isinstance(J, numbers.Real) and not isinstance(J, bool):  # Python and NumPy scalars alike
        return "zero" if J == 0 else "one" if J == 1 else "constant"
    shape, rshape = tuple(J.shape), tuple(r.shape)
    if shape == rshape:
        return "diagonal"
    if shape == (rshape[0],):
        return "scalar"
    if len(rshape) >= 2 and shape == (*rshape, rshape[-1]):
        return "dense"
    raise ValueError(
        f"a linear part J of shape {shape} does not fit residual rows of shape {rshape}: give per-row scalars "
        f"({rshape[0]},), elementwise factors {rshape} or matrices {(*rshape, rshape[-1]) if len(rshape) >= 2 else '(w, *event, d)'}."
    )


def _bshape(J: Any, r: Any) -> tuple[int, ...]:
    return (J.shape[0],) + (1,) * (len(r.shape) - 1)


def apply_linear(J: Any, v: Any, *, kind: str, xp: Any) -> Any:
    """``J_t v_t`` for every row: ``v`` has the residual's shape ``(w, *event)``."""
    if kind == "zero":
        return xp.zeros_like(v)
    if kind == "one":
        return v
    if kind == "constant":
        return float(J) * v  # a Python float: a NumPy scalar times a tensor would not stay a tensor
    if kind == "scalar":
        return xp.reshape(xp.astype(J, v.dtype), _bshape(J, v)) * v
    if kind == "diagonal":
        return J * v
    return xp.matmul(J, v[..., None])[..., 0]  # dense: (w, ..., d, d) @ (w, ..., d, 1)


def _compose(A2: Any, A1: Any, kind: str, xp: Any) -> Any:
    """The linear factor of ``(A2, .) o (A1, .)``: ``A2 A1``."""
    return xp.matmul(A2, A1) if kind == "dense" else A2 * A1


def _shift(a: Any, h: int, xp: Any) -> Any:
    """Rows moved down by ``h``: ``out_t = a_{t-h}``, zero for ``t < h``."""
    w = a.shape[0]
    if h >= w:
        return xp.zeros_like(a)
    pad = xp.zeros((h, *a.shape[1:]), dtype=a.dtype, device=_device(a))
    return xp.concat([pad, a[: w - h, ...]], axis=0)


def shift_rows(a: Any, *, xp: Any) -> Any:
    """``out_t = a_{t-1}`` with ``out_0 = 0`` (``delta_{lo-1} = 0``); same shape as ``a``."""
    return _shift(a, 1, xp)


def _device(a: Any) -> Any:
    from ._backend import device

    return device(a)


def _mul(A: Any, y: Any, kind: str, xp: Any) -> Any:
    return apply_linear(A, y, kind=kind, xp=xp)


def _odd_even(J: Any, r: Any, kind: str, xp: Any) -> Any:
    """The untruncated scan by odd-even reduction: depth ``O(log w)``, work ``O(w)`` compositions.

    Pairs ``(2k, 2k+1)`` are combined into ``(J_{2k+1} J_{2k}, J_{2k+1} r_{2k} + r_{2k+1})``;
    the half-length problem, solved recursively, gives ``delta`` at the odd rows; each even row
    is then one step from the odd row before it. Unlike Hillis-Steele doubling there is no
    ``log w`` factor in the work: ``O(w d^3)`` for dense ``d x d`` blocks, not ``O(w d^3 log w)``.
    """
    w = r.shape[0]
    if w == 1:
        return r
    m = w // 2
    Je, Jo = J[0 : 2 * m : 2, ...], J[1 : 2 * m : 2, ...]
    d_odd = _odd_even(_compose(Jo, Je, kind, xp), _mul(Jo, r[0 : 2 * m : 2, ...], kind, xp) + r[1 : 2 * m : 2, ...], kind, xp)  # delta_{2k+1}
    n_even = w - m
    # delta_{2k} = J_{2k} delta_{2k-1} + r_{2k} for k >= 1; delta_0 = r_0
    d_even = xp.concat([r[0:1, ...], _mul(J[2:w:2, ...], d_odd[: n_even - 1, ...], kind, xp) + r[2:w:2, ...]], axis=0)
    inter = xp.reshape(xp.stack([d_even[:m, ...], d_odd], axis=1), (2 * m, *r.shape[1:]))  # rows 0 .. 2m - 1
    return inter if w == 2 * m else xp.concat([inter, d_even[m:, ...]], axis=0)


def affine_scan(J: Any, r: Any, *, order: int | None = None, xp: Any) -> Any:
    """``delta_t = J_t delta_{t-1} + r_t`` (``delta_{-1} = 0``), keeping the ``order`` newest terms.

    Parameters
    ----------
    J : None, number, or array
        The linear part (see the module docstring): ``None``/``0``, ``1``, another number,
        per-row scalars ``(w,)``, elementwise ``(w, *event)`` or dense ``(w, *event, d)``.
    r : array, shape ``(w, *event)``
        The residual rows.
    order : int or None
        ``k >= 0``: ``delta_t = sum_{l=max(t-k+1,0)}^{t} Phi(l->t) r_l``; ``0`` gives zeros,
        ``1`` gives ``r``; ``None`` keeps every term.
    xp : namespace

    Returns
    -------
    array, shape ``(w, *event)``, dtype of ``r``
    """
    kind = linear_kind(J, r)
    w = r.shape[0]
    order = None if order is None else check_int("order", order, 0, hint="or None (the full scan)")
    k = None if order is None or order >= w else order
    if k == 0:
        return xp.zeros_like(r)
    if kind == "zero" or k == 1 or w == 0:
        return r
    if kind == "one":  # running sums; truncated: C_t - C_{t-k}
        csum = xp.cumulative_sum(r, axis=0)
        return csum if k is None else csum - _shift(csum, k, xp)
    if kind == "constant":
        J = xp.full((w,), float(J), dtype=r.dtype, device=_device(r))
        kind = "scalar"
    if k is None:
        return _odd_even(J, r, kind, xp)
    # binary lifting: segments (t - 2^b, t] of every level b, combined for the set bits of k
    out_A, out_y, pos = None, None, 0
    seg_A, seg_y, h, rest = J, r, 1, k
    while rest:
        if rest & 1:
            sA, sy = (seg_A, seg_y) if pos == 0 else (_shift(seg_A, pos, xp), _shift(seg_y, pos, xp))
            if out_y is None:
                out_A, out_y = sA, sy
            else:  # out covers (t - pos, t]; the new segment (t - pos - h, t - pos] is applied first
                out_y = out_y + _mul(out_A, sy, kind, xp)
                if rest > 1:
                    out_A = _compose(out_A, sA, kind, xp)
            pos += h
        rest >>= 1
        if rest:  # next level: segments of length 2h
            seg_y = seg_y + _mul(seg_A, _shift(seg_y, h, xp), kind, xp)
            seg_A = _compose(seg_A, _shift(seg_A, h, xp), kind, xp)
            h *= 2
    return out_y
