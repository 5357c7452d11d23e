"""The fused kernels as PyTorch custom ops, so torch.compile traces them without graph breaks.

Three ops: the forward and backward of dense or packed attention (packed when cu_seqlens are
given: the kernels' VARLEN switch) and decoding from a KV cache. Each allocates fresh outputs
and calls one launch helper of ``attention_ops.kernels``; the fake (meta) implementations give
torch.compile the output shapes without running anything. Dropout's seed is an input tensor,
drawn by the caller, so the ops stay pure functions. The score options travel as the fields
of ``ScoreMods`` (custom ops take no objects; their schema is ``options.MODS_SCHEMA``) and
become one again in ``_mods``. LSE outputs are base 2; ``natural_lse`` converts them.
"""

from __future__ import annotations

import torch

from attention_ops.kernels import (
    LN2,
    PackedSequences,
    attention_backward,
    attention_forward,
    decode_forward,
)
from attention_ops.options import MODS_SCHEMA, ScoreMods
from attention_ops.validation import cache_capacity

_PACKING = "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int? max_seqlen, Tensor? seed"


def _mods(fields: tuple) -> ScoreMods:
    """The op arguments after the tensors, as the options they came from."""
    return ScoreMods(*fields)


def natural_lse(lse: torch.Tensor) -> torch.Tensor:
    """The kernels' base-2 log-sum-exp in natural-log units."""
    return lse * LN2


def _packing(cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None,
             max_seqlen: int | None) -> PackedSequences | None:
    return None if cu_seqlens_q is None else PackedSequences(cu_seqlens_q, cu_seqlens_k,
                                                             max_seqlen)


def _output_shapes(q: torch.Tensor, v: torch.Tensor,
                   packed: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(out, lse) shapes: dense (B, Hq, Lq, Dv), (B, Hq, Lq); packed (Tq, Hq, Dv), (Hq, Tq)."""
    if packed:
        return (q.shape[0], q.shape[1], v.shape[2]), (q.shape[1], q.shape[0])
    return (*q.shape[:3], v.shape[3]), tuple(q.shape[:3])


def _kernel_layout(packed: bool, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Tensors as the kernels' (B, H, L, D) views: a packed (T, H, D) tensor is (1, H, T, D),
    a packed (Hq, Tq) LSE (1, Hq, Tq). No copies."""
    if not packed:
        return list(tensors)
    return [t.unsqueeze(0) if t.dim() == 2 else t.permute(1, 0, 2).unsqueeze(0)
            for t in tensors]


def _new_outputs(q: torch.Tensor, v: torch.Tensor,
                 packed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    out_shape, lse_shape = _output_shapes(q, v, packed)
    return q.new_empty(out_shape), q.new_empty(lse_shape, dtype=torch.float32)


@torch.library.custom_op(
    "attention_ops::attention_fwd", mutates_args=(),
    schema=f"(Tensor q, Tensor k, Tensor v, {_PACKING}, {MODS_SCHEMA}) -> (Tensor, Tensor)")
def attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen, seed, *mods):
    """Dense: q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) -> out (B, Hq, Lq, Dv),
    lse (B, Hq, Lq) fp32 base 2. Packed (int32 (N + 1,) cu_seqlens given): q (Tq, Hq, D),
    k (Tk, Hkv, D), v (Tk, Hkv, Dv) -> out (Tq, Hq, Dv), lse (Hq, Tq); ``max_seqlen`` only
    picks the autotuning bucket. ``mods``: the fields of ``ScoreMods``."""
    packed = cu_seqlens_q is not None
    out, lse = _new_outputs(q, v, packed)
    if out.numel() > 0:
        attention_forward(*_kernel_layout(packed, q, k, v, out, lse), mods=_mods(mods),
                          seed=seed, packed=_packing(cu_seqlens_q, cu_seqlens_k, max_seqlen))
    return out, lse


@attention_fwd.register_fake
def _(q, k, v, cu_seqlens_q, *rest):
    return _new_outputs(q, v, cu_seqlens_q is not None)


@torch.library.custom_op(
    "attention_ops::attention_bwd", mutates_args=(),
    schema=f"(Tensor do, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, {_PACKING}, "
           f"{MODS_SCHEMA}) -> (Tensor, Tensor, Tensor, Tensor)")
def attention_bwd(do, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen, seed, *mods):
    """Gradients (dq, dk, dv, dsinks) with the shapes of (q, k, v, sinks) from dO and the
    forward's results (layouts as in ``attention_fwd``); dsinks is float32, and empty when
    there are no sinks."""
    mods = _mods(mods)
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    dsinks = torch.zeros(0 if mods.sinks is None else mods.sinks.shape[0], dtype=torch.float32,
                         device=q.device)
    if dq.numel() > 0 and dk.numel() > 0 and dv.numel() > 0:
        sink_grad = attention_backward(
            *_kernel_layout(cu_seqlens_q is not None, do, q, k, v, out, lse, dq, dk, dv),
            mods=mods, seed=seed, packed=_packing(cu_seqlens_q, cu_seqlens_k, max_seqlen))
        if sink_grad is not None:
            dsinks = sink_grad
    else:  # an empty side: every gradient is zero (or empty); a sink-only row gives out = 0
        dq.zero_(), dk.zero_(), dv.zero_()
    return dq, dk, dv, dsinks


@attention_bwd.register_fake
def _(do, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen, seed, *mods):
    sinks = _mods(mods).sinks
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            q.new_empty(0 if sinks is None else sinks.shape[0], dtype=torch.float32))


@torch.library.custom_op(
    "attention_ops::attention_with_kvcache", mutates_args=(),
    schema=f"(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, "
           f"Tensor? block_table, int? num_splits, {MODS_SCHEMA}) -> (Tensor, Tensor)")
def attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, block_table, num_splits, *mods):
    """Decoding: q (B, Hq, Lq, D) the last Lq positions of each row of a KV cache (see
    ``attention_ops.kvcache``) -> out (B, Hq, Lq, Dv), lse (B, Hq, Lq) fp32 base 2."""
    out, lse = _new_outputs(q, v_cache, packed=False)
    if out.numel() > 0:
        decode_forward(q, k_cache, v_cache, out, lse, cache_seqlens=cache_seqlens,
                       block_table=block_table,
                       capacity=cache_capacity(k_cache, block_table), mods=_mods(mods),
                       num_splits=num_splits)
    return out, lse


@attention_with_kvcache.register_fake
def _(q, k_cache, v_cache, *rest):
    return _new_outputs(q, v_cache, packed=False)
