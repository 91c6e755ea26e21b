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

from collections.abc import Callable
from typing import Any

import numpy as np

from ._backend import device, is_floating, namespace, no_grad, to_host
from ._validate import check_float, check_int
from .defaults import default_method
from .gradients import Adjoint, check_gradients_supported
from .gradients import attach as attach_gradients
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


def _all_finite(a: Any, xp: Any) -> bool:
    return bool(xp.all(xp.isfinite(a)))


def _prepare(system: Any, x0: Any, init: Any, num_frozen: int) -> tuple[Any, Any, int]:
    """Validate the inputs and build the C-contiguous trajectory buffer ``(n + 1, *event)``."""
    arrays = (x0,) if init is None else (x0, init)
    xp = namespace(*arrays)
    if not is_floating(xp, x0.dtype):
        raise TypeError(f"x0 must have a real floating dtype (float16, bfloat16, float32 or float64), got {x0.dtype}.")
    if not _all_finite(x0, xp):
        raise ValueError("x0 contains nan or inf; every value of row 0 must be finite.")
    n = system.n
    event = tuple(x0.shape)
    if len(event) < system.batch_ndim:
        raise ValueError(f"x0 has {len(event)} axes but the system declares batch_ndim={system.batch_ndim} sample axes.")
    if init is not None:
        if tuple(init.shape) != (n + 1, *event):
            raise ValueError(f"init must have shape (n + 1, *x0.shape) = {(n + 1, *event)}, got {tuple(init.shape)}.")
        if init.dtype != x0.dtype:
            raise TypeError(f"init has dtype {init.dtype} but x0 has {x0.dtype}; convert one of them.")
        if device(init) != device(x0):
            raise ValueError(f"init is on {device(init)} but x0 is on {device(x0)}; move one of them.")
        if not _all_finite(init, xp):
            raise ValueError("init contains nan or inf; a warm start must be finite.")
    elif num_frozen != 1:
        raise ValueError("num_frozen > 1 keeps rows of an earlier trajectory: pass that trajectory as init.")
    # a fresh buffer in the namespace's default (C) order, whatever the strides of x0 / init
    x = xp.empty((n + 1, *event), dtype=x0.dtype, device=device(x0))
    if init is None:
        # every row starts as a copy of row 0, so no row ever holds uninitialised memory; rows
        # entering the window later are refreshed from the last known row
        x[...] = xp.broadcast_to(x0[None, ...], x.shape)
        return xp, x, 1
    x[...] = init
    x[0, ...] = x0
    return xp, x, n + 1


