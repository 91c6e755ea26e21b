"""Front door for ``StableDiffusionImg2ImgPipeline`` (SD 1.x / 2.x image-to-image).

The loop starts at ``timesteps[t_start]`` (``strength``); the solve covers those steps only
(``sample_latents(..., begin_index=t_start)``).
"""

from __future__ import annotations

from typing import Any

from ..sampler import SolveOptions
from ._common import ParallelStableDiffusionOutput, solve
from .stable_diffusion import check_negative, decode_sd, do_guidance, encode_prompts, guidance_denoiser, prompt_batch_size, set_timesteps

__all__ = ["sample_img2img"]


def sample_img2img(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``StableDiffusionImg2ImgPipeline.__call__`` does, solve, post-process; returns ``(output, solution)``."""
    pipe.check_inputs(
        p["prompt"], p["strength"], None, p["negative_prompt"], p["prompt_embeds"], p["negative_prompt_embeds"], None, None, ["latents"]
    )
    check_negative(p["prompt"], p["negative_prompt"])
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    guided = do_guidance(pipe, p["guidance_scale"])
    embeds = encode_prompts(pipe, p, device, guided)
    image = pipe.image_processor.preprocess(p["image"])
    timesteps, _ = pipe.get_timesteps(set_timesteps(pipe, p, device), p["strength"], device)
    if len(timesteps) == 0:
        raise ValueError(f"strength={p['strength']} with {p['num_inference_steps']} steps leaves no denoising step; raise strength or the steps.")
    batch = prompt_batch_size(p["prompt"], p["prompt_embeds"])
    total = batch * p["num_images_per_prompt"]
    generator = p["generator"]
    latents = pipe.prepare_latents(image, timesteps[:1].repeat(total), batch, p["num_images_per_prompt"], embeds.dtype, device, generator)
    step_kwargs = pipe.prepare_extra_step_kwargs(generator, p["eta"])
    denoiser = guidance_denoiser(pipe, p, embeds, guided, total, latents.dtype, device, max_batch_size)
    begin = len(pipe.scheduler.timesteps) - len(timesteps)
    final, sol, elapsed = solve(
        pipe, denoiser, latents, options, generator=step_kwargs.get("generator"), eta=step_kwargs.get("eta", 0.0), begin_index=begin
    )
    image, has_nsfw = decode_sd(pipe, final.to(embeds.dtype), p, device, embeds.dtype, generator)
    if not p["return_dict"]:
        return (image, has_nsfw), sol
    return ParallelStableDiffusionOutput(images=image, nsfw_content_detected=has_nsfw, solution=sol, wall_time=elapsed), sol
