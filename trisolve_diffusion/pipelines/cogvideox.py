"""Front door for ``CogVideoXPipeline`` (CogVideoX text-to-video, ``(B, F, C, H, W)`` latents).

Prepared with the pipeline's methods (``check_inputs``, ``encode_prompt``, ``prepare_latents``,
its rotary embeddings, ``retrieve_timesteps``), the loop replaced by
:func:`~trisolve_diffusion.sample_latents`, decoded with ``decode_latents``. The scheduler
must have a mapping: ``CogVideoXDDIMScheduler`` (CogVideoX-2B's;
:mod:`~trisolve_diffusion.schedulers.cogvideox`). ``CogVideoXDPMScheduler`` (the 5B
checkpoints') is refused with a message naming the swap.

The denoiser calls the transformer as the loop does: ``[x; x]`` against ``[negative;
positive]`` embeddings, the output in float32, then ``v = u + s (c - u)`` with ``s`` the
guidance scale, or with ``use_dynamic_cfg`` the loop's per-step scale
``1 + s (1 - cos(pi ((n - t) / n)^5)) / 2`` for the timestep ``t`` of each row.

Copied preparation (``UPSTREAM_LINES``, checked against the installed source by the tests):
the padding of the latent frames to the temporal patch size (CogVideoX 1.5), the dynamic
guidance scale, and dropping the padding frames before decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.pipelines.cogvideo.pipeline_output import CogVideoXPipelineOutput

import trisolve

from ..network import _CachedDtype, _tile
from ..sampler import SolveOptions
from ._common import check_no_cache, check_steps, solve

__all__ = ["sample_cogvideox", "CogVideoXDenoiser", "ParallelCogVideoXOutput", "UPSTREAM_LINES", "REFUSED_VARIANTS"]

#: Lines of ``CogVideoXPipeline.__call__`` that the front door mirrors (checked against the installed source by the tests).
UPSTREAM_LINES = {
    "diffusers.pipelines.cogvideo.pipeline_cogvideox.CogVideoXPipeline.__call__": [
        "latent_frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1",
        "if patch_size_t is not None and latent_frames % patch_size_t != 0:",
        "additional_frames = patch_size_t - latent_frames % patch_size_t",
        "num_frames += additional_frames * self.vae_scale_factor_temporal",
        "self._prepare_rotary_positional_embeddings(height, width, latents.size(1), device)",
        "latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)",
        "noise_pred = noise_pred.float()",
        "self._guidance_scale = 1 + guidance_scale * (",
        "(1 - math.cos(math.pi * ((num_inference_steps - t.item()) / num_inference_steps) ** 5.0)) / 2",
        "noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)",
        "latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]",
        "latents = latents.to(prompt_embeds.dtype)",
        "latents = latents[:, additional_frames:]",
        "video = self.decode_latents(latents)",
        "video = self.video_processor.postprocess_video(video=video, output_type=output_type)",
    ],
}

#: CogVideoX pipelines without a front door, and why.
REFUSED_VARIANTS = {
    "CogVideoXImageToVideoPipeline": "image-to-video concatenates the encoded image to every step's input, which this front "
    "door does not reproduce; run it sequentially",
    "CogVideoXVideoToVideoPipeline": "video-to-video is not supported yet; run it sequentially",
    "CogVideoXFunControlPipeline": "control videos are not supported; run it sequentially",
}


@dataclass
class ParallelCogVideoXOutput(CogVideoXPipelineOutput):
    """``CogVideoXPipelineOutput`` with ``solution`` and ``wall_time``."""

    solution: trisolve.Solution | None = None
    wall_time: float | None = None


def dynamic_guidance_scale(guidance_scale: float, t: float, num_inference_steps: int) -> float:
    """The loop's ``use_dynamic_cfg`` guidance scale at timestep ``t``."""
    return 1 + guidance_scale * ((1 - math.cos(math.pi * ((num_inference_steps - t) / num_inference_steps) ** 5.0)) / 2)


