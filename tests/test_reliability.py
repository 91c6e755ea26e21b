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
        (dict(window="all"), TypeError, "window must be None, an int"),
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
    for solver, m in ((trisolve.TriangularAnderson(), trisolve.Unrolled()), (trisolve.Jacobi(), trisolve.Unrolled(order=64))):
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
    np.testing.assert_array_equal(a.round_max_errors, b.round_max_errors)


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


# == issue 15: property tests per class, on NumPy, PyTorch and array-api-strict ==============

from hypothesis import given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DTYPES = {"float32": 1e-5, "float64": 1e-11}  # dtype -> a tolerance it can meet


def _close(backend, sol, ref, rtol):
    got, want = backend.to_numpy(sol.trajectory).astype(np.float64), backend.to_numpy(ref).astype(np.float64)
    scale = np.maximum(np.abs(want), 1.0)
    np.testing.assert_array_less(np.abs(got - want) / scale, rtol)


# -- overflow --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@hsettings(max_examples=12)
@given(
    dtype=st.sampled_from(sorted(DTYPES)),
    growth=st.floats(2.0, 10.0),
    n=st.integers(1, 30),
    solver=st.sampled_from(["jacobi", "taa"]),
)
def test_finite_values_far_beyond_the_square_root_of_the_dtype_range_converge(backend, dtype, growth, n, solver):
    """x_i = growth * x_{i-1}: values up to 1e30 (float32, squares overflow at 1.8e19) must not read as non-finite."""
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: growth * x[lo - 1 : hi - 1, ...], n)
    x0 = backend.asarray(np.array([1.0, -2.0, 0.5]), dtype=dtype)
    ref = trisolve.forward_substitution(system, x0)
    s = trisolve.Jacobi() if solver == "jacobi" else trisolve.TriangularAnderson()
    sol = trisolve.solve(system, s, x0, atol=DTYPES[dtype], rtol=0.0)
    assert sol.status is trisolve.Status.CONVERGED, sol.message
    assert sol.num_rounds <= n
    _close(backend, sol, ref, 1e-5 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("dtype,value", [("float32", 1e30), ("float64", 1e200), ("float64", 1e-200)])
def test_scaled_error_neither_overflows_nor_underflows(backend, dtype, value):
    r = backend.asarray(np.full((2, 3), value), dtype=dtype)
    err = trisolve.Tolerance(atol=1e-6).scaled_error(r, np.ones(2), batch_ndim=0, xp=backend.xp)
    np.testing.assert_allclose(err, value / 1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("dtype,big", [("float64", 1e200), ("float32", 1e30)])
def test_solve_reports_finite_errors_when_the_plain_rms_overflows(backend, dtype, big):
    """The driver's plain RMS (one pass in the residual's dtype, no scaling) overflows on residuals of
    1e200 (float64) or 1e30 (float32); it recomputes those rounds carefully, so every recorded error is
    finite and the solve still ends at forward substitution."""
    n = 30
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: 0.5 * x[lo - 1 : hi - 1, ...] + big, n)
    x0 = backend.asarray(np.zeros(3), dtype=dtype)
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, atol=big * 1e-12, record="errors")
    assert sol.status is trisolve.Status.CONVERGED and np.isfinite(sol.round_max_errors).all()
    assert sol.round_max_errors[0] > 1e10  # 1e200 / 1e188, read, not inf
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory), ref, rtol=1e-10 if dtype == "float64" else 1e-5)


