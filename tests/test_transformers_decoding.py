"""attn_implementation="attention_ops" while decoding: greedy ``generate()`` of tiny random
GPT-2 and Llama (grouped-query) gives eager attention's tokens, with transformers' default
dynamic cache and with a static one, every decoding step running
``flash_attention_with_kvcache``. The attention function hands that kernel exactly the calls
it computes (a few causal queries, the last of each row's first n keys) and keeps every other
call on the paths it had."""

import copy

import pytest
import torch
from seeding import generator

transformers = pytest.importorskip("transformers", reason="the integration's optional dependency")

from test_transformers_integration import CONFIGS  # noqa: E402
from transformers.masking_utils import (  # noqa: E402
    causal_mask_function,
    sdpa_mask,
    sliding_window_causal_mask_function,
)

import attention_ops as ao  # noqa: E402
from attention_ops import reference  # noqa: E402
from attention_ops.integrations import transformers as ao_transformers  # noqa: E402

BATCH, PROMPT, NEW_TOKENS = 2, 8, 8
# Weights ten times transformers' default spread: attention then moves the logits enough that
# the greedy tokens depend on every cached key (test_the_tokens_depend_on_the_newest_key); at
# 0.02 tiny GPT-2 repeats one token whatever its attention does.
INITIALIZER_RANGE = 0.2


@pytest.fixture(scope="module", autouse=True)
def registered():
    ao_transformers.register()


@pytest.fixture
def kvcache_lengths(monkeypatch) -> list[list[int]]:
    """The cache_seqlens of every flash_attention_with_kvcache call the integration makes."""
    calls = []

    def recording(q, k_cache, v_cache, cache_seqlens, **kwargs):
        calls.append(cache_seqlens.tolist())
        return ao.flash_attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, **kwargs)

    monkeypatch.setattr(ao_transformers, "flash_attention_with_kvcache", recording)
    return calls


def decoder(name: str, implementation: str) -> torch.nn.Module:
    config = copy.deepcopy(CONFIGS[name])
    config.initializer_range = INITIALIZER_RANGE
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation=implementation).eval()


def greedy(name: str, implementation: str, cache: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The NEW_TOKENS tokens greedy decoding appends to a (BATCH, PROMPT) prompt, and the
    logits each step chose from."""
    prompt = torch.randint(0, 100, (BATCH, PROMPT), generator=generator(1))
    out = decoder(name, implementation).generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
        do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True,
        cache_implementation=None if cache == "dynamic" else cache)
    return out.sequences[:, PROMPT:], torch.stack(out.scores)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_generation_gives_eager_tokens_with_every_step_on_the_decoding_kernel(
        name, cache, kvcache_lengths):
    tokens, scores = greedy(name, "eager", cache)
    with ao.strict():
        our_tokens, our_scores = greedy(name, "attention_ops", cache)
    assert torch.equal(our_tokens, tokens)
    torch.testing.assert_close(our_scores, scores, rtol=1e-5, atol=1e-5)
    # Each layer of each decoding step ran the kernel over the prompt and the tokens so far,
    # the newest one's key included. The static cache's prefill too: its PROMPT queries over
    # PROMPT + NEW_TOKENS - 1 slots, PROMPT of them filled.
    lengths = list(range(PROMPT + 1, PROMPT + NEW_TOKENS))
    if cache == "static":
        lengths.insert(0, PROMPT)
    layers = CONFIGS[name].num_hidden_layers
    assert kvcache_lengths == [[n] * BATCH for n in lengths for _ in range(layers)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_tokens_depend_on_the_newest_key(name, monkeypatch):
    # What the parity above rests on: a decoding kernel that leaves out each row's newest key
    # (an off-by-one in the cache lengths) gives other tokens.
    def without_newest_key(q, k_cache, v_cache, cache_seqlens, **kwargs):
        return ao.flash_attention_with_kvcache(q, k_cache, v_cache, cache_seqlens - 1, **kwargs)

    monkeypatch.setattr(ao_transformers, "flash_attention_with_kvcache", without_newest_key)
    tokens = greedy(name, "eager", "dynamic")[0]
    assert not torch.equal(greedy(name, "attention_ops", "dynamic")[0], tokens)


WINDOW = 4  # a sliding window shorter than the caches below


def cache_mask(lengths: list[int], q_length: int, kv_length: int,
               window: int | None = None) -> torch.Tensor:
    """transformers' bool (B, 1, L, S) mask for a cache of S slots whose row b holds
    lengths[b] keys, the L queries the last of them: a static cache's mask (with the window of
    a sliding layer), its empty slots padding."""
    rule = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    return torch.cat([sdpa_mask(batch_size=1, q_length=q_length, kv_length=kv_length,
                                q_offset=n - q_length, mask_function=rule,
                                attention_mask=torch.arange(kv_length)[None] < n,
                                allow_is_causal_skip=False, device=torch.get_default_device())
                      for n in lengths])


def hiding(mask: torch.Tensor, row: int, keys: slice) -> torch.Tensor:
    """``mask`` with ``keys`` of ``row`` hidden from every query."""
    mask = mask.clone()
    mask[row, ..., keys] = False
    return mask


# Calls of a layer with 4 query heads and 2 key/value heads over 3 rows: L queries, S keys,
# the mask, other arguments, and the cache lengths the decoding kernel gets (None: it does not
# run). Without a mask a causal layer's queries are the last of its S keys.
CALLS = {
    "one-query": (1, 17, None, {}, [17, 17, 17]),
    "16-queries": (16, 40, None, {}, [40, 40, 40]),
    "sliding-window": (3, 17, None, dict(sliding_window=WINDOW), [17, 17, 17]),
    "softcap-and-sinks": (1, 17, None, dict(softcap=2.0, s_aux=torch.linspace(-1, 1, 4)),
                          [17, 17, 17]),
    "static-cache": (1, 20, cache_mask([5, 9, 12], 1, 20), {}, [5, 9, 12]),
    "static-cache-3-queries": (3, 20, cache_mask([5, 9, 12], 3, 20), {}, [5, 9, 12]),
    "static-sliding-window": (2, 20, cache_mask([9, 3, 12], 2, 20, WINDOW),
                              dict(sliding_window=WINDOW), [9, 3, 12]),
    # Prefill-shaped: the forward kernel's query tiles.
    "17-queries": (17, 40, None, {}, None),
    "no-cached-key": (8, 8, None, {}, None),
    # Not causal, or not inference.
    "not-causal": (1, 17, None, dict(is_causal=False), None),
    "dropout": (1, 17, None, dict(dropout=0.5), None),
    # Masks the kernel cannot express: its keys are each row's first n.
    "left-padding": (1, 17, hiding(cache_mask([17] * 3, 1, 17), 1, slice(0, 3)), {}, None),
    "padding-with-a-hole": (1, 17, hiding(cache_mask([17] * 3, 1, 17), 2, slice(5, 6)), {},
                            None),
    "window-the-layer-does-not-pass": (1, 20, cache_mask([9, 9, 12], 1, 20, WINDOW), {},
                                       None),
    "float-mask": (1, 17, torch.zeros(3, 1, 1, 17), {}, None),
}


def expected_attention(q, k, v, mask, options) -> torch.Tensor:
    """The reference math of attention_forward's contract, as (B, L, Hq, D)."""
    causal = options.get("is_causal", True) and mask is None
    window = options.get("sliding_window")
    out = reference.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, causal=causal, align="bottom_right",
        window=(window - 1, 0) if causal and window else None,
        softcap=options.get("softcap"), sinks=options.get("s_aux"))
    return out.transpose(1, 2)


