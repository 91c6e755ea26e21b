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


@pytest.mark.parametrize("name,solver,update_map,window", CORE, ids=[c[0] for c in CORE])
def test_compiled_round_equals_the_eager_round_on_a_semilinear_system(name, solver, update_map, window):
    x0 = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(update_map=update_map, window=window, atol=1e-6, record="errors")
    eager = trisolve.solve(_system(), solver, x0, per_sample=False, **kw)  # a compiled solve is the lockstep batch
    compiled = trisolve.solve(_system(), solver, x0, compile=True, **kw)
    assert eager.converged and eager.num_rounds > 1
    assert compiled.sample_rounds is None  # per_sample=True (the default) does not apply to a compiled solve
    _same_solve(eager, compiled)


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
        assert len(made) == 1 and made[0][1] == {"dynamic": None, "fullgraph": False}
        assert made[0][0] is not f and made[0][0].__code__ is not f.__code__  # its own code object: its own recompile budget
        cpu(f, "other")
        assert len(made) == 2
        cuda = tc.RoundCompiler("cuda")(f, "k")
        assert made[-1][1]["mode"] == "reduce-overhead" and cuda is not made[-1][0]  # wrapped: outputs copied out of the graph
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
    assert {r["function"] for r in payload["functions"]} == {"_round_arrays", "_update"}
    assert all(r["first_compiled_s"] > 0 and r["second_compiled_s"] > 0 for r in payload["compile_cost"])
    assert (tmp_path / "launches_compiled_quick.md").read_text().count("|") > 10
