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
layer passes: no (L, S) mask is built and a windowed query row costs O(window); with padding,
the same rule runs within each row's real tokens.

Decoding runs ``flash_attention_with_kvcache`` (see ``attention_forward``): a few new queries
over cached keys, in inference, with no mask (a dynamic cache: every key is valid) or a boolean
mask that is causal attention over each row's first n keys (a static cache: its filled part).

Packed and padded batches run ``flash_attention_varlen`` (see ``attention_forward``): rows of
documents laid end to end (position ids restarting, or transformers' ``cu_seq_lens_q`` /
``cu_seq_lens_k``) attend document by document, and a padded batch whose mask is causal (with
the window) plus padding gets its (B, S) padding mask from the mask function, not an (L, S)
mask per row. Other masks stay boolean (B, 1, L, S) masks, which the kernel reads as is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (
    AttentionMaskInterface,
    causal_mask_function,
    packed_sequence_compatibility_function,
    prepare_padding_mask,
    sdpa_mask,
    sliding_window_causal_mask_function,
)
from transformers.utils.import_utils import is_torchdynamo_exporting, is_tracing

from attention_ops.integrations.packing import (
    Packing,
    attend_packed,
    memoized_per_tensor,
    packed_documents,
    padded_batch,
)
from attention_ops.kvcache import flash_attention_with_kvcache
from attention_ops.sdpa import attend
from attention_ops.validation import check_attention_inputs, check_mask, fused_path_problem

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

