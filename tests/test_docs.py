"""Docs checks: every public name is on the API page."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: modules whose ``__all__`` is public API: both packages, the bundled models and the submodules
#: the API page documents by their dotted path
PUBLIC_MODULES = (
    "trisolve",
    "trisolve.distributed",
    "trisolve_diffusion",
    "trisolve_diffusion.schedulers",
    "trisolve_diffusion.cost_model",
    "trisolve_diffusion.models",
    "trisolve_diffusion.models.closed_form",
    "trisolve_diffusion.models.digits",
    "trisolve_diffusion.models.digits_flow",
    "trisolve_diffusion.models.tiny_sd",
    "trisolve_diffusion.models.tiny_flow",
)


def _resolve(dotted: str):
    """The object a dotted name denotes, attributes first (``trisolve_diffusion.sample`` is the function, not the module)."""
    head, *rest = dotted.split(".")
    obj = importlib.import_module(head)
    path = head
    for part in rest:
        path = f"{path}.{part}"
        obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module(path)
    return obj


def _documented() -> list[tuple[str, object]]:
    """``(dotted name, object)`` of every autosummary entry of docs/api.rst."""
    out, module = [], None
    for line in (DOCS / "api.rst").read_text().splitlines():
        if m := re.match(r"\.\. currentmodule:: (\S+)", line):
            module = m.group(1)
        elif (m := re.match(r" {3}([A-Za-z_][\w.]*)$", line)) and module is not None:
            name = f"{module}.{m.group(1)}"
            out.append((name, _resolve(name)))
    return out


def test_api_page_entries_resolve():
    entries = _documented()
    assert len(entries) > 60  # the parser found the autosummary blocks
    assert any(name.endswith("build_tiny_stable_diffusion_xl") for name, _ in entries)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_is_on_the_api_page(module):
    """A name in a public module's ``__all__`` that the API page does not list is found only with help()."""
    documented = [obj for _, obj in _documented()]
    mod = importlib.import_module(module)
    missing = [name for name in mod.__all__ if not any(getattr(mod, name) is obj for obj in documented)]
    assert not missing, f"{module}.__all__ names missing from docs/api.rst: {missing}"
