"""The benchmarks run end to end at tiny size (on the CPU: the Triton interpreter), so the
bench code cannot rot unnoticed: files written, our kernel's errors small, every provider
listed (without CUDA: every provider a CPU runs, the others named once), dropout, sliding
windows, softcaps, packed documents and decoding swept, the GPT training loop running with
every attention. Without CUDA the commands refuse GPU-sized runs up front, naming the flag for
a CPU-sized one; they show progress; they spell dtypes alike."""

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
CPU_PROVIDERS = {"eager", "sdpa-math", "ours"}
SWEPT = PROVIDERS if ON_CUDA else CPU_PROVIDERS  # what a sweep here runs by default


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root, which must succeed."""
    # The timeout catches a hang, not slowness: the interpreter shares the CPUs with others.
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
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
    for name in ("results.csv", "results.md", "tflops.png", "memory.png", "bandwidth.png"):
        assert (out / name).stat().st_size > 0, name


def test_sweep_lists_every_provider_that_runs_here_in_every_mode(sweep):
    rows = read_csv(sweep[0] / "results.csv")
    assert {(r["provider"], r["mode"]) for r in rows} == {
        (p, m) for p in SWEPT for m in ("fwd", "bwd", "fwd+bwd")
    }
    assert not [r for r in rows if r["status"].startswith("error")]


def test_ours_matches_the_float64_reference(sweep):
    rows = [r for r in read_csv(sweep[0] / "results.csv") if r["provider"] == "ours"]
    assert rows and all(r["status"] == "ok" for r in rows)
    # fwd rows check the output, bwd rows dq/dk/dv, fwd+bwd rows all four.
    worst = max(rows, key=lambda r: float(r["rel_err"]))
    assert float(worst["rel_err"]) < 1e-2, worst


@pytest.mark.skipif(ON_CUDA, reason="the smoke label and the CUDA-only providers' line are "
                                      "for CPU runs")
def test_cpu_run_is_labelled_runs_sdpa_math_and_names_the_cuda_providers_once(sweep):
    out, stdout = sweep
    assert SMOKE_LABEL in stdout
    assert SMOKE_LABEL in (out / "results.md").read_text()
    left_out = [line for line in stdout.splitlines() if "need CUDA" in line]
    assert left_out == ["Left out, as they need CUDA: sdpa-flash, sdpa-efficient, sdpa-cudnn, "
                        "flex."]
    rows = [r for r in read_csv(out / "results.csv") if r["provider"] == "sdpa-math"]
    assert any(r["status"] == "ok" for r in rows)
    for r in rows:
        assert r["status"] == "ok" and float(r["rel_err"]) < 1e-2 or (
            r["status"].startswith("unavailable: ") and "CUDA" not in r["status"]), r


def test_sweep_with_dropout_runs_ours_at_each_p_and_reports_no_errors_for_p_above_0(tmp_path):
    run_module("bench", "--quick", "--out", str(tmp_path), "--tokens", "64", "--hidden", "64",
               "--seqlens", "64", "--head-dims", "32", "--dtypes", "fp32", "--causal", "true",
               "--modes", "fwd+bwd", "--providers", "sdpa-math", "ours", "--dropouts", "0.0",
               "0.1", "--varlen", "false", "--decode-lengths", "none")
    rows = {(r["provider"], float(r["p"])): r for r in read_csv(tmp_path / "results.csv")}
    assert set(rows) == {(p, dropout) for p in ("sdpa-math", "ours") for dropout in (0.0, 0.1)}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert float(rows["ours", 0.0]["rel_err"]) < 1e-2
    # Each provider draws its own dropout mask: no error against the reference is reported.
    for provider in ("sdpa-math", "ours"):
        assert math.isnan(float(rows[provider, 0.1]["max_err"]))
        assert math.isnan(float(rows[provider, 0.1]["rel_err"]))


def test_quick_sweep_has_one_window_and_one_softcap_case_and_fits_the_interpreter():
    from bench.__main__ import config_cases, interpreter_refusal, parse_args, resolve_config

    for on_cuda in (False, True):
        cases = config_cases(resolve_config(parse_args(["--quick"]), on_cuda),
                             torch.device("cpu"))
        windowed = [c for c in cases if c.window is not None]
        capped = [c for c in cases if c.softcap is not None]
        assert len(windowed) == len(capped) == 1
        assert windowed[0].causal and windowed[0].window < windowed[0].n - 1
        assert windowed[0].softcap is None and capped[0].window is None
    cpu_cases = config_cases(resolve_config(parse_args(["--quick"]), False), torch.device("cpu"))
    assert interpreter_refusal(cpu_cases) is None
    assert {c.label() for c in cpu_cases if c.window or c.softcap} == {
        "b1 h2 n64 d32 causal window 16 fp32", "b1 h2 n64 d32 causal softcap 50 fp32"}
    # On a GPU: at n4096 d128, the largest causal shape.
    gpu_cases = config_cases(resolve_config(parse_args(["--quick"]), True), torch.device("cpu"))
    assert {c.label() for c in gpu_cases if c.window or c.softcap} == {
        "b4 h16 n4096 d128 causal window 1024 bf16", "b4 h16 n4096 d128 causal softcap 50 bf16"}


def test_quick_sweep_runs_ours_and_eager_with_a_window_and_a_softcap(sweep):
    rows = read_csv(sweep[0] / "results.csv")
    variants = [r for r in rows if r["window"] or r["softcap"]]
    # On a GPU the preset's window, 1024, hides nothing at the fixture's n = 64.
    expected = {("", "50.0")} if ON_CUDA else {("16", ""), ("", "50.0")}
    assert {(r["window"], r["softcap"]) for r in variants} == expected
    for r in variants:
        if r["provider"] in ("ours", "eager"):
            assert r["status"] == "ok" and float(r["rel_err"]) < 1e-2, r


def test_quick_sweep_runs_documents_packed_and_padded_counting_their_tokens_only(sweep):
    # One causal case's 64 tokens as documents: packed in one row for ours (varlen) and
    # eager (block-diagonal mask), padded one per row for every provider.
    rows = [r for r in read_csv(sweep[0] / "results.csv") if r["docs"]]
    assert {r["layout"] for r in rows} == {"packed", "padded"}
    for r in rows:
        if r["provider"] in ("ours", "eager"):
            assert r["status"] == "ok" and float(r["rel_err"]) < 1e-2, r
            # tokens/s counts the documents' 64 tokens, not the padding
            assert float(r["tokens_per_s"]) * float(r["ms"]) * 1e-3 == pytest.approx(64)
        elif r["layout"] == "packed":
            assert r["status"].startswith("unavailable: packed documents run on ours"), r


def test_quick_sweep_has_one_packed_and_one_padded_case_at_its_largest_causal_shape():
    from bench.__main__ import config_cases, parse_args, resolve_config

    for on_cuda, tokens, n in ((False, 64, 64), (True, 16384, 4096)):
        cases = config_cases(resolve_config(parse_args(["--quick"]), on_cuda),
                             torch.device("cpu"))
        varlen = {c.layout: c for c in cases if c.documents is not None}
        assert set(varlen) == {"packed", "padded"}
        assert varlen["packed"].documents == varlen["padded"].documents
        assert varlen["packed"].tokens == tokens and max(varlen["padded"].documents) <= n
    assert not config_cases(resolve_config(parse_args(["--quick", "--varlen", "false"]), True),
                            torch.device("cpu"))[-1].documents


def test_quick_sweep_decodes_one_new_token_per_row_over_a_cache(sweep):
    # The CPU preset: 2 rows, 2 query heads sharing 1 key/value head, a cache of 130 keys
    # (fwd only: decoding is inference).
    rows = [r for r in read_csv(sweep[0] / "results.csv") if r["layout"] == "decode"]
    assert {(r["provider"], r["mode"]) for r in rows} == {(p, "fwd") for p in SWEPT}
    for r in rows:
        assert (r["b"], r["h"], r["h_kv"], r["n"]) == ("2", "2", "1", "130"), r
        if r["provider"] in CPU_PROVIDERS:
            assert r["status"] == "ok" and float(r["rel_err"]) < 1e-2, r
            seconds = float(r["ms"]) * 1e-3
            assert float(r["tokens_per_s"]) * seconds == pytest.approx(2)  # one per row
            # GB/s: the cache read once, the queries read and the outputs written
            size = {"fp32": 4, "fp16": 2}[r["dtype"]]
            moved = size * 2 * (2 * 2 * 1 * 32 + 2 * 1 * 130 * 32)
            assert float(r["gb_per_s"]) * seconds * 1e9 == pytest.approx(moved)
    assert all(math.isnan(float(r["gb_per_s"])) for r in read_csv(sweep[0] / "results.csv")
               if r["layout"] != "decode")


def test_decoding_cases_cover_caches_of_1k_to_32k_keys_on_a_gpu(capsys):
    from bench.__main__ import config_cases, parse_args, resolve_config

    def decoding(*args, on_cuda=True):
        cases = config_cases(resolve_config(parse_args(list(args)), on_cuda),
                             torch.device("cpu"))
        return [c.label() for c in cases if c.decode]

    # 8 rows; h*d = 2048 as the sweep, 4 query heads per key/value head (Llama 3's 32 / 8)
    assert decoding() == [f"b8 h{2048 // d} kv{512 // d} n{n} d{d} decode bf16"
                          for n in (1024, 2048, 4096, 8192, 16384, 32768) for d in (64, 128)]
    assert decoding("--quick", "--head-dims", "128") == [
        "b8 h16 kv4 n1024 d128 decode bf16", "b8 h16 kv4 n32768 d128 decode bf16"]
    assert decoding("--quick", on_cuda=False) == ["b2 h2 kv1 n130 d32 decode fp32",
                                                  "b2 h2 kv1 n130 d32 decode fp16"]
    assert decoding("--decode-lengths", "none") == []
    assert decoding("--decode-lengths", "4096", "--decode-batch", "1", "--head-dims", "64") == [
        "b1 h32 kv8 n4096 d64 decode bf16"]
    assert decoding("--seqlens", "none", "--quick", on_cuda=False) == decoding(
        "--quick", on_cuda=False)  # the decoding cases alone
    assert all(c.decode for c in config_cases(
        resolve_config(parse_args(["--seqlens", "none"]), True), torch.device("cpu")))
    with pytest.raises(SystemExit):
        parse_args(["--decode-lengths", "0"])
    assert "expected a length n >= 1 or none" in capsys.readouterr().err


def test_sdpa_and_flex_decoding_compute_the_reference_attention():
    """On the CPU: SDPA's math backend and FlexAttention's eager forward with the keywords a
    decoding case gives them (grouped-query heads, the query seeing every key)."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    from attention_ops import reference
    from bench.cases import Case
    from bench.providers import flex_modifiers, providers_named

    case = Case(b=2, h=4, n=37, d=16, causal=True, dtype=torch.float32, dropout_p=0.0,
                device=torch.device("cpu"), decode=True, kv_heads=2)
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape) for shape in (case.shapes()[0], *case.shapes()[1:] * 2))
    expected = reference.scaled_dot_product_attention(q, k, v, **case.reference_options())
    # The reference itself: the query is the newest key, so it sees every key.
    torch.testing.assert_close(expected, reference.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)))
    with warnings.catch_warnings():  # flex_attention warns that it is not compiled
        warnings.simplefilter("ignore")
        out = flex_attention(q, k, v, **flex_modifiers(case))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    (sdpa_math,) = providers_named(["sdpa-math"])
    torch.testing.assert_close(sdpa_math.build(case)(q, k, v), expected, atol=1e-5, rtol=1e-5)