# Decoding: up to this many new queries over at least one cached key run
# flash_attention_with_kvcache, whose tiles stack a group's query heads (each cached key is
# read once per key/value head). Longer chunks fill the forward kernel's query tiles.
DECODE_MAX_QUERIES = 16


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

    Decoding runs ``flash_attention_with_kvcache``: a causal layer's L <= DECODE_MAX_QUERIES
    queries over S > L keys, the queries the last of them, in inference (no dropout, nothing
    requiring grad while grad mode is on), on inputs the fused kernels take, with

    - no mask: every row's S keys are valid (a dynamic cache);
    - a bool (B, 1, L, S) mask that is exactly causal attention (with ``sliding_window``) of
      the queries as the last of each row's first n keys, for some lengths n (B,): a static
      cache's filled part, its unfilled slots masked.

    Packed and padded batches run ``flash_attention_varlen``, each document or each row's
    real tokens attending only to itself (causal with ``sliding_window``, bottom-right
    aligned, for a causal layer), pads giving zeros:

    - ``cu_seq_lens_q`` and ``cu_seq_lens_k`` (with ``max_length_q`` / ``max_length_k``) in
      ``kwargs`` and no padding: the sequences of the flattened (B * L) tokens;
    - ``attention_mask`` an integer (B, L) tensor: the position ids ``create_attention_mask``
      hands over for rows of packed documents;
    - no mask, one row, no cached keys, and ``position_ids`` in ``kwargs`` that restart: a
      document starts wherever a position is not the previous one plus 1;
    - ``attention_mask`` a bool (B, S) padding mask (from ``create_attention_mask``).

    Finding documents from position ids, or a decoding mask's lengths, reads the tensor on the
    host once, so once per forward pass (the layers share it); the other cases never
    synchronise.

    Args:
        module: the calling attention layer; its ``is_causal`` (default True) applies when
            ``is_causal`` is not passed.
        query: (B, Hq, L, D), any strides.
        key: (B, Hkv, S, D), Hkv dividing Hq (not repeated for grouped-query attention).
        value: (B, Hkv, S, Dv).
        attention_mask: bool (B, 1, L, S), True takes part (it then holds causality and any
            window: nothing else is applied), a float mask added to the scores, one of the two
            (B, S) / (B, L) tensors above, or None: causal attention (with ``sliding_window``)
            for a causal layer, with the L queries the last L of the S keys (bottom-right
            aligned, as after a KV cache), else full attention.
        scaling: multiplies the scores; default 1/sqrt(D).
        dropout: drop probability on the attention weights (transformers passes 0.0 in eval).
        is_causal: overrides ``module.is_causal`` when given.
        sliding_window: W, for a causal layer: query position q sees key positions
            q - W < kv <= q (W keys, its own included), transformers' rule.
        softcap: c > 0 caps the scaled scores to c * tanh(s / c) (Gemma 2).
        s_aux: (Hq,) attention-sink logits; exp(s_aux[h]) joins each softmax denominator of
            head h (gpt-oss). They receive their gradient.
        **kwargs: other model-specific arguments; those that change the math raise.

    Returns:
        attn_output (B, L, Hq, Dv) contiguous, and None for the attention weights.

    Raises:
        ValueError: for a model argument this function does not implement (a position
            bias), inputs or masks of the wrong shapes, or a ``sliding_window`` below 1.
    """
    for arg, feature in _UNSUPPORTED.items():
        if kwargs.get(arg) is not None:
            raise ValueError(f'attn_implementation="{NAME}" does not support {feature} '
                             f"({arg}); use \"eager\" or \"sdpa\" for this model")
    check_attention_inputs(query, key, value)
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    options = dict(dropout_p=float(dropout), scale=scaling, softcap=softcap, sinks=s_aux)
    packing = _packing(query, key, attention_mask, kwargs)
    if packing is not None:
        out = attend_packed(*(_tokens(t) for t in (query, key, value)), packing,
                            causal=bool(is_causal), window=_window(is_causal, sliding_window),
                            **options)
        return out.view(query.shape[0], query.shape[2], *out.shape[1:]), None
    if attention_mask is not None:
        check_mask(attention_mask, query,
                   (query.shape[0], query.shape[1], query.shape[2], key.shape[2]),
                   allow_float=True)
    if is_causal and _decodes(query, key, value, s_aux, dropout, scaling):
        window = _window(True, sliding_window)
        cache_seqlens = _cache_seqlens(query, key, attention_mask, window)
        if cache_seqlens is not None:
            out = flash_attention_with_kvcache(query, key, value, cache_seqlens, window=window,
                                               softcap=softcap, sinks=s_aux, scale=scaling)
            return out.transpose(1, 2).contiguous(), None
    # A given mask already holds causality and the window (see ``create_attention_mask``).
    causal = bool(is_causal) and attention_mask is None
    out = attend(query, key, value, attn_mask=attention_mask, causal=causal,
                 window=_window(causal, sliding_window), align="bottom_right", **options)
    return out.transpose(1, 2).contiguous(), None


def _window(causal: bool, sliding_window: int | None) -> tuple[int, int] | None:
    """The kernel's window for transformers' ``sliding_window`` on a causal layer."""
    if not causal or sliding_window is None:
        return None
    if isinstance(sliding_window, bool) or not isinstance(sliding_window, int) \
            or sliding_window < 1:
        raise ValueError(f"sliding_window must be an int >= 1 or None, got {sliding_window!r}")
    return (sliding_window - 1, 0)


def _decodes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             sinks: torch.Tensor | None, dropout: float, scale: float | None) -> bool:
    """Whether ``flash_attention_with_kvcache`` takes this call: decode-shaped (at most
    DECODE_MAX_QUERIES queries, fewer than the keys), inference only, fused-path inputs."""
    if not query.shape[2] <= min(DECODE_MAX_QUERIES, key.shape[2] - 1) or dropout > 0:
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (query, key, value, sinks)):
        return False
    return fused_path_problem(query, key, value, scale=scale) is None


def _cache_seqlens(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                   window: tuple[int, int] | None) -> torch.Tensor | None:
    """The valid keys of each row, int32 (B,), where causal attention (with ``window``) of the
    queries as the last of them is the call's attention (see ``attention_forward``), else
    None."""
    batch, kv_length = query.shape[0], key.shape[2]
    if attention_mask is None:
        return torch.full((batch,), kv_length, dtype=torch.int32, device=query.device)
    if (attention_mask.dtype != torch.bool or attention_mask.dim() != 4
            or attention_mask.shape[:2] != (batch, 1) or is_tracing(attention_mask)):
        return None
    return _causal_prefix_lengths_checker(window)(attention_mask)


@functools.cache
def _causal_prefix_lengths_checker(
        window: tuple[int, int] | None) -> Callable[[torch.Tensor], torch.Tensor | None]:
    """``_causal_prefix_lengths`` for ``window``, remembering its last mask (one per window:
    a model's sliding and full layers have a mask each)."""
    return memoized_per_tensor(functools.partial(_causal_prefix_lengths, window=window))


def _causal_prefix_lengths(mask: torch.Tensor, *,
                           window: tuple[int, int] | None) -> torch.Tensor | None:
    """The lengths n, int32 (B,), for which the bool (B, 1, L, S) ``mask`` is causal attention
    (with ``window`` (left, 0)) of the L queries as the last of each row's first n keys, or
    None where no lengths give it. One host read."""
    rows = mask[:, 0]
    q_length, kv_length = rows.shape[1:]
    keys = torch.arange(kv_length, device=mask.device)
    # The last query sits at its row's last valid key, the last key it sees.
    lengths = torch.where(rows[:, -1], keys + 1, 0).amax(-1)
    positions = lengths[:, None] - q_length + torch.arange(q_length, device=mask.device)
    expected = keys <= positions[..., None]
    if window is not None:
        expected &= keys >= positions[..., None] - window[0]
    return lengths.to(torch.int32) if torch.equal(rows, expected) else None


def _tokens(t: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) as the varlen kernel's (B * L, H, D) (a view where the strides allow)."""
    return t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])


