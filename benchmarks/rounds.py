"""Rounds of the default parallel sampler for every scheduler, against the issue's targets.

    python benchmarks/rounds.py                    # seeds 0-9, every setting; writes results/rounds.{json,md}
    python benchmarks/rounds.py --seeds 20-39      # other seeds (results/rounds_seeds20-39.*)
    python benchmarks/rounds.py --quick            # one seed of DDIM-25, Euler-25 and FlowEuler-20 (the test suite runs this)

Model: the bundled digits DDPM (``load_digits_pipeline``) with the scheduler of each setting,
and the bundled digits flow model (``load_digits_flow_pipeline``) for flow-matching Euler.
DDIM, DDPM and DPM-Solver++(2M) use the digits pipelines' own schedulers; the others are built
from the digits scheduler config with Stable Diffusion's spacing (``timestep_spacing="leading"``,
``steps_offset=1``; PNDM with ``skip_prk_steps``), as SD users run them.

Reference: the sequential loop a Stable Diffusion pipeline runs on the same network (initial noise
times ``init_noise_sigma``, ``scale_model_input``, ``step`` with the generator); for the flow
model ``pipe(...)`` itself. Parallel: :func:`trisolve_diffusion.sample_latents` with the options
``sample(pipe, ...)`` uses on a pixel-space pipeline (default ``SolveOptions``, ``final_atol``
resolved for pixel space), and ``sample(pipe, ...)`` for the flow model; the window is the full
one (``trisolve.FullWindow()``) rather than the timed automatic choice, so that the rounds do not
depend on the machine's load. Per run: rounds, network
evaluations per step, status and the worst PSNR of the batch from the sequential images (pixels
in [0, 1]). Rounds, evaluations and PSNR do not depend on the machine.
"""

from __future__ import annotations

import argparse
import inspect
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
from trisolve_diffusion.network import unet_denoiser  # noqa: E402

#: setting -> (kind, steps, batch, issue 26's target for the median rounds)
SETTINGS = {
    "DDIM-25": ("ddim", 25, 1, 6),
    "DDIM-50": ("ddim", 50, 1, 6),
    "DDIM-100": ("ddim", 100, 1, 7),
    "DDPM-100": ("ddpm", 100, 1, 13),
    "DPM++2M-20": ("dpm++", 20, 1, 6),
    "UniPC-20": ("UniPCMultistepScheduler", 20, 1, 6),
    "PNDM-50": ("PNDMScheduler", 50, 1, 7),
    "Euler-25": ("EulerDiscreteScheduler", 25, 1, 7),
    "Euler-50": ("EulerDiscreteScheduler", 50, 1, 8),
    "EulerA-25": ("EulerAncestralDiscreteScheduler", 25, 1, 10),
    "LMS-25": ("LMSDiscreteScheduler", 25, 1, 8),
    "Heun-25": ("HeunDiscreteScheduler", 25, 1, 10),
    "FlowEuler-28": ("flow", 28, 1, 6),
    "DDIM-50, batch 4": ("ddim", 50, 4, 8),
    "FlowEuler-28, batch 4": ("flow", 28, 4, None),
}
QUICK = {"DDIM-25": ("ddim", 25, 1, 6), "Euler-25": ("EulerDiscreteScheduler", 25, 1, 7), "FlowEuler-20": ("flow", 20, 1, None)}
SD_SPACING = {"timestep_spacing": "leading", "steps_offset": 1}
OVERRIDES = {"PNDMScheduler": {"skip_prk_steps": True}}


def make_scheduler(kind: str, steps: int):
    import diffusers

    from trisolve_diffusion.models import load_digits_pipeline
    from trisolve_diffusion.models.digits import SCHEDULER_CONFIG

    if kind in ("ddim", "ddpm", "dpm++"):
        sched = load_digits_pipeline(kind).scheduler
    else:
        sched = getattr(diffusers, kind)(**{**SCHEDULER_CONFIG, **SD_SPACING, **OVERRIDES.get(kind, {})})
    sched.set_timesteps(steps)
    return sched


