"""Parity: sample(pipe, ...) equals the real diffusers sequential loop pipe(...) for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

import trisolve
import trisolve_diffusion as td
from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion

T = 200  # training timesteps of the tiny schedules


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=8,
        in_channels=2,
        out_channels=2,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    )
    return model.eval()


# (id, pipeline class, scheduler, call kwargs)
CONFIGS = [
    ("ddpm-eps-fixed_small", DDPMPipeline, DDPMScheduler(num_train_timesteps=T, clip_sample=False), dict(num_inference_steps=25)),
    (
        "ddpm-v-fixed_large-clip",
        DDPMPipeline,
        DDPMScheduler(num_train_timesteps=T, prediction_type="v_prediction", variance_type="fixed_large"),
        dict(num_inference_steps=20),
    ),
    (
        "ddpm-sample-threshold-trailing",
        DDPMPipeline,
        DDPMScheduler(num_train_timesteps=T, prediction_type="sample", thresholding=True, sample_max_value=1.5, timestep_spacing="trailing"),
        dict(num_inference_steps=16),
    ),
    (
        "ddpm-fixed_small_log-linspace",
        DDPMPipeline,
        DDPMScheduler(num_train_timesteps=T, variance_type="fixed_small_log", timestep_spacing="linspace", beta_schedule="squaredcos_cap_v2"),
        dict(num_inference_steps=20),
    ),
    ("ddim-defaults", DDIMPipeline, DDIMScheduler(num_train_timesteps=T), dict(num_inference_steps=20)),
    (
        "ddim-v-trailing-zero-snr",
        DDIMPipeline,
        DDIMScheduler(
            num_train_timesteps=T,
            prediction_type="v_prediction",
            timestep_spacing="trailing",
            rescale_betas_zero_snr=True,
            clip_sample=False,
        ),
        dict(num_inference_steps=20),
    ),
    (
        "ddim-eta1-clipped-output",
        DDIMPipeline,
        DDIMScheduler(num_train_timesteps=T, set_alpha_to_one=False),
        dict(num_inference_steps=20, eta=1.0, use_clipped_model_output=True),
    ),
    (
        "ddim-eta1-identity-last-step",  # abar_prev == abar_t at t = 0: the last step is solved without g
        DDIMPipeline,
        DDIMScheduler(num_train_timesteps=T, set_alpha_to_one=False, clip_sample=False),
        dict(num_inference_steps=20, eta=1.0),
    ),
    (
        "ddim-eta0.5-sample-threshold-linspace",
        DDIMPipeline,
        DDIMScheduler(num_train_timesteps=T, prediction_type="sample", thresholding=True, timestep_spacing="linspace"),
        dict(num_inference_steps=20, eta=0.5),
    ),
    ("dpm++2m", DDPMPipeline, DPMSolverMultistepScheduler(num_train_timesteps=T), dict(num_inference_steps=20)),
    (
        "dpm++3m-heun-karras",
        DDPMPipeline,
        DPMSolverMultistepScheduler(num_train_timesteps=T, solver_order=3, solver_type="heun", use_karras_sigmas=True),
        dict(num_inference_steps=20),
    ),
    (
        "dpm2-sigma_min",
        DDPMPipeline,
        DPMSolverMultistepScheduler(num_train_timesteps=T, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
        dict(num_inference_steps=12),
    ),
    (
        "dpm3-v-threshold-sigma_min",
        DDPMPipeline,
        DPMSolverMultistepScheduler(
            num_train_timesteps=T,
            algorithm_type="dpmsolver",
            solver_order=3,
            prediction_type="v_prediction",
            thresholding=True,
            final_sigmas_type="sigma_min",
            lower_order_final=False,
        ),
        dict(num_inference_steps=20),
    ),
    (
        "sde-dpm++2m",
        DDPMPipeline,
        DPMSolverMultistepScheduler(num_train_timesteps=T, algorithm_type="sde-dpmsolver++"),
        dict(num_inference_steps=20),
    ),
    (
        "sde-dpm++3m-euler-final",
        DDPMPipeline,
        DPMSolverMultistepScheduler(num_train_timesteps=T, algorithm_type="sde-dpmsolver++", solver_order=3, euler_at_final=True),
        dict(num_inference_steps=25),
    ),
    (
        "sde-dpm1-sigma_min",
        DDPMPipeline,
        DPMSolverMultistepScheduler(num_train_timesteps=T, algorithm_type="sde-dpmsolver", solver_order=1, final_sigmas_type="sigma_min"),
        dict(num_inference_steps=10),
    ),
    (
        "dpm++1-sample",
        DDPMPipeline,
        DPMSolverMultistepScheduler(num_train_timesteps=T, solver_order=1, prediction_type="sample", timestep_spacing="leading", steps_offset=1),
        dict(num_inference_steps=15),
    ),
]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name,cls,scheduler,kw", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_unconditional_parity_with_sequential_pipeline(unet, name, cls, scheduler, kw):
    pipe = cls(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12)]
    ref = pipe(batch_size=2, generator=gens(), output_type="np", **kw).images
    out = td.sample(pipe, batch_size=2, generator=gens(), output_type="np", atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, **kw)
    sol = out.solution
    assert sol.converged
    assert sol.num_rounds <= kw["num_inference_steps"]
    assert out.images.shape == ref.shape
    np.testing.assert_allclose(out.images, ref, rtol=0, atol=2e-5)
    # the scheduler's table is the one the sequential loop walks
    np.testing.assert_array_equal(td.map_scheduler(pipe.scheduler, eta=kw.get("eta", 0.0)).timesteps, pipe.scheduler.timesteps.numpy())


def test_float32_trajectory_parity(unet):
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=T, clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(generator=torch.manual_seed(5), num_inference_steps=30, output_type="np").images
    out = td.sample(pipe, generator=torch.manual_seed(5), num_inference_steps=30, output_type="np", atol=1e-6, rtol=0.0)
    assert out.solution.trajectory.dtype == torch.float32
    np.testing.assert_allclose(out.images, ref, atol=2e-5)


def test_max_batch_size_chunks_give_the_same_result(unet):
    pipe = DDPMPipeline(unet=unet, scheduler=DPMSolverMultistepScheduler(num_train_timesteps=T))
    pipe.set_progress_bar_config(disable=True)
    calls = []
    hook = unet.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        whole = td.sample(
            pipe,
            batch_size=3,
            generator=torch.manual_seed(1),
            num_inference_steps=10,
            output_type="pt",
            trajectory_dtype=torch.float64,
            window=trisolve.FullWindow(),  # no timing calls: the hook counts the solve's calls only
        )
        n_whole = len(calls)
        calls.clear()
        chunked = td.sample(
            pipe,
            batch_size=3,
            generator=torch.manual_seed(1),
            num_inference_steps=10,
            output_type="pt",
            max_batch_size=4,
            trajectory_dtype=torch.float64,
            window=trisolve.FullWindow(),
        )
    finally:
        hook.remove()
    assert max(calls) <= 4 and len(calls) > n_whole
    assert whole.solution.num_rounds == chunked.solution.num_rounds
    torch.testing.assert_close(whole.images, chunked.images, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def sd_pipe():
    pipe = build_tiny_stable_diffusion(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


SD_SCHEDULERS = [
    ("ddim-eta0", lambda cfg: DDIMScheduler.from_config(cfg), {}),
    ("ddim-eta1", lambda cfg: DDIMScheduler.from_config(cfg), {"eta": 1.0}),
    ("ddpm", lambda cfg: DDPMScheduler.from_config(cfg), {}),
    ("dpm++2m-karras", lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=True), {}),
    (
        "sde-dpm++2m",
        lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="sde-dpmsolver++"),
        {"guidance_rescale": 0.7},
    ),
]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name,make,extra", SD_SCHEDULERS, ids=[s[0] for s in SD_SCHEDULERS])
def test_stable_diffusion_parity_with_guidance(sd_pipe, name, make, extra):
    pipe = sd_pipe
    pipe.scheduler = make(pipe.scheduler.config)
    kw = dict(
        prompt=["a red cat", "two dogs"],
        negative_prompt=["blurry", "dark"],
        guidance_scale=6.0,
        num_images_per_prompt=2,
        num_inference_steps=12,
        output_type="np",
        **extra,
    )
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(4)]
    ref = pipe(generator=gens(), **kw)
    out = td.sample(pipe, generator=gens(), atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, **kw)
    assert out.images.shape == ref.images.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(out.images, ref.images, atol=2e-5)
    assert out.nsfw_content_detected == ref.nsfw_content_detected
    assert out.solution.converged and out.solution.num_rounds <= 12


def test_stable_diffusion_given_latents_and_embeddings(sd_pipe):
    pipe = sd_pipe
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    embeds, neg = pipe.encode_prompt("a house", "cpu", 1, True, "fog")
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(9))
    kw = dict(
        prompt_embeds=embeds,
        negative_prompt_embeds=neg,
        latents=latents,
        num_inference_steps=8,
        output_type="latent",
        guidance_scale=3.0,
    )
    ref = pipe(**kw).images
    out = td.sample(pipe, atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, **kw)
    # latents ~ 3, guidance 3 amplifies the float32 round-off of the sequential pipeline (measured 2e-5 with diffusers 0.42)
    torch.testing.assert_close(out.images, ref, atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(out.solution.trajectory[0].float(), latents)  # row 0 is the given noise
