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

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import SchedulerMapping, UnsupportedSchedulerError, check_common, posterior_std, start_index, timesteps_of

__all__ = ["DEISMapping", "map_deis"]


def _ind2(t, b, c):
    return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))


def _ind3(t, b, c, d):
    lt, lc, ld = np.log(t), np.log(c), np.log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((np.log(b) - lc) * (np.log(b) - ld))


@dataclass(frozen=True, eq=False)
class DEISMapping(SchedulerMapping):
    prediction_type: str = "epsilon"
    alpha: np.ndarray = None  # alpha_j of row j   (n,)
    sig: np.ndarray = None  # sigma_j of row j

    def g(self, x, model_output, lo, hi):
        alpha, sig = self.table("alpha", x)[lo:hi], self.table("sig", x)[lo:hi]
        m, pred = model_output, self.prediction_type
        x0 = {"epsilon": lambda: (x - sig * m) / alpha, "sample": lambda: m, "v_prediction": lambda: alpha * x - sig * m}[pred]()
        x0 = self.process_x0(x0)
        return (x - alpha * x0) / sig


def map_deis(scheduler: Any, start: int | None = None) -> DEISMapping:
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
    order_cfg = cfg.solver_order
    if order_cfg not in (1, 2, 3):
        raise UnsupportedSchedulerError(f"{name} with solver_order={order_cfg} is not mapped; use 1, 2 or 3.")
    if scheduler.lower_order_nums != 0:
        raise UnsupportedSchedulerError(f"{name} has already been stepped; call set_timesteps again before mapping it.")
    start = start_index(scheduler, start)
    ts_all = timesteps_of(scheduler)
    N = ts_all.shape[0]
    ts = ts_all[start:]
    n = ts.shape[0]
    sig_table = scheduler.sigmas.detach().double().cpu()[start:]
    al, sg = (v.numpy() for v in scheduler._sigma_to_alpha_sigma_t(sig_table))  # (n + 1,)
    rho = sg / al
    lam = np.log(al) - np.log(sg)
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
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(B))):
        raise UnsupportedSchedulerError(
            f"{name} gives non-finite step coefficients for this schedule (repeated sigmas with a multistep update; "
            "diffusers' own step returns nan here); use lower_order_final=True or the default sigmas."
        )
    ab = al**2
    return DEISMapping(
        scheduler=scheduler,
        timesteps=ts,
        input_scale=np.ones(n),
        a=a,
        B=B,
        noise_scale=np.zeros(n),
        noise_drawn=np.zeros(n, dtype=bool),
        noise_in_float32=False,
        sigma=posterior_std(ab[:-1], ab[1:]),
        prediction_type=cfg.prediction_type,
        alpha=al[:-1].copy(),
        sig=sg[:-1].copy(),
    )
