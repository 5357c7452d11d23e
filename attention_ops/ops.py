"""The fused kernels as PyTorch custom ops, so torch.compile traces them without graph breaks.

Each op allocates fresh outputs and calls one launch helper from ``attention_ops.kernels``.
The fake (meta) implementations give torch.compile the output shapes without running
anything. Dropout's seed is an input tensor, drawn by the caller, so the ops stay pure
functions. The score modifiers travel as plain arguments (custom ops take no objects) and
become one ``ScoreMods`` here.
"""

from __future__ import annotations

import torch

from attention_ops.kernels import (
    PackedSequences,
    ScoreMods,
    attention_backward,
    attention_forward,
    decode_forward,
)


def _mods(attn_mask, alibi_slopes, sinks, causal, window_left, window_right, bottom_right,
          softcap) -> ScoreMods:
    window = None if window_left is None and window_right is None else (window_left,
                                                                        window_right)
    return ScoreMods(causal=causal, window=window, bottom_right=bottom_right, softcap=softcap,
                     attn_mask=attn_mask, alibi_slopes=alibi_slopes, sinks=sinks)


def _out_shape(q: torch.Tensor, v: torch.Tensor) -> tuple[int, ...]:
    return (*q.shape[:3], v.shape[3])


@torch.library.custom_op("attention_ops::flash_attention_fwd", mutates_args=())
def flash_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seed: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    alibi_slopes: torch.Tensor | None,
    sinks: torch.Tensor | None,
    scale: float,
    causal: bool,
    dropout_p: float,
    window_left: int | None,
    window_right: int | None,
    bottom_right: bool,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), an optional bool or float
    attn_mask expanded to (B, Hq, Lq, Lk) -> out (B, Hq, Lq, Dv), lse (B, Hq, Lq) fp32 base-2
    log-sum-exp."""
    out = torch.empty(_out_shape(q, v), dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    if out.numel() > 0:
        attention_forward(q, k, v, out, lse, scale=scale, dropout_p=dropout_p, seed=seed,
                          mods=_mods(attn_mask, alibi_slopes, sinks, causal, window_left,
                                     window_right, bottom_right, softcap))
    return out, lse


@flash_attention_fwd.register_fake
def _(q, k, v, seed, attn_mask, alibi_slopes, sinks, scale, causal, dropout_p, window_left,
      window_right, bottom_right, softcap):
    return q.new_empty(_out_shape(q, v)), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("attention_ops::flash_attention_bwd", mutates_args=())
def flash_attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    seed: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    alibi_slopes: torch.Tensor | None,
    sinks: torch.Tensor | None,
    scale: float,
    causal: bool,
    dropout_p: float,
    window_left: int | None,
    window_right: int | None,
    bottom_right: bool,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv, dsinks) with the shapes of (q, k, v, sinks) from dO and the
    forward's results; dsinks is float32, and empty when there are no sinks."""
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    dsinks = torch.zeros(0 if sinks is None else sinks.shape[0], dtype=torch.float32,
                         device=q.device)
    if dq.numel() > 0 and dk.numel() > 0 and dv.numel() > 0:
        sink_grad = attention_backward(
            do, q, k, v, out, lse, dq, dk, dv, scale=scale, dropout_p=dropout_p, seed=seed,
            mods=_mods(attn_mask, alibi_slopes, sinks, causal, window_left, window_right,
                       bottom_right, softcap))
        if sink_grad is not None:
            dsinks = sink_grad
    else:  # an empty side: every gradient is zero (or empty); a sink-only row gives out = 0
        dq.zero_(), dk.zero_(), dv.zero_()
    return dq, dk, dv, dsinks


@flash_attention_bwd.register_fake
def _(do, q, k, v, out, lse, seed, attn_mask, alibi_slopes, sinks, scale, causal, dropout_p,
      window_left, window_right, bottom_right, softcap):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            q.new_empty(0 if sinks is None else sinks.shape[0], dtype=torch.float32))


def _heads_first(t: torch.Tensor) -> torch.Tensor:
    """A packed (T, H, D) tensor as the kernels' (1, H, T, D) view (no copy)."""
    return t.permute(1, 0, 2).unsqueeze(0)


