"""pytest-benchmark timings of the core shapes: ``pytest bench/ --benchmark-only`` on a GPU.

bf16, causal, b*n = 16384 and h*d = 2048 (as the sweep), n in {2048, 8192}, d in {64, 128},
fwd and fwd+bwd, ours against sdpa-flash. Each timed call ends with a device synchronise, so
the time is the kernels', not the launch's.
"""

import pytest
import torch

from bench.cases import Case, sweep_cases
from bench.measure import Inputs, mode_step
from bench.providers import Provider, providers_named

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="benchmarks time CUDA kernels; no CUDA device here"
)

CASES = list(sweep_cases(tokens=16384, hidden=2048, seqlens=(2048, 8192), head_dims=(64, 128),
                         causals=(True,), dtypes=(torch.bfloat16,), dropouts=(0.0,),
                         device=torch.device("cuda")))


@pytest.mark.parametrize("provider", providers_named(["sdpa-flash", "ours"]),
                         ids=lambda p: p.name)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", CASES, ids=Case.label)
def test_attention(benchmark, case: Case, mode: str, provider: Provider) -> None:
    reason = provider.unavailable(case)
    if reason is not None:
        pytest.skip(f"{provider.name} cannot run {case.label()}: {reason}")
    x = Inputs.random(case)
    step = mode_step(provider.build(case), x, mode)

    def timed() -> None:
        for t in (x.q, x.k, x.v):
            t.grad = None
        step()
        torch.cuda.synchronize()

    benchmark.group = f"{mode} {case.label()}"
    benchmark.pedantic(timed, warmup_rounds=5, rounds=50)
    benchmark.extra_info["tflops"] = case.flops(mode) / benchmark.stats.stats.median / 1e12
