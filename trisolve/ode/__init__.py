"""ODE front doors on the core: :func:`odeint` (torchdiffeq's convention) and :func:`solve_ivp` (SciPy's).

Each builds a :class:`~trisolve.BlackBoxSystem` whose row ``i`` is one step of a fixed-step
explicit method from ``t_{i-1}`` to ``t_i`` and solves it with :func:`trisolve.solve`
(module :mod:`trisolve.ode.steps`); the step formulas are in :mod:`trisolve.ode.methods`.
"""

from .odeint import odeint
from .solve_ivp import IVPResult, solve_ivp
from .steps import ODEInfo

__all__ = ["odeint", "solve_ivp", "IVPResult", "ODEInfo"]
