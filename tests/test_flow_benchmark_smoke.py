"""benchmarks/flow.py runs at smoke size and writes its JSON and Markdown (no timing is asserted)."""

from __future__ import annotations

import json

from benchrun import run_benchmark


def test_flow_benchmark_runs_at_smoke_size(tmp_path, monkeypatch):
    run_benchmark("flow", ["--quick"], tmp_path, monkeypatch)
    payload = json.loads((tmp_path / "flow_quick.json").read_text())
    recs = payload["records"]
    assert {r["method"] for r in recs} >= {"Jacobi", "Picard (ParaDiGMS) tol 0.1", "TAA m=1, Picard (default)", "TAA m=4, Picard"}
    ok = ("CONVERGED", "FINAL_ROW_CONVERGED")  # a pixel-space model: the output-aware finish is the default
    assert all(r["status"] in ok and r["rounds"] <= r["steps"] for r in recs)
    default = next(r for r in recs if r["method"] == "TAA m=1, Picard (default)")
    assert default["final_psnr"] >= 45
    assert (tmp_path / "flow_quick.md").read_text().count("|") > 10
