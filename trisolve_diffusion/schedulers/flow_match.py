"""``FlowMatchEulerDiscreteScheduler`` (SD3, Flux, the bundled digits flow model) as a semilinear system.

Notation (diffusers -> symbol): ``sigmas[j]`` -> ``sigma_j``, the flow time of row ``j``
(latents ``x_j = (1 - sigma_j) x0 + sigma_j z``; ``sigma_n`` is 0, or 1 with ``invert_sigmas``);
``model_output`` -> ``v_j``, the velocity the network predicts at ``timesteps[j]``. One step of
``FlowMatchEulerDiscreteScheduler.step`` (the pipelines pass no ``s_churn`` or per-token
timesteps)::

    deterministic:          x_{j+1} = x_j + (sigma_{j+1} - sigma_j) v_j
                            a = 1,              B = sigma_{j+1} - sigma_j,               g_j = v_j
    stochastic_sampling:    x0_hat = x_j - sigma_j v_j,  x_{j+1} = (1 - sigma_{j+1}) x0_hat + sigma_{j+1} z_{j+1}
                            a = 1 - sigma_{j+1}, B = -(1 - sigma_{j+1}) sigma_j,         g_j = v_j,
                            noise_scale = sigma_{j+1}

``shift``, dynamic shifting (``mu``, exponential or linear ``time_shift_type``),
``shift_terminal``, Karras / exponential / beta sigmas, ``invert_sigmas`` and custom
``sigmas`` / ``timesteps`` passed to ``set_timesteps`` only change the ``sigma`` and timestep
tables, which are read after ``set_timesteps``. The network sees ``x_j`` unscaled
(``input_scale = 1``) at ``timesteps[j]`` (``1000 sigma_j`` unless custom timesteps were set).
``step`` computes in float32 and draws the stochastic noise in float32
(``noise_in_float32``), from the generator the pipeline passes, except on diffusers 0.35,
whose ``step`` ignores it and draws with ``torch.randn_like`` from torch's global generator
(``global_noise``, found in the installed ``step``'s source). A loop that starts part-way (``begin_index``, as SD3 img2img sets it)
maps the rows from ``begin_index`` on.

Tolerance scale ``sigma`` (DESIGN 4.1): the DDPM posterior standard deviation between the two
levels of a step, in flow units. A flow latent is a variance-preserving one times
``sqrt((1 - s)^2 + s^2)`` with ``abar = (1 - s)^2 / ((1 - s)^2 + s^2)``, so
``sigma_i = posterior_std(abar_i, abar_{i+1}) sqrt((1 - s_{i+1})^2 + s_{i+1}^2)``, taking the
noisier level as the start when the schedule runs upwards (``invert_sigmas``).

Default solver (``FlowMatchMapping.default_history_size = 1``): ``TriangularAnderson`` with one
difference pair, the newest secant, instead of the four the DDPM loops use. On the bundled
digits flow model at 28 Euler steps, batch 1, default finish, it finished no later than four
pairs on each of seeds 0-39 and earlier on 15 (seeds 0-9: 7.5 [7, 10] -> 7 [6, 9] rounds;
seeds 10-39: median 7 either way, mean 7.6 -> 7.2); at 20 steps 7 [7, 11] -> 7 [6, 9]; at 50
steps even (8 [7, 11] -> 8 [7, 10]). The pairs it drops are the older ones, taken while the
iterate was far from the trajectory (round 1 evaluates every row at the initial noise), where
the velocity's secants do not describe the map near the solution: on seeds 6 and 9, whose tail
rows kept an error of 0.1-0.2 for several rounds with four pairs, dropping only the pairs of
the first three rounds recovered most of the gain. One pair costs rounds on the digits DDPM
(DDIM-25 median 6 -> 7, DDPM-100 14 -> 19), so the history is set per loop, not globally.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .base import SchedulerMapping, UnsupportedSchedulerError, posterior_std, start_index, timesteps_of

__all__ = ["FlowMatchMapping", "map_flow_match", "flow_posterior_std"]


def flow_posterior_std(s: np.ndarray) -> np.ndarray:
    """Tolerance scale of each step for flow sigmas ``s`` ``(n + 1,)``, shape ``(n,)`` (see module docstring)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        norm2 = (1.0 - s) ** 2 + s**2
        ab = (1.0 - s) ** 2 / norm2
    hi, lo = np.minimum(ab[:-1], ab[1:]), np.maximum(ab[:-1], ab[1:])  # noisier level first
    return posterior_std(hi, lo) * np.sqrt(norm2[1:])


