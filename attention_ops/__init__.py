"""attention-ops: fused causal attention for PyTorch, forward and backward, in Triton.

Set ``TRITON_INTERPRET=1`` before importing to run the kernels on the CPU (slow, for tests).
"""

from attention_ops import reference
from attention_ops.dropout import draw_dropout_seed, dropout_keep_mask
from attention_ops.flash import FlashAttentionFunction, flash_attention
from attention_ops.modules import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
)

__all__ = [
    "CausalAttention",
    "FlashAttentionFunction",
    "MultiHeadAttention",
    "MultiHeadAttentionWrapper",
    "SelfAttentionV1",
    "SelfAttentionV2",
    "draw_dropout_seed",
    "dropout_keep_mask",
    "flash_attention",
    "reference",
]
