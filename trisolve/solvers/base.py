"""The solver protocol: how a solver proposes new values for the active rows of a window."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..compiled import eager

__all__ = ["Solver", "StepContext"]


@dataclass(frozen=True)
class StepContext:
    """Everything a solver sees in one round (window ``[lo, hi)``, ``w = hi - lo`` rows).

    Attributes
    ----------
    x : array, shape ``(w, *event)``
        Current iterate of the window rows.
    g : array, shape ``(w, *event)``
        The update map's values ``G(x)``; the plain step is ``x <- g``.
    r : array, shape ``(w, *event)``
        Map residual ``g - x``.
    errors : ndarray, shape ``(w,)``
        Scaled residual of each row (host float64).
    lo, hi : int
        Window bounds (global row indices).
    start : int
        Window-local index of the first row the solver may accelerate; rows before it get
        the plain step from the driver (the structural safeguard, DESIGN 4.2).
    batch_ndim : int
        Leading event axes that index independent samples.
    xp : namespace
    jit : callable
        ``jit(fn, key)`` returns ``fn`` compiled for the solve's device when the solve runs
        compiled (``solve(..., compile=True)``, :class:`trisolve.compiled.RoundCompiler`),
        else ``fn`` itself. A solver passes it its pure device arithmetic (arrays, Python
        numbers and flags in, arrays out; no host reads, no state changes) and ``key``, a
        hashable naming the configuration of the static arguments.
    active : array or None
        A per-sample solve (:func:`trisolve.solve`, ``per_sample``): the device bool ``(w, S)``
        of the ``(row, sample)`` pairs inside their sample's window this round. Every other
        pair is frozen or not yet reached: its ``g`` is its ``x``, its ``r`` is zero, and the
        driver never writes it, so it must add nothing to the fit of the others. ``start`` is
        then the smallest of the samples' first accelerated rows, and ``errors`` each row's
        largest error over the pairs in their windows. ``None``: every pair (lockstep).
    """

    x: Any
    g: Any
    r: Any
    errors: np.ndarray
    lo: int
    hi: int
    start: int
    batch_ndim: int
    xp: Any
    jit: Callable[..., Callable] = eager
    active: Any = None


class Solver:
    """Base of the solvers: small frozen settings objects; per-solve state is a separate value.

    ``init()`` returns the state for a new solve, ``step(ctx, state)`` returns the proposal
    ``(w, *event)`` for the window rows and the new state. Only rows ``>= ctx.start`` of
    the proposal are used; rows with a nan or inf are replaced by the driver (plain step, or
    the last final row), so the trajectory stays finite. ``stats(state)`` returns the
    solver's counters at the end. ``step`` must not read device values on the host nor build
    arrays from host data (the driver reads once per round; ``ctx.errors`` is on the host).

    ``retains_iterate``: whether the state keeps ``ctx.x`` past the call (Anderson's history
    does). When false the driver hands ``step`` a view of the trajectory's rows instead of a
    copy (one copy of the window less per round).
    """

    retains_iterate = True

    def init(self) -> Any:
        return None

    def step(self, ctx: StepContext, state: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def stats(self, state: Any) -> dict[str, int]:
        """Counters of a finished solve (``num_restarts``, ...), entries of ``Solution.stats``; read once, at the end."""
        return {}
