"""What one benchmark row measures: the attention problem (``Case``: shape, masking, window,
softcap, dropout, packed documents, or decoding against a KV cache), the mode, and its FLOPs."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

MODES = ("fwd", "bwd", "fwd+bwd")

# The dtype names every bench command line takes and every results table shows.
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

# Without CUDA our kernels run on Triton's interpreter, one program at a time on numpy: about
# 30 s per GFLOP of fwd+bwd, roughly (n / 32)**2 tile pairs per head. Cases up to this much
# attention work (b * h * n * n * d; b1 h2 n256 d32) finish in seconds; GPU-sized ones would
# take hours.
INTERPRETER_MAX_WORK = 2**22


# Decoding cases share each key/value head among this many query heads (Llama 3: 32 / 8).
DECODE_GROUP = 4


def attention_work(b: int, h: int, n: int, d: int) -> int:
    """b * h * n * n * d: the size measure INTERPRETER_MAX_WORK caps."""
    return b * h * n * n * d


# FLOPs of each mode in units of the forward's: the backward does 2.5x the forward's matmul
# work (five L x L x D products against two), fwd+bwd the sum.
MODE_FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def visible_pairs(n: int, *, causal: bool, window: int | None = None) -> int:
    """How many (query i, key j) pairs of an n x n self-attention take part: n*n full,
    n*(n+1)/2 causal, and with a causal sliding window W the sum over i of min(i, W) + 1."""
    if not causal:
        return n * n
    if window is None or window >= n - 1:
        return n * (n + 1) // 2
    # Rows i <= W see keys 0..i; the n - 1 - W rows after them see W + 1 keys each.
    return (window + 1) * (window + 2) // 2 + (n - 1 - window) * (window + 1)


def flop_pairs(n: int, *, causal: bool, window: int | None = None) -> float:
    """The pairs the FLOP count charges: the visible pairs, with each causal row's own key
    (the diagonal) counted as half a pair. That is the convention of the FlashAttention papers
    and the project's H100 anchors, causal = exactly half of full (n*n/2); a window removes
    whole pairs below the diagonal from it."""
    pairs = float(visible_pairs(n, causal=causal, window=window))
    return pairs - n / 2 if causal else pairs


def document_lengths(tokens: int, longest: int, seed: int = 0) -> tuple[int, ...]:
    """Lengths of documents filling ``tokens`` tokens, drawn log-uniform between
    ``longest // 64`` (at least 1) and ``longest`` (the last one cut to fit): many short
    documents and a few long ones, the spread of a pretraining corpus. Fixed by ``seed``."""
    shortest = max(1, longest // 64)
    draws = torch.rand(tokens, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lengths: list[int] = []
    for u in draws.tolist():
        left = tokens - sum(lengths)
        if left == 0:
            break
        lengths.append(min(left, round(shortest * (longest / shortest) ** u)))
    return tuple(lengths)


@dataclass(frozen=True)
class Case:
    """One attention problem: (b, h, n, d) inputs, self-attention (Lq = Lk = n), dropout
    probability ``dropout_p`` on the attention weights.

    ``window`` W is a Mistral-style sliding window: a causal query i sees keys
    i - W <= j <= i (``window=(W, 0)`` with ``causal=True`` in the package's terms); it needs
    ``causal``. ``softcap`` c caps the scores as c * tanh(s / c) (Gemma 2).

    ``documents``: the lengths of causal documents, each attending only to itself, laid out
    ``packed`` end to end in one row (b = 1, n = their sum: ``flash_attention_varlen``), or
    padded, one per row (b = their count, n = the longest; padding at the ends, which causal
    real queries never see, so this is plain causal attention over the padded batch). Both
    count the documents' own tokens and FLOPs only.

    ``decode``: one new query per row (Lq = 1, the row's newest token) against a KV cache of
    n keys, ``kv_heads`` key/value heads (default h) serving the h query heads; causal,
    bottom-right aligned, so it sees all n keys. Inference: the forward only, no dropout.
    """

    b: int
    h: int
    n: int
    d: int
    causal: bool
    dtype: torch.dtype
    dropout_p: float
    device: torch.device
    window: int | None = None
    softcap: float | None = None
    documents: tuple[int, ...] | None = None
    packed: bool = False
    decode: bool = False
    kv_heads: int | None = None

    def __post_init__(self) -> None:
        if self.window is not None and (not self.causal or self.window < 0):
            raise ValueError(f"a window is a causal window of W >= 0 keys, got causal="
                             f"{self.causal}, window={self.window}")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"softcap must be positive, got {self.softcap}")
        if self.documents is not None:
            docs = self.documents
            layout = (1, sum(docs)) if self.packed else (len(docs), max(docs))
            if not self.causal or (self.b, self.n) != layout:
                raise ValueError(f"documents {docs} are causal, packed into b=1 n={sum(docs)} "
                                 f"or padded to b={len(docs)} n={max(docs)}; got causal="
                                 f"{self.causal}, b={self.b}, n={self.n}")
        elif self.packed:
            raise ValueError("packed needs documents")
        if self.decode and not (self.causal and self.dropout_p == 0 and self.window is None
                                and self.softcap is None and self.documents is None):
            raise ValueError("a decode case is causal with no dropout, window, softcap or "
                             "documents")
        if self.h % self.h_kv:
            raise ValueError(f"kv_heads ({self.h_kv}) must divide h ({self.h})")

    @property
    def h_kv(self) -> int:
        """The key/value heads: ``kv_heads``, or h."""
        return self.kv_heads or self.h

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The (b, h, Lq, d) query and (b, h_kv, n, d) key and value shapes (Lq = 1 decoding,
        else n)."""
        return ((self.b, self.h, 1 if self.decode else self.n, self.d),
                (self.b, self.h_kv, self.n, self.d))

    @property
    def layout(self) -> str | None:
        """``packed`` or ``padded`` for a case of documents, ``decode`` for decoding, else
        None."""
        if self.decode:
            return "decode"
        if self.documents is None:
            return None
        return "packed" if self.packed else "padded"

    @property
    def tokens(self) -> int:
        """The tokens computed for: b * n, the documents' own, or when decoding the b new
        ones."""
        if self.decode:
            return self.b
        return self.b * self.n if self.documents is None else sum(self.documents)

    @property
    def bytes_moved(self) -> int | None:
        """When decoding, the bytes a call must move at least: the cache read once, the
        queries read and the outputs written; else None."""
        if not self.decode:
            return None
        q_shape, kv_shape = self.shapes()
        return self.dtype.itemsize * 2 * (math.prod(q_shape) + math.prod(kv_shape))

    def cu_seqlens(self) -> torch.Tensor:
        """int32 (documents + 1,) cumulative document lengths on the case's device."""
        lengths = torch.tensor((0, *self.documents), dtype=torch.int32, device=self.device)
        return lengths.cumsum(0, dtype=torch.int32)

    def reference_options(self) -> dict[str, object]:
        """The masking keywords of the package's reference attention for this case: causal,
        window and softcap, and for packed documents a block-diagonal bool ``attn_mask``."""
        options: dict[str, object] = dict(causal=self.causal, window=self.window_arg,
                                          softcap=self.softcap)
        if self.decode:  # the query is the newest key
            options["align"] = "bottom_right"
        if self.packed:
            document = torch.repeat_interleave(
                torch.arange(len(self.documents), device=self.device),
                torch.tensor(self.documents, device=self.device))
            options["attn_mask"] = document[:, None] == document[None, :]
        return options

    @property
    def window_arg(self) -> tuple[int, int] | None:
        """The ``window=`` keyword of ``flash_attention`` and the reference: (W, 0) or None."""
        return None if self.window is None else (self.window, 0)

    @property
    def dtype_name(self) -> str:
        """``bf16`` for ``torch.bfloat16`` (the names of ``DTYPES``)."""
        return DTYPE_NAMES[self.dtype]

    @property
    def work(self) -> int:
        """b * h * n * n * d, summed over the documents when packed, b * h * n * d when decoding
        (see ``INTERPRETER_MAX_WORK``)."""
        if self.decode:
            return self.b * self.h * self.n * self.d
        if self.packed:
            return sum(attention_work(1, self.h, n, self.d) for n in self.documents)
        return attention_work(self.b, self.h, self.n, self.d)

    def flops(self, mode: str) -> float:
        """Matmul FLOPs of ``mode``: fwd = 4*b*h*d per pair of ``flop_pairs`` (4*b*h*n*n*d
        full, half that causal, less with a window), summed over the documents (not the
        padding) for a case of documents, 4*b*h*n*d when decoding (n pairs a row); see
        MODE_FLOP_FACTOR."""
        if self.decode:
            return 4.0 * self.b * self.h * self.n * self.d * MODE_FLOP_FACTOR[mode]
        rows = [self.n] * self.b if self.documents is None else self.documents
        pairs = sum(flop_pairs(n, causal=self.causal, window=self.window) for n in rows)
        return 4.0 * self.h * self.d * pairs * MODE_FLOP_FACTOR[mode]

    def label(self) -> str:
        """Short human-readable form, e.g. ``b2 h16 n8192 d128 causal bf16`` or
        ``b4 h16 n4096 d128 causal window 1024 softcap 50 bf16``, with ``dropout 0.1`` appended
        when there is dropout; ``b1 h16 n16384 d128 causal packed 17 docs bf16`` for documents;
        ``b8 h16 kv4 n32768 d128 decode bf16`` when decoding.
        """
        if self.decode:
            return (f"b{self.b} h{self.h} kv{self.h_kv} n{self.n} d{self.d} decode "
                    f"{self.dtype_name}")
        mask = "causal" if self.causal else "full"
        if self.documents is not None:
            mask += f" {self.layout} {len(self.documents)} docs"
        if self.window is not None:
            mask += f" window {self.window}"
        if self.softcap is not None:
            mask += f" softcap {self.softcap:g}"
        dropout = f" dropout {self.dropout_p:g}" if self.dropout_p > 0 else ""
        return f"b{self.b} h{self.h} n{self.n} d{self.d} {mask} {self.dtype_name}{dropout}"


def sweep_cases(
    *,
    tokens: int,
    hidden: int,
    seqlens: Iterable[int],
    head_dims: Iterable[int],
    causals: Iterable[bool],
    dtypes: Iterable[torch.dtype],
    dropouts: Iterable[float],
    device: torch.device,
    windows: Iterable[int] = (),
    softcaps: Iterable[float] = (),
    varlen: bool = False,
    variants_everywhere: bool = True,
    decode_lengths: Iterable[int] = (),
    decode_batch: int = 1,
) -> Iterator[Case]:
    """Cases with b*n = ``tokens`` and h*d = ``hidden`` (at least one batch row and head), one
    per dropout probability of ``dropouts`` for each shape.

    The fixed token and width budget keeps the work per case comparable across lengths, as in
    the FlashAttention papers' benchmarks.

    Beside these plain cases, each window W of ``windows`` adds a case with that sliding window
    for every causal one with n > W + 1 (a wider window hides nothing: that case is plain
    causal attention), and each softcap of ``softcaps`` a case with that softcap. With
    ``variants_everywhere`` False they are added to one case only, which keeps a quick sweep
    quick: the causal one (if any) of the most work, then longest n, then largest d (the first
    such in the order of ``dtypes`` and ``dropouts``).

    Last, for each cache length n of ``decode_lengths``, head dim and dtype, a decoding case:
    ``decode_batch`` rows, h = hidden / d query heads sharing h / DECODE_GROUP key/value heads.
    """
    plain = [
        Case(b=max(1, tokens // n), h=max(1, hidden // d), n=n, d=d, causal=causal, dtype=dtype,
             dropout_p=dropout_p, device=device)
        for n, d, causal, dtype, dropout_p in itertools.product(seqlens, head_dims, causals,
                                                                dtypes, dropouts)
    ]
    windows, softcaps = list(windows), list(softcaps)
    bases = plain
    if not variants_everywhere and plain:
        bases = [max(plain, key=lambda c: (c.causal, c.work, c.n, c.d))]  # max keeps the first
    yield from plain
    for case in bases:
        for window in windows:
            if case.causal and window < case.n - 1:
                yield dataclasses.replace(case, window=window)
        for softcap in softcaps:
            yield dataclasses.replace(case, softcap=softcap)
        if varlen and case.causal:
            docs = document_lengths(case.b * case.n, case.n)
            yield dataclasses.replace(case, b=1, n=sum(docs), documents=docs, packed=True)
            yield dataclasses.replace(case, b=len(docs), n=max(docs), documents=docs)
    for n, d, dtype in itertools.product(decode_lengths, head_dims, dtypes):
        h = max(1, hidden // d)
        kv_heads = math.gcd(h, max(1, h // DECODE_GROUP))  # a divisor of h
        yield Case(b=decode_batch, h=h, n=n, d=d, causal=True, dtype=dtype, dropout_p=0.0,
                   device=device, decode=True, kv_heads=kv_heads)
