"""attention-ops: fused causal attention for PyTorch, forward and backward, in Triton.

Set ``TRITON_INTERPRET=1`` before importing to run the kernels on the CPU (slow, for tests).
"""

from attention_ops import reference
from attention_ops.dropout import draw_dropout_seed, dropout_keep_mask
from attention_ops.flash import flash_attention
from attention_ops.kernels import use_autotuning
from attention_ops.kvcache import flash_attention_with_kvcache
from attention_ops.modules import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
)
from attention_ops.patching import SDPAPatch, patch_sdpa
from attention_ops.sdpa import (
    FusedPathUnavailableError,
    scaled_dot_product_attention,
    set_strict,
    strict,
)
from attention_ops.varlen import flash_attention_varlen

__all__ = [
    "CausalAttention",
    "FusedPathUnavailableError",
    "MultiHeadAttention",
    "MultiHeadAttentionWrapper",
    "SDPAPatch",
    "SelfAttentionV1",
    "SelfAttentionV2",
    "draw_dropout_seed",
    "dropout_keep_mask",
    "flash_attention",
    "flash_attention_varlen",
    "flash_attention_with_kvcache",
    "patch_sdpa",
    "reference",
    "scaled_dot_product_attention",
    "set_strict",
    "strict",
    "use_autotuning",
]
