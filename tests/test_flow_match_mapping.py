"""FlowMatchEulerDiscreteScheduler mapping (schedulers/flow_match.py) against the real ``step()``.

Reference: a hand-written loop calling ``scheduler.step`` with a closed-form velocity field.
Mapped: forward substitution of the mapped semilinear system (``trisolve.forward_substitution``)
with the same field, noise pre-drawn in the loop's order. Every sigma option of the installed
diffusers is covered.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

import trisolve
from trisolve_diffusion.schedulers import UnsupportedSchedulerError, map_scheduler

SHAPE = (2, 1, 4, 4)  # (B, C, H, W)
MU_DATA, S_DATA = 0.3, 0.5  # data ~ N(MU_DATA, S_DATA^2 I)


def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact flow-matching velocity ``E[z - x0 | x_s]`` for Gaussian data, plus a non-linear term.

    ``x_s = (1 - s) x0 + s z`` with ``s = t / 1000``; ``x`` ``(m, *event)``, ``t`` ``(m,)``.
    """
    s = (t.to(torch.float64) / 1000.0).reshape(-1, *([1] * (x.ndim - 1)))
    var = (1 - s) ** 2 * S_DATA**2 + s**2
    xd = x.to(torch.float64)
    v = (s - (1 - s) * S_DATA**2) * (xd - (1 - s) * MU_DATA) / var - MU_DATA
    return (v + 0.2 * torch.sin(3 * xd) * s).to(x.dtype)


def _scheduler(config: dict, timesteps_kwargs: dict) -> FlowMatchEulerDiscreteScheduler:
    sched = FlowMatchEulerDiscreteScheduler(**config)
    sched.set_timesteps(**timesteps_kwargs)
    return sched


def reference_loop(config, timesteps_kwargs, x0, seed):
    """``(final latents, timesteps seen by the network)`` from the diffusers loop."""
    sched = _scheduler(config, timesteps_kwargs)
    torch.manual_seed(seed)  # diffusers 0.35's step draws from the global generator
    gen = torch.Generator().manual_seed(seed)
    x, seen = x0.clone(), []
    for t in sched.timesteps:
        tt = t.expand(x.shape[0])
        seen.append(tt[0].item())
        x = sched.step(velocity(x, tt), t, x, generator=gen, return_dict=False)[0]
    return x, np.asarray(seen)


def mapped_solution(config, timesteps_kwargs, x0, seed):
    """Forward substitution of the mapped system: ``(trajectory (n + 1, *shape), mapping)``."""
    mapping = map_scheduler(_scheduler(config, timesteps_kwargs))
    torch.manual_seed(seed)
    gen = mapping.step_generator(torch.Generator().manual_seed(seed))  # None where step() ignores it (diffusers 0.35)
    noise = torch.zeros((mapping.n, *x0.shape), dtype=x0.dtype)
    for i in range(mapping.n):  # the loop draws z_{i+1} at step i, in float32
        if mapping.noise_drawn[i]:
            dtype = torch.float32 if mapping.noise_in_float32 else x0.dtype
            noise[i] = float(mapping.noise_scale[i]) * randn_tensor(x0.shape, generator=gen, dtype=dtype).to(x0.dtype)
    ts = torch.as_tensor(mapping.timesteps)

    def g(x_rows, lo, hi):  # x_rows (hi - lo, B, C, H, W)
        w, b = hi - lo, x_rows.shape[1]
        scale = torch.as_tensor(mapping.input_scale[lo:hi], dtype=x_rows.dtype).reshape(w, 1, 1, 1, 1)
        t_rows = ts[lo:hi].repeat_interleave(b)  # (w * B,)
        m = velocity((scale * x_rows).reshape(w * b, *x_rows.shape[2:]), t_rows).reshape(x_rows.shape)
        return mapping.g(x_rows, m, lo, hi)

    system = trisolve.SemilinearSystem(mapping.a, mapping.B, g, c=noise, sigma=mapping.sigma, batch_ndim=1)
    return trisolve.forward_substitution(system, x0), mapping


