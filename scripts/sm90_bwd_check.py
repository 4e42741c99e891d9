"""GPU check for the sm90 Gluon backward (flash256/kernels/sm90_bwd.py), in one run.

    python scripts/sm90_bwd_check.py            # correctness, determinism, timing
    python scripts/sm90_bwd_check.py correctness
    python scripts/sm90_bwd_check.py timing

Correctness rule per gradient x in (dq, dk, dv): max|x - ref32| <= 2 * max|x_lowp - ref32| + 1e-5, where
ref32 is torch autograd through flash256.reference.attention_ref in float32 and x_lowp the same in the input
dtype. out/lse come from flash256's portable forward. Determinism: two runs must be bit-identical.
Timing: backward alone (delta preprocessing + dK/dV kernel + dQ kernel), bf16, d=256, 8 heads,
batch = 32768 // seqlen, TFLOP/s = 2.5 * 4 b h s s d / t (causal: half); cuDNN = torch SDPA
CUDNN_ATTENTION backward in the same process. The compact table is printed last.
"""
import math
import sys
import time
import traceback

import torch
import torch.nn.functional as F
import triton

import flash256
from flash256.dispatch import AttentionArgs
from flash256.kernels import sm90_bwd
from flash256.reference import attention_ref

SEQLENS = ((1, 1), (64, 1), (113, 203), (128, 217), (255, 256), (1024, 1024), (4224, 4224))
NHEADS = 6
KV_HEADS = (6, 3, 1)


def args_for(q, k, causal, scale):
    return AttentionArgs(softmax_scale=scale, causal=causal, window=(-1, -1), softcap=0.0, sink=None,
                         cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=q.shape[1],
                         max_seqlen_k=k.shape[1], deterministic=True)


def forward_lse(q, k, v, causal, scale):
    """out and lse in the backward's (h, b*s) layout, from the portable forward."""
    out, lse = flash256.attention(q, k, v, softmax_scale=scale, causal=causal, return_lse=True,
                                  backend="portable")
    return out, lse.transpose(0, 1).reshape(q.shape[2], -1).contiguous()


def reference_grads(q, k, v, dout, dlse, causal, scale, upcast):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse = attention_ref(*leaves, softmax_scale=scale, causal=causal, upcast=upcast)
    loss = (out.float() * dout.float()).sum()
    if dlse is not None:
        loss = loss + (lse.float() * dlse).sum()
    loss.backward()
    return [t.grad.float() for t in leaves]


def check_case(d, causal, dtype, sq, sk, hkv, with_dlse):
    torch.manual_seed(1000 * d + sq + 7 * sk + hkv)
    batch = 2 if sq * sk <= 1024 * 1024 else 1
    q = torch.randn(batch, sq, NHEADS, d, device="cuda", dtype=dtype)
    k = torch.randn(batch, sk, hkv, d, device="cuda", dtype=dtype)
    v = torch.randn(batch, sk, hkv, d, device="cuda", dtype=dtype)
    dout = torch.randn(batch, sq, NHEADS, d, device="cuda", dtype=dtype)
    scale = 1.0 / math.sqrt(d)
    out, lse = forward_lse(q, k, v, causal, scale)
    dlse_bhs = torch.randn(batch, NHEADS, sq, device="cuda") if with_dlse else None
    dlse = dlse_bhs.transpose(0, 1).reshape(NHEADS, -1).contiguous() if with_dlse else None
    dq, dk, dv, _ = sm90_bwd.sm90_backward(dout, q, k, v, out, lse, dlse, args_for(q, k, causal, scale))
    torch.cuda.synchronize()
    ref32 = reference_grads(q, k, v, dout, dlse_bhs, causal, scale, upcast=True)
    reflow = reference_grads(q, k, v, dout, dlse_bhs, causal, scale, upcast=False)
    worst = []
    ok = True
    for name, x, r32, rlo in zip(("dq", "dk", "dv"), (dq, dk, dv), ref32, reflow):
        err = (x.float() - r32).abs().max().item()
        bound = 2 * (rlo - r32).abs().max().item() + 1e-5
        good = math.isfinite(err) and err <= bound
        ok &= good
        worst.append(f"{name} {err:.2e}/{bound:.2e}{'' if good else ' FAIL'}")
    return ok, "  ".join(worst)


