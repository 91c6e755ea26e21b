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
