"""``trisolve.odeint``: torchdiffeq's ``odeint`` for fixed grids, solved in parallel rounds."""

from __future__ import annotations

from typing import Any

from .._validate import check_int
from ..gradients import Adjoint
from ..maps import UpdateMap
from ..result import SolveError
from ..solvers.base import Solver
from .methods import ODEINT_METHODS, AdamsBashforth
from .steps import Field, solve_steps, wants_gradients

__all__ = ["odeint"]

_ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun", "scipy_solver")
_NOT_OFFERED = ("implicit_adams", "fixed_adams", "heun2", "heun3")
_OFFERED = (*ODEINT_METHODS, "explicit_adams")


def _check_method(method: Any, options: dict) -> Any:
    if method == "explicit_adams":
        max_order = options.pop("max_order", 12)
        check_int("options max_order", max_order, 2, high=12, hint="(explicit_adams keeps max_order - 1 earlier values of func)")
        return AdamsBashforth(max_order=int(max_order))
    if method in ODEINT_METHODS:
        return ODEINT_METHODS[method]
    offered = ", ".join(repr(m) for m in _OFFERED)
    if method in _ADAPTIVE or method is None:
        raise ValueError(
            f"method={method!r}: adaptive methods choose each step from the error of the last one, one after another; "
            f"trisolve.odeint solves fixed grids in parallel and offers {offered}. Use torchdiffeq.odeint for adaptive steps."
        )
    if method in _NOT_OFFERED:
        raise ValueError(f"method={method!r} is not offered by trisolve.odeint (yet); it offers {offered}.")
    raise ValueError(f"unknown method {method!r}; trisolve.odeint offers {offered}.")


def _grid(t: Any, y0: Any, func: Any, options: dict) -> Any:
    """The step grid for the (increasing) times ``t``, as torchdiffeq's ``FixedGridODESolver`` builds it."""
    import torch

    unknown = set(options) - {"step_size", "grid_constructor", "interp", "perturb"}
    if unknown:
        raise ValueError(f"options {sorted(unknown)} are not used by the fixed-grid methods; trisolve.odeint takes step_size and grid_constructor.")
    if options.get("interp", "linear") != "linear":
        raise ValueError("options interp='cubic' is not offered (it evaluates func again at every output); use the default 'linear'.")
    if options.get("perturb", False):
        raise ValueError("options perturb=True is not offered: it only matters for discontinuous func, which a fixed grid should step on exactly.")
    step_size = options.get("step_size")
    constructor = options.get("grid_constructor")
    if step_size is not None and constructor is not None:
        raise ValueError("step_size and grid_constructor are mutually exclusive options; give one.")
    if step_size is not None:
        niters = torch.ceil((t[-1] - t[0]) / step_size + 1).item()
        grid = torch.arange(0, niters, dtype=t.dtype, device=t.device) * step_size + t[0]
        grid[-1] = t[-1]
    elif constructor is not None:
        grid = constructor(func, y0, t)
        if not (grid[0] == t[0] and grid[-1] == t[-1]):
            raise ValueError("grid_constructor must return a grid that starts at t[0] and ends at t[-1].")
    else:
        return t
    if not bool((grid[1:] >= grid[:-1]).all()):
        raise ValueError("the step grid must be non-decreasing.")
    return grid


def _at_times(grid: Any, traj: Any, t: Any) -> Any:
    """The states at ``t`` from the trajectory on ``grid`` (``len(grid)`` rows): torchdiffeq's linear interpolation, op for op."""
    import torch

    out = [traj[0]]
    g, tt = grid.tolist(), t.tolist()
    j = 1
    for k in range(len(g) - 1):
        while j < len(tt) and g[k + 1] >= tt[j]:
            if tt[j] == g[k]:
                out.append(traj[k])
            elif tt[j] == g[k + 1]:
                out.append(traj[k + 1])
            else:
                slope = (t[j] - grid[k]) / (grid[k + 1] - grid[k])
                out.append(traj[k] + slope * (traj[k + 1] - traj[k]))
            j += 1
    return torch.stack(out, dim=0)


