"""Newton maps (DEER, quasi-DEER, damped): the scan kernel, exactness and guarantees on three namespaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo import rk4_system, semilinear_system

import trisolve


def coupled_system(backend, rng, n, event, *, scale, batch_ndim=0, linear=False, with_jacobian=True, elementwise=False):
    """``F_i(x) = tanh(M_i x_{i-1}) + b_i`` (``M_i`` acts on the last axis; identity for ``linear``).

    Written with array-API calls only, with its exact Jacobian ``diag(1 - tanh^2) M_i`` (or the
    diagonal of it for ``elementwise``, where ``M_i`` is diagonal).
    """
    xp = backend.xp
    d = event[-1]
    M = rng.standard_normal((n + 1, d, d)) * scale / np.sqrt(d)
    if elementwise:
        M = M * np.eye(d)
    Md = backend.asarray(M)
    b = backend.asarray(rng.standard_normal((n + 1, *event)))
    extra = (1,) * (len(event) - 1)

    def z(x, lo, hi):
        Mi = xp.reshape(Md[lo:hi, ...], (hi - lo, *extra, d, d))
        return xp.matmul(Mi, x[lo - 1 : hi - 1, ..., None])[..., 0]  # (w, *event)

    def fn(x, lo, hi):
        zz = z(x, lo, hi)
        return (zz if linear else xp.tanh(zz)) + b[lo:hi, ...]

    def jac(x, lo, hi):
        zz = z(x, lo, hi)
        s = xp.ones_like(zz) if linear else 1.0 - xp.tanh(zz) ** 2  # (w, *event)
        Mi = xp.reshape(Md[lo:hi, ...], (hi - lo, *extra, d, d))
        if elementwise:
            return s * _diag(Mi, xp)  # (w, *event)
        return s[..., None] * Mi  # (w, *event, d): row k of the block is output k

    kwargs = {"jacobian": jac} if with_jacobian else {}
    return trisolve.BlackBoxSystem(fn, n, batch_ndim=batch_ndim, **kwargs)


def _diag(M, xp):
    d = M.shape[-1]
    flat = xp.reshape(M, (*M.shape[:-2], d * d))
    return xp.take(flat, xp.asarray(np.arange(0, d * d, d + 1)), axis=-1)


def _sequential_scan(J, r, dense):
    out, prev = np.zeros_like(r), np.zeros_like(r[0])
    for t in range(r.shape[0]):
        prev = (np.einsum("...ij,...j->...i", J[t], prev) if dense else J[t] * prev) + r[t]
        out[t] = prev
    return out


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@given(seed=st.integers(0, 2**31), w=st.integers(1, 40), d=st.integers(1, 4), dense=st.booleans())
def test_affine_scan_equals_the_sequential_recurrence(backend, seed, w, d, dense):
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((w, 2, d, d) if dense else (w, 2, d)) * 0.7
    r = rng.standard_normal((w, 2, d))
    got = backend.to_numpy(trisolve.affine_scan(backend.asarray(J), backend.asarray(r), xp=backend.xp))
    np.testing.assert_allclose(got, _sequential_scan(J, r, dense), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 30),
    event=st.sampled_from([(1,), (3,), (2, 3)]),
    scale=st.sampled_from([0.5, 2.5]),  # contractive and not
    jacobian=st.sampled_from(["dense", "diagonal"]),
    damping=st.sampled_from([0.0, 0.5]),
)
@settings(max_examples=20)
def test_newton_maps_reach_forward_substitution_in_at_most_n_rounds(backend, seed, n, event, scale, jacobian, damping):
    rng = np.random.default_rng(seed)
    batch_ndim = len(event) - 1
    system = coupled_system(backend, rng, n, event, scale=scale, batch_ndim=batch_ndim)
    x0 = backend.asarray(rng.standard_normal(event))
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(jacobian=jacobian, damping=damping), atol=1e-12)
    assert sol.status is trisolve.Status.CONVERGED
    assert sol.num_rounds <= n and sol.num_frozen == n + 1
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory), ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_dense_newton_solves_a_linear_markov_system_in_two_rounds(backend):
    """DEER on a linear system is exact after one round; the second round only confirms it."""
    rng = np.random.default_rng(0)
    n = 200
    system = coupled_system(backend, rng, n, (3,), scale=0.9, linear=True)
    x0 = backend.asarray(rng.standard_normal(3))
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(), atol=1e-9)
    assert sol.status is trisolve.Status.CONVERGED and sol.num_rounds <= 2
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory), ref, rtol=1e-9, atol=1e-9)


def test_dense_newton_needs_far_fewer_rounds_than_jacobi_on_an_rnn():
    rng = np.random.default_rng(1)
    n = 400
    system = coupled_system(BACKENDS[0], rng, n, (8,), scale=0.9)
    x0 = np.zeros(8)
    jac = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-10)
    deer = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(), atol=1e-10)
    quasi = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(jacobian="diagonal"), atol=1e-10)
    assert deer.status.ok and quasi.status.ok and jac.status.ok
    assert 3 * deer.num_rounds <= jac.num_rounds
    assert deer.num_rounds <= quasi.num_rounds
    np.testing.assert_allclose(deer.trajectory, jac.trajectory, atol=1e-9)


def test_torch_jacobians_come_from_autodiff_and_match_the_callable():
    """Without a jacobian= callable a torch system is differentiated by torch.func; same rounds, same answer."""
    rng = np.random.default_rng(2)
    be = BACKENDS[1]
    for event, batch_ndim in (((4,), 0), ((2, 3), 1)):
        with_j = coupled_system(be, np.random.default_rng(2), 60, event, scale=1.2, batch_ndim=batch_ndim)
        auto = coupled_system(be, np.random.default_rng(2), 60, event, scale=1.2, batch_ndim=batch_ndim, with_jacobian=False)
        x0 = be.asarray(rng.standard_normal(event))
        for jac in ("dense", "diagonal"):
            a = trisolve.solve(with_j, trisolve.Jacobi(), x0, update_map=trisolve.Newton(jacobian=jac), atol=1e-11)
            b = trisolve.solve(auto, trisolve.Jacobi(), x0, update_map=trisolve.Newton(jacobian=jac), atol=1e-11)
            assert a.status.ok and b.status.ok and a.num_rounds == b.num_rounds
            torch.testing.assert_close(a.trajectory, b.trajectory, rtol=1e-12, atol=1e-12)


def test_semilinear_jacobian_uses_the_linear_part_and_g():
    """J_i = a_i I + B_i dg/dx: on torch from autodiff of g, on NumPy from the system's g-Jacobian."""
    rng = np.random.default_rng(3)
    n, d = 120, 3
    A = rng.standard_normal((d, d)) * 0.6
    At = torch.from_numpy(A)
    h = 0.05
    a, B = np.ones(n), np.full(n, h)
    sys_t = trisolve.SemilinearSystem(a, B, lambda y, lo, hi: torch.tanh(y @ At.T))
    sys_np = trisolve.SemilinearSystem(
        a, B, lambda y, lo, hi: np.tanh(y @ A.T), jacobian=lambda y, lo, hi: (1 - np.tanh(y @ A.T) ** 2)[:, :, None] * A
    )
    x0 = rng.standard_normal(d)
    ref = trisolve.forward_substitution(sys_np, x0)
    s1 = trisolve.solve(sys_np, trisolve.Jacobi(), x0, update_map=trisolve.Newton(), atol=1e-11)
    s2 = trisolve.solve(sys_t, trisolve.Jacobi(), torch.from_numpy(x0), update_map=trisolve.Newton(), atol=1e-11)
    assert s1.status.ok and s2.status.ok and s1.num_rounds == s2.num_rounds <= 6
    np.testing.assert_allclose(s1.trajectory, ref, atol=1e-10)
    np.testing.assert_allclose(s2.trajectory.numpy(), ref, atol=1e-10)


