"""Anderson (type II) and Triangular Anderson acceleration (ParaTAA) of the window iteration.

Notation (DESIGN 3; ``w`` window rows, ``S`` independent samples, ``d`` values per sample,
``m`` difference pairs):

===========  ===================  ==========================================================
``x``        ``(w, S, d)``        current iterate of the window rows
``r``        ``(w, S, d)``        map residual ``R = G(x) - x``
``dX, dR``   ``(m, w, S, d)``     newest-first differences of iterates and of residuals
                                  between consecutive rounds; zero where not valid
``gram``     ``(w, S, m, m)``     ``dR_i dR_i^T`` per row (float64 where available)
``gamma``    ``(w, S, m, 1)``     mixing coefficients
===========  ===================  ==========================================================

Type-II Anderson fits one ``gamma`` for the whole window; TAA [TAA] fits one per row from
prefix sums over the rows it depends on::

    gamma_i = (sum_{s<=i} dR_s dR_s^T + lambda_i I)^{-1} sum_{s<=i} dR_s R_s
    x_i    <- x_i + R_i - (dX_i + dR_i)^T gamma_i

``lambda_i = max(regularization, 1e-12) * trace(.)/m`` is relative to the Gram matrix, so scaling the
system does not change the iteration. History slots are aligned by round across rows, so a
row that entered the window late uses its newest valid differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .._backend import device, finite, namespace, solve_unchecked, to_host, work_dtype
from .._validate import check_float, check_int
from .base import FusedStep, Solver, StepContext
from .safeguard import Safeguard

__all__ = ["Anderson", "TriangularAnderson", "AndersonState"]

_FLOOR = 1e-300  # keeps a zero Gram solvable: gamma = 0, the plain step
_MIN_REG = 1e-12  # relative floor: (gram + lambda I) is never singular in float64


@dataclass
class AndersonState:
    """Per-solve state of :class:`Anderson` / :class:`TriangularAnderson`."""

    lo: int = 0
    hi: int = 0
    x_prev: Any = None  # (w_prev, S, d)
    r_prev: Any = None  # (w_prev, S, d)
    err_prev: np.ndarray | None = None  # (w_prev,)
    dX: Any = None  # (slots, w_prev, S, d): newest first; the first `pairs` slots are valid, any further ones zero
    dR: Any = None
    pairs: int | None = None  # None: every slot of dX is valid
    accelerated: bool = False
    num_restarts: int = 0
    num_rejections: int = 0
    # the (rows, S) device masks of accepted coefficients of the latest accelerated rounds (at most
    # _FOLD_EVERY; then folded into fallback_count), and the device count of earlier rounds' rejected rows
    valid_masks: list = field(default_factory=list)
    fallback_count: Any = None
    eye: Any = None  # (m, m) work-dtype identity, built once per solve
    counts: Any = None  # (m,) work-dtype 1, 2, ..., m: the fused round's pair count, a device scalar (built with eye)
    err_device: Any = None  # (w_prev,) err_prev on the device, kept by the fused round (its restart test)
    active: Any = None  # (w_prev, S) device bool: the pairs in their sample's window (a per-sample solve), else None


def _rows(a: Any, lo_old: int, hi_old: int, lo: int, hi: int, *, axis: int) -> tuple[Any, int]:
    """Rows ``[lo, min(hi, hi_old))`` of ``a`` (stored for ``[lo_old, hi_old)``) and their count."""
    size = hi_old - lo_old
    begin = min(lo - lo_old, size)
    end = max(min(hi, hi_old) - lo_old, begin)
    idx = (slice(None),) * axis + (slice(begin, end), Ellipsis)
    return a[idx], end - begin


def _host_rms(e: np.ndarray) -> float:
    """RMS of the host errors ``e`` (``>= 0`` or nan), a nan counting as ``inf``: the safeguard's residual size.

    The same value as ``sqrt(mean(square(nan_to_num(e, nan=inf))))`` (the same pairwise sum and
    correctly rounded square root) at a tenth of the host time: it runs every accelerated round.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        s = float(np.add.reduce(e * e))
    return math.inf if math.isnan(s) else math.sqrt(s / e.size)


