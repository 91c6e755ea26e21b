"""Shared fixtures: the array namespaces the core is tested on."""

from __future__ import annotations

import array_api_strict
import numpy as np
import pytest
import torch
from hypothesis import settings

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
