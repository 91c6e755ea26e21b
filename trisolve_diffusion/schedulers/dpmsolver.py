"""``DPMSolverMultistepScheduler`` as a banded semilinear system (orders 1-3, ODE and SDE).

Notation (diffusers -> symbol): ``sigmas[j]`` -> the noise level of row ``j``; from it
``alpha_j, sigma_j`` (``_sigma_to_alpha_sigma_t``) and ``lambda_j = log alpha_j - log sigma_j``.
Step ``i`` goes from row ``j = i - 1`` (level ``s0``) to level ``t``, with
``h = lambda_t - lambda_s0``, ``r0 = h_0 / h``, ``r1 = h_1 / h`` and model outputs
``m0, m1, m2`` of rows ``j, j - 1, j - 2`` converted by ``convert_model_output``
(``g``: a data prediction for ``dpmsolver++``, a noise prediction for ``dpmsolver``). Every
update of the scheduler has the form::

    x_i = a_i x_{i-1} + c0 D0 + c1 D1 + c2 D2 + noise_scale_i z_i
    D0 = m0,  D1 = (m0 - m1) / r0                                   (order 2)
    D1 = (1 + u) D1_0 - u D1_1,  D2 = v (D1_0 - D1_1)                  (order 3)
    D1_0 = (m0 - m1) / r0,  D1_1 = (m1 - m2) / r1,  u = r0 / (r0 + r1),  v = 1 / (r0 + r1)

which is linear in ``x_{i-1}`` and in ``g`` of the last ``p = solver_order`` rows: a band.
The order used at each step follows ``DPMSolverMultistepScheduler.step`` (lower-order first
steps, ``lower_order_final``, ``euler_at_final``, ``final_sigmas_type``).
"""

from __future__ import annotations

import numpy as np

from .base import SchedulerMapping, UnsupportedSchedulerError, alpha_sigma_levels, check_common, multistep_tolerance_scale, solver_order, start_index
from .parametrisation import Parametrisation, x0_processing

__all__ = ["map_dpmsolver", "dpm_rows"]


