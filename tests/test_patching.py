"""patch_sdpa: unmodified code calling F.scaled_dot_product_attention runs ours, and undoing
the patch (directly, by a with block, nested) restores exactly what was there."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attention_ops as ao
from attention_ops import patching

TORCH_SDPA = F.scaled_dot_product_attention


@pytest.fixture(autouse=True)
def restore_torch_sdpa(monkeypatch):
    """A failing test must not leave the patch behind for the next one."""
    monkeypatch.setattr(F, "scaled_dot_product_attention", TORCH_SDPA)
    monkeypatch.setattr(patching, "_installed", [])


class NanoGPTAttention(nn.Module):
    """nanoGPT's CausalSelfAttention: fused QKV projection, then F.scaled_dot_product_attention."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0,
                                           is_causal=attn_mask is None)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


def output_and_grads(model: nn.Module, x: torch.Tensor, **kwargs) -> list[torch.Tensor]:
    model.zero_grad()
    out = model(x, **kwargs)
    out.square().sum().backward()
    return [out.detach(), *(p.grad.clone() for p in model.parameters())]


def test_patched_nanogpt_attention_runs_the_fused_kernel_and_matches_torch():
    torch.manual_seed(0)
    model, x = NanoGPTAttention(n_embd=32, n_head=2), torch.randn(2, 21, 32)  # odd length
    expected = output_and_grads(model, x)
    with ao.patch_sdpa(), ao.strict():  # strict: a fallback would raise
        got = output_and_grads(model, x)
    # float32, the same sums in another order: measured a few ulps apart (1e-7 relative);
    # a wrong mask, scale or layout errs by 1e-2 or more.
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_patched_calls_go_through_attention_ops():
    model, x = NanoGPTAttention(n_embd=16, n_head=2), torch.randn(1, 5, 16)
    # a float mask that requires grad: the fused kernels compute no mask gradient
    mask = torch.zeros(5, 5, requires_grad=True)
    model(x, attn_mask=mask)  # torch's function: strict mode does not apply
    with ao.patch_sdpa(), ao.strict():
        with pytest.raises(ao.FusedPathUnavailableError, match="requires grad"):
            model(x, attn_mask=mask)


def test_with_block_restores_torchs_function_even_after_an_error():
    with pytest.raises(KeyError), ao.patch_sdpa():
        assert F.scaled_dot_product_attention is ao.scaled_dot_product_attention
        raise KeyError
    assert F.scaled_dot_product_attention is TORCH_SDPA


def test_plain_call_stays_until_undo_and_undo_twice_is_harmless():
    patch = ao.patch_sdpa()
    assert torch.nn.functional.scaled_dot_product_attention is ao.scaled_dot_product_attention
    patch.undo()
    patch.undo()
    assert F.scaled_dot_product_attention is TORCH_SDPA


def test_nested_patches_restore_in_reverse_order():
    with ao.patch_sdpa():
        with ao.patch_sdpa():
            pass
        assert F.scaled_dot_product_attention is ao.scaled_dot_product_attention
    assert F.scaled_dot_product_attention is TORCH_SDPA


def test_undoing_an_outer_patch_first_raises_and_changes_nothing():
    outer = ao.patch_sdpa()
    inner = ao.patch_sdpa()
    with pytest.raises(RuntimeError, match="reverse order"):
        outer.undo()
    assert F.scaled_dot_product_attention is ao.scaled_dot_product_attention
    inner.undo()
    outer.undo()
    assert F.scaled_dot_product_attention is TORCH_SDPA


def test_undo_refuses_to_drop_a_replacement_installed_after_the_patch():
    def someone_elses_sdpa(*args, **kwargs):
        return TORCH_SDPA(*args, **kwargs)

    patch = ao.patch_sdpa()
    F.scaled_dot_product_attention = someone_elses_sdpa
    with pytest.raises(RuntimeError, match="replaced after this patch"):
        patch.undo()
    assert F.scaled_dot_product_attention is someone_elses_sdpa
