"""Multi-rank solves (``trisolve.distributed``): two gloo processes on the CPU give the single-process answer.

One fixture starts two ranks of ``distributed_worker.py`` once; each test reads what the ranks
recorded and compares it with an independent single-process reference computed here.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_worker import rnn_system, semilinear_system

import trisolve

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKER.parent)]))  # fmt: skip
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out)], env=dict(env, RANK=str(r)), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]  # fmt: skip
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]  # seconds when idle; minutes on a loaded 2-core machine
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    def read(name, rank):
        return json.loads((out / f"{name}_rank{rank}.json").read_text())

    return out, read


def test_black_box_matches_single_process_and_splits_rows(ranks):
    out, read = ranks
    system, _ = rnn_system()
    ref = trisolve.forward_substitution(system, np.zeros(4))
    single = trisolve.solve(system, trisolve.Jacobi(), np.zeros(4), atol=1e-10)
    t0, t1 = np.load(out / "rnn_rank0.npy"), np.load(out / "rnn_rank1.npy")
    assert np.array_equal(t0, t1)  # the ranks hold the same bytes
    np.testing.assert_allclose(t0, single.trajectory, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t0, ref, rtol=0, atol=1e-8)
    r0, r1 = read("rnn", 0), read("rnn", 1)
    assert r0["status"] == r1["status"] == "CONVERGED"
    assert r0["rounds"] == r1["rounds"] == single.num_rounds and r0["evals"] == single.num_evals
    # each rank evaluated its half of every round (sizes differ by at most one row per round)
    assert r0["rows_requested"] == r1["rows_requested"] == single.num_evals
    assert r0["rows_evaluated"] + r1["rows_evaluated"] == single.num_evals
    assert abs(r0["rows_evaluated"] - r1["rows_evaluated"]) <= single.num_rounds


def test_semilinear_taa_matches_single_process_and_splits_g_rows(ranks):
    out, read = ranks
    system = semilinear_system()
    x0 = torch.zeros(3, dtype=torch.float64)
    ref = trisolve.forward_substitution(system, x0).numpy()
    t0, t1 = np.load(out / "semilinear_rank0.npy"), np.load(out / "semilinear_rank1.npy")
    assert np.array_equal(t0, t1)
    np.testing.assert_allclose(t0, ref, rtol=0, atol=1e-9)
    r0, r1 = read("semilinear", 0), read("semilinear", 1)
    assert r0["status"] == "CONVERGED" and r0["rounds"] == r1["rounds"]
    assert r0["rows_evaluated"] + r1["rows_evaluated"] == r0["rows_requested"] == r0["evals"]
    assert abs(r0["rows_evaluated"] - r1["rows_evaluated"]) <= r0["rounds"]
    # traffic: one collective per call (the header packed in front of the rows) and one per solve (the arguments' digests,
    # 8 bytes a rank); each rank receives both headers and every row, padded to equal chunks
    assert r0["collectives"] == r0["calls"] + 1 and r0["calls"] <= r0["rounds"]
    assert r0["bytes"] == r1["bytes"] >= r0["calls"] * 2 * 7 * 8 + r0["rows_requested"] * 3 * 8 + 2 * 8
    assert r0["bytes"] <= r0["calls"] * 2 * 7 * 8 + (r0["rows_requested"] + r0["calls"]) * 3 * 8 + 2 * 8


def test_digits_sample_matches_single_process(ranks):
    import trisolve_diffusion as td
    from trisolve_diffusion.models import load_digits_pipeline

    out, read = ranks
    pipe = load_digits_pipeline("ddim")
    pipe.set_progress_bar_config(disable=True)
    # as the ranks': the full window (the default window is timed), and in lockstep (a split network batch is not per sample)
    single = td.sample(pipe, batch_size=2, num_inference_steps=20, generator=torch.manual_seed(0), output_type="np",
                       window=trisolve.FullWindow(), per_sample=False)  # fmt: skip
    seq = pipe(batch_size=2, num_inference_steps=20, generator=torch.manual_seed(0), output_type="np").images
    i0, i1 = np.load(out / "digits_rank0.npy"), np.load(out / "digits_rank1.npy")
    assert np.array_equal(i0, i1)
    np.testing.assert_allclose(i0, single.images, rtol=0, atol=1e-4)  # smaller network batches: round-off only
    np.testing.assert_allclose(i0, seq, rtol=0, atol=5e-3)  # and the sequential pipeline at the default tolerance
    r0 = read("digits", 0)
    assert r0["status"] == single.solution.status.name and r0["rounds"] == single.solution.num_rounds
    assert single.solution.status.ok


def test_auto_window_is_the_same_on_every_rank(ranks):
    out, read = ranks
    a0, a1 = read("digits_auto", 0), read("digits_auto", 1)
    # status.ok: with the full window (what "auto" picks when the machine is busy) the output-aware finish ends it
    assert a0["status"] in ("CONVERGED", "FINAL_ROW_CONVERGED") and a0["windows"] == a1["windows"]
    assert np.array_equal(np.load(out / "digits_auto_rank0.npy"), np.load(out / "digits_auto_rank1.npy"))


def test_default_plan_is_the_same_on_both_ranks_and_gives_the_single_process_sample(ranks):
    import trisolve_diffusion as td
    from trisolve_diffusion.models import load_digits_pipeline

    out, read = ranks
    p0, p1 = read("digits_plan", 0), read("digits_plan", 1)
    # rank 0 measured and broadcast: both ranks hold the same curve, overheads, contention (measured together) and predictions,
    # hence the same plan
    assert p0["overhead"][3] >= 1.0 and p0["overhead"][2] > 0  # contention, row-by-row overhead: measured
    for k in ("window", "table", "curve", "overhead", "windows", "rounds", "one_rank", "own_samples"):
        assert p0[k] == p1[k], k
    i0, i1 = np.load(out / "digits_plan_rank0.npy"), np.load(out / "digits_plan_rank1.npy")
    assert np.array_equal(i0, i1)
    pipe = load_digits_pipeline("ddim")
    pipe.set_progress_bar_config(disable=True)
    def kw():
        return dict(batch_size=4, num_inference_steps=12, generator=torch.manual_seed(1), output_type="np")

    if p0["own_samples"]:  # each rank solved its own 2 samples (its own rounds), then gathered the headers and trajectories
        assert p0["stats"]["collectives"] == p1["stats"]["collectives"] == 2
        np.testing.assert_allclose(i0, pipe(**kw()).images, rtol=0, atol=5e-3)  # the sequential loop
        return
    single = td.sample(pipe, window=p0["window"], **kw())  # the same window on one process
    np.testing.assert_allclose(i0, single.images, rtol=0, atol=1e-4)  # smaller network batches: round-off only
    assert p0["rounds"] == single.solution.num_rounds
    np.testing.assert_allclose(i0, pipe(**kw()).images, rtol=0, atol=5e-3)  # and the sequential loop
    if p0["one_rank"]:  # the plan ran the loop on rank 0, which broadcast its result: two collectives
        assert p0["window"] == 1 and p0["stats"]["collectives"] == p1["stats"]["collectives"] == 2
        # rank 1 received the int64 header [status, rounds, evaluations, num_frozen] and the float32 trajectory (13 rows of
        # the 4 images' latents: pixel space, as many values as the images); rank 0 sent them
        assert p1["stats"]["bytes_gathered"] == 4 * 8 + 13 * i0.size * 4 and p0["stats"]["bytes_gathered"] == 0
        return
    # the network batch of every call is split in two halves; one collective per call (header packed with the outputs),
    # and one more the first time a batch size is seen (the ranks agree on the outputs' layout)
    assert p0["inputs_evaluated"] + p1["inputs_evaluated"] == p0["inputs_requested"]
    assert abs(p0["inputs_evaluated"] - p1["inputs_evaluated"]) <= p0["calls"]
    assert p0["collectives"] == p0["calls"] + len(p0["batch_sizes"]) and p0["calls"] <= p0["rounds"]
    assert p0["stats"]["collectives"] == p0["collectives"] and p0["stats"]["bytes_gathered"] == p0["bytes"]  # in Solution.stats
    per_input = int(np.prod(i0.shape[1:])) * 4  # one output of the digits UNet (float32)
    header = 7 * 8  # int64 [ok, lo, hi, 3 digests, fingerprint]
    # every call's batch (4 samples x w rows) is even: no padding; each rank receives every output and both headers
    assert p0["bytes"] == p1["bytes"] == 2 * header * p0["calls"] + p0["inputs_requested"] * per_input


def test_the_loop_on_rank_0_alone_gives_every_rank_its_result_and_its_failure(ranks):
    import trisolve_diffusion as td
    from trisolve_diffusion.models import load_digits_pipeline

    out, read = ranks
    r0, r1 = read("one_rank", 0), read("one_rank", 1)
    assert r0["one_rank"] and r0["status"] == r1["status"] == "CONVERGED" and r0["rounds"] == r1["rounds"] == 6
    assert r0["stats"]["collectives"] == r1["stats"]["collectives"] == 2  # the header and the trajectory, broadcast
    t0, t1 = np.load(out / "one_rank_rank0.npy"), np.load(out / "one_rank_rank1.npy")
    pipe = load_digits_pipeline("ddim")
    pipe.set_progress_bar_config(disable=True)
    single = td.sample(pipe, batch_size=1, num_inference_steps=6, generator=torch.manual_seed(2), output_type="np", window=1)
    assert np.array_equal(t0, t1) and np.array_equal(t0, single.solution.trajectory.numpy())  # rank 0's loop, bit for bit
    f0, f1 = read("one_rank_failure", 0), read("one_rank_failure", 1)
    assert "failed on purpose" in f0["raised"] and "FAILED" in f1["raised"]  # rank 0 raises its error; rank 1 learns the status
    assert f0["num_frozen"] == f1["num_frozen"] and 1 < f0["num_frozen"] <= 6 and f0["status"] == f1["status"] == "FAILED"


def test_each_rank_its_own_samples_gives_the_single_process_images(ranks):
    import trisolve_diffusion as td
    from trisolve_diffusion.models import load_digits_pipeline
    from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion

    out, read = ranks
    r0, r1 = read("own_digits", 0), read("own_digits", 1)
    assert r0["own_samples"] and r0["offered"] == r1["offered"] == 5  # a deterministic sampler: the plan was priced for 5 samples
    assert r0["status"] == r1["status"] == "CONVERGED" and r0["rounds"] == r1["rounds"] == 6  # window 1: the loop on each rank
    assert r0["stats"]["collectives"] == r1["stats"]["collectives"] == 2  # the headers and the trajectories, gathered once
    t0, t1 = np.load(out / "own_digits_rank0.npy"), np.load(out / "own_digits_rank1.npy")
    assert np.array_equal(t0, t1) and t0.shape[:2] == (7, 5)
    # rank 0 receives rank 1's header and its 3 samples' trajectories (7 rows of float32 latents); rank 1 rank 0's 2, padded to 3
    assert r0["stats"]["bytes_gathered"] == r1["stats"]["bytes_gathered"] == 4 * 8 + 3 * 7 * int(np.prod(t0.shape[2:])) * 4
    pipe = load_digits_pipeline("ddim")
    pipe.set_progress_bar_config(disable=True)
    kw = dict(batch_size=5, num_inference_steps=6, output_type="np")
    single = td.sample(pipe, window=1, generator=torch.manual_seed(4), **kw)
    np.testing.assert_allclose(t0, single.solution.trajectory.numpy(), rtol=0, atol=1e-5)  # smaller network batches: round-off
    images = np.load(out / "own_digits_images_rank0.npy")
    np.testing.assert_allclose(images, pipe(generator=torch.manual_seed(4), **kw).images, rtol=0, atol=1e-4)  # the loop
    s0, s1 = read("own_sd", 0), read("own_sd", 1)
    assert s0["offered"] == 2 and s0["status"] == s1["status"] == "CONVERGED" and s0["stats"]["collectives"] == 2
    i0, i1 = np.load(out / "own_sd_rank0.npy"), np.load(out / "own_sd_rank1.npy")
    sd = build_tiny_stable_diffusion()
    sd.set_progress_bar_config(disable=True)
    ref = sd(["a cat", "a dog"], num_inference_steps=5, generator=torch.manual_seed(0), output_type="np").images
    assert np.array_equal(i0, i1) and np.abs(ref[0] - ref[1]).max() > 1e-3  # two prompts, two images: each rank its own prompt
    np.testing.assert_allclose(i0, ref, rtol=0, atol=1e-4)
    f0, f1 = read("own_failure", 0), read("own_failure", 1)  # rank 1's network failed in its solve: both raise, none waits
    assert "failed on purpose" in f1["raised"] and "FAILED" in f0["raised"] and f0["status"] == f1["status"] == "FAILED"


@pytest.mark.parametrize("w", [1, None])
def test_k_diffusion_sampler_splits_each_model_call_over_the_ranks(ranks, w):
    from trisolve_diffusion import k_diffusion as kd

    out, read = ranks

    def kd_model(x, sigma):
        return torch.tanh(x) / (1 + sigma[:, None, None, None] ** 2)

    sig = kd.get_sigmas_karras(8, 0.05, 10.0)
    xk = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * sig[0]
    _, single = kd.sample_euler(kd_model, xk, sig, window=w, disable=True, trajectory_dtype=torch.float64, return_solution=True)
    t0, t1 = np.load(out / f"kd_w{w}_rank0.npy"), np.load(out / f"kd_w{w}_rank1.npy")
    assert np.array_equal(t0, t1)
    np.testing.assert_allclose(t0, single.trajectory.numpy(), rtol=0, atol=1e-12)  # halves of each batch: round-off only
    r0 = read(f"kd_w{w}", 0)
    assert r0["rounds"] == single.num_rounds
    # one collective per model call, one more for each batch size's first call (window 1: one size, 4 samples)
    assert r0["rounds"] <= r0["stats"]["collectives"] <= 2 * r0["rounds"]
    if w == 1:
        assert r0["stats"]["collectives"] == r0["rounds"] + 1


def test_a_network_failing_while_rank_0_measures_the_plan_raises_on_every_rank(ranks):
    _, read = ranks
    f0, f1 = read("measure_failure", 0), read("measure_failure", 1)
    assert f0["raised"].startswith("ParallelSamplingError") and "failed while measured" in f0["raised"]
    assert f1["raised"].startswith("DistributedError") and "rank 0 failed while it measured" in f1["raised"]
    assert f1["seconds"] < 60  # told by rank 0's broadcast, not after a collective's timeout


def test_a_network_failing_on_one_rank_while_the_ranks_time_it_together_raises_on_every_rank(ranks):
    """Review F5: rank 1's network raises in the contention's timing; rank 0 learns it at the next collective."""
    _, read = ranks
    f0, f1 = read("contention_failure", 0), read("contention_failure", 1)
    assert f1["raised"].startswith("ParallelSamplingError") and "while timed together" in f1["raised"], f1
    assert f0["raised"].startswith("DistributedError") and "rank(s) [1]" in f0["raised"], f0
    assert "rank 1's network failed while timed together" in f0["raised"], f0  # the failing rank's exception, named
    assert f0["seconds"] < 60  # told at the next collective, not after the group's 120 s timeout


def test_guidance_halves_on_two_ranks_give_the_single_process_sample(ranks):
    import trisolve_diffusion as td
    from trisolve_diffusion.models.tiny_sd import build_tiny_stable_diffusion

    out, read = ranks
    i0, i1 = np.load(out / "sd_cfg_rank0.npy"), np.load(out / "sd_cfg_rank1.npy")
    assert np.array_equal(i0, i1)
    sd = build_tiny_stable_diffusion()
    sd.set_progress_bar_config(disable=True)
    single = td.sample(sd, "a cat", num_inference_steps=6, generator=torch.manual_seed(0), output_type="np", window=1)
    np.testing.assert_allclose(i0, single.images, rtol=0, atol=1e-4)
    sd0 = read("sd_cfg", 0)
    assert sd0["rounds"] == single.solution.num_rounds
    # window 1 (row by row): one call per step, one collective each, one more for the first call's layout
    assert sd0["stats"]["collectives"] == sd0["rounds"] + 1 and sd0["stats"]["bytes_gathered"] > 0


def test_mismatched_arguments_raise_on_both_ranks_before_the_first_round(ranks):
    """trisolve.solve(distribute(...)) compares the ranks' arguments (here row 0, then atol) before any evaluation."""
    _, read = ranks
    for name in ("mismatch", "mismatch_atol"):
        for r in range(2):
            rec = read(name, r)
            assert rec["raised"] and "disagree" in rec["raised"] and "row 0" in rec["raised"], (name, rec)
            assert rec["seconds"] < 5 and rec["calls"] == 0  # no round ran


