"""Tiny offline video pipelines: ``WanPipeline`` (Wan 2.1, and 2.2's two experts), ``LTXPipeline``, ``CogVideoXPipeline``.

For tests, examples and the rounds benchmark of the video front doors (3-D latents, patchified
video transformers, Wan's UniPC flow scheduler, LTX's packed latents and dynamic shift, the
video VAEs) without a model hub. Everything is built from configs; the byte-level CLIP
tokenizer of :mod:`~trisolve_diffusion.models.tiny_flow` stands in for the T5 / UMT5
tokenizers (any tokenizer whose ids fit the encoder's vocabulary will do). The videos are
noise-like: the weights are random.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)

from .tiny_flow import _t5, _tokenizer

__all__ = ["build_tiny_wan", "build_tiny_ltx", "build_tiny_cogvideox", "wan_unipc_scheduler"]


def wan_unipc_scheduler(flow_shift: float = 3.0) -> UniPCMultistepScheduler:
    """The scheduler Wan checkpoints ship: UniPC with ``flow_prediction``, flow sigmas and ``flow_shift``."""
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift, num_train_timesteps=1000)


def _wan_transformer(text_dim: int) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16, text_dim=text_dim,
        freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()  # fmt: skip


def build_tiny_wan(seed: int = 0, scheduler=None, text_encoder: bool = True, two_experts: bool = False, boundary_ratio: float = 0.875) -> WanPipeline:
    """A randomly initialised, tiny ``WanPipeline`` (16 latent channels, VAE 8x spatial, 4x temporal).

    Parameters
    ----------
    seed : int
        Seed of the random weights.
    scheduler : diffusers scheduler, optional
        Default :func:`wan_unipc_scheduler` (UniPC, ``flow_prediction``, ``flow_shift=3``), as
        the Wan checkpoints ship.
    text_encoder : bool
        Build a tiny UMT5 encoder (prompts as strings); without it pass ``prompt_embeds (B, L, 32)``
        and, with guidance, ``negative_prompt_embeds``.
    two_experts : bool
        Wan 2.2: a second transformer for the low-noise steps, switched at
        ``boundary_ratio * num_train_timesteps``.
    boundary_ratio : float

    Examples
    --------
    >>> import torch
    >>> from trisolve_diffusion.models.tiny_video import build_tiny_wan
    >>> pipe = build_tiny_wan()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> pipe("a cat", height=16, width=16, num_frames=5, num_inference_steps=2, max_sequence_length=8).frames.shape
    (1, 5, 16, 16, 3)
    """
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    transformer = _wan_transformer(32)
    transformer_2 = _wan_transformer(32) if two_experts else None
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]).eval()
    tok = enc = None
    if text_encoder:
        tok = _tokenizer()
        config = UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
        enc = UMT5EncoderModel(config).eval()
    scheduler = wan_unipc_scheduler() if scheduler is None else scheduler
    extra = dict(transformer_2=transformer_2, boundary_ratio=boundary_ratio) if two_experts else {}
    return WanPipeline(tokenizer=tok, text_encoder=enc, vae=vae, scheduler=scheduler, transformer=transformer, **extra)


def build_tiny_ltx(seed: int = 0, scheduler=None, text_encoder: bool = True, timestep_conditioning: bool = False) -> LTXPipeline:
    """A randomly initialised, tiny ``LTXPipeline`` (8 latent channels, VAE 4x spatial and temporal, patch 1).

    Parameters
    ----------
    seed : int
        Seed of the random weights.
    scheduler : diffusers scheduler, optional
        Default ``FlowMatchEulerDiscreteScheduler`` with LTX-Video's dynamic shifting (``mu`` from
        the video's token count).
    text_encoder : bool
        Build a tiny T5 encoder (prompts as strings); without it pass ``prompt_embeds (B, L, 32)``
        with ``prompt_attention_mask (B, L)`` and their negatives.
    timestep_conditioning : bool
        A decoder conditioned on ``decode_timestep`` with ``decode_noise_scale`` noise (LTX 0.9.1+).

    Examples
    --------
    >>> import torch
    >>> from trisolve_diffusion.models.tiny_video import build_tiny_ltx
    >>> pipe = build_tiny_ltx()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> out = pipe("a cat", height=32, width=32, num_frames=5, num_inference_steps=2, max_sequence_length=8, output_type="np")
    >>> out.frames.shape
    (1, 5, 32, 32, 3)
    """
    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    ).eval()  # fmt: skip
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False), upsample_factor=(1, 1, 1, 1), timestep_conditioning=timestep_conditioning,
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()  # fmt: skip
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    tok = enc = None
    if text_encoder:
        tok = _tokenizer()
        enc = _t5(tok, 32)
    if scheduler is None:
        scheduler = FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096
        )
    return LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=enc, tokenizer=tok, transformer=transformer)


def build_tiny_cogvideox(seed: int = 0, scheduler=None, text_encoder: bool = True) -> CogVideoXPipeline:
    """A randomly initialised, tiny ``CogVideoXPipeline`` (4 latent channels, VAE 8x spatial, 4x temporal, rotary positions).

    Parameters
    ----------
    seed : int
        Seed of the random weights.
    scheduler : diffusers scheduler, optional
        Default ``CogVideoXDDIMScheduler`` with CogVideoX's v prediction, trailing timesteps and
        zero-terminal-SNR rescaling.
    text_encoder : bool
        Build a tiny T5 encoder (prompts as strings, ``max_sequence_length=16``); without it pass
        ``prompt_embeds (B, 16, 32)`` and, with guidance, ``negative_prompt_embeds``.

    Examples
    --------
    >>> import torch
    >>> from trisolve_diffusion.models.tiny_video import build_tiny_cogvideox
    >>> pipe = build_tiny_cogvideox()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> pipe("a cat", height=16, width=16, num_frames=9, num_inference_steps=2, max_sequence_length=16, output_type="np").frames.shape
    (1, 9, 16, 16, 3)
    """
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2, text_embed_dim=32, num_layers=1,
        sample_width=2, sample_height=2, sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16,
        use_rotary_positional_embeddings=True,
    ).eval()  # fmt: skip
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()  # fmt: skip
    tok = enc = None
    if text_encoder:
        tok = _tokenizer()
        enc = _t5(tok, 32)
    if scheduler is None:
        scheduler = CogVideoXDDIMScheduler(
            prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True, set_alpha_to_one=True,
            snr_shift_scale=3.0, beta_schedule="scaled_linear", clip_sample=False,
        )  # fmt: skip
    return CogVideoXPipeline(tokenizer=tok, text_encoder=enc, vae=vae, transformer=transformer, scheduler=scheduler)
