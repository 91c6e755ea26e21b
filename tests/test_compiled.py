"""The compiled round (``solve(..., compile=True)``): the same solve as the eager round, and the code up to a CUDA-graph capture.

Compiling is slow (a second or two per graph on a CPU, and a configuration compiles 2-5 graphs: its
first round, the window's first length, a symbolic length, a last row alone), so the equality tests
are few and share what they compile: each solver, each compilable map and both window kinds appear
at least once (:data:`CORE`, the black-box test: Jacobi on the one-step map), the non-finite test
reuses :data:`CORE`'s first configuration, and ``sample(pipe, ..., compile=True)`` with DDIM reuses
the graphs the benchmark smoke (:func:`smoke`, run once for the module) compiled for the same digits
pipeline; the core system has a band of two, as a multistep sampler (DPM++(2M)) has.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from benchrun import run_benchmark

import trisolve
import trisolve.compiled as tc
import trisolve_diffusion as td
from trisolve_diffusion.models import load_digits_pipeline


def _same_solve(a: trisolve.Solution, b: trisolve.Solution, rtol: float = 1e-5) -> None:
    """Eager ``a`` and compiled ``b``: the same rounds, windows, frozen rows and statuses; values to float32 round-off
    (``rtol``: on the residuals and the trajectory; a network between two rounds carries a round's round-off into the next)."""
    assert b.error is None, b.error
    assert (a.status, a.num_rounds, a.num_evals, a.num_frozen) == (b.status, b.num_rounds, b.num_evals, b.num_frozen)
    assert a.windows == b.windows
    assert a.stats == b.stats  # restarts, rejections, rows whose coefficients fell back
    if a.round_errors is None:  # a sampler's solve records the summary: every round's largest scaled residual
        np.testing.assert_allclose(b.round_max_errors, a.round_max_errors, rtol=rtol, atol=1e-9)
    else:
        assert len(a.round_errors) == len(b.round_errors)
        for ea, eb in zip(a.round_errors, b.round_errors):  # every round's per-row scaled residuals
            np.testing.assert_allclose(eb, ea, rtol=rtol, atol=1e-9)
    torch.testing.assert_close(b.trajectory, a.trajectory, rtol=rtol, atol=1e-6)


def _band(n: int, p: int) -> np.ndarray:
    """``B`` of a band of ``p`` = 1 or 2 (two: a multistep sampler's form, DPM++(2M); the sampler test's DDIM has one)."""
    B = np.column_stack([np.full(n, 0.05), np.full(n, 0.02)])[:, :p]
    B[0, 1:] = 0.0  # row 1 reads no row before row 0
    return B


def _system(p: int, n: int = 12):
    return trisolve.SemilinearSystem(np.full(n, 0.97), _band(n, p), lambda y, lo, hi: torch.sin(y) + 0.1 * y * y, batch_ndim=1)


TAA = trisolve.TriangularAnderson(history_size=2)  # one configuration for the core and the non-finite tests: compiled once
# Picard damped per row, summed over 3 rows: one graph for every window length (order=None recurses on it, as Unrolled's does)
GAINS = trisolve.WeightedPicard(np.linspace(0.9, 1.0, 12), order=3)
CORE = [  # with the black-box test (Jacobi, one-step map, full window) and the sampler tests (TAA, Picard): every solver,
    # every compilable map and both window kinds at least once; Anderson and TAA share the sliding window's history code
    ("taa-weightedpicard3-full-band2", TAA, GAINS, None, 2),
    ("anderson-unrolled3-w4", trisolve.Anderson(history_size=2), trisolve.Unrolled(order=3), 4, 1),
]


def _fused_rounds(monkeypatch) -> list:
    """Records, per round that reached the solver, whether the driver wrote the fused call's rows (``_Run._fused_rows``)."""
    taken, rows = [], trisolve.driver._Run._fused_rows

    def spy(self, *a, **k):
        out = rows(self, *a, **k)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(trisolve.driver._Run, "_fused_rows", spy)
    return taken


@pytest.mark.parametrize("name,solver,update_map,window,band", CORE, ids=[c[0] for c in CORE])
def test_compiled_round_equals_the_eager_round_on_a_semilinear_system(name, solver, update_map, window, band, monkeypatch):
    x0 = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(update_map=update_map, window=window, atol=1e-6, record="errors")
    eager = trisolve.solve(_system(band), solver, x0, per_sample=False, **kw)  # a compiled solve is the lockstep batch
    taken = _fused_rounds(monkeypatch)
    compiled = trisolve.solve(_system(band), solver, x0, compile=True, **kw)
    assert eager.converged and eager.num_rounds > 1
    assert compiled.sample_rounds is None  # per_sample=True (the default) does not apply to a compiled solve
    _same_solve(eager, compiled)
    # the rounds ran as one compiled call each, and its rows were written (all but a round the safeguard restarted or rejected)
    assert sum(taken) >= max(1, len(taken) - eager.stats.get("num_restarts", 0) - eager.stats.get("num_rejections", 0))


def test_compiled_round_of_a_black_box_system(monkeypatch):
    """A system without an assembly hook (``evaluate_parts``' default): F from ``evaluate``, the rest in the fused call
    (Jacobi on the one-step map, a full window: the core configuration this file runs only here)."""
    x0 = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))

    def f(x, lo, hi):
        return 0.97 * x[lo - 1 : hi - 1] + 0.05 * torch.sin(x[lo - 1 : hi - 1])

    kw = dict(update_map=trisolve.OneStep(), atol=1e-6, record="errors")
    eager = trisolve.solve(trisolve.BlackBoxSystem(f, n=12, batch_ndim=1), trisolve.Jacobi(), x0, per_sample=False, **kw)
    taken = _fused_rounds(monkeypatch)
    compiled = trisolve.solve(trisolve.BlackBoxSystem(f, n=12, batch_ndim=1), trisolve.Jacobi(), x0, compile=True, **kw)
    _same_solve(eager, compiled)
    assert taken and all(taken)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_compiled_round_handles_non_finite_values_like_the_eager_round(bad):
    """F turns non-finite on one row in round 3: the same status, frozen rows and finite trajectory (inf also takes the careful re-read)."""

    def make():
        calls = []

        def g(y, lo, hi):
            calls.append(1)
            out = torch.sin(y) + 0.1 * y * y
            if len(calls) == 3:
                out[-1, 0, 0] = bad
            return out

        return trisolve.SemilinearSystem(np.full(12, 0.97), _band(12, 2), g, batch_ndim=1)

    x0 = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(update_map=GAINS, window=None, atol=1e-6, record="errors")  # CORE[0]'s configuration: its compiled graphs
    eager = trisolve.solve(make(), TAA, x0, per_sample=False, **kw)
    compiled = trisolve.solve(make(), TAA, x0, compile=True, **kw)
    assert torch.isfinite(compiled.trajectory).all()
    _same_solve(eager, compiled)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``benchmarks/launches.py --quick --compiled`` run once: its JSON payload and Markdown table. It compiles the default
    solver's graphs for the digits DDIM-10 pipeline with a full window, which the DDIM sampler test then reuses."""
    out = tmp_path_factory.mktemp("launches")
    with pytest.MonkeyPatch.context() as mp:
        run_benchmark("launches", ["--quick", "--compiled"], out, mp)
    return json.loads((out / "launches_compiled_quick.json").read_text()), (out / "launches_compiled_quick.md").read_text()


