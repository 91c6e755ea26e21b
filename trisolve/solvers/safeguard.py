"""Safeguards of the accelerated solvers (DESIGN 4.3)."""

from __future__ import annotations

from dataclasses import dataclass

from .._validate import check_float

__all__ = ["Safeguard"]


@dataclass(frozen=True, kw_only=True)
class Safeguard:
    """When an accelerated solver restarts its history or rejects its last proposal.

    Each round the solver compares ``rho_t``, the RMS scaled map residual over the rows that
    were in the window in both this and the previous round, with ``rho_{t-1}`` over the same
    rows:

    * ``rho_t > reject_growth * rho_{t-1}`` after an accelerated round: the accelerated
      iterate is rejected [ZOB]; those rows take the plain step from the previous iterate
      (``x_{t-1} + R_{t-1}``) and the history is cleared.
    * otherwise ``rho_t > restart_growth * rho_{t-1}``: a restart. The older difference pairs
      are dropped and this round's step is still accelerated, with the newest pair only
      (``x_t - x_{t-1}``, ``R_t - R_{t-1}``), so a restart never wastes a round on a plain step.

    A non-finite error counts as infinite growth.

    Neither can break the ``n``-round bound, which comes from freezing (DESIGN 4.2).

    Parameters
    ----------
    restart_growth : float
        ``>= 1``; ``inf`` never restarts.
    reject_growth : float
        ``>= 1``; ``inf`` never rejects.
    """

    restart_growth: float = 1.0
    reject_growth: float = 10.0

    def __post_init__(self) -> None:
        for name in ("restart_growth", "reject_growth"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), 1.0, finite=False, hint="(inf disables it)"))
