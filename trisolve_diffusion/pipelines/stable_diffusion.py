"""Front door for ``StableDiffusionPipeline`` (SD 1.x / 2.x text-to-image)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

from ..network import unet_denoiser
from ..sampler import SolveOptions
from ._common import ParallelStableDiffusionOutput, check_steps, solve

__all__ = ["sample_stable_diffusion", "prompt_batch_size", "encode_prompts", "decode_sd", "set_timesteps", "guidance_denoiser"]


def prompt_batch_size(prompt: Any, prompt_embeds: torch.Tensor | None) -> int:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def check_negative(prompt: Any, negative_prompt: Any) -> None:
    if isinstance(prompt, list) and isinstance(negative_prompt, list) and len(prompt) != len(negative_prompt):
        raise ValueError(f"negative_prompt has {len(negative_prompt)} entries for {len(prompt)} prompts; give one per prompt.")


def do_guidance(pipe: Any, guidance_scale: float) -> bool:
    """The pipeline's own rule (``do_classifier_free_guidance``): guidance above 1 unless the UNet embeds the scale."""
    return guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None


def encode_prompts(pipe: Any, p: dict[str, Any], device: Any, guided: bool) -> torch.Tensor:
    """``encode_prompt``, and ``[negative; positive]`` when guided: ``(E, L, D)``."""
    cak = p["cross_attention_kwargs"]
    embeds, negative = pipe.encode_prompt(
        p["prompt"], device, p["num_images_per_prompt"], guided, p["negative_prompt"],
        prompt_embeds=p["prompt_embeds"], negative_prompt_embeds=p["negative_prompt_embeds"],
        lora_scale=cak.get("scale") if cak is not None else None, clip_skip=p["clip_skip"],
    )  # fmt: skip
    return torch.cat([negative, embeds]) if guided else embeds


def set_timesteps(pipe: Any, p: dict[str, Any], device: Any) -> int:
    """``retrieve_timesteps`` as the pipeline calls it (``num_inference_steps`` or custom ``timesteps``); the step count."""
    steps = check_steps(p["num_inference_steps"]) if p["timesteps"] is None else None
    return retrieve_timesteps(pipe.scheduler, num_inference_steps=steps, device=device, timesteps=p["timesteps"])[1]


def guidance_denoiser(pipe: Any, p: dict[str, Any], embeds: torch.Tensor, guided: bool, total: int, dtype, device, max_batch_size, **extra):
    """The UNet as a (guided) denoiser with the pipeline's timestep conditioning."""
    timestep_cond = None
    if pipe.unet.config.time_cond_proj_dim is not None:
        gs = torch.tensor(p["guidance_scale"] - 1).repeat(total)
        timestep_cond = pipe.get_guidance_scale_embedding(gs, embedding_dim=pipe.unet.config.time_cond_proj_dim).to(device=device, dtype=dtype)
    return unet_denoiser(
        pipe.unet, guidance_scale=p["guidance_scale"] if guided else None, guidance_rescale=p.get("guidance_rescale", 0.0) if guided else 0.0,
        encoder_hidden_states=embeds, timestep_cond=timestep_cond, cross_attention_kwargs=p["cross_attention_kwargs"],
        max_batch_size=max_batch_size, **extra,
    )  # fmt: skip


def decode_sd(pipe: Any, latents: torch.Tensor, p: dict[str, Any], device: Any, dtype, generator) -> tuple[Any, Any]:
    """VAE decode, safety checker and image conversion, as the SD pipelines end."""
    output_type = p["output_type"]
    if output_type != "latent":
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        image, has_nsfw = pipe.run_safety_checker(image, device, dtype)
    else:
        image, has_nsfw = latents, None
    do_denormalize = [True] * image.shape[0] if has_nsfw is None else [not x for x in has_nsfw]
    image = pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
    pipe.maybe_free_model_hooks()
    return image, has_nsfw


def sample_stable_diffusion(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``StableDiffusionPipeline.__call__`` does, solve, post-process; returns ``(output, solution)``."""
    height = p["height"] or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = p["width"] or pipe.unet.config.sample_size * pipe.vae_scale_factor
    pipe.check_inputs(
        p["prompt"], height, width, None, p["negative_prompt"], p["prompt_embeds"], p["negative_prompt_embeds"], None, None, ["latents"]
    )
    check_negative(p["prompt"], p["negative_prompt"])
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    guided = do_guidance(pipe, p["guidance_scale"])
    embeds = encode_prompts(pipe, p, device, guided)
    set_timesteps(pipe, p, device)
    total = prompt_batch_size(p["prompt"], p["prompt_embeds"]) * p["num_images_per_prompt"]
    generator, latents_in = p["generator"], p["latents"]
    if latents_in is not None:
        expected = (total, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        if not isinstance(latents_in, torch.Tensor) or tuple(latents_in.shape) != expected:
            got = tuple(latents_in.shape) if isinstance(latents_in, torch.Tensor) else type(latents_in).__name__
            raise ValueError(f"latents must have shape (batch * num_images_per_prompt, C, H/8, W/8) = {expected}, got {got}.")
    latents = pipe.prepare_latents(total, pipe.unet.config.in_channels, height, width, embeds.dtype, device, generator, latents_in)
    step_kwargs = pipe.prepare_extra_step_kwargs(generator, p["eta"])
    denoiser = guidance_denoiser(pipe, p, embeds, guided, total, latents.dtype, device, max_batch_size)
    final, sol, elapsed = solve(pipe, denoiser, latents, options, generator=step_kwargs.get("generator"), eta=step_kwargs.get("eta", 0.0))
    image, has_nsfw = decode_sd(pipe, final.to(embeds.dtype), p, device, embeds.dtype, generator)
    if not p["return_dict"]:
        return (image, has_nsfw), sol
    return ParallelStableDiffusionOutput(images=image, nsfw_content_detected=has_nsfw, solution=sol, wall_time=elapsed), sol
