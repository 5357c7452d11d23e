"""flash_attention's score modifiers (sliding window, bottom-right alignment, softcap, ALiBi,
float masks, attention sinks, a value head dim of its own), alone and together, forward and
backward (the sinks' gradient included), against the float64 reference; extreme windows and
caps; strided or grad-requiring slopes and sinks in every API that takes them; and the tiles
the kernels visit for a band of visible keys."""

import pytest
import torch
import triton
import triton.language as tl
from numerics import assert_matches_reference, max_score_of

import attention_ops as ao
from attention_ops.kernels.score import band_tiles

pytestmark = pytest.mark.usefixtures("nan_poisoned_outputs")


def qkv(heads_q, heads_kv, seqlen_q, seqlen_k, dtype, device, head_dim=32, head_dim_v=None,
        batch=2):
    shape = (batch, heads_kv, seqlen_k)
    return (torch.randn(batch, heads_q, seqlen_q, head_dim, dtype=dtype, device=device),
            torch.randn(*shape, head_dim, dtype=dtype, device=device),
            torch.randn(*shape, head_dim_v or head_dim, dtype=dtype, device=device))


def check(options, q, k, v, sinks=None, **reference_only):
    """Fused flash_attention(**options) against the reference with the same options."""
    if sinks is None:
        def fused(q, k, v):
            return ao.flash_attention(q, k, v, **options)
    else:
        def fused(q, k, v, s):
            return ao.flash_attention(q, k, v, sinks=s, **options)
    assert_matches_reference(fused, q, k, v, sinks=sinks, **options, **reference_only)


# Lq != Lk both ways, lengths that leave ragged tiles (the interpreter's tiles are 32 wide).
LENGTHS = [pytest.param(70, 70, id="square"), pytest.param(40, 75, id="wide"),
           pytest.param(75, 40, id="tall")]


@pytest.mark.parametrize("seqlen_q, seqlen_k", LENGTHS)
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("window, causal", [((9, 4), False), ((20, None), True),
                                            ((None, 3), False)],
                         ids=["both-sides", "left-causal", "right-only"])
def test_sliding_window(window, causal, align, seqlen_q, seqlen_k, device):
    torch.manual_seed(seqlen_q + 3 * seqlen_k)
    q, k, v = qkv(2, 2, seqlen_q, seqlen_k, torch.float16, device)
    check(dict(window=window, causal=causal, align=align), q, k, v)


@pytest.mark.parametrize("seqlen_q, seqlen_k", LENGTHS)
def test_bottom_right_causal(seqlen_q, seqlen_k, dtype, device):
    """The last query sees every key; with Lq > Lk the first Lq - Lk rows see none (zeros)."""
    torch.manual_seed(seqlen_q * 7 + seqlen_k)
    q, k, v = qkv(2, 1, seqlen_q, seqlen_k, dtype, device)
    check(dict(causal=True, align="bottom_right"), q, k, v)


def test_softcap(dtype, device):
    torch.manual_seed(21)
    q, k, v = qkv(2, 2, 45, 45, dtype, device)
    check(dict(softcap=2.0, causal=True), 3 * q, k, v)  # scores well past the cap


@pytest.mark.parametrize("slopes_shape", [(4,), (2, 4)], ids=["per-head", "per-batch-head"])
def test_alibi(slopes_shape, device):
    torch.manual_seed(22)
    q, k, v = qkv(4, 2, 50, 50, torch.bfloat16, device)
    slopes = torch.rand(slopes_shape, device=device)
    check(dict(alibi_slopes=slopes, causal=True), q, k, v)


@pytest.mark.parametrize("mask_shape", [(2, 1, 40, 60), (40, 60), (2, 4, 1, 60)],
                         ids=["per-batch", "shared", "key-padding"])
def test_float_mask_with_minus_infinity(mask_shape, dtype, device):
    torch.manual_seed(23)
    q, k, v = qkv(4, 4, 40, 60, dtype, device)
    mask = torch.randn(mask_shape, device=device)
    mask = mask.masked_fill(torch.rand(mask_shape, device=device) < 0.2, float("-inf"))
    check(dict(attn_mask=mask), q, k, v)


def test_float_mask_in_the_input_dtype_with_a_fully_masked_row(device):
    torch.manual_seed(24)
    q, k, v = qkv(2, 2, 33, 33, torch.bfloat16, device)
    mask = torch.randn(33, 33, device=device).bfloat16()
    mask[5] = float("-inf")
    out = ao.flash_attention(q, k, v, attn_mask=mask)
    assert torch.equal(out[:, :, 5], torch.zeros_like(out[:, :, 5]))
    check(dict(attn_mask=mask), q, k, v)