def test_failing_rank_ends_the_solve_failed_on_both_ranks(ranks):
    _, read = ranks
    for r in range(2):
        rec = read("failure", r)
        assert rec["status"] == "FAILED"
        assert rec["raised"] and "rank(s) [1]" in rec["raised"] and "boom on purpose" in rec["raised"]
        assert rec["seconds"] < 5
    assert "ValueError" in read("failure", 1)["cause"]  # the failing rank chains its own exception


def test_deprecated_distributed_solve_warns_and_still_raises(ranks):
    _, read = ranks
    for r in range(2):
        rec = read("deprecated", r)
        assert rec["raised"] and "boom on purpose" in rec["raised"]
        assert any("trisolve.solve(trisolve.distribute(system" in w for w in rec["warnings"]), rec["warnings"]


def test_absent_rank_times_out_with_an_error(ranks):
    _, read = ranks
    rec = read("absent", 0)
    assert rec["raised"] and "no answer" in rec["raised"]
    assert 1.5 < rec["seconds"] < 10


def test_distribute_needs_an_initialised_group_and_a_known_system():
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(ValueError, match="init_process_group"):
        trisolve.distribute(rnn_system()[0])


def test_row_chunks_cover_rows_in_order():
    from trisolve.distributed import row_chunks

    for lo, hi, world in [(1, 2, 4), (3, 50, 2), (1, 101, 8), (5, 6, 1)]:
        chunks = row_chunks(lo, hi, world)
        assert chunks[0][0] == lo and chunks[-1][1] == hi
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        sizes = [b - a for a, b in chunks]
        assert max(sizes) - min(sizes) <= 1


