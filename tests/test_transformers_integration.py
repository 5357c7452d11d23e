"""attn_implementation="attention_ops" in Hugging Face transformers: tiny randomly initialised
models give eager attention's logits and gradients. GPT-2 and Llama (grouped-query); the
sliding-window families Gemma 2 (with logit soft-capping), Mistral and gpt-oss (with attention
sinks), whose windows run on the kernel's own causal + window rule where no padding needs a
mask; and the mask function that decides where a mask is needed."""

import copy

import pytest
import torch
from seeding import generator

transformers = pytest.importorskip("transformers", reason="the integration's optional dependency")

from transformers.masking_utils import (  # noqa: E402
    and_masks,
    causal_mask_function,
    chunked_causal_mask_function,
    sdpa_mask,
    sliding_window_causal_mask_function,
)

import attention_ops as ao  # noqa: E402
from attention_ops.integrations import transformers as ao_transformers  # noqa: E402

# Slack beside "2x eager's float32 error", relative to the largest reference magnitude: ~80
# float32 ulps, for the fused kernel's exp2-based softmax and its recomputed backward.
FP32_SLACK = 1e-5
# The sliding-window families compare with eager float32 directly (float64 gives no truth
# there: Gemma 2's and Mistral's eager softmax runs in float32, where float64's finfo.min
# becomes -inf and padded rows NaN; gpt-oss's experts refuse float64; "sdpa" rejects softcap
# and ignores sinks). Both sides round in float32 through two layers: allow 2e-5 of the
# largest reference magnitude (~170 float32 ulps); measured differences stay below 1.1e-6.
FP32_REL = 2e-5
SEQLEN = 24
WINDOW = 8  # shorter than SEQLEN: windowed queries see a part of the sequence

CONFIGS = {
    "gpt2": transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=SEQLEN, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    # grouped-query attention: 4 query heads share 2 key/value heads
    "llama-gqa": transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, vocab_size=100, max_position_embeddings=SEQLEN),
}

_WINDOWED = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=100,
                 max_position_embeddings=SEQLEN, sliding_window=WINDOW)
