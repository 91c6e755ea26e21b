"""One round = one batched network call over the window (DESIGN 5).

:class:`BatchedDenoiser` evaluates the network on rows ``[lo, hi)`` of a trajectory
``(n + 1, batch, C, H, W)`` at once: rows and samples are flattened into one network batch
(doubled for classifier-free guidance), optionally cut into chunks of at most
``max_batch_size`` to bound memory. The network runs in its own dtype; its output is cast
to the trajectory's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["BatchedDenoiser"]


@dataclass(frozen=True, eq=False)
class BatchedDenoiser:
    """Network output for a block of rows, ``(w, batch, C, H, W) -> (w, batch, C, H, W)``.

    Parameters
    ----------
    unet : UNet2DModel or UNet2DConditionModel
    timesteps : ndarray, shape ``(n,)``
        Network timestep of each row ``j``.
    encoder_hidden_states : tensor, shape ``(B_net, L, D)``, optional
        Prompt embeddings; ``B_net = 2 * batch`` with guidance (``[uncond; cond]``).
    guidance_scale : float
        Classifier-free guidance weight; guidance is on when ``encoder_hidden_states`` has
        twice the batch and ``do_guidance`` is true.
    guidance_rescale : float
        ``rescale_noise_cfg`` factor (0 disables it).
    max_batch_size : int, optional
        Largest network batch per call; ``None`` evaluates the whole window at once.
    """

    unet: Any
    timesteps: np.ndarray
    encoder_hidden_states: torch.Tensor | None = None
    do_guidance: bool = False
    guidance_scale: float = 1.0
    guidance_rescale: float = 0.0
    timestep_cond: torch.Tensor | None = None
    cross_attention_kwargs: dict | None = None
    max_batch_size: int | None = None

    def __call__(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        w, batch = x.shape[0], x.shape[1]
        dev, dtype = self.unet.device, self.unet.dtype
        copies = 2 if self.do_guidance else 1
        inp = x.to(dtype)
        if copies == 2:
            inp = torch.cat([inp, inp], dim=1)  # (w, 2 * batch, C, H, W): [uncond; cond] per row
        inp = inp.reshape(w * copies * batch, *x.shape[2:])
        t = torch.as_tensor(self.timesteps[lo:hi], device=dev).repeat_interleave(copies * batch)
        extra: dict[str, Any] = {}
        if self.encoder_hidden_states is not None:
            e = self.encoder_hidden_states
            extra["encoder_hidden_states"] = e.unsqueeze(0).expand(w, *e.shape).reshape(w * e.shape[0], *e.shape[1:])
            extra["timestep_cond"] = None if self.timestep_cond is None else self.timestep_cond.repeat(w * copies, 1)
            extra["cross_attention_kwargs"] = self.cross_attention_kwargs
        out = self._run(inp, t, extra)  # (w * copies * batch, C', H, W)
        out = out.reshape(w, copies * batch, *out.shape[1:])
        if copies == 2:
            uncond, cond = out[:, :batch], out[:, batch:]
            guided = uncond + self.guidance_scale * (cond - uncond)
            if self.guidance_rescale > 0.0:
                from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

                flat = rescale_noise_cfg(
                    guided.reshape(w * batch, *out.shape[2:]),
                    cond.reshape(w * batch, *out.shape[2:]),
                    guidance_rescale=self.guidance_rescale,
                )
                guided = flat.reshape(guided.shape)
            out = guided
        return out.to(x.dtype)

    @torch.no_grad()
    def _run(self, inp: torch.Tensor, t: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        size = inp.shape[0] if self.max_batch_size is None else self.max_batch_size
        outs = []
        for s in range(0, inp.shape[0], size):
            kw = {k: (v[s : s + size] if k == "encoder_hidden_states" or (k == "timestep_cond" and v is not None) else v) for k, v in extra.items()}
            outs.append(self.unet(inp[s : s + size], t[s : s + size], return_dict=False, **kw)[0])
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
