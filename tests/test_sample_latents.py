"""sample_latents below any pipeline: parity with a hand-written loop over scheduler.step, options, faults."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
)

import trisolve
import trisolve_diffusion as td
from trisolve_diffusion.models.closed_form import GaussianMixtureDenoiser

T = 200


def gmm(scheduler, k=8, shape=(2, 6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    model = GaussianMixtureDenoiser(torch.rand(k, *shape, generator=g) * 2 - 1, scheduler.alphas_cumprod, std=0.05)
    return lambda x, t: model(x, t).sample


def sequential(denoiser, scheduler, latents, generator=None, eta=None):
    """The loop a pipeline runs: scale_model_input, denoiser, scheduler.step."""
    x = latents
    kw = {} if eta is None else {"eta": eta}
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        out = denoiser(inp, t.reshape(1).expand(x.shape[0]))
        x = scheduler.step(out, t, x, generator=generator, **kw).prev_sample
    return x


SCHEDULERS = [
    ("ddim", lambda: DDIMScheduler(num_train_timesteps=T, clip_sample=False), {}),
    ("ddim-eta1-clip", lambda: DDIMScheduler(num_train_timesteps=T, set_alpha_to_one=False), {"eta": 1.0}),
    ("ddpm", lambda: DDPMScheduler(num_train_timesteps=T, clip_sample=False), {}),
    ("dpm++2m", lambda: DPMSolverMultistepScheduler(num_train_timesteps=T), {}),
    ("sde-dpm++2m", lambda: DPMSolverMultistepScheduler(num_train_timesteps=T, algorithm_type="sde-dpmsolver++"), {}),
]


@pytest.mark.parametrize("name,make,kw", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_sample_latents_equals_a_loop_over_scheduler_step(name, make, kw):
    sched = make()
    sched.set_timesteps(15)
    den = gmm(sched)
    latents = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    ref = sequential(den, make_set(make, 15), latents.clone(), torch.Generator().manual_seed(7), **kw)
    opts = dict(atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, progress=False)
    final, sol = td.sample_latents(den, sched, latents, generator=torch.Generator().manual_seed(7), **opts, **kw)
    assert sol.converged and sol.num_rounds <= 15
    assert final.dtype == latents.dtype and final.shape == latents.shape
    torch.testing.assert_close(final, ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(sol.trajectory[0].float(), latents)


def make_set(make, steps):
    s = make()
    s.set_timesteps(steps)
    return s


def test_default_tolerance_is_close_to_the_loop():
    sched = make_set(lambda: DDIMScheduler(num_train_timesteps=T, clip_sample=False), 25)
    den = gmm(sched, seed=3)
    latents = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    ref = sequential(den, sched, latents.clone())
    final, sol = td.sample_latents(den, sched, latents, progress=False)
    psnr = 10 * torch.log10(4.0 / ((final - ref) ** 2).mean())  # latents in about [-1, 1]: peak-to-peak 2
    assert sol.converged and psnr >= 45


def test_input_scale_and_timesteps_reach_the_denoiser():
    sched = make_set(lambda: DDIMScheduler(num_train_timesteps=T), 6)
    seen = []

    def den(x, t):
        seen.append((x.shape, t.clone()))
        return torch.zeros_like(x)

    latents = torch.randn(2, 1, 4, 4)
    td.sample_latents(den, sched, latents, progress=False, solver=trisolve.Jacobi())
    for shape, t in seen:  # one call per round on (w * B, C, H, W), timesteps (w * B,) row-major
        assert shape[0] == t.shape[0] and shape[0] % 2 == 0 and shape[1:] == (1, 4, 4)
        assert t.dtype == sched.timesteps.dtype
        assert torch.equal(t[0::2], t[1::2])
        assert set(t.tolist()) <= set(sched.timesteps.tolist())


def test_classifier_free_guidance_matches_the_pipeline_formula():
    torch.manual_seed(0)
    x, t = torch.randn(3, 2, 4, 4), torch.zeros(3)
    cond, uncond = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    model = lambda x2, t2: torch.cat([uncond, cond]) * 1.0 + 0 * x2  # noqa: E731
    out = td.classifier_free_guidance(model, 5.0)(x, t)
    torch.testing.assert_close(out, uncond + 5.0 * (cond - uncond))
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    out = td.classifier_free_guidance(model, 5.0, guidance_rescale=0.7)(x, t)
    torch.testing.assert_close(out, rescale_noise_cfg(uncond + 5.0 * (cond - uncond), cond, guidance_rescale=0.7))
    with pytest.raises(ValueError, match="guidance_rescale"):
        td.classifier_free_guidance(model, 5.0, guidance_rescale=2.0)


def test_solve_keywords_are_validated_before_any_work():
    sched = make_set(lambda: DDIMScheduler(num_train_timesteps=T), 4)
    calls = []

    def run(**kw):
        return td.sample_latents(lambda x, t: calls.append(1) or x, sched, torch.zeros(1, 1, 2, 2), **kw)

    for kw, exc, match in [
        (dict(update_map=trisolve.Picard(), order=2), ValueError, "either order= or update_map="),
        (dict(trajectory_dtype=torch.float16), TypeError, "trajectory_dtype"),
        (dict(atol=-1.0), ValueError, "atol must be a finite number"),
        (dict(atol=0.0, rtol=0.0), ValueError, "both 0"),
        (dict(num_frozen=3), ValueError, "num_frozen > 1 keeps rows of init"),
        (dict(solver="taa"), TypeError, "solver must be a trisolve solver"),
        (dict(window=0), ValueError, "window"),
        (dict(progress="yes"), TypeError, "progress"),
        (dict(tolerance=1e-3), TypeError, r"unexpected keyword argument\(s\) tolerance; its solve keywords are atol, callback"),
        (dict(init=torch.zeros(4, 1, 1, 2, 2)), ValueError, r"init must be a tensor of shape \(n \+ 1, \*latents.shape\) = \(5, 1, 1, 2, 2\)"),
        (dict(options={"atol": 1}), TypeError, "options must be a trisolve_diffusion.SolveOptions"),
    ]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # order=
            with pytest.raises(exc, match=match):
                run(**kw)
    assert calls == []
    _, sol = run(atol=np.float32(1e-4), max_iter=np.int64(8), window=np.int64(4), progress=False, strict=True)
    assert sol.tolerance.atol == pytest.approx(1e-4)


def test_progress_bar_without_a_pipeline(capsys):
    sched = make_set(lambda: DDIMScheduler(num_train_timesteps=T), 8)
    td.sample_latents(gmm(sched, shape=(1, 2, 2)), sched, torch.randn(1, 1, 2, 2))
    err = capsys.readouterr().err
    assert "parallel sampling" in err and "8/8" in err and "round=" in err
    td.sample_latents(gmm(sched, shape=(1, 2, 2)), sched, torch.randn(1, 1, 2, 2), progress=False)
    assert capsys.readouterr().err == ""


def test_unconverged_end_warns_or_raises_under_strict():
    sched = make_set(lambda: DDIMScheduler(num_train_timesteps=T, clip_sample=False), 20)
    den, latents = gmm(sched), torch.randn(1, 2, 6, 6)
    opts = dict(max_iter=2, atol=1e-7, rtol=0.0, progress=False)
    with pytest.warns(td.UnconvergedSampleWarning, match="MAX_ITER"):
        _, sol = td.sample_latents(den, sched, latents, **opts)
    assert sol.status is trisolve.Status.MAX_ITER
    with pytest.raises(td.UnconvergedSampleError, match="MAX_ITER") as info:
        td.sample_latents(den, sched, latents, **opts | dict(strict=True))
    assert info.value.solution.num_rounds == 2
    with pytest.warns(td.UnconvergedSampleWarning, match="STOPPED_BY_CALLBACK"):
        td.sample_latents(den, sched, latents, **opts | dict(max_iter=None, callback=lambda info: info.round >= 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a converged solve is silent
        td.sample_latents(den, sched, latents, progress=False)


def test_ctrl_c_stays_a_keyboard_interrupt_with_the_partial_solution():
    sched = make_set(lambda: DDIMScheduler(num_train_timesteps=T, clip_sample=False), 20)
    inner, calls = gmm(sched), [0]

    def den(x, t):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return inner(x, t)

    with pytest.raises(KeyboardInterrupt) as info:
        opts = dict(atol=1e-7, rtol=0.0, progress=False, window=trisolve.FullWindow())  # no timing calls first
        td.sample_latents(den, sched, torch.randn(1, 2, 6, 6), **opts)
    assert isinstance(info.value, td.SamplingInterrupted) and not isinstance(info.value, Exception)
    assert info.value.solution.num_rounds == 2 and info.value.solution.status is trisolve.Status.INTERRUPTED


def test_inpainting_blend_equals_the_blended_loop():
    """x_i <- m * step(x_{i-1}) + (1 - m) * q_i, as diffusers' 4-channel inpainting loop."""
    makers = (
        lambda: DDIMScheduler(num_train_timesteps=T, clip_sample=False),
        lambda: DPMSolverMultistepScheduler(num_train_timesteps=T),
        lambda: EulerDiscreteScheduler(),  # solved on unit-scale rows: the known latents are rescaled too
    )
    for make in makers:
        sched = make_set(make, 12)
        den = gmm(sched)
        latents = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(4)) * sched.init_noise_sigma
        mask = (torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(5)) > 0.5).float()
        known = torch.randn(12, 2, 2, 6, 6, generator=torch.Generator().manual_seed(6))
        ref_sched, x = make_set(make, 12), latents.clone()
        for i, t in enumerate(ref_sched.timesteps):
            x = ref_sched.step(den(ref_sched.scale_model_input(x, t), t.reshape(1).expand(2)), t, x).prev_sample
            x = mask * x + (1 - mask) * known[i]
        opts = dict(atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, progress=False)
        final, sol = td.sample_latents(den, sched, latents, **opts, mask=mask, known_latents=known)
        assert sol.converged
        torch.testing.assert_close(final, x, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="together"):
        td.sample_latents(den, sched, latents, mask=mask)


