"""Lower-triangular systems ``x_i = F_i(x_0, ..., x_{i-1})``, ``i = 1..n``.

Index convention (everywhere in trisolve): a trajectory ``x`` has shape ``(n + 1, *event)``;
row 0 is given; row ``i`` may read only rows ``< i``; a window is a half-open row range
``[lo, hi)`` with ``1 <= lo < hi <= n + 1``. Per-row tables (``a``, ``B``, ``c``, ``sigma``)
have ``n`` entries, entry ``i - 1`` belonging to row ``i``.

Two kinds of system:

* :class:`BlackBoxSystem` -- any batched ``F``: ``fn(x, lo, hi)`` returns ``F_i(x[:i])`` for
  every ``i`` in ``[lo, hi)`` as one array ``(hi - lo, *event)``, in one batched computation.
* :class:`SemilinearSystem` -- the structure shared by diffusion samplers, explicit ODE
  integrators and many RNNs,

  .. math:: x_i = a_i x_{i-1} + \\sum_{q=0}^{p-1} B_{i,q}\\, g_{i-1-q}(x_{i-1-q}) + c_i,

  with scalar float64 tables ``a`` ``(n,)`` and ``B`` ``(n, p)``, a fixed forcing ``c``
  ``(n, *event)`` and an expensive map ``g`` evaluated for a block of rows in one call.
  Values ``g_j`` of final rows are kept and never recomputed.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._backend import device as _device
from ._backend import from_host, mask_from_host, shares_memory
from ._validate import check_int

__all__ = [
    "TriangularSystem",
    "BlackBoxSystem",
    "SemilinearSystem",
    "Evaluation",
    "RowFunction",
]


@dataclass(frozen=True)
class Evaluation:
    """One batched evaluation of a system over the window ``[lo, hi)``.

    Attributes
    ----------
    f : array, shape ``(hi - lo, *event)``
        One-step values ``F_i(x)``; never a view of the trajectory.
    num_evals : int
        Rows of the expensive map evaluated by this call.
    num_sample_evals : int or None
        ``(row, sample)`` pairs of the expensive map evaluated by this call, when it evaluated
        some samples of a row and not others (:meth:`TriangularSystem.evaluate_samples`);
        ``None``: whole rows, ``num_evals`` times the samples.
    """

    f: Any
    num_evals: int
    num_sample_evals: int | None = None


@dataclass(frozen=True)
class RowFunction:
    """What a Newton map, the default method and the adjoint differentiate for the rows ``[lo, hi)``.

    ``J_i = dF_i/dx_{i-1} = a_i I + b_i d(func)_i/d(rows)_i`` with ``(a, b)`` the system's
    :attr:`TriangularSystem.chain_coefficients`, or ``J_i = d(func)_i/d(rows)_i`` when those
    are ``None`` (then ``func(rows)`` is ``F_i`` itself).

    Attributes
    ----------
    func : callable ``func(rows) -> array (hi - lo, *event)``
        Row-wise: output row ``t`` depends on input row ``t`` only (the other rows of the
        trajectory held at the iterate); written in the trajectory's array operations, so
        ``torch.func`` can differentiate it for PyTorch tensors.
    rows : array, shape ``(hi - lo, *event)``
        Where to differentiate: the rows ``x[lo - 1 : hi - 1]``.
    jacobian : callable ``jacobian() -> array`` or None
        The Jacobian of ``func`` at ``rows`` from the user, dense ``(hi - lo, *batch, d, d)`` or
        diagonal ``(hi - lo, *event)``; ``None``: none given (automatic or finite differences).
    reads : int
        Rows of the trajectory one call of ``func`` materialises (bounds the batched columns
        of the automatic Jacobian).
    """

    func: Callable[[Any], Any]
    rows: Any
    jacobian: Callable[[], Any] | None = None
    reads: int = 0


class TriangularSystem(abc.ABC):
    """What :func:`trisolve.solve` and everything it calls need from a system: subclass it.

    The minimum a subclass provides is ``n`` (rows to solve, an attribute or property) and
    :meth:`evaluate`; every other member has a default that describes a black box (no linear
    part, no band declared, no user Jacobian, ones for ``sigma``). :class:`BlackBoxSystem`
    and :class:`SemilinearSystem` are subclasses that override the defaults they know better.

    * ``n`` rows; ``batch_ndim`` leading event axes that index independent samples (0);
    * ``sigma``: per-row scales of the tolerance, host float64 ``(n,)`` (ones);
    * ``linear_coefficients``: host float64 ``(n,)`` with ``a_i``, the part of ``F_i`` that is
      ``a_i x_{i-1}`` (what :class:`~trisolve.Unrolled` unrolls), or ``None`` (default);
    * ``linear_rows``: host bool ``(n + 1,)``, rows that read no expensive term, so
      ``linear_step`` gives them exactly once the row before is final (none);
    * ``new_cache(x, *, xp)``: the per-solve value ``evaluate`` and ``linear_step`` use (device
      tables built once, kept values); it also checks the system against the trajectory
      buffer ``x`` ``(n + 1, *event)`` and raises ``ValueError`` on a mismatch (``None``);
    * ``evaluate(x, lo, hi, cache, *, xp)``: one batched evaluation of rows ``[lo, hi)``
      (abstract);
    * ``evaluate_samples(x, lo, hi, sample_lo, sample_hi, cache, *, xp)``: the same where
      sample ``s`` needs only its rows ``[sample_lo[s], sample_hi[s])`` (a per-sample solve);
      default: :meth:`evaluate` of every row and sample (correct, no saving);
    * ``band``: how many earlier rows ``F_i`` reads, ``1`` for a Markov system, or ``None``
      when not declared (default; Newton then treats ``F_i`` as a function of ``x_{i-1}``
      with the earlier rows held, as for a black box);
    * ``has_jacobian``: whether :meth:`row_function` comes with a user Jacobian (``False``);
    * ``num_ranks``: how many ranks share the evaluations (1; more after
      :func:`trisolve.distribute`, whose copy says so);
    * ``agree(**arguments)``: on a system several ranks share, check that every rank solves
      it with the same arguments (:func:`trisolve.solve` calls it before the first round when
      ``num_ranks > 1``); nothing to check on one rank;
    * ``chain_coefficients``: host float64 ``(a, b)``, each ``(n,)``, when the Jacobian is
      ``J_i = a_i I + b_i d(func)_i`` of :meth:`row_function` (``None``);
    * ``row_function(x, lo, hi, *, xp)``: the :class:`RowFunction` that Newton, the default
      method and the adjoint differentiate (default: :meth:`evaluate` with the rows
      ``x[lo - 1 : hi - 1]`` moved together);
    * ``with_batched_function(wrap)``: the same system with its expensive batched function
      ``f`` replaced by ``wrap(f, whole)`` (what :func:`trisolve.distribute` needs);
    * ``describe()``: host values that define the system besides its functions (ranks of a
      distributed solve check that theirs are equal).

    Neither ``evaluate`` nor ``linear_step`` reads device values on the host or builds device
    arrays from host data (that happens once, in ``new_cache``).

    Examples
    --------
    A protocol class with the minimum, ``x_i = 0.5 x_{i-1} + 1``:

    >>> import numpy as np, trisolve
    >>> class Halving(trisolve.TriangularSystem):
    ...     n = 4
    ...     def evaluate(self, x, lo, hi, cache, *, xp):
    ...         return trisolve.Evaluation(f=0.5 * x[lo - 1 : hi - 1] + 1.0, num_evals=hi - lo)
    >>> trisolve.solve(Halving(), None, np.zeros(())).trajectory.tolist()
    [0.0, 1.0, 1.5, 1.75, 1.875]
    """

    n: int
    batch_ndim: int = 0

    @property
    def sigma(self) -> np.ndarray:
        """Per-row tolerance scales ``(n,)``: ones."""
        return np.ones(self.n)

    @property
    def linear_coefficients(self) -> np.ndarray | None:
        """``a`` ``(n,)`` of the linear part ``a_i x_{i-1}``; ``None``: none exposed."""
        return None

    @property
    def linear_rows(self) -> np.ndarray:
        """``(n + 1,)`` bool: rows computable from the previous row alone (none)."""
        return np.zeros(self.n + 1, dtype=bool)

    @property
    def band(self) -> int | None:
        """Earlier rows ``F_i`` reads (1: Markov); ``None``: not declared."""
        return None

    @property
    def has_jacobian(self) -> bool:
        """Whether :meth:`row_function` carries a user Jacobian."""
        return False

    @property
    def num_ranks(self) -> int:
        """How many ranks share the evaluations: 1, unless :func:`trisolve.distribute` split the batched function."""
        return _ranks_of(self._batched_function())

    @property
    def chain_coefficients(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(a, b)`` host ``(n,)`` each when ``J_i = a_i I + b_i d(func)_i``; ``None``: ``J_i = d(func)_i``."""
        return None

    def agree(self, **arguments: Any) -> None:
        """Check that every rank sharing the evaluations solves with the same ``arguments``; one rank: nothing to check.

        ``arguments``: the solve's solver, row 0 and options, by name. A system whose batched
        function several ranks evaluate (:func:`trisolve.distribute`) hands them to that
        function (:meth:`SplitFunction.agree`), which raises on every rank when they differ.
        """
        _agree(self._batched_function(), arguments)

    def _batched_function(self) -> Any:
        """The batched function :meth:`with_batched_function` wraps (``None``: :meth:`evaluate` itself)."""
        return None

    def new_cache(self, x: Any, *, xp: Any) -> Any:
        """The per-solve value :meth:`evaluate` receives: ``None``."""
        return None

    def linear_step(self, x: Any, i: int, cache: Any, *, xp: Any) -> Any:
        """Row ``i`` from row ``i - 1`` alone, for a row of :attr:`linear_rows` (none by default)."""
        raise NotImplementedError(f"{type(self).__name__} declares no linear rows")

    @abc.abstractmethod
    def evaluate(self, x: Any, lo: int, hi: int, cache: Any, *, xp: Any) -> Evaluation:
        """One batched evaluation of ``F_i(x)`` for the rows ``[lo, hi)`` (rows ``< lo`` are final)."""

    def evaluate_samples(self, x: Any, lo: int, hi: int, sample_lo: np.ndarray, sample_hi: np.ndarray, cache: Any, *,
                         xp: Any) -> Evaluation:  # fmt: skip
        """``F_i(x)`` for the rows ``[lo, hi)`` where sample ``s`` needs only the rows ``[sample_lo[s], sample_hi[s])``.

        The hook of a per-sample solve (:func:`trisolve.solve`, ``per_sample``): each of the
        ``S`` samples (the ``batch_ndim`` leading event axes, flattened in C order) has its own
        frozen prefix -- its rows ``< sample_lo[s]`` are final -- and its own window; an empty
        range (``sample_lo[s] == sample_hi[s]``) means the sample needs nothing this round.
        ``sample_lo``, ``sample_hi``: host int arrays ``(S,)``, inside ``[lo, hi]``. Returns
        ``f`` ``(hi - lo, *event)``; its values outside a sample's range are never read (they
        may be stale). The default evaluates every row and sample with :meth:`evaluate`:
        correct, without saving anything; :class:`SemilinearSystem` evaluates its ``g`` only
        where a sample needs it.
        """
        return self.evaluate(x, lo, hi, cache, xp=xp)

    def evaluate_parts(self, x: Any, lo: int, hi: int, cache: Any, *, xp: Any) -> tuple[Callable[..., Any] | None, tuple, int]:
        """:meth:`evaluate` as ``(assemble, inputs, num_evals)``: ``F = assemble(*inputs, xp=xp)``, for the fused compiled round.

        Everything :meth:`evaluate` does before ``F``'s last, cheap arithmetic has run (the
        expensive call, the kept values); ``assemble`` is that arithmetic as a pure device
        function (a module-level function of arrays and static Python values), which the fused
        compiled round (:func:`trisolve.compiled.fused_round`) traces with the rest of the
        round. The default: ``(None, (F,), num_evals)`` from :meth:`evaluate` (nothing left).
        """
        ev = self.evaluate(x, lo, hi, cache, xp=xp)
        return None, (ev.f,), ev.num_evals

    def row_function(self, x: Any, lo: int, hi: int, *, xp: Any) -> RowFunction:
        """``F_i`` for ``i`` in ``[lo, hi)`` as a function of the rows ``x[lo - 1 : hi - 1]`` moved together.

        The default evaluates the whole trajectory with those rows replaced (a fresh
        :meth:`new_cache` per call); subclasses that know a cheaper function override it.
        """
        head, tail = x[: lo - 1, ...], x[hi - 1 :, ...]

        def func(rows: Any) -> Any:
            buf = xp.concat([head, rows, tail], axis=0)
            return self.evaluate(buf, lo, hi, self.new_cache(buf, xp=xp), xp=xp).f

        return RowFunction(func, x[lo - 1 : hi - 1, ...], reads=self.n + 1)

    def with_batched_function(self, wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]]) -> TriangularSystem:
        """The same system with its expensive batched function ``f`` replaced by ``wrap(f, whole)``.

        ``whole`` is ``True`` when ``f(x, lo, hi)`` receives the whole trajectory and returns
        ``F`` for rows ``[lo, hi)``, ``False`` when ``f(x_rows, lo, hi)`` receives only those
        rows. The default wraps :meth:`evaluate` as a black box ``(x, lo, hi) -> F`` and keeps
        every other member of this system.
        """
        return _Rebatched(self, wrap(self._evaluate_rows, True))

    def _evaluate_rows(self, x: Any, lo: int, hi: int) -> Any:
        from ._backend import namespace

        xp = namespace(x)
        return self.evaluate(x, lo, hi, self.new_cache(x, xp=xp), xp=xp).f

    def describe(self) -> tuple:
        """Host values that define the system besides its functions: type, ``n``, ``batch_ndim``, ``sigma``, linear part."""
        return (type(self).__qualname__, self.n, self.batch_ndim, self.sigma, self.linear_coefficients)


