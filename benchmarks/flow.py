"""Flow-matching benchmark: rounds, network evaluations and fidelity of parallel samplers.

    python benchmarks/flow.py            # full suite (about an hour on a shared 2-core CPU)
    python benchmarks/flow.py --quick    # smoke size
    python benchmarks/flow.py --sweep    # 28 steps: solver and tolerance variants (results/flow_sweep.*)
    python benchmarks/flow.py --sweep --quick    # its smoke size: 20 steps, the first two variants

Model: the bundled digits rectified-flow model (``load_digits_flow_pipeline``) with
``FlowMatchEulerDiscreteScheduler`` (shift 1) at 20, 28 and 50 steps, seeds 0-9, batch 1 and 4.
Every method solves the same Euler loop as the real sequential ``pipe(...)``, the reference.
Per run: rounds to finish, the first round whose final sample is >= 40 dB PSNR from the
sequential one (worst image of the batch, pixels in [0, 1]), network evaluations (image rows)
per step, final worst PSNR and status. Medians and [min, max] over seeds.

Methods, all through ``trisolve_diffusion.sample`` (the same code):

- "Jacobi" -- the plain Jacobi iteration with the one-step map (each row from its predecessor's
  previous iterate);
- "Picard (ParaDiGMS) tol 0.1" -- Jacobi updates of the Picard map over the whole window at
  ParaDiGMS's tolerance (``atol = 0``, ``rtol = 0.1``, times the step's posterior std);
- "Picard, default tol" -- the same map and updates at the library's default tolerance;
- "TAA m=1, Picard (default)" -- the library default: TAA with one difference pair
  (``FlowMatchMapping.default_history_size``) and the output-aware finish;
- "TAA m=4, Picard" -- four pairs, the default of every other loop (and of flow loops before);
- variants of it with a looser tolerance or early stopping (the final latent's change
  between rounds below ``early_stop`` tolerance units).
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
from common import median_range as _stat  # noqa: E402
from common import write

import trisolve  # noqa: E402
import trisolve_diffusion as td  # noqa: E402
from trisolve_diffusion.demo import psnr  # noqa: E402
from trisolve_diffusion.models import load_digits_flow_pipeline  # noqa: E402

STEPS = (20, 28, 50)


TAA4 = td.default_solver()[0]  # the default of every loop but flow matching's: TAA, 4 pairs


def methods(quick: bool):
    out = [
        ("Jacobi", dict(solver=trisolve.Jacobi(), update_map=trisolve.OneStep())),
        ("Picard (ParaDiGMS) tol 0.1", dict(solver=trisolve.Jacobi(), update_map=trisolve.Picard(), atol=0.0, rtol=0.1)),
        ("Picard, default tol", dict(solver=trisolve.Jacobi(), update_map=trisolve.Picard())),
        ("TAA m=1, Picard (default)", dict()),
        ("TAA m=4, Picard", dict(solver=TAA4)),
        ("TAA m=4, Picard, tol 1e-3", dict(solver=TAA4, atol=1e-3, rtol=1e-3)),
        ("TAA m=4, Picard, tol 2e-3", dict(solver=TAA4, atol=2e-3, rtol=2e-3)),
        ("TAA m=4, Picard, early stop 1", dict(solver=TAA4, early_stop=1.0)),
        ("TAA m=4, Picard, early stop 4", dict(solver=TAA4, early_stop=4.0)),
        ("TAA m=4, Picard, early stop 16", dict(solver=TAA4, early_stop=16.0)),
    ]
    if quick:
        keep = {"Jacobi", "Picard (ParaDiGMS) tol 0.1", "TAA m=1, Picard (default)", "TAA m=4, Picard"}
        out = [m for m in out if m[0] in keep]
    return out


def sweep_methods():
    """Variants at 28 steps looking for a setting with median rounds <= 7 and every run >= 45 dB (``--sweep``)."""
    taa = trisolve.TriangularAnderson
    return [
        ("TAA m=1, Picard (default)", dict()),
        ("TAA m=4, Picard", dict(solver=TAA4)),
        ("TAA m=2, Picard", dict(solver=taa(history_size=2))),
        ("TAA m=8, Picard", dict(solver=taa(history_size=8))),
        ("Anderson m=4, Picard", dict(solver=trisolve.Anderson(history_size=4))),
        ("TAA m=4, k=T", dict(solver=TAA4, update_map=trisolve.Unrolled())),
        ("ParaTAA defaults (TAA m=1, lambda 1e-3, k=T)", dict(solver=taa(history_size=1, regularization=1e-3), update_map=trisolve.Unrolled())),
        ("TAA m=4, Picard, atol 1e-3 rtol 5e-4", dict(solver=TAA4, atol=1e-3, rtol=5e-4)),
        ("TAA m=4, Picard, atol 5e-4 rtol 2e-3", dict(solver=TAA4, atol=5e-4, rtol=2e-3)),
        ("TAA m=4, Picard, atol 2e-3 rtol 5e-4", dict(solver=TAA4, atol=2e-3, rtol=5e-4)),
    ]


def to_images(latents: torch.Tensor) -> np.ndarray:
    return (latents.float().cpu() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()  # DigitsFlowPipeline.postprocess


def worst_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return min(psnr(a[i], b[i]) for i in range(a.shape[0]))


def run_one(pipe, steps, seed, batch, opts):
    finals = []
    cb = lambda info: finals.append(info.trajectory[-1].clone()) and False  # noqa: E731
    start = time.perf_counter()
    out = td.sample(
        pipe, batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np",
        callback=cb, progress=False, **{"window": trisolve.FullWindow(), **opts},  # the full window: rounds independent of timings
    )  # fmt: skip
    return out, finals, time.perf_counter() - start


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sweep", action="store_true", help="28 steps only, solver and tolerance variants (results/flow_sweep.*)")
    ap.add_argument("--device", default="cpu", help="where the network runs (rounds and PSNR do not depend on it beyond round-off)")
    args = ap.parse_args(argv)
    steps_list = (20,) if args.quick else (28,) if args.sweep else STEPS
    seeds = [0] if args.quick else list(range(10))
    batches = [1] if args.quick else [1, 4]
    torch.set_num_threads(args.threads)
    # full float32 convolutions and products on a GPU, as on the CPU (no TF32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    pipe = load_digits_flow_pipeline().to(args.device)
    pipe.set_progress_bar_config(disable=True)
    records = []
    for steps in steps_list:
        for batch in batches:
            for seed in seeds:
                ref = pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np").images
                for name, opts in (sweep_methods()[:2] if args.quick else sweep_methods()) if args.sweep else methods(args.quick):
                    out, finals, wall = run_one(pipe, steps, seed, batch, opts)
                    sol = out.solution
                    curve = [worst_psnr(to_images(f), ref) for f in finals]
                    first = lambda db, curve=curve: next((i + 1 for i, v in enumerate(curve) if v >= db), None)  # noqa: E731
                    records.append(
                        dict(
                            steps=steps, batch=batch, seed=seed, method=name, rounds=sol.num_rounds, status=sol.status.name,
                            rounds_to_40db=first(40.0), rounds_to_45db=first(45.0), evals_per_step=sol.num_evals / steps,
                            final_psnr=worst_psnr(out.images, ref), max_abs_diff=float(np.abs(out.images - ref).max()), wall_s=wall,
                        )
                    )  # fmt: skip
                    r = records[-1]
                    print(
                        f"T={steps:3d} b{batch} s{seed} {name:32s} rounds {r['rounds']:3d} 40dB@{r['rounds_to_40db']} "
                        f"final {r['final_psnr']:.1f} dB evals/step {r['evals_per_step']:.2f} {r['status']}",
                        flush=True,
                    )
            # after every (steps, batch), so that a long run keeps what it measured
            name = "flow" + ("_sweep" if args.sweep else "") + ("_quick" if args.quick else "")
            write(name, {"device": args.device, "records": records}, table(records))


def table(records) -> str:
    lines = [
        "| steps | batch | method | rounds | rounds / steps (median) | rounds to 40 dB | evals / step | worst PSNR | runs >= 45 dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = []
    for r in records:
        k = (r["steps"], r["batch"], r["method"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        rs = [r for r in records if (r["steps"], r["batch"], r["method"]) == k]
        worst = min(r["final_psnr"] for r in rs)
        ok = sum(r["final_psnr"] >= 45 for r in rs)
        med = statistics.median(r["rounds"] for r in rs)
        lines.append(
            f"| {k[0]} | {k[1]} | {k[2]} | {_stat([r['rounds'] for r in rs])} | {med / k[0]:.2f} | {_stat([r['rounds_to_40db'] for r in rs])} | "
            f"{_stat([round(r['evals_per_step'], 2) for r in rs])} | {'inf' if worst == float('inf') else f'{worst:.1f}'} | {ok}/{len(rs)} |"
        )
    lines.append("")
    lines.append(
        "Median [min, max] over seeds; `*`: median of the runs that reached it. evals / step: network evaluations per image "
        "divided by the steps (sequential: 1). Worst PSNR: the worst image of every run, in dB from the sequential sample."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
