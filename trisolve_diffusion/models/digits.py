"""The bundled digits DDPM: a small ``UNet2DModel`` trained here on scikit-learn's digits.

Data: the 1,797 8x8 images of ``sklearn.datasets.load_digits``, upsampled (bilinear) to
16x16 and scaled to ``[-1, 1]``. Model: ``UNet2DModel`` (about 1.1M parameters), cosine
(``squaredcos_cap_v2``) schedule with 1000 training steps, epsilon prediction. The weights
ship in ``trisolve_diffusion/weights/digits/`` (safetensors); reproduce them with::

    python -m trisolve_diffusion.models.digits --train     # ~8 minutes on 2 CPU cores

Load a ready pipeline with :func:`load_digits_pipeline` (no network access needed).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

__all__ = ["WEIGHTS_DIR", "digits_dataset", "build_unet", "load_digits_unet", "load_digits_pipeline", "train"]

#: Folder of the bundled digits DDPM's weights (``diffusion_pytorch_model.safetensors``, ``config.json``).
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "digits"

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=32,
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


def digits_dataset() -> torch.Tensor:
    """The digits as a float32 tensor ``(1797, 1, 16, 16)`` in ``[-1, 1]``."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return x.clamp(0, 1) * 2 - 1


def build_unet() -> UNet2DModel:
    return UNet2DModel(**UNET_CONFIG)


def load_digits_unet() -> UNet2DModel:
    """The trained network from the bundled safetensors file (float32, eval mode)."""
    from safetensors.torch import load_file

    path = WEIGHTS_DIR / "diffusion_pytorch_model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"bundled weights missing at {path}; run `python -m trisolve_diffusion.models.digits --train`.")
    unet = build_unet()
    unet.load_state_dict(load_file(str(path)))
    return unet.eval()


def load_digits_pipeline(kind: str = "ddim", **scheduler_overrides) -> DDIMPipeline | DDPMPipeline:
    """A ready pipeline on the bundled model: ``kind`` is ``"ddim"`` (``DDIMPipeline``), ``"ddpm"``
    (``DDPMPipeline``) or ``"dpm++"`` (``DDPMPipeline`` with DPM-Solver++(2M)).

    The DDIM scheduler follows DESIGN section 6 (``set_alpha_to_one=False``,
    ``clip_sample=False``); ``scheduler_overrides`` change any config entry.

    Examples
    --------
    >>> import torch, trisolve_diffusion
    >>> from trisolve_diffusion.models import load_digits_pipeline
    >>> pipe = load_digits_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> out = trisolve_diffusion.sample(pipe, num_inference_steps=10, generator=torch.manual_seed(0), output_type="np")
    >>> out.images.shape, out.solution.num_rounds <= 10
    ((1, 16, 16, 1), True)
    """
    unet = load_digits_unet()
    if kind == "ddim":
        sched = DDIMScheduler(**{**SCHEDULER_CONFIG, "clip_sample": False, "set_alpha_to_one": False, **scheduler_overrides})
        pipe = DDIMPipeline(unet=unet, scheduler=sched)
    elif kind == "ddpm":
        sched = DDPMScheduler(**{**SCHEDULER_CONFIG, "clip_sample": False, **scheduler_overrides})
        pipe = DDPMPipeline(unet=unet, scheduler=sched)
    elif kind == "dpm++":
        from diffusers import DPMSolverMultistepScheduler

        # lambda_min_clipped: diffusers' advice for the cosine schedule; without it the first steps
        # amplify the noise prediction by 1/alpha ~ 3e4 and every image saturates to 0/1
        config = {**SCHEDULER_CONFIG, "algorithm_type": "dpmsolver++", "solver_order": 2, "lambda_min_clipped": -5.1}
        pipe = DDPMPipeline(unet=unet, scheduler=DPMSolverMultistepScheduler(**{**config, **scheduler_overrides}))
    else:
        raise ValueError(f"kind must be 'ddim', 'ddpm' or 'dpm++', got {kind!r}.")
    return pipe


def optimisation_step(unet: torch.nn.Module, opt: torch.optim.Optimizer, ema: dict, loss: torch.Tensor, *, lr: float, step: int) -> None:
    """One training step shared by the bundled models' trainers: learning rate ``lr``, gradient
    norm clipped to 1, then the EMA of the weights (decay ``min(0.999, (1 + step) / (10 + step))``)."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        d = min(0.999, (1 + step) / (10 + step))
        for k, v in unet.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                ema[k].copy_(v)


def train(*, steps: int = 3500, batch_size: int = 64, lr: float = 2e-3, seed: int = 0, out_dir: Path = WEIGHTS_DIR, log_every: int = 500) -> Path:
    """Train the digits DDPM from scratch and write its safetensors weights to ``out_dir``.

    Adam with linear warm-up and cosine decay, an exponential moving average of the weights
    (decay 0.999) which is what is saved.
    """
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    data = digits_dataset()
    unet = build_unet().train()
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    sched = DDPMScheduler(**SCHEDULER_CONFIG)
    abar = sched.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warm = 200
    lr_at = lambda s: lr * min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen)
        x0 = data[idx]
        t = torch.randint(0, 1000, (batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        ab = abar[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        loss = F.mse_loss(unet(xt, t).sample, eps)
        optimisation_step(unet, opt, ema, loss, lr=lr_at(step), step=step)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.1f}s", flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ema.items()}, str(out_dir / "diffusion_pytorch_model.safetensors"))
    (out_dir / "training.json").write_text(
        json.dumps(
            {
                "steps": steps,
                "batch_size": batch_size,
                "lr": lr,
                "seed": seed,
                "seconds": round(time.time() - start, 1),
                "final_loss": loss.item(),
            },
            indent=2,
        )
    )
    return out_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train the bundled digits DDPM.")
    ap.add_argument("--train", action="store_true", help="train and write the weights")
    ap.add_argument("--steps", type=int, default=3500)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = ap.parse_args(argv)
    if not args.train:
        ap.error("pass --train to train the model (about 8 minutes on 2 CPU cores)")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"parameters: {sum(p.numel() for p in build_unet().parameters()):,}")
    train(steps=args.steps, out_dir=args.out)


if __name__ == "__main__":
    main()