def test_chunked_scan_gives_the_same_iterates():
    rng = np.random.default_rng(4)
    system = coupled_system(BACKENDS[0], rng, 97, (3,), scale=1.0)
    x0 = rng.standard_normal(3)
    whole = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(), atol=1e-11)
    for c in (1, 7, 32):
        part = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(chunk_rows=c), atol=1e-11)
        assert part.num_rounds == whole.num_rounds
        np.testing.assert_allclose(part.trajectory, whole.trajectory, rtol=1e-12, atol=1e-12)


def test_overflowing_scan_falls_back_to_the_one_step_value():
    """J = 10 at the start: products reach 10^400 and overflow; those rows take F_i(x) and the solve stays exact."""
    n = 400
    fn = lambda x, lo, hi: np.tanh(10.0 * x[lo - 1 : hi - 1]) + 0.5  # noqa: E731
    jac = lambda x, lo, hi: 10.0 * (1.0 - np.tanh(10.0 * x[lo - 1 : hi - 1]) ** 2)  # noqa: E731
    system = trisolve.BlackBoxSystem(fn, n, jacobian=jac)
    x0 = np.zeros(2)
    with np.errstate(over="ignore", invalid="ignore"):
        sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(jacobian="diagonal"), atol=1e-12)
    assert sol.status is trisolve.Status.CONVERGED and sol.num_rounds <= n
    np.testing.assert_allclose(sol.trajectory, trisolve.forward_substitution(system, x0), atol=1e-12)


