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
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .digits import UNET_CONFIG, digits_dataset, optimisation_step

__all__ = ["WEIGHTS_DIR", "SCHEDULER_CONFIG", "DigitsFlowPipeline", "build_unet", "load_digits_flow_unet", "load_digits_flow_pipeline", "train"]

#: Folder of the bundled digits flow model's weights.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "digits_flow"

# shift 1: sigmas evenly spaced in [1, 1/n]; `shift`, dynamic shifting and the other sigma options
# of the scheduler can be switched on with load_digits_flow_pipeline(**overrides)
#: ``FlowMatchEulerDiscreteScheduler`` config of the bundled flow model.
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)


def flow_shift_mu(scheduler, height: int, width: int) -> float | None:
    """``mu`` for dynamic shifting as the SD3/Flux pipelines compute it (``calculate_shift``), from
    the image sequence length ``height * width`` (the UNet has no patching); ``None`` when the
    scheduler does not use dynamic shifting."""
    if not scheduler.config.get("use_dynamic_shifting", False):
        return None
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = scheduler.config
    return calculate_shift(
        height * width, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5), c.get("max_shift", 1.15)
    )


class DigitsFlowPipeline(DiffusionPipeline):
    """Unconditional flow-matching pipeline: a velocity ``UNet2DModel`` and a
    ``FlowMatchEulerDiscreteScheduler`` (or any scheduler with its ``set_timesteps(sigmas=, mu=)``).

    The loop is diffusers' usual one: draw ``latents ~ N(0, I)`` of shape ``(batch_size, C, H, W)``
    with ``randn_tensor(generator=...)``, set the timesteps as the SD3 pipeline does (``sigmas``
    passed through, ``mu`` from :func:`flow_shift_mu` under dynamic shifting), then for each
    timestep ``t`` call ``v = unet(x, t.expand(B))`` and ``x = scheduler.step(v, t, x, generator=generator)``.
    Images are ``(x / 2 + 0.5).clamp(0, 1)``.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def prepare_latents(self, batch_size: int, generator=None, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Initial latents ``(batch_size, C, H, W)``: ``latents`` moved to the device, or drawn with ``randn_tensor``."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, h, w)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
            return latents.to(device=self._execution_device, dtype=self.unet.dtype)
        return randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)

    def set_timesteps(self, num_inference_steps: int, latents: torch.Tensor, sigmas=None, mu: float | None = None) -> torch.Tensor:
        """Set the scheduler's timesteps as the SD3 pipeline does; returns ``scheduler.timesteps``."""
        from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

        if mu is None:
            mu = flow_shift_mu(self.scheduler, latents.shape[-2], latents.shape[-1])
        kwargs = {} if mu is None else {"mu": mu}
        timesteps, _ = retrieve_timesteps(
            self.scheduler, None if sigmas is not None else num_inference_steps, self._execution_device, sigmas=sigmas, **kwargs
        )
        return timesteps

    def postprocess(self, latents: torch.Tensor, output_type: str = "pil"):
        """Latents ``(B, C, H, W)`` to images in ``[0, 1]``: a tensor (``"pt"``), ``(B, H, W, C)`` numpy (``"np"``) or PIL."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        image = (latents / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        return image

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` digits with ``num_inference_steps`` scheduler steps.

        Parameters
        ----------
        batch_size : int
            Number of images.
        generator : torch.Generator or list of them, optional
            Draws the initial latents (and the noise of ``stochastic_sampling``).
        num_inference_steps : int
            Number of steps (ignored when ``sigmas`` is given).
        sigmas : list of float, optional
            Custom decreasing sigmas passed to ``scheduler.set_timesteps``.
        mu : float, optional
            Dynamic-shifting ``mu``; computed from the image size when the scheduler needs it.
        latents : torch.Tensor, optional
            Initial latents ``(batch_size, C, H, W)``.
        output_type : {"pil", "np", "pt"}
        return_dict : bool
            ``ImagePipelineOutput`` if true, else ``(images,)``.
        """
        x = self.prepare_latents(batch_size, generator, latents)  # (B, C, H, W)
        timesteps = self.set_timesteps(num_inference_steps, x, sigmas=sigmas, mu=mu)
        for t in self.progress_bar(timesteps):
            v = self.unet(x, t.expand(x.shape[0])).sample
            x = self.scheduler.step(v, t, x, generator=generator, return_dict=False)[0]
        image = self.postprocess(x, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


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
