"""flash_attention: outputs and gradients against the float64 reference, on every path the
kernels have (ragged tiles, causal diagonals, GQA, strides, head-dim padding, dtypes)."""

import pytest
import torch
from numerics import assert_matches_reference, assert_within_eager_error

import attention_ops as ao
from attention_ops import kernels
from attention_ops.options import ScoreMods
from attention_ops.reference import scaled_dot_product_attention as reference_sdpa

pytestmark = pytest.mark.usefixtures("nan_poisoned_outputs")


def qkv(batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, dtype, device):
    q = torch.randn(batch, heads_q, seqlen_q, head_dim, dtype=dtype, device=device)
    k = torch.randn(batch, heads_kv, seqlen_k, head_dim, dtype=dtype, device=device)
    v = torch.randn(batch, heads_kv, seqlen_k, head_dim, dtype=dtype, device=device)
    return q, k, v


SHAPES = [  # (B, H, Lq, Lk, D)
    pytest.param(1, 1, 1, 1, 16, id="one-token"),
    pytest.param(2, 2, 17, 17, 40, id="one-ragged-tile-D40"),
    pytest.param(1, 2, 100, 100, 64, id="several-tiles-ragged-end"),
    pytest.param(1, 1, 130, 130, 128, id="just-past-a-tile-D128"),
    pytest.param(1, 2, 33, 70, 32, id="cross-wide"),  # causal: rows see only a prefix
    pytest.param(1, 2, 70, 33, 32, id="cross-tall"),  # causal: rows >= 33 see every key
    pytest.param(1, 1, 45, 45, 80, id="D80-padded-to-128"),
    pytest.param(1, 1, 37, 37, 96, id="D96"),
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("batch, heads, seqlen_q, seqlen_k, head_dim", SHAPES)
def test_outputs_and_gradients_match_reference(batch, heads, seqlen_q, seqlen_k, head_dim,
                                               causal, dtype, device):
    torch.manual_seed(seqlen_q * 1000 + seqlen_k)
    q, k, v = qkv(batch, heads, heads, seqlen_q, seqlen_k, head_dim, dtype, device)
    assert_matches_reference(lambda q, k, v: ao.flash_attention(q, k, v, causal=causal),
                             q, k, v, causal=causal)


@pytest.mark.parametrize("head_dim", [16, 32, 256])  # the smallest, a power of two, the largest
def test_head_dims_at_the_edges(head_dim, device):
    torch.manual_seed(head_dim)
    q, k, v = qkv(1, 2, 2, 40, 40, head_dim, torch.float16, device)
    assert_matches_reference(lambda q, k, v: ao.flash_attention(q, k, v, causal=True),
                             q, k, v, causal=True)


@pytest.mark.parametrize("heads_q, heads_kv", [(4, 2), (4, 1)], ids=["gqa", "mqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_grouped_query_attention_sums_kv_gradients_over_the_group(heads_q, heads_kv, causal,
                                                                  dtype, device):
    torch.manual_seed(heads_kv)
    q, k, v = qkv(2, heads_q, heads_kv, 37, 29, 32, dtype, device)
    assert_matches_reference(lambda q, k, v: ao.flash_attention(q, k, v, causal=causal),
                             q, k, v, causal=causal)


def test_strided_views_of_a_fused_qkv_projection_run_without_copies(device):
    torch.manual_seed(7)
    batch, seqlen, heads, head_dim = 2, 50, 3, 32
    qkv_proj = torch.randn(batch, seqlen, 3, heads, head_dim, dtype=torch.float16,
                           device=device)
    # (B, L, H, D) slices viewed as (B, H, L, D): sequence stride 3*H*D, nothing contiguous.
    q, k, v = (qkv_proj[:, :, i].transpose(1, 2) for i in range(3))
    assert not any(t.is_contiguous() for t in (q, k, v))
    assert_matches_reference(lambda q, k, v: ao.flash_attention(q, k, v, causal=True),
                             q, k, v, causal=True)
    out = ao.flash_attention(q, k, v)
    assert out.is_contiguous() and out.shape == q.shape


def test_key_and_value_may_have_different_strides(device):
    torch.manual_seed(8)
    q, k, _ = qkv(1, 2, 2, 20, 24, 16, torch.float32, device)
    v = torch.randn(1, 24, 2, 16, device=device).transpose(1, 2)  # (B, L, H, D) layout
    assert_matches_reference(lambda q, k, v: ao.flash_attention(q, k, v), q, k, v)


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_any_positive_scale(scale, device):
    torch.manual_seed(9)
    q, k, v = qkv(1, 2, 2, 33, 33, 16, torch.float32, device)
    assert_matches_reference(
        lambda q, k, v: ao.flash_attention(q, k, v, causal=True, scale=scale),
        q, k, v, causal=True, scale=scale)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_lse_is_the_natural_log_sum_exp_in_float32(causal, dtype, device):
    torch.manual_seed(10)
    q, k, v = qkv(1, 2, 2, 40, 50, 32, dtype, device)
    _, lse = ao.flash_attention(q, k, v, causal=causal, return_lse=True)
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 40)
    _, eager_lse = reference_sdpa(q, k, v, causal=causal, return_lse=True)
    _, exact_lse = reference_sdpa(q, k, v, causal=causal, return_lse=True,
                                  compute_dtype=torch.float64)
    assert_within_eager_error("lse", lse, eager_lse.to(q.dtype), exact_lse)


def test_no_keys_gives_zero_output_and_neg_inf_lse(device):
    q = torch.randn(1, 1, 5, 16, device=device)
    k = v = torch.randn(1, 1, 0, 16, device=device)
    out, lse = ao.flash_attention(q, k, v, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isneginf(lse).all()


@pytest.mark.parametrize("variant", ["causal", "mask-and-dropout"])
def test_int64_row_offsets_give_the_same_bits(variant, device):
    """The 64-bit path used when one head spans > 2**31 elements, forced at small size."""
    torch.manual_seed(11)
    q, k, v = qkv(2, 2, 1, 45, 38, 32, torch.float16, device)
    do = torch.randn_like(q)
    options = dict(seed=None, mods=ScoreMods(scale=0.2, causal=True))
    if variant == "mask-and-dropout":
        mask = (torch.rand(45, 38, device=device) > 0.3).expand(2, 2, 45, 38)
        options = dict(seed=ao.draw_dropout_seed(device),
                       mods=ScoreMods(scale=0.2, dropout_p=0.3, attn_mask=mask))
    results = []
    for int64_rows in (False, True):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=device)
        kernels.attention_forward(q, k, v, out, lse, int64_rows=int64_rows, **options)
        grads = [torch.empty_like(t) for t in (q, k, v)]
        kernels.attention_backward(do, q, k, v, out, lse, *grads, int64_rows=int64_rows,
                                   **options)
        results.append([out, lse, *grads])
    for narrow, wide in zip(*results, strict=True):
        assert torch.equal(narrow, wide)


def test_backward_is_deterministic(device):
    torch.manual_seed(12)
    q, k, v = (t.requires_grad_() for t in qkv(1, 4, 2, 70, 70, 32, torch.float16, device))
    do = torch.randn_like(q)
    grads = [torch.autograd.grad(ao.flash_attention(q, k, v, causal=True), (q, k, v), do)
             for _ in range(2)]
    for first, second in zip(*grads, strict=True):
        assert torch.equal(first, second)


def test_lse_is_not_differentiable(device):
    q = torch.randn(1, 1, 4, 16, device=device, requires_grad=True)
    _, lse = ao.flash_attention(q, q, q, return_lse=True)
    assert not lse.requires_grad


@pytest.mark.parametrize(
    "q_shape, k_shape, message",
    [
        ((1, 2, 8), (1, 2, 8), "4-D"),
        ((1, 3, 8, 16), (1, 2, 8, 16), "multiple"),
        ((1, 2, 8, 16), (1, 2, 8, 32), "head dims"),
        ((2, 2, 8, 16), (1, 2, 8, 16), "batch"),
        ((1, 2, 8, 320), (1, 2, 8, 320), "head_dim 320"),
    ],
)
def test_bad_shapes_raise_before_any_kernel_launch(q_shape, k_shape, message, device,
                                                   monkeypatch):
    monkeypatch.setattr("attention_ops.ops.attention_forward", _no_launch)
    q = torch.randn(q_shape, device=device)
    k = torch.randn(k_shape, device=device)
    with pytest.raises(ValueError, match=message):
        ao.flash_attention(q, k, k)


def test_bad_dtypes_values_and_devices_raise(device, monkeypatch):
    monkeypatch.setattr("attention_ops.ops.attention_forward", _no_launch)
    q = torch.randn(1, 1, 4, 16, device=device)
    with pytest.raises(ValueError, match="share a dtype"):
        ao.flash_attention(q, q.half(), q)
    with pytest.raises(ValueError, match="float64"):
        ao.flash_attention(q.double(), q.double(), q.double())
    with pytest.raises(ValueError, match="dropout_p"):
        ao.flash_attention(q, q, q, dropout_p=-0.1)
    if device == "cuda":
        with pytest.raises(ValueError, match="one device"):
            ao.flash_attention(q, q.cpu(), q)


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": 0.0}, "scale must be a finite positive"),
    ({"scale": -1.0}, "scale must be a finite positive"),
    ({"scale": float("inf")}, "scale must be a finite positive"),
    ({"scale": float("nan")}, "scale must be a finite positive"),
    ({"scale": "0.5"}, "scale must be a positive float"),
    ({"dropout_p": "0.1"}, "dropout_p must be a number"),
    ({"dropout_p": float("nan")}, r"dropout_p must be in \[0, 1\]"),
    ({"attn_mask": [[True] * 4] * 4}, "attn_mask must be a torch.Tensor"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, message, device, monkeypatch):
    monkeypatch.setattr("attention_ops.ops.attention_forward", _no_launch)
    q = torch.randn(1, 1, 4, 16, device=device)
    with pytest.raises(ValueError, match=message):
        ao.flash_attention(q, q, q, **kwargs)


@pytest.mark.parametrize("scale", [None, 0.5])
def test_head_dim_zero_raises(scale, device, monkeypatch):
    monkeypatch.setattr("attention_ops.ops.attention_forward", _no_launch)
    q = torch.randn(1, 1, 4, 0, device=device)
    with pytest.raises(ValueError, match="head_dim"):
        ao.flash_attention(q, q, q, scale=scale)


def test_cpu_tensors_without_the_interpreter_raise(monkeypatch):
    monkeypatch.setattr("attention_ops.fused_path.is_interpreter", lambda: False)
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="CUDA"):
        ao.flash_attention(q, q, q)


