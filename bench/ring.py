"""``python -m bench.ring``: ring attention (``attention_ops.distributed``) over N processes,
checked against single-process ``flash_attention`` on the full sequence and timed.

    python -m bench.ring --world-size 4          # 4 CPU processes, gloo, kernels interpreted
    torchrun --nproc_per_node 4 -m bench.ring    # one GPU per process, NCCL

Each case draws the full q, k, v and dO on every rank from one seed, shards them, runs ring
attention forward and backward and gathers the output and gradients; single-process
``flash_attention`` runs on the full sequence with the same dropout seed, and both are
compared with the float64 reference (with that seed's mask). A case passes when the ring's
error is at most twice the single-process kernel's plus one rounding in the input dtype.
Times are medians of ``--reps`` calls after the checked one, the same number on every rank,
the ring's on its slowest rank; on the CPU they only say the code runs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tqdm import tqdm

from attention_ops import draw_dropout_seed, dropout_keep_mask, flash_attention
from attention_ops.distributed import LAYOUTS, ring_attention, shard_sequence, unshard_sequence
from attention_ops.distributed.layout import SequenceLayout
from bench.accuracy import Expected, float64_reference, max_errors
from bench.cases import DTYPE_NAMES, DTYPES
from bench.report import environment_header, markdown_table
from bench.timing import peak_mib

DROPOUT_SEED = 5  # the generator seed of every dropout draw, ring and single-process alike

COLUMNS = {
    "world": "W", "layout": "layout", "causal": "causal", "heads": "Hq/Hkv", "seqlen": "L",
    "head_dim": "D", "dtype": "dtype", "dropout_p": "p", "ring_ms": "ring ms",
    "single_ms": "single ms", "ring_peak_mib": "ring peak MiB/rank",
    "single_peak_mib": "single peak MiB", "ring_err": "ring err", "single_err": "single err",
    "status": "status",
}


@dataclass(frozen=True)
class RingCase:
    """One problem: (batch, heads_q, L, head_dim) queries and (batch, heads_kv, L, head_dim)
    keys and values, L = ``chunk`` times the layout's chunk count (W contiguous, 2W zigzag)."""

    layout: str
    causal: bool
    heads_q: int
    heads_kv: int
    chunk: int
    dropout_p: float = 0.0
    dtype: torch.dtype = torch.float32
    head_dim: int = 16
    batch: int = 1

    def seqlen(self, world: int) -> int:
        return self.chunk * SequenceLayout(self.layout, world).n_chunks

    def inputs(self, world: int, device: torch.device | str
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-sequence q, k, v from ``torch.randn`` (seed it alike on every rank)."""
        seqlen = self.seqlen(world)
        return tuple(torch.randn(self.batch, heads, seqlen, self.head_dim, dtype=self.dtype,
                                 device=device)
                     for heads in (self.heads_q, self.heads_kv, self.heads_kv))

    def keep_mask(self, world: int, device: torch.device | str) -> torch.Tensor | None:
        """The dropout mask ``flash_attention(generator=<seeded DROPOUT_SEED>)`` applies on
        the full sequence, or None without dropout."""
        if self.dropout_p == 0.0:
            return None
        seed = draw_dropout_seed(device, dropout_generator(device))
        shape = (self.batch, self.heads_q, self.seqlen(world), self.seqlen(world))
        return dropout_keep_mask(shape, self.dropout_p, seed)


def dropout_generator(device: torch.device | str, offset: int = 0) -> torch.Generator:
    return torch.Generator(device).manual_seed(DROPOUT_SEED + offset)


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """``os.environ`` with ``variables`` set, restored on exit (children inherit it)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def run_on_processes(world: int, fn: Callable[..., None], *args: object,
                     backend: str = "gloo") -> None:
    """``fn(rank, world, device, *args)`` on ``world`` fresh processes joined in one default
    process group (a FileStore in a temporary folder). gloo: CPU tensors, the kernels under
    Triton's interpreter; nccl: GPU ``rank`` each. ``fn`` must be importable by name (the
    processes are spawned); an exception in any process is raised here."""
    interpret = {"TRITON_INTERPRET": "1"} if backend == "gloo" else {}
    with tempfile.TemporaryDirectory() as folder, _environment(**interpret):
        mp.spawn(_process_main, args=(world, os.path.join(folder, "store"), backend, fn, args),
                 nprocs=world)


def _process_main(rank: int, world: int, store_path: str, backend: str,
                  fn: Callable[..., None], args: tuple) -> None:
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, store=dist.FileStore(store_path, world), rank=rank,
                            world_size=world, timeout=timedelta(minutes=10))
    try:
        fn(rank, world, device, *args)
    finally:
        dist.destroy_process_group()


