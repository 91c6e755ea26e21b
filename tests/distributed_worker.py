"""One rank of the two-process checks in ``test_distributed.py`` (gloo on the CPU).

Run as ``python distributed_worker.py OUT_DIR`` with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
and ``MASTER_PORT`` set (the test starts two). Each scenario writes what this rank saw to
``OUT_DIR/<scenario>_rank<r>.npz`` or ``.json``; the test compares the ranks and the
single-process answers.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import trisolve


def rnn_system(n=200, hidden=4, *, fail_on_rank=None, rank=0):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((hidden, hidden)) * 0.4
    u = rng.standard_normal((n + 1, hidden))
    calls = []

    def fn(x, lo, hi):
        calls.append(hi - lo)
        if fail_on_rank == rank and len(calls) == 2:
            raise ValueError("boom on purpose in round 2")
        return np.tanh(x[lo - 1 : hi - 1] @ W.T + u[lo:hi])

    return trisolve.BlackBoxSystem(fn, n=n), calls


def semilinear_system(n=60, hidden=3):
    g_w = torch.linspace(-1.0, 1.0, hidden * hidden, dtype=torch.float64).reshape(hidden, hidden)
    a = np.linspace(0.9, 1.0, n)
    B = np.full(n, 0.2)
    c = torch.sin(torch.arange(n * hidden, dtype=torch.float64)).reshape(n, hidden) * 0.1
    return trisolve.SemilinearSystem(a, B, lambda x, lo, hi: torch.tanh(x @ g_w), c=c)


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    if int(os.environ["WORLD_SIZE"]) != 2:
        raise SystemExit("the scenarios are written for two ranks: set WORLD_SIZE=2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))  # rank 0 measures the plan while rank 1 waits

    def record(name, **data):
        (out / f"{name}_rank{rank}.json").write_text(json.dumps(data))

    # 1. a black-box system (NumPy): the solve and the rows this rank evaluated
    system, _ = rnn_system()
    sharded = trisolve.distribute(system)
    sol = trisolve.solve(sharded, trisolve.Jacobi(), np.zeros(4), atol=1e-10)
    np.save(out / f"rnn_rank{rank}.npy", sol.trajectory)
    record("rnn", status=sol.status.name, rounds=sol.num_rounds, evals=sol.num_evals,
           rows_evaluated=sharded.fn.rows_evaluated, rows_requested=sharded.fn.rows_requested)  # fmt: skip

    # 1b. what several ranks cannot run is refused at the call on every rank (no collective, no timeout);
    # the default method and a jacobian= callable run
    tsys = trisolve.BlackBoxSystem(lambda x, lo, hi: torch.tanh(x[lo - 1 : hi - 1] * 0.8) + 0.1, n=30)
    x0t = torch.zeros(3, dtype=torch.float64)
    refused = {}
    for name, kw in [("newton", dict(update_map=trisolve.Newton())), ("gradients", dict(gradients=True))]:
        start = time.perf_counter()
        try:
            trisolve.solve(trisolve.distribute(tsys, timeout=10), trisolve.Jacobi(), x0t, atol=1e-12, **kw)
            refused[name] = (None, time.perf_counter() - start)
        except ValueError as exc:
            refused[name] = (str(exc), time.perf_counter() - start)
    default = trisolve.solve(trisolve.distribute(tsys, timeout=10), None, x0t, atol=1e-12)
    jac = lambda x, lo, hi: np.diag(np.ones(3))[None] * (0.8 * (1 - np.tanh(0.8 * x[lo - 1 : hi - 1]) ** 2))[:, None, :]  # noqa: E731
    nsys = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1] * 0.8) + 0.1, n=30, jacobian=jac)
    with_jac = trisolve.solve(trisolve.distribute(nsys, timeout=10), trisolve.Jacobi(), np.zeros(3), update_map=trisolve.Newton(), atol=1e-12)
    record("refused", refused=refused, default=[default.status.name, default.trajectory.tolist()],
           with_jacobian=[with_jac.status.name, with_jac.num_rounds, with_jac.trajectory.tolist()])  # fmt: skip

    # 2. a semilinear system (PyTorch), TAA + Picard, sliding window: the g rows
    system = semilinear_system()
    sharded = trisolve.distribute(system)
    sol = trisolve.solve(sharded, trisolve.TriangularAnderson(history_size=2), torch.zeros(3, dtype=torch.float64),
                         update_map=trisolve.Picard(), window=trisolve.SlidingWindow(16), atol=1e-12)  # fmt: skip
    np.save(out / f"semilinear_rank{rank}.npy", sol.trajectory.numpy())
    record("semilinear", status=sol.status.name, rounds=sol.num_rounds, evals=sol.num_evals,
           rows_evaluated=sharded.g.rows_evaluated, rows_requested=sharded.g.rows_requested, calls=sharded.g.calls,
           collectives=sharded.g.collectives, bytes=sharded.g.bytes_gathered)  # fmt: skip

    # 3. the bundled digits model through sample(pipe, ..., distributed=True)
    import trisolve_diffusion as td
    from trisolve_diffusion.models import load_digits_pipeline

    pipe = load_digits_pipeline("ddim")
    pipe.set_progress_bar_config(disable=True)
    o = td.sample(pipe, batch_size=2, num_inference_steps=20, generator=torch.manual_seed(0), output_type="np", distributed=True,
                  window=trisolve.FullWindow())  # the same window as the single process's below (the default is timed)  # fmt: skip
    np.save(out / f"digits_rank{rank}.npy", o.images)
    g = o.solution  # the sharded g is not reachable from the output: count network rows from the solution instead
    record("digits", status=g.status.name, rounds=g.num_rounds, evals=g.num_evals)

    # 3b. window="auto" on two ranks: each measures, both choose the same window
    o = td.sample(pipe, batch_size=2, num_inference_steps=20, generator=torch.manual_seed(0), output_type="np", distributed=True,
                  window="auto")  # fmt: skip
    np.save(out / f"digits_auto_rank{rank}.npy", o.images)
    record("digits_auto", windows=o.solution.windows.tolist(), status=o.solution.status.name)

    # 3c. the default plan on two ranks (issue 28): batch 4, rank 0 measures and broadcasts, the network batch is split
    o = td.sample(pipe, batch_size=4, num_inference_steps=12, generator=torch.manual_seed(1), output_type="np", distributed=True)
    np.save(out / f"digits_plan_rank{rank}.npy", o.images)
    plan = td.AutoWindow.of(pipe.unet).last_choice  # the policy sample() gave the pipeline's network
    record("digits_plan", windows=o.solution.windows.tolist(), status=o.solution.status.name, rounds=o.solution.num_rounds,
           window=plan.window, table=[list(r) for r in plan.table], curve=[list(plan.model.curve.rows), list(plan.model.curve.seconds)],
           overhead=[plan.model.overhead, plan.model.overhead_per_row, plan.model.overhead_one_row, plan.model.contention],
           one_rank=plan.one_rank, own_samples=plan.own_samples, stats=dict(o.solution.stats),
           **({} if plan.split is None else dict(calls=plan.split.calls, collectives=plan.split.collectives, bytes=plan.split.bytes_gathered,
                                                 inputs_evaluated=plan.split.inputs_evaluated, inputs_requested=plan.split.inputs_requested,
                                                 batch_sizes=sorted(plan.split._layouts))))  # fmt: skip

    # 3d. the tiny SD with guidance, window 1: one rank evaluates the unconditional half, the other the conditional one
    from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion

    sd = build_tiny_stable_diffusion()
    sd.set_progress_bar_config(disable=True)
    o = td.sample(sd, "a cat", num_inference_steps=6, generator=torch.manual_seed(0), output_type="np", distributed=True,
                  window=1)  # fmt: skip
    np.save(out / f"sd_cfg_rank{rank}.npy", o.images)
    record("sd_cfg", status=o.solution.status.name, rounds=o.solution.num_rounds, stats=dict(o.solution.stats))

    # 3e. the plan's loop on rank 0 alone (WindowChoice.one_rank): forced here by a choice that says so, since the timed plan
    # picks it only where the batch split and every window are predicted slower; then the same with rank 0's network failing
    import dataclasses as dc

    from trisolve_diffusion import cost_model

    real_choose, armed = cost_model.choose_window, []

    def one_rank_choice(*a, **k):
        armed.append(True)
        return dc.replace(real_choose(*a, **k), window=1, one_rank=True)

    forward = pipe.unet.forward

    def failing_forward(*a, **k):  # rank 0's network raises on its 4th call after the plan
        if rank == 0 and armed and len(armed) >= 4:
            raise RuntimeError("rank 0's network failed on purpose")
        if armed:
            armed.append(True)
        return forward(*a, **k)

    cost_model.choose_window = one_rank_choice
    try:
        o = td.sample(pipe, batch_size=1, num_inference_steps=6, generator=torch.manual_seed(2), output_type="np", distributed=True)
        np.save(out / f"one_rank_rank{rank}.npy", o.solution.trajectory.numpy())
        record("one_rank", status=o.solution.status.name, rounds=o.solution.num_rounds, stats=dict(o.solution.stats),
               one_rank=td.AutoWindow.of(pipe.unet).last_choice.one_rank)  # fmt: skip
        armed.clear()
        pipe.unet.forward = failing_forward
        try:
            td.sample(pipe, batch_size=1, num_inference_steps=6, generator=torch.manual_seed(2), output_type="np", distributed=True)
            record("one_rank_failure", raised=None)
        except td.ParallelSamplingError as exc:
            record("one_rank_failure", raised=str(exc), num_frozen=exc.solution.num_frozen, status=exc.solution.status.name)
    finally:
        cost_model.choose_window = real_choose
        pipe.unet.forward = forward

    # 3h. each rank its own samples (WindowChoice.own_samples), forced as 3e is: digits at batch 5 (two samples on rank 0, three
    # on rank 1: the trajectories padded for the all-gather) and the tiny SD with guidance and two prompts (the conditioning cut)
    def own_samples_choice(*a, **k):
        offered.append(k.get("samples", 0))
        return dc.replace(real_choose(*a, **k), window=1, own_samples=True)

    offered = []
    cost_model.choose_window = own_samples_choice
    try:
        o = td.sample(pipe, batch_size=5, num_inference_steps=6, generator=torch.manual_seed(4), output_type="np", distributed=True)
        np.save(out / f"own_digits_rank{rank}.npy", o.solution.trajectory.numpy())
        np.save(out / f"own_digits_images_rank{rank}.npy", o.images)
        record("own_digits", status=o.solution.status.name, rounds=o.solution.num_rounds, stats=dict(o.solution.stats), offered=offered[-1],
               own_samples=td.AutoWindow.of(pipe.unet).last_choice.own_samples)  # fmt: skip
        o = td.sample(sd, ["a cat", "a dog"], num_inference_steps=5, generator=torch.manual_seed(0), output_type="np", distributed=True)
        np.save(out / f"own_sd_rank{rank}.npy", o.images)
        record("own_sd", status=o.solution.status.name, stats=dict(o.solution.stats), offered=offered[-1])
        planned = len(offered)

        def rank1_fails(*a, **k):  # rank 1's network raises once the plan is made: rank 0 learns the status at the gather
            if rank == 1 and len(offered) > planned:
                raise RuntimeError("rank 1's network failed on purpose")
            return forward(*a, **k)

        pipe.unet.forward = rank1_fails
        try:
            td.sample(pipe, batch_size=4, num_inference_steps=6, generator=torch.manual_seed(4), output_type="np", distributed=True)
            record("own_failure", raised=None)
        except td.ParallelSamplingError as exc:
            record("own_failure", raised=str(exc), status=exc.solution.status.name)
    finally:
        cost_model.choose_window = real_choose
        pipe.unet.forward = forward

    # 3f. rank 0's network fails while it measures the plan (a batch not measured yet): every rank raises, none waits
    def broken_forward(*a, **k):
        raise RuntimeError("rank 0's network failed while measured")

    if rank == 0:
        pipe.unet.forward = broken_forward
    start = time.perf_counter()
    try:
        td.sample(pipe, batch_size=3, num_inference_steps=6, generator=torch.manual_seed(2), output_type="np", distributed=True)
        record("measure_failure", raised=None)
    except (td.ParallelSamplingError, trisolve.DistributedError) as exc:
        record("measure_failure", raised=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
    finally:
        pipe.unet.forward = forward

    # 3f2. rank 1's network fails while every rank times it at once (the contention, review F5; a new policy: nothing cached):
    # rank 1 raises its own error at once, rank 0 learns it at the next collective, none waits for the group's timeout
    rank1_calls = []

    def rank1_fails_timed(*a, **k):  # rank 1 calls the network first in the contention: its warm-up, then a call timed together
        rank1_calls.append(True)
        if rank == 1 and len(rank1_calls) == 2:
            raise RuntimeError("rank 1's network failed while timed together")
        return forward(*a, **k)

    pipe.unet.forward = rank1_fails_timed
    start = time.perf_counter()
    try:
        td.sample(pipe, batch_size=1, num_inference_steps=6, generator=torch.manual_seed(2), output_type="np", distributed=True,
                  window=td.AutoWindow(pipe.unet))  # fmt: skip
        record("contention_failure", raised=None)
    except (td.ParallelSamplingError, trisolve.DistributedError) as exc:
        record("contention_failure", raised=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
    finally:
        pipe.unet.forward = forward

    # 3g. a k-diffusion sampler without extra_args: every model call's batch split over the ranks (window 1: the samples)
    from trisolve_diffusion import k_diffusion as kd

    def kd_model(x, sigma):  # a function of each input and its sigma alone
        return torch.tanh(x) / (1 + sigma[:, None, None, None] ** 2)

    sig = kd.get_sigmas_karras(8, 0.05, 10.0)
    xk = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * sig[0]
    for w in (1, None):
        _, ksol = kd.sample_euler(kd_model, xk, sig, window=w, distributed=True, disable=True, trajectory_dtype=torch.float64,
                                  return_solution=True)  # fmt: skip
        np.save(out / f"kd_w{w}_rank{rank}.npy", ksol.trajectory.numpy())
        record(f"kd_w{w}", rounds=ksol.num_rounds, stats=dict(ksol.stats))

    # 4. mismatched arguments: rank 1 starts from another row 0 (another seed); then another tolerance
    for name, x0, atol in [("mismatch", np.zeros(4) if rank == 0 else np.full(4, 0.5), 1e-10),
                           ("mismatch_atol", np.zeros(4), 1e-10 if rank == 0 else 1e-9)]:  # fmt: skip
        system, calls = rnn_system()
        start = time.perf_counter()
        try:
            trisolve.solve(trisolve.distribute(system, timeout=10), trisolve.Jacobi(), x0, atol=atol)
            record(name, raised=None, seconds=time.perf_counter() - start, calls=len(calls))
        except trisolve.DistributedError as exc:
            record(name, raised=str(exc), seconds=time.perf_counter() - start, calls=len(calls))

    # 5. a rank whose evaluation fails (rank 1, round 2): the solve ends FAILED on every rank, the error kept
    system, _ = rnn_system(fail_on_rank=1, rank=rank)
    start = time.perf_counter()
    sol = trisolve.solve(trisolve.distribute(system, timeout=10), trisolve.Jacobi(), np.zeros(4), atol=1e-10)
    record("failure", status=sol.status.name, raised=str(sol.error) if isinstance(sol.error, trisolve.DistributedError) else None,
           cause=repr(sol.error.__cause__), seconds=time.perf_counter() - start)  # fmt: skip

    # 5b. the deprecated trisolve.distributed.solve: warns, and raises the DistributedError as it did
    import warnings

    system, _ = rnn_system(fail_on_rank=1, rank=rank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trisolve.distributed.solve(system, trisolve.Jacobi(), np.zeros(4), atol=1e-10, timeout=10)
            raised = None
        except trisolve.DistributedError as exc:
            raised = str(exc)
    record("deprecated", raised=raised, warnings=[str(w.message) for w in caught if w.category is DeprecationWarning])

    # 6. a rank that never joins the solve (rank 1 leaves): rank 0 errors after the timeout
    if rank == 0:
        system, _ = rnn_system()
        start = time.perf_counter()
        try:
            trisolve.solve(trisolve.distribute(system, timeout=2), trisolve.Jacobi(), np.zeros(4), atol=1e-10)
            record("absent", raised=None, seconds=time.perf_counter() - start)
        except trisolve.DistributedError as exc:
            record("absent", raised=str(exc), seconds=time.perf_counter() - start)
    else:
        time.sleep(4)  # stay alive (and silent) past rank 0's timeout
    os._exit(0)  # no destroy_process_group: the last collective was left unmatched on purpose


if __name__ == "__main__":
    main(Path(sys.argv[1]))
