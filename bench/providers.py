"""The attention implementations the sweep compares, one small class each.

A provider says why it cannot run a case on this machine (``unavailable``) or builds the
attention function for it (``build``): ``attention(q, k, v) -> out`` over (b, h, n, d) tensors,
with the case's masking, sliding window, softcap and dropout probability. A case of padded
documents is plain causal attention for every provider; packed documents (one row) run on
``ours`` (``flash_attention_varlen``) and ``eager`` (a block-diagonal mask) only. A decoding
case's query is (b, h, 1, d) and its keys and values (b, h_kv, n, d), the cache: ``ours`` runs
``flash_attention_with_kvcache``, SDPA and FlexAttention attend to every key (the newest
token's causal row) with their grouped-query switch. Whatever a provider needs besides the
inputs (an SDPA mask, a FlexAttention block mask, cache lengths) is built there, before any
timing.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from attention_ops import (
    flash_attention,
    flash_attention_varlen,
    flash_attention_with_kvcache,
    reference,
)
from attention_ops.fused_path import fused_path_problem
from bench.cases import Case

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

PACKED_ELSEWHERE = "packed documents run on ours (varlen) and eager; padded, on every provider"


class Provider:
    """Base class: a named attention implementation, available everywhere by default."""

    name: str
    # Runs on CUDA tensors only: a sweep without CUDA leaves it out (and says so once).
    needs_cuda = False

    def unavailable(self, case: Case) -> str | None:
        """Why this provider cannot run ``case`` on this machine, or None when it can."""
        return None

    def build(self, case: Case) -> AttentionFn:
        """The attention function for ``case`` (called once per case, before any timing)."""
        raise NotImplementedError


class Eager(Provider):
    """The package's eager reference math in the input dtype (the teaching text's attention)."""

    name = "eager"

    def build(self, case: Case) -> AttentionFn:
        return functools.partial(reference.scaled_dot_product_attention,
                                 dropout_p=case.dropout_p, **case.reference_options())


class Ours(Provider):
    """``attention_ops.flash_attention``: the fused Triton kernels (``flash_attention_varlen``
    for packed documents, ``flash_attention_with_kvcache`` when decoding)."""

    name = "ours"

    def unavailable(self, case: Case) -> str | None:
        probe = torch.empty(1, 1, 1, case.d, dtype=case.dtype, device=case.device)
        return fused_path_problem(probe, probe, probe)

    def build(self, case: Case) -> AttentionFn:
        if case.decode:  # every row's cache holds n keys
            lengths = torch.full((case.b,), case.n, dtype=torch.int32, device=case.device)
            return lambda q, k, v: flash_attention_with_kvcache(q, k, v, lengths)
        options = dict(causal=case.causal, dropout_p=case.dropout_p, window=case.window_arg,
                       softcap=case.softcap)
        if not case.packed:
            return functools.partial(flash_attention, **options)
        cu_seqlens, longest = case.cu_seqlens(), max(case.documents)

        def packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # (1, h, T, d) <-> (T, h, d): views, the kernel takes the strides.
            out = flash_attention_varlen(*(t[0].transpose(0, 1) for t in (q, k, v)), cu_seqlens,
                                         cu_seqlens, max_seqlen_q=longest,
                                         max_seqlen_k=longest, **options)
            return out.transpose(0, 1)[None]

        return packed


class Sdpa(Provider):
    """``F.scaled_dot_product_attention`` pinned to one backend with ``sdpa_kernel``.

    SDPA has no softcap. A sliding window goes in as an explicit bool ``attn_mask`` (causal and
    window together, ``is_causal`` off), built once per case; backends that take no mask
    (``takes_mask`` False: the flash backend) cannot run windowed cases. Decoding needs no mask
    (the one query sees every key) and shares key/value heads with ``enable_gqa``. The math
    backend runs on any device, the others on CUDA only (``needs_cuda``).
    """

    # The length of the probe's small problem (see _probe).
    PROBE_N = 128

    def __init__(self, name: str, backend: SDPBackend, *, takes_mask: bool = True,
                 needs_cuda: bool = True):
        self.name, self.backend, self.takes_mask = name, backend, takes_mask
        self.needs_cuda = needs_cuda

    def unavailable(self, case: Case) -> str | None:
        if case.packed:
            return PACKED_ELSEWHERE
        if case.softcap is not None:
            return "no softcap in F.scaled_dot_product_attention"
        if case.window is not None and not self.takes_mask:
            return f"{self.name} takes no attn_mask, which a sliding window needs"
        if self.needs_cuda and case.device.type != "cuda":
            return "no CUDA"
        return self._probe(case)

    def build(self, case: Case) -> AttentionFn:
        return self._attention(case, case.n)

    def _attention(self, case: Case, n: int) -> AttentionFn:
        """The attention of ``case`` for length ``n`` (the case's, or the probe's)."""
        mask = None
        if case.window is not None:  # True where a query sees the key: causal and the window
            mask = reference.visibility_mask(n, n, causal=True, window=case.window_arg,
                                             device=case.device)
        is_causal = case.causal and mask is None and not case.decode
        enable_gqa = case.h_kv != case.h

        def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # The backward runs the kernel family the forward picked; no context needed there.
            with sdpa_kernel(self.backend):
                return F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=case.dropout_p,
                    enable_gqa=enable_gqa)

        return attention

    def _probe(self, case: Case) -> str | None:
        """Run a small problem of the case's dtype, head dim, masking (the window's mask too),
        dropout and query heads per key/value head through the backend (forward and backward;
        the forward alone when decoding).

        SDPA refuses unsupported inputs with "No available kernel" and explains why in
        warnings; those explanations become the reason.
        """
        q_length = 1 if case.decode else self.PROBE_N
        q, k = (torch.randn(shape, dtype=case.dtype, device=case.device,
                            requires_grad=not case.decode)
                for shape in ((1, case.h // case.h_kv, q_length, case.d),
                              (1, 1, self.PROBE_N, case.d)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = self._attention(case, self.PROBE_N)(q, k, k)
                if not case.decode:
                    out.sum().backward()
            except RuntimeError as exc:
                reasons = [str(w.message) for w in caught] or [str(exc)]
                return "; ".join(" ".join(r.split()) for r in reasons)
        return None


def _causal_mask_mod(window: tuple[int, int] | None):
    """FlexAttention's mask_mod of causal attention, within ``window`` (the case's
    ``window_arg``: i - W <= j <= i) when given."""

    def mask_mod(b, h, q_idx, kv_idx):
        return reference.visible_keys(q_idx, kv_idx, causal=True, window=window)

    return mask_mod


def _softcap_score_mod(cap: float):
    """FlexAttention's score_mod of a softcap: c * tanh(s / c)."""

    def score_mod(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    return score_mod


def flex_modifiers(case: Case) -> dict[str, object]:
    """``flex_attention``'s keywords for ``case``: a ``block_mask`` for causal (with the sliding
    window: i - W <= j <= i), so FlexAttention skips the blocks it hides, and a ``score_mod``
    for the softcap. Empty for full attention without softcap; when decoding (the query sees
    every key) ``enable_gqa`` where key/value heads are shared."""
    if case.decode:
        return {"enable_gqa": case.h_kv != case.h}
    mods: dict[str, object] = {}
    if case.causal:
        mods["block_mask"] = create_block_mask(_causal_mask_mod(case.window_arg), None, None,
                                               case.n, case.n,
                                               device=case.device)
    if case.softcap is not None:
        mods["score_mod"] = _softcap_score_mod(case.softcap)
    return mods


class Flex(Provider):
    """FlexAttention compiled with ``torch.compile`` (fullgraph, so it cannot fall back to
    the unfused math silently), with a block mask from ``create_block_mask`` for causal and
    the sliding window and a ``score_mod`` for the softcap (``flex_modifiers``). It has no
    dropout. A decoding case's single query row makes it run its decoding kernel."""

    name = "flex"
    needs_cuda = True

    def unavailable(self, case: Case) -> str | None:
        if case.packed:
            return PACKED_ELSEWHERE
        if case.dropout_p > 0:
            return "no dropout in FlexAttention"
        return None if case.device.type == "cuda" else "no CUDA"

    def build(self, case: Case) -> AttentionFn:
        # A fresh compile per case: recompiles accumulating across shapes would eventually hit
        # dynamo's recompile limit, after which it runs the uncompiled function.
        torch._dynamo.reset()
        compiled = torch.compile(flex_attention, fullgraph=True, dynamic=False)
        return functools.partial(compiled, **flex_modifiers(case))


PROVIDERS: tuple[Provider, ...] = (
    Eager(),
    Sdpa("sdpa-math", SDPBackend.MATH, needs_cuda=False),
    Sdpa("sdpa-flash", SDPBackend.FLASH_ATTENTION, takes_mask=False),
    Sdpa("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION),
    Sdpa("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
    Flex(),
    Ours(),
)
PROVIDER_NAMES = tuple(p.name for p in PROVIDERS)


def providers_named(names: list[str]) -> list[Provider]:
    """The providers called ``names``, in the order given."""
    by_name = {p.name: p for p in PROVIDERS}
    return [by_name[name] for name in names]
