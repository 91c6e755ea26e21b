"""``sample_latents``: a parallel diffusion sampler below any pipeline (DESIGN 7).

A sampler is a function of a denoiser and a scheduler, as in k-diffusion. The scheduler
(after ``set_timesteps``) is mapped to the semilinear system of its sampling loop
(``schedulers/``)::

    x_i = a_i x_{i-1} + sum_q B[i-1, q] g_{i-1-q}(x_{i-1-q}) + c_i,    i = 1..n
    c_i = noise_scale[i-1] z_i                                         (pre-drawn noise)
    g_j = mapping.g(x_j, denoiser(input_scale_j x_j, t_j))

and solved in parallel rounds by :func:`trisolve.solve`. Notation: ``n`` rows after row 0,
``w`` rows in a round's window, ``B`` samples (the latents' batch), ``event = (C, H, W)``.

Shapes: ``latents (B, *event)``; trajectory ``(n + 1, B, *event)``; one denoiser call per
round on ``(w * B, *event)`` inputs and ``(w * B,)`` timesteps.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

import trisolve
from trisolve._validate import check_float, check_int
from trisolve.driver import check_fill, nonfinite_row_error

from .cost_model import AutoWindow
from .network import can_split, guidance_copies
from .schedulers import SchedulerMapping, map_scheduler

_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<unset>"})()  # a deprecated keyword not given

__all__ = [
    "SolveOptions",
    "sample_latents",
    "ParallelSamplingError",
    "SamplingInterrupted",
    "UnconvergedSampleError",
    "UnconvergedSampleWarning",
    "Denoiser",
]

#: ``denoiser(model_input (N, C, H, W), timesteps (N,)) -> model_output (N, C, H, W)``, ``N = w * B``.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ParallelSamplingError(RuntimeError):
    """The parallel solve stopped on a fault; ``.solution`` keeps what was computed.

    Resume with the keywords ``init=err.solution.trajectory, num_frozen=err.solution.num_frozen``.
    """

    def __init__(self, message: str, solution: trisolve.Solution):
        super().__init__(message)
        self.solution = solution


class UnconvergedSampleError(ParallelSamplingError):
    """With ``strict=True``: the solve ended before every step met the tolerance."""


class SamplingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a parallel solve; still a :class:`KeyboardInterrupt`, with ``.solution`` attached.

    Resume with the keywords ``init=exc.solution.trajectory, num_frozen=exc.solution.num_frozen``.
    """

    def __init__(self, message: str, solution: trisolve.Solution):
        super().__init__(message)
        self.solution = solution


class UnconvergedSampleWarning(UserWarning):
    """The solve ended (``max_iter``, ``early_stop`` or a stopping callback) before every step met
    the tolerance: the sample may differ from the sequential loop's. ``strict=True``
    raises :class:`UnconvergedSampleError` instead."""


#: The samplers' default tolerance (``atol``, ``rtol`` of :class:`SolveOptions`, in latent units): the
#: one site of the diffusion defaults, as :class:`trisolve.Tolerance`'s fields are the core's.
DEFAULT_TOLERANCE = trisolve.Tolerance(atol=5e-4, rtol=5e-4)

#: ``final_row_atol`` of pixel-space pipelines (values in ``[-1, 1]``): one 8-bit grey level is
#: ``2 / 255 ~ 7.8e-3``. On the bundled digits DDPM it saved 1-2 rounds with every run >= 45 dB
#: from the sequential sample (``benchmarks/diffusion.py``, docs/benchmarks).
PIXEL_FINAL_ATOL = 8e-3