@dataclass
class Results:
    """Full-sequence output and input gradients of one run."""

    out: torch.Tensor
    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor

    def pairs(self, expected: Expected) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(actual, expected) for the output and each gradient."""
        return [(getattr(self, name), getattr(expected, name))
                for name in ("out", "dq", "dk", "dv")]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ring_step(case: RingCase, shards: Sequence[torch.Tensor], rank: int
               ) -> Callable[[], torch.Tensor]:
    """One ring forward and backward on the leaves ``shards`` (q, k, v) with ``shards[3]`` as
    dO; every rank draws from a differently seeded generator, group rank 0's seed wins."""
    q, k, v, do = shards

    def step() -> torch.Tensor:
        for t in (q, k, v):
            t.grad = None
        out = ring_attention(q, k, v, causal=case.causal, layout=case.layout,
                             dropout_p=case.dropout_p,
                             generator=dropout_generator(q.device, offset=rank))
        out.backward(do)
        return out

    return step


def _median_ms(step: Callable[[], object], reps: int, device: torch.device, *,
               lockstep: bool) -> float:
    """Median wall-clock milliseconds of ``reps`` synchronised calls of ``step``. With
    ``lockstep`` every rank of the group starts each call together and the slowest rank's time
    counts."""
    times = []
    for _ in range(reps):
        if lockstep:
            dist.barrier()
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    if lockstep:
        slowest = torch.tensor(times, dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        times = slowest.tolist()
    return statistics.median(times)


def measure_case(case: RingCase, rank: int, world: int, device: torch.device,
                 reps: int) -> dict | None:
    """Errors, times and peak memory of ``case``; the row on group rank 0, None elsewhere."""
    torch.manual_seed(0)
    q, k, v = case.inputs(world, device)
    do = torch.randn_like(q)
    shards = [shard_sequence(t, layout=case.layout) for t in (q, k, v, do)]
    for t in shards[:3]:
        t.requires_grad_()
    ring_step = _ring_step(case, shards, rank)
    out = ring_step()
    gathered = Results(*(unshard_sequence(t.detach(), layout=case.layout)
                         for t in (out, *(s.grad for s in shards[:3]))))
    ring_ms = _median_ms(ring_step, reps, device, lockstep=True)
    ring_peak = peak_mib(ring_step, device)
    if rank != 0:
        dist.barrier()  # rank 0 runs the single-process kernel and the reference alone
        return None

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def single_step() -> torch.Tensor:
        for t in leaves:
            t.grad = None
        out = flash_attention(*leaves, causal=case.causal, dropout_p=case.dropout_p,
                              generator=dropout_generator(device))
        out.backward(do)
        return out

    single = Results(single_step().detach(), *(t.grad for t in leaves))
    single_ms = _median_ms(single_step, reps, device, lockstep=False)
    single_peak = peak_mib(single_step, device)
    expected = float64_reference(q, k, v, do, causal=case.causal, dropout_p=case.dropout_p,
                                 keep_mask=case.keep_mask(world, device))
    dist.barrier()
    ring_err, _ = max_errors(gathered.pairs(expected))
    single_err, _ = max_errors(single.pairs(expected))
    scale = max(t.abs().max().item() for t in (expected.out, expected.dq, expected.dk,
                                               expected.dv))
    bar = 2 * single_err + torch.finfo(case.dtype).eps / 2 * scale
    return dict(
        world=world, layout=case.layout, causal=case.causal,
        heads=f"{case.heads_q}/{case.heads_kv}", seqlen=case.seqlen(world),
        head_dim=case.head_dim, dtype=DTYPE_NAMES[case.dtype], dropout_p=case.dropout_p,
        ring_ms=ring_ms, single_ms=single_ms, ring_peak_mib=ring_peak,
        single_peak_mib=single_peak, ring_err=ring_err, single_err=single_err,
        status="ok" if ring_err <= bar else f"MISMATCH: ring error > {bar:.2e}",
    )


def _bench_process(rank: int, world: int, device: torch.device, cases: Sequence[RingCase],
                   reps: int) -> None:
    bar = tqdm(cases, unit="case", disable=rank != 0)  # every rank runs each case together
    rows = []
    for case in bar:
        bar.set_postfix_str(f"{case.layout} {'causal' if case.causal else 'full'} "
                            f"p={case.dropout_p}")
        rows.append(measure_case(case, rank, world, device, reps))
    if rank != 0:
        return
    title = f"Ring attention over {world} processes ({dist.get_backend()})"
    print("\n".join([*environment_header(device, title), "",
                     *markdown_table(rows, COLUMNS)]), flush=True)
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(rows)} cases failed the check")