@dataclass(frozen=True, eq=False)
class FlowMatchMapping(SchedulerMapping):
    """``g_j = v_j``: the network's velocity, unchanged (guidance is applied in the denoiser).

    ``default_history_size = 1``: the default ``TriangularAnderson`` keeps one difference pair
    for flow-matching loops (see the module docstring).
    """

    default_history_size: ClassVar[int] = 1

    flow_sigmas: np.ndarray = None  # sigma_j of rows 0..n    (n + 1,)
    global_noise: bool = False  # step() ignores its generator (diffusers 0.35: torch.randn_like)

    def g(self, x, model_output, lo, hi):
        return model_output

    def step_generator(self, generator):
        return None if self.global_noise else generator


def _step_ignores_generator(scheduler: Any) -> bool:
    """Whether the installed ``step`` draws its stochastic-sampling noise with ``torch.randn_like`` (diffusers 0.35),
    ignoring the generator it is passed, rather than with ``randn_tensor(generator=...)`` (later releases)."""
    try:
        source = inspect.getsource(type(scheduler).step)
    except (OSError, TypeError):  # no source: assume the current behaviour
        return False
    return "torch.randn_like(sample)" in source


def map_flow_match(scheduler: Any, start: int | None = None) -> FlowMatchMapping:
    """The semilinear form of a ``FlowMatchEulerDiscreteScheduler`` loop (after ``set_timesteps``), from step ``start``."""
    name = type(scheduler).__name__
    start = start_index(scheduler, start)
    ts_all = timesteps_of(scheduler)  # as the pipeline passes them, (n,)
    sig = scheduler.sigmas.detach().double().cpu().numpy()[start:]  # (n + 1,)
    ts = ts_all[start:]
    n = ts.shape[0]
    if n < 1 or sig.shape[0] != n + 1:
        raise UnsupportedSchedulerError(f"{name} has {ts.shape[0]} timesteps for {sig.shape[0]} sigmas from index {start}; call set_timesteps first.")
    if not np.all(np.isfinite(sig)) or np.any(sig < 0) or np.any(sig > 1):
        raise UnsupportedSchedulerError(f"{name} has a sigma table outside [0, 1] or non-finite, which no flow loop uses: {sig}.")
    if scheduler.begin_index is None and np.count_nonzero(ts_all == ts_all[0]) > 1:
        # step() then starts at the *second* occurrence (index_for_timestep), skipping rows
        raise UnsupportedSchedulerError(
            f"{name} has its first timestep {ts_all[0]} repeated; its step() would then start at the second occurrence. "
            "Pass distinct sigmas/timesteps to set_timesteps."
        )
    s, s_next = sig[:-1], sig[1:]
    if scheduler.config.stochastic_sampling:
        a, B, noise_scale = 1.0 - s_next, -(1.0 - s_next) * s, s_next
        noise_drawn = np.ones(n, dtype=bool)
    else:
        a, B, noise_scale = np.ones(n), s_next - s, np.zeros(n)
        noise_drawn = np.zeros(n, dtype=bool)
    return FlowMatchMapping(
        scheduler=scheduler,
        timesteps=ts,
        input_scale=np.ones(n),
        a=a,
        B=B[:, None],
        noise_scale=noise_scale,
        noise_drawn=noise_drawn,
        noise_in_float32=True,
        sigma=flow_posterior_std(sig),
        flow_sigmas=sig,
        global_noise=bool(scheduler.config.stochastic_sampling) and _step_ignores_generator(scheduler),
    )
