"""attn_implementation="attention_ops" across the decoder families people train: each a tiny
randomly initialised model (two layers, no downloads) under strict mode, so every attention
call stays on the fused kernels, against eager attention: logits and every parameter's
gradient on a left-padded batch, and greedy generation from left-padded prompts. Families a
transformers version does not ship are skipped there; the sliding-window families run without
an (L, S) mask where nothing is padded."""

import pytest
import torch
from seeding import generator

transformers = pytest.importorskip("transformers", reason="the integration's optional dependency")

from test_transformers_integration import (  # noqa: E402
    FP32_REL,
    assert_matches_eager,
    logits_and_grads,
    with_attention,
)

import attention_ops as ao  # noqa: E402
from attention_ops.integrations import transformers as ao_transformers  # noqa: E402

SEQLEN = 12
WINDOW = 5  # shorter than SEQLEN: windowed queries see a part of the row
TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, vocab_size=100, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)
ROPE = {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
SLIDING_THEN_FULL = dict(sliding_window=WINDOW,
                         layer_types=["sliding_attention", "full_attention"])

# family: (config class name, its arguments beyond TINY, whether it slides)
FAMILIES = {
    "llama": ("LlamaConfig", dict(head_dim=16), False),
    "mistral": ("MistralConfig", dict(head_dim=16, sliding_window=WINDOW), True),
    "qwen3": ("Qwen3Config", dict(head_dim=16), False),
    "gemma2": ("Gemma2Config", dict(head_dim=16, query_pre_attn_scalar=16,
                                    attn_logit_softcapping=2.0, initializer_range=0.1,
                                    sliding_window=WINDOW), True),
    "gemma3": ("Gemma3TextConfig", dict(head_dim=16, query_pre_attn_scalar=16,
                                        **SLIDING_THEN_FULL), True),
    "cohere2": ("Cohere2Config", dict(**SLIDING_THEN_FULL), True),
    "olmo3": ("Olmo3Config", dict(**SLIDING_THEN_FULL), True),
    "gpt-oss": ("GptOssConfig", dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                     intermediate_size=32, sliding_window=WINDOW, **ROPE), True),
    # multi-head latent attention: query/key head dim 16 + 8 rotary, value head dim 16
    "deepseek-v3": ("DeepseekV3Config", dict(
        num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4, n_shared_experts=1,
        num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
        moe_intermediate_size=32), False),
    "smollm3": ("SmolLM3Config", dict(no_rope_layer_interval=2), False),
    "phi3": ("Phi3Config", dict(sliding_window=WINDOW), True),
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=64, n_head=4, n_positions=64, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0), False),
}


def build(family: str) -> torch.nn.Module:
    """The family's tiny eager model, or a skip where this transformers lacks it."""
    class_name, arguments, _ = FAMILIES[family]
    config_class = getattr(transformers, class_name, None)
    if config_class is None:
        pytest.skip(f"transformers {transformers.__version__} has no {class_name}")
    torch.manual_seed(0)
    config = config_class(**{**TINY, **arguments})
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")


@pytest.fixture(scope="module", autouse=True)
def registered():
    ao_transformers.register()


def left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 100, (2, SEQLEN), generator=generator(1))
    mask = torch.ones(2, SEQLEN, dtype=torch.long)
    mask[1, :4] = 0  # the second row starts at position 4
    return ids, mask


