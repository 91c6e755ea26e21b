"""``DDIMScheduler`` as a semilinear system (any ``eta``; epsilon, sample and v prediction).

Notation (diffusers name -> symbol): ``alpha_prod_t`` -> ``ab_t``, ``alpha_prod_t_prev`` ->
``ab_prev``, ``std_dev_t`` -> ``s_t = eta * sqrt(var_t)``. One step::

    x0_hat = P(pred_x0(x_t, m_t))                     (P: clip / threshold, or identity)
    eps    = pred_eps(x_t, m_t)  or  (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t)   (use_clipped_model_output)
    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s_t^2) eps + s_t z

so ``a = sqrt(ab_prev) dx0/dx + sqrt(1 - ab_prev - s_t^2) deps/dx`` and ``g = x_prev - s_t z - a x_t``.
The previous timestep is ``t - num_train_timesteps // num_inference_steps`` as in
``DDIMScheduler.step``; before 0 it is ``final_alpha_cumprod`` (``set_alpha_to_one``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import SchedulerMapping, check_common, linear_part, posterior_std, predictions, start_index

__all__ = ["DDIMMapping", "map_ddim"]


@dataclass(frozen=True, eq=False)
class DDIMMapping(SchedulerMapping):
    sab: np.ndarray = None  # sqrt(ab_t) per row j          (n,)
    s1ab: np.ndarray = None
    c_x0: np.ndarray = None  # sqrt(ab_prev) per step       (n,)
    c_eps: np.ndarray = None  # sqrt(1 - ab_prev - s_t^2)
    use_clipped_model_output: bool = False

    def g(self, x, model_output, lo, hi):
        cfg = self.scheduler.config
        sab, s1ab = self.table("sab", x)[lo:hi], self.table("s1ab", x)[lo:hi]
        x0, eps = predictions(cfg.prediction_type, x, model_output, sab, s1ab)
        x0 = self.process_x0(x0)
        if self.use_clipped_model_output:
            eps = (x - sab * x0) / s1ab
        step = self.table("c_x0", x)[lo:hi] * x0 + self.table("c_eps", x)[lo:hi] * eps
        return step - self.table("a", x)[lo:hi] * x


def map_ddim(scheduler, *, eta: float = 0.0, use_clipped_model_output: bool = False, start: int | None = None) -> DDIMMapping:
    check_common(scheduler, allowed_prediction=("epsilon", "sample", "v_prediction"))
    if not (isinstance(eta, (int, float)) and np.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}.")
    cfg = scheduler.config
    ts = scheduler.timesteps.cpu().numpy().astype(np.int64)[start_index(scheduler, start) :]  # one-step: rows from start
    n = ts.shape[0]
    abar = scheduler.alphas_cumprod.double().cpu().numpy()
    final = float(scheduler.final_alpha_cumprod)
    prev = ts - cfg.num_train_timesteps // scheduler.num_inference_steps
    ab_t = abar[ts]
    ab_prev = np.where(prev >= 0, abar[np.clip(prev, 0, None)], final)
    var = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
    std = eta * np.sqrt(var)
    sab, s1ab = np.sqrt(ab_t), np.sqrt(1 - ab_t)
    c_x0 = np.sqrt(ab_prev)
    c_eps = np.sqrt(1 - ab_prev - std**2)
    dx0, deps = linear_part(cfg.prediction_type, sab, s1ab)
    a = c_x0 * dx0 + c_eps * deps
    B = np.ones((n, 1))
    # a step with abar_prev == abar_t (the last one with leading spacing, final timestep 0 and
    # set_alpha_to_one=False) is the identity when x0_hat is not clipped or thresholded:
    # x_prev = sqrt(ab) x0_hat + sqrt(1 - ab) eps = x_t, and s_t = 0. Written exactly (a = 1,
    # no g term), the solver resolves it without a network call or a round of its own.
    identity = (ab_prev == ab_t) & (not cfg.clip_sample) & (not cfg.thresholding)
    a[identity], B[identity] = 1.0, 0.0
    if not np.all(np.isfinite(np.concatenate([a, c_eps, std]))):
        raise ValueError(
            f"DDIMScheduler with eta={eta} gives non-finite step coefficients for these timesteps (1 - abar_prev - s_t^2 < 0); use a smaller eta."
        )
    return DDIMMapping(
        scheduler=scheduler,
        timesteps=ts,
        input_scale=np.ones(n),
        a=a,
        B=B,
        noise_scale=std,
        noise_drawn=np.full(n, eta > 0),
        noise_in_float32=False,
        sigma=posterior_std(ab_t, ab_prev),
        sab=sab,
        s1ab=s1ab,
        c_x0=c_x0,
        c_eps=c_eps,
        use_clipped_model_output=bool(use_clipped_model_output),
    )
