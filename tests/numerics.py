"""The pass bar shared by the kernel tests: a fused result may be off the float64 reference by
at most twice what eager PyTorch in the same dtype is off, plus one rounding of the values in
that dtype and a float32 floor.

The floor is what float32 arithmetic owes whatever the summation order: a score s rounded in
float32 moves its weight exp(s) by |s| * 2**-24 relatively, and the sums add a few roundings
more. Eager's own float32 error depends on the CPU's BLAS code path, so a bar made of it alone
would move with the machine; the floor scales with the largest score instead."""

from __future__ import annotations

import torch

from attention_ops.reference import scaled_dot_product_attention as reference_sdpa

FLOAT32_ROUNDINGS = 8  # roundings of 2**-24 per unit of score the floor allows


def assert_within_eager_error(name: str, fused: torch.Tensor, eager: torch.Tensor,
                              exact: torch.Tensor, *, max_score: float = 0.0,
                              working_dtype: torch.dtype | None = None) -> None:
    """``fused`` and ``eager`` in the input dtype, ``exact`` in float64; ``max_score`` the
    largest |scaled score| of the problem; ``working_dtype`` the precision the result passed
    through, when coarser than its own (the sinks' float32 gradient sums rows of half-precision
    O and dO)."""
    assert fused.shape == exact.shape, f"{name}: shape {fused.shape} != {exact.shape}"
    assert not fused.isnan().any(), f"{name}: NaN in the fused result"
    fused_err = (fused.double() - exact).abs().max().item()
    eager_err = (eager.double() - exact).abs().max().item()
    rounding_dtype = working_dtype or fused.dtype
    rounding = ((exact.to(rounding_dtype) + 0.3 - 0.3).double() - exact).abs().max().item()
    fp32_floor = (FLOAT32_ROUNDINGS * 2**-24 * (1.0 + max_score)
                  * max(1.0, exact.abs().max().item()))
    assert fused_err <= 2 * eager_err + rounding + fp32_floor, (
        f"{name}: fused error {fused_err:.3e} > 2 x eager error {eager_err:.3e} "
        f"+ rounding {rounding:.3e} + fp32 floor {fp32_floor:.1e}"
    )


def _outputs_and_grads(fn, q, k, v, do, sinks=None):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    if sinks is None:
        out = fn(q, k, v)
    else:
        sinks = sinks.detach().requires_grad_()
        out = fn(q, k, v, sinks)
    out.backward(do.to(out.dtype))
    grads = {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}
    if sinks is not None:
        grads["dsinks"] = sinks.grad
    return grads


def assert_matches_reference(fused_fn, q, k, v, *, sinks=None, reference_fn=reference_sdpa,
                             max_score=None, **reference_kwargs) -> None:
    """Run ``fused_fn(q, k, v)`` (``fused_fn(q, k, v, sinks)`` with sinks) forward and backward
    with one random dO, and check the output and every gradient (the sinks' included) against
    ``reference_fn(q, k, v, [sinks=sinks,] **reference_kwargs)`` in float64 (the eager
    reference by default) with the eager-error bar: the same function in the input dtype is
    "eager". ``max_score`` defaults to the largest score of (B, H, L, D) inputs."""
    do = torch.randn(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)

    def reference(*tensors):
        extra = {"sinks": tensors[3]} if len(tensors) == 4 else {}
        return reference_fn(*tensors[:3], **reference_kwargs, **extra)

    fused = _outputs_and_grads(fused_fn, q, k, v, do, sinks)
    eager = _outputs_and_grads(reference, q, k, v, do, sinks)
    exact = _outputs_and_grads(
        lambda *t: reference(*t),
        *(t.double() for t in (q, k, v)), do.double(),
        None if sinks is None else sinks.double(),
    )
    if max_score is None:
        max_score = max_score_of(q, k, reference_kwargs.get("scale"))
    for name in exact:
        assert_within_eager_error(name, fused[name], eager[name], exact[name],
                                  max_score=max_score, working_dtype=q.dtype)


def max_score_of(q: torch.Tensor, k: torch.Tensor, scale: float | None) -> float:
    """max |scale * q_i . k_j| over every pair (grouped heads broadcast)."""
    q, k = q.double(), k.double()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return (q @ k.transpose(-2, -1)).abs().max().item() * scale if q.numel() and k.numel() else 0.0
