"""The solve driver: the one loop, and the only code that writes the trajectory.

Each round (DESIGN 3-4):

1. evaluate the system on the window ``[lo, hi)`` in one batched call;
2. compute the first-order residual ``F(x) - x`` and the map residual ``G(x) - x`` and their
   scaled errors (:class:`~trisolve.Tolerance`);
3. find ``i*``, the first row that fails the test; rows ``lo .. i*`` take the plain map step;
   row ``lo`` reads only final rows, so it is exact and becomes final, and so do the rows after
   it up to ``i*`` as long as they and the rows between have *settled* (:func:`_freeze_ends`:
   the residual each is expected to show next round, its error times its observed contraction,
   is at most ``FREEZE_FRACTION`` of its threshold), so that no row becomes final with a defect
   that the sample could amplify -- the frozen prefix grows by at least one row per round, hence
   at most ``n`` rounds;
4. the solver proposes values for the rows after ``i*``;
5. the window policy picks the next window; rows entering it start as a copy of the last
   known row (or from ``init``).

A batch of ``S > 1`` independent samples runs these steps per sample by default (each its own
frozen prefix, window and finish): :mod:`trisolve.per_sample`, a subclass of :class:`_Run`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ._backend import device, finite, grad_probe, is_floating, namespace, no_grad, to_host, work_dtype
from ._validate import check_float, check_int
from .compiled import RoundCompiler, check_compile, eager, fused_round
from .defaults import default_method
from .gradients import Adjoint, check_gradients_supported
from .gradients import attach as attach_gradients
from .maps import OneStep, UpdateMap
from .result import NoProgressWarning, RoundInfo, RoundWindows, Solution, Status
from .solvers.base import Solver, StepContext
from .systems import Evaluation, TriangularSystem
from .tolerance import Tolerance, scale_rms
from .windows import WindowPolicy, as_window

__all__ = ["solve"]


def _first(mask: np.ndarray) -> int:
    """Index of the first True in ``mask``, or ``len(mask)``."""
    i = int(np.argmax(mask)) if mask.size else 0  # argmax of a bool array stops at the first True
    return i if mask.size and mask[i] else mask.shape[0]


def _all_finite(a: Any, xp: Any) -> bool:
    return bool(xp.all(xp.isfinite(a)))


def _prepare(system: Any, x0: Any, init: Any, num_frozen: int) -> tuple[Any, Any, int]:
    """Validate the inputs and build the C-contiguous trajectory buffer ``(n + 1, *event)``."""
    arrays = (x0,) if init is None else (x0, init)
    xp = namespace(*arrays)
    if not is_floating(xp, x0.dtype):
        raise TypeError(f"x0 must have a real floating dtype (float16, bfloat16, float32 or float64), got {x0.dtype}.")
    for a in arrays:
        if "meta" in str(device(a)):
            raise ValueError(
                f"{'x0' if a is x0 else 'init'} is on the meta device, which holds no values: create it on a real device (cpu, cuda, ...)."
            )
    if math.prod(x0.shape) == 0:
        raise ValueError(f"x0 has shape {tuple(x0.shape)} with no values: a row needs at least one entry.")
    if not _all_finite(x0, xp):
        raise ValueError("x0 contains nan or inf; every value of row 0 must be finite.")
    n = system.n
    event = tuple(x0.shape)
    if len(event) < system.batch_ndim:
        raise ValueError(f"x0 has {len(event)} axes but the system declares batch_ndim={system.batch_ndim} sample axes.")
    if init is not None:
        if tuple(init.shape) != (n + 1, *event):
            raise ValueError(f"init must have shape (n + 1, *x0.shape) = {(n + 1, *event)}, got {tuple(init.shape)}.")
        if init.dtype != x0.dtype:
            raise TypeError(f"init has dtype {init.dtype} but x0 has {x0.dtype}; convert one of them.")
        if device(init) != device(x0):
            raise ValueError(f"init is on {device(init)} but x0 is on {device(x0)}; move one of them.")
        if not _all_finite(init, xp):
            raise ValueError("init contains nan or inf; a warm start must be finite.")
    elif num_frozen != 1:
        raise ValueError("num_frozen > 1 keeps rows of an earlier trajectory: pass that trajectory as init.")
    # a fresh buffer in the namespace's default (C) order, whatever the strides of x0 / init
    x = xp.empty((n + 1, *event), dtype=x0.dtype, device=device(x0))
    if init is None:
        # every row starts as a copy of row 0, so no row ever holds uninitialised memory; rows
        # entering the window later are refreshed from the last known row
        x[...] = xp.broadcast_to(x0[None, ...], x.shape)
        return xp, x, 1
    x[...] = init
    x[0, ...] = x0
    return xp, x, n + 1


#: What ``solve(fill=)`` takes: how rows entering a sliding window start.
FILLS = ("copy", "linear")


def check_fill(fill: Any, name: str = "fill") -> None:
    """Raise ``ValueError`` unless ``fill`` is one of :data:`FILLS` (``solve(fill=)``, ``SolveOptions(fill=)``,
    ``RoundsModel(window_fill=)``: ``name`` is the argument's, for the message)."""
    if not isinstance(fill, str) or fill not in FILLS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, FILLS))} (how rows entering a sliding window start), got {fill!r}.")


def fill_rows(x: Any, a: int, b: int, fill: str, xp: Any, idx: tuple = ()) -> None:
    """Write rows ``a .. b - 1`` of ``x`` (rows entering the window) from the last known rows, ``x_{a - 1}`` and ``x_{a - 2}``.

    ``"copy"``: each a copy of ``x_{a - 1}``. ``"linear"``: ``x_{a - 1 + k} = x_{a - 1} + k (x_{a - 1} - x_{a - 2})``;
    a copy where ``a < 2`` (only row 0 is known) and entrywise where the line is not finite, so ``x`` stays
    finite. ``idx`` indexes the axes after the row axis (one sample of a batch: ``trisolve.per_sample``).
    Device arithmetic only: no host read, no array built from host data.
    """
    last = x[(slice(a - 1, a), *idx, Ellipsis)]
    shape = (b - a, *last.shape[1:])
    if fill == "copy" or a < 2:
        x[(slice(a, b), *idx, Ellipsis)] = xp.broadcast_to(last, shape)
        return
    with np.errstate(all="ignore"):  # an overflowing line (or a row count beyond a float16's range) is replaced below, not warned about
        k = xp.reshape(xp.astype(xp.arange(1, b - a + 1, device=device(x)), x.dtype), (b - a,) + (1,) * (len(shape) - 1))
        line = last + k * (last - x[(slice(a - 2, a - 1), *idx, Ellipsis)])
        x[(slice(a, b), *idx, Ellipsis)] = xp.where(xp.isfinite(line), line, xp.broadcast_to(last, shape))


