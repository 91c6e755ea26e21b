"""Front doors for the video pipelines: Wan (2.1, and 2.2's two experts), LTX-Video and CogVideoX.

Each parallel sample is compared with the real sequential ``pipe(...)`` of the installed
diffusers for the same seed, on tiny random pipelines built offline
(:mod:`trisolve_diffusion.models.tiny_video`): at a tight tolerance the latents and the decoded
frames agree to float32 round-off. The front doors' copies of upstream preparation are checked
against the installed diffusers' source.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import trisolve_diffusion as td
from trisolve_diffusion.models.tiny_video import build_tiny_cogvideox, build_tiny_ltx, build_tiny_wan, wan_unipc_scheduler
from trisolve_diffusion.pipelines import cogvideox as cogvideox_door
from trisolve_diffusion.pipelines import ltx as ltx_door
from trisolve_diffusion.pipelines import wan as wan_door

TIGHT = dict(atol=1e-6, rtol=0.0, progress=False)


def _both(pipe, seed=0, **kw):
    """(sequential, parallel-tight) outputs of the same call."""
    ref = pipe(generator=torch.Generator().manual_seed(seed), **kw)
    out = td.sample(pipe, generator=torch.Generator().manual_seed(seed), **kw, **TIGHT)
    return ref, out


def _embeds(batch, length=8, dim=32, seed=1):
    return torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(seed))


def _close(a, b, atol=2e-5):
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    torch.testing.assert_close(a, b, rtol=0, atol=atol * max(1.0, float(b.abs().max())))


# -- Wan ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wan():
    pipe = build_tiny_wan()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_wan_unipc_flow_cfg_equals_pipeline(wan):
    """Wan 2.1 as shipped: UniPC flow scheduler, classifier-free guidance, prompts through the (tiny) UMT5 encoder."""
    kw = dict(prompt="a cat", negative_prompt="blurry", height=16, width=32, num_frames=5, num_inference_steps=4,
              guidance_scale=5.0, max_sequence_length=8)  # fmt: skip
    ref, out = _both(wan, output_type="latent", **kw)
    assert ref.frames.shape == (1, 16, 2, 2, 4)
    _close(out.frames, ref.frames)
    assert out.solution.converged and out.solution.num_rounds <= 4
    ref, out = _both(wan, output_type="np", **kw)
    assert out.frames.shape == ref.frames.shape == (1, 5, 16, 32, 3)
    _close(out.frames, ref.frames, atol=1e-4)


def test_wan_flow_match_euler_embeddings_batch():
    """FlowMatchEuler scheduler, no guidance, prompt embeddings for two videos, no text encoder."""
    pipe = build_tiny_wan(text_encoder=False, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt_embeds=_embeds(2), height=16, width=16, num_frames=9, num_inference_steps=5, guidance_scale=1.0,
              output_type="latent")  # fmt: skip
    ref, out = _both(pipe, seed=3, **kw)
    assert ref.frames.shape == (2, 16, 3, 2, 2)
    _close(out.frames, ref.frames)


def test_wan22_two_experts_equal_pipeline():
    """Wan 2.2: rows above the boundary go to ``transformer`` with guidance_scale, the others to ``transformer_2``."""
    pipe = build_tiny_wan(text_encoder=False, two_experts=True, boundary_ratio=0.9, scheduler=wan_unipc_scheduler(flow_shift=2.0))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(6)
    t = pipe.scheduler.timesteps
    assert bool((t >= 900).any()) and bool((t < 900).any())  # both experts are used
    kw = dict(prompt_embeds=_embeds(1), negative_prompt_embeds=_embeds(1, seed=2), height=16, width=16, num_frames=5,
              num_inference_steps=6, guidance_scale=4.0, guidance_scale_2=2.0, output_type="latent")  # fmt: skip
    ref, out = _both(pipe, seed=1, **kw)
    _close(out.frames, ref.frames)
    one = td.sample(pipe, generator=torch.Generator().manual_seed(1), **{**kw, "guidance_scale_2": 4.0}, **TIGHT)
    assert float((one.frames - out.frames).abs().max()) > 1e-4  # guidance_scale_2 reaches the low-noise rows


def test_wan_expand_timesteps_equals_pipeline(wan):
    """``expand_timesteps`` (Wan 2.2 TI2V): the timestep per token."""
    from diffusers import WanPipeline

    parts = {k: v for k, v in wan.components.items() if v is not None}
    pipe = WanPipeline(**parts, expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt_embeds=_embeds(1), negative_prompt_embeds=_embeds(1, seed=2), height=16, width=16, num_frames=5,
              num_inference_steps=3, guidance_scale=3.0, output_type="latent")  # fmt: skip
    ref, out = _both(pipe, seed=2, **kw)
    _close(out.frames, ref.frames)


def test_wan_refusals(wan):
    with pytest.raises(ValueError, match="divisible by 16"):  # the pipeline's own check_inputs
        td.sample(wan, prompt_embeds=_embeds(1), height=16, width=24, num_frames=5, num_inference_steps=2, guidance_scale=1.0, progress=False)
    with pytest.raises(TypeError, match="callback_on_step_end"):
        td.sample(wan, prompt_embeds=_embeds(1), num_inference_steps=2, callback_on_step_end=lambda *a: {})
    from diffusers import WanImageToVideoPipeline

    with pytest.raises(TypeError, match="WanImageToVideoPipeline: image-to-video"):
        td.sample(object.__new__(WanImageToVideoPipeline), "a cat")


# -- LTX-Video ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ltx():
    pipe = build_tiny_ltx()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_ltx_cfg_rescale_equals_pipeline(ltx):
    """Default scheduler with the dynamic shift from the video's token count; guidance with guidance_rescale."""
    kw = dict(prompt=["a cat", "a dog"], negative_prompt=["blurry", "dark"], height=32, width=32, num_frames=9, num_inference_steps=4,
              guidance_scale=3.0, guidance_rescale=0.7, max_sequence_length=8)  # fmt: skip
    ref, out = _both(ltx, output_type="latent", **kw)
    assert ref.frames.shape == (2, 3 * 8 * 8, 8)  # packed (B, L, C)
    _close(out.frames, ref.frames)
    assert out.solution.converged
    ref, out = _both(ltx, output_type="np", **kw)
    assert out.frames.shape == ref.frames.shape == (2, 9, 32, 32, 3)
    _close(out.frames, ref.frames, atol=1e-4)


