"""Core: systems, the driver, Jacobi and windowed Gauss-Seidel, order-k maps, on three namespaces."""

from __future__ import annotations

import array_api_compat.numpy as xnp
import numpy as np
import pytest
from conftest import BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo import amplifying_recurrence, blackbox_system, event_shapes, semilinear_system

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
@settings(max_examples=15)  # each example is several full solves: keep the suite fast
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
    sol = trisolve.solve(system, make(), x0, update_map=update_map, window=window, atol=1e-11, record="errors")
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
    np.testing.assert_array_equal(sol.round_max_errors, [e.max() for e in sol.round_errors])


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@settings(max_examples=15)  # each example is several full solves: keep the suite fast
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
@settings(max_examples=8)  # each example is several full solves: keep the suite fast
@given(seed=st.integers(0, 2**31), n=st.integers(1, 24), p=st.integers(1, 3), event=event_shapes)
def test_order_k_maps_share_the_solution(backend, seed, n, p, event):
    rng = np.random.default_rng(seed)
    system = semilinear_system(rng, n, p, event, backend)
    x0 = _x0(backend, rng, event)
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    for k in sorted({1, min(2, n), max(1, n // 2), n}):
        gains = rng.uniform(0.0, 1.0, n)
        for update_map in (trisolve.Unrolled(order=k), trisolve.Picard(order=k), trisolve.WeightedPicard(gains, order=k)):
            sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=update_map, atol=1e-12)
            assert sol.converged and sol.num_rounds <= n
            np.testing.assert_allclose(backend.to_numpy(sol.trajectory), ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@settings(max_examples=20)  # each example is several full solves: keep the suite fast
@given(seed=st.integers(0, 2**31), n=st.integers(1, 30), k=st.integers(1, 30), lo=st.integers(1, 10))
def test_maps_match_their_explicit_formulas(backend, seed, n, k, lo):
    """The one residual scan reproduces each map written out with loops (DESIGN 2.1), to round-off.

    Unrolled: G_i = Phi(s->i) x_s + sum_{l=s+1}^i Phi(l->i) u_l, u_l = F_l - a_l x_{l-1};
    Picard:   G_i = x_s + sum_{l=s+1}^i (F_l - x_{l-1});   OneStep: G_i = F_i;   s = max(i - k, lo - 1).
    """
    rng = np.random.default_rng(seed)
    k = min(k, n)
    lo = min(lo, n)
    system = semilinear_system(rng, n, 2 if n > 1 else 1, (2,), backend, a_range=(-1.5, 1.5))
    x = backend.asarray(rng.standard_normal((n + 1, 2)))
    xp = backend.xp
    f = system.evaluate(x, lo, n + 1, system.new_cache(x, xp=xp), xp=xp).f
    xn, fn = backend.to_numpy(x), backend.to_numpy(f)
    u = fn - system.a[lo - 1 :, None] * xn[lo - 1 : n]

    def check(update_map, expect_row):
        G, R = update_map.apply(update_map.prepare(system, x, xp=xp), x, f, lo, n + 1, xp=xp)
        G, R = backend.to_numpy(G), backend.to_numpy(R)
        for i in range(lo, n + 1):
            expect = expect_row(i, max(i - k, lo - 1))
            scale = max(1.0, np.abs(expect).max())
            np.testing.assert_allclose(G[i - lo], expect, rtol=0, atol=4e-15 * scale * n)
            np.testing.assert_allclose(R[i - lo], expect - xn[i], rtol=0, atol=4e-15 * scale * n)

    phi = lambda l, i: np.prod(system.a[l:i])  # a_{l+1} .. a_i (a[j-1] is a_j)
    check(trisolve.Unrolled(order=k), lambda i, s: phi(s, i) * xn[s] + sum(phi(l, i) * u[l - lo] for l in range(s + 1, i + 1)))
    check(trisolve.Picard(order=k), lambda i, s: xn[s] + sum(fn[l - lo] - xn[l - 1] for l in range(s + 1, i + 1)))
    check(trisolve.OneStep(), lambda i, s: fn[i - lo])
    # WeightedPicard: the unrolled formula with the given gains J in place of a (u_l = F_l - J_l x_{l-1})
    J = rng.uniform(-1.5, 1.5, n)
    psi = lambda l, i: np.prod(J[l:i])  # J_{l+1} .. J_i
    v = fn - J[lo - 1 :, None] * xn[lo - 1 : n]
    check(trisolve.WeightedPicard(J, order=k), lambda i, s: psi(s, i) * xn[s] + sum(psi(l, i) * v[l - lo] for l in range(s + 1, i + 1)))
    if k == n:  # order=None is the whole window
        check(trisolve.Unrolled(), lambda i, s: phi(lo - 1, i) * xn[lo - 1] + sum(phi(l, i) * u[l - lo] for l in range(lo, i + 1)))


def test_weighted_picard_is_picard_at_one_and_unrolled_at_a_and_refuses_bad_gains():
    rng = np.random.default_rng(3)
    n = 12
    system = trisolve.SemilinearSystem(rng.uniform(0.5, 1.0, n), np.full(n, 0.1), lambda x, lo, hi: np.tanh(x))
    x = rng.standard_normal((n + 1, 3))
    f = system.evaluate(x, 2, n + 1, system.new_cache(x, xp=xnp), xp=xnp).f
    for same, weighted in ((trisolve.Picard(), trisolve.WeightedPicard(np.ones(n))), (trisolve.Unrolled(), trisolve.WeightedPicard(system.a))):
        want = same.apply(same.prepare(system, x, xp=xnp), x, f, 2, n + 1, xp=xnp)
        got = weighted.apply(weighted.prepare(system, x, xp=xnp), x, f, 2, n + 1, xp=xnp)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-14, atol=1e-14)
    assert trisolve.WeightedPicard([0.5, 0.25]) == trisolve.WeightedPicard(np.array([0.5, 0.25]))  # by value, hashable
    assert hash(trisolve.WeightedPicard([0.5]))
    for bad in ([], [[1.0]], [1.0, np.nan]):
        with pytest.raises(ValueError, match="gains must be"):
            trisolve.WeightedPicard(bad)
    with pytest.raises(ValueError, match="one gain per row"):
        trisolve.solve(system, trisolve.Jacobi(), x[0], update_map=trisolve.WeightedPicard(np.ones(n - 1)))


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
    """The g of a final row that a later round reads is evaluated at its final value once, and never again afterwards."""
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
    # rows read while final: the band (p = 2) before a later round's window -- their kept g is at the final value
    read_final = {j for lo, _ in sol.windows[1:] for j in range(max(lo - 2, 0), lo)}
    for j, values in seen.items():
        at_final = [k for k, v in enumerate(values) if np.array_equal(v, final[j])]
        if j in read_final:  # read by a later round as a final row: evaluated at its final value
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
    system = trisolve.SemilinearSystem(system.a, system.B, system.g, c=None)  # no forcing: x0 alone sets the dtype
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


# -- the residual scan and the map protocol ---------------------------------------------------


def _scan_reference(J, r, kind, order):
    """delta_t = sum_{l = max(t-k+1, 0)}^{t} J_t ... J_{l+1} r_l, with explicit loops (NumPy)."""
    w = r.shape[0]
    k = w if order is None else order
    out = np.zeros_like(r)
    for t in range(w):
        for l in range(max(t - k + 1, 0), t + 1):
            v = r[l]
            for j in range(l + 1, t + 1):
                if kind == "scalar":
                    v = J[j] * v
                elif kind == "diagonal":
                    v = J[j] * v
                else:
                    v = np.einsum("...ij,...j->...i", J[j], v)
            out[t] += v
    return out


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("kind", ["scalar", "diagonal", "dense", "one"])
@settings(max_examples=20)  # each example is several full solves: keep the suite fast
@given(seed=st.integers(0, 2**31), w=st.integers(1, 12), order=st.one_of(st.none(), st.integers(0, 14)))
def test_affine_scan_matches_the_loop_for_every_linear_part(backend, kind, seed, w, order):
    rng = np.random.default_rng(seed)
    event = (2, 3)
    r = rng.standard_normal((w, *event))
    J = {
        "scalar": rng.uniform(-1.5, 1.5, size=w),
        "diagonal": rng.uniform(-1.5, 1.5, size=(w, *event)),
        "dense": rng.uniform(-0.8, 0.8, size=(w, *event, event[-1])),
        "one": 1.0,
    }[kind]
    Jd = J if kind == "one" else backend.asarray(J)
    got = backend.to_numpy(trisolve.affine_scan(Jd, backend.asarray(r), order=order, xp=backend.xp))
    want = _scan_reference(np.ones(w) if kind == "one" else J, r, "scalar" if kind == "one" else kind, order)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_affine_scan_refuses_a_linear_part_of_the_wrong_shape():
    with pytest.raises(ValueError, match="does not fit residual rows"):
        trisolve.affine_scan(np.ones((3, 2)), np.ones((3, 4)), xp=xnp)


class _DiagonalNewton(trisolve.UpdateMap):
    """A test-only Newton map (DEER) for x_i = tanh(W x_{i-1} + u_i) with diagonal W: J_i = dF_i/dx_{i-1}."""

    order = None

    def __init__(self, wdiag, u):
        self.wdiag, self.u = wdiag, u

    def linear_part(self, tables, x, f, lo, hi, *, xp):
        return (1.0 - f * f) * self.wdiag  # tanh' = 1 - tanh^2, elementwise  (w, d)


def test_a_newton_map_is_just_another_linear_part():
    """Supplying J_i = dF_i/dx_{i-1} through the protocol gives Newton's method: exact, in a handful of rounds."""
    rng = np.random.default_rng(0)
    n, d = 200, 3
    wdiag = rng.uniform(0.5, 1.2, size=d)
    u = rng.standard_normal((n + 1, d))
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(wdiag * x[lo - 1 : hi - 1] + u[lo:hi]), n)
    x0 = rng.standard_normal(d)
    ref = trisolve.forward_substitution(system, x0)
    newton = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=_DiagonalNewton(wdiag, u), atol=1e-12)
    plain = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12)
    assert newton.converged
    np.testing.assert_allclose(newton.trajectory, ref, atol=1e-10)
    assert newton.num_rounds <= 12 < plain.num_rounds


