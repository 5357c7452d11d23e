"""The eager reference: the teaching text's values, SDPA's semantics, and exact gradients."""

import itertools
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from attention_ops import reference, validation

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


# The score pipeline: window, alignment, soft-cap, ALiBi, float masks, sinks, Dv != D.
# Each is checked against `naive_attention`, which spells the rules out with Python loops.

NEG_INF = float("-inf")


def naive_attention(q, k, v, *, scale=None, causal=False, window=None, align="top_left",
                    softcap=None, alibi_slopes=None, attn_mask=None, sinks=None):
    """Output and LSE one query at a time, one key at a time, in Python floats."""
    batch, heads, lq, dim = q.shape
    lk, group = k.shape[2], heads // k.shape[1]
    scale = dim**-0.5 if scale is None else scale
    if attn_mask is not None:
        attn_mask = attn_mask.expand(batch, heads, lq, lk)
    if alibi_slopes is not None and alibi_slopes.dim() == 1:
        alibi_slopes = alibi_slopes.expand(batch, heads)
    left, right = window if window is not None else (None, None)
    out = torch.zeros(batch, heads, lq, v.shape[-1], dtype=torch.float64)
    lse = torch.zeros(batch, heads, lq, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(lq):
                d = i if align == "top_left" else i + lk - lq
                logits = []
                for j in range(lk):
                    s = scale * sum(float(q[b, h, i, c]) * float(k[b, h // group, j, c])
                                    for c in range(dim))
                    if softcap is not None:
                        s = softcap * math.tanh(s / softcap)
                    if alibi_slopes is not None:
                        s -= float(alibi_slopes[b, h]) * abs(j - d)
                    visible = not (causal and j > d)
                    if left is not None and j < d - left:
                        visible = False
                    if right is not None and j > d + right:
                        visible = False
                    if attn_mask is not None:
                        if attn_mask.dtype == torch.bool:
                            visible = visible and bool(attn_mask[b, h, i, j])
                        else:
                            s += float(attn_mask[b, h, i, j])
                    logits.append(s if visible else NEG_INF)
                every = logits + ([float(sinks[h])] if sinks is not None else [])
                top = max(every)
                if top == NEG_INF:
                    lse[b, h, i] = NEG_INF
                    continue
                denominator = sum(math.exp(s - top) for s in every)
                lse[b, h, i] = top + math.log(denominator)
                for j, s in enumerate(logits):
                    out[b, h, i] += math.exp(s - top) / denominator * v[b, h // group, j]
    return out, lse


def assert_matches_naive(q, k, v, **kwargs):
    out, lse = reference.scaled_dot_product_attention(q, k, v, return_lse=True, **kwargs)
    expected_out, expected_lse = naive_attention(q, k, v, **kwargs)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(lse, expected_lse)


def qkv(lq, lk, *, batch=1, heads=2, kv_heads=None, dim=4, dim_v=None):
    return (randn(batch, heads, lq, dim), randn(batch, kv_heads or heads, lk, dim),
            randn(batch, kv_heads or heads, lk, dim_v or dim))


@pytest.mark.parametrize("window", [(2, 1), (0, 0), (None, 2), (3, None)])
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("lq, lk", [(6, 6), (4, 9), (9, 4)])
def test_window_keeps_keys_within_left_and_right_of_the_diagonal(window, align, lq, lk):
    assert_matches_naive(*qkv(lq, lk), window=window, align=align)


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("lq, lk", [(6, 6), (4, 9), (9, 4)])
def test_window_and_causal_both_apply(align, lq, lk):
    assert_matches_naive(*qkv(lq, lk), causal=True, window=(2, 3), align=align)


def test_visibility_mask_spells_out_the_rule():
    for align, shift in (("top_left", 0), ("bottom_right", 3)):
        mask = reference.visibility_mask(4, 7, causal=True, window=(1, None), align=align)
        expected = torch.tensor([[i + shift - 1 <= j <= i + shift for j in range(7)]
                                 for i in range(4)])
        assert torch.equal(mask, expected)


def test_causal_mask_stays_top_left():
    assert torch.equal(reference.causal_mask(3, 5), torch.ones(3, 5, dtype=torch.bool).tril())


@pytest.mark.parametrize("lq, lk", [(4, 9), (9, 4)])
def test_causal_top_left_is_the_default_and_matches_sdpa_is_causal(lq, lk):
    q, k, v = qkv(lq, lk)
    out = reference.scaled_dot_product_attention(q, k, v, causal=True, align="top_left")
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_bottom_right_causal_lines_the_last_query_up_with_the_last_key():
    q, k, v = qkv(4, 9)
    out = reference.scaled_dot_product_attention(q, k, v, causal=True, align="bottom_right")
    mask = torch.ones(4, 9, dtype=torch.bool).tril(diagonal=9 - 4)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_bottom_right_causal_with_more_queries_than_keys_empties_the_first_rows():
    q, k, v = qkv(9, 4)
    out, lse = reference.scaled_dot_product_attention(q, k, v, causal=True,
                                                      align="bottom_right", return_lse=True)
    assert torch.equal(out[:, :, :5], torch.zeros_like(out[:, :, :5]))
    assert torch.isneginf(lse[:, :, :5]).all() and torch.isfinite(lse[:, :, 5:]).all()
    assert_matches_naive(q, k, v, causal=True, align="bottom_right")


def test_softcap_is_c_tanh_of_the_scaled_score():
    q, k, v = qkv(5, 6)
    assert_matches_naive(q * 4, k * 4, v, softcap=2.5, causal=True)


def test_softcap_applies_before_the_float_mask():
    q, k, v = qkv(3, 5)
    mask = randn(3, 5) * 10
    out = reference.scaled_dot_product_attention(q, k, v, softcap=1.0, attn_mask=mask)
    scores = torch.tanh(q @ k.transpose(-2, -1) / 2.0) + mask
    torch.testing.assert_close(out, torch.softmax(scores, dim=-1) @ v)


@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_alibi_subtracts_slope_times_distance_to_the_diagonal(per_batch, align):
    q, k, v = qkv(4, 7, batch=2, heads=3)
    slopes = torch.rand(2, 3) if per_batch else torch.rand(3)
    assert_matches_naive(q, k, v, alibi_slopes=slopes, align=align)


def test_alibi_slopes_per_head_equal_the_same_slopes_for_every_batch():
    q, k, v = qkv(4, 7, batch=2, heads=3)
    slopes = torch.rand(3)
    out = reference.scaled_dot_product_attention(q, k, v, alibi_slopes=slopes)
    torch.testing.assert_close(out, reference.scaled_dot_product_attention(
        q, k, v, alibi_slopes=slopes.expand(2, 3).contiguous()))


def test_float_mask_with_neg_inf_hides_keys_and_may_empty_a_row():
    q, k, v = qkv(4, 6)
    mask = randn(1, 2, 4, 6)
    mask[..., 1, :] = NEG_INF  # query 1 sees nothing
    mask[..., 2, ::2] = NEG_INF
    out, lse = reference.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                      return_lse=True)
    assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))
    assert torch.isneginf(lse[:, :, 1]).all()
    assert_matches_naive(q, k, v, attn_mask=mask)


def test_sinks_join_every_softmax_denominator():
    q, k, v = qkv(5, 7, heads=3)
    assert_matches_naive(q, k, v, sinks=randn(3), causal=True)


def test_sinks_take_their_share_of_the_weights():
    # v = identity reads the weights back: each row sums to 1 - exp(sink - lse).
    q, k = randn(1, 2, 4, 3), randn(1, 2, 6, 3)
    v = torch.eye(6, dtype=torch.float64).expand(1, 2, 6, 6)
    sinks = torch.tensor([0.5, -1.0], dtype=torch.float64)
    weights, lse = reference.scaled_dot_product_attention(q, k, v, sinks=sinks,
                                                          return_lse=True)
    torch.testing.assert_close(weights.sum(-1), 1 - torch.exp(sinks[:, None] - lse))


def test_lse_with_sinks_is_log_of_exp_sink_plus_sum_exp_scores():
    q, k, v = qkv(3, 5)
    sinks = randn(2)
    _, lse = reference.scaled_dot_product_attention(q, k, v, sinks=sinks, return_lse=True)
    scores = q @ k.transpose(-2, -1) / 2.0
    torch.testing.assert_close(lse, torch.log(sinks.exp()[:, None] + scores.exp().sum(-1)))


def test_row_with_no_visible_key_but_a_sink_gives_zeros_and_lse_of_the_sink():
    q, k, v = qkv(4, 5)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2] = False
    sinks = torch.tensor([0.3, -2.0], dtype=torch.float64)
    out, lse = reference.scaled_dot_product_attention(q, k, v, attn_mask=mask, sinks=sinks,
                                                      return_lse=True)
    assert torch.equal(out[0, :, 2], torch.zeros(2, 4, dtype=out.dtype))
    assert torch.equal(lse[0, :, 2], sinks)
    assert torch.isfinite(out).all()