@pytest.mark.slow  # about 10 s on the 2-core CPU: the smoke's compiles
def test_compiled_benchmark_runs_at_smoke_size(smoke):
    payload, table = smoke
    assert [r["run"].rsplit("window ", 1)[1] for r in payload["side_by_side"]] == ["full"]  # the smoke compiles one window
    assert all(r[k] > 0 for r in payload["side_by_side"] for k in ("eager_ms", "compiled_ms", "cpu_eager_ms", "cpu_compiled_ms"))
    assert "fused_round" in {r["function"] for r in payload["functions"]}  # the round as one compiled call (TAA on Picard)
    assert all(r["compiled_flushed_us"] > 0 and r["eager_flushed_us"] > 0 for r in payload["functions"])
    for parts in payload["round_parts"].values():  # the round's host time by part: the fused call only in the compiled solve
        assert parts["compiled"]["fused call"] > 0
        assert parts["eager"]["eager round arithmetic"] > 0 and parts["eager"]["fused call"] == 0
        assert all(p["round"] > 0 and p["network wrapper"] > 0 for p in parts.values())
    assert all(r["first_compiled_s"] > 0 and r["second_compiled_s"] > 0 for r in payload["compile_cost"])
    assert table.count("|") > 10


@pytest.mark.slow  # on the smoke's graphs: its compiled functions are cached for the process
def test_compiled_sampler_equals_the_eager_sampler(smoke):
    """``sample(pipe, ..., compile=True)`` with the default solver (TAA on Picard), the real digits UNet: the eager sample and
    records. DDIM-10 on a full window is the benchmark smoke's configuration, so it runs on the graphs the smoke compiled
    (a multistep sampler's band of two: the core tests' system)."""
    pipe = load_digits_pipeline("ddim")
    pipe.set_progress_bar_config(disable=True)
    out = {c: td.sample(pipe, batch_size=1, num_inference_steps=10, window=trisolve.FullWindow(), output_type="np",
                        generator=torch.manual_seed(0), compile=c) for c in (False, True)}  # fmt: skip
    assert out[False].solution.num_rounds > 2
    # the UNet carries the fused round's float32 round-off (inductor's fused sums) into the next round's residuals
    _same_solve(out[False].solution, out[True].solution, rtol=1e-4)
    np.testing.assert_allclose(out[True].images, out[False].images, rtol=0, atol=1e-5)


