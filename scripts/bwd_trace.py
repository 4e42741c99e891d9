"""When does each Q/dO tile reach the d=256 dK/dV kernel, and who waits for it? (device call helper, issue 5)

    python scripts/bwd_trace.py [--patch P] [SEQLEN ...]  (default 4096; bench shapes: bf16, 8 heads, 32k tokens)
    python scripts/bwd_trace.py --dim 128|64 [SEQLEN ...]  the d <= 128 key-split kernel with its fused dQ

Runs the backward with scripts/patches/sm90_bwd_probe_trace.patch, whose dK/dV kernel stamps the SM clock per CTA
and query tile: when the producer issued the tile's TMA loads, when the tile landed (the producer waits for it
too), and when each consumer warpgroup started waiting for it, got it, finished its first GEMM and handed over
(warpgroup 0: P^T shared) or received (warpgroup 1: dS^T computed) the probabilities. Prints, causal against
non-causal, per tile: load latency (landed - issued), how long before its use the load was issued (slack), how
long each warpgroup stalled on it, the tile period and each warpgroup's steps, in SM cycles; saves the raw
stamps to $OUT/bwd_trace_<seqlen>_<full|causal>.npz (4k and shorter). --patch traces a variant instead: a patch
that carries the same stamps: the stamps of sm90_bwd_probe_trace.patch written over the variant's patch, in a
patch whose first line `on top of: <the variant's patch>` chains the two (scripts/variants.py's patch_chain).

--dim 128 or 64 traces the key-split kernel instead (scripts/patches/sm90_bwd_probe_trace_keysplit.patch, on top of
the same patch; 2048 // d heads): each warpgroup's wait for its Q/dO tile, its tile up to dS^T stored and dV/dK
done, warpgroup 0's fused dQ (the wait for warpgroup 1's dS^T, the GEMM, the staged reductions), the rest of each
period, and how far warpgroup 1 runs ahead. At d=128 each warpgroup's dQ half runs inside its tile step
(dq_halves), so the dQ row reads 0 there. The stamps cost registers (the d=128 build spills 48-312 B against the
shipped none), so each case is also timed with and without them.
"""
import os
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bwd_probe  # noqa: E402  (scripts/bwd_probe.py: variant modules and the dispatch swap)
from variants import tflops  # noqa: E402

PATCH = pathlib.Path(__file__).resolve().parent / "patches" / "sm90_bwd_probe_trace.patch"
KEYSPLIT_PATCH = PATCH.with_name("sm90_bwd_probe_trace_keysplit.patch")
# the patch's stamps per tile, in its field order (the last row of each CTA: smid, start, tiles, start clock)
FIELDS = ("issued", "landed", "need0", "need1", "got0", "s_done", "p_shared", "got1", "dp_done", "ds_done")
KEYSPLIT_FIELDS = ("issued", "landed", "need0", "need1", "got0", "staged0", "dq_done", "got1", "staged1", "free1")


def backward_call(seqlen, causal, d):
    torch.manual_seed(0)
    return bwd_probe.backward_call(d, causal, seqlen, False)  # the bench's shapes, called once


def traced_call(mod, seqlen, causal, d=256):
    call = backward_call(seqlen, causal, d)
    for _ in range(3):  # warm the clocks; the last call's trace is kept
        call()
    torch.cuda.synchronize()
    return mod.last_trace.cpu().numpy()


def stats(x):
    x = x[np.isfinite(x)]
    return f"{x.mean():7.0f} {np.median(x):7.0f} {np.percentile(x, 90):7.0f}" if x.size else "     -       -       -"


def steady_fields(trace, fields):
    """Each stamp as a (CTA, tile) array over every CTA's tiles 1 .. n-1 (tile 0 loads beside K and V; NaN
    elsewhere), and the CTAs' header rows."""
    header, tiles = trace[:, -1], trace[:, :-1].astype(np.float64)
    t_index = np.arange(tiles.shape[1])[None, :]
    steady = (t_index >= 1) & (t_index < header[:, 2][:, None])
    return {name: np.where(steady, tiles[..., i], np.nan) for i, name in enumerate(fields)}, header, int(steady.sum())


def next_tile(x):
    following = np.full_like(x, np.nan)
    following[:, :-1] = x[:, 1:]
    return following


