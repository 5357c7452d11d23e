"""The attention implementations the sweep compares, one small class each.

A provider says why it cannot run a case on this machine (``unavailable``) or builds the
attention function for it (``build``): ``attention(q, k, v) -> out`` over (b, h, n, d) tensors,
with the case's masking and dropout probability.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from attention_ops import flash_attention, reference
from attention_ops.validation import fused_path_problem
from bench.cases import Case

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Provider:
    """Base class: a named attention implementation, available everywhere by default."""

    name: str

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
        return functools.partial(reference.scaled_dot_product_attention, causal=case.causal,
                                 dropout_p=case.dropout_p)


class Ours(Provider):
    """``attention_ops.flash_attention``: the fused Triton kernels."""

    name = "ours"

    def unavailable(self, case: Case) -> str | None:
        probe = torch.empty(1, 1, 1, case.d, dtype=case.dtype, device=case.device)
        return fused_path_problem(probe, probe, probe)

    def build(self, case: Case) -> AttentionFn:
        return functools.partial(flash_attention, causal=case.causal, dropout_p=case.dropout_p)


class Sdpa(Provider):
    """``F.scaled_dot_product_attention`` pinned to one backend with ``sdpa_kernel``."""

    def __init__(self, name: str, backend: SDPBackend):
        self.name, self.backend = name, backend

    def unavailable(self, case: Case) -> str | None:
        if case.device.type != "cuda":
            return "no CUDA"
        return self._probe(case)

    def build(self, case: Case) -> AttentionFn:
        def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # The backward runs the kernel family the forward picked; no context needed there.
            with sdpa_kernel(self.backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=case.causal,
                                                      dropout_p=case.dropout_p)

        return attention

    def _probe(self, case: Case) -> str | None:
        """Run a small problem of the case's dtype, head dim, masking and dropout through the
        backend.

        SDPA refuses unsupported inputs with "No available kernel" and explains why in
        warnings; those explanations become the reason.
        """
        q = torch.randn(1, 1, 128, case.d, dtype=case.dtype, device=case.device,
                        requires_grad=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.build(case)(q, q, q).sum().backward()
            except RuntimeError as exc:
                reasons = [str(w.message) for w in caught] or [str(exc)]
                return "; ".join(" ".join(r.split()) for r in reasons)
        return None


def _causal_mask_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


class Flex(Provider):
    """FlexAttention compiled with ``torch.compile`` (fullgraph, so it cannot fall back to
    the unfused math silently), with a causal block mask from ``create_block_mask``. It has
    no dropout."""

    name = "flex"

    def unavailable(self, case: Case) -> str | None:
        if case.dropout_p > 0:
            return "no dropout in FlexAttention"
        return None if case.device.type == "cuda" else "no CUDA"

    def build(self, case: Case) -> AttentionFn:
        # A fresh compile per case: recompiles accumulating across shapes would eventually hit
        # dynamo's recompile limit, after which it runs the uncompiled function.
        torch._dynamo.reset()
        compiled = torch.compile(flex_attention, fullgraph=True, dynamic=False)
        block_mask = (
            create_block_mask(_causal_mask_mod, None, None, case.n, case.n, device=case.device)
            if case.causal
            else None
        )
        return functools.partial(compiled, block_mask=block_mask)


PROVIDERS: tuple[Provider, ...] = (
    Eager(),
    Sdpa("sdpa-math", SDPBackend.MATH),
    Sdpa("sdpa-flash", SDPBackend.FLASH_ATTENTION),
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
