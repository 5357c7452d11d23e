"""Every input check of the public API, in one place.

Checks raise ValueError with a message that names the offending argument, before any kernel
launches. Nothing here imports Triton: the eager reference uses these checks too.
"""

from __future__ import annotations

import math
import numbers

import torch

ALIGNS = ("top_left", "bottom_right")


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str,
               same_dtype: bool) -> None:
    """Tensors of rank len(layout), floating, on one device (and of one dtype)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != len(layout):
            raise ValueError(f"{name} must be {len(layout)}-D ({', '.join(layout)}), "
                             f"got shape {_shape(t)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if same_dtype and not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def _check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_axis: int,
                 token_axis: int) -> None:
    """k and v agree on heads and tokens, q and k on the head dim, Hkv divides Hq."""
    if k.shape[head_axis] != v.shape[head_axis] or k.shape[token_axis] != v.shape[token_axis]:
        raise ValueError(
            f"k and v must have the same heads and seqlen, got k {_shape(k)}, v {_shape(v)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k head dims differ: q {_shape(q)}, k {_shape(k)}")
    if k.shape[head_axis] == 0 or q.shape[head_axis] % k.shape[head_axis] != 0:
        raise ValueError(f"query heads ({q.shape[head_axis]}) must be a multiple of key/value "
                         f"heads ({k.shape[head_axis]})")


def check_attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, same_dtype: bool = True
) -> None:
    """Check q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) for attention."""
    _check_qkv(q, k, v, ("batch", "heads", "seqlen", "head_dim"), same_dtype)
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(
            f"batch sizes differ: q {_shape(q)}, k {_shape(k)}, v {_shape(v)}"
        )
    _check_heads(q, k, v, head_axis=1, token_axis=2)


def check_packed_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Check packed q (Tq, Hq, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv) for attention."""
    _check_qkv(q, k, v, ("tokens", "heads", "head_dim"), same_dtype=True)
    _check_heads(q, k, v, head_axis=1, token_axis=0)


def check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, q: torch.Tensor, k: torch.Tensor, *,
                     check_values: bool | None) -> None:
    """Cumulative sequence lengths for packed q (Tq, ...) and k (Tk, ...): int32 (N + 1,)
    tensors on the queries' device, N >= 1 the same for both. With ``check_values`` also what
    needs their values (read on the host, a synchronisation on a GPU): each starts at 0, never
    decreases and ends at its token count. None checks the values where reading them costs no
    synchronisation (CPU tensors outside torch.compile).

    Raises:
        ValueError: naming the argument.
    """
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(cu, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
        if cu.dtype != torch.int32:
            raise ValueError(f"{name} must be int32, got {cu.dtype}")
        if cu.dim() != 1 or cu.shape[0] < 2:
            raise ValueError(f"{name} must be 1-D (num_seqs + 1,) with num_seqs >= 1, got "
                             f"shape {_shape(cu)}")
        if cu.device != q.device:
            raise ValueError(f"{name} is on {cu.device}, the queries on {q.device}")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k count different sequences: "
                         f"{cu_seqlens_q.shape[0] - 1} and {cu_seqlens_k.shape[0] - 1}")
    if check_values is None:
        check_values = cu_seqlens_q.device.type == "cpu" and not torch.compiler.is_compiling()
    if not check_values:
        return
    for name, cu, tokens in (("cu_seqlens_q", cu_seqlens_q, q.shape[0]),
                             ("cu_seqlens_k", cu_seqlens_k, k.shape[0])):
        values = cu.tolist()
        if values[0] != 0:
            raise ValueError(f"{name} must start at 0, got {values[0]}")
        if any(b < a for a, b in zip(values, values[1:], strict=False)):
            raise ValueError(f"{name} must be non-decreasing, got {values}")
        if values[-1] != tokens:
            raise ValueError(f"{name} must end at the token count {tokens}, got {values[-1]}")


def check_max_seqlen(name: str, hint) -> int | None:
    """An optional longest-sequence hint: None or an int >= 0."""
    if hint is None:
        return None
    if isinstance(hint, bool) or not isinstance(hint, numbers.Integral) or hint < 0:
        raise ValueError(f"{name} must be an int >= 0 or None, got {hint!r}")
    return int(hint)


