"""Generic recurrences: update maps and solvers against sequential loops, forward and backward.

    python benchmarks/recurrences.py [--quick]
    python benchmarks/recurrences.py --cpu-rnn     # only issue 14's CPU target (section 3)
    python benchmarks/recurrences.py --adjoint     # only plain Jacobi's forward + backward per adjoint choice (section 4)

1. A contractive tanh RNN ``h_t = tanh(W h_{t-1} + U u_t)`` with hidden 4, 16 and 64, T = 1e3,
   1e4 and 1e5 (PyTorch, float64, CPU; ``benchmarks/gpu.py`` runs it on a GPU): rounds and wall time of Jacobi (one-step map), TAA (one-step
   map), Newton dense (DEER) and Newton diagonal (quasi-DEER), with the Jacobian from a
   ``jacobian=`` callable, against a sequential loop over torch rows and one over NumPy rows.
   Forward + backward: ``solve(..., gradients=True)`` then ``loss.backward()`` against the
   forward alone, and against autograd through the torch loop.
2. RK4 of a damped pendulum (a stable ODE, 2 states) and of Lorenz-96 (40 states, chaotic):
   rounds / n for every map (at n = 1e4 only the default and TAA: the others take about n / 8
   rounds of n rows), the default (``solver=None``), and the max difference from the
   sequential loop -- O(1) for Lorenz-96 after a converged solve (error amplification: see
   the tutorial "Newton, Picard or TAA for an ODE"). The pendulum also in NumPy with the
   default (no autodiff: finite-difference Newton), and with ELK's damping (lam = 0.01).
3. ``--cpu-rnn``: the tanh RNN, hidden 16, T = 1e5, ``Jacobi()`` in PyTorch on every thread
   against the NumPy Python loop, float64 and float32, with the floor ``rounds x one F``
   (:func:`cpu_rnn`); results in ``results/recurrences_cpu_rnn.md``.
4. ``--adjoint``: the tanh RNN, hidden 4/16/32/64, T = 1e3..1e5, a plain ``Jacobi()`` forward
   and its forward + backward with each adjoint choice (``Adjoint()``'s ``"auto"``, ``"dense"``,
   ``"none"``) side by side (:func:`adjoint_rows`); results in ``results/recurrences_adjoint.md``
   (``results/recurrences_adjoint_thp.md`` when run with ``THP_MEM_ALLOC_ENABLE=1``).

PyTorch runs on one thread (the machine is shared). Times are medians of 3 runs after a warm-up (T = 1e4: 1 run after a warm-up; T = 1e5: 1 run),
measured side by side in one process on the machine recorded in the JSON file.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time, write  # noqa: E402

import trisolve  # noqa: E402

HIDDEN = 16
ATOL = 1e-9


# ----------------------------------------------------------------------------- the tanh RNN


def rnn_problem(T: int, seed: int = 0, hidden: int = HIDDEN):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((hidden, hidden)) * 0.5 / np.sqrt(hidden)
    U = rng.standard_normal((hidden, 4))
    u = rng.standard_normal((T + 1, 4))
    drive = u @ U.T  # (T + 1, hidden): the input term, precomputed for every method alike
    return W, drive


def rnn_loop_numpy(W, drive, T):
    h = np.zeros((T + 1, W.shape[0]))
    for t in range(1, T + 1):
        h[t] = np.tanh(W @ h[t - 1] + drive[t])
    return h


def rnn_loop_torch(W, drive, T):
    """The sequential loop over torch rows (``unbind``, not ``drive[t]``: indexing a tensor that
    requires grad T times makes autograd build T full-size gradients, O(T^2) in the backward)."""
    h = [torch.zeros(W.shape[0], dtype=W.dtype, device=W.device)]
    rows = drive.unbind(0)
    for t in range(1, T + 1):
        h.append(torch.tanh(W @ h[-1] + rows[t]))
    return torch.stack(h)


def rnn_system(W, drive, T, *, jacobian: bool = True):
    """The RNN as a black box; with its Jacobian ``diag(1 - h_t^2) W`` (or the diagonal of it)."""
    lib = torch if isinstance(W, torch.Tensor) else np

    def F(x, lo, hi):
        return lib.tanh(x[lo - 1 : hi - 1] @ W.T + drive[lo:hi])

    def J(x, lo, hi):
        return (1 - F(x, lo, hi) ** 2)[:, :, None] * W  # (w, d, d)

    return trisolve.BlackBoxSystem(F, T, jacobian=J if jacobian else None)


def rnn_parallel(W, drive, T, *, solver=None, update_map=None, gradients=False):
    """A parallel solve of the RNN in the library and on the device of ``W`` (Jacobi by default)."""
    x0 = torch.zeros(W.shape[0], dtype=W.dtype, device=W.device) if isinstance(W, torch.Tensor) else np.zeros(W.shape[0])
    solver = trisolve.Jacobi() if solver is None and update_map is None else solver
    return trisolve.solve(rnn_system(W, drive, T), solver, x0, update_map=update_map, atol=ATOL, gradients=gradients)


RNN_METHODS = {
    "Jacobi": dict(solver=trisolve.Jacobi()),
    "TAA": dict(solver=trisolve.TriangularAnderson()),
    "Newton dense": dict(solver=trisolve.Jacobi(), update_map=trisolve.Newton()),
    "Newton diagonal": dict(solver=trisolve.Jacobi(), update_map=trisolve.Newton(jacobian="diagonal")),
}


def rnn_rows(sizes, hiddens, repeats, *, warmup: bool = True):
    """``warmup=False`` (``--quick``, whose times mean nothing): no warm-up run at any size."""
    rows = []
    for hidden in hiddens:
        for T in sizes:
            big = T >= 100_000
            rep, warm = (1, False) if big else ((1, warmup) if T >= 10_000 else (repeats, warmup))
            W, drive = rnn_problem(T, hidden=hidden)
            t_np, ref = median_time(lambda: rnn_loop_numpy(W, drive, T), rep, warmup=warm)
            Wt, dt = torch.from_numpy(W), torch.from_numpy(drive)
            t_loop, _ = median_time(lambda: rnn_loop_torch(Wt, dt, T), rep, warmup=warm)
            wts = torch.from_numpy(np.random.default_rng(1).standard_normal((T + 1, hidden)))
            Wg, dg = Wt.clone().requires_grad_(True), dt.clone().requires_grad_(True)

            def loop_fb():
                loss = (rnn_loop_torch(Wg, dg, T) * wts).sum()
                loss.backward()
                return loss

            t_loop_fb, _ = median_time(loop_fb, rep, warmup=warm)
            for name, kw in RNN_METHODS.items():
                if name == "TAA" and big:
                    continue
                t_fwd, sol = median_time(lambda kw=kw: rnn_parallel(Wt, dt, T, **kw), rep, warmup=warm)

                def fb(kw=kw):
                    s = rnn_parallel(Wg, dg, T, gradients=True, **kw)
                    (s.trajectory * wts).sum().backward()
                    return s

                t_fb = median_time(fb, rep, warmup=warm)[0] if name.startswith("Newton") or T <= 10_000 else math.nan
                rows.append(
                    dict(problem=f"tanh RNN, hidden {hidden}", T=T, method=name, rounds=sol.num_rounds, status=sol.status.name,
                         forward_s=t_fwd, forward_backward_s=t_fb, fb_over_f=t_fb / t_fwd, torch_loop_s=t_loop,
                         torch_loop_fb_s=t_loop_fb, numpy_loop_s=t_np, max_error=float(np.abs(sol.trajectory.numpy() - ref).max()))
                )  # fmt: skip
                print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- ODEs (RK4)


def rk4_system(f, h, n):
    """Explicit RK4 steps of ``y' = f(y)`` as a black box (torch or NumPy, as ``f``); ``f`` acts on the last axis."""

    def F(x, lo, hi):
        y = x[lo - 1 : hi - 1]
        k1 = f(y)
        k2 = f(y + 0.5 * h * k1)
        k3 = f(y + 0.5 * h * k2)
        k4 = f(y + h * k3)
        return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)

    return trisolve.BlackBoxSystem(F, n)