@pytest.mark.parametrize("seqlen_q, seqlen_k", LENGTHS)
def test_sinks_with_their_gradient(seqlen_q, seqlen_k, dtype, device):
    torch.manual_seed(25)
    q, k, v = qkv(4, 2, seqlen_q, seqlen_k, dtype, device)
    check(dict(causal=True), q, k, v, sinks=torch.randn(4, device=device))


def test_a_row_with_only_its_sink_gives_zeros_and_the_sink_as_lse(device):
    torch.manual_seed(26)
    q, k, v = qkv(2, 2, 40, 20, torch.float32, device)
    sinks = torch.randn(2, device=device)
    out, lse = ao.flash_attention(q, k, v, causal=True, align="bottom_right", sinks=sinks,
                                  return_lse=True)
    # bottom-right, Lq - Lk = 20: rows 0..19 see no key
    assert torch.equal(out[:, :, :20], torch.zeros_like(out[:, :, :20]))
    torch.testing.assert_close(lse[:, :, :20], sinks[None, :, None].expand(2, 2, 20))


@pytest.mark.parametrize("head_dim, head_dim_v", [(48, 32), (32, 80)], ids=["Dv<D", "Dv>D"])
def test_value_head_dim_of_its_own(head_dim, head_dim_v, dtype, device):
    torch.manual_seed(27)
    q, k, v = qkv(4, 2, 37, 41, dtype, device, head_dim=head_dim, head_dim_v=head_dim_v)
    check(dict(causal=True), q, k, v)


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_every_modifier_at_once_with_gqa_dropout_and_a_bool_mask(align, device):
    torch.manual_seed(28)
    q, k, v = qkv(4, 2, 50, 66, torch.float16, device, head_dim=32, head_dim_v=48)
    padding = (torch.arange(66, device=device) >= torch.tensor([0, 7], device=device)[:, None])
    mask = padding[:, None, None, :]  # (B, 1, 1, Lk) key padding
    p, generator_seed = 0.2, 5
    seed = ao.draw_dropout_seed(device, torch.Generator(device).manual_seed(generator_seed))
    keep = ao.dropout_keep_mask((2, 4, 50, 66), p, seed)
    options = dict(window=(24, 6), causal=True, align=align, softcap=3.0,
                   alibi_slopes=torch.rand(2, 4, device=device), attn_mask=mask, dropout_p=p)

    def fused(q, k, v, s):
        generator = torch.Generator(device).manual_seed(generator_seed)
        return ao.flash_attention(q, k, v, sinks=s, generator=generator, **options)

    assert_matches_reference(fused, q, k, v, sinks=torch.randn(4, device=device),
                             keep_mask=keep, **options)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": (-1, 0)}, "window"),
    ({"window": (3,)}, "window"),
    ({"align": "center"}, "align"),
    ({"softcap": 0.0}, "softcap"),
    ({"softcap": float("inf")}, "softcap"),
    ({"alibi_slopes": torch.ones(3)}, "alibi_slopes"),
    ({"alibi_slopes": torch.ones(2, dtype=torch.float64)}, "alibi_slopes"),
    ({"sinks": torch.ones(2, 2)}, "sinks"),
    ({"sinks": torch.ones(2, dtype=torch.int32)}, "sinks"),
    ({"attn_mask": torch.zeros(4, 4, requires_grad=True)}, "requires grad"),
])
def test_bad_modifier_values_raise_before_any_launch(kwargs, message, device, monkeypatch):
    def no_launch(*args, **kw):
        raise AssertionError("a kernel was launched on bad input")

    monkeypatch.setattr("attention_ops.ops.attention_forward", no_launch)
    q = torch.randn(1, 2, 4, 16, device=device)
    kwargs = {name: value.to(device) if torch.is_tensor(value) else value
              for name, value in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        ao.flash_attention(q, q, q, **kwargs)


@triton.jit
def _band_tiles_kernel(OUT, x_start, y_len, band_lo, band_hi, ragged_x,
                       BLOCK_X: tl.constexpr, BLOCK_Y: tl.constexpr, HAS_LO: tl.constexpr,
                       HAS_HI: tl.constexpr):
    start, full_start, full_end, end = band_tiles(x_start, y_len, band_lo, band_hi,
                                                  ragged_x != 0, BLOCK_X, BLOCK_Y, HAS_LO,
                                                  HAS_HI, False)
    tl.store(OUT + 0, start)
    tl.store(OUT + 1, full_start)
    tl.store(OUT + 2, full_end)
    tl.store(OUT + 3, end)


@pytest.mark.parametrize("has_lo, has_hi", [(True, True), (True, False), (False, True)])
def test_band_tiles_visit_every_visible_pair_and_skip_the_mask_only_where_all_are_visible(
        has_lo, has_hi):
    """For a resident tile of rows x and a band lo <= y - x <= hi: the tiles visited hold
    every visible pair, no tile wholly outside the band is visited (a windowed row costs
    O(window)), and the unmasked tiles are wholly visible to every row."""
    block_x, block_y, y_len = 16, 8, 70
    out = torch.empty(4, dtype=torch.int32, device="cpu")
    for x_start in range(0, 80, 16):
        for lo, hi in [(-5, 3), (0, 0), (-30, -20), (10, 40), (-3, 90)]:
            _band_tiles_kernel[(1,)](out, x_start, y_len, lo, hi, 0, BLOCK_X=block_x,
                                     BLOCK_Y=block_y, HAS_LO=has_lo, HAS_HI=has_hi)
            start, full_start, full_end, end = out.tolist()
            xs = torch.arange(x_start, x_start + block_x)[:, None]
            ys = torch.arange(y_len)[None, :]
            seen = torch.ones(block_x, y_len, dtype=torch.bool)
            if has_lo:
                seen &= ys - xs >= lo
            if has_hi:
                seen &= ys - xs <= hi
            tiles = [(t, seen[:, t:t + block_y]) for t in range(0, y_len, block_y)]
            where = f"x_start={x_start} band=[{lo}, {hi}]: {out.tolist()}"
            assert start <= full_start <= full_end <= end, where
            for t, tile in tiles:
                visited = start <= t < end
                assert visited == bool(tile.any()), f"{where}: tile {t}"
                if full_start <= t < full_end:
                    assert tile.all() and t + block_y <= y_len, f"{where}: tile {t} masked"


def test_negative_alibi_slopes_keep_padding_query_rows_out_of_dk_and_dv(device):
    """Slopes < 0 make a score grow with distance: the padding rows of a ragged query tile
    (past Lq, up to 63 keys away here) must add exactly nothing, not exp2 overflow times a
    zero dO (NaN). The ALiBi term joins the largest score the float32 floor scales with."""
    torch.manual_seed(29)
    q, k, v = qkv(1, 1, 37, 37, torch.float32, device, head_dim=16, batch=1)
    slope = -2.0
    check(dict(alibi_slopes=torch.tensor([slope], device=device)), q, k, v,
          max_score=max_score_of(q, k, None) - slope * 36)


def run_each_api(api, q, k, v, **mods):
    """One (B, H, L, D) problem through ``api``: flash_attention; flash_attention_varlen with
    each batch row a sequence; flash_attention_with_kvcache with every key valid."""
    batch, seqlen_q, seqlen_k = q.shape[0], q.shape[2], k.shape[2]
    if api == "flash_attention":
        return ao.flash_attention(q, k, v, **mods)
    if api == "varlen":
        packed = (t.transpose(1, 2).flatten(0, 1) for t in (q, k, v))
        cu_q, cu_k = (torch.arange(batch + 1, dtype=torch.int32, device=q.device) * n
                      for n in (seqlen_q, seqlen_k))
        out = ao.flash_attention_varlen(*packed, cu_q, cu_k, **mods)
        return out.unflatten(0, (batch, seqlen_q)).transpose(1, 2)
    cache_seqlens = torch.full((batch,), seqlen_k, dtype=torch.int32, device=q.device)
    return ao.flash_attention_with_kvcache(q, k, v, cache_seqlens, causal=False, **mods)


APIS = ["flash_attention", "varlen", "kvcache"]


@pytest.mark.parametrize("api", APIS)
def test_strided_slopes_and_sinks_read_as_their_values(api, device):
    """Columns of (Hq, 3) tensors (stride 3) give what contiguous copies give, and where there
    is a backward the sinks' gradient lands in their column."""
    torch.manual_seed(30)
    q, k, v = qkv(4, 2, 17, 21, torch.float32, device, head_dim=16)
    slope_columns = torch.rand(4, 3, device=device)
    sink_columns = torch.randn(4, 3, device=device)
    differentiable = api != "kvcache"  # decoding is inference only
    results = []
    for copy in (False, True):
        leaf = sink_columns.clone().requires_grad_(differentiable)
        slopes, sinks = slope_columns[:, 1], leaf[:, 1]
        if copy:
            slopes, sinks = slopes.contiguous(), sinks.contiguous()
        with torch.set_grad_enabled(differentiable):
            out = run_each_api(api, q, k, v, alibi_slopes=slopes, sinks=sinks)
        if differentiable:
            out.backward(torch.randn_like(out, generator=torch.Generator(device).manual_seed(1)))
        results.append((out.detach(), leaf.grad))
    (out, dsinks), (expected_out, expected_dsinks) = results
    assert torch.equal(out, expected_out)
    if differentiable:
        assert torch.equal(dsinks, expected_dsinks)


@pytest.mark.parametrize("api", APIS)
def test_slopes_that_require_grad_are_refused_while_grad_mode_is_on(api, device, monkeypatch):
    """The kernels compute no slope gradient: rather than drop it silently, refuse the slopes
    (under no_grad nothing is dropped, so they run)."""
    torch.manual_seed(31)
    q, k, v = qkv(2, 2, 17, 17, torch.float32, device, head_dim=16, batch=1)
    slopes = torch.rand(2, device=device, requires_grad=True)
    with torch.no_grad():
        expected = run_each_api(api, q, k, v, alibi_slopes=slopes.detach())
        assert torch.equal(run_each_api(api, q, k, v, alibi_slopes=slopes), expected)

    def no_launch(*args, **kw):
        raise AssertionError("a kernel was launched on bad input")

    for name in ("attention_forward", "decode_forward"):
        monkeypatch.setattr(f"attention_ops.ops.{name}", no_launch)
    with pytest.raises(ValueError, match="alibi_slopes requires grad"):
        run_each_api(api, q, k, v, alibi_slopes=slopes)


@pytest.mark.parametrize("seqlen_q, seqlen_k", [(17, 37), (37, 17)], ids=["wide", "tall"])
@pytest.mark.parametrize("side", [2**31 - 1, 2**31, 2**63 - 1])
def test_a_window_side_past_every_key_is_unbounded(side, seqlen_q, seqlen_k, device):
    """Any side up to the int64 range means "at least that far": (side, side) sees every key,
    (side, 0) is causal, in the kernels and in the reference."""
    torch.manual_seed(32)
    q, k, v = qkv(2, 2, seqlen_q, seqlen_k, torch.float16, device, head_dim=16, batch=1)
    for window, causal in [((side, side), False), ((side, 0), True)]:
        assert torch.equal(
            ao.reference.visibility_mask(seqlen_q, seqlen_k, window=window,
                                         align="bottom_right"),
            ao.reference.visibility_mask(seqlen_q, seqlen_k, causal=causal,
                                         align="bottom_right"))
        assert_matches_reference(
            lambda q, k, v, window=window: ao.flash_attention(q, k, v, window=window,
                                                              align="bottom_right"),
            q, k, v, causal=causal, align="bottom_right")


@pytest.mark.parametrize("softcap", [1e3, 1e7])
def test_a_large_softcap_keeps_float32_accuracy(softcap, device):
    """c * tanh(s / c) is about s when c >> |s|: tanh near 0 keeps its relative precision,
    so the cap costs no accuracy, forward or backward."""
    torch.manual_seed(33)
    q, k, v = qkv(2, 2, 37, 37, torch.float32, device, head_dim=16, batch=1)
    check(dict(softcap=softcap), q, k, v)


@pytest.mark.parametrize("softcap", [1e39, 1e300])
def test_a_softcap_past_the_float32_range_is_no_cap(softcap, device):
    torch.manual_seed(34)
    q, k, v = qkv(2, 2, 37, 37, torch.float32, device, head_dim=16, batch=1)
    assert_matches_reference(lambda q, k, v: ao.flash_attention(q, k, v, softcap=softcap),
                             q, k, v)


def test_a_softcap_below_the_float32_range_gives_uniform_weights(device):
    """Every score lies within 2c of every other, a query of zeros included (no 0 * inf)."""
    torch.manual_seed(35)
    q, k, v = qkv(2, 2, 17, 21, torch.float32, device, head_dim=16, batch=1)
    q[:, :, 3] = 0.0
    out = ao.flash_attention(q, k, v, softcap=1e-300)
    torch.testing.assert_close(out, v.mean(2, keepdim=True).expand_as(out))
