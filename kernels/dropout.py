"""Counter-based dropout: the keep decisions of a tile of attention weights, recomputable
anywhere.

Philox yields four 32-bit numbers per counter, so four neighbouring key columns share one:
weight (row r of head bh, column c) takes number ``c % 4`` of counter
``(bh * Lq + r) * cdiv(Lk, 4) + c // 4`` (64-bit) under the call's seed. The forward and both
backward kernels regenerate the same mask from any tiling (tiles start at multiples of four
columns), and nothing L x L is ever stored.
"""

import triton
import triton.language as tl


@triton.jit
def keep_mask(seed, rows, start_n, seqlen_k, dropout_p,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_M, BLOCK_N] bool, True where the weight survives (P = 1 - dropout_p).

    ``rows`` [BLOCK_M] int64 are global query rows (bh * Lq + row); the columns are
    start_n + arange(BLOCK_N), with start_n a multiple of 4.
    """
    offs_g = start_n // 4 + tl.arange(0, BLOCK_N // 4)
    counters = rows[:, None] * tl.cdiv(seqlen_k, 4) + offs_g[None, :]  # [BLOCK_M, BLOCK_N//4]
    r0, r1, r2, r3 = tl.randint4x(seed, counters)
    # [BLOCK_M, BLOCK_N//4, 2, 2] -> [BLOCK_M, BLOCK_N]: column 4g + j takes r_j.
    b_r = tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), [BLOCK_M, BLOCK_N])
    return tl.uint_to_uniform_float(b_r) >= dropout_p


@triton.jit
def _keep_mask_kernel(
    OUT,  # [BH, Lq, Lk] int8
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
    rows = i_bh * seqlen_q + offs_m
    b_keep = keep_mask(tl.load(SEED), rows, i_n * BLOCK_N, seqlen_k, dropout_p, BLOCK_M,
                       BLOCK_N)
    m_out = (offs_m[:, None] < seqlen_q) & (offs_n[None, :] < seqlen_k)
    tl.store(OUT + rows[:, None] * seqlen_k + offs_n[None, :], b_keep.to(tl.int8), mask=m_out)


def materialize_keep_mask(out, seed, dropout_p: float) -> None:
    """Fill ``out`` (BH, Lq, Lk) int8 with the keep mask the attention kernels use."""
    bh, seqlen_q, seqlen_k = out.shape
    block = 32
    grid = (triton.cdiv(seqlen_q, block), triton.cdiv(seqlen_k, block), bh)
    _keep_mask_kernel[grid](out, seed, dropout_p, seqlen_q, seqlen_k, BLOCK_M=block,
                            BLOCK_N=block)
