"""One parametrisation of a sampler's rows: what the network's output at row ``j`` means, and ``g_j``.

As k-diffusion's ``external.py`` gives every model one ``(c_skip, c_out, c_in)`` form, every
scheduler mapping here (and any sampler written on the same rows, e.g. k-diffusion's) describes
its rows by the same tables, built once on the host in float64:

- the *level* of every row ``j = 0..n``: ``x_j = alpha_j x0 + sigma_j eps`` (variance preserving
  for DDPM-type schedulers, ``alpha = 1`` for k-diffusion sigmas, ``alpha = 1 - sigma`` for flow
  matching);
- the *prediction type* of the network's output ``m_j``, which makes the clean-image and noise
  predictions linear in ``(x_j, m_j)`` (:func:`prediction_coefficients`)::

      x0_hat = x0_x x + x0_m m,   eps_hat = eps_x x + eps_m m

- ``g_j``, the processed prediction the semilinear rows consume, by one formula::

      g_j = k_x[j] x_j + k_m[j] m_j + k_0[j] P(x0_hat_j)

  with ``P`` the scheduler's clean-image post-processing hook (clipping, dynamic thresholding;
  ``None`` is the identity, and then ``k_0 = 0``: the ``x0_hat`` term is folded into ``k_x, k_m``).

:meth:`Parametrisation.of` builds the ``g`` tables from weights on ``x0``, ``eps``, ``x`` and the
raw output, so a scheduler states *which* prediction its step consumes (a data prediction, a noise
prediction, a derivative, the raw output, or a combination) and never converts prediction types
itself. :meth:`Parametrisation.scaled` re-expresses the same ``g`` for the rescaled rows
``y_j = c_j x_j`` (only the ``x`` coefficients change), which is all that
:meth:`~trisolve_diffusion.schedulers.base.SchedulerMapping.scaled` needs.

Notation (symbol -> diffusers / k-diffusion):

    alpha_j, sigma_j   ``_sigma_to_alpha_sigma_t(sigmas[j])`` (DPM-Solver family), ``sqrt(abar_t)``,
                       ``sqrt(1 - abar_t)`` (DDIM, DDPM, PNDM), ``(1, sigmas[j])`` (Euler family)
    m_j                the network's output at ``timesteps[j]`` (guidance applied)
    x0_hat, eps_hat    ``pred_original_sample`` / ``D`` and the noise prediction
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

__all__ = [
    "PREDICTION_TYPES",
    "Parametrisation",
    "prediction_coefficients",
    "x0_processing",
    "Clip",
    "Threshold",
    "level_posterior_std",
    "posterior_std",
]

#: Prediction types of the network output ``m`` that :func:`prediction_coefficients` understands.
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")


def norm2(alpha: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``r^2 = alpha^2 + sigma^2`` of each level, exactly 1 where it is 1 to round-off (variance-preserving levels).

    ``sqrt(abar)^2 + sqrt(1 - abar)^2`` is 1 only to round-off; snapping it keeps the DDPM-type
    tables identical to the schedulers' own formulas, which assume ``r = 1``.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        r2 = alpha**2 + sigma**2
    return np.where(np.abs(r2 - 1.0) <= 1e-12, 1.0, r2)


def prediction_coefficients(prediction_type: str, alpha: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x0_x, x0_m, eps_x, eps_m)``: ``x0_hat = x0_x x + x0_m m`` and ``eps_hat = eps_x x + eps_m m``.

    For latents ``x = alpha x0 + sigma eps`` (host float64 tables of any shape) and a network output
    ``m`` of ``prediction_type``:

    =================== =================================== ===================================
    prediction type     ``x0_hat``                          ``eps_hat``
    =================== =================================== ===================================
    ``epsilon``         ``(x - sigma m) / alpha``           ``m``
    ``sample``          ``m``                               ``(x - alpha m) / sigma``
    ``v_prediction``    ``alpha x / r^2 - sigma m / r``     ``sigma x / r^2 + alpha m / r``
    ``flow_prediction`` ``(x - sigma m) / (alpha + sigma)`` ``(x + alpha m) / (alpha + sigma)``
    =================== =================================== ===================================

    with ``r^2 = alpha^2 + sigma^2``: ``v`` is defined on the variance-preserving latents
    ``x / r`` (``r = 1`` for DDPM-type schedules; the k-diffusion schedulers' ``v`` with
    ``alpha = 1``), and the flow velocity is ``eps - x0``. The derivative of k-diffusion,
    ``(x - D) / sigma`` with ``alpha = 1``, is ``eps_hat``.

    Examples
    --------
    >>> import numpy as np
    >>> [float(c[0]) for c in prediction_coefficients("sample", np.array([1.0]), np.array([2.0]))]
    [0.0, 1.0, 0.5, -0.5]
    """
    alpha, sigma = np.asarray(alpha, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    zero, one = np.zeros_like(alpha), np.ones_like(alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        if prediction_type == "epsilon":
            return 1.0 / alpha, -sigma / alpha, zero, one
        if prediction_type in ("sample", "original_sample"):
            return zero, one, 1.0 / sigma, -alpha / sigma
        if prediction_type == "v_prediction":
            r2 = norm2(alpha, sigma)
            r = np.sqrt(r2)
            return alpha / r2, -sigma / r, sigma / r2, alpha / r
        if prediction_type == "flow_prediction":
            s = alpha + sigma
            return 1.0 / s, -sigma / s, 1.0 / s, alpha / s
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")


def posterior_std(ab_t: np.ndarray, ab_prev: np.ndarray) -> np.ndarray:
    """DDPM posterior standard deviation of each step from ``abar_t`` to ``abar_prev``: the tolerance scale ``sigma_i``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
    return np.sqrt(np.clip(np.nan_to_num(var, nan=0.0), 0.0, None))


def level_posterior_std(alpha: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Tolerance scale of each step between the levels ``(alpha, sigma)`` of rows ``0..n``, shape ``(n,)``.

    The DDPM posterior standard deviation between consecutive levels of the variance-preserving
    latents ``x / r`` (``r^2 = alpha^2 + sigma^2``, ``abar = alpha^2 / r^2``), taking the noisier level
    as the start, times the scale ``r`` of the row the step lands on (DESIGN 4.1).
    """
    r2 = norm2(alpha, sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        ab = alpha**2 / r2
    noisy, clean = np.minimum(ab[:-1], ab[1:]), np.maximum(ab[:-1], ab[1:])
    return posterior_std(noisy, clean) * np.sqrt(r2[1:])


# -- the clean-image post-processing hook P --------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    """``P(x0) = clamp(x0, -clip_range, clip_range)`` (``clip_sample``)."""

    clip_range: float

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-self.clip_range, self.clip_range)


@dataclass(frozen=True, eq=False)
class Threshold:
    """``P(x0)``: the scheduler's own dynamic thresholding (``thresholding``), per sample.

    ``x0`` is ``(w, batch, C, H, W)``; the scheduler's ``_threshold_sample`` takes per-sample
    quantiles over ``(w * batch, C, H, W)``.
    """

    scheduler: Any

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        shape = x0.shape
        return self.scheduler._threshold_sample(x0.reshape(-1, *shape[2:])).reshape(shape)


def x0_processing(scheduler: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The hook ``P`` a scheduler's config asks for: :class:`Threshold`, :class:`Clip`, or ``None`` (identity)."""
    cfg = scheduler.config
    if getattr(cfg, "thresholding", False):
        return Threshold(scheduler)
    if getattr(cfg, "clip_sample", False):
        return Clip(float(cfg.clip_sample_range))
    return None


# -- the tables -----------------------------------------------------------------------------------
def _weighted(*terms: tuple[Any, np.ndarray], n: int) -> np.ndarray:
    """``sum w * c`` over ``(w, c)`` pairs, (n,); a zero weight adds nothing (not ``0 * inf``)."""
    out = np.zeros(n)
    for w, c in terms:
        w = np.broadcast_to(np.asarray(w, dtype=np.float64), (n,))
        with np.errstate(invalid="ignore", over="ignore"):
            out = out + np.where(w != 0.0, w * np.broadcast_to(c, (n,)), 0.0)
    return out


@dataclass(frozen=True, eq=False)
class Parametrisation:
    """The levels of rows ``0..n`` and the processed prediction ``g_j`` of rows ``0..n-1``.

    ``g_j = k_x[j] x_j + k_m[j] m_j + k_0[j] process(x0_x[j] x_j + x0_m[j] m_j)``, with ``m_j`` the
    network's output for row ``j``. Build it with :meth:`of`.

    Attributes
    ----------
    prediction_type : str
        What the network predicts (one of :data:`PREDICTION_TYPES`, or ``"original_sample"``).
    alpha, sigma : ndarray, shape ``(n + 1,)``
        Level of each row: ``x_j = alpha_j x0 + sigma_j eps``.
    k_x, k_m, k_0, x0_x, x0_m : ndarray, shape ``(n,)``
        Coefficients of ``g`` (host float64).
    process : callable or None
        The clean-image hook ``P`` (:class:`Clip`, :class:`Threshold`); ``None`` is the identity,
        and then ``k_0`` is zero.
    """

    prediction_type: str
    alpha: np.ndarray
    sigma: np.ndarray
    k_x: np.ndarray
    k_m: np.ndarray
    k_0: np.ndarray
    x0_x: np.ndarray
    x0_m: np.ndarray
    process: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def of(
        cls,
        prediction_type: str,
        alpha: np.ndarray,
        sigma: np.ndarray,
        *,
        x0: Any = 0.0,
        eps: Any = 0.0,
        x: Any = 0.0,
        output: Any = 0.0,
        process: Callable | None = None,
        eps_from_x0: bool = True,
    ) -> Parametrisation:
        """``g_j = x0[j] P(x0_hat_j) + eps[j] eps_j + x[j] x_j + output[j] m_j`` (weights: scalars or ``(n,)``).

        ``alpha, sigma`` are the levels of rows ``0..n``; the predictions of row ``j < n`` use
        ``alpha_j, sigma_j`` (the network is evaluated at the row's own level). ``eps_j`` is the
        network's noise prediction ``eps_hat``, or, with ``eps_from_x0`` and a ``process``, the one
        implied by the processed clean image, ``(x - alpha P(x0_hat)) / sigma`` (what DPM-Solver,
        DEIS and DDIM's ``use_clipped_model_output`` use).

        Examples
        --------
        k-diffusion rows (``alpha = 1``) of an epsilon network, with ``g`` the denoised ``D``:

        >>> import numpy as np
        >>> p = Parametrisation.of("epsilon", np.ones(3), np.array([10.0, 1.0, 0.0]), x0=1.0)
        >>> p.k_x.tolist(), p.k_m.tolist()    # D = x - sigma eps
        ([1.0, 1.0], [-10.0, -1.0])
        """
        alpha, sigma = np.asarray(alpha, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        n = alpha.shape[0] - 1
        a_row, s_row = alpha[:-1], sigma[:-1]
        x0_x, x0_m, eps_x, eps_m = prediction_coefficients(prediction_type, a_row, s_row)
        w_x0, w_eps, w_x = (np.broadcast_to(np.asarray(w, dtype=np.float64), (n,)) for w in (x0, eps, x))
        if process is not None and eps_from_x0:  # eps = (x - alpha P(x0_hat)) / sigma
            with np.errstate(divide="ignore", invalid="ignore"):
                w_x = _weighted((1.0, w_x), (w_eps, 1.0 / s_row), n=n)
                w_x0 = _weighted((1.0, w_x0), (w_eps, -a_row / s_row), n=n)
            w_eps = np.zeros(n)
        k_x = _weighted((w_x, 1.0), (w_eps, eps_x), n=n)
        k_m = _weighted((output, 1.0), (w_eps, eps_m), n=n)
        if process is None:  # P = identity: fold the x0_hat term into k_x, k_m
            k_x = _weighted((1.0, k_x), (w_x0, x0_x), n=n)
            k_m = _weighted((1.0, k_m), (w_x0, x0_m), n=n)
            w_x0 = np.zeros(n)
        return cls(prediction_type, alpha, sigma, k_x, k_m, np.array(w_x0), x0_x, x0_m, process)

    @property
    def n(self) -> int:
        return int(self.k_x.shape[0])

    def tables(self) -> dict[str, np.ndarray]:
        """The ``(n,)`` tables ``g`` reads, by name."""
        return {"k_x": self.k_x, "k_m": self.k_m, "k_0": self.k_0, "x0_x": self.x0_x, "x0_m": self.x0_m}

    @property
    def row_scale(self) -> np.ndarray | None:
        """``1 / sqrt(alpha_j^2 + sigma_j^2)`` of rows ``0..n``: the variance-preserving rows; ``None`` where all are 1."""
        r2 = norm2(self.alpha, self.sigma)
        return None if np.all(r2 == 1.0) else 1.0 / np.sqrt(r2)

    def scaled(self, c: np.ndarray) -> Parametrisation:
        """The same ``g`` as a function of the rows ``y_j = c_j x_j``, ``c`` of shape ``(n + 1,)``."""
        c = np.asarray(c, dtype=np.float64)
        return Parametrisation(
            self.prediction_type, self.alpha * c, self.sigma * c, self.k_x / c[:-1], self.k_m, self.k_0, self.x0_x / c[:-1], self.x0_m, self.process
        )

    @cached_property
    def _terms(self) -> tuple[list[int], list[int], list[int]]:
        """Prefix counts (host ints, ``n + 1`` each) of the rows where ``k_m != 1``, ``k_x != 0`` and ``k_0 != 0`` (nan
        counts): whether a window ``[lo, hi)`` needs a term of :meth:`g` is ``counts[hi] > counts[lo]``, built once per
        parametrisation instead of three NumPy reductions per call."""
        return tuple(np.concatenate([[0], np.cumsum(t)]).tolist() for t in (~(self.k_m == 1.0), self.k_x != 0.0, self.k_0 != 0.0))

    def g(self, x: torch.Tensor, m: torch.Tensor, column: Callable[[str, np.ndarray], torch.Tensor], lo: int, hi: int) -> torch.Tensor:
        """``g`` of rows ``lo <= j < hi``: ``x`` and ``m`` of shape ``(hi - lo, *event)``.

        ``column(name, table)`` returns the ``(n,)`` host table as a cached device column in ``x``'s
        dtype (trailing axes of size 1); terms with all-zero (or all-one) coefficients are skipped,
        so ``g = m`` costs nothing.
        """
        m_terms, x_terms, p_terms = self._terms
        lo, hi = min(lo, self.n), min(max(lo, hi), self.n)  # the rows a slice [lo:hi) of the tables holds
        out = m if m_terms[hi] == m_terms[lo] else column("k_m", self.k_m)[lo:hi] * m
        if x_terms[hi] > x_terms[lo]:
            out = out + column("k_x", self.k_x)[lo:hi] * x
        if self.process is not None and p_terms[hi] > p_terms[lo]:
            x0 = column("x0_x", self.x0_x)[lo:hi] * x + column("x0_m", self.x0_m)[lo:hi] * m
            out = out + column("k_0", self.k_0)[lo:hi] * self.process(x0)
        return out
