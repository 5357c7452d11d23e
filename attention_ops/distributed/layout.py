"""Where a sharded sequence's tokens live: the chunks each rank holds, and the collectives
between a full tensor and a rank's shard.

"contiguous": the sequence cut into W equal chunks, rank r holds chunk r. "zigzag": cut into
2W chunks, rank r holds chunks r and 2W-1-r in that order, so under a causal mask every rank
has the same work (an early chunk's few keys paired with a late chunk's many).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from attention_ops.distributed.ring import resolve_group

LAYOUTS = ("contiguous", "zigzag")


@dataclass(frozen=True)
class SequenceLayout:
    """``layout`` (one of ``LAYOUTS``) over ``world`` ranks."""

    layout: str
    world: int

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

    @property
    def chunks_per_rank(self) -> int:
        return 2 if self.layout == "zigzag" else 1

    @property
    def n_chunks(self) -> int:
        return self.chunks_per_rank * self.world

    def chunks(self, rank: int) -> tuple[int, ...]:
        """The global indices of the chunks ``rank`` holds, in the order of its shard."""
        return (rank, self.n_chunks - 1 - rank) if self.layout == "zigzag" else (rank,)

    def chunk_length(self, seqlen: int, described: str | None = None) -> int:
        """The length of one chunk of a global sequence of ``seqlen`` tokens; a ValueError
        naming the lengths (``described``, default "sequence length <seqlen>") when it does
        not cut into ``n_chunks`` equal chunks."""
        if seqlen % self.n_chunks != 0:
            raise ValueError(
                f"the {self.layout} layout over {self.world} ranks cuts the sequence into "
                f"{self.n_chunks} equal chunks: {described or f'sequence length {seqlen}'} "
                f"is not a multiple of {self.n_chunks}")
        return seqlen // self.n_chunks

    def shard_chunk_length(self, local: int) -> int:
        """``chunk_length`` of the sequence whose every shard holds ``local`` tokens."""
        seqlen = local * self.world
        return self.chunk_length(
            seqlen, f"the sequence length {seqlen} = {self.world} x {local} local tokens")


def shard_sequence(
    x: torch.Tensor,
    *,
    dim: int = 2,
    group: dist.ProcessGroup | None = None,
    layout: str = "zigzag",
) -> torch.Tensor:
    """This rank's shard of the full sequence ``x`` (the same on every rank).

    Args:
        x: any tensor whose dimension ``dim`` is the sequence, e.g. (B, H, L, D) with dim=2.
        dim: the sequence dimension.
        group: the process group (default: the default group).
        layout: "zigzag" or "contiguous" (see ``attention_ops.distributed.layout``).

    Returns:
        A new tensor, ``x`` with L / W tokens along ``dim``: chunk r for "contiguous", chunks r
        and 2W-1-r of 2W for "zigzag". Differentiable locally (the gradient of the rest is 0).

    Raises:
        ValueError: L does not cut into W (contiguous) or 2W (zigzag) equal chunks, an unknown
            layout, or no process group.
    """
    group = resolve_group(group, "shard_sequence")
    order = SequenceLayout(layout, dist.get_world_size(group))
    pieces = x.split(order.chunk_length(x.shape[dim]), dim)
    return torch.cat([pieces[i] for i in order.chunks(dist.get_rank(group))], dim)


def unshard_sequence(
    x_local: torch.Tensor,
    *,
    dim: int = 2,
    group: dist.ProcessGroup | None = None,
    layout: str = "zigzag",
) -> torch.Tensor:
    """The full sequence from every rank's shard, on every rank (an all-gather).

    Args:
        x_local: this rank's shard (``shard_sequence``'s result); every rank's has the same
            shape.
        dim: the sequence dimension.
        group: the process group (default: the default group).
        layout: the layout the shards follow.

    Returns:
        A new tensor with W times ``x_local``'s length along ``dim``, the tokens in sequence
        order. Not differentiable (all-gather carries no gradient).

    Raises:
        ValueError: a zigzag shard of odd length, an unknown layout, or no process group.
    """
    group = resolve_group(group, "unshard_sequence")
    order = SequenceLayout(layout, dist.get_world_size(group))
    order.shard_chunk_length(x_local.shape[dim])
    shards = [torch.empty_like(x_local, memory_format=torch.contiguous_format)
              for _ in range(order.world)]
    dist.all_gather(shards, x_local.contiguous(), group=group)
    pieces = {index: piece
              for rank, shard in enumerate(shards)
              for index, piece in zip(order.chunks(rank),
                                      shard.chunk(order.chunks_per_rank, dim), strict=True)}
    return torch.cat([pieces[index] for index in range(order.n_chunks)], dim)
