"""The eager reference: the teaching text's values, SDPA's semantics, and exact gradients."""

import pytest
import torch
import torch.nn.functional as F

from attention_ops import reference

# "Your journey starts with one step", 3-d embeddings from the teaching text.
INPUTS = torch.tensor(
    [[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
     [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]]
)


def randn(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


def test_simplified_self_attention_reproduces_the_teaching_text():
    context = reference.simplified_self_attention(INPUTS)
    torch.testing.assert_close(context[1], torch.tensor([0.4419, 0.6515, 0.5683]),
                               atol=1e-4, rtol=0)


def test_simplified_self_attention_is_unscaled_softmax_of_dot_products():
    x = randn(2, 5, 3)
    expected = torch.softmax(x @ x.transpose(1, 2), dim=-1) @ x
    torch.testing.assert_close(reference.simplified_self_attention(x), expected)


def test_simplified_self_attention_rejects_wrong_rank():
    with pytest.raises(ValueError, match="shape"):
        reference.simplified_self_attention(torch.ones(3))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lq, lk", [(7, 7), (5, 9), (9, 5)])  # square, wide and tall causal
def test_matches_torch_sdpa(causal, lq, lk):
    q, k, v = randn(2, 3, lq, 8), randn(2, 3, lk, 8), randn(2, 3, lk, 8)
    out = reference.scaled_dot_product_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal))


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float64])
def test_masks_follow_sdpa(mask_dtype):
    q, k, v = randn(2, 2, 6, 4), randn(2, 2, 9, 4), randn(2, 2, 9, 4)
    mask = torch.rand(2, 1, 6, 9) > 0.3
    if mask_dtype != torch.bool:
        mask = randn(2, 1, 6, 9)
    out = reference.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.7)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.7)
    torch.testing.assert_close(out, expected)


def test_fully_masked_rows_give_zeros_and_neg_inf_lse():
    q, k, v = randn(1, 1, 4, 4), randn(1, 1, 5, 4), randn(1, 1, 5, 4)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2] = False  # query 2 sees nothing
    out, lse = reference.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                      return_lse=True)
    assert torch.equal(out[0, 0, 2], torch.zeros(4, dtype=out.dtype))
    assert lse[0, 0, 2] == float("-inf")
    assert torch.isfinite(out).all()


def test_grouped_query_attention_repeats_each_kv_head_for_its_group():
    q, k, v = randn(1, 6, 5, 4), randn(1, 2, 5, 4), randn(1, 2, 5, 4)
    out = reference.scaled_dot_product_attention(q, k, v, causal=True)
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1),
                                              v.repeat_interleave(3, 1), is_causal=True)
    torch.testing.assert_close(out, expected)


def test_lse_is_logsumexp_of_scaled_masked_scores():
    q, k, v = randn(1, 2, 5, 4), randn(1, 2, 5, 4), randn(1, 2, 5, 4)
    _, lse = reference.scaled_dot_product_attention(q, k, v, causal=True, scale=0.5,
                                                    return_lse=True)
    scores = (q @ k.transpose(-2, -1) * 0.5).masked_fill(
        ~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(lse, scores.logsumexp(-1))


def test_explicit_keep_mask_drops_and_rescales_weights():
    q, k, v = randn(1, 1, 4, 3), randn(1, 1, 4, 3), randn(1, 1, 4, 3)
    keep = torch.rand(1, 1, 4, 4) > 0.5
    out = reference.scaled_dot_product_attention(q, k, v, dropout_p=0.5, keep_mask=keep)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 3**0.5, dim=-1)
    torch.testing.assert_close(out, (weights * keep / 0.5) @ v)


def test_dropout_drops_about_p_of_the_weights_and_keeps_the_expectation():
    # v = identity reads the dropped weights back out; 40 x 400 weights give a tight estimate.
    q, k = randn(1, 1, 40, 8), randn(1, 1, 400, 8)
    v = torch.eye(400, dtype=torch.float64)[None, None]
    p = 0.3
    torch.manual_seed(0)
    dropped = reference.scaled_dot_product_attention(q, k, v, dropout_p=p)
    weights = reference.scaled_dot_product_attention(q, k, v)
    kept = (dropped != 0).double().mean().item()
    n = dropped.numel()
    assert abs(kept - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    torch.testing.assert_close(dropped[dropped != 0], weights[dropped != 0] / (1 - p))


def test_dropout_matches_nn_dropout_under_the_same_seed():
    q, k, v = randn(1, 2, 6, 4), randn(1, 2, 6, 4), randn(1, 2, 6, 4)
    torch.manual_seed(3)
    out = reference.scaled_dot_product_attention(q, k, v, causal=True, dropout_p=0.5)
    torch.manual_seed(3)
    scores = (q @ k.transpose(-2, -1)).masked_fill(
        torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    weights = torch.nn.Dropout(0.5)(torch.softmax(scores / 2.0, dim=-1))
    torch.testing.assert_close(out, weights @ v)


def test_dropout_p_one_gives_zeros():
    q = randn(1, 1, 3, 4)
    out = reference.scaled_dot_product_attention(q, q, q, dropout_p=1.0)
    assert torch.equal(out, torch.zeros_like(out))


def test_compute_dtype_upcasts_half_inputs():
    q = randn(1, 1, 3, 4, dtype=torch.float16)
    out, lse = reference.scaled_dot_product_attention(q, q, q, compute_dtype=torch.float64,
                                                      return_lse=True)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_are_exact_under_gradcheck(causal):
    q, k, v = (randn(1, 2, 4, 3).requires_grad_() for _ in range(3))
    assert torch.autograd.gradcheck(
        lambda q, k, v: reference.scaled_dot_product_attention(q, k, v, causal=causal),
        (q, k, v))


def test_gradients_with_gqa_and_keep_mask_are_exact_under_gradcheck():
    q = randn(1, 4, 3, 2).requires_grad_()
    k, v = (randn(1, 2, 5, 2).requires_grad_() for _ in range(2))
    keep = torch.rand(1, 4, 3, 5) > 0.4
    assert torch.autograd.gradcheck(
        lambda q, k, v: reference.scaled_dot_product_attention(
            q, k, v, dropout_p=0.4, keep_mask=keep), (q, k, v))


@pytest.mark.parametrize(
    "shapes, message",
    [
        (((2, 3, 4), (2, 3, 4), (2, 3, 4)), "4-D"),
        (((1, 3, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)), "multiple"),
        (((1, 2, 4, 8), (1, 2, 4, 6), (1, 2, 4, 6)), "head dims"),
        (((1, 2, 4, 8), (1, 2, 5, 8), (1, 2, 4, 8)), "same heads and seqlen"),
        (((2, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)), "batch"),
    ],
)
def test_bad_shapes_raise_value_error_naming_the_problem(shapes, message):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        reference.scaled_dot_product_attention(q, k, v)


def test_bad_dropout_raises():
    q = randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="dropout_p"):
        reference.scaled_dot_product_attention(q, q, q, dropout_p=1.5)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float64])
def test_causal_rule_and_mask_apply_together(mask_dtype):
    q, k, v = randn(1, 2, 5, 4), randn(1, 2, 5, 4), randn(1, 2, 5, 4)
    mask = torch.rand(5, 5) > 0.4
    additive = torch.zeros(5, 5, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    both = mask & torch.ones(5, 5, dtype=torch.bool).tril()
    out = reference.scaled_dot_product_attention(
        q, k, v, causal=True, attn_mask=mask if mask_dtype == torch.bool else additive)
    torch.testing.assert_close(out, reference.scaled_dot_product_attention(q, k, v,
                                                                           attn_mask=both))
