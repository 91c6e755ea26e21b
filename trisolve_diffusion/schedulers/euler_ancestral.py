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

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import UnsupportedSchedulerError, check_common, start_index, timesteps_of, ve_posterior_std
from .euler import KDerivativeMapping, derivative_tables, k_sigmas

__all__ = ["EulerAncestralMapping", "map_euler_ancestral"]


@dataclass(frozen=True, eq=False)
class EulerAncestralMapping(KDerivativeMapping):
    pass


def map_euler_ancestral(scheduler: Any, start: int | None = None) -> EulerAncestralMapping:
    cfg = scheduler.config
    if cfg.prediction_type == "sample":
        raise UnsupportedSchedulerError(
            "EulerAncestralDiscreteScheduler with prediction_type='sample' is not implemented in diffusers either; "
            "use 'epsilon' or 'v_prediction', or EulerDiscreteScheduler."
        )
    check_common(scheduler, allowed_prediction=("epsilon", "v_prediction"))
    start = start_index(scheduler, start)
    sig = k_sigmas(scheduler, start)  # (n + 1,)
    n = sig.shape[0] - 1
    ts = timesteps_of(scheduler)[start:]
    s_from, s_to = sig[:-1], sig[1:]
    sigma_up = np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
    sigma_down = np.sqrt(s_to**2 - sigma_up**2)
    if not (np.all(np.isfinite(sigma_up)) and np.all(np.isfinite(sigma_down))):
        raise UnsupportedSchedulerError(f"EulerAncestralDiscreteScheduler's sigma table does not decrease: {sig}.")
    c_x, c_m = derivative_tables(cfg.prediction_type, s_from)
    return EulerAncestralMapping(
        scheduler=scheduler,
        timesteps=ts,
        input_scale=1.0 / np.sqrt(s_from**2 + 1.0),
        a=np.ones(n),
        B=(sigma_down - s_from)[:, None],
        noise_scale=sigma_up,
        noise_drawn=np.ones(n, dtype=bool),
        noise_in_float32=False,
        sigma=ve_posterior_std(sig),
        row_scale=1.0 / np.sqrt(sig**2 + 1.0),
        prediction_type=cfg.prediction_type,
        c_x=c_x,
        c_m=c_m,
    )
