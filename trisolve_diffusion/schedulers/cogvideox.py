"""``CogVideoXDDIMScheduler`` (CogVideoX-2B's scheduler) as a semilinear system.

Its ``step`` is deterministic DDIM written with the SNR-shifted ``alphas_cumprod``
(``abar_t``, ``abar_prev`` of ``prev = t - T // n``, ``final_alpha_cumprod`` below 0)::

    x0_hat = x0(x_t, m_t)         (epsilon, sample or v prediction)
    x_prev = a_t x_t + b_t x0_hat,   a_t = sqrt((1 - abar_prev) / (1 - abar_t)),   b_t = sqrt(abar_prev) - sqrt(abar_t) a_t

with no clipping or thresholding (its config's ``clip_sample`` is unused) and no noise (its
``eta`` is unused). ``x0_hat = d x_t + k m_t`` is linear in the latents, so
``a = a_t + b_t d``, ``B = b_t k``, ``g_j = m_j``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import SchedulerMapping, check_common, posterior_std
from .ddim import ddim_levels
from .parametrisation import Parametrisation, prediction_coefficients

__all__ = ["map_cogvideox_ddim"]


def map_cogvideox_ddim(scheduler: Any, start: int | None = None) -> SchedulerMapping:
    """The semilinear form of a ``CogVideoXDDIMScheduler`` loop (after ``set_timesteps``), from step ``start``."""
    check_common(scheduler, allowed_prediction=("epsilon", "sample", "v_prediction"))
    cfg = scheduler.config
    ts, ab_t, ab_prev, alpha, sigma = ddim_levels(scheduler, start)
    sab, s1ab = alpha[:-1], sigma[:-1]
    a_t = np.sqrt((1 - ab_prev) / (1 - ab_t))
    b_t = np.sqrt(ab_prev) - sab * a_t
    d, k, _, _ = prediction_coefficients(cfg.prediction_type, sab, s1ab)  # x0_hat = d x + k m (inf at a zero-SNR epsilon step)
    with np.errstate(invalid="ignore"):
        a, B = a_t + b_t * d, (b_t * k)[:, None]
    return SchedulerMapping(
        scheduler=scheduler,
        timesteps=ts,
        a=a,
        B=B,
        rows=Parametrisation.of(cfg.prediction_type, alpha, sigma, output=1.0),  # g: the raw output
        sigma=posterior_std(ab_t, ab_prev),
        if_not_finite=f"a zero-SNR step with prediction_type={cfg.prediction_type!r}: use prediction_type='v_prediction'",
    )
