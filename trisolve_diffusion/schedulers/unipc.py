"""``UniPCMultistepScheduler`` (UniP predictor + UniC corrector, bh1 and bh2, orders 1-3) as a banded system.

Notation (diffusers -> symbol): ``sigmas[j]`` -> the level of row ``j``, from it ``alpha_j``,
``sigma_j`` (``_sigma_to_alpha_sigma_t``) and ``lambda_j = log alpha_j - log sigma_j``;
``m_j`` the converted model output of row ``j`` (``convert_model_output``: a data prediction,
thresholded where configured, when ``predict_x0``, else a noise prediction): ``g_j = m_j``.
The rows are the latents the network sees: row ``j >= 1`` is the *predictor* output
``x~_j``. At step ``j`` the loop first corrects it with the output at that very point,
``x_j = UniC(x_{j-1}; m_j, m_{j-1}, ..)`` (skipped at step 0 and at the steps listed in
``disable_corrector``), then predicts ``x~_{j+1} = UniP(x_j; m_j, m_{j-1}, ..)``.

Both updates go from level ``j - 1`` to ``j`` (``h = lambda_j - lambda_{j-1}``) with the same
linear part ``L x_{j-1}`` (``L = sigma_j / sigma_{j-1}`` for ``predict_x0``, else
``alpha_j / alpha_{j-1}``) and the same order ``o``::

    UniP:  x~_j = L x_{j-1} + sum_{k<o}  P_k m_{j-1-k}
    UniC:  x_j  = L x_{j-1} + sum_{k<o}  C_k m_{j-1-k} + C_t m_j

so the correction is ``x_j = x~_j + C_t m_j + sum_k (C_k - P_k) m_{j-1-k}``: no ``x_{j-1}``
left. The next row is then ``x~_{j+1} = L' x~_j + sum`` of the last ``o + 1`` outputs: lower
triangular and banded (``p = solver_order + 1``), with a coefficient on the current row's
own output. ``P_k, C_k`` follow ``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``::

    hh = -h (predict_x0) or h,   r_k = (lambda_{j-1-k} - lambda_{j-1}) / h,   B(h) = hh (bh1) or e^hh - 1 (bh2)
    R = [r^0; r^1; ..],  b_i = i! h phi_{i+1}(hh) / B(h)
    rho_p = 1/2 (o = 2) or R[:-1, :-1]^-1 b[:-1];   rho_c = 1/2 (o = 1) or R^-1 b
    x = L x_{j-1} - s (e^hh - 1) m_{j-1} - s B(h) sum_k rho_k (m_{j-1-k} - m_{j-1}) / r_k  [- s B(h) rho_c[-1] (m_j - m_{j-1})]

with ``s = alpha_j`` (``predict_x0``) or ``sigma_j``.

Flow sigmas (Wan's ``prediction_type="flow_prediction"``, ``use_flow_sigmas=True``,
``flow_shift``, optionally ``use_dynamic_shifting`` with ``mu``): the same updates with
``alpha_j = 1 - sigma_j``, ``sigma_j`` the flow sigma, and the data prediction
``m_j = x_j - sigma_j v_j`` (``predict_x0`` only, as diffusers requires); shift and dynamic
shifting only change the sigma table, read after ``set_timesteps``. The tolerance scale is
zero, as for every multistep loop (:func:`~trisolve_diffusion.schedulers.base.multistep_tolerance_scale`:
the steps are tested against ``atol`` alone).
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
    multistep_tolerance_scale,
    refuse_stepped,
    solver_order,
)
from .parametrisation import Parametrisation, x0_processing

__all__ = ["map_unipc"]


def _update(lam, alpha, sig, j, order, predict_x0, solver_type, corrector):
    """Coefficients of one UniP (or UniC) update from row ``j`` to level ``j + 1``.

    Returns ``(L, c)``: ``x = L x_j + sum_k c[k] m_{j-k}`` (``k = 0 .. order - 1``), plus, for
    the corrector, ``c[-1]`` on the output at the new point ``m_{j+1}`` (``c`` then has ``order + 1`` entries,
    the last one for ``m_{j+1}``).
    """
    h = lam[j + 1] - lam[j]
    hh = -h if predict_x0 else h
    L = sig[j + 1] / sig[j] if predict_x0 else alpha[j + 1] / alpha[j]
    s = alpha[j + 1] if predict_x0 else sig[j + 1]
    h_phi_1 = np.expm1(hh)
    B_h = hh if solver_type == "bh1" else np.expm1(hh)
    rks = np.array([(lam[j - i] - lam[j]) / h for i in range(1, order)] + [1.0])
    c = np.zeros(order + (1 if corrector else 0))
    c[0] = -s * h_phi_1
    if not np.isfinite(s * B_h):  # diffusers adds s B(h) * 0 even at order 1: nan (bh1 onto a zero final sigma)
        c[:] = np.nan
    if corrector or order >= 2:
        R, b = [], []
        h_phi_k, factorial = h_phi_1 / hh - 1.0, 1
        for i in range(1, order + 1):
            R.append(rks ** (i - 1))
            b.append(h_phi_k * factorial / B_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        R, b = np.stack(R), np.array(b)
        if corrector:
            rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
            rho_diff, rho_t = rhos[:-1], rhos[-1]
        else:
            rho_diff = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        for k, rho in enumerate(rho_diff):  # D1_k = (m_{j-1-k} - m_j) / r_k
            c[k + 1] += -s * B_h * rho / rks[k]
            c[0] += s * B_h * rho / rks[k]
        if corrector:  # D1_t = m_{j+1} - m_j
            c[-1] += -s * B_h * rho_t
            c[0] += s * B_h * rho_t
    return L, c


def map_unipc(scheduler: Any, start: int | None = None) -> SchedulerMapping:
    cfg = scheduler.config
    name = "UniPCMultistepScheduler"
    if scheduler.solver_p is not None:
        raise UnsupportedSchedulerError(
            f"{name} with solver_p={type(scheduler.solver_p).__name__} (another scheduler's step as the predictor) is not "
            "mapped; leave solver_p unset (UniP as the predictor)."
        )
    flow = bool(cfg.use_flow_sigmas)
    if flow and not cfg.predict_x0:
        raise UnsupportedSchedulerError(
            f"{name} with use_flow_sigmas=True and predict_x0=False is not mapped (diffusers' own step refuses "
            "flow_prediction without predict_x0); use predict_x0=True."
        )
    check_common(scheduler, allowed_prediction=("epsilon", "sample", "v_prediction", "flow_prediction"))
    if cfg.solver_type not in ("bh1", "bh2"):
        raise UnsupportedSchedulerError(f"{name} with solver_type={cfg.solver_type!r} is not supported; use 'bh1' or 'bh2'.")
    order_cfg = solver_order(scheduler)
    refuse_stepped(scheduler, scheduler.lower_order_nums != 0 or scheduler.last_sample is not None)
    start, ts, N = loop_timesteps(scheduler, start)
    n = ts.shape[0]
    alpha_t, sigma_t, lam = alpha_sigma_levels(scheduler, start)  # (n + 1,)
    disabled = set(cfg.disable_corrector)
    a, B = np.zeros(n), np.zeros((n, order_cfg + 1))
    prev_order = None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for j in range(n):  # step s = start + j, from row j (mirrors UniPCMultistepScheduler.step)
            s = start + j
            this_order = min(order_cfg, N - s) if cfg.lower_order_final else order_cfg
            this_order = min(this_order, min(j, order_cfg) + 1)  # warm-up
            L, P = _update(lam, alpha_t, sigma_t, j, this_order, cfg.predict_x0, cfg.solver_type, corrector=False)
            a[j] = L
            B[j, :this_order] += P
            if j > 0 and (s - 1) not in disabled:  # x_j = x~_j + C_t m_j + sum_k (C_k - P_k) m_{j-1-k}
                Lc, C = _update(lam, alpha_t, sigma_t, j - 1, prev_order, cfg.predict_x0, cfg.solver_type, corrector=True)
                _, Pc = _update(lam, alpha_t, sigma_t, j - 1, prev_order, cfg.predict_x0, cfg.solver_type, corrector=False)
                B[j, 0] += L * C[-1]
                B[j, 1 : prev_order + 1] += L * (C[:-1] - Pc)
            prev_order = this_order
    if cfg.predict_x0:  # g: the data prediction, thresholded where configured
        rows = Parametrisation.of(cfg.prediction_type, alpha_t, sigma_t, x0=1.0, process=x0_processing(scheduler))
    else:  # the noise prediction (diffusers does not threshold it)
        rows = Parametrisation.of(cfg.prediction_type, alpha_t, sigma_t, eps=1.0)
    return SchedulerMapping(
        scheduler=scheduler,
        timesteps=ts,
        a=a,
        B=B,
        rows=rows,
        sigma=multistep_tolerance_scale(n),
        if_not_finite=(
            f"predict_x0={cfg.predict_x0}, solver_order={order_cfg}, lower_order_final={cfg.lower_order_final}, "
            f"final_sigmas_type={cfg.final_sigmas_type!r}: use predict_x0=True, solver_type='bh2' and lower_order_final=True, "
            "or final_sigmas_type='sigma_min'"
        ),
    )
