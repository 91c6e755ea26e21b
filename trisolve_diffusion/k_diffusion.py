"""k-diffusion's samplers, solved in parallel rounds, with k-diffusion's names and signatures (DESIGN 13).

``trisolve_diffusion.k_diffusion.sample_euler(model, x, sigmas)`` returns what
``k_diffusion.sampling.sample_euler(model, x, sigmas)`` returns, to the solve's tolerance, where
``model(x, sigma, **extra_args)`` returns the denoised image ``D`` (k-diffusion's convention,
also ComfyUI's, Forge's and AUTOMATIC1111's). Every sampler here is a semilinear system in the
rows the loop visits (one row per network evaluation, row 0 the input ``x``)::

    x_{j+1} = a_j x_j + sum_q B[j, q] g_{j-q} + c_j,     g_j = D(x_j + e_j, sigma_j)
                                                         (LMS: g_j = (x_j - D_j) / sigma_j, k-diffusion's d)

Notation: ``s = sigmas[i]``, ``s' = sigmas[i + 1]``, ``sh`` the churned ``sigma_hat``, ``sd, su``
the ancestral ``sigma_down, sigma_up`` (``get_ancestral_step``), ``h = log(s / s')``, ``z`` the
step's noise (``noise_sampler(s, s')``), ``e_j`` the churn noise added to the model input.

========================  ==========================================================================
sampler                   rows of step ``i``
========================  ==========================================================================
Euler (churn)             ``x' = (s'/sh) (x + e) + (1 - s'/sh) D``
Euler ancestral           ``x' = (sd/s) x + (1 - sd/s) D + su z``
Heun (churn)              ``x2 = (s'/sh) (x + e) + (1 - s'/sh) D1``;  ``x' = x2 + (s' - sh) / (2 s') (D1 - D2)``
DPM-2 (churn)             ``x2 = (sm/sh) (x + e) + (1 - sm/sh) D1``;  ``x' = (s'/sm) x2 + (1 - sh/sm) D1 - ((s' - sh)/sm) D2``, ``sm = sqrt(sh s')``
DPM-2 ancestral           as DPM-2 with ``s' -> sd`` and ``+ su z``
LMS (order k)             ``x' = x + sum_{l < k} c_{i,l} d_{i-l}``, ``c`` by ``scipy.integrate.quad`` as k-diffusion
DPM++(2M)                 ``x' = (s'/s) x + (1 - s'/s) ((1 + 1/2r) D - (1/2r) D_{i-1})``, ``r = h_{i-1} / h``
DPM++(2S) ancestral       ``x2 = (sm/s) x + (1 - sm/s) D1``;  ``x' = (sd/sm) x2 + (sd/s - sd/sm) D1 + (1 - sd/s) D2 + su z``
DPM++(2M) SDE             ``x' = (s'/s) e^{-eta h} x + (1 - e^{-(1+eta) h}) D + (midpoint/heun term in D - D_{i-1}) + noise``
DPM++(3M) SDE             ``x' = e^{-(1+eta) h} x + (1 - e^{-(1+eta) h}) D + phi_2 d1 - phi_3 d2 + noise``
========================  ==========================================================================

(a second row per step is the second evaluation; where the next sigma is 0 the step is the
Euler/denoising step of k-diffusion's own loop, ``x' = D``). The second stage reads the first
stage's row, not the step's start: ``x + e`` is written through ``x2`` and ``D1``, exact.

Noise is pre-drawn in the loop's order: ``torch.randn_like(x)`` for the churn of Euler, Heun
and DPM-2 at every step (as k-diffusion draws it, also where ``gamma = 0``), and
``noise_sampler(sigmas[i], sigmas[i + 1])`` once per step where the loop calls it. The model
must not draw from the global generator itself (the draws would interleave differently).

The solve runs in the rescaled rows ``y_j = x_j / sqrt(lvl_j^2 + 1)`` (``lvl_j`` the noise level
of row ``j``), so rows at ``sigma = 80`` and at ``sigma = 0.03`` have comparable scale; the
tolerance is per row, ``atol + rtol * sigma_j`` in those units with ``sigma_j`` the posterior
standard deviation of the step (as for diffusers' Euler mapping). The network is called on a
batch of rows at different sigmas: ``model(x (w * B, ...), sigma (w * B,))`` (see
``check_model``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import trisolve
from trisolve._validate import check_float, check_int

from .sampler import OPTION_NAMES, ParallelSamplingError, SamplingInterrupted, SolveOptions, options_from_keywords, solve_rows
from .schedulers.parametrisation import level_posterior_std

#: The solve keywords of the samplers here: :func:`~trisolve_diffusion.sample_latents`'s, with ``round_callback`` for its
#: ``callback`` and without ``progress`` (k-diffusion's own ``callback`` and ``disable`` hold those names).
_SOLVE_NAMES = (OPTION_NAMES - {"progress", "callback"}) | {"round_callback"}

__all__ = [
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_lms",
    "sample_dpmpp_2m",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "SAMPLERS",
    "get_sigmas_karras",
    "get_sigmas_exponential",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "get_ancestral_step",
    "default_noise_sampler",
    "LoopConvention",
    "K_DIFFUSION",
    "COMFYUI",
]

# -- k-diffusion's schedules and helpers (k-diffusion 0.1.1.post1, sampling.py), same maths --------------


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: Any = "cpu") -> torch.Tensor:
    """The noise schedule of Karras et al. (2022), as ``k_diffusion.sampling.get_sigmas_karras``: ``(n + 1,)``, a trailing 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _append_zero(sigmas).to(device)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float, device: Any = "cpu") -> torch.Tensor:
    """Sigmas evenly spaced in ``log sigma``, as ``k_diffusion.sampling.get_sigmas_exponential``: ``(n + 1,)``, a trailing 0."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp()
    return _append_zero(sigmas)


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, device: Any = "cpu") -> torch.Tensor:
    """A polynomial in ``log sigma``, as ``k_diffusion.sampling.get_sigmas_polyexponential``: ``(n + 1,)``, a trailing 0."""
    ramp = torch.linspace(1, 0, n, device=device) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return _append_zero(sigmas)


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, device: Any = "cpu") -> torch.Tensor:
    """The continuous VP schedule, as ``k_diffusion.sampling.get_sigmas_vp``: ``(n + 1,)``, a trailing 0."""
    t = torch.linspace(1, eps_s, n, device=device)
    sigmas = torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1)
    return _append_zero(sigmas)


def get_ancestral_step(sigma_from: Any, sigma_to: Any, eta: float = 1.0) -> tuple[Any, Any]:
    """``(sigma_down, sigma_up)`` of an ancestral step, as ``k_diffusion.sampling.get_ancestral_step``."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def default_noise_sampler(x: torch.Tensor) -> Callable[[Any, Any], torch.Tensor]:
    """``noise_sampler(sigma, sigma_next) -> torch.randn_like(x)``: per-step Gaussian noise from the global generator."""
    return lambda sigma, sigma_next: torch.randn_like(x)