def _coefficients(algo: str, solver_type: str, order: int, alpha_t, sigma_t, alpha_s, sigma_s, h):
    """``(a, c0, c1, c2, noise)`` of one update, as in the scheduler's update functions."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        em, ep = np.exp(-h), np.exp(h)
        e2m = np.exp(-2.0 * h)
        if algo == "dpmsolver++":
            a, c0, noise = sigma_t / sigma_s, -alpha_t * (em - 1.0), 0.0
            c1 = -0.5 * alpha_t * (em - 1.0) if (order == 2 and solver_type == "midpoint") else alpha_t * ((em - 1.0) / h + 1.0)
            c2 = -alpha_t * ((em - 1.0 + h) / h**2 - 0.5)
        elif algo == "dpmsolver":
            a, c0, noise = alpha_t / alpha_s, -sigma_t * (ep - 1.0), 0.0
            c1 = -0.5 * sigma_t * (ep - 1.0) if (order == 2 and solver_type == "midpoint") else -sigma_t * ((ep - 1.0) / h - 1.0)
            c2 = -sigma_t * ((ep - 1.0 - h) / h**2 - 0.5)
        elif algo == "sde-dpmsolver++":
            a, c0 = sigma_t / sigma_s * em, alpha_t * (1.0 - e2m)
            noise = sigma_t * np.sqrt(1.0 - e2m)
            c1 = 0.5 * alpha_t * (1.0 - e2m) if (order == 2 and solver_type == "midpoint") else alpha_t * ((1.0 - e2m) / (-2.0 * h) + 1.0)
            c2 = alpha_t * ((1.0 - e2m - 2.0 * h) / (2.0 * h) ** 2 - 0.5)
        else:  # sde-dpmsolver
            a, c0 = alpha_t / alpha_s, -2.0 * sigma_t * (ep - 1.0)
            noise = sigma_t * np.sqrt(np.exp(2.0 * h) - 1.0)
            c1 = -sigma_t * (ep - 1.0) if solver_type == "midpoint" else -2.0 * sigma_t * ((ep - 1.0) / h - 1.0)
            c2 = np.nan  # diffusers has no third-order SDE-DPM-Solver
    if order == 1:
        c1 = c2 = 0.0
    elif order == 2:
        c2 = 0.0
    return a, c0, c1, c2, noise


def dpm_rows(scheduler, alpha: np.ndarray, sigma: np.ndarray, *, data_prediction: bool) -> Parametrisation:
    """``g``: the data prediction (``dpmsolver++``), else the noise prediction, through the thresholded data prediction where configured."""
    w = 1.0 if data_prediction else 0.0
    return Parametrisation.of(scheduler.config.prediction_type, alpha, sigma, x0=w, eps=1.0 - w, process=x0_processing(scheduler))


def map_dpmsolver(scheduler, start: int | None = None) -> SchedulerMapping:
    check_common(scheduler, allowed_prediction=("epsilon", "sample", "v_prediction"))
    cfg = scheduler.config
    if cfg.use_flow_sigmas:
        raise UnsupportedSchedulerError("DPMSolverMultistepScheduler with use_flow_sigmas=True is not supported; use the default sigmas.")
    algo, order_cfg = cfg.algorithm_type, solver_order(scheduler)
    if algo not in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"):
        raise UnsupportedSchedulerError(f"DPMSolverMultistepScheduler with algorithm_type={algo!r} is not supported.")
    if algo == "sde-dpmsolver" and order_cfg == 3:
        raise UnsupportedSchedulerError("sde-dpmsolver has no third-order update in diffusers; use solver_order <= 2.")
    first = start_index(scheduler, start)  # img2img: the warm-up restarts there, lower_order_final counts from the end
    ts_all = scheduler.timesteps.cpu().numpy().astype(np.int64)
    N = ts_all.shape[0]
    ts = ts_all[first:]
    n = ts.shape[0]
    alpha_t, sigma_t, lam = alpha_sigma_levels(scheduler, first)  # (n + 1,)
    a = np.zeros(n)
    B = np.zeros((n, order_cfg))
    noise = np.zeros(n)
    for j in range(n):  # step i = j + 1, from row j; mirrors the order choice in step()
        s = first + j  # the scheduler's step_index
        lower_final = s == N - 1 and (cfg.euler_at_final or (cfg.lower_order_final and N < 15) or cfg.final_sigmas_type == "zero")
        lower_second = s == N - 2 and cfg.lower_order_final and N < 15
        done = min(j, order_cfg)  # lower_order_nums before this step
        if order_cfg == 1 or done < 1 or lower_final:
            order = 1
        elif order_cfg == 2 or done < 2 or lower_second:
            order = 2
        else:
            order = 3
        h = lam[j + 1] - lam[j]
        aj, c0, c1, c2, nz = _coefficients(algo, cfg.solver_type, order, alpha_t[j + 1], sigma_t[j + 1], alpha_t[j], sigma_t[j], h)
        a[j], noise[j] = aj, nz
        if order == 1:
            B[j, 0] = c0
        elif order == 2:
            r0 = (lam[j] - lam[j - 1]) / h
            B[j, 0], B[j, 1] = c0 + c1 / r0, -c1 / r0
        else:
            r0, r1 = (lam[j] - lam[j - 1]) / h, (lam[j - 1] - lam[j - 2]) / h
            u, v = r0 / (r0 + r1), 1.0 / (r0 + r1)
            P, Q = c1 * (1 + u) + c2 * v, c1 * u + c2 * v
            B[j, 0], B[j, 1], B[j, 2] = c0 + P / r0, -P / r0 - Q / r1, Q / r1
    return SchedulerMapping(
        scheduler=scheduler,
        timesteps=ts,
        a=a,
        B=B,
        rows=dpm_rows(scheduler, alpha_t, sigma_t, data_prediction=algo in ("dpmsolver++", "sde-dpmsolver++")),
        sigma=multistep_tolerance_scale(n),
        noise_scale=noise,
        noise_drawn=np.full(n, algo.startswith("sde")),
        noise_in_float32=True,
        if_not_finite=f"algorithm_type={algo!r}, final_sigmas_type={cfg.final_sigmas_type!r}: use final_sigmas_type='sigma_min' or 'dpmsolver++'",
    )
