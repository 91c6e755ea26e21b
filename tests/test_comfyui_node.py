"""The ComfyUI node (``comfyui_trisolve``) against ComfyUI's own code.

With ``COMFYUI_PATH`` set to a ComfyUI checkout, ``KSAMPLER(parallel_sample).sample(...)`` runs through
ComfyUI's real ``KSAMPLER``, ``KSamplerX0Inpaint`` (inpaint blend), ``sampling_function`` /
``calc_cond_batch`` (classifier-free guidance, conditioning batched to the rows) and a real
``model_sampling`` (``EPS`` + ``ModelSamplingDiscrete``), and is compared with ComfyUI's own
``KSAMPLER(comfy.k_diffusion.sampling.sample_*)``. Stand-ins: the network (a tiny random conv net
taking the timestep and the cross-attention context) and the guider's model object (``apply_model``
as ``BaseModel._apply_model`` computes it, ``memory_required``, a patcher without hooks). Without a
checkout those tests are skipped (ComfyUI is not on PyPI); the node's interface and workflow tests run.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import types
import uuid
from pathlib import Path

import pytest
import torch
from comfyui_env import SKIP_REASON, comfyui_path, import_comfy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import comfyui_trisolve  # noqa: E402
from comfyui_trisolve.sampler import sequential_reason  # noqa: E402

needs_comfy = pytest.mark.skipif(comfyui_path() is None, reason=SKIP_REASON)
SHAPE = (2, 4, 8, 8)


@pytest.fixture(scope="module")
def comfy():
    return import_comfy()


class Net(torch.nn.Module):
    """A random eps-prediction conv net of the latent, the timestep (per sample) and the context."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(31)
        self.conv1 = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.t_emb = torch.nn.Linear(1, 16)
        self.c_emb = torch.nn.Linear(8, 16)
        self.conv2 = torch.nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, xc, t, context):
        h = self.conv1(xc) + self.t_emb(t[:, None] / 1000)[:, :, None, None] + self.c_emb(context.mean(1))[:, :, None, None]
        return 0.5 * torch.tanh(self.conv2(torch.nn.functional.silu(h)))


class Inner:
    """Stands for ``comfy.model_base.BaseModel``: the real ``model_sampling`` and ``scale_latent_inpaint``."""

    def __init__(self, comfy, flow=False):
        ms = comfy.model_sampling
        kind = (ms.CONST, ms.ModelSamplingDiscreteFlow) if flow else (ms.EPS, ms.ModelSamplingDiscrete)
        self.model_sampling = type("ModelSampling", kind, {})()
        self.net = Net().eval()
        self.calls = []
        self.scale_latent_inpaint = types.MethodType(comfy.model_base.BaseModel.scale_latent_inpaint, self)
        self.current_patcher = types.SimpleNamespace(prepare_state=lambda t: None, apply_hooks=lambda hooks=None: {})

    def memory_required(self, input_shape, cond_shapes=None):
        return 1e3 * input_shape[0]

    def apply_model(self, x, t, c_crossattn=None, transformer_options=None, **kwargs):  # as BaseModel._apply_model
        self.calls.append(x.shape[0])
        xc = self.model_sampling.calculate_input(t, x)
        eps = self.net(xc, self.model_sampling.timestep(t).float(), c_crossattn)
        return self.model_sampling.calculate_denoised(t, eps, x)


class Guider:
    """Stands for ``comfy.samplers.CFGGuider`` after ``prepare_sampling``: what ``KSAMPLER.sample`` gets as ``model_wrap``."""

    def __init__(self, comfy, inner, cfg=3.0, batch_cond=1, **extra):
        g = torch.Generator().manual_seed(32)
        self.comfy, self.inner_model, self.cfg = comfy, inner, cfg

        def cond(**kw):
            context = comfy.conds.CONDCrossAttn(torch.randn(batch_cond, 3, 8, generator=g))
            return [{"model_conds": {"c_crossattn": context}, "uuid": uuid.uuid4(), **kw}]

        self.conds = {"positive": cond(**extra), "negative": cond()}
        self.model_patcher = types.SimpleNamespace(get_model_object=lambda name: getattr(inner, name))

    def __call__(self, x, sigma, model_options={}, seed=None):  # CFGGuider.predict_noise
        return self.comfy.samplers.sampling_function(self.inner_model, x, sigma, self.conds["negative"], self.conds["positive"], self.cfg,
                                                     model_options=model_options, seed=seed)  # fmt: skip


