"""``PNDMScheduler`` with ``skip_prk_steps=True`` (PLMS, Stable Diffusion 1.x's default) as a banded system.

Notation: ``T = num_train_timesteps``, ``N = num_inference_steps``, ``delta = T // N``,
``ab(t) = alphas_cumprod[t]`` (``final_alpha_cumprod`` for ``t < 0``, from
``set_alpha_to_one``), ``e_j`` the network output of row ``j``. With ``skip_prk_steps`` the
loop has ``n = N + 1`` timesteps ``t_{N-1}, t_{N-2}, t_{N-2}, t_{N-3}, .., t_0`` (the second
one repeated): ``n`` network evaluations, one row each. ``_get_prev_sample`` (formula (9) of
the PNDM paper) is linear in its sample and its combined output ``E``::

    prev(x, t, t', E) = A x + K E,   k = (ab(t') - ab(t)) / (ab(t) sqrt(1 - ab(t')) + sqrt(ab(t) (1 - ab(t)) ab(t')))
    epsilon:       A = sqrt(ab(t') / ab(t)),                          K = -k
    v_prediction:  A = sqrt(ab(t') / ab(t)) - k sqrt(1 - ab(t)),       K = -k sqrt(ab(t))

Step ``c`` of ``step_plms`` (``counter = c``), with ``ets`` the outputs it keeps (every row but 1):

    c = 0:   x_1 = prev(x_0, t_0, t_0 - delta, e_0)                  (an Euler step to t_1 = t_0 - delta)
    c = 1:   x_2 = prev(x_0, t_1 + delta, t_1, (e_0 + e_1) / 2)      (restarts from x_0: a Heun step)
    c >= 2:  x_{c+1} = prev(x_c, t_c, t_c - delta, E_c),  E_c the Adams-Bashforth combination of the
             last 2, 3 or 4 entries of ets: (3, -1) / 2, (23, -16, 5) / 12, (55, -59, 37, -9) / 24

Step 1 reads ``x_0``, not ``x_1``; with ``x_0 = (x_1 - K_0 e_0) / A_0`` it becomes
``x_2 = (A_1 / A_0) x_1 + (K_1 / 2 - A_1 K_0 / A_0) e_0 + K_1 / 2 e_1``. Because ``ets`` skips
row 1, step 4 reaches back to row 0: the band is ``p = 5`` wide.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import SchedulerMapping, UnsupportedSchedulerError, check_common, multistep_tolerance_scale, refuse_stepped, start_index, timesteps_of
from .parametrisation import Parametrisation

__all__ = ["map_pndm"]

_ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def map_pndm(scheduler: Any, start: int | None = None) -> SchedulerMapping:
    cfg = scheduler.config
    if not cfg.skip_prk_steps:
        raise UnsupportedSchedulerError(
            "PNDMScheduler with skip_prk_steps=False (the Runge-Kutta warm-up, four network calls per step at the "
            "first three steps, each reading the previous one) is not mapped; set skip_prk_steps=True (PLMS, "
            "Stable Diffusion's default): pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)."
        )
    check_common(scheduler, allowed_prediction=("epsilon", "v_prediction"))
    refuse_stepped(scheduler, scheduler.counter != 0 or len(scheduler.ets) != 0)
    ts = timesteps_of(scheduler).astype(np.int64)[start_index(scheduler, start) :]  # img2img: the counter starts at 0 there
    n = ts.shape[0]
    abar = scheduler.alphas_cumprod.detach().double().cpu().numpy()
    final = float(scheduler.final_alpha_cumprod)
    delta = cfg.num_train_timesteps // scheduler.num_inference_steps
    v_pred = cfg.prediction_type == "v_prediction"
    p = min(5, n)
    a, B = np.zeros(n), np.zeros((n, p))
    ab_to = np.zeros(n)
    A_prev = K_prev = None
    ets: list[int] = []
    for c in range(n):
        t, t_prev = int(ts[c]), int(ts[c]) - delta
        if c == 1:
            t, t_prev = t + delta, t
        else:
            ets = ets[-3:] + [c]
        ab = abar[t]
        ab_p = abar[t_prev] if t_prev >= 0 else final
        k = (ab_p - ab) / (ab * np.sqrt(1 - ab_p) + np.sqrt(ab * (1 - ab) * ab_p))
        A = np.sqrt(ab_p / ab) - (k * np.sqrt(1 - ab) if v_pred else 0.0)
        K = -k * np.sqrt(ab) if v_pred else -k
        ab_to[c] = ab_p
        if c == 1:  # x_2 from x_0, rewritten in x_1 (see the module notes)
            a[c] = A / A_prev
            B[c, 0] = K / 2
            B[c, 1] = K / 2 - A * K_prev / A_prev
        else:
            a[c] = A
            for coef, row in zip(_ADAMS_BASHFORTH[len(ets)], reversed(ets)):
                B[c, c - row] += K * coef
        if c == 0:
            A_prev, K_prev = A, K
    ab_rows = np.append(abar[ts], ab_to[-1])  # level of rows 0..n (row 1 sits at the repeated timestep)
    return SchedulerMapping(
        scheduler=scheduler,
        timesteps=ts,
        a=a,
        B=B,
        rows=Parametrisation.of(cfg.prediction_type, np.sqrt(ab_rows), np.sqrt(1 - ab_rows), output=1.0),  # g: the raw output
        sigma=multistep_tolerance_scale(n),
        if_not_finite=f"the timesteps {ts.tolist()} give no finite PLMS step; use the scheduler's own spacing",
    )
