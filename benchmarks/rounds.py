"""Rounds of the default parallel sampler for every scheduler, against the issue's targets.

    python benchmarks/rounds.py                    # seeds 0-9, every setting; writes results/rounds.{json,md}
    python benchmarks/rounds.py --seeds 20-39      # other seeds (results/rounds_seeds20-39.*)
    python benchmarks/rounds.py --quick            # one seed of DDIM-25, Euler-25 and FlowEuler-20 (the test suite runs this)
    python benchmarks/rounds.py --init             # initialisations: cold, ParaSolver's coarse grid, a neighbouring seed's trajectory
    python benchmarks/rounds.py --history 2        # the defaults' sweeps: TAA with 2 pairs for every setting (results/rounds_history2.*)
    python benchmarks/rounds.py --rtol 0 --settings DPM++2M-20 UniPC-20 PNDM-50   # the step test against atol alone
    python benchmarks/rounds.py --order 8 --settings DPM++2M-20   # Picard(order=8) instead of the full order
    python benchmarks/rounds.py --trace --seeds 0-9   # where the last rounds go: the finish replayed round by round (results/rounds_trace_seeds0-9.*)
    python benchmarks/rounds.py --lockstep --settings "DDIM-50, batch 4"   # a batch in lockstep (per_sample=False): the old rounds
    python benchmarks/rounds.py --window 8 --settings "DDIM-50, batch 4"   # a sliding window of 8 rows instead of the full one
    python benchmarks/rounds.py --window 9 --fill copy --settings DDIM-50   # steps entering the window as copies (the default: 'linear')
    python benchmarks/rounds.py --gain-weight 0 --settings DDPM-100 EulerA-25   # WeightedPicard(d ** W) as the map (0: plain Picard)
    python benchmarks/rounds.py --freeze-fraction inf   # the freeze before issue 26: every passing row final at once
                                                        # (results/*_passes1_fraction0.*: the same rule, made with the flags of the settle test)

Model: the bundled digits DDPM (``load_digits_pipeline``) with the scheduler of each setting,
and the bundled digits flow model (``load_digits_flow_pipeline``) for flow-matching Euler.
DDIM, DDPM and DPM-Solver++(2M) use the digits pipelines' own schedulers (SDE-DPM-Solver++(2M): the
DPM-Solver++ one with ``algorithm_type="sde-dpmsolver++"``, no target in issue 26); the others are built
from the digits scheduler config with Stable Diffusion's spacing (``timestep_spacing="leading"``,
``steps_offset=1``; PNDM with ``skip_prk_steps``), as SD users run them.

Reference: the sequential loop a Stable Diffusion pipeline runs on the same network (initial noise
times ``init_noise_sigma``, ``scale_model_input``, ``step`` with the generator); for the flow
model ``pipe(...)`` itself. Parallel: :func:`trisolve_diffusion.sample_latents` with the options
``sample(pipe, ...)`` uses on a pixel-space pipeline (default ``SolveOptions``, ``final_row_atol``
resolved for pixel space), and ``sample(pipe, ...)`` for the flow model; the window is the full
one (``trisolve.FullWindow()``, :func:`run`'s default) rather than the timed automatic choice, so that
the rounds do not depend on the machine's load. Per run: rounds, network
evaluations per step, status and the worst PSNR of the batch from the sequential images (pixels
in [0, 1]). Rounds, evaluations and PSNR do not depend on the machine. Batch rows also give the
rounds each sample took (per-sample rounds, the default: ``Solution.sample_rounds``) and the
``(step, sample)`` pairs the network evaluated per image and step (``stats["sample_evals"]``; in
lockstep every sample of every evaluated row). ``--lockstep`` runs the batch in lockstep.

``--init`` (DDIM-50 and FlowEuler-28, deterministic loops, batch 1, seeds 0-9): the same solve
started from (a) the copy-forward default, (b) ParaSolver's coarse initialisation -- ``K``
sequential steps of the same scheduler on a ``K``-step grid from the same noise, interpolated
linearly in the schedule's time (timestep, or flow sigma) onto the fine rows -- with its ``K``
sequential network calls counted as ``K`` extra dependent steps and ``K`` evaluations, and (c) a
warm start from the neighbouring seed's converged trajectory (seed + 1, row 0 replaced by this
seed's noise: free where that sample was made anyway). Reported: rounds, dependent steps
(rounds + K), evaluations per step, worst PSNR.

``--trace`` (batch-1 settings): each solve runs with the finish's tests computed every round but never
met (``final_row_atol`` tiny) until every step meets the tolerance; per round it records the PSNR
of the output the solve would return if it stopped there, and the finish's inputs (each window
row's correction and the final row's, per round, as the driver passes them to
``trisolve.driver._pending_error``). The finish is then replayed on those inputs with the driver's
own estimate for several values of ``trisolve.driver.PENDING_RATE_FLOOR``: the round it would stop
at and that round's PSNR (the replay at the default floor stops where the default solve, also run, stops). ``first >= 45 dB``: the first round from which every later output is
>= 45 dB from the sequential one (what a finish that knew the answer could do). The trace also replays other
finishes at the default floor (``TRACE_VARIANTS``): the estimate times the share of the final row's
correction that the solver's step applied, the final row's rate over three rounds, and looser
``final_row_atol`` values.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_range, write  # noqa: E402

import trisolve  # noqa: E402
import trisolve_diffusion as td  # noqa: E402
from trisolve_diffusion.demo import psnr  # noqa: E402
from trisolve_diffusion.network import unet_denoiser  # noqa: E402
from trisolve_diffusion.sampler import PIXEL_FINAL_ATOL  # noqa: E402

#: setting -> (kind, steps, batch, issue 26's target for the median rounds)
SETTINGS = {
    "DDIM-25": ("ddim", 25, 1, 6),
    "DDIM-50": ("ddim", 50, 1, 6),
    "DDIM-100": ("ddim", 100, 1, 7),
    "DDPM-100": ("ddpm", 100, 1, 13),
    "DPM++2M-20": ("dpm++", 20, 1, 6),
    "UniPC-20": ("UniPCMultistepScheduler", 20, 1, 6),
    "PNDM-50": ("PNDMScheduler", 50, 1, 7),
    "Euler-25": ("EulerDiscreteScheduler", 25, 1, 7),
    "Euler-50": ("EulerDiscreteScheduler", 50, 1, 8),
    "EulerA-25": ("EulerAncestralDiscreteScheduler", 25, 1, 10),
    "LMS-25": ("LMSDiscreteScheduler", 25, 1, 8),
    "Heun-25": ("HeunDiscreteScheduler", 25, 1, 10),
    "FlowEuler-28": ("flow", 28, 1, 6),
    "SDE-DPM++2M-20": ("sde-dpm++", 20, 1, None),
    "DDIM-50, batch 4": ("ddim", 50, 4, 8),
    "FlowEuler-28, batch 4": ("flow", 28, 4, None),
}
QUICK = {"DDIM-25": ("ddim", 25, 1, 6), "Euler-25": ("EulerDiscreteScheduler", 25, 1, 7), "FlowEuler-20": ("flow", 20, 1, None)}
SD_SPACING = {"timestep_spacing": "leading", "steps_offset": 1}
OVERRIDES = {"PNDMScheduler": {"skip_prk_steps": True}}


def make_scheduler(kind: str, steps: int):
    import diffusers

    from trisolve_diffusion.models import load_digits_pipeline
    from trisolve_diffusion.models.digits import SCHEDULER_CONFIG

    if kind in ("ddim", "ddpm", "dpm++"):
        sched = load_digits_pipeline(kind).scheduler
    elif kind == "sde-dpm++":  # the digits DPM-Solver++ scheduler with its SDE variant: noise injected at every step
        sched = diffusers.DPMSolverMultistepScheduler.from_config(load_digits_pipeline("dpm++").scheduler.config, algorithm_type="sde-dpmsolver++")
    else:
        sched = getattr(diffusers, kind)(**{**SCHEDULER_CONFIG, **SD_SPACING, **OVERRIDES.get(kind, {})})
    sched.set_timesteps(steps)
    return sched


def images(latents: torch.Tensor) -> np.ndarray:
    return (latents.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def sequential(unet, sched, seed: int, batch: int) -> torch.Tensor:
    """The Stable Diffusion pipeline's loop on the unconditional digits network."""
    from diffusers.utils.torch_utils import randn_tensor

    gen = torch.Generator().manual_seed(seed)
    x = randn_tensor((batch, 1, 16, 16), generator=gen, dtype=unet.dtype) * sched.init_noise_sigma
    kw = {"generator": gen} if "generator" in inspect.signature(sched.step).parameters else {}
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x, **kw).prev_sample
    return x