@pytest.mark.parametrize("name", ["float16", "bfloat16", "numpy-float16"])
def test_half_precision_trajectories_get_correct_tolerance_arithmetic(name):
    """Policy: half-precision trajectories are supported; residuals are measured in float64 (float32 where
    the device has no float64), so a float16 residual of 1e-4 reads as 1e-4, not 0."""
    if name == "numpy-float16":
        r, xp, half = np.full((2, 8), 1e-4, dtype=np.float16), BACKENDS[0].xp, np.float16
    else:
        half = getattr(torch, name)
        r, xp = torch.full((2, 8), 1e-4, dtype=half), BACKENDS[1].xp
    err = trisolve.Tolerance(atol=1e-6).scaled_error(r, np.ones(2), batch_ndim=0, xp=xp)
    np.testing.assert_allclose(err, 100.0, rtol=1e-2)  # 1e-4 / 1e-6 (up to the dtype's rounding of 1e-4)
    # and a solve in that dtype converges to the sequential loop in the same dtype
    n = 40
    if name == "numpy-float16":
        system = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(half(0.8) * x[lo - 1 : hi - 1]) + half(0.1), n)
        x0 = np.full(4, 0.3, dtype=half)
    else:
        system = trisolve.BlackBoxSystem(lambda x, lo, hi: torch.tanh(0.8 * x[lo - 1 : hi - 1]) + 0.1, n)
        x0 = torch.full((4,), 0.3, dtype=half)
    ref = trisolve.forward_substitution(system, x0)
    for solver in (trisolve.Jacobi(), trisolve.TriangularAnderson()):
        sol = trisolve.solve(system, solver, x0, update_map=trisolve.Picard(), atol=1e-3)
        assert sol.trajectory.dtype == x0.dtype and sol.converged and sol.num_rounds <= n
        diff = np.abs(np.asarray(sol.trajectory, dtype=np.float64) - np.asarray(ref, dtype=np.float64)).max() if name == "numpy-float16" else (
            (sol.trajectory.double() - ref.double()).abs().max().item()
        )
        assert diff < 2e-2


# -- divergence ------------------------------------------------------------------------------


def _tanh_recurrence(backend, n, dtype, seed):
    rng = np.random.default_rng(seed)
    u = backend.asarray(rng.standard_normal((n + 1, 3)), dtype=dtype)
    xp = backend.xp
    return trisolve.BlackBoxSystem(lambda x, lo, hi: xp.tanh(0.9 * x[lo - 1 : hi - 1, ...] + u[lo:hi, ...]), n)


@pytest.mark.filterwarnings("ignore::trisolve.NoProgressWarning")  # the slow case on purpose (test_reliability_core tests the warning)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@hsettings(max_examples=4)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(40, 80),
    dtype=st.sampled_from(sorted(DTYPES)),
    solver=st.sampled_from(["jacobi", "taa", "anderson"]),
)
def test_picard_on_a_contractive_recurrence_blows_up_yet_ends_exact_within_n_rounds(backend, seed, n, dtype, solver):
    """x_i = tanh(0.9 x_{i-1} + u_i) under the Picard map drives rows that are not final far beyond the
    dtype's range (float32: to inf); those rows fall back instead of stopping the solve."""
    system = _tanh_recurrence(backend, n, dtype, seed)
    x0 = backend.asarray(np.zeros(3), dtype=dtype)
    ref = trisolve.forward_substitution(system, x0)
    s = {"jacobi": trisolve.Jacobi(), "taa": trisolve.TriangularAnderson(), "anderson": trisolve.Anderson()}[solver]
    sol = trisolve.solve(system, s, x0, update_map=trisolve.Picard(), atol=DTYPES[dtype])
    assert sol.status is trisolve.Status.CONVERGED, sol.message
    assert sol.num_rounds <= n
    assert np.all(np.isfinite(backend.to_numpy(sol.trajectory)))
    _close(backend, sol, ref, 1e-4 if dtype == "float32" else 1e-9)


