"""Launch configuration: the autotune space per head dim, the length buckets, and that every
kernel still compiles for Hopper (sm_90a) with warpgroup MMAs, checked without a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from numerics import assert_matches_reference, assert_within_eager_error, max_score_of
from seeding import generator
from triton.runtime.errors import OutOfResources

import attention_ops as ao
from attention_ops.kernels import configs, launch
from attention_ops.reference import scaled_dot_product_attention as reference_sdpa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is not installed: run from the repository root
    sys.path.insert(0, str(ROOT))


@pytest.mark.parametrize("kind", sorted(configs.TILES))
@pytest.mark.parametrize("head_dim", [16, 40, 64, 80, 128, 200, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_autotuning_considers_exactly_the_tiles_of_the_head_dim_class_and_dtype(kind, head_dim,
                                                                               dtype):
    block_d = configs.head_dim_block(head_dim)
    every = [launch.tile_config(t) for tables in (configs.TILES, configs.FP32_TILES)
             for table in tables[kind].values() for t in table]
    kept = launch.head_dim_pruner(kind)(every, {"BLOCK_D": block_d,
                                                 "Q": torch.empty(0, dtype=dtype)})
    tables = configs.FP32_TILES if dtype == torch.float32 else configs.TILES
    expected = set(tables[kind][configs.head_dim_class(block_d)])
    assert expected, "every head-dim class needs at least one candidate"
    assert {launch.config_tile(c) for c in kept} == expected


def test_head_dims_pad_to_a_power_of_two_of_at_least_16():
    assert [configs.head_dim_block(d) for d in (1, 16, 40, 64, 80, 96, 128, 200, 256)] == [
        16, 16, 64, 64, 128, 128, 128, 256, 256]


def test_lengths_share_a_few_coarse_tuning_buckets():
    buckets = {launch.seqlen_bucket(n) for n in range(1, 40000, 7)}
    assert buckets == {256, 512, 1024, 2048, 4096, 8192, 16384}


def test_fixed_tile_launch_moves_past_tiles_the_device_cannot_fit(monkeypatch):
    tiles = configs.TILES["fwd"][64]
    launched = []

    class KernelOutOfSharedMemoryOnTheFirstTile:
        def __getitem__(self, grid):
            def run(*, BLOCK_M, BLOCK_N, num_warps, num_stages, **args):
                if (BLOCK_M, BLOCK_N, num_warps, num_stages) == tiles[0]:
                    raise OutOfResources(300_000, 232_448, "shared memory")
                launched.append((BLOCK_M, BLOCK_N, num_warps, num_stages))

            return run

    monkeypatch.setattr(launch, "is_interpreter", lambda: False)
    launch.launch(KernelOutOfSharedMemoryOnTheFirstTile(), "fwd", lambda meta: (1,),
                  {"Q": torch.empty(0, dtype=torch.float16), "BLOCK_D": 64})
    assert launched == [tiles[1]]


def compile_report_rows(*args: str) -> list[list[str]]:
    """Run ``python -m bench.compile_report`` with ``args`` (no GPU needed) and return its
    table rows as lists of cells."""
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "bench.compile_report", *args], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return [[cell.strip() for cell in line.split("|")[1:-1]]
            for line in result.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")]


def _where(row: list[str]) -> str:
    variant, kernel, head_dim, _, config = row[:5]
    return f"{variant} {kernel} D={head_dim} {config}"


def assert_computes_each_dot_once(rows: list[list[str]]) -> None:
    """Each tile compiled and computes no dot twice (MMA x, executed over useful
    multiply-adds, 1.00: no warps repeating rows another warpgroup computes)."""
    for row in rows:
        mma_x, note = row[-2:]
        assert note == "", f"{_where(row)}: {note}"
        assert mma_x == "1.00", f"{_where(row)}: computes {mma_x}x its dots' work"


def assert_hopper_ready(rows: list[list[str]], dtype: str) -> None:
    """``assert_computes_each_dot_once``, and each tile is spill-free and, in half precision,
    uses warpgroup MMAs (but the small fallback tile, whose 32-row dots are below the
    warpgroup MMA's 64; float32 runs IEEE dots, which never do)."""
    assert_computes_each_dot_once(rows)
    for row in rows:
        config, _regs, spill, _smem, hgmma = row[4:9]
        assert int(spill) == 0, f"{_where(row)}: {spill} bytes of register spills"
        if dtype != "fp32" and config != "M32 N32 w4 s1":
            assert int(hgmma) > 0, f"{_where(row)}: no warpgroup MMA in the SASS"


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_every_candidate_tile_compiles_for_hopper_without_spills(dtype):
    """CI has no GPU: compile every D=64 and D=128 candidate tile of every table (causal, the
    launchers' real arguments) for sm_90a down to SASS: none computes a dot twice, each is
    spill-free with warpgroup MMAs. (D=256, whose dK/dV tiles cannot be both, costs two more
    minutes of compiling: `python -m bench.compile_report --head-dims 256` checks it.)"""
    rows = compile_report_rows("--head-dims", "64", "128", "--causal", "yes",
                               "--dtype", dtype, "--variants", "plain", "decode")
    tables = configs.FP32_TILES if dtype == "fp32" else configs.TILES
    assert len(rows) == sum(len(tiles) for kind in tables
                            for head_dim, tiles in tables[kind].items() if head_dim <= 128)
    assert_hopper_ready(rows, dtype)


def test_every_score_modifier_compiles_for_hopper_without_spills():
    """Each score-pipeline switch (sliding window, softcap, ALiBi, sinks, float mask, a value
    head dim of half the query's), all of them at once, packed sequences, and decoding from a
    paged cache with split keys (its one kernel), on the tile taken when autotuning is off
    (the first candidate within an H100's shared memory: a float mask's tile is staged there
    too), bf16, causal, D 64/128."""
    variants = ["window", "softcap", "alibi", "sinks", "float-mask", "value-dim", "all",
                "varlen", "decode"]
    rows = compile_report_rows("--head-dims", "64", "128", "--causal", "yes", "--first-fitting",
                               "--variants", *variants)
    assert sorted({row[0] for row in rows}) == sorted(variants)
    assert len(rows) == (len(variants) - 1) * 2 * 3 + 2
    assert_hopper_ready(rows, "bf16")


# Two dots of a dK/dV M32 N64 w8 kernel as sm_90a's TTGIR prints them: S^T (64 x 32, K = 128)
# on all 8 warps along its 64 rows, and dV (64 x 128, K = 32) on 4 x 2 warps.
DKDV_M32_N64_W8_TTGIR = """\
#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 2], \
instrShape = [16, 64, 16]}>
#mma1 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [8, 1], \
instrShape = [16, 16, 16]}>
      %b_pt_199 = ttng.warp_group_dot %b_k_34, %b_pt_193, %cst_4 {inputPrecision = 0 : i32, \
isAsync = true} : !ttg.memdesc<64x128xbf16, #shared, #smem> * !ttg.memdesc<128x32xbf16, \
#shared2, #smem, mutable> -> tensor<64x32xf32, #mma1> loc(#loc237)
      %b_pt_200:3 = ttng.warp_group_dot_wait %b_pt_199, %b_k_34, %b_pt_193 {pendings = 0 : i32} \
: tensor<64x32xf32, #mma1>, !ttg.memdesc<64x128xbf16, #shared, #smem> loc(#loc237)
      %b_dv_215 = ttng.warp_group_dot %b_dv_214, %b_do_194, %arg42 {inputPrecision = 0 : i32, \
isAsync = true} : tensor<64x32xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 2}>> * \
!ttg.memdesc<32x128xbf16, #shared, #smem, mutable> -> tensor<64x128xf32, #mma> loc(#loc245)
"""


def test_dot_work_counts_rows_that_a_second_warpgroup_computes_again():
    from bench.compile_report import dot_work  # imports Triton's compiler: here, not at the top

    executed, useful = dot_work(DKDV_M32_N64_W8_TTGIR)
    # S^T: 8 warps cover 128 rows of a 64-row tile, twice its work; dV: exactly its tile.
    assert useful == 64 * 32 * 128 + 64 * 128 * 32
    assert executed == 2 * 64 * 32 * 128 + 64 * 128 * 32
    fma = ("#blocked1 = #ttg.blocked<{sizePerThread = [2, 2], threadsPerWarp = [4, 8], "
           "warpsPerCTA = [4, 1], order = [1, 0]}>\n"
           "  %d = tt.dot %a, %b, %c : tensor<16x128xf32, #ttg.dot_op<{opIdx = 0, parent = "
           "#blocked1}>> * tensor<128x16xf32, #ttg.dot_op<{opIdx = 1, parent = #blocked1}>> -> "
           "tensor<16x16xf32, #blocked1>\n")
    # An FMA dot on a layout covering 32 x 16: the 16-row tile is computed twice.
    assert dot_work(fma) == (2 * 16 * 16 * 128, 16 * 16 * 128)


@pytest.mark.cuda
def test_autotuned_launch_agrees_with_the_fixed_tile():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 1000, 64, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    results = []
    for autotune in (False, True):
        previous = launch.use_autotuning(autotune)
        try:
            out = ao.flash_attention(q, k, v, causal=True)
            results.append((out, *torch.autograd.grad(out, (q, k, v), do)))
        finally:
            launch.use_autotuning(previous)
    for fixed, tuned in zip(*results, strict=True):
        torch.testing.assert_close(tuned, fixed, atol=2e-2, rtol=2e-2)


def _every_tile(kinds: tuple[str, ...]) -> list:
    params = []
    for dtype, tables in ((torch.float16, configs.TILES), (torch.float32, configs.FP32_TILES)):
        for kind in kinds:
            table = tables[kind]
            for head_dim in (64, 128):
                for tile in table[head_dim]:
                    name = str(dtype).removeprefix("torch.")
                    params.append(pytest.param(kind, head_dim, tile, dtype,
                                               id=f"{kind}-D{head_dim}-{tile}-{name}"))
    return params


def _first_in_its_table(kind: str, head_dim: int, tile: tuple, dtype: torch.dtype, device,
                        monkeypatch) -> None:
    """Make ``tile`` the one fixed-tile launches of ``kind`` take (off the GPU the interpreter
    then runs the real tile sizes)."""
    if device == "cpu":
        monkeypatch.setattr(launch, "is_interpreter", lambda: False)
    tables = configs.FP32_TILES if dtype == torch.float32 else configs.TILES
    table = dict(tables[kind])
    table[head_dim] = [tile]
    monkeypatch.setitem(tables, kind, table)


@pytest.mark.parametrize("variant", ["causal", "mask-and-dropout"])
@pytest.mark.parametrize("kind, head_dim, tile, dtype", _every_tile(("fwd", "dkdv", "dq")))
def test_every_candidate_tile_computes_the_same_attention(kind, head_dim, tile, dtype, variant,
                                                          device, monkeypatch):
    """Launch through the fixed-tile path with each candidate first in its table (off the GPU
    the interpreter runs the real tile sizes): causal, so every BLOCK_M != BLOCK_N case of the
    diagonal loops comes up, and with a bool mask and dropout, whose mask the forward and the
    two backward kernels must regenerate alike from different tilings. Ragged length."""
    _first_in_its_table(kind, head_dim, tile, dtype, device, monkeypatch)
    torch.manual_seed(sum(tile))
    q, k, v = (torch.randn(1, 2, 150, head_dim, dtype=dtype) for _ in range(3))
    if variant == "causal":
        assert_matches_reference(lambda q, k, v: ao.flash_attention(q, k, v, causal=True),
                                 q, k, v, causal=True)
    else:
        p, mask = 0.2, torch.rand(150, 150) > 0.2
        keep = ao.dropout_keep_mask((1, 2, 150, 150), p,
                                    ao.draw_dropout_seed(q.device, generator(7)))
        assert_matches_reference(
            lambda q, k, v: ao.flash_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                               generator=generator(7)),
            q, k, v, attn_mask=mask, dropout_p=p, keep_mask=keep)


