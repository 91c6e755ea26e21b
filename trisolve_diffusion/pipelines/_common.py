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
from trisolve._validate import check_int

from ..sampler import SolveOptions, _sample_latents
from ..schedulers import UnsupportedSchedulerError

__all__ = [
    "ParallelImagePipelineOutput",
    "ParallelStableDiffusionOutput",
    "ParallelStableDiffusionXLOutput",
    "bind",
    "check_batch",
    "check_loop_runs",
    "check_no_cache",
    "check_steps",
    "solve",
    "step_callbacks",
]

#: What to suggest to a flow-matching pipeline's front door (:func:`check_loop_runs`).
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler (the pipeline's own)"

#: Pipeline arguments that have no meaning when all steps are solved at once.
REFUSED = {
    "callback_steps": (
        "diffusers' deprecated per-step callback cannot run inside a parallel solve; pass callback_on_step_end= "
        "(called once per step after the solve) or callback= (once per round, with a trisolve.RoundInfo)"
    ),
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
    """``num_inference_steps`` as a Python int >= 1 (NumPy integers accepted)."""
    return check_int("num_inference_steps", num_inference_steps, 1)


def check_batch(batch_size: Any, generator: Any) -> int:
    """``batch_size`` as a Python int >= 1 (NumPy integers accepted), with one generator per image if a list."""
    batch_size = check_int("batch_size", batch_size, 1)
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"You passed {len(generator)} generators for batch_size={batch_size}; pass one per image.")
    return batch_size


def check_loop_runs(pipe: Any, scheduler: Any, step_kwargs: tuple[str, ...], use: str) -> None:
    """Refuse a scheduler that the pipeline's own loop cannot run, or runs mis-scaled: ``sample()`` would have no sequential result to match.

    For the pipelines whose ``__call__`` passes fixed keywords ``step_kwargs`` to
    ``scheduler.step`` and never calls ``scale_model_input`` nor scales the initial noise by
    ``init_noise_sigma`` (``DDPMPipeline``, ``DDIMPipeline``, the flow-matching pipelines): a
    ``step`` without one of the keywords makes ``pipe(...)`` raise a ``TypeError``, and a
    scheduler with ``init_noise_sigma != 1`` (the k-diffusion schedulers: Euler, Heun, LMS,
    KDPM2) runs there on latents and inputs its maths does not expect. ``use``: what to
    suggest instead. Called after ``set_timesteps``.
    """
    name, sched = type(pipe).__name__, type(scheduler).__name__
    params = inspect.signature(scheduler.step).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing = [k for k in step_kwargs if k not in params and not takes_any]
    if missing:
        raise UnsupportedSchedulerError(
            f"{name}'s own loop calls scheduler.step(..., {'=, '.join(step_kwargs)}=), and {sched}.step takes no "
            f"{' / '.join(missing)}: pipe(...) itself raises a TypeError there, so sample() has no sequential result to match. "
            f"With {name} use {use}; to sample with {sched}, call trisolve_diffusion.sample_latents(denoiser, scheduler, latents) "
            "with latents scaled by scheduler.init_noise_sigma."
        )
    sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))  # flow matching has none: its noise is unscaled
    if sigma != 1.0:
        raise UnsupportedSchedulerError(
            f"{name} neither scales its initial noise by init_noise_sigma nor calls scale_model_input, so pipe(...) with "
            f"{sched} (init_noise_sigma={sigma:.4g}) samples with mis-scaled latents and there is no sequential result to "
            f"match; with {name} use {use}, or call trisolve_diffusion.sample_latents with your own latents."
        )


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
    final, sol = _sample_latents(denoiser, pipe.scheduler, latents, options, **kwargs)
    return final, sol, time.perf_counter() - start


def step_callbacks(pipe: Any, kwargs: dict) -> Any:
    """Take diffusers' ``callback_on_step_end`` (and its ``_tensor_inputs``) out of ``kwargs``, checked before the solve.

    Returns ``replay(solution)`` (``None`` when no callback was given): it calls the callback
    once per step, as ``pipe(...)`` does, ``callback(pipe, i, t, {"latents": latents_after_step_i})``
    with the loop's step index ``i`` and timestep ``t``, after the solve (every step is computed
    by then, so a callback cannot change a latent: returning different latents raises).
    """
    callback = kwargs.pop("callback_on_step_end", None)
    inputs = kwargs.pop("callback_on_step_end_tensor_inputs", None)
    if callback is None and inputs is None:
        return None
    name = type(pipe).__name__
    if "callback_on_step_end" not in inspect.signature(type(pipe).__call__).parameters:
        raise TypeError(f"{name}(...) takes no callback_on_step_end; pass callback= (called once per round with a trisolve.RoundInfo).")
    if callback is None:
        return None  # tensor inputs without a callback: pipe(...) ignores them too
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        inputs = callback.tensor_inputs
    elif not callable(callback):
        raise TypeError(f"callback_on_step_end must be callable as callback(pipe, step, timestep, callback_kwargs), got {type(callback).__name__}.")
    inputs = ["latents"] if inputs is None else list(inputs)
    allowed = getattr(pipe, "_callback_tensor_inputs", ["latents"])
    if any(k not in allowed for k in inputs):
        raise ValueError(f"callback_on_step_end_tensor_inputs has to be in {allowed}, but found {[k for k in inputs if k not in allowed]}.")
    if any(k != "latents" for k in inputs):
        raise TypeError(
            f"callback_on_step_end_tensor_inputs={inputs}: after a parallel solve only 'latents' (each step's) can be given to the "
            "callback; a callback that changes the conditioning mid-loop (e.g. prompt_embeds) needs the sequential pipe(...)."
        )

    def replay(solution: trisolve.Solution) -> None:
        traj, n = solution.trajectory, solution.n
        timesteps = pipe.scheduler.timesteps[len(pipe.scheduler.timesteps) - n :]  # the loop's steps (it runs to the end)
        for i in range(n):
            latents = traj[i + 1].to(pipe.dtype)
            out = callback(pipe, i, timesteps[i], {"latents": latents} if inputs else {})
            if out is None:
                continue
            if not isinstance(out, dict):
                raise TypeError(f"callback_on_step_end returned {type(out).__name__} at step {i}; return the callback_kwargs dict (or None).")
            new = out.get("latents", latents)
            if new is not latents and not (isinstance(new, torch.Tensor) and new.shape == latents.shape and torch.equal(new, latents)):
                raise ValueError(
                    f"callback_on_step_end returned changed latents at step {i}: in a parallel solve every step is computed before "
                    "the callbacks run, so they cannot change the latents; use the sequential pipe(...) for that."
                )

    return replay
