"""Every input check of the public API, in one place.

Checks raise ValueError with a message that names the offending argument, before any kernel
launches. ``fused_path_problem`` says why valid inputs cannot run on the fused kernel (the
callers decide whether that is an error or a reason to run the eager math).
"""

from __future__ import annotations

import math
import numbers

import torch

from attention_ops.kernels import interpreter_requested_too_late, is_interpreter

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, same_dtype: bool = True
) -> None:
    """Check q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) for attention."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, seqlen, head_dim), got shape {_shape(t)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if same_dtype and not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(
            f"batch sizes differ: q {_shape(q)}, k {_shape(k)}, v {_shape(v)}"
        )
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"k and v must have the same heads and seqlen, got k {_shape(k)}, v {_shape(v)}"
        )
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k head dims differ: q {_shape(q)}, k {_shape(k)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})"
        )


def check_sdpa_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      enable_gqa: bool) -> None:
    """The input errors torch's SDPA raises for (..., L, E) tensors, as ValueErrors."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < (3 if enable_gqa else 2):
            raise ValueError(f"{name} must be at least {3 if enable_gqa else 2}-D "
                             f"(..., {'heads, ' if enable_gqa else ''}seqlen, dim), "
                             f"got shape {_shape(t)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not query.dtype == key.dtype == value.dtype:
        raise ValueError(f"query, key, value must share a dtype, got {query.dtype}, "
                         f"{key.dtype}, {value.dtype}")
    if not query.device == key.device == value.device:
        raise ValueError(f"query, key, value must be on one device, got {query.device}, "
                         f"{key.device}, {value.device}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key embedding dims differ: {_shape(query)}, {_shape(key)}")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"key and value sequence lengths differ: {_shape(key)}, "
                         f"{_shape(value)}")


def check_dropout_p(dropout_p: float) -> float:
    """``dropout_p`` as a float in [0, 1]."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise ValueError(f"dropout_p must be a number in [0, 1], got {type(dropout_p).__name__} "
                         f"{dropout_p!r}")
    if not 0.0 <= dropout_p <= 1.0:  # NaN fails too
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    return float(dropout_p)


def check_scale(scale: float | None, head_dim: int) -> float:
    """The score scale as a finite positive float: ``scale``, or 1/sqrt(head_dim) for None."""
    if scale is None:
        if head_dim == 0:
            raise ValueError("head_dim is 0: the default scale 1/sqrt(head_dim) is undefined")
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise ValueError(f"scale must be a positive float or None, got {type(scale).__name__} "
                         f"{scale!r}")
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite positive float or None, got {scale}")
    return float(scale)


def check_mask(attn_mask: torch.Tensor, query: torch.Tensor, scores_shape: tuple[int, ...],
               *, allow_float: bool) -> None:
    """``attn_mask`` is a tensor on the query's device that broadcasts to ``scores_shape``:
    bool, or (``allow_float``) float32 or the query dtype, added to the scores."""
    if not isinstance(attn_mask, torch.Tensor):
        raise ValueError(f"attn_mask must be a torch.Tensor or None, got "
                         f"{type(attn_mask).__name__}")
    allowed = (torch.bool, torch.float32, query.dtype) if allow_float else (torch.bool,)
    if attn_mask.dtype not in allowed:
        raise ValueError(f"attn_mask must be {' or '.join(map(str, dict.fromkeys(allowed)))}, "
                         f"got {attn_mask.dtype}")
    if attn_mask.device != query.device:
        raise ValueError(f"attn_mask is on {attn_mask.device}, the queries on {query.device}")
    try:
        fits = torch.broadcast_shapes(attn_mask.shape, scores_shape) == scores_shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"attn_mask of shape {_shape(attn_mask)} does not broadcast to the "
                         f"attention weights' shape {scores_shape}")


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
    if q.shape[-1] == 0:
        return "head_dim 0"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head_dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if v.shape[-1] != q.shape[-1]:
        return f"value head_dim {v.shape[-1]} differs from query head_dim {q.shape[-1]}"
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        return "float attn_mask (the fused kernel takes bool masks)"
    if scale is not None and not (scale > 0.0 and math.isfinite(scale)):
        return f"scale {scale} (the fused kernel takes a finite positive scale)"
    return None
