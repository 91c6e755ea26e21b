"""What :func:`trisolve.odeint` and :func:`trisolve.solve_ivp` share: a grid of steps as a system, solved.

Row ``i`` of the trajectory is the state at the grid time ``t_i``; ``F_i`` is one step of the
chosen explicit method from ``t_{i-1}`` (DESIGN 13), so a row reads only the row before it and
Newton's map differentiates one step. The pieces:

* :class:`Field` -- the user's ``f(t, y)`` evaluated for a block of rows at once: one call on
  the block when the user says ``f`` takes one (``batched`` / ``vectorized``), else
  ``torch.func.vmap`` over the rows (PyTorch), else a loop over the rows (NumPy, or a PyTorch
  ``f`` that ``vmap`` cannot trace: then a warning says so once).
* :class:`WarningLog` -- warnings the user's ``f`` raises are held back per round. Most come
  from guesses (rows that are not final yet, e.g. overflows on Lorenz while the iterate is far
  off); they are dropped. A round whose warnings coincide with rows becoming final marks those
  rows; after the solve they are evaluated once more, at their final values, in one batched
  call, and what that call raises is shown, once per distinct warning. With gradients the
  adjoint's evaluation of every row at the solution serves as that call. A solve that raises
  no warning costs nothing extra.
* :func:`solve_steps` -- builds the :class:`~trisolve.BlackBoxSystem`, picks the method
  (:func:`trisolve.defaults.default_method`, given a Jacobian of one step on PyTorch), solves,
  and attaches the adjoint when gradients are wanted.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from .._backend import device, from_host, namespace, to_host
from ..defaults import NEWTON_MAX_D, default_method
from ..driver import solve
from ..gradients import Adjoint, differentiable_trajectory
from ..maps import OneStep, UpdateMap
from ..result import Solution
from ..solvers.base import Solver
from ..solvers.jacobi import Jacobi
from ..systems import BlackBoxSystem
from .methods import ODEINT_METHODS, AdamsBashforth, Method

__all__ = ["Field", "WarningLog", "ODEInfo", "solve_steps", "default_atol"]

#: default ``atol`` per state dtype (bytes), times ``max(1, max|y0|)`` (:func:`default_atol`)
_ATOL = {8: 1e-10, 4: 1e-4, 2: 1e-2}
_ATOL_MULTISTEP = {8: 1e-13, 4: 1e-5, 2: 1e-2}


def default_atol(y0: Any, *, multistep: bool = False) -> float:
    """The default tolerance of a step's residual: ``c * max(1, max|y0|)``.

    ``c`` is ``1e-10`` for float64, ``1e-4`` for float32 and ``1e-2`` for 16-bit floats: a few
    hundred to a few thousand units in the last place at the scale of ``y0``. Newton's map
    makes the rows of a one-step method exact to about the square of it when they freeze. A
    multistep method (``explicit_adams``) gets ``1e-13`` (float64) and ``1e-5`` (float32): its
    Newton map uses an approximate Jacobian (the band's rows moved together), so a frozen row
    keeps an error of about ``atol`` (with ``1e-10``, the states and gradients of the
    ``explicit_adams`` tests in ``tests/test_odeint.py`` missed torchdiffeq's by more than
    ``1e-12`` and ``1e-8`` relative; ``1e-13`` costs a few more rounds).
    """
    xp = namespace(y0)
    scale = max(1.0, float(to_host(xp.max(xp.abs(y0)))))
    return (_ATOL_MULTISTEP if multistep else _ATOL)[xp.finfo(y0.dtype).bits // 8] * scale


class WarningLog:
    """Warnings raised by the user's ``f``, held per round (module notes).

    While :attr:`active`, :meth:`capture` records instead of showing. :meth:`end_round` is the
    solve's callback: a round with warnings marks the rows it made final (``[lo, num_frozen)``)
    for a second look; the warnings themselves are dropped.
    """

    def __init__(self) -> None:
        self.active = False
        self.pending: list[warnings.WarningMessage] = []
        self.recheck: tuple[int, int] | None = None  # rows [a, b) to evaluate again at their final values

    @contextlib.contextmanager
    def capture(self):
        if not self.active:
            yield
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        self.pending.extend(caught)

    def end_round(self, info: Any) -> bool:
        if self.pending and info.num_frozen > info.lo:
            a, b = info.lo, info.num_frozen
            self.recheck = (a, b) if self.recheck is None else (min(a, self.recheck[0]), max(b, self.recheck[1]))
        self.pending.clear()
        return False

    def take(self) -> list[warnings.WarningMessage]:
        out, self.pending = self.pending, []
        return out

    @staticmethod
    def show(records: list[warnings.WarningMessage]) -> None:
        """Show each distinct warning once, as raised (the user's filters apply)."""
        seen = set()
        for w in records:
            key = (w.category, str(w.message), w.filename, w.lineno)
            if key not in seen:
                seen.add(key)
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


class Field:
    """The user's vector field on a block of rows: ``field(T, Y) -> (w, *event)`` for ``T`` ``(w,)``, ``Y`` ``(w, *event)``.

    Parameters
    ----------
    func : callable
        ``func(t, y)``, the user's function.
    how : {"batched", "vmap", "loop", "columns"}
        ``"batched"``: ``func(T, Y)`` takes the block as is; ``"columns"``: SciPy's
        ``vectorized=True``, ``func(T, Y.T)`` with states as columns ``(d, w)``; ``"vmap"``:
        ``torch.func.vmap(func)(T, Y)``, falling back to ``"loop"`` (one call per row) when
        ``vmap`` cannot trace ``func`` (:attr:`fallback` says why; the front door warns).
    name : str
        How messages name ``func``.
    """

    def __init__(self, func: Any, how: str, *, name: str):
        if not callable(func):
            raise TypeError(f"{name} must be callable as {name}(t, y), got {type(func).__name__}.")
        self.func, self.how, self.name = func, how, name
        self.nfev = 0  # states f was evaluated at (derivative passes not included)
        self.njev = 0  # step Jacobians computed (rows)
        self.in_jacobian = False
        self.fallback: str | None = None  # why vmap was given up (shown after the solve)
        self._vmap_ok = False

    def __call__(self, T: Any, Y: Any) -> Any:
        w = Y.shape[0]
        if not self.in_jacobian:
            self.nfev += w
        if self.how == "vmap" and not self._vmap_ok:
            from torch.func import vmap

            try:
                out = vmap(self.func)(T, Y)
                self._vmap_ok = True
            except Exception as exc:  # not traceable by vmap: rows one by one from now on
                self.how = "loop"
                self.fallback = (
                    f"trisolve: {self.name}(t, y) could not be vectorised over rows with torch.func.vmap ({type(exc).__name__}: {exc}); "
                    "the rows of each round were evaluated one by one, which is slower. Write it with torch operations that vmap "
                    "supports, or accept a batch of states and pass batched=True."
                )
                out = self._call(T, Y)
        else:
            out = self._call(T, Y)
        return self._check(out, Y)

    def _call(self, T: Any, Y: Any) -> Any:
        if self.how == "vmap":
            from torch.func import vmap

            return vmap(self.func)(T, Y)
        if self.how == "batched":
            return self.func(T, Y)
        xp = namespace(Y)
        if self.how == "columns":
            w = Y.shape[0]
            out = self.func(T, xp.permute_dims(xp.reshape(Y, (w, -1)), (1, 0)))
            out = xp.asarray(out, dtype=Y.dtype) if not hasattr(out, "shape") else out
            if tuple(out.shape) != (math.prod(Y.shape[1:]), w):
                raise ValueError(
                    f"{self.name} with vectorized=True must return shape (n, k) = {(math.prod(Y.shape[1:]), w)} for y of shape "
                    f"(n, k); got {tuple(out.shape)}."
                )
            return xp.reshape(xp.permute_dims(out, (1, 0)), Y.shape)
        rows = [self.func(T[k], Y[k, ...]) for k in range(Y.shape[0])]
        rows = [r if hasattr(r, "shape") else xp.asarray(r, dtype=Y.dtype) for r in rows]
        return xp.stack(rows, axis=0)

    def _check(self, out: Any, Y: Any) -> Any:
        if not hasattr(out, "shape") or tuple(out.shape) != tuple(Y.shape):
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            expect = tuple(Y.shape[1:]) if self.how in ("vmap", "loop") else tuple(Y.shape)
            raise ValueError(f"{self.name}(t, y) must return an array shaped like y, {expect}; got {got}.")
        if out.dtype != Y.dtype:
            from array_api_compat import is_numpy_array

            if not is_numpy_array(Y):
                raise TypeError(f"{self.name}(t, y) returned {out.dtype} for a {Y.dtype} state; return the state's dtype.")
            out = out.astype(Y.dtype)  # NumPy: SciPy converts fun's output to the state's dtype too
        return out


@dataclass(frozen=True, kw_only=True)
class ODEInfo:
    """How an ODE front door solved its steps.

    Attributes
    ----------
    method : str
        The integration method (``"rk4"``, ``"RK4"``, ...).
    solver, update_map
        The trisolve solver and update map that solved the steps (the default method when
        none was given: :func:`trisolve.defaults.default_method`).
    solution : Solution
        The trisolve solution over the step grid, ``trajectory`` ``(n + 1, *y0.shape)``.
    grid : array, shape ``(n + 1,)``
        The step grid (times of the rows), in the grid's dtype.
    nfev : int
        States the user's function was evaluated at (every stage of every row of every round,
        a finite-difference Jacobian's evaluations, the final look at rows that warned, and
        one probe for gradients), not counting derivative passes.
    njev : int
        Rows whose one-step Jacobian was computed by automatic differentiation (PyTorch).
    """

    method: str
    solver: Solver
    update_map: UpdateMap
    solution: Solution = field(repr=False)
    grid: Any = field(repr=False)
    nfev: int
    njev: int

    @property
    def num_rounds(self) -> int:
        return self.solution.num_rounds

    def __repr__(self) -> str:
        s = self.solution
        return (
            f"{type(self).__name__}(method={self.method!r}, solver={self.solver!r}, update_map={self.update_map!r}, "
            f"status={s.status.name}, steps={s.n}, rounds={s.num_rounds}, nfev={self.nfev})"
        )


def _step_tables(method: Method, grid: Any, y0: Any) -> tuple[Any, tuple]:
    """``h`` ``(n, 1, ..., 1)`` and the stage times ``(n,)`` each, in ``y0``'s dtype and namespace.

    Stage times are computed in the grid's dtype first (torchdiffeq's order of operations).
    """
    yx = namespace(y0)
    t0, t1 = grid[:-1], grid[1:]
    dt = t1 - t0
    times = method.stage_times(t0, dt, t1)

    def cast(a):
        if type(a) is type(y0):
            return yx.astype(a, y0.dtype) if a.dtype != y0.dtype else a
        return from_host(a, yx, dtype=y0.dtype, device=device(y0))  # a NumPy float64 grid for another library's states

    n = dt.shape[0]
    h = yx.reshape(cast(dt), (n,) + (1,) * len(y0.shape))
    return h, tuple(cast(T) for T in times)


def _torch_step_jacobian(step: Any, y: Any, vmappable: bool) -> Any:
    """``(w, d, d)`` [out, in]: the Jacobian of a row-wise step ``step(y) -> (w, *event)`` at ``y`` ``(w, *event)``."""
    import torch
    from torch.func import jvp, vmap

    w = y.shape[0]
    d = math.prod(y.shape[1:])
    eye = torch.eye(d, dtype=y.dtype, device=y.device)

    def column(v):  # every row moved along the same basis vector: column k of each row's block
        return jvp(step, (y,), (v,))[1].reshape(w, d)

    basis = eye[:, None, :].expand(d, w, d).reshape(d, *y.shape)
    with torch.enable_grad():
        if vmappable:
            cols = vmap(column)(basis)  # (d, w, d): [in, row, out]
        else:
            cols = torch.stack([column(basis[k]) for k in range(d)], dim=0)
    return cols.permute(1, 2, 0)


def wants_gradients(gradients: Any, field_: Field, y0: Any, t_first: Any) -> Adjoint | None:
    """``gradients=None`` (automatic): an :class:`Adjoint` on PyTorch when grad mode is on and ``y0`` or ``f(t0, y0)`` requires grad.

    The probe is one evaluation of ``f`` at the first state (counted in ``nfev``); a warning it
    raises is not shown (the first step evaluates the same state again).
    """
    if gradients is False:
        return None
    if gradients is True:
        return Adjoint()
    if isinstance(gradients, Adjoint):
        return gradients
    if gradients is not None:
        raise TypeError(f"gradients must be None (automatic), True, False or trisolve.Adjoint(...), got {type(gradients).__name__}.")
    from array_api_compat import is_torch_array

    if not is_torch_array(y0):
        return None
    import torch

    if not torch.is_grad_enabled():
        return None
    if y0.requires_grad:
        return Adjoint()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = field_(t_first[None], y0[None])
    return Adjoint() if probe.requires_grad else None


def solve_steps(
    field_: Field,
    method: Method,
    grid: Any,
    y0: Any,
    *,
    solver: Solver | None,
    update_map: UpdateMap | None,
    atol: float | None,
    max_iter: int | None,
    window: Any,
    adjoint: Adjoint | None,
) -> tuple[Any, ODEInfo]:
    """Solve the steps of ``method`` on ``grid`` from ``y0``; return the trajectory ``(n + 1, *y0.shape)`` and the :class:`ODEInfo`.

    The trajectory is differentiable (the adjoint) when ``adjoint`` is given and the solve
    converged; it is the plain solution otherwise.
    """
    from array_api_compat import is_torch_array

    n = grid.shape[0] - 1
    log = WarningLog()
    if isinstance(method, AdamsBashforth):  # a multistep method: row i reads a band of rows
        h, times = _step_tables(ODEINT_METHODS["rk4"], grid, y0)  # its first steps are RK4 (3/8)
        import torch  # odeint's grids and states are torch tensors

        tables = (h, times, grid.to(y0.dtype), method.coefficients((grid[1:] - grid[:-1]).double()).to(y0.dtype))

        def rows(x, lo, hi):
            return method.rows(field_, x, lo, hi, tables)

        def rows_moved(x, y, lo, hi):  # F of rows [lo, hi) with rows lo-1 .. hi-2 replaced by y
            j0 = max(0, lo - method.band)
            return method.rows(field_, torch.cat([x[j0 : lo - 1, ...], y], dim=0), lo, hi, tables, offset=j0)

    else:
        h, times = _step_tables(method, grid, y0)
        step_fn = method.step

        def rows(x, lo, hi):
            return step_fn(field_, x[lo - 1 : hi - 1, ...], h[lo - 1 : hi - 1, ...], tuple(T[lo - 1 : hi - 1] for T in times))

        def rows_moved(x, y, lo, hi):
            return step_fn(field_, y, h[lo - 1 : hi - 1, ...], tuple(T[lo - 1 : hi - 1] for T in times))

    def fn(x, lo, hi):
        with log.capture():  # the step's own arithmetic may warn too (overflow at a guess)
            return rows(x, lo, hi)

    jacobian = None
    d = math.prod(tuple(y0.shape))
    if is_torch_array(y0) and d <= NEWTON_MAX_D:

        def jacobian(x, lo, hi):
            # dF_i/dx_{i-1} for a one-step method; for a multistep one, rows lo-1 .. hi-2 moved together
            # (the derivative along a smooth change of the trajectory, what trisolve's automatic path takes too)
            xd = x.detach()
            field_.in_jacobian = True
            try:
                with log.capture():
                    J = _torch_step_jacobian(lambda y: rows_moved(xd, y, lo, hi), xd[lo - 1 : hi - 1, ...], field_.how != "loop")
            finally:
                field_.in_jacobian = False
            field_.njev += hi - lo
            return J

    system = BlackBoxSystem(fn, n, jacobian=jacobian)
    if solver is None and update_map is None:
        solver, update_map = default_method(system, y0)
    elif solver is None:
        solver = Jacobi()  # what trisolve.solve pairs with a given map
    elif update_map is None:
        update_map = OneStep()
    atol = default_atol(y0, multistep=isinstance(method, AdamsBashforth)) if atol is None else atol
    log.active = True
    try:
        # gradients=False: the front door attaches the adjoint itself (below), after the final rows' warnings are settled
        sol = solve(system, solver, y0, update_map=update_map, atol=atol, max_iter=max_iter, window=window, callback=log.end_round,
                    gradients=False)  # fmt: skip
        log.pending.clear()
        trajectory = sol.trajectory
        if adjoint is not None and sol.status.ok:
            # one evaluation of every row at the solution (recorded for autograd): it also shows the final rows' warnings
            trajectory = differentiable_trajectory(system, y0, trajectory, adjoint)
            final_warnings = log.take()
        elif log.recheck is not None:
            a, b = log.recheck  # rows < sol.num_frozen: final whatever the status
            fn(trajectory, a, b)  # rows that became final in rounds that warned, at their final values
            final_warnings = log.take()
        else:
            final_warnings = []
    finally:
        log.active = False
        log.pending.clear()
    WarningLog.show(final_warnings)
    if field_.fallback is not None:
        warnings.warn(field_.fallback, RuntimeWarning, stacklevel=3)
    info = ODEInfo(method=method.name, solver=solver, update_map=update_map, solution=sol, grid=grid, nfev=field_.nfev, njev=field_.njev)
    return trajectory, info
