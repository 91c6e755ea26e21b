"""``DEISMultistepScheduler`` (log-rho DEIS, orders 1-3) as a banded system.

Notation (diffusers -> symbol): ``sigmas[j]`` -> the level of row ``j``, from it ``alpha_j``,
``sigma_j`` (``_sigma_to_alpha_sigma_t``), ``rho_j = sigma_j / alpha_j``,
``lambda_j = log alpha_j - log sigma_j``, ``h = lambda_{j+1} - lambda_j``; ``g_j = m_j`` the
noise prediction of ``convert_model_output`` (through the thresholded data prediction where
configured). Step ``j`` (from row ``j`` to ``j + 1``), as ``DEISMultistepScheduler.step``::

    order 1:  x_{j+1} = alpha_{j+1} / alpha_j x_j - sigma_{j+1} (e^h - 1) m_j
    order 2:  x_{j+1} = alpha_{j+1} (x_j / alpha_j + c1 m_j + c2 m_{j-1})
    order 3:  x_{j+1} = alpha_{j+1} (x_j / alpha_j + c1 m_j + c2 m_{j-1} + c3 m_{j-2})

with ``c_k`` the integrals of the Lagrange basis in ``log rho`` (``ind_fn`` in diffusers,
reproduced below); the order follows ``step`` (warm-up, ``lower_order_final`` below 15 steps).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import (
    SchedulerMapping,
    UnsupportedSchedulerError,
    alpha_sigma_levels,
    check_common,
    loop_timesteps,
    refuse_stepped,
    solver_order,
)
from .dpmsolver import dpm_rows

__all__ = ["map_deis"]


def _ind2(t, b, c):
    return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))


def _ind3(t, b, c, d):
    lt, lc, ld = np.log(t), np.log(c), np.log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((np.log(b) - lc) * (np.log(b) - ld))


def map_deis(scheduler: Any, start: int | None = None) -> SchedulerMapping:
    cfg = scheduler.config
    name = "DEISMultistepScheduler"
    if cfg.use_flow_sigmas or getattr(cfg, "use_dynamic_shifting", False):
        raise UnsupportedSchedulerError(
            f"{name} with use_flow_sigmas / use_dynamic_shifting is not mapped; use the default sigmas, or "
            "FlowMatchEulerDiscreteScheduler for a flow-matching model."
        )
    check_common(scheduler, allowed_prediction=("epsilon", "sample", "v_prediction"))
    if cfg.algorithm_type != "deis" or cfg.solver_type != "logrho":
        raise UnsupportedSchedulerError(f"{name} supports algorithm_type='deis', solver_type='logrho' only (as diffusers).")
    order_cfg = solver_order(scheduler)
    refuse_stepped(scheduler, scheduler.lower_order_nums != 0)
    start, ts, N = loop_timesteps(scheduler, start)
    n = ts.shape[0]
    al, sg, lam = alpha_sigma_levels(scheduler, start)  # (n + 1,)
    rho = sg / al
    a, B = np.zeros(n), np.zeros((n, order_cfg))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for j in range(n):  # step s = start + j, mirrors the order choice in step()
            s = start + j
            lower_final = s == N - 1 and cfg.lower_order_final and N < 15
            lower_second = s == N - 2 and cfg.lower_order_final and N < 15
            done = min(j, order_cfg)  # lower_order_nums before this step
            if order_cfg == 1 or done < 1 or lower_final:
                a[j] = al[j + 1] / al[j]
                B[j, 0] = -sg[j + 1] * (np.exp(lam[j + 1] - lam[j]) - 1.0)
            elif order_cfg == 2 or done < 2 or lower_second:
                rt, r0, r1 = rho[j + 1], rho[j], rho[j - 1]
                a[j] = al[j + 1] / al[j]
                B[j, 0] = al[j + 1] * (_ind2(rt, r0, r1) - _ind2(r0, r0, r1))
                B[j, 1] = al[j + 1] * (_ind2(rt, r1, r0) - _ind2(r0, r1, r0))
            else:
                rt, r0, r1, r2 = rho[j + 1], rho[j], rho[j - 1], rho[j - 2]
                a[j] = al[j + 1] / al[j]
                B[j, 0] = al[j + 1] * (_ind3(rt, r0, r1, r2) - _ind3(r0, r0, r1, r2))
                B[j, 1] = al[j + 1] * (_ind3(rt, r1, r2, r0) - _ind3(r0, r1, r2, r0))
                B[j, 2] = al[j + 1] * (_ind3(rt, r2, r0, r1) - _ind3(r0, r2, r0, r1))
    return SchedulerMapping(
        scheduler=scheduler,
        timesteps=ts,
        a=a,
        B=B,
        rows=dpm_rows(scheduler, al, sg, data_prediction=False),
        if_not_finite="repeated sigmas with a multistep update; use lower_order_final=True or the default sigmas",
    )
