"""The one parametrisation of the scheduler mappings (``trisolve_diffusion/schedulers/parametrisation.py``).

References: the definitions of the prediction types (diffusers' ``get_velocity`` for ``v``,
``eps - x0`` for the flow velocity), and, for the rescaled rows, the same mapping unscaled.
The parity of every mapping with the real ``scheduler.step`` loop is in
``test_scheduler_mappings.py`` and ``test_flow_match_mapping.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
)

from trisolve_diffusion.schedulers import SchedulerMapping, UnsupportedSchedulerError, map_scheduler
from trisolve_diffusion.schedulers.parametrisation import Clip, Parametrisation, prediction_coefficients

RNG = np.random.default_rng(0)
ABAR = RNG.uniform(0.01, 0.99, 6)
LEVELS = {  # (alpha, sigma) of x = alpha x0 + sigma eps
    "variance preserving": (np.sqrt(ABAR), np.sqrt(1 - ABAR)),
    "k-diffusion": (np.ones(6), RNG.uniform(0.1, 50.0, 6)),
    "flow": (1 - (s := RNG.uniform(0.05, 0.95, 6)), s),
}


def network_output(kind: str, alpha, sigma, x0, eps):
    """What a network of each prediction type returns for ``x = alpha x0 + sigma eps``, from the definitions."""
    r = np.sqrt(alpha**2 + sigma**2)
    return {
        "epsilon": eps,
        "sample": x0,
        "v_prediction": (alpha / r) * eps - (sigma / r) * x0,  # get_velocity on the variance-preserving latents x / r
        "flow_prediction": eps - x0,
    }[kind]


@pytest.mark.parametrize("levels", list(LEVELS))
@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction", "flow_prediction"])
def test_prediction_coefficients_recover_x0_and_eps(kind, levels):
    alpha, sigma = LEVELS[levels]
    x0, eps = RNG.standard_normal(6), RNG.standard_normal(6)
    x = alpha * x0 + sigma * eps
    m = network_output(kind, alpha, sigma, x0, eps)
    x0_x, x0_m, eps_x, eps_m = prediction_coefficients(kind, alpha, sigma)
    np.testing.assert_allclose(x0_x * x + x0_m * m, x0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(eps_x * x + eps_m * m, eps, rtol=1e-9, atol=1e-9)


def test_unknown_prediction_type_says_what_to_use():
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        prediction_coefficients("x_start", np.ones(2), np.ones(2))


def test_g_is_one_formula_with_the_clipping_hook():
    """A DDIM-like combination with clipping: g = c_x0 P(x0_hat) + c_eps eps_hat - a x, checked by hand."""
    alpha, sigma = LEVELS["variance preserving"]
    n = 5
    c_x0, c_eps, a = RNG.uniform(0.5, 1, n), RNG.uniform(0, 0.5, n), RNG.uniform(0.9, 1.1, n)
    p = Parametrisation.of("epsilon", alpha, sigma, x0=c_x0, eps=c_eps, x=-a, process=Clip(0.5), eps_from_x0=False)
    x, m = torch.randn(n, 3, dtype=torch.float64), torch.randn(n, 3, dtype=torch.float64)
    col = lambda name, t: torch.as_tensor(t).reshape(-1, 1)  # noqa: E731
    sa, ss = torch.as_tensor(alpha[:n]).reshape(-1, 1), torch.as_tensor(sigma[:n]).reshape(-1, 1)
    x0_hat = ((x - ss * m) / sa).clamp(-0.5, 0.5)
    want = torch.as_tensor(c_x0).reshape(-1, 1) * x0_hat + torch.as_tensor(c_eps).reshape(-1, 1) * m - torch.as_tensor(a).reshape(-1, 1) * x
    torch.testing.assert_close(p.g(x, m, col, 0, n), want, rtol=1e-12, atol=1e-12)
    # the noise implied by the clipped clean image instead (use_clipped_model_output, DPM-Solver, DEIS)
    q = Parametrisation.of("epsilon", alpha, sigma, eps=1.0, process=Clip(0.5))
    torch.testing.assert_close(q.g(x[1:4], m[1:4], col, 1, 4), ((x - sa * x0_hat) / ss)[1:4], rtol=1e-12, atol=1e-12)
    # without a hook the x0_hat term is folded into the linear tables: g = m exactly for a noise target
    r = Parametrisation.of("epsilon", alpha, sigma, eps=1.0)
    assert np.all(r.k_0 == 0) and np.all(r.k_x == 0) and np.all(r.k_m == 1)
    assert r.g(x, m, col, 0, n) is m


MAKERS = {
    "ddim": lambda: DDIMScheduler(),
    "pndm": lambda: PNDMScheduler(skip_prk_steps=True),
    "dpm++": lambda: DPMSolverMultistepScheduler(solver_order=3),
    "euler-v": lambda: EulerDiscreteScheduler(prediction_type="v_prediction"),
    "heun-sample-clip": lambda: HeunDiscreteScheduler(prediction_type="sample", clip_sample=True, clip_sample_range=0.8),
    "flow": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_scaled_rows_are_derived_generically(name):
    """``scaled()``: the same g at ``y = c x``, a / B / noise / tolerance rescaled, input scale divided by c; VP rows: itself."""
    sched = MAKERS[name]()
    sched.set_timesteps(6)
    m = map_scheduler(sched)
    c = m.row_scale
    if name in ("ddim", "pndm", "dpm++"):  # variance-preserving levels: nothing to rescale
        assert c is None and m.scaled() is m
        return
    s = m.scaled()
    assert type(s) is type(m) and s.default_history_size == m.default_history_size and s.row_scale is None and s.scaled() is s
    np.testing.assert_allclose(c, 1 / np.sqrt(m.rows.alpha**2 + m.rows.sigma**2))
    np.testing.assert_allclose(s.a, m.a * c[1:] / c[:-1])
    np.testing.assert_allclose(s.B, m.B * c[1:, None])
    np.testing.assert_allclose(s.sigma, m.sigma * c[1:])
    np.testing.assert_allclose(s.input_scale * c[:-1], m.input_scale)
    x = 3 * torch.randn(m.n, 2, 4, dtype=torch.float64)
    out = torch.randn(m.n, 2, 4, dtype=torch.float64)
    y = x * torch.as_tensor(c[:-1]).reshape(-1, 1, 1)
    torch.testing.assert_close(s.g(y[1:], out[1:], 1, m.n), m.g(x[1:], out[1:], 1, m.n), rtol=1e-12, atol=1e-12)


def test_any_row_scale_gives_the_same_loop():
    """``scaled(c)`` for an arbitrary positive ``c``: forward substitution from ``c_0 x_0`` is ``c_j x_j`` of the original rows."""
    import trisolve

    sched = DDIMScheduler(num_train_timesteps=100, clip_sample=True, clip_sample_range=0.7)  # the clipping hook too
    sched.set_timesteps(8)
    m = map_scheduler(sched, eta=0.5)
    c = RNG.uniform(0.2, 5.0, m.n + 1)
    s = m.scaled(c)
    noise = torch.randn(m.n, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0 = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def system(mp, noise_scale):
        def g(x_rows, lo, hi):  # a non-linear network of the scaled input
            return mp.g(x_rows, torch.tanh(x_rows * mp.table("input_scale", x_rows)[lo:hi]), lo, hi)

        c_rows = noise * torch.as_tensor(noise_scale).reshape(-1, 1, 1)
        return trisolve.SemilinearSystem(mp.a, mp.B, g, c=c_rows, sigma=mp.sigma, batch_ndim=1)

    x = trisolve.forward_substitution(system(m, m.noise_scale), x0)
    y = trisolve.forward_substitution(system(s, s.noise_scale), x0 * c[0])
    torch.testing.assert_close(y, x * torch.as_tensor(c).reshape(-1, 1, 1), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="row_scale must be"):
        m.scaled(c[:-1])


def test_constructor_checks_shapes_and_finiteness():
    sched = EulerDiscreteScheduler()
    sched.set_timesteps(4)
    m = map_scheduler(sched)
    fields = dict(scheduler=sched, timesteps=m.timesteps, a=m.a, B=m.B, rows=m.rows)
    assert isinstance(SchedulerMapping(**fields), SchedulerMapping)
    with pytest.raises(ValueError, match="B has shape"):
        SchedulerMapping(**{**fields, "B": m.B[:-1]})
    with pytest.raises(UnsupportedSchedulerError, match=r"non-finite step coefficients \(a\).*what to change"):
        SchedulerMapping(**{**fields, "a": np.append(m.a[:-1], np.nan)}, if_not_finite="what to change")
    ddim = DDIMScheduler()
    ddim.set_timesteps(10)
    with pytest.raises(UnsupportedSchedulerError, match="use a smaller eta"):
        map_scheduler(ddim, eta=3.0)


def test_g_takes_the_terms_the_window_needs_as_the_reductions_did():
    """Review of 741ed6e (prefix counts built once): for every window ``[lo, hi)`` -- empty, past the end, ``hi < lo``
    -- of tables holding ones, zeros and nan, ``g`` asks for the same columns as the per-call reductions before it
    (``np.all(k_m == 1)``, ``np.any(k_x != 0)``, ``np.any(k_0 != 0)`` on the slices; nan counts as a term)."""
    rng = np.random.default_rng(0)
    n = 9
    pick = np.array([0.0, 1.0, np.nan, 0.5])
    for _ in range(20):
        k_x, k_m, k_0 = (pick[rng.integers(0, 4, n)] for _ in range(3))
        p = Parametrisation("epsilon", np.ones(n + 1), np.linspace(1.0, 0.0, n + 1), k_x, k_m, k_0, np.ones(n), np.zeros(n), process=lambda t: t)
        for lo in range(0, n + 2):
            for hi in range(0, n + 3):
                asked = []

                def column(name, table, asked=asked):
                    asked.append(name)
                    return torch.as_tensor(table, dtype=torch.float64)[:, None]

                rows = len(k_x[lo:hi])
                p.g(torch.ones(rows, 1), torch.ones(rows, 1), column, lo, hi)
                want = {"k_m"} if not np.all(k_m[lo:hi] == 1.0) else set()
                want |= {"k_x"} if np.any(k_x[lo:hi] != 0.0) else set()
                want |= {"x0_x", "x0_m", "k_0"} if np.any(k_0[lo:hi] != 0.0) else set()
                assert set(asked) == want, (lo, hi, k_x, k_m, k_0)