def solve(
    system: TriangularSystem,
    solver: Solver | None,
    x0: Any,
    *,
    update_map: UpdateMap | None = None,
    window: WindowPolicy | int | None = None,
    atol: float = Tolerance.atol,  # the defaults' one site: Tolerance
    rtol: float = Tolerance.rtol,
    max_iter: int | None = None,
    early_stop: float | None = None,
    final_row_atol: float | None = None,
    callback: Callable[[RoundInfo], bool | None] | None = None,
    init: Any = None,
    num_frozen: int = 1,
    gradients: bool | Adjoint | None = None,
    record: str = "summary",
    compile: bool = False,
    per_sample: bool = True,
    fill: str = "copy",
) -> Solution:
    """Solve the lower-triangular system ``x_i = F_i(x_0, ..., x_{i-1})`` in parallel rounds.

    Parameters
    ----------
    system : BlackBoxSystem or SemilinearSystem
        The system; ``system.n`` rows are solved.
    solver : Jacobi, Anderson, TriangularAnderson or None
        How the rows after the first unconverged one are updated. ``None``: the default
        method (:func:`trisolve.defaults.default_method`): ``Jacobi()`` on
        ``Newton("dense")`` when Jacobians are available (a ``jacobian=`` callable, or PyTorch
        tensors with at most 256 values per sample; finite differences for other arrays with
        at most 16), else on ``Newton("secant")``; with an
        ``update_map`` given, ``Jacobi()`` on that map.
    x0 : array, shape ``event``
        Row 0. Its namespace, dtype and device are those of the result.
    update_map : UpdateMap, optional
        The fixed-point map: :class:`OneStep` (default when a solver is given),
        :class:`Unrolled` (order ``k``, semilinear systems), :class:`Picard` or
        :class:`Newton`.
    window : WindowPolicy or int, optional
        :class:`FullWindow` (default, also ``None``) or :class:`SlidingWindow`; an int ``W`` means
        ``SlidingWindow(W)`` (the same rule as ``window`` in ``trisolve_diffusion.SolveOptions``).
        The window sets the working memory: with the full window a solve peaks at several
        times the trajectory (measured on 32-byte rows: Jacobi 8x, the default method 18x,
        ``TriangularAnderson`` 29x with ``history_size=2`` and 46x with 4, at any ``n``); an int
        window bounds it (about 2x at ``W = 64``). Docs: theory, "Interrupts, failures and memory".
    atol, rtol : float
        Row ``i`` is converged when ``RMS(F_i(x) - x_i) <= atol + rtol * sigma_i`` (and the
        same for the map residual), per sample; see :class:`Tolerance`, whose fields hold the
        defaults (``atol=1e-6``, ``rtol=0``) and which the result records
        (:attr:`Solution.tolerance`, with ``final_row_atol``). Reuse a kept ``Tolerance`` as
        ``solve(..., **tol.as_kwargs())``: the flat keywords are the one spelling.
    max_iter : int, optional
        Most rounds to run; at most ``n - num_frozen + 1`` are ever needed (the default).
    early_stop : float, optional
        Stop once the final row is in the window and its change made by the previous round,
        scaled like the residual, is ``<= early_stop`` (status ``EARLY_STOPPED``).
    final_row_atol : float, optional
        Output-aware finish: stop once row ``n`` is in the window and its pending correction
        -- the first-order residual ``RMS(F_n(x) - x_n)`` and, for an unrolled map (Picard,
        order k > 1, Newton), the map residual ``RMS(G_n(x) - x_n)`` -- at the iterate the round started from,
        times ``rate / (1 - rate)`` (the error still pending after the round applied it, when the
        iteration contracts at that rate: ``rate`` is the contraction of the correction over the
        last two rounds, or the last one after a single round, per sample, taken as at least 1/3,
        so the estimate is at least half the correction; a rate ``>= 1`` or no previous round
        means "not yet") is ``<= final_row_atol`` for every
        sample (absolute, in the trajectory's units, not scaled by ``sigma``), and every window
        row's correction is too (a row still far from its value would move the final row in
        the next rounds), or that row's pending error after the update by the same estimate
        (its largest correction over samples, its rate read the same way) where that is
        smaller; that round's update is still applied. Status
        ``FINAL_ROW_CONVERGED``, which counts as ``status.ok``: the final row is within this
        tolerance, earlier rows from ``num_frozen`` on may not be. ``None`` (default) runs
        until every row is converged. For images in ``[-1, 1]``, one 8-bit grey level is
        ``2 / 255 ~ 7.8e-3``. With ``gradients``, ignored after its check: the adjoint needs
        every row at the solution, so the solve runs until every row is converged (also when the
        automatic ``gradients=None`` finds that they are needed).
    callback : callable, optional
        Called as ``callback(info: RoundInfo)`` after each round; a true return stops.
    init : array, shape ``(n + 1, *event)``, optional
        Warm start: the initial trajectory (row 0 is replaced by ``x0``). The answer is the
        same; only the rounds change.
    num_frozen : int
        Rows ``0 .. num_frozen - 1`` of ``init`` are taken as final and kept (partial reuse;
        resume with ``num_frozen=solution.num_frozen``).
    gradients : None, bool or Adjoint
        Whether the trajectory is differentiable with respect to ``x0`` and every tensor ``F``
        captures, by the adjoint method (:class:`Adjoint`; ``True`` is ``Adjoint()``), never
        by back-propagating through the rounds. ``None`` (default, automatic): on PyTorch,
        when grad mode is on (not under ``torch.no_grad()``) and ``x0`` requires grad or the
        first evaluation of the first round -- computed anyway, with autograd recording -- does
        (a captured weight, an ``nn.Module``'s parameters); never on NumPy, CuPy or
        array-api-strict. ``False``: never. ``True`` or ``Adjoint(...)``: always (PyTorch
        only: other arrays raise ``TypeError``). The adjoint needs a converged solve: any other
        status raises :class:`SolveError` when gradients were asked for, whose ``.solution``
        keeps the unfinished solve (its trajectory, status and records); in the automatic
        mode the Solution is returned without gradients and a ``UserWarning`` says so. The
        rounds themselves always run without autograd recording (the first evaluation's
        graph is dropped at once), so an ``nn.Module`` in ``F`` keeps no graph per round. Not with a
        system several ranks evaluate (:func:`trisolve.distribute`): ``True`` raises ``ValueError``
        at the call, on every rank; the automatic mode gives none there.
    record : {"summary", "errors"}
        What the solve keeps per round. ``"summary"`` (default): the window and the largest
        scaled error, ``O(rounds)`` memory. ``"errors"``: also every window row's scaled
        error (``Solution.round_errors``, ``Solution.residuals``), ``O(rounds x window)``
        floats -- with the full window on a hard system that is ``O(n^2)``.
    compile : bool
        Run the round's arithmetic outside ``F``'s expensive call -- the end of the system's
        evaluation, the update map's scan, the residuals, the tolerance test's errors, the
        freeze decision, Anderson / TAA mixing -- as one compiled call per round
        (``torch.compile``; on CUDA also replayed as CUDA graphs), cached for the process
        (:mod:`trisolve.compiled`). PyTorch tensors only (``TypeError`` otherwise). Values equal
        the eager round's to the dtype's round-off. Compiling costs time once per process and
        configuration (tens of seconds on a loaded 2-core CPU for a TAA solve's graphs with a
        cold inductor cache, more for a new window length); afterwards the host time of a whole
        digits round outside the network is about 0.56-0.63 of the eager round's there (docs:
        "The compiled round"). ``False`` (default): eager.
    per_sample : bool
        With ``S > 1`` independent samples (``system.batch_ndim > 0``), give every sample its
        own frozen prefix, window and finish (:mod:`trisolve.per_sample`; default ``True``): a
        sample whose rows converged stops costing evaluations -- a
        :class:`~trisolve.SemilinearSystem` evaluates ``g`` only on the ``(row, sample)`` pairs
        in their sample's window (one call, through its ``g_pairs``) -- while slower samples go on;
        each sample ends exact, or by ``final_row_atol`` / ``early_stop`` on its own final row.
        Counted in ``stats["sample_evals"]`` and :attr:`Solution.round_sample_evals`; the
        per-sample prefixes are :attr:`Solution.sample_frozen` (``num_frozen`` is their
        minimum, so a resume with ``init=``, ``num_frozen=`` works as before). A non-finite ``F``
        at a sample's row that reads only final rows stops that sample there; the others go on,
        and the solve ends ``NONFINITE`` naming the sample and the row. Lockstep -- one window
        and one frozen prefix for the whole batch, a row final when every sample passed -- with
        ``False``, and always with ``compile=True`` (the compiled round is the lockstep one),
        on a system several ranks share (``num_ranks > 1``) and with one sample (``S == 1``:
        the same solve bitwise).
    fill : {"copy", "linear"}
        How rows entering a sliding window start (with the full window every row starts as a
        copy of row 0). ``"copy"`` (default): each is a copy of the last row that holds an
        iterate, ``x_a``. ``"linear"``: the last step continued, ``x_{a + k} = x_a + k (x_a -
        x_{a - 1})`` (a copy while only row 0 is known; entrywise a copy where the line is not
        finite), per sample. The answer is the same; only the rounds change: on trajectories
        that move smoothly from row to row -- a diffusion sampler's rows,
        ``trisolve_diffusion``'s default -- ``"linear"`` takes fewer rounds (digits DDIM-50, a
        window of 9 rows: 17 -> 15, ``benchmarks/rounds.py --window 9 --fill copy``). On a
        trajectory that turns at every row (an oscillation, a map with no smooth limit) the
        line can start farther off than the copy.

    Returns
    -------
    Solution
        Trajectory ``(n + 1, *event)``, status, rounds, evaluations, per-round residuals, the
        tolerance used.

    Raises
    ------
    DistributedError
        On a system several ranks share (:func:`trisolve.distribute`, ``system.num_ranks > 1``):
        before the first round, on every rank, when the ranks' arguments differ (solver, row 0,
        options, ``init``; whether a callback is given, not which). Failures during the rounds
        end the solve ``FAILED`` with the :class:`~trisolve.DistributedError` in
        ``solution.error``, as any other failure.

    Notes
    -----
    Interrupts and failures keep the work: a ``KeyboardInterrupt`` anywhere in the round loop
    returns the :class:`Solution` with status ``INTERRUPTED``; an exception from any code the
    rounds call -- ``F`` (the system), the update map, the solver's ``step`` and ``stats``, the
    window policy (also one that returns an invalid window), the callback -- returns it with
    ``FAILED`` and the exception in ``solution.error``. (Errors before the first round -- bad
    arguments, a solver's ``init``, a map's ``prepare``, a system's ``new_cache`` -- raise: no
    work exists yet.) In every case rows before
    ``num_frozen`` are final and the trajectory holds only finite values, so
    ``solve(..., init=sol.trajectory, num_frozen=sol.num_frozen)`` resumes.

    Memory: the trajectory ``(n + 1, *event)``, the system's kept values, ``O(window x event)``
    working arrays (times the history size for Anderson), and 24 bytes of records a round
    (:attr:`Solution.windows`, :attr:`Solution.round_max_errors`) unless ``record="errors"``.

    Host traffic: the per-solve tables (thresholds, the map's coefficients, the system's
    coefficients) move to the device once, before the first round. Each round then reads
    one small vector from the device -- the per-row errors, finiteness flags and the finish
    tests -- and builds no array from host data; a per-sample round (``per_sample``) reads its
    errors per row and sample in that same one read, and sends its small ``(w, S)`` masks of
    which pairs are active and written to the device (two or three host-built arrays a round).
    A compiled solve keeps the freeze rule's per-row state on the device from its first fused
    round on (a solve whose solver fuses no round keeps it on the host); a later round whose rule
    runs on the host (unfused, or after a second read) reads the window's state and writes it
    back, ``(w, 2)`` float64 each way.

    Examples
    --------
    >>> import numpy as np, trisolve
    >>> sys = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1]) + 0.1, n=100)
    >>> sol = trisolve.solve(sys, trisolve.Jacobi(), np.zeros(2), atol=1e-12)
    >>> ref = trisolve.forward_substitution(sys, np.zeros(2))
    >>> bool(np.allclose(sol.trajectory, ref, atol=1e-10)), sol.num_rounds <= 100
    (True, True)
    """
    if not isinstance(system, TriangularSystem):
        raise TypeError(
            f"system must be a trisolve.TriangularSystem (BlackBoxSystem, SemilinearSystem or your subclass), got {type(system).__name__}."
        )
    # solver=None: the default method (trisolve.defaults); a given map keeps its plain Jacobi solver
    if solver is None:
        solver, default_map = default_method(system, x0)
        update_map = default_map if update_map is None else update_map
    tolerance = Tolerance(atol=atol, rtol=rtol, final_row_atol=final_row_atol)  # checked here, recorded on the result
    adjoint, auto = _check_gradients(gradients, x0, system)
    compile = check_compile(compile, x0)
    check_fill(fill)  # before the ranks compare their arguments: a bad value is the caller's error on every rank
    if system.num_ranks > 1:  # every rank must solve with the same arguments: checked on every rank before the first round
        system.agree(solver=solver, x0=x0, update_map=update_map, window=window, tolerance=tolerance, max_iter=max_iter,
                     early_stop=early_stop, callback=callback is not None, init=init, num_frozen=num_frozen, gradients=gradients,
                     record=record, compile=compile, per_sample=per_sample, fill=fill)  # fmt: skip
    # the rounds never record autograd graphs: gradients come from the adjoint, not from the rounds
    with no_grad(namespace(x0)):
        solution, needs_grad = _solve(system, solver, x0, update_map=update_map, window=window, atol=atol, rtol=rtol, max_iter=max_iter,
                                      early_stop=early_stop, final_row_atol=final_row_atol, callback=callback, init=init,
                                      num_frozen=num_frozen, record=record, gradients=adjoint is not None and not auto,
                                      probe=adjoint is not None and auto, compile=compile, per_sample=per_sample, fill=fill)  # fmt: skip
    solution = dataclasses.replace(solution, tolerance=tolerance)
    if not needs_grad:
        return solution
    if auto and solution.status is not Status.CONVERGED:
        warnings.warn(
            f"the trajectory is not differentiable: F's values require grad (gradients=None found them), but the solve ended "
            f"with {solution.status.name} and the adjoint exists only at the solution. Raise max_iter or pass gradients=False.",
            UserWarning,
            stacklevel=2,
        )
        return solution
    return attach_gradients(solution, system, x0, adjoint)


