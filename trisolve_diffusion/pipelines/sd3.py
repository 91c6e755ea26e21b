"""Front door for ``StableDiffusion3Pipeline`` (flow matching, joint-attention transformer).

Prepared with the pipeline's public methods (``check_inputs``, ``encode_prompt``,
``prepare_latents``), timesteps set as its ``__call__`` sets them (custom ``sigmas``, ``mu``
from the image sequence length under dynamic shifting), the loop replaced by
:func:`~trisolve_diffusion.sample_latents`, decoded as the pipeline decodes.

Guidance inside the denoiser, per row ``j`` of the window (``u``, ``c``: unconditional and
conditional velocities; ``s`` = ``guidance_scale``)::

    v_j = u + s (c - u)                                          (guidance_scale > 1)
    v_j += s_slg (c - v_skip)    for rows  n start < j < n stop  (skip-layer guidance)

``v_skip`` is the conditional velocity with ``skip_guidance_layers`` skipped, as the pipeline
computes it (SD3.5's skip-layer guidance). The rows that get it are found from their
timesteps, which must then be distinct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput

import trisolve

from ..network import _CachedDtype, _tile
from ..sampler import SolveOptions
from ._common import FLOW_SCHEDULER, check_loop_runs, check_steps, solve

__all__ = ["sample_sd3", "sample_sd3_img2img", "SD3Denoiser", "ParallelStableDiffusion3Output"]


@dataclass
class ParallelStableDiffusion3Output(StableDiffusion3PipelineOutput):
    """``StableDiffusion3PipelineOutput`` with ``solution`` and ``wall_time``."""

    solution: trisolve.Solution | None = None
    wall_time: float | None = None


@dataclass(frozen=True, eq=False)
class SD3Denoiser(_CachedDtype):
    """An ``SD3Transformer2DModel`` as a denoiser ``(N, C, H, W), (N,) -> (N, C, H, W)``, guided as the pipeline guides.

    Parameters
    ----------
    transformer : SD3Transformer2DModel
    prompt_embeds : tensor, shape ``(E, L, D)``
        ``E = B`` without guidance; ``[negative; positive]`` (``E = 2 B``) with it.
    pooled_prompt_embeds : tensor, shape ``(E, P)``
    guidance_scale : float or None
        ``None``: no classifier-free guidance.
    skip_layers : list of int, optional
        Skip-layer guidance: layers skipped in the extra conditional evaluation.
    skip_layer_scale : float
    skip_timesteps : tensor, shape ``(k,)``
        Timesteps of the rows that get skip-layer guidance.
    joint_attention_kwargs : dict, optional
    max_batch_size : int, optional
        Largest transformer batch per call.
    """

    transformer: Any
    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    guidance_scale: float | None = None
    skip_layers: list[int] | None = None
    skip_layer_scale: float = 0.0
    skip_timesteps: torch.Tensor | None = None
    joint_attention_kwargs: dict | None = None
    max_batch_size: int | None = None

    def _network(self) -> Any:  # the model _CachedDtype reads the dtype of
        return self.transformer

    def _run(self, x, t, embeds, pooled, **kw):  # x (M, C, H, W), t (M,), embeds (M, L, D), pooled (M, P)
        size = x.shape[0] if self.max_batch_size is None else self.max_batch_size
        outs = [
            self.transformer(
                hidden_states=x[s : s + size], timestep=t[s : s + size], encoder_hidden_states=embeds[s : s + size],
                pooled_projections=pooled[s : s + size], joint_attention_kwargs=self.joint_attention_kwargs, return_dict=False, **kw,
            )[0]
            for s in range(0, x.shape[0], size)
        ]  # fmt: skip
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def __call__(self, model_input: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        n, dtype = model_input.shape[0], self._dtype
        x = model_input.to(dtype)
        if self.guidance_scale is None:
            emb, pooled = _tile(self.prompt_embeds, n, 1), _tile(self.pooled_prompt_embeds, n, 1)
            return self._run(x, timesteps, emb, pooled).to(model_input.dtype)
        emb, pooled = _tile(self.prompt_embeds, 2 * n, 2), _tile(self.pooled_prompt_embeds, 2 * n, 2)
        out = self._run(torch.cat([x, x]), torch.cat([timesteps, timesteps]), emb, pooled)
        uncond, cond = out[:n], out[n:]
        v = uncond + self.guidance_scale * (cond - uncond)
        if self.skip_layers is not None and self.skip_timesteps is not None and self.skip_timesteps.numel() > 0:
            sel = torch.isin(timesteps, self.skip_timesteps.to(timesteps.device, timesteps.dtype))
            if bool(sel.any()):
                idx = torch.nonzero(sel).flatten()  # elements of the N = w * B batch that get it
                e = self.prompt_embeds.shape[0] // 2
                sample = idx % e  # row-major (w, B): element k is sample k % B
                skip = self._run(
                    x[idx], timesteps[idx], self.prompt_embeds[e:][sample], self.pooled_prompt_embeds[e:][sample], skip_layers=self.skip_layers
                )
                v = v.clone()
                v[idx] = v[idx] + (cond[idx] - skip) * self.skip_layer_scale
        return v.to(model_input.dtype)


def _skip_layer_rows(n: int, start: float, stop: float) -> np.ndarray:
    """Rows ``i`` of an ``n``-step loop with ``n start < i < n stop`` (the pipeline's test)."""
    i = np.arange(n)
    return i[(i > n * start) & (i < n * stop)]


def _encode(pipe: Any, p: dict[str, Any], do_cfg: bool, device: Any):
    """``encode_prompt`` as the pipelines call it; ``(embeds (E, L, D), pooled (E, P), positive embeds, positive pooled)``
    with ``E = 2 B`` ``[negative; positive]`` under guidance."""
    jak = p["joint_attention_kwargs"]
    lora_scale = jak.get("scale", None) if jak is not None else None
    prompt_embeds, negative_prompt_embeds, pooled, negative_pooled = pipe.encode_prompt(
        prompt=p["prompt"], prompt_2=p["prompt_2"], prompt_3=p["prompt_3"], negative_prompt=p["negative_prompt"],
        negative_prompt_2=p["negative_prompt_2"], negative_prompt_3=p["negative_prompt_3"], do_classifier_free_guidance=do_cfg,
        prompt_embeds=p["prompt_embeds"], negative_prompt_embeds=p["negative_prompt_embeds"], pooled_prompt_embeds=p["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=p["negative_pooled_prompt_embeds"], device=device, clip_skip=p["clip_skip"],
        num_images_per_prompt=p["num_images_per_prompt"], max_sequence_length=p["max_sequence_length"], lora_scale=lora_scale,
    )  # fmt: skip
    if do_cfg:
        return torch.cat([negative_prompt_embeds, prompt_embeds]), torch.cat([negative_pooled, pooled]), prompt_embeds, pooled
    return prompt_embeds, pooled, prompt_embeds, pooled


def _batch_size(p: dict[str, Any]) -> int:
    prompt = p["prompt"]
    return 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else p["prompt_embeds"].shape[0]


def _mu(pipe: Any, p: dict[str, Any], h: int, w: int) -> float | None:
    """``mu`` as the pipelines compute it, from the latent height and width ``h, w``."""
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    if p["mu"] is not None or not pipe.scheduler.config.get("use_dynamic_shifting", None):
        return p["mu"]
    patch, c = pipe.transformer.config.patch_size, pipe.scheduler.config
    return calculate_shift(
        (h // patch) * (w // patch), c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
        c.get("max_shift", 1.16),
    )  # fmt: skip


def _finish(pipe: Any, p: dict[str, Any], final: torch.Tensor, sol, elapsed: float):
    if p["output_type"] == "latent":
        image = final
    else:
        z = (final / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        image = pipe.image_processor.postprocess(pipe.vae.decode(z, return_dict=False)[0], output_type=p["output_type"])
    pipe.maybe_free_model_hooks()
    if not p["return_dict"]:
        return (image,), sol
    return ParallelStableDiffusion3Output(images=image, solution=sol, wall_time=elapsed), sol


def sample_sd3(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``StableDiffusion3Pipeline.__call__`` does, solve, post-process.

    Returns ``(output, solution)``; ``output`` is what ``pipe(**p)`` returns.
    """
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps

    height = p["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = p["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(
        p["prompt"], p["prompt_2"], p["prompt_3"], height, width, negative_prompt=p["negative_prompt"],
        negative_prompt_2=p["negative_prompt_2"], negative_prompt_3=p["negative_prompt_3"], prompt_embeds=p["prompt_embeds"],
        negative_prompt_embeds=p["negative_prompt_embeds"], pooled_prompt_embeds=p["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=p["negative_pooled_prompt_embeds"], max_sequence_length=p["max_sequence_length"],
    )  # fmt: skip
    guidance_scale = p["guidance_scale"]
    do_cfg = guidance_scale > 1  # StableDiffusion3Pipeline.do_classifier_free_guidance
    skip_layers = p["skip_guidance_layers"]
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    prompt_embeds, pooled, _, _ = _encode(pipe, p, do_cfg, device)
    total = _batch_size(p) * p["num_images_per_prompt"]
    latents = pipe.prepare_latents(
        total, pipe.transformer.config.in_channels, height, width, prompt_embeds.dtype, device, p["generator"], p["latents"]
    )  # (B, C, h, w)
    mu = _mu(pipe, p, latents.shape[2], latents.shape[3])
    sigmas = p["sigmas"]
    steps = check_steps(p["num_inference_steps"]) if sigmas is None else p["num_inference_steps"]
    timesteps, n = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas, **({} if mu is None else {"mu": mu}))
    check_loop_runs(pipe, pipe.scheduler, (), FLOW_SCHEDULER)
    skip_ts = None
    if skip_layers is not None and do_cfg:
        rows = _skip_layer_rows(n, p["skip_layer_guidance_start"], p["skip_layer_guidance_stop"])
        skip_ts = timesteps[torch.as_tensor(rows, dtype=torch.long, device=timesteps.device)]
        others = timesteps[torch.as_tensor(np.setdiff1d(np.arange(n), rows), dtype=torch.long, device=timesteps.device)]
        if bool(torch.isin(skip_ts, others).any()):
            raise ValueError(
                "skip-layer guidance needs the timesteps of its rows to differ from the other rows' (the denoiser finds them by "
                "timestep); this schedule repeats one. Use distinct sigmas, or skip_guidance_layers=None."
            )
    denoiser = SD3Denoiser(
        pipe.transformer, prompt_embeds, pooled, guidance_scale=guidance_scale if do_cfg else None, skip_layers=skip_layers if do_cfg else None,
        skip_layer_scale=p["skip_layer_guidance_scale"], skip_timesteps=skip_ts, joint_attention_kwargs=p["joint_attention_kwargs"],
        max_batch_size=max_batch_size,
    )  # fmt: skip
    # the pipeline calls scheduler.step without a generator: stochastic sampling draws from torch's global generator
    final, sol, elapsed = solve(pipe, denoiser, latents, options, generator=None)
    return _finish(pipe, p, final, sol, elapsed)


def sample_sd3_img2img(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``StableDiffusion3Img2ImgPipeline.__call__`` does (the image encoded and noised to the
    ``strength`` level by the pipeline's ``prepare_latents``; the loop starts at the scheduler's
    ``begin_index``, which the mapping follows), solve, post-process.

    Returns ``(output, solution)``; ``output`` is what ``pipe(**p)`` returns.
    """
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import retrieve_timesteps

    height = p["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = p["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(
        p["prompt"], p["prompt_2"], p["prompt_3"], height, width, p["strength"], negative_prompt=p["negative_prompt"],
        negative_prompt_2=p["negative_prompt_2"], negative_prompt_3=p["negative_prompt_3"], prompt_embeds=p["prompt_embeds"],
        negative_prompt_embeds=p["negative_prompt_embeds"], pooled_prompt_embeds=p["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=p["negative_pooled_prompt_embeds"], max_sequence_length=p["max_sequence_length"],
    )  # fmt: skip
    guidance_scale = p["guidance_scale"]
    do_cfg = guidance_scale > 1
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    prompt_embeds, pooled, _, _ = _encode(pipe, p, do_cfg, device)
    image = pipe.image_processor.preprocess(p["image"], height=height, width=width)
    mu = _mu(pipe, p, int(height) // pipe.vae_scale_factor, int(width) // pipe.vae_scale_factor)
    sigmas = p["sigmas"]
    steps = check_steps(p["num_inference_steps"]) if sigmas is None else p["num_inference_steps"]
    _, steps = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas, **({} if mu is None else {"mu": mu}))
    check_loop_runs(pipe, pipe.scheduler, (), FLOW_SCHEDULER)
    timesteps, n = pipe.get_timesteps(steps, p["strength"], device)  # sets the scheduler's begin_index
    if n < 1:
        raise ValueError(f"strength={p['strength']} with {steps} steps leaves no denoising step; raise strength or num_inference_steps.")
    batch_size, num = _batch_size(p), p["num_images_per_prompt"]
    latents = p["latents"]
    if latents is None:
        latent_timestep = timesteps[:1].repeat(batch_size * num)
        latents = pipe.prepare_latents(image, latent_timestep, batch_size, num, prompt_embeds.dtype, device, p["generator"])
    denoiser = SD3Denoiser(
        pipe.transformer, prompt_embeds, pooled, guidance_scale=guidance_scale if do_cfg else None,
        joint_attention_kwargs=p["joint_attention_kwargs"], max_batch_size=max_batch_size,
    )  # fmt: skip
    final, sol, elapsed = solve(pipe, denoiser, latents, options, generator=None)
    return _finish(pipe, p, final, sol, elapsed)