def _overlap(state: AndersonState, lo: int, hi: int) -> int:
    """Rows of the window ``[lo, hi)`` that the previous round's window also held (:func:`_rows`' count)."""
    size = state.hi - state.lo
    begin = min(lo - state.lo, size)
    return max(min(hi, state.hi) - state.lo, begin) - begin


def _flat(x: Any, r: Any, batch_ndim: int, xp: Any) -> tuple[Any, Any]:
    """The window's iterate and residual ``(w, *event)`` as ``(w, S, d)`` (``S`` samples of ``d`` values)."""
    w = x.shape[0]
    S = math.prod(x.shape[1 : 1 + batch_ndim])
    return xp.reshape(x, (w, S, -1)), xp.reshape(r, (w, S, -1))


def _pad_rows(a: Any, w: int, *, axis: int, xp: Any) -> Any:
    """Zero-pad ``a`` along ``axis`` to ``w`` rows (rows without a valid value)."""
    have = a.shape[axis]
    if have == w:
        return a
    shape = list(a.shape)
    shape[axis] = w - have
    return xp.concat([a, xp.zeros(tuple(shape), dtype=a.dtype, device=device(a))], axis=axis)


@dataclass(frozen=True, kw_only=True)
class _AndersonBase(Solver):
    history_size: int = 2
    regularization: float = 1e-6
    max_coefficient: float = 1e4
    safeguard: Safeguard | None = field(default_factory=Safeguard)
    triangular: bool = field(default=True, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "history_size", check_int("history_size", self.history_size, 1, hint="(difference pairs kept)"))
        for name in ("regularization", "max_coefficient"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), 0.0))
        if self.safeguard is not None and not isinstance(self.safeguard, Safeguard):
            raise TypeError(f"safeguard must be a trisolve.Safeguard or None, got {type(self.safeguard).__name__}.")

    def init(self) -> AndersonState:
        return AndersonState()

    def stats(self, state: AndersonState) -> dict[str, int]:
        return {
            "num_restarts": state.num_restarts,
            "num_rejections": state.num_rejections,
            "num_fallback_rows": _count_fallback_rows(state.valid_masks, state.fallback_count),  # read once, at the end
        }

    def step(self, ctx: StepContext, state: AndersonState) -> tuple[Any, AndersonState]:
        xp, lo, hi = ctx.xp, ctx.lo, ctx.hi
        w = hi - lo
        event = tuple(ctx.x.shape[1:])
        x, r = _flat(ctx.x, ctx.r, ctx.batch_ndim, xp)  # (w, S, d)

        if state.x_prev is None:  # first round, or after a rejection
            return ctx.g, self._first(ctx, state, x, r)

        ov = _overlap(state, lo, hi)
        # a per-sample solve: a pair's difference is information only where it was in its sample's window in both
        # rounds (a frozen pair's zero residual, or one not yet reached, is no iterate of the fixed-point map)
        both = None if ctx.active is None else ctx.active[:ov, ...] & _rows(state.active, state.lo, state.hi, lo, hi, axis=0)[0]
        reject, restart = self._verdict(state, lo, hi, ov, ctx.errors)
        if reject:
            # the rows present in both rounds take the plain step from the previous iterate;
            # rows without a previous iterate take the plain step from now
            x_prev, _ = _rows(state.x_prev, state.lo, state.hi, lo, hi, axis=0)
            r_prev, _ = _rows(state.r_prev, state.lo, state.hi, lo, hi, axis=0)
            plain = x_prev + r_prev
            if both is not None:  # a pair without a previous iterate takes the plain step from now
                plain = xp.where(both[..., None], plain, xp.reshape(ctx.g[:ov, ...], x_prev.shape))
            plain = xp.reshape(plain, (ov, *event))
            proposal = xp.concat([plain, ctx.g[ov:, ...]], axis=0) if ov < w else plain
            new = AndersonState(
                num_restarts=state.num_restarts,
                num_rejections=state.num_rejections + 1,
                valid_masks=state.valid_masks,
                fallback_count=state.fallback_count,
                eye=state.eye,
            )
            return proposal, new

        # -- newest difference pair and the history, mixed (the device part: compiled in a compiled solve)
        eye = self._eye(state, x)
        arrays, k = self._history(state, lo, hi, restart, eye)
        # one compiled function per history length and overlap kind: few graphs each, so few guards to check a call
        update = ctx.jit(_update, ("anderson", self, k, ov == w, both is None))
        with np.errstate(all="ignore"):  # inf - inf, overflow and singular systems are detected and handled on the device
            proposal, valid, dX, dR = update(self, x, r, *arrays, ctx.x, start=ctx.start, xp=xp, pairs=None, both=both)
        return proposal, self._advanced(ctx, state, x, r, dX, dR, valid, restart, eye, k)

    def fused_step(self, state: AndersonState, lo: int, hi: int, *, xp: Any) -> FusedStep:
        """The step as a :class:`~trisolve.solvers.base.FusedStep`: the safeguard's restart decided on the device too.

        ``finish`` applies the safeguard's host test after the read: a rejection, or a restart
        decision that differs from the device's where kept history would be dropped (the two
        residual sizes are summed in different orders), is not what ``fn`` computed, and the
        driver calls :meth:`step`.
        """
        if state.x_prev is None:
            return FusedStep(_fused_plain, ("plain",), (), lambda ctx, out, checks: (True, self._first(ctx, state, *out)))
        ov = _overlap(state, lo, hi)
        eye = self._eye(state, state.x_prev)
        counts = state.counts if state.counts is not None else xp.arange(1, self.history_size + 1, dtype=eye.dtype, device=device(eye))
        arrays, k = self._history(state, lo, hi, False, eye, padded=True)
        if state.err_device is None:  # a state kept by step: no device errors, no restart on the device
            err_prev = xp.full((ov,), math.inf, dtype=eye.dtype, device=device(eye))
        else:
            err_prev, _ = _rows(state.err_device, state.lo, state.hi, lo, hi, axis=0)
        arrays = (*arrays, counts[k - 1], err_prev)
        dropped = k > 1  # what a restart drops

        def finish(ctx: StepContext, out: tuple, checks: np.ndarray) -> tuple[bool, AndersonState | None]:
            reject, restart = self._verdict(state, lo, hi, ov, ctx.errors)
            if reject or (dropped and restart != bool(checks[0] > 0.5)):
                return False, None
            x, r, valid, dX, dR, err = out
            return True, self._advanced(ctx, state, x, r, dX, dR, valid, restart, eye, 1 if restart else k, counts=counts, err_device=err)

        # one graph for every history length (padded to m - 1 kept pairs): each round calls the same, warm graph
        return FusedStep(_fused_update, ("anderson", self, ov == hi - lo), (self, *arrays), finish)

    def _first(self, ctx: StepContext, state: AndersonState, x: Any, r: Any, err: Any = None) -> AndersonState:
        """The state after a round without a previous iterate (the first, or after a rejection): the plain step, kept
        (``err``: the errors on the device, from the fused round)."""
        return replace(state, lo=ctx.lo, hi=ctx.hi, x_prev=x, r_prev=r, err_prev=ctx.errors, dX=None, dR=None, accelerated=False,
                       err_device=err, active=ctx.active)  # fmt: skip

    def _verdict(self, state: AndersonState, lo: int, hi: int, ov: int, errors: np.ndarray) -> tuple[bool, bool]:
        """The safeguard's ``(reject, restart)``: residual growth over the ``ov`` rows present in both rounds (host errors;
        a non-finite error counts as infinite growth)."""
        if self.safeguard is None or ov == 0:
            return False, False
        e_prev, _ = _rows(state.err_prev, state.lo, state.hi, lo, hi, axis=0)
        rho_prev, rho = _host_rms(e_prev), _host_rms(errors[:ov])
        if state.accelerated and rho > self.safeguard.reject_growth * rho_prev:
            return True, False
        return False, rho > self.safeguard.restart_growth * rho_prev

    def _eye(self, state: AndersonState, like: Any) -> Any:
        """The ``(m, m)`` work-dtype identity: built once per solve, then kept in the state (dX never holds more than m pairs)."""
        if state.eye is not None:
            return state.eye
        xp = namespace(like)
        return xp.eye(self.history_size, dtype=work_dtype(xp, device(like)), device=device(like))

    def _history(self, state: AndersonState, lo: int, hi: int, restart: bool, eye: Any, *, padded: bool = False) -> tuple[tuple, int]:
        """``(x_prev, r_prev, old_dX, old_dR, eye)`` for the window ``[lo, hi)`` (:func:`_update`'s arguments) and ``k``, the pairs mixed.

        ``padded`` (the fused round, no restart): the kept pairs as ``m - 1`` slots (:meth:`_padded`) and the whole identity.
        """
        m = self.history_size
        x_prev, _ = _rows(state.x_prev, state.lo, state.hi, lo, hi, axis=0)
        r_prev, _ = _rows(state.r_prev, state.lo, state.hi, lo, hi, axis=0)
        old_dX = old_dR = None
        kept = 0 if state.dX is None or restart else min(m - 1, state.dX.shape[0] if state.pairs is None else state.pairs)  # older pairs mixed
        if padded:
            return (x_prev, r_prev, *self._padded(state, lo, hi, x_prev), eye), 1 + kept
        if kept:
            old_dX, _ = _rows(state.dX, state.lo, state.hi, lo, hi, axis=1)
            old_dR, _ = _rows(state.dR, state.lo, state.hi, lo, hi, axis=1)
            old_dX, old_dR = old_dX[:kept, ...], old_dR[:kept, ...]
        k = 1 + kept  # difference pairs this round
        return (x_prev, r_prev, old_dX, old_dR, eye[:k, :k]), k

    def _padded(self, state: AndersonState, lo: int, hi: int, x_prev: Any) -> tuple[Any, Any]:
        """The kept pairs ``(old_dX, old_dR)`` for the window ``[lo, hi)`` as ``m - 1`` slots, zero after the valid ones
        (``None`` for ``m = 1``), assuming no restart: the fused round's history, so that one compiled graph serves every
        history length (:func:`_fused_update`). A history the fused round kept has ``m`` slots already (zero past the
        valid ones): a view, no copy; ``step``'s ``k`` slots are padded with zeros."""
        slots = self.history_size - 1
        if slots == 0:
            return None, None
        xp = namespace(x_prev)
        if state.dX is None:
            zeros = xp.zeros((slots, *x_prev.shape), dtype=x_prev.dtype, device=device(x_prev))
            return zeros, zeros
        old = (_rows(a, state.lo, state.hi, lo, hi, axis=1)[0][:slots, ...] for a in (state.dX, state.dR))
        return tuple(_pad_rows(a, slots, axis=0, xp=xp) for a in old)

    def _advanced(self, ctx: StepContext, state: AndersonState, x: Any, r: Any, dX: Any, dR: Any, valid: Any, restart: bool,
                  eye: Any, k: int, *, counts: Any = None, err_device: Any = None) -> AndersonState:  # fmt: skip
        """The state after an accelerated round (``counts``, ``err_device``: the fused round's, else ``state.counts`` and none)."""
        return AndersonState(
            lo=ctx.lo,
            hi=ctx.hi,
            x_prev=x,
            r_prev=r,
            err_prev=ctx.errors,
            dX=dX,
            dR=dR,
            pairs=k,
            accelerated=True,
            num_restarts=state.num_restarts + int(restart),
            num_rejections=state.num_rejections,
            **_record_valid(state, valid[ctx.start :, ...], ctx.xp),
            eye=eye,
            counts=state.counts if counts is None else counts,
            err_device=err_device,
            active=ctx.active,
        )

    def _mix(self, x: Any, r: Any, dX: Any, dR: Any, *, start: Any, xp: Any, eye: Any = None, pairs: Any = None) -> tuple[Any, Any]:
        """The Anderson update of every row; returns ``(proposal (w, S, d), valid (w, S) device bool)``.

        ``start``: the first accelerated row (an int, or a 0-d device integer in the fused compiled
        round); :class:`Anderson` fits its one coefficient vector on the rows from it. ``pairs``:
        the valid pairs when ``dX`` is padded with zero pairs (a device scalar; ``None``: all are).

        A row/sample whose residual is not finite adds nothing to the fitted sums (so it does
        not spoil the prefix sums of the rows after it); its own proposal is not finite and
        the driver replaces it. ``eye``: the ``(m, m)`` identity in the work dtype (built when ``None``).

        Every mask here is a ``where`` with a scalar and every finiteness test a cheap one
        (:func:`~trisolve._backend.finite`): each op is a kernel launch on a GPU, and a round
        of a small network is bound by launches (``benchmarks/launches.py``).
        """
        m = dX.shape[0]
        f64 = work_dtype(xp, device(x))
        eye = xp.eye(m, dtype=f64, device=device(x)) if eye is None else eye
        r_ok = finite(xp.sum(r, axis=-1), xp)  # (w, S); an overflowing sum counts as not finite
        r_fit = xp.where(r_ok[..., None], r, 0.0)
        dRt = xp.permute_dims(dR, (1, 2, 0, 3))  # (w, S, m, d)
        gram = xp.astype(xp.matmul(dRt, xp.matrix_transpose(dRt)), f64)  # (w, S, m, m)
        rhs = xp.astype(xp.matmul(dRt, r_fit[..., None]), f64)  # (w, S, m, 1)
        if self.triangular:
            gram = xp.cumulative_sum(gram, axis=0)
            rhs = xp.cumulative_sum(rhs, axis=0)
        else:  # one coefficient vector for the rows being accelerated
            if not isinstance(start, int):  # a device index (the fused compiled round): the rows from it, by a mask
                rows = xp.reshape(xp.arange(gram.shape[0], device=device(x)) >= start, (-1, 1, 1, 1))
                gram, rhs = xp.where(rows, gram, 0.0), xp.where(rows, rhs, 0.0)
                start = 0
            gram = xp.broadcast_to(xp.sum(gram[start:, ...], axis=0, keepdims=True), gram.shape)
            rhs = xp.broadcast_to(xp.sum(rhs[start:, ...], axis=0, keepdims=True), rhs.shape)
        trace = xp.sum(gram * eye, axis=(-2, -1))  # (w, S)
        lam = max(self.regularization, _MIN_REG) * trace / (m if pairs is None else pairs) + _FLOOR
        ok_sys = finite(lam, xp)  # an overflowing Gram: no solve for that row
        lam = xp.where(ok_sys, lam, 1.0)
        A = xp.where(ok_sys[..., None, None], gram, 0.0) + lam[..., None, None] * eye
        # no error check (on a GPU it would wait for the device): a failed solve is not finite, caught next
        gamma = solve_unchecked(A, xp.where(ok_sys[..., None, None], rhs, 0.0), xp)  # (w, S, m, 1)
        bound = xp.max(xp.abs(gamma), axis=(-2, -1))  # (w, S); nan propagates
        ok = ok_sys & (bound <= self.max_coefficient)  # nan and inf compare False
        gamma = xp.where(ok[..., None, None], gamma, 0.0)
        mix = xp.permute_dims(dX + dR, (1, 2, 3, 0))  # (w, S, d, m)
        correction = xp.matmul(mix, xp.astype(gamma, x.dtype))[..., 0]  # (w, S, d)
        return x + r - correction, ok