@dataclass(frozen=True, kw_only=True)
class SolveOptions:
    """The solve keywords of :func:`sample`, :func:`sample_latents` and the k-diffusion samplers.

    One spelling: pass each attribute below as a keyword (``sample_latents(den, sched, x,
    atol=1e-4, window=8)``), the names :func:`trisolve.solve` takes where it takes them. This
    class is the carrier the samplers build from those keywords and pass down, and the one
    place for every default; ``options=SolveOptions(...)`` still works for one release with a
    ``DeprecationWarning``.

    Numbers may be Python or NumPy scalars (``np.int64(8)``, ``np.float32(1e-4)``); they are
    stored as Python ``int`` / ``float``. ``bool`` is refused where a number is meant.

    Attributes
    ----------
    solver : trisolve.Solver, optional
        ``None``: the sampler's default, :func:`default_solver` (``TriangularAnderson`` with the
        scheduler mapping's ``default_history_size``). Not the core's ``solver=None``
        (:func:`trisolve.defaults.default_method`, Newton-type maps for small states): a
        diffusion row is a whole latent.
    update_map : trisolve.UpdateMap, optional
        ``None``: the map of :func:`default_solver`: ``Picard()`` (ParaDiGMS's map, the whole
        window), ``WeightedPicard(mapping.picard_gains)`` for the loops that inject noise; with
        the deprecated ``order``, that map with ``order=min(order, n)``.
    order : int, optional
        Deprecated (``DeprecationWarning``): pass ``update_map=trisolve.Picard(order=k)`` (or
        ``trisolve.WeightedPicard(mapping.picard_gains, order=k)`` for a loop that injects noise,
        which is what ``order=k`` gives there).
    window : int, "auto", AutoWindow or trisolve.WindowPolicy, optional
        Rows per round (the core's ``window``; ``window_size=`` is its deprecated spelling);
        bounds memory. An :class:`~trisolve_diffusion.AutoWindow` chooses it per solve, with
        its own cache and last choice. ``"auto"``: :meth:`AutoWindow.of(network)
        <trisolve_diffusion.AutoWindow.of>`, the one policy of that network in this process,
        where :func:`sample` gives it the pipeline's network (``pipe.unet`` or
        ``pipe.transformer``) and :func:`sample_latents` the denoiser itself (timed and cached
        by the denoiser's identity, so a denoiser made anew for each call -- a bound method, a
        closure built per call -- is measured anew each call: pass ``window=AutoWindow(network)``
        to share the measurement between denoisers built around one network). Fewest rounds with the whole window; with a
        network that already fills the device at a small batch, a window whose round batch
        (``2 x window`` with guidance) sits where the per-sample time stops falling is faster
        (see the GPU benchmark). ``"auto"`` measures the network's time against its batch, and
        the solver's time per round with a free stand-in for the network, once per policy,
        latent shape, dtype, device, solver, map and scheduler (a few calls, cached) and takes the window
        the cost model predicts fastest (:mod:`trisolve_diffusion.cost_model`), keeping the
        whole window unless another is predicted > 5 % faster, and forward substitution
        (a window of 1 row: the loop, row by row) unless the window is predicted at least
        ``cost_model.MIN_SPEEDUP`` (1.25x) faster than it. A window of one row runs as the loop
        does, one network call and one row update per step without the parallel rounds'
        bookkeeping (no residual, no history), bitwise the same trajectory (``forward_rows``),
        unless a ``callback``, ``init``, ``max_iter`` or ``early_stop`` asks for rounds. ``None`` (default): ``"auto"`` on
        every device (on several ranks rank 0 measures and broadcasts, so every rank runs the
        same plan), except with a warm start (``init``), which takes the whole window (its
        rows start near their values: few rounds). The measurement is paid once per network and shape in a process (on this
        2-core CPU about half a 50-step loop at batch 1, see docs/window); the window, and so
        the rounds, may differ between machines and loads, the sample does not (every window
        solves to the same tolerance). Pass an int or ``trisolve.FullWindow()`` for rounds that
        do not depend on timings.
    atol, rtol : float
        A step is converged when the RMS of its residual (per sample, in latent units) is
        ``<= atol + rtol * sigma_i``, ``sigma_i`` the step's tolerance scale (the DDPM posterior
        std). The default (:data:`DEFAULT_TOLERANCE`, ``atol = rtol = 5e-4``) ended every benchmark run >= 40 dB from the sequential sample;
        1e-3 (ParaTAA's) left one stochastic DDPM-100 sample at 33 dB. Where the scheduler's
        latents are far from unit scale (the k-diffusion schedulers: Euler, Euler ancestral,
        Heun, LMS, whose latents range over ``sigma`` up to ~15-100), the solve runs on the rows
        ``row_scale[j] x_j`` of unit scale (:meth:`SchedulerMapping.scaled`), which converge in
        fewer rounds; the test is still this one, in latent units (benchmarks/rounds.py).
    max_iter : int, optional
        Most rounds (``None``: the number of rows, which always suffices).
    early_stop : float, optional
        Stop when the final latent's change between rounds, in tolerance units, is below this.
    final_row_atol : float, "auto" or None
        Output-aware finish (:func:`trisolve.solve`'s ``final_row_atol``): stop once the final
        latent's pending error after the round's update (its correction, the RMS of its residual
        per sample, times ``rate / (1 - rate)``, ``rate`` the contraction observed over the last
        two rounds and at least 1/3: the estimate is at least half the correction) is
        ``<= final_row_atol``, and every unfinished step's correction is
        too (or that step's own pending error after the update, where smaller),
        status ``FINAL_ROW_CONVERGED`` (the deprecated spelling ``final_atol=`` warns and means
        the same). ``"auto"`` (default): :data:`PIXEL_FINAL_ATOL` for
        pipelines that sample in pixel space with values in ``[-1, 1]`` (DDPM/DDIM pipelines,
        the bundled digits models) at the default ``atol``/``rtol``, where it is one 8-bit grey
        level; off when ``atol`` or ``rtol`` differs from its default (a tolerance asked for is met by every
        step), for latent models, and for :func:`sample_latents` called directly, whose output
        units it cannot know. ``None``: every step must meet ``atol``/``rtol``.
    init : tensor, shape ``(n + 1, B, C, H, W)``, optional
        Warm-start trajectory (e.g. ``solution.trajectory`` of a similar prompt).
    num_frozen : int
        Keep rows ``0 .. num_frozen - 1`` of ``init`` (variations of an earlier sample).
    trajectory_dtype : torch.dtype
        dtype of the trajectory and residuals (float32 or float64); the network keeps its own.
    callback : callable, optional
        ``callback(info: trisolve.RoundInfo)`` after every parallel *round* (not per step); a
        true return stops. diffusers' per-step ``callback_on_step_end`` is a :func:`sample`
        argument, called once per step after the solve.
    progress : bool or callable
        ``True``: a tqdm bar over the steps (``round``, ``frozen`` steps and ``max_res`` in its
        postfix: the largest scaled residual, converged iff ``<= 1``, of the steps not yet final
        after the round, at the iterate the round evaluated); a solve that returns a solution
        (status ``CONVERGED`` or ``FINAL_ROW_CONVERGED``) ends the bar at 100 % with its status;
        ``False``: none; a callable ``progress(total=n)`` returning a tqdm-like bar (the
        pipeline front doors pass ``pipe.progress_bar``, so ``pipe.set_progress_bar_config``
        applies).
    strict : bool
        An unconverged end (``max_iter``, ``early_stop``, a stopping callback) raises
        :class:`UnconvergedSampleError` when true; otherwise it warns
        (:class:`UnconvergedSampleWarning`) and returns the last iterate.
    distributed : bool or torch.distributed ProcessGroup
        ``True`` (the default process group) or a group: every rank runs this same call
        (launched by ``torchrun``, same seed and arguments) and evaluates a contiguous share
        of each round's network batch: with a denoiser the front doors build (a diffusers UNet,
        guided or not) the batch of ``w`` rows x ``B`` samples x guidance copies itself is cut,
        so window 1 splits the samples (data parallelism) and, with guidance, the unconditional
        and conditional halves go to different ranks (:class:`trisolve.distributed.ShardedBatch`); with
        another denoiser each rank takes a share of the round's rows
        (:func:`trisolve.distribute`). One all-gather per network call (the header packed with
        the outputs) gives every rank every output, so all ranks return the same result (the
        multi-GPU docs page); the solution's ``stats`` count the ``collectives`` and
        ``bytes_gathered``. The window defaults to ``"auto"``: rank 0 measures and broadcasts,
        every rank reaches the same plan -- a window, the batch split at window 1, or, where
        neither is predicted faster, the loop on rank 0 alone with its result broadcast. A group
        of one process runs as ``False``. ``False``: one process.
    compile : bool
        The core's ``compile``: the solver's arithmetic of each round outside the network (the
        update map, residuals, tolerance errors, TAA mixing) runs as compiled functions
        (``torch.compile``; CUDA graphs on CUDA), cached for the process. It pays only over
        many rounds: compiling takes tens of seconds once per process and configuration (about
        35 s on a loaded 2-core CPU with a cold cache) and then cuts the host time of a round
        outside the network by about a fifth on that CPU, a small part of a round beside a real
        network (docs: "The compiled round"). ``False`` (default). A window of one row, run row
        by row, has no round to compile. A compiled solve runs the batch in lockstep
        (``per_sample`` does not apply).
    per_sample : bool
        The core's ``per_sample`` (:func:`trisolve.solve`): with a batch of ``B > 1`` latents,
        every sample has its own frozen steps, window and finish, and each round's network call
        takes only the ``(step, sample)`` pairs still in their sample's window (gathered into one
        batch by :func:`sample_latents`, and by the k-diffusion samplers when the model takes no
        ``extra_args``; with them it evaluates whole steps), so a sample that converged stops
        costing network rows while the slower ones go on. ``True`` (default). ``False``: the lockstep batch (a step
        final when every sample passed; every round evaluates every sample). The lockstep batch
        also where the network's batch is split over ranks, or with ``compile=True``.
    fill : {"linear", "copy"}
        The core's ``fill`` (:func:`trisolve.solve`): how steps entering a sliding window start.
        ``"linear"`` (default here; the core's is ``"copy"``): the last step continued, which
        the sampler's rows (smooth from step to step) need fewer rounds from -- digits DDIM-50
        with a window of 9 steps, seeds 0-9: 17 -> 15 median rounds
        (``benchmarks/rounds.py --window 9 --fill copy`` against ``--fill linear``; docs/window).
        Where the loop adds noise the continued step carries the last step's noise and gains
        nothing: DDPM-100 took 41 rounds against 40 with copies, Euler ancestral-25 14 with
        either. ``"copy"``: a copy of the last known step. The full window is not affected.

    Examples
    --------
    >>> import torch, trisolve, trisolve_diffusion as td
    >>> from diffusers import DDIMScheduler
    >>> scheduler = DDIMScheduler(num_train_timesteps=100)
    >>> scheduler.set_timesteps(10)
    >>> x = torch.randn(1, 3, 8, 8, generator=torch.manual_seed(0))
    >>> final, sol = td.sample_latents(lambda x, t: 0.1 * x, scheduler, x, solver=trisolve.Jacobi(), atol=1e-6, rtol=0.0,
    ...                                window=trisolve.FullWindow(), progress=False)
    >>> sol.status.name, sol.tolerance.atol
    ('CONVERGED', 1e-06)
    """

    solver: trisolve.Solver | None = None
    update_map: trisolve.UpdateMap | None = None
    order: int | None = None
    window: int | str | trisolve.WindowPolicy | None = None
    atol: float = DEFAULT_TOLERANCE.atol
    rtol: float = DEFAULT_TOLERANCE.rtol
    max_iter: int | None = None
    early_stop: float | None = None
    final_row_atol: float | str | None = "auto"
    init: torch.Tensor | None = None
    num_frozen: int = 1
    trajectory_dtype: torch.dtype = torch.float32
    callback: Callable[[trisolve.RoundInfo], Any] | None = None
    progress: bool | Callable[..., Any] = True
    strict: bool = False
    distributed: Any = False
    compile: bool = False
    per_sample: bool = True
    fill: str = "linear"
    window_size: dataclasses.InitVar[Any] = _UNSET  # deprecated spelling of window
    final_atol: dataclasses.InitVar[Any] = _UNSET  # deprecated spelling of final_row_atol

    def __post_init__(self, window_size: Any = _UNSET, final_atol: Any = _UNSET):
        for old, new, value in (("window_size", "window", window_size), ("final_atol", "final_row_atol", final_atol)):
            if value is _UNSET:
                continue
            warnings.warn(f"SolveOptions({old}=...) is deprecated; pass {new}=... (the core's name).", DeprecationWarning, stacklevel=3)
            if getattr(self, new) != _FIELD_DEFAULTS[new]:
                raise ValueError(f"pass either {new}= or its deprecated spelling {old}=, not both.")
            object.__setattr__(self, new, value)
        if self.order is not None:
            warnings.warn(
                "SolveOptions(order=k) is deprecated; pass update_map=trisolve.Picard(order=k) (one way to choose the map).",
                DeprecationWarning,
                stacklevel=3,
            )
        if self.trajectory_dtype not in (torch.float32, torch.float64):
            raise TypeError(f"trajectory_dtype must be torch.float32 or torch.float64, got {self.trajectory_dtype}.")
        # numbers: Python and NumPy scalars alike (trisolve._validate), stored as Python int / float
        numbers = {
            "order": None if self.order is None else check_int("order", self.order, 1, hint="or None"),
            "atol": check_float("atol", self.atol, 0.0),
            "rtol": check_float("rtol", self.rtol, 0.0),
            "max_iter": None if self.max_iter is None else check_int("max_iter", self.max_iter, 1, hint="or None"),
            "early_stop": None if self.early_stop is None else check_float("early_stop", self.early_stop, 0.0, hint="or None"),
            "num_frozen": check_int("num_frozen", self.num_frozen, 1),
        }
        if self.final_row_atol is not None and self.final_row_atol != "auto":
            numbers["final_row_atol"] = check_float("final_row_atol", self.final_row_atol, 0.0, hint='or "auto" or None')
        ws = self.window
        if isinstance(ws, str) and ws != "auto":
            raise ValueError(f'window must be an int >= 1, "auto", a trisolve_diffusion.AutoWindow, a trisolve.WindowPolicy or None, got {ws!r}.')
        if ws is not None and ws != "auto" and not isinstance(ws, (trisolve.WindowPolicy, AutoWindow)):
            numbers["window"] = check_int("window", ws, 1, hint='(or "auto", a trisolve_diffusion.AutoWindow, a trisolve.WindowPolicy or None)')
        for name, value in numbers.items():
            object.__setattr__(self, name, value)
        if self.early_stop == 0:
            raise ValueError("early_stop must be a finite number > 0 or None, got 0.")
        if self.final_row_atol == 0:
            raise ValueError('final_row_atol must be a finite number > 0, "auto" or None, got 0.')
        if self.update_map is not None and self.order is not None:
            raise ValueError("pass either order= or update_map=, not both (the map carries its own order).")
        if self.solver is not None and not isinstance(self.solver, trisolve.Solver):
            raise TypeError(f"solver must be a trisolve solver (e.g. trisolve.TriangularAnderson()), got {type(self.solver).__name__}.")
        if self.update_map is not None and not isinstance(self.update_map, trisolve.UpdateMap):
            raise TypeError(f"update_map must be a trisolve update map (e.g. trisolve.Picard()), got {type(self.update_map).__name__}.")
        if self.atol == 0 and self.rtol == 0:
            raise ValueError("atol and rtol are both 0: no step could ever be accepted; give a positive tolerance.")
        if self.num_frozen > 1 and self.init is None:
            raise ValueError("num_frozen > 1 keeps rows of init; pass init= (e.g. an earlier solution.trajectory) too.")
        if self.init is not None and not isinstance(self.init, torch.Tensor):
            raise TypeError(f"init must be a torch tensor of shape (n + 1, *latents.shape), got {type(self.init).__name__}.")
        if self.callback is not None and not callable(self.callback):
            raise TypeError(f"callback must be callable or None, got {type(self.callback).__name__}.")
        if not (isinstance(self.progress, bool) or callable(self.progress)):
            raise TypeError(f"progress must be True, False or a callable progress(total=n) -> tqdm, got {type(self.progress).__name__}.")
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile must be True or False, got {type(self.compile).__name__}.")
        if not isinstance(self.per_sample, bool):
            raise TypeError(f"per_sample must be True or False, got {type(self.per_sample).__name__}.")
        check_fill(self.fill)
        if not isinstance(self.distributed, bool) and not _is_process_group(self.distributed):
            raise TypeError(f"distributed must be True, False or a torch.distributed ProcessGroup, got {type(self.distributed).__name__}.")

    def resolve_final_row_atol(self, *, pixel_space: bool) -> SolveOptions:
        """A copy with ``final_row_atol="auto"`` resolved (see the attribute): the front doors call this."""
        if self.final_row_atol != "auto":
            return self
        default_tol = (self.atol, self.rtol) == (_FIELD_DEFAULTS["atol"], _FIELD_DEFAULTS["rtol"])
        return self.replace(final_row_atol=PIXEL_FINAL_ATOL if pixel_space and default_tol else None)

    def replace(self, **changes: Any) -> SolveOptions:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def solver_and_map(
        self, n: int, mapping: SchedulerMapping | None = None, *, history_size: Any = _UNSET
    ) -> tuple[trisolve.Solver, trisolve.UpdateMap]:
        """The solver and update map for an ``n``-row system: the ones given, else :func:`default_solver` ``(mapping)``'s.

        ``history_size=`` (deprecated, ``DeprecationWarning``): the default ``TriangularAnderson``'s pairs; pass the mapping.
        """
        solver, update_map = default_solver(mapping)
        if history_size is not _UNSET:
            warnings.warn(
                "SolveOptions.solver_and_map(n, history_size=m) is deprecated; pass the scheduler mapping, whose "
                "default_history_size default_solver(mapping) reads.",
                DeprecationWarning,
                stacklevel=2,
            )
            solver = trisolve.TriangularAnderson(history_size=history_size)
        solver = solver if self.solver is None else self.solver
        if self.update_map is not None:
            return solver, self.update_map
        # the deprecated order=k: the default map with that order (WeightedPicard keeps its gains for noisy loops)
        return solver, (update_map if self.order is None else dataclasses.replace(update_map, order=min(self.order, n)))

    @property
    def tolerance(self) -> trisolve.Tolerance:
        """``atol``, ``rtol`` and ``final_row_atol`` (``"auto"`` unresolved: ``None``) as a :class:`trisolve.Tolerance`."""
        fa = None if self.final_row_atol == "auto" else self.final_row_atol
        return trisolve.Tolerance(atol=self.atol, rtol=self.rtol, final_row_atol=fa)

    def window_policy(self) -> trisolve.WindowPolicy | None:
        """The window policy; ``"auto"`` (and ``None``, the default) is resolved in :func:`sample_latents`."""
        return None if self.window == "auto" or isinstance(self.window, AutoWindow) else trisolve.as_window(self.window)


