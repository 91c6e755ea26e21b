"""The semilinear form of a scheduler's sampling loop, shared by every scheduler mapping.

A sampler with ``n`` steps is the lower-triangular system (DESIGN 5)::

    x_i = a_i x_{i-1} + sum_{q<p} B[i-1, q] g_{i-1-q}(x_{i-1-q}) + noise_scale[i-1] z_i,   i = 1..n

Row ``0`` is the initial noise, row ``n`` the sample. ``g_j`` is the *processed prediction*
of row ``j``: a function of ``x_j`` alone (the network's output at ``timesteps[j]``, made into
a clean-image or noise prediction, clipped or thresholded where the scheduler does so).
For one-step schedulers (DDIM, DDPM) ``g_j`` is the whole non-linear part of the step,
``step_{j+1}(x_j) - a_{j+1} x_j``; ``a`` is the step's derivative with the network output held
fixed. ``z_i`` is the noise the sequential loop draws at step ``i`` (pre-drawn in the same
order, so a seed gives the same image).

Every table is read from the scheduler after ``set_timesteps`` and built in float64 on the
host; ``scheduler.step`` is never called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["SchedulerMapping", "UnsupportedSchedulerError", "posterior_std"]


class UnsupportedSchedulerError(ValueError):
    """A scheduler, or one of its config options, that has no exact parallel mapping here."""


def posterior_std(ab_t: np.ndarray, ab_prev: np.ndarray) -> np.ndarray:
    """DDPM posterior standard deviation of each step: the tolerance scale ``sigma_i``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
    return np.sqrt(np.clip(np.nan_to_num(var, nan=0.0), 0.0, None))


@dataclass(frozen=True, eq=False)
class SchedulerMapping:
    """Coefficient tables of an ``n``-step sampling loop and its processed prediction ``g``.

    Attributes
    ----------
    scheduler : diffusers scheduler (after ``set_timesteps``)
    timesteps : ndarray, shape ``(n,)``
        Timestep passed to the network for row ``j`` (``j = 0..n-1``).
    a : ndarray, shape ``(n,)``
    B : ndarray, shape ``(n, p)``
    noise_scale : ndarray, shape ``(n,)``
        Coefficient of the noise drawn at step ``i``.
    noise_drawn : ndarray of bool, shape ``(n,)``
        Whether the sequential loop draws a noise tensor at step ``i`` (it consumes the generator
        even where the coefficient is zero).
    noise_in_float32 : bool
        Noise drawn in float32 (DPM-Solver SDE) rather than in the network's dtype.
    sigma : ndarray, shape ``(n,)``
        Tolerance scale of each row (posterior standard deviation of the step).
    input_scale : ndarray, shape ``(n,)``
        Factor ``scheduler.scale_model_input`` applies to row ``j`` before the network (1.0
        when it applies none; the default).
    """

    scheduler: Any
    timesteps: np.ndarray
    a: np.ndarray
    B: np.ndarray
    noise_scale: np.ndarray
    noise_drawn: np.ndarray
    noise_in_float32: bool
    sigma: np.ndarray
    input_scale: np.ndarray = None

    def __post_init__(self):
        if self.input_scale is None:
            object.__setattr__(self, "input_scale", np.ones(self.n))

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    def g(self, x: torch.Tensor, model_output: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Processed prediction of rows ``[lo, hi)`` from their latents ``x`` and the network output, ``(hi - lo, *event)``."""
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------------------
    @staticmethod
    def col(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """Per-row scalars as a tensor that broadcasts over ``(w, *event)``."""
        t = torch.as_tensor(np.ascontiguousarray(values, dtype=np.float64), device=like.device).to(like.dtype)
        return t.reshape((-1,) + (1,) * (like.ndim - 1))

    def process_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """The scheduler's clean-image post-processing: dynamic thresholding or clipping."""
        cfg = self.scheduler.config
        if getattr(cfg, "thresholding", False):
            shape = x0.shape
            flat = x0.reshape(-1, *shape[2:])  # (w * batch, C, H, W): per-sample quantiles
            return self.scheduler._threshold_sample(flat).reshape(shape)
        if getattr(cfg, "clip_sample", False):
            r = cfg.clip_sample_range
            return x0.clamp(-r, r)
        return x0


def check_common(scheduler: Any, *, allowed_prediction: tuple[str, ...]) -> None:
    cfg = scheduler.config
    name = type(scheduler).__name__
    if cfg.prediction_type not in allowed_prediction:
        raise UnsupportedSchedulerError(f"{name} with prediction_type={cfg.prediction_type!r} is not supported; use one of {allowed_prediction}.")
    vt = getattr(cfg, "variance_type", None)
    if vt in ("learned", "learned_range"):
        raise UnsupportedSchedulerError(
            f"{name} with variance_type={vt!r} takes its variance from the network, which has no fixed-variance "
            "parallel form; use 'fixed_small' (DDPM) or leave it unset."
        )


def predictions(pred_type: str, x: torch.Tensor, m: torch.Tensor, sab: torch.Tensor, s1ab: torch.Tensor):
    """``(x0_hat, eps_hat, dx0/dx, deps/dx)`` for epsilon, sample and v prediction.

    The derivatives are taken with the network output ``m`` held fixed; ``sab = sqrt(abar_t)``,
    ``s1ab = sqrt(1 - abar_t)``.
    """
    if pred_type == "epsilon":
        return (x - s1ab * m) / sab, m
    if pred_type == "sample":
        return m, (x - sab * m) / s1ab
    # v_prediction
    return sab * x - s1ab * m, sab * m + s1ab * x


def linear_part(pred_type: str, sab: np.ndarray, s1ab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(dx0/dx, deps/dx)`` of :func:`predictions` (host float64)."""
    if pred_type == "epsilon":
        return 1.0 / sab, np.zeros_like(sab)
    if pred_type == "sample":
        return np.zeros_like(sab), 1.0 / s1ab
    return sab, s1ab
