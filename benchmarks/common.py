"""Shared helpers for the benchmarks: timing, machine description, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(os.environ.get("TRISOLVE_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def median_time(fn, repeats: int = 5, sync=None, *, warmup: bool = True) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up unless ``warmup=False``), and the last result.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called around each run, so that work a device
    still has queued is counted in the run that queued it.
    """
    sync = sync or (lambda: None)
    if warmup:
        fn()
        sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def write(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float))
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


def median_range(values) -> str:
    """``median [min, max]`` of ``values`` for a table cell; ``None`` entries are runs that never
    reached the quantity (marked ``*``: the median of those that did); ``-`` when none did."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) < len(values):
        return f"{statistics.median(vals):g}* [{min(vals):g}, {max(vals):g}]"
    med = statistics.median(vals)
    return f"{med:g} [{min(vals):g}, {max(vals):g}]" if min(vals) != max(vals) else f"{med:g}"
