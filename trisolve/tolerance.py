"""The tolerance: the only place where "converged" is defined.

For row ``i`` of a trajectory and one sample ``b`` of a batch,

.. math::

    e_{i,b} = \\frac{\\operatorname{RMS}_{\\text{event}}(F_i(x) - x_i)}{\\text{atol} + \\text{rtol}\\,\\sigma_i},
    \\qquad e_i = \\max_b e_{i,b},

and row ``i`` is converged iff ``e_i <= 1``. ``sigma_i`` is the system's per-row scale
(the DDPM posterior standard deviation for diffusion samplers, ``1`` by default). With an
unrolled update map (order ``k > 1`` or the Picard map) the same test is applied to the
map residual ``G_i(x) - x_i`` as well, and a row must pass both (DESIGN 4.1).

With ``atol = rtol = 0`` a row converges only when its residual is exactly zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import to_host

__all__ = ["Tolerance"]


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """Absolute and relative tolerance of the per-row convergence test.

    Parameters
    ----------
    atol : float
        Absolute part of the threshold, in the units of the trajectory.
    rtol : float
        Part of the threshold proportional to each row's scale ``sigma_i``.
    """

    atol: float = 1e-6
    rtol: float = 0.0

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__}.")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")

    def thresholds(self, sigma: np.ndarray) -> np.ndarray:
        """Per-row thresholds ``atol + rtol * sigma`` (host, float64)."""
        return self.atol + self.rtol * np.asarray(sigma, dtype=np.float64)

    def scaled_error(self, r: Any, sigma: np.ndarray, *, batch_ndim: int, xp: Any) -> np.ndarray:
        """Scaled error ``e_i`` of every row of ``r``.

        Parameters
        ----------
        r : array, shape ``(w, *event)``
            Residual rows.
        sigma : ndarray, shape ``(w,)``
            Row scales (host, float64).
        batch_ndim : int
            Number of leading event axes that index independent samples.

        Returns
        -------
        ndarray, shape ``(w,)``
            Host float64; ``nan`` where the residual is not finite.
        """
        w = r.shape[0]
        rows = xp.reshape(r, (w, -1)) if batch_ndim == 0 else r
        if batch_ndim:
            num_samples = math.prod(r.shape[1 : 1 + batch_ndim])
            rows = xp.reshape(r, (w, num_samples, -1))
        ms = xp.mean(rows * rows, axis=-1)  # (w,) or (w, B)
        rms = np.sqrt(to_host(ms))
        if batch_ndim:
            rms = np.where(np.isnan(rms).any(axis=1), np.nan, rms.max(axis=1, initial=0.0))
        # host work per round grows with the window: keep the common case (atol > 0) to a few passes
        if self.atol > 0:  # every threshold is positive
            err = rms / (self.atol if self.rtol == 0 else self.thresholds(sigma))
            if not math.isfinite(rms.sum()):  # one cheap pass in the common case
                err[np.isinf(rms)] = np.nan  # nan stays nan
            return err
        thr = self.thresholds(sigma)
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.where(thr > 0, rms / np.where(thr > 0, thr, 1.0), np.where(rms == 0, 0.0, np.inf))
        err[~np.isfinite(rms)] = np.nan
        return err
