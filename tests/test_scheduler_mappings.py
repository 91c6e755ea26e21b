"""Every scheduler mapping against the real diffusers loop (``scale_model_input`` + ``step``).

For each scheduler and option: forward substitution of the mapped semilinear system (and a
parallel ``trisolve.solve`` at a tight tolerance) reproduces the trajectory of a hand-written
loop that calls ``scheduler.scale_model_input`` and ``scheduler.step`` on a closed-form
Gaussian-mixture denoiser. The schedulers' float32 tables are promoted to float64 first (the
mapping and the loop then read the same numbers), so the comparison is at float64 round-off,
except for the Euler family, whose ``step`` rounds the latents to float32.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

import trisolve
from trisolve_diffusion.models.closed_form import GaussianMixtureDenoiser
from trisolve_diffusion.schedulers import UnsupportedSchedulerError, map_scheduler

SHAPE = (2, 1, 4, 4)  # (batch, C, H, W): the event of one row
MEANS = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).clamp(-1, 1)


class MixtureModel:
    """``model(model_input (N, C, H, W), t (N,) or scalar) -> output`` of a 3-component Gaussian mixture.

    Exact for the data ``sum_k N(mu_k, 0.5^2 I)`` at the integer timestep nearest ``t`` (fractional
    timesteps of the Karras-type schedules are rounded), in the scheduler's prediction type.
    """

    def __init__(self, scheduler):
        self.gm = GaussianMixtureDenoiser(MEANS, scheduler.alphas_cumprod.double(), std=0.5)
        self.prediction_type = scheduler.config.prediction_type
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        n = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(n)
        ti = t.round().clamp(0, self.gm.abar.shape[0] - 1).long()
        ab = self.gm.abar[ti].view(n, 1, 1, 1)
        x0 = self.gm.posterior_mean(x, ti)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "v_prediction":
            return ab.sqrt() * eps - (1 - ab).sqrt() * x0
        return x0  # sample / original_sample


def promote(scheduler):
    """The scheduler's float32 tables as float64, so that the loop and the mapping read the same numbers."""
    for name, value in list(vars(scheduler).items()):
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32 and name != "timesteps":
            setattr(scheduler, name, value.double())
    return scheduler


def sequential(scheduler, model, x0, generator=None, start=0):
    """The pipelines' loop from step ``start`` (img2img): ``(num_steps - start + 1, *SHAPE)`` latents after every step."""
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    x, traj = x0, [x0]
    for t in scheduler.timesteps[start:]:
        out = model(scheduler.scale_model_input(x, t), t)
        kw = {"generator": generator} if takes_generator else {}
        x = scheduler.step(out, t, x, **kw).prev_sample
        traj.append(x)
    return torch.stack(traj)


def mapped_system(mapping, model, generator=None):
    """The mapped semilinear system, the network called on ``input_scale * x`` as ``sample_latents`` does."""
    c = torch.zeros((mapping.n, *SHAPE), dtype=torch.float64)
    for i in np.flatnonzero(mapping.noise_drawn):  # the loop's order, dtype (the network's: float64 here)
        dtype = torch.float32 if mapping.noise_in_float32 else torch.float64
        c[i] = float(mapping.noise_scale[i]) * randn_tensor(SHAPE, generator=generator, dtype=dtype).double()

    def g(x_rows, lo, hi):
        w = hi - lo
        inp = (x_rows * mapping.table("input_scale", x_rows)[lo:hi]).reshape(w * SHAPE[0], *SHAPE[1:])
        t = torch.as_tensor(mapping.timesteps[lo:hi]).repeat_interleave(SHAPE[0])
        return mapping.g(x_rows, model(inp, t).reshape(x_rows.shape), lo, hi)

    return trisolve.SemilinearSystem(mapping.a, mapping.B, g, c=c, sigma=mapping.sigma, batch_ndim=1)


