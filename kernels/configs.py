"""Tile tables: the candidate (BLOCK_M, BLOCK_N, num_warps, num_stages) tilings per kernel,
head-dim class and input dtype, and the interpreter's fixed tile. Launch policy (which
candidate runs, autotuning) lives in ``launch.py``."""

from __future__ import annotations

import torch
import triton

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
#
# No tile computes a dot twice (the report's "MMA x", executed over useful tensor work, is
# 1.00 for each). The score dots (S, dP) feed further dots, so on sm_90a Triton stacks all
# warps along their rows, 16 rows a warp: when the score tile has fewer rows (BLOCK_M in fwd
# and dQ, BLOCK_N in dK/dV) than 16 * num_warps, both warpgroups compute the same S and dP
# (dK/dV M32 N64 w8: 1.5x, dQ M64 N64 w8: 1.67x). So 64-row score tiles run 4 warps and
# 128-row ones 8. mma.sync tiles spread warps along columns instead and duplicate when too
# narrow (dK/dV D=256 M16 N32 w4: 1.5x).
FWD_TILES = {
    64: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 8, 3)],
    128: [(128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2)],
    256: [(128, 32, 8, 2), (128, 64, 8, 2), (64, 32, 4, 2), (32, 32, 4, 1)],
}
# dK/dV: BLOCK_N keys stay resident while BLOCK_M query rows stream past.
DKDV_TILES = {
    64: [(32, 128, 8, 2), (64, 128, 8, 2), (64, 64, 4, 2), (32, 64, 4, 3), (16, 64, 4, 2)],
    128: [(32, 128, 8, 2), (16, 128, 8, 2), (32, 64, 4, 2), (16, 64, 4, 2), (32, 32, 4, 1)],
    256: [(32, 16, 4, 2), (32, 32, 4, 1), (32, 16, 4, 1)],
}
# dQ: BLOCK_M query rows stay resident while BLOCK_N keys stream past.
DQ_TILES = {
    64: [(128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)],
    128: [(128, 32, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2), (64, 16, 4, 2),
          (32, 32, 4, 1)],
    256: [(64, 16, 4, 2), (128, 16, 8, 2), (32, 32, 4, 1)],
}


# Decoding (a KV cache): the rows stack a group's query heads over a few query positions, so
# one warpgroup's 64 rows (the smallest warpgroup-MMA tile) hold a typical group; the work is
# reading the cache, spread over programs by splitting the keys. (D = 128 M64 N128 w4 s2
# spills 40 B with every decoding modifier on: left out.)
DECODE_TILES = {
    64: [(64, 64, 4, 3), (64, 128, 4, 3), (64, 32, 4, 2)],
    128: [(64, 64, 4, 3), (64, 32, 4, 3)],
    256: [(64, 32, 4, 2), (32, 32, 4, 1)],
}
TILES = {"fwd": FWD_TILES, "dkdv": DKDV_TILES, "dq": DQ_TILES, "decode": DECODE_TILES}

# float32 inputs take IEEE dots, which compile to FMA loops that hold operand slices in
# registers: in the sm_90a report (float32, 2026-11-23) every half-precision tile above spills
# kilobytes, and only these small tiles compile spill-free. Their FMA dots run on blocked
# layouts that cover each tile exactly, so they compute nothing twice either.
FP32_TILES = {
    "fwd": {
        64: [(32, 32, 4, 1), (64, 16, 4, 1), (32, 16, 4, 2), (16, 32, 4, 1)],
        # M16 N16 w4 s1 left: 16 B of spills since padding query rows are hidden on masked
        # tiles (2026-12-01).
        128: [(32, 16, 4, 2)],
        256: [(16, 32, 4, 2), (32, 16, 4, 1), (16, 16, 4, 1)],
    },
    "dkdv": {
        64: [(32, 32, 4, 1), (16, 32, 4, 2), (32, 16, 4, 2)],
        # M32 N16 w4 s2 left the table: 264 B of spills at p = 0 since the backward's
        # ragged-tile masking and rounding rework of 2026-11-23 (0 B before).
        128: [(16, 32, 4, 2), (16, 16, 4, 1)],
        256: [(16, 16, 4, 2), (16, 16, 4, 1)],
    },
    "decode": {  # the stacked rows' per-row heads and pages take registers: smaller tiles
        64: [(32, 16, 4, 2)],
        128: [(16, 16, 4, 1)],
        256: [(16, 32, 4, 2), (16, 16, 4, 1)],
    },
    "dq": {
        64: [(32, 32, 4, 2), (16, 32, 4, 1), (32, 16, 4, 1), (64, 16, 4, 1)],
        128: [(16, 32, 4, 2), (32, 16, 4, 1), (16, 16, 4, 2)],
        256: [(16, 32, 4, 2), (32, 16, 4, 1), (16, 16, 4, 2)],
    },
}

def head_dim_block(head_dim: int) -> int:
    """Tile width for the head dim: the next power of two (at least 16, tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


def head_dim_class(block_d: int) -> int:
    """The row of the tile tables a (padded) head dim uses."""
    return 64 if block_d <= 64 else 128 if block_d <= 128 else 256


def candidate_tiles(kind: str, block_d: int, dtype: torch.dtype) -> list:
    """The tiles a launch of ``kind`` may use for this padded head dim and input dtype."""
    table = FP32_TILES if dtype == torch.float32 else TILES
    return table[kind][head_dim_class(block_d)]