def test_sinks_gradient_is_exact_under_gradcheck():
    q, k, v = qkv(3, 4)
    sinks = randn(2).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s: reference.scaled_dot_product_attention(q, k, v, sinks=s, causal=True),
        (sinks,))


def test_sinks_gradient_is_minus_sum_of_sink_weight_times_delta():
    # d(sink_h) = -sum over (b, i) of exp(sink_h - lse) * rowsum(dO * O), the kernels' formula.
    q, k, v = qkv(5, 6, batch=2, heads=3)
    sinks = randn(3).requires_grad_()
    out, lse = reference.scaled_dot_product_attention(q, k, v, sinks=sinks, return_lse=True,
                                                      window=(2, 1))
    d_out = randn(*out.shape)
    out.backward(d_out)
    delta = (d_out * out).sum(-1)
    expected = -(torch.exp(sinks.detach()[:, None] - lse.detach()) * delta.detach()).sum((0, 2))
    torch.testing.assert_close(sinks.grad, expected)


def test_value_head_dim_may_differ_from_query_head_dim():
    q, k, v = qkv(5, 6, dim=4, dim_v=7)
    out = reference.scaled_dot_product_attention(q, k, v, causal=True)
    assert out.shape == (1, 2, 5, 7)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert_matches_naive(q, k, v, window=(1, 1), sinks=randn(2))


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_every_modifier_together_with_grouped_query_attention(align):
    q, k, v = qkv(5, 7, batch=2, heads=4, kv_heads=2, dim_v=3)
    mask = randn(2, 1, 5, 7)
    mask[0, 0, 1, 3] = NEG_INF
    assert_matches_naive(q, k, v, scale=0.8, causal=True, window=(3, 0), align=align,
                         softcap=1.5, alibi_slopes=torch.rand(2, 4), attn_mask=mask,
                         sinks=randn(4))


