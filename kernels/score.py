"""The score pipeline shared by the forward and both backward kernels, in one place.

Score of query i and key j, in float32 and in base-2 units (times log2(e), so the softmax
runs on exp2):
  1. s = scale * q_i . k_j;
  2. softcap c: s = c * tanh(s / c);
  3. ALiBi: s -= slope_h * |j - d_i|;
  4. a float mask: s += mask[i, j];
  5. -inf where the key is hidden: past Lk, a bool mask False, outside the band
     d_i - left <= j <= d_i + right (causal is right = 0), with d_i = i + diagonal_offset.
Sinks join the softmax denominator in the kernels' running state, not here.

Tiles are addressed through broadcastable index tensors ``i_q`` (query rows) and ``i_k``
(key columns): [M, 1] and [1, N] for a [BLOCK_M, BLOCK_N] tile, or [1, M] and [N, 1] for the
dK/dV kernel's transposed tiles, so one function serves both orientations.

``band_tiles`` decides which tiles a program visits at all, and which of those need the
masked path: a windowed row costs O(window), not O(L).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import LOG2E, strides

MASK_NONE: tl.constexpr = tl.constexpr(0)
MASK_BOOL: tl.constexpr = tl.constexpr(1)
MASK_FLOAT: tl.constexpr = tl.constexpr(2)


# Host clamps, past which nothing float32 scores can show changes. A window side past every
# key (of sequences shorter than 2**29) keeps the band arithmetic, row + diagonal offset + side,
# in int32; a cap in [2**-64, 2**64] keeps scale / c and c * log2(e) finite in float32 (where
# 0 * inf would be NaN).
MAX_WINDOW_SIDE = 2**30
MAX_SOFTCAP = 2.0**64  # c * tanh(s / c) rounds to s for |s| < c * 2**-12
MIN_SOFTCAP = 2.0**-64  # every score lies within 2c of every other: uniform weights


@triton.jit
def _tanh(x):
    """tanh to a few float32 ulps without libdevice (the interpreter has none). For |x| < 0.55
    an odd polynomial (fitted to the relative error), since 1 - 2 / (e^(2x) + 1) cancels near 0
    and a softcap c multiplies that error by c; past it that form, exact at both saturated
    ends, where its result is at least 0.5 in size."""
    x2 = x * x
    p = ((((-0.006287284315342345 * x2 + 0.02108177062815852) * x2 - 0.05385504243685679) * x2
          + 0.13332616023739036) * x2 - 0.33333318621949876)
    exp_form = 1.0 - 2.0 / (tl.exp2(x * (2.0 * 1.4426950408889634)) + 1.0)
    return tl.where(tl.abs(x) < 0.55, x + x * (x2 * p), exp_form)


@triton.jit
def base2_scores(b_qk, i_q, i_k, qk_scale, softcap_scale, softcap_base2, slope_base2,
                 diagonal_offset, seqlen_q, seqlen_k, p_mask, stride_mask_m, stride_mask_n,
                 SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, MASK_KIND: tl.constexpr):
    """Steps 1-4 on a tile of raw dot products ``b_qk``: (scores in base 2, tanh of the
    softcap or 0). ``qk_scale`` = scale * log2(e); ``softcap_scale`` = scale / c;
    ``softcap_base2`` = c * log2(e); ``slope_base2`` = the head's slope * log2(e)."""
    b_tanh = 0.0
    if SOFTCAP:
        b_tanh = _tanh(b_qk * softcap_scale)
        b_s = b_tanh * softcap_base2
    else:
        b_s = b_qk * qk_scale
    if HAS_ALIBI:
        b_s -= slope_base2 * tl.abs(i_k - (i_q + diagonal_offset)).to(tl.float32)
    if MASK_KIND == MASK_FLOAT:
        m_in = (i_q < seqlen_q) & (i_k < seqlen_k)
        b_mask = tl.load(p_mask + i_q * stride_mask_m + i_k * stride_mask_n, mask=m_in, other=0.0)
        b_s += b_mask.to(tl.float32) * 1.4426950408889634
    return b_s, b_tanh


@triton.jit
def visible(i_q, i_k, seqlen_q, seqlen_k, diagonal_offset, window_left, window_right,
            p_mask, stride_mask_m, stride_mask_n,
            HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, MASK_KIND: tl.constexpr):
    """Step 5: bool tile, True where query i_q and key i_k exist, the key lies in the query's
    band and the bool mask (uint8, nonzero = attend; p_mask at this (batch, head)) allows it.
    Padding queries see nothing: the dK/dV kernel sums over them, and an exp2 of their
    unnormalised scores (a negative ALiBi slope makes them positive) would overflow."""
    m_visible = (i_k < seqlen_k) & (i_q < seqlen_q)
    if HAS_RIGHT:
        m_visible = m_visible & (i_k <= i_q + (diagonal_offset + window_right))
    if HAS_LEFT:
        m_visible = m_visible & (i_k >= i_q + (diagonal_offset - window_left))
    if MASK_KIND == MASK_BOOL:
        b_mask = tl.load(p_mask + i_q * stride_mask_m + i_k * stride_mask_n, mask=m_visible,
                         other=0)
        m_visible = m_visible & (b_mask != 0)
    return m_visible


