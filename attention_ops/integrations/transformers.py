"""Hugging Face transformers integration: ``attn_implementation="attention_ops"``.

Call ``register()`` once, then load or build a model with
``attn_implementation="attention_ops"``. Its attention layers then run ``attention_ops``'
fused kernel: causal attention, padding and the other boolean masks transformers builds,
Gemma 2's logit soft-capping (``softcap``), gpt-oss's attention sinks (``s_aux``) and the
sliding windows of Mistral, Gemma 2 and gpt-oss.

Sliding windows. transformers' sliding-window mask (``sliding_window_causal_mask_function``
in ``transformers.masking_utils``) lets query position q see key positions kv with
``q - sliding_window < kv <= q``: ``sliding_window`` keys, the query's own included. That is
the kernel's causal rule with ``window=(sliding_window - 1, 0)``, bottom-right aligned (a
KV cache's queries are its last keys; a sliding cache keeps ``sliding_window - 1`` of them).
Where no padding needs a mask, ``create_attention_mask`` below returns None and
``attention_forward`` applies that rule from the ``sliding_window`` argument the attention
layer passes: no (L, S) mask is built and a windowed query row costs O(window). With padding,
the mask function returns the full boolean mask (causal, window and padding in one), which
the kernel reads as is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (
    AttentionMaskInterface,
    causal_mask_function,
    prepare_padding_mask,
    sdpa_mask,
)
from transformers.utils.import_utils import is_torchdynamo_exporting, is_tracing

from attention_ops.sdpa import attend
from attention_ops.validation import check_attention_inputs, check_mask

NAME = "attention_ops"

# Keyword arguments some models pass that this function cannot honour; silently ignoring
# them would change the model's results.
_UNSUPPORTED = {"position_bias": "an additive position bias"}

# Model types (``config.model_type``) whose sliding-window layers pass the window to the
# attention function as ``sliding_window`` (``config.sliding_window`` on sliding layers, None
# on full-attention layers), so that their sliding masks can be left to the kernel. Other
# models build sliding masks too, but some of them (PhiMoE, Qwen2-MoE, Doge, BLT) never pass
# ``sliding_window``: their sliding layers always get the full boolean mask.
WINDOW_FROM_ARGUMENT = frozenset({"gemma2", "gpt_oss", "mistral"})


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Attention with the signature transformers' ``AttentionInterface`` calls.

    Args:
        module: the calling attention layer; its ``is_causal`` (default True) applies when
            ``is_causal`` is not passed.
        query: (B, Hq, L, D), any strides.
        key: (B, Hkv, S, D), Hkv dividing Hq (not repeated for grouped-query attention).
        value: (B, Hkv, S, Dv).
        attention_mask: bool (B, 1, L, S), True takes part (it then holds causality and any
            window: nothing else is applied), a float mask added to the scores, or None:
            causal attention (with ``sliding_window``) for a causal layer, with the L queries
            the last L of the S keys (bottom-right aligned, as after a KV cache), else full
            attention.
        scaling: multiplies the scores; default 1/sqrt(D).
        dropout: drop probability on the attention weights (transformers passes 0.0 in eval).
        is_causal: overrides ``module.is_causal`` when given.
        sliding_window: W, for a causal layer without a mask: query position q sees key
            positions q - W < kv <= q (W keys, its own included), transformers' rule.
        softcap: c > 0 caps the scaled scores to c * tanh(s / c) (Gemma 2).
        s_aux: (Hq,) attention-sink logits; exp(s_aux[h]) joins each softmax denominator of
            head h (gpt-oss). They receive their gradient.
        **kwargs: other model-specific arguments; those that change the math raise.

    Returns:
        attn_output (B, L, Hq, Dv) contiguous, and None for the attention weights.

    Raises:
        ValueError: for a model argument this function does not implement (a position
            bias), inputs of the wrong shapes, or a ``sliding_window`` below 1.
    """
    for arg, feature in _UNSUPPORTED.items():
        if kwargs.get(arg) is not None:
            raise ValueError(f'attn_implementation="{NAME}" does not support {feature} '
                             f"({arg}); use \"eager\" or \"sdpa\" for this model")
    check_attention_inputs(query, key, value)
    if attention_mask is not None:
        check_mask(attention_mask, query,
                   (query.shape[0], query.shape[1], query.shape[2], key.shape[2]),
                   allow_float=True)
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    # A given mask already holds causality and the window (see ``create_attention_mask``).
    causal = bool(is_causal) and attention_mask is None
    window = None
    if causal and sliding_window is not None:
        if isinstance(sliding_window, bool) or not isinstance(sliding_window, int) \
                or sliding_window < 1:
            raise ValueError(f"sliding_window must be an int >= 1 or None, got "
                             f"{sliding_window!r}")
        window = (sliding_window - 1, 0)
    out = attend(query, key, value, attn_mask=attention_mask, causal=causal,
                 dropout_p=float(dropout), scale=scaling, window=window, align="bottom_right",
                 softcap=softcap, sinks=s_aux)
    return out.transpose(1, 2).contiguous(), None


