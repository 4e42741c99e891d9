#!/usr/bin/env bash
# One device call: per-kernel backward time, then Nsight Compute pipe/stall counters of the d=256 kernels
# (and the d=64 forward with exp2 emulation 0/2/4 eighths). Reports to $OUT/ncu_*.txt, summary last.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$SECONDS
python3 -m pytest -q -m gpu -k "deterministic or dispatch" tests/test_attention.py 2>&1 | tail -4 | tee "$OUT/pytest.txt"
python3 scripts/sm90_bwd_check.py profile 2>&1 | tee "$OUT/bwd_profile.txt"
SECTIONS="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis"
probe() {  # name kernel-regex probe-args...
    local name=$1 regex=$2; shift 2
    timeout 120 ncu --clock-control none $SECTIONS -k "regex:$regex" --launch-skip 1 --launch-count 1 \
        -f -o "$OUT/ncu_$name" python3 scripts/ncu_probe.py "$@" > "$OUT/ncu_$name.log" 2>&1
    ncu -i "$OUT/ncu_$name.ncu-rep" --page details --print-details all > "$OUT/ncu_$name.txt" 2>&1
    ncu -i "$OUT/ncu_$name.ncu-rep" --page raw --csv > "$OUT/ncu_$name.csv" 2>&1
    echo "== $name: $(grep -c . "$OUT/ncu_$name.txt") lines"
}
probe fwd256 sm90_attn_fwd fwd 256 16384 0
probe fwd256c sm90_attn_fwd fwd 256 16384 1
probe dkdv256 dkdv bwd 256 16384 0
probe dq256 bwd_dq bwd 256 16384 0
probe fwd64e0 sm90_attn_fwd fwd 64 16384 0 0
probe fwd64e2 sm90_attn_fwd fwd 64 16384 0 2
probe fwd64e4 sm90_attn_fwd fwd 64 16384 0 4
for f in "$OUT"/ncu_*.txt; do
    echo "### $(basename "$f")"
    grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|Executed Ipc Active|No Eligible|Warp Cycles Per Issued" "$f" | head -12
done
echo "probe: $((SECONDS - start)) s"
if [ -n "${BENCH_ARGS:-}" ]; then
    python3 -m flash256.bench $BENCH_ARGS --time-budget $((${DEADLINE_S:-580} - SECONDS)) --json "$OUT/bench.json" \
        --markdown "$OUT/bench.md" 2>"$OUT/bench.err" | tail -40
fi
echo "total: $((SECONDS - start)) s"
