"""benchmarks/ode.py runs at smoke size and writes its JSON and Markdown (no timing is asserted)."""

from __future__ import annotations

import json

from benchrun import run_benchmark


def test_ode_benchmark_runs_at_smoke_size(tmp_path, monkeypatch):
    run_benchmark("ode", ["--quick"], tmp_path, monkeypatch)
    payload = json.loads((tmp_path / "ode_quick.json").read_text())
    rows = payload["rows"]
    assert payload["machine"]["cpus"] >= 1
    adams = {"odeint explicit_adams max_order=4", "odeint explicit_adams max_order=12"}
    assert {r["front_door"] for r in rows} == {"odeint rk4", "solve_ivp RK4"} | adams
    # every front door converged to its reference loop, in fewer rounds than steps
    assert all(r["status"] == "CONVERGED" and r["max_diff"] < 1e-10 and 1 <= r["rounds"] <= r["n"] for r in rows)
    assert all(r["max_diff_scipy"] < 1e-5 for r in rows if "max_diff_scipy" in r)
    assert (tmp_path / "ode_quick.md").read_text().count("|") > 10