def test_float64_reference_chunks_whole_groups_of_query_heads(monkeypatch):
    # Chunked over heads to bound memory, with key/value heads shared: a chunk holds whole
    # groups, each with its own key/value head.
    from bench import accuracy

    q, dout = torch.randn(1, 8, 5, 16), torch.randn(1, 8, 5, 16)
    k, v = torch.randn(1, 2, 7, 16), torch.randn(1, 2, 7, 16)
    whole = accuracy.float64_reference(q, k, v, dout, causal=True)
    monkeypatch.setattr(accuracy, "CHUNK_BYTES", 1)  # as few heads a chunk as allowed
    chunked = accuracy.float64_reference(q, k, v, dout, causal=True)
    for name in ("out", "dq", "dk", "dv"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), msg=name)


def test_documents_fill_the_tokens_with_a_spread_of_lengths_and_count_their_own_flops():
    from bench.cases import Case, document_lengths, flop_pairs

    docs = document_lengths(16384, 4096)
    assert sum(docs) == 16384 and max(docs) <= 4096 and document_lengths(16384, 4096) == docs
    assert len(docs) > 4 and min(docs) < 4096 // 8  # short and long ones
    like = dict(h=2, d=8, causal=True, dtype=torch.float32, dropout_p=0.0,
                device=torch.device("cpu"), documents=(5, 1, 3))
    packed = Case(b=1, n=9, packed=True, **like)
    padded = Case(b=3, n=5, **like)
    per_document = 4 * 2 * 8 * sum(flop_pairs(n, causal=True) for n in (5, 1, 3))
    assert packed.flops("fwd") == padded.flops("fwd") == per_document
    assert packed.tokens == padded.tokens == 9
    assert packed.cu_seqlens().tolist() == [0, 5, 6, 9]
    mask = packed.reference_options()["attn_mask"]  # each document sees only itself
    assert mask.sum() == 5 * 5 + 1 + 3 * 3 and mask[5, 5] and not mask[5, 4]
    with pytest.raises(ValueError, match="packed into b=1 n=9"):
        Case(b=1, n=5, **like)


