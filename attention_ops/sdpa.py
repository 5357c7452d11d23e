"""``scaled_dot_product_attention``: a drop-in for PyTorch's, on the fused kernel when it can.

Calls the fused kernel covers (no mask, a bool one, or a float one that does not require grad;
supported device, dtype and head dim; a finite positive scale) run ``flash_attention``; every
other valid call runs the eager math in ``attention_ops.reference`` with the same semantics as
``torch.nn.functional.scaled_dot_product_attention``. Leaving the fused kernel warns once per
reason (outside torch.compile), or raises under ``strict()`` / ``set_strict(True)``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Iterator

import torch

from attention_ops import reference
from attention_ops.flash import fused_attention
from attention_ops.fused_path import fused_path_problem
from attention_ops.options import ScoreMods, score_mods
from attention_ops.validation import check_dropout_p, check_mask, check_sdpa_inputs

# Computed in float32 on the eager path, as torch's math backend does.
HALF_DTYPES = (torch.float16, torch.bfloat16)


class FusedPathUnavailableError(RuntimeError):
    """Raised in strict mode when a call would leave the fused kernel for the eager path."""


_strict = False
_warned_reasons: set[str] = set()


def set_strict(enabled: bool = True) -> bool:
    """Make calls that cannot use the fused kernel raise instead of warning; returns the old
    setting.

    Args:
        enabled: True raises ``FusedPathUnavailableError`` where the eager path would run;
            False (the default mode) runs the eager path and warns once per reason.
    """
    global _strict
    previous, _strict = _strict, bool(enabled)
    return previous


@contextlib.contextmanager
def strict(enabled: bool = True) -> Iterator[None]:
    """Context manager form of ``set_strict``: the previous setting returns on exit.

    Example:
        >>> with attention_ops.strict():
        ...     out = attention_ops.scaled_dot_product_attention(q, k, v, is_causal=True)
    """
    previous = set_strict(enabled)
    try:
        yield
    finally:
        set_strict(previous)


def _leave_fused_path(reason: str) -> None:
    """Raise in strict mode; otherwise warn the first time ``reason`` comes up.

    torch.compile cannot trace ``warnings.warn`` without a graph break, so code being
    compiled does not warn; strict mode raises there as well.
    """
    if _strict:
        raise FusedPathUnavailableError(f"scaled_dot_product_attention: {reason} (strict mode)")
    if reason not in _warned_reasons and not torch.compiler.is_compiling():
        _warned_reasons.add(reason)
        warnings.warn(
            f"scaled_dot_product_attention runs the eager path: {reason}",
            UserWarning,
            stacklevel=3,
        )


def _shapes(*tensors: torch.Tensor) -> str:
    return ", ".join(str(tuple(t.shape)) for t in tensors)


def _check_argument_types(attn_mask: object, dropout_p: object, scale: object) -> None:
    """The TypeErrors torch's SDPA raises for arguments of the wrong type, with its wording."""
    for name, value, expected, ok in (
        ("attn_mask", attn_mask, "Tensor",
         attn_mask is None or isinstance(attn_mask, torch.Tensor)),
        ("dropout_p", dropout_p, "float", _is_number(dropout_p)),
        ("scale", scale, "float", scale is None or _is_number(scale)),
    ):
        if not ok:
            raise TypeError(f"scaled_dot_product_attention(): argument '{name}' must be "
                            f"{expected}, not {type(value).__name__}")


