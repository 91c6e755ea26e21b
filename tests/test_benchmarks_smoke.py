"""Each benchmark runs at a tiny size and writes its JSON and Markdown (no timing is asserted).

``--quick`` is each benchmark's smoke size: one small setting, one seed, no warm-up runs (its
times mean nothing). ``gpu.py`` runs once for the module; its ``--cost-model-only`` path is
checked on the rows that run measured.
"""

from __future__ import annotations

import importlib
import json
import sys

import pytest
from benchrun import BENCH, run_benchmark


def test_cpu_rnn_target_runs_at_smoke_size(tmp_path, monkeypatch):
    """``recurrences.py --cpu-rnn``: both dtypes converge to the NumPy loop, and the floor never exceeds the solve by much."""
    run_benchmark("recurrences", ["--cpu-rnn", "--quick"], tmp_path, monkeypatch)
    rows = json.loads((tmp_path / "recurrences_cpu_rnn_quick.json").read_text())["rows"]
    assert [r["dtype"] for r in rows] == ["float64", "float32"]
    assert all(r["status"] == "CONVERGED" and r["max_error"] < 10 * r["atol"] and r["rounds"] >= 2 for r in rows)


def test_adjoint_choice_runs_at_smoke_size(tmp_path, monkeypatch):
    """``recurrences.py --adjoint``: the default (auto) adjoint's gradient agrees with the dense one; at d <= 8 it is dense from the start."""
    run_benchmark("recurrences", ["--adjoint", "--quick"], tmp_path, monkeypatch)
    rows = json.loads((tmp_path / "recurrences_adjoint_quick.json").read_text())["rows"]
    assert [r["problem"] for r in rows] == ["tanh RNN, hidden 4", "tanh RNN, hidden 16"]
    assert all(r["auto_vs_dense"] < 1e-10 and r["rounds"] >= 2 for r in rows)
    assert rows[0]["auto_final"] == "dense" and rows[0]["auto_switched_at"] is None


@pytest.fixture(scope="module")
def gpu_quick(tmp_path_factory):
    """``gpu.py --quick --device cpu``, run once: its results folder, payload and module."""
    out = tmp_path_factory.mktemp("gpu")
    with pytest.MonkeyPatch.context() as mp:
        run_benchmark("gpu", ["--quick", "--device", "cpu"], out, mp)
        module = sys.modules["gpu"]
    return out, json.loads((out / "gpu_quick.json").read_text()), module


def test_gpu_benchmark_runs_at_smoke_size(gpu_quick):
    """The CPU smoke run of the CUDA script: the parallel answers match the loops."""
    out, payload, _ = gpu_quick
    assert payload["machine"]["cpus"] >= 1 and (out / "gpu_quick.md").read_text().count("|") > 10
    ok = ("CONVERGED", "FINAL_ROW_CONVERGED")  # pixel-space digits: the output-aware finish is the default
    assert all(r["status"] in ok and r["rounds"] <= r["steps"] and r["psnr_db"] >= 40 for r in payload["diffusion"])
    assert all(r["max_error"] < 1e-6 for r in payload["rnn"])
    cm = payload["cost_model"]
    assert {r["devices"] for r in cm["predicted"]} == {1, 2, 4, 8}
    assert all(1 <= r["best_window"] <= r["steps"] and r["predicted_s"] > 0 for r in cm["predicted"])
    assert {r["window"] for r in cm["measured"]} == {"4", "auto", "full"}
    assert all(r["rounds"] <= r["steps"] for r in cm["measured"])


