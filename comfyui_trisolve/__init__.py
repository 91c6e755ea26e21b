"""trisolve for ComfyUI: a SAMPLER node that runs k-diffusion samplers in parallel rounds, exact to ComfyUI's loop.

Install: copy (or symlink) this folder into ``ComfyUI/custom_nodes/`` and ``pip install
trisolve[diffusers]`` into ComfyUI's Python, or ``pip install ./comfyui_trisolve`` from a
trisolve checkout. The node "Trisolve parallel sampler" (``TrisolveSampler``, category
``sampling/custom_sampling/samplers``) outputs a ``SAMPLER`` for ``SamplerCustom`` /
``SamplerCustomAdvanced``. See docs/comfyui.rst and ``workflow_api.json``.
"""

from __future__ import annotations

from .sampler import DEFAULT_TOLERANCE, SAMPLERS, parallel_sample, sequential_reason

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "TrisolveSampler", "parallel_sample", "sequential_reason", "SAMPLERS"]


class TrisolveSampler:
    """ComfyUI node: a ``SAMPLER`` built on ``comfy.samplers.KSAMPLER(parallel_sample, extra_options=...)``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sampler_name": (list(SAMPLERS), {"default": "euler"}),
                "tolerance": ("FLOAT", {"default": DEFAULT_TOLERANCE.atol, "min": 1e-7, "max": 1.0, "step": 1e-4, "round": False,
                                        "tooltip": "atol = rtol of the solve; the default ended every test >= 45 dB from the sequential loop"}),
                "window": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": "rows per round; 0: all rows"}),
                "max_iter": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": "most rounds; 0: as many as rows (always exact)"}),
                "max_rows_per_call": ("INT", {"default": 0, "min": 0, "max": 10000,
                                              "tooltip": "rows (each a whole batch) per model call; 0: planned from free memory"}),
                "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False}),
                "s_noise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False}),
                "check_model": ("BOOLEAN", {"default": True, "tooltip": "two extra model calls that catch a model reading one sigma per batch"}),
            }
        }  # fmt: skip

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = "sampling/custom_sampling/samplers"

    def get_sampler(self, sampler_name, tolerance, window, max_iter, max_rows_per_call, eta, s_noise, check_model):
        import comfy.samplers

        options = dict(sampler_name=sampler_name, tolerance=tolerance, window=window, max_iter=max_iter, max_rows_per_call=max_rows_per_call,
                       eta=eta, s_noise=s_noise, check_model=check_model)  # fmt: skip
        return (comfy.samplers.KSAMPLER(parallel_sample, extra_options=options),)


NODE_CLASS_MAPPINGS = {"TrisolveSampler": TrisolveSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"TrisolveSampler": "Trisolve parallel sampler"}
