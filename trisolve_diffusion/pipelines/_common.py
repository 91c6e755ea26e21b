"""What every front door shares: argument binding and refusals, solve options, outputs."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput

import trisolve

from ..sampler import SolveOptions, sample_latents

__all__ = [
    "ParallelImagePipelineOutput",
    "ParallelStableDiffusionOutput",
    "ParallelStableDiffusionXLOutput",
    "bind",
    "check_no_cache",
    "check_steps",
    "solve",
]

#: Pipeline arguments that have no meaning when all steps are solved at once.
REFUSED = {
    "callback_on_step_end": (
        "a per-step callback cannot run inside a parallel solve; pass callback= (called once per round with a trisolve.RoundInfo) instead"
    ),
    "callback_on_step_end_tensor_inputs": "per-step callbacks are not supported in a parallel solve",
    "callback_steps": "per-step callbacks are not supported in a parallel solve",
    "ip_adapter_image": "IP-Adapter inputs are not supported by trisolve_diffusion",
    "ip_adapter_image_embeds": "IP-Adapter inputs are not supported by trisolve_diffusion",
    "sigmas": "custom sigmas are supported for the flow-matching pipelines only; use num_inference_steps or timesteps",
    "denoising_end": "denoising_end (an SDXL ensemble of experts) is not supported; sample the whole schedule",
    "denoising_start": "denoising_start (an SDXL ensemble of experts) is not supported; use strength=",
}


@dataclass
class ParallelImagePipelineOutput(ImagePipelineOutput):
    """``ImagePipelineOutput`` with the solve attached: ``solution`` (rounds, evaluations, residuals,
    trajectory) and ``wall_time`` (seconds in the solve)."""

    solution: trisolve.Solution | None = None
    wall_time: float | None = None


@dataclass
class ParallelStableDiffusionOutput(StableDiffusionPipelineOutput):
    """``StableDiffusionPipelineOutput`` with ``solution`` and ``wall_time``."""

    solution: trisolve.Solution | None = None
    wall_time: float | None = None


@dataclass
class ParallelStableDiffusionXLOutput(StableDiffusionXLPipelineOutput):
    """``StableDiffusionXLPipelineOutput`` with ``solution`` and ``wall_time``."""

    solution: trisolve.Solution | None = None
    wall_time: float | None = None


def bind(pipe: Any, args: tuple, kwargs: dict, allow: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The pipeline's ``__call__`` arguments with its defaults; refuses what a parallel solve cannot honour.

    ``allow``: names of :data:`REFUSED` that the pipeline's front door does honour (``sigmas``
    for the flow-matching pipelines).
    """
    for name, why in REFUSED.items():
        if name not in allow and kwargs.get(name) is not None:
            raise TypeError(f"sample() does not take {name}: {why}.")
    sig = inspect.signature(type(pipe).__call__)
    try:
        bound = sig.bind(pipe, *args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{type(pipe).__name__}: {exc}") from None
    bound.apply_defaults()
    params = dict(bound.arguments)
    params.pop("self", None)
    extra = params.pop("kwargs", {}) or {}
    if extra:
        raise TypeError(f"{type(pipe).__name__}.__call__ got unexpected arguments {sorted(extra)}.")
    return params


def check_no_cache(*models: Any) -> None:
    """Refuse a model with a step cache enabled (FirstBlockCache, FasterCache): it reuses activations between sequential steps."""
    for m in models:
        if m is not None and getattr(m, "is_cache_enabled", False):
            raise ValueError(
                f"the {type(m).__name__} has a cache enabled (e.g. FirstBlockCache/FasterCache), which reuses activations between "
                "sequential steps and has no meaning in a parallel solve; call .disable_cache() on it first."
            )


def check_steps(num_inference_steps: Any) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}.")
    return num_inference_steps


def solve(
    pipe: Any, denoiser, latents: torch.Tensor, options: SolveOptions, *, pixel_space: bool = False, **kwargs: Any
) -> tuple[torch.Tensor, trisolve.Solution, float]:
    """``sample_latents`` with the pipeline's scheduler and progress bar; returns ``(latents, solution, seconds)``.

    ``pixel_space``: the latents are the image in ``[-1, 1]`` (:meth:`SolveOptions.resolve_final_row_atol`).
    """
    if options.progress is True:
        options = options.replace(progress=pipe.progress_bar)
    options = options.resolve_final_row_atol(pixel_space=pixel_space)  # the front door knows its output space
    start = time.perf_counter()
    final, sol = sample_latents(denoiser, pipe.scheduler, latents, options=options, **kwargs)
    return final, sol, time.perf_counter() - start
