"""What :func:`trisolve.solve` returns: a :class:`Solution` with a :class:`Status`."""

from __future__ import annotations

import enum
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import numpy as np

if TYPE_CHECKING:
    from .tolerance import Tolerance

__all__ = ["Status", "Solution", "RoundInfo", "SolveError", "RoundWindows", "NoProgressWarning"]


class Status(enum.Enum):
    """Why a solve ended. ``status.message`` says what it means and what to do."""

    CONVERGED = "every row is within tolerance of F_i(x) = x_i"
    MAX_ITER = (
        "max_iter rounds ran out before every row met the tolerance; raise max_iter, loosen the "
        "tolerance, or resume with init=solution.trajectory, num_frozen=solution.num_frozen"
    )
    EARLY_STOPPED = "stopped early because the final row stopped changing (early_stop); rows from num_frozen on are not yet within tolerance"
    STOPPED_BY_CALLBACK = "the callback asked to stop; resume with init=solution.trajectory, num_frozen=solution.num_frozen"
    FINAL_ROW_CONVERGED = (
        "the final row n is within final_row_atol (the error the observed contraction leaves after the last update, "
        "per sample, at least half its pending correction; every window row's correction too, or its own after-update estimate); earlier "
        "rows from num_frozen on may not be within the tolerance"
    )
    NONFINITE = (
        "F returned a non-finite value (nan or inf) at row num_frozen, which reads only final rows "
        "(solution.error names it); rows before num_frozen are final and the trajectory holds only finite "
        "values: check the system, its inputs and its dtype"
    )
    FAILED = (
        "code the solve called (the system, the update map, the solver, the window policy or the callback) raised "
        "an exception (solution.error); rows before num_frozen are final and the trajectory holds a finite iterate; "
        "resume with init=solution.trajectory, num_frozen=solution.num_frozen once the cause is fixed"
    )
    INTERRUPTED = (
        "interrupted (KeyboardInterrupt); rows before num_frozen are final and the trajectory holds a "
        "finite iterate; resume with init=solution.trajectory, num_frozen=solution.num_frozen"
    )

    @property
    def message(self) -> str:
        return self.value

    @property
    def ok(self) -> bool:
        """Whether the requested output is final to its tolerance.

        ``CONVERGED`` (every row) and ``FINAL_ROW_CONVERGED`` (the final row, to
        ``final_row_atol``, which the caller asked for) are ok; every other status is not.
        """
        return self in (Status.CONVERGED, Status.FINAL_ROW_CONVERGED)


class SolveError(RuntimeError):
    """A solve that did not reach what was asked of it; the work done is kept on ``solution``.

    Raised by :meth:`Solution.raise_for_status`, and by ``solve(..., gradients=...)`` when the
    solve did not converge (the adjoint exists only at the solution).

    Attributes
    ----------
    solution : Solution or None
        The unfinished solve -- its trajectory (rows before ``num_frozen`` final, every value
        finite), status and records -- so that nothing computed is lost; resume it with
        ``solve(..., init=err.solution.trajectory, num_frozen=err.solution.num_frozen)``.
        ``None`` where no solve stands behind the error (the adjoint's own iteration).
    """

    def __init__(self, message: str, *, solution: Solution | None = None):
        super().__init__(message)
        self.solution = solution


class NoProgressWarning(UserWarning):
    """The update map makes no progress on this system beyond the structural bound.

    Issued once by :func:`trisolve.solve` when, for ``NO_PROGRESS_ROUNDS`` consecutive rounds
    over windows of at least two rows, each round froze at most the one row the structural
    safeguard guarantees and the window's largest scaled residual did not shrink (it is at
    least what it was when the stretch began; ``nan`` counts as not shrinking). The solve goes
    on -- it still ends exact within ``n`` rounds -- but about one round per remaining row; the
    message names a map that follows the system (the Picard map on a contractive recurrence,
    where its unrolled increments grow without bound, is the typical case: ``OneStep()`` or
    ``Newton()`` converge there in a few tens of rounds).
    """


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


