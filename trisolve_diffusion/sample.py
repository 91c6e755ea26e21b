"""``sample(pipe, ...)``: the parallel drop-in for ``pipe(...)``.

The pipeline's own preparation (prompt encoding, initial latents, timesteps) and
post-processing (VAE decode, safety checker, image conversion) are reused; only the
denoising loop is replaced by one :func:`trisolve.solve` over the semilinear form of the
scheduler (``schedulers/``), with every noise tensor pre-drawn in the order the sequential
loop draws it.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDIMPipeline, DDPMPipeline, StableDiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

import trisolve

from .network import BatchedDenoiser
from .schedulers import SchedulerMapping, UnsupportedSchedulerError, map_scheduler

__all__ = ["sample", "ParallelImagePipelineOutput", "ParallelStableDiffusionOutput", "ParallelSamplingError", "default_solver"]

#: Pipeline arguments that have no meaning when all steps are solved at once.
_REFUSED = {
    "callback_on_step_end": (
        "a per-step callback cannot run inside a parallel solve; pass callback= (called once per round with a trisolve.RoundInfo) instead"
    ),
    "callback_on_step_end_tensor_inputs": "per-step callbacks are not supported in a parallel solve",
    "callback": "a per-step callback cannot run inside a parallel solve; pass callback= (called once per round) instead",
    "callback_steps": "per-step callbacks are not supported in a parallel solve",
    "ip_adapter_image": "IP-Adapter inputs are not supported by trisolve_diffusion",
    "ip_adapter_image_embeds": "IP-Adapter inputs are not supported by trisolve_diffusion",
    "sigmas": "custom sigmas are not supported; use num_inference_steps or timesteps",
}


class ParallelSamplingError(RuntimeError):
    """The parallel solve stopped on a fault; ``.solution`` keeps what was computed.

    Resume with ``sample(pipe, ..., init=err.solution.trajectory, num_frozen=err.solution.num_frozen)``.
    """

    def __init__(self, message: str, solution: trisolve.Solution):
        super().__init__(message)
        self.solution = solution


@dataclass
class ParallelImagePipelineOutput(ImagePipelineOutput):
    """``ImagePipelineOutput`` with the solve attached: ``solution`` (rounds, evaluations, residuals,
    trajectory) and ``wall_time`` (seconds in the solve)."""

    solution: trisolve.Solution | None = None
    wall_time: float | None = None


@dataclass
class ParallelStableDiffusionOutput(StableDiffusionPipelineOutput):
    """``StableDiffusionPipelineOutput`` with ``solution`` and ``wall_time``."""

    solution: trisolve.Solution | None = None
    wall_time: float | None = None


def default_solver() -> tuple[trisolve.Solver, trisolve.UpdateMap]:
    """The default solver and update map (chosen by the benchmarks, see docs/benchmarks)."""
    return trisolve.TriangularAnderson(history_size=4), trisolve.Picard()


def _bind(pipe: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    for name, why in _REFUSED.items():
        if kwargs.get(name) is not None:
            raise TypeError(f"sample() does not take {name}: {why}.")
    sig = inspect.signature(type(pipe).__call__)
    try:
        bound = sig.bind(pipe, *args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{type(pipe).__name__}: {exc}") from None
    bound.apply_defaults()
    params = dict(bound.arguments)
    params.pop("self", None)
    extra = params.pop("kwargs", {}) or {}
    if extra:
        raise TypeError(f"{type(pipe).__name__}.__call__ got unexpected arguments {sorted(extra)}.")
    return params


def _check_steps(num_inference_steps: Any) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}.")
    return num_inference_steps


def _draw_noise(
    mapping: SchedulerMapping, shape: tuple, generator: Any, device: Any, model_dtype: torch.dtype, traj_dtype: torch.dtype
) -> torch.Tensor:
    """``c_i = noise_scale_i z_i`` for every step, ``(n, *shape)``, drawn in the sequential loop's order."""
    c = torch.zeros((mapping.n, *shape), dtype=traj_dtype, device=device)
    dtype = torch.float32 if mapping.noise_in_float32 else model_dtype
    for i in np.flatnonzero(mapping.noise_drawn):
        z = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        c[i] = float(mapping.noise_scale[i]) * z.to(traj_dtype)
    return c


