"""The compiled round: a round's arithmetic outside ``F``'s expensive call as one compiled function (PyTorch only).

``solve(..., compile=True)`` runs a round's device arithmetic outside the system's expensive
call as one compiled call, :func:`fused_round`, instead of ~100 separately dispatched
operators, when the update map's scan can be traced (:attr:`~trisolve.UpdateMap.compilable`:
:class:`~trisolve.OneStep`, :class:`~trisolve.Picard`, :class:`~trisolve.Unrolled`,
:class:`~trisolve.WeightedPicard`) and the solver offers a :meth:`~trisolve.Solver.fused_step` (:class:`~trisolve.Jacobi`,
:class:`~trisolve.Anderson`, :class:`~trisolve.TriangularAnderson`):

1. the last arithmetic of the system's evaluation
   (:meth:`~trisolve.TriangularSystem.evaluate_parts`: a :class:`~trisolve.SemilinearSystem`
   assembles ``F = a x + sum_q B g + c`` from the kept ``g`` rows);
2. the update map's scan, the residuals, the tolerance test's per-row errors and the finish
   tests: everything the round reads on the host, as one vector (``driver._round_arrays``);
3. the freeze decision on the device (one past the first failed row: the driver's ``start``; and
   where the final rows end, the driver's freeze rule, ``_freeze_ends``, with its per-row state
   kept on the device);
4. the solver's proposal for every row and its new history, with what the host decides after
   the read taken on the device too where it can be (Anderson: the safeguard's restart) or
   assumed (Anderson: no rejection);
5. the window's rows as the driver writes them (frozen rows from ``G``, the proposal after
   them, non-finite proposal rows replaced as ``driver._sanitize`` does).

What stays eager: the expensive call (the network) and its wrapper, the one device-to-host read
per round, the host decisions (the first failed row, the safeguard's growth test, the window),
slicing the window's rows (views) and the trajectory write (the driver stays its only writer).
The driver writes the fused call's rows when its host decisions match the device's -- the same
``start`` (they differ only after a second, careful read of an overflowing residual) and the
solver's :attr:`~trisolve.solvers.base.FusedStep.finish` -- and otherwise calls the solver's
``step`` (compiled separately) as an uncompiled solve does; it takes the device's freeze end
(3.) for the same ``start``, else runs the rule on the host on the state read from the device
(where the device has float64; elsewhere the rule and its state stay on the host). The maths is the same operators;
inductor may fuse them and reorder sums, so values agree with the eager round to the dtype's
round-off (tests: ``tests/test_compiled.py``). A :class:`~trisolve.Newton` map (its ``apply``
evaluates Jacobians) runs its ``apply`` eager and the residuals, errors (2.) and the solver's
mixing as separate compiled functions.

Compiled functions are made with ``torch.compile`` (inductor; on a CPU it needs a C++
compiler) and cached for the process, one per (function, device type, configuration key); each
keeps its own compiled graphs, one per input shape until a second shape makes the window length
symbolic (``dynamic=None``: a sliding window compiles once for its fixed length and once more
for the shrinking last rounds). Anderson's fused step pads its history to ``history_size``
pairs, so a TAA solve compiles two fused graphs (its first round, without history, and every
later round), each static and then symbolic in the window length.
:class:`~trisolve.Unrolled` and :class:`~trisolve.WeightedPicard` with ``order=None`` recur on the
window length (odd-even reduction) and so compile a graph per length until Dynamo's recompile limit, after which that
function runs eager (same values); with an ``order`` one graph serves every length. Inductor's on-disk cache (``/tmp/torchinductor_<user>``)
makes a later process's compiles faster.

Dynamo checks its guards before every call of a compiled function; the guards on module
globals (trisolve's own functions, array_api_compat's tables: about 170 of the fused round's
290) are dropped (:func:`skip_global_guards`), every guard on the arguments kept.

On CUDA the compiled functions are additionally captured as CUDA graphs (inductor's
``triton.cudagraphs``, what ``mode="reduce-overhead"`` sets) and replayed for the fixed shapes
of a sliding window; their outputs live in the graphs' static buffers, so they are copied out
before the next replay
(:class:`RoundCompiler`). That path is written for CUDA only and is not exercised by the CPU
test suite.

Cost and saving on the loaded 2-core CPU: ``benchmarks/launches.py --compiled`` and
``docs/compiled.rst``.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["RoundCompiler", "compile_options", "skip_global_guards", "eager", "clear_cache", "fused_round"]

# (function, device type, key) -> compiled function: one process-wide table, so that a second solve
# with the same configuration reuses the compiled graphs (bounded by the configurations used)
_CACHE: dict[tuple, Callable] = {}


def eager(fn: Callable, key: Hashable = None) -> Callable:
    """The round's functions as written: what an uncompiled solve uses in place of a :class:`RoundCompiler`."""
    return fn


