#!/usr/bin/env bash
# Device call: backward variant A/B, then source-level ncu stall sampling of the d=256 dK/dV and forward
# kernels and the d=64 forward's pipe counters with exp2 emulation 0/2/4. Few files under $OUT.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; TMP=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$SECONDS
python3 scripts/bwd_variants.py ${VARIANTS:-none prefetch prefetch,p16} 2>&1 | tee "$OUT/variants.txt" | tail -16
echo "variants: $((SECONDS - start)) s"
src() {  # name regex env probe-args
    local name=$1 regex=$2 envs=$3; shift 3
    env $envs timeout 150 ncu --clock-control none --section WarpStateStats --section SourceCounters \
        --section ComputeWorkloadAnalysis -k "regex:$regex" --launch-skip 1 --launch-count 1 -f -o "$TMP/$name" \
        python3 scripts/ncu_probe.py "$@" > "$TMP/$name.log" 2>&1 || tail -5 "$TMP/$name.log"
    { ncu -i "$TMP/$name.ncu-rep" --page details 2>&1 | grep -E "Duration|Pipe|Stall|Tensor|XU|FMA|ALU|Issue|Ipc" ;
      ncu -i "$TMP/$name.ncu-rep" --page source --csv --print-source sass 2>&1 | python3 scripts/ncu_source_top.py 45
    } > "$OUT/src_$name.txt" 2>&1
    echo "== $name: $(wc -l < "$OUT/src_$name.txt") lines"
}
src dkdv256 dkdv FLASH256_BWD_EXPERIMENT=none bwd 256 16384 0
src dkdv256pf dkdv FLASH256_BWD_EXPERIMENT=prefetch bwd 256 16384 0
src fwd256 sm90_attn_fwd X=1 fwd 256 16384 0
src dq256 bwd_dq X=1 bwd 256 16384 0
for e in 0 2 4; do src fwd64e$e sm90_attn_fwd X=1 fwd 64 16384 0 $e; done
cat "$OUT"/src_fwd64e*.txt > "$OUT/exp2_d64.txt"; rm "$OUT"/src_fwd64e*.txt
echo "total: $((SECONDS - start)) s"
head -30 "$OUT/src_dkdv256.txt"