def check_parity(make, steps, *, tol, seed=0, solve=False, scaled=False):
    """Map ``make()`` after ``set_timesteps(steps)``, compare with the loop on a fresh copy."""
    sched_ref, sched_map = promote_after(make(), steps), promote_after(make(), steps)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * float(sched_ref.init_noise_sigma)
    gen_ref, gen_map = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    ref = sequential(sched_ref, MixtureModel(sched_ref), x0, gen_ref)
    mapping = map_scheduler(sched_map)
    assert mapping.n == len(sched_ref.timesteps) == ref.shape[0] - 1
    c = np.ones(mapping.n + 1)
    if scaled:  # solve for y_j = row_scale[j] x_j, compare x_j = y_j / row_scale[j]
        c = np.ones(mapping.n + 1) if mapping.row_scale is None else np.asarray(mapping.row_scale)
        mapping = mapping.scaled()
        ref = ref * torch.as_tensor(c).view(-1, 1, 1, 1, 1)
        x0 = x0 * float(c[0])
    model = MixtureModel(sched_map)
    system = mapped_system(mapping, model, gen_map)
    # the same number of draws: both generators are in the same state afterwards
    assert torch.equal(gen_ref.get_state(), gen_map.get_state())
    fs = trisolve.forward_substitution(system, x0)
    scale = float(ref.abs().max())
    np.testing.assert_allclose(fs.numpy(), ref.numpy(), rtol=0, atol=tol * scale)
    if solve:
        sol = trisolve.solve(system, trisolve.TriangularAnderson(history_size=4), x0, update_map=trisolve.Picard(), atol=1e-11)
        assert sol.status == trisolve.Status.CONVERGED
        np.testing.assert_allclose(sol.trajectory.numpy(), ref.numpy(), rtol=0, atol=max(tol, 1e-9) * scale)
    return mapping


def promote_after(sched, steps):
    sched.set_timesteps(steps)
    return promote(sched)


F64 = 1e-11  # relative to the largest latent: float64 round-off over a few dozen steps
F32 = 2e-6  # the Euler family rounds the latents to float32 inside step()


# -- Euler ------------------------------------------------------------------------------------
EULER_CONFIGS = [
    dict(),
    dict(use_karras_sigmas=True),
    dict(use_exponential_sigmas=True),
    dict(use_beta_sigmas=True),
    dict(timestep_spacing="leading", steps_offset=1),
    dict(timestep_spacing="trailing"),
    dict(prediction_type="v_prediction"),
    dict(prediction_type="sample"),
    dict(final_sigmas_type="sigma_min"),
    dict(interpolation_type="log_linear"),
    dict(prediction_type="v_prediction", timestep_type="continuous"),
    dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, use_karras_sigmas=True, prediction_type="v_prediction"),
]


@pytest.mark.parametrize("config", EULER_CONFIGS, ids=str)
def test_euler_matches_step_loop(config):
    m = check_parity(lambda: EulerDiscreteScheduler(**config), 12, tol=F32)
    assert np.all(m.a == 1.0) and m.B.shape == (12, 1)
    sig = m.scheduler.sigmas.numpy()[: m.n]
    np.testing.assert_allclose(m.input_scale, 1 / np.sqrt(sig**2 + 1))


def test_euler_parallel_solve():
    check_parity(lambda: EulerDiscreteScheduler(use_karras_sigmas=True), 15, tol=F32, solve=True)


# -- Euler ancestral ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config",
    [dict(), dict(prediction_type="v_prediction"), dict(timestep_spacing="leading", steps_offset=1), dict(timestep_spacing="trailing")],
    ids=str,
)
def test_euler_ancestral_matches_step_loop_and_noise_order(config):
    m = check_parity(lambda: EulerAncestralDiscreteScheduler(**config), 12, tol=F32, seed=3)
    assert m.noise_drawn.all() and m.noise_scale[-1] == 0.0 and np.all(m.noise_scale[:-1] > 0)


def test_euler_ancestral_parallel_solve():
    check_parity(lambda: EulerAncestralDiscreteScheduler(), 15, tol=F32, seed=5, solve=True)


def test_euler_ancestral_noise_is_the_loops():
    """A different seed for the pre-drawn noise gives a different sample: the noise really enters."""
    make = lambda: promote_after(EulerAncestralDiscreteScheduler(), 8)  # noqa: E731
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 14.0
    ref = sequential(make(), MixtureModel(make()), x0, torch.Generator().manual_seed(1))
    m = map_scheduler(make())
    other = trisolve.forward_substitution(mapped_system(m, MixtureModel(m.scheduler), torch.Generator().manual_seed(2)), x0)
    assert float((other[-1] - ref[-1]).abs().max()) > 1e-2


# -- UniPC ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("predict_x0", [True, False])
def test_unipc_matches_step_loop(solver_type, order, predict_x0):
    make = lambda: UniPCMultistepScheduler(solver_type=solver_type, solver_order=order, predict_x0=predict_x0, final_sigmas_type="sigma_min")  # noqa: E731
    m = check_parity(make, 10, tol=F64)
    assert m.B.shape == (10, order + 1)