def compile_options(device_type: str) -> dict[str, Any]:
    """``torch.compile`` keyword arguments for a device type.

    ``"cuda"``: inductor plus a CUDA-graph capture per input shape, replayed on later calls
    (``triton.cudagraphs``: what ``mode="reduce-overhead"`` sets); any other device: inductor's
    default mode. ``dynamic=None``: the first shape is compiled static, a second makes the
    changed dimensions symbolic. Every device: Dynamo's guards on module globals are dropped
    (:func:`skip_global_guards`), and inductor's per-call size and stride asserts on the inputs,
    which the kept tensor guards already check.
    """
    options: dict[str, Any] = {"guard_filter_fn": skip_global_guards, "size_asserts": False}
    if device_type == "cuda":
        options["triton.cudagraphs"] = True
    return {"dynamic": None, "fullgraph": False, "options": options}


def skip_global_guards(entries: Any) -> list[bool]:
    """Dynamo ``guard_filter_fn``: keep every guard except those on module globals (``entry.is_global``).

    A compiled round function reads module-level names while it is traced -- trisolve's own
    functions and constants, array_api_compat's dtype tables and helpers, ``math`` -- and
    Dynamo guards each of them on every call: about 170 of the fused round's 290 guards
    (:func:`fused_round`, TAA on the Picard map), checked before each call. They are code
    and constants fixed for the process, so the compiled functions skip those checks. Every
    guard on the call's arguments stays (tensors' dtype, shape and strides, the static
    arguments' values, aliasing, grad mode and other global state): a call with other
    arguments still recompiles. Monkeypatching a module global the round traces after it was
    compiled is not seen: call :func:`clear_cache` after it.
    """
    return [not entry.is_global for entry in entries]


def _own_code(fn: Callable) -> Callable:
    """A copy of ``fn`` with its own code object: Dynamo keeps compiled graphs (and counts
    recompiles) per code object, so each configuration gets its own budget."""
    own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    own.__kwdefaults__ = fn.__kwdefaults__  # keyword-only defaults are not a FunctionType argument
    return own


class RoundCompiler:
    """Compiles the round's pure device functions for one device type; ``compiler(fn, key)`` is the compiled ``fn``.

    Parameters
    ----------
    device_type : str
        ``"cpu"``, ``"cuda"``, ...: chooses :func:`compile_options`.

    Notes
    -----
    ``key`` names the configuration the caller's static arguments (Python numbers, flags, the
    map or solver object) take, so that each gets its own compiled function; shapes, dtypes
    and devices are told apart by Dynamo's guards inside one. On CUDA every output is cloned
    out of the CUDA graph's static memory (a solver keeps some across rounds, and the next
    replay overwrites them).
    """

    def __init__(self, device_type: str):
        self.device_type = str(device_type)
        self.cuda_graphs = self.device_type == "cuda"

    def __call__(self, fn: Callable, key: Hashable = None) -> Callable:
        full = (fn, self.device_type, key)
        compiled = _CACHE.get(full)
        if compiled is None:
            import warnings

            import torch

            # Dynamo notes that it traces through the lru_caches of array_api_compat's namespace and dtype
            # lookups (called from trisolve._backend and array_api_compat's _helpers): pure lookups, expected here
            note = r"Dynamo detected a call to a `functools.lru_cache`-wrapped function at '(_backend|_helpers).py"
            warnings.filterwarnings("ignore", message=note)
            options = compile_options(self.device_type)
            compiled = torch.compile(_own_code(fn), **{**options, "options": dict(options["options"])})  # torch.compile pops from it
            if self.cuda_graphs:  # pragma: no cover - needs a CUDA device
                compiled = _replayed(compiled)
            _CACHE[full] = compiled
        return compiled


