#!/usr/bin/env bash
# One call on a lent GPU machine: CUDA tests, then the benchmark, a short table last.
# Run from the repository root on the device (its own torch/triton stay):
#     bash bench/gpu_session.sh            # results under $OUT (or bench/results/gpu)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
            torch.cuda.get_device_name())"
python3 -m pytest tests -m cuda -q -x 2>&1 | tee "$out/cuda-tests.log" | tail -n 5
python3 -m pytest tests -q -x --deselect tests/test_bench_smoke.py 2>&1 \
    | tee "$out/all-tests.log" | tail -n 3
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
