"""trisolve: solve lower-triangular nonlinear systems ``x_i = F_i(x_{<i})`` in parallel rounds.

One verb, :func:`solve`, takes a system, a solver and row 0::

    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0,
                         update_map=trisolve.Unrolled(), window=trisolve.SlidingWindow(32))

Backend-agnostic through array-api-compat: NumPy, PyTorch (CPU/CUDA), CuPy, array-api-strict.
Multi-device rounds (:func:`distribute`, :mod:`trisolve.distributed`) use torch.distributed and
are imported on first use.
"""

from .driver import solve
from .gradients import Adjoint
from .maps import OneStep, Picard, Unrolled, UpdateMap, WeightedPicard
from .newton import Newton
from .ode import IVPResult, ODEInfo, odeint, solve_ivp
from .result import NoProgressWarning, RoundInfo, RoundWindows, Solution, SolveError, Status
from .scan import affine_scan
from .sequential import forward_substitution
from .solvers.anderson import Anderson, TriangularAnderson
from .solvers.base import FusedStep, Solver, StepContext
from .solvers.jacobi import Jacobi
from .solvers.safeguard import Safeguard
from .systems import BlackBoxSystem, Evaluation, RowFunction, SemilinearSystem, TriangularSystem
from .tolerance import Tolerance
from .windows import FullWindow, SlidingWindow, WindowPolicy, as_window

__version__ = "0.1.0"

#: Names served lazily from :mod:`trisolve.distributed` (it imports torch; the rest of trisolve does not).
_DISTRIBUTED = ("distribute", "DistributedError")


def __getattr__(name: str):
    if name in _DISTRIBUTED or name == "distributed":
        import importlib

        module = importlib.import_module(".distributed", __name__)
        return module if name == "distributed" else getattr(module, name)
    raise AttributeError(f"module 'trisolve' has no attribute {name!r}")


__all__ = [
    "solve",
    "forward_substitution",
    "odeint",
    "solve_ivp",
    "IVPResult",
    "ODEInfo",
    "BlackBoxSystem",
    "SemilinearSystem",
    "TriangularSystem",
    "Evaluation",
    "RowFunction",
    "Jacobi",
    "Anderson",
    "TriangularAnderson",
    "Safeguard",
    "Solver",
    "StepContext",
    "FusedStep",
    "OneStep",
    "Unrolled",
    "Picard",
    "WeightedPicard",
    "Newton",
    "UpdateMap",
    "Adjoint",
    "affine_scan",
    "FullWindow",
    "SlidingWindow",
    "WindowPolicy",
    "as_window",
    "Tolerance",
    "Solution",
    "Status",
    "RoundInfo",
    "SolveError",
    "RoundWindows",
    "NoProgressWarning",
    "distribute",
    "DistributedError",
]
