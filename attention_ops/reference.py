"""Eager PyTorch attention: the numerical reference for every kernel, test and benchmark.

Plain, readable math in the spirit of the teaching text. Nothing here imports the Triton
kernels. Tests run these functions in float64 (``compute_dtype=torch.float64``) to get the
ground truth the fused kernels are measured against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attention_ops.validation import (
    check_alibi_slopes,
    check_align,
    check_attention_inputs,
    check_dropout_p,
    check_sinks,
    check_softcap,
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


def query_diagonals(seqlen_q: int, seqlen_k: int, align: str = "top_left",
                    device: torch.device | None = None) -> torch.Tensor:
    """Each query's diagonal key position d_i as an int64 (Lq, 1) column: i for
    ``"top_left"``, i + Lk - Lq for ``"bottom_right"`` (may be negative or past Lk - 1)."""
    align = check_align(align)
    shift = seqlen_k - seqlen_q if align == "bottom_right" else 0
    return torch.arange(seqlen_q, device=device)[:, None] + shift


def visibility_mask(seqlen_q: int, seqlen_k: int, *, causal: bool = False,
                    window: tuple[int | None, int | None] | None = None,
                    align: str = "top_left",
                    device: torch.device | None = None) -> torch.Tensor:
    """Boolean (Lq, Lk) mask, True where query i may attend to key j.

    With d_i from :func:`query_diagonals`: ``causal`` keeps j <= d_i; ``window=(left, right)``
    keeps d_i - left <= j <= d_i + right (a None side is unbounded). Both apply together.
    """
    window = check_window(window)
    d = query_diagonals(seqlen_q, seqlen_k, align, device)
    j = torch.arange(seqlen_k, device=device)[None, :]
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if causal:
        visible &= j <= d
    if window is not None:
        # |j - d_i| < Lq + Lk: a longer side changes nothing, and d_i + side must fit int64
        left, right = (None if side is None else min(side, seqlen_q + seqlen_k)
                       for side in window)
        if left is not None:
            visible &= j >= d - left
        if right is not None:
            visible &= j <= d + right
    return visible


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
            mask (-inf allowed) is added to the scores. With ``causal`` both apply.
        scale: multiplies the scores; default 1/sqrt(D) (for D = 0 every score is 0).
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
            ``alibi_slopes`` or ``sinks``, naming the argument.
    """
    check_attention_inputs(q, k, v, same_dtype=False)
    check_dropout_p(dropout_p)
    window = check_window(window)
    align = check_align(align)
    softcap = check_softcap(softcap)
    wide = (compute_dtype or q.dtype) == torch.float64
    check_alibi_slopes(alibi_slopes, q, any_float_dtype=wide, allow_grad=True)
    check_sinks(sinks, q, any_float_dtype=wide)
    if compute_dtype is not None:
        q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    batch, heads, seqlen_q, seqlen_k = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    group = heads // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    if scale is None:  # an empty dot product is 0 under any finite scale
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0

    scores = (q @ k.transpose(-2, -1)) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(scores.dtype).expand(batch, heads)[:, :, None, None]
        diagonal = query_diagonals(seqlen_q, seqlen_k, align, device=q.device)
        distance = (torch.arange(seqlen_k, device=q.device)[None, :] - diagonal).abs()
        scores = scores - slopes * distance.to(scores.dtype)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        scores = scores + attn_mask.to(scores.dtype)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    if causal or window is not None:
        visible = visibility_mask(seqlen_q, seqlen_k, causal=causal, window=window,
                                  align=align, device=q.device)
        scores = scores.masked_fill(~visible, float("-inf"))

    # Sinks join the softmax as one extra key column per head that no value follows.
    if sinks is not None:
        sink_column = sinks.to(scores.dtype)[None, :, None, None].expand(
            batch, heads, seqlen_q, 1)
        scores = torch.cat([scores, sink_column], dim=-1)
    # Safe softmax: a row with every key masked (and no sink) gives zero weights instead of
    # NaN. Its scores are zeroed before the softmax too, so no NaN reaches the gradients.
    fully_masked = torch.isneginf(scores).all(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(fully_masked, 0.0), dim=-1)
    weights = weights.masked_fill(fully_masked, 0.0)[..., :seqlen_k]
    if keep_mask is not None:
        weights = _apply_keep_mask(weights, keep_mask, dropout_p)
    elif dropout_p > 0.0:
        weights = _dropout(weights, dropout_p, generator)
    out = weights @ v
    if not return_lse:
        return out
    lse = torch.logsumexp(scores, dim=-1)
    return out, lse.to(torch.promote_types(lse.dtype, torch.float32))


def _dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout; with no generator, exactly ``F.dropout`` (the teaching text's RNG use)."""
    if generator is None:
        return F.dropout(x, p, training=True)
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return _apply_keep_mask(x, keep, p)


def _apply_keep_mask(x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """Zero the dropped entries and scale the survivors by 1/(1-p); p = 1 drops everything."""
    return x * keep / (1.0 - p) if p < 1.0 else x * 0.0
