"""attention-ops: fused causal attention for PyTorch, forward and backward, in Triton.

Set ``TRITON_INTERPRET=1`` before the first use of a kernel-backed function to run the
kernels on the CPU (slow, for tests). The public names load on first use, so
``import attention_ops.reference`` (the eager math) imports no Triton.
"""

import importlib

# Each public name and the module that defines it.
_PUBLIC = {
    "CausalAttention": "attention_ops.modules",
    "FusedPathUnavailableError": "attention_ops.sdpa",
    "MultiHeadAttention": "attention_ops.modules",
    "MultiHeadAttentionWrapper": "attention_ops.modules",
    "SDPAPatch": "attention_ops.patching",
    "SelfAttentionV1": "attention_ops.modules",
    "SelfAttentionV2": "attention_ops.modules",
    "draw_dropout_seed": "attention_ops.dropout",
    "dropout_keep_mask": "attention_ops.dropout",
    "flash_attention": "attention_ops.flash",
    "flash_attention_varlen": "attention_ops.varlen",
    "flash_attention_with_kvcache": "attention_ops.kvcache",
    "patch_sdpa": "attention_ops.patching",
    "scaled_dot_product_attention": "attention_ops.sdpa",
    "set_strict": "attention_ops.sdpa",
    "strict": "attention_ops.sdpa",
    "use_autotuning": "attention_ops.kernels",
}

__all__ = sorted([*_PUBLIC, "reference"])


def __getattr__(name: str):
    if name == "reference":
        return importlib.import_module("attention_ops.reference")
    if name not in _PUBLIC:
        raise AttributeError(f"module 'attention_ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