# -- layout and host traffic ----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS[:2], ids=str)
@pytest.mark.parametrize("warm", [False, True])
def test_trajectory_buffer_is_c_contiguous(backend, warm):
    event = (4, 5)
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: 0.5 * x[lo - 1 : hi - 1], n=50)
    x0 = backend.asarray(np.ones(event))
    init = None
    if warm:  # a warm start with the row axis innermost must not leak its strides
        init = backend.asarray(np.asfortranarray(np.ones((51, *event))))
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, init=init, max_iter=2)
    itemsize = 8
    expected = (4 * 5 * itemsize, 5 * itemsize, itemsize)
    if backend.name == "torch":
        assert sol.trajectory.is_contiguous()
        assert tuple(s * itemsize for s in sol.trajectory.stride()) == expected
    else:
        assert sol.trajectory.flags["C_CONTIGUOUS"] and sol.trajectory.strides == expected


class _HostTraffic:
    """Counts device-to-host reads and tensors built from host data by wrapping torch's entry points,
    and (``syncs``) ATen ops that make a CUDA host wait for the device inside C++ (a scalar read,
    ``linalg.solve``'s error check, data-dependent shapes), seen by a ``TorchDispatchMode``."""

    SYNCING = ("_local_scalar_dense", "_linalg_check_errors", "nonzero", "masked_select", "unique", "_unique2")

    READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__", "__array__")
    BUILDS = ("as_tensor", "tensor", "from_numpy", "asarray")

    def __init__(self):
        self.reads = self.builds = 0
        self._saved = []

    def __enter__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self
        self.syncs = 0

        class Syncs(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.overloadpacket.__name__ in outer.SYNCING:
                    outer.syncs += 1
                return func(*args, **(kwargs or {}))

        self._mode = Syncs()
        self._mode.__enter__()
        for name in self.READS:
            orig = getattr(torch.Tensor, name)

            def read(*a, _orig=orig, **k):
                self.reads += 1
                return _orig(*a, **k)

            self._saved.append((torch.Tensor, name, orig))
            setattr(torch.Tensor, name, read)
        for name in self.BUILDS:
            orig = getattr(torch, name)

            def build(data, *a, _orig=orig, **k):
                if not isinstance(data, torch.Tensor):
                    self.builds += 1
                return _orig(data, *a, **k)

            self._saved.append((torch, name, orig))
            setattr(torch, name, build)
        return self

    def __exit__(self, *exc):
        for owner, name, orig in reversed(self._saved):
            setattr(owner, name, orig)
        self._mode.__exit__(*exc)


@pytest.mark.parametrize(
    "solver", [trisolve.Jacobi(), trisolve.TriangularAnderson(history_size=3), trisolve.Anderson()], ids=["jacobi", "taa", "anderson"]
)
@pytest.mark.parametrize(
    "update_map", [trisolve.OneStep(), trisolve.Picard(), trisolve.Unrolled(order=4)], ids=["onestep", "picard", "unrolled"]
)
@pytest.mark.parametrize("window", [None, 6], ids=["full", "sliding"])
@pytest.mark.parametrize("per_sample", [False, True], ids=["lockstep", "per-sample"])
def test_at_most_one_host_read_and_no_host_built_tensor_per_round(solver, update_map, window, per_sample):
    """One host read a round; lockstep rounds build no tensor from host data, per-sample rounds only their small masks."""
    import torch

    n = 24
    rng = np.random.default_rng(0)
    W = torch.from_numpy(rng.standard_normal((4, 4)) / 3)
    B = rng.uniform(0.1, 0.5, size=(n, 2))
    B[0, 1] = 0.0
    B[5] = 0.0  # a linear row
    c = torch.from_numpy(rng.standard_normal((n, 2, 4)) * 0.1)
    system = trisolve.SemilinearSystem(
        rng.uniform(0.8, 1.0, n), B, lambda x, lo, hi: torch.tanh(x @ W), c=c, sigma=rng.uniform(0.5, 1.0, n), batch_ndim=1
    )
    x0 = torch.from_numpy(rng.standard_normal((2, 4)))
    counts = []
    with _HostTraffic() as traffic:
        sol = trisolve.solve(
            system,
            solver,
            x0,
            update_map=update_map,
            window=None if window is None else trisolve.SlidingWindow(window),
            atol=1e-11,
            rtol=1e-10,
            early_stop=1e-30,
            final_row_atol=1e-30,
            callback=lambda info: counts.append((traffic.reads, traffic.builds, traffic.syncs)),
            per_sample=per_sample,
        )
    assert sol.converged and sol.num_rounds >= 4
    reads = np.diff([0] + [r for r, _, _ in counts])
    builds = np.diff([b for _, b, _ in counts])
    syncs = np.diff([s for _, _, s in counts])
    # one read per round (and the wrapper sees it); round 1 also validates x0 and builds the tables
    assert reads[1:].max() <= 1 and reads[1:].min() == 1, reads
    # per sample: the small masks of which pairs are active and how they are written, and (once the samples' prefixes
    # differ) of which pairs of g are kept, or of the samples a linear row is resolved for
    assert builds.max(initial=0) <= (3 if per_sample else 0), builds
    # and no hidden wait inside an op (Anderson's small solves use linalg.solve_ex without its error check)
    assert syncs.max(initial=0) == 0, syncs
    np.testing.assert_allclose(sol.trajectory.numpy(), trisolve.forward_substitution(system, x0).numpy(), atol=1e-6)


# -- the output-aware finish ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("solver", [trisolve.Jacobi(), trisolve.TriangularAnderson()], ids=["jacobi", "taa"])
def test_final_row_atol_stops_once_the_final_row_residual_is_small(backend, solver):
    """Stop at the first round whose starting iterate has a final-row pending error after the round's
    update, rate RMS(F_n(x) - x_n) / (1 - rate), <= final_row_atol for every sample (unscaled by sigma;
    rate: the contraction of that correction over the last two rounds, or the last one after a single
    round, per sample, at least 1/3), and every window row's correction (the
    largest over samples), or its pending error after the update by the same estimate where that is
    smaller, <= final_row_atol, checked independently from the iterates a callback saw."""
    n, tol = 60, 1e-3
    rng = np.random.default_rng(5)
    base = blackbox_system(rng, n, 1, (3, 4), backend, scale=0.4)
    system = trisolve.BlackBoxSystem(base.fn, n, sigma=np.full(n, 1e6), batch_ndim=1)  # sigma must not matter
    x0 = backend.asarray(rng.standard_normal((3, 4)))
    full = trisolve.solve(system, solver, x0, atol=1e-12)
    seen = [backend.to_numpy(trisolve.forward_substitution(system, x0))[:1].repeat(n + 1, 0)]  # the copy-forward start
    seen[0][0] = backend.to_numpy(x0)
    sol = trisolve.solve(
        system, solver, x0, atol=1e-12, final_row_atol=tol, callback=lambda i: seen.append(backend.to_numpy(i.trajectory).copy())
    )
    assert sol.status is trisolve.Status.FINAL_ROW_CONVERGED and sol.status.ok and sol.converged
    assert "final row" in sol.status.message and "earlier rows" in sol.status.message
    sol.raise_for_status()  # ok: no error
    assert sol.num_rounds < full.num_rounds

    def final_rms(traj):  # per sample: the RMS over the rest of the event
        f = backend.to_numpy(system.fn(backend.asarray(traj), n, n + 1))[0]
        return np.sqrt(np.mean((f - traj[n]) ** 2, axis=-1))

    def after_update(c, prev, earlier):  # c rate / (1 - rate); rate over two rounds where measured, else one; >= 1/3
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.maximum(c / prev if earlier is None else np.sqrt(c / earlier), 1 / 3)
            return np.where(c == 0, 0.0, np.where(rate < 1, c * rate / (1 - rate), np.inf))

    def measured(t, k):  # the iterate k rounds before round t's start, if the final row was checked then
        return t >= k and all(sol.windows[t - j][1] == n + 1 for j in range(1, k + 1))

    def pending(t):  # the final row's error after round t's update, from its correction at the start; per sample
        if not measured(t, 1):
            return np.inf
        earlier = final_rms(starts[t - 2]) if measured(t, 2) else None
        return after_update(final_rms(starts[t]), final_rms(starts[t - 1]), earlier).max()

    def window_rms(traj, lo, hi):  # each window row's correction, the largest over samples
        f = backend.to_numpy(system.fn(backend.asarray(traj), lo, hi))
        return np.sqrt(np.mean((f - traj[lo:hi]) ** 2, axis=-1)).max(axis=-1)

    def rows_pending(t):  # per window row the smaller of its correction and its pending error after the update; the largest
        lo, hi = sol.windows[t]
        c = window_rms(starts[t], lo, hi)
        if not measured(t, 1):
            return c.max()
        prev = window_rms(starts[t - 1], lo, hi)
        earlier = window_rms(starts[t - 2], lo, hi) if measured(t, 2) else None
        return np.minimum(c, after_update(c, prev, earlier)).max()

    def may_stop(t):
        return pending(t) <= tol and rows_pending(t) <= tol

    starts = seen[:-1]  # the iterate each round started from
    in_window = [t for t, (lo, hi) in enumerate(sol.windows) if hi == n + 1]
    assert may_stop(len(starts) - 1)
    assert not any(may_stop(t) for t in in_window[:-1])
    # the answer is close to the solution at the final row
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    assert np.abs(backend.to_numpy(sol.trajectory)[-1] - ref[-1]).max() < 10 * tol


@pytest.mark.parametrize("solver", [trisolve.Jacobi(), trisolve.TriangularAnderson(history_size=2)], ids=["jacobi", "taa"])
@pytest.mark.parametrize("final_row_atol", [1e-2, None], ids=["finish", "every-row"])
def test_rows_become_final_only_after_the_rows_they_read_settle(monkeypatch, solver, final_row_atol):
    """Issue 26, in small: a row made final in the same round as the rows it reads, while those still move,
    keeps a defect ``x_i - F_i(x_{i-1})`` of about their last correction (up to the step tolerance, 1e-3
    here), which an ill-conditioned recurrence amplifies on its way to the output. Every passing row final
    at once (the rule before, ``FREEZE_FRACTION = inf``) ends the output 0.39 (TAA) / 0.58 (Jacobi) RMS from
    forward substitution, 40-60x the finish's ``final_row_atol`` of 1e-2; with rows final only once they and
    the rows before them settled (``trisolve.driver._freeze_ends``) it is within it, in both modes."""
    import trisolve.driver as driver

    system = amplifying_recurrence()
    x0 = np.full(4, 0.01)
    ref = trisolve.forward_substitution(system, x0)
    assert np.abs(ref[-1]).max() > 1e3  # the growing mode dominates the output

    def error(sol):
        assert sol.status.ok
        return np.sqrt(np.mean((sol.trajectory[-1] - ref[-1]) ** 2))

    kw = dict(update_map=trisolve.Picard(), atol=1e-3, final_row_atol=final_row_atol)
    sol = trisolve.solve(system, solver, x0, **kw)
    assert error(sol) <= 1e-2 and sol.num_rounds <= system.n
    with monkeypatch.context() as m:  # the rule before: the same system breaks the bound by far
        m.setattr(driver, "FREEZE_FRACTION", np.inf)
        before = trisolve.solve(system, solver, x0, **kw)
    assert error(before) > 0.2
    assert before.num_rounds <= sol.num_rounds + 3  # the honest freeze costs a few rounds here, not n


def test_freeze_ends_makes_a_row_final_only_once_it_and_the_rows_before_it_settled():
    """The rule itself: row ``a`` always; row ``i > a`` when it and every plain row between ``a`` and it is
    expected to move next round by at most FREEZE_FRACTION of its threshold (its error times the slower of its
    own observed contraction ``err / previous`` -- 1 where nothing was measured -- and its predecessor's), or
    passed FREEZE_PASSES rounds in a row; never past ``start``."""
    from trisolve.driver import FREEZE_FRACTION, FREEZE_PASSES, _freeze_ends, _settle_state

    f, k = FREEZE_FRACTION, FREEZE_PASSES
    assert 0.005 <= f < 0.1 and k >= 2
    # (w, S) = (4, 5); columns are samples
    err = np.array([[0.5, 0.5, 0.5, 0.5, 0.5],
                    [0.5 * f, 0.5, 0.5 * f, 0.5, 0.5],
                    [0.5, 0.05, 0.5, 0.05, 0.5],
                    [3.0, 0.05, 0.5, 0.05, 0.5]])  # fmt: skip
    state = _settle_state((4, 5))
    state[:, 1, 0] = [np.inf, 0.5, 0.5, 1.0]  # sample 1: row 1 did not contract (expected 0.5); rows 2-3 did (0.0025)
    state[:, 3, 0] = [1.0, 0.5, 1.0, 1.0]  # sample 3: the same
    state[2, 2, 0] = np.nan  # sample 2, row 2: a nan error before counts as not measured
    state[:, 4, 1] = [0, k - 1, k - 2, 0]  # sample 4: row 1 passes its k-th round in a row, row 2 only its (k-1)-th
    a, start = np.array([0, 0, 1, 0, 0]), np.array([3, 4, 4, 4, 4])
    freeze, new = _freeze_ends(err, state, a, start)
    # sample 0: row 0 always; row 1 moved by f / 2 (nothing measured: its error itself) -> final; row 2 (0.5) stays; start = 3
    # sample 1: row 1 expected 0.5 -> only row 0, though rows 2-3 would settle; sample 2: a = 1 -> row 1; row 2 expected 0.5 stays
    # sample 3: row 1 stays -> row 0 alone; sample 4: row 1 settled by its passes, row 2 not
    assert freeze.tolist() == [2, 1, 2, 1, 2]
    np.testing.assert_array_equal(new[..., 0], err)  # this round's errors: the next round's ``previous``
    assert new[:, 0, 1].tolist() == [1, 1, 1, 0] and new[:, 4, 1].tolist() == [1, k, k - 1, 1]  # passes; a failing row restarts at 0
    # rows that contract, and so do the rows before them: row 1 0.01 x max(0.01 / 0.5, 0.5 / 1), row 2
    # 0.05 x max(0.05 / 1, 0.02) <= f -> every plain row final
    state = _settle_state((3, 1))
    state[:, 0, 0] = [1.0, 0.5, 1.0]
    ok, _ = _freeze_ends(np.array([[0.5], [0.01], [0.05]]), state, np.array([0]), np.array([3]))
    assert ok.tolist() == [3]
    # ... but not where the row before was not measured (row 0 entering: its rate 1 -> row 1 expected 0.01 > f)
    state[0, 0, 0] = np.inf
    assert _freeze_ends(np.array([[0.5], [0.01], [0.05]]), state, np.array([0]), np.array([3]))[0].tolist() == [1]
    # a row's own ratio read small by chance (error 100 -> 0.1: a row entering a sliding window as a copy of the last
    # known row) while its predecessor did not contract: its next residual follows the predecessor's correction -> stays
    state = _settle_state((2, 1))
    state[:, 0, 0] = [0.5, 100.0]
    assert _freeze_ends(np.array([[0.5], [0.1]]), state, np.array([0]), np.array([2]))[0].tolist() == [1]
    one, _ = _freeze_ends(np.array([[0.5]]), _settle_state((1, 1)), np.array([0]), np.array([1]))
    assert one.tolist() == [1]  # the structural row alone
    none, _ = _freeze_ends(np.zeros((2, 1)), _settle_state((2, 1)), np.array([0]), np.array([0]))
    assert none.tolist() == [0]  # no plain rows (a sample that is done)
    nan, _ = _freeze_ends(np.array([[0.5], [np.nan]]), _settle_state((2, 1)), np.array([0]), np.array([2]))
    assert nan.tolist() == [1]  # a nan error never settles


def test_pending_error_reads_the_contraction_over_two_rounds():
    """The finish's estimate of the error left after a round's update: c rate / (1 - rate), rate the
    contraction over the last two rounds where measured (DDIM-25 seed 9's final row: corrections
    0.178, 0.0967, 0.0181 -- the last ratio alone, 0.19, would accept 4.2e-3; over two rounds 0.32),
    never below PENDING_RATE_FLOOR = 1/3 (an estimate of at least c / 2: DDIM-25 seed 25's final row,
    corrections 0.37, 0.10, 0.022, read a rate of 0.24 and then contracted by 0.5)."""
    from trisolve.driver import PENDING_RATE_FLOOR, _pending_error

    assert PENDING_RATE_FLOOR == pytest.approx(1 / 3)
    c, prev, earlier = np.array([0.0181, 0.5, 0.0, 0.022]), np.array([0.0967, 0.4, 1.0, 0.10]), np.array([0.178, 1.0, 2.0, 0.37])
    two = np.sqrt(c[0] / earlier[0])
    est = _pending_error(c, prev, earlier)
    assert two < 1 / 3 and est[0] == pytest.approx(c[0] / 2)  # 0.32 over two rounds (0.19 over the last alone): 1/3
    est2 = _pending_error(np.array([0.05]), np.array([0.1]), np.array([0.4]))  # 0.5 over the last round, 0.35 over two
    assert est2[0] == pytest.approx(0.05 * np.sqrt(0.125) / (1 - np.sqrt(0.125)))
    assert est[1] == pytest.approx(0.5 * np.sqrt(0.5) / (1 - np.sqrt(0.5)))  # grew in the last round, contracts over two
    assert est[2] == 0.0  # a zero correction: nothing pending
    assert np.sqrt(c[3] / earlier[3]) < 0.25 and est[3] == pytest.approx(c[3] / 2)  # a faster rate is read as 1/3
    one = _pending_error(c, prev)  # no earlier round: the last ratio
    assert one[0] == pytest.approx(c[0] / 2) and one[1] == np.inf  # 0.19 < 1/3; 0.5 / 0.4 >= 1
    assert one[3] == pytest.approx(c[3] / 2)  # 0.22 < 1/3: the floor
    np.testing.assert_array_equal(_pending_error(c, prev, np.full(4, np.nan)), one)  # an unmeasured earlier: the same
    assert np.all(_pending_error(np.array([1e-3, 0.0])) == [np.inf, 0.0])  # no previous round: not yet
    assert _pending_error(np.array([1e-3]), np.array([1e-3]), np.array([1e-3]))[0] == np.inf  # no contraction


@pytest.mark.parametrize("per_sample", [False, True])
def test_final_row_atol_and_early_stop_together(per_sample):
    """Both finishes in one solve read their own entries of the round's decisions vector: each stops the
    solve where it alone would, and the final-row finish keeps its row within final_row_atol."""
    A = np.array([[0.6, 0.3], [-0.2, 0.5]])
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1] @ A.T) + 0.1, 30, batch_ndim=1)
    x0 = np.array([[0.5, -0.3], [1.0, 0.2]])
    ref = trisolve.forward_substitution(system, x0)
    kw = dict(update_map=trisolve.Picard(), atol=1e-12, per_sample=per_sample)
    alone = trisolve.solve(system, trisolve.TriangularAnderson(), x0, final_row_atol=1e-4, **kw)
    both = trisolve.solve(system, trisolve.TriangularAnderson(), x0, final_row_atol=1e-4, early_stop=1e-30, **kw)
    assert alone.status is both.status is trisolve.Status.FINAL_ROW_CONVERGED and alone.num_rounds == both.num_rounds
    assert np.sqrt(np.mean((both.trajectory[-1] - ref[-1]) ** 2, axis=-1)).max() <= 1e-4
    early = trisolve.solve(system, trisolve.TriangularAnderson(), x0, early_stop=1e6, **kw)
    early_both = trisolve.solve(system, trisolve.TriangularAnderson(), x0, early_stop=1e6, final_row_atol=1e-30, **kw)
    assert early.status is early_both.status is trisolve.Status.EARLY_STOPPED and early.num_rounds == early_both.num_rounds


