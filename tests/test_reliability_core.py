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
    opts = dict(atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, progress=False)
    final, sol = td.sample_latents(den, make(), latents, **opts)
    assert sol.converged
    torch.testing.assert_close(final, ref, atol=2e-5, rtol=0)


# -- gradients of a solve that did not finish -----------------------------------------------


def _rnn_system(T=60, H=4, seed=0):
    from test_gradients import _loop, _rnn

    W, drive, x0, weights = _rnn(T, H, seed)
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: torch.tanh(x[lo - 1 : hi - 1] @ W.T + drive[lo:hi]), T)
    return system, (W, drive, x0), weights, lambda: _loop(W, drive, x0, T)


@pytest.mark.parametrize("how", ["max_iter", "nonfinite", "early_stop"])
def test_gradients_of_an_unfinished_solve_raise_and_keep_the_solution(how):
    system, (W, drive, x0), _, _ = _rnn_system()
    kw = dict(max_iter=3) if how == "max_iter" else dict(early_stop=1e3) if how == "early_stop" else {}
    if how == "nonfinite":
        f = system.fn
        system = trisolve.BlackBoxSystem(lambda x, lo, hi: f(x, lo, hi) / (torch.arange(lo, hi)[:, None] != 30), system.n)
    plain = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12, gradients=False, **kw)
    assert not plain.status.ok
    with pytest.raises(trisolve.SolveError, match=f"gradients need a converged solve, but it ended with {plain.status.name}") as info:
        trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12, gradients=True, **kw)
    kept = info.value.solution
    assert kept is not None and kept.status is plain.status and kept.num_rounds == plain.num_rounds > 0
    assert kept.num_frozen == plain.num_frozen > 1
    torch.testing.assert_close(kept.trajectory, plain.trajectory, rtol=0, atol=0)
    # and it resumes to the answer
    rest = trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-12, init=kept.trajectory, num_frozen=kept.num_frozen)
    if how != "nonfinite":
        assert rest.converged
    with pytest.raises(trisolve.SolveError) as info:  # raise_for_status keeps it too
        plain.raise_for_status()
    assert info.value.solution is plain


def test_gradients_after_an_output_aware_finish_are_those_of_the_solution():
    """final_row_atol stops once row n is within it; the adjoint needs every row, so the solve goes on."""
    system, params, weights, loop = _rnn_system()
    from test_gradients import _loss

    ref = torch.autograd.grad(_loss(loop(), weights), params)
    early = trisolve.solve(system, trisolve.Jacobi(), params[2], atol=1e-13, final_row_atol=1e-3, gradients=False)
    assert early.status is trisolve.Status.FINAL_ROW_CONVERGED  # the finish does fire here without gradients
    auto = trisolve.solve(system, trisolve.Jacobi(), params[2], atol=1e-13, final_row_atol=1e-3)  # gradients=None finds them needed
    assert auto.status is trisolve.Status.CONVERGED and auto.trajectory.requires_grad
    sol = trisolve.solve(system, trisolve.Jacobi(), params[2], atol=1e-13, final_row_atol=1e-3, gradients=True)
    assert sol.status is trisolve.Status.CONVERGED and sol.num_rounds > early.num_rounds
    got = torch.autograd.grad(_loss(sol.trajectory, weights), params)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="final_row_atol must be"):
        trisolve.solve(system, trisolve.Jacobi(), params[2], final_row_atol=-1.0, gradients=True)


# -- records: tens of bytes a round ---------------------------------------------------------


