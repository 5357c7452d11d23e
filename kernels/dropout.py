"""Counter-based dropout: the keep decisions of a tile of attention weights, recomputable
anywhere.

One Philox call (four 32-bit outputs) gives eight 16-bit random numbers, one per weight of
eight neighbouring key columns: weight (row r of head bh, column 8g + i) takes number i of
counter ``(bh * Lq + r) * cdiv(Lk, 8) + g`` (64-bit) under the call's seed, where number
2j + h is the low (h = 0) or high (h = 1) half of output j. A weight is dropped when its
number is below ``round(p * 2**16)``, so the drop probability moves in steps of 2**-16 (the
survivors' scale 1/(1-p) keeps the exact p: a relative bias of at most 2**-17 / (1-p),
1.5e-5 at p = 0.5); sixteen bits per decision need half the Philox calls of 32.
The forward and both backward kernels regenerate the same mask from any tiling, and nothing
L x L is ever stored. A tile that starts on a group (every tile of a whole-problem launch)
makes one call per group; one that starts inside a group (a context-parallel block at any
offset) makes one per weight, each taking its own group and lane.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class DropoutStream(NamedTuple):
    """Where one launch's attention weights sit in the dropout stream: query row r of head bh
    (bh = b * Hq + h) is stream row ``bh * rows + row_offset + r`` and key column j is stream
    column ``col_offset + j`` of a ``cols``-column grid (any offsets).

    A launch over the whole problem is ``(Lq, 0, Lk, 0)``. A launch over a block of a longer
    sequence (a context-parallel shard) names the block's place in the whole, so it draws
    exactly the decisions the whole problem's launch would. Packed sequences use
    ``(Tq, 0, Tk, 0)``: the kernel adds each sequence's first token to the row, and its keys
    count from 0 (a query row belongs to one sequence, so every pair keeps its own number).
    """

    rows: int
    row_offset: int
    cols: int
    col_offset: int

    def args(self) -> dict:
        """The kernels' stream arguments."""
        return {"rng_rows_per_head": self.rows, "rng_row_offset": self.row_offset,
                "rng_cols": self.cols, "rng_col_offset": self.col_offset}


def drop_threshold(dropout_p: float) -> int:
    """The 16-bit number below which a weight is dropped (keep_mask compares the halves of
    Philox's outputs against it)."""
    return round(dropout_p * 2**16)


def dropout_args(dropout_p: float, seed: torch.Tensor | None,
                 placeholder: torch.Tensor) -> dict:
    """The kernels' dropout arguments for drop probability ``dropout_p``: the seed (a
    one-element int64 device tensor, read only when p > 0; ``placeholder`` stands in
    otherwise), the threshold, the survivors' scale 1 / (1 - p) and the HAS_DROPOUT switch."""
    has_dropout = dropout_p > 0.0
    return {"SEED": seed if has_dropout else placeholder,
            "drop_below": drop_threshold(dropout_p),
            "dropout_scale": 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0,
            "HAS_DROPOUT": has_dropout}


@triton.jit
def _stack4(a, b, c, d):
    """[..., 2, 2] from four [...] tensors, in the order a, b, c, d once the last two axes are
    flattened (tl.join appends the fastest-varying axis)."""
    return tl.join(tl.join(a, c), tl.join(b, d))


@triton.jit
def _keep_groups(seed, counters, drop_below):
    """[*counters.shape, 2, 2, 2] bool: entry [..., a, b, h] says whether number 2j + h
    (j = 2a + b) of the counter survives, so flattening the last three axes lists the eight
    decisions in column order."""
    r0, r1, r2, r3 = tl.randint4x(seed, counters)
    b_r = _stack4(r0, r1, r2, r3)  # [..., 2, 2]: output j
    # Compare before any reshape, so a tile that changes layout holds bools, not uint32.
    return tl.join((b_r & 0xFFFF) >= drop_below, (b_r >> 16) >= drop_below)


@triton.jit
def _keep_columns(seed, rows, cols, stream_cols, drop_below):
    """bool of the broadcast shape of ``rows`` and ``cols`` (stream rows and columns), True
    where the weight survives: each weight makes its own group's call and takes its lane."""
    r0, r1, r2, r3 = tl.randint4x(seed, rows * tl.cdiv(stream_cols, 8) + cols // 8)
    lane = cols % 8
    word = tl.where(lane < 4, tl.where(lane < 2, r0, r1), tl.where(lane < 6, r2, r3))
    return tl.where(lane % 2 == 0, word & 0xFFFF, word >> 16) >= drop_below


@triton.jit
def keep_mask(seed, rows, start_n, stream_cols, drop_below,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_M, BLOCK_N] bool, True where the weight survives.

    ``rows`` [BLOCK_M] int64 are stream rows (``DropoutStream``); the columns are stream
    columns start_n + arange(BLOCK_N) of ``stream_cols``, start_n anywhere.
    """
    if start_n % 8 == 0:  # a call per group of eight columns
        offs_g = start_n // 8 + tl.arange(0, BLOCK_N // 8)
        counters = rows[:, None] * tl.cdiv(stream_cols, 8) + offs_g[None, :]  # [M, N // 8]
        b_keep = tl.reshape(_keep_groups(seed, counters, drop_below), [BLOCK_M, BLOCK_N])
    else:  # inside a group (a context-parallel block's offset): a call per weight
        b_keep = _keep_columns(seed, rows[:, None], start_n + tl.arange(0, BLOCK_N)[None, :],
                               stream_cols, drop_below)
    return b_keep


@triton.jit
def keep_mask_t(seed, rows, start_n, stream_cols, drop_below,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``keep_mask`` transposed, [BLOCK_N, BLOCK_M], for the dK/dV kernel's transposed tiles.
    Generated in that orientation: the sm_90a compile report shows fewer spilled registers
    than transposing the [BLOCK_M, BLOCK_N] mask."""
    if start_n % 8 == 0:
        offs_g = start_n // 8 + tl.arange(0, BLOCK_N // 8)
        counters = rows[None, :] * tl.cdiv(stream_cols, 8) + offs_g[:, None]  # [N // 8, M]
        b_keep = tl.permute(_keep_groups(seed, counters, drop_below), (0, 2, 3, 4, 1))
        b_keep = tl.reshape(b_keep, [BLOCK_N, BLOCK_M])
    else:
        b_keep = _keep_columns(seed, rows[None, :], start_n + tl.arange(0, BLOCK_N)[:, None],
                               stream_cols, drop_below)
    return b_keep


@triton.jit
def _keep_mask_kernel(
    OUT,  # [BH, Lq, Lk] int8
    SEED,  # [1] int64
    drop_below,
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
    b_keep = keep_mask(tl.load(SEED), rows, i_n * BLOCK_N, seqlen_k, drop_below, BLOCK_M,
                       BLOCK_N)
    m_out = (offs_m[:, None] < seqlen_q) & (offs_n[None, :] < seqlen_k)
    tl.store(OUT + rows[:, None] * seqlen_k + offs_n[None, :], b_keep.to(tl.int8), mask=m_out)


def materialize_keep_mask(out, seed, dropout_p: float) -> None:
    """Fill ``out`` (BH, Lq, Lk) int8 with the keep mask the attention kernels use."""
    bh, seqlen_q, seqlen_k = out.shape
    block = 32
    grid = (triton.cdiv(seqlen_q, block), triton.cdiv(seqlen_k, block), bh)
    _keep_mask_kernel[grid](OUT=out, SEED=seed, drop_below=drop_threshold(dropout_p),
                            seqlen_q=seqlen_q, seqlen_k=seqlen_k, BLOCK_M=block, BLOCK_N=block)
