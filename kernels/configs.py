"""Launch configurations: one small fixed tile for the interpreter, candidate lists for GPUs.

Nothing here touches CUDA at import time; autotuning picks among the candidates on first use
per (head dim, causal, dtype, sequence-length bucket) and caches the choice.
"""

from __future__ import annotations

import os

import triton


def is_interpreter() -> bool:
    """True when Triton runs kernels on the CPU (TRITON_INTERPRET=1), read at call time."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def head_dim_block(head_dim: int) -> int:
    """Tile width for the head dim: the next power of two (at least 16, tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


def seqlen_bucket(seqlen: int) -> int:
    """Coarse length key for autotuning (powers of two from 256 to 16384), so a new length
    reuses the cached choice instead of re-tuning or recompiling."""
    return min(max(triton.next_power_of_2(seqlen), 256), 16384)


# The interpreter runs one program at a time on numpy: small square tiles keep it quick and
# exercise multi-tile loops at the small, odd lengths the CPU tests use.
INTERPRETER_META = {"BLOCK_M": 32, "BLOCK_N": 32}


def _config(block_m: int, block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps,
                         num_stages=stages)


def fwd_configs() -> list[triton.Config]:
    """Forward candidates; autotuning prunes by shared memory (OutOfResources) on the device."""
    return [
        _config(128, 128, 8, 3),
        _config(128, 64, 8, 3),
        _config(128, 64, 4, 3),
        _config(64, 64, 4, 3),
        _config(128, 32, 4, 2),
        _config(64, 32, 4, 2),
        _config(32, 32, 4, 1),  # fits float32 at head dim 256
    ]


def bwd_configs() -> list[triton.Config]:
    """Backward candidates (dK/dV and dQ kernels); BLOCK_M is the query tile in both."""
    return [
        _config(64, 128, 8, 2),
        _config(64, 64, 4, 2),
        _config(32, 128, 8, 2),
        _config(32, 64, 4, 2),
        _config(128, 64, 8, 2),
        _config(128, 32, 4, 2),
        _config(32, 32, 4, 1),  # fits float32 at head dim 256
    ]


def prune_for_head_dim(configs, named_args, **kwargs):
    """Drop tiles too big for wide heads (D=256 needs small tiles to fit shared memory)."""
    block_d = named_args["BLOCK_D"] if "BLOCK_D" in named_args else kwargs["BLOCK_D"]
    if block_d <= 128:
        return configs
    small = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
    return small or configs