def test_a_long_solve_keeps_a_few_tens_of_bytes_a_round():
    import tracemalloc

    n, event = 6000, (4,)
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(0.5 * x[lo - 1 : hi - 1]) + 0.1, n)
    x0 = np.zeros(event)
    trisolve.solve(system, trisolve.Jacobi(), x0, window=1, max_iter=3)  # one-time allocations (imports, caches)
    tracemalloc.start()
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, window=1, atol=0.0)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sol.converged and sol.num_rounds == n  # window 1: one row a round
    # the records: 24 bytes a round (in buffers of at most twice the rounds)
    assert sol.windows.nbytes + sol.round_max_errors.nbytes == 24 * sol.num_rounds
    # everything the solve allocated beyond the trajectory, per round (= per row here), with the
    # per-row thresholds (16 bytes), the freeze rule's per-row state (16 bytes: the last error and the
    # pass count; 8 when it was the pass count alone) and the buffers' growth; lists of tuples held 136
    # and peaked at 186 (measured: 33 held, 83 peak)
    trajectory = (n + 1) * 4 * 8
    assert (held - trajectory) / n < 48 and (peak - trajectory) / n < 88, (held - trajectory, peak - trajectory)
    # the record reads as before
    assert len(sol.windows) == n and sol.windows[0] == (1, 2) and sol.windows[-1] == (n, n + 1)
    assert sol.windows == [(i, i + 1) for i in range(1, n + 1)]
    assert list(sol.windows)[:2] == [(1, 2), (2, 3)] and sol.windows[1:3] == [(2, 3), (3, 4)]
    assert isinstance(sol.windows[0][0], int) and sol.windows.tolist()[0] == (1, 2)


# -- every user code the rounds call keeps the work -----------------------------------------


class _Bug(Exception):
    pass


class _Counter:
    def __init__(self, at):
        self.at, self.calls = at, 0

    def tick(self):
        self.calls += 1
        if self.calls == self.at:
            raise _Bug(f"call {self.calls}")


class _RaisingSolver(trisolve.Jacobi):
    def __init__(self, step=None, stats=None):
        object.__setattr__(self, "damping", 0.0)
        object.__setattr__(self, "counters", (step, stats))

    def step(self, ctx, state):
        if self.counters[0]:
            self.counters[0].tick()
        return super().step(ctx, state)

    def stats(self, state):
        if self.counters[1]:
            self.counters[1].tick()
        return super().stats(state)


class _RaisingMap(trisolve.OneStep):
    def __init__(self, counter):
        object.__setattr__(self, "counter", counter)

    def apply(self, tables, x, f, lo, hi, *, xp):
        self.counter.tick()
        return super().apply(tables, x, f, lo, hi, xp=xp)


class _RaisingWindow(trisolve.WindowPolicy):
    def __init__(self, counter, invalid=False):
        self.counter, self.invalid = counter, invalid

    def end(self, lo, n):
        if self.invalid and self.counter.calls == self.counter.at - 1:
            self.counter.calls += 1
            return n + 7
        self.counter.tick()
        return min(lo + 6, n + 1)


class _LinearRows(trisolve.SemilinearSystem):
    """A semilinear system whose linear_step (a protocol method the driver calls) raises at a given call."""

    def linear_step(self, x, i, cache, *, xp):
        self._counter.tick()
        return super().linear_step(x, i, cache, xp=xp)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("where", ["F", "map", "solver step", "solver stats", "window raises", "window invalid", "callback", "linear_step"])
def test_an_exception_from_any_code_the_rounds_call_keeps_the_work(backend, where):
    rng = np.random.default_rng(1)
    n, at = 30, 3
    base = semilinear_system(rng, n, 2, (2,), backend, a_range=(0.5, 1.0), linear_fraction=0.3 if where == "linear_step" else 0.0)
    count = _Counter(at)
    g = (lambda x, lo, hi: (count.tick(), base.g(x, lo, hi))[1]) if where == "F" else base.g
    cls = _LinearRows if where == "linear_step" else trisolve.SemilinearSystem
    system = cls(base.a, base.B, g, c=base.c)
    object.__setattr__(system, "_counter", count)
    x0 = backend.asarray(rng.standard_normal(2))
    ref = backend.to_numpy(trisolve.forward_substitution(base, x0))
    kw = dict(window=_RaisingWindow(count if where.startswith("window") else _Counter(0), invalid=where == "window invalid"))
    kw["solver"] = _RaisingSolver(step=count if where == "solver step" else None, stats=count if where == "solver stats" else None)
    if where == "solver stats":
        count.at = 1  # stats is called once, at the end
    if where == "map":
        kw["update_map"] = _RaisingMap(count)
    if where == "callback":
        kw["callback"] = lambda info: count.tick()
    solver = kw.pop("solver")
    sol = trisolve.solve(system, solver, x0, atol=1e-12, **kw)
    assert sol.status is trisolve.Status.FAILED, (sol.status, sol.error)
    if where == "window invalid":
        assert isinstance(sol.error, ValueError) and "a window [lo, hi) needs lo < hi <= n + 1" in str(sol.error)
    else:
        assert isinstance(sol.error, _Bug) and "call" in sol.message
    assert sol.num_rounds >= (1 if where == "linear_step" else 2) and sol.num_frozen > 1
    traj = backend.to_numpy(sol.trajectory)
    assert np.all(np.isfinite(traj))
    np.testing.assert_allclose(traj[: sol.num_frozen], ref[: sol.num_frozen], rtol=1e-9, atol=1e-12)
    rest = trisolve.solve(base, trisolve.Jacobi(), x0, init=sol.trajectory, num_frozen=sol.num_frozen, atol=1e-12)
    assert rest.converged
    np.testing.assert_allclose(backend.to_numpy(rest.trajectory), ref, rtol=1e-9, atol=1e-12)