def test_final_row_atol_is_checked():
    with pytest.raises(ValueError, match="final_row_atol must be a finite number >= 0"):
        trisolve.solve(trisolve.BlackBoxSystem(lambda x, lo, hi: x[lo - 1 : hi - 1], 3), trisolve.Jacobi(), np.zeros(2), final_row_atol=-1.0)
    # a threshold never met leaves the solve to the ordinary test
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: 0.5 * x[lo - 1 : hi - 1] + 1, 20)
    sol = trisolve.solve(system, trisolve.Jacobi(), np.zeros(2), final_row_atol=0.0)
    assert sol.status is trisolve.Status.CONVERGED or sol.status is trisolve.Status.FINAL_ROW_CONVERGED


def test_an_int_window_means_a_sliding_window_in_solve_as_in_sample():
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: 0.9 * np.tanh(x[lo - 1 : hi - 1]) + 0.1, n=40)
    by_int = trisolve.solve(system, trisolve.Jacobi(), np.zeros(3), window=np.int64(5), atol=1e-12)
    by_policy = trisolve.solve(system, trisolve.Jacobi(), np.zeros(3), window=trisolve.SlidingWindow(5), atol=1e-12)
    assert by_int.windows == by_policy.windows and max(hi - lo for lo, hi in by_int.windows) == 5
    np.testing.assert_array_equal(by_int.trajectory, by_policy.trajectory)
    with pytest.raises(TypeError, match="window must be None, an int"):
        trisolve.solve(system, trisolve.Jacobi(), np.zeros(3), window="8")
    with pytest.raises(ValueError, match="SlidingWindow size must be >= 1"):
        trisolve.solve(system, trisolve.Jacobi(), np.zeros(3), window=0)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_final_row_atol_waits_for_the_rows_that_still_move_the_final_row(backend):
    """One-step map, last step x_n = x_(n-1): the copy-forward start gives the final row a zero residual
    in round 1 while every other row is far off; the finish must wait for those rows too."""
    xp = backend.xp
    n = 30

    def fn(x, lo, hi):
        f = 0.5 * xp.tanh(x[lo - 1 : hi - 1, ...]) + 1.0
        if hi == n + 1:  # the identity last step
            f = xp.concat([f[: hi - lo - 1, ...], x[n - 1 : n, ...]], axis=0)
        return f

    system = trisolve.BlackBoxSystem(fn, n)
    x0 = backend.asarray(np.linspace(-1.0, 1.0, 4))
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12, final_row_atol=1e-6)
    assert sol.status.ok and sol.num_rounds > 1
    assert np.abs(backend.to_numpy(sol.trajectory)[-1] - ref[-1]).max() < 1e-5