def _is_process_group(v: Any) -> bool:
    import torch.distributed as dist

    return dist.is_available() and isinstance(v, dist.ProcessGroup)


#: Deprecated spellings the samplers still accept (``DeprecationWarning``): ``window_size``, ``final_atol``, ``order``.
_DEPRECATED_NAMES = frozenset({"window_size", "final_atol", "order"})
#: The solve keywords of :func:`sample` and :func:`sample_latents`: the :class:`SolveOptions` fields and the deprecated spellings.
OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(SolveOptions)) | _DEPRECATED_NAMES
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SolveOptions)}


def default_solver(mapping: SchedulerMapping | None = None) -> tuple[trisolve.Solver, trisolve.UpdateMap]:
    """The samplers' default ``(solver, update_map)``: what ``solver=None`` means in :func:`sample`,
    :func:`sample_latents`, the k-diffusion samplers, the demo and the benchmarks (the one site).

    ``TriangularAnderson(history_size=mapping.default_history_size)`` on ``Picard()``, chosen
    by the benchmarks (docs/benchmarks): 4 difference pairs
    (:attr:`SchedulerMapping.default_history_size`), 1 for flow matching
    (``FlowMatchMapping.default_history_size``); on ``WeightedPicard(mapping.picard_gains)`` for
    the loops that inject noise (DDPM, Euler ancestral, ...: :attr:`SchedulerMapping.picard_gains`,
    a damped Picard map); ``mapping=None`` (the k-diffusion samplers,
    a system prepared elsewhere): the base class's. The core's own default for ``solver=None``
    is another one, for another kind of system: :func:`trisolve.defaults.default_method`.

    Examples
    --------
    >>> import trisolve_diffusion as td
    >>> solver, update_map = td.default_solver()
    >>> solver.history_size, update_map
    (4, Picard(order=None))
    """
    history_size = (SchedulerMapping if mapping is None else mapping).default_history_size
    gains = None if mapping is None else mapping.picard_gains
    return trisolve.TriangularAnderson(history_size=history_size), (trisolve.Picard() if gains is None else trisolve.WeightedPicard(gains))