def test_interpreter_requested_after_import_says_to_set_it_before(monkeypatch):
    monkeypatch.setattr("attention_ops.fused_path.is_interpreter", lambda: False)
    monkeypatch.setattr("attention_ops.fused_path.interpreter_requested_too_late", lambda: True)
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="set it before the import"):
        ao.flash_attention(q, q, q)


def _no_launch(*args, **kwargs):
    raise AssertionError("a kernel was launched on bad input")


# --- CUDA only: long sequences and tensors past 2**31 elements -------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("seqlen", [1024, 4096])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_long_sequences_on_cuda(seqlen, head_dim, causal, dtype):
    torch.manual_seed(seqlen + head_dim)
    q, k, v = qkv(2, 4, 2, seqlen, seqlen, head_dim, dtype, "cuda")
    assert_matches_reference(lambda q, k, v: ao.flash_attention(q, k, v, causal=causal),
                             q, k, v, causal=causal)


@pytest.mark.cuda
def test_tensors_past_two_to_the_31_elements_on_cuda():
    # 4097 * 8 * 1024 * 64 = 2**31 + 2**19 elements: the last batch starts past int32.
    batch, heads, seqlen, head_dim = 4097, 8, 1024, 64
    q = torch.randn(batch, heads, seqlen, head_dim, dtype=torch.bfloat16, device="cuda")
    assert q.numel() > 2**31
    out = ao.flash_attention(q, q, q, causal=True)
    last = slice(batch - 1, batch)
    expected = reference_sdpa(q[last], q[last], q[last], causal=True,
                              compute_dtype=torch.float32)
    torch.testing.assert_close(out[last].float(), expected, atol=2e-2, rtol=2e-2)


