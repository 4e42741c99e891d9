#!/usr/bin/env bash
# One device call: GPU tests, inspect, and benchmark rows; logs to $OUT (or ./gpu_out).
#   bash scripts/h100_check.sh [pytest-args...]     (BENCH_ARGS overrides the bench flags)
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cudnn', torch.backends.cudnn.version())"
start=$SECONDS
python3 -m pytest -q -x -n 8 -m "gpu or not gpu" -k "not past_2_31" "$@" 2>&1 | tail -25 | tee "$OUT/pytest.txt"
python3 -m pytest -q -k "past_2_31" tests/test_attention.py 2>&1 | tail -3 | tee -a "$OUT/pytest.txt"
echo "tests: $((SECONDS - start)) s"
python3 -m flash256.bench ${BENCH_ARGS:---fwd --bwd --seqlen 1k,4k,16k --causal both} \
    --time-budget $((${DEADLINE_S:-570} - SECONDS)) --json "$OUT/bench.json" --plot "$OUT/bench.png" --markdown "$OUT/bench.md" 2>"$OUT/bench.err" | tail -60
echo "total: $((SECONDS - start)) s"
