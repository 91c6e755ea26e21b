"""benchmarks/video.py runs at smoke size and writes its JSON and Markdown (no timing is asserted)."""

from __future__ import annotations

import json

from benchrun import run_benchmark


def test_video_benchmark_runs_at_smoke_size(tmp_path, monkeypatch):
    run_benchmark("video", ["--quick"], tmp_path, monkeypatch)
    recs = json.loads((tmp_path / "video_quick.json").read_text())["records"]
    assert {r["model"] for r in recs} == {"Wan 2.1 (UniPC flow)", "LTX-Video (FlowMatch Euler)"}
    assert {r["method"] for r in recs} == {"Jacobi", "Picard (ParaDiGMS) tol 0.1", "default (TAA)"}
    assert all(r["rounds"] <= r["steps"] for r in recs)
    default = [r for r in recs if r["method"] == "default (TAA)"]
    assert all(r["status"] in ("CONVERGED", "FINAL_ROW_CONVERGED") and r["rel_error"] < 1e-2 for r in default)
    assert (tmp_path / "video_quick.md").read_text().count("|") > 10