def test_ltx_timestep_conditioned_decoder_equals_pipeline():
    """decode_timestep / decode_noise_scale: the decoder's noise comes from the same generator after the loop."""
    pipe = build_tiny_ltx(text_encoder=False, timestep_conditioning=True)
    pipe.set_progress_bar_config(disable=True)
    mask = torch.ones(1, 8, dtype=torch.long)
    kw = dict(prompt_embeds=_embeds(1), prompt_attention_mask=mask, negative_prompt_embeds=_embeds(1, seed=2),
              negative_prompt_attention_mask=mask, height=32, width=32, num_frames=5, num_inference_steps=3, guidance_scale=2.0,
              decode_timestep=0.05, decode_noise_scale=0.3, output_type="pt")  # fmt: skip
    ref, out = _both(pipe, seed=4, **kw)
    _close(out.frames, ref.frames, atol=1e-4)


def test_ltx_refusals(ltx):
    from diffusers import LTXImageToVideoPipeline

    with pytest.raises(TypeError, match="LTXImageToVideoPipeline: image-to-video"):
        td.sample(object.__new__(LTXImageToVideoPipeline), "a cat")
    with pytest.raises(ValueError, match="divisible by 32"):
        td.sample(ltx, "a cat", height=48, width=32, num_frames=5, num_inference_steps=2, max_sequence_length=8, progress=False)