@dataclass(frozen=True)
class Preset:
    """Shapes and repetitions when the command line leaves them out."""

    chunk: int
    heads_q: int
    heads_kv: int
    head_dim: int
    dtype: str
    reps: int


CPU_PRESET = Preset(chunk=8, heads_q=2, heads_kv=1, head_dim=16, dtype="fp32", reps=1)
GPU_PRESET = Preset(chunk=1024, heads_q=16, heads_kv=4, head_dim=128, dtype="bf16", reps=10)


def parse_args(argv: Sequence[str] | None, on_cuda: bool) -> argparse.Namespace:
    preset = GPU_PRESET if on_cuda else CPU_PRESET
    p = argparse.ArgumentParser(prog="python -m bench.ring", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world-size", type=int, default=2,
                   help="CPU processes to spawn (under torchrun: its own, this is ignored)")
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument("--causal", nargs="+", choices=("true", "false"), default=["true", "false"])
    p.add_argument("--dropouts", type=float, nargs="+", default=[0.0], metavar="P")
    p.add_argument("--dtype", choices=list(DTYPES), default=preset.dtype)
    p.add_argument("--chunk", type=int, default=preset.chunk,
                   help="tokens per chunk: L = chunk * W (contiguous) or chunk * 2W (zigzag)")
    p.add_argument("--heads", type=int, default=preset.heads_q)
    p.add_argument("--kv-heads", type=int, default=preset.heads_kv)
    p.add_argument("--head-dim", type=int, default=preset.head_dim)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=preset.reps, help="timed repetitions")
    return p.parse_args(argv)


def cases_from(args: argparse.Namespace) -> list[RingCase]:
    return [RingCase(layout, causal == "true", args.heads, args.kv_heads, args.chunk, p,
                     DTYPES[args.dtype], args.head_dim, args.batch)
            for layout, causal, p in itertools.product(args.layouts, args.causal,
                                                       args.dropouts)]


def main(argv: Sequence[str] | None = None) -> None:
    under_torchrun = "LOCAL_RANK" in os.environ
    on_cuda = torch.cuda.is_available() and under_torchrun
    args = parse_args(argv, on_cuda)
    cases = cases_from(args)
    if not under_torchrun:
        run_on_processes(args.world_size, _bench_process, cases, args.reps)
        return
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if on_cuda else torch.device(
        "cpu")
    if on_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if on_cuda else "gloo")
    try:
        _bench_process(dist.get_rank(), dist.get_world_size(), device, cases, args.reps)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
