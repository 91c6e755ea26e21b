"""Update maps ``G``: the fixed-point map a solver iterates on the window ``[lo, hi)``.

Every map is one residual scan with a *linear-part policy* ``J`` (DESIGN 9,
:mod:`trisolve.scan`). With ``r_i = F_i(x) - x_i`` on the window rows and ``delta_{lo-1} = 0``::

    delta_i = J_i delta_{i-1} + r_i          (truncated to the k newest terms)
    G_i(x)  = x_i + delta_i = F_i(x) + J_i delta^{(k-1)}_{i-1}

==============  ==============  ======================================================
map             ``J_i``         written out (``s = max(i - k, lo - 1)`` the anchor)
==============  ==============  ======================================================
``OneStep``     ``0``           ``G_i = F_i(x)``: one row of exact information per round
``Picard``      ``1``           ``G_i = x_s + sum_{l=s+1}^{i} (F_l(x) - x_{l-1})`` (ParaDiGMS)
``Unrolled``    ``a_i``         ``G_i = Phi(s->i) x_s + sum_{l=s+1}^{i} Phi(l->i) u_l`` with
                                ``Phi(l->i) = a_{l+1} ... a_i``, ``u_l = F_l(x) - a_l x_{l-1}``:
                                the order-``k`` equivalent system (DESIGN 2.1)
==============  ==============  ======================================================

``WeightedPicard`` takes ``J_i`` from a given per-row table (``gains``), between ``OneStep``
(0) and ``Picard`` (1). All have the fixed point of the system. ``F`` (the network) is still evaluated once per row
per round: only the linear part is unrolled, so the cost of a round does not depend on ``k``.
``order=None`` means the whole window (``k >= hi - lo``).

The map protocol (what :func:`trisolve.solve` calls):

* ``check(system)`` -- raise a clear error if the map cannot serve ``system``;
* ``prepare(system, x, *, xp)`` -- per-solve tables, built once on the trajectory's device
  (e.g. ``a`` as a float64 device vector), returned as an opaque value ``tables``;
* ``linear_part(tables, x, f, lo, hi, *, xp)`` -- ``J`` for the window rows: ``None`` (zero),
  a Python number, per-row scalars ``(w,)``, elementwise ``(w, *event)`` or dense matrices
  ``(w, *event, d)`` acting on the last event axis (see :mod:`trisolve.scan`);
* ``apply(tables, x, f, lo, hi, *, xp)`` -- returns ``(G, R)``, both ``(w, *event)``, the
  map's values and its residual ``R = G - x``. The default runs the scan on ``J``; a map
  only overrides ``linear_part`` (a Newton map returns ``J_i = dF_i/dx_{i-1}``);
* ``compilable`` and ``combine(J, f, r, *, xp)`` -- a map whose ``linear_part`` only slices
  per-solve tables sets ``compilable = True``; ``solve(..., compile=True)`` then traces
  ``combine`` (the scan) inside the compiled round (:mod:`trisolve.compiled`);
* ``num_evals(tables)`` -- evaluations of ``F`` the map spent itself (finite differences),
  added to ``Solution.num_evals``; 0 by default;
* ``stats(tables)`` -- the map's counters, merged into ``Solution.stats``; ``{}`` by default.

A map never reads device values on the host and builds no tensor from host data after
``prepare``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._backend import device, from_host, work_dtype
from ._validate import check_int
from .scan import affine_scan, apply_linear, linear_kind, shift_rows

__all__ = ["UpdateMap", "OneStep", "Unrolled", "Picard", "WeightedPicard"]


def _check_order(order: Any) -> int | None:
    if order is None:
        return None
    return check_int("order", order, 1, hint="(1 is the original recurrence; None unrolls over the whole window)")


class UpdateMap:
    """Base of the update maps: a residual scan with the linear part :meth:`linear_part`.

    Subclasses set ``order`` (``k``, ``None`` = the whole window) and override
    :meth:`linear_part` (and :meth:`prepare` / :meth:`check` when they need the system).
    """

    order: int | None = 1
    #: Whether :meth:`apply` is ``combine(linear_part(...), f, f - x[lo:hi])`` with a ``linear_part`` that
    #: only slices per-solve tables (no evaluation, no state): then ``solve(..., compile=True)`` runs
    #: :meth:`combine` inside the compiled round (:mod:`trisolve.compiled`) -- unless a subclass overrides
    #: :meth:`apply` -- otherwise :meth:`apply` runs as written (and always in an eager solve).
    compilable: bool = False

    @property
    def is_one_step(self) -> bool:
        """Whether ``G = F`` (then the map residual is the first-order residual)."""
        return self.order == 1

    @property
    def damped(self) -> bool:
        """Whether ``G_i`` is a damped step, not exact on a row that reads only final rows.

        The driver then freezes the first unconverged row at its one-step value ``F_i``
        instead of ``G_i`` (``Newton(damping > 0)``, ELK's trust region), so the frozen prefix
        still grows by an exact row every round.
        """
        return False

    def check(self, system: Any) -> None:
        """Raise if this map cannot be used with ``system``; also checks ``order <= n``."""
        if self.order is not None and self.order > system.n:
            raise ValueError(f"order must be between 1 and n = {system.n}, got {self.order}; use order=None for the whole window.")

    def prepare(self, system: Any, x: Any, *, xp: Any) -> Any:
        """Per-solve tables on ``x``'s device (built once, before the first round)."""
        return None

    def num_evals(self, tables: Any) -> int:
        """Evaluations of ``F`` the map made itself (read once, at the end; added to ``Solution.num_evals``)."""
        return 0

    def stats(self, tables: Any) -> dict[str, int]:
        """The map's counters of a finished solve (read once, at the end; entries of ``Solution.stats``)."""
        return {}

    def linear_part(self, tables: Any, x: Any, f: Any, lo: int, hi: int, *, xp: Any) -> Any:
        """``J`` for rows ``[lo, hi)``: ``None`` (zero), a number, ``(w,)``, ``(w, *event)`` or dense."""
        return None

    def apply(self, tables: Any, x: Any, f: Any, lo: int, hi: int, *, xp: Any) -> tuple[Any, Any]:
        """``(G, R)`` on rows ``[lo, hi)``: ``G_i = F_i + J_i delta^{(k-1)}_{i-1}``, ``R_i = G_i - x_i``.

        Parameters
        ----------
        tables : the value :meth:`prepare` returned
        x : array, shape ``(n + 1, *event)``
            The trajectory (rows ``< lo`` are final).
        f : array, shape ``(w, *event)``
            ``F_i(x)`` for the window rows.

        Returns
        -------
        G, R : arrays, shape ``(w, *event)``
            ``G_i`` is computed as ``F_i + correction`` (never as ``x_i + R_i``), so a row
            that reads only final rows gets exactly its one-step value plus the converged
            corrections, however far its own iterate ``x_i`` is from the solution.
        """
        r = f - x[lo:hi, ...]  # (w, *event)
        if self.order == 1:
            return f, r
        return self.combine(self.linear_part(tables, x, f, lo, hi, xp=xp), f, r, xp=xp)

    def combine(self, J: Any, f: Any, r: Any, *, xp: Any) -> tuple[Any, Any]:
        """``(G, R)`` from the window's linear part ``J`` (:meth:`linear_part`), ``F`` and ``r = F - x``: the scan.

        Pure device arithmetic on its arguments (no host reads, no Python state): the part of
        :meth:`apply` that the compiled round (:mod:`trisolve.compiled`) traces for a map whose
        :attr:`compilable` is true.
        """
        kind = linear_kind(J, r)
        if self.order == 1 or kind == "zero":
            return f, r
        k = self.order
        prev = affine_scan(J, r, order=None if k is None else k - 1, xp=xp)  # delta^{(k-1)}  (w, *event)
        c = apply_linear(J, shift_rows(prev, xp=xp), kind=kind, xp=xp)  # J_i delta^{(k-1)}_{i-1}
        return f + c, r + c


@dataclass(frozen=True)
class OneStep(UpdateMap):
    """``G_i = F_i(x)``: the original recurrence (order 1, ``J = 0``), for any system."""

    compilable = True

    @property
    def order(self) -> int:  # type: ignore[override]
        return 1


@dataclass(frozen=True)
class Picard(UpdateMap):
    """ParaDiGMS's map: ``G_i = x_s + sum_{l=s+1}^{i} (F_l(x) - x_{l-1})``, ``s = max(i - k, lo - 1)``.

    The residual scan with ``J = 1``: its map residual is the running sum of the ``k``
    newest one-step residuals, ``R_i = sum_{l=s+1}^{i} (F_l(x) - x_l)``. Works for any system;
    fast where a step is close to the identity (integrators, DDIM), slow on a contractive
    recurrence, where the summed increments grow: there it advances one row a round and
    :func:`~trisolve.solve` issues a :class:`~trisolve.NoProgressWarning` (use
    :class:`OneStep` or :class:`~trisolve.Newton`).

    Parameters
    ----------
    order : int or None
        ``k``; ``None`` (default) sums from the last final row.

    Examples
    --------
    >>> import numpy as np, trisolve
    >>> sys = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1]) + 0.1, n=30)
    >>> sol = trisolve.solve(sys, trisolve.Jacobi(), np.zeros(2), update_map=trisolve.Picard(), atol=1e-10)
    >>> sol.converged
    True
    """

    order: int | None = None
    compilable = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", _check_order(self.order))

    def linear_part(self, tables, x, f, lo, hi, *, xp):
        return 1.0


@dataclass(frozen=True)
class Unrolled(UpdateMap):
    """The order-``k`` equivalent system (DESIGN 2.1): the residual scan with ``J_i = a_i``.

    ``G_i = Phi(s->i) x_s + sum_{l=s+1}^{i} Phi(l->i) u_l`` with ``s = max(i - k, lo - 1)``,
    ``Phi(l->i) = a_{l+1} ... a_i`` and ``u_l = F_l(x) - a_l x_{l-1}``. Needs a system whose
    ``linear_coefficients`` gives the ``a_i`` (a :class:`~trisolve.SemilinearSystem`); the
    table moves to the device once per solve, in float64 where the device has it.

    Parameters
    ----------
    order : int or None
        ``k``; ``None`` (default) unrolls back to the last final row. ``order=1`` is the
        original recurrence.

    Examples
    --------
    >>> import numpy as np, trisolve
    >>> sys = trisolve.SemilinearSystem(np.full(40, 0.98), np.full(40, 0.05), lambda y, lo, hi: np.sin(y))
    >>> sol = trisolve.solve(sys, trisolve.Jacobi(), np.ones(2), update_map=trisolve.Unrolled(), atol=1e-10)
    >>> sol.converged, sol.num_rounds < 40
    (True, True)
    """

    order: int | None = None
    compilable = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", _check_order(self.order))

    def check(self, system):
        super().check(system)
        if self.order != 1 and system.linear_coefficients is None:
            raise TypeError(
                "Unrolled(order != 1) needs a SemilinearSystem (it unrolls the linear part a_i x_{i-1}, read from "
                f"system.linear_coefficients); got {type(system).__name__}, which has none. "
                "Use Picard(...) or OneStep() for black-box systems."
            )

    def prepare(self, system, x, *, xp):
        if self.order == 1:
            return None
        dev = device(x)
        return from_host(system.linear_coefficients, xp, dtype=work_dtype(xp, dev), device=dev)  # a_1..a_n  (n,)

    def linear_part(self, tables, x, f, lo, hi, *, xp):
        return tables[lo - 1 : hi - 1]  # a_i for i in [lo, hi)   (w,)


@dataclass(frozen=True)
class WeightedPicard(UpdateMap):
    """The residual scan with a given per-row linear part: ``delta_i = gains_i delta_{i-1} + r_i``, ``G_i = F_i(x) + gains_i delta_{i-1}``.

    ``gains = 1`` everywhere is :class:`Picard`, ``0`` :class:`OneStep`, a semilinear system's
    ``a`` :class:`Unrolled`; every table has the system's fixed point, only the rounds change.
    A gain below 1 damps what the rows before pass on: right where a step contracts the errors
    it reads (a stochastic sampler's step towards a clean image it holds fixed), where Picard's
    plain sum of increments overshoots. ``trisolve_diffusion`` builds the table from a
    scheduler's rows (:attr:`trisolve_diffusion.SchedulerMapping.picard_gains`).

    Parameters
    ----------
    gains : sequence of float, length ``n``
        ``gains[i - 1]`` is row ``i``'s ``J_i``; finite. Kept as a tuple (the map is hashable and
        compares by value).
    order : int or None
        ``k``; ``None`` (default) sums from the last final row.

    Examples
    --------
    >>> import numpy as np, trisolve
    >>> sys = trisolve.SemilinearSystem(np.full(30, 0.5), np.full(30, 0.05), lambda y, lo, hi: np.sin(y))
    >>> sol = trisolve.solve(sys, trisolve.Jacobi(), np.ones(2), update_map=trisolve.WeightedPicard([0.5] * 30), atol=1e-10)
    >>> sol.converged, sol.num_rounds < 30
    (True, True)
    """

    gains: tuple = field(default=())
    order: int | None = None
    compilable = True

    def __post_init__(self) -> None:
        g = np.asarray(self.gains, dtype=np.float64)
        if g.ndim != 1 or g.size == 0 or not np.all(np.isfinite(g)):
            raise ValueError(f"gains must be a non-empty 1-D sequence of finite floats (one per row), got {self.gains!r}.")
        object.__setattr__(self, "gains", tuple(float(v) for v in g))
        object.__setattr__(self, "order", _check_order(self.order))

    def __repr__(self) -> str:
        return f"WeightedPicard(gains=<{len(self.gains)} rows, {min(self.gains):.3g}..{max(self.gains):.3g}>, order={self.order})"

    def check(self, system):
        super().check(system)
        if len(self.gains) != system.n:
            raise ValueError(f"gains has {len(self.gains)} entries but the system has n = {system.n} rows; give one gain per row.")

    def prepare(self, system, x, *, xp):
        dev = device(x)
        return from_host(np.asarray(self.gains, dtype=np.float64), xp, dtype=work_dtype(xp, dev), device=dev)  # J_1..J_n  (n,)

    def linear_part(self, tables, x, f, lo, hi, *, xp):
        return tables[lo - 1 : hi - 1]  # J_i for i in [lo, hi)   (w,)
