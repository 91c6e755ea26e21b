"""Anderson and Triangular Anderson acceleration: correctness, safeguards, and the speed ordering."""

from __future__ import annotations

import array_api_compat.numpy as xnp
import numpy as np
import pytest
from conftest import BACKENDS
from ddim_toy import ddim_system
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo import blackbox_system, event_shapes, semilinear_system

import trisolve
from trisolve.solvers.anderson import AndersonState
from trisolve.solvers.base import StepContext

ACCELERATED = [trisolve.Anderson, trisolve.TriangularAnderson]


def reference_round(x, r, dX, dR, *, triangular, start, reg):
    """One (Triangular) Anderson round with explicit loops over rows and samples."""
    m, w, S, d = dX.shape
    out = np.empty_like(x)
    for b in range(S):
        for i in range(w):
            rows = range(i + 1) if triangular else range(start, w)
            A = sum(dR[:, s, b, :] @ dR[:, s, b, :].T for s in rows)  # (m, m)
            rhs = sum(dR[:, s, b, :] @ r[s, b, :] for s in rows)  # (m,)
            lam = reg * np.trace(A) / m + 1e-300
            gamma = np.linalg.solve(A + lam * np.eye(m), rhs)
            out[i, b] = x[i, b] + r[i, b] - (dX[:, i, b, :] + dR[:, i, b, :]).T @ gamma
    return out


@pytest.mark.parametrize("cls", ACCELERATED)
@given(
    seed=st.integers(0, 2**31),
    w=st.integers(1, 7),
    S=st.integers(1, 3),
    d=st.integers(1, 6),
    m=st.integers(1, 4),
    start=st.integers(0, 6),
)
def test_vectorised_round_matches_loop_reference(cls, seed, w, S, d, m, start):
    rng = np.random.default_rng(seed)
    start = min(start, w - 1)
    x, r = rng.standard_normal((2, w, S, d))
    dX, dR = rng.standard_normal((2, m, w, S, d))
    solver = cls(history_size=m, regularization=1e-3)
    got, valid = solver._mix(x, r, dX, dR, start=start, xp=xnp)
    want = reference_round(x, r, dX, dR, triangular=solver.triangular, start=start, reg=1e-3)
    assert valid.all()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("cls", ACCELERATED)
@settings(max_examples=15)  # each example is several full solves: keep the suite fast
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 30),
    p=st.integers(1, 3),
    event=event_shapes,
    contractive=st.booleans(),
    history=st.integers(1, 4),
    window=st.sampled_from([None, 1, 3, 8]),
)
def test_accelerated_solvers_agree_with_forward_substitution(backend, cls, seed, n, p, event, contractive, history, window):
    rng = np.random.default_rng(seed)
    if seed % 2:
        system = blackbox_system(rng, n, p, event, backend, scale=0.5 if contractive else 2.5)
        update_map = trisolve.OneStep()
    else:
        system = semilinear_system(rng, n, p, event, backend, a_range=(0.3, 0.9) if contractive else (1.2, 2.0))
        update_map = trisolve.Unrolled() if seed % 4 == 0 else trisolve.Picard()
    x0 = backend.asarray(rng.standard_normal(event))
    ref = backend.to_numpy(trisolve.forward_substitution(system, x0))
    sol = trisolve.solve(
        system,
        cls(history_size=history),
        x0,
        update_map=update_map,
        window=None if window is None else trisolve.SlidingWindow(window),
        atol=1e-11,
    )
    assert sol.converged, sol.status
    assert sol.num_rounds <= n
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(backend.to_numpy(sol.trajectory) / scale, ref / scale, rtol=0, atol=1e-7)


def test_plain_anderson_struggles_where_the_bound_still_holds():
    """Non-contractive systems: whole-window Anderson makes the residual explode, yet never exceeds n rounds."""
    worst = 0.0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        n = 40
        system = blackbox_system(rng, n, 2, (3,), BACKENDS[0], scale=2.5)
        x0 = rng.standard_normal(3)
        ref = trisolve.forward_substitution(system, x0)
        for cls in ACCELERATED:
            sol = trisolve.solve(system, cls(safeguard=None), x0, atol=1e-10)
            assert sol.converged and sol.num_rounds <= n
            np.testing.assert_allclose(sol.trajectory / np.abs(ref).max(), ref / np.abs(ref).max(), atol=1e-9)
            worst = max(worst, float(np.nanmax(sol.round_max_errors)))
    assert worst > 1e6  # the iteration really diverged for a while