@pytest.mark.filterwarnings("ignore::trisolve.NoProgressWarning")  # the slow case on purpose (test_reliability_core tests the warning)
@pytest.mark.slow
def test_the_issue_examples_end_at_forward_substitution_within_n_rounds():
    """Picard on the tanh recurrence (n = 800), TAA on the logistic map, a stiff oscillating Euler system under Picard."""
    rng = np.random.default_rng(0)
    n = 800
    u = rng.standard_normal((n + 1, 3))
    tanh_rec = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(0.9 * x[lo - 1 : hi - 1] + u[lo:hi]), n)
    sol = trisolve.solve(tanh_rec, trisolve.Jacobi(), np.zeros(3), update_map=trisolve.Picard(), atol=1e-10)
    assert sol.converged and sol.num_rounds <= n and np.nanmax(sol.round_max_errors) > 1e150  # it did blow up
    np.testing.assert_allclose(sol.trajectory, trisolve.forward_substitution(tanh_rec, np.zeros(3)), atol=1e-9)

    n = 150
    logistic = trisolve.BlackBoxSystem(lambda x, lo, hi: 3.9 * x[lo - 1 : hi - 1] * (1.0 - x[lo - 1 : hi - 1]), n)
    x0 = np.array([0.2, 0.4, 0.7])
    for m in (trisolve.OneStep(), trisolve.Picard()):
        with np.errstate(over="ignore", invalid="ignore"):  # the logistic map overflows at far iterates
            sol = trisolve.solve(logistic, trisolve.TriangularAnderson(), x0, update_map=m, atol=1e-12)
        assert sol.converged and sol.num_rounds <= n
        np.testing.assert_allclose(sol.trajectory, trisolve.forward_substitution(logistic, x0), atol=1e-9)

    n, h = 200, 0.05
    A = np.array([[-50.0, 20.0], [-20.0, -50.0]])  # |1 + h lambda| > 1: the explicit Euler step oscillates and grows
    stiff = trisolve.SemilinearSystem(np.ones(n), np.full(n, h), lambda y, lo, hi: y @ A.T)
    y0 = np.array([1.0, 0.0])
    ref = trisolve.forward_substitution(stiff, y0)
    for solver in (trisolve.Jacobi(), trisolve.TriangularAnderson()):
        sol = trisolve.solve(stiff, solver, y0, update_map=trisolve.Picard(), atol=1e-10, rtol=0.0)
        assert sol.converged and sol.num_rounds <= n
        np.testing.assert_allclose(sol.trajectory / np.abs(ref).max(), ref / np.abs(ref).max(), atol=1e-12)


def test_resuming_a_divergent_solve_gains_rows_every_call():
    system = _tanh_recurrence(NP, 200, "float32", 1)
    x0 = np.zeros(3, np.float32)
    ref = trisolve.forward_substitution(system, x0)
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Picard(), atol=1e-5, max_iter=10)
    gains = [sol.num_frozen - 1]
    while sol.status is trisolve.Status.MAX_ITER:
        before = sol.num_frozen
        sol = trisolve.solve(
            system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Picard(), atol=1e-5, max_iter=10, init=sol.trajectory, num_frozen=before
        )
        gains.append(sol.num_frozen - before)
    assert sol.converged and min(gains) >= 10 or (sol.converged and min(gains[:-1], default=10) >= 10)
    np.testing.assert_allclose(sol.trajectory, ref, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_accelerated_proposals_never_write_non_finite_values(backend):
    """F is nan at far iterates only (a domain error), so proposals there are non-finite: the driver replaces them."""
    xp = backend.xp
    n = 40

    def fn(x, lo, hi):
        prev = x[lo - 1 : hi - 1, ...]
        return xp.sqrt(1.5 - prev) * 0.5  # nan once an iterate passes 1.5; the solution stays near 0.4

    seen = []
    with np.errstate(invalid="ignore"):
        sol = trisolve.solve(
            trisolve.BlackBoxSystem(fn, n),
            trisolve.TriangularAnderson(safeguard=None, max_coefficient=1e12),
            backend.asarray(np.full(2, 10.0)),  # F_1 = sqrt(1.5 - 10) is nan, and row 1 reads only row 0
            callback=lambda info: seen.append(bool(np.all(np.isfinite(backend.to_numpy(info.trajectory))))),
        )
    assert sol.status is trisolve.Status.NONFINITE and sol.num_frozen == 1 and "row 1" in sol.message
    assert all(seen) and np.all(np.isfinite(backend.to_numpy(sol.trajectory)))
    # the logistic map: accelerated iterates overflow F to inf/nan at rows that are not final
    nonfinite_calls = []

    def logistic(x, lo, hi):
        prev = x[lo - 1 : hi - 1, ...]
        out = 3.9 * prev * (1.0 - prev)
        nonfinite_calls.append(not bool(np.all(np.isfinite(backend.to_numpy(out)))))
        return out

    system = trisolve.BlackBoxSystem(logistic, 50)
    x0 = backend.asarray(np.array([0.2, 0.7]))
    seen.clear()
    with np.errstate(over="ignore", invalid="ignore"):
        sol = trisolve.solve(
            system,
            trisolve.TriangularAnderson(),
            x0,
            update_map=trisolve.Picard(),
            atol=1e-12,
            callback=lambda info: seen.append(bool(np.all(np.isfinite(backend.to_numpy(info.trajectory))))),
        )
        ref = trisolve.forward_substitution(system, x0)
    assert any(nonfinite_calls)  # the path under test was taken
    assert sol.converged and sol.num_rounds <= 50 and all(seen)
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory), backend.to_numpy(ref), atol=1e-9)


