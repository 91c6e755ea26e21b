"""Toy ODEs solved in parallel, against the sequential recurrence and SciPy's solve_ivp."""

from __future__ import annotations

import numpy as np
import pytest
import zoo
from scipy.integrate import solve_ivp

import trisolve

A = np.array([[-1.0, 2.0], [-2.0, -1.0]])  # a damped rotation: stable


def rhs(t, y):
    return A @ y + 0.3 * np.sin(y)


def rk4_system(h, n):  # one RK4 step from every row x_{i-1}, batched over rows
    return zoo.rk4_system(lambda z: z @ A.T + 0.3 * np.sin(z), h, n)


def euler_system(h, n):
    # semilinear: y_i = 1 * y_{i-1} + h * f(y_{i-1})
    return trisolve.SemilinearSystem(np.ones(n), np.full(n, h), lambda y, lo, hi: y @ A.T + 0.3 * np.sin(y))


@pytest.mark.parametrize(
    "solver,update_map",
    [
        (trisolve.Jacobi(), trisolve.OneStep()),
        (trisolve.Jacobi(), trisolve.Picard()),
        (trisolve.TriangularAnderson(history_size=3), trisolve.Picard()),
    ],
)
def test_rk4_parallel_matches_sequential_and_scipy(solver, update_map):
    T, n = 4.0, 400
    h = T / n
    y0 = np.array([1.0, 0.5])
    system = rk4_system(h, n)
    seq = trisolve.forward_substitution(system, y0)
    sol = trisolve.solve(system, solver, y0, update_map=update_map, atol=1e-13)
    assert sol.converged and sol.num_rounds <= n
    np.testing.assert_allclose(sol.trajectory, seq, rtol=0, atol=1e-10)
    ref = solve_ivp(rhs, (0, T), y0, t_eval=np.linspace(0, T, n + 1), rtol=1e-12, atol=1e-12, method="DOP853")
    err = np.abs(sol.trajectory - ref.y.T).max()
    assert err < 1e-7  # RK4 global error ~ C h^4 = C * 1e-8
    # and the error is the discretisation error: halving h divides it by about 16
    system2 = rk4_system(h / 2, 2 * n)
    fine = trisolve.solve(system2, solver, y0, update_map=update_map, atol=1e-13).trajectory[::2]
    ratio = err / np.abs(fine - ref.y.T).max()
    assert 10 < ratio < 22


def test_euler_semilinear_unrolled_matches_sequential_and_scipy():
    T, n = 2.0, 2000
    h = T / n
    y0 = np.array([0.3, -1.0])
    system = euler_system(h, n)
    seq = trisolve.forward_substitution(system, y0)
    jac = trisolve.solve(system, trisolve.Jacobi(), y0, update_map=trisolve.OneStep(), atol=1e-13)
    taa = trisolve.solve(system, trisolve.TriangularAnderson(), y0, update_map=trisolve.Unrolled(), atol=1e-13)
    for sol in (jac, taa):
        assert sol.converged
        np.testing.assert_allclose(sol.trajectory, seq, rtol=0, atol=1e-10)
    assert taa.num_rounds < jac.num_rounds / 5
    ref = solve_ivp(rhs, (0, T), y0, t_eval=np.linspace(0, T, n + 1), rtol=1e-12, atol=1e-12)
    err = np.abs(taa.trajectory - ref.y.T).max()
    assert 1e-5 < err < 5 * h  # first-order method: error ~ h