def test_the_denoiser_reads_the_models_dtype_once_per_solve(monkeypatch):
    """A diffusers model's ``.dtype`` walks every submodule on each read: the denoiser reads it once per
    ``sample()``, not once per round (reads inside the network's own forward are the network's)."""
    from diffusers import UNet2DModel

    from trisolve_diffusion.models import load_digits_pipeline

    pipe = load_digits_pipeline("ddim")
    pipe.set_progress_bar_config(disable=True)
    reads, inside = [], [0]
    orig_dtype = UNet2DModel.dtype

    def dtype(self):
        if not inside[0]:
            reads.append(1)
        return orig_dtype.fget(self)

    forward = pipe.unet.forward

    def counted_forward(*a, **k):
        inside[0] += 1
        try:
            return forward(*a, **k)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(UNet2DModel, "dtype", property(dtype))
    monkeypatch.setattr(pipe.unet, "forward", counted_forward)
    out = td.sample(pipe, num_inference_steps=10, generator=torch.manual_seed(0), output_type="np")
    assert out.solution.num_rounds >= 3
    assert len(reads) <= 3, reads  # the pipeline's setup and the denoiser's one read, whatever the rounds


K_DIFFUSION = [
    ("euler", lambda: EulerDiscreteScheduler()),  # 1000 training steps: sigma up to ~14.6
    ("euler-ancestral", lambda: EulerAncestralDiscreteScheduler()),
    ("lms", lambda: LMSDiscreteScheduler()),
]