def _update(solver: _AndersonBase, x: Any, r: Any, x_prev: Any, r_prev: Any, old_dX: Any, old_dR: Any, eye: Any, like: Any, *, start: int,
            xp: Any, pairs: Any = None, both: Any = None) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    """One accelerated round's device arithmetic: ``(proposal like ctx.x, valid (w, S), dX, dR)``.

    ``x, r`` ``(w, S, d)``: the window's iterate and map residual; ``x_prev, r_prev`` ``(ov, S, d)``:
    the previous round's, for the window's first ``ov`` rows (those present in both rounds);
    ``old_dX, old_dR`` ``(k - 1, ov, S, d)``: the older difference pairs kept for those rows, or
    ``None`` (first accelerated round, or a restart); ``eye``: the ``(k, k)`` identity. Rows
    without a previous iterate, or whose differences are not finite (or so large that their sum
    overflows), get zero differences (no information); the history of rows whose coefficients
    are rejected is dropped. ``pairs``: the fused round's padded history (``old_dX`` holds
    ``m - 1`` slots, zero after the valid ones, and ``eye`` is ``(m, m)``): the pairs mixed, ``k``, as
    a device scalar (:meth:`_AndersonBase._mix`). ``both`` ``(ov, S)`` (a per-sample solve, else ``None``):
    the pairs in their sample's window in both rounds; the others get zero differences too, so a
    frozen pair adds nothing to the prefix sums of the rows after it. Pure device arithmetic: the
    compiled round traces it.
    """
    w, ov = x.shape[0], x_prev.shape[0]
    dx = x[:ov, ...] - x_prev
    dr = r[:ov, ...] - r_prev
    fin = finite(xp.sum(dx, axis=-1) + xp.sum(dr, axis=-1), xp)  # (ov, S); inf - inf is caught here
    if both is not None:
        fin = fin & both
    dx = _pad_rows(xp.where(fin[..., None], dx, 0.0), w, axis=0, xp=xp)  # (w, S, d)
    dr = _pad_rows(xp.where(fin[..., None], dr, 0.0), w, axis=0, xp=xp)
    if old_dX is None:
        dX, dR = dx[None, ...], dr[None, ...]
    else:
        dX = xp.concat([dx[None, ...], _pad_rows(old_dX, w, axis=1, xp=xp)], axis=0)
        dR = xp.concat([dr[None, ...], _pad_rows(old_dR, w, axis=1, xp=xp)], axis=0)
    proposal, valid = solver._mix(x, r, dX, dR, start=start, xp=xp, eye=eye, pairs=pairs)
    # drop the history of rows whose coefficients were rejected (on the device, no read)
    keep = valid[None, :, :, None]  # (1, w, S, 1)
    return xp.reshape(proposal, like.shape), valid, xp.where(keep, dX, 0.0), xp.where(keep, dR, 0.0)