@pytest.mark.parametrize(
    "config",
    [
        dict(),  # SD's settings: bh2, order 2, predict_x0, lower_order_final, final sigma 0
        dict(solver_order=3, lower_order_final=False, final_sigmas_type="sigma_min"),
        dict(disable_corrector=[0, 3, 7]),
        dict(use_karras_sigmas=True, solver_order=3),
        dict(prediction_type="v_prediction"),
        dict(prediction_type="sample", thresholding=True, sample_max_value=0.8),
        dict(timestep_spacing="leading", steps_offset=1, solver_order=3),
        dict(timestep_spacing="trailing"),
        dict(timestep_spacing="trailing", solver_type="bh1", final_sigmas_type="sigma_min"),
    ],
    ids=str,
)
def test_unipc_options_match_step_loop(config):
    check_parity(lambda: UniPCMultistepScheduler(**config), 12, tol=F64)


def test_unipc_corrector_puts_a_coefficient_on_the_current_row():
    s = UniPCMultistepScheduler(solver_order=2)
    s.set_timesteps(10)
    m = map_scheduler(s)
    assert m.B[0, 0] != 0 and np.all(m.B[1:, 0] != 0)
    off = UniPCMultistepScheduler(solver_order=2, disable_corrector=list(range(10)))
    off.set_timesteps(10)
    m_off = map_scheduler(off)
    assert np.all(m_off.B[:, 2] == 0)  # without corrector: a band of width `order` only
    assert not np.allclose(m.B, m_off.B)


def test_unipc_parallel_solve():
    check_parity(lambda: UniPCMultistepScheduler(solver_order=3), 15, tol=F64, solve=True)


# -- PNDM (PLMS) ------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 10])
def test_pndm_matches_step_loop_every_warmup(steps):
    m = check_parity(lambda: PNDMScheduler(skip_prk_steps=True), steps, tol=F64)
    assert m.n == (steps + 1 if steps > 1 else 1)  # the doubled first step has its own row


@pytest.mark.parametrize(
    "config",
    [
        dict(set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"),  # Stable Diffusion 1.5's config
        dict(set_alpha_to_one=True),
        dict(timestep_spacing="linspace"),
        dict(timestep_spacing="trailing"),
        dict(prediction_type="v_prediction", steps_offset=1),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1),
    ],
    ids=str,
)
def test_pndm_options_match_step_loop(config):
    check_parity(lambda: PNDMScheduler(skip_prk_steps=True, **config), 12, tol=F64)


def test_pndm_parallel_solve():
    check_parity(lambda: PNDMScheduler(skip_prk_steps=True, steps_offset=1), 20, tol=F64, solve=True)


# -- LMS ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config, steps",
    [(dict(), 3), (dict(), 12), (dict(use_karras_sigmas=True), 10), (dict(prediction_type="v_prediction"), 10),
     (dict(timestep_spacing="leading", steps_offset=1), 10), (dict(use_exponential_sigmas=True), 8)],
    ids=str,
)  # fmt: skip
def test_lms_matches_step_loop(config, steps):
    m = check_parity(lambda: LMSDiscreteScheduler(**config), steps, tol=F64)
    assert m.B.shape == (steps, 4)


def test_lms_parallel_solve():
    check_parity(lambda: LMSDiscreteScheduler(), 15, tol=F64, solve=True)


# -- DEIS -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config, steps",
    [(dict(solver_order=1), 10), (dict(solver_order=2), 10), (dict(solver_order=3), 10), (dict(solver_order=3), 16),
     (dict(solver_order=3, lower_order_final=False), 10), (dict(prediction_type="v_prediction"), 10),
     (dict(prediction_type="sample", thresholding=True), 10), (dict(use_karras_sigmas=True, solver_order=3), 10)],
    ids=str,
)  # fmt: skip
def test_deis_matches_step_loop(config, steps):
    check_parity(lambda: DEISMultistepScheduler(**config), steps, tol=F64)


def test_deis_parallel_solve():
    check_parity(lambda: DEISMultistepScheduler(solver_order=3), 15, tol=F64, solve=True)


# -- DPM-Solver singlestep -------------------------------------------------------------------------
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
def test_dpmsolver_singlestep_matches_step_loop(algo, order, solver_type):
    make = lambda: DPMSolverSinglestepScheduler(algorithm_type=algo, solver_order=order, solver_type=solver_type, final_sigmas_type="sigma_min")  # noqa: E731
    check_parity(make, 11, tol=F64)