class _Rebatched(TriangularSystem):
    """A system whose :meth:`evaluate` is a given batched function; every other member is ``base``'s."""

    def __init__(self, base: TriangularSystem, fn: Callable[..., Any]):
        self.base, self.fn = base, fn
        self.n, self.batch_ndim = base.n, base.batch_ndim

    sigma = property(lambda self: self.base.sigma)
    linear_coefficients = property(lambda self: self.base.linear_coefficients)
    linear_rows = property(lambda self: self.base.linear_rows)
    band = property(lambda self: self.base.band)
    has_jacobian = property(lambda self: self.base.has_jacobian)
    chain_coefficients = property(lambda self: self.base.chain_coefficients)

    def new_cache(self, x: Any, *, xp: Any) -> Any:
        return self.base.new_cache(x, xp=xp)

    def linear_step(self, x: Any, i: int, cache: Any, *, xp: Any) -> Any:
        return self.base.linear_step(x, i, cache, xp=xp)

    def evaluate(self, x: Any, lo: int, hi: int, cache: Any, *, xp: Any) -> Evaluation:
        f = self.fn(x, lo, hi)
        _check_rows("the batched function", f, lo, hi, x)
        return Evaluation(f=f, num_evals=hi - lo)

    def row_function(self, x: Any, lo: int, hi: int, *, xp: Any) -> RowFunction:
        return self.base.row_function(x, lo, hi, xp=xp)

    def _batched_function(self) -> Any:
        return self.fn

    def with_batched_function(self, wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]]) -> TriangularSystem:
        return self.base.with_batched_function(wrap)

    def describe(self) -> tuple:
        return self.base.describe()