def pendulum(y, gamma=0.3):
    """Damped pendulum ``theta'' = -sin(theta) - gamma theta'``."""
    return torch.stack([y[..., 1], -torch.sin(y[..., 0]) - gamma * y[..., 1]], dim=-1)


def lorenz96(y, forcing=8.0):
    """``y_k' = (y_{k+1} - y_{k-2}) y_{k-1} - y_k + F`` (cyclic)."""
    return (torch.roll(y, -1, -1) - torch.roll(y, 2, -1)) * torch.roll(y, 1, -1) - y + forcing


ODE_METHODS = {
    "default (solver=None)": dict(solver=None),
    "Jacobi, one-step": dict(solver=trisolve.Jacobi()),
    "Jacobi, Picard": dict(solver=trisolve.Jacobi(), update_map=trisolve.Picard()),
    "TAA, Picard": dict(solver=trisolve.TriangularAnderson(), update_map=trisolve.Picard()),
    "Newton dense": dict(solver=trisolve.Jacobi(), update_map=trisolve.Newton()),
    "Newton diagonal": dict(solver=trisolve.Jacobi(), update_map=trisolve.Newton(jacobian="diagonal")),
    "Newton dense, ELK damping 0.01": dict(solver=trisolve.Jacobi(), update_map=trisolve.Newton(damping=0.01)),
}