def _check_gradients(gradients: Any, x0: Any, system: TriangularSystem) -> tuple[Adjoint | None, bool]:
    """``gradients=`` as ``(adjoint settings or None, automatic)``: the settings when gradients may be needed.

    Automatic (``None``): settings only on PyTorch with grad mode on; whether they are needed is
    decided by ``x0.requires_grad`` and the first evaluation (:class:`_Run`).
    """
    if gradients is False:
        return None, False
    if gradients is None:
        from array_api_compat import is_torch_array

        if not is_torch_array(x0):
            return None, False
        import torch

        # several ranks: the collectives carry no graph, and the adjoint cannot run on every rank in step
        return (Adjoint(), True) if torch.is_grad_enabled() and system.num_ranks == 1 else (None, False)
    if gradients is True:
        gradients = Adjoint()
    if not isinstance(gradients, Adjoint):
        raise TypeError(f"gradients must be None (automatic), True, False or trisolve.Adjoint(...), got {type(gradients).__name__}.")
    check_gradients_supported(x0)
    ranks = system.num_ranks
    if ranks > 1:  # refused on every rank at the call (each calls the same solve), before any collective
        raise ValueError(
            f"gradients= is not with several ranks ({ranks} share this system's evaluations): the adjoint's backward "
            "evaluations would have to run on every rank in step. Solve without gradients here, and take gradients from a "
            "single-process trisolve.solve(system, ..., gradients=True) on the undistributed system."
        )
    return gradients, False


def _solve(
    system: TriangularSystem,
    solver: Solver,
    x0: Any,
    *,
    update_map: UpdateMap | None = None,
    window: WindowPolicy | int | None = None,
    atol: float,
    rtol: float,
    max_iter: int | None = None,
    early_stop: float | None = None,
    final_row_atol: float | None = None,
    callback: Callable[[RoundInfo], bool | None] | None = None,
    init: Any = None,
    num_frozen: int = 1,
    record: str = "summary",
    gradients: bool = False,
    probe: bool = False,
    compile: bool = False,
    per_sample: bool = True,
    fill: str = "copy",
) -> tuple[Solution, bool]:
    """The rounds of :func:`solve` (its arguments, already defaulted), and whether the result needs the adjoint.

    ``gradients``: the adjoint was asked for. ``probe``: decide it from ``x0.requires_grad`` and
    whether the first evaluation's values require grad (PyTorch, grad mode on at the call).
    ``compile``: the round's arithmetic runs compiled (:mod:`trisolve.compiled`). ``per_sample``:
    each sample its own frozen prefix and window where it applies (:mod:`trisolve.per_sample`).
    """
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a trisolve solver (Jacobi(), TriangularAnderson(), ...), got {type(solver).__name__}.")
    if not isinstance(system, TriangularSystem):
        raise TypeError(
            f"system must be a trisolve.TriangularSystem (BlackBoxSystem, SemilinearSystem or your subclass), got {type(system).__name__}."
        )
    update_map = OneStep() if update_map is None else update_map
    if not isinstance(update_map, UpdateMap):
        raise TypeError(f"update_map must be OneStep(), Unrolled(order) or Picard(order), got {type(update_map).__name__}.")
    update_map.check(system)
    window = as_window(window)
    tol = Tolerance(atol=atol, rtol=rtol)
    n = system.n
    num_frozen = check_int("num_frozen", num_frozen, 1)
    if num_frozen > n + 1:
        raise ValueError(f"num_frozen must be <= n + 1 = {n + 1}, got {num_frozen}.")
    max_iter = n - num_frozen + 1 if max_iter is None else check_int("max_iter", max_iter, 0)
    if early_stop is not None:
        early_stop = check_float("early_stop", early_stop, 0.0, hint="or None")
    if final_row_atol is not None:
        final_row_atol = check_float("final_row_atol", final_row_atol, 0.0, hint="or None")
    if record not in ("summary", "errors"):
        raise ValueError(f"record must be 'summary' or 'errors', got {record!r}.")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}.")
    if not isinstance(per_sample, (bool, np.bool_)):
        raise TypeError(f"per_sample must be True or False, got {type(per_sample).__name__}.")

    xp, x, filled = _prepare(system, x0, init, num_frozen)
    gradients = gradients or (probe and bool(x0.requires_grad))
    if gradients:  # the adjoint needs every row at the solution: no output-aware finish (checked above)
        final_row_atol = None
    samples = math.prod(x.shape[1 : 1 + system.batch_ndim]) if system.batch_ndim else 1
    if per_sample and samples > 1 and not compile and system.num_ranks == 1:
        from .per_sample import SampleRun as run_class  # each sample its own prefix, window and finish
    else:
        run_class = _Run
    run = run_class(
        system=system,
        solver=solver,
        update_map=update_map,
        window=window,
        tol=tol,
        xp=xp,
        x=x,
        filled=filled,
        lo=num_frozen,
        max_iter=max_iter,
        early_stop=early_stop,
        final_row_atol=final_row_atol,
        callback=callback,
        record=record,
        probe=probe and not gradients,
        compile=compile,
        fill=fill,
    )
    # anywhere in the loop -- the system, the map, the solver's step, the window policy, the
    # callback, or the driver itself -- the rows before run.lo are final and x is finite (the
    # invariant of _Run): the work is kept, never lost to an exception
    try:
        status, error = run.loop()
    except KeyboardInterrupt as exc:
        status, error = Status.INTERRUPTED, exc
    except Exception as exc:  # kept on the Solution, never swallowed: status FAILED + error
        status, error = Status.FAILED, exc
    return run.solution(status, error), gradients or run.grad_seen