def test_multi_gpu_example_runs_with_torchrun_on_cpu(tmp_path):
    """examples/sample_multi.py (the docs page "Several GPUs") runs as written under torchrun on a CPU build (gloo)."""
    import trisolve_diffusion as td
    from trisolve_diffusion.models import load_digits_pipeline

    out = tmp_path / "images.npy"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "examples" / "sample_multi.py"), "--steps", "10", "--batch", "2", "--out", str(out)]  # fmt: skip
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "2 ranks (gloo, cpu)" in run.stdout
    images = np.load(out)
    pipe = load_digits_pipeline("ddim")
    pipe.set_progress_bar_config(disable=True)
    single = td.sample(pipe, batch_size=2, num_inference_steps=10, generator=torch.Generator("cpu").manual_seed(0), output_type="np")
    seq = pipe(batch_size=2, num_inference_steps=10, generator=torch.Generator("cpu").manual_seed(0), output_type="np").images
    rounds = int(re.search(r"in (\d+) rounds", run.stdout).group(1))
    # the default window is timed: the two ranks' plan may differ from one process's (e.g. forward substitution on one
    # process, a window on two); with the same rounds only smaller network batches differ (round-off), else both are
    # solves to the default tolerance (5e-4 per step in latent units)
    same_plan = rounds == single.solution.num_rounds
    np.testing.assert_allclose(images, single.images, rtol=0, atol=1e-4 if same_plan else 3e-3)
    np.testing.assert_allclose(images, seq, rtol=0, atol=5e-3)


