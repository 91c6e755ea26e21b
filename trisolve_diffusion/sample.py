"""``sample(pipe, ...)``: the parallel drop-in for ``pipe(...)``, dispatching to one front door per pipeline family.

Each front door (``pipelines/<family>.py``) prepares with the pipeline's own public methods
(prompt encoding, initial latents, timesteps, added conditioning), runs
:func:`~trisolve_diffusion.sample_latents` in place of the denoising loop, and post-processes
with the pipeline's methods (VAE decode, safety checker, image conversion).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    CogVideoXPipeline,
    DDIMPipeline,
    DDPMPipeline,
    FluxPipeline,
    LTXPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    WanPipeline,
)

from trisolve._validate import check_int

from .cost_model import AutoWindow
from .models.flow_pipeline import DigitsFlowPipeline
from .pipelines._common import bind, step_callbacks
from .pipelines.cogvideox import REFUSED_VARIANTS as _COGVIDEOX_REFUSED
from .pipelines.cogvideox import sample_cogvideox
from .pipelines.digits_flow import sample_digits_flow
from .pipelines.flux import sample_flux
from .pipelines.img2img import sample_img2img
from .pipelines.inpaint import sample_inpaint
from .pipelines.ltx import REFUSED_VARIANTS as _LTX_REFUSED
from .pipelines.ltx import sample_ltx
from .pipelines.sd3 import sample_sd3, sample_sd3_img2img
from .pipelines.sdxl import sample_sdxl
from .pipelines.sdxl_img2img import sample_sdxl_img2img
from .pipelines.stable_diffusion import sample_stable_diffusion
from .pipelines.unconditional import sample_unconditional
from .pipelines.wan import REFUSED_VARIANTS as _WAN_REFUSED
from .pipelines.wan import sample_wan
from .sampler import OPTION_NAMES, SolveOptions, options_from_keywords

__all__ = ["sample", "SUPPORTED_PIPELINES"]

#: (pipeline class, front door, the pipeline component that is its network), checked in order with ``isinstance``.
_FRONT_DOORS: list[tuple[type, Any, str]] = [
    (StableDiffusionPipeline, sample_stable_diffusion, "unet"),
    (StableDiffusionImg2ImgPipeline, sample_img2img, "unet"),
    (StableDiffusionInpaintPipeline, sample_inpaint, "unet"),
    (StableDiffusionXLPipeline, sample_sdxl, "unet"),
    (StableDiffusionXLImg2ImgPipeline, sample_sdxl_img2img, "unet"),
    (StableDiffusion3Pipeline, sample_sd3, "transformer"),
    (StableDiffusion3Img2ImgPipeline, sample_sd3_img2img, "transformer"),
    (FluxPipeline, sample_flux, "transformer"),
    (WanPipeline, sample_wan, "transformer"),
    (LTXPipeline, sample_ltx, "transformer"),
    (CogVideoXPipeline, sample_cogvideox, "transformer"),
    (DigitsFlowPipeline, sample_digits_flow, "unet"),
    (DDPMPipeline, sample_unconditional, "unet"),
    (DDIMPipeline, sample_unconditional, "unet"),
]

#: Arguments of ``_common.REFUSED`` that a front door honours.
_HONOURED = {door: frozenset({"sigmas"}) for door in (sample_sd3, sample_sd3_img2img, sample_flux, sample_digits_flow)}

#: Pipeline class name -> why ``sample()`` refuses it (variants of a supported family).
_REFUSED_PIPELINES = {**_WAN_REFUSED, **_LTX_REFUSED, **_COGVIDEOX_REFUSED}

#: Pipeline classes ``sample()`` accepts.
SUPPORTED_PIPELINES: tuple[type, ...] = tuple(cls for cls, _, _ in _FRONT_DOORS)


def _front_door(pipe: Any) -> tuple[Any, str]:
    """``(front door, network component name)`` of a supported pipeline; ``TypeError`` for any other."""
    for cls, front, network in _FRONT_DOORS:
        if isinstance(pipe, cls):
            return front, network
    why = _REFUSED_PIPELINES.get(type(pipe).__name__)
    if why is not None:
        raise TypeError(f"sample() does not support {type(pipe).__name__}: {why}.")
    raise TypeError(
        f"sample() supports {', '.join(c.__name__ for c in SUPPORTED_PIPELINES)}; got {type(pipe).__name__}. "
        "For any other model, prepare the latents yourself and call trisolve_diffusion.sample_latents(denoiser, scheduler, latents) "
        "(see the tutorial 'your own denoiser')."
    )


def sample(
    pipe: Any,
    *args: Any,
    max_batch_size: int | None = None,
    return_solution: bool = False,
    options: SolveOptions | None = None,
    **kwargs: Any,
) -> Any:
    """Sample from a diffusers pipeline with every denoising step solved in parallel rounds.

    ``pipe(...)`` becomes ``sample(pipe, ...)``: positional and keyword arguments are the
    pipeline's own (prompt, negative_prompt, guidance_scale, num_images_per_prompt, height,
    width, eta, latents, prompt_embeds, generator, output_type, return_dict, ...). With a
    tight tolerance the result equals the sequential pipeline's for the same seed.

    Parameters
    ----------
    pipe : diffusers pipeline
        One of :data:`SUPPORTED_PIPELINES`, with a scheduler in :data:`SUPPORTED_SCHEDULERS`
        (see the "Supported pipelines and schedulers" page).
    solver, update_map, window, atol, rtol, final_row_atol, max_iter, callback, progress, strict, distributed, ...
        The solve keywords, the same as :func:`sample_latents`'s (each described under
        :class:`SolveOptions`, also ``early_stop``, ``init``, ``num_frozen``,
        ``trajectory_dtype``; no pipeline argument has one of these names). The progress bar
        is the pipeline's own (``pipe.set_progress_bar_config`` applies) unless
        ``progress=False``. ``callback=`` is *per round*: ``callback(info:
        trisolve.RoundInfo)`` after each parallel round (every step's current iterate, the
        frozen rows); a true return stops the solve. ``window="auto"`` and the default
        ``window=None`` use :meth:`AutoWindow.of(pipe.unet) <trisolve_diffusion.AutoWindow.of>`
        (``pipe.transformer`` for transformer pipelines): measured once per network, its
        latest choice in ``AutoWindow.of(pipe.unet).last_choice``.
    options : SolveOptions, optional
        Deprecated (``DeprecationWarning``): pass the solve keywords themselves.
    callback_on_step_end, callback_on_step_end_tensor_inputs
        diffusers' *per-step* callback, taken as ``pipe(...)`` takes it (a function or a
        ``PipelineCallback``): called once per step, ``callback(pipe, i, t, {"latents": ...})``
        with the same step indices, timesteps and (to the solve's tolerance) latents after
        each step as in ``pipe(...)``, but *after* the solve, in step order. It observes; it
        cannot steer: returning changed latents raises ``ValueError``, and tensor inputs
        other than ``"latents"`` (e.g. ``prompt_embeds`` for a guidance cut-off) raise
        ``TypeError``. Pipeline state that ``pipe(...)`` sets while it runs
        (``pipe.num_timesteps``, ``pipe.interrupt``) is not set.
    max_batch_size : int, optional
        Largest network batch per call (rows x samples x guidance copies); bounds memory.
    return_solution : bool
        Return ``(result, solution)`` instead of ``result``.

    Returns
    -------
    result
        Exactly what ``pipe(...)`` returns: with ``return_dict=False`` the pipeline's tuple
        (``(images, nsfw_content_detected)`` for Stable Diffusion, ``(frames,)`` for Wan,
        LTX-Video and CogVideoX, ``(images,)`` for the others); otherwise the pipeline's output class extended with ``solution``
        (:class:`trisolve.Solution`: trajectory, rounds, evaluations, residuals) and
        ``wall_time`` (seconds in the solve).
    solution : trisolve.Solution
        Only with ``return_solution=True``.

    Raises
    ------
    TypeError
        An unsupported pipeline (the message points to :func:`sample_latents`), an argument
        without meaning in a parallel solve (``callback_steps``, a ``callback_on_step_end``
        reading other tensors than the latents), an unknown argument.
    UnsupportedSchedulerError
        A scheduler or scheduler option without an exact parallel form, or one that the
        pipeline's own loop cannot run or runs mis-scaled (``DDIMPipeline`` runs only DDIM;
        ``DDPMPipeline`` and the flow-matching pipelines never scale their noise or input, so
        not Euler, LMS, Heun or KDPM2, and ``DDPMPipeline`` not UniPC, PNDM or DEIS either):
        ``sample()`` returns only what ``pipe(...)`` computes. The message says what to swap to.
    ParallelSamplingError
        The network raised or returned nan/inf; ``.solution`` keeps the partial work (resume
        with ``init=err.solution.trajectory, num_frozen=err.solution.num_frozen``).
    SamplingInterrupted
        Ctrl-C: a :class:`KeyboardInterrupt` carrying ``.solution``.
    UnconvergedSampleError
        With ``strict=True``, when the solve ends before every step is within tolerance
        (``max_iter``, ``early_stop``, a stopping callback). Without it an
        :class:`UnconvergedSampleWarning` is issued: an unconverged image is never returned
        silently.

    Examples
    --------
    >>> import torch, trisolve_diffusion as td
    >>> from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion
    >>> pipe = build_tiny_stable_diffusion()
    >>> images, nsfw = td.sample(pipe, "a cat", num_inference_steps=4, generator=torch.manual_seed(0),
    ...                          output_type="np", return_dict=False, progress=False)
    >>> images.shape
    (1, 32, 32, 3)
    """
    options = options_from_keywords({k: kwargs.pop(k) for k in list(kwargs) if k in OPTION_NAMES}, options, caller="sample")
    if max_batch_size is not None:
        max_batch_size = check_int("max_batch_size", max_batch_size, 1, hint="or None")
    front, network = _front_door(pipe)
    if options.window == "auto" or (options.window is None and options.init is None):  # the automatic window, given the network
        options = options.replace(window=AutoWindow.of(getattr(pipe, network)))
    replay = step_callbacks(pipe, kwargs)
    params = bind(pipe, args, kwargs, allow=_HONOURED.get(front, frozenset()))
    with torch.no_grad():  # as the pipelines' own __call__
        result, solution = front(pipe, params, options, max_batch_size)
        if replay is not None:
            replay(solution)
    return (result, solution) if return_solution else result
