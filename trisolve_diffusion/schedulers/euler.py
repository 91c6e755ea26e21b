"""``EulerDiscreteScheduler`` as a semilinear system (every sigma schedule; epsilon, v and sample prediction).

Notation (diffusers -> symbol): ``sigmas[j]`` -> ``sigma_j``, the k-diffusion noise level of
row ``j`` (latents ``x_j = x0 + sigma_j eps``, ``sigma_n`` the final level, 0 or ``sigma_min``);
``pred_original_sample`` -> ``D_j``. The network sees ``x_j / sqrt(sigma_j^2 + 1)``
(``scale_model_input``: ``input_scale``). One step of ``EulerDiscreteScheduler.step`` with
the default ``s_churn = 0`` (what every pipeline passes)::

    d_j     = (x_j - D_j) / sigma_j                                  (the derivative: g_j)
    x_{j+1} = x_j + (sigma_{j+1} - sigma_j) d_j

so ``a = 1``, ``B = sigma_{j+1} - sigma_j`` and ``g_j = d_j``, which is, with ``m`` the network
output,

    epsilon:       d = m
    v_prediction:  d = sigma / (sigma^2 + 1) x + m / sqrt(sigma^2 + 1)
    sample:        d = (x - m) / sigma

The sigma schedule (default interpolation, ``log_linear``, Karras, exponential, beta),
``timestep_spacing``, ``timestep_type`` and ``final_sigmas_type`` only change the tables,
which are read after ``set_timesteps``. ``step`` rounds the latents to float32 before it
updates them; the mapping computes in the trajectory's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import SchedulerMapping, UnsupportedSchedulerError, check_common, start_index, timesteps_of, ve_posterior_std

__all__ = ["EulerMapping", "map_euler", "k_sigmas", "KDerivativeMapping"]


def k_sigmas(scheduler: Any, start: int) -> np.ndarray:
    """The sigmas the loop reads from step ``start`` on, float64, ``(n + 1,)`` for ``n`` remaining timesteps.

    (``interpolation_type='log_linear'`` builds one sigma more than the loop reads.)
    """
    num = len(scheduler.timesteps)
    sig = scheduler.sigmas.detach().double().cpu().numpy()[start : num + 1]
    if sig.shape[0] < 2 or not np.all(np.isfinite(sig)) or np.any(sig[:-1] <= 0):
        raise UnsupportedSchedulerError(
            f"{type(scheduler).__name__} has a sigma table this mapping cannot use (it needs finite sigmas > 0 before the "
            f"last): {sig}; use the scheduler's own sigma schedules (set_timesteps(num_inference_steps))."
        )
    return sig


@dataclass(frozen=True, eq=False)
class KDerivativeMapping(SchedulerMapping):
    """Base of the k-diffusion mappings whose ``g_j`` is the derivative ``d_j = (x_j - D_j) / sigma_j``."""

    prediction_type: str = "epsilon"
    c_x: np.ndarray = None  # coefficient of x_j in d_j    (n,)
    c_m: np.ndarray = None  # coefficient of m_j in d_j    (n,)

    def g(self, x, model_output, lo, hi):
        if self.prediction_type == "epsilon":
            return model_output
        return self.table("c_x", x)[lo:hi] * x + self.table("c_m", x)[lo:hi] * model_output


def derivative_tables(prediction_type: str, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(c_x, c_m)`` with ``d = c_x x + c_m m`` for each row's ``sigma`` ``(n,)``."""
    if prediction_type == "epsilon":
        return np.zeros_like(sigma), np.ones_like(sigma)
    if prediction_type == "v_prediction":
        return sigma / (sigma**2 + 1.0), 1.0 / np.sqrt(sigma**2 + 1.0)
    return 1.0 / sigma, -1.0 / sigma  # sample / original_sample


@dataclass(frozen=True, eq=False)
class EulerMapping(KDerivativeMapping):
    pass


def map_euler(scheduler: Any, start: int | None = None) -> EulerMapping:
    cfg = scheduler.config
    check_common(scheduler, allowed_prediction=("epsilon", "v_prediction", "sample", "original_sample"))
    start = start_index(scheduler, start)
    sig = k_sigmas(scheduler, start)  # (n + 1,)
    n = sig.shape[0] - 1
    ts = timesteps_of(scheduler)[start:]
    c_x, c_m = derivative_tables(cfg.prediction_type, sig[:-1])
    return EulerMapping(
        scheduler=scheduler,
        timesteps=ts,
        input_scale=1.0 / np.sqrt(sig[:-1] ** 2 + 1.0),
        a=np.ones(n),
        B=(sig[1:] - sig[:-1])[:, None],
        noise_scale=np.zeros(n),
        noise_drawn=np.zeros(n, dtype=bool),
        noise_in_float32=False,
        sigma=ve_posterior_std(sig),
        row_scale=1.0 / np.sqrt(sig**2 + 1.0),
        prediction_type=cfg.prediction_type,
        c_x=c_x,
        c_m=c_m,
    )
