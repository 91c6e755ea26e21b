"""Front door for :class:`~trisolve_diffusion.models.digits_flow.DigitsFlowPipeline` (the bundled flow model)."""

from __future__ import annotations

from typing import Any

from ..network import unet_denoiser
from ..sampler import SolveOptions
from ._common import FLOW_SCHEDULER, ParallelImagePipelineOutput, check_batch, check_loop_runs, check_steps, solve

__all__ = ["sample_digits_flow"]


def sample_digits_flow(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare with ``DigitsFlowPipeline``'s own methods (latents, timesteps), solve, post-process.

    Returns ``(output, solution)``; ``output`` is what ``pipe(**p)`` returns.
    """
    generator = p["generator"]
    batch_size = check_batch(p["batch_size"], generator)
    steps = check_steps(p["num_inference_steps"]) if p["sigmas"] is None else p["num_inference_steps"]
    latents = pipe.prepare_latents(batch_size, generator, p["latents"])  # (B, C, H, W)
    pipe.set_timesteps(steps, latents, sigmas=p["sigmas"], mu=p["mu"])
    check_loop_runs(pipe, pipe.scheduler, ("generator",), FLOW_SCHEDULER)
    denoiser = unet_denoiser(pipe.unet, max_batch_size=max_batch_size)
    final, sol, elapsed = solve(pipe, denoiser, latents, options, pixel_space=True, generator=generator)
    image = pipe.postprocess(final, p["output_type"])
    pipe.maybe_free_model_hooks()
    if not p["return_dict"]:
        return (image,), sol
    return ParallelImagePipelineOutput(images=image, solution=sol, wall_time=elapsed), sol