CONFIGS = {
    "default": ({}, {"num_inference_steps": 12}),
    "shift3": ({"shift": 3.0}, {"num_inference_steps": 12}),
    "dynamic_exponential": ({"use_dynamic_shifting": True}, {"num_inference_steps": 10, "mu": 0.9}),
    "dynamic_linear": ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"num_inference_steps": 10, "mu": 1.3}),
    "shift_terminal": ({"shift": 3.0, "shift_terminal": 0.1}, {"num_inference_steps": 10}),
    "karras": ({"use_karras_sigmas": True, "shift": 2.0}, {"num_inference_steps": 10}),
    "exponential": ({"use_exponential_sigmas": True}, {"num_inference_steps": 10}),
    "beta": ({"use_beta_sigmas": True}, {"num_inference_steps": 10}),
    "invert_sigmas": ({"invert_sigmas": True}, {"num_inference_steps": 10}),
    "custom_sigmas_flux": ({"use_dynamic_shifting": True}, {"sigmas": list(np.linspace(1.0, 1 / 8, 8)), "mu": 0.7}),
    "custom_timesteps": ({}, {"sigmas": [1.0, 0.7, 0.4, 0.2, 0.05], "timesteps": [999.0, 700.0, 420.0, 200.0, 50.0]}),
    "stochastic": ({"stochastic_sampling": True}, {"num_inference_steps": 10}),
    "stochastic_karras_shift": ({"stochastic_sampling": True, "use_karras_sigmas": True, "shift": 3.0}, {"num_inference_steps": 10}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_substitution_equals_step_loop(name):
    config, ts_kwargs = CONFIGS[name]
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ref, seen = reference_loop(config, ts_kwargs, x0, seed=7)
    traj, mapping = mapped_solution(config, ts_kwargs, x0, seed=7)
    np.testing.assert_array_equal(mapping.timesteps, seen)  # what the network sees, as the pipeline passes it
    np.testing.assert_array_equal(mapping.input_scale, 1.0)
    assert traj.shape == (mapping.n + 1, *SHAPE)
    torch.testing.assert_close(traj[-1], ref, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(mapping.sigma)) and np.all(mapping.sigma >= 0)
    assert np.any(mapping.sigma > 0)


def test_stochastic_noise_matters():
    """The stochastic check is not vacuous: other noise gives another sample."""
    config, ts_kwargs = CONFIGS["stochastic"]
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ref, _ = reference_loop(config, ts_kwargs, x0, seed=7)
    traj, _ = mapped_solution(config, ts_kwargs, x0, seed=8)
    assert (traj[-1] - ref).abs().max() > 0.1


def test_dynamic_shift_changes_the_table():
    a = map_scheduler(_scheduler({"use_dynamic_shifting": True}, {"num_inference_steps": 10, "mu": 0.5})).flow_sigmas
    b = map_scheduler(_scheduler({"use_dynamic_shifting": True}, {"num_inference_steps": 10, "mu": 1.5})).flow_sigmas
    assert a.shape == b.shape == (11,) and np.all(b[1:-1] > a[1:-1])


def test_begin_index_maps_the_tail():
    """img2img: the loop starts at begin_index; the mapping holds the rows from there on."""
    sched = _scheduler({"shift": 3.0}, {"num_inference_steps": 10})
    sched.set_begin_index(4)
    mapping = map_scheduler(sched)
    assert mapping.n == 6
    np.testing.assert_array_equal(mapping.timesteps, sched.timesteps[4:].numpy())
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    ref = x.clone()
    for t in sched.timesteps[4:]:
        ref = sched.step(velocity(ref, t.expand(SHAPE[0])), t, ref, return_dict=False)[0]
    for j in range(mapping.n):
        x = mapping.a[j] * x + mapping.B[j, 0] * velocity(x, torch.as_tensor(mapping.timesteps[j]).expand(SHAPE[0]))
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)


def test_refusals():
    with pytest.raises(ValueError, match="set_timesteps"):
        map_scheduler(FlowMatchEulerDiscreteScheduler())
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(sigmas=[1.0, 1.0, 0.5])
    with pytest.raises(UnsupportedSchedulerError, match="repeated"):
        map_scheduler(sched)


