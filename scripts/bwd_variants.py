"""A/B timing of sm90 backward dK/dV configuration variants in one process (device call helper).

    python scripts/bwd_variants.py default rs_first=0 qdo_stages=1

A variant is `default` or comma-separated `field=int` overrides of every Sm90BwdDkdvConfig.

For each variant: a correctness check against the fp32 reference (d=256, GQA 2:1, seqlens 1000/1000,
causal and not), then the median backward time at d=256 (8 heads, 32k tokens, seqlen 4k and 16k) and d=128
(16 heads, 8k), causal and not, and cuDNN's in the same process. TFLOP/s = 2.5 x forward FLOPs / time.
"""
import dataclasses
import sys

import torch
import triton

import flash256
from flash256.kernels import sm90_bwd
from flash256.testing import accuracy_check, reference_results


def backward_ms(fn, q, k, v, dout):
    out = fn(q, k, v)
    return triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True),
                                   warmup=50, rep=300, return_mode="median")


def check(causal):
    torch.manual_seed(3)
    q = torch.randn(2, 1000, 4, 256, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(2, 1000, 2, 256, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    dout = torch.randn_like(q)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash256.flash_attn_func(*leaves, causal=causal)
    grads = torch.autograd.grad(out, leaves, dout)
    ref32, reflow = reference_results(q, k, v, dout, causal=causal)
    results = [accuracy_check(n, x, ref32[n], reflow[n]) for n, x in zip(("dq", "dk", "dv"), grads)]
    return all(ok for ok, _ in results), "; ".join(m for _, m in results)


def main(variants):
    rows = []
    cases = [(256, c, s) for c in (False, True) for s in (4096, 16384)] + [(128, c, 8192) for c in (False, True)]
    shipped = dict(sm90_bwd.DKDV_CONFIGS)
    for variant in variants:
        overrides = {} if variant == "default" else {
            key: type(getattr(shipped[256], key))(int(value))
            for key, value in (item.split("=") for item in variant.split(","))}
        sm90_bwd.DKDV_CONFIGS.update({d: dataclasses.replace(cfg, **overrides) for d, cfg in shipped.items()})
        for causal in (False, True):
            ok, msg = check(causal)
            print(f"{variant} causal={causal}: {'ok' if ok else 'FAIL'} {msg}", flush=True)
        for d, causal, seqlen in cases:
            q, k, v = (torch.randn(32768 // seqlen, seqlen, 2048 // d, d, device="cuda", dtype=torch.bfloat16,
                                   requires_grad=True) for _ in range(3))
            dout = torch.randn_like(q)
            ms = backward_ms(lambda a, b, c: flash256.flash_attn_func(a, b, c, causal=causal), q, k, v, dout)
            flops = 2.5 * 4 * q.shape[0] * 2048 * seqlen * seqlen / (2 if causal else 1)
            rows.append((variant, d, causal, seqlen, ms, flops / ms / 1e9))
            print(rows[-1], flush=True)
    for d, causal, seqlen in cases:
        q, k, v = (torch.randn(32768 // seqlen, 2048 // d, seqlen, d, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        dout = torch.randn_like(q)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            ms = backward_ms(lambda a, b, c: torch.nn.functional.scaled_dot_product_attention(
                a, b, c, is_causal=causal), q, k, v, dout)
        flops = 2.5 * 4 * q.shape[0] * 2048 * seqlen * seqlen / (2 if causal else 1)
        rows.append(("cudnn", d, causal, seqlen, ms, flops / ms / 1e9))
    print("\n| variant | d | causal | seqlen | ms | TFLOP/s |\n|---|---|---|---|---|---|")
    for variant, d, causal, seqlen, ms, tflops in rows:
        print(f"| {variant} | {d} | {int(causal)} | {seqlen} | {ms:.3f} | {tflops:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["default", "rs_first=0"])