# -- interrupts and callbacks ----------------------------------------------------------------


class _Boom(trisolve.Jacobi):
    """A solver whose step raises KeyboardInterrupt at a given call (an interrupt outside F)."""

    def __init__(self, at):
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "damping", 0.0)
        object.__setattr__(self, "calls", [0])

    def step(self, ctx, state):
        self.calls[0] += 1
        if self.calls[0] == self.at:
            raise KeyboardInterrupt
        return super().step(ctx, state)


class _Window(trisolve.WindowPolicy):
    def __init__(self, end, at=None):
        self._end, self.at, self.calls = end, at, 0

    def end(self, lo, n):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self._end(lo, n)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@hsettings(max_examples=10)
@given(seed=st.integers(0, 2**31), where=st.sampled_from(["F", "callback", "solver", "window"]), at=st.integers(1, 6))
def test_an_interrupt_anywhere_keeps_the_solution(backend, seed, where, at):
    rng = np.random.default_rng(seed)
    n = 30
    base = blackbox_system(rng, n, 2, (2,), backend, scale=1.3)
    calls = [0]

    def fn(x, lo, hi):
        calls[0] += 1
        if where == "F" and calls[0] == at:
            raise KeyboardInterrupt
        return base.fn(x, lo, hi)

    def callback(info):
        if where == "callback" and info.round == at:
            raise KeyboardInterrupt

    system = trisolve.BlackBoxSystem(fn, n)
    x0 = backend.asarray(rng.standard_normal(2))
    ref = backend.to_numpy(trisolve.forward_substitution(base, x0))
    solver = _Boom(at if where == "solver" else -1)
    window = _Window(lambda lo, n: min(lo + 8, n + 1), at if where == "window" else None)
    sol = trisolve.solve(system, solver, x0, window=window, callback=callback, atol=1e-12)
    assert sol.status is trisolve.Status.INTERRUPTED and isinstance(sol.error, KeyboardInterrupt)
    traj = backend.to_numpy(sol.trajectory)
    assert np.all(np.isfinite(traj))
    np.testing.assert_allclose(traj[: sol.num_frozen], ref[: sol.num_frozen], rtol=1e-9, atol=1e-9)
    rest = trisolve.solve(base, trisolve.Jacobi(), x0, init=sol.trajectory, num_frozen=sol.num_frozen, atol=1e-12)
    assert rest.converged and rest.num_rounds <= n + 1 - sol.num_frozen
    np.testing.assert_allclose(backend.to_numpy(rest.trajectory), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("delay", [2e-4, 1e-3, 3e-3, 1e-2])
def test_timer_delivered_interrupts_keep_the_work(delay):
    """A Ctrl-C delivered by a timer at an arbitrary point of the round loop (cheap F: mostly outside F)."""
    import signal

    n = 400
    rng = np.random.default_rng(0)
    base = blackbox_system(rng, n, 1, (3,), NP, scale=1.5)
    x0 = rng.standard_normal(3)
    ref = trisolve.forward_substitution(base, x0)

    def on_alarm(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, on_alarm)
    sol = None
    try:
        armed = []

        def arm(info):
            if not armed:
                armed.append(1)
                signal.setitimer(signal.ITIMER_REAL, delay)

        sol = trisolve.solve(base, trisolve.TriangularAnderson(), x0, callback=arm, atol=1e-12)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except KeyboardInterrupt:  # delivered after solve returned, in this test's own code
        signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, old)
    if sol is None:
        pytest.skip("the timer fired outside solve")
    assert sol.status in (trisolve.Status.INTERRUPTED, trisolve.Status.CONVERGED)
    assert np.all(np.isfinite(sol.trajectory))
    np.testing.assert_allclose(sol.trajectory[: sol.num_frozen], ref[: sol.num_frozen], atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_an_exception_in_the_callback_keeps_the_work(backend):
    rng = np.random.default_rng(2)
    system = blackbox_system(rng, 30, 1, (2,), backend, scale=1.3)
    x0 = backend.asarray(rng.standard_normal(2))

    def callback(info):
        if info.round == 4:
            raise RuntimeError("plotting failed")

    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, callback=callback, atol=1e-12)
    assert sol.status is trisolve.Status.FAILED and "plotting failed" in str(sol.error)
    assert sol.num_rounds == 4 and sol.num_frozen >= 5
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory)[: sol.num_frozen], ref[: sol.num_frozen], atol=1e-9)
    with pytest.raises(trisolve.SolveError, match="plotting failed"):
        sol.raise_for_status()


