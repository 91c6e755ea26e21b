"""The cost model and ``window="auto"`` (``trisolve_diffusion.cost_model``): properties, no timings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import trisolve
import trisolve_diffusion as td
from trisolve_diffusion import cost_model as cm

FLAT = cm.BatchTimeCurve(rows=(1, 2, 4, 8, 16, 32, 64), seconds=(0.01,) * 7)  # a device far from saturation
LINEAR = cm.BatchTimeCurve(rows=(1, 2, 4, 8), seconds=(0.01, 0.02, 0.04, 0.08))  # saturated from one row


def test_curve_interpolates_and_extends_linearly():
    c = cm.BatchTimeCurve(rows=(1, 4, 8), seconds=(1.0, 1.0, 2.0))
    assert c(0.5) == c(1) == 1.0 and c(6) == pytest.approx(1.5) and c(16) == pytest.approx(4.0)
    assert c.saturation_rows() == 8 and FLAT.saturation_rows() is None
    with pytest.raises(ValueError, match="increasing"):
        cm.BatchTimeCurve(rows=(2, 1), seconds=(1.0, 1.0))
    with pytest.raises(ValueError, match="> 0"):
        cm.BatchTimeCurve(rows=(1,), seconds=(0.0,))


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("T", [10, 25, 50, 100, 1000])
def test_rounds_model_bounds(T, stochastic):
    m = cm.RoundsModel(stochastic=stochastic)
    r = [m(w, T) for w in range(1, T + 1)]
    assert r[0] == T  # a window of one row is forward substitution
    assert r[-1] == m.full(T) <= T
    assert all(a >= b - 1e-12 for a, b in zip(r, r[1:]))  # never more rounds for a larger window
    assert all(0 < m.fill(w, T) <= 1 for w in (1, T // 2 or 1, T))


def test_flat_curve_keeps_the_full_window_and_linear_curve_prefers_short_ones():
    assert cm.CostModel(FLAT, 50).best_window().window == 50
    choice = cm.CostModel(LINEAR, 50).best_window()
    assert choice.window < 8 and choice.seconds <= cm.CostModel(LINEAR, 50).wall_time(50)
    assert choice.seconds == min(s for _, _, s in choice.table)


def test_more_devices_never_slower_with_a_free_link_and_the_link_costs_time():
    def model(p, bw, latency=1e-4):
        return cm.CostModel(LINEAR, 50, devices=p, gather_bytes_per_row=1e6, link_bandwidth=bw, link_latency=latency)

    # free: no time per byte and none per collective (with a latency, 2 devices that gain nothing over the loop -- a
    # window of 2 rows takes the T rounds of the loop -- pay the result's broadcast: the loop on one rank plus 1e-4 s)
    best = [model(p, math.inf, 0.0).best_window().seconds for p in (1, 2, 4, 8)]
    assert all(a >= b for a, b in zip(best, best[1:]))
    assert model(2, math.inf).best_window().seconds == pytest.approx(best[0] + 1e-4)
    assert model(4, 1e9).wall_time(50) > model(4, math.inf).wall_time(50)
    assert cm.CostModel(LINEAR, 50).sequential_time() == pytest.approx(50 * 0.01)


def test_measure_stops_once_saturated_and_caches(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(cm.time, "perf_counter", lambda: clock[0])
    calls = []

    def call(r):  # flat up to 4 rows, then linear: a fake device on a fake clock
        calls.append(r)
        clock[0] += 0.01 * max(r, 4)

    class Model:  # anything weakly referenceable
        pass

    model, cache = Model(), {}
    curve = cm.measure_round_time(call, 256, repeats=2, key="k", model=model, cache=cache)
    assert curve.rows == (1, 2, 4, 8, 16) and curve.seconds[-1] == pytest.approx(0.16)  # stopped after two doublings of the time
    n = len(calls)
    assert cm.measure_round_time(call, 256, key="k", model=model, cache=cache) is curve and len(calls) == n  # cached
    cm.measure_round_time(call, 256, key="k", model=model)  # no cache given: measured again, nothing kept
    assert len(calls) > n
    cache.clear()
    n = len(calls)
    cm.measure_round_time(call, 256, key="k", model=model, cache=cache)
    assert len(calls) > n


def _fake_device(monkeypatch, slow_calls=()):
    """A device flat up to 4 rows, then linear, on a fake clock; the calls numbered in ``slow_calls`` take twice as long
    (a burst of other work on a shared machine). Returns the list of calls made."""
    clock, calls = [0.0], []
    monkeypatch.setattr(cm.time, "perf_counter", lambda: clock[0])

    def call(r):
        calls.append(r)
        clock[0] += 0.01 * max(r, 4) * (2.0 if len(calls) - 1 in slow_calls else 1.0)

    return call, calls


def test_measure_quiet_device_costs_a_warm_up_and_the_repeats_per_size(monkeypatch):
    call, calls = _fake_device(monkeypatch)
    curve = cm.measure_round_time(call, 256, repeats=3)
    assert curve.seconds == pytest.approx((0.04, 0.04, 0.04, 0.08, 0.16))
    assert len(calls) == 4 * len(curve.rows)  # no extra pass where the calls agree


@pytest.mark.parametrize("slow", [(1, 2), (1,), (2, 3, 4)])
def test_measure_a_burst_of_load_does_not_set_a_point(monkeypatch, slow):
    # the burst lands on the first timed calls of one row (and the warm-up of two rows for (2, 3, 4)): measured one
    # size after the other, the median of one row was 0.08, twice the device's time (digits batch 4 in issue 28)
    call, calls = _fake_device(monkeypatch, slow_calls=slow)
    curve = cm.measure_round_time(call, 256, repeats=3)
    assert curve.rows == (1, 2, 4, 8, 16)
    assert curve.seconds == pytest.approx((0.04, 0.04, 0.04, 0.08, 0.16))
    assert len(calls) <= 4 * 5 + cm.EXTRA_PASSES * 2  # the extra calls are bounded: only the noisy sizes, at most 2 passes


def test_a_doubling_stopped_by_a_burst_goes_on_and_the_curve_is_cached(monkeypatch):
    """The doubling stops on the first two timed calls of each size (a burst made 2 and 4 rows read 2x and 4x); the later
    calls find the device flat, so the medians do not read as saturated: the doubling goes on in the same call, up to
    max_rows, and the next solve reuses the curve. Before, the curve stopped at 4 rows, priced more rows as linear
    (16 times 4 rows' time at 64), was not reused, and every later call measured again (1.6 s and 3.6 s extra on the
    digits batch 4 with 2 threads, and a different window)."""
    clock, calls = [0.0], []
    monkeypatch.setattr(cm.time, "perf_counter", lambda: clock[0])
    slow = {4: 2.0, 5: 2.0, 7: 4.0, 8: 4.0}  # call number -> factor: the timed calls right after the warm-ups of 2 and 4 rows

    def call(r):
        calls.append(r)
        clock[0] += 0.01 * slow.get(len(calls) - 1, 1.0)

    class Model:
        pass

    model, cache = Model(), {}
    curve = cm.measure_round_time(call, 64, repeats=3, key="k", model=model, cache=cache)
    assert curve.rows == (1, 2, 4, 8, 16, 32, 64)  # went on past the burst
    assert curve.seconds == pytest.approx((0.01,) * 7) and curve(64) == pytest.approx(0.01)  # the device as it is: flat
    n = len(calls)
    assert cm.measure_round_time(call, 64, repeats=3, key="k", model=model, cache=cache) is curve and len(calls) == n


def test_a_burst_of_load_on_the_share_is_timed_again(monkeypatch):
    # rank 0's share of one row (4 of 8 inputs, 6 ms), timed after the curve (40 ms a row): its first two timed calls hit a burst
    clock, share_calls = [0.0], []
    monkeypatch.setattr(cm.time, "perf_counter", lambda: clock[0])

    def rows(r):
        clock[0] += 0.04 * r

    def share(k):
        share_calls.append(k)
        clock[0] += 0.006 * (3.0 if len(share_calls) in (2, 3) else 1.0)

    curve, *_ = cm._measure_on_this_rank(rows, 1, None, None, None, None, share, 4, 8, None, None, None, None, None)
    assert curve.rows == (0.5, 1) and curve(1) == pytest.approx(0.04) and curve(0.5) == pytest.approx(0.006)
    assert share_calls == [4] * (1 + 3 + 2)  # the warm-up, three timed calls, two more where they disagreed


def test_noisy_points_flags_scatter_and_a_point_slower_than_more_rows():
    assert cm._noisy_points([[1.0, 1.1, 1.05], [1.5, 1.6, 1.55]]) == []
    assert cm._noisy_points([[1.0, 2.0, 1.1], [1.5, 1.6, 1.55]]) == [0]
    assert cm._noisy_points([[2.0, 2.1, 2.0], [1.5, 1.6, 1.55], [3.0, 3.0, 3.1]]) == [0]
    assert cm._noisy_points([[1.0, 1.0], [1.0, 1.0]], spread=0.0) == []


def _digits():
    from trisolve_diffusion.models import load_digits_pipeline

    pipe = load_digits_pipeline("ddim")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("curve, expect_full", [(FLAT, True), (LINEAR, False)])
def test_auto_window_in_sample_follows_the_curve(monkeypatch, curve, expect_full):
    seen = {}

    def fake_measure(call, max_rows, **kw):  # the real call runs once on 2 rows: the hook evaluates the network
        seen["out"] = call(2)
        seen["max_rows"] = max_rows
        return curve

    def fake_overhead(run_rounds, max_rows, sync=None, **kw):  # the real stand-in solve runs, timed; the model gets no overhead
        sync = sync or (lambda: None)  # none on a CPU
        seen["stand_in"] = [cm._timed(run_rounds, 4, 3, sync=sync), cm._timed(run_rounds, max_rows, 1, sync=sync)]
        return 0.0, 0.0

    monkeypatch.setattr(cm, "measure_round_time", fake_measure)
    monkeypatch.setattr(cm, "measure_overhead", fake_overhead)
    pipe = _digits()
    kw = dict(batch_size=2, num_inference_steps=20, generator=None, output_type="np")
    out = td.sample(pipe, **{**kw, "generator": torch.manual_seed(0)}, window="auto")
    full = td.sample(pipe, **{**kw, "generator": torch.manual_seed(0)}, window=trisolve.FullWindow())
    assert seen["max_rows"] == 20 and seen["out"].shape == (2, 2, 1, 16, 16)
    # the stand-in solve: the solver's real rounds (at most the cap; a round freezes at least one row)
    (t3, r3), (t1, r1) = seen["stand_in"]
    assert t3 > 0 and 1 <= r3 <= 3 and t1 > 0 and r1 == 1
    choice = td.AutoWindow.of(pipe.unet).last_choice  # the policy sample() gave the pipeline's network
    assert choice.window == max({hi - lo for lo, hi in out.solution.windows}) and choice.model.curve is curve
    widths = {hi - lo for lo, hi in out.solution.windows}
    expected = cm.choose_window(curve, 20).window
    if expect_full:
        assert expected == 20 and out.solution.windows == full.solution.windows
    else:
        assert expected < 20 and max(widths) == expected
    assert out.solution.status.ok  # CONVERGED, or the pixel-space default finish (FINAL_ROW_CONVERGED)
    np.testing.assert_allclose(out.images, full.images, atol=5e-3)  # both within tolerance of the sequential loop


def test_forward_substitution_unless_a_window_is_clearly_faster():
    """``min_speedup``: a parallel window only where it is predicted that many times faster than ``w = 1``."""
    half = cm.BatchTimeCurve(rows=(1, 2, 4, 8, 16), seconds=(0.01, 0.011, 0.015, 0.026, 0.05))  # nearly saturated: a modest gain (1.11x)
    model = cm.CostModel(half, 50)
    free = model.best_window()  # min_speedup 1: the least predicted time
    gain = model.wall_time(1) / free.seconds
    assert free.window > 1 and 1.0 < gain
    assert model.best_window(min_speedup=gain * 0.99).window == free.window
    assert model.best_window(min_speedup=gain * 1.01).window == 1
    assert cm.choose_window(FLAT, 50).window == 50  # a flat device: the full window wins by far (50 rounds -> 8)
    assert cm.choose_window(LINEAR, 50).window == 1  # saturated from one row: the loop, row by row
    # whatever the curve and overhead, the automatic choice is never predicted slower than forward substitution
    rng = np.random.default_rng(0)
    for _ in range(50):
        secs = np.cumsum(rng.uniform(0.001, 0.02, 6))
        curve = cm.BatchTimeCurve(rows=(1, 2, 4, 8, 16, 32), seconds=tuple(float(v) for v in secs))
        m = cm.CostModel(curve, 50, overhead=float(rng.uniform(0, 0.01)), overhead_per_row=float(rng.uniform(0, 1e-3)))
        c = m.best_window(min_speedup=cm.MIN_SPEEDUP)
        assert c.window == 1 or m.wall_time(1) >= cm.MIN_SPEEDUP * c.seconds


@pytest.mark.parametrize("curve, expect", [(FLAT, "full"), (LINEAR, "forward substitution")])
def test_the_default_window_is_automatic_on_a_cpu_too(monkeypatch, curve, expect):
    """No ``window``: the injected curve decides, on a CPU as on a GPU; a saturated one gives forward substitution."""
    monkeypatch.setattr(cm, "measure_round_time", lambda call, max_rows, **kw: curve)
    monkeypatch.setattr(cm, "measure_overhead", lambda run_rounds, max_rows, **kw: (0.0, 0.0))
    pipe = _digits()
    out = td.sample(pipe, batch_size=1, num_inference_steps=12, generator=torch.manual_seed(0), output_type="np")
    widths = {hi - lo for lo, hi in out.solution.windows}
    choice = td.AutoWindow.of(pipe.unet).last_choice
    assert choice.model.curve is curve
    if expect == "full":
        assert choice.window == 12 and max(widths) == 12 and out.solution.num_rounds < 12
    else:
        assert choice.window == 1 and widths == {1} and out.solution.num_rounds == 12 and out.solution.converged
    ref = pipe(batch_size=1, num_inference_steps=12, generator=torch.manual_seed(0), output_type="np").images
    np.testing.assert_allclose(out.images, ref, atol=5e-3)


def test_auto_is_refused_where_a_window_policy_is_expected():
    with pytest.raises(TypeError):
        trisolve.SlidingWindow("auto")


def test_solve_keywords_accept_auto_and_a_distributed_flag_only():
    from diffusers import DDIMScheduler

    assert td.SolveOptions(window="auto").window_policy() is None  # resolved in sample_latents
    scheduler = DDIMScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(5)
    with pytest.raises(ValueError, match="auto"):
        td.sample_latents(lambda x, t: 0.1 * x, scheduler, torch.zeros(1, 1, 4, 4), window="fastest")
    with pytest.raises(TypeError, match="distributed"):
        td.sample_latents(lambda x, t: 0.1 * x, scheduler, torch.zeros(1, 1, 4, 4), distributed="yes")


def test_distributed_sampling_without_a_process_group_says_how_to_start_one():
    import torch.distributed as dist
    from diffusers import DDIMScheduler

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    scheduler = DDIMScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(5)
    opts = dict(distributed=True, progress=False)
    with pytest.raises(ValueError, match="torchrun"):
        td.sample_latents(lambda x, t: 0.1 * x, scheduler, torch.zeros(1, 1, 4, 4), **opts)


def test_overhead_term_adds_to_every_round_and_favours_larger_windows():
    bare = cm.CostModel(LINEAR, 50)
    heavy = cm.CostModel(LINEAR, 50, overhead=0.05, overhead_per_row=1e-4)
    for w in (1, 8, 50):
        rows = 1 if w == 1 else heavy.rounds_model.fill(w, 50) * w  # forward substitution evaluates one row a round
        assert heavy.wall_time(w) == pytest.approx(bare.wall_time(w) + heavy.rounds(w) * (0.05 + 1e-4 * rows))
    assert heavy.best_window().window > bare.best_window().window  # fewer, more expensive rounds pay


def test_measure_overhead_fits_a_line_through_two_windows_and_caches(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(cm.time, "perf_counter", lambda: clock[0])
    calls, syncs = [], []

    def run_rounds(w, k):  # a fake solve on a fake clock: 3 ms of setup, 2 ms + 0.05 ms per row each round
        calls.append((w, k))
        clock[0] += 0.003 + k * (0.002 + 5e-5 * w)
        return k

    class Model:
        pass

    model, cache = Model(), {}
    a, b = cm.measure_overhead(run_rounds, 40, sync=lambda: syncs.append(1), key="k", model=model, cache=cache)
    assert a == pytest.approx(0.002) and b == pytest.approx(5e-5)
    assert {w for w, _ in calls} == {8, 40} and {k for _, k in calls} == {1, 4}
    assert len(syncs) == 2 * (len(calls) - 2)  # every timed call bracketed (the two warm-ups are not timed)
    n = len(calls)
    assert cm.measure_overhead(run_rounds, 40, key="k", model=model, cache=cache) == (a, b) and len(calls) == n  # cached
    assert cm.measure_overhead(lambda w, k: 0, 40) == (0.0, 0.0)  # rounds that did not run: no term

    def constant(w, k):
        clock[0] += 0.001 * k
        return k

    assert cm.measure_overhead(constant, 1) == (pytest.approx(0.001), 0.0)  # one size: a constant


@pytest.mark.parametrize("fault", [RuntimeError("CUDA out of memory (simulated)"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_network_fault_while_the_default_window_is_timed_raises_like_one_in_a_round(fault):
    """The default window's timing calls the network before round 1: a fault there is a ParallelSamplingError
    (or SamplingInterrupted) with an unstarted solution, as in a round, never a bare exception."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(10)

    def den(x, t):
        raise fault

    latents = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = td.SamplingInterrupted if isinstance(fault, KeyboardInterrupt) else td.ParallelSamplingError
    with pytest.raises(expected, match="the automatic window timed the network") as info:
        td.sample_latents(den, scheduler, latents, progress=False)
    sol = info.value.solution
    assert info.value.__cause__ is fault and sol.error is fault and sol.num_rounds == 0 and sol.num_frozen == 1
    assert sol.status is (trisolve.Status.INTERRUPTED if isinstance(fault, KeyboardInterrupt) else trisolve.Status.FAILED)
    assert tuple(sol.trajectory.shape) == (11, 2, 1, 4, 4) and torch.equal(sol.trajectory[0], latents)


