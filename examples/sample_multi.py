"""Parallel sampling with each round's rows split over the ranks of a ``torchrun`` job.

On GPUs (one process per GPU, NCCL) or on the CPU (gloo), the same script::

    torchrun --standalone --nproc-per-node 4 examples/sample_multi.py
    torchrun --standalone --nproc-per-node 2 examples/sample_multi.py --steps 20   # CPU-only torch: gloo

Every rank runs the same ``sample(pipe, ..., distributed=True)`` call with the same seed and
evaluates its share of each round's rows; all ranks return the same images, and rank 0 writes
them (``--out``: a PNG grid, or the raw images in [0, 1] when the name ends in ``.npy``). The
bundled digits DDPM needs no download; for Stable Diffusion, load the pipeline on ``device``
instead and pass ``prompt=...`` (the same on every rank), e.g.
``StableDiffusionPipeline.from_pretrained(model_id, torch_dtype=torch.float16).to(device)``.
See the docs page "Several GPUs".
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import trisolve_diffusion as td
from trisolve_diffusion.models import load_digits_pipeline


def device_and_backend() -> tuple[torch.device, str]:
    """GPU ``LOCAL_RANK`` with NCCL where CUDA is available, else the CPU with gloo."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        return device, "nccl"
    return torch.device("cpu"), "gloo"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    ap.add_argument("--batch", type=int, default=4, help="images (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("sample_multi.png"), help="written by rank 0 (.png grid or .npy)")
    args = ap.parse_args(argv)

    device, backend = device_and_backend()
    dist.init_process_group(backend)
    try:
        pipe = load_digits_pipeline("ddim").to(device)  # the same pipeline on every rank
        pipe.set_progress_bar_config(disable=dist.get_rank() != 0)  # one bar, on rank 0
        out = td.sample(pipe, batch_size=args.batch, num_inference_steps=args.steps, output_type="np", distributed=True,
                        generator=torch.Generator(device).manual_seed(args.seed))  # fmt: skip
        sol = out.solution
        if dist.get_rank() == 0:
            print(f"{dist.get_world_size()} ranks ({backend}, {device.type}): {sol.status.name} in {sol.num_rounds} rounds for {sol.n} steps")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            if args.out.suffix == ".npy":
                np.save(args.out, out.images)
            else:
                from PIL import Image

                grid = np.concatenate(list(out.images[..., 0]), axis=1)  # (H, B * W)
                Image.fromarray(np.round(grid * 255).astype(np.uint8)).save(args.out)
            print(f"written to {args.out.resolve()}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
