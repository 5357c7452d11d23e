"""flash_attention_with_kvcache: a few query rows against each batch row's cache, contiguous
or paged, its keys split across programs; against the float64 reference run on each row's
valid keys, with the queries as the row's last positions."""

import pytest
import torch
from numerics import assert_within_eager_error, max_score_of

import attention_ops as ao
from attention_ops.kernels import LN2, decode_forward
from attention_ops.options import ScoreMods
from attention_ops.reference import kvcache_attention

pytestmark = pytest.mark.usefixtures("nan_poisoned_outputs")

HEADS_Q, HEADS_KV, HEAD_DIM, CAPACITY = 8, 2, 16, 96
# Per row: a full cache, a single key, a cache shorter than the query rows, a ragged length.
CACHE_SEQLENS = [96, 1, 2, 61]


def cache_problem(seqlen_q, dtype, device, head_dim_v=HEAD_DIM):
    q = torch.randn(len(CACHE_SEQLENS), HEADS_Q, seqlen_q, HEAD_DIM, dtype=dtype, device=device)
    k = torch.randn(len(CACHE_SEQLENS), HEADS_KV, CAPACITY, HEAD_DIM, dtype=dtype, device=device)
    v = torch.randn(len(CACHE_SEQLENS), HEADS_KV, CAPACITY, head_dim_v, dtype=dtype,
                    device=device)
    return q, k, v, torch.tensor(CACHE_SEQLENS, dtype=torch.int32, device=device)


def assert_matches_row_by_row(q, k, v, cache_seqlens, *, sinks=None, **options):
    fused = ao.flash_attention_with_kvcache(q, k, v, cache_seqlens, sinks=sinks,
                                            return_lse=True, **options)
    options.pop("num_splits", None)
    eager = kvcache_attention(q, k, v, cache_seqlens, sinks=sinks, return_lse=True, **options)
    exact = kvcache_attention(q, k, v, cache_seqlens, compute_dtype=torch.float64,
                              sinks=None if sinks is None else sinks.double(), return_lse=True,
                              **options)
    for name, f, e, x in zip(("out", "lse"), fused, eager, exact, strict=True):
        finite = x.isfinite()  # a row that sees nothing: -inf in both, compared below
        assert torch.equal(f.isfinite(), finite), f"{name}: rows with nothing visible differ"
        assert_within_eager_error(name, f[finite], e[finite], x[finite],
                                  max_score=max_score_of(q, k, options.get("scale")))


@pytest.mark.parametrize("seqlen_q", [1, 3], ids=["decode", "speculative"])
def test_per_row_cache_lengths_with_grouped_query_heads(seqlen_q, dtype, device):
    assert_matches_row_by_row(*cache_problem(seqlen_q, dtype, device))


@pytest.mark.parametrize("options", [
    pytest.param({"window": (15, 0)}, id="window"),
    pytest.param({"softcap": 2.0, "alibi_slopes": "slopes"}, id="softcap-alibi"),
    pytest.param({"causal": False}, id="not-causal"),
])
def test_score_modifiers_apply_as_in_training(options, device):
    q, k, v, cache_seqlens = cache_problem(2, torch.bfloat16, device, head_dim_v=8)
    if options.get("alibi_slopes") == "slopes":
        options = dict(options, alibi_slopes=torch.rand(HEADS_Q, device=device))
    assert_matches_row_by_row(q, k, v, cache_seqlens, num_splits=3, **options)


def test_sinks_join_the_softmax_once_whatever_the_split(device):
    q, k, v, cache_seqlens = cache_problem(1, torch.float16, device)
    sinks = torch.randn(HEADS_Q, device=device)
    for num_splits in (1, 4):
        assert_matches_row_by_row(q, k, v, cache_seqlens, sinks=sinks, num_splits=num_splits)