def _packing(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
             kwargs: dict) -> Packing | None:
    """The sequences of a packed or padded batch (see ``attention_forward``), or None for
    attention over whole rows."""
    batch, q_length, kv_length = query.shape[0], query.shape[2], key.shape[2]
    if attention_mask is not None and attention_mask.dim() == 2:
        padding = attention_mask.dtype == torch.bool
        expected = (batch, kv_length if padding else q_length)
        if tuple(attention_mask.shape) != expected or attention_mask.is_floating_point():
            raise ValueError(f"a 2-D attention_mask must be a bool padding mask of shape "
                             f"{(batch, kv_length)} or integer position ids of shape "
                             f"{(batch, q_length)} here, got {attention_mask.dtype} "
                             f"{tuple(attention_mask.shape)}")
        if padding:
            return padded_batch(attention_mask, q_length)
    elif attention_mask is not None:
        return None
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and cu_k is not None:
        hints = [h for h in (kwargs.get("max_length_q"), kwargs.get("max_length_k"))
                 if isinstance(h, int)]
        return Packing(*(cu.to(device=query.device, dtype=torch.int32) for cu in (cu_q, cu_k)),
                       max(hints, default=None))
    if attention_mask is not None:
        return packed_documents(attention_mask)
    position_ids = kwargs.get("position_ids")
    if (isinstance(position_ids, torch.Tensor) and batch == 1 and q_length == kv_length > 1
            and position_ids.numel() == q_length and not is_tracing(position_ids)):
        packing = packed_documents(position_ids)
        if packing.cu_seqlens_q.shape[0] > 2:  # more than one document
            return packing
    return None


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

    Where the mask transformers asks for is ``attention_forward``'s own rule (causal,
    bottom-right aligned, with the layer's ``sliding_window``) over whole rows or parts of
    them, it hands over only what that function needs:

    - None: a causal or sliding-window causal mask (``allow_is_causal_skip``; a sliding
      window only for the model types in ``WINDOW_FROM_ARGUMENT``), the queries being the
      last ``q_length`` of the ``kv_length`` keys, and no padding among those keys;
    - the bool (batch_size, kv_length) padding mask: the same with padding, the real tokens
      of each row one run (left or right padding), found in one host read;
    - the (batch_size, q_length) position ids: that rule applied to packed documents, as
      ``transformers.masking_utils.packed_sequence_compatibility_function`` wraps it when the
      position ids restart (no padding mask, no cache).

    Otherwise the boolean (batch_size, 1, q_length, kv_length) mask of
    ``transformers.masking_utils.sdpa_mask``, built in full (also for a static cache's prefill,
    where "sdpa" relies on top-left ``is_causal`` instead, for its decoding steps, where
    transformers asks for the mask and ``attention_forward`` reads the filled lengths from it,
    and while tracing, where the decision would read tensor values); for bidirectional masks
    that function's own shortcuts apply.

    Args:
        batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask,
        local_size, allow_is_causal_skip, config, **kwargs: as ``sdpa_mask`` takes them
            (``config`` is the model's, ``local_size`` the sliding window or chunk size).
    """
    if attention_mask is None and q_length == kv_length:
        positions = _packed_position_ids(mask_function, local_size, config)
        if positions is not None and not is_tracing(positions):
            return positions
    if allow_is_causal_skip and _kernel_rule_applies(q_length, kv_length, q_offset, kv_offset,
                                                     local_size, config):
        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
        if padding is None:
            return None
        if not is_tracing(padding):
            padding = padding[:, kv_offset:kv_offset + kv_length]
            no_padding, one_run_per_row = _padding_layout(padding)
            if no_padding:
                return None
            if one_run_per_row:
                return padding
    return sdpa_mask(batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     mask_function=mask_function, attention_mask=attention_mask,
                     local_size=local_size, allow_is_causal_skip=False, config=config,
                     **kwargs)


def _window_from_argument(local_size: int, config: object) -> bool:
    """Whether a sliding window of ``local_size`` reaches the attention function as its
    ``sliding_window`` argument (not a chunk size, nor a model that does not pass it)."""
    return (getattr(config, "model_type", None) in WINDOW_FROM_ARGUMENT
            and local_size == getattr(config, "sliding_window", None))


def _kernel_rule_applies(q_length: int, kv_length: int, q_offset: int | torch.Tensor,
                         kv_offset: int, local_size: int | None, config: object) -> bool:
    """Whether a causal (``local_size`` None) or sliding-window causal mask over these
    positions, padding aside, is ``attention_forward``'s rule for a None mask."""
    if local_size is not None and not _window_from_argument(local_size, config):
        return False
    # Deciding would read tensor values: not while exporting or tracing (torch.compile).
    if is_torchdynamo_exporting():
        return False
    if isinstance(q_offset, torch.Tensor):  # static caches
        if is_tracing(q_offset):
            return False
        q_offset = int(q_offset)
    # Bottom-right alignment: the last query sits at the last key's position.
    return q_offset + q_length == kv_offset + kv_length


def _padding_layout(padding: torch.Tensor) -> tuple[bool, bool]:
    """(no padding at all, the real tokens of every row one run) for a bool (B, S) padding
    mask, in one host read."""
    runs = padding[:, 0].int() + (padding[:, 1:] & ~padding[:, :-1]).sum(-1)
    no_padding, one_run = torch.stack([padding.all(), (runs <= 1).all()]).tolist()
    return no_padding, one_run


def _packed_position_ids(mask_function: Callable, local_size: int | None,
                         config: object) -> torch.Tensor | None:
    """The position ids of packed documents when ``mask_function`` is transformers' packed
    sequence wrapper around ``attention_forward``'s rule (causal, or the model's sliding
    window), else None.

    The wrapper is recognised by its structure: built by the same factories as a template
    made with ``packed_sequence_compatibility_function`` (the same code objects, equal closure
    values), whose tensors stand for the wrapper's. Any other function, e.g. one with an extra
    and/or mask, or a transformers version that builds it differently, does not match and
    gets its boolean mask.
    """
    if local_size is None:
        rule = causal_mask_function
    elif _window_from_argument(local_size, config):
        rule = sliding_window_causal_mask_function(local_size)
    else:
        return None
    positions, documents = torch.empty(0, device="meta"), torch.empty(0, device="meta")
    found: dict[int, object] = {}
    template = packed_sequence_compatibility_function(rule, positions, documents)
    return found[id(positions)] if _built_like(mask_function, template, found) else None


def _built_like(value: object, template: object, found: dict[int, object]) -> bool:
    """Whether ``value`` matches ``template``: closures with the same code and matching cell
    contents, tuples item by item, a tensor for each tensor (recorded in ``found`` under the
    template tensor's id), other values equal or identical."""
    if isinstance(template, torch.Tensor):
        found[id(template)] = value
        return isinstance(value, torch.Tensor)
    if isinstance(template, tuple):
        return (isinstance(value, tuple) and len(value) == len(template)
                and all(_built_like(v, t, found) for v, t in zip(value, template, strict=True)))
    if getattr(template, "__closure__", None):
        return (getattr(value, "__code__", None) is template.__code__
                and all(_built_like(v.cell_contents, t.cell_contents, found)
                        for v, t in zip(value.__closure__, template.__closure__, strict=True)))
    return value is template or (type(value) is type(template) and not callable(template)
                                 and value == template)


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