def options_from_keywords(
    keywords: dict[str, Any],
    options: SolveOptions | None = None,
    *,
    caller: str,
    names: frozenset[str] | None = None,
    aliases: dict[str, str] | None = None,
    stacklevel: int = 3,
) -> SolveOptions:
    """The :class:`SolveOptions` of a sampler's flat solve keywords (the one spelling).

    ``keywords``: the solve keywords given (each a :class:`SolveOptions` field, or a deprecated
    spelling: ``window_size``, ``final_atol``, ``order``); any other raises ``TypeError``
    naming the ones ``caller`` takes (``names``, default :data:`OPTION_NAMES`); ``aliases`` maps
    a caller's own name to the field (the k-diffusion samplers' ``round_callback``).
    ``options``: the deprecated ``options=SolveOptions(...)`` (``DeprecationWarning``), which
    the keywords override.
    """
    names = OPTION_NAMES if names is None else names
    unknown = sorted(set(keywords) - names)
    if unknown:
        known = ", ".join(sorted(names - _DEPRECATED_NAMES))
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {', '.join(unknown)}; its solve keywords are {known}.")
    keywords = {(aliases or {}).get(k, k): v for k, v in keywords.items()}
    if options is not None:
        if not isinstance(options, SolveOptions):
            raise TypeError(f"options must be a trisolve_diffusion.SolveOptions, got {type(options).__name__}; pass the options as keywords.")
        warnings.warn(
            f"{caller}(..., options=SolveOptions(...)) is deprecated; pass each option as a keyword of {caller}() "
            "(e.g. atol=1e-4, window=8, progress=False), the names trisolve.solve takes.",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        return options.replace(**keywords) if keywords else options
    return SolveOptions(**keywords)


def draw_noise(
    mapping: SchedulerMapping, shape: tuple, generator: Any, device: Any, dtype: torch.dtype, traj_dtype: torch.dtype
) -> torch.Tensor | None:
    """``c_i = noise_scale_i z_i`` for every row, ``(n, *shape)``, drawn in the sequential loop's order.

    ``z_i`` is drawn with ``randn_tensor(shape, generator=generator, dtype=dtype)`` (float32 where
    the scheduler draws it so) exactly where the loop draws it, also where its coefficient is 0.
    ``None`` when the loop draws no noise.
    """
    drawn = np.flatnonzero(mapping.noise_drawn)
    if drawn.size == 0:
        return None
    c = torch.zeros((mapping.n, *shape), dtype=traj_dtype, device=device)
    generator = mapping.step_generator(generator)
    z_dtype = torch.float32 if mapping.noise_in_float32 else dtype
    for i in drawn:
        z = randn_tensor(shape, generator=generator, device=device, dtype=z_dtype)
        c[i] = float(mapping.noise_scale[i]) * z.to(traj_dtype)
    return c


class _Progress:
    """Steps final so far on a tqdm-like bar, with the round's numbers in its postfix.

    After each round: ``round``, ``frozen`` (steps final) and ``max_res``, the largest scaled
    residual (converged iff ``<= 1``, docs/glossary) among the steps still iterated after the
    round, measured at the iterate that round evaluated; the rows that froze in the round
    (the first failing one included, which one plain step made exact) are not in it. At the
    end (:meth:`finish`) a solve that returned a solution (``status.ok``) completes the bar
    to ``n`` and shows its status; any other end leaves the bar at the steps that are final.
    """

    def __init__(self, progress: bool | Callable[..., Any], n: int):
        self.n, self.done = n, 0
        if progress is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n, desc="parallel sampling")
        elif progress is False:
            self.bar = None
        else:
            self.bar = progress(total=n)
        if getattr(self.bar, "disable", False) is True:  # a disabled tqdm bar shows nothing: no postfix to format per round
            self.bar = None

    def round(self, info: trisolve.RoundInfo) -> None:
        if self.bar is not None:
            pending = info.errors[info.num_frozen - info.lo :]  # window rows not final after the round
            shown = {"max_res": f"{float(np.max(pending)):.3g}"} if pending.size else {}
            self.bar.set_postfix(round=info.round, frozen=min(info.num_frozen - 1, self.n), **shown, refresh=False)
            self.advance(info.num_frozen)

    def finish(self, sol: trisolve.Solution) -> None:
        """The solve's end: ``n`` of ``n`` with the status when it returned a solution, else the final steps."""
        if self.bar is None:
            return
        self.advance(self.n + 1 if sol.status.ok else sol.num_frozen)
        self.bar.set_postfix(round=sol.num_rounds, status=sol.status.name, refresh=True)

    def advance(self, num_frozen: int) -> None:
        frozen = min(num_frozen - 1, self.n)
        if self.bar is not None and frozen > self.done:
            self.bar.update(frozen - self.done)
            self.done = frozen

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def sample_latents(
    denoiser: Denoiser,
    scheduler: Any,
    latents: torch.Tensor,
    *,
    generator: torch.Generator | list[torch.Generator] | None = None,
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
    begin_index: int | None = None,
    mask: torch.Tensor | None = None,
    known_latents: torch.Tensor | None = None,
    options: SolveOptions | None = None,
    **solve_options: Any,
) -> tuple[torch.Tensor, trisolve.Solution]:
    """Run a scheduler's whole sampling loop in parallel rounds, below any pipeline.

    Equivalent to the sequential loop::

        for t in scheduler.timesteps[begin_index:]:
            model_input = scheduler.scale_model_input(latents, t)
            latents = scheduler.step(denoiser(model_input, t), t, latents, eta=eta, generator=generator).prev_sample

    (every noise tensor pre-drawn from ``generator`` in the loop's order), solved as the
    semilinear system ``x_i = a_i x_{i-1} + sum_q B[i-1,q] g_{i-1-q} + c_i`` by
    :func:`trisolve.solve`: with a tight tolerance the result equals the loop's.
    ``scheduler.step`` is never called; the scheduler is only read.

    Parameters
    ----------
    denoiser : callable
        ``denoiser(model_input, timesteps) -> model_output``: ``model_input (w * B, C, H, W)``
        already multiplied by the scheduler's input scale (what a pipeline's UNet receives),
        in the latents' dtype (the model's working dtype, as in the loop); ``timesteps (w * B,)`` on the latents' device, in the
        scheduler's timestep dtype; ``model_output`` a torch tensor of the input's shape, any
        floating-point dtype (anything else, an integer tensor included, stops the solve with a
        :class:`ParallelSamplingError` saying what was returned).
        Classifier-free guidance goes inside (see :func:`classifier_free_guidance`). Called
        once per round, without autograd.
    scheduler : diffusers scheduler
        After ``set_timesteps``; one of :data:`SUPPORTED_SCHEDULERS` (others raise
        :class:`UnsupportedSchedulerError` saying what to swap to).
    latents : tensor, shape ``(B, C, H, W)``
        Initial latents (row 0), already multiplied by ``scheduler.init_noise_sigma``. Noise
        is drawn in their dtype and on their device.
    generator : torch.Generator or list of them, optional
        What the loop passes to ``scheduler.step`` (one per sample, or one for all).
    eta, use_clipped_model_output
        ``scheduler.step`` arguments (DDIM only).
    begin_index : int, optional
        The loop starts at ``scheduler.timesteps[begin_index]`` (img2img's ``strength``);
        ``None``: ``scheduler.begin_index`` where the scheduler has one and it is set, else 0.
        The mapping starts there (``map_scheduler(..., start=begin_index)``): row 0 is the latents entering that step.
    mask : tensor, broadcastable to ``(B, C, H, W)``, optional
        Inpainting blend, as diffusers' 4-channel inpainting loop: after step ``i``,
        ``x_i <- mask * x_i + (1 - mask) * known_latents[i - 1]``. ``mask`` is 1 where the
        image is generated.
    known_latents : tensor, shape ``(n, B, C, H, W)``, optional
        The known region's latent after each step (the pre-noised image), with ``mask``.
    **solve_options
        The solve keywords, each described under :class:`SolveOptions`: ``solver``,
        ``update_map``, ``window``, ``atol``, ``rtol``, ``final_row_atol``, ``max_iter``,
        ``early_stop``, ``init``, ``num_frozen``, ``callback`` (per round), ``progress``,
        ``strict``, ``trajectory_dtype``, ``distributed``, ``compile``, ``per_sample``, ``fill``. An unknown keyword raises
        ``TypeError``. ``options=SolveOptions(...)`` is their deprecated spelling.

    Returns
    -------
    final_latents : tensor, shape ``(B, C, H, W)``
        Row ``n``, in the latents' dtype.
    solution : trisolve.Solution
        Trajectory ``(n + 1, B, C, H, W)``, rounds, evaluations, per-round residuals, status.

    Raises
    ------
    ParallelSamplingError
        The denoiser raised, returned nan/inf, or returned something other than a floating-point
        tensor of its input's shape; the message names the cause (also ``.__cause__``) and
        ``.solution`` keeps the rows computed so far.
    ValueError, TypeError
        Bad arguments, before any work: e.g. a tensor on the ``meta`` device (named), a
        scheduler whose ``set_timesteps`` has not run. Numbers may be Python or NumPy scalars.
    SamplingInterrupted
        Ctrl-C (a :class:`KeyboardInterrupt`) with the partial ``.solution``.
    UnconvergedSampleError
        Under ``strict=True`` when the solve ended unconverged; otherwise an
        :class:`UnconvergedSampleWarning` is issued.

    Notes
    -----
    With ``mask``, the blend stays a semilinear system: at the solution ``(1 - mask) x_i =
    known_i``, so ``x_i = a_i x_{i-1} + sum_q B m g + c'_i`` with ``g' = mask * g`` and
    ``c'_i = mask c_i + (1 - mask) (known_i - a_i known_{i-1})`` (``known_0 = (1 - mask) x_0``).

    Examples
    --------
    >>> import torch, trisolve_diffusion as td
    >>> from diffusers import DDIMScheduler
    >>> scheduler = DDIMScheduler(num_train_timesteps=100)
    >>> scheduler.set_timesteps(10)
    >>> denoiser = lambda x, t: 0.1 * x          # eps prediction of a toy model
    >>> x0 = torch.randn(2, 3, 8, 8, generator=torch.manual_seed(0))
    >>> final, sol = td.sample_latents(denoiser, scheduler, x0, progress=False)
    >>> final.shape, sol.converged
    (torch.Size([2, 3, 8, 8]), True)
    """
    options = options_from_keywords(solve_options, options, caller="sample_latents")
    return _sample_latents(denoiser, scheduler, latents, options, generator=generator, eta=eta,
                           use_clipped_model_output=use_clipped_model_output, begin_index=begin_index, mask=mask,
                           known_latents=known_latents)  # fmt: skip