@pytest.mark.parametrize("kind, head_dim, tile, dtype", _every_tile(("decode",)))
def test_every_decode_tile_computes_the_same_attention(kind, head_dim, tile, dtype, device,
                                                       monkeypatch):
    """Decoding with each candidate tile first: 3 query rows of 4 grouped heads (12 stacked
    rows, so a 16-row tile is ragged), ragged cache lengths, 3 splits, against the reference on
    each row's keys."""
    _first_in_its_table(kind, head_dim, tile, dtype, device, monkeypatch)
    torch.manual_seed(sum(tile))
    q = torch.randn(2, 4, 3, head_dim, dtype=dtype)
    k, v = (torch.randn(2, 1, 150, head_dim, dtype=dtype) for _ in range(2))
    lengths = [150, 77]
    out = ao.flash_attention_with_kvcache(q, k, v, torch.tensor(lengths, dtype=torch.int32),
                                          num_splits=3)
    for b, n in enumerate(lengths):
        rows = (q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n])
        options = dict(causal=True, align="bottom_right")
        assert_within_eager_error(f"out[{b}]", out[b:b + 1], reference_sdpa(*rows, **options),
                                  reference_sdpa(*(t.double() for t in rows), **options),
                                  max_score=max_score_of(*rows[:2], None))
