#!/usr/bin/env bash
# Pack flash-attn-4 (CuTe DSL) for a device call, here (needs pip and network, no GPU); see scripts/fa4_bench.sh.
#
# The device has torch 2.11 (cu130) and cuDNN but not flash-attn-4, and cannot download. Its wheels for
# Python 3.12 / CUDA 13 weigh ~100 MB, above the 64 MiB a call may carry: nvidia-cutlass-dsl-libs-cu13 alone is a
# 92 MB wheel holding a 193 MB MLIR library. So the wheels are unpacked here and re-packed as two xz tarballs:
#   .fa4a/cu13.tar.xz   the CUDA-13 libraries of nvidia-cutlass-dsl (~61 MiB; xz -9e takes ~4 min on 2 cores)
#   .fa4b/rest.tar.xz   flash-attn-4, the rest of nvidia-cutlass-dsl, quack-kernels, apache-tvm-ffi, ... (~6 MiB)
# Two calls on one warm machine: the first carries .fa4a and unpacks it into /tmp/fa4site (kept while the machine
# is), the second carries .fa4b and runs scripts/fa4_bench.sh. Versions: those of anchors.md's
# flash-attn-4 figures (4.0.0b36), with the cutlass-dsl release it was published against.
set -euo pipefail
cd "$(dirname "$0")/.."
FA4=${FA4:-flash-attn-4==4.0.0b36}
DSL=${DSL:-4.8.1}
grep -qx '/.fa4\*/' .git/info/exclude 2>/dev/null || echo '/.fa4*/' >> .git/info/exclude
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=" --platform $p"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d "$work/whl" "$FA4" "nvidia-cutlass-dsl-libs-base==$DSL" "nvidia-cutlass-dsl-libs-core==$DSL" \
    "nvidia-cutlass-dsl-libs-cu13==$DSL" quack-kernels apache-tvm-ffi torch-c-dlpack-ext
mkdir -p "$work/a" "$work/b" .fa4a .fa4b
for w in "$work"/whl/*.whl; do
    case "$(basename "$w")" in
        nvidia_cutlass_dsl_libs_cu13-*) unzip -q -o "$w" -d "$work/a" ;;
        *) unzip -q -o "$w" -d "$work/b" ;;
    esac
done
tar -C "$work/a" -cf - . | xz -9e -T0 > .fa4a/cu13.tar.xz
tar -C "$work/b" -cf - . | xz -9 -T0 > .fa4b/rest.tar.xz
ls -l .fa4a .fa4b
