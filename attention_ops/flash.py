"""``flash_attention``: the fused Triton kernels behind one autograd.Function, which packed
sequences (``flash_attention_varlen``) share."""

from __future__ import annotations

import dataclasses

import torch

from attention_ops import ops
from attention_ops.dropout import draw_dropout_seed
from attention_ops.fused_path import require_fused_path
from attention_ops.kernels import PackedSequences
from attention_ops.options import ScoreMods, score_mods
from attention_ops.validation import check_attention_inputs

# Where the tensor options sit among ScoreMods' fields: saved for the backward, not on ctx.
_FIELDS = [f.name for f in dataclasses.fields(ScoreMods)]
_TENSOR_FIELDS = tuple(_FIELDS.index(name) for name in ("attn_mask", "alibi_slopes", "sinks"))
_SINKS_FIELD = _FIELDS.index("sinks")


def distinct_tensors(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as distinct tensor objects (views where they were one tensor, as in x, x, x
    self-attention): torch.compile (torch 2.13) cannot trace autograd.Function.apply with one
    tensor passed as two inputs."""
    if k is q:
        k = k.view_as(k)
    if v is q or v is k:
        v = v.view_as(v)
    return q, k, v


class AttentionFunction(torch.autograd.Function):
    """Fused attention with a fused backward, dense or packed (cu_seqlens given), on checked
    inputs (``fused_attention``). Its inputs are ``ops.attention_fwd``'s; it returns the
    output and the natural-log LSE (not differentiable). Sinks get their gradient."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen, seed, *fields):
        out, lse = ops.attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen, seed,
                                     *fields)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seed,
                              *(fields[i] for i in _TENSOR_FIELDS))
        ctx.max_seqlen = max_seqlen
        ctx.scalar_fields = tuple(None if i in _TENSOR_FIELDS else f
                                  for i, f in enumerate(fields))
        natural = ops.natural_lse(lse)
        ctx.mark_non_differentiable(natural)
        return out, natural

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seed, *tensor_fields = ctx.saved_tensors
        fields = list(ctx.scalar_fields)
        for i, t in zip(_TENSOR_FIELDS, tensor_fields, strict=True):
            fields[i] = t
        dq, dk, dv, dsinks = ops.attention_bwd(dout, q, k, v, out, lse, cu_seqlens_q,
                                               cu_seqlens_k, ctx.max_seqlen, seed, *fields)
        sinks = fields[_SINKS_FIELD]
        field_grads = [None] * len(fields)
        field_grads[_SINKS_FIELD] = None if sinks is None else dsinks.to(sinks.dtype)
        return dq, dk, dv, None, None, None, None, *field_grads


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    return_lse: bool = False,
    generator: torch.Generator | None = None,
    attn_mask: torch.Tensor | None = None,
    window: tuple[int | None, int | None] | None = None,
    align: str = "top_left",
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fused scaled dot-product attention, forward and backward in Triton.

    The score of query i and key j, in float32 and in this order: s = scale * q_i . k_j;
    ``softcap`` c: s = c * tanh(s / c); ``alibi_slopes``: s -= slope * |j - d_i|; a float
    ``attn_mask`` is added; s = -inf where the key is hidden (a bool ``attn_mask`` False,
    ``causal``: j > d_i, ``window``: outside d_i - left <= j <= d_i + right); softmax, with
    ``sinks`` adding exp(sink_h) to each row's denominator; dropout; @ v. The diagonal d_i is
    i (``align="top_left"``, SDPA's rule) or i + Lk - Lq (``"bottom_right"``, FlashAttention's,
    what a KV cache needs).

    Args:
        q: (B, Hq, Lq, D) queries, any strides (e.g. a (B, L, H, D) projection viewed with
            ``.transpose(1, 2)`` runs without a copy). float16, bfloat16 or float32;
            1 <= D <= 256.
        k: (B, Hkv, Lk, D) keys; Hq must be a multiple of Hkv (grouped-query attention).
        v: (B, Hkv, Lk, Dv) values; Dv may differ from D (1 <= Dv <= 256).
        causal: query i attends to keys j <= d_i.
        dropout_p: drop probability on the attention weights, survivors scaled by 1/(1-p).
            Dropout acts whenever p > 0 (pass 0.0 in eval). The drop decision compares
            16-bit random numbers, so a weight is dropped with probability p rounded to a
            multiple of 2**-16; the survivors' scale uses the exact p.
        scale: multiplies the scores, a finite positive float; default 1/sqrt(D).
        return_lse: also return the natural log of each row's softmax denominator.
        generator: random generator for the dropout seed (default: the device's).
        attn_mask: broadcastable to (B, Hq, Lq, Lk), read in place through zero strides:
            bool (True takes part, e.g. padding), or float32 / the input dtype, added to the
            scores (-inf allowed; no gradient flows to it, so it must not require grad).
        window: (left, right) sliding window around the diagonal, each side an int >= 0 or
            None (unbounded); a windowed row costs O(left + right), not O(Lk).
        align: "top_left" or "bottom_right", where the diagonal sits when Lq != Lk.
        softcap: c > 0, Gemma 2's logit soft-capping.
        alibi_slopes: float32 (Hq,) or (B, Hq) ALiBi slopes, any strides; no gradient flows
            to them, so they must not require grad (while grad mode is on).
        sinks: (Hq,) float32 or input-dtype logits, one per query head (gpt-oss); they get
            their gradient.

    Returns:
        out (B, Hq, Lq, Dv), a fresh contiguous tensor in the input dtype (zeros for a row
        with nothing visible); with ``return_lse`` also lse (B, Hq, Lq) float32, natural log of
        exp(sink) + sum_j exp(s_ij) (not differentiable; -inf for a row with nothing visible
        and no sink).

    Raises:
        ValueError: on inconsistent shapes, devices or dtypes, Hq % Hkv != 0, a head dim of 0
            or > 256, a ``dropout_p`` that is not a number in [0, 1], a ``scale`` that is not
            finite and positive, an ``attn_mask`` that does not broadcast or is a float mask
            requiring grad, a negative window side, an unknown ``align``, a ``softcap`` that
            is not finite and positive, sinks or slopes of the wrong shape, dtype or device,
            slopes requiring grad, or tensors the kernel cannot run on (CPU tensors without
            ``TRITON_INTERPRET=1``, set before the import).

    Example:
        >>> q, k, v = (torch.randn(2, 8, 1024, 64, device="cuda", dtype=torch.bfloat16)
        ...            for _ in range(3))
        >>> out = flash_attention(q, k, v, causal=True, window=(255, 0))
    """
    check_attention_inputs(q, k, v)
    mods = score_mods(q, k.shape[2], scale=scale, causal=causal, dropout_p=dropout_p,
                      window=window, align=align, softcap=softcap, alibi_slopes=alibi_slopes,
                      sinks=sinks, attn_mask=attn_mask)
    require_fused_path("flash_attention", q, k, v, attn_mask)
    return fused_attention(q, k, v, mods, generator=generator, return_lse=return_lse)


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mods: ScoreMods,
    *,
    packing: PackedSequences | None = None,
    generator: torch.Generator | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The fused kernels on inputs the public functions have checked, with their checked
    ``mods``: dense q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), or packed
    (T, H, D) tensors cut by ``packing``. Returns out and, with ``return_lse``, the natural-log
    LSE ((B, Hq, Lq), or (Hq, Tq) packed)."""
    if mods.attn_mask is not None:  # read in place through zero strides
        mods = mods.replace(attn_mask=mods.attn_mask.expand(*q.shape[:3], k.shape[2]))
    if packing is not None and mods.alibi_slopes is not None:  # row n for sequence n
        mods = mods.replace(alibi_slopes=mods.alibi_slopes.expand(packing.count, -1))
    seed = draw_dropout_seed(q.device, generator) if mods.dropout_p > 0.0 else None
    packed = (None, None, None) if packing is None else (
        packing.cu_seqlens_q, packing.cu_seqlens_k, packing.max_seqlen)
    q, k, v = distinct_tensors(q, k, v)
    out, lse = AttentionFunction.apply(q, k, v, *packed, seed, *mods.fields())
    return (out, lse) if return_lse else out
