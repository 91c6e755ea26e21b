"""Multi-device rounds on ``torch.distributed`` (DESIGN 10): one solve, the evaluations split.

SPMD: every rank (process) runs the same deterministic solve on the same inputs; only the
expensive evaluation of a round is split. The rows ``[lo, hi)`` a round evaluates are cut
into ``P`` contiguous chunks in a fixed order (``P`` ranks),

    chunk r = [lo + floor(w r / P), lo + floor(w (r + 1) / P)),   w = hi - lo,

rank ``r`` evaluates chunk ``r``, and one all-gather (each chunk padded to
``ceil(w / P)`` rows, its header in front, as bytes) hands every output to every rank. Every rank then holds the same bytes,
runs the same solver arithmetic on them and keeps the same trajectory, so nothing else is
ever broadcast, and every rank returns the same :class:`~trisolve.Solution`.

Safety, per round (a header packed in front of each rank's chunk, in the same all-gather, read
once on the host):

* a header ``[ok, lo, hi, fingerprint...]`` from every rank. ``ok = 0`` when the rank's chunk
  raised; then every rank raises :class:`DistributedError` naming the rank, its rows and its
  exception (gathered as text), instead of leaving the others waiting;
* the fingerprint digests what must agree: ``n``, the event shape and dtype, the system's
  tables (``sigma``, and ``a``, ``B``, ``c`` of a semilinear system) and what
  :func:`distribute`'s ``fingerprint`` adds. A mismatch raises on every rank, saying what differs;
* before the first round :func:`trisolve.solve` has the ranks compare its arguments -- solver,
  row 0, options, ``init`` -- in one more all-gather (:meth:`ShardedFunction.agree`);
* every collective waits at most ``timeout`` (default: the process group's), so a rank that
  died or never called the solve turns into an error on the others, not a hang.

The engine is ``torch.distributed`` (launched by ``torchrun``; NCCL on GPUs, gloo on CPUs);
this module is the only place in ``trisolve`` that imports torch, and ``trisolve`` imports it
lazily.

Examples
--------
``python -m torchrun --standalone --nproc-per-node 2 script.py`` with ``script.py``::

    import numpy as np, torch.distributed as dist, trisolve
    dist.init_process_group("gloo")
    rnn = trisolve.BlackBoxSystem(lambda x, lo, hi: np.tanh(x[lo - 1 : hi - 1] + 0.1), n=1000)
    sol = trisolve.solve(trisolve.distribute(rnn, timeout=60), trisolve.Jacobi(), np.zeros(4), atol=1e-9)
    # every rank holds the same sol.trajectory; each evaluated about half of the rows
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ._validate import check_float
from .systems import SplitFunction, TriangularSystem

__all__ = ["distribute", "DistributedError", "ShardedFunction", "ShardedBatch", "row_chunks", "GroupInfo"]


class DistributedError(RuntimeError):
    """A multi-rank solve cannot go on: a rank failed, the ranks disagree, or a rank did not answer in time.

    Raised on every rank of the group (for a timeout: on every rank still running).
    """


def row_chunks(lo: int, hi: int, world: int) -> list[tuple[int, int]]:
    """The fixed split of rows ``[lo, hi)`` over ``world`` ranks: contiguous, sizes differing by at most one.

    >>> row_chunks(1, 11, 3)
    [(1, 4), (4, 7), (7, 11)]
    """
    w = hi - lo
    return [(lo + (w * r) // world, lo + (w * (r + 1)) // world) for r in range(world)]


@dataclass(frozen=True, eq=False)
class GroupInfo:
    """The process group a solve runs on: rank, size, the device collectives use, the timeout."""

    group: Any
    rank: int
    world: int
    device: torch.device
    timeout: datetime.timedelta | None

    @classmethod
    def resolve(cls, group: Any = None, timeout: float | datetime.timedelta | None = None) -> GroupInfo:
        """Check that ``torch.distributed`` is up and describe ``group`` (``None``: the default group)."""
        if not dist.is_available():
            raise RuntimeError("this PyTorch build has no torch.distributed; install one that does (the default wheels have it).")
        if not dist.is_initialized():
            raise ValueError(
                "torch.distributed is not initialised: launch with `torchrun --nproc-per-node N script.py` and call "
                "torch.distributed.init_process_group() (backend 'nccl' on GPUs, 'gloo' on CPUs) before solving, or pass group=."
            )
        if timeout is not None and not isinstance(timeout, datetime.timedelta):
            timeout = datetime.timedelta(seconds=check_float("timeout", timeout, 0.0, low_open=True, hint="(seconds), a datetime.timedelta or None"))
        backend = str(dist.get_backend(group))
        if "nccl" in backend:  # NCCL moves only CUDA tensors: use this rank's current device
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        return cls(group, dist.get_rank(group), dist.get_world_size(group), device, timeout)

    def _wait(self, work: Any, what: str) -> None:
        try:
            if self.timeout is None:
                work.wait()
            else:
                work.wait(timeout=self.timeout)
        except Exception as exc:  # a timeout or a broken peer, as the backend reports it
            limit = "the process group's timeout" if self.timeout is None else f"{self.timeout.total_seconds():g} s"
            raise DistributedError(
                f"rank {self.rank}: no answer from every rank within {limit} during {what}; another rank failed outside "
                f"the evaluation, stopped, or was called with other arguments ({type(exc).__name__}: {exc})."
            ) from exc

    def all_gather(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """``(world * t.shape[0], ...)``: every rank's ``t`` in rank order (``t`` on ``self.device``)."""
        out = torch.empty((self.world * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the newer name where torch has it
        self._wait(gather(out, t.contiguous(), group=self.group, async_op=True), what)
        return out

    def broadcast(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """Rank 0's ``t`` on every rank (in place; ``t`` of the same shape and dtype on every rank)."""
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        self._wait(dist.broadcast(t, src=src, group=self.group, async_op=True), what)
        return t

    def all_gather_text(self, text: str) -> list[str]:
        """Every rank's ``text`` (a second, rare collective: only on the failure path)."""
        data = torch.tensor(list(text.encode()[:2000]), dtype=torch.uint8, device=self.device)
        size = self.all_gather(torch.tensor([data.numel()], dtype=torch.int64, device=self.device), "an error report")
        m = int(size.max())
        buf = torch.zeros(m, dtype=torch.uint8, device=self.device)
        buf[: data.numel()] = data
        allb = self.all_gather(buf, "an error report").reshape(self.world, m).cpu().numpy()
        return [bytes(allb[r, : int(size[r])]).decode(errors="replace") for r in range(self.world)]


def _digest(*parts: Any) -> int:
    """A signed 64-bit digest of ``parts`` (text, bytes or arrays, hashed by value)."""
    h = hashlib.sha256()
    for p in parts:
        if p is None:
            h.update(b"<none>")
        elif isinstance(p, (bytes, bytearray)):
            h.update(bytes(p))
        elif isinstance(p, np.ndarray):
            h.update(str((p.shape, p.dtype.str)).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        elif isinstance(p, torch.Tensor):
            t = p.detach().to("cpu").contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return int.from_bytes(h.digest()[:8], "little", signed=True)


#: What each fingerprint field of the header means (for the mismatch message).
_FIELDS = ("rows n", "event shape and dtype", "system tables (sigma; a, B, c of a semilinear system)", "the fingerprint given to distribute()")


@dataclass(eq=False)
class ShardedFunction(SplitFunction):
    """``fn(x, lo, hi)`` or ``g(x_rows, lo, hi)`` evaluated chunk by chunk over the ranks of a group.

    Built by :func:`distribute`; keeps this rank's counts: ``rows_evaluated`` (rows this rank
    computed), ``rows_requested`` (rows all ranks were asked for), ``calls``, and the traffic:
    ``collectives`` (one per call: the header packed in front of the rows, the output's layout
    being the input's; one more per solve, :meth:`agree`) and ``bytes_gathered`` (what the
    all-gathers returned to this rank, headers and padding included).

    Parameters
    ----------
    fn : callable
        The single-process function.
    rows_arg : bool
        ``True`` for a black box ``fn(x, lo, hi)`` that reads the whole trajectory ``x``;
        ``False`` for a semilinear ``g(x_rows, lo, hi)`` whose first argument holds only the
        rows ``[lo, hi)``.
    """

    fn: Any
    rows_arg: bool
    info: GroupInfo
    static: tuple[int, int, int]  # digests: n, tables, options (event shape/dtype per call)
    n: int
    rows_evaluated: int = 0
    rows_requested: int = 0
    calls: int = 0
    collectives: int = 0
    bytes_gathered: int = 0
    _event_digest: dict = field(default_factory=dict, repr=False)

    @property
    def num_ranks(self) -> int:
        """The ranks of the group: each evaluates its chunk of every call."""
        return self.info.world

    def stats(self) -> dict[str, int]:
        """The traffic so far, as :attr:`trisolve.Solution.stats` entries: ``collectives``, ``bytes_gathered``."""
        return {"collectives": self.collectives, "bytes_gathered": self.bytes_gathered}

    def __call__(self, x: Any, lo: int, hi: int) -> Any:
        info = self.info
        self.calls += 1
        self.rows_requested += hi - lo
        is_numpy = isinstance(x, np.ndarray)
        if not is_numpy and not isinstance(x, torch.Tensor):
            raise TypeError(f"a distributed solve needs NumPy or PyTorch arrays, got {type(x).__name__}.")
        event = tuple(x.shape[1:])
        base = lo if not self.rows_arg else 0  # the first argument's row 0 is row `base` of the trajectory
        a, b = row_chunks(lo, hi, info.world)[info.rank]
        out, failure, error = None, "", None
        if b > a:
            try:
                out = self.fn(x[a - base : b - base] if not self.rows_arg else x, a, b)
                _check_chunk(out, a, b, x)
            except Exception as exc:  # reported to every rank below, then raised from here
                failure, error = f"{type(exc).__name__}: {exc}", exc
            self.rows_evaluated += b - a
        key = (event, str(x.dtype))
        if key not in self._event_digest:
            self._event_digest[key] = _digest(event, str(x.dtype))
        n_d, tables_d, options_d = self.static
        header = torch.tensor([0 if failure else 1, lo, hi, n_d, self._event_digest[key], tables_d, options_d], dtype=torch.int64)
        chunk = None if b <= a or failure else (torch.from_numpy(np.ascontiguousarray(out)) if is_numpy else out)
        allr, moved = _gather_packed(info, header, chunk, row_chunks(lo, hi, info.world), event, _torch_dtype(x), failure, error,
                                     f"round rows [{lo}, {hi})")  # fmt: skip
        self.collectives += 1
        self.bytes_gathered += moved
        if is_numpy:
            return allr.cpu().numpy()
        return allr.to(x.device)

    def agree(self, arguments: dict[str, Any]) -> None:
        """Raise :class:`DistributedError` on every rank unless every rank passes the same solve ``arguments``.

        One all-gather of a digest of ``arguments`` (arrays by content, the rest by ``repr``),
        before the first round of :func:`trisolve.solve`.
        """
        mine = _digest(*_arguments_fingerprint(arguments))
        info = self.info
        got = info.all_gather(torch.tensor([mine], dtype=torch.int64, device=info.device), "the solve's arguments").cpu().tolist()
        self.collectives += 1
        self.bytes_gathered += info.world * 8
        differ = [r for r in range(info.world) if got[r] != got[0]]
        if differ:
            raise DistributedError(
                f"the ranks disagree on the solve's arguments (solver, row 0, options or init): rank(s) {differ} differ from "
                "rank 0; every rank must call trisolve.solve with the same solver, row 0 and options (same seed, same arguments)."
            )


def header_bytes(header: torch.Tensor) -> int:
    """Bytes of one rank's header tensor."""
    return header.numel() * header.element_size()


def _chunk_bytes(lo: int, hi: int, world: int, event: tuple, dtype: torch.dtype) -> int:
    """Bytes of one rank's padded chunk of rows ``[lo, hi)``."""
    return -(-(hi - lo) // world) * int(np.prod(event, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()


def _exchange_header(info: GroupInfo, header: torch.Tensor, failure: str, error: BaseException | None, what: str, chunks: list) -> None:
    """All-gather ``header = [ok, lo, hi, digests...]`` and raise on every rank if a rank failed or the ranks disagree."""
    headers = info.all_gather(header.to(info.device), what).reshape(info.world, -1).cpu().numpy()
    _check_headers(info, headers, header, failure, error, what, chunks)


def _check_headers(info: GroupInfo, headers: np.ndarray, header: torch.Tensor, failure: str, error: BaseException | None, what: str,
                   chunks: list) -> None:  # fmt: skip
    """Raise on every rank if a rank's header ``headers[r]`` says it failed, or if the ranks disagree."""
    lo, hi = int(header[1]), int(header[2])
    if not headers[:, 0].all():
        texts = info.all_gather_text(failure)
        bad = [r for r in range(info.world) if not headers[r, 0]]
        lines = "; ".join(f"rank {r} (rows {chunks[r]}): {texts[r]}" for r in bad)
        msg = f"evaluation failed on rank(s) {bad} in {what}: {lines}"
        if failure:
            raise DistributedError(msg) from error
        raise DistributedError(msg)
    if (headers[:, 1:3] != headers[0, 1:3]).any():
        rows = ", ".join(f"rank {r}: [{headers[r, 1]}, {headers[r, 2]})" for r in range(info.world))
        raise DistributedError(
            f"the ranks asked for different rows in the same round ({rows}, this rank [{lo}, {hi})): their solves diverged; every "
            "rank must call the solve with the same solver, options, tolerances and callback stopping rule."
        )
    diff = [name for j, name in enumerate(_FIELDS, start=3) if j < headers.shape[1] and (headers[:, j] != headers[0, j]).any()]
    if diff:
        raise DistributedError(
            f"the ranks disagree on {', '.join(diff)}: every rank must call the solve with the same system, row 0, "
            "options and dtype (same seed, same arguments)."
        )


def _gather_packed(
    info: GroupInfo, header: torch.Tensor, chunk: torch.Tensor | None, chunks: list, event: tuple, dtype: torch.dtype,
    failure: str, error: BaseException | None, what: str,
) -> tuple[torch.Tensor, int]:
    """One all-gather of every rank's header and chunk, packed as bytes; checked as :func:`_exchange_header`.

    Each rank sends ``header`` (int64) followed by its chunk padded to the largest chunk's rows
    (``chunk`` ``None``: empty or failed; zeros are sent), the whole rounded up to 8 bytes so that
    every part can be viewed in its dtype. Every rank must know ``event`` and ``dtype`` before the
    call (the layout is the same on every rank). Returns the rows of every chunk in rank order,
    ``(sum of chunk sizes, *event)``, and the bytes this rank received.
    """
    sizes = [e - s for s, e in chunks]
    m = max(sizes)
    itemsize = torch.empty((), dtype=dtype).element_size()
    head = header.numel() * 8
    body = m * int(np.prod(event, dtype=np.int64)) * itemsize
    length = -(-(head + body) // 8) * 8
    buf = torch.zeros(length, dtype=torch.uint8, device=info.device)
    buf[:head] = header.to(info.device).view(torch.uint8)
    if chunk is not None and chunk.numel():
        data = chunk.to(device=info.device, dtype=dtype).contiguous().reshape(-1).view(torch.uint8)
        buf[head : head + data.numel()] = data
    allb = info.all_gather(buf, what).reshape(info.world, length)
    headers = allb[:, :head].contiguous().view(torch.int64).cpu().numpy()  # (world, fields): one host read
    _check_headers(info, headers, header, failure, error, what, chunks)
    rows = allb[:, head : head + body].contiguous().view(dtype).reshape(info.world, m, *event)
    if all(sz == m for sz in sizes):
        out = rows.reshape(info.world * m, *event)
    else:
        out = torch.cat([rows[r, :sz] for r, sz in enumerate(sizes)])
    return out, info.world * length


def _gather_chunks(info: GroupInfo, chunk: torch.Tensor | None, chunks: list, event: tuple, dtype: torch.dtype, what: str) -> torch.Tensor:
    """Every rank's ``chunk`` (``chunks[rank]`` rows, ``None`` when empty) concatenated in rank order (one padded all-gather)."""
    sizes = [e - s for s, e in chunks]
    m = max(sizes)  # rows per padded chunk
    buf = torch.zeros((m, *event), dtype=dtype, device=info.device)
    if chunk is not None:
        buf[: chunk.shape[0]] = chunk.to(info.device)
    allr = info.all_gather(buf, what)  # (world * m, *event)
    if any(s != m for s in sizes):
        idx = torch.cat([torch.arange(r * m, r * m + s) for r, s in enumerate(sizes)]).to(info.device)
        allr = allr.index_select(0, idx)
    return allr


@dataclass(eq=False)
class ShardedBatch:
    """One network call's batch split over the ranks of a group: rank ``r`` evaluates ``row_chunks(0, N, P)[r]``.

    The other split of a round (data and guidance parallelism): where :class:`ShardedFunction`
    cuts a round's trajectory rows, this cuts the network batch of ``N`` inputs itself, so a
    window of one step with a batch of ``B`` samples gives each rank ``B / P`` of them, and with
    classifier-free guidance (inputs ``[x; x]``, unconditional first) two ranks take the
    unconditional and the conditional half. Every rank returns the same ``(N, ...)`` tensor.

    Traffic: the first call with a batch of ``N`` inputs all-gathers the header ``[ok, 0, N, ...,
    layout, fingerprint]`` (the ranks agree on the outputs' shape and dtype: ``layout``) and then
    the outputs, two collectives; every later call of that ``N`` packs the header in front of the
    outputs, one collective (a rank whose share is empty then evaluates nothing). Counts:
    ``calls``, ``inputs_evaluated`` (this rank), ``inputs_requested``, ``collectives``,
    ``bytes_gathered`` (what the all-gathers returned to this rank, headers and padding included).

    Parameters
    ----------
    info : GroupInfo
    fingerprint : int
        A digest every rank must share (e.g. of the solve's options and row 0).

    Examples
    --------
    >>> import torch, torch.distributed as dist
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> split = ShardedBatch(GroupInfo.resolve(), 0)
    >>> f = lambda s, e: torch.arange(s, e, dtype=torch.float32)[:, None] * torch.ones(3, 2)[s:e]
    >>> split(3, f).tolist()
    [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]
    >>> _ = split(3, f)
    >>> split.collectives, split.inputs_evaluated
    (3, 6)
    >>> dist.destroy_process_group()
    """

    info: GroupInfo
    fingerprint: int
    calls: int = 0
    inputs_evaluated: int = 0
    inputs_requested: int = 0
    collectives: int = 0
    bytes_gathered: int = 0
    _layouts: dict = field(default_factory=dict, repr=False)  # N -> (event, dtype, device) of the outputs, agreed on N's first call

    def share(self, n: int) -> tuple[int, int]:
        """This rank's inputs ``[start, stop)`` of a batch of ``n``."""
        return row_chunks(0, n, self.info.world)[self.info.rank]

    def stats(self) -> dict[str, int]:
        """The traffic so far, as :attr:`trisolve.Solution.stats` entries: ``collectives``, ``bytes_gathered``."""
        return {"collectives": self.collectives, "bytes_gathered": self.bytes_gathered}

    def __call__(self, n: int, evaluate: Any) -> torch.Tensor:
        """``evaluate(start, stop) -> (stop - start, ...)`` on this rank's share of ``n`` inputs, gathered: ``(n, ...)``."""
        info = self.info
        self.calls += 1
        self.inputs_requested += n
        chunks = row_chunks(0, n, info.world)
        a, b = chunks[info.rank]
        layout = self._layouts.get(n)
        out, failure, error = None, "", None
        if b > a or layout is None:
            try:
                out = evaluate(a, b if b > a else a + 1)[: b - a]  # an empty share learns the output's layout on the first call
                if layout is not None and (tuple(out.shape[1:]), out.dtype) != layout[:2]:
                    raise ValueError(
                        f"the network returned outputs of shape {tuple(out.shape[1:])} and {out.dtype} per input, where the first "
                        f"call with {n} inputs returned {layout[0]} and {layout[1]}: every call of a batch size must return one layout."
                    )
            except Exception as exc:  # reported to every rank, then raised from here
                failure, error = f"{type(exc).__name__}: {exc}", exc
        self.inputs_evaluated += b - a
        what = f"a network batch of {n} inputs"
        if layout is None:  # the first call of this batch size: agree on the layout, then gather (two collectives)
            layout_d = 0 if out is None else _digest(tuple(out.shape[1:]), str(out.dtype))
            header = torch.tensor([0 if failure else 1, 0, n, 0, layout_d, 0, self.fingerprint], dtype=torch.int64)
            _exchange_header(info, header, failure, error, what, chunks)
            layout = self._layouts[n] = (tuple(out.shape[1:]), out.dtype, out.device)
            allr = _gather_chunks(info, out if b > a else None, chunks, layout[0], layout[1], f"the outputs of {what}")
            self.collectives += 2
            self.bytes_gathered += info.world * (header_bytes(header) + _chunk_bytes(0, n, info.world, layout[0], layout[1]))
        else:  # header and outputs in one collective
            layout_d = _digest(layout[0], str(layout[1]))
            header = torch.tensor([0 if failure else 1, 0, n, 0, layout_d, 0, self.fingerprint], dtype=torch.int64)
            chunk = out if b > a and not failure else None
            allr, moved = _gather_packed(info, header, chunk, chunks, layout[0], layout[1], failure, error, what)
            self.collectives += 1
            self.bytes_gathered += moved
        return allr.to(layout[2])


def _check_chunk(out: Any, a: int, b: int, x: Any) -> None:
    """The chunk must be what the all-gather expects: ``(b - a, *event)`` in ``x``'s library and dtype."""
    if type(out) is not type(x) or out.dtype != x.dtype:
        raise TypeError(f"the function returned {type(out).__name__} of {out.dtype} for a trajectory of {type(x).__name__} of {x.dtype}.")
    if tuple(out.shape) != (b - a, *x.shape[1:]):
        raise ValueError(f"the function returned shape {tuple(out.shape)} for rows [{a}, {b}); expected {(b - a, *x.shape[1:])}.")


def _torch_dtype(x: Any) -> torch.dtype:
    if isinstance(x, torch.Tensor):
        return x.dtype
    return torch.from_numpy(np.zeros(0, dtype=x.dtype)).dtype


def distribute(system: Any, *, group: Any = None, timeout: float | datetime.timedelta | None = None, fingerprint: Any = None) -> Any:
    """The same system with its expensive evaluation split over the ranks of a process group.

    Returns the system's :meth:`~trisolve.TriangularSystem.with_batched_function` copy (same
    type, tables and ``jacobian=``) whose batched function (``fn`` of a
    :class:`~trisolve.BlackBoxSystem`, ``g`` of a :class:`~trisolve.SemilinearSystem`, the
    whole ``evaluate`` of a protocol class that keeps the default) is a
    :class:`ShardedFunction`: on a call over rows ``[lo, hi)`` rank ``r`` evaluates
    ``row_chunks(lo, hi, P)[r]`` and an all-gather returns all ``hi - lo`` rows to every rank.
    Every rank then runs the same ``trisolve.solve(distributed_system, ...)`` (the one verb,
    on one rank or several), which checks before the first round that the ranks' solver, row
    0 and options agree, raising :class:`DistributedError` on every rank when they do not.
    A ``jacobian=`` callable is kept (each rank evaluates it on
    every row it is asked for; it is not split).

    Not with several ranks, refused on every rank when the solve is called: :class:`~trisolve.Newton`
    with automatic differentiation (``torch.func`` cannot differentiate through the
    collectives; give the system a ``jacobian=`` callable, or use
    ``derivatives="finite-differences"`` or ``Newton("secant")``; the default method picks one
    of those), and ``gradients=`` (the adjoint's backward evaluations would have to run on every
    rank in step; take gradients from a single-process solve of the undistributed system).

    Parameters
    ----------
    system : TriangularSystem
    group : ProcessGroup, optional
        Default: the default group of ``torch.distributed.init_process_group``.
    timeout : float (seconds) or timedelta, optional
        Longest wait for the other ranks in one collective (default: the group's timeout).
    fingerprint : any, optional
        Extra description that must be equal on every rank (its ``repr`` is digested).

    Returns
    -------
    TriangularSystem
        Its ``fn``/``g`` is a :class:`ShardedFunction` with this rank's counts.

    Examples
    --------
    On one process (a group of size 1) the split is the identity:

    >>> import numpy as np, torch.distributed as dist, trisolve
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> sys = trisolve.distribute(trisolve.BlackBoxSystem(lambda x, lo, hi: 0.5 * x[lo - 1 : hi - 1] + 1.0, n=4))
    >>> trisolve.solve(sys, trisolve.Jacobi(), np.zeros(())).trajectory.tolist()
    [0.0, 1.0, 1.5, 1.75, 1.875]
    >>> sys.fn.rows_evaluated
    10
    >>> dist.destroy_process_group()
    """
    info = GroupInfo.resolve(group, timeout)
    options = _digest(fingerprint)
    if not isinstance(system, TriangularSystem):
        raise TypeError(
            f"distribute() takes a trisolve system (a subclass of trisolve.TriangularSystem), got {type(system).__name__}; "
            "wrap your batched function in a BlackBoxSystem."
        )
    static = (_digest(system.n), _digest(*system.describe()), options)

    def shard(fn: Any, whole: bool) -> ShardedFunction:
        fn = fn.fn if isinstance(fn, ShardedFunction) else fn  # distributing again replaces the split
        return ShardedFunction(fn, whole, info, static, system.n)

    return system.with_batched_function(shard)


def _arguments_fingerprint(arguments: dict[str, Any]) -> tuple:
    """What must agree across ranks besides the system: arrays (row 0, init) by content, the rest by value."""
    return tuple((k, _digest(v) if isinstance(v, (np.ndarray, torch.Tensor)) else repr(v)) for k, v in sorted(arguments.items()))


def solve(
    system: Any,
    solver: Any,
    x0: Any,
    *,
    group: Any = None,
    timeout: float | datetime.timedelta | None = None,
    **options: Any,
) -> Any:
    """Deprecated: ``trisolve.solve(trisolve.distribute(system, group=..., timeout=...), solver, x0, ...)``.

    Warns (``DeprecationWarning``), then runs exactly that, which checks that every rank
    passed the same arguments; kept for one release. As before, a :class:`DistributedError`
    that ended the rounds is raised (the one verb returns it in ``solution.error``).
    """
    import warnings

    from .driver import solve as _solve

    warnings.warn(
        "trisolve.distributed.solve(system, ...) is deprecated; call trisolve.solve(trisolve.distribute(system, group=..., "
        "timeout=...), solver, x0, ...): the one verb checks on every rank that the arguments agree.",
        DeprecationWarning,
        stacklevel=2,
    )
    sol = _solve(distribute(system, group=group, timeout=timeout), solver, x0, **options)
    if isinstance(sol.error, DistributedError):
        raise sol.error
    return sol
