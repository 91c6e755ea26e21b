"""``benchmarks/rounds.py`` and ``benchmarks/default_speed.py`` at smoke size (no timing is asserted)."""

from __future__ import annotations

import json

from benchrun import run_benchmark


def _run(name, argv, tmp_path, monkeypatch):
    run_benchmark(name, argv, tmp_path, monkeypatch)
    return json.loads((tmp_path / f"{name}_quick.json").read_text()), (tmp_path / f"{name}_quick.md").read_text()


def _rounds_module(monkeypatch):
    """``benchmarks/rounds.py`` imported afresh (its folder on the path for this test)."""
    import importlib
    import sys

    from benchrun import BENCH

    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("rounds", None)
    return importlib.import_module("rounds")


def test_rounds_benchmark_runs_a_ddpm_a_k_diffusion_and_a_flow_loop(tmp_path, monkeypatch):
    payload, table = _run("rounds", ["--quick"], tmp_path, monkeypatch)
    recs = payload["records"]
    assert [r["setting"] for r in recs] == ["DDIM-25", "Euler-25", "FlowEuler-20"]
    assert all(r["psnr_db"] >= 40 and 1 <= r["rounds"] <= r["steps"] and r["evals_per_step"] >= 1 for r in recs)
    assert "Euler-25" in table and "target" in table


def test_rounds_benchmark_sweeps_say_what_they_change(tmp_path, monkeypatch):
    """--history, --order, --rtol, --lockstep, --window, --gain-weight and the freeze rule (the defaults' sweeps) run every setting
    with that change, and the table says so."""
    import trisolve.driver as driver

    monkeypatch.setattr(driver, "FREEZE_FRACTION", driver.FREEZE_FRACTION)  # the flag sets the driver's constant: restored after the test
    argv = ["--quick", "--history", "2", "--order", "8", "--rtol", "0", "--lockstep", "--window", "8", "--gain-weight", "0.25",
            "--freeze-fraction", "0.5"]  # fmt: skip
    payload, table = _run("rounds", argv, tmp_path, monkeypatch)
    assert len(payload["records"]) == 3 and all(r["psnr_db"] >= 40 for r in payload["records"])
    assert ("default options but 2 TAA difference pairs, Picard order 8, rtol=0, batches in lockstep (per_sample=False), "
            "WeightedPicard(d ** 0.25) as the map, FREEZE_FRACTION=0.5 with a sliding window of 8 rows") in table  # fmt: skip
    assert driver.FREEZE_FRACTION == 0.5
    assert all(r["sample_rounds"] == [r["rounds"]] for r in payload["records"])  # batch 1: the one sample's rounds


def test_rounds_run_uses_the_full_window_unless_asked_for_another(monkeypatch):
    """``rounds.run()``: rounds tables must not depend on the machine's load, so without ``window`` every solve (the
    scheduler loops' ``sample_latents`` and the flow model's ``sample``) gets the full window, not the timed default;
    ``window="auto"`` (or any window) is passed on as given."""
    import trisolve

    rounds = _rounds_module(monkeypatch)
    seen = []

    def spy(real):
        def call(*args, **kw):
            seen.append(kw.get("window"))
            return real(*args, **kw)

        return call

    monkeypatch.setattr(rounds.td, "sample_latents", spy(rounds.td.sample_latents))
    monkeypatch.setattr(rounds.td, "sample", spy(rounds.td.sample))
    settings = {"DDIM-4": ("ddim", 4, 1, None), "FlowEuler-4": ("flow", 4, 1, None)}
    recs = rounds.run(settings, [0], dict(progress=False))
    assert len(seen) == 2 and all(isinstance(w, trisolve.FullWindow) for w in seen), seen
    assert all(r["psnr_db"] >= 40 and r["rounds"] <= r["steps"] for r in recs)
    seen.clear()
    rounds.run(settings, [0], dict(progress=False, window="auto"))
    assert seen == ["auto", "auto"]