@pytest.mark.parametrize(
    "config, steps",
    [(dict(), 12), (dict(solver_order=3), 12), (dict(solver_order=3, lower_order_final=False, final_sigmas_type="sigma_min"), 12),
     (dict(prediction_type="v_prediction", use_karras_sigmas=True), 10), (dict(prediction_type="sample", thresholding=True), 10),
     (dict(use_exponential_sigmas=True, solver_order=3), 7)],
    ids=str,
)  # fmt: skip
def test_dpmsolver_singlestep_options_match_step_loop(config, steps):
    check_parity(lambda: DPMSolverSinglestepScheduler(**config), steps, tol=F64)


def test_dpmsolver_singlestep_parallel_solve():
    check_parity(lambda: DPMSolverSinglestepScheduler(solver_order=3), 15, tol=F64, solve=True)


# -- two evaluations per step: one row each ------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: HeunDiscreteScheduler(),
        lambda: HeunDiscreteScheduler(use_karras_sigmas=True, prediction_type="v_prediction"),
        lambda: HeunDiscreteScheduler(prediction_type="sample", clip_sample=True, clip_sample_range=0.8),
        lambda: HeunDiscreteScheduler(timestep_spacing="leading", steps_offset=1, use_exponential_sigmas=True),
        lambda: KDPM2DiscreteScheduler(num_train_timesteps=100),
        lambda: KDPM2DiscreteScheduler(num_train_timesteps=100, use_karras_sigmas=True, prediction_type="v_prediction"),
        lambda: KDPM2DiscreteScheduler(num_train_timesteps=100, timestep_spacing="trailing"),
        lambda: KDPM2AncestralDiscreteScheduler(num_train_timesteps=100),
        lambda: KDPM2AncestralDiscreteScheduler(num_train_timesteps=100, use_karras_sigmas=True, prediction_type="v_prediction"),
    ],
    ids=["heun", "heun-karras-v", "heun-sample-clip", "heun-leading-exp", "kdpm2", "kdpm2-karras-v", "kdpm2-trailing",
         "kdpm2a", "kdpm2a-karras-v"],
)  # fmt: skip
def test_two_evaluations_per_step_match_step_loop(make):
    # KDPM2's constructor runs set_timesteps(num_train_timesteps) with a slow per-sigma loop: 100 train steps keep it fast
    m = check_parity(make, 8, tol=F64, seed=2)
    assert m.n == len(m.scheduler.timesteps) > 8  # one row per network evaluation


def test_two_stage_mapping_after_a_full_run():
    """A finished loop leaves Heun's stale `sample`; after set_timesteps the scheduler maps again, and mid-loop it is refused."""
    s = HeunDiscreteScheduler()
    s.set_timesteps(3)
    x = torch.zeros(SHAPE)
    for t in s.timesteps:
        x = s.step(torch.zeros(SHAPE), t, x).prev_sample
    s.set_timesteps(3)
    assert map_scheduler(s).n == 5
    s.step(torch.zeros(SHAPE), s.timesteps[0], x)
    with pytest.raises(UnsupportedSchedulerError, match="already been stepped"):
        map_scheduler(s)


def test_two_stage_parallel_solve():
    check_parity(lambda: KDPM2AncestralDiscreteScheduler(num_train_timesteps=100), 8, tol=F64, seed=4, solve=True)


# -- a loop that starts part-way (img2img) --------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: EulerDiscreteScheduler(use_karras_sigmas=True),
        lambda: EulerAncestralDiscreteScheduler(),
        lambda: UniPCMultistepScheduler(solver_order=3),
        lambda: DPMSolverMultistepScheduler(solver_order=3),
        lambda: LMSDiscreteScheduler(),
        lambda: DEISMultistepScheduler(solver_order=3),
        lambda: PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        lambda: DDIMScheduler(),
        lambda: DDPMScheduler(),
    ],
    ids=["euler", "euler-ancestral", "unipc", "dpm", "lms", "deis", "pndm", "ddim", "ddpm"],
)
def test_partial_loop_matches_step_loop(make):
    """img2img runs timesteps[start:] (after set_begin_index where the scheduler has it); rows start there."""
    steps, start = 12, 5
    sched_ref, sched_map = promote_after(make(), steps), promote_after(make(), steps)
    if hasattr(sched_ref, "set_begin_index"):
        sched_ref.set_begin_index(start)
        sched_map.set_begin_index(start)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 3.0
    ref = sequential(sched_ref, MixtureModel(sched_ref), x0, torch.Generator().manual_seed(8), start=start)
    mapping = map_scheduler(sched_map, start=start)
    fs = trisolve.forward_substitution(mapped_system(mapping, MixtureModel(sched_map), torch.Generator().manual_seed(8)), x0)
    assert mapping.n == ref.shape[0] - 1
    tol = (
        F32 if type(sched_ref).__name__ in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler") else F64
    )  # their step() rounds x to float32
    np.testing.assert_allclose(fs.numpy(), ref.numpy(), rtol=0, atol=tol * float(ref.abs().max()))


