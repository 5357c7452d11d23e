"""flash_attention_varlen: packed sequences, each attending only to itself, forward and
backward against the float64 reference run on every sequence alone; dropout reproducible from
global token positions; strided inputs; torch.compile with cu_seqlens as an input; bad inputs.
"""

import pytest
import torch
from numerics import assert_matches_reference, max_score_of
from seeding import generator

import attention_ops as ao
from attention_ops.reference import varlen_attention

pytestmark = pytest.mark.usefixtures("nan_poisoned_outputs")

# Per sequence (query length, key length): empty, single-token and prime lengths, Lq != Lk
# both ways, one sequence longer than the interpreter's 32-row tiles on each side.
LENGTHS = [(5, 5), (0, 3), (37, 37), (1, 1), (13, 41), (33, 7), (2, 0)]


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def packed_qkv(lengths, heads_q, heads_kv, dtype, device, head_dim=16, head_dim_v=None):
    tokens_q = sum(lq for lq, _ in lengths)
    tokens_k = sum(lk for _, lk in lengths)
    return (torch.randn(tokens_q, heads_q, head_dim, dtype=dtype, device=device),
            torch.randn(tokens_k, heads_kv, head_dim, dtype=dtype, device=device),
            torch.randn(tokens_k, heads_kv, head_dim_v or head_dim, dtype=dtype, device=device))


def heads_first(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1).unsqueeze(0)


def check(lengths, q, k, v, sinks=None, **options):
    cu_q, cu_k = (cu_seqlens([pair[i] for pair in lengths]).to(q.device) for i in (0, 1))

    def fused(q, k, v, *s):
        return ao.flash_attention_varlen(q, k, v, cu_q, cu_k, sinks=s[0] if s else None,
                                         **options)

    assert_matches_reference(fused, q, k, v, sinks=sinks, reference_fn=varlen_attention,
                             max_score=max_score_of(heads_first(q), heads_first(k),
                                                    options.get("scale")),
                             cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **options)


@pytest.mark.parametrize("options", [
    pytest.param({}, id="full"),
    pytest.param({"causal": True}, id="causal-top-left"),
    pytest.param({"causal": True, "align": "bottom_right"}, id="causal-bottom-right"),
    pytest.param({"window": (4, 2), "align": "bottom_right"}, id="window"),
])
def test_each_sequence_attends_only_to_itself(options, dtype, device):
    check(LENGTHS, *packed_qkv(LENGTHS, 4, 2, dtype, device), **options)


def test_softcap_alibi_and_sinks_apply_per_sequence(device):
    q, k, v = packed_qkv(LENGTHS, 4, 4, torch.bfloat16, device, head_dim_v=8)
    sinks = torch.randn(4, device=device)
    slopes = torch.rand(4, device=device)
    check(LENGTHS, q, k, v, sinks=sinks, causal=True, softcap=3.0, alibi_slopes=slopes)


def test_alibi_slopes_per_sequence(device):
    """(N, Hq) slopes, FlashAttention's varlen layout: sequence n runs with row n."""
    q, k, v = packed_qkv(LENGTHS, 4, 2, torch.float16, device)
    slopes = torch.rand(len(LENGTHS), 4, device=device)
    check(LENGTHS, q, k, v, causal=True, align="bottom_right", alibi_slopes=slopes)


def test_alibi_slopes_with_a_row_count_other_than_the_sequences_raise(device):
    q = torch.randn(6, 2, 16, device=device)
    cu = _int32([0, 2, 6]).to(device)
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape .*\(num_seqs, Hq\)"):
        ao.flash_attention_varlen(q, q, q, cu, cu, alibi_slopes=torch.rand(3, 2, device=device))


def test_dropout_is_reproducible_and_keyed_by_global_token_positions(device):
    """The mask of query token t (head h) and key j of its sequence is the dense mask's entry
    (h, t, j) for a (1, H, Tq, Tk) problem: the reference applies exactly that slice."""
    lengths = [(9, 9), (0, 2), (30, 24), (1, 1)]
    q, k, v = packed_qkv(lengths, 2, 2, torch.float32, device)
    cu_q, cu_k = (cu_seqlens([pair[i] for pair in lengths]).to(device) for i in (0, 1))
    keep = ao.dropout_keep_mask((1, 2, q.shape[0], k.shape[0]), 0.3,
                                ao.draw_dropout_seed(device, generator(7)))

    def fused(q, k, v):
        return ao.flash_attention_varlen(q, k, v, cu_q, cu_k, causal=True, dropout_p=0.3,
                                         generator=generator(7))

    assert torch.equal(fused(q, k, v), fused(q, k, v))
    assert_matches_reference(fused, q, k, v, max_score=max_score_of(heads_first(q),
                                                                    heads_first(k), None),
                             reference_fn=varlen_attention, cu_seqlens_q=cu_q,
                             cu_seqlens_k=cu_k, keep_mask=keep, causal=True, dropout_p=0.3)


