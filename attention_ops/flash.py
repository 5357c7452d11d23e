"""``flash_attention``: the fused Triton kernels behind one autograd.Function."""

from __future__ import annotations

from typing import NamedTuple

import torch

from attention_ops import ops
from attention_ops.dropout import draw_dropout_seed
from attention_ops.fused_path import fused_path_problem
from attention_ops.kernels import LN2
from attention_ops.validation import (
    check_alibi_slopes,
    check_align,
    check_attention_inputs,
    check_dropout_p,
    check_mask,
    check_scale,
    check_sinks,
    check_softcap,
    check_window,
)


def expand_mask(attn_mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """A checked mask viewed as (B, Hq, Lq, Lk), zero strides where it broadcasts."""
    return attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


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


class FlashAttentionFunction(torch.autograd.Function):
    """Fused attention with a fused backward, on inputs already checked (``fused_attention``).
    Its LSE output is base 2. The score options travel as ``ScoreOptions``."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, attn_mask, alibi_slopes, options, seed):
        out, lse = ops.flash_attention_fwd(q, k, v, seed, attn_mask, alibi_slopes, sinks,
                                           *options)
        ctx.save_for_backward(q, k, v, out, lse, seed, attn_mask, alibi_slopes, sinks)
        ctx.options = options
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, seed, attn_mask, alibi_slopes, sinks = ctx.saved_tensors
        dq, dk, dv, dsinks = ops.flash_attention_bwd(dout, q, k, v, out, lse, seed, attn_mask,
                                                     alibi_slopes, sinks, *ctx.options)
        dsinks = None if sinks is None else dsinks.to(sinks.dtype)
        return dq, dk, dv, dsinks, None, None, None, None


class ScoreOptions(NamedTuple):
    """The scalar arguments of the custom ops, in their order."""

    scale: float
    causal: bool
    dropout_p: float
    window_left: int | None
    window_right: int | None
    bottom_right: bool
    softcap: float | None


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
    dropout_p = check_dropout_p(dropout_p)
    scale = check_scale(scale, q.shape[-1])
    if attn_mask is not None:
        check_mask(attn_mask, q, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]),
                   allow_float=True)
    window, align, softcap = check_window(window), check_align(align), check_softcap(softcap)
    check_alibi_slopes(alibi_slopes, q)
    check_sinks(sinks, q)
    problem = fused_path_problem(q, k, v, attn_mask)
    if problem is not None:
        raise ValueError(f"flash_attention cannot run on these inputs: {problem}")
    return fused_attention(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale,
                           return_lse=return_lse, generator=generator, attn_mask=attn_mask,
                           window=window, align=align, softcap=softcap,
                           alibi_slopes=alibi_slopes, sinks=sinks)


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    dropout_p: float,
    scale: float,
    return_lse: bool = False,
    generator: torch.Generator | None = None,
    attn_mask: torch.Tensor | None = None,
    window: tuple[int | None, int | None] | None = None,
    align: str = "top_left",
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``flash_attention`` on inputs its checks (``attention_ops.validation``) have passed,
    with a float dropout_p and scale and a checked window: the entry the other public
    functions call after checking."""
    if attn_mask is not None:
        attn_mask = expand_mask(attn_mask, q, k)
    window_left, window_right = window if window is not None else (None, None)
    options = ScoreOptions(scale, bool(causal), dropout_p, window_left, window_right,
                           align == "bottom_right", softcap)
    seed = draw_dropout_seed(q.device, generator) if dropout_p > 0.0 else None
    q, k, v = distinct_tensors(q, k, v)
    out, lse = FlashAttentionFunction.apply(q, k, v, sinks, attn_mask, alibi_slopes, options,
                                            seed)
    return (out, lse * LN2) if return_lse else out
