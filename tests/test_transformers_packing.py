"""attn_implementation="attention_ops" on packed and padded batches: rows of documents laid end
to end and padded rows run ``flash_attention_varlen``, each document, or each row's real
tokens, attending only to itself, with no (L, S) mask. Tiny randomly initialised GPT-2 and
Llama (grouped-query) as in test_transformers_integration.py; the helpers that cut batches
into sequences are checked against the dense reference on their own."""

import pytest
import torch
from seeding import generator

transformers = pytest.importorskip("transformers", reason="the integration's optional dependency")

from test_transformers_integration import (  # noqa: E402
    CONFIGS,
    FP32_SLACK,
    WINDOW,
    assert_matches_eager,
    eager_model,
    with_attention,
)
from transformers.masking_utils import (  # noqa: E402
    and_masks,
    causal_mask_function,
    sdpa_mask,
    sliding_window_causal_mask_function,
)

import attention_ops as ao  # noqa: E402
from attention_ops import reference  # noqa: E402
from attention_ops.integrations import packing  # noqa: E402
from attention_ops.integrations import transformers as ao_transformers  # noqa: E402

DOCUMENTS = (9, 4, 11)  # one row of 24 tokens: a middle document shorter than a tile


@pytest.fixture(scope="module", autouse=True)
def registered():
    ao_transformers.register()


@pytest.fixture
def varlen_calls(monkeypatch) -> list[torch.Tensor]:
    """The cu_seqlens_q of every flash_attention_varlen call the integration makes."""
    calls = []

    def recording(q, k, v, cu_seqlens_q, *args, **kwargs):
        calls.append(cu_seqlens_q)
        return ao.flash_attention_varlen(q, k, v, cu_seqlens_q, *args, **kwargs)

    monkeypatch.setattr(packing, "flash_attention_varlen", recording)
    return calls


def packed_row() -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
    """Token ids of one row holding DOCUMENTS, their position ids and the documents' slices."""
    ids = torch.randint(0, 100, (1, sum(DOCUMENTS)), generator=generator(1))
    positions = torch.cat([torch.arange(n) for n in DOCUMENTS])[None]
    ends = torch.tensor(DOCUMENTS).cumsum(0).tolist()
    return ids, positions, [slice(end - n, end) for n, end in zip(DOCUMENTS, ends, strict=True)]


def per_document_logits(model, ids, documents) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(input_ids=ids[:, doc]).logits for doc in documents], dim=1)


