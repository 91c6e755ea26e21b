"""The solver protocol: how a solver proposes new values for the active rows of a window."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..compiled import eager

__all__ = ["Solver", "StepContext", "FusedStep"]


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


@dataclass(frozen=True)
class FusedStep:
    """A solver's round as a pure device function, traced into the fused compiled round (:func:`trisolve.compiled.fused_round`).

    :meth:`Solver.fused_step` returns it *before* the round's host read, so ``fn`` runs in the
    same compiled call as the update map, the residuals and the decisions; the host decisions
    that ``step`` takes after the read (Anderson's safeguard) are checked afterwards by
    ``finish``.

    Attributes
    ----------
    fn : callable
        ``fn(x, g, r, start, err, *arrays, batch_ndim=..., xp=...) -> (proposal, checks, outputs)``:
        the proposal ``(w, *event)`` for every window row (only rows ``>= start`` are used), a
        vector of host checks (``(c,)`` in ``err``'s dtype, or ``None``) that the round's one read
        brings to ``finish``, and a tuple of arrays for ``finish``. ``x, g, r`` are as in
        :class:`StepContext`; ``start`` is the first row the solver may accelerate as a 0-d
        device integer and ``err`` the rows' scaled errors ``(w,)`` (both computed on the device:
        equal to ``ctx.start`` and ``ctx.errors``). Pure device arithmetic: no host reads, no state
        changes; a module-level function (the compiled function is cached per ``fn``).
    key : hashable
        Names the configuration of ``fn``'s static arguments (as ``StepContext.jit``'s key).
    arrays : tuple
        ``fn``'s further array arguments (the solver's kept history for this window).
    finish : callable
        ``finish(ctx, outputs, checks) -> (taken, state)`` after the host read (``checks``: the
        host values of ``fn``'s checks): ``(True, new state)`` when ``step(ctx, state)`` would have
        proposed what ``fn`` did, else ``(False, None)`` (then the driver calls ``step``).
    """

    fn: Callable[..., tuple[Any, Any, tuple]]
    key: Hashable
    arrays: tuple
    finish: Callable[[StepContext, tuple, Any], tuple[bool, Any]]


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

    ``fused_step(state, lo, hi, *, xp)``: optional, for the compiled round; the default ``None``
    runs ``step`` after the round's compiled arithmetic (see :class:`FusedStep`).
    """

    retains_iterate = True

    def init(self) -> Any:
        return None

    def step(self, ctx: StepContext, state: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def fused_step(self, state: Any, lo: int, hi: int, *, xp: Any) -> FusedStep | None:
        """The round on the window ``[lo, hi)`` as a :class:`FusedStep` for the fused compiled round, or ``None`` (call ``step``).

        Called before the round's evaluation, with the state ``step`` would get; must not
        change ``state``.
        """
        return None

    def stats(self, state: Any) -> dict[str, int]:
        """Counters of a finished solve (``num_restarts``, ...), entries of ``Solution.stats``; read once, at the end."""
        return {}
