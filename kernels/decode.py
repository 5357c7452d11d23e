"""KV-cache decoding: a few query rows against a long cache (flash-decoding).

The training forward runs one program per (query tile, head): at Lq = 1 that is B * Hq
programs, too few to fill a GPU. Here the forward kernel's DECODE switch stacks a group's query
heads into one tile (each cache tile is read once per group) and SPLIT_KV spreads each row's
keys over ``num_splits`` programs; ``combine_splits`` then merges the normalised partial
outputs by their LSE in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .cache import CacheLayout
from .casting import downcast
from .configs import head_dim_block
from .flash_fwd import attention_forward
from .launch import is_interpreter, kernel_flags

MAX_SPLITS = 64
MIN_KEYS_PER_SPLIT = 256  # below this a split's fixed cost outweighs the parallelism


def choose_num_splits(programs: int, capacity: int, device: torch.device) -> int:
    """Splits per row so ``programs`` (row tiles x batch x key/value heads) fill the device's
    multiprocessors about twice, each split keeping at least MIN_KEYS_PER_SPLIT keys."""
    if device.type == "cuda":
        processors = torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the interpreter runs one program at a time: splitting buys nothing
        processors = 1
    wanted = triton.cdiv(2 * processors, max(programs, 1))
    return max(1, min(wanted, triton.cdiv(capacity, MIN_KEYS_PER_SPLIT), MAX_SPLITS))


@triton.jit
def _combine_splits_kernel(
    PART_O, PART_LSE, O, LSE, n_splits, n_rows, stride_split_o, stride_split_lse,
    HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_R: tl.constexpr,
    INTERPRET_BF16: tl.constexpr,
):
    """O[r] = sum_s w_s PART_O[s, r] / sum_s w_s with w_s = exp2(PART_LSE[s, r] - max_s), and
    LSE[r] = max_s + log2(sum_s w_s), over BLOCK_R rows (B * Hq * Lq rows in all, contiguous,
    each HEAD_DIM_V wide). Splits that saw nothing hold LSE -inf and weigh 0; a row no split saw
    stays 0 with LSE -inf."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_DV)
    m_r = offs_r < n_rows
    m_o = m_r[:, None] & (offs_d[None, :] < HEAD_DIM_V)
    b_max = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for s in range(n_splits):
        b_lse = tl.load(PART_LSE + s * stride_split_lse + offs_r, mask=m_r, other=float("-inf"))
        b_max = tl.maximum(b_max, b_lse)
    b_max_safe = tl.where(b_max == float("-inf"), 0.0, b_max)
    b_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_R, BLOCK_DV], dtype=tl.float32)
    for s in range(n_splits):
        b_lse = tl.load(PART_LSE + s * stride_split_lse + offs_r, mask=m_r, other=float("-inf"))
        b_w = tl.exp2(b_lse - b_max_safe)  # <= 1: no overflow; -inf splits give 0
        b_o = tl.load(PART_O + s * stride_split_o + offs_r[:, None] * HEAD_DIM_V
                      + offs_d[None, :], mask=m_o, other=0.0)
        b_sum += b_w
        b_acc += b_w[:, None] * b_o
    b_sum_safe = tl.where(b_sum == 0.0, 1.0, b_sum)
    tl.store(O + offs_r[:, None] * HEAD_DIM_V + offs_d[None, :],
             downcast(b_acc / b_sum_safe[:, None], O.dtype.element_ty, INTERPRET_BF16), mask=m_o)
    tl.store(LSE + offs_r, tl.where(b_sum == 0.0, float("-inf"), b_max + tl.log2(b_sum_safe)),
             mask=m_r)


def combine_splits(part_out: torch.Tensor, part_lse: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor) -> None:
    """Merge partial results part_out (S, B, Hq, Lq, Dv) fp32 and part_lse (S, B, Hq, Lq) fp32
    base 2, all contiguous, into out (B, Hq, Lq, Dv) and lse (B, Hq, Lq), contiguous."""
    n_splits, head_dim_v = part_out.shape[0], part_out.shape[-1]
    n_rows = lse.numel()
    block_r = 32 if is_interpreter() else 64
    _combine_splits_kernel[(triton.cdiv(n_rows, block_r),)](
        PART_O=part_out, PART_LSE=part_lse, O=out, LSE=lse, n_splits=n_splits, n_rows=n_rows,
        stride_split_o=part_out.stride(0), stride_split_lse=part_lse.stride(0),
        HEAD_DIM_V=head_dim_v, BLOCK_DV=head_dim_block(head_dim_v), BLOCK_R=block_r,
        INTERPRET_BF16=kernel_flags(out)["INTERPRET_BF16"])


def decode_forward(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor | None = None,
    capacity: int,
    mods,
    num_splits: int | None = None,
) -> None:
    """Attention of q (B, Hq, Lq, D), the last Lq positions of each row, over a KV cache:
    fills out (B, Hq, Lq, Dv) and lse (B, Hq, Lq) fp32 base 2, both contiguous.

    k_cache, v_cache: (B, Hkv, Lmax, D|Dv), or (num_pages, Hkv, page_size, D|Dv) with
    ``block_table`` (B, max_pages) int32; ``cache_seqlens`` (B,) int32 keys per row, clamped to
    [0, ``capacity``], the most a row holds. ``mods``
    (read by attribute, see ``score.score_args``) holds the scale and the modifiers, should
    be bottom-right aligned and has no dropout. ``num_splits`` None picks from the problem
    and the device.
    """
    batch, n_heads_q, seqlen_q, _ = q.shape
    group_size = n_heads_q // k_cache.shape[1]
    # The kernel reads both densely (a broadcast length or a transposed table would not be).
    cache_seqlens = cache_seqlens.contiguous()
    block_table = None if block_table is None else block_table.contiguous()
    layout = CacheLayout(cache_seqlens, capacity, block_table)
    if num_splits is None:
        row_tiles = triton.cdiv(group_size * seqlen_q, 64)
        num_splits = choose_num_splits(row_tiles * batch * k_cache.shape[1],
                                       capacity, q.device)
    if num_splits == 1:
        attention_forward(q, k_cache, v_cache, out, lse, mods=mods, cache=layout)
        return
    part_out = torch.empty((num_splits, *out.shape), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((num_splits, *lse.shape), dtype=torch.float32, device=q.device)
    split = CacheLayout(cache_seqlens, capacity, block_table, num_splits,
                        (part_out.stride(0), part_lse.stride(0)))
    attention_forward(q, k_cache, v_cache, part_out[0], part_lse[0], mods=mods, cache=split)
    combine_splits(part_out, part_lse, out, lse)
