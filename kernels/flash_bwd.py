"""Fused attention backward: dQ, dK, dV (and the sinks') from dO, recomputing the weights from
the saved LSE.

Three launches, no atomics (so the result is deterministic):
  1. delta = rowsum(dO * O), one fp32 number per query row, and with sinks each row's share
     of the sink gradient, -exp(sink - lse) * delta (summed over rows on the host);
  2. dK/dV: a key/value tile stays on chip while the program walks the query tiles its band
     reaches (and, for grouped-query attention, every query head of the group);
  3. dQ: a query tile stays on chip while the program walks the key/value tiles.
With P the undropped weights, Z the keep mask and s = 1/(1-p):
  dV = (Z*s*P)^T dO,  dP = Z*s*(dO V^T),  dS = P * (dP - delta),  dQ = scale dS' K,
  dK = scale dS'^T Q, where dS' = dS * (1 - tanh^2) under a softcap and dS' = dS otherwise
  (ALiBi and a float mask add constants to the scores and leave dS alone).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .casting import dot_operand, downcast
from .configs import INTERPRETER_META
from .dropout import DropoutStream, dropout_args, keep_mask, keep_mask_t
from .launch import (
    head_dim_args,
    is_interpreter,
    kernel_flags,
    launch,
    needs_int64_rows,
    seqlen_bucket,
    strides,
)
from .score import MASK_FLOAT, band_tiles, base2_scores, score_args, visible
from .varlen import PackedSequences, batch_and_head, packed_args, packed_tile, tuning_length


@triton.jit
def _bwd_delta_kernel(
    O, DO, DELTA, LSE, SINKS, DSINK_ROWS, stride_sink,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    n_heads_q, seqlen_q,
    HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
    HAS_SINKS: tl.constexpr, INT64_ROWS: tl.constexpr,
):
    """DELTA[b, h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d] in fp32; with sinks also
    DSINK_ROWS[b, h, i] = -exp2(sink_h * log2(e) - LSE[b, h, i]) * DELTA[b, h, i]."""
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // n_heads_q
    i_h = i_bh % n_heads_q
    offs_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if INT64_ROWS:
        offs_m = offs_m.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_DV)
    m_rows = offs_m < seqlen_q
    m_o = m_rows[:, None] & (offs_d[None, :] < HEAD_DIM_V)
    b_o = tl.load(O + i_b * stride_ob + i_h * stride_oh + offs_m[:, None] * stride_om
                  + offs_d[None, :] * stride_od, mask=m_o, other=0.0)
    b_do = tl.load(DO + i_b * stride_dob + i_h * stride_doh + offs_m[:, None] * stride_dom
                   + offs_d[None, :] * stride_dod, mask=m_o, other=0.0)
    b_delta = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1)
    tl.store(DELTA + i_bh * seqlen_q + offs_m, b_delta, mask=m_rows)
    if HAS_SINKS:
        sink_base2 = tl.load(SINKS + i_h * stride_sink).to(tl.float32) * 1.4426950408889634
        b_lse = tl.load(LSE + i_bh * seqlen_q + offs_m, mask=m_rows, other=0.0)
        # a row with no key and a sink of -inf holds no sink weight
        b_dsink = tl.where(b_lse == float("-inf"), 0.0, -tl.exp2(sink_base2 - b_lse) * b_delta)
        tl.store(DSINK_ROWS + i_bh * seqlen_q + offs_m, b_dsink, mask=m_rows)


@triton.jit
def row_lse(p_lse, m_rows):
    """The forward's base-2 LSE of these rows, with a row that saw no key (-inf) turned into
    +inf so its recomputed weights exp2(s - lse) are 0. Rows outside m_rows load 0 (their
    scores are hidden: padding past Lq only meets the masked path, see ``score.visible``)."""
    b_lse = tl.load(p_lse, mask=m_rows, other=0.0)
    return tl.where(b_lse == float("-inf"), float("inf"), b_lse)


@triton.jit
def _weights_and_tanh(b_qk, i_q, i_k, b_lse, qk_scale, softcap_scale, softcap_base2,
                      slope_base2, diagonal_offset, window_left, window_right, seqlen_q,
                      seqlen_k, p_mask, stride_mask_m, stride_mask_n,
                      MASKED: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                      SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, MASK_KIND: tl.constexpr):
    """The recomputed weights exp2(s - lse) of a tile of raw dot products (either orientation,
    see score.py), and the softcap's tanh for dS. Hidden pairs are set to -inf before the
    exp2, which could overflow on them."""
    if SOFTCAP or HAS_ALIBI or MASK_KIND == MASK_FLOAT:
        b_s, b_tanh = base2_scores(b_qk, i_q, i_k, qk_scale, softcap_scale, softcap_base2,
                                   slope_base2, diagonal_offset, seqlen_q, seqlen_k, p_mask,
                                   stride_mask_m, stride_mask_n, SOFTCAP, HAS_ALIBI, MASK_KIND)
        b_log_p = b_s - b_lse
    else:  # an explicit fma keeps scale and shift one instruction whatever the fusion default
        b_tanh = 0.0
        b_log_p = tl.fma(b_qk, qk_scale, -b_lse)
    if MASKED:
        m_visible = visible(i_q, i_k, seqlen_q, seqlen_k, diagonal_offset, window_left,
                            window_right, p_mask, stride_mask_m, stride_mask_n,
                            HAS_LEFT, HAS_RIGHT, MASK_KIND)
        b_log_p = tl.where(m_visible, b_log_p, float("-inf"))
    return tl.exp2(b_log_p), b_tanh


@triton.jit
def _dkdv_q_loop(
    b_dk, b_dv, b_k, b_v,
    p_q, p_do, p_lse, p_delta, stride_qm, stride_dom,
    p_mask, stride_mask_m, stride_mask_n, slope_base2,
    start_n, offs_n, offs_d, offs_dv, rng_row0, rng_cols, rng_col_offset, seed, drop_below,
    dropout_scale, qk_scale, softcap_scale, softcap_base2, diagonal_offset, window_left,
    window_right, seqlen_q, seqlen_k, start, end, start2, end2,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    MASK_KIND: tl.constexpr, HAS_DROPOUT: tl.constexpr, INTERPRET_BF16: tl.constexpr,
    PRECISION: tl.constexpr, INT64_ROWS: tl.constexpr,
):
    """Accumulate dK, dV of the key tile at start_n over the query tiles of [start, end) then
    [start2, end2), in transposed form ([BLOCK_N, BLOCK_M] tiles) so no tile needs a transpose
    before its dot. Rows past Lq load dO = 0 and delta = 0, and their scores are hidden, so
    they add nothing."""
    m_d = offs_d < HEAD_DIM
    m_dv = offs_dv < HEAD_DIM_V
    i_k = offs_n[:, None]
    n_first = tl.cdiv(end - start, BLOCK_M)
    for t in range(0, n_first + tl.cdiv(end2 - start2, BLOCK_M)):
        start_m = tl.where(t < n_first, start + t * BLOCK_M, start2 + (t - n_first) * BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        if INT64_ROWS:
            offs_m = offs_m.to(tl.int64)
        m_rows = offs_m < seqlen_q
        b_q = tl.load(p_q + offs_m[:, None] * stride_qm, mask=m_rows[:, None] & m_d[None, :],
                      other=0.0)  # [M, D]
        b_do = tl.load(p_do + offs_m[:, None] * stride_dom,
                       mask=m_rows[:, None] & m_dv[None, :], other=0.0)  # [M, Dv]
        if INTERPRET_BF16:
            b_q = b_q.to(tl.float32)
            b_do = b_do.to(tl.float32)
        b_lse = row_lse(p_lse + offs_m, m_rows)
        b_delta = tl.load(p_delta + offs_m, mask=m_rows, other=0.0)
        # [BLOCK_N, BLOCK_M]
        b_pt, b_tanh = _weights_and_tanh(
            tl.dot(b_k, tl.trans(b_q), input_precision=PRECISION), offs_m[None, :], i_k,
            b_lse[None, :], qk_scale, softcap_scale, softcap_base2, slope_base2,
            diagonal_offset, window_left, window_right, seqlen_q, seqlen_k, p_mask,
            stride_mask_m, stride_mask_n, MASKED, HAS_LEFT, HAS_RIGHT, SOFTCAP, HAS_ALIBI,
            MASK_KIND)
        # [BLOCK_N, BLOCK_M]
        b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)
        b_pt_dropped = b_pt
        if HAS_DROPOUT:
            b_keep = keep_mask_t(seed, rng_row0 + offs_m, rng_col_offset + start_n, rng_cols,
                                 drop_below, BLOCK_M, BLOCK_N)
            b_pt_dropped = tl.where(b_keep, b_pt * dropout_scale, 0.0)
            b_dpt = tl.where(b_keep, b_dpt * dropout_scale, 0.0)
        # [BLOCK_N, Dv]
        b_dv = tl.dot(dot_operand(b_pt_dropped, b_do, INTERPRET_BF16), b_do, b_dv,
                      input_precision=PRECISION)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        if SOFTCAP:
            b_dst = b_dst * (1.0 - b_tanh * b_tanh)
        # [BLOCK_N, D]
        b_dk = tl.dot(dot_operand(b_dst, b_q, INTERPRET_BF16), b_q, b_dk,
                      input_precision=PRECISION)
    return b_dk, b_dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, SEED, MASK, SLOPES, SINKS,
    stride_mask_b, stride_mask_h, stride_mask_m, stride_mask_n, stride_slope_b, stride_slope_h,
    stride_sink, qk_scale, softcap_scale, softcap_base2, bottom_right, window_left, window_right,
    sm_scale, drop_below, dropout_scale, rng_rows_per_head, rng_row_offset, rng_cols,
    rng_col_offset, CU_SEQLENS_Q, CU_SEQLENS_K, n_seqs, search_steps,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    n_heads_kv, group_size, seqlen_q, seqlen_k, seqlen_bucket,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr, MASK_KIND: tl.constexpr, HAS_SINKS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    INT64_ROWS: tl.constexpr, VARLEN: tl.constexpr,
):
    """dK: [B, Hkv, Lk, D], dV: [B, Hkv, Lk, Dv]; LSE (base 2) and DELTA: [B, Hq, Lq] fp32.
    Grid: (cdiv(Lk, BLOCK_N), B * Hkv); VARLEN (see the forward): (Lk // BLOCK_N + n_seqs, Hkv).
    """
    i_n = tl.program_id(0)
    i_bhk = tl.program_id(1).to(tl.int64)
    i_b, i_hk = batch_and_head(i_bhk, n_heads_kv, VARLEN)
    rows_per_head = seqlen_q  # LSE and DELTA rows, before seqlen_q becomes a sequence's
    q_start = 0  # the sequence's first query and key token; offsets, not moved pointers,
    k_start = 0  # which would hold 64-bit registers through the loop (a spill at D=128)
    slope_row = i_b  # ALiBi's row: the batch row, or the packed sequence
    if VARLEN:
        slope_row, i_n, k_start, seqlen_k, q_start, seqlen_q = packed_tile(
            CU_SEQLENS_K, CU_SEQLENS_Q, n_seqs, search_steps, i_n, BLOCK_N, INT64_ROWS)
        if i_n * BLOCK_N >= seqlen_k:  # a gap program
            return
    diagonal_offset = bottom_right * (seqlen_k - seqlen_q)

    offs_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if INT64_ROWS:
        offs_n = offs_n.to(tl.int64)
    m_keys = offs_n < seqlen_k
    m_k = m_keys[:, None] & (offs_d[None, :] < HEAD_DIM)
    m_v = m_keys[:, None] & (offs_dv[None, :] < HEAD_DIM_V)
    b_k = tl.load(K + i_b * stride_kb + i_hk * stride_kh + (k_start + offs_n[:, None]) * stride_kn
                  + offs_d[None, :] * stride_kd, mask=m_k, other=0.0)  # [BLOCK_N, D]
    b_v = tl.load(V + i_b * stride_vb + i_hk * stride_vh + (k_start + offs_n[:, None]) * stride_vn
                  + offs_dv[None, :] * stride_vd, mask=m_v, other=0.0)  # [BLOCK_N, Dv]
    if INTERPRET_BF16:
        b_k = b_k.to(tl.float32)
        b_v = b_v.to(tl.float32)
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

    # The query tiles whose band reaches this key tile: query i sees key j when
    # -(offset + right) <= i - j <= left - offset. A ragged key tile masks every query tile:
    # its padding keys' recomputed weights exp2(-lse) can overflow.
    start, full_start, full_end, end = band_tiles(
        i_n * BLOCK_N, seqlen_q, -diagonal_offset - window_right, window_left - diagonal_offset,
        i_n * BLOCK_N + BLOCK_N > seqlen_k, BLOCK_N, BLOCK_M, HAS_RIGHT, HAS_LEFT,
        MASK_KIND != 0)
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(SEED)
    for g in range(group_size):  # grouped-query attention: sum over the group's query heads
        i_h = i_hk * group_size + g
        i_bh = i_b * n_heads_kv * group_size + i_h
        p_q = (Q + i_b * stride_qb + i_h * stride_qh + q_start * stride_qm
               + offs_d[None, :] * stride_qd)
        p_do = (DO + i_b * stride_dob + i_h * stride_doh + q_start * stride_dom
                + offs_dv[None, :] * stride_dod)
        p_lse = LSE + i_bh * rows_per_head + q_start
        p_delta = DELTA + i_bh * rows_per_head + q_start
        rng_row0 = i_bh * rng_rows_per_head + rng_row_offset + q_start
        p_mask = MASK + i_b * stride_mask_b + i_h * stride_mask_h
        slope_base2 = 0.0
        if HAS_ALIBI:
            slope = tl.load(SLOPES + slope_row * stride_slope_b + i_h * stride_slope_h)
            slope_base2 = slope * 1.4426950408889634
        # The band's wholly visible tiles unmasked (the bulk of the work), then its edge tiles
        # masked: a static loop, so each phase is its own call and compiles to its own loop.
        for phase in tl.static_range(2):
            if phase == 1:
                start1, end1, start2, end2 = start, full_start, full_end, end
            else:
                start1, end1, start2, end2 = full_start, full_end, full_end, full_end
            b_dk, b_dv = _dkdv_q_loop(
                b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, stride_qm, stride_dom, p_mask,
                stride_mask_m, stride_mask_n, slope_base2, i_n * BLOCK_N, offs_n, offs_d,
                offs_dv, rng_row0, rng_cols, rng_col_offset, seed, drop_below, dropout_scale,
                qk_scale, softcap_scale, softcap_base2, diagonal_offset, window_left,
                window_right, seqlen_q, seqlen_k, start1, end1, start2, end2, HEAD_DIM, HEAD_DIM_V,
                BLOCK_M, BLOCK_N, phase == 1, HAS_LEFT, HAS_RIGHT, SOFTCAP, HAS_ALIBI,
                MASK_KIND, HAS_DROPOUT, INTERPRET_BF16, PRECISION, INT64_ROWS,
            )

    p_dk = DK + i_b * stride_dkb + i_hk * stride_dkh + k_start * stride_dkn
    p_dv = DV + i_b * stride_dvb + i_hk * stride_dvh + k_start * stride_dvn
    tl.store(p_dk + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             downcast(b_dk * sm_scale, DK.dtype.element_ty, INTERPRET_BF16), mask=m_k)
    tl.store(p_dv + offs_n[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd,
             downcast(b_dv, DV.dtype.element_ty, INTERPRET_BF16), mask=m_v)


@triton.jit
def _dq_kv_loop(
    b_dq, b_q, b_do, b_lse, b_delta,
    p_k, p_v, stride_kn, stride_vn, offs_m, offs_d, offs_dv,
    p_mask, stride_mask_m, stride_mask_n, slope_base2, rng_rows, rng_cols, rng_col_offset, seed,
    drop_below, dropout_scale, qk_scale, softcap_scale, softcap_base2, diagonal_offset,
    window_left, window_right, seqlen_q, seqlen_k, start, end, start2, end2,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    MASK_KIND: tl.constexpr, HAS_DROPOUT: tl.constexpr, INTERPRET_BF16: tl.constexpr,
    PRECISION: tl.constexpr, INT64_ROWS: tl.constexpr,
):
    """Accumulate dQ of one query tile over the key tiles of [start, end) then [start2, end2).
    MASKED tiles hold keys past Lk or straddle a visibility edge: a key past Lk must be
    masked, as its recomputed weight exp2(-lse) can overflow and turn dS into NaN."""
    m_d = offs_d < HEAD_DIM
    m_dv = offs_dv < HEAD_DIM_V
    i_q = offs_m[:, None]
    n_first = tl.cdiv(end - start, BLOCK_N)
    for t in range(0, n_first + tl.cdiv(end2 - start2, BLOCK_N)):
        start_n = tl.where(t < n_first, start + t * BLOCK_N, start2 + (t - n_first) * BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if INT64_ROWS:
            offs_n = offs_n.to(tl.int64)
        m_keys = offs_n < seqlen_k
        b_k = tl.load(p_k + offs_n[:, None] * stride_kn, mask=m_keys[:, None] & m_d[None, :],
                      other=0.0)  # [BLOCK_N, D]
        b_v = tl.load(p_v + offs_n[:, None] * stride_vn, mask=m_keys[:, None] & m_dv[None, :],
                      other=0.0)  # [BLOCK_N, Dv]
        if INTERPRET_BF16:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        # [BLOCK_M, BLOCK_N]
        b_p, b_tanh = _weights_and_tanh(
            tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION), i_q, offs_n[None, :],
            b_lse[:, None], qk_scale, softcap_scale, softcap_base2, slope_base2,
            diagonal_offset, window_left, window_right, seqlen_q, seqlen_k, p_mask,
            stride_mask_m, stride_mask_n, MASKED, HAS_LEFT, HAS_RIGHT, SOFTCAP, HAS_ALIBI,
            MASK_KIND)
        # [BLOCK_M, BLOCK_N]
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
        if HAS_DROPOUT:
            b_keep = keep_mask(seed, rng_rows, rng_col_offset + start_n, rng_cols, drop_below,
                               BLOCK_M, BLOCK_N)
            b_dp = tl.where(b_keep, b_dp * dropout_scale, 0.0)
        b_ds = b_p * (b_dp - b_delta[:, None])
        if SOFTCAP:
            b_ds = b_ds * (1.0 - b_tanh * b_tanh)
        # [BLOCK_M, D]
        b_dq = tl.dot(dot_operand(b_ds, b_k, INTERPRET_BF16), b_k, b_dq,
                      input_precision=PRECISION)
    return b_dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, SEED, MASK, SLOPES, SINKS,
    stride_mask_b, stride_mask_h, stride_mask_m, stride_mask_n, stride_slope_b, stride_slope_h,
    stride_sink, qk_scale, softcap_scale, softcap_base2, bottom_right, window_left, window_right,
    sm_scale, drop_below, dropout_scale, rng_rows_per_head, rng_row_offset, rng_cols,
    rng_col_offset, CU_SEQLENS_Q, CU_SEQLENS_K, n_seqs, search_steps,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    n_heads_q, group_size, seqlen_q, seqlen_k, seqlen_bucket,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr, MASK_KIND: tl.constexpr, HAS_SINKS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    INT64_ROWS: tl.constexpr, VARLEN: tl.constexpr,
):
    """dQ: [B, Hq, Lq, D]. Grid: (cdiv(Lq, BLOCK_M), B * Hq); VARLEN (see the forward):
    (Lq // BLOCK_M + n_seqs, Hq)."""
    i_m = tl.program_id(0)
    if HAS_RIGHT and not HAS_LEFT:  # causal: the last query tiles see the most keys
        i_m = tl.num_programs(0) - 1 - i_m
    i_bh = tl.program_id(1).to(tl.int64)
    i_b, i_h = batch_and_head(i_bh, n_heads_q, VARLEN)
    i_hk = i_h // group_size
    row0 = i_bh * seqlen_q  # LSE and DELTA rows, before seqlen_q becomes a sequence's
    rng_row0 = i_bh * rng_rows_per_head + rng_row_offset
    slope_row = i_b  # ALiBi's row: the batch row, or the packed sequence
    if VARLEN:
        slope_row, i_m, q_start, seqlen_q, k_start, seqlen_k = packed_tile(
            CU_SEQLENS_Q, CU_SEQLENS_K, n_seqs, search_steps, i_m, BLOCK_M, INT64_ROWS)
        if i_m * BLOCK_M >= seqlen_q:  # a gap program
            return
        Q += q_start * stride_qm
        DO += q_start * stride_dom
        DQ += q_start * stride_dqm
        K += k_start * stride_kn
        V += k_start * stride_vn
        row0 += q_start
        rng_row0 += q_start
    diagonal_offset = bottom_right * (seqlen_k - seqlen_q)

    offs_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if INT64_ROWS:
        offs_m = offs_m.to(tl.int64)
    m_rows = offs_m < seqlen_q
    m_q = m_rows[:, None] & (offs_d[None, :] < HEAD_DIM)
    b_q = tl.load(Q + i_b * stride_qb + i_h * stride_qh + offs_m[:, None] * stride_qm
                  + offs_d[None, :] * stride_qd, mask=m_q, other=0.0)  # [BLOCK_M, D]
    b_do = tl.load(DO + i_b * stride_dob + i_h * stride_doh + offs_m[:, None] * stride_dom
                   + offs_dv[None, :] * stride_dod,
                   mask=m_rows[:, None] & (offs_dv[None, :] < HEAD_DIM_V),
                   other=0.0)  # [BLOCK_M, Dv]
    if INTERPRET_BF16:
        b_q = b_q.to(tl.float32)
        b_do = b_do.to(tl.float32)
    b_lse = row_lse(LSE + row0 + offs_m, m_rows)
    b_delta = tl.load(DELTA + row0 + offs_m, mask=m_rows, other=0.0)
    p_k = K + i_b * stride_kb + i_hk * stride_kh + offs_d[None, :] * stride_kd
    p_v = V + i_b * stride_vb + i_hk * stride_vh + offs_dv[None, :] * stride_vd
    p_mask = MASK + i_b * stride_mask_b + i_h * stride_mask_h
    slope_base2 = 0.0
    if HAS_ALIBI:
        slope = tl.load(SLOPES + slope_row * stride_slope_b + i_h * stride_slope_h)
        slope_base2 = slope * 1.4426950408889634

    seed = 0
    rng_rows = rng_row0 + offs_m  # the dropout stream's rows
    if HAS_DROPOUT:
        seed = tl.load(SEED)

    start, full_start, full_end, end = band_tiles(
        i_m * BLOCK_M, seqlen_k, diagonal_offset - window_left, diagonal_offset + window_right,
        False, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT, MASK_KIND != 0)
    b_dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # The band's wholly visible tiles unmasked (the bulk of the work), then its edge tiles
    # masked: a static loop, so each phase is its own call and compiles to its own loop.
    for phase in tl.static_range(2):
        if phase == 1:
            start1, end1, start2, end2 = start, full_start, full_end, end
        else:
            start1, end1, start2, end2 = full_start, full_end, full_end, full_end
        b_dq = _dq_kv_loop(
            b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, stride_kn, stride_vn, offs_m, offs_d,
            offs_dv, p_mask, stride_mask_m, stride_mask_n, slope_base2, rng_rows, rng_cols,
            rng_col_offset, seed, drop_below, dropout_scale, qk_scale, softcap_scale,
            softcap_base2, diagonal_offset, window_left, window_right, seqlen_q, seqlen_k,
            start1, end1, start2, end2, HEAD_DIM, HEAD_DIM_V, BLOCK_M, BLOCK_N, phase == 1,
            HAS_LEFT, HAS_RIGHT, SOFTCAP, HAS_ALIBI, MASK_KIND, HAS_DROPOUT, INTERPRET_BF16,
            PRECISION, INT64_ROWS,
        )
    tl.store(DQ + i_b * stride_dqb + i_h * stride_dqh + offs_m[:, None] * stride_dqm
             + offs_d[None, :] * stride_dqd,
             downcast(b_dq * sm_scale, DQ.dtype.element_ty, INTERPRET_BF16), mask=m_q)


def attention_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
    *,
    mods,
    seed: torch.Tensor | None = None,
    int64_rows: bool | None = None,
    packed: PackedSequences | None = None,
    dropout_stream: DropoutStream | None = None,
) -> torch.Tensor | None:
    """Launch the backward: fills dq (shape of q), dk and dv (shapes of k, v).

    ``out`` and ``lse`` (base 2) are the forward's results, ``mods``, ``seed``, ``packed``
    and ``dropout_stream`` the forward's (see ``attention_forward``). All tensors may have any
    strides.

    Returns:
        the sinks' gradient (Hq,) float32 when ``mods.sinks`` is set, else None.
    """
    if not lse.is_contiguous():  # the kernels index it as a dense (B, Hq, Lq) array
        raise ValueError(f"lse must be contiguous, got strides {lse.stride()}")
    batch, n_heads_q, seqlen_q, head_dim = q.shape
    n_heads_kv, seqlen_k = k.shape[1], k.shape[2]
    if int64_rows is None:
        int64_rows = needs_int64_rows(q, k, v, out, do, dq, dk, dv, mods.attn_mask)
    head_dims = head_dim_args(head_dim, v.shape[3])
    score = score_args(mods, lse)

    delta = torch.empty_like(lse)
    dsink_rows = torch.empty_like(lse) if score["HAS_SINKS"] else lse
    block_m = 64 if not is_interpreter() else INTERPRETER_META["BLOCK_M"]
    delta_args = dict(
        O=out, **strides("o", out), DO=do, **strides("do", do), DELTA=delta, LSE=lse,
        SINKS=score["SINKS"], stride_sink=score["stride_sink"], DSINK_ROWS=dsink_rows,
        n_heads_q=n_heads_q, seqlen_q=seqlen_q, HEAD_DIM_V=head_dims["HEAD_DIM_V"],
        BLOCK_DV=head_dims["BLOCK_DV"], BLOCK_M=block_m, HAS_SINKS=score["HAS_SINKS"],
        INT64_ROWS=int64_rows,
    )
    _bwd_delta_kernel[(triton.cdiv(seqlen_q, block_m), batch * n_heads_q)](**delta_args)
    # What both kernels take: every input, the geometry, the score pipeline, dropout, packing.
    common = dict(
        Q=q, **strides("q", q), K=k, **strides("k", k, "bhnd"), V=v, **strides("v", v, "bhnd"),
        DO=do, **strides("do", do), LSE=lse, DELTA=delta, sm_scale=mods.scale,
        group_size=n_heads_q // n_heads_kv, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
        seqlen_bucket=seqlen_bucket(tuning_length(packed, seqlen_q, seqlen_k)), **head_dims,
        **score, **dropout_args(mods.dropout_p, seed, lse),
        **(dropout_stream or DropoutStream(seqlen_q, 0, seqlen_k, 0)).args(),
        **packed_args(packed, lse), **kernel_flags(q), INT64_ROWS=int64_rows,
    )

    def tiles(length: int, block: int) -> int:
        return triton.cdiv(length, block) if packed is None else packed.programs(length, block)

    launch(_attn_bwd_dkdv_kernel, "dkdv",
           lambda meta: (tiles(seqlen_k, meta["BLOCK_N"]), batch * n_heads_kv),
           dict(common, DK=dk, **strides("dk", dk, "bhnd"), DV=dv, **strides("dv", dv, "bhnd"),
                n_heads_kv=n_heads_kv))
    launch(_attn_bwd_dq_kernel, "dq",
           lambda meta: (tiles(seqlen_q, meta["BLOCK_M"]), batch * n_heads_q),
           dict(common, DQ=dq, **strides("dq", dq), n_heads_q=n_heads_q))
    return dsink_rows.sum(dim=(0, 2)) if score["HAS_SINKS"] else None