def test_final_row_atol_reads_the_map_residual_of_an_unrolled_map():
    """A last step that is the identity has a zero one-step residual at any input; with the Picard map
    the pending correction of the final row is the map residual, which must pass too (else the solve
    would stop in round 1 with a wrong final row)."""
    n = 30
    a = np.full(n, 0.9)
    B = np.full(n, 0.1)
    a[-1], B[-1] = 1.0, 0.0  # x_n = x_{n-1}: an identity last step
    system = trisolve.SemilinearSystem(a, B, lambda y, lo, hi: np.sin(3.0 * y) + 1.0)
    x0 = np.linspace(-1.0, 1.0, 5)
    ref = trisolve.forward_substitution(system, x0)
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Picard(), atol=1e-12, final_row_atol=1e-6)
    assert sol.num_rounds > 1 and sol.status.ok
    assert np.abs(sol.trajectory[-1] - ref[-1]).max() < 1e-5


def test_solution_repr_is_one_short_line():
    """``print(solution)`` says status, rounds, evaluations and shape, not the whole trajectory."""
    rnn = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(0.5 * x[lo - 1 : hi - 1] + 1.0), n=2000)
    sol = trisolve.solve(rnn, trisolve.Jacobi(), np.zeros(3), atol=1e-9)
    text = repr(sol)
    assert text == str(sol)
    assert "\n" not in text and len(text) < 200
    assert f"status={sol.status.name}" in text and f"num_rounds={sol.num_rounds}" in text
    assert f"num_evals={sol.num_evals}" in text and "(2001, 3)" in text
