"""Front door for ``FluxPipeline`` (flow matching on packed latents).

Prepared with the pipeline's public methods (``check_inputs``, ``encode_prompt``,
``prepare_latents``, which packs the latents into ``(B, L, 4 C)`` tokens and returns the image
ids), timesteps set as its ``__call__`` sets them (``sigmas = linspace(1, 1/n, n)`` unless given,
``mu`` from the token count), the loop replaced by :func:`~trisolve_diffusion.sample_latents`
over the packed latents, unpacked and decoded as the pipeline decodes.

The denoiser calls the transformer as the loop does: ``timestep / 1000`` in the latents'
dtype, the guidance embedding ``guidance_scale`` for every sample (guidance-distilled models,
``guidance_embeds``), and with a negative prompt and ``true_cfg_scale > 1`` a second,
unconditional evaluation (``s`` = ``true_cfg_scale``)::

    v = u + s (c - u)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

import trisolve

from ..network import _CachedDtype, _tile
from ..sampler import SolveOptions
from ._common import FLOW_SCHEDULER, check_loop_runs, check_steps, solve

__all__ = ["sample_flux", "FluxDenoiser", "ParallelFluxOutput"]


@dataclass
class ParallelFluxOutput(FluxPipelineOutput):
    """``FluxPipelineOutput`` with ``solution`` and ``wall_time``."""

    solution: trisolve.Solution | None = None
    wall_time: float | None = None


@dataclass(frozen=True, eq=False)
class FluxDenoiser(_CachedDtype):
    """A ``FluxTransformer2DModel`` as a denoiser on packed latents ``(N, L, 4 C), (N,) -> (N, L, 4 C)``.

    Parameters
    ----------
    transformer : FluxTransformer2DModel
    prompt_embeds : tensor, shape ``(B, T, D)``
    pooled_prompt_embeds : tensor, shape ``(B, P)``
    text_ids : tensor, shape ``(T, 3)``
    image_ids : tensor, shape ``(L, 3)``
    guidance : tensor, shape ``(B,)``, optional
        The guidance embedding's value per sample (``guidance_embeds`` models).
    true_cfg_scale : float or None
        With ``negative_prompt_embeds``: ``u + s (c - u)``.
    negative_prompt_embeds, negative_pooled_prompt_embeds, negative_text_ids : tensors, optional
    joint_attention_kwargs : dict, optional
    max_batch_size : int, optional
        Largest transformer batch per call.
    """

    transformer: Any
    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    text_ids: torch.Tensor
    image_ids: torch.Tensor
    guidance: torch.Tensor | None = None
    true_cfg_scale: float | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    negative_text_ids: torch.Tensor | None = None
    joint_attention_kwargs: dict | None = None
    max_batch_size: int | None = None

    def _network(self) -> Any:  # the model _CachedDtype reads the dtype of
        return self.transformer

    def _run(self, x, t, embeds, pooled, text_ids, cache):  # x (N, L, 4C), t (N,) already / 1000
        n = x.shape[0]
        size = n if self.max_batch_size is None else self.max_batch_size
        emb, pool = _tile(embeds, n, 1), _tile(pooled, n, 1)
        g = None if self.guidance is None else _tile(self.guidance, n, 1)
        outs = []
        with self.transformer.cache_context(cache):
            for s in range(0, n, size):
                outs.append(
                    self.transformer(
                        hidden_states=x[s : s + size], timestep=t[s : s + size], guidance=None if g is None else g[s : s + size],
                        pooled_projections=pool[s : s + size], encoder_hidden_states=emb[s : s + size], txt_ids=text_ids,
                        img_ids=self.image_ids, joint_attention_kwargs=self.joint_attention_kwargs, return_dict=False,
                    )[0]
                )  # fmt: skip
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def __call__(self, model_input: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        dtype = self._dtype
        x = model_input.to(dtype)
        t = timesteps.to(dtype) / 1000  # the loop: t.expand(B).to(latents.dtype) / 1000
        cond = self._run(x, t, self.prompt_embeds, self.pooled_prompt_embeds, self.text_ids, "cond")
        if self.true_cfg_scale is None:
            return cond.to(model_input.dtype)
        neg = self._run(x, t, self.negative_prompt_embeds, self.negative_pooled_prompt_embeds, self.negative_text_ids, "uncond")
        return (neg + self.true_cfg_scale * (cond - neg)).to(model_input.dtype)


def sample_flux(pipe: Any, p: dict[str, Any], options: SolveOptions, max_batch_size: int | None):
    """Prepare as ``FluxPipeline.__call__`` does, solve, post-process.

    Returns ``(output, solution)``; ``output`` is what ``pipe(**p)`` returns.
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    if getattr(pipe.transformer, "is_cache_enabled", False):
        raise ValueError(
            "the Flux transformer has a cache enabled (e.g. FirstBlockCache/FasterCache), which reuses activations between "
            "sequential steps and has no meaning in a parallel solve; call pipe.transformer.disable_cache() first."
        )
    height = p["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = p["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    prompt, prompt_embeds = p["prompt"], p["prompt_embeds"]
    negative_prompt_embeds, negative_pooled = p["negative_prompt_embeds"], p["negative_pooled_prompt_embeds"]
    pipe.check_inputs(
        prompt, p["prompt_2"], height, width, negative_prompt=p["negative_prompt"], negative_prompt_2=p["negative_prompt_2"],
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=p["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=negative_pooled, max_sequence_length=p["max_sequence_length"],
    )  # fmt: skip
    for name in ("negative_ip_adapter_image", "negative_ip_adapter_image_embeds"):
        if p.get(name) is not None:
            raise TypeError(f"sample() does not take {name}: IP-Adapter inputs are not supported by trisolve_diffusion.")
    batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
    device = pipe._execution_device  # read only: where the pipeline runs its networks
    jak = p["joint_attention_kwargs"]
    lora_scale = jak.get("scale", None) if jak is not None else None
    has_neg = p["negative_prompt"] is not None or (negative_prompt_embeds is not None and negative_pooled is not None)
    true_cfg = p["true_cfg_scale"] > 1 and has_neg
    if true_cfg and prompt_embeds is not None and negative_prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
        raise ValueError(
            f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} must have "
            "the same shape when passed directly (as FluxPipeline requires)."
        )
    num = p["num_images_per_prompt"]
    common = dict(device=device, num_images_per_prompt=num, max_sequence_length=p["max_sequence_length"], lora_scale=lora_scale)
    prompt_embeds, pooled, text_ids = pipe.encode_prompt(
        prompt=prompt, prompt_2=p["prompt_2"], prompt_embeds=prompt_embeds, pooled_prompt_embeds=p["pooled_prompt_embeds"], **common
    )
    neg_ids = None
    if true_cfg:
        negative_prompt_embeds, negative_pooled, neg_ids = pipe.encode_prompt(
            prompt=p["negative_prompt"], prompt_2=p["negative_prompt_2"], prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=negative_pooled, **common,
        )  # fmt: skip
    total = batch_size * num
    latents, image_ids = pipe.prepare_latents(
        total, pipe.transformer.config.in_channels // 4, height, width, prompt_embeds.dtype, device, p["generator"], p["latents"]
    )  # latents (B, L, 4C) packed, image_ids (L, 3)
    steps = p["num_inference_steps"]
    sigmas = p.get("sigmas")
    if sigmas is None:
        sigmas = np.linspace(1.0, 1 / check_steps(steps), steps)
    if getattr(pipe.scheduler.config, "use_flow_sigmas", False):
        sigmas = None
    c = pipe.scheduler.config
    mu = calculate_shift(
        latents.shape[1], c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5), c.get("max_shift", 1.15)
    )
    retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas, mu=mu)
    pipe.scheduler.set_begin_index(0)  # as the pipeline does before its loop
    check_loop_runs(pipe, pipe.scheduler, (), FLOW_SCHEDULER)
    guidance = None
    if pipe.transformer.config.guidance_embeds:
        guidance = torch.full([1], p["guidance_scale"], device=device, dtype=torch.float32).expand(latents.shape[0])
    denoiser = FluxDenoiser(
        pipe.transformer, prompt_embeds, pooled, text_ids, image_ids, guidance=guidance, true_cfg_scale=p["true_cfg_scale"] if true_cfg else None,
        negative_prompt_embeds=negative_prompt_embeds if true_cfg else None, negative_pooled_prompt_embeds=negative_pooled if true_cfg else None,
        negative_text_ids=neg_ids, joint_attention_kwargs=jak if jak is not None else {}, max_batch_size=max_batch_size,
    )  # fmt: skip
    # the pipeline calls scheduler.step without a generator: stochastic sampling draws from torch's global generator
    final, sol, elapsed = solve(pipe, denoiser, latents, options, generator=None)
    if p["output_type"] == "latent":
        image = final
    else:
        z = pipe._unpack_latents(final, height, width, pipe.vae_scale_factor)  # (B, C, H/8, W/8); a static method
        z = (z / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        image = pipe.image_processor.postprocess(pipe.vae.decode(z.to(pipe.vae.device), return_dict=False)[0], output_type=p["output_type"])
    pipe.maybe_free_model_hooks()
    if not p["return_dict"]:
        return (image,), sol
    return ParallelFluxOutput(images=image, solution=sol, wall_time=elapsed), sol
