"""``trisolve.odeint`` against the real torchdiffeq: values, grids, gradients, warnings, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchdiffeq

import trisolve

torch.manual_seed(0)
_A = torch.randn(6, 6, dtype=torch.float64) / 2


def field(t, y):
    """A forced nonlinear field on a (2, 3) state (nothing here is tuned to the solver)."""
    return torch.tanh(y.reshape(6) @ _A).reshape(2, 3) - 0.3 * y + torch.sin(3 * t)


Y0 = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)
T_UNEVEN = torch.cumsum(torch.rand(41, dtype=torch.float64) * 0.1 + 0.02, 0) - 0.3


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_matches_torchdiffeq_on_an_uneven_grid(method):
    ref = torchdiffeq.odeint(field, Y0, T_UNEVEN, method=method)
    ys, info = trisolve.odeint(field, Y0, T_UNEVEN, method=method, return_info=True)
    assert ys.shape == (41, 2, 3)
    assert info.solution.converged and info.method == method
    assert torch.allclose(ys, ref, rtol=0, atol=1e-12)
    assert info.num_rounds < 41  # parallel: fewer rounds than steps


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_step_size_grid_and_interpolation_match_torchdiffeq(method):
    t = torch.tensor([0.0, 0.25, 0.7, 1.3], dtype=torch.float64)
    opts = dict(step_size=0.07)  # not a divisor of any interval: outputs are interpolated
    ref = torchdiffeq.odeint(field, Y0, t, method=method, options=opts)
    ys, info = trisolve.odeint(field, Y0, t, method=method, options=opts, return_info=True)
    assert ys.shape == (4, 2, 3) and info.solution.n == info.grid.shape[0] - 1 > 3
    assert torch.allclose(ys, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["midpoint", "rk4"])
def test_decreasing_times_match_torchdiffeq(method):
    t = torch.flip(T_UNEVEN[:20], [0])
    assert torch.allclose(trisolve.odeint(field, Y0, t, method=method), torchdiffeq.odeint(field, Y0, t, method=method), rtol=0, atol=1e-12)


def test_float32_matches_torchdiffeq_to_its_precision():
    y0, t = Y0.float(), torch.linspace(0, 2, 30)
    f32 = lambda t, y: field(t.double(), y.double()).float()  # noqa: E731
    ref = torchdiffeq.odeint(f32, y0, t, method="rk4")
    ys = trisolve.odeint(f32, y0, t, method="rk4")
    assert ys.dtype == torch.float32 and torch.allclose(ys, ref, rtol=0, atol=2e-5)


def test_batched_func_gives_the_same_values():
    def batched(t, y):  # t (w,), y (w, 2, 3)
        return torch.tanh(y.reshape(-1, 6) @ _A).reshape(-1, 2, 3) - 0.3 * y + torch.sin(3 * t)[:, None, None]

    t = T_UNEVEN[:15]
    assert torch.allclose(trisolve.odeint(batched, Y0, t, batched=True), torchdiffeq.odeint(field, Y0, t, method="rk4"), rtol=0, atol=1e-12)


def test_a_func_vmap_cannot_trace_falls_back_to_rows_with_a_warning():
    def host_branch(t, y):  # float(...) is a host read: vmap refuses it
        return -y if float(y.sum()) > -100 else y

    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="could not be vectorised"):
        ys = trisolve.odeint(host_branch, Y0, t, solver=trisolve.Jacobi(), update_map=trisolve.Picard())
    assert torch.allclose(ys, torchdiffeq.odeint(host_branch, Y0, t, method="rk4"), rtol=0, atol=1e-9)


def test_gradients_match_autograd_through_torchdiffeq():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()

    def f(t, y):
        return net(y) * torch.cos(t)

    y0 = torch.tensor([[0.5, -0.2, 0.1], [0.0, 0.3, -0.4]], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 1.5, 25, dtype=torch.float64)
    params = [y0, *net.parameters()]
    ours = trisolve.odeint(f, y0, t)  # no flag: differentiable by default
    assert ours.requires_grad
    g1 = torch.autograd.grad((ours**2).sum() + ours[-1, 0, 1], params)
    ref = torchdiffeq.odeint(f, y0, t, method="rk4")
    g2 = torch.autograd.grad((ref**2).sum() + ref[-1, 0, 1], params)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_parameters_alone_make_it_differentiable_and_gradients_false_turns_it_off():
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    y0 = torch.ones(2, dtype=torch.float64)
    ys = trisolve.odeint(lambda t, y: -w * y, y0, t)
    (g,) = torch.autograd.grad(ys[-1].sum(), w)
    (gref,) = torch.autograd.grad(torchdiffeq.odeint(lambda t, y: -w * y, y0, t, method="rk4")[-1].sum(), w)
    assert torch.allclose(g, gref, rtol=1e-8)
    assert not trisolve.odeint(lambda t, y: -w * y, y0, t, gradients=False).requires_grad
    assert not trisolve.odeint(lambda t, y: -y, y0, t).requires_grad  # nothing requires grad: a plain tensor


def test_default_method_is_newton_and_recorded():
    _, info = trisolve.odeint(field, Y0, T_UNEVEN, return_info=True)
    assert isinstance(info.solver, trisolve.Jacobi) and info.update_map == trisolve.Newton(jacobian="dense")
    assert info.njev > 0 and info.nfev >= 4 * 40
    assert "Newton" in repr(info) and "rounds=" in repr(info)


def test_an_unconverged_solve_raises_with_the_info():
    with pytest.raises(trisolve.SolveError, match="MAX_ITER") as exc:
        trisolve.odeint(field, Y0, T_UNEVEN, solver=trisolve.Jacobi(), update_map=trisolve.OneStep(), max_iter=3)
    assert exc.value.info.solution.num_rounds == 3


def test_an_exception_in_func_is_raised_as_solve_error_with_its_cause():
    def bad(t, y):
        raise ZeroDivisionError("boom")

    with pytest.raises(trisolve.SolveError, match="FAILED") as exc:
        trisolve.odeint(bad, Y0, T_UNEVEN, batched=True, gradients=False)
    assert isinstance(exc.value.__cause__, ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):  # the gradient probe (one call before the solve) raises it as is
        trisolve.odeint(bad, Y0, T_UNEVEN, batched=True)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="dopri5"), ValueError, "adaptive"),
        (dict(method="implicit_adams"), ValueError, "not offered"),
        (dict(method="explicit_adams", options=dict(max_order=13)), ValueError, "max_order"),
        (dict(method="rk45"), ValueError, "unknown method"),
        (dict(options=dict(interp="cubic")), ValueError, "cubic"),
        (dict(options=dict(step_size=0.1, grid_constructor=lambda f, y, t: t)), ValueError, "mutually exclusive"),
        (dict(options=dict(atol=1e-3)), ValueError, "not used"),
    ],
)
def test_bad_options_say_what_to_change(kwargs, error, match):
    with pytest.raises(error, match=match):
        trisolve.odeint(field, Y0, T_UNEVEN, **kwargs)


def test_bad_inputs_say_what_to_change():
    with pytest.raises(TypeError, match="tuple"):
        trisolve.odeint(field, (Y0, Y0), T_UNEVEN)
    with pytest.raises(TypeError, match="solve_ivp"):
        trisolve.odeint(field, Y0.numpy(), T_UNEVEN)
    with pytest.raises(ValueError, match="strictly"):
        trisolve.odeint(field, Y0, torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least two"):
        trisolve.odeint(field, Y0, torch.tensor([0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="with respect to t"):
        trisolve.odeint(field, Y0, T_UNEVEN.clone().requires_grad_(True))


def test_warnings_from_guesses_are_dropped_and_a_final_rows_warning_is_shown_once():
    """``y' = -y``: the true state is below 0.5 after t = 1, but the first round's guesses are y0 = 1 everywhere."""
    calls = {"guess": 0}

    def f(t, y):  # batched; warns for states the true solution never visits
        if bool(((t > 1.5) & (y[:, 0] > 0.5)).any()):
            calls["guess"] += 1
            warnings.warn("state out of range", UserWarning, stacklevel=2)
        return -y

    t = torch.linspace(0, 3, 31, dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        ys = trisolve.odeint(f, y0, t, batched=True)
    assert calls["guess"] > 0 and not [w for w in shown if "out of range" in str(w.message)]
    assert torch.allclose(ys[:, 0], torch.exp(-t), atol=1e-5)

    def g(t, y):  # warns on the true trajectory once t > 2.5
        if bool((t > 2.5).any()):
            warnings.warn("late time", UserWarning, stacklevel=2)
        return -y

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        trisolve.odeint(g, y0, t, batched=True)
    assert len([w for w in shown if "late time" in str(w.message)]) == 1
    with warnings.catch_warnings(record=True) as shown:  # with gradients: the adjoint's evaluation is the final look
        warnings.simplefilter("always")
        ys = trisolve.odeint(g, y0.clone().requires_grad_(True), t, batched=True)
    assert ys.requires_grad and len([w for w in shown if "late time" in str(w.message)]) == 1


@pytest.mark.filterwarnings("ignore:max_order is below")  # torchdiffeq's own note for max_order=3
@pytest.mark.parametrize("max_order, h", [(12, 0.01), (5, 0.1), (4, 0.1), (3, 0.1)])
def test_explicit_adams_matches_torchdiffeq(max_order, h):
    """A multistep method: row i reads up to max_order - 1 earlier rows (its first two steps are RK4).

    On an even grid (torchdiffeq's coefficients assume one), with a step that keeps the order stable.
    """
    t = -0.3 + h * torch.arange(31, dtype=torch.float64)
    opts = dict(max_order=max_order)
    ref = torchdiffeq.odeint(field, Y0, t, method="explicit_adams", options=opts)
    ys, info = trisolve.odeint(field, Y0, t, method="explicit_adams", options=opts, return_info=True)
    assert info.solution.converged and info.num_rounds <= 30
    assert ref.abs().max() < 10 and torch.allclose(ys, ref, rtol=0, atol=1e-12)
    if max_order <= 5:  # at high orders the default map gains little (23 of 30 rounds at order 11: see the docs)
        assert info.num_rounds < 30


def test_explicit_adams_gradients_match_torchdiffeq():
    w = torch.tensor([0.7, -0.4], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 2, 31, dtype=torch.float64)

    def f(t, y):
        return torch.tanh(w * y.flip(0)) - 0.1 * y

    g1 = torch.autograd.grad((trisolve.odeint(f, y0, t, method="explicit_adams") ** 2).sum(), (y0, w))
    g2 = torch.autograd.grad((torchdiffeq.odeint(f, y0, t, method="explicit_adams") ** 2).sum(), (y0, w))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)
