"""Hugging Face transformers integration: ``attn_implementation="attention_ops"``.

Call ``register()`` once, then load or build a model with
``attn_implementation="attention_ops"``. Its attention layers then run ``attention_ops``'
fused kernel: causal attention, padding and the other boolean masks transformers builds,
logit soft-capping (``softcap``, Gemma 2), attention sinks (``s_aux``, gpt-oss) and sliding
windows.

Supported transformers: MIN_TRANSFORMERS and newer (setup.py's ``transformers`` extra; CI tests
the lowest and the newest release). The integration uses only what transformers documents:
``AttentionInterface``, ``AttentionMaskInterface``, ``masking_utils.sdpa_mask`` and the
arguments these call their functions with.

Sliding windows. transformers' sliding-window mask lets query position q see key positions kv
with ``q - sliding_window < kv <= q``: ``sliding_window`` keys, the query's own included. That
is the kernel's causal rule with ``window=(sliding_window - 1, 0)``, bottom-right aligned (a
KV cache's queries are its last keys; a sliding cache keeps ``sliding_window - 1`` of them).
The mask function (``create_attention_mask``) recognises that mask by calling the mask
function transformers hands it, and hands over no (L, S) mask: the window travels with what it
returns, so every model's sliding layers get it, whether or not they pass ``sliding_window``
to the attention function, and a windowed query row costs O(window).

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
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

from attention_ops import reference
from attention_ops.fused_path import fused_path_problem
from attention_ops.integrations.mask_functions import (
    causal_mask,
    document_starts,
    follows_causal_rule_at_band_edges,
    follows_causal_rule_within_documents,
    positions_in_documents,
)
from attention_ops.integrations.packing import (
    attend_packed,
    memoized_per_tensor,
    packed_documents,
    padded_batch,
)
from attention_ops.kernels import PackedSequences
from attention_ops.kvcache import flash_attention_with_kvcache
from attention_ops.sdpa import _leave_fused_path, attend
from attention_ops.validation import (
    check_attention_inputs,
    check_dropout_p,
    check_mask,
)

MIN_TRANSFORMERS = (5, 5)


def _release(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: "5.24.0.dev0" -> (5, 24, 0)."""
    return tuple(int(n) for n in re.match(r"\d+(?:\.\d+)*", text).group().split("."))


if _release(version("transformers")) < MIN_TRANSFORMERS:
    raise ImportError(f"attention_ops.integrations.transformers needs transformers >= "
                      f"{'.'.join(map(str, MIN_TRANSFORMERS))}, found {version('transformers')}")

NAME = "attention_ops"

