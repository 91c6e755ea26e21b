"""Fixed-step explicit methods: one step from ``t_{i-1}`` to ``t_i`` for a block of rows at once.

Notation (``w`` rows of the block, ``event`` the state's shape):

=========  ======================  ===============================================
``y``      ``(w, *event)``         states ``y_{i-1}`` the steps start from
``h``      ``(w, 1, ..., 1)``      step sizes ``t_i - t_{i-1}``, in ``y``'s dtype
``T[s]``   ``(w,)``                the time of stage ``s`` of each row (``stage_times``)
``f``      ``f(T, Y) -> (w, *event)``   the user's vector field on a block of states
=========  ======================  ===============================================

Each step is written with the operations, in the order, of the library whose convention
names it, so that a sequential loop of that library gives the same bits: ``euler``,
``midpoint`` and ``rk4`` are torchdiffeq's fixed-grid steps (its ``rk4`` is Kutta's 3/8 rule,
``rk4_alt_step_func``); ``Euler``, ``Midpoint``, ``Heun``, ``RK4`` (classic) and ``RK38`` are
the textbook tableaux for :func:`trisolve.solve_ivp`. Stage times are computed in the time
grid's own dtype (as torchdiffeq does) and then cast to the state's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Method", "ODEINT_METHODS", "SOLVE_IVP_METHODS"]

_ONE_THIRD = 1 / 3
_TWO_THIRDS = 2 / 3


@dataclass(frozen=True)
class Method:
    """An explicit one-step method.

    Attributes
    ----------
    name : str
        The name the front door accepts.
    stages : int
        Evaluations of ``f`` per step.
    stage_times : callable ``(t0, dt, t1) -> tuple``
        The time of each stage from the grid's ``t_{i-1}``, ``t_i - t_{i-1}`` and ``t_i`` (arrays
        ``(n,)`` in the grid's dtype).
    step : callable ``(f, y, h, T) -> y_next``
        One step of every row of a block (notation in the module docstring).
    """

    name: str
    stages: int
    stage_times: Callable[[Any, Any, Any], tuple]
    step: Callable[[Callable, Any, Any, tuple], Any]


def _euler(f, y, h, T):
    return y + h * f(T[0], y)


def _midpoint_torchdiffeq(f, y, h, T):
    # torchdiffeq Midpoint: half_dt = 0.5 * dt; y_mid = y0 + f0 * half_dt; dy = dt * f(t0 + half_dt, y_mid)
    half = 0.5 * h
    return y + h * f(T[1], y + f(T[0], y) * half)


def _rk38_torchdiffeq(f, y, h, T):
    # torchdiffeq rk4_alt_step_func (Kutta's 3/8 rule), same operations in the same order
    k1 = f(T[0], y)
    k2 = f(T[1], y + h * k1 * _ONE_THIRD)
    k3 = f(T[2], y + h * (k2 - k1 * _ONE_THIRD))
    k4 = f(T[3], y + h * (k1 - k2 + k3))
    return y + (k1 + 3 * (k2 + k3) + k4) * h * 0.125


def _midpoint(f, y, h, T):
    return y + h * f(T[1], y + (0.5 * h) * f(T[0], y))


def _heun(f, y, h, T):
    k1 = f(T[0], y)
    k2 = f(T[1], y + h * k1)
    return y + (0.5 * h) * (k1 + k2)


def _rk4(f, y, h, T):
    half = 0.5 * h
    k1 = f(T[0], y)
    k2 = f(T[1], y + half * k1)
    k3 = f(T[1], y + half * k2)
    k4 = f(T[2], y + h * k3)
    return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


def _times_start(t0, dt, t1):
    return (t0,)


def _times_half(t0, dt, t1):
    return (t0, t0 + 0.5 * dt)


def _times_thirds(t0, dt, t1):
    return (t0, t0 + dt * _ONE_THIRD, t0 + dt * _TWO_THIRDS, t1)


def _times_ends(t0, dt, t1):
    return (t0, t1)


def _times_rk4(t0, dt, t1):
    return (t0, t0 + 0.5 * dt, t1)


#: torchdiffeq's fixed-grid methods, by its names
ODEINT_METHODS = {
    "euler": Method("euler", 1, _times_start, _euler),
    "midpoint": Method("midpoint", 2, _times_half, _midpoint_torchdiffeq),
    "rk4": Method("rk4", 4, _times_thirds, _rk38_torchdiffeq),
}

#: fixed-step explicit methods of :func:`trisolve.solve_ivp`
SOLVE_IVP_METHODS = {
    "Euler": Method("Euler", 1, _times_start, _euler),
    "Midpoint": Method("Midpoint", 2, _times_half, _midpoint),
    "Heun": Method("Heun", 2, _times_ends, _heun),
    "RK4": Method("RK4", 4, _times_rk4, _rk4),
    "RK38": Method("RK38", 4, _times_thirds, _rk38_torchdiffeq),
}