# -- the loop's convention -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConvention:
    """Details in which forks of k-diffusion's ``sampling.py`` differ; the rows follow the one chosen.

    Attributes
    ----------
    churn_draws_every_step : bool
        Euler, Heun and DPM-2 draw ``torch.randn_like(x)`` at every step (k-diffusion), or only
        where ``gamma > 0`` (ComfyUI).
    ancestral_denoises_at_zero_sigma_down : bool
        Euler ancestral returns ``D`` with no noise where ``sigma_down == 0`` (ComfyUI), or steps to
        ``sigma_down`` and adds noise wherever the next sigma is > 0 (k-diffusion). The two
        differ only for ``eta > 1``.
    lms_denoises_to_zero : bool
        LMS's step to a sigma of 0 returns ``D`` (ComfyUI) instead of the multistep formula.
    sde_noise_needs_s_noise : bool
        The SDE samplers draw noise only where ``eta > 0 and s_noise > 0`` (ComfyUI), or wherever
        ``eta != 0`` (k-diffusion).
    """

    churn_draws_every_step: bool = True
    ancestral_denoises_at_zero_sigma_down: bool = False
    lms_denoises_to_zero: bool = False
    sde_noise_needs_s_noise: bool = False


#: k-diffusion 0.1.1.post1's ``sampling.py`` (the default).
K_DIFFUSION = LoopConvention()
#: ComfyUI's fork, ``comfy/k_diffusion/sampling.py`` (for models that are not flow matching, ``CONST``).
COMFYUI = LoopConvention(churn_draws_every_step=False, ancestral_denoises_at_zero_sigma_down=True, lms_denoises_to_zero=True,
                         sde_noise_needs_s_noise=True)  # fmt: skip


# -- the rows of a sampler --------------------------------------------------------------------------------


class _Rows:
    """The semilinear rows of one sampler run, built by walking k-diffusion's loop once (noise drawn in its order).

    Each :meth:`step` evaluates the model at the newest row ``j`` (at ``sigma_in``) and defines
    row ``j + 1 = a x_j + sum_q b[q] g_{j-q} + noise + a e_j``.
    """

    def __init__(self, sigmas: torch.Tensor):
        self.sigma_in: list[torch.Tensor] = []  # 0-d tensors in the sigmas' dtype: what the model gets
        self.level = [float(sigmas[0])]  # noise level of each row (n + 1)
        self.a: list[float] = []
        self.b: list[list[float]] = []
        self.derivative: list[bool] = []
        self.noise: dict[int, torch.Tensor] = {}  # row j -> forcing of row j + 1 (noise part)
        self.shift: dict[int, torch.Tensor] = {}  # row j -> e_j added to the model input
        self.steps: list[tuple[int, Any, Any]] = []  # per loop step: (first row, sigma, sigma_hat)

    def begin(self, sigma: Any, sigma_hat: Any) -> None:
        self.steps.append((len(self.a), sigma, sigma_hat))

    def step(self, sigma_in, a, b, level, *, noise=None, shift=None, derivative=False) -> None:
        j = len(self.a)
        if any(b[j + 1 :]):
            raise AssertionError(f"internal: row {j + 1} has a coefficient on a row before row 0")
        b = b[: j + 1]
        self.sigma_in.append(sigma_in if isinstance(sigma_in, torch.Tensor) else torch.as_tensor(sigma_in))
        self.a.append(float(a))
        self.b.append([float(v) for v in b])
        self.level.append(float(level))
        self.derivative.append(derivative)
        if noise is not None:
            self.noise[j] = noise
        if shift is not None:
            self.shift[j] = shift

    @property
    def n(self) -> int:
        return len(self.a)

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        p = max(len(b) for b in self.b)
        B = np.zeros((self.n, p))
        for j, b in enumerate(self.b):
            B[j, : len(b)] = b
        return np.asarray(self.a, dtype=np.float64), B


def _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, conv):
    """The churn of step ``i``: ``(sigma_hat, e)``, ``e`` the noise added to ``x`` (``None`` when gamma is 0)."""
    if conv.churn_draws_every_step:  # k-diffusion
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = torch.randn_like(x) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
    else:  # ComfyUI
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_churn > 0 and s_tmin <= sigmas[i] <= s_tmax else 0
        sigma_hat = sigmas[i] * (gamma + 1) if s_churn > 0 else sigmas[i]
        eps = torch.randn_like(x) * s_noise if gamma > 0 else None
    return sigma_hat, (eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5 if gamma > 0 else None)


