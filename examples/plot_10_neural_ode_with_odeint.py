"""
A neural ODE trained through odeint, next to torchdiffeq
========================================================

:func:`trisolve.odeint` takes torchdiffeq's call (``func(t, y)``, ``y0``, ``t``, ``method=``)
and returns the states at every ``t``. It is differentiable by default: when grad mode is on
and ``y0`` or the parameters ``func`` uses require grad, the gradient comes from the adjoint of
the triangular system (no flag needed). Here a small MLP vector field is fitted to a spiral
for a few Adam steps, once through ``trisolve.odeint`` and once through ``torchdiffeq.odeint``
from the same initial weights: the losses agree to round-off at every step.
"""

# %%
import matplotlib.pyplot as plt
import torch
import torchdiffeq

import trisolve

torch.manual_seed(0)
A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
t = torch.linspace(0.0, 4.0, 41, dtype=torch.float64)
y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
with torch.no_grad():
    target = torchdiffeq.odeint(lambda t, y: (y**3) @ A, y0, t, method="rk4")  # the spiral to fit


def make_field():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()
    return net, (lambda t, y: net(y**3))


def train(odeint, steps=8):
    net, f = make_field()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((odeint(f, y0, t) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return net, f, losses


_, f_ours, ours = train(lambda f, y0, t: trisolve.odeint(f, y0, t, method="rk4"))
_, _, theirs = train(lambda f, y0, t: torchdiffeq.odeint(f, y0, t, method="rk4"))
print("largest |loss difference| over the steps:", max(abs(a - b) for a, b in zip(ours, theirs)))

with torch.no_grad():
    fit, info = trisolve.odeint(f_ours, y0, t, return_info=True)
print(info)  # the default method, the rounds for 40 steps, the evaluations

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
ax1.plot(ours, "o-", label="trisolve.odeint")
ax1.plot(theirs, "x--", label="torchdiffeq.odeint")
ax1.set_xlabel("Adam step")
ax1.set_ylabel("loss")
ax1.legend()
ax2.plot(target[:, 0], target[:, 1], lw=3, alpha=0.4, label="target")
ax2.plot(fit[:, 0], fit[:, 1], "k--", label="fitted (after training)")
ax2.legend(fontsize=8)
fig.tight_layout()
