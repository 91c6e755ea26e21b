"""Closed-form denoisers with the call signature of a ``UNet2DModel``.

For data ``x0 ~ sum_k pi_k N(mu_k, s^2 I)`` and ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``, the
exact noise prediction is ``eps*(x_t, t) = (x_t - sqrt(ab_t) E[x0 | x_t]) / sqrt(1 - ab_t)`` with

    E[x0 | x_t] = sum_k w_k(x_t) (mu_k + sqrt(ab_t) s^2 / v_t (x_t - sqrt(ab_t) mu_k)),
    w_k ∝ pi_k N(x_t; sqrt(ab_t) mu_k, v_t I),   v_t = ab_t s^2 + 1 - ab_t.

With ``s = 0`` and one component per data point this is the exact posterior-mean denoiser of a
finite data set (:func:`posterior_mean_denoiser`). Both are cheap, deterministic and truly
non-linear, and drop into ``DDPMPipeline`` / ``DDIMPipeline`` in place of a ``UNet2DModel``.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput

__all__ = ["GaussianMixtureDenoiser", "posterior_mean_denoiser"]


class GaussianMixtureDenoiser(ModelMixin, ConfigMixin):
    """Exact noise prediction of an isotropic Gaussian mixture, called like a ``UNet2DModel``.

    Parameters
    ----------
    means : tensor, shape ``(K, C, H, W)``
        Component means ``mu_k`` (data scale, e.g. ``[-1, 1]``).
    alphas_cumprod : tensor, shape ``(T,)``
        The scheduler's ``alphas_cumprod``; timestep ``t`` reads entry ``t``.
    weights : tensor, shape ``(K,)``, optional
        Mixture weights ``pi_k`` (uniform by default).
    std : float
        Component standard deviation ``s >= 0``.

    Examples
    --------
    >>> import torch
    >>> from diffusers import DDPMScheduler
    >>> sched = DDPMScheduler(num_train_timesteps=100)
    >>> model = GaussianMixtureDenoiser(torch.zeros(1, 1, 2, 2), sched.alphas_cumprod, std=1.0)
    >>> model(torch.ones(1, 1, 2, 2), 10).sample.shape  # N(0, I) data: eps* = sqrt(1 - ab) x_t
    torch.Size([1, 1, 2, 2])
    """

    config_name = "config.json"

    def __init__(self, means: torch.Tensor, alphas_cumprod: torch.Tensor, weights: torch.Tensor | None = None, std: float = 0.0):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 4:
            raise ValueError(f"means must have shape (K, C, H, W), got {tuple(means.shape)}.")
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std}.")
        k = means.shape[0]
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or torch.any(w < 0) or not torch.isclose(w.sum(), torch.tensor(1.0, dtype=torch.float64)):
            raise ValueError("weights must be K non-negative numbers that sum to 1.")
        self.register_buffer("mu", means)
        self.register_buffer("log_weights", torch.log(w))
        self.register_buffer("abar", torch.as_tensor(alphas_cumprod, dtype=torch.float64))
        self.std = float(std)
        # the attributes pipelines read from a UNet2DModel config
        self.register_to_config(
            sample_size=tuple(means.shape[-2:]),
            in_channels=means.shape[1],
            out_channels=means.shape[1],
            num_components=k,
            std=float(std),
        )
        self.eval()

    @property
    def dtype(self) -> torch.dtype:  # the pipeline's working dtype (noise is drawn in it)
        return torch.float32

    def posterior_mean(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """``E[x0 | x_t]`` in float64, shape of ``sample``."""
        x = sample.to(torch.float64)
        n = x.shape[0]
        t = torch.as_tensor(timestep, device=x.device).reshape(-1).long()
        ab = self.abar[t.expand(n) if t.numel() == 1 else t].view(n, 1)  # (N, 1)
        sab = ab.sqrt()
        v = ab * self.std**2 + 1 - ab
        flat = x.reshape(n, -1)  # (N, D)
        mu = self.mu.reshape(self.mu.shape[0], -1)  # (K, D)
        # |x - sab mu_k|^2 without forming (N, K, D)
        d2 = (flat**2).sum(1, keepdim=True) - 2 * sab * flat @ mu.T + ab * (mu**2).sum(1)[None]  # (N, K)
        logw = self.log_weights[None] - 0.5 * d2 / v
        w = torch.softmax(logw, dim=1)  # (N, K)
        mean_mu = w @ mu  # (N, D)
        x0 = mean_mu + (sab * self.std**2 / v) * (flat - sab * mean_mu)
        return x0.reshape(x.shape)

    def forward(self, sample: torch.Tensor, timestep, class_labels=None, return_dict: bool = True):
        n = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).long()
        t = t.expand(n) if t.numel() == 1 else t
        ab = self.abar[t].view(n, *([1] * (sample.ndim - 1)))
        x0 = self.posterior_mean(sample, t)
        eps = (sample.to(torch.float64) - ab.sqrt() * x0) / (1 - ab).sqrt()
        out = eps.to(sample.dtype)
        return UNet2DOutput(sample=out) if return_dict else (out,)


def posterior_mean_denoiser(data: torch.Tensor, alphas_cumprod: torch.Tensor) -> GaussianMixtureDenoiser:
    """The exact denoiser of the empirical distribution of ``data`` ``(N, C, H, W)``: a mixture of points."""
    return GaussianMixtureDenoiser(data, alphas_cumprod, std=0.0)
