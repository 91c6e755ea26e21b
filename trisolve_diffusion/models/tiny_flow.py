"""Tiny offline flow-matching pipelines: ``StableDiffusion3Pipeline`` and ``FluxPipeline`` with random weights.

For tests and examples of the SD3 / Flux code paths (joint-attention transformers, pooled
projections, packed latents and image ids, the guidance embedding, classifier-free and true
guidance, VAE decoding) without a model hub. Everything is built from configs; the CLIP
tokenizer files are written to a temporary folder (:mod:`~trisolve_diffusion.models.tiny_sd`),
and that byte-level tokenizer also stands in for T5's (any tokenizer whose ids fit the
encoder's vocabulary will do). The images are noise-like: the weights are random.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

from .tiny_sd import _write_tokenizer_files

__all__ = ["build_tiny_sd3", "build_tiny_flux"]


def _tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer_files(Path(tmp))
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=max_length)


def _clip(tokenizer, hidden: int, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=hidden, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def _t5(tokenizer, d_model: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
    return T5EncoderModel(config).eval()


def _vae(latent_channels: int) -> AutoencoderKL:
    # one block: vae_scale_factor 1, so latents have the image's height and width
    return AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()  # fmt: skip


def build_tiny_sd3(seed: int = 0, scheduler=None, text_encoders: bool = True, dtype: torch.dtype = torch.float32) -> StableDiffusion3Pipeline:
    """A randomly initialised, tiny ``StableDiffusion3Pipeline`` (4 latent channels, patch 2).

    Parameters
    ----------
    seed : int
        Seed of the random weights.
    scheduler : diffusers scheduler, optional
        Default ``FlowMatchEulerDiscreteScheduler(shift=3.0)`` (SD3's).
    text_encoders : bool
        Build the two CLIP and the T5 encoder (prompts as strings); without them pass
        ``prompt_embeds (B, L, 64)``, ``pooled_prompt_embeds (B, 64)`` and their negatives.
    dtype : torch.dtype

    Examples
    --------
    >>> import torch
    >>> from trisolve_diffusion.models.tiny_flow import build_tiny_sd3
    >>> pipe = build_tiny_sd3()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> pipe("a cat", height=16, width=16, num_inference_steps=2, max_sequence_length=8, output_type="np").images.shape
    (1, 16, 16, 3)
    """
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, pos_embed_max_size=16,
    ).eval()  # fmt: skip
    parts = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    if text_encoders:
        tok = _tokenizer()
        parts = dict(
            text_encoder=_clip(tok, 32, True), tokenizer=tok, text_encoder_2=_clip(tok, 32, True), tokenizer_2=tok,
            text_encoder_3=_t5(tok, 64), tokenizer_3=tok,
        )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0) if scheduler is None else scheduler
    pipe = StableDiffusion3Pipeline(transformer=transformer, vae=_vae(4), scheduler=scheduler, **parts)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def build_tiny_flux(
    seed: int = 0, scheduler=None, text_encoders: bool = True, guidance_embeds: bool = True, dtype: torch.dtype = torch.float32
) -> FluxPipeline:
    """A randomly initialised, tiny ``FluxPipeline`` (1 latent channel packed 2x2 into 4).

    Parameters
    ----------
    seed : int
        Seed of the random weights.
    scheduler : diffusers scheduler, optional
        Default ``FlowMatchEulerDiscreteScheduler`` with Flux's dynamic shifting.
    text_encoders : bool
        Build the CLIP and T5 encoders (prompts as strings); without them pass
        ``prompt_embeds (B, L, 32)`` and ``pooled_prompt_embeds (B, 32)``.
    guidance_embeds : bool
        The transformer takes the guidance embedding (Flux-dev) or not (Flux-schnell).
    dtype : torch.dtype

    Examples
    --------
    >>> import torch
    >>> from trisolve_diffusion.models.tiny_flow import build_tiny_flux
    >>> pipe = build_tiny_flux()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> pipe("a cat", height=16, width=16, num_inference_steps=2, max_sequence_length=8, output_type="np").images.shape
    (1, 16, 16, 3)
    """
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds,
    ).eval()  # fmt: skip
    parts = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    if text_encoders:
        tok = _tokenizer()
        parts = dict(text_encoder=_clip(tok, 32, False), tokenizer=tok, text_encoder_2=_t5(tok, 32), tokenizer_2=tok)
    if scheduler is None:
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
        )
    pipe = FluxPipeline(transformer=transformer, vae=_vae(1), scheduler=scheduler, **parts)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
