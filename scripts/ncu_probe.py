"""Run one attention case a few times, for Nsight Compute (`scripts/ncu_stalls.sh` wraps it).

    python scripts/ncu_probe.py fwd 256 16384 0 [exp2_eighths]
    BACKEND=fa4 python scripts/ncu_probe.py bwd 128 8192 0

The bench's shapes (2048 // d heads, batch = 32768 // seqlen, bf16) through a bench backend: BACKEND (default
flash256, the default dispatch; also sdpa-cudnn, fa4, ...: `python -m flash256.bench --list-backends`), with
exp2_eighths as flash256:exp2=K. Three calls: the first compiles, so profile with `--launch-skip 1 --launch-count 1`
and a kernel-name filter; the third runs between cudaProfilerStart and cudaProfilerStop, for backends whose kernel
names are not known beforehand (`--profile-from-start off`: every kernel of that call). Not an NVTX range: NVTX
ranges belong to one thread, and autograd launches the backward's kernels from its own device thread, so a range
around the call holds only the forward's kernels.
"""
import os
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from flash256.bench.backends import get_backend  # noqa: E402
from flash256.bench.records import Shape  # noqa: E402


def main(direction, d, seqlen, causal, eighths=0, backend=None):
    backend = backend or os.environ.get("BACKEND", "flash256")
    torch.manual_seed(0)
    heads = 2048 // d
    shape = Shape(max(1, 32768 // seqlen), seqlen, seqlen, heads, heads, d, causal, "bf16")
    q, k, v = (torch.randn((shape.batch, seqlen, heads, d), device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    forward = get_backend(f"{backend}:exp2={eighths}" if eighths else backend).build(q, k, v, shape, False)
    for call in range(3):
        if call == 2:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
        out = forward()
        if direction == "bwd":
            torch.autograd.grad(out, (q, k, v), torch.ones_like(out) * 0.01)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    direction, d, seqlen, causal, *rest = sys.argv[1:]
    main(direction, int(d), int(seqlen), bool(int(causal)), *(int(x) for x in rest))
