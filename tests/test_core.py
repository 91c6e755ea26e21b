"""Core: systems, the driver, Jacobi and windowed Gauss-Seidel, order-k maps, on three namespaces."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS
from hypothesis import given
from hypothesis import strategies as st
from zoo import blackbox_system, event_shapes, semilinear_system

import trisolve

SOLVERS = [
    ("jacobi", lambda: trisolve.Jacobi(), None),
    ("gauss-seidel-3", lambda: trisolve.Jacobi(), trisolve.SlidingWindow(3)),
    ("anderson", lambda: trisolve.Anderson(), None),
    ("taa", lambda: trisolve.TriangularAnderson(), None),
    ("taa-window-4", lambda: trisolve.TriangularAnderson(history_size=3), trisolve.SlidingWindow(4)),
]
MAPS = [trisolve.OneStep(), trisolve.Picard(), trisolve.Picard(order=2), trisolve.Unrolled(), trisolve.Unrolled(order=3)]


def _x0(backend, rng, event):
    return backend.asarray(rng.standard_normal(event))


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("name,make,window", SOLVERS, ids=[s[0] for s in SOLVERS])
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 24),
    p=st.integers(1, 3),
    event=event_shapes,
    kind=st.sampled_from(["black", "semi", "semi-with-linear-rows"]),
)
def test_every_solver_reaches_forward_substitution(backend, name, make, window, seed, n, p, event, kind):
    rng = np.random.default_rng(seed)
    counter: list[int] = []
    if kind == "black":
        system = blackbox_system(rng, n, p, event, backend, counter=counter)
        update_map = trisolve.Picard() if seed % 2 else trisolve.OneStep()
    else:
        system = semilinear_system(rng, n, p, event, backend, counter=counter, linear_fraction=0.4 if kind.endswith("rows") else 0.0)
        update_map = MAPS[seed % len(MAPS)]
        if update_map.order is not None and update_map.order > n:
            update_map = type(update_map)(order=n)
    x0 = _x0(backend, rng, event)
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    counter.clear()
    sol = trisolve.solve(system, make(), x0, update_map=update_map, window=window, atol=1e-11)
    assert sol.status is trisolve.Status.CONVERGED, sol.status
    assert sol.num_rounds <= n
    assert sol.num_frozen == n + 1
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory), ref, rtol=1e-7, atol=1e-7)
    # the window never moves backwards
    los = [w[0] for w in sol.windows]
    his = [w[1] for w in sol.windows]
    assert los == sorted(los) and his == sorted(his)
    assert all(1 <= lo < hi <= n + 1 for lo, hi in sol.windows)
    # num_evals counts exactly the rows handed to the system
    assert sol.num_evals == sum(counter)
    assert sol.residuals.shape == (sol.num_rounds, n + 1)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@given(seed=st.integers(0, 2**31), n=st.integers(2, 20), p=st.integers(1, 3), event=event_shapes, r=st.integers(1, 20))
def test_order1_jacobi_is_exact_on_first_r_rows_after_r_rounds(backend, seed, n, p, event, r):
    rng = np.random.default_rng(seed)
    system = blackbox_system(rng, n, p, event, backend, scale=1.5)
    x0 = _x0(backend, rng, event)
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    r = min(r, n)
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, atol=0.0, max_iter=r)
    assert sol.num_rounds == r
    assert sol.num_frozen >= r + 1
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory)[: r + 1], ref[: r + 1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 24), p=st.integers(1, 3), event=event_shapes)
def test_order_k_maps_share_the_solution(backend, seed, n, p, event):
    rng = np.random.default_rng(seed)
    system = semilinear_system(rng, n, p, event, backend)
    x0 = _x0(backend, rng, event)
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    for k in sorted({1, min(2, n), max(1, n // 2), n}):
        for update_map in (trisolve.Unrolled(order=k), trisolve.Picard(order=k)):
            sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=update_map, atol=1e-12)
            assert sol.converged and sol.num_rounds <= n
            np.testing.assert_allclose(backend.to_numpy(sol.trajectory), ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 30), k=st.integers(1, 30), lo=st.integers(1, 10))
def test_unrolled_map_matches_explicit_formula(backend, seed, n, k, lo):
    """G_i = Phi(s->i) x_s + sum_{l=s+1}^i Phi(l->i) u_l, written out with loops."""
    rng = np.random.default_rng(seed)
    k = min(k, n)
    lo = min(lo, n)
    system = semilinear_system(rng, n, 2 if n > 1 else 1, (2,), backend, a_range=(-1.5, 1.5))
    x = backend.asarray(rng.standard_normal((n + 1, 2)))
    ev = system.evaluate(x, lo, n + 1, system.new_cache(), xp=backend.xp)
    G = backend.to_numpy(trisolve.Unrolled(order=k).apply(x, ev, lo, n + 1, system, xp=backend.xp))
    xn, u = backend.to_numpy(x), backend.to_numpy(ev.u)
    for i in range(lo, n + 1):
        s = max(i - k, lo - 1)
        phi = lambda l: np.prod(system.a[l:i])  # a_{l+1} .. a_i (a[j-1] is a_j)
        expect = phi(s) * xn[s] + sum(phi(l) * u[l - lo] for l in range(s + 1, i + 1))
        np.testing.assert_allclose(G[i - lo], expect, rtol=1e-10, atol=1e-10)
    P = backend.to_numpy(trisolve.Picard(order=k).apply(x, ev, lo, n + 1, system, xp=backend.xp))
    f = backend.to_numpy(ev.f)
    for i in range(lo, n + 1):
        s = max(i - k, lo - 1)
        expect = xn[s] + sum(f[l - lo] - xn[l - 1] for l in range(s + 1, i + 1))
        np.testing.assert_allclose(P[i - lo], expect, rtol=1e-10, atol=1e-10)


def test_higher_order_needs_fewer_rounds_on_a_slow_recurrence():
    rng = np.random.default_rng(0)
    n = 60
    system = trisolve.SemilinearSystem(np.full(n, 0.98), np.full(n, 0.05), lambda x, lo, hi: np.sin(x))
    x0 = rng.standard_normal(4)
    rounds = {k: trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Unrolled(order=k), atol=1e-10).num_rounds for k in (1, 4, n)}
    assert rounds[n] < rounds[4] < rounds[1]


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_gauss_seidel_window_of_one_is_forward_substitution(backend):
    rng = np.random.default_rng(1)
    counter: list[int] = []
    system = semilinear_system(rng, 15, 2, (3,), backend, counter=counter)
    x0 = _x0(backend, rng, (3,))
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    counter.clear()
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, window=trisolve.SlidingWindow(1), atol=0.0)
    assert sol.converged and sol.num_rounds == 15
    assert sol.windows == [(i, i + 1) for i in range(1, 16)]
    assert sum(counter) == sol.num_evals <= 15 + 1  # g of each row once (row 0 included)
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory), ref, rtol=1e-13, atol=1e-13)


def test_frozen_rows_g_is_never_recomputed():
    """Each row's g is evaluated at its final value exactly once, and never again afterwards."""
    rng = np.random.default_rng(2)
    seen: dict[int, list[np.ndarray]] = {}
    n = 30

    def g(x, lo, hi):
        for j in range(lo, hi):
            seen.setdefault(j, []).append(x[j - lo].copy())
        return np.tanh(x)

    system = trisolve.SemilinearSystem(np.full(n, 0.9), np.stack([np.full(n, 0.3), np.r_[0, np.full(n - 1, 0.1)]], 1), g)
    x0 = rng.standard_normal(3)
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Unrolled(), atol=1e-9)
    assert sol.converged
    assert sol.num_evals == sum(len(v) for v in seen.values())
    final = sol.trajectory
    last_lo = sol.windows[-1][0]
    for j, values in seen.items():
        at_final = [k for k, v in enumerate(values) if np.array_equal(v, final[j])]
        if j < last_lo - 2:  # read by a later round: evaluated at its final value
            assert at_final, j
        # once evaluated at its final value, a row's g is never evaluated again
        assert not at_final or at_final[0] == len(values) - 1, j
    np.testing.assert_allclose(final, trisolve.forward_substitution(system, x0), atol=1e-7)


