"""Host (CPU) time of one flash256 call on the GPU, and where it goes (device call helper).

    python scripts/host_overhead.py

1. A tiny problem (1 x 128 tokens, 8 heads, d=256) whose kernels take a few microseconds: the wall time
   of 200 queued calls over 200 is the host's cost per call (forward under no_grad, and backward).
2. cProfile of those calls: the 15 functions with the most own time.
3. The bench's causal 1k d=256 forward cell (batch 32) timed three ways in one process: the bench's
   Timer, triton's do_bench, and a CUDA graph replay (no host work at all).
"""
import cProfile
import pstats
import time

import torch
import triton

import flash256
from flash256.bench.timing import Timer


def per_call_ms(fn, n=200):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / n


def tiny(causal):
    q, k, v = (torch.randn(1, 128, 8, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = flash256.flash_attn_func(q, k, v, causal=causal)
    dout = torch.randn_like(out)

    def fwd():
        with torch.no_grad():
            flash256.flash_attn_func(q, k, v, causal=causal)

    def bwd():
        torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
    return fwd, bwd


def main():
    for causal in (False, True):
        fwd, bwd = tiny(causal)
        print(f"tiny causal={causal}: host ms per call: forward {per_call_ms(fwd):.3f}, "
              f"backward {per_call_ms(bwd):.3f}", flush=True)
    fwd, bwd = tiny(True)
    for name, fn in (("forward", fwd), ("backward", bwd)):
        prof = cProfile.Profile()
        prof.enable()
        per_call_ms(fn)
        prof.disable()
        print(f"\n## cProfile, 201 tiny causal {name} calls, by own time")
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)

    q, k, v = (torch.randn(32, 1024, 8, 256, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for causal in (False, True):
        fn = lambda: flash256.flash_attn_func(q, k, v, causal=causal)  # noqa: E731
        fn()
        timer_ms = Timer("cuda").measure(fn, 25, 100).median_ms
        bench_ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph_ms = triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
        host_ms = per_call_ms(fn, 50)
        print(f"32x1k d=256 causal={causal} forward ms: bench Timer {timer_ms:.3f}, do_bench {bench_ms:.3f}, "
              f"graph replay {graph_ms:.3f}, back-to-back calls {host_ms:.3f}", flush=True)


if __name__ == "__main__":
    main()