# -- memory ----------------------------------------------------------------------------------


def _full_window_working_memory(n: int, record: str) -> int:
    """Peak bytes of a full-window solve that needs n rounds, beyond the trajectory."""
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: 1.5 * np.sin(x[lo - 1 : hi - 1]) + 1.0, n)
    x0 = np.zeros(2)
    tracemalloc.start()
    tracemalloc.reset_peak()
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, atol=0.0, record=record)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sol.num_rounds > n // 2
    return peak - (n + 1) * 2 * 8


@pytest.mark.filterwarnings("ignore::trisolve.NoProgressWarning")  # the slow case on purpose (test_reliability_core tests the warning)
def test_records_are_o_rounds_by_default_and_per_row_only_on_request():
    small, large = _full_window_working_memory(200, "summary"), _full_window_working_memory(400, "summary")
    assert large < 2.6 * small, (small, large)  # linear in n (window temporaries), not quadratic
    per_row = _full_window_working_memory(400, "errors")
    assert per_row > 400 * 200 * 8 * 0.5  # the opt-in record holds about rounds x window / 2 floats
    sol = trisolve.solve(trisolve.BlackBoxSystem(lambda x, lo, hi: x[lo - 1 : hi - 1], 5), trisolve.Jacobi(), np.zeros(2))
    assert sol.round_errors is None and sol.round_max_errors.shape == (sol.num_rounds,)
    with pytest.raises(ValueError, match="record='errors'"):
        sol.residuals


def test_an_nn_module_F_keeps_no_autograd_graph():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    system = trisolve.SemilinearSystem(np.full(20, 0.5), np.full(20, 0.5), lambda x, lo, hi: net(x))
    x0 = torch.randn(4)
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Picard(), atol=1e-6, gradients=False)
    assert sol.converged and not sol.trajectory.requires_grad and sol.trajectory.grad_fn is None
    assert torch.is_grad_enabled()  # the caller's autograd mode is restored
    # gradients (by default: the parameters require grad) come from the adjoint (trisolve.gradients), not from the rounds
    with_grad = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Picard(), atol=1e-12)
    assert with_grad.converged and with_grad.trajectory.requires_grad


