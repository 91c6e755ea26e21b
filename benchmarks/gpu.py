"""GPU wall clock: sequential against parallel, side by side in one process.

    python benchmarks/gpu.py                        # a CUDA machine; writes results/gpu.{json,md}
    python benchmarks/gpu.py --quick --device cpu   # smoke size (the test suite runs this)
    python benchmarks/gpu.py --cost-model-only      # section 3 alone (results/gpu_cost_model.{json,md})

1. Diffusion, batch 1, fp16 network (float32 on the CPU): the bundled digits DDPM (1x16x16;
   DDIM-25/50/100, DDPM-100) and a randomly initialised Stable-Diffusion-1.5-sized
   ``UNet2DConditionModel`` (4x64x64 latents, block widths 320/640/1280/1280, classifier-free
   guidance 7.5 on zero text embeddings: random weights, so the timing is what matters, and its
   round counts need not match a trained model's). Sequential = the diffusers pipeline's own
   loop; parallel = ``trisolve_diffusion.sample`` at its defaults. Reported: wall time, rounds,
   network evaluations / T, max difference and PSNR of the parallel output from the
   sequential one (digits: images in [0, 1]; SD: latents), peak GPU memory of each; and the
   time of one network call against its batch size, which says how much of a round's extra
   work the device absorbs.
2. The tanh RNN of ``recurrences.py`` (hidden 16 and 64, T = 1e3..1e5, float64): parallel
   solves on the GPU (PyTorch) -- Jacobi, Newton dense (DEER) and Newton diagonal
   (quasi-DEER) with the RNN's ``jacobian=`` callable, and Newton dense forward + backward
   (``gradients=True``) -- against the sequential Python loop over NumPy rows on the host and
   a sequential loop over PyTorch rows on the GPU (forward, and forward + backward by
   autograd), with the max error against the NumPy loop.

3. The cost model (``trisolve_diffusion.cost_model``): the measured round-time curve of each
   model, the predicted wall time and best window on 1, 2, 4 and 8 devices (all-gather at an
   assumed link speed, ``--link-gbps``), and on this device the prediction next to measured
   ``sample()`` runs with windows 8/16/32, ``window="auto"`` and the full window.

Times are medians of 3 runs after a warm-up, with the device synchronised around each
(``--quick``: one run, no warm-up; its times mean nothing).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time, write  # noqa: E402
from recurrences import RNN_METHODS, rnn_loop_numpy, rnn_loop_torch, rnn_parallel, rnn_problem  # noqa: E402

import trisolve  # noqa: E402
import trisolve_diffusion as td  # noqa: E402


def _sync(dev: torch.device):
    """What to call around a timed run on ``dev`` (``None`` on the CPU)."""
    return (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None


def timed(fn, dev: torch.device, repeats: int, warmup: bool = True) -> tuple[float, object, float]:
    """Median wall time of ``fn()`` (after a warm-up unless ``warmup=False``: ``--quick``, whose times mean nothing),
    its last result, and the peak device memory (GiB) any of the runs allocated (nan off CUDA): every run does the same work."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    sec, result = median_time(fn, repeats, sync=_sync(dev), warmup=warmup)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    return sec, result, peak


def compare(a: torch.Tensor, b: torch.Tensor, peak: float) -> tuple[float, float]:
    """Max abs difference and PSNR of ``a`` against ``b``, for signals of peak-to-peak ``peak``."""
    d = a.double() - b.double()
    mse = float((d * d).mean())
    return float(d.abs().max()), (math.inf if mse == 0 else 10 * math.log10(peak**2 / mse))


def sd_sized_pipeline(dev: torch.device, dtype: torch.dtype, quick: bool):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion

    pipe = build_tiny_stable_diffusion()
    if not quick:
        torch.manual_seed(0)
        with torch.device(dev):  # initialise the 860M parameters where they will run
            pipe.unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280))
    pipe.text_encoder = None  # prompt embeddings are given
    pipe.scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    pipe = pipe.to(dev, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dpm_scheduler(pipe):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2)


