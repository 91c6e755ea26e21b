"""The automatic window against fixed windows, side by side in one run (``window="auto"``).

    python benchmarks/autowindow.py            # bundled digits model on this machine's CPU
    python benchmarks/autowindow.py --quick    # smoke size

Model: the bundled digits DDPM (``trisolve_diffusion.models``), DDIM, seed 0, default solver
(TAA m=4 + Picard), float32, ``torch.set_num_threads(1)``. For each setting (steps T,
batch size S): the network's own time curve ``t(r)`` (``cost_model.measure_round_time`` on the
UNet, recorded in the JSON), the wall time of ``sample()`` with windows 4, 8, 16, 32 and the
full window and with ``window="auto"`` (medians of ``repeats`` runs, after one warm-up,
interleaved), the rounds each took, and the cost model's predicted rounds and wall time for
each window: the model ``"auto"`` chose with (``AutoWindow.of(pipe.unet).last_choice``: its curve and its
measured per-round overhead), and the same model without the overhead term. The sequential
pipeline is timed in the same run for reference.

A second table checks the rounds model alone: measured rounds (seeds 0-4 median) against
``RoundsModel`` for DDIM-25/50/100 and DDPM-100 at windows 4..full (``--quick``: DDIM-10, one seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

import trisolve  # noqa: E402
import trisolve_diffusion as td  # noqa: E402
from trisolve_diffusion import cost_model  # noqa: E402
from trisolve_diffusion.models import load_digits_pipeline  # noqa: E402


def timing_rows(steps: int, batch: int, repeats: int) -> tuple[list[dict], dict]:
    pipe = load_digits_pipeline("ddim")
    pipe.set_progress_bar_config(disable=True)
    td.AutoWindow.of(pipe.unet).cache.clear()  # the policy window="auto" uses for this network: measured afresh
    windows = [w for w in (4, 8, 16, 32) if w < steps] + ["full", "auto", "sequential"]
    kw = dict(batch_size=batch, num_inference_steps=steps, output_type="np")

    def run(w):
        gen = torch.manual_seed(0)
        if w == "sequential":
            return pipe(generator=gen, **kw)
        return td.sample(pipe, generator=gen, window=trisolve.FullWindow() if w == "full" else w, **kw)

    # the curve "auto" uses (measured once here, then cached for every "auto" run)
    unet = pipe.unet
    x = torch.randn(batch, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    t = torch.full((1,), 500)

    def rows(r):
        with torch.no_grad():
            return unet(x.repeat(r, 1, 1, 1), t.expand(r * batch), return_dict=False)[0]

    curve = cost_model.measure_round_time(rows, steps, repeats=3)
    labels = [str(w) for w in windows]
    times = {lab: [] for lab in labels}
    result = {}
    for w in windows:
        run(w)  # warm-up (and the "auto" measurement, cached from here on)
    for _ in range(repeats):  # interleaved, so that load changes on a shared machine hit every window alike
        for w, lab in zip(windows, labels):
            start = time.perf_counter()
            result[lab] = run(w)
            times[lab].append(time.perf_counter() - start)
    # the model "auto" chose with: its own curve (the same network calls through the sample's g) and the
    # measured overhead per round; and the same model without the overhead term
    chosen = td.AutoWindow.of(pipe.unet).last_choice.model
    model = chosen
    bare = dataclasses.replace(chosen, overhead=0.0, overhead_per_row=0.0)
    out = []
    for w, lab in zip(windows, labels):
        sol = getattr(result[lab], "solution", None)
        if w == "sequential":
            win = 1
        elif w in ("auto", "full"):
            win = max(hi - lo for lo, hi in sol.windows)
        else:
            win = w
        rec = dict(steps=steps, batch=batch, window=lab, effective_window=win if lab != "sequential" else None,
                   seconds=statistics.median(times[lab]), rounds=None if sol is None else sol.num_rounds,
                   predicted_rounds=model.rounds(win) if lab != "sequential" else None,
                   predicted_seconds=model.wall_time(win) if lab != "sequential" else model.sequential_time(),
                   predicted_seconds_no_overhead=bare.wall_time(win) if lab != "sequential" else bare.sequential_time())  # fmt: skip
        out.append(rec)
        print(rec, flush=True)
    fixed = [r for r in out if r["window"] not in ("auto", "sequential")]
    best = min(fixed, key=lambda r: r["seconds"])
    auto = next(r for r in out if r["window"] == "auto")
    summary = dict(steps=steps, batch=batch, best_fixed=best["window"], best_fixed_s=best["seconds"], auto_window=auto["effective_window"],
                   auto_s=auto["seconds"], auto_over_best=auto["seconds"] / best["seconds"],
                   curve=dict(rows=curve.rows, seconds=curve.seconds), auto_curve=dict(rows=chosen.curve.rows, seconds=chosen.curve.seconds),
                   overhead_s=chosen.overhead, overhead_per_row_s=chosen.overhead_per_row)  # fmt: skip
    return out, summary


def rounds_rows(quick: bool) -> list[dict]:
    settings = [("ddim", 10)] if quick else [("ddim", 25), ("ddim", 50), ("ddim", 100), ("ddpm", 100)]
    seeds = range(1) if quick else range(5)
    out = []
    for kind, T in settings:
        pipe = load_digits_pipeline(kind)
        pipe.set_progress_bar_config(disable=True)
        model = cost_model.RoundsModel(stochastic=kind == "ddpm")
        for w in [w for w in (4, 8, 16, 32) if w < T] + [T]:
            rounds = [
                td.sample(pipe, num_inference_steps=T, generator=torch.manual_seed(s), output_type="np", window=w).solution.num_rounds
                for s in seeds
            ]
            out.append(dict(sampler=f"{kind.upper()}-{T}", window=w, rounds=statistics.median(rounds), rounds_min=min(rounds),
                            rounds_max=max(rounds), predicted=model(w, T)))  # fmt: skip
            print(out[-1], flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    repeats = 1 if args.quick else 5
    settings = [(10, 1)] if args.quick else [(50, 1), (50, 8)]
    timing, summaries = [], []
    for steps, batch in settings:
        rows, summary = timing_rows(steps, batch, repeats)
        timing += rows
        summaries.append(summary)
    rounds = rounds_rows(args.quick)
    md = [
        f"Bundled digits DDPM, DDIM, seed 0, default solver, float32, 1 CPU thread; medians of {repeats} interleaved runs. "
        "Predicted: the `cost_model.CostModel` that `window=\"auto\"` chose with in the same run (its measured curve and "
        "per-round overhead, `AutoWindow.of(pipe.unet).last_choice`), and the same without the overhead term.",
        "",
        "| T | batch | window | rounds | predicted rounds | time [s] | predicted [s] | predicted without overhead [s] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in timing:
        win = r["window"] if r["window"] != "auto" else f"auto (chose {r['effective_window']})"
        pr = "" if r["predicted_rounds"] is None else f"{r['predicted_rounds']:.1f}"
        md.append(
            f"| {r['steps']} | {r['batch']} | {win} | {r['rounds'] or ''} | {pr} | {r['seconds']:.3f} | {r['predicted_seconds']:.3f} | "
            f"{r['predicted_seconds_no_overhead']:.3f} |"
        )
    md += ["", "| T | batch | best fixed window | its time [s] | auto's window | auto's time [s] | auto / best | measured overhead per round |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in summaries:
        md.append(
            f"| {s['steps']} | {s['batch']} | {s['best_fixed']} | {s['best_fixed_s']:.3f} | {s['auto_window']} | {s['auto_s']:.3f} | {s['auto_over_best']:.2f} | "
            f"{1e3 * s['overhead_s']:.2f} ms + {1e3 * s['overhead_per_row_s']:.3f} ms per row |"
        )
    md += ["", "Rounds model (`RoundsModel`, fitted prior) against measured rounds, median [min, max] over seeds:", "",
           "| sampler | window | measured rounds | model |", "|---|---|---|---|"]  # fmt: skip
    for r in rounds:
        md.append(f"| {r['sampler']} | {r['window']} | {r['rounds']:g} [{r['rounds_min']}, {r['rounds_max']}] | {r['predicted']:.1f} |")
    write("autowindow" + ("_quick" if args.quick else ""), {"timing": timing, "summary": summaries, "rounds": rounds}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