def _sample_latents(
    denoiser: Denoiser,
    scheduler: Any,
    latents: torch.Tensor,
    options: SolveOptions,
    *,
    generator: Any = None,
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
    begin_index: int | None = None,
    mask: torch.Tensor | None = None,
    known_latents: torch.Tensor | None = None,
) -> tuple[torch.Tensor, trisolve.Solution]:
    """:func:`sample_latents` with its solve options as one :class:`SolveOptions` (the front doors call this)."""
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as denoiser(model_input, timesteps), got {type(denoiser).__name__}.")
    if not isinstance(latents, torch.Tensor) or latents.ndim < 2 or not latents.is_floating_point():
        raise TypeError("latents must be a floating-point torch tensor of shape (batch, C, H, W).")
    eta = check_float("eta", eta, 0.0)
    for name, value in (("latents", latents), ("init", options.init), ("mask", mask), ("known_latents", known_latents)):
        if isinstance(value, torch.Tensor) and value.device.type == "meta":
            raise ValueError(f"{name} is on the meta device, which holds no values: create it on a real device (cpu, cuda, ...).")
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch tensor broadcastable to latents.shape, got {type(mask).__name__}.")
    begin = _begin_index(scheduler, begin_index, len(scheduler.timesteps))
    mapping = map_scheduler(scheduler, eta=eta, use_clipped_model_output=use_clipped_model_output, start=begin)  # rows of steps begin..
    shape, device, traj = tuple(latents.shape), latents.device, options.trajectory_dtype
    n, batch = mapping.n, shape[0]
    if options.init is not None and tuple(options.init.shape) != (n + 1, *shape):
        raise ValueError(f"init must be a tensor of shape (n + 1, *latents.shape) = {(n + 1, *shape)}, got {tuple(options.init.shape)}.")
    if (mask is None) != (known_latents is None):
        raise ValueError("pass mask= and known_latents= together (the inpainting blend needs both).")
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"You passed {len(generator)} generators for a batch of {batch} latents; pass one per sample or one for all.")
    # the solve runs on rows of unit scale (mapping.scaled(): y_j = row_scale[j] x_j), its tolerance in data units
    rows = _UnitRows(mapping, options)
    mapping = rows.mapping
    c = draw_noise(mapping, shape, generator, device, latents.dtype, traj)
    x0 = rows.to_rows(latents.to(traj)[None], 0)[0]

    # device tables, built once: (n,) timesteps in the scheduler's dtype, (n,) input scales
    t_dtype = scheduler.timesteps.dtype if isinstance(getattr(scheduler, "timesteps", None), torch.Tensor) else torch.float32
    ts = torch.as_tensor(np.asarray(mapping.timesteps, dtype=np.float64), device=device).to(t_dtype)
    t_inputs = ts.repeat_interleave(batch)  # (n * B,): each row's timestep for its B network inputs (row-major), sliced per call
    input_scale = np.asarray(mapping.input_scale, dtype=np.float64)
    scaled = not np.all(input_scale == 1.0)
    scale = torch.as_tensor(input_scale, device=device).to(traj)
    bshape = (-1,) + (1,) * len(shape)  # per-row scalars over (w, B, *event)

    m = None
    if mask is not None:
        c, m = _blend(mapping.a, c, x0, mask, known_latents, traj, rows.to_rows)

    def g_of(den: Any) -> Callable[..., torch.Tensor]:
        def g(x_rows: torch.Tensor, lo: int, hi: int, active: np.ndarray | None = None) -> torch.Tensor:  # (w, B, *event) -> (w, B, *event)
            w = hi - lo
            model_input = x_rows * scale[lo:hi].reshape(bshape) if scaled else x_rows
            t = t_inputs[lo * batch : hi * batch]  # (w * B,)
            inp = model_input.reshape(w * batch, *shape[1:]).to(latents.dtype)
            if active is None:
                out = _checked_output(den(inp, t), inp)
            else:  # g_pairs: only the (row, sample) pairs of active (w, B), gathered into one network call and scattered back
                idx = torch.as_tensor(np.flatnonzero(active.reshape(-1)), device=inp.device)  # of the w * B flattened inputs
                sub = inp.index_select(0, idx)
                got = _checked_output(den(sub, t.index_select(0, idx)), sub)
                out = got.new_zeros((w * batch, *got.shape[1:])).index_copy_(0, idx, got)  # the other pairs' values are never read
            out = out.reshape(w, batch, *out.shape[1:]).to(traj)
            out = mapping.g(x_rows, out, lo, hi)
            return out if m is None else m * out

        return g

    g = g_of(denoiser)
    split, solve_options, one_rank = None, options, False
    if options.distributed is not False:
        from trisolve.distributed import GroupInfo, ShardedBatch, _digest

        info = GroupInfo.resolve(None if options.distributed is True else options.distributed)
        if info.world == 1:  # a group of one process: nothing to split, no collective
            solve_options = options.replace(distributed=False)
        elif can_split(denoiser):  # the ranks split each call's network batch
            split = ShardedBatch(info, _digest(_fingerprint(options, x0, c)))
            solve_options = options.replace(distributed=False)  # the rows are not split again
    band = _band(mapping)
    window = options.window_policy()
    solver, update_map = options.solver_and_map(n, mapping)
    auto = options.window if isinstance(options.window, AutoWindow) else None
    if auto is None and (options.window == "auto" or (options.window is None and options.init is None)):
        auto = AutoWindow.of(denoiser)  # the denoiser itself is timed, keyed by its identity (sample() gives its network's policy)
    if auto is not None:
        # the round outside the network, timed with a free stand-in for it (the scaled input as its output)
        free = g_of(lambda inp, t: inp)
        stand_in = trisolve.SemilinearSystem(mapping.a, band, free, c=c, sigma=rows.sigma, batch_ndim=1, g_pairs=free)
        run_rounds = functools.partial(_run_rounds, stand_in, solver, update_map, x0, rows.tolerance, options.fill)
        run_rows = functools.partial(_run_rows, stand_in, x0)
        method = (repr(solver), repr(update_map), type(mapping.scheduler).__name__)  # the overhead's cache key: per scheduler
        share = None if split is None else functools.partial(_first_inputs, g_of, denoiser, x0)
        # each rank its own samples: where a share of the samples is solved alone as in one process (no noise, blend,
        # warm start or per-round callback that would see only a share)
        alone = split is not None and c is None and m is None and options.init is None and options.callback is None
        try:
            window, split, one_rank, own = _auto_window(g, x0, denoiser, mapping, options.distributed, run_rounds, method, policy=auto,
                                                        split=split, evaluate_share=share, run_rows=run_rows,
                                                        samples=batch if alone else 0, fill=options.fill)  # fmt: skip
        except (_NetworkFault, KeyboardInterrupt) as exc:  # the network failed, or Ctrl-C, while it was timed: as in a round
            _raise_unstarted(exc.fault if isinstance(exc, _NetworkFault) else exc, latents.to(traj), n)
        if own:
            sol = _own_samples(denoiser, scheduler, latents, options, window, n, eta=eta, use_clipped_model_output=use_clipped_model_output,
                               begin_index=begin_index)  # fmt: skip
            return sol.trajectory[-1].to(latents.dtype), sol
    if one_rank:  # the loop on rank 0 alone: no split of its rows either
        solve_options = solve_options.replace(distributed=False)
    run_g = g if split is None else g_of(denoiser.with_split(split))
    # per-sample rounds gather the pairs they need into one network batch (not through a batch split over ranks: lockstep there)
    system = trisolve.SemilinearSystem(mapping.a, band, run_g, c=c, sigma=rows.sigma, batch_ndim=1, g_pairs=run_g if split is None else None)
    if split is not None:
        solve_options = solve_options.replace(per_sample=False)
    solve = functools.partial(solve_rows, system, x0, solve_options, solver=solver, update_map=update_map, window=window, forcing=c,
                              rows=rows, split=split)  # fmt: skip
    sol = _on_rank0(solve, options, x0, n) if one_rank else solve()
    return sol.trajectory[-1].to(latents.dtype), sol