def network_rows(model: str, unet, batches: list[int], cond: torch.Tensor | None, dev: torch.device, repeats: int, warmup: bool = True) -> list[dict]:
    """Wall time of one network call at each batch size: what a round costs against a step."""
    cfg = unet.config
    rows = []
    for b in batches:
        x = torch.randn(b, cfg.in_channels, cfg.sample_size, cfg.sample_size, device=dev, dtype=unet.dtype)
        t = torch.full((b,), 500, device=dev)
        kw = {} if cond is None else {"encoder_hidden_states": cond.expand(b, *cond.shape[1:])}
        with torch.no_grad():
            sec, _, _ = timed(lambda: unet(x, t, **kw), dev, repeats, warmup)
        rows.append(dict(model=model, batch=b, call_ms=1e3 * sec, per_sample_ms=1e3 * sec / b))
        print(rows[-1], flush=True)
    return rows


def diffusion_rows(dev: torch.device, dtype: torch.dtype, quick: bool, repeats: int) -> tuple[list[dict], list[dict]]:
    from trisolve_diffusion.models import load_digits_pipeline

    rows, net = [], []

    def run(model, label, pipe, steps, kw, peak_value, images, **options):
        seq = lambda: pipe(generator=torch.Generator(dev).manual_seed(0), num_inference_steps=steps, **kw)  # noqa: E731
        par = lambda: td.sample(pipe, generator=torch.Generator(dev).manual_seed(0), num_inference_steps=steps, **kw, **options)  # noqa: E731
        t_seq, ref, seq_peak = timed(seq, dev, repeats, not quick)
        t_par, out, par_peak = timed(par, dev, repeats, not quick)
        max_diff, psnr = compare(images(out), images(ref), peak_value)
        sol = out.solution
        rows.append(
            dict(model=model, sampler=label, steps=steps, sequential_s=t_seq, parallel_s=t_par, speedup=t_seq / t_par,
                 rounds=sol.num_rounds, status=sol.status.name, evals_per_step=sol.num_evals / steps, max_diff=max_diff,
                 psnr_db=psnr, seq_peak_gib=seq_peak, par_peak_gib=par_peak)
        )  # fmt: skip
        print(rows[-1], flush=True)

    digits_steps = [("ddim", "DDIM", 10)] if quick else [("ddim", "DDIM", 25), ("ddim", "DDIM", 50), ("ddim", "DDIM", 100), ("ddpm", "DDPM", 100)]
    pipes = {}
    for kind, label, steps in digits_steps:
        if kind not in pipes:
            pipes[kind] = load_digits_pipeline(kind).to(dev, dtype)
            pipes[kind].set_progress_bar_config(disable=True)
        run("digits DDPM 1x16x16", label, pipes[kind], steps, dict(output_type="pt"), 1.0, lambda o: o.images)
    net += network_rows("digits DDPM 1x16x16", pipes["ddim"].unet, [1, 8] if quick else [1, 25, 50, 100, 200], None, dev, repeats, not quick)

    sd = sd_sized_pipeline(dev, dtype, quick)
    cross = sd.unet.config.cross_attention_dim
    emb = torch.zeros(1, 77, cross, device=dev, dtype=dtype)
    size = sd.unet.config.sample_size * sd.vae_scale_factor  # pixels that give the UNet's latent size
    kw = dict(prompt_embeds=emb, negative_prompt_embeds=emb, guidance_scale=7.5, output_type="latent", height=size, width=size)
    latents = lambda o: o.images  # noqa: E731  (output_type="latent": the final latents)
    model = "tiny SD UNet (quick)" if quick else "random SD-1.5-sized UNet, CFG 7.5"
    ddim = sd.scheduler
    for steps in [10] if quick else [25, 50]:
        run(model, "DDIM", sd, steps, kw, 8.0, latents)
    for window in [4] if quick else [8, 16, 32]:  # a window bounds the batch (2 x window with guidance)
        run(model, f"DDIM, window {window}", sd, 10 if quick else 50, kw, 8.0, latents, window=window)
    sd.scheduler = dpm_scheduler(sd)
    run(model, "DPM++(2M)", sd, 10 if quick else 20, kw, 8.0, latents)
    sd.scheduler = ddim
    net += network_rows(model, sd.unet, [2, 8] if quick else [2, 8, 16, 32, 50, 100], emb, dev, repeats, not quick)
    return rows, net


# ---------------------------------------------------------------- cost model: auto window and devices

#: Assumed all-gather link for the multi-device predictions (one GPU cannot measure it): NVLink-class
#: bus bandwidth and a per-collective latency; ``--link-gbps`` / ``--link-latency-us`` change them.
LINK_GBPS, LINK_LATENCY_US = 100.0, 50.0


