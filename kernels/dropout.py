"""Counter-based dropout: the keep decision of one attention weight, recomputable anywhere.

Each weight (batch*head, query row, key column) draws Philox at counter
``(bh * Lq + row) * Lk + col`` (64-bit) under the call's seed, so the forward and both backward
kernels regenerate the same mask from any tiling, and nothing L x L is ever stored.
"""

import triton
import triton.language as tl


@triton.jit
def keep_mask(seed, counters, dropout_p):
    """True where the weight survives: P(keep) = 1 - dropout_p. ``counters`` is int64."""
    return tl.rand(seed, counters) >= dropout_p


@triton.jit
def _keep_mask_kernel(
    OUT,  # [BH, Lq, Lk] bool (as int8)
    SEED,  # [1] int64
    dropout_p,
    seqlen_q,
    seqlen_k,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_n = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    offs_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    counters = (i_bh * seqlen_q + offs_m[:, None]) * seqlen_k + offs_n[None, :]
    b_keep = keep_mask(tl.load(SEED), counters, dropout_p)
    m_out = (offs_m[:, None] < seqlen_q) & (offs_n[None, :] < seqlen_k)
    tl.store(OUT + counters, b_keep.to(tl.int8), mask=m_out)


def materialize_keep_mask(out, seed, dropout_p: float) -> None:
    """Fill ``out`` (BH, Lq, Lk) int8 with the keep mask the attention kernels use."""
    bh, seqlen_q, seqlen_k = out.shape
    block = 32
    grid = (triton.cdiv(seqlen_q, block), triton.cdiv(seqlen_k, block), bh)
    _keep_mask_kernel[grid](out, seed, dropout_p, seqlen_q, seqlen_k, BLOCK_M=block,
                            BLOCK_N=block)