class _Run:
    """The state of one solve and its round loop.

    Invariant (what an interrupt at any point keeps): rows ``< self.lo`` are final, and every
    row of ``self.x`` is finite. The loop writes a round's rows first and advances ``lo``
    after, so an interrupt between the two only leaves ``lo`` conservative.
    """

    def __init__(self, *, system, solver, update_map, window, tol, xp, x, filled, lo, max_iter, early_stop, final_row_atol, callback, record,
                 probe=False, compile=False, fill="copy"):  # fmt: skip
        self.system, self.solver, self.update_map, self.window, self.tol = system, solver, update_map, window, tol
        self.fill = fill
        self.xp, self.x, self.filled, self.lo = xp, x, filled, lo
        self.max_iter, self.early_stop, self.final_row_atol, self.callback = max_iter, early_stop, final_row_atol, callback
        self.n = system.n
        self.rounds = self.evals = 0
        self.records = _Records()  # O(rounds): 24 bytes a round
        self.watch = _ProgressWatch(update_map)
        self.row_errors: list[np.ndarray] | None = [] if record == "errors" else None  # O(rounds x window), opt-in
        self.state = solver.init()
        # per-solve tables, on the device, built once
        self.cache = system.new_cache(x, xp=xp)
        self.tables = update_map.prepare(system, x, xp=xp)
        self.thr = tol.device_thresholds(system.sigma, xp=xp, device=device(x))  # (n,) rows 1..n
        self.thr_host = tol.thresholds(system.sigma)  # the same, host float64
        # the plain RMS decides every round unless a threshold is so small that underflowing squares could matter
        self.careful = bool(np.min(self.thr_host, initial=np.inf) < tol.fast_floor(xp, x.dtype))
        self.linear = system.linear_rows  # (n + 1,) host bool
        self.prev_last = None  # the final row's iterate at the previous round (early_stop)
        self.settle = _settle_state((self.n + 1,))  # (n + 1, 2) each row's last scaled error and pass streak (_freeze_ends)
        # final_row_atol: the final row's pending correction per sample at the two previous rounds, and every
        # row's unscaled correction at the two last rounds it was checked (nan: not yet)
        self.prev_correction: list[np.ndarray] = []
        self.prev_rows = None if final_row_atol is None else np.full((2, self.n + 1), np.nan)  # 16 bytes a row, only then
        self.samples = math.prod(x.shape[1 : 1 + system.batch_ndim]) if system.batch_ndim else 1
        self.probe = probe  # gradients=None: check whether the first evaluation's values require grad
        self.grad_seen = False  # ... and they did: the solve runs to the tolerance and gets the adjoint
        # the round's pure device functions: compiled (trisolve.compiled) or as written
        self.jit = RoundCompiler(getattr(device(x), "type", str(device(x)))) if compile else eager
        # compiled, with a map whose scan can be traced: the round as one compiled call (_fused_round)
        self.fused = compile and update_map.compilable and type(update_map).apply is UpdateMap.apply and not update_map.damped
        # a fused round decides the freeze rule on the device (_freeze_ends_device), in float64: its state moves there
        # at the first round the solver offers a fused step for (_fused_round), never for a solve that fuses no round
        self.settle_to_device = self.fused and work_dtype(xp, device(x)) == xp.float64

    def _evaluate(self, lo: int, hi: int, samples: tuple[np.ndarray, np.ndarray] | None = None) -> Any:
        """The system's evaluation of rows ``[lo, hi)``; the first one also answers whether ``F`` requires grad.

        ``samples``: ``(sample_lo, sample_hi)``, each sample's own rows (a per-sample solve,
        :meth:`TriangularSystem.evaluate_samples`). Under ``gradients=None`` the first evaluation
        runs with autograd recording (one cheap check on a value computed anyway); its values are
        detached at once, so no round keeps a graph. When they require grad the solve needs the
        adjoint: no output-aware finish.
        """
        system, x, cache, xp = self.system, self.x, self.cache, self.xp

        def evaluate() -> Evaluation:
            if samples is None:
                return system.evaluate(x, lo, hi, cache, xp=xp)
            return system.evaluate_samples(x, lo, hi, *samples, cache, xp=xp)

        if not self.probe:
            return evaluate()
        self.probe = False
        with grad_probe(xp):
            ev = evaluate()
        if ev.f.requires_grad:
            self.grad_seen, self.final_row_atol = True, None
            ev = dataclasses.replace(ev, f=ev.f.detach())
        return ev

    def solution(self, status: Status, error: BaseException | None) -> Solution:
        try:  # the solver's and the map's counters, read once at the end
            stats = {**self.solver.stats(self.state), **self.update_map.stats(self.tables)}
            evals = self.evals + self.update_map.num_evals(self.tables)  # + F evaluations of finite-difference Jacobians
        except Exception as exc:  # a solver's or map's own stats failed: the trajectory is kept, the failure said
            stats, evals = {}, self.evals
            if error is None:
                status, error = Status.FAILED, exc
        return Solution(
            trajectory=self.x,
            status=status,
            num_rounds=self.rounds,
            num_evals=evals,
            num_frozen=self.lo,
            windows=self.records.windows(),
            round_max_errors=self.records.max_errors(),
            round_errors=self.row_errors,
            error=error,
            stats=stats,
            sample_frozen=np.full(self.samples, self.lo, dtype=np.int64),
        )

    def _window(self, lo: int | None = None) -> int:
        """The window policy's end for the first non-final row ``lo`` (default ``self.lo``), checked."""
        lo, n = self.lo if lo is None else lo, self.n
        hi = self.window.end(lo, n)
        if isinstance(hi, bool) or not isinstance(hi, numbers.Integral) or not lo < hi <= n + 1:
            raise ValueError(
                f"window policy {self.window!r} returned end {hi!r} for lo = {lo}, n = {n}: a window [lo, hi) needs "
                f"lo < hi <= n + 1 (at least one row, none past row n)."
            )
        return int(hi)

    def _flags(self, last: bool, per_sample: bool = False) -> tuple[dict, Any]:
        """:func:`_round_arrays`' static flags and its ``prev_last`` for a round (``last``: row ``n`` is in the window;
        ``per_sample``: the decisions per row and sample, :mod:`trisolve.per_sample`, never compiled)."""
        flags = dict(thresholds_positive=self.tol.atol > 0, batch_ndim=self.system.batch_ndim, careful=self.careful,
                     one_step=self.update_map.is_one_step, retain=self.solver.retains_iterate,
                     final=last and self.final_row_atol is not None, per_sample=per_sample)  # fmt: skip
        return flags, self.prev_last if last and self.early_stop is not None else None

    def _fused_round(self, lo: int, hi: int, last: bool) -> tuple[Evaluation, tuple, tuple] | None:
        """The round's evaluation and arithmetic, up to the host read, as one compiled call (:func:`trisolve.compiled.fused_round`).

        Returns ``(ev, (G, R, d, xw, decisions), (step, rows, outputs, c, settle))`` -- ``rows`` the window's
        rows as written when the host's decisions match the device's (:meth:`_fused_rows`), ``c``
        the solver's checks at the end of ``decisions``, ``settle`` the freeze rule's new state of the
        window's rows when it ran on the device (its freeze end then just before ``start`` in
        ``decisions``; :meth:`_freeze`), else ``None`` -- or ``None`` when the solver offers no
        :meth:`~trisolve.Solver.fused_step` (then the round runs unfused).
        """
        xp, x, m = self.xp, self.x, self.update_map
        step = self.solver.fused_step(self.state, lo, hi, xp=xp)
        if step is None:
            return None
        if self.settle_to_device and isinstance(self.settle, np.ndarray):  # host to device: no read
            self.settle = xp.asarray(self.settle, device=device(x))
        assemble, inputs, num_evals = self.system.evaluate_parts(x, lo, hi, self.cache, xp=xp)
        flags, prev_last = self._flags(last)
        J = None if m.is_one_step else m.linear_part(self.tables, x, None, lo, hi, xp=xp)  # a compilable map's: tables only
        xv = x[lo:hi, ...]
        freeze = None if isinstance(self.settle, np.ndarray) else _freeze_ends_device  # the rule on the device, its state there
        key = ("fused", type(m), m.order, J is None, prev_last is None, assemble, step.fn, step.key, freeze is None, *flags.values())
        f, (g, r, d, xw, dec), rows, outputs, settle, checks = self.jit(fused_round, key)(
            _round_arrays, _sanitize, assemble, inputs, m, J, xv, self.thr[lo - 1 : hi - 1], self.thr[-1:], prev_last, step.fn, step.arrays,
            freeze, None if freeze is None else self.settle[lo:hi], flags=flags, batch_ndim=self.system.batch_ndim, xp=xp)  # fmt: skip
        return Evaluation(f=f, num_evals=num_evals), (g, r, d, xw if flags["retain"] else xv, dec), (step, rows, outputs, checks, settle)

    def _freeze(self, err: np.ndarray, lo: int, hi: int, start: int, device_rule: tuple | None) -> int:
        """Where the round's final rows end (window-local), by the freeze rule, and its state of the rows ``[lo, hi)`` updated.

        ``device_rule``: ``(end, state)`` from the fused round (:func:`_freeze_ends_device`), taken when
        the host's ``start`` is the device's; else :func:`_freeze_ends` on the host, on the state read from
        the device where a fused solve keeps it there (a round after a second read, or unfused).
        """
        if device_rule is not None:
            end, self.settle[lo:hi] = device_rule
            return int(end)
        on_device = not isinstance(self.settle, np.ndarray)
        state = to_host(self.settle[lo:hi]) if on_device else self.settle[lo:hi]
        freeze, settle = _freeze_ends(err[:, None], state[:, None], np.zeros(1, dtype=np.int64), np.array([start]))
        if on_device:
            self.settle[lo:hi] = self.xp.asarray(settle[:, 0], device=device(self.x))
        else:
            self.settle[lo:hi] = settle[:, 0]
        return int(freeze[0])

    def _fused_rows(self, fused: tuple, ctx: StepContext, host: np.ndarray) -> Any:
        """The fused round's window rows when the host decided as the device did (same ``start``, the solver's ``finish``
        takes its proposal: the state advances), else ``None`` (the round goes on unfused: ``step`` and ``_sanitize``).

        ``host``: the round's read, ending in the device's ``start`` and the solver's ``c`` checks."""
        step, rows, outputs, c, _ = fused
        if host[-1 - c] != ctx.start:
            return None
        taken, state = step.finish(ctx, outputs, host[host.shape[0] - c :])
        if not taken:
            return None
        self.state = state
        return rows

    def _round_arrays(self, f: Any, lo: int, hi: int, last: bool, per_sample: bool = False) -> tuple[Any, Any, Any, Any, Any]:
        """``(G, R, d, xw, decisions)`` of the round (:func:`_round_arrays`), compiled when the solve is."""
        xp, x, m = self.xp, self.x, self.update_map
        flags, prev_last = self._flags(last, per_sample)
        retain = flags["retain"]
        xv = x[lo:hi, ...]
        # a compiled solve runs the map's scan inside the compiled function -- unless a subclass overrides apply
        if self.jit is not eager and m.compilable and type(m).apply is UpdateMap.apply:
            J, g, r = None if m.is_one_step else m.linear_part(self.tables, x, f, lo, hi, xp=xp), None, None
        else:
            J, (g, r) = None, m.apply(self.tables, x, f, lo, hi, xp=xp)
        key = ("round", type(m), m.order, g is None, J is None, prev_last is None, *flags.values())
        g, r, d, xw, dec = self.jit(_round_arrays, key)(m, J, g, r, xv, f, self.thr[lo - 1 : hi - 1], self.thr[-1:], prev_last, xp=xp, **flags)
        return g, r, d, (xw if retain else xv), dec

    def _decisions_again(self, d: Any, r: Any, g: Any, xw: Any, lo: int, hi: int, last: bool, per_sample: bool = False) -> Any:
        """The round's decision vector recomputed with the careful RMS (eager): after a plain RMS read ``inf``."""
        prev_last = self.prev_last if last and self.early_stop is not None else None
        return _decisions(d, r, g, xw, self.thr[lo - 1 : hi - 1], self.thr[-1:], prev_last, thresholds_positive=self.tol.atol > 0,
                          batch_ndim=self.system.batch_ndim, careful=True, one_step=self.update_map.is_one_step,
                          final=last and self.final_row_atol is not None, xp=self.xp, per_sample=per_sample)  # fmt: skip

    def loop(self) -> tuple[Status, BaseException | None]:
        """Run rounds until a stop; return the status and the error that ended the solve, if any."""
        xp, x, n = self.xp, self.x, self.n
        batch_ndim = self.system.batch_ndim
        one_step = self.update_map.is_one_step
        damped = self.update_map.damped
        while self.lo <= n:
            if self.rounds >= self.max_iter:
                return Status.MAX_ITER, None
            lo = self.lo
            hi = self._window()
            w = hi - lo
            if hi > self.filled:  # rows entering the window start from the last known rows (``fill``)
                fill_rows(x, self.filled, hi, self.fill, xp)
                self.filled = hi
            last = hi == n + 1
            # compiled: the evaluation's last arithmetic, the round's and the solver's in one call, which also
            # proposes the window's rows (taken below where the host decides as the device did)
            fused = self._fused_round(lo, hi, last) if self.fused and not self.probe else None
            ev = self._evaluate(lo, hi) if fused is None else None
            with np.errstate(all="ignore"):  # non-finite residuals are flagged (nan), not warned about
                # G(x) rows, R = G - x, the first-order residual d, the window's iterate xw (a copy when the
                # solver keeps it: the buffer is written below), all (w, *event), and the decisions vector
                if fused is None:
                    g, r, d, xw, decisions = self._round_arrays(ev.f, lo, hi, last)
                else:
                    ev, (g, r, d, xw, decisions), fused = fused
                self.rounds += 1
                self.evals += ev.num_evals
                host = to_host(decisions)  # the one device-to-host read of the round
                # the freeze rule decided on the device: its end and the rows' new state (used where the host's start matches)
                frozen = None if fused is None or fused[4] is None else (host[-1 - fused[3]], host[-2 - fused[3]], fused[4])
                if not self.careful and np.isinf(host).any():
                    # a plain RMS overflowed (or a residual holds an inf): a second read, only then
                    host, fused, frozen = to_host(self._decisions_again(d, r, g, xw, lo, hi, last)), None, None
            e_d = np.array(host[:w])  # a copy: the records keep it, not the whole vector
            pos = w
            if one_step:
                err = e_d
                g_ok = ~np.isnan(e_d)  # G = F; conservative: a nan may also be an overflowing F - x
            else:
                e_R = host[pos : pos + w]
                g_ok = host[pos + w : pos + 2 * w] > 0.5
                pos += 2 * w
                err = np.where(np.isnan(e_d) | np.isnan(e_R), np.nan, np.maximum(e_d, e_R))
            final_ok = change = None
            if last and self.final_row_atol is not None:
                # and no earlier step still has a larger pending correction (unscaled: err x thr): the
                # next round would carry it into the final row (a stalled row stays stalled downstream)
                # -- or its pending error after this round's update, where its own observed contraction is
                # faster than 1/2 (then that estimate is the smaller one; a row that does not contract keeps the first test)
                rows = err * self.thr_host[lo - 1 : hi - 1]
                rows_ok = bool(np.all(np.minimum(rows, _pending_error(rows, *self.prev_rows[:, lo:hi])) <= self.final_row_atol))
                self.prev_rows[1, lo:hi] = self.prev_rows[0, lo:hi]
                self.prev_rows[0, lo:hi] = rows
                correction = np.array(host[pos : pos + self.samples])
                # the final row: its pending error after the update (never below correction / 2: PENDING_RATE_FLOOR)
                pending = _pending_error(correction, *self.prev_correction)
                final_ok = bool(np.all(pending <= self.final_row_atol)) and rows_ok
                self.prev_correction = [correction, *self.prev_correction[:1]]
                pos += self.samples
            if last and self.early_stop is not None:
                if self.prev_last is not None:
                    change = float(host[pos])
                self.prev_last = xp.asarray(xw[-1:, ...], copy=True)  # xw may be a view of the buffer
            self.records.append(lo, hi, float(np.nan if np.isnan(err).any() else err.max()))
            if self.row_errors is not None:
                self.row_errors.append(err)

            istar = _first(~(err <= 1.0))  # first unconverged (nan compares False: unconverged)
            start = min(istar + 1, w)  # rows [0, start) take the plain step (_freeze_ends: which of them become final)
            if istar < w and not np.isfinite(e_d[istar]) and not _all_finite(ev.f[istar, ...], xp):
                # row lo + istar reads only final rows, and F is not finite there: a genuine failure.
                # (The second read of this round happens only here: a residual that is not finite
                # at a row that reads only final rows ends the solve, unless F itself is finite
                # and only the difference to an exploded iterate overflowed.)
                if istar:
                    x[lo : lo + istar, ...] = g[:istar, ...]
                self.lo = lo + istar
                i = self.lo
                return Status.NONFINITE, nonfinite_row_error(i)
            i = start - 1  # the last row that takes the plain step (i*, or the window's last row)
            if not g_ok[i] or (damped and istar < w):
                # F is finite there, but F + J delta overflowed (values near the dtype's limit), or
                # G is a damped step (ELK), not the map's plain step there: it takes the one-step
                # value F_i instead (exact when it reads only final rows)
                g = xp.concat([g[:i, ...], ev.f[i : i + 1, ...], g[i + 1 :, ...]], axis=0)
                g_ok[i], fused = True, None
            tail = rows = None  # the solver's rows [start, w), when they are not g's; the fused round's whole window
            if start < w:
                with np.errstate(all="ignore"):  # a proposal may overflow: _sanitize replaces it
                    ctx = StepContext(x=xw, g=g, r=r, errors=err, lo=lo, hi=hi, start=start, batch_ndim=batch_ndim, xp=xp, jit=self.jit)
                    rows = None if fused is None else self._fused_rows(fused, ctx, host)
                    if rows is None:
                        proposal, self.state = self.solver.step(ctx, self.state)
                        plain_ok = bool(g_ok[start:].all())  # the plain step's rows, known finite from the round's read
                        if not (proposal is g and plain_ok):  # rows with nan/inf fall back on the device (no host read)
                            plain = None if proposal is g else g[start:, ...]
                            tail = _sanitize(proposal[start:, ...], plain, g[start - 1 : start, ...], xp, plain_finite=plain_ok)
            # rows [lo, lo + start) final, the rest the next iterate (two writes rather than a concatenated copy)
            if rows is not None:
                x[lo:hi, ...] = rows
            elif tail is None:
                x[lo:hi, ...] = g
            else:
                x[lo : lo + start, ...] = g[:start, ...]
                x[lo + start : hi, ...] = tail
            # rows [0, start) took the plain step; those before the first unsettled one after row 0 become final
            start = self._freeze(err, lo, hi, start, None if frozen is None or frozen[0] != start else frozen[1:])
            # a linear row (no g term) right after the frozen prefix reads only final rows: it is
            # exact now, without an evaluation, and freezes in this round too
            while lo + start < hi and self.linear[lo + start]:
                x[lo + start, ...] = self.system.linear_step(x, lo + start, self.cache, xp=xp)
                start += 1
            self.lo = lo + start  # only after the rows are written
            self.watch.round(frozen=self.lo - lo, w=w, max_error=float(self.records.errors[self.records.k - 1]), remaining=n + 1 - self.lo)
            # the callback sees every round, the last one included
            stop = False
            if self.callback is not None:  # an exception here is kept like any other (status FAILED, _solve)
                stop = bool(self.callback(RoundInfo(self.rounds, lo, hi, self.lo, err, x)))
            if self.lo > n:
                break
            if final_ok:
                return Status.FINAL_ROW_CONVERGED, None
            if change is not None and change <= self.early_stop:
                return Status.EARLY_STOPPED, None
            if stop:
                return Status.STOPPED_BY_CALLBACK, None
        return Status.CONVERGED, None


