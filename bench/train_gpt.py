"""``python -m bench.train_gpt``: GPT training throughput with each attention implementation.

Trains ``bench.gpt.GPT`` (12 layers, width 768, 12 heads; context 1024 and 4096) on random
tokens with AdamW, bf16 autocast on CUDA, and reports per context and attention: median step
time, tokens/s, peak memory and the loss. ``--tiny`` is a CPU-sized smoke run (2 layers,
width 32, context 32, a few fp32 steps; the Triton kernels run on the interpreter). Without
CUDA only ``--tiny`` runs, at contexts the interpreter finishes in seconds.

    python -m bench.train_gpt
    python -m bench.train_gpt --tiny
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench.cases import INTERPRETER_MAX_WORK, attention_work
from bench.gpt import ATTENTIONS, GPT
from bench.measure import error_status
from bench.report import CPU_SMOKE_LABEL, environment_header, markdown_table, write_csv

RESULTS_DIR = Path(__file__).resolve().parent / "results"

COLUMNS = {
    "attention": "attention", "context": "context", "batch": "batch", "status": "status",
    "step_ms": "step ms (median)", "tokens_per_s": "tokens/s",
    "speedup_vs_eager": "x eager", "peak_mib": "peak MiB", "first_loss": "first loss",
    "last_loss": "last loss",
}


@dataclass(frozen=True)
class TrainConfig:
    """Model size and training-run length; the batch is tokens_per_step // context."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    dropout: float
    contexts: tuple[int, ...]
    tokens_per_step: int
    warmup_steps: int
    steps: int


GPT_SMALL = TrainConfig(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, dropout=0.0,
                        contexts=(1024, 4096), tokens_per_step=16384, warmup_steps=3, steps=10)
TINY = TrainConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=2, dropout=0.0,
                   contexts=(32,), tokens_per_step=64, warmup_steps=1, steps=2)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_size(config: TrainConfig, context: int) -> int:
    """Sequences per step: tokens_per_step // context, at least one."""
    return max(1, config.tokens_per_step // context)


def train(attention: str, context: int, config: TrainConfig, device: torch.device,
          on_step: Callable[[], object] = lambda: None) -> dict:
    """Train a freshly initialised GPT (seed 0, so every attention starts from the same
    weights) on fixed random tokens; return the measurements of the timed steps. ``on_step``
    is called after every step, warm-up included.

    peak_mib is the whole step's peak (weights, gradients, AdamW state, activations); on the
    CPU it is NaN.
    """
    torch.manual_seed(0)
    batch = batch_size(config, context)
    model = GPT(config.vocab_size, context, config.d_model, config.n_layers, config.n_heads,
                config.dropout, attention=attention).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    tokens = torch.randint(config.vocab_size, (batch, context + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    def step() -> float:
        with autocast:
            logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = loss.item()
        on_step()
        return loss

    losses = [step() for _ in range(config.warmup_steps)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(config.steps):
        synchronize(device)
        start = time.perf_counter()
        losses.append(step())
        synchronize(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {
        "batch": batch,
        "step_ms": step_s * 1e3,
        "tokens_per_s": batch * context / step_s,
        "peak_mib": (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                     else math.nan),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def run(config: TrainConfig, attentions: Sequence[str], device: torch.device) -> list[dict]:
    """One record per (context, attention); an OOM or other failure becomes its status. A
    progress bar (stderr) counts the training steps."""
    records = []
    steps_per_run = config.warmup_steps + config.steps
    bar = tqdm(total=len(config.contexts) * len(attentions) * steps_per_run, unit="step")
    for context in config.contexts:
        for attention in attentions:
            bar.set_postfix_str(f"{attention} context {context}")
            run_end = bar.n + steps_per_run
            record = {"attention": attention, "context": context, "batch": math.nan,
                      "status": "ok", "step_ms": math.nan, "tokens_per_s": math.nan,
                      "speedup_vs_eager": math.nan, "peak_mib": math.nan,
                      "first_loss": math.nan, "last_loss": math.nan}
            try:
                record.update(train(attention, context, config, device, on_step=bar.update))
            except torch.cuda.OutOfMemoryError:
                record["status"] = "OOM"
            except Exception as exc:  # a failing attention is a result, not a crash
                record["status"] = error_status(exc)
            bar.update(run_end - bar.n)  # the steps a failed run did not take
            records.append(record)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        eager = [r["tokens_per_s"] for r in records
                 if r["context"] == context and r["attention"] == "eager"]
        for r in records:
            if r["context"] == context and eager:
                r["speedup_vs_eager"] = r["tokens_per_s"] / eager[0]
    bar.close()
    return records


def interpreter_refusal(config: TrainConfig, tiny: bool) -> str | None:
    """Why a run without CUDA should not start, or None: only ``--tiny`` runs there, at
    contexts whose attention the interpreter finishes in seconds."""
    if not tiny:
        return ("No CUDA device: GPT-small (12 layers, width 768, contexts 1024 and 4096) would "
                "train for hours on the CPU, its Triton attention on the interpreter. Run "
                "`python -m bench.train_gpt --tiny` for the CPU smoke run.")

    def fits(context: int) -> bool:
        return attention_work(batch_size(config, context), config.n_heads, context,
                              config.d_model // config.n_heads) <= INTERPRETER_MAX_WORK

    too_long = [c for c in config.contexts if not fits(c)]
    if too_long:
        longest = max(2**i for i in range(4, 16) if fits(2**i))
        return (f"No CUDA device: --tiny at context {max(too_long)} is too long for the Triton "
                f"interpreter (b*h*n*n*d <= {INTERPRETER_MAX_WORK}: contexts up to {longest}). "
                f"Run `python -m bench.train_gpt --tiny` without --contexts for the CPU smoke "
                f"run.")
    return None


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Parse the command line, train, print and write the results; returns the records."""
    p = argparse.ArgumentParser(
        prog="python -m bench.train_gpt",
        description="GPT training throughput (tokens/s, peak memory) with eager, triton and "
                    "sdpa attention.")
    p.add_argument("--tiny", action="store_true", help="CPU-sized smoke run")
    p.add_argument("--attentions", nargs="+", choices=ATTENTIONS, default=list(ATTENTIONS))
    p.add_argument("--contexts", type=int, nargs="+", help="context lengths to train at")
    p.add_argument("--steps", type=int, help="timed steps per run")
    p.add_argument("--out", type=Path,
                   help="results folder (default bench/results/train-gpt-<time>)")
    args = p.parse_args(argv)
    config = TINY if args.tiny else GPT_SMALL
    if args.contexts:
        config = dataclasses.replace(config, contexts=tuple(args.contexts))
    if args.steps:
        config = dataclasses.replace(config, steps=args.steps)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and (refusal := interpreter_refusal(config, args.tiny)):
        raise SystemExit(refusal)
    out = args.out or RESULTS_DIR / datetime.datetime.now().strftime("train-gpt-%Y%m%d-%H%M%S")

    header = environment_header(device, "GPT training benchmark")
    header.append(f"- model: {config.n_layers} layers, d_model {config.d_model}, "
                  f"{config.n_heads} heads, vocab {config.vocab_size}, AdamW, "
                  f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}, "
                  f"{config.steps} timed steps after {config.warmup_steps} warm-up")
    if device.type != "cuda":
        print(f"No CUDA device. {CPU_SMOKE_LABEL}.")
    records = run(config, args.attentions, device)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(records, out / "results.csv")
    lines = header + [""] + markdown_table(records, COLUMNS)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines) + f"\n\nresults: {out}")
    return records


if __name__ == "__main__":
    main()
