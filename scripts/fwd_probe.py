"""Where does the d=256 forward lose against its GEMM ceiling? (device call helper, issue 4)

    python scripts/fwd_probe.py [variant ...]     variant: base | hot | noload | name=path/to/sm90_fwd_variant.py
    python scripts/fwd_probe.py --long [variant ...]   d=256 non-causal: 32k-128k (dynamic scheduler), varlen
    python scripts/fwd_probe.py --ab [variant ...]     d=256 4k/16k, causal and not
    python scripts/fwd_probe.py --sched [variant ...]  d=256 32k-128k, causal and not, single vs dynamic scheduler
    python scripts/fwd_probe.py --short [variant ...]  d=256 1k-8k non-causal, 1k-2k causal
    python scripts/fwd_probe.py --window [variant ...] d=256 causal sliding windows (Gemma 2/3 layers)
    python scripts/fwd_probe.py --small [variant ...]  d=128 and d=64 at 2k and 8k, causal and not
    python scripts/fwd_probe.py --small-short [variant ...]  the same at 1k and 2k
    python scripts/fwd_probe.py --small-all [variant ...]    the same at 1k, 2k and 8k
    python scripts/fwd_probe.py --traffic [variant ...]  d=256 16k/32k, with each variant's SM clock and power
                                                          (timing only: no variant is checked first)
      (every mode but the first: variants interleaved on the same tensors, two rounds (ROUNDS=n for n; each
       round starts one variant later), 250 ms warm-up; q0 = the kernel without Q in registers, static /
       single = that scheduler where "dynamic" is the default)

Times `sm90_forward` (bf16, 32k tokens, 2048 // d heads: d=256 at 4k and 16k, d=128 and d=64 at 8k; causal
and not) for variants of the kernel built from its source with one change each, in one process:
  base      the kernel as shipped
  name=path another version of sm90_fwd.py, or a unified diff against it (`.patch`, as bwd_probe.py takes;
            first checked against the reference: d 64/128/256, causal both, ragged and unequal seqlens, GQA)
  old=path  a previously shipped sm90_fwd.py (git show <commit>:flash256/kernels/sm90_fwd.py > path): timed
            against base without the check, as base is
  hot       the producer loads K/V block j % 2 instead of j: the same TMA traffic, but always L2 hits
  noload    the producer arrives on the ready barriers without loading: no K/V traffic at all, same sync
  halfload  the producer loads every other round of the K/V ring and arrives without loading on the others, so
            the blocks of those rounds multiply the (real, random) data the stage held two blocks before: half
            the K/V traffic from L2 at a realistic tensor-core power -- the most that sharing K/V between a CTA
            pair (TMA multicast) could save, without noload's stale-memory power
Timing probes only: `hot`, `noload` and `halfload` compute garbage. While each 16k case runs, nvidia-smi samples the
SM clock and power, to tell a clock-limited kernel from a stalled one. `noload` multiplies whatever the
shared memory holds, and tensor-core power depends on the data: compare its TFLOP/s per MHz, not its watts.
"""
import os
import pathlib
import subprocess
import sys

import torch
import triton

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from flash256.kernels.sm90_fwd import SCHEDULERS  # noqa: E402
# scripts/variants.py, beside this file
from variants import probe_module, rotated, tflops, variant_source  # noqa: E402
SOURCE = (ROOT / "flash256/kernels/sm90_fwd.py").read_text()