@pytest.mark.slow  # its compiles: a sliding window's overlaps with the previous round take several shapes
def test_compiled_multistep_sampler_in_a_sliding_window(monkeypatch):
    """``sample_latents(..., compile=True)`` with the real DPM++(2M) mapping (diffusers' ``DPMSolverMultistepScheduler``: a band
    of two), TAA on Picard in a sliding window of 3 (its fixed length, then the shrinking last rounds): the eager sample and
    records, and the fused call's rows written in the accelerated rounds. A closed-form denoiser keeps the network free; few
    steps and rows keep the compiled shapes few, and a map of order 2 gives the test its own compiled functions (on the
    smoke's, TAA on Picard of any order, its new shapes recompiled them at twice the cost)."""
    from diffusers import DPMSolverMultistepScheduler

    from trisolve_diffusion.models.closed_form import GaussianMixtureDenoiser

    sched = DPMSolverMultistepScheduler(num_train_timesteps=200)
    sched.set_timesteps(6)
    g = torch.Generator().manual_seed(0)
    model = GaussianMixtureDenoiser(torch.rand(6, 2, 4, 4, generator=g) * 2 - 1, sched.alphas_cumprod, std=0.05)
    latents = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    out = {}
    for compile in (False, True):
        taken = _fused_rounds(monkeypatch) if compile else None
        out[compile] = td.sample_latents(lambda x, t: model(x, t).sample, sched, latents, solver=TAA, update_map=trisolve.Picard(order=2),
                                         window=3, atol=1e-5, rtol=0.0, final_row_atol=None, progress=False, compile=compile,
                                         per_sample=False)  # fmt: skip
    (x_e, sol_e), (x_c, sol_c) = out[False], out[True]
    assert sol_e.num_rounds > 2 and max(hi - lo for lo, hi in sol_e.windows) == 3  # a sliding window that moved
    _same_solve(sol_e, sol_c)
    torch.testing.assert_close(x_c, x_e, rtol=1e-5, atol=1e-6)
    assert sum(taken) >= len(taken) - sol_e.stats["num_restarts"] - sol_e.stats["num_rejections"] > 0


