"""What one benchmark row measures: the attention shape (``Case``), the mode, and its FLOPs."""

from __future__ import annotations

import itertools
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


def attention_work(b: int, h: int, n: int, d: int) -> int:
    """b * h * n * n * d: the size measure INTERPRETER_MAX_WORK caps."""
    return b * h * n * n * d


# FLOPs of each mode in units of the forward's: the backward does 2.5x the forward's matmul
# work (five L x L x D products against two), fwd+bwd the sum.
MODE_FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


@dataclass(frozen=True)
class Case:
    """One attention problem: (b, h, n, d) inputs, self-attention (Lq = Lk = n), dropout
    probability ``dropout_p`` on the attention weights."""

    b: int
    h: int
    n: int
    d: int
    causal: bool
    dtype: torch.dtype
    dropout_p: float
    device: torch.device

    @property
    def dtype_name(self) -> str:
        """``bf16`` for ``torch.bfloat16`` (the names of ``DTYPES``)."""
        return DTYPE_NAMES[self.dtype]

    @property
    def work(self) -> int:
        """b * h * n * n * d (see ``INTERPRETER_MAX_WORK``)."""
        return attention_work(self.b, self.h, self.n, self.d)

    def flops(self, mode: str) -> float:
        """Matmul FLOPs of ``mode``: fwd = 4*b*h*n*n*d, halved when causal; see MODE_FLOP_FACTOR."""
        fwd = 4.0 * self.b * self.h * self.n * self.n * self.d
        if self.causal:
            fwd /= 2.0
        return fwd * MODE_FLOP_FACTOR[mode]

    def label(self) -> str:
        """Short human-readable form, e.g. ``b2 h16 n8192 d128 causal bf16``, with
        ``dropout 0.1`` appended when there is dropout."""
        mask = "causal" if self.causal else "full"
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
) -> Iterator[Case]:
    """Cases with b*n = ``tokens`` and h*d = ``hidden`` (at least one batch row and head), one
    per dropout probability of ``dropouts`` for each shape.

    The fixed token and width budget keeps the work per case comparable across lengths, as in
    the FlashAttention papers' benchmarks.
    """
    for n, d, causal, dtype, dropout_p in itertools.product(seqlens, head_dims, causals, dtypes,
                                                            dropouts):
        yield Case(b=max(1, tokens // n), h=max(1, hidden // d), n=n, d=d, causal=causal,
                   dtype=dtype, dropout_p=dropout_p, device=device)
