"""Models that need no download: the bundled digits DDPM, closed-form denoisers, a tiny Stable Diffusion."""

from .digits import load_digits_pipeline, load_digits_unet

__all__ = ["load_digits_pipeline", "load_digits_unet"]
