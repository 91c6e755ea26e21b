"""
Choosing a solver
=================

Jacobi, windowed Gauss-Seidel, Anderson and Triangular Anderson acceleration, the update map
and its order ``k``, the window size and the history size -- compared on one semilinear
system shaped like a 50-step DDIM sampler, whose ``g`` is the exact noise prediction of a
Gaussian mixture.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

import trisolve


def gmm_eps(x, ab, mus, s):
    v = ab * s**2 + 1 - ab
    diff = x[:, None, :] - np.sqrt(ab)[:, None] * mus[None]
    logw = -0.5 * (diff**2).sum(-1) / v
    w = np.exp(logw - logw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    x0 = (w[..., None] * (mus[None] + (np.sqrt(ab) * s**2 / v)[:, None] * diff)).sum(1)
    return (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)


T, d = 50, 16
abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
ts = (np.arange(T) * (1000 // T))[::-1]
ab_t, ab_prev = abar[ts], np.append(abar[ts[1:]], abar[0])
a = np.sqrt(ab_prev / ab_t)  # DDIM: x_prev = a x_t + B eps(x_t)
B = np.sqrt(1 - ab_prev) - np.sqrt(ab_prev * (1 - ab_t) / ab_t)
sigma = np.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
rng = np.random.default_rng(0)
mus = rng.standard_normal((8, d))
system = trisolve.SemilinearSystem(a, B, lambda x, lo, hi: gmm_eps(x, ab_t[lo:hi, None], mus, 0.05), sigma=sigma)
x0 = rng.standard_normal(d)
ref = trisolve.forward_substitution(system, x0)

# %%
# Solvers and maps
# ----------------
configs = {
    "Jacobi, k=1": dict(solver=trisolve.Jacobi(), update_map=trisolve.OneStep()),
    "Gauss-Seidel, W=10": dict(solver=trisolve.Jacobi(), update_map=trisolve.OneStep(), window=trisolve.SlidingWindow(10)),
    "Jacobi, k=T": dict(solver=trisolve.Jacobi(), update_map=trisolve.Unrolled()),
    "Jacobi, Picard": dict(solver=trisolve.Jacobi(), update_map=trisolve.Picard()),
    "Anderson, k=T": dict(solver=trisolve.Anderson(), update_map=trisolve.Unrolled()),
    "TAA, k=T": dict(solver=trisolve.TriangularAnderson(), update_map=trisolve.Unrolled()),
    "TAA, Picard": dict(solver=trisolve.TriangularAnderson(), update_map=trisolve.Picard()),
}
results = {}
for name, kw in configs.items():
    solver = kw.pop("solver")
    sol = trisolve.solve(system, solver, x0, atol=0.0, rtol=1e-3, record="errors", **kw)  # per-row residuals for the figure
    results[name] = sol
    err = np.abs(sol.trajectory[-1] - ref[-1]).max()
    print(f"{name:20s} {sol.num_rounds:3d} rounds  {sol.num_evals:5d} row evaluations  final error {err:.1e}")

# %%
# Residual per row and round
# --------------------------
# White cells are final rows (outside the window). Jacobi on the original recurrence
# (``k = 1``) freezes about one row per round; the unrolled and Picard maps move information
# along the whole window, and TAA on top freezes large blocks at once.
fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), layout="constrained")
cmap = plt.get_cmap("magma").with_extremes(bad="white")
for ax, name in zip(axes, ["Jacobi, k=1", "Jacobi, k=T", "TAA, Picard"]):
    res = results[name].residuals[:, 1:]  # nan outside the window
    log_res = np.log10(np.maximum(res, 1e-3))  # nan stays nan: drawn white
    im = ax.imshow(log_res, aspect="auto", cmap=cmap, vmin=-3, vmax=4, interpolation="nearest")
    ax.set_title(f"{name}: {results[name].num_rounds} rounds")
    ax.set_xlabel("row")
    ax.set_ylabel("round")
_ = fig.colorbar(im, ax=axes, label="log10 scaled residual")

# %%
# Order k, window size and history size
# -------------------------------------
for k in (1, 2, 5, 10, 25, 50):
    sol = trisolve.solve(system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Unrolled(order=k), atol=0.0, rtol=1e-3)
    print(f"TAA, Unrolled(order={k:2d}): {sol.num_rounds:2d} rounds")
for w in (5, 10, 25, 50):
    sol = trisolve.solve(
        system, trisolve.TriangularAnderson(), x0, update_map=trisolve.Picard(), window=trisolve.SlidingWindow(w), atol=0.0, rtol=1e-3
    )
    print(f"TAA, Picard, window {w:2d}: {sol.num_rounds:2d} rounds, {sol.num_evals:4d} row evaluations")
for m in (1, 2, 4, 8):
    sol = trisolve.solve(system, trisolve.TriangularAnderson(history_size=m), x0, update_map=trisolve.Picard(), atol=0.0, rtol=1e-3)
    print(f"TAA history_size={m}: {sol.num_rounds:2d} rounds")

# %%
# A smaller window bounds memory and the evaluations per round at the cost of more rounds;
# the order ``k`` of the unrolled map matters most (``k = 1`` needs ~``n`` rounds). On this
# toy one or two difference pairs are best and longer histories slow TAA down; on the
# trained digits DDPM four pairs were best (see the benchmarks), which is why
# ``trisolve_diffusion`` defaults to ``history_size=4``. Measure on your own system.