class RoundWindows(Sequence):
    """The window ``[lo, hi)`` of each round: a read-only sequence of ``(int, int)`` pairs.

    Stored as one ``(rounds, 2)`` int64 array, 16 bytes a round (a Python list of tuples
    costs about 150), so the records of a long solve stay small next to the trajectory.
    Compares equal to any sequence of the same pairs (``sol.windows == [(1, 5), (2, 6)]``).

    Attributes
    ----------
    array : ndarray, shape ``(rounds, 2)``
        Column 0 is ``lo``, column 1 ``hi`` (read-only).
    """

    __slots__ = ("array",)

    def __init__(self, bounds: Any = ()):
        a = np.asarray(bounds, dtype=np.int64).reshape(-1, 2)  # a view where it can be
        a = a.view()
        a.setflags(write=False)
        self.array = a

    def __len__(self) -> int:
        return self.array.shape[0]

    @overload
    def __getitem__(self, index: int) -> tuple[int, int]: ...

    @overload
    def __getitem__(self, index: slice) -> RoundWindows: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return RoundWindows(self.array[index])
        lo, hi = self.array[index]
        return int(lo), int(hi)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RoundWindows):
            return np.array_equal(self.array, other.array)
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self.tolist() == [tuple(w) for w in other]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which are unhashable

    def __repr__(self) -> str:
        return f"RoundWindows({self.tolist()!r})"

    @property
    def nbytes(self) -> int:
        """Bytes of the stored bounds (16 a round)."""
        return self.array.nbytes

    def tolist(self) -> list[tuple[int, int]]:
        """The windows as a list of ``(lo, hi)`` tuples of Python ints."""
        return [(int(lo), int(hi)) for lo, hi in self.array.tolist()]


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
        Rows evaluated in total (rows of ``g`` for a semilinear system), the evaluations of a
        finite-difference Jacobian (``Newton(derivatives="finite-differences")``) included. In a
        per-sample solve (``solve(..., per_sample=True)`` on ``S > 1`` samples), the ``(row,
        sample)`` evaluations divided by ``S``, rounded up -- the rows a lockstep batch would
        evaluate for the same work -- plus the map's own; ``stats["sample_evals"]`` has the pairs.
    num_frozen : int
        Rows ``0 .. num_frozen - 1`` are final (``n + 1`` when converged) for every sample:
        the smallest of :attr:`sample_frozen`.
    windows : RoundWindows
        The window ``[lo, hi)`` of each round, a sequence of ``(lo, hi)`` pairs stored in
        16 bytes a round.
    round_max_errors : ndarray, shape ``(num_rounds,)``
        The largest scaled residual of each round's window (``nan`` if a row was not finite).
    round_errors : list of ndarray or None
        With ``solve(..., record="errors")``: each round's scaled residual per window row,
        ``(hi - lo,)``; ``None`` by default (it costs ``O(rounds x window)``).
    error : BaseException or None
        The exception that ended the solve (``FAILED``: raised by the system, the update map,
        the solver, the window policy or the callback; ``INTERRUPTED``), or a
        ``FloatingPointError`` naming the row for ``NONFINITE``.
    tolerance : Tolerance or None
        The tolerance the solve ran to (``atol``, ``rtol``, ``final_row_atol`` as given to
        :func:`trisolve.solve`; the latent-units one for the diffusion samplers); ``None`` for a
        Solution built elsewhere.
    stats : Mapping[str, int]
        Counters of the solve, read-only (optimistix's ``Solution.stats``): ``num_rounds`` and
        ``num_evals`` (as above), then every counter the solver reports (:meth:`Solver.stats
        <trisolve.Solver.stats>`: ``num_restarts``, ``num_rejections``, ``num_fallback_rows``
        for Anderson and TriangularAnderson) and every counter the update map reports
        (:meth:`UpdateMap.stats <trisolve.UpdateMap.stats>`: ``num_jacobian_evals`` for a
        finite-difference :class:`~trisolve.Newton`). A per-sample solve adds ``sample_evals``:
        the ``(row, sample)`` pairs of the system's expensive map evaluated.
    sample_frozen : ndarray of int, shape ``(S,)``, or None
        Per sample (the ``batch_ndim`` leading event axes, flattened in C order; ``S = 1``
        without them), its rows ``0 .. sample_frozen[s] - 1`` are final; in a lockstep solve
        every entry is ``num_frozen``. ``None`` for a Solution built elsewhere.
    round_sample_evals : ndarray of int, shape ``(num_rounds,)``, or None
        A per-sample solve: the ``(row, sample)`` pairs of the expensive map each round
        evaluated (8 bytes a round); ``None`` otherwise.
    sample_rounds : ndarray of int, shape ``(S,)``, or None
        A per-sample solve: the rounds each sample took until it ended (converged, or its
        finish test, or a stop); the solve's ``num_rounds`` is their maximum. ``None`` otherwise.

    ``num_restarts``, ``num_rejections`` and ``num_fallback_rows`` are deprecated attributes
    (read ``solution.stats[...]``); they warn and return the entry, or 0.
    """

    trajectory: Any
    status: Status
    num_rounds: int
    num_evals: int
    num_frozen: int
    windows: RoundWindows
    round_max_errors: np.ndarray = field(repr=False)
    round_errors: list[np.ndarray] | None = field(default=None, repr=False)
    error: BaseException | None = None
    stats: Mapping[str, int] = field(default_factory=dict)
    tolerance: Tolerance | None = field(default=None, repr=False)
    sample_frozen: np.ndarray | None = field(default=None, repr=False)
    round_sample_evals: np.ndarray | None = field(default=None, repr=False)
    sample_rounds: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        counters = {**self.stats, "num_rounds": self.num_rounds, "num_evals": self.num_evals}
        object.__setattr__(self, "stats", types.MappingProxyType(counters))

    def _deprecated_counter(self, name: str) -> int:
        warnings.warn(f"Solution.{name} is deprecated; read solution.stats.get({name!r}, 0).", DeprecationWarning, stacklevel=3)
        return int(self.stats.get(name, 0))

    @property
    def num_restarts(self) -> int:
        """Deprecated: ``stats.get("num_restarts", 0)``."""
        return self._deprecated_counter("num_restarts")

    @property
    def num_rejections(self) -> int:
        """Deprecated: ``stats.get("num_rejections", 0)``."""
        return self._deprecated_counter("num_rejections")

    @property
    def num_fallback_rows(self) -> int:
        """Deprecated: ``stats.get("num_fallback_rows", 0)``."""
        return self._deprecated_counter("num_fallback_rows")

    def __repr__(self) -> str:
        """Short: status, rounds, evaluations and the trajectory's shape (``print(solution)`` stays one line)."""
        shape = tuple(int(s) for s in self.trajectory.shape)
        counts = f"num_rounds={self.num_rounds}, num_evals={self.num_evals}, num_frozen={self.num_frozen}"
        return f"Solution(status={self.status.name}, {counts}, trajectory shape={shape})"

    @property
    def converged(self) -> bool:
        """``status.ok``: whether the requested output is final to its tolerance."""
        return self.status.ok

    @property
    def n(self) -> int:
        return self.trajectory.shape[0] - 1

    @property
    def residuals(self) -> np.ndarray:
        """Scaled residual per round and row, ``(num_rounds, n + 1)``; ``nan`` outside the window.

        A dense matrix, built on request from the per-row records, which only
        ``solve(..., record="errors")`` keeps (``O(rounds x window)``); for a summary per
        round, read :attr:`round_max_errors`.
        """
        if self.round_errors is None:
            raise ValueError(
                "per-row residuals were not recorded: pass record='errors' to trisolve.solve (O(rounds x window) memory), "
                "or read solution.round_max_errors (one number per round)."
            )
        out = np.full((len(self.windows), self.n + 1), np.nan)
        for t, ((lo, hi), err) in enumerate(zip(self.windows, self.round_errors)):
            out[t, lo:hi] = err
        return out

    @property
    def message(self) -> str:
        """The status message, followed by the error's text when there is one."""
        return self.status.message + ("" if self.error is None else f" ({type(self.error).__name__}: {self.error})")

    def raise_for_status(self) -> Solution:
        """Return ``self`` if ``status.ok``, else raise :class:`SolveError` with the status message."""
        if not self.status.ok:
            raise SolveError(f"{self.status.name}: {self.message}", solution=self) from self.error
        return self
