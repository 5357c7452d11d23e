"""Fused attention forward: O = softmax(scores) [dropout] V, and the row LSE.

FlashAttention-2 structure: one program per (query tile, batch*head) streams over the key/value
tiles its band reaches with an online softmax in fp32, so the L x L weights never reach memory.
Scores are in base 2 (log2(e) folded into the scale) so the exponentials are exp2; without
score modifiers the scale itself is folded into the exponent's fma.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .cache import CacheLayout, cache_args
from .casting import dot_operand, downcast
from .dropout import DropoutStream, dropout_args, keep_mask
from .launch import head_dim_args, kernel_flags, launch, needs_int64_rows, seqlen_bucket, strides
from .score import MASK_FLOAT, band_tiles, base2_scores, score_args, visible
from .varlen import PackedSequences, batch_and_head, packed_args, packed_tile, tuning_length


@triton.jit
def _fwd_kv_loop(
    b_acc, b_l, b_m, b_q,
    p_k, p_v, stride_kn, stride_vn, offs_m, offs_d, offs_dv,
    p_table, page_size, stride_page_k, stride_page_v,
    p_mask, stride_mask_m, stride_mask_n, slope_base2, rng_rows, rng_cols, rng_col_offset,
    seed, drop_below, qk_scale, softcap_scale, softcap_base2, diagonal_offset, window_left,
    window_right, seqlen_q, seqlen_k, start, end, start2, end2,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    MASK_KIND: tl.constexpr, HAS_DROPOUT: tl.constexpr, INTERPRET_BF16: tl.constexpr,
    PRECISION: tl.constexpr, INT64_ROWS: tl.constexpr, PAGED: tl.constexpr,
):
    """Accumulate the key tiles of [start, end) then [start2, end2). MASKED tiles apply the
    visibility rules; the others (the bulk of the work) skip them. PAGED: key t lives at row
    t % page_size of page p_table[t // page_size]."""
    m_d = offs_d < HEAD_DIM
    m_dv = offs_dv < HEAD_DIM_V
    i_q = offs_m[:, None]
    n_first = tl.cdiv(end - start, BLOCK_N)
    for t in range(0, n_first + tl.cdiv(end2 - start2, BLOCK_N)):
        start_n = tl.where(t < n_first, start + t * BLOCK_N, start2 + (t - n_first) * BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if INT64_ROWS:
            offs_n = offs_n.to(tl.int64)
        m_k = m_d[None, :]
        m_v = m_dv[None, :]
        if MASKED:
            m_k = m_k & (offs_n[:, None] < seqlen_k)
            m_v = m_v & (offs_n[:, None] < seqlen_k)
        k_rows = offs_n * stride_kn
        v_rows = offs_n * stride_vn
        if PAGED:
            page = tl.load(p_table + offs_n // page_size, mask=offs_n < seqlen_k,
                           other=0).to(tl.int64)
            k_rows = page * stride_page_k + (offs_n % page_size) * stride_kn
            v_rows = page * stride_page_v + (offs_n % page_size) * stride_vn
        b_k = tl.load(p_k + k_rows[:, None], mask=m_k, other=0.0)  # [BLOCK_N, D]
        b_v = tl.load(p_v + v_rows[:, None], mask=m_v, other=0.0)  # [BLOCK_N, Dv]
        if INTERPRET_BF16:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        # [BLOCK_M, BLOCK_N]. Without modifiers the raw scores stay unscaled: the scale
        # (> 0, so the row max commutes with it) joins the exponent's fused multiply-add.
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)
        s_mul = qk_scale
        if SOFTCAP or HAS_ALIBI or MASK_KIND == MASK_FLOAT:
            b_s, _ = base2_scores(b_s, i_q, offs_n[None, :], qk_scale, softcap_scale,
                                  softcap_base2, slope_base2, diagonal_offset, seqlen_q,
                                  seqlen_k, p_mask, stride_mask_m, stride_mask_n,
                                  SOFTCAP, HAS_ALIBI, MASK_KIND)
            s_mul = 1.0
        if MASKED:
            m_s = visible(i_q, offs_n[None, :], seqlen_q, seqlen_k, diagonal_offset,
                          window_left, window_right, p_mask, stride_mask_m, stride_mask_n,
                          HAS_LEFT, HAS_RIGHT, MASK_KIND)
            b_s = tl.where(m_s, b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1) * s_mul)
        b_m_safe = b_m_new
        if MASKED:  # a row that has seen only hidden keys keeps m = -inf: subtract 0 instead
            b_m_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_p = tl.exp2(tl.fma(b_s, s_mul, -b_m_safe[:, None]))
        b_alpha = tl.exp2(b_m - b_m_safe)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        if HAS_DROPOUT:
            # The normaliser uses every weight; only the value sum sees the dropped ones.
            b_keep = keep_mask(seed, rng_rows, rng_col_offset + start_n, rng_cols, drop_below,
                               BLOCK_M, BLOCK_N)
            b_p = tl.where(b_keep, b_p, 0.0)
        # [BLOCK_M, Dv]
        b_acc = tl.dot(dot_operand(b_p, b_v, INTERPRET_BF16), b_v, b_acc * b_alpha[:, None],
                       input_precision=PRECISION)
        b_m = b_m_new
    return b_acc, b_l, b_m


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, SEED, MASK, SLOPES, SINKS,
    stride_mask_b, stride_mask_h, stride_mask_m, stride_mask_n, stride_slope_b, stride_slope_h,
    stride_sink, qk_scale, softcap_scale, softcap_base2, bottom_right, window_left, window_right,
    drop_below, dropout_scale, rng_rows_per_head, rng_row_offset, rng_cols, rng_col_offset,
    CU_SEQLENS_Q, CU_SEQLENS_K, n_seqs, search_steps,
    CACHE_SEQLENS, BLOCK_TABLE, stride_table_b, page_size, n_splits, stride_o_split,
    stride_lse_split,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    n_heads_q, group_size, seqlen_q, seqlen_k, seqlen_bucket,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr, MASK_KIND: tl.constexpr, HAS_SINKS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    INT64_ROWS: tl.constexpr, VARLEN: tl.constexpr, DECODE: tl.constexpr,
    PAGED: tl.constexpr, SPLIT_KV: tl.constexpr,
):
    """Q: [B, Hq, Lq, D], K: [B, Hkv, Lk, D], V: [B, Hkv, Lk, Dv] (any strides),
    O: [B, Hq, Lq, Dv], LSE: [B, Hq, Lq] fp32 base 2 (-inf for a row that sees no key and no
    sink), MASK: [B, Hq, Lq, Lk] uint8 or float (broadcast by zero strides), SLOPES: ALiBi
    slopes [B, Hq] (zero batch stride for [Hq]), SINKS: [Hq]. Grid: (cdiv(Lq, BLOCK_M), B * Hq).

    VARLEN: B = 1 and Lq, Lk are the packed token counts; CU_SEQLENS_Q/K [n_seqs + 1] cut them
    into sequences, each attended on its own; SLOPES is [n_seqs, Hq], a row per sequence.
    Grid: (Lq // BLOCK_M + n_seqs, Hq).
    DECODE (a KV cache): batch row b holds CACHE_SEQLENS[b] keys (clamped to [0, seqlen_k],
    the capacity, so a row never reads another's cache or blocks), and a program serves one
    key/value head: its rows stack the group's query heads, row r being query r // G of head
    (r % G) of the group, so each key tile is read once per group. Grid: (cdiv(G * Lq,
    BLOCK_M) * n_splits, B * Hkv). PAGED: K, V are [num_pages, Hkv, page_size, D] and key t of
    row b lives in page BLOCK_TABLE[b, t // page_size] (stride_kb is the page stride).
    SPLIT_KV: split s of n_splits takes its share of the key tiles and writes its normalised
    partial output and LSE at O + s * stride_o_split, LSE + s * stride_lse_split (the sinks
    join split 0 only); ``decode.combine_splits`` merges them.
    """
    i_m = tl.program_id(0)
    i_split = 0
    if SPLIT_KV:
        i_split = i_m % n_splits
        i_m = i_m // n_splits
    if HAS_RIGHT and not HAS_LEFT and not DECODE:  # causal: the last tiles see the most keys
        i_m = tl.num_programs(0) - 1 - i_m
    i_bh = tl.program_id(1).to(tl.int64)
    rows_per_head = seqlen_q  # LSE rows, before seqlen_q becomes one sequence's length
    rows = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if DECODE:
        i_b = i_bh // (n_heads_q // group_size)
        i_hk = i_bh % (n_heads_q // group_size)
        i_h = i_hk * group_size + rows % group_size  # [BLOCK_M]: each row's query head
        offs_m = rows // group_size  # each row's query position
        m_rows = rows < group_size * seqlen_q
        x_first = (i_m * BLOCK_M) // group_size  # the tile's queries lie in x_first + [0, M)
        # Clamped to [0, capacity] (seqlen_k's value here): on CUDA the host leaves the lengths
        # unchecked (that would synchronise), and a longer one would read the next row's keys.
        seqlen_k = tl.minimum(tl.maximum(tl.load(CACHE_SEQLENS + i_b), 0), seqlen_k)
    else:
        i_b, i_h = batch_and_head(i_bh, n_heads_q, VARLEN)
        i_hk = i_h // group_size
        offs_m = rows
        x_first = i_m * BLOCK_M
    p_lse = LSE + i_split * stride_lse_split + (i_b * n_heads_q + i_h) * rows_per_head
    rng_row0 = i_bh * rng_rows_per_head + rng_row_offset
    slope_row = i_b  # ALiBi's row: the batch row, or the packed sequence
    if VARLEN:
        slope_row, i_m, q_start, seqlen_q, k_start, seqlen_k = packed_tile(
            CU_SEQLENS_Q, CU_SEQLENS_K, n_seqs, search_steps, i_m, BLOCK_M, INT64_ROWS)
        if i_m * BLOCK_M >= seqlen_q:  # a gap program
            return
        Q += q_start * stride_qm
        O += q_start * stride_om
        K += k_start * stride_kn
        V += k_start * stride_vn
        p_lse += q_start
        rng_row0 += q_start
        offs_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
        x_first = i_m * BLOCK_M
    diagonal_offset = bottom_right * (seqlen_k - seqlen_q)

    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if INT64_ROWS:  # a single head spans more than 2**31 elements
        offs_m = offs_m.to(tl.int64)
    if not DECODE:
        m_rows = offs_m < seqlen_q
    m_q = m_rows[:, None] & (offs_d[None, :] < HEAD_DIM)

    q_rows = i_h * stride_qh + offs_m * stride_qm  # a scalar head broadcasts
    b_q = tl.load(Q + i_b * stride_qb + q_rows[:, None] + offs_d[None, :] * stride_qd, mask=m_q,
                  other=0.0)  # [BLOCK_M, D]
    if INTERPRET_BF16:
        b_q = b_q.to(tl.float32)
    p_k = K + i_hk * stride_kh + offs_d[None, :] * stride_kd
    p_v = V + i_hk * stride_vh + offs_dv[None, :] * stride_vd
    p_table = BLOCK_TABLE + i_b * stride_table_b
    if not PAGED:  # a paged cache finds each key's page (its "batch" index) in the table
        p_k += i_b * stride_kb
        p_v += i_b * stride_vb
    p_mask = MASK + i_b * stride_mask_b + i_h * stride_mask_h
    slope_base2 = 0.0
    if HAS_ALIBI:
        slope = tl.load(SLOPES + slope_row * stride_slope_b + i_h * stride_slope_h)
        slope_base2 = slope * 1.4426950408889634
        if DECODE:
            slope_base2 = slope_base2[:, None]

    seed = 0
    rng_rows = rng_row0 + offs_m  # the dropout stream's rows
    if HAS_DROPOUT:
        seed = tl.load(SEED)

    b_acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    b_m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    if HAS_SINKS:  # the sink starts the running softmax: max = sink, sum = exp2(0)
        sink_base2 = tl.load(SINKS + i_h * stride_sink).to(tl.float32) * 1.4426950408889634
        b_sink = tl.zeros([BLOCK_M], dtype=tl.float32) + sink_base2
        if SPLIT_KV:  # split 0 alone counts the sink
            b_sink = tl.where(i_split == 0, b_sink, float("-inf"))
        b_m = b_sink
    b_l = tl.where(b_m == float("-inf"), 0.0, 1.0)

    # The key tiles this query tile's band reaches; only those straddling an edge are masked.
    start, full_start, full_end, end = band_tiles(
        x_first, seqlen_k, diagonal_offset - window_left, diagonal_offset + window_right,
        False, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT, MASK_KIND != 0)
    if SPLIT_KV:  # this split's share of the key tiles, whole tiles, clipped to the band
        per_split = tl.cdiv(tl.cdiv(seqlen_k, BLOCK_N), n_splits) * BLOCK_N
        lo = i_split * per_split
        start = tl.minimum(tl.maximum(start, lo), lo + per_split)
        full_start = tl.minimum(tl.maximum(full_start, lo), lo + per_split)
        full_end = tl.minimum(tl.maximum(full_end, lo), lo + per_split)
        end = tl.minimum(tl.maximum(end, lo), lo + per_split)
    # The band's wholly visible tiles unmasked (the bulk of the work), then its edge tiles
    # masked: a static loop, so each phase is its own call and compiles to its own loop.
    for phase in tl.static_range(2):
        if phase == 1:
            start1, end1, start2, end2 = start, full_start, full_end, end
        else:
            start1, end1, start2, end2 = full_start, full_end, full_end, full_end
        b_acc, b_l, b_m = _fwd_kv_loop(
            b_acc, b_l, b_m, b_q, p_k, p_v, stride_kn, stride_vn, offs_m, offs_d, offs_dv,
            p_table, page_size, stride_kb, stride_vb, p_mask, stride_mask_m, stride_mask_n,
            slope_base2, rng_rows, rng_cols, rng_col_offset, seed, drop_below, qk_scale,
            softcap_scale, softcap_base2, diagonal_offset, window_left, window_right, seqlen_q,
            seqlen_k, start1, end1, start2, end2, HEAD_DIM, HEAD_DIM_V, BLOCK_M, BLOCK_N,
            phase == 1, HAS_LEFT, HAS_RIGHT, SOFTCAP, HAS_ALIBI, MASK_KIND, HAS_DROPOUT,
            INTERPRET_BF16, PRECISION, INT64_ROWS, PAGED,
        )

    # A row with no visible key (and no sink) has l = 0: it outputs zeros and an LSE of -inf.
    b_l_safe = tl.where(b_l == 0.0, 1.0, b_l)
    b_o = b_acc * (dropout_scale / b_l_safe)[:, None]
    o_rows = i_h * stride_oh + offs_m * stride_om
    m_o = m_rows[:, None] & (offs_dv[None, :] < HEAD_DIM_V)
    tl.store(O + i_split * stride_o_split + i_b * stride_ob + o_rows[:, None]
             + offs_dv[None, :] * stride_od, downcast(b_o, O.dtype.element_ty, INTERPRET_BF16),
             mask=m_o)
    b_lse = tl.where(b_l == 0.0, float("-inf"), b_m + tl.log2(b_l_safe))
    tl.store(p_lse + offs_m, b_lse, mask=m_rows)


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    mods,
    seed: torch.Tensor | None = None,
    int64_rows: bool | None = None,
    packed: PackedSequences | None = None,
    dropout_stream: DropoutStream | None = None,
    cache: CacheLayout | None = None,
) -> None:
    """Launch the forward: fills ``out`` (B, Hq, Lq, Dv) and ``lse`` (B, Hq, Lq) fp32, the
    base-2 log-sum-exp of the scores (with the sink's term; -inf for a row that sees nothing).

    q (B, Hq, Lq, D), k (B, Hkv, Lk, D) and v (B, Hkv, Lk, Dv) may have any strides. ``mods``
    holds the scale, dropout probability and score modifiers, read by attribute
    (``attention_ops.options.ScoreMods``; see ``score.score_args``). ``seed`` is a one-element
    int64 tensor on the device (read when ``mods.dropout_p > 0``). ``int64_rows`` forces
    (True) or forbids (False) 64-bit row offsets; None decides from the sizes. ``packed``:
    B = 1, Lq and Lk count the tokens of all sequences, and each sequence attends on its own
    (no attn_mask). ``dropout_stream`` places the weights in the dropout stream (default
    (Lq, 0, Lk, 0)). ``cache``: k and v are a KV cache (``cache.CacheLayout``: per-row key
    counts, pages, splits; with splits, out and lse are split 0 of the partial results).
    """
    if not lse.is_contiguous():  # the kernels index it as a dense (B, Hq, Lq) array
        raise ValueError(f"lse must be contiguous, got strides {lse.stride()}")
    batch, n_heads_q, seqlen_q, head_dim = q.shape
    group_size = n_heads_q // k.shape[1]
    seqlen_k = k.shape[2] if cache is None else cache.capacity
    if int64_rows is None:
        int64_rows = needs_int64_rows(q, k, v, out, mods.attn_mask)
    args = dict(
        Q=q, **strides("q", q), K=k, **strides("k", k, "bhnd"), V=v, **strides("v", v, "bhnd"),
        O=out, **strides("o", out), LSE=lse, n_heads_q=n_heads_q, group_size=group_size,
        seqlen_q=seqlen_q, seqlen_k=seqlen_k,
        seqlen_bucket=seqlen_bucket(tuning_length(packed, seqlen_q, seqlen_k)),
        **head_dim_args(head_dim, v.shape[3]), **score_args(mods, lse),
        **dropout_args(mods.dropout_p, seed, lse),
        **(dropout_stream or DropoutStream(seqlen_q, 0, seqlen_k, 0)).args(),
        **packed_args(packed, lse), **cache_args(cache, k, lse), **kernel_flags(q),
        INT64_ROWS=int64_rows,
    )

    def grid(meta):
        if cache is not None:  # a program per (row tile of the stacked group, split)
            rows = triton.cdiv(group_size * seqlen_q, meta["BLOCK_M"])
            return rows * cache.num_splits, batch * (n_heads_q // group_size)
        tiles = (triton.cdiv(seqlen_q, meta["BLOCK_M"]) if packed is None
                 else packed.programs(seqlen_q, meta["BLOCK_M"]))
        return tiles, batch * n_heads_q

    launch(_attn_fwd_kernel, "decode" if cache is not None else "fwd", grid, args)