def test_split_batch_plan_is_data_parallel_when_a_step_saturates_a_rank():
    # a rank saturated by one step's batch of 8 samples (time in proportion to the inputs): halving the batch
    # halves the call, and more rows per round only cost more; window 1 with the batch split is the plan
    curve = cm.BatchTimeCurve(rows=(0.5, 1, 2, 4, 8), seconds=(0.05, 0.1, 0.2, 0.4, 0.8))
    split = cm.CostModel(curve, steps=20, devices=2, split_inputs=8)
    assert split.rows_per_device(1) == 0.5 and split.rows_per_device(0.9) == 0.5  # ceil(0.9 * 8 / 2) = 4 of 8 inputs
    choice = split.best_window()
    assert choice.window == 1
    assert choice.seconds == pytest.approx(20 * 0.05)  # the loop's 20 steps at half a step's time each
    assert split.sequential_time() / choice.seconds == pytest.approx(2.0)
    # splitting rows instead cannot use the second rank at window 1: it predicts the loop's time there
    rows = cm.CostModel(curve, steps=20, devices=2)
    assert rows.wall_time(1) == pytest.approx(rows.sequential_time())
    assert rows.best_window().seconds > choice.seconds


def test_split_batch_plan_keeps_a_window_when_the_rank_is_not_saturated():
    # flat up to 8 rows (a GPU far from saturation): the time-parallel window beats splitting the batch
    curve = cm.BatchTimeCurve(rows=(0.5, 1, 8, 16), seconds=(0.04, 0.04, 0.045, 0.09))
    choice = cm.CostModel(curve, steps=50, devices=2, split_inputs=2).best_window()
    assert choice.window > 1 and choice.seconds < 0.5 * cm.CostModel(curve, steps=50).sequential_time()