# --- boolean masks ------------------------------------------------------------------------

@pytest.mark.parametrize("mask_shape", [
    pytest.param((2, 4, 45, 38), id="per-head"),
    pytest.param((2, 1, 45, 38), id="broadcast-heads"),  # transformers' (B, 1, L, S)
    pytest.param((45, 38), id="broadcast-batch-and-heads"),
])
def test_bool_mask_matches_reference(mask_shape, dtype, device):
    torch.manual_seed(13)
    q, k, v = qkv(2, 4, 2, 45, 38, 32, dtype, device)
    mask = torch.rand(mask_shape, device=device) > 0.3
    assert_matches_reference(lambda q, k, v: ao.flash_attention(q, k, v, attn_mask=mask),
                             q, k, v, attn_mask=mask)


def test_rows_with_every_key_masked_give_zeros_and_zero_gradients(device):
    torch.manual_seed(14)
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 2, 40, 40, 16, torch.float32, device))
    mask = torch.ones(40, 40, dtype=torch.bool, device=device).tril()
    mask[5] = False  # query 5 sees nothing
    out, lse = ao.flash_attention(q, k, v, attn_mask=mask, return_lse=True)
    out.sum().backward()
    assert torch.equal(out[:, :, 5], torch.zeros_like(out[:, :, 5]))
    assert torch.isneginf(lse[:, :, 5]).all()
    assert torch.equal(q.grad[:, :, 5], torch.zeros_like(q.grad[:, :, 5]))
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_left_padding_mask_with_dropout_matches_reference(device):
    torch.manual_seed(15)
    p, lengths = 0.25, torch.tensor([30, 17])
    q, k, v = qkv(2, 2, 2, 30, 30, 32, torch.float16, device)
    causal = torch.ones(30, 30, dtype=torch.bool).tril()
    padded = torch.arange(30)[None, :] >= (30 - lengths)[:, None]  # left padding
    mask = (causal[None] & padded[:, None, :])[:, None].to(device)  # (B, 1, L, L)
    generator_seed = 3
    seed = ao.draw_dropout_seed(device, torch.Generator(device).manual_seed(generator_seed))
    keep = ao.dropout_keep_mask((2, 2, 30, 30), p, seed)

    def fused(q, k, v):
        generator = torch.Generator(device).manual_seed(generator_seed)
        return ao.flash_attention(q, k, v, attn_mask=mask, dropout_p=p, generator=generator)

    assert_matches_reference(fused, q, k, v, attn_mask=mask, dropout_p=p, keep_mask=keep)


