"""
Flow matching: parallel Euler sampling of a rectified-flow model
=================================================================

SD3, Flux and most image and video models since 2024 are *flow-matching* models: the network
predicts a velocity ``v(x, t)`` and ``FlowMatchEulerDiscreteScheduler`` integrates
``dx / dsigma = v`` from noise (``sigma = 1``) to data (``sigma = 0``)::

    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v(x_i, 1000 sigma_i)

Each step is linear in the latent and the network output, so the whole loop is one
lower-triangular system (``a = 1``, ``B = dsigma``, ``g = v``) that trisolve solves in a few
parallel rounds, exact to the sequential loop. Here on the bundled digits rectified-flow model
(a 1.1M-parameter UNet trained on scikit-learn's digits, no download): the same 28 steps
sequentially and in parallel, the rounds, and how the residuals fall.
"""

# %%
# Sequential and parallel samples
# -------------------------------
# ``trisolve_diffusion.sample(pipe, ...)`` takes the pipeline's own arguments; only the
# denoising loop is replaced. The same seed gives the same initial noise, so the two grids
# should be the same digits.
import matplotlib.pyplot as plt
import numpy as np
import torch

import trisolve
import trisolve_diffusion as td
from trisolve_diffusion.demo import psnr
from trisolve_diffusion.models import load_digits_flow_pipeline

torch.set_num_threads(2)
pipe = load_digits_flow_pipeline()
pipe.set_progress_bar_config(disable=True)
kw = dict(batch_size=8, num_inference_steps=28, output_type="np")

seq = pipe(generator=torch.Generator().manual_seed(0), **kw).images  # (8, 16, 16, 1) in [0, 1]
finals = []  # the final latent after each round
out = td.sample(
    pipe, generator=torch.Generator().manual_seed(0), progress=False,
    callback=lambda info: finals.append(info.trajectory[-1].clone()) and False, **kw,
)  # fmt: skip
sol = out.solution
print(f"{sol.status.name}: {sol.num_rounds} rounds for 28 steps, {sol.num_evals / 28:.1f} network evaluations per step and image")
print(f"PSNR from the sequential samples: {psnr(out.images, seq):.1f} dB, max |diff| {np.abs(out.images - seq).max():.1e}")
if sol.status is trisolve.Status.CONVERGED:
    print("every step's residual is within the tolerance (atol = rtol = 5e-4, scaled by the step's posterior std)")
else:  # FINAL_ROW_CONVERGED: the output-aware finish of pixel-space pipelines (final_row_atol="auto")
    pending = f"step {sol.n} was" if sol.num_frozen == sol.n else f"steps {sol.num_frozen}..{sol.n} were"
    print(
        f"{pending} not yet final (not all within the tolerance) when the final image's pending correction fell below one 8-bit grey "
        "level (final_row_atol): the solve stopped there, so the sample is close to, not equal to, the sequential one"
    )


def grid(images):  # (8, 16, 16, 1) -> (2 * 16, 4 * 16)
    return images[..., 0].reshape(2, 4, 16, 16).transpose(0, 2, 1, 3).reshape(32, 64)


fig, ax = plt.subplots(1, 3, figsize=(10, 3.6))
for a, img, title in (
    (ax[0], grid(seq), "sequential, 28 steps"),
    (ax[1], grid(out.images), f"parallel, {sol.num_rounds} rounds"),
):
    a.imshow(img, cmap="gray", vmin=0, vmax=1)
    a.set_title(title)
    a.axis("off")
diff = ax[2].imshow(np.abs(grid(out.images) - grid(seq)), cmap="magma")
ax[2].set_title("|parallel - sequential|")
ax[2].axis("off")
fig.colorbar(diff, ax=ax[2], fraction=0.046)
fig.tight_layout()

# %%
# The status printed above says how the solve ended, and the line under it what that means.
# ``CONVERGED``: every step's residual is within the tolerance (``atol = rtol = 5e-4``, in
# latent units, scaled by the step's posterior standard deviation). ``FINAL_ROW_CONVERGED``
# (what the bundled pixel-space models usually end with at the default options): the
# output-aware finish stopped once the final image's pending correction, and every unfinished
# step's, fell below one 8-bit grey level, before the last steps met the tolerance; the
# printed max difference is what that saved round costs. ``final_row_atol=None`` converges
# every step.
#
# Rounds and residuals
# --------------------
# A rectified-flow path is nearly straight, so a few parallel rounds already carry the
# information from the noise to the last row. The left panel shows how close the final sample
# is to the sequential one after each round (worst of the 8 images); the right panel the
# largest scaled residual of every row in each round (``<= 1`` is converged, dashed).


def to_images(latents):
    return (latents / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


curve = [min(psnr(to_images(f)[i], seq[i]) for i in range(8)) for f in finals]
res = sol.residuals  # (rounds, 29): nan outside the round's window
fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
ax[0].plot(range(1, len(curve) + 1), curve, "o-")
ax[0].axhline(45, ls="--", c="gray")
ax[0].set_xlabel("round")
ax[0].set_ylabel("worst PSNR from sequential (dB)")
for r in range(res.shape[0]):
    ax[1].semilogy(np.arange(res.shape[1]), res[r], label=f"round {r + 1}", color=plt.cm.viridis(r / max(1, res.shape[0] - 1)))
ax[1].axhline(1.0, ls="--", c="gray")
ax[1].set_xlabel("row (step)")
ax[1].set_ylabel("scaled residual")
ax[1].legend(fontsize=6, ncol=2)
fig.tight_layout()
first = next((r + 1 for r, v in enumerate(curve) if v >= 45), None)
print(f"45 dB first reached in round {first} of {sol.num_rounds}" if first else f"45 dB not reached in {sol.num_rounds} rounds")

# %%
# The line printed under the plot says in which round the image first reached 45 dB and how
# many rounds the solve ran. A batch converges when its slowest sample does, so a batch of 8 takes more rounds
# than one image. ``benchmarks/flow.py`` measures this over seeds, step counts and batch sizes.
#
# Plain Jacobi and Picard
# -----------------------
# The same system for the first image through plain Jacobi iteration (each row from its
# predecessor's previous iterate: one row of progress per round) and through the Picard map
# with Jacobi updates (ParaDiGMS's iteration), next to the default (Triangular Anderson on the
# Picard map).
for name, opts in (
    ("Jacobi", dict(solver=trisolve.Jacobi(), update_map=trisolve.OneStep())),
    ("Picard (ParaDiGMS)", dict(solver=trisolve.Jacobi(), update_map=trisolve.Picard())),
    ("default (TAA, Picard)", dict()),
):
    o = td.sample(pipe, generator=torch.Generator().manual_seed(0), progress=False, **opts, **{**kw, "batch_size": 1})
    print(f"{name:22s} {o.solution.num_rounds:3d} rounds, PSNR {psnr(o.images, seq[:1]):6.1f} dB")

# %%
# The other flow-matching pipelines go through the same door: ``td.sample(pipe, ...)`` with a
# ``StableDiffusion3Pipeline`` (classifier-free guidance, skip-layer guidance) or a
# ``FluxPipeline`` (packed latents, the guidance embedding, true CFG), and every option of the
# scheduler (``shift``, dynamic shifting, Karras / exponential / beta sigmas,
# ``stochastic_sampling`` with its noise pre-drawn in the loop's order).
