"""One benchmark row: a provider's attention on one case in one mode, timed and checked."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.accuracy import Expected, max_errors
from bench.cases import Case
from bench.providers import AttentionFn
from bench.timing import median_ms, peak_mib


@dataclass
class Row:
    """One line of the results: the case, the mode, a status and the measurements.

    ``status`` is "ok", "unavailable: <reason>", "OOM" or "error: <exception>"; the numbers are
    NaN unless it is "ok", and the errors are NaN on dropout rows (p > 0) too. Column names
    (b, h, n, d) follow ../shared/anchors-h100.csv; ``h_kv`` counts the key/value heads, ``p``
    is the dropout probability, ``window`` and ``softcap`` the case's sliding window and
    softcap (None: none), ``layout`` ``packed`` or ``padded`` for a case of documents (``docs``
    their count) or ``decode``. ``tokens_per_s`` counts the case's tokens (a case of
    documents: theirs, not the padding; decoding: the new ones); ``gb_per_s`` the bytes a
    decoding call must move (NaN for the other cases).
    """

    provider: str
    mode: str
    b: int
    h: int
    h_kv: int
    n: int
    d: int
    causal: bool
    dtype: str
    p: float
    window: int | None = None
    softcap: float | None = None
    layout: str | None = None
    docs: int | None = None
    status: str = "ok"
    ms: float = math.nan
    tflops: float = math.nan
    tokens_per_s: float = math.nan
    gb_per_s: float = math.nan
    peak_mib: float = math.nan
    speedup_vs_eager: float = math.nan
    speedup_vs_best_other: float = math.nan
    max_err: float = math.nan
    rel_err: float = math.nan

    @classmethod
    def for_case(cls, provider: str, mode: str, case: Case, status: str = "ok") -> Row:
        """A row for ``case`` with no measurements yet."""
        docs = None if case.documents is None else len(case.documents)
        return cls(provider, mode, case.b, case.h, case.h_kv, case.n, case.d, case.causal,
                   case.dtype_name, case.dropout_p, case.window, case.softcap, case.layout, docs,
                   status)

    def problem(self) -> tuple:
        """What rows of different providers share when they solve the same problem."""
        return (self.b, self.h, self.h_kv, self.n, self.d, self.causal, self.window, self.softcap,
                self.layout, self.docs, self.dtype, self.p, self.mode)


@dataclass(frozen=True)
class Inputs:
    """Random query, key, value and output gradient of a case's shapes; the inputs require
    grad, except when decoding (inference)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor

    @classmethod
    def random(cls, case: Case) -> Inputs:
        """Fresh ``torch.randn`` tensors for ``case``."""
        (q_shape, kv_shape), like = case.shapes(), {"dtype": case.dtype, "device": case.device}
        q, k, v = (torch.randn(shape, **like, requires_grad=not case.decode)
                   for shape in (q_shape, kv_shape, kv_shape))
        return cls(q, k, v, torch.randn(q_shape, **like))


@dataclass(frozen=True)
class Timing:
    """``do_bench`` warm-up and repetition budgets, in milliseconds."""

    warmup_ms: float
    rep_ms: float


def mode_step(attention: AttentionFn, x: Inputs, mode: str) -> Callable[[], object]:
    """The closure timed for ``mode``: the forward; the backward of a forward computed here
    once (its graph retained); or both."""
    if mode == "fwd":
        return lambda: attention(x.q, x.k, x.v)
    if mode == "bwd":
        out = attention(x.q, x.k, x.v)
        return lambda: out.backward(x.dout, retain_graph=True)
    return lambda: attention(x.q, x.k, x.v).backward(x.dout)


def mode_errors(attention: AttentionFn, x: Inputs, expected: Expected | None, mode: str
                ) -> tuple[float, float]:
    """Errors against float64 of what ``mode`` computes: the output for fwd, (dq, dk, dv) for
    bwd, all four for fwd+bwd; NaN without a reference (dropout: every provider draws its own
    mask). Also the warm-up (and, for flex, the compile) of the row."""
    out = attention(x.q, x.k, x.v)
    grads = () if mode == "fwd" else torch.autograd.grad(out, (x.q, x.k, x.v), x.dout)
    if expected is None:
        return math.nan, math.nan
    pairs = [] if mode == "bwd" else [(out.detach(), expected.out)]
    if grads:
        pairs += zip(grads, (expected.dq, expected.dk, expected.dv), strict=True)
    return max_errors(pairs)


def error_status(exc: BaseException) -> str:
    """``error: <type>: <message>`` on one line."""
    return f"error: {type(exc).__name__}: {' '.join(str(exc).split())}"


def measure(row: Row, attention: AttentionFn, case: Case, x: Inputs, expected: Expected | None,
            timing: Timing) -> Row:
    """Fill ``row`` with errors (NaN when ``expected`` is None), peak memory, median time,
    TFLOP/s, tokens/s and when decoding GB/s; an OOM or any other exception becomes the row's
    status instead of ending the sweep."""
    try:
        row.max_err, row.rel_err = mode_errors(attention, x, expected, row.mode)
        step = mode_step(attention, x, row.mode)
        grads = () if row.mode == "fwd" else (x.q, x.k, x.v)
        row.peak_mib = peak_mib(step, case.device)
        row.ms = median_ms(step, device=case.device, warmup_ms=timing.warmup_ms,
                           rep_ms=timing.rep_ms, grad_to_none=grads)
        row.tflops = case.flops(row.mode) / (row.ms * 1e-3) / 1e12
        row.tokens_per_s = case.tokens / (row.ms * 1e-3)
        if case.decode:
            row.gb_per_s = case.bytes_moved / (row.ms * 1e-3) / 1e9
    except torch.cuda.OutOfMemoryError:
        row.status = "OOM"
    except Exception as exc:  # any provider failure is a result, not a crash
        row.status = error_status(exc)
    if row.status != "ok":
        row.ms = row.tflops = row.tokens_per_s = row.gb_per_s = row.peak_mib = math.nan
        row.max_err = row.rel_err = math.nan
    for t in (x.q, x.k, x.v):
        t.grad = None
    return row
