"""A GPT-style language model built on ``attention_ops.MultiHeadAttention``.

Pre-LayerNorm transformer blocks (attention, then a GELU MLP of width 4*d_model, each on a
residual branch with dropout), learned token and position embeddings, a final LayerNorm and
an untied output head, as in the teaching text's GPT model. ``attention`` picks what computes
the attention itself; the parameters, their creation order and so their initial values under
a given seed are the same for every choice, so runs with different attention compare like for
like.
"""

from __future__ import annotations

import torch
from torch import nn

from attention_ops import MultiHeadAttention

ATTENTIONS = ("eager", "triton", "sdpa")


def multi_head_attention(d_model: int, context_length: int, n_heads: int, dropout: float,
                         attention: str) -> MultiHeadAttention:
    """Causal multi-head self-attention of width ``d_model`` computed by ``attention``."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    return MultiHeadAttention(d_model, d_model, context_length, dropout, n_heads,
                              backend=attention)


class TransformerBlock(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)); dropout on both residual branches."""

    def __init__(self, d_model: int, context_length: int, n_heads: int, dropout: float,
                 attention: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = multi_head_attention(d_model, context_length, n_heads, dropout, attention)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    """Decoder-only transformer: (B, L) token ids -> (B, L, vocab_size) logits.

    Args:
        vocab_size: number of token ids.
        context_length: longest input sequence (the position embedding's size).
        d_model: model width; ``n_heads`` must divide it.
        n_layers: number of transformer blocks.
        n_heads: attention heads per block.
        dropout: dropout on embeddings, attention weights and residual branches.
        attention: "triton" (``attention_ops.flash_attention``), "eager" (the package's
            reference math) or "sdpa" (``torch.nn.functional.scaled_dot_product_attention``).

    Example:
        >>> model = GPT(50257, 1024, 768, 12, 12, 0.0, attention="triton").cuda()
        >>> logits = model(torch.randint(50257, (2, 1024), device="cuda"))
    """

    def __init__(self, vocab_size: int, context_length: int, d_model: int, n_layers: int,
                 n_heads: int, dropout: float, attention: str = "triton"):
        super().__init__()
        self.context_length = context_length
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context_length, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(
            TransformerBlock(d_model, context_length, n_heads, dropout, attention)
            for _ in range(n_layers)
        ))
        self.final_norm = nn.LayerNorm(d_model)
        self.out_head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        num_tokens = tokens.shape[1]
        if num_tokens > self.context_length:
            raise ValueError(f"GPT: {num_tokens} tokens, more than context_length="
                             f"{self.context_length}")
        positions = torch.arange(num_tokens, device=tokens.device)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(positions))
        return self.out_head(self.final_norm(self.blocks(x)))
