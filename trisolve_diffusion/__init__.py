"""trisolve_diffusion: parallel sampling for diffusers pipelines, exact to the sequential loop.

``pipe(...)`` becomes ``trisolve_diffusion.sample(pipe, ...)``::

    out = trisolve_diffusion.sample(pipe, num_inference_steps=50, generator=torch.manual_seed(0))
    out.images, out.solution.num_rounds

Scheduler mappings live in ``trisolve_diffusion/schedulers/`` (one file per scheduler), the
batched network call in ``network.py``, the front door in ``sample.py``.
"""

from . import _quiet  # noqa: F401  (before diffusers is imported)
from .sample import ParallelImagePipelineOutput, ParallelSamplingError, ParallelStableDiffusionOutput, default_solver, sample
from .schedulers import SUPPORTED_SCHEDULERS, SchedulerMapping, UnsupportedSchedulerError, map_scheduler

__all__ = [
    "sample",
    "default_solver",
    "map_scheduler",
    "SchedulerMapping",
    "UnsupportedSchedulerError",
    "SUPPORTED_SCHEDULERS",
    "ParallelImagePipelineOutput",
    "ParallelStableDiffusionOutput",
    "ParallelSamplingError",
]
