"""``DPMSolverSinglestepScheduler`` (ODE: ``dpmsolver++`` and ``dpmsolver``, orders 1-3) as a banded system.

Notation as in :mod:`.dpmsolver` (``alpha_j, sigma_j, lambda_j`` of row ``j``; ``m_j = g_j`` the
converted model output: a data prediction for ``dpmsolver++``, a noise prediction for
``dpmsolver``). The singlestep solver walks ``order_list`` (e.g. ``1, 2, 3, 1, 2, 3, ..``):
an order-1 step keeps its input ``x_b`` (``self.sample``), and the order-``k`` steps after
it all restart from that kept ``x_b``::

    x_{s+1} = L_s x_b + sum_{q < k} C_{s,q} m_{s-q}      (L = sigma_t / sigma_{s-k+1} for dpmsolver++,
                                                           alpha_t / alpha_{s-k+1} for dpmsolver)

with ``C`` from ``singlestep_dpm_solver_{first,second,third}_order_update`` (``D0, D1, D2`` of
the outputs inside the group). The previous step of the group gave
``x_s = L_{s-1} x_b + sum C_{s-1,q} m_{s-1-q}``; eliminating ``x_b``::

    x_{s+1} = (L_s / L_{s-1}) x_s + sum C_{s,q} m_{s-q} - (L_s / L_{s-1}) sum C_{s-1,q} m_{s-1-q}

which is the semilinear form with a band of at most ``solver_order`` outputs, exact. The
SDE variant (``sde-dpmsolver++``) draws a noise at every step, and eliminating ``x_b`` would
put two noise draws in one row: refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import (
    SchedulerMapping,
    UnsupportedSchedulerError,
    alpha_sigma_levels,
    check_common,
    refuse_partial,
    refuse_stepped,
    solver_order,
    timesteps_of,
)
from .dpmsolver import dpm_rows

__all__ = ["map_dpmsolver_singlestep"]


def _update(algo: str, solver_type: str, order: int, lam, alpha, sig, s: int) -> tuple[float, np.ndarray]:
    """``(L, C)`` of one order-``order`` update at step ``s``: ``x_{s+1} = L x_b + sum_q C[q] m_{s-q}``."""
    t, b = s + 1, s - order + 1
    h = lam[t] - lam[b]
    pp = algo == "dpmsolver++"
    L = sig[t] / sig[b] if pp else alpha[t] / alpha[b]
    e1 = (np.exp(-h) - 1.0) if pp else (np.exp(h) - 1.0)  # phi_1 factor
    k0 = -alpha[t] * e1 if pp else -sig[t] * e1  # on D0
    # first-derivative and second-derivative weights, as in diffusers
    k1 = alpha[t] * (e1 / h + 1.0) if pp else -sig[t] * (e1 / h - 1.0)
    k2 = -alpha[t] * ((e1 + h) / h**2 - 0.5) if pp else -sig[t] * ((e1 - h) / h**2 - 0.5)
    E = np.eye(order)  # m_{s-q} as unit vectors over q
    if order == 1:
        return L, k0 * E[0]
    if order == 2:  # D0 = m1, D1 = (m0 - m1) / r0
        r0 = (lam[s] - lam[s - 1]) / h
        D0, D1 = E[1], (E[0] - E[1]) / r0
        mid = -0.5 * alpha[t] * e1 if pp else -0.5 * sig[t] * e1
        return L, k0 * D0 + (mid if solver_type == "midpoint" else k1) * D1
    # order 3: D0 = m2, D1_0 = (m1 - m2) / r1, D1_1 = (m0 - m2) / r0
    r0, r1 = (lam[s] - lam[s - 2]) / h, (lam[s - 1] - lam[s - 2]) / h
    D0 = E[2]
    D1_0, D1_1 = (E[1] - E[2]) / r1, (E[0] - E[2]) / r0
    D1 = (r0 * D1_0 - r1 * D1_1) / (r0 - r1)
    D2 = 2.0 * (D1_1 - D1_0) / (r0 - r1)
    if solver_type == "midpoint":
        return L, k0 * D0 + k1 * D1_1
    return L, k0 * D0 + k1 * D1 + k2 * D2


def map_dpmsolver_singlestep(scheduler: Any, start: int | None = None) -> SchedulerMapping:
    cfg = scheduler.config
    name = "DPMSolverSinglestepScheduler"
    algo = cfg.algorithm_type
    if algo == "sde-dpmsolver++":
        raise UnsupportedSchedulerError(
            f"{name} with algorithm_type='sde-dpmsolver++' draws noise at every step inside a group that restarts from "
            "its first sample, so one row would need two noise draws; use DPMSolverMultistepScheduler with "
            "algorithm_type='sde-dpmsolver++', or this scheduler with algorithm_type='dpmsolver++'."
        )
    if algo not in ("dpmsolver++", "dpmsolver"):
        raise UnsupportedSchedulerError(f"{name} with algorithm_type={algo!r} is not supported; use 'dpmsolver++'.")
    if cfg.use_flow_sigmas:
        raise UnsupportedSchedulerError(f"{name} with use_flow_sigmas=True is not mapped; use the default sigmas.")
    check_common(scheduler, allowed_prediction=("epsilon", "sample", "v_prediction"))
    if algo == "dpmsolver" and cfg.thresholding:
        raise UnsupportedSchedulerError(
            f"{name} with algorithm_type='dpmsolver' and thresholding=True (diffusers reads alpha_t by timestep there) is not "
            "mapped; use algorithm_type='dpmsolver++'."
        )
    p = solver_order(scheduler)
    refuse_stepped(scheduler, scheduler.sample is not None or any(m is not None for m in scheduler.model_outputs))
    refuse_partial(scheduler, start)
    ts = timesteps_of(scheduler)
    n = ts.shape[0]
    alpha_t, sigma_t, lam = alpha_sigma_levels(scheduler, 0)  # (n + 1,)
    a, B = np.zeros(n), np.zeros((n, p))
    prev = None  # (L, C, b) of the previous step of the current group
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for s in range(n):  # mirrors DPMSolverSinglestepScheduler.step
            order = min(scheduler.order_list[s], s + 1, p)  # `while model_outputs[-order] is None: order -= 1`
            L, C = _update(algo, cfg.solver_type, order, lam, alpha_t, sigma_t, s)
            B[s, :order] += C
            if order == 1:  # x_b = x_s: kept
                a[s] = L
            else:  # x_b = (x_s - sum C_prev m) / L_prev
                L_prev, C_prev = prev
                a[s] = L / L_prev
                B[s, 1 : 1 + C_prev.shape[0]] -= (L / L_prev) * C_prev
            prev = (L, C)
    return SchedulerMapping(
        scheduler=scheduler,
        timesteps=ts,
        a=a,
        B=B,
        rows=dpm_rows(scheduler, alpha_t, sigma_t, data_prediction=algo == "dpmsolver++"),
        if_not_finite="use lower_order_final=True or final_sigmas_type='sigma_min'",
    )
