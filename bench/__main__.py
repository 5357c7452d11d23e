"""``python -m bench``: sweep attention providers over shapes and modes, write CSV, markdown
and plots. Without CUDA it runs a small correctness-only sweep of the providers a CPU runs
(eager, sdpa-math, ours on the Triton interpreter) and names the others once.

    python -m bench                      # full sweep (GPU), or the CPU smoke sweep
    python -m bench --quick              # a few shapes
    python -m bench --seqlens 4096 --head-dims 128 --providers sdpa-flash ours --modes fwd
    python -m bench --providers sdpa-flash ours --modes fwd+bwd --dropouts 0.0 0.1
    python -m bench --seqlens 8192 16384 --windows 4096 --softcaps 50   # sliding window, softcap
    python -m bench --seqlens 4096 --varlen true --providers ours    # packed vs padded documents
    python -m bench --seqlens none --decode-lengths 4096 32768   # decoding only: 1 query a row

Without CUDA it refuses cases the interpreter would take hours over (see
``bench.cases.INTERPRETER_MAX_WORK``), naming ``--quick``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.cases import DTYPES, INTERPRETER_MAX_WORK, MODES, Case, sweep_cases
from bench.measure import Row, Timing
from bench.plots import plot_vs_seqlen
from bench.providers import PROVIDER_NAMES, providers_named
from bench.report import (
    CPU_SMOKE_LABEL,
    device_name,
    environment_header,
    markdown_table,
    write_csv,
)
from bench.sweep import run_sweep

RESULTS_DIR = Path(__file__).resolve().parent / "results"

COLUMNS = {
    "provider": "provider", "mode": "mode", "b": "b", "h": "h", "h_kv": "h kv", "n": "n",
    "d": "d", "causal": "causal", "window": "window", "softcap": "softcap", "dtype": "dtype",
    "p": "p", "layout": "layout", "docs": "docs", "status": "status", "ms": "ms (median)",
    "tflops": "TFLOP/s", "tokens_per_s": "tokens/s", "gb_per_s": "GB/s", "peak_mib": "peak MiB",
    "speedup_vs_eager": "x eager", "speedup_vs_best_other": "x best other", "max_err": "max err",
    "rel_err": "rel err",
}


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep: b*n = tokens and h*d = hidden for every (n, d), plus the sliding-window
    and softcap cases of ``windows`` and ``softcaps`` and with ``varlen`` the packed and padded
    document cases at every shape, or with ``variants_everywhere`` False at the largest causal
    one only, and a decoding case of ``decode_batch`` rows for each cache length of
    ``decode_lengths`` (see ``sweep_cases``)."""

    tokens: int
    hidden: int
    seqlens: tuple[int, ...]
    head_dims: tuple[int, ...]
    causal: tuple[bool, ...]
    dtypes: tuple[str, ...]
    dropouts: tuple[float, ...]
    modes: tuple[str, ...]
    providers: tuple[str, ...]
    warmup_ms: float
    rep_ms: float
    windows: tuple[int, ...] = ()
    softcaps: tuple[float, ...] = ()
    varlen: bool = True
    variants_everywhere: bool = True
    decode_lengths: tuple[int, ...] = ()
    decode_batch: int = 1


GPU_FULL = SweepConfig(
    tokens=16384, hidden=2048, seqlens=(512, 1024, 2048, 4096, 8192, 16384), head_dims=(64, 128),
    causal=(True, False), dtypes=("bf16",), dropouts=(0.0,), modes=MODES,
    providers=PROVIDER_NAMES, warmup_ms=25, rep_ms=100,
    decode_lengths=(1024, 2048, 4096, 8192, 16384, 32768), decode_batch=8,
)
# Quick: one sliding-window case (a quarter of the longest length), one softcap case (Gemma 2's
# 50) and the packed and padded documents cases, all at the largest causal shape (n4096 d128);
# decoding over the shortest and longest caches.
GPU_QUICK = dataclasses.replace(GPU_FULL, seqlens=(1024, 4096), causal=(True,), windows=(1024,),
                                softcaps=(50.0,), variants_everywhere=False,
                                decode_lengths=(1024, 32768))
# Interpreter-sized: b=1, h=2, d=32; decoding 2 rows over caches of odd lengths, h=2 query heads
# sharing one key/value head. bf16 is left out to keep the smoke run short (the CPU tests cover
# it). rep_ms=0 times each row once.
CPU_FULL = dataclasses.replace(
    GPU_FULL, tokens=64, hidden=64, seqlens=(64, 128), head_dims=(32,),
    dtypes=("fp32", "fp16"), warmup_ms=0, rep_ms=0, decode_lengths=(130, 1000), decode_batch=2,
)
CPU_QUICK = dataclasses.replace(CPU_FULL, seqlens=(64,), windows=(16,), softcaps=(50.0,),
                                variants_everywhere=False, decode_lengths=(130,))


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def _probability(text: str) -> float:
    p = float(text)
    if not 0.0 <= p < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return p


