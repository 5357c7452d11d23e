"""Fused dropout: the kernels apply exactly the mask ``dropout_keep_mask`` materialises, with
the right statistics, reproducibly, and with gradients consistent with the forward."""

import numpy as np
import pytest
import torch
from numerics import assert_matches_reference

import attention_ops as ao

pytestmark = pytest.mark.usefixtures("nan_poisoned_outputs")


def qkv(heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, dtype, device, batch=1):
    return (
        torch.randn(batch, heads_q, seqlen_q, head_dim, dtype=dtype, device=device),
        torch.randn(batch, heads_kv, seqlen_k, head_dim, dtype=dtype, device=device),
        torch.randn(batch, heads_kv, seqlen_k, head_dim, dtype=dtype, device=device),
    )


def kernel_keep_mask(shape, p, generator_seed, device):
    """The mask flash_attention(generator=Generator().manual_seed(generator_seed)) uses."""
    generator = torch.Generator(device).manual_seed(generator_seed)
    return ao.dropout_keep_mask(shape, p, ao.draw_dropout_seed(device, generator))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("heads_q, heads_kv, seqlen_q, seqlen_k", [
    pytest.param(2, 2, 50, 50, id="ragged-tiles"),
    pytest.param(4, 2, 33, 45, id="gqa-cross"),  # the dK/dV kernel walks the group's heads
])
def test_outputs_and_gradients_match_reference_with_the_same_mask(
        heads_q, heads_kv, seqlen_q, seqlen_k, causal, dtype, device):
    torch.manual_seed(0)
    p = 0.3
    q, k, v = qkv(heads_q, heads_kv, seqlen_q, seqlen_k, 32, dtype, device, batch=2)
    keep = kernel_keep_mask((2, heads_q, seqlen_q, seqlen_k), p, 5, device)

    def fused(q, k, v):
        generator = torch.Generator(device).manual_seed(5)
        return ao.flash_attention(q, k, v, causal=causal, dropout_p=p, generator=generator)

    assert_matches_reference(fused, q, k, v, causal=causal, dropout_p=p, keep_mask=keep)


def philox4x32_10(counter_lo, counter_hi, seed):
    """Philox4x32-10 (Salmon et al., 2011) on numpy uint64 arrays holding 32-bit words:
    counter (lo, hi, 0, 0), key (seed lo, seed hi). Returns the four output words."""
    mask = 0xFFFFFFFF
    c0, c1 = counter_lo, counter_hi
    c2 = c3 = np.zeros_like(counter_lo)
    k0, k1 = np.uint64(seed & mask), np.uint64(seed >> 32)
    for _ in range(10):
        product_b, product_a = np.uint64(0xCD9E8D57) * c2, np.uint64(0xD2511F53) * c0
        c0, c1, c2, c3 = ((product_b >> 32) ^ c1 ^ k0, product_b & mask,
                          (product_a >> 32) ^ c3 ^ k1, product_a & mask)
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return c0, c1, c2, c3


