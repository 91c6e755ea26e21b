"""The semilinear form of a scheduler's sampling loop, shared by every scheduler mapping.

A sampler with ``n`` steps is the lower-triangular system (DESIGN 5)::

    x_i = a_i x_{i-1} + sum_{q<p} B[i-1, q] g_{i-1-q}(x_{i-1-q}) + noise_scale[i-1] z_i,   i = 1..n

Row ``0`` is the initial noise, row ``n`` the sample. ``g_j`` is the *processed prediction*
of row ``j``: a function of ``x_j`` alone (the network's output at ``timesteps[j]``, made into
a clean-image or noise prediction, clipped or thresholded where the scheduler does so).
For one-step schedulers (DDIM, DDPM) ``g_j`` is the whole non-linear part of the step,
``step_{j+1}(x_j) - a_{j+1} x_j``; ``a`` is the step's derivative with the network output held
fixed. ``z_i`` is the noise the sequential loop draws at step ``i`` (pre-drawn in the same
order, so a seed gives the same image).

Every table is read from the scheduler after ``set_timesteps`` and built in float64 on the
host; ``scheduler.step`` is never called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

__all__ = ["SchedulerMapping", "UnsupportedSchedulerError", "posterior_std", "require_timesteps"]


class UnsupportedSchedulerError(ValueError):
    """A scheduler, or one of its config options, that has no exact parallel mapping here."""


def posterior_std(ab_t: np.ndarray, ab_prev: np.ndarray) -> np.ndarray:
    """DDPM posterior standard deviation of each step: the tolerance scale ``sigma_i``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
    return np.sqrt(np.clip(np.nan_to_num(var, nan=0.0), 0.0, None))


