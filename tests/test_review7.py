"""Review of ``solve(fill=)`` (rows entering a sliding window: a copy or the last step continued), the refitted
rounds prior (``RoundsModel(window_fill=)``) and the reuse of a measured curve (``measure_round_time``'s side entry).

References: the rows :func:`trisolve.driver.fill_rows` must write, computed by hand; forward substitution; autograd
through the sequential loop; a one-process solve (two ranks); the real ``k_diffusion.sampling`` loop; each sample
solved alone (per-sample windows). Three defects it found are fixed and their tests pass: a float16 cast warning,
an unvalidated ``window_fill``, the curve cache's side entry colliding with a caller's key.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import array_api_compat.numpy as xnp
import array_api_compat.torch as xtorch
import array_api_strict
import numpy as np
import pytest
import torch
from conftest import BACKENDS

import trisolve
import trisolve.per_sample as per_sample_module
import trisolve_diffusion as td
import trisolve_diffusion.cost_model as cm
from trisolve.driver import fill_rows


def smooth(rates, n=40):
    """``x_i = x_{i-1} + h (1 + r sin(x_{i-1}))`` with a rate ``r`` per sample (``rates``' shape: the sample axes)."""
    r = np.asarray(rates, dtype=np.float64)

    def F(x, lo, hi):
        prev = x[lo - 1 : hi - 1]
        return prev + 0.05 * (1.0 + np.reshape(r, (1, *r.shape, 1)) * np.sin(prev))

    return trisolve.BlackBoxSystem(F, n=n, batch_ndim=r.ndim)


# -- fill_rows: every value finite, on every dtype and namespace -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_a_large_window_whose_line_overflows_only_far_out_stays_finite_on_torch(dtype):
    """Rows 0, 1 = 0, 20000: the line 20000 (k + 1) is finite for k = 1, 2 in float16 (40000, 60000) and overflows beyond
    (float16's max 65504); every row must stay finite: the line where it is finite, the copy where it is not."""
    x = torch.zeros(40, 2, dtype=dtype)
    x[1] = 20000.0
    fill_rows(x, 2, 40, "linear", xtorch)
    assert torch.isfinite(x).all()
    line = torch.tensor([20000.0 * (k + 1) for k in range(1, 39)])
    finite_in_dtype = torch.isfinite(line.to(dtype))
    expect = torch.where(finite_in_dtype, line.to(dtype), torch.tensor(20000.0, dtype=dtype))
    # float16 / float32: exact; bfloat16 rounds k (8 bits: exact to 256) and k * step, then the sum
    torch.testing.assert_close(x[2:, 0].float(), expect.float(), atol=0, rtol=0 if dtype is not torch.bfloat16 else 2e-2)
    if dtype is torch.float16:
        assert finite_in_dtype[:2].all() and not finite_in_dtype[2:].any()  # the line for k = 1, 2; copies beyond


def test_a_line_past_float32s_range_stays_finite_on_array_api_strict():
    x = array_api_strict.zeros((10, 2), dtype=array_api_strict.float32)
    x[1, :] = array_api_strict.asarray([1.0, 3e38], dtype=array_api_strict.float32)
    fill_rows(x, 2, 10, "linear", array_api_strict)
    out = np.asarray(x)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[2:, 0], np.arange(2, 10, dtype=np.float32))  # the line
    np.testing.assert_array_equal(out[2:, 1], np.full(8, 3e38, dtype=np.float32))  # 3e38 + k 3e38 overflows: copies


def test_numpy_float16_fill_of_more_rows_than_float16_counts_does_not_warn():
    x = np.zeros((70000, 2), dtype=np.float16)
    x[1] = 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fill_rows(x, 2, 70000, "linear", xnp)
    assert np.isfinite(x).all()


# -- solves with the line: the answer of forward substitution, on every namespace ---------------------------------------


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_a_linear_fill_solve_reaches_forward_substitution_on_every_namespace(backend):
    def F(x, lo, hi):
        prev = x[lo - 1 : hi - 1, ...]
        return prev + 0.05 * (1.0 + backend.xp.sin(prev))

    system = trisolve.BlackBoxSystem(F, n=30)
    x0 = backend.asarray([0.1, 0.7, -0.4])
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    sols = {f: trisolve.solve(system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Picard(), window=5, atol=1e-10, fill=f)
            for f in trisolve.driver.FILLS}  # fmt: skip
    for sol in sols.values():
        assert sol.converged
        np.testing.assert_allclose(backend.to_numpy(sol.trajectory), ref, atol=1e-8, rtol=0)
    assert sols["linear"].num_rounds < sols["copy"].num_rounds


