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
    counts = f"num_rounds={sol.num_rounds}, num_evals={sol.num_evals}, num_frozen={sol.num_frozen}"
    assert text == f"Solution(status=CONVERGED, {counts}, trajectory shape=(501, 3))"


# ----------------------------------------------------------------------------- the system protocol


class _ProtocolRNN(trisolve.TriangularSystem):
    """Exactly the documented minimum: ``n`` and ``evaluate`` (a tanh RNN ``x_i = tanh(W x_{i-1} + u_i)``)."""

    def __init__(self, W, u):
        self.W, self.u, self.n = W, u, u.shape[0] - 1

    def evaluate(self, x, lo, hi, cache, *, xp):
        return trisolve.Evaluation(f=xp.tanh(x[lo - 1 : hi - 1] @ self.W.T + self.u[lo:hi]), num_evals=hi - lo)


def _torch_rnn(n=30, d=3, seed=1, requires_grad=False):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(seed)
    W = (0.7 * torch.randn(d, d, generator=g, dtype=torch.float64)).requires_grad_(requires_grad)
    u = torch.randn(n + 1, d, generator=g, dtype=torch.float64)
    return W, u, torch.randn(d, generator=g, dtype=torch.float64)


def _loop(W, u, x0):
    import torch

    rows = [x0]
    for i in range(1, u.shape[0]):
        rows.append(torch.tanh(rows[-1] @ W.T + u[i]))
    return torch.stack(rows)


def test_protocol_only_system_solves_with_the_default_method_and_newton():
    W, u, x0 = _torch_rnn()
    system = _ProtocolRNN(W, u)
    ref = _loop(W, u, x0)
    default = trisolve.solve(system, None, x0, atol=1e-12)
    newton = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(), atol=1e-12)
    for sol in (default, newton):
        assert sol.status is trisolve.Status.CONVERGED, sol.message
        assert float((sol.trajectory - ref).abs().max()) < 1e-10
    assert default.num_rounds <= 8  # Newton's rounds, not Jacobi's ~n
    # NumPy: the default is finite-difference Newton, through the same protocol
    Wn, un, x0n = W.detach().numpy(), u.numpy(), x0.numpy()
    sol = trisolve.solve(_ProtocolRNN(Wn, un), None, x0n, atol=1e-12)
    assert sol.status.ok and np.abs(sol.trajectory - ref.numpy()).max() < 1e-10
    assert sol.stats["num_jacobian_evals"] > 0


def test_protocol_only_system_gradients_match_autograd_through_the_loop():
    import torch

    W, u, x0 = _torch_rnn(requires_grad=True)
    x0 = x0.clone().requires_grad_(True)
    sol = trisolve.solve(_ProtocolRNN(W, u), None, x0, atol=1e-13, gradients=True)
    loss = (sol.trajectory**2).sum() + sol.trajectory[-1].sum()
    gW, gx = torch.autograd.grad(loss, (W, x0))
    ref = _loop(W, u, x0)
    rW, rx = torch.autograd.grad((ref**2).sum() + ref[-1].sum(), (W, x0))
    assert float((gW - rW).abs().max()) < 1e-8 and float((gx - rx).abs().max()) < 1e-8


def test_protocol_only_system_through_distribute():
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    W, u, x0 = _torch_rnn()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        system = trisolve.distribute(_ProtocolRNN(W, u))
        sol = trisolve.solve(system, None, x0, atol=1e-12)
        assert sol.status is trisolve.Status.CONVERGED
        assert float((sol.trajectory - _loop(W, u, x0)).abs().max()) < 1e-10
        assert system.fn.rows_evaluated == sum(hi - lo for lo, hi in sol.windows)  # every round went through the split
    finally:
        dist.destroy_process_group()
    assert torch.is_tensor(sol.trajectory)


def test_distribute_keeps_the_jacobian():
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    rng = np.random.default_rng(0)
    W, u = 0.5 * rng.standard_normal((3, 3)), rng.standard_normal((41, 3))

    def F(x, lo, hi):
        return np.tanh(x[lo - 1 : hi - 1] @ W.T + u[lo:hi])

    calls = []

    def J(x, lo, hi):
        calls.append((lo, hi))
        return (1 - F(x, lo, hi) ** 2)[:, :, None] * W

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        system = trisolve.distribute(trisolve.BlackBoxSystem(F, 40, jacobian=J))
        assert system.has_jacobian
        sol = trisolve.solve(system, None, np.zeros(3), atol=1e-12)
    finally:
        dist.destroy_process_group()
    assert sol.status.ok and calls and sol.stats["num_jacobian_evals"] == 0  # the user's Jacobian, not finite differences
    assert torch is not None