def test_windows_and_softcaps_add_cases_labelled_and_run_by_ours_and_eager(tmp_path, capsys):
    from bench.__main__ import main

    main(["--out", str(tmp_path), "--tokens", "32", "--hidden", "16", "--seqlens", "32",
          "--head-dims", "16", "--dtypes", "fp32", "--causal", "true", "--modes", "fwd",
          "--providers", "eager", "ours", "sdpa-math", "sdpa-flash", "flex",
          "--windows", "none", "8", "40", "--softcaps", "20", "--varlen", "false"])
    done = capsys.readouterr()
    rows = read_csv(tmp_path / "results.csv")
    status = {(r["provider"], (r["window"], r["softcap"])): r["status"] for r in rows}
    plain, window, softcap = ("", ""), ("8", ""), ("", "20.0")
    swept = {"eager", "ours", "sdpa-math", "sdpa-flash", "flex"} & SWEPT
    assert set(status) == {(p, v) for p in swept for v in (plain, window, softcap)}
    for r in rows:
        if r["provider"] in ("eager", "ours"):
            assert r["status"] == "ok" and float(r["rel_err"]) < 1e-2, r
    # The progress bar names each case; window 40 hides nothing at n = 32, and says so.
    for label in ("n32 d16 causal fp32", "n32 d16 causal window 8 fp32",
                  "n32 d16 causal softcap 20 fp32"):
        assert f"ours b1 h1 {label}" in done.err
    assert "No case for window 40" in done.out
    assert status["sdpa-math", softcap] == (
        "unavailable: no softcap in F.scaled_dot_product_attention")
    assert status["sdpa-math", window] == "ok"
    if ON_CUDA:
        assert "attn_mask" in status["sdpa-flash", window]
    else:
        assert "Left out, as they need CUDA: sdpa-flash, flex." in done.out
    table = (tmp_path / "results.md").read_text()
    assert "| causal | window | softcap | dtype |" in table
    assert "| True | 8 |  | fp32 |" in table and "| True |  | 20 | fp32 |" in table


