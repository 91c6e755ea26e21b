"""The ODE front doors: rounds of the default method vs the number of steps, and wall time next to the loops.

    python benchmarks/ode.py [--quick]

Problems (float64, CPU, one thread):

* Lorenz (sigma 10, rho 28, beta 8/3) from (1, 1, 1) with ``trisolve.odeint(method="rk4")``,
  h = 0.01 up to T = 20 (n = 2000), against ``torchdiffeq.odeint`` with the same grid;
* a damped, forced pendulum with ``trisolve.solve_ivp(method="RK4")`` in NumPy, h = 0.05,
  against the NumPy loop of the same steps and against ``scipy.integrate.solve_ivp``
  (DOP853, rtol 1e-10, atol 1e-12, same output times);
* a neural ODE (MLP 4-32-4, tanh, random weights) with ``trisolve.odeint``, h = 0.05,
  against ``torchdiffeq.odeint``; and with ``method="explicit_adams"`` (``max_order`` 4 and
  torchdiffeq's default 12), h = 0.01.

Each row gives the default method's rounds (machine-independent), rounds / n, evaluations of
``f``, and median wall times of the parallel solve and of the reference loop (3 runs after a
warm-up; ``--quick``: 1 run), plus the largest difference from the reference. Wall times on a
shared CPU say nothing about a GPU: a round on a CPU costs about as much as the rows it
evaluates, so the parallel solve is slower than the loop here by design.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.integrate
import torch
import torchdiffeq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time, write  # noqa: E402

import trisolve  # noqa: E402


def lorenz_torch(t, y):
    return torch.stack([10.0 * (y[1] - y[0]), y[0] * (28.0 - y[2]) - y[1], y[0] * y[1] - 8.0 / 3.0 * y[2]])


def pendulum_np(t, y):
    return np.array([y[1], -np.sin(y[0]) - 0.2 * y[1] + 0.5 * np.cos(1.3 * t)])


def rk4_loop_np(f, grid, y0):
    ys = [np.asarray(y0, dtype=np.float64)]
    for a, b in zip(grid[:-1], grid[1:]):
        h, y = b - a, ys[-1]
        k1 = f(a, y)
        k2 = f(a + h / 2, y + h / 2 * k1)
        k3 = f(a + h / 2, y + h / 2 * k2)
        k4 = f(b, y + h * k3)
        ys.append(y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
    return np.stack(ys, axis=1)


def neural_field(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).double()
    for p in net.parameters():
        p.requires_grad_(False)
    return lambda t, y: net(y)


def odeint_row(problem, func, y0, t, repeats, method="rk4", options=None):
    secs, (ys, info) = median_time(lambda: trisolve.odeint(func, y0, t, method=method, options=options, return_info=True), repeats)
    ref_secs, ref = median_time(lambda: torchdiffeq.odeint(func, y0, t, method=method, options=options), repeats)
    n = t.shape[0] - 1
    door = f"odeint {method}" + (f" max_order={options['max_order']}" if options else "")
    return dict(problem=problem, front_door=door, n=n, rounds=info.num_rounds, rounds_over_n=info.num_rounds / n, nfev=info.nfev,
                method=f"{info.solver!r} on {info.update_map!r}", status=info.solution.status.name, trisolve_s=secs,
                reference="torchdiffeq.odeint", reference_s=ref_secs, max_diff=float((ys - ref).abs().max()))  # fmt: skip


def solve_ivp_row(n, repeats):
    h = 0.05
    T = n * h
    y0 = [2.0, 0.0]
    secs, res = median_time(lambda: trisolve.solve_ivp(pendulum_np, (0.0, T), y0, step=h), repeats)
    loop_secs, ref = median_time(lambda: rk4_loop_np(pendulum_np, res.grid, y0), repeats)
    scipy_secs, sp = median_time(
        lambda: scipy.integrate.solve_ivp(pendulum_np, (0.0, T), y0, method="DOP853", rtol=1e-10, atol=1e-12, t_eval=res.t), repeats
    )
    return dict(problem="forced pendulum, NumPy", front_door="solve_ivp RK4", n=n, rounds=res.num_rounds, rounds_over_n=res.num_rounds / n,
                nfev=res.nfev, method=f"{res.solver!r} on {res.update_map!r}", status=res.solution.status.name, trisolve_s=secs,
                reference="NumPy RK4 loop", reference_s=loop_secs, max_diff=float(np.abs(res.y - ref).max()),
                scipy_dop853_s=scipy_secs, max_diff_scipy=float(np.abs(res.y - sp.y).max()))  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    repeats = 1 if args.quick else 3
    rows = []
    y_lorenz = torch.ones(3, dtype=torch.float64)
    for T in [1.0] if args.quick else [2.0, 5.0, 10.0, 20.0]:
        n = round(T / 0.01)
        t = torch.linspace(0.0, T, n + 1, dtype=torch.float64)
        rows.append(odeint_row("Lorenz, torch", lorenz_torch, y_lorenz, t, repeats))
    for n in [100] if args.quick else [200, 1000, 4000]:
        rows.append(solve_ivp_row(n, repeats))
    f = neural_field()
    y0 = torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64)
    for n in [50] if args.quick else [100, 1000, 4000]:
        t = torch.linspace(0.0, n * 0.05, n + 1, dtype=torch.float64)
        rows.append(odeint_row("neural ODE (MLP 4-32-4), torch", f, y0, t, repeats))
    for max_order in (4, 12):  # a multistep method: row i reads max_order - 1 earlier rows
        for n in [50] if args.quick else [100, 1000]:
            t = torch.linspace(0.0, n * 0.01, n + 1, dtype=torch.float64)
            rows.append(odeint_row("neural ODE (MLP 4-32-4), torch", f, y0, t, repeats, "explicit_adams", dict(max_order=max_order)))
    md = [
        f"Default method of each front door; wall times are medians of {repeats} run(s) on one CPU thread of a shared machine.",
        "",
        "| problem | front door | n | rounds | rounds / n | nfev | trisolve [s] | reference | reference [s] | max diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['problem']} | {r['front_door']} | {r['n']:,} | {r['rounds']} | {r['rounds_over_n']:.1%} | {r['nfev']:,} | {r['trisolve_s']:.3f} | "
            f"{r['reference']} | {r['reference_s']:.3f} | {r['max_diff']:.1e} |"
        )
    sp = [r for r in rows if "scipy_dop853_s" in r]
    md += ["", "| pendulum n | SciPy DOP853 (rtol 1e-10) [s] | max diff from trisolve RK4 |", "|---|---|---|"]
    md += [f"| {r['n']:,} | {r['scipy_dop853_s']:.3f} | {r['max_diff_scipy']:.1e} |" for r in sp]
    md += ["", "Methods (the default of each front door): " + "; ".join(sorted({r["method"] for r in rows})) + "."]
    write("ode_quick" if args.quick else "ode", {"rows": rows, "repeats": repeats}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
