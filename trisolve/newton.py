"""Newton-type update maps: DEER (dense Jacobian), quasi-DEER (diagonal) and damping.

Every update map is one residual scan (DESIGN 9). With ``r = F(x) - x`` on the window rows
``[lo, hi)`` and window-local row ``t = i - lo``,

.. math::

    G(x)_i = x_i + \\delta_i, \\qquad \\delta_i = J_i\\, \\delta_{i-1} + r_i,
    \\qquad \\delta_{lo-1} = 0 .

``J_i = dF_i / dx_{i-1}`` makes ``G`` Newton's method on the triangular system
``x - F(x) = 0`` (DEER): the linearisation ``(I - L) delta = r`` of a lower-bidiagonal
system is exactly this recurrence. A diagonal ``J_i`` is quasi-DEER, and ``damping = lam > 0``
ELK's trust region: the Levenberg-Marquardt step, the minimiser of
``sum_t ||delta_t - J_t delta_{t-1} - r_t||^2 + lam ||delta_t||^2``, found by a parallel Kalman
filter and smoother (:func:`trisolve.elk.damped_scan`).

Notation (``w`` window rows, ``S`` independent samples = the ``batch_ndim`` leading event
axes, ``d`` values per sample, state axes flattened in C order):

=========  ====================  ==================================================
``r``      ``(w, S, d)``         first-order residual ``F(x) - x``
``J``      ``(w, S, d, d)``      dense ``dF_i/dx_{i-1}`` (row ``i``: output, column: input)
           ``(w, S, d)``         diagonal of it (quasi-DEER, or an elementwise ``F``)
``delta``  ``(w, S, d)``         Newton correction; ``G = x + delta``
=========  ====================  ==================================================

Memory: a dense Jacobian costs ``w * S * d^2`` entries. The map computes it and scans it in
chunks of ``chunk_rows`` rows (the carry ``delta`` of the last row of a chunk enters the next
chunk's first row), so its peak memory is ``O(chunk_rows * S * d^2 + w * S * d)`` whatever the
window: by default ``chunk_rows * S * d^2 <= 2^22`` entries (32 MiB in float64; the scan and
the forward-mode Jacobian hold a few such blocks at once). The diagonal map is ``O(w * S * d)``.

References (full entries in the docs' theory page): DEER = Lim, Zhu, Selfridge, Kasim,
ICLR 2024; ELK = Gonzalez, Warrington, Smith, Linderman, NeurIPS 2024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import device, from_host
from ._validate import check_float, check_int
from .elk import damped_scan
from .maps import UpdateMap
from .scan import affine_scan, apply_linear

__all__ = ["Newton", "jacobian_rows"]

_CHUNK_ENTRIES = 2**22  # default bound on chunk_rows * S * d^2 (dense) or chunk_rows * S * d (diagonal)


# ----------------------------------------------------------------------------- Jacobians


def _split_event(event: tuple[int, ...], batch_ndim: int) -> tuple[int, int]:
    S = math.prod(event[:batch_ndim])
    d = math.prod(event[batch_ndim:])
    return S, d


def _take_diagonal(J: Any, xp: Any) -> Any:
    """``(..., d, d) -> (..., d)``."""
    d = J.shape[-1]
    flat = xp.reshape(J, (*J.shape[:-2], d * d))
    idx = xp.asarray(np.arange(0, d * d, d + 1), device=device(J))
    return xp.take(flat, idx, axis=-1)


def _check_jacobian(name: str, out: Any, w: int, event: tuple[int, ...], batch_ndim: int, x: Any) -> bool:
    """Validate a user Jacobian; return whether it is dense."""
    S, d = _split_event(event, batch_ndim)
    diag_shape = (w, *event)
    dense_shape = (w, *event[:batch_ndim], d, d)
    if type(out) is not type(x):
        raise TypeError(f"{name} returned a {type(out).__name__} for a trajectory of {type(x).__name__}; return it in the trajectory's library.")
    if out.dtype != x.dtype:
        raise TypeError(f"{name} returned dtype {out.dtype} for a {x.dtype} trajectory; cast it to {x.dtype}.")
    shape = tuple(out.shape)
    if shape == diag_shape:
        return False
    if shape == dense_shape:
        return True
    raise ValueError(
        f"{name} returned shape {shape} for {w} rows; expected {dense_shape} (dense: batch axes, then d x d with the "
        f"state axes flattened, d = {d}) or {diag_shape} (the diagonal, for an elementwise F)."
    )


def _torch_jvp_columns(func: Any, rows: Any, dense: bool, d: int, S: int, chunk: int) -> Any:
    """Forward-mode Jacobian of a row-wise map ``func: (w, *event) -> (w, *event)`` at ``rows``.

    Row ``t`` of the output may depend only on row ``t`` of the input (that is what the
    callers arrange), so one JVP with the basis vector ``e_k`` placed in every row and every
    sample gives column ``k`` of every row's ``d x d`` block: ``d`` JVPs in all, batched
    with ``torch.func.vmap`` in groups of ``chunk`` columns. ``dense=False`` keeps only the
    diagonal entry of each column (memory ``O(chunk * w * S * d)`` at a time).
    """
    import torch  # local: only reached for torch arrays
    from torch.func import jvp, vmap

    w = rows.shape[0]
    event = tuple(rows.shape[1:])
    eye = torch.eye(d, dtype=rows.dtype, device=rows.device)

    def column(v):  # v: (w, *event)
        return jvp(func, (rows,), (v,))[1]

    cols = []
    for k0 in range(0, d, chunk):
        k1 = min(d, k0 + chunk)
        V = eye[k0:k1, None, None, :].expand(k1 - k0, w, S, d).reshape(k1 - k0, w, *event)
        out = vmap(column)(V).reshape(k1 - k0, w, S, d)  # (kc, w, S, d): column k of J for every row
        if not dense:
            k = torch.arange(k0, k1, device=rows.device)
            out = out[torch.arange(k1 - k0, device=rows.device), :, :, k]  # (kc, w, S): entry (k, k)
        cols.append(out)
    J = torch.cat(cols, dim=0)
    return J.permute(1, 2, 3, 0) if dense else J.permute(1, 2, 0)  # (w, S, d, d) [out, in] or (w, S, d)


def _fd_columns(func: Any, rows: Any, f0: Any, dense: bool, d: int, S: int, xp: Any) -> Any:
    """Forward-difference Jacobian of a row-wise map ``func: (w, *event) -> (w, *event)`` at ``rows``.

    Like :func:`_torch_jvp_columns`, column ``k`` of every row's ``d x d`` block comes from one
    call with component ``k`` of every row and sample moved at once:
    ``(func(rows + h_k e_k) - f0) / h_k`` with ``h_k = sqrt(eps) * max(1, |x_k|)`` rounded so that
    ``x_k + h_k`` is exact (the usual forward-difference step: about half the digits of the
    dtype, which is all Newton's rate needs; the fixed point does not depend on ``J``).
    ``f0 = func(rows)``. ``d`` calls; returns ``(w, S, d, d)`` [out, in] or the diagonal ``(w, S, d)``.
    """
    w = rows.shape[0]
    event = tuple(rows.shape[1:])
    R = xp.reshape(rows, (w, S, d))
    F0 = xp.reshape(f0, (w, S, d))
    step = math.sqrt(float(xp.finfo(rows.dtype).eps))
    eye = xp.eye(d, dtype=rows.dtype, device=device(rows))
    cols = []
    for k in range(d):
        xk = R[..., k]  # (w, S)
        h = (xk + step * xp.maximum(xp.abs(xk), xp.ones_like(xk))) - xk  # exactly representable
        fk = xp.reshape(func(xp.reshape(R + h[..., None] * eye[k, :], (w, *event))), (w, S, d))
        col = (fk - F0) / h[..., None]  # computed now: func may return a view of a reused buffer
        cols.append(col if dense else col[..., k])
    return xp.stack(cols, axis=-1)  # (w, S, d, d) [out, in] or (w, S, d)


def jacobian_rows(
    system: Any, x: Any, lo: int, hi: int, *, dense: bool, xp: Any, tables: NewtonTables | None = None, derivatives: str = "auto", f0: Any = None
) -> tuple[Any, bool]:
    """``J_i = dF_i / dx_{i-1}`` at the iterate ``x`` for the rows ``i`` in ``[lo, hi)``.

    Everything comes from the system protocol (:class:`~trisolve.TriangularSystem`): the
    function it differentiates is ``system.row_function(x, lo, hi)`` (a
    :class:`~trisolve.RowFunction` of the rows ``x[lo-1 : hi-1]``), and ``J_i = a_i I + b_i
    d(func)_i`` with ``system.chain_coefficients`` (``J_i = d(func)_i`` when ``None``). The
    derivative of ``func`` is the user's Jacobian when ``system.has_jacobian``, else, for
    PyTorch arrays, forward-mode automatic differentiation (``torch.func.jvp`` under ``vmap``):
    ``d`` Jacobian-vector products, each with a basis vector in every row at once; ``vmap``
    materialises the ``reads`` rows ``func`` reads once per batched column, so its columns are
    batched in groups that keep ``columns x reads x S x d <= 2^22``. For a black box this
    differentiates ``fn(x, lo, hi)`` with respect to the rows ``x[lo-1 : hi-1]`` moved
    together, which is ``dF_i/dx_{i-1}`` when ``F_i`` reads no row before ``i - 1`` (a Markov
    system; see :class:`Newton` for banded ones).

    ``tables`` (from :meth:`Newton.prepare`) holds the device copies of the chain
    coefficients; without it they are moved from the host here.

    ``derivatives="finite-differences"`` takes forward differences of ``func`` instead, on any
    namespace (:func:`_fd_columns`): ``d`` evaluations for the rows (plus one at ``x`` when
    ``func`` is not ``F``), counted in ``tables.extra_evals``. ``f0``: ``F`` of the rows at
    ``x`` when the caller has it (used when ``func`` is ``F``).

    Returns
    -------
    J : array, shape ``(w, S, d, d)`` or ``(w, S, d)``
    dense : bool
        Whether ``J`` is dense. A ``jacobian`` callable that returns the diagonal (an
        elementwise ``F``) gives a diagonal ``J`` even when a dense one was asked for: it is
        exact then.
    """
    w = hi - lo
    event = tuple(x.shape[1:])
    batch_ndim = system.batch_ndim
    S, d = _split_event(event, batch_ndim)
    chain = system.chain_coefficients  # None: func is F itself
    dev = device(x)
    if derivatives == "finite-differences":
        rf = system.row_function(x, lo, hi, xp=xp)
        if chain is not None or f0 is None:
            f0 = rf.func(rf.rows)
            extra = w * (d + 1)
        else:
            extra = w * d
        J = _fd_columns(rf.func, rf.rows, f0, dense, d, S, xp)
        got_dense = dense
        if tables is not None:
            tables.extra_evals += extra
    elif system.has_jacobian:
        rf = system.row_function(x, lo, hi, xp=xp)
        out = rf.jacobian()
        got_dense = _check_jacobian("jacobian", out, w, event, batch_ndim, x)
        J = xp.reshape(out, (w, S, d, d) if got_dense else (w, S, d))
        if got_dense and not dense:
            J, got_dense = _take_diagonal(J, xp), False
    else:
        from array_api_compat import is_torch_namespace

        if not is_torch_namespace(xp):
            raise TypeError(
                f"Newton needs the Jacobians dF_i/dx_(i-1): give the {type(system).__name__} a jacobian= callable "
                "(NumPy and array-api-strict arrays have no automatic differentiation), or use PyTorch tensors."
            )
        import torch

        rf = system.row_function(x.detach(), lo, hi, xp=xp)
        # vmap materialises the rows func reads once per batched column: bound columns x rows read x S x d
        chunk = max(1, min(d, _CHUNK_ENTRIES // max(1, rf.reads * S * d)))
        try:
            with torch.enable_grad():
                J = _torch_jvp_columns(rf.func, rf.rows, dense, d, S, chunk)
        except Exception as exc:  # torch.func cannot trace every function: say what to do instead
            raise TypeError(
                "Newton could not differentiate the system with torch.func (it needs F written in torch operations, "
                f"without in-place writes to its inputs or host round trips); give the system a jacobian= callable. Cause: {exc!r}"
            ) from exc
        got_dense = dense
    if chain is not None:  # J_i = a_i I + b_i d(func)_i
        if tables is None:
            tables = NewtonTables.build(system, x, xp=xp)
        a, b = tables.a[lo - 1 : hi - 1], tables.b[lo - 1 : hi - 1]
        if got_dense:
            eye = xp.eye(d, dtype=x.dtype, device=dev)
            J = xp.reshape(a, (w, 1, 1, 1)) * eye + xp.reshape(b, (w, 1, 1, 1)) * J
        else:
            J = xp.reshape(a, (w, 1, 1)) + xp.reshape(b, (w, 1, 1)) * J
    return J, got_dense


# ----------------------------------------------------------------------------- secant slopes


class SecantState:
    """Per-solve memory of ``Newton("secant")``: the last round's inputs and values.

    ``x_in`` ``(w', *event)`` holds rows ``lo' - 1 .. hi' - 2`` of that round's iterate and
    ``f`` ``(w', *event)`` the values ``F_i`` of rows ``lo' .. hi' - 1``.
    """

    def __init__(self) -> None:
        self.lo: int | None = None
        self.x_in: Any = None
        self.f: Any = None

    def slopes(self, x: Any, f: Any, lo: int, hi: int, *, xp: Any) -> Any:
        """Elementwise secant slopes ``clip((F_i - F_i') / (x_{i-1} - x_{i-1}'), 0, 1)`` ``(w, *event)``.

        Primes are the previous round. Rows or entries without a usable difference (first
        round, a row new to the window, ``x_{i-1}`` unchanged, a non-finite quotient) get 0.
        Then records this round. No host read.
        """
        w = hi - lo
        x_in = xp.asarray(x[lo - 1 : hi - 1, ...], copy=True)
        J = xp.zeros_like(f)
        if self.lo is not None:
            s = lo - self.lo  # the window never moves back: s >= 0
            m = min(w, self.f.shape[0] - s)
            if m > 0:
                dx = x_in[:m, ...] - self.x_in[s : s + m, ...]
                df = f[:m, ...] - self.f[s : s + m, ...]
                nz = dx != 0
                q = xp.where(nz, df / xp.where(nz, dx, xp.ones_like(dx)), xp.zeros_like(dx))
                q = xp.where(xp.isfinite(q), q, xp.zeros_like(q))
                q = xp.minimum(xp.maximum(q, xp.zeros_like(q)), xp.ones_like(q))
                J = q if m == w else xp.concat([q, J[m:, ...]], axis=0)
        self.lo, self.x_in, self.f = lo, x_in, xp.asarray(f, copy=True)
        return J


# ----------------------------------------------------------------------------- the map


class NewtonTables:
    """Per-solve values of a :class:`Newton` map (:meth:`Newton.prepare`).

    ``system``; for a semilinear system ``a`` ``(n,)`` and ``b = B[:, 0]`` ``(n,)`` on the
    trajectory's device in its dtype; ``secant`` the round-to-round memory of
    ``Newton("secant")``; ``extra_evals`` the evaluations spent on finite differences.
    """

    def __init__(self, system: Any, a: Any = None, b: Any = None, secant: SecantState | None = None):
        self.system, self.a, self.b, self.secant = system, a, b, secant
        self.extra_evals = 0  # evaluations of F (or g) spent on finite differences, added to Solution.num_evals

    @classmethod
    def build(cls, system: Any, x: Any, *, xp: Any, secant: bool = False) -> NewtonTables:
        a = b = None
        chain = system.chain_coefficients
        if chain is not None:
            a = from_host(chain[0], xp, dtype=x.dtype, device=device(x))
            b = from_host(chain[1], xp, dtype=x.dtype, device=device(x))
        return cls(system, a, b, SecantState() if secant else None)


@dataclass(frozen=True)
class Newton(UpdateMap):
    """Newton's method on the triangular system: ``G(x) = x + scan(J, F(x) - x)``.

    .. math::

        \\delta_i = J_i\\, \\delta_{i-1} + (F_i(x) - x_i), \\quad
        \\delta_{lo-1} = 0, \\qquad G_i(x) = x_i + \\delta_i,

    with ``J_i = dF_i/dx_{i-1}`` at the current iterate: ``jacobian="dense"`` is DEER [DEER]_
    (quadratic convergence; on a linear Markov system one round is exact),
    ``jacobian="diagonal"`` keeps only the diagonal of ``J_i`` (quasi-DEER [ELK]_: ``O(d)``
    instead of ``O(d^3)`` per row, more rounds). ``jacobian="secant"`` needs no derivatives:
    each component's ``J`` is the slope of ``F`` observed between the last two rounds,
    ``(F_i - F_i') / (x_{i-1} - x_{i-1}')``, clipped to ``[0, 1]`` -- between the one-step
    map (0) and the Picard map (1); it is the default when no Jacobian is available. The scan
    is a log-depth associative scan on the arrays' device (:func:`trisolve.affine_scan`); the
    values are computed as ``G_i = F_i(x) + J_i delta_{i-1}``.

    Jacobians come from the system's ``jacobian=`` callable, or, for PyTorch tensors,
    automatically from ``torch.func`` (``d`` batched Jacobian-vector products per chunk of
    rows; the diagonal map takes the diagonal of the dense Jacobian column by column, so it
    costs the same ``d`` JVPs but keeps ``O(w S d)`` memory -- give the system a ``jacobian``
    callable that returns the diagonal when ``F`` is elementwise, one cheap call).
    ``derivatives="finite-differences"`` takes forward differences of ``F`` instead, on any
    array library: ``d`` more evaluations of ``F`` per row and round (each moves one state
    component of every row at once, so they batch like the round itself), counted in
    ``Solution.num_evals``. Half the dtype's digits are enough for Newton's rate, and the
    fixed point -- the answer -- does not depend on ``J`` at all.

    Guarantees are those of every map: rows freeze by the two-residual test (the first-order
    residual and ``delta``), the frozen prefix grows by at least one row per round (at most
    ``n`` rounds), and a (row, sample) whose correction ``J_i delta_{i-1}`` is not finite (a
    scan of expanding Jacobians can overflow) falls back to the one-step value ``F_i(x)``.

    Banded systems: a :class:`SemilinearSystem` with ``p > 1`` is refused (rewrite it on the
    augmented state ``(x_i, x_{i-1}, ..., x_{i-p+1})``, which is Markov). For a
    :class:`BlackBoxSystem` whose ``F_i`` also reads rows before ``i - 1`` the automatic
    Jacobian sums ``dF_i/dx_j`` over the rows read: the map keeps its fixed point and its
    guarantees but loses Newton's convergence rate; use the augmented state there too.

    Parameters
    ----------
    jacobian : {"dense", "diagonal", "secant"}
        Which Jacobian the scan uses.
    damping : float
        ``lam >= 0``, ELK's trust-region parameter [ELK]_: ``delta`` is then the
        Levenberg-Marquardt step, the minimiser of
        ``sum_i ||delta_i - J_i delta_{i-1} - r_i||^2 + lam ||delta_i||^2`` (the posterior mean
        of a linear-Gaussian model, by a parallel Kalman filter and smoother,
        :func:`trisolve.elk.damped_scan`; ``O(w S d^3)`` work dense, ``O(w S d)`` diagonal).
        0 is Newton; a larger ``lam`` shortens the step where Newton's would overshoot (an
        expanding ``J``). A damped step is not exact on a row that reads only final rows, so
        the first unconverged row freezes at its one-step value ``F_i(x)``; every guarantee
        holds. Chunks of rows (``chunk_rows``) are smoothed one after another, joined by the
        carry ``delta``.
    chunk_rows : int or None
        Rows whose Jacobians are held at once (see the module notes); ``None`` keeps
        ``chunk_rows * S * d^2 <= 2^22`` (dense) or ``chunk_rows * S * d <= 2^22``.
    derivatives : {"auto", "finite-differences"}
        ``"auto"``: the ``jacobian=`` callable, else ``torch.func`` for PyTorch tensors, else
        a ``TypeError`` before the first round. ``"finite-differences"``: forward differences
        of ``F`` on any namespace (``jacobian="dense"`` or ``"diagonal"``).

    Examples
    --------
    A tanh RNN ``h_i = tanh(W h_{i-1} + u_i)`` with its Jacobian ``diag(1 - h_i^2) W``:

    >>> import numpy as np, trisolve
    >>> rng = np.random.default_rng(0)
    >>> W, u = 0.5 * rng.standard_normal((3, 3)), rng.standard_normal((201, 3))
    >>> F = lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1] @ W.T + u[lo:hi])
    >>> J = lambda x, lo, hi: (1 - F(x, lo, hi) ** 2)[:, :, None] * W
    >>> sys = trisolve.BlackBoxSystem(F, 200, jacobian=J)
    >>> sol = trisolve.solve(sys, trisolve.Jacobi(), np.zeros(3), update_map=trisolve.Newton(), atol=1e-12)
    >>> ref = trisolve.forward_substitution(sys, np.zeros(3))
    >>> bool(np.abs(sol.trajectory - ref).max() < 1e-10), sol.num_rounds <= 10
    (True, True)
    """

    jacobian: str = "dense"
    damping: float = 0.0
    chunk_rows: int | None = None
    derivatives: str = "auto"

    def __post_init__(self) -> None:
        if self.jacobian not in ("dense", "diagonal", "secant"):
            raise ValueError(f'jacobian must be "dense", "diagonal" or "secant", got {self.jacobian!r}.')
        if self.derivatives not in ("auto", "finite-differences"):
            raise ValueError(f'derivatives must be "auto" or "finite-differences", got {self.derivatives!r}.')
        if self.derivatives != "auto" and self.jacobian == "secant":
            raise ValueError(
                'Newton("secant") estimates its slopes from the iterates; derivatives="finite-differences" needs jacobian="dense" or "diagonal".'
            )
        object.__setattr__(self, "damping", check_float("damping", self.damping, 0.0, hint="(0 is Newton)"))
        if self.chunk_rows is not None:
            object.__setattr__(self, "chunk_rows", check_int("chunk_rows", self.chunk_rows, 1, hint="or None (automatic)"))

    @property
    def order(self) -> None:  # type: ignore[override]
        return None

    @property
    def dense(self) -> bool:
        return self.jacobian == "dense"

    @property
    def damped(self) -> bool:  # type: ignore[override]
        return self.damping > 0

    def check(self, system: Any) -> None:
        band = system.band
        if self.jacobian != "secant" and band is not None and band > 1:
            raise ValueError(
                f"Newton needs a Markov system (F_i reads x_(i-1) only); this {type(system).__name__} has a band p = {band}. "
                "Rewrite it on the augmented state (x_i, ..., x_(i-p+1)), or use Newton('secant'), Unrolled() or Picard()."
            )

    def prepare(self, system: Any, x: Any, *, xp: Any) -> NewtonTables:
        """Device tables; raises ``TypeError`` here (before any round) when no Jacobian can be had."""
        from array_api_compat import is_torch_namespace

        if self.jacobian != "secant" and self.derivatives == "auto" and not system.has_jacobian and not is_torch_namespace(xp):
            raise TypeError(
                f"Newton(jacobian={self.jacobian!r}) needs the Jacobians dF_i/dx_(i-1): give the {type(system).__name__} a jacobian= "
                "callable (NumPy and array-api-strict arrays have no automatic differentiation), use PyTorch tensors, "
                "pass derivatives='finite-differences' (d more evaluations of F per row and round), "
                "or use Newton('secant'), which estimates them from the iterates."
            )
        if self.jacobian != "secant" and self.derivatives == "auto" and not system.has_jacobian and system.num_ranks > 1:
            raise ValueError(
                f"Newton(jacobian={self.jacobian!r}) differentiates F with torch.func, which is not with several ranks "
                f"({system.num_ranks} share this system's evaluations; torch.func cannot differentiate through the "
                "collectives). Give the system a jacobian= callable, pass derivatives='finite-differences', use "
                "Newton('secant'), or pass solver=None for a default that runs on several ranks."
            )
        return NewtonTables.build(system, x, xp=xp, secant=self.jacobian == "secant")

    def num_evals(self, tables: NewtonTables) -> int:
        """Evaluations of ``F`` (or ``g``) spent on finite-difference Jacobians."""
        return tables.extra_evals

    def stats(self, tables: NewtonTables) -> dict[str, int]:
        """``num_jacobian_evals``: the evaluations of :meth:`num_evals`, on their own."""
        return {"num_jacobian_evals": tables.extra_evals}

    def rows_per_chunk(self, S: int, d: int) -> int:
        """Rows whose Jacobians are computed and scanned at once."""
        if self.chunk_rows is not None:
            return int(self.chunk_rows)
        per_row = S * d * d if self.dense else S * d
        return max(1, _CHUNK_ENTRIES // per_row)

    def apply(self, tables: NewtonTables, x: Any, f: Any, lo: int, hi: int, *, xp: Any) -> tuple[Any, Any]:
        """``(G, R)`` with ``G_i = F_i + J_i delta_{i-1}``, ``R_i = r_i + J_i delta_{i-1}``, chunk by chunk."""
        system = tables.system
        w = hi - lo
        event = tuple(x.shape[1:])
        S, d = _split_event(event, system.batch_ndim)
        r = f - x[lo:hi, ...]  # (w, *event)
        rr = xp.reshape(r, (w, S, d))
        secant = tables.secant.slopes(x, f, lo, hi, xp=xp) if tables.secant is not None else None
        c = self.rows_per_chunk(S, d)
        parts, carry = [], None
        for t0 in range(0, w, c):
            t1 = min(w, t0 + c)
            if secant is not None:
                J = xp.reshape(secant[t0:t1, ...], (t1 - t0, S, d))
                kind = "diagonal"
            else:
                J, dense = jacobian_rows(system, x, lo + t0, lo + t1, dense=self.dense, xp=xp, tables=tables, derivatives=self.derivatives,
                                         f0=f[t0:t1, ...])  # fmt: skip
                kind = "dense" if dense else "diagonal"
            rc = rr[t0:t1, ...]
            if self.damping:  # ELK: the Levenberg-Marquardt step given the carry; corr = delta - r
                corr = damped_scan(J, rc, self.damping, kind=kind, xp=xp, carry=carry) - rc
            else:
                # delta_{t-1} for every row of the chunk: the carry from the previous chunk, then the scan
                first = xp.zeros_like(rc[:1, ...]) if carry is None else carry
                rc_in = rc if carry is None else xp.concat([rc[:1, ...] + apply_linear(J[:1, ...], carry, kind=kind, xp=xp), rc[1:, ...]], axis=0)
                delta = affine_scan(J, rc_in, xp=xp)  # (c, S, d)
                corr = apply_linear(J, xp.concat([first, delta[:-1, ...]], axis=0), kind=kind, xp=xp)  # J_i delta_{i-1}
            # non-finite fallback: a (row, sample) whose correction overflowed takes the one-step value
            ok = xp.all(xp.isfinite(corr), axis=-1, keepdims=True)
            corr = xp.where(ok, corr, xp.zeros_like(corr))
            carry = (rc + corr)[-1:, ...]
            parts.append(corr)
        corr = xp.reshape(parts[0] if len(parts) == 1 else xp.concat(parts, axis=0), (w, *event))
        return f + corr, r + corr