def _replayed(compiled: Callable) -> Callable:  # pragma: no cover - needs a CUDA device
    """A CUDA-graph compiled function whose outputs are copies (the graph's buffers are reused by the next replay)."""
    import torch
    from torch.utils._pytree import tree_map

    def call(*args: Any, **kwargs: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        out = compiled(*args, **kwargs)
        return tree_map(lambda a: a.clone() if isinstance(a, torch.Tensor) else a, out)

    return call


def fused_round(round_arrays: Callable, sanitize: Callable, assemble: Callable | None, inputs: tuple, update_map: Any,
                J: Any, xv: Any, thr_w: Any, thr_last: Any, prev_last: Any, step: Callable, step_arrays: tuple,
                freeze: Callable | None, settle: Any, *, flags: dict, batch_ndim: int, xp: Any) -> tuple:  # fmt: skip
    """A whole round outside the expensive call, for one compiled graph: ``(f, (G, R, d, xw, decisions), rows, outputs, settle, c)``.

    1. ``F`` from the system's :meth:`~trisolve.TriangularSystem.evaluate_parts` (``assemble(*inputs)``,
       or ``inputs[0]`` when ``assemble`` is ``None``);
    2. the driver's ``round_arrays`` (the map's scan on ``J``, the residuals, the decisions vector
       the host reads), with the device's ``start`` and the solver's checks appended;
    3. ``start``, the driver's freeze decision on the device: one past the first row whose
       error (``max(e_d, e_R)``, nan counting as failed) exceeds 1, at most ``w``;
    4. the solver's :class:`~trisolve.solvers.base.FusedStep` function: its proposal for every
       row, its checks (host decisions it took on the device, e.g. Anderson's restart) and its
       outputs (the new history);
    5. ``rows``: the window as the driver writes it -- ``G`` on rows ``< start``, the proposal
       on the others, where a non-finite proposal row falls back to ``G``, or to the last
       frozen row ``G[start - 1]`` where ``G`` is not finite either (the driver's ``sanitize``);
    6. with ``freeze`` (the driver's ``_freeze_ends_device``) and ``settle`` (the window rows' state of
       the freeze rule, ``(w, 2)``): where the final rows end, appended to the decisions before
       ``start``, and the rows' new state (``settle`` returned; ``None`` without ``freeze``).

    Pure device arithmetic: every host decision is made after the read, by the driver, which
    uses ``rows`` and the freeze decision only where its own decisions match (``start``, the
    solver's ``finish``). ``c``: the number of the solver's checks at the end of the decisions,
    after ``start``.
    """
    f = inputs[0] if assemble is None else assemble(*inputs, xp=xp)
    g, r, d, copy, decisions = round_arrays(update_map, J, None, None, xv, f, thr_w, thr_last, prev_last, xp=xp, **flags)
    w = g.shape[0]
    e_d = decisions[:w]
    if flags["one_step"]:
        err = e_d
    else:
        e_R = decisions[w : 2 * w]
        err = xp.where(xp.isnan(e_d) | xp.isnan(e_R), math.nan, xp.maximum(e_d, e_R))
    failed = ~(err <= 1.0)  # nan compares False: failed
    first = xp.argmax(xp.astype(failed, xp.int32))  # the first failed row (0 when none failed)
    start = xp.where(xp.any(failed), first + 1, w)  # rows [0, start) freeze
    x = copy if flags["retain"] else xv
    proposal, checks, outputs = step(x, g, r, start, err, *step_arrays, batch_ndim=batch_ndim, xp=xp)
    anchor = xp.take(g, xp.reshape(start - 1, (1,)), axis=0)  # the last row that freezes now
    tail = sanitize(proposal, None if proposal is g else g, anchor, xp)
    before = xp.reshape(xp.arange(w, device=g.device) < start, (w,) + (1,) * (len(g.shape) - 1))
    rows = xp.where(before, g, tail)
    tail = [xp.astype(xp.reshape(start, (1,)), decisions.dtype)] + ([] if checks is None else [checks])
    if freeze is not None:
        end, settle = freeze(err, settle, start, xp=xp)
        tail.insert(0, xp.astype(xp.reshape(end, (1,)), decisions.dtype))
    return f, (g, r, d, copy, xp.concat([decisions, *tail], axis=0)), rows, outputs, settle, 0 if checks is None else int(checks.shape[0])


def clear_cache() -> None:
    """Forget the compiled functions of this process (the next compiled solve compiles again)."""
    _CACHE.clear()


def check_compile(compile: Any, x0: Any) -> bool:
    """Validate ``solve``'s ``compile=`` against ``x0``: a bool, and ``True`` only for PyTorch tensors."""
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {type(compile).__name__}.")
    if compile:
        from array_api_compat import is_torch_array

        if not is_torch_array(x0):
            raise TypeError(
                f"compile=True compiles the round with torch.compile and needs PyTorch tensors; x0 is a {type(x0).__module__}."
                f"{type(x0).__name__}. Pass compile=False (the default) for other arrays."
            )
    return compile
