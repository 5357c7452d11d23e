"""attention_ops.scaled_dot_product_attention against torch's own SDPA: outputs, gradients,
errors, and the fused/eager dispatch with its warnings and strict mode."""

import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from seeding import generator
from torch.nn.attention import SDPBackend, sdpa_kernel

import attention_ops as ao
from attention_ops import sdpa as sdpa_module


@pytest.fixture(autouse=True)
def fresh_fallback_warnings(monkeypatch):
    """Each test sees the first warning for every reason."""
    monkeypatch.setattr(sdpa_module, "_warned_reasons", set())


def torch_sdpa(*args, **kwargs):
    """torch's SDPA on its math backend: the backend every device has, and the strictest
    about its inputs."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(*args, **kwargs)


def run_with_grads(fn, inputs, dout, **kwargs):
    """fn(*inputs, **kwargs) and the gradients of (out * dout).sum() w.r.t. the inputs."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs, **kwargs)
    grads = torch.autograd.grad(out, inputs, dout.to(out.dtype), allow_unused=True,
                                materialize_grads=True)
    return [out.detach(), *grads]


# Slack beside "2x torch's float32 error", relative to the largest reference magnitude (at
# least 1, the inputs' scale): ~80 float32 ulps. The fused backward re-derives the weights as
# exp2 of scaled scores, which reach |40| here (scale up to 1.7, head dim 32), and each
# carries a relative error of about |score| ulps.
FP32_SLACK = 1e-5


def assert_matches_torch(inputs, **kwargs):
    """Ours against torch in float64; a float32 result may err at most 2x torch's float32 error
    plus FP32_SLACK. Gradients with one shared random dout."""
    with torch.no_grad():
        out_shape = torch_sdpa(*inputs, **kwargs).shape
    dout = torch.randn(out_shape, dtype=torch.float64)
    ours = run_with_grads(ao.scaled_dot_product_attention, inputs, dout, **kwargs)
    theirs = run_with_grads(torch_sdpa, inputs, dout, **kwargs)
    if inputs[0].dtype == torch.float64:
        for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs, strict=True):
            torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")
        return
    exact_mask = kwargs.get("attn_mask")
    exact_kwargs = dict(kwargs, attn_mask=exact_mask.double()
                        if exact_mask is not None and exact_mask.is_floating_point()
                        else exact_mask)
    exact = run_with_grads(torch_sdpa, [t.double() for t in inputs], dout, **exact_kwargs)
    for name, a, b, ref in zip(("out", "dq", "dk", "dv"), ours, theirs, exact, strict=True):
        assert a.shape == ref.shape, f"{name}: shape {tuple(a.shape)} != {tuple(ref.shape)}"
        if ref.numel() == 0:
            continue
        err = (a.double() - ref).abs().max().item()
        # the slack is at least absolute: an exact 0 (one key: dq = 0) still admits noise
        slack = FP32_SLACK * max(1.0, ref.abs().max().item())
        bar = 2 * (b.double() - ref).abs().max().item() + slack
        assert err <= bar, f"{name}: error {err:.3g} > bar {bar:.3g}"


def random_case(seed: int) -> tuple[list[torch.Tensor], dict]:
    """A random valid SDPA call: leading dims, GQA or head broadcasting, lengths 1..40,
    value dim != key dim, bool/float/no mask or causal, custom scales, float32/float64."""
    rng = random.Random(seed)
    gen = generator(seed)
    dtype = rng.choice([torch.float32, torch.float32, torch.float64])
    batch = rng.choice([(), (2,), (1, 2)])
    heads_kv = rng.choice([1, 2])
    heads_q = heads_kv * rng.choice([1, 2])
    enable_gqa = heads_q != heads_kv and (heads_kv > 1 or rng.random() < 0.5)
    seqlen_q, seqlen_k = rng.randint(1, 40), rng.randint(1, 40)
    dim = rng.choice([8, 16, 32])
    dim_v = dim if rng.random() < 0.8 else rng.choice([8, 24])
    batch_k = batch if rng.random() < 0.7 else (1,) * len(batch)  # broadcast over batch

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=dtype)

    query = rand(*batch, heads_q, seqlen_q, dim)
    if query.dim() == 4 and rng.random() < 0.5:  # a (B, L, H, E) projection seen as heads
        query = rand(batch[0], seqlen_q, heads_q, dim).transpose(1, 2)
    inputs = [query, rand(*batch_k, heads_kv, seqlen_k, dim),
              rand(*batch_k, heads_kv, seqlen_k, dim_v)]
    kwargs = {"enable_gqa": enable_gqa}
    mask_kind = rng.choice(["none", "none", "causal", "bool", "float"])
    mask_shape = rng.choice([(seqlen_q, seqlen_k), (1, seqlen_k), (*batch, 1, seqlen_q, seqlen_k)])
    if mask_kind == "causal":
        kwargs["is_causal"] = True
    elif mask_kind == "bool":
        kwargs["attn_mask"] = torch.rand(mask_shape, generator=gen) < 0.7
    elif mask_kind == "float":  # -inf entries, but every row keeps its first key
        mask = torch.randn(mask_shape, generator=gen, dtype=dtype)
        drop = torch.rand(mask_shape, generator=gen) < 0.3
        drop[..., 0] = False
        kwargs["attn_mask"] = mask.masked_fill(drop, float("-inf"))
    if rng.random() < 0.3:
        kwargs["scale"] = rng.choice([0.3, 1.7, -0.5])
    return inputs, kwargs


