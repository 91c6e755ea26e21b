"""Wall-time model of a parallel solve, and the automatic window (DESIGN 8 and 10).

Notation: ``T`` rows (steps), a window of ``w`` rows, ``P`` devices (ranks), ``S`` samples,
``G`` guidance copies (2 with classifier-free guidance, else 1).

One round evaluates the window's rows in one network call, split over the devices; the
sequential loop makes ``T`` calls of one row. With ``t(r)`` the measured time of one call on
``r`` trajectory rows (a network batch of ``r S G``) on one device::

    round(w)      = k t(fill(w) w / P) + [P > 1] (latency + (P - 1) / P * bytes(fill(w) w) / bandwidth) + o(fill(w) w)
    wall(w)       = rounds(w) * round(w)
    sequential    = T * t(1)
    one rank      = T * (t(1) + o_row) + latency + T bytes(1) / bandwidth    (several devices: the loop on one, then a broadcast)
    own samples   = min_w wall_own(w) + latency + (T + 1) traj_bytes / bandwidth  (each device its ceil(S / P) samples alone:
                    t_own(r) = k t(r ceil(S / P) / S), no collective per round, one all-gather of the trajectories at the end)
    rounds(w)     = min(T, R_w + beta * (T / w - 1)),   R_w = R_T - log2(T / w)   (deterministic, steps entering continue the last)
                  = min(T, R_T + beta(w) * (T / w - 1)),   beta(w) = 1 + (beta_inf - 1) (1 - 1/w)^2   (copies; noise)
    fill(w)       = 1 - phi * sqrt(w / T)

``o(r) = overhead + overhead_per_row * r`` is the round's work outside the network (the
solver, the tolerance test, the scheduler mapping, the host read), measured by
:func:`measure_overhead` on one device; a window of one row runs row by row without that
bookkeeping and costs ``o_row`` per step instead (:func:`measure_row_by_row`). On ``P > 1``
devices ``k >= 1`` is the contention: a device's network time while every device computes over
its time alone (on CPU ranks sharing caches and memory bandwidth it was the term the first
two-rank predictions missed), measured with every rank evaluating its share at once, and
``latency`` the time of one all-gather (one per network call: the header rides with the data).
``bytes(w) = w S * event * itemsize`` is what the all-gather moves (a ring all-gather sends
``(P - 1) / P`` of it through each link). ``rounds(w)`` is a sliding-window model: the full
window needs ``R_T`` rounds; a window of ``w < T`` rows must additionally slide over the
remaining ``T - w`` rows, and its frozen front advances about ``w / beta(w)`` rows per round
(``beta = 1`` at ``w = 1``, which makes ``rounds(1) = T``: forward substitution). Rows freeze
during a solve, so a round evaluates on average only ``fill(w) w`` rows (the window is cut at
row ``T``): 62 % of all rows with the full window. Fitted on the
bundled digits model (TAA m=4 + Picard, the defaults; seeds 0-4, ``benchmarks/autowindow.py``
prints the measured table next to this model)::

    R_T = log2(T) + 2.4,       beta = 1.94,      phi = 0.12   deterministic samplers, steps entering continue the last
    R_T = log2(T) + 2.4,       beta_inf = 2.2,   phi = 0.19   deterministic samplers, steps entering as copies
    R_T = 2 (log2(T) + 2.4),   beta_inf = 2.5                 samplers that add noise (DDPM-100: 16-19 rounds)

(``R_T`` was fitted to DDIM-25/50/100 at 7 / 8 / 8-9 full-window rounds, every step solved to the
tolerance; with the output-aware finish they take 6 / 6.5 / 7, so the full window's prior is
cautious.) With steps entering a sliding window continuing the last step
(``trisolve.solve(fill="linear")``, the samplers' default), DDIM-50 on the digits model, seeds 0-9,
windows of 3 / 4 / 6 / 8 / 12 / 15 / 25 rows took 34 / 27 / 19 / 16 / 12 / 11 / 9 rounds, DDIM-25
and DDIM-100 with 3 and 12 rows 18 / 8 and 67 / 20 (``benchmarks/rounds.py --settings DDIM-50
--window W``); the least-squares ``beta`` of the first form over these 11 runs is 1.94, every
prediction within 0.4 rounds (34.4 / 26.7 / 19.2 / 15.6 / 12.1 / 10.8 / 9.0; 18.2 / 8.1; 66.7 /
20.2), and ``phi`` 0.12 fits their evaluations per step (1.98-4.03) within 0.08. The second form
with its own fit (``beta_inf`` 1.57 on windows 8 / 15 / 25) predicted 23.2 rounds at 4 rows where
27 were measured, and chose a window of 4 at batch 4 with 2 threads that ran 0.94x the loop
(``benchmarks/default_speed.py``). DDPM-100 with 25 rows took 23 rounds (2.5 predicts 25.2),
so the stochastic ``beta_inf`` stays. With copies (``fill="copy"``,
``RoundsModel(window_fill="copy")``) the fit below holds: ``beta_inf`` 2.2 and ``phi`` 0.19.

``beta_inf`` (deterministic, copies) and ``phi`` were refitted after the freeze rule's contraction test
(a row becomes final once it and the rows before it are expected to move by at most
``trisolve.driver.FREEZE_FRACTION`` of their thresholds; docs/theory.rst): DDIM-50 on the digits
model, seeds 0-9, windows of 8 / 15 / 25 rows took 18 / 13 / 10 rounds and 2.75 / 3.53 / 4.28
network evaluations per step (``benchmarks/rounds.py --settings DDIM-50 --window W --fill copy``); the
least-squares fit of ``beta_inf`` to those rounds is 2.19 (predicting 18.1 / 12.8 / 10.1) and of
``phi`` to the evaluations (at the measured rounds) 0.19. With the predecessor's contraction
added to the test (its review) the same windows took 18 / 13.5 / 10 rounds and 2.78 / 3.55 /
4.29 evaluations, within 0.7 rounds of the fit, which was kept. The pass-streak rule before it took
20 / 14 / 10.5 rounds and 3.08 / 3.86 / 4.61 evaluations (fit 2.7 and 0.14); the rule before
issue 26, every passing row final at once, 16 / 12 / 9 and 2.36 / 2.94 / 3.50 (fit 1.67 and 0.31).
DDPM-100 with 25 rows took 24 rounds under the pass-streak rule (2.5 predicts 25.3), so the
stochastic ``beta_inf`` stays.

``t(r)`` is measured (:func:`measure_round_time`): a few timed calls at ``r = 1, 2, 4, ...``,
device-synchronised, cached per (model, row shape, dtype, device); once the time doubles with
the batch the device is saturated and ``t`` is extended linearly. ``o(r)`` is measured
(:func:`measure_overhead`) by running the solver itself for a few rounds with the network
replaced by a free stand-in, at two window sizes, and cached the same way. The automatic window
(:func:`choose_window`) is the ``w`` with the least predicted ``wall(w)``; the full window
is kept when it is within 5 % of that (fewer rounds, less exposed to the rounds model), and
forward substitution (``w = 1``) unless the chosen window is predicted at least
:data:`MIN_SPEEDUP` (1.25) times faster than it: a parallel window is taken only where it
clearly pays, so the default never falls far below the loop (a network already saturated
at one row, a large batch on a CPU).

First-call cost: the curve takes one warm-up and 3 timed calls at ``r = 1, 2, 4, ...`` rows
(the third in a pass over all sizes; up to 2 more at a size whose calls disagree by over 20 %),
stopping at the whole window or once the time has doubled with the rows twice (by the medians of
all calls: where a burst of load made the first calls read so, the doubling goes on) (a CPU at batch
1 is saturated from the start: 12 timed calls on 1, 2 and 4 rows, about ``28 t(1)``, half a
50-step loop); the overhead takes 32 stand-in rounds without the network. Both are cached per
network, latent shape, dtype and device (the overhead also per solver, map and scheduler), so
later calls only evaluate the model (``benchmarks/default_speed.py`` records the first call's
extra time).

Examples
--------
A device that is flat up to 16 rows and linear after it (an SD-sized UNet with guidance, one
H200, from ``benchmarks/results/gpu.md``: 42 ms for 1 row, 53 ms for 8, 94 ms for 16):

>>> from trisolve_diffusion.cost_model import BatchTimeCurve, CostModel
>>> curve = BatchTimeCurve(rows=(1, 4, 8, 16, 25, 50), seconds=(0.042, 0.043, 0.053, 0.094, 0.145, 0.280))
>>> model = CostModel(curve, steps=50)
>>> choice = model.best_window()
>>> choice.window, round(model.rounds(choice.window), 1), round(model.sequential_time() / choice.seconds, 1)
(9, 14.4, 2.6)
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BatchTimeCurve",
    "RoundsModel",
    "CostModel",
    "WindowChoice",
    "measure_round_time",
    "measure_overhead",
    "measure_row_by_row",
    "choose_window",
    "MIN_SPEEDUP",
    "auto_window",
    "AutoWindow",
]  # deprecated, not listed: network_of, clear_cache, default_auto_window, last_choice


@dataclass(frozen=True)
class BatchTimeCurve:
    """Measured time of one network call against the rows it evaluates.

    Attributes
    ----------
    rows : tuple of float, increasing
        Trajectory rows per call (the network batch is ``rows * samples * guidance``); a
        fraction is a share of one row's network batch (what one rank evaluates when the
        network batch is split over ranks).
    seconds : tuple of float
        Time of one call at each, device-synchronised (median of a few).

    ``t(r)`` interpolates linearly between measured points, is ``seconds[0]`` below the
    first, and beyond the last grows in proportion to ``r`` (a saturated device:
    ``t(r) = seconds[-1] * r / rows[-1]``).
    """

    rows: tuple[float, ...]
    seconds: tuple[float, ...]

    def __post_init__(self):
        if len(self.rows) != len(self.seconds) or not self.rows:
            raise ValueError(f"rows and seconds must be non-empty and of equal length, got {len(self.rows)} and {len(self.seconds)}.")
        if any(b <= a for a, b in zip(self.rows, self.rows[1:])) or not self.rows[0] > 0:
            raise ValueError(f"rows must be increasing numbers > 0, got {self.rows}.")
        if not all(math.isfinite(s) and s > 0 for s in self.seconds):
            raise ValueError(f"seconds must be finite and > 0, got {self.seconds}.")

    def __call__(self, r: float) -> float:
        rows, sec = self.rows, self.seconds
        if r <= rows[0]:
            return sec[0]
        if r >= rows[-1]:
            return sec[-1] * r / rows[-1]
        for (r0, s0), (r1, s1) in zip(zip(rows, sec), zip(rows[1:], sec[1:])):
            if r <= r1:
                return s0 + (s1 - s0) * (r - r0) / (r1 - r0)
        raise AssertionError("unreachable")  # pragma: no cover

    def saturation_rows(self, ratio: float = 1.5) -> int | None:
        """The fewest measured rows whose call costs ``>= ratio`` times one row's; ``None`` if none does."""
        for r, s in zip(self.rows, self.seconds):
            if r >= 1 and s >= ratio * self(1):
                return int(r)
        return None


