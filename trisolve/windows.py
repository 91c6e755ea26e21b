"""Window policies: which rows a round works on.

The window is the half-open row range ``[lo, hi)``; ``lo`` is always the first row that is
not final, so the window never moves backwards. A policy only chooses ``hi``.

* :class:`FullWindow` -- every remaining row (parallel fixed point / Jacobi).
* :class:`SlidingWindow` -- at most ``size`` rows: Jacobi inside the window, Gauss-Seidel
  across windows [PD, S21]. ``size=1`` is sequential forward substitution; it bounds memory.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from ._validate import check_int

__all__ = ["WindowPolicy", "FullWindow", "SlidingWindow", "as_window"]


class WindowPolicy:
    """Base of the window policies."""

    def end(self, lo: int, n: int) -> int:
        """Exclusive end ``hi`` of the window that starts at the first non-final row ``lo``.

        Must satisfy ``lo < hi <= n + 1``; :func:`trisolve.solve` raises ``ValueError`` otherwise.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class FullWindow(WindowPolicy):
    """Work on every non-final row at once: ``[lo, n + 1)``."""

    def end(self, lo: int, n: int) -> int:
        return n + 1


@dataclass(frozen=True)
class SlidingWindow(WindowPolicy):
    """Work on at most ``size`` rows: ``[lo, min(lo + size, n + 1))``.

    Parameters
    ----------
    size : int
        Window length ``W >= 1``. ``W = 1`` is forward substitution, ``W >= n`` is Jacobi.
    """

    size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", check_int("SlidingWindow size", self.size, 1, hint="(1 is sequential)"))

    def end(self, lo: int, n: int) -> int:
        return min(lo + self.size, n + 1)


def as_window(window: Any) -> WindowPolicy:
    """The window policy meant by ``window``: ``None`` -> :class:`FullWindow`, an int ``W`` ->
    ``SlidingWindow(W)``, a :class:`WindowPolicy` as it is. The one rule for ``solve(window=)``
    and ``trisolve_diffusion``'s ``window``.

    >>> as_window(None), as_window(8)
    (FullWindow(), SlidingWindow(size=8))
    """
    if window is None:
        return FullWindow()
    if isinstance(window, WindowPolicy):
        return window
    if isinstance(window, numbers.Integral) and not isinstance(window, bool):
        return SlidingWindow(int(window))
    raise TypeError(
        f"window must be None, an int (a sliding window of that many rows), FullWindow() or SlidingWindow(size); got {type(window).__name__}."
    )