def test_warm_start_from_the_solution_takes_one_round():
    rng = np.random.default_rng(3)
    system = blackbox_system(rng, 40, 2, (5,), BACKENDS[0])
    x0 = rng.standard_normal(5)
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-10)
    again = trisolve.solve(system, trisolve.TriangularAnderson(), x0, init=sol.trajectory, atol=1e-8)
    assert again.converged and again.num_rounds == 1
    np.testing.assert_allclose(again.trajectory, sol.trajectory, atol=1e-9)


def test_warm_start_from_anything_gives_the_same_answer():
    rng = np.random.default_rng(4)
    system = blackbox_system(rng, 25, 3, (2, 2), BACKENDS[0])
    x0 = rng.standard_normal((2, 2))
    ref = trisolve.forward_substitution(system, x0)
    init = rng.standard_normal((26, 2, 2)) * 10
    before = init.copy()
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, init=init, atol=1e-12)
    assert sol.converged
    np.testing.assert_allclose(sol.trajectory, ref, atol=1e-9)
    np.testing.assert_array_equal(init, before)  # the caller's warm start is never written
    assert not np.shares_memory(sol.trajectory, init)


def test_partial_reuse_keeps_the_frozen_prefix():
    rng = np.random.default_rng(5)
    system = blackbox_system(rng, 30, 1, (3,), BACKENDS[0])
    x0 = rng.standard_normal(3)
    previous = rng.standard_normal((31, 3))
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, init=previous, num_frozen=11, atol=1e-12)
    assert sol.converged
    assert sol.num_rounds <= 30 - 10
    np.testing.assert_array_equal(sol.trajectory[1:11], previous[1:11])
    # the rest is the forward substitution continued from the kept rows
    cont = previous.copy()
    cont[0] = x0
    for i in range(11, 31):
        cont[i] = system.fn(cont, i, i + 1)[0]
    np.testing.assert_allclose(sol.trajectory[11:], cont[11:], atol=1e-9)


