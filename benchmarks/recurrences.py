"""Generic recurrences: the core on its own, against sequential loops.

    python benchmarks/recurrences.py [--quick]

1. A contractive non-linear RNN ``h_t = tanh(W h_{t-1} + U u_t)`` (hidden 16) for T = 1e3..1e5:
   wall time of the parallel solve (Jacobi, NumPy and PyTorch CPU) against a sequential
   Python loop over NumPy rows and a sequential loop over torch rows, with the max error.
2. Explicit Euler for ``y' = A y + 0.3 sin(y)`` (a semilinear system, 2 states): TAA on the
   unrolled map against the same loops.

Times are medians of 5 runs after a warm-up, measured side by side in one process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time, write  # noqa: E402

import trisolve  # noqa: E402

HIDDEN = 16


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
    h = torch.zeros(T + 1, W.shape[0], dtype=torch.float64, device=W.device)
    for t in range(1, T + 1):
        h[t] = torch.tanh(W @ h[t - 1] + drive[t])
    return h


def rnn_parallel(W, drive, T):
    """Jacobi on the RNN, in the library and on the device of ``W`` (NumPy or torch)."""
    if isinstance(W, torch.Tensor):
        tanh, x0 = torch.tanh, torch.zeros(W.shape[0], dtype=W.dtype, device=W.device)
    else:
        tanh, x0 = np.tanh, np.zeros(W.shape[0])
    system = trisolve.BlackBoxSystem(lambda x, lo, hi: tanh(x[lo - 1 : hi - 1] @ W.T + drive[lo:hi]), T)
    return trisolve.solve(system, trisolve.Jacobi(), x0, atol=1e-9)


A = np.array([[-0.5, 2.0], [-2.0, -0.5]])


def euler_loop(T, h):
    y = np.zeros((T + 1, 2))
    y[0] = (1.0, 0.0)
    for i in range(1, T + 1):
        y[i] = y[i - 1] + h * (A @ y[i - 1] + 0.3 * np.sin(y[i - 1]))
    return y


def euler_parallel(T, h):
    system = trisolve.SemilinearSystem(np.ones(T), np.full(T, h), lambda y, lo, hi: y @ A.T + 0.3 * np.sin(y))
    return trisolve.solve(system, trisolve.TriangularAnderson(history_size=2), np.array([1.0, 0.0]), update_map=trisolve.Unrolled(), atol=1e-10)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    sizes = [1000] if args.quick else [1000, 10_000, 100_000]
    repeats = 1 if args.quick else 5
    rows = []
    for T in sizes:
        W, drive = rnn_problem(T)
        t_np_loop, ref = median_time(lambda: rnn_loop_numpy(W, drive, T), repeats)
        Wt, dt = torch.from_numpy(W), torch.from_numpy(drive)
        t_torch_loop, _ = median_time(lambda: rnn_loop_torch(Wt, dt, T), repeats)
        for lib, arrays in (("numpy", (W, drive)), ("torch", (Wt, dt))):
            t_par, sol = median_time(lambda arrays=arrays: rnn_parallel(*arrays, T), repeats)
            traj = sol.trajectory.numpy() if lib == "torch" else sol.trajectory
            rows.append(
                dict(problem="tanh RNN (hidden 16), Jacobi", T=T, backend=lib, rounds=sol.num_rounds, parallel_s=t_par,
                     python_loop_s=t_np_loop, torch_loop_s=t_torch_loop, speedup_vs_python_loop=t_np_loop / t_par,
                     speedup_vs_torch_loop=t_torch_loop / t_par, max_error=float(np.abs(traj - ref).max()))
            )  # fmt: skip
            print(rows[-1], flush=True)
        h = 10.0 / T
        t_loop, ref_e = median_time(lambda: euler_loop(T, h), repeats)
        t_par, sol = median_time(lambda: euler_parallel(T, h), repeats)
        rows.append(
            dict(problem="explicit Euler ODE, TAA on Unrolled()", T=T, backend="numpy", rounds=sol.num_rounds, parallel_s=t_par,
                 python_loop_s=t_loop, torch_loop_s=float("nan"), speedup_vs_python_loop=t_loop / t_par,
                 speedup_vs_torch_loop=float("nan"), max_error=float(np.abs(sol.trajectory - ref_e).max()))
        )  # fmt: skip
        print(rows[-1], flush=True)
    md = [
        "| problem | T | backend | rounds | parallel [s] | Python loop [s] | torch loop [s] | speed-up vs Python loop | speed-up vs torch loop | max error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['problem']} | {r['T']:,} | {r['backend']} | {r['rounds']} | {r['parallel_s']:.3f} | {r['python_loop_s']:.3f} | "
            f"{r['torch_loop_s']:.3f} | {r['speedup_vs_python_loop']:.1f}x | {r['speedup_vs_torch_loop']:.1f}x | {r['max_error']:.1e} |"
        )
    md.append("")
    md.append(
        "Medians of 5 runs after a warm-up, single process, float64. The loops evaluate one row per step; the parallel solve evaluates every remaining row per round."
    )
    write("recurrences" + ("_quick" if args.quick else ""), {"rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