@pytest.mark.parametrize(
    "name",
    ["recurrences", "overhead", "diffusion", "autowindow", "finish", "gpu_round", "flow_weights", "launches", "k_samplers",
     "multi_gpu_model"],  # fmt: skip
)
def test_benchmark_runs_at_smoke_size(name, tmp_path, monkeypatch):
    run_benchmark(name, ["--quick", "--device", "cpu"] if name.startswith("gpu") else ["--quick"], tmp_path, monkeypatch)
    payload = json.loads((tmp_path / f"{name}_quick.json").read_text())
    assert payload["machine"]["cpus"] >= 1
    table = (tmp_path / f"{name}_quick.md").read_text()
    assert table.count("|") > 10
    if name == "k_samplers":
        assert all(r["status"] == "CONVERGED" and r["psnr_db"] >= 45 and r["rounds"] < r["rows"] for r in payload["records"])
    if name == "diffusion":
        recs = payload["records"]
        assert {r["method"] for r in recs} >= {"TAA m=4, Picard (default)"}
        assert all(r["rounds"] <= r["steps"] for r in recs)
        assert all(r["final_psnr"] >= 40 for r in recs)
    if name == "recurrences":  # every parallel answer matches its loop; the ODEs all converge
        assert all(r["status"] == "CONVERGED" and r["max_error"] < 1e-6 for r in payload["rnn"])
        assert all(r["status"] == "CONVERGED" for r in payload["ode"])
    if name == "launches":  # one device-to-host read per round after the first; the network counted inside, the solver outside
        for r in payload["solves"]:
            assert r["reads_per_round_max"] == 1 and r["outside_kernels_median"] > 0 and r["network_kernels_per_round_median"] > 0
        assert payload["sd15_unet_kernels"] > 1000
    if name == "finish":  # the default finish and the full solve side by side, both close to the loop
        methods = {r["method"] for r in payload["records"]}
        assert len(methods) == 2 and all(r["psnr_db"] >= 40 and r["rounds"] <= 25 for r in payload["records"])
    if name == "gpu_round":  # the split of the solve's time adds up; the parallel answers match the loops
        for r in payload["diffusion"]:
            assert 0 < r["network_s"] <= r["wall_s"] and r["rounds"] >= 1 and r["psnr_db"] >= 40
        assert all(r["max_error"] < 1e-6 for r in payload["rnn"])
    if name == "flow_weights":  # the bundled weights: a sane loss, samples a classifier recognises, the sampler close to the loop
        (res,) = payload["results"].values()
        assert 0 < res["quality"]["loss"] < 0.3 and res["quality"]["confident"] > 0.5
        assert all(s["worst_psnr"] >= 40 and max(s["rounds"]) <= s["steps"] for s in res["sampler"])
    if name == "autowindow":  # every window, auto and the sequential loop timed in one run; the model beside the measurement
        assert {r["window"] for r in payload["timing"]} >= {"4", "8", "full", "auto", "sequential"}
        assert all(r["rounds"] is None or r["rounds"] <= r["steps"] for r in payload["timing"])
        assert all(r["predicted"] > 0 for r in payload["rounds"])


def test_gpu_cost_model_section_at_smoke_size(gpu_quick, monkeypatch):
    """``gpu.py --cost-model-only --quick --device cpu`` writes the cost-model section alone (on the rows the full run measured)."""
    out, full, gpu = gpu_quick
    calls = []

    def rows(dev, dtype, quick, repeats, link_gbps, latency_us):
        calls.append((dev.type, quick, repeats))
        return full["cost_model"]["predicted"], full["cost_model"]["measured"]

    monkeypatch.setattr(gpu, "cost_model_rows", rows)
    gpu.main(["--quick", "--device", "cpu", "--cost-model-only"])
    assert calls == [("cpu", True, 1)]
    payload = json.loads((out / "gpu_cost_model_quick.json").read_text())
    assert {r["devices"] for r in payload["predicted"]} == {1, 2, 4, 8}
    assert all(1 <= r["best_window"] <= r["steps"] and r["predicted_s"] > 0 for r in payload["predicted"])
    assert {r["window"] for r in payload["measured"]} == {"4", "auto", "full"}
    assert all(r["rounds"] <= r["steps"] for r in payload["measured"])
    assert (out / "gpu_cost_model_quick.md").read_text().count("|") > 10


def test_memory_benchmark_runs_at_smoke_size(tmp_path, monkeypatch):
    """``memory.py``: every setting converges; records stay 24 bytes a round; a window of 64 bounds the peak."""
    run_benchmark("memory", ["--quick"], tmp_path, monkeypatch)
    rows = {r["setting"]: r for r in json.loads((tmp_path / "memory_quick.json").read_text())["rows"]}
    assert all(r["status"] == "CONVERGED" and r["record_bytes_per_round"] == 24 for r in rows.values())
    assert rows["TAA m=2, window 64"]["peak_over_trajectory"] < rows["TAA m=2, full window"]["peak_over_trajectory"]


def test_ranks_benchmark_runs_one_and_two_gloo_ranks_at_smoke_size(tmp_path, monkeypatch, capsys):
    """``ranks.py --quick``: torchrun with 1 and 2 gloo ranks beside the loop; the samples match the loop, the ranks agree."""
    run_benchmark("ranks", ["--quick"], tmp_path, monkeypatch)
    payload = json.loads((tmp_path / "ranks_quick.json").read_text())
    assert payload["machine"]["cpus"] >= 1
    one, two = (payload["runs"][k]["rows"] for k in ("1", "2"))
    assert [(r["model"], r["batch"]) for r in one] == [(r["model"], r["batch"]) for r in two] == [("digits", 1), ("tiny_sd", 1)]
    assert all(len(payload["runs"][k]["loadavg_before"]) == 3 for k in ("1", "2"))
    for r in one:
        assert r["status"] in ("CONVERGED", "FINAL_ROW_CONVERGED") and r["max_abs_diff_to_loop"] < 5e-3 and r["loop_seconds"] > 0
    for r in two:  # one collective per network call (one more per batch size), or two when rank 0 runs the loop and broadcasts
        assert r["status"] in ("CONVERGED", "FINAL_ROW_CONVERGED") and r["contention"] >= 1.0
        if r["one_rank"] or r["own_samples"]:  # rank 0's result broadcast, or every rank's own samples gathered once
            assert r["collectives"] == 2 and (r["window"] == 1 or r["own_samples"])
        else:
            assert 1 <= r["collectives"] <= 2 * r["rounds"] and r["bytes_gathered"] > 0
    for r in one + two:  # every plan weighed is recorded with its prediction; the chosen one among them
        names = [p[0] for p in r["plans"]]
        assert "loop" in names and ("one rank" in names) == (r["ranks"] == 2)
        assert r["predicted_seconds"] in [p[2] for p in r["plans"]]
    assert (tmp_path / "ranks_quick.md").read_text().count("|") > 10
    capsys.readouterr()
    run_benchmark("ranks", ["--reprice", str(tmp_path / "ranks_quick.json")], tmp_path, monkeypatch)  # every plan priced again
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 + len(two) and all("loop (1)" in line and "one rank (1)" in line for line in table[2:])


