"""Diffusion benchmark: rounds, network evaluations and fidelity of parallel samplers.

    python benchmarks/diffusion.py            # full suite (tens of minutes on 2 CPU cores)
    python benchmarks/diffusion.py --quick    # smoke size
    python benchmarks/diffusion.py --settings Euler-25 PNDM-50   # rerun these, keep the other records

Model: the bundled digits DDPM (``trisolve_diffusion.models``). For every setting, seed and
batch size, every method solves the same sampler as the real sequential diffusers loop
(``pipe(...)``), which is the reference. Batch 1 runs every method; batch 4 runs the methods
in ``BATCH4``. Per run: rounds to finish, first round whose final
sample is >= 30 / >= 40 dB PSNR from the sequential one (worst image of the batch, pixels in
[0, 1]), network evaluations (image rows) and their ratio to sequential, final max abs
difference and PSNR. Medians and [min, max] over seeds.

Methods. "ParaDiGMS" is the Picard map with a sliding window and Jacobi updates at its
tolerance (rtol = 0.1 or 0.01 times the posterior std, atol = 0); trisolve's freeze test also
requires the one-step residual to pass, so this is a slightly stricter ParaDiGMS. "ParaTAA
defaults" is TAA with one difference pair, lambda = 1e-3 (relative here), order T (DDIM) or 20,
atol = rtol = 1e-3. The samplers' default (``solver=None``: ``td.default_solver(mapping)``) is
labelled with what it is for the setting's scheduler (:func:`default_label`): "TAA m=4, Picard
(default)" for the deterministic loops, "TAA m=4, WeightedPicard (default)" for the loops that
inject noise (DDPM, Euler ancestral); its early-stop and tol-1e-3 variants carry the same name.

Scheduler settings ("Euler-25", "EulerA-25", "UniPC-20", "PNDM-50", ...): the same network sampled
with another diffusers scheduler (built from the digits scheduler config with SD's spacing,
``timestep_spacing="leading"``, ``steps_offset=1``), seeds 0-9, batch 1. The default method is
``sample_latents`` itself with its defaults (full window): for the k-diffusion schedulers it
solves the variance-preserving rows ``mapping.scaled()``; those settings also run the default
solver on the unscaled latent rows ("..., latent rows", :func:`parallel_latents`). The reference
is the loop a Stable Diffusion pipeline runs (initial noise times ``init_noise_sigma``,
``scale_model_input``, ``step`` with the generator); the parallel solves map the scheduler
(``map_scheduler``), pre-draw its noise in the loop's order and feed the network ``input_scale *
x``. "evals / T" divides by the number of steps; PNDM's doubled first step makes it ``T + 1``
network evaluations sequentially.

Records written before the labels were derived (results of 2026-11-27) say "TAA m=4, Picard
(default)" for every setting, Picard being the default of that date; on the scheduler settings
that record is the solve on the latent rows at atol = rtol = 5e-4 without the output-aware finish,
and "TAA m=4, Picard, VP rows (mapping.scaled())" the same solve on the scaled rows.
"""

from __future__ import annotations

import argparse
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
from trisolve_diffusion.models import load_digits_pipeline  # noqa: E402
from trisolve_diffusion.sampler import DEFAULT_TOLERANCE  # noqa: E402


def pipeline(setting: str):
    kind, steps = setting.rsplit("-", 1)
    return load_digits_pipeline({"DDIM": "ddim", "DDPM": "ddpm", "DPM++2M": "dpm++"}[kind]), int(steps)


#: Scheduler settings: name -> (diffusers class name, config overrides on the digits scheduler config).
SCHEDULER_SETTINGS = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "EulerA": ("EulerAncestralDiscreteScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
}
SD_SPACING = {"timestep_spacing": "leading", "steps_offset": 1}


def make_scheduler(setting: str, steps: int):
    import diffusers

    from trisolve_diffusion.models.digits import SCHEDULER_CONFIG

    cls_name, overrides = SCHEDULER_SETTINGS[setting.rsplit("-", 1)[0]]
    sched = getattr(diffusers, cls_name)(**{**SCHEDULER_CONFIG, **SD_SPACING, **overrides})
    sched.set_timesteps(steps)
    return sched


