"""Models that need no download: the bundled digits DDPM, closed-form denoisers, a tiny Stable Diffusion.

``digits.py`` (weights in ``trisolve_diffusion/weights/digits``, training script included),
``closed_form.py`` (Gaussian-mixture and data-set denoisers) and ``tiny_sd.py``.
"""

__all__ = ["load_digits_pipeline", "load_digits_unet"]


def __getattr__(name: str):
    # lazy, so that ``python -m trisolve_diffusion.models.digits --train`` runs the module once
    if name in __all__:
        from . import digits

        return getattr(digits, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