# Keyword arguments some models pass that this function cannot honour; silently ignoring
# them would change the model's results.
_UNSUPPORTED = {"position_bias": "an additive position bias"}

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
    - ``attention_mask`` an integer (B, L) tensor: positions within documents, as
      ``create_attention_mask`` hands them over for rows of packed documents;
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
            aligned, as after a KV cache), else full attention. A tensor handed over by
            ``create_attention_mask`` brings its window, which replaces ``sliding_window``.
        scaling: multiplies the scores; default 1/sqrt(D).
        dropout: drop probability on the attention weights, in [0, 1] (transformers passes
            0.0 in eval).
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
            bias), inputs or masks of the wrong shapes, a ``dropout`` outside [0, 1], or a
            ``sliding_window`` below 1.
    """
    for arg, feature in _UNSUPPORTED.items():
        if kwargs.get(arg) is not None:
            raise ValueError(f'attn_implementation="{NAME}" does not support {feature} '
                             f"({arg}); use \"eager\" or \"sdpa\" for this model")
    check_attention_inputs(query, key, value)
    dropout = check_dropout_p(dropout)
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    options = dict(dropout_p=dropout, scale=scaling, softcap=softcap, sinks=s_aux)
    rule = getattr(attention_mask, _RULE, None)
    if rule is not None:  # handed over by create_attention_mask: it knows the window
        sliding_window = rule.window
        if rule.padded and attention_mask.shape[-1] != key.shape[2]:
            return _attend_with_mismatched_padding(query, key, value, attention_mask, rule,
                                                   is_causal, options)
        if not rule.padded and attention_mask.dtype == torch.bool:  # only carries the window
            attention_mask = None
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


def _attend_with_mismatched_padding(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, padding: torch.Tensor,
    rule: _Rule, is_causal: bool, options: dict,
) -> tuple[torch.Tensor, None]:
    """A padding mask handed over for a different number of keys than the layer has (a model
    whose cache reports another layer's sizes): the eager path with the boolean mask
    transformers would have built from it, broadcast as "sdpa" and "eager" broadcast it;
    ``FusedPathUnavailableError`` in strict mode.

    Args:
        query: (B, Hq, L, D); key: (B, Hkv, S, D); value: (B, Hkv, S, Dv).
        padding: the handed-over bool (B, S') padding mask, S' != S (1 broadcasts).
        rule: what ``padding`` stands for (its window).
        options: the call's dropout_p, scale, softcap and sinks, reference keywords.
    """
    _leave_fused_path(f"the attention mask covers {padding.shape[-1]} keys, the layer "
                      f"{key.shape[2]}; it is read as transformers' (B, 1, L, "
                      f"{padding.shape[-1]}) mask")
    visible = padding[:, None, None, :]  # (B, 1, 1, S')
    if is_causal:  # the band over the mask's S' keys, the queries the last of them
        visible = visible & reference.visibility_mask(
            query.shape[2], padding.shape[-1], causal=True, window=_window(True, rule.window),
            align="bottom_right", device=query.device)
    half = query.dtype in (torch.float16, torch.bfloat16)
    out = reference.scaled_dot_product_attention(
        query, key, value, attn_mask=visible, compute_dtype=torch.float32 if half else None,
        **options)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


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
            or attention_mask.shape[:2] != (batch, 1) or _tracing()):
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
    expected = reference.visibility_mask(q_length, kv_length, causal=True, window=window,
                                         align="bottom_right", key_counts=lengths)
    return lengths.to(torch.int32) if torch.equal(rows, expected) else None


def _tokens(t: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) as the varlen kernel's (B * L, H, D) (a view where the strides allow)."""
    return t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])