def _round_arrays(update_map: UpdateMap, J: Any, g: Any, r: Any, xw: Any, f: Any, thr_w: Any, thr_last: Any, prev_last: Any, *,
                  thresholds_positive: bool, batch_ndim: int, careful: bool, one_step: bool, retain: bool, final: bool,
                  xp: Any, per_sample: bool = False) -> tuple[Any, Any, Any, Any, Any]:  # fmt: skip
    """The round's arithmetic before the host read: ``(G, R, d, xw copy or None, decisions)``.

    ``xw`` is the window's iterate (a view of the trajectory), ``f`` the evaluation ``F`` of its
    rows. With ``g is None`` the map's scan runs here (``update_map.combine(J, f, f - xw)``: a
    :attr:`~trisolve.UpdateMap.compilable` map); else ``g, r`` are the map's values. ``d`` is
    the first-order residual ``F - x`` (``R`` itself for a one-step map); ``retain``: the copy
    of ``xw`` a solver keeps past the round. Pure device arithmetic: the compiled round
    (:mod:`trisolve.compiled`) traces it.
    """
    if g is None:
        g, r = update_map.combine(J, f, f - xw, xp=xp)
    copy = xp.asarray(xw, copy=True) if retain else None
    d = r if one_step else f - xw  # first-order residual (the one-step map's R is it)
    decisions = _decisions(d, r, g, xw, thr_w, thr_last, prev_last, thresholds_positive=thresholds_positive, batch_ndim=batch_ndim,
                           careful=careful, one_step=one_step, final=final, xp=xp, per_sample=per_sample)  # fmt: skip
    return g, r, d, copy, decisions