def test_compile_is_validated():
    x0 = np.zeros(2)
    sys = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1]), n=3)
    with pytest.raises(TypeError, match="needs PyTorch tensors"):
        trisolve.solve(sys, trisolve.Jacobi(), x0, compile=True)
    with pytest.raises(TypeError, match="compile must be True or False"):
        trisolve.solve(sys, trisolve.Jacobi(), x0, compile=1)
    with pytest.raises(TypeError, match="compile must be True or False"):
        td.SolveOptions(compile="yes")


def test_compiled_functions_are_cached_per_configuration(monkeypatch):
    """One ``torch.compile`` per (function, device type, key), kept across solves; CUDA gets CUDA graphs (no compiling here)."""
    made = []

    def fake_compile(fn, **kw):
        made.append((fn, kw))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    tc.clear_cache()
    try:

        def f(a):
            return a + 1

        cpu = tc.RoundCompiler("cpu")
        assert cpu(f, "k") is cpu(f, "k") is tc.RoundCompiler("cpu")(f, "k")
        assert len(made) == 1 and made[0][1] == {"dynamic": None, "fullgraph": False,
                                                  "options": {"guard_filter_fn": tc.skip_global_guards, "size_asserts": False}}
        assert made[0][0] is not f and made[0][0].__code__ is not f.__code__  # its own code object: its own recompile budget

        def g(a, *, b=2):
            return a + b

        assert cpu(g, "k")(1) == 3  # the copy keeps keyword-only defaults
        cpu(f, "other")
        assert len(made) == 3  # f, g, and f under another key
        cuda = tc.RoundCompiler("cuda")(f, "k")
        assert made[-1][1]["options"]["triton.cudagraphs"] and cuda is not made[-1][0]  # wrapped: outputs copied out of the graph
        assert "mode" not in made[-1][1]  # torch.compile takes mode= or options=, not both: reduce-overhead's option itself
    finally:
        tc.clear_cache()


def test_cuda_graph_outputs_are_copies(monkeypatch):
    """The CUDA wrapper marks a new step before each replay and returns copies (the next replay overwrites the graph's buffers)."""
    steps = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    buffer = torch.zeros(3)

    def replay(a):
        buffer.copy_(a)
        return buffer, (buffer, 2)

    call = tc._replayed(replay)
    out, (again, two) = call(torch.ones(3))
    assert steps == [1] and two == 2
    assert out.data_ptr() != buffer.data_ptr() and again.data_ptr() != buffer.data_ptr()
    call(torch.full((3,), 5.0))
    assert torch.equal(out, torch.ones(3))  # the first call's output survives the second replay


@pytest.mark.parametrize("solver", [trisolve.TriangularAnderson(history_size=3), trisolve.Anderson(history_size=3)], ids=["taa", "anderson"])
def test_fused_step_proposes_what_step_does(solver):
    """Without compiling: the fused step's function -- history padded to m pairs, the safeguard's restart on the device --
    proposes what ``step`` does, round after round (restarts included), and keeps an equivalent state."""
    import array_api_compat.torch as xp

    gen = torch.Generator().manual_seed(3)
    n, start = 8, 1
    errors = [[2.0] * 7, [1.5] * 6, [3.0] * 5, [1.0] * 4, [0.8] * 3]  # grows in round 3: a restart that drops the kept pair
    eager = fused = solver.init()
    restarts = 0
    for k, err in enumerate(errors):
        lo = 1 + k
        hi = n
        x = torch.randn(hi - lo, 2, 3, generator=gen, dtype=torch.float64)
        r = 0.5 ** k * torch.randn(hi - lo, 2, 3, generator=gen, dtype=torch.float64)
        ctx = trisolve.StepContext(x=x, g=x + r, r=r, errors=np.asarray(err), lo=lo, hi=hi, start=start, batch_ndim=1, xp=xp)
        expect, eager = solver.step(ctx, eager)
        step = solver.fused_step(fused, lo, hi, xp=xp)
        err_dev = torch.tensor(err, dtype=torch.float64)
        proposal, checks, outputs = step.fn(x, x + r, r, torch.tensor(start), err_dev, *step.arrays, batch_ndim=1, xp=xp)
        taken, fused = step.finish(ctx, outputs, np.zeros(0) if checks is None else checks.numpy())
        assert taken
        torch.testing.assert_close(proposal[start:], expect[start:], rtol=1e-12, atol=1e-12)
        restarts += int(checks is not None and bool(checks[0] > 0.5))
    assert solver.stats(fused) == solver.stats(eager) and eager.num_restarts == restarts == 1


