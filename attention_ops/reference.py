"""Eager PyTorch attention: the numerical reference for every kernel, test and benchmark.

Plain, readable math in the spirit of the teaching text. Nothing here imports Triton. Tests
run these functions in float64 (``compute_dtype=torch.float64``) to get the ground truth the
fused kernels are measured against; ``varlen_attention`` and ``kvcache_attention`` do the same
for packed sequences and KV caches, one sequence or cache row at a time, so users can check
their own calls. ``visibility_mask`` (``visible_keys`` on positions) is the one visibility
rule: causal and sliding-window bands around each query's diagonal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attention_ops.options import ScoreMods, score_mods
from attention_ops.validation import (
    cache_capacity,
    check_align,
    check_attention_inputs,
    check_cu_seqlens,
    check_packed_inputs,
    check_window,
)


def simplified_self_attention(x: torch.Tensor) -> torch.Tensor:
    """Self-attention with no trainable weights, unscaled, exactly as in the teaching text.

    Args:
        x: token embeddings, (L, D) or batched (B, L, D).

    Returns:
        Context vectors with the shape of ``x``: softmax(x @ x^T) @ x.
    """
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be (L, D) or (B, L, D), got shape {tuple(x.shape)}")
    attn_scores = x @ x.transpose(-2, -1)
    attn_weights = torch.softmax(attn_scores, dim=-1)
    return attn_weights @ x


def query_diagonals(seqlen_q: int, seqlen_k: int | torch.Tensor, align: str = "top_left",
                    device: torch.device | None = None) -> torch.Tensor:
    """Each query's diagonal key position d_i: i for ``"top_left"``, i + Lk - Lq for
    ``"bottom_right"`` (may be negative or past Lk - 1).

    Returns:
        int64 (Lq, 1); with ``seqlen_k`` an integer (B,) tensor of per-row key counts and
        ``"bottom_right"``, (B, Lq, 1), each row's diagonals placed from its own count.
    """
    align = check_align(align)
    shift = seqlen_k - seqlen_q if align == "bottom_right" else 0
    if isinstance(shift, torch.Tensor):
        shift = shift[:, None, None]
    return torch.arange(seqlen_q, device=device)[:, None] + shift


def visible_keys(diagonals: torch.Tensor, keys: torch.Tensor, *, causal: bool = False,
                 window: tuple[int | None, int | None] | None = None) -> torch.Tensor:
    """The visibility rule on positions: True where a query whose diagonal is key position
    d sees key position j.

    ``causal`` keeps j <= d; ``window=(left, right)`` keeps d - left <= j <= d + right (a None
    side is unbounded). Both apply together. Elementwise, so it also serves as the mask
    function of transformers or FlexAttention (d the query position there).

    Args:
        diagonals: integer tensor of d, broadcastable against ``keys``.
        keys: integer tensor of j.

    Returns:
        bool tensor of their broadcast shape.
    """
    window = check_window(window)
    left, right = window if window is not None else (None, None)
    if causal:
        right = 0 if right is None else min(right, 0)
    offset = keys - diagonals  # j - d
    visible = torch.ones_like(offset, dtype=torch.bool)
    # Sides past the index range change nothing; clamped, they fit the comparison's dtype.
    limit = torch.iinfo(offset.dtype).max
    if left is not None:
        visible = visible & (offset >= -min(left, limit))
    if right is not None:
        visible = visible & (offset <= min(right, limit))
    return visible


def visibility_mask(seqlen_q: int, seqlen_k: int, *, causal: bool = False,
                    window: tuple[int | None, int | None] | None = None,
                    align: str = "top_left", key_counts: torch.Tensor | None = None,
                    device: torch.device | None = None) -> torch.Tensor:
    """Boolean (Lq, Lk) mask, True where query i may attend to key j.

    With d_i from :func:`query_diagonals`: ``causal`` keeps j <= d_i; ``window=(left, right)``
    keeps d_i - left <= j <= d_i + right (a None side is unbounded). Both apply together
    (:func:`visible_keys`).

    Args:
        key_counts: integer (B,) tensor: row b holds only its first key_counts[b] of the Lk
            keys (a KV cache's filled part) and places its diagonals from that count. The mask
            is then (B, Lq, Lk), on the counts' device.
    """
    if key_counts is None:
        diagonals = query_diagonals(seqlen_q, seqlen_k, align, device)
        return visible_keys(diagonals, torch.arange(seqlen_k, device=device), causal=causal,
                            window=window)
    keys = torch.arange(seqlen_k, device=key_counts.device)
    diagonals = query_diagonals(seqlen_q, key_counts, align, key_counts.device)
    return (visible_keys(diagonals, keys, causal=causal, window=window)
            & (keys < key_counts[:, None, None]))


def causal_mask(seqlen_q: int, seqlen_k: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (Lq, Lk) mask, True where a query may attend: top-left aligned, SDPA's rule."""
    return visibility_mask(seqlen_q, seqlen_k, causal=True, device=device)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    keep_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype | None = None,
    window: tuple[int | None, int | None] | None = None,
    align: str = "top_left",
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention written out step by step: scores, soft-cap, ALiBi, masks, softmax with sinks,
    dropout, weighted values.

    The score of query i and key j, in the compute dtype, in this order:
    ``s = scale * q_i . k_j``; ``s = softcap * tanh(s / softcap)``;
    ``s += -slope * |j - d_i|``; ``s += attn_mask`` (float); ``s = -inf`` where key j is not
    visible (bool ``attn_mask`` False, ``causal``, ``window``). Then
    ``p_ij = exp(s_ij) / (exp(sink) + sum_j exp(s_ij))``, dropout, ``out = p @ v``.
    d_i is query i's diagonal: i (``align="top_left"``) or i + Lk - Lq (``"bottom_right"``).

    Args:
        q: (B, Hq, Lq, D) queries.
        k: (B, Hkv, Lk, D) keys; Hq must be a multiple of Hkv (grouped-query attention,
            each key/value head serves Hq // Hkv consecutive query heads).
        v: (B, Hkv, Lk, Dv) values.
        causal: mask keys after the query's diagonal (row i sees keys j <= d_i; top-left
            aligned by default, SDPA's rule).
        attn_mask: broadcastable to (B, Hq, Lq, Lk); bool means "True takes part", a float
            mask (-inf allowed) is added to the scores in the compute dtype. With ``causal``
            both apply.
        scale: multiplies the scores, any real number; default 1/sqrt(D) (for D = 0 every
            score is 0).
        dropout_p: drop probability on the attention weights, survivors scaled by 1/(1-p).
            Draws its mask as ``torch.nn.functional.dropout`` does (so ``nn.Dropout`` code
            reproduces under the same seed) unless ``keep_mask`` is given.
        keep_mask: bool, broadcastable to (B, Hq, Lq, Lk), True where a weight survives; used
            with ``dropout_p`` for the 1/(1-p) rescale.
        generator: random generator for the dropout mask when ``keep_mask`` is None.
        return_lse: also return the natural-log log-sum-exp of the final scores (with sinks,
            log(exp(sink) + sum_j exp(s_ij))).
        compute_dtype: dtype to compute in (e.g. torch.float64); default the input dtype.
        window: ``(left, right)``: query i sees keys d_i - left <= j <= d_i + right; a None
            side is unbounded. With ``causal`` both apply.
        align: ``"top_left"`` or ``"bottom_right"``, where the diagonal d_i sits for
            ``causal``, ``window`` and ALiBi.
        softcap: c > 0 caps the scores smoothly to (-c, c) as ``c * tanh(s / c)`` (Gemma 2).
        alibi_slopes: float32, (Hq,) or (B, Hq): ALiBi's linear distance penalty.
        sinks: (Hq,), float32 or the query dtype: one logit per head, in the units of the
            scores, whose exp joins every softmax denominator (gpt-oss). Differentiable.
            When the computation runs in float64 (``compute_dtype`` or float64 inputs),
            ``alibi_slopes`` and ``sinks`` may have any floating dtype, so tests can pass
            float64 copies.

    Returns:
        out (B, Hq, Lq, Dv) in ``compute_dtype`` (or the input dtype), and with ``return_lse``
        the LSE (B, Hq, Lq) in float32 or ``compute_dtype`` if wider. A row that sees no key
        gives zeros, and an LSE of -inf (no sinks) or of its sink.

    Raises:
        ValueError: on bad shapes, ``dropout_p``, ``window``, ``align``, ``softcap``,
            ``alibi_slopes``, ``sinks`` or ``attn_mask``, naming the argument.
    """
    check_attention_inputs(q, k, v, same_dtype=False)
    wide = _in_float64(q, compute_dtype)
    if wide:  # checked against float64 queries, a float64 mask passes too
        q = q.to(torch.float64)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(compute_dtype or q.dtype)  # it is added in the compute dtype
    mods = score_mods(q, k.shape[2], scale=scale, causal=causal, dropout_p=dropout_p,
                      window=window, align=align, softcap=softcap, alibi_slopes=alibi_slopes,
                      sinks=sinks, attn_mask=attn_mask, fused=False, any_float_dtype=wide,
                      allow_grad=True)
    return attention_from_mods(q, k, v, mods, keep_mask=keep_mask, generator=generator,
                               return_lse=return_lse, compute_dtype=compute_dtype)


def attention_from_mods(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mods: ScoreMods,
    *,
    keep_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The eager math of :func:`scaled_dot_product_attention` on checked inputs, its score
    options given as one ``ScoreMods`` (from ``attention_ops.options.score_mods``).

    Args:
        q: (B, Hq, Lq, D); k: (B, Hkv, Lk, D); v: (B, Hkv, Lk, Dv), Hkv dividing Hq, as
            ``check_attention_inputs`` passes them.
        mods: scale, causal, window and alignment, softcap, ALiBi slopes (Hq,) or (B, Hq),
            sinks (Hq,), ``attn_mask`` broadcastable to (B, Hq, Lq, Lk), ``dropout_p``.
        keep_mask, generator, return_lse, compute_dtype: as in
            :func:`scaled_dot_product_attention`.

    Returns:
        out (B, Hq, Lq, Dv) [, lse (B, Hq, Lq)], as :func:`scaled_dot_product_attention`.
    """
    if compute_dtype is not None:
        q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    batch, heads, seqlen_q, seqlen_k = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    group = heads // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)

    scores = (q @ k.transpose(-2, -1)) * mods.scale
    if mods.softcap is not None:
        scores = mods.softcap * torch.tanh(scores / mods.softcap)
    if mods.alibi_slopes is not None:
        slopes = mods.alibi_slopes.to(scores.dtype).expand(batch, heads)[:, :, None, None]
        diagonal = query_diagonals(seqlen_q, seqlen_k, mods.align, device=q.device)
        distance = (torch.arange(seqlen_k, device=q.device)[None, :] - diagonal).abs()
        scores = scores - slopes * distance.to(scores.dtype)
    attn_mask = mods.attn_mask
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        scores = scores + attn_mask.to(scores.dtype)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    if mods.causal or mods.window is not None:
        visible = visibility_mask(seqlen_q, seqlen_k, causal=mods.causal, window=mods.window,
                                  align=mods.align, device=q.device)
        scores = scores.masked_fill(~visible, float("-inf"))

    # Sinks join the softmax as one extra key column per head that no value follows.
    if mods.sinks is not None:
        sink_column = mods.sinks.to(scores.dtype)[None, :, None, None].expand(
            batch, heads, seqlen_q, 1)
        scores = torch.cat([scores, sink_column], dim=-1)
    # Safe softmax: a row with every key masked (and no sink) gives zero weights instead of
    # NaN. Its scores are zeroed before the softmax too, so no NaN reaches the gradients.
    fully_masked = torch.isneginf(scores).all(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(fully_masked, 0.0), dim=-1)
    weights = weights.masked_fill(fully_masked, 0.0)[..., :seqlen_k]
    if keep_mask is not None:
        weights = _apply_keep_mask(weights, keep_mask, mods.dropout_p)
    elif mods.dropout_p > 0.0:
        weights = _dropout(weights, mods.dropout_p, generator)
    out = weights @ v
    if not return_lse:
        return out
    lse = torch.logsumexp(scores, dim=-1)
    return out, lse.to(torch.promote_types(lse.dtype, torch.float32))


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    causal: bool = False,
    align: str = "top_left",
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    keep_mask: torch.Tensor | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The reference of ``attention_ops.flash_attention_varlen``: each packed sequence through
    :func:`scaled_dot_product_attention`'s math on its own, packed back.

    Sequence n's queries q[cu_seqlens_q[n]:cu_seqlens_q[n+1]] attend only to its keys
    k[cu_seqlens_k[n]:cu_seqlens_k[n+1]]; ``causal``, ``window`` and ALiBi place the
    diagonal by ``align`` from that sequence's own lengths. Reads the cumulative lengths on
    the host.

    Args:
        q: (Tq, Hq, D); k: (Tk, Hkv, D); v: (Tk, Hkv, Dv), Hkv dividing Hq, one dtype.
        cu_seqlens_q, cu_seqlens_k: int32 (N + 1,) cumulative lengths from 0, on q's device.
        causal, align, window, softcap, sinks, scale, compute_dtype: as in
            :func:`scaled_dot_product_attention`.
        alibi_slopes: (Hq,), (N, Hq) with row n for sequence n, or (1, Hq).
        dropout_p: drop probability on the attention weights.
        keep_mask: bool, broadcastable to (1, Hq, Tq, K) with K the longest key sequence:
            query token t keeps its weight for key j of its own sequence (j counted from the
            sequence's first key) where keep_mask[..., t, j], as ``flash_attention_varlen``'s
            dropout draws it (``attention_ops.dropout_keep_mask`` of a (1, Hq, Tq, Tk)
            problem). None with ``dropout_p`` draws with ``torch.nn.functional.dropout``.
        return_lse: also return the natural-log LSE.

    Returns:
        out (Tq, Hq, Dv) in ``compute_dtype`` (or the input dtype); with ``return_lse`` also
        lse (Hq, Tq). Queries of a sequence without keys give zeros.

    Raises:
        ValueError: on bad shapes, cumulative lengths or score options, naming the argument.
    """
    check_packed_inputs(q, k, v)
    check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, q, k, check_values=True)
    sequences = cu_seqlens_q.shape[0] - 1
    mods = score_mods(_heads_first(q), k.shape[0], scale=scale, causal=causal,
                      dropout_p=dropout_p, window=window, align=align, softcap=softcap,
                      alibi_slopes=alibi_slopes, sinks=sinks, sequences=sequences, fused=False,
                      any_float_dtype=_in_float64(q, compute_dtype), allow_grad=True)
    slopes = None if alibi_slopes is None else alibi_slopes.expand(sequences, -1)
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for n in range(sequences):
        rows, cols = slice(cu_q[n], cu_q[n + 1]), slice(cu_k[n], cu_k[n + 1])
        keep = None if keep_mask is None else keep_mask[..., rows, :cols.stop - cols.start]
        own = mods if slopes is None else mods.replace(alibi_slopes=slopes[n])
        out, lse = attention_from_mods(
            _heads_first(q[rows]), _heads_first(k[cols]), _heads_first(v[cols]), own,
            keep_mask=keep, return_lse=True, compute_dtype=compute_dtype)
        outs.append(out[0].transpose(0, 1))
        lses.append(lse[0])
    out = torch.cat(outs)
    return (out, torch.cat(lses, dim=1)) if return_lse else out


def kvcache_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    block_table: torch.Tensor | None = None,
    causal: bool = True,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The reference of ``attention_ops.flash_attention_with_kvcache``: each batch row's
    queries against that row's valid cached keys, through
    :func:`scaled_dot_product_attention`'s math.

    The queries are the last Lq positions of their row: query i of row b sits at position
    cache_seqlens[b] - Lq + i, so ``causal``, ``window`` and ALiBi are bottom-right aligned
    to the row's own keys. Reads the lengths (and the block table) on the host.

    Args:
        q: (B, Hq, Lq, D).
        k_cache: (B, Hkv, Lmax, D), or with ``block_table`` (num_blocks, Hkv, block_size, D);
            Hkv dividing Hq.
        v_cache: (B, Hkv, Lmax, Dv), or (num_blocks, Hkv, block_size, Dv).
        cache_seqlens: integer (B,), the valid keys of each row, at most the capacity (Lmax,
            or max_blocks * block_size).
        block_table: integer (B, max_blocks): key t of row b lives in block
            block_table[b, t // block_size] at row t % block_size.
        causal, window, softcap, sinks, scale, compute_dtype: as in
            :func:`scaled_dot_product_attention` (``causal`` defaults to True: the cache holds
            the queries' own keys).
        alibi_slopes: (Hq,) or (B, Hq).
        return_lse: also return the natural-log LSE (B, Hq, Lq).

    Returns:
        out (B, Hq, Lq, Dv) in ``compute_dtype`` (or the input dtype); with ``return_lse`` also
        lse. A row that sees no key (0 cached keys) gives zeros.

    Raises:
        ValueError: on bad shapes, cache lengths or score options, naming the argument.
    """
    if block_table is None:  # a contiguous cache lines up with q as a dense call's keys
        check_attention_inputs(q, k_cache, v_cache, same_dtype=False)
    lengths = cache_seqlens.tolist()
    capacity = cache_capacity(k_cache, block_table)
    if len(lengths) != q.shape[0] or any(not 0 <= n <= capacity for n in lengths):
        raise ValueError(f"cache_seqlens must hold {q.shape[0]} lengths in [0, {capacity}] "
                         f"(the cache's capacity), got {lengths}")
    mods = score_mods(q, capacity, scale=scale, causal=causal, window=window,
                      align="bottom_right", softcap=softcap, alibi_slopes=alibi_slopes,
                      sinks=sinks, fused=False, any_float_dtype=_in_float64(q, compute_dtype),
                      allow_grad=True)
    slopes = None if alibi_slopes is None else alibi_slopes.expand(q.shape[0], -1)
    outs, lses = [], []
    for b, n in enumerate(lengths):
        row_q = q[b:b + 1]
        row_k, row_v = (_cached_keys(cache, b, n, block_table) for cache in (k_cache, v_cache))
        check_attention_inputs(row_q, row_k, row_v, same_dtype=False)  # paged: once gathered
        own = mods if slopes is None else mods.replace(alibi_slopes=slopes[b])
        out, lse = attention_from_mods(row_q, row_k, row_v, own, return_lse=True,
                                       compute_dtype=compute_dtype)
        outs.append(out)
        lses.append(lse)
    out = torch.cat(outs)
    return (out, torch.cat(lses)) if return_lse else out


def _in_float64(q: torch.Tensor, compute_dtype: torch.dtype | None) -> bool:
    """Whether the math runs in float64: its checks then take slopes and sinks of any float
    dtype (tests pass float64 copies)."""
    return (compute_dtype or q.dtype) == torch.float64


def _heads_first(t: torch.Tensor) -> torch.Tensor:
    """Packed (T, H, D) as a (1, H, T, D) view."""
    return t.transpose(0, 1).unsqueeze(0)


def _cached_keys(cache: torch.Tensor, row: int, length: int,
                 block_table: torch.Tensor | None) -> torch.Tensor:
    """The first ``length`` cached positions of batch row ``row`` as (1, Hkv, length, D|Dv),
    read through the block table of a paged cache."""
    if block_table is None:
        return cache[row:row + 1, :, :length]
    block_size = cache.shape[2]
    used = (length + block_size - 1) // block_size
    blocks = cache[block_table[row, :used].long()]  # (used, Hkv, block_size, D)
    return blocks.transpose(0, 1).flatten(1, 2)[None, :, :length]


def _dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout; with no generator, exactly ``F.dropout`` (the teaching text's RNG use)."""
    if generator is None:
        return F.dropout(x, p, training=True)
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return _apply_keep_mask(x, keep, p)


def _apply_keep_mask(x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """Zero the dropped entries and scale the survivors by 1/(1-p); p = 1 drops everything."""
    return x * keep / (1.0 - p) if p < 1.0 else x * 0.0