def _unet_curve(unet, batch: int, guidance: int, cond: torch.Tensor | None, steps: int, dev: torch.device, repeats: int):
    """``t(r)``: one UNet call on ``r`` trajectory rows (a network batch of ``r * batch * guidance``)."""
    from trisolve_diffusion.cost_model import measure_round_time

    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]

    inputs = {}

    def call(r: int):
        b = r * batch * guidance
        if b not in inputs:  # built before the timed calls (the warm-up call comes first)
            x = torch.randn(b, cfg.in_channels, size, size, device=dev, dtype=unet.dtype)
            kw = {} if cond is None else {"encoder_hidden_states": cond.expand(b, *cond.shape[1:])}
            inputs[b] = (x, torch.full((b,), 500, device=dev), kw)
        x, t, kw = inputs[b]
        with torch.no_grad():
            return unet(x, t, return_dict=False, **kw)[0]

    sync = _sync(dev)
    return measure_round_time(call, steps, sync=sync, repeats=repeats)


def cost_model_rows(dev: torch.device, dtype: torch.dtype, quick: bool, repeats: int, link_gbps: float, latency_us: float):
    """Predicted wall time and best window on 1, 2, 4, 8 devices (digits; SD-sized UNet with guidance), and on one
    device the prediction next to measured ``sample()`` runs with fixed windows and ``window="auto"``."""
    import dataclasses

    from trisolve_diffusion.cost_model import CostModel, RoundsModel
    from trisolve_diffusion.models import load_digits_pipeline

    predicted, measured = [], []
    digits = load_digits_pipeline("ddim").to(dev, dtype)
    digits.set_progress_bar_config(disable=True)
    sd = sd_sized_pipeline(dev, dtype, quick)
    emb = torch.zeros(1, 77, sd.unet.config.cross_attention_dim, device=dev, dtype=dtype)
    size = sd.unet.config.sample_size * sd.vae_scale_factor
    sd_kw = dict(prompt_embeds=emb, negative_prompt_embeds=emb, guidance_scale=7.5, output_type="latent", height=size, width=size)
    cases = [
        ("digits DDPM 1x16x16", digits, 1, 1, None, dict(output_type="pt"), 4 * 16 * 16),
        ("tiny SD UNet (quick)" if quick else "random SD-1.5-sized UNet, CFG 7.5", sd, 1, 2, emb, sd_kw,
         4 * sd.unet.config.in_channels * sd.unet.config.sample_size**2),
    ]  # fmt: skip
    steps = 10 if quick else 50
    for name, pipe, batch, guidance, cond, kw, row_bytes in cases:
        curve = _unet_curve(pipe.unet, batch, guidance, cond, steps, dev, repeats)
        print(name, "t(r):", dict(zip(curve.rows, [round(1e3 * s, 2) for s in curve.seconds])), flush=True)
        # one device: measured sample() runs; the prediction of the model "auto" chose with (its own curve through
        # the sample's g, and its measured per-round overhead), and of the UNet's curve without the overhead
        bare = CostModel(curve, steps)
        t_seq, _, _ = timed(lambda: pipe(generator=torch.Generator(dev).manual_seed(0), num_inference_steps=steps, **kw), dev, repeats, not quick)
        runs = []
        for window in [4, "auto", None] if quick else [8, 16, 32, "auto", None]:
            run = lambda: td.sample(pipe, generator=torch.Generator(dev).manual_seed(0), num_inference_steps=steps,  # noqa: E731
                                    window=window if window is not None else trisolve.FullWindow(), **kw)  # fmt: skip
            sec, out, _ = timed(run, dev, repeats, not quick)
            runs.append((window, sec, out, max(hi - lo for lo, hi in out.solution.windows)))
        one = td.AutoWindow.of(pipe.unet).last_choice.model  # the policy window="auto" used for this network
        for window, sec, out, w in runs:
            measured.append(dict(model=name, steps=steps, window="full" if window is None else str(window), used_window=w,
                                 rounds=out.solution.num_rounds, predicted_rounds=one.rounds(w), measured_s=sec,
                                 predicted_s=one.wall_time(w), predicted_no_overhead_s=bare.wall_time(w), sequential_s=t_seq,
                                 predicted_sequential_s=one.sequential_time(), speedup=t_seq / sec,
                                 overhead_ms=1e3 * one.overhead, overhead_per_row_ms=1e3 * one.overhead_per_row))  # fmt: skip
            print(measured[-1], flush=True)
        for devices in (1, 2, 4, 8):  # the solver's own work is not split over ranks: each keeps the measured overhead
            model = dataclasses.replace(one, devices=devices, gather_bytes_per_row=batch * row_bytes, link_bandwidth=link_gbps * 1e9,
                                        link_latency=2 * latency_us * 1e-6, rounds_model=RoundsModel())  # fmt: skip
            choice = model.best_window()
            seq = one.sequential_time()
            predicted.append(dict(model=name, steps=steps, devices=devices, best_window=choice.window, predicted_rounds=choice.rounds,
                                  predicted_s=choice.seconds, predicted_sequential_s=seq, predicted_speedup=seq / choice.seconds,
                                  full_window_s=model.wall_time(steps)))  # fmt: skip
            print(predicted[-1], flush=True)
    return predicted, measured


