"""A 50-step DDIM-shaped semilinear system whose g is the exact noise prediction of a Gaussian mixture.

Coefficients follow a DDIM schedule (linear betas, 1000 training steps, leading spacing);
``g`` is smooth and truly nonlinear. Used by the solver tests; the diffusion package has the
real thing.
"""

import numpy as np

import trisolve


def gmm_eps(x, ab, mus, s):
    # x (w, d), ab (w,1)
    v = ab * s**2 + 1 - ab
    diff = x[:, None, :] - np.sqrt(ab)[:, None] * mus[None]  # w,K,d
    logw = -0.5 * (diff**2).sum(-1) / v
    logw -= logw.max(1, keepdims=True)
    wk = np.exp(logw)
    wk /= wk.sum(1, keepdims=True)
    post = mus[None] + (np.sqrt(ab) * s**2 / v)[:, None] * diff
    x0 = (wk[..., None] * post).sum(1)
    return (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)


def ddim_system(T=50, d=16, seed=0, K=8, s=0.05):
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    ts = (np.arange(T) * (1000 // T))[::-1]
    ab_t = abar[ts]
    ab_prev = np.append(abar[ts[1:]], abar[0])
    a = np.sqrt(ab_prev / ab_t)
    B = np.sqrt(1 - ab_prev) - np.sqrt(ab_prev * (1 - ab_t) / ab_t)
    rng = np.random.default_rng(seed)
    mus = rng.standard_normal((K, d))

    def g(x, lo, hi):
        return gmm_eps(x, ab_t[lo:hi][:, None], mus, s)

    sig = np.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
    return trisolve.SemilinearSystem(a, B, g, sigma=sig), rng.standard_normal(d)