def test_band_refuses_newton_and_picks_the_secant_default():
    class Banded(_ProtocolRNN):
        band = 2

    W, u, x0 = _torch_rnn()
    with pytest.raises(ValueError, match="band p = 2"):
        trisolve.solve(Banded(W, u), trisolve.Jacobi(), x0, update_map=trisolve.Newton())
    sol = trisolve.solve(Banded(W, u), None, x0, atol=1e-12)
    assert sol.status.ok


def test_a_class_outside_the_protocol_is_refused_clearly():
    class NotASystem:
        n = 3

    with pytest.raises(TypeError, match="TriangularSystem"):
        trisolve.solve(NotASystem(), trisolve.Jacobi(), np.zeros(2))

    class Incomplete(trisolve.TriangularSystem):  # forgets evaluate: fails at construction, not in round 1
        n = 3

    with pytest.raises(TypeError, match="evaluate"):
        Incomplete()


# ----------------------------------------------------------------------------- gradients by default


def _regularised_loss(traj, W):
    return (traj[1:] ** 2).sum() + 0.5 * traj[-1].sum() + 0.1 * (W**2).sum()  # a second path to W: the regulariser


@pytest.mark.parametrize("kind", ["blackbox", "semilinear"])
def test_gradients_flow_by_default_and_match_autograd_through_the_loop(kind):
    import torch

    W, u, x0 = _torch_rnn(n=25, requires_grad=True)
    if kind == "blackbox":
        system = trisolve.BlackBoxSystem(lambda x, lo, hi: torch.tanh(x[lo - 1 : hi - 1] @ W.T + u[lo:hi]), 25)
        ref = _loop(W, u, x0)
    else:  # explicit Euler of y' = tanh(W y) - y: a = 1 - h, B = h, g = tanh(W y)
        h = 0.3
        system = trisolve.SemilinearSystem(np.full(25, 1 - h), np.full(25, h), lambda y, lo, hi: torch.tanh(y @ W.T))
        rows = [x0]
        for _ in range(25):
            rows.append((1 - h) * rows[-1] + h * torch.tanh(rows[-1] @ W.T))
        ref = torch.stack(rows)
    (r,) = torch.autograd.grad(_regularised_loss(ref, W), W)
    for solver in (None, trisolve.Jacobi()):
        sol = trisolve.solve(system, solver, x0, atol=1e-13)  # no gradients= flag
        assert sol.status is trisolve.Status.CONVERGED and sol.trajectory.requires_grad
        (g,) = torch.autograd.grad(_regularised_loss(sol.trajectory, W), W)
        assert float((g - r).abs().max()) < 1e-8
        assert float((g - 0.2 * W.detach()).abs().max()) > 1e-3  # the solve's part is there, not only the regulariser's


def test_gradients_false_and_no_grad_give_a_plain_trajectory():
    import torch

    W, u, x0 = _torch_rnn(requires_grad=True)
    system = _ProtocolRNN(W, u)
    off = trisolve.solve(system, None, x0, atol=1e-12, gradients=False)
    assert off.status.ok and not off.trajectory.requires_grad
    with torch.no_grad():
        quiet = trisolve.solve(system, None, x0, atol=1e-12)
    assert quiet.status.ok and not quiet.trajectory.requires_grad and quiet.trajectory.grad_fn is None
    assert torch.equal(off.trajectory, quiet.trajectory)


def test_x0_requiring_grad_alone_turns_gradients_on():
    import torch

    W, u, x0 = _torch_rnn()  # W does not require grad
    x0 = x0.clone().requires_grad_(True)
    sol = trisolve.solve(_ProtocolRNN(W, u), trisolve.Jacobi(), x0, atol=1e-13)
    (g,) = torch.autograd.grad(sol.trajectory[-1].sum(), x0)
    (r,) = torch.autograd.grad(_loop(W, u, x0)[-1].sum(), x0)
    assert float((g - r).abs().max()) < 1e-8


