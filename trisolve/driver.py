"""The solve driver: the one loop, and the only code that writes the trajectory.

Each round (DESIGN 3-4):

1. evaluate the system on the window ``[lo, hi)`` in one batched call;
2. compute the first-order residual ``F(x) - x`` and the map residual ``G(x) - x`` and their
   scaled errors (:class:`~trisolve.Tolerance`);
3. find ``i*``, the first row that fails the test; rows ``lo .. i*`` take the plain map step
   and become final (row ``i*`` reads only final rows, so it is exact) -- the frozen prefix
   grows by at least one row per round, hence at most ``n`` rounds;
4. the solver proposes values for the rows after ``i*``;
5. the window policy picks the next window; rows entering it start as a copy of the last
   known row (or from ``init``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ._backend import device, is_floating, namespace
from .maps import OneStep, UpdateMap
from .result import RoundInfo, Solution, Status
from .solvers.base import Solver, StepContext
from .systems import TriangularSystem
from .tolerance import Tolerance
from .windows import FullWindow, WindowPolicy

__all__ = ["solve"]


def _first(mask: np.ndarray) -> int:
    """Index of the first True in ``mask``, or ``len(mask)``."""
    i = int(np.argmax(mask)) if mask.size else 0  # argmax of a bool array stops at the first True
    return i if mask.size and mask[i] else mask.shape[0]


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}.")
    return int(value)


def _all_finite(a: Any, xp: Any) -> bool:
    return bool(xp.all(xp.isfinite(a)))


def _prepare(system: Any, x0: Any, init: Any, num_frozen: int) -> tuple[Any, Any, int]:
    """Validate the inputs and build the trajectory buffer ``(n + 1, *event)``."""
    arrays = (x0,) if init is None else (x0, init)
    xp = namespace(*arrays)
    if not is_floating(xp, x0.dtype):
        raise TypeError(f"x0 must have a real floating dtype (float32 or float64), got {x0.dtype}.")
    if not _all_finite(x0, xp):
        raise ValueError("x0 contains nan or inf; every value of row 0 must be finite.")
    n = system.n
    event = tuple(x0.shape)
    if len(event) < system.batch_ndim:
        raise ValueError(f"x0 has {len(event)} axes but the system declares batch_ndim={system.batch_ndim} sample axes.")
    if init is None:
        if num_frozen != 1:
            raise ValueError("num_frozen > 1 keeps rows of an earlier trajectory: pass that trajectory as init.")
        # every row starts as a copy of row 0, so no row ever holds uninitialised memory; rows
        # entering the window later are refreshed from the last known row
        x = xp.asarray(xp.broadcast_to(x0[None, ...], (n + 1, *event)), copy=True)
        return xp, x, 1
    if tuple(init.shape) != (n + 1, *event):
        raise ValueError(f"init must have shape (n + 1, *x0.shape) = {(n + 1, *event)}, got {tuple(init.shape)}.")
    if init.dtype != x0.dtype:
        raise TypeError(f"init has dtype {init.dtype} but x0 has {x0.dtype}; convert one of them.")
    if device(init) != device(x0):
        raise ValueError(f"init is on {device(init)} but x0 is on {device(x0)}; move one of them.")
    if not _all_finite(init, xp):
        raise ValueError("init contains nan or inf; a warm start must be finite.")
    x = xp.asarray(init, copy=True)
    x[0, ...] = x0
    return xp, x, n + 1


def solve(
    system: TriangularSystem,
    solver: Solver,
    x0: Any,
    *,
    update_map: UpdateMap | None = None,
    window: WindowPolicy | None = None,
    atol: float = 1e-6,
    rtol: float = 0.0,
    max_iter: int | None = None,
    early_stop: float | None = None,
    callback: Callable[[RoundInfo], bool | None] | None = None,
    init: Any = None,
    num_frozen: int = 1,
) -> Solution:
    """Solve the lower-triangular system ``x_i = F_i(x_0, ..., x_{i-1})`` in parallel rounds.

    Parameters
    ----------
    system : BlackBoxSystem or SemilinearSystem
        The system; ``system.n`` rows are solved.
    solver : Jacobi, Anderson or TriangularAnderson
        How the rows after the first unconverged one are updated.
    x0 : array, shape ``event``
        Row 0. Its namespace, dtype and device are those of the result.
    update_map : UpdateMap, optional
        The fixed-point map: :class:`OneStep` (default), :class:`Unrolled` (order ``k``,
        semilinear systems) or :class:`Picard`.
    window : WindowPolicy, optional
        :class:`FullWindow` (default) or :class:`SlidingWindow`.
    atol, rtol : float
        Row ``i`` is converged when ``RMS(F_i(x) - x_i) <= atol + rtol * sigma_i`` (and the
        same for the map residual), per sample; see :class:`Tolerance`.
    max_iter : int, optional
        Most rounds to run; at most ``n - num_frozen + 1`` are ever needed (the default).
    early_stop : float, optional
        Stop once the final row is in the window and its change between two rounds, scaled
        like the residual, is ``<= early_stop``.
    callback : callable, optional
        Called as ``callback(info: RoundInfo)`` after each round; a true return stops.
    init : array, shape ``(n + 1, *event)``, optional
        Warm start: the initial trajectory (row 0 is replaced by ``x0``). The answer is the
        same; only the rounds change.
    num_frozen : int
        Rows ``0 .. num_frozen - 1`` of ``init`` are taken as final and kept (partial reuse;
        resume with ``num_frozen=solution.num_frozen``).

    Returns
    -------
    Solution
        Trajectory ``(n + 1, *event)``, status, rounds, evaluations, per-round residuals.

    Examples
    --------
    >>> import numpy as np, trisolve
    >>> sys = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1]) + 0.1, n=100)
    >>> sol = trisolve.solve(sys, trisolve.Jacobi(), np.zeros(2), atol=1e-12)
    >>> ref = trisolve.forward_substitution(sys, np.zeros(2))
    >>> bool(np.allclose(sol.trajectory, ref, atol=1e-10)), sol.num_rounds <= 100
    (True, True)
    """
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a trisolve solver (Jacobi(), TriangularAnderson(), ...), got {type(solver).__name__}.")
    if not isinstance(system, TriangularSystem):
        raise TypeError(f"system must be a BlackBoxSystem or SemilinearSystem, got {type(system).__name__}.")
    update_map = OneStep() if update_map is None else update_map
    if not isinstance(update_map, UpdateMap):
        raise TypeError(f"update_map must be OneStep(), Unrolled(order) or Picard(order), got {type(update_map).__name__}.")
    update_map.check(system)
    window = FullWindow() if window is None else window
    if not isinstance(window, WindowPolicy):
        raise TypeError(f"window must be FullWindow() or SlidingWindow(size), got {type(window).__name__}.")
    tol = Tolerance(atol=atol, rtol=rtol)
    n = system.n
    num_frozen = _check_int("num_frozen", num_frozen, 1)
    if num_frozen > n + 1:
        raise ValueError(f"num_frozen must be <= n + 1 = {n + 1}, got {num_frozen}.")
    max_iter = n - num_frozen + 1 if max_iter is None else _check_int("max_iter", max_iter, 0)
    if early_stop is not None and (not isinstance(early_stop, (int, float)) or not early_stop >= 0 or math.isinf(early_stop)):
        raise ValueError(f"early_stop must be a finite number >= 0 or None, got {early_stop!r}.")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}.")

    xp, x, filled = _prepare(system, x0, init, num_frozen)
    sigma = system.sigma  # (n,) rows 1..n
    batch_ndim = system.batch_ndim
    cache = system.new_cache()
    linear = getattr(system, "linear_rows", np.zeros(n + 1, dtype=bool))  # (n + 1,) bool
    state = solver.init()

    lo = num_frozen
    rounds = evals = 0
    windows: list[tuple[int, int]] = []
    errors: list[np.ndarray] = []
    status, error = Status.CONVERGED, None

    while lo <= n:
        if rounds >= max_iter:
            status = Status.MAX_ITER
            break
        hi = window.end(lo, n)
        if hi > filled:  # rows entering the window start as a copy of the last known row
            x[filled:hi, ...] = xp.broadcast_to(x[filled - 1 : filled, ...], (hi - filled, *x.shape[1:]))
            filled = hi
        try:
            ev = system.evaluate(x, lo, hi, cache, xp=xp)
        except KeyboardInterrupt as exc:
            status, error = Status.INTERRUPTED, exc
            break
        except Exception as exc:  # kept on the Solution, never swallowed: status FAILED + error
            status, error = Status.FAILED, exc
            break
        rounds += 1
        evals += ev.num_evals
        xw = xp.asarray(x[lo:hi, ...], copy=True)  # (w, *event); a copy: the buffer is written below
        s_rows = sigma[lo - 1 : hi - 1]
        d = ev.f - xw  # first-order residual
        err = tol.scaled_error(d, s_rows, batch_ndim=batch_ndim, xp=xp)
        g = update_map.apply(x, ev, lo, hi, system, xp=xp)
        if update_map.is_one_step:
            r = d  # G = F: the map residual is the first-order one
        else:
            r = g - xw
            err = np.maximum(err, tol.scaled_error(r, s_rows, batch_ndim=batch_ndim, xp=xp))  # nan propagates
        windows.append((lo, hi))
        errors.append(err)

        istar = _first(~(err <= 1.0))  # first unconverged (nan compares False: unconverged)
        bad = hi - lo if not math.isnan(err.sum()) else _first(np.isnan(err))  # err >= 0: the sum is nan iff a row is
        start = min(istar + 1, hi - lo)  # rows [0, start) take the plain step and freeze
        if bad < hi - lo:
            start = min(start, bad)
            if start:
                x[lo : lo + start, ...] = g[:start, ...]
            lo += start
            status = Status.NONFINITE
            break
        if start < hi - lo:
            proposal, state = solver.step(
                StepContext(x=xw, g=g, r=r, errors=err, lo=lo, hi=hi, start=start, batch_ndim=batch_ndim, xp=xp),
                state,
            )
        else:
            proposal = g
        change = None
        if early_stop is not None and hi == n + 1:
            change = tol.scaled_error(proposal[-1:, ...] - xw[-1:, ...], sigma[-1:], batch_ndim=batch_ndim, xp=xp)[0]
        # rows [lo, lo + start) take the plain step, the rest the solver's proposal
        if proposal is g:
            x[lo:hi, ...] = g
        else:
            if start:
                x[lo : lo + start, ...] = g[:start, ...]
            x[lo + start : hi, ...] = proposal[start:, ...]
        # a linear row (no g term) right after the frozen prefix reads only final rows: it is
        # exact now, without an evaluation, and freezes in this round too
        while lo + start < hi and linear[lo + start]:
            x[lo + start, ...] = system.linear_step(x, lo + start, xp=xp)
            start += 1
        window_lo, lo = lo, lo + start
        # the callback sees every round, the last one included
        stop = callback is not None and bool(callback(RoundInfo(rounds, window_lo, hi, lo, err, x)))
        if lo > n:
            break
        if change is not None and change <= early_stop:
            status = Status.EARLY_STOPPED
            break
        if stop:
            status = Status.STOPPED_BY_CALLBACK
            break

    return Solution(
        trajectory=x,
        status=status,
        num_rounds=rounds,
        num_evals=evals,
        num_frozen=lo,
        windows=windows,
        round_errors=errors,
        error=error,
        num_restarts=getattr(state, "num_restarts", 0),
        num_rejections=getattr(state, "num_rejections", 0),
        num_fallback_rows=getattr(state, "num_fallback_rows", 0),
    )
