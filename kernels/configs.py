"""Launch configurations: one small fixed tile for the interpreter, candidate lists for GPUs.

Nothing here touches CUDA at import time; autotuning picks among the candidates on first use
per (head dim, causal, mask, dropout, dtype, sequence-length bucket) and caches the choice.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
from triton.runtime.errors import OutOfResources


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


# Candidate tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) per head-dim class, read off the
# sm_90a compile report (`python -m bench.compile_report`, Triton 3.9, launch arguments
# specialised as at run time): tilings that compile to warpgroup MMAs without register spills,
# from the safest first (the one taken when autotuning is off) to the larger ones that may win
# on time, plus a small tile for GPUs with less shared memory and for float32 inputs. At
# D = 256 no dK/dV tiling both fits the registers and uses warpgroup MMAs: the spill-free
# ones run mma.sync. Autotuning times the survivors on the device; tiles that do not fit its
# shared memory are skipped there.
FWD_TILES = {
    64: [(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 8, 3)],
    128: [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (128, 128, 8, 3), (128, 32, 8, 3),
          (64, 64, 4, 3), (64, 32, 4, 2)],
    256: [(128, 32, 8, 2), (128, 64, 8, 2), (64, 64, 8, 2), (64, 32, 8, 3), (32, 32, 4, 1)],
}
# dK/dV: BLOCK_N keys stay resident while BLOCK_M query rows stream past.
DKDV_TILES = {
    64: [(32, 128, 8, 2), (64, 128, 8, 2), (64, 64, 8, 2), (32, 64, 8, 2), (32, 64, 4, 3),
         (16, 64, 4, 2)],
    128: [(32, 64, 8, 2), (32, 128, 8, 2), (64, 64, 8, 2), (16, 128, 8, 2), (16, 64, 8, 2),
          (32, 32, 4, 1)],
    256: [(16, 32, 4, 2), (32, 32, 8, 1), (32, 32, 4, 1)],
}
# dQ: BLOCK_M query rows stay resident while BLOCK_N keys stream past.
DQ_TILES = {
    64: [(128, 64, 8, 2), (64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2), (64, 128, 8, 2)],
    128: [(64, 64, 8, 2), (128, 32, 8, 2), (128, 64, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2),
          (32, 32, 4, 1)],
    256: [(64, 32, 8, 2), (64, 16, 8, 2), (64, 16, 4, 2), (32, 32, 4, 1)],
}


TILES = {"fwd": FWD_TILES, "dkdv": DKDV_TILES, "dq": DQ_TILES}

# float32 inputs take IEEE dots, which compile to FMA loops that hold operand slices in
# registers: in the sm_90a report (float32, 2026-11-23) every half-precision tile above spills
# kilobytes, and only these small tiles compile spill-free.
FP32_TILES = {
    "fwd": {
        64: [(32, 32, 4, 1), (64, 16, 4, 1), (32, 16, 4, 2), (16, 32, 4, 1)],
        128: [(32, 16, 4, 2), (16, 16, 4, 1)],
        256: [(16, 32, 4, 2), (32, 16, 4, 1), (16, 16, 4, 1)],
    },
    "dkdv": {
        64: [(32, 32, 4, 1), (16, 32, 4, 2), (32, 16, 4, 2)],
        128: [(16, 32, 4, 2), (32, 16, 4, 2), (16, 16, 4, 1)],
        256: [(16, 16, 4, 2), (16, 16, 4, 1)],
    },
    "dq": {
        64: [(32, 32, 4, 2), (16, 32, 4, 1), (32, 16, 4, 1), (64, 16, 4, 1)],
        128: [(16, 32, 4, 2), (32, 16, 4, 1), (16, 16, 4, 2)],
        256: [(16, 32, 4, 2), (32, 16, 4, 1), (16, 16, 4, 2)],
    },
}
# Tuning is cached per key: head dim, the constexpr switches, a coarse length bucket (and the
# tensor dtypes, which Triton adds), so a training loop tunes once per shape family.
AUTOTUNE_KEY = ["HEAD_DIM", "IS_CAUSAL", "HAS_MASK", "HAS_DROPOUT", "seqlen_bucket"]


def head_dim_class(block_d: int) -> int:
    """The row of the tile tables a (padded) head dim uses."""
    return 64 if block_d <= 64 else 128 if block_d <= 128 else 256


def candidate_tiles(kind: str, block_d: int, dtype: torch.dtype) -> list:
    """The tiles a launch of ``kind`` may use for this padded head dim and input dtype."""
    table = FP32_TILES if dtype == torch.float32 else TILES
    return table[kind][head_dim_class(block_d)]


def tile_config(tile: tuple[int, int, int, int]) -> triton.Config:
    block_m, block_n, warps, stages = tile
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps,
                         num_stages=stages)


def config_tile(config: triton.Config) -> tuple[int, int, int, int]:
    return (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps,
            config.num_stages)


def head_dim_pruner(kind: str):
    """Autotune ``early_config_prune``: keep the candidate tiles of the launch's head dim and
    query dtype (every kernel's first argument, ``Q``)."""

    def prune(candidates, named_args, **kwargs):
        block_d = named_args.get("BLOCK_D", kwargs.get("BLOCK_D"))
        wanted = set(candidate_tiles(kind, block_d, named_args["Q"].dtype))
        return [c for c in candidates if config_tile(c) in wanted]

    return prune


_autotuning = True


def use_autotuning(enabled: bool) -> bool:
    """Turn autotuning on (the default) or off; returns the previous setting.

    Off, GPU launches take the first tile of their head-dim class that fits the device's
    shared memory: no tuning runs, so a test suite that visits hundreds of shape families
    compiles about one kernel per family, not six.
    """
    global _autotuning
    previous, _autotuning = _autotuning, bool(enabled)
    return previous


def launch(kernel, kind: str, grid, args: tuple, flags: dict) -> None:
    """Launch ``kernel`` with ``grid(meta)`` over the tile ``meta`` it runs with: the
    interpreter's fixed tile, the first candidate when autotuning is off, else autotuned.
    ``args[0]`` is the query tensor, whose dtype selects the candidate tiles."""
    if is_interpreter():
        kernel[grid(INTERPRETER_META)](*args, **flags, **INTERPRETER_META)
    elif not _autotuning:
        _launch_first_fitting_tile(kernel, candidate_tiles(kind, flags["BLOCK_D"], args[0].dtype),
                                   grid, args, flags)
    else:
        autotuned(kernel, kind)[grid](*args, **flags)


def _launch_first_fitting_tile(kernel, tiles, grid, args: tuple, flags: dict) -> None:
    """Launch with the first of ``tiles`` the device has the shared memory for (float32
    inputs double a tile's footprint; GPUs before Hopper have less)."""
    for i, tile in enumerate(tiles):
        config = tile_config(tile)
        try:
            kernel[grid(config.kwargs)](*args, **flags, **config.kwargs,
                                        num_warps=config.num_warps,
                                        num_stages=config.num_stages)
            return
        except OutOfResources:  # raised before the kernel runs: nothing was written
            if i == len(tiles) - 1:
                raise


@functools.cache
def autotuned(kernel, kind: str):
    """``kernel`` autotuned over every candidate tile of ``kind``, pruned per launch to those of
    its head dim and dtype. Built on first use, so importing the kernels never touches a GPU
    driver."""
    unique = sorted({tile for tables in (TILES, FP32_TILES)
                     for table in tables[kind].values() for tile in table})
    return triton.autotune(configs=[tile_config(t) for t in unique], key=AUTOTUNE_KEY,
                           prune_configs_by={"early_config_prune": head_dim_pruner(kind)})(kernel)
