"""
Parallel sampling with diffusers
================================

``pipe(...)`` becomes ``trisolve_diffusion.sample(pipe, ...)``. We sample from the bundled
digits DDPM (trained here on scikit-learn's digits, shipped with the package), check parity
with the real sequential loop, and use early stopping, warm starts and variations.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import trisolve
import trisolve_diffusion as td
from trisolve_diffusion.demo import machine_description, psnr, time_interleaved, verdict_of, window_description
from trisolve_diffusion.models import load_digits_pipeline

pipe = load_digits_pipeline("ddim")
pipe.set_progress_bar_config(disable=True)

# %%
# Parity with ``pipe(...)``
# -------------------------
# Same arguments, same generator: the parallel solve reproduces the sequential sample. At the
# default tolerance the difference is far below what the eye can see; with a tight
# tolerance it is float32 round-off. The window is the whole trajectory here, to show the rounds
# of the parallel solve; the default (``window=None``) is chosen from measured times, and
# on a small CPU at batch 8 it is the loop itself (see "Choosing the window").
kw = dict(batch_size=8, num_inference_steps=50, output_type="np")
par = dict(kw, window=trisolve.FullWindow())  # sample()'s arguments
seq = pipe(generator=torch.manual_seed(0), **kw).images
out = td.sample(pipe, generator=torch.manual_seed(0), **par)
tight = td.sample(pipe, generator=torch.manual_seed(0), atol=1e-6, rtol=0.0, **par)
print(f"default tolerance: {out.solution.status.name} in {out.solution.num_rounds} rounds, PSNR {psnr(out.images, seq):.1f} dB, "
      f"max diff {np.abs(out.images - seq).max():.1e}")  # fmt: skip
print(f"tight tolerance:   {tight.solution.status.name} in {tight.solution.num_rounds} rounds, max diff {np.abs(tight.images - seq).max():.1e}")

# %%
# Wall time
# ---------
# Wall time depends on the machine and on its load, unlike the rounds and evaluations. The
# samples above warmed the loop up and the default's window is measured once, untimed; each is now timed three times, interleaved, and the
# sentence printed is computed from the medians measured in this run (the docs' build machine
# is a loaded 2-core CPU, where the parallel sampler does not pay; a GPU is where it does).
timing = time_interleaved(
    {"sequential": lambda: pipe(generator=torch.manual_seed(0), **kw), "parallel": lambda: td.sample(pipe, generator=torch.manual_seed(0), **kw)},
    3,
    warmup={"parallel": lambda: td.sample(pipe, generator=torch.manual_seed(0), **kw)},  # the default window's first-call timing
)
t_seq, t_par = timing["median"]["sequential"], timing["median"]["parallel"]
print(f"machine: {machine_description(pipe.device)}; load average {timing['load_before']:.1f} before, {timing['load_after']:.1f} after")
default = timing["last"]["parallel"].solution  # the default window, chosen from measured times
print(f"median wall time of 3: sequential {t_seq:.2f} s, parallel {t_par:.2f} s; window: {window_description(default)}")
print(verdict_of(timing, evals_ratio=default.num_evals / default.n))


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
td.sample(pipe, generator=torch.manual_seed(0), callback=lambda info: finals.append(info.trajectory[-1].clone()) and False, **par)
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
early = td.sample(pipe, generator=torch.manual_seed(0), early_stop=1.0, **par)
print(f"early stop: {early.solution.status.name} after {early.solution.num_rounds} rounds, PSNR {psnr(early.images, seq):.1f} dB")

# %%
# Warm starts and variations
# --------------------------
# A previous trajectory is an excellent initial guess: the answer is still exact. Keeping its
# first rows frozen (``num_frozen``) and drawing new noise for the rest gives a *variation*
# of the earlier sample that shares its coarse structure.
warm = td.sample(pipe, generator=torch.manual_seed(0), init=out.solution.trajectory, **par)
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