@dataclass(frozen=True)
class RoundsModel:
    """Rounds of a sliding window of ``w`` rows over ``T`` (the module docstring has the fits).

    A deterministic sampler whose steps enter the window continuing the last step
    (``window_fill="linear"``, the samplers' default)::

        rounds(w) = min(T, R_w + beta (T / w - 1)),   R_w = R_T - log2(T / w)

    the last window's own rounds (``R_w``: the full-window prior of ``w`` rows) plus ``beta``
    rounds per further window of rows. Steps entering as copies (``"copy"``), or a sampler
    that adds noise::

        rounds(w) = min(T, R_T + beta(w) (T / w - 1)),   beta(w) = 1 + (beta_inf - 1)(1 - 1/w)^2

    Parameters
    ----------
    full_rounds : float, optional
        ``R_T``, rounds with the whole window; ``None``: the fitted prior ``log2(T) + 2.4``
        (times 2 when ``stochastic``).
    beta_inf : float, optional
        Rounds the frozen front of a sliding window needs to advance by one window (``beta``,
        the same for every ``w``, in the first form; the large-window limit in the second);
        ``None``: 1.94 for the first form, else 2.5 when ``stochastic`` and 2.2 for copies
        (fitted; see the module docstring).
    stochastic : bool
        Whether the sampler adds noise (DDPM, ancestral samplers): about twice the rounds.
    phi : float, optional
        ``fill(w) = 1 - phi sqrt(w / T)``: the mean share of the window's rows a round evaluates;
        ``None``: 0.12 with ``window_fill="linear"``, 0.19 with ``"copy"`` (fitted).
    window_fill : {"linear", "copy"}
        How rows entering a sliding window start (``trisolve.solve(fill=)``).
    """

    full_rounds: float | None = None
    beta_inf: float | None = None
    stochastic: bool = False
    phi: float | None = None
    window_fill: str = "linear"

    def __post_init__(self):
        from trisolve.driver import check_fill

        check_fill(self.window_fill, "window_fill")

    def fill(self, w: int, steps: int) -> float:
        phi = (0.12 if self.window_fill == "linear" else 0.19) if self.phi is None else self.phi
        return 1.0 - phi * math.sqrt(min(w, steps) / steps)

    def full(self, steps: int) -> float:
        if self.full_rounds is not None:
            return float(self.full_rounds)
        base = math.log2(max(steps, 1)) + 2.4
        return min(float(steps), 2 * base if self.stochastic else base)

    def __call__(self, w: int, steps: int) -> float:
        if w >= steps:
            return self.full(steps)
        if self.window_fill == "linear" and not self.stochastic:  # the last window's rounds + beta per further window
            beta = 1.94 if self.beta_inf is None else self.beta_inf
            last = max(1.0, self.full(steps) - math.log2(steps / w))
            return min(float(steps), last + beta * (steps / w - 1))
        beta_inf = (2.5 if self.stochastic else 2.2) if self.beta_inf is None else self.beta_inf
        beta = 1 + (beta_inf - 1) * (1 - 1 / w) ** 2
        return min(float(steps), self.full(steps) + beta * (steps / w - 1))


