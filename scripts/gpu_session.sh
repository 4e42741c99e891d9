#!/usr/bin/env bash
# Device call: sm90 correctness (plain/causal combos + window/softcap features), the GPU tests of those
# features, backward variant A/B, and the Gemma-2 layer rows. Logs under $OUT, summary last.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$SECONDS
COMBO_TIMEOUT_S=300 python3 scripts/sm90_bwd_check.py correctness > "$OUT/correctness.txt" 2>&1
echo "correctness: $((SECONDS - start)) s"
python3 -m pytest -q -n 8 tests/test_features.py tests/test_attention.py \
    -k "softcap or window or fast_path or deterministic" 2>&1 | tail -3 > "$OUT/pytest.txt"
echo "pytest: $((SECONDS - start)) s"
python3 scripts/variants.py ${VARIANTS:-bwd:default bwd:rs_first=0} > "$OUT/variants.txt" 2>&1
echo "variants: $((SECONDS - start)) s"
python3 -m flash256.bench --fwd --bwd --seqlen 1k,2k,4k,8k,16k,32k --causal both --backend flash256,sdpa-cudnn \
    --check first --time-budget 170 --json "$OUT/bench.json" --markdown "$OUT/bench.md" > "$OUT/bench.txt" 2>&1
python3 -m flash256.bench --bwd --headdim 128 --seqlen 4k,16k --causal both --backend flash256,sdpa-cudnn \
    --check first --time-budget 40 --markdown "$OUT/bench128.md" > "$OUT/bench128.txt" 2>&1
echo "bench: $((SECONDS - start)) s"
python3 -m flash256.bench --fwd --bwd --seqlen 8k,16k,32k --causal true --window-size 4096,0 --softcap 50 \
    --gqa-ratio 2 --backend flash256,flex --check first --time-budget $((${DEADLINE_S:-560} - SECONDS)) \
    --json "$OUT/gemma.json" --markdown "$OUT/gemma.md" > "$OUT/gemma.txt" 2>&1
echo "total: $((SECONDS - start)) s"
grep -E "^FAIL|HANG|EXCEPTION" "$OUT/correctness.txt" | cut -c1-300 | head -12
sed -n '/## correctness/,$p' "$OUT/correctness.txt"
cat "$OUT/pytest.txt"; grep "^|" "$OUT/variants.txt"
grep -A9 "ratios" "$OUT/bench.md" | grep "^|" | head -40; grep -A6 "ratios" "$OUT/bench128.md" | grep "^|"
grep -A6 "TFLOP/s$" "$OUT/gemma.md" | grep "^|" | head -14