def _on_rank0(solve: Callable[[], trisolve.Solution], options: SolveOptions, x0: torch.Tensor, n: int) -> trisolve.Solution:
    """The plan's loop on rank 0 alone (``WindowChoice.one_rank``): rank 0 runs ``solve()``, every other rank receives its result.

    Two broadcasts: ``[status, rounds, evaluations, num_frozen]`` and the trajectory ``(n + 1, *x0.shape)``. Every rank
    returns the same :class:`trisolve.Solution` (its ``stats`` count the two collectives and the bytes this rank received),
    or raises what rank 0 raises (rank 0: its own error; the others: the error of rank 0's status, from the same result).
    """
    from trisolve.distributed import GroupInfo

    info = GroupInfo.resolve(None if options.distributed is True else options.distributed)
    statuses = list(trisolve.Status)
    sol, raised = None, None
    if info.rank == 0:
        try:
            sol = solve()
        except (ParallelSamplingError, SamplingInterrupted) as exc:  # told to the other ranks first, then raised here
            sol, raised = exc.solution, exc
        except BaseException as exc:  # anything else: the others learn FAILED with nothing solved, rank 0 raises it
            sol, raised = _unstarted(x0, n, trisolve.Status.FAILED, exc), exc
    head = torch.zeros(4, dtype=torch.int64, device=info.device)
    if info.rank == 0:
        head[:] = torch.tensor([statuses.index(sol.status), sol.num_rounds, sol.num_evals, sol.num_frozen])
    head = info.broadcast(head, "the result of the loop on rank 0").cpu().tolist()
    traj = sol.trajectory if info.rank == 0 else torch.empty((n + 1, *x0.shape), dtype=x0.dtype, device=x0.device)
    traj = info.broadcast(traj.to(info.device).contiguous(), "the trajectory of the loop on rank 0").to(x0.device)
    received = 0 if info.rank == 0 else 4 * 8 + traj.numel() * traj.element_size()
    if raised is not None:
        raise raised
    if info.rank == 0:
        return dataclasses.replace(sol, stats={**sol.stats, "collectives": 2, "bytes_gathered": received})
    status, rounds, evals, frozen = statuses[head[0]], *head[1:]
    sol = trisolve.Solution(
        trajectory=traj, status=status, num_rounds=rounds, num_evals=evals, num_frozen=frozen,
        windows=trisolve.RoundWindows([(j, j + 1) for j in range(1, rounds + 1)]), round_max_errors=np.zeros(rounds),
        error=None if status.ok else RuntimeError(f"rank 0's solve ended {status.name} (its error is raised on rank 0)"),
        stats={"collectives": 2, "bytes_gathered": received}, tolerance=options.tolerance,
    )  # fmt: skip
    _raise_for_status(sol, options.strict)
    return sol