def test_a_single_sequence_draws_the_dense_dropout_mask(device):
    q, k, v = packed_qkv([(40, 40)], 2, 2, torch.float32, device)
    cu = cu_seqlens([40]).to(device)
    packed = ao.flash_attention_varlen(q, k, v, cu, cu, dropout_p=0.5, generator=generator(3))
    dense = ao.flash_attention(heads_first(q), heads_first(k), heads_first(v), dropout_p=0.5,
                               generator=generator(3))
    torch.testing.assert_close(packed, dense[0].transpose(0, 1), rtol=0, atol=0)


def test_slices_of_a_packed_projection_run_without_copies(device):
    """q, k, v as strided views of one (T, 3, H, D) tensor give what contiguous copies give,
    and the result comes back (Tq, Hq, Dv) contiguous with the LSE (Hq, Tq)."""
    qkv = torch.randn(sum(lq for lq, _ in LENGTHS[:4]), 3, 2, 16, device=device)
    lengths = [(lq, lq) for lq, _ in LENGTHS[:4]]
    cu = cu_seqlens([lq for lq, _ in lengths]).to(device)
    strided = ao.flash_attention_varlen(*qkv.unbind(1), cu, cu, causal=True, return_lse=True)
    copied = ao.flash_attention_varlen(*(t.contiguous() for t in qkv.unbind(1)), cu, cu,
                                       causal=True, return_lse=True)
    assert strided[0].is_contiguous() and strided[1].shape == (2, qkv.shape[0])
    for a, b in zip(strided, copied, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compiles_with_cu_seqlens_as_an_input_without_graph_breaks(device):
    torch._dynamo.reset()
    q, k, v = (t.requires_grad_() for t in packed_qkv(LENGTHS, 2, 1, torch.float32, device))
    cu_q, cu_k = (cu_seqlens([pair[i] for pair in LENGTHS]).to(device) for i in (0, 1))

    def attention(q, k, v, cu_q, cu_k):
        return ao.flash_attention_varlen(q, k, v, cu_q, cu_k, causal=True)

    compiled = torch.compile(attention, fullgraph=True, backend="aot_eager")  # breaks raise
    expected = attention(q, k, v, cu_q, cu_k)
    got = compiled(q, k, v, cu_q, cu_k)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), (q, k, v)),
                               torch.autograd.grad(expected.sum(), (q, k, v)), rtol=0, atol=0)
    torch._dynamo.reset()


def _int32(values):
    return torch.tensor(values, dtype=torch.int32)


@pytest.mark.parametrize("cu_q, cu_k, message", [
    (_int32([0, 3, 6]).long(), _int32([0, 3, 6]), "cu_seqlens_q must be int32"),
    (_int32([[0, 3, 6]]), _int32([0, 3, 6]), "1-D"),
    (_int32([0]), _int32([0]), "num_seqs >= 1"),
    (_int32([0, 6]), _int32([0, 3, 6]), "different sequences: 1 and 2"),
    (_int32([1, 3, 6]), _int32([0, 3, 6]), "must start at 0"),
    (_int32([0, 4, 3, 6]), _int32([0, 2, 4, 6]), "non-decreasing"),
    (_int32([0, 3, 5]), _int32([0, 3, 6]), "end at the token count 6"),
])
def test_bad_cu_seqlens_raise_before_any_launch(cu_q, cu_k, message, device, monkeypatch):
    def no_launch(*args, **kw):
        raise AssertionError("a kernel was launched on bad input")

    monkeypatch.setattr("attention_ops.ops.attention_forward", no_launch)
    q = torch.randn(6, 2, 16, device=device)
    with pytest.raises(ValueError, match=message):
        ao.flash_attention_varlen(q, q, q, cu_q.to(device), cu_k.to(device),
                                  check_seqlens=True)


@pytest.mark.parametrize("shapes, message", [
    (((6, 2, 16), (6, 2, 16), (5, 2, 16)), "same heads and seqlen"),
    (((1, 6, 2, 16), (6, 2, 16), (6, 2, 16)), "3-D"),
    (((6, 3, 16), (6, 2, 16), (6, 2, 16)), "multiple of key/value heads"),
])
def test_packed_shapes_that_do_not_line_up_raise(shapes, message, device):
    q, k, v = (torch.randn(shape, device=device) for shape in shapes)
    cu = _int32([0, 6]).to(device)
    with pytest.raises(ValueError, match=message):
        ao.flash_attention_varlen(q, k, v, cu, cu)


def test_cu_seqlens_on_another_device_raise(device):
    q = torch.randn(6, 2, 16, device=device)
    cu = _int32([0, 6]).to("meta")
    with pytest.raises(ValueError, match="cu_seqlens_q is on meta"):
        ao.flash_attention_varlen(q, q, q, cu, cu)


@pytest.mark.parametrize("as_list", ["cu_seqlens_q", "cu_seqlens_k"])
def test_cu_seqlens_given_as_lists_raise_value_error(as_list, device):
    q = torch.randn(6, 2, 16, device=device)
    cu = {"cu_seqlens_q": _int32([0, 6]).to(device), "cu_seqlens_k": _int32([0, 6]).to(device)}
    cu[as_list] = [0, 6]
    with pytest.raises(ValueError, match=f"{as_list} must be a torch.Tensor, got list"):
        ao.flash_attention_varlen(q, q, q, **cu)