def solve(
    system: TriangularSystem,
    solver: Solver | None,
    x0: Any,
    *,
    update_map: UpdateMap | None = None,
    window: WindowPolicy | None = None,
    atol: float = 1e-6,
    rtol: float = 0.0,
    max_iter: int | None = None,
    early_stop: float | None = None,
    final_row_atol: float | None = None,
    callback: Callable[[RoundInfo], bool | None] | None = None,
    init: Any = None,
    num_frozen: int = 1,
    gradients: bool | Adjoint = False,
) -> Solution:
    """Solve the lower-triangular system ``x_i = F_i(x_0, ..., x_{i-1})`` in parallel rounds.

    Parameters
    ----------
    system : BlackBoxSystem or SemilinearSystem
        The system; ``system.n`` rows are solved.
    solver : Jacobi, Anderson, TriangularAnderson or None
        How the rows after the first unconverged one are updated. ``None``: the default
        method (:func:`trisolve.defaults.default_method`): ``Jacobi()`` on
        ``Newton("dense")`` when Jacobians are available (a ``jacobian=`` callable, or PyTorch
        tensors with at most 256 values per sample), else on ``Newton("secant")``; with an
        ``update_map`` given, ``Jacobi()`` on that map.
    x0 : array, shape ``event``
        Row 0. Its namespace, dtype and device are those of the result.
    update_map : UpdateMap, optional
        The fixed-point map: :class:`OneStep` (default when a solver is given),
        :class:`Unrolled` (order ``k``, semilinear systems), :class:`Picard` or
        :class:`Newton`.
    window : WindowPolicy, optional
        :class:`FullWindow` (default) or :class:`SlidingWindow`.
    atol, rtol : float
        Row ``i`` is converged when ``RMS(F_i(x) - x_i) <= atol + rtol * sigma_i`` (and the
        same for the map residual), per sample; see :class:`Tolerance`.
    max_iter : int, optional
        Most rounds to run; at most ``n - num_frozen + 1`` are ever needed (the default).
    early_stop : float, optional
        Stop once the final row is in the window and its change made by the previous round,
        scaled like the residual, is ``<= early_stop`` (status ``EARLY_STOPPED``).
    final_row_atol : float, optional
        Output-aware finish: stop once row ``n`` is in the window and its first-order
        residual ``RMS(F_n(x) - x_n)`` at the iterate the round started from is
        ``<= final_row_atol`` for every sample (absolute, in the trajectory's units, not
        scaled by ``sigma``); that round's update is still applied. Status
        ``FINAL_ROW_CONVERGED``, which counts as ``status.ok``: the final row is within this
        tolerance, earlier rows from ``num_frozen`` on may not be. ``None`` (default) runs
        until every row is converged. For images in ``[-1, 1]``, one 8-bit grey level is
        ``2 / 255 ~ 7.8e-3``.
    callback : callable, optional
        Called as ``callback(info: RoundInfo)`` after each round; a true return stops.
    init : array, shape ``(n + 1, *event)``, optional
        Warm start: the initial trajectory (row 0 is replaced by ``x0``). The answer is the
        same; only the rounds change.
    num_frozen : int
        Rows ``0 .. num_frozen - 1`` of ``init`` are taken as final and kept (partial reuse;
        resume with ``num_frozen=solution.num_frozen``).
    gradients : bool or Adjoint
        PyTorch only: return a trajectory differentiable with respect to ``x0`` and every
        tensor ``F`` captures, by the adjoint method (:class:`Adjoint`; ``True`` is
        ``Adjoint()``), never by back-propagating through the rounds. Needs a converged solve
        (else :class:`SolveError`); NumPy and array-api-strict arrays raise ``TypeError``. The
        rounds themselves always run without autograd recording.

    Returns
    -------
    Solution
        Trajectory ``(n + 1, *event)``, status, rounds, evaluations, per-round residuals.

    Notes
    -----
    Host traffic: the per-solve tables (thresholds, the map's coefficients, the system's
    coefficients) move to the device once, before the first round. Each round then reads
    one small vector from the device -- the per-row errors, finiteness flags and the finish
    tests -- and builds no array from host data.

    Examples
    --------
    >>> import numpy as np, trisolve
    >>> sys = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1]) + 0.1, n=100)
    >>> sol = trisolve.solve(sys, trisolve.Jacobi(), np.zeros(2), atol=1e-12)
    >>> ref = trisolve.forward_substitution(sys, np.zeros(2))
    >>> bool(np.allclose(sol.trajectory, ref, atol=1e-10)), sol.num_rounds <= 100
    (True, True)
    """
    if not isinstance(system, TriangularSystem):
        raise TypeError(f"system must be a BlackBoxSystem or SemilinearSystem, got {type(system).__name__}.")
    # solver=None: the default method (trisolve.defaults); a given map keeps its plain Jacobi solver
    if solver is None:
        solver, default_map = default_method(system, x0)
        update_map = default_map if update_map is None else update_map
    adjoint = _check_gradients(gradients, x0)
    # the rounds never record autograd graphs: gradients come from the adjoint, not from the rounds
    with no_grad(namespace(x0)):
        solution = _solve(system, solver, x0, update_map=update_map, window=window, atol=atol, rtol=rtol, max_iter=max_iter,
                          early_stop=early_stop, final_row_atol=final_row_atol, callback=callback, init=init, num_frozen=num_frozen)  # fmt: skip
    return solution if adjoint is None else attach_gradients(solution, system, x0, adjoint)


def _check_gradients(gradients: Any, x0: Any) -> Adjoint | None:
    """``gradients=`` as the adjoint settings, or ``None`` when no gradients are asked for."""
    if gradients is False or gradients is None:
        return None
    if gradients is True:
        gradients = Adjoint()
    if not isinstance(gradients, Adjoint):
        raise TypeError(f"gradients must be True, False or trisolve.Adjoint(...), got {type(gradients).__name__}.")
    check_gradients_supported(x0)
    return gradients