def test_newton_refuses_what_it_cannot_do():
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1]), 5)
    with pytest.raises(TypeError, match="jacobian= callable"):
        trisolve.solve(system, trisolve.Jacobi(), np.zeros(2), update_map=trisolve.Newton())
    banded = trisolve.SemilinearSystem(np.ones(5), np.full((5, 2), 0.1) * (np.arange(5)[:, None] >= np.arange(2)), lambda y, lo, hi: y)
    with pytest.raises(ValueError, match="augmented state"):
        trisolve.solve(banded, trisolve.Jacobi(), np.zeros(2), update_map=trisolve.Newton())
    bad = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1]), 5, jacobian=lambda x, lo, hi: np.ones((hi - lo, 3)))
    sol = trisolve.solve(bad, trisolve.Jacobi(), np.zeros(2), update_map=trisolve.Newton())  # raised in a round: kept
    assert sol.status is trisolve.Status.FAILED and isinstance(sol.error, ValueError) and "expected" in str(sol.error)
    bad_settings = (
        ({"jacobian": "full"}, ValueError),
        ({"derivatives": "autograd"}, ValueError),
        ({"jacobian": "secant", "derivatives": "finite-differences"}, ValueError),
        ({"damping": -1.0}, ValueError),
        ({"chunk_rows": 0}, ValueError),
        ({"chunk_rows": 1.5}, TypeError),
    )
    for kwargs, exc in bad_settings:
        with pytest.raises(exc):
            trisolve.Newton(**kwargs)


def _rk4_pendulum(lib, n, h=0.05):
    return rk4_system(lambda y: lib.stack([y[..., 1], -lib.sin(y[..., 0]) - 0.3 * y[..., 1]], -1), h, n)


