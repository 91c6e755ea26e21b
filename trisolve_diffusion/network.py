"""Denoisers for :func:`~trisolve_diffusion.sample_latents`: a diffusers UNet, and classifier-free guidance.

A denoiser is ``denoiser(model_input (N, C, H, W), timesteps (N,)) -> model_output``, with
``N = w * B`` (rows of the round's window times samples, row-major). Per-sample
conditioning of batch ``E`` (prompt embeddings, SDXL's added conditioning, the 9-channel
inpainting UNet's extra input channels) is tiled to ``N`` once per call, on the device.

Classifier-free guidance (Ho & Salimans 2022), with the rescale of Lin et al. 2024::

    out = u + s (c - u)                     u, c: unconditional and conditional outputs
    out <- phi out std(c) / std(out) + (1 - phi) out          (guidance_rescale phi > 0)

One round is one network call on ``2 N`` inputs ``[x; x]``, chunked to ``max_batch_size``
if asked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from trisolve._validate import check_float, check_int

__all__ = ["UNetDenoiser", "GuidedDenoiser", "classifier_free_guidance", "unet_denoiser", "can_split", "guidance_copies"]


class _CachedDtype:
    """``self._dtype``: the network's dtype, read once per denoiser.

    A diffusers model's ``.dtype`` walks all its submodules on every read (0.9 ms for the
    digits UNet, 4.5 ms for an SD-1.5-sized one on the 2-core CPU, ``benchmarks/launches.py``):
    once per round that is host time a GPU round pays outside the network. A
    denoiser lives for one ``sample()`` call, during which the model's dtype does not change.
    """

    def _network(self) -> torch.nn.Module:  # the model the denoiser calls
        return self.unet

    @cached_property
    def _dtype(self) -> torch.dtype:
        return self._network().dtype


def _tile(v: torch.Tensor, n: int, groups: int) -> torch.Tensor:
    """Per-sample tensor ``(E, ...)`` laid out for ``n`` inputs of ``groups`` blocks: ``(n, ...)``.

    ``groups = 2``: ``v = [uncond (E/2); cond (E/2)]`` and the input is ``[x; x]`` with ``x``
    of ``n/2 = k E/2`` rows, so each half is repeated ``k`` times; ``groups = 1``: ``v``
    repeated ``n / E`` times.
    """
    e = v.shape[0]
    per = e // groups
    k = n // (groups * per)
    if k * groups * per != n or per * groups != e:
        raise ValueError(f"conditioning of batch {e} does not tile a network batch of {n} (groups={groups}); give one entry per sample.")
    return v.reshape(groups, 1, per, *v.shape[1:]).expand(groups, k, per, *v.shape[1:]).reshape(n, *v.shape[1:])


@dataclass(frozen=True, eq=False)
class UNetDenoiser(_CachedDtype):
    """A diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` as a denoiser, ``(N, C, H, W) -> (N, C, H, W)``.

    Parameters
    ----------
    unet : diffusers UNet
        Runs in its own dtype and device; the output is returned in the input's dtype.
    encoder_hidden_states : tensor, shape ``(E, L, D)``, optional
        Prompt embeddings, one per sample (``E = B``), or ``[uncond; cond]`` (``E = 2 B``) with
        ``groups=2``.
    added_cond_kwargs : dict of tensors with leading batch ``E``, optional
        SDXL's ``text_embeds`` and ``time_ids``.
    timestep_cond : tensor, shape ``(E, D)``, optional
        Guidance-scale embedding of LCM-style UNets (``time_cond_proj_dim``).
    extra_channels : tensor, shape ``(E, C', H, W)``, optional
        Concatenated to the input along channels (the 9-channel inpainting UNet's mask and
        masked-image latents).
    cross_attention_kwargs : dict, optional
    groups : int
        2 when the conditioning is ``[uncond; cond]`` and the input is ``[x; x]`` (what
        :func:`classifier_free_guidance` passes), else 1.
    max_batch_size : int, optional
        Largest network batch per call; ``None`` evaluates everything at once.
    split : trisolve.ShardedBatch, optional
        Split every call's network batch over the ranks of a process group (each rank evaluates
        its contiguous share, an all-gather returns all outputs): set by
        :func:`~trisolve_diffusion.sample_latents` through :meth:`with_split` when the plan on
        several ranks cuts the network batch. ``None``: this process evaluates everything.
    """

    unet: Any
    encoder_hidden_states: torch.Tensor | None = None
    added_cond_kwargs: dict[str, torch.Tensor] | None = None
    timestep_cond: torch.Tensor | None = None
    extra_channels: torch.Tensor | None = None
    cross_attention_kwargs: dict | None = None
    groups: int = 1
    max_batch_size: int | None = None
    split: Any = None

    def __post_init__(self):
        if self.max_batch_size is not None:
            object.__setattr__(self, "max_batch_size", check_int("max_batch_size", self.max_batch_size, 1, hint="or None"))
        if self.groups not in (1, 2):
            raise ValueError(f"groups must be 1 or 2, got {self.groups!r}.")

    def __call__(self, model_input: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        n = model_input.shape[0]
        dtype = self._dtype
        inp = model_input.to(dtype)
        if self.extra_channels is not None:
            inp = torch.cat([inp, _tile(self.extra_channels, n, self.groups).to(dtype)], dim=1)
        per_sample: dict[str, Any] = {}
        if self.encoder_hidden_states is not None:
            per_sample["encoder_hidden_states"] = _tile(self.encoder_hidden_states, n, self.groups)
        if self.timestep_cond is not None:
            per_sample["timestep_cond"] = _tile(self.timestep_cond, n, self.groups)
        added = {k: _tile(v, n, self.groups) for k, v in (self.added_cond_kwargs or {}).items()}

        def evaluate(start: int, stop: int) -> torch.Tensor:  # inputs [start, stop) of the tiled batch
            size = stop - start if self.max_batch_size is None else self.max_batch_size
            outs = []
            with torch.no_grad():
                for s in range(start, stop, size):
                    e = min(s + size, stop)
                    kw = {k: v[s:e] for k, v in per_sample.items()}
                    if self.added_cond_kwargs is not None:
                        kw["added_cond_kwargs"] = {k: v[s:e] for k, v in added.items()}
                    if self.cross_attention_kwargs is not None:
                        kw["cross_attention_kwargs"] = self.cross_attention_kwargs
                    outs.append(self.unet(inp[s:e], timesteps[s:e], return_dict=False, **kw)[0])
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

        out = evaluate(0, n) if self.split is None else self.split(n, evaluate)
        return out.to(model_input.dtype)

    def with_split(self, split: Any) -> UNetDenoiser:
        """The same denoiser with its network batch evaluated through ``split`` (a :class:`trisolve.distributed.ShardedBatch`, or ``None``)."""
        return dataclasses.replace(self, split=split)

    def for_samples(self, lo: int, hi: int, batch: int) -> UNetDenoiser:
        """The denoiser of samples ``lo`` to ``hi - 1`` of a batch of ``batch``: its per-sample conditioning cut to them.

        Sample ``i`` of the batch reads entry ``i mod E'`` of each group's conditioning (``E'`` entries per group, as
        ``_tile`` lays them out); the result reads the same entries for the ``hi - lo`` samples it is given. What a rank
        runs when the plan gives each rank its own samples (:class:`~trisolve_diffusion.cost_model.WindowChoice`).
        """
        if not 0 <= lo < hi <= batch:
            raise ValueError(f"samples lo .. hi - 1 must lie in a batch of {batch}, got lo={lo}, hi={hi}.")
        idx = torch.arange(lo, hi)

        def cut(v: torch.Tensor | None) -> torch.Tensor | None:
            if v is None:
                return None
            per = v.shape[0] // self.groups
            if per * self.groups != v.shape[0] or batch % per:
                raise ValueError(f"conditioning of batch {v.shape[0]} does not tile a batch of {batch} samples (groups={self.groups}).")
            return v.reshape(self.groups, per, *v.shape[1:])[:, (idx % per).to(v.device)].reshape(self.groups * (hi - lo), *v.shape[1:])

        added = None if self.added_cond_kwargs is None else {k: cut(v) for k, v in self.added_cond_kwargs.items()}
        return dataclasses.replace(self, encoder_hidden_states=cut(self.encoder_hidden_states), added_cond_kwargs=added,
                                   timestep_cond=cut(self.timestep_cond), extra_channels=cut(self.extra_channels), split=None)  # fmt: skip


def classifier_free_guidance(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], guidance_scale: float, *, guidance_rescale: float = 0.0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap a conditional model into a guided denoiser.

    ``model(x2 (2N, C, H, W), t2 (2N,))`` evaluates its first ``N`` inputs unconditioned and
    its last ``N`` conditioned (e.g. :class:`UNetDenoiser` with ``groups=2``); the returned
    ``denoiser(x (N, ...), t (N,))`` calls it once on ``[x; x]`` and returns
    ``u + guidance_scale (c - u)``, rescaled by ``guidance_rescale`` as diffusers'
    ``rescale_noise_cfg`` does (per sample, std over ``(C, H, W)``).

    Examples
    --------
    >>> import torch
    >>> model = lambda x, t: torch.cat([0 * x[: len(x) // 2], x[len(x) // 2 :]])  # uncond 0, cond x
    >>> den = classifier_free_guidance(model, 3.0)
    >>> den(torch.ones(2, 1, 2, 2), torch.zeros(2)).flatten()[:2]
    tensor([3., 3.])
    """
    guidance_scale = check_float("guidance_scale", guidance_scale)
    guidance_rescale = check_float("guidance_rescale", guidance_rescale, 0.0, high=1.0)
    return GuidedDenoiser(model, guidance_scale, guidance_rescale)


@dataclass(frozen=True, eq=False)
class GuidedDenoiser:
    """What :func:`classifier_free_guidance` returns: ``u + scale (c - u)`` from one call of ``model`` on ``[x; x]``.

    :meth:`with_split` passes a network-batch split to ``model`` (when it has one, as
    :class:`UNetDenoiser`): on two ranks one evaluates the unconditional half, the other the
    conditional one, and every rank combines them.
    """

    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    guidance_scale: float
    guidance_rescale: float = 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out = self.model(torch.cat([x, x]), torch.cat([t, t]))
        uncond, cond = out[:n], out[n:]
        guided = uncond + self.guidance_scale * (cond - uncond)
        if self.guidance_rescale > 0.0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            guided = rescale_noise_cfg(guided, cond, guidance_rescale=self.guidance_rescale)
        return guided

    def with_split(self, split: Any) -> GuidedDenoiser:
        """The same guidance around ``model.with_split(split)``."""
        if not can_split(self.model):
            raise TypeError(f"the guided model ({type(self.model).__name__}) cannot split its network batch over ranks.")
        return dataclasses.replace(self, model=self.model.with_split(split))

    def for_samples(self, lo: int, hi: int, batch: int) -> GuidedDenoiser:
        """The same guidance around ``model.for_samples(lo, hi, batch)`` (:meth:`UNetDenoiser.for_samples`)."""
        if not can_split(self.model):
            raise TypeError(f"the guided model ({type(self.model).__name__}) cannot be cut to a share of the samples.")
        return dataclasses.replace(self, model=self.model.for_samples(lo, hi, batch))


def unet_denoiser(
    unet: Any,
    *,
    guidance_scale: float | None = None,
    guidance_rescale: float = 0.0,
    encoder_hidden_states: torch.Tensor | None = None,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    timestep_cond: torch.Tensor | None = None,
    extra_channels: torch.Tensor | None = None,
    cross_attention_kwargs: dict | None = None,
    max_batch_size: int | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A UNet denoiser, guided when ``guidance_scale`` is given (conditioning then ``[uncond; cond]``, batch ``2 B``)."""
    guided = guidance_scale is not None
    net = UNetDenoiser(
        unet, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs, timestep_cond=timestep_cond,
        extra_channels=extra_channels, cross_attention_kwargs=cross_attention_kwargs, groups=2 if guided else 1,
        max_batch_size=max_batch_size,
    )  # fmt: skip
    return classifier_free_guidance(net, guidance_scale, guidance_rescale=guidance_rescale) if guided else net


def can_split(denoiser: Any) -> bool:
    """Whether ``denoiser`` can evaluate a share of its network batch on each rank (``denoiser.with_split`` works).

    True for :class:`UNetDenoiser` and guidance around one (what the pipeline front doors build);
    other denoisers are split by trajectory rows instead (:func:`trisolve.distribute`).
    """
    if isinstance(denoiser, GuidedDenoiser):
        return can_split(denoiser.model)
    return isinstance(denoiser, UNetDenoiser)


def guidance_copies(denoiser: Any) -> int:
    """Network inputs per latent: 2 for each :class:`GuidedDenoiser` around the model (``[x; x]``), else 1."""
    return 2 * guidance_copies(denoiser.model) if isinstance(denoiser, GuidedDenoiser) else 1