def test_automatic_gradients_need_the_whole_solve():
    """With F requiring grad, final_row_atol does not end the solve early; an unfinished solve warns, gradients=True raises."""
    W, u, x0 = _torch_rnn(n=60, requires_grad=True)
    system = _ProtocolRNN(W, u)
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12, final_row_atol=1e-2)
    assert sol.status is trisolve.Status.CONVERGED and sol.trajectory.requires_grad
    with pytest.warns(UserWarning, match="not differentiable.*MAX_ITER"):
        short = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12, max_iter=2)
    assert short.status is trisolve.Status.MAX_ITER and not short.trajectory.requires_grad
    with pytest.raises(trisolve.SolveError) as err:
        trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12, max_iter=2, gradients=True)
    assert err.value.solution.status is trisolve.Status.MAX_ITER


def test_numpy_has_no_gradients_and_says_so_only_when_asked():
    system, x0 = _rnn()
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-10)  # the default: no error, no warning
    assert sol.status.ok
    with pytest.raises(TypeError, match="gradients need PyTorch"):
        trisolve.solve(system, trisolve.Jacobi(), x0, gradients=True)
    with pytest.raises(TypeError, match="gradients must be None"):
        trisolve.solve(system, trisolve.Jacobi(), x0, gradients="yes")


# ----------------------------------------------------------------------------- one spelling per option


def test_solve_options_old_spellings_warn_and_mean_the_new_ones():
    td = pytest.importorskip("trisolve_diffusion")
    with pytest.warns(DeprecationWarning, match=r"window_size=\.\.\.\) is deprecated; pass window="):
        opts = td.SolveOptions(window_size=8)
    assert opts.window == 8 and opts.window_policy() == trisolve.SlidingWindow(8)
    with pytest.warns(DeprecationWarning, match=r"final_atol=\.\.\.\) is deprecated; pass final_row_atol="):
        opts = td.SolveOptions(final_atol=1e-2)
    assert opts.final_row_atol == 1e-2
    with pytest.warns(DeprecationWarning, match="update_map=trisolve.Picard"):
        opts = td.SolveOptions(order=3)
    assert opts.solver_and_map(10)[1] == trisolve.Picard(order=3)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="either window= or"):
        td.SolveOptions(window=4, window_size=8)
    assert td.SolveOptions(window="auto").replace(atol=1e-3).window == "auto"  # replace keeps the new fields
    assert {"window_size", "final_atol"} <= td.sampler.OPTION_NAMES  # sample(pipe, window_size=...) still routes (and warns)


def test_importing_the_adapter_loads_no_training_code():
    import subprocess
    import sys

    code = (
        "import sys, trisolve_diffusion\n"
        "loaded = [m for m in ('trisolve_diffusion.models.digits', 'trisolve_diffusion.models.digits_flow', "
        "'trisolve_diffusion.models.tiny_sd', 'trisolve_diffusion.models.closed_form', 'trisolve_diffusion.demo') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "from trisolve_diffusion.models.digits_flow import DigitsFlowPipeline\n"
        "from trisolve_diffusion.models.flow_pipeline import DigitsFlowPipeline as P\n"
        "assert P is DigitsFlowPipeline\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_auto_window_is_a_policy_object_with_its_own_cache_and_choice():
    """Two solves with one AutoWindow measure once (its cache), keep their choice on the object, and leave 'auto' alone."""
    torch = pytest.importorskip("torch")
    td = pytest.importorskip("trisolve_diffusion")
    from diffusers import DDIMScheduler

    from trisolve_diffusion import cost_model

    net = torch.nn.Conv2d(1, 1, 3, padding=1).double()
    calls = []

    def denoiser(x, t):
        calls.append(x.shape[0])
        return net(x)

    sched = DDIMScheduler(num_train_timesteps=100)
    sched.set_timesteps(6)
    policy = td.AutoWindow(net)
    default_before = cost_model.default_auto_window().last_choice
    opts = td.SolveOptions(window=policy, progress=False, trajectory_dtype=torch.float64)
    latents = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        first, sol = td.sample_latents(denoiser, sched, latents, options=opts)
    assert policy.last_choice is not None and policy.cache and sol.status.ok
    assert max(hi - lo for lo, hi in sol.windows) == min(policy.last_choice.window, 6)
    measured = len(calls)
    with torch.no_grad():
        again, _ = td.sample_latents(denoiser, sched, latents, options=opts)
    assert len(calls) - measured <= sol.num_rounds + 6  # the second solve runs its rounds, measures nothing again
    assert torch.equal(first, again)
    assert cost_model.default_auto_window().last_choice is default_before  # "auto"'s policy is another object
    with pytest.raises(TypeError, match="network must be a torch.nn.Module"):
        td.AutoWindow(lambda x: x)
