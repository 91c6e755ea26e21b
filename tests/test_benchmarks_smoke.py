"""Each benchmark runs at a tiny size and writes its JSON and Markdown (no timing is asserted)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(name, argv, tmp_path, monkeypatch):
    """Run ``benchmarks/<name>.py``'s ``main(argv)`` with its results written to ``tmp_path`` (fresh imports)."""
    monkeypatch.setenv("TRISOLVE_BENCH_RESULTS", str(tmp_path))
    monkeypatch.syspath_prepend(str(BENCH))
    for mod in ("common", name):
        sys.modules.pop(mod, None)
    importlib.import_module(name).main(argv)


def test_cpu_rnn_target_runs_at_smoke_size(tmp_path, monkeypatch):
    """``recurrences.py --cpu-rnn``: both dtypes converge to the NumPy loop, and the floor never exceeds the solve by much."""
    _run("recurrences", ["--cpu-rnn", "--quick"], tmp_path, monkeypatch)
    rows = json.loads((tmp_path / "recurrences_cpu_rnn_quick.json").read_text())["rows"]
    assert [r["dtype"] for r in rows] == ["float64", "float32"]
    assert all(r["status"] == "CONVERGED" and r["max_error"] < 10 * r["atol"] and r["rounds"] >= 2 for r in rows)


def test_adjoint_choice_runs_at_smoke_size(tmp_path, monkeypatch):
    """``recurrences.py --adjoint``: the default (auto) adjoint's gradient agrees with the dense one; at d <= 8 it is dense from the start."""
    _run("recurrences", ["--adjoint", "--quick"], tmp_path, monkeypatch)
    rows = json.loads((tmp_path / "recurrences_adjoint_quick.json").read_text())["rows"]
    assert [r["problem"] for r in rows] == ["tanh RNN, hidden 4", "tanh RNN, hidden 16"]
    assert all(r["auto_vs_dense"] < 1e-10 and r["rounds"] >= 2 for r in rows)
    assert rows[0]["auto_final"] == "dense" and rows[0]["auto_switched_at"] is None


@pytest.mark.parametrize(
    "name", ["recurrences", "overhead", "diffusion", "gpu", "autowindow", "finish", "gpu_round", "flow_weights", "launches", "k_samplers"]
)
def test_benchmark_runs_at_smoke_size(name, tmp_path, monkeypatch):
    _run(name, ["--quick", "--device", "cpu"] if name.startswith("gpu") else ["--quick"], tmp_path, monkeypatch)
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
    if name == "gpu":  # the CPU smoke run of the CUDA script: the parallel answers match the loops
        ok = ("CONVERGED", "FINAL_ROW_CONVERGED")  # pixel-space digits: the output-aware finish is the default
        assert all(r["status"] in ok and r["rounds"] <= r["steps"] and r["psnr_db"] >= 40 for r in payload["diffusion"])
        assert all(r["max_error"] < 1e-6 for r in payload["rnn"])
        cm = payload["cost_model"]
        assert {r["devices"] for r in cm["predicted"]} == {1, 2, 4, 8}
        assert all(1 <= r["best_window"] <= r["steps"] and r["predicted_s"] > 0 for r in cm["predicted"])
        assert {r["window"] for r in cm["measured"]} >= {"auto", "full"}
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


def test_gpu_cost_model_section_at_smoke_size(tmp_path, monkeypatch):
    """``gpu.py --cost-model-only --quick --device cpu``: predictions for 1-8 devices and the measured windows beside them."""
    monkeypatch.setenv("TRISOLVE_BENCH_RESULTS", str(tmp_path))
    monkeypatch.syspath_prepend(str(BENCH))
    for mod in ("common", "gpu"):
        sys.modules.pop(mod, None)
    importlib.import_module("gpu").main(["--quick", "--device", "cpu", "--cost-model-only"])
    payload = json.loads((tmp_path / "gpu_cost_model_quick.json").read_text())
    assert {r["devices"] for r in payload["predicted"]} == {1, 2, 4, 8}
    assert all(1 <= r["best_window"] <= r["steps"] and r["predicted_s"] > 0 for r in payload["predicted"])
    assert {r["window"] for r in payload["measured"]} == {"4", "auto", "full"}
    assert all(r["rounds"] <= r["steps"] for r in payload["measured"])
    assert (tmp_path / "gpu_cost_model_quick.md").read_text().count("|") > 10


def test_memory_benchmark_runs_at_smoke_size(tmp_path, monkeypatch):
    """``memory.py``: every setting converges; records stay 24 bytes a round; a window of 64 bounds the peak."""
    _run("memory", ["--quick"], tmp_path, monkeypatch)
    rows = {r["setting"]: r for r in json.loads((tmp_path / "memory_quick.json").read_text())["rows"]}
    assert all(r["status"] == "CONVERGED" and r["record_bytes_per_round"] == 24 for r in rows.values())
    assert rows["TAA m=2, window 64"]["peak_over_trajectory"] < rows["TAA m=2, full window"]["peak_over_trajectory"]
