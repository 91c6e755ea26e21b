"""Reliability: bad input, faults in the middle of a solve, numerical stress, determinism, memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from conftest import BACKENDS
from zoo import blackbox_system, semilinear_system

import trisolve

NP = BACKENDS[0]


def _system(n=10, event=(3,)):
    return blackbox_system(np.random.default_rng(0), n, 1, event, NP)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(init=np.zeros((5, 3))), ValueError, r"init must have shape \(n \+ 1, \*x0.shape\)"),
        (dict(init=np.zeros((11, 3), dtype=np.float32)), TypeError, "init has dtype float32 but x0 has float64"),
        (dict(init=np.full((11, 3), np.nan)), ValueError, "warm start must be finite"),
        (dict(init=torch.zeros(11, 3, dtype=torch.float64)), TypeError, "one array-API library"),
        (dict(atol=-1.0), ValueError, "atol must be a finite number >= 0"),
        (dict(rtol=float("nan")), ValueError, "rtol must be a finite number >= 0"),
        (dict(max_iter=-1), ValueError, "max_iter must be >= 0"),
        (dict(max_iter=2.5), TypeError, "max_iter must be an int"),
        (dict(num_frozen=0), ValueError, "num_frozen must be >= 1"),
        (dict(num_frozen=3), ValueError, "num_frozen > 1 keeps rows of an earlier trajectory: pass that trajectory as init"),
        (dict(num_frozen=12, init=np.zeros((11, 3))), ValueError, r"num_frozen must be <= n \+ 1"),
        (dict(early_stop=-1.0), ValueError, "early_stop must be a finite number >= 0"),
        (dict(callback=3), TypeError, "callback must be callable"),
        (dict(window="all"), TypeError, "window must be FullWindow"),
        (dict(update_map="picard"), TypeError, "update_map must be"),
        (dict(update_map=trisolve.Picard(order=11)), ValueError, "order must be between 1 and n = 10"),
        (dict(update_map=trisolve.Unrolled(order=2)), TypeError, "Unrolled.*needs a SemilinearSystem"),
    ],
)
def test_bad_solve_arguments_name_the_fix(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        trisolve.solve(_system(), trisolve.Jacobi(), np.zeros(3), **kwargs)


def test_bad_x0_and_systems():
    with pytest.raises(ValueError, match="x0 contains nan or inf"):
        trisolve.solve(_system(), trisolve.Jacobi(), np.array([0.0, np.inf, 0.0]))
    with pytest.raises(TypeError, match="real floating dtype"):
        trisolve.solve(_system(), trisolve.Jacobi(), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="n must be >= 1"):
        trisolve.BlackBoxSystem(lambda x, lo, hi: x, n=0)
    with pytest.raises(ValueError, match="a must have shape"):
        trisolve.SemilinearSystem(np.zeros((0,)), np.zeros(0), np.tanh)
    with pytest.raises(ValueError, match=r"B must have shape \(n, p\)"):
        trisolve.SemilinearSystem(np.ones(4), np.ones((3, 1)), np.tanh)
    with pytest.raises(ValueError, match="must be zero where row i - 1 - q < 0"):
        trisolve.SemilinearSystem(np.ones(4), np.ones((4, 2)), np.tanh)
    with pytest.raises(ValueError, match="sigma must have shape"):
        trisolve.BlackBoxSystem(lambda x, lo, hi: x, n=3, sigma=np.ones(4))
    with pytest.raises(TypeError, match="solver must be a trisolve solver"):
        trisolve.solve(_system(), "taa", np.zeros(3))
    with pytest.raises(ValueError, match="SlidingWindow size must be >= 1"):
        trisolve.SlidingWindow(0)
    with pytest.raises(ValueError, match="order must be >= 1"):
        trisolve.Picard(order=0)
    with pytest.raises(ValueError, match="damping"):
        trisolve.Jacobi(damping=1.0)


def test_system_returning_wrong_shape_dtype_or_library_is_reported():
    x0 = np.zeros(3)
    for fn, exc, match in [
        (lambda x, lo, hi: x[lo:hi, :2], ValueError, r"fn returned shape"),
        (lambda x, lo, hi: x[lo - 1 : hi - 1].astype(np.float32), TypeError, "cast its output to float64"),
        (
            lambda x, lo, hi: torch.from_numpy(x[lo - 1 : hi - 1].copy()),
            TypeError,
            "return rows in the trajectory's array library",
        ),
    ]:
        sol = trisolve.solve(trisolve.BlackBoxSystem(fn, 5), trisolve.Jacobi(), x0)
        assert sol.status is trisolve.Status.FAILED
        assert isinstance(sol.error, exc) and sol.error.args and __import__("re").search(match, str(sol.error))
        with pytest.raises(trisolve.SolveError, match="FAILED"):
            sol.raise_for_status()


# -- faults in the middle of a solve --------------------------------------------------------


class Faulty:
    """A contractive system that misbehaves from a given round on."""

    def __init__(self, n=30, event=(2, 3), fault=None, at_round=3, rows=None):
        self.inner = blackbox_system(np.random.default_rng(1), n, 2, event, NP, scale=1.2)
        self.fault, self.at_round, self.rows = fault, at_round, rows
        self.calls = 0
        self.before_fault = None

    def __call__(self, x, lo, hi):
        self.calls += 1
        if self.calls == self.at_round:
            self.before_fault = x.copy()
            if self.fault == "raise":
                raise RuntimeError("network exploded")
            if self.fault == "interrupt":
                raise KeyboardInterrupt
        out = self.inner.fn(x, lo, hi)
        if self.calls >= self.at_round and self.fault in ("nan", "inf"):
            bad = np.nan if self.fault == "nan" else np.inf
            rows = range(hi - lo) if self.rows is None else [r - lo for r in self.rows if lo <= r < hi]
            for r in rows:
                out[r, 0, 0] = bad
        return out


@pytest.mark.parametrize("solver", [trisolve.Jacobi(), trisolve.TriangularAnderson()], ids=["jacobi", "taa"])
@pytest.mark.parametrize(
    "fault,status", [("raise", trisolve.Status.FAILED), ("interrupt", trisolve.Status.INTERRUPTED)], ids=["raises", "interrupted"]
)
def test_exception_or_interrupt_keeps_the_trajectory_before_the_fault(solver, fault, status):
    f = Faulty(fault=fault, at_round=4)
    system = trisolve.BlackBoxSystem(f, 30)
    x0 = np.ones((2, 3))
    sol = trisolve.solve(system, solver, x0, atol=1e-12)
    assert sol.status is status
    assert sol.num_rounds == 3
    np.testing.assert_array_equal(sol.trajectory, f.before_fault)
    if fault == "raise":
        assert isinstance(sol.error, RuntimeError) and "network exploded" in str(sol.error)
    # the frozen prefix is final: resuming from it gives forward substitution
    assert sol.num_frozen >= 4
    ref = trisolve.forward_substitution(f.inner, x0)
    np.testing.assert_allclose(sol.trajectory[: sol.num_frozen], ref[: sol.num_frozen], atol=1e-9)
    resumed = trisolve.solve(f.inner, solver, x0, init=sol.trajectory, num_frozen=sol.num_frozen, atol=1e-12)
    assert resumed.converged
    np.testing.assert_allclose(resumed.trajectory, ref, atol=1e-9)


@pytest.mark.parametrize("solver", [trisolve.Jacobi(), trisolve.TriangularAnderson()], ids=["jacobi", "taa"])
@pytest.mark.parametrize("fault", ["nan", "inf"])
@pytest.mark.parametrize("rows", [None, [20, 21]], ids=["every-row", "some-rows"])
def test_nonfinite_F_stops_only_at_a_row_that_reads_final_rows(solver, fault, rows):
    """A non-finite F at rows that are not final is survived (those rows fall back); the solve
    stops NONFINITE only when the bad row reads only final rows, naming it, with a finite trajectory."""
    f = Faulty(fault=fault, at_round=3, rows=rows)
    x0 = np.ones((2, 3))
    sol = trisolve.solve(trisolve.BlackBoxSystem(f, 30), solver, x0, atol=1e-12)
    assert sol.status is trisolve.Status.NONFINITE
    assert np.all(np.isfinite(sol.trajectory))
    first_bad = sol.windows[2][0] if rows is None else 20
    assert sol.num_frozen == first_bad
    assert f"row {first_bad}" in str(sol.error) and f"row {first_bad}" in sol.message
    ref = trisolve.forward_substitution(f.inner, x0)
    np.testing.assert_allclose(sol.trajectory[: sol.num_frozen], ref[: sol.num_frozen], atol=1e-9)
    if rows is None:  # the fault hit the first window row at round 3: nothing of that round was written
        assert sol.num_rounds == 3
        np.testing.assert_array_equal(sol.trajectory, f.before_fault)
    else:  # rounds went on past the fault until row 20 was the first non-final row
        assert sol.num_rounds > 3


def test_nonfinite_in_one_sample_of_a_batch_is_detected():
    n = 12

    def fn(x, lo, hi):
        out = 0.5 * np.tanh(x[lo - 1 : hi - 1]) + 0.1
        if hi > 8:
            out[8 - lo if lo <= 8 else 0, 1] = np.nan  # sample 1 only
        return out

    sol = trisolve.solve(trisolve.BlackBoxSystem(fn, n, batch_ndim=1), trisolve.Jacobi(), np.zeros((3, 2)), atol=1e-12)
    assert sol.status is trisolve.Status.NONFINITE
    assert sol.num_frozen <= 8


# -- numerical stress -----------------------------------------------------------------------


def test_coefficients_spanning_many_orders_of_magnitude():
    n = 40
    a = np.logspace(-6, 0.3, n)
    B = np.logspace(3, -8, n)
    system = trisolve.SemilinearSystem(a, B, lambda x, lo, hi: np.tanh(x))
    x0 = np.array([1e-3, 1.0, 1e3])
    ref = trisolve.forward_substitution(system, x0)
    for solver in (trisolve.Jacobi(), trisolve.Anderson(), trisolve.TriangularAnderson(history_size=4)):
        for m in (trisolve.Unrolled(), trisolve.Picard(), trisolve.OneStep()):
            sol = trisolve.solve(system, solver, x0, update_map=m, atol=1e-12, rtol=0.0)
            assert sol.converged and sol.num_rounds <= n
            np.testing.assert_allclose(sol.trajectory, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("net_dtype", [torch.float16, torch.bfloat16])
def test_low_precision_network_with_float32_trajectory(net_dtype):
    torch.manual_seed(0)
    W = torch.randn(8, 8) / 8
    n = 50

    def g(x, lo, hi):  # the network runs in half precision; its output is cast back
        return torch.tanh(x.to(net_dtype) @ W.to(net_dtype)).to(x.dtype)

    system = trisolve.SemilinearSystem(np.full(n, 0.95), np.full(n, 0.1), g)
    x0 = torch.randn(8)
    ref = trisolve.forward_substitution(system, x0)
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Picard(), atol=1e-4)
    assert sol.trajectory.dtype == torch.float32
    assert sol.converged and sol.num_rounds <= n
    assert float((sol.trajectory - ref).abs().max()) < 1e-2


def test_very_long_trajectory_and_the_bound():
    n = 10_000
    system = trisolve.SemilinearSystem(np.full(n, 0.999), np.full(n, 1e-3), lambda x, lo, hi: np.sin(x))
    x0 = np.linspace(-1, 1, 4)
    ref = trisolve.forward_substitution(system, x0)
    for solver, m in ((trisolve.TriangularAnderson(), trisolve.Unrolled()), (trisolve.Jacobi(), trisolve.OneStep())):
        sol = trisolve.solve(system, solver, x0, update_map=m, atol=1e-10, window=trisolve.SlidingWindow(2048))
        assert sol.converged and sol.num_rounds <= n
        np.testing.assert_allclose(sol.trajectory, ref, atol=1e-7)


def test_large_events():
    n = 20
    system = trisolve.SemilinearSystem(np.full(n, 0.9), np.full(n, 0.2), lambda x, lo, hi: np.tanh(x))
    x0 = np.random.default_rng(0).standard_normal((4, 64, 64))
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Unrolled(), atol=1e-8)
    assert sol.converged and sol.num_rounds <= n
    np.testing.assert_allclose(sol.trajectory, trisolve.forward_substitution(system, x0), atol=1e-7)


# -- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS[:2], ids=str)
def test_same_inputs_give_bit_identical_results(backend):
    def run():
        rng = np.random.default_rng(3)
        system = semilinear_system(rng, 30, 2, (5,), backend)
        x0 = backend.asarray(rng.standard_normal(5))
        return trisolve.solve(system, trisolve.TriangularAnderson(history_size=3), x0, update_map=trisolve.Picard(), atol=1e-9)

    a, b = run(), run()
    assert a.num_rounds == b.num_rounds and a.windows == b.windows
    np.testing.assert_array_equal(backend.to_numpy(a.trajectory), backend.to_numpy(b.trajectory))
    np.testing.assert_array_equal(a.residuals, b.residuals)


# -- memory ---------------------------------------------------------------------------------


def _working_memory(n: int, window: int) -> int:
    """Peak bytes allocated during a solve beyond the trajectory and the kept g values."""
    event = (64,)
    system = trisolve.SemilinearSystem(np.full(n, 0.9), np.full(n, 0.1), lambda x, lo, hi: np.tanh(x))
    x0 = np.zeros(event)
    tracemalloc.start()
    tracemalloc.reset_peak()
    trisolve.solve(system, trisolve.TriangularAnderson(history_size=3), x0, window=trisolve.SlidingWindow(window), atol=1e-9)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    buffers = (2 * n + 1) * 64 * 8  # trajectory (n + 1 rows) + kept g values (n rows)
    return peak - buffers


def test_peak_working_memory_is_bounded_by_the_window_not_n():
    small, large = _working_memory(500, 16), _working_memory(4000, 16)
    # nothing of the event's size scales with n: per extra row, the working set grows by less
    # than 1/8 of a row (64 bytes vs 512; what grows is the per-round residual record)
    assert (large - small) / 3500 < 64, (small, large)
    wide = _working_memory(4000, 256)
    assert wide > 4 * large  # the window is what sets it


@pytest.mark.parametrize("update_map", [trisolve.Picard(), trisolve.Unrolled(), trisolve.OneStep()], ids=["picard", "unrolled", "onestep"])
def test_nonfinite_g_under_every_map(update_map):
    """A nan from g at one row is caught whatever the map does with it (never hidden by the map residual)."""
    n = 20

    def g(x, lo, hi):
        out = np.tanh(x)
        if lo <= 12 < hi:
            out[12 - lo] = np.nan
        return out

    system = trisolve.SemilinearSystem(np.full(n, 0.9), np.full(n, 0.2), g)
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), np.ones(3), update_map=update_map, atol=1e-10)
    assert sol.status is trisolve.Status.NONFINITE
    assert np.all(np.isfinite(sol.trajectory)) and sol.num_frozen <= 13