def test_gradients_of_every_modifier_together_are_exact_under_gradcheck():
    q = randn(1, 4, 3, 2).requires_grad_()
    k, v = (randn(1, 2, 5, 2).requires_grad_() for _ in range(2))
    sinks = randn(4).requires_grad_()
    slopes = torch.rand(4)
    assert torch.autograd.gradcheck(
        lambda q, k, v, sinks: reference.scaled_dot_product_attention(
            q, k, v, causal=True, window=(2, None), align="bottom_right", softcap=1.3,
            alibi_slopes=slopes, sinks=sinks),
        (q, k, v, sinks))


def test_float64_computation_takes_float64_slopes_and_sinks():
    q, k, v = qkv(3, 4)
    slopes, sinks = torch.rand(2, dtype=torch.float64), randn(2)
    half = (t.half() for t in (q, k, v))
    out = reference.scaled_dot_product_attention(*half, alibi_slopes=slopes, sinks=sinks,
                                                 compute_dtype=torch.float64)
    assert out.dtype == torch.float64


def test_neutral_modifier_values_change_nothing():
    q, k, v = (t.float() for t in qkv(3, 4))
    out = reference.scaled_dot_product_attention(
        q, k, v, alibi_slopes=torch.zeros(2), sinks=torch.full((2,), NEG_INF),
        window=(None, None), align="bottom_right")
    torch.testing.assert_close(out, reference.scaled_dot_product_attention(q, k, v))


