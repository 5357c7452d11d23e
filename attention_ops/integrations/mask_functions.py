"""Reading a mask function for the kernel's rule, by calling it.

A mask function (transformers' and FlexAttention's convention) maps broadcastable index
tensors (batch, head, query position, key position) to a bool tensor, True where the query
sees the key. These helpers evaluate one on chosen positions to decide whether it is the
kernel's rule: causal, bottom-right aligned, optionally within a sliding window of W keys
(query position q sees q - W < kv <= q), optionally within documents. They read nothing but
what the function returns, so they do not depend on how a library builds its functions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attention_ops.reference import visible_keys

MaskFunction = Callable[..., torch.Tensor]

# Elements evaluated at once by an exhaustive check: bounds its memory on long rows.
_CHUNK_ELEMENTS = 1 << 24


def causal_mask(batch_idx, head_idx, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    """The plain causal mask function: a query sees its own and earlier positions."""
    return visible_keys(q_idx, kv_idx, causal=True)


def _evaluate(mask_function: MaskFunction, batch: torch.Tensor, q_idx: torch.Tensor,
              kv_idx: torch.Tensor) -> torch.Tensor:
    """The function at [B, 1, *index shape] positions (``batch`` (B,); ``q_idx`` and
    ``kv_idx`` broadcastable to each other), as a bool tensor of that shape."""
    shape = torch.broadcast_shapes(q_idx.shape, kv_idx.shape)
    ones = (1,) * len(shape)
    head = torch.zeros(1, 1, *ones, dtype=torch.long, device=q_idx.device)
    seen = mask_function(batch.view(-1, 1, *ones), head, q_idx[None, None], kv_idx[None, None])
    return torch.as_tensor(seen, device=q_idx.device).bool().expand(batch.shape[0], 1, *shape)


def _expected(q_idx: torch.Tensor, kv_idx: torch.Tensor, window: int | None) -> torch.Tensor:
    """The rule at (q_idx, kv_idx) positions: causal, within the last ``window`` keys."""
    return visible_keys(q_idx, kv_idx, causal=True,
                        window=None if window is None else (window - 1, 0))


def follows_causal_rule_at_band_edges(mask_function: MaskFunction, batch_size: int,
                                      q_positions: torch.Tensor, kv_positions: torch.Tensor,
                                      window: int | None) -> bool:
    """Whether the function agrees with the rule (window W or none) at each query's band
    edges: its own key and the next, the first key it sees (the window's reach or the first
    key present) and the one before the reach.

    Enough to tell causal, sliding-window causal and chunked causal functions apart (a chunk
    boundary between the first key seen and the query hides that key), not to verify an
    arbitrary function: the caller must know it to be one of those.
    """
    first_key, last_key = int(kv_positions[0]), int(kv_positions[-1])
    q = q_positions[:, None]
    reach = q - window + 1 if window is not None else torch.full_like(q, first_key)
    kv = torch.cat([q, q + 1, reach.clamp(min=first_key), reach - 1], dim=1)
    present = (kv >= first_key) & (kv <= last_key)
    kv_in = kv.clamp(first_key, last_key)  # index-based functions may read tensors there
    batch = torch.arange(batch_size, device=q.device)
    seen = _evaluate(mask_function, batch, q, kv_in)[:, 0]
    return bool(((seen == _expected(q, kv_in, window)) | ~present).all())


def document_starts(mask_function: MaskFunction, batch_size: int, length: int,
                    device: torch.device) -> torch.Tensor:
    """bool (B, L): where a row of ``length`` queries over the same keys starts a document,
    read as position 0 and every query that does not see the key before its own."""
    q = torch.arange(1, length, device=device)
    batch = torch.arange(batch_size, device=device)
    sees_previous = _evaluate(mask_function, batch, q, q - 1)[:, 0]
    return torch.cat([torch.ones(batch_size, 1, dtype=torch.bool, device=device),
                      ~sees_previous], dim=1)


def follows_causal_rule_within_documents(mask_function: MaskFunction, starts: torch.Tensor,
                                         window: int | None) -> bool:
    """Whether the function is, at every (query, key) pair of rows of packed documents, the
    rule (window W or none) within each document and False across documents.

    Args:
        starts: bool (B, L) from ``document_starts``; queries and keys are the same L positions.
    """
    batch_size, length = starts.shape
    device = starts.device
    documents = starts.cumsum(-1)
    batch = torch.arange(batch_size, device=device)
    kv = torch.arange(length, device=device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, batch_size * length))
    for q0 in range(0, length, rows):
        q = torch.arange(q0, min(q0 + rows, length), device=device)
        same = documents[:, q, None] == documents[:, None, :]  # (B, rows, L)
        expected = _expected(q[:, None], kv[None], window) & same
        if not torch.equal(_evaluate(mask_function, batch, q[:, None], kv[None])[:, 0],
                           expected):
            return False
    return True


def positions_in_documents(starts: torch.Tensor) -> torch.Tensor:
    """int32 (B, L): each token's position within its document, from ``document_starts``."""
    index = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
    first = torch.where(starts, index, 0).cummax(-1).values
    return (index - first).to(torch.int32)