def test_multi_gpu_model_plans_data_parallel_where_a_step_saturates_a_gpu(tmp_path, monkeypatch):
    """``multi_gpu_model.py``: the Flux-sized batch of 8 splits its samples (window 1) and scales with the GPUs; digits does not."""
    run_benchmark("multi_gpu_model", ["--quick"], tmp_path, monkeypatch)
    rows = json.loads((tmp_path / "multi_gpu_model_quick.json").read_text())["rows"]
    flux8 = {r["devices"]: r for r in rows if r["model"].startswith("Flux") and r["batch"] == 8 and r["link"] in ("-", "NVLink 4")}
    assert all(r["window"] == 1 for r in flux8.values())
    assert flux8[8]["speedup"] > 3 * flux8[2]["speedup"] / 2 > 1.5
    digits = [r["speedup"] for r in rows if r["model"].startswith("digits") and r["batch"] == 1 and r["link"] in ("-", "NVLink 4")]
    assert max(digits) < 1.1 * min(digits)  # a network that does not fill one GPU gains nothing from more
    # where nothing beats the loop the plan is the loop (row by row, or on one GPU): never predicted slower than it but
    # for the one-GPU plan's broadcast of the trajectory (Flux-sized at batch 1 on 2 GPUs: 0.99999x)
    assert all(r["speedup"] >= 1.0 - 1e-4 for r in rows)


# -- benchmark paths the parametrised smoke test above does not reach: one tiny setting each ---------
def test_diffusion_scheduler_and_noisy_paths_run_at_smoke_size(tmp_path, monkeypatch):
    """``diffusion.py --settings Euler-4 EulerA-4 DDPM-4``: the scheduler path (Euler, UniPC, PNDM rows: ``sample_latents``'
    default on the scaled rows, and the default solver on the latent rows), and a loop that injects noise on each path,
    whose default method is labelled with the map it runs (WeightedPicard, ``td.default_solver``), not Picard."""
    run_benchmark("diffusion", ["--quick", "--settings", "Euler-4", "EulerA-4", "DDPM-4"], tmp_path, monkeypatch)
    recs = json.loads((tmp_path / "diffusion_quick.json").read_text())["records"]
    methods = {s: {r["method"] for r in recs if r["setting"] == s} for s in ("Euler-4", "EulerA-4", "DDPM-4")}
    assert methods["Euler-4"] == {"TAA m=4, Picard (default)", "TAA m=4, Picard, latent rows"}
    assert methods["EulerA-4"] == {"TAA m=4, WeightedPicard (default)", "TAA m=4, WeightedPicard, latent rows"}
    assert methods["DDPM-4"] == {"Jacobi k=T", "ParaTAA defaults", "TAA m=4, WeightedPicard (default)"}
    assert all(r["rounds"] <= r["steps"] == 4 and r["final_psnr"] >= 40 for r in recs)


def test_flow_sweep_runs_at_smoke_size(tmp_path, monkeypatch):
    """``flow.py --sweep --quick``: the sweep's loop on its first two variants."""
    run_benchmark("flow", ["--quick", "--sweep"], tmp_path, monkeypatch)
    recs = json.loads((tmp_path / "flow_sweep_quick.json").read_text())["records"]
    assert len({r["method"] for r in recs}) == 2 and all(r["rounds"] <= r["steps"] and r["final_psnr"] >= 40 for r in recs)


def test_run_all_imports_every_benchmark(monkeypatch):
    """``run.py`` (every CPU benchmark in turn) imports: its modules and their imports exist."""
    monkeypatch.syspath_prepend(str(BENCH))
    scripts = sorted(p.stem for p in BENCH.glob("*.py"))
    for mod in scripts:
        sys.modules.pop(mod, None)
    run = importlib.import_module("run")
    names = [m.__name__ for m in run.BENCHMARKS]
    assert sorted(names + list(run.NOT_RUN)) == scripts  # every benchmark script is run, or said not to be
    assert all(callable(m.main) for m in run.BENCHMARKS)
