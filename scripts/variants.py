"""A/B timing of sm90 configuration variants in one process (device call helper).

    python scripts/variants.py bwd:default bwd:p_buffers=1 fwd:default fwd:q_reg_cols=128

A variant is `fwd:` or `bwd:` followed by `default` or comma-separated `field=int` overrides of the
shipped Sm90FwdConfig / Sm90BwdDkdvConfig of every head dim (a head dim whose overridden configuration
fails its own check keeps the shipped one, and the script says so).

For each variant: a correctness check against the fp32 reference through the public API (GQA 2:1,
seqlens 1000/1000, causal and not, d 256/128/64: out for fwd, dq/dk/dv for bwd), then the median
time of that direction at d=256 (8 heads, 32k tokens; 1k/4k/16k), d=128 (16 heads, 8k) and d=64
(32 heads, 8k), causal and not, and cuDNN's in the same process. TFLOP/s: forward 4 b h s^2 d (causal
half), backward 2.5x that.
"""
import dataclasses
import importlib
import pathlib
import subprocess
import sys
import tempfile

import torch
import triton

import flash256
from flash256.bench.run import rotated  # noqa: F401  (the probes' round order, as the bench's)
from flash256.kernels import sm90_bwd, sm90_fwd
from flash256.testing import accuracy_check, reference_results

SHIPPED = {"fwd": (sm90_fwd.CONFIGS, dict(sm90_fwd.CONFIGS)),
           "bwd": (sm90_bwd.DKDV_CONFIGS, dict(sm90_bwd.DKDV_CONFIGS))}
CASES = [(256, c, s) for c in (False, True) for s in (1024, 4096, 16384)] + \
        [(d, c, 8192) for d in (128, 64) for c in (False, True)]


def patch_chain(patch):
    """The patch and the ones it is written on top of: a first line `on top of: NAME` names the patch (beside it)
    that must be applied before it, so a variant of a variant is stored as its difference."""
    chain = [pathlib.Path(patch).resolve()]
    while (first := chain[0].read_text().split("\n", 1)[0]).startswith("on top of: "):
        chain.insert(0, chain[0].parent / first.removeprefix("on top of: ").strip())
    return chain


def patched_source(module_path, source, patch):
    """`source`, the text of flash256/kernels/<module_path>, with a unified diff (paths a/flash256/kernels/...)
    applied after the ones it is written on top of (`patch_chain`)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = pathlib.Path(tmp, "flash256/kernels", module_path)
        target.parent.mkdir(parents=True)
        target.write_text(source)
        for step in patch_chain(patch):
            subprocess.run(["git", "apply", str(step)], cwd=tmp, check=True)
        return target.read_text()


def variant_source(module_path, source, path):
    """A variant's text of flash256/kernels/<module_path> (shipped text `source`): the shipped one for no path, a
    `.patch` applied to it (`patched_source`), or another version of the file."""
    if not path:
        return source
    return patched_source(module_path, source, path) if path.endswith(".patch") else pathlib.Path(path).read_text()


def probe_module(name, source):
    """Import `source`, a version of a flash256/kernels module, as flash256.kernels._probe_<name> (git-ignored),
    so that its relative imports resolve to the shipped package."""
    (pathlib.Path(flash256.__file__).parent / "kernels" / f"_probe_{name}.py").write_text(source)
    return importlib.import_module(f"flash256.kernels._probe_{name}")


def apply(variant):
    direction, _, spec = variant.partition(":")
    for live, shipped in SHIPPED.values():
        live.update(shipped)
    live, shipped = SHIPPED[direction]
    if spec == "default":
        return direction
    for d, cfg in shipped.items():
        overrides = {key: type(getattr(cfg, key))(int(value))
                     for key, value in (item.split("=") for item in spec.split(","))}
        candidate = dataclasses.replace(cfg, **overrides)
        try:
            candidate.check()
            live[d] = candidate
        except AssertionError:
            print(f"{variant}: d={d} keeps the shipped configuration", flush=True)
    return direction


def timed_ms(direction, fn, q, k, v):
    # 250 ms warm-up: timed at the power-capped sustained clock, as the bench does (NOTES.md)
    if direction == "fwd":
        with torch.no_grad():
            return triton.testing.do_bench(lambda: fn(q, k, v), warmup=250, rep=300, return_mode="median")
    out = fn(q, k, v)
    dout = torch.randn_like(out)
    return triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True),
                                   warmup=250, rep=300, return_mode="median")


def check(direction, d, causal):
    torch.manual_seed(3)
    q = torch.randn(2, 1000, 4, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(2, 1000, 2, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    dout = torch.randn_like(q)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash256.flash_attn_func(*leaves, causal=causal)
    actual = {"out": out.detach()} if direction == "fwd" else dict(
        zip(("dq", "dk", "dv"), torch.autograd.grad(out, leaves, dout)))
    ref32, reflow = reference_results(q, k, v, dout, causal=causal)
    results = [accuracy_check(n, x, ref32[n], reflow[n]) for n, x in actual.items()]
    return all(ok for ok, _ in results), "; ".join(m for _, m in results)


def batch_size(seqlen):
    """The probes' batch: 32k tokens in all (one sequence at least), 2048 // d heads of d dims."""
    return max(1, 32768 // seqlen)


def inputs(d, seqlen, layout):
    batch = batch_size(seqlen)
    shape = (batch, seqlen, 2048 // d, d) if layout == "bshd" else (batch, 2048 // d, seqlen, d)
    return [torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]


def tflops(direction, d, causal, seqlen, ms):
    flops = 4 * batch_size(seqlen) * 2048 * seqlen * seqlen / (2 if causal else 1) * (2.5 if direction == "bwd" else 1)
    return flops / ms / 1e9


def main(variants):
    rows = []
    for variant in variants:
        direction = apply(variant)
        for d in (256, 128, 64):
            for causal in (False, True):
                ok, msg = check(direction, d, causal)
                print(f"{variant} d={d} causal={causal}: {'ok' if ok else 'FAIL'} {msg}", flush=True)
        for d, causal, seqlen in CASES:
            ms = timed_ms(direction, lambda a, b, c: flash256.flash_attn_func(a, b, c, causal=causal),
                          *inputs(d, seqlen, "bshd"))
            rows.append((variant, d, causal, seqlen, ms, tflops(direction, d, causal, seqlen, ms)))
            print(rows[-1], flush=True)
    apply("fwd:default")
    for direction in sorted({v.partition(":")[0] for v in variants}):
        for d, causal, seqlen in CASES:
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                ms = timed_ms(direction, lambda a, b, c: torch.nn.functional.scaled_dot_product_attention(
                    a, b, c, is_causal=causal), *inputs(d, seqlen, "bhsd"))
            rows.append((f"{direction}:cudnn", d, causal, seqlen, ms, tflops(direction, d, causal, seqlen, ms)))
    print("\n| variant | d | causal | seqlen | ms | TFLOP/s |\n|---|---|---|---|---|---|")
    for variant, d, causal, seqlen, ms, rate in rows:
        print(f"| {variant} | {d} | {int(causal)} | {seqlen} | {ms:.3f} | {rate:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["bwd:default", "bwd:p_buffers=1"])
