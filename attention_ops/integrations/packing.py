"""Batches as packed sequences for ``flash_attention_varlen``: the cumulative lengths that cut
a padded batch, or rows of packed documents, into the sequences that attend to each other.

A padded batch is not copied into a shorter stream: its (B * L) tokens stay where they are,
each row's real tokens become one sequence, and each run of padding between them (the end of
one row and the start of the next) two: its pad queries with no keys (zeros out, zero
gradient) and its pad keys, which no query sees. So no token count has to be read on the host,
nothing is gathered or scattered, and the padded output comes back in place with zeros at the
pads.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

from attention_ops.fused_path import fused_path_problem
from attention_ops.kernels import PackedSequences
from attention_ops.sdpa import attend
from attention_ops.varlen import flash_attention_varlen

T = TypeVar("T")


def padded_batch(padding: torch.Tensor, q_length: int) -> PackedSequences:
    """The packing of a padded batch, with no host read.

    Args:
        padding: bool (B, S), True at real key tokens, which must form one run per row (left,
            right or both sides padded; a row may be all padding).
        q_length: L <= S, the queries being the last L key positions of each row (L = S
            without a KV cache).

    Returns:
        3 * B + 2 sequences over the flattened (B * L) queries and (B * S) keys: for each row
        the padding before its real tokens (after the previous row's) as pad queries with no
        keys and pad keys with no queries, then the real queries with the real keys; then the
        last row's trailing padding the same way. Causal attention within a real sequence,
        bottom-right aligned, is the row's causal attention.
    """
    seqlen = padding.shape[1]
    real = padding.sum(-1, dtype=torch.int32)
    first = padding.to(torch.int32).argmax(-1).to(torch.int32)  # 0 for a row of padding
    offset = seqlen - q_length  # key position of query 0
    q_first = (first - offset).clamp(0, q_length)
    q_end = (first + real - offset).clamp(0, q_length)
    q_gaps = _pad_runs(q_first, q_length - q_end)
    k_gaps = _pad_runs(first, seqlen - first - real)
    zero = torch.zeros_like(real)
    # Per row: its leading pad queries, its leading pad keys, its real tokens; then the same
    # two for the last row's trailing padding.
    q_counts = torch.cat([torch.stack([q_gaps[:-1], zero, q_end - q_first], -1).flatten(),
                          q_gaps[-1:], zero[:1]])
    k_counts = torch.cat([torch.stack([zero, k_gaps[:-1], real], -1).flatten(),
                          zero[:1], k_gaps[-1:]])
    cu_q, cu_k = (F.pad(c.cumsum(0, dtype=torch.int32), (1, 0)) for c in (q_counts, k_counts))
    return PackedSequences(cu_q, cu_k, max_seqlen=seqlen)


def _pad_runs(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(B + 1,) lengths of the padding runs of the flattened rows, from each row's padding
    before and after its real tokens: row 0's leading padding, each row's trailing padding
    with the next row's leading padding, the last row's trailing padding."""
    return torch.cat([before[:1], before[1:] + after[:-1], after[-1:]])


def memoized_per_tensor(fn: Callable[[torch.Tensor], T]) -> Callable[[torch.Tensor], T]:
    """``fn`` remembering its last argument: the layers of one forward pass share the same
    position ids, so only the first of them reads them on the host."""
    last: list = [None, -1, None]  # weak reference to the tensor, its version, the result

    @functools.wraps(fn)
    def cached(t: torch.Tensor) -> T:
        ref, version, result = last
        if ref is not None and ref() is t and version == t._version:
            return result
        result = fn(t)
        last[:] = [weakref.ref(t), t._version, result]
        return result

    return cached


@memoized_per_tensor
def packed_documents(position_ids: torch.Tensor) -> PackedSequences:
    """The packing of rows of documents laid end to end, each numbered from its first position.

    A document starts at each row's first token and wherever a position is not the previous
    one plus 1 (e.g. 0 1 2 0 1 0 1 2 3 holds three). Finding the starts reads the batch on the
    host once (a synchronisation on a GPU; repeated calls on the same tensor reuse it).

    Args:
        position_ids: integer (B, L), or (L,).

    Returns:
        One sequence per document over the flattened (B * L) tokens, queries and keys alike.
    """
    position_ids = position_ids.reshape(-1, position_ids.shape[-1])
    starts = torch.ones(position_ids.shape, dtype=torch.bool, device=position_ids.device)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    cu = F.pad(starts.flatten().nonzero().flatten(), (0, 1), value=starts.numel())
    cu = cu.to(torch.int32)
    return PackedSequences(cu, cu, int((cu[1:] - cu[:-1]).max()))


def attend_packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: PackedSequences,
                  **options) -> torch.Tensor:
    """Each sequence of ``packing`` attending to itself, bottom-right aligned.

    Inputs the fused kernel takes run ``flash_attention_varlen``; others (float64, CPU tensors
    without the interpreter, a head dim over 256) run ``attend`` one sequence at a time, which
    reads the cumulative lengths on the host and warns or, in strict mode, raises.

    Args:
        q: (Tq, Hq, D) the flattened batch's queries; k: (Tk, Hkv, D); v: (Tk, Hkv, Dv).
        packing: the sequences.
        options: the score keywords of ``flash_attention_varlen`` but ``align`` (causal,
            window, dropout_p, scale, softcap, sinks, ...).

    Returns:
        (Tq, Hq, Dv); zeros for a query whose sequence has no keys.
    """
    options = dict(options, align="bottom_right")
    hq, hk, hv = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (1, H, T, D) views
    if fused_path_problem(hq, hk, hv, scale=options.get("scale")) is None:
        return flash_attention_varlen(q, k, v, packing.cu_seqlens_q, packing.cu_seqlens_k,
                                      max_seqlen_q=packing.max_seqlen,
                                      max_seqlen_k=packing.max_seqlen, **options)
    out = q.new_zeros(q.shape[0], q.shape[1], v.shape[2])
    cu_q, cu_k = packing.cu_seqlens_q.tolist(), packing.cu_seqlens_k.tolist()
    for q0, q1, k0, k1 in zip(cu_q, cu_q[1:], cu_k, cu_k[1:], strict=False):
        if q1 > q0 and k1 > k0:
            out[q0:q1] = attend(hq[:, :, q0:q1], hk[:, :, k0:k1], hv[:, :, k0:k1],
                                **options)[0].transpose(0, 1)
    return out
