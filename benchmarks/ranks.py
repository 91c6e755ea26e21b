"""The same sample on 1 and 2 ranks and the sequential loop, side by side (issue 28).

    python benchmarks/ranks.py            # results/ranks.{json,md}: batch 1, 4, 8; medians of 4
    python benchmarks/ranks.py --quick    # smoke size (the test suite runs this): batch 1, few steps, 1 run
    python benchmarks/ranks.py --reprice results/ranks.json   # every plan priced again from a run's recorded curves

For each rank count ``P`` in (1, 2) the script starts ``torchrun --standalone --nproc-per-node P``
on itself (gloo, one thread per rank, ``OMP_NUM_THREADS=1``); every rank times, for each model and
batch, the default ``trisolve_diffusion.sample(pipe, ..., distributed=True)`` (the plan on ``P``
ranks: the automatic window, the network batch split over the ranks) and, in the 1-rank run,
the pipeline's own loop ``pipe(...)`` with one thread. Rank 0 writes its medians; the parent
puts the runs side by side with the machine and its load (``os.getloadavg`` before and after
each run: on a machine shared with other work the times say little; rounds, windows and the
image difference do not depend on it).

Models: the bundled digits DDPM with DDIM-50 (pixel space), and the tiny SD pipeline with
guidance 7.5, DDIM-50. Each timed run draws the same seed; the first call (measuring the plan,
cached per network) is a warm-up and is not timed.

Targets of issue 28 (for a run on a quiet machine): ``P = 2`` at least 1.3x the loop at batch 1
and 1.6x at batch 8 on the digits model. Each row also records the plan (window, batch split,
the loop on rank 0 alone, or each rank its own samples), its predicted time next to the measured
one (the cost model's error), the predicted time of every plan the cost model weighed (the
margin of the chosen one), the contention it measured, the collectives and bytes
(``Solution.stats``), and the cap a two-way split of one step's batch has by the measured curve
alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ("digits", "tiny_sd")


def _worker(out: Path, batches: list[int], steps: int, repeats: int) -> None:
    """One rank: time every (model, batch) case; rank 0 writes ``out``."""
    import numpy as np
    import torch
    import torch.distributed as dist

    import trisolve_diffusion as td
    from trisolve_diffusion.models import load_digits_pipeline
    from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    pipes = {"digits": load_digits_pipeline("ddim"), "tiny_sd": build_tiny_stable_diffusion()}
    rows = []
    for name in MODELS:
        pipe = pipes[name]
        pipe.set_progress_bar_config(disable=True)
        for batch in batches:

            def args():
                if name == "digits":
                    return dict(batch_size=batch, num_inference_steps=steps, generator=torch.manual_seed(0), output_type="np")
                return dict(prompt=["a cat"] * batch, num_inference_steps=steps, guidance_scale=7.5, generator=torch.manual_seed(0),
                            output_type="np")  # fmt: skip

            def parallel():
                return td.sample(pipe, **args(), distributed=True)

            parallel()  # warm-up: the plan's measurement (cached per network) and the allocator
            times = []
            for _ in range(repeats):
                dist.barrier()
                start = time.perf_counter()
                o = parallel()
                times.append(time.perf_counter() - start)
            times = [max(v) for v in _gather_floats(times)]  # the slowest rank is the sample's time
            choice = td.AutoWindow.of(pipe.unet).last_choice  # the plan sample() made for this network
            model = choice.model
            stats = o.solution.stats
            row = dict(model=name, batch=batch, ranks=world, seconds=statistics.median(times), runs=times, rounds=o.solution.num_rounds,
                       window=choice.window, one_rank=choice.one_rank, own_samples=choice.own_samples, predicted_seconds=choice.seconds,
                       plans=[list(p) for p in choice.plans],
                       predicted_loop_seconds=model.sequential_time(), status=o.solution.status.name,
                       collectives=stats.get("collectives", 0), bytes_gathered=stats.get("bytes_gathered", 0),
                       contention=model.contention, link_latency=model.link_latency, overhead_one_row=model.overhead_one_row,
                       overhead=model.overhead, overhead_per_row=model.overhead_per_row,
                       curve=[list(model.curve.rows), list(model.curve.seconds)], split_inputs=model.split_inputs,
                       data_parallel_cap=_data_parallel_cap(model, world))  # fmt: skip
            if world == 1:  # the loop on one thread, and the image difference
                pipe(**args())  # warm-up
                loop_times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    seq = pipe(**args())
                    loop_times.append(time.perf_counter() - start)
                row.update(loop_seconds=statistics.median(loop_times), loop_runs=loop_times,
                           max_abs_diff_to_loop=float(np.abs(np.asarray(o.images) - np.asarray(seq.images)).max()))  # fmt: skip
            rows.append(row)
    if rank == 0:
        out.write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def _data_parallel_cap(model, world: int) -> float | None:
    """The most a ``world``-way split of one step's batch can give over the loop by the measured curve alone:
    ``t(1 row) / t(one rank's share)``, before the collective, the contention and the row update (``None``: no split)."""
    if world < 2 or not model.split_inputs:
        return None
    return model.curve(1) / model.curve(model.rows_per_device(1.0))


def _gather_floats(values: list[float]) -> list[list[float]]:
    """``[[rank 0's v_i, rank 1's v_i, ...] for each i]``."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [[float(o[i]) for o in out] for i in range(len(values))]


def _launch(ranks: int, batches: list[int], steps: int, repeats: int, timeout: float) -> tuple[list[dict], tuple, tuple]:
    """Run the worker on ``ranks`` gloo processes; its rows and the load average before and after."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                   PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", str(Path(__file__).resolve()),
               "--worker", str(out), "--batches", ",".join(map(str, batches)), "--steps", str(steps), "--repeats", str(repeats)]  # fmt: skip
        load_before = os.getloadavg()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        load_after = os.getloadavg()
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun with {ranks} rank(s) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text()), load_before, load_after


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke size: batch 1, 6 steps, 1 run")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--reprice", type=Path, help="print every 2-rank plan priced from this run's recorded measurements")
    args = parser.parse_args(argv)
    if args.reprice is not None:
        print(reprice(json.loads(args.reprice.read_text())))
        return
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker is not None:
        _worker(args.worker, batches, args.steps, args.repeats)
        return
    if args.quick:
        batches, args.steps, args.repeats = [1], 6, 1
    from common import write

    runs = {}
    for ranks in (1, 2):
        rows, before, after = _launch(ranks, batches, args.steps, args.repeats, timeout=600 if args.quick else 7200)
        runs[ranks] = dict(rows=rows, loadavg_before=before, loadavg_after=after)
    one = {(r["model"], r["batch"]): r for r in runs[1]["rows"]}
    two = {(r["model"], r["batch"]): r for r in runs[2]["rows"]}
    lines = [
        f"# One and two ranks against the loop (DDIM-{args.steps}, gloo, 1 thread per process, medians of {args.repeats})",
        "",
        f"Load average (1, 5, 15 min) before/after: 1 rank {_load(runs[1])}; 2 ranks {_load(runs[2])}. "
        "Times on a loaded machine say little; rounds and windows do not depend on the load.",
        "",
        "| model | batch | loop `pipe(...)` s | 1 rank s (window, rounds) | 1 rank predicted s (error) "
        "| 2 ranks s (plan, rounds) | 2 ranks predicted s (error) | loop / 2 ranks | data-parallel cap (curve) "
        "| contention | collectives / round | max abs diff 1 rank vs loop | 1 rank: every plan predicted s | 2 ranks: every plan predicted s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in one:
        a, b = one[key], two[key]
        cap = "-" if b["data_parallel_cap"] is None else f"{b['data_parallel_cap']:.2f}x"
        lines.append(
            f"| {key[0]} | {key[1]} | {a['loop_seconds']:.3f} | {a['seconds']:.3f} ({a['window']}, {a['rounds']}) "
            f"| {a['predicted_seconds']:.3f} ({_error(a)}) | {b['seconds']:.3f} ({_plan(b)}, {b['rounds']}) "
            f"| {b['predicted_seconds']:.3f} ({_error(b)}) | {a['loop_seconds'] / b['seconds']:.2f}x | {cap} | {b['contention']:.2f} "
            f"| {b['collectives'] / max(b['rounds'], 1):.2f} | {a['max_abs_diff_to_loop']:.1e} | {_plans(a)} | {_plans(b)} |"
        )
    lines += [
        "",
        "Plan: the window (1: forward substitution, row by row), `split` where the ranks split each call's network batch, "
        "`one rank` where rank 0 runs the loop alone and broadcasts the trajectory, `own samples` where each rank solves its "
        "share of the samples alone (its own window, no collective per step) and the trajectories are gathered once. Every plan: "
        "the cost model's prediction for each plan it weighed (`window`: its best window of more than one row, `loop`: window 1, "
        "the network batch split on 2 ranks), the margin to the chosen one (a window is taken only 1.25x ahead of the loops). Error: predicted / measured - 1. Data-parallel cap: "
        "`t(1 row) / t(one rank's share)` from rank 0's measured curve, the most that splitting one step's batch can give "
        "before the collective and the contention (every rank computing at once). Collectives per round: one per network call "
        "(the header packed with the outputs) and one more the first time a batch size is seen; two in all for `one rank` and "
        "`own samples` (the result broadcast or gathered once).",
    ]
    name = "ranks_quick" if args.quick else "ranks"
    write(name, {"steps": args.steps, "repeats": args.repeats, "runs": {str(k): v for k, v in runs.items()}}, "\n".join(lines) + "\n")


def reprice(payload: dict) -> str:
    """Every plan on 2 ranks priced again from a run's recorded measurements (its curve, contention, all-gather latency, row
    update), the own-samples plan included, with the loop's measured time: what any plan the cost model knows could give.

    Each plan's best window is listed, and for the own samples also its best window of more than one row (the plan takes
    one only 1.25x ahead of the loop). Rows recorded before the per-round overhead was (``overhead``) are priced without it:
    optimistic for windows, an upper bound on what they give; the loops are priced as the plan prices them.
    """
    from trisolve_diffusion.cost_model import MIN_SPEEDUP, BatchTimeCurve, CostModel

    one = {(r["model"], r["batch"]): r for r in payload["runs"]["1"]["rows"]}
    lines = ["| model | batch | loop measured s | plans on 2 ranks, predicted s (speed-up over the measured loop) | best |", "|---|---|---|---|---|"]
    for r in payload["runs"]["2"]["rows"]:
        loop = one[(r["model"], r["batch"])]["loop_seconds"]
        model = CostModel(BatchTimeCurve(tuple(r["curve"][0]), tuple(r["curve"][1])), payload["steps"], devices=2,
                          split_inputs=r["split_inputs"], samples=r["batch"] if r["split_inputs"] else 0, link_latency=r["link_latency"],
                          overhead_one_row=r["overhead_one_row"], contention=r["contention"], overhead=r.get("overhead", 0.0),
                          overhead_per_row=r.get("overhead_per_row", 0.0))  # fmt: skip
        plans = list(model.best_window(min_speedup=MIN_SPEEDUP).plans)
        if model.own_samples_time() is not None and model.own_samples_time()[0] > 1:  # its best window, whatever the margin
            plans.append(("own samples, window", *model.own_samples_time()))
        best = min(plans, key=lambda p: p[2])
        cells = ", ".join(f"{n} ({w}) {s:.3f} ({loop / s:.2f}x)" for n, w, s in plans)
        lines.append(f"| {r['model']} | {r['batch']} | {loop:.3f} | {cells} | {best[0]} ({best[1]}): {loop / best[2]:.2f}x |")
    return "\n".join(lines)


def _plan(row: dict) -> str:
    if row["ranks"] < 2:
        return str(row["window"])
    if row.get("own_samples"):
        return f"{row['window']} own samples"
    return f"{row['window']} one rank" if row["one_rank"] else f"{row['window']} split" if row["split_inputs"] else str(row["window"])


def _plans(row: dict) -> str:
    """Every plan the cost model weighed: ``name (window) seconds``, the chosen one in bold."""
    return ", ".join(f"**{n} ({w}) {s:.3f}**" if s == row["predicted_seconds"] else f"{n} ({w}) {s:.3f}" for n, w, s in row.get("plans", []))


def _error(row: dict) -> str:
    return f"{row['predicted_seconds'] / row['seconds'] - 1:+.0%}"


def _load(run: dict) -> str:
    return f"{'/'.join(f'{v:.1f}' for v in run['loadavg_before'])} -> {'/'.join(f'{v:.1f}' for v in run['loadavg_after'])}"


if __name__ == "__main__":
    main()
