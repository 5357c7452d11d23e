"""``flash_attention_with_kvcache``: decoding against a KV cache, contiguous or paged, with the
keys split across programs (flash-decoding). Inference only."""

from __future__ import annotations

import torch

from attention_ops import ops
from attention_ops.fused_path import require_fused_path
from attention_ops.options import score_mods
from attention_ops.validation import (
    check_inference_only,
    check_kvcache_inputs,
    check_num_splits,
)


def flash_attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    block_table: torch.Tensor | None = None,
    causal: bool = True,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    scale: float | None = None,
    num_splits: int | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of a few new query rows against each batch row's KV cache (decoding).

    The queries are the last Lq positions of their row: query i of row b sits at position
    cache_seqlens[b] - Lq + i, so ``causal`` and ``window`` are bottom-right aligned. The score
    pipeline is the training kernel's (softcap, ALiBi, sinks, window); the grouped query heads
    of one key/value head share a program, and each row's keys are split over ``num_splits``
    programs whose partial results merge by their LSE in float32.

    Args:
        q: (B, Hq, Lq, D), Lq >= 1 (1 for decoding, a few for speculative decoding); any
            strides; float16, bfloat16 or float32.
        k_cache: (B, Hkv, Lmax, D), or with ``block_table`` (num_blocks, Hkv, block_size, D);
            Hkv dividing Hq; the dtype of q.
        v_cache: (B, Hkv, Lmax, Dv), or (num_blocks, Hkv, block_size, Dv).
        cache_seqlens: (B,) int32, the valid keys of each row (at most the cache's capacity:
            Lmax, or max_blocks * block_size). Checked where reading them costs no
            synchronisation (CPU tensors outside torch.compile); elsewhere (CUDA) the kernel
            clamps each to [0, capacity], so a row never reads outside its own cache or blocks.
        block_table: (B, max_blocks) int32: key t of row b lives in block
            block_table[b, t // block_size] at row t % block_size.
        causal: query i sees keys up to its own position (the default: the cache holds the
            queries' own keys).
        window, softcap, alibi_slopes, sinks, scale: as in ``flash_attention``; alibi_slopes
            (Hq,) or (B, Hq) float32.
        num_splits: programs sharing each row's keys; None picks from the batch, heads and
            cache length and the GPU's multiprocessor count. Any value gives the same result
            up to rounding.
        return_lse: also return the natural-log LSE (B, Hq, Lq) float32.

    Returns:
        out (B, Hq, Lq, Dv) contiguous in q's dtype (zeros for a row that sees nothing);
        with ``return_lse`` also lse.

    Raises:
        ValueError: before any launch, on bad shapes, dtypes, devices, cache lengths or block
            tables, bad modifier values, or an input that requires grad while grad mode is on
            (inference only: no backward is defined).
    """
    check_kvcache_inputs(q, k_cache, v_cache, cache_seqlens, block_table)
    check_inference_only(q=q, k_cache=k_cache, v_cache=v_cache, alibi_slopes=alibi_slopes,
                         sinks=sinks)
    mods = score_mods(q, k_cache.shape[2], scale=scale, causal=causal, window=window,
                      align="bottom_right", softcap=softcap, alibi_slopes=alibi_slopes,
                      sinks=sinks)
    num_splits = check_num_splits(num_splits)
    require_fused_path("flash_attention_with_kvcache", q, k_cache, v_cache)
    out, lse = ops.attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, block_table,
                                          num_splits, *mods.fields())
    return (out, ops.natural_lse(lse)) if return_lse else out