@pytest.mark.parametrize("use_cache", [False, True],
                         ids=["mask-function-finds-documents", "attention-finds-documents"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_packed_row_gives_each_document_the_logits_it_has_alone(name, use_cache,
                                                                  varlen_calls):
    # Without a cache transformers itself detects the restarting position ids and asks for a
    # block-diagonal mask (the mask function hands over the position ids instead); with one it
    # builds a plain causal mask (None here), and the attention function reads them.
    ids, positions, documents = packed_row()
    model = eager_model(name)
    alone = per_document_logits(with_attention(model, "eager", torch.float32), ids, documents)
    with ao.strict(), torch.no_grad():
        packed = with_attention(model, "attention_ops", torch.float32)(
            input_ids=ids, position_ids=positions, use_cache=use_cache).logits
    assert_matches_eager("logits", packed, alone)
    assert len(varlen_calls) == model.config.num_hidden_layers
    assert varlen_calls[0].tolist() == [0, 9, 13, 24]


def test_cu_seq_lens_arguments_cut_a_row_into_documents(varlen_calls):
    # transformers' padding-free collator passes cu_seq_lens_q/k and max_length_q/k. Llama's
    # rotary embedding makes scores depend on relative positions only, so even with position
    # ids running on across documents each document gets the logits it has alone.
    ids, _, documents = packed_row()
    model = eager_model("llama-gqa")
    alone = per_document_logits(with_attention(model, "eager", torch.float32), ids, documents)
    cu = torch.tensor([0, 9, 13, 24], dtype=torch.int32)
    with ao.strict(), torch.no_grad():
        packed = with_attention(model, "attention_ops", torch.float32)(
            input_ids=ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=11,
            max_length_k=11).logits
    assert_matches_eager("logits", packed, alone)
    assert len(varlen_calls) == model.config.num_hidden_layers


def logits_and_grads(model, ids, mask) -> dict[str, torch.Tensor]:
    """Logits at real tokens, and the gradients of a fixed random projection of them with
    respect to the input embeddings (at every position) and to every parameter they reach."""
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    logits = model(inputs_embeds=embeds, attention_mask=mask).logits
    weights = torch.randn(logits.shape, generator=generator(2))
    (logits * weights.to(logits.dtype))[mask.bool()].sum().backward()
    grads = {f"grad {n}": p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {"logits": logits[mask.bool()].detach(), "grad inputs_embeds": embeds.grad, **grads}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_left_and_right_padded_batch_matches_eager_at_real_tokens_and_pads_get_no_gradient(
        name, varlen_calls):
    ids = torch.randint(0, 100, (2, 24), generator=generator(1))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[0, :7] = 0  # left padding: the first row starts at position 7
    mask[1, -5:] = 0  # right padding: the second row ends 5 positions early
    model = eager_model(name)
    # Ground truth in float64 from "sdpa", the bar twice eager's float32 error (see
    # test_transformers_integration.py).
    exact = logits_and_grads(with_attention(model, "sdpa", torch.float64), ids, mask)
    eager = logits_and_grads(with_attention(model, "eager", torch.float32), ids, mask)
    with ao.strict():
        ours = logits_and_grads(with_attention(model, "attention_ops", torch.float32), ids, mask)
    assert len(varlen_calls) == model.config.num_hidden_layers  # no (L, S) mask anywhere
    assert ours.keys() == exact.keys()
    real = mask.bool()
    assert not ours["grad inputs_embeds"][~real].any(), "pads received a gradient"
    for label, ref in exact.items():
        a, b = ours[label], eager[label]
        if label == "grad inputs_embeds":
            a, b, ref = a[real], b[real], ref[real]
        err = (a.double() - ref).abs().max().item()
        bar = 2 * (b.double() - ref).abs().max().item() + FP32_SLACK * ref.abs().max().item()
        assert err <= bar, f"{label}: error {err:.3g} > bar {bar:.3g}"


# Rows of a padded batch of 6 key positions: left, right and both sides padded, no padding,
# all padding.
PADDING = [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1],
           [0, 0, 0, 0, 0, 0]]


@pytest.mark.filterwarnings("ignore:scaled_dot_product_attention runs the eager path")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64],
                         ids=["fused", "eager-per-sequence"])
@pytest.mark.parametrize("q_length", [6, 2], ids=["whole-rows", "last-2-over-a-cache"])
def test_padded_batch_sequences_attend_as_the_padded_rows_do_with_zeros_at_pads(q_length,
                                                                                 dtype):
    # Causal attention with a window of 3 keys, the queries the last q_length keys of each
    # row (bottom-right), against the dense reference with the padding mask. float64 is not
    # a kernel dtype: it runs the eager math one sequence at a time.
    padding = torch.tensor(PADDING, dtype=torch.bool)
    batch, seqlen = padding.shape
    q = torch.randn(batch, 4, q_length, 16, generator=generator(3), dtype=dtype)
    k, v = (torch.randn(batch, 2, seqlen, 16, generator=generator(s), dtype=dtype)
            for s in (4, 5))
    real_queries = padding[:, seqlen - q_length:]
    visible = reference.visibility_mask(q_length, seqlen, causal=True, window=(2, 0),
                                        align="bottom_right")
    expected = reference.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
        attn_mask=visible & padding[:, None, None, :] & real_queries[:, None, :, None])
    tokens = [t.transpose(1, 2).reshape(-1, t.shape[1], 16) for t in (q, k, v)]
    with ao.strict(dtype == torch.float32):
        out = packing.attend_packed(*tokens, packing.padded_batch(padding, q_length),
                                    causal=True, window=(2, 0), dropout_p=0.0, scale=None,
                                    softcap=None, sinks=None)
    out = out.view(batch, q_length, 4, 16).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not out.transpose(1, 2)[~real_queries].any()  # exact zeros at pad queries


