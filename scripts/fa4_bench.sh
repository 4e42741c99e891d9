#!/usr/bin/env bash
# Device call: flash-attn-4 beside flash256 and cuDNN in one bench run (d=256 unless HEADDIMS, fwd + bwd, causal
# both).
# Pack first (scripts/fa4_pack.sh), then two calls on one warm machine:
#   1. carry [".fa4a"]: mkdir -p /tmp/fa4site && tar -C /tmp/fa4site -xJf .fa4a/cu13.tar.xz
#   2. carry [".fa4b"]: bash scripts/fa4_bench.sh      (SEQLENS, HEADDIMS, BUDGET override the sweep)
# The site lives outside the repository: the device's copy of the tree drops an untracked .fa4site between calls
# (.git/info/exclude, which ignores it here, does not travel).
# Logs and the markdown tables under $OUT; the power probe's long-context table after it where time is left.
set -uo pipefail
OUT=${OUT:-fa4_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SITE=/tmp/fa4site
export PYTHONPATH=$PWD:$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
[ -d $SITE/nvidia_cutlass_dsl ] || { echo "no $SITE: run step 1 on this machine first"; exit 3; }
tar -C $SITE -xJf .fa4b/rest.tar.xz || exit 3
python3 -c "from flash_attn.cute import flash_attn_func; import cutlass; print('flash-attn-4 importable')" \
    2>&1 | tail -3 | tee "$OUT/import.log"
python3 -m flash256.bench --fwd --bwd --headdim "${HEADDIMS:-256}" --seqlen "${SEQLENS:-1k,4k,8k,16k,32k}" \
    --causal both --backend flash256,sdpa-cudnn,fa4 --check first --time-budget "${BUDGET:-330}" \
    --markdown "$OUT/bench_fa4.md" > "$OUT/bench.log" 2>&1
grep -A9 "ratios" "$OUT/bench_fa4.md" | grep "^|" | grep -v -- "---"
if [ $SECONDS -lt 470 ]; then
    timeout $((570 - SECONDS)) python3 scripts/power_probe.py --long 2>&1 | tee "$OUT/power_long.log" | tail -12
fi
