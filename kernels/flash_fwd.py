"""Fused attention forward: O = softmax(mask(scale * Q K^T)) [dropout] V, and the row LSE.

FlashAttention-2 structure: one program per (query tile, batch*head) streams over key/value
tiles with an online softmax in fp32, so the L x L weights never reach memory. Scores live in
the log2 domain (scale * log2(e) folded into one multiply) so the exponentials are exp2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .casting import dot_operand, downcast
from .configs import head_dim_block
from .dropout import dropout_args, keep_mask
from .launch import LOG2E, kernel_flags, launch, mask_args, needs_int64_rows, seqlen_bucket
from .masking import visible


@triton.jit
def _fwd_kv_loop(
    b_acc, b_l, b_m, b_q,
    p_k, p_v, stride_kn, stride_vn, p_mask, stride_mask_m, stride_mask_n,
    offs_m, offs_d, rng_rows, seed, drop_below,
    start, end, seqlen_q, seqlen_k, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    INT64_ROWS: tl.constexpr,
):
    """Accumulate key tiles [start, end). MASKED tiles apply the length, causal and
    boolean masks; the others (the bulk of the work) skip them."""
    m_d = offs_d < HEAD_DIM
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if INT64_ROWS:
            offs_n = offs_n.to(tl.int64)
        m_kv = m_d[None, :]
        if MASKED:
            m_kv = m_kv & (offs_n[:, None] < seqlen_k)
        b_k = tl.load(p_k + offs_n[:, None] * stride_kn, mask=m_kv, other=0.0)  # [BLOCK_N, D]
        b_v = tl.load(p_v + offs_n[:, None] * stride_vn, mask=m_kv, other=0.0)  # [BLOCK_N, D]
        if INTERPRET_BF16:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        # [BLOCK_M, BLOCK_N] raw scores; the scale (> 0, so the row max commutes with it) is
        # applied in the exponent's fused multiply-add rather than in a pass of its own.
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)
        if MASKED:
            m_s = visible(offs_m, offs_n, seqlen_q, seqlen_k, p_mask, stride_mask_m,
                          stride_mask_n, IS_CAUSAL, HAS_MASK)
            b_s = tl.where(m_s, b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1) * qk_scale)
        b_m_safe = b_m_new
        if MASKED:  # a row that has seen only masked keys keeps m = -inf: subtract 0 instead
            b_m_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_p = tl.exp2(tl.fma(b_s, qk_scale, -b_m_safe[:, None]))
        b_alpha = tl.exp2(b_m - b_m_safe)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        if HAS_DROPOUT:
            # The normaliser uses every weight; only the value sum sees the dropped ones.
            b_keep = keep_mask(seed, rng_rows, start_n, seqlen_k, drop_below, BLOCK_M, BLOCK_N)
            b_p = tl.where(b_keep, b_p, 0.0)
        # [BLOCK_M, D]
        b_acc = tl.dot(dot_operand(b_p, b_v, INTERPRET_BF16), b_v, b_acc * b_alpha[:, None],
                       input_precision=PRECISION)
        b_m = b_m_new
    return b_acc, b_l, b_m


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, SEED, MASK,
    qk_scale, drop_below, dropout_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_mask_b, stride_mask_h, stride_mask_m, stride_mask_n,
    n_heads_q, group_size, seqlen_q, seqlen_k, seqlen_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr, INT64_ROWS: tl.constexpr,
):
    """Q: [B, Hq, Lq, D], K/V: [B, Hkv, Lk, D] (any strides), O: [B, Hq, Lq, D],
    LSE: [B, Hq, Lq] fp32 base 2 (-inf for a row that sees no key), MASK: [B, Hq, Lq, Lk]
    uint8 (broadcast by zero strides).
    Grid: (cdiv(Lq, BLOCK_M), B * Hq)."""
    i_m = tl.program_id(0)
    if IS_CAUSAL:  # the last query tiles see the most keys: start them first
        i_m = tl.num_programs(0) - 1 - i_m
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // n_heads_q
    i_h = i_bh % n_heads_q
    i_hk = i_h // group_size

    offs_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    if INT64_ROWS:  # a single head spans more than 2**31 elements
        offs_m = offs_m.to(tl.int64)
    m_d = offs_d < HEAD_DIM
    m_q = (offs_m[:, None] < seqlen_q) & m_d[None, :]

    p_q = Q + i_b * stride_qb + i_h * stride_qh
    b_q = tl.load(p_q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=m_q,
                  other=0.0)  # [BLOCK_M, D]
    if INTERPRET_BF16:
        b_q = b_q.to(tl.float32)
    p_k = K + i_b * stride_kb + i_hk * stride_kh + offs_d[None, :] * stride_kd
    p_v = V + i_b * stride_vb + i_hk * stride_vh + offs_d[None, :] * stride_vd
    p_mask = MASK + i_b * stride_mask_b + i_h * stride_mask_h

    seed = 0
    rng_rows = i_bh * seqlen_q + offs_m  # global query rows: the dropout stream's key
    if HAS_DROPOUT:
        seed = tl.load(SEED)

    b_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    b_l = tl.zeros([BLOCK_M], dtype=tl.float32)
    b_m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)

    # Key tiles every row of this query tile fully sees need no mask; the rest (the causal
    # diagonal, the ragged end of K, every tile under a boolean mask) do.
    end_n = seqlen_k
    full_end = (seqlen_k // BLOCK_N) * BLOCK_N
    if HAS_MASK:
        full_end = 0
    if IS_CAUSAL:
        end_n = tl.minimum(seqlen_k, (i_m + 1) * BLOCK_M)
        full_end = tl.minimum(full_end, ((i_m * BLOCK_M + 1) // BLOCK_N) * BLOCK_N)
    b_acc, b_l, b_m = _fwd_kv_loop(
        b_acc, b_l, b_m, b_q, p_k, p_v, stride_kn, stride_vn, p_mask, stride_mask_m,
        stride_mask_n, offs_m, offs_d, rng_rows, seed, drop_below,
        start=0, end=full_end, seqlen_q=seqlen_q, seqlen_k=seqlen_k, qk_scale=qk_scale,
        HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, MASKED=False, IS_CAUSAL=IS_CAUSAL,
        HAS_MASK=HAS_MASK, HAS_DROPOUT=HAS_DROPOUT, INTERPRET_BF16=INTERPRET_BF16,
        PRECISION=PRECISION, INT64_ROWS=INT64_ROWS,
    )
    b_acc, b_l, b_m = _fwd_kv_loop(
        b_acc, b_l, b_m, b_q, p_k, p_v, stride_kn, stride_vn, p_mask, stride_mask_m,
        stride_mask_n, offs_m, offs_d, rng_rows, seed, drop_below,
        start=full_end, end=end_n, seqlen_q=seqlen_q, seqlen_k=seqlen_k, qk_scale=qk_scale,
        HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, MASKED=True, IS_CAUSAL=IS_CAUSAL,
        HAS_MASK=HAS_MASK, HAS_DROPOUT=HAS_DROPOUT, INTERPRET_BF16=INTERPRET_BF16,
        PRECISION=PRECISION, INT64_ROWS=INT64_ROWS,
    )

    # A row with no visible key has l = 0: it outputs zeros and an LSE of -inf.
    b_l_safe = tl.where(b_l == 0.0, 1.0, b_l)
    b_o = b_acc * (dropout_scale / b_l_safe)[:, None]
    p_o = O + i_b * stride_ob + i_h * stride_oh
    tl.store(p_o + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             downcast(b_o, O.dtype.element_ty, INTERPRET_BF16), mask=m_q)
    b_lse = tl.where(b_l == 0.0, float("-inf"), b_m + tl.log2(b_l_safe))
    tl.store(LSE + i_bh * seqlen_q + offs_m, b_lse, mask=offs_m < seqlen_q)


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    scale: float,
    causal: bool,
    dropout_p: float,
    seed: torch.Tensor | None,
    attn_mask: torch.Tensor | None = None,
    int64_rows: bool | None = None,
) -> None:
    """Launch the forward: fills ``out`` (B, Hq, Lq, D) and ``lse`` (B, Hq, Lq) fp32, the
    base-2 log-sum-exp of the scaled scores (-inf for a row that sees no key).

    q (B, Hq, Lq, D) and k, v (B, Hkv, Lk, D) may have any strides. ``seed`` is a one-element
    int64 tensor on the device (used when ``dropout_p > 0``). ``attn_mask`` is an optional
    bool tensor expanded to (B, Hq, Lq, Lk), True where a key takes part. ``int64_rows``
    forces (True) or forbids (False) 64-bit row offsets; None decides from the sizes.
    """
    batch, n_heads_q, seqlen_q, head_dim = q.shape
    group_size = n_heads_q // k.shape[1]
    seqlen_k = k.shape[2]
    has_dropout = dropout_p > 0.0
    if int64_rows is None:
        int64_rows = needs_int64_rows(q, k, v, out, attn_mask)
    mask_ptr, *mask_strides = mask_args(attn_mask, lse)
    args = (
        q, k, v, out, lse, seed if has_dropout else lse, mask_ptr,
        scale * LOG2E, *dropout_args(dropout_p),
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mask_strides,
        n_heads_q, group_size, seqlen_q, seqlen_k, seqlen_bucket(max(seqlen_q, seqlen_k)),
    )
    flags = dict(
        HEAD_DIM=head_dim, BLOCK_D=head_dim_block(head_dim), IS_CAUSAL=causal,
        HAS_MASK=attn_mask is not None, HAS_DROPOUT=has_dropout, INT64_ROWS=int64_rows,
        **kernel_flags(q),
    )
    launch(_attn_fwd_kernel, "fwd",
           lambda meta: (triton.cdiv(seqlen_q, meta["BLOCK_M"]), batch * n_heads_q), args, flags)
