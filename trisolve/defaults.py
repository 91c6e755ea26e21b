"""The default method of :func:`trisolve.solve`: what ``solver=None`` (and no ``update_map``) means.

The one site of the core's default (the ODE front doors call it too). The diffusion samplers
have their own, for rows that are whole latents: ``trisolve_diffusion.default_solver()``.

One place for the choice, measured by ``benchmarks/recurrences.py`` (tanh RNN, RK4 of a damped
pendulum, Lorenz-96; the numbers are in the docs' benchmark page):

* **Jacobians available** -- the system has a ``jacobian=`` callable, or the arrays are PyTorch
  tensors with at most :data:`NEWTON_MAX_D` values per sample (``torch.func`` then gives
  them for ``d`` JVPs per round): ``Jacobi()`` on ``Newton("dense")`` (DEER). A handful of
  rounds on RNNs and stable ODEs, where the one-step map needs ``n`` on an integrator.
* **no Jacobians, small state** -- at most :data:`NEWTON_FD_MAX_D` values per sample (NumPy,
  CuPy, array-api-strict): ``Jacobi()`` on ``Newton("dense", derivatives="finite-differences")``:
  the same rounds as DEER for ``d`` more evaluations of ``F`` per row and round (batched like
  the round itself). On RK4 of the damped pendulum: 2.6 % of ``n`` rounds, where the secant
  map below needs 14-15 %; on a hidden-16 tanh RNN 5 rounds against Jacobi's 20-25.
* **otherwise** -- ``Jacobi()`` on ``Newton("secant")``: each state component gets a
  linear part between 0 (the one-step map) and 1 (the Picard map), the slope of ``F``
  observed between the last two rounds. It needs nothing from the system, costs one
  evaluation per row and round, and does not degenerate where one of the two fixed maps does
  (the one-step map needs ``n`` rounds on an integrator, the Picard map about ``n`` on a
  contractive RNN).

A system that declares a band ``p > 1`` (:attr:`TriangularSystem.band
<trisolve.TriangularSystem.band>`; a :class:`~trisolve.SemilinearSystem` with ``p > 1``: not
Markov, so not a Newton system) always gets the secant map. A system whose evaluations several
ranks share (``num_ranks > 1``, :func:`trisolve.distribute`) has no ``torch.func`` Jacobians (they
cannot see through the collectives): PyTorch tensors then take the NumPy rules (a callable,
finite differences, secant). Everything read here is part of the system protocol
(:class:`~trisolve.TriangularSystem`: ``band``, ``has_jacobian``, ``num_ranks``, ``batch_ndim``).

When rounds are cheap and evaluations are not (a NumPy RNN on a CPU, a contractive system
where ``Jacobi()`` already needs few rounds), pass ``trisolve.Jacobi()``: the defaults
minimise rounds, the parallel depth, not evaluations.
"""

from __future__ import annotations

import math
from typing import Any

from .newton import Newton
from .solvers.base import Solver
from .solvers.jacobi import Jacobi

__all__ = ["default_method", "NEWTON_MAX_D", "NEWTON_FD_MAX_D"]

NEWTON_MAX_D = 256  # PyTorch systems without a jacobian= callable: automatic dense Newton up to this d
NEWTON_FD_MAX_D = 16  # other systems without a jacobian= callable: finite-difference dense Newton up to this d


def default_method(system: Any, x0: Any) -> tuple[Solver, Newton]:
    """``(solver, update_map)`` used by :func:`trisolve.solve` when neither is given."""
    from array_api_compat import is_torch_array

    d = math.prod(tuple(x0.shape)[system.batch_ndim :])
    band = system.band
    if band is not None and band > 1:  # not Markov: no Newton system
        return Jacobi(), Newton(jacobian="secant")
    autodiff = is_torch_array(x0) and system.num_ranks == 1  # torch.func cannot see through the ranks' collectives
    if system.has_jacobian or (autodiff and d <= NEWTON_MAX_D):
        return Jacobi(), Newton(jacobian="dense")
    if d <= NEWTON_FD_MAX_D:
        return Jacobi(), Newton(jacobian="dense", derivatives="finite-differences")
    return Jacobi(), Newton(jacobian="secant")
