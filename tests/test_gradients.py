"""Gradients through a solve by the adjoint: against autograd through the sequential loop and finite differences."""

from __future__ import annotations

import array_api_strict
import numpy as np
import pytest
import torch
from zoo import rk4_system

import trisolve

ADJOINTS = [trisolve.Adjoint(jacobian=j) for j in ("dense", "diagonal", "none")]
FAST_ADJOINTS = [ADJOINTS[0], ADJOINTS[2]]  # the diagonal one is covered on the banded system


def _rnn(T=120, H=5, seed=0, scale=0.9):
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(H, H, generator=g, dtype=torch.float64) * scale / H**0.5).requires_grad_(True)
    drive = torch.randn(T + 1, H, generator=g, dtype=torch.float64).requires_grad_(True)
    x0 = torch.randn(H, generator=g, dtype=torch.float64).requires_grad_(True)
    weights = torch.randn(T + 1, H, generator=g, dtype=torch.float64)
    return W, drive, x0, weights


def _loss(traj, weights):
    return (traj * weights).sum() + (traj[-1] ** 2).sum()


def _loop(W, drive, x0, T):
    xs = [x0]
    for t in range(1, T + 1):
        xs.append(torch.tanh(W @ xs[-1] + drive[t]))
    return torch.stack(xs)


@pytest.mark.parametrize("adjoint", FAST_ADJOINTS, ids=lambda a: a.jacobian)
@pytest.mark.parametrize("update_map", [trisolve.Newton(), trisolve.OneStep()], ids=["newton", "onestep"])
def test_rnn_gradients_equal_autograd_through_the_loop(adjoint, update_map):
    T = 80
    W, drive, x0, weights = _rnn(T)
    ref = torch.autograd.grad(_loss(_loop(W, drive, x0, T), weights), (W, drive, x0))
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: torch.tanh(x[lo - 1 : hi - 1] @ W.T + drive[lo:hi]), T)
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=update_map, atol=1e-13, gradients=adjoint)
    assert sol.trajectory.requires_grad
    got = torch.autograd.grad(_loss(sol.trajectory, weights), (W, drive, x0))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_banded_system_gradients_equal_autograd():
    """F_i reads x_{i-1} and x_{i-2}: the scan's Jacobian is then only a preconditioner, the VJP iteration makes it exact."""
    T, H = 40, 3
    g = torch.Generator().manual_seed(1)
    W1 = (torch.randn(H, H, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    W2 = (torch.randn(H, H, generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    b = torch.randn(T + 1, H, generator=g, dtype=torch.float64)
    x0 = torch.randn(H, generator=g, dtype=torch.float64).requires_grad_(True)
    weights = torch.randn(T + 1, H, generator=g, dtype=torch.float64)

    def fn(x, lo, hi):
        prev2 = x[max(lo - 2, 0) : hi - 2]  # x_{i-2}; row 1 reads a zero x_{-1}
        if lo == 1:
            prev2 = torch.cat([torch.zeros(1, H, dtype=x.dtype), prev2])
        return torch.tanh(x[lo - 1 : hi - 1] @ W1.T + prev2 @ W2.T + b[lo:hi])

    xs = [x0, torch.tanh(x0 @ W1.T + b[1])]
    for t in range(2, T + 1):
        xs.append(torch.tanh(xs[-1] @ W1.T + xs[-2] @ W2.T + b[t]))
    ref = torch.autograd.grad(_loss(torch.stack(xs), weights), (W1, W2, x0))
    system = trisolve.BlackBoxSystem(fn, T)
    for adjoint in ADJOINTS:
        sol = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-13, gradients=adjoint)
        got = torch.autograd.grad(_loss(sol.trajectory, weights), (W1, W2, x0))
        for a, r in zip(got, ref):
            torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-8)


def test_semilinear_gradients_reach_g_parameters_and_the_forcing():
    n, d, h = 80, 2, 0.05
    A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64, requires_grad=True)
    c = (0.01 * torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))).requires_grad_(True)
    x0 = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    system = trisolve.SemilinearSystem(np.ones(n), np.full(n, h), lambda y, lo, hi: y @ A.T + 0.3 * torch.sin(y), c=c)
    xs = [x0]
    for i in range(n):
        xs.append(xs[-1] + h * (A @ xs[-1] + 0.3 * torch.sin(xs[-1])) + c[i])
    loss = lambda traj: (traj[:, 0] ** 2).sum() + traj[-1, 1]  # noqa: E731
    ref = torch.autograd.grad(loss(torch.stack(xs)), (A, c, x0))
    for update_map in (trisolve.Newton(), trisolve.Unrolled()):
        sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=update_map, atol=1e-13, gradients=True)
        got = torch.autograd.grad(loss(sol.trajectory), (A, c, x0))
        for a, r in zip(got, ref):
            torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-8)


