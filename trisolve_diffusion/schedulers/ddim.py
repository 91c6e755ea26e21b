"""``DDIMScheduler`` as a semilinear system (any ``eta``; epsilon, sample and v prediction).

Notation (diffusers name -> symbol): ``alpha_prod_t`` -> ``ab_t``, ``alpha_prod_t_prev`` ->
``ab_prev``, ``std_dev_t`` -> ``s_t = eta * sqrt(var_t)``. One step::

    x0_hat = P(pred_x0(x_t, m_t))                     (P: clip / threshold, or identity)
    eps    = pred_eps(x_t, m_t)  or  (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t)   (use_clipped_model_output)
    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s_t^2) eps + s_t z

so ``a = sqrt(ab_prev) dx0/dx + sqrt(1 - ab_prev - s_t^2) deps/dx`` and ``g = x_prev - s_t z - a x_t``.
The previous timestep is ``t - num_train_timesteps // num_inference_steps`` as in
``DDIMScheduler.step``; before 0 it is ``final_alpha_cumprod`` (``set_alpha_to_one``).
"""

from __future__ import annotations

import numpy as np

from .base import SchedulerMapping, check_common, posterior_std, start_index
from .parametrisation import Parametrisation, prediction_coefficients, x0_processing

__all__ = ["map_ddim", "ddim_levels"]


def ddim_levels(scheduler, start: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(timesteps, ab_t, ab_prev, alpha, sigma)`` of a DDIM-type loop from step ``start`` (DDIM, CogVideoX DDIM).

    ``ab_t``, ``ab_prev`` ``(n,)``: ``alphas_cumprod`` at each timestep and at ``t - T // N``
    (``final_alpha_cumprod`` below 0); ``alpha, sigma`` ``(n + 1,)``: the rows' levels
    ``sqrt(ab)``, ``sqrt(1 - ab)``, the last one after the final step.
    """
    ts = scheduler.timesteps.cpu().numpy().astype(np.int64)[start_index(scheduler, start) :]  # one-step: rows from start
    abar = scheduler.alphas_cumprod.double().cpu().numpy()
    prev = ts - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    ab_t = abar[ts]
    ab_prev = np.where(prev >= 0, abar[np.clip(prev, 0, None)], float(scheduler.final_alpha_cumprod))
    alpha, sigma = np.sqrt(np.append(ab_t, ab_prev[-1])), np.sqrt(1 - np.append(ab_t, ab_prev[-1]))
    return ts, ab_t, ab_prev, alpha, sigma


def map_ddim(scheduler, *, eta: float = 0.0, use_clipped_model_output: bool = False, start: int | None = None) -> SchedulerMapping:
    check_common(scheduler, allowed_prediction=("epsilon", "sample", "v_prediction"))
    if not (isinstance(eta, (int, float)) and np.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}.")
    cfg = scheduler.config
    ts, ab_t, ab_prev, alpha, sigma = ddim_levels(scheduler, start)
    n = ts.shape[0]
    var = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
    std = eta * np.sqrt(var)
    sab, s1ab = alpha[:-1], sigma[:-1]
    c_x0 = np.sqrt(ab_prev)
    with np.errstate(invalid="ignore"):
        c_eps = np.sqrt(1 - ab_prev - std**2)
    dx0, _, deps, _ = prediction_coefficients(cfg.prediction_type, sab, s1ab)
    a = c_x0 * dx0 + c_eps * deps
    B = np.ones((n, 1))
    process = x0_processing(scheduler)
    # a step with abar_prev == abar_t (the last one with leading spacing, final timestep 0 and
    # set_alpha_to_one=False) is the identity when x0_hat is not clipped or thresholded:
    # x_prev = sqrt(ab) x0_hat + sqrt(1 - ab) eps = x_t, and s_t = 0. Written exactly (a = 1,
    # no g term), the solver resolves it without a network call or a round of its own.
    identity = (ab_prev == ab_t) & (process is None)
    a[identity], B[identity] = 1.0, 0.0
    return SchedulerMapping(
        scheduler=scheduler,
        timesteps=ts,
        a=a,
        B=B,
        rows=Parametrisation.of(
            cfg.prediction_type, alpha, sigma, x0=c_x0, eps=c_eps, x=-a, process=process, eps_from_x0=bool(use_clipped_model_output)
        ),
        sigma=posterior_std(ab_t, ab_prev),
        noise_scale=std,
        noise_drawn=np.full(n, eta > 0),
        if_not_finite=f"1 - abar_prev - s_t^2 < 0 with eta={eta}: use a smaller eta",
    )