@pytest.mark.parametrize("mask, message", [
    (torch.ones(4, 4, dtype=torch.int32), "attn_mask must be"),
    (torch.ones(3, 4, dtype=torch.bool), "broadcast"),
])
def test_bad_masks_raise(mask, message, device):
    q = torch.randn(1, 1, 4, 16, device=device)
    with pytest.raises(ValueError, match=message):
        ao.flash_attention(q, q, q, attn_mask=mask.to(device))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_causal_rule_and_bool_mask_apply_together(dtype, device):
    torch.manual_seed(14)
    q, k, v = qkv(2, 2, 2, 37, 37, 32, dtype, device)
    mask = torch.rand(2, 1, 37, 37, device=device) > 0.3
    assert_matches_reference(
        lambda q, k, v: ao.flash_attention(q, k, v, causal=True, attn_mask=mask),
        q, k, v, attn_mask=mask & torch.ones(37, 37, dtype=torch.bool, device=device).tril())


# --- regressions -----------------------------------------------------------------------------

def test_keys_past_the_end_of_a_ragged_tile_never_reach_dq(device):
    """One key, far below the query: its LSE is that one score, so a padding key of the ragged
    tile would get weight exp(-lse) = inf and turn dQ into NaN. The exact dQ is 0."""
    q = torch.ones(1, 1, 1, 16, dtype=torch.float16, device=device, requires_grad=True)
    k = torch.full((1, 1, 1, 16), -3.0, dtype=torch.float16, device=device, requires_grad=True)
    v = torch.randn(1, 1, 1, 16, dtype=torch.float16, device=device)
    ao.flash_attention(q, k, v).backward(torch.ones_like(q))
    assert torch.equal(q.grad, torch.zeros_like(q))
    assert torch.equal(k.grad, torch.zeros_like(k))


def test_causal_rows_below_a_short_key_side_keep_finite_gradients(device):
    """Causal, Lq = 80 > Lk = 20: the last query tile sees every key, in a ragged key tile; with
    scores near -120 the padding keys' recomputed weights overflow float32 unless masked."""
    q = torch.ones(1, 1, 80, 16, device=device)
    k = torch.full((1, 1, 20, 16), -30.0, device=device)
    v = torch.randn(1, 1, 20, 16, device=device)
    assert_matches_reference(lambda q, k, v: ao.flash_attention(q, k, v, causal=True),
                             q, k, v, causal=True)


def test_single_key_bfloat16_backward_returns_dv_equal_to_do(device):
    """One query, one key: the weight is exactly 1 and dV = dO, bit for bit, when every cast
    to bfloat16 rounds to nearest even, as a GPU's does."""
    torch.manual_seed(15)
    q, k, v = (t.requires_grad_() for t in qkv(4, 8, 8, 1, 1, 64, torch.bfloat16, device))
    do = torch.randn_like(q)
    out = ao.flash_attention(q, k, v)
    out.backward(do)
    assert torch.equal(out, v.detach())
    assert torch.equal(v.grad, do)
