"""Front door for ``StableDiffusionInpaintPipeline`` (4- and 9-channel UNets).

9-channel UNet: the mask and the masked image's latents are concatenated to the model input
(:class:`~trisolve_diffusion.UNetDenoiser` ``extra_channels``). 4-channel UNet: after every
step the pipeline blends the known region with the pre-noised image,
``x_i <- m x_i + (1 - m) q_i``, ``q_i = add_noise(image_latents, noise, t_{i+1})`` (the image
latents themselves after the last step); :func:`~trisolve_diffusion.sample_latents` keeps
that a semilinear system (``mask=``, ``known_latents=``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers import AsymmetricAutoencoderKL

from ..sampler import SolveOptions
from ._common import ParallelStableDiffusionOutput, solve
from .stable_diffusion import check_negative, do_guidance, encode_prompts, guidance_denoiser, prompt_batch_size, set_timesteps

__all__ = ["sample_inpaint", "known_latents"]


def known_latents(scheduler: Any, image_latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, begin: int) -> torch.Tensor:
    """``q_i`` for the loop's steps ``i = 0..n-1``, ``(n, B, C, H, W)``: what the 4-channel loop blends in after step ``i``.

    ``add_noise`` at ``timesteps[i + 1]`` with the scheduler positioned where the loop's is
    after step ``i`` (a copy, ``set_begin_index(begin + i + 1)``, for schedulers that index
    sigmas by step); the clean image latents after the last step.
    """
    n = len(timesteps)
    rows = []
    for i in range(n - 1):
        s = scheduler
        if hasattr(scheduler, "set_begin_index"):
            s = copy.deepcopy(scheduler)
            s.set_begin_index(begin + i + 1)
        rows.append(s.add_noise(image_latents, noise, torch.tensor([timesteps[i + 1]])))
    rows.append(image_latents)
    return torch.stack(rows)


def sample_inpaint(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``StableDiffusionInpaintPipeline.__call__`` does, solve, post-process; returns ``(output, solution)``."""
    if isinstance(pipe.vae, AsymmetricAutoencoderKL) and p["output_type"] != "latent":
        raise TypeError("an AsymmetricAutoencoderKL decoder is not supported by sample(); use output_type='latent' and decode yourself.")
    height = p["height"] or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = p["width"] or pipe.unet.config.sample_size * pipe.vae_scale_factor
    image, mask_image, strength, crop = p["image"], p["mask_image"], p["strength"], p["padding_mask_crop"]
    pipe.check_inputs(
        p["prompt"], image, mask_image, height, width, strength, None, p["output_type"], p["negative_prompt"], p["prompt_embeds"],
        p["negative_prompt_embeds"], None, None, ["latents"], crop,
    )  # fmt: skip
    check_negative(p["prompt"], p["negative_prompt"])
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    guided = do_guidance(pipe, p["guidance_scale"])
    embeds = encode_prompts(pipe, p, device, guided)
    timesteps, steps = pipe.get_timesteps(num_inference_steps=set_timesteps(pipe, p, device), strength=strength, device=device)
    if steps < 1:
        raise ValueError(f"strength={strength} leaves {steps} denoising steps; raise strength or num_inference_steps.")
    batch = prompt_batch_size(p["prompt"], p["prompt_embeds"])
    total = batch * p["num_images_per_prompt"]
    generator = p["generator"]
    if crop is not None:
        crops_coords, resize_mode = pipe.mask_processor.get_crop_region(mask_image, width, height, pad=crop), "fill"
    else:
        crops_coords, resize_mode = None, "default"
    init_image = pipe.image_processor.preprocess(image, height=height, width=width, crops_coords=crops_coords, resize_mode=resize_mode)
    init_image = init_image.to(dtype=torch.float32)
    four = pipe.unet.config.in_channels == 4
    if not four and pipe.unet.config.in_channels != 9:
        raise ValueError(f"the inpainting UNet must have 4 or 9 input channels, not {pipe.unet.config.in_channels}.")
    out = pipe.prepare_latents(
        total, pipe.vae.config.latent_channels, height, width, embeds.dtype, device, generator, p["latents"], image=init_image,
        timestep=timesteps[:1].repeat(total), is_strength_max=strength == 1.0, return_noise=True, return_image_latents=four,
    )  # fmt: skip
    latents, noise = out[0], out[1]
    mask_condition = pipe.mask_processor.preprocess(mask_image, height=height, width=width, resize_mode=resize_mode, crops_coords=crops_coords)
    masked = init_image * (mask_condition < 0.5) if p["masked_image_latents"] is None else p["masked_image_latents"]
    mask, masked_latents = pipe.prepare_mask_latents(mask_condition, masked, total, height, width, embeds.dtype, device, generator, guided)
    step_kwargs = pipe.prepare_extra_step_kwargs(generator, p["eta"])
    extra = {} if four else {"extra_channels": torch.cat([mask, masked_latents], dim=1)}
    denoiser = guidance_denoiser(pipe, p, embeds, guided, total, latents.dtype, device, max_batch_size, **extra)
    begin = len(pipe.scheduler.timesteps) - len(timesteps)
    blend = {}
    if four:
        blend = {"mask": mask[:total], "known_latents": known_latents(pipe.scheduler, out[2], noise, timesteps, begin)}
    final, sol, elapsed = solve(
        pipe, denoiser, latents, options, generator=step_kwargs.get("generator"), eta=step_kwargs.get("eta", 0.0), begin_index=begin, **blend
    )
    output_type = p["output_type"]
    if output_type != "latent":
        decoded = pipe.vae.decode(final.to(embeds.dtype) / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        decoded, has_nsfw = pipe.run_safety_checker(decoded, device, embeds.dtype)
    else:
        decoded, has_nsfw = final.to(embeds.dtype), None
    do_denormalize = [True] * decoded.shape[0] if has_nsfw is None else [not x for x in has_nsfw]
    result = pipe.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=do_denormalize)
    if crop is not None:
        result = [pipe.image_processor.apply_overlay(mask_image, image, r, crops_coords) for r in result]
    pipe.maybe_free_model_hooks()
    if not p["return_dict"]:
        return (result, has_nsfw), sol
    return ParallelStableDiffusionOutput(images=result, nsfw_content_detected=has_nsfw, solution=sol, wall_time=elapsed), sol