def pendulum_numpy(y, gamma=0.3):
    """:func:`pendulum` in NumPy (no autodiff: the default differentiates it by finite differences)."""
    return np.stack([y[..., 1], -np.sin(y[..., 0]) - gamma * y[..., 1]], axis=-1)


def ode_rows(quick, repeats):
    x_pend = torch.tensor([2.5, 0.0], dtype=torch.float64)
    x_l96 = torch.tensor(8.0 + 0.01 * np.sin(np.arange(40)), dtype=torch.float64)
    cases = [("RK4 damped pendulum, h = 0.05", pendulum, 0.05, x_pend, [100] if quick else [1000, 10_000])]
    cases.insert(1, ("RK4 Lorenz-96 (40 states), h = 0.05", lorenz96, 0.05, x_l96, [50] if quick else [400]))
    rows = []
    runs = [(c, n) for c in cases for n in c[4] if n <= 1000] + [(c, n) for c in cases for n in c[4] if n > 1000]  # big ones last
    for (problem, f, h, x0, _), n in runs:
        system = rk4_system(f, h, n)
        t_loop, ref = median_time(lambda: trisolve.forward_substitution(system, x0), repeats, warmup=not quick)
        if f is pendulum:  # the same system in NumPy: no autodiff, so the default differentiates by finite differences
            sys_np, x0_np = rk4_system(pendulum_numpy, h, n), x0.numpy()
            t_loop_np, ref_np = median_time(lambda: trisolve.forward_substitution(sys_np, x0_np), repeats, warmup=not quick)
            t, sol = median_time(lambda: trisolve.solve(sys_np, None, x0_np, atol=ATOL), repeats, warmup=not quick)
            rows.append(
                dict(problem=problem + " (NumPy)", T=n, method="default (solver=None): finite differences", rounds=sol.num_rounds,
                     rounds_over_n=sol.num_rounds / n, status=sol.status.name, parallel_s=t, loop_s=t_loop_np,
                     max_error=float(np.abs(sol.trajectory - ref_np).max()))
            )  # fmt: skip
            print(rows[-1], flush=True)
        for name, kw in ODE_METHODS.items():
            if (n > 1000 and name not in ("default (solver=None)", "TAA, Picard")) or (name == "Jacobi, one-step" and n > 400):
                continue  # about n / 8 rounds of n rows (the one-step map: n)
            if "ELK" in name and f is not pendulum:
                continue
            t, sol = median_time(lambda kw=kw: trisolve.solve(system, kw["solver"], x0, update_map=kw.get("update_map"), atol=ATOL), repeats,
                                 warmup=not quick)  # fmt: skip
            rows.append(
                dict(problem=problem, T=n, method=name, rounds=sol.num_rounds, rounds_over_n=sol.num_rounds / n, status=sol.status.name,
                     parallel_s=t, loop_s=t_loop, max_error=float((sol.trajectory - ref).abs().max()))
            )  # fmt: skip
            print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- the CPU target


