"""Context parallelism: one sequence sharded across the ranks of a ``torch.distributed``
process group, attention computed by passing key/value blocks around the ring.

    from attention_ops.distributed import ring_attention, shard_sequence, unshard_sequence

The same code runs on CPU processes with the gloo backend (the kernels under Triton's
interpreter) and on GPUs with NCCL.
"""

from attention_ops.distributed.attention import ring_attention
from attention_ops.distributed.layout import LAYOUTS, shard_sequence, unshard_sequence

__all__ = ["LAYOUTS", "ring_attention", "shard_sequence", "unshard_sequence"]
