"""The ranks of a process group as a ring: each rank sends to the next and receives from the
previous, through ``torch.distributed`` (gloo on CPU, NCCL on GPUs)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist


def resolve_group(group: dist.ProcessGroup | None, caller: str) -> dist.ProcessGroup:
    """``group``, or the default group when None; a ValueError naming ``caller`` when
    ``torch.distributed`` has no process group or this process is not in ``group``."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            f"{caller} needs a torch.distributed process group: call "
            "torch.distributed.init_process_group first (backend 'gloo' for CPU tensors, "
            "'nccl' for CUDA tensors; torchrun sets up its environment), or pass group=")
    group = group if group is not None else dist.group.WORLD
    if dist.get_rank(group) < 0:
        raise ValueError(f"{caller}: this process (rank {dist.get_rank()}) is not in group")
    return group


class Ring:
    """A process group's ranks in a ring. At step s of a pass around it, rank r holds the
    block that started on rank ``source(s)`` = r - s (mod W)."""

    def __init__(self, group: dist.ProcessGroup | None, caller: str) -> None:
        self.group = resolve_group(group, caller)
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        self._next = dist.get_global_rank(self.group, (self.rank + 1) % self.world)
        self._prev = dist.get_global_rank(self.group, (self.rank - 1) % self.world)

    def source(self, step: int) -> int:
        return (self.rank - step) % self.world

    def shift(self, tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Start sending contiguous ``tensor`` to the next rank and receiving the previous
        rank's into a new tensor like it; returns the wait that gives the received one. The
        transfer runs while the caller computes (``tensor`` must not change until then)."""
        if self.world == 1:  # a ring of one hands the block to itself
            return lambda: tensor
        received = torch.empty_like(tensor)
        works = dist.batch_isend_irecv([
            dist.P2POp(dist.isend, tensor, self._next, self.group),
            dist.P2POp(dist.irecv, received, self._prev, self.group),
        ])

        def wait() -> torch.Tensor:
            for work in works:
                work.wait()
            return received

        return wait

    def broadcast_first(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` replaced in place by group rank 0's, on every rank."""
        dist.broadcast(tensor, src=dist.get_global_rank(self.group, 0), group=self.group)
        return tensor
