"""The benchmarks run end to end at tiny size (on the CPU: the Triton interpreter), so the
bench code cannot rot unnoticed: files written, our kernel's errors small, every provider
listed, dropout swept, the GPT training loop running with every attention. Without CUDA the
commands refuse GPU-sized runs up front, naming the flag for a CPU-sized one; they show
progress; they spell dtypes alike."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ is not installed: run from the repository root
    sys.path.insert(0, str(REPO))
ON_CUDA = torch.cuda.is_available()
SMOKE_LABEL = "CPU interpreter smoke run: correctness only, timings have no performance meaning"
PROVIDERS = {"eager", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex", "ours"}


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root, which must succeed."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{module} failed:\n{done.stdout}\n{done.stderr}"
    return done


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, str]:
    """The quick sweep at interpreter size (the CPU preset; the same shapes on a GPU)."""
    out = tmp_path_factory.mktemp("bench")
    done = run_module("bench", "--quick", "--out", str(out), "--tokens", "64", "--hidden", "64",
                      "--seqlens", "64", "--head-dims", "32", "--dtypes", "fp32", "fp16")
    return out, done.stdout


def test_sweep_writes_csv_markdown_and_plots(sweep):
    out, _ = sweep
    for name in ("results.csv", "results.md", "tflops.png", "memory.png"):
        assert (out / name).stat().st_size > 0, name


def test_sweep_lists_every_provider_in_every_mode(sweep):
    rows = read_csv(sweep[0] / "results.csv")
    assert {(r["provider"], r["mode"]) for r in rows} == {
        (p, m) for p in PROVIDERS for m in ("fwd", "bwd", "fwd+bwd")
    }
    assert not [r for r in rows if r["status"].startswith("error")]


def test_ours_matches_the_float64_reference(sweep):
    rows = [r for r in read_csv(sweep[0] / "results.csv") if r["provider"] == "ours"]
    assert rows and all(r["status"] == "ok" for r in rows)
    # fwd rows check the output, bwd rows dq/dk/dv, fwd+bwd rows all four.
    worst = max(rows, key=lambda r: float(r["rel_err"]))
    assert float(worst["rel_err"]) < 1e-2, worst


@pytest.mark.skipif(ON_CUDA, reason="the smoke label and 'no CUDA' rows are for CPU runs")
def test_cpu_run_is_labelled_and_lists_unavailable_providers(sweep):
    out, stdout = sweep
    assert SMOKE_LABEL in stdout
    assert SMOKE_LABEL in (out / "results.md").read_text()
    rows = read_csv(out / "results.csv")
    unavailable = {r["provider"] for r in rows if r["status"] == "unavailable: no CUDA"}
    assert unavailable == PROVIDERS - {"eager", "ours"}


def test_sweep_with_dropout_runs_ours_at_each_p_and_reports_no_errors_for_p_above_0(tmp_path):
    run_module("bench", "--quick", "--out", str(tmp_path), "--tokens", "64", "--hidden", "64",
               "--seqlens", "64", "--head-dims", "32", "--dtypes", "fp32", "--causal", "true",
               "--modes", "fwd+bwd", "--providers", "flex", "ours", "--dropouts", "0.0", "0.1")
    rows = {(r["provider"], float(r["p"])): r for r in read_csv(tmp_path / "results.csv")}
    assert set(rows) == {(p, dropout) for p in ("flex", "ours") for dropout in (0.0, 0.1)}
    assert rows["ours", 0.0]["status"] == rows["ours", 0.1]["status"] == "ok"
    assert float(rows["ours", 0.0]["rel_err"]) < 1e-2
    # Each provider draws its own dropout mask: no error against the reference is reported.
    assert math.isnan(float(rows["ours", 0.1]["max_err"]))
    assert math.isnan(float(rows["ours", 0.1]["rel_err"]))
    assert rows["flex", 0.1]["status"] == "unavailable: no dropout in FlexAttention"


def test_train_gpt_tiny_runs_every_attention_from_the_same_start(tmp_path):
    done = run_module("bench.train_gpt", "--tiny", "--out", str(tmp_path))
    # A progress bar on stderr counts the steps: (1 warm-up + 2 timed) x 3 attentions.
    assert "9/9" in done.stderr and "step" in done.stderr
    rows = {r["attention"]: r for r in read_csv(tmp_path / "results.csv")}
    assert set(rows) == {"eager", "triton", "sdpa"}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    # Same seed, same parameters: the first loss differs only by the attention's rounding.
    eager_loss = float(rows["eager"]["first_loss"])
    for r in rows.values():
        assert float(r["first_loss"]) == pytest.approx(eager_loss, rel=1e-2)
        assert float(r["last_loss"]) < float(r["first_loss"])


def test_sweep_rows_and_every_cli_spell_dtypes_bf16_fp16_fp32(sweep, capsys):
    from bench import compile_report
    from bench.__main__ import parse_args

    assert {r["dtype"] for r in read_csv(sweep[0] / "results.csv")} == {"fp32", "fp16"}
    assert parse_args(["--dtypes", "bf16", "fp16", "fp32"]).dtypes == ["bf16", "fp16", "fp32"]
    for cli in (lambda: parse_args(["--dtypes", "bfloat16"]),
                lambda: compile_report.main(["--dtype", "bfloat16"])):
        with pytest.raises(SystemExit):
            cli()
        assert "(choose from 'bf16', 'fp16', 'fp32')" in capsys.readouterr().err


@pytest.mark.skipif(ON_CUDA, reason="the interpreter's size limit applies without CUDA")
def test_sweep_refuses_gpu_sized_lengths_without_cuda_and_names_quick(tmp_path):
    from bench.__main__ import main

    with pytest.raises(SystemExit, match="python -m bench --quick") as refusal:
        main(["--seqlens", "4096", "--head-dims", "128", "--out", str(tmp_path / "out")])
    assert "n4096 d128" in str(refusal.value)
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.skipif(ON_CUDA, reason="the refusal is for machines without CUDA")
def test_train_gpt_without_cuda_refuses_all_but_a_short_tiny_run(tmp_path):
    from bench.train_gpt import main

    with pytest.raises(SystemExit, match="python -m bench.train_gpt --tiny"):
        main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="contexts up to 256"):
        main(["--tiny", "--contexts", "1024", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_compile_report_shows_progress_while_it_prints_rows(monkeypatch, capsys):
    """The compiler itself is stubbed out (compile_one): this checks the command's loop."""
    from bench import compile_report

    def compiled(launch, name, config, head_dim, causal, arch):
        return compile_report.Report(name, head_dim, causal, "M64 N64 w4 s2", 128, 0, 48 * 1024,
                                     16, 1.0)

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(compile_report, "compile_one", compiled)
    compile_report.main(["--kernels", "fwd", "dq", "--head-dims", "64", "--causal", "yes",
                         "--max-configs", "2"])
    out, err = capsys.readouterr()
    assert out.count("| M64 N64 w4 s2 | 128 | 0 | 48 | 16 | 1.00 |  |") == 4
    assert "4/4" in err and "tile" in err