def test_batch_time_curve_takes_a_share_of_a_row():
    curve = cm.BatchTimeCurve(rows=(0.25, 1, 2), seconds=(0.01, 0.02, 0.04))
    assert curve(0.25) == 0.01 and curve(0.625) == pytest.approx(0.015) and curve(0.1) == 0.01
    with pytest.raises(ValueError, match="increasing numbers > 0"):
        cm.BatchTimeCurve(rows=(0, 1), seconds=(0.1, 0.2))


def test_row_by_row_overhead_and_contention_enter_the_prediction():
    """A window of one row costs o_1 per step (no rounds' bookkeeping); on several devices the network time is scaled by the
    measured contention."""
    base = cm.CostModel(LINEAR, 50, overhead=0.05, overhead_per_row=1e-4)
    lean = cm.CostModel(LINEAR, 50, overhead=0.05, overhead_per_row=1e-4, overhead_one_row=0.001)
    assert lean.wall_time(1) == pytest.approx(50 * (LINEAR(1) + 0.001))
    assert lean.wall_time(8) == base.wall_time(8)  # other windows keep o(r)
    two = cm.CostModel(LINEAR, 50, devices=2, split_inputs=4, link_latency=0.002)
    slow = cm.CostModel(LINEAR, 50, devices=2, split_inputs=4, link_latency=0.002, contention=1.5)
    for w in (1, 8, 50):
        net = two.curve(two.rows_per_device(1.0 if w == 1 else two.rounds_model.fill(w, 50) * w))
        assert slow.round_time(w) == pytest.approx(two.round_time(w) + 0.5 * net)
    assert cm.CostModel(LINEAR, 50, contention=3.0).wall_time(8) == cm.CostModel(LINEAR, 50).wall_time(8)  # one device: none