@pytest.mark.parametrize("q_length, kv_length, mask, options, lengths", CALLS.values(),
                         ids=CALLS.keys())
def test_decoding_kernel_runs_exactly_the_calls_it_computes(q_length, kv_length, mask, options,
                                                            lengths, kvcache_lengths):
    q = torch.randn(3, 4, q_length, 16, generator=generator(10))
    k, v = (torch.randn(3, 2, kv_length, 16, generator=generator(s)) for s in (11, 12))
    with torch.no_grad():
        ours, _ = ao_transformers.attention_forward(torch.nn.Module(), q, k, v, mask, **options)
    assert kvcache_lengths == ([] if lengths is None else [lengths])
    if options.get("dropout"):
        return  # a random mask: only the route is specified
    torch.testing.assert_close(ours, expected_attention(q, k, v, mask, options), rtol=1e-5,
                               atol=1e-5)


def test_inputs_requiring_grad_decode_only_with_grad_mode_off(kvcache_lengths):
    q, k, v = (torch.randn(1, 2, n, 16, requires_grad=True) for n in (1, 9, 9))
    out, _ = ao_transformers.attention_forward(torch.nn.Module(), q, k, v, None)
    out.sum().backward()  # the training forward, with its backward
    assert kvcache_lengths == [] and q.grad is not None
    with torch.no_grad():
        ao_transformers.attention_forward(torch.nn.Module(), q, k, v, None)
    assert kvcache_lengths == [[9]]


@pytest.mark.filterwarnings("ignore:scaled_dot_product_attention runs the eager path")
def test_inputs_the_fused_kernels_do_not_take_keep_the_eager_path(kvcache_lengths):
    q, k, v = (torch.randn(1, 2, n, 16, dtype=torch.float64) for n in (1, 9, 9))
    with torch.no_grad():
        out, _ = ao_transformers.attention_forward(torch.nn.Module(), q, k, v, None)
    assert kvcache_lengths == []
    torch.testing.assert_close(out, expected_attention(q, k, v, None, {}))


def test_a_mask_changed_in_place_is_read_again(kvcache_lengths):
    # The lengths of a mask are read once (the layers of a forward pass share it), but not
    # past an in-place change: here the static cache's row 0 turns left-padded.
    q = torch.randn(3, 4, 1, 16, generator=generator(10))
    k, v = (torch.randn(3, 2, 20, 16, generator=generator(s)) for s in (11, 12))
    mask = cache_mask([5, 9, 12], 1, 20)
    with torch.no_grad():
        for _ in range(2):
            ao_transformers.attention_forward(torch.nn.Module(), q, k, v, mask)
        mask[0, ..., 0] = False
        ours, _ = ao_transformers.attention_forward(torch.nn.Module(), q, k, v, mask)
    assert kvcache_lengths == [[5, 9, 12]] * 2
    torch.testing.assert_close(ours, expected_attention(q, k, v, mask, {}), rtol=1e-5,
                               atol=1e-5)
