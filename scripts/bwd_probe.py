"""A/B of versions of the sm90 backward in one process, timed like the bench (device call helper, issue 5).

    python scripts/bwd_probe.py [--dims 128,64] [variant ...]  variant: base | name=path/to/sm90_bwd_variant.py
                                                                | name=path/to/change.patch (applied to sm90_bwd.py)
    python scripts/bwd_probe.py --kernels [variant]  kernel timeline of 24 calls timed as the bench times them
    python scripts/bwd_probe.py --profile [variant ...]  per-kernel time and SM-us per block pair at d=256, per variant
                                                        (sm90_bwd_check.py's profile with the variant dispatched)
    Options for the timing run, in any order before the variants (one after them is an error):
    --dims 128,64: time only these head dims; --seqlens 4096,16384: only these seqlens; ROUNDS=n (environment):
             n rounds instead of 2
    --deterministic: check and time the deterministic=True backward instead
    --clocks: after timing each shape, run every variant and cuDNN back to back for 3 s more and
             report nvidia-smi's mean SM clock and board power: whether a variant that saves cycles per tile
             ran at a lower clock at the 700 W cap instead of faster (NOTES.md, seventeenth session)
    --check variant  the correctness check alone (what each variant first runs in a child process, see below)

Each variant replaces the dispatcher's sm90 backward and is checked against the fp32 reference (d 256/128/64,
causal and not, GQA 2:1, ragged seqlens) in a child process of its own, all at once, so that a kernel that hangs
(a wrong barrier count) costs CHECK_TIMEOUT_S and its own place in the table, not the run. Then every variant that
finished its check (right or wrong: a timing probe is wrong on purpose) is timed with the bench's Timer (L2 flushed
before every call, CUDA events around torch.autograd.grad) on the bench's shapes: bf16, 32k tokens, 2048 // d
heads. Per shape, all variants run on the same tensors, every variant then cuDNN, twice, so that clock drift and
memory placement hit them alike.
"""
import os
import pathlib
import subprocess
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import flash256  # noqa: E402
from flash256 import dispatch  # noqa: E402
from flash256.bench.timing import Timer  # noqa: E402
from flash256.testing import accuracy_check, reference_results  # noqa: E402
import variants  # noqa: E402  (scripts/variants.py, beside this file)
from variants import probe_module, rotated, tflops  # noqa: E402
from fwd_probe import sample_clocks  # noqa: E402  (nvidia-smi's SM clock and power while a call repeats)

SOURCE = (ROOT / "flash256/kernels/sm90_bwd.py").read_text()
DETERMINISTIC = False
CLOCKS = False
CHECK_TIMEOUT_S = 240  # room to compile every kernel the check needs, several variants at once
CASES = ([(256, c, s) for s in (1024, 4096, 16384) for c in (False, True)]
         + [(d, c, s) for d in (128, 64) for s in (2048, 8192) for c in (False, True)])


def patched_source(patch):
    """sm90_bwd.py with a unified diff (paths a/flash256/kernels/sm90_bwd.py) applied, after the ones it is
    written on top of (variants.patch_chain)."""
    return variants.patched_source("sm90_bwd.py", SOURCE, patch)


def module_for(variant):
    name, _, path = variant.partition("=")
    source = variants.variant_source("sm90_bwd.py", SOURCE, path)
    return probe_module(f"bwd_{name}", source)


def use(mod):
    dispatch.BACKWARD[:] = [impl if impl.name != "sm90" else dispatch.Implementation(
        "sm90", impl.supports, mod.sm90_backward) for impl in dispatch.BACKWARD]


