"""Peak memory of a solve, as a multiple of the trajectory, per solver and window.

Measured with ``tracemalloc`` on NumPy (every array the solve allocates, beyond its inputs),
on a tanh RNN ``x_i = tanh(W x_{i-1} + b_i)`` of hidden size 4 in float64 (32 bytes a row, the
size where per-row bookkeeping weighs most), to ``atol = 1e-10``. Machine-independent: no
timing. ``python benchmarks/memory.py [--n 1000000]``; ``--quick`` is the smoke run.
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np
from common import write

import trisolve


def rnn(n: int, d: int = 4, seed: int = 0) -> trisolve.BlackBoxSystem:
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, d)) * 0.6 / d**0.5
    b = rng.standard_normal((n + 1, d))
    return trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1] @ W.T + b[lo:hi]), n)


SETTINGS = [
    ("default (solver=None)", dict(solver=None)),
    ("Jacobi, full window", dict(solver=trisolve.Jacobi())),
    ("Jacobi, window 64", dict(solver=trisolve.Jacobi(), window=64)),
    ("TAA m=2, full window", dict(solver=trisolve.TriangularAnderson())),
    ("TAA m=4, full window", dict(solver=trisolve.TriangularAnderson(history_size=4))),
    ("TAA m=2, window 64", dict(solver=trisolve.TriangularAnderson(), window=64)),
]


def measure(n: int) -> list[dict]:
    system, x0 = rnn(n), np.zeros(4)
    trajectory = (n + 1) * x0.nbytes
    rows = []
    for name, kw in SETTINGS:
        kw = dict(kw)
        solver = kw.pop("solver")
        trisolve.solve(rnn(8), solver, x0, **kw)  # one-time allocations (imports, caches)
        tracemalloc.start()
        sol = trisolve.solve(system, solver, x0, atol=1e-10, **kw)
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        records = sol.windows.nbytes + sol.round_max_errors.nbytes
        rows.append(dict(setting=name, n=n, status=sol.status.name, rounds=sol.num_rounds, trajectory_bytes=trajectory,
                         peak_over_trajectory=peak / trajectory, held_over_trajectory=held / trajectory,
                         record_bytes_per_round=records / max(sol.num_rounds, 1)))  # fmt: skip
        print(rows[-1])
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n = 2000 if args.quick else args.n
    rows = measure(n)
    md = [
        f"Peak memory of one solve / the trajectory ({(n + 1) * 32 / 2**20:.1f} MiB), tanh RNN hidden 4, float64, n = {n:,}, "
        "NumPy, `tracemalloc` (`python benchmarks/memory.py`):\n",
        "| setting | rounds | peak / trajectory | held after / trajectory | record bytes per round |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {r['setting']} | {r['rounds']} | {r['peak_over_trajectory']:.1f} | {r['held_over_trajectory']:.2f} | {r['record_bytes_per_round']:.0f} |"
        for r in rows
    ]
    write("memory_quick" if args.quick else "memory", {"rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