def _window(text: str) -> int | None:
    """A sliding window W >= 0; 0 and "none" mean no window."""
    if text.lower() == "none":
        return None
    try:
        window = int(text)
    except ValueError:
        window = -1
    if window < 0:
        raise argparse.ArgumentTypeError(f"expected a window of W >= 0 keys or none, got {text!r}")
    return window or None


def _length(text: str) -> int | None:
    """A sequence or cache length n >= 1; "none" means no such case."""
    if text.lower() == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a length n >= 1 or none, got {text!r}")
    return int(text)


def _softcap(text: str) -> float | None:
    """A softcap c > 0; "none" means no softcap."""
    if text.lower() == "none":
        return None
    try:
        cap = float(text)
    except ValueError:
        cap = math.nan
    if not (cap > 0 and math.isfinite(cap)):
        raise argparse.ArgumentTypeError(f"expected a softcap c > 0 or none, got {text!r}")
    return cap


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; every sweep option left out comes from the preset."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Sweep attention providers over shapes and modes; write CSV, markdown "
                    "and plots. Without CUDA: a small correctness-only sweep on the Triton "
                    "interpreter.",
    )
    p.add_argument("--quick", action="store_true", help="a few shapes only")
    p.add_argument("--out", type=Path, help="results folder (default bench/results/<time>)")
    p.add_argument("--tokens", type=int, help="b * n, tokens per case (GPU default 16384)")
    p.add_argument("--hidden", type=int, help="h * d, model width per case (GPU default 2048)")
    p.add_argument("--seqlens", type=_length, nargs="+", metavar="N",
                   help="sequence lengths (none: decoding cases only)")
    p.add_argument("--head-dims", type=int, nargs="+", metavar="D", help="head dims")
    p.add_argument("--causal", type=_bool, nargs="+", metavar="{true,false}",
                   help="causal masking, full attention or both")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES),
                   help="input dtypes (GPU default bf16)")
    p.add_argument("--dropouts", type=_probability, nargs="+", metavar="P",
                   help="dropout probabilities on the attention weights (default 0.0)")
    p.add_argument("--windows", type=_window, nargs="+", metavar="W",
                   help="add causal sliding-window cases, query i seeing keys i-W..i (0 or "
                        "none: no window; default none; --quick: 1024, CPU 16)")
    p.add_argument("--softcaps", type=_softcap, nargs="+", metavar="C",
                   help="add softcap cases, scores c*tanh(s/c) (none: no softcap; default none; "
                        "--quick: 50)")
    p.add_argument("--varlen", type=_bool, metavar="{true,false}",
                   help="add the tokens of each causal case as documents of up to n tokens, "
                        "packed (flash_attention_varlen) and padded (default true)")
    p.add_argument("--decode-lengths", type=_length, nargs="+", metavar="N",
                   help="add decoding cases: 1 query per row over a KV cache of N keys, fwd "
                        "mode only (none: no decoding; default 1024 ... 32768, CPU 130 1000)")
    p.add_argument("--decode-batch", type=int, metavar="B",
                   help="rows of the decoding cases (GPU default 8)")
    p.add_argument("--modes", nargs="+", choices=MODES)
    p.add_argument("--providers", nargs="+", choices=PROVIDER_NAMES, metavar="PROVIDER",
                   help=f"any of {', '.join(PROVIDER_NAMES)} (default all)")
    p.add_argument("--warmup-ms", type=float, help="do_bench warm-up budget (default 25)")
    p.add_argument("--rep-ms", type=float, help="do_bench repetition budget (default 100)")
    args = p.parse_args(argv)
    for name in ("seqlens", "windows", "softcaps", "decode_lengths"):  # "none": no such cases
        if getattr(args, name) is not None:
            setattr(args, name, [v for v in dict.fromkeys(getattr(args, name)) if v is not None])
    return args


def resolve_config(args: argparse.Namespace, on_cuda: bool) -> SweepConfig:
    """The preset for this machine and ``--quick``, with the options given on top."""
    preset = {(True, False): GPU_FULL, (True, True): GPU_QUICK,
              (False, False): CPU_FULL, (False, True): CPU_QUICK}[(on_cuda, args.quick)]
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(SweepConfig)
             if getattr(args, f.name, None) is not None}
    return dataclasses.replace(preset, **{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in given.items()})


