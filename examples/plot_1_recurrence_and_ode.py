"""
Solving a recurrence and an ODE in parallel
===========================================

An explicit ODE integrator is a lower-triangular system: step ``i`` needs step ``i - 1``.
Here we integrate a damped, non-linear oscillator with RK4 three ways -- a plain Python
loop, :func:`trisolve.solve` in parallel rounds, and SciPy's ``solve_ivp`` -- and compare
rounds, error and time.
"""

# %%
# The system
# ----------
# ``y' = A y + 0.3 sin(y)`` with a stable ``A``. One RK4 step is written for a *block* of
# rows at once: ``fn(x, lo, hi)`` returns the step from every row ``x[i - 1]``,
# ``i in [lo, hi)``, as one NumPy expression -- one batched evaluation per round.
import time

import matplotlib.pyplot as plt
import numpy as np
from scipy.integrate import solve_ivp

import trisolve

A = np.array([[-0.5, 2.0], [-2.0, -0.5]])


def f(y):
    return y @ A.T + 0.3 * np.sin(y)


def rk4_system(T, n):
    h = T / n

    def fn(x, lo, hi):
        y = x[lo - 1 : hi - 1]
        k1 = f(y)
        k2 = f(y + 0.5 * h * k1)
        k3 = f(y + 0.5 * h * k2)
        k4 = f(y + h * k3)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    return trisolve.BlackBoxSystem(fn, n)


T, n = 10.0, 2000
y0 = np.array([1.0, 0.0])
system = rk4_system(T, n)

# %%
# Three solutions
# ---------------
start = time.perf_counter()
loop = trisolve.forward_substitution(system, y0)
t_loop = time.perf_counter() - start

start = time.perf_counter()
sol = trisolve.solve(system, trisolve.TriangularAnderson(history_size=3), y0, update_map=trisolve.Picard(), atol=1e-12)
t_par = time.perf_counter() - start

t_eval = np.linspace(0, T, n + 1)
ref = solve_ivp(lambda t, y: f(y[None])[0], (0, T), y0, t_eval=t_eval, rtol=1e-12, atol=1e-12, method="DOP853")

print(f"status {sol.status.name}: {sol.num_rounds} rounds for {n} steps")
print(f"parallel vs loop:  max |diff| = {np.abs(sol.trajectory - loop).max():.1e}")
print(f"parallel vs SciPy: max |diff| = {np.abs(sol.trajectory - ref.y.T).max():.1e}  (RK4 discretisation error)")
print(f"time: loop {t_loop * 1e3:.0f} ms, parallel {t_par * 1e3:.0f} ms (NumPy on this CPU)")

# %%
# The parallel solution is the loop's to round-off, and both differ from SciPy's
# high-accuracy solution by the RK4 discretisation error only.
#
# The right panel shows the largest *scaled* residual of each round,
# ``|F_i(x) - x_i| / atol``: a row is converged when it is ``<= 1`` (dashed line). It starts
# near ``1e12``-``1e14`` because every row begins as a copy of ``y0`` (residuals of order 1)
# and ``atol = 1e-12``; each round the frozen prefix grows and the residual of the rows still
# in the window falls by orders of magnitude.
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
ax[0].plot(t_eval, sol.trajectory[:, 0], label="trisolve (parallel)")
ax[0].plot(t_eval[::40], ref.y[0, ::40], "o", ms=3, label="solve_ivp")
ax[0].set_xlabel("t")
ax[0].legend()
ax[1].semilogy(sol.round_max_errors, "o-")
ax[1].axhline(1.0, color="gray", ls="--", label="converged (<= 1)")
ax[1].set_xlabel("round")
ax[1].set_ylabel("largest residual / atol")
ax[1].legend()
fig.tight_layout()

# %%
# When does parallel pay off?
# ---------------------------
# A round evaluates every remaining step, so the work grows to about ``rounds x n`` step
# evaluations; the *latency* is ``rounds`` batched calls. It pays off when one batched call
# over the window costs about as much as one step -- a GPU network, or vectorised NumPy with
# large ``n`` and cheap steps -- and when the rounds stay far below ``n``. Contractive
# dynamics (errors forgotten quickly) need few rounds with Jacobi; smooth ODEs need the
# Picard or unrolled map, where Anderson acceleration helps most.
for n_steps in (500, 2000, 8000):
    s = rk4_system(T, n_steps)
    r = trisolve.solve(s, trisolve.TriangularAnderson(history_size=3), y0, update_map=trisolve.Picard(), atol=1e-10)
    print(f"n = {n_steps:5d}: {r.num_rounds:3d} rounds, {r.num_evals / n_steps:5.1f} step evaluations per step")
