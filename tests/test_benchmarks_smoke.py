"""Each benchmark runs at a tiny size and writes its JSON and Markdown (no timing is asserted)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("name", ["recurrences", "overhead", "diffusion", "gpu"])
def test_benchmark_runs_at_smoke_size(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TRISOLVE_BENCH_RESULTS", str(tmp_path))
    monkeypatch.syspath_prepend(str(BENCH))
    for mod in ("common", name):
        sys.modules.pop(mod, None)
    module = importlib.import_module(name)
    module.main(["--quick", "--device", "cpu"] if name == "gpu" else ["--quick"])
    payload = json.loads((tmp_path / f"{name}_quick.json").read_text())
    assert payload["machine"]["cpus"] >= 1
    table = (tmp_path / f"{name}_quick.md").read_text()
    assert table.count("|") > 10
    if name == "diffusion":
        recs = payload["records"]
        assert {r["method"] for r in recs} >= {"TAA m=4, Picard (default)"}
        assert all(r["rounds"] <= r["steps"] for r in recs)
        assert all(r["final_psnr"] >= 40 for r in recs)
    if name == "recurrences":  # every parallel answer matches its loop; the ODEs all converge
        assert all(r["status"] == "CONVERGED" and r["max_error"] < 1e-6 for r in payload["rnn"])
        assert all(r["status"] == "CONVERGED" for r in payload["ode"])
    if name == "gpu":  # the CPU smoke run of the CUDA script: the parallel answers match the loops
        assert all(r["status"] == "CONVERGED" and r["rounds"] <= r["steps"] and r["psnr_db"] >= 40 for r in payload["diffusion"])
        assert all(r["max_error"] < 1e-6 for r in payload["rnn"])