def _is_number(value: object) -> bool:
    """A Python number or a one-element tensor, as torch's float arguments accept."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, numbers.Real)


def _as_4d(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, enable_gqa: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Broadcast the leading dims and flatten them to (B, H, L, E), views where possible.

    The dim before (L, E) is the heads dim. With ``enable_gqa`` key/value keep their own
    head count (the kernels serve each key/value head to Hq // Hkv query heads); otherwise
    heads broadcast like any leading dim, as in torch's matmul.

    Returns:
        q (B, Hq, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev) and the leading dims of the
        output (..., Hq), or () for unbatched (L, E) inputs, so the output (B, Hq, L, Ev)
        reshapes to (..., Hq, L, Ev).
    """
    dims = max(query.dim(), key.dim(), value.dim())
    ndim = max(dims, 3)
    query, key, value = (t.view((1,) * (ndim - t.dim()) + t.shape) for t in (query, key, value))
    heads_q, heads_k, heads_v = query.shape[-3], key.shape[-3], value.shape[-3]
    try:
        batch = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
        if not enable_gqa:
            heads_q = heads_k = heads_v = torch.broadcast_shapes(
                (heads_q,), (heads_k,), (heads_v,))[0]
    except RuntimeError as err:
        raise ValueError(f"query, key, value leading dims do not broadcast: "
                         f"{_shapes(query, key, value)}") from err
    if enable_gqa:
        if 0 in (heads_k, heads_v) or heads_q % heads_k != 0 or heads_q % heads_v != 0:
            raise ValueError(f"with enable_gqa, key heads ({heads_k}) and value heads "
                             f"({heads_v}) must divide query heads ({heads_q})")
        if heads_k != heads_v:  # each side serves the query heads on its own
            key = key.repeat_interleave(heads_q // heads_k, dim=-3)
            value = value.repeat_interleave(heads_q // heads_v, dim=-3)
            heads_k = heads_v = heads_q
    flat = math.prod(batch)
    q = query.expand(*batch, heads_q, *query.shape[-2:]).reshape(flat, heads_q, *query.shape[-2:])
    k = key.expand(*batch, heads_k, *key.shape[-2:]).reshape(flat, heads_k, *key.shape[-2:])
    v = value.expand(*batch, heads_v, *value.shape[-2:]).reshape(flat, heads_v, *value.shape[-2:])
    return q, k, v, (*batch, heads_q) if dims > 2 else ()


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention``, fused where it can be.

    Args:
        query: (..., Hq, L, E) queries; leading dims broadcast against key's and value's.
        key: (..., Hkv, S, E) keys.
        value: (..., Hkv, S, Ev) values.
        attn_mask: broadcastable to (..., Hq, L, S); bool means "True takes part", a float
            mask (float32 or the query dtype) is added to the scores. Both run fused, but a
            float mask that requires grad runs the eager path (the kernels compute no mask
            gradient).
        dropout_p: drop probability on the attention weights, survivors scaled by 1/(1-p).
            Dropout acts whenever p > 0 (pass 0.0 in eval). The fused path drops with
            probability p rounded to a multiple of 2**-16 (its random numbers have 16 bits)
            and scales survivors by the exact 1/(1-p).
        is_causal: query i attends to keys j <= i, top-left aligned when L != S. With
            ``attn_mask`` both apply, as torch 2.13 computes it (its documentation calls the
            pair an error, its implementation accepts it).
        scale: multiplies the scores; default 1/sqrt(E), the float64 ``1.0 / math.sqrt(E)``
            torch computes. A NaN or infinite scale gives what torch's math backend gives:
            NaN throughout (for E, S > 0), but where an infinite scale meets a score whose
            products q_e * k_e all share one sign.
        enable_gqa: Hkv may divide Hq (grouped-query attention); otherwise heads broadcast.

    Returns:
        (..., Hq, L, Ev) in the input dtype. A query row whose keys are all masked gives zeros.

    Raises:
        ValueError: on inputs torch's SDPA rejects (shapes that do not line up, mixed dtypes
            or devices, a mask that does not broadcast, ``dropout_p`` outside [0, 1]).
        TypeError: for an argument of the wrong type, as torch raises (e.g. a list mask).
        FusedPathUnavailableError: in strict mode, where the call would run the eager path.

    Example:
        >>> out = scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, E)
    """
    _check_argument_types(attn_mask, dropout_p, scale)
    check_sdpa_inputs(query, key, value, enable_gqa)
    dropout_p = check_dropout_p(float(dropout_p))
    scale = None if scale is None else float(scale)
    q, k, v, lead = _as_4d(query, key, value, enable_gqa)
    if attn_mask is not None:
        check_mask(attn_mask, query, (*lead, q.shape[2], k.shape[2]), allow_float=True)
        if attn_mask.dtype in HALF_DTYPES:  # its gradient sums broadcast dims in float32
            attn_mask = attn_mask.float()
        attn_mask = attn_mask.expand(*lead, q.shape[2], k.shape[2]).reshape(
            q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if scale is not None and not math.isfinite(scale):
        out = _attend_with_non_finite_scale(q, k, v, attn_mask, is_causal, dropout_p, scale)
    else:
        out = attend(q, k, v, attn_mask=attn_mask, causal=is_causal, dropout_p=dropout_p,
                     scale=scale)
    return out.reshape(*lead, q.shape[2], v.shape[3])


def _attend_with_non_finite_scale(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
    causal: bool, dropout_p: float, scale: float,
) -> torch.Tensor:
    """Torch's math backend for a NaN or infinite scale, on the eager path.

    torch multiplies q and k by sqrt(|scale|) each (negating q for a negative scale) and adds
    the masks as -inf, so a NaN or inf score stays NaN under a masked key; the eager path's
    ``scale * (q @ k^T)`` and its masking by replacement would give zeros or finite rows there.
    """
    _leave_fused_path(fused_path_problem(q, k, v, attn_mask, scale))
    root = math.sqrt(abs(scale))
    visible = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device)
    if causal:
        visible = visible.tril()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        visible = visible & attn_mask
    bias = torch.zeros(visible.shape, device=q.device).masked_fill(~visible, float("-inf"))
    if attn_mask is not None and attn_mask.is_floating_point():
        bias = bias + attn_mask
    return _eager(q * math.copysign(root, scale), k * root, v,
                  ScoreMods(1.0, dropout_p=dropout_p, attn_mask=bias))


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mods: ScoreMods) -> torch.Tensor:
    """The eager math in the input dtype, computed in float32 for half inputs as torch's math
    backend does."""
    return reference.attention_from_mods(
        q, k, v, mods, compute_dtype=torch.float32 if q.dtype in HALF_DTYPES else None,
    ).to(q.dtype)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    window: tuple[int | None, int | None] | None = None,
    align: str = "top_left",
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fused kernel where it can run, else the eager math with the same semantics (a
    warning once per reason, or ``FusedPathUnavailableError`` in strict mode).

    Args:
        q: (B, Hq, Lq, D); k: (B, Hkv, Lk, D); v: (B, Hkv, Lk, Dv), Hkv dividing Hq, shapes
            already consistent (the callers check them).
        attn_mask: None, or bool / float broadcastable to (B, Hq, Lq, Lk).
        causal, dropout_p, scale, window, align, softcap, alibi_slopes, sinks: as in
            ``flash_attention`` (scale may be anything finite torch accepts: a scale the
            kernel does not take runs the eager path).

    Returns:
        (B, Hq, Lq, Dv) in the input dtype.
    """
    problem = fused_path_problem(q, k, v, attn_mask, scale)
    mods = score_mods(q, k.shape[2], scale=scale, causal=causal, dropout_p=dropout_p,
                      window=window, align=align, softcap=softcap, alibi_slopes=alibi_slopes,
                      sinks=sinks, attn_mask=attn_mask, fused=problem is None)
    if problem is None:
        return fused_attention(q, k, v, mods)
    _leave_fused_path(problem)
    return _eager(q, k, v, mods)