def _solve(pipe, mapping, denoiser, latents, noise, opts) -> tuple[trisolve.Solution, float]:
    """Run the parallel solve with the user's options and a progress bar."""
    traj_dtype = opts["trajectory_dtype"]
    x0 = latents.to(traj_dtype)

    def g(x_rows, lo, hi):  # the network sees input_scale * x (scale_model_input)
        return mapping.g(x_rows, denoiser(x_rows * mapping.table("input_scale", x_rows)[lo:hi], lo, hi), lo, hi)

    system = trisolve.SemilinearSystem(mapping.a, mapping.B, g, c=noise, sigma=mapping.sigma, batch_ndim=1)
    solver, update_map = opts["solver"], opts["update_map"]
    if update_map is not None and opts["order"] is not None:
        raise ValueError("pass either order= or update_map=, not both (the map carries its own order).")
    d_solver, d_map = default_solver()
    solver = d_solver if solver is None else solver
    if update_map is None:
        update_map = d_map if opts["order"] is None else trisolve.Picard(order=min(opts["order"], system.n))
    window = opts["window_size"]
    if window is not None and not isinstance(window, trisolve.WindowPolicy):
        window = trisolve.SlidingWindow(window)
    n = system.n
    bar = pipe.progress_bar(total=n)
    user_cb = opts["callback"]
    done = [int(opts["num_frozen"]) - 1]

    def on_round(info: trisolve.RoundInfo):
        frozen = min(info.num_frozen - 1, n)
        bar.set_postfix(round=info.round, frozen=frozen, max_res=f"{info.max_error:.3g}", refresh=False)
        bar.update(max(0, frozen - done[0]))
        done[0] = frozen
        return bool(user_cb(info)) if user_cb is not None else False

    init = opts["init"]
    if init is not None:
        init = init.to(device=x0.device, dtype=traj_dtype)
    start = time.perf_counter()
    with torch.no_grad():
        sol = trisolve.solve(
            system,
            solver,
            x0,
            update_map=update_map,
            window=window,
            atol=opts["atol"],
            rtol=opts["rtol"],
            max_iter=opts["max_iter"],
            early_stop=opts["early_stop"],
            callback=on_round,
            init=init,
            num_frozen=opts["num_frozen"],
        )
    elapsed = time.perf_counter() - start
    bar.update(max(0, min(sol.num_frozen - 1, n) - done[0]))
    bar.close()
    if sol.status in (trisolve.Status.FAILED, trisolve.Status.NONFINITE, trisolve.Status.INTERRUPTED):
        raise ParallelSamplingError(f"parallel sampling stopped: {sol.status.name}: {sol.status.message}", sol) from sol.error
    return sol, elapsed


def sample(
    pipe: Any,
    *args: Any,
    solver: trisolve.Solver | None = None,
    update_map: trisolve.UpdateMap | None = None,
    order: int | None = None,
    window_size: int | trisolve.WindowPolicy | None = None,
    atol: float = 5e-4,
    rtol: float = 5e-4,
    max_iter: int | None = None,
    early_stop: float | None = None,
    init: torch.Tensor | None = None,
    num_frozen: int = 1,
    max_batch_size: int | None = None,
    trajectory_dtype: torch.dtype = torch.float32,
    callback: Any = None,
    **kwargs: Any,
) -> ParallelImagePipelineOutput | ParallelStableDiffusionOutput | tuple:
    """Sample from a diffusers pipeline with every denoising step solved in parallel rounds.

    ``pipe(...)`` becomes ``sample(pipe, ...)``: positional and keyword arguments are the
    pipeline's own (prompt, negative_prompt, guidance_scale, num_images_per_prompt, height,
    width, eta, latents, prompt_embeds, generator, output_type, ...); the rest configure the
    solve. With a tight tolerance the result equals the sequential pipeline's for the same
    seed.

    Parameters
    ----------
    pipe : DDPMPipeline, DDIMPipeline or StableDiffusionPipeline
        With a ``DDIMScheduler``, ``DDPMScheduler`` or ``DPMSolverMultistepScheduler``.
    solver : trisolve.Solver, optional
        Default ``TriangularAnderson(history_size=4)``.
    update_map : trisolve.UpdateMap, optional
        Default ``Picard()`` (ParaDiGMS's map over the whole window).
    order : int, optional
        Order ``k`` of the default Picard map (``None``: the whole window).
    window_size : int or WindowPolicy, optional
        Rows per round (``None``: all steps); bounds memory. Fewest rounds with the whole
        window; with a network that already fills the device at a small batch, a window whose
        round batch (``2 x window`` with guidance) sits where the per-sample time stops falling
        is faster (an SD-sized UNet on one H200, DDIM-50: window 8 2.0x, all steps 1.1x; see
        the GPU benchmark).
    atol, rtol : float
        A step is converged when the RMS of its residual (per sample, in latent units) is
        ``<= atol + rtol * sigma_i``, ``sigma_i`` the DDPM posterior std of the step. The
        default 5e-4 ended every benchmark run >= 40 dB from the sequential sample; 1e-3
        (ParaTAA's) left one stochastic DDPM-100 sample at 33 dB.
    max_iter : int, optional
        Most rounds (default: the number of steps, which always suffices).
    early_stop : float, optional
        Stop when the final latent's change between rounds, in tolerance units, is below this.
    init : tensor, shape ``(num_inference_steps + 1, batch, C, H, W)``, optional
        Warm-start trajectory (e.g. ``out.solution.trajectory`` of a similar prompt).
    num_frozen : int
        Keep rows ``0 .. num_frozen - 1`` of ``init`` (variations of an earlier sample).
    max_batch_size : int, optional
        Largest network batch per call (rows x samples x guidance copies).
    trajectory_dtype : torch.dtype
        dtype of the trajectory and residuals (float32 or float64); the network keeps its own.
    callback : callable, optional
        ``callback(info: trisolve.RoundInfo)`` after every round; a true return stops.

    Returns
    -------
    ParallelImagePipelineOutput or ParallelStableDiffusionOutput
        What the pipeline returns, plus ``solution`` and ``wall_time``; a tuple when
        ``return_dict=False`` (the pipeline's tuple followed by the solution).

    Raises
    ------
    ParallelSamplingError
        The network raised, returned nan/inf, or the solve was interrupted; ``.solution``
        keeps the trajectory computed so far.
    """
    if trajectory_dtype not in (torch.float32, torch.float64):
        raise TypeError(f"trajectory_dtype must be torch.float32 or torch.float64, got {trajectory_dtype}.")
    if max_batch_size is not None and (isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1):
        raise ValueError(f"max_batch_size must be an int >= 1 or None, got {max_batch_size!r}.")
    if order is not None and (isinstance(order, bool) or not isinstance(order, int) or order < 1):
        raise ValueError(f"order must be an int >= 1 or None, got {order!r}.")
    opts = dict(
        solver=solver, update_map=update_map, order=order, window_size=window_size, atol=atol, rtol=rtol, max_iter=max_iter,
        early_stop=early_stop, init=init, num_frozen=num_frozen, trajectory_dtype=trajectory_dtype, callback=callback,
    )  # fmt: skip
    with torch.no_grad():  # as the pipelines' own __call__
        if isinstance(pipe, StableDiffusionPipeline):
            return _sample_sd(pipe, _bind(pipe, args, kwargs), opts, max_batch_size)
        if isinstance(pipe, (DDPMPipeline, DDIMPipeline)):
            return _sample_unconditional(pipe, _bind(pipe, args, kwargs), opts, max_batch_size)
    raise TypeError(
        f"sample() supports DDPMPipeline, DDIMPipeline and StableDiffusionPipeline, got {type(pipe).__name__}. "
        "For another sampler, build a trisolve.SemilinearSystem and call trisolve.solve."
    )


