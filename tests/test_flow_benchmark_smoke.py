"""benchmarks/flow.py runs at smoke size and writes its JSON and Markdown (no timing is asserted)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_flow_benchmark_runs_at_smoke_size(tmp_path, monkeypatch):
    monkeypatch.setenv("TRISOLVE_BENCH_RESULTS", str(tmp_path))
    monkeypatch.syspath_prepend(str(BENCH))
    for mod in ("common", "flow"):
        sys.modules.pop(mod, None)
    importlib.import_module("flow").main(["--quick"])
    payload = json.loads((tmp_path / "flow_quick.json").read_text())
    recs = payload["records"]
    assert {r["method"] for r in recs} >= {"Jacobi", "Picard (ParaDiGMS) tol 0.1", "TAA m=1, Picard (default)", "TAA m=4, Picard"}
    ok = ("CONVERGED", "FINAL_ROW_CONVERGED")  # a pixel-space model: the output-aware finish is the default
    assert all(r["status"] in ok and r["rounds"] <= r["steps"] for r in recs)
    default = next(r for r in recs if r["method"] == "TAA m=1, Picard (default)")
    assert default["final_psnr"] >= 45
    assert (tmp_path / "flow_quick.md").read_text().count("|") > 10