def run(comfy, sampler, guider, sigmas, *, latent=None, mask=None, callback=None):
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(33))
    latent = torch.zeros(SHAPE) if latent is None else latent
    return sampler.sample(guider, sigmas, {"model_options": {}, "seed": 42}, callback, noise, latent, mask)


def reference(comfy, name, options):
    """ComfyUI's own sampler for the node's ``sampler_name`` (the SDE ones with its per-step Gaussian noise sampler)."""
    kd_name, keys = comfyui_trisolve.SAMPLERS[name]
    extra = {k: options[k] for k in keys}
    if kd_name.endswith("_sde"):
        extra["noise_sampler"] = comfy.sampling.default_noise_sampler(torch.empty(SHAPE), seed=42)
    return comfy.samplers.ksampler(kd_name, extra)


def node_sampler(name, **kw):
    opts = dict(sampler_name=name, tolerance=5e-4, window=0, max_iter=0, max_rows_per_call=0, eta=0.8, s_noise=1.0, check_model=True)
    opts.update(kw)
    return comfyui_trisolve.TrisolveSampler().get_sampler(**opts)[0], opts


def psnr(a, b):
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(float(b.max() - b.min()) ** 2 / mse)


def schedules(comfy, ms):
    return {
        "karras": comfy.samplers.calculate_sigmas(ms, "karras", 8),
        "normal": comfy.samplers.calculate_sigmas(ms, "normal", 7),  # the model's own table, unevenly spaced
        "exponential-no-zero": comfy.samplers.calculate_sigmas(ms, "exponential", 9)[:-1],
    }


@pytest.mark.slow
@needs_comfy
@pytest.mark.parametrize("name", list(comfyui_trisolve.SAMPLERS))
@pytest.mark.parametrize("schedule", ["karras", "normal", "exponential-no-zero"])
def test_node_equals_comfyuis_sampler(comfy, name, schedule):
    inner = Inner(comfy)
    sigmas = schedules(comfy, inner.model_sampling)[schedule]
    node, opts = node_sampler(name, tolerance=1e-6)
    expected = run(comfy, reference(comfy, name, opts), Guider(comfy, inner), sigmas)
    sequential_calls = len(inner.calls)
    inner.calls.clear()
    got = run(comfy, node, Guider(comfy, inner), sigmas)
    assert max(inner.calls) > 2 * SHAPE[0]  # rows of a round went through calc_cond_batch together
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
    default_node, _ = node_sampler(name)
    assert psnr(run(comfy, default_node, Guider(comfy, inner), sigmas), expected) >= 45
    assert sequential_calls >= len(sigmas) - 1


@pytest.mark.slow
@needs_comfy
def test_inpaint_mask_and_per_sample_conditioning_with_batch_2(comfy):
    """ComfyUI broadcasts the inpaint tensors for batch 1 only: the node tiles them per row; conditioning of batch 2 tiles too."""
    inner = Inner(comfy)
    sigmas = schedules(comfy, inner.model_sampling)["karras"]
    g = torch.Generator().manual_seed(34)
    latent = torch.randn(SHAPE, generator=g)
    mask = (torch.rand(SHAPE[0], 1, 8, 8, generator=g) > 0.5).float().expand(SHAPE).contiguous()  # per sample
    for name in ("euler", "dpmpp_2s_ancestral"):
        node, opts = node_sampler(name, tolerance=1e-6)
        expected = run(comfy, reference(comfy, name, opts), Guider(comfy, inner, batch_cond=2), sigmas, latent=latent, mask=mask)
        got = run(comfy, node, Guider(comfy, inner, batch_cond=2), sigmas, latent=latent, mask=mask)
        assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max()), name


