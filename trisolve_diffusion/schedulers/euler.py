"""``EulerDiscreteScheduler`` as a semilinear system (every sigma schedule; epsilon, v and sample prediction).

Notation (diffusers -> symbol): ``sigmas[j]`` -> ``sigma_j``, the k-diffusion noise level of
row ``j`` (latents ``x_j = x0 + sigma_j eps``, ``sigma_n`` the final level, 0 or ``sigma_min``);
``pred_original_sample`` -> ``D_j``. The network sees ``x_j / sqrt(sigma_j^2 + 1)``
(``scale_model_input``: ``input_scale``). One step of ``EulerDiscreteScheduler.step`` with
the default ``s_churn = 0`` (what every pipeline passes)::

    d_j     = (x_j - D_j) / sigma_j                                  (the derivative: g_j)
    x_{j+1} = x_j + (sigma_{j+1} - sigma_j) d_j

so ``a = 1``, ``B = sigma_{j+1} - sigma_j`` and ``g_j = d_j``: on the levels ``alpha = 1``,
``sigma_j`` the derivative is the noise prediction ``eps_hat`` of the one parametrisation
(:func:`~.parametrisation.prediction_coefficients`), which is, with ``m`` the network output,

    epsilon:       d = m
    v_prediction:  d = sigma / (sigma^2 + 1) x + m / sqrt(sigma^2 + 1)
    sample:        d = (x - m) / sigma

:func:`k_diffusion_mapping` builds these rows for every k-diffusion scheduler (Euler, Euler
ancestral, LMS, Heun, KDPM2).

The sigma schedule (default interpolation, ``log_linear``, Karras, exponential, beta),
``timestep_spacing``, ``timestep_type`` and ``final_sigmas_type`` only change the tables,
which are read after ``set_timesteps``. ``step`` rounds the latents to float32 before it
updates them; the mapping computes in the trajectory's dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import SchedulerMapping, UnsupportedSchedulerError, check_common, start_index, timesteps_of
from .parametrisation import Parametrisation, x0_processing

__all__ = ["map_euler", "k_sigmas", "k_diffusion_mapping"]


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


def k_diffusion_mapping(scheduler: Any, levels: np.ndarray, B: np.ndarray, *, timesteps: np.ndarray, **fields: Any) -> SchedulerMapping:
    """A loop on k-diffusion rows ``x_j = x0 + sigma_j eps`` (``levels``: ``sigma_j`` of rows ``0..n``) with ``a = 1``.

    ``g_j`` is the derivative ``d_j = (x_j - P(D_j)) / sigma_j`` (the noise prediction), the network
    sees ``x_j / sqrt(sigma_j^2 + 1)``; ``fields`` are the other :class:`SchedulerMapping` fields.
    """
    ones = np.ones_like(levels)
    rows = Parametrisation.of(scheduler.config.prediction_type, ones, levels, eps=1.0, process=x0_processing(scheduler))
    return SchedulerMapping(
        scheduler=scheduler, timesteps=timesteps, a=ones[1:], B=B, rows=rows, input_scale=1.0 / np.sqrt(levels[:-1] ** 2 + 1.0), **fields
    )


def map_euler(scheduler: Any, start: int | None = None) -> SchedulerMapping:
    check_common(scheduler, allowed_prediction=("epsilon", "v_prediction", "sample", "original_sample"))
    start = start_index(scheduler, start)
    sig = k_sigmas(scheduler, start)  # (n + 1,)
    return k_diffusion_mapping(scheduler, sig, (sig[1:] - sig[:-1])[:, None], timesteps=timesteps_of(scheduler)[start:])
