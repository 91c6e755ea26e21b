"""The tolerance: the only place where "converged" is defined.

For row ``i`` of a trajectory and one sample ``b`` of a batch,

.. math::

    e_{i,b} = \\frac{\\operatorname{RMS}_{\\text{event}}(F_i(x) - x_i)}{\\text{atol} + \\text{rtol}\\,\\sigma_i},
    \\qquad e_i = \\max_b e_{i,b},

and row ``i`` is converged iff ``e_i <= 1``; in a per-sample solve (``solve(...,
per_sample=True)``, the default for a batch) row ``i`` of sample ``b`` is converged iff
``e_{i,b} <= 1``, each sample freezing its own rows. ``sigma_i`` is the system's per-row scale
(the DDPM posterior standard deviation for diffusion samplers, ``1`` by default). With an
unrolled update map (order ``k > 1`` or the Picard map) the same test is applied to the
map residual ``G_i(x) - x_i`` as well, and a row must pass both (DESIGN 4.1).

With ``atol = rtol = 0`` a row converges only when its residual is exactly zero. A residual
with a nan or inf entry gives ``e_i = nan`` (never converged).

Arithmetic. The RMS is computed overflow-safe and without underflow in the work dtype
(float64 where the device has it, else float32): the residual is cast up first, and where
the work dtype cannot hold the square of the residual dtype's largest value (float64
residuals, or bfloat16 without float64) each sample is divided by its largest magnitude
before squaring, ``RMS(r) = m * RMS(r / m)`` with ``m = max |r|``. So a finite residual
always gives a finite error, and a float16 residual of ``1e-4`` reads as ``1e-4``, not 0.
All of it stays on the device; the driver reads the errors once per round. The cast and the
scaling cost several passes over the residual, so for float32 and float64 trajectories the driver
first computes the plain norm in the residual's own dtype (one pass; exact to its rounding unless
a square overflows or underflows) when every threshold is above :meth:`Tolerance.fast_floor`, and
recomputes the round's errors carefully -- a second read -- only when one of them reads ``inf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import device, from_host, to_host, work_dtype
from ._validate import check_float

__all__ = ["Tolerance"]


def _fast_dtype(xp: Any, dtype: Any) -> bool:
    """float32 and float64 residuals may take the plain norm in their own dtype (``careful=False``)."""
    return dtype == xp.float32 or dtype == xp.float64


def _needs_scaling(xp: Any, rdtype: Any, wdtype: Any) -> bool:
    """Whether squaring the largest ``rdtype`` value overflows ``wdtype``."""
    return 2.0 * math.log(float(xp.finfo(rdtype).max)) > math.log(float(xp.finfo(wdtype).max))


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """The tolerance of a solve: the per-row convergence test and the output-aware finish.

    One spelling: :func:`trisolve.solve` takes the fields as its flat keywords ``atol=``,
    ``rtol=``, ``final_row_atol=``, and its :class:`~trisolve.Solution` records the one it used
    (:attr:`Solution.tolerance <trisolve.Solution.tolerance>`). A ``Tolerance`` kept to reuse
    is passed as ``solve(..., **tol.as_kwargs())``. The fields' defaults are the core's
    defaults (the one site: ``solve`` reads them from here).

    Parameters
    ----------
    atol : float
        Absolute part of the threshold, in the units of the trajectory.
    rtol : float
        Part of the threshold proportional to each row's scale ``sigma_i``.
    final_row_atol : float or None
        The output-aware finish of :func:`trisolve.solve` (absolute, in the trajectory's units);
        ``None``: every row must meet ``atol`` and ``rtol``.

    Examples
    --------
    >>> import numpy as np, trisolve
    >>> tol = trisolve.Tolerance(atol=1e-9)
    >>> sys = trisolve.BlackBoxSystem(lambda x, lo, hi: 0.5 * x[lo - 1 : hi - 1] + 1.0, n=8)
    >>> sol = trisolve.solve(sys, trisolve.Jacobi(), np.zeros(()), **tol.as_kwargs())
    >>> sol.tolerance == tol
    True
    """

    atol: float = 1e-6
    rtol: float = 0.0
    final_row_atol: float | None = None

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), 0.0))
        if self.final_row_atol is not None:
            object.__setattr__(self, "final_row_atol", check_float("final_row_atol", self.final_row_atol, 0.0, hint="or None"))

    def as_kwargs(self) -> dict[str, Any]:
        """``{"atol": ..., "rtol": ..., "final_row_atol": ...}``: the keywords of :func:`trisolve.solve`."""
        return {"atol": self.atol, "rtol": self.rtol, "final_row_atol": self.final_row_atol}

    def thresholds(self, sigma: np.ndarray) -> np.ndarray:
        """Per-row thresholds ``atol + rtol * sigma`` (host, float64)."""
        return self.atol + self.rtol * np.asarray(sigma, dtype=np.float64)

    def device_thresholds(self, sigma: np.ndarray, *, xp: Any, device: Any) -> Any:
        """The thresholds as a device vector in the work dtype (built once per solve)."""
        return from_host(self.thresholds(sigma), xp, dtype=work_dtype(xp, device), device=device)

    @staticmethod
    def sample_rms(r: Any, *, batch_ndim: int, xp: Any, careful: bool = True) -> Any:
        """RMS over the event of every row and sample: ``(w,)`` or ``(w, S)`` in the work dtype.

        Overflow-safe (see the module docstring); ``nan`` where a value is not finite.
        ``careful=False`` (float32 and float64 residuals): the plain norm in the residual's own
        dtype, one pass and no cast -- exact to the dtype's rounding unless it reads ``inf``
        (an overflowing square, or an inf entry) or lies below :meth:`fast_floor` (underflowing
        squares); the driver uses it when every threshold is above that floor and recomputes
        carefully when a value reads ``inf``.
        """
        w = r.shape[0]
        S = math.prod(r.shape[1 : 1 + batch_ndim]) if batch_ndim else 1
        wdt = work_dtype(xp, device(r))
        if math.prod(r.shape[1 + batch_ndim :]) == 0:  # an empty event: RMS 0
            return xp.zeros((w, S) if batch_ndim else (w,), dtype=wdt, device=device(r))
        if not careful and _fast_dtype(xp, r.dtype):
            rows = xp.reshape(r, (w, S, -1))  # (w, S, d) in the residual's dtype
            linalg = getattr(xp, "linalg", None)
            if hasattr(linalg, "vector_norm"):  # one pass
                rms = linalg.vector_norm(rows, axis=-1) / math.sqrt(rows.shape[-1])
            else:
                rms = xp.sqrt(xp.mean(xp.square(rows), axis=-1))
            rms = xp.astype(rms, wdt, copy=False)  # inf: overflow or an inf entry (the caller redoes it)
            return rms if batch_ndim else rms[:, 0]
        rows = xp.reshape(xp.astype(r, wdt, copy=False), (w, S, -1))  # (w, S, d)
        if _needs_scaling(xp, r.dtype, wdt):
            m = xp.max(xp.abs(rows), axis=-1, keepdims=True)  # (w, S, 1); nan/inf propagate
            safe = xp.where(xp.isfinite(m) & (m > 0), m, xp.ones_like(m))
            rms = m[..., 0] * xp.sqrt(xp.mean(xp.square(rows / safe), axis=-1))
            rms = xp.where(xp.isfinite(m[..., 0]), rms, xp.full_like(rms, math.nan))
        else:
            rms = xp.sqrt(xp.mean(xp.square(rows), axis=-1))  # squares fit the work dtype
            rms = xp.where(xp.isinf(rms), xp.full_like(rms, math.nan), rms)
        return rms if batch_ndim else rms[:, 0]

    @staticmethod
    def fast_floor(xp: Any, dtype: Any) -> float:
        """Below this RMS the uncareful :meth:`sample_rms` of a ``dtype`` residual may lose accuracy.

        ``sqrt(tiny) / eps`` of ``dtype`` (about ``7e-139`` in float64, ``9e-13`` in float32): a
        sum of squares that large has lost at most ``tiny`` to underflow, a relative ``eps^2``.
        ``0`` for dtypes that always take the careful path.
        """
        if not _fast_dtype(xp, dtype):
            return 0.0
        fi = xp.finfo(dtype)
        return math.sqrt(float(fi.smallest_normal)) / float(fi.eps)

    def row_errors(self, r: Any, thr: Any, *, batch_ndim: int, xp: Any, careful: bool = True) -> Any:
        """Scaled error ``e_i`` of every row of ``r`` on the device.

        Parameters
        ----------
        r : array, shape ``(w, *event)``
        thr : array, shape ``(w,)``
            The rows' thresholds (a slice of :meth:`device_thresholds`).

        Returns
        -------
        array, shape ``(w,)``, work dtype; ``nan`` where the residual is not finite.
        """
        return self.scale(self.sample_rms(r, batch_ndim=batch_ndim, xp=xp, careful=careful), thr, batch_ndim=batch_ndim, xp=xp)

    def scale(self, rms: Any, thr: Any, *, batch_ndim: int, xp: Any) -> Any:
        """:meth:`row_errors` from the per-sample RMS :meth:`sample_rms` returned (``(w, S)`` or ``(w,)``).

        The max over samples propagates ``nan`` (the array API's ``max`` does), so a row with
        one non-finite sample is ``nan``.
        """
        return scale_rms(rms, thr, thresholds_positive=self.atol > 0, batch_ndim=batch_ndim, xp=xp)

    def scaled_error(self, r: Any, sigma: np.ndarray, *, batch_ndim: int, xp: Any) -> np.ndarray:
        """:meth:`row_errors` with host thresholds, read back as a host float64 ``(w,)`` (tests, tools)."""
        thr = self.device_thresholds(sigma, xp=xp, device=device(r))
        return to_host(self.row_errors(r, thr, batch_ndim=batch_ndim, xp=xp))


def scale_rms(rms: Any, thr: Any, *, thresholds_positive: bool, batch_ndim: int, xp: Any) -> Any:
    """:meth:`Tolerance.scale` as a function of its arrays and one flag (what the compiled round traces).

    ``thresholds_positive``: ``atol > 0``, so every threshold is positive and the error is
    ``rms / thr``; otherwise a zero threshold gives ``0`` for a zero residual and ``inf`` else.
    """
    if batch_ndim:
        rms = xp.max(rms, axis=1)
    if thresholds_positive:  # every threshold is positive
        return rms / thr
    pos = thr > 0
    safe = xp.where(pos, thr, xp.ones_like(thr))
    zero_thr = xp.where(rms == 0, xp.zeros_like(rms), xp.full_like(rms, math.inf))
    return xp.where(xp.isnan(rms), rms, xp.where(pos, rms / safe, zero_thr))
