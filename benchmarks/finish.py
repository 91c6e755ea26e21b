"""The output-aware finish on the bundled digits DDPM: rounds saved, fidelity kept.

    python benchmarks/finish.py            # seeds 0-9, batch 1 (and 4 for DDIM-50, FlowEuler-28); writes results/finish.{json,md}
    python benchmarks/finish.py --quick    # one seed of DDIM-25 (the test suite runs this)

On the bundled digits DDPM (DDIM-25/50/100, DDPM-100) and the bundled digits flow model
(flow-matching Euler, 28 steps), ``sample(pipe, ...)`` at its defaults (``final_row_atol="auto"``: a pixel-space pipeline stops once
the final image's pending correction is below one 8-bit grey level, ``PIXEL_FINAL_ATOL``)
against the same solve run until every step meets the tolerance (``final_row_atol=None``), and
both against the pipeline's sequential loop for the same seed: rounds, network evaluations
per step, worst PSNR and largest pixel difference (images in [0, 1]). Rounds and fidelity do
not depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

import trisolve  # noqa: E402
import trisolve_diffusion as td  # noqa: E402
from trisolve_diffusion.demo import psnr  # noqa: E402
from trisolve_diffusion.models import load_digits_flow_pipeline, load_digits_pipeline  # noqa: E402

SETTINGS = {
    "DDIM-25": ("ddim", 25, 1),
    "DDIM-50": ("ddim", 50, 1),
    "DDIM-100": ("ddim", 100, 1),
    "DDPM-100": ("ddpm", 100, 1),
    "FlowEuler-28": ("flow", 28, 1),
    "DDIM-50, batch 4": ("ddim", 50, 4),
    "FlowEuler-28, batch 4": ("flow", 28, 4),
}
METHODS = {"default (final_row_atol auto)": {}, "every step converged (final_row_atol=None)": {"final_row_atol": None}}


def run(settings, seeds) -> list[dict]:
    records = []
    pipes = {}
    for setting in settings:
        kind, steps, batch = SETTINGS[setting]
        if kind not in pipes:
            pipes[kind] = load_digits_flow_pipeline() if kind == "flow" else load_digits_pipeline(kind)
        pipe = pipes[kind]
        pipe.set_progress_bar_config(disable=True)
        for seed in seeds:
            ref = pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np").images
            for method, kw in METHODS.items():
                out = td.sample(pipe, batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np",
                                progress=False, window=trisolve.FullWindow(), **kw)  # the full window: rounds independent of timings
                sol = out.solution
                records.append(
                    dict(setting=setting, seed=seed, method=method, rounds=sol.num_rounds, status=sol.status.name, evals_per_step=sol.num_evals / steps,
                         psnr_db=min(psnr(out.images[i], ref[i]) for i in range(len(ref))), max_abs_diff=float(np.abs(out.images - ref).max()))
                )  # fmt: skip
                r = records[-1]
                print(f"{setting:9s} seed {seed} {method:40s} {r['rounds']:3d} rounds  {r['status']:20s} {r['psnr_db']:.1f} dB  max diff {r['max_abs_diff']:.1e}", flush=True)
    return records


def table(records) -> str:
    lines = [
        "| setting | method | rounds: median [min, max] | evals / step (median) | worst PSNR | largest max diff (pixels in [0, 1]) | runs >= 45 dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting in dict.fromkeys(r["setting"] for r in records):
        for method in METHODS:
            rs = [r for r in records if r["setting"] == setting and r["method"] == method]
            rounds = [r["rounds"] for r in rs]
            lines.append(
                f"| {setting} | {method} | {statistics.median(rounds):g} [{min(rounds)}, {max(rounds)}] | "
                f"{statistics.median(r['evals_per_step'] for r in rs):.2f} | {min(r['psnr_db'] for r in rs):.1f} dB | "
                f"{max(r['max_abs_diff'] for r in rs):.1e} | {sum(r['psnr_db'] >= 45 for r in rs)}/{len(rs)} |"
            )
    lines += ["", f"Batch 1 unless the setting says 4 (PSNR: the worst image of the batch), seeds {sorted({r['seed'] for r in records})}; "
              "one 8-bit grey level is 3.9e-3 in [0, 1]."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--settings", nargs="*", choices=list(SETTINGS), help="run only these, keeping the other records of results/finish.json")
    args = ap.parse_args(argv)
    settings, seeds = (["DDIM-25"], [0]) if args.quick else (args.settings or list(SETTINGS), list(range(10)))
    kept = []
    if args.settings and not args.quick:
        import json

        from common import RESULTS

        kept = [r for r in json.loads((RESULTS / "finish.json").read_text())["records"] if r["setting"] not in settings]
    records = kept + run(settings, seeds)
    records.sort(key=lambda r: (list(SETTINGS).index(r["setting"]), r["seed"]))
    write("finish_quick" if args.quick else "finish", {"records": records}, table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
