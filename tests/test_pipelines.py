"""Front doors: sample(pipe, ...) equals the real pipe(...) for every supported pipeline family.

Tiny offline pipelines (random weights, 32x32 images, 16x16 latents). Each case checks a
tight solve (atol=1e-7, float64 trajectory) against the sequential pipeline to float32
round-off and a solve at the default tolerance to >= 45 dB.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLImg2ImgPipeline,
    UniPCMultistepScheduler,
)

import trisolve
import trisolve_diffusion as td
from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion, build_tiny_stable_diffusion_xl

SCHEDULERS = {
    "ddim": lambda cfg: DDIMScheduler.from_config(cfg),
    "ddim-eta1": lambda cfg: DDIMScheduler.from_config(cfg),
    "ddpm": lambda cfg: DDPMScheduler.from_config(cfg),
    "dpm++2m": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg),
}

IMAGE = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
MASK = (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) > 0.5).float()
PROMPTS = ["a red cat", "a dog"]
# (scheduler, also check the default tolerance); each family gets a deterministic and a stochastic scheduler, DPM-Solver everywhere
CASES = [("dpm++2m", True), ("ddim-eta1", False)]
CASES_2 = [("dpm++2m", True), ("ddpm", False)]
CASES_3 = [("dpm++2m", False), ("ddim", True)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def check_parity(pipe, sched_name, kw, default_too=True, atol=2e-5):
    pipe.scheduler = SCHEDULERS[sched_name](pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if sched_name == "ddim-eta1":
        kw = dict(kw, eta=1.0)
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(2)]  # noqa: E731
    ref = pipe(generator=gens(), **kw)
    tight = td.sample(pipe, generator=gens(), atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, **kw)
    assert type(tight).__name__.startswith("Parallel") and tight.solution.converged
    assert tight.images.shape == ref.images.shape
    np.testing.assert_allclose(tight.images, ref.images, rtol=0, atol=atol)
    if default_too:
        default = td.sample(pipe, generator=gens(), **kw)
        assert default.solution.converged and psnr(default.images, ref.images) >= 45
    return ref, tight


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("sched,default_too", CASES)
def test_img2img_parity(sched, default_too):
    pipe = build_tiny_stable_diffusion(pipeline_class=StableDiffusionImg2ImgPipeline)
    kw = dict(prompt=PROMPTS, image=IMAGE, strength=0.7, num_inference_steps=8, guidance_scale=5.0, output_type="np")
    ref, out = check_parity(pipe, sched, kw, default_too)
    assert out.solution.trajectory.shape[0] == 5 + 1  # int(8 * 0.7) steps are solved
    assert out.nsfw_content_detected == ref.nsfw_content_detected


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("channels", [4, 9])
@pytest.mark.parametrize("sched,default_too", CASES_2)
def test_inpaint_parity(sched, default_too, channels):
    pipe = build_tiny_stable_diffusion(pipeline_class=StableDiffusionInpaintPipeline, unet_in_channels=channels)
    kw = dict(prompt=PROMPTS, image=IMAGE, mask_image=MASK, strength=0.8, num_inference_steps=8, guidance_scale=4.0, output_type="np")
    check_parity(pipe, sched, kw, default_too)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_inpaint_four_channel_keeps_the_known_region():
    """After the last blend the known region is the clean image latent, in the pipeline and in the solve."""
    pipe = build_tiny_stable_diffusion(pipeline_class=StableDiffusionInpaintPipeline)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a cat", image=IMAGE[:1], mask_image=MASK[:1], strength=1.0, num_inference_steps=6, output_type="latent")
    out = td.sample(pipe, generator=torch.manual_seed(0), atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, **kw).images
    # the pipeline encodes the image first, with the same generator
    image_latents = pipe._encode_vae_image(pipe.image_processor.preprocess(IMAGE[:1]), generator=torch.manual_seed(0))
    known = torch.nn.functional.interpolate(MASK[:1], size=16) < 0.5  # (1, 1, 16, 16)
    assert known.any() and (~known).any()
    torch.testing.assert_close(out[known.expand_as(out)], image_latents[known.expand_as(out)], atol=1e-6, rtol=0)
    assert (out - image_latents)[(~known).expand_as(out)].abs().max() > 1e-2  # the generated region is not the image


@pytest.fixture(scope="module")
def sdxl():
    return build_tiny_stable_diffusion_xl()


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("sched,default_too", CASES_3)
def test_sdxl_parity(sdxl, sched, default_too):
    kw = dict(prompt=PROMPTS, negative_prompt=["blurry", "dark"], num_inference_steps=6, guidance_scale=5.0, output_type="np")
    check_parity(sdxl, sched, kw, default_too)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_sdxl_added_conditioning_and_return_tuple(sdxl):
    """negative_original_size (a second set of time ids), guidance_rescale, and return_dict=False as the pipeline's."""
    sdxl.scheduler = DDIMScheduler.from_config(sdxl.scheduler.config)
    sdxl.set_progress_bar_config(disable=True)
    kw = dict(
        prompt="a cat", num_inference_steps=5, guidance_scale=4.0, guidance_rescale=0.5, original_size=(64, 48),
        negative_original_size=(16, 16), negative_target_size=(32, 32), output_type="np", return_dict=False,
    )  # fmt: skip
    ref = sdxl(generator=torch.manual_seed(0), **kw)
    out = td.sample(sdxl, generator=torch.manual_seed(0), atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, **kw)
    assert isinstance(out, tuple) and len(out) == len(ref) == 1
    np.testing.assert_allclose(out[0], ref[0], rtol=0, atol=2e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("sched,default_too", CASES_2)
def test_sdxl_img2img_parity(sched, default_too):
    pipe = build_tiny_stable_diffusion_xl(pipeline_class=StableDiffusionXLImg2ImgPipeline)
    kw = dict(prompt=PROMPTS, image=IMAGE, strength=0.6, num_inference_steps=8, guidance_scale=5.0, output_type="np")
    check_parity(pipe, sched, kw, default_too)


NEW_SCHEDULERS = {
    "euler": lambda cfg: EulerDiscreteScheduler.from_config(cfg),
    "euler-ancestral": lambda cfg: EulerAncestralDiscreteScheduler.from_config(cfg),
    "unipc": lambda cfg: UniPCMultistepScheduler.from_config(cfg),
    "pndm-plms": lambda cfg: PNDMScheduler.from_config(cfg, skip_prk_steps=True),
}


@pytest.fixture(scope="module")
def sd():
    return build_tiny_stable_diffusion()


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name", list(NEW_SCHEDULERS))
def test_stable_diffusion_parity_with_the_schedulers_people_use(sd, name):
    sd.scheduler = NEW_SCHEDULERS[name](sd.scheduler.config)
    sd.set_progress_bar_config(disable=True)
    kw = dict(prompt="a red cat", negative_prompt="blurry", num_inference_steps=8, guidance_scale=5.0, output_type="np")
    ref = sd(generator=torch.manual_seed(0), **kw).images
    out = td.sample(sd, generator=torch.manual_seed(0), atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, **kw)
    assert out.solution.converged
    np.testing.assert_allclose(out.images, ref, rtol=0, atol=2e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name", ["euler-ancestral", "unipc"])
def test_img2img_parity_with_input_scaling_and_multistep(name):
    pipe = build_tiny_stable_diffusion(pipeline_class=StableDiffusionImg2ImgPipeline)
    pipe.scheduler = NEW_SCHEDULERS[name](pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a red cat", image=IMAGE[:1], strength=0.6, num_inference_steps=8, guidance_scale=5.0, output_type="np")
    ref = pipe(generator=torch.manual_seed(0), **kw).images
    out = td.sample(pipe, generator=torch.manual_seed(0), atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, **kw)
    np.testing.assert_allclose(out.images, ref, rtol=0, atol=2e-5)


def test_refusals_come_before_any_work(sd):
    """Unsupported pipelines and options raise before the network runs, saying what to do."""
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    calls = []
    hook = sd.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(TypeError, match=r"got ControlNetLike.*sample_latents\(denoiser, scheduler, latents\)"):
            td.sample(type("ControlNetLike", (), {})())
        with pytest.raises(TypeError, match="ip_adapter_image: IP-Adapter"):
            td.sample(sd, "a cat", ip_adapter_image=IMAGE[:1])
        with pytest.raises(TypeError, match="sigmas: custom sigmas are supported for the flow-matching pipelines only"):
            td.sample(sd, "a cat", sigmas=[1.0, 0.5])
        with pytest.raises(TypeError, match="callback_steps: diffusers' deprecated per-step callback"):
            td.sample(sd, "a cat", callback_steps=1)
        with pytest.raises(TypeError, match="only 'latents'"):
            td.sample(sd, "a cat", callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["prompt_embeds"])
        with pytest.raises(TypeError, match="options must be a trisolve_diffusion.SolveOptions"):
            td.sample(sd, "a cat", options={"atol": 1e-3})
        with pytest.warns(DeprecationWarning, match=r"sample\(\.\.\., options=SolveOptions\(\.\.\.\)\) is deprecated"):
            with pytest.raises(TypeError, match="trajectory_dtype"):  # the deprecated options= still routes, under the keywords
                td.sample(sd, "a cat", options=td.SolveOptions(progress=False), trajectory_dtype=torch.float16)
        with pytest.warns(DeprecationWarning, match="order="), pytest.raises(ValueError, match="either order= or update_map="):
            td.sample(sd, "a cat", order=2, update_map=td.default_solver()[1])
        with pytest.raises(TypeError, match="trajectory_dtype"):
            td.sample(sd, "a cat", trajectory_dtype=torch.float16)
        sd.scheduler = LCMScheduler.from_config(sd.scheduler.config)
        with pytest.raises(td.UnsupportedSchedulerError, match="LCMScheduler is not supported.*DPMSolverMultistepScheduler"):
            td.sample(sd, "a cat", num_inference_steps=4)
    finally:
        hook.remove()
        sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    assert calls == []  # the UNet never ran


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_sample_ctrl_c_and_unconverged_end(sd):
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    sd.set_progress_bar_config(disable=True)
    real, calls = sd.unet.forward, [0]

    def interrupted(*a, **k):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    sd.unet.forward = interrupted
    try:
        with pytest.raises(td.SamplingInterrupted) as info:
            td.sample(sd, "a cat", num_inference_steps=6, atol=1e-7, rtol=0.0, window=trisolve.FullWindow())  # no timing calls first
    finally:
        sd.unet.forward = real
    assert isinstance(info.value, KeyboardInterrupt) and info.value.solution.num_rounds == 1
    with pytest.warns(td.UnconvergedSampleWarning, match="MAX_ITER"):
        td.sample(sd, "a cat", num_inference_steps=6, atol=1e-7, rtol=0.0, max_iter=2, output_type="latent")
    with pytest.raises(td.UnconvergedSampleError):
        td.sample(sd, "a cat", num_inference_steps=6, atol=1e-7, rtol=0.0, max_iter=2, strict=True, output_type="latent")
