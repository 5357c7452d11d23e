"""The score options of one attention call, checked once, carried unchanged to the kernels.

``score_mods`` checks the public keywords (scale, causal, dropout, window, alignment, softcap,
ALiBi slopes, sinks, a mask) and builds a ``ScoreMods``; every public function calls it, the
eager reference included. The custom ops take its fields as their arguments
(``MODS_SCHEMA``) and rebuild it with ``ScoreMods(*fields)``; the kernels read it by
attribute (``attention_ops.kernels.score.score_args``). Nothing here imports Triton.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from attention_ops.validation import (
    check_alibi_slopes,
    check_align,
    check_dropout_p,
    check_mask,
    check_scale,
    check_sinks,
    check_softcap,
    check_window,
)

# Custom-op schema types of the fields (their annotations, as strings).
_SCHEMA_TYPES = {"float": "float", "bool": "bool", "int | None": "int?",
                 "float | None": "float?", "torch.Tensor | None": "Tensor?"}


@dataclass(frozen=True)
class ScoreMods:
    """How the scores of one call are formed, checked (``score_mods``).

    Query i's diagonal is key d_i = i, or i + Lk - Lq with ``bottom_right`` (each packed
    sequence, each cache row, from its own lengths). ``causal`` hides keys j > d_i; the window
    keeps d_i - window_left <= j <= d_i + window_right (None: that side unbounded). ``softcap``
    c turns s into c * tanh(s / c). ``attn_mask`` is bool (True takes part) or float (added),
    expanded to (B, Hq, Lq, Lk) (zero strides broadcast); ``alibi_slopes`` float32 (Hq,) or
    (B, Hq) (packed sequences: (N, Hq), a row per sequence); ``sinks`` (Hq,). Slopes and
    sinks may have any strides. ``dropout_p`` acts on the softmax weights.
    """

    scale: float
    causal: bool = False
    dropout_p: float = 0.0
    window_left: int | None = None
    window_right: int | None = None
    bottom_right: bool = False
    softcap: float | None = None
    attn_mask: torch.Tensor | None = None
    alibi_slopes: torch.Tensor | None = None
    sinks: torch.Tensor | None = None

    @property
    def window(self) -> tuple[int | None, int | None] | None:
        """The public ``window`` pair, None without one."""
        if self.window_left is None and self.window_right is None:
            return None
        return self.window_left, self.window_right

    @property
    def align(self) -> str:
        return "bottom_right" if self.bottom_right else "top_left"

    def bounds(self) -> tuple[int | None, int | None]:
        """(left, right) band around the diagonal, causal folded in; None where unbounded."""
        right = self.window_right
        if self.causal:
            right = 0 if right is None else min(right, 0)
        return self.window_left, right

    def fields(self) -> tuple:
        """The field values in order: a custom op's arguments after its tensors."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def replace(self, **changes) -> ScoreMods:
        return dataclasses.replace(self, **changes)


# The fields as custom-op arguments, e.g. "float scale, bool causal, ...".
MODS_SCHEMA = ", ".join(f"{_SCHEMA_TYPES[f.type]} {f.name}" for f in dataclasses.fields(ScoreMods))


def score_mods(
    q: torch.Tensor,
    seqlen_k: int,
    *,
    scale: float | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    window: tuple[int | None, int | None] | None = None,
    align: str = "top_left",
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    sequences: int | None = None,
    fused: bool = True,
    any_float_dtype: bool = False,
    allow_grad: bool = False,
) -> ScoreMods:
    """Check the score keywords of a call with queries ``q`` (B, Hq, Lq, D) and ``seqlen_k``
    keys, and build its ``ScoreMods``.

    ``scale`` None is 1/sqrt(D). ``fused``: the scale must be finite and positive (the
    kernels' promise); otherwise (the eager math) any real scale passes, and D = 0 takes 1.
    ``attn_mask`` must broadcast to (B, Hq, Lq, seqlen_k). ``sequences``: q (1, Hq, T, D)
    packs that many sequences, and the slopes may hold a row per sequence.
    ``any_float_dtype`` / ``allow_grad``: the slopes and sinks of a float64 (differentiable)
    reference computation.

    Raises:
        ValueError: naming the first argument that is wrong.
    """
    dropout_p = check_dropout_p(dropout_p)
    if fused:
        scale = check_scale(scale, q.shape[-1])
    elif scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0  # an empty dot is 0
    else:
        scale = float(scale)
    if attn_mask is not None:
        check_mask(attn_mask, q, (*q.shape[:3], seqlen_k), allow_float=True)
    window, align, softcap = check_window(window), check_align(align), check_softcap(softcap)
    check_alibi_slopes(alibi_slopes, q, any_float_dtype=any_float_dtype, allow_grad=allow_grad,
                       sequences=sequences)
    check_sinks(sinks, q, any_float_dtype=any_float_dtype)
    left, right = window if window is not None else (None, None)
    return ScoreMods(scale, bool(causal), dropout_p, left, right, align == "bottom_right",
                     softcap, attn_mask, alibi_slopes, sinks)