class SplitFunction:
    """Base of a batched function whose rows several ranks evaluate (:class:`trisolve.distributed.ShardedFunction`)."""

    @property
    def num_ranks(self) -> int:
        return 1

    def agree(self, arguments: dict[str, Any]) -> None:
        """Raise on every rank unless every rank passes the same solve ``arguments`` (one rank: nothing to check)."""


def _agree(fn: Any, arguments: dict[str, Any]) -> None:
    """:meth:`SplitFunction.agree` of a system's batched function ``fn`` when it is split over ranks."""
    if isinstance(fn, SplitFunction):
        fn.agree(arguments)


def _ranks_of(fn: Any) -> int:
    """Ranks that share the calls of a system's batched function ``fn`` (1 unless it is split)."""
    return fn.num_ranks if isinstance(fn, SplitFunction) else 1


def _check_jacobian_callable(jacobian: Any, how: str) -> None:
    if jacobian is not None and not callable(jacobian):
        raise TypeError(f"jacobian must be callable as {how} or None, got {type(jacobian).__name__}.")


def _check_n(n: Any) -> int:
    return check_int("n", n, 1, hint="(the number of rows to solve)")


def _check_sigma(sigma: Any, n: int) -> np.ndarray:
    if sigma is None:
        return np.ones(n)
    s = np.asarray(sigma, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"sigma must have shape (n,) = ({n},), one scale per row 1..n; got {s.shape}.")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("sigma must be finite and >= 0 for every row.")
    return s