def test_keep_mask_follows_the_documented_philox_stream(device):
    """kernels/dropout.py: weight (row r of head bh, column 8g + 2j + h) is kept when half h of
    Philox output j for counter (bh * Lq + r) * cdiv(Lk, 8) + g is >= round(p * 2**16)."""
    batch, heads, seqlen_q, seqlen_k, p = 2, 3, 5, 19, 0.3
    seed = 0x1234_5678_9ABC_DEF
    bh, rows, cols = np.meshgrid(np.arange(batch * heads), np.arange(seqlen_q),
                                 np.arange(seqlen_k), indexing="ij")
    counters = ((bh * seqlen_q + rows) * -(-seqlen_k // 8) + cols // 8).astype(np.uint64)
    words = np.stack(philox4x32_10(counters & 0xFFFFFFFF, counters >> 32, seed))
    word = np.take_along_axis(words, (cols % 8 // 2)[None], axis=0)[0]
    numbers = np.where(cols % 2 == 0, word & 0xFFFF, word >> 16)
    expected = torch.from_numpy(numbers >= round(p * 2**16))

    kept = ao.dropout_keep_mask((batch, heads, seqlen_q, seqlen_k), p,
                                torch.tensor([seed], device=device))
    assert torch.equal(kept.cpu(), expected.view(batch, heads, seqlen_q, seqlen_k))


def test_drop_fraction_is_p_within_binomial_tolerance(device):
    p = 0.2
    keep = kernel_keep_mask((2, 3, 128, 96), p, 1, device)
    n = keep.numel()
    dropped = 1.0 - keep.float().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5
    # Nor may the mask be structured: each row and column drops about p too.
    assert keep.float().mean(dim=-1).sub(1 - p).abs().max() < 0.25
    assert keep.float().mean(dim=-2).sub(1 - p).abs().max() < 0.25


def test_mean_output_over_seeds_approaches_the_undropped_output(device):
    torch.manual_seed(2)
    q, k, v = qkv(1, 1, 16, 16, 16, torch.float32, device)
    p, seeds = 0.5, 200
    generator = torch.Generator(device).manual_seed(0)
    samples = torch.stack([ao.flash_attention(q, k, v, dropout_p=p, generator=generator)
                           for _ in range(seeds)])
    undropped = ao.flash_attention(q, k, v)
    # Five standard errors of the mean, element by element.
    tolerance = 5 * samples.std(dim=0) / seeds**0.5
    assert ((samples.mean(dim=0) - undropped).abs() <= tolerance).all()


def test_same_seed_gives_bit_identical_outputs_and_gradients(device):
    torch.manual_seed(3)
    q, k, v = (t.requires_grad_() for t in qkv(2, 2, 40, 40, 16, torch.float16, device))
    do = torch.randn_like(q)
    runs = []
    for _ in range(2):
        torch.manual_seed(42)
        out = ao.flash_attention(q, k, v, causal=True, dropout_p=0.4)
        runs.append((out, *torch.autograd.grad(out, (q, k, v), do)))
    for first, second in zip(*runs, strict=True):
        assert torch.equal(first, second)


def test_consecutive_calls_draw_different_masks(device):
    torch.manual_seed(4)
    q, k, v = qkv(1, 1, 32, 32, 16, torch.float32, device)
    first = ao.flash_attention(q, k, v, dropout_p=0.5)
    second = ao.flash_attention(q, k, v, dropout_p=0.5)
    assert not torch.equal(first, second)


def test_different_seeds_give_different_masks(device):
    shape = (1, 2, 32, 32)
    assert not torch.equal(kernel_keep_mask(shape, 0.5, 1, device),
                           kernel_keep_mask(shape, 0.5, 2, device))


def test_backward_agrees_with_finite_differences_of_the_forward(device):
    """With the seed fixed the forward is a smooth function; its directional derivative must
    match the analytic backward without looking at the mask."""
    torch.manual_seed(5)
    q, k, v = qkv(2, 1, 24, 24, 16, torch.float32, device)
    do = torch.randn_like(q)
    directions = [torch.randn_like(t) for t in (q, k, v)]

    def loss(q, k, v):
        generator = torch.Generator(device).manual_seed(9)
        out = ao.flash_attention(q, k, v, causal=True, dropout_p=0.3, generator=generator)
        return (out * do).sum()

    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(loss(*inputs), inputs)
    analytic = sum((g * d).sum() for g, d in zip(grads, directions, strict=True)).item()
    eps = 1e-2
    plus = loss(*(t + eps * d for t, d in zip((q, k, v), directions, strict=True)))
    minus = loss(*(t - eps * d for t, d in zip((q, k, v), directions, strict=True)))
    numeric = ((plus - minus) / (2 * eps)).item()
    assert numeric == pytest.approx(analytic, rel=1e-2, abs=1e-3)


def test_p_one_gives_zero_outputs_and_gradients(device):
    q, k, v = (t.requires_grad_() for t in qkv(1, 1, 20, 20, 16, torch.float32, device))
    out = ao.flash_attention(q, k, v, causal=True, dropout_p=1.0)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out))
    for grad in (q.grad, k.grad, v.grad):
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_p_outside_zero_one_raises(p, device):
    q = torch.randn(1, 1, 4, 16, device=device)
    with pytest.raises(ValueError, match="dropout_p"):
        ao.flash_attention(q, q, q, dropout_p=p)
    with pytest.raises(ValueError, match="dropout_p"):
        ao.dropout_keep_mask((1, 1, 4, 4), p, ao.draw_dropout_seed(device))


@pytest.mark.cuda
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_long_sequences_with_dropout_on_cuda(causal, dtype):
    torch.manual_seed(6)
    p = 0.1
    q, k, v = qkv(4, 2, 1024, 1024, 64, dtype, "cuda", batch=2)
    keep = kernel_keep_mask((2, 4, 1024, 1024), p, 3, "cuda")

    def fused(q, k, v):
        generator = torch.Generator("cuda").manual_seed(3)
        return ao.flash_attention(q, k, v, causal=causal, dropout_p=p, generator=generator)

    assert_matches_reference(fused, q, k, v, causal=causal, dropout_p=p, keep_mask=keep)