def test_resume_after_max_iter():
    rng = np.random.default_rng(6)
    system = blackbox_system(rng, 40, 2, (3,), BACKENDS[0], scale=1.2)
    x0 = rng.standard_normal(3)
    first = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12, max_iter=5)
    assert first.status is trisolve.Status.MAX_ITER and first.num_rounds == 5
    rest = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12, init=first.trajectory, num_frozen=first.num_frozen)
    assert rest.converged
    np.testing.assert_allclose(rest.trajectory, trisolve.forward_substitution(system, x0), atol=1e-9)


def test_early_stop_when_final_row_stops_changing():
    n = 200
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: 0.3 * np.tanh(x[lo - 1 : hi - 1]) + 1.0, n)
    x0 = np.zeros(4)
    full = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12)
    early = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12, early_stop=1e3)
    assert full.converged
    assert early.status is trisolve.Status.EARLY_STOPPED
    assert early.num_rounds < full.num_rounds
    np.testing.assert_allclose(early.trajectory[-1], full.trajectory[-1], atol=1e-8)


def test_callback_can_stop_and_sees_each_round():
    rng = np.random.default_rng(7)
    system = blackbox_system(rng, 30, 1, (), BACKENDS[0], scale=1.3)
    infos = []
    sol = trisolve.solve(system, trisolve.Jacobi(), np.zeros(()), atol=1e-14, callback=lambda info: infos.append(info) or info.round == 3)
    assert sol.status is trisolve.Status.STOPPED_BY_CALLBACK
    assert sol.num_rounds == 3 and [i.round for i in infos] == [1, 2, 3]
    assert infos[-1].num_frozen == sol.num_frozen
    assert infos[0].errors.shape == (infos[0].hi - infos[0].lo,)
    # the callback also sees the final round of a converged solve, and cannot un-converge it
    seen = []
    done = trisolve.solve(system, trisolve.Jacobi(), np.zeros(()), atol=1e-10, callback=lambda info: seen.append(info.round) or True)
    assert seen == [1] and done.status is trisolve.Status.STOPPED_BY_CALLBACK
    seen.clear()
    done = trisolve.solve(system, trisolve.Jacobi(), np.zeros(()), atol=1e-10, callback=lambda info: seen.append(info.num_frozen) and False)
    assert done.converged and len(seen) == done.num_rounds and seen[-1] == 31


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_result_keeps_namespace_dtype_and_device(backend, dtype):
    rng = np.random.default_rng(8)
    system = semilinear_system(rng, 10, 2, (4,), backend)
    x0 = backend.asarray(rng.standard_normal(4), dtype=dtype)
    if backend.name != "numpy":
        system = trisolve.SemilinearSystem(system.a, system.B, system.g, c=None)
    else:
        system = trisolve.SemilinearSystem(system.a, system.B, system.g, c=None)
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Unrolled(), atol=1e-4)
    assert type(sol.trajectory) is type(x0)
    assert sol.trajectory.dtype == x0.dtype
    assert sol.converged


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_device_is_kept():  # pragma: no cover - runs on a GPU machine
    import torch

    system = trisolve.SemilinearSystem(np.full(20, 0.9), np.full(20, 0.1), lambda x, lo, hi: torch.tanh(x))
    x0 = torch.randn(8, device="cuda")
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Unrolled(), atol=1e-6)
    assert sol.trajectory.device == x0.device and sol.converged


