"""The sampler function behind the node: ComfyUI's ``KSAMPLER`` calls it as it calls ``comfy.k_diffusion.sampling.sample_*``.

``KSAMPLER(fn, extra_options).sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask)``
calls ``fn(model_k, x, sigmas, extra_args=..., callback=..., disable=..., **extra_options)`` with
``model_k`` ComfyUI's ``KSamplerX0Inpaint`` (the inpaint blend around the guided model). Here ``fn``
is :func:`parallel_sample`: the parallel k-diffusion sampler of ``trisolve_diffusion.k_diffusion``
in ComfyUI's loop convention (``COMFYUI``), after checking the cases ComfyUI handles per batch
rather than per row. Where the parallel rounds cannot be exact it runs ComfyUI's own sequential
sampler and says why (:func:`sequential_reason`).

ComfyUI is imported inside the functions, so that this module imports without it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from trisolve_diffusion import ParallelSamplingError
from trisolve_diffusion import k_diffusion as K
from trisolve_diffusion.sampler import DEFAULT_TOLERANCE

log = logging.getLogger("comfyui_trisolve")

#: Node sampler name -> (k-diffusion sampler, keyword arguments the node passes on). The SDE samplers
#: use per-step Gaussian noise (ComfyUI's ``default_noise_sampler(x, seed)``), not ComfyUI's default
#: Brownian tree: they equal ComfyUI's ``sample_dpmpp_2m_sde`` given that noise sampler.
SAMPLERS = {
    "euler": ("euler", ()),
    "euler_ancestral": ("euler_ancestral", ("eta", "s_noise")),
    "heun": ("heun", ()),
    "dpm_2": ("dpm_2", ()),
    "dpm_2_ancestral": ("dpm_2_ancestral", ("eta", "s_noise")),
    "lms": ("lms", ()),
    "dpmpp_2m": ("dpmpp_2m", ()),
    "dpmpp_2s_ancestral": ("dpmpp_2s_ancestral", ("eta", "s_noise")),
    "dpmpp_2m_sde_gaussian": ("dpmpp_2m_sde", ("eta", "s_noise")),
    "dpmpp_3m_sde_gaussian": ("dpmpp_3m_sde", ("eta", "s_noise")),
}
_NOISY = {"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"}
#: samplers ComfyUI replaces by a different loop for flow models (``model_sampling`` ``CONST``)
_NOT_FOR_FLOW = _NOISY


def _conds(model_k: Any) -> list[dict]:
    """Every condition dict of the guider (``model_k.inner_model`` is ComfyUI's ``CFGGuider``)."""
    conds = getattr(model_k.inner_model, "conds", None) or {}
    return [c for group in conds.values() if group for c in group]


def _controlnets(control: Any):
    while control is not None:
        yield control
        control = getattr(control, "previous_controlnet", None)


def sequential_reason(model_k: Any, kd_name: str) -> str | None:
    """Why the parallel rows would not equal ComfyUI's loop for this model and conditioning, or ``None``.

    ComfyUI decides some things on the batch's first timestep (``timestep[0]``), while a parallel
    round calls the model on many rows at different sigmas in one batch:

    - conditioning with a timestep range (``ConditioningSetTimestepRange``, ``timestep_start`` /
      ``timestep_end``), decided in ``get_area_and_mult`` on ``timestep_in[0]``;
    - a ControlNet with a start/end percent other than 0-1 (``get_control`` tests ``t[0]``);
    - hooks (``comfy.hooks``), whose keyframes are chosen per call from the timestep;
    - for flow models (``CONST``), the ancestral and SDE samplers, which ComfyUI replaces by its
      ``_RF`` loops (not mapped here).
    """
    import comfy.model_sampling

    for c in _conds(model_k):
        if "timestep_start" in c or "timestep_end" in c:
            return "a conditioning has a timestep range, which ComfyUI applies on the batch's first sigma"
        if c.get("hooks") is not None:
            return "a conditioning has hooks, whose keyframes ComfyUI chooses per call from the timestep"
        for cn in _controlnets(c.get("control")):
            if tuple(getattr(cn, "timestep_percent_range", (0.0, 1.0))) != (0.0, 1.0):
                return "a ControlNet has a start/end percent, which ComfyUI applies on the batch's first sigma"
    sampling = model_k.inner_model.inner_model.model_sampling
    if kd_name in _NOT_FOR_FLOW and isinstance(sampling, comfy.model_sampling.CONST):
        return f"ComfyUI runs a different loop (sample_{kd_name}_RF or a logit-SNR form) for flow models"
    return None


class _RowsModel:
    """``model_k`` called on ``rows * B`` samples: ComfyUI's inpaint tensors (``noise``, ``latent_image``,
    ``denoise_mask``) have the user's batch ``B`` and broadcast only for ``B = 1``; tile them per row.

    The rows of a round are laid out row-major, ``(rows, B)`` flattened, which is also how ComfyUI
    tiles conditioning to a larger batch (``repeat_to_batch_size``).
    """

    def __init__(self, model_k: Any, batch: int):
        self.model_k, self.batch = model_k, batch
        self.inner_model = model_k.inner_model

    def _tile(self, t: Any, reps: int) -> Any:
        if isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] == self.batch:
            return t.repeat((reps,) + (1,) * (t.ndim - 1))
        return t

    def __call__(self, x, sigma, denoise_mask=None, **kwargs):
        reps = x.shape[0] // self.batch
        if reps <= 1 or self.batch == 1:
            return self.model_k(x, sigma, denoise_mask=denoise_mask, **kwargs)
        mk = self.model_k
        noise, latent = getattr(mk, "noise", None), getattr(mk, "latent_image", None)
        try:
            mk.noise, mk.latent_image = self._tile(noise, reps), self._tile(latent, reps)
            return mk(x, sigma, denoise_mask=self._tile(denoise_mask, reps), **kwargs)
        finally:
            mk.noise, mk.latent_image = noise, latent


