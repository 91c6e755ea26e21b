"""Reliability of the core, third pass (issue 24): wide band tables, gradients of unfinished
solves, compact records, user code that raises, a map that makes no progress, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BACKENDS
from zoo import semilinear_system

import trisolve

# -- a band table wider than the schedule ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("n,p", [(1, 2), (2, 3), (2, 5), (3, 4), (4, 9), (6, 3)])
@pytest.mark.parametrize("solver", [trisolve.Jacobi(), trisolve.TriangularAnderson()], ids=["jacobi", "taa"])
def test_any_band_width_matches_forward_substitution(backend, n, p, solver):
    """p > n + 1 (extra all-zero columns, as scheduler mappings build for short schedules) works."""
    rng = np.random.default_rng(10 * n + p)
    system = semilinear_system(rng, n, p, (3,), backend)
    assert system.p == p
    x0 = backend.asarray(rng.standard_normal(3))
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    for window in (None, 1, 2):
        for update_map in (trisolve.OneStep(), trisolve.Picard(), trisolve.Unrolled(order=n)):
            sol = trisolve.solve(system, solver, x0, update_map=update_map, window=window, atol=1e-12)
            assert sol.converged and sol.num_rounds <= n
            np.testing.assert_allclose(backend.to_numpy(sol.trajectory), ref, rtol=1e-10, atol=1e-12)
    default = trisolve.solve(system, None, x0, atol=1e-12)
    assert default.converged
    np.testing.assert_allclose(backend.to_numpy(default.trajectory), ref, rtol=1e-10, atol=1e-12)


def test_a_wide_band_table_still_refuses_terms_before_row_0():
    B = np.zeros((2, 4))
    B[0, 1] = 1.0  # row 1 reading g_{-1}
    with pytest.raises(ValueError, match="before row 0"):
        trisolve.SemilinearSystem(np.ones(2), B, lambda x, lo, hi: x)


@pytest.mark.parametrize("name", ["lms", "unipc3"])
def test_short_schedules_with_a_wide_band_sample_like_the_scheduler_loop(name):
    """LMS (order 4) and UniPC order 3 at 2 steps build a band table wider than the schedule."""
    from diffusers import LMSDiscreteScheduler, UniPCMultistepScheduler
    from test_sample_latents import T, gmm

    import trisolve_diffusion as td

    def make():
        s = LMSDiscreteScheduler(num_train_timesteps=T) if name == "lms" else UniPCMultistepScheduler(num_train_timesteps=T, solver_order=3)
        s.set_timesteps(2)
        return s

    den = gmm(make())
    latents = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(3)) * make().init_noise_sigma
    sched, ref = make(), latents.clone()
    for t in sched.timesteps:  # the pipeline's loop (LMS's step takes no generator)
        out = den(sched.scale_model_input(ref, t), t.reshape(1).expand(ref.shape[0]))
        ref = sched.step(out, t, ref).prev_sample
    opts = td.SolveOptions(atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, progress=False)
    final, sol = td.sample_latents(den, make(), latents, options=opts)
    assert sol.converged
    torch.testing.assert_close(final, ref, atol=2e-5, rtol=0)
