"""attention-ops: fused causal attention for PyTorch, forward and backward, in Triton."""

from attention_ops import reference
from attention_ops.dropout import draw_dropout_seed, dropout_keep_mask
from attention_ops.flash import flash_attention

__all__ = [
    "draw_dropout_seed",
    "dropout_keep_mask",
    "flash_attention",
    "reference",
]
