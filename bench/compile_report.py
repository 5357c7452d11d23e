"""Compile the attention kernels for a GPU architecture without a GPU and report what the
compiler made of each tile config: registers, spills, shared memory, and whether the dots
became Hopper warpgroup MMAs (HGMMA in the SASS).

    TRITON_INTERPRET=0 python -m bench.compile_report        # sm_90a, bf16, D 64/128
    TRITON_INTERPRET=0 python -m bench.compile_report --arch 80 --head-dims 128 --kernels fwd

(``TRITON_INTERPRET=0``: on a machine without a GPU the bench package would otherwise pick
the interpreter, whose kernels cannot be compiled.)

Configs that spill, or need more shared memory than the architecture has, are the ones to
prune from ``kernels.configs`` for that GPU family.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import configs
from kernels.flash_bwd import _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel
from kernels.flash_fwd import _attn_fwd_kernel

KERNELS = {"fwd": _attn_fwd_kernel, "dkdv": _attn_bwd_dkdv_kernel, "dq": _attn_bwd_dq_kernel}
FLOAT_ARGS = {"sm_scale", "qk_scale", "dropout_p", "dropout_scale"}
FP32_POINTERS = {"LSE", "DELTA"}
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
    error: str = ""


def _signature(kernel, dtype: str) -> dict[str, str]:
    sig = {}
    constexpr_names = {p.name for p in kernel.params if p.is_constexpr}
    for name in kernel.arg_names:
        if name in constexpr_names:
            sig[name] = "constexpr"
        elif name.isupper():
            sig[name] = {"SEED": "*i64", "MASK": "*u8"}.get(
                name, "*fp32" if name in FP32_POINTERS else f"*{dtype}")
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return sig


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


def compile_one(name: str, config: triton.Config, head_dim: int, causal: bool, arch: int,
                dtype: str, dropout: bool = False, mask: bool = False) -> Report:
    kernel = KERNELS[name]
    constants = dict(
        HEAD_DIM=head_dim, BLOCK_D=configs.head_dim_block(head_dim), IS_CAUSAL=causal,
        HAS_MASK=mask, HAS_DROPOUT=dropout, UPCAST=False,
        PRECISION="ieee" if dtype == "fp32" else "tf32", INT64_ROWS=False, **config.kwargs,
    )
    label = (f"M{config.kwargs['BLOCK_M']} N{config.kwargs['BLOCK_N']} "
             f"w{config.num_warps} s{config.num_stages}")
    report = Report(name, head_dim, causal, label)
    source = ASTSource(fn=kernel, signature=_signature(kernel, dtype), constexprs=constants)
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": config.num_warps,
                                           "num_stages": config.num_stages})
    except Exception as error:  # noqa: BLE001 - a failed config is a result to report
        report.error = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
        return report
    report.shared_bytes = compiled.metadata.shared
    report.registers, report.spill_bytes, report.hgmma = _resources(compiled.asm["cubin"])
    if report.shared_bytes > SHARED_LIMIT.get(arch, 99 * 1024):
        report.error = "shared memory over the limit"
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90, 80")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument("--causal", choices=["yes", "no", "both"], default="both")
    parser.add_argument("--dropout", action="store_true", help="compile the dropout variant")
    parser.add_argument("--mask", action="store_true", help="compile the bool-mask variant")
    parser.add_argument("--max-configs", type=int, default=None,
                        help="compile only the first N candidate tiles of each kernel")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("the kernels were built for the interpreter: run with "
                         "TRITON_INTERPRET=0")
    causal_values = {"yes": [True], "no": [False], "both": [False, True]}[args.causal]
    print("| kernel | D | causal | config | regs | spill B | smem KiB | HGMMA | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.kernels:
        for head_dim in args.head_dims:
            tiles = configs.TILES[name][configs.head_dim_class(configs.head_dim_block(head_dim))]
            tiles = tiles[:args.max_configs]
            for causal in causal_values:
                for config in map(configs.tile_config, tiles):
                    r = compile_one(name, config, head_dim, causal, args.arch, args.dtype,
                                    args.dropout, args.mask)
                    smem = "" if r.shared_bytes is None else f"{r.shared_bytes / 1024:.0f}"
                    print(f"| {r.kernel} | {r.head_dim} | {r.causal} | {r.config} | "
                          f"{r.registers or ''} | {'' if r.spill_bytes is None else r.spill_bytes}"
                          f" | {smem} | {'' if r.hgmma is None else r.hgmma} | {r.error} |",
                          flush=True)


if __name__ == "__main__":
    main()