def _rows_euler(x, sigmas, conv, *, s_churn, s_tmin, s_tmax, s_noise) -> _Rows:
    rows = _Rows(sigmas)
    for i in range(len(sigmas) - 1):
        sh, e = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, conv)
        rows.begin(sigmas[i], sh)
        ratio = float(sigmas[i + 1]) / float(sh)
        rows.step(sh, ratio, [1 - ratio], sigmas[i + 1], shift=e)
    return rows


def _rows_two_stage(x, sigmas, conv, kind, *, s_churn, s_tmin, s_tmax, s_noise) -> _Rows:
    """Heun (``kind="heun"``) or DPM-2 (``"dpm_2"``): a second row where the next sigma is not 0."""
    rows = _Rows(sigmas)
    for i in range(len(sigmas) - 1):
        sh_t, e = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, conv)
        rows.begin(sigmas[i], sh_t)
        sh, s1 = float(sh_t), float(sigmas[i + 1])
        if s1 == 0:  # Euler to 0: x' = D
            rows.step(sh_t, 0.0, [1.0], 0.0, shift=e)
        elif kind == "heun":
            rows.step(sh_t, s1 / sh, [1 - s1 / sh], s1, shift=e)
            k = (s1 - sh) / (2 * s1)
            rows.step(sigmas[i + 1], 1.0, [-k, k], s1)
        else:
            sm_t = sh_t.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            sm = float(sm_t)
            rows.step(sh_t, sm / sh, [1 - sm / sh], sm, shift=e)
            rows.step(sm_t, s1 / sm, [-(s1 - sh) / sm, 1 - sh / sm], s1)
    return rows


def _rows_euler_ancestral(x, sigmas, conv, *, eta, s_noise, noise_sampler) -> _Rows:
    rows = _Rows(sigmas)
    for i in range(len(sigmas) - 1):
        rows.begin(sigmas[i], sigmas[i])
        sd, su = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if conv.ancestral_denoises_at_zero_sigma_down and sd == 0:
            rows.step(sigmas[i], 0.0, [1.0], sigmas[i + 1])
            continue
        noise = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su if sigmas[i + 1] > 0 or conv.ancestral_denoises_at_zero_sigma_down else None
        ratio = float(sd) / float(sigmas[i])
        rows.step(sigmas[i], ratio, [1 - ratio], sigmas[i + 1], noise=noise)
    return rows


def _rows_dpm_2_ancestral(x, sigmas, conv, *, eta, s_noise, noise_sampler) -> _Rows:
    rows = _Rows(sigmas)
    for i in range(len(sigmas) - 1):
        rows.begin(sigmas[i], sigmas[i])
        sd_t, su = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        s, sd = float(sigmas[i]), float(sd_t)
        if sd == 0:  # Euler to 0, no noise (k-diffusion's branch)
            rows.step(sigmas[i], 0.0, [1.0], sigmas[i + 1])
            continue
        sm_t = sigmas[i].log().lerp(torch.as_tensor(sd_t).log(), 0.5).exp()
        sm = float(sm_t)
        rows.step(sigmas[i], sm / s, [1 - sm / s], sm)
        noise = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
        rows.step(sm_t, sd / sm, [-(sd - s) / sm, 1 - s / sm], sigmas[i + 1], noise=noise)
    return rows


def _rows_dpmpp_2s_ancestral(x, sigmas, conv, *, eta, s_noise, noise_sampler) -> _Rows:
    rows = _Rows(sigmas)
    for i in range(len(sigmas) - 1):
        rows.begin(sigmas[i], sigmas[i])
        sd_t, su = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        noise = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su if sigmas[i + 1] > 0 else None
        s, sd = float(sigmas[i]), float(sd_t)
        if sd == 0:
            rows.step(sigmas[i], 0.0, [1.0], sigmas[i + 1], noise=noise)
            continue
        t, t_next = sigmas[i].log().neg(), torch.as_tensor(sd_t).log().neg()
        sm_t = (t + 0.5 * (t_next - t)).neg().exp()  # sigma_fn(s), the midpoint the model sees
        sm = float(sm_t)
        rows.step(sigmas[i], sm / s, [1 - sm / s], sm)
        rows.step(sm_t, sd / sm, [1 - sd / s, sd / s - sd / sm], sigmas[i + 1], noise=noise)
    return rows


def _lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """k-diffusion's ``linear_multistep_coeff``: the Lagrange basis polynomial ``j`` integrated over ``[t_i, t_{i+1}]``."""
    try:
        from scipy import integrate
    except ImportError as err:  # pragma: no cover - scipy ships with the test and docs environments
        raise ImportError("sample_lms computes its coefficients with scipy.integrate.quad, as k-diffusion does: pip install scipy.") from err

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def _rows_lms(x, sigmas, conv, *, order) -> _Rows:
    rows = _Rows(sigmas)
    t = sigmas.detach().cpu().numpy()  # k-diffusion integrates over the sigmas in their own dtype
    for i in range(len(sigmas) - 1):
        rows.begin(sigmas[i], sigmas[i])
        if conv.lms_denoises_to_zero and sigmas[i + 1] == 0:
            rows.step(sigmas[i], 0.0, [1.0], 0.0)  # x' = D, written in D
            continue
        cur = min(i + 1, order)
        rows.step(sigmas[i], 1.0, [_lms_coefficient(cur, t, i, j) for j in range(cur)], sigmas[i + 1], derivative=True)
    return rows


def _log_step(sigmas, i) -> float:
    """``h = t' - t`` with ``t = -log sigma``, computed as k-diffusion does (in the sigmas' dtype)."""
    return float(sigmas[i + 1].log().neg() - sigmas[i].log().neg())