@dataclass(frozen=True, eq=False)
class CogVideoXDenoiser(_CachedDtype):
    """A ``CogVideoXTransformer3DModel`` as a denoiser ``(N, F, C, H, W), (N,) -> (N, F, C, H, W)``.

    Parameters
    ----------
    transformer : CogVideoXTransformer3DModel
    prompt_embeds : tensor, shape ``(E, T, D)``
        ``E = B`` without guidance; ``[negative; positive]`` (``E = 2 B``) with it.
    guidance_scale : float or None
        ``None``: no classifier-free guidance.
    dynamic_steps : int or None
        ``use_dynamic_cfg``: the number of inference steps of the per-timestep scale.
    image_rotary_emb : tuple of tensors, optional
    attention_kwargs : dict, optional
    max_batch_size : int, optional
        Largest transformer batch per call.
    """

    transformer: Any
    prompt_embeds: torch.Tensor
    guidance_scale: float | None = None
    dynamic_steps: int | None = None
    image_rotary_emb: Any = None
    attention_kwargs: dict | None = None
    max_batch_size: int | None = None

    def _network(self) -> Any:  # the model _CachedDtype reads the dtype of
        return self.transformer

    def __call__(self, model_input: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        groups = 1 if self.guidance_scale is None else 2
        x = model_input if groups == 1 else torch.cat([model_input, model_input])
        t = timesteps if groups == 1 else torch.cat([timesteps, timesteps])
        x = x.to(self._dtype)
        n = x.shape[0]
        emb = _tile(self.prompt_embeds, n, groups)
        size = n if self.max_batch_size is None else self.max_batch_size
        outs = []
        with self.transformer.cache_context("cond_uncond"):
            for s in range(0, n, size):
                outs.append(
                    self.transformer(
                        hidden_states=x[s : s + size], encoder_hidden_states=emb[s : s + size], timestep=t[s : s + size],
                        image_rotary_emb=self.image_rotary_emb, attention_kwargs=self.attention_kwargs, return_dict=False,
                    )[0]
                )  # fmt: skip
        v = (outs[0] if len(outs) == 1 else torch.cat(outs)).float()
        if groups == 1:
            return v.to(model_input.dtype)
        uncond, cond = v.chunk(2)
        if self.dynamic_steps is None:
            scale = self.guidance_scale
        else:  # one scale per element, from its row's timestep, applied in float32 as the loop applies its float
            per_t = [dynamic_guidance_scale(self.guidance_scale, float(ti), self.dynamic_steps) for ti in timesteps.tolist()]
            scale = torch.tensor(per_t, dtype=torch.float32, device=v.device).view(-1, *([1] * (v.ndim - 1)))
        return (uncond + scale * (cond - uncond)).to(model_input.dtype)


def sample_cogvideox(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``CogVideoXPipeline.__call__`` does, solve, post-process.

    Returns ``(output, solution)``; ``output`` is what ``pipe(**p)`` returns.
    """
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import retrieve_timesteps

    check_no_cache(pipe.transformer)
    height = p["height"] or pipe.transformer.config.sample_height * pipe.vae_scale_factor_spatial
    width = p["width"] or pipe.transformer.config.sample_width * pipe.vae_scale_factor_spatial
    num_frames = p["num_frames"] or pipe.transformer.config.sample_frames
    prompt, prompt_embeds, negative_embeds = p["prompt"], p["prompt_embeds"], p["negative_prompt_embeds"]
    pipe.check_inputs(prompt, height, width, p["negative_prompt"], None, prompt_embeds, negative_embeds)
    steps = check_steps(p["num_inference_steps"])
    guidance_scale = p["guidance_scale"]
    do_cfg = guidance_scale > 1.0
    batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    prompt_embeds, negative_embeds = pipe.encode_prompt(
        prompt, p["negative_prompt"], do_cfg, num_videos_per_prompt=p["num_videos_per_prompt"], prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds, max_sequence_length=p["max_sequence_length"], device=device,
    )  # fmt: skip
    if do_cfg:
        prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
    _, steps = retrieve_timesteps(pipe.scheduler, steps, device, p["timesteps"])
    # mirrors CogVideoXPipeline.__call__: pad the latent frames to the temporal patch size (CogVideoX 1.5)
    latent_frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
    patch_size_t = pipe.transformer.config.patch_size_t
    additional_frames = 0
    if patch_size_t is not None and latent_frames % patch_size_t != 0:
        additional_frames = patch_size_t - latent_frames % patch_size_t
        num_frames += additional_frames * pipe.vae_scale_factor_temporal
    latents = pipe.prepare_latents(
        batch_size * p["num_videos_per_prompt"], pipe.transformer.config.in_channels, num_frames, height, width, prompt_embeds.dtype,
        device, p["generator"], p["latents"],
    )  # fmt: skip
    rotary = None
    if pipe.transformer.config.use_rotary_positional_embeddings:  # the pipeline's own helper (no public one)
        rotary = pipe._prepare_rotary_positional_embeddings(height, width, latents.size(1), device)
    denoiser = CogVideoXDenoiser(
        pipe.transformer, prompt_embeds, guidance_scale=guidance_scale if do_cfg else None,
        dynamic_steps=steps if p["use_dynamic_cfg"] else None, image_rotary_emb=rotary, attention_kwargs=p["attention_kwargs"],
        max_batch_size=max_batch_size,
    )  # fmt: skip
    final, sol, elapsed = solve(pipe, denoiser, latents, options, generator=p["generator"], eta=p["eta"])
    final = final.to(prompt_embeds.dtype)  # the loop casts after every step
    if p["output_type"] == "latent":
        video = final
    else:
        video = pipe.video_processor.postprocess_video(video=pipe.decode_latents(final[:, additional_frames:]), output_type=p["output_type"])
    pipe.maybe_free_model_hooks()
    if not p["return_dict"]:
        return (video,), sol
    return ParallelCogVideoXOutput(frames=video, solution=sol, wall_time=elapsed), sol