def _check_init(init: Any, n: int, shape: tuple) -> None:
    if init is not None and (not isinstance(init, torch.Tensor) or tuple(init.shape) != (n + 1, *shape)):
        got = tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__
        raise ValueError(f"init must be a tensor of shape (num_inference_steps + 1, *latents.shape) = {(n + 1, *shape)}, got {got}.")


def _sample_unconditional(pipe, p, opts, max_batch_size):
    unet, scheduler = pipe.unet, pipe.scheduler
    steps = _check_steps(p["num_inference_steps"])
    batch_size, generator = p["batch_size"], p["generator"]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"You passed {len(generator)} generators for batch_size={batch_size}; pass one per image.")
    size = unet.config.sample_size
    shape = (batch_size, unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    device = pipe._execution_device
    latents = randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)
    scheduler.set_timesteps(steps)
    eta = p.get("eta", 0.0) if isinstance(pipe, DDIMPipeline) else 0.0
    clipped = bool(p.get("use_clipped_model_output") or False) if isinstance(pipe, DDIMPipeline) else False
    mapping = map_scheduler(scheduler, eta=eta, use_clipped_model_output=clipped)
    if np.any(mapping.input_scale != 1.0) or float(scheduler.init_noise_sigma) != 1.0:
        raise UnsupportedSchedulerError(
            f"{type(pipe).__name__}'s loop neither scales the initial noise nor calls scale_model_input, so with "
            f"{type(scheduler).__name__} pipe(...) itself does not sample that scheduler's ODE; use DDIMScheduler, "
            "DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler or PNDMScheduler(skip_prk_steps=True) here."
        )
    _check_init(opts["init"], mapping.n, shape)
    noise = _draw_noise(mapping, shape, generator, device, unet.dtype, opts["trajectory_dtype"])
    denoiser = BatchedDenoiser(unet, mapping.timesteps, max_batch_size=max_batch_size)
    sol, elapsed = _solve(pipe, mapping, denoiser, latents, noise, opts)
    image = sol.trajectory[-1].to(unet.dtype)
    image = (image / 2 + 0.5).clamp(0, 1)
    output_type = p["output_type"]
    if output_type != "pt":
        image = image.cpu().permute(0, 2, 3, 1).numpy()
        if output_type == "pil":
            image = pipe.numpy_to_pil(image)
    pipe.maybe_free_model_hooks()
    if not p["return_dict"]:
        return (image, sol)
    return ParallelImagePipelineOutput(images=image, solution=sol, wall_time=elapsed)


