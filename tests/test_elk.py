"""ELK damped step (trisolve.elk.damped_scan): the parallel Kalman smoother against the normal equations on three namespaces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import BACKENDS

import trisolve
from trisolve.elk import damped_scan

LAMS = [0.0, 1e-3, 1.0, 100.0]
WS = [1, 2, 5, 8, 17, 40]  # w = 1, odd and even, a power of two


def _problem(rng, w, S, d, kind, scale):
    """Random ``J`` (entries scaled by ``scale``: 0.5 contractive, 1.5 expanding), ``r`` and ``carry``."""
    if kind == "dense":
        J = rng.standard_normal((w, S, d, d)) * scale / np.sqrt(d)
    else:
        J = rng.standard_normal((w, S, d)) * scale
    return J, rng.standard_normal((w, S, d)), rng.standard_normal((S, d))


def _blocks(J, kind):
    return J if kind == "dense" else J[..., :, None] * np.eye(J.shape[-1])  # (w, S, d, d)


def _reference(J, r, lam, kind, carry=None):
    """The minimiser of sum ||delta_t - J_t delta_{t-1} - r_t||^2 + lam_t ||delta_t||^2 by a dense solve of the normal equations."""
    w, S, d = r.shape
    Jb = _blocks(J, kind)
    lam_rows = np.broadcast_to(np.asarray(lam, dtype=np.float64), (w,))
    out = np.empty_like(r)
    for s in range(S):
        A = np.eye(w * d)
        for t in range(1, w):
            A[t * d : (t + 1) * d, (t - 1) * d : t * d] = -Jb[t, s]
        rhs = r[:, s].reshape(-1).copy()
        if carry is not None:
            rhs[:d] += Jb[0, s] @ carry[s]
        normal = A.T @ A + np.diag(np.repeat(lam_rows, d))
        out[:, s] = np.linalg.solve(normal, A.T @ rhs).reshape(w, d)
    return out


def _sequential(J, r, kind, carry=None):
    """The Newton step (lam = 0) by the forward recurrence."""
    Jb = _blocks(J, kind)
    prev = np.zeros_like(r[0]) if carry is None else carry
    out = np.empty_like(r)
    for t in range(r.shape[0]):
        prev = np.einsum("sij,sj->si", Jb[t], prev) + r[t]
        out[t] = prev
    return out


def _rel(got, want):
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("kind", ["diagonal", "dense"])
@pytest.mark.parametrize("scale", [0.5, 1.5])
@pytest.mark.parametrize("with_carry", [False, True])
def test_matches_the_normal_equations(backend, kind, scale, with_carry):
    rng = np.random.default_rng([1, int(scale * 10), kind == "dense", with_carry])
    for w in WS:
        S, d = 1 + w % 2, 1 + w % 4
        J, r, c = _problem(rng, w, S, d, kind, scale)
        carry = c if with_carry else None
        for lam in LAMS:
            got = damped_scan(
                backend.asarray(J), backend.asarray(r), lam, kind=kind, xp=backend.xp, carry=None if carry is None else backend.asarray(carry)
            )
            got = backend.to_numpy(got)
            assert got.shape == r.shape and got.dtype == np.float64
            # lam = 0: the normal equations square the (ill-)conditioning of an expanding J; use the recurrence
            want = _sequential(J, r, kind, carry) if lam == 0 else _reference(J, r, lam, kind, carry)
            assert _rel(got, want) < 1e-10, (w, lam)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("kind", ["diagonal", "dense"])
def test_lam_zero_is_the_affine_scan(backend, kind):
    rng = np.random.default_rng(2)
    for w in (1, 6, 13):
        J, r, c = _problem(rng, w, 2, 3, kind, 1.5)
        Jx, rx = backend.asarray(J), backend.asarray(r)
        newton = backend.to_numpy(trisolve.scan.affine_scan(Jx, rx, xp=backend.xp))
        np.testing.assert_array_equal(backend.to_numpy(damped_scan(Jx, rx, 0.0, kind=kind, xp=backend.xp)), newton)
        np.testing.assert_array_equal(backend.to_numpy(damped_scan(Jx, rx, 0, kind=kind, xp=backend.xp)), newton)
        # a carry is delta_{-1}: the scan with J_0 c added to r_0; (S, d) and (1, S, d) alike
        r0 = r.copy()
        r0[0] += np.einsum("sij,sj->si", _blocks(J, kind)[0], c)
        want = backend.to_numpy(trisolve.scan.affine_scan(Jx, backend.asarray(r0), xp=backend.xp))
        for cx in (backend.asarray(c), backend.asarray(c[None])):
            np.testing.assert_allclose(backend.to_numpy(damped_scan(Jx, rx, 0.0, kind=kind, xp=backend.xp, carry=cx)), want, rtol=1e-13, atol=1e-13)
        # the Kalman path with no observation anywhere (per-row zeros) is the Newton step too
        zeros = backend.to_numpy(damped_scan(Jx, rx, np.zeros(w), kind=kind, xp=backend.xp))
        assert _rel(zeros, _sequential(J, r, kind)) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("kind", ["diagonal", "dense"])
def test_per_row_lam(backend, kind):
    rng = np.random.default_rng(3)
    for w, scale in ((1, 1.5), (9, 0.5), (24, 1.5)):
        J, r, c = _problem(rng, w, 2, 2, kind, scale)
        lam = rng.choice(LAMS, size=w)
        lam[w // 2] = 0.0  # rows without damping between damped ones
        for lam_rows in (lam, lam.tolist()):
            got = damped_scan(backend.asarray(J), backend.asarray(r), lam_rows, kind=kind, xp=backend.xp, carry=backend.asarray(c))
            assert _rel(backend.to_numpy(got), _reference(J, r, lam, kind, c)) < 1e-10
        # a constant table is the scalar
        const = backend.to_numpy(damped_scan(backend.asarray(J), backend.asarray(r), np.full(w, 0.3), kind=kind, xp=backend.xp))
        scalar = backend.to_numpy(damped_scan(backend.asarray(J), backend.asarray(r), 0.3, kind=kind, xp=backend.xp))
        np.testing.assert_allclose(const, scalar, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kind", ["diagonal", "dense"])
@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_step_shrinks_as_lam_grows(kind, scale):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(4)
    J, r, c = _problem(rng, 21, 2, 3, kind, scale)
    lams = [0.0, *np.logspace(-4, 6, 21).tolist()]
    for carry in (None, c):
        norms = [np.linalg.norm(damped_scan(J, r, lam, kind=kind, xp=xp, carry=carry)) for lam in lams]
        assert all(b <= a * (1 + 1e-12) for a, b in zip(norms, norms[1:])), norms
        assert norms[-1] < 1e-4 * norms[0]  # -> A^T r / lam: vanishes as lam -> inf


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_dtype_follows_the_input(backend):
    rng = np.random.default_rng(5)
    J, r, _ = _problem(rng, 11, 2, 3, "dense", 0.5)
    for kind, Jk in (("dense", J), ("diagonal", J[..., 0])):
        got = damped_scan(backend.asarray(Jk, "float32"), backend.asarray(r, "float32"), 0.5, kind=kind, xp=backend.xp)
        assert got.dtype == backend.xp.float32
        assert _rel(backend.to_numpy(got).astype(np.float64), _reference(Jk, r, 0.5, kind)) < 1e-5


def test_torch_gradients_flow():
    import array_api_compat.torch as xp

    rng = np.random.default_rng(6)
    J, r, _ = _problem(rng, 3, 1, 2, "dense", 0.5)  # w = 3: the prefix scan recurses once
    Jt, rt = torch.from_numpy(J).requires_grad_(), torch.from_numpy(r).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: damped_scan(a, b, 0.7, kind="dense", xp=xp), (Jt, rt))


@pytest.mark.parametrize(
    ("lam", "match"),
    [
        (-1.0, "lam must be a finite number >= 0"),
        (math.inf, "lam must be a finite number >= 0"),
        (math.nan, "lam must be a finite number >= 0"),
        (np.float64(-1e-9), "lam must be a finite number >= 0"),
        ([0.0, 1.0, math.inf, 1.0], r"row 2 has inf"),
        (np.array([0.0, -2.0, 1.0, 1.0]), r"row 1 has -2.0"),
        (np.ones(3), r"shape \(4,\)"),
        (np.ones((4, 1)), r"shape \(4,\)"),
    ],
)
def test_bad_lam_raises(lam, match):
    import array_api_compat.numpy as xp

    J, r = np.full((4, 1, 2), 0.5), np.ones((4, 1, 2))
    with pytest.raises(ValueError, match=match):
        damped_scan(J, r, lam, kind="diagonal", xp=xp)


def test_bad_arguments_raise():
    import array_api_compat.numpy as xp

    J, r = np.full((4, 1, 2), 0.5), np.ones((4, 1, 2))
    with pytest.raises(TypeError, match="lam must be a real number"):
        damped_scan(J, r, True, kind="diagonal", xp=xp)
    with pytest.raises(TypeError, match="lam must be a real number"):
        damped_scan(J, r, "big", kind="diagonal", xp=xp)
    with pytest.raises(ValueError, match='kind must be "diagonal" or "dense"'):
        damped_scan(J, r, 1.0, kind="scalar", xp=xp)
    with pytest.raises(ValueError, match='kind="dense" needs J of shape'):
        damped_scan(J, r, 1.0, kind="dense", xp=xp)
    with pytest.raises(ValueError, match='kind="diagonal" needs J'):
        damped_scan(np.ones((4, 1, 2, 2)), r, 1.0, kind="diagonal", xp=xp)
    with pytest.raises(ValueError, match="carry must have shape"):
        damped_scan(J, r, 1.0, kind="diagonal", xp=xp, carry=np.ones((2, 1, 2)))