def _packing(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
             kwargs: dict) -> PackedSequences | None:
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
        cu_q, cu_k = (cu.to(device=query.device, dtype=torch.int32) for cu in (cu_q, cu_k))
        return PackedSequences(cu_q, cu_k, max(hints, default=None))
    if attention_mask is not None:
        return packed_documents(attention_mask)
    position_ids = kwargs.get("position_ids")
    if (isinstance(position_ids, torch.Tensor) and batch == 1 and q_length == kv_length > 1
            and position_ids.numel() == q_length and not _tracing()):
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
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    **kwargs: object,
) -> torch.Tensor | None:
    """The mask function transformers' ``AttentionMaskInterface`` calls for this attention.

    Where the mask transformers asks for is ``attention_forward``'s own rule (causal,
    bottom-right aligned, within a sliding window of ``local_size`` keys or none) over whole
    rows or parts of them, it hands over only what that function needs:

    - None: plain causal attention, the queries the last ``q_length`` of the ``kv_length``
      keys, no padding among them;
    - a bool (batch_size, kv_length) padding mask: the same (or the sliding window) with each
      row's real tokens one run (left or right padding), found in one host read; with no
      padding but a window, all True;
    - int32 (batch_size, q_length) positions within documents: the rule applied to packed
      documents (no padding, no cache).

    A handed-over tensor carries the window in an attribute, so the layer needs no
    ``sliding_window`` argument. Whether ``mask_function`` is the rule is read by calling it:
    at the band edges of every query where transformers allows skipping the mask (it then
    holds a causal, sliding-window or chunked function), at every pair otherwise (packed
    documents; any other function, e.g. one with an extra and/or mask, fails the check).

    Otherwise the boolean (batch_size, 1, q_length, kv_length) mask of
    ``transformers.masking_utils.sdpa_mask``, built in full: other patterns, a static cache
    (its empty slots; its decoding steps read the filled lengths from the mask, see
    ``attention_forward``), and every mask built while tracing or compiling, where the decision
    would read tensor values (but for plain causal attention with no padding: None). For
    bidirectional masks that function's own shortcuts apply.

    Args:
        batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask,
        local_size, allow_is_causal_skip, **kwargs: as ``sdpa_mask`` takes them (positions
            q_offset.. of the queries and kv_offset.. of the keys; ``attention_mask`` the 2-D
            padding mask over key positions from 0; ``local_size`` the sliding window or
            chunk size).
    """
    def full_mask() -> torch.Tensor | None:
        function = {} if mask_function is None else {"mask_function": mask_function}
        return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                         q_offset=q_offset, kv_offset=kv_offset, attention_mask=attention_mask,
                         local_size=local_size, allow_is_causal_skip=False, **function,
                         **kwargs)

    if _tracing():
        # Deciding would read tensor values. A plain causal mask with no padding needs none
        # (transformers' own skip trusts ``allow_is_causal_skip`` there too).
        plain_causal = (allow_is_causal_skip and local_size is None and attention_mask is None
                        and isinstance(q_offset, int)
                        and q_offset + q_length == kv_offset + kv_length)
        return None if plain_causal else full_mask()
    if kwargs.get("use_vmap"):  # a vmapped function is not index-based
        return full_mask()
    q_offset = int(q_offset)  # a static cache's tensor offset
    if q_offset + q_length != kv_offset + kv_length:  # not bottom-right: a static cache
        return full_mask()
    function = mask_function if mask_function is not None else causal_mask
    device = kwargs.get("device", attention_mask.device if attention_mask is not None
                        else torch.get_default_device())
    padding = _padding(attention_mask, kv_offset, kv_length)
    try:
        if allow_is_causal_skip:
            q_positions = torch.arange(q_offset, q_offset + q_length, device=device)
            kv_positions = torch.arange(kv_offset, kv_offset + kv_length, device=device)
            if not follows_causal_rule_at_band_edges(function, batch_size, q_positions,
                                                     kv_positions, local_size):
                return full_mask()
        else:  # only packed documents reach the kernel from here
            if padding is not None or q_offset != 0 or q_length != kv_length:
                return full_mask()
            starts = document_starts(function, batch_size, q_length, device)
            if not (starts[:, 1:].any()
                    and follows_causal_rule_within_documents(function, starts, local_size)):
                return full_mask()
            return _with_rule(positions_in_documents(starts), local_size, padded=False)
    except Exception:  # a function that is not index-based: transformers' mask handles it
        return full_mask()
    no_padding, one_run_per_row = _padding_layout(padding)
    if no_padding and local_size is None:
        return None
    if no_padding:
        carrier = torch.ones(batch_size, kv_length, dtype=torch.bool, device=device)
        return _with_rule(carrier, local_size, padded=False)
    if one_run_per_row:
        return _with_rule(padding, local_size, padded=True)
    return full_mask()


@dataclass(frozen=True)
class _Rule:
    """What a handed-over tensor stands for: the kernel's causal rule within a sliding window
    of ``window`` keys (None: unbounded), restricted to its padding mask where ``padded``."""

    window: int | None
    padded: bool


_RULE = "_attention_ops_rule"  # the attribute that carries a _Rule


def _with_rule(t: torch.Tensor, window: int | None, *, padded: bool) -> torch.Tensor:
    setattr(t, _RULE, _Rule(window, padded))
    return t


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _padding(attention_mask: torch.Tensor | None, kv_offset: int,
             kv_length: int) -> torch.Tensor | None:
    """The bool (B, kv_length) padding of the keys at positions kv_offset.., from a 2-D mask
    over positions 0.. (positions past its end are padding, as transformers pads it); a new
    view, never the caller's tensor."""
    if attention_mask is None:
        return None
    padding = attention_mask.bool()
    missing = kv_offset + kv_length - padding.shape[-1]
    if missing > 0:
        padding = F.pad(padding, (0, missing), value=False)
    return padding[:, kv_offset:kv_offset + kv_length]


def _padding_layout(padding: torch.Tensor | None) -> tuple[bool, bool]:
    """(no padding at all, the real tokens of every row one run) for a bool (B, S) padding
    mask or None, in one host read."""
    if padding is None:
        return True, True
    runs = padding[:, 0].int() + (padding[:, 1:] & ~padding[:, :-1]).sum(-1)
    no_padding, one_run = torch.stack([padding.all(), (runs <= 1).all()]).tolist()
    return no_padding, one_run


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
