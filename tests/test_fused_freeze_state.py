"""The freeze rule's state on the device in a fused (compiled) solve, and the contention's failure signalling on more
ranks (from the hostile review of the session that moved the rule into the fused round).

The fused-round tests run the fused path (``solve(..., compile=True)``) with ``trisolve.compiled.eager`` in place of the
round compiler (``torch.compile`` is not what is reviewed here, and takes tens of seconds a graph on this CPU): the
driver's device-state bookkeeping (``_Run._freeze``, the settle tensor, the reads and write-backs on unfused rounds)
is the code under test, compared round by round with the eager solve (the host rule on a NumPy state).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trisolve
import trisolve.compiled as tc
import trisolve.driver as drv
from trisolve._backend import to_host


def _band(n: int) -> np.ndarray:
    B = np.column_stack([np.full(n, 0.05), np.full(n, 0.02)])
    B[0, 1:] = 0.0
    return B


def _system(n: int = 14, bad: dict | None = None, slow: float = 0.0):
    """A semilinear system (band 2); ``bad``: ``{evaluation number: (row in the evaluated block, value)}`` written into
    that evaluation's output (a non-finite value in a middle row: the careful second read); ``slow`` adds a term that
    makes the rows converge slowly (rows pass the step test for several rounds before they settle: the rule's streak)."""
    calls = []

    def g(y, lo, hi):
        calls.append(1)
        out = torch.sin(y) + 0.1 * y * y + slow * torch.cos(3.0 * y)
        if bad and len(calls) in bad:
            row, value = bad[len(calls)]
            if row < out.shape[0]:
                out[row, 0, 0] = value
        return out

    return trisolve.SemilinearSystem(np.full(n, 0.97), _band(n), g, batch_ndim=1)


class _Trace:
    """Every ``_Run._freeze`` call: ``(lo, hi, start in, freeze end, whether the device rule was taken, the rows' new state)``."""

    def __init__(self, monkeypatch):
        self.calls = []
        orig = drv._Run._freeze

        def spy(run, err, lo, hi, start, device_rule):
            end = orig(run, err, lo, hi, start, device_rule)
            state = run.settle[lo:hi]
            state = np.array(to_host(state) if not isinstance(state, np.ndarray) else state, dtype=np.float64)
            self.calls.append((lo, hi, start, end, device_rule is not None, state))
            return end

        monkeypatch.setattr(drv._Run, "_freeze", spy)


def _eager_fused(monkeypatch):
    """``compile=True`` runs the fused round as written (no ``torch.compile``): the driver's fused path, quickly."""
    monkeypatch.setattr(drv, "RoundCompiler", lambda device_type: tc.eager)


def _compare(a, b, ta: _Trace, tb: _Trace):
    assert (a.status, a.num_rounds, a.num_evals, a.num_frozen) == (b.status, b.num_rounds, b.num_evals, b.num_frozen)
    assert a.windows == b.windows
    assert len(ta.calls) == len(tb.calls)
    for ca, cb in zip(ta.calls, tb.calls):
        assert ca[:4] == cb[:4], (ca[:4], cb[:4])  # window, start, freeze end: the same decisions
        np.testing.assert_allclose(cb[5][:, 1], ca[5][:, 1])  # pass streaks equal
        np.testing.assert_allclose(cb[5][:, 0], ca[5][:, 0], rtol=1e-5, atol=1e-9)  # the errors to float32 round-off
    torch.testing.assert_close(b.trajectory, a.trajectory, rtol=1e-5, atol=1e-6)


SCENARIOS = {
    # a sliding window that slides and shrinks at the end; the rule's streak decides (slow rows)
    "taa-sliding5-slow": dict(solver=trisolve.TriangularAnderson(history_size=2), window=5, slow=0.3),
    # Jacobi on Picard: no restarts; the full window
    "jacobi-picard-full": dict(solver=trisolve.Jacobi(), window=None, slow=0.3),
    # an inf in a middle row of round 3: the careful second read, so the host rule on the device's state, then fused again
    "taa-inf-middle-row": dict(solver=trisolve.TriangularAnderson(history_size=2), window=6, bad={3: (2, float("inf"))}),
    # a nan in a middle row: an unconverged row whose freeze end the rule decides with a nan error
    "anderson-nan-middle-row": dict(solver=trisolve.Anderson(history_size=2), window=6, bad={4: (3, float("nan"))}),
    # windows of one and two rows (the rule's w = 1 branch), the output-aware finish and early stop: more entries in the
    # decisions vector before the fused round's tail (its freeze end and start are read from the end)
    "taa-window1": dict(solver=trisolve.TriangularAnderson(history_size=2), window=1, slow=0.3),
    "jacobi-window2-final-row-atol": dict(solver=trisolve.Jacobi(), window=2, slow=0.3, extra=dict(final_row_atol=1e-4)),
    "taa-full-early-stop": dict(solver=trisolve.TriangularAnderson(history_size=2), window=None, slow=0.3, extra=dict(early_stop=1e-3)),
}


@pytest.mark.parametrize("gradients", [None, False], ids=["probe-first-round-unfused", "all-fused"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fused_solve_keeps_the_freeze_state_on_the_device_and_decides_as_the_eager_solve(name, gradients, monkeypatch):
    """The fused solve's freeze decisions and per-row state equal the eager solve's round by round: window, start, the
    rule's end and the new state of the window's rows, through slides, a shrinking last window, the unfused first round
    (``gradients=None``) and careful second reads; and the device rule is really taken (the fused path ran)."""
    sc = SCENARIOS[name]
    x0 = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(update_map=trisolve.Picard(), window=sc["window"], atol=1e-6, gradients=gradients, max_iter=200, **sc.get("extra", {}))
    ta = _Trace(monkeypatch)
    eager = trisolve.solve(_system(bad=sc.get("bad"), slow=sc.get("slow", 0.0)), sc["solver"], x0, per_sample=False, **kw)
    monkeypatch.undo()  # drop the first spy, then spy again with the eager compiler in place
    _eager_fused(monkeypatch)
    tb = _Trace(monkeypatch)
    fused = trisolve.solve(_system(bad=sc.get("bad"), slow=sc.get("slow", 0.0)), sc["solver"], x0, compile=True, **kw)
    assert eager.num_rounds > 2
    assert any(c[4] for c in tb.calls), "the fused round's device rule was never taken"
    assert not any(c[4] for c in ta.calls)
    if gradients is None:
        assert not tb.calls[0][4]  # the probe round runs unfused: the host rule, on the host state (it moves to the device at the first fused round)
    if "bad" in sc and sc["bad"][next(iter(sc["bad"]))][1] == float("inf"):
        assert not all(c[4] for c in tb.calls[1:])  # the careful read's round: the host rule again, mid-solve
    # the rule made a real decision somewhere (rows below start stayed in the window), else the test would be vacuous
    # (a window of one row: its row always becomes final)
    assert sc["window"] == 1 or any(c[3] < c[2] for c in ta.calls), [(c[2], c[3]) for c in ta.calls]
    _compare(eager, fused, ta, tb)


def test_fused_solve_on_a_float32_only_device_keeps_the_freeze_state_on_the_host(monkeypatch):
    """Where the device has no float64 (``work_dtype`` float32: MPS), the state stays a NumPy array and the host rule
    decides; the solve equals the eager one."""
    x0 = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(update_map=trisolve.Picard(), window=5, atol=1e-6, gradients=False)
    solver = trisolve.TriangularAnderson(history_size=2)
    ta = _Trace(monkeypatch)
    eager = trisolve.solve(_system(slow=0.3), solver, x0, per_sample=False, **kw)
    monkeypatch.undo()
    _eager_fused(monkeypatch)
    monkeypatch.setattr(drv, "work_dtype", lambda xp, dev: xp.float32)
    seen = []
    init = drv._Run.__init__

    def spy_init(run, **k):
        init(run, **k)
        seen.append((run.fused, isinstance(run.settle, np.ndarray)))

    monkeypatch.setattr(drv._Run, "__init__", spy_init)
    tb = _Trace(monkeypatch)
    fused = trisolve.solve(_system(slow=0.3), solver, x0, compile=True, **kw)
    assert seen == [(True, True)]
    assert not any(c[4] for c in tb.calls)
    _compare(eager, fused, ta, tb)


# -- the contention's failure signalling, on three ranks, at every call ------------------------------------------------


def _three_rank_failure_cases():
    from trisolve_diffusion import cost_model as cm

    pairs = cm.CONTENTION_PAIRS
    cases = [(0, k) for k in range(1, 2 + 2 * pairs)]  # rank 0: warm-up, then (alone, together) per pair
    cases += [(r, k) for r in (1, 2) for k in range(1, 2 + pairs)]  # ranks 1, 2: warm-up, then together per pair
    return cases


@pytest.mark.parametrize("failing,on_call", _three_rank_failure_cases())
def test_contention_on_three_ranks_raises_on_every_rank_whichever_call_fails(failing, on_call):
    """Every place a network call can raise in ``_contention`` (each rank, each call), three ranks as threads: no rank
    is left waiting in a collective (a 5 s barrier), the failing rank raises its own exception, the others a
    DistributedError naming it; every rank makes the same collectives."""
    from test_cost_model import _failing_network, _ThreadRanks

    from trisolve_diffusion import cost_model as cm

    fault = RuntimeError(f"boom on rank {failing}")
    calls, call_for = _failing_network({failing: fault}, on_call, pause=0.0005)
    group = _ThreadRanks(world=3, timeout=5)
    out, errors = group.run(lambda info: cm._contention(info, call_for(info.rank), None))
    assert out == [None, None, None]
    assert errors[failing] is fault
    for r in range(3):
        if r != failing:
            assert isinstance(errors[r], trisolve.DistributedError), errors
            assert f"rank {failing}: RuntimeError: boom on rank {failing}" in str(errors[r])
    assert calls[failing] == on_call
    assert group.kinds[0] == group.kinds[1] == group.kinds[2] and "broadcast" not in group.kinds[0]


def test_contention_when_two_ranks_fail_at_once_each_raises_its_own():
    """Ranks 0 and 2 fail in their warm-ups, rank 1 does not: ranks 0 and 2 raise their own exceptions, rank 1 a
    DistributedError naming both."""
    from test_cost_model import _failing_network, _ThreadRanks

    from trisolve_diffusion import cost_model as cm

    faults = {0: ValueError("zero"), 2: KeyboardInterrupt()}
    _, call_for = _failing_network(faults)
    group = _ThreadRanks(world=3, timeout=5)
    out, errors = group.run(lambda info: cm._contention(info, call_for(info.rank), None))
    assert errors[0] is faults[0] and errors[2] is faults[2]
    assert isinstance(errors[1], trisolve.DistributedError)
    msg = str(errors[1])
    assert "rank(s) [0, 2]" in msg and "rank 0: ValueError: zero" in msg and "rank 2: KeyboardInterrupt" in msg, msg


@pytest.mark.slow  # torch.compile: test_compiled's CORE[1] configuration (Anderson, Unrolled(3), window 4, band 1, x0 (3, 8))
def test_compiled_solve_whose_freeze_rule_keeps_passing_rows_decides_as_the_eager_solve(monkeypatch):
    """The real compiled round (inductor) on a system whose rows pass the step test for rounds before they settle, so
    the device rule's end falls below ``start``: the same windows, starts, freeze ends and pass streaks as the eager
    solve, round by round (the graphs are test_compiled's CORE[1]'s: only the network's values differ)."""
    from test_compiled import CORE, _band

    _, solver, update_map, window, band = CORE[1]

    def make():
        g = lambda y, lo, hi: torch.sin(y) + 0.1 * y * y + 0.3 * torch.cos(3.0 * y)  # noqa: E731
        return trisolve.SemilinearSystem(np.full(12, 0.97), _band(12, band), g, batch_ndim=1)

    x0 = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(update_map=update_map, window=window, atol=1e-6, record="errors")
    ta = _Trace(monkeypatch)
    eager = trisolve.solve(make(), solver, x0, per_sample=False, **kw)
    monkeypatch.undo()
    tb = _Trace(monkeypatch)
    compiled = trisolve.solve(make(), solver, x0, compile=True, **kw)
    assert any(c[4] for c in tb.calls), "the device rule was never taken"
    assert any(c[3] < c[2] for c in ta.calls), "the rule never kept a passing row: the test would be vacuous"
    _compare(eager, compiled, ta, tb)


@pytest.mark.parametrize("setting", ["Euler-10", "EulerA-10", "UniPC-10", "PNDM-10"])
def test_diffusion_benchmark_labels_its_default_with_the_solver_the_sampler_runs(setting, monkeypatch):
    """``benchmarks/diffusion.py``'s ``default_label`` (the "(default)" records of the scheduler settings) against what
    ``sample_latents`` with its defaults actually passes to ``trisolve.solve`` (spied), on each scheduler setting; and the
    "latent rows" variant's label against ``td.default_solver`` on the unscaled mapping."""
    import importlib
    import sys

    from benchrun import BENCH

    import trisolve_diffusion as td
    import trisolve_diffusion.sampler as smp

    monkeypatch.syspath_prepend(str(BENCH))
    for mod in ("common", "diffusion"):
        sys.modules.pop(mod, None)
    bd = importlib.import_module("diffusion")
    seen, solve = [], trisolve.solve

    def spy(system, solver, x0, **kw):
        seen.append(f"TAA m={solver.history_size}, {type(kw['update_map']).__name__}")
        return solve(system, solver, x0, **kw)

    monkeypatch.setattr(smp.trisolve, "solve", spy)
    sched = bd.make_scheduler(setting, 10)
    mapping = td.map_scheduler(sched)
    x0 = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    td.sample_latents(lambda x, t: 0.1 * x, sched, x0, generator=torch.Generator().manual_seed(1), window=trisolve.FullWindow(), progress=False)
    assert seen == [bd.default_label(mapping.scaled())]
    solver, update_map = td.default_solver(mapping)
    assert bd.default_label(mapping) == f"TAA m={solver.history_size}, {type(update_map).__name__}"
    if setting.startswith("EulerA"):
        assert "WeightedPicard" in seen[0]  # the noise-injecting loop: not the old fixed "Picard" label


class _UnfusedJacobi(trisolve.Jacobi):
    """A solver that offers no fused step (as a user's own ``Solver`` subclass: the base class's ``fused_step``)."""

    def fused_step(self, state, lo, hi, *, xp):
        return None


def _host_reads(monkeypatch, compile: bool) -> tuple[int, int]:
    """``(rounds, device-to-host reads made by the driver)`` of a solve with :class:`_UnfusedJacobi`, no probe round."""
    reads, real = [0], drv.to_host

    def counting(a):
        reads[0] += 1
        return real(a)

    monkeypatch.setattr(drv, "to_host", counting)
    x0 = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(update_map=trisolve.Picard(), window=5, atol=1e-6, gradients=False, per_sample=False)
    sol = trisolve.solve(_system(slow=0.3), _UnfusedJacobi(), x0, compile=compile, **kw)
    assert sol.converged
    return sol.num_rounds, reads[0]


def test_an_eager_solve_reads_the_device_once_a_round(monkeypatch):
    """The control of the test below: the eager solve reads one vector a round (the driver's "Host traffic" promise)."""
    rounds, reads = _host_reads(monkeypatch, compile=False)
    assert rounds > 2 and reads == rounds


def test_a_compiled_solve_that_never_fuses_a_round_reads_the_device_once_a_round(monkeypatch):
    """A compiled solve (the fused path, ``torch.compile`` replaced by the functions as written) with a solver that
    has no fused step runs every round unfused: its freeze rule runs on the host, so its state belongs there, and the
    solve should read the device once a round as the eager solve does."""
    _eager_fused(monkeypatch)
    rounds, reads = _host_reads(monkeypatch, compile=True)
    assert rounds > 2 and reads == rounds, (rounds, reads)


class _Unprintable(RuntimeError):
    def __str__(self):
        raise ValueError("this exception cannot be printed")


def test_contention_failure_whose_message_cannot_be_formatted_still_reaches_every_rank():
    from test_cost_model import _failing_network, _ThreadRanks

    from trisolve_diffusion import cost_model as cm

    fault = _Unprintable()
    _, call_for = _failing_network({1: fault})
    group = _ThreadRanks(world=2, timeout=5)
    out, errors = group.run(lambda info: cm._contention(info, call_for(info.rank), None))
    assert isinstance(errors[0], trisolve.DistributedError), errors