def _rows_dpmpp_2m(x, sigmas, conv) -> _Rows:
    rows = _Rows(sigmas)
    for i in range(len(sigmas) - 1):
        rows.begin(sigmas[i], sigmas[i])
        s, s1 = float(sigmas[i]), float(sigmas[i + 1])
        if i == 0 or s1 == 0:
            rows.step(sigmas[i], s1 / s, [1 - s1 / s], s1)
            continue
        r = float(sigmas[i].log().neg() - sigmas[i - 1].log().neg()) / _log_step(sigmas, i)
        rows.step(sigmas[i], s1 / s, [(1 - s1 / s) * (1 + 1 / (2 * r)), -(1 - s1 / s) / (2 * r)], s1)
    return rows


def _sde_draws(conv, eta, s_noise) -> bool:
    return eta > 0 and s_noise > 0 if conv.sde_noise_needs_s_noise else bool(eta)


def _sde_noise(noise_sampler, sigmas, i, h_eta_factor, s_noise):
    """``noise_sampler(s, s') s' sqrt(1 - exp(-2 f h)) s_noise`` as k-diffusion's SDE samplers (``f = eta``)."""
    h = sigmas[i + 1].log().neg() - sigmas[i].log().neg()
    return noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * h_eta_factor).expm1().neg().sqrt() * s_noise


def _rows_dpmpp_2m_sde(x, sigmas, conv, *, eta, s_noise, noise_sampler, solver_type) -> _Rows:
    rows = _Rows(sigmas)
    h_last = None
    for i in range(len(sigmas) - 1):
        rows.begin(sigmas[i], sigmas[i])
        s, s1 = float(sigmas[i]), float(sigmas[i + 1])
        if s1 == 0:  # the denoising step: x' = D
            rows.step(sigmas[i], 0.0, [1.0], 0.0)
            continue
        h = _log_step(sigmas, i)
        eta_h = eta * h
        b0 = -math.expm1(-h - eta_h)
        b = [b0]
        if i > 0:
            r = h_last / h
            corr = 0.5 * b0 / r if solver_type == "midpoint" else (b0 / (-h - eta_h) + 1) / r
            b = [b0 + corr, -corr]
        noise = _sde_noise(noise_sampler, sigmas, i, eta, s_noise) if _sde_draws(conv, eta, s_noise) else None
        rows.step(sigmas[i], s1 / s * math.exp(-eta_h), b, s1, noise=noise)
        h_last = h
    return rows


def _rows_dpmpp_3m_sde(x, sigmas, conv, *, eta, s_noise, noise_sampler) -> _Rows:
    rows = _Rows(sigmas)
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        rows.begin(sigmas[i], sigmas[i])
        s1 = float(sigmas[i + 1])
        if s1 == 0:
            rows.step(sigmas[i], 0.0, [1.0], 0.0)
            h_1, h_2 = None, h_1  # not read again: the loop ends at the first 0
            continue
        h = _log_step(sigmas, i)
        h_eta = h * (eta + 1)
        b = np.array([-math.expm1(-h_eta), 0.0, 0.0])
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if h_2 is not None:  # coefficients of (D, D_{i-1}, D_{i-2}) in d1 and d2
            r0, r1 = h_1 / h, h_2 / h
            v0, v1 = np.array([1 / r0, -1 / r0, 0.0]), np.array([0.0, 1 / r1, -1 / r1])
            d1 = v0 + (v0 - v1) * r0 / (r0 + r1)
            d2 = (v0 - v1) / (r0 + r1)
            b = b + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
        elif h_1 is not None:
            r = h_1 / h
            b = b + phi_2 * np.array([1 / r, -1 / r, 0.0])
        noise = _sde_noise(noise_sampler, sigmas, i, eta, s_noise) if _sde_draws(conv, eta, s_noise) else None
        rows.step(sigmas[i], math.exp(-h_eta), list(b), s1, noise=noise)
        h_1, h_2 = h, h_1
    return rows


# -- the solve ------------------------------------------------------------------------------------------

#: relative RMS difference above which ``check_model`` calls a model's batched output per-row-inconsistent
_CHECK_RTOL = 1e-2


def _check_per_row_sigma(model, x: torch.Tensor, sig: torch.Tensor, extra_args: dict) -> None:
    """One call on ``[x; x]`` at two different sigmas against one call on ``x`` at the second: they must agree.

    A model that reads only ``sigma[0]`` (the sequential loop's batch has one sigma) would
    denoise every row of a parallel round at the first row's level.
    """
    if sig.numel() < 2:
        return
    k = int(torch.argmax((sig.double().log() - sig[0].double().log()).abs()))
    if sig[k] == sig[0]:
        return
    b = x.shape[0]
    both = model(torch.cat([x, x]), torch.cat([sig[0].expand(b), sig[k].expand(b)]), **extra_args)[b:]
    alone = model(x, sig[k].expand(b), **extra_args)
    diff = (both.double() - alone.double()).pow(2).mean().sqrt()
    ref = alone.double().pow(2).mean().sqrt()
    if not diff <= _CHECK_RTOL * ref + 1e-12:
        raise ValueError(
            f"model(x, sigma) gave a different output for rows at sigma={float(sig[k]):.4g} when called in one batch with rows "
            f"at sigma={float(sig[0]):.4g} than when called alone (relative RMS difference {float(diff / ref):.3g}): it seems to "
            "read one sigma for the whole batch (e.g. sigma[0]). The parallel samplers call the model on rows at different "
            "noise levels in one batch; make it use sigma per sample (as k-diffusion's wrappers and ComfyUI's model do), use "
            "the sequential sampler, or pass check_model=False if the difference is randomness in the model that you accept."
        )