def test_auto_adjoint_keeps_vjp_steps_while_they_pay_and_switches_to_dense_when_not():
    """jacobian="auto" between d = 8 and 256: VJP steps while their predicted total stays below d, else dense.

    A contractive RNN with d = 48 needs about 20 VJP steps (< 48): auto takes them and never
    builds a Jacobian. The same RNN with d = 12 would need more than 12: auto switches after a
    step or two and finishes with one dense step. An RK4 integrator (J near I, d = 10), where VJP
    steps would take about n, switches after the first step. Every answer equals the dense
    adjoint's (and that one autograd through the loop, the tests above) to 1e-10."""
    from trisolve.gradients import _Adjoint

    cases = []
    for H, scale in ((48, 0.3), (12, 0.9)):
        T = 150
        W, drive, x0, _ = _rnn(T, H=H, scale=scale)
        system = trisolve.BlackBoxSystem(lambda x, lo, hi, W=W.detach(), drive=drive.detach(): torch.tanh(x[lo - 1 : hi - 1] @ W.T + drive[lo:hi]), T)
        traj = trisolve.solve(system, trisolve.Jacobi(), x0.detach(), atol=1e-13).trajectory
        cases.append((H, system, traj))
    n, H = 200, 10
    A = torch.randn(H, H, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) / H**0.5 - torch.eye(H, dtype=torch.float64)
    ode = rk4_system(lambda y: torch.tanh(y @ A.T), 0.05, n)
    cases.append(("ode", ode, trisolve.solve(ode, None, torch.ones(H, dtype=torch.float64), atol=1e-13).trajectory))
    for name, system, traj in cases:
        g = torch.randn(traj.shape[0] - 1, *traj.shape[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        auto = _Adjoint(system, traj, trisolve.Adjoint())
        lam = auto.solve(g)
        dense = _Adjoint(system, traj, trisolve.Adjoint(jacobian="dense"))
        torch.testing.assert_close(lam, dense.solve(g), rtol=1e-10, atol=1e-10)
        if name == 48:
            assert auto.switched_at is None and auto.kind == "none" and 3 <= auto.num_steps < 48, (auto.num_steps, auto.switched_at)
        elif name == 12:
            assert auto.switched_at is not None and auto.switched_at <= 3 and auto.kind == "dense", auto.switched_at
            assert auto.num_steps <= auto.switched_at + 2
        else:
            assert auto.switched_at == 1 and auto.num_steps <= 3, (auto.switched_at, auto.num_steps)
    # at d <= 8 auto is dense from the start; the public path agrees with autograd through the loop
    T = 60
    W, drive, x0, weights = _rnn(T, H=4)
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: torch.tanh(x[lo - 1 : hi - 1] @ W.T + drive[lo:hi]), T)
    assert _Adjoint(system, torch.zeros(T + 1, 4, dtype=torch.float64), trisolve.Adjoint()).kind == "dense"
    for H in (4, 12, 48):
        W, drive, x0, weights = _rnn(T, H=H, scale=0.3 if H == 48 else 0.9)
        system = trisolve.BlackBoxSystem(lambda x, lo, hi, W=W, drive=drive: torch.tanh(x[lo - 1 : hi - 1] @ W.T + drive[lo:hi]), T)
        sol = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-13, gradients=True)
        got = torch.autograd.grad(_loss(sol.trajectory, weights), (W, drive, x0))
        ref = torch.autograd.grad(_loss(_loop(W, drive, x0, T), weights), (W, drive, x0))
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_gradients_match_finite_differences():
    """Central differences of the solved loss along a random direction of (W, x0) against the adjoint gradient."""
    T, H = 40, 3
    g = torch.Generator().manual_seed(3)
    drive = torch.randn(T + 1, H, generator=g, dtype=torch.float64)
    weights = torch.randn(T + 1, H, generator=g, dtype=torch.float64)

    def loss(W, x0, gradients):
        system = trisolve.BlackBoxSystem(lambda x, lo, hi: torch.tanh(x[lo - 1 : hi - 1] @ W.T + drive[lo:hi]), T)
        sol = trisolve.solve(system, None, x0, atol=1e-14, gradients=gradients)
        return (sol.trajectory * weights).sum() + (sol.trajectory[-1] ** 2).sum()

    W = (torch.randn(H, H, generator=g, dtype=torch.float64) * 0.8).requires_grad_(True)
    x0 = torch.randn(H, generator=g, dtype=torch.float64).requires_grad_(True)
    gW, gx = torch.autograd.grad(loss(W, x0, True), (W, x0))
    vW, vx = torch.randn(H, H, generator=g, dtype=torch.float64), torch.randn(H, generator=g, dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        fd = (loss(W + eps * vW, x0 + eps * vx, False) - loss(W - eps * vW, x0 - eps * vx, False)) / (2 * eps)
    assert abs(float(fd) - float((gW * vW).sum() + (gx * vx).sum())) <= 1e-6 * max(1.0, abs(float(fd)))


def test_forward_solve_builds_no_graph_through_rounds():
    """Only one evaluation at the solution is recorded: the graph does not grow with the rounds."""
    T = 200
    W, drive, x0, weights = _rnn(T)
    calls = []

    def fn(x, lo, hi):
        out = torch.tanh(x[lo - 1 : hi - 1] @ W.T + drive[lo:hi])
        calls.append(out.requires_grad)
        return out

    sol = trisolve.solve(trisolve.BlackBoxSystem(fn, T), trisolve.Jacobi(), x0, atol=1e-12, gradients=True)
    assert sol.num_rounds > 5
    assert sum(calls) == 1  # the recorded evaluation; the rounds ran without autograd
    assert sol.trajectory.requires_grad


def test_gradients_refused_where_they_cannot_exist():
    system_np = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1]), 5)
    with pytest.raises(TypeError, match="gradients need PyTorch"):
        trisolve.solve(system_np, trisolve.Jacobi(), np.zeros(2), gradients=True)
    xs = array_api_strict.asarray(np.zeros(2))
    system_strict = trisolve.BlackBoxSystem(lambda x, lo, hi: array_api_strict.tanh(x[lo - 1 : hi - 1]), 5)
    with pytest.raises(TypeError, match="gradients need PyTorch"):
        trisolve.solve(system_strict, trisolve.Jacobi(), xs, gradients=True)
    W = torch.eye(2, dtype=torch.float64, requires_grad=True)
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: torch.tanh(x[lo - 1 : hi - 1] @ W), 50)
    with pytest.raises(trisolve.SolveError, match="converged"):
        trisolve.solve(system, trisolve.Jacobi(), torch.ones(2, dtype=torch.float64), max_iter=2, gradients=True)
    with pytest.raises(ValueError):
        trisolve.Adjoint(jacobian="full")