def test_rounds_benchmark_names_each_setting_apart(monkeypatch):
    """Result files are named by the settings' slugs: a batch-4 setting's never collides with the batch-1 one's."""
    rounds = _rounds_module(monkeypatch)
    slugs = [rounds.slug(s) for s in rounds.SETTINGS]
    assert len(set(slugs)) == len(slugs)
    assert rounds.slug("DDIM-50") == "ddim-50" and rounds.slug("DDIM-50, batch 4") == "ddim-50-batch4"


def test_default_speed_benchmark_records_the_choice_and_the_load(tmp_path, monkeypatch):
    payload, table = _run("default_speed", ["--quick"], tmp_path, monkeypatch)
    (row,) = payload["rows"]
    assert row["window"] is not None and 1 <= row["window"] <= row["steps"] and row["sequential_s"] > 0 and row["default_s"] > 0
    assert len(payload["load_average"]) == 2 and payload["machine"]["cpus"] >= 1
    assert "speed-up" in table and "CPU time" in table and row["sequential_cpu_s"] > 0 and row["default_cpu_s"] > 0


def test_rounds_benchmark_compares_initialisations_with_their_sequential_cost(tmp_path, monkeypatch):
    run_benchmark("rounds", ["--init", "--quick"], tmp_path, monkeypatch)
    recs = json.loads((tmp_path / "rounds_init_quick.json").read_text())["records"]
    assert {(r["setting"], r["method"]) for r in recs} == {
        (s, m) for s in ("DDIM-50", "FlowEuler-28") for m in ("cold", "coarse 5 steps", "neighbouring seed's trajectory")
    }
    for r in recs:  # every start reaches the same sample; the coarse steps are counted as dependent steps
        assert r["psnr_db"] >= 40 and r["dependent_steps"] == r["rounds"] + r["sequential_steps"]
        assert r["sequential_steps"] == (5 if r["method"].startswith("coarse") else 0)


def test_rounds_trace_replays_the_finish_where_the_default_solve_stops(tmp_path, monkeypatch):
    """--trace: the finish replayed on the recorded inputs at the default rate floor stops at the round the
    default solve itself stopped at, and a higher floor never stops earlier."""
    from trisolve.driver import PENDING_RATE_FLOOR

    run_benchmark("rounds", ["--trace", "--quick"], tmp_path, monkeypatch)
    payload = json.loads((tmp_path / "rounds_trace_quick.json").read_text())
    recs, default = payload["records"], f"{PENDING_RATE_FLOOR:.3g}"
    assert [r["setting"] for r in recs] == ["DDIM-25", "Euler-25", "FlowEuler-20"]
    for r in recs:
        assert r["finish"][default]["rounds"] == r["default_rounds"] and r["finish"][default]["psnr_db"] >= 40
        assert r["finish"]["0.5"]["rounds"] >= r["finish"][default]["rounds"] >= r["finish"]["0.286"]["rounds"] >= r["finish"]["0.231"]["rounds"]
        assert r["first_45db"] is not None and r["first_45db"] <= r["finish"]["0.5"]["rounds"] <= len(r["psnr_db"])
        assert 0 < r["error_over_estimate"] < 10  # the image's error against the estimate the finish stopped on
        # the other finishes: a share <= 1 of the estimate, or a looser final-row tolerance, never stops later
        v = r["variants"]
        assert r["finish"][default]["rounds"] >= v["share"]["rounds"] and r["finish"][default]["rounds"] >= v["atol 0.009"]["rounds"]
        assert v["atol 0.009"]["rounds"] >= v["atol 0.01"]["rounds"] >= v["atol 0.01125"]["rounds"] and v["geo3"]["rounds"] <= len(r["psnr_db"])
    text = (tmp_path / "rounds_trace_quick.md").read_text()
    assert "rate floor 0.333" in text and "finish: share" in text