def _solve(
    model: Any,
    x: torch.Tensor,
    rows: _Rows,
    *,
    extra_args: dict | None,
    callback: Callable[[dict], Any] | None,
    disable: bool | None,
    options: SolveOptions | None,
    solve_options: dict[str, Any],
    return_solution: bool,
    check_model: bool,
    max_rows_per_call: int | None,
) -> Any:
    options = options_from_keywords(solve_options, options, caller="trisolve_diffusion.k_diffusion.sample_*", names=_SOLVE_NAMES,
                                    aliases={"round_callback": "callback"}, stacklevel=5)  # fmt: skip
    if options.window == "auto":
        raise ValueError('window="auto" is not available for the k-diffusion samplers yet; pass an int (rows per round) or None (all rows).')
    if disable is True:
        options = options.replace(progress=False)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(dict) or None, got {type(callback).__name__}.")
    if max_rows_per_call is not None:
        max_rows_per_call = check_int("max_rows_per_call", max_rows_per_call, 1, hint="or None")
    extra_args = {} if extra_args is None else extra_args
    n, batch, traj, device = rows.n, x.shape[0], options.trajectory_dtype, x.device
    a, B = rows.tables()
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(B))):
        raise ValueError(f"the sigmas give non-finite step coefficients (a zero or negative sigma before the last?): {rows.level}.")
    lvl = np.asarray(rows.level, dtype=np.float64)  # (n + 1,)
    scale = 1.0 / np.sqrt(lvl**2 + 1.0)  # y_j = scale_j x_j
    col = (-1,) + (1,) * x.ndim  # per-row scalars over (w, B, *event)

    def dev(v: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(v, dtype=np.float64), device=device).to(traj).reshape(col)

    forcing = None
    if rows.noise or rows.shift:
        forcing = torch.zeros((n, *x.shape), dtype=traj, device=device)
        for j in range(n):
            if j in rows.shift:
                forcing[j] += a[j] * rows.shift[j].to(traj)
            if j in rows.noise:
                forcing[j] += rows.noise[j].to(traj)
        forcing *= dev(scale[1:])
    shift = None
    if rows.shift:
        shift = torch.zeros((n, *x.shape), dtype=traj, device=device)
        for j, e in rows.shift.items():
            shift[j] = e.to(traj)
    sig_dtype = (rows.sigma_in[0] * x.new_ones([1])).dtype  # what k-diffusion's `sigma * s_in` gives
    sig = torch.stack([s.to(device) for s in rows.sigma_in]).to(sig_dtype)  # (n,)
    inv = dev(1.0 / scale[:-1])
    deriv = np.asarray(rows.derivative)
    s_in = np.array([float(s) for s in rows.sigma_in])
    cx, cm = dev(np.where(deriv, 1.0 / np.where(deriv, s_in, 1.0), 0.0)), dev(np.where(deriv, -1.0 / np.where(deriv, s_in, 1.0), 1.0))
    denoised = torch.zeros((n, *x.shape), dtype=traj, device=device) if callback is not None else None
    chunk = n if max_rows_per_call is None else max_rows_per_call
    split = _batch_split(options, extra_args, x, forcing)
    if split is not None:
        options = options.replace(distributed=False)  # the model's batch is split instead of the rows

    def call(inp: torch.Tensor, sig_in: torch.Tensor) -> torch.Tensor:  # one model call, its batch split over the ranks if so planned
        if split is None:
            return model(inp, sig_in, **extra_args)
        return split(inp.shape[0], lambda s, e: model(inp[s:e], sig_in[s:e], **extra_args))

    def g(y_rows: torch.Tensor, lo: int, hi: int, active: np.ndarray | None = None) -> torch.Tensor:  # (w, B, *event) -> (w, B, *event)
        xin = y_rows * inv[lo:hi]
        if shift is not None:
            xin = xin + shift[lo:hi]
        w = hi - lo
        inp = xin.reshape(w * batch, *x.shape[1:]).to(x.dtype)  # (w * B, *event): row-major (row, sample)
        s_in = sig[lo:hi].repeat_interleave(batch)
        idx = None if active is None else torch.as_tensor(np.flatnonzero(active.reshape(-1)), device=device)
        if idx is not None:  # g_pairs: only the active (row, sample) pairs, gathered (the model reads each input alone: no extra_args)
            inp, s_in = inp.index_select(0, idx), s_in.index_select(0, idx)
        step = chunk * batch  # at most max_rows_per_call rows' inputs per call
        parts = [call(inp[k : k + step], s_in[k : k + step]) for k in range(0, inp.shape[0], step)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        if idx is not None:  # scattered back; the other pairs' values are never read
            out = out.new_zeros((w * batch, *out.shape[1:])).index_copy_(0, idx, out)
        D = out.reshape(w, batch, *x.shape[1:]).to(traj)
        if denoised is not None:
            if idx is None:
                denoised[lo:hi] = D
            else:  # a pair not evaluated keeps its recorded value
                keep = torch.as_tensor(active, device=device).reshape(w, batch, *(1,) * (x.ndim - 1))
                denoised[lo:hi] = torch.where(keep, D, denoised[lo:hi])
        return cx[lo:hi] * xin + cm[lo:hi] * D if deriv[lo:hi].any() else D

    if check_model:
        with torch.no_grad():
            _check_per_row_sigma(model, x, sig, extra_args)
    # per-sample rounds gather the pairs they need into one call where the model reads each input alone (no extra_args, no split)
    system = trisolve.SemilinearSystem(a * scale[1:] / scale[:-1], B * scale[1:, None], g, c=forcing,
                                       sigma=level_posterior_std(np.ones_like(lvl), lvl) * scale[1:], batch_ndim=1,
                                       g_pairs=g if not extra_args and split is None else None)  # fmt: skip
    if options.init is not None:
        if tuple(options.init.shape) != (n + 1, *x.shape):
            raise ValueError(f"init must be a tensor of shape (rows + 1, *x.shape) = {(n + 1, *x.shape)}, got {tuple(options.init.shape)}.")
        options = options.replace(init=options.init.to(device=device, dtype=traj) * dev(scale))
    solver, update_map = options.solver_and_map(n)
    y0 = (x.to(traj) * float(scale[0])).contiguous()
    try:
        sol = solve_rows(system, y0, options, solver=solver, update_map=update_map, window=options.window_policy(), forcing=forcing,
                         split=split)  # fmt: skip
    except (ParallelSamplingError, SamplingInterrupted) as err:  # what was computed, in x units: resume with init=
        err.solution = dataclasses.replace(err.solution, trajectory=err.solution.trajectory * dev(1.0 / scale))
        raise
    trajectory = sol.trajectory * dev(1.0 / scale)  # back to x units, (n + 1, B, *event)
    if callback is not None:  # per loop step, after the solve, with the solution's values
        for i, (j, sigma, sigma_hat) in enumerate(rows.steps):
            xi = trajectory[j] if shift is None else trajectory[j] + shift[j]
            callback({"x": xi.to(x.dtype), "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised[j].to(x.dtype)})
    out = trajectory[-1].to(x.dtype)
    return (out, dataclasses.replace(sol, trajectory=trajectory)) if return_solution else out


def _batch_split(options: SolveOptions, extra_args: dict, x: torch.Tensor, forcing: torch.Tensor | None) -> Any:
    """The split of every model call's batch over the ranks (as ``sample_latents`` does with a UNet), or ``None``.

    Only without ``extra_args``: the model is then a function of each input and its sigma
    alone (what ``check_model`` tests), so any contiguous share of a call's ``w x batch``
    inputs can go to a rank: window 1 splits the samples. With ``extra_args`` (conditioning
    that may be per sample, e.g. ComfyUI's, which a share of the batch cannot be matched to)
    the ranks split whole rows instead (:func:`trisolve.distribute`). ``None`` also in a group of one process.
    """
    if options.distributed is False or extra_args:
        return None
    from trisolve.distributed import GroupInfo, ShardedBatch, _digest

    from .sampler import _fingerprint

    info = GroupInfo.resolve(None if options.distributed is True else options.distributed)
    return None if info.world == 1 else ShardedBatch(info, _digest(_fingerprint(options, x, forcing)))


def _check_inputs(model: Any, x: Any, sigmas: Any, convention: Any) -> None:
    if not isinstance(convention, LoopConvention):
        raise TypeError(f"convention must be a LoopConvention (K_DIFFUSION or COMFYUI), got {type(convention).__name__}.")
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, sigma, **extra_args) -> denoised, got {type(model).__name__}.")
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch tensor (batch, ...): the initial noise times sigmas[0].")
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.shape[0] < 2 or not sigmas.is_floating_point():
        raise TypeError("sigmas must be a 1-D floating-point torch tensor with at least 2 entries (e.g. get_sigmas_karras(...)).")
    s = sigmas.detach().double().cpu().numpy()
    if not np.all(np.isfinite(s)) or np.any(s[:-1] <= 0) or s[-1] < 0:
        raise ValueError(f"sigmas must be finite and > 0, except the last which may be 0; got {s.tolist()}.")


def _check_noise(eta: Any, s_noise: Any, noise_sampler: Any) -> None:
    check_float("eta", eta, 0.0)
    check_float("s_noise", s_noise)
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError(f"noise_sampler must be callable as noise_sampler(sigma, sigma_next) -> noise, or None; got {type(noise_sampler).__name__}.")


def _check_churn(s_churn: Any, s_tmin: Any, s_tmax: Any, s_noise: Any) -> None:
    check_float("s_churn", s_churn, 0.0)
    for name, v in (("s_tmin", s_tmin), ("s_tmax", s_tmax)):
        check_float(name, v, finite=False)
    _check_noise(0.0, s_noise, None)


_SOLVE_DOC = """
    Parameters
    ----------
    model : callable
        ``model(x (N, ...), sigma (N,), **extra_args) -> denoised (N, ...)``, called with
        ``N = rows * batch``: rows at different sigmas in one batch, no autograd.
    x : tensor, shape ``(batch, ...)``
        The initial latent (noise times ``sigmas[0]``), as for k-diffusion.
    sigmas : tensor, shape ``(steps + 1,)``
        Any decreasing noise levels, > 0 except the last, which may be 0
        (:func:`get_sigmas_karras`, :func:`get_sigmas_exponential`, a model's own table).
    extra_args : dict, optional
        Passed to every model call.
    callback : callable, optional
        ``callback({"x", "i", "sigma", "sigma_hat", "denoised"})`` once per loop step, in step
        order, *after* the solve, with the solution's values: ``x`` the model input of the
        step's first evaluation and ``denoised`` the model's output at its last evaluation of
        that row (k-diffusion calls it during its loop). For per-round progress pass
        ``round_callback=``.
    disable : bool, optional
        ``True`` turns the progress bar off.
    **solve_options
        The solve keywords of :func:`~trisolve_diffusion.sample_latents` (each described
        under :class:`~trisolve_diffusion.SolveOptions`), except that the per-round callback
        is ``round_callback=`` (``callback`` is k-diffusion's per-step one) and the progress bar
        is ``disable=``: solver, tolerance (default ``atol = rtol = 5e-4`` in the rescaled
        rows, see the module), ``window`` (``None``: all rows; ``"auto"`` is not available
        here), ``max_iter``, ``strict``, ``distributed`` (without ``extra_args`` every model
        call's batch is split over the ranks, so window 1 splits the samples; with them, each
        round's rows); ``init`` (with ``num_frozen``) is a
        trajectory in ``x`` units, ``(rows + 1, batch, ...)``, e.g. an earlier solution's or
        error's ``.solution.trajectory``. ``options=SolveOptions(...)`` is their deprecated
        spelling.
    return_solution : bool
        Also return the :class:`trisolve.Solution` (its ``trajectory`` in ``x`` units, one row
        per model evaluation: ``(rows + 1, batch, ...)``).
    check_model : bool
        Before the solve, call the model once on ``[x; x]`` at two different sigmas and once on
        ``x`` alone, and raise ``ValueError`` if the two outputs at the same sigma differ by
        more than 1 % RMS: a model that reads only ``sigma[0]`` would be wrong in every round.
        Two extra calls; pass ``False`` for a model with randomness of its own.
    max_rows_per_call : int, optional
        Split each round's rows into model calls of at most this many rows (times the
        batch), bounding the network's memory; ``None``: one call per round.
    convention : LoopConvention
        Whose loop to equal: :data:`K_DIFFUSION` (default) or :data:`COMFYUI` (ComfyUI's fork,
        which draws the churn noise only where it is used and differs at a few edges; see
        :class:`LoopConvention`).

    Returns
    -------
    x : tensor, shape of ``x``
        The sample, as k-diffusion's sampler returns it (to the solve's tolerance).
    solution : trisolve.Solution
        Only with ``return_solution=True``.

    Raises
    ------
    trisolve_diffusion.ParallelSamplingError
        The model raised or returned nan/inf; ``.solution`` keeps what was computed (its
        trajectory in ``x`` units; resume with ``init=..., num_frozen=...``). :class:`~trisolve_diffusion.SamplingInterrupted` on Ctrl-C, likewise.
"""


def _documented(fn):
    """Add the shared Parameters/Returns/Raises sections (before an Examples section)."""
    head, sep, examples = fn.__doc__.partition("\n    Examples\n")
    fn.__doc__ = head.rstrip() + "\n" + _SOLVE_DOC + (sep + examples if sep else "")
    return fn


@_documented
@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
                 *, options=None, return_solution=False, check_model=True, max_rows_per_call=None, convention=K_DIFFUSION,
                 **solve_options):  # fmt: skip
    """Euler steps (Karras et al. 2022, Algorithm 2), as ``k_diffusion.sampling.sample_euler``, in parallel rounds.

    ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``: k-diffusion's churn (the noise it adds is
    drawn with ``torch.randn_like(x)`` at every step, before the solve, in the loop's order).

    Examples
    --------
    >>> import torch
    >>> from trisolve_diffusion import k_diffusion as K
    >>> model = lambda x, sigma: x / (1 + sigma[:, None] ** 2)   # the exact denoiser of N(0, 1) data
    >>> sigmas = K.get_sigmas_karras(10, 0.03, 20.0)
    >>> x = torch.randn(2, 3, generator=torch.manual_seed(0)) * sigmas[0]
    >>> out = K.sample_euler(model, x, sigmas, disable=True)
    >>> out.shape
    torch.Size([2, 3])
    """
    _check_inputs(model, x, sigmas, convention)
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    rows = _rows_euler(x, sigmas, convention, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _solve(model, x, rows, extra_args=extra_args, callback=callback, disable=disable, options=options, solve_options=solve_options,
                  return_solution=return_solution, check_model=check_model, max_rows_per_call=max_rows_per_call)  # fmt: skip


@_documented
@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None,
                           *, options=None, return_solution=False, check_model=True, max_rows_per_call=None, convention=K_DIFFUSION,
                 **solve_options):  # fmt: skip
    """Ancestral sampling with Euler steps, as ``k_diffusion.sampling.sample_euler_ancestral``, in parallel rounds.

    ``noise_sampler(sigmas[i], sigmas[i + 1])`` is called once per step with a next sigma > 0,
    in step order, before the solve (``None``: :func:`default_noise_sampler`, the global
    generator, as k-diffusion).
    """
    _check_inputs(model, x, sigmas, convention)
    _check_noise(eta, s_noise, noise_sampler)
    ns = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    rows = _rows_euler_ancestral(x, sigmas, convention, eta=eta, s_noise=s_noise, noise_sampler=ns)
    return _solve(model, x, rows, extra_args=extra_args, callback=callback, disable=disable, options=options, solve_options=solve_options,
                  return_solution=return_solution, check_model=check_model, max_rows_per_call=max_rows_per_call)  # fmt: skip


@_documented
@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
                *, options=None, return_solution=False, check_model=True, max_rows_per_call=None, convention=K_DIFFUSION,
                 **solve_options):  # fmt: skip
    """Heun steps (Karras et al. 2022, Algorithm 2), as ``k_diffusion.sampling.sample_heun``: two rows per step (one where the next sigma is 0)."""
    _check_inputs(model, x, sigmas, convention)
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    rows = _rows_two_stage(x, sigmas, convention, "heun", s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _solve(model, x, rows, extra_args=extra_args, callback=callback, disable=disable, options=options, solve_options=solve_options,
                  return_solution=return_solution, check_model=check_model, max_rows_per_call=max_rows_per_call)  # fmt: skip


@_documented
@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
                 *, options=None, return_solution=False, check_model=True, max_rows_per_call=None, convention=K_DIFFUSION,
                 **solve_options):  # fmt: skip
    """DPM-Solver-2 steps at the log-midpoint, as ``k_diffusion.sampling.sample_dpm_2``: two rows per step."""
    _check_inputs(model, x, sigmas, convention)
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    rows = _rows_two_stage(x, sigmas, convention, "dpm_2", s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _solve(model, x, rows, extra_args=extra_args, callback=callback, disable=disable, options=options, solve_options=solve_options,
                  return_solution=return_solution, check_model=check_model, max_rows_per_call=max_rows_per_call)  # fmt: skip


@_documented
@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None,
                           *, options=None, return_solution=False, check_model=True, max_rows_per_call=None, convention=K_DIFFUSION,
                 **solve_options):  # fmt: skip
    """Ancestral DPM-Solver-2 steps, as ``k_diffusion.sampling.sample_dpm_2_ancestral``; noise as :func:`sample_euler_ancestral`."""
    _check_inputs(model, x, sigmas, convention)
    _check_noise(eta, s_noise, noise_sampler)
    ns = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    rows = _rows_dpm_2_ancestral(x, sigmas, convention, eta=eta, s_noise=s_noise, noise_sampler=ns)
    return _solve(model, x, rows, extra_args=extra_args, callback=callback, disable=disable, options=options, solve_options=solve_options,
                  return_solution=return_solution, check_model=check_model, max_rows_per_call=max_rows_per_call)  # fmt: skip


