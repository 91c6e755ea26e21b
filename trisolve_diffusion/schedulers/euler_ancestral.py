"""``EulerAncestralDiscreteScheduler`` as a semilinear system (epsilon and v prediction).

Notation as in :mod:`.euler`. One step of ``EulerAncestralDiscreteScheduler.step``::

    sigma_up   = sqrt(sigma_{j+1}^2 (sigma_j^2 - sigma_{j+1}^2) / sigma_j^2)
    sigma_down = sqrt(sigma_{j+1}^2 - sigma_up^2)
    x_{j+1}    = x_j + (sigma_down - sigma_j) d_j + sigma_up z_{j+1}

so ``a = 1``, ``B = sigma_down - sigma_j``, ``g_j = d_j`` and ``noise_scale = sigma_up``. The
loop draws ``z`` at every step (the last one too, where ``sigma_up = 0``) with
``randn_tensor(model_output.shape, dtype=model_output.dtype, generator=generator)``: the
noise is pre-drawn in that order, in the network's dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import SchedulerMapping, UnsupportedSchedulerError, check_common, start_index, timesteps_of
from .euler import k_diffusion_mapping, k_sigmas

__all__ = ["map_euler_ancestral"]


def map_euler_ancestral(scheduler: Any, start: int | None = None) -> SchedulerMapping:
    if scheduler.config.prediction_type == "sample":
        raise UnsupportedSchedulerError(
            "EulerAncestralDiscreteScheduler with prediction_type='sample' is not implemented in diffusers either; "
            "use 'epsilon' or 'v_prediction', or EulerDiscreteScheduler."
        )
    check_common(scheduler, allowed_prediction=("epsilon", "v_prediction"))
    start = start_index(scheduler, start)
    sig = k_sigmas(scheduler, start)  # (n + 1,)
    s_from, s_to = sig[:-1], sig[1:]
    with np.errstate(invalid="ignore"):
        sigma_up = np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
        sigma_down = np.sqrt(s_to**2 - sigma_up**2)
    return k_diffusion_mapping(
        scheduler,
        sig,
        (sigma_down - s_from)[:, None],
        timesteps=timesteps_of(scheduler)[start:],
        noise_scale=sigma_up,
        noise_drawn=np.ones(s_from.shape[0], dtype=bool),
        if_not_finite="its sigma table does not decrease; use the scheduler's own sigma schedules",
    )
