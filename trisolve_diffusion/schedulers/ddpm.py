"""``DDPMScheduler`` as a semilinear system (fixed variance types).

Notation: ``ab_t``, ``ab_prev`` (``alphas_cumprod`` at ``t`` and at the previous timestep of
the schedule, 1 after the last), ``alpha_t = ab_t / ab_prev``, ``beta_t = 1 - alpha_t``. One
step of ``DDPMScheduler.step``::

    x0_hat = P(pred_x0(x_t, m_t))
    x_prev = sqrt(ab_prev) beta_t / (1 - ab_t) * x0_hat + sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t) * x_t + s_t z

with ``s_t = sqrt(max(var_t, 1e-20))`` (``fixed_small``, ``fixed_small_log``) or ``sqrt(beta_t)``
(``fixed_large``), and no noise drawn at ``t = 0``. So ``a = c_x0 dx0/dx + c_x`` and
``g = c_x0 x0_hat + (c_x - a) x_t``.
"""

from __future__ import annotations

import numpy as np

from .base import SchedulerMapping, UnsupportedSchedulerError, check_common, posterior_std, start_index
from .parametrisation import Parametrisation, prediction_coefficients, x0_processing

__all__ = ["map_ddpm"]


def map_ddpm(scheduler, start: int | None = None) -> SchedulerMapping:
    check_common(scheduler, allowed_prediction=("epsilon", "sample", "v_prediction"))
    vt = scheduler.config.variance_type
    if vt not in ("fixed_small", "fixed_small_log", "fixed_large"):
        raise UnsupportedSchedulerError(
            f"DDPMScheduler with variance_type={vt!r} is not supported (diffusers' own step for 'fixed_large_log' "
            "takes the square root of a log-variance); use 'fixed_small', 'fixed_small_log' or 'fixed_large'."
        )
    ts = scheduler.timesteps.cpu().numpy().astype(np.int64)
    prev = np.append(ts[1:], -1)  # DDPMScheduler.previous_timestep after set_timesteps
    first = start_index(scheduler, start)  # one-step: rows from start
    ts, prev = ts[first:], prev[first:]
    n = ts.shape[0]
    abar = scheduler.alphas_cumprod.double().cpu().numpy()
    ab_t = abar[ts]
    ab_prev = np.where(prev >= 0, abar[np.clip(prev, 0, None)], 1.0)
    alpha_t = ab_t / ab_prev
    beta_t = 1 - alpha_t
    var = np.maximum((1 - ab_prev) / (1 - ab_t) * beta_t, 1e-20)
    std = np.sqrt(beta_t) if vt == "fixed_large" else np.sqrt(var)
    drawn = ts > 0
    sab, s1ab = np.sqrt(ab_t), np.sqrt(1 - ab_t)
    c_x0 = np.sqrt(ab_prev) * beta_t / (1 - ab_t)
    c_x = np.sqrt(alpha_t) * (1 - ab_prev) / (1 - ab_t)
    dx0, _, _, _ = prediction_coefficients(scheduler.config.prediction_type, sab, s1ab)
    a = c_x0 * dx0 + c_x
    alpha, sigma = np.append(sab, np.sqrt(ab_prev[-1])), np.append(s1ab, np.sqrt(1 - ab_prev[-1]))  # levels of rows 0..n
    return SchedulerMapping(
        scheduler=scheduler,
        timesteps=ts,
        a=a,
        B=np.ones((n, 1)),
        rows=Parametrisation.of(scheduler.config.prediction_type, alpha, sigma, x0=c_x0, x=c_x - a, process=x0_processing(scheduler)),
        sigma=posterior_std(ab_t, ab_prev),
        noise_scale=np.where(drawn, std, 0.0),
        noise_drawn=drawn,
    )
