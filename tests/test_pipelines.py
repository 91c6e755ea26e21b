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
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLImg2ImgPipeline,
)

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
@pytest.mark.parametrize("sched", list(SCHEDULERS))
def test_inpaint_parity(sched, channels):
    pipe = build_tiny_stable_diffusion(pipeline_class=StableDiffusionInpaintPipeline, unet_in_channels=channels)
    kw = dict(prompt=["a red cat", "a dog"], image=IMAGE, mask_image=MASK, strength=0.8, num_inference_steps=10, guidance_scale=4.0, output_type="np")
    check_parity(pipe, sched, kw)


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
