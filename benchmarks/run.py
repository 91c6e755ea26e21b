"""Run every CPU benchmark and write ``benchmarks/results/*.json`` and ``*.md`` (included by the docs).

    python benchmarks/run.py            # full size (a few hours on 2 CPU cores)
    python benchmarks/run.py --quick    # smoke size, writes *_quick.* files

Not run here: the GPU benchmarks (``python benchmarks/gpu.py`` and ``gpu_round.py`` on a CUDA
machine), ``flow_weights.py`` (compares the bundled flow weights with an earlier revision's) and
the shared helpers (``common.py``). ``ranks.py`` starts its own ``torchrun`` processes; the
timed ones (``default_speed.py``, ``ranks.py``, ``launches.py --compiled``) say little on a
machine shared with other work: run them when it is quiet.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import autowindow  # noqa: E402
import default_speed  # noqa: E402
import diffusion  # noqa: E402
import finish  # noqa: E402
import flow  # noqa: E402
import k_samplers  # noqa: E402
import launches  # noqa: E402
import memory  # noqa: E402
import multi_gpu_model  # noqa: E402
import ode  # noqa: E402
import overhead  # noqa: E402
import ranks  # noqa: E402
import recurrences  # noqa: E402
import rounds  # noqa: E402
import video  # noqa: E402

#: Every benchmark this script runs, in order (the test suite checks that each CPU benchmark is here).
BENCHMARKS = (recurrences, memory, ode, overhead, launches, diffusion, rounds, finish, flow, autowindow, default_speed, ranks,
              multi_gpu_model, video, k_samplers)  # fmt: skip
#: Benchmarks that are not CPU benchmarks of the library (see above).
NOT_RUN = ("gpu", "gpu_round", "flow_weights", "common", "run")

if __name__ == "__main__":
    args = sys.argv[1:]
    for module in BENCHMARKS:
        module.main(args)