@_documented
@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4,
               *, options=None, return_solution=False, check_model=True, max_rows_per_call=None, convention=K_DIFFUSION,
                 **solve_options):  # fmt: skip
    """Linear multistep of ``order`` on the derivatives, as ``k_diffusion.sampling.sample_lms`` (a band of ``order`` rows).

    The coefficients are k-diffusion's, ``scipy.integrate.quad`` over the sigmas in their own
    dtype (scipy is needed for this sampler only).
    """
    _check_inputs(model, x, sigmas, convention)
    order = check_int("order", order, 1)
    rows = _rows_lms(x, sigmas, convention, order=int(order))
    return _solve(model, x, rows, extra_args=extra_args, callback=callback, disable=disable, options=options, solve_options=solve_options,
                  return_solution=return_solution, check_model=check_model, max_rows_per_call=max_rows_per_call)  # fmt: skip


@_documented
@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None,
                    *, options=None, return_solution=False, check_model=True, max_rows_per_call=None, convention=K_DIFFUSION,
                 **solve_options):  # fmt: skip
    """DPM-Solver++(2M), as ``k_diffusion.sampling.sample_dpmpp_2m`` (a band of 2 rows)."""
    _check_inputs(model, x, sigmas, convention)
    rows = _rows_dpmpp_2m(x, sigmas, convention)
    return _solve(model, x, rows, extra_args=extra_args, callback=callback, disable=disable, options=options, solve_options=solve_options,
                  return_solution=return_solution, check_model=check_model, max_rows_per_call=max_rows_per_call)  # fmt: skip


