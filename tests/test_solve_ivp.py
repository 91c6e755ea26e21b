"""``trisolve.solve_ivp`` against a NumPy loop of the same method and against SciPy's own ``solve_ivp``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.integrate
import torch

import trisolve


def forced_pendulum(t, y):
    return np.array([y[1], -np.sin(y[0]) - 0.2 * y[1] + 0.5 * np.cos(1.3 * t)])


def lorenz(t, y):
    return np.array([10.0 * (y[1] - y[0]), y[0] * (28.0 - y[2]) - y[1], y[0] * y[1] - 8.0 / 3.0 * y[2]])


# the textbook tableaux, written out independently of trisolve.ode.methods
def _euler(f, t, y, h):
    return y + h * f(t, y)


def _midpoint(f, t, y, h):
    return y + h * f(t + h / 2, y + h / 2 * f(t, y))


def _heun(f, t, y, h):
    k1 = f(t, y)
    return y + h / 2 * (k1 + f(t + h, y + h * k1))


def _rk4(f, t, y, h):
    k1 = f(t, y)
    k2 = f(t + h / 2, y + h / 2 * k1)
    k3 = f(t + h / 2, y + h / 2 * k2)
    k4 = f(t + h, y + h * k3)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def _rk38(f, t, y, h):
    k1 = f(t, y)
    k2 = f(t + h / 3, y + h / 3 * k1)
    k3 = f(t + 2 * h / 3, y + h * (k2 - k1 / 3))
    k4 = f(t + h, y + h * (k1 - k2 + k3))
    return y + h / 8 * (k1 + 3 * k2 + 3 * k3 + k4)


LOOPS = {"Euler": _euler, "Midpoint": _midpoint, "Heun": _heun, "RK4": _rk4, "RK38": _rk38}


def loop(method, f, grid, y0):
    ys = [np.asarray(y0, dtype=np.float64)]
    for a, b in zip(grid[:-1], grid[1:]):
        ys.append(LOOPS[method](f, a, ys[-1], b - a))
    return np.stack(ys, axis=1)  # (n, len(grid))


@pytest.mark.parametrize("method", list(LOOPS))
def test_matches_a_numpy_loop_of_the_same_method(method):
    res = trisolve.solve_ivp(forced_pendulum, (0.0, 6.0), [2.0, 0.0], method=method, step=0.05)
    assert res.success and res.status == 0 and res.method == method
    assert res.t.shape == (121,) and res.y.shape == (2, 121) and res.t[-1] == 6.0
    assert np.allclose(res.y, loop(method, forced_pendulum, res.t, [2.0, 0.0]), rtol=0, atol=1e-10)
    assert res.solution.num_rounds < 120 and res.nfev > 0


def test_rk4_with_small_steps_matches_scipy_dop853():
    t_eval = np.linspace(0.0, 4.0, 9)
    ours = trisolve.solve_ivp(forced_pendulum, (0.0, 4.0), [1.0, 0.5], step=0.005, t_eval=t_eval)
    ref = scipy.integrate.solve_ivp(forced_pendulum, (0.0, 4.0), [1.0, 0.5], method="DOP853", rtol=1e-10, atol=1e-12, t_eval=t_eval)
    assert np.array_equal(ours.t, t_eval)
    assert np.abs(ours.y - ref.y).max() < 1e-9  # RK4's error at h = 0.005 is ~1e-10 here
    short = trisolve.solve_ivp(lorenz, (0.0, 0.5), [1.0, 1.0, 1.0], step=0.001)
    ref = scipy.integrate.solve_ivp(lorenz, (0.0, 0.5), [1.0, 1.0, 1.0], method="RK45", rtol=1e-10, atol=1e-12, t_eval=short.t)
    assert np.abs(short.y - ref.y).max() < 1e-6


def test_t_eval_without_step_is_the_grid_and_with_step_splits_it():
    t_eval = np.array([0.3, 0.9, 1.0, 2.2])
    res = trisolve.solve_ivp(forced_pendulum, (0.0, 3.0), [1.0, 0.0], t_eval=t_eval)
    assert np.array_equal(res.t, t_eval) and np.array_equal(res.grid, [0.0, 0.3, 0.9, 1.0, 2.2])
    assert np.allclose(res.y, loop("RK4", forced_pendulum, res.grid, [1.0, 0.0])[:, 1:], atol=1e-10)
    both = trisolve.solve_ivp(forced_pendulum, (0.0, 3.0), [1.0, 0.0], t_eval=t_eval, step=0.25)
    assert np.array_equal(both.t, t_eval)
    assert set(t_eval) <= set(both.grid) and both.grid[-1] == 3.0 and np.diff(both.grid).max() <= 0.25 + 1e-12
    assert np.allclose(both.y, loop("RK4", forced_pendulum, both.grid, [1.0, 0.0])[:, np.searchsorted(both.grid, t_eval)], atol=1e-10)


def test_backwards_in_time_and_a_last_short_step():
    res = trisolve.solve_ivp(forced_pendulum, (2.0, -1.0), [0.5, 0.1], step=0.4)
    assert np.allclose(res.t, [2.0, 1.6, 1.2, 0.8, 0.4, 0.0, -0.4, -0.8, -1.0])
    assert np.allclose(res.y, loop("RK4", forced_pendulum, res.t, [0.5, 0.1]), atol=1e-10)


def test_vectorized_and_args_give_the_same_answer():
    def vec(t, y, c):  # y (2, k), t (k,)
        return np.stack([y[1], -np.sin(y[0]) - c * y[1] + 0.5 * np.cos(1.3 * t)])

    a = trisolve.solve_ivp(vec, (0.0, 3.0), [2.0, 0.0], step=0.05, vectorized=True, args=(0.2,))
    b = trisolve.solve_ivp(forced_pendulum, (0.0, 3.0), [2.0, 0.0], step=0.05)
    assert np.allclose(a.y, b.y, atol=1e-10)


def test_torch_states_match_numpy_and_are_differentiable():
    def f(t, y):
        return torch.stack([y[1], -torch.sin(y[0]) - 0.2 * y[1] + 0.5 * torch.cos(1.3 * t)])

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64, requires_grad=True)
    res = trisolve.solve_ivp(f, (0.0, 3.0), y0, step=0.05)
    ref = trisolve.solve_ivp(forced_pendulum, (0.0, 3.0), [2.0, 0.0], step=0.05)
    assert res.y.shape == (2, 61) and np.allclose(res.y.detach().numpy(), ref.y, atol=1e-10)
    assert isinstance(res.update_map, trisolve.Newton) and res.update_map.derivatives == "auto" and res.njev > 0
    (g,) = torch.autograd.grad(res.y[:, -1].sum(), y0)
    y = y0  # autograd through a sequential torch loop of the same steps
    for a, b in zip(res.t[:-1], res.t[1:]):
        h = float(b - a)
        k1 = f(torch.tensor(a), y)
        k2 = f(torch.tensor(a + h / 2), y + h / 2 * k1)
        k3 = f(torch.tensor(a + h / 2), y + h / 2 * k2)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + f(torch.tensor(a + h), y + h * k3))
    (gref,) = torch.autograd.grad(y.sum(), y0)
    assert torch.allclose(g, gref, rtol=1e-8, atol=1e-12)


def test_numpy_default_is_finite_difference_newton_and_recorded():
    res = trisolve.solve_ivp(forced_pendulum, (0.0, 2.0), [2.0, 0.0], step=0.1)
    assert res.update_map == trisolve.Newton(jacobian="dense", derivatives="finite-differences")
    assert "RK4" in repr(res) and "rounds=" in repr(res) and "y=" not in repr(res)


def test_a_solve_that_runs_out_of_rounds_says_so():
    res = trisolve.solve_ivp(forced_pendulum, (0.0, 2.0), [2.0, 0.0], step=0.1, solver=trisolve.Jacobi(), update_map=trisolve.OneStep(), max_iter=4)
    assert not res.success and res.status == -1 and "max_iter" in res.message
    assert res.solution.num_frozen == 5  # the one-step map makes one row final per round


def test_overflowing_guesses_on_lorenz_do_not_warn():
    """The first rounds' guesses overflow in ``fun`` (RuntimeWarnings); the solution never does."""
    nonfinite = {"calls": 0}

    def counted(t, y):
        out = lorenz(t, y)
        nonfinite["calls"] += not np.all(np.isfinite(out))
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning shown would fail the solve
        res = trisolve.solve_ivp(counted, (0.0, 2.0), [1.0, 1.0, 1.0], step=0.01)
    assert res.success and nonfinite["calls"] > 0
    assert np.allclose(res.y, loop("RK4", lorenz, res.t, [1.0, 1.0, 1.0]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="RK45"), "adaptive"),
        (dict(method="RK2"), "ambiguous"),
        (dict(method="rk4"), "unknown method"),
        (dict(step=None), "step= .* or t_eval="),
        (dict(step=-0.1), "step"),
        (dict(t_eval=[0.5, 3.0]), "within t_span"),
        (dict(t_eval=[0.5, 0.2]), "sorted"),
    ],
)
def test_bad_arguments_say_what_to_change(kwargs, match):
    args = dict(step=0.1) | kwargs
    with pytest.raises(ValueError, match=match):
        trisolve.solve_ivp(forced_pendulum, (0.0, 2.0), [1.0, 0.0], **args)


def test_bad_shapes_and_spans_say_what_to_change():
    with pytest.raises(ValueError, match="1-dimensional"):
        trisolve.solve_ivp(forced_pendulum, (0.0, 1.0), [[1.0, 0.0]], step=0.1)
    with pytest.raises(ValueError, match="different"):
        trisolve.solve_ivp(forced_pendulum, (1.0, 1.0), [1.0, 0.0], step=0.1)
    with pytest.raises(TypeError, match="complex"):
        trisolve.solve_ivp(forced_pendulum, (0.0, 1.0), [1j, 0.0], step=0.1)
    with pytest.raises(trisolve.SolveError, match="shaped like y") as exc:
        trisolve.solve_ivp(lambda t, y: np.zeros(3), (0.0, 1.0), [1.0, 0.0], step=0.1)
    assert isinstance(exc.value.__cause__, ValueError) and exc.value.result.status == -1
