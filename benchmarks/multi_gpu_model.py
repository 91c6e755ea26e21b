"""Predicted speed-ups on 2, 4 and 8 GPUs from measured one-GPU batch curves (issue 28): a model, not a measurement.

    python benchmarks/multi_gpu_model.py          # results/multi_gpu_model.{json,md}
    python benchmarks/multi_gpu_model.py --quick  # the same tables (they take milliseconds; the test suite runs this)

Inputs:

* ``t(b)``, one network call on a network batch of ``b`` inputs, measured on one NVIDIA H200
  (``results/gpu.json``, ``benchmarks/gpu.py``): the bundled digits UNet and a random
  SD-1.5-sized UNet with guidance. The digits curve's batch-1 point (14.7 ms, slower than
  batch 25's 8.1 ms: a first-call artefact) is replaced by the measured sequential loop's time
  per step (``sequential_s / steps`` of the DDIM-50 row). The SD curve starts at batch 2 (one
  step with guidance); a rank that takes one of the two guidance halves is assumed to take as
  long as both (the curve is flat from 2 to 8 inputs), so the guidance split gains nothing there.
* A Flux-sized transformer (12B parameters, 1024x1024, 4096 image tokens, guidance-distilled:
  one call per step): **not measured here** (no such model on this machine). Assumed linear in
  the batch from batch 1 (a saturated device: compute-bound at 4096 tokens), ``t(b) = 0.25 s * b``
  on an H200 (an assumption, within the 0.2-0.3 s per step that a 28-step 1024x1024 Flux-dev
  image in 6-8 s on an H100-class GPU implies). Only ratios matter for the speed-up, except
  against the collective time.
* The solver's time per round outside the network, per model: the median over the one-H200
  runs of ``(measured - predicted) / rounds`` in ``results/gpu_cost_model.json`` (the model
  without an overhead term against ``sample()`` on that GPU), clipped at 0; for the Flux-sized
  model the SD value (the solver's work scales with the latent, 64x64x16 vs 64x64x4: a lower bound).
* The collective per round (one all-gather: the header packed with the outputs) as ``latency + bytes /
  bandwidth`` with a ring's ``(P - 1) / P`` share, on two assumed links: **NVLink 4** (H100/H200
  SXM: 900 GB/s per GPU in both directions together, NVIDIA's H200 datasheet; assumed 350 GB/s
  all-gather bus bandwidth, what NCCL's ``all_gather_perf`` typically reports on 8-GPU NVLink
  nodes, and 20 us per collective) and **PCIe Gen5 x16** without NVLink (64 GB/s per direction,
  PCI-SIG; assumed 25 GB/s all-gather bus bandwidth through the host bridge and 40 us per
  collective). Assumptions, not measurements.
* ``rounds(w)`` the fitted rounds model (``trisolve_diffusion.cost_model.RoundsModel``, DDIM: deterministic).

The plan is :meth:`CostModel.best_window` with the network batch split over the devices
(``split_inputs = samples x guidance``, as ``sample(..., distributed=True)`` does with the
front doors' denoisers): window 1 with the batch split is data parallelism, a window > 1 time
parallelism, and with guidance the halves can go to different devices; where none beats the
loop, the loop on one GPU (``one_rank``). A window of one row runs row by row without the
solver's per-round time (``overhead_one_row = 0``: its row update is the loop's own step,
which the sequential time leaves out too). The contention term is 1 (GPUs do not share
compute units).

Validation (when ``results/ranks.json`` exists, from ``benchmarks/ranks.py`` on this CPU): the
CPU plan's own prediction next to the 1- and 2-rank measurements (issue 28's bar: within 20 %).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from trisolve_diffusion.cost_model import BatchTimeCurve, CostModel, RoundsModel

HERE = Path(__file__).resolve().parent
#: Assumed links (see the module docstring): name -> (latency per collective [s], all-gather bus bandwidth [B/s]).
LINKS = {"NVLink 4": (20e-6, 350e9), "PCIe Gen5 x16": (40e-6, 25e9)}
FLUX_CALL_S = 0.25  # assumed seconds per call per input of a Flux-sized transformer at 1024x1024 on an H200


def _curves(gpu: dict) -> dict:
    """Per model: network batch -> seconds (one H200), and the latent bytes of one input's output."""
    net: dict[str, dict[int, float]] = {}
    for r in gpu["network"]:
        net.setdefault(r["model"], {})[r["batch"]] = r["call_ms"] / 1e3
    digits = "digits DDPM 1x16x16"
    seq = next(r for r in gpu["diffusion"] if r["model"] == digits and r["sampler"] == "DDIM" and r["steps"] == 50)
    net[digits][1] = seq["sequential_s"] / seq["steps"]  # the batch-1 call point is a first-call artefact
    sd = next(m for m in net if m.startswith("random SD"))
    net[sd][1] = net[sd][min(net[sd])]  # one guidance half: assumed as slow as both (flat from 2 to 8)
    return {
        "digits (DDIM-50)": dict(points=net[digits], guidance=1, steps=50, out_bytes=1 * 16 * 16 * 2, source=digits),
        "SD-1.5-sized UNet, CFG 7.5 (DDIM-50)": dict(points=net[sd], guidance=2, steps=50, out_bytes=4 * 64 * 64 * 2, source=sd),
        "Flux-sized transformer, 1024x1024 (28 steps, assumed curve)": dict(
            points={b: FLUX_CALL_S * b for b in (1, 2, 4, 8, 16, 32)}, guidance=1, steps=28, out_bytes=16 * 128 * 128 * 2, source=None
        ),
    }


