"""Fused attention backward: dQ, dK, dV from dO, recomputing the weights from the saved LSE.

Three launches, no atomics (so the result is deterministic):
  1. delta = rowsum(dO * O), one fp32 number per query row;
  2. dK/dV: a key/value tile stays on chip while the program walks the query tiles (and, for
     grouped-query attention, every query head of the group);
  3. dQ: a query tile stays on chip while the program walks the key/value tiles.
With P the undropped weights, Z the keep mask and s = 1/(1-p):
  dV = (Z*s*P)^T dO,  dP = Z*s*(dO V^T),  dS = P * (dP - delta),  dQ = scale dS K,
  dK = scale dS^T Q.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .casting import dot_operand, downcast
from .configs import INTERPRETER_META, head_dim_block
from .dropout import dropout_args, keep_mask, keep_mask_t
from .launch import (
    LOG2E,
    is_interpreter,
    kernel_flags,
    launch,
    mask_args,
    needs_int64_rows,
    seqlen_bucket,
)
from .masking import visible


@triton.jit
def _bwd_delta_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    n_heads_q, seqlen_q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    INT64_ROWS: tl.constexpr,
):
    """DELTA[b, h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d] in fp32."""
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // n_heads_q
    i_h = i_bh % n_heads_q
    offs_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if INT64_ROWS:
        offs_m = offs_m.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    m_o = (offs_m[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM)
    b_o = tl.load(O + i_b * stride_ob + i_h * stride_oh + offs_m[:, None] * stride_om
                  + offs_d[None, :] * stride_od, mask=m_o, other=0.0)
    b_do = tl.load(DO + i_b * stride_dob + i_h * stride_doh + offs_m[:, None] * stride_dom
                   + offs_d[None, :] * stride_dod, mask=m_o, other=0.0)
    b_delta = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1)
    tl.store(DELTA + i_bh * seqlen_q + offs_m, b_delta, mask=offs_m < seqlen_q)


@triton.jit
def row_lse(p_lse, m_rows):
    """The forward's base-2 LSE of these rows, with a row that saw no key (-inf) turned into
    +inf so its recomputed weights exp2(s - lse) are 0. Rows outside m_rows load 0."""
    b_lse = tl.load(p_lse, mask=m_rows, other=0.0)
    return tl.where(b_lse == float("-inf"), float("inf"), b_lse)


@triton.jit
def _dkdv_q_loop(
    b_dk, b_dv, b_k, b_v,
    p_q, p_do, p_lse, p_delta, stride_qm, stride_dom, p_mask, stride_mask_m, stride_mask_n,
    start_n, offs_n, offs_d, i_bh, seed, drop_below, dropout_scale,
    start, end, seqlen_q, seqlen_k, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    INT64_ROWS: tl.constexpr,
):
    """Accumulate dK, dV of the key tile at start_n over query tiles [start, end), in transposed
    form ([BLOCK_N, BLOCK_M] tiles) so no tile needs a transpose before its dot. MASKED tiles
    straddle the causal diagonal or lie under a boolean mask. Rows past Lq load dO = 0 and
    delta = 0 and so add nothing."""
    m_d = offs_d < HEAD_DIM
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        if INT64_ROWS:
            offs_m = offs_m.to(tl.int64)
        m_rows = offs_m < seqlen_q
        m_qd = m_rows[:, None] & m_d[None, :]
        b_q = tl.load(p_q + offs_m[:, None] * stride_qm, mask=m_qd, other=0.0)  # [M, D]
        b_do = tl.load(p_do + offs_m[:, None] * stride_dom, mask=m_qd, other=0.0)  # [M, D]
        if INTERPRET_BF16:
            b_q = b_q.to(tl.float32)
            b_do = b_do.to(tl.float32)
        b_lse = row_lse(p_lse + offs_m, m_rows)
        b_delta = tl.load(p_delta + offs_m, mask=m_rows, other=0.0)
        # [BLOCK_N, BLOCK_M] log2 weights; an explicit fma keeps scale and shift one
        # instruction whatever Triton's floating-point fusion default. Hidden pairs are set to
        # -inf before the exp2, which could overflow on them.
        b_log_pt = tl.fma(tl.dot(b_k, tl.trans(b_q), input_precision=PRECISION), qk_scale,
                          -b_lse[None, :])
        if MASKED:
            m_visible = visible(offs_m, offs_n, seqlen_q, seqlen_k, p_mask, stride_mask_m,
                                stride_mask_n, IS_CAUSAL, HAS_MASK)
            b_log_pt = tl.where(tl.trans(m_visible), b_log_pt, float("-inf"))
        b_pt = tl.exp2(b_log_pt)
        # [BLOCK_N, BLOCK_M]
        b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)
        b_pt_dropped = b_pt
        if HAS_DROPOUT:
            b_keep = keep_mask_t(seed, i_bh * seqlen_q + offs_m, start_n, seqlen_k,
                                 drop_below, BLOCK_M, BLOCK_N)
            b_pt_dropped = tl.where(b_keep, b_pt * dropout_scale, 0.0)
            b_dpt = tl.where(b_keep, b_dpt * dropout_scale, 0.0)
        # [BLOCK_N, D]
        b_dv = tl.dot(dot_operand(b_pt_dropped, b_do, INTERPRET_BF16), b_do, b_dv,
                      input_precision=PRECISION)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        # [BLOCK_N, D]
        b_dk = tl.dot(dot_operand(b_dst, b_q, INTERPRET_BF16), b_q, b_dk,
                      input_precision=PRECISION)
    return b_dk, b_dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, SEED, MASK,
    sm_scale, qk_scale, drop_below, dropout_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_mask_b, stride_mask_h, stride_mask_m, stride_mask_n,
    n_heads_kv, group_size, seqlen_q, seqlen_k, seqlen_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr, INT64_ROWS: tl.constexpr,
):
    """dK, dV: [B, Hkv, Lk, D]; LSE (log2 domain) and DELTA: [B, Hq, Lq] fp32.
    Grid: (cdiv(Lk, BLOCK_N), B * Hkv)."""
    i_n = tl.program_id(0)
    i_bhk = tl.program_id(1).to(tl.int64)
    i_b = i_bhk // n_heads_kv
    i_hk = i_bhk % n_heads_kv

    offs_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    if INT64_ROWS:
        offs_n = offs_n.to(tl.int64)
    m_kv = (offs_n[:, None] < seqlen_k) & (offs_d[None, :] < HEAD_DIM)
    b_k = tl.load(K + i_b * stride_kb + i_hk * stride_kh + offs_n[:, None] * stride_kn
                  + offs_d[None, :] * stride_kd, mask=m_kv, other=0.0)  # [BLOCK_N, D]
    b_v = tl.load(V + i_b * stride_vb + i_hk * stride_vh + offs_n[:, None] * stride_vn
                  + offs_d[None, :] * stride_vd, mask=m_kv, other=0.0)  # [BLOCK_N, D]
    if INTERPRET_BF16:
        b_k = b_k.to(tl.float32)
        b_v = b_v.to(tl.float32)
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Causal: query rows before this key tile never see it; tiles from full_start on see it
    # whole; the ones between straddle the diagonal. A boolean mask, or keys past Lk in this
    # tile (whose recomputed weights exp2(-lse) can overflow), make every tile masked.
    start_m = 0
    full_start = 0
    if HAS_MASK:
        full_start = seqlen_q
    if IS_CAUSAL:
        start_m = ((i_n * BLOCK_N) // BLOCK_M) * BLOCK_M
        full_start = tl.maximum(full_start, tl.cdiv(i_n * BLOCK_N + BLOCK_N - 1, BLOCK_M) * BLOCK_M)
    full_start = tl.where(i_n * BLOCK_N + BLOCK_N > seqlen_k, seqlen_q, full_start)
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(SEED)
    for g in range(group_size):  # grouped-query attention: sum over the group's query heads
        i_h = i_hk * group_size + g
        i_bh = i_b * n_heads_kv * group_size + i_h
        p_q = Q + i_b * stride_qb + i_h * stride_qh + offs_d[None, :] * stride_qd
        p_do = DO + i_b * stride_dob + i_h * stride_doh + offs_d[None, :] * stride_dod
        p_lse = LSE + i_bh * seqlen_q
        p_delta = DELTA + i_bh * seqlen_q
        p_mask = MASK + i_b * stride_mask_b + i_h * stride_mask_h
        b_dk, b_dv = _dkdv_q_loop(
            b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, stride_qm, stride_dom,
            p_mask, stride_mask_m, stride_mask_n,
            i_n * BLOCK_N, offs_n, offs_d, i_bh, seed, drop_below, dropout_scale,
            start=start_m, end=tl.minimum(full_start, seqlen_q), seqlen_q=seqlen_q,
            seqlen_k=seqlen_k, qk_scale=qk_scale,
            HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, MASKED=True,
            IS_CAUSAL=IS_CAUSAL, HAS_MASK=HAS_MASK, HAS_DROPOUT=HAS_DROPOUT,
            INTERPRET_BF16=INTERPRET_BF16, PRECISION=PRECISION, INT64_ROWS=INT64_ROWS,
        )
        b_dk, b_dv = _dkdv_q_loop(
            b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, stride_qm, stride_dom,
            p_mask, stride_mask_m, stride_mask_n,
            i_n * BLOCK_N, offs_n, offs_d, i_bh, seed, drop_below, dropout_scale,
            start=full_start, end=seqlen_q, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
            qk_scale=qk_scale,
            HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, MASKED=False,
            IS_CAUSAL=IS_CAUSAL, HAS_MASK=HAS_MASK, HAS_DROPOUT=HAS_DROPOUT,
            INTERPRET_BF16=INTERPRET_BF16, PRECISION=PRECISION, INT64_ROWS=INT64_ROWS,
        )

    p_dk = DK + i_b * stride_dkb + i_hk * stride_dkh
    p_dv = DV + i_b * stride_dvb + i_hk * stride_dvh
    tl.store(p_dk + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             downcast(b_dk * sm_scale, DK.dtype.element_ty, INTERPRET_BF16), mask=m_kv)
    tl.store(p_dv + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
             downcast(b_dv, DV.dtype.element_ty, INTERPRET_BF16), mask=m_kv)


@triton.jit
def _dq_kv_loop(
    b_dq, b_q, b_do, b_lse, b_delta,
    p_k, p_v, stride_kn, stride_vn, p_mask, stride_mask_m, stride_mask_n,
    offs_m, offs_d, rng_rows, seed, drop_below, dropout_scale,
    start, end, seqlen_q, seqlen_k, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    INT64_ROWS: tl.constexpr,
):
    """Accumulate dQ of one query tile over key tiles [start, end). MASKED tiles hold keys
    past Lk, straddle the causal diagonal or lie under a boolean mask: a key past Lk must be
    masked, as its recomputed weight exp2(-lse) can overflow and turn dS into NaN."""
    m_d = offs_d < HEAD_DIM
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if INT64_ROWS:
            offs_n = offs_n.to(tl.int64)
        m_kv = (offs_n[:, None] < seqlen_k) & m_d[None, :]
        b_k = tl.load(p_k + offs_n[:, None] * stride_kn, mask=m_kv, other=0.0)  # [BLOCK_N, D]
        b_v = tl.load(p_v + offs_n[:, None] * stride_vn, mask=m_kv, other=0.0)  # [BLOCK_N, D]
        if INTERPRET_BF16:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        # [BLOCK_M, BLOCK_N]
        b_log_p = tl.fma(tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION), qk_scale,
                         -b_lse[:, None])
        if MASKED:
            m_visible = visible(offs_m, offs_n, seqlen_q, seqlen_k, p_mask, stride_mask_m,
                                stride_mask_n, IS_CAUSAL, HAS_MASK)
            b_log_p = tl.where(m_visible, b_log_p, float("-inf"))
        b_p = tl.exp2(b_log_p)
        # [BLOCK_M, BLOCK_N]
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
        if HAS_DROPOUT:
            b_keep = keep_mask(seed, rng_rows, start_n, seqlen_k, drop_below, BLOCK_M, BLOCK_N)
            b_dp = tl.where(b_keep, b_dp * dropout_scale, 0.0)
        b_ds = b_p * (b_dp - b_delta[:, None])
        # [BLOCK_M, D]
        b_dq = tl.dot(dot_operand(b_ds, b_k, INTERPRET_BF16), b_k, b_dq,
                      input_precision=PRECISION)
    return b_dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, SEED, MASK,
    sm_scale, qk_scale, drop_below, dropout_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_mask_b, stride_mask_h, stride_mask_m, stride_mask_n,
    n_heads_q, group_size, seqlen_q, seqlen_k, seqlen_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr, INT64_ROWS: tl.constexpr,
):
    """dQ: [B, Hq, Lq, D]. Grid: (cdiv(Lq, BLOCK_M), B * Hq)."""
    i_m = tl.program_id(0)
    if IS_CAUSAL:  # the last query tiles see the most keys: start them first
        i_m = tl.num_programs(0) - 1 - i_m
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // n_heads_q
    i_h = i_bh % n_heads_q
    i_hk = i_h // group_size

    offs_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    if INT64_ROWS:
        offs_m = offs_m.to(tl.int64)
    m_rows = offs_m < seqlen_q
    m_q = m_rows[:, None] & (offs_d[None, :] < HEAD_DIM)
    b_q = tl.load(Q + i_b * stride_qb + i_h * stride_qh + offs_m[:, None] * stride_qm
                  + offs_d[None, :] * stride_qd, mask=m_q, other=0.0)  # [BLOCK_M, D]
    b_do = tl.load(DO + i_b * stride_dob + i_h * stride_doh + offs_m[:, None] * stride_dom
                   + offs_d[None, :] * stride_dod, mask=m_q, other=0.0)  # [BLOCK_M, D]
    if INTERPRET_BF16:
        b_q = b_q.to(tl.float32)
        b_do = b_do.to(tl.float32)
    b_lse = row_lse(LSE + i_bh * seqlen_q + offs_m, m_rows)
    b_delta = tl.load(DELTA + i_bh * seqlen_q + offs_m, mask=m_rows, other=0.0)
    p_k = K + i_b * stride_kb + i_hk * stride_kh + offs_d[None, :] * stride_kd
    p_v = V + i_b * stride_vb + i_hk * stride_vh + offs_d[None, :] * stride_vd

    seed = 0
    rng_rows = i_bh * seqlen_q + offs_m  # global query rows: the dropout stream's key
    if HAS_DROPOUT:
        seed = tl.load(SEED)

    p_mask = MASK + i_b * stride_mask_b + i_h * stride_mask_h
    # Tiles before full_end are wholly visible; the rest hold keys past Lk, straddle the causal
    # diagonal or lie under a boolean mask.
    end_n = seqlen_k
    full_end = (seqlen_k // BLOCK_N) * BLOCK_N
    if HAS_MASK:
        full_end = 0
    if IS_CAUSAL:
        end_n = tl.minimum(seqlen_k, (i_m + 1) * BLOCK_M)
        full_end = tl.minimum(full_end, ((i_m * BLOCK_M + 1) // BLOCK_N) * BLOCK_N)
    b_dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    b_dq = _dq_kv_loop(
        b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, stride_kn, stride_vn,
        p_mask, stride_mask_m, stride_mask_n, offs_m, offs_d, rng_rows, seed, drop_below,
        dropout_scale, start=0, end=full_end, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
        qk_scale=qk_scale, HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, MASKED=False,
        IS_CAUSAL=IS_CAUSAL, HAS_MASK=HAS_MASK, HAS_DROPOUT=HAS_DROPOUT,
        INTERPRET_BF16=INTERPRET_BF16, PRECISION=PRECISION, INT64_ROWS=INT64_ROWS,
    )
    b_dq = _dq_kv_loop(
        b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, stride_kn, stride_vn,
        p_mask, stride_mask_m, stride_mask_n, offs_m, offs_d, rng_rows, seed, drop_below,
        dropout_scale, start=full_end, end=end_n, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
        qk_scale=qk_scale, HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, MASKED=True,
        IS_CAUSAL=IS_CAUSAL, HAS_MASK=HAS_MASK, HAS_DROPOUT=HAS_DROPOUT,
        INTERPRET_BF16=INTERPRET_BF16, PRECISION=PRECISION, INT64_ROWS=INT64_ROWS,
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
    scale: float,
    causal: bool,
    dropout_p: float,
    seed: torch.Tensor | None,
    attn_mask: torch.Tensor | None = None,
    int64_rows: bool | None = None,
) -> None:
    """Launch the backward: fills dq (shape of q), dk and dv (shape of k, v).

    ``out`` and ``lse`` (base 2) are the forward's results, ``seed`` and ``attn_mask`` the
    forward's (see ``attention_forward``). All tensors may have any strides.
    """
    batch, n_heads_q, seqlen_q, head_dim = q.shape
    n_heads_kv, seqlen_k = k.shape[1], k.shape[2]
    group_size = n_heads_q // n_heads_kv
    has_dropout = dropout_p > 0.0
    if int64_rows is None:
        int64_rows = needs_int64_rows(q, k, v, out, do, dq, dk, dv, attn_mask)
    block_d = head_dim_block(head_dim)

    delta = torch.empty_like(lse)
    block_m = 64 if not is_interpreter() else INTERPRETER_META["BLOCK_M"]
    _bwd_delta_kernel[(triton.cdiv(seqlen_q, block_m), batch * n_heads_q)](
        out, do, delta, *out.stride(), *do.stride(), n_heads_q, seqlen_q,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, INT64_ROWS=int64_rows,
    )
    common = (
        scale, scale * LOG2E, *dropout_args(dropout_p),
        *q.stride(), *k.stride(), *v.stride(), *do.stride(),
    )
    bucket = seqlen_bucket(max(seqlen_q, seqlen_k))
    flags = dict(
        HEAD_DIM=head_dim, BLOCK_D=block_d, IS_CAUSAL=causal, HAS_MASK=attn_mask is not None,
        HAS_DROPOUT=has_dropout, INT64_ROWS=int64_rows, **kernel_flags(q),
    )
    seed_arg = seed if has_dropout else lse
    mask_ptr, *mask_strides = mask_args(attn_mask, lse)
    launch(
        _attn_bwd_dkdv_kernel, "dkdv",
        lambda meta: (triton.cdiv(seqlen_k, meta["BLOCK_N"]), batch * n_heads_kv),
        (q, k, v, do, dk, dv, lse, delta, seed_arg, mask_ptr, *common, *dk.stride(),
         *dv.stride(), *mask_strides, n_heads_kv, group_size, seqlen_q, seqlen_k, bucket),
        flags,
    )
    launch(
        _attn_bwd_dq_kernel, "dq",
        lambda meta: (triton.cdiv(seqlen_q, meta["BLOCK_M"]), batch * n_heads_q),
        (q, k, v, do, dq, lse, delta, seed_arg, mask_ptr, *common, *dq.stride(),
         *mask_strides, n_heads_q, group_size, seqlen_q, seqlen_k, bucket),
        flags,
    )