def correctness():
    cases = []
    i = 0
    for d in (256, 128, 64):
        for causal in (False, True):
            for dtype in (torch.bfloat16, torch.float16):
                for sq, sk in SEQLENS:
                    hkv = KV_HEADS[i % len(KV_HEADS)]
                    i += 1
                    cases.append((d, causal, dtype, sq, sk, hkv, (sq, sk) == (113, 203)))
    passed, failed = 0, []
    t0 = time.time()
    for case in cases:
        d, causal, dtype, sq, sk, hkv, with_dlse = case
        tag = (f"d={d} causal={int(causal)} {str(dtype)[6:]} sq={sq} sk={sk} hkv={hkv}"
               f"{' dlse' if with_dlse else ''}")
        try:
            ok, detail = check_case(*case)
        except Exception:
            ok, detail = False, "EXCEPTION " + traceback.format_exc(limit=3).replace("\n", " | ")[-600:]
        print(f"{'ok  ' if ok else 'FAIL'} {tag}: {detail}", flush=True)
        if ok:
            passed += 1
        else:
            failed.append(tag)
    print(f"correctness: {passed}/{len(cases)} passed in {time.time() - t0:.0f} s", flush=True)
    return passed, len(cases), failed


def determinism():
    torch.manual_seed(0)
    q = torch.randn(2, 1024, 6, 256, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 1024, 1, 256, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    dout = torch.randn_like(q)
    scale = 1 / 16
    results = []
    for causal in (False, True):
        out, lse = forward_lse(q, k, v, causal, scale)
        args = args_for(q, k, causal, scale)
        first = sm90_bwd.sm90_backward(dout, q, k, v, out, lse, None, args)[:3]
        second = sm90_bwd.sm90_backward(dout, q, k, v, out, lse, None, args)[:3]
        same = all(torch.equal(a, b) for a, b in zip(first, second))
        results.append(same)
        print(f"determinism causal={causal}: {'bit-identical' if same else 'DIFFERENT'}", flush=True)
    return all(results)


def tflops(batch, heads, seqlen, d, causal, ms):
    flops = 2.5 * 4 * batch * heads * seqlen * seqlen * d / (2 if causal else 1)
    return flops / (ms * 1e-3) / 1e12


def timing():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    rows = []
    d, heads = 256, 8
    for causal in (False, True):
        for seqlen in (1024, 2048, 4096, 8192, 16384):
            batch = 32768 // seqlen
            torch.manual_seed(0)
            q = torch.randn(batch, seqlen, heads, d, device="cuda", dtype=torch.bfloat16)
            k, v, dout = torch.randn_like(q), torch.randn_like(q), torch.randn_like(q)
            scale = 1 / math.sqrt(d)
            out, lse = flash256.attention(q, k, v, softmax_scale=scale, causal=causal, return_lse=True)
            lse = lse.transpose(0, 1).reshape(heads, -1).contiguous()
            args = args_for(q, k, causal, scale)
            ours = triton.testing.do_bench(lambda: sm90_bwd.sm90_backward(dout, q, k, v, out, lse, None, args),
                                           warmup=100, rep=500)
            qt, kt, vt = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v))
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                ref_out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale)
            dout_t = dout.transpose(1, 2)
            cudnn = triton.testing.do_bench(
                lambda: torch.autograd.grad(ref_out, (qt, kt, vt), dout_t, retain_graph=True),
                warmup=100, rep=500)
            row = (causal, seqlen, tflops(batch, heads, seqlen, d, causal, ours),
                   tflops(batch, heads, seqlen, d, causal, cudnn), ours, cudnn)
            rows.append(row)
            print(f"timing causal={int(causal)} s={seqlen}: sm90 {row[2]:.1f} TFLOP/s ({ours:.3f} ms), "
                  f"cuDNN {row[3]:.1f} ({cudnn:.3f} ms)", flush=True)
            del q, k, v, dout, out, lse, qt, kt, vt, ref_out
            torch.cuda.empty_cache()
    return rows


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    summary = []
    if what in ("all", "correctness"):
        passed, total, failed = correctness()
        summary.append(f"correctness {passed}/{total}" + (f"; failed: {failed[:12]}" if failed else ""))
        summary.append(f"determinism {'ok' if determinism() else 'FAILED'}")
    rows = timing() if what in ("all", "timing") else []
    print("\n## sm90 backward, bf16 d=256 8 heads, TFLOP/s (backward only)")
    for line in summary:
        print(line)
    if rows:
        print("| causal | seqlen | sm90 | cuDNN | sm90/cuDNN |")
        print("|---|---|---|---|---|")
        for causal, seqlen, ours, cudnn, _, _ in rows:
            print(f"| {'yes' if causal else 'no'} | {seqlen // 1024}k | {ours:.1f} | {cudnn:.1f} | {ours / cudnn:.3f} |")


if __name__ == "__main__":
    main()