def create_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    mask_function: Callable = causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    config: object = None,
    **kwargs: object,
) -> torch.Tensor | None:
    """The mask function transformers' ``AttentionMaskInterface`` calls for this attention.

    Returns None where ``attention_forward``'s own rule (causal, bottom-right aligned, with
    the layer's ``sliding_window``) is exactly the mask transformers asks for: a causal or
    sliding-window causal mask (``allow_is_causal_skip``; a sliding window only for the
    model types in ``WINDOW_FROM_ARGUMENT``), the queries being the last ``q_length`` of the
    ``kv_length`` keys, and no padding among those keys. Otherwise the boolean
    (batch_size, 1, q_length, kv_length) mask of ``transformers.masking_utils.sdpa_mask``,
    built in full (also for a static cache's prefill, where "sdpa" relies on top-left
    ``is_causal`` instead); for bidirectional masks that function's own shortcuts apply.

    Args:
        batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask,
        local_size, allow_is_causal_skip, config, **kwargs: as ``sdpa_mask`` takes them
            (``config`` is the model's, ``local_size`` the sliding window or chunk size).
    """
    if allow_is_causal_skip and _kernel_rule_is_exact(
            q_length, kv_length, q_offset, kv_offset, attention_mask, local_size, config):
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     mask_function=mask_function, attention_mask=attention_mask,
                     local_size=local_size, allow_is_causal_skip=False, config=config,
                     **kwargs)


def _kernel_rule_is_exact(q_length: int, kv_length: int, q_offset: int | torch.Tensor,
                          kv_offset: int, padding: torch.Tensor | None, local_size: int | None,
                          config: object) -> bool:
    """Whether a causal (``local_size`` None) or sliding-window causal mask over these
    positions equals ``attention_forward``'s rule for a None mask."""
    if local_size is not None and not (
            getattr(config, "model_type", None) in WINDOW_FROM_ARGUMENT
            and local_size == getattr(config, "sliding_window", None)):
        return False  # a chunked mask, or a model that does not pass its window
    # Deciding would read tensor values: not while exporting or tracing (torch.compile).
    if is_torchdynamo_exporting():
        return False
    if isinstance(q_offset, torch.Tensor):  # static caches
        if is_tracing(q_offset):
            return False
        q_offset = int(q_offset)
    # Bottom-right alignment: the last query sits at the last key's position.
    if q_offset + q_length != kv_offset + kv_length:
        return False
    padding = prepare_padding_mask(padding, kv_length, kv_offset)
    if padding is None:
        return True
    if is_tracing(padding):
        return False
    return bool(padding[:, kv_offset:kv_offset + kv_length].all())


def register() -> None:
    """Register ``attention_forward`` and ``create_attention_mask`` as
    ``attn_implementation="attention_ops"``.

    Example:
        >>> from attention_ops.integrations import transformers as ao_transformers
        >>> ao_transformers.register()
        >>> model = AutoModelForCausalLM.from_config(config, attn_implementation="attention_ops")
    """
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, create_attention_mask)
