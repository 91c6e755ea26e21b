"""Run every CPU benchmark and write ``benchmarks/results/*.json`` and ``*.md`` (included by the docs).

    python benchmarks/run.py            # full size (about an hour on 2 CPU cores)
    python benchmarks/run.py --quick    # smoke size, writes *_quick.* files

The GPU benchmark is separate: ``python benchmarks/gpu.py`` on a CUDA machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import autowindow  # noqa: E402
import diffusion  # noqa: E402
import finish  # noqa: E402
import k_samplers  # noqa: E402
import launches  # noqa: E402
import overhead  # noqa: E402
import recurrences  # noqa: E402
import video  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    for module in (recurrences, overhead, launches, diffusion, finish, autowindow, video, k_samplers):
        module.main(args)
