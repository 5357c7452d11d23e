"""What one benchmark row measures: the attention problem (``Case``: shape, masking, window,
softcap, dropout), the mode, and its FLOPs."""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class Case:
    """One attention problem: (b, h, n, d) inputs, self-attention (Lq = Lk = n), dropout
    probability ``dropout_p`` on the attention weights.

    ``window`` W is a Mistral-style sliding window: a causal query i sees keys
    i - W <= j <= i (``window=(W, 0)`` with ``causal=True`` in the package's terms); it needs
    ``causal``. ``softcap`` c caps the scores as c * tanh(s / c) (Gemma 2).
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

    def __post_init__(self) -> None:
        if self.window is not None and (not self.causal or self.window < 0):
            raise ValueError(f"a window is a causal window of W >= 0 keys, got causal="
                             f"{self.causal}, window={self.window}")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"softcap must be positive, got {self.softcap}")

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
        """b * h * n * n * d (see ``INTERPRETER_MAX_WORK``)."""
        return attention_work(self.b, self.h, self.n, self.d)

    def flops(self, mode: str) -> float:
        """Matmul FLOPs of ``mode``: fwd = 4*b*h*d per pair of ``flop_pairs`` (4*b*h*n*n*d
        full, half that causal, less with a window); see MODE_FLOP_FACTOR."""
        pairs = flop_pairs(self.n, causal=self.causal, window=self.window)
        return 4.0 * self.b * self.h * self.d * pairs * MODE_FLOP_FACTOR[mode]

    def label(self) -> str:
        """Short human-readable form, e.g. ``b2 h16 n8192 d128 causal bf16`` or
        ``b4 h16 n4096 d128 causal window 1024 softcap 50 bf16``, with ``dropout 0.1`` appended
        when there is dropout."""
        mask = "causal" if self.causal else "full"
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
    variants_everywhere: bool = True,
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
