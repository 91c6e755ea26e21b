"""Run a benchmark script's ``main`` at smoke size from a test (the benchmark smoke tests share this)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run_benchmark(name: str, argv: list[str], tmp_path, monkeypatch) -> None:
    """Run ``benchmarks/<name>.py``'s ``main(argv)`` with its results written to ``tmp_path`` (fresh imports)."""
    monkeypatch.setenv("TRISOLVE_BENCH_RESULTS", str(tmp_path))
    monkeypatch.syspath_prepend(str(BENCH))
    for mod in ("common", name):
        sys.modules.pop(mod, None)
    importlib.import_module(name).main(argv)