def describe(seed: int) -> str:
    inputs, kwargs = random_case(seed)
    shapes = "/".join("x".join(map(str, t.shape)) for t in inputs)
    flags = ",".join(f"{k}={v if not torch.is_tensor(v) else tuple(v.shape)}"
                     for k, v in kwargs.items())
    return f"seed{seed}-{str(inputs[0].dtype)[6:]}-{shapes}-{flags}"


# Seeded so a failure names a reproducible case.
@pytest.mark.parametrize("seed", range(64), ids=describe)
def test_random_calls_match_torch_outputs_and_gradients(seed):
    inputs, kwargs = random_case(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the eager path's notice
        assert_matches_torch(inputs, **kwargs)


@pytest.mark.parametrize(
    "q_shape, kv_shape, kwargs",
    [
        ((1, 2, 17, 16), (1, 2, 33, 16), {"is_causal": True}),  # Lq < Lk: top-left diagonal
        ((1, 2, 33, 16), (1, 2, 17, 16), {"is_causal": True}),  # Lq > Lk: late rows see all
        ((2, 4, 24, 16), (2, 2, 24, 16), {"is_causal": True, "enable_gqa": True}),  # GQA
        # left padding as a bool (B, 1, 1, S) mask, read through zero strides
        ((2, 2, 9, 16), (2, 2, 11, 16), {"attn_mask": torch.arange(11) >= torch.tensor(
            [[[[0]]], [[[4]]]])}),
        ((2, 4, 9, 16), (2, 1, 9, 16), {}),  # one key/value head broadcast, no enable_gqa
        ((3, 2, 1, 5, 8), (3, 2, 1, 7, 8), {}),  # two batch dims flattened for the kernel
        ((5, 8), (7, 8), {"scale": 0.5}),  # unbatched (L, E)
        ((1, 1, 5, 16), (1, 1, 0, 16), {}),  # no keys at all: zeros
        ((0, 2, 3, 16), (0, 2, 3, 16), {}),  # empty batch
    ],
)
def test_fused_path_covers_sdpa_layouts(q_shape, kv_shape, kwargs):
    query = torch.randn(q_shape)
    key, value = torch.randn(kv_shape), torch.randn(kv_shape)
    with ao.strict():  # raises if the call leaves the fused kernel
        assert_matches_torch([query, key, value], **kwargs)


# Rows 0 and 3 see no key; row 2 sees every other key.
KEEP = torch.tensor([[False] * 5, [True] * 5, [True, False, True, False, True], [False] * 5])


def fully_masked_inputs(dtype):
    return [torch.randn(1, 2, 4, 8, dtype=dtype), *(torch.randn(1, 2, 5, 8, dtype=dtype)
                                                    for _ in range(2))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fused", "eager"])
def test_fully_masked_rows_give_zeros_and_zero_gradients_with_bool_mask(dtype):
    inputs = fully_masked_inputs(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # float64: the eager path's notice
        out = ao.scaled_dot_product_attention(*inputs, attn_mask=KEEP)
        assert_matches_torch(inputs, attn_mask=KEEP)
    assert torch.equal(out[:, :, [0, 3]], torch.zeros(1, 2, 2, 8, dtype=dtype))


def test_fully_masked_rows_give_zeros_with_float_mask_on_the_fused_kernel():
    inputs = fully_masked_inputs(torch.float32)
    mask = torch.zeros(4, 5).masked_fill(~KEEP, float("-inf"))
    with ao.strict():
        out = ao.scaled_dot_product_attention(*inputs, attn_mask=mask)
    assert torch.equal(out[:, :, [0, 3]], torch.zeros(1, 2, 2, 8))
    torch.testing.assert_close(out, torch_sdpa(*inputs, attn_mask=mask))


def test_fully_masked_rows_get_zero_gradients_with_float_mask():
    mask = torch.zeros(4, 5, dtype=torch.float64).masked_fill(~KEEP, float("-inf"))
    with pytest.warns(UserWarning, match="eager path"):
        assert_matches_torch(fully_masked_inputs(torch.float64), attn_mask=mask)


def test_fused_dropout_matches_eager_math_with_the_kernels_keep_mask():
    query, key, value = (torch.randn(2, 2, 19, 16) for _ in range(3))
    torch.manual_seed(7)
    out = ao.scaled_dot_product_attention(query, key, value, dropout_p=0.3, is_causal=True)
    torch.manual_seed(7)  # the same draw the call above made
    keep = ao.dropout_keep_mask((2, 2, 19, 19), 0.3, ao.draw_dropout_seed(query.device))
    expected = ao.reference.scaled_dot_product_attention(
        query.double(), key.double(), value.double(), causal=True, dropout_p=0.3,
        keep_mask=keep)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)


def test_signature_matches_torch():
    query, key, value = (torch.randn(1, 2, 3, 8) for _ in range(3))
    for fn in (F.scaled_dot_product_attention, ao.scaled_dot_product_attention):
        fn(query=query, key=key, value=value, attn_mask=None, dropout_p=0.0, is_causal=False,
           scale=None, enable_gqa=False)
        with pytest.raises(TypeError):  # scale is keyword-only
            fn(query, key, value, None, 0.0, False, 0.5)


def q_kv(q_shape=(2, 4, 5, 8), kv_shape=(2, 4, 6, 8), dtype=torch.float32):
    return torch.randn(q_shape, dtype=dtype), *(torch.randn(kv_shape, dtype=dtype)
                                                for _ in range(2))


@pytest.mark.parametrize(
    "make_args, kwargs, message",
    [
        (lambda: ([1.0], *q_kv()[1:]), {}, "query must be a torch.Tensor"),
        (lambda: (torch.randn(8), torch.randn(8), torch.randn(8)), {}, "at least 2-D"),
        (lambda: q_kv((5, 8), (6, 8)), {"enable_gqa": True}, "at least 3-D"),
        (lambda: tuple(t.long() for t in q_kv()), {}, "floating-point"),
        (lambda: (q_kv()[0], *q_kv(dtype=torch.float64)[1:]), {}, "share a dtype"),
        (lambda: (q_kv()[0], *q_kv(kv_shape=(2, 4, 6, 7))[1:]), {}, "embedding dims"),
        (lambda: (*q_kv()[:2], torch.randn(2, 4, 7, 8)), {}, "sequence lengths"),
        (lambda: q_kv(kv_shape=(3, 4, 6, 8)), {}, "do not broadcast"),
        (lambda: q_kv(kv_shape=(2, 2, 6, 8)), {}, "do not broadcast"),  # GQA needs the flag
        (lambda: q_kv(kv_shape=(2, 3, 6, 8)), {"enable_gqa": True}, "must divide"),
        (lambda: q_kv(), {"attn_mask": torch.zeros(5, 7)}, "does not broadcast"),
        (lambda: q_kv(), {"attn_mask": torch.zeros(1, 2, 4, 5, 6)}, "does not broadcast"),
        (lambda: q_kv(), {"attn_mask": torch.zeros(5, 6, dtype=torch.long)}, "attn_mask must"),
        (lambda: q_kv(), {"attn_mask": torch.zeros(5, 6, dtype=torch.float64)}, "attn_mask must"),
        (lambda: q_kv(), {"dropout_p": 1.5}, "dropout_p"),
    ],
)
def test_inputs_torch_rejects_raise_value_error(make_args, kwargs, message):
    args = make_args()
    with pytest.raises(Exception):  # noqa: B017 - torch raises several types
        torch_sdpa(*args, **kwargs)
    with pytest.raises(ValueError, match=message):
        ao.scaled_dot_product_attention(*args, **kwargs)


@pytest.mark.parametrize(
    "make_args, kwargs, reason",
    [
        (lambda: q_kv(dtype=torch.float64), {}, "dtype torch.float64"),
        (lambda: q_kv((1, 1, 2, 264), (1, 1, 3, 264)), {}, "head_dim 264"),
        (lambda: q_kv(), {"attn_mask": torch.zeros(5, 6, requires_grad=True)}, "requires grad"),
        (lambda: q_kv(), {"scale": -1.0}, "scale"),
    ],
)
def test_calls_outside_the_fused_kernel_warn_once_per_reason(make_args, kwargs, reason):
    args = make_args()
    with pytest.warns(UserWarning, match=reason):
        out = ao.scaled_dot_product_attention(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reason again: silent
        ao.scaled_dot_product_attention(*args, **kwargs)
    torch.testing.assert_close(out, torch_sdpa(*args, **kwargs))


def test_cpu_tensors_without_the_interpreter_take_the_eager_path(monkeypatch):
    monkeypatch.setattr("attention_ops.fused_path.is_interpreter", lambda: False)
    query, key, value = q_kv()
    with pytest.warns(UserWarning, match="tensors on cpu"):
        out = ao.scaled_dot_product_attention(query, key, value, is_causal=True)
    torch.testing.assert_close(out, torch_sdpa(query, key, value, is_causal=True))


def test_strict_mode_raises_instead_of_leaving_the_fused_kernel():
    query, key, value = q_kv()
    mask = torch.zeros(5, 6, requires_grad=True)  # the fused kernels compute no mask gradient
    with ao.strict():
        ao.scaled_dot_product_attention(query, key, value)  # fused: fine
        with pytest.raises(ao.FusedPathUnavailableError, match="requires grad"):
            ao.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        with ao.strict(False):  # nested: eager allowed again
            with pytest.warns(UserWarning):
                ao.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        with pytest.raises(ao.FusedPathUnavailableError):
            ao.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    assert ao.set_strict(True) is False  # the block restored the default
    assert ao.set_strict(False) is True


@pytest.mark.parametrize("kwargs", [
    {"attn_mask": [[True] * 6] * 5},
    {"dropout_p": "0.1"},
    {"scale": "0.5"},
], ids=["list-mask", "string-dropout", "string-scale"])
def test_arguments_of_the_wrong_type_raise_type_error_as_torch_does(kwargs):
    args = q_kv()
    with pytest.raises(TypeError) as torch_error:
        torch_sdpa(*args, **kwargs)
    with pytest.raises(TypeError) as our_error:
        ao.scaled_dot_product_attention(*args, **kwargs)
    assert str(our_error.value) == str(torch_error.value)


@pytest.mark.parametrize("make_args, kwargs", [
    (lambda: q_kv((1, 2, 3, 0), (1, 2, 4, 0)), {}),
    (lambda: q_kv((1, 2, 3, 0), (1, 2, 4, 0)), {"scale": 0.5}),
    (lambda: (*q_kv((1, 2, 3, 0), (1, 2, 4, 0))[:2], torch.randn(1, 2, 4, 5)), {}),
    (lambda: q_kv(), {"dropout_p": 0}),
], ids=["head-dim-0", "head-dim-0-scale", "head-dim-0-values", "int-dropout"])
def test_edge_values_give_what_torch_gives(make_args, kwargs):
    args = make_args()
    expected = torch_sdpa(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some of these run the eager path, with a warning
        out = ao.scaled_dot_product_attention(*args, **kwargs)
    torch.testing.assert_close(out, expected, equal_nan=True)


def torch_default_scale(head_dim: int) -> float:
    """The scale torch's SDPA uses for scale=None, read back from torch: with one key and
    q = k = e_0 in float64, its CPU flash kernel's log-sum-exp is the score, scale * 1."""
    e_0 = torch.zeros(1, 1, 1, head_dim, dtype=torch.float64, device="cpu")
    e_0[..., 0] = 1.0
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(e_0, e_0, e_0)
    return lse.item()


@pytest.mark.parametrize("head_dim", [8, 24, 32, 128])  # D ** -0.5 is off by one bit here
def test_default_scale_is_torchs_to_the_last_bit(head_dim, monkeypatch):
    scales = []

    def recording_fused_attention(q, k, v, mods, **kwargs):
        scales.append(mods.scale)
        return fused_attention(q, k, v, mods, **kwargs)

    fused_attention = sdpa_module.fused_attention
    monkeypatch.setattr(sdpa_module, "fused_attention", recording_fused_attention)
    with ao.strict():
        ao.scaled_dot_product_attention(*q_kv((1, 1, 3, head_dim), (1, 1, 4, head_dim)))
    assert scales == [torch_default_scale(head_dim)]


def positive(*shape):
    return torch.rand(shape) + 0.1


# torch scales q and k by sqrt(scale) each: with NaN every score is NaN (masked ones too);
# with inf a score is NaN where its products differ in sign, else +-inf.
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("make_args, kwargs", [
    (lambda: q_kv(), {}),
    (lambda: q_kv(), {"is_causal": True}),
    (lambda: q_kv((1, 2, 4, 8), (1, 2, 5, 8)), {"attn_mask": KEEP}),  # fully masked rows
    (lambda: q_kv(), {"attn_mask": torch.randn(5, 6)}),
    (lambda: q_kv(), {"dropout_p": 0.5}),
    (lambda: q_kv((1, 2, 5, 1), (1, 2, 7, 1)), {}),  # one product per score: +-inf, no NaN
    (lambda: (positive(1, 2, 3, 4), -positive(1, 2, 5, 4), torch.randn(1, 2, 5, 4)), {}),
    (lambda: (*q_kv((1, 2, 3, 4), (1, 2, 5, 4))[:2], torch.randn(1, 2, 5, 6)), {}),  # Ev != E
    (lambda: tuple(t.bfloat16() for t in q_kv()), {"is_causal": True}),
    (lambda: q_kv((1, 2, 3, 8), (1, 2, 0, 8)), {}),  # no keys: zeros
    (lambda: q_kv((1, 2, 3, 0), (1, 2, 4, 0)), {}),  # no dims: every score is 0
], ids=["plain", "causal", "bool-mask", "float-mask", "dropout", "head-dim-1", "same-signs",
        "value-dim", "bfloat16", "no-keys", "head-dim-0"])
def test_non_finite_scale_gives_what_torch_gives(make_args, kwargs, scale):
    args = make_args()
    expected = torch_sdpa(*args, scale=scale, **kwargs)
    with pytest.warns(UserWarning, match="eager path"):
        out = ao.scaled_dot_product_attention(*args, scale=scale, **kwargs)
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_causal_rule_and_mask_apply_together_as_in_torch(mask_dtype):
    query, key, value = q_kv((2, 4, 6, 8), (2, 4, 6, 8))
    mask = torch.rand(6, 6, generator=generator(3)) > 0.5
    mask[:, 0] = False  # row 0's only causal key is masked: a row with nothing visible
    if mask_dtype == torch.float32:
        mask = torch.zeros(6, 6).masked_fill(~mask, float("-inf"))
    # torch's default dispatch accepts the pair (its math backend alone rejects it)
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=True)
    with ao.strict():  # a float mask runs fused too
        out = ao.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=True)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))


def test_eager_fallback_is_as_accurate_as_torch_in_bfloat16():
    """A float mask that requires grad runs the eager math; its softmax runs in float32, as
    torch's does."""
    query, key, value = (t.bfloat16() for t in q_kv((2, 4, 64, 32), (2, 4, 64, 32)))
    mask = torch.randn(64, 64, generator=generator(4)).bfloat16()
    dout = torch.randn(2, 4, 64, 32, generator=generator(5))
    inputs = [query, key, value, mask]

    def call(fn, dtype):
        def attention(q, k, v, m):
            return fn(q, k, v, attn_mask=m)
        return run_with_grads(attention, [t.to(dtype) for t in inputs], dout)

    exact = call(torch_sdpa, torch.float64)
    reference_error = [(a.double() - b).abs().max() for a, b in
                       zip(call(torch_sdpa, torch.bfloat16), exact, strict=True)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = call(ao.scaled_dot_product_attention, torch.bfloat16)
    for name, a, b, torch_err in zip(("out", "dq", "dk", "dv", "dmask"), ours, exact,
                                     reference_error, strict=True):
        err = (a.double() - b).abs().max()
        assert err <= 1.5 * torch_err, f"{name}: {err:.2e} > 1.5 x torch's {torch_err:.2e}"
