"""The semilinear form of a scheduler's sampling loop, shared by every scheduler mapping.

A sampler with ``n`` steps is the lower-triangular system (DESIGN 5)::

    x_i = a_i x_{i-1} + sum_{q<p} B[i-1, q] g_{i-1-q}(x_{i-1-q}) + noise_scale[i-1] z_i,   i = 1..n

Row ``0`` is the initial noise, row ``n`` the sample. ``g_j`` is the *processed prediction*
of row ``j``: a function of ``x_j`` alone (the network's output at ``timesteps[j]``, made into
a clean-image or noise prediction, clipped or thresholded where the scheduler does so), given by
the one :class:`~.parametrisation.Parametrisation` of the rows (their levels
``x_j = alpha_j x0 + sigma_j eps``, the prediction type and one formula for ``g``).
For one-step schedulers (DDIM, DDPM) ``g_j`` is the whole non-linear part of the step,
``step_{j+1}(x_j) - a_{j+1} x_j``; ``a`` is the step's derivative with the network output held
fixed. ``z_i`` is the noise the sequential loop draws at step ``i`` (pre-drawn in the same
order, so a seed gives the same image).

Every table is read from the scheduler after ``set_timesteps`` and built in float64 on the
host; ``scheduler.step`` is never called. A scheduler mapping is one function
``map_<name>(scheduler, start) -> SchedulerMapping`` in its own file, registered in
``schedulers/__init__.py``; it computes ``a``, ``B``, the noise and the weights of ``g`` and
hands them to this one constructor, which checks them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from .parametrisation import Parametrisation, level_posterior_std, posterior_std

__all__ = ["SchedulerMapping", "UnsupportedSchedulerError", "posterior_std", "require_timesteps"]


class UnsupportedSchedulerError(ValueError):
    """A scheduler, or one of its config options, that has no exact parallel mapping here."""


@dataclass(frozen=True, eq=False)
class SchedulerMapping:
    """Coefficient tables of an ``n``-step sampling loop and its processed prediction ``g``.

    Attributes
    ----------
    scheduler : diffusers scheduler (after ``set_timesteps``)
    timesteps : ndarray, shape ``(n,)``
        Timestep passed to the network for row ``j`` (``j = 0..n-1``), as the pipeline passes it.
    a : ndarray, shape ``(n,)``
        ``a[i - 1]`` multiplies ``x_{i-1}`` in row ``i``.
    B : ndarray, shape ``(n, p)``
        ``B[i - 1, q]`` multiplies ``g_{i-1-q}`` in row ``i``.
    rows : Parametrisation
        The levels ``x_j = alpha_j x0 + sigma_j eps`` of rows ``0..n`` and ``g`` (one formula for
        every scheduler, :class:`~.parametrisation.Parametrisation`).
    sigma : ndarray, shape ``(n,)``
        Tolerance scale of each row (posterior standard deviation of the step). Default: the
        posterior standard deviation between consecutive levels of ``rows``
        (:func:`~.parametrisation.level_posterior_std`); zero for the multistep loops
        (DPM-Solver multistep, UniPC, PNDM: :func:`multistep_tolerance_scale`), whose steps
        are tested against ``atol`` alone.
    input_scale : ndarray, shape ``(n,)``
        Factor ``scheduler.scale_model_input`` applies to row ``j`` before the network
        (``1 / sqrt(sigma_j^2 + 1)`` for the k-diffusion schedulers); default 1.
        The network sees ``input_scale[j] * x_j``; ``g`` takes the unscaled ``x_j``.
    noise_scale : ndarray, shape ``(n,)``
        Coefficient of the noise drawn at step ``i``; default 0.
    noise_drawn : ndarray of bool, shape ``(n,)``
        Whether the sequential loop draws a noise tensor at step ``i`` (it consumes the generator
        even where the coefficient is zero); default ``False``.
    noise_in_float32 : bool
        Noise drawn in float32 (DPM-Solver SDE, flow matching) rather than in the network's dtype.
    default_history_size : int (class attribute)
        Difference pairs of the default solver (``TriangularAnderson``) for this loop, read by
        :func:`~trisolve_diffusion.default_solver` (the samplers' ``solver=None``): 4, chosen on the bundled digits DDPM (DDIM-25/50/100,
        DDPM-100); flow-matching loops override it (:class:`~.flow_match.FlowMatchMapping`).

    The constructor checks the shapes and refuses non-finite coefficients with an
    :class:`UnsupportedSchedulerError` that ends with ``if_not_finite`` (what to change).
    """

    #: difference pairs of the default ``TriangularAnderson`` (``default_solver(mapping)``, the samplers' ``solver=None``)
    default_history_size: ClassVar[int] = 4

    scheduler: Any
    timesteps: np.ndarray
    a: np.ndarray
    B: np.ndarray
    rows: Parametrisation
    sigma: np.ndarray | None = None
    input_scale: np.ndarray | None = None
    noise_scale: np.ndarray | None = None
    noise_drawn: np.ndarray | None = None
    noise_in_float32: bool = False
    if_not_finite: InitVar[str] = "use the scheduler's default options"

    _device_tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self, if_not_finite: str) -> None:
        n = int(np.shape(self.a)[0])
        defaults = {
            "sigma": lambda: level_posterior_std(self.rows.alpha, self.rows.sigma),
            "input_scale": lambda: np.ones(n),
            "noise_scale": lambda: np.zeros(n),
            "noise_drawn": lambda: np.zeros(n, dtype=bool),
        }
        for name, make in defaults.items():
            object.__setattr__(self, name, make() if getattr(self, name) is None else getattr(self, name))
        name = type(self.scheduler).__name__
        shapes = {"timesteps": (n,), "B": (n, self.B.shape[-1]), "sigma": (n,), "input_scale": (n,), "noise_scale": (n,), "noise_drawn": (n,)}
        for table, shape in shapes.items():
            if np.shape(getattr(self, table)) != shape:
                raise ValueError(f"{name} mapping: {table} has shape {np.shape(getattr(self, table))}, expected {shape} (n = {n} rows).")
        if self.rows.n != n or self.rows.alpha.shape != (n + 1,):
            raise ValueError(f"{name} mapping: the parametrisation has {self.rows.n} rows, {self.rows.alpha.shape[0]} levels; expected {n}, {n + 1}.")
        checked = {"a": self.a, "B": self.B, "noise_scale": self.noise_scale, "input_scale": self.input_scale}
        checked |= {f"g's {k}": v for k, v in self.rows.tables().items() if k in ("k_x", "k_m", "k_0") or self.rows.process is not None}
        bad = [k for k, v in checked.items() if not np.all(np.isfinite(v))]
        if bad:
            raise UnsupportedSchedulerError(
                f"{name} gives non-finite step coefficients ({', '.join(bad)}) for this schedule (diffusers' own step "
                f"returns nan or inf here); {if_not_finite}."
            )

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    @property
    def row_scale(self) -> np.ndarray | None:
        """``c_j = 1 / sqrt(alpha_j^2 + sigma_j^2)`` of rows ``0..n`` (``(n + 1,)``): the variance-preserving rows.

        ``None`` where every row is already variance preserving (DDIM, DDPM, PNDM, the DPM-Solver
        family): then :meth:`scaled` is the mapping itself. For the k-diffusion schedulers it is
        ``1 / sqrt(sigma_j^2 + 1)`` (rows range over ``sigma`` up to ~100).
        """
        return self.rows.row_scale

    @property
    def picard_gains(self) -> np.ndarray | None:
        """The linear part ``J_i`` of the default update map (:func:`~trisolve_diffusion.default_solver`), ``(n,)``, or ``None`` (``Picard()``).

        One rule for the loops whose steps inject noise (some ``noise_scale > 0``: DDPM, Euler
        ancestral, DDIM with ``eta > 0``, the SDE DPM-Solvers), on every row: ``J_i = d_i ** (1/4)``, where ``d_i``
        is the step's derivative with its clean-image prediction held fixed
        (:attr:`fixed_prediction_derivative`; for DDPM the posterior mean's coefficient on ``x_t``,
        which falls to 0 at the clean end). Picard's ``J = 1`` passes every earlier error on undamped; such a
        step contracts the errors it reads away from the data, so the plain sum overshoots.
        ``J = d`` itself (the one-step derivative) was worse than Picard; the geometric
        weight 1/4 was chosen on the digits model (``benchmarks/rounds.py``, docs/benchmarks:
        weights 1/4, 1/2, 1; DDPM-100 14 -> 12 rounds, Euler ancestral-25 10.5 -> 10). A loop
        without noise gives ``None`` (deterministic loops: ``d ** (1/4)`` and ``d ** 0.1`` were not
        better than Picard there). In the rows
        the solve runs on (call it on :meth:`scaled`).
        """
        if not np.any(np.asarray(self.noise_scale) > 0):
            return None
        return self.fixed_prediction_derivative**0.25

    @property
    def fixed_prediction_derivative(self) -> np.ndarray:
        """``d_i``, ``(n,)``: step ``i``'s derivative in ``x_{i-1}`` with the clean-image prediction held fixed, clipped to ``[0, 1]``.

        ``a_i + B[i-1, 0] (k_x - k_m x0_x / x0_m)`` (the newest band term only; the network's
        output moves with ``x`` as ``-x0_x / x0_m`` when ``x0_hat = x0_x x + x0_m m`` stays put);
        1 where it is not finite. DDIM: ``sigma_{i} / sigma_{i-1}``; DDPM: the posterior mean's
        coefficient on ``x_t``. :attr:`picard_gains` reads it.
        """
        r = self.rows
        with np.errstate(divide="ignore", invalid="ignore"):
            dm_dx = np.where(r.x0_m != 0.0, -r.x0_x / r.x0_m, 0.0)  # the output's change with x0_hat held fixed
            d = self.a + self.B[:, 0] * (r.k_x + r.k_m * dm_dx)
        return np.where(np.isfinite(d), np.clip(d, 0.0, 1.0), 1.0)

    def g(self, x: torch.Tensor, model_output: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Processed prediction ``g_j`` of rows ``lo <= j < hi``, shape ``(hi - lo, *event)``.

        ``x`` are those rows' latents ``(hi - lo, *event)`` (unscaled: before ``input_scale``) and
        ``model_output`` the network's output for them, same shape.
        """
        return self.rows.g(x, model_output, lambda name, values: self._column("rows." + name, values, x), lo, hi)

    def table(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Host table ``self.<name>`` of shape ``(n,)`` as a cached device column (trailing axes of size 1), in ``like``'s dtype."""
        return self._column(name, getattr(self, name), like)

    def _column(self, key: str, values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """``values`` ``(n,)`` as a device column in ``like``'s dtype, built once per (key, device, dtype, ndim).

        Cached on the mapping; ``g`` slices ``[lo:hi]`` so no host data is copied per round.
        """
        cache_key = (key, like.device, like.dtype, like.ndim)
        t = self._device_tables.get(cache_key)
        if t is None:
            values = np.ascontiguousarray(values, dtype=np.float64)
            t = torch.as_tensor(values, device=like.device).to(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))
            self._device_tables[cache_key] = t
        return t

    def scaled(self, row_scale: np.ndarray | None = None) -> SchedulerMapping:
        """The same loop in the rescaled rows ``y_j = c_j x_j``, ``c = row_scale`` of shape ``(n + 1,)``.

        ``row_scale``: any finite positive ``(n + 1,)`` table; by default :attr:`row_scale`
        (the variance-preserving rows).

        ::

            y_i = (a_i c_i / c_{i-1}) y_{i-1} + sum_q c_i B[i-1, q] g_{i-1-q}(y / c) + c_i noise_scale[i-1] z_i

        Solve from ``y_0 = c_0 x_0`` and read the final latents as ``y_n / c_n``. The network sees
        ``input_scale_j / c_j * y_j`` (for the k-diffusion schedulers ``c = input_scale`` with
        ``c_n`` for the final level, so the network sees ``y_j`` itself) and every row has unit
        scale; on the digits model this took Euler-25 from 11 to 8 rounds. ``g`` of the rescaled
        rows is :meth:`Parametrisation.scaled <.parametrisation.Parametrisation.scaled>`: the
        same formula with the ``x`` coefficients divided by ``c``; its levels are variance
        preserving, so ``scaled().scaled()`` is ``scaled()``. The mapping itself when
        ``row_scale`` is ``None`` (and none is given).
        """
        c = self.row_scale if row_scale is None else np.asarray(row_scale, dtype=np.float64)
        if c is None:
            return self
        if c.shape != (self.n + 1,) or not np.all(np.isfinite(c)) or np.any(c <= 0):
            raise ValueError(f"row_scale must be a finite positive array of shape (n + 1,) = ({self.n + 1},), got {row_scale!r}.")
        return dataclasses.replace(
            self,
            a=self.a * c[1:] / c[:-1],
            B=self.B * c[1:, None],
            rows=self.rows.scaled(c),
            sigma=self.sigma * c[1:],
            input_scale=self.input_scale / c[:-1],
            noise_scale=self.noise_scale * c[1:],
        )

    def step_generator(self, generator: Any) -> Any:
        """The generator the scheduler's ``step`` draws its noise from when the pipeline passes ``generator``.

        The generator itself for every mapped scheduler, except where the installed ``step``
        ignores it (:class:`~.flow_match.FlowMatchMapping` on diffusers 0.35, which draws from
        torch's global generator): then ``None``.
        """
        return generator


def multistep_tolerance_scale(n: int) -> np.ndarray:
    """The tolerance scale ``sigma`` of the multistep loops (DPM-Solver multistep, UniPC, PNDM): zero, ``(n,)``.

    Their steps read two or more earlier predictions, so a row's defect reaches the sample
    along more paths; their steps are tested against ``atol`` alone (``rtol`` scales a zero).
    Measured on the bundled digits DDPM (``benchmarks/rounds.py``, docs/benchmarks): with the
    posterior standard deviation as the scale, DPM-Solver++(2M)-20 seed 7 ended 44.3 dB from the
    sequential sample and PNDM-50 seed 36 42.4 dB; atol alone gave 54.6 and 45.2 dB, at the same
    median rounds on seeds 0-9 and 20-39 (DPM-Solver++(2M)-20 8.5 / 7, UniPC-20 6 / 6.5, PNDM-50
    8 / 8). A ``SolveOptions`` with ``atol=0`` therefore accepts a step of these loops only at a
    zero residual (each round then freezes one step: the sequential loop's cost).
    """
    return np.zeros(n)


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


def solver_order(scheduler: Any) -> int:
    """A multistep scheduler's ``solver_order``, refused unless it is 1, 2 or 3 (what the mappings write out)."""
    order = scheduler.config.solver_order
    if order not in (1, 2, 3):
        raise UnsupportedSchedulerError(f"{type(scheduler).__name__} with solver_order={order} is not mapped; use 1, 2 or 3.")
    return int(order)


def refuse_stepped(scheduler: Any, stepped: bool) -> None:
    """Refuse a scheduler whose loop state says it has been stepped since ``set_timesteps``."""
    if stepped:
        raise UnsupportedSchedulerError(f"{type(scheduler).__name__} has already been stepped; call set_timesteps again before mapping it.")


def loop_timesteps(scheduler: Any, start: int | None) -> tuple[int, np.ndarray, int]:
    """``(start, timesteps (n,), N)``: the first step (:func:`start_index`), the timesteps from it and the loop's length."""
    start = start_index(scheduler, start)
    ts_all = timesteps_of(scheduler)
    return start, ts_all[start:], int(ts_all.shape[0])


def alpha_sigma_levels(scheduler: Any, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(alpha, sigma, lambda)`` of rows ``start..`` from the scheduler's ``sigmas`` (``_sigma_to_alpha_sigma_t``), float64.

    For the DPM-Solver family (DPM-Solver, DEIS, UniPC): ``(n + 1,)`` each, ``lambda = log alpha - log sigma``.
    """
    table = scheduler.sigmas.detach().double().cpu()[start:]
    alpha, sigma = (v.numpy() for v in scheduler._sigma_to_alpha_sigma_t(table))
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    return alpha, sigma, lam


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