def check_sdpa_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      enable_gqa: bool) -> None:
    """The input errors torch's SDPA raises for (..., L, E) tensors, as ValueErrors."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < (3 if enable_gqa else 2):
            raise ValueError(f"{name} must be at least {3 if enable_gqa else 2}-D "
                             f"(..., {'heads, ' if enable_gqa else ''}seqlen, dim), "
                             f"got shape {_shape(t)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not query.dtype == key.dtype == value.dtype:
        raise ValueError(f"query, key, value must share a dtype, got {query.dtype}, "
                         f"{key.dtype}, {value.dtype}")
    if not query.device == key.device == value.device:
        raise ValueError(f"query, key, value must be on one device, got {query.device}, "
                         f"{key.device}, {value.device}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key embedding dims differ: {_shape(query)}, {_shape(key)}")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"key and value sequence lengths differ: {_shape(key)}, "
                         f"{_shape(value)}")


def check_dropout_p(dropout_p: float) -> float:
    """``dropout_p`` as a float in [0, 1]."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise ValueError(f"dropout_p must be a number in [0, 1], got {type(dropout_p).__name__} "
                         f"{dropout_p!r}")
    if not 0.0 <= dropout_p <= 1.0:  # NaN fails too
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    return float(dropout_p)


def check_scale(scale: float | None, head_dim: int) -> float:
    """The score scale as a finite positive float: ``scale``, or 1/sqrt(head_dim) for None."""
    if scale is None:
        if head_dim == 0:
            raise ValueError("head_dim is 0: the default scale 1/sqrt(head_dim) is undefined")
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise ValueError(f"scale must be a positive float or None, got {type(scale).__name__} "
                         f"{scale!r}")
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite positive float or None, got {scale}")
    return float(scale)


def check_mask(attn_mask: torch.Tensor, query: torch.Tensor, scores_shape: tuple[int, ...],
               *, allow_float: bool) -> None:
    """``attn_mask`` is a tensor on the query's device that broadcasts to ``scores_shape``:
    bool, or (``allow_float``) float32 or the query dtype, added to the scores."""
    if not isinstance(attn_mask, torch.Tensor):
        raise ValueError(f"attn_mask must be a torch.Tensor or None, got "
                         f"{type(attn_mask).__name__}")
    allowed = (torch.bool, torch.float32, query.dtype) if allow_float else (torch.bool,)
    if attn_mask.dtype not in allowed:
        raise ValueError(f"attn_mask must be {' or '.join(map(str, dict.fromkeys(allowed)))}, "
                         f"got {attn_mask.dtype}")
    if attn_mask.device != query.device:
        raise ValueError(f"attn_mask is on {attn_mask.device}, the queries on {query.device}")
    try:
        fits = torch.broadcast_shapes(attn_mask.shape, scores_shape) == scores_shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"attn_mask of shape {_shape(attn_mask)} does not broadcast to the "
                         f"attention weights' shape {scores_shape}")


def check_window(window) -> tuple[int | None, int | None] | None:
    """A sliding window ``(left, right)`` as a pair of ints >= 0 or None (unbounded side).

    Query i with diagonal d_i sees key j only when ``d_i - left <= j <= d_i + right``.

    Returns:
        ``(left, right)`` as Python ints or None, or None when ``window`` is None or
        ``(None, None)`` (no window: every key is inside).

    Raises:
        ValueError: naming ``window`` when it is not a pair of (None or int >= 0).
    """
    if window is None:
        return None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a pair (left, right) of ints >= 0 or None, "
                         f"got {window!r}")
    sides = []
    for name, side in zip(("left", "right"), window, strict=True):
        if side is not None and (isinstance(side, bool) or not isinstance(side, numbers.Integral)
                                 or side < 0):
            raise ValueError(f"window {name} side must be an int >= 0 or None, got {side!r} "
                             f"in window={window!r}")
        sides.append(None if side is None else int(side))
    left, right = sides
    if left is None and right is None:
        return None
    return left, right