# -- inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("solver", [trisolve.Jacobi(), trisolve.TriangularAnderson()], ids=["jacobi", "taa"])
def test_F_returning_a_view_of_its_input_works(backend, solver):
    """Identity rows and skips: F_i = x_{i-1} for odd i (a view of the trajectory), a tanh step otherwise."""
    xp = backend.xp
    n = 21

    def fn(x, lo, hi):
        if hi - lo == 1 and lo % 2:
            return x[lo - 1 : hi - 1, ...]  # a view of the trajectory
        rows = [x[i - 1 : i, ...] if i % 2 else xp.tanh(x[i - 1 : i, ...]) + 0.5 for i in range(lo, hi)]
        return xp.concat(rows, axis=0)

    x0 = backend.asarray(np.array([0.1, -0.3]))
    ref = backend.to_numpy(trisolve.forward_substitution(trisolve.BlackBoxSystem(fn, n), x0))
    for window in (trisolve.SlidingWindow(1), trisolve.SlidingWindow(3)):
        sol = trisolve.solve(trisolve.BlackBoxSystem(fn, n), solver, x0, window=window, atol=1e-12)
        assert sol.converged
        np.testing.assert_allclose(backend.to_numpy(sol.trajectory), ref, atol=1e-10)
    whole = trisolve.BlackBoxSystem(lambda x, lo, hi: x[lo - 1 : hi - 1, ...], n)  # every row a view
    sol = trisolve.solve(whole, solver, x0, atol=0.0)
    assert sol.converged
    np.testing.assert_array_equal(backend.to_numpy(sol.trajectory), np.broadcast_to(backend.to_numpy(x0), (n + 1, 2)))


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_semilinear_tables_are_checked_before_the_first_round(backend):
    n = 6
    g = lambda x, lo, hi: backend.xp.tanh(x)
    x0 = backend.asarray(np.zeros(3))
    with pytest.raises(ValueError, match=r"c must have shape \(n, \*event\) with n = 6"):
        trisolve.SemilinearSystem(np.ones(n), np.ones(n), g, c=backend.asarray(np.zeros((5, 3))))
    no_event = trisolve.SemilinearSystem(np.ones(n), np.ones(n), g, c=backend.asarray(np.zeros(n)))  # c without event axes
    with pytest.raises(ValueError, match=r"c has shape \(6,\) but the trajectory needs \(n, \*event\) = \(6, 3\)"):
        trisolve.solve(no_event, trisolve.Jacobi(), x0)
    wrong_dtype = trisolve.SemilinearSystem(np.ones(n), np.ones(n), g, c=backend.asarray(np.zeros((n, 3)), dtype="float32"))
    with pytest.raises(TypeError, match="convert c to match x0"):
        trisolve.solve(wrong_dtype, trisolve.Jacobi(), x0)
    with pytest.raises(TypeError, match="c must be an array"):
        trisolve.SemilinearSystem(np.ones(n), np.ones(n), g, c=[0.0] * n)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@hsettings(max_examples=10)
@given(
    kind=st.sampled_from([np.int32, np.int64, np.uint16]),
    fkind=st.sampled_from([np.float32, np.float64]),
    size=st.integers(1, 6),
)
def test_numpy_scalar_types_are_accepted_wherever_python_numbers_are(backend, kind, fkind, size):
    rng = np.random.default_rng(size)
    system = semilinear_system(rng, 12, 2, (3,), backend)
    x0 = backend.asarray(rng.standard_normal(3))
    solver = trisolve.TriangularAnderson(history_size=kind(2), regularization=fkind(1e-6), max_coefficient=fkind(1e4))
    sol = trisolve.solve(
        system,
        solver,
        x0,
        update_map=trisolve.Picard(order=kind(min(size, 12))),
        window=trisolve.SlidingWindow(kind(size)),
        atol=fkind(1e-9),
        rtol=fkind(0.0),
        max_iter=kind(12),
        early_stop=fkind(0.0),
        num_frozen=kind(1),
    )
    assert sol.converged
    assert isinstance(solver.history_size, int) and isinstance(trisolve.Jacobi(damping=fkind(0.25)).damping, float)
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory), backend.to_numpy(trisolve.forward_substitution(system, x0)), atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_zero_size_events_and_meta_tensors_and_bad_windows_are_refused(backend):
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: x[lo - 1 : hi - 1, ...] * 0.5, 5)
    with pytest.raises(ValueError, match="no values"):
        trisolve.solve(system, trisolve.Jacobi(), backend.asarray(np.zeros((3, 0))))
    x0 = backend.asarray(np.zeros(2))
    for end, bad in [(lambda lo, n: lo, "empty"), (lambda lo, n: n + 5, "oversized"), (lambda lo, n: 2.5, "float")]:
        # a policy's fault found mid-solve keeps the work, as any exception in the rounds does
        sol = trisolve.solve(system, trisolve.Jacobi(), x0, window=_Window(end))
        assert sol.status is trisolve.Status.FAILED and isinstance(sol.error, ValueError)
        assert "a window [lo, hi) needs lo < hi <= n + 1" in str(sol.error)
    if backend.name == "torch":
        with pytest.raises(ValueError, match="meta device"):
            trisolve.solve(system, trisolve.Jacobi(), torch.zeros(2, device="meta"))