def _solve(
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
    final_row_atol: float | None = None,
    callback: Callable[[RoundInfo], bool | None] | None = None,
    init: Any = None,
    num_frozen: int = 1,
) -> Solution:
    """The rounds of :func:`solve` (its arguments, already defaulted)."""
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
    num_frozen = check_int("num_frozen", num_frozen, 1)
    if num_frozen > n + 1:
        raise ValueError(f"num_frozen must be <= n + 1 = {n + 1}, got {num_frozen}.")
    max_iter = n - num_frozen + 1 if max_iter is None else check_int("max_iter", max_iter, 0)
    if early_stop is not None:
        early_stop = check_float("early_stop", early_stop, 0.0, hint="or None")
    if final_row_atol is not None:
        final_row_atol = check_float("final_row_atol", final_row_atol, 0.0, hint="or None")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}.")

    xp, x, filled = _prepare(system, x0, init, num_frozen)
    dev = device(x)
    batch_ndim = system.batch_ndim
    # per-solve tables, on the device, built once
    cache = system.new_cache(x, xp=xp)
    tables = update_map.prepare(system, x, xp=xp)
    thr = tol.device_thresholds(system.sigma, xp=xp, device=dev)  # (n,) rows 1..n
    one_step = update_map.is_one_step
    linear = system.linear_rows  # (n + 1,) host bool
    state = solver.init()

    lo = num_frozen
    rounds = evals = 0
    windows: list[tuple[int, int]] = []
    errors: list[np.ndarray] = []
    status, error = Status.CONVERGED, None
    prev_last = None  # the final row's iterate at the previous round (early_stop)

    while lo <= n:
        if rounds >= max_iter:
            status = Status.MAX_ITER
            break
        hi = window.end(lo, n)
        if isinstance(hi, bool) or not isinstance(hi, (int, np.integer)) or not lo < hi <= n + 1:
            raise ValueError(
                f"window policy {window!r} returned end {hi!r} for lo = {lo}, n = {n}: a window [lo, hi) needs "
                f"lo < hi <= n + 1 (at least one row, none past row n)."
            )
        hi = int(hi)
        w = hi - lo
        if hi > filled:  # rows entering the window start as a copy of the last known row
            x[filled:hi, ...] = xp.broadcast_to(x[filled - 1 : filled, ...], (hi - filled, *x.shape[1:]))
            filled = hi
        try:
            ev = system.evaluate(x, lo, hi, cache, xp=xp)
            with np.errstate(all="ignore"):  # non-finite residuals are detected below, not warned about
                g, r = update_map.apply(tables, x, ev.f, lo, hi, xp=xp)  # G(x) rows and R = G - x   (w, *event)
        except KeyboardInterrupt as exc:
            status, error = Status.INTERRUPTED, exc
            break
        except Exception as exc:  # kept on the Solution, never swallowed: status FAILED + error
            status, error = Status.FAILED, exc
            break
        rounds += 1
        evals += ev.num_evals
        with np.errstate(all="ignore"):  # non-finite residuals are flagged (nan), not warned about
            xw = xp.asarray(x[lo:hi, ...], copy=True)  # (w, *event); a copy: the buffer is written below
            d = ev.f - xw  # first-order residual
            thr_w = thr[lo - 1 : hi - 1]
            # -- everything the host decides on, gathered into one vector and read once
            parts = [tol.row_errors(d, thr_w, batch_ndim=batch_ndim, xp=xp)]  # e_d      (w,)
            if not one_step:
                parts.append(tol.row_errors(r, thr_w, batch_ndim=batch_ndim, xp=xp))  # e_R      (w,)
            last = hi == n + 1
            if last and final_row_atol is not None:  # unscaled RMS of row n's residual, max over samples
                rms = tol.sample_rms(d[-1:, ...], batch_ndim=batch_ndim, xp=xp)
                parts.append(xp.reshape(xp.max(rms, axis=1) if batch_ndim else rms, (1,)))
            if last and early_stop is not None and prev_last is not None:
                parts.append(tol.row_errors(xw[-1:, ...] - prev_last, thr[-1:], batch_ndim=batch_ndim, xp=xp))
        host = to_host(xp.concat(parts, axis=0))  # the one device-to-host read of the round
        e_d = np.array(host[:w])  # a copy: the records keep it, not the whole vector
        pos = w
        if one_step:
            err = e_d
        else:
            e_R = host[pos : pos + w]
            pos += w
            err = np.where(np.isnan(e_d) | np.isnan(e_R), np.nan, np.maximum(e_d, e_R))
        final_ok = False
        if last and final_row_atol is not None:
            final_ok = bool(host[pos] <= final_row_atol)
            pos += 1
        change = None
        if last and early_stop is not None:
            if prev_last is not None:
                change = float(host[pos])
            prev_last = xw[-1:, ...]
        windows.append((lo, hi))
        errors.append(err)

        istar = _first(~(err <= 1.0))  # first unconverged (nan compares False: unconverged)
        start = min(istar + 1, w)  # rows [0, start) take the plain step and freeze
        if istar < w and not np.isfinite(e_d[istar]) and not _all_finite(ev.f[istar, ...], xp):
            # row lo + istar reads only final rows, and F is not finite there: a genuine failure.
            # (The second read of this round happens only here: a residual that is not finite
            # at a row that reads only final rows ends the solve, unless F itself is finite
            # and only the difference to an exploded iterate overflowed.)
            if istar:
                x[lo : lo + istar, ...] = g[:istar, ...]
            lo += istar
            status = Status.NONFINITE
            error = FloatingPointError(
                f"F_{lo} returned nan or inf at row {lo}, which reads only final rows 0..{lo - 1}; "
                "rows before it are final (solution.num_frozen)."
            )
            break
        if start < w:
            with np.errstate(all="ignore"):  # a proposal may overflow: _sanitize replaces it
                proposal, state = solver.step(
                    StepContext(x=xw, g=g, r=r, errors=err, lo=lo, hi=hi, start=start, batch_ndim=batch_ndim, xp=xp),
                    state,
                )
                plain = None if proposal is g else g[start:, ...]
                new = xp.concat([g[:start, ...], _sanitize(proposal[start:, ...], plain, g[start - 1 : start, ...], xp)], axis=0)
        else:
            new = g
        x[lo:hi, ...] = new  # one write: rows [lo, lo + start) final, the rest the next iterate
        # a linear row (no g term) right after the frozen prefix reads only final rows: it is
        # exact now, without an evaluation, and freezes in this round too
        while lo + start < hi and linear[lo + start]:
            x[lo + start, ...] = system.linear_step(x, lo + start, cache, xp=xp)
            start += 1
        window_lo, lo = lo, lo + start
        # the callback sees every round, the last one included
        stop = callback is not None and bool(callback(RoundInfo(rounds, window_lo, hi, lo, err, x)))
        if lo > n:
            break
        if final_ok:
            status = Status.FINAL_ROW_CONVERGED
            break
        if change is not None and change <= early_stop:
            status = Status.EARLY_STOPPED
            break
        if stop:
            status = Status.STOPPED_BY_CALLBACK
            break

    stats = solver.stats(state)
    return Solution(
        trajectory=x,
        status=status,
        num_rounds=rounds,
        num_evals=evals,
        num_frozen=lo,
        windows=windows,
        round_errors=errors,
        error=error,
        num_restarts=int(stats.get("num_restarts", 0)),
        num_rejections=int(stats.get("num_rejections", 0)),
        num_fallback_rows=int(stats.get("num_fallback_rows", 0)),
    )


def _row_finite(a: Any, xp: Any) -> Any:
    """``(w, 1, ..., 1)`` bool: the row's sum is finite (all entries finite and no overflow)."""
    w = a.shape[0]
    return xp.reshape(xp.isfinite(xp.sum(xp.reshape(a, (w, -1)), axis=1)), (w,) + (1,) * (len(a.shape) - 1))


def _sanitize(p: Any, g: Any, anchor: Any, xp: Any) -> Any:
    """Proposal rows ``p`` with every non-finite (or exploding) row replaced, on the device.

    A row of ``p`` whose sum is not finite (a nan or inf entry, or values so large that
    they overflow) falls back to the plain map step ``g`` of that row when that is finite
    (``g=None``: ``p`` is the plain step), else to ``anchor`` (the last final row,
    ``(1, *event)``): the trajectory only ever holds finite values. No host read.
    """
    if p.shape[0] == 0:
        return p
    fallback = anchor if g is None else xp.where(_row_finite(g, xp), g, anchor)
    return xp.where(_row_finite(p, xp), p, fallback)
