"""The teaching text's attention mechanisms as nn.Modules, each with an eager or fused backend.

Constructor arguments and parameter creation order follow the teaching text, so the values
it prints reproduce under the same seeds. ``backend`` picks the attention math:
"eager" (``attention_ops.reference``), "triton" (``attention_ops.flash_attention``), "sdpa"
(``torch.nn.functional.scaled_dot_product_attention``, for comparison), or "auto": for CUDA
inputs the fused kernel where it covers them (else the eager math, with a warning saying why,
as ``attention_ops.scaled_dot_product_attention`` does), the eager math otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attention_ops import reference
from attention_ops.flash import flash_attention
from attention_ops.sdpa import scaled_dot_product_attention

BACKENDS = ("auto", "eager", "triton", "sdpa")


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _check_input(x: torch.Tensor, d_in: int, ranks: tuple[int, ...], name: str) -> None:
    if x.dim() not in ranks:
        shapes = " or ".join({2: "(num_tokens, d_in)", 3: "(batch, num_tokens, d_in)"}[r]
                             for r in ranks)
        raise ValueError(f"{name} expects {shapes} input, got shape {tuple(x.shape)}")
    if x.shape[-1] != d_in:
        raise ValueError(f"{name} was built for d_in={d_in}, got input with last dim "
                         f"{x.shape[-1]}")


def _check_length(num_tokens: int, context_length: int, name: str) -> None:
    if num_tokens > context_length:
        raise ValueError(f"{name}: input has {num_tokens} tokens, more than context_length="
                         f"{context_length}")


def attend(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    backend: str,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) [dropout] V over (B, H, L, d) tensors with the chosen backend."""
    if backend == "triton":
        return flash_attention(queries, keys, values, causal=causal, dropout_p=dropout_p)
    if backend == "auto" and queries.is_cuda:  # fused, or eager with a warning saying why
        return scaled_dot_product_attention(queries, keys, values, dropout_p=dropout_p,
                                            is_causal=causal)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(queries, keys, values, dropout_p=dropout_p,
                                              is_causal=causal)
    return reference.scaled_dot_product_attention(
        queries, keys, values, causal=causal, dropout_p=dropout_p
    )


def _as_heads(x: torch.Tensor) -> torch.Tensor:
    """(L, d) or (B, L, d) -> (B, 1, L, d), a view."""
    return x.unsqueeze(0).unsqueeze(0) if x.dim() == 2 else x.unsqueeze(1)


class SelfAttentionV1(nn.Module):
    """Self-attention with trainable weight matrices held as raw parameters.

    Input (L, d_in) or (B, L, d_in); output (L, d_out) or (B, L, d_out).
    """

    def __init__(self, d_in: int, d_out: int, backend: str = "auto"):
        super().__init__()
        self.d_in, self.backend = d_in, _check_backend(backend)
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.d_in, (2, 3), type(self).__name__)
        keys = x @ self.W_key
        queries = x @ self.W_query
        values = x @ self.W_value
        context = attend(_as_heads(queries), _as_heads(keys), _as_heads(values),
                         backend=self.backend)
        return context.view(x.shape[:-1] + (values.shape[-1],))


class SelfAttentionV2(nn.Module):
    """Self-attention with nn.Linear projections (optionally biased).

    Input (L, d_in) or (B, L, d_in); output (L, d_out) or (B, L, d_out).
    """

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False, backend: str = "auto"):
        super().__init__()
        self.d_in, self.backend = d_in, _check_backend(backend)
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.d_in, (2, 3), type(self).__name__)
        keys = self.W_key(x)
        queries = self.W_query(x)
        values = self.W_value(x)
        context = attend(_as_heads(queries), _as_heads(keys), _as_heads(values),
                         backend=self.backend)
        return context.view(x.shape[:-1] + (values.shape[-1],))


class CausalAttention(nn.Module):
    """Single-head causal self-attention with dropout on the attention weights.

    Input (B, L, d_in) with L <= context_length; output (B, L, d_out).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 qkv_bias: bool = False, backend: str = "auto"):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.context_length, self.backend = context_length, _check_backend(backend)
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        # Kept as in the teaching text so its checkpoints load; the math masks by position.
        self.register_buffer(
            "mask", torch.triu(torch.ones(context_length, context_length), diagonal=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.d_in, (3,), type(self).__name__)
        _check_length(x.shape[1], self.context_length, type(self).__name__)
        keys = self.W_key(x).unsqueeze(1)
        queries = self.W_query(x).unsqueeze(1)
        values = self.W_value(x).unsqueeze(1)
        dropout_p = self.dropout.p if self.training else 0.0
        context = attend(queries, keys, values, backend=self.backend, causal=True,
                         dropout_p=dropout_p)
        return context.squeeze(1)


class MultiHeadAttentionWrapper(nn.Module):
    """``num_heads`` independent CausalAttention heads, outputs concatenated.

    Input (B, L, d_in); output (B, L, d_out * num_heads).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False, backend: str = "auto"):
        super().__init__()
        self.heads = nn.ModuleList(
            CausalAttention(d_in, d_out, context_length, dropout, qkv_bias, backend)
            for _ in range(num_heads)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)


class MultiHeadAttention(nn.Module):
    """Causal multi-head attention with one projection per Q, K, V split into heads.

    The heads are strided views of the projections: the fused backend reads them in place.
    Input (B, L, d_in) with L <= context_length; output (B, L, d_out).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False, backend: str = "auto"):
        super().__init__()
        if num_heads <= 0 or d_out % num_heads != 0:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.d_in, self.d_out = d_in, d_out
        self.context_length, self.backend = context_length, _check_backend(backend)
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        # Kept as in the teaching text so its checkpoints load; the math masks by position.
        self.register_buffer(
            "mask", torch.triu(torch.ones(context_length, context_length), diagonal=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.d_in, (3,), type(self).__name__)
        b, num_tokens, _ = x.shape
        _check_length(num_tokens, self.context_length, type(self).__name__)
        # (B, L, d_out) -> (B, H, L, head_dim), views without copies
        heads = (b, num_tokens, self.num_heads, self.head_dim)
        keys = self.W_key(x).view(heads).transpose(1, 2)
        queries = self.W_query(x).view(heads).transpose(1, 2)
        values = self.W_value(x).view(heads).transpose(1, 2)
        dropout_p = self.dropout.p if self.training else 0.0
        context = attend(queries, keys, values, backend=self.backend, causal=True,
                         dropout_p=dropout_p)
        context = context.transpose(1, 2).reshape(b, num_tokens, self.d_out)
        return self.out_proj(context)