@pytest.mark.parametrize("name,make", K_DIFFUSION, ids=[s[0] for s in K_DIFFUSION])
def test_k_diffusion_loops_solve_unit_scale_rows_and_return_latents(name, make):
    """The solve runs on ``row_scale * x`` (``mapping.scaled()``); trajectory, warm start, callback and blend stay in latent units."""
    sched = make_set(make, 10)
    den = gmm(sched)
    latents = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * sched.init_noise_sigma
    mapping = td.map_scheduler(sched)
    assert mapping.row_scale is not None and mapping.row_scale[0] < 0.1  # the noisy end is far from unit scale
    # the loop's own trajectory, row by row (the reference for every row, not only the last)
    ref_sched, x, ref = make_set(make, 10), latents.clone(), [latents.clone()]
    kw = {"generator": torch.Generator().manual_seed(7)} if name == "euler-ancestral" else {}
    for t in ref_sched.timesteps:
        x = ref_sched.step(den(ref_sched.scale_model_input(x, t), t.reshape(1).expand(2)), t, x, **kw).prev_sample
        ref.append(x)
    ref = torch.stack(ref)  # (n + 1, B, *event)
    seen = []
    opts = dict(atol=1e-6, rtol=0.0, progress=False, callback=lambda info: seen.append(info.trajectory[0].clone()))
    final, sol = td.sample_latents(den, sched, latents, generator=torch.Generator().manual_seed(7), **opts)
    assert sol.converged
    torch.testing.assert_close(sol.trajectory, ref, atol=5e-4 * float(sched.init_noise_sigma), rtol=1e-4)
    torch.testing.assert_close(final, ref[-1], atol=5e-5, rtol=0)
    torch.testing.assert_close(seen[0], latents)  # the callback reads latents, not the solve's rows
    # a warm start from that trajectory (latent units) with rows 0..5 kept: the same sample
    again, sol2 = td.sample_latents(den, make_set(make, 10), latents, generator=torch.Generator().manual_seed(7),
                                    **opts | dict(init=sol.trajectory.clone(), num_frozen=6, callback=None))  # fmt: skip
    torch.testing.assert_close(again, final, atol=5e-5, rtol=0)
    torch.testing.assert_close(sol2.trajectory[:6], sol.trajectory[:6])


