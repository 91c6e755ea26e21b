"""Scheduler mappings: one file per diffusers scheduler.

:func:`map_scheduler` turns a scheduler (after ``set_timesteps``) into a
:class:`SchedulerMapping`: the coefficient tables of the semilinear system and its ``g``.
Schedulers without an exact mapping are refused with :class:`UnsupportedSchedulerError`,
whose message says what to swap to.
"""

from __future__ import annotations

from typing import Any

import diffusers

from trisolve._validate import check_float

from .base import SchedulerMapping, UnsupportedSchedulerError, require_timesteps
from .cogvideox import map_cogvideox_ddim
from .ddim import map_ddim
from .ddpm import map_ddpm
from .deis import map_deis
from .dpmsolver import map_dpmsolver
from .dpmsolver_singlestep import map_dpmsolver_singlestep
from .euler import map_euler
from .euler_ancestral import map_euler_ancestral
from .flow_match import map_flow_match
from .heun import map_heun, map_kdpm2, map_kdpm2_ancestral
from .lms import map_lms
from .pndm import map_pndm
from .unipc import map_unipc

__all__ = ["map_scheduler", "SchedulerMapping", "UnsupportedSchedulerError", "SUPPORTED_SCHEDULERS", "REFUSED_SCHEDULERS"]

#: diffusers scheduler class name -> mapping function ``f(scheduler, eta, use_clipped_model_output, start)``.
_MAPPERS = {
    "DDIMScheduler": lambda s, eta, clipped, start: map_ddim(s, eta=eta, use_clipped_model_output=clipped, start=start),
    "DDPMScheduler": lambda s, eta, clipped, start: map_ddpm(s, start),
    "DPMSolverMultistepScheduler": lambda s, eta, clipped, start: map_dpmsolver(s, start),
    "DPMSolverSinglestepScheduler": lambda s, eta, clipped, start: map_dpmsolver_singlestep(s, start),
    "EulerDiscreteScheduler": lambda s, eta, clipped, start: map_euler(s, start),
    "EulerAncestralDiscreteScheduler": lambda s, eta, clipped, start: map_euler_ancestral(s, start),
    "UniPCMultistepScheduler": lambda s, eta, clipped, start: map_unipc(s, start),
    "PNDMScheduler": lambda s, eta, clipped, start: map_pndm(s, start),
    "LMSDiscreteScheduler": lambda s, eta, clipped, start: map_lms(s, start),
    "DEISMultistepScheduler": lambda s, eta, clipped, start: map_deis(s, start),
    "HeunDiscreteScheduler": lambda s, eta, clipped, start: map_heun(s, start),
    "KDPM2DiscreteScheduler": lambda s, eta, clipped, start: map_kdpm2(s, start),
    "KDPM2AncestralDiscreteScheduler": lambda s, eta, clipped, start: map_kdpm2_ancestral(s, start),
    "FlowMatchEulerDiscreteScheduler": lambda s, eta, clipped, start: map_flow_match(s, start),
    "CogVideoXDDIMScheduler": lambda s, eta, clipped, start: map_cogvideox_ddim(s, start),
}

SUPPORTED_SCHEDULERS = tuple(getattr(diffusers, name) for name in _MAPPERS)

_SWAP = "pipe.scheduler = {to}.from_config(pipe.scheduler.config)"

#: diffusers scheduler class name -> why it is refused and what to use instead.
REFUSED_SCHEDULERS = {
    "LCMScheduler": (
        "its step re-noises a fresh clean-image prediction with new noise at every one of its 2-8 steps (x_{i+1} = "
        "sqrt(ab) P(x0_hat) + sqrt(1 - ab) z), so each row depends on the previous one only through the network and a "
        "parallel solve needs about as many rounds as there are steps: no speed-up. Run the pipeline sequentially "
        "(pipe(...)), or use a many-step scheduler with trisolve_diffusion, e.g. " + _SWAP.format(to="DPMSolverMultistepScheduler")
    ),
    "TCDScheduler": (
        "it is a few-step distilled sampler (2-8 steps) whose step re-noises its clean-image prediction (gamma > 0); "
        "a parallel solve of 4-8 rows needs about as many rounds as steps: no speed-up. Run the pipeline sequentially "
        "(pipe(...)), or use " + _SWAP.format(to="DPMSolverMultistepScheduler")
    ),
    "DPMSolverSDEScheduler": (
        "its noise comes from a Brownian tree queried at the model's own intermediate sigmas, which cannot be pre-drawn "
        "in the sequential loop's order. Use " + _SWAP.format(to="DPMSolverMultistepScheduler") + " with algorithm_type='sde-dpmsolver++'"
    ),
    "CogVideoXDPMScheduler": (
        "its step takes the previous step's prediction and timestep from the pipeline's loop and draws fresh noise at "
        "every step; it has no mapping yet. Use " + _SWAP.format(to="CogVideoXDDIMScheduler")
    ),
}


def map_scheduler(scheduler: Any, *, eta: float = 0.0, use_clipped_model_output: bool = False, start: int | None = None) -> SchedulerMapping:
    """The semilinear form of ``scheduler``'s sampling loop (``set_timesteps`` must have run: with a
    step count, or with custom ``timesteps=`` / ``sigmas=`` where the scheduler takes them).

    ``eta`` and ``use_clipped_model_output`` are the step arguments the pipeline passes; they
    apply to :class:`~diffusers.DDIMScheduler` only (other schedulers ignore them, as in the
    pipelines). ``start`` is the first step the loop runs (img2img: ``timesteps[start:]``);
    by default the scheduler's ``begin_index`` (``set_begin_index``), else 0. Row 0 is then
    the latents entering step ``start``.

    Mapped exactly: DDIM, DDPM, DPM-Solver multistep and singlestep, Euler, Euler ancestral,
    UniPC, PNDM (``skip_prk_steps=True``), LMS, DEIS, Heun, KDPM2 and KDPM2 ancestral (one row
    per network evaluation). Refused: ``REFUSED_SCHEDULERS`` and options without an exact form.

    Raises
    ------
    UnsupportedSchedulerError
        For a scheduler or an option with no exact mapping; the message says what to swap to.

    Examples
    --------
    >>> from diffusers import EulerDiscreteScheduler
    >>> sched = EulerDiscreteScheduler(num_train_timesteps=1000)
    >>> sched.set_timesteps(10)
    >>> m = map_scheduler(sched)
    >>> m.n, m.B.shape, bool(m.a[0] == 1.0), round(float(m.input_scale[0]), 4)
    (10, (10, 1), True, 0.0064)
    """
    name = type(scheduler).__name__
    mapper = _MAPPERS.get(name)
    if mapper is not None and type(scheduler) is getattr(diffusers, name):
        require_timesteps(scheduler)
        eta = check_float("eta", eta, 0.0)  # NumPy scalars too (one validation helper)
        return mapper(scheduler, eta, use_clipped_model_output, start)
    if name in REFUSED_SCHEDULERS:
        raise UnsupportedSchedulerError(f"{name} is not supported by trisolve_diffusion: {REFUSED_SCHEDULERS[name]}.")
    raise UnsupportedSchedulerError(
        f"{name} is not supported by trisolve_diffusion; supported schedulers: "
        + ", ".join(_MAPPERS)
        + ". Swap it with e.g. "
        + _SWAP.format(to="DPMSolverMultistepScheduler")
        + " (or EulerDiscreteScheduler / UniPCMultistepScheduler)."
    )