def test_contention_is_the_median_of_side_by_side_pairs_and_ignores_a_burst():
    """_contention times rank 0 alone, then every rank at once, in pairs, and keeps the median ratio: a call twice as slow
    together reads 2 even when one pair falls in a burst of other work that slows both halves (and the warm-up) fourfold."""
    import time

    class OneRank:  # a group of one: all_gather is the tensor itself; the "together" half is made slower by the call
        rank, world, device = 0, 1, torch.device("cpu")

        def all_gather(self, t, what):
            return t

        def broadcast(self, t, what):
            return t

    calls = []

    def call():  # warm-up, then (alone, together) pairs; pair 2 falls in a burst
        k = len(calls)
        calls.append(k)
        together = k > 0 and k % 2 == 0
        burst = k in (0, 3, 4)
        time.sleep(0.02 * (2 if together else 1) * (4 if burst else 1))

    c = cm._contention(OneRank(), call, None)
    assert len(calls) == 1 + 2 * cm.CONTENTION_PAIRS
    assert 1.6 < c < 2.6, c  # timed together over a curve point timed before the burst would read 8


def test_the_loop_on_one_rank_when_splitting_one_row_does_not_pay():
    """Batch 1 without guidance on two ranks (windows cost 10 ms a round outside the network): a share of one input is the
    whole row, so splitting it only adds the collective; the plan runs the loop on rank 0 and broadcasts the trajectory;
    with a batch that splits, data parallelism wins."""
    flat = cm.BatchTimeCurve(rows=(1, 2, 4, 8), seconds=(0.010, 0.0195, 0.039, 0.078))  # saturated: linear in the rows
    kw = dict(devices=2, link_latency=0.001, overhead=0.01, overhead_one_row=0.0005, gather_bytes_per_row=4e3, link_bandwidth=1e8)
    one = cm.CostModel(flat, 50, split_inputs=1, **kw).best_window()
    assert one.window == 1 and one.one_rank and one.seconds == pytest.approx(50 * (0.010 + 0.0005) + 0.001 + 50 * 4e3 / 1e8)
    half = cm.BatchTimeCurve(rows=(0.5, 1, 2, 4, 8), seconds=(0.0055, 0.010, 0.0195, 0.039, 0.078))
    split = cm.CostModel(half, 50, split_inputs=8, **kw).best_window()
    assert split.window == 1 and not split.one_rank
    assert split.seconds == pytest.approx(50 * (0.0055 + 0.0005 + 0.001 + 0.5 * 4e3 / 1e8))


