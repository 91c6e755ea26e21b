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


def _toy_sampler():
    torch = pytest.importorskip("torch")
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=100)
    sched.set_timesteps(6)
    latents = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (lambda x, t: 0.1 * x), sched, latents


def test_old_spellings_of_the_solve_keywords_warn_and_mean_the_new_ones():
    """window_size=, final_atol=, order= and options=SolveOptions(...) still work for one release, each with a DeprecationWarning."""
    torch = pytest.importorskip("torch")
    td = pytest.importorskip("trisolve_diffusion")
    den, sched, latents = _toy_sampler()
    tight = dict(atol=1e-9, rtol=0.0, progress=False, trajectory_dtype=torch.float64)
    ref, ref_sol = td.sample_latents(den, sched, latents, window=3, **tight)
    with pytest.warns(DeprecationWarning, match=r"window_size=\.\.\.\) is deprecated; pass window="):
        out, sol = td.sample_latents(den, sched, latents, window_size=3, **tight)
    assert sol.windows == ref_sol.windows and torch.equal(out, ref)
    with pytest.warns(DeprecationWarning, match=r"final_atol=\.\.\.\) is deprecated; pass final_row_atol="):
        _, sol = td.sample_latents(den, sched, latents, final_atol=1e-2, window=6, **tight)
    assert sol.tolerance.final_row_atol == 1e-2
    with pytest.warns(DeprecationWarning, match="update_map=trisolve.Picard"):
        a, _ = td.sample_latents(den, sched, latents, order=3, window=6, **tight)
    b, _ = td.sample_latents(den, sched, latents, update_map=trisolve.Picard(order=3), window=6, **tight)
    assert torch.equal(a, b)
    # a loop that injects noise: order=k keeps the default map's family, WeightedPicard with the mapping's gains
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler(num_train_timesteps=100)
    ddpm.set_timesteps(6)
    gains = td.map_scheduler(ddpm).picard_gains
    assert gains is not None
    with pytest.warns(DeprecationWarning, match="update_map=trisolve.Picard"):
        a, sol_a = td.sample_latents(den, ddpm, latents, order=3, window=6, generator=torch.Generator().manual_seed(1), **tight)
    b, sol_b = td.sample_latents(
        den, ddpm, latents, update_map=trisolve.WeightedPicard(gains, order=3), window=6, generator=torch.Generator().manual_seed(1), **tight
    )
    assert torch.equal(a, b) and sol_a.num_rounds == sol_b.num_rounds
    with pytest.warns(DeprecationWarning, match="update_map=trisolve.Picard"):
        _, update_map = td.SolveOptions(order=3).solver_and_map(6, td.map_scheduler(ddpm))
    assert update_map == trisolve.WeightedPicard(gains, order=3)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="either window= or"):
        td.sample_latents(den, sched, latents, window=4, window_size=8)
    # the deprecated options=SolveOptions(...): warns, says what to write, and the keywords given beside it override it
    with pytest.warns(DeprecationWarning, match=r"options=SolveOptions\(\.\.\.\)\) is deprecated; pass each option as a keyword"):
        out, sol = td.sample_latents(den, sched, latents, options=td.SolveOptions(window=3, **tight), atol=1e-8)
    assert sol.tolerance.atol == 1e-8 and sol.windows == ref_sol.windows  # window=3 from options, atol from the keyword
    assert {"window_size", "final_atol", "order"} <= td.sampler.OPTION_NAMES  # sample(pipe, window_size=...) still routes (and warns)


def test_no_solve_keyword_collides_with_a_pipeline_argument():
    """sample(pipe, **kwargs) routes the solve keywords by name: none may be an argument of a supported pipeline's __call__."""
    import inspect

    td = pytest.importorskip("trisolve_diffusion")
    own = set(inspect.signature(td.sample).parameters) - {"pipe", "args", "kwargs"}
    assert own == {"max_batch_size", "return_solution", "options"}
    for cls in td.SUPPORTED_PIPELINES:
        params = set(inspect.signature(cls.__call__).parameters)
        assert not params & td.sampler.OPTION_NAMES, (cls.__name__, params & td.sampler.OPTION_NAMES)
        assert not params & own, (cls.__name__, params & own)


