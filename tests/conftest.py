"""Test setup: the Triton interpreter on machines without CUDA, device/dtype fixtures, and
NaN-poisoned allocations so any output element a kernel forgets to write fails its test."""

import os

import torch

# Triton decides at kernel-definition time whether to interpret, so this must run before
# anything imports the kernels.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"
# Tensors, modules and generators made without a device land where the kernels run, so every
# test exercises the fused path on a GPU machine as it does through the interpreter here.
torch.set_default_device(DEVICE)


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not ON_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True, scope="session")
def fixed_tiles():
    """GPU launches take their head-dim class's first tile instead of autotuning: the suite
    visits hundreds of shape families, and tuning each would compile six kernels per family.
    tests/test_configs.py checks the autotuned launch."""
    import attention_ops as ao

    previous = ao.use_autotuning(False)
    yield
    ao.use_autotuning(previous)


@pytest.fixture
def device() -> str:
    """The device kernels run on here: CUDA when present, else the CPU interpreter."""
    return DEVICE


@pytest.fixture(params=[torch.float16, torch.bfloat16, torch.float32], ids=str)
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture
def nan_poisoned_outputs(monkeypatch):
    """Make torch.empty / torch.empty_like return NaN-filled float tensors."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(real_empty_like(*a, **kw)))
