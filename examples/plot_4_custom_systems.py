"""
Writing your own system
=======================

Two ways to describe a lower-triangular system -- a black-box batched ``F`` and the
semilinear form -- and the same solve from PyTorch, on a GPU when one is present.
"""

# %%
# A black-box system: a non-linear RNN
# ------------------------------------
# ``fn(x, lo, hi)`` must return ``F_i(x[:i])`` for every ``i in [lo, hi)`` as one array
# ``(hi - lo, *event)``: here one matrix product over all rows of the window. Row ``i`` reads
# only row ``i - 1`` (and its input ``u_i``).
import numpy as np
import torch

import trisolve

rng = np.random.default_rng(0)
T, hidden = 5000, 32
W = rng.standard_normal((hidden, hidden)) * 0.6 / np.sqrt(hidden)  # contractive
U = rng.standard_normal((hidden, 4))
u = rng.standard_normal((T + 1, 4))


def rnn(x, lo, hi):
    return np.tanh(x[lo - 1 : hi - 1] @ W.T + u[lo:hi] @ U.T)


system = trisolve.BlackBoxSystem(rnn, n=T)
h0 = np.zeros(hidden)
sol = trisolve.solve(system, trisolve.Jacobi(), h0, atol=1e-10)
ref = trisolve.forward_substitution(system, h0)
print(f"RNN, T={T}: {sol.status.name} in {sol.num_rounds} rounds, max error {np.abs(sol.trajectory - ref).max():.1e}")

# %%
# A semilinear system: a leaky integrator with a non-linear drive
# ---------------------------------------------------------------
# ``x_i = a_i x_{i-1} + B_i g(x_{i-1}) + c_i``: coefficient tables on the host, ``g`` batched
# over rows. The linear part can be unrolled (:class:`trisolve.Unrolled`), which moves
# information along the whole window in one round.
n = 400
a = np.full(n, 0.995)
B = np.full(n, 0.01)
c = rng.standard_normal((n, 8)) * 0.01
lin = trisolve.SemilinearSystem(a, B, lambda x, lo, hi: np.sin(3 * x), c=c)
x0 = np.ones(8)
for update_map in (trisolve.OneStep(), trisolve.Unrolled()):
    s = trisolve.solve(lin, trisolve.TriangularAnderson(), x0, update_map=update_map, atol=1e-10)
    print(f"{type(update_map).__name__:8s}: {s.num_rounds:3d} rounds")

# %%
# From PyTorch, on a GPU
# ----------------------
# The core is backend-agnostic (array-API): pass tensors and write ``g`` with torch. The
# trajectory stays on ``x0``'s device and in its dtype. On a CUDA machine the same code runs
# on the GPU.
device = "cuda" if torch.cuda.is_available() else "cpu"
Wt = torch.tensor(W, dtype=torch.float32, device=device)
Ut = torch.tensor(U, dtype=torch.float32, device=device)
ut = torch.tensor(u, dtype=torch.float32, device=device)
system_t = trisolve.BlackBoxSystem(lambda x, lo, hi: torch.tanh(x[lo - 1 : hi - 1] @ Wt.T + ut[lo:hi] @ Ut.T), n=T)
sol_t = trisolve.solve(system_t, trisolve.Jacobi(), torch.zeros(hidden, device=device), atol=1e-6)
print(
    f"torch on {device}: {sol_t.num_rounds} rounds, trajectory {tuple(sol_t.trajectory.shape)} {sol_t.trajectory.dtype} on {sol_t.trajectory.device}"
)
print(f"max difference to the float64 NumPy solve: {np.abs(sol_t.trajectory.cpu().numpy() - ref).max():.1e}")
