"""``ring_attention``: attention over one sequence sharded across the ranks of a process group.

Forward: W steps. At each, this rank's queries attend to the key/value block in hand while the
next block is already on its way (``Ring.shift``), and the partial result merges into the
running one through the log-sum-exps, in float32. Backward: the blocks go around again; each
block's partial gradients are recomputed through the fused backward with the merged output
and LSE (so its delta = rowsum(dO * O) is the final one and the partials add up exactly), and
its dK/dV accumulate as they travel, reaching the block's owner after the last step.

Every launch pairs one query chunk with one key chunk (``layout.SequenceLayout``), each
contiguous in the global sequence, so a launch knows its place in the causal mask and in the
dropout stream: every rank draws exactly the mask single-process ``flash_attention`` would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from attention_ops.distributed.layout import SequenceLayout
from attention_ops.distributed.ring import Ring
from attention_ops.dropout import draw_dropout_seed
from attention_ops.fused_path import require_fused_path
from attention_ops.kernels import LN2, DropoutStream, attention_backward, attention_forward
from attention_ops.ops import natural_lse
from attention_ops.options import ScoreMods, score_mods
from attention_ops.validation import check_attention_inputs


class ChunkPair(NamedTuple):
    """One launch: a query chunk of the local shard against a key chunk of the block in hand,
    both ``length`` long."""

    q_offset: int  # where the chunks sit in the shard and in the block
    k_offset: int
    q_start: int  # and in the global sequence
    k_start: int
    length: int
    diagonal: bool  # the same chunk under a causal mask: causal inside it

    def queries(self, t: torch.Tensor) -> torch.Tensor:
        """The query chunk's rows of a local (B, H, L_local, ...) tensor."""
        return t.narrow(2, self.q_offset, self.length)

    def keys(self, t: torch.Tensor) -> torch.Tensor:
        """The key chunk's rows of a block's (B, Hkv, L_local, ...) tensor."""
        return t.narrow(2, self.k_offset, self.length)


@dataclass(frozen=True)
class RingPlan:
    """The launches of every step and their kernel arguments."""

    layout: SequenceLayout
    chunk: int
    mods: ScoreMods  # the call's; each launch sets causal for its pair
    seed: torch.Tensor | None

    def pairs(self, rank: int, source: int) -> list[ChunkPair]:
        """The launches of ``rank`` holding ``source``'s block: every chunk pair; under a
        causal mask a key chunk after the query chunk is skipped, the same chunk is causal
        inside (equal lengths, so top-left is the diagonal) and an earlier one is full."""
        return [
            ChunkPair(i * self.chunk, j * self.chunk, q * self.chunk, k * self.chunk,
                      self.chunk, self.mods.causal and k == q)
            for i, q in enumerate(self.layout.chunks(rank))
            for j, k in enumerate(self.layout.chunks(source))
            if not (self.mods.causal and k > q)
        ]

    def kernel_args(self, pair: ChunkPair) -> dict:
        """Keywords of ``attention_forward`` / ``attention_backward`` for ``pair``."""
        seqlen = self.chunk * self.layout.n_chunks
        return dict(seed=self.seed, mods=self.mods.replace(causal=pair.diagonal),
                    dropout_stream=DropoutStream(seqlen, pair.q_start, seqlen, pair.k_start))


def merge_partial(out: torch.Tensor, lse: torch.Tensor, out_b: torch.Tensor,
                  lse_b: torch.Tensor) -> None:
    """Fold attention over other keys, ``out_b`` (..., Dv) with base-2 ``lse_b`` (...), into
    ``out`` and ``lse``, in place and in float32. The stable form: out += sigmoid(lse_b - lse)
    * (out_b - out) and lse = max(lse, lse_b) + softplus(-|lse - lse_b|), in natural units;
    no exp of a raw LSE, and a side at -inf weighs nothing."""
    diff = (lse_b - lse) * LN2
    diff = torch.where(diff.isnan(), 0.0, diff)  # both -inf: no key either side, out stays 0
    out.lerp_(out_b, torch.sigmoid(diff).unsqueeze(-1))
    lse.copy_(torch.maximum(lse, lse_b) + F.softplus(-diff.abs()) / LN2)


