"""Reliability of the diffusion layer (issue 24): custom schedules, short multistep schedules, what a
denoiser may return, bad arguments, the automatic window's cache, and what the bundled pipelines' own
loops can run.

Every parity check compares with the real diffusers loop (``scheduler.step`` or ``pipe(...)``).
"""

from __future__ import annotations

import gc
import inspect
import warnings

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)

import trisolve
import trisolve_diffusion as td
from trisolve_diffusion import cost_model
from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion
from trisolve_diffusion.schedulers import UnsupportedSchedulerError

T = 1000
TIGHT = dict(atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, progress=False, window=trisolve.FullWindow())  # no timing
SHAPE = (2, 2, 4, 4)


def toy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in network that depends on its timestep."""
    return 0.5 * torch.tanh(x) + 1e-4 * t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) * x


def step_loop(denoiser, scheduler, latents, generator=None):
    """The loop a pipeline runs: scale_model_input, the network, scheduler.step (generator where step takes one)."""
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    x = latents
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x  # flow matching has none
        out = denoiser(inp, t.reshape(1).expand(x.shape[0]))
        kw = {"generator": generator} if takes_generator else {}
        x = scheduler.step(out, t, x, **kw).prev_sample
    return x


def check_against_loop(make, set_kw, *, seed=0):
    """``sample_latents`` on ``make()`` after ``set_timesteps(**set_kw)`` equals the step loop on a fresh copy."""
    sched, ref_sched = make(), make()
    sched.set_timesteps(**set_kw)
    ref_sched.set_timesteps(**set_kw)
    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * float(getattr(sched, "init_noise_sigma", 1.0))
    ref = step_loop(toy, ref_sched, latents.clone(), torch.Generator().manual_seed(7))
    final, sol = td.sample_latents(toy, sched, latents, generator=torch.Generator().manual_seed(7), **TIGHT)
    assert sol.converged
    torch.testing.assert_close(final, ref, atol=2e-5, rtol=1e-5)  # diffusers steps in float32
    return sol


# -- 1. custom timesteps and sigmas -----------------------------------------------------------------
# every supported scheduler whose set_timesteps takes timesteps= or sigmas= in diffusers 0.42
CUSTOM = [
    ("ddpm-timesteps", lambda: DDPMScheduler(num_train_timesteps=T, clip_sample=False), dict(timesteps=[900, 500, 100, 0])),
    ("ddpm-timesteps-uneven", lambda: DDPMScheduler(num_train_timesteps=T), dict(timesteps=[999, 700, 650, 300, 20])),
    ("dpm++2m-timesteps", lambda: DPMSolverMultistepScheduler(num_train_timesteps=T), dict(timesteps=[900, 600, 400, 200, 50])),
    ("dpm++3m-timesteps", lambda: DPMSolverMultistepScheduler(solver_order=3), dict(timesteps=[999, 800, 500, 300, 100, 10])),
    ("dpm-singlestep-timesteps", lambda: DPMSolverSinglestepScheduler(num_train_timesteps=T), dict(timesteps=[900, 600, 400, 200, 50])),
    ("euler-timesteps", lambda: EulerDiscreteScheduler(num_train_timesteps=T), dict(timesteps=[900, 500, 250, 100, 10])),
    ("euler-sigmas", lambda: EulerDiscreteScheduler(num_train_timesteps=T), dict(sigmas=[10.0, 4.0, 1.5, 0.5, 0.1, 0.0])),
    ("heun-timesteps", lambda: HeunDiscreteScheduler(num_train_timesteps=T), dict(timesteps=[900, 500, 250, 100])),
    ("flow-sigmas", lambda: FlowMatchEulerDiscreteScheduler(), dict(sigmas=[1.0, 0.7, 0.4, 0.15])),
    ("flow-timesteps", lambda: FlowMatchEulerDiscreteScheduler(), dict(timesteps=[1000.0, 750.0, 400.0, 100.0])),
    ("unipc-flow-sigmas", lambda: UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"),
     dict(sigmas=np.array([1.0, 0.6, 0.3, 0.1]))),  # fmt: skip
]


@pytest.mark.parametrize("name,make,set_kw", CUSTOM, ids=[c[0] for c in CUSTOM])
def test_custom_timesteps_and_sigmas_match_the_step_loop(name, make, set_kw):
    sol = check_against_loop(make, set_kw)
    assert sol.trajectory.shape[0] == 1 + len(td.map_scheduler(_set(make, set_kw)).a)


def _set(make, set_kw):
    s = make()
    s.set_timesteps(**set_kw)
    return s


def test_every_custom_schedule_form_of_the_supported_schedulers_is_covered():
    """The audit as a test: a scheduler that gains timesteps=/sigmas= in diffusers gets a CUSTOM case or a refusal case."""
    covered = {type(make()).__name__ for _, make, _ in CUSTOM}
    takes_custom = {
        cls.__name__
        for cls in td.SUPPORTED_SCHEDULERS
        if {"timesteps", "sigmas"} & set(inspect.signature(cls.set_timesteps).parameters)
    }
    assert takes_custom <= covered, takes_custom - covered


#: schedulers whose __init__ does not run set_timesteps itself (LMS, Heun and KDPM2 do, for the training length)
UNSET_AFTER_INIT = [cls for cls in td.SUPPORTED_SCHEDULERS if getattr(cls(), "num_inference_steps", None) is None]


@pytest.mark.parametrize("cls", UNSET_AFTER_INIT, ids=lambda c: c.__name__)
def test_a_scheduler_without_set_timesteps_is_still_refused(cls):
    assert len(UNSET_AFTER_INIT) >= 10
    with pytest.raises(ValueError, match=r"call scheduler.set_timesteps"):
        td.map_scheduler(cls())


def test_custom_timesteps_through_stable_diffusion_match_the_pipeline():
    pipe = build_tiny_stable_diffusion(seed=0)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a cat", timesteps=[900, 500, 100, 0], output_type="np")
    ref = pipe(generator=torch.manual_seed(3), **kw).images
    out = td.sample(pipe, generator=torch.manual_seed(3), atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, **kw)
    assert out.solution.converged and out.solution.trajectory.shape[0] == 5
    np.testing.assert_allclose(out.images, ref, atol=2e-5, rtol=0)


# -- 2. multistep schedulers on schedules shorter than their order -----------------------------------
SHORT = [
    ("lms", lambda: LMSDiscreteScheduler(num_train_timesteps=T)),
    ("unipc-1", lambda: UniPCMultistepScheduler(num_train_timesteps=T, solver_order=1)),
    ("unipc-2", lambda: UniPCMultistepScheduler(num_train_timesteps=T, solver_order=2)),
    ("unipc-3", lambda: UniPCMultistepScheduler(num_train_timesteps=T, solver_order=3)),
    ("dpm-1", lambda: DPMSolverMultistepScheduler(num_train_timesteps=T, solver_order=1)),
    ("dpm-2", lambda: DPMSolverMultistepScheduler(num_train_timesteps=T, solver_order=2)),
    ("dpm-3", lambda: DPMSolverMultistepScheduler(num_train_timesteps=T, solver_order=3)),
    ("dpm-3-no-lower-final", lambda: DPMSolverMultistepScheduler(num_train_timesteps=T, solver_order=3, lower_order_final=False)),
    ("dpm-singlestep-3", lambda: DPMSolverSinglestepScheduler(num_train_timesteps=T, solver_order=3)),
    ("deis-1", lambda: DEISMultistepScheduler(num_train_timesteps=T, solver_order=1)),
    ("deis-2", lambda: DEISMultistepScheduler(num_train_timesteps=T, solver_order=2)),
    ("deis-3", lambda: DEISMultistepScheduler(num_train_timesteps=T, solver_order=3)),
]


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("name,make", SHORT, ids=[c[0] for c in SHORT])
def test_short_schedules_match_the_step_loop(name, make, steps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' own notes on odd step counts
        check_against_loop(make, dict(num_inference_steps=steps))


@pytest.mark.parametrize(
    "make",
    [lambda cfg: LMSDiscreteScheduler.from_config(cfg), lambda cfg: UniPCMultistepScheduler.from_config(cfg, solver_order=3)],
    ids=["lms", "unipc-3"],
)
def test_short_schedules_through_stable_diffusion_match_the_pipeline(make):
    pipe = build_tiny_stable_diffusion(seed=0)
    pipe.scheduler = make(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a cat", num_inference_steps=2, output_type="np")
    ref = pipe(generator=torch.manual_seed(1), **kw).images
    out = td.sample(pipe, generator=torch.manual_seed(1), atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, **kw)
    assert out.solution.converged
    np.testing.assert_allclose(out.images, ref, atol=2e-5, rtol=0)


# -- 3. what the denoiser returns ----------------------------------------------------------------------
class _Output:  # what a diffusers model returns with return_dict=True
    def __init__(self, sample):
        self.sample = sample


BAD_OUTPUTS = [
    ("wrong-shape", lambda x, t: x[:, :1], ValueError, r"returned shape \(8, 1, 4, 4\).*input's shape \(8, 2, 4, 4\)"),
    ("wrong-batch", lambda x, t: x[:1], ValueError, r"returned shape \(1, 2, 4, 4\)"),
    ("tuple", lambda x, t: (x,), TypeError, r"returned a builtins.tuple .*\.sample, or \[0\]"),
    ("model-output", lambda x, t: _Output(x), TypeError, r"returned a .*_Output .*\.sample"),
    ("none", lambda x, t: None, TypeError, r"returned None; it must return a floating-point torch tensor"),
    ("numpy", lambda x, t: x.numpy(), TypeError, r"returned a numpy.ndarray; it must return a floating-point torch tensor"),
    ("int", lambda x, t: (10 * x).to(torch.int64), TypeError, r"returned dtype torch.int64"),
    ("bool", lambda x, t: x > 0, TypeError, r"returned dtype torch.bool"),
]


@pytest.mark.parametrize("name,den,cause,match", BAD_OUTPUTS, ids=[b[0] for b in BAD_OUTPUTS])
def test_a_bad_denoiser_output_is_named_in_the_error(name, den, cause, match):
    sched = _set(lambda: DDIMScheduler(num_train_timesteps=100), dict(num_inference_steps=4))
    with pytest.raises(td.ParallelSamplingError, match=match) as info:
        td.sample_latents(den, sched, torch.randn(SHAPE), **TIGHT)
    assert isinstance(info.value.__cause__, cause)
    assert info.value.solution.trajectory.shape == (5, *SHAPE)  # the work so far is kept


def test_a_low_precision_float_output_is_still_accepted():
    sched = _set(lambda: DDIMScheduler(num_train_timesteps=100), dict(num_inference_steps=4))
    final, sol = td.sample_latents(lambda x, t: toy(x, t).to(torch.bfloat16), sched, torch.randn(SHAPE), **TIGHT)
    assert sol.converged and final.dtype == torch.float32


# -- 4. arguments on the meta device -------------------------------------------------------------------
@pytest.mark.parametrize("argument", ["latents", "init", "mask", "known_latents"])
def test_meta_tensors_are_named(argument):
    sched = _set(lambda: DDIMScheduler(num_train_timesteps=100), dict(num_inference_steps=3))
    args = dict(latents=torch.randn(SHAPE), init=None, mask=torch.ones(1, 1, 4, 4), known_latents=torch.zeros(3, *SHAPE))
    if argument == "init":
        args["init"] = torch.zeros(4, *SHAPE)
    args[argument] = args[argument].to("meta")
    opts = TIGHT | dict(init=args.pop("init"))
    with pytest.raises(ValueError, match=rf"^{argument} is on the meta device"):
        td.sample_latents(toy, sched, args.pop("latents"), **opts, **args)


def test_a_mask_that_is_not_a_tensor_is_named():
    sched = _set(lambda: DDIMScheduler(num_train_timesteps=100), dict(num_inference_steps=3))
    with pytest.raises(TypeError, match="mask must be a torch tensor"):
        td.sample_latents(toy, sched, torch.randn(SHAPE), **TIGHT, mask=np.ones((1, 1, 4, 4)), known_latents=torch.zeros(3, *SHAPE))


# -- 5. NumPy scalars for every numeric option ---------------------------------------------------------
OPTION_VALUES = dict(window=2, atol=1e-6, rtol=1e-6, max_iter=50, early_stop=1e-9, final_row_atol=1e-9, num_frozen=1)


@pytest.mark.parametrize("name", sorted(OPTION_VALUES))
def test_solve_options_take_numpy_scalars_and_store_python_numbers(name):
    value = OPTION_VALUES[name]
    np_value = np.int64(value) if isinstance(value, int) else np.float32(value)
    opts = td.SolveOptions(**{name: np_value})  # the carrier the solve keywords are stored in
    assert type(getattr(opts, name)) is type(value) and getattr(opts, name) == pytest.approx(value, rel=1e-6)
    with pytest.raises(TypeError, match=name):
        td.SolveOptions(**{name: True})
    with pytest.raises((TypeError, ValueError), match=name):
        td.SolveOptions(**{name: "1"})


def test_sample_latents_takes_numpy_scalars_with_the_same_result():
    sched = _set(lambda: DDIMScheduler(num_train_timesteps=100), dict(num_inference_steps=5))
    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    opts = TIGHT | dict(max_iter=np.int64(50), window=np.int64(3), update_map=trisolve.Picard(order=np.int64(2)))
    a, _ = td.sample_latents(toy, sched, latents, generator=torch.manual_seed(1), **opts, eta=np.float32(0.5), begin_index=np.int64(0))
    same = TIGHT | dict(max_iter=50, window=3, update_map=trisolve.Picard(order=2))
    b, _ = td.sample_latents(toy, sched, latents, generator=torch.manual_seed(1), **same, eta=0.5)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    np.testing.assert_array_equal(td.map_scheduler(sched, eta=np.float32(0.5)).noise_scale, td.map_scheduler(sched, eta=0.5).noise_scale)
    with pytest.raises(TypeError, match="eta must be a real number"):
        td.sample_latents(toy, sched, latents, **TIGHT, eta="0.5")
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        td.sample_latents(toy, sched, latents, **TIGHT, eta=-1.0)
    with pytest.raises(TypeError, match="begin_index must be an int"):
        td.sample_latents(toy, sched, latents, **TIGHT, begin_index=1.0)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=8, in_channels=2, out_channels=2, block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8,
    )  # fmt: skip
    return model.eval()


def test_sample_takes_numpy_scalars(unet):
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(output_type="np", atol=1e-7, rtol=0.0)
    ref = td.sample(pipe, batch_size=2, num_inference_steps=3, eta=0.5, max_batch_size=3, generator=torch.manual_seed(0), **kw).images
    out = td.sample(
        pipe, batch_size=np.int64(2), num_inference_steps=np.int64(3), eta=np.float32(0.5), max_batch_size=np.int64(3),
        generator=torch.manual_seed(0), max_iter=np.int64(10), **kw,
    )  # fmt: skip
    np.testing.assert_array_equal(out.images, ref)
    with pytest.raises(TypeError, match="max_batch_size must be an int"):
        td.sample(pipe, max_batch_size=2.0)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0 and <= 1"):
        td.sample(pipe, eta=np.float32(1.5))


def test_network_helpers_take_numpy_scalars(unet):
    assert td.UNetDenoiser(unet, max_batch_size=np.int64(4)).max_batch_size == 4
    x, t = torch.randn(2, 2, 8, 8), torch.zeros(2)
    model = lambda x2, t2: torch.cat([0 * x2[:2], x2[2:]])  # noqa: E731  uncond 0, cond x
    torch.testing.assert_close(td.classifier_free_guidance(model, np.float32(3.0), guidance_rescale=np.float64(0.0))(x, t), 3 * x)
    with pytest.raises(TypeError, match="guidance_scale"):
        td.classifier_free_guidance(model, "3")


# -- 6. the automatic window's cache: by identity, never by name ---------------------------------------
def test_auto_window_measures_each_network_less_denoiser_once_by_identity():
    sched = _set(lambda: DDIMScheduler(num_train_timesteps=100), dict(num_inference_steps=6))
    latents = torch.randn(1, 1, 2, 2)
    calls = {"cheap": 0, "costly": 0}

    def counting(name, work):
        def den(x, t):
            calls[name] += 1
            y = x
            for _ in range(work):
                y = torch.tanh(y @ torch.ones(2, 2) / 2)
            return 0.1 * y

        return den

    cheap, costly = counting("cheap", 1), counting("costly", 200)
    assert cheap.__qualname__ == costly.__qualname__  # the name the cache used to key on
    opts = dict(window="auto", progress=False, solver=trisolve.Jacobi())

    def rounds_and_calls(den, name):
        calls[name] = 0
        _, sol = td.sample_latents(den, sched, latents, **opts)
        return sol.num_rounds, calls[name]

    rounds, n_calls = rounds_and_calls(cheap, "cheap")
    assert n_calls > rounds  # measured: more calls than the solve's rounds
    cheap_curve = td.AutoWindow.of(cheap).last_choice.model.curve
    rounds, n_calls = rounds_and_calls(costly, "costly")
    assert n_calls > rounds  # the second denoiser is measured too, not given the first one's curve
    assert td.AutoWindow.of(costly).last_choice.model.curve is not cheap_curve
    rounds, n_calls = rounds_and_calls(cheap, "cheap")
    assert n_calls == rounds  # the same denoiser again: its own curve, from its policy's cache
    entries = len(cost_model._POLICIES)
    del cheap
    gc.collect()
    assert len(cost_model._POLICIES) == entries - 1  # the policy goes with its denoiser


# -- 7. what the pipelines whose loop neither scales nor passes step arguments by signature can run -------
def _scheduler(cls):
    kw = {} if cls is FlowMatchEulerDiscreteScheduler else {"num_train_timesteps": 100}
    if cls is PNDMScheduler:
        kw["skip_prk_steps"] = True
    return cls(**kw)


@pytest.fixture(scope="module")
def pipelines(unet):
    """Tiny pipelines whose own loop calls ``scheduler.step`` with fixed keywords and never scales: (pipe, call kwargs)."""
    from trisolve_diffusion.models.digits_flow import DigitsFlowPipeline, build_unet
    from trisolve_diffusion.models.tiny_flow import build_tiny_flux, build_tiny_sd3
    from trisolve_diffusion.models.tiny_video import build_tiny_ltx, build_tiny_wan

    torch.manual_seed(0)
    return {
        "DDPMPipeline": (DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)), {}),
        "DDIMPipeline": (DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100)), {}),
        "DigitsFlowPipeline": (DigitsFlowPipeline(unet=build_unet().eval(), scheduler=FlowMatchEulerDiscreteScheduler()), {}),
        "StableDiffusion3Pipeline": (build_tiny_sd3(text_encoders=False), {"prompt_embeds": None}),
        "FluxPipeline": (build_tiny_flux(), {"prompt": "a cat"}),
        "WanPipeline": (build_tiny_wan(), VIDEO),
        "LTXPipeline": (build_tiny_ltx(), dict(VIDEO, height=32, width=32)),
    }


VIDEO = dict(prompt="a cat", height=16, width=16, num_frames=5, max_sequence_length=8, guidance_scale=1.0, output_type="latent")


def _call_kwargs(pipe, extra):
    if "prompt_embeds" in extra:  # SD3 without text encoders: embeddings given
        g = torch.Generator().manual_seed(5)
        d = pipe.transformer.config
        return dict(prompt_embeds=torch.randn(1, 4, d.joint_attention_dim, generator=g),
                    pooled_prompt_embeds=torch.randn(1, d.pooled_projection_dim, generator=g), guidance_scale=1.0)  # fmt: skip
    return extra


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(
    "pipe_name", ["DDPMPipeline", "DDIMPipeline", "DigitsFlowPipeline", "StableDiffusion3Pipeline", "FluxPipeline", "WanPipeline", "LTXPipeline"]
)
@pytest.mark.parametrize("sched_cls", td.SUPPORTED_SCHEDULERS, ids=lambda c: c.__name__)
def test_sample_returns_an_image_only_where_the_pipelines_own_loop_runs(pipelines, pipe_name, sched_cls):
    pipe, extra = pipelines[pipe_name]
    own = pipe.scheduler
    pipe.scheduler = _scheduler(sched_cls)
    pipe.set_progress_bar_config(disable=True)
    kw = dict({"num_inference_steps": 3, "output_type": "np"}, **_call_kwargs(pipe, extra))
    result = (lambda out: out.frames) if "num_frames" in kw else (lambda out: out.images)  # noqa: E731
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = result(pipe(generator=torch.manual_seed(0), **kw))
        except (TypeError, ValueError, AttributeError) as exc:  # pipe(...) cannot run it: neither may sample()
            if ".step() got an unexpected keyword argument" in str(exc):  # the loop's step() keywords: refused up front
                expected, match = UnsupportedSchedulerError, rf"{pipe_name}'s own loop calls scheduler.step.*{sched_cls.__name__}"
            else:  # e.g. set_timesteps(sigmas=, mu=) in Flux's preparation, which the front door shares
                expected, match = type(exc), None
            with pytest.raises(expected, match=match):
                td.sample(pipe, generator=torch.manual_seed(0), progress=False, **kw)
            return
        if float(getattr(pipe.scheduler, "init_noise_sigma", 1.0)) != 1.0:  # runs, but mis-scaled: no model of it to match
            with pytest.raises(UnsupportedSchedulerError, match="mis-scaled"):
                td.sample(pipe, generator=torch.manual_seed(0), progress=False, **kw)
            return
        out = td.sample(pipe, generator=torch.manual_seed(0), atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, progress=False, **kw)
        np.testing.assert_allclose(result(out), ref, atol=2e-5, rtol=0)
    finally:
        pipe.scheduler = own


def test_the_refusal_suggests_schedulers_that_the_loop_runs():
    assert all(hasattr(diffusers, name) for name in ("DDPMScheduler", "DPMSolverSinglestepScheduler"))
    pipe = DDIMPipeline(unet=UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), norm_num_groups=4,
                                         down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")),
                        scheduler=DDIMScheduler(num_train_timesteps=100))  # fmt: skip
    pipe.scheduler = UniPCMultistepScheduler(num_train_timesteps=100)
    with pytest.raises(UnsupportedSchedulerError, match="With DDIMPipeline use DDIMScheduler.*sample_latents"):
        td.sample(pipe, num_inference_steps=3, progress=False)
