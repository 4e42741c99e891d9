"""Clock and power while each backend runs (device call helper): is a kernel power-limited?

    python scripts/power_probe.py
    python scripts/power_probe.py --matmul  # the cuBLAS ceiling at the sustained clock, beside the d=256 forward
    python scripts/power_probe.py --long    # is the 128k forward's drop the kernel's or the longer warm run's?

d=256, bf16, 8 heads, 32k tokens, 4k and 16k, causal and not, forward and backward, flash256 and cuDNN
(torch SDPA) in one process: TFLOP/s (do_bench median), then the mean SM clock and board power that
nvidia-smi reports while the same call runs back to back for 3 s. The H200 caps board power at 700 W;
a kernel at the cap runs below the 1980 MHz boost clock.

--matmul: a plain bf16 cuBLAS matmul (torch.matmul, M = N = K = 4096 / 8192 / 16384) timed as the bench times
attention (flash256.bench's Timer: L2 flushed before each call, 250 ms warm-up, so at the power-capped sustained
clock), with the d=256 non-causal forward of flash256 and cuDNN at 16k and 32k beside it in the same process:
the practical ceiling that ../shared/anchors.md quotes (754-786 TFLOP/s) was measured in another harness, and the
800 TFLOP/s forward goal is only meaningful against the matmul rate under the same conditions.
"""
import os
import sys

import torch
import triton

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import flash256  # noqa: E402
from fwd_probe import sample_clocks  # noqa: E402
from variants import batch_size, tflops  # noqa: E402
from flash256.bench.timing import Timer  # noqa: E402


def call(backend, direction, causal, seqlen):
    shape = (batch_size(seqlen), seqlen, 8, 256)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    if backend == "cudnn":
        q, k, v = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))

        def attn(a, b, c):
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(a, b, c, is_causal=causal)
    else:
        def attn(a, b, c):
            return flash256.flash_attn_func(a, b, c, causal=causal)
    if direction == "fwd":
        def fn():
            with torch.no_grad():
                return attn(q, k, v)
        return fn
    out = attn(q, k, v)
    dout = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)


def main():
    rows = []
    for direction in ("fwd", "bwd"):
        for causal in (False, True):
            for seqlen in (4096, 16384):
                for backend in ("flash256", "cudnn"):
                    fn = call(backend, direction, causal, seqlen)
                    ms = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
                    rate = tflops(direction, 256, causal, seqlen, ms)
                    rows.append((direction, int(causal), seqlen, backend, f"{rate:.0f}", sample_clocks(fn)))
                    print(*rows[-1], flush=True)
    print("\n| dir | causal | seqlen | backend | TFLOP/s | clock, power |\n|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


def matmul_ceiling():
    timer, rows = Timer("cuda"), []
    for n in (4096, 8192, 16384):
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        fn = lambda a=a, b=b: torch.matmul(a, b)  # noqa: E731
        fn()
        ms = timer.measure(fn, 250, 200).median_ms
        rows.append((f"cuBLAS matmul {n}^3", f"{2 * n ** 3 / ms / 1e9:.0f}", sample_clocks(fn)))
        print(*rows[-1], flush=True)
    for seqlen in (16384, 32768):
        for backend in ("flash256", "cudnn"):
            fn = call(backend, "fwd", False, seqlen)
            fn()
            ms = timer.measure(fn, 250, 200).median_ms
            rows.append((f"{backend} fwd d=256 {seqlen // 1024}k", f"{tflops('fwd', 256, False, seqlen, ms):.0f}",
                         sample_clocks(fn)))
            print(*rows[-1], flush=True)
    print("\n| call | TFLOP/s | clock, power |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def long_context(warmup_ms=2000.0):
    """--long: the d=256 non-causal forward at 32k and 128k (batch 1, 8 heads), each timed after the same 2 s of
    warm calls, so both run at the temperature and clock a 128k bench cell reaches (its calls take ~200 ms, so the
    bench's 250 ms warm-up + 3 timed calls keep the board busy ~4x longer than at 32k). flash256 with each
    scheduler, then cuDNN; 32k is timed before and after 128k to expose drift."""
    timer, rows = Timer("cuda"), []
    for backend, scheduler in (("flash256", "single"), ("flash256", "dynamic"), ("cudnn", None)):
        os.environ.pop("FLASH256_SCHEDULER", None)
        if scheduler:
            os.environ["FLASH256_SCHEDULER"] = scheduler
        for seqlen in (32768, 131072, 32768):
            fn = call(backend, "fwd", False, seqlen)
            fn()
            ms = timer.measure(fn, warmup_ms, 600).median_ms
            name = f"{backend}{'-' + scheduler if scheduler else ''} fwd {seqlen // 1024}k"
            rows.append((name, f"{tflops('fwd', 256, False, seqlen, ms):.0f}", sample_clocks(fn, 2.0)))
            print(*rows[-1], flush=True)
            del fn
            torch.cuda.empty_cache()
    os.environ.pop("FLASH256_SCHEDULER", None)
    print(f"\n| call (after {warmup_ms / 1e3:.0f} s warm) | TFLOP/s | clock, power |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    {"--matmul": matmul_ceiling, "--long": long_context}.get(" ".join(sys.argv[1:]), main)()