def _fused_plain(x: Any, g: Any, r: Any, start: Any, err: Any, *, batch_ndim: int, xp: Any) -> tuple[Any, None, tuple]:
    """A round without a previous iterate (:meth:`_AndersonBase.fused_step`): the plain step, and the window kept as ``(w, S, d)``."""
    return g, None, (*_flat(x, r, batch_ndim, xp), err)


def _device_rms(e: Any, xp: Any) -> Any:
    """:func:`_host_rms` on the device: the RMS of ``e`` with nan counting as ``inf`` (nan for an empty ``e``)."""
    e = xp.where(xp.isnan(e), math.inf, e)
    return xp.sqrt(xp.sum(e * e) / e.shape[0])


def _fused_update(x: Any, g: Any, r: Any, start: Any, err: Any, solver: _AndersonBase, x_prev: Any, r_prev: Any, old_dX: Any,
                  old_dR: Any, eye: Any, pairs: Any, err_prev: Any, *, batch_ndim: int, xp: Any) -> tuple[Any, Any, tuple]:  # fmt: skip
    """An accelerated round (:meth:`_AndersonBase.fused_step`): :func:`_update`'s proposal, the restart as a check, and
    ``(x, r, valid, dX, dR, err)`` for the state.

    The history is padded to ``m`` pairs (``pairs`` of them valid, :meth:`_AndersonBase._padded`): the zero pairs add
    zero rows and columns to each Gram system, whose solve then gives the valid pairs' coefficients and zeros -- the
    same values as the ``k``-pair solve of :meth:`~_AndersonBase.step` to round-off. The safeguard's restart
    (:meth:`_AndersonBase._verdict`, from ``err`` and the previous round's ``err_prev`` on the rows of both) drops the
    kept pairs here, on the device.
    """
    xf, rf = _flat(x, r, batch_ndim, xp)
    restart = xp.zeros((), dtype=xp.bool, device=err.device)
    if solver.safeguard is not None:
        restart = _device_rms(err[: x_prev.shape[0]], xp) > solver.safeguard.restart_growth * _device_rms(err_prev, xp)
        if old_dX is not None:
            old_dX, old_dR = xp.where(restart, 0.0, old_dX), xp.where(restart, 0.0, old_dR)
        pairs = xp.where(restart, 1.0, pairs)
    proposal, valid, dX, dR = _update(solver, xf, rf, x_prev, r_prev, old_dX, old_dR, eye, x, start=start, xp=xp, pairs=pairs)
    return proposal, xp.astype(xp.reshape(restart, (1,)), err.dtype), (xf, rf, valid, dX, dR, err)


