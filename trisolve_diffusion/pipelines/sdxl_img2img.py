"""Front door for ``StableDiffusionXLImg2ImgPipeline`` (SDXL image-to-image, ``strength``, aesthetic-score conditioning)."""

from __future__ import annotations

from typing import Any

from ..sampler import SolveOptions
from ._common import ParallelStableDiffusionXLOutput, solve
from .sdxl import decode_xl, encode_prompts_xl, projection_dim, xl_denoiser
from .stable_diffusion import check_negative, do_guidance, prompt_batch_size, set_timesteps

__all__ = ["sample_sdxl_img2img"]


def sample_sdxl_img2img(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``StableDiffusionXLImg2ImgPipeline.__call__`` does, solve, post-process; returns ``(output, solution)``."""
    pipe.check_inputs(
        p["prompt"], p["prompt_2"], p["strength"], p["num_inference_steps"], None, p["negative_prompt"], p["negative_prompt_2"],
        p["prompt_embeds"], p["negative_prompt_embeds"], None, None, ["latents"],
    )  # fmt: skip
    check_negative(p["prompt"], p["negative_prompt"])
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    guided = do_guidance(pipe, p["guidance_scale"])
    embeds, negative, pooled, negative_pooled = encode_prompts_xl(pipe, p, device, guided)
    image = pipe.image_processor.preprocess(p["image"])
    timesteps, steps = pipe.get_timesteps(set_timesteps(pipe, p, device), p["strength"], device)
    if steps < 1:
        raise ValueError(f"strength={p['strength']} leaves {steps} denoising steps; raise strength or num_inference_steps.")
    batch = prompt_batch_size(p["prompt"], p["prompt_embeds"])
    total = batch * p["num_images_per_prompt"]
    generator, latents = p["generator"], p["latents"]
    if latents is None:
        latents = pipe.prepare_latents(image, timesteps[:1].repeat(total), batch, p["num_images_per_prompt"], embeds.dtype, device, generator, True)
    step_kwargs = pipe.prepare_extra_step_kwargs(generator, p["eta"])
    height, width = (s * pipe.vae_scale_factor for s in latents.shape[-2:])
    original_size, target_size = p["original_size"] or (height, width), p["target_size"] or (height, width)
    time_ids, negative_time_ids = pipe._get_add_time_ids(
        original_size, p["crops_coords_top_left"], target_size, p["aesthetic_score"], p["negative_aesthetic_score"],
        p["negative_original_size"] or original_size, p["negative_crops_coords_top_left"], p["negative_target_size"] or target_size,
        dtype=embeds.dtype, text_encoder_projection_dim=projection_dim(pipe, pooled),
    )  # fmt: skip
    time_ids, negative_time_ids = time_ids.repeat(total, 1), negative_time_ids.repeat(total, 1)
    denoiser = xl_denoiser(
        pipe, p, embeds, negative, pooled, negative_pooled, time_ids, negative_time_ids, guided, total, latents.dtype, device, max_batch_size
    )
    begin = len(pipe.scheduler.timesteps) - len(timesteps)
    final, sol, elapsed = solve(
        pipe, denoiser, latents, options, generator=step_kwargs.get("generator"), eta=step_kwargs.get("eta", 0.0), begin_index=begin
    )
    result = decode_xl(pipe, final.to(embeds.dtype), p["output_type"])
    if not p["return_dict"]:
        return (result,), sol
    return ParallelStableDiffusionXLOutput(images=result, solution=sol, wall_time=elapsed), sol