def _float32_qkv():
    return tuple(t.float() for t in qkv(3, 4, batch=2, heads=2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": 3}, "window"),
        ({"window": (1,)}, "window"),
        ({"window": (1, 2, 3)}, "window"),
        ({"window": (-1, 0)}, "window"),
        ({"window": (0, 1.5)}, "window"),
        ({"window": (True, 0)}, "window"),
        ({"align": "center"}, "align"),
        ({"align": None}, "align"),
        ({"softcap": 0.0}, "softcap"),
        ({"softcap": -1.0}, "softcap"),
        ({"softcap": float("inf")}, "softcap"),
        ({"softcap": float("nan")}, "softcap"),
        ({"softcap": "2"}, "softcap"),
        ({"softcap": True}, "softcap"),
        ({"alibi_slopes": torch.rand(3)}, "alibi_slopes"),
        ({"alibi_slopes": torch.rand(2, 2, 1)}, "alibi_slopes"),
        ({"alibi_slopes": torch.rand(1, 2)}, "alibi_slopes"),
        ({"alibi_slopes": torch.ones(2, dtype=torch.int32)}, "alibi_slopes"),
        ({"alibi_slopes": torch.rand(2, dtype=torch.float64)}, "alibi_slopes"),
        ({"alibi_slopes": torch.rand(2, device="meta")}, "alibi_slopes"),
        ({"alibi_slopes": [0.5, 0.25]}, "alibi_slopes"),
        ({"sinks": torch.rand(2, 2)}, "sinks"),
        ({"sinks": torch.ones(2, dtype=torch.int64)}, "sinks"),
        ({"sinks": torch.rand(2, dtype=torch.float16)}, "sinks"),
        ({"sinks": torch.rand(2, device="meta")}, "sinks"),
    ],
)
def test_bad_modifier_values_raise_value_error_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        reference.scaled_dot_product_attention(*_float32_qkv(), **kwargs)


def test_check_helpers_return_normalised_values():
    assert validation.check_window((3, None)) == (3, None)
    assert validation.check_window([0, 2]) == (0, 2)
    assert validation.check_window((None, None)) is None
    assert validation.check_window(None) is None
    assert validation.check_align("bottom_right") == "bottom_right"
    assert validation.check_softcap(30) == 30.0 and validation.check_softcap(None) is None
    q = randn(2, 3, 4, 5, dtype=torch.float16)
    validation.check_alibi_slopes(torch.rand(2, 3), q)
    validation.check_sinks(torch.rand(3, dtype=torch.float16), q)
    validation.check_sinks(torch.rand(3, dtype=torch.float64), q, any_float_dtype=True)


def test_importing_the_reference_loads_no_triton():
    code = ("import sys, attention_ops.reference; "
            "print([m for m in sys.modules if m == 'triton' or m.startswith('triton.')])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]", f"import attention_ops.reference loads {loaded}"


# The per-sequence references against scaled_dot_product_attention run on each sequence (or
# each cache row) alone: empty sequences, Lq != Lk both ways, grouped heads, Dv != D.

SEQUENCES = [(3, 5), (0, 2), (4, 4), (2, 0), (5, 3)]  # (query length, key length)


def _cumulative(lengths):
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)


def packed_problem():
    """q (Tq, 4, 3), k (Tk, 2, 3), v (Tk, 2, 2) and the cumulative lengths of SEQUENCES."""
    lengths_q, lengths_k = zip(*SEQUENCES, strict=True)
    return (randn(sum(lengths_q), 4, 3), randn(sum(lengths_k), 2, 3), randn(sum(lengths_k), 2, 2),
            _cumulative(lengths_q), _cumulative(lengths_k))


def each_sequence_rows(q, k, v):
    """Each sequence's (1, H, L, D) q, k, v."""
    q0, k0 = 0, 0
    for lq, lk in SEQUENCES:
        yield tuple(t.transpose(0, 1)[None]
                    for t in (q[q0:q0 + lq], k[k0:k0 + lk], v[k0:k0 + lk]))
        q0, k0 = q0 + lq, k0 + lk