def test_every_split_count_gives_the_same_result(device):
    """1 split, a few, and more splits than key tiles (the empty ones weigh nothing)."""
    q, k, v, cache_seqlens = cache_problem(1, torch.float32, device)
    single = ao.flash_attention_with_kvcache(q, k, v, cache_seqlens, num_splits=1,
                                             return_lse=True)
    for num_splits in (2, 3, 16):
        split = ao.flash_attention_with_kvcache(q, k, v, cache_seqlens, num_splits=num_splits,
                                                return_lse=True)
        for a, b in zip(split, single, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_paged_cache_with_a_shuffled_block_table_reads_the_same_keys(device):
    q, k, v, cache_seqlens = cache_problem(2, torch.float32, device)
    block_size, blocks_per_row = 8, CAPACITY // 8
    order = torch.randperm(len(CACHE_SEQLENS) * blocks_per_row, device=device)
    block_table = order.view(len(CACHE_SEQLENS), blocks_per_row).to(torch.int32)

    def paged(cache):  # (B, Hkv, CAPACITY, D) -> (num_blocks, Hkv, block_size, D) by the table
        blocks = cache.view(cache.shape[0], HEADS_KV, blocks_per_row, block_size, -1)
        pool = torch.empty(order.numel(), HEADS_KV, block_size, cache.shape[-1], device=device)
        pool[block_table.long().flatten()] = blocks.transpose(1, 2).flatten(0, 1)
        return pool

    contiguous = ao.flash_attention_with_kvcache(q, k, v, cache_seqlens, num_splits=3)
    got = ao.flash_attention_with_kvcache(q, paged(k), paged(v), cache_seqlens,
                                          block_table=block_table, num_splits=3)
    torch.testing.assert_close(got, contiguous, rtol=0, atol=0)  # the same keys, same order


def test_split_bfloat16_output_is_the_float32_merge_rounded_to_nearest_even(device):
    """The split-combine kernel writes its float32 merge of two splits to bfloat16 as torch
    rounds it (to nearest even; the interpreter's own cast truncates toward zero)."""
    q, k, v, cache_seqlens = cache_problem(1, torch.bfloat16, device)
    merged = {}
    for dtype in (torch.float32, torch.bfloat16):
        merged[dtype] = torch.empty(*q.shape[:3], HEAD_DIM, dtype=dtype, device=device)
        decode_forward(q, k, v, merged[dtype], torch.empty(q.shape[:3], device=device),
                       cache_seqlens=cache_seqlens, block_table=None, capacity=k.shape[2],
                       mods=ScoreMods(HEAD_DIM ** -0.5, causal=True, bottom_right=True),
                       num_splits=2)
    torch.testing.assert_close(merged[torch.bfloat16], merged[torch.float32].to(torch.bfloat16),
                               rtol=0, atol=0)


@pytest.mark.parametrize("change, message", [
    ({"q": lambda q: q.requires_grad_()}, "inference only"),
    ({"q": lambda q: q[:, :, :0]}, "at least one query row"),
    ({"q": lambda q: q[:, :3]}, "multiple of key/value heads"),
    ({"k": lambda k: k.half()}, "share a dtype"),
    ({"kv": lambda t: t[:3]}, "holds 3 rows"),
    ({"lens": lambda n: n.long()}, "cache_seqlens must be int32"),
    ({"lens": lambda n: n + 1}, r"must lie in \[0, 96\]"),
    ({"table": lambda t: t[:, :2]}, r"must lie in \[0, 16\]"),
    ({"table": lambda t: t + 100}, "outside"),
    ({"num_splits": 0}, "num_splits"),
])
def test_bad_inputs_raise_before_any_launch(change, message, device, monkeypatch):
    def no_launch(*args, **kw):
        raise AssertionError("a kernel was launched on bad input")

    monkeypatch.setattr("attention_ops.ops.decode_forward", no_launch)
    q, k, v, lens = cache_problem(1, torch.float32, device)
    table = None
    if "table" in change:  # a paged cache instead: 48 blocks of 8 keys, 12 per row
        k, v = (torch.randn(48, HEADS_KV, 8, HEAD_DIM, device=device) for _ in range(2))
        table = change["table"](torch.arange(48, dtype=torch.int32, device=device).view(4, 12))
    q = change.get("q", lambda t: t)(q)
    k = change.get("k", lambda t: t)(k)
    k, v = (change.get("kv", lambda t: t)(t) for t in (k, v))
    lens = change.get("lens", lambda t: t)(lens)
    with pytest.raises(ValueError, match=message):
        ao.flash_attention_with_kvcache(q, k, v, lens, block_table=table,
                                        num_splits=change.get("num_splits"))


def test_compiles_without_graph_breaks(device):
    torch._dynamo.reset()
    q, k, v, cache_seqlens = cache_problem(1, torch.float32, device)

    def decode(q, k, v, cache_seqlens):
        return ao.flash_attention_with_kvcache(q, k, v, cache_seqlens, num_splits=2)

    compiled = torch.compile(decode, fullgraph=True, backend="aot_eager")  # breaks raise
    torch.testing.assert_close(compiled(q, k, v, cache_seqlens), decode(q, k, v, cache_seqlens),
                               rtol=0, atol=0)
    torch._dynamo.reset()


def test_strided_lengths_and_block_tables_read_as_their_values(device):
    """A broadcast cache_seqlens and a transposed block table mean what their values say."""
    q, k, v, _ = cache_problem(1, torch.float32, device)
    lengths = torch.tensor([40], dtype=torch.int32, device=device).expand(len(CACHE_SEQLENS))
    torch.testing.assert_close(ao.flash_attention_with_kvcache(q, k, v, lengths),
                               ao.flash_attention_with_kvcache(q, k, v, lengths.contiguous()),
                               rtol=0, atol=0)
    pool = torch.randn(48, HEADS_KV, 8, HEAD_DIM, device=device)
    table = torch.randperm(48, device=device).view(12, 4).to(torch.int32).t()  # stride (1, 4)
    torch.testing.assert_close(
        ao.flash_attention_with_kvcache(q, pool, pool, lengths, block_table=table),
        ao.flash_attention_with_kvcache(q, pool, pool, lengths, block_table=table.contiguous()),
        rtol=0, atol=0)


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_unchecked_lengths_clamp_to_the_rows_own_cache(paged, device):
    """The op itself does not check cache_seqlens (on CUDA that would synchronise): a length
    past the capacity reads as the capacity and a negative one as 0, so row 0 never reads
    row 1's keys (the next rows of a contiguous cache, the next blocks of the table)."""
    q = torch.randn(3, HEADS_Q, 2, HEAD_DIM, device=device)
    if paged:  # row b holds blocks 2b and 2b + 1 of 16 keys: 32 in all
        k, v = (torch.randn(6, HEADS_KV, 16, HEAD_DIM, device=device) for _ in range(2))
        table = torch.arange(6, dtype=torch.int32, device=device).view(3, 2)
    else:
        k, v = (torch.randn(3, HEADS_KV, 32, HEAD_DIM, device=device) for _ in range(2))
        table = None
    out, lse = torch.ops.attention_ops.attention_with_kvcache(
        q, k, v, torch.tensor([48, -3, 20], dtype=torch.int32, device=device), table, 2,
        *ScoreMods(HEAD_DIM ** -0.5, causal=True, bottom_right=True).fields())
    clamped_out, clamped_lse = ao.flash_attention_with_kvcache(
        q, k, v, torch.tensor([32, 0, 20], dtype=torch.int32, device=device), block_table=table,
        num_splits=2, return_lse=True)
    torch.testing.assert_close(out, clamped_out, rtol=0, atol=0)
    torch.testing.assert_close(lse * LN2, clamped_lse, rtol=0, atol=0)