# -- UniPC with flow sigmas (Wan's default scheduler) -------------------------------------------------
UNIPC_FLOW = {
    "wan": ({"flow_shift": 3.0}, {"num_inference_steps": 10}),
    "order3-shift5": ({"flow_shift": 5.0, "solver_order": 3}, {"num_inference_steps": 9}),
    "bh1-sigma-min": ({"flow_shift": 3.0, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}, {"num_inference_steps": 7}),
    "no-lower-order-final-sigma-min": ({"lower_order_final": False, "final_sigmas_type": "sigma_min"}, {"num_inference_steps": 8}),
    "corrector-off-at-2": ({"flow_shift": 2.0, "disable_corrector": [2]}, {"num_inference_steps": 8}),
}


def _unipc_flow(config, timesteps_kwargs):
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, **config)
    sched.set_timesteps(**timesteps_kwargs)
    sched.sigmas = sched.sigmas.double()  # the loop and the mapping read the same float64 numbers
    return sched


@pytest.mark.parametrize("name", list(UNIPC_FLOW))
def test_unipc_flow_prediction_equals_step_loop(name):
    """UniPC with ``flow_prediction`` and ``use_flow_sigmas`` (as Wan ships it) against its own ``step`` loop."""
    config, kw = UNIPC_FLOW[name]
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sched = _unipc_flow(config, kw)
    ref, traj = x0.clone(), [x0]
    for t in sched.timesteps:
        ref = sched.step(velocity(ref, t.expand(SHAPE[0]).double()), t, ref, return_dict=False)[0]
        traj.append(ref)
    mapping = map_scheduler(_unipc_flow(config, kw))
    ts = torch.as_tensor(mapping.timesteps).double()

    def g(x_rows, lo, hi):
        b = x_rows.shape[1]
        v = velocity(x_rows.reshape(-1, *x_rows.shape[2:]), ts[lo:hi].repeat_interleave(b)).reshape(x_rows.shape)
        return mapping.g(x_rows, v, lo, hi)

    system = trisolve.SemilinearSystem(mapping.a, mapping.B, g, sigma=mapping.sigma, batch_ndim=1)
    fs = trisolve.forward_substitution(system, x0)
    np.testing.assert_allclose(fs.numpy(), torch.stack(traj).numpy(), rtol=0, atol=1e-10)
    assert np.all(np.isfinite(mapping.sigma)) and np.all(mapping.sigma >= 0)
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, rtol=0.0, atol=1e-12, max_iter=mapping.n)
    np.testing.assert_allclose(sol.trajectory[-1].numpy(), ref.numpy(), rtol=0, atol=1e-9)


def test_unipc_flow_dynamic_shifting_equals_step_loop():
    """``use_dynamic_shifting`` with ``mu`` only changes the sigma table."""
    config, kw = {"use_dynamic_shifting": True}, {"num_inference_steps": 8, "mu": 1.1}
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sched, mapping = _unipc_flow(config, kw), map_scheduler(_unipc_flow(config, kw))
    ref = x.clone()
    for t in sched.timesteps:
        ref = sched.step(velocity(ref, t.expand(SHAPE[0]).double()), t, ref, return_dict=False)[0]
    ts = torch.as_tensor(mapping.timesteps).double()
    g = lambda x_rows, lo, hi: mapping.g(  # noqa: E731
        x_rows, velocity(x_rows.reshape(-1, *SHAPE[1:]), ts[lo:hi].repeat_interleave(SHAPE[0])).reshape(x_rows.shape), lo, hi
    )
    fs = trisolve.forward_substitution(trisolve.SemilinearSystem(mapping.a, mapping.B, g, batch_ndim=1), x)
    np.testing.assert_allclose(fs[-1].numpy(), ref.numpy(), rtol=0, atol=1e-10)


def test_unipc_flow_without_predict_x0_is_refused():
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, predict_x0=False)
    sched.set_timesteps(6)
    with pytest.raises(UnsupportedSchedulerError, match="predict_x0=True"):
        map_scheduler(sched)