@dataclasses.dataclass(frozen=True)
class _FirstInputs:
    """A measuring split: evaluate only the first ``k`` inputs of a network call (the rest zeros), as one rank's share."""

    k: int

    def __call__(self, n: int, evaluate: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
        out = evaluate(0, min(self.k, n))
        return torch.cat([out, out.new_zeros((n - out.shape[0], *out.shape[1:]))])


def _first_inputs(g_of: Callable, denoiser: Any, x0: torch.Tensor, k: int) -> torch.Tensor:
    """One round of one row whose network call evaluates only its first ``k`` inputs (the automatic plan's share timing)."""
    with torch.no_grad():
        return g_of(denoiser.with_split(_FirstInputs(k)))(x0.unsqueeze(0).clone(), 0, 1)


def solve_rows(
    system: trisolve.SemilinearSystem,
    x0: torch.Tensor,
    options: SolveOptions,
    *,
    solver: trisolve.Solver,
    update_map: trisolve.UpdateMap,
    window: trisolve.WindowPolicy | None,
    forcing: torch.Tensor | None = None,
    rows: _UnitRows | None = None,
    split: Any = None,
) -> trisolve.Solution:
    """Solve a prepared diffusion system the way :func:`sample_latents` does: the solve of every front door.

    Splits the rows over the ranks (``options.distributed``; ``forcing``, the system's ``c``,
    joins the fingerprint every rank must share), shows the progress bar, runs
    :func:`trisolve.solve` without autograd with ``options``' tolerances, warm start and
    callback, and raises or warns on the status (:class:`ParallelSamplingError`,
    :class:`SamplingInterrupted`, :class:`UnconvergedSampleError` /
    :class:`UnconvergedSampleWarning`); ``final_row_atol="auto"`` unresolved counts as ``None``.
    ``rows``: the system is solved on rescaled rows (:class:`_UnitRows`, from :func:`sample_latents`):
    tolerances, warm start and callback are translated, and the solution returned in latent units;
    ``None``: the system's rows are the latents. On several ranks the traffic joins the solution's
    ``stats`` (``collectives``, ``bytes_gathered``: what this rank received): of the row split
    (``options.distributed``), or of ``split``, the :class:`trisolve.distributed.ShardedBatch`
    the denoiser's network batch goes through.
    """
    from trisolve.distributed import ShardedFunction

    n = system.n
    rows = _UnitRows(None, options) if rows is None else rows
    if options.distributed is not False:  # each round's rows split over the ranks (trisolve.distributed)
        system = trisolve.distribute(system, group=None if options.distributed is True else options.distributed,
                                     fingerprint=_fingerprint(options, x0, forcing))  # fmt: skip
        if isinstance(system, trisolve.SemilinearSystem) and isinstance(system.g, ShardedFunction):
            split = system.g
    init = None if options.init is None else rows.to_rows(options.init.to(device=x0.device, dtype=x0.dtype), 0)
    bar = _Progress(options.progress, n)

    def on_round(info: trisolve.RoundInfo):
        bar.round(info)
        if options.callback is None:
            return False
        if rows.scale is not None:  # the callback sees the latents, not the solve's rows
            info = dataclasses.replace(info, trajectory=rows.from_rows(info.trajectory.clone()))
        return bool(options.callback(info))

    try:
        with torch.no_grad():
            if row_by_row(window, options, n):
                sol = forward_rows(system, x0, bar)
            else:
                sol = trisolve.solve(
                    system, solver, x0, update_map=update_map, window=window, **rows.tolerance, record="errors",
                    max_iter=options.max_iter, early_stop=options.early_stop, callback=on_round, init=init,
                    num_frozen=options.num_frozen, final_row_atol=rows.final_row_atol, compile=options.compile,
                    per_sample=options.per_sample, fill=options.fill,
                )  # fmt: skip
        bar.finish(sol)
    finally:
        bar.close()
    rows.from_rows(sol.trajectory)  # in place: the solution holds latents, whatever ended the solve
    if split is not None:
        sol = dataclasses.replace(sol, stats={**sol.stats, **split.stats()})
    sol = dataclasses.replace(sol, tolerance=options.tolerance)  # the tolerance asked for, in latent units
    _raise_for_status(sol, options.strict)
    return sol


def row_by_row(window: trisolve.WindowPolicy | None, options: SolveOptions, n: int) -> bool:
    """Whether the solve is forward substitution run as the loop (:func:`forward_rows`) instead of the driver's rounds.

    A window of one row (the plan's forward substitution, or ``window=1``) makes every round
    exact, so the driver's per-round work (residuals, the tolerance test, the solver's history)
    decides nothing; it runs row by row unless something reads the rounds: a ``callback``, a
    warm start (``init``), ``max_iter < n`` or ``early_stop``, which keep the driver.
    """
    one_row = isinstance(window, trisolve.SlidingWindow) and window.size == 1
    return (
        one_row and options.callback is None and options.init is None and options.early_stop is None
        and (options.max_iter is None or options.max_iter >= n)
    )  # fmt: skip


def forward_rows(system: trisolve.SemilinearSystem, x0: torch.Tensor, bar: _Progress | None = None) -> trisolve.Solution:
    """Forward substitution the way the sequential loop runs it: one ``g`` call and one row update per step.

    Each row is :meth:`~trisolve.SemilinearSystem.evaluate` of that one row (the arithmetic of
    the driver's window-1 round, so the trajectory equals ``trisolve.solve(...,
    window=SlidingWindow(1))`` bitwise), written straight into the trajectory: no residual, no
    tolerance test, no solver state. The :class:`trisolve.Solution` says what ran: ``n``
    rounds of one row (``windows`` ``(i, i + 1)``), the evaluations, status ``CONVERGED``
    (forward substitution is exact) and ``round_max_errors`` 0 (no residual is computed: each
    row is final when written). A failure keeps what was computed as the driver does: the
    network raising (``FAILED``) or Ctrl-C (``INTERRUPTED``) at row ``i`` keeps rows ``< i``
    (``num_frozen = i``) and copies row ``i - 1`` forward; a non-finite row (checked once, at
    the end: no host read per step) gives ``NONFINITE`` with the rows before the first one.
    """
    n, xp = system.n, _torch_namespace()
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains nan or inf; every value of row 0 must be finite.")
    if system.num_ranks > 1:  # every rank must solve the same: checked on every rank before the first row, as trisolve.solve does
        system.agree(x0=x0, window="row by row")
    x = torch.empty((n + 1, *x0.shape), dtype=x0.dtype, device=x0.device)
    x[0] = x0
    cache = system.new_cache(x, xp=xp)
    status, error, done, evals = trisolve.Status.CONVERGED, None, n + 1, 0
    i = 1
    try:
        for i in range(1, n + 1):
            ev = system.evaluate(x, i, i + 1, cache, xp=xp)
            x[i] = ev.f[0]
            evals += ev.num_evals
            if bar is not None:
                bar.advance(i + 1)
    except KeyboardInterrupt as exc:
        status, error, done = trisolve.Status.INTERRUPTED, exc, i
    except Exception as exc:  # the network (or the mapping) raised: reported on the solution, as a failed round
        status, error, done = trisolve.Status.FAILED, exc, i
    finite = torch.isfinite(x[:done].reshape(done, -1)).all(dim=1).cpu().numpy()  # one host read for the whole solve
    if not finite.all():
        bad = int(np.argmin(finite))
        status, done = trisolve.Status.NONFINITE, bad
        error = nonfinite_row_error(bad)
    if done <= n:
        x[done:] = x[done - 1]
    rounds = done if status is trisolve.Status.NONFINITE else done - 1  # as the driver counts: a raising round is not counted
    return trisolve.Solution(
        trajectory=x, status=status, num_rounds=rounds, num_evals=evals, num_frozen=done,
        windows=trisolve.RoundWindows([(j, j + 1) for j in range(1, rounds + 1)]), round_max_errors=np.zeros(rounds),
        round_errors=[np.zeros(1) for _ in range(rounds)], error=error,
    )  # fmt: skip


@functools.cache
def _torch_namespace() -> Any:
    from trisolve._backend import namespace

    return namespace(torch.zeros(()))


class _UnitRows:
    """The rows the solve runs on, and the tolerance in data units (the latents' own).

    Where the mapping has a ``row_scale`` ``c`` (the k-diffusion schedulers, whose latents range
    over ``sigma`` up to ~100), the solve runs on ``y_j = c_j x_j`` (:meth:`SchedulerMapping.scaled`):
    rows of unit scale, so every scheduler's fixed-point problem is about equally well conditioned.
    The convergence test stays the one stated in latent units, ``RMS(x residual) <= atol + rtol
    sigma_i``: in ``y`` units it is ``<= c_i (atol + rtol sigma_i)``, passed to :func:`trisolve.solve`
    as per-row scales with ``atol = 0, rtol = 1``; the final-row tolerance likewise ``c_n final_row_atol``.
    Without a ``row_scale`` everything is the mapping's own.
    """

    def __init__(self, mapping: SchedulerMapping | None, options: SolveOptions):
        fa = None if options.final_row_atol == "auto" else options.final_row_atol
        self.scale = None if mapping is None or mapping.row_scale is None else np.asarray(mapping.row_scale, dtype=np.float64)  # (n + 1,)
        if self.scale is None:  # the rows are the latents (mapping None: a system prepared elsewhere, its own sigma)
            self.mapping, self.sigma = mapping, None if mapping is None else mapping.sigma
            self.tolerance, self.final_row_atol = dict(atol=options.atol, rtol=options.rtol), fa
            return
        c = self.scale
        self.mapping = mapping.scaled()
        self.sigma = c[1:] * (options.atol + options.rtol * np.asarray(mapping.sigma, dtype=np.float64))  # (n,) thresholds, y units
        self.tolerance = dict(atol=0.0, rtol=1.0)
        self.final_row_atol = None if fa is None else float(c[-1]) * fa

    def to_rows(self, x: torch.Tensor, first: int) -> torch.Tensor:
        """Latents of rows ``first, first + 1, ..`` stacked ``(k, B, *event)`` as solve rows (``x`` itself when unscaled)."""
        if self.scale is None:
            return x
        c = torch.as_tensor(self.scale[first : first + x.shape[0]], device=x.device).to(x.dtype)
        return x * c.reshape((-1,) + (1,) * (x.ndim - 1))

    def from_rows(self, y: torch.Tensor) -> torch.Tensor:
        """A whole trajectory ``(n + 1, B, *event)`` of solve rows back to latents, in place; returns it."""
        if self.scale is not None:
            y.mul_(torch.as_tensor(1.0 / self.scale, device=y.device).to(y.dtype).reshape((-1,) + (1,) * (y.ndim - 1)))
        return y


def _checked_output(out: Any, model_input: torch.Tensor) -> torch.Tensor:
    """The denoiser's output, refused unless it is a floating-point tensor of the input's shape."""
    if isinstance(out, torch.Tensor) and out.shape == model_input.shape and out.is_floating_point():
        return out  # every round: no message built
    expected = f"a floating-point torch tensor of the input's shape {tuple(model_input.shape)} (one output per input row)"
    if not isinstance(out, torch.Tensor):
        what = "None" if out is None else f"a {type(out).__module__}.{type(out).__qualname__}"
        if isinstance(out, (tuple, list)) or hasattr(out, "sample"):
            what += " (a diffusers model's output: return its .sample, or [0] of return_dict=False)"
        raise TypeError(f"the denoiser returned {what}; it must return {expected}.")
    if tuple(out.shape) != tuple(model_input.shape):
        raise ValueError(f"the denoiser returned shape {tuple(out.shape)}; it must return {expected}.")
    if not out.is_floating_point():
        raise TypeError(f"the denoiser returned dtype {out.dtype}, which would be cast and sampled as a prediction; it must return {expected}.")
    return out


def _band(mapping: SchedulerMapping) -> np.ndarray:
    """``mapping.B`` without the columns no row reads: row ``i`` reads ``g_{i-1-q}`` for ``q < i <= n``.

    A multistep mapping whose order exceeds its steps (LMS, UniPC ``solver_order=3`` at 2 steps)
    builds ``p > n`` columns; those past ``n`` hold only zeros.
    """
    n = mapping.n
    if np.any(mapping.B[:, n:] != 0):
        raise RuntimeError(f"{type(mapping).__name__}: coefficients of g_j for j < 0 in columns >= n = {n} (a mapping bug; please report it).")
    return mapping.B[:, :n]


def _begin_index(scheduler: Any, begin_index: int | None, n: int) -> int:
    own = getattr(scheduler, "begin_index", None)  # schedulers without set_begin_index have none
    if begin_index is None:
        begin_index = 0 if own is None else int(own)
    begin_index = check_int("begin_index", begin_index, 0, hint="or None")
    if own is not None and int(own) != begin_index:
        raise ValueError(f"begin_index={begin_index} but the scheduler's begin_index is {own}; pass the same or leave begin_index=None.")
    if not begin_index < n:
        raise ValueError(f"begin_index={begin_index} leaves no step of the scheduler's {n}; use begin_index < {n} (a higher strength).")
    return begin_index


def _run_rounds(system, solver, update_map, x0: torch.Tensor, tolerance: dict, fill: str, w: int, k: int) -> int:
    """Run at most ``k`` rounds of ``system`` (the stand-in) with a window of ``w`` rows; the rounds run (0 if it failed)."""
    window = None if w >= system.n else trisolve.SlidingWindow(w)
    with torch.no_grad():
        sol = trisolve.solve(system, solver, x0, update_map=update_map, window=window, **tolerance, max_iter=k, fill=fill)
    if sol.status in (trisolve.Status.FAILED, trisolve.Status.NONFINITE):  # not the user's network: say so, and time nothing
        warnings.warn(
            f"window='auto' could not time the solver's rounds with a stand-in network ({sol.status.name}: {sol.error!r}); "
            "it chooses the window without the per-round overhead term.",
            RuntimeWarning,
            stacklevel=2,
        )
        return 0
    return sol.num_rounds


def _run_rows(system: trisolve.SemilinearSystem, x0: torch.Tensor) -> int:
    """Run ``system`` (the stand-in) row by row (:func:`forward_rows`); its steps."""
    with torch.no_grad():
        forward_rows(system, x0)
    return system.n


def _auto_window(
    g, x0: torch.Tensor, denoiser: Any, mapping: SchedulerMapping, distributed: Any, run_rounds: Any, method: tuple,
    policy: AutoWindow,
    *,
    split: Any = None,
    evaluate_share: Any = None,
    run_rows: Any = None,
    samples: int = 0,
    fill: str,
) -> tuple[trisolve.WindowPolicy, Any, bool, bool]:
    """The window an :class:`AutoWindow` ``policy`` chooses: the one the cost model predicts fastest (``cost_model.py``).

    What is timed and keyed is the policy's network when it names one, else the denoiser itself.
    With ``split`` (a :class:`trisolve.distributed.ShardedBatch`) the ranks split the network batch, ``S G``
    inputs per row (``G = 2`` with guidance); the choice keeps ``split`` for its traffic counts, or ``None``
    where the plan runs the loop on rank 0 alone (``WindowChoice.one_rank``) or each rank its own samples
    (``WindowChoice.own_samples``, priced where ``samples``, the batch, is given). Returns the window
    policy, that split, ``one_rank`` and ``own_samples``. ``fill``: how steps entering the window start (the rounds prior's).
    """
    from .cost_model import _note_used, auto_window

    n = mapping.n

    def rows(r: int) -> torch.Tensor:  # one round's network work on r rows (rows 0 .. r - 1 of the schedule)
        with torch.no_grad():
            try:
                return g(x0.unsqueeze(0).expand(r, *x0.shape).clone(), 0, r)
            except Exception as exc:  # the user's network: reported like a failed round (sample_latents)
                raise _NetworkFault(exc) from exc

    # cached on the policy per network (a guidance closure rebuilt per call reuses it), else per denoiser: by identity;
    # the denoiser's code (or class) tells a guided closure from the bare network
    kind = getattr(denoiser, "__code__", None) or type(denoiser)
    key = (tuple(x0.shape), str(x0.dtype), str(x0.device), kind)
    inputs = 0 if split is None else x0.shape[0] * guidance_copies(denoiser)  # network inputs per trajectory row
    choice = auto_window(
        rows, n, device=x0.device, stochastic=bool(np.any(mapping.noise_drawn)), key=key, method=method, policy=policy,
        model=denoiser if policy.network is None else policy.network,
        gather_bytes_per_row=x0.numel() * x0.element_size() * max(1, inputs // x0.shape[0]), group=None if distributed is False else distributed,
        run_rounds=run_rounds, split_inputs=inputs, evaluate_share=evaluate_share, run_rows=run_rows, samples=samples, fill=fill,
    )  # fmt: skip
    split = None if choice.one_rank or choice.own_samples else split
    policy.last_choice = choice = dataclasses.replace(choice, split=split)
    _note_used(policy)
    window = trisolve.FullWindow() if choice.window >= n else trisolve.SlidingWindow(choice.window)
    return window, split, choice.one_rank, choice.own_samples


def _own_samples(denoiser: Any, scheduler: Any, latents: torch.Tensor, options: SolveOptions, window: trisolve.WindowPolicy, n: int,
                 **kw: Any) -> trisolve.Solution:  # fmt: skip
    """The plan's own samples on each rank (``WindowChoice.own_samples``): rank ``r`` solves samples ``r B // P .. (r + 1) B // P - 1``
    alone (:func:`sample_latents` on its share, the denoiser cut to it, ``window``), then one all-gather of every rank's
    ``[status, rounds, evaluations, num_frozen]`` and one of the trajectories (padded to ``ceil(B / P)`` samples).

    Every rank returns the whole trajectory ``(n + 1, B, ...)``; ``status`` and ``num_frozen`` are the worst rank's, the
    rounds, evaluations, windows and residuals this rank's own solve's (``stats["max_rounds"]``: the most any rank ran).
    A rank whose solve raised raises its own error; the others raise what the gathered status raises.
    """
    from trisolve.distributed import GroupInfo

    info = GroupInfo.resolve(None if options.distributed is True else options.distributed)
    batch, world = latents.shape[0], info.world
    lo, hi, per = info.rank * batch // world, (info.rank + 1) * batch // world, -(-batch // world)
    statuses = list(trisolve.Status)
    sol, raised = None, None
    try:
        _, sol = _sample_latents(denoiser.for_samples(lo, hi, batch), scheduler, latents[lo:hi],
                                 options.replace(distributed=False, window=window), **kw)  # fmt: skip
    except (ParallelSamplingError, SamplingInterrupted) as exc:  # told to the other ranks first, then raised here
        sol, raised = exc.solution, exc
    except BaseException as exc:  # anything else: the others learn FAILED with nothing solved
        sol, raised = _unstarted(latents[lo:hi].to(options.trajectory_dtype), n, trisolve.Status.FAILED, exc), exc
    head = torch.tensor([statuses.index(sol.status), sol.num_rounds, sol.num_evals, sol.num_frozen], dtype=torch.int64)
    heads = info.all_gather(head.to(info.device), "each rank's result of its own samples").cpu().reshape(world, 4).tolist()
    own = sol.trajectory.transpose(0, 1)  # (hi - lo, n + 1, ...): the all-gather stacks the ranks' samples
    padded = torch.cat([own, own.new_zeros((per - own.shape[0], *own.shape[1:]))]).to(info.device)
    every = info.all_gather(padded, "the trajectories of every rank's own samples").to(latents.device)
    traj = torch.cat([every[r * per : r * per + (r + 1) * batch // world - r * batch // world] for r in range(world)]).transpose(0, 1)
    received = (world - 1) * (4 * 8 + padded.numel() * padded.element_size())
    if raised is not None:
        raise raised
    bad = [h for h in heads if not statuses[h[0]].ok]
    status = statuses[(bad or heads)[0][0]]
    stats = {**sol.stats, "collectives": 2, "bytes_gathered": received, "max_rounds": max(h[1] for h in heads)}
    mine = sol.status
    if status is not mine and not status.ok:
        error = RuntimeError(f"another rank's solve of its samples ended {status.name} (its error is raised there)")
    else:
        error = sol.error
    # the per-sample records of this rank's solve describe its share only: none for the whole batch
    sol = dataclasses.replace(sol, trajectory=traj.contiguous(), status=status, num_frozen=min(h[3] for h in heads), stats=stats,
                              error=error, sample_frozen=None, sample_rounds=None)  # fmt: skip
    if status is not mine:  # another rank's status (this rank's own was raised or warned by its solve)
        _raise_for_status(sol, options.strict)
    return sol


def _fingerprint(options: SolveOptions, x0: torch.Tensor, c: torch.Tensor | None) -> tuple:
    """What every rank of a distributed solve must share: the options by value, row 0, the noise and ``init`` by content."""
    from trisolve.distributed import _digest

    skip = ("callback", "progress", "distributed", "init")
    described = tuple((f.name, repr(getattr(options, f.name))) for f in dataclasses.fields(options) if f.name not in skip)
    return described, _digest(x0), _digest(c), _digest(options.init)


def _blend(a_rows, c, x0, mask, known, traj, to_rows):
    """Forcing and mask of the inpainting blend (see ``sample_latents`` Notes), in the solve's rows (``to_rows``)."""
    n = len(a_rows)
    if not isinstance(known, torch.Tensor) or tuple(known.shape) != (n, *x0.shape):
        got = tuple(known.shape) if isinstance(known, torch.Tensor) else type(known).__name__
        raise ValueError(f"known_latents must have shape (n, *latents.shape) = {(n, *x0.shape)}, got {got}.")
    m = mask.to(device=x0.device, dtype=traj)
    q = to_rows(known.to(device=x0.device, dtype=traj), 1)  # (n, B, *event): row i = 1..n
    keep = 1 - m
    q_prev = torch.cat([(keep * x0)[None], q[:-1]])  # known_{i-1}, known_0 = (1 - m) x_0
    a = torch.as_tensor(np.asarray(a_rows, dtype=np.float64), device=x0.device).to(traj).reshape((-1,) + (1,) * x0.ndim)
    forcing = keep * (q - a * q_prev)
    c = forcing if c is None else m * c + forcing
    return c, m


class _NetworkFault(Exception):
    """The denoiser raised while the automatic window timed it (``.fault``: what it raised)."""

    def __init__(self, fault: Exception):
        super().__init__(repr(fault))
        self.fault = fault


def _raise_unstarted(exc: BaseException, latents: torch.Tensor, n: int) -> None:
    """Raise what a failed round raises for a failure before the first one (the automatic window's timing calls).

    The solution holds nothing solved: row 0 copied forward, no rounds, ``num_frozen = 1``.
    """
    interrupted = isinstance(exc, KeyboardInterrupt)
    sol = _unstarted(latents, n, trisolve.Status.INTERRUPTED if interrupted else trisolve.Status.FAILED, exc)
    where = "while the automatic window timed the network, before the first round (pass an int window= to skip the timing)"
    if interrupted:
        raise SamplingInterrupted(f"parallel sampling interrupted {where}", sol) from exc
    raise ParallelSamplingError(f"parallel sampling stopped: FAILED: the network raised {where}: {exc!r}", sol) from exc


def _unstarted(latents: torch.Tensor, n: int, status: trisolve.Status, exc: BaseException) -> trisolve.Solution:
    """A solution with nothing solved: row 0 copied forward, no rounds, ``num_frozen = 1``."""
    return trisolve.Solution(
        trajectory=latents.unsqueeze(0).expand(n + 1, *latents.shape).clone(), status=status, num_rounds=0, num_evals=0, num_frozen=1,
        windows=[], round_max_errors=np.zeros(0), error=exc,
    )  # fmt: skip


def _raise_for_status(sol: trisolve.Solution, strict: bool) -> None:
    status = sol.status
    if status is trisolve.Status.INTERRUPTED:
        raise SamplingInterrupted(f"parallel sampling interrupted: {sol.message}", sol) from sol.error
    if status in (trisolve.Status.FAILED, trisolve.Status.NONFINITE):
        raise ParallelSamplingError(f"parallel sampling stopped: {status.name}: {sol.message}", sol) from sol.error
    if not status.ok:  # CONVERGED, or FINAL_ROW_CONVERGED: the output within the final_row_atol the caller chose
        msg = (
            f"parallel sampling ended {status.name} after {sol.num_rounds} rounds with rows {sol.num_frozen}.. not within "
            f"tolerance: the sample may differ from the sequential loop's ({status.message})."
        )
        if strict:
            raise UnconvergedSampleError(msg, sol)
        warnings.warn(msg, UnconvergedSampleWarning, stacklevel=4)  # the caller of a front door (via solve_rows)