def test_one_default_solver_and_one_site_for_the_tolerance_defaults():
    """The samplers' solver=None is default_solver(mapping); the core's is defaults.default_method; tolerances read their fields."""
    import inspect

    td = pytest.importorskip("trisolve_diffusion")
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    from trisolve_diffusion import sampler

    for sched, m in [(DDIMScheduler(num_train_timesteps=100), 4), (FlowMatchEulerDiscreteScheduler(), 1)]:
        sched.set_timesteps(5)
        mapping = td.map_scheduler(sched)
        solver, update_map = td.default_solver(mapping)
        assert solver == trisolve.TriangularAnderson(history_size=m) and update_map == trisolve.Picard()
        assert mapping.default_history_size == m
        assert td.SolveOptions().solver_and_map(5, mapping) == (solver, update_map)  # what sample_latents solves with
    given = trisolve.Jacobi()
    assert td.SolveOptions(solver=given).solver_and_map(5)[0] is given
    with pytest.warns(DeprecationWarning, match="pass the scheduler mapping"):
        assert td.SolveOptions().solver_and_map(5, history_size=2)[0] == trisolve.TriangularAnderson(history_size=2)
    assert td.default_solver() == td.default_solver(None) == (trisolve.TriangularAnderson(history_size=4), trisolve.Picard())
    # tolerance defaults: the core's are Tolerance's fields, the samplers' are DEFAULT_TOLERANCE's
    params = inspect.signature(trisolve.solve).parameters
    assert (params["atol"].default, params["rtol"].default) == (trisolve.Tolerance.atol, trisolve.Tolerance.rtol)
    assert (td.SolveOptions().atol, td.SolveOptions().rtol) == (sampler.DEFAULT_TOLERANCE.atol, sampler.DEFAULT_TOLERANCE.rtol)


def test_tolerance_is_recorded_on_the_solution_and_reusable_as_keywords():
    sys_ = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1]) + 0.1, n=30)
    sol = trisolve.solve(sys_, trisolve.Jacobi(), np.zeros(2))
    assert sol.tolerance == trisolve.Tolerance()  # the defaults, as used
    tol = trisolve.Tolerance(atol=1e-12, rtol=1e-3, final_row_atol=1e-9)
    again = trisolve.solve(sys_, trisolve.Jacobi(), np.zeros(2), **tol.as_kwargs())
    assert again.tolerance == tol
    ref = trisolve.solve(sys_, trisolve.Jacobi(), np.zeros(2), atol=1e-12, rtol=1e-3, final_row_atol=1e-9)
    assert np.array_equal(again.trajectory, ref.trajectory) and again.num_rounds == ref.num_rounds
    with pytest.raises(ValueError, match="final_row_atol"):
        trisolve.Tolerance(final_row_atol=-1.0)
    with pytest.raises(ValueError, match="final_row_atol"):
        trisolve.solve(sys_, trisolve.Jacobi(), np.zeros(2), final_row_atol=-1.0)


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


def _counting_denoiser():
    """A conv network, a denoiser calling it that counts its calls, and a DDIM-6 scheduler."""
    import torch
    from diffusers import DDIMScheduler

    net = torch.nn.Conv2d(1, 1, 3, padding=1).double()
    calls = []

    def denoiser(x, t):
        calls.append(x.shape[0])
        return net(x)

    sched = DDIMScheduler(num_train_timesteps=100)
    sched.set_timesteps(6)
    return net, denoiser, calls, sched


def test_auto_window_is_a_policy_object_with_its_own_cache_and_choice():
    """Two solves with one AutoWindow measure once (its cache), keep their choice on the object, and leave 'auto' alone."""
    torch = pytest.importorskip("torch")
    td = pytest.importorskip("trisolve_diffusion")
    net, denoiser, calls, sched = _counting_denoiser()
    policy = td.AutoWindow(net)
    assert policy.network is net
    opts = dict(window=policy, progress=False, trajectory_dtype=torch.float64)
    latents = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        first, sol = td.sample_latents(denoiser, sched, latents, **opts)
    assert policy.last_choice is not None and policy.cache and sol.status.ok
    assert max(hi - lo for lo, hi in sol.windows) == min(policy.last_choice.window, 6)
    measured = len(calls)
    with torch.no_grad():
        again, _ = td.sample_latents(denoiser, sched, latents, **opts)
    assert len(calls) - measured <= sol.num_rounds + 6  # the second solve runs its rounds, measures nothing again
    assert torch.equal(first, again)
    assert td.AutoWindow.of(denoiser).last_choice is None and td.AutoWindow.of(net).last_choice is None  # others untouched
    with pytest.raises(TypeError, match="network must be the torch.nn.Module"):
        td.AutoWindow(3)