def cost_model_markdown(predicted: list[dict], measured: list[dict], link_gbps: float, latency_us: float) -> list[str]:
    md = [
        "",
        "Cost model (`trisolve_diffusion.cost_model`; t(r) and the per-round overhead measured on this device by "
        '`window="auto"`, rounds(w) the fitted prior). '
        f"Predicted on P devices (all-gather at an assumed {link_gbps:g} GB/s, {latency_us:g} us per collective):",
        "",
        "| model | steps | devices | best window | predicted rounds | predicted [s] | predicted sequential [s] | predicted speed-up | full window [s] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['model']} | {r['steps']} | {r['devices']} | {r['best_window']} | {r['predicted_rounds']:.1f} | {r['predicted_s']:.3f} | "
        f"{r['predicted_sequential_s']:.3f} | {r['predicted_speedup']:.2f}x | {r['full_window_s']:.3f} |"
        for r in predicted
    ]
    md += [
        "",
        'One device, prediction next to measurement (`sample()` with fixed windows, `window="auto"` and the full window; '
        'predicted: the model `"auto"` chose with, and the UNet\'s own curve without the per-round overhead term):',
        "",
        "| model | steps | window | used | rounds | predicted rounds | measured [s] | predicted [s] | without overhead [s] | sequential [s] | speed-up | overhead per round |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['model']} | {r['steps']} | {r['window']} | {r['used_window']} | {r['rounds']} | {r['predicted_rounds']:.1f} | "
        f"{r['measured_s']:.3f} | {r['predicted_s']:.3f} | {r['predicted_no_overhead_s']:.3f} | {r['sequential_s']:.3f} | {r['speedup']:.2f}x | "
        f"{r['overhead_ms']:.2f} ms + {r['overhead_per_row_ms']:.3f} ms per row |"
        for r in measured
    ]
    return md


def cost_model_main(dev: torch.device, dtype: torch.dtype, name: str, args, repeats: int) -> None:
    """``--cost-model-only``: the cost-model section alone."""
    predicted, measured = cost_model_rows(dev, dtype, args.quick, repeats, args.link_gbps, args.link_latency_us)
    head = f"Device: **{name}** (torch {torch.__version__}); network {str(dtype).removeprefix('torch.')}, batch 1; medians of {repeats} runs after a warm-up."
    md = [head, *cost_model_markdown(predicted, measured, args.link_gbps, args.link_latency_us)]
    write("gpu_cost_model" + ("_quick" if args.quick else ""), {"device": name, "predicted": predicted, "measured": measured}, "\n".join(md) + "\n")