def assert_varlen_matches_each_sequence(problem, slopes_per_sequence=None, **options):
    """varlen_attention against the dense reference on every sequence alone, sequence n
    taking row n of ``slopes_per_sequence`` in place of ``alibi_slopes``."""
    q, k, v, cu_q, cu_k = problem
    out, lse = reference.varlen_attention(q, k, v, cu_q, cu_k, return_lse=True, **options)
    options.pop("alibi_slopes", None)
    expected = [reference.scaled_dot_product_attention(
        *rows, return_lse=True, **options,
        **({} if slopes_per_sequence is None else {"alibi_slopes": slopes_per_sequence[n]}))
        for n, rows in enumerate(each_sequence_rows(q, k, v))]
    assert out.shape == (q.shape[0], q.shape[1], v.shape[2]) and lse.shape == q.shape[1::-1]
    torch.testing.assert_close(out, torch.cat([o[0].transpose(0, 1) for o, _ in expected]))
    torch.testing.assert_close(lse, torch.cat([e[0] for _, e in expected], dim=1))


def test_varlen_sequences_attend_only_to_themselves():
    assert_varlen_matches_each_sequence(packed_problem())


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("options", [{"causal": True}, {"window": (1, 1)},
                                     {"causal": True, "window": (2, None)}],
                         ids=["causal", "window", "causal-window"])
def test_varlen_diagonal_comes_from_each_sequences_own_lengths(options, align):
    assert_varlen_matches_each_sequence(packed_problem(), align=align, **options)


def test_varlen_alibi_slopes_take_a_row_per_sequence():
    slopes = torch.rand(len(SEQUENCES), 4, dtype=torch.float64)
    assert_varlen_matches_each_sequence(packed_problem(), slopes_per_sequence=slopes,
                                        alibi_slopes=slopes, align="bottom_right")


@pytest.mark.parametrize("shape", [(4,), (1, 4)])
def test_varlen_alibi_slopes_of_one_row_serve_every_sequence(shape):
    slopes = torch.rand(shape, dtype=torch.float64)
    assert_varlen_matches_each_sequence(packed_problem(), slopes_per_sequence=slopes.expand(
        len(SEQUENCES), 4), alibi_slopes=slopes)


def test_varlen_softcap_sinks_and_scale_apply_per_sequence():
    assert_varlen_matches_each_sequence(packed_problem(), causal=True, softcap=0.7,
                                        sinks=randn(4), scale=1.9)


def test_varlen_keep_mask_is_the_dense_masks_slice_with_keys_counted_per_sequence():
    q, k, v, cu_q, cu_k = packed_problem()
    keep = torch.rand(1, 4, q.shape[0], k.shape[0]) > 0.4
    out = reference.varlen_attention(q, k, v, cu_q, cu_k, dropout_p=0.4, keep_mask=keep)
    expected, q0 = [], 0
    for (lq, lk), rows in zip(SEQUENCES, each_sequence_rows(q, k, v), strict=True):
        expected.append(reference.scaled_dot_product_attention(
            *rows, dropout_p=0.4, keep_mask=keep[:, :, q0:q0 + lq, :lk])[0].transpose(0, 1))
        q0 += lq
    torch.testing.assert_close(out, torch.cat(expected))


def test_varlen_queries_of_a_sequence_without_keys_give_zeros():
    q, k, v, cu_q, cu_k = packed_problem()
    out, lse = reference.varlen_attention(q, k, v, cu_q, cu_k, return_lse=True)
    keyless = slice(7, 9)  # sequence 3: 2 queries, 0 keys
    assert torch.equal(out[keyless], torch.zeros_like(out[keyless]))
    assert torch.isneginf(lse[:, keyless]).all() and torch.isfinite(out).all()


def test_varlen_cumulative_lengths_that_miss_the_token_count_raise():
    q, k, v, cu_q, cu_k = packed_problem()
    with pytest.raises(ValueError, match="cu_seqlens_q must end at the token count"):
        reference.varlen_attention(q[:-1], k, v, cu_q, cu_k)


CACHE_LENGTHS = [8, 0, 3, 1]  # a full cache, an empty row, fewer keys than queries, one key