def test_partial_loop_refusals():
    s = HeunDiscreteScheduler()
    s.set_timesteps(6)
    with pytest.raises(UnsupportedSchedulerError, match="full loop only"):
        map_scheduler(s, start=2)
    e = EulerDiscreteScheduler()
    e.set_timesteps(6)
    e.set_begin_index(2)
    with pytest.raises(ValueError, match="begin_index=2"):
        map_scheduler(e, start=3)
    with pytest.raises(ValueError, match="start must be"):
        map_scheduler(e, start=6) if e.set_begin_index(6) is None else None


# -- solving for the variance-preserving rows of the k-diffusion schedulers -----------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: EulerDiscreteScheduler(use_karras_sigmas=True, final_sigmas_type="sigma_min"),
        lambda: EulerAncestralDiscreteScheduler(prediction_type="v_prediction"),
        lambda: LMSDiscreteScheduler(),
        lambda: HeunDiscreteScheduler(),
        lambda: KDPM2AncestralDiscreteScheduler(num_train_timesteps=100),
        lambda: DDIMScheduler(),  # no row_scale: scaled() is the mapping itself
    ],
    ids=["euler", "euler-ancestral", "lms", "heun", "kdpm2a", "ddim"],
)
def test_scaled_rows_match_step_loop(make):
    m = check_parity(make, 8, tol=F32, seed=1, scaled=True)
    if m.row_scale is None:
        assert m.scaled() is m
    else:
        np.testing.assert_allclose(m.scaled().input_scale, 1.0)  # the network sees the scaled row itself


def test_default_history_size_is_set_per_loop():
    """Flow matching keeps one difference pair in the default TAA, every other loop four; a rescaled mapping keeps its loop's."""
    import trisolve_diffusion as td

    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(8)
    assert map_scheduler(flow).default_history_size == 1
    for make in (DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler):
        sched = make()
        sched.set_timesteps(8)
        m = map_scheduler(sched)
        assert m.default_history_size == 4 and m.scaled().default_history_size == 4
    assert td.default_solver(map_scheduler(flow))[0].history_size == 1  # the samplers' default reads the mapping's
    assert td.default_solver(m)[0].history_size == 4
    given = trisolve.TriangularAnderson(history_size=3)
    assert td.SolveOptions(solver=given).solver_and_map(8, map_scheduler(flow))[0] is given  # a solver asked for is kept


def test_scaled_rows_parallel_solve():
    check_parity(lambda: EulerDiscreteScheduler(), 15, tol=F32, seed=2, solve=True, scaled=True)


# -- the table cache -----------------------------------------------------------------------------
def test_device_tables_are_built_once_per_dtype():
    s = EulerDiscreteScheduler()
    s.set_timesteps(5)
    m = map_scheduler(s)
    x = torch.zeros(5, 2, 1, 4, 4)
    t1, t2 = m.table("input_scale", x), m.table("input_scale", x[1:3])
    assert t1 is t2 and t1.shape == (5, 1, 1, 1, 1) and t1.dtype == torch.float32
    assert m.table("input_scale", x.double()).dtype == torch.float64


# -- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LCMScheduler(), "re-noises.*DPMSolverMultistepScheduler"),
        (lambda: TCDScheduler(), "few-step.*DPMSolverMultistepScheduler"),
        (lambda: PNDMScheduler(skip_prk_steps=False), "skip_prk_steps=True"),
        (lambda: UniPCMultistepScheduler(solver_p=DPMSolverMultistepScheduler()), "solver_p"),
        (lambda: UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", predict_x0=False), "predict_x0=True"),
        (lambda: DEISMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"), "use_flow_sigmas"),
        (lambda: EulerAncestralDiscreteScheduler(prediction_type="sample"), "'epsilon' or 'v_prediction'"),
        (lambda: UniPCMultistepScheduler(predict_x0=False), "non-finite.*predict_x0=True"),
        (lambda: UniPCMultistepScheduler(solver_type="bh1"), "non-finite.*solver_type='bh2'"),
        (lambda: DPMSolverSinglestepScheduler(algorithm_type="sde-dpmsolver++"), "two noise draws.*DPMSolverMultistepScheduler"),
    ],
    ids=[
        "lcm",
        "tcd",
        "pndm-prk",
        "unipc-solver_p",
        "unipc-flow",
        "deis-flow",
        "ancestral-sample",
        "unipc-noise-final-zero",
        "unipc-bh1-final-zero",
        "singlestep-sde",
    ],
)
def test_refusals_say_what_to_do(make, match):
    s = make()
    s.set_timesteps(8)
    with pytest.raises(UnsupportedSchedulerError, match=match):
        map_scheduler(s)


