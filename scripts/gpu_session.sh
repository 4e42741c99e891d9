#!/usr/bin/env bash
# Device call: host overhead per call, the whole GPU test suite, then the benchmark (fwd + bwd, causal both,
# against cuDNN; d=256 at 1k-32k unless HEADDIMS / SEQLENS / PASSES, e.g. PASSES=--bwd). Logs under $OUT, summary
# last. DEADLINE_S bounds the bench.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$SECONDS
timeout 120 python3 scripts/host_overhead.py > "$OUT/host.txt" 2>&1
echo "host overhead: $((SECONDS - start)) s"
timeout 330 python3 -m pytest -q -n 14 -p no:benchmark tests 2>&1 | tail -30 > "$OUT/pytest.txt"
echo "pytest: $((SECONDS - start)) s"
python3 -m flash256.bench ${PASSES:---fwd --bwd} --headdim "${HEADDIMS:-256}" \
    --seqlen "${SEQLENS:-1k,2k,4k,8k,16k,32k}" --causal both --backend flash256,sdpa-cudnn \
    --check first --time-budget $((${DEADLINE_S:-560} - SECONDS + start)) --json "$OUT/bench.json" \
    --markdown "$OUT/bench.md" > "$OUT/bench.txt" 2>&1
echo "total: $((SECONDS - start)) s"
grep -E "host ms|ms: bench" "$OUT/host.txt"
grep -E "passed|failed" "$OUT/pytest.txt" | tail -2; grep -E "^FAILED|^ERROR" "$OUT/pytest.txt" | head -8 | cut -c1-250
grep -A9 "ratios" "$OUT/bench.md" | grep "^|" | grep -v -- "---"