def test_rows_beyond_the_window_never_hold_uninitialised_memory():
    """With a sliding window, rows not yet reached are a copy of row 0 (what a callback or a stopped solve shows)."""
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: 0.5 * x[lo - 1 : hi - 1] + 1.0, n=50)
    x0 = np.full(3, 7.0)
    seen = []
    sol = trisolve.solve(
        system, trisolve.Jacobi(), x0, window=trisolve.SlidingWindow(5), max_iter=3, callback=lambda i: seen.append(i.trajectory[-1].copy()) and False
    )
    assert sol.status is trisolve.Status.MAX_ITER
    np.testing.assert_array_equal(sol.trajectory[sol.windows[-1][1] :], np.broadcast_to(x0, (51 - sol.windows[-1][1], 3)))
    for last in seen:
        np.testing.assert_array_equal(last, x0)


@pytest.mark.parametrize("atol,rtol", [(1e-3, 0.0), (1e-3, 0.5), (0.0, 0.5), (0.0, 0.0)])
@pytest.mark.parametrize("batch_ndim", [0, 1])
def test_scaled_error_matches_its_definition(atol, rtol, batch_ndim):
    rng = np.random.default_rng(0)
    r = rng.standard_normal((7, 3, 4)) * 1e-3
    r[1] = 0.0  # exactly converged row
    r[2, 1, 2] = np.nan
    r[3, 0, 0] = np.inf
    r[4, 2, :] = 0.0  # a zero sample in a non-zero row
    sigma = np.array([0.0, 1.0, 2.0, 0.5, 0.0, 3.0, 1.0])
    err = trisolve.Tolerance(atol=atol, rtol=rtol).scaled_error(r, sigma, batch_ndim=batch_ndim, xp=np)
    expected = np.empty(7)
    for i in range(7):
        samples = r[i][:, None, :] if batch_ndim else r[i].reshape(1, -1)
        rms = max(float(np.sqrt(np.mean(s**2))) for s in samples) if np.all(np.isfinite(r[i])) else np.nan
        thr = atol + rtol * sigma[i]
        expected[i] = np.nan if np.isnan(rms) else (rms / thr if thr > 0 else (0.0 if rms == 0 else np.inf))
    np.testing.assert_array_equal(np.isnan(err), np.isnan(expected))
    np.testing.assert_allclose(err[~np.isnan(err)], expected[~np.isnan(expected)], rtol=1e-12)
    assert np.isnan(err[2]) and np.isnan(err[3]) and err[1] == 0.0


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_linear_rows_are_resolved_in_the_round_their_predecessor_freezes(backend):
    # rows 2, 4, ..., n read no g: x_i = a_i x_{i-1} + c_i. Order-1 Jacobi freezes one row per
    # round at worst; each frozen odd row carries the linear row after it, so n / 2 rounds do
    n = 12
    rng = np.random.default_rng(3)
    B = rng.uniform(-1.0, 1.0, size=n)
    B[1::2] = 0.0  # rows 2, 4, ..., 12
    requested: list[tuple[int, int]] = []

    def g(x, lo, hi):
        requested.append((lo, hi))
        return backend.xp.sin(3.0 * x) + 1.0

    system = trisolve.SemilinearSystem(rng.uniform(0.5, 1.5, size=n), B, g, c=backend.asarray(rng.standard_normal((n, 2))))
    assert system.linear_rows.tolist() == [False] + [bool(i % 2 == 0) for i in range(1, n + 1)]
    x0 = backend.asarray(np.array([0.3, -0.7]))
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    requested.clear()
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, atol=0.0, rtol=0.0)  # exact: only the structure converges
    assert sol.status is trisolve.Status.CONVERGED
    assert sol.num_rounds == n // 2
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory), ref, rtol=1e-12, atol=1e-12)
    # g of row n - 1 is read by no row (row n is linear), so it is never evaluated
    assert all(hi <= n - 1 for _, hi in requested)
    assert sol.num_evals == sum(hi - lo for lo, hi in requested)
