"""``trisolve_diffusion.k_diffusion`` against the real ``k_diffusion.sampling`` (k-diffusion 0.1.1.post1 from PyPI).

Same model, sigmas and noise: the parallel sampler equals k-diffusion's loop to float32
round-off at a tight tolerance, and is >= 45 dB from it at the default tolerance. Models: two
closed-form denoisers (a mixture of points, a Gaussian mixture) and a tiny random conv net;
schedules: Karras, exponential and an uneven random one, with and without the trailing 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from k_diffusion_ref import load_sampling

import trisolve
import trisolve_diffusion as td
from trisolve_diffusion import k_diffusion as K

ref = load_sampling()

SHAPE = (2, 2, 4, 4)  # batch 2
TIGHT = dict(atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64)
DEFAULT = dict()


# -- models: model(x, sigma) -> denoised, sigma per sample ------------------------------------------


def points_model():
    """The exact denoiser of 5 points in R^32: E[x0 | x0 + sigma eps]."""
    means = torch.randn(5, *SHAPE[1:], generator=torch.Generator().manual_seed(11)).double().flatten(1)

    def model(x, sigma):
        xf, s = x.double().flatten(1), sigma.double()[:, None]
        w = torch.softmax(-((xf[:, None, :] - means[None]) ** 2).sum(-1) / (2 * s**2), dim=1)
        return (w @ means).reshape(x.shape).to(x.dtype)

    return model


def gmm_model():
    """The exact denoiser of a 3-component Gaussian mixture with std 0.5 per component."""
    g = torch.Generator().manual_seed(12)
    means, tau2 = torch.randn(3, *SHAPE[1:], generator=g).double().flatten(1), 0.25

    def model(x, sigma):
        xf, s2 = x.double().flatten(1), sigma.double()[:, None] ** 2
        logw = -((xf[:, None, :] - means[None]) ** 2).sum(-1) / (2 * (tau2 + s2))
        w = torch.softmax(logw, dim=1)  # (N, 3)
        post = (tau2 * xf[:, None, :] + s2[:, :, None] * means[None]) / (tau2 + s2)[:, :, None]
        return (w[:, :, None] * post).sum(1).reshape(x.shape).to(x.dtype)

    return model


class TinyNet(torch.nn.Module):
    """A random conv denoiser with k-diffusion's preconditioning: ``D = c_skip x + c_out F(c_in x, log sigma)``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(13)
        c = SHAPE[1]
        self.conv1 = torch.nn.Conv2d(c, 8, 3, padding=1)
        self.emb = torch.nn.Linear(1, 8)
        self.conv2 = torch.nn.Conv2d(8, c, 3, padding=1)

    def forward(self, x, sigma):
        s = sigma[:, None, None, None]
        c_skip, c_out, c_in = 1 / (s**2 + 1), s / (s**2 + 1) ** 0.5, 1 / (s**2 + 1) ** 0.5
        h = torch.nn.functional.silu(self.conv1(c_in * x) + self.emb(sigma.log()[:, None] / 4)[:, :, None, None])
        return c_skip * x + c_out * torch.tanh(self.conv2(h))


MODELS = {"points": points_model, "gmm": gmm_model, "convnet": lambda: TinyNet().eval()}


def uneven_sigmas(n):
    """Random decreasing levels in [0.04, 25]: no schedule the samplers were tuned to."""
    u = np.sort(np.random.default_rng(14).uniform(math.log(0.04), math.log(25.0), n))[::-1].copy()
    return torch.tensor(np.exp(u), dtype=torch.float32)


SCHEDULES = {
    "karras+0": lambda: K.get_sigmas_karras(10, 0.03, 40.0),
    "exponential": lambda: K.get_sigmas_exponential(9, 0.05, 15.0)[:-1],
    "uneven+0": lambda: torch.cat([uneven_sigmas(8), torch.zeros(1)]),
    "uneven": lambda: uneven_sigmas(9),
}

#: sampler -> (keyword arguments, draws from the global generator)
CASES = {
    "euler": dict(s_churn=2.0, s_tmin=0.1, s_tmax=10.0),
    "euler_ancestral": dict(eta=0.7, s_noise=0.9),
    "heun": dict(s_churn=1.0),
    "dpm_2": dict(s_churn=1.0, s_noise=1.1),
    "dpm_2_ancestral": dict(),
    "lms": dict(),
    "dpmpp_2m": dict(),
    "dpmpp_2s_ancestral": dict(eta=0.8),
    "dpmpp_2m_sde": dict(noise=True),
    "dpmpp_3m_sde": dict(noise=True, eta=0.6),
}
# each sampler on three (model, schedule) pairs, so every model and every schedule meets most samplers
PAIRS = [("points", "karras+0"), ("gmm", "exponential"), ("convnet", "uneven+0"), ("gmm", "uneven"), ("convnet", "karras+0")]


