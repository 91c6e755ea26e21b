"""
Training an RNN through a parallel solve
========================================

A recurrent network ``h_t = tanh(W h_{t-1} + U u_t + b)`` is a lower-triangular system: row
``t`` reads row ``t - 1``. Here its hidden states are computed by a parallel solve with the
Newton map (DEER: a few rounds, each one batched evaluation of every step plus a parallel
scan of the Jacobians), and the network is trained by gradient descent *through* that solve:
``trisolve.solve`` returns (by default, since the weights require grad) a trajectory whose gradients come from the
adjoint system, solved by the same scan run backwards -- not by back-propagating through the
rounds. We check that gradient against autograd through the plain sequential loop, then train.
"""

# %%
import time

import matplotlib.pyplot as plt
import torch

import trisolve

torch.manual_seed(0)
T, H = 200, 8
t = torch.linspace(0, 6 * torch.pi, T + 1, dtype=torch.float64)
u = torch.sin(t)[:, None]  # input  (T + 1, 1)
target = 0.8 * torch.sin(t - 0.6)  # a delayed, scaled copy of the input to reproduce

W = (0.3 * torch.randn(H, H, dtype=torch.float64)).requires_grad_(True)
U = (0.5 * torch.randn(H, 1, dtype=torch.float64)).requires_grad_(True)
b = torch.zeros(H, dtype=torch.float64, requires_grad=True)
readout = (0.3 * torch.randn(H, dtype=torch.float64)).requires_grad_(True)
params = [W, U, b, readout]


def step(x, lo, hi):
    """Rows ``lo .. hi - 1`` of the RNN at once: ``F_t = tanh(W h_{t-1} + U u_t + b)``."""
    return torch.tanh(x[lo - 1 : hi - 1] @ W.T + u[lo:hi] @ U.T + b)


def step_jacobian(x, lo, hi):
    """``dF_t / dh_{t-1} = diag(1 - F_t^2) W``, ``(hi - lo, H, H)``. Without it, torch.func would
    compute the same matrices (H Jacobian-vector products per round: slower on a CPU)."""
    return (1 - step(x, lo, hi) ** 2)[:, :, None] * W


def hidden_states(x0):
    """The RNN as a triangular system, solved with Newton's method."""
    system = trisolve.BlackBoxSystem(step, T, jacobian=step_jacobian)
    sol = trisolve.solve(system, trisolve.Jacobi(), x0, update_map=trisolve.Newton(), atol=1e-10)
    return sol.trajectory, sol.num_rounds  # (T + 1, H)


def loss_of(h):
    return ((h @ readout - target) ** 2).mean()


# %%
# The gradient equals autograd through the sequential loop
# --------------------------------------------------------
x0 = torch.zeros(H, dtype=torch.float64)
h, rounds = hidden_states(x0)
g_solve = torch.autograd.grad(loss_of(h), params)

hs = [x0]
for i in range(1, T + 1):
    hs.append(torch.tanh(W @ hs[-1] + U @ u[i] + b))
g_loop = torch.autograd.grad(loss_of(torch.stack(hs)), params)
print(f"Newton solve: {rounds} rounds for T = {T} steps")
for name, a, c in zip(["W", "U", "b", "readout"], g_solve, g_loop):
    print(f"d loss / d {name:8s} max |solve - loop| = {float((a - c).abs().max()):.1e}")

# %%
# Training
# --------
# Plain Adam on the four parameters; every step is one parallel solve and one adjoint solve.
opt = torch.optim.Adam(params, lr=0.05)
losses, round_counts = [], []
start = time.perf_counter()
for _ in range(40):
    opt.zero_grad()
    h, rounds = hidden_states(x0)
    loss = loss_of(h)
    loss.backward()
    opt.step()
    losses.append(loss.item())
    round_counts.append(rounds)
print(f"40 steps in {time.perf_counter() - start:.1f} s; loss {losses[0]:.3f} -> {losses[-1]:.4f}; rounds per solve {min(round_counts)}..{max(round_counts)}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.semilogy(losses)
ax1.set_xlabel("training step")
ax1.set_ylabel("mean squared error")
ax1.set_title("training through the parallel solve")
with torch.no_grad():
    h, _ = hidden_states(x0)
    ax2.plot(t, target, label="target")
    ax2.plot(t, h @ readout, "--", label="RNN readout")
ax2.set_xlabel("t")
ax2.legend()
fig.tight_layout()

# %%
# What it costs
# -------------
# A round evaluates every step at once and scans ``T`` small ``H x H`` Jacobians in
# ``O(log T)`` depth; the backward pass is one more scan (the adjoint of a Markov system is
# the same recurrence run backwards with transposed Jacobians) plus one vector-Jacobian
# product to confirm it. Memory is the trajectory and the adjoint, ``O(T H)``, plus the
# Jacobians of one chunk of rows. On a 2-core CPU the sequential loop is as fast; on a GPU,
# with long sequences, the rounds are where the time goes (``benchmarks/gpu.py``).