def summarize(trace):
    """Per-tile figures of the GEMM split (d=256)."""
    f, header, n = steady_fields(trace, FIELDS)
    issued, landed, need0, need1 = f["issued"], f["landed"], f["need0"], f["need1"]
    next_need0, next_need1 = next_tile(need0), next_tile(need1)
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
    return rows, n, header


def summarize_keysplit(trace):
    """Per-tile figures of the key split (d <= 128, dQ fused into warpgroup 0)."""
    f, header, n = steady_fields(trace, KEYSPLIT_FIELDS)
    need0, need1 = f["need0"], f["need1"]
    next_need0, next_need1 = next_tile(need0), next_tile(need1)
    rows = {
        "tile period (warpgroup 0)": next_need0 - need0,
        "wg0: waiting for Q/dO (got - needed)": f["got0"] - need0,
        "wg0: scores, exp2, dS^T stored, dV/dK done (staged - got)": f["staged0"] - f["got0"],
        "wg0: dQ: wg1's dS^T, GEMM, reductions (dQ done - staged)": f["dq_done"] - f["staged0"],
        "wg0: to the next tile (next need - dQ done)": next_need0 - f["dq_done"],
        "tile period (warpgroup 1)": next_need1 - need1,
        "wg1: waiting for Q/dO": f["got1"] - need1,
        "wg1: scores issued, dS^T slot free (free - got)": f["free1"] - f["got1"],
        "wg1: exp2, dS^T stored, dV/dK done (staged - free)": f["staged1"] - f["free1"],
        "wg1: to the next tile (next need - staged)": next_need1 - f["staged1"],
        "wg1 ahead of wg0 (wg0 staged - wg1 staged)": f["staged0"] - f["staged1"],
    }
    return rows, n, header


def rate(call, seqlen, causal, d):
    """TFLOP/s of the call as the bench times it (250 ms warm-up, L2 flushed before each call)."""
    return tflops("bwd", d, causal, seqlen, bwd_probe.Timer("cuda").measure(call, 250, 200).median_ms)


def main(seqlens, patch=PATCH, d=256):
    mod = bwd_probe.module_for(f"trace={patch}")
    shipped = bwd_probe.module_for("base")
    out_dir = pathlib.Path(os.environ.get("OUT", "gpu_out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for seqlen in seqlens:
        table = {}
        for causal in (False, True):
            bwd_probe.use(mod)
            trace = traced_call(mod, seqlen, causal, d)
            if seqlen <= 4096:
                np.savez_compressed(out_dir / f"bwd_trace_d{d}_{seqlen}_{'causal' if causal else 'full'}.npz",
                                    trace=trace)
            table[causal] = (summarize if d == 256 else summarize_keysplit)(trace)
            if d != 256:  # the stamps' own cost: the whole backward with and without them
                call = backward_call(seqlen, causal, d)
                traced_rate = rate(call, seqlen, causal, d)
                bwd_probe.use(shipped)
                print(f"d={d} {seqlen} causal={causal}: backward {traced_rate:.0f} TFLOP/s traced, "
                      f"{rate(call, seqlen, causal, d):.0f} shipped", flush=True)
        print(f"\n## d={d} dK/dV, seqlen {seqlen}: SM cycles per tile (mean / median / p90), tiles 1..n-1 of every "
              "CTA")
        print(f"{'':62s} {'non-causal':>23s}   {'causal':>23s}")
        for name in table[False][0]:
            print(f"{name:62s} {stats(table[False][0][name])}   {stats(table[True][0][name])}")
        for causal in (False, True) if d == 256 else ():
            rows, n, header = table[causal]
            stall, period = rows["stall, warpgroup 0 (landed - needed, >= 0)"], rows["tile period (warpgroup 0)"]
            timed = np.isfinite(period)  # tiles with a next tile in the same CTA
            share = stall[timed].sum() / period[timed].sum()
            print(f"causal={causal}: {n} tiles, {len(header)} CTAs on {len(np.unique(header[:, 0]))} SMs; "
                  f"warpgroup 0 stalls on Q/dO for {100 * share:.1f}% of its tile periods")


if __name__ == "__main__":
    args = sys.argv[1:]
    dim = int(args.pop(args.index("--dim") + 1)) if "--dim" in args else 256
    patch = args.pop(args.index("--patch") + 1) if "--patch" in args else (PATCH if dim == 256 else KEYSPLIT_PATCH)
    main([int(s) for s in args if s not in ("--patch", "--dim")] or [4096], patch, dim)