# -- one validation helper: NumPy scalars in, bools and nan out -----------------------------


@pytest.mark.parametrize("fkind", [np.float32, np.float64, float])
@pytest.mark.parametrize("ikind", [np.int32, np.int64, np.uint8, int])
def test_numpy_scalars_are_accepted_by_the_adjoint_the_scan_and_the_damped_scan(fkind, ikind):
    import array_api_compat.torch as tx

    adj = trisolve.Adjoint(rtol=fkind(1e-10), max_iter=ikind(50))
    assert type(adj.rtol) is float and type(adj.max_iter) is int and adj.max_iter == 50
    system, params, weights, loop = _rnn_system(T=20)
    sol = trisolve.solve(system, trisolve.Jacobi(), params[2], atol=1e-13, gradients=adj)
    from test_gradients import _loss

    got = torch.autograd.grad(_loss(sol.trajectory, weights), params)
    ref = torch.autograd.grad(_loss(loop(), weights), params)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    r = torch.randn(6, 3, dtype=torch.float64)
    for J in (fkind(0.5), fkind(0.0), fkind(1.0)):
        for order in (None, ikind(2)):
            expected = trisolve.affine_scan(float(J), r, order=None if order is None else int(order), xp=tx)
            out = trisolve.affine_scan(J, r, order=order, xp=tx)
            assert isinstance(out, torch.Tensor)
            torch.testing.assert_close(out, expected)
    Jd = torch.full((6, 3), 0.5, dtype=torch.float64)
    torch.testing.assert_close(trisolve.elk.damped_scan(Jd, r, lam=fkind(0.25), kind="diagonal", xp=tx),
                               trisolve.elk.damped_scan(Jd, r, lam=0.25, kind="diagonal", xp=tx))  # fmt: skip


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: trisolve.Adjoint(rtol=True), TypeError, "Adjoint rtol must be a real number"),
        (lambda: trisolve.Adjoint(rtol=np.float64("nan")), ValueError, r"Adjoint rtol must be a finite number > 0 and < 1"),
        (lambda: trisolve.Adjoint(rtol=0.0), ValueError, r"Adjoint rtol must be a finite number > 0 and < 1"),
        (lambda: trisolve.Adjoint(rtol=np.float32(1.5)), ValueError, r"> 0 and < 1 or None"),
        (lambda: trisolve.Adjoint(max_iter=np.int64(0)), ValueError, "Adjoint max_iter must be >= 1"),
        (lambda: trisolve.Adjoint(max_iter=2.5), TypeError, "Adjoint max_iter must be an int"),
        (lambda: trisolve.Adjoint(max_iter=np.bool_(True)), TypeError, "Adjoint max_iter must be an int"),
        (lambda: trisolve.affine_scan(0.5, np.zeros((3, 2)), order=-1, xp=np), ValueError, "order must be >= 0"),
        (lambda: trisolve.affine_scan(0.5, np.zeros((3, 2)), order=1.5, xp=np), TypeError, "order must be an int"),
    ],
)
def test_bad_numbers_are_refused_with_the_argument_named(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_the_validation_helper_is_importable_and_stable():
    """trisolve_diffusion validates with the same two functions: their names and signatures are an interface."""
    import inspect

    from trisolve._validate import check_float, check_int

    assert str(inspect.signature(check_int)) == "(name: 'str', value: 'Any', low: 'int', *, high: 'int | None' = None, hint: 'str' = '') -> 'int'"
    assert list(inspect.signature(check_float).parameters) == ["name", "value", "low", "low_open", "high", "high_open", "finite", "hint"]
    assert check_int("k", np.uint16(3), 1) == 3 and check_float("t", np.float32(0.25), 0.0) == 0.25
    for bad in (np.float64("nan"), np.float32("inf"), np.bool_(False), True):
        with pytest.raises((TypeError, ValueError), match="^t must be"):
            check_float("t", bad, 0.0)
    with pytest.raises(ValueError, match=r"t must be a finite number > 0 \(seconds\), got 0.0"):
        check_float("t", 0.0, 0.0, low_open=True, hint="(seconds)")


# -- a map that makes no progress says so ---------------------------------------------------


def _contractive_rnn(n=200, d=8, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, d)) * 0.5 / d**0.5
    b = rng.standard_normal((n + 1, d))
    return trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1] @ W.T + b[lo:hi]), n)