@dataclass(frozen=True, eq=False)
class SchedulerMapping:
    """Coefficient tables of an ``n``-step sampling loop and its processed prediction ``g``.

    Attributes
    ----------
    scheduler : diffusers scheduler (after ``set_timesteps``)
    timesteps : ndarray, shape ``(n,)``
        Timestep passed to the network for row ``j`` (``j = 0..n-1``), as the pipeline passes it.
    input_scale : ndarray, shape ``(n,)``
        Factor ``scheduler.scale_model_input`` applies to row ``j`` before the network
        (``1 / sqrt(sigma_j^2 + 1)`` for the k-diffusion schedulers, 1.0 where there is none).
        The network sees ``input_scale[j] * x_j``; ``g`` takes the unscaled ``x_j``.
    a : ndarray, shape ``(n,)``
        ``a[i - 1]`` multiplies ``x_{i-1}`` in row ``i``.
    B : ndarray, shape ``(n, p)``
        ``B[i - 1, q]`` multiplies ``g_{i-1-q}`` in row ``i``.
    noise_scale : ndarray, shape ``(n,)``
        Coefficient of the noise drawn at step ``i``.
    noise_drawn : ndarray of bool, shape ``(n,)``
        Whether the sequential loop draws a noise tensor at step ``i`` (it consumes the generator
        even where the coefficient is zero).
    noise_in_float32 : bool
        Noise drawn in float32 (DPM-Solver SDE) rather than in the network's dtype.
    sigma : ndarray, shape ``(n,)``
        Tolerance scale of each row (posterior standard deviation of the step).
    row_scale : ndarray, shape ``(n + 1,)``, optional
        A better-conditioned variable for the solve, ``y_j = row_scale[j] x_j``: the
        variance-preserving latents ``x_j / sqrt(sigma_j^2 + 1)`` for the k-diffusion schedulers
        (whose rows range over ``sigma`` up to ~100), ``None`` (all ones) otherwise. See
        :meth:`scaled`.
    default_history_size : int (class attribute)
        Difference pairs of the default solver (``TriangularAnderson``) for this loop, used when
        ``SolveOptions.solver`` is ``None``: 4, chosen on the bundled digits DDPM (DDIM-25/50/100,
        DDPM-100); flow-matching loops override it (:class:`~.flow_match.FlowMatchMapping`).
    """

    #: difference pairs of the default ``TriangularAnderson`` (``SolveOptions(solver=None)``)
    default_history_size: ClassVar[int] = 4

    scheduler: Any
    timesteps: np.ndarray
    input_scale: np.ndarray
    a: np.ndarray
    B: np.ndarray
    noise_scale: np.ndarray
    noise_drawn: np.ndarray
    noise_in_float32: bool
    sigma: np.ndarray
    row_scale: np.ndarray | None = None

    _device_tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    def g(self, x: torch.Tensor, model_output: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Processed prediction ``g_j`` of rows ``lo <= j < hi``, shape ``(hi - lo, *event)``.

        ``x`` are those rows' latents ``(hi - lo, *event)`` (unscaled: before ``input_scale``) and
        ``model_output`` the network's output for them, same shape.
        """
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------------------
    def table(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Host table ``self.<name>`` of shape ``(n,)`` as a cached device column (trailing axes of size 1), in ``like``'s dtype.

        Built once per (name, device, dtype, ndim) and cached on the mapping; ``g`` slices
        ``[lo:hi]`` so no host data is copied per round.
        """
        key = (name, like.device, like.dtype, like.ndim)
        t = self._device_tables.get(key)
        if t is None:
            values = np.ascontiguousarray(getattr(self, name), dtype=np.float64)
            t = torch.as_tensor(values, device=like.device).to(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))
            self._device_tables[key] = t
        return t

    def scaled(self) -> SchedulerMapping:
        """The same loop in the rescaled rows ``y_j = c_j x_j``, ``c = row_scale`` of shape ``(n + 1,)``.

        ::

            y_i = (a_i c_i / c_{i-1}) y_{i-1} + sum_q c_i B[i-1, q] g_{i-1-q}(y / c) + c_i noise_scale[i-1] z_i

        Solve from ``y_0 = c_0 x_0`` and read the final latents as ``y_n / c_n``. For the
        k-diffusion schedulers ``c = input_scale`` (with ``c_n`` for the final level), so the
        network sees ``y_j`` itself (``input_scale`` of the scaled mapping is 1) and every row
        has unit scale; on the digits model this took Euler-25 from 11 to 8 rounds. The
        mapping itself when ``row_scale`` is ``None``.
        """
        if self.row_scale is None:
            return self
        c = np.asarray(self.row_scale, dtype=np.float64)
        return ScaledMapping(
            scheduler=self.scheduler,
            timesteps=self.timesteps,
            input_scale=self.input_scale / c[:-1],
            a=self.a * c[1:] / c[:-1],
            B=self.B * c[1:, None],
            noise_scale=self.noise_scale * c[1:],
            noise_drawn=self.noise_drawn,
            noise_in_float32=self.noise_in_float32,
            sigma=self.sigma * c[1:],
            row_scale=None,
            base=self,
            inv_scale=1.0 / c[:-1],
        )

    def step_generator(self, generator: Any) -> Any:
        """The generator the scheduler's ``step`` draws its noise from when the pipeline passes ``generator``.

        The generator itself for every mapped scheduler, except where the installed ``step``
        ignores it (:class:`~.flow_match.FlowMatchMapping` on diffusers 0.35, which draws from
        torch's global generator): then ``None``.
        """
        return generator

    def process_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """The scheduler's clean-image post-processing: dynamic thresholding or clipping."""
        cfg = self.scheduler.config
        if getattr(cfg, "thresholding", False):
            shape = x0.shape
            flat = x0.reshape(-1, *shape[2:])  # (w * batch, C, H, W): per-sample quantiles
            return self.scheduler._threshold_sample(flat).reshape(shape)
        if getattr(cfg, "clip_sample", False):
            r = cfg.clip_sample_range
            return x0.clamp(-r, r)
        return x0


@dataclass(frozen=True, eq=False)
class ScaledMapping(SchedulerMapping):
    """:meth:`SchedulerMapping.scaled`: rows ``y_j = row_scale[j] x_j`` of another mapping."""

    base: SchedulerMapping | None = None
    inv_scale: np.ndarray | None = None  # 1 / row_scale[j] of rows 0 .. n - 1   (n,)

    @property
    def default_history_size(self) -> int:  # the loop's, not the rescaling's
        return self.base.default_history_size

    def g(self, x, model_output, lo, hi):
        return self.base.g(x * self.table("inv_scale", x)[lo:hi], model_output, lo, hi)


def check_common(scheduler: Any, *, allowed_prediction: tuple[str, ...]) -> None:
    cfg = scheduler.config
    name = type(scheduler).__name__
    if cfg.prediction_type not in allowed_prediction:
        raise UnsupportedSchedulerError(f"{name} with prediction_type={cfg.prediction_type!r} is not supported; use one of {allowed_prediction}.")
    vt = getattr(cfg, "variance_type", None)
    if vt in ("learned", "learned_range"):
        raise UnsupportedSchedulerError(
            f"{name} with variance_type={vt!r} takes its variance from the network, which has no fixed-variance "
            "parallel form; use 'fixed_small' (DDPM) or leave it unset."
        )