def check():
    results = []
    for d, hkv, sq, sk in ((256, 2, 1000, 1000), (256, 1, 300, 777), (128, 2, 1000, 1000), (64, 4, 513, 1000)):
        for causal in (False, True):
            torch.manual_seed(d + sq)
            q = torch.randn(2, sq, 4, d, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(2, sk, hkv, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            dout = torch.randn_like(q)
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out = flash256.flash_attn_func(*leaves, causal=causal, deterministic=DETERMINISTIC)
            grads = dict(zip(("dq", "dk", "dv"), torch.autograd.grad(out, leaves, dout)))
            ref32, reflow = reference_results(q, k, v, dout, causal=causal)
            results += [accuracy_check(n, x, ref32[n], reflow[n]) for n, x in grads.items()]
    bad = [m for ok, m in results if not ok]
    return not bad, "; ".join(bad) or f"{len(results)} gradients within bounds"


def inputs(d, seqlen, layout):
    shape = (32768 // seqlen, seqlen, 2048 // d, d)
    if layout == "bhsd":
        shape = (shape[0], shape[2], shape[1], d)
    return [torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]


def backward_call(d, causal, seqlen, cudnn):
    q, k, v = inputs(d, seqlen, "bhsd" if cudnn else "bshd")
    if cudnn:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:
        out = flash256.flash_attn_func(q, k, v, causal=causal, deterministic=DETERMINISTIC)
    dout = torch.randn_like(out)
    call = lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)  # noqa: E731
    call()
    return call


def kernels(variant):
    """The bench's timed loop under torch.profiler: each call's kernels (start, length, ms from its start event's
    flush) and the host time per call, against the event-timed median."""
    from torch.profiler import ProfilerActivity, profile
    use(module_for(variant))
    timer = Timer("cuda")
    for causal in (False, True):
        call = backward_call(256, causal, 4096, False)
        ms = timer.measure(call, 25, 100).median_ms
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            call()
        host_ms = (time.perf_counter() - t0) / 3 * 1e3
        torch.cuda.synchronize()
        n = 24
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            per_call = timer._run(call, n)
        gpu = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
        print(f"## d=256 4k causal={causal}: event-timed median {ms:.3f} ms; host {host_ms:.3f} ms per call "
              f"(3 calls, no sync); {n} profiled calls, event ms: {' '.join(f'{x:.2f}' for x in per_call)}")
        print("  kernels of profiled calls 1, 2 and the last two (start after the flush's end, us):")
        flushes = [i for i, e in enumerate(gpu) if "Fill" in e.name] + [len(gpu)]
        for c in (0, 1, n - 2, n - 1):
            a, b = flushes[c], flushes[c + 1]
            t_ref = gpu[a].time_range.end
            for e in gpu[a:b]:
                start, length = e.time_range.start - t_ref, e.time_range.elapsed_us()
                print(f"  call {c:2d} {start:9.1f} +{length:9.1f}  {e.name[:60]}")


def isolated_checks(variants):
    """Run `check` for every variant at once, each in a child process (their compiles then share the device's
    cores); keep the variants whose check finished within CHECK_TIMEOUT_S, right or wrong (a timing probe is wrong
    on purpose), and report the ones that hung or crashed."""
    flags = ["--deterministic"] if DETERMINISTIC else []
    children = {variant: subprocess.Popen([sys.executable, __file__, *flags, "--check", variant], text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for variant in variants}
    deadline = time.monotonic() + CHECK_TIMEOUT_S
    kept = []
    for variant, child in children.items():
        try:
            out, err = child.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            print(f"{variant}: HANG (no result in {CHECK_TIMEOUT_S} s), not timed", flush=True)
            continue
        print(out.strip() or f"{variant}: crashed, not timed\n{err[-2000:]}", flush=True)
        if child.returncode == 0:
            kept.append(variant)
    return kept


def main(variants, rounds=int(os.environ.get("ROUNDS", 2))):
    print(torch.cuda.get_device_name(), flush=True)
    variants = isolated_checks(variants)
    modules = {variant: module_for(variant) for variant in variants}
    timer = Timer("cuda")
    table, clocks = {}, {}
    for d, causal, seqlen in CASES:
        # One forward graph for every variant (the backward is dispatched when it runs): same tensors, same
        # addresses -- separate allocations moved one kernel by up to 8% in the first runs of this script.
        ours, cudnn = backward_call(d, causal, seqlen, False), backward_call(d, causal, seqlen, True)
        for r in range(rounds):
            for variant in rotated([*variants, "cudnn"], r):
                if variant != "cudnn":
                    use(modules[variant])
                # 250 ms warm-up: timed at the power-capped sustained clock (NOTES.md), as the bench does
                ms = timer.measure(cudnn if variant == "cudnn" else ours, 250, 200).median_ms
                rate = tflops("bwd", d, causal, seqlen, ms)
                table.setdefault((d, causal, seqlen), {}).setdefault(variant, []).append(rate)
                print(variant, d, causal, seqlen, f"round {r}: {ms:.3f} ms", flush=True)
        for variant in [*variants, "cudnn"] if CLOCKS else []:
            if variant != "cudnn":
                use(modules[variant])
            clocks.setdefault((d, causal, seqlen), {})[variant] = sample_clocks(cudnn if variant == "cudnn" else ours)
            print(variant, d, causal, seqlen, clocks[d, causal, seqlen][variant], flush=True)
    print("\nTFLOP/s per round\n| d | causal | seqlen | " + " | ".join(variants) + " | cudnn |\n|---|---|---|"
          + "---|" * (len(variants) + 1))
    for (d, causal, seqlen), cells in table.items():
        print(f"| {d} | {int(causal)} | {seqlen} | "
              + " | ".join("/".join(f"{x:.0f}" for x in cells[v]) for v in [*variants, "cudnn"]) + " |")
    if clocks:
        print("\nSM clock, board power (3 s back to back)\n| d | causal | seqlen | " + " | ".join(variants)
              + " | cudnn |\n|---|---|---|" + "---|" * (len(variants) + 1))
        for (d, causal, seqlen), cells in clocks.items():
            print(f"| {d} | {int(causal)} | {seqlen} | " + " | ".join(cells[v] for v in [*variants, "cudnn"]) + " |")


def timing_args(argv):
    """The timing run's variants (default: base), after its options, which set CASES, DETERMINISTIC and CLOCKS."""
    global DETERMINISTIC, CLOCKS
    argv = list(argv)
    while argv[:1] and argv[0].startswith("--"):  # options, in any order, before the variants
        option = argv.pop(0)
        if option == "--dims":  # time only these head dims
            dims = {int(d) for d in argv.pop(0).split(",")}
            CASES[:] = [case for case in CASES if case[0] in dims]
        elif option == "--seqlens":  # and only these seqlens
            seqlens = {int(s) for s in argv.pop(0).split(",")}
            CASES[:] = [case for case in CASES if case[2] in seqlens]
        elif option == "--deterministic":
            DETERMINISTIC = True
        elif option == "--clocks":
            CLOCKS = True
        else:
            sys.exit(f"bwd_probe.py: unknown option {option}")
    misplaced = [arg for arg in argv if arg.startswith("-")]
    if misplaced:  # a variant named like an option would silently run the shipped kernel
        sys.exit(f"bwd_probe.py: options go before the variants: {' '.join(misplaced)}")
    return argv or ["base"]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--kernels"]:
        kernels((sys.argv[2:] or ["base"])[0])
    elif "--check" in sys.argv[1:3]:
        DETERMINISTIC = sys.argv[1] == "--deterministic"
        use(module_for(sys.argv[-1]))
        ok, msg = check()
        print(f"{sys.argv[-1]}: {'ok' if ok else 'FAIL'} {msg}", flush=True)
    elif sys.argv[1:2] == ["--profile"]:
        from sm90_bwd_check import profile  # noqa: E402  (beside this file)
        for variant in sys.argv[2:] or ["base"]:
            use(module_for(variant))
            print(f"# {variant}", flush=True)
            profile(256)
    else:
        main(timing_args(sys.argv[1:]))