def parallel(unet, sched, seed: int, batch: int, options: dict):
    from diffusers.utils.torch_utils import randn_tensor

    gen = torch.Generator().manual_seed(seed)
    x = randn_tensor((batch, 1, 16, 16), generator=gen, dtype=unet.dtype) * sched.init_noise_sigma
    # the pixel-space finish sample() takes for these pipelines (final_row_atol="auto" there)
    return td.sample_latents(unet_denoiser(unet), sched, x, generator=gen, **{"final_row_atol": PIXEL_FINAL_ATOL, **options})


def run(settings: dict, seeds: list[int], options: dict) -> list[dict]:
    """One record per setting and seed: the sequential loop, then the parallel sampler with ``options``.

    ``options``: :func:`trisolve_diffusion.sample_latents` keywords (:func:`trisolve_diffusion.sample`'s for the flow
    model). The window is the full one (``trisolve.FullWindow()``) unless ``options`` names another: a rounds table must
    not depend on the machine's load, and the samplers' default window (``"auto"``) is chosen from timings: DDIM-50, seed
    0, through this function on the 2-core CPU under a load average of 2.5, took 7 rounds with the full window and 50
    with ``"auto"``, which chose forward substitution there. ``window="auto"`` measures the automatic choice itself.
    """
    from trisolve_diffusion.models import load_digits_flow_pipeline, load_digits_unet

    options = {"window": trisolve.FullWindow(), **options}
    unet, flow = load_digits_unet(), None
    records = []
    for setting, (kind, steps, batch, target) in settings.items():
        for seed in seeds:
            if kind == "flow":
                if flow is None:
                    flow = load_digits_flow_pipeline()
                    flow.set_progress_bar_config(disable=True)
                ref = flow(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np").images
                flow_options = {k: v for k, v in options.items() if k != "gain_weight"}  # --gain-weight: not for the flow loop
                out = td.sample(flow, batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                                output_type="np", **flow_options)  # fmt: skip
                got, sol = out.images, out.solution
            else:
                sched = make_scheduler(kind, steps)
                ref = images(sequential(unet, sched, seed, batch))
                sched = make_scheduler(kind, steps)
                final, sol = parallel(unet, sched, seed, batch, _with_gains(options, sched))
                got = images(final)
            pairs = sol.stats.get("sample_evals", sol.num_evals * batch)  # (row, sample) pairs the network evaluated
            sample_rounds = [sol.num_rounds] * batch if sol.sample_rounds is None else sol.sample_rounds.tolist()
            records.append(
                dict(setting=setting, steps=steps, batch=batch, target=target, seed=seed, rounds=sol.num_rounds, status=sol.status.name,
                     evals_per_step=sol.num_evals / steps, sample_evals_per_step=pairs / (batch * steps), sample_rounds=sample_rounds,
                     psnr_db=min(psnr(got[i], ref[i]) for i in range(batch)))
            )  # fmt: skip
            r = records[-1]
            print(f"{setting:22s} seed {seed:2d} {r['rounds']:3d} rounds  {r['status']:20s} {r['psnr_db']:6.1f} dB", flush=True)
    return records


def _with_gains(options: dict, sched) -> dict:
    """``options`` with ``gain_weight=W`` made the map ``WeightedPicard(d ** W)`` of this loop (``--gain-weight``; 0 is Picard)."""
    if "gain_weight" not in options:
        return options
    from trisolve_diffusion.schedulers import map_scheduler

    mapping = map_scheduler(sched)
    mapping = mapping.scaled()  # the rows the sampler solves on (the identity for variance-preserving loops)
    rest = {k: v for k, v in options.items() if k != "gain_weight"}
    order = options["update_map"].order if "update_map" in options else None  # --order too: the same order
    return {**rest, "update_map": trisolve.WeightedPicard(mapping.fixed_prediction_derivative ** options["gain_weight"], order=order)}


INIT_SETTINGS = {"DDIM-50": ("ddim", 50), "FlowEuler-28": ("flow", 28)}


def _coarse_init(loop, x0: torch.Tensor, fine_times: np.ndarray, make, k: int) -> torch.Tensor:
    """ParaSolver's initialisation: ``k`` sequential steps on a ``k``-step grid, interpolated onto the fine rows' times."""
    coarse_sched = make(k)
    rows, times = loop(coarse_sched, x0)  # (k + 1, B, *event), (k + 1,) decreasing
    out = []
    for t in fine_times:  # linear in the schedule's time between the two coarse rows around t
        j = int(np.clip(np.searchsorted(-times, -t, side="right") - 1, 0, len(times) - 2))
        w = 0.0 if times[j] == times[j + 1] else float((times[j] - t) / (times[j] - times[j + 1]))
        out.append((1 - w) * rows[j] + w * rows[j + 1])
    init = torch.stack(out)
    init[0] = x0
    return init


def run_init(seeds: list[int], coarse_steps=(5, 10)) -> list[dict]:
    """Cold start, coarse initialisation and a neighbouring seed's warm start (``--init``)."""
    from diffusers.utils.torch_utils import randn_tensor

    from trisolve_diffusion.models import load_digits_flow_pipeline, load_digits_unet

    unet, flow = load_digits_unet(), load_digits_flow_pipeline()
    flow.set_progress_bar_config(disable=True)
    opts = dict(progress=False, window=trisolve.FullWindow(), final_row_atol=PIXEL_FINAL_ATOL)
    records = []
    for setting, (kind, steps) in INIT_SETTINGS.items():
        if kind == "flow":
            def make(k):
                x = torch.zeros(1, 1, 16, 16)
                flow.set_timesteps(k, x)
                return flow.scheduler

            net = lambda x, t: flow.unet(x, t.expand(x.shape[0])).sample  # noqa: E731
            times_of = lambda sched: sched.sigmas.double().numpy()  # noqa: E731
            draw = lambda seed: flow.prepare_latents(1, torch.Generator().manual_seed(seed))  # noqa: E731
        else:
            make = lambda k: make_scheduler(kind, k)  # noqa: E731
            net = lambda x, t: unet(x, t).sample  # noqa: E731
            times_of = lambda sched: np.append(sched.timesteps.double().numpy(), -1.0)  # noqa: E731
            draw = lambda seed: randn_tensor((1, 1, 16, 16), generator=torch.Generator().manual_seed(seed))  # noqa: E731

        def loop(sched, x):
            rows = [x]
            with torch.no_grad():
                for t in sched.timesteps:
                    inp = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
                    x = sched.step(net(inp, t), t, x).prev_sample
                    rows.append(x)
            return torch.stack(rows), times_of(sched)

        den = unet_denoiser(flow.unet if kind == "flow" else unet)
        trajectories = {}
        for seed in seeds + [seeds[-1] + 1]:
            sched = make(steps)
            x0 = draw(seed)
            ref_rows, fine_times = loop(sched, x0)
            ref = images(ref_rows[-1])
            starts = {"cold": (None, 0)}
            for k in coarse_steps:
                starts[f"coarse {k} steps"] = (_coarse_init(loop, x0, fine_times, make, k), k)
            for name, (init, extra) in starts.items():
                final, sol = td.sample_latents(den, make(steps), x0, **opts, init=init)
                trajectories.setdefault(seed, sol.trajectory.clone())
                if seed in seeds:
                    records.append(_init_record(setting, seed, name, sol, extra, steps, images(final), ref))
            if seed - 1 in seeds:  # the neighbour's (this seed's) trajectory for seed - 1
                prev = seed - 1
                x_prev = draw(prev)
                init = trajectories[seed].clone()
                init[0] = x_prev
                prev_ref = images(loop(make(steps), x_prev)[0][-1])
                final, sol = td.sample_latents(den, make(steps), x_prev, **opts, init=init)
                records.append(_init_record(setting, prev, "neighbouring seed's trajectory", sol, 0, steps, images(final), prev_ref))
    return records


def _init_record(setting, seed, name, sol, extra, steps, got, ref) -> dict:
    r = dict(setting=setting, seed=seed, method=name, rounds=sol.num_rounds, sequential_steps=extra, dependent_steps=sol.num_rounds + extra,
             evals_per_step=(sol.num_evals + extra) / steps, status=sol.status.name, psnr_db=psnr(got[0], ref[0]))  # fmt: skip
    print(f"{setting:12s} seed {seed:2d} {name:32s} {r['rounds']:3d} rounds + {extra:2d} steps  {r['psnr_db']:6.1f} dB", flush=True)
    return r


#: rate floors the trace replays the finish with (1/2: the finish before issue 26's last change; 1/3: the default)
TRACE_FLOORS = (0.5, 1 / 3, 0.4 / 1.4, 0.3 / 1.3)
#: other finishes the trace replays at the default floor (_replay_variant): the estimate times the share of the final
#: row's correction the solver's step applied (the larger of the last two rounds', at least 1/2); the final row's rate
#: as the geometric mean over the last three rounds; looser final-row tolerances (0.01125: 45 dB for pixels in [0, 1])
TRACE_VARIANTS = ("share", "geo3", "atol 0.009", "atol 0.01", "atol 0.01125")


def run_trace(settings: dict, seeds: list[int]) -> list[dict]:
    """Per batch-1 run: the PSNR after every round and the finish replayed with each of ``TRACE_FLOORS`` (``--trace``)."""
    import trisolve.driver as driver
    from trisolve_diffusion.models import load_digits_flow_pipeline, load_digits_unet

    unet, flow = load_digits_unet(), None
    records = []
    seen: list = []
    original = driver._pending_error

    def recording(correction, *earlier):  # the driver's own estimate, its inputs kept (rows first, then the final row)
        seen.append((np.array(correction), [None if e is None else np.array(e) for e in earlier]))
        return original(correction, *earlier)

    for setting, (kind, steps, batch, target) in settings.items():
        if batch != 1:
            continue
        for seed in seeds:
            seen.clear()
            psnrs: list[float] = []
            lasts: list[torch.Tensor] = []  # the final row after each round
            opts = dict(progress=False, window=trisolve.FullWindow(), final_row_atol=1e-30)  # tested every round, never met
            driver._pending_error = recording
            try:
                if kind == "flow":
                    if flow is None:
                        flow = load_digits_flow_pipeline()
                        flow.set_progress_bar_config(disable=True)
                    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
                    ref = flow(num_inference_steps=steps, generator=gen(), output_type="np").images
                    cb = _trace_callback(psnrs, lasts, ref)
                    sol = td.sample(flow, num_inference_steps=steps, generator=gen(), output_type="np", callback=cb, **opts).solution
                else:
                    ref = images(sequential(unet, make_scheduler(kind, steps), seed, 1))
                    cb = _trace_callback(psnrs, lasts, ref)
                    _, sol = parallel(unet, make_scheduler(kind, steps), seed, 1, {**opts, "callback": cb, "final_row_atol": 1e-30})
            finally:
                driver._pending_error = original
            first = len(psnrs) - len(seen) // 2  # rounds before the final row entered the window
            ok45 = next(k + 1 for k in range(len(psnrs)) if min(psnrs[k:]) >= 45) if psnrs[-1] >= 45 else None
            replay = {f"{f:.3g}": _replay(seen, first, sol.num_rounds, f, driver) for f in TRACE_FLOORS}
            # the final row's step in each round: its change from the iterate the round started from (row 0's copy before round 1)
            rms = lambda a: float(a.double().pow(2).mean().sqrt())  # noqa: E731
            moves = [rms(lasts[k] - (lasts[k - 1] if k else sol.trajectory[0])) for k in range(len(lasts))][first:]
            variants = {v: _replay_variant(seen, first, sol.num_rounds, moves, v, driver) for v in TRACE_VARIANTS}
            stop = replay[f"{driver.PENDING_RATE_FLOOR:.3g}"]  # the default finish's round: its estimate against the image's error
            final, final_before = seen[2 * (stop - first - 1) + 1]
            estimate = float(np.max(driver._pending_error(final, *final_before)))
            (default,) = run({setting: settings[setting]}, [seed], dict(progress=False))  # the solve itself (the full window)
            error = 2 * 10 ** (-psnrs[stop - 1] / 20)  # the returned image's RMS error, in [-1, 1] units like the estimate
            records.append(dict(setting=setting, seed=seed, target=target, psnr_db=psnrs, first_45db=ok45, default_rounds=default["rounds"],
                                error_over_estimate=error / estimate if 0 < estimate < np.inf else None,
                                finish={k: dict(rounds=v, psnr_db=psnrs[v - 1]) for k, v in replay.items()},
                                variants={k: dict(rounds=v, psnr_db=psnrs[v - 1]) for k, v in variants.items()}))  # fmt: skip
            print(f"{setting:14s} seed {seed:2d} first >= 45 dB {ok45}  " + "  ".join(f"floor {k}: {v['rounds']} ({v['psnr_db']:.1f} dB)"
                  for k, v in records[-1]["finish"].items()), flush=True)  # fmt: skip
    return records


def _replay(seen: list, first: int, rounds: int, floor: float, driver) -> int:
    """The round the finish stops at with ``PENDING_RATE_FLOOR = floor`` (the driver's test, on the recorded inputs)."""
    kept = driver.PENDING_RATE_FLOOR
    driver.PENDING_RATE_FLOOR = floor
    try:
        for k in range(len(seen) // 2):
            (rows, rows_before), (final, final_before) = seen[2 * k], seen[2 * k + 1]
            rows_ok = np.all(np.minimum(rows, driver._pending_error(rows, *rows_before)) <= PIXEL_FINAL_ATOL)
            if rows_ok and np.all(driver._pending_error(final, *final_before) <= PIXEL_FINAL_ATOL):
                return first + k + 1
    finally:
        driver.PENDING_RATE_FLOOR = kept
    return rounds


def _trace_callback(psnrs: list, lasts: list, ref: np.ndarray):
    """A round callback that keeps the PSNR of the final row's image from ``ref`` and the final row itself."""

    def cb(info):
        last = info.trajectory[-1].detach().clone()
        lasts.append(last)
        psnrs.append(psnr(images(last)[0], ref[0]))

    return cb


def _replay_variant(seen: list, first: int, rounds: int, moves: list, variant: str, driver) -> int:
    """The round another finish (:data:`TRACE_VARIANTS`) stops at, on the recorded inputs (the default floor).

    ``moves``: the final row's step in each recorded round (RMS). ``share``: both tests' estimates times
    ``max(step / correction over the last two rounds, 1/2)``, at most 1 (1 before two rounds); ``geo3``: the
    final row's rate as ``(c_k / c_{k-3}) ** (1/3)`` from the fourth round on (the rows' test unchanged);
    ``atol X``: the default estimate against ``final_row_atol = X``.
    """
    atol = float(variant.split()[1]) if variant.startswith("atol") else PIXEL_FINAL_ATOL
    finals = [float(np.max(seen[2 * k + 1][0])) for k in range(len(seen) // 2)]
    for k in range(len(seen) // 2):
        (rows, rows_before), (final, final_before) = seen[2 * k], seen[2 * k + 1]
        share = 1.0
        if variant == "share" and k >= 2:
            share = min(1.0, max(moves[k - 1] / finals[k - 1], moves[k - 2] / finals[k - 2], 0.5))
        pending = driver._pending_error(final, *final_before)
        if variant == "geo3" and k >= 3 and finals[k - 3] > 0:
            rate = max((finals[k] / finals[k - 3]) ** (1 / 3), driver.PENDING_RATE_FLOOR)
            pending = np.full_like(final, rate * finals[k] / (1 - rate) if rate < 1 else np.inf)
        rows_ok = np.all(np.minimum(rows, driver._pending_error(rows, *rows_before)) * share <= atol)
        if rows_ok and np.all(pending * share <= atol):
            return first + k + 1
    return rounds


def trace_table(records: list[dict], seeds: list[int]) -> str:
    floors = list(records[0]["finish"])
    variants = list(records[0].get("variants", {}))

    def cell(runs: list[dict]) -> str:
        low = sum(v["psnr_db"] < 45 for v in runs)
        return f"{median_range([v['rounds'] for v in runs])}, worst {min(v['psnr_db'] for v in runs):.1f} dB" + (f", {low} < 45 dB" if low else "")

    lines = [
        "| setting | issue 26 target | first round >= 45 dB from then on | " + " | ".join(f"finish, rate floor {f}" for f in floors)
        + " | image error / estimate at the default's stop: min, median, max | " + " | ".join(f"finish: {v}" for v in variants) + " |",
        "|---|---|---|" + "---|" * len(floors) + "---|" + "---|" * len(variants),
    ]
    for setting in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == setting]
        first = [r["first_45db"] for r in rs if r["first_45db"] is not None]
        cells = [cell([r["finish"][f] for r in rs]) for f in floors]
        target = rs[0]["target"]
        ratios = sorted(r["error_over_estimate"] for r in rs if r["error_over_estimate"] is not None)
        spread = f"{ratios[0]:.2f}, {statistics.median(ratios):.2f}, {ratios[-1]:.2f}" if ratios else "-"
        lines.append(f"| {setting} | {'-' if target is None else f'<= {target}'} | {median_range(first) if first else '-'} | " + " | ".join(cells)
                     + f" | {spread} | " + " | ".join(cell([r["variants"][v] for r in rs]) for v in variants) + " |")  # fmt: skip
    lines += ["", f"Seeds {seeds[0]}-{seeds[-1]}, batch 1, default options, full window; rounds median [min, max]. The finish (pixel-space "
              f"final_row_atol {PIXEL_FINAL_ATOL:g}) replayed on the inputs recorded each round with the driver's estimate and "
              "PENDING_RATE_FLOOR set to each value (1/2 is the finish before, which took the larger of the final row's correction "
              "and its estimate); PSNR of the image returned at that round, from the sequential loop's. Last column: the RMS error of the "
              "image the default finish returns (from its PSNR, in [-1, 1] units) over the final row's estimate it stopped on. "
              "Then other finishes at the default floor: 'share' multiplies both tests' estimates by the share of the final row's "
              "correction that the solver's step applied (the larger of the last two rounds' step / correction, clipped to [1/2, 1]); "
              "'geo3' reads the final row's rate as the geometric mean over the last three rounds; 'atol X' tests the default "
              "estimate against final_row_atol = X (0.01125 is 45 dB for pixels in [0, 1], the promise; 0.008 is 48 dB)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def init_table(records: list[dict]) -> str:
    lines = [
        "| setting | start | rounds | dependent steps (rounds + coarse steps) | evals / step | worst PSNR |",
        "|---|---|---|---|---|---|",
    ]
    for setting in dict.fromkeys(r["setting"] for r in records):
        for method in dict.fromkeys(r["method"] for r in records if r["setting"] == setting):
            rs = [r for r in records if r["setting"] == setting and r["method"] == method]
            lines.append(f"| {setting} | {method} | {median_range([r['rounds'] for r in rs])} | {median_range([r['dependent_steps'] for r in rs])} | "
                         f"{statistics.median(r['evals_per_step'] for r in rs):.2f} | {min(r['psnr_db'] for r in rs):.1f} dB |")  # fmt: skip
    lines += ["", "Batch 1, seeds as recorded, the default solver and finish with the full window; median [min, max]. Coarse steps are "
              "sequential network calls before the solve (one dependent step each)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def table(records: list[dict], seeds: list[int], options: str = "default options", window: str = "the full window") -> str:
    lines = [
        "| setting | rounds: median [min, max] | issue 26 target (median) | evals / step (median) | worst PSNR | runs >= 45 dB "
        "| batch: sample rounds, median [min, max] | batch: (step, sample) evals / image step (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == setting]
        rounds = [r["rounds"] for r in rs]
        med, target = statistics.median(rounds), rs[0]["target"]
        mark = "" if target is None else (" (met)" if med <= target else " (missed)")
        lines.append(
            f"| {setting} | {med:g} [{min(rounds)}, {max(rounds)}] | {'-' if target is None else f'<= {target}'}{mark} | "
            f"{statistics.median(r['evals_per_step'] for r in rs):.2f} | {min(r['psnr_db'] for r in rs):.1f} dB | "
            f"{sum(r['psnr_db'] >= 45 for r in rs)}/{len(rs)} | {_batch_cells(rs)} |"
        )
    lines += ["", f"Seeds {seeds[0]}-{seeds[-1]}, {options} with {window}; batch 1 unless the setting says 4 (PSNR: the worst image of the "
              "batch, from the sequential loop's, pixels in [0, 1]). evals / step: network evaluations per image over the steps "
              "(sequential: 1; PNDM's doubled first step and Heun's 2T - 1 rows make theirs larger). Batch columns: the rounds "
              "each sample of the batch took (per-sample rounds; in lockstep every sample takes the batch's rounds) and the network's "
              "(step, sample) evaluations per image and step (in lockstep, every sample of every row evaluated)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _batch_cells(rs: list[dict]) -> str:
    """The batch columns of a setting's rows: each sample's rounds, and the (step, sample) evaluations per image step; '-' at batch 1."""
    if rs[0]["batch"] == 1 or "sample_rounds" not in rs[0]:
        return "- | -"
    rounds = [k for r in rs for k in r["sample_rounds"]]
    return f"{statistics.median(rounds):g} [{min(rounds)}, {max(rounds)}] | {statistics.median(r['sample_evals_per_step'] for r in rs):.2f}"


def slug(setting: str) -> str:
    """A setting's part of a result file's name: ``"DDIM-50"`` -> ``ddim-50``, ``"DDIM-50, batch 4"`` -> ``ddim-50-batch4``."""
    name, _, batch = setting.partition(", batch ")
    return name.lower() + (f"-batch{batch}" if batch else "")


def parse_seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", default="0-9", help="a range such as 0-9 or 20-39")
    ap.add_argument("--settings", nargs="*", choices=list(SETTINGS), help="run only these")
    ap.add_argument("--init", action="store_true", help="cold start, coarse initialisation, neighbouring seed (results/rounds_init.*)")
    ap.add_argument("--history", type=int, help="TriangularAnderson with this many difference pairs for every setting (not the default's)")
    ap.add_argument("--rtol", type=float, help="the step tolerance's rtol (not the default's; the pixel-space finish is kept)")
    ap.add_argument("--order", type=int, help="Picard(order=K) as the update map for every setting (not the default's full order)")
    ap.add_argument("--trace", action="store_true", help="the finish replayed round by round (results/rounds_trace_seeds*.*)")
    ap.add_argument("--lockstep", action="store_true", help="batches in lockstep (per_sample=False), not per sample")
    ap.add_argument("--window", type=int, help="a sliding window of this many rows instead of the full window")
    ap.add_argument("--fill", choices=trisolve.driver.FILLS, help="how steps entering a sliding window start (not the default's, 'linear')")
    ap.add_argument("--gain-weight", type=float, help="WeightedPicard(d ** W) for every non-flow setting, d the step's derivative at a fixed "
                    "clean-image prediction (SchedulerMapping.fixed_prediction_derivative; 0: Picard), not the default's map")  # fmt: skip
    ap.add_argument("--freeze-passes", type=int, help="trisolve.driver.FREEZE_PASSES (not the default's)")
    ap.add_argument("--freeze-fraction", type=float, help="trisolve.driver.FREEZE_FRACTION (not the default's; inf: the rule before issue 26)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.trace:
        seeds = [0] if args.quick else parse_seeds(args.seeds)
        settings = QUICK if args.quick else {k: SETTINGS[k] for k in (args.settings or SETTINGS)}
        records = run_trace(settings, seeds)
        name = "rounds_trace_quick" if args.quick else f"rounds_trace_seeds{args.seeds}"
        write(name, {"seeds": seeds, "floors": [float(f) for f in TRACE_FLOORS], "records": records}, trace_table(records, seeds))
        return 0
    if args.init:
        seeds = [0] if args.quick else parse_seeds(args.seeds)
        records = run_init(seeds, coarse_steps=(5,) if args.quick else (5, 10))
        write("rounds_init_quick" if args.quick else "rounds_init", {"seeds": seeds, "records": records}, init_table(records))
        return 0
    seeds = [0] if args.quick else parse_seeds(args.seeds)
    settings = QUICK if args.quick else {k: SETTINGS[k] for k in (args.settings or SETTINGS)}
    options = dict(progress=False)  # the full window unless --window (run()'s default)
    variant = ""
    if args.history is not None:
        options["solver"] = trisolve.TriangularAnderson(history_size=args.history)
        variant += f"_history{args.history}"
    if args.order is not None:
        options["update_map"] = trisolve.Picard(order=args.order)
        variant += f"_order{args.order}"
    if args.rtol is not None:  # final_row_atol given: "auto" would turn the finish off for a non-default tolerance
        options.update(rtol=args.rtol, final_row_atol=PIXEL_FINAL_ATOL)
        variant += f"_rtol{args.rtol:g}"
    if args.lockstep:
        options["per_sample"] = False
        variant += "_lockstep"
    if args.window is not None:
        options["window"] = args.window
        variant += f"_window{args.window}"
    if args.fill is not None:
        options["fill"] = args.fill
        variant += f"_fill{args.fill}"
    if args.gain_weight is not None:
        options["gain_weight"] = args.gain_weight
        variant += f"_gainweight{args.gain_weight:g}"
    freeze = []  # the driver's freeze rule (module constants, read every round)
    if args.freeze_passes is not None:
        import trisolve.driver as driver

        driver.FREEZE_PASSES = args.freeze_passes
        variant += f"_passes{args.freeze_passes}"
        freeze.append(f"FREEZE_PASSES={args.freeze_passes}")
    if args.freeze_fraction is not None:
        import trisolve.driver as driver

        driver.FREEZE_FRACTION = args.freeze_fraction
        variant += f"_fraction{args.freeze_fraction:g}"
        freeze.append(f"FREEZE_FRACTION={args.freeze_fraction:g}")
    records = run(settings, seeds, options)
    name = "rounds" if args.seeds == "0-9" and not args.settings else f"rounds_seeds{args.seeds}"
    name = "rounds_quick" if args.quick else name + variant
    if args.settings and not args.quick:
        name += "_" + "_".join(slug(s) for s in args.settings)
    described = ", ".join(([f"{args.history} TAA difference pairs"] if args.history is not None else [])
                          + ([f"Picard order {args.order}"] if args.order is not None else [])
                          + ([f"rtol={args.rtol:g}"] if args.rtol is not None else [])
                          + (["batches in lockstep (per_sample=False)"] if args.lockstep else [])
                          + ([f"fill={args.fill!r}"] if args.fill is not None else [])
                          + ([f"WeightedPicard(d ** {args.gain_weight:g}) as the map"] if args.gain_weight is not None else []) + freeze)  # fmt: skip
    window = "the full window" if args.window is None else f"a sliding window of {args.window} rows"
    write(name, {"seeds": seeds, "records": records},
          table(records, seeds, f"default options but {described}" if described else "default options", window))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