def odeint(
    func: Any,
    y0: Any,
    t: Any,
    *,
    method: str = "rk4",
    options: dict | None = None,
    batched: bool = False,
    solver: Solver | None = None,
    update_map: UpdateMap | None = None,
    atol: float | None = None,
    max_iter: int | None = None,
    window: Any = None,
    gradients: bool | Adjoint | None = None,
    return_info: bool = False,
) -> Any:
    """Integrate ``dy/dt = func(t, y)`` on a fixed grid, every step solved in parallel rounds.

    torchdiffeq's call convention and fixed-grid methods: the result equals
    ``torchdiffeq.odeint(func, y0, t, method=method, options=options)`` to round-off (the
    same operations per step; the rows are solved by :func:`trisolve.solve` instead of one
    after another). Row ``i`` of the system is one step from ``t_{i-1}`` to ``t_i``.

    Parameters
    ----------
    func : callable ``func(t, y) -> dy/dt``
        ``t`` a 0-dim tensor, ``y`` a tensor of ``y0``'s shape (an ``nn.Module`` is fine).
        It is evaluated for a block of rows at once with ``torch.func.vmap``; if ``vmap``
        cannot trace it, row by row (a ``RuntimeWarning`` says so).
    y0 : torch.Tensor
        The state at ``t[0]``, any shape, real floating dtype.
    t : torch.Tensor, shape ``(m,)``
        Output times, strictly increasing or strictly decreasing, ``m >= 2``.
    method : {"euler", "midpoint", "rk4", "explicit_adams"}
        torchdiffeq's fixed-grid steps (its ``rk4`` is Kutta's 3/8 rule; ``explicit_adams`` is
        Adams-Bashforth up to order ``max_order - 1``, its first two steps RK4, a band of
        earlier rows per row: :class:`~trisolve.ode.methods.AdamsBashforth`; at high orders it is
        often unstable, and the agreement with torchdiffeq is then that instability's
        sensitivity, not round-off). Adaptive methods and ``implicit_adams`` are refused with a
        ``ValueError``.
    options : dict, optional
        torchdiffeq's fixed-grid options: ``step_size`` (steps of that size from ``t[0]``, the
        last one ending at ``t[-1]``; outputs at ``t`` by linear interpolation, as torchdiffeq
        does) or ``grid_constructor``. Without either, one step per interval of ``t``.
        ``explicit_adams`` also takes ``max_order`` (2 to 12, default 12).
    batched : bool
        ``func`` takes a block of states: ``func(T, Y)`` with ``T`` ``(w,)`` and ``Y``
        ``(w, *y0.shape)``, returning ``(w, *y0.shape)``; then it is called once per block.
    solver, update_map : optional
        How the steps are solved; by default :func:`trisolve.defaults.default_method` for the
        step system, which is ``Jacobi()`` on ``Newton("dense")`` when ``y0`` has at most 256
        values (the Jacobian of one step by ``torch.func`` forward mode), else
        ``Newton("secant")``. Recorded in the info (``return_info=True``).
    atol : float, optional
        A step is solved when the RMS of its residual is ``<= atol``; default
        ``1e-10 * max(1, max|y0|)`` in float64, ``1e-4 * ...`` in float32
        (:func:`trisolve.ode.steps.default_atol`). Not an error tolerance of the method: the
        grid fixes the method's error.
    max_iter : int, optional
        Most rounds (default: the number of steps, which always suffices).
    window : WindowPolicy or int, optional
        As for :func:`trisolve.solve` (default: every step at once).
    gradients : None, bool or Adjoint
        ``None`` (default): differentiable by the adjoint method (:class:`~trisolve.Adjoint`)
        when grad mode is on and ``y0`` or ``func(t[0], y0)`` requires grad (``func``'s
        parameters); ``False`` never, ``True`` always.
    return_info : bool
        Also return an :class:`~trisolve.ode.ODEInfo` (method, solver, map, rounds, ``nfev``,
        the trisolve :class:`~trisolve.Solution`).

    Returns
    -------
    torch.Tensor, shape ``(m, *y0.shape)``
        The states at ``t`` (and the info with ``return_info=True``).

    Raises
    ------
    SolveError
        When the rounds end before every step is solved (``max_iter``), or ``func`` raised
        (the cause is chained); ``error.info`` holds the :class:`~trisolve.ode.ODEInfo`.

    Notes
    -----
    Warnings that ``func`` raises at guesses (states of steps that are not final yet) are
    not shown; one raised at a final step is shown once (:mod:`trisolve.ode.steps`).

    Examples
    --------
    >>> import torch, trisolve
    >>> t = torch.linspace(0, 1, 11, dtype=torch.float64)
    >>> y = trisolve.odeint(lambda t, y: -y, torch.ones(2, dtype=torch.float64), t)
    >>> y.shape, round(float(y[-1, 0]), 6)
    (torch.Size([11, 2]), 0.36788)
    """
    import torch

    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}.")
    if isinstance(y0, tuple):
        raise TypeError("trisolve.odeint takes one tensor y0 (torchdiffeq's tuple states are not offered): concatenate the parts.")
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"y0 must be a torch.Tensor (torchdiffeq's convention), got {type(y0).__name__}; for NumPy use trisolve.solve_ivp.")
    if not torch.is_floating_point(y0):
        raise TypeError(f"y0 must have a real floating dtype, got {y0.dtype}.")
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=y0.dtype, device=y0.device)
    if t.ndim != 1 or t.shape[0] < 2:
        raise ValueError(f"t must be a 1-D tensor of at least two times, got shape {tuple(t.shape)}.")
    if not torch.is_floating_point(t):
        t = t.to(y0.dtype)
    if not bool(torch.isfinite(t).all()):
        raise ValueError("t must be finite.")
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError("gradients with respect to t are not offered by trisolve.odeint; pass t.detach().")
    if t.device != y0.device:
        t = t.to(y0.device)
    options = dict(options or {})
    m = _check_method(method, options)
    reverse = bool(t[0] > t[1])
    t_int = -t if reverse else t  # torchdiffeq integrates decreasing times as increasing -t with -func(-t, y)
    if not bool((t_int[1:] > t_int[:-1]).all()):
        raise ValueError("t must be strictly increasing or strictly decreasing.")
    if reverse:

        def f_int(tt, y):
            return -1.0 * func(-tt, y)

    else:
        f_int = func
    grid = _grid(t_int, y0, f_int, options)
    if isinstance(m, AdamsBashforth) and not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("explicit_adams needs a strictly increasing step grid (a step of length 0 would skip its history); change step_size.")
    field = Field(f_int, "batched" if batched else "vmap", name="func")
    adjoint = wants_gradients(gradients, field, y0, grid[:1].to(y0.dtype)[0])
    traj, info = solve_steps(field, m, grid, y0, solver=solver, update_map=update_map, atol=atol, max_iter=max_iter, window=window, adjoint=adjoint)
    sol = info.solution
    if not sol.status.ok:
        err = SolveError(
            f"trisolve.odeint: the parallel solve of {sol.n} steps ended {sol.status.name} after {sol.num_rounds} rounds: {sol.message}",
            solution=sol,
        )
        err.info = info  # type: ignore[attr-defined]
        raise err from sol.error
    ys = traj if grid is t_int else _at_times(grid, traj, t_int)
    return (ys, info) if return_info else ys
