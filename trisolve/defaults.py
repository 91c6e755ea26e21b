"""The default method of :func:`trisolve.solve`: what ``solver=None`` (and no ``update_map``) means.

One place for the choice, measured by ``benchmarks/recurrences.py`` (tanh RNN, RK4 of a damped
pendulum, Lorenz-96; the numbers are in the docs' benchmark page):

* **Jacobians available** -- the system has a ``jacobian=`` callable, or the arrays are PyTorch
  tensors with at most :data:`NEWTON_MAX_D` values per sample (``torch.func`` then gives
  them for ``d`` JVPs per round): ``Jacobi()`` on ``Newton("dense")`` (DEER). A handful of
  rounds on RNNs and stable ODEs, where the one-step map needs ``n`` on an integrator.
* **otherwise** -- ``Jacobi()`` on ``Newton("secant")``: each state component gets a
  linear part between 0 (the one-step map) and 1 (the Picard map), the slope of ``F``
  observed between the last two rounds. It needs nothing from the system and does not
  degenerate where one of the two fixed maps does (the one-step map needs ``n`` rounds on
  an integrator, the Picard map about ``n`` on a contractive RNN).
"""

from __future__ import annotations

import math
from typing import Any

from .newton import Newton
from .solvers.base import Solver
from .solvers.jacobi import Jacobi

__all__ = ["default_method", "NEWTON_MAX_D"]

NEWTON_MAX_D = 256  # PyTorch systems without a jacobian= callable: automatic dense Newton up to this d


def default_method(system: Any, x0: Any) -> tuple[Solver, Newton]:
    """``(solver, update_map)`` used by :func:`trisolve.solve` when neither is given."""
    from array_api_compat import is_torch_array

    d = math.prod(tuple(x0.shape)[system.batch_ndim :])
    has_callable = getattr(system, "jacobian", None) is not None
    if has_callable or (is_torch_array(x0) and d <= NEWTON_MAX_D):
        return Jacobi(), Newton(jacobian="dense")
    return Jacobi(), Newton(jacobian="secant")