def rnn_rows(dev: torch.device, quick: bool, repeats: int) -> list[dict]:
    rows = []
    for hidden in [16] if quick else [16, 64]:
        for T in [1000] if quick else [1000, 10_000, 100_000]:
            W, drive = rnn_problem(T, hidden=hidden)
            t_np, ref, _ = timed(lambda: rnn_loop_numpy(W, drive, T), torch.device("cpu"), repeats, not quick)
            Wd, dd = torch.from_numpy(W).to(dev), torch.from_numpy(drive).to(dev)
            loop_reps = 1 if T >= 100_000 else repeats
            t_loop, _, _ = timed(lambda: rnn_loop_torch(Wd, dd, T), dev, loop_reps, not quick)
            wts = torch.randn(T + 1, hidden, dtype=torch.float64, device=dev)
            Wg, dg = Wd.clone().requires_grad_(True), dd.clone().requires_grad_(True)

            def loop_fb():
                (rnn_loop_torch(Wg, dg, T) * wts).sum().backward()

            t_loop_fb, _, _ = timed(loop_fb, dev, loop_reps, not quick)

            def newton_fb():
                sol = rnn_parallel(Wg, dg, T, gradients=True, **RNN_METHODS["Newton dense"])
                (sol.trajectory * wts).sum().backward()
                return sol

            for name in ("Jacobi", "Newton dense", "Newton diagonal", "Newton dense, forward + backward"):
                if name.endswith("backward"):
                    t_par, sol, peak = timed(newton_fb, dev, repeats, not quick)
                    t_ref = t_loop_fb
                else:
                    t_par, sol, peak = timed(lambda name=name: rnn_parallel(Wd, dd, T, **RNN_METHODS[name]), dev, repeats, not quick)
                    t_ref = t_loop
                rows.append(
                    dict(hidden=hidden, T=T, method=name, rounds=sol.num_rounds, parallel_s=t_par, python_loop_s=t_np, device_loop_s=t_ref,
                         speedup_vs_python_loop=t_np / t_par, speedup_vs_device_loop=t_ref / t_par, peak_gib=peak,
                         max_error=float(np.abs(sol.trajectory.detach().cpu().numpy() - ref).max()))
                )  # fmt: skip
                print(rows[-1], flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test only)")
    ap.add_argument("--quick", action="store_true", help="smoke size: one small setting of each")
    ap.add_argument("--link-gbps", type=float, default=LINK_GBPS, help="assumed all-gather bandwidth for the multi-device predictions")
    ap.add_argument("--link-latency-us", type=float, default=LINK_LATENCY_US, help="assumed latency per collective")
    ap.add_argument("--cost-model-only", action="store_true", help="only the cost-model section; writes results/gpu_cost_model.{json,md}")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per median (default 3; 1 with --quick)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (or --device cpu for a smoke run).")
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    repeats = args.repeats or (1 if args.quick else 3)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    if args.cost_model_only:
        return cost_model_main(dev, dtype, name, args, repeats)
    diff, net = diffusion_rows(dev, dtype, args.quick, repeats)
    rnn = rnn_rows(dev, args.quick, repeats)
    predicted, measured = cost_model_rows(dev, dtype, args.quick, repeats, args.link_gbps, args.link_latency_us)

    md = [
        f"Device: **{name}** (torch {torch.__version__}); network {str(dtype).removeprefix('torch.')}, batch 1; "
        f"medians of {repeats} runs after a warm-up.",
        "",
        "| model | sampler | steps | sequential [s] | parallel [s] | speed-up | rounds | evals / T | max diff | PSNR [dB] | peak memory seq / par [GiB] |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in diff:
        md.append(
            f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['sequential_s']:.3f} | {r['parallel_s']:.3f} | {r['speedup']:.2f}x | "
            f"{r['rounds']} | {r['evals_per_step']:.1f} | {r['max_diff']:.1e} | {r['psnr_db']:.1f} | {r['seq_peak_gib']:.2f} / {r['par_peak_gib']:.2f} |"
        )
    md += [
        "",
        "Digits: images in [0, 1]. SD-sized: the final latents (PSNR over a peak-to-peak of 8); random weights.",
        "",
        "One network call against its batch (a round evaluates 2 x window rows with guidance, the sequential loop 2):",
        "",
        "| model | batch | ms per call | ms per sample |",
        "|---|---|---|---|",
        *[f"| {r['model']} | {r['batch']} | {r['call_ms']:.2f} | {r['per_sample_ms']:.3f} |" for r in net],
        "",
        "| tanh RNN hidden | T | method | rounds | parallel on device [s] | Python loop (NumPy, host) [s] | loop on device [s] | "
        "speed-up vs Python loop | speed-up vs device loop | peak memory [GiB] | max error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rnn:
        md.append(
            f"| {r['hidden']} | {r['T']:,} | {r['method']} | {r['rounds']} | {r['parallel_s']:.4f} | {r['python_loop_s']:.3f} | {r['device_loop_s']:.3f} | "
            f"{r['speedup_vs_python_loop']:.1f}x | {r['speedup_vs_device_loop']:.1f}x | {r['peak_gib']:.2f} | {r['max_error']:.1e} |"
        )
    md += [
        "",
        "atol 1e-9, float64; the error is against the NumPy loop. Forward + backward rows: the solve with gradients=True and "
        "loss.backward(), compared with autograd through the loop on the device.",
    ]
    md += cost_model_markdown(predicted, measured, args.link_gbps, args.link_latency_us)
    payload = {"device": name, "diffusion": diff, "network": net, "rnn": rnn, "cost_model": {"predicted": predicted, "measured": measured}}
    write("gpu" + ("_quick" if args.quick else ""), payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
