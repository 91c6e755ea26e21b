"""Gradients through a solve by the adjoint method (PyTorch only).

For a loss ``L(x_0, ..., x_n)`` of a solved trajectory ``x = F(x)`` (DESIGN 9), the adjoint
``lambda`` (rows ``1..n``) solves the *upper*-triangular linear system

.. math::

    \\lambda_j = \\frac{\\partial L}{\\partial x_j} + \\sum_{i > j}
    \\Big(\\frac{\\partial F_i}{\\partial x_j}\\Big)^{\\!T} \\lambda_i ,

and then ``dL/dtheta = sum_i lambda_i^T dF_i/dtheta`` for every tensor ``theta`` that ``F``
captures and ``dL/dx_0 = dL/dx_0|_direct + sum_i (dF_i/dx_0)^T lambda_i``. Nothing is
back-propagated through the rounds of the forward solve: memory is the trajectory, the
adjoint and one batched evaluation of ``F`` at the solution, ``O(n x event)`` whatever the
number of rounds.

How ``lambda`` is found (notation: ``g = dL/dx``, ``V(lambda)_j = sum_{i>j} (dF_i/dx_j)^T
lambda_i``, one vector-Jacobian product of ``F`` over all rows at once; ``P`` the reversed
affine scan ``mu_j = J_{j+1}^T mu_{j+1} + v_j`` with ``J_i = dF_i/dx_{i-1}``,
:func:`trisolve.affine_scan` run backwards):

1. ``lambda <- P(g)``: exact for a Markov system (``F_i`` reads ``x_{i-1}`` only) with a
   dense Jacobian, or a diagonal one when ``F`` is elementwise;
2. repeat: ``res = g + V(lambda) - lambda``; stop once ``max|res| <= rtol * max(|g|, |lambda|)``;
   else ``lambda <- g + V(lambda) + (P(res) - res)`` (a Newton step on the linear system; with
   ``jacobian="none"``, ``P`` is the identity and this is Jacobi).

Each step makes at least one more row exact (counting from row ``n`` down: the system is
triangular and ``P`` unit-triangular), so ``n`` steps always suffice; a non-finite ``P(res)``
falls back to the Jacobi step for the rows it hits.

Which ``P`` (``Adjoint(jacobian="auto")``, the default): a dense solve builds ``n`` Jacobians of
``d x d`` (``d`` Jacobian-vector products per row without a ``jacobian=`` callable) and scans them
in ``O(n d^3)`` work; a VJP step costs about one evaluation of ``F``, ``O(n d^2)``. Measured after
a plain Jacobi forward of the tanh RNN (``python benchmarks/recurrences.py --adjoint``, one CPU
thread, float64): the VJP iteration needs 24-27 steps to ``100 eps``, and the dense solve cost
about as much as 0.9-1.6 ``d`` of them at ``d = 16 .. 64`` (T = 1e4). So ``"auto"`` is dense from the start up to
``d = 8``; from there to ``d = 256`` it takes VJP steps while the rate they contract at predicts a
total of at most ``d`` steps, and otherwise switches to dense steps from where it stands (after one
step at ``d = 16``; never at ``d = 32`` and 64 on that RNN; after one step on an integrator, where
VJP steps would take about ``n``). The answer is the same either way (to ``1e-15`` relative there).
On a CPU, long sequences spend much of a VJP step in page faults of fresh large arrays; PyTorch's
``THP_MEM_ALLOC_ENABLE=1`` (transparent huge pages) halves that (benchmarks page of the docs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ._backend import namespace
from ._validate import check_float, check_int
from .newton import _split_event, jacobian_rows
from .result import SolveError, Status
from .scan import affine_scan, apply_linear

__all__ = ["Adjoint", "differentiable_trajectory"]

_DENSE_MAX_D = 256  # jacobian="auto": dense Jacobians up to this many values per sample, else none
_DENSE_FIRST_D = 8  # jacobian="auto": dense from the start up to this many values per sample
_VJPS_PER_D = 1.0  # jacobian="auto": a dense adjoint costs about this many VJPs per value of d (module notes)


@dataclass(frozen=True, kw_only=True)
class Adjoint:
    """Settings of the adjoint solve behind ``trisolve.solve(..., gradients=...)``.

    Parameters
    ----------
    jacobian : {"auto", "dense", "diagonal", "none"}
        The Jacobians ``J_i = dF_i/dx_{i-1}`` of the reversed scan ``P``. ``"dense"`` solves a
        Markov system's adjoint in one scan (then one VJP checks it); ``"none"`` uses only
        vector-Jacobian products (Jacobi on the adjoint system: no Jacobians, more VJPs).
        ``"auto"``: up to ``d = 8`` values per sample, ``"dense"``; up to ``d = 256``, ``"none"``
        while it pays, then ``"dense"``: after each VJP step the observed contraction of the
        residual predicts how many steps ``"none"`` still needs, and once the total would exceed
        ``d`` steps (a dense solve costs about ``d`` VJPs; module notes) the solve switches to
        dense Newton steps from where it stands; above ``d = 256``, ``"none"``.
    rtol : float or None
        Stop when ``max|res| <= rtol * max(max|g|, max|lambda|)``; ``None``: ``100 * eps``
        of the trajectory's dtype.
    max_iter : int or None
        Most adjoint steps; ``None`` is ``n`` (always enough).
    """

    jacobian: str = "auto"
    rtol: float | None = None
    max_iter: int | None = None

    def __post_init__(self) -> None:
        if self.jacobian not in ("auto", "dense", "diagonal", "none"):
            raise ValueError(f'jacobian must be "auto", "dense", "diagonal" or "none", got {self.jacobian!r}.')
        if self.rtol is not None:
            rtol = check_float("Adjoint rtol", self.rtol, 0.0, low_open=True, high=1.0, high_open=True, hint="or None (100 eps)")
            object.__setattr__(self, "rtol", rtol)
        if self.max_iter is not None:
            object.__setattr__(self, "max_iter", check_int("Adjoint max_iter", self.max_iter, 1, hint="or None (n)"))


def check_gradients_supported(x0: Any) -> None:
    """Raise a clear ``TypeError`` unless ``x0`` is a PyTorch tensor."""
    from array_api_compat import is_torch_array

    if not is_torch_array(x0):
        raise TypeError(
            f"gradients need PyTorch tensors: {type(x0).__module__}.{type(x0).__name__} arrays (NumPy, array-api-strict, CuPy) "
            "have no automatic differentiation in trisolve. Solve with torch tensors, or call solve without gradients."
        )


def _evaluate_all(system: Any, x: Any, xp: Any) -> Any:
    """``F_i(x)`` for every row ``i = 1..n``, one batched call: ``(n, *event)``."""
    return system.evaluate(x, 1, system.n + 1, system.new_cache(x, xp=xp), xp=xp).f


class _Adjoint:
    """The adjoint solve at one trajectory (the state of one backward pass)."""

    def __init__(self, system: Any, x: Any, settings: Adjoint):
        import torch

        self.system, self.settings = system, settings
        self.x = x.detach()
        self.xp = namespace(self.x)
        self.n = system.n
        self.event = tuple(self.x.shape[1:])
        self.S, self.d = _split_event(self.event, system.batch_ndim)
        kind = settings.jacobian
        self.fallback = None  # "auto" between the thresholds: start with "none", switch to dense once it stops paying
        if kind == "auto":
            kind = "dense" if self.d <= _DENSE_FIRST_D else "none"
            self.fallback = "dense" if _DENSE_FIRST_D < self.d <= _DENSE_MAX_D else None
        self.kind = kind
        self.switched_at = None  # the VJP step at which "auto" switched to dense
        self._first_residual = None  # max|res| before the first VJP step, for "auto"'s contraction rate
        self.rtol = settings.rtol if settings.rtol is not None else 100 * torch.finfo(self.x.dtype).eps
        self.max_iter = settings.max_iter if settings.max_iter is not None else self.n
        self.num_vjps = 0
        self.num_steps = 0
        with torch.enable_grad():
            self.xv = self.x.clone().requires_grad_(True)
            self.f = _evaluate_all(system, self.xv, self.xp)  # graph kept for the VJPs     (n, *event)

    def vjp(self, lam: Any) -> Any:
        """``V(lambda)`` for rows ``1..n``: ``(n, *event)``; row ``n`` is always 0."""
        import torch

        self.num_vjps += 1
        with torch.enable_grad():
            (gx,) = torch.autograd.grad(self.f, self.xv, lam, retain_graph=True, allow_unused=True)
        return torch.zeros_like(lam) if gx is None else gx[1:]

    def precondition(self, v: Any) -> Any:
        """``P(v)``: ``mu_j = J_{j+1}^T mu_{j+1} + v_j`` for ``j = n..1`` (``J_{n+1} = 0``), in chunks from the top."""
        import torch

        if self.kind == "none":
            return v
        from .newton import Newton

        dense = self.kind == "dense"
        n, S, d = self.n, self.S, self.d
        vv = v.reshape(n, S, d)
        c = Newton(jacobian=self.kind).rows_per_chunk(S, d)
        parts, carry = [], None
        for j1 in range(n + 1, 1, -c):  # rows [j0, j1) of lambda, from the top
            j0 = max(1, j1 - c)
            i_lo, i_hi = j0 + 1, min(j1 + 1, n + 1)  # J_i for i = j + 1 <= n
            J, got_dense = jacobian_rows(self.system, self.x, i_lo, i_hi, dense=dense, xp=self.xp) if i_hi > i_lo else (None, dense)
            if J is not None and got_dense:
                J = J.transpose(-1, -2)
            if i_hi - i_lo < j1 - j0:  # row n has no successor: J_{n+1} = 0
                shape = (1, S, d, d) if got_dense else (1, S, d)
                zero = torch.zeros(shape, dtype=vv.dtype, device=vv.device)
                J = zero if J is None else torch.cat([J, zero], dim=0)
            kind = "dense" if got_dense else "diagonal"
            K = torch.flip(J, dims=[0])  # reversed order: K_t multiplies mu_{t-1} (the row above)
            r = torch.flip(vv[j0 - 1 : j1 - 1], dims=[0])
            if carry is not None:
                r = torch.cat([r[:1] + apply_linear(K[:1], carry, kind=kind, xp=self.xp), r[1:]], dim=0)
            mu = affine_scan(K, r, xp=self.xp)
            carry = mu[-1:]
            parts.append(torch.flip(mu, dims=[0]))
        return torch.cat(parts[::-1], dim=0).reshape(n, *self.event)

    def _maybe_switch(self, rmax: float, target: float) -> None:
        """``jacobian="auto"``: switch from VJP steps to dense ones when the VJP steps would cost more.

        The residual's max norm fell by ``rate`` per step on average (geometric mean over the
        steps so far); at that rate the VJP iteration needs ``log(target / rmax) / log(rate)`` more
        steps. If the steps so far plus those exceed the cost of a dense solve (``_VJPS_PER_D * d``
        VJPs), or the residual did not shrink, the remaining steps precondition with the dense scan
        (usually one more step)."""
        budget = _VJPS_PER_D * self.d
        k = self.num_steps  # VJP steps since the first residual
        if k == 0:
            self._first_residual = rmax
        else:
            first = self._first_residual
            rate = (rmax / first) ** (1.0 / k) if first > 0 else 0.0
            more = math.inf if rate >= 1 else (0.0 if rate == 0 else math.log(target / rmax) / math.log(rate))
            if self.num_steps + more > budget:
                self._switch()
        if self.fallback is not None and self.num_steps >= budget:
            self._switch()

    def _switch(self) -> None:
        self.kind, self.fallback, self.switched_at = self.fallback, None, self.num_steps

    def solve(self, g: Any) -> Any:
        """``lambda`` for the cotangent ``g = dL/dx`` of rows ``1..n``."""
        import torch

        g = g.detach()
        if not g.numel():
            return g
        gmax = float(torch.linalg.vector_norm(g, ord=math.inf))
        lam = self.precondition(g)
        if not bool(torch.isfinite(lam).all()):
            lam = g
        res = torch.empty_like(g)  # reused: large arrays cost page faults every time they are allocated
        lbound = None  # after a Jacobi step, max|lambda| <= the previous max|lambda| + max|res|: no pass needed
        for _ in range(self.max_iter):
            jac = self.vjp(lam).add_(g)  # the Jacobi value g + V(lambda), in the VJP's fresh array
            torch.sub(jac, lam, out=res)
            rmax = float(torch.linalg.vector_norm(res, ord=math.inf))
            if lbound is None or rmax <= self.rtol * max(gmax, lbound):  # possibly converged: max|lambda| exactly
                lbound = float(torch.linalg.vector_norm(lam, ord=math.inf))
            scale = max(gmax, lbound)
            if rmax <= self.rtol * scale:
                return lam
            if self.fallback is not None:
                self._maybe_switch(rmax, self.rtol * scale)
            self.num_steps += 1
            if self.kind == "none":  # P is the identity: the Jacobi step, no correction to build
                lam, lbound = jac, lbound + rmax
                continue
            lbound = None
            corr = self.precondition(res) - res
            ok = torch.isfinite(corr).reshape(corr.shape[0], -1).all(dim=1).reshape(-1, *([1] * len(self.event)))
            lam = jac + torch.where(ok, corr, torch.zeros_like(corr))
        res = g + self.vjp(lam) - lam
        if float(res.abs().max()) <= self.rtol * max(gmax, float(lam.abs().max())) * 10:
            return lam
        raise SolveError(
            f"the adjoint solve did not reach rtol={self.rtol:g} in {self.max_iter} steps (max residual {float(res.abs().max()):.3g}); "
            "raise Adjoint(max_iter=...) or loosen Adjoint(rtol=...)."
        )


def differentiable_trajectory(system: Any, x0: Any, trajectory: Any, adjoint: Adjoint | None = None) -> Any:
    """The solved ``trajectory`` ``(n + 1, *event)``, made differentiable by the adjoint method.

    The values are ``trajectory`` unchanged; the gradient with respect to ``x0`` and to every
    tensor ``F`` captures is that of the exact solution (module notes). Internally, one
    evaluation ``y = F(x*)`` of every row is recorded with autograd (rows 1..n, with ``x0``
    in row 0 and the solved rows detached), and a hook replaces the gradient arriving at
    ``y`` by the adjoint ``lambda``; autograd then carries ``lambda^T dF/dtheta`` to the
    parameters.

    Returns the trajectory as is (not differentiable) when grad mode is off or nothing it
    depends on requires grad.
    """
    import torch

    check_gradients_supported(x0)
    settings = Adjoint() if adjoint is None else adjoint
    if not torch.is_grad_enabled():
        return trajectory
    xp = namespace(trajectory)
    x_in = torch.cat([x0[None], trajectory[1:].detach()], dim=0)
    y = _evaluate_all(system, x_in, xp)  # (n, *event); carries the graph to x0 and captured tensors
    if not y.requires_grad:
        return trajectory
    x_star = trajectory.detach()

    def hook(g):  # built at backward time: nothing but the trajectory is held until then
        return None if g is None else _Adjoint(system, x_star, settings).solve(g)

    y.register_hook(hook)
    return torch.cat([x0[None], y + (x_star[1:] - y).detach()], dim=0)


def attach(solution: Any, system: Any, x0: Any, adjoint: Adjoint | None) -> Any:
    """``solution`` with a differentiable trajectory (what ``solve(..., gradients=...)`` returns)."""
    if solution.status is not Status.CONVERGED:
        raise SolveError(
            f"gradients need a converged solve, but it ended with {solution.status.name}: {solution.message}. "
            "The adjoint is only defined at the solution; the unfinished solve is kept on this error's .solution "
            "(resume it with init=err.solution.trajectory, num_frozen=err.solution.num_frozen).",
            solution=solution,
        ) from solution.error
    return replace(solution, trajectory=differentiable_trajectory(system, x0, solution.trajectory, adjoint))