def _check_batch_ndim(batch_ndim: Any) -> int:
    return check_int("batch_ndim", batch_ndim, 0)


def _check_rows(name: str, out: Any, lo: int, hi: int, x: Any) -> None:
    if type(out) is not type(x):
        raise TypeError(
            f"{name} returned a {type(out).__name__} for a trajectory of {type(x).__name__}; return rows in the trajectory's array library."
        )
    if out.dtype != x.dtype:
        raise TypeError(f"{name} returned dtype {out.dtype} for a {x.dtype} trajectory; cast its output to {x.dtype}.")
    if _device(out) != _device(x):
        raise ValueError(f"{name} returned rows on {_device(out)} for a trajectory on {_device(x)}; move them to {_device(x)}.")
    expected = (hi - lo, *x.shape[1:])
    if tuple(out.shape) != expected:
        raise ValueError(
            f"{name} returned shape {tuple(out.shape)} for rows [{lo}, {hi}); expected {expected}, "
            "one row per requested row with the trajectory's event shape."
        )


@dataclass(frozen=True, eq=False)
class BlackBoxSystem(TriangularSystem):
    """A lower-triangular system given by a batched function.

    Parameters
    ----------
    fn : callable ``fn(x, lo, hi) -> array (hi - lo, *event)``
        Returns ``F_i(x[:i])`` for every ``i`` in ``[lo, hi)``; must read only rows ``< i``
        for row ``i``, and should be one batched computation.
    n : int
        Number of rows to solve (the trajectory has ``n + 1`` rows).
    sigma : array_like, shape ``(n,)``, optional
        Per-row scale of the tolerance (section 4.1 of the design); ones by default.
    batch_ndim : int, optional
        Leading event axes that index independent samples.
    jacobian : callable ``jacobian(x, lo, hi) -> array``, optional
        ``J_i = dF_i/dx_{i-1}`` at ``x`` for every ``i`` in ``[lo, hi)``, for
        :class:`~trisolve.Newton`: dense ``(hi - lo, *batch, d, d)`` (row ``k`` of a block is
        output component ``k``; ``batch = event[:batch_ndim]``, the other event axes flattened
        to ``d``), or the diagonal ``(hi - lo, *event)`` when ``F`` is elementwise. Needed
        for NumPy and array-api-strict arrays; PyTorch systems are differentiated
        automatically without it.

    Examples
    --------
    >>> import numpy as np, trisolve
    >>> sys = trisolve.BlackBoxSystem(lambda x, lo, hi: 0.5 * x[lo - 1 : hi - 1] + 1.0, n=4)
    >>> trisolve.forward_substitution(sys, np.zeros(())).tolist()
    [0.0, 1.0, 1.5, 1.75, 1.875]
    """

    fn: Callable[[Any, int, int], Any]
    n: int
    sigma_: Any = field(default=None, repr=False)
    batch_ndim: int = 0
    jacobian: Callable[[Any, int, int], Any] | None = field(default=None, repr=False)

    def __init__(
        self,
        fn: Callable[[Any, int, int], Any],
        n: int,
        *,
        sigma: Any = None,
        batch_ndim: int = 0,
        jacobian: Callable[[Any, int, int], Any] | None = None,
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(x, lo, hi), got {type(fn).__name__}.")
        _check_jacobian_callable(jacobian, "jacobian(x, lo, hi)")
        n = _check_n(n)
        object.__setattr__(self, "jacobian", jacobian)
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "sigma_", _check_sigma(sigma, n))
        object.__setattr__(self, "batch_ndim", _check_batch_ndim(batch_ndim))

    @property
    def sigma(self) -> np.ndarray:
        return self.sigma_

    @property
    def linear_coefficients(self) -> None:
        """A black box exposes no linear part."""
        return None

    @property
    def linear_rows(self) -> np.ndarray:
        """``(n + 1,)`` bool: rows computable from the previous row alone (none for a black box)."""
        return np.zeros(self.n + 1, dtype=bool)

    def new_cache(self, x: Any, *, xp: Any) -> None:
        return None

    def linear_step(self, x: Any, i: int, cache: Any, *, xp: Any) -> Any:
        raise NotImplementedError("a black-box system has no linear rows")

    def evaluate(self, x: Any, lo: int, hi: int, cache: Any, *, xp: Any) -> Evaluation:
        f = self.fn(x, lo, hi)
        _check_rows("fn", f, lo, hi, x)
        if shares_memory(f, x):  # fn returned a view of its input (identity rows, skips): the driver writes x
            f = xp.asarray(f, copy=True)
        return Evaluation(f=f, num_evals=hi - lo)

    @property
    def has_jacobian(self) -> bool:
        return self.jacobian is not None

    def _batched_function(self) -> Any:
        return self.fn

    def row_function(self, x: Any, lo: int, hi: int, *, xp: Any) -> RowFunction:
        """``fn(x, lo, hi)`` as a function of the rows ``x[lo - 1 : hi - 1]``, with the rows before them held.

        ``fn`` is handed rows ``0`` to ``hi - 2``: all that ``F_lo`` to ``F_(hi-1)`` may read.
        """
        head, fn, jac = x[: lo - 1, ...], self.fn, self.jacobian

        def func(rows: Any) -> Any:
            return fn(xp.concat([head, rows], axis=0), lo, hi)

        return RowFunction(func, x[lo - 1 : hi - 1, ...], None if jac is None else (lambda: jac(x, lo, hi)), reads=hi - 1)

    def with_batched_function(self, wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]]) -> BlackBoxSystem:
        return BlackBoxSystem(wrap(self.fn, True), self.n, sigma=self.sigma, batch_ndim=self.batch_ndim, jacobian=self.jacobian)