def _rounds(solver, update_map, seeds=range(5), scale=1.0):
    out = []
    for seed in seeds:
        system, x0 = ddim_system(seed=seed)
        if scale != 1.0:
            g = system.g
            system = trisolve.SemilinearSystem(system.a, system.B * scale, lambda x, lo, hi, g=g: g(x / scale, lo, hi), sigma=system.sigma)
            x0 = x0 * scale
        sol = trisolve.solve(system, solver, x0, update_map=update_map, atol=0.0, rtol=1e-3 * scale)
        assert sol.converged
        ref = trisolve.forward_substitution(system, x0)
        assert np.abs(sol.trajectory[-1] - ref[-1]).max() < 1e-2 * scale
        out.append(sol.num_rounds)
    return np.array(out)


def test_ddim_shaped_system_taa_beats_high_order_jacobi_beats_order_one():
    n = 50
    jac1 = _rounds(trisolve.Jacobi(), trisolve.OneStep())
    jacn = _rounds(trisolve.Jacobi(), trisolve.Unrolled(order=n))
    taa = _rounds(trisolve.TriangularAnderson(), trisolve.Unrolled(order=n))
    print("rounds: Jacobi k=1", jac1, "Jacobi k=n", jacn, "TAA k=n", taa)
    assert np.median(jac1) >= 45
    assert np.median(jacn) <= 0.5 * np.median(jac1)
    assert np.all(taa < jacn) and np.median(taa) <= 0.75 * np.median(jacn)


@pytest.mark.parametrize("cls", ACCELERATED)
def test_regulariser_is_scale_free(cls):
    base = _rounds(cls(), trisolve.Unrolled(), seeds=range(3))
    scaled = _rounds(cls(), trisolve.Unrolled(), seeds=range(3), scale=1000.0)
    assert np.all(np.abs(base - scaled) <= 1), (base, scaled)


def _ctx(x, r, lo, hi, start, errors):
    g = x + r
    return StepContext(x=x, g=g, r=r, errors=np.asarray(errors, float), lo=lo, hi=hi, start=start, batch_ndim=0, xp=xnp)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_exactly_singular_gram_is_solved_without_error(backend):
    """Two identical history columns (rank-1 Gram, no regularisation asked for): finite coefficients."""
    xp = backend.xp
    solver = trisolve.TriangularAnderson(history_size=2, regularization=0.0, safeguard=None)
    dR = backend.asarray(np.ones((2, 3, 1, 4)))
    dX = backend.asarray(np.ones((2, 3, 1, 4)))
    x = backend.asarray(np.zeros((3, 1, 4)))
    r = backend.asarray(np.arange(12.0).reshape(3, 1, 4))
    prop, valid = solver._mix(x, r, dX, dR, start=0, xp=xp)
    assert backend.to_numpy(valid).all()
    assert np.all(np.isfinite(backend.to_numpy(prop)))


def test_identical_iterates_give_the_plain_step():
    """A history of identical iterates makes the Gram matrix exactly zero: plain step, no crash."""
    solver = trisolve.TriangularAnderson(history_size=3, safeguard=None)
    x = np.ones((4, 2))
    r = np.full((4, 2), 0.5)
    state = solver.init()
    for _ in range(4):
        prop, state = solver.step(_ctx(x, r, 1, 5, 0, [1.0] * 4), state)
        np.testing.assert_array_equal(prop, x + r)
    assert np.all(np.isfinite(prop))


@pytest.mark.parametrize(
    "r_prev,r,bound",
    [
        ([-1e200, 0.0], [1e200, 1.0], 1e4),  # Gram overflows to inf: non-finite coefficients
        ([0.5, 0.0], [1.0, 1.0], 1e-3),  # a finite coefficient above max_coefficient
    ],
    ids=["overflow", "too-large"],
)
def test_bad_coefficients_fall_back_to_the_plain_step_and_drop_history(r_prev, r, bound):
    solver = trisolve.TriangularAnderson(history_size=2, regularization=0.0, max_coefficient=bound, safeguard=None)
    good = np.zeros((1, 1, 2))
    state = AndersonState(lo=1, hi=3, x_prev=np.zeros((2, 1, 2)), r_prev=np.concatenate([good, np.reshape(r_prev, (1, 1, 2))]), err_prev=np.ones(2))
    x = np.array([[0.0, 0.0], [1.0, 1.0]])
    rr = np.array([[0.0, 0.0], r])
    prop, new = solver.step(_ctx(x, rr, 1, 3, 0, [1.0, 1.0]), state)
    assert np.all(np.isfinite(prop))
    assert solver.stats(new)["num_fallback_rows"] == 1  # counted from the rounds' masks, read once at the end
    np.testing.assert_array_equal(new.dR[:, 1], 0.0)  # the history of the fallen-back row is dropped
    np.testing.assert_array_equal(prop[1], x[1] + rr[1])  # plain step