def test_auto_window_by_default_times_the_denoiser_itself_once():
    """window='auto' in sample_latents: AutoWindow.of(denoiser) (keyed by the denoiser's identity), no search for a network."""
    torch = pytest.importorskip("torch")
    td = pytest.importorskip("trisolve_diffusion")
    net, denoiser, calls, sched = _counting_denoiser()
    latents = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        _, sol = td.sample_latents(denoiser, sched, latents, window="auto", progress=False, trajectory_dtype=torch.float64)
    policy = td.AutoWindow.of(denoiser)
    assert policy.network is denoiser and policy.last_choice is not None and sol.status.ok
    assert td.AutoWindow.of(net).last_choice is None  # the network inside the closure is not searched for
    measured = len(calls)
    with torch.no_grad():
        td.sample_latents(denoiser, sched, latents, progress=False, trajectory_dtype=torch.float64)  # window=None: the same policy
    assert len(calls) - measured <= 6 + 6
    # the policy goes with its denoiser: no module-level cache keeps either alive
    import gc
    import weakref

    ref = weakref.ref(policy)
    del policy, denoiser
    gc.collect()
    assert ref() is None


def test_deprecated_cost_model_globals_warn():
    td = pytest.importorskip("trisolve_diffusion")
    from trisolve_diffusion import cost_model

    with pytest.warns(DeprecationWarning, match="AutoWindow.of\\(network\\).last_choice"):
        cost_model.last_choice  # noqa: B018
    with pytest.warns(DeprecationWarning, match="window=AutoWindow\\(network\\)"):
        assert isinstance(cost_model.default_auto_window(), td.AutoWindow)
    with pytest.warns(DeprecationWarning, match="cache.clear"):
        cost_model.clear_cache()
    torch = pytest.importorskip("torch")
    net = torch.nn.Identity()
    with pytest.warns(DeprecationWarning, match="window=AutoWindow\\(network\\)"):
        assert cost_model.network_of(lambda x, t: net(x)) is net


def test_a_system_several_ranks_share_is_asked_to_agree_before_the_first_round():
    """solve() calls the protocol's agree(**arguments) when num_ranks > 1 (what distribute()'s copy uses), never on one rank."""
    seen, evaluated = [], []

    class Shared(trisolve.TriangularSystem):
        n, ranks = 5, 2

        @property
        def num_ranks(self):
            return self.ranks

        def evaluate(self, x, lo, hi, cache, *, xp):
            evaluated.append((lo, hi))
            return trisolve.Evaluation(f=0.5 * x[lo - 1 : hi - 1] + 1.0, num_evals=hi - lo)

        def agree(self, **arguments):
            seen.append(arguments)
            if arguments["tolerance"].atol != 1e-9:
                raise RuntimeError("the ranks disagree (a stand-in for DistributedError)")

    sol = trisolve.solve(Shared(), trisolve.Jacobi(), np.zeros(()), atol=1e-9)
    assert sol.status.ok and len(seen) == 1
    args = seen[0]
    assert args["solver"] == trisolve.Jacobi() and args["tolerance"] == trisolve.Tolerance(atol=1e-9) and args["x0"] == 0
    assert args["callback"] is False and args["init"] is None
    evaluated.clear()
    with pytest.raises(RuntimeError, match="disagree"):
        trisolve.solve(Shared(), trisolve.Jacobi(), np.zeros(()), atol=1e-8)
    assert evaluated == []  # raised before any evaluation
    one = Shared()
    one.ranks = 1
    trisolve.solve(one, trisolve.Jacobi(), np.zeros(()), atol=1e-8)
    assert len(seen) == 2  # one rank: nothing to agree on
