"""GPU check for the sm90 Gluon forward: correctness against float32 torch, then timings vs cuDNN.

    python flash256/kernels/_sm90_fwd_check.py correctness
    python flash256/kernels/_sm90_fwd_check.py timing      (d=256; timing128: d=128, 4k and 16k)

Correctness rule per case: max|out - ref32| <= 2 * max|ref_lowp - ref32| + 1e-5, where ref_lowp is the
same attention computed by torch in the input dtype; lse error is reported against float32.
Timing: bf16, d=256, 8 heads, batch = 32768 // seqlen, TFLOP/s = 4 b h s s d / t (causal: half),
triton.testing.do_bench medians; cuDNN through torch SDPA in the same process.
"""
import dataclasses
import math
import sys
import traceback

import torch
import torch.nn.functional as F
import triton

from flash256.kernels import sm90_fwd as sm90


def reference(q, k, v, scale, causal, dtype):
    """Attention in `dtype` (float32 for the reference; the input dtype for the low-precision bound)."""
    q, k, v = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # (B, H, S, D)
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * scale
    sq, sk = q.shape[2], k.shape[2]
    if causal:
        i = torch.arange(sq, device=q.device)[:, None]
        j = torch.arange(sk, device=q.device)[None, :]
        scores = scores.masked_fill(j > i + (sk - sq), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    p = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    out = (p.to(dtype) @ v).float()
    return out.transpose(1, 2), lse


def lazy(d, threshold=8.0):
    return dataclasses.replace(sm90.CONFIGS[d], rescale_threshold=threshold)


# name -> (scheduler, config override); timed side by side
VARIANTS = {"single": ("single", None), "lazy8": ("single", "lazy"), "static": ("static", None),
            "dynamic": ("dynamic", None)}


def correctness():
    torch.manual_seed(0)
    cases = []
    for d in (64, 128, 256):
        for causal in (False, True):
            for (b, sq, sk, h, hkv) in ((2, 113, 113, 4, 4), (1, 1000, 1000, 4, 2), (1, 4224, 4224, 2, 2),
                                        (2, 1000, 113, 2, 1), (2, 113, 1000, 4, 4), (1, 1, 300, 2, 2)):
                cases.append((d, causal, b, sq, sk, h, hkv, torch.bfloat16, "single"))
    cases.append((128, True, 2, 777, 777, 4, 4, torch.float16, "single"))
    cases.append((256, False, 2, 777, 777, 4, 4, torch.float16, "single"))
    for sched in ("static", "dynamic"):
        for d, causal in ((256, False), (256, True), (64, True)):
            cases.append((d, causal, 3, 1000, 1000, 4, 2, torch.bfloat16, sched))
    for d in (256, 128):
        for causal in (False, True):
            for (b, sq, sk) in ((1, 4224, 4224), (2, 1000, 113)):
                cases.append((d, causal, b, sq, sk, 4, 2, torch.bfloat16, "lazy8"))
    failures = 0
    print("d causal    b    sq    sk  h hkv dtype  sched    err       err_lowp  lse_err   ok")
    for (d, causal, b, sq, sk, h, hkv, dtype, sched) in cases:
        try:
            q = torch.randn(b, sq, h, d, device="cuda", dtype=dtype)
            k = torch.randn(b, sk, hkv, d, device="cuda", dtype=dtype)
            v = torch.randn(b, sk, hkv, d, device="cuda", dtype=dtype)
            if d == 128 and not causal:
                # strided q: a slice of a packed (b, s, 3, h, d) tensor
                q = torch.randn(b, sq, 3, h, d, device="cuda", dtype=dtype)[:, :, 1]
            scale = 1.0 / math.sqrt(d)
            if sched == "lazy8":
                out, lse = sm90.sm90_forward(q, k, v, scale, causal, config=lazy(d))
            else:
                out, lse = sm90.sm90_forward(q, k, v, scale, causal, scheduler=sched)
            torch.cuda.synchronize()
            lse = lse.reshape(h, b, sq).transpose(0, 1)  # (h, b*sq) -> (b, h, sq)
            ref, ref_lse = reference(q, k, v, scale, causal, torch.float32)
            low, _ = reference(q, k, v, scale, causal, dtype)
            err = (out.float() - ref).abs().max().item()
            err_low = (low - ref).abs().max().item()
            finite = torch.isfinite(ref_lse)
            lse_inf_ok = bool(torch.equal(torch.isinf(lse) & (lse < 0), ~finite))
            lse_err = (lse[finite] - ref_lse[finite]).abs().max().item() if finite.any() else 0.0
            ok = (err <= 2 * err_low + 1e-5 and lse_inf_ok and lse_err < 1e-3
                  and out.shape == q.shape and out.is_contiguous() and lse.shape == (b, h, sq))
            failures += not ok
            print(f"{d:3d} {causal!s:5} {b:4d} {sq:5d} {sk:5d} {h:2d} {hkv:3d} {str(dtype)[6:]:8} {sched:8}"
                  f" {err:.3e} {err_low:.3e} {lse_err:.3e} {'OK' if ok else 'FAIL'}", flush=True)
        except Exception:
            failures += 1
            print(f"{d} {causal} {b} {sq} {sk} {h} {hkv} {dtype} {sched} EXCEPTION", flush=True)
            traceback.print_exc()
    print(f"correctness: {len(cases) - failures}/{len(cases)} passed", flush=True)


def timing(d=256, seqlens=(1024, 2048, 4096, 8192, 16384), variants=tuple(VARIANTS)):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    h = 2048 // d
    schedulers = variants
    rows = []
    for causal in (False, True):
        for s in seqlens:
            b = 32768 // s
            q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            scale = 1.0 / math.sqrt(d)
            flops = 4 * b * h * s * s * d / (2 if causal else 1)
            row = {"causal": causal, "s": s}
            for sched in schedulers:
                sched_name, cfg = VARIANTS[sched]
                cfg = lazy(d) if cfg == "lazy" else None
                try:
                    ms = triton.testing.do_bench(
                        lambda: sm90.sm90_forward(q, k, v, scale, causal, scheduler=sched_name, config=cfg),
                        warmup=25, rep=100)
                    row[sched] = flops / ms / 1e9
                except Exception as e:
                    row[sched] = float("nan")
                    print(f"{sched} s={s} causal={causal}: {e!r}", flush=True)
            qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                ms = triton.testing.do_bench(
                    lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale),
                    warmup=25, rep=100)
            row["cudnn"] = flops / ms / 1e9
            print(row, flush=True)
            rows.append(row)
            del q, k, v, qt, kt, vt
    print(f"\nTFLOP/s, {torch.cuda.get_device_name()}, bf16 d={d} h={h} batch=32768//seqlen")
    print("causal seqlen " + " ".join(f"{x:>8}" for x in schedulers) + "    cudnn  best/cudnn")
    for r in rows:
        best = max(r[x] for x in schedulers)
        print(f"{r['causal']!s:6} {r['s']:6d} " + " ".join(f"{r[x]:8.1f}" for x in schedulers)
              + f" {r['cudnn']:8.1f}  {best / r['cudnn']:.3f}")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "correctness"
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    if mode == "correctness":
        correctness()
    elif mode == "timing128":
        timing(d=128, seqlens=(4096, 16384), variants=("single", "lazy8"))
    else:
        timing()
