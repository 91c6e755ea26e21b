"""A tiny offline ``StableDiffusionPipeline``: random weights, hand-written CLIP vocabulary.

For tests and examples of the Stable Diffusion code path (text conditioning, classifier-free
guidance, VAE decoding) without a model hub. The images are noise-like: the weights are
random. Everything is built from configs; the tokenizer's ``vocab.json`` / ``merges.txt`` are
written to a temporary folder (byte-level characters, no merges).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

__all__ = ["build_tiny_stable_diffusion", "build_tiny_stable_diffusion_xl"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character table (what CLIP's BPE works on)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _write_tokenizer_files(folder: Path) -> None:
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def _tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer_files(Path(tmp))
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)


def _text_config(tokenizer, **kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **kw,
    )  # fmt: skip


def _vae():
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=8, sample_size=32,
    ).eval()  # fmt: skip


def _sd_scheduler():
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_tiny_stable_diffusion_xl(seed: int = 0, scheduler=None, pipeline_class=None, dtype: torch.dtype = torch.float32):
    """Build a randomly initialised, tiny SDXL pipeline (32x32 images, 16x16x4 latents).

    Two text encoders (``CLIPTextModel`` and ``CLIPTextModelWithProjection``, hidden size 32
    each, concatenated to the UNet's cross-attention width 64), added text/time conditioning
    (``addition_embed_type="text_time"``), no watermarker.

    Parameters
    ----------
    seed : int
        Seed of the random weights.
    scheduler : diffusers scheduler, optional
        Default ``DDIMScheduler`` with the Stable Diffusion schedule.
    pipeline_class : type, optional
        ``StableDiffusionXLPipeline`` (default) or ``StableDiffusionXLImg2ImgPipeline``.
    dtype : torch.dtype
        dtype of the networks.
    """
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    pipeline_class = StableDiffusionXLPipeline if pipeline_class is None else pipeline_class
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8, cross_attention_dim=64, norm_num_groups=8,
    )  # fmt: skip
    vae = _vae()
    tokenizer, tokenizer_2 = _tokenizer(), _tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, projection_dim=32)).eval()
    kw = {"requires_aesthetics_score": False} if pipeline_class.__name__ == "StableDiffusionXLImg2ImgPipeline" else {}
    pipe = pipeline_class(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        unet=unet.eval(), scheduler=_sd_scheduler() if scheduler is None else scheduler, add_watermarker=False, **kw,
    )  # fmt: skip
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def build_tiny_stable_diffusion(
    seed: int = 0, scheduler=None, dtype: torch.dtype = torch.float32, pipeline_class=None, unet_in_channels: int = 4
) -> StableDiffusionPipeline:
    """Build a randomly initialised, tiny ``StableDiffusionPipeline`` (32x32 images, 16x16x4 latents).

    Parameters
    ----------
    seed : int
        Seed of the random weights.
    scheduler : diffusers scheduler, optional
        Default ``DDIMScheduler`` with the Stable Diffusion schedule.
    dtype : torch.dtype
        dtype of the networks.
    pipeline_class : type, optional
        ``StableDiffusionPipeline`` (default), ``StableDiffusionImg2ImgPipeline`` or
        ``StableDiffusionInpaintPipeline`` (same components).
    unet_in_channels : int
        4, or 9 for an inpainting UNet (latents + mask + masked-image latents).
    """
    from transformers import CLIPTextModel

    pipeline_class = StableDiffusionPipeline if pipeline_class is None else pipeline_class
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=unet_in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = _vae()
    tokenizer = _tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    pipe = pipeline_class(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=_sd_scheduler() if scheduler is None else scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
