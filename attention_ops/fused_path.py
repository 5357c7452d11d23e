"""Why valid inputs cannot run on the fused kernels: ``fused_path_problem``.

The callers decide whether a problem is an error (``flash_attention``) or a reason to run the
eager math (the SDPA drop-in).
"""

from __future__ import annotations

import math

import torch

from attention_ops.kernels import interpreter_requested_too_late, is_interpreter

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def fused_path_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       attn_mask: torch.Tensor | None = None,
                       scale: float | None = None) -> str | None:
    """Why the fused kernel cannot run these valid 4-D inputs, or None if it can."""
    if q.device.type == "cpu" and interpreter_requested_too_late():
        return ("TRITON_INTERPRET=1 was set after attention_ops was imported: Triton reads it "
                "when the kernels are defined, so set it before the import")
    if q.device.type != "cuda" and not (q.device.type == "cpu" and is_interpreter()):
        return (f"tensors on {q.device.type}: the fused kernel needs CUDA tensors "
                "(or CPU tensors with TRITON_INTERPRET=1)")
    if q.dtype not in FUSED_DTYPES:
        return f"dtype {q.dtype} (the fused kernel takes float16, bfloat16, float32)"
    for name, dim in (("head_dim", q.shape[-1]), ("value head_dim", v.shape[-1])):
        if dim == 0:
            return f"{name} 0"
        if dim > MAX_HEAD_DIM:
            return f"{name} {dim} > {MAX_HEAD_DIM}"
    if attn_mask is not None and attn_mask.is_floating_point() and attn_mask.requires_grad:
        return "float attn_mask that requires grad (the fused kernels compute no mask gradient)"
    if scale is not None and not (scale > 0.0 and math.isfinite(scale)):
        return f"scale {scale} (the fused kernel takes a finite positive scale)"
    return None


def require_fused_path(function: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       attn_mask: torch.Tensor | None = None) -> None:
    """Raise ValueError naming ``function`` where the fused kernel cannot run."""
    problem = fused_path_problem(q, k, v, attn_mask)
    if problem is not None:
        raise ValueError(f"{function} cannot run on these inputs: {problem}")