def _overheads(cost: dict) -> dict:
    """Per source model: the median per-round time the one-GPU model missed (measured - predicted) / rounds, >= 0."""
    by: dict[str, list[float]] = {}
    for r in cost["measured"]:
        by.setdefault(r["model"], []).append((r["measured_s"] - r["predicted_s"]) / r["rounds"])
    return {m: max(0.0, statistics.median(v)) for m, v in by.items()}


def _rows_curve(points: dict[int, float], inputs_per_row: int) -> BatchTimeCurve:
    """The curve in trajectory rows: a row is ``inputs_per_row`` network inputs (fractions: shares of a row)."""
    bs = sorted(points)
    return BatchTimeCurve(tuple(b / inputs_per_row for b in bs), tuple(points[b] for b in bs))


def predict(models: dict, overheads: dict, batches=(1, 8), devices=(1, 2, 4, 8)) -> list[dict]:
    rows = []
    sd_overhead = next((v for m, v in overheads.items() if m.startswith("random SD")), 0.0)
    for name, m in models.items():
        overhead = overheads.get(m["source"], sd_overhead)
        for batch in batches:
            inputs = batch * m["guidance"]
            curve = _rows_curve(m["points"], inputs)
            for link, (latency, bandwidth) in LINKS.items():
                for p in devices:
                    if p == 1 and link != next(iter(LINKS)):
                        continue  # one device: no link
                    model = CostModel(
                        curve, m["steps"], devices=p, gather_bytes_per_row=inputs * m["out_bytes"], link_bandwidth=bandwidth,
                        link_latency=latency, overhead=overhead, rounds_model=RoundsModel(), split_inputs=inputs if p > 1 else 0,
                        overhead_one_row=0.0,
                    )  # fmt: skip
                    best = model.best_window()
                    rows_per_round = 1.0 if best.window == 1 else model.rounds_model.fill(best.window, m["steps"]) * best.window
                    gather = 0.0 if p == 1 or best.one_rank else (
                        latency + (p - 1) / p * rows_per_round * model.gather_bytes_per_row / bandwidth)  # fmt: skip
                    rows.append(dict(model=name, batch=batch, devices=p, link=link if p > 1 else "-", window=best.window,
                                     one_rank=best.one_rank, rounds=best.rounds, predicted_s=best.seconds,
                                     sequential_s=model.sequential_time(), speedup=model.sequential_time() / best.seconds,
                                     overhead_per_round_s=overhead, collective_per_round_s=gather))  # fmt: skip
    return rows


def validation(ranks: dict | None) -> list[dict]:
    """The CPU plan's prediction against the 1- and 2-rank measurements of ``benchmarks/ranks.py``."""
    if ranks is None:
        return []
    out = []
    for p, run in ranks["runs"].items():
        for r in run["rows"]:
            out.append(dict(model=r["model"], batch=r["batch"], ranks=int(p), window=r["window"], measured_s=r["seconds"],
                            predicted_s=r["predicted_seconds"], error=r["predicted_seconds"] / r["seconds"] - 1))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="write *_quick files (the same tables)")
    args = parser.parse_args(argv)
    from common import RESULTS, write

    gpu = json.loads((HERE / "results" / "gpu.json").read_text())
    cost = json.loads((HERE / "results" / "gpu_cost_model.json").read_text())
    ranks_file = RESULTS / "ranks.json"
    ranks = json.loads(ranks_file.read_text()) if ranks_file.exists() else None
    overheads = _overheads(cost)
    rows = predict(_curves(gpu), overheads)
    val = validation(ranks)
    lines = [
        f"# Predicted speed-ups on several GPUs (a model from one {gpu['device']}'s measured batch curves; not measured)",
        "",
        "Per-round solver time outside the network (fitted on the one-GPU runs): "
        + ", ".join(f"{k}: {v * 1e3:.1f} ms" for k, v in overheads.items())
        + f". Links assumed: {', '.join(f'{k} {lat * 1e6:.0f} us + bytes / {bw / 1e9:.0f} GB/s per collective' for k, (lat, bw) in LINKS.items())}"
        " (benchmarks/multi_gpu_model.py docstring for the sources). Speed-up over the sequential loop on one GPU.",
        "",
        "| model | batch | GPUs | link | window | rounds | predicted [s] | sequential [s] | speed-up | collectives per round [ms] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['devices']} | {r['link']} | {r['window']}{' (one GPU)' if r['one_rank'] else ''} "
            f"| {r['rounds']:.1f} | {r['predicted_s']:.3f} "
            f"| {r['sequential_s']:.3f} | {r['speedup']:.2f}x | {r['collective_per_round_s'] * 1e3:.2f} |"
        )
    lines += ["", "Validation on this CPU (`benchmarks/ranks.py`: the plan's prediction against the measured sample):", ""]
    if val:
        lines += ["| model | batch | ranks | window | measured [s] | predicted [s] | error |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {v['model']} | {v['batch']} | {v['ranks']} | {v['window']} | {v['measured_s']:.3f} | {v['predicted_s']:.3f} "
                  f"| {v['error'] * 100:+.0f} % |" for v in val]  # fmt: skip
    else:
        lines.append("(no results/ranks.json yet: run `python benchmarks/ranks.py` on a quiet machine, then this script again)")
    name = "multi_gpu_model_quick" if args.quick else "multi_gpu_model"
    write(name, {"links": {k: {"latency_s": a, "bandwidth_Bps": b} for k, (a, b) in LINKS.items()}, "flux_call_s": FLUX_CALL_S,
                 "overheads": overheads, "rows": rows, "validation": val}, "\n".join(lines) + "\n")  # fmt: skip
    assert all(math.isfinite(r["predicted_s"]) for r in rows)


if __name__ == "__main__":
    main()