def test_tolerance_on_scaled_rows_is_stated_in_latent_units():
    """Every returned row meets ``RMS(step(x_{i-1}) - x_i) <= atol + rtol * sigma_i`` in latent units, ``step`` the real scheduler's."""
    from trisolve_diffusion.sampler import _UnitRows

    make = lambda: EulerDiscreteScheduler()  # noqa: E731
    sched = make_set(make, 20)
    mapping = td.map_scheduler(sched)
    opts = dict(atol=2e-3, rtol=1e-3, final_row_atol=None, progress=False)
    rows = _UnitRows(mapping, td.SolveOptions(**opts))  # the per-row thresholds handed to trisolve.solve, in the solve's units
    c = mapping.row_scale
    np.testing.assert_allclose(rows.sigma, c[1:] * (2e-3 + 1e-3 * mapping.sigma), rtol=1e-12)
    assert rows.tolerance == {"atol": 0.0, "rtol": 1.0}
    den = gmm(sched, seed=2)
    latents = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(3)) * sched.init_noise_sigma
    _, sol = td.sample_latents(den, sched, latents, **opts)
    assert sol.status is trisolve.Status.CONVERGED
    check, X = make_set(make, 20), sol.trajectory
    for i, t in enumerate(check.timesteps, start=1):
        step = check.step(den(check.scale_model_input(X[i - 1], t), t.reshape(1).expand(2)), t, X[i - 1]).prev_sample
        rms = (step - X[i]).pow(2).flatten(1).mean(1).sqrt()  # per sample
        assert float(rms.max()) <= 2e-3 + 1e-3 * mapping.sigma[i - 1] + 1e-6, (i, rms, mapping.sigma[i - 1])


