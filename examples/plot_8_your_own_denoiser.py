"""
Your own denoiser with ``sample_latents``
=========================================

``trisolve_diffusion.sample(pipe, ...)`` covers the diffusers pipelines listed on the
"Supported pipelines and schedulers" page. Any other model, a custom loop, a video model, a
node in a graph UI, goes one level down: :func:`trisolve_diffusion.sample_latents` takes a
*denoiser* (a function of the scaled latents and the timesteps), a diffusers *scheduler* and
the initial latents, and solves the whole sampling loop in parallel rounds. We use the bundled
digits UNet as "your model", check parity with a hand-written loop that calls
``scheduler.step``, and add classifier-free guidance to a toy conditional model.
"""

# %%
import matplotlib.pyplot as plt
import torch
from diffusers import DDIMScheduler

import trisolve_diffusion as td
from trisolve_diffusion.models import load_digits_unet
from trisolve_diffusion.models.closed_form import GaussianMixtureDenoiser

torch.manual_seed(0)
unet = load_digits_unet()

# %%
# The denoiser
# ------------
# ``denoiser(model_input, timesteps)`` receives ``(N, C, H, W)`` latents already multiplied by
# the scheduler's input scale (what a pipeline hands its UNet) and ``(N,)`` timesteps, where
# ``N`` is rows of the round times samples. It returns the model output of the same shape.
# Whatever your model's calling convention, a few lines adapt it.


def denoiser(model_input, timesteps):
    return unet(model_input, timesteps).sample


scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False, set_alpha_to_one=False)
scheduler.set_timesteps(25)
latents = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * scheduler.init_noise_sigma

# %%
# The sequential loop, written by hand
# ------------------------------------
x = latents.clone()
with torch.no_grad():
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(denoiser(model_input, t.expand(x.shape[0])), t, x).prev_sample
sequential = x

# %%
# The same loop in parallel rounds
# --------------------------------
# Solver settings are keywords, the names :func:`trisolve.solve` takes (``solver=``, ``atol=``,
# ``window=``, ``progress=``, ...; each described under :class:`~trisolve_diffusion.SolveOptions`);
# the defaults end every benchmark run >= 40 dB from the sequential sample.
final, sol = td.sample_latents(denoiser, scheduler, latents, progress=False)
print(f"{sol.num_rounds} rounds for 25 steps, {sol.num_evals} evaluations, status {sol.status.name}")
print(f"max |parallel - sequential| = {(final - sequential).abs().max():.1e}")

tight = dict(atol=1e-7, rtol=0.0, trajectory_dtype=torch.float64, progress=False)
final_tight, sol_tight = td.sample_latents(denoiser, scheduler, latents, **tight)
print(f"tight tolerance: {sol_tight.num_rounds} rounds, max diff {(final_tight - sequential).abs().max():.1e}")

fig, axes = plt.subplots(2, 4, figsize=(4, 2.2))
for i in range(4):
    axes[0, i].imshow(sequential[i, 0].clamp(-1, 1), cmap="gray")
    axes[1, i].imshow(final[i, 0].clamp(-1, 1), cmap="gray")
    for ax in axes[:, i]:
        ax.axis("off")
axes[0, 0].set_title("sequential", loc="left", fontsize=8)
axes[1, 0].set_title("sample_latents", loc="left", fontsize=8)
plt.tight_layout()

# %%
# Classifier-free guidance
# ------------------------
# :func:`~trisolve_diffusion.classifier_free_guidance` wraps a conditional model into a
# denoiser: the model is called once per round on ``[x; x]`` and evaluates the first half
# unconditioned and the second half conditioned; the guided output is
# ``u + s (c - u)`` (with diffusers' ``guidance_rescale`` if asked). Here the "condition" picks
# one of two Gaussian mixtures (exact closed-form denoisers): all data, or its first component.
means = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
uncond_model = GaussianMixtureDenoiser(means, scheduler.alphas_cumprod, std=0.1)
cond_model = GaussianMixtureDenoiser(means[:1], scheduler.alphas_cumprod, std=0.1)


def conditional(x2, t2):
    n = x2.shape[0] // 2
    return torch.cat([uncond_model(x2[:n], t2[:n]).sample, cond_model(x2[n:], t2[n:]).sample])


guided = td.classifier_free_guidance(conditional, guidance_scale=3.0)
x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
samples, sol = td.sample_latents(guided, scheduler, x0, progress=False)
print(f"guided: {sol.num_rounds} rounds; distance to the chosen component {(samples - means[0]).flatten(1).norm(dim=1).mean():.2f}")