def config_cases(config: SweepConfig, device: torch.device) -> list[Case]:
    """The cases ``config`` sweeps on ``device``."""
    return list(sweep_cases(
        tokens=config.tokens, hidden=config.hidden, seqlens=config.seqlens,
        head_dims=config.head_dims, causals=config.causal,
        dtypes=[DTYPES[name] for name in config.dtypes], dropouts=config.dropouts,
        device=device, windows=config.windows, softcaps=config.softcaps, varlen=config.varlen,
        variants_everywhere=config.variants_everywhere, decode_lengths=config.decode_lengths,
        decode_batch=config.decode_batch,
    ))


def interpreter_refusal(cases: Sequence[Case]) -> str | None:
    """Why a run without CUDA should not start (its largest case would keep the interpreter
    busy for minutes to hours), or None."""
    case = max(cases, key=lambda c: c.work, default=None)
    if case is None or case.work <= INTERPRETER_MAX_WORK:
        return None
    return (f"No CUDA device: our kernels run on the Triton interpreter here, and "
            f"{case.label()} is {case.work / INTERPRETER_MAX_WORK:.0f}x the work it takes "
            f"(b*h*n*n*d <= {INTERPRETER_MAX_WORK}, e.g. b1 h2 n256 d32). Run "
            f"`python -m bench --quick`, without size options, for the CPU smoke sweep, or "
            f"pass smaller --seqlens, --head-dims, --tokens or --hidden.")


def unused_windows(cases: Sequence[Case], windows: Sequence[int]) -> list[int]:
    """The windows no case got: each hides nothing at the sweep's causal lengths
    (n <= W + 1), or the sweep has no causal case."""
    return [w for w in windows if not any(c.window == w for c in cases)]


def as_records(rows: Sequence[Row]) -> list[dict[str, object]]:
    """The rows as dicts, their fields in the order of COLUMNS."""
    return [{field: getattr(r, field) for field in COLUMNS} for r in rows]


def write_results(rows: list[Row], header: list[str], plot_title: str, out: Path) -> None:
    """results.csv, results.md, tflops.png and memory.png in ``out``, and for decoding
    cases bandwidth.png."""
    out.mkdir(parents=True, exist_ok=True)
    records = as_records(rows)
    write_csv(records, out / "results.csv")
    table = markdown_table(records, COLUMNS)
    notes = ["", "Columns and FLOP formulas: bench/README.md.", ""]
    (out / "results.md").write_text("\n".join(header + notes + table) + "\n")
    plot_vs_seqlen(rows, "tflops", "TFLOP/s", plot_title, out / "tflops.png")
    plot_vs_seqlen(rows, "peak_mib", "peak memory (MiB)", plot_title, out / "memory.png")
    if decoding := [r for r in rows if r.layout == "decode"]:
        plot_vs_seqlen(decoding, "gb_per_s", "GB/s", plot_title, out / "bandwidth.png")


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the sweep and write its results; returns the results folder."""
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = resolve_config(args, device.type == "cuda")
    cases = config_cases(config, device)
    if not cases:
        raise SystemExit("No cases: --seqlens none needs --decode-lengths.")
    if device.type != "cuda" and (refusal := interpreter_refusal(cases)):
        raise SystemExit(refusal)
    if skipped := unused_windows(cases, config.windows):
        print(f"No case for window {', '.join(map(str, skipped))}: a window W hides keys only "
              f"from causal rows of n > W + 1 (lengths here: "
              f"{', '.join(str(n) for n in config.seqlens)}).")
    out = args.out or RESULTS_DIR / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    providers = providers_named(list(config.providers))
    header = environment_header(device, "attention-ops benchmark")
    plot_title = device_name(device)
    if device.type != "cuda":
        plot_title += f"\n{CPU_SMOKE_LABEL}"
        print(f"No CUDA device. {CPU_SMOKE_LABEL}.")
        if cuda_only := [p.name for p in providers if p.needs_cuda]:
            providers = [p for p in providers if not p.needs_cuda]
            print(f"Left out, as they need CUDA: {', '.join(cuda_only)}.")
    if not providers:
        raise SystemExit("No provider left to run: pass --providers that run on a CPU.")

    torch.manual_seed(0)
    rows = run_sweep(cases, providers, config.modes, Timing(config.warmup_ms, config.rep_ms))
    rows.sort(key=lambda r: (MODES.index(r.mode), r.d, not r.causal, r.window is not None,
                             r.window or 0, r.softcap is not None, r.softcap or 0,
                             r.layout or "", r.dtype, r.p, r.n))
    write_results(rows, header, plot_title, out)
    print("\n".join(header + [""] + markdown_table(as_records(rows), COLUMNS)))
    print(f"\nresults: {out}")
    return out


if __name__ == "__main__":
    main()
