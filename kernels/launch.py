"""Launch policy shared by the forward and backward kernels: interpreter or GPU, fixed tile
or autotuned, and the small pieces a launch's argument dict is built from (strides, head dims,
the constexpr flags derived from the inputs, 64-bit row offsets). The score pipeline's piece
is ``score.score_args``, dropout's ``dropout.dropout_args`` and ``DropoutStream.args``,
packed sequences' ``varlen.packed_args``, a KV cache's ``cache.cache_args``.

Nothing here touches CUDA at import time; autotuning picks among the candidates of
``configs`` on first use per (head dim, constexpr switches, dtype, sequence-length bucket) and
caches the choice.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
from triton.runtime.errors import OutOfResources

from .configs import FP32_TILES, INTERPRETER_META, TILES, candidate_tiles, head_dim_block

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453  # the kernels' base-2 LSE times this is the natural one

# Triton decides when a kernel is defined (at import) whether it runs on the interpreter.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_interpreter() -> bool:
    """True when the kernels were defined for Triton's CPU interpreter (TRITON_INTERPRET=1 at
    import time)."""
    return _INTERPRETED


def interpreter_requested_too_late() -> bool:
    """TRITON_INTERPRET=1 is set now, but was not when the kernels were imported (so they were
    built for a GPU and cannot run on CPU tensors)."""
    return not _INTERPRETED and os.environ.get("TRITON_INTERPRET", "0") == "1"


def seqlen_bucket(seqlen: int) -> int:
    """Coarse length key for autotuning (powers of two from 256 to 16384), so a new length
    reuses the cached choice instead of re-tuning or recompiling."""
    return min(max(triton.next_power_of_2(seqlen), 256), 16384)


def kernel_flags(q: torch.Tensor) -> dict:
    """Constexpr flags every attention kernel takes, derived from the query tensor."""
    return {
        # Triton 3.9 interpreter: tl.dot on bf16 multiplies raw bits and its casts to bf16
        # truncate, so bf16 runs on fp32 copies and rounds by hand (casting.py).
        "INTERPRET_BF16": is_interpreter() and q.dtype == torch.bfloat16,
        # fp32 inputs promise fp32 accuracy: no TF32 in the dots.
        "PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
    }


def head_dim_args(head_dim: int, head_dim_v: int) -> dict:
    """The head dims of queries/keys and of values, and the tile widths that hold them."""
    return {"HEAD_DIM": head_dim, "HEAD_DIM_V": head_dim_v, "BLOCK_D": head_dim_block(head_dim),
            "BLOCK_DV": head_dim_block(head_dim_v)}


def strides(name: str, t: torch.Tensor | None, axes: str = "bhmd") -> dict:
    """The strides of ``t`` as a kernel's ``stride_{name}{axis}`` arguments, one per letter of
    ``axes`` (zeros for None): ``strides("k", k, "bhnd")`` is {"stride_kb": k.stride(0), ...,
    "stride_kd": k.stride(3)}."""
    values = (0,) * len(axes) if t is None else t.stride()
    return {f"stride_{name}{axis}": value for axis, value in zip(axes, values, strict=True)}


def needs_int64_rows(*tensors: torch.Tensor | None) -> bool:
    """Whether row offsets inside one head of any of these 4-D tensors can pass 2**31
    (batch/head offsets are always int64). None entries are skipped."""
    return any(t.shape[2] * max(t.stride(2), 1) + t.shape[3] * t.stride(3) >= 2**31
               for t in tensors if t is not None)


# Tuning is cached per key: head dim, the constexpr switches, a coarse length bucket (and the
# tensor dtypes, which Triton adds), so a training loop tunes once per shape family.
AUTOTUNE_KEY = ["HEAD_DIM", "HEAD_DIM_V", "VARLEN", "HAS_LEFT", "HAS_RIGHT", "SOFTCAP",
                "HAS_ALIBI", "MASK_KIND", "HAS_SINKS", "HAS_DROPOUT", "seqlen_bucket"]
# Switches only the forward kernel has (decoding from a cache): in its key too.
FORWARD_ONLY_KEY = ["PAGED", "SPLIT_KV"]


def tile_width(block_d: int, block_dv: int | None) -> int:
    """The head-dim width that picks the tile table row: the wider of the QK and PV widths."""
    return max(block_d, block_dv or 0)


def tile_config(tile: tuple[int, int, int, int]) -> triton.Config:
    block_m, block_n, warps, stages = tile
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps,
                         num_stages=stages)


def config_tile(config: triton.Config) -> tuple[int, int, int, int]:
    return (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps,
            config.num_stages)


def head_dim_pruner(kind: str):
    """Autotune ``early_config_prune``: keep the candidate tiles of the launch's head dim and
    query dtype (every kernel's ``Q``)."""

    def prune(candidates, named_args, **kwargs):
        args = {**named_args, **kwargs}  # ``launch`` passes every argument by name
        block_d = tile_width(args["BLOCK_D"], args.get("BLOCK_DV"))
        wanted = set(candidate_tiles(kind, block_d, args["Q"].dtype))
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


def launch(kernel, kind: str, grid, args: dict) -> None:
    """Launch ``kernel`` with ``grid(meta)`` over the tile ``meta`` it runs with: the
    interpreter's fixed tile, the first candidate when autotuning is off, else autotuned.
    ``args`` holds every parameter but the tile's, by name, constexprs included; the dtype of
    ``args["Q"]``, the query tensor, selects the candidate tiles. (By name, the host does not
    depend on the kernels' parameter order; the compiled code does: reordering the forward's
    parameters moves its sm_90a register counts by up to 9, so the order stays put.)"""
    if is_interpreter():
        kernel[grid(INTERPRETER_META)](**args, **INTERPRETER_META)
    elif not _autotuning:
        width = tile_width(args["BLOCK_D"], args.get("BLOCK_DV"))
        _launch_first_fitting_tile(kernel, candidate_tiles(kind, width, args["Q"].dtype),
                                   grid, args)
    else:
        autotuned(kernel, kind)[grid](**args)


def _launch_first_fitting_tile(kernel, tiles, grid, args: dict) -> None:
    """Launch with the first of ``tiles`` the device has the shared memory for (float32
    inputs double a tile's footprint; GPUs before Hopper have less)."""
    for i, tile in enumerate(tiles):
        config = tile_config(tile)
        try:
            kernel[grid(config.kwargs)](**args, **config.kwargs, num_warps=config.num_warps,
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
    key = AUTOTUNE_KEY + [name for name in FORWARD_ONLY_KEY if name in kernel.arg_names]
    return triton.autotune(configs=[tile_config(t) for t in unique], key=key,
                           prune_configs_by={"early_config_prune": head_dim_pruner(kind)})(kernel)