@dataclass(frozen=True)
class WindowChoice:
    """The chosen window and the model's prediction for every candidate (``model``: the :class:`CostModel` that chose)."""

    window: int
    seconds: float
    rounds: float
    table: tuple[tuple[int, float, float], ...] = field(repr=False)  # (w, predicted rounds, predicted seconds)
    model: Any = field(default=None, repr=False, compare=False)
    #: The :class:`trisolve.distributed.ShardedBatch` of a solve whose ranks split the network batch (``None`` otherwise):
    #: its ``collectives`` and ``bytes_gathered`` count the traffic of the solve run with this choice.
    split: Any = field(default=None, repr=False, compare=False)
    #: On several ranks: forward substitution on rank 0 alone (the loop itself, no collective per step), its trajectory then
    #: broadcast to the other ranks; chosen where neither a window nor splitting one row's batch over the ranks is predicted
    #: faster (:meth:`CostModel.best_window`).
    one_rank: bool = False
    #: On several ranks: each rank solves its own share of the samples (contiguous, sizes differing by at most one) with
    #: ``window`` rows, alone, with no collective per round; one all-gather of the trajectories at the end
    #: (:meth:`CostModel.own_samples_time`).
    own_samples: bool = False
    #: Every plan the model weighed, ``(name, window, predicted seconds)``: ``"window"`` (the window of more than one row it
    #: settled on, the full one where within ``keep_full_within`` of the best; its rows or network batch split over the
    #: devices), ``"loop"`` (forward substitution on every device, a split network batch), on several devices ``"one rank"``
    #: and, where priced, ``"own samples"``; the chosen one is ``seconds``.
    plans: tuple[tuple[str, int, float], ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class CostModel:
    """Predicted wall time of a parallel solve (module docstring for the formulas).

    Parameters
    ----------
    curve : BatchTimeCurve
        ``t(r)`` on one device, ``r`` trajectory rows per call.
    steps : int
        ``T``.
    devices : int
        ``P``; rows of a round are split in ``ceil(w / P)``-row chunks.
    gather_bytes_per_row : float
        Bytes the all-gather moves per trajectory row (``S * event * itemsize`` of the output).
    link_bandwidth : float
        Bytes per second of the all-gather (``inf``: free).
    link_latency : float
        Seconds per round of the collective (one all-gather: the header packed with the data).
    overhead : float
        Seconds per round outside the network (solver arithmetic, the host read).
    overhead_per_row : float
        Seconds per round and per evaluated row outside the network (the solver's work on
        the window's data).
    overhead_one_row : float, optional
        Seconds per step outside the network when the window is one row, which runs row by row
        without the rounds' bookkeeping (``sampler.forward_rows``: the mapping's row update
        only); ``None``: ``o(1)``.
    contention : float
        On several devices: a device's network time while every device computes, over its
        time alone (``>= 1``; CPU ranks sharing caches and memory bandwidth, measured by
        :func:`auto_window` with every rank evaluating its share at once). 1 on one device.
    rounds_model : RoundsModel
    split_inputs : int
        ``0``: the devices split a round's trajectory rows (a device evaluates at least one
        row, so a window of one row runs on one device). ``S G > 0``: they split the network
        batch itself, ``S G`` inputs per row, so a round of ``r`` rows gives each device
        ``ceil(r S G / P)`` inputs: window 1 is then pure data parallelism (``S / P`` samples
        each) and, with guidance, the unconditional and conditional halves go to different
        devices.
    samples : int
        ``S``, on ``P > 1`` devices with ``split_inputs``: prices the plan where each device solves
        its own ``ceil(S / P)`` samples with its own window and no collective per round
        (:meth:`own_samples_time`); 0 (or ``S < P``): not priced.
    """

    curve: BatchTimeCurve
    steps: int
    devices: int = 1
    gather_bytes_per_row: float = 0.0
    link_bandwidth: float = math.inf
    link_latency: float = 0.0
    overhead: float = 0.0
    overhead_per_row: float = 0.0
    rounds_model: RoundsModel = RoundsModel()
    split_inputs: int = 0
    overhead_one_row: float | None = None
    contention: float = 1.0
    samples: int = 0

    def __post_init__(self):
        for name, low in (("steps", 1), ("devices", 1), ("split_inputs", 0), ("samples", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}.")

    def rounds(self, w: int) -> float:
        return self.rounds_model(min(w, self.steps), self.steps)

    def round_time(self, w: int) -> float:
        """Mean time of one round: ``fill(w) w`` rows (one row at ``w = 1``), split over the devices, plus the all-gather."""
        if w == 1 and self.overhead_one_row is not None:  # row by row: one row, the row update only
            rows, outside = 1.0, self.overhead_one_row
        else:
            rows = 1.0 if w == 1 else self.rounds_model.fill(w, self.steps) * min(w, self.steps)
            outside = self.overhead + self.overhead_per_row * rows
        t = self.curve(self.rows_per_device(rows)) * (self.contention if self.devices > 1 else 1.0) + outside
        if self.devices > 1:
            t += self.link_latency + (self.devices - 1) / self.devices * rows * self.gather_bytes_per_row / self.link_bandwidth
        return t

    def one_rank_time(self) -> float:
        """Forward substitution on one device, the others waiting: ``T`` rows of the loop, then one broadcast of the trajectory."""
        outside = self.overhead_one_row if self.overhead_one_row is not None else self.overhead + self.overhead_per_row
        return self.steps * (self.curve(1) + outside) + self.link_latency + self.steps * self.gather_bytes_per_row / self.link_bandwidth

    def own_samples_time(self, *, min_speedup: float = 1.0) -> tuple[int, float] | None:
        """Each device solves its own ``ceil(S / P)`` samples alone, then one all-gather of the trajectories: ``(window, seconds)``.

        A device's solve is the one-device model on its share of each row's network batch
        (``t_own(r) = contention * t(r ceil(S / P) / S)``, the same overheads: those of the whole
        batch, an upper bound), its window chosen as on one device (:meth:`best_window` with
        ``min_speedup``); no collective per round, one all-gather of the ``T + 1`` trajectory rows
        at the end. ``None`` where not priced (one device, ``samples`` 0 or fewer than the
        devices, or no ``split_inputs``).
        """
        if self.devices < 2 or not self.split_inputs or self.samples < self.devices:
            return None
        share = math.ceil(self.samples / self.devices) / self.samples  # of one row's network batch, on the busiest device
        curve = BatchTimeCurve(tuple(r / share for r in self.curve.rows), tuple(s * self.contention for s in self.curve.seconds))
        own = dataclasses.replace(self, curve=curve, devices=1, split_inputs=0, samples=0, contention=1.0)
        choice = own.best_window(min_speedup=min_speedup)
        row_bytes = self.gather_bytes_per_row * self.samples / self.split_inputs  # a trajectory row: the latents, no guidance copies
        gather = self.link_latency + (self.devices - 1) / self.devices * (self.steps + 1) * row_bytes / self.link_bandwidth
        return choice.window, choice.seconds + gather

    def rows_per_device(self, rows: float) -> float:
        """Rows (fractions: shares of one row's network batch) one device evaluates in a round of ``rows`` rows."""
        if self.split_inputs:
            return max(1, math.ceil(rows * self.split_inputs / self.devices - 1e-9)) / self.split_inputs
        return max(1.0, rows / self.devices)

    def wall_time(self, w: int) -> float:
        return self.rounds(w) * self.round_time(w)

    def sequential_time(self) -> float:
        """The sequential loop on one device: ``T`` calls of one row."""
        return self.steps * (self.curve(1))

    def best_window(
        self, candidates: Sequence[int] | None = None, *, keep_full_within: float = 0.05, min_speedup: float = 1.0
    ) -> WindowChoice:
        """The window with the least predicted wall time (the full window if within ``keep_full_within`` of it).

        ``min_speedup``: a parallel window (``w > 1``) is taken only when it is predicted at least
        this many times faster than forward substitution (``w = 1``: ``T`` rounds of one row);
        otherwise the choice is ``w = 1``. A margin for the model's errors: where parallel rounds
        would win little, running the loop row by row cannot lose much.
        """
        cands = sorted({min(int(w), self.steps) for w in (candidates or range(1, self.steps + 1))} | {1})
        table = tuple((w, self.rounds(w), self.wall_time(w)) for w in cands)
        best = min(table, key=lambda row: (row[2], -row[0]))
        full = table[-1]
        if full[0] == self.steps and full[2] <= (1 + keep_full_within) * best[2]:
            best = full
        # the loop: forward substitution, on several devices either split (w = 1: each takes a share of the row's batch)
        # or on one device alone (no collective per step), whichever is predicted faster
        window = best if best[0] > 1 else min(table[1:], key=lambda row: row[2], default=None)  # the full one if kept above
        plans = [] if window is None else [("window", window[0], window[2])]
        plans.append(("loop", 1, table[0][2]))
        loop, one_rank = table[0], False  # table[0] is w = 1
        if self.devices > 1:
            plans.append(("one rank", 1, self.one_rank_time()))
            if self.one_rank_time() <= loop[2]:
                loop, one_rank = (1, float(self.steps), self.one_rank_time()), True
        if best[0] == 1 or loop[2] < min_speedup * best[2]:
            best = loop
        else:
            one_rank = False
        own = self.own_samples_time(min_speedup=min_speedup)
        if own is not None:
            plans.append(("own samples", *own))
            if own[1] < best[2]:  # the samples split with no collective per round: the same solves, less waiting
                return WindowChoice(own[0], own[1], self.rounds_model(own[0], self.steps), table, model=self, own_samples=True,
                                    plans=tuple(plans))  # fmt: skip
        return WindowChoice(best[0], best[2], best[1], table, model=self, one_rank=one_rank, plans=tuple(plans))


# ---------------------------------------------------------------- measuring t(r), cached

def _store_in(model: Any, key: Any, cache: dict | None) -> dict | None:
    """Where curves for ``model`` are cached in ``cache`` (a policy's): by the model's identity, weakly; ``None``: not cached.

    Nothing is cached without ``cache`` or ``key``, or for a model that cannot be referenced
    weakly; without ``model``, ``key`` alone names the entry. An entry whose model died is
    replaced when another object takes its address.
    """
    if cache is None or key is None:
        return None
    if model is None:
        return cache.setdefault(None, {})
    entry = cache.get(id(model))
    if entry is None or entry[0]() is not model:  # a new model, or another one at a dead model's address
        try:
            entry = cache[id(model)] = (weakref.ref(model), {})
        except TypeError:  # cannot be referenced weakly: not cached
            return None
    return entry[1]


def measure_round_time(
    call: Callable[[int], Any],
    max_rows: int,
    *,
    sync: Callable[[], None] | None = None,
    repeats: int = 3,
    key: Any = None,
    model: Any = None,
    cache: dict | None = None,
) -> BatchTimeCurve:
    """Measure ``t(r)``: the time of ``call(r)`` (one network call on ``r`` rows) for ``r = 1, 2, 4, ...``.

    Each size gets one warm-up call and ``repeats`` timed calls (median), each bracketed by
    ``sync()`` (e.g. ``torch.cuda.synchronize``): two right after the warm-up, whose faster
    decides where doubling stops (at ``max_rows``, or once the device is saturated: the time
    grew by ``>= 1.8x`` for a doubling twice in a row: ``t`` is then linear and
    :class:`BatchTimeCurve` extends it), the rest in passes over all sizes (interleaved: a burst
    of other work on a shared machine lands on one call of several sizes, not on every call of
    one). A size whose calls differ by more than :data:`NOISE_SPREAD` (20 %) of the fastest, or
    whose median exceeds a larger size's by that much, gets one more call per pass, for at most
    :data:`EXTRA_PASSES` (2) passes; its median is then over all its calls. Where the doubling
    stopped as saturated but the medians of all calls do not read so (a burst of load slowed the
    first calls of the last sizes), the doubling goes on from the next size, the same way: a
    stored curve reaches ``max_rows`` or is saturated by its medians, so a burst never prices the
    rows beyond it as linear. With ``model`` (by identity, weakly
    referenced: the entry goes with the model) and ``key`` (e.g. ``(row shape, dtype, device,
    guidance)``) the curve is cached in ``cache`` (a dict, e.g. an :class:`AutoWindow`'s) and
    measured once; with ``key`` alone, the key names it. Without ``cache`` nothing is cached.

    Examples
    --------
    >>> import time
    >>> curve = measure_round_time(lambda r: time.sleep(0.001 * max(r, 4)), 64, repeats=1)
    >>> curve.rows[:3], curve(1) < curve(64)
    ((1, 2, 4), True)
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be an int >= 1, got {max_rows!r}.")
    store = _store_in(model, key, cache)
    if store is not None and key in store and (store[key].rows[-1] >= max_rows or _saturated(store[key])):
        return store[key]
    sync = sync or (lambda: None)
    rows, samples = [], []  # samples[i]: the timed calls at rows[i]
    r, first = 1, min(2, repeats)
    while True:  # one stretch of doubling, its passes, and its check: saturated by the medians, or go on
        start, steep = len(rows), 0
        while True:  # the sizes: a warm-up and two timed calls each (the faster decides), doubling until max_rows or saturated
            call(r)  # warm-up (allocator, kernels)
            sync()
            rows.append(r)
            samples.append([_timed(call, r, sync=sync)[0] for _ in range(first)])
            steep = steep + 1 if len(samples) > start + 1 and min(samples[-1]) >= 1.8 * min(samples[-2]) else 0
            if r >= max_rows or steep >= 2:
                break
            r = min(2 * r, max_rows)
        for _ in range(repeats - first):  # the other timed calls interleaved over the new sizes: a burst hits several sizes once
            for i in range(start, len(rows)):
                samples[i].append(_timed(call, rows[i], sync=sync)[0])
        for _ in range(EXTRA_PASSES):  # where samples disagree or a size is slower than a larger one, one more pass each
            noisy = _noisy_points(samples)
            if not noisy:
                break
            for i in noisy:
                samples[i].append(_timed(call, rows[i], sync=sync)[0])
        secs = [max(statistics.median(s), 1e-9) for s in samples]
        curve = BatchTimeCurve(tuple(rows), tuple(secs))
        if r >= max_rows or _saturated(curve):
            break
        r = min(2 * r, max_rows)  # stopped by a burst: the medians read flatter than the first calls did
    if store is not None:
        store[key] = curve
    return curve


def _timed(call: Callable[..., Any], *args: Any, sync: Callable[[], None]) -> tuple[float, Any]:
    """Seconds of ``call(*args)`` with ``sync()`` before and after (the device's queued work counted), and its result."""
    sync()
    start = time.perf_counter()
    out = call(*args)
    sync()
    return time.perf_counter() - start, out


#: :func:`measure_round_time`: a size whose timed calls differ by more than this fraction of the fastest is measured again.
NOISE_SPREAD = 0.2
#: :func:`measure_round_time`: at most this many extra passes over the noisy sizes (one call each).
EXTRA_PASSES = 2


def _noisy_points(samples: Sequence[Sequence[float]], spread: float = NOISE_SPREAD) -> list[int]:
    """Indices of the curve points to time again: their samples differ by more than ``spread`` of the fastest, or their median
    exceeds a larger size's by more than ``spread`` (a device is not faster on more rows: a burst of other work hit it).

    >>> _noisy_points([[1.0, 1.05, 1.1], [2.0, 2.1, 1.9]])
    []
    >>> _noisy_points([[1.0, 1.6, 1.1], [2.0, 2.1, 1.9]])  # the first disagrees with itself
    [0]
    >>> _noisy_points([[3.0, 3.1, 3.0], [2.0, 2.1, 1.9]])  # the first is slower than twice the rows
    [0]
    """
    medians = [statistics.median(s) for s in samples]
    out = []
    for i, s in enumerate(samples):
        scattered = len(s) > 1 and max(s) > (1 + spread) * min(s)
        slower = any(medians[i] > (1 + spread) * m for m in medians[i + 1 :])
        if scattered or slower:
            out.append(i)
    return out


def _saturated(curve: BatchTimeCurve) -> bool:
    s = curve.seconds
    return len(s) >= 3 and s[-1] >= 1.8 * s[-2] and s[-2] >= 1.8 * s[-3]


def measure_overhead(
    run_rounds: Callable[[int, int], int],
    max_rows: int,
    *,
    sync: Callable[[], None] | None = None,
    key: Any = None,
    model: Any = None,
    cache: dict | None = None,
) -> tuple[float, float]:
    """Measure ``o(r) = overhead + overhead_per_row * r``: a round's time outside the network.

    ``run_rounds(w, k)`` runs the solve with a free stand-in for the network, a window of
    ``w`` rows and at most ``k`` rounds, and returns the rounds it ran; each call is timed,
    bracketed by ``sync()`` as in :func:`measure_round_time`. Per round:
    ``(time(k = 4) - time(k = 1)) / (rounds - 1)`` (the difference removes the solve's setup),
    the median of 3, at ``w = min(8, max_rows)`` and ``w = max_rows``; a line through the two
    (slope and intercept clipped at 0). Cached like :func:`measure_round_time`.

    Examples
    --------
    >>> import time
    >>> def run_rounds(w, k):  # 1 ms of setup, 2 ms + 0.05 ms per row each round
    ...     time.sleep(0.001 + k * (0.002 + 0.00005 * w))
    ...     return k
    >>> a, b = measure_overhead(run_rounds, 64)
    >>> 0.0015 < a < 0.005, 0.0 <= b < 0.0002
    (True, True)
    """
    store = _store_in(model, key, cache)
    if store is not None and ("overhead", key, max_rows) in store:
        return store["overhead", key, max_rows]
    result = _overhead_line(run_rounds, max_rows, sync or (lambda: None))
    if store is not None:
        store["overhead", key, max_rows] = result
    return result


def measure_row_by_row(run_rows: Callable[[], int], *, sync: Callable[[], None] | None = None, key: Any = None, model: Any = None,
                       cache: dict | None = None) -> float:  # fmt: skip
    """Seconds per step outside the network when the solve runs row by row (a window of one row, ``sampler.forward_rows``).

    ``run_rows()`` runs the whole solve row by row with a free stand-in for the network and
    returns its steps; per step: the median of 3 timed runs (after a warm-up) over the steps, the
    setup included. Cached like :func:`measure_overhead`.

    >>> import time
    >>> def run_rows():  # 10 steps of 0.5 ms
    ...     time.sleep(0.005)
    ...     return 10
    >>> 0.0004 < measure_row_by_row(run_rows) < 0.002
    True
    """
    store = _store_in(model, key, cache)
    if store is not None and ("row by row", key) in store:
        return store["row by row", key]
    sync = sync or (lambda: None)
    run_rows()  # warm-up
    samples = []
    for _ in range(3):
        t, steps = _timed(run_rows, sync=sync)
        samples.append(t / max(steps, 1))
    result = statistics.median(samples)
    if store is not None:
        store["row by row", key] = result
    return result


def _overhead_line(run_rounds: Callable[[int, int], int], max_rows: int, sync: Callable[[], None]) -> tuple[float, float]:
    """:func:`measure_overhead`'s measurement, uncached."""
    sizes = sorted({min(8, max_rows), max_rows})
    per_round = []
    for w in sizes:
        run_rounds(w, 1)  # warm-up
        samples = []
        for _ in range(3):
            t1, r1 = _timed(run_rounds, w, 1, sync=sync)
            tk, rk = _timed(run_rounds, w, 4, sync=sync)
            if rk > r1:
                samples.append(max(tk - t1, 0.0) / (rk - r1))
        per_round.append(statistics.median(samples) if samples else 0.0)
    if len(sizes) == 1:
        return (per_round[0], 0.0)
    slope = max((per_round[1] - per_round[0]) / (sizes[1] - sizes[0]), 0.0)
    return (max(per_round[0] - slope * sizes[0], 0.0), slope)


#: The automatic window leaves forward substitution only for a window predicted at least this many
#: times faster (:meth:`CostModel.best_window`'s ``min_speedup``): the model's rounds are a prior
#: (median rounds; single runs take up to twice as many) and its times are measured on a busy
#: machine, so a predicted gain below this is not worth the risk of losing to the loop.
MIN_SPEEDUP = 1.25


def choose_window(curve: BatchTimeCurve, steps: int, *, min_speedup: float = MIN_SPEEDUP, **model: Any) -> WindowChoice:
    """``CostModel(curve, steps, **model).best_window(min_speedup=min_speedup)``: the automatic window."""
    return CostModel(curve, steps, **model).best_window(min_speedup=min_speedup)


def auto_window(
    evaluate_rows: Callable[[int], Any],
    steps: int,
    *,
    device: Any,
    stochastic: bool = False,
    model: Any = None,
    key: Any = None,
    gather_bytes_per_row: float = 0.0,
    group: Any = None,
    run_rounds: Callable[[int, int], int] | None = None,
    method: Any = None,
    policy: AutoWindow | None = None,
    split_inputs: int = 0,
    evaluate_share: Callable[[int], Any] | None = None,
    run_rows: Callable[[], int] | None = None,
    samples: int = 0,
    fill: str = "linear",
) -> WindowChoice:
    """Choose the window of a solve: measure ``t`` and ``o`` (cached), then :meth:`CostModel.best_window`.

    Parameters
    ----------
    evaluate_rows : callable
        ``evaluate_rows(r)`` runs one round's network work on ``r`` trajectory rows.
    steps : int
        Rows of the solve.
    device : torch.device
        Where the network runs (CUDA is synchronised around each timed call).
    stochastic : bool
        Whether the sampler adds noise (the rounds prior doubles).
    model, key
        Cache the curve per ``model`` (weakly) and ``key`` (row shape, dtype, device, ...).
    gather_bytes_per_row : float
        Bytes of one row's outputs (what a multi-rank round all-gathers).
    group : ProcessGroup or True, optional
        A ``torch.distributed`` group (``True``: the default one) when the solve is split over
        ranks. Rank 0 alone measures ``t`` and ``o`` (on its device, with this process's network)
        and broadcasts them; every rank times the all-gather together (the slowest rank's time
        counts), so every rank builds the same :class:`CostModel` and reaches the same plan.
        Call it on every rank of the group. A network that raises on a rank while it is timed
        (rank 0's measurement, or any rank's in the contention) raises there, and every other rank
        raises :class:`trisolve.DistributedError` at the next collective.
    run_rounds : callable, optional
        ``run_rounds(w, k) -> rounds``: the solve with a free stand-in network
        (:func:`measure_overhead`); ``None``: no overhead term.
    method : hashable, optional
        What else the overhead depends on (the solver and map): part of its cache key.
    policy : AutoWindow, optional
        Whose cache the measurements go to and whose ``last_choice`` the result becomes;
        ``None``: nothing is cached.
    split_inputs : int
        ``S G``: the ranks split the network batch itself, ``S G`` inputs per row
        (:class:`CostModel`); 0: they split trajectory rows.
    evaluate_share : callable, optional
        ``evaluate_share(k)``: one network call on the first ``k`` inputs of one row's batch
        (what a rank evaluates at window 1 when the batch is split; 3 timed calls after a warm-up, up to 2 more where they
        disagree or exceed the whole row's time as a curve point's do; cached like the curve); with ``split_inputs``.
        On several ranks every rank also runs it at once, paired with rank 0 running it alone
        (:func:`_contention`: the median over 5 side-by-side pairs of the slowest rank's time over
        rank 0's) for the :class:`CostModel`'s ``contention`` (measured once per network and shape, like the curve).
    run_rows : callable, optional
        ``run_rows() -> steps``: the solve row by row with a free stand-in network
        (:func:`measure_row_by_row`); ``None``: the window of one row costs ``o(1)``.
    samples : int
        ``S`` where the solve can run as each rank's own samples (:meth:`CostModel.own_samples_time`); 0: it cannot.
    fill : str
        How rows entering a sliding window start (``trisolve.solve(fill=)``): the rounds prior's (:class:`RoundsModel`).
    """
    import torch

    sync = (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == "cuda" else None
    devices, latency, bandwidth = 1, 0.0, math.inf
    info = None
    if group is not None and group is not False:
        from trisolve.distributed import GroupInfo

        info = GroupInfo.resolve(None if group is True else group)
        devices = info.world
    max_rows = max(1, math.ceil(steps / devices))
    cache = None if policy is None else policy.cache
    curve, overhead, one_row, contention = None, (0.0, 0.0), math.nan, math.nan  # nan: not measured (yet)
    share = math.ceil(split_inputs / devices) if split_inputs else 0
    store = _store_in(model, key, cache)
    contention_key = ("contention", key, devices, share)
    try:
        if info is None or info.rank == 0:
            curve, overhead, one_row, contention = _measure_on_this_rank(
                evaluate_rows, max_rows, sync, model, key, cache, evaluate_share, share, split_inputs, run_rounds, run_rows, method,
                store, contention_key,
            )  # fmt: skip
    except BaseException:  # the network failed (or Ctrl-C) while rank 0 measured: the other ranks learn it, then it is raised
        if info is not None and devices > 1:
            _from_rank0(info, None, overhead, one_row, contention)
        raise
    if info is not None and devices > 1:
        curve, overhead, one_row, contention = _from_rank0(info, curve, overhead, one_row, contention)
        if math.isnan(contention):  # every rank evaluates its share at once (rank 0 decided: one collective path for all)
            call = (lambda: evaluate_share(share)) if evaluate_share is not None and 0 < share < split_inputs else (lambda: evaluate_rows(1))
            contention = _contention(info, call, sync)
            if info.rank == 0 and store is not None:
                store[contention_key] = contention
        latency, bandwidth = _time_gather(info, max_rows, gather_bytes_per_row)
    last_choice = choose_window(
        curve, steps, devices=devices, gather_bytes_per_row=gather_bytes_per_row, link_bandwidth=bandwidth, link_latency=latency,
        overhead=overhead[0], overhead_per_row=overhead[1], rounds_model=RoundsModel(stochastic=stochastic, window_fill=fill),
        split_inputs=split_inputs if devices > 1 else 0, overhead_one_row=None if math.isnan(one_row) else one_row,
        contention=1.0 if math.isnan(contention) else contention, samples=samples if devices > 1 and split_inputs else 0,
    )  # fmt: skip
    if policy is not None:
        policy.last_choice = last_choice
    return last_choice


def _measure_on_this_rank(evaluate_rows, max_rows, sync, model, key, cache, evaluate_share, share, split_inputs, run_rounds, run_rows,
                          method, store, contention_key) -> tuple[BatchTimeCurve, tuple[float, float], float, float]:  # fmt: skip
    """:func:`auto_window`'s measurements on this rank (rank 0 of several): the curve, the overheads, a cached contention (or nan)."""
    overhead, one_row, contention = (0.0, 0.0), math.nan, math.nan
    curve = measure_round_time(evaluate_rows, max_rows, sync=sync, model=model, key=None if key is None else (key, max_rows), cache=cache)
    if evaluate_share is not None and 0 < share < split_inputs:  # one rank's share of a one-row call, cached like the curve
        share_key = ("share", key, share, split_inputs)
        if store is not None and share_key in store:
            sec = store[share_key]
        else:
            evaluate_share(share)  # warm-up
            timed = [_timed(evaluate_share, share, sync=sync or (lambda: None))[0] for _ in range(3)]
            for _ in range(EXTRA_PASSES):  # noisy, or slower than the whole row: timed again, as a curve point is
                if 0 not in _noisy_points([timed, [curve(1)]]):
                    break
                timed.append(_timed(evaluate_share, share, sync=sync or (lambda: None))[0])
            sec = max(statistics.median(timed), 1e-9)
            if store is not None:
                store[share_key] = sec
        curve = BatchTimeCurve((share / split_inputs, *curve.rows), (sec, *curve.seconds))
    if run_rounds is not None:
        overhead = measure_overhead(run_rounds, max_rows, sync=sync, model=model, key=None if key is None else (key, method), cache=cache)
    if run_rows is not None:
        one_row = measure_row_by_row(run_rows, sync=sync, model=model, key=None if key is None else (key, method), cache=cache)
    if store is not None and contention_key in store:
        contention = store[contention_key]
    return curve, overhead, one_row, contention


class AutoWindow:
    """The automatic window as a policy object: pass it as ``window=AutoWindow(network)``.

    Each solve measures the network's time against its batch and the solver's time per round
    (:func:`auto_window`), caches both on this object (:attr:`cache`) and keeps the latest
    choice (:attr:`last_choice`); the window is the one the cost model predicts fastest.
    ``window="auto"`` (and the default ``window=None``) use :meth:`AutoWindow.of`: the one
    policy of the pipeline's network (``pipe.unet`` or ``pipe.transformer``, given by
    :func:`~trisolve_diffusion.sample`) or, in :func:`~trisolve_diffusion.sample_latents`, of
    the denoiser itself. Nothing is searched for and nothing is kept in module globals: a
    policy's measurements and choice live on it, and go with it.

    Parameters
    ----------
    network : torch.nn.Module or callable, optional
        What is timed and what the cache is keyed by (its identity, held weakly: the policy
        does not keep a network alive). ``None``: the denoiser each solve is given.

    Attributes
    ----------
    cache : dict
        Measured curves and overheads of this policy, per network, latent shape, dtype,
        device (and solver, map and scheduler for the overhead).
    last_choice : WindowChoice or None
        The latest choice: its ``window``, the predicted times, the ``model`` with the curve.

    Examples
    --------
    >>> import torch, trisolve_diffusion as td
    >>> net = torch.nn.Identity()
    >>> policy = td.AutoWindow(net)
    >>> policy.network is net, policy.last_choice is None and policy.cache == {}
    (True, True)
    >>> td.AutoWindow.of(net) is td.AutoWindow.of(net)  # the one policy of a network in this process
    True
    """

    def __init__(self, network: Any = None):
        if network is not None and not callable(network):
            raise TypeError(
                f"network must be the torch.nn.Module (or denoiser callable) whose time is measured, or None, got {type(network).__name__}."
            )
        try:
            self._network = None if network is None else weakref.ref(network)
        except TypeError:  # cannot be referenced weakly: held
            self._network = lambda net=network: net
        self.cache: dict = {}
        self.last_choice: WindowChoice | None = None

    @property
    def network(self) -> Any:
        """What is timed (``None``: the denoiser of each solve, or a network that no longer exists)."""
        return None if self._network is None else self._network()

    @classmethod
    def of(cls, network: Any) -> AutoWindow:
        """The one policy of ``network`` in this process (made on first use, dropped with the network).

        What ``window="auto"`` and the default window use, so that every sample with one
        network reuses its measurements; read its :attr:`last_choice` after a sample.
        Keyed by identity (never by name or ``==``); a network that cannot be referenced
        weakly gets a new policy each time.
        """
        entry = _POLICIES.get(id(network))
        if entry is not None and entry[0]() is network:
            return entry[1]
        policy, key = cls(network), id(network)
        try:
            ref = weakref.ref(network, lambda _: _POLICIES.pop(key, None))  # the entry goes with the network
        except TypeError:
            return policy
        _POLICIES[key] = (ref, policy)
        return policy

    def __repr__(self) -> str:
        net = None if self.network is None else type(self.network).__name__
        return f"AutoWindow(network={net}, last_window={None if self.last_choice is None else self.last_choice.window})"


#: The policies of :meth:`AutoWindow.of`: id(network) -> (weak reference to it, its policy); an entry goes with its network.
_POLICIES: dict[int, tuple[weakref.ref, AutoWindow]] = {}


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"trisolve_diffusion.cost_model.{old} is deprecated; {new}.", DeprecationWarning, stacklevel=3)


def default_auto_window() -> AutoWindow:
    """Deprecated: a new ``AutoWindow()``, which times each solve's denoiser (use :meth:`AutoWindow.of`)."""
    _deprecated("default_auto_window()", "pass window=AutoWindow(network), or read AutoWindow.of(network).last_choice")
    return AutoWindow()


def clear_cache() -> None:
    """Deprecated: empties the cache of every :meth:`AutoWindow.of` policy (a policy's ``cache.clear()`` does one)."""
    _deprecated("clear_cache()", "call policy.cache.clear() on the AutoWindow whose measurements should be forgotten")
    for _, policy in list(_POLICIES.values()):
        policy.cache.clear()


def __getattr__(name: str) -> Any:
    if name == "last_choice":  # deprecated: the latest choice of the most recently used policy
        _deprecated("last_choice", "read AutoWindow.of(network).last_choice (the policy's own latest choice)")
        return None if _LAST_USED is None or _LAST_USED() is None else _LAST_USED().last_choice
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_LAST_USED: weakref.ref | None = None  # only for the deprecated ``last_choice``; remove with it


def _note_used(policy: AutoWindow) -> None:
    """Remember ``policy`` (weakly) for the deprecated module attribute ``last_choice``."""
    global _LAST_USED
    _LAST_USED = weakref.ref(policy)


def _from_rank0(
    info: Any, curve: BatchTimeCurve | None, overhead: tuple[float, float], one_row: float, contention: float
) -> tuple[BatchTimeCurve, tuple[float, float], float, float]:
    """Rank 0's measurements on every rank, in one broadcast (float64): ``[k, rows..., seconds..., overhead, per_row, one_row,
    contention]`` (``nan``: not measured; a ``nan`` contention makes every rank measure it together); ``curve`` ``None`` on rank
    0: its measurement failed (``k = -1``: the other ranks raise :class:`trisolve.DistributedError`, rank 0 its own error)."""
    import torch

    size = 4 + 2 * 64  # curves have far fewer than 64 points (doubling from 1 row, plus a share)
    buf = torch.zeros(size, dtype=torch.float64, device=info.device)
    if info.rank == 0 and curve is None:  # rank 0's measurement failed: it raises its own error after this broadcast
        buf[0] = -1
    elif info.rank == 0:
        k = len(curve.rows)
        buf[0] = k
        buf[1 : 1 + k] = torch.tensor(curve.rows, dtype=torch.float64)
        buf[1 + k : 1 + 2 * k] = torch.tensor(curve.seconds, dtype=torch.float64)
        buf[1 + 2 * k : 5 + 2 * k] = torch.tensor([*overhead, one_row, contention], dtype=torch.float64)
    vals = info.broadcast(buf, "the automatic window's measurements (rank 0 measures)").cpu().tolist()
    k = int(vals[0])
    if k < 0:
        if info.rank == 0:
            return None, overhead, one_row, contention
        from trisolve.distributed import DistributedError

        raise DistributedError(
            "rank 0 failed while it measured the network for the automatic plan (its error is raised there); pass an int window= "
            "to skip the measurement, once the cause is fixed."
        )
    rows = tuple(vals[1 : 1 + k])
    extra = vals[1 + 2 * k : 5 + 2 * k]
    return BatchTimeCurve(rows, tuple(vals[1 + k : 1 + 2 * k])), (extra[0], extra[1]), extra[2], extra[3]


def _contention(info: Any, call: Callable[[], Any], sync: Callable[[], None] | None) -> float:
    """How much slower ``call()`` runs when every rank runs it at once than on rank 0 alone (at least 1), the same on every rank.

    Measured in :data:`CONTENTION_PAIRS` side-by-side pairs after a warm-up: rank 0 times the call alone while
    the other ranks wait in a collective (as they do while rank 0 measures the curve), then every rank times it
    at once (a tiny all-gather starts them together; the slowest rank counts). The ratio of each pair is taken
    and the median over the pairs kept, so that a burst of other work on a shared machine, which hits a pair's
    two halves alike, does not make the contention (the ratio of two timings taken seconds apart, with the
    curve's, before) read 1.04 on one call and 1.28 on the next. One broadcast hands rank 0's median to every rank.

    A rank whose ``call()`` raises (or is interrupted) makes no more calls and says so in the flag every all-gather
    carries; at that collective every rank learns it, the ranks exchange the failures as text
    (:meth:`~trisolve.distributed.GroupInfo.all_gather_text`), and the failing rank raises its own exception while
    the others raise :class:`trisolve.DistributedError` naming it and its exception, instead of waiting in the next
    collective until the group's timeout.
    """
    import torch

    sync = sync or (lambda: None)
    failed: list[BaseException] = []  # this rank's exception, told to the others at the next collective

    def timed() -> float:
        if failed:
            return math.nan
        try:
            return _timed(call, sync=sync)[0]
        except BaseException as exc:  # the network, or Ctrl-C: told to every rank below, then raised here
            failed.append(exc)
            return math.nan

    def gather(values: list[float]) -> torch.Tensor:  # (world, len(values)): one all-gather, ``values`` and this rank's flag
        mine = torch.tensor([*values, 0.0 if failed else 1.0], dtype=torch.float64, device=info.device)
        every = info.all_gather(mine, "timing the network on every rank at once").reshape(info.world, -1).cpu()
        if not bool(every[:, -1].all()):
            _raise_contention_failure(info, [r for r in range(info.world) if not every[r, -1]], failed)
        return every[:, :-1]

    timed()  # warm-up
    ratios = []
    for _ in range(CONTENTION_PAIRS):
        alone = timed() if info.rank == 0 else math.nan
        gather([])  # the others wait here while rank 0 runs alone
        together = float(gather([timed()]).max())
        ratios.append(together / alone)
    ratio = torch.tensor([statistics.median(ratios) if info.rank == 0 else 0.0], dtype=torch.float64, device=info.device)
    return max(1.0, float(info.broadcast(ratio, "the contention rank 0 measured")[0]))  # rank 0's, on every rank


def _raise_contention_failure(info: Any, bad: list[int], failed: list[BaseException]) -> None:
    """Raise on every rank once ranks ``bad`` said their network failed in :func:`_contention`: the failing ranks their own
    exception, the others :class:`trisolve.DistributedError` naming each failing rank and its exception (gathered as text)."""
    from trisolve.distributed import DistributedError

    text = ""
    if failed:
        try:
            text = f"{type(failed[0]).__name__}: {failed[0]}"
        except BaseException:  # an exception whose message cannot be formatted: its type, so that every rank reaches the gather
            text = type(failed[0]).__name__
    texts = info.all_gather_text(text)
    if failed:  # the others are told: this rank raises what its network raised
        raise failed[0]
    lines = "; ".join(f"rank {r}: {texts[r]}" for r in bad)
    raise DistributedError(
        f"the network raised on rank(s) {bad} while every rank timed it for the automatic plan (its error is raised there): "
        f"{lines}; pass an int window= to skip the measurement, once the cause is fixed."
    )


#: :func:`_contention`: the side-by-side pairs (alone, together) whose median ratio is the contention.
CONTENTION_PAIRS = 5


def _time_gather(info: Any, max_rows: int, bytes_per_row: float) -> tuple[float, float]:
    """Latency (one collective per network call: the header packed with the outputs) and bandwidth of the all-gather,
    timed on every rank, the slowest counted."""
    import torch

    times = []
    for r in (1, max_rows):  # an all-gather of 1 row and of max_rows rows per rank (as float32 elements), 3 each
        numel = max(1, int(r * bytes_per_row // 4))
        buf = torch.zeros(numel, dtype=torch.float32, device=info.device)
        info.all_gather(buf, "timing the all-gather")
        ts = []
        for _ in range(3):
            start = time.perf_counter()
            info.all_gather(buf, "timing the all-gather")
            if buf.device.type == "cuda":
                torch.cuda.synchronize(buf.device)
            ts.append(time.perf_counter() - start)
        times.append(statistics.median(ts))
    t_all = info.all_gather(torch.tensor(times, dtype=torch.float64, device=info.device), "timing the all-gather")
    t1, tmax = (float(v) for v in t_all.reshape(info.world, 2).max(dim=0).values.cpu())
    moved = (info.world - 1) / info.world * (max_rows - 1) * info.world * bytes_per_row
    bandwidth = moved / (tmax - t1) if tmax > t1 and moved > 0 else math.inf
    return t1, bandwidth


def network_of(denoiser: Any, depth: int = 4) -> Any:
    """Deprecated (nothing uses it): the ``torch.nn.Module`` a denoiser calls, searched in its attributes and closure.

    The automatic window is given its network instead (:class:`AutoWindow`).
    """
    _deprecated("network_of()", "give the network to the policy: window=AutoWindow(network)")
    import torch

    seen: set[int] = set()

    def find(obj: Any, d: int) -> Any:
        if isinstance(obj, torch.nn.Module):
            return obj
        if d == 0 or id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool, torch.Tensor)):
            return None
        seen.add(id(obj))
        children: list = []
        if callable(obj) and getattr(obj, "__closure__", None):
            children += [c.cell_contents for c in obj.__closure__ if c.cell_contents is not None]
        if hasattr(obj, "__dict__") and not isinstance(obj, type):
            children += list(vars(obj).values())
        if hasattr(obj, "__self__"):  # a bound method
            children.append(obj.__self__)
        for child in children:
            found = find(child, d - 1)
            if found is not None:
                return found
        return None

    return find(denoiser, depth)