def _initial_latents(unet, sched, seed: int, batch: int):
    """The SD loop's initial noise and the generator it continues with (the step noise comes next)."""
    from diffusers.utils.torch_utils import randn_tensor

    gen = torch.Generator().manual_seed(seed)
    return randn_tensor((batch, 1, 16, 16), generator=gen, dtype=unet.dtype) * sched.init_noise_sigma, gen


def sequential_latents(unet, sched, seed: int, batch: int) -> torch.Tensor:
    """The Stable Diffusion pipeline's loop on an unconditional network."""
    import inspect

    x, gen = _initial_latents(unet, sched, seed, batch)
    kw = {"generator": gen} if "generator" in inspect.signature(sched.step).parameters else {}
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(out, t, x, **kw).prev_sample
    return x


def default_latents(unet, sched, seed: int, batch: int, callback) -> trisolve.Solution:
    """The same loop solved by ``sample_latents`` with its defaults (the full window: rounds independent of timings)."""
    x0, gen = _initial_latents(unet, sched, seed, batch)
    _, sol = td.sample_latents(td.UNetDenoiser(unet), sched, x0, generator=gen, window=trisolve.FullWindow(), callback=callback,
                               progress=False)  # fmt: skip
    return sol


def parallel_latents(unet, sched, seed: int, batch: int, callback):
    """The same loop solved in parallel rounds on the latent rows (unscaled) with the default solver of the mapping
    and ``sample``'s default tolerance (atol = rtol = 5e-4, no output-aware finish)."""
    from trisolve_diffusion.sampler import draw_noise

    x0, gen = _initial_latents(unet, sched, seed, batch)
    shape = tuple(x0.shape)
    mapping = td.map_scheduler(sched)
    noise = draw_noise(mapping, shape, gen, x0.device, unet.dtype, torch.float32)
    denoiser = td.UNetDenoiser(unet)
    ts = torch.as_tensor(mapping.timesteps).to(sched.timesteps.dtype)  # (n,) as sample_latents passes them

    def g(x_rows, lo, hi):  # (w, batch, 1, 16, 16): the network on input_scale * x, as sample_latents does
        model_input = (x_rows * mapping.table("input_scale", x_rows)[lo:hi]).reshape(-1, *shape[1:])
        out = denoiser(model_input, ts[lo:hi].repeat_interleave(batch)).reshape(x_rows.shape)
        return mapping.g(x_rows, out, lo, hi)

    system = trisolve.SemilinearSystem(mapping.a, mapping.B, g, c=noise, sigma=mapping.sigma, batch_ndim=1)
    solver, update_map = td.default_solver(mapping)
    with torch.no_grad():  # the samplers' default tolerance (atol = rtol = 5e-4)
        return trisolve.solve(system, solver, x0, update_map=update_map, **DEFAULT_TOLERANCE.as_kwargs(), callback=callback)


def default_label(mapping) -> str:
    """What the samplers' default runs on ``mapping`` (``td.default_solver(mapping)``), as a method label: ``"TAA m=4, Picard"``."""
    solver, update_map = td.default_solver(mapping)
    name = "TAA" if isinstance(solver, trisolve.TriangularAnderson) else type(solver).__name__
    return f"{name} m={solver.history_size}, {type(update_map).__name__}"


