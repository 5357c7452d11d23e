"""Ground truth for the error columns: the package's reference math in float64."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from attention_ops import reference

# Upper bound on one float64 (b, heads, n, n) score block; the reference runs a few heads at a
# time so long sequences fit on the device (its backward holds a handful of such blocks).
CHUNK_BYTES = 2**31


@dataclass(frozen=True)
class Expected:
    """float64 output and input gradients for one set of inputs and output gradient."""

    out: torch.Tensor
    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor


def float64_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, **options: object
) -> Expected:
    """``reference.scaled_dot_product_attention(q, k, v, **options,
    compute_dtype=torch.float64)`` and its gradients for ``dout``, computed in head chunks of at
    most CHUNK_BYTES of scores (whole groups of query heads where key/value heads are shared)."""
    b, h, n, _ = q.shape
    group = h // k.shape[1]
    heads = max(1, CHUNK_BYTES // (b * n * k.shape[-2] * 8) // group) * group
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, h, heads):
        sl, kv = slice(start, start + heads), slice(start // group, (start + heads) // group)
        q64, k64, v64 = (t.detach().to(torch.float64).requires_grad_()
                         for t in (q[:, sl], k[:, kv], v[:, kv]))
        out = reference.scaled_dot_product_attention(q64, k64, v64, **options,
                                                     compute_dtype=torch.float64)
        grads = torch.autograd.grad(out, (q64, k64, v64), dout[:, sl].to(torch.float64))
        parts.append((out.detach(), *grads))
    return Expected(*(torch.cat(tensors, dim=1) for tensors in zip(*parts, strict=True)))


def max_errors(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Largest absolute error over the (actual, expected) pairs, and largest error relative to
    its pair's max |expected|. NaN when any actual value is NaN."""
    abs_errs, scales = [], []
    for actual, expected in pairs:
        abs_errs.append((actual.to(expected.dtype) - expected).abs().max())
        scales.append(expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny))
    abs_err = torch.stack(abs_errs)
    return abs_err.max().item(), (abs_err / torch.stack(scales)).max().item()