def cpu_rnn(T: int = 100_000, hidden: int = HIDDEN, repeats: int = 5, *, quick: bool = False) -> dict:
    """Issue 14's CPU target: the tanh RNN (hidden 16, T = 1e5) solved by ``Jacobi()`` in PyTorch
    against the NumPy Python loop, side by side, in float64 (atol 1e-9) and float32 (atol 1e-6:
    about ten float32 ulps of the O(1) states; the float32 loop is as fast as the float64 one).

    Every thread the machine has (the loop uses one: it cannot use more). Also the floor of the
    parallel solve: ``rounds x`` the time of one evaluation of ``F`` on all ``T`` rows -- what a
    round with no overhead at all would cost.
    """
    W, drive = rnn_problem(T, hidden=hidden)
    rows = []
    for name, dtype, npdtype, atol in (("float64", torch.float64, np.float64, 1e-9), ("float32", torch.float32, np.float32, 1e-6)):
        Wn, dn = W.astype(npdtype), drive.astype(npdtype)
        Wt, dt = torch.from_numpy(Wn), torch.from_numpy(dn)

        def F(x, lo, hi, Wt=Wt, dt=dt):
            return torch.tanh(torch.addmm(dt[lo:hi], x[lo - 1 : hi - 1], Wt.T))

        system = trisolve.BlackBoxSystem(F, T)
        x0 = torch.zeros(hidden, dtype=dtype)
        t_loop, ref = median_time(lambda Wn=Wn, dn=dn: rnn_loop_numpy(Wn, dn, T), repeats)
        t_par, sol = median_time(lambda: trisolve.solve(system, trisolve.Jacobi(), x0, atol=atol), repeats)
        xfull = torch.from_numpy(ref.astype(npdtype))
        t_f, _ = median_time(lambda: F(xfull, 1, T + 1), repeats)
        rows.append(
            dict(dtype=name, atol=atol, status=sol.status.name, rounds=sol.num_rounds, numpy_loop_s=t_loop, parallel_s=t_par,
                 speedup=t_loop / t_par, one_F_s=t_f, floor_s=sol.num_rounds * t_f, overhead_share=1 - sol.num_rounds * t_f / t_par,
                 max_error=float(np.abs(sol.trajectory.double().numpy() - ref.astype(np.float64)).max()), threads=torch.get_num_threads())
        )  # fmt: skip
        print(rows[-1], flush=True)
    md = [
        f"tanh RNN, hidden {hidden}, T = {T:,}: `trisolve.solve(..., Jacobi(), atol)` in PyTorch ({rows[0]['threads']} threads) against the NumPy "
        f"Python loop (one thread), medians of {repeats} runs after a warm-up, side by side in one process.",
        "",
        "| dtype | atol | rounds | NumPy loop [s] | parallel [s] | speed-up | one F on all rows [s] | floor = rounds x F [s] | share of the round outside F | max error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['dtype']} | {r['atol']:g} | {r['rounds']} | {r['numpy_loop_s']:.3f} | {r['parallel_s']:.3f} | {r['speedup']:.2f}x | "
            f"{r['one_F_s'] * 1e3:.1f} ms | {r['floor_s']:.3f} | {r['overhead_share']:.0%} | {r['max_error']:.1e} |"
        )
    md += [
        "",
        "The floor is the time the solve would take if a round cost only its evaluation of F: a speed-up above "
        "`loop / floor` is out of reach for this number of rounds on this machine.",
    ]
    write("recurrences_cpu_rnn" + ("_quick" if quick else ""), {"rows": rows}, "\n".join(md) + "\n")
    return {"rows": rows}