# -- CogVideoX ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        dict(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True),  # CogVideoX-2B
        dict(prediction_type="epsilon", timestep_spacing="leading", set_alpha_to_one=False, snr_shift_scale=1.0),
        dict(prediction_type="sample", timestep_spacing="linspace", clip_sample=True),  # its step never clips
    ],
    ids=["2b", "epsilon-leading", "sample-linspace"],
)
def test_cogvideox_ddim_scheduler_equals_step_loop(config):
    """The CogVideoXDDIMScheduler mapping against its own ``step`` loop, on a non-linear test model."""
    from diffusers import CogVideoXDDIMScheduler

    import trisolve
    from trisolve_diffusion.schedulers import map_scheduler

    def model(x, t):  # any smooth function of (x, t)
        return torch.tanh(1.3 * x + 0.001 * t.double().view(-1, *([1] * (x.ndim - 1)))) + 0.1 * x

    def make():
        s = CogVideoXDDIMScheduler(**config)
        s.set_timesteps(7)
        s.alphas_cumprod, s.final_alpha_cumprod = s.alphas_cumprod.double(), s.final_alpha_cumprod.double()
        return s

    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sched, ref = make(), x0.clone()
    for t in sched.timesteps:
        ref = sched.step(model(ref, t.expand(2)), t, ref, return_dict=False)[0]
    m = map_scheduler(make())
    ts = torch.as_tensor(m.timesteps)
    g = lambda xr, lo, hi: m.g(xr, model(xr.reshape(-1, 3, 4, 4), ts[lo:hi].repeat_interleave(2)).reshape(xr.shape), lo, hi)  # noqa: E731
    fs = trisolve.forward_substitution(trisolve.SemilinearSystem(m.a, m.B, g, batch_ndim=1), x0)
    np.testing.assert_allclose(fs[-1].numpy(), ref.numpy(), rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def cogvideox():
    pipe = build_tiny_cogvideox(text_encoder=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("dynamic", [False, True], ids=["cfg", "dynamic-cfg"])
def test_cogvideox_equals_pipeline(cogvideox, dynamic):
    kw = dict(prompt_embeds=_embeds(2, length=16), negative_prompt_embeds=_embeds(2, length=16, seed=2), height=16, width=16,
              num_frames=9, num_inference_steps=5, guidance_scale=6.0, use_dynamic_cfg=dynamic)  # fmt: skip
    ref, out = _both(cogvideox, output_type="latent", **kw)
    assert ref.frames.shape == (2, 3, 4, 2, 2)  # (B, F, C, H, W)
    _close(out.frames, ref.frames)
    ref, out = _both(cogvideox, output_type="np", **kw)
    _close(out.frames, ref.frames, atol=1e-4)


def test_cogvideox_refusals(cogvideox):
    from diffusers import CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline

    from trisolve_diffusion import UnsupportedSchedulerError

    pipe = build_tiny_cogvideox(text_encoder=False, scheduler=CogVideoXDPMScheduler())
    with pytest.raises(UnsupportedSchedulerError, match="CogVideoXDDIMScheduler"):
        td.sample(pipe, prompt_embeds=_embeds(1, length=16), num_frames=9, height=16, width=16, num_inference_steps=2, guidance_scale=1.0)
    from diffusers import CogVideoXDDIMScheduler

    from trisolve_diffusion.schedulers import map_scheduler

    zero_snr = CogVideoXDDIMScheduler(prediction_type="epsilon", timestep_spacing="trailing", rescale_betas_zero_snr=True)
    zero_snr.set_timesteps(4)
    with pytest.raises(UnsupportedSchedulerError, match="non-finite.*v_prediction"):
        map_scheduler(zero_snr)
    with pytest.raises(TypeError, match="CogVideoXImageToVideoPipeline: image-to-video"):
        td.sample(object.__new__(CogVideoXImageToVideoPipeline), "a cat")


# -- copies of upstream preparation ---------------------------------------------------------------


def _source_lines(dotted: str) -> set[str]:
    module, _, qual = dotted.rpartition(".")
    owner, attr = module.rsplit(".", 1) if qual == "__call__" else (module, qual)
    obj = getattr(importlib.import_module(owner), attr)
    obj = obj.__call__ if qual == "__call__" else obj
    return {" ".join(line.split()) for line in inspect.getsource(obj).splitlines()}


@pytest.mark.parametrize("door", [wan_door, ltx_door, cogvideox_door], ids=["wan", "ltx", "cogvideox"])
def test_copied_preparation_matches_installed_diffusers(door):
    """Every upstream line a front door mirrors is in the installed pipeline's source: an upstream change fails here."""
    for dotted, lines in door.UPSTREAM_LINES.items():
        have = _source_lines(dotted)
        missing = [line for line in lines if " ".join(line.split()) not in have]
        assert not missing, f"{dotted} no longer contains {missing}: update the front door's copy"