@triton.jit
def band_tiles(x_start, y_len, band_lo, band_hi, RAGGED_X,
               BLOCK_X: tl.constexpr, BLOCK_Y: tl.constexpr,
               HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, ALL_MASKED: tl.constexpr):
    """The streamed tiles of a program whose resident tile holds x_start .. x_start+BLOCK_X-1,
    when x sees y only for band_lo <= y - x <= band_hi (a side without HAS_* is unbounded).

    Returns (start, full_start, full_end, end), multiples of BLOCK_Y but ``end`` (and a
    ``start`` equal to it when nothing is visible): tiles in
    [start, end) hold a visible pair; those in [full_start, full_end) are wholly visible to
    every x (no mask needed); the rest straddle a band edge, the ragged end of y, or, with
    ``ALL_MASKED`` (a mask) or ``RAGGED_X`` (the resident tile runs past its length, whose
    padding must not meet unmasked scores), are all masked. start <= full_start <= full_end
    <= end.
    """
    start = 0
    end = y_len
    if HAS_LO:
        start = (tl.maximum(x_start + band_lo, 0) // BLOCK_Y) * BLOCK_Y
    if HAS_HI:
        end = tl.minimum(y_len, tl.maximum(x_start + BLOCK_X + band_hi, 0))
    start = tl.minimum(start, end)  # past the end: nothing to visit
    full_start = start
    full_end = (y_len // BLOCK_Y) * BLOCK_Y
    if HAS_LO:  # every x of the tile sees y >= x_start + BLOCK_X - 1 + band_lo
        full_start = tl.cdiv(tl.maximum(x_start + BLOCK_X - 1 + band_lo, 0), BLOCK_Y) * BLOCK_Y
    if HAS_HI:  # ... and y <= x_start + band_hi
        full_end = tl.minimum(full_end,
                              (tl.maximum(x_start + band_hi + 1, 0) // BLOCK_Y) * BLOCK_Y)
    if ALL_MASKED:
        full_end = start
    full_end = tl.where(RAGGED_X, start, full_end)
    full_start = tl.minimum(tl.maximum(full_start, start), end)
    full_end = tl.minimum(tl.maximum(full_end, full_start), end)
    return start, full_start, full_end, end


def score_args(mods, placeholder: torch.Tensor) -> dict:
    """The score pipeline's part of a kernel launch, keyed by the kernels' parameter names:
    the mask, slopes and sinks pointers with their strides, the pipeline's scalars, and its
    constexpr switches (HAS_LEFT, HAS_RIGHT, SOFTCAP, HAS_ALIBI, MASK_KIND, HAS_SINKS).

    ``mods`` is read by attribute: ``attention_ops.options.ScoreMods`` or anything with its
    fields and ``bounds()`` (the kernels never import the package above them). Its mask is
    bool or float, expanded to (B, Hq, Lq, Lk); slopes (Hq,) or (B, Hq) ((N, Hq) for packed
    sequences); sinks (Hq,); any strides. ``placeholder`` (a tensor on the device) stands in
    for a pointer the launch does not read. The alignment goes as 0/1: the kernels place each
    sequence's diagonal from its own lengths.
    """
    left, right = mods.bounds()
    mask, slopes, sinks = mods.attn_mask, mods.alibi_slopes, mods.sinks
    mask_kind = MASK_NONE.value
    if mask is not None:
        mask_kind = MASK_BOOL.value if mask.dtype == torch.bool else MASK_FLOAT.value
    slope_strides = (0, 0) if slopes is None else (
        (0, *slopes.stride()) if slopes.dim() == 1 else slopes.stride())  # (Hq,): all rows
    softcap = min(max(mods.softcap or 1.0, MIN_SOFTCAP), MAX_SOFTCAP)
    return {
        # a bool mask is read as bytes (nonzero: attend)
        "MASK": placeholder if mask is None else (
            mask.view(torch.uint8) if mask_kind == MASK_BOOL.value else mask),
        **strides("mask_", mask, "bhmn"),
        "SLOPES": placeholder if slopes is None else slopes,
        "stride_slope_b": slope_strides[0],
        "stride_slope_h": slope_strides[1],
        "SINKS": placeholder if sinks is None else sinks,
        "stride_sink": 0 if sinks is None else sinks.stride(0),
        "qk_scale": mods.scale * LOG2E,
        "softcap_scale": mods.scale / softcap,
        "softcap_base2": softcap * LOG2E,
        "bottom_right": int(mods.bottom_right),
        "window_left": 0 if left is None else min(left, MAX_WINDOW_SIDE),
        "window_right": 0 if right is None else min(right, MAX_WINDOW_SIDE),
        "HAS_LEFT": left is not None,
        "HAS_RIGHT": right is not None,
        "SOFTCAP": mods.softcap is not None,
        "HAS_ALIBI": slopes is not None,
        "MASK_KIND": mask_kind,
        "HAS_SINKS": sinks is not None,
    }
