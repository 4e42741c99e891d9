"""Run one attention case a few times, for Nsight Compute (`scripts/ncu_stalls.sh` wraps it).

    python scripts/ncu_probe.py fwd 256 16384 0 [exp2_eighths]
    python scripts/ncu_probe.py bwd 256 16384 1

8 heads at d=256 (2048 // d heads), batch = 32768 // seqlen, bf16, the default dispatch. Three calls:
the first compiles, so profile with `--launch-skip 1 --launch-count 1` and a kernel-name filter.
"""
import sys

import torch

import flash256


def main(direction, d, seqlen, causal, eighths=0):
    torch.manual_seed(0)
    shape = (max(1, 32768 // seqlen), seqlen, 2048 // d, d)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    for _ in range(3):
        out = flash256.flash_attn_func(q, k, v, causal=causal, exp2_poly_fraction=eighths / 8)
        if direction == "bwd":
            torch.autograd.grad(out, (q, k, v), torch.ones_like(out) * 0.01)
    torch.cuda.synchronize()


if __name__ == "__main__":
    direction, d, seqlen, causal, *rest = sys.argv[1:]
    main(direction, int(d), int(seqlen), bool(int(causal)), *(int(x) for x in rest))