@_documented
@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None,
                              *, options=None, return_solution=False, check_model=True, max_rows_per_call=None, convention=K_DIFFUSION,
                 **solve_options):  # fmt: skip
    """Ancestral DPM-Solver++(2S), as ``k_diffusion.sampling.sample_dpmpp_2s_ancestral``: two rows per step.

    Noise as :func:`sample_euler_ancestral`.
    """
    _check_inputs(model, x, sigmas, convention)
    _check_noise(eta, s_noise, noise_sampler)
    ns = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    rows = _rows_dpmpp_2s_ancestral(x, sigmas, convention, eta=eta, s_noise=s_noise, noise_sampler=ns)
    return _solve(model, x, rows, extra_args=extra_args, callback=callback, disable=disable, options=options, solve_options=solve_options,
                  return_solution=return_solution, check_model=check_model, max_rows_per_call=max_rows_per_call)  # fmt: skip


def _sde_noise_sampler(noise_sampler: Any, eta: Any, name: str) -> Any:
    if noise_sampler is None and eta:
        raise ValueError(
            f"{name} draws its noise from k-diffusion's default BrownianTreeNoiseSampler, whose draws depend on the whole "
            "interval tree and cannot be pre-drawn per step here; pass a per-step Gaussian sampler, e.g. "
            "noise_sampler=k_diffusion.sampling.default_noise_sampler(x) (or trisolve_diffusion.k_diffusion."
            "default_noise_sampler(x), the same), or eta=0."
        )
    return noise_sampler