def images(latents: torch.Tensor) -> np.ndarray:
    return (latents.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def sequential(unet, sched, seed: int, batch: int) -> torch.Tensor:
    """The Stable Diffusion pipeline's loop on the unconditional digits network."""
    from diffusers.utils.torch_utils import randn_tensor

    gen = torch.Generator().manual_seed(seed)
    x = randn_tensor((batch, 1, 16, 16), generator=gen, dtype=unet.dtype) * sched.init_noise_sigma
    kw = {"generator": gen} if "generator" in inspect.signature(sched.step).parameters else {}
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x, **kw).prev_sample
    return x


def parallel(unet, sched, seed: int, batch: int, options: td.SolveOptions):
    from diffusers.utils.torch_utils import randn_tensor

    gen = torch.Generator().manual_seed(seed)
    x = randn_tensor((batch, 1, 16, 16), generator=gen, dtype=unet.dtype) * sched.init_noise_sigma
    return td.sample_latents(unet_denoiser(unet), sched, x, generator=gen, options=options.resolve_final_atol(pixel_space=True))


def run(settings: dict, seeds: list[int], options: td.SolveOptions) -> list[dict]:
    from trisolve_diffusion.models import load_digits_flow_pipeline, load_digits_unet

    unet, flow = load_digits_unet(), None
    records = []
    for setting, (kind, steps, batch, target) in settings.items():
        for seed in seeds:
            if kind == "flow":
                if flow is None:
                    flow = load_digits_flow_pipeline()
                    flow.set_progress_bar_config(disable=True)
                ref = flow(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np").images
                out = td.sample(flow, batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                                output_type="np", options=options)  # fmt: skip
                got, sol = out.images, out.solution
            else:
                sched = make_scheduler(kind, steps)
                ref = images(sequential(unet, sched, seed, batch))
                sched = make_scheduler(kind, steps)
                final, sol = parallel(unet, sched, seed, batch, options)
                got = images(final)
            records.append(
                dict(setting=setting, steps=steps, batch=batch, target=target, seed=seed, rounds=sol.num_rounds, status=sol.status.name,
                     evals_per_step=sol.num_evals / steps, psnr_db=min(psnr(got[i], ref[i]) for i in range(batch)))
            )  # fmt: skip
            r = records[-1]
            print(f"{setting:22s} seed {seed:2d} {r['rounds']:3d} rounds  {r['status']:20s} {r['psnr_db']:6.1f} dB", flush=True)
    return records


def table(records: list[dict], seeds: list[int]) -> str:
    lines = [
        "| setting | rounds: median [min, max] | issue 26 target (median) | evals / step (median) | worst PSNR | runs >= 45 dB |",
        "|---|---|---|---|---|---|",
    ]
    for setting in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == setting]
        rounds = [r["rounds"] for r in rs]
        med, target = statistics.median(rounds), rs[0]["target"]
        mark = "" if target is None else (" (met)" if med <= target else " (missed)")
        lines.append(
            f"| {setting} | {med:g} [{min(rounds)}, {max(rounds)}] | {'-' if target is None else f'<= {target}'}{mark} | "
            f"{statistics.median(r['evals_per_step'] for r in rs):.2f} | {min(r['psnr_db'] for r in rs):.1f} dB | "
            f"{sum(r['psnr_db'] >= 45 for r in rs)}/{len(rs)} |"
        )
    lines += ["", f"Seeds {seeds[0]}-{seeds[-1]}, default options; batch 1 unless the setting says 4 (PSNR: the worst image of the "
              "batch, from the sequential loop's, pixels in [0, 1]). evals / step: network evaluations per image over the steps "
              "(sequential: 1; PNDM's doubled first step and Heun's 2T - 1 rows make theirs larger)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", default="0-9", help="a range such as 0-9 or 20-39")
    ap.add_argument("--settings", nargs="*", choices=list(SETTINGS), help="run only these")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [0] if args.quick else parse_seeds(args.seeds)
    settings = QUICK if args.quick else {k: SETTINGS[k] for k in (args.settings or SETTINGS)}
    records = run(settings, seeds, td.SolveOptions(progress=False, window_size=trisolve.FullWindow()))
    name = "rounds_quick" if args.quick else "rounds" if args.seeds == "0-9" and not args.settings else f"rounds_seeds{args.seeds}"
    if args.settings and not args.quick:
        name += "_" + "_".join(s.split(",")[0].lower() for s in args.settings)
    write(name, {"seeds": seeds, "records": records}, table(records, seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
