"""The one validation helper of the core: "an int >= k", "a real number >= x".

Python and NumPy scalar types are accepted alike (``np.int64(4)``, ``np.float32(1e-6)``);
``bool`` is refused where a number is meant, and so are ``nan`` and (unless ``finite=False``)
``inf``. Errors name the argument and say what to change. ``trisolve_diffusion`` uses the same
two functions (``from trisolve._validate import check_int, check_float``): keep their names
and signatures stable.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_int", "check_float"]


def check_int(name: str, value: Any, low: int, *, high: int | None = None, hint: str = "") -> int:
    """``value`` as a Python ``int`` in ``[low, high]``; ``TypeError``/``ValueError`` otherwise.

    >>> import numpy as np
    >>> check_int("max_iter", np.int64(4), 1)
    4
    """
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
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
    finite: bool = True,
    hint: str = "",
) -> float:
    """``value`` as a Python ``float``, ``>= low`` (``> low`` with ``low_open``) and ``<= high``
    (``< high`` with ``high_open``); ``TypeError``/``ValueError`` otherwise.

    ``finite=False`` admits ``+inf`` (never ``nan``).

    >>> import numpy as np
    >>> check_float("atol", np.float32(0.5), 0.0), check_float("rtol", 1e-3, 0.0, low_open=True, high=1.0, high_open=True)
    (0.5, 0.001)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{(' ' + hint) if hint else ''}, got {type(value).__name__} {value!r}.")
    v = float(value)
    bounds = [f"{'>' if low_open else '>='} {low:g}"] if low > -math.inf else []
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    what = ("a finite number" if finite else "a number (inf allowed)") + (" " + " and ".join(bounds) if bounds else "")
    below = v <= low if low_open else v < low
    above = high is not None and (v >= high if high_open else v > high)
    if math.isnan(v) or (finite and math.isinf(v)) or below or above:
        raise ValueError(f"{name} must be {what}{(' ' + hint) if hint else ''}, got {value!r}.")
    return v
