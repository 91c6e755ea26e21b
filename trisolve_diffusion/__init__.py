"""trisolve_diffusion: parallel sampling for diffusers pipelines, exact to the sequential loop.

``pipe(...)`` becomes ``trisolve_diffusion.sample(pipe, ...)``::

    out = trisolve_diffusion.sample(pipe, num_inference_steps=50, generator=torch.manual_seed(0))
    out.images, out.solution.num_rounds

Below any pipeline, ``sample_latents(denoiser, scheduler, latents)`` runs a scheduler's whole
loop in parallel rounds for any denoiser. Layout: ``sampler.py`` (``sample_latents``,
``SolveOptions``), ``network.py`` (UNet denoiser, classifier-free guidance),
``schedulers/`` (one file per scheduler), ``pipelines/`` (one front door per pipeline
family), ``sample.py`` (the dispatch), ``k_diffusion.py`` (k-diffusion's samplers, with its
names and signatures).
"""

from . import _quiet  # noqa: F401  (before diffusers is imported)
from .cost_model import AutoWindow
from .network import GuidedDenoiser, UNetDenoiser, classifier_free_guidance
from .pipelines import (
    ParallelCogVideoXOutput,
    ParallelFluxOutput,
    ParallelImagePipelineOutput,
    ParallelLTXOutput,
    ParallelStableDiffusion3Output,
    ParallelStableDiffusionOutput,
    ParallelStableDiffusionXLOutput,
    ParallelWanOutput,
)
from .sample import SUPPORTED_PIPELINES, sample
from .sampler import (
    ParallelSamplingError,
    SamplingInterrupted,
    SolveOptions,
    UnconvergedSampleError,
    UnconvergedSampleWarning,
    default_solver,
    sample_latents,
)
from .schedulers import SUPPORTED_SCHEDULERS, SchedulerMapping, UnsupportedSchedulerError, map_scheduler

__all__ = [
    "sample",
    "sample_latents",
    "SolveOptions",
    "AutoWindow",
    "classifier_free_guidance",
    "UNetDenoiser",
    "GuidedDenoiser",
    "default_solver",
    "map_scheduler",
    "SchedulerMapping",
    "UnsupportedSchedulerError",
    "SUPPORTED_SCHEDULERS",
    "SUPPORTED_PIPELINES",
    "ParallelImagePipelineOutput",
    "ParallelStableDiffusionOutput",
    "ParallelStableDiffusionXLOutput",
    "ParallelStableDiffusion3Output",
    "ParallelFluxOutput",
    "ParallelWanOutput",
    "ParallelLTXOutput",
    "ParallelCogVideoXOutput",
    "ParallelSamplingError",
    "SamplingInterrupted",
    "UnconvergedSampleError",
    "UnconvergedSampleWarning",
]
