"""Shared fixtures: the array namespaces the core is tested on; thread counts of the test processes."""

from __future__ import annotations

import os

# One thread per test process unless the caller sets OMP_NUM_THREADS: torch (and the BLAS behind
# NumPy) otherwise start as many threads as cores in every process, and parallel jobs on a shared
# machine oversubscribe it (the suite took 16 minutes under load against 3 quiet). Set before
# torch is imported (it reads OMP_NUM_THREADS then); child processes (the two-rank tests) inherit it.
THREADS = os.environ.setdefault("OMP_NUM_THREADS", "1")
for _var in ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, THREADS)

import array_api_strict  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(int(THREADS))  # also when torch was imported before this file (by a plugin)

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("ci")


class Backend:
    """One array namespace plus conversions to and from NumPy."""

    def __init__(self, name: str):
        self.name = name
        if name == "numpy":
            import array_api_compat.numpy as xp
        elif name == "torch":
            import array_api_compat.torch as xp
        else:
            xp = array_api_strict
        self.xp = xp

    def asarray(self, a, dtype="float64"):
        a = np.asarray(a, dtype=dtype)
        if self.name == "torch":
            return torch.from_numpy(a.copy())
        if self.name == "strict":
            return array_api_strict.asarray(a)
        return a

    def to_numpy(self, a):
        if self.name == "torch":
            return a.detach().cpu().numpy()
        return np.asarray(a)

    def __repr__(self):
        return self.name


@pytest.fixture(params=["numpy", "torch", "strict"])
def backend(request) -> Backend:
    return Backend(request.param)


BACKENDS = [Backend("numpy"), Backend("torch"), Backend("strict")]


#: End-to-end modules (whole pipelines, trained models, benchmark smoke runs, two-process runs):
#: marked ``slow`` so that ``pytest -m "not slow"`` is the quick loop; CI runs everything.
SLOW_MODULES = {
    "test_benchmarks_smoke.py",
    "test_diffusion_parity.py",
    "test_distributed.py",
    "test_flow_benchmark_smoke.py",
    "test_video_benchmark_smoke.py",
    "test_flow_model.py",
    "test_flow_pipelines.py",
    "test_models.py",
    "test_pipelines.py",
}


#: Parity with the installed diffusers (its schedulers' step loops and its pipelines): marked
#: ``parity``; CI also runs ``pytest -m parity`` on the oldest supported diffusers
#: (``scripts/setup_oldest.sh``).
PARITY_MODULES = {
    "test_diffusion_parity.py",
    "test_flow_match_mapping.py",
    "test_flow_pipelines.py",
    "test_pipelines.py",
    "test_sample_latents.py",
    "test_scheduler_mappings.py",
    "test_video_pipelines.py",
}


#: The heaviest tests of those modules, left out of ``-m parity`` so that the run on the oldest
#: diffusers fits CI's time (their code paths are covered by the lighter parity tests; the
#: newest diffusers runs them with the whole suite).
PARITY_LEFT_OUT = {
    "test_stable_diffusion_parity_with_guidance",
    "test_digits_flow_default_keeps_one_difference_pair",
    "test_inpaint_parity[dpm++2m-True-4]",  # [ddpm-False-4] and [dpm++2m-True-9] stay: both UNet layouts
    "test_inpaint_parity[ddpm-False-9]",
    "test_img2img_parity[dpm++2m-True]",
}


def pytest_ignore_collect(collection_path, config):
    """With ``-m parity`` only the parity modules are imported: the oldest-release environment
    (``scripts/setup_oldest.sh``) has their dependencies only, not every test dependency."""
    if config.getoption("markexpr") == "parity" and collection_path.name.startswith("test_") and collection_path.suffix == ".py":
        return True if collection_path.name not in PARITY_MODULES else None
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        left_out = getattr(item, "originalname", item.name) in PARITY_LEFT_OUT or item.name in PARITY_LEFT_OUT
        if item.path.name in PARITY_MODULES and not left_out:
            item.add_marker(pytest.mark.parity)