@dataclass
class _SemilinearCache:
    """Per-solve value of a :class:`SemilinearSystem` (one solve, one device).

    ``a`` ``(n,)`` and ``B`` ``(n, p)`` are the coefficient tables on the trajectory's device
    in its dtype, built once; ``g`` ``(n, *event)`` holds the kept values of ``g``: rows
    ``j < final_upto`` were evaluated at their final value; in a per-sample solve
    (:meth:`SemilinearSystem.evaluate_samples`) ``sample_final_upto`` ``(S,)`` (host int) says
    the same per sample.
    """

    a: Any
    B: Any
    g: Any
    final_upto: int = 0
    sample_final_upto: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class SemilinearSystem(TriangularSystem):
    """``x_i = a_i x_{i-1} + sum_{q<p} B[i-1, q] g_{i-1-q}(x_{i-1-q}) + c_i``.

    Parameters
    ----------
    a : array_like, shape ``(n,)``
        ``a[i - 1]`` multiplies ``x_{i-1}`` in row ``i`` (float64 on the host).
    B : array_like, shape ``(n, p)`` or ``(n,)``
        ``B[i - 1, q]`` multiplies ``g_{i-1-q}(x_{i-1-q})`` in row ``i``; entries that would
        reach before row 0 must be zero. A 1-D ``B`` means ``p = 1``.
    g : callable ``g(x_rows, lo, hi) -> array (hi - lo, *event)``
        The expensive map: ``g_j(x_j)`` for ``j`` in ``[lo, hi)`` given ``x_rows = x[lo:hi]``.
    c : array, shape ``(n, *event)``, optional
        Fixed forcing, in the trajectory's namespace (e.g. pre-drawn noise times its
        coefficient). Zero when omitted.
    sigma, batch_ndim
        As for :class:`BlackBoxSystem`.
    jacobian : callable ``jacobian(x_rows, lo, hi) -> array``, optional
        ``dg_j/dx_j`` for ``j`` in ``[lo, hi)`` given ``x_rows = x[lo:hi]`` (the signature of
        ``g``), dense ``(hi - lo, *batch, d, d)`` or diagonal ``(hi - lo, *event)``, for
        :class:`~trisolve.Newton` (``J_i = a_i I + B[i-1, 0] dg_{i-1}/dx_{i-1}``). Needed for
        NumPy and array-api-strict arrays; PyTorch's ``g`` is differentiated automatically.
    g_pairs : callable ``g_pairs(x_rows, lo, hi, active) -> array (hi - lo, *event)``, optional
        ``g`` on the ``(row, sample)`` pairs where the host bool array ``active`` ``(hi - lo,
        S)`` is true, in one batched call (gather the pairs, evaluate, scatter back): the
        values ``g(x_rows, lo, hi)`` would have there; the other pairs' values are never read
        (any finite or non-finite value). ``S`` counts the ``batch_ndim`` leading event axes'
        samples in C order. A per-sample solve (:func:`trisolve.solve`, ``per_sample``) calls it
        when some samples of a row need ``g`` and others do not; without it, ``g`` evaluates
        those rows whole (correct, without saving network rows).

    Examples
    --------
    Explicit Euler for ``y' = -y`` with step 0.1 (``a = 1``, ``B = h``, ``g(y) = -y``):

    >>> import numpy as np, trisolve
    >>> sys = trisolve.SemilinearSystem(np.ones(3), np.full(3, 0.1), lambda y, lo, hi: -y)
    >>> trisolve.forward_substitution(sys, np.ones(())).round(3).tolist()
    [1.0, 0.9, 0.81, 0.729]
    """

    a: np.ndarray
    B: np.ndarray
    g: Callable[[Any, int, int], Any]
    c: Any = None
    sigma_: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    batch_ndim: int = 0
    jacobian: Callable[[Any, int, int], Any] | None = field(default=None, repr=False)
    g_pairs: Callable[[Any, int, int, np.ndarray], Any] | None = field(default=None, repr=False)

    def __init__(
        self,
        a: Any,
        B: Any,
        g: Callable[[Any, int, int], Any],
        *,
        c: Any = None,
        sigma: Any = None,
        batch_ndim: int = 0,
        jacobian: Callable[[Any, int, int], Any] | None = None,
        g_pairs: Callable[[Any, int, int, np.ndarray], Any] | None = None,
    ):
        _check_jacobian_callable(jacobian, "jacobian(x_rows, lo, hi)")
        if g_pairs is not None and not callable(g_pairs):
            raise TypeError(f"g_pairs must be callable as g_pairs(x_rows, lo, hi, active) or None, got {type(g_pairs).__name__}.")
        a = np.array(a, dtype=np.float64)
        if a.ndim != 1 or a.shape[0] < 1:
            raise ValueError(f"a must have shape (n,) with n >= 1, got {a.shape}.")
        n = a.shape[0]
        B = np.array(B, dtype=np.float64)
        if B.ndim == 1:
            B = B[:, None]
        if B.ndim != 2 or B.shape[0] != n or B.shape[1] < 1:
            raise ValueError(f"B must have shape (n, p) = ({n}, p) with p >= 1, got {B.shape}.")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(B))):
            raise ValueError("a and B must be finite.")
        p = B.shape[1]
        rows = np.arange(1, n + 1)[:, None]
        reach = rows - 1 - np.arange(p)[None, :]
        if np.any(B[reach < 0] != 0):
            raise ValueError("B[i - 1, q] must be zero where row i - 1 - q < 0 (before row 0).")
        if not callable(g):
            raise TypeError(f"g must be callable as g(x_rows, lo, hi), got {type(g).__name__}.")
        if c is not None:
            shape = getattr(c, "shape", None)
            if shape is None or not hasattr(c, "dtype"):
                raise TypeError(f"c must be an array of shape (n, *event) in the trajectory's array library, got {type(c).__name__}.")
            if len(shape) < 1 or shape[0] != n:
                raise ValueError(f"c must have shape (n, *event) with n = {n} rows (one per row 1..n), got {tuple(shape)}.")
        a.setflags(write=False)
        B.setflags(write=False)
        # g_j is read by row j + 1 + q with coefficient B[j + q, q]; rows that read no g at all
        # (B[i - 1] == 0) are linear: x_i = a_i x_{i-1} + c_i
        # (columns q >= n reach before row 0 in every row: all zero, checked above, and skipped
        # here, so a table wider than the schedule -- p > n -- is fine)
        g_used = np.zeros(n, dtype=bool)
        for q in range(min(p, n)):
            g_used[: n - q] |= B[q:, q] != 0
        linear = np.concatenate([[False], ~np.any(B != 0, axis=1)])
        g_used.setflags(write=False)
        linear.setflags(write=False)
        object.__setattr__(self, "_g_used", g_used)
        object.__setattr__(self, "_linear", linear)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "B", B)
        object.__setattr__(self, "g", g)
        object.__setattr__(self, "jacobian", jacobian)
        object.__setattr__(self, "g_pairs", g_pairs)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "sigma_", _check_sigma(sigma, n))
        object.__setattr__(self, "batch_ndim", _check_batch_ndim(batch_ndim))

    @property
    def n(self) -> int:  # type: ignore[override]
        return self.a.shape[0]

    @property
    def p(self) -> int:
        """Band width: how many earlier ``g`` values a row reads."""
        return self.B.shape[1]

    @property
    def sigma(self) -> np.ndarray:
        return self.sigma_

    @property
    def band(self) -> int:  # type: ignore[override]
        """``p``: a row reads ``g`` of the ``p`` rows before it."""
        return self.p

    @property
    def has_jacobian(self) -> bool:
        return self.jacobian is not None

    def _batched_function(self) -> Any:
        return self.g

    @property
    def chain_coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """``(a, B[:, 0])``: ``J_i = a_i I + B[i - 1, 0] dg_{i-1}/dx_{i-1}`` (a Markov system, ``p = 1``)."""
        return self.a, self.B[:, 0]

    def row_function(self, x: Any, lo: int, hi: int, *, xp: Any) -> RowFunction:
        """``g`` of the rows ``x[lo - 1 : hi - 1]`` (:attr:`chain_coefficients` give ``J``)."""
        g, jac, rows = self.g, self.jacobian, x[lo - 1 : hi - 1, ...]

        def func(r: Any) -> Any:
            return g(r, lo - 1, hi - 1)

        return RowFunction(func, rows, None if jac is None else (lambda: jac(rows, lo - 1, hi - 1)), reads=hi - lo)

    def with_batched_function(self, wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]]) -> SemilinearSystem:
        # without g_pairs: the wrapped g is the one every call must go through (evaluating whole rows is correct)
        return SemilinearSystem(
            self.a, self.B, wrap(self.g, False), c=self.c, sigma=self.sigma, batch_ndim=self.batch_ndim, jacobian=self.jacobian
        )

    def describe(self) -> tuple:
        return (*super().describe(), self.B, self.c)

    @property
    def linear_coefficients(self) -> np.ndarray:
        """``a`` ``(n,)``: ``F_i`` is ``a_i x_{i-1}`` plus terms that do not read ``x_{i-1}`` linearly."""
        return self.a

    @property
    def linear_rows(self) -> np.ndarray:
        """``(n + 1,)`` bool: row ``i`` reads no ``g`` (``B[i - 1] == 0``), so ``x_i = a_i x_{i-1} + c_i``.

        Once row ``i - 1`` is final such a row is exact without evaluating anything; the
        driver resolves it in the same round (:meth:`linear_step`).
        """
        return self._linear

    def new_cache(self, x: Any, *, xp: Any) -> _SemilinearCache:
        """Check ``c`` against the trajectory ``x`` ``(n + 1, *event)``; move ``a`` and ``B`` to its device once."""
        event = tuple(x.shape[1:])
        if self.c is not None:
            if tuple(self.c.shape) != (self.n, *event):
                raise ValueError(
                    f"c has shape {tuple(self.c.shape)} but the trajectory needs (n, *event) = {(self.n, *event)}: "
                    "give the forcing one row per step with x0's shape (broadcast it yourself if it is shared)."
                )
            if type(self.c) is not type(x) or self.c.dtype != x.dtype or _device(self.c) != _device(x):
                raise TypeError(
                    f"c is a {type(self.c).__name__} of {self.c.dtype} on {_device(self.c)}; the trajectory is a "
                    f"{type(x).__name__} of {x.dtype} on {_device(x)}: convert c to match x0."
                )
        dev = _device(x)
        return _SemilinearCache(
            a=from_host(self.a, xp, dtype=x.dtype, device=dev),
            B=from_host(self.B, xp, dtype=x.dtype, device=dev),
            g=xp.zeros((self.n, *event), dtype=x.dtype, device=dev),
        )

    def linear_step(self, x: Any, i: int, cache: _SemilinearCache, *, xp: Any) -> Any:
        """``a_i x_{i-1} + c_i`` for a linear row ``i`` (``linear_rows[i]``), shape ``event``."""
        row = cache.a[i - 1] * x[i - 1, ...]
        return row if self.c is None else row + self.c[i - 1, ...]

    def evaluate(self, x: Any, lo: int, hi: int, cache: _SemilinearCache, *, xp: Any) -> Evaluation:
        """Evaluate rows ``[lo, hi)``; rows ``< lo`` must be final.

        ``g`` is evaluated on rows ``[start, hi - 1)`` in one call, where rows below ``lo`` are
        included only if their kept value was computed before they were final. Then
        ``F_i = a_i x_{i-1} + sum_q B[i-1, q] g_{i-1-q} + c_i`` from the device tables.
        """
        assemble, inputs, num_evals = self.evaluate_parts(x, lo, hi, cache, xp=xp)
        return Evaluation(f=assemble(*inputs, xp=xp), num_evals=num_evals)

    def evaluate_parts(self, x: Any, lo: int, hi: int, cache: _SemilinearCache, *, xp: Any) -> tuple[Callable[..., Any], tuple, int]:
        """:meth:`evaluate` up to ``F``'s assembly from the kept ``g`` values (:func:`_assemble`) and its inputs (window rows)."""
        p = self.p
        first_needed = max(lo - p, 0)
        start = max(first_needed, min(cache.final_upto, lo))
        num_evals = 0
        g_hi = self._g_end(start, hi)  # less trailing rows whose g no row reads
        if g_hi > start:
            g_new = self.g(x[start:g_hi, ...], start, g_hi)
            _check_rows("g", g_new, start, g_hi, x)
            cache.g[start:g_hi, ...] = g_new
            num_evals = g_hi - start
        cache.final_upto = max(cache.final_upto, lo)
        return _assemble, self._assembly(x, lo, hi, cache), num_evals

    def _g_end(self, start: int, hi: int) -> int:
        """End of the ``g`` rows the window ``[.., hi)`` reads from ``start``: ``hi - 1`` less trailing rows whose ``g`` no row reads."""
        g_hi = hi - 1
        while g_hi > start and not self._g_used[g_hi - 1]:
            g_hi -= 1
        return g_hi

    def evaluate_samples(self, x: Any, lo: int, hi: int, sample_lo: np.ndarray, sample_hi: np.ndarray, cache: _SemilinearCache, *,
                         xp: Any) -> Evaluation:  # fmt: skip
        """:meth:`evaluate` where sample ``s`` needs only its rows ``[sample_lo[s], sample_hi[s])``.

        Per sample, as :meth:`evaluate` per solve: ``g`` of sample ``s`` is needed on its rows
        ``[start_s, end_s)`` (the rows its window reads, less those evaluated at their final
        value: ``cache.sample_final_upto``). One call covers the rows ``[j0, j1)`` of every
        needed pair: ``g`` itself when every pair of those rows is needed, else ``g_pairs`` on
        the needed pairs (``g`` on whole rows without it). Only the needed pairs are written to
        the kept values; every other pair keeps its value exactly. ``num_sample_evals`` counts
        the pairs evaluated (whole rows count every sample).
        """
        S = sample_lo.shape[0]
        fu = np.full(S, cache.final_upto, dtype=np.int64) if cache.sample_final_upto is None else cache.sample_final_upto
        live = sample_hi > sample_lo
        start = np.maximum(np.maximum(sample_lo - self.p, 0), np.minimum(fu, sample_lo))  # (S,)
        end = np.array([self._g_end(int(a), int(b)) if ok else 0 for a, b, ok in zip(start, sample_hi, live)], dtype=np.int64)
        need = live & (end > start)
        pairs = rows = 0
        if need.any():
            j0, j1 = int(start[need].min()), int(end[need].max())
            j = np.arange(j0, j1)[:, None]
            mask = need[None, :] & (j >= start[None, :]) & (j < end[None, :])  # (k, S): the pairs needed
            rows = int(np.count_nonzero(mask.any(axis=1)))
            if mask.all():
                out, pairs = self.g(x[j0:j1, ...], j0, j1), mask.size
            elif self.g_pairs is not None:
                out, pairs = self.g_pairs(x[j0:j1, ...], j0, j1, mask), int(np.count_nonzero(mask))
            else:
                out, pairs, rows = self.g(x[j0:j1, ...], j0, j1), mask.size, j1 - j0
            _check_rows("g" if self.g_pairs is None or mask.all() else "g_pairs", out, j0, j1, x)
            if mask.all():
                cache.g[j0:j1, ...] = out
            else:  # the needed pairs only: every other pair keeps its kept value exactly
                batch = tuple(x.shape[1 : 1 + self.batch_ndim])
                keep = xp.reshape(mask_from_host(mask, xp, device=_device(x)), (j1 - j0, *batch) + (1,) * (len(x.shape) - 1 - len(batch)))
                cache.g[j0:j1, ...] = xp.where(keep, out, cache.g[j0:j1, ...])
        fu = fu.copy()
        fu[live] = np.maximum(fu[live], sample_lo[live])
        cache.sample_final_upto = fu
        return Evaluation(f=_assemble(*self._assembly(x, lo, hi, cache), xp=xp), num_evals=rows, num_sample_evals=pairs)

    def _assembly(self, x: Any, lo: int, hi: int, cache: _SemilinearCache) -> tuple:
        """The inputs of :func:`_assemble` for the rows ``[lo, hi)`` from the kept ``g`` values (slices: no device work)."""
        terms = []  # (B[i-1, q] (w,), g_{i-1-q} rows, zero rows in front) for the columns q this window reads
        for q in range(self.p):
            j_lo, j_hi = lo - 1 - q, hi - 1 - q
            if not np.any(self.B[lo - 1 : hi - 1, q]):  # host table: no device read
                continue
            terms.append((cache.B[lo - 1 : hi - 1, q], cache.g[max(j_lo, 0) : j_hi, ...], max(0, -j_lo)))  # rows j < 0 have B == 0
        c = None if self.c is None else self.c[lo - 1 : hi - 1, ...]
        return cache.a[lo - 1 : hi - 1], x[lo - 1 : hi - 1, ...], tuple(terms), c


def _assemble(a: Any, x_prev: Any, terms: tuple, c: Any, *, xp: Any) -> Any:
    """``F_i = a_i x_{i-1} + sum_q B[i-1, q] g_{i-1-q} + c_i`` for a window's rows ``(w, *event)``: pure device arithmetic.

    ``a`` ``(w,)``, ``x_prev`` the rows ``x_{i-1}``, ``terms`` ``(B[:, q] (w,), g rows, pad)`` per
    column read (``pad`` zero rows in front, for rows ``j < 0``), ``c`` the forcing rows or ``None``.
    """
    bshape = (x_prev.shape[0],) + (1,) * (len(x_prev.shape) - 1)
    f = xp.reshape(a, bshape) * x_prev
    for b, gq, pad in terms:
        if pad:
            gq = xp.concat([xp.zeros((pad, *x_prev.shape[1:]), dtype=x_prev.dtype, device=_device(x_prev)), gq], axis=0)
        f = f + xp.reshape(b, bshape) * gq
    if c is not None:
        f = f + c
    return f
