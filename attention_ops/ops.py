"""The fused kernels as PyTorch custom ops, so torch.compile traces them without graph breaks.

Each op allocates fresh outputs and calls one launch helper from ``kernels``. The fake
(meta) implementations give torch.compile the output shapes without running anything.
Dropout's seed is an input tensor, drawn by the caller, so the ops stay pure functions.
"""

from __future__ import annotations

import torch

from attention_ops.kernels import attention_backward, attention_forward


@torch.library.custom_op("attention_ops::flash_attention_fwd", mutates_args=())
def flash_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seed: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    scale: float,
    causal: bool,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D), optional bool attn_mask expanded to
    (B, Hq, Lq, Lk) -> out (B, Hq, Lq, D), lse (B, Hq, Lq) fp32 base-2 log-sum-exp."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    if out.numel() > 0:
        attention_forward(q, k, v, out, lse, scale=scale, causal=causal, dropout_p=dropout_p,
                          seed=seed, attn_mask=attn_mask)
    return out, lse


@flash_attention_fwd.register_fake
def _(q, k, v, seed, attn_mask, scale, causal, dropout_p):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("attention_ops::flash_attention_bwd", mutates_args=())
def flash_attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    seed: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    scale: float,
    causal: bool,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) with the shapes of (q, k, v), from dO and the forward's results."""
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if dq.numel() > 0 and dk.numel() > 0:
        attention_backward(do, q, k, v, out, lse, dq, dk, dv, scale=scale, causal=causal,
                           dropout_p=dropout_p, seed=seed, attn_mask=attn_mask)
    else:  # an empty query or key side: every gradient is zero (or empty)
        dq.zero_(), dk.zero_(), dv.zero_()
    return dq, dk, dv


@flash_attention_bwd.register_fake
def _(do, q, k, v, out, lse, seed, attn_mask, scale, causal, dropout_p):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
