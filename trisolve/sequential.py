"""Forward substitution: the sequential reference solver, independent of the driver."""

from __future__ import annotations

from typing import Any

from ._backend import device, namespace
from .systems import BlackBoxSystem, SemilinearSystem

__all__ = ["forward_substitution"]


def forward_substitution(system: BlackBoxSystem | SemilinearSystem, x0: Any) -> Any:
    """Evaluate ``x_i = F_i(x_0..x_{i-1})`` one row after another, ``n`` dependent steps.

    For a :class:`SemilinearSystem` this evaluates ``g`` once per row, with the recurrence
    written out directly (not through :meth:`SemilinearSystem.evaluate`), so it is an
    independent reference for the parallel solvers.

    Returns
    -------
    array, shape ``(n + 1, *x0.shape)``
    """
    xp = namespace(x0)
    n = system.n
    x = xp.empty((n + 1, *x0.shape), dtype=x0.dtype, device=device(x0))
    x[0, ...] = x0
    if isinstance(system, SemilinearSystem):
        gs = []
        for i in range(1, n + 1):
            gs.append(system.g(x[i - 1 : i, ...], i - 1, i)[0, ...])
            row = float(system.a[i - 1]) * x[i - 1, ...]
            for q in range(system.p):
                coef = float(system.B[i - 1, q])
                if coef != 0.0:
                    row = row + coef * gs[i - 1 - q]
            if system.c is not None:
                row = row + system.c[i - 1, ...]
            x[i, ...] = row
        return x
    cache = system.new_cache(x, xp=xp)
    for i in range(1, n + 1):
        x[i, ...] = system.evaluate(x, i, i + 1, cache, xp=xp).f[0, ...]
    return x
