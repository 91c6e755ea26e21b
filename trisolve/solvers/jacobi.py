"""Jacobi (Picard / plain fixed-point) iteration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._validate import check_float
from .base import FusedStep, Solver, StepContext

__all__ = ["Jacobi"]


@dataclass(frozen=True, kw_only=True)
class Jacobi(Solver):
    """Refresh every row of the window from the previous iterate.

    ``x_i <- x_i + (1 - damping) * (G_i(x) - x_i)``. With the structural safeguard the
    frozen prefix grows by at least one row per round, so ``n`` rounds always suffice; with
    a :class:`~trisolve.SlidingWindow` this is windowed Gauss-Seidel [S21, PD].

    Parameters
    ----------
    damping : float
        In ``[0, 1)``; 0 is the plain fixed-point step.

    Examples
    --------
    >>> import numpy as np, trisolve
    >>> sys = trisolve.BlackBoxSystem(lambda x, lo, hi: 0.5 * x[lo - 1 : hi - 1] + 1.0, n=50)
    >>> sol = trisolve.solve(sys, trisolve.Jacobi(), np.zeros(()), atol=1e-10)
    >>> sol.status.name, sol.num_rounds < 50
    ('CONVERGED', True)
    """

    damping: float = 0.0
    retains_iterate = False  # a class attribute, not a field: the step reads ctx.x and keeps nothing

    def __post_init__(self) -> None:
        object.__setattr__(self, "damping", check_float("damping", self.damping, 0.0, high=1.0, high_open=True))

    def step(self, ctx: StepContext, state: None) -> tuple[object, None]:
        return _proposal(ctx.x, ctx.g, ctx.r, self.damping), state

    def fused_step(self, state: None, lo: int, hi: int, *, xp: Any) -> FusedStep:
        """The step as a :class:`~trisolve.solvers.base.FusedStep` (no state, no host decision: always taken)."""
        return FusedStep(_fused, ("jacobi", self.damping), (self.damping,), _taken)


def _proposal(x: Any, g: Any, r: Any, damping: float) -> Any:
    """``x + (1 - damping) (g - x)``, which is ``g`` itself without damping: ``(w, *event)``."""
    if damping == 0.0:
        return g
    return x + (1.0 - damping) * r


def _fused(x: Any, g: Any, r: Any, start: Any, err: Any, damping: float, *, batch_ndim: int, xp: Any) -> tuple[Any, None, tuple]:
    return _proposal(x, g, r, damping), None, ()


def _taken(ctx: StepContext, outputs: tuple, checks: Any) -> tuple[bool, None]:
    return True, None
