"""When does each Q/dO tile reach the d=256 dK/dV kernel, and who waits for it? (device call helper, issue 5)

    python scripts/bwd_trace.py [--patch P] [SEQLEN ...]  (default 4096; bench shapes: bf16, 8 heads, 32k tokens)

Runs the backward with scripts/patches/sm90_bwd_probe_trace.patch, whose dK/dV kernel stamps the SM clock per CTA
and query tile: when the producer issued the tile's TMA loads, when the tile landed (the producer waits for it
too), and when each consumer warpgroup started waiting for it, got it, finished its first GEMM and handed over
(warpgroup 0: P^T shared) or received (warpgroup 1: dS^T computed) the probabilities. Prints, causal against
non-causal, per tile: load latency (landed - issued), how long before its use the load was issued (slack), how
long each warpgroup stalled on it, the tile period and each warpgroup's steps, in SM cycles; saves the raw
stamps to $OUT/bwd_trace_<seqlen>_<full|causal>.npz (4k and shorter). --patch traces a variant instead: a patch
that carries the same stamps: the stamps of sm90_bwd_probe_trace.patch written over the variant's patch, in a
patch whose first line `on top of: <the variant's patch>` chains the two (scripts/variants.py's patch_chain).
"""
import os
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bwd_probe  # noqa: E402  (scripts/bwd_probe.py: variant modules and the dispatch swap)

import flash256  # noqa: E402

PATCH = pathlib.Path(__file__).resolve().parent / "patches" / "sm90_bwd_probe_trace.patch"
# the patch's stamps per tile, in its field order (the last row of each CTA: smid, start, tiles, start clock)
FIELDS = ("issued", "landed", "need0", "need1", "got0", "s_done", "p_shared", "got1", "dp_done", "ds_done")


def traced_call(mod, seqlen, causal):
    torch.manual_seed(0)
    shape = (max(1, 32768 // seqlen), seqlen, 8, 256)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = flash256.flash_attn_func(q, k, v, causal=causal)
    dout = torch.randn_like(out)
    for _ in range(4):  # compile, then warm the clocks; the last call's trace is kept
        torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
    torch.cuda.synchronize()
    return mod.last_trace.cpu().numpy()


def stats(x):
    x = x[np.isfinite(x)]
    return f"{x.mean():7.0f} {np.median(x):7.0f} {np.percentile(x, 90):7.0f}" if x.size else "     -       -       -"


def summarize(trace):
    """Per-tile figures over every CTA's tiles 1 .. n-1 (tile 0 loads beside K and V)."""
    header, tiles = trace[:, -1], trace[:, :-1].astype(np.float64)
    n_tiles = header[:, 2]
    t_index = np.arange(tiles.shape[1])[None, :]
    steady = (t_index >= 1) & (t_index < n_tiles[:, None])
    f = {name: np.where(steady, tiles[..., i], np.nan) for i, name in enumerate(FIELDS)}
    issued, landed, need0, need1 = f["issued"], f["landed"], f["need0"], f["need1"]
    next_need0, next_need1 = (np.full_like(need0, np.nan) for _ in range(2))
    next_need0[:, :-1], next_need1[:, :-1] = need0[:, 1:], need1[:, 1:]
    rows = {
        "load latency (landed - issued)": landed - issued,
        "slack, warpgroup 0 (needed - issued)": need0 - issued,
        "stall, warpgroup 0 (landed - needed, >= 0)": np.maximum(landed - need0, 0),
        "stall, warpgroup 1": np.maximum(landed - need1, 0),
        "tile period (warpgroup 0)": next_need0 - need0,
        "wg0: waiting for Q/dO (got - needed)": f["got0"] - need0,
        "wg0: S^T and dV of the last tile (S done - got)": f["s_done"] - f["got0"],
        "wg0: exp2, slot wait, P^T store (shared - S done)": f["p_shared"] - f["s_done"],
        "wg0: convert, next lse load, dV issue (next need - shared)": next_need0 - f["p_shared"],
        "wg1: waiting for Q/dO": f["got1"] - need1,
        "wg1: dP^T and dK of the last tile (dP done - got)": f["dp_done"] - f["got1"],
        "wg1: P^T wait, dS^T (dS done - dP done)": f["ds_done"] - f["dp_done"],
        "wg1: convert, next delta load, dK issue (next need - dS done)": next_need1 - f["ds_done"],
        "wg1 dS done - wg0 P^T shared": f["ds_done"] - f["p_shared"],
    }
    return rows, int(steady.sum()), header


def main(seqlens, patch=PATCH):
    mod = bwd_probe.module_for(f"trace={patch}")
    bwd_probe.use(mod)
    out_dir = pathlib.Path(os.environ.get("OUT", "gpu_out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for seqlen in seqlens:
        table = {}
        for causal in (False, True):
            trace = traced_call(mod, seqlen, causal)
            if seqlen <= 4096:
                np.savez_compressed(out_dir / f"bwd_trace_{seqlen}_{'causal' if causal else 'full'}.npz",
                                    trace=trace)
            table[causal] = summarize(trace)
        print(f"\n## d=256 dK/dV, seqlen {seqlen}: SM cycles per tile (mean / median / p90), tiles 1..n-1 of every CTA")
        print(f"{'':62s} {'non-causal':>23s}   {'causal':>23s}")
        for name in table[False][0]:
            print(f"{name:62s} {stats(table[False][0][name])}   {stats(table[True][0][name])}")
        for causal in (False, True):
            rows, n, header = table[causal]
            stall, period = rows["stall, warpgroup 0 (landed - needed, >= 0)"], rows["tile period (warpgroup 0)"]
            timed = np.isfinite(period)  # tiles with a next tile in the same CTA
            share = stall[timed].sum() / period[timed].sum()
            print(f"causal={causal}: {n} tiles, {len(header)} CTAs on {len(np.unique(header[:, 0]))} SMs; "
                  f"warpgroup 0 stalls on Q/dO for {100 * share:.1f}% of its tile periods")


if __name__ == "__main__":
    args = sys.argv[1:]
    patch = args.pop(args.index("--patch") + 1) if "--patch" in args else PATCH
    main([int(s) for s in args if s != "--patch"] or [4096], patch)
