"""Import ComfyUI's ``comfy`` package from a source checkout (ComfyUI is not on PyPI), as DESIGN 13 describes.

Set ``COMFYUI_PATH`` to the checkout (e.g. ``/work/comfyui`` on the development machine); without it
the ComfyUI tests are skipped. ComfyUI's own requirements used here: einops, psutil, pyyaml, scipy.
Two imports are replaced: ``torchvision`` (its C++ ops do not load with the CPU torch build here; only
the video/cosmos models ComfyUI imports at load time reference it) and ``torchsde`` (only ComfyUI's
Brownian-tree noise sampler uses it; the node refuses that sampler). diffusers is imported first, so
that it does not see the torchvision stand-in.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

SKIP_REASON = (
    "ComfyUI is not on PyPI: set COMFYUI_PATH to a ComfyUI source checkout (with comfy/samplers.py) to run the node "
    "against ComfyUI's own KSAMPLER and samplers; skipped otherwise (as in CI)"
)


def comfyui_path() -> Path | None:
    p = os.environ.get("COMFYUI_PATH")
    return Path(p) if p and (Path(p) / "comfy" / "samplers.py").is_file() else None


class _Stub(types.ModuleType):
    """A module whose every attribute is another stub, and which raises when called."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is a test stand-in (tests/comfyui_env.py)")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = roots

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def import_comfy() -> types.SimpleNamespace:
    """``comfy.samplers``, ``comfy.model_sampling``, ``comfy.k_diffusion.sampling``, ``comfy.conds``, ``comfy.model_base``."""
    root = comfyui_path()
    if root is None:
        pytest.skip(SKIP_REASON)
    import diffusers  # noqa: F401  (before the torchvision stand-in)

    stubbed = {"torchvision"} | ({"torchsde"} if importlib.util.find_spec("torchsde") is None else set())
    finder = _StubFinder(stubbed)
    saved = {m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] in stubbed}
    sys.meta_path.insert(0, finder)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    argv = sys.argv
    sys.argv = [argv[0], "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.conds
        import comfy.k_diffusion.sampling
        import comfy.model_base
        import comfy.model_management
        import comfy.model_sampling
        import comfy.samplers
    finally:  # ComfyUI's modules keep their stand-ins; later imports see the real packages again
        sys.argv = argv
        sys.meta_path.remove(finder)
        for m in [m for m in sys.modules if m.split(".")[0] in stubbed]:
            del sys.modules[m]
        sys.modules.update(saved)
    return types.SimpleNamespace(
        samplers=comfy.samplers, model_sampling=comfy.model_sampling, sampling=comfy.k_diffusion.sampling, conds=comfy.conds,
        model_base=comfy.model_base, model_management=comfy.model_management,
    )  # fmt: skip