def check_align(align) -> str:
    """Where the causal diagonal and the window sit when Lq != Lk.

    ``"top_left"``: query i's diagonal is key i (torch SDPA's ``is_causal``);
    ``"bottom_right"``: it is key i + Lk - Lq, so the last query lines up with the last key.

    Raises:
        ValueError: naming ``align`` for any other value.
    """
    if not isinstance(align, str) or align not in ALIGNS:
        raise ValueError(f"align must be one of {', '.join(map(repr, ALIGNS))}, got {align!r}")
    return align


def check_softcap(softcap) -> float | None:
    """The logit soft-cap c (scores become c * tanh(s / c)) as a finite float > 0, or None.

    Raises:
        ValueError: naming ``softcap`` when it is not a number, not finite, or <= 0.
    """
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise ValueError(f"softcap must be a finite number > 0 or None, got "
                         f"{type(softcap).__name__} {softcap!r}")
    if not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"softcap must be a finite number > 0 or None, got {softcap}")
    return float(softcap)


def _check_per_head_tensor(name: str, t, q: torch.Tensor, shapes: list[tuple[int, ...]],
                           dtypes: tuple[torch.dtype, ...] | None, layout: str = "") -> None:
    """``layout`` names the shapes' dims for the error message, e.g. "(Hq,) or (B, Hq)"."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if tuple(t.shape) not in shapes:
        named = f" {layout}" if layout else ""
        raise ValueError(f"{name} must have shape {' or '.join(map(str, shapes))}{named}, "
                         f"got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must be {' or '.join(map(str, dict.fromkeys(dtypes)))}, "
                         f"got {t.dtype}")
    if t.device != q.device:
        raise ValueError(f"{name} is on {t.device}, the queries on {q.device}")


def check_alibi_slopes(slopes: torch.Tensor | None, q: torch.Tensor, *,
                       any_float_dtype: bool = False, allow_grad: bool = False,
                       sequences: int | None = None) -> None:
    """ALiBi slopes for queries ``q`` (B, Hq, Lq, D): float32, shape (Hq,) or (B, Hq), on
    the queries' device. Score (i, j) of head h gains ``-slope[b, h] * |j - d_i|``.

    None passes. ``any_float_dtype`` accepts any floating dtype instead of float32 only (for
    float64 computations, which compare against float64 copies of the slopes).
    ``allow_grad``: the caller differentiates through the slopes (the eager reference); the
    fused kernels do not, so by default slopes that require grad are refused while grad mode
    is on, rather than left without their gradient. ``sequences``: q (1, Hq, T, D) packs that
    many sequences, and the slopes are (Hq,) or (sequences, Hq), a row per sequence ((1, Hq),
    shared by all, passes too).

    Raises:
        ValueError: naming ``alibi_slopes`` on a wrong shape, dtype or device, or slopes that
            require grad.
    """
    if slopes is None:
        return
    heads = q.shape[1]
    if sequences is None:
        shapes, layout = [(heads,), (q.shape[0], heads)], "(Hq,) or (B, Hq)"
    else:
        shapes = list(dict.fromkeys([(heads,), (sequences, heads), (1, heads)]))
        layout = "(Hq,) or (num_seqs, Hq)"
    _check_per_head_tensor("alibi_slopes", slopes, q, shapes,
                           None if any_float_dtype else (torch.float32,), layout)
    if slopes.requires_grad and torch.is_grad_enabled() and not allow_grad:
        raise ValueError("alibi_slopes requires grad, but the fused kernels compute no slope "
                         "gradient: pass alibi_slopes.detach() (or run under torch.no_grad())")


def check_sinks(sinks: torch.Tensor | None, q: torch.Tensor, *,
                any_float_dtype: bool = False) -> None:
    """Attention sinks for queries ``q`` (B, Hq, Lq, D): one logit per query head, shape
    (Hq,), float32 or the queries' dtype, on the queries' device. ``exp(sinks[h])`` joins
    every softmax denominator of head h.

    None passes. ``any_float_dtype`` accepts any floating dtype (for float64 computations,
    which compare against float64 copies of the sinks).

    Raises:
        ValueError: naming ``sinks`` on a wrong shape, dtype or device.
    """
    if sinks is None:
        return
    _check_per_head_tensor("sinks", sinks, q, [(q.shape[1],)],
                           None if any_float_dtype else (torch.float32, q.dtype))


def check_kvcache_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         cache_seqlens: torch.Tensor, block_table: torch.Tensor | None) -> None:
    """Check a decoding call: q (B, Hq, Lq >= 1, D); a contiguous cache (B, Hkv, Lmax, D|Dv)
    or, with an int32 (B, max_blocks) block_table, a paged one (num_blocks, Hkv, block_size,
    D|Dv); int32 (B,) cache_seqlens. Where reading them costs no synchronisation (CPU tensors
    outside torch.compile) also the values: lengths within the capacity, blocks that exist."""
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
    if not q.dtype == k_cache.dtype == v_cache.dtype:
        raise ValueError(f"q, k_cache, v_cache must share a dtype, got {q.dtype}, "
                         f"{k_cache.dtype}, {v_cache.dtype}")
    batch, heads_q, seqlen_q, head_dim = q.shape
    if seqlen_q < 1:
        raise ValueError(f"q must hold at least one query row, got shape {tuple(q.shape)}")
    if k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(f"k_cache and v_cache must agree but on the head dim, got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"q and k_cache head dims differ: {head_dim} and {k_cache.shape[3]}")
    heads_kv = k_cache.shape[1]
    if heads_kv == 0 or heads_q % heads_kv != 0:
        raise ValueError(f"query heads ({heads_q}) must be a multiple of key/value heads "
                         f"({heads_kv})")
    _check_int32_tensor("cache_seqlens", cache_seqlens, (batch,), q)
    if block_table is None:
        if k_cache.shape[0] != batch:
            raise ValueError(f"k_cache holds {k_cache.shape[0]} rows, q {batch}: a contiguous "
                             f"cache is (B, Hkv, Lmax, D) (pass block_table for a paged one)")
    else:
        if not isinstance(block_table, torch.Tensor) or block_table.dim() != 2:
            raise ValueError("block_table must be a 2-D (B, max_blocks) int32 tensor")
        _check_int32_tensor("block_table", block_table, (batch, block_table.shape[1]), q)
    capacity = cache_capacity(k_cache, block_table)
    if cache_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():
        # Value checks read the tensors: only where that costs no device synchronisation.
        lengths = cache_seqlens.tolist()
        if any(not 0 <= n <= capacity for n in lengths):
            raise ValueError(f"cache_seqlens must lie in [0, {capacity}] (the cache's "
                             f"capacity), got {lengths}")
        if block_table is not None:
            pages = k_cache.shape[2]
            for b, n in enumerate(lengths):
                used = block_table[b, :(n + pages - 1) // pages]
                if used.numel() and (used.min() < 0 or used.max() >= k_cache.shape[0]):
                    raise ValueError(f"block_table row {b} names blocks outside "
                                     f"[0, {k_cache.shape[0]}): {used.tolist()}")


def cache_capacity(k_cache: torch.Tensor, block_table: torch.Tensor | None) -> int:
    """The most keys a row of a KV cache holds: Lmax of a contiguous (B, Hkv, Lmax, D) cache,
    or max_pages * page_size of a paged (num_pages, Hkv, page_size, D) one."""
    if block_table is None:
        return k_cache.shape[2]
    return block_table.shape[1] * k_cache.shape[2]


def _check_int32_tensor(name: str, t, shape: tuple[int, ...], q: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise ValueError(f"{name} must be int32, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != q.device:
        raise ValueError(f"{name} is on {t.device}, q on {q.device}")


def check_inference_only(**tensors: torch.Tensor | None) -> None:
    """No tensor requires grad while grad mode is on (the call defines no backward)."""
    for name, t in tensors.items():
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} requires grad, but this call is inference only: run it "
                             f"under torch.no_grad() or torch.inference_mode()")


def check_num_splits(num_splits) -> int | None:
    """The key-split count of a decoding call: None (automatic) or an int >= 1."""
    if num_splits is None:
        return None
    if isinstance(num_splits, bool) or not isinstance(num_splits, numbers.Integral) \
            or num_splits < 1:
        raise ValueError(f"num_splits must be an int >= 1 or None, got {num_splits!r}")
    return int(num_splits)
