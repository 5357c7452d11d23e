"""Hugging Face transformers integration: ``attn_implementation="attention_ops"``.

Call ``register()`` once, then load or build a model with
``attn_implementation="attention_ops"``. Its attention layers then call
``attention_ops.scaled_dot_product_attention``: causal attention, padding and the other
boolean masks transformers builds run the fused kernel.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from attention_ops.sdpa import scaled_dot_product_attention

NAME = "attention_ops"

# Keyword arguments some models pass that this function cannot honour; silently ignoring
# them would change the model's results.
_UNSUPPORTED = {"softcap": "logit soft-capping", "s_aux": "attention sinks",
                "position_bias": "an additive position bias"}


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Attention with the signature transformers' ``AttentionInterface`` calls.

    Args:
        module: the calling attention layer; its ``is_causal`` (default True) applies when
            no mask is given and ``is_causal`` is not passed.
        query: (B, Hq, L, D), any strides.
        key: (B, Hkv, S, D), Hkv dividing Hq (not repeated for grouped-query attention).
        value: (B, Hkv, S, D).
        attention_mask: bool (B, 1, L, S), True takes part, or None.
        scaling: multiplies the scores; default 1/sqrt(D).
        dropout: drop probability on the attention weights (transformers passes 0.0 in eval).
        is_causal: overrides ``module.is_causal`` when given.
        **kwargs: other model-specific arguments; those that change the math raise.

    Returns:
        attn_output (B, L, Hq, D) contiguous, and None for the attention weights.

    Raises:
        ValueError: for a model argument this function does not implement (soft-capping,
            attention sinks, a position bias).
    """
    for arg, feature in _UNSUPPORTED.items():
        if kwargs.get(arg) is not None:
            raise ValueError(f'attn_implementation="{NAME}" does not support {feature} '
                             f"({arg}); use \"eager\" or \"sdpa\" for this model")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    # A single query attends to every cached key; a mask, when given, already holds causality.
    causal = bool(is_causal) and attention_mask is None and query.shape[2] > 1
    out = scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, is_causal=causal,
        scale=scaling, enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register ``attention_forward`` as ``attn_implementation="attention_ops"``.

    The mask side reuses the function transformers uses for "sdpa": a bool (B, 1, L, S) mask,
    or None where plain causal (or full) attention is exact, so such calls stay fused.

    Example:
        >>> from attention_ops.integrations import transformers as ao_transformers
        >>> ao_transformers.register()
        >>> model = AutoModelForCausalLM.from_config(config, attn_implementation="attention_ops")
    """
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
