"""Front door for ``LTXPipeline`` (LTX-Video text-to-video, flow matching on packed latents).

Prepared with the pipeline's public methods (``check_inputs``, ``encode_prompt``,
``prepare_latents``, which packs the latents into ``(B, L, C)`` tokens), timesteps set as its
``__call__`` sets them (``sigmas = linspace(1, 1/n, n)``, ``mu`` from the video's token count
for the dynamic shift, optional custom ``timesteps``), the loop replaced by
:func:`~trisolve_diffusion.sample_latents` over the packed latents, unpacked, denormalised and
decoded as the pipeline decodes (with ``decode_timestep`` / ``decode_noise_scale`` noise drawn
from the same generator after the loop when the VAE is timestep-conditioned).

The denoiser calls the transformer as the loop does: ``[x; x]`` against ``[negative; positive]``
embeddings in the embeddings' dtype, the output in float32, then (``s`` = ``guidance_scale``)::

    v = u + s (c - u)                          (guidance_scale > 1)
    v = rescale_noise_cfg(v, c, guidance_rescale)   (guidance_rescale > 0, per sample)

Copied preparation (marked ``# mirrors LTXPipeline.__call__``; ``UPSTREAM_LINES`` lists the
upstream lines, which a test finds in the installed diffusers' source): the sequence length and
``mu``, ``rope_interpolation_scale``, and the decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.ltx.pipeline_output import LTXPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

import trisolve

from ..network import _CachedDtype, _tile
from ..sampler import SolveOptions
from ._common import FLOW_SCHEDULER, check_loop_runs, check_no_cache, check_steps, solve

__all__ = ["sample_ltx", "LTXDenoiser", "ParallelLTXOutput", "UPSTREAM_LINES", "REFUSED_VARIANTS"]

#: Lines of ``LTXPipeline.__call__`` that the front door mirrors (checked against the installed source by the tests).
UPSTREAM_LINES = {
    "diffusers.pipelines.ltx.pipeline_ltx.LTXPipeline.__call__": [
        "latent_num_frames = (num_frames - 1) // self.vae_temporal_compression_ratio + 1",
        "latent_height = height // self.vae_spatial_compression_ratio",
        "video_sequence_length = latent_num_frames * latent_height * latent_width",
        "sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)",
        'self.scheduler.config.get("base_image_seq_len", 256),',
        'self.scheduler.config.get("max_image_seq_len", 4096),',
        'self.scheduler.config.get("base_shift", 0.5),',
        'self.scheduler.config.get("max_shift", 1.15),',
        "self.vae_temporal_compression_ratio / frame_rate,",
        "latent_model_input = latent_model_input.to(prompt_embeds.dtype)",
        "noise_pred = noise_pred.float()",
        "noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)",
        "noise_pred, noise_pred_text, guidance_rescale=self.guidance_rescale",
        "latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]",
        "latents, self.vae.latents_mean, self.vae.latents_std, self.vae.config.scaling_factor",
        "latents = latents.to(prompt_embeds.dtype)",
        "if not self.vae.config.timestep_conditioning:",
        "noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)",
        "decode_timestep = [decode_timestep] * batch_size",
        "decode_noise_scale = decode_timestep",
        "decode_noise_scale = [decode_noise_scale] * batch_size",
        "timestep = torch.tensor(decode_timestep, device=device, dtype=latents.dtype)",
        "decode_noise_scale = torch.tensor(decode_noise_scale, device=device, dtype=latents.dtype)[",
        "latents = (1 - decode_noise_scale) * latents + decode_noise_scale * noise",
        "latents = latents.to(self.vae.dtype)",
        "video = self.vae.decode(latents, timestep, return_dict=False)[0]",
        "video = self.video_processor.postprocess_video(video, output_type=output_type)",
    ],
}

#: LTX pipelines without a front door, and why.
REFUSED_VARIANTS = {
    "LTXImageToVideoPipeline": "image-to-video conditions the first frame with per-token timesteps (a conditioning mask), "
    "which this front door does not reproduce; run it sequentially",
    "LTXConditionPipeline": "frame conditioning (per-token timesteps, conditioning frames) is not supported; run it sequentially",
    "LTXLatentUpsamplePipeline": "it is not a sampler (it upsamples latents without denoising steps); call it directly",
}


@dataclass
class ParallelLTXOutput(LTXPipelineOutput):
    """``LTXPipelineOutput`` with ``solution`` and ``wall_time``."""

    solution: trisolve.Solution | None = None
    wall_time: float | None = None


@dataclass(frozen=True, eq=False)
class LTXDenoiser(_CachedDtype):
    """An ``LTXVideoTransformer3DModel`` as a denoiser on packed latents ``(N, L, C), (N,) -> (N, L, C)``.

    Parameters
    ----------
    transformer : LTXVideoTransformer3DModel
    prompt_embeds : tensor, shape ``(E, T, D)``
        ``E = B`` without guidance; ``[negative; positive]`` (``E = 2 B``) with it.
    prompt_attention_mask : tensor, shape ``(E, T)``
    latent_shape : tuple of int
        ``(frames, height, width)`` of the latent video (the transformer's rotary positions).
    rope_interpolation_scale : tuple of float
    guidance_scale : float or None
        ``None``: no classifier-free guidance.
    guidance_rescale : float
    attention_kwargs : dict, optional
    max_batch_size : int, optional
        Largest transformer batch per call.
    """

    transformer: Any
    prompt_embeds: torch.Tensor
    prompt_attention_mask: torch.Tensor
    latent_shape: tuple[int, int, int]
    rope_interpolation_scale: tuple[float, float, float]
    guidance_scale: float | None = None
    guidance_rescale: float = 0.0
    attention_kwargs: dict | None = None
    max_batch_size: int | None = None

    def _network(self) -> Any:  # the model _CachedDtype reads the dtype of
        return self.transformer

    def __call__(self, model_input: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        from diffusers.pipelines.ltx.pipeline_ltx import rescale_noise_cfg

        groups = 1 if self.guidance_scale is None else 2
        x = model_input if groups == 1 else torch.cat([model_input, model_input])
        t = timesteps if groups == 1 else torch.cat([timesteps, timesteps])
        x = x.to(self.prompt_embeds.dtype)  # the loop: latent_model_input.to(prompt_embeds.dtype)
        n = x.shape[0]
        emb, mask = _tile(self.prompt_embeds, n, groups), _tile(self.prompt_attention_mask, n, groups)
        frames, height, width = self.latent_shape
        size = n if self.max_batch_size is None else self.max_batch_size
        outs = []
        with self.transformer.cache_context("cond_uncond"):
            for s in range(0, n, size):
                outs.append(
                    self.transformer(
                        hidden_states=x[s : s + size], encoder_hidden_states=emb[s : s + size], timestep=t[s : s + size],
                        encoder_attention_mask=mask[s : s + size], num_frames=frames, height=height, width=width,
                        rope_interpolation_scale=self.rope_interpolation_scale, attention_kwargs=self.attention_kwargs, return_dict=False,
                    )[0]
                )  # fmt: skip
        v = (outs[0] if len(outs) == 1 else torch.cat(outs)).float()
        if groups == 2:
            uncond, cond = v.chunk(2)
            v = uncond + self.guidance_scale * (cond - uncond)
            if self.guidance_rescale > 0:
                v = rescale_noise_cfg(v, cond, guidance_rescale=self.guidance_rescale)
        return v.to(model_input.dtype)


def sample_ltx(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``LTXPipeline.__call__`` does, solve, post-process.

    Returns ``(output, solution)``; ``output`` is what ``pipe(**p)`` returns.
    """
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps

    check_no_cache(pipe.transformer)
    height, width, num_frames = p["height"], p["width"], p["num_frames"]
    prompt, prompt_embeds, negative_embeds = p["prompt"], p["prompt_embeds"], p["negative_prompt_embeds"]
    pipe.check_inputs(
        prompt=prompt, height=height, width=width, callback_on_step_end_tensor_inputs=None, prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds, prompt_attention_mask=p["prompt_attention_mask"],
        negative_prompt_attention_mask=p["negative_prompt_attention_mask"],
    )  # fmt: skip
    steps = check_steps(p["num_inference_steps"])
    guidance_scale = p["guidance_scale"]
    do_cfg = guidance_scale > 1.0  # the pipeline's do_classifier_free_guidance
    batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    prompt_embeds, mask, negative_embeds, negative_mask = pipe.encode_prompt(
        prompt=prompt, negative_prompt=p["negative_prompt"], do_classifier_free_guidance=do_cfg,
        num_videos_per_prompt=p["num_videos_per_prompt"], prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
        prompt_attention_mask=p["prompt_attention_mask"], negative_prompt_attention_mask=p["negative_prompt_attention_mask"],
        max_sequence_length=p["max_sequence_length"], device=device,
    )  # fmt: skip
    if do_cfg:
        prompt_embeds, mask = torch.cat([negative_embeds, prompt_embeds]), torch.cat([negative_mask, mask])
    latents = pipe.prepare_latents(
        batch_size * p["num_videos_per_prompt"], pipe.transformer.config.in_channels, height, width, num_frames, torch.float32, device,
        p["generator"], p["latents"],
    )  # fmt: skip  # (B, L, C) packed
    # mirrors LTXPipeline.__call__: timesteps with the dynamic shift of the video's token count
    latent_frames = (num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
    latent_height = height // pipe.vae_spatial_compression_ratio
    latent_width = width // pipe.vae_spatial_compression_ratio
    sigmas = np.linspace(1.0, 1 / steps, steps)
    c = pipe.scheduler.config
    mu = calculate_shift(
        latent_frames * latent_height * latent_width, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
        c.get("base_shift", 0.5), c.get("max_shift", 1.15),
    )  # fmt: skip
    retrieve_timesteps(pipe.scheduler, steps, device, p["timesteps"], sigmas=sigmas, mu=mu)
    check_loop_runs(pipe, pipe.scheduler, (), FLOW_SCHEDULER)
    rope = (pipe.vae_temporal_compression_ratio / p["frame_rate"], pipe.vae_spatial_compression_ratio, pipe.vae_spatial_compression_ratio)
    denoiser = LTXDenoiser(
        pipe.transformer, prompt_embeds, mask, (latent_frames, latent_height, latent_width), rope,
        guidance_scale=guidance_scale if do_cfg else None, guidance_rescale=p["guidance_rescale"], attention_kwargs=p["attention_kwargs"],
        max_batch_size=max_batch_size,
    )  # fmt: skip
    # the pipeline calls scheduler.step without a generator: stochastic sampling draws from torch's global generator
    final, sol, elapsed = solve(pipe, denoiser, latents, options, generator=None)
    if p["output_type"] == "latent":
        video = final
    else:
        video = _decode(pipe, final, p, (latent_frames, latent_height, latent_width), prompt_embeds.dtype, batch_size, device)
    pipe.maybe_free_model_hooks()
    if not p["return_dict"]:
        return (video,), sol
    return ParallelLTXOutput(frames=video, solution=sol, wall_time=elapsed), sol


def _decode(pipe: Any, latents: torch.Tensor, p: dict[str, Any], latent_shape, dtype, batch_size: int, device):
    """Mirrors the decoding of ``LTXPipeline.__call__`` (unpack, denormalise, decode-timestep noise, VAE, video processor)."""
    vae, generator = pipe.vae, p["generator"]
    z = pipe._unpack_latents(latents, *latent_shape, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)  # static
    z = pipe._denormalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor).to(dtype)  # static
    timestep = None
    if vae.config.timestep_conditioning:
        noise = randn_tensor(z.shape, generator=generator, device=device, dtype=z.dtype)
        decode_timestep, decode_noise_scale = p["decode_timestep"], p["decode_noise_scale"]
        if not isinstance(decode_timestep, list):
            decode_timestep = [decode_timestep] * batch_size
        if decode_noise_scale is None:
            decode_noise_scale = decode_timestep
        elif not isinstance(decode_noise_scale, list):
            decode_noise_scale = [decode_noise_scale] * batch_size
        timestep = torch.tensor(decode_timestep, device=device, dtype=z.dtype)
        scale = torch.tensor(decode_noise_scale, device=device, dtype=z.dtype)[:, None, None, None, None]
        z = (1 - scale) * z + scale * noise
    video = vae.decode(z.to(vae.dtype), timestep, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type=p["output_type"])
