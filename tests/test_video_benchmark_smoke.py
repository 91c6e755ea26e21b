"""benchmarks/video.py runs at smoke size and writes its JSON and Markdown (no timing is asserted)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_video_benchmark_runs_at_smoke_size(tmp_path, monkeypatch):
    monkeypatch.setenv("TRISOLVE_BENCH_RESULTS", str(tmp_path))
    monkeypatch.syspath_prepend(str(BENCH))
    for mod in ("common", "video"):
        sys.modules.pop(mod, None)
    importlib.import_module("video").main(["--quick"])
    recs = json.loads((tmp_path / "video_quick.json").read_text())["records"]
    assert {r["model"] for r in recs} == {"Wan 2.1 (UniPC flow)", "LTX-Video (FlowMatch Euler)"}
    assert {r["method"] for r in recs} == {"Jacobi", "Picard (ParaDiGMS) tol 0.1", "default (TAA)"}
    assert all(r["rounds"] <= r["steps"] for r in recs)
    default = [r for r in recs if r["method"] == "default (TAA)"]
    assert all(r["status"] in ("CONVERGED", "FINAL_ROW_CONVERGED") and r["rel_error"] < 1e-2 for r in default)
    assert (tmp_path / "video_quick.md").read_text().count("|") > 10