@torch.library.custom_op("attention_ops::flash_attention_varlen_fwd", mutates_args=())
def flash_attention_varlen_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen: int | None,
    seed: torch.Tensor | None,
    alibi_slopes: torch.Tensor | None,
    sinks: torch.Tensor | None,
    scale: float,
    causal: bool,
    dropout_p: float,
    window_left: int | None,
    window_right: int | None,
    bottom_right: bool,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed q (Tq, Hq, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv) cut into sequences by int32
    cu_seqlens_q / cu_seqlens_k (N + 1,) -> out (Tq, Hq, Dv), lse (Hq, Tq) fp32 base 2.
    ``max_seqlen`` only picks the autotuning bucket."""
    out = torch.empty((q.shape[0], q.shape[1], v.shape[2]), dtype=q.dtype, device=q.device)
    lse = torch.empty((q.shape[1], q.shape[0]), dtype=torch.float32, device=q.device)
    if out.numel() > 0:
        attention_forward(
            _heads_first(q), _heads_first(k), _heads_first(v), _heads_first(out),
            lse.unsqueeze(0), scale=scale, dropout_p=dropout_p, seed=seed,
            mods=_mods(None, alibi_slopes, sinks, causal, window_left, window_right,
                       bottom_right, softcap),
            packed=PackedSequences(cu_seqlens_q, cu_seqlens_k, max_seqlen))
    return out, lse


@flash_attention_varlen_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen, seed, alibi_slopes, sinks, scale,
      causal, dropout_p, window_left, window_right, bottom_right, softcap):
    return (q.new_empty((q.shape[0], q.shape[1], v.shape[2])),
            q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32))


@torch.library.custom_op("attention_ops::flash_attention_varlen_bwd", mutates_args=())
def flash_attention_varlen_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen: int | None,
    seed: torch.Tensor | None,
    alibi_slopes: torch.Tensor | None,
    sinks: torch.Tensor | None,
    scale: float,
    causal: bool,
    dropout_p: float,
    window_left: int | None,
    window_right: int | None,
    bottom_right: bool,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed gradients (dq, dk, dv, dsinks) with the shapes of (q, k, v, sinks)."""
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    dsinks = torch.zeros(0 if sinks is None else sinks.shape[0], dtype=torch.float32,
                         device=q.device)
    if dq.numel() > 0 and dk.numel() > 0 and dv.numel() > 0:
        sink_grad = attention_backward(
            *(_heads_first(t) for t in (do, q, k, v, out)), lse.unsqueeze(0),
            *(_heads_first(t) for t in (dq, dk, dv)), scale=scale, dropout_p=dropout_p,
            seed=seed, mods=_mods(None, alibi_slopes, sinks, causal, window_left, window_right,
                                  bottom_right, softcap),
            packed=PackedSequences(cu_seqlens_q, cu_seqlens_k, max_seqlen))
        if sink_grad is not None:
            dsinks = sink_grad
    else:
        dq.zero_(), dk.zero_(), dv.zero_()
    return dq, dk, dv, dsinks


@flash_attention_varlen_bwd.register_fake
def _(do, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen, seed, alibi_slopes,
      sinks, scale, causal, dropout_p, window_left, window_right, bottom_right, softcap):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            q.new_empty(0 if sinks is None else sinks.shape[0], dtype=torch.float32))


@torch.library.custom_op("attention_ops::flash_attention_with_kvcache", mutates_args=())
def flash_attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor | None,
    alibi_slopes: torch.Tensor | None,
    sinks: torch.Tensor | None,
    scale: float,
    causal: bool,
    window_left: int | None,
    window_right: int | None,
    softcap: float | None,
    num_splits: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoding: q (B, Hq, Lq, D) the last Lq positions of each row of a KV cache (see
    ``attention_ops.kvcache``) -> out (B, Hq, Lq, Dv), lse (B, Hq, Lq) fp32 base 2."""
    out = torch.empty((*q.shape[:3], v_cache.shape[3]), dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    mods = _mods(None, alibi_slopes, sinks, causal, window_left, window_right, True, softcap)
    if out.numel() > 0:
        decode_forward(q, k_cache, v_cache, out, lse, cache_seqlens=cache_seqlens,
                       block_table=block_table, scale=scale, mods=mods, num_splits=num_splits)
    return out, lse


@flash_attention_with_kvcache.register_fake
def _(q, k_cache, v_cache, cache_seqlens, block_table, alibi_slopes, sinks, scale, causal,
      window_left, window_right, softcap, num_splits):
    return (q.new_empty((*q.shape[:3], v_cache.shape[3])),
            q.new_empty(q.shape[:3], dtype=torch.float32))
