#!/usr/bin/env bash
# Nsight Compute on one attention kernel: pipe utilisation, memory throughput (L2, DRAM), warp stalls and the top
# SASS instructions by stall samples (source-level sampling). Under $OUT: the summary, every section's details
# (L2 fabric and slice tables included) and the per-instruction source counters (gzipped CSV) per case.
#   bash scripts/ncu_stalls.sh NAME KERNEL_REGEX fwd|bwd HEAD_DIM SEQLEN CAUSAL [EXP2_EIGHTHS]
#   e.g. bash scripts/ncu_stalls.sh dkdv256 dkdv bwd 256 16384 0
# Another backend (ncu_probe.py's BACKEND), every kernel of its third call (KERNEL_REGEX unused):
#   BACKEND=fa4 NCU_SELECT="--profile-from-start off --launch-count 16" bash scripts/ncu_stalls.sh fa4 . bwd 128 8192 0
# Addresses in the listing are absolute: subtract the kernel's base (match an instruction against a
# `flash256.inspect`-style SASS dump) to find it in the code.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; TMP=$(mktemp -d)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
name=$1 regex=$2; shift 2
DETAILS="Duration|SM Frequency|SM: Pipe|SM: Inst Executed Pipe|SM: Issue|Issue Slots|Ipc|Stall"
DETAILS+="|Memory Throughput|Max Bandwidth|Mem Busy|L2 Hit|L1/TEX Hit|DRAM Throughput"
timeout 150 ncu --clock-control none --section SpeedOfLight --section LaunchStats --section WarpStateStats --section SourceCounters \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
    ${NCU_SELECT:--k "regex:$regex" --launch-skip 1 --launch-count 1} -f -o "$TMP/$name" \
    python3 scripts/ncu_probe.py "$@" > "$TMP/$name.log" 2>&1 || tail -5 "$TMP/$name.log"
ncu -i "$TMP/$name.ncu-rep" --page details --print-details all > "$OUT/ncu_${name}_details.txt" 2>&1
# every SASS instruction's counters (stall samples, shared-memory wavefronts against ideal), for offline reading
ncu -i "$TMP/$name.ncu-rep" --page source --csv --print-source sass 2>&1 | gzip > "$OUT/ncu_${name}_source.csv.gz"
{ python3 scripts/ncu_kernels.py "$OUT/ncu_${name}_details.txt"; grep -E "$DETAILS" "$OUT/ncu_${name}_details.txt" ;
  zcat "$OUT/ncu_${name}_source.csv.gz" | python3 scripts/ncu_source_top.py 45
} > "$OUT/ncu_$name.txt" 2>&1
echo "== $name: $(wc -l < "$OUT/ncu_$name.txt") lines in $OUT/ncu_$name.txt"