@pytest.mark.parametrize("positions, cu_seqlens", [
    ([[0, 1, 2, 0, 1, 0, 1, 2, 3]], [0, 3, 5, 9]),
    ([[0, 1, 0, 1], [0, 1, 2, 3]], [0, 2, 4, 8]),  # every row starts a document
    ([[5, 6, 7, 0, 1]], [0, 3, 5]),  # a first position other than 0
    ([[0, 1, 2, 3]], [0, 4]),
])
def test_documents_start_wherever_a_position_is_not_the_previous_one_plus_1(positions,
                                                                             cu_seqlens):
    documents = packing.packed_documents(torch.tensor(positions))
    assert documents.cu_seqlens_q.tolist() == documents.cu_seqlens_k.tolist() == cu_seqlens
    assert documents.max_seqlen == torch.tensor(cu_seqlens).diff().max()


def test_documents_are_found_again_when_the_position_ids_change_in_place():
    # The result is remembered per tensor (the layers of a forward share one), not past an
    # in-place change.
    positions = torch.tensor([[0, 1, 2, 3]])
    assert packing.packed_documents(positions).cu_seqlens_q.tolist() == [0, 4]
    positions[0, 2:] = torch.arange(2)
    assert packing.packed_documents(positions).cu_seqlens_q.tolist() == [0, 2, 4]


def _packed(mask_function, positions):
    """A mask function for rows of packed documents, as transformers composes one: the
    function on positions within documents, and only within a document."""
    documents = (positions == 0).cumsum(-1)

    def packed(b, h, q, kv):
        same = documents[b, q] == documents[b, kv]
        return mask_function(b, h, positions[b, q], positions[b, kv]) & same
    return packed


POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 0, 1]])


@pytest.mark.parametrize("mask_function, local_size, hands_over_positions", [
    (_packed(causal_mask_function, POSITIONS), None, True),
    (_packed(sliding_window_causal_mask_function(WINDOW), POSITIONS), WINDOW, True),
    # a window narrower than the documents
    (_packed(sliding_window_causal_mask_function(3), POSITIONS), 3, True),
    # an extra mask function on top of the causal one
    (_packed(and_masks(causal_mask_function, lambda b, h, q, kv: kv != 3), POSITIONS), None,
     False),
    # one document per row, where transformers asks for the mask itself
    (causal_mask_function, None, False),
], ids=["causal", "sliding-window", "narrow-window", "extra-and-mask", "one-document"])
def test_mask_function_hands_over_the_positions_of_packed_documents_under_the_kernel_rule(
        mask_function, local_size, hands_over_positions):
    case = dict(batch_size=2, q_length=8, kv_length=8, mask_function=mask_function,
                local_size=local_size, allow_is_causal_skip=False)
    mask = ao_transformers.create_attention_mask(**case)
    if hands_over_positions:
        assert torch.equal(mask, POSITIONS.to(torch.int32))
        assert mask._attention_ops_rule.window == local_size
    else:  # transformers' (2, 1, 8, 8) mask
        assert torch.equal(mask, sdpa_mask(**case))


@pytest.mark.parametrize("mask", [torch.ones(1, 3), torch.ones(1, 4, dtype=torch.bool),
                                  torch.zeros(1, 4, dtype=torch.long)],
                         ids=["float", "padding-of-the-wrong-length", "positions-too-long"])
def test_a_2d_mask_that_is_neither_padding_nor_position_ids_raises(mask):
    q = torch.randn(1, 2, 3, 16)
    with pytest.raises(ValueError, match="bool padding mask of shape"):
        ao_transformers.attention_forward(torch.nn.Module(), q, q, q, mask)
