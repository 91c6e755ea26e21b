"""Rows entering a sliding window: ``solve(fill=)`` -- a copy of the last known row, or the last step continued.

References: the rows :func:`trisolve.driver.fill_rows` must write, computed by hand; forward
substitution (the answer does not depend on the fill); the sequential ``scheduler.step`` loop for
the sampler, whose default is ``"linear"``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BACKENDS
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

import trisolve
import trisolve_diffusion as td
from trisolve.driver import fill_rows
from trisolve_diffusion.cost_model import RoundsModel
from trisolve_diffusion.models.closed_form import GaussianMixtureDenoiser


def rows():
    """Four known rows of a (rows, 2 samples, 3) trajectory, two to fill."""
    x = np.zeros((6, 2, 3))
    x[0] = 0.5
    x[1] = [[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]
    x[2] = [[1.5, 1.0, 3.0], [2.0, -1.0, 1.0]]
    return x


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_fill_rows_writes_copies_or_the_continued_step(backend):
    x = rows()
    copy, line = backend.asarray(x.copy()), backend.asarray(x.copy())
    fill_rows(copy, 3, 6, "copy", backend.xp)
    fill_rows(line, 3, 6, "linear", backend.xp)
    copy, line = backend.to_numpy(copy), backend.to_numpy(line)
    np.testing.assert_array_equal(copy[:3], x[:3])
    np.testing.assert_array_equal(line[:3], x[:3])  # the known rows are not touched
    np.testing.assert_array_equal(copy[3:], np.broadcast_to(x[2], (3, 2, 3)))
    step = x[2] - x[1]
    np.testing.assert_array_equal(line[3:], np.stack([x[2] + k * step for k in (1, 2, 3)]))


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_fill_rows_copies_where_only_row_0_is_known_and_where_the_line_is_not_finite(backend):
    x = rows()
    first = backend.asarray(x.copy())
    fill_rows(first, 1, 6, "linear", backend.xp)  # only row 0 known: no step to continue
    np.testing.assert_array_equal(backend.to_numpy(first)[1:], np.broadcast_to(x[0], (5, 2, 3)))
    big = x.copy()
    big[1, 0, 0], big[2, 0, 0] = -1e308, 1e308  # the step overflows to inf in this one entry
    with np.errstate(over="ignore"):
        step = big[2] - big[1]
    over = backend.asarray(big.copy())
    fill_rows(over, 3, 5, "linear", backend.xp)
    out = backend.to_numpy(over)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[3:5, 0, 0], [1e308, 1e308])  # that entry: a copy
    np.testing.assert_array_equal(out[3:5, 1], np.stack([big[2, 1] + k * step[1] for k in (1, 2)]))  # the others: the line


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_fill_rows_of_one_sample_leaves_the_others(backend):
    x = rows()
    xb = backend.asarray(x.copy())
    fill_rows(xb, 3, 5, "linear", backend.xp, (1,))
    out = backend.to_numpy(xb)
    np.testing.assert_array_equal(out[:, 0], x[:, 0])
    np.testing.assert_array_equal(out[3:5, 1], np.stack([x[2, 1] + k * (x[2, 1] - x[1, 1]) for k in (1, 2)]))
    np.testing.assert_array_equal(out[5], x[5])


def smooth(batch_ndim=0, rates=(1.0,)):
    """A smooth trajectory: ``x_i = x_{i-1} + h (1 + r sin(x_{i-1}))`` (per sample ``r``), 40 rows."""
    r = np.asarray(rates)[:, None] if batch_ndim else rates[0]

    def F(x, lo, hi):
        prev = x[lo - 1 : hi - 1]
        return prev + 0.05 * (1.0 + r * np.sin(prev))

    return trisolve.BlackBoxSystem(F, n=40, batch_ndim=batch_ndim)


@pytest.mark.parametrize("window", [4, 9])
def test_the_continued_step_takes_fewer_rounds_to_the_same_answer(window):
    system = smooth()
    x0 = np.array([0.1, 0.7, -0.4])
    ref = trisolve.forward_substitution(system, x0)
    sols = {
        fill: trisolve.solve(system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Picard(), window=window, atol=1e-10, fill=fill)
        for fill in trisolve.driver.FILLS
    }
    for sol in sols.values():
        assert sol.converged
        np.testing.assert_allclose(sol.trajectory, ref, atol=1e-8, rtol=0)
    assert sols["linear"].num_rounds < sols["copy"].num_rounds, {k: s.num_rounds for k, s in sols.items()}
    default = trisolve.solve(system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Picard(), window=window, atol=1e-10)
    assert default.num_rounds == sols["copy"].num_rounds  # the core's default is the copy
    np.testing.assert_array_equal(default.trajectory, sols["copy"].trajectory)


def test_the_full_window_does_not_depend_on_the_fill():
    system, x0 = smooth(), np.array([0.1, 0.7, -0.4])
    solver, picard = trisolve.TriangularAnderson(), trisolve.Picard()
    a, b = (trisolve.solve(system, solver, x0, update_map=picard, atol=1e-10, fill=f) for f in trisolve.driver.FILLS)
    assert a.num_rounds == b.num_rounds
    np.testing.assert_array_equal(a.trajectory, b.trajectory)


def test_per_sample_windows_continue_each_samples_own_step():
    """Each sample of a batch solved per sample takes the rounds it takes alone, with its own rows continued."""
    rates = (0.2, 1.0, 2.5)
    x0 = np.tile(np.array([0.1, 0.7, -0.4]), (3, 1))
    kw = dict(update_map=trisolve.Picard(), window=6, atol=1e-10, fill="linear")
    batch = trisolve.solve(smooth(1, rates), trisolve.TriangularAnderson(), x0, **kw)
    assert batch.converged
    for s, r in enumerate(rates):
        alone = trisolve.solve(smooth(1, (r,)), trisolve.TriangularAnderson(), x0[s : s + 1], **kw)
        ref = trisolve.forward_substitution(smooth(1, (r,)), x0[s : s + 1])
        assert batch.sample_rounds[s] == alone.num_rounds
        np.testing.assert_allclose(batch.trajectory[:, s], ref[:, 0], atol=1e-8, rtol=0)


def test_a_bad_fill_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="fill must be one of 'copy', 'linear'"):
        trisolve.solve(smooth(), trisolve.Jacobi(), np.zeros(3), window=4, fill="quadratic")
    with pytest.raises(ValueError, match="fill must be one of 'copy', 'linear'"):
        td.SolveOptions(fill="line")


def gmm(scheduler, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = GaussianMixtureDenoiser(torch.rand(8, 2, 6, 6, generator=g) * 2 - 1, scheduler.alphas_cumprod, std=0.05)
    return lambda x, t: model(x, t).sample


def loop(denoiser, scheduler, x):
    for t in scheduler.timesteps:
        x = scheduler.step(denoiser(scheduler.scale_model_input(x, t), t.reshape(1).expand(x.shape[0])), t, x).prev_sample
    return x


@pytest.mark.parametrize("make", [lambda: DDIMScheduler(num_train_timesteps=200, clip_sample=False),
                                  lambda: DPMSolverMultistepScheduler(num_train_timesteps=200)], ids=["ddim", "dpm++2m"])  # fmt: skip
def test_the_samplers_default_fill_is_the_continued_step_and_matches_the_loop(make):
    sched = make()
    sched.set_timesteps(30)
    den = gmm(sched)
    latents = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    ref_sched = make()
    ref_sched.set_timesteps(30)
    ref = loop(den, ref_sched, latents.clone())
    opts = dict(atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, progress=False, window=10)
    default = td.sample_latents(den, sched, latents, **opts)
    linear = td.sample_latents(den, sched, latents, fill="linear", **opts)
    copy = td.sample_latents(den, sched, latents, fill="copy", **opts)
    for final, sol in (default, linear, copy):
        assert sol.converged
        torch.testing.assert_close(final, ref, atol=2e-5, rtol=0)
    assert default[1].num_rounds == linear[1].num_rounds  # the default is "linear" ...
    torch.testing.assert_close(default[1].trajectory, linear[1].trajectory, atol=0, rtol=0)
    assert linear[1].num_rounds < copy[1].num_rounds  # ... and it is not the copy


def test_the_rounds_prior_follows_the_fill():
    linear, copy = RoundsModel(), RoundsModel(window_fill="copy")
    assert linear(8, 50) < copy(8, 50) and linear(50, 50) == copy(50, 50)  # a sliding window only
    # the fits (cost_model's docstring): measured 27 / 16 rounds at 4 / 8 rows with the continued step, 18 at 8 with copies
    assert [round(linear(w, 50), 1) for w in (4, 8)] == [26.7, 15.6] and round(copy(8, 50), 1) == 18.1
    assert linear.fill(8, 50) > copy.fill(8, 50)
