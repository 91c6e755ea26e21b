"""The demo's timing: medians of interleaved runs after a warm-up, and words computed from them."""

from __future__ import annotations

import re

import pytest

from trisolve_diffusion.demo import machine_description, time_interleaved, timing_verdict


def test_time_interleaved_warms_up_then_alternates():
    calls = []
    timing = time_interleaved({"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}, 3,
                              warmup={"a": lambda: calls.append("wa"), "b": lambda: calls.append("wb")})  # fmt: skip
    assert calls == ["wa", "wb", "a", "b", "a", "b", "a", "b"]
    assert timing["last"] == {"a": 1, "b": 2}
    for name in "ab":
        assert len(timing["times"][name]) == 3 and timing["median"][name] == sorted(timing["times"][name])[1]
    assert set(timing) >= {"load_before", "load_after"}
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        time_interleaved({"a": lambda: None}, 0)


def _ratio(sentence: str) -> float:
    return float(re.search(r"([0-9.]+)x", sentence).group(1))


@pytest.mark.parametrize("t_seq, t_par", [(12.9, 37.5), (2.86, 0.86), (1.0, 1.0), (0.9, 1.1)])
def test_verdict_follows_the_numbers(t_seq, t_par):
    text = timing_verdict(t_seq, t_par, evals_ratio=5.3, cores=2, load=3.0)
    assert _ratio(text) == pytest.approx(t_seq / t_par, abs=0.005)
    if t_seq >= t_par:
        assert text.startswith("parallel was") and "faster here" in text and "slower" not in text.split(".")[0]
    else:
        assert text.startswith("parallel was") and "(slower) here" in text
    assert "load average 3.0 on 2 cores (a busy machine)" in text and "5.3x the network evaluations" in text
    assert "a quiet machine" in timing_verdict(t_seq, t_par, cores=16, load=1.0)
    assert "load average" not in timing_verdict(t_seq, t_par, cores=2, load=float("nan"))
    spread = timing_verdict(t_seq, t_par, spread=True)
    assert spread.startswith("no clear winner") and _ratio(spread) == pytest.approx(t_seq / t_par, abs=0.005)
    with pytest.raises(ValueError, match="times must be > 0"):
        timing_verdict(0.0, t_par)


def test_machine_description_names_cores_threads_and_torch():
    import os

    import torch

    text = machine_description("cpu")
    assert f"{os.cpu_count()} cores" in text and torch.__version__ in text and f"{torch.get_num_threads()} threads" in text


def test_verdict_of_a_timing_and_the_window_description():
    import numpy as np

    import trisolve
    from trisolve_diffusion.demo import verdict_of, window_description

    timing = {"times": {"sequential": [1.0, 1.1, 1.2], "parallel": [3.0, 3.1, 3.3]}, "median": {"sequential": 1.1, "parallel": 3.1},
              "load_before": 1.0, "load_after": 2.5}  # fmt: skip
    text = verdict_of(timing, evals_ratio=4.0)
    assert text.startswith(f"parallel was {1.1 / 3.1:.2f}x (slower) here") and "load average 2.5" in text
    timing["times"]["parallel"] = [1.05, 1.3, 1.4]
    timing["median"]["parallel"] = 1.3
    assert verdict_of(timing).startswith("no clear winner")  # the ranges overlap
    rnn = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1]), n=20)
    full = trisolve.solve(rnn, trisolve.Jacobi(), np.ones(2), atol=1e-9)
    sliding = trisolve.solve(rnn, trisolve.Jacobi(), np.ones(2), atol=1e-9, window=trisolve.SlidingWindow(5))
    assert window_description(full) == "all 20 steps (full window, the default)"
    assert window_description(sliding, "--window") == "sliding, 5 steps (--window)"
    loop = trisolve.solve(rnn, trisolve.Jacobi(), np.ones(2), atol=1e-9, window=trisolve.SlidingWindow(1))
    assert window_description(loop) == "one step per round (forward substitution, the default)"