@dataclass(frozen=True, kw_only=True)
class TriangularAnderson(_AndersonBase):
    """Triangular Anderson acceleration (TAA, ParaTAA [TAA]).

    Row ``i`` fits its own coefficients from the rows it depends on (prefix sums of per-row
    Gram matrices), then ``x_i <- x_i + R_i - (dX_i + dR_i)^T gamma_i``. Rows up to the
    first unconverged one take the plain step (structural safeguard), so ``n`` rounds always
    suffice.

    Parameters
    ----------
    history_size : int
        Difference pairs ``m`` kept (ParaTAA's "memory size" is ``m + 1``).
    regularization : float
        ``lambda_i`` relative to the mean diagonal of the Gram matrix.
    max_coefficient : float
        Coefficients larger than this (or non-finite) fall back to the plain step for that
        row and drop its history.
    safeguard : Safeguard or None
        Restart / reject rule; ``None`` disables it.

    Examples
    --------
    >>> import numpy as np, trisolve
    >>> sys = trisolve.SemilinearSystem(np.full(50, 0.99), np.full(50, 0.05), lambda y, lo, hi: np.sin(y))
    >>> sol = trisolve.solve(sys, trisolve.TriangularAnderson(), np.ones(3), update_map=trisolve.Unrolled())
    >>> sol.converged, sol.num_rounds < 50
    (True, True)
    """

    triangular: bool = field(default=True, init=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class Anderson(_AndersonBase):
    """Type-II Anderson acceleration with one coefficient vector for the whole window.

    Same parameters and safeguards as :class:`TriangularAnderson`; the Gram matrix and right
    side are summed over all rows being accelerated instead of per-row prefix sums.
    """

    triangular: bool = field(default=False, init=False, repr=False)


_FOLD_EVERY = 16  # masks kept before they are folded into one device count (bounded memory, ~0.3 kernels per round)


def _rejected_rows(masks: list, xp: Any) -> Any:
    """Device int count of rows (any sample) whose coefficients were rejected, over ``(rows, S)`` masks."""
    return xp.sum(xp.astype(~xp.all(xp.concat(masks, axis=0), axis=1), xp.int64))


def _record_valid(state: AndersonState, valid: Any, xp: Any) -> dict:
    """The round's mask of accepted coefficients appended; every ``_FOLD_EVERY`` rounds folded on the device (no read)."""
    masks = state.valid_masks + [valid]
    count = state.fallback_count
    if len(masks) >= _FOLD_EVERY:
        folded = _rejected_rows(masks, xp)
        count, masks = (folded if count is None else count + folded), []
    return {"valid_masks": masks, "fallback_count": count}


def _count_fallback_rows(masks: list, count: Any = None) -> int:
    """Rows (any sample) whose coefficients were rejected: the folded device count plus the kept masks, one read, at the end."""
    total = 0 if count is None else int(to_host(count))
    if masks:
        total += int(to_host(_rejected_rows(masks, namespace(*masks))))
    return total
