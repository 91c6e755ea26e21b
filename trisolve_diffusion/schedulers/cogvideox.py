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

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import SchedulerMapping, UnsupportedSchedulerError, check_common, linear_part, posterior_std, start_index

__all__ = ["CogVideoXDDIMMapping", "map_cogvideox_ddim"]


@dataclass(frozen=True, eq=False)
class CogVideoXDDIMMapping(SchedulerMapping):
    """``g_j = m_j``: the network's output, unchanged (guidance is applied in the denoiser)."""

    def g(self, x, model_output, lo, hi):
        return model_output


def map_cogvideox_ddim(scheduler: Any, start: int | None = None) -> CogVideoXDDIMMapping:
    """The semilinear form of a ``CogVideoXDDIMScheduler`` loop (after ``set_timesteps``), from step ``start``."""
    check_common(scheduler, allowed_prediction=("epsilon", "sample", "v_prediction"))
    cfg = scheduler.config
    ts = scheduler.timesteps.cpu().numpy().astype(np.int64)[start_index(scheduler, start) :]
    n = ts.shape[0]
    abar = scheduler.alphas_cumprod.double().cpu().numpy()
    prev = ts - cfg.num_train_timesteps // scheduler.num_inference_steps
    ab_t = abar[ts]
    ab_prev = np.where(prev >= 0, abar[np.clip(prev, 0, None)], float(scheduler.final_alpha_cumprod))
    sab, s1ab = np.sqrt(ab_t), np.sqrt(1 - ab_t)
    a_t = np.sqrt((1 - ab_prev) / (1 - ab_t))
    b_t = np.sqrt(ab_prev) - sab * a_t
    with np.errstate(divide="ignore", invalid="ignore"):  # epsilon at a zero-SNR step: as diffusers' own step
        d, _ = linear_part(cfg.prediction_type, sab, s1ab)  # x0_hat = d x + k m
        k = {"epsilon": lambda: -s1ab / sab, "sample": lambda: np.ones(n), "v_prediction": lambda: -s1ab}[cfg.prediction_type]()
    a, B = a_t + b_t * d, (b_t * k)[:, None]
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(B))):
        raise UnsupportedSchedulerError(
            f"CogVideoXDDIMScheduler(prediction_type={cfg.prediction_type!r}) has non-finite step coefficients for this schedule "
            "(a zero-SNR step with epsilon prediction; diffusers' own step returns nan or inf here); use prediction_type='v_prediction'."
        )
    return CogVideoXDDIMMapping(
        scheduler=scheduler,
        timesteps=ts,
        input_scale=np.ones(n),
        a=a,
        B=B,
        noise_scale=np.zeros(n),
        noise_drawn=np.zeros(n, dtype=bool),
        noise_in_float32=False,
        sigma=posterior_std(ab_t, ab_prev),
    )