def test_safeguard_rejects_a_round_that_made_things_much_worse():
    sg = trisolve.Safeguard(restart_growth=1.0, reject_growth=10.0)
    solver = trisolve.TriangularAnderson(history_size=1, safeguard=sg)
    x_prev, r_prev = np.zeros((3, 2)), np.full((3, 2), 0.1)
    state = AndersonState(
        lo=1,
        hi=4,
        x_prev=x_prev.reshape(3, 1, 2),
        r_prev=r_prev.reshape(3, 1, 2),
        err_prev=np.ones(3),
        dX=None,
        dR=None,
        accelerated=True,
    )
    x, r = np.full((3, 2), 5.0), np.full((3, 2), 50.0)
    prop, new = solver.step(_ctx(x, r, 1, 4, 0, [100.0, 100.0, 100.0]), state)
    assert new.num_rejections == 1 and new.x_prev is None
    np.testing.assert_array_equal(prop, x_prev + r_prev)  # the plain step from the previous iterate
    # growth below reject_growth only restarts the history: older pairs are dropped and the
    # step is still accelerated, with the newest pair only (as the Safeguard docstring says)
    state.accelerated = True
    state.dX = np.ones((1, 3, 1, 2))  # an older pair that the restart must drop
    state.dR = np.ones((1, 3, 1, 2))
    prop2, new2 = solver.step(_ctx(x, r, 1, 4, 0, [5.0, 5.0, 5.0]), state)
    assert new2.num_restarts == 1 and new2.num_rejections == 0
    assert new2.dX.shape[0] == 1
    dx, dr = (x - x_prev)[None, :, None, :], (r - r_prev)[None, :, None, :]
    want = reference_round(x[:, None, :], r[:, None, :], dx, dr, triangular=True, start=0, reg=solver.regularization)
    np.testing.assert_allclose(prop2, want[:, 0, :], rtol=1e-12)
    assert not np.allclose(prop2, x + r)  # not the plain step


def test_safeguard_rejections_do_not_break_the_bound_on_adversarial_systems():
    """Violent non-contractive systems trigger rejections; the answer and the n-round bound survive."""
    rejections = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        system = blackbox_system(rng, 30, 3, (2,), BACKENDS[0], scale=3.0)
        x0 = rng.standard_normal(2)
        ref = trisolve.forward_substitution(system, x0)
        sol = trisolve.solve(system, trisolve.Anderson(safeguard=trisolve.Safeguard(reject_growth=2.0)), x0, atol=1e-10)
        assert sol.converged and sol.num_rounds <= 30
        np.testing.assert_allclose(sol.trajectory / np.abs(ref).max(), ref / np.abs(ref).max(), atol=1e-9)
        rejections += sol.stats["num_rejections"]
    assert rejections > 0


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_history_size_must_be_a_positive_int(bad, exc):
    with pytest.raises(exc, match="history_size"):
        trisolve.TriangularAnderson(history_size=bad)


def test_safeguard_parameters_are_checked():
    with pytest.raises(ValueError, match="reject_growth"):
        trisolve.Safeguard(reject_growth=0.5)
    with pytest.raises(TypeError, match="Safeguard"):
        trisolve.Anderson(safeguard="yes")


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_fallback_rows_are_counted_exactly_with_bounded_memory(backend):
    """The rejected-coefficient masks are folded into a device count every few rounds (no read), so a long
    solve keeps a bounded number of them; the count read at the end equals the rows that fell back."""
    from trisolve.solvers.anderson import _FOLD_EVERY, _count_fallback_rows, _record_valid

    rng = np.random.default_rng(3)
    state, expect = AndersonState(), 0
    for _ in range(3 * _FOLD_EVERY + 5):
        valid = rng.random((int(rng.integers(1, 7)), 2)) > 0.2  # (rows, S): a row falls back if any sample does
        expect += int((~valid.all(axis=1)).sum())
        state = AndersonState(**_record_valid(state, backend.asarray(valid), backend.xp))
        assert len(state.valid_masks) < _FOLD_EVERY
    assert _count_fallback_rows(state.valid_masks, state.fallback_count) == expect


def test_safeguard_host_rms_equals_the_numpy_formula_bitwise():
    """The safeguard's growth test reads the same residual size as sqrt(mean(square(nan_to_num(e, nan=inf))))."""
    from trisolve.solvers.anderson import _host_rms

    rng = np.random.default_rng(0)
    for t in range(500):
        n = int(rng.integers(1, 80))
        e = rng.random(n) * 10.0 ** int(rng.integers(-30, 30))
        if t % 7 == 0:
            e[rng.integers(0, n)] = np.nan
        if t % 11 == 0:
            e[rng.integers(0, n)] = np.inf
        if t % 13 == 0:
            e *= 1e160  # squares overflow
        with np.errstate(over="ignore", invalid="ignore"):
            ref = float(np.sqrt(np.mean(np.square(np.nan_to_num(e, nan=np.inf)))))
        assert _host_rms(e) == ref
    assert _host_rms(np.array([np.nan, 1.0])) == np.inf
    assert _host_rms(np.array([1e200, 1.0])) == np.inf