LOAD_K = "tma.async_copy_global_to_shared(k_desc, [k_batch, k_first + j * BLOCK_N, kv_h, 0],"
LOAD_V = "tma.async_copy_global_to_shared(v_desc, [k_batch, k_first + j * BLOCK_N, kv_h, 0],"
PATCHES = {
    "hot": [(LOAD_K, LOAD_K.replace("j * BLOCK_N", "(j % 2) * BLOCK_N")),
            (LOAD_V, LOAD_V.replace("j * BLOCK_N", "(j % 2) * BLOCK_N"))],
    "noload": [(f"mbarrier.expect({x}_ready.index(stage), {x}_desc.block_type.nbytes)",
                f"mbarrier.arrive({x}_ready.index(stage))") for x in "kv"] +
              [(load + f"\n{' ' * 44}{x}_ready.index(stage), {x}_smem.index(stage))", "pass")
               for x, load in (("k", LOAD_K), ("v", LOAD_V))],
    "halfload": [(f"""            mbarrier.expect({x}_ready.index(stage), {x}_desc.block_type.nbytes)
            {load}
{' ' * 44}{x}_ready.index(stage), {x}_smem.index(stage))""", f"""            if (kv_iter // {x.upper()}_STAGES) % 2 == 0:
                mbarrier.expect({x}_ready.index(stage), {x}_desc.block_type.nbytes)
                {load}
{' ' * 44}{x}_ready.index(stage), {x}_smem.index(stage))
            else:
                mbarrier.arrive({x}_ready.index(stage))""") for x, load in (("k", LOAD_K), ("v", LOAD_V))],
    # d=256 without Q in registers
    "q0": [("CONFIG_D256 = Sm90FwdConfig(head_dim=256, block_n=64, k_stages=2, v_stages=2, q_reg_cols=128)",
            "CONFIG_D256 = Sm90FwdConfig(head_dim=256, block_n=64, k_stages=2, v_stages=2)")],
    # the persistent schedulers' d=256 kernel with a quarter of Q in registers instead of half: ptxas then keeps
    # 16 exp2 under the PV wgmma as the one-tile kernel does, instead of 9 (CPU compile, nineteenth session)
    "qr64persist": [("from dataclasses import dataclass\n", "from dataclasses import dataclass, replace\n"),
                    ("    q, k, v = _tma_operand(q), _tma_operand(k), _tma_operand(v)\n",
                     "    if sched != 'single' and config is None and head_dim == 256:\n"
                     "        cfg = replace(cfg, q_reg_cols=64)\n"
                     "    q, k, v = _tma_operand(q), _tma_operand(k), _tma_operand(v)\n")],
    # the static persistent scheduler where "dynamic" is the default
    "static": [('return "dynamic" if cfg.head_dim', 'return "static" if cfg.head_dim')],
    # one tile per CTA where "dynamic" is the default
    "single": [('return "dynamic" if cfg.head_dim', 'return "single" if cfg.head_dim')],
}


TIMING_ONLY = {"hot", "noload", "halfload"}  # wrong on purpose: not checked


def module_for(variant):
    variant, _, path = variant.partition("=")
    source = variant_source("sm90_fwd.py", SOURCE, path)
    for old, new in PATCHES.get(variant, []):
        assert old in source, (variant, old)
        source = source.replace(old, new)
    return probe_module(variant.replace('-', '_'), source)


def sample_clocks(fn, seconds=3.0):
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                            "-lms", "200"], stdout=subprocess.PIPE, text=True)
    end = torch.cuda.Event(enable_timing=True)
    start = torch.cuda.Event(enable_timing=True)
    start.record()
    while True:
        for _ in range(20):
            fn()
        end.record()
        end.synchronize()
        if start.elapsed_time(end) > seconds * 1e3:
            break
    smi.terminate()
    rows = [tuple(map(float, line.split(","))) for line in smi.communicate()[0].splitlines()[2:] if "," in line]
    if not rows:
        return "n/a"
    return f"{sum(r[0] for r in rows) / len(rows):.0f} MHz {sum(r[1] for r in rows) / len(rows):.0f} W"


