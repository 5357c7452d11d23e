"""Packed sequences: which sequence, and which of its tiles, a program handles, found on the
device so no launch reads cu_seqlens on the host.

Sequence n (tokens cu[n] .. cu[n+1]-1 of the packed stream) owns the programs
P_n, P_n + 1, ..., P_n + cdiv(len_n, BLOCK) - 1 with P_n = (cu[n] + n * BLOCK) // BLOCK.
These ranges never overlap, since floor(a + b) >= floor(a) + floor(b) gives
P_{n+1} - P_n >= floor(len_n / BLOCK) + 1 >= cdiv(len_n, BLOCK), and they all lie below
T // BLOCK + N (T tokens, N sequences): a grid of that many programs covers every tile of every
sequence whatever the lengths, tiles never cross a sequence, and the at most N programs that
fall in a gap exit at once. A program finds its sequence by binary search over cu.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@triton.jit
def sequence_tile(CU_SEQLENS, n_seqs, search_steps, pid, BLOCK: tl.constexpr):
    """(n, t): program ``pid`` handles tile t of sequence n, the last sequence whose first
    program P_n is <= pid. ``search_steps`` = ceil(log2(n_seqs)) halvings find it. t may lie
    past the sequence's end (a gap program): the caller checks."""
    lo = tl.full([], 0, tl.int32)  # tensors, not constants: the loop reassigns them
    hi = lo + n_seqs - 1
    for _ in range(search_steps):  # invariant: P_lo <= pid, and the answer lies in [lo, hi]
        mid = (lo + hi + 1) // 2
        hit = (tl.load(CU_SEQLENS + mid) + mid * BLOCK) // BLOCK <= pid
        lo = tl.where(hit, mid, lo)
        hi = tl.where(hit, hi, mid - 1)
    return lo, pid - (tl.load(CU_SEQLENS + lo) + lo * BLOCK) // BLOCK


@triton.jit
def sequence_span(CU_SEQLENS, n):
    """(first token, length) of sequence n."""
    start = tl.load(CU_SEQLENS + n)
    return start, tl.load(CU_SEQLENS + n + 1) - start


@triton.jit
def packed_tile(CU_TILED, CU_OTHER, n_seqs, search_steps, pid, BLOCK: tl.constexpr,
                INT64_ROWS: tl.constexpr):
    """Program ``pid``'s place when it tiles the sequences of CU_TILED (queries or keys):
    (its sequence, tile index, first token and length of the sequence, first token and length
    of the same sequence on the other side). The caller exits when the tile lies past the
    length."""
    i_seq, i_tile = sequence_tile(CU_TILED, n_seqs, search_steps, pid, BLOCK)
    start, length = sequence_span(CU_TILED, i_seq)
    other_start, other_length = sequence_span(CU_OTHER, i_seq)
    if INT64_ROWS:
        start = start.to(tl.int64)
        other_start = other_start.to(tl.int64)
    return i_seq, i_tile, start, length, other_start, other_length


@triton.jit
def batch_and_head(i_bh, n_heads, VARLEN: tl.constexpr):
    """(batch row, head) of flattened index ``i_bh``. Packed sequences are one row: the
    constant 0 frees the registers their bounds take (a dK/dV spill at D = 128 otherwise)."""
    i_b = i_bh // n_heads
    i_h = i_bh % n_heads
    if VARLEN:  # not an early return: two returns of different types do not compile
        i_b = 0
        i_h = i_bh
    return i_b, i_h


@dataclass(frozen=True)
class PackedSequences:
    """Host side: the cumulative lengths of N packed sequences, int32 (N + 1,) on the device.
    Query sequence n is tokens cu_seqlens_q[n] .. cu_seqlens_q[n+1]-1 and sees only keys
    cu_seqlens_k[n] .. cu_seqlens_k[n+1]-1."""

    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen: int | None = None  # a hint for the autotuning bucket, if the caller has one

    @property
    def count(self) -> int:
        return self.cu_seqlens_q.shape[0] - 1

    def programs(self, tokens: int, block: int) -> int:
        """Grid size along the packed axis for tiles of ``block`` over ``tokens``."""
        return tokens // block + self.count

    def search_steps(self) -> int:
        return max(self.count - 1, 0).bit_length()


def packed_args(packed: PackedSequences | None, placeholder: torch.Tensor) -> dict:
    """The kernels' packed-sequence arguments: both cumulative-length pointers, the sequence
    count, the binary search's steps and the VARLEN switch (placeholders for a dense
    launch)."""
    if packed is None:
        return {"CU_SEQLENS_Q": placeholder, "CU_SEQLENS_K": placeholder, "n_seqs": 0,
                "search_steps": 0, "VARLEN": False}
    return {"CU_SEQLENS_Q": packed.cu_seqlens_q, "CU_SEQLENS_K": packed.cu_seqlens_k,
            "n_seqs": packed.count, "search_steps": packed.search_steps(), "VARLEN": True}


def tuning_length(packed: PackedSequences | None, seqlen_q: int, seqlen_k: int) -> int:
    """The length that picks the autotuning bucket: the longest sequence when known, else
    the longer side (all tokens, for packed sequences without a hint)."""
    if packed is not None and packed.max_seqlen is not None:
        return packed.max_seqlen
    return max(seqlen_q, seqlen_k)
