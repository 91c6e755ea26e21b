"""Front door for ``WanPipeline`` (Wan 2.1 and 2.2 text-to-video, flow matching on 3-D latents).

Prepared with the pipeline's public methods (``check_inputs``, ``encode_prompt``,
``set_timesteps`` on its scheduler, ``prepare_latents``), the loop replaced by
:func:`~trisolve_diffusion.sample_latents` over the ``(B, C, F, H, W)`` latents, decoded as
the pipeline decodes. The scheduler is the one the pipeline holds: the UniPC flow scheduler the
Wan checkpoints ship (``prediction_type="flow_prediction"``, ``use_flow_sigmas``,
``flow_shift``) or ``FlowMatchEulerDiscreteScheduler``.

The denoiser calls the transformer as the loop does, per row ``j`` of the window (``u``,
``c``: unconditional and conditional velocities)::

    v_j = u + s (c - u)          (classifier-free guidance when guidance_scale > 1)

Wan 2.2 (a pipeline with ``transformer_2`` and ``boundary_ratio``): rows whose timestep is at
or above ``boundary_ratio * num_train_timesteps`` use ``transformer`` and ``guidance_scale``,
the others ``transformer_2`` and ``guidance_scale_2``, so one round calls each expert once on
its rows. ``expand_timesteps`` (Wan 2.2 TI2V) passes the timestep per token, as the loop does.

Copied preparation (marked ``# mirrors WanPipeline.__call__``; ``UPSTREAM_LINES`` lists the
upstream lines, which a test finds in the installed diffusers' source): the ``num_frames``
rounding and the decoding (``latents / latents_std + latents_mean``). A height or width that
the pipeline would round down to the patch grid (diffusers >= 0.36 rounds with a warning,
0.35 does not) is refused instead, so the result is the same on every supported release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

import trisolve

from ..network import _CachedDtype, _tile
from ..sampler import SolveOptions
from ._common import check_loop_runs, check_no_cache, check_steps, solve

__all__ = ["sample_wan", "WanDenoiser", "ParallelWanOutput", "UPSTREAM_LINES", "REFUSED_VARIANTS"]

#: Lines of ``WanPipeline.__call__`` that the front door mirrors (checked against the installed source by the tests).
UPSTREAM_LINES = {
    "diffusers.pipelines.wan.pipeline_wan.WanPipeline.__call__": [
        "if num_frames % self.vae_scale_factor_temporal != 1:",
        "num_frames = num_frames // self.vae_scale_factor_temporal * self.vae_scale_factor_temporal + 1",
        "num_frames = max(num_frames, 1)",
        "if self.config.boundary_ratio is not None and guidance_scale_2 is None:",
        "boundary_timestep = self.config.boundary_ratio * self.scheduler.config.num_train_timesteps",
        "if boundary_timestep is None or t >= boundary_timestep:",
        "temp_ts = (mask[0][0][:, ::2, ::2] * t).flatten()",
        "noise_pred = noise_uncond + current_guidance_scale * (noise_pred - noise_uncond)",
        "latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]",
        "torch.tensor(self.vae.config.latents_mean)",
        ".view(1, self.vae.config.z_dim, 1, 1, 1)",
        "latents_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, self.vae.config.z_dim, 1, 1, 1).to(",
        "latents = latents / latents_std + latents_mean",
        "video = self.vae.decode(latents, return_dict=False)[0]",
        "video = self.video_processor.postprocess_video(video, output_type=output_type)",
    ],
}

#: Wan pipelines without a front door, and why.
REFUSED_VARIANTS = {
    "WanImageToVideoPipeline": "image-to-video conditions every step on the encoded image (and, for Wan 2.2 TI2V, "
    "re-imposes the first frame after each step), which this front door does not reproduce; run it sequentially",
    "WanVideoToVideoPipeline": "video-to-video is not supported yet; run it sequentially",
    "WanVACEPipeline": "VACE control inputs are not supported; run it sequentially",
}


@dataclass
class ParallelWanOutput(WanPipelineOutput):
    """``WanPipelineOutput`` with ``solution`` and ``wall_time``."""

    solution: trisolve.Solution | None = None
    wall_time: float | None = None


@dataclass(frozen=True, eq=False)
class WanDenoiser(_CachedDtype):
    """A ``WanTransformer3DModel`` (or Wan 2.2's two) as a denoiser ``(N, C, F, H, W), (N,) -> (N, C, F, H, W)``.

    Parameters
    ----------
    transformer : WanTransformer3DModel
        The model of every step, or (with ``boundary_timestep``) of the steps with
        ``t >= boundary_timestep``.
    prompt_embeds : tensor, shape ``(B, L, D)``
    negative_prompt_embeds : tensor, shape ``(B, L, D)``, optional
        With ``guidance_scale``: ``u + s (c - u)``.
    guidance_scale : float or None
        ``None``: no classifier-free guidance.
    transformer_2, guidance_scale_2, boundary_timestep : optional
        Wan 2.2: the model and guidance scale of the steps with ``t < boundary_timestep``.
    expand_timesteps : bool
        Pass the timestep once per token ``(N, F * H/2 * W/2)``, as the pipeline does with
        ``expand_timesteps``.
    attention_kwargs : dict, optional
    max_batch_size : int, optional
        Largest transformer batch per call.
    """

    transformer: Any
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    guidance_scale: float | None = None
    transformer_2: Any = None
    guidance_scale_2: float | None = None
    boundary_timestep: float | None = None
    expand_timesteps: bool = False
    attention_kwargs: dict | None = None
    max_batch_size: int | None = None

    def _network(self) -> Any:  # the model _CachedDtype reads the dtype of
        return self.transformer

    def _timestep(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.expand_timesteps:
            return t
        mask = torch.ones(x.shape[2:], dtype=torch.float32, device=x.device)[:, ::2, ::2]  # the loop's mask[0][0][:, ::2, ::2]
        return (mask.flatten()[None, :] * t[:, None]).to(torch.float32)  # (N, seq_len)

    def _run(self, model, x, t, embeds, cache):  # x (M, C, F, H, W), t (M,) or (M, S), embeds (M, L, D)
        size = x.shape[0] if self.max_batch_size is None else self.max_batch_size
        outs = []
        with model.cache_context(cache):
            for s in range(0, x.shape[0], size):
                outs.append(
                    model(
                        hidden_states=x[s : s + size], timestep=t[s : s + size], encoder_hidden_states=embeds[s : s + size],
                        attention_kwargs=self.attention_kwargs, return_dict=False,
                    )[0]
                )  # fmt: skip
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _guided(self, model, scale, x, t, idx):  # the loop's step on the elements idx of the batch
        n = x.shape[0]
        emb = _tile(self.prompt_embeds, n, 1)[idx]
        tt = self._timestep(x[idx], t[idx])
        cond = self._run(model, x[idx], tt, emb, "cond")
        if scale is None:
            return cond
        uncond = self._run(model, x[idx], tt, _tile(self.negative_prompt_embeds, n, 1)[idx], "uncond")
        return uncond + scale * (cond - uncond)

    def __call__(self, model_input: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        x = model_input.to(self._dtype)  # the loop: latents.to(transformer_dtype)
        everything = torch.arange(x.shape[0], device=x.device)
        if self.boundary_timestep is None:
            return self._guided(self.transformer, self.guidance_scale, x, timesteps, everything).to(model_input.dtype)
        high = timesteps >= self.boundary_timestep
        out = None
        for model, scale, sel in ((self.transformer, self.guidance_scale, high), (self.transformer_2, self.guidance_scale_2, ~high)):
            idx = everything[sel]
            if idx.numel() == 0:
                continue
            v = self._guided(model, scale, x, timesteps, idx)
            if out is None:
                out = torch.empty((x.shape[0], *v.shape[1:]), dtype=v.dtype, device=v.device)
            out[idx] = v
        return out.to(model_input.dtype)


def sample_wan(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``WanPipeline.__call__`` does, solve, post-process.

    Returns ``(output, solution)``; ``output`` is what ``pipe(**p)`` returns.
    """
    if pipe.transformer is None:
        raise ValueError("WanPipeline without `transformer` (only transformer_2) is not supported by sample(); load both experts.")
    check_no_cache(pipe.transformer, getattr(pipe, "transformer_2", None))
    height, width, num_frames = p["height"], p["width"], p["num_frames"]
    prompt, prompt_embeds, negative_embeds = p["prompt"], p["prompt_embeds"], p["negative_prompt_embeds"]
    boundary_ratio = pipe.config.get("boundary_ratio", None)
    guidance_scale, guidance_scale_2 = p["guidance_scale"], p.get("guidance_scale_2")
    pipe.check_inputs(prompt, p["negative_prompt"], height, width, prompt_embeds, negative_embeds, None, guidance_scale_2)
    steps = check_steps(p["num_inference_steps"])
    temporal = pipe.vae_scale_factor_temporal
    if num_frames % temporal != 1:  # mirrors WanPipeline.__call__ (which also warns)
        num_frames = num_frames // temporal * temporal + 1
    num_frames = max(num_frames, 1)
    patch = pipe.transformer.config.patch_size
    hm, wm = pipe.vae_scale_factor_spatial * patch[1], pipe.vae_scale_factor_spatial * patch[2]
    if height % hm or width % wm:
        raise ValueError(f"height and width must be multiples of ({hm}, {wm}) (the VAE factor times the patch size); got ({height}, {width}).")
    if boundary_ratio is not None and guidance_scale_2 is None:  # mirrors WanPipeline.__call__
        guidance_scale_2 = guidance_scale
    do_cfg = guidance_scale > 1.0  # the pipeline's do_classifier_free_guidance: guidance_scale only, for both experts
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
    num = p["num_videos_per_prompt"]
    prompt_embeds, negative_embeds = pipe.encode_prompt(
        prompt=prompt, negative_prompt=p["negative_prompt"], do_classifier_free_guidance=do_cfg, num_videos_per_prompt=num,
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, max_sequence_length=p["max_sequence_length"], device=device,
    )  # fmt: skip
    transformer_dtype = pipe.transformer.dtype
    prompt_embeds = prompt_embeds.to(transformer_dtype)
    if negative_embeds is not None:
        negative_embeds = negative_embeds.to(transformer_dtype)
    pipe.scheduler.set_timesteps(steps, device=device)
    check_loop_runs(pipe, pipe.scheduler, (), "UniPCMultistepScheduler with use_flow_sigmas, or FlowMatchEulerDiscreteScheduler")
    latents = pipe.prepare_latents(
        batch_size * num, pipe.transformer.config.in_channels, height, width, num_frames, torch.float32, device, p["generator"], p["latents"]
    )
    pipe.scheduler.set_begin_index(0)  # as the pipeline does before its loop (diffusers >= 0.36; the same start on 0.35)
    boundary = None if boundary_ratio is None else boundary_ratio * pipe.scheduler.config.num_train_timesteps
    denoiser = WanDenoiser(
        pipe.transformer, prompt_embeds, negative_prompt_embeds=negative_embeds if do_cfg else None,
        guidance_scale=guidance_scale if do_cfg else None, transformer_2=pipe.transformer_2 if boundary is not None else None,
        guidance_scale_2=guidance_scale_2 if do_cfg else None, boundary_timestep=boundary,
        expand_timesteps=bool(pipe.config.get("expand_timesteps", False)), attention_kwargs=p["attention_kwargs"], max_batch_size=max_batch_size,
    )  # fmt: skip
    # the pipeline calls scheduler.step without a generator: stochastic sampling draws from torch's global generator
    final, sol, elapsed = solve(pipe, denoiser, latents, options, generator=None)
    if p["output_type"] == "latent":
        video = final
    else:  # mirrors WanPipeline.__call__
        vae = pipe.vae
        z = final.to(vae.device, vae.dtype)
        latents_mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z.device, z.dtype)
        latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z.device, z.dtype)
        z = z / latents_std + latents_mean
        video = pipe.video_processor.postprocess_video(vae.decode(z, return_dict=False)[0], output_type=p["output_type"])
    pipe.maybe_free_model_hooks()
    if not p["return_dict"]:
        return (video,), sol
    return ParallelWanOutput(frames=video, solution=sol, wall_time=elapsed), sol
