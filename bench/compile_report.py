"""Compile the attention kernels for a GPU architecture without a GPU and report what the
compiler made of each tile config: registers, spills, shared memory, whether the dots
became Hopper warpgroup MMAs (HGMMA in the SASS), and how much of the dots' work the warps
compute more than once ("MMA x", executed over useful multiply-adds; 1.00: none).

    TRITON_INTERPRET=0 python -m bench.compile_report        # sm_90a, bf16, D 64/128
    TRITON_INTERPRET=0 python -m bench.compile_report --arch 80 --head-dims 128 --kernels fwd

(``TRITON_INTERPRET=0``: on a machine without a GPU the bench package would otherwise pick
the interpreter, whose kernels cannot be compiled.)

Each kernel is compiled from the arguments its host-side launcher passes for a contiguous
training-shaped problem, specialised as Triton's launcher would (unit strides become
constants), so the report shows the code a GPU would run, vectorised loads included.

Configs that spill, need more shared memory than the architecture has, or compute dots
twice (MMA x above 1) are the ones to prune from ``kernels.configs`` for that GPU family. A
progress bar goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import triton
from tqdm import tqdm
from triton._C.libtriton import native_specialize_impl  # what the launcher specialises with
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from attention_ops.kernels import PackedSequences, configs, decode, flash_bwd, flash_fwd
from attention_ops.kernels.launch import tile_config
from attention_ops.options import ScoreMods
from bench.cases import DTYPES

KINDS = ("fwd", "dkdv", "dq", "decode")
SHARED_MEMORY_OVER = "shared memory over the limit"
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


@dataclass
class Report:
    kernel: str
    head_dim: int
    causal: bool
    config: str
    registers: int | None = None
    spill_bytes: int | None = None
    shared_bytes: int | None = None
    hgmma: int | None = None
    mma_factor: float | None = None
    error: str = ""


class _NotLaunched:
    """Stands in for a kernel whose launch the report skips (``kernel[grid](...)``)."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


# Score-pipeline variants the report can compile (``--variants``): each turns on the
# constexpr switches of the modifiers it names ("all": every one at once).
# "value-dim" gives the values half the query/key head dim (Dv != D, as DeepSeek's 192/128);
# "varlen" packs two sequences of half the length (the VARLEN geometry switch); "decode"
# reads a paged KV cache with split keys and stacked grouped heads (DECODE, PAGED, SPLIT_KV)
# under every modifier a decoder uses (window, softcap, ALiBi, sinks): it alone compiles the
# "decode" kernel kind, and no other kind.
MODIFIER_VARIANTS = ("window", "softcap", "alibi", "sinks", "float-mask", "value-dim")
VARIANTS = ("plain", *MODIFIER_VARIANTS, "all", "varlen", "decode")


def score_mods(variant: str, causal: bool, mask: bool, heads: int, seqlen: int, scale: float,
               dropout_p: float) -> ScoreMods:
    """The modifiers of ``variant`` for a (1, heads, seqlen, seqlen) problem: a 256-key sliding
    window, softcap 50 (Gemma 2), ALiBi slopes, sinks, a float mask broadcast over heads;
    ``mask`` adds a key-padding bool mask (unless the variant brings its float mask)."""
    wanted = set(MODIFIER_VARIANTS) if variant == "all" else {variant}  # value-dim: not a mod
    attn_mask = None
    if "float-mask" in wanted:
        attn_mask = torch.zeros(1, 1, seqlen, seqlen).expand(1, heads, seqlen, seqlen)
    elif mask:
        attn_mask = torch.ones(1, 1, 1, seqlen, dtype=torch.bool).expand(1, heads, seqlen,
                                                                         seqlen)
    window = "window" in wanted
    return ScoreMods(
        scale, causal=causal, dropout_p=dropout_p, window_left=256 if window else None,
        window_right=None if causal or not window else 256,
        softcap=50.0 if "softcap" in wanted else None, attn_mask=attn_mask,
        alibi_slopes=torch.ones(heads) if "alibi" in wanted else None,
        sinks=torch.zeros(heads) if "sinks" in wanted else None)