@pytest.mark.parametrize("name,make,kw", SCHEDULERS[:3] + [("euler", lambda: EulerDiscreteScheduler(num_train_timesteps=T), {})],
                         ids=[s[0] for s in SCHEDULERS[:3]] + ["euler"])  # fmt: skip
def test_forward_substitution_runs_row_by_row_as_the_loop(name, make, kw):
    """Window 1 runs without the driver (one call and one row update per step): bitwise the driver's window-1 solve,
    the loop over scheduler.step to round-off, CONVERGED with n rounds of one row."""
    sched = make()
    sched.set_timesteps(12)
    den = gmm(sched)
    latents = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * sched.init_noise_sigma
    ref = sequential(den, make_set(make, 12), latents.clone(), torch.Generator().manual_seed(7), **kw)
    calls = []

    def counted(x, t):
        calls.append(x.shape[0])
        return den(x, t)

    final, sol = td.sample_latents(counted, sched, latents, generator=torch.Generator().manual_seed(7), window=1, progress=False, **kw)
    assert sol.status is trisolve.Status.CONVERGED and sol.num_frozen == sol.n + 1 and sol.num_rounds == sol.n == 12
    assert sol.windows == [(i, i + 1) for i in range(1, 13)] and sol.num_evals == len(calls) and set(calls) == {3}
    assert "num_restarts" not in sol.stats  # no solver ran
    driven = td.sample_latents(
        den, sched, latents, generator=torch.Generator().manual_seed(7), window=1, progress=False, callback=lambda info: False, **kw
    )[1]
    assert "num_restarts" in driven.stats  # the callback keeps the driver
    assert torch.equal(sol.trajectory, driven.trajectory)
    torch.testing.assert_close(final, ref, rtol=0, atol=2e-5 * max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize("fault", ["raise", "nan"])
def test_forward_substitution_row_by_row_keeps_the_rows_before_a_fault(fault):
    sched = DDIMScheduler(num_train_timesteps=T, clip_sample=False)
    sched.set_timesteps(10)
    den = gmm(sched)
    latents = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    calls = [0]

    def faulty(x, t):
        calls[0] += 1
        if calls[0] == 5 and fault == "raise":
            raise RuntimeError("network down")
        out = den(x, t)
        return out * float("nan") if calls[0] == 5 else out

    whole = td.sample_latents(den, sched, latents, window=1, progress=False)[1]
    with pytest.raises(td.ParallelSamplingError, match="network down" if fault == "raise" else "NONFINITE") as info:
        td.sample_latents(faulty, sched, latents, window=1, progress=False)
    sol = info.value.solution
    assert sol.status is (trisolve.Status.FAILED if fault == "raise" else trisolve.Status.NONFINITE)
    assert sol.num_frozen == 5 and torch.equal(sol.trajectory[:5], whole.trajectory[:5])
    assert torch.isfinite(sol.trajectory).all() and torch.equal(sol.trajectory[5:], sol.trajectory[4].expand(6, *latents.shape))


def test_a_process_group_of_one_rank_runs_as_one_process():
    """distributed=True in a group of one process: no split and no collective; the sample is the single-process one, bit for bit."""
    import torch.distributed as dist

    sched = DDIMScheduler(num_train_timesteps=T, clip_sample=False)
    sched.set_timesteps(10)
    den = gmm(sched)
    latents = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    alone = td.sample_latents(den, sched, latents, window=4, progress=False)[1]
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        grouped = td.sample_latents(den, sched, latents, window=4, progress=False, distributed=True)[1]
    finally:
        dist.destroy_process_group()
    assert "collectives" not in grouped.stats and torch.equal(grouped.trajectory, alone.trajectory)