def check(mod, head_dims=(256, 128, 64), scheduler=None, window=(-1, -1), softcap=0.0):
    from flash256.testing import check_against_reference
    failures = []
    for d in head_dims:
        for causal in (False, True):
            for sq, sk in ((1000, 1000), (777, 1500), (1500, 777), (64, 4224)):
                torch.manual_seed(0)
                q = torch.randn(2, sq, 4, d, device="cuda", dtype=torch.bfloat16)
                k, v = (torch.randn(2, sk, 2, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
                out, _ = mod.sm90_forward(q, k, v, d ** -0.5, causal, window, softcap, scheduler=scheduler)
                failures += [f"d={d} causal={causal} window={window} softcap={softcap} {sq}x{sk}: {m}"
                             for m in check_against_reference({"out": out}, q, k, v, causal=causal, window_size=window,
                                                              softcap=softcap)]
    return failures


def main(variants):
    rows = []
    for variant in variants:
        mod = module_for(variant)
        if "=" in variant:
            failures = check(mod)
            print(variant, "correct" if not failures else f"WRONG: {failures[:4]}", flush=True)
        variant = variant.partition("=")[0]
        for d, seqlen in ((256, 4096), (256, 16384), (128, 8192), (64, 8192)):
            for causal in (False, True):
                q, k, v = (torch.randn(32768 // seqlen, seqlen, 2048 // d, d, device="cuda", dtype=torch.bfloat16)
                           for _ in range(3))

                def fn():
                    return mod.sm90_forward(q, k, v, d ** -0.5, causal)
                ms = triton.testing.do_bench(fn, warmup=250, rep=300, return_mode="median")
                clocks = sample_clocks(fn) if seqlen == 16384 else ""
                rate = tflops("fwd", d, causal, seqlen, ms)
                rows.append((variant, d, int(causal), seqlen, f"{ms:.3f}", f"{rate:.0f}", clocks))
                print(*rows[-1], flush=True)
    print("\n| variant | d | causal | seqlen | ms | TFLOP/s | clock, power |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


def _bshd(batch, seqlen):
    return [torch.randn(batch, seqlen, 8, 256, device="cuda", dtype=torch.bfloat16) for _ in range(3)]


def long_cases():
    """d=256 non-causal at 32k-128k on the dynamic scheduler (the default), and a packed batch of uneven
    sequences (32k tokens, one-tile-per-CTA scheduler)."""
    for seqlen in (32768, 65536, 131072):
        yield f"{seqlen // 1024}k", _bshd(1, seqlen), dict(scheduler="dynamic"), 4 * 8 * 256 * seqlen ** 2
    lengths = [3000, 5000, 2500, 7000, 4096, 1500, 6000, 3672]
    cu = torch.tensor([0] + lengths, device="cuda", dtype=torch.int32).cumsum(0, dtype=torch.int32)
    yield ("varlen", _bshd(1, sum(lengths)), dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lengths),
                                                 max_seqlen_k=max(lengths)), 4 * 8 * 256 * sum(n * n for n in lengths))


def scheduler_cases():
    """d=256 at 32k-128k (batch 1, 8 heads), non-causal and causal, under the "single" and "dynamic" schedulers
    (the default picks dynamic for both)."""
    for seqlen, causal in ((32768, False), (65536, False), (131072, False), (32768, True), (65536, True)):
        qkv = _bshd(1, seqlen)
        for scheduler in ("single", "dynamic"):
            yield (f"{seqlen // 1024}k{' causal' if causal else ''} {scheduler}", qkv,
                   dict(causal=causal, scheduler=scheduler), 4 * 8 * 256 * seqlen ** 2 / (2 if causal else 1))


def ab_cases():
    """d=256 at 4k and 16k (32k tokens), causal and not: the bench's mid-length shapes."""
    for seqlen in (4096, 16384):
        for causal in (False, True):
            yield (f"{seqlen // 1024}k{' causal' if causal else ''}", _bshd(32768 // seqlen, seqlen),
                   dict(causal=causal), 4 * 32768 * 2048 * seqlen / (2 if causal else 1))


def short_cases():
    """d=256 at 1k-8k (32k tokens), non-causal, and causal at 1k-2k: where per-tile start-up weighs most."""
    for seqlen, causal in ((1024, False), (2048, False), (4096, False), (8192, False), (1024, True), (2048, True)):
        yield (f"{seqlen // 1024}k{' causal' if causal else ''}", _bshd(32768 // seqlen, seqlen),
               dict(causal=causal), 4 * 32768 * 2048 * seqlen / (2 if causal else 1))


def window_cases():
    """d=256 causal sliding windows (32k tokens): Gemma 3's local layers (1024, no soft cap) at 8k and 16k,
    Gemma 2's (4096, soft cap 50) at 16k."""
    for seqlen, window, softcap in ((8192, 1024, 0.0), (16384, 1024, 0.0), (16384, 4096, 50.0)):
        pairs = sum(min(i + 1, window + 1) for i in range(seqlen))  # visible (query, key) pairs per head
        yield (f"{seqlen // 1024}k w{window}" + (" cap" if softcap else ""), _bshd(32768 // seqlen, seqlen),
               dict(causal=True, window=(window, 0), softcap=softcap), 4 * (32768 // seqlen) * 8 * 256 * pairs)


def small_dim_cases(seqlens=(2048, 8192)):
    """d=128 (16 heads) and d=64 (32 heads) at `seqlens` (2k and 8k unless given; 32k tokens), causal and not."""
    for d in (128, 64):
        for seqlen in seqlens:
            for causal in (False, True):
                q, k, v = (torch.randn(32768 // seqlen, seqlen, 2048 // d, d, device="cuda", dtype=torch.bfloat16)
                           for _ in range(3))
                yield (f"d{d} {seqlen // 1024}k{' causal' if causal else ''}", (q, k, v), dict(causal=causal),
                       4 * 32768 * 2048 * seqlen / (2 if causal else 1))


def traffic_cases():
    """d=256 non-causal at 16k and 32k and causal at 16k (32k tokens): the forward's power-capped shapes."""
    for seqlen, causal in ((16384, False), (32768, False), (16384, True)):
        yield (f"{seqlen // 1024}k{' causal' if causal else ''}", _bshd(32768 // seqlen, seqlen),
               dict(causal=causal), 4 * 32768 * 2048 * seqlen / (2 if causal else 1))


def interleaved(variants, cases, rounds=int(os.environ.get("ROUNDS", 2)), dims=(256, ), clocks=False,
                checked=True):
    """Every variant on the same tensors per case, in turn, `rounds` times (clock drift hits all alike);
    warm-up 250 ms so each timing is at the power-capped sustained clock (NOTES.md). Each variant is first
    checked at the head dims `dims` with every scheduler, a window and a soft cap. With `clocks`, each variant's
    SM clock and board power follow its rounds (3 s back to back, `sample_clocks`). `checked=False` skips the
    checks (a probe whose correctness was checked apart, with its own time limit)."""
    modules = {}
    for variant in variants:
        modules[variant] = module_for(variant)
        if variant == "base" or variant.startswith("old=") or variant in TIMING_ONLY or not checked:
            continue  # the shipped kernel (or a previously shipped one, old=path): the test suite checks it
        mod = modules[variant]
        failures = [f for scheduler in SCHEDULERS for f in check(mod, dims, scheduler)]
        failures += check(mod, dims, window=(300, 0)) + check(mod, dims, window=(200, 100), softcap=20.0)
        print(variant, "correct" if not failures else f"WRONG: {failures[:4]}", flush=True)
    table, power = {}, {}
    for label, (q, k, v), options, flops in cases:
        options = {"causal": False, **options}
        for r in range(rounds):
            for variant, mod in rotated(modules.items(), r):
                ms = triton.testing.do_bench(lambda: mod.sm90_forward(q, k, v, 0.0625, **options),
                                             warmup=250, rep=500, return_mode="median")
                table.setdefault(label, {}).setdefault(variant, []).append(flops / ms / 1e9)
                print(variant, label, f"{ms:.3f} ms", flush=True)
        for variant, mod in modules.items() if clocks else ():
            power[label, variant] = sample_clocks(lambda: mod.sm90_forward(q, k, v, 0.0625, **options))
            print(variant, label, power[label, variant], flush=True)
    names = [v.partition("=")[0] for v in variants]
    print("\nTFLOP/s per round\n| case | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for label, cells in table.items():
        print(f"| {label} | " + " | ".join("/".join(f"{x:.0f}" for x in cells[v]) for v in variants) + " |")
    if power:
        print("\nSM clock, board power (3 s back to back)\n| case | " + " | ".join(names) + " |\n|---|"
              + "---|" * len(names))
        for label in table:
            print(f"| {label} | " + " | ".join(power[label, v] for v in variants) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--long"]:
        interleaved(sys.argv[2:] or ["base"], long_cases())
    elif sys.argv[1:2] == ["--sched"]:
        interleaved(sys.argv[2:] or ["base"], scheduler_cases(), rounds=3)
    elif sys.argv[1:2] == ["--ab"]:
        interleaved(sys.argv[2:] or ["base"], ab_cases())
    elif sys.argv[1:2] == ["--short"]:
        interleaved(sys.argv[2:] or ["base"], short_cases())
    elif sys.argv[1:2] == ["--window"]:
        interleaved(sys.argv[2:] or ["base"], window_cases())
    elif sys.argv[1:2] == ["--traffic"]:
        interleaved(sys.argv[2:] or ["base", "halfload"], traffic_cases(), clocks=True, checked=False)
    elif sys.argv[1:2] == ["--small"]:
        interleaved(sys.argv[2:] or ["base"], small_dim_cases(), dims=(128, 64))
    elif sys.argv[1:2] == ["--small-short"]:
        interleaved(sys.argv[2:] or ["base"], small_dim_cases((1024, 2048)), dims=(128, 64))
    elif sys.argv[1:2] == ["--small-all"]:
        interleaved(sys.argv[2:] or ["base"], small_dim_cases((1024, 2048, 8192)), dims=(128, 64))
    else:
        main(sys.argv[1:] or ["base", "hot", "noload"])