def test_windowed_flops_count_the_visible_pairs_of_a_brute_force_mask():
    from attention_ops.reference import visibility_mask
    from bench.cases import Case

    def case(n, causal, window=None):
        return Case(b=2, h=3, n=n, d=8, causal=causal, dtype=torch.float32, dropout_p=0.0,
                    device=torch.device("cpu"), window=window)

    for n in (1, 2, 7, 64, 100):
        full = 4 * 2 * 3 * 8 * n * n
        assert case(n, False).flops("fwd") == full
        assert case(n, True).flops("fwd") == full / 2  # the documented convention: halved
        for window in (0, 1, 5, 31, n - 2):
            if window < 0:
                continue
            visible = visibility_mask(n, n, causal=True, window=(window, 0)).sum().item()
            # Like causal's n*n/2, the diagonal's n pairs count half: visible - n/2 pairs.
            expected = 4 * 2 * 3 * 8 * (visible - n / 2)
            for mode, factor in (("fwd", 1.0), ("bwd", 2.5), ("fwd+bwd", 3.5)):
                assert case(n, True, window).flops(mode) == expected * factor, (n, window)


def test_sdpa_and_flex_report_a_softcap_a_maskless_window_or_dropout_unavailable_with_a_reason():
    from bench.cases import Case
    from bench.providers import providers_named

    def case(**variant):
        return Case(b=1, h=1, n=64, d=16, causal=True, dtype=torch.float32,
                    device=torch.device("cpu"), **{"dropout_p": 0.0, **variant})

    sdpa = providers_named(["sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn"])
    for provider in sdpa:
        assert provider.unavailable(case(softcap=30.0)) == (
            "no softcap in F.scaled_dot_product_attention")
    (flex,) = providers_named(["flex"])
    assert flex.unavailable(case(softcap=30.0)) == "no CUDA"  # score_mod does softcap on a GPU
    assert flex.unavailable(case(dropout_p=0.1)) == "no dropout in FlexAttention"
    reasons = {p.name: p.unavailable(case(window=8)) for p in sdpa}
    assert reasons["sdpa-flash"] == "sdpa-flash takes no attn_mask, which a sliding window needs"
    assert reasons["sdpa-math"] is None  # its backend runs on every device
    if not ON_CUDA:
        assert {reasons["sdpa-efficient"], reasons["sdpa-cudnn"]} == {"no CUDA"}


