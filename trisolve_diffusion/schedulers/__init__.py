"""Scheduler mappings: one file per diffusers scheduler (``ddim.py``, ``ddpm.py``, ``dpmsolver.py``).

:func:`map_scheduler` turns a scheduler (after ``set_timesteps``) into a
:class:`SchedulerMapping`: the coefficient tables of the semilinear system and its ``g``.
"""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from .base import SchedulerMapping, UnsupportedSchedulerError
from .ddim import map_ddim
from .ddpm import map_ddpm
from .dpmsolver import map_dpmsolver
from .flow_match import map_flow_match

__all__ = ["map_scheduler", "SchedulerMapping", "UnsupportedSchedulerError", "SUPPORTED_SCHEDULERS"]

SUPPORTED_SCHEDULERS = (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler)


def map_scheduler(scheduler: Any, *, eta: float = 0.0, use_clipped_model_output: bool = False) -> SchedulerMapping:
    """The semilinear form of ``scheduler``'s sampling loop (``set_timesteps`` must have run).

    ``eta`` and ``use_clipped_model_output`` are the step arguments the pipeline passes; they
    apply to :class:`~diffusers.DDIMScheduler` only (other schedulers ignore them, as in the
    pipelines).
    """
    if type(scheduler) is DDIMScheduler:
        return map_ddim(scheduler, eta=eta, use_clipped_model_output=use_clipped_model_output)
    if type(scheduler) is DDPMScheduler:
        return map_ddpm(scheduler)
    if type(scheduler) is DPMSolverMultistepScheduler:
        return map_dpmsolver(scheduler)
    if type(scheduler) is FlowMatchEulerDiscreteScheduler:
        return map_flow_match(scheduler)
    raise UnsupportedSchedulerError(
        f"{type(scheduler).__name__} is not supported by trisolve_diffusion; supported schedulers: "
        + ", ".join(s.__name__ for s in SUPPORTED_SCHEDULERS)
        + ". Swap it with e.g. pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)."
    )