def adjoint_rows(sizes=(1000, 10_000, 100_000), hiddens=(4, 16, 32, 64), repeats: int = 5, *, quick: bool = False) -> list[dict]:
    """Issue 16's forward + backward target after a plain Jacobi forward: the adjoint's choices side by side.

    For each size, the Jacobi forward alone, then forward + backward with ``Adjoint()`` (the
    default, ``"auto"``), ``"dense"`` and ``"none"``, interleaved run by run, medians of
    ``repeats`` runs after a warm-up round (3 at T = 1e5), PyTorch on one thread. Also what ``"auto"`` did (its VJP steps and the
    step at which it switched to dense, from a direct adjoint solve with the same cotangent) and
    how far its gradients are from the dense adjoint's.
    """
    from trisolve.gradients import _Adjoint

    rows = []
    for hidden in hiddens:
        for T in sizes:
            rep = 3 if T >= 100_000 else repeats
            W, drive = rnn_problem(T, hidden=hidden)
            Wt, dt = torch.from_numpy(W), torch.from_numpy(drive)
            wts = torch.from_numpy(np.random.default_rng(1).standard_normal((T + 1, hidden)))
            grads, sols = {}, []

            def fb(kind):
                Wg, dg = Wt.clone().requires_grad_(True), dt.clone().requires_grad_(True)
                s = rnn_parallel(Wg, dg, T, gradients=trisolve.Adjoint(jacobian=kind))
                (s.trajectory * wts).sum().backward()
                grads[kind] = Wg.grad

            runs = {"forward": lambda: sols.append(rnn_parallel(Wt, dt, T))} | {k: (lambda k=k: fb(k)) for k in ("auto", "dense", "none")}
            times = {k: [] for k in runs}
            for r in range(rep + 1):  # interleaved, so that a slow spell of the machine hits every column alike; run 0 warms up
                for k, fn in runs.items():
                    start = time.perf_counter()
                    fn()
                    if r:
                        times[k].append(time.perf_counter() - start)
            sol = sols[-1]
            t_fwd = statistics.median(times["forward"])
            row = dict(problem=f"tanh RNN, hidden {hidden}", T=T, rounds=sol.num_rounds, forward_s=t_fwd, repeats=rep)
            for kind in ("auto", "dense", "none"):
                row[f"{kind}_s"] = statistics.median(times[kind])
                row[f"{kind}_ratio"] = row[f"{kind}_s"] / t_fwd
            auto = _Adjoint(rnn_system(Wt, dt, T), sol.trajectory, trisolve.Adjoint())
            auto.solve(wts[1:])
            row.update(auto_steps=auto.num_steps, auto_switched_at=auto.switched_at, auto_final=auto.kind,
                       auto_vs_dense=float((grads["auto"] - grads["dense"]).abs().max() / grads["dense"].abs().max()))  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    md = [
        "| problem | T | Jacobi rounds | forward [s] | fwd + bwd, auto (default) [s] | ratio | auto: VJP steps, switched to dense at | "
        "fwd + bwd, dense [s] | ratio | fwd + bwd, none [s] | ratio | auto vs dense, max rel. difference of dL/dW |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sw = "never (VJP steps only)" if r["auto_switched_at"] is None else f"step {r['auto_switched_at']}"
        if r["auto_switched_at"] is None and r["auto_final"] == "dense":
            sw = "dense from the start"
        md.append(
            f"| {r['problem']} | {r['T']:,} | {r['rounds']} | {r['forward_s']:.3f} | {r['auto_s']:.3f} | {r['auto_ratio']:.2f} | "
            f"{r['auto_steps']}, {sw} | {r['dense_s']:.3f} | {r['dense_ratio']:.2f} | {r['none_s']:.3f} | {r['none_ratio']:.2f} | "
            f"{r['auto_vs_dense']:.1e} |"
        )
    md += [
        "",
        f"PyTorch CPU, one thread, float64, forward `Jacobi()` at atol {ATOL:g} (the system has a `jacobian=` callable); the four "
        f"columns run interleaved, medians of {repeats} runs after a warm-up round (T = 1e5: 3 runs). Ratio = (forward + backward) / forward.",
    ]
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"  # PyTorch's CPU allocator: transparent huge pages for large arrays
    if thp:
        md += ["", "Run with `THP_MEM_ALLOC_ENABLE=1` (PyTorch's CPU allocator asks for transparent huge pages for large arrays)."]
    write("recurrences_adjoint" + ("_thp" if thp else "") + ("_quick" if quick else ""), {"rows": rows, "thp_mem_alloc": thp}, "\n".join(md) + "\n")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cpu-rnn", action="store_true", help="only the CPU target: tanh RNN hidden 16, T = 1e5, against the NumPy loop")
    ap.add_argument("--adjoint", action="store_true", help="only the forward + backward of plain Jacobi with each adjoint choice")
    args = ap.parse_args(argv)
    if args.adjoint:
        torch.set_num_threads(1)
        if args.quick:
            adjoint_rows(sizes=(200,), hiddens=(4, 16), repeats=1, quick=True)
        else:
            adjoint_rows()
        return
    if args.cpu_rnn:
        cpu_rnn(T=1000 if args.quick else 100_000, repeats=1 if args.quick else 5, quick=args.quick)
        return
    if not args.quick:  # a shared 2-core machine: one thread each, so that timings are not thread contention
        torch.set_num_threads(1)
    repeats = 1 if args.quick else 3
    ode_repeats = 1
    ode = ode_rows(args.quick, ode_repeats)
    rnn = []
    for hidden in [4] if args.quick else [16, 4, 64]:
        for T in [100] if args.quick else [1000, 10_000, 100_000]:
            rnn += rnn_rows([T], [hidden], repeats, warmup=not args.quick)
            # written after every size: the dense scan is O(T d^3) per round, and hidden 64 at T = 1e5 takes minutes
            write_tables(rnn, ode, quick=args.quick, repeats=repeats)


def write_tables(rnn: list[dict], ode: list[dict], *, quick: bool, repeats: int, note: str = "") -> None:
    """``results/recurrences[_quick].{json,md}`` from the rows of :func:`rnn_rows` and :func:`ode_rows`."""
    md = [
        "| problem | T | method | rounds | forward [s] | forward + backward [s] | ratio | torch loop [s] | torch loop fwd + bwd [s] | NumPy loop [s] | max error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rnn:
        md.append(
            f"| {r['problem']} | {r['T']:,} | {r['method']} | {r['rounds']} | {r['forward_s']:.3f} | {r['forward_backward_s']:.3f} | "
            f"{r['fb_over_f']:.2f} | {r['torch_loop_s']:.3f} | {r['torch_loop_fb_s']:.3f} | {r['numpy_loop_s']:.3f} | {r['max_error']:.1e} |"
        )
    md += [
        "",
        "| problem | T | method | status | rounds | rounds / T | parallel [s] | loop [s] | max difference from the loop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ode:
        md.append(
            f"| {r['problem']} | {r['T']:,} | {r['method']} | {r['status']} | {r['rounds']} | {r['rounds_over_n']:.3f} | {r['parallel_s']:.3f} | "
            f"{r['loop_s']:.3f} | {r['max_error']:.1e} |"
        )
    md += [
        "",
        f"PyTorch CPU, float64, atol {ATOL:g}. RNN: medians of {repeats} runs after a warm-up (T >= 1e4: one run); ODEs: one run after a warm-up. "
        "Forward + backward: the solve with `gradients=True` and `loss.backward()`; ratio = (forward + backward) / forward. "
        "The Lorenz-96 difference is error amplification of a chaotic system, not a solver error: every row meets the tolerance.",
    ]
    if note:
        md += ["", note]
    write("recurrences" + ("_quick" if quick else ""), {"rnn": rnn, "ode": ode}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