def test_per_sample_fill_with_two_sample_axes_reads_and_writes_only_its_own_sample():
    """batch_ndim=2 (2 x 3 samples, each its own rate and row 0): the index of a sample unravels into both axes. A fill
    that read another sample's rows would change that sample's rounds from its rounds alone (the answer is the same)."""
    rates = np.array([[0.2, 1.0, 2.5], [4.0, 0.0, 1.5]])
    x0 = np.tile(np.array([0.1, 0.7, -0.4]), (2, 3, 1)) + 0.3 * np.arange(6.0).reshape(2, 3, 1)
    kw = dict(update_map=trisolve.Picard(), window=6, atol=1e-10, fill="linear")
    batch = trisolve.solve(smooth(rates), trisolve.TriangularAnderson(), x0, **kw)
    assert batch.converged
    np.testing.assert_allclose(batch.trajectory, trisolve.forward_substitution(smooth(rates), x0), atol=1e-8, rtol=0)
    rounds = np.asarray(batch.sample_rounds).reshape(2, 3)
    assert len(set(rounds.ravel().tolist())) > 2  # the samples end at different rounds: their windows differ
    for i in range(2):
        for j in range(3):
            alone = trisolve.solve(smooth(rates[i : i + 1, j : j + 1]), trisolve.TriangularAnderson(), x0[i : i + 1, j : j + 1], **kw)
            assert rounds[i, j] == alone.num_rounds, (i, j)


@pytest.mark.parametrize("at", [5, 9, 14])
def test_an_interrupt_between_two_samples_fills_keeps_final_rows_exact_and_every_value_finite(at, monkeypatch):
    """Ctrl-C after some samples' rows entering the window were written this round and before the others' (and before
    ``sample_filled`` records them): INTERRUPTED, the frozen rows those of forward substitution, every value finite."""
    rates = np.array([0.2, 1.0, 2.5])
    x0 = np.tile(np.array([0.1, 0.7, -0.4]), (3, 1))
    real, calls = per_sample_module.fill_rows, []

    def interrupted(x, a, b, fill, xp, idx=()):
        calls.append(idx)
        real(x, a, b, fill, xp, idx)
        if len(calls) == at:
            raise KeyboardInterrupt

    monkeypatch.setattr(per_sample_module, "fill_rows", interrupted)
    sol = trisolve.solve(smooth(rates), trisolve.TriangularAnderson(), x0, update_map=trisolve.Picard(), window=6, atol=1e-10,
                         fill="linear")  # fmt: skip
    assert sol.status is trisolve.Status.INTERRUPTED and len(calls) == at
    assert np.isfinite(sol.trajectory).all()
    k = sol.num_frozen
    assert k >= 2
    np.testing.assert_allclose(sol.trajectory[:k], trisolve.forward_substitution(smooth(rates), x0)[:k], atol=1e-12, rtol=0)


def test_gradients_after_a_linear_fill_are_those_of_the_sequential_loop():
    W = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.3

    def F(x, lo, hi):
        prev = x[lo - 1 : hi - 1]
        return prev + 0.05 * torch.tanh(prev @ W.T + 1.0)

    x0 = torch.tensor([0.1, 0.5, -0.3], dtype=torch.float64, requires_grad=True)
    xs = [x0]
    for _ in range(30):
        xs.append(xs[-1] + 0.05 * torch.tanh(xs[-1] @ W.T + 1.0))
    (ref,) = torch.autograd.grad((torch.stack(xs) ** 2).sum(), x0)
    sol = trisolve.solve(trisolve.BlackBoxSystem(F, n=30), trisolve.TriangularAnderson(), x0, update_map=trisolve.Picard(), window=4,
                         atol=1e-12, rtol=0.0, fill="linear", gradients=True)  # fmt: skip
    assert sol.converged and sol.num_rounds > 30 / 4
    (g,) = torch.autograd.grad((sol.trajectory**2).sum(), x0)
    torch.testing.assert_close(g, ref, atol=1e-8, rtol=1e-8)


# -- the samplers: the user's fill reaches the solve and the automatic window ------------------------------------------