@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_on_a_left_padded_batch_matches_eager(family):
    model = build(family)
    ids, mask = left_padded_batch()
    eager = logits_and_grads(with_attention(model, "eager", torch.float32), ids, mask)
    with ao.strict():
        ours = logits_and_grads(with_attention(model, "attention_ops", torch.float32), ids, mask)
    names = ["logits", *(f"grad {n}" for n, _ in model.named_parameters())]
    for label, a, b in zip(names, ours, eager, strict=True):
        if b is None:  # parameters the loss does not reach (e.g. a multi-token head)
            assert a is None, label
            continue
        assert_matches_eager(label, a, b)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_generation_from_left_padded_prompts_matches_eager(family):
    model = build(family).eval()
    prompt, mask = left_padded_batch()
    results = []
    for implementation in ("eager", "attention_ops"):
        with ao.strict(implementation == "attention_ops"):
            out = with_attention(model, implementation, torch.float32).generate(
                prompt, attention_mask=mask, max_new_tokens=4, do_sample=False,
                output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        results.append(out)
    eager, ours = results
    assert torch.equal(ours.sequences, eager.sequences)
    for step, (a, b) in enumerate(zip(ours.scores, eager.scores, strict=True)):
        assert_matches_eager(f"step {step} scores", a, b)


@pytest.mark.parametrize("family", [f for f, (_, _, slides) in FAMILIES.items() if slides])
def test_sliding_window_families_build_no_mask_without_padding(family, monkeypatch):
    # transformers' boolean mask is built by sdpa_mask; without padding the kernel's causal
    # and window rule is the whole mask, so it is never called, and the window matters.
    built = []
    real_sdpa_mask = ao_transformers.sdpa_mask
    monkeypatch.setattr(ao_transformers, "sdpa_mask",
                        lambda **kw: built.append(kw) or real_sdpa_mask(**kw))
    model = build(family)
    ids = left_padded_batch()[0]
    with torch.no_grad():
        eager = with_attention(model, "eager", torch.float32)(input_ids=ids).logits
        with ao.strict():
            ours = with_attention(model, "attention_ops", torch.float32)(input_ids=ids).logits
        model.config.sliding_window = WINDOW + 1  # read where the masks are built
        wider = with_attention(model, "eager", torch.float32)(input_ids=ids).logits
    assert built == []
    assert_matches_eager("logits", ours, eager)
    assert (wider - eager).abs().max() > 100 * FP32_REL * eager.abs().max()


def test_a_mask_the_integration_cannot_read_takes_the_eager_path_outside_strict_mode():
    # MiniMax's cache reports its linear-attention layer's sizes, so left-padded decoding asks
    # for a padding mask over 1 key where the full-attention layer has them all.
    if getattr(transformers, "MiniMaxConfig", None) is None:
        pytest.skip(f"transformers {transformers.__version__} has no MiniMaxConfig")
    torch.manual_seed(0)
    config = transformers.MiniMaxConfig(**{
        **TINY, "head_dim": 16, "num_local_experts": 2, "num_experts_per_tok": 1,
        "layer_types": ["linear_attention", "full_attention"]})
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    prompt, mask = left_padded_batch()
    sequences = {}
    for implementation in ("eager", "attention_ops"):
        sequences[implementation] = with_attention(model.eval(), implementation,
                                                   torch.float32).generate(
            prompt, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(sequences["attention_ops"], sequences["eager"])
    with ao.strict(), pytest.raises(ao.FusedPathUnavailableError, match="keys"):
        with_attention(model, "attention_ops", torch.float32).generate(
            prompt, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)


def test_a_compiled_causal_model_builds_no_mask(monkeypatch):
    # While tracing, the mask function reads no tensor values: plain causal attention without
    # padding still hands over nothing, and the fused ops trace with fullgraph=True.
    built = []
    real_sdpa_mask = ao_transformers.sdpa_mask
    monkeypatch.setattr(ao_transformers, "sdpa_mask",
                        lambda **kw: built.append(kw) or real_sdpa_mask(**kw))
    model = build("llama")
    ids = left_padded_batch()[0]
    with torch.no_grad():
        eager = with_attention(model, "eager", torch.float32)(input_ids=ids).logits
        compiled = torch.compile(with_attention(model, "attention_ops", torch.float32),
                                 fullgraph=True, backend="aot_eager")
        with ao.strict():
            ours = compiled(input_ids=ids).logits
    assert built == []
    assert_matches_eager("logits", ours, eager)