def test_what_several_ranks_cannot_run_is_refused_at_the_call_on_every_rank(ranks):
    _, read = ranks
    tsys = trisolve.BlackBoxSystem(lambda x, lo, hi: torch.tanh(x[lo - 1 : hi - 1] * 0.8) + 0.1, n=30)
    ref = trisolve.forward_substitution(tsys, torch.zeros(3, dtype=torch.float64)).numpy()
    for r in range(2):
        rec = read("refused", r)
        for name, (message, seconds) in rec["refused"].items():
            assert message is not None and "not with several ranks" in message, (name, message)
            assert seconds < 5  # at the call, not after a collective's timeout
        assert "derivatives='finite-differences'" in rec["refused"]["newton"][0]
        assert "single-process" in rec["refused"]["gradients"][0]
        status, traj = rec["default"]  # the default method picks derivatives that run on several ranks
        assert status == "CONVERGED"
        np.testing.assert_allclose(np.array(traj), ref, atol=1e-10)
        status, rounds, traj = rec["with_jacobian"]  # distribute() keeps a jacobian= callable: Newton runs
        assert status == "CONVERGED" and rounds <= 10
        np.testing.assert_allclose(np.array(traj), ref, atol=1e-10)


def test_for_samples_cuts_the_conditioning_to_the_samples():
    """``UNetDenoiser.for_samples`` (each rank's own samples): the cut denoiser on samples 1..2 of 3 gives what the whole one
    gives them, with guidance, for per-sample and shared conditioning, over a window of two rows; bad ranges are named."""
    import trisolve_diffusion as td

    def unet(x, t, *, encoder_hidden_states, return_dict=False):  # an output that depends on each input's own conditioning
        return (x * encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None] + t[:, None, None, None],)

    unet.dtype = torch.float32
    for cond in (torch.arange(6.0).reshape(6, 1, 1).expand(6, 2, 3), torch.tensor([1.0, 2.0]).reshape(2, 1, 1).expand(2, 2, 3)):
        den = td.network.unet_denoiser(unet, guidance_scale=3.0, encoder_hidden_states=cond)
        x = torch.randn(2 * 3, 1, 2, 2, generator=torch.Generator().manual_seed(0))  # two rows of 3 samples
        t = torch.tensor([5.0, 5.0, 5.0, 7.0, 7.0, 7.0])
        whole = den(x, t).reshape(2, 3, 1, 2, 2)
        cut = den.for_samples(1, 3, 3)(x.reshape(2, 3, 1, 2, 2)[:, 1:].reshape(4, 1, 2, 2), torch.tensor([5.0, 5.0, 7.0, 7.0]))
        torch.testing.assert_close(cut.reshape(2, 2, 1, 2, 2), whole[:, 1:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="lie in a batch of 3"):
        den.for_samples(2, 4, 3)
