"""``flash_attention_varlen``: attention over packed sequences, each attending only to itself,
with no L x L mask and no host synchronisation."""

from __future__ import annotations

import torch

from attention_ops.flash import fused_attention
from attention_ops.fused_path import require_fused_path
from attention_ops.kernels import PackedSequences
from attention_ops.options import score_mods
from attention_ops.validation import (
    check_cu_seqlens,
    check_max_seqlen,
    check_packed_inputs,
)


def flash_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    causal: bool = False,
    align: str = "top_left",
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    return_lse: bool = False,
    generator: torch.Generator | None = None,
    check_seqlens: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fused attention over packed sequences: sequence n's queries
    q[cu_seqlens_q[n]:cu_seqlens_q[n+1]] attend only to its keys
    k[cu_seqlens_k[n]:cu_seqlens_k[n+1]], with every rule of ``flash_attention`` applied per
    sequence (the causal diagonal and window placed by ``align`` from that sequence's own
    lengths, ALiBi distances within it, sinks, dropout).

    Nothing reads a tensor's value on the host: the grid comes from the shapes and each
    program finds its sequence on the device, so the call never synchronises and traces under
    ``torch.compile(fullgraph=True)`` with cu_seqlens as a tensor input.

    Args:
        q: (Tq, Hq, D) the queries of all sequences one after the other, any strides (e.g. a
            slice of a packed (T, 3, H, D) projection); float16, bfloat16 or float32.
        k: (Tk, Hkv, D) keys, Hkv dividing Hq.
        v: (Tk, Hkv, Dv) values.
        cu_seqlens_q, cu_seqlens_k: int32 (N + 1,) cumulative lengths from 0, on q's device;
            sequences of length 0 are allowed.
        max_seqlen_q, max_seqlen_k: optional hints (ints), the longest sequence; they only
            pick the autotuning bucket.
        causal, align, window, softcap, alibi_slopes, sinks, dropout_p, scale, generator: as in
            ``flash_attention``; alibi_slopes float32 (Hq,), (N, Hq) with row n for sequence n
            (FlashAttention's (batch, heads)), or (1, Hq). Dropout's stream is keyed by
            (head, global query token, key index within its sequence), so a result is
            reproducible from the seed, and a single sequence draws what ``flash_attention``
            draws on it.
        return_lse: also return the natural-log LSE (Hq, Tq) float32.
        check_seqlens: also check the values of cu_seqlens (start at 0, non-decreasing, end at
            the token counts), which reads them on the host: always done for CPU tensors
            outside ``torch.compile``, on CUDA only when asked (it synchronises).

    Returns:
        out (Tq, Hq, Dv) contiguous in q's dtype; with ``return_lse`` also lse (Hq, Tq).

    Raises:
        ValueError: on a wrong dtype, rank or device of cu_seqlens, differing sequence counts,
            shapes that do not line up, and every argument error ``flash_attention`` names.
    """
    check_packed_inputs(q, k, v)
    check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, q, k, check_values=True if check_seqlens else None)
    hints = [hint for hint in (check_max_seqlen("max_seqlen_q", max_seqlen_q),
                               check_max_seqlen("max_seqlen_k", max_seqlen_k))
             if hint is not None]
    heads_first_q = q.permute(1, 0, 2).unsqueeze(0)  # (1, Hq, Tq, D): B = 1 for the checks
    mods = score_mods(heads_first_q, k.shape[0], scale=scale, causal=causal,
                      dropout_p=dropout_p, window=window, align=align, softcap=softcap,
                      alibi_slopes=alibi_slopes, sinks=sinks,
                      sequences=cu_seqlens_q.shape[0] - 1)
    require_fused_path("flash_attention_varlen", q, k, v)
    packing = PackedSequences(cu_seqlens_q, cu_seqlens_k, max(hints) if hints else None)
    return fused_attention(q, k, v, mods, packing=packing, generator=generator,
                           return_lse=return_lse)
