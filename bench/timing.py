"""Median run time and peak memory of a closure, on CUDA or (for smoke runs) on the CPU."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import triton.testing


def median_ms(
    fn: Callable[[], object],
    *,
    device: torch.device,
    warmup_ms: float,
    rep_ms: float,
    grad_to_none: Sequence[torch.Tensor] = (),
) -> float:
    """Median milliseconds per call of ``fn``; the gradients of ``grad_to_none`` are reset
    before every call so backward passes do not accumulate.

    On CUDA this is ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls). The
    CPU has no such timer (and ``do_bench`` does not run under the Triton interpreter), so
    there: wall-clock calls until ``rep_ms`` is spent, at least one, with no warm-up of its
    own (the sweep's error check has already run ``fn``'s work once).
    """
    if device.type == "cuda":
        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms,
                                       grad_to_none=list(grad_to_none), return_mode="median")
    times: list[float] = []
    while not times or sum(times) < rep_ms:
        for t in grad_to_none:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """MiB allocated by one call of ``fn`` at its peak, beyond what was allocated before it
    (the inputs, and for a backward the saved forward graph). NaN off CUDA."""
    if device.type != "cuda":
        return math.nan
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20
