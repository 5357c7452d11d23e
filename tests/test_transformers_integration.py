"""attn_implementation="attention_ops" in Hugging Face transformers: tiny randomly initialised
GPT-2 and Llama (grouped-query) models give eager attention's logits and gradients."""

import copy

import pytest
import torch
from seeding import generator

transformers = pytest.importorskip("transformers", reason="the integration's optional dependency")

import attention_ops as ao  # noqa: E402
from attention_ops.integrations import transformers as ao_transformers  # noqa: E402

# Slack beside "2x eager's float32 error", relative to the largest reference magnitude: ~80
# float32 ulps, for the fused kernel's exp2-based softmax and its recomputed backward.
FP32_SLACK = 1e-5
SEQLEN = 24

CONFIGS = {
    "gpt2": transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=SEQLEN, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    # grouped-query attention: 4 query heads share 2 key/value heads
    "llama-gqa": transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, vocab_size=100, max_position_embeddings=SEQLEN),
}


@pytest.fixture(scope="module", autouse=True)
def registered():
    ao_transformers.register()


def eager_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[name],
                                                         attn_implementation="eager")


def with_attention(model: torch.nn.Module, implementation: str, dtype: torch.dtype):
    model = copy.deepcopy(model).to(dtype)
    model.set_attn_implementation(implementation)
    return model


def batch(padded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = torch.randint(0, 100, (2, SEQLEN), generator=generator(1))
    if not padded:
        return ids, None
    mask = torch.ones(2, SEQLEN, dtype=torch.long)
    mask[1, :7] = 0  # left padding: the second sequence starts at position 7
    return ids, mask


def logits_and_grads(model, ids, mask) -> list[torch.Tensor]:
    """Logits at real tokens and every parameter's gradient of a fixed random projection of
    them. Padded query rows attend to nothing; eager and SDPA disagree there by design."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool() if mask is not None else torch.ones(ids.shape, dtype=torch.bool)
    weights = torch.randn(logits.shape, generator=generator(2))
    (logits * weights.to(logits.dtype))[real].sum().backward()
    return [logits[real].detach(), *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "left-padding"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_gradients_match_eager_attention(name, padded):
    ids, mask = batch(padded)
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


def test_cached_generation_matches_eager_step_by_step():
    # The prompt runs causal attention; each new token is one query over the cached keys.
    prompt = batch(padded=False)[0][:, :7]
    scores = []
    for implementation in ("eager", "attention_ops"):
        model = with_attention(eager_model("llama-gqa"), implementation, torch.float32)
        out = model.generate(prompt, max_new_tokens=4, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=0)
        scores.append(torch.stack(out.scores))
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("argument", ["softcap", "s_aux", "position_bias"])
def test_arguments_that_change_the_math_raise(argument):
    q = torch.randn(1, 2, 3, 16)
    with pytest.raises(ValueError, match=argument):
        ao_transformers.attention_forward(torch.nn.Module(), q, q, q, None,
                                          **{argument: torch.ones(())})