def test_default_method_does_not_degenerate_on_an_integrator_or_an_rnn():
    """solver=None: Newton takes <= 10% of n rounds on RK4 (torch autodiff, or finite differences on NumPy);
    a NumPy state too large for finite differences gets the secant map, which stays far from n."""
    n = 400
    sys_t = _rk4_pendulum(torch, n)
    x0 = torch.tensor([2.5, 0.0], dtype=torch.float64)
    assert trisolve.defaults.default_method(sys_t, x0)[1] == trisolve.Newton()
    sol = trisolve.solve(sys_t, None, x0, atol=1e-10)
    assert sol.status.ok and sol.num_rounds <= n // 10
    torch.testing.assert_close(sol.trajectory, trisolve.forward_substitution(sys_t, x0), rtol=1e-8, atol=1e-8)

    sys_np = _rk4_pendulum(np, n)
    assert trisolve.defaults.default_method(sys_np, x0.numpy())[1] == trisolve.Newton(derivatives="finite-differences")
    sol = trisolve.solve(sys_np, None, x0.numpy(), atol=1e-10)
    assert sol.status.ok and sol.num_rounds <= n // 10  # the one-step map needs n, the secant map about n / 7
    np.testing.assert_allclose(sol.trajectory, trisolve.forward_substitution(sys_np, x0.numpy()), atol=1e-8)

    rnn = coupled_system(BACKENDS[0], np.random.default_rng(5), n, (6,), scale=0.9, with_jacobian=False)
    jacobi = trisolve.solve(rnn, trisolve.Jacobi(), np.zeros(6), atol=1e-10)
    sol = trisolve.solve(rnn, None, np.zeros(6), atol=1e-10)
    assert sol.status.ok and 3 * sol.num_rounds <= jacobi.num_rounds  # the Picard map needs about n
    np.testing.assert_allclose(sol.trajectory, trisolve.forward_substitution(rnn, np.zeros(6)), atol=1e-8)

    d = trisolve.defaults.NEWTON_FD_MAX_D + 4
    big = coupled_system(BACKENDS[0], np.random.default_rng(5), n, (d,), scale=0.9, with_jacobian=False)
    assert trisolve.defaults.default_method(big, np.zeros(d))[1] == trisolve.Newton(jacobian="secant")
    sol = trisolve.solve(big, None, np.zeros(d), atol=1e-10)
    assert sol.status.ok and sol.num_rounds <= n // 4  # the Picard map needs about n
    np.testing.assert_allclose(sol.trajectory, trisolve.forward_substitution(big, np.zeros(d)), atol=1e-8)

    banded = semilinear_system(np.random.default_rng(6), 40, 3, (2,), BACKENDS[1])  # not Markov: no Newton, even on torch
    assert trisolve.defaults.default_method(banded, torch.zeros(2, dtype=torch.float64))[1] == trisolve.Newton(jacobian="secant")


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("jacobian", ["dense", "diagonal"])
def test_damped_newton_takes_the_levenberg_marquardt_step_and_stays_exact(backend, jacobian):
    """damping = lam: one round's G is x + argmin sum ||delta_t - J_t delta_(t-1) - r_t||^2 + lam ||delta_t||^2
    (the normal equations, solved densely here), and the solve still ends at forward substitution."""
    rng = np.random.default_rng(8)
    n, d, lo, hi, lam = 30, 3, 4, 25, 0.7
    system = coupled_system(backend, rng, n, (d,), scale=1.5)
    x = backend.asarray(rng.standard_normal((n + 1, d)))
    newton = trisolve.Newton(jacobian=jacobian, damping=lam)
    assert newton.damped and not trisolve.Newton().damped
    f = system.evaluate(x, lo, hi, None, xp=backend.xp).f
    g, R = newton.apply(newton.prepare(system, x, xp=backend.xp), x, f, lo, hi, xp=backend.xp)
    J, _ = trisolve.newton.jacobian_rows(system, x, lo, hi, dense=jacobian == "dense", xp=backend.xp)
    w = hi - lo
    J, r = backend.to_numpy(J).reshape((w, d, d) if jacobian == "dense" else (w, d)), backend.to_numpy(f) - backend.to_numpy(x)[lo:hi]
    A = np.eye(w * d)
    for t in range(1, w):
        A[t * d : (t + 1) * d, (t - 1) * d : t * d] = -(J[t] if jacobian == "dense" else np.diag(J[t]))
    delta = np.linalg.solve(A.T @ A + lam * np.eye(w * d), A.T @ r.reshape(-1)).reshape(w, d)
    np.testing.assert_allclose(backend.to_numpy(R), delta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(g), backend.to_numpy(x)[lo:hi] + delta, rtol=1e-10, atol=1e-12)

    x0 = backend.asarray(rng.standard_normal(d))
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=newton, atol=1e-11)
    assert sol.status is trisolve.Status.CONVERGED and sol.num_rounds <= n
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory), backend.to_numpy(trisolve.forward_substitution(system, x0)), atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("jacobian", ["dense", "diagonal"])
def test_finite_difference_jacobians_match_the_exact_ones(backend, jacobian):
    """derivatives="finite-differences" on every namespace: J to about half the digits, Newton's rounds
    within one of the exact Jacobian's, the same answer, and the d extra evaluations per row counted."""
    rng = np.random.default_rng(7)
    n, event, batch_ndim = 80, (2, 3), 1
    system = coupled_system(backend, rng, n, event, scale=1.2, batch_ndim=batch_ndim)
    x = backend.asarray(rng.standard_normal((n + 1, *event)))
    tables = trisolve.Newton().prepare(system, x, xp=backend.xp)
    exact, _ = trisolve.newton.jacobian_rows(system, x, 5, 60, dense=jacobian == "dense", xp=backend.xp)
    fd, _ = trisolve.newton.jacobian_rows(system, x, 5, 60, dense=jacobian == "dense", xp=backend.xp, tables=tables,
                                          derivatives="finite-differences")  # fmt: skip
    np.testing.assert_allclose(backend.to_numpy(fd), backend.to_numpy(exact), rtol=1e-6, atol=1e-6)
    assert tables.extra_evals == 55 * (3 + 1)  # d columns + F at x (no f0 given)

    x0 = backend.asarray(rng.standard_normal(event))
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    a = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(jacobian=jacobian), atol=1e-11)
    b = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(jacobian=jacobian, derivatives="finite-differences"), atol=1e-11)
    assert a.status.ok and b.status.ok and abs(a.num_rounds - b.num_rounds) <= 1
    assert b.num_evals == sum((hi - lo) * (1 + 3) for lo, hi in b.windows)  # F and its d = 3 differences, every round
    np.testing.assert_allclose(backend.to_numpy(b.trajectory), ref, rtol=1e-9, atol=1e-9)