def _pack(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """k and v in one contiguous buffer: one message per step."""
    return torch.cat([k.reshape(-1), v.reshape(-1)])


def _unpack(kv: torch.Tensor, k_shape: torch.Size, v_shape: torch.Size
            ) -> tuple[torch.Tensor, torch.Tensor]:
    n_k = math.prod(k_shape)
    return kv[:n_k].view(k_shape), kv[n_k:].view(v_shape)


def _ring_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ring: Ring,
                  plan: RingPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """out (B, Hq, L_local, Dv) and base-2 lse (B, Hq, L_local), both float32."""
    f32 = dict(dtype=torch.float32, device=q.device)
    out = torch.zeros(*q.shape[:3], v.shape[3], **f32)
    lse = torch.full(q.shape[:3], -math.inf, **f32)
    part_out = torch.empty(*q.shape[:2], plan.chunk, v.shape[3], **f32)
    part_lse = torch.empty(*q.shape[:2], plan.chunk, **f32)
    kv = _pack(k, v)
    for step in range(ring.world):
        incoming = ring.shift(kv) if step + 1 < ring.world else None
        k_block, v_block = _unpack(kv, k.shape, v.shape)
        for pair in plan.pairs(ring.rank, ring.source(step)):
            attention_forward(pair.queries(q), pair.keys(k_block), pair.keys(v_block), part_out,
                              part_lse, **plan.kernel_args(pair))
            merge_partial(pair.queries(out), pair.queries(lse), part_out, part_lse)
        if incoming is not None:
            kv = incoming()
    return out, lse


def _ring_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   out: torch.Tensor, lse: torch.Tensor, ring: Ring, plan: RingPlan
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of this rank's shard, summed in float32 in a fixed order."""
    f32 = dict(dtype=torch.float32, device=q.device)
    dq = torch.zeros(q.shape, **f32)
    part_dq = torch.empty(*q.shape[:2], plan.chunk, q.shape[3], **f32)
    part_dk = torch.empty(*k.shape[:2], plan.chunk, k.shape[3], **f32)
    part_dv = torch.empty(*v.shape[:2], plan.chunk, v.shape[3], **f32)
    kv = _pack(k, v)
    passed_dkv = None
    for step in range(ring.world):
        incoming = ring.shift(kv) if step + 1 < ring.world else None
        k_block, v_block = _unpack(kv, k.shape, v.shape)
        dkv = torch.zeros(kv.shape, **f32)
        dk_block, dv_block = _unpack(dkv, k.shape, v.shape)
        for pair in plan.pairs(ring.rank, ring.source(step)):
            # The backward kernels index the LSE as a contiguous (B * Hq, rows) array.
            attention_backward(pair.queries(do), pair.queries(q), pair.keys(k_block),
                               pair.keys(v_block), pair.queries(out),
                               pair.queries(lse).contiguous(), part_dq, part_dk, part_dv,
                               **plan.kernel_args(pair))
            pair.queries(dq).add_(part_dq)
            pair.keys(dk_block).add_(part_dk)
            pair.keys(dv_block).add_(part_dv)
        if passed_dkv is not None:
            dkv += passed_dkv()  # the ranks this block visited before
        passed_dkv = ring.shift(dkv)  # after the last step this reaches the block's owner
        if incoming is not None:
            kv = incoming()
    dk, dv = _unpack(passed_dkv(), k.shape, v.shape)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class RingAttentionFunction(torch.autograd.Function):
    """Ring attention with a ring backward, on inputs ``ring_attention`` has checked. Its LSE
    output is base 2."""

    @staticmethod
    def forward(ctx, q, k, v, ring, plan):
        out, lse = _ring_forward(q, k, v, ring, plan)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring, ctx.plan = ring, plan
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        return (*_ring_backward(dout, q, k, v, out, lse, ctx.ring, ctx.plan), None, None)


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    causal: bool = False,
    layout: str = "zigzag",
    scale: float | None = None,
    dropout_p: float = 0.0,
    generator: torch.Generator | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention over a sequence sharded across the ranks of ``group`` (context parallelism):
    the result of ``flash_attention`` on the full sequence, this rank's shard of it.

    Each rank keeps its queries and passes its keys and values around the ring (only the Hkv
    heads travel): W steps, each overlapping the next block's transfer with the attention to
    the block in hand. Memory per rank: the local shard plus two key/value blocks. Every rank
    of the group must call it with the same arguments (tensor shapes, ``causal``, ``layout``).

    Args:
        q: (B, Hq, L_local, D) this rank's shard of the queries (``shard_sequence``), any
            strides; float16, bfloat16 or float32, on the device the group's backend serves
            (CPU tensors with gloo, under ``TRITON_INTERPRET=1``; CUDA tensors with NCCL).
        k: (B, Hkv, L_local, D) this rank's keys; Hq must be a multiple of Hkv.
        v: (B, Hkv, L_local, Dv) this rank's values.
        group: the process group (default: the default group); W = its size.
        causal: query i attends to keys j <= i, in global positions.
        layout: how the global sequence of W * L_local tokens is sharded: "zigzag" (2W
            chunks, rank r holds chunks r and 2W-1-r: balanced causal work) or "contiguous"
            (rank r holds block r).
        scale: multiplies the scores, a finite positive float; default 1/sqrt(D).
        dropout_p: drop probability on the attention weights. Every rank draws the seed as
            ``flash_attention`` does (from ``generator`` or the device's generator, so the
            generators stay in step) and uses group rank 0's, so the mask is the one
            single-process ``flash_attention`` draws with rank 0's generator.
        generator: random generator for the dropout seed.
        return_lse: also return the natural log of each row's softmax denominator.

    Returns:
        out (B, Hq, L_local, Dv) in the input dtype, this rank's shard of the output; with
        ``return_lse`` also lse (B, Hq, L_local) float32 (not differentiable). The backward
        returns this rank's dq, dk, dv (summed in float32 in a fixed order: deterministic).

    Raises:
        ValueError: inputs ``flash_attention`` would refuse, q and k/v of different local
            lengths, an unknown layout, a global length that does not cut into W
            (contiguous) or 2W (zigzag) equal chunks, or no process group.

    Example:
        >>> # torchrun --nproc_per_node 4 train.py, after init_process_group("nccl")
        >>> q, k, v = (shard_sequence(t) for t in (q_full, k_full, v_full))
        >>> out = ring_attention(q, k, v, causal=True)   # this rank's shard of the output
    """
    check_attention_inputs(q, k, v)
    mods = score_mods(q, k.shape[2], scale=scale, causal=causal, dropout_p=dropout_p)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"ring_attention shards one sequence: q has {q.shape[2]} local "
                         f"tokens, k and v {k.shape[2]}")
    require_fused_path("ring_attention", q, k, v)
    ring = Ring(group, "ring_attention")
    order = SequenceLayout(layout, ring.world)
    chunk = order.shard_chunk_length(q.shape[2])
    seed = None
    if mods.dropout_p > 0.0:
        seed = ring.broadcast_first(draw_dropout_seed(q.device, generator))
    out, lse = RingAttentionFunction.apply(q, k, v, ring, RingPlan(order, chunk, mods, seed))
    return (out, natural_lse(lse)) if return_lse else out
