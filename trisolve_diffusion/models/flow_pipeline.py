"""The pipeline class of the bundled digits flow model, without its training code.

:class:`DigitsFlowPipeline` lives here so that ``import trisolve_diffusion`` (whose
:func:`~trisolve_diffusion.sample` dispatches on it) loads no training code or data set;
:mod:`trisolve_diffusion.models.digits_flow` re-exports it and holds the weights loader and
the training script.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

__all__ = ["DigitsFlowPipeline", "flow_shift_mu"]


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
