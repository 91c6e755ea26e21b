"""Kernels a round launches outside the network: a machine-independent proxy for a round's overhead on a GPU.

    python benchmarks/launches.py            # results/launches.{json,md}
    python benchmarks/launches.py --quick    # smoke size (the test suite runs this)

Why count: on a GPU a small network call is bound by kernel launches, not by arithmetic (the
bundled digits UNet on an H200 takes 8.1 ms per call from batch 1 to 200, an SD-sized UNet
with guidance 42-53 ms from batch 2 to 16: ``results/gpu.md``). Then what a round spends
outside the network grows with the number of kernels the solver, the tolerance test and the
scheduler mapping launch, and hardly with the data; in that regime ``outside kernels /
(outside + network kernels)`` estimates the share of a round outside the network (issue 14's
target: <= 10 %). The counts depend on the code only, not on the machine.

How: a ``TorchDispatchMode`` sees every ATen operator a ``trisolve_diffusion.sample`` call
dispatches (on the CPU here; the same operators run on a GPU). Each is put in one of four
kinds: a **kernel** (computes), a **view** (metadata only, ``OpOverload.is_view`` and a few
like it), an **allocation** (``empty*``: the caching allocator; ``scalar_tensor``: a host
scalar such as the ``0.0`` of ``where(mask, a, 0.0)``; no kernel either) and a **sync** (an
op after which a CUDA host waits for the device: ``.item()``, the error check of
``linalg.solve``, ``nonzero``). Ops inside ``unet.forward`` count as the network. The round's
device-to-host reads are counted at ``trisolve.driver.to_host`` (on a CPU a read dispatches no
op). A callback snapshots the counters after every round.
The pipeline's own sequential loop is counted the same way, per step between the starts of
consecutive network calls (the scheduler's ``step`` and the guidance arithmetic are its
outside-the-network part).

Models: the bundled digits DDPM with DDIM-50, batch 1 (full window, the default on a CPU, and
a window of 8); the tiny SD pipeline with guidance 7.5, DDIM-50, windows 8 and full (the
solver's work per round does not depend on the UNet); and the kernels of one call of the
SD-1.5-sized UNet (random weights, built on the meta device: its kernel count does not depend
on its weights or the latent size) for the ratio a real SD round would have.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

import trisolve.driver  # noqa: E402
import trisolve_diffusion as td  # noqa: E402
from trisolve_diffusion.models import load_digits_pipeline  # noqa: E402
from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion  # noqa: E402

_ALIASING = {"detach", "alias", "lift_fresh", "_reshape_alias", "set_"}  # no kernel either
# ops after which a CUDA host waits for the device: a scalar read, linalg's error check (the
# non-``_ex`` solvers), data-dependent shapes
_SYNCING = {"_local_scalar_dense", "_linalg_check_errors", "nonzero", "masked_select", "unique", "_unique2", "repeat_interleave"}


def kind_of(func) -> str:
    name = func.overloadpacket.__name__
    if name in _SYNCING and not (name == "repeat_interleave" and func._overloadname == "self_int"):
        return "syncs"
    if name.startswith("empty") or name in ("new_empty", "scalar_tensor"):  # no kernel: the allocator, a host scalar
        return "allocations"
    if func.is_view or name in _ALIASING:
        return "views"
    return "kernels"


class OpCounter(TorchDispatchMode):
    """Counts dispatched ATen ops by kind, inside ``net.forward`` ("network") and outside it."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.depth, self.counts, self.names = net, 0, Counter(), Counter()
        self._orig = net.forward

        def forward(*a, **k):
            self.depth += 1
            try:
                return self._orig(*a, **k)
            finally:
                self.depth -= 1

        net.forward = forward
        self.calls = 0

    def remove(self) -> None:
        self.net.forward = self._orig

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        where = "network" if self.depth else "outside"
        kind = kind_of(func)
        self.counts[where, kind] += 1
        if where == "outside" and kind in ("kernels", "syncs"):
            self.names[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def snapshot(self) -> Counter:
        return Counter(self.counts)


def _diff(a: Counter, b: Counter, key) -> int:
    return b[key] - a[key]


def count_solve(pipe, net, label: str, **kw) -> dict:
    """Per-round counts of one ``td.sample`` call (seed 0)."""
    counter = OpCounter(net)
    snaps, calls = [], [0]
    orig = counter._orig

    def counted(*a, **k):  # count network calls, inside the counting wrapper
        calls[0] += 1
        return orig(*a, **k)

    counter._orig = counted
    read = trisolve.driver.to_host

    def to_host(a):  # the round's device-to-host read
        counter.counts["outside", "reads"] += 1
        return read(a)

    trisolve.driver.to_host = to_host
    try:
        with counter:
            snaps.append(counter.snapshot())
            out = td.sample(pipe, generator=torch.manual_seed(0), callback=lambda info: snaps.append(counter.snapshot()) and False, **kw)
    finally:
        counter.remove()
        trisolve.driver.to_host = read
    sol = out.solution
    per_round = {k: [_diff(a, b, ("outside", k)) for a, b in zip(snaps, snaps[1:])] for k in ("kernels", "views", "allocations", "syncs", "reads")}
    net_kernels = [_diff(a, b, ("network", "kernels")) for a, b in zip(snaps, snaps[1:])]
    steady = slice(1, None) if len(per_round["kernels"]) > 1 else slice(None)  # round 1 also builds the tables
    rec = dict(
        run=label, rounds=sol.num_rounds, network_calls=calls[0],
        round1_outside_kernels=per_round["kernels"][0],
        outside_kernels_median=statistics.median(per_round["kernels"][steady]),
        outside_kernels_max=max(per_round["kernels"][steady]),
        outside_views_median=statistics.median(per_round["views"][steady]),
        outside_allocations_median=statistics.median(per_round["allocations"][steady]),
        reads_per_round_max=max(per_round["reads"][steady]),
        syncs_per_round_max=max(per_round["syncs"][steady]),
        network_kernels_per_round_median=statistics.median(net_kernels[steady]),
        top_outside=counter.names.most_common(12),
    )  # fmt: skip
    print(rec, flush=True)
    return rec


def count_sequential(pipe, net, label: str, **kw) -> dict:
    """Per-step counts of the pipeline's own loop (``pipe(...)``): between the starts of consecutive network calls."""
    counter = OpCounter(net)
    snaps = []
    orig = counter._orig

    def entered(*a, **k):
        snaps.append(counter.snapshot())
        return orig(*a, **k)

    counter._orig = entered
    try:
        with counter:
            pipe(generator=torch.manual_seed(0), **kw)
    finally:
        counter.remove()
    outside = [_diff(a, b, ("outside", "kernels")) for a, b in zip(snaps, snaps[1:])]
    network = [_diff(a, b, ("network", "kernels")) for a, b in zip(snaps, snaps[1:])]
    rec = dict(run=label, steps=len(snaps), outside_kernels_per_step=statistics.median(outside), network_kernels_per_step=statistics.median(network))
    print(rec, flush=True)
    return rec


def sd15_unet_kernels() -> int:
    """Kernels of one call of the SD-1.5-sized UNet (batch 2, 64x64x4 latents), counted on the meta device."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280))
        x = torch.empty(2, 4, 64, 64)
        emb = torch.empty(2, 77, 768)
    counter = OpCounter(unet)
    try:
        with torch.no_grad(), counter:
            unet(x, torch.full((2,), 500, device="meta"), encoder_hidden_states=emb)
    finally:
        counter.remove()
    return counter.counts["network", "kernels"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    steps = 10 if args.quick else 50
    solves, seqs = [], []

    digits = load_digits_pipeline("ddim")
    digits.set_progress_bar_config(disable=True)
    kw = dict(batch_size=1, num_inference_steps=steps, output_type="np")
    seqs.append(count_sequential(digits, digits.unet, f"digits DDIM-{steps}", **kw))
    for w in (None, 8):
        solves.append(count_solve(digits, digits.unet, f"digits DDIM-{steps}, window {w or 'full'}", window_size=w, **kw))

    sd = build_tiny_stable_diffusion()
    sd.set_progress_bar_config(disable=True)
    kw = dict(prompt="a digit", guidance_scale=7.5, num_inference_steps=steps, output_type="latent")
    seqs.append(count_sequential(sd, sd.unet, f"tiny SD, CFG 7.5, DDIM-{steps}", **kw))
    for w in (8, None):
        solves.append(count_solve(sd, sd.unet, f"tiny SD, CFG 7.5, DDIM-{steps}, window {w or 'full'}", window_size=w, **kw))
    sd15 = sd15_unet_kernels()
    digits_net = seqs[0]["network_kernels_per_step"]

    md = [
        "ATen operators dispatched by `trisolve_diffusion.sample` (seed 0, batch 1, float32, counted on the CPU; the same "
        "operators run on a GPU). Rounds after the first (round 1 also builds the per-solve tables); medians per round "
        "(reads and syncs: the most in any round).",
        "",
        "| run | rounds | network calls | outside: kernels / round (max) | round 1 | views | allocations | reads / round | other syncs / round | network kernels / round | outside share of kernels |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in solves:
        share = r["outside_kernels_median"] / (r["outside_kernels_median"] + r["network_kernels_per_round_median"])
        md.append(
            f"| {r['run']} | {r['rounds']} | {r['network_calls']} | {r['outside_kernels_median']:g} ({r['outside_kernels_max']}) | "
            f"{r['round1_outside_kernels']} | {r['outside_views_median']:g} | {r['outside_allocations_median']:g} | {r['reads_per_round_max']} | {r['syncs_per_round_max']} | "
            f"{r['network_kernels_per_round_median']:g} | {100 * share:.1f}% |"
        )
    md += ["", "The pipelines' own sequential loops, per step:", "", "| run | outside kernels / step | network kernels / step |", "|---|---|---|"]
    for r in seqs:
        md.append(f"| {r['run']} | {r['outside_kernels_per_step']:g} | {r['network_kernels_per_step']:g} |")
    sd_round = [r for r in solves if r["run"].startswith("tiny SD")]
    md += [
        "",
        f"One call of the SD-1.5-sized UNet (860M parameters, counted on the meta device): **{sd15}** kernels; the digits UNet: "
        f"{digits_net:g}. With the tiny SD pipeline's outside kernels per round, an SD-1.5 round would be "
        + ", ".join(f"{100 * r['outside_kernels_median'] / (r['outside_kernels_median'] + sd15):.1f}% ({r['run'].split(', ')[-1]})" for r in sd_round)
        + " outside the network by kernel count.",
        "",
        "Most frequent kernels outside the network (first solve run): " + ", ".join(f"{n} {c}" for n, c in solves[0]["top_outside"]) + ".",
    ]
    write("launches" + ("_quick" if args.quick else ""), dict(solves=solves, sequential=seqs, sd15_unet_kernels=sd15), "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
