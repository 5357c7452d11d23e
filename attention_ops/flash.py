"""``flash_attention``: the fused Triton kernels behind one autograd.Function."""

from __future__ import annotations

import math

import torch

from attention_ops import ops
from attention_ops.dropout import draw_dropout_seed
from attention_ops.kernels import interpreter_requested_too_late, is_interpreter
from attention_ops.validation import check_attention_inputs, check_dropout_p, check_scale

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def fused_path_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the fused kernel cannot run these (already valid) inputs, or None if it can."""
    if q.device.type == "cpu" and interpreter_requested_too_late():
        return ("TRITON_INTERPRET=1 was set after attention_ops was imported: Triton reads it "
                "when the kernels are defined, so set it before the import")
    if q.device.type != "cuda" and not (q.device.type == "cpu" and is_interpreter()):
        return (f"tensors on {q.device.type}: the fused kernel needs CUDA tensors "
                "(or CPU tensors with TRITON_INTERPRET=1)")
    if q.dtype not in FUSED_DTYPES:
        return f"dtype {q.dtype} (the fused kernel takes float16, bfloat16, float32)"
    if not (q.dtype == k.dtype == v.dtype):
        return f"mixed dtypes {q.dtype}, {k.dtype}, {v.dtype}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head_dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if v.shape[-1] != q.shape[-1]:
        return f"value head_dim {v.shape[-1]} differs from query head_dim {q.shape[-1]}"
    return None


def expand_bool_mask(attn_mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     causal: bool) -> torch.Tensor:
    """Check a bool mask and view it as (B, Hq, Lq, Lk) with zero strides where it broadcasts."""
    if causal:
        raise ValueError("pass either causal=True or attn_mask, not both")
    if attn_mask.dtype != torch.bool:
        raise ValueError(f"flash_attention takes a bool attn_mask, got {attn_mask.dtype}")
    if attn_mask.device != q.device:
        raise ValueError(f"attn_mask is on {attn_mask.device}, q on {q.device}")
    shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    try:
        return attn_mask.expand(shape)
    except RuntimeError:
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                         f"(B, Hq, Lq, Lk) = {shape}") from None


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
    """Fused attention with a fused backward. Inputs are validated by ``flash_attention``."""

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
        scale: multiplies the scores; default 1/sqrt(D).
        return_lse: also return the log-sum-exp of the scaled, masked scores.
        generator: random generator for the dropout seed (default: the device's).
        attn_mask: optional bool mask broadcastable to (B, Hq, Lq, Lk), True where a key takes
            part (e.g. padding); read in place through zero strides, never expanded in
            memory. Not together with ``causal`` (fold the causal rule into the mask). A row
            with no key left gives zeros, as SDPA does.

    Returns:
        out (B, Hq, Lq, D), a fresh contiguous tensor in the input dtype; with ``return_lse``
        also lse (B, Hq, Lq) float32, natural log (not differentiable).

    Raises:
        ValueError: on inconsistent shapes, devices or dtypes, Hq % Hkv != 0, D > 256, a bad
            ``dropout_p``, ``scale`` or ``attn_mask``, or tensors the kernel cannot run on
            (CPU tensors without ``TRITON_INTERPRET=1``).

    Example:
        >>> q, k, v = (torch.randn(2, 8, 1024, 64, device="cuda", dtype=torch.bfloat16)
        ...            for _ in range(3))
        >>> out = flash_attention(q, k, v, causal=True)
    """
    check_attention_inputs(q, k, v)
    check_dropout_p(dropout_p)
    check_scale(scale)
    problem = fused_path_problem(q, k, v)
    if problem is not None:
        raise ValueError(f"flash_attention cannot run on these inputs: {problem}")
    if attn_mask is not None:
        attn_mask = expand_bool_mask(attn_mask, q, k, causal)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    seed = draw_dropout_seed(q.device, generator) if dropout_p > 0.0 else None
    out, lse = FlashAttentionFunction.apply(*_distinct(q, k, v), attn_mask, causal,
                                            float(dropout_p), scale, seed)
    return (out, lse) if return_lse else out