def test_refuses_a_stepped_scheduler_and_unset_timesteps():
    s = UniPCMultistepScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        map_scheduler(s)
    s.set_timesteps(5)
    s.step(torch.zeros(SHAPE), s.timesteps[0], torch.zeros(SHAPE))
    with pytest.raises(UnsupportedSchedulerError, match="already been stepped"):
        map_scheduler(s)


def test_multistep_loops_test_their_steps_against_atol_alone():
    """DPM-Solver multistep, UniPC and PNDM have a zero tolerance scale (multistep_tolerance_scale: measured on the
    digits DDPM, benchmarks/rounds.py); the one-step loops keep the posterior standard deviation between levels."""
    from trisolve_diffusion.schedulers.parametrisation import level_posterior_std

    for make in (DPMSolverMultistepScheduler, UniPCMultistepScheduler, lambda: PNDMScheduler(skip_prk_steps=True)):
        sched = make()
        sched.set_timesteps(10)
        m = map_scheduler(sched)
        assert m.sigma.shape == (m.n,) and np.all(m.sigma == 0.0), type(sched).__name__
    for make in (DDIMScheduler, EulerDiscreteScheduler):
        sched = make()
        sched.set_timesteps(10)
        m = map_scheduler(sched)
        np.testing.assert_allclose(m.sigma, level_posterior_std(m.rows.alpha, m.rows.sigma))
        assert np.all(m.sigma[:-1] > 0)


def test_picard_gains_damp_the_noisy_loops_by_their_fixed_prediction_derivative():
    """default_solver's map: Picard for deterministic loops; for DDPM and Euler ancestral the gains J_i = d_i^(1/4), with d_i the
    step's derivative at a fixed clean-image prediction, written here from the schedulers' own tables (not the mapping's)."""
    from diffusers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler

    import trisolve
    import trisolve_diffusion as td

    ddim = DDIMScheduler(num_train_timesteps=1000)
    ddim.set_timesteps(10)
    assert td.map_scheduler(ddim).picard_gains is None and td.default_solver(td.map_scheduler(ddim))[1] == trisolve.Picard()

    ddpm = DDPMScheduler(num_train_timesteps=1000)
    ddpm.set_timesteps(20)
    abar = ddpm.alphas_cumprod.double().numpy()
    ab_t = np.array([abar[int(t)] for t in ddpm.timesteps])
    ab_prev = np.array([abar[int(ddpm.previous_timestep(t))] if int(ddpm.previous_timestep(t)) >= 0 else 1.0 for t in ddpm.timesteps])
    posterior_x_t = np.sqrt(ab_t / ab_prev) * (1 - ab_prev) / (1 - ab_t)  # DDPMScheduler.step's current_sample_coeff
    mapping = td.map_scheduler(ddpm)
    np.testing.assert_allclose(mapping.picard_gains, posterior_x_t**0.25, rtol=1e-12, atol=1e-12)
    assert mapping.picard_gains[-1] == 0.0 and np.all((mapping.picard_gains[:-1] > 0) & (mapping.picard_gains[:-1] < 1))
    assert td.default_solver(mapping)[1] == trisolve.WeightedPicard(mapping.picard_gains)

    anc = EulerAncestralDiscreteScheduler(num_train_timesteps=1000)
    anc.set_timesteps(12)
    s = anc.sigmas.double().numpy()  # (n + 1,), the last 0
    sigma_down_over_sigma = (s[1:] / s[:-1]) ** 2  # d x_next / d x at a fixed denoised D: sigma_down / sigma
    c = 1 / np.sqrt(s**2 + 1)  # the unit rows the solve runs on (mapping.scaled())
    scaled = td.map_scheduler(anc).scaled()
    np.testing.assert_allclose(scaled.picard_gains, (sigma_down_over_sigma * c[1:] / c[:-1]) ** 0.25, rtol=1e-10, atol=1e-12)
