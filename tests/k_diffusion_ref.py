"""The real ``k_diffusion.sampling`` (k-diffusion 0.1.1.post1 from PyPI), loaded without its package ``__init__``.

``k_diffusion/__init__.py`` imports its training extras (torchvision, clip, wandb, ...); the
samplers live in ``sampling.py``, which needs only ``utils.append_dims`` from the package and
imports ``torchdiffeq`` (``log_likelihood``) and ``torchsde`` (``BrownianTreeNoiseSampler``) at
the top. Where those are not installed they are replaced by modules that raise when used: the
samplers compared here use neither.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def _unavailable(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)

    def __getattr__(attr):
        raise ImportError(f"{name}.{attr} is not installed here; the k-diffusion samplers under test do not use it.")

    mod.__getattr__ = __getattr__
    return mod


def load_sampling() -> types.ModuleType:
    """``k_diffusion.sampling`` as the module ``_k_diffusion_ref.sampling``; skips the test when k-diffusion is absent."""
    if "_k_diffusion_ref.sampling" in sys.modules:
        return sys.modules["_k_diffusion_ref.sampling"]
    spec = importlib.util.find_spec("k_diffusion")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1; scripts/setup.sh installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "sampling.py"
    pkg = types.ModuleType("_k_diffusion_ref")
    pkg.__path__ = []
    utils = types.ModuleType("_k_diffusion_ref.utils")

    def append_dims(x, target_dims):  # k_diffusion.utils.append_dims (utils.py imports torchvision)
        dims_to_append = target_dims - x.ndim
        if dims_to_append < 0:
            raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
        return x[(...,) + (None,) * dims_to_append]

    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules["_k_diffusion_ref"] = pkg
    sys.modules["_k_diffusion_ref.utils"] = utils
    for name in ("torchdiffeq", "torchsde"):
        if importlib.util.find_spec(name) is None and name not in sys.modules:
            sys.modules[name] = _unavailable(name)
    mod_spec = importlib.util.spec_from_file_location("_k_diffusion_ref.sampling", path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules["_k_diffusion_ref.sampling"] = module
    mod_spec.loader.exec_module(module)
    return module
