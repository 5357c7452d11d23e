"""torch.compile(fullgraph=True) traces the fused kernels (custom ops with fake kernels) and
our SDPA without graph breaks, forward and backward, and the custom ops pass opcheck."""

import pytest
import torch
import torch.nn.functional as F
from seeding import generator

import attention_ops as ao
from attention_ops import ops
from attention_ops.options import ScoreMods


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch, so one test's cached graphs cannot hide another's."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def outputs_and_grads(fn, inputs, seed=0):
    """fn(*inputs) and its input gradients for a fixed random dout, under a fixed RNG seed."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    torch.manual_seed(seed)
    out = fn(*inputs)
    dout = torch.randn(out.shape, generator=generator(1))
    return [out.detach(), *torch.autograd.grad(out, inputs, dout)]


def assert_compiled_matches_eager(fn, inputs, backend):
    compiled = torch.compile(fn, fullgraph=True, backend=backend)  # a graph break raises
    expected = outputs_and_grads(fn, inputs)
    got = outputs_and_grads(compiled, inputs)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        # The compiled graph launches the same kernels on the same inputs.
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def gqa_inputs():
    # GQA (4 query heads on 2 key/value heads), odd length: two tiles, the second masked
    return [torch.randn(2, 4, 37, 16), torch.randn(2, 2, 37, 16), torch.randn(2, 2, 37, 16)]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_flash_attention_compiles_without_graph_breaks(backend):
    assert_compiled_matches_eager(
        lambda q, k, v: ao.flash_attention(q, k, v, causal=True), gqa_inputs(), backend)


PADDING = torch.arange(37) >= torch.tensor([[[[0]]], [[[5]]]])  # (B, 1, 1, S), bool


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("mask", [{"is_causal": True}, {"attn_mask": PADDING}],
                         ids=["causal", "bool-mask"])
def test_sdpa_compiles_without_graph_breaks(backend, mask):
    def attention(q, k, v):  # leading dims reshaped around the kernel inside the graph
        return ao.scaled_dot_product_attention(q.unsqueeze(0), k, v, enable_gqa=True,
                                               **mask).squeeze(0)

    assert_compiled_matches_eager(attention, gqa_inputs(), backend)


def test_dropout_seed_is_drawn_inside_the_graph_and_reproduces_eager():
    # aot_eager keeps torch's RNG stream, so the same manual seed gives the same mask.
    assert_compiled_matches_eager(
        lambda q, k, v: ao.flash_attention(q, k, v, causal=True, dropout_p=0.3),
        gqa_inputs(), "aot_eager")


def test_patched_torch_sdpa_compiles_to_our_kernel():
    def attention(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    with ao.patch_sdpa():
        assert_compiled_matches_eager(attention, gqa_inputs(), "aot_eager")


def test_eager_fallback_compiles_without_graph_breaks():
    # a float mask that requires grad: eager (the fused kernels compute no mask gradient)
    mask = torch.randn(37, 37, generator=generator(0)).requires_grad_()
    assert_compiled_matches_eager(
        lambda q, k, v: ao.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                        enable_gqa=True),
        gqa_inputs(), "aot_eager")


def test_strict_mode_fails_compilation_of_a_fallback():
    compiled = torch.compile(
        lambda q: ao.scaled_dot_product_attention(q, q, q), fullgraph=True,
        backend="aot_eager")
    with ao.strict(), pytest.raises(RuntimeError, match="float64"):
        compiled(torch.randn(1, 1, 3, 16, dtype=torch.float64))


def test_new_sequence_lengths_reuse_one_dynamic_graph():
    compiled = torch.compile(lambda q: ao.flash_attention(q, q, q, causal=True),
                             fullgraph=True, backend="aot_eager", dynamic=True)
    # one tensor as q, k and v (x, x, x self-attention); each length would recompile with
    # static shapes
    for seqlen in (7, 13, 21):
        compiled(torch.randn(1, 2, seqlen, 16, requires_grad=True)).sum().backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("case", ["causal", "dropout-mask", "modifiers", "packed"])
def test_custom_ops_pass_opcheck(case):
    # The ops are not differentiable themselves (AttentionFunction owns the backward),
    # so inputs do not require grad; the compiled backward tests above cover autograd.
    # GQA and a length of 9: one partial tile, kept small as opcheck runs each op ~10 times.
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 24)
    seed = ao.draw_dropout_seed(q.device) if case == "dropout-mask" else None
    packing = (None, None, None)
    mask = (torch.arange(9) >= torch.tensor([[[[0]]], [[[3]]]])).expand(2, 4, 9, 9)
    mods = {
        "causal": ScoreMods(0.25, causal=True),
        "dropout-mask": ScoreMods(0.25, dropout_p=0.25, attn_mask=mask),
        "modifiers": ScoreMods(0.25, causal=True, window_left=3, bottom_right=True,
                               softcap=5.0, attn_mask=torch.randn(9, 9).expand(2, 4, 9, 9),
                               alibi_slopes=torch.rand(4), sinks=torch.randn(4)),
        "packed": ScoreMods(0.25, causal=True, sinks=torch.randn(4)),
    }[case]
    if case == "packed":  # the two batch rows as two packed sequences of 9 tokens
        q, k, v = (t.transpose(1, 2).flatten(0, 1) for t in (q, k, v))
        cu_seqlens = torch.tensor([0, 9, 18], dtype=torch.int32)
        packing = (cu_seqlens, cu_seqlens, 9)
    fwd_args = (q, k, v, *packing, seed, *mods.fields())
    torch.library.opcheck(ops.attention_fwd, fwd_args)
    out, lse = ops.attention_fwd(*fwd_args)
    torch.library.opcheck(ops.attention_bwd, (torch.randn_like(out), q, k, v, out, lse,
                                              *fwd_args[3:]))