def test_finite_difference_jacobian_of_a_semilinear_system_differences_g():
    """J_i = a_i I + B_i dg/dx with dg from differences of g (one evaluation of g at x plus d more per row)."""
    rng = np.random.default_rng(3)
    n, d = 120, 3
    A = rng.standard_normal((d, d)) * 0.6
    exact = trisolve.SemilinearSystem(
        np.ones(n), np.full(n, 0.05), lambda y, lo, hi: np.tanh(y @ A.T), jacobian=lambda y, lo, hi: (1 - np.tanh(y @ A.T) ** 2)[:, :, None] * A
    )
    x0 = rng.standard_normal(d)
    ref = trisolve.forward_substitution(exact, x0)
    a = trisolve.solve(exact, trisolve.Jacobi(), x0, update_map=trisolve.Newton(), atol=1e-11)
    b = trisolve.solve(exact, trisolve.Jacobi(), x0, update_map=trisolve.Newton(derivatives="finite-differences"), atol=1e-11)
    assert a.status.ok and b.status.ok and abs(a.num_rounds - b.num_rounds) <= 1
    assert b.num_evals == sum((hi - lo) * (2 + d) for lo, hi in b.windows)
    np.testing.assert_allclose(b.trajectory, ref, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_secant_map_serves_banded_systems_exactly(backend):
    rng = np.random.default_rng(6)
    system = semilinear_system(rng, 40, 3, (2,), backend)
    x0 = backend.asarray(rng.standard_normal(2))
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(jacobian="secant"), atol=1e-11)
    assert sol.status.ok and sol.num_rounds <= 40
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory), backend.to_numpy(trisolve.forward_substitution(system, x0)), atol=1e-9)
