"""Ring attention (context parallelism) on real processes: 2, 3 and 4 CPU processes joined by
gloo (the kernels under the interpreter), and GPUs joined by NCCL where there are two or more.
Sharded, run around the ring and gathered, the output, LSE and every gradient must meet the
float64 reference within the usual bar, with the dropout mask single-process
``flash_attention`` draws for the same seed. Each process group runs several cases in turn:
its start (every process imports torch and Triton) costs more than a tiny case."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from numerics import assert_matches_reference, assert_within_eager_error

from attention_ops.distributed import ring_attention, shard_sequence, unshard_sequence
from attention_ops.distributed.attention import merge_partial
from attention_ops.kernels import LN2, use_autotuning
from attention_ops.reference import scaled_dot_product_attention as reference_sdpa

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ is not installed: run from the repository root
    sys.path.insert(0, str(REPO))

from bench import ring as bench_ring  # noqa: E402
from bench.ring import RingCase, dropout_generator, run_on_processes  # noqa: E402


class _Shard(torch.autograd.Function):
    """This rank's shard of a tensor every rank holds alike; the full gradient gathers every
    rank's shard of it, so q.grad of the full q is the whole dq on every rank."""

    @staticmethod
    def forward(ctx, x, layout):
        ctx.layout = layout
        return shard_sequence(x, layout=layout)

    @staticmethod
    def backward(ctx, grad):
        return unshard_sequence(grad, layout=ctx.layout), None


class _Unshard(torch.autograd.Function):
    """The full sequence from every rank's shard; every rank holds the same full gradient and
    keeps its own shard of it."""

    @staticmethod
    def forward(ctx, x, layout):
        ctx.layout = layout
        return unshard_sequence(x, layout=layout)

    @staticmethod
    def backward(ctx, grad):
        return shard_sequence(grad, layout=ctx.layout), None


def _check_case(case: RingCase, rank: int, world: int, device: torch.device) -> None:
    torch.manual_seed(0)  # the same full inputs and dO on every rank
    q, k, v = case.inputs(world, device)
    lse = {}

    def ring(q, k, v):
        # Each rank seeds its generator differently: group rank 0's seed must win.
        out, lse["ring"] = ring_attention(
            *(_Shard.apply(t, case.layout) for t in (q, k, v)), causal=case.causal,
            layout=case.layout, dropout_p=case.dropout_p,
            generator=dropout_generator(device, offset=rank), return_lse=True)
        return _Unshard.apply(out, case.layout)

    assert_matches_reference(ring, q, k, v, causal=case.causal, dropout_p=case.dropout_p,
                             keep_mask=case.keep_mask(world, device))
    _, eager_lse = reference_sdpa(q, k, v, causal=case.causal, return_lse=True)
    _, exact_lse = reference_sdpa(q, k, v, causal=case.causal, return_lse=True,
                                  compute_dtype=torch.float64)
    assert_within_eager_error("lse", unshard_sequence(lse["ring"], layout=case.layout),
                              eager_lse, exact_lse)


def _check_layouts(rank: int, world: int, device: torch.device) -> None:
    """The issue's layouts: rank r holds block r of W, or chunks r and 2W-1-r of 2W."""
    seqlen = 4 * world
    tokens = torch.arange(seqlen, device=device)
    for layout, chunks in (("contiguous", [rank]), ("zigzag", [rank, 2 * world - 1 - rank])):
        chunk = seqlen // (len(chunks) * world)
        mine = torch.cat([tokens[i * chunk:(i + 1) * chunk] for i in chunks])
        assert torch.equal(shard_sequence(tokens, dim=0, layout=layout), mine), layout
        assert torch.equal(unshard_sequence(mine, dim=0, layout=layout), tokens), layout
    with pytest.raises(ValueError, match=f"sequence length {seqlen + 1} is not a multiple"):
        shard_sequence(torch.arange(seqlen + 1, device=device), dim=0, layout="contiguous")


def _check_cases(rank: int, world: int, device: torch.device, cases: list[RingCase]) -> None:
    """Every case, each failure named; all ranks see the same gathered numbers, so they fail
    together and none waits on the others."""
    use_autotuning(False)  # as conftest sets for the suite: each GPU launch its first tile
    _check_layouts(rank, world, device)
    failures = []
    with pytest.MonkeyPatch.context() as patch:
        _poison_empty(patch)
        for case in cases:
            try:
                _check_case(case, rank, world, device)
            except AssertionError as error:
                failures.append(f"{case}: {error}")
    assert not failures, "\n".join(failures)


def _poison_empty(patch: pytest.MonkeyPatch) -> None:
    """NaN in every new float tensor from torch.empty / empty_like, so an element no kernel
    or copy writes fails the check (conftest's fixture, for a spawned process)."""
    for name in ("empty", "empty_like"):
        real = getattr(torch, name)
        patch.setattr(torch, name, lambda *a, real=real, **kw: _nan_filled(real(*a, **kw)))


def _nan_filled(t: torch.Tensor) -> torch.Tensor:
    return t.fill_(math.nan) if t.is_floating_point() else t


