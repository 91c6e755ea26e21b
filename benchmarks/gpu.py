"""GPU wall clock: sequential against parallel sampling, batch 1, fp16.

    python benchmarks/gpu.py            # needs a CUDA machine; prints a table and writes results/gpu.*

Models: the bundled digits DDPM (1x16x16) and a randomly initialised Stable-Diffusion-sized
``UNet2DConditionModel`` (4x64x64 latents, SD-1.5 block widths, text embeddings of 77x768
zeros; random weights: the timing is what matters). Sequential = the diffusers loop of the
same steps; parallel = ``trisolve_diffusion.sample`` at its defaults (rounds reported).
Medians of 3 runs after a warm-up, with ``torch.cuda.synchronize()`` around each.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

import trisolve_diffusion as td  # noqa: E402


def timed(fn, repeats=3):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        res = fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - start)
    return statistics.median(out), res


def sd_sized_pipeline():
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion

    pipe = build_tiny_stable_diffusion()
    pipe.unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280))
    pipe.text_encoder = None
    pipe.scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    return pipe


def main():
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    from trisolve_diffusion.models import load_digits_pipeline

    dev = torch.device("cuda")
    rows = []
    digits = load_digits_pipeline("ddim").to(dev, torch.float16)
    digits.set_progress_bar_config(disable=True)
    for steps in (25, 50, 100):
        kw = dict(num_inference_steps=steps, output_type="pt")
        t_seq, _ = timed(lambda: digits(generator=torch.Generator(dev).manual_seed(0), **kw))
        t_par, out = timed(lambda: td.sample(digits, generator=torch.Generator(dev).manual_seed(0), **kw))
        rows.append(dict(model="digits DDPM 1x16x16", steps=steps, sequential_s=t_seq, parallel_s=t_par, rounds=out.solution.num_rounds))
        print(rows[-1], flush=True)
    sd = sd_sized_pipeline().to(dev, torch.float16)
    sd.set_progress_bar_config(disable=True)
    emb = torch.zeros(1, 77, 768, device=dev, dtype=torch.float16)
    for steps in (25, 50):
        kw = dict(
            prompt_embeds=emb, negative_prompt_embeds=emb, guidance_scale=7.5, num_inference_steps=steps, output_type="latent", height=512, width=512
        )
        t_seq, _ = timed(lambda: sd(generator=torch.Generator(dev).manual_seed(0), **kw))
        t_par, out = timed(lambda: td.sample(sd, generator=torch.Generator(dev).manual_seed(0), max_batch_size=64, **kw))
        rows.append(dict(model="random SD-1.5-sized UNet, CFG", steps=steps, sequential_s=t_seq, parallel_s=t_par, rounds=out.solution.num_rounds))
        print(rows[-1], flush=True)
    name = torch.cuda.get_device_name(0)
    md = [
        f"GPU: **{name}**, fp16, batch 1.",
        "",
        "| model | steps | sequential [s] | parallel [s] | rounds | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['model']} | {r['steps']} | {r['sequential_s']:.3f} | {r['parallel_s']:.3f} | {r['rounds']} | {r['sequential_s'] / r['parallel_s']:.2f}x |"
        )
    write("gpu", {"gpu": name, "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
