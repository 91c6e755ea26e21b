"""The main demo: sequential vs parallel sampling on the bundled digits model.

    python -m trisolve_diffusion            # DDIM-50, TAA on the Picard map, batch 8
    python -m trisolve_diffusion --help

Prints a table (steps, parallel rounds, network evaluations, wall time, max difference and
PSNR against the sequential sample) and writes a figure: both sample grids side by side and
the scaled residual of every step (row) in every round.

Wall time depends on the machine and on its load, so the demo times both samplers after a
warm-up, ``--repeats`` times each, interleaved (sequential, parallel, sequential, ...), and
reports the medians with the machine (CPU or GPU, cores, torch threads, torch version) and
the load average before and after; the sentence under the table is computed from those
medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import trisolve

from .models.digits import load_digits_pipeline
from .sample import sample
from .sampler import default_solver

__all__ = ["main", "psnr", "run_demo", "time_interleaved", "machine_description", "timing_verdict", "verdict_of", "window_description"]

SCHEDULERS = ("ddim", "ddpm", "dpm++")
SOLVERS = ("default", "taa", "anderson", "jacobi")  # "default": the samplers' default_solver()
MAPS = ("picard", "unrolled", "onestep")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of images in ``[0, 1]`` (``inf`` when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def time_interleaved(runs: dict[str, Callable[[], object]], repeats: int, *, warmup: dict[str, Callable[[], object]] | None = None) -> dict:
    """Wall times of several callables, interleaved, after a warm-up.

    Calls every ``warmup`` callable once (untimed; default: ``runs``), then ``repeats`` rounds
    of every ``runs`` callable in turn, so that a change of the machine's load hits each alike.

    Returns
    -------
    dict
        ``times`` (name -> list of seconds), ``median`` (name -> seconds), ``load_before`` and
        ``load_after`` (1-minute load average, ``nan`` where the OS has none), ``last``
        (name -> the last call's return value).
    """
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}.")
    for fn in (runs if warmup is None else warmup).values():
        fn()
    load_before = _load()
    times: dict[str, list[float]] = {name: [] for name in runs}
    last: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"times": times, "median": median, "load_before": load_before, "load_after": _load(), "last": last}


def _load() -> float:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average on this OS
        return float("nan")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description(device: torch.device | str = "cpu") -> str:
    """One line: the device (CPU model or GPU name), cores, torch threads and torch version."""
    device = torch.device(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
    return f"{where}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"


def timing_verdict(
    t_seq: float, t_par: float, *, evals_ratio: float | None = None, cores: int | None = None, load: float = float("nan"), spread: bool = False
) -> str:
    """A sentence that says which sampler was faster *in this run*, computed from its medians.

    ``evals_ratio``: the parallel solve's network evaluations over the loop's. ``spread``: the
    sequential and parallel runs' ranges overlapped (the difference is within the run-to-run
    noise). ``cores`` and ``load`` (the 1-minute load average) describe the machine.
    """
    if not (t_seq > 0 and t_par > 0):
        raise ValueError(f"times must be > 0, got sequential {t_seq!r} and parallel {t_par!r}.")
    ratio = t_seq / t_par
    extra = "the extra network evaluations" if evals_ratio is None else f"{evals_ratio:.1f}x the network evaluations"
    where = ""
    if cores and load == load:  # a load average is known (nan is not equal to itself)
        where = f" Measured at load average {load:.1f} on {cores} cores ({'a busy' if load >= 0.75 * cores else 'a quiet'} machine)."
    if spread:
        return (
            f"no clear winner here: parallel ran at {ratio:.2f}x the sequential speed, within the spread of the runs. "
            f"Wall time on a CPU follows its load; the rounds and evaluations above do not.{where}"
        )
    if ratio >= 1.0:
        return (
            f"parallel was {ratio:.2f}x faster here: fewer dependent steps (rounds) paid for {extra} on this machine "
            "at this load. On a quiet CPU the extra evaluations can make it slower; a GPU, where a batch costs about "
            f"as much as one step, is where it pays reliably.{where}"
        )
    return (
        f"parallel was {ratio:.2f}x (slower) here: on a CPU a round costs about as much as the steps it evaluates, so "
        f"{extra} were not repaid. Parallel sampling pays where a batch of steps costs little more than one step "
        f"(a GPU: see the README's GPU table), not on a CPU.{where}"
    )


def verdict_of(timing: dict, *, evals_ratio: float | None = None) -> str:
    """:func:`timing_verdict` of a :func:`time_interleaved` result with ``"sequential"`` and ``"parallel"`` runs.

    The medians, whether the two ranges of run times overlap (then there is no clear winner),
    the larger of the load averages before and after, and this machine's core count.
    """
    ts, tp = timing["times"]["sequential"], timing["times"]["parallel"]
    overlap = len(ts) > 1 and len(tp) > 1 and max(min(ts), min(tp)) <= min(max(ts), max(tp))
    load = max(timing["load_before"], timing["load_after"])
    t_seq, t_par = timing["median"]["sequential"], timing["median"]["parallel"]
    return timing_verdict(t_seq, t_par, evals_ratio=evals_ratio, cores=os.cpu_count(), load=load, spread=overlap)


def window_description(sol: trisolve.Solution, chosen: str = "the default") -> str:
    """The window a solve used, from its rounds: ``"all n steps (full window, <chosen>)"``, ``"sliding, w steps (<chosen>)"``
    or ``"one step per round (forward substitution, <chosen>)"``."""
    n = sol.n
    if not sol.windows or sol.windows[0] == (1, n + 1):
        return f"all {n} steps (full window, {chosen})"
    w = max(hi - lo for lo, hi in sol.windows)
    return f"one step per round (forward substitution, {chosen})" if w == 1 else f"sliding, {w} steps ({chosen})"


def _solver(name: str, history: int | None) -> trisolve.Solver | None:
    """The solver the demo names (``None``: the samplers' default, :func:`~trisolve_diffusion.default_solver`)."""
    if name == "default":
        return None
    history = default_solver()[0].history_size if history is None else history
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
    solver: str = "default",
    update_map: str | None = None,
    order: int | None = None,
    window: int | None = None,
    history: int | None = None,
    seed: int = 0,
    batch: int = 8,
    out: Path | None = Path("trisolve_demo.png"),
    progress: bool = True,
    repeats: int = 3,
) -> dict:
    """Run the demo and return its measurements (also printed).

    Wall times are medians of ``repeats`` interleaved runs of each sampler after a short
    warm-up (:func:`time_interleaved`); the result also holds every run's time, the load
    average before and after, the machine and the sentence printed under the table
    (:func:`timing_verdict`).
    """
    torch.manual_seed(seed)
    pipe = load_digits_pipeline(scheduler)
    order = None if order is None else min(order, steps)
    # solver "default" and no map: the samplers' default (default_solver: TAA with the scheduler's history, Picard; WeightedPicard for noisy loops)
    parallel_kw = dict(solver=_solver(solver, history), window=window)
    if update_map is not None or order is not None:
        parallel_kw["update_map"] = _map(update_map or "picard", order)

    def run_sequential(num_steps: int = steps):
        pipe.set_progress_bar_config(disable=not progress, leave=False, desc="sequential")
        return pipe(batch_size=batch, num_inference_steps=num_steps, generator=torch.Generator().manual_seed(seed), output_type="np").images

    def run_parallel(num_steps: int = steps):
        pipe.set_progress_bar_config(disable=not progress, leave=False, desc="parallel (steps final)")
        return sample(pipe, batch_size=batch, num_inference_steps=num_steps, generator=torch.Generator().manual_seed(seed),
                      output_type="np", **parallel_kw)  # fmt: skip

    shown = "the default solver (TAA, Picard map)" if solver == "default" and "update_map" not in parallel_kw else (
        f"solver {solver} on the {update_map or 'picard'} map")  # fmt: skip
    print(f"trisolve demo: bundled digits DDPM, {scheduler}-{steps}, batch {batch}, {shown}")
    print(f"  timing: a warm-up, then {repeats} runs of each sampler, interleaved ...", flush=True)
    warm = min(steps, 4)
    # the automatic window measures the network once per model, shape and step count (cached): the parallel
    # warm-up runs the full steps so that this one-time measurement is not inside a timed run
    warm_par = steps if window is None else warm
    timing = time_interleaved({"sequential": run_sequential, "parallel": run_parallel}, repeats,
                              warmup={"sequential": lambda: run_sequential(warm), "parallel": lambda: run_parallel(warm_par)})  # fmt: skip
    seq, par = timing["last"]["sequential"], timing["last"]["parallel"]
    t_seq, t_par = timing["median"]["sequential"], timing["median"]["parallel"]
    sol = par.solution
    n = sol.n
    window_text = window_description(sol, "the default, chosen from measured times" if window is None else "--window")
    ts, tp = timing["times"]["sequential"], timing["times"]["parallel"]
    verdict = verdict_of(timing, evals_ratio=sol.num_evals / n)
    machine = machine_description(pipe.device)
    result = {
        "steps": n,
        "rounds": sol.num_rounds,
        "evals_sequential": n * batch,
        "evals_parallel": sol.num_evals * batch,
        "time_sequential_s": t_seq,
        "time_parallel_s": t_par,
        "times_sequential_s": ts,
        "times_parallel_s": tp,
        "load_before": timing["load_before"],
        "load_after": timing["load_after"],
        "machine": machine,
        "window": window_text,
        "verdict": verdict,
        "max_abs_diff": float(np.abs(par.images - seq).max()),
        "psnr_db": psnr(par.images, seq),
        "status": sol.status.name,
    }
    rows = [
        ("", "sequential", "parallel"),
        ("steps / rounds", f"{n}", f"{sol.num_rounds}"),
        ("network evaluations (images)", f"{n * batch}", f"{sol.num_evals * batch}"),
        (f"wall time [s], median of {repeats}", f"{t_seq:.2f}", f"{t_par:.2f}"),
        ("  runs: min - max [s]", f"{min(ts):.2f} - {max(ts):.2f}", f"{min(tp):.2f} - {max(tp):.2f}"),
        ("max |difference| (pixels in [0,1])", "", f"{result['max_abs_diff']:.2e}"),
        ("PSNR vs sequential [dB]", "", f"{result['psnr_db']:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"  {r[0]:<{width}}  {r[1]:>12}  {r[2]:>12}")
    print(f"  status: {sol.status.name} ({sol.status.message})")
    print(f"  window: {window_text}")
    lb, la = timing["load_before"], timing["load_after"]
    print(f"  machine: {machine}; load average {lb:.1f} before, {la:.1f} after")
    print(f"  {verdict}")
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
    """``python -m trisolve_diffusion [options]``: parse the command line and :func:`run_demo` (``--help`` lists the options)."""
    ap = argparse.ArgumentParser(prog="python -m trisolve_diffusion", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    ap.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    ap.add_argument("--solver", choices=SOLVERS, default="default", help="default: trisolve_diffusion.default_solver() (TAA on the Picard map)")
    ap.add_argument("--map", dest="update_map", choices=MAPS, default=None, help="update map (default: the solver's, picard)")
    ap.add_argument("--order", type=int, default=None, help="order k of the map (default: the whole window)")
    ap.add_argument("--window", type=int, default=None, help="sliding window size (default: chosen from the measured network and round times)")
    ap.add_argument("--history", type=int, default=None, help="Anderson history size of --solver taa/anderson (default: the default solver's)")
    ap.add_argument("--batch", type=int, default=8, help="images per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each sampler, interleaved, after a warm-up (default 3)")
    ap.add_argument("--out", type=Path, default=Path("trisolve_demo.png"), help="figure path (PNG)")
    ap.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.repeats < 1:
        ap.error("--steps, --batch and --repeats must be >= 1")
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
        repeats=args.repeats,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
