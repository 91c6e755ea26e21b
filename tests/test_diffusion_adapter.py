"""The diffusion adapter's contract: refusals, options, progress bar, warm starts, early stopping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
)

import trisolve
import trisolve_diffusion as td
from trisolve_diffusion.models.closed_form import GaussianMixtureDenoiser
from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion


def gmm_pipe(cls=DDIMPipeline, scheduler=None, k=6, size=4, seed=0):
    scheduler = scheduler or DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False)
    g = torch.Generator().manual_seed(seed)
    model = GaussianMixtureDenoiser(torch.rand(k, 1, size, size, generator=g) * 2 - 1, scheduler.alphas_cumprod, std=0.05)
    pipe = cls(unet=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_refuses_unsupported_pipelines_and_schedulers():
    with pytest.raises(TypeError, match="supports StableDiffusionPipeline.*sample_latents"):
        td.sample(object())
    pipe = gmm_pipe(DDPMPipeline)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)  # mapped, but DDPMPipeline never scales its input
    with pytest.raises(td.UnsupportedSchedulerError, match="neither scales its initial noise.*nor calls scale_model_input"):
        td.sample(pipe, num_inference_steps=5)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(td.UnsupportedSchedulerError, match="LCMScheduler is not supported.*DPMSolverMultistepScheduler"):
        td.sample(pipe, num_inference_steps=5)
    pipe.scheduler = DDPMScheduler(variance_type="learned_range")
    with pytest.raises(td.UnsupportedSchedulerError, match="variance_type='learned_range'"):
        td.sample(pipe, num_inference_steps=5)
    pipe.scheduler = DDPMScheduler(variance_type="fixed_large_log")
    with pytest.raises(td.UnsupportedSchedulerError, match="fixed_large_log"):
        td.sample(pipe, num_inference_steps=5)
    pipe.scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver", final_sigmas_type="sigma_min")
    pipe.scheduler.register_to_config(final_sigmas_type="zero")  # diffusers refuses this at construction; the mapping too
    with pytest.raises(td.UnsupportedSchedulerError, match="non-finite step coefficients"):
        td.sample(pipe, num_inference_steps=5)
    pipe.scheduler = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", solver_order=3, final_sigmas_type="sigma_min")
    with pytest.raises(td.UnsupportedSchedulerError, match="no third-order"):
        td.sample(pipe, num_inference_steps=5)


def test_refuses_arguments_without_meaning_in_a_parallel_solve():
    sd = build_tiny_stable_diffusion()
    sd.set_progress_bar_config(disable=True)
    with pytest.raises(TypeError, match="callback_steps: diffusers' deprecated per-step callback cannot run inside a parallel solve"):
        td.sample(sd, "a cat", callback_steps=1)
    with pytest.raises(TypeError, match="unexpected arguments \\['not_an_argument'\\]"):
        td.sample(sd, "a cat", not_an_argument=1)
    with pytest.raises(TypeError, match="DDIMPipeline: got an unexpected keyword argument 'prompt'"):
        td.sample(gmm_pipe(), prompt="x")
    with pytest.raises(ValueError, match=r"latents must have shape .* = \(1, 4, 16, 16\)"):
        td.sample(sd, "a cat", latents=torch.zeros(1, 4, 8, 8), num_inference_steps=2)
    with pytest.raises(ValueError, match="negative_prompt has 1 entries for 2 prompts"):
        td.sample(sd, ["a", "b"], negative_prompt=["c"], num_inference_steps=2)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        td.sample(gmm_pipe(), num_inference_steps=0)
    with pytest.raises(ValueError, match="You passed 1 generators for batch_size=2"):
        td.sample(gmm_pipe(), batch_size=2, generator=[torch.manual_seed(0)])
    with pytest.raises(TypeError, match="trajectory_dtype"):
        td.sample(gmm_pipe(), trajectory_dtype=torch.float16)
    with pytest.raises(ValueError, match="max_batch_size"):
        td.sample(gmm_pipe(), max_batch_size=0)
    with pytest.warns(DeprecationWarning, match="order="), pytest.raises(ValueError, match="either order= or update_map="):
        td.sample(gmm_pipe(), num_inference_steps=4, solver=trisolve.Jacobi(), update_map=trisolve.Picard(), order=2)
    with pytest.raises(ValueError, match=r"init must be a tensor of shape"):
        td.sample(gmm_pipe(), num_inference_steps=4, init=torch.zeros(3, 1, 1, 4, 4))


def test_rounds_never_exceed_steps_and_result_is_attached():
    pipe = gmm_pipe()
    for steps in (1, 2, 7, 30):
        out = td.sample(pipe, num_inference_steps=steps, generator=torch.manual_seed(0), output_type="np")
        sol = out.solution
        assert isinstance(sol, trisolve.Solution) and sol.status.ok  # the output-aware finish may end it (pixel space)
        assert 1 <= sol.num_rounds <= steps
        assert sol.trajectory.shape == (steps + 1, 1, 1, 4, 4)
        assert sol.residuals.shape == (sol.num_rounds, steps + 1)
        assert out.wall_time > 0
    # return_dict=False: exactly the pipeline's tuple; the solution through return_solution=True
    ref = pipe(num_inference_steps=5, generator=torch.manual_seed(0), return_dict=False)
    out = td.sample(pipe, num_inference_steps=5, generator=torch.manual_seed(0), return_dict=False)
    assert isinstance(out, tuple) and len(out) == len(ref) == 1 and len(out[0]) == 1
    (images,), sol = td.sample(pipe, num_inference_steps=5, generator=torch.manual_seed(0), return_dict=False, return_solution=True)
    assert isinstance(sol, trisolve.Solution) and len(images) == 1


def test_progress_bar_follows_set_progress_bar_config(capsys):
    pipe = gmm_pipe()
    pipe.set_progress_bar_config(disable=False, desc="parallel", ncols=120)
    td.sample(pipe, num_inference_steps=20, generator=torch.manual_seed(0))
    err = capsys.readouterr().err
    assert "parallel" in err and "20/20" in err and "round=" in err and "status=CONVERGED" in err  # the bar's end
    pipe.set_progress_bar_config(disable=True)
    td.sample(pipe, num_inference_steps=20, generator=torch.manual_seed(0))
    assert capsys.readouterr().err == ""


def test_warm_start_from_an_earlier_trajectory_is_exact_and_faster():
    pipe = gmm_pipe(k=12, size=6)
    full = trisolve.FullWindow()  # the rounds, not the automatic window's timing (which may pick forward substitution), decide
    first = td.sample(pipe, num_inference_steps=40, generator=torch.manual_seed(1), output_type="np", atol=1e-6, rtol=0, window=full)
    again = td.sample(
        pipe,
        num_inference_steps=40,
        generator=torch.manual_seed(1),
        output_type="np",
        atol=1e-6,
        rtol=0,
        init=first.solution.trajectory,
        window=full,
    )
    # the earlier trajectory meets the step test (scaled errors <= 1), but its rows sit at the float32 round-off floor of
    # atol = 1e-6 and do not contract: they settle by passing FREEZE_PASSES rounds (trisolve.driver._freeze_ends), and the
    # last rows, whose floor is near the threshold (scaled 0.6-1.2), may fail one round (measured: 4 rounds, cold 12)
    assert again.solution.num_rounds <= trisolve.driver.FREEZE_PASSES + 1 < first.solution.num_rounds
    np.testing.assert_allclose(again.images, first.images, atol=1e-5)


def test_partial_reuse_gives_a_variation_with_the_same_start():
    pipe = gmm_pipe(cls=DDPMPipeline, scheduler=DDPMScheduler(clip_sample=False), k=12, size=6)
    base = td.sample(pipe, num_inference_steps=30, generator=torch.manual_seed(2), output_type="np")
    traj = base.solution.trajectory
    var = td.sample(pipe, num_inference_steps=30, generator=torch.manual_seed(3), output_type="np", init=traj, num_frozen=11)
    # the kept rows are untouched, the rest is solved again with the new noise
    torch.testing.assert_close(var.solution.trajectory[1:11], traj[1:11])
    assert var.solution.num_rounds <= 20
    assert not np.allclose(var.images, base.images)


def test_early_stopping_saves_rounds_and_stays_close():
    # a tight tolerance, so that the final latent settles (change <= early_stop * atol = 1e-3) before
    # every row is certified: early stopping must fire, save rounds, warn, and stay close. The whole
    # window is fixed: the timed automatic window may pick forward substitution for this cheap
    # network on a loaded machine, which has no final-row change to stop on
    pipe = gmm_pipe(k=12, size=6)
    kw = dict(num_inference_steps=50, output_type="np", atol=1e-7, rtol=0, trajectory_dtype=torch.float64, window=50)
    full = td.sample(pipe, generator=torch.manual_seed(4), **kw)
    with pytest.warns(td.UnconvergedSampleWarning):
        early = td.sample(pipe, generator=torch.manual_seed(4), early_stop=1e4, **kw)
    assert full.solution.converged and early.solution.status is trisolve.Status.EARLY_STOPPED
    assert early.solution.num_rounds < full.solution.num_rounds
    assert 0 < np.abs(early.images - full.images).max() < 1e-4


def test_sliding_window_and_other_solvers_agree():
    pipe = gmm_pipe(k=10, size=5)
    ref = pipe(num_inference_steps=25, generator=torch.manual_seed(5), output_type="np").images
    for kw in (
        dict(window=6),
        dict(solver=trisolve.Jacobi(), update_map=trisolve.OneStep()),
        dict(solver=trisolve.Anderson(), update_map=trisolve.Unrolled(order=5)),
        dict(update_map=trisolve.Picard(order=4)),
    ):
        out = td.sample(
            pipe,
            num_inference_steps=25,
            generator=torch.manual_seed(5),
            output_type="np",
            atol=1e-7,
            rtol=0,
            trajectory_dtype=torch.float64,
            **kw,
        )
        assert out.solution.converged and out.solution.num_rounds <= 25
        np.testing.assert_allclose(out.images, ref, atol=2e-5)


def test_network_failure_raises_with_the_partial_solution():
    pipe = gmm_pipe()
    calls = {"n": 0}
    real = pipe.unet.forward

    def flaky(sample, timestep, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(sample, timestep, *a, **k)

    pipe.unet.forward = flaky
    try:
        with pytest.raises(td.ParallelSamplingError, match="FAILED") as info:  # the full window: no timing calls before round 1
            td.sample(pipe, num_inference_steps=30, generator=torch.manual_seed(0), atol=1e-6, rtol=0, window=trisolve.FullWindow())
    finally:
        pipe.unet.forward = real
    sol = info.value.solution
    assert sol.num_rounds == 2 and sol.num_frozen >= 3
    assert isinstance(info.value.__cause__, RuntimeError)
    resumed = td.sample(
        pipe,
        num_inference_steps=30,
        generator=torch.manual_seed(0),
        atol=1e-6,
        rtol=0,
        init=sol.trajectory,
        num_frozen=sol.num_frozen,
        output_type="np",
    )
    ref = pipe(num_inference_steps=30, generator=torch.manual_seed(0), output_type="np").images
    np.testing.assert_allclose(resumed.images, ref, atol=2e-5)


def test_network_returning_nan_raises_with_status():
    pipe = gmm_pipe()
    real = pipe.unet.forward
    pipe.unet.forward = lambda sample, timestep, *a, **k: type(real(sample, timestep))(sample=torch.full_like(sample, float("nan")))
    try:
        with pytest.raises(td.ParallelSamplingError, match="NONFINITE"):
            td.sample(pipe, num_inference_steps=10, generator=torch.manual_seed(0))
    finally:
        pipe.unet.forward = real


@pytest.mark.parametrize(
    "config,identity",
    [
        (dict(set_alpha_to_one=False, clip_sample=False), True),  # last step t=0 -> abar[0]: identity
        (dict(set_alpha_to_one=False, clip_sample=False, prediction_type="v_prediction"), True),
        (dict(set_alpha_to_one=False, clip_sample=True), False),  # clipping x0_hat breaks it
        (dict(set_alpha_to_one=False, clip_sample=False, thresholding=True), False),
        (dict(set_alpha_to_one=True, clip_sample=False), False),  # last step -> abar = 1
        (dict(set_alpha_to_one=False, clip_sample=False, steps_offset=1), False),  # last t = 1
    ],
)
def test_ddim_identity_step_is_written_exactly(config, identity):
    from trisolve_diffusion.schedulers import map_scheduler

    sched = DDIMScheduler(num_train_timesteps=1000, **config)
    sched.set_timesteps(25)
    m = map_scheduler(sched, eta=1.0)
    expected_linear = np.zeros(25, dtype=bool)
    expected_linear[-1] = identity
    np.testing.assert_array_equal(~np.any(m.B != 0, axis=1), expected_linear)
    if identity:
        assert m.a[-1] == 1.0 and m.noise_scale[-1] == 0.0
        # and the step really is the identity in diffusers' own step, up to float32 rounding
        x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
        prev = sched.step(out, sched.timesteps[-1], x, eta=0.0).prev_sample
        torch.testing.assert_close(prev, x, rtol=0, atol=1e-5)


class _RecordingBar:
    """A tqdm-like bar that records its position and postfixes."""

    def __init__(self, total):
        self.total, self.n, self.postfixes, self.closed = total, 0, [], False

    def update(self, k):
        assert k > 0
        self.n += k

    def set_postfix(self, refresh=True, **kw):
        self.postfixes.append(kw)

    def close(self):
        self.closed = True


@pytest.mark.parametrize(
    "options, status",
    [
        (dict(), trisolve.Status.CONVERGED),
        (dict(final_row_atol=0.5), trisolve.Status.FINAL_ROW_CONVERGED),
        (dict(max_iter=3), trisolve.Status.MAX_ITER),
    ],
)
def test_progress_bar_ends_at_100_percent_on_a_solution_and_shows_pending_residuals(options, status):
    """A finished solve ends its bar at n/n; max_res is the largest scaled residual of the steps still pending."""
    pipe = gmm_pipe()
    pipe.scheduler.set_timesteps(30)
    latents = torch.randn(2, 1, 4, 4, generator=torch.manual_seed(0))
    bars, infos = [], []

    def progress(total):
        bars.append(_RecordingBar(total))
        return bars[-1]

    # the whole window (the automatic one may choose forward substitution for this cheap network, one row a round)
    opts = dict(progress=progress, callback=infos.append, window=trisolve.FullWindow(), **options)
    with pytest.warns(td.UnconvergedSampleWarning) if status is trisolve.Status.MAX_ITER else _no_warning():
        _, sol = td.sample_latents(lambda x, t: pipe.unet(x, t).sample, pipe.scheduler, latents, **opts)
    assert sol.status is status
    (bar,) = bars
    assert bar.total == 30 and bar.closed
    assert bar.n == (30 if status.ok else sol.num_frozen - 1)
    if status is not trisolve.Status.CONVERGED:
        assert sol.num_frozen - 1 < 30  # steps were still pending: a FINAL_ROW_CONVERGED bar completes anyway
    per_round, end = bar.postfixes[:-1], bar.postfixes[-1]
    assert end == {"round": sol.num_rounds, "status": status.name}
    assert len(per_round) == sol.num_rounds == len(infos)
    for shown, info in zip(per_round, infos):
        pending = info.errors[info.num_frozen - info.lo :]
        assert shown["frozen"] == info.num_frozen - 1
        if pending.size:
            assert float(shown["max_res"]) == pytest.approx(float(pending.max()), rel=1e-2)
        else:
            assert "max_res" not in shown and info.num_frozen == 31


def _no_warning():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def cm():
        with warnings.catch_warnings():
            warnings.simplefilter("error", td.UnconvergedSampleWarning)
            yield

    return cm()


def test_callback_on_step_end_gets_the_calls_pipe_makes():
    """diffusers' per-step callback, passed as to pipe(...): same step indices, timesteps and latents, once per step."""
    sd = build_tiny_stable_diffusion()
    sd.set_progress_bar_config(disable=True)
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config)

    def recorder(store):
        def callback(pipe, i, t, callback_kwargs):
            assert pipe is sd
            store.append((i, int(t), callback_kwargs["latents"].clone()))
            return callback_kwargs

        return callback

    ref, got = [], []
    kw = dict(prompt="a cat", num_inference_steps=6, output_type="latent")
    sd(**kw, generator=torch.manual_seed(0), callback_on_step_end=recorder(ref))
    td.sample(sd, **kw, generator=torch.manual_seed(0), callback_on_step_end=recorder(got),
              atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, progress=False)  # fmt: skip
    assert len(ref) == 6
    assert [(i, t) for i, t, _ in got] == [(i, t) for i, t, _ in ref]
    for (_, _, a), (_, _, b) in zip(got, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)  # float32 round-off of the two loops

    def changes(pipe, i, t, callback_kwargs):
        return {"latents": callback_kwargs["latents"] * 0}

    with pytest.raises(ValueError, match="returned changed latents at step 0.*cannot change the latents"):
        td.sample(sd, **kw, generator=torch.manual_seed(0), callback_on_step_end=changes, progress=False)
    with pytest.raises(ValueError, match="has to be in"):
        td.sample(sd, **kw, callback_on_step_end=recorder([]), callback_on_step_end_tensor_inputs=["not_a_tensor"])
    with pytest.raises(TypeError, match="DDIMPipeline.*takes no callback_on_step_end"):
        td.sample(gmm_pipe(), callback_on_step_end=recorder([]))
