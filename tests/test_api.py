"""The public API of the core (issue 25): Solution.stats, the short repr, deprecated spellings."""

from __future__ import annotations

import numpy as np
import pytest

import trisolve


def _rnn(n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    W, u = 0.6 * rng.standard_normal((d, d)), rng.standard_normal((n + 1, d))
    return trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1] @ W.T + u[lo:hi]), n), np.zeros(d)


def test_stats_holds_rounds_evals_and_the_solvers_counters():
    system, x0 = _rnn()
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, atol=1e-10)
    assert sol.status.ok
    assert sol.stats["num_rounds"] == sol.num_rounds and sol.stats["num_evals"] == sol.num_evals
    solver_stats = {"num_restarts", "num_rejections", "num_fallback_rows"}
    assert solver_stats <= set(sol.stats)
    with pytest.raises(TypeError):
        sol.stats["num_rounds"] = 0  # read-only
    jacobi = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-10)
    assert set(jacobi.stats) == {"num_rounds", "num_evals"}


def test_stats_holds_the_maps_counters_and_num_evals_counts_them():
    system, x0 = _rnn(n=30, d=2)
    newton = trisolve.Newton("dense", derivatives="finite-differences")
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=newton, atol=1e-10)
    assert sol.status.ok
    fd = sol.stats["num_jacobian_evals"]
    assert fd > 0
    rows = sum(hi - lo for lo, hi in sol.windows)  # rows the rounds evaluated
    assert sol.num_evals == rows + fd


def test_deprecated_counters_warn_and_read_stats():
    system, x0 = _rnn()
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, atol=1e-10)
    for name in ("num_restarts", "num_rejections", "num_fallback_rows"):
        with pytest.warns(DeprecationWarning, match=f"stats.get\\('{name}'"):
            assert getattr(sol, name) == sol.stats[name]


def test_converged_agrees_with_status_ok():
    system, x0 = _rnn(n=60)
    done = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-10)
    short = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-10, max_iter=2)
    final = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-14, final_row_atol=1e-3)
    for sol in (done, short, final):
        assert sol.converged == sol.status.ok
    assert not short.converged


def test_repr_is_short():
    system, x0 = _rnn(n=500)
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-10)
    text = repr(sol)
    assert text == f"Solution(status=CONVERGED, num_rounds={sol.num_rounds}, num_evals={sol.num_evals}, shape=(501, 3))"
