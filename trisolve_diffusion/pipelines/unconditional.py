"""Front door for ``DDPMPipeline`` and ``DDIMPipeline`` (unconditional image models)."""

from __future__ import annotations

from typing import Any

from diffusers import DDIMPipeline
from diffusers.utils.torch_utils import randn_tensor

from trisolve._validate import check_float

from ..network import unet_denoiser
from ..sampler import SolveOptions
from ._common import ParallelImagePipelineOutput, check_batch, check_loop_runs, check_steps, solve

__all__ = ["sample_unconditional"]

#: What each pipeline's own loop passes to ``scheduler.step`` besides ``(model_output, t, image)``,
#: and the schedulers to suggest instead (those whose step takes them, with ``init_noise_sigma == 1``).
_DDPM_LOOP = (("generator",), "DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler or DPMSolverSinglestepScheduler")
_DDIM_LOOP = (("eta", "use_clipped_model_output", "generator"), "DDIMScheduler (DDIMPipeline converts any scheduler to it when built)")


def sample_unconditional(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``DDPMPipeline.__call__`` / ``DDIMPipeline.__call__`` do, solve, post-process.

    Returns ``(output, solution)``; ``output`` is what ``pipe(**p)`` returns. Schedulers the
    pipeline's own loop cannot run are refused (:func:`._common.check_loop_runs`).
    """
    unet, scheduler = pipe.unet, pipe.scheduler
    steps = check_steps(p["num_inference_steps"])
    generator = p["generator"]
    batch_size = check_batch(p["batch_size"], generator)
    size = unet.config.sample_size
    shape = (batch_size, unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    latents = randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)  # as both pipelines draw them
    scheduler.set_timesteps(steps)
    ddim = isinstance(pipe, DDIMPipeline)
    check_loop_runs(pipe, scheduler, *(_DDIM_LOOP if ddim else _DDPM_LOOP))
    eta = p["eta"] if ddim else 0.0
    if ddim:
        eta = check_float("eta", eta, 0.0, high=1.0, hint="(as DDIMPipeline requires)")
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
