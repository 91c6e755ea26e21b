"""Where a round's time goes on one device: the network against everything else, and the speed-ups.

    python benchmarks/gpu_round.py                       # a CUDA machine; writes results/gpu_round.{json,md}
    python benchmarks/gpu_round.py --quick --device cpu  # smoke size (the test suite runs this)

A compact companion of ``gpu.py`` that measures the current code's per-round overhead (issue
"Speed: one host read per round"), in one process, side by side:

1. The bundled digits DDPM, DDIM-50, batch 1 (fp16 network on a GPU): the pipeline's own
   sequential loop against ``trisolve_diffusion.sample`` at its defaults. The time inside the
   network is summed over the solve with CUDA events around every UNet call (no extra
   synchronisation inside the round), so ``outside = solve time - network time`` is the part
   of each round spent in the solver, the tolerance test, the host read and kernel launches.
2. A random-weight SD-1.5-sized ``UNet2DConditionModel`` with classifier-free guidance,
   DDIM-50, default options (``window`` chosen by the cost model on a GPU) against the
   sequential pipeline loop; the same network-time split.
3. The tanh RNN of ``recurrences.py`` (hidden 64, T = 1e5, float64): the NumPy Python loop
   on the host against the parallel solve on the device with Jacobi and dense Newton.

Times are medians of 3 runs after a warm-up (``--quick``: 1 run, no warm-up), device synchronised around
each run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time, write  # noqa: E402
from gpu import _sync, compare, sd_sized_pipeline  # noqa: E402
from recurrences import rnn_loop_numpy, rnn_parallel, rnn_problem  # noqa: E402

import trisolve  # noqa: E402
import trisolve_diffusion as td  # noqa: E402
from trisolve_diffusion.models import load_digits_pipeline  # noqa: E402


class NetworkClock:
    """Sum of the time spent inside ``module.forward``, measured with device events (or wall time on a CPU)."""

    def __init__(self, module: torch.nn.Module, dev: torch.device):
        self.module, self.dev, self.pairs, self.cpu = module, dev, [], 0.0
        self.orig = module.forward

        def forward(*args, **kwargs):
            if dev.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = self.orig(*args, **kwargs)
                end.record()
                self.pairs.append((start, end))
                return out
            t0 = time.perf_counter()
            out = self.orig(*args, **kwargs)
            self.cpu += time.perf_counter() - t0
            return out

        module.forward = forward

    def reset(self) -> None:
        self.pairs, self.cpu = [], 0.0

    def seconds(self) -> float:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.pairs) / 1e3
        return self.cpu

    def remove(self) -> None:
        self.module.forward = self.orig


def split_run(pipe, net, dev, repeats, warmup: bool = True, **kw) -> dict:
    """Median solve wall time and its network / outside split over ``repeats`` runs of ``td.sample`` (seed 0 each), after a warm-up run."""
    clock = NetworkClock(net, dev)
    gen = lambda: torch.Generator(dev).manual_seed(0)  # noqa: E731  (a fresh generator per run: the same noise)
    try:
        if warmup:
            td.sample(pipe, generator=gen(), **kw)  # warm-up (and the cost model's batch curve, cached)
        walls, nets, out = [], [], None
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            clock.reset()
            t0 = time.perf_counter()
            out = td.sample(pipe, generator=gen(), **kw)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - t0)
            nets.append(clock.seconds())
    finally:
        clock.remove()
    k = int(np.argsort(walls)[len(walls) // 2])
    sol = out.solution
    return dict(wall_s=walls[k], network_s=nets[k], outside_s=walls[k] - nets[k], rounds=sol.num_rounds, evals_per_step=sol.num_evals / sol.n, out=out)


def diffusion_rows(dev, quick, repeats) -> list[dict]:
    rows = []
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    steps = 10 if quick else 50
    pipe = load_digits_pipeline("ddim").to(dev, dtype)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(batch_size=1, num_inference_steps=steps, output_type="pt")
    t_seq, ref = median_time(lambda: pipe(generator=torch.Generator(dev).manual_seed(0), **kw).images, repeats, _sync(dev), warmup=not quick)
    r = split_run(pipe, pipe.unet, dev, repeats, not quick, **kw)
    diff, psnr = compare(r.pop("out").images.float(), ref.float(), 1.0)
    rows.append(dict(model="digits DDPM 1x16x16", sampler=f"DDIM-{steps}", sequential_s=t_seq, **r, speedup=t_seq / r["wall_s"], max_diff=diff, psnr_db=psnr))

    sd = sd_sized_pipeline(dev, dtype, quick)
    emb = torch.zeros(1, 77, sd.unet.config.cross_attention_dim, device=dev, dtype=dtype)
    size = sd.unet.config.sample_size * sd.vae_scale_factor  # pixels that give the UNet's latent size
    kw = dict(prompt_embeds=emb, negative_prompt_embeds=emb, guidance_scale=7.5, num_inference_steps=steps, output_type="latent", height=size, width=size)
    t_seq, ref = median_time(lambda: sd(generator=torch.Generator(dev).manual_seed(0), **kw).images, repeats, _sync(dev), warmup=not quick)
    r = split_run(sd, sd.unet, dev, repeats, not quick, **kw)
    diff, psnr = compare(r.pop("out").images.float(), ref.float(), 8.0)  # latents: peak-to-peak ~8
    rows.append(dict(model="tiny SD UNet (quick)" if quick else "SD-1.5-sized UNet (random weights), CFG 7.5", sampler=f"DDIM-{steps}", sequential_s=t_seq, **r, speedup=t_seq / r["wall_s"], max_diff=diff, psnr_db=psnr))
    return rows


def rnn_rows(dev, quick, repeats) -> list[dict]:
    T, hidden = (2_000, 16) if quick else (100_000, 64)
    W, drive = rnn_problem(T, hidden=hidden)
    t_np, ref = median_time(lambda: rnn_loop_numpy(W, drive, T), 1, warmup=False)
    Wt, dt = torch.from_numpy(W).to(dev), torch.from_numpy(drive).to(dev)
    rows = []
    for name, kw in (("Jacobi", dict(solver=trisolve.Jacobi())), ("Newton dense", dict(solver=trisolve.Jacobi(), update_map=trisolve.Newton()))):
        t, sol = median_time(lambda kw=kw: rnn_parallel(Wt, dt, T, **kw), repeats, _sync(dev), warmup=not quick)
        err = float(np.abs(sol.trajectory.cpu().numpy() - ref).max())
        rows.append(dict(T=T, hidden=hidden, method=name, numpy_loop_s=t_np, parallel_s=t, speedup=t_np / t, rounds=sol.num_rounds, max_error=err))
    return rows


def markdown(dev_name: str, diff_rows: list[dict], rnn: list[dict]) -> str:
    lines = [f"Device: **{dev_name}**. Medians of the timed runs; speed-up = sequential / parallel in the same process.", ""]
    lines += [
        "| model | sampler | sequential [s] | parallel [s] | speed-up | rounds | evals / step | network [s] | outside the network [s] | outside / round | PSNR vs sequential |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in diff_rows:
        lines.append(
            f"| {r['model']} | {r['sampler']} | {r['sequential_s']:.3f} | {r['wall_s']:.3f} | {r['speedup']:.2f}x | {r['rounds']} | "
            f"{r['evals_per_step']:.2f} | {r['network_s']:.3f} | {r['outside_s']:.3f} | {100 * r['outside_s'] / r['wall_s']:.0f}% | {r['psnr_db']:.1f} dB |"
        )
    lines += ["", "| tanh RNN | method | NumPy loop [s] | parallel on the device [s] | speed-up | rounds | max error |", "|---|---|---|---|---|---|---|"]
    for r in rnn:
        lines.append(
            f"| hidden {r['hidden']}, T = {r['T']} | {r['method']} | {r['numpy_loop_s']:.3f} | {r['parallel_s']:.4f} | {r['speedup']:.1f}x | {r['rounds']} | {r['max_error']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    repeats = 1 if args.quick else 3
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (smoke run)"
    rnn = rnn_rows(dev, args.quick, repeats)
    print(markdown(name, [], rnn), flush=True)
    diff = diffusion_rows(dev, args.quick, repeats)
    md = markdown(name, diff, rnn)
    write("gpu_round_quick" if args.quick else "gpu_round", dict(device=name, torch=torch.__version__, diffusion=diff, rnn=rnn), md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