WINDOWED_CONFIGS = {
    # layer 0 slides, layer 1 is full. initializer_range 0.1 gives scores up to ~3.5, so a
    # cap of 2 bends them (the default 50 would leave them untouched).
    "gemma2": transformers.Gemma2Config(
        **_WINDOWED, intermediate_size=128, query_pre_attn_scalar=16,
        attn_logit_softcapping=2.0, initializer_range=0.1),
    # every layer slides
    "mistral": transformers.MistralConfig(**_WINDOWED, intermediate_size=128),
    # layer 0 slides, layer 1 is full; one sink logit per query head; 4 experts
    "gpt-oss": transformers.GptOssConfig(
        **_WINDOWED, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}


@pytest.fixture(scope="module", autouse=True)
def registered():
    ao_transformers.register()


def eager_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = {**CONFIGS, **WINDOWED_CONFIGS}[name]
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def with_attention(model: torch.nn.Module, implementation: str, dtype: torch.dtype):
    model = copy.deepcopy(model).to(dtype)
    model.set_attn_implementation(implementation)
    return model


def batch(padding: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = torch.randint(0, 100, (2, SEQLEN), generator=generator(1))
    if padding is None:
        return ids, None
    mask = torch.ones(2, SEQLEN, dtype=torch.long)
    if padding == "left":
        mask[1, :7] = 0  # the second sequence starts at position 7
    else:
        mask[1, -5:] = 0  # the second sequence ends 5 positions early
    return ids, mask


def logits_and_grads(model, ids, mask) -> list[torch.Tensor]:
    """Logits at real tokens and every parameter's gradient of a fixed random projection of
    them. Padded query rows attend to nothing; eager and SDPA disagree there by design."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool() if mask is not None else torch.ones(ids.shape, dtype=torch.bool)
    weights = torch.randn(logits.shape, generator=generator(2))
    (logits * weights.to(logits.dtype))[real].sum().backward()
    return [logits[real].detach(), *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("padding", [None, "left"], ids=["no-padding", "left-padding"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_gradients_match_eager_attention(name, padding):
    ids, mask = batch(padding)
    model = eager_model(name)
    # Ground truth in float64 from "sdpa": float64 "eager" adds finfo.min to scores, which
    # overflows to -inf, so padded rows turn NaN and reach real tokens through 0 * NaN.
    exact = logits_and_grads(with_attention(model, "sdpa", torch.float64), ids, mask)
    eager = logits_and_grads(with_attention(model, "eager", torch.float32), ids, mask)
    with ao.strict():  # causal and padding masks both stay on the fused kernel
        ours = logits_and_grads(with_attention(model, "attention_ops", torch.float32), ids, mask)
    names = ["logits", *(f"grad {n}" for n, _ in model.named_parameters())]
    for label, a, b, ref in zip(names, ours, eager, exact, strict=True):
        err = (a.double() - ref).abs().max().item()
        bar = 2 * (b.double() - ref).abs().max().item() + FP32_SLACK * ref.abs().max().item()
        assert err <= bar, f"{label}: error {err:.3g} > bar {bar:.3g}"


def assert_matches_eager(label: str, ours: torch.Tensor, eager: torch.Tensor) -> None:
    err = (ours - eager).abs().max().item()
    bar = FP32_REL * eager.abs().max().item()
    assert err <= bar, f"{label}: error {err:.3g} > {bar:.3g}"


@pytest.mark.parametrize("padding", [None, "left", "right"],
                         ids=["no-padding", "left-padding", "right-padding"])
@pytest.mark.parametrize("name", list(WINDOWED_CONFIGS))
def test_sliding_window_families_match_eager_attention(name, padding):
    # Without padding the sliding layers run the kernel's window rule with no mask; with
    # padding they read transformers' full boolean mask. Softcap and sinks apply either way.
    ids, mask = batch(padding)
    model = eager_model(name)
    eager = logits_and_grads(with_attention(model, "eager", torch.float32), ids, mask)
    with ao.strict():
        ours = logits_and_grads(with_attention(model, "attention_ops", torch.float32), ids, mask)
    names = ["logits", *(f"grad {n}" for n, _ in model.named_parameters())]
    for label, a, b in zip(names, ours, eager, strict=True):
        assert_matches_eager(label, a, b)


def _without_softcap(model):
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = None


def _window_one_longer(model):
    model.config.sliding_window = WINDOW + 1  # read where the masks are built


def _without_sinks(model):
    for layer in model.model.layers:  # exp(-1e4) adds nothing to a denominator
        torch.nn.init.constant_(layer.self_attn.sinks, -1e4)


@pytest.mark.parametrize("name, change", [
    ("gemma2", _without_softcap), ("gemma2", _window_one_longer),
    ("mistral", _window_one_longer), ("gpt-oss", _window_one_longer),
    ("gpt-oss", _without_sinks)], ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_the_sliding_window_models_depend_on_their_window_softcap_and_sinks(name, change):
    # What the comparisons above rest on: each feature moves eager's logits by far more than
    # their tolerance, so an implementation that drops it or shifts the window by one key
    # fails them.
    ids = batch(None)[0]
    model = eager_model(name)
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        change(model)
        moved = (model(input_ids=ids).logits - reference).abs().max().item()
    assert moved > 100 * FP32_REL * reference.abs().max().item()


@pytest.mark.parametrize("name, padded", [("llama-gqa", False), ("gemma2", True),
                                          ("mistral", True), ("gpt-oss", True)])
def test_cached_generation_matches_eager_step_by_step(name, padded):
    # The prompt runs causal attention; each new token is one query over the cached keys. The
    # prompt (12 tokens) outgrows the window, so sliding caches keep the last WINDOW - 1 keys;
    # the padding of the windowed families' prompts (3 tokens) leaves their window.
    prompt = batch(None)[0][:, :12]
    prompt_mask = torch.ones(prompt.shape, dtype=torch.long)
    prompt_mask[1, :3] = 0
    scores = []
    for implementation in ("eager", "attention_ops"):
        model = with_attention(eager_model(name), implementation, torch.float32)
        with ao.strict(implementation == "attention_ops"):
            out = model.generate(prompt, attention_mask=prompt_mask if padded else None,
                                 max_new_tokens=4, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=0)
        scores.append(torch.stack(out.scores))
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(WINDOWED_CONFIGS))
def test_a_chunk_after_a_full_sliding_window_cache_matches_eager(name):
    # 12 cached tokens, then 5 queries at once over the cache: sliding layers see 7 cached
    # + 5 new keys, full layers 17; the queries are the last keys (bottom-right alignment).
    ids = batch(None)[0][:, :17]
    logits = []
    for implementation in ("eager", "attention_ops"):
        model = with_attention(eager_model(name), implementation, torch.float32)
        with ao.strict(implementation == "attention_ops"), torch.no_grad():
            cache = model(input_ids=ids[:, :12], use_cache=True).past_key_values
            logits.append(model(input_ids=ids[:, 12:], past_key_values=cache).logits)
    assert_matches_eager("chunk logits", logits[1], logits[0])


@pytest.mark.parametrize("q_length, kv_length", [(SEQLEN, SEQLEN), (5, 12), (1, 17)],
                         ids=["prefill", "chunk-over-cache", "decode"])
def test_sliding_window_argument_means_transformers_sliding_window_mask(q_length, kv_length):
    # transformers' mask for sliding_window=W: query position q sees key positions
    # q - W < kv <= q (W keys, its own included), queries being the last keys.
    q = torch.randn(2, 4, q_length, 16, generator=generator(3))
    k = torch.randn(2, 2, kv_length, 16, generator=generator(4))
    v = torch.randn(2, 2, kv_length, 16, generator=generator(5))
    offset = kv_length - q_length
    mask = sdpa_mask(batch_size=2, q_length=q_length, kv_length=kv_length, q_offset=offset,
                     mask_function=sliding_window_causal_mask_function(WINDOW),
                     allow_is_causal_skip=False, device=q.device)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    with ao.strict():
        ours, _ = ao_transformers.attention_forward(torch.nn.Module(), q, k, v, None,
                                                    sliding_window=WINDOW)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def _mask_case(*, q_length=SEQLEN, kv_length=SEQLEN, q_offset=0, kv_offset=0, padding=None,
               local_size=None, function=None, allow_is_causal_skip=True):
    """The arguments transformers' mask builders pass."""
    if function is None:
        function = (causal_mask_function if local_size is None
                    else sliding_window_causal_mask_function(local_size))
    return dict(batch_size=2, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                kv_offset=kv_offset, mask_function=function, attention_mask=padding,
                local_size=local_size, allow_is_causal_skip=allow_is_causal_skip,
                device=torch.get_default_device())


def _padding(length: int, start: int) -> torch.Tensor:
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[1, :start] = False
    return mask


def _holed_padding() -> torch.Tensor:
    mask = _padding(SEQLEN, 0)
    mask[1, 10] = False  # real tokens on both sides: no longer one run
    return mask


def _kernel_rule(case: dict) -> torch.Tensor:
    """transformers' boolean mask for the kernel's rule on the case's positions: causal,
    within case["local_size"] keys when given, padding applied."""
    function = (causal_mask_function if case["local_size"] is None
                else sliding_window_causal_mask_function(case["local_size"]))
    return sdpa_mask(**{**case, "mask_function": function, "allow_is_causal_skip": False})


@pytest.mark.parametrize("case, handed_over", [
    (_mask_case(), "nothing"),
    (_mask_case(local_size=WINDOW), "window"),
    # a sliding cache: 7 kept keys (positions 5..11) and 5 new queries (12..16)
    (_mask_case(q_length=5, kv_length=12, q_offset=12, kv_offset=5, local_size=WINDOW),
     "window"),
    # the same with padding that has left the window
    (_mask_case(q_length=5, kv_length=12, q_offset=12, kv_offset=5, local_size=WINDOW,
                padding=_padding(17, 3)), "window"),
    # ... and with padding still inside it: the (2, 12) padding of the kept keys
    (_mask_case(q_length=5, kv_length=12, q_offset=12, kv_offset=5, local_size=WINDOW,
                padding=_padding(17, 7)), "padding"),
    (_mask_case(q_length=1, kv_length=17, q_offset=16), "nothing"),
    (_mask_case(padding=_padding(SEQLEN, 0)), "nothing"),  # a mask with no padding
    (_mask_case(padding=_padding(SEQLEN, 7)), "padding"),
    (_mask_case(local_size=WINDOW, padding=_padding(SEQLEN, 7)), "padding"),
    (_mask_case(padding=_holed_padding()), "mask"),
    # a static cache's prefill: 24 queries, 32 slots, the last 8 empty
    (_mask_case(kv_length=32, padding=_padding(SEQLEN, 0)), "mask"),
    # Llama 4's chunks (local_size the chunk size): their starts see no earlier key
    (_mask_case(local_size=2 * WINDOW, function=chunked_causal_mask_function(
        2 * WINDOW, torch.zeros(2, dtype=torch.long))), "mask"),
    # ... also where the window would reach no further back than the first key
    (_mask_case(q_length=6, kv_length=6, local_size=2 * WINDOW,
                function=chunked_causal_mask_function(2 * WINDOW, torch.tensor([3, 0]))),
     "mask"),
    # a window other than local_size
    (_mask_case(local_size=WINDOW, function=sliding_window_causal_mask_function(WINDOW + 1)),
     "mask"),
    (_mask_case(allow_is_causal_skip=False), "mask"),  # e.g. a mask to concatenate
    (_mask_case(allow_is_causal_skip=False,
                function=and_masks(causal_mask_function, lambda b, h, q, kv: kv != 3)), "mask"),
], ids=["causal", "window", "window-over-cache", "window-over-cache-padding-evicted",
        "window-over-cache-padded", "decode", "all-true-padding-mask", "causal-padded",
        "window-padded", "padding-with-a-hole", "static-cache-prefill", "chunked",
        "chunked-short", "another-window", "skip-not-allowed", "extra-and-mask"])
def test_mask_function_leaves_to_the_kernel_exactly_the_masks_its_rule_reproduces(
        case, handed_over):
    # The kernel's rule (causal, the window, bottom-right) needs nothing where no padding
    # hides keys but for the window it brings, and only the (B, S) padding mask where each
    # row's real tokens are one run (it then attends within them); every other pattern gets
    # transformers' full mask.
    mask = ao_transformers.create_attention_mask(**case)
    if handed_over == "nothing":
        assert mask is None
    elif handed_over in ("window", "padding"):
        kv = slice(case["kv_offset"], case["kv_offset"] + case["kv_length"])
        padding = (case["attention_mask"][:, kv] if handed_over == "padding"
                   else torch.ones(2, case["kv_length"], dtype=torch.bool))
        assert torch.equal(mask, padding)
        assert mask._attention_ops_rule.window == case["local_size"]
        assert mask._attention_ops_rule.padded == (handed_over == "padding")
        assert torch.equal(padding[:, None, None] & _kernel_rule({**case, "attention_mask": None}),
                           _kernel_rule(case))  # what the pair stands for
    else:
        expected = sdpa_mask(**{**case, "allow_is_causal_skip": False})
        assert mask is not None and mask.dtype == torch.bool
        assert torch.equal(mask.expand_as(expected), expected)


def test_models_that_do_not_pass_their_window_get_it_from_the_mask():
    # PhiMoE builds sliding-window masks but calls attention without `sliding_window`.
    config = transformers.PhimoeConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, vocab_size=100,
        max_position_embeddings=SEQLEN, sliding_window=WINDOW)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.eval()  # its router samples in training mode
    ids = batch(None)[0]
    logits = []
    for implementation in ("eager", "attention_ops"):
        with ao.strict(implementation == "attention_ops"), torch.no_grad():
            logits.append(with_attention(model, implementation, torch.float32)(input_ids=ids)
                          .logits)
    assert_matches_eager("logits", logits[1], logits[0])


@pytest.mark.parametrize("argument, value", [("position_bias", torch.ones(())),
                                             ("sliding_window", 0)])
def test_arguments_it_cannot_honour_raise(argument, value):
    q = torch.randn(1, 2, 3, 16)
    with pytest.raises(ValueError, match=argument):
        ao_transformers.attention_forward(torch.nn.Module(), q, q, q, None, **{argument: value})


@pytest.mark.parametrize("dropout", [1.5, -0.1, float("nan")])
def test_a_dropout_outside_0_1_raises(dropout):
    q = torch.randn(1, 2, 3, 16)
    with pytest.raises(ValueError, match="dropout_p"):
        ao_transformers.attention_forward(torch.nn.Module(), q, q, q, None, dropout=dropout)


def test_a_padding_mask_for_other_keys_than_the_layers_runs_eager_with_a_warning(monkeypatch):
    monkeypatch.setattr("attention_ops.sdpa._warned_reasons", set())  # warn-once starts fresh
    # A model whose cache reports another layer's sizes asks for a mask over 1 key while the
    # layer attends to 13 (MiniMax's left-padded decoding): "sdpa" and "eager" broadcast
    # transformers' (B, 1, 1, 1) mask over the 13 keys, and so does the eager path here.
    padding = torch.ones(2, 13, dtype=torch.bool)
    padding[1, :4] = False
    case = dict(batch_size=2, q_length=1, kv_length=1, q_offset=0, kv_offset=0,
                mask_function=causal_mask_function, attention_mask=padding)
    mask = ao_transformers.create_attention_mask(**case)
    q = torch.randn(2, 4, 1, 16, generator=generator(3))
    k, v = (torch.randn(2, 2, 13, 16, generator=generator(s)) for s in (4, 5))
    transformers_mask = sdpa_mask(**{**case, "allow_is_causal_skip": False})
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=transformers_mask, enable_gqa=True).transpose(1, 2)
    with pytest.warns(UserWarning, match="covers 1 keys"):
        ours, _ = ao_transformers.attention_forward(torch.nn.Module(), q, k, v, mask)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    with ao.strict(), pytest.raises(ao.FusedPathUnavailableError, match="covers 1 keys"):
        ao_transformers.attention_forward(torch.nn.Module(), q, k, v, mask)


def test_the_supported_range_is_the_one_the_distribution_declares():
    # setup.py's transformers extra (the lowest version CI tests) and the import-time check
    # name the same lowest release.
    from importlib.metadata import requires
    declared = [r for r in requires("attention-ops") if r.startswith("transformers>=")]
    lowest = ".".join(map(str, ao_transformers.MIN_TRANSFORMERS))
    assert declared and all(r.split(";")[0].strip() in (f"transformers>={lowest}",
                                                          f"transformers>={lowest}.0")
                            for r in declared)
