"""Solvers: one file each (``jacobi.py``, ``anderson.py``), plus the shared protocol and safeguard."""

from .anderson import Anderson, TriangularAnderson
from .base import FusedStep, Solver, StepContext
from .jacobi import Jacobi
from .safeguard import Safeguard

__all__ = ["Anderson", "TriangularAnderson", "Jacobi", "Safeguard", "Solver", "StepContext", "FusedStep"]
