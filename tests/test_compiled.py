"""The compiled round (``solve(..., compile=True)``): the same solve as the eager round, and the code up to a CUDA-graph capture.

Compiling is slow (seconds per graph on a CPU; the first in a process about 20 s), so the
equality tests are few and small: each solver, each compilable map and both window kinds
appear at least once on the core, and DDIM and DPM++(2M) once each through ``sample_latents``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from benchrun import run_benchmark
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

import trisolve
import trisolve.compiled as tc
import trisolve_diffusion as td
from trisolve_diffusion.models.closed_form import GaussianMixtureDenoiser


def _same_solve(a: trisolve.Solution, b: trisolve.Solution) -> None:
    """Eager ``a`` and compiled ``b``: the same rounds, windows, frozen rows and statuses; values to float32 round-off."""
    assert b.error is None, b.error
    assert (a.status, a.num_rounds, a.num_evals, a.num_frozen) == (b.status, b.num_rounds, b.num_evals, b.num_frozen)
    assert a.windows == b.windows
    assert a.stats == b.stats  # restarts, rejections, rows whose coefficients fell back
    assert len(a.round_errors) == len(b.round_errors)
    for ea, eb in zip(a.round_errors, b.round_errors):  # every round's per-row scaled residuals
        np.testing.assert_allclose(eb, ea, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(b.trajectory, a.trajectory, rtol=1e-5, atol=1e-6)


def _system(n: int = 12):
    return trisolve.SemilinearSystem(np.full(n, 0.97), np.full(n, 0.05), lambda y, lo, hi: torch.sin(y) + 0.1 * y * y, batch_ndim=1)


TAA = trisolve.TriangularAnderson(history_size=2)  # one configuration for the core and the sampler tests: compiled once
CORE = [  # every solver, every compilable map, full and sliding windows, each at least once
    ("jacobi-onestep-full", trisolve.Jacobi(), trisolve.OneStep(), None),
    ("taa-picard-full", TAA, trisolve.Picard(), None),
    ("taa-unrolled3-w4", TAA, trisolve.Unrolled(order=3), 4),
    ("anderson-onestep-w4", trisolve.Anderson(history_size=2), trisolve.OneStep(), 4),
    ("anderson-unrolled3-full", trisolve.Anderson(history_size=2), trisolve.Unrolled(order=3), None),
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


@pytest.mark.parametrize("name,solver,update_map,window", CORE, ids=[c[0] for c in CORE])
def test_compiled_round_equals_the_eager_round_on_a_semilinear_system(name, solver, update_map, window, monkeypatch):
    x0 = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(update_map=update_map, window=window, atol=1e-6, record="errors")
    eager = trisolve.solve(_system(), solver, x0, per_sample=False, **kw)  # a compiled solve is the lockstep batch
    taken = _fused_rounds(monkeypatch)
    compiled = trisolve.solve(_system(), solver, x0, compile=True, **kw)
    assert eager.converged and eager.num_rounds > 1
    assert compiled.sample_rounds is None  # per_sample=True (the default) does not apply to a compiled solve
    _same_solve(eager, compiled)
    # the rounds ran as one compiled call each, and its rows were written (all but a round the safeguard restarted or rejected)
    assert sum(taken) >= max(1, len(taken) - eager.stats.get("num_restarts", 0) - eager.stats.get("num_rejections", 0))


def test_compiled_round_of_a_black_box_system(monkeypatch):
    """A system without an assembly hook (``evaluate_parts``' default): F from ``evaluate``, the rest in the fused call."""
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

        return trisolve.SemilinearSystem(np.full(12, 0.97), np.full(12, 0.05), g, batch_ndim=1)

    x0 = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(update_map=trisolve.Picard(), window=None, atol=1e-6, record="errors")
    eager = trisolve.solve(make(), TAA, x0, per_sample=False, **kw)
    compiled = trisolve.solve(make(), TAA, x0, compile=True, **kw)
    assert torch.isfinite(compiled.trajectory).all()
    _same_solve(eager, compiled)


SCHEDULERS = [
    ("ddim", lambda: DDIMScheduler(num_train_timesteps=200, clip_sample=False)),
    ("dpm++2m", lambda: DPMSolverMultistepScheduler(num_train_timesteps=200)),
]


@pytest.mark.slow  # 35-100 s each on the loaded 2-core CPU: its compiles
@pytest.mark.parametrize("name,make", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_compiled_sampler_equals_the_eager_sampler(name, make):
    """``sample_latents(..., compile=True)`` with TAA on the default Picard map, a sliding window: the eager sample and records."""
    sched = make()
    sched.set_timesteps(12)
    g = torch.Generator().manual_seed(0)
    model = GaussianMixtureDenoiser(torch.rand(6, 2, 4, 4, generator=g) * 2 - 1, sched.alphas_cumprod, std=0.05)
    latents = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    out = {}
    for compile in (False, True):
        out[compile] = td.sample_latents(lambda x, t: model(x, t).sample, sched, latents, solver=TAA, window=4, atol=1e-5, rtol=0.0,
                                         progress=False, compile=compile, per_sample=False)  # fmt: skip
    (x_e, sol_e), (x_c, sol_c) = out[False], out[True]
    assert sol_e.num_rounds < 12
    _same_solve(sol_e, sol_c)
    torch.testing.assert_close(x_c, x_e, rtol=1e-5, atol=1e-6)


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


@pytest.mark.slow
def test_compiled_benchmark_runs_at_smoke_size(tmp_path, monkeypatch):
    import json

    run_benchmark("launches", ["--quick", "--compiled"], tmp_path, monkeypatch)
    payload = json.loads((tmp_path / "launches_compiled_quick.json").read_text())
    assert {r["run"].rsplit("window ", 1)[1] for r in payload["side_by_side"]} == {"full", "8"}
    assert all(r[k] > 0 for r in payload["side_by_side"] for k in ("eager_ms", "compiled_ms", "cpu_eager_ms", "cpu_compiled_ms"))
    assert "fused_round" in {r["function"] for r in payload["functions"]}  # the round as one compiled call (TAA on Picard)
    assert all(r["compiled_flushed_us"] > 0 and r["eager_flushed_us"] > 0 for r in payload["functions"])
    for parts in payload["round_parts"].values():  # the round's host time by part: the fused call only in the compiled solve
        assert parts["compiled"]["fused call"] > 0
        assert parts["eager"]["eager round arithmetic"] > 0 and parts["eager"]["fused call"] == 0
        assert all(p["round"] > 0 and p["network wrapper"] > 0 for p in parts.values())
    assert all(r["first_compiled_s"] > 0 and r["second_compiled_s"] > 0 for r in payload["compile_cost"])
    assert (tmp_path / "launches_compiled_quick.md").read_text().count("|") > 10


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
