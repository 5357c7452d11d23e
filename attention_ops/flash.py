"""``flash_attention``: the fused Triton kernels behind one autograd.Function."""

from __future__ import annotations

import torch

from attention_ops import ops
from attention_ops.dropout import draw_dropout_seed
from attention_ops.kernels import LN2
from attention_ops.validation import (
    check_attention_inputs,
    check_dropout_p,
    check_mask,
    check_scale,
    fused_path_problem,
)


def expand_mask(attn_mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """A checked mask viewed as (B, Hq, Lq, Lk), zero strides where it broadcasts."""
    return attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def _distinct(
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
    Its LSE output is base 2."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, causal: bool, dropout_p: float, scale: float, seed):
        out, lse = ops.flash_attention_fwd(q, k, v, seed, attn_mask, scale, causal, dropout_p)
        ctx.save_for_backward(q, k, v, out, lse, seed, attn_mask)
        ctx.causal, ctx.dropout_p, ctx.scale = causal, dropout_p, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, seed, attn_mask = ctx.saved_tensors
        dq, dk, dv = ops.flash_attention_bwd(
            dout, q, k, v, out, lse, seed, attn_mask, ctx.scale, ctx.causal, ctx.dropout_p
        )
        return dq, dk, dv, None, None, None, None, None


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fused scaled dot-product attention, forward and backward in Triton.

    Args:
        q: (B, Hq, Lq, D) queries, any strides (e.g. a (B, L, H, D) projection viewed with
            ``.transpose(1, 2)`` runs without a copy). float16, bfloat16 or float32; D <= 256.
        k: (B, Hkv, Lk, D) keys; Hq must be a multiple of Hkv (grouped-query attention).
        v: (B, Hkv, Lk, D) values.
        causal: query i attends to keys j <= i (top-left aligned when Lq != Lk, as SDPA).
        dropout_p: drop probability on the attention weights, survivors scaled by 1/(1-p).
            Dropout acts whenever p > 0 (pass 0.0 in eval). The drop decision compares
            16-bit random numbers, so a weight is dropped with probability p rounded to a
            multiple of 2**-16; the survivors' scale uses the exact p.
        scale: multiplies the scores, a finite positive float; default 1/sqrt(D).
        return_lse: also return the log-sum-exp of the scaled, masked scores.
        generator: random generator for the dropout seed (default: the device's).
        attn_mask: optional bool mask broadcastable to (B, Hq, Lq, Lk), True where a key takes
            part (e.g. padding); read in place through zero strides, never expanded in
            memory. With ``causal`` both apply. A row with no key left gives zeros, as SDPA
            does.

    Returns:
        out (B, Hq, Lq, D), a fresh contiguous tensor in the input dtype; with ``return_lse``
        also lse (B, Hq, Lq) float32, natural log (not differentiable).

    Raises:
        ValueError: on inconsistent shapes, devices or dtypes, Hq % Hkv != 0, D = 0 or
            D > 256, a ``dropout_p`` that is not a number in [0, 1], a ``scale`` that is not
            finite and positive, an ``attn_mask`` that is not a broadcastable bool tensor, or
            tensors the kernel cannot run on (CPU tensors without ``TRITON_INTERPRET=1``, set
            before the import).

    Example:
        >>> q, k, v = (torch.randn(2, 8, 1024, 64, device="cuda", dtype=torch.bfloat16)
        ...            for _ in range(3))
        >>> out = flash_attention(q, k, v, causal=True)
    """
    check_attention_inputs(q, k, v)
    dropout_p = check_dropout_p(dropout_p)
    scale = check_scale(scale, q.shape[-1])
    if attn_mask is not None:
        check_mask(attn_mask, q, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]),
                   allow_float=False)
    problem = fused_path_problem(q, k, v)
    if problem is not None:
        raise ValueError(f"flash_attention cannot run on these inputs: {problem}")
    return fused_attention(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale,
                           return_lse=return_lse, generator=generator, attn_mask=attn_mask)


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``flash_attention`` on inputs its checks (``attention_ops.validation``) have passed, with
    a float dropout_p and scale: the entry the other public functions call after checking."""
    if attn_mask is not None:
        attn_mask = expand_mask(attn_mask, q, k)
    seed = draw_dropout_seed(q.device, generator) if dropout_p > 0.0 else None
    out, lse = FlashAttentionFunction.apply(*_distinct(q, k, v), attn_mask, causal, dropout_p,
                                            scale, seed)
    return (out, lse * LN2) if return_lse else out