def test_own_samples_plan_saves_the_collective_per_step_and_every_plan_is_listed():
    """Digits batch 8 on two CPU ranks (issue 28's measured curve, ms): each rank's own 4 samples, the loop, no collective per
    step, beat splitting each step's batch (same network time plus a 0.62 ms all-gather a step); the table lists every plan."""
    curve = cm.BatchTimeCurve(rows=(0.5, 1, 2, 4, 8), seconds=(0.01246, 0.01578, 0.02681, 0.05722, 0.10645))
    kw = dict(devices=2, split_inputs=8, link_latency=6.2e-4, overhead_one_row=8.5e-5, gather_bytes_per_row=8 * 1024 * 4,
              link_bandwidth=1e9)  # fmt: skip
    model = cm.CostModel(curve, 50, samples=8, **kw)
    window, seconds = model.own_samples_time(min_speedup=cm.MIN_SPEEDUP)
    gather = 6.2e-4 + 0.5 * 51 * 8 * 1024 * 4 / 1e9  # one all-gather of the 51 trajectory rows
    assert window == 1 and seconds == pytest.approx(50 * (0.01246 + 8.5e-5) + gather)
    choice = model.best_window(min_speedup=cm.MIN_SPEEDUP)
    assert choice.own_samples and not choice.one_rank and choice.window == 1 and choice.seconds == seconds
    plans = {name: (w, sec) for name, w, sec in choice.plans}
    assert set(plans) == {"window", "loop", "one rank", "own samples"}
    assert plans["loop"] == (1, pytest.approx(50 * (0.01246 + 8.5e-5 + 6.2e-4 + 0.5 * 8 * 1024 * 4 / 1e9)))
    assert plans["one rank"][1] == pytest.approx(model.one_rank_time()) and plans["window"][0] > 1
    # the best window (2 rows, 0.615 s) is predicted faster, but not MIN_SPEEDUP times faster than the loops: one of those
    assert choice.seconds == min(plans[k][1] for k in ("loop", "one rank", "own samples")) < plans["window"][1] * cm.MIN_SPEEDUP
    # not priced without the samples, on one device, or with fewer samples than devices: the split loop is the plan
    assert cm.CostModel(curve, 50, **kw).own_samples_time() is None
    assert cm.CostModel(curve, 50, samples=1, **kw).own_samples_time() is None
    assert cm.CostModel(curve, 50, samples=8).own_samples_time() is None
    assert not cm.CostModel(curve, 50, **kw).best_window(min_speedup=cm.MIN_SPEEDUP).own_samples
    # contention enters each rank's solve: ranks twice as slow together make the plan lose to the loop on rank 0 alone
    slow = cm.CostModel(curve, 50, samples=8, contention=2.0, **kw).best_window(min_speedup=cm.MIN_SPEEDUP)
    assert not slow.own_samples and slow.one_rank