def test_the_automatic_window_prices_the_users_fill(monkeypatch):
    """``window="auto"`` with ``fill="copy"``: the rounds prior of the choice is the copies' (and the default's the line's)."""
    from diffusers import DDIMScheduler

    from trisolve_diffusion.models.closed_form import GaussianMixtureDenoiser

    seen, real = [], cm.choose_window

    def spy(*a, **k):
        seen.append(k["rounds_model"].window_fill)
        return real(*a, **k)

    monkeypatch.setattr(cm, "choose_window", spy)
    sched = DDIMScheduler(num_train_timesteps=200, clip_sample=False)
    sched.set_timesteps(12)
    model = GaussianMixtureDenoiser(torch.rand(4, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1, sched.alphas_cumprod,
                                    std=0.05)  # fmt: skip

    def den(x, t):
        return model(x, t).sample

    latents = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    policy = td.AutoWindow()
    for fill in ("copy", None):
        kw = {} if fill is None else {"fill": fill}
        td.sample_latents(den, sched, latents, window=policy, progress=False, **kw)
    assert seen == ["copy", "linear"]


def test_the_k_diffusion_samplers_get_the_fill():
    """``sample_euler`` in a sliding window: ``fill="copy"`` and the default (``"linear"``) both give the real k-diffusion
    loop's sample, in different rounds (the keyword reached the solve); the default is the line."""
    from k_diffusion_ref import load_sampling

    from trisolve_diffusion import k_diffusion as K

    ref_sampling = load_sampling()
    means = torch.randn(3, 32, generator=torch.Generator().manual_seed(12)).double()

    def model(x, sigma):
        xf, s2 = x.double().flatten(1), sigma.double()[:, None] ** 2
        w = torch.softmax(-((xf[:, None, :] - means[None]) ** 2).sum(-1) / (2 * (0.25 + s2)), dim=1)
        post = (0.25 * xf[:, None, :] + s2[:, :, None] * means[None]) / (0.25 + s2)[:, :, None]
        return (w[:, :, None] * post).sum(1).reshape(x.shape).to(x.dtype)

    sigmas = ref_sampling.get_sigmas_karras(20, 0.02, 10.0)
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    ref = ref_sampling.sample_euler(model, x.clone(), sigmas, disable=True)
    tight = dict(atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, window=5, disable=True, return_solution=True)
    out = {f: K.sample_euler(model, x.clone(), sigmas, **tight, **({} if f is None else {"fill": f})) for f in (None, "copy", "linear")}
    for final, sol in out.values():
        assert sol.converged
        torch.testing.assert_close(final, ref, atol=1e-5, rtol=0)
    assert out[None][1].num_rounds == out["linear"][1].num_rounds
    linear, copy = out["linear"][1], out["copy"][1]  # the fill reached the solve: its records differ
    assert (linear.num_rounds, linear.num_evals, list(linear.round_max_errors)) != (copy.num_rounds, copy.num_evals, list(copy.round_max_errors))


# -- the rounds prior and the curve's cache ------------------------------------------------------------------------------


def test_the_rounds_prior_of_the_line_is_continuous_at_the_full_window_and_falls_with_the_window():
    m = cm.RoundsModel()
    for T in (25, 50, 100):
        r = [m(w, T) for w in range(1, T + 1)]
        assert all(a >= b - 1e-12 for a, b in zip(r, r[1:])), T  # more rows per round: never more rounds
        assert m(T - 1, T) == pytest.approx(m(T, T), abs=0.05)
        assert r[0] == T  # one row per round: the loop's rounds


def test_a_misspelt_window_fill_is_refused():
    with pytest.raises(ValueError, match="window_fill"):
        cm.RoundsModel(window_fill="Linear")


def test_the_curves_side_entry_does_not_collide_with_a_callers_key():
    cache: dict = {}
    a = cm.measure_round_time(lambda r: None, 4, repeats=1, key="k", cache=cache)
    b = cm.measure_round_time(lambda r: None, 4, repeats=1, key=("measured for", "k"), cache=cache)
    assert isinstance(a, cm.BatchTimeCurve) and isinstance(b, cm.BatchTimeCurve)


def test_measure_round_time_without_a_key_or_model_measures_every_time():
    calls: list = []
    cache: dict = {}
    cm.measure_round_time(calls.append, 4, repeats=1, cache=cache)
    n = len(calls)
    cm.measure_round_time(calls.append, 4, repeats=1, cache=cache)
    assert len(calls) >= n + 3 and cache == {}  # measured again (3 sizes at least); nothing cached without a key, no side entry


# -- several ranks: the fill is part of what every rank must agree on ---------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import datetime, json, os, sys
    import numpy as np, torch, torch.distributed as dist
    import trisolve

    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    W = np.random.default_rng(0).standard_normal((4, 4)) * 0.4

    def fn(x, lo, hi):
        return x[lo - 1 : hi - 1] + 0.05 * np.tanh(x[lo - 1 : hi - 1] @ W.T + 1.0)

    x0 = np.linspace(-0.5, 0.5, 4)
    kw = dict(update_map=trisolve.Picard(), window=6, atol=1e-10, rtol=0.0)
    sol = trisolve.solve(trisolve.distribute(trisolve.BlackBoxSystem(fn, n=40)), trisolve.TriangularAnderson(), x0, fill="linear", **kw)
    one = trisolve.solve(trisolve.BlackBoxSystem(fn, n=40), trisolve.TriangularAnderson(), x0, fill="linear", **kw)
    mine = "linear" if rank == 0 else "copy"  # the ranks disagree on the fill only
    try:
        trisolve.solve(trisolve.distribute(trisolve.BlackBoxSystem(fn, n=40)), trisolve.TriangularAnderson(), x0, fill=mine, **kw)
        mismatch = "none"
    except trisolve.DistributedError as err:
        mismatch = str(err)
    json.dump(dict(status=sol.status.name, rounds=sol.num_rounds, one_rounds=one.num_rounds,
                   diff=float(np.abs(np.asarray(sol.trajectory) - one.trajectory).max()), mismatch=mismatch),
              open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w"))
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_two_ranks_solve_with_the_line_as_one_process_does_and_refuse_different_fills(tmp_path):
    import json
    import socket

    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))  # fmt: skip
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=dict(env, RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for r in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=180)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for g in got:
        assert g["status"] == "CONVERGED" and g["rounds"] == g["one_rounds"] and g["diff"] <= 1e-12, g
        assert "disagree" in g["mismatch"], g  # both ranks refuse before the first round
