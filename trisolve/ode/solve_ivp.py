"""``trisolve.solve_ivp``: SciPy's ``solve_ivp`` convention for fixed-step explicit methods, solved in parallel rounds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_float
from ..gradients import Adjoint
from ..maps import UpdateMap
from ..result import SolveError, Status
from ..solvers.base import Solver
from .methods import SOLVE_IVP_METHODS
from .steps import Field, ODEInfo, solve_steps, wants_gradients

__all__ = ["solve_ivp", "IVPResult"]

_SCIPY_ADAPTIVE = ("RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA")


@dataclass(frozen=True, kw_only=True, repr=False)
class IVPResult(ODEInfo):
    """What :func:`trisolve.solve_ivp` returns: SciPy's fields, plus how the steps were solved.

    Attributes
    ----------
    t : ndarray, shape ``(m,)``
        Output times (float64).
    y : array, shape ``(n, m)``
        The states at ``t``, one column per time (SciPy's layout), in ``y0``'s library.
    success : bool
        Every step was solved (``solution.status.ok``).
    status : int
        ``0`` on success, ``-1`` when the rounds ended early (``message`` says why; then only
        the columns before ``solution.num_frozen`` grid rows are final).
    message : str
    nfev, njev : int
        Evaluations of ``fun`` and step Jacobians (:class:`~trisolve.ode.ODEInfo`); ``nlu`` is 0.
    sol, t_events, y_events : None
        SciPy's dense output and events are not offered.
    method, solver, update_map, solution, grid
        As in :class:`~trisolve.ode.ODEInfo`.
    """

    t: Any
    y: Any
    success: bool
    status: int
    message: str
    nlu: int = 0
    sol: Any = None
    t_events: Any = None
    y_events: Any = None


def _grid(t0: float, tf: float, step: float | None, t_eval: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(grid, out)``: the step grid (float64, from ``t0`` in the direction of ``tf``) and the rows to output."""
    direction = 1.0 if tf > t0 else -1.0
    if step is not None:
        length = abs(tf - t0)
        ratio = length / step
        k = round(ratio)
        k = k if k >= 1 and abs(ratio - k) <= 1e-9 * max(1.0, ratio) else math.ceil(ratio)
        base = t0 + direction * step * np.arange(k + 1, dtype=np.float64)
        base[-1] = tf
    if t_eval is None:
        return base, np.arange(base.shape[0])
    if step is None:
        grid = t_eval if t_eval[0] == t0 else np.concatenate([[t0], t_eval])
    else:
        # the step grid with the output times inserted: steps are split at them, no interpolation
        close = np.abs(base[:, None] - t_eval[None, :]).min(axis=1) <= 1e-12 * max(1.0, abs(t0), abs(tf))
        keep = base[~close | (np.arange(base.shape[0]) == 0)]
        grid = np.unique(np.concatenate([keep, t_eval]))
        grid = grid if direction > 0 else grid[::-1].copy()
    rows = np.searchsorted(grid * direction, t_eval * direction)
    return grid, rows


def solve_ivp(
    fun: Any,
    t_span: Any,
    y0: Any,
    *,
    method: str = "RK4",
    t_eval: Any = None,
    step: float | None = None,
    vectorized: bool = False,
    args: tuple | None = None,
    solver: Solver | None = None,
    update_map: UpdateMap | None = None,
    atol: float | None = None,
    max_iter: int | None = None,
    window: Any = None,
    gradients: bool | Adjoint | None = None,
) -> IVPResult:
    """Solve ``dy/dt = fun(t, y)``, ``y(t_span[0]) = y0``, with a fixed-step explicit method, every step in parallel rounds.

    SciPy's convention (``scipy.integrate.solve_ivp``): ``fun(t, y)`` with ``y`` of shape
    ``(n,)``; the result has ``t``, ``y`` ``(n, len(t))``, ``success``, ``status``,
    ``message`` and ``nfev``. The steps are the rows of a triangular system
    (:func:`trisolve.solve`), so the answer equals a loop of the same method to the solve's
    tolerance.

    Parameters
    ----------
    fun : callable ``fun(t, y) -> dy/dt``
        ``y`` ``(n,)``; returns an array_like ``(n,)``. NumPy: called once per state (or once
        per block with ``vectorized=True``). PyTorch: vectorised over the rows of a round with
        ``torch.func.vmap`` (``t`` is then a 0-dim tensor), row by row if ``vmap`` cannot
        trace it.
    t_span : (float, float)
        ``(t0, tf)``, ``tf != t0``; ``tf < t0`` integrates backwards.
    y0 : array_like or torch.Tensor, shape ``(n,)``
        Initial state. NumPy float64 unless a tensor is given (then its dtype and device).
    method : {"RK4", "RK38", "Midpoint", "Heun", "Euler"}
        Classic Runge-Kutta 4, Kutta's 3/8 rule, explicit midpoint, Heun (trapezoidal
        predictor-corrector) or forward Euler. SciPy's adaptive methods are refused.
    t_eval : array_like, optional
        Output times, sorted in the direction of integration, within ``t_span``. Without
        ``step``, the steps go from ``t0`` through each of them (the grid is ``t0`` followed by
        ``t_eval``). With ``step``, the step grid is split at them (outputs are steps of the
        method, never interpolated).
    step : float, optional
        Step size: steps of ``step`` from ``t0``, the last one shortened to end at ``tf``
        (a ``t_span`` that is a whole number of steps to ``1e-9`` relative gets exactly that
        many). Without ``t_eval`` the output is every grid point. One of ``step`` and
        ``t_eval`` is needed.
    vectorized : bool
        SciPy's meaning: ``fun(t, y)`` accepts ``y`` of shape ``(n, k)`` and returns ``(n, k)``.
        Here ``t`` is then an array ``(k,)``, one time per column (SciPy passes a scalar).
    args : tuple, optional
        Extra arguments: ``fun(t, y, *args)``.
    solver, update_map, atol, max_iter, window, gradients
        As for :func:`trisolve.odeint` (gradients: PyTorch only).

    Returns
    -------
    IVPResult
        ``success=False``, ``status=-1`` when the rounds ran out (``max_iter``).

    Raises
    ------
    SolveError
        When ``fun`` raised during the solve (the cause is chained; ``error.result`` holds the
        :class:`IVPResult` with the rows made final before it).

    Examples
    --------
    >>> import numpy as np, trisolve
    >>> res = trisolve.solve_ivp(lambda t, y: -y, (0.0, 1.0), [1.0, 2.0], step=0.01)
    >>> res.success, res.y.shape, bool(np.allclose(res.y[:, -1], np.exp(-1) * np.array([1, 2]), atol=1e-9))
    (True, (2, 101), True)
    """
    from array_api_compat import is_torch_array

    if method not in SOLVE_IVP_METHODS:
        offered = ", ".join(repr(m) for m in SOLVE_IVP_METHODS)
        if method in _SCIPY_ADAPTIVE:
            raise ValueError(
                f"method={method!r} is an adaptive (or implicit) SciPy method, which chooses each step from the last one; "
                f"trisolve.solve_ivp solves fixed steps in parallel and offers {offered}. Use scipy.integrate.solve_ivp for it."
            )
        if method == "RK2":
            raise ValueError("method='RK2' is ambiguous; pass 'Midpoint' (explicit midpoint) or 'Heun' (trapezoidal).")
        raise ValueError(f"unknown method {method!r}; trisolve.solve_ivp offers {offered}.")
    if not callable(fun):
        raise TypeError(f"fun must be callable as fun(t, y), got {type(fun).__name__}.")
    if args is not None:
        if not isinstance(args, tuple):
            args = (args,)
        base_fun = fun

        def fun(t, y):
            return base_fun(t, y, *args)

    if is_torch_array(y0):
        import torch

        if not torch.is_floating_point(y0):
            raise TypeError(f"y0 must have a real floating dtype, got {y0.dtype}.")
    else:
        y0 = np.asarray(y0)
        if np.iscomplexobj(y0):
            raise TypeError("complex y0 is not offered; split it into real and imaginary parts.")
        y0 = y0.astype(np.float64)
    if len(y0.shape) != 1:
        raise ValueError(f"y0 must be 1-dimensional, shape (n,) (SciPy's convention); got shape {tuple(y0.shape)}.")
    try:
        t0, tf = (float(v) for v in t_span)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"t_span must be a pair of real numbers (t0, tf), got {t_span!r}.") from exc
    if not (math.isfinite(t0) and math.isfinite(tf)) or t0 == tf:
        raise ValueError(f"t_span must hold two different finite times, got ({t0}, {tf}).")
    if step is not None:
        step = check_float("step", step, 0.0, hint="(the step size, > 0)")
        if step == 0:
            raise ValueError("step must be > 0.")
    if t_eval is not None:
        t_eval = np.asarray(t_eval, dtype=np.float64)
        direction = 1.0 if tf > t0 else -1.0
        if t_eval.ndim != 1 or t_eval.shape[0] < 1:
            raise ValueError(f"t_eval must be a 1-D array of times, got shape {t_eval.shape}.")
        if np.any(direction * (t_eval - t0) < 0) or np.any(direction * (t_eval - tf) > 0):
            raise ValueError("t_eval values must lie within t_span.")
        if np.any(direction * np.diff(t_eval) <= 0):
            raise ValueError("t_eval must be strictly sorted in the direction of integration (increasing when tf > t0).")
        if t_eval.shape[0] == 1 and t_eval[0] == t0:
            raise ValueError("t_eval holds only t0: there is no step to take.")
    elif step is None:
        raise ValueError("a fixed-step method needs step= (the step size) or t_eval= (the step grid); give one.")
    grid, rows = _grid(t0, tf, step, t_eval)
    how = "columns" if vectorized else ("vmap" if is_torch_array(y0) else "loop")
    field = Field(fun, how, name="fun")
    m = SOLVE_IVP_METHODS[method]
    first = grid[:1]
    if is_torch_array(y0):
        first = torch.as_tensor(first, dtype=y0.dtype, device=y0.device)
    adjoint = wants_gradients(gradients, field, y0, first[0])
    traj, info = solve_steps(field, m, grid, y0, solver=solver, update_map=update_map, atol=atol, max_iter=max_iter, window=window, adjoint=adjoint)
    sol = info.solution
    ok = sol.status.ok
    y = traj[rows] if not is_torch_array(traj) else traj[torch.as_tensor(rows, device=traj.device)]
    y = y.T if not is_torch_array(y) else y.transpose(0, 1)
    message = "The solver successfully reached the end of the integration interval." if ok else sol.message
    result = IVPResult(
        t=grid[rows].copy(),
        y=y,
        success=ok,
        status=0 if ok else -1,
        message=message,
        method=info.method,
        solver=info.solver,
        update_map=info.update_map,
        solution=sol,
        grid=grid,
        nfev=info.nfev,
        njev=info.njev,
    )
    if sol.status is Status.FAILED:  # fun raised (SciPy lets it through): say so, keep the work on the error
        err = SolveError(f"trisolve.solve_ivp: fun raised during round {sol.num_rounds + 1}: {sol.message}", solution=sol)
        err.result = result  # type: ignore[attr-defined]
        raise err from sol.error
    return result