def _decisions(d: Any, r: Any, g: Any, xw: Any, thr_w: Any, thr_last: Any, prev_last: Any, *, thresholds_positive: bool,
               batch_ndim: int, careful: bool, one_step: bool, final: bool, xp: Any, per_sample: bool = False) -> Any:  # fmt: skip
    """Everything the host decides on in a round, gathered into one device vector.

    ``e_d`` (w,), then for an unrolled map ``e_R`` (w,) and ``G`` finite (w,), then, with
    ``final`` (the last row is in the window and ``final_row_atol`` asked for), the final row's
    pending correction per sample (S,), and with ``prev_last`` (``early_stop``: the final row's
    previous iterate) its change since the last round (1,). ``per_sample`` (a per-sample solve,
    :mod:`trisolve.per_sample`): ``e_d``, ``e_R`` and ``G`` finite per row and sample, ``(w * S,)``
    each (row-major), and the change per sample ``(S,)``.
    """
    scale = dict(thresholds_positive=thresholds_positive, batch_ndim=0 if per_sample else batch_ndim, xp=xp)
    if per_sample:  # per row and sample: the thresholds broadcast over the samples, and nothing is reduced
        thr_w, thr_last = thr_w[:, None], thr_last[:, None]
    rms_d = Tolerance.sample_rms(d, batch_ndim=batch_ndim, xp=xp, careful=careful)  # per sample: (w, S) or (w,)
    parts = [xp.reshape(scale_rms(rms_d, thr_w, **scale), (-1,))]  # e_d      (w,) or (w * S,)
    if not one_step:
        rms_r = Tolerance.sample_rms(r, batch_ndim=batch_ndim, xp=xp, careful=careful)
        parts.append(xp.reshape(scale_rms(rms_r, thr_w, **scale), (-1,)))  # e_R      (w,) or (w * S,)
        if per_sample:
            w, S = rms_r.shape
            g_ok = finite(xp.sum(xp.reshape(g, (w, S, -1)), axis=2), xp)  # (w, S): the pair's sum is finite
            parts.append(xp.reshape(xp.astype(g_ok, thr_w.dtype), (-1,)))  # G finite (w * S,)
        else:
            parts.append(xp.astype(_row_finite(g, xp)[(slice(None),) + (0,) * (len(g.shape) - 1)], thr_w.dtype))  # G finite (w,)
    if final:
        # unscaled RMS of row n's pending correction, max over samples: the first-order
        # residual and, with an unrolled map, the map residual G_n - x_n too (a last step
        # that is nearly the identity has a small one-step residual at any input)
        rms = rms_d[-1:, ...] if one_step else xp.maximum(rms_d[-1:, ...], rms_r[-1:, ...])
        parts.append(xp.reshape(rms, (-1,)))  # per sample (S,): each contracts at its own rate
    if prev_last is not None:
        change = Tolerance.sample_rms(xw[-1:, ...] - prev_last, batch_ndim=batch_ndim, xp=xp, careful=careful)
        parts.append(xp.reshape(scale_rms(change, thr_last, **scale), (-1,)))  # (1,) or (S,)
    return xp.concat(parts, axis=0)