def _params():
    out = []
    for k, name in enumerate(CASES):
        for m, s in (PAIRS[k % 5], PAIRS[(k + 1) % 5], PAIRS[(k + 2) % 5]):
            out.append(pytest.param(name, m, s, id=f"{name}-{m}-{s}"))
    return out


def run_both(name, model, sigmas, options, **kw):
    """k-diffusion's loop and the parallel sampler from the same global RNG state, with the same noise sampler."""
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    if kw.pop("noise", False):
        kw["noise_sampler"] = ref.default_noise_sampler(x)
    torch.manual_seed(21)
    expected = getattr(ref, f"sample_{name}")(model, x, sigmas, disable=True, **kw)
    torch.manual_seed(21)
    got, sol = getattr(K, f"sample_{name}")(model, x, sigmas, disable=True, **options, return_solution=True, **kw)
    return expected, got, sol


def psnr(a, b):
    mse = float(((a.double() - b.double()) ** 2).mean())
    peak = float(b.max() - b.min())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


@pytest.mark.parametrize("name,model_name,schedule", _params())
def test_equals_k_diffusion(name, model_name, schedule):
    model, sigmas = MODELS[model_name](), SCHEDULES[schedule]()
    expected, got, sol = run_both(name, model, sigmas, TIGHT, **CASES[name])
    assert sol.converged and sol.num_rounds <= sol.n
    assert got.dtype == expected.dtype and got.shape == expected.shape
    err = float((got - expected).abs().max())
    assert err <= 2e-5 * float(expected.abs().max()), err  # float32 round-off of a 10-20 step loop
    _, got_default, sol_default = run_both(name, model, sigmas, DEFAULT, **CASES[name])
    assert sol_default.converged
    assert psnr(got_default, expected) >= 45.0


def test_rows_of_two_stage_samplers_and_solution_trajectory():
    """Heun adds a row per step except where the next sigma is 0; the solution's last row is the output, in x units."""
    sigmas = SCHEDULES["karras+0"]()
    expected, got, sol = run_both("heun", gmm_model(), sigmas, TIGHT)
    assert sol.n == 2 * (len(sigmas) - 1) - 1
    assert sol.trajectory.shape == (sol.n + 1, *SHAPE)
    torch.testing.assert_close(sol.trajectory[-1].float(), got, rtol=0, atol=0)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    torch.testing.assert_close(sol.trajectory[0], x0.double())


def test_parallel_rounds_fewer_than_steps_on_a_smooth_model():
    """Not a sequential loop in disguise: on the Gaussian mixture the default solve takes fewer rounds than rows."""
    sigmas = K.get_sigmas_karras(24, 0.05, 20.0)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    _, sol = K.sample_dpmpp_2m(gmm_model(), x, sigmas, disable=True, **DEFAULT, return_solution=True)
    assert sol.converged and sol.num_rounds < sol.n


def test_noise_sampler_called_once_per_step_in_order():
    sigmas = K.get_sigmas_exponential(6, 0.1, 10.0)  # trailing 0: the last step draws nothing
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    for name in ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        seen = []
        for fn in (getattr(ref, f"sample_{name}"), getattr(K, f"sample_{name}")):
            calls = []
            g = torch.Generator().manual_seed(5)

            def sampler(s, s_next, calls=calls, g=g):
                calls.append((float(s), float(s_next)))
                return torch.randn(x.shape, generator=g)

            fn(gmm_model(), x, sigmas, disable=True, noise_sampler=sampler)
            seen.append(calls)
        assert seen[1] == seen[0] and len(seen[0]) == len(sigmas) - 2, name


def test_brownian_tree_default_refused_with_what_to_pass():
    sigmas = K.get_sigmas_karras(5, 0.1, 10.0)
    x = torch.randn(SHAPE) * sigmas[0]
    for fn in (K.sample_dpmpp_2m_sde, K.sample_dpmpp_3m_sde):
        with pytest.raises(ValueError, match="default_noise_sampler"):
            fn(gmm_model(), x, sigmas, disable=True)
    # eta = 0 draws no noise: no sampler needed, and it equals k-diffusion's (whose tree is then unused)
    out = K.sample_dpmpp_2m_sde(gmm_model(), x, sigmas, disable=True, eta=0.0, **TIGHT)
    expected = ref.sample_dpmpp_2m_sde(gmm_model(), x, sigmas, disable=True, eta=0.0, noise_sampler=lambda s, t: torch.zeros_like(x))
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5 * float(expected.abs().max()))