def test_picard_on_a_contractive_rnn_warns_that_it_makes_no_progress_and_names_a_map_that_does():
    import warnings

    system = _contractive_rnn()
    x0 = np.zeros(8)
    ref = trisolve.forward_substitution(system, x0)
    with np.errstate(all="ignore"), pytest.warns(trisolve.NoProgressWarning, match=r"Picard\(order=None\) made no progress for 32 rounds") as rec:
        sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Picard(), atol=1e-10)
    assert len([w for w in rec if w.category is trisolve.NoProgressWarning]) == 1  # once per solve
    assert "OneStep()" in str(rec[0].message) and "Newton()" in str(rec[0].message)
    assert rec[0].filename == __file__  # points at the call of solve
    assert sol.converged and sol.num_rounds == system.n  # it still ends exact, at the bound
    np.testing.assert_allclose(sol.trajectory, ref, atol=1e-9)
    with warnings.catch_warnings():  # the map it names converges in a few rounds, silently
        warnings.simplefilter("error", trisolve.NoProgressWarning)
        fast = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.OneStep(), atol=1e-10)
    assert fast.converged and fast.num_rounds < 40


@pytest.mark.parametrize(
    "solver,update_map,window",
    [
        (trisolve.TriangularAnderson(history_size=4), trisolve.Picard(), None),
        (trisolve.Jacobi(), trisolve.Picard(), None),
        (trisolve.Jacobi(), trisolve.Unrolled(), None),
        (trisolve.TriangularAnderson(), trisolve.Picard(), 8),
        (None, None, None),
    ],
    ids=["taa-picard", "picard", "unrolled", "taa-picard-w8", "default"],
)
@pytest.mark.parametrize("T", [50, 200])
def test_no_false_alarm_on_a_ddim_like_system(solver, update_map, window, T):
    import warnings

    from ddim_toy import ddim_system

    system, x0 = ddim_system(T=T, d=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", trisolve.NoProgressWarning)
        sol = trisolve.solve(system, solver, x0, update_map=update_map, window=window, atol=1e-4, rtol=1e-3)
    assert sol.converged and sol.num_rounds < T // 2


def test_the_one_step_map_on_a_long_ddim_like_system_is_told_about_the_maps_that_unroll():
    """DESIGN 2.1: the one-step map moves exact information about one row a round on DDIM; that is a true alarm."""
    from ddim_toy import ddim_system

    system, x0 = ddim_system(T=200, d=8)
    with pytest.warns(trisolve.NoProgressWarning, match=r"OneStep\(\) made no progress.*Picard\(\) or Unrolled\(\) on an integrator"):
        slow = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.OneStep(), atol=1e-4, rtol=1e-3)
    fast = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Picard(), atol=1e-4, rtol=1e-3)
    assert slow.converged and fast.converged and fast.num_rounds < slow.num_rounds // 5


def test_the_test_processes_run_the_threads_the_configuration_sets():
    """tests/conftest.py: one torch thread per test process unless OMP_NUM_THREADS says otherwise."""
    import os

    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
