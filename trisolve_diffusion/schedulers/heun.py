"""Two network evaluations per step (``HeunDiscreteScheduler``, ``KDPM2DiscreteScheduler``,
``KDPM2AncestralDiscreteScheduler``) as a semilinear system with one row per evaluation.

Notation as in :mod:`.euler`: ``d_r = (x_r - D_r) / sigma_r`` is the derivative at row ``r``
(``g_r``), ``sigma_r`` the level the network sees at that evaluation (and the one the step
divides by). The pipeline
loop runs over ``len(scheduler.timesteps)`` evaluations, alternating a first stage (the
scheduler keeps ``x_r``) and a second stage (it restarts from the kept ``x_{r-1}``)::

    first stage, row r:    x_{r+1} = x_r + h1_r d_r                       (Euler to the midpoint)
    second stage, row r:   x_{r+1} = x_{r-1} + h2_r d_r + w_r d_{r-1} + s_r z

    Heun:          h1 = sigma_{next} - sigma,   h2 = w = h1 / 2                  (trapezoid)
    KDPM2:         h1 = sigma_interpol - sigma, h2 = sigma_next - sigma, w = 0   (midpoint)
    KDPM2 ancestral: h1 as KDPM2, h2 = sigma_down - sigma, w = 0, s = sigma_up (noise drawn here)

The second stage reads ``x_{r-1}``, not ``x_r``; with ``x_{r-1} = x_r - h1_{r-1} d_{r-1}`` it is
``x_{r+1} = x_r + h2_r d_r + (w_r - h1_{r-1}) d_{r-1} + s_r z``: a band of width 2, exact.
Each row has its own input scale ``1 / sqrt(sigma_in^2 + 1)`` and its own timestep, both read
from the scheduler's interleaved tables (``sigmas``, ``sigmas_interpol``, ``timesteps``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import SchedulerMapping, UnsupportedSchedulerError, check_common, refuse_partial, refuse_stepped, timesteps_of
from .euler import k_diffusion_mapping
from .parametrisation import level_posterior_std

__all__ = ["map_heun", "map_kdpm2", "map_kdpm2_ancestral"]


def _tables(scheduler: Any) -> dict[str, np.ndarray]:
    out = {}
    for name in ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down"):
        t = getattr(scheduler, name, None)
        if t is not None:
            out[name] = t.detach().double().cpu().numpy()
    return out


def _map_two_stage(scheduler: Any, kind: str, start: int | None) -> SchedulerMapping:
    cfg = scheduler.config
    name = type(scheduler).__name__
    if kind == "heun":
        check_common(scheduler, allowed_prediction=("epsilon", "v_prediction", "sample"))
    else:
        if cfg.prediction_type == "sample":
            raise UnsupportedSchedulerError(
                f"{name} with prediction_type='sample' is not implemented in diffusers either; use 'epsilon' or 'v_prediction'."
            )
        check_common(scheduler, allowed_prediction=("epsilon", "v_prediction"))
    refuse_partial(scheduler, start)
    refuse_stepped(scheduler, not scheduler.state_in_first_order)  # set_timesteps resets it (Heun keeps a stale `sample`, harmlessly)
    tab = _tables(scheduler)
    sig = tab["sigmas"]
    ts = timesteps_of(scheduler)
    n = ts.shape[0]
    B = np.zeros((n, 2))
    sig_in = np.zeros(n)  # the level the network sees at row r, and the one the step divides by
    noise, drawn = np.zeros(n), np.zeros(n, dtype=bool)
    lvl = np.zeros(n + 1)  # noise level of each row's latents (tolerance scale)
    lvl[0] = sig[0]
    h1_prev = 0.0
    for r in range(n):  # r = the scheduler's step_index; the stage alternates, starting first
        first = r % 2 == 0
        if kind == "heun":
            s, s_next = (sig[r], sig[r + 1]) if first else (sig[r - 1], sig[r])
            sig_in[r] = sig[r]
            h1 = s_next - s
            h2 = w = h1 / 2
            lvl[r + 1] = s_next
        elif kind == "kdpm2":
            si = tab["sigmas_interpol"]
            s, s_i, s_next = (sig[r], si[r + 1], sig[r + 1]) if first else (sig[r - 1], si[r], sig[r])
            sig_in[r] = sig[r] if first else si[r]
            h1, h2, w = s_i - s, s_next - s, 0.0
            lvl[r + 1] = s_i if first else s_next
        else:  # kdpm2 ancestral
            si, su, sd = tab["sigmas_interpol"], tab["sigmas_up"], tab["sigmas_down"]
            s, s_i, s_up, s_down = (sig[r], si[r], su[r], sd[r - 1]) if first else (sig[r - 1], si[r - 1], su[r - 1], sd[r - 1])
            sig_in[r] = sig[r] if first else si[r - 1]
            h1, h2, w = s_i - s, s_down - s, 0.0
            lvl[r + 1] = s_i if first else s_down
            if not first:
                noise[r], drawn[r] = s_up, True
        if first:
            B[r, 0] = h1
            h1_prev = h1
        else:
            B[r, 0], B[r, 1] = h2, w - h1_prev
    if not np.all(sig_in > 0):
        raise UnsupportedSchedulerError(
            f"{name} has a sigma table this mapping cannot use (a zero level at an evaluated row, where diffusers' own step "
            "divides by zero); use the scheduler's own sigma schedules, or EulerDiscreteScheduler."
        )
    return k_diffusion_mapping(
        scheduler,
        np.append(sig_in, lvl[-1]),  # the level of each row
        B,
        timesteps=ts,
        sigma=level_posterior_std(np.ones(n + 1), np.abs(lvl)),
        noise_scale=noise,
        noise_drawn=drawn,
        if_not_finite="use the scheduler's own sigma schedules, or EulerDiscreteScheduler",
    )


def map_heun(scheduler: Any, start: int | None = None) -> SchedulerMapping:
    return _map_two_stage(scheduler, "heun", start)


def map_kdpm2(scheduler: Any, start: int | None = None) -> SchedulerMapping:
    return _map_two_stage(scheduler, "kdpm2", start)


def map_kdpm2_ancestral(scheduler: Any, start: int | None = None) -> SchedulerMapping:
    return _map_two_stage(scheduler, "kdpm2_ancestral", start)
