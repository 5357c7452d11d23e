#!/usr/bin/env bash
# On a lent GPU machine, from the repository root (the machine's own torch/triton stay; the
# tests stage needs the "test" extra, pytest-xdist included: pip install -e ".[test,bench]"):
#     bash bench/gpu_session.sh tests    # `-m cuda` tests, then the rest of the suite on CUDA
#     bash bench/gpu_session.sh bench    # comparison sweep, a short TFLOP/s table last
#     bash bench/gpu_session.sh dropout  # dropout 0.1 vs 0 and the SDPA backends with dropout
#     bash bench/gpu_session.sh decode   # decoding over caches of 1k..32k keys, GB/s table last
# Separate stages because each fits one device command (10 minutes): the sweep's first calls
# autotune and compile every tile candidate. Results go under $OUT (or bench/results/gpu).
set -uo pipefail
stage="${1:-}"
case "$stage" in
    tests | bench | dropout | decode) ;;
    *) echo "usage: bash bench/gpu_session.sh tests|bench|dropout|decode" >&2; exit 2 ;;
esac
export PYTHONUNBUFFERED=1 PYTHONPATH=.
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
            torch.cuda.get_device_name())"
if [ "$stage" = tests ]; then
    python3 -m pytest tests -m cuda -q 2>&1 | tee "$out/cuda-tests.log" | tail -n 5
    cuda_status=${PIPESTATUS[0]}
    # Eight workers (pytest-xdist, from the "test" extra) compile the kernels in parallel;
    # without it the suite runs on one. The bench smoke tests are left out, since the bench
    # stages run the benchmark itself.
    workers="-n 8"
    if ! python3 -c "import xdist" 2>/dev/null; then
        echo "pytest-xdist missing (pip install -e \".[test]\"): one worker" >&2
        workers=""
    fi
    # shellcheck disable=SC2086  # $workers is "-n 8" or nothing
    python3 -m pytest tests -q $workers -m "not cuda" --deselect tests/test_bench_smoke.py 2>&1 \
        | tee "$out/other-tests.log" | tail -n 3
    other_status=${PIPESTATUS[0]}
    exit $(( cuda_status != 0 || other_status != 0 ))
fi
if [ "$stage" = bench ]; then
    # Causal and full, D 64/128, L 1024..16384, fwd and fwd+bwd, against the peers.
    providers=(sdpa-flash sdpa-cudnn flex ours)
    python3 -m bench --providers "${providers[@]}" --seqlens 1024 2048 4096 8192 16384 \
        --modes fwd fwd+bwd --decode-lengths none --out "$out/bench" > "$out/bench.log" 2>&1
elif [ "$stage" = decode ]; then
    # One query per row over caches of 1k..32k keys (8 rows, 4 query heads per key/value head).
    providers=(sdpa-flash sdpa-efficient sdpa-cudnn flex ours)
    python3 -m bench --providers "${providers[@]}" --seqlens none --modes fwd \
        --out "$out/decode" > "$out/decode.log" 2>&1
else
    # Dropout 0.1 against 0, and against the SDPA backends that support dropout.
    providers=(sdpa-flash sdpa-efficient ours)
    python3 -m bench --providers "${providers[@]}" --seqlens 1024 4096 16384 --causal true \
        --modes fwd+bwd --dropouts 0.0 0.1 --out "$out/$stage" > "$out/$stage.log" 2>&1
fi
# TFLOP/s, or GB/s when decoding (memory bound), per provider.
metric=tflops
if [ "$stage" = decode ]; then metric=gb_per_s; fi
python3 - "$out/$stage/results.csv" "$metric" "${providers[@]}" <<'PY'
import csv, sys
path, metric, providers = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = [r for r in csv.DictReader(open(path)) if r["status"] == "ok"]
key = ("mode", "d", "causal", "p", "n")
print(" ".join(f"{k:>7}" for k in key) + " " + " ".join(f"{p:>15}" for p in providers))
for values in sorted({tuple(r[k] for k in key) for r in rows},
                     key=lambda v: (v[0], int(v[1]), v[2], float(v[3]), int(v[4]))):
    value = {r["provider"]: float(r[metric]) for r in rows
             if tuple(r[k] for k in key) == values}
    print(" ".join(f"{v:>7}" for v in values) + " " + " ".join(
        f"{value.get(p, float('nan')):15.1f}" for p in providers))
PY
