"""Front door for ``StableDiffusionXLPipeline`` (two text encoders, added text/time conditioning)."""

from __future__ import annotations

from typing import Any

import torch

from ..sampler import SolveOptions
from ._common import ParallelStableDiffusionXLOutput, solve
from .stable_diffusion import check_negative, do_guidance, guidance_denoiser, prompt_batch_size, set_timesteps

__all__ = ["sample_sdxl", "encode_prompts_xl", "decode_xl"]


def encode_prompts_xl(pipe: Any, p: dict[str, Any], device: Any, guided: bool) -> tuple[torch.Tensor, ...]:
    """``encode_prompt`` of both encoders: ``(embeds, negative, pooled, negative_pooled)``."""
    cak = p["cross_attention_kwargs"]
    return pipe.encode_prompt(
        prompt=p["prompt"], prompt_2=p["prompt_2"], device=device, num_images_per_prompt=p["num_images_per_prompt"],
        do_classifier_free_guidance=guided, negative_prompt=p["negative_prompt"], negative_prompt_2=p["negative_prompt_2"],
        prompt_embeds=p["prompt_embeds"], negative_prompt_embeds=p["negative_prompt_embeds"],
        pooled_prompt_embeds=p["pooled_prompt_embeds"], negative_pooled_prompt_embeds=p["negative_pooled_prompt_embeds"],
        lora_scale=cak.get("scale") if cak is not None else None, clip_skip=p["clip_skip"],
    )  # fmt: skip


def projection_dim(pipe: Any, pooled: torch.Tensor) -> int:
    return int(pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim


def decode_xl(pipe: Any, latents: torch.Tensor, output_type: str) -> Any:
    """The end of the SDXL pipelines' ``__call__``: VAE decode (float32 upcast where the VAE asks), watermark, conversion."""
    if output_type == "latent":
        pipe.maybe_free_model_hooks()
        return latents
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        pipe.upcast_vae()
        latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    image = vae.decode(latents.to(vae.device), return_dict=False)[0]
    if upcast:
        vae.to(dtype=torch.float16)
    if pipe.watermark is not None:
        image = pipe.watermark.apply_watermark(image)
    image = pipe.image_processor.postprocess(image, output_type=output_type)
    pipe.maybe_free_model_hooks()
    return image


def xl_denoiser(pipe, p, embeds, negative, pooled, negative_pooled, time_ids, negative_time_ids, guided, total, dtype, device, max_batch_size):
    """The UNet with SDXL's added conditioning, ``[uncond; cond]`` when guided."""
    if guided:
        embeds = torch.cat([negative, embeds])
        pooled = torch.cat([negative_pooled, pooled])
        time_ids = torch.cat([negative_time_ids, time_ids])
    added = {"text_embeds": pooled.to(device), "time_ids": time_ids.to(device)}
    return guidance_denoiser(pipe, p, embeds.to(device), guided, total, dtype, device, max_batch_size, added_cond_kwargs=added)


def sample_sdxl(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``StableDiffusionXLPipeline.__call__`` does, solve, post-process; returns ``(output, solution)``."""
    height = p["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = p["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    original_size, target_size = p["original_size"] or (height, width), p["target_size"] or (height, width)
    pipe.check_inputs(
        p["prompt"], p["prompt_2"], height, width, None, p["negative_prompt"], p["negative_prompt_2"], p["prompt_embeds"],
        p["negative_prompt_embeds"], p["pooled_prompt_embeds"], p["negative_pooled_prompt_embeds"], None, None, ["latents"],
    )  # fmt: skip
    check_negative(p["prompt"], p["negative_prompt"])
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    guided = do_guidance(pipe, p["guidance_scale"])
    embeds, negative, pooled, negative_pooled = encode_prompts_xl(pipe, p, device, guided)
    set_timesteps(pipe, p, device)
    batch = prompt_batch_size(p["prompt"], p["prompt_embeds"])
    total = batch * p["num_images_per_prompt"]
    generator = p["generator"]
    latents = pipe.prepare_latents(total, pipe.unet.config.in_channels, height, width, embeds.dtype, device, generator, p["latents"])
    step_kwargs = pipe.prepare_extra_step_kwargs(generator, p["eta"])
    proj = projection_dim(pipe, pooled)
    time_ids = pipe._get_add_time_ids(original_size, p["crops_coords_top_left"], target_size, dtype=embeds.dtype, text_encoder_projection_dim=proj)
    if p["negative_original_size"] is not None and p["negative_target_size"] is not None:
        negative_time_ids = pipe._get_add_time_ids(
            p["negative_original_size"], p["negative_crops_coords_top_left"], p["negative_target_size"], dtype=embeds.dtype,
            text_encoder_projection_dim=proj,
        )  # fmt: skip
    else:
        negative_time_ids = time_ids
    # as the pipeline: the (1 or 2, 6) ids repeated over the batch, pairing row k of the UNet batch with row k of the ids
    time_ids_all = (torch.cat([negative_time_ids, time_ids]) if guided else time_ids).repeat(total, 1)
    half = time_ids_all.shape[0] // 2
    pos_ids, neg_ids = (time_ids_all[half:], time_ids_all[:half]) if guided else (time_ids_all, None)
    if hasattr(pipe.scheduler, "set_begin_index"):
        pipe.scheduler.set_begin_index(0)
    denoiser = xl_denoiser(pipe, p, embeds, negative, pooled, negative_pooled, pos_ids, neg_ids, guided, total, latents.dtype, device, max_batch_size)
    final, sol, elapsed = solve(pipe, denoiser, latents, options, generator=step_kwargs.get("generator"), eta=step_kwargs.get("eta", 0.0))
    image = decode_xl(pipe, final.to(embeds.dtype), p["output_type"])
    if not p["return_dict"]:
        return (image,), sol
    return ParallelStableDiffusionXLOutput(images=image, solution=sol, wall_time=elapsed), sol
