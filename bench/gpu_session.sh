#!/usr/bin/env bash
# On a lent GPU machine, from the repository root (the machine's own torch/triton stay):
#     bash bench/gpu_session.sh tests    # CUDA tests, then the whole suite on CUDA
#     bash bench/gpu_session.sh bench    # comparison sweep, a short TFLOP/s table last
# Two stages because each fits one device command (10 minutes): the sweep's first calls
# autotune and compile every tile candidate. Results go under $OUT (or bench/results/gpu).
set -uo pipefail
stage="${1:?usage: bash bench/gpu_session.sh tests|bench}"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
            torch.cuda.get_device_name())"
if [ "$stage" = tests ]; then
    python3 -m pytest tests -m cuda -q 2>&1 | tee "$out/cuda-tests.log" | tail -n 5
    # Eight workers (pytest-xdist is on the device image) compile the kernels in parallel.
    python3 -m pytest tests -q -n 8 -m "not cuda" --deselect tests/test_bench_smoke.py 2>&1 \
        | tee "$out/other-tests.log" | tail -n 3
    exit 0
fi
# Issue targets: causal and full, D 64/128, L 1024..16384, fwd and fwd+bwd, against the peers.
python3 -m bench --providers sdpa-flash sdpa-cudnn flex ours \
    --seqlens 1024 2048 4096 8192 16384 --modes fwd fwd+bwd --out "$out/bench" \
    > "$out/bench.log" 2>&1
python3 - "$out/bench/results.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["status"] == "ok"]
print(f"{'mode':8} {'d':>4} {'causal':>6} {'n':>6} " + " ".join(
    f"{p:>11}" for p in ("sdpa-flash", "sdpa-cudnn", "flex", "ours")))
keys = sorted({(r["mode"], r["d"], r["causal"], int(r["n"])) for r in rows})
for mode, d, causal, n in keys:
    tf = {r["provider"]: float(r["tflops"]) for r in rows
          if (r["mode"], r["d"], r["causal"], int(r["n"])) == (mode, d, causal, n)}
    print(f"{mode:8} {d:>4} {causal:>6} {n:>6} " + " ".join(
        f"{tf.get(p, float('nan')):11.1f}" for p in ("sdpa-flash", "sdpa-cudnn", "flex", "ours")))
PY
