"""GPU check for the sm90 Gluon backward through the public API, in one device call.

    python scripts/sm90_bwd_check.py correctness     # every (d, causal, dtype) in its own process, in parallel
    python scripts/sm90_bwd_check.py combo 256 1 bf16
    python scripts/sm90_bwd_check.py features 256 bf16   # sliding windows and soft caps
    python scripts/sm90_bwd_check.py profile [d]     # CUDA time per backward kernel (d=256), 1k, 4k and 16k

Each case runs flash256.attention (auto dispatch: the Gluon forward where it applies, the Gluon
backward) under autograd and asserts that auto picked the sm90 backward. Rule per tensor x in (out, dq,
dk, dv): max|x - ref32| <= 2 * max|x_lowp - ref32| + 1e-5, ref32 the reference in fp32 and x_lowp the
same math in the input dtype; (113, 203) also sends a gradient through lse. With one key (sk = 1) dK is
exactly 0 in both references, so dK is bounded by 1e-4 instead (as in tests/test_attention.py).
The combos run in parallel processes (their Gluon compiles dominate) under a timeout, so a deadlocked
kernel shows as HANG instead of eating the device call. Bit-identical reruns: `pytest -k deterministic`;
timing: `python -m flash256.bench`.
"""
import math
import os
import subprocess
import sys
import time
import traceback

import torch

SEQLENS = ((1, 1), (64, 1), (113, 203), (128, 217), (255, 256), (1024, 1024), (4224, 4224))
NHEADS = 6
KV_HEADS = (6, 3, 1)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMBO_TIMEOUT_S = float(os.environ.get("COMBO_TIMEOUT_S", 150))
DEVICE, EXPECTED = "cuda", "sm90"  # a CPU dry run of the script's own logic sets "cpu", "portable"


def check_case(d, causal, dtype, sq, sk, hkv, with_dlse, window=(-1, -1), softcap=0.0, with_sink=False):
    import flash256
    from flash256 import dispatch
    from flash256.reference import attention_ref
    from flash256.testing import accuracy_check, reference_results
    torch.manual_seed(1000 * d + sq + 7 * sk + hkv)
    batch = 2 if sq * sk <= 1024 * 1024 else 1
    q, k, v = (torch.randn(batch, s, h, d, device=DEVICE, dtype=dtype)
               for s, h in ((sq, NHEADS), (sk, hkv), (sk, hkv)))
    dout = torch.randn(batch, sq, NHEADS, d, device=DEVICE, dtype=dtype)
    dlse = torch.randn(batch, NHEADS, sq, device=DEVICE) if with_dlse else None
    if softcap:
        q = q * 3  # large scores, so the cap really bends them
    sink = torch.randn(NHEADS, device=DEVICE) * 2 if with_sink else None
    args = dispatch.AttentionArgs(1 / math.sqrt(d), causal, window, softcap, sink, None, None, sq, sk, False)
    assert dispatch.select("backward", q, args).name == EXPECTED, "auto did not pick the sm90 backward"
    if sq > 1:
        assert dispatch.select("forward", q, args).name == EXPECTED, "auto did not pick the sm90 forward"

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    sink_leaf = [sink.clone().requires_grad_()] if with_sink else []
    out, lse = flash256.attention(*leaves, causal=causal, window_size=window, softcap=softcap, return_lse=True,
                                  learnable_sink=sink_leaf[0] if with_sink else None)
    outputs, grad_outputs = ([out, lse], [dout, dlse]) if with_dlse else ([out], [dout])
    grads = torch.autograd.grad(outputs, leaves + sink_leaf, grad_outputs)
    actual = dict(zip(("out", "dq", "dk", "dv"), (out.detach(), *grads[:3])))
    options = dict(causal=causal, window_size=window, softcap=softcap)
    ref32, reflow = reference_results(q, k, v, dout, dlse, **options, **({"learnable_sink": sink} if with_sink else {}))
    ok, details = True, []
    for name, x in actual.items():
        if name == "dk" and sk == 1:
            err = x.float().abs().max().item()
            good, message = err < 1e-4, f"dk: |dk| {err:.1e} (exactly 0 in the references)"
        else:
            good, message = accuracy_check(name, x, ref32[name], reflow[name])
        ok &= good
        details.append(message + ("" if good else " FAIL"))
    if with_sink:  # no low-precision twin for the sink gradient: a relative bound, as in tests/test_features.py
        ref_leaves = [t.clone().requires_grad_() for t in (q, k, v, sink)]
        ref_out, _ = attention_ref(*ref_leaves[:3], learnable_sink=ref_leaves[3], upcast=True, **options)
        ref_dsink = torch.autograd.grad(ref_out, ref_leaves[3], dout)[0]
        err = (grads[3] - ref_dsink).abs().max().item()
        good = err <= 1e-2 * ref_dsink.abs().max().item() + 1e-4
        ok &= good
        details.append(f"dsink: {err:.1e}" + ("" if good else " FAIL"))
    return ok, "; ".join(details)


