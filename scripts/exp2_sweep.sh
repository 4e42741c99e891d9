#!/usr/bin/env bash
# Device call for issue 6: the exp2 emulation sweep (0..7 eighths, d 64/128/256, causal and not, 1k-32k,
# Gluon forward) with the kernels compiled in parallel first, then Nsight Compute pipe counters
# (MUFU = XU pipe, FMA, ALU, issue, tensor) at 16k for d=64 and d=256.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; TMP=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$SECONDS
for d in 64 128 256; do for c in 0 1; do
    python3 -c "
import torch, flash256
for e in range(8):
    q = torch.randn(1, 300, 2048 // $d, $d, device='cuda', dtype=torch.bfloat16)
    flash256.flash_attn_func(q, q, q, causal=bool($c), exp2_poly_fraction=e / 8)
torch.cuda.synchronize()" &
done; done; wait
echo "compiles: $((SECONDS - start)) s"
for spec in "64 0" "64 2" "64 4" "256 0" "256 4"; do
    set -- $spec
    timeout 120 ncu --clock-control none --section SpeedOfLight --section ComputeWorkloadAnalysis --print-details all \
        -k "regex:sm90_attn_fwd" --launch-skip 1 --launch-count 1 -f -o "$TMP/e" \
        python3 scripts/ncu_probe.py fwd $1 16384 0 $2 > /dev/null 2>&1
    echo "### d=$1 exp2_poly=$2/8" >> "$OUT/exp2_ncu.txt"
    ncu -i "$TMP/e.ncu-rep" --page details --print-details all 2>&1 | grep -E "Duration|SM: Pipe|SM: Inst Executed Pipe|SM: Issue|Issue Slots|Executed Ipc" >> "$OUT/exp2_ncu.txt"
done
echo "ncu: $((SECONDS - start)) s"
backends=flash256:exp2=0; for e in 1 2 3 4 5 6 7; do backends=$backends,flash256:exp2=$e; done
python3 -m flash256.bench --fwd --headdim 64,128,256 --seqlen 1k,2k,4k,8k,16k,32k --causal both --check first \
    --backend $backends,sdpa-cudnn --warmup 10 --rep 40 --time-budget $((${DEADLINE_S:-570} - SECONDS)) --json "$OUT/exp2.json" \
    --markdown "$OUT/exp2.md" --plot "$OUT/exp2.png" > "$OUT/exp2_bench.txt" 2>&1
echo "total: $((SECONDS - start)) s"
grep -A9 "TFLOP/s$" "$OUT/exp2.md" | grep "^|" | head -60
