"""What :func:`trisolve.solve` returns: a :class:`Solution` with a :class:`Status`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Status", "Solution", "RoundInfo", "SolveError"]


class Status(enum.Enum):
    """Why a solve ended. ``status.message`` says what it means and what to do."""

    CONVERGED = "every row is within tolerance of F_i(x) = x_i"
    MAX_ITER = (
        "max_iter rounds ran out before every row met the tolerance; raise max_iter, loosen the "
        "tolerance, or resume with init=solution.trajectory, num_frozen=solution.num_frozen"
    )
    EARLY_STOPPED = "stopped early because the final row stopped changing (early_stop); rows from num_frozen on are not yet within tolerance"
    STOPPED_BY_CALLBACK = "the callback asked to stop; resume with init=solution.trajectory, num_frozen=solution.num_frozen"
    NONFINITE = (
        "F returned a non-finite value (nan or inf); the trajectory holds the last finite iterate and rows "
        "before num_frozen are final: check the system, its inputs and its dtype"
    )
    FAILED = (
        "evaluating the system raised an exception (solution.error); the trajectory holds the iterate "
        "from before that round and rows before num_frozen are final"
    )
    INTERRUPTED = (
        "interrupted (KeyboardInterrupt) during an evaluation; the trajectory holds the iterate from "
        "before that round; resume with init=solution.trajectory, num_frozen=solution.num_frozen"
    )

    @property
    def message(self) -> str:
        return self.value

    @property
    def ok(self) -> bool:
        """Whether the trajectory is the solution to tolerance."""
        return self is Status.CONVERGED


class SolveError(RuntimeError):
    """Raised by :meth:`Solution.raise_for_status` when a solve did not converge."""


@dataclass(frozen=True)
class RoundInfo:
    """What a callback sees after each round.

    Attributes
    ----------
    round : int
        1-based round number.
    lo, hi : int
        The window this round worked on.
    num_frozen : int
        Rows ``< num_frozen`` are final after this round.
    errors : ndarray, shape ``(hi - lo,)``
        Scaled residual of each window row (converged iff ``<= 1``).
    trajectory : array, shape ``(n + 1, *event)``
        The current iterate (read it, do not write it).
    """

    round: int
    lo: int
    hi: int
    num_frozen: int
    errors: np.ndarray
    trajectory: Any

    @property
    def max_error(self) -> float:
        return float(np.nanmax(self.errors)) if self.errors.size else 0.0


@dataclass(frozen=True)
class Solution:
    """Result of :func:`trisolve.solve`.

    Attributes
    ----------
    trajectory : array, shape ``(n + 1, *event)``
        In the namespace, dtype and device of ``x0``.
    status : Status
    num_rounds : int
        Batched evaluations of the system.
    num_evals : int
        Rows evaluated in total (rows of ``g`` for a semilinear system).
    num_frozen : int
        Rows ``0 .. num_frozen - 1`` are final (``n + 1`` when converged).
    windows : list of (int, int)
        The window ``[lo, hi)`` of each round.
    error : BaseException or None
        The exception that ended the solve, for ``Status.FAILED``.
    num_restarts, num_rejections, num_fallback_rows : int
        Safeguard activity of accelerated solvers (zero for Jacobi).
    """

    trajectory: Any
    status: Status
    num_rounds: int
    num_evals: int
    num_frozen: int
    windows: list[tuple[int, int]]
    round_errors: list[np.ndarray] = field(repr=False)
    error: BaseException | None = None
    num_restarts: int = 0
    num_rejections: int = 0
    num_fallback_rows: int = 0

    @property
    def converged(self) -> bool:
        return self.status is Status.CONVERGED

    @property
    def n(self) -> int:
        return self.trajectory.shape[0] - 1

    @property
    def residuals(self) -> np.ndarray:
        """Scaled residual per round and row, ``(num_rounds, n + 1)``; ``nan`` outside the window."""
        out = np.full((len(self.windows), self.n + 1), np.nan)
        for t, ((lo, hi), err) in enumerate(zip(self.windows, self.round_errors)):
            out[t, lo:hi] = err
        return out

    def raise_for_status(self) -> Solution:
        """Return ``self`` if converged, else raise :class:`SolveError` with the status message."""
        if self.status is not Status.CONVERGED:
            raise SolveError(f"{self.status.name}: {self.status.message}") from self.error
        return self
