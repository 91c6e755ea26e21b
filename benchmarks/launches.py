"""Kernels a round launches outside the network: a machine-independent proxy for a round's overhead on a GPU.

    python benchmarks/launches.py            # results/launches.{json,md}
    python benchmarks/launches.py --quick    # smoke size (the test suite runs this)
    python benchmarks/launches.py --compiled --cold   # results/launches_compiled.{json,md}: eager vs compile=True

``--compiled`` measures the compiled round (``solve(..., compile=True)``, :mod:`trisolve.compiled`)
instead of counting: the host time per round outside the (stand-in) network, eager and compiled
alternately in one process (medians of the alternations' medians), per compiled function its
call time against the eager function on the same arguments, and what compiling costs (the first
compiled solve, a second one, one with a new window shape), each against an eager solve.
``--cold`` gives inductor a fresh on-disk cache, so the first compile is what a new machine pays.

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
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

import trisolve.compiled  # noqa: E402
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


def _restore(net: torch.nn.Module, forward, own: bool) -> None:
    """Undo a wrapped ``net.forward``: the instance attribute back, or removed so the class's method shows again."""
    if own:
        net.forward = forward
    else:
        del net.forward


class OpCounter(TorchDispatchMode):
    """Counts dispatched ATen ops by kind, inside ``net.forward`` ("network") and outside it."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.depth, self.counts, self.names = net, 0, Counter(), Counter()
        self._orig = self._original = net.forward  # _orig: what the wrapper calls (callers may wrap it further)
        self._own = "forward" in vars(net)  # an instance attribute already (else the class's method)

        def forward(*a, **k):
            self.depth += 1
            try:
                return self._orig(*a, **k)
            finally:
                self.depth -= 1

        net.forward = forward

    def remove(self) -> None:
        _restore(self.net, self._original, self._own)

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


class StandIn:
    """Replace ``net.forward`` by a near-free stand-in (``sample / 2``, same shape), timing the calls.

    So that the host time of a round is measured without the network's own compute: on a CPU
    a real UNet call also evicts the caches and the allocator's pages, which would be charged
    to the solver's next ops (a cost a GPU's host does not pay). The rounds differ from the
    real model's; the work per round is the same code on the same shapes.
    """

    def __init__(self, net: torch.nn.Module, clock=time.perf_counter):
        self.net, self.inside, self.starts, self.clock = net, 0.0, [], clock
        self._orig, self._own = net.forward, "forward" in vars(net)

        def forward(sample, timestep, *a, return_dict=True, **k):
            t0 = clock()
            self.starts.append((t0, self.inside))
            out = sample * 0.5
            self.inside += clock() - t0
            return SimpleNamespace(sample=out) if return_dict else (out,)

        net.forward = forward

    def remove(self) -> None:
        _restore(self.net, self._orig, self._own)


def host_ms_per_round(pipe, net, repeats: int, clock=time.perf_counter, **kw) -> float:
    """Median host time per round outside the network (rounds after the first), over ``repeats`` solves, in ms.

    Between consecutive round callbacks: wall time minus the time inside the stand-in network
    (:class:`StandIn`). On a CPU with this little data a round's outside work is nearly all
    dispatch (Python, the array-API wrappers, PyTorch's per-op overhead): the host cost a GPU
    round pays too, before any launch latency. ``clock``: ``time.perf_counter`` (wall) or
    ``time.thread_time`` (this thread's CPU time: what the round computes, not the time other
    processes hold the CPU; torch runs one thread here).
    """
    clock, now = StandIn(net, clock), clock
    per_round = []
    try:
        for _ in range(repeats + 1):  # the first is a warm-up
            marks = []
            td.sample(pipe, generator=torch.manual_seed(0), callback=lambda info: marks.append((now(), clock.inside)) and False, **kw)
            if _ > 0:
                per_round += [(t1 - t0) - (n1 - n0) for (t0, n0), (t1, n1) in zip(marks, marks[1:])]
    finally:
        clock.remove()
    return 1e3 * statistics.median(per_round)


def host_ms_per_step(pipe, net, repeats: int, **kw) -> float:
    """The pipeline loop's host time per step outside the (stand-in) network, between its calls: median, in ms."""
    clock = StandIn(net)
    per_step = []
    try:
        for _ in range(repeats + 1):
            clock.starts = []
            pipe(generator=torch.manual_seed(0), **kw)
            if _ > 0:
                st = clock.starts
                per_step += [(t1 - t0) - (n1 - n0) for (t0, n0), (t1, n1) in zip(st, st[1:])]
    finally:
        clock.remove()
    return 1e3 * statistics.median(per_step)


def dtype_read_ms(module: torch.nn.Module, reads: int = 50) -> float:
    """Median host time of one read of a diffusers model's ``.dtype`` (it walks every submodule), in ms."""
    times = []
    for _ in range(reads):
        t0 = time.perf_counter()
        module.dtype  # noqa: B018
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def sd15_unet(device: str = "meta"):
    """The SD-1.5-sized ``UNet2DConditionModel`` (860M parameters), built on the meta device (no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280))


def sd15_unet_kernels() -> int:
    """Kernels of one call of the SD-1.5-sized UNet (batch 2, 64x64x4 latents), counted on the meta device."""
    unet = sd15_unet()
    with torch.device("meta"):
        x = torch.empty(2, 4, 64, 64)
        emb = torch.empty(2, 77, 768)
    counter = OpCounter(unet)
    try:
        with torch.no_grad(), counter:
            unet(x, torch.full((2,), 500, device="meta"), encoder_hidden_states=emb)
    finally:
        counter.remove()
    return counter.counts["network", "kernels"]


def _timed_sample(pipe, **kw) -> float:
    t0 = time.perf_counter()
    td.sample(pipe, generator=torch.manual_seed(0), **kw)
    return time.perf_counter() - t0


def compile_cost(pipe, windows, **kw) -> list[dict]:
    """Wall seconds of solves with a free stand-in network: eager, the first compiled (compiles), a second, then each new window.

    Run before anything else in the process is compiled (:func:`trisolve.compiled.clear_cache` first).
    """
    trisolve.compiled.clear_cache()
    clock = StandIn(pipe.unet)
    rows = []
    try:
        for i, w in enumerate(windows):
            window = trisolve.FullWindow() if w is None else w
            eager_s = _timed_sample(pipe, window=window, **kw)
            first = _timed_sample(pipe, window=window, compile=True, **kw)
            second = _timed_sample(pipe, window=window, compile=True, **kw)
            what = "first compiled solve in the process" if i == 0 else "a new window shape"
            rows.append(dict(window=w or "full", what=what, eager_s=eager_s, first_compiled_s=first, second_compiled_s=second))
            print(rows[-1], flush=True)
    finally:
        clock.remove()
    return rows


def function_times(pipe, calls: int = 300, **kw) -> list[dict]:
    """Per compiled function of a compiled solve: median call time compiled and eager on the arguments of its last call, in us.

    The last call: the fused round's first call is the solver's first round, without history (no mixing).
    """
    import trisolve.compiled as tc

    seen = {}
    call = tc.RoundCompiler.__call__

    def spy(self, fn, key=None):
        compiled = call(self, fn, key)

        def last_args(*a, **k):
            seen[fn.__name__] = (compiled, fn, a, k)
            return compiled(*a, **k)

        return last_args

    clock = StandIn(pipe.unet)
    tc.RoundCompiler.__call__ = spy
    try:
        td.sample(pipe, generator=torch.manual_seed(0), compile=True, **kw)
    finally:
        tc.RoundCompiler.__call__ = call
        clock.remove()

    junk = [torch.ones(256, 256) for _ in range(64)]  # 16 MB: more than this CPU's L2 caches, half its L3

    def evict():  # touch it all: what a network call and other processes do to the caches between two rounds
        for j in junk:
            j.add_(0.0)

    def median_us(f, flush=False):
        times = []
        for _ in range(calls):
            if flush:
                evict()
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return 1e6 * statistics.median(times)

    return [dict(function=name, compiled_us=median_us(lambda: c(*a, **k)), eager_us=median_us(lambda: f(*a, **k)),
                 compiled_flushed_us=median_us(lambda: c(*a, **k), flush=True), eager_flushed_us=median_us(lambda: f(*a, **k), flush=True))
            for name, (c, f, a, k) in seen.items()]  # fmt: skip


def round_parts(pipe, solves: int, **kw) -> dict:
    """Where a round's host time goes, eager and compiled: per part, the median over rounds (after each solve's first) of
    its thread CPU time in that round, in us (stand-in network, :class:`StandIn`, its own time left out).

    Parts: ``network wrapper`` -- the system's evaluation up to ``F``'s assembly
    (:meth:`~trisolve.SemilinearSystem.evaluate_parts`: the sampler's ``g`` around the stand-in, its input and output
    conversions, the scheduler mapping's ``g``, the kept rows); ``fused call`` -- the compiled ``fused_round`` call (Dynamo's
    guards, the runtime wrappers, the kernels); ``eager round arithmetic`` -- the uncompiled round's ``_round_arrays`` and
    the solver's ``step``; ``solver host`` -- the solver's host code around the fused call (``fused_step`` before it, the
    check and new state after it); ``rest`` -- the whole round less those parts: the driver's host code (the read, the
    host arrays, records, freeze decision, trajectory write) and the round's callbacks.
    """
    import trisolve.compiled as tc
    import trisolve.solvers.anderson as an

    clock = time.thread_time
    spent: Counter = Counter()
    patched = []

    def timed(owner, name, label):
        fn = getattr(owner, name)

        def run(*a, **k):
            t0 = clock()
            try:
                return fn(*a, **k)
            finally:
                spent[label] += clock() - t0

        patched.append((owner, name, fn))
        setattr(owner, name, run)

    compiler_call = tc.RoundCompiler.__call__

    def compiler(self, fn, key=None):
        compiled = compiler_call(self, fn, key)

        def run(*a, **k):
            t0 = clock()
            try:
                return compiled(*a, **k)
            finally:
                spent["fused call" if fn is tc.fused_round else "eager round arithmetic"] += clock() - t0

        return run

    stand = StandIn(pipe.unet, clock=clock)
    timed(trisolve.SemilinearSystem, "evaluate_parts", "network wrapper")
    timed(trisolve.driver._Run, "_round_arrays", "eager round arithmetic")
    timed(an._AndersonBase, "step", "eager round arithmetic")
    timed(an._AndersonBase, "fused_step", "solver host")
    timed(trisolve.driver._Run, "_fused_rows", "solver host")
    tc.RoundCompiler.__call__ = compiler
    out = {}
    try:
        for compile in (False, True):
            rounds = []
            for i in range(solves + 1):  # the first is a warm-up
                marks = []

                def on_round(info):
                    marks.append((clock(), stand.inside, Counter(spent)))
                    return False

                td.sample(pipe, generator=torch.manual_seed(0), callback=on_round, compile=compile, **kw)
                if i:
                    for (t0, n0, c0), (t1, n1, c1) in zip(marks, marks[1:]):
                        part = {k: c1[k] - c0[k] for k in c1}
                        part["network wrapper"] = part.get("network wrapper", 0.0) - (n1 - n0)
                        part["rest"] = (t1 - t0) - (n1 - n0) - sum(part.values())
                        part["round"] = (t1 - t0) - (n1 - n0)
                        rounds.append(part)
            labels = ["network wrapper", "eager round arithmetic", "fused call", "solver host", "rest", "round"]
            out["compiled" if compile else "eager"] = {k: 1e6 * statistics.median([r.get(k, 0.0) for r in rounds]) for k in labels}
            print(out, flush=True)
    finally:
        tc.RoundCompiler.__call__ = compiler_call
        for owner, name, fn in reversed(patched):
            setattr(owner, name, fn)
        stand.remove()
    return out


def main_compiled(args) -> None:
    """``--compiled``: eager against compiled rounds, side by side (see the module docstring)."""
    import os
    import tempfile

    if args.cold:  # inductor's on-disk cache in a fresh directory: the first compile is a new machine's
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="trisolve_inductor_")
    torch.set_num_threads(1)
    steps = 10 if args.quick else 50
    alternations = 2 if args.quick else 7
    digits = load_digits_pipeline("ddim")
    digits.set_progress_bar_config(disable=True)
    kw = dict(batch_size=1, num_inference_steps=steps, output_type="np")
    windows = [None] if args.quick else [None, 8]  # the smoke compiles one window's graphs, once
    cost = compile_cost(digits, windows, **kw)
    side = []
    for w in windows:
        window = trisolve.FullWindow() if w is None else w
        rec = dict(run=f"digits DDIM-{steps}, window {w or 'full'}")
        for name, clock in (("", time.perf_counter), ("cpu_", time.thread_time)):
            eager, compiled = [], []
            for _ in range(alternations):  # interleaved: the machine's load hits both alike
                eager.append(host_ms_per_round(digits, digits.unet, 3, clock=clock, window=window, **kw))
                compiled.append(host_ms_per_round(digits, digits.unet, 3, clock=clock, window=window, compile=True, **kw))
            rec.update({f"{name}eager_ms": statistics.median(eager), f"{name}compiled_ms": statistics.median(compiled),
                        f"{name}eager_all": eager, f"{name}compiled_all": compiled})  # fmt: skip
        side.append(rec)
        print(side[-1], flush=True)
    funcs = function_times(digits, calls=50 if args.quick else 300, window=trisolve.FullWindow(), **kw)
    parts = {f"window {w or 'full'}": round_parts(digits, 2 if args.quick else 10, window=trisolve.FullWindow() if w is None else w, **kw)
             for w in windows}  # fmt: skip
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    md = [
        f"The compiled round (`solve(..., compile=True)`) against the eager one on this machine (one thread; load average "
        f"{'n/a' if load is None else ', '.join(f'{v:.1f}' for v in load)} at the end: other processes share the CPU, so read "
        "the ratios, measured side by side). Bundled digits DDPM, DDIM, batch 1, the default TAA m=4 on the Picard map, "
        "a near-free stand-in for the UNet (`sample / 2`).",
        "",
        f"Host time per round outside the network [ms]: median over {alternations} alternations of eager and compiled "
        "(each the median over the rounds of three solves after a warm-up solve), as wall time and as the thread's CPU time "
        "(`time.thread_time`: the work itself, without the time other processes hold the CPU).",
        "",
        "| run | wall: eager | wall: compiled | compiled / eager | CPU: eager | CPU: compiled | compiled / eager |",
        "|---|---|---|---|---|---|---|",
    ]
    md += [f"| {r['run']} | {r['eager_ms']:.3f} | {r['compiled_ms']:.3f} | {r['compiled_ms'] / r['eager_ms']:.2f} | "
           f"{r['cpu_eager_ms']:.3f} | {r['cpu_compiled_ms']:.3f} | {r['cpu_compiled_ms'] / r['cpu_eager_ms']:.2f} |" for r in side]  # fmt: skip
    md += ["", "Per compiled function, one call on the arguments of its last call in a full-window solve (an accelerated round) "
           "[us, median of back-to-back calls; flushed: 16 MB touched before each call, as a network call or another process "
           "does between two rounds, so the call's code and data come from memory]:", "",
           "| function | eager | compiled | eager, flushed | compiled, flushed |", "|---|---|---|---|---|"]  # fmt: skip
    md += [f"| `{r['function']}` | {r['eager_us']:.0f} | {r['compiled_us']:.0f} | {r['eager_flushed_us']:.0f} | {r['compiled_flushed_us']:.0f} |"
           for r in funcs]  # fmt: skip
    md += ["", "Where the round's host time goes (thread CPU time per round [us], medians over the rounds after each solve's first "
           f"of {2 if args.quick else 10} solves; each part's median, so they need not add up to the round's):", "",
           "| window | round | parts: network wrapper | eager round arithmetic | fused call | solver host | rest |", "|---|---|---|---|---|---|---|"]
    for w, rec in parts.items():
        for mode, p in rec.items():
            md.append(f"| {w.split(' ', 1)[1]}, {mode} | {p['round']:.0f} | {p['network wrapper']:.0f} | {p['eager round arithmetic']:.0f} | "
                      f"{p['fused call']:.0f} | {p['solver host']:.0f} | {p['rest']:.0f} |")
    md += ["", f"What compiling costs: wall seconds of one solve (stand-in network; inductor's on-disk cache "
           f"{'fresh' if args.cold else 'as left by earlier runs'}):", "",
           "| window | solve | eager | first compiled | second compiled |", "|---|---|---|---|---|"]  # fmt: skip
    md += [f"| {r['window']} | {r['what']} | {r['eager_s']:.2f} | {r['first_compiled_s']:.2f} | {r['second_compiled_s']:.2f} |" for r in cost]
    write("launches_compiled" + ("_quick" if args.quick else ""), dict(side_by_side=side, functions=funcs, round_parts=parts, compile_cost=cost, load_average=load,
          cold_cache=bool(args.cold)), "\n".join(md) + "\n")  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compiled", action="store_true", help="eager vs compile=True: host time per round and compile cost")
    ap.add_argument("--cold", action="store_true", help="with --compiled: a fresh inductor cache directory")
    args = ap.parse_args(argv)
    if args.compiled:
        return main_compiled(args)
    steps = 10 if args.quick else 50
    solves, seqs = [], []

    digits = load_digits_pipeline("ddim")
    digits.set_progress_bar_config(disable=True)
    kw = dict(batch_size=1, num_inference_steps=steps, output_type="np")
    seqs.append(count_sequential(digits, digits.unet, f"digits DDIM-{steps}", **kw))
    for w in (None, 8):
        solves.append(count_solve(digits, digits.unet, f"digits DDIM-{steps}, window {w or 'full'}", window=w, **kw))

    sd = build_tiny_stable_diffusion()
    sd.set_progress_bar_config(disable=True)
    kw = dict(prompt="a digit", guidance_scale=7.5, num_inference_steps=steps, output_type="latent")
    seqs.append(count_sequential(sd, sd.unet, f"tiny SD, CFG 7.5, DDIM-{steps}", **kw))
    for w in (8, None):
        solves.append(count_solve(sd, sd.unet, f"tiny SD, CFG 7.5, DDIM-{steps}, window {w or 'full'}", window=w, **kw))
    sd15 = sd15_unet_kernels()
    dtype_ms = {"digits UNet": dtype_read_ms(digits.unet), "SD-1.5-sized UNet": dtype_read_ms(sd15_unet())}
    # host time on this CPU, without the counting mode (one thread; medians over rounds of `repeats` solves)
    torch.set_num_threads(1)
    repeats = 1 if args.quick else 5
    pipes = {"digits": (digits, dict(batch_size=1, num_inference_steps=steps, output_type="np")), "tiny SD": (sd, kw)}
    for r in solves:
        pipe, kwr = pipes["digits" if r["run"].startswith("digits") else "tiny SD"]
        w = r["run"].rsplit("window ", 1)[1]
        r["host_ms_per_round"] = host_ms_per_round(pipe, pipe.unet, repeats, window=trisolve.FullWindow() if w == "full" else int(w), **kwr)
    for r in seqs:
        pipe, kwr = pipes["digits" if r["run"].startswith("digits") else "tiny SD"]
        r["host_ms_per_step"] = host_ms_per_step(pipe, pipe.unet, repeats, **kwr)
    print(solves, seqs, flush=True)
    digits_net = seqs[0]["network_kernels_per_step"]

    md = [
        "ATen operators dispatched by `trisolve_diffusion.sample` (seed 0, batch 1, float32, counted on the CPU; the same "
        "operators run on a GPU). Rounds after the first (round 1 also builds the per-solve tables); medians per round "
        "(reads and syncs: the most in any round). Host time: wall time between round callbacks with the UNet replaced by a "
        f"near-free stand-in (`sample / 2`), minus the stand-in's time; one thread, median over the rounds of {repeats} solves, "
        "without the counting mode (the stand-in converges in other rounds; the work per round is the same code).",
        "",
        "| run | rounds | network calls | outside: kernels / round (max) | round 1 | views | allocations | reads / round | other syncs / round | network kernels / round | outside share of kernels | outside host time / round, this CPU [ms] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in solves:
        share = r["outside_kernels_median"] / (r["outside_kernels_median"] + r["network_kernels_per_round_median"])
        md.append(
            f"| {r['run']} | {r['rounds']} | {r['network_calls']} | {r['outside_kernels_median']:g} ({r['outside_kernels_max']}) | "
            f"{r['round1_outside_kernels']} | {r['outside_views_median']:g} | {r['outside_allocations_median']:g} | {r['reads_per_round_max']} | {r['syncs_per_round_max']} | "
            f"{r['network_kernels_per_round_median']:g} | {100 * share:.1f}% | {r['host_ms_per_round']:.2f} |"
        )
    md += [
        "",
        "The pipelines' own sequential loops, per step:",
        "",
        "| run | outside kernels / step | network kernels / step | outside host time / step, this CPU [ms] |",
        "|---|---|---|---|",
    ]
    for r in seqs:
        md.append(f"| {r['run']} | {r['outside_kernels_per_step']:g} | {r['network_kernels_per_step']:g} | {r['host_ms_per_step']:.2f} |")
    sd_round = [r for r in solves if r["run"].startswith("tiny SD")]
    md += [
        "",
        f"One call of the SD-1.5-sized UNet (860M parameters, counted on the meta device): **{sd15}** kernels; the digits UNet: "
        f"{digits_net:g}. With the tiny SD pipeline's outside kernels per round, an SD-1.5 round would be "
        + ", ".join(f"{100 * r['outside_kernels_median'] / (r['outside_kernels_median'] + sd15):.1f}% ({r['run'].split(', ')[-1]})" for r in sd_round)
        + " outside the network by kernel count.",
        "",
        "A diffusers model's `.dtype` walks every submodule on each read (the denoisers read it once per solve): "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in dtype_ms.items())
        + " per read on this CPU (median of 50).",
        "",
        "Most frequent kernels outside the network (first solve run): " + ", ".join(f"{n} {c}" for n, c in solves[0]["top_outside"]) + ".",
    ]
    write(
        "launches" + ("_quick" if args.quick else ""),
        dict(solves=solves, sequential=seqs, sd15_unet_kernels=sd15, dtype_read_ms=dtype_ms),
        "\n".join(md) + "\n",
    )


if __name__ == "__main__":
    main()
