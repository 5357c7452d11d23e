"""KV-cache geometry of a decoding launch (the forward kernel's DECODE, PAGED and SPLIT_KV
switches), host side."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheLayout:
    """Row b of the cache holds ``cache_seqlens[b]`` keys (int32 (B,)); with ``block_table``
    (int32 (B, max_pages)) the caches are (num_pages, Hkv, page_size, D) and key t of row b
    lives in page block_table[b, t // page_size]; a row holds at most ``capacity`` keys
    (``attention_ops.validation.cache_capacity``). ``num_splits`` programs share each row's
    keys; with more than one, the launch writes partial results whose split s sits
    ``split_strides`` = (output stride, LSE stride) elements after split 0."""

    cache_seqlens: torch.Tensor
    capacity: int
    block_table: torch.Tensor | None = None
    num_splits: int = 1
    split_strides: tuple[int, int] = (0, 0)


def cache_args(cache: CacheLayout | None, k_cache: torch.Tensor,
               placeholder: torch.Tensor) -> dict:
    """The forward kernel's cache arguments: key counts and block table pointers, the table's
    row stride, the page size, the split count, the partial results' split strides, and the
    DECODE, PAGED and SPLIT_KV switches (placeholders and all off without a cache)."""
    paged = cache is not None and cache.block_table is not None
    return {
        "CACHE_SEQLENS": placeholder if cache is None else cache.cache_seqlens,
        "BLOCK_TABLE": cache.block_table if paged else placeholder,
        "stride_table_b": cache.block_table.stride(0) if paged else 0,
        "page_size": k_cache.shape[2] if paged else 1,
        "n_splits": 1 if cache is None else cache.num_splits,
        "stride_o_split": 0 if cache is None else cache.split_strides[0],
        "stride_lse_split": 0 if cache is None else cache.split_strides[1],
        "DECODE": cache is not None,
        "PAGED": paged,
        "SPLIT_KV": cache is not None and cache.num_splits > 1,
    }