@_documented
@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None,
                        solver_type="midpoint", *, options=None, return_solution=False, check_model=True, max_rows_per_call=None,
                        convention=K_DIFFUSION, **solve_options):  # fmt: skip
    """DPM-Solver++(2M) SDE, as ``k_diffusion.sampling.sample_dpmpp_2m_sde`` with a per-step ``noise_sampler``.

    k-diffusion's default (``noise_sampler=None``) is a Brownian tree; here ``None`` with
    ``eta > 0`` raises ``ValueError``: pass e.g. ``default_noise_sampler(x)``.
    """
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    _check_inputs(model, x, sigmas, convention)
    _check_noise(eta, s_noise, noise_sampler)
    ns = _sde_noise_sampler(noise_sampler, eta, "sample_dpmpp_2m_sde")
    rows = _rows_dpmpp_2m_sde(x, sigmas, convention, eta=eta, s_noise=s_noise, noise_sampler=ns, solver_type=solver_type)
    return _solve(model, x, rows, extra_args=extra_args, callback=callback, disable=disable, options=options, solve_options=solve_options,
                  return_solution=return_solution, check_model=check_model, max_rows_per_call=max_rows_per_call)  # fmt: skip


@_documented
@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None,
                        *, options=None, return_solution=False, check_model=True, max_rows_per_call=None, convention=K_DIFFUSION,
                 **solve_options):  # fmt: skip
    """DPM-Solver++(3M) SDE, as ``k_diffusion.sampling.sample_dpmpp_3m_sde`` with a per-step ``noise_sampler`` (a band of 3 rows).

    ``noise_sampler=None`` with ``eta > 0`` raises ``ValueError``, as :func:`sample_dpmpp_2m_sde`.
    """
    _check_inputs(model, x, sigmas, convention)
    _check_noise(eta, s_noise, noise_sampler)
    ns = _sde_noise_sampler(noise_sampler, eta, "sample_dpmpp_3m_sde")
    rows = _rows_dpmpp_3m_sde(x, sigmas, convention, eta=eta, s_noise=s_noise, noise_sampler=ns)
    return _solve(model, x, rows, extra_args=extra_args, callback=callback, disable=disable, options=options, solve_options=solve_options,
                  return_solution=return_solution, check_model=check_model, max_rows_per_call=max_rows_per_call)  # fmt: skip


#: The samplers by k-diffusion's name (without ``sample_``), e.g. ``SAMPLERS["dpmpp_2m"]``.
SAMPLERS: dict[str, Callable[..., Any]] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
}
