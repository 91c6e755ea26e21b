"""The driver's per-sample rounds: every sample of a batch its own frozen prefix, window and finish.

:class:`SampleRun` is the driver's :class:`~trisolve.driver._Run` with another round loop (the
trajectory's one writer in a per-sample solve); :func:`trisolve.solve` picks it with
``per_sample=True`` (the default) when ``S > 1`` samples are solved eagerly on one rank.

A batched system (``batch_ndim > 0``) holds ``S`` independent samples in each row. The lockstep
round (:class:`trisolve.driver._Run`) freezes a row when every sample passed the test, so the
batch waits for its slowest sample and every round evaluates every sample's window rows. Here,
per round (DESIGN 4.2 applied to each sample ``s``):

1. sample ``s`` works on its own window ``[lo_s, hi_s)`` (the window policy's ``end(lo_s)``);
   the round's rows are the union ``[lo, hi)``, ``lo = min lo_s``, ``hi = max hi_s``; a pair
   ``(row, sample)`` is *active* when the row is in its sample's window;
2. the system evaluates only what the active pairs read
   (:meth:`~trisolve.TriangularSystem.evaluate_samples`: a
   :class:`~trisolve.SemilinearSystem` calls ``g`` on the needed pairs only);
3. inactive pairs take ``F = G = x`` and ``R = 0`` (a frozen prefix then adds nothing to the
   map's scan, so each sample's scan starts at its own ``lo_s``, and nothing to the solver's
   fit: :attr:`~trisolve.StepContext.active`); the errors stay per ``(row, sample)`` on the
   host -- still one read a round;
4. per sample, ``i*_s`` is its first unconverged row; rows ``lo_s .. i*_s`` take the plain step,
   the solver proposes the rest; only active pairs are written (masked writes: every other pair
   keeps its value exactly); of the plain rows, ``lo_s`` and the rows after it up to the first
   unsettled one become final (the driver's rule,
   :func:`trisolve.driver._freeze_ends`, per sample);
5. a sample is done when its prefix passes row ``n``, or by ``final_row_atol`` / ``early_stop``
   on its own final row; the solve ends when every sample is done.

Each sample's prefix grows by at least one row per round, so every sample still needs at most
``n`` rounds. Host traffic per round: the one read of the decisions, plus two small host-built
masks ``(w, S)`` sent to the device (which pairs are active, and which are written how).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._backend import device, finite, mask_from_host, to_host
from .driver import _freeze_ends, _pending_error, _Run, _settle_state, fill_rows, nonfinite_row_error
from .result import RoundInfo, Solution, Status
from .solvers.base import StepContext

__all__ = ["SampleRun"]

# why a sample ended: still going, or the status it contributes to the solve's
_RUNNING, _CONVERGED, _FINAL_ROW, _EARLY, _NONFINITE = range(5)


class SampleRun(_Run):
    """The round loop of a per-sample solve (see the module docstring); the driver's :class:`_Run` otherwise.

    Invariant (what an interrupt at any point keeps): rows ``< sample_lo[s]`` of sample ``s``
    are final, so rows ``< self.lo = min(sample_lo)`` are final for every sample, and every
    value of ``self.x`` is finite.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        S, n = self.samples, self.n
        bn = self.system.batch_ndim
        self.batch = tuple(int(v) for v in self.x.shape[1 : 1 + bn])  # the sample axes
        self.rest = len(self.x.shape) - 1 - bn  # event axes of one sample
        self.sample_lo = np.full(S, self.lo, dtype=np.int64)  # (S,) each sample's first non-final row
        self.sample_filled = np.full(S, self.filled, dtype=np.int64)  # (S,) rows < this hold an iterate
        self.ended = np.full(S, _RUNNING, dtype=np.int64)  # (S,) why each sample ended
        self.failure: BaseException | None = None  # the first non-finite sample's error
        self.sample_evals = 0
        self.sample_rounds = np.zeros(S, dtype=np.int64)  # (S,) the rounds each sample took until it ended
        self.round_pairs = np.empty(64, dtype=np.int64)  # (capacity,) pairs evaluated per round
        # final_row_atol per sample: every row's unscaled correction at the two last rounds it was checked, (2, n + 1, S)
        self.prev_rows = None if self.final_row_atol is None else np.full((2, n + 1, S), np.nan)
        self.prev_sample_correction = np.full((2, S), np.nan)  # the final row's correction at the two previous rounds
        self.had_last = np.zeros(S, dtype=bool)  # the final row was in the sample's window last round (early_stop)
        self.settle = _settle_state((n + 1, S))  # (n + 1, S, 2) each pair's last scaled error and pass streak (driver._freeze_ends)

    # -- device masks from host (w, S) tables ---------------------------------------------------

    def _masks(self, *tables: np.ndarray) -> list[Any]:
        """Host bool tables ``(w, S)`` as device bools ``(w, *batch, 1, ..)`` broadcasting over ``x``'s rows, in one transfer."""
        xp = self.xp
        w = tables[0].shape[0]
        dev = mask_from_host(np.stack(tables), xp, device=self.x_device)  # (k, w, S)
        return [xp.reshape(dev[k, ...], (w, *self.batch) + (1,) * self.rest) for k in range(len(tables))]

    @property
    def x_device(self) -> Any:
        return device(self.x)

    def _sample_index(self, s: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(int(s), self.batch))

    def _fill(self, hi_s: np.ndarray, live: np.ndarray) -> None:
        """Rows entering sample ``s``'s window start from its last known rows (``solve(fill=)``, per sample)."""
        xp, x = self.xp, self.x
        need = live & (hi_s > self.sample_filled)
        if not need.any():
            return
        f, h = self.sample_filled, hi_s
        if need.all() and np.all(f == f[0]) and np.all(h == h[0]):  # the lockstep case: one write for the batch
            fill_rows(x, int(f[0]), int(h[0]), self.fill, xp)
        else:
            for s in np.flatnonzero(need):
                fill_rows(x, int(f[s]), int(h[s]), self.fill, xp, self._sample_index(s))
        self.sample_filled = np.where(need, hi_s, self.sample_filled)

    def _ends(self, slo: np.ndarray, live: np.ndarray) -> np.ndarray:
        """Each sample's window end from the window policy (a done sample: its ``lo``, an empty window).

        (Letting the live samples share the finished samples' rows of a sliding window -- the
        lockstep batch's ``W x S`` -- was measured and not kept: DDIM-50 at batch 4 with
        ``window=8`` on the digits model, seeds 0-9, took the same rounds in every run.)
        """
        return np.array([self._window(int(v)) if ok else int(v) for v, ok in zip(slo, live)], dtype=np.int64)

    def _record_pairs(self, pairs: int) -> None:
        k = self.rounds - 1
        if k == self.round_pairs.shape[0]:
            self.round_pairs = np.concatenate([self.round_pairs, np.empty_like(self.round_pairs)])
        self.round_pairs[k] = pairs

    # -- the loop --------------------------------------------------------------------------------

    def loop(self) -> tuple[Status, BaseException | None]:
        """Run per-sample rounds until every sample is done or a stop; return the status and its error."""
        status = self._rounds()
        if self.failure is not None:  # a sample stopped on a non-finite F: that is the solve's outcome
            return Status.NONFINITE, self.failure
        if status is not None:
            return status, None
        ended = self.ended
        for code, st in ((_EARLY, Status.EARLY_STOPPED), (_FINAL_ROW, Status.FINAL_ROW_CONVERGED)):
            if np.any(ended == code):
                return st, None
        return Status.CONVERGED, None

    def _rounds(self) -> Status | None:
        """The rounds; ``None`` when every sample ended by itself, else the status that stopped them all."""
        xp, x, n, S = self.xp, self.x, self.n, self.samples
        one_step, damped = self.update_map.is_one_step, self.update_map.damped
        while np.any(self.ended == _RUNNING):
            if self.rounds >= self.max_iter:
                return Status.MAX_ITER
            live = self.ended == _RUNNING
            slo = self.sample_lo
            shi = self._ends(slo, live)  # (S,)
            lo, hi = int(slo[live].min()), int(shi[live].max())
            w = hi - lo
            self._fill(shi, live)
            # window-local bounds of each sample (a done sample: an empty range)
            a = np.where(live, slo - lo, 0)
            b = np.where(live, shi - lo, 0)
            t = np.arange(w)[:, None]
            act = (t >= a[None, :]) & (t < b[None, :])  # (w, S): the pairs in their sample's window
            ev = self._evaluate(lo, hi, samples=(lo + a, lo + b))
            (act_d,) = self._masks(act)
            act_pairs = xp.reshape(act_d, (w, S))  # (w, S) for the solver
            last_s = live & (shi == n + 1)  # samples whose window holds the final row
            last = bool(last_s.any())
            xv = x[lo:hi, ...]
            with np.errstate(all="ignore"):
                f = xp.where(act_d, ev.f, xv)  # inactive pairs: F = x, so their residuals are 0
                g, r, d, xw, decisions = self._round_arrays(f, lo, hi, last, per_sample=True)
                g = xp.where(act_d, g, xv)  # ... and the scan carries nothing into a pair outside its window
                r = xp.where(act_d, r, 0.0)
                self.rounds += 1
                pairs = int(ev.num_evals * S if ev.num_sample_evals is None else ev.num_sample_evals)
                self.sample_evals += pairs
                self._record_pairs(pairs)
                host = to_host(decisions)  # the one device-to-host read of the round
                if not self.careful and np.isinf(host).any():
                    host = to_host(self._decisions_again(d, r, g, xw, lo, hi, last, per_sample=True))
            k = w * S
            e_d = np.array(host[:k]).reshape(w, S)
            pos = k
            if one_step:
                err, g_ok = e_d, ~np.isnan(e_d)
            else:
                e_R = host[pos : pos + k].reshape(w, S)
                g_ok = host[pos + k : pos + 2 * k].reshape(w, S) > 0.5
                pos += 2 * k
                err = np.where(np.isnan(e_d) | np.isnan(e_R), np.nan, np.maximum(e_d, e_R))
            final_ok = np.zeros(S, dtype=bool)
            if last and self.final_row_atol is not None:
                final_ok = self._final_row(err, act, last_s, lo, hi, host[pos : pos + S])
                pos += S
            early = np.zeros(S, dtype=bool)
            if last and self.early_stop is not None:
                if self.prev_last is not None:
                    early = self.had_last & last_s & (host[pos : pos + S] <= self.early_stop)
                self.prev_last = xp.asarray(xw[-1:, ...], copy=True)
            self.had_last = last_s if self.early_stop is not None else self.had_last
            if not last:
                self.prev_last = None
            row_err = np.max(np.where(act, err, 0.0), axis=1)  # (w,) each row's largest error over its active pairs
            self.records.append(lo, hi, float(np.nan if np.isnan(row_err).any() else row_err.max(initial=0.0)))
            if self.row_errors is not None:
                self.row_errors.append(row_err)

            # -- per sample: i*_s, the rows that freeze, the non-finite stop
            bad = act & ~(err <= 1.0)  # (w, S) unconverged pairs (nan: unconverged)
            istar = np.where(bad.any(axis=0), np.argmax(bad, axis=0), b)  # (S,) window-local
            start = np.where(live, np.minimum(istar + 1, b), a)  # rows [a_s, start_s) take the plain step (some become final)
            write = act.copy()
            cols = np.arange(S)
            suspect = live & (istar < b) & ~np.isfinite(e_d[np.minimum(istar, w - 1), cols])
            for s in np.flatnonzero(suspect):  # F itself not finite at a row that reads only final rows: that sample stops
                idx = self._sample_index(s)
                if bool(xp.all(finite(ev.f[(int(istar[s]), *idx, Ellipsis)], xp))):
                    continue  # only the difference to an exploded iterate overflowed
                write[istar[s] :, s] = False
                start[s] = istar[s]
                self.ended[s] = _NONFINITE
                if self.failure is None:
                    self.failure = FloatingPointError(f"sample {int(s)}: {nonfinite_row_error(int(lo + istar[s]))}")
            going = live & (self.ended == _RUNNING)
            i = np.maximum(start - 1, 0)
            use_f = going & (~g_ok[i, cols] | (damped & (istar < b)))  # the freezing row takes F, not G (see _Run.loop)
            if use_f.any():
                fix = np.zeros((w, S), dtype=bool)
                fix[i[use_f], cols[use_f]] = True
                (fix_d,) = self._masks(fix)
                g = xp.where(fix_d, ev.f, g)
                g_ok = g_ok | fix
            new = g
            s0 = int(start[going].min()) if going.any() else w
            if s0 < w and np.any(going & (start < b)):
                with np.errstate(all="ignore"):
                    ctx = StepContext(x=xw, g=g, r=r, errors=row_err, lo=lo, hi=hi, start=s0, batch_ndim=self.system.batch_ndim, xp=xp,
                                      jit=self.jit, active=act_pairs)  # fmt: skip
                    proposal, self.state = self.solver.step(ctx, self.state)
                    plain_ok = bool(g_ok[act].all())
                    if not (proposal is g and plain_ok):
                        new = self._sanitize(proposal, g, xv, plain_ok)
            plain = t < start[None, :]  # (w, S): rows up to i*_s take the plain step (those before freeze_s become final)
            if new is not g:
                plain_d, write_d = self._masks(plain, write)
                new = xp.where(plain_d, g, new)
            else:
                (write_d,) = self._masks(write)
            x[lo:hi, ...] = xp.where(write_d, new, x[lo:hi, ...])  # only active pairs: every other keeps its value exactly
            # rows [a_s, freeze_s) become final; the rest of the plain rows stay in the window (driver._freeze_ends)
            freeze, self.settle[lo:hi] = _freeze_ends(err, self.settle[lo:hi], a, start)
            new_lo = np.where(live, lo + np.where(going, freeze, start), self.sample_lo)  # a sample stopped now keeps the rows before its row i*
            new_lo = self._linear_rows(new_lo, going, shi)
            advance = int((new_lo - self.sample_lo)[live].max())
            self.sample_lo = new_lo  # only after the rows are written
            self.lo = int(new_lo.min())
            self.ended = np.where(going & (new_lo > n), _CONVERGED, self.ended)
            still = self.ended == _RUNNING
            self.ended = np.where(still & final_ok, _FINAL_ROW, self.ended)
            self.ended = np.where((self.ended == _RUNNING) & early, _EARLY, self.ended)
            self.sample_rounds[live] = self.rounds
            self.watch.round(frozen=advance, w=w, max_error=float(self.records.errors[self.records.k - 1]),
                             remaining=n + 1 - self.lo)  # fmt: skip
            if self.callback is not None and self.callback(RoundInfo(self.rounds, lo, hi, self.lo, row_err, x)):
                if np.any(self.ended == _RUNNING):
                    return Status.STOPPED_BY_CALLBACK
        return None

    def _final_row(self, err: np.ndarray, act: np.ndarray, last_s: np.ndarray, lo: int, hi: int, correction: np.ndarray) -> np.ndarray:
        """``final_row_atol`` per sample (the test of :func:`trisolve.solve`, each sample on its own rows): ``(S,)`` bool.

        For the samples whose window holds row ``n``: the final row's pending correction and its
        after-update estimate, and every window row's correction (or its own after-update
        estimate, where smaller), are ``<= final_row_atol``.
        """
        fa = self.final_row_atol
        rows = err * self.thr_host[lo - 1 : hi - 1, None]  # (w, S) unscaled corrections
        prev = self.prev_rows[:, lo:hi, :]  # (2, w, S), a view
        ok = np.minimum(rows, _pending_error(rows, prev[0], prev[1])) <= fa
        rows_ok = np.all(ok | ~act, axis=0)  # (S,) over each sample's window rows
        upd = act & last_s[None, :]
        prev[1][upd] = prev[0][upd]
        prev[0][upd] = rows[upd]
        c = np.array(correction)
        pc = self.prev_sample_correction
        pending = _pending_error(c, pc[0], pc[1])  # the driver's final-row test: the estimate alone (>= c / 2, PENDING_RATE_FLOOR)
        pc[1, last_s] = pc[0, last_s]
        pc[0, last_s] = c[last_s]
        return last_s & (pending <= fa) & rows_ok

    def _sanitize(self, p: Any, g: Any, xv: Any, plain_ok: bool) -> Any:
        """Proposal pairs with a nan or inf (or an overflowing sum) replaced by the plain step, else by the iterate."""
        xp = self.xp
        w, S = p.shape[0], self.samples
        shape = (w, *self.batch) + (1,) * self.rest

        def ok(a: Any) -> Any:
            return xp.reshape(finite(xp.sum(xp.reshape(a, (w, S, -1)), axis=2), xp), shape)

        fallback = g if plain_ok else xp.where(ok(g), g, xv)
        return xp.where(ok(p), p, fallback)

    def _linear_rows(self, new_lo: np.ndarray, going: np.ndarray, hi_s: np.ndarray) -> np.ndarray:
        """A linear row right after a sample's frozen prefix reads only final rows: exact now, without an evaluation."""
        xp, x, lin = self.xp, self.x, self.linear
        new_lo = new_lo.copy()
        while True:
            cand = going & (new_lo < hi_s)
            cand &= lin[np.minimum(new_lo, self.n)]
            if not cand.any():
                return new_lo
            for i in np.unique(new_lo[cand]):
                which = cand & (new_lo == i)
                row = self.system.linear_step(x, int(i), self.cache, xp=xp)
                m = mask_from_host(which.reshape(self.batch + (1,) * self.rest), xp, device=self.x_device)
                x[int(i), ...] = xp.where(m, row, x[int(i), ...])
                new_lo[which] += 1

    def solution(self, status: Status, error: BaseException | None) -> Solution:
        self.evals = math.ceil(self.sample_evals / self.samples)  # the network rows of the same work in a lockstep batch
        sol = super().solution(status, error)
        return dataclasses.replace(sol, stats={**sol.stats, "sample_evals": self.sample_evals}, sample_frozen=self.sample_lo.copy(),
                                   round_sample_evals=self.round_pairs[: self.rounds], sample_rounds=self.sample_rounds.copy())  # fmt: skip