def test_own_samples_share_is_the_busiest_rank_and_its_own_window():
    # 3 samples on 2 ranks: the busier rank evaluates 2 of 3 per row; a flat curve gives each rank a window of its own
    model = cm.CostModel(FLAT, 50, devices=2, split_inputs=3, samples=3, link_latency=1e-3)
    window, seconds = model.own_samples_time()
    alone = cm.CostModel(cm.BatchTimeCurve(tuple(r * 1.5 for r in FLAT.rows), FLAT.seconds), 50).best_window()
    assert window == alone.window > 1 and seconds == pytest.approx(alone.seconds + 1e-3)


def test_measure_row_by_row_is_per_step_and_cached(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(cm.time, "perf_counter", lambda: clock[0])
    runs = []

    def run_rows():  # 20 steps of 1 ms
        runs.append(1)
        clock[0] += 0.020
        return 20

    cache = {}
    model = torch.nn.Identity()
    assert cm.measure_row_by_row(run_rows, key="k", model=model, cache=cache) == pytest.approx(0.001)
    assert cm.measure_row_by_row(run_rows, key="k", model=model, cache=cache) == pytest.approx(0.001) and len(runs) == 4


class _ThreadRanks:
    """Two ranks as threads sharing a fake group: every collective is a barrier; ``all_gather`` returns every rank's tensor in
    rank order, ``broadcast`` copies rank 0's into every rank's tensor (in place, as ``torch.distributed``'s). ``kinds[r]``
    lists rank r's collectives in order."""

    def __init__(self, world=2, on_collective=None, timeout=30):
        import threading

        self.world, self.slot = world, [None] * world
        self.barrier = threading.Barrier(world, timeout=timeout)  # a rank left waiting: BrokenBarrierError after ``timeout`` s
        self.kinds = [[] for _ in range(world)]
        self.on_collective = on_collective  # called by rank 0 between a collective's exchange and its return

    def rank(self, r):
        group = self

        class Rank:
            rank, world, device = r, group.world, torch.device("cpu")

            def _exchange(self, kind, t):
                group.kinds[r].append(kind)
                group.slot[r] = t.clone()
                group.barrier.wait()
                out = torch.cat(list(group.slot)) if kind == "all_gather" else group.slot[0].clone()
                group.barrier.wait()
                if r == 0 and group.on_collective is not None:
                    group.on_collective(group.kinds[0])
                group.barrier.wait()
                return out

            def all_gather(self, t, what):
                return self._exchange("all_gather", t)

            def broadcast(self, t, what):
                return t.copy_(self._exchange("broadcast", t))

            def all_gather_text(self, text):
                data = torch.tensor(list(text.encode()), dtype=torch.uint8)
                size = self.all_gather(torch.tensor([data.numel()]), "an error report")
                buf = torch.zeros(int(size.max()), dtype=torch.uint8)
                buf[: data.numel()] = data
                allb = self.all_gather(buf, "an error report").reshape(group.world, -1)
                return [bytes(allb[k, : int(size[k])].tolist()).decode() for k in range(group.world)]

        return Rank()

    def run(self, fn):
        """``fn(rank_info)`` on every rank at once: (results, exceptions) per rank."""
        import threading

        out, errors = [None] * self.world, [None] * self.world

        def body(r):
            try:
                out[r] = fn(self.rank(r))
            except BaseException as exc:  # reported per rank
                errors[r] = exc

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a rank hung in a collective"
        return out, errors


def test_contention_on_two_ranks_is_rank_0s_median_on_both_and_the_collectives_match():
    """Review of 1143172, with two ranks as threads sharing a fake group (a barrier per collective): rank 1 returns
    rank 0's median ratio, not its own, through one broadcast; both ranks make the same collectives (2 all-gathers a
    pair, then the broadcast); rank 1 never times the call alone. The network is twice as slow together on both ranks."""
    import threading
    import time

    together = threading.Event()  # set while both ranks run the call at once (between the two collectives of a pair)
    alone_calls = [0, 0]

    def toggle(kinds):  # after a pair's first all-gather every rank runs together; after its second, alone
        together.set() if kinds[-1] == "all_gather" and len(kinds) % 2 == 1 else together.clear()

    group = _ThreadRanks(on_collective=toggle)

    def call_for(rank):
        def call():
            if not together.is_set():
                alone_calls[rank] += 1
            time.sleep(0.02 * (2 if together.is_set() else 1) * (1.5 if rank == 1 else 1.0))

        return call

    out, errors = group.run(lambda info: cm._contention(info, call_for(info.rank), None))
    assert errors == [None, None], errors
    assert group.kinds == [["all_gather"] * (2 * cm.CONTENTION_PAIRS) + ["broadcast"]] * 2
    assert out[0] == out[1], out  # rank 0's value on every rank
    assert alone_calls[1] == 1  # rank 1's warm-up only: it never times the call alone
    assert 2.2 < out[0] < 3.6, out  # the slowest rank together (rank 1: 1.5 x 2 = 3x rank 0 alone)


def _failing_network(faults: dict, on_call: int | None = None, pause: float = 0.0):
    """``(calls, call_for)``: ``call_for(rank)`` is rank ``rank``'s network for ``_contention``, which counts its calls in
    ``calls[rank]`` and raises ``faults[rank]`` at its ``on_call``-th call (every call where ``None``), else sleeps ``pause``."""
    import time

    calls: dict = {}

    def call_for(rank):
        def call():
            calls[rank] = calls.get(rank, 0) + 1
            if rank in faults and on_call in (None, calls[rank]):
                raise faults[rank]
            time.sleep(pause)

        return call

    return calls, call_for


@pytest.mark.parametrize(
    "failing, on_call, fault",
    [(1, 2, RuntimeError("boom on rank 1")), (1, 1, RuntimeError("boom on rank 1")), (0, 2, RuntimeError("boom on rank 0")),
     (1, 4, KeyboardInterrupt())],
    ids=["rank1-together", "rank1-warm-up", "rank0-alone", "rank1-ctrl-c"],
)  # fmt: skip
def test_a_network_failing_on_one_rank_while_the_contention_is_timed_raises_on_every_rank(failing, on_call, fault):
    """Review F5: the network raises on one rank only (its warm-up, its first call timed together, rank 0's call timed alone,
    or a Ctrl-C in a later pair). Every rank learns it at the next collective: the failing rank raises its own exception,
    the other a DistributedError naming the rank and the exception; both make the same collectives (no rank is left in one
    until the group's timeout, here a 5 s barrier) and nothing is broadcast."""
    import time

    calls, call_for = _failing_network({failing: fault}, on_call, pause=0.001)
    group = _ThreadRanks(timeout=5)
    start = time.perf_counter()
    out, errors = group.run(lambda info: cm._contention(info, call_for(info.rank), None))
    assert time.perf_counter() - start < 4
    other = 1 - failing
    assert out == [None, None] and errors[failing] is fault
    assert isinstance(errors[other], trisolve.DistributedError), errors
    msg = str(errors[other])
    assert f"rank(s) [{failing}]" in msg and f"rank {failing}: {type(fault).__name__}: {fault}" in msg, msg
    assert "pass an int window=" in msg
    assert calls[failing] == on_call  # no call after the failure
    assert group.kinds[0] == group.kinds[1] and "broadcast" not in group.kinds[0]
