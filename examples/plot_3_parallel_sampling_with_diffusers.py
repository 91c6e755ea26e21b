"""
Parallel sampling with diffusers
================================

``pipe(...)`` becomes ``trisolve_diffusion.sample(pipe, ...)``. We sample from the bundled
digits DDPM (trained here on scikit-learn's digits, shipped with the package), check parity
with the real sequential loop, and use early stopping, warm starts and variations.
"""

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import trisolve
import trisolve_diffusion as td
from trisolve_diffusion.demo import psnr
from trisolve_diffusion.models import load_digits_pipeline

pipe = load_digits_pipeline("ddim")
pipe.set_progress_bar_config(disable=True)

# %%
# Parity with ``pipe(...)``
# -------------------------
# Same arguments, same generator: the parallel solve reproduces the sequential sample. At the
# default tolerance the difference is far below what the eye can see; with a tight
# tolerance it is float32 round-off.
kw = dict(batch_size=8, num_inference_steps=50, output_type="np")
start = time.perf_counter()
seq = pipe(generator=torch.manual_seed(0), **kw).images
t_seq = time.perf_counter() - start
out = td.sample(pipe, generator=torch.manual_seed(0), **kw)
tight = td.sample(pipe, generator=torch.manual_seed(0), atol=1e-6, rtol=0.0, **kw)
print(f"default tolerance: {out.solution.num_rounds} rounds, PSNR {psnr(out.images, seq):.1f} dB, max diff {np.abs(out.images - seq).max():.1e}")
print(f"tight tolerance:   {tight.solution.num_rounds} rounds, max diff {np.abs(tight.images - seq).max():.1e}")
print(f"wall time on this CPU: sequential {t_seq:.2f} s, parallel {out.wall_time:.2f} s (a GPU runs a round in about the time of a step)")


def grid(images):
    return np.concatenate([np.concatenate(list(images[i : i + 4, ..., 0]), axis=1) for i in range(0, len(images), 4)], axis=0)


fig, ax = plt.subplots(1, 2, figsize=(6, 3.2), layout="constrained")
for a, img, title in ((ax[0], seq, "sequential, 50 steps"), (ax[1], out.images, f"parallel, {out.solution.num_rounds} rounds")):
    a.imshow(grid(img), cmap="gray", vmin=0, vmax=1)
    a.set_title(title)
    a.axis("off")

# %%
# How fast does the image settle?
# -------------------------------
# A callback sees every round; here it records the final latent. The image is visually final
# a few rounds before every step is within tolerance.
finals = []
td.sample(pipe, generator=torch.manual_seed(0), callback=lambda info: finals.append(info.trajectory[-1].clone()) and False, **kw)
curve = [psnr((f / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), seq) for f in finals]
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(range(1, len(curve) + 1), curve, "o-")
ax.axhline(40, color="gray", ls="--")
ax.set_xlabel("round")
ax.set_ylabel("PSNR vs sequential [dB]")
fig.tight_layout()

# %%
# Early stopping
# --------------
# ``early_stop`` ends the solve once the final latent stops changing (in tolerance units).
early = td.sample(pipe, generator=torch.manual_seed(0), early_stop=1.0, **kw)
print(f"early stop: {early.solution.status.name} after {early.solution.num_rounds} rounds, PSNR {psnr(early.images, seq):.1f} dB")

# %%
# Warm starts and variations
# --------------------------
# A previous trajectory is an excellent initial guess: the answer is still exact. Keeping its
# first rows frozen (``num_frozen``) and drawing new noise for the rest gives a *variation*
# of the earlier sample that shares its coarse structure.
warm = td.sample(pipe, generator=torch.manual_seed(0), init=out.solution.trajectory, **kw)
print(f"warm start from the same trajectory: {warm.solution.num_rounds} round(s)")
ddpm = load_digits_pipeline("ddpm")
ddpm.set_progress_bar_config(disable=True)
base = td.sample(ddpm, batch_size=4, num_inference_steps=100, generator=torch.manual_seed(1), output_type="np")
fig, ax = plt.subplots(1, 4, figsize=(9, 2.6), layout="constrained")
ax[0].imshow(grid(base.images), cmap="gray", vmin=0, vmax=1)
ax[0].set_title("base sample")
for a, keep in zip(ax[1:], (40, 60, 80)):
    var = td.sample(
        ddpm,
        batch_size=4,
        num_inference_steps=100,
        generator=torch.manual_seed(2),
        output_type="np",
        init=base.solution.trajectory,
        num_frozen=keep + 1,
    )
    a.imshow(grid(var.images), cmap="gray", vmin=0, vmax=1)
    a.set_title(f"keep {keep} steps: {var.solution.num_rounds} rounds")
for a in ax:
    a.axis("off")

# %%
# Options
# -------
# Everything the pipeline takes is passed through (``generator``, ``eta``, ``output_type``,
# prompts for Stable Diffusion, ...). The solve is configured with ``solver``, ``update_map``
# (or ``order``), ``window``, ``atol``/``rtol``, ``max_iter``, ``early_stop``, ``init``,
# ``num_frozen`` and ``max_batch_size``; ``out.solution`` is the full :class:`trisolve.Solution`.
jac = td.sample(pipe, generator=torch.manual_seed(0), solver=trisolve.Jacobi(), update_map=trisolve.Unrolled(), window=16, **kw)
print(f"Jacobi on the unrolled map, window 16: {jac.solution.num_rounds} rounds, PSNR {psnr(jac.images, seq):.1f} dB")
