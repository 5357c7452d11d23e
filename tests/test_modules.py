"""The teaching text's modules: its printed values, both backends, and clear input errors."""

import pytest
import torch

import attention_ops as ao
from attention_ops.reference import scaled_dot_product_attention as reference_sdpa

INPUTS = torch.tensor(
    [[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
     [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]]
)
BATCH = torch.stack((INPUTS, INPUTS))
BACKENDS = ["eager", "triton"]


def first_row(module_factory, seed, x, backend):
    """Build the module as the teaching text does (seeded CPU generator), run it on x's device."""
    torch.manual_seed(seed)
    with torch.device("cpu"):
        module = module_factory(backend)
    return module.to(x.device)(x)[0].detach()


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_attention_v1_reproduces_the_teaching_text(backend):
    row = first_row(lambda b: ao.SelfAttentionV1(3, 2, backend=b), 123, INPUTS, backend)
    torch.testing.assert_close(row, torch.tensor([0.2996, 0.8053]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_attention_v2_reproduces_the_teaching_text(backend):
    row = first_row(lambda b: ao.SelfAttentionV2(3, 2, backend=b), 789, INPUTS, backend)
    torch.testing.assert_close(row, torch.tensor([-0.0739, 0.0713]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_attention_reproduces_the_teaching_text(backend):
    out = first_row(lambda b: ao.CausalAttention(3, 2, 6, 0.0, backend=b), 123, BATCH,
                    backend)
    assert out.shape == (6, 2)
    torch.testing.assert_close(out[0], torch.tensor([-0.4519, 0.2216]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_head_wrapper_reproduces_the_teaching_text(backend):
    out = first_row(lambda b: ao.MultiHeadAttentionWrapper(3, 2, 6, 0.0, num_heads=2,
                                                           backend=b), 123, BATCH, backend)
    assert out.shape == (6, 4)
    torch.testing.assert_close(out[0], torch.tensor([-0.4519, 0.2216, 0.4772, 0.1063]),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_head_attention_reproduces_the_teaching_text(backend):
    out = first_row(lambda b: ao.MultiHeadAttention(3, 2, 6, 0.0, num_heads=2, backend=b),
                    123, BATCH, backend)
    torch.testing.assert_close(out[0], torch.tensor([0.3190, 0.4858]), atol=1e-4, rtol=0)


def test_causal_attention_masks_the_future():
    torch.manual_seed(0)
    attn = ao.CausalAttention(3, 4, 6, 0.0, backend="eager")
    x = torch.rand(1, 6, 3)
    changed = x.clone()
    changed[0, 4:] += 1.0  # only the last two tokens change
    torch.testing.assert_close(attn(x)[0, :4], attn(changed)[0, :4])


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_head_attention_matches_per_head_reference(backend):
    torch.manual_seed(1)
    mha = ao.MultiHeadAttention(8, 12, 10, 0.0, num_heads=3, backend=backend)
    x = torch.randn(2, 7, 8)
    b, n = 2, 7

    def heads(t):
        return t.view(b, n, 3, 4).transpose(1, 2)

    context = reference_sdpa(heads(mha.W_query(x)), heads(mha.W_key(x)), heads(mha.W_value(x)),
                             causal=True)
    expected = mha.out_proj(context.transpose(1, 2).reshape(b, n, 12))
    torch.testing.assert_close(mha(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("module", ["causal", "mha"])
def test_dropout_acts_in_training_and_not_in_eval(module):
    torch.manual_seed(2)
    if module == "causal":
        attn = ao.CausalAttention(4, 4, 8, 0.5, backend="eager")
    else:
        attn = ao.MultiHeadAttention(4, 4, 8, 0.5, num_heads=2, backend="eager")
    x = torch.randn(2, 8, 4)
    train_out = attn(x)
    attn.eval()
    eval_out = attn(x)
    attn.dropout.p = 0.0
    torch.testing.assert_close(eval_out, attn(x))
    assert not torch.allclose(train_out, eval_out)


def test_triton_backend_applies_dropout_in_training_only():
    torch.manual_seed(4)
    mha = ao.MultiHeadAttention(8, 8, 16, 0.5, num_heads=2, backend="triton")
    x = torch.randn(1, 16, 8)
    train_out = mha(x)
    mha.eval()
    eval_out = mha(x)
    expected = ao.MultiHeadAttention(8, 8, 16, 0.5, num_heads=2, backend="eager")
    expected.load_state_dict(mha.state_dict())
    torch.testing.assert_close(eval_out, expected.eval()(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(train_out, eval_out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_agree_between_backends(backend):
    torch.manual_seed(5)
    mha = ao.MultiHeadAttention(8, 16, 20, 0.0, num_heads=2, backend=backend)
    eager = ao.MultiHeadAttention(8, 16, 20, 0.0, num_heads=2, backend="eager")
    eager.load_state_dict(mha.state_dict())
    x = torch.randn(2, 19, 8)
    mha(x).square().sum().backward()
    eager(x).square().sum().backward()
    for (name, p), p_eager in zip(mha.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_eager.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_auto_backend_uses_eager_math_on_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("auto must not take the fused path for CPU tensors")

    monkeypatch.setattr("attention_ops.modules.flash_attention", fail)
    monkeypatch.setattr("attention_ops.modules.scaled_dot_product_attention", fail)
    with torch.device("cpu"):
        ao.MultiHeadAttention(4, 4, 8, 0.0, num_heads=2)(torch.randn(1, 8, 4))


def test_modules_register_the_causal_mask_buffer():
    mha = ao.MultiHeadAttention(4, 4, 8, 0.0, num_heads=2)
    assert torch.equal(mha.mask, torch.triu(torch.ones(8, 8), diagonal=1))
    assert "mask" in mha.state_dict()


@pytest.mark.parametrize(
    "make, x, message",
    [
        (lambda: ao.SelfAttentionV1(3, 2), torch.rand(6, 4), "d_in=3"),
        (lambda: ao.SelfAttentionV2(3, 2), torch.rand(6), "input"),
        (lambda: ao.CausalAttention(3, 2, 6, 0.0), torch.rand(6, 3), "batch"),
        (lambda: ao.CausalAttention(3, 2, 6, 0.0), torch.rand(1, 7, 3), "context_length=6"),
        (lambda: ao.MultiHeadAttention(3, 4, 6, 0.0, 2), torch.rand(1, 7, 3), "context_length"),
        (lambda: ao.MultiHeadAttentionWrapper(3, 2, 6, 0.0, 2), torch.rand(2, 6, 5), "d_in"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(make, x, message):
    with pytest.raises(ValueError, match=message):
        make()(x)


def test_bad_construction_raises_value_error():
    with pytest.raises(ValueError, match="divisible"):
        ao.MultiHeadAttention(3, 5, 6, 0.0, num_heads=2)
    with pytest.raises(ValueError, match="backend"):
        ao.SelfAttentionV1(3, 2, backend="cuda")


def test_sdpa_backend_matches_eager():
    torch.manual_seed(6)
    mha = ao.MultiHeadAttention(8, 16, 20, 0.0, num_heads=2, backend="sdpa")
    eager = ao.MultiHeadAttention(8, 16, 20, 0.0, num_heads=2, backend="eager")
    eager.load_state_dict(mha.state_dict())
    x = torch.randn(2, 19, 8)
    torch.testing.assert_close(mha(x), eager(x), atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
def test_auto_backend_on_cuda_falls_back_with_a_warning_for_uncovered_heads(monkeypatch):
    monkeypatch.setattr("attention_ops.sdpa._warned_reasons", set())  # warn-once starts fresh
    torch.manual_seed(7)
    mha = ao.MultiHeadAttention(8, 640, 16, 0.0, num_heads=2).cuda()  # head_dim 320 > 256
    x = torch.randn(1, 16, 8, device="cuda")
    with pytest.warns(UserWarning, match="head_dim 320"):
        out = mha(x)
    eager = ao.MultiHeadAttention(8, 640, 16, 0.0, num_heads=2, backend="eager").cuda()
    eager.load_state_dict(mha.state_dict())
    torch.testing.assert_close(out, eager(x))
