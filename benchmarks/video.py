"""Video benchmark: rounds and network evaluations of parallel samplers on tiny video transformers.

    python benchmarks/video.py            # full size
    python benchmarks/video.py --quick    # smoke size (the test suite runs it)

Models: the tiny random pipelines of :mod:`trisolve_diffusion.models.tiny_video`: Wan 2.1
(UniPC flow scheduler, ``flow_shift=3``, classifier-free guidance 5) on 16 x 16 x 9-frame
videos (16 x 3 x 2 x 2 latents), and LTX-Video (FlowMatchEuler with its dynamic shift,
guidance 3) on 32 x 32 x 9 frames (192 tokens of 8 channels), at 20 and 40 steps, seeds 0-2.
Every method runs through ``trisolve_diffusion.sample`` and is compared with the real
sequential ``pipe(..., output_type="latent")``: rounds to finish, network evaluations (video
rows, guidance counted once) per step, and the final latents' largest error relative to the
sequential ones' largest value. The weights are random, so the videos are noise-like; rounds
depend on the model, and a trained video model may need more or fewer. No timing: rounds and
evaluations are machine-independent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_range as _stat  # noqa: E402
from common import write  # noqa: E402

import trisolve  # noqa: E402
import trisolve_diffusion as td  # noqa: E402
from trisolve_diffusion.models.tiny_video import build_tiny_ltx, build_tiny_wan  # noqa: E402

METHODS = [
    ("Jacobi", dict(solver=trisolve.Jacobi(), update_map=trisolve.OneStep())),
    ("Picard (ParaDiGMS) tol 0.1", dict(solver=trisolve.Jacobi(), update_map=trisolve.Picard(), atol=0.0, rtol=0.1)),
    ("default (TAA)", dict()),
]


def _calls():
    g = torch.Generator().manual_seed(7)
    wan = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
               height=16, width=16, num_frames=9, guidance_scale=5.0)  # fmt: skip
    ltx = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), prompt_attention_mask=torch.ones(1, 8, dtype=torch.long),
               negative_prompt_embeds=torch.randn(1, 8, 32, generator=g), negative_prompt_attention_mask=torch.ones(1, 8, dtype=torch.long),
               height=32, width=32, num_frames=9, guidance_scale=3.0)  # fmt: skip
    return {"Wan 2.1 (UniPC flow)": (build_tiny_wan(text_encoder=False), wan), "LTX-Video (FlowMatch Euler)": (build_tiny_ltx(text_encoder=False), ltx)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps_list = (8,) if args.quick else (20, 40)
    seeds = [0] if args.quick else [0, 1, 2]
    records = []
    for model, (pipe, kw) in _calls().items():
        pipe.set_progress_bar_config(disable=True)
        for steps in steps_list:
            for seed in seeds:
                ref = pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=steps, output_type="latent", **kw).frames
                for method, opts in METHODS:
                    out = td.sample(
                        pipe, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps, output_type="latent",
                        progress=False, **kw, **{"window": trisolve.FullWindow(), **opts},  # rounds independent of timings
                    )  # fmt: skip
                    sol = out.solution
                    err = float((out.frames - ref).abs().max() / ref.abs().max())
                    records.append(dict(model=model, steps=steps, seed=seed, method=method, rounds=sol.num_rounds,
                                        evals_per_step=sol.num_evals / steps, rel_error=err, status=sol.status.name))  # fmt: skip
    name = "video_quick" if args.quick else "video"
    write(name, {"records": records}, table(records))
    return records


def table(records) -> str:
    lines = [
        "| model | steps | method | rounds | evaluations / step | max rel. error of the final latents | status |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["model"], r["steps"], r["method"]) for r in records)
    for model, steps, method in keys:
        rs = [r for r in records if (r["model"], r["steps"], r["method"]) == (model, steps, method)]
        statuses = ", ".join(sorted({r["status"] for r in rs}))
        lines.append(
            f"| {model} | {steps} | {method} | {_stat([r['rounds'] for r in rs])} | {_stat([round(r['evals_per_step'], 2) for r in rs])} "
            f"| {max(r['rel_error'] for r in rs):.1e} | {statuses} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
