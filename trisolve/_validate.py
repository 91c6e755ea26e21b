"""The one validation helper of the core: "an int >= k", "a real number >= x".

Python and NumPy scalar types are accepted alike (``np.int64(4)``, ``np.float32(1e-6)``);
``bool`` is refused where a number is meant. Errors say what to change.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_int", "check_float"]


def check_int(name: str, value: Any, low: int, *, high: int | None = None, hint: str = "") -> int:
    """``value`` as a Python ``int`` in ``[low, high]``; ``TypeError``/``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{(' ' + hint) if hint else ''}, got {type(value).__name__} {value!r}.")
    v = int(value)
    if v < low:
        raise ValueError(f"{name} must be >= {low}{(' ' + hint) if hint else ''}, got {v}.")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}{(' ' + hint) if hint else ''}, got {v}.")
    return v


def check_float(
    name: str,
    value: Any,
    low: float = -math.inf,
    *,
    high: float | None = None,
    high_open: bool = False,
    finite: bool = True,
    hint: str = "",
) -> float:
    """``value`` as a Python ``float``, ``>= low`` (and ``<= high``, or ``< high`` with ``high_open``).

    ``finite=False`` admits ``+inf`` (never ``nan``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{(' ' + hint) if hint else ''}, got {type(value).__name__} {value!r}.")
    v = float(value)
    bounds = [f">= {low:g}"] if low > -math.inf else []
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    what = ("a finite number" if finite else "a number (inf allowed)") + (" " + " and ".join(bounds) if bounds else "")
    if math.isnan(v) or (finite and math.isinf(v)) or v < low or (high is not None and (v >= high if high_open else v > high)):
        raise ValueError(f"{name} must be {what}{(' ' + hint) if hint else ''}, got {value!r}.")
    return v
