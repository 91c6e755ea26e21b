"""The bundled flow model's weights against an earlier set: sample quality and what the parallel sampler does with each.

    python benchmarks/flow_weights.py                  # the bundled weights against those at git revision 65b90eb (4,000 steps, H200)
    python benchmarks/flow_weights.py --against REV    # ... against the weights at another revision
    python benchmarks/flow_weights.py --quick          # the bundled weights alone, smoke size (loss on 256 images, 20 samples)

Per weight set (machine-independent up to round-off):

- the flow-matching loss on fixed draws: every training image, 4 draws of ``(sigma, z)`` each,
  from a generator seeded with 123;
- 500 samples (28 Euler steps, seed 0) scored by a logistic-regression digit classifier fitted on
  the training images: the share classified with probability > 0.9 and the class histogram; and
  the median distance of a sample to its nearest training image;
- ``trisolve_diffusion.sample`` at its defaults (TAA with one difference pair, the output-aware
  finish) at 20, 28 and 50 steps, seeds 0-9, batch 1 and 4: rounds (median [min, max]) and the
  worst PSNR from the sequential sample.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_range, write  # noqa: E402

import trisolve  # noqa: E402
import trisolve_diffusion as td  # noqa: E402
from trisolve_diffusion.demo import psnr  # noqa: E402
from trisolve_diffusion.models import digits_flow  # noqa: E402
from trisolve_diffusion.models.digits import digits_dataset  # noqa: E402

WEIGHTS = "trisolve_diffusion/weights/digits_flow/diffusion_pytorch_model.safetensors"


def pipeline(path: Path):
    from safetensors.torch import load_file

    unet = digits_flow.build_unet()
    unet.load_state_dict(load_file(str(path)))
    scheduler = FlowMatchEulerDiscreteScheduler(**digits_flow.SCHEDULER_CONFIG)
    pipe = digits_flow.DigitsFlowPipeline(unet=unet.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def quality(pipe, samples: int, *, images: int | None = None, draws: int = 4) -> dict:
    """Loss on ``draws`` fixed draws of the first ``images`` training images (all by default), and ``samples`` scored samples."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    data = digits_dataset()  # (1797, 1, 16, 16) in [-1, 1]
    scored = data[:images]
    gen = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            s = torch.rand(scored.shape[0], generator=gen)
            z = torch.randn(scored.shape, generator=gen)
            sv = s.view(-1, 1, 1, 1)
            total += F.mse_loss(pipe.unet((1 - sv) * scored + sv * z, s * 1000).sample, z - scored, reduction="sum").item()
        x = pipe(batch_size=samples, num_inference_steps=28, generator=torch.manual_seed(0), output_type="np").images
    x = np.asarray(x).reshape(samples, -1) * 2 - 1
    clf = LogisticRegression(max_iter=2000).fit(data.reshape(len(data), -1).numpy(), load_digits().target)
    p = clf.predict_proba(x)
    nn = torch.cdist(torch.from_numpy(x).float(), data.reshape(len(data), -1)).min(dim=1).values
    return dict(loss=total / (draws * scored.numel()), confident=float(np.mean(p.max(1) > 0.9)),
                classes=np.bincount(p.argmax(1), minlength=10).tolist(), nn_distance=float(nn.median()))  # fmt: skip


def sampler(pipe, steps_list, seeds, batches) -> list[dict]:
    rows = []
    for steps in steps_list:
        for batch in batches:
            rounds, worst = [], []
            for seed in seeds:
                ref = pipe(batch_size=batch, num_inference_steps=steps, generator=torch.manual_seed(seed), output_type="np").images
                out = td.sample(pipe, batch_size=batch, num_inference_steps=steps, generator=torch.manual_seed(seed), output_type="np", progress=False,
                                window=trisolve.FullWindow())  # the full window: rounds independent of timings  # fmt: skip
                rounds.append(out.solution.num_rounds)
                worst.append(min(psnr(out.images[i], ref[i]) for i in range(batch)))
            rows.append(dict(steps=steps, batch=batch, rounds=rounds, worst_psnr=min(worst), median_rounds=statistics.median(rounds)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--against", default="65b90eb", help="git revision whose bundled flow weights to compare with")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(__file__).resolve().parent.parent
    sets = {"bundled": root / WEIGHTS}
    tmp = tempfile.TemporaryDirectory()
    if not args.quick:
        old = Path(tmp.name) / "old.safetensors"
        old.write_bytes(subprocess.run(["git", "show", f"{args.against}:{WEIGHTS}"], cwd=root, check=True, capture_output=True).stdout)
        sets[f"at {args.against}"] = old
    steps_list, seeds, batches, samples = ((20,), [0], [1], 20) if args.quick else ((20, 28, 50), list(range(10)), [1, 4], 500)
    # --quick: the loss on one draw of 256 training images (the full run: 4 draws of all 1,797)
    loss_on = dict(images=256, draws=1) if args.quick else {}
    results = {}
    for name, path in sets.items():
        pipe = pipeline(path)
        results[name] = dict(quality=quality(pipe, samples, **loss_on), sampler=sampler(pipe, steps_list, seeds, batches))
        print(name, results[name], flush=True)
    md = [
        "| weights | loss on fixed draws | samples classified with p > 0.9 | classes (0-9) | median nearest-image distance |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        q = r["quality"]
        md.append(f"| {name} | {q['loss']:.4f} | {q['confident']:.0%} | {' '.join(map(str, q['classes']))} | {q['nn_distance']:.3f} |")
    md += ["", "| weights | steps | batch | default's rounds | worst PSNR [dB] |", "|---|---|---|---|---|"]
    for name, r in results.items():
        for s in r["sampler"]:
            md.append(f"| {name} | {s['steps']} | {s['batch']} | {median_range(s['rounds'])} | {s['worst_psnr']:.1f} |")
    md += ["", f"{samples} samples at 28 steps for the quality columns; seeds {seeds[0]}-{seeds[-1]} for the sampler, `trisolve_diffusion.sample` defaults."]
    write("flow_weights" + ("_quick" if args.quick else ""), {"results": results}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