def run_scheduler_setting(setting: str, seeds, records):
    from trisolve_diffusion.models import load_digits_unet

    unet = load_digits_unet()
    steps = int(setting.rsplit("-", 1)[1])
    mapping = td.map_scheduler(make_scheduler(setting, steps))
    # the default: sample_latents, on the rows it solves (mapping.scaled(): the mapping itself without a row_scale)
    variants = [(f"{default_label(mapping.scaled())} (default)", default_latents)]
    if mapping.row_scale is not None:
        variants.append((f"{default_label(mapping)}, latent rows", parallel_latents))
    for seed, (method, solve) in [(seed, v) for seed in seeds for v in variants]:
        ref = to_images(sequential_latents(unet, make_scheduler(setting, steps), seed, 1))
        sched = make_scheduler(setting, steps)
        finals = []
        start = time.perf_counter()
        sol = solve(unet, sched, seed, 1, lambda info: finals.append(info.trajectory[-1].clone()) and False)  # latents
        wall = time.perf_counter() - start
        curve = [worst_psnr(to_images(f), ref) for f in finals]
        first = lambda db, curve=curve: next((i + 1 for i, v in enumerate(curve) if v >= db), None)
        images = to_images(sol.trajectory[-1])
        records.append(
            dict(
                setting=setting, steps=steps, batch=1, seed=seed, method=method, rounds=sol.num_rounds,
                status=sol.status.name, rounds_to_30db=first(30.0), rounds_to_40db=first(40.0), evals=sol.num_evals,
                evals_rel=sol.num_evals / steps, final_psnr=worst_psnr(images, ref), max_abs_diff=float(np.abs(images - ref).max()),
                wall_s=wall,
            )
        )  # fmt: skip
        r = records[-1]
        print(
            f"{setting:11s} b1 s{seed} {method:45s} rounds {r['rounds']:3d} 40dB@{r['rounds_to_40db']} final {r['final_psnr']:.1f} dB evals x{r['evals_rel']:.2f}",
            flush=True,
        )


#: Methods also run at batch 4 (batch 1 runs all of them); ``{default}``: :func:`default_label` of the setting.
BATCH4 = {"Jacobi k=T", "ParaDiGMS tol 0.1, W=all", "ParaTAA defaults", "{default} (default)", "{default}, tol 1e-3"}
#: Methods of ``--quick``.
QUICK = {"Jacobi k=T", "ParaTAA defaults", "{default} (default)"}


def methods(T: int, quick: bool, batch: int, default: str):
    """``(label, sample() keywords)`` of the methods run on a setting of ``T`` steps; ``default``: :func:`default_label` of its
    scheduler (the label of the samplers' default and of its variants, which run ``solver=None`` too)."""
    taa_order = T if T <= 50 else 20
    out = [
        ("Jacobi k=1", dict(solver=trisolve.Jacobi(), update_map=trisolve.OneStep())),
        ("Jacobi k=T", dict(solver=trisolve.Jacobi(), update_map=trisolve.Unrolled())),
        ("ParaDiGMS tol 0.1, W=all", dict(solver=trisolve.Jacobi(), update_map=trisolve.Picard(), atol=0.0, rtol=0.1)),
        ("ParaDiGMS tol 0.01, W=all", dict(solver=trisolve.Jacobi(), update_map=trisolve.Picard(), atol=0.0, rtol=0.01)),
        (
            "ParaDiGMS tol 0.1, W=8",
            dict(solver=trisolve.Jacobi(), update_map=trisolve.Picard(), window=8, atol=0.0, rtol=0.1),
        ),
        (
            "ParaTAA defaults",
            dict(
                solver=trisolve.TriangularAnderson(history_size=1, regularization=1e-3),
                update_map=trisolve.Unrolled(order=taa_order),
            ),
        ),
        ("Anderson m=2, k=T", dict(solver=trisolve.Anderson(history_size=2), update_map=trisolve.Unrolled())),
        ("TAA m=2, k=T", dict(solver=trisolve.TriangularAnderson(history_size=2), update_map=trisolve.Unrolled())),
        ("TAA m=2, Picard", dict(solver=trisolve.TriangularAnderson(history_size=2), update_map=trisolve.Picard())),
        (f"{default} (default)", dict()),
        (f"{default}, early stop", dict(early_stop=1.0)),
        (f"{default}, tol 1e-3", dict(atol=1e-3, rtol=1e-3)),
    ]
    keep = QUICK if quick else BATCH4 if batch > 1 else None
    if keep is not None:
        out = [m for m in out if m[0] in {k.format(default=default) for k in keep}]
    return out