def combo(d, causal, dtype_name):
    """All seqlen pairs of one (d, causal, dtype): one set of kernel compiles."""
    dtype = DTYPES[dtype_name]
    passed = 0
    for i, (sq, sk) in enumerate(SEQLENS):
        hkv = KV_HEADS[(i + d // 64) % len(KV_HEADS)]
        with_dlse = (sq, sk) == (113, 203)
        tag = f"d={d} causal={int(causal)} {dtype_name} sq={sq} sk={sk} hkv={hkv}{' +dlse' if with_dlse else ''}"
        try:
            ok, detail = check_case(d, causal, dtype, sq, sk, hkv, with_dlse)
        except Exception:
            ok, detail = False, "EXCEPTION " + traceback.format_exc(limit=4).replace("\n", " | ")[-700:]
        passed += ok
        print(f"{'ok  ' if ok else 'FAIL'} {tag}: {detail}", flush=True)
    print(f"combo d={d} causal={int(causal)} {dtype_name}: {passed}/{len(SEQLENS)} passed", flush=True)


# (causal, window, softcap, sink): the model features the fast path covers, alone and combined
FEATURES = ((False, (16, 0), 0.0, False), (False, (32, 8), 0.0, False), (True, (24, -1), 0.0, False),
            (False, (-1, 5), 0.0, False), (True, (-1, -1), 5.0, False), (False, (-1, -1), 50.0, False),
            (True, (64, 0), 30.0, False), (True, (200, 0), 0.0, False), (False, (-1, -1), 0.0, True),
            (True, (-1, -1), 0.0, True), (True, (128, 0), 20.0, True))
FEATURE_SEQLENS = ((113, 203), (255, 256), (1024, 1024), (300, 113), (777, 1500))


def sinks_on_fast_path():
    from flash256 import dispatch
    q = torch.empty(1, 8, NHEADS, 256, device=DEVICE, dtype=torch.bfloat16)
    args = dispatch.AttentionArgs(0.1, False, (-1, -1), 0.0, torch.zeros(NHEADS, device=DEVICE), None, None, 8, 8,
                                  False)
    return dispatch.select("forward", q, args).name == EXPECTED


def features(d, dtype_name):
    """Window / softcap / sink cases of one head dim through the public API (sm90 both ways)."""
    dtype, passed, total = DTYPES[dtype_name], 0, 0
    for fi, (causal, window, softcap, with_sink) in enumerate(FEATURES):
        for si, (sq, sk) in enumerate(FEATURE_SEQLENS):
            hkv = KV_HEADS[(fi + si) % len(KV_HEADS)]
            tag = (f"d={d} {dtype_name} causal={int(causal)} window={window} softcap={softcap} sink={int(with_sink)} "
                   f"sq={sq} sk={sk} hkv={hkv}")
            if with_sink and not sinks_on_fast_path():
                print(f"skip {tag}: dispatch.py keeps sinks on the portable kernels", flush=True)
                continue
            try:
                ok, detail = check_case(d, causal, dtype, sq, sk, hkv, False, window, softcap, with_sink)
            except Exception:
                ok, detail = False, "EXCEPTION " + traceback.format_exc(limit=4).replace("\n", " | ")[-700:]
            passed, total = passed + ok, total + 1
            print(f"{'ok  ' if ok else 'FAIL'} {tag}: {detail}", flush=True)
    print(f"combo features d={d} {dtype_name}: {passed}/{total} passed", flush=True)


def correctness():
    t0 = time.time()
    combos = [("combo", d, c, n) for d in (256, 128, 64) for c in (0, 1) for n in DTYPES]
    combos += [("features", d, "bf16") for d in (256, 128, 64)] + [("features", 256, "fp16")]
    procs = [(spec, subprocess.Popen([sys.executable, __file__, *map(str, spec)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
             for spec in combos]
    summary = []
    for spec, proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, COMBO_TIMEOUT_S - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            out += f"\nHANG {' '.join(map(str, spec))}: killed after {COMBO_TIMEOUT_S:.0f} s\n"
        print(out, end="", flush=True)
        summary += [line for line in out.splitlines() if line.startswith(("combo", "HANG"))]
    print(f"\n## correctness ({time.time() - t0:.0f} s)")
    print("\n".join(summary))


def _tiles(seqlen, causal, block_q, block_k):
    """(query block, key block) pairs a kernel with these blocks computes per head, diagonal blocks whole."""
    n_q = -(-seqlen // block_q)
    if not causal:
        return n_q * -(-seqlen // block_k)
    return sum(-(-min(seqlen, (m + 1) * block_q) // block_k) for m in range(n_q))


def profile(head_dim=256):
    """CUDA time of each kernel of the default backward (delta, dK/dV, dQ) from torch.profiler; bench shapes
    (32k tokens, 2048 // head_dim heads). Each shape is warmed up for 1 s first (the board's power-capped clock
    settles within ~0.25 s, NOTES.md), causal and not back to back per seqlen; the last column divides each
    kernel's time by its (query block, key block) pairs: SM-microseconds per pair, comparable across shapes."""
    import time

    import flash256
    from flash256.kernels.sm90_bwd import DKDV_CONFIGS, DQ_CONFIGS
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    kv_cfg, dq_cfg = DKDV_CONFIGS[head_dim], DQ_CONFIGS[head_dim]
    for seqlen in (1024, 4096, 16384):
        for causal in (False, True):
            torch.manual_seed(0)
            heads = (32768 // seqlen) * (2048 // head_dim)
            q, k, v = (torch.randn(32768 // seqlen, seqlen, 2048 // head_dim, head_dim, device="cuda",
                                   dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            out = flash256.flash_attn_func(q, k, v, causal=causal)
            dout = torch.randn_like(out)
            call = lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)  # noqa: E731
            call()
            torch.cuda.synchronize()
            t_end = time.perf_counter() + 1.0
            while time.perf_counter() < t_end:
                call()
                torch.cuda.synchronize()
            with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    call()
                torch.cuda.synchronize()
            pairs = {"dkdv": heads * _tiles(seqlen, causal, kv_cfg.block_m, kv_cfg.block_n),
                     "dq": heads * _tiles(seqlen, causal, dq_cfg.block_m, dq_cfg.block_n)}
            print(f"## backward kernels, d={head_dim} seqlen={seqlen} causal={causal}: CUDA ms per call"
                  f" (SM-us per block pair)")
            for event in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:4]:
                ms = event.device_time_total / 10e3
                kind = "dkdv" if "dkdv" in event.key else "dq" if "_dq_" in event.key else None
                per_pair = f"  ({ms * 1e3 * sms / pairs[kind]:.3f})" if kind else ""
                print(f"  {ms:8.3f}{per_pair}  {event.key[:80]}")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "correctness"
    if what == "combo":
        combo(int(sys.argv[2]), bool(int(sys.argv[3])), sys.argv[4])
    elif what == "features":
        features(int(sys.argv[2]), sys.argv[3])
    elif what == "profile":
        profile(*map(int, sys.argv[2:3]))
    else:
        print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
        correctness()
