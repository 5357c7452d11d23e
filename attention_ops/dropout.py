"""Dropout randomness for the fused kernels: per-call seeds and the debug keep-mask."""

from __future__ import annotations

import torch

from attention_ops.kernels import materialize_keep_mask
from attention_ops.validation import check_dropout_p


def draw_dropout_seed(
    device: torch.device | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw one call's Philox key: an int64 tensor of shape (1,) on ``device``.

    It comes from PyTorch's generator for the device (or ``generator``), so
    ``torch.manual_seed`` makes runs reproducible and consecutive calls get different masks.
    Drawn on the device, it costs no host synchronisation.
    """
    return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64, generator=generator)


def dropout_keep_mask(
    shape: tuple[int, int, int, int], dropout_p: float, seed: torch.Tensor
) -> torch.Tensor:
    """The keep-mask the fused kernels apply for ``seed``, materialised for inspection.

    Args:
        shape: (B, Hq, Lq, Lk), the attention weights' shape.
        dropout_p: drop probability.
        seed: the (1,) int64 tensor from ``draw_dropout_seed``; its device runs the kernel.

    Returns:
        bool tensor of ``shape``, True where a weight survives. Pass it to
        ``attention_ops.reference.scaled_dot_product_attention(keep_mask=...)`` to run the
        eager math with the very same mask.
    """
    check_dropout_p(dropout_p)
    batch, heads, seqlen_q, seqlen_k = shape
    mask = torch.empty(batch * heads, seqlen_q, seqlen_k, dtype=torch.int8, device=seed.device)
    materialize_keep_mask(mask, seed, dropout_p)
    return mask.view(shape).bool()
