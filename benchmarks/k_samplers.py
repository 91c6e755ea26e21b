"""The parallel k-diffusion samplers on the bundled digits DDPM, against k-diffusion's own loops.

    python benchmarks/k_samplers.py            # every sampler, 20 Karras steps, seeds 0-4, batch 1; writes results/k_samplers.{json,md}
    python benchmarks/k_samplers.py --quick    # Euler and DPM++(2M), 10 steps, one seed (the test suite runs this)

The digits eps-prediction UNet is wrapped as a k-diffusion denoiser the way k-diffusion's
``DiscreteEpsDDPMDenoiser`` does (``D = x - sigma eps(x / sqrt(sigma^2 + 1), t(sigma))``, ``t(sigma)``
interpolated in log sigma over the model's 1000 levels). Each sampler runs once through
``k_diffusion.sampling`` (k-diffusion 0.1.1.post1, loaded as in ``tests/k_diffusion_ref.py``) and
once through ``trisolve_diffusion.k_diffusion`` at the default options, from the same noise and
generator state: rounds, rows (network evaluations of the sequential loop), evaluations, and
PSNR of the parallel sample against k-diffusion's (images mapped from [-1, 1] to [0, 1]).
Rounds, evaluations and PSNR do not depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import median_range, write  # noqa: E402
from k_diffusion_ref import load_sampling  # noqa: E402

from trisolve_diffusion import k_diffusion as K  # noqa: E402
from trisolve_diffusion.demo import psnr  # noqa: E402
from trisolve_diffusion.models import load_digits_unet  # noqa: E402
from trisolve_diffusion.models.digits import SCHEDULER_CONFIG  # noqa: E402

SAMPLERS = {  # name -> keyword arguments (SDE samplers: per-step Gaussian noise)
    "euler": {},
    "euler (s_churn=1)": {"s_churn": 1.0},
    "euler_ancestral": {},
    "heun": {},
    "dpm_2": {},
    "dpm_2_ancestral": {},
    "lms": {},
    "dpmpp_2m": {},
    "dpmpp_2s_ancestral": {},
    "dpmpp_2m_sde": {"noise": True},
    "dpmpp_3m_sde": {"noise": True},
}


class DigitsDenoiser(torch.nn.Module):
    """The digits DDPM as ``model(x, sigma) -> denoised``, sigma per sample (k-diffusion's ``DiscreteEpsDDPMDenoiser``)."""

    def __init__(self):
        super().__init__()
        from diffusers import DDPMScheduler

        self.unet = load_digits_unet()
        ab = DDPMScheduler(**SCHEDULER_CONFIG).alphas_cumprod.double()
        self.register_buffer("log_sigmas", ((1 - ab) / ab).sqrt().log())
        self.sigma_min, self.sigma_max = float(self.log_sigmas[0].exp()), float(self.log_sigmas[-1].exp())

    def t_of(self, sigma):
        """Continuous timestep of ``sigma`` by linear interpolation in log sigma (k-diffusion's ``sigma_to_t``)."""
        ls = sigma.double().log()
        idx = torch.searchsorted(self.log_sigmas, ls).clamp(1, len(self.log_sigmas) - 1)
        lo, hi = self.log_sigmas[idx - 1], self.log_sigmas[idx]
        w = ((ls - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + w).float()

    def forward(self, x, sigma):
        s = sigma[:, None, None, None]
        eps = self.unet(x / (s**2 + 1) ** 0.5, self.t_of(sigma)).sample
        return x - s * eps


def run(names, steps, seeds, batch=1) -> list[dict]:
    ref = load_sampling()
    model = DigitsDenoiser()
    sigmas = K.get_sigmas_karras(steps, max(model.sigma_min, 0.02), min(model.sigma_max, 80.0))
    records = []
    for name in names:
        kw = dict(SAMPLERS[name])
        kd_name = name.split(" ")[0]
        for seed in seeds:
            x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
            if kw.pop("noise", False):
                kw["noise_sampler"] = K.default_noise_sampler(x)
            torch.manual_seed(1000 + seed)
            with torch.no_grad():
                expected = getattr(ref, f"sample_{kd_name}")(model, x, sigmas, disable=True, **kw)
            torch.manual_seed(1000 + seed)
            got, sol = getattr(K, f"sample_{kd_name}")(model, x, sigmas, disable=True, return_solution=True, **kw)
            to01 = lambda t: ((t.clamp(-1, 1) + 1) / 2).numpy()
            records.append(dict(sampler=name, seed=seed, steps=steps, rows=sol.n, rounds=sol.num_rounds, evals=sol.num_evals, status=sol.status.name,
                                psnr_db=psnr(to01(got), to01(expected))))  # fmt: skip
    return records


def table(records) -> str:
    lines = ["| sampler | steps | rows | rounds | evaluations / rows | PSNR vs k-diffusion (dB), worst |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["sampler"] for r in records):
        rs = [r for r in records if r["sampler"] == name]
        worst = min(r["psnr_db"] for r in rs)
        lines.append(f"| {name} | {rs[0]['steps']} | {rs[0]['rows']} | {median_range([r['rounds'] for r in rs])} | "
                     f"{statistics.median(r['evals'] / r['rows'] for r in rs):.2f} | {'inf' if np.isinf(worst) else f'{worst:.1f}'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        names, steps, seeds, name = ["euler", "dpmpp_2m"], 10, [0], "k_samplers_quick"
    else:
        names, steps, seeds, name = list(SAMPLERS), 20, range(5), "k_samplers"
    records = run(names, steps, seeds)
    md = (f"Parallel k-diffusion samplers on the bundled digits DDPM (Karras sigmas, {steps} steps, seeds {list(seeds)}, batch 1, "
          "default SolveOptions); rounds median [min, max].\n\n" + table(records))  # fmt: skip
    write(name, {"records": records}, md)


if __name__ == "__main__":
    main()