def captured_launches(head_dim: int, causal: bool, dtype: str, dropout: bool, mask: bool,
                      variant: str = "plain", seqlen: int = 2048,
                      heads: int = 4) -> dict[str, tuple]:
    """Run the host-side launchers on CPU tensors of a training-like problem (contiguous
    (1, heads, seqlen, head_dim); a key-padding mask broadcast over heads and queries) with
    every launch recorded instead of run: {kind: (kernel, args)}, ``args`` the launch's
    arguments by name (``launch.launch``'s dict)."""
    shape = (1, heads, seqlen, head_dim)
    shape_v = (1, heads, seqlen, head_dim // 2 if variant in ("value-dim", "all") else head_dim)
    q, k, dq, dk = (torch.empty(shape, dtype=DTYPES[dtype]) for _ in range(4))
    v, out, do, dv = (torch.empty(shape_v, dtype=DTYPES[dtype]) for _ in range(4))
    lse = torch.zeros(shape[:3])
    seed = torch.zeros(1, dtype=torch.int64)
    packed = None
    if variant == "varlen":
        cu_seqlens = torch.tensor([0, seqlen // 2, seqlen], dtype=torch.int32)
        packed = PackedSequences(cu_seqlens, cu_seqlens)
    mods = score_mods(variant, causal, mask, heads, seqlen, head_dim ** -0.5,
                      0.1 if dropout else 0.0)
    options = dict(mods=mods, seed=seed, packed=packed)
    launches = {}

    def record(kernel, kind, grid, args):
        launches[kind] = (kernel, args)

    if variant == "decode":
        with (mock.patch.object(flash_fwd, "launch", record),
              mock.patch.object(decode, "_combine_splits_kernel", _NotLaunched())):
            decode_launch(head_dim, DTYPES[dtype], heads)
        return launches

    with (mock.patch.object(flash_fwd, "launch", record),
          mock.patch.object(flash_bwd, "launch", record),
          mock.patch.object(flash_bwd, "_bwd_delta_kernel", _NotLaunched())):
        flash_fwd.attention_forward(q, k, v, out, lse, **options)
        flash_bwd.attention_backward(do, q, k, v, out, lse, dq, dk, dv, **options)
    return launches


def _specialise(kernel, args: dict, tile: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) as Triton's launcher derives them from the arguments
    ``args`` (by name) and the ``tile``'s constexprs: integers equal to 1 become constants
    and 16-divisible integers and pointers are marked so. Without this, unit strides stay
    unknown and no load can be vectorised."""
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(kernel.params):
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = tile[param.name] if param.name in tile else args[param.name]
            continue
        kind, attr = native_specialize_impl(BaseBackend, args[param.name], False, True, True)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[param.name] = attr
        elif attr:
            attrs[(index,)] = BaseBackend.parse_attr(attr)
    return signature, constexprs, attrs


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _resources(cubin: bytes) -> tuple[int, int, int]:
    """(registers, stack bytes, HGMMA instruction count) from the cubin. Triton kernels use
    no stack of their own, so stack bytes are register spills (LDL/STL in the SASS)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True,
                              text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    spills = int(re.search(r"STACK:(\d+)", usage).group(1))
    return registers, spills, sass.count("HGMMA")


# A layout definition in the TTGIR, e.g.
#   #mma1 = #ttg.nvidia_mma<{versionMajor = 3, ..., warpsPerCTA = [8, 1],
#                            instrShape = [16, 16, 16]}>
#   #blocked1 = #ttg.blocked<{sizePerThread = [2, 2], threadsPerWarp = [4, 8],
#                             warpsPerCTA = [4, 1], ...}>
# (each on one line).
_LAYOUT = re.compile(r"^#(\w+) = #ttg\.(nvidia_mma|blocked)<\{(.*)\}>$", re.MULTILINE)
# A dot: warpgroup MMA (sm_90a), mma.sync or FMA (tt.dot). Its first operand's shape is the
# first shaped type on the line (M x K); its result (M x N) and layout follow "->".
_DOT = re.compile(r"= (?:tt\.dot|ttng\.warp_group_dot) .*?(?:tensor|memdesc)<(\d+)x(\d+)x"
                  r".*-> tensor<(\d+)x(\d+)x\w+, #(\w+)>")


def _layout_tile(kind: str, fields: str) -> tuple[int, int]:
    """Rows and columns that one pass of a layout's warps covers: an MMA layout's warps times
    its instruction shape (a Hopper warpgroup's 4 warps along M cover 64 rows), a blocked
    layout's elements per thread times threads per warp times warps."""
    def ints(name: str) -> list[int]:
        return [int(x) for x in re.search(name + r" = \[([\d, ]+)\]", fields).group(1).split(",")]

    if kind == "nvidia_mma":
        warps, instr = ints("warpsPerCTA"), ints("instrShape")
        return warps[0] * instr[0], warps[1] * instr[1]
    per_thread, threads, warps = ints("sizePerThread"), ints("threadsPerWarp"), ints("warpsPerCTA")
    return (per_thread[0] * threads[0] * warps[0], per_thread[1] * threads[1] * warps[1])


def dot_work(ttgir: str) -> tuple[int, int]:
    """(executed, useful) multiply-adds of the kernel's dots, summed over every dot in the
    TTGIR. Useful: M*N*K of the dot's tile. Executed: what the warps issue. A layout whose warps
    cover more rows or columns than the tile has (8 warps along M over a 64-row tile: two
    warpgroups) computes the same elements once per extra pass, so each dimension counts
    rounded up to the layout's coverage."""
    layouts = {name: (kind, fields) for name, kind, fields in _LAYOUT.findall(ttgir)}
    dots = _DOT.findall(ttgir)
    if len(dots) != len(re.findall(r"= (?:tt\.dot|ttng\.warp_group_dot) ", ttgir)):
        raise ValueError("a dot in the TTGIR has a form this report does not parse")
    executed = useful = 0
    for m, k, m_out, n, layout in dots:
        m, k, n = int(m), int(k), int(n)
        if m != int(m_out):
            raise ValueError(f"dot operand rows {m} != result rows {m_out}")
        rows, cols = _layout_tile(*layouts[layout])
        useful += m * n * k
        executed += -(-m // rows) * rows * -(-n // cols) * cols * k
    return executed, useful


def compile_one(launch: tuple, name: str, config: triton.Config, head_dim: int, causal: bool,
                arch: int) -> Report:
    """Compile one recorded launch (see ``captured_launches``) with one tile config."""
    kernel, args = launch
    label = (f"M{config.kwargs['BLOCK_M']} N{config.kwargs['BLOCK_N']} "
             f"w{config.num_warps} s{config.num_stages}")
    report = Report(name, head_dim, causal, label)
    signature, constexprs, attrs = _specialise(kernel, args, config.kwargs)
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": config.num_warps,
                                           "num_stages": config.num_stages})
    except Exception as error:  # noqa: BLE001 - a failed config is a result to report
        report.error = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
        return report
    report.shared_bytes = compiled.metadata.shared
    report.registers, report.spill_bytes, report.hgmma = _resources(compiled.asm["cubin"])
    try:
        executed, useful = dot_work(compiled.asm["ttgir"])
        report.mma_factor = executed / useful
    except (ValueError, KeyError, ZeroDivisionError) as error:
        report.error = f"MMA work not measured: {error}"
    if report.shared_bytes > SHARED_LIMIT.get(arch, 99 * 1024):
        report.error = SHARED_MEMORY_OVER
    return report


def table_row(r: Report) -> str:
    """One markdown row of the report; what was not measured stays empty."""
    def cell(value, fmt: str = "") -> str:
        return "" if value is None else format(value, fmt)

    smem = None if r.shared_bytes is None else r.shared_bytes / 1024
    return (f"| {r.kernel} | {r.head_dim} | {r.causal} | {r.config} | {cell(r.registers)} | "
            f"{cell(r.spill_bytes)} | {cell(smem, '.0f')} | {cell(r.hgmma)} | "
            f"{cell(r.mma_factor, '.2f')} | {r.error} |")


def decode_launch(head_dim: int, dtype: torch.dtype, heads_kv: int) -> None:
    """Run the decoding launcher on a paged cache (4 query heads per key/value head, one query
    row, 4 rows of 8192 keys in pages of 64, 4 splits) with the decoder's modifiers."""
    batch, page, pages_per_row = 4, 64, 128
    q = torch.empty(batch, 4 * heads_kv, 1, head_dim, dtype=dtype)
    k, v = (torch.empty(batch * pages_per_row, heads_kv, page, head_dim, dtype=dtype)
            for _ in range(2))
    table = torch.zeros(batch, pages_per_row, dtype=torch.int32)
    mods = ScoreMods(head_dim ** -0.5, causal=True, window_left=4095, window_right=0,
                     bottom_right=True, softcap=50.0, alibi_slopes=torch.ones(4 * heads_kv),
                     sinks=torch.zeros(4 * heads_kv))
    decode.decode_forward(q, k, v, torch.empty(q.shape), torch.empty(q.shape[:3]),
                          cache_seqlens=torch.zeros(batch, dtype=torch.int32),
                          block_table=table, capacity=pages_per_row * page, mods=mods,
                          num_splits=4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90, 80")
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--kernels", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--causal", choices=["yes", "no", "both"], default="both")
    parser.add_argument("--dropout", action="store_true", help="compile the dropout variant")
    parser.add_argument("--mask", action="store_true", help="compile the bool-mask variant")
    parser.add_argument("--variants", nargs="+", default=["plain"], choices=VARIANTS,
                        help="score-modifier variants to compile (all: every modifier at once)")
    parser.add_argument("--max-configs", type=int, default=None,
                        help="compile only the first N candidate tiles of each kernel")
    parser.add_argument("--first-fitting", action="store_true",
                        help="report only the first candidate within the architecture's "
                             "shared memory: the tile launches take with autotuning off")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("the kernels were built for the interpreter: run with "
                         "TRITON_INTERPRET=0")
    causal_values = {"yes": [True], "no": [False], "both": [False, True]}[args.causal]
    jobs = [(variant, name, head_dim, causal, tile_config(tile))
            for variant in args.variants
            for name in args.kernels if (name == "decode") == (variant == "decode")
            for head_dim in args.head_dims for causal in causal_values
            for tile in configs.candidate_tiles(name, configs.head_dim_block(head_dim),
                                                DTYPES[args.dtype])[:args.max_configs]]
    print("| variant | kernel | D | causal | config | regs | spill B | smem KiB | HGMMA | MMA x "
          "| note |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    launches, reported = {}, set()
    with tqdm(jobs, unit="tile", file=sys.stderr) as bar:
        for variant, name, head_dim, causal, config in bar:
            if args.first_fitting and (variant, name, head_dim, causal) in reported:
                continue
            bar.set_postfix_str(f"{variant} {name} D={head_dim} causal={causal}")
            if (variant, head_dim, causal) not in launches:
                launches[variant, head_dim, causal] = captured_launches(
                    head_dim, causal, args.dtype, args.dropout, args.mask, variant)
            r = compile_one(launches[variant, head_dim, causal][name], name, config, head_dim,
                            causal, args.arch)
            if args.first_fitting and r.error == SHARED_MEMORY_OVER:
                continue
            reported.add((variant, name, head_dim, causal))
            bar.write(f"| {variant} " + table_row(r), file=sys.stdout)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
