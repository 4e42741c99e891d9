#!/usr/bin/env bash
# Device call: backward variant A/B (VARIANTS), source-level ncu stalls of the dK/dV kernel per variant.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; TMP=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$SECONDS
python3 scripts/bwd_variants.py ${VARIANTS:-none dvfirst} 2>&1 | tee "$OUT/variants.txt" | tail -22
echo "variants: $((SECONDS - start)) s"
for variant in ${NCU_VARIANTS:-dvfirst}; do
    FLASH256_BWD_EXPERIMENT=$variant timeout 150 ncu --clock-control none --section WarpStateStats --section SourceCounters \
        --section ComputeWorkloadAnalysis -k "regex:dkdv" --launch-skip 1 --launch-count 1 -f -o "$TMP/$variant" \
        python3 scripts/ncu_probe.py bwd 256 16384 0 > "$TMP/$variant.log" 2>&1 || tail -5 "$TMP/$variant.log"
    { ncu -i "$TMP/$variant.ncu-rep" --page details 2>&1 | grep -E "Duration|Pipe|Stall|Tensor|Issue|Ipc" ;
      ncu -i "$TMP/$variant.ncu-rep" --page source --csv --print-source sass 2>&1 | python3 scripts/ncu_source_top.py 30
    } > "$OUT/src_dkdv_$variant.txt" 2>&1
done
echo "total: $((SECONDS - start)) s"