def to_images(latents: torch.Tensor) -> np.ndarray:
    return (latents.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def run_one(pipe, steps, seed, batch, opts):
    finals = []
    cb = lambda info: finals.append(info.trajectory[-1].clone()) and False
    start = time.perf_counter()
    out = td.sample(
        pipe,
        batch_size=batch,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        callback=cb,
        **{"window": trisolve.FullWindow(), **opts},  # the full window unless the method says: rounds independent of timings
    )
    return out, finals, time.perf_counter() - start


def worst_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return min(psnr(a[i], b[i]) for i in range(a.shape[0]))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--settings", nargs="*", help="rerun only these settings, keeping the other records of results/diffusion.json")
    args = ap.parse_args(argv)
    all_settings = ["DDIM-25", "DDIM-50", "DDIM-100", "DDPM-100", "DPM++2M-20", "DPM++2M-50"]
    all_settings += ["Euler-25", "Euler-50", "EulerA-25", "EulerA-50", "UniPC-20", "UniPC-50", "PNDM-25", "PNDM-50"]
    settings = args.settings or (["DDIM-25"] if args.quick else all_settings)
    seeds = [0] if args.quick else [0, 1, 2, 3, 4]
    batches = [1] if args.quick else [1, 4]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    records = []
    if args.settings and not args.quick:
        import json

        from common import RESULTS

        kept = json.loads((RESULTS / "diffusion.json").read_text())["records"]
        records = [r for r in kept if r["setting"] not in settings]
    for setting in settings:
        if setting.rsplit("-", 1)[0] in SCHEDULER_SETTINGS:
            run_scheduler_setting(setting, seeds if args.quick else list(range(10)), records)
            records.sort(key=lambda r: (_setting_order(r["setting"], all_settings), r["batch"], r["seed"]))
            write("diffusion" + ("_quick" if args.quick else ""), {"records": records}, table(records))
            continue
        pipe, steps = pipeline(setting)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler.set_timesteps(steps)
        default = default_label(td.map_scheduler(pipe.scheduler))
        for batch in batches:
            for seed in seeds:
                ref = pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np").images
                for name, opts in methods(steps, args.quick, batch, default):
                    out, finals, wall = run_one(pipe, steps, seed, batch, opts)
                    sol = out.solution
                    curve = [worst_psnr(to_images(f), ref) for f in finals]
                    first = lambda db, curve=curve: next((i + 1 for i, v in enumerate(curve) if v >= db), None)
                    records.append(
                        dict(
                            setting=setting, steps=steps, batch=batch, seed=seed, method=name, rounds=sol.num_rounds,
                            status=sol.status.name, rounds_to_30db=first(30.0), rounds_to_40db=first(40.0),
                            evals=sol.num_evals * batch, evals_rel=sol.num_evals / steps, final_psnr=worst_psnr(out.images, ref),
                            max_abs_diff=float(np.abs(out.images - ref).max()), wall_s=wall,
                        )
                    )  # fmt: skip
                    r = records[-1]
                    print(
                        f"{setting:11s} b{batch} s{seed} {name:30s} rounds {r['rounds']:3d} 40dB@{r['rounds_to_40db']} "
                        f"final {r['final_psnr']:.1f} dB evals x{r['evals_rel']:.2f}",
                        flush=True,
                    )
        # after every setting, so that a long run keeps what it measured
        records.sort(key=lambda r: (_setting_order(r["setting"], all_settings), r["batch"], r["seed"]))
        write("diffusion" + ("_quick" if args.quick else ""), {"records": records}, table(records))


def _setting_order(setting: str, all_settings: list[str]) -> int:
    """Sort key: the suite's order, settings outside it (``--settings Euler-6``) after it."""
    return all_settings.index(setting) if setting in all_settings else len(all_settings)


def table(records) -> str:
    lines = [
        "| setting | batch | method | rounds | rounds to 30 dB | rounds to 40 dB | evals / T | final PSNR (min) | runs >= 40 dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = []
    for r in records:
        k = (r["setting"], r["batch"], r["method"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        rs = [r for r in records if (r["setting"], r["batch"], r["method"]) == k]
        final = min(r["final_psnr"] for r in rs)
        ok = sum(r["final_psnr"] >= 40 for r in rs)
        lines.append(
            f"| {k[0]} | {k[1]} | {k[2]} | {_stat([r['rounds'] for r in rs])} | {_stat([r['rounds_to_30db'] for r in rs])} | "
            f"{_stat([r['rounds_to_40db'] for r in rs])} | {_stat([round(r['evals_rel'], 2) for r in rs])} | "
            f"{'inf' if final == float('inf') else f'{final:.1f}'} | {ok}/{len(rs)} |"
        )
    lines.append("")
    lines.append(
        "Median [min, max] over seeds; `*`: median of the runs that reached it. evals / T: network evaluations per image divided by the steps."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