def _sample_sd(pipe, p, opts, max_batch_size):
    prompt, negative_prompt = p["prompt"], p["negative_prompt"]
    prompt_embeds, negative_prompt_embeds = p["prompt_embeds"], p["negative_prompt_embeds"]
    height, width = p["height"], p["width"]
    if not height or not width:
        size = pipe.unet.config.sample_size
        height = size if isinstance(size, int) else size[0]
        width = size if isinstance(size, int) else size[1]
        height, width = height * pipe.vae_scale_factor, width * pipe.vae_scale_factor
    pipe.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds, None, None, ["latents"])
    if isinstance(prompt, list) and isinstance(negative_prompt, list) and len(prompt) != len(negative_prompt):
        raise ValueError(f"negative_prompt has {len(negative_prompt)} entries for {len(prompt)} prompts; give one per prompt.")
    guidance_scale = p["guidance_scale"]
    pipe._guidance_scale = guidance_scale
    pipe._guidance_rescale = p["guidance_rescale"]
    pipe._clip_skip = p["clip_skip"]
    pipe._cross_attention_kwargs = p["cross_attention_kwargs"]
    pipe._interrupt = False
    if prompt is not None and isinstance(prompt, str):
        batch_size = 1
    elif prompt is not None and isinstance(prompt, list):
        batch_size = len(prompt)
    else:
        batch_size = prompt_embeds.shape[0]
    num_images = p["num_images_per_prompt"]
    device = pipe._execution_device
    cak = pipe.cross_attention_kwargs
    lora_scale = cak.get("scale", None) if cak is not None else None
    do_cfg = pipe.do_classifier_free_guidance
    prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
        prompt, device, num_images, do_cfg, negative_prompt,
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
        lora_scale=lora_scale, clip_skip=pipe.clip_skip,
    )  # fmt: skip
    if do_cfg:
        prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    steps = _check_steps(p["num_inference_steps"]) if p["timesteps"] is None else None
    retrieve_timesteps(pipe.scheduler, steps, device, p["timesteps"], None)
    generator = p["generator"]
    total = batch_size * num_images
    latents_in = p["latents"]
    if latents_in is not None:
        expected = (total, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        if not isinstance(latents_in, torch.Tensor) or tuple(latents_in.shape) != expected:
            got = tuple(latents_in.shape) if isinstance(latents_in, torch.Tensor) else type(latents_in).__name__
            raise ValueError(f"latents must have shape (batch * num_images_per_prompt, C, H/8, W/8) = {expected}, got {got}.")
    latents = pipe.prepare_latents(total, pipe.unet.config.in_channels, height, width, prompt_embeds.dtype, device, generator, latents_in)
    step_params = set(inspect.signature(pipe.scheduler.step).parameters)
    eta = p["eta"] if "eta" in step_params else 0.0
    mapping = map_scheduler(pipe.scheduler, eta=eta)
    shape = tuple(latents.shape)
    _check_init(opts["init"], mapping.n, shape)
    step_gen = generator if "generator" in step_params else None
    noise = _draw_noise(mapping, shape, step_gen, device, pipe.unet.dtype, opts["trajectory_dtype"])
    timestep_cond = None
    if pipe.unet.config.time_cond_proj_dim is not None:
        gs = torch.tensor(guidance_scale - 1).repeat(total)
        timestep_cond = pipe.get_guidance_scale_embedding(gs, embedding_dim=pipe.unet.config.time_cond_proj_dim).to(
            device=device, dtype=latents.dtype
        )
    denoiser = BatchedDenoiser(
        pipe.unet, mapping.timesteps, encoder_hidden_states=prompt_embeds, do_guidance=do_cfg, guidance_scale=guidance_scale,
        guidance_rescale=pipe.guidance_rescale if do_cfg else 0.0, timestep_cond=timestep_cond,
        cross_attention_kwargs=cak, max_batch_size=max_batch_size,
    )  # fmt: skip
    sol, elapsed = _solve(pipe, mapping, denoiser, latents, noise, opts)
    latents = sol.trajectory[-1].to(prompt_embeds.dtype)
    output_type = p["output_type"]
    if output_type != "latent":
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        image, has_nsfw = pipe.run_safety_checker(image, device, prompt_embeds.dtype)
    else:
        image, has_nsfw = latents, None
    do_denormalize = [True] * image.shape[0] if has_nsfw is None else [not x for x in has_nsfw]
    image = pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
    pipe.maybe_free_model_hooks()
    if not p["return_dict"]:
        return (image, has_nsfw, sol)
    return ParallelStableDiffusionOutput(images=image, nsfw_content_detected=has_nsfw, solution=sol, wall_time=elapsed)