def rows_per_call(model_k: Any, x: torch.Tensor, max_rows: int) -> int:
    """The most rows one model call may take, planned for the user's batch as ComfyUI plans a call.

    ComfyUI sizes a call by ``model.memory_required(shape) * 1.5 < free memory`` for the
    conditioned and unconditioned halves of the batch (``_calc_cond_batch``); one row here is one
    batch, so the rows per call are the most ``r <= max_rows`` with
    ``memory_required((2 r B, ...)) * 1.5`` below the device's free memory (at least 1).
    """
    import comfy.model_management

    base = model_k.inner_model.inner_model
    free = comfy.model_management.get_free_memory(x.device)
    lo, hi = 1, max_rows
    while lo < hi:  # the largest r that fits (memory_required grows with the batch)
        r = (lo + hi + 1) // 2
        if base.memory_required([2 * r * x.shape[0], *x.shape[1:]]) * 1.5 < free:
            lo = r
        else:
            hi = r - 1
    return lo


def parallel_sample(model, x, sigmas, extra_args=None, callback=None, disable=None, *, sampler_name="euler", eta=1.0, s_noise=1.0,
                    tolerance=DEFAULT_TOLERANCE.atol, window=0, max_iter=0, max_rows_per_call=0, check_model=True):  # fmt: skip
    """A ComfyUI sampler function: the parallel ``sampler_name`` (see :data:`SAMPLERS`), or ComfyUI's own where it cannot be exact.

    ``tolerance``: ``atol = rtol`` of the solve (the solve keywords, :class:`trisolve_diffusion.SolveOptions`;
    default :data:`trisolve_diffusion.sampler.DEFAULT_TOLERANCE`);
    ``window``: rows per round (0: all); ``max_iter``: most rounds (0: as many as rows, which
    always suffices); ``max_rows_per_call``: rows per model call (0: planned from free memory,
    :func:`rows_per_call`); ``check_model``: the batched-sigma check of the k-diffusion samplers.
    """
    import comfy.k_diffusion.sampling as comfy_sampling
    import comfy.model_management

    if sampler_name not in SAMPLERS:
        raise ValueError(f"sampler_name must be one of {sorted(SAMPLERS)}, got {sampler_name!r}.")
    kd_name, keys = SAMPLERS[sampler_name]
    extra_args = {} if extra_args is None else extra_args
    kwargs = {k: v for k, v in (("eta", eta), ("s_noise", s_noise)) if k in keys}
    if kd_name in _NOISY:  # ComfyUI's default: per-step Gaussian noise from the seed, drawn in step order
        kwargs["noise_sampler"] = comfy_sampling.default_noise_sampler(x, seed=extra_args.get("seed"))
    reason = sequential_reason(model, kd_name)
    if reason is not None:
        log.warning("trisolve: %s; running ComfyUI's sequential sample_%s instead (same result, no parallel rounds).", reason, kd_name)
        return getattr(comfy_sampling, f"sample_{kd_name}")(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **kwargs)
    n_rows = 2 * (len(sigmas) - 1)  # at most two rows per step
    rows = max_rows_per_call if max_rows_per_call > 0 else rows_per_call(model, x, n_rows)
    solve = dict(atol=tolerance, rtol=tolerance, window=window or None, max_iter=max_iter or None)
    fn = K.SAMPLERS[kd_name]
    try:
        return fn(_RowsModel(model, x.shape[0]), x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                  check_model=check_model, max_rows_per_call=rows, convention=K.COMFYUI, **solve, **kwargs)  # fmt: skip
    except ParallelSamplingError as err:  # Cancel in ComfyUI raises inside the model call: pass it on as ComfyUI's own
        if isinstance(err.__cause__, comfy.model_management.InterruptProcessingException):
            raise err.__cause__ from None
        raise
