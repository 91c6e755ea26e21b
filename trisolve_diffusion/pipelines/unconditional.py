"""Front door for ``DDPMPipeline`` and ``DDIMPipeline`` (unconditional image models)."""

from __future__ import annotations

from typing import Any

from diffusers import DDIMPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..network import unet_denoiser
from ..sampler import SolveOptions
from ..schedulers import UnsupportedSchedulerError
from ._common import ParallelImagePipelineOutput, check_steps, solve

__all__ = ["sample_unconditional"]


def sample_unconditional(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``DDPMPipeline.__call__`` / ``DDIMPipeline.__call__`` do, solve, post-process.

    Returns ``(output, solution)``; ``output`` is what ``pipe(**p)`` returns.
    """
    unet, scheduler = pipe.unet, pipe.scheduler
    steps = check_steps(p["num_inference_steps"])
    batch_size, generator = p["batch_size"], p["generator"]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"You passed {len(generator)} generators for batch_size={batch_size}; pass one per image.")
    size = unet.config.sample_size
    shape = (batch_size, unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    latents = randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)  # as both pipelines draw them
    scheduler.set_timesteps(steps)
    if float(scheduler.init_noise_sigma) != 1.0:
        raise UnsupportedSchedulerError(
            f"{type(pipe).__name__} neither scales its initial noise by init_noise_sigma nor calls scale_model_input, so "
            f"pipe(...) with {type(scheduler).__name__} (init_noise_sigma={float(scheduler.init_noise_sigma):.4g}) samples "
            "with mis-scaled latents and there is no sequential result to match; use DDIMScheduler, DDPMScheduler, "
            "DPMSolverMultistepScheduler or UniPCMultistepScheduler, or call trisolve_diffusion.sample_latents with your own latents."
        )
    ddim = isinstance(pipe, DDIMPipeline)
    eta = p["eta"] if ddim else 0.0
    if ddim and not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be between 0 and 1 (as DDIMPipeline requires), got {eta!r}.")
    clipped = bool(p["use_clipped_model_output"] or False) if ddim else False
    denoiser = unet_denoiser(unet, max_batch_size=max_batch_size)
    final, sol, elapsed = solve(pipe, denoiser, latents, options, pixel_space=True, generator=generator, eta=eta, use_clipped_model_output=clipped)
    image = (final / 2 + 0.5).clamp(0, 1)
    output_type = p["output_type"]
    if output_type != "pt":
        image = image.cpu().permute(0, 2, 3, 1).numpy()
        if output_type == "pil":
            image = pipe.numpy_to_pil(image)
    pipe.maybe_free_model_hooks()
    if not p["return_dict"]:
        return (image,), sol
    return ParallelImagePipelineOutput(images=image, solution=sol, wall_time=elapsed), sol