def test_dpmpp_2m_sde_heun_variant():
    expected, got, _ = run_both("dpmpp_2m_sde", gmm_model(), SCHEDULES["uneven+0"](), TIGHT, noise=True, solver_type="heun", eta=0.5)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5 * float(expected.abs().max()))
    with pytest.raises(ValueError, match="solver_type"):
        K.sample_dpmpp_2m_sde(gmm_model(), torch.randn(SHAPE), SCHEDULES["uneven"](), solver_type="rk4", eta=0.0)


def test_lms_other_order():
    expected, got, _ = run_both("lms", TinyNet().eval(), SCHEDULES["exponential"](), TIGHT, order=2)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5 * float(expected.abs().max()))


def test_callback_once_per_step_with_the_loops_values():
    """After the solve, once per loop step in order, with the values k-diffusion's loop passes (to the tolerance)."""
    model, sigmas = gmm_model(), SCHEDULES["karras+0"]()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    seen_ref, seen = [], []
    torch.manual_seed(2)
    ref.sample_heun(model, x, sigmas, disable=True, s_churn=1.0, callback=seen_ref.append)
    torch.manual_seed(2)
    K.sample_heun(model, x, sigmas, disable=True, s_churn=1.0, callback=seen.append, **TIGHT)
    assert [d["i"] for d in seen] == list(range(len(sigmas) - 1))
    for a, b in zip(seen, seen_ref):
        assert set(a) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert float(a["sigma"]) == float(b["sigma"]) and float(a["sigma_hat"]) == float(b["sigma_hat"])
        for key in ("x", "denoised"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=2e-5 * (1 + float(b[key].abs().max())))


def test_rows_per_call_chunks_the_model_calls():
    sizes = []
    base = gmm_model()

    def model(x, sigma):
        sizes.append(x.shape[0])
        return base(x, sigma)

    sigmas = SCHEDULES["karras+0"]()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    whole = K.sample_dpmpp_2m(base, x, sigmas, disable=True, **TIGHT)
    chunked = K.sample_dpmpp_2m(model, x, sigmas, disable=True, **TIGHT, max_rows_per_call=3, check_model=False)
    assert max(sizes) == 3 * SHAPE[0] and len(sizes) > len(set(sizes))
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_model_that_reads_only_the_first_sigma_is_detected():
    base = gmm_model()

    def first_sigma_only(x, sigma):  # what a model written for the sequential loop may do
        return base(x, sigma[:1].expand(x.shape[0]))

    sigmas = SCHEDULES["karras+0"]()
    x = torch.randn(SHAPE) * sigmas[0]
    with pytest.raises(ValueError, match="sigma per sample"):
        K.sample_euler(first_sigma_only, x, sigmas, disable=True)
    calls = []
    K.sample_euler(lambda x, s: calls.append(1) or base(x, s), x, sigmas, disable=True, **TIGHT, check_model=False)
    assert len(calls) < len(sigmas)  # no extra calls without the check


def test_extra_args_reach_the_model():
    base = gmm_model()
    got = []

    def model(x, sigma, cond=None):
        got.append(cond)
        return base(x, sigma)

    sigmas = SCHEDULES["exponential"]()
    K.sample_euler(model, torch.randn(SHAPE) * sigmas[0], sigmas, extra_args={"cond": "c"}, disable=True)
    assert got and set(got) == {"c"}


