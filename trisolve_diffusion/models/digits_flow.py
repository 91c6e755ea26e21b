"""The bundled digits rectified-flow model: a small ``UNet2DModel`` trained here by flow matching.

Same data and network size class as the bundled DDPM (:mod:`trisolve_diffusion.models.digits`):
the 1,797 scikit-learn digits upsampled to 16x16 in ``[-1, 1]``, ``UNet2DModel`` of about 1.1M
parameters. Training follows rectified flow / flow matching in diffusers' convention
(``FlowMatchEulerDiscreteScheduler``, SD3):

    x_sigma = (1 - sigma) x_0 + sigma z,        z ~ N(0, I),  sigma in [0, 1]
    v_theta(x_sigma, t = 1000 sigma) ~ z - x_0  (velocity prediction, mean-squared loss)

and sampling integrates ``dx / dsigma = v`` from ``sigma = 1`` (noise) to ``sigma = 0`` with
Euler steps ``x' = x + (sigma' - sigma) v`` (``FlowMatchEulerDiscreteScheduler.step``). The
weights ship in ``trisolve_diffusion/weights/digits_flow/`` (safetensors); reproduce them with::

    python -m trisolve_diffusion.models.digits_flow --train                # 2 CPU threads, about 13.5 minutes
    python -m trisolve_diffusion.models.digits_flow --train --device cuda  # about 80 s on an H200 (4,000 steps took 161 s)

The bundled weights are the first command's output on the project's 2-core development machine
(AMD EPYC, 2 threads, otherwise idle): 2,000 steps of batch 64 in 811.6 s (``training.json``);
the forward and backward passes of the UNet are almost all of it (0.36-0.41 s per step in the
training log). Every random draw comes from one seeded CPU generator on either
device, so a GPU run differs only by floating-point round-off.

An earlier recipe, 4,000 steps (trained on an H200 in 161 s, about 25 minutes on this CPU), gave
a slightly better model by its loss (0.147 against 0.153 on fixed draws of the whole data set)
and by a logistic-regression digit classifier (84 % against 78 % of 500 samples classified with
probability > 0.9); the parallel sampler's median rounds were the same (FlowEuler-28, seeds 0-9:
7 at batch 1, 8 at batch 4). ``python benchmarks/flow_weights.py`` measures both
(``benchmarks/results/flow_weights.md``).

Load a ready pipeline with :func:`load_digits_flow_pipeline` (no network access needed).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

from .digits import UNET_CONFIG, digits_dataset, optimisation_step
from .flow_pipeline import DigitsFlowPipeline, flow_shift_mu  # noqa: F401  (re-exported)

__all__ = ["WEIGHTS_DIR", "SCHEDULER_CONFIG", "DigitsFlowPipeline", "build_unet", "load_digits_flow_unet", "load_digits_flow_pipeline", "train"]

#: Folder of the bundled digits flow model's weights.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "digits_flow"

# shift 1: sigmas evenly spaced in [1, 1/n]; `shift`, dynamic shifting and the other sigma options
# of the scheduler can be switched on with load_digits_flow_pipeline(**overrides)
#: ``FlowMatchEulerDiscreteScheduler`` config of the bundled flow model.
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)


def build_unet() -> UNet2DModel:
    """The untrained network, same configuration as the digits DDPM (``digits.UNET_CONFIG``)."""
    return UNet2DModel(**UNET_CONFIG)


def load_digits_flow_unet() -> UNet2DModel:
    """The trained velocity network from the bundled safetensors file (float32, eval mode)."""
    from safetensors.torch import load_file

    path = WEIGHTS_DIR / "diffusion_pytorch_model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"bundled weights missing at {path}; run `python -m trisolve_diffusion.models.digits_flow --train`.")
    unet = build_unet()
    unet.load_state_dict(load_file(str(path)))
    return unet.eval()


def load_digits_flow_pipeline(**scheduler_overrides):
    """A ready :class:`DigitsFlowPipeline` on the bundled
    flow model with a ``FlowMatchEulerDiscreteScheduler`` (``scheduler_overrides`` change any of
    its config entries, e.g. ``shift=3.0`` or ``use_karras_sigmas=True``).

    Examples
    --------
    >>> import torch
    >>> from trisolve_diffusion.models import load_digits_flow_pipeline
    >>> pipe = load_digits_flow_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> pipe(num_inference_steps=20, generator=torch.manual_seed(0), output_type="np").images.shape
    (1, 16, 16, 1)
    """
    scheduler = FlowMatchEulerDiscreteScheduler(**{**SCHEDULER_CONFIG, **scheduler_overrides})
    return DigitsFlowPipeline(unet=load_digits_flow_unet(), scheduler=scheduler)


def train(
    *,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    out_dir: Path = WEIGHTS_DIR,
    log_every: int = 250,
    device: str = "cpu",
) -> Path:
    """Train the digits flow model from scratch and write its safetensors weights to ``out_dir``.

    Loss ``|| v_theta((1 - s) x_0 + s z, 1000 s) - (z - x_0) ||^2`` with ``s`` drawn uniformly in
    ``[0, 1]`` (stratified over the batch). AdamW with linear warm-up and cosine decay, an
    exponential moving average of the weights (decay 0.999), which is what is saved. Every random
    draw comes from one CPU generator seeded with ``seed`` whatever ``device`` computes.
    """
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    data = digits_dataset()  # (1797, 1, 16, 16)
    unet = build_unet().to(device).train()
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warm = 200
    lr_at = lambda s: lr * min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen)
        x0 = data[idx].to(device)
        # stratified uniform sigma: lower variance than iid draws
        s = (torch.arange(batch_size) + torch.rand(batch_size, generator=gen)) / batch_size
        s = s[torch.randperm(batch_size, generator=gen)]
        z = torch.randn(x0.shape, generator=gen).to(device)
        s = s.to(device)
        sv = s.view(-1, 1, 1, 1)
        xs = (1 - sv) * x0 + sv * z
        loss = F.mse_loss(unet(xs, s * SCHEDULER_CONFIG["num_train_timesteps"]).sample, z - x0)
        optimisation_step(unet, opt, ema, loss, lr=lr_at(step), step=step)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.1f}s", flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(out_dir / "diffusion_pytorch_model.safetensors"))
    (out_dir / "training.json").write_text(
        json.dumps(
            {
                "objective": "rectified flow, velocity z - x0, sigma ~ U[0, 1] stratified, t = 1000 sigma",
                "steps": steps,
                "batch_size": batch_size,
                "lr": lr,
                "seed": seed,
                "device": str(device) if str(device) == "cpu" else torch.cuda.get_device_name(device),
                "threads": torch.get_num_threads(),
                "seconds": round(time.time() - start, 1),
                "final_loss": loss.item(),
            },
            indent=2,
        )
    )
    return out_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train the bundled digits rectified-flow model.")
    ap.add_argument("--train", action="store_true", help="train and write the weights")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if not args.train:
        ap.error("pass --train to train the model")
    torch.set_num_threads(args.threads)
    print(f"parameters: {sum(p.numel() for p in build_unet().parameters()):,}")
    train(steps=args.steps, out_dir=args.out, device=args.device)


if __name__ == "__main__":
    main()
