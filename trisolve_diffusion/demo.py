"""The main demo: sequential vs parallel sampling on the bundled digits model.

    python -m trisolve_diffusion            # DDIM-50, TAA on the Picard map, batch 8
    python -m trisolve_diffusion --help

Prints a table (steps, parallel rounds, network evaluations, wall time, max difference and
PSNR against the sequential sample) and writes a figure: both sample grids side by side and
the scaled residual of every step (row) in every round.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import trisolve

from .models.digits import load_digits_pipeline
from .sample import sample

__all__ = ["main", "psnr", "run_demo"]

SCHEDULERS = ("ddim", "ddpm", "dpm++")
SOLVERS = ("taa", "anderson", "jacobi")
MAPS = ("picard", "unrolled", "onestep")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of images in ``[0, 1]`` (``inf`` when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _solver(name: str, history: int) -> trisolve.Solver:
    if name == "taa":
        return trisolve.TriangularAnderson(history_size=history)
    if name == "anderson":
        return trisolve.Anderson(history_size=history)
    return trisolve.Jacobi()


def _map(name: str, order: int | None) -> trisolve.UpdateMap:
    if name == "picard":
        return trisolve.Picard(order=order)
    if name == "unrolled":
        return trisolve.Unrolled(order=order)
    return trisolve.OneStep()


def run_demo(
    *,
    steps: int = 50,
    scheduler: str = "ddim",
    solver: str = "taa",
    update_map: str = "picard",
    order: int | None = None,
    window: int | None = None,
    history: int = 4,
    seed: int = 0,
    batch: int = 8,
    out: Path | None = Path("trisolve_demo.png"),
    progress: bool = True,
) -> dict:
    """Run the demo and return its measurements (also printed)."""
    torch.manual_seed(seed)
    pipe = load_digits_pipeline(scheduler)
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc="sequential")
    start = time.perf_counter()
    seq = pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np").images
    t_seq = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc="parallel (steps final)")
    order = None if order is None else min(order, steps)
    start = time.perf_counter()
    par = sample(
        pipe,
        batch_size=batch,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        solver=_solver(solver, history),
        update_map=_map(update_map, order),
        window=window,
    )
    t_par = time.perf_counter() - start
    sol = par.solution
    n = sol.n
    result = {
        "steps": n,
        "rounds": sol.num_rounds,
        "evals_sequential": n * batch,
        "evals_parallel": sol.num_evals * batch,
        "time_sequential_s": t_seq,
        "time_parallel_s": t_par,
        "max_abs_diff": float(np.abs(par.images - seq).max()),
        "psnr_db": psnr(par.images, seq),
        "status": sol.status.name,
    }
    rows = [
        ("", "sequential", "parallel"),
        ("steps / rounds", f"{n}", f"{sol.num_rounds}"),
        ("network evaluations (images)", f"{n * batch}", f"{sol.num_evals * batch}"),
        ("wall time [s]", f"{t_seq:.2f}", f"{t_par:.2f}"),
        ("max |difference| (pixels in [0,1])", "", f"{result['max_abs_diff']:.2e}"),
        ("PSNR vs sequential [dB]", "", f"{result['psnr_db']:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"trisolve demo: bundled digits DDPM, {scheduler}-{steps}, batch {batch}, solver {solver} on the {update_map} map")
    for r in rows:
        print(f"  {r[0]:<{width}}  {r[1]:>12}  {r[2]:>12}")
    print(f"  status: {sol.status.name} ({sol.status.message})")
    if out is not None:
        _figure(seq, par.images, sol, Path(out), title=f"{scheduler}-{steps}: {sol.num_rounds} parallel rounds")
        print(f"  figure written to {Path(out).resolve()}")
    return result


def _grid(images: np.ndarray) -> np.ndarray:
    b, h, w, _ = images.shape
    cols = int(np.ceil(np.sqrt(b)))
    rows = int(np.ceil(b / cols))
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1))
    for k in range(b):
        r, c = divmod(k, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = images[k, ..., 0]
    return grid


def _figure(seq: np.ndarray, par: np.ndarray, sol: trisolve.Solution, path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.2, 1.6]})
    for ax, img, name in ((axes[0], seq, "sequential"), (axes[1], par, f"parallel ({sol.num_rounds} rounds)")):
        ax.imshow(_grid(img), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    # the exactness made visible: |parallel - sequential| on its own scale (pixels in [0, 1])
    diff = np.abs(par.astype(np.float64) - seq.astype(np.float64))
    grid = _grid(diff)
    grid[_grid(np.zeros_like(diff)) == 1.0] = np.nan  # grid lines (ones in _grid): drawn white
    top = max(float(diff.max()), 1e-12)
    im_d = axes[2].imshow(grid, cmap=plt.get_cmap("viridis").with_extremes(bad="white"), vmin=0, vmax=top)
    axes[2].set_title(f"|parallel - sequential|, max {diff.max():.1e}", pad=14)
    axes[2].axis("off")
    cb = fig.colorbar(im_d, ax=axes[2], fraction=0.046, pad=0.04)
    cb.set_label("pixels in [0, 1] (one 8-bit level = 3.9e-3)")
    cb.formatter.set_powerlimits((0, 0))
    axes = [axes[0], axes[1], axes[3]]
    res = sol.residuals[:, 1:]  # rows 1..n
    finite = res[np.isfinite(res) & (res > 0)]
    lo = max(finite.min(), 1e-3) if finite.size else 1e-3
    hi = max(finite.max(), lo * 10) if finite.size else 1.0
    cmap = plt.get_cmap("magma").with_extremes(bad="white")  # rows outside the window: final
    shown = np.where(np.isnan(res), np.nan, np.maximum(res, lo))
    extent = (0.5, res.shape[1] + 0.5, res.shape[0] + 0.5, 0.5)
    im = axes[2].imshow(shown, aspect="auto", cmap=cmap, norm=LogNorm(vmin=lo, vmax=hi), interpolation="nearest", extent=extent)
    axes[2].set_xlabel("step (row)")
    axes[2].set_ylabel("round")
    axes[2].set_title("scaled residual per step and round (white: final)")
    fig.colorbar(im, ax=axes[2], label="residual / tolerance (converged <= 1)")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trisolve_diffusion", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    ap.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    ap.add_argument("--solver", choices=SOLVERS, default="taa")
    ap.add_argument("--map", dest="update_map", choices=MAPS, default="picard", help="update map (default picard)")
    ap.add_argument("--order", type=int, default=None, help="order k of the map (default: the whole window)")
    ap.add_argument("--window", type=int, default=None, help="sliding window size (default: all steps)")
    ap.add_argument("--history", type=int, default=4, help="Anderson history size (difference pairs)")
    ap.add_argument("--batch", type=int, default=8, help="images per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("trisolve_demo.png"), help="figure path (PNG)")
    ap.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        ap.error("--steps and --batch must be >= 1")
    run_demo(
        steps=args.steps,
        scheduler=args.scheduler,
        solver=args.solver,
        update_map=args.update_map,
        order=args.order,
        window=args.window,
        history=args.history,
        seed=args.seed,
        batch=args.batch,
        out=args.out,
        progress=not args.no_progress,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
