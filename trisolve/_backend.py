"""Array-namespace helpers: the one place that touches concrete array libraries.

The solver code receives ``xp`` (an array-API namespace, resolved once in
:func:`trisolve.solve`) and never imports NumPy, PyTorch or CuPy. Host-side
tables (coefficients, residual histories) are NumPy ``float64`` arrays; this
module moves them to and from the caller's namespace and device.
"""

from __future__ import annotations

import contextlib
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "namespace",
    "device",
    "to_host",
    "from_host",
    "mask_from_host",
    "work_dtype",
    "is_floating",
    "shares_memory",
    "no_grad",
    "finite",
    "solve_unchecked",
]


def namespace(*arrays: Any) -> Any:
    """Return the array-API namespace shared by ``arrays`` (array-api-compat wrapped)."""
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        raise TypeError(
            "trisolve needs arrays from one array-API library (NumPy, PyTorch, CuPy, "
            f"array-api-strict); got {sorted({type(a).__name__ for a in arrays})}. "
            "Convert every input to the same library."
        ) from exc


def device(x: Any) -> Any:
    return array_api_compat.device(x)


def to_host(a: Any) -> np.ndarray:
    """Copy an array of any supported namespace to a NumPy ``float64`` array on the host."""
    if isinstance(a, (np.ndarray, np.generic)):  # NumPy reductions return scalars (np.float64, np.int64, ...)
        return np.asarray(a, dtype=np.float64)
    if array_api_compat.is_torch_array(a):
        return a.detach().to("cpu").double().numpy()
    if array_api_compat.is_cupy_array(a):  # pragma: no cover - needs a CUDA machine
        return a.get().astype(np.float64)
    return np.asarray(np.from_dlpack(a), dtype=np.float64)


def from_host(a: Any, xp: Any, *, dtype: Any, device: Any) -> Any:
    """Move a host table (NumPy or nested sequence) into namespace ``xp`` with ``dtype``/``device``."""
    host = np.array(a, dtype=np.float64, order="C", copy=True)
    if array_api_compat.is_torch_namespace(xp):
        import torch  # local: only reached when the caller already uses torch

        return torch.from_numpy(host).to(device=device, dtype=dtype)
    return xp.asarray(host, dtype=dtype, device=device)


def mask_from_host(a: np.ndarray, xp: Any, *, device: Any) -> Any:
    """A host bool array as a bool array of namespace ``xp`` on ``device`` (one byte an entry on the way)."""
    host = np.ascontiguousarray(a, dtype=bool)
    if array_api_compat.is_torch_namespace(xp):
        import torch  # local: only reached when the caller already uses torch

        return torch.from_numpy(host).to(device=device)
    return xp.asarray(host, dtype=xp.bool, device=device)


def finite(a: Any, xp: Any) -> Any:
    """``isfinite(a)`` in as few device kernels as the namespace allows.

    PyTorch's ``isfinite`` is four kernels (``==``, ``abs``, ``!=``, ``*``); ``(a - a) == 0``
    is two and the same test (``nan`` and ``inf - inf`` are not 0). Elsewhere ``isfinite`` is
    one kernel (NumPy, CuPy ufuncs). The caller silences NumPy's ``inf - inf`` warnings where
    it matters; here only PyTorch takes the subtraction.
    """
    if array_api_compat.is_torch_namespace(xp):
        return (a - a) == 0
    return xp.isfinite(a)


def solve_unchecked(A: Any, B: Any, xp: Any) -> Any:
    """``linalg.solve(A, B)`` without the error check that makes a CUDA host wait for the device.

    PyTorch's ``linalg.solve`` checks the LU pivots on the host (a device synchronisation on
    CUDA); ``linalg.solve_ex(check_errors=False)`` does the same solve and leaves a singular
    system's result non-finite or huge, which the caller must test (Anderson does: its
    coefficient bound). Other namespaces: their ``linalg.solve``.
    """
    if array_api_compat.is_torch_namespace(xp):
        import torch  # local: only reached when the caller already uses torch

        return torch.linalg.solve_ex(A, B, check_errors=False)[0]
    return xp.linalg.solve(A, B)


def has_float64(xp: Any, device: Any) -> bool:
    """Whether ``float64`` arithmetic is available on ``device`` (not on Apple MPS)."""
    return "mps" not in str(device)


def work_dtype(xp: Any, device: Any) -> Any:
    """The dtype for small Gram solves and coefficient tables: float64 where the device has it."""
    return xp.float64 if has_float64(xp, device) else xp.float32


def is_floating(xp: Any, dtype: Any) -> bool:
    return xp.isdtype(dtype, "real floating")


def shares_memory(a: Any, b: Any) -> bool:
    """Whether ``a`` may be a view of ``b``'s memory (NumPy and PyTorch; ``False`` elsewhere)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.may_share_memory(a, b))
    if array_api_compat.is_torch_array(a) and array_api_compat.is_torch_array(b):
        if a.device != b.device or a.device.type == "meta":
            return False
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    return False


def no_grad(xp: Any) -> Any:
    """A context without autograd recording for PyTorch (the solve's rounds), a no-op elsewhere."""
    if array_api_compat.is_torch_namespace(xp):
        import torch  # local: only reached when the caller already uses torch

        return torch.no_grad()
    return contextlib.nullcontext()


def grad_probe(xp: Any) -> Any:
    """A context that records autograd for PyTorch (the first evaluation's requires-grad check), a no-op elsewhere."""
    if array_api_compat.is_torch_namespace(xp):
        import torch  # local: only reached when the caller already uses torch

        return torch.enable_grad()
    return contextlib.nullcontext()