def test_sdpa_window_mask_and_flex_modifiers_compute_the_reference_attention():
    """On the CPU: SDPA's math backend with the window mask, and FlexAttention's eager
    forward with the block mask and score_mod, against the package's reference."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    from attention_ops import reference
    from bench.cases import Case
    from bench.providers import flex_modifiers, providers_named

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
    for window, softcap in ((7, None), (None, 2.0), (7, 2.0), (None, None)):
        case = Case(b=1, h=2, n=40, d=16, causal=True, dtype=torch.float32, dropout_p=0.0,
                    device=torch.device("cpu"), window=window, softcap=softcap)
        expected = reference.scaled_dot_product_attention(
            q, k, v, causal=True, window=case.window_arg, softcap=softcap)
        with warnings.catch_warnings():  # flex_attention warns that it is not compiled
            warnings.simplefilter("ignore")
            out = flex_attention(q, k, v, **flex_modifiers(case))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        if softcap is None:
            (sdpa_math,) = providers_named(["sdpa-math"])
            torch.testing.assert_close(sdpa_math.build(case)(q, k, v), expected, atol=1e-5,
                                       rtol=1e-5)


def test_windows_and_softcaps_options_take_none_and_refuse_bad_values(capsys):
    from bench.__main__ import parse_args

    args = parse_args(["--windows", "none", "0", "16", "16", "--softcaps", "none", "50"])
    assert (args.windows, args.softcaps) == ([16], [50.0])
    assert parse_args(["--windows", "none"]).windows == []
    for bad in (["--windows", "-1"], ["--windows", "x"], ["--softcaps", "0"],
                ["--softcaps", "inf"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
        assert "expected a" in capsys.readouterr().err


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
    # It names the largest case: the padded batch of the 4096 tokens' documents.
    assert "d128 causal padded" in str(refusal.value)
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


def test_bench_ring_shows_progress_case_by_case(monkeypatch, capsys, tmp_path):
    """The measurement itself is stubbed out (measure_case): this checks the command's loop,
    on a process group of this process alone."""
    import torch.distributed as dist

    from bench import ring

    def measured(case, *args):
        return dict.fromkeys(ring.COLUMNS, "") | {"layout": case.layout, "status": "ok"}

    monkeypatch.setattr(ring, "measure_case", measured)
    args = ring.parse_args(["--layouts", "zigzag", "contiguous", "--causal", "true"], False)
    dist.init_process_group("gloo", rank=0, world_size=1,
                            store=dist.FileStore(str(tmp_path / "store"), 1))
    try:
        ring._bench_process(0, 1, torch.device("cpu"), ring.cases_from(args), 1)
    finally:
        dist.destroy_process_group()
    out, err = capsys.readouterr()
    assert "2/2" in err and "zigzag causal p=0.0" in err and "contiguous causal p=0.0" in err
    assert out.count("| ok |") == 2