def predictions(pred_type: str, x: torch.Tensor, m: torch.Tensor, sab: torch.Tensor, s1ab: torch.Tensor):
    """``(x0_hat, eps_hat, dx0/dx, deps/dx)`` for epsilon, sample and v prediction.

    The derivatives are taken with the network output ``m`` held fixed; ``sab = sqrt(abar_t)``,
    ``s1ab = sqrt(1 - abar_t)``.
    """
    if pred_type == "epsilon":
        return (x - s1ab * m) / sab, m
    if pred_type == "sample":
        return m, (x - sab * m) / s1ab
    # v_prediction
    return sab * x - s1ab * m, sab * m + s1ab * x


def linear_part(pred_type: str, sab: np.ndarray, s1ab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(dx0/dx, deps/dx)`` of :func:`predictions` (host float64)."""
    if pred_type == "epsilon":
        return 1.0 / sab, np.zeros_like(sab)
    if pred_type == "sample":
        return np.zeros_like(sab), 1.0 / s1ab
    return sab, s1ab


def ve_posterior_std(sigmas: np.ndarray) -> np.ndarray:
    """Tolerance scale of each step for k-diffusion sigmas ``(n + 1,)`` (latents ``x = x0 + sigma eps``).

    The DDPM posterior std between the levels ``abar = 1 / (1 + sigma^2)`` of consecutive rows,
    times the latent scale ``sqrt(1 + sigma_{i}^2)`` of the row it lands on; shape ``(n,)``.
    """
    ab = 1.0 / (1.0 + sigmas**2)
    return posterior_std(ab[:-1], ab[1:]) * np.sqrt(1.0 + sigmas[1:] ** 2)


def require_timesteps(scheduler: Any) -> None:
    """Refuse a scheduler whose ``set_timesteps`` has not run (the one such test; :func:`map_scheduler` calls it).

    Every form of ``set_timesteps`` in diffusers 0.42 (a step count, custom ``timesteps=``, custom
    ``sigmas=``) leaves a non-empty 1-D ``scheduler.timesteps``, and either ``num_inference_steps``
    or, for ``DDPMScheduler``'s custom timesteps (which leave ``num_inference_steps`` unset),
    ``custom_timesteps``. A fresh scheduler has neither of the two (``__init__`` of most schedulers
    already sets a training-length ``timesteps``, so its presence alone proves nothing).
    """
    ts = getattr(scheduler, "timesteps", None)
    steps_set = getattr(scheduler, "num_inference_steps", None) is not None or bool(getattr(scheduler, "custom_timesteps", False))
    if not (isinstance(ts, torch.Tensor) and ts.ndim == 1 and ts.numel() > 0 and steps_set):
        raise ValueError(
            f"{type(scheduler).__name__}: call scheduler.set_timesteps(...) (a step count, or custom timesteps/sigmas where the "
            "scheduler takes them) before mapping it, as the pipeline does."
        )


def timesteps_of(scheduler: Any) -> np.ndarray:
    """The scheduler's timesteps ``(n,)`` as the pipeline passes them to the network (their own dtype)."""
    return scheduler.timesteps.detach().cpu().numpy().copy()


def start_index(scheduler: Any, start: int | None) -> int:
    """The first step the loop runs: ``start``, else the scheduler's ``begin_index``, else 0.

    img2img runs ``scheduler.timesteps[start:]`` (and sets ``begin_index`` where the scheduler
    has one); the mapping's rows then begin at that step.
    """
    begin = getattr(scheduler, "begin_index", None)
    num = len(scheduler.timesteps)
    if start is None:
        start = begin or 0
    elif begin is not None and begin != start:
        raise ValueError(f"start={start} differs from the scheduler's begin_index={begin}; pass the same step (or leave start unset).")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < num:
        raise ValueError(f"start must be an int in [0, {num}) (an index into scheduler.timesteps), got {start!r}.")
    return int(start)


def refuse_partial(scheduler: Any, start: int | None) -> None:
    """For mappings of the full loop only: refuse a loop that starts part-way."""
    if start_index(scheduler, start) != 0:
        raise UnsupportedSchedulerError(
            f"{type(scheduler).__name__} is mapped for the full loop only (its state at a later step depends on how it got "
            "there); a loop that starts part-way (img2img) is not supported. Use EulerDiscreteScheduler, "
            "DPMSolverMultistepScheduler or UniPCMultistepScheduler for img2img."
        )
