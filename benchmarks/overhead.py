"""Solver overhead: time per round spent outside the system's evaluation.

    python benchmarks/overhead.py [--quick]

A semilinear system with a trivially cheap ``g`` runs through the real driver (Picard map,
full window, torch float32 on the CPU); the time inside ``g`` is measured and subtracted, so
what remains is the per-round cost of residuals, the tolerance test, the update map, the
solver step and the trajectory writes. Sizes: 100 rows of 4x64x64 (Stable Diffusion latents)
and 100 rows of 1x16x16 (the bundled digits model), history sizes 1-8, and 25-200 rows. The
reference is one batched evaluation of the bundled digits UNet over the same 100-row window.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

import trisolve  # noqa: E402


def per_round_overhead(rows: int, event: tuple, solver, rounds: int = 12, repeats: int = 3) -> float:
    """Median seconds per round outside ``g``."""
    samples = []
    for rep in range(repeats):
        inside = [0.0]

        def g(x, lo, hi):
            start = time.perf_counter()
            out = torch.tanh(x)  # cheap stand-in for the network
            inside[0] += time.perf_counter() - start
            return out

        system = trisolve.SemilinearSystem(np.full(rows, 0.999), np.full(rows, 1e-3), g)
        x0 = torch.randn(event, generator=torch.Generator().manual_seed(rep))
        start = time.perf_counter()
        sol = trisolve.solve(system, solver, x0, update_map=trisolve.Picard(), atol=0.0, max_iter=rounds)
        total = time.perf_counter() - start
        samples.append((total - inside[0]) / sol.num_rounds)
    return statistics.median(samples)


def network_time(rows: int, repeats: int = 5) -> float:
    from trisolve_diffusion.models import load_digits_unet

    unet = load_digits_unet()
    x = torch.randn(rows, 1, 16, 16)
    t = torch.randint(0, 1000, (rows,))
    with torch.no_grad():
        unet(x, t)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            unet(x, t)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    solvers = {
        "Jacobi": lambda m: trisolve.Jacobi(),
        "Anderson": lambda m: trisolve.Anderson(history_size=m),
        "TAA": lambda m: trisolve.TriangularAnderson(history_size=m),
    }
    events = {"4x64x64": (4, 64, 64), "1x16x16": (1, 16, 16)}
    histories = [2] if args.quick else [1, 2, 4, 8]
    row_counts = [25] if args.quick else [25, 50, 100, 200]  # --quick: small, its times mean nothing
    one_size = row_counts[-1] if args.quick else 100
    rounds = 4 if args.quick else 12
    records = []
    for ev_name, event in events.items():
        for name, make in solvers.items():
            for m in histories if name != "Jacobi" else [0]:
                for rows in row_counts if (ev_name == "4x64x64" and m in (0, 2)) else [one_size]:
                    t = per_round_overhead(rows, event, make(m), rounds=rounds, repeats=1 if args.quick else 3)
                    records.append(dict(event=ev_name, solver=name, history=m, rows=rows, overhead_ms=t * 1e3))
                    print(records[-1], flush=True)
    net = network_time(100, repeats=1 if args.quick else 5)
    md = [
        f"One batched evaluation of the bundled digits UNet over 100 rows (1x16x16): **{net * 1e3:.1f} ms**.",
        "",
        "| event | solver | history | rows | overhead per round [ms] | vs. network (100 rows, 1x16x16) |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        ratio = f"{100 * r['overhead_ms'] / (net * 1e3):.1f}%" if (r["event"] == "1x16x16" and r["rows"] == 100) else ""
        md.append(f"| {r['event']} | {r['solver']} | {r['history'] or '-'} | {r['rows']} | {r['overhead_ms']:.2f} | {ratio} |")
    md.append("")
    md.append("Median over 3 solves of 12 rounds each; torch float32 on the CPU; Picard map, full window. Overhead = wall time minus time inside g.")
    write("overhead" + ("_quick" if args.quick else ""), {"network_ms_100_rows": net * 1e3, "records": records}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