def test_guards_on_module_globals_are_skipped_and_on_arguments_kept():
    """The guard filter drops guards on module globals (code and constants fixed for the process) and keeps the rest;
    a compiled function still recompiles for a new static argument and a new dtype (the argument guards stay)."""
    from types import SimpleNamespace

    entries = [SimpleNamespace(is_global=True, guard_type="ID_MATCH"), SimpleNamespace(is_global=False, guard_type="TENSOR_MATCH"),
               SimpleNamespace(is_global=False, guard_type="CONSTANT_MATCH")]  # fmt: skip
    assert tc.skip_global_guards(entries) == [False, True, True]

    def scaled(a, *, k):
        return a * k

    tc.clear_cache()
    try:
        f = tc.RoundCompiler("cpu")(scaled, "guards")
        x = torch.arange(4.0)
        assert torch.equal(f(x, k=2.0), x * 2) and torch.equal(f(x, k=3.0), x * 3)  # a new constant: its value, never the first call's
        assert f(x.double(), k=2.0).dtype == torch.float64  # a new dtype: recompiled
    finally:
        tc.clear_cache()


def test_the_freeze_rule_on_the_device_decides_as_the_host_rule():
    """The fused round's freeze rule (``driver._freeze_ends_device``) against the host rule (``driver._freeze_ends``,
    lockstep): the same end and the same new state, bitwise, on errors with nan, inf, zeros and values at the thresholds,
    states never measured (inf), zero, nan and with pass streaks, every ``start``. (Compiled, inside the fused round: the
    solve tests above, whose frozen rows and windows are the eager solve's.)"""
    import array_api_compat.torch as xp

    from trisolve.driver import FREEZE_FRACTION, FREEZE_PASSES, _freeze_ends, _freeze_ends_device, _settle_state

    rng = np.random.default_rng(5)
    special = np.array([np.nan, np.inf, 0.0, 1.0, 1.0 + 1e-12, FREEZE_FRACTION, 0.5, 2.0, 1e-3, 1e-9])
    checked = 0
    for case in range(60):
        w = (1, 2, 7)[case % 3]
        err = rng.choice(special, w) if case % 2 else rng.uniform(0.0, 1.2, w) * rng.choice([1e-4, 1e-2, 1.0], w)
        state = _settle_state((w,))
        measured = rng.random(w) < 0.7
        state[measured, 0] = rng.choice(np.array([0.0, np.nan, 1e-6, 0.01, 0.3, 1.0, 5.0]), int(measured.sum()))
        state[:, 1] = rng.integers(0, FREEZE_PASSES + 1, w)
        for start in range(1, w + 1):
            end, new = _freeze_ends(err[:, None], state[:, None], np.zeros(1, dtype=np.int64), np.array([start]))
            got_end, got = _freeze_ends_device(torch.from_numpy(err), torch.from_numpy(state), torch.tensor(start), xp=xp)
            assert int(got_end) == int(end[0]), (err, state, start)
            np.testing.assert_array_equal(got.numpy(), new[:, 0])
            checked += 1
    assert checked == 200  # 20 windows each of 1, 2 and 7 rows, every start