def cache_problem(queries=2, capacity=8):
    """q (B, 4, Lq, 3), caches (B, 2, capacity, 3 | 2) and the int32 CACHE_LENGTHS."""
    rows = len(CACHE_LENGTHS)
    return (randn(rows, 4, queries, 3), randn(rows, 2, capacity, 3), randn(rows, 2, capacity, 2),
            torch.tensor(CACHE_LENGTHS, dtype=torch.int32))


def each_cache_row(q, k, v, slopes=None, causal=True, **options):
    """(out, lse) of the dense reference on each row's first n keys, bottom-right aligned."""
    results = [reference.scaled_dot_product_attention(
        q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], causal=causal, align="bottom_right",
        return_lse=True, **options, **({} if slopes is None else {"alibi_slopes": slopes[b]}))
        for b, n in enumerate(CACHE_LENGTHS)]
    return tuple(torch.cat(parts) for parts in zip(*results, strict=True))


@pytest.mark.parametrize("queries", [1, 2], ids=["decode", "speculative"])
def test_kvcache_queries_are_the_last_positions_of_each_rows_valid_keys(queries):
    q, k, v, lengths = cache_problem(queries)
    got = reference.kvcache_attention(q, k, v, lengths, return_lse=True)
    for name, a, b in zip(("out", "lse"), got, each_cache_row(q, k, v), strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")


def test_kvcache_without_causal_sees_every_valid_key():
    q, k, v, lengths = cache_problem(3)
    torch.testing.assert_close(reference.kvcache_attention(q, k, v, lengths, causal=False),
                               each_cache_row(q, k, v, causal=False)[0])


def test_kvcache_score_options_apply_per_row():
    q, k, v, lengths = cache_problem(3)
    slopes = torch.rand(len(CACHE_LENGTHS), 4, dtype=torch.float64)
    options = dict(window=(1, 0), softcap=0.8, sinks=randn(4), scale=1.3)
    torch.testing.assert_close(
        reference.kvcache_attention(q, k, v, lengths, alibi_slopes=slopes, **options),
        each_cache_row(q, k, v, slopes=slopes, **options)[0])


def test_kvcache_row_without_keys_gives_zeros():
    q, k, v, lengths = cache_problem()
    out, lse = reference.kvcache_attention(q, k, v, lengths, return_lse=True)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.isneginf(lse[1]).all()


def test_kvcache_paged_cache_reads_each_row_through_its_block_table():
    q, k, v, lengths = cache_problem(capacity=8)
    order = torch.randperm(4 * 4)  # 4 rows of 4 blocks of 2 keys, shuffled over the pool
    table = order.view(4, 4).to(torch.int32)

    def paged(cache):
        pool = torch.empty(16, 2, 2, cache.shape[-1], dtype=cache.dtype)
        pool[order] = cache.view(4, 2, 4, 2, -1).transpose(1, 2).flatten(0, 1)
        return pool

    torch.testing.assert_close(
        reference.kvcache_attention(q, paged(k), paged(v), lengths, block_table=table),
        reference.kvcache_attention(q, k, v, lengths), rtol=0, atol=0)


def test_kvcache_lengths_past_the_capacity_raise():
    q, k, v, lengths = cache_problem(capacity=8)
    with pytest.raises(ValueError, match=r"cache_seqlens must hold 4 lengths in \[0, 8\]"):
        reference.kvcache_attention(q, k, v, lengths + 2)


def test_visibility_mask_with_key_counts_places_each_rows_diagonal_from_its_count():
    counts = torch.tensor([6, 0, 2])
    for align in ("top_left", "bottom_right"):
        mask = reference.visibility_mask(3, 6, causal=True, window=(1, None), align=align,
                                         key_counts=counts)
        for row, n in enumerate(counts.tolist()):
            own = reference.visibility_mask(3, n, causal=True, window=(1, None), align=align)
            expected = torch.zeros(3, 6, dtype=torch.bool)
            expected[:, :n] = own
            assert torch.equal(mask[row], expected), (align, row)


def test_visible_keys_takes_windows_wider_than_any_index():
    diagonals, keys = torch.arange(4)[:, None], torch.arange(5)
    assert torch.equal(reference.visible_keys(diagonals, keys, window=(2**80, 0)),
                       reference.visible_keys(diagonals, keys, causal=True))
