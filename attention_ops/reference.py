"""Eager PyTorch attention: the numerical reference for every kernel, test and benchmark.

Plain, readable math in the spirit of the teaching text. Nothing here imports the Triton
kernels. Tests run these functions in float64 (``compute_dtype=torch.float64``) to get the
ground truth the fused kernels are measured against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attention_ops.validation import check_attention_inputs, check_dropout_p


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


def causal_mask(seqlen_q: int, seqlen_k: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (Lq, Lk) mask, True where a query may attend: top-left aligned, SDPA's rule."""
    return torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device).tril()


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention written out step by step: scores, mask, softmax, dropout, weighted values.

    Args:
        q: (B, Hq, Lq, D) queries.
        k: (B, Hkv, Lk, D) keys; Hq must be a multiple of Hkv (grouped-query attention,
            each key/value head serves Hq // Hkv consecutive query heads).
        v: (B, Hkv, Lk, Dv) values.
        causal: mask keys after the query position, top-left aligned (row i sees keys <= i).
        attn_mask: broadcastable to (B, Hq, Lq, Lk); bool means "True takes part", a float
            mask is added to the scores. With ``causal`` both apply.
        scale: multiplies the scores; default 1/sqrt(D) (for D = 0 every score is 0).
        dropout_p: drop probability on the attention weights, survivors scaled by 1/(1-p).
            Draws its mask as ``torch.nn.functional.dropout`` does (so ``nn.Dropout`` code
            reproduces under the same seed) unless ``keep_mask`` is given.
        keep_mask: bool, broadcastable to (B, Hq, Lq, Lk), True where a weight survives; used
            with ``dropout_p`` for the 1/(1-p) rescale.
        generator: random generator for the dropout mask when ``keep_mask`` is None.
        return_lse: also return the natural-log log-sum-exp of the masked, scaled scores.
        compute_dtype: dtype to compute in (e.g. torch.float64); default the input dtype.

    Returns:
        out (B, Hq, Lq, Dv) in ``compute_dtype`` (or the input dtype), and with ``return_lse``
        the LSE (B, Hq, Lq) in float32 or ``compute_dtype`` if wider. A row whose keys are all
        masked gives zeros and an LSE of -inf.
    """
    check_attention_inputs(q, k, v, same_dtype=False)
    check_dropout_p(dropout_p)
    if compute_dtype is not None:
        q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    if scale is None:  # an empty dot product is 0 under any finite scale
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0

    scores = (q @ k.transpose(-2, -1)) * scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(scores.dtype)
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], device=q.device),
                                    float("-inf"))

    # Safe softmax: a row with every key masked gives zero weights instead of NaN. Its scores
    # are zeroed before the softmax too, so no NaN reaches the gradients either.
    fully_masked = torch.isneginf(scores).all(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(fully_masked, 0.0), dim=-1)
    weights = weights.masked_fill(fully_masked, 0.0)
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