@pytest.mark.slow
@needs_comfy
def test_timestep_range_conditioning_falls_back_to_comfyuis_loop(comfy, caplog):
    inner = Inner(comfy)
    sigmas = schedules(comfy, inner.model_sampling)["karras"]
    mid = float(sigmas[3])
    node, opts = node_sampler("euler_ancestral")
    expected = run(comfy, reference(comfy, "euler_ancestral", opts), Guider(comfy, inner, timestep_start=mid), sigmas)
    inner.calls.clear()
    with caplog.at_level(logging.WARNING, logger="comfyui_trisolve"):
        got = run(comfy, node, Guider(comfy, inner, timestep_start=mid), sigmas)
    assert "timestep range" in caplog.text and "sequential" in caplog.text
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert max(inner.calls) <= 2 * SHAPE[0]  # one step per call: ComfyUI's own loop ran


@pytest.mark.slow
@needs_comfy
def test_what_falls_back(comfy):
    inner = Inner(comfy)
    model_k = comfy.samplers.KSamplerX0Inpaint(Guider(comfy, inner), None)
    assert sequential_reason(model_k, "euler") is None
    cn = types.SimpleNamespace(timestep_percent_range=(0.0, 0.5), previous_controlnet=None)
    outer = types.SimpleNamespace(timestep_percent_range=(0.0, 1.0), previous_controlnet=cn)  # chained ControlNets
    model_k = comfy.samplers.KSamplerX0Inpaint(Guider(comfy, inner, control=outer), None)
    assert "ControlNet" in sequential_reason(model_k, "euler")
    cn.timestep_percent_range = (0.0, 1.0)
    assert sequential_reason(model_k, "euler") is None
    model_k = comfy.samplers.KSamplerX0Inpaint(Guider(comfy, inner, hooks=object()), None)
    assert "hooks" in sequential_reason(model_k, "euler")
    flow = comfy.samplers.KSamplerX0Inpaint(Guider(comfy, Inner(comfy, flow=True)), None)
    assert "flow" in sequential_reason(flow, "euler_ancestral")
    assert sequential_reason(flow, "dpmpp_2m") is None


@pytest.mark.slow
@needs_comfy
def test_callback_once_per_step_and_rows_per_call(comfy, monkeypatch):
    inner = Inner(comfy)
    sigmas = schedules(comfy, inner.model_sampling)["karras"]
    seen = []
    # free memory for 3 rows (x 2 for guidance) of the batch at the stand-in's 1e3 bytes per sample, with ComfyUI's 1.5 margin
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *a, **k: 1.5 * 1e3 * 2 * 3 * SHAPE[0] + 1)
    node, _ = node_sampler("dpmpp_2m", tolerance=1e-6, check_model=False)
    run(comfy, node, Guider(comfy, inner), sigmas, callback=lambda i, den, x, total: seen.append((i, total, den.shape)))
    assert [s[0] for s in seen] == list(range(len(sigmas) - 1)) and {s[1] for s in seen} == {len(sigmas) - 1}
    assert max(inner.calls) == 2 * 3 * SHAPE[0]


# -- without ComfyUI: the node's interface and the documented workflow -----------------------------------


def test_node_interface():
    assert comfyui_trisolve.NODE_CLASS_MAPPINGS["TrisolveSampler"] is comfyui_trisolve.TrisolveSampler
    node = comfyui_trisolve.TrisolveSampler
    assert node.RETURN_TYPES == ("SAMPLER",) and callable(getattr(node(), node.FUNCTION))
    names = node.INPUT_TYPES()["required"]["sampler_name"][0]
    assert set(names) == set(comfyui_trisolve.SAMPLERS)


def test_workflow_uses_the_nodes_inputs():
    wf = json.loads((ROOT / "comfyui_trisolve" / "workflow_api.json").read_text())
    ours = [n for n in wf.values() if n["class_type"] == "TrisolveSampler"]
    assert len(ours) == 1
    assert set(ours[0]["inputs"]) == set(comfyui_trisolve.TrisolveSampler.INPUT_TYPES()["required"])
    assert ours[0]["inputs"]["sampler_name"] in comfyui_trisolve.SAMPLERS
    custom = [n for n in wf.values() if n["class_type"] == "SamplerCustom"]
    assert len(custom) == 1 and custom[0]["inputs"]["sampler"][0] in wf
    for node in wf.values():  # every link names a node of the workflow
        for v in node["inputs"].values():
            if isinstance(v, list):
                assert v[0] in wf