# One process group per world size; between them every layout meets causal and not, dropout
# on chunks of 8 (blocks on the dropout stream's 8-column groups) and of 5 (blocks starting
# anywhere in a group), GQA and float16.
CPU_CASES = {
    2: [RingCase("zigzag", False, 2, 1, 8, dropout_p=0.3),
        RingCase("contiguous", True, 1, 1, 5, dropout_p=0.3, dtype=torch.float16)],
    3: [RingCase("zigzag", True, 2, 1, 8, dropout_p=0.3),
        RingCase("contiguous", False, 1, 1, 5, dropout_p=0.3, dtype=torch.float16)],
    4: [RingCase("zigzag", True, 1, 1, 5, dropout_p=0.3),
        RingCase("contiguous", True, 2, 1, 8, dropout_p=0.3)],
}


@pytest.mark.parametrize("world", sorted(CPU_CASES))
def test_ring_attention_on_gloo_processes_meets_the_full_sequence_reference(world):
    run_on_processes(world, _check_cases, CPU_CASES[world])


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more GPUs")
def test_ring_attention_on_gpus_with_nccl_meets_the_full_sequence_reference():
    world = min(torch.cuda.device_count(), 4)
    cases = [RingCase("zigzag", True, 8, 2, 256, dropout_p=0.1, dtype=torch.bfloat16,
                      head_dim=128, batch=2),
             RingCase("contiguous", False, 4, 4, 200, dtype=torch.float16, head_dim=64),
             RingCase("zigzag", True, 4, 1, 100, dtype=torch.float16, head_dim=80)]
    run_on_processes(world, _check_cases, cases, backend="nccl")


def test_bench_ring_checks_and_times_it_on_cpu_processes(capfd):
    bench_ring.main(["--world-size", "2", "--layouts", "contiguous", "--causal", "true"])
    table = capfd.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| 2 | contiguous")]
    assert len(rows) == 1 and rows[0].endswith("| ok |"), table


@pytest.fixture
def one_rank_group(tmp_path, device):
    """A process group of this process alone (NCCL on a GPU, else gloo)."""
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1,
                            store=dist.FileStore(str(tmp_path / "store"), 1))
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("chunk", [40, 13])
def test_a_ring_of_one_meets_the_reference(chunk, one_rank_group, device):
    """The block passes to itself; chunks of 40 span two of the interpreter's 32-row tiles,
    so dropout's offsets meet the kernels' own tile offsets, and the second chunk of 13
    starts at key 13, inside one of the dropout stream's 8-column groups."""
    _check_case(RingCase("zigzag", True, 2, 1, chunk, dropout_p=0.3), 0, 1,
                torch.device(device))


def test_lengths_that_do_not_split_raise_naming_them(one_rank_group, device):
    x = torch.randn(1, 2, 5, 16, device=device)
    with pytest.raises(ValueError, match=r"sequence length 5 = 1 x 5 local tokens is not a "
                                         "multiple of 2"):
        ring_attention(x, x, x)
    with pytest.raises(ValueError, match="sequence length 5 is not a multiple of 2"):
        shard_sequence(x)
    with pytest.raises(ValueError, match="sequence length 5 = 1 x 5 local"):
        unshard_sequence(x)
    y = torch.randn(1, 2, 10, 16, device=device)
    with pytest.raises(ValueError, match="q has 5 local tokens, k and v 10"):
        ring_attention(x, y, y)
    with pytest.raises(ValueError, match="layout must be one of"):
        ring_attention(y, y, y, layout="striped")


def test_without_a_process_group_each_function_says_how_to_get_one(device):
    assert not dist.is_initialized()
    x = torch.randn(1, 2, 8, 16, device=device)
    for call in (lambda: ring_attention(x, x, x), lambda: shard_sequence(x),
                 lambda: unshard_sequence(x)):
        with pytest.raises(ValueError, match="needs a torch.distributed process group: call "
                                             "torch.distributed.init_process_group"):
            call()


def test_partial_results_merge_stably_through_their_lse(device):
    """Partials over disjoint keys merge to the softmax over all of them, with LSEs far past
    exp's float32 range and with a side that saw no key (-inf, zeros)."""
    lse_a = torch.tensor([1e4, -1e4, 0.0, -math.inf, -math.inf, 3.0], device=device)
    lse_b = torch.tensor([1e4 + 1, -1e4 - 2, 50.0, 2.0, -math.inf, -math.inf], device=device)
    out_a = torch.randn(6, 3, device=device).masked_fill(lse_a.isinf()[:, None], 0.0)
    out_b = torch.randn(6, 3, device=device).masked_fill(lse_b.isinf()[:, None], 0.0)
    lse2_a, lse2_b = (lse / LN2 for lse in (lse_a, lse_b))  # base 2, float32, as the kernels'
    out, lse = out_a.clone(), lse2_a.clone()
    merge_partial(out, lse, out_b, lse2_b)

    both = torch.stack([lse2_a, lse2_b]).double() * LN2
    exact_lse = torch.logsumexp(both, dim=0)
    weights = torch.exp(both - exact_lse).nan_to_num(0.0)  # rows with no key: weight 0
    exact_out = weights[0, :, None] * out_a.double() + weights[1, :, None] * out_b.double()
    assert torch.allclose(out.double(), exact_out, rtol=1e-6, atol=1e-6), (out, exact_out)
    assert torch.equal(lse.isinf(), exact_lse.isinf())
    finite = exact_lse.isfinite()
    assert torch.allclose((lse * LN2).double()[finite], exact_lse[finite], rtol=1e-6)
