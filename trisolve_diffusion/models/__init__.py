"""Models that need no download: the bundled digits DDPM, closed-form denoisers, a tiny Stable Diffusion.

``digits.py`` (weights in ``trisolve_diffusion/weights/digits``, training script included),
``digits_flow.py`` (the rectified-flow model on the same data, weights in ``weights/digits_flow``),
``closed_form.py`` (Gaussian-mixture and data-set denoisers) and ``tiny_sd.py``.
"""

__all__ = ["load_digits_pipeline", "load_digits_unet", "load_digits_flow_pipeline", "load_digits_flow_unet", "DigitsFlowPipeline"]
_FLOW = ("load_digits_flow_pipeline", "load_digits_flow_unet", "DigitsFlowPipeline")


def __getattr__(name: str):
    # lazy, so that ``python -m trisolve_diffusion.models.digits --train`` runs the module once
    if name in _FLOW:
        from . import digits_flow

        return getattr(digits_flow, name)
    if name in __all__:
        from . import digits

        return getattr(digits, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