def _freeze_ends(err: np.ndarray, state: np.ndarray, a: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each sample's final rows end after a round, and the rows' new state: ``(freeze (S,), state (w, S, 2))``.

    The freeze rule of both round loops (:class:`_Run` and :class:`~trisolve.per_sample.SampleRun`;
    lockstep passes ``S = 1``). ``err`` ``(w, S)``: the round's scaled errors of the window's rows
    (the larger of the one-step and the map residual); ``state`` ``(w, S, 2)``: per row, its
    scaled error in the last round that evaluated it (``inf`` before any: :func:`_settle_state`)
    and how many consecutive rounds it passed the step test taking the plain step; ``a``
    ``(S,)``: each sample's first non-final row and ``start`` ``(S,)``: rows ``[a, start)`` took
    the plain step this round (``i*`` and the rows before it), window-local. Rows ``[a, freeze)``
    become final, ``a < freeze <= start`` (``freeze = a`` for a sample with no plain rows).

    Row ``a`` reads only final rows, so its plain step is exact: it is final in every round, and
    the ``n``-round bound holds. A later plain row ``i`` computed its step from its predecessors'
    iterates *before* this round's update, so if it becomes final now it keeps a defect
    ``x_i - F_i(x_{i-1})`` -- the one-step residual it would show next round -- of about
    ``(I - dF_i/dx_{i-1})`` times its predecessor's correction in this round (with the Picard
    map), up to the step tolerance; and the sequential loop multiplies a defect on its way to the
    output by however much the sample amplifies it, several hundred times on an ill-conditioned
    sample (issue 26: the digits flow model's seed 28, whose defects of 1e-4 at rows 7-10 ended
    24.8 dB from the loop when every passing row became final at once). So row ``i > a`` becomes
    final only when it and every plain row between ``a`` and it has *settled*: the residual it is
    expected to show next round, this round's error times the observed contraction -- the slower
    of its own, ``err / previous`` (1 where not measured yet), and its predecessor's this round,
    since its next residual follows its predecessor's correction: a row's own ratio can read
    small by chance (a row entering a sliding window as a copy of the last known row reads its
    first step, error 150 -> 0.6, as a contraction of 0.004) -- is at most ``FREEZE_FRACTION`` of
    its threshold; or it passed ``FREEZE_PASSES`` rounds in a row (a row at its round-off floor
    no longer contracts; a warm start within the tolerance of the solution can therefore freeze
    rows that still move: :data:`FREEZE_PASSES`). The other plain rows stay in the window:
    the next rounds evaluate them again, and their defects, now residuals, are corrected and
    carried to the rows after them like any other.

    The estimate asks how much a row would still move, not how many rounds the rows before it
    passed: a row that entered a sliding window late, and converges fast, becomes final as soon
    as one that passed many rounds would. (The rule before it -- final once every row before had
    passed three rounds in a row or moved by at most 1 % of its threshold -- took a sliding
    window of 15 rows on DDIM-50 from 12 rounds to 14; docs/benchmarks.)
    """
    with np.errstate(all="ignore"):  # nan and inf errors and states are the rule's input: no warnings
        return _freeze_rule(err, state, a, start, namespace(err))


def _freeze_ends_device(err: Any, state: Any, start: Any, *, xp: Any) -> tuple[Any, Any]:
    """:func:`_freeze_ends` of a lockstep round (``S = 1``, ``a = 0``) on the device: ``(freeze (0-d), state (w, 2))``.

    The compiled round's form of the rule (:func:`trisolve.compiled.fused_round`), so that its
    host code neither computes it nor keeps the state: ``err`` ``(w,)`` the round's scaled errors,
    ``state`` ``(w, 2)`` the rows' state (the previous error and the pass streak, in float64 as
    the host rule's), ``start`` the device's 0-d ``start``. The same code as the host rule
    (:func:`_freeze_rule`) in float64 (``err`` widened first, as NumPy promotes it), so the same decisions and the same
    state bitwise (tests/test_compiled.py compares the two on errors with nan, inf, zeros and
    rows at the thresholds). Pure device arithmetic, traced into the fused round.
    """
    a = xp.zeros((1,), dtype=start.dtype, device=device(start))
    end, new = _freeze_rule(xp.astype(err, state.dtype)[:, None], state[:, None, :], a, xp.reshape(start, (1,)), xp)
    return end[0], new[:, 0, :]


def _freeze_rule(err: Any, state: Any, a: Any, start: Any, xp: Any) -> tuple[Any, Any]:
    """The body of :func:`_freeze_ends` in any array namespace ``xp`` (NumPy on the host, the device's in the fused round)."""
    w = err.shape[0]
    t = xp.reshape(xp.arange(w, device=device(err)), (w, 1))  # (w, 1)
    previous, streak = state[..., 0], state[..., 1]  # (w, S) each
    plain = (t >= a[None, :]) & (t < start[None, :])  # (w, S)
    measured = xp.isfinite(previous) & (previous > 0)
    own = xp.where(measured, err / xp.where(measured, previous, 1.0), 1.0)  # (w, S): 1 where not measured (nan stays nan)
    # the row's next residual follows its predecessor's correction this round: the slower of the two contractions
    # (np.fmax: the larger, a nan giving way to a number; the window's first row: its own alone; row a becomes final
    # whatever its rate); nan compares False below
    rate = own
    if w > 1:
        mine, before = own[1:], own[:-1]
        slower = xp.where(xp.isnan(mine), before, xp.where(xp.isnan(before), mine, xp.maximum(mine, before)))
        rate = xp.concat([own[:1], slower], axis=0)
    expected = err * rate  # (w, S) next round's residual
    passes = xp.where(plain & (err <= 1.0), streak + 1.0, 0.0)  # nan compares False: no pass
    settled = (expected <= FREEZE_FRACTION) | (passes >= FREEZE_PASSES)  # nan compares False: not settled
    unsettled = (t > a[None, :]) & plain & ~settled  # (w, S): plain rows after a that stay
    freeze = xp.where(xp.any(unsettled, axis=0), xp.argmax(xp.astype(unsettled, xp.int32), axis=0), start)
    return xp.where(start > a, freeze, start), xp.stack([err, passes], axis=-1)


def _settle_state(shape: tuple[int, ...]) -> np.ndarray:
    """The freeze rule's per-row state before any round, ``(*shape, 2)``: no error measured (``inf``), no passes."""
    state = np.zeros((*shape, 2))
    state[..., 0] = np.inf
    return state


#: A plain row after the first non-final one becomes final (:func:`_freeze_ends`) when its residual
#: expected next round -- its scaled error times its observed contraction -- is at most this
#: fraction of its threshold, and so is every such row before it. ``inf`` is the rule before issue
#: 26 (every passing row final at once). Measured (benchmarks/rounds.py, docs/benchmarks): the
#: digits flow model's seed 28 at batch 4 (its fourth image) ends 24.8 dB from the sequential loop
#: with ``inf``, 40.7 dB with 0.1, 48.6 with 0.02, 53.5 with 0.01 and 55.6 with 0.0075; the
#: amplifying recurrence of the tests (2e4-fold, ``atol=1e-3``) ends up to 0.58 / 0.016 / 0.013 /
#: 0.0066 from forward substitution with ``inf`` / 0.02 / 0.01 / 0.0075 (its bound: 0.01). A
#: sliding window of 15 rows on DDIM-50 takes 12 / 12 / 12.5 / 13 rounds (the pass-streak rule
#: before: 14).
FREEZE_FRACTION = 0.0075

#: Consecutive rounds a plain row passes the step test after which it has settled whatever its
#: contraction (:func:`_freeze_ends`): a row whose residual sits at its round-off floor does not
#: contract any more (a warm start from a solution converged to ``atol=1e-6`` in float32 took 24
#: rounds instead of 2 without it). Known hole (tests/test_freeze_rule.py, a strict xfail): from a
#: warm start within ``atol`` of the solution every row passes at once, and rows still moving by up
#: to their threshold become final after 3 passes (0.035-0.079 from forward substitution on the
#: tests' amplifying recurrence, bound 0.01). Counting only passes where a row no longer contracts
#: (error at least half the round before's) closes it but took TAA on the DDIM-shaped test system
#: from 15-16 rounds to 19 (tests/test_anderson.py).
FREEZE_PASSES = 3


def nonfinite_row_error(i: int) -> FloatingPointError:
    """The error of a ``NONFINITE`` solve: ``F_i`` was not finite at row ``i``, which reads only final rows."""
    return FloatingPointError(
        f"F_{i} returned nan or inf at row {i}, which reads only final rows 0..{i - 1}; rows before it are final (solution.num_frozen)."
    )


def _pending_error(correction: np.ndarray, previous: np.ndarray | None = None, earlier: np.ndarray | None = None) -> np.ndarray:
    """A row's error still pending after this round's update, elementwise: ``rate correction / (1 - rate)``.

    ``correction`` is the row's correction at the iterate the round started from; ``previous``
    and ``earlier`` are its corrections one and two rounds before (``None``, or nan where not
    measured). The round applies this correction; an iteration that contracts at ``rate`` then
    still moves the row by about ``correction (rate + rate^2 + ...) = rate correction / (1 -
    rate)`` -- the error of the iterate the solve returns. ``rate`` is the contraction over the
    last two rounds, ``sqrt(correction / earlier)``, where ``earlier`` is measured, else over the
    last one, ``correction / previous``: one round's ratio after an erratic stretch can be small
    by chance (DDIM-25 seed 9 on the digits model: ratios 3.2, 1.5, 0.54, 0.19 -- stopping on the
    0.19 left 3x the estimated error; benchmarks/rounds.py, docs/benchmarks), and never below
    :data:`PENDING_RATE_FLOOR` (1/3: the estimate is at least ``correction / 2``; a contraction
    measured faster than that can slow in the next round). ``inf`` where it does not contract
    (``rate >= 1``), where a value is not finite, or without a previous round. A zero correction
    is 0.
    """
    if previous is None:
        return np.where(correction == 0.0, 0.0, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = correction / previous
        if earlier is not None:
            two = np.sqrt(correction / earlier)
            rate = np.where(np.isnan(two), rate, two)  # an unmeasured earlier (nan) leaves the last round's rate
        rate = np.maximum(rate, PENDING_RATE_FLOOR)  # nan stays nan: not measured, inf below
        est = np.where(rate < 1.0, rate * correction / (1.0 - rate), np.inf)
    return np.where(correction == 0.0, 0.0, est)


#: The fastest contraction per round that :func:`_pending_error` believes: a rate measured below it is
#: taken as this, so the error pending after a round is never estimated below ``correction / 2``.
#: Measured on the bundled digits models (``benchmarks/rounds.py --trace``,
#: docs/benchmarks): a contraction read as 0.22-0.27 slowed to 0.5 in the next round (DDIM-25 and
#: Euler-25 seed 25: a floor of 0.23 stopped them at 44.5 / 43.9 dB); 1/3 keeps every batch-1 run of
#: seeds 0-9 and 20-39 >= 45 dB, and 1/2 (the finish before) took half a round to a round more in the
#: median on 7 of the 13 batch-1 settings (seeds 0-9).
PENDING_RATE_FLOOR = 1.0 / 3.0


NO_PROGRESS_ROUNDS = 32  # consecutive rounds without progress before NoProgressWarning


class _ProgressWatch:
    """Warn once (:class:`NoProgressWarning`) when the map advances only the structural one row a round.

    A stretch is a run of consecutive rounds over windows of at least two rows that each froze
    at most one row; it ends with a round that froze more. The warning fires when a stretch
    reaches ``NO_PROGRESS_ROUNDS`` rounds with the round's largest scaled error not below the
    stretch's first (``nan``: not below), and more than that many rows are left.
    """

    def __init__(self, update_map: UpdateMap):
        self.update_map = update_map
        self.length, self.first_error, self.warned = 0, math.nan, False

    def round(self, *, frozen: int, w: int, max_error: float, remaining: int) -> None:
        if self.warned:
            return
        if frozen > 1 or w < 2:
            self.length = 0
            return
        if self.length == 0:
            self.first_error = max_error
        self.length += 1
        shrunk = max_error < self.first_error  # False for nan
        if shrunk:
            self.length, self.first_error = 1, max_error  # a new stretch from here
            return
        if self.length >= NO_PROGRESS_ROUNDS and remaining > NO_PROGRESS_ROUNDS:
            self.warned = True
            warnings.warn(
                f"{self.update_map!r} made no progress for {self.length} rounds: each froze only the one row the structural "
                f"bound guarantees while the largest scaled residual did not shrink ({self.first_error:.3g} -> {max_error:.3g}); "
                f"the solve will still end exact, but after about one round per remaining row ({remaining}). A map that follows "
                "the system converges in fewer: OneStep() on a contractive recurrence (where Picard's summed increments grow), "
                "Newton() where Jacobians are available (solver=None picks it), Picard() or Unrolled() on an integrator.",
                NoProgressWarning,
                stacklevel=5,  # solve -> _solve -> loop -> round: the caller of solve
            )


class _Records:
    """The per-round records of a solve in growing NumPy arrays (capacity doubled when full).

    A round costs 24 bytes -- its window ``[lo, hi)`` (two int64) and its largest scaled
    error (one float64) -- and the buffers hold at most twice the rounds; the
    :class:`Solution` gets views of them (no copy, so no peak at the end).
    """

    def __init__(self, capacity: int = 64):
        self.k = 0
        self.bounds = np.empty((capacity, 2), dtype=np.int64)  # (capacity, 2): lo, hi
        self.errors = np.empty(capacity, dtype=np.float64)  # (capacity,)

    def append(self, lo: int, hi: int, max_error: float) -> None:
        if self.k == self.errors.shape[0]:
            self.bounds = np.concatenate([self.bounds, np.empty_like(self.bounds)])
            self.errors = np.concatenate([self.errors, np.empty_like(self.errors)])
        self.bounds[self.k] = lo, hi
        self.errors[self.k] = max_error
        self.k += 1

    def windows(self) -> RoundWindows:
        return RoundWindows(self.bounds[: self.k])

    def max_errors(self) -> np.ndarray:
        return self.errors[: self.k]


def _row_finite(a: Any, xp: Any) -> Any:
    """``(w, 1, ..., 1)`` bool: the row's sum is finite (all entries finite and no overflow)."""
    w = a.shape[0]
    return xp.reshape(finite(xp.sum(xp.reshape(a, (w, -1)), axis=1), xp), (w,) + (1,) * (len(a.shape) - 1))


def _sanitize(p: Any, g: Any, anchor: Any, xp: Any, *, plain_finite: bool = False) -> Any:
    """Proposal rows ``p`` with every non-finite (or exploding) row replaced, on the device.

    A row of ``p`` whose sum is not finite (a nan or inf entry, or values so large that
    they overflow) falls back to the plain map step ``g`` of that row when that is finite
    (``g=None``: ``p`` is the plain step), else to ``anchor`` (the last final row,
    ``(1, *event)``): the trajectory only ever holds finite values. No host read.
    ``plain_finite``: every row of ``g`` is known finite (from the round's read), so it is
    the fallback without a test.
    """
    if p.shape[0] == 0:
        return p
    fallback = anchor if g is None else g if plain_finite else xp.where(_row_finite(g, xp), g, anchor)
    return xp.where(_row_finite(p, xp), p, fallback)
