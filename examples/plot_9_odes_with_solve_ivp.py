"""
ODEs with solve_ivp: a pendulum and Lorenz next to SciPy
========================================================

:func:`trisolve.solve_ivp` takes SciPy's call (``fun(t, y)``, ``t_span``, ``y0``) and returns
SciPy's fields (``t``, ``y`` of shape ``(n, len(t))``, ``success``, ``nfev``) for fixed-step
explicit methods. Each step is a row of a triangular system, and all steps are solved together
in parallel rounds; the default method (Newton's map, with the Jacobian of one step from
finite differences on NumPy) is recorded on the result. Here a forced pendulum and the Lorenz
system, each next to ``scipy.integrate.solve_ivp``.
"""

# %%
# A forced, damped pendulum
# -------------------------
# RK4 with a step of 0.05 against SciPy's DOP853 at tight tolerances: the difference is RK4's
# own error, and the parallel solve took a few per cent of the 600 steps in rounds.
import warnings

import matplotlib.pyplot as plt
import numpy as np
import scipy.integrate

import trisolve


def pendulum(t, y):
    return np.array([y[1], -np.sin(y[0]) - 0.2 * y[1] + 0.5 * np.cos(1.3 * t)])


t_eval = np.linspace(0.0, 30.0, 301)
res = trisolve.solve_ivp(pendulum, (0.0, 30.0), [2.0, 0.0], step=0.05, t_eval=t_eval)
ref = scipy.integrate.solve_ivp(pendulum, (0.0, 30.0), [2.0, 0.0], method="DOP853", rtol=1e-10, atol=1e-12, t_eval=t_eval)
print(res)
print(f"{res.solution.n} steps in {res.num_rounds} rounds; max |trisolve RK4 - SciPy DOP853| = {np.abs(res.y - ref.y).max():.1e}")

fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(ref.t, ref.y[0], lw=3, alpha=0.4, label="SciPy DOP853")
ax.plot(res.t, res.y[0], "k--", lw=1, label="trisolve.solve_ivp RK4")
ax.set_xlabel("t")
ax.set_ylabel("angle")
ax.legend()
fig.tight_layout()

# %%
# Lorenz
# ------
# A chaotic system: the first rounds' guesses are far from the trajectory, and ``fun``
# overflows on some of them. Those warnings come from guesses, not from the answer, so
# ``solve_ivp`` does not show them (a warning raised at a final step would be shown once).
# ``vectorized=True`` (SciPy's flag: ``fun`` takes states as the columns of ``y``; here ``t``
# is then one time per column) evaluates all steps of a round in one NumPy call.
#
# The solution agrees with a NumPy loop of the same RK4 steps until round-off, amplified by
# the chaos, grows large; SciPy's adaptive solution differs by RK4's own error, amplified the
# same way. Neither is a failure of the solve: every step is solved to its tolerance.


def lorenz(t, y):  # y: (3,) or, vectorized, (3, k)
    return np.stack([10.0 * (y[1] - y[0]), y[0] * (28.0 - y[2]) - y[1], y[0] * y[1] - 8.0 / 3.0 * y[2]])


T, h = 20.0, 0.01
with warnings.catch_warnings():
    warnings.simplefilter("error")  # any warning shown would stop the example
    lor = trisolve.solve_ivp(lorenz, (0.0, T), [1.0, 1.0, 1.0], step=h, vectorized=True)
print(lor)


def rk4_loop(f, grid, y0):
    ys = [np.asarray(y0, dtype=np.float64)]
    for a, b in zip(grid[:-1], grid[1:]):
        y, dt = ys[-1], b - a
        k1 = f(a, y)
        k2 = f(a + dt / 2, y + dt / 2 * k1)
        k3 = f(a + dt / 2, y + dt / 2 * k2)
        ys.append(y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + f(b, y + dt * k3)))
    return np.stack(ys, axis=1)


loop = rk4_loop(lorenz, lor.grid, [1.0, 1.0, 1.0])
sp = scipy.integrate.solve_ivp(lorenz, (0.0, T), [1.0, 1.0, 1.0], method="DOP853", rtol=1e-12, atol=1e-12, t_eval=lor.t)
for name, other in (("the NumPy RK4 loop", loop), ("SciPy DOP853", sp.y)):
    gap = np.abs(lor.y - other).max(axis=0)
    apart = lor.t[np.argmax(gap > 1.0)] if (gap > 1.0).any() else None
    print(f"vs {name}: max difference up to t = 2: {gap[lor.t <= 2].max():.1e}; first apart by more than 1 at t = {apart}")

fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(sp.t, sp.y[0], lw=3, alpha=0.4, label="SciPy DOP853")
ax.plot(lor.t, loop[0], lw=1.5, label="NumPy RK4 loop")
ax.plot(lor.t, lor.y[0], "k--", lw=1, label=f"trisolve.solve_ivp RK4 ({lor.num_rounds} rounds)")
ax.set_xlabel("t")
ax.set_ylabel("x")
ax.legend(loc="lower left", fontsize=8)
fig.tight_layout()