def test_failure_keeps_what_was_computed():
    base, calls = gmm_model(), []

    def model(x, sigma):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("out of memory")
        return base(x, sigma)

    sigmas = SCHEDULES["karras+0"]()
    with pytest.raises(td.ParallelSamplingError) as info:
        K.sample_euler(model, torch.randn(SHAPE) * sigmas[0], sigmas, disable=True, **TIGHT | dict(window=2), check_model=False)
    assert isinstance(info.value.__cause__, RuntimeError)
    partial = info.value.solution
    assert partial.num_frozen >= 2
    # the partial trajectory is in x units: resuming from it gives the sample of an uninterrupted solve
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4)) * sigmas[0]
    with pytest.raises(td.ParallelSamplingError) as info:
        calls.clear()
        K.sample_euler(model, x, sigmas, disable=True, **TIGHT | dict(window=2), check_model=False)
    partial = info.value.solution
    torch.testing.assert_close(partial.trajectory[0], x.double())
    resumed = K.sample_euler(base, x, sigmas, disable=True, **TIGHT | dict(init=partial.trajectory, num_frozen=partial.num_frozen))
    torch.testing.assert_close(resumed, K.sample_euler(base, x, sigmas, disable=True, **TIGHT), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(sigmas=torch.tensor([5.0, 0.0, 1.0])), ValueError, "last which may be 0"),
        (dict(sigmas=torch.tensor([5.0])), TypeError, "at least 2"),
        (dict(sigmas=[5.0, 1.0]), TypeError, "torch tensor"),
        (dict(sigmas=torch.tensor([5.0, float("nan")])), ValueError, "finite"),
        (dict(x=np.zeros(SHAPE)), TypeError, "torch tensor"),
        (dict(model=3), TypeError, "model must be callable"),
        (dict(s_churn=-1.0), ValueError, "s_churn"),
        (dict(window="auto"), ValueError, "auto"),
        (dict(max_rows_per_call=0), ValueError, "max_rows_per_call"),
        (dict(callback=3), TypeError, "callback"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = dict(model=gmm_model(), x=torch.randn(SHAPE), sigmas=torch.tensor([5.0, 1.0, 0.0]))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        K.sample_euler(args.pop("model"), args.pop("x"), args.pop("sigmas"), disable=True, **args)


def test_bad_noise_arguments():
    x, sigmas = torch.randn(SHAPE), torch.tensor([5.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="eta"):
        K.sample_euler_ancestral(gmm_model(), x, sigmas, eta=-1.0)
    with pytest.raises(TypeError, match="noise_sampler"):
        K.sample_euler_ancestral(gmm_model(), x, sigmas, noise_sampler=3)
    with pytest.raises(ValueError, match="order"):
        K.sample_lms(gmm_model(), x, sigmas, order=0)


def test_schedules_are_k_diffusions():
    for name, args in [("karras", (7, 0.1, 10.0)), ("exponential", (7, 0.1, 10.0)), ("polyexponential", (7, 0.1, 10.0)), ("vp", (7,))]:
        torch.testing.assert_close(getattr(K, f"get_sigmas_{name}")(*args), getattr(ref, f"get_sigmas_{name}")(*args), rtol=0, atol=0)


def test_samplers_registry_names_match_k_diffusion():
    for name, fn in K.SAMPLERS.items():
        assert fn.__name__ == f"sample_{name}" and hasattr(ref, f"sample_{name}")
    assert isinstance(K.sample_euler(gmm_model(), torch.randn(SHAPE), torch.tensor([5.0, 1.0, 0.0]), disable=True), torch.Tensor)


def test_unconverged_end_warns_or_raises():
    sigmas = SCHEDULES["karras+0"]()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    with pytest.warns(td.UnconvergedSampleWarning, match="MAX_ITER"):
        K.sample_heun(gmm_model(), x, sigmas, disable=True, **DEFAULT | dict(max_iter=2))
    with pytest.raises(td.UnconvergedSampleError) as info:
        K.sample_heun(gmm_model(), x, sigmas, disable=True, **DEFAULT | dict(max_iter=2, strict=True))
    torch.testing.assert_close(info.value.solution.trajectory[0], x)


def test_solve_keywords_are_flat_with_round_callback_and_the_old_options_warn():
    """The samplers take sample_latents's solve keywords; the per-round callback is round_callback= (callback= is
    k-diffusion's per step); progress= is disable=; options=SolveOptions(...) still works, with a DeprecationWarning."""
    base = gmm_model()
    sigmas = SCHEDULES["karras+0"]()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4)) * sigmas[0]
    rounds, steps = [], []
    out, sol = K.sample_euler(base, x, sigmas, disable=True, callback=steps.append, round_callback=rounds.append, return_solution=True,
                              **TIGHT)  # fmt: skip
    assert len(rounds) == sol.num_rounds and all(isinstance(r, trisolve.RoundInfo) for r in rounds)
    assert [s["i"] for s in steps] == list(range(len(sigmas) - 1))  # k-diffusion's per-step callback, unchanged
    assert sol.tolerance == trisolve.Tolerance(atol=TIGHT["atol"], rtol=TIGHT["rtol"])
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) progress; .*round_callback"):
        K.sample_euler(base, x, sigmas, disable=True, progress=False)
    with pytest.warns(DeprecationWarning, match=r"options=SolveOptions\(\.\.\.\)\) is deprecated"):
        old = K.sample_euler(base, x, sigmas, disable=True, options=td.SolveOptions(**TIGHT))
    torch.testing.assert_close(old, out, rtol=0, atol=0)
