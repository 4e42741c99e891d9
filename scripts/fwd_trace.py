"""Where does a d=256 forward tile's time go, start to end? (device call helper, issue 4)

    python scripts/fwd_trace.py [--scheduler single|dynamic] [SEQLEN ...]
        (default: dynamic, the shipped default; 1024 4096 16384; bench shapes: bf16, 8 heads, 32k tokens)
    python scripts/fwd_trace.py --compile   (CPU: build the traced kernel for sm_90a, both schedulers, report spills)

The same-run bench (H100, 2026-12-07) puts a fixed cost on our forward that the others lack: a line through its
time per wave of tiles (2048 tiles, ~16 waves at every seqlen) at 1k-32k non-causal meets zero keys at ~11.5 us,
against ~4-6 us for cuDNN and flash-attn-4; that is why we lead from 8k and trail at 1k-4k. Per tile (launch,
prologue, epilogue) or per call (~180 us: host time the bench's timer sees)? This probe tells. It builds
sm90_fwd.py with a timestamp stream (the global nanosecond timer, from one thread of each partition), one row per
tile:
  producer  start of the tile's loads (and its SM), all its loads issued
  each consumer warpgroup  its Q landed, its first S = QK^T done, its last PV done, its epilogue done (O stored)
and prints per tile, in us: launch gap (this tile's producer start - the end of the tile before it on the same SM;
negative under a persistent scheduler, whose producer runs ahead), previous end -> Q landed (what the consumers wait
between tiles, either scheduler), Q wait (start -> Q landed), first block (Q landed -> first S done), key loop
(-> last PV done; and per key block), epilogue (-> O stored). Timing probe only: the stamps cost a few
instructions per tile, not per key block. First run (2026-12-07, one tile per CTA): NOTES.md, twenty-second session.
"""
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from variants import batch_size, probe_module, tflops  # noqa: E402

from flash256.kernels import sm90_fwd  # noqa: E402

FIELDS = ("start", "smid", "issued",
          "q0", "s0", "loop0", "epi0",
          "q1", "s1", "loop1", "epi1")

STAMP = '''
TRACE_WIDTH = gl.constexpr(12)
last_trace = None


@gluon.jit
def _stamp(trace, row, field, NUM_WARPS: gl.constexpr, SMID: gl.constexpr = False):
    # the global timer (ns), or the SM's index, stored by one thread of the partition
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [NUM_WARPS], [0])
    lanes = gl.arange(0, 32 * NUM_WARPS, layout)
    if SMID:
        value = gl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [lanes], dtype=gl.int32, is_pure=False,
                                          pack=1).to(gl.int64)
    else:
        value = gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [lanes], dtype=gl.int64,
                                          is_pure=False, pack=1)
    gl.store(trace + row.to(gl.int64) * TRACE_WIDTH + field + lanes * 0, value, mask=lanes == 0)


@gluon.jit
def _tile_coords('''

# (old, new, expected count): the trace pointer threaded through, and the stamps
EDITS = [
    ("\n@gluon.jit\ndef _tile_coords(", STAMP, 1),
    ("bars, tile_slot, o_desc", "bars, tile_slot, trace, o_desc", 2),
    ("bars, tile_slot, tile_counter,", "bars, tile_slot, trace, tile_counter,", 2),
    ("\n                         tile_counter, qk_scale,",
     "\n                         tile_counter, trace, qk_scale,", 1),
    ("cu_q, cu_k, tile_counter, qk_scale,", "cu_q, cu_k, tile_counter, last_trace, qk_scale,", 1),
    ("    sm90_attn_fwd_kernel[(grid, )](",
     "    global last_trace\n"
     "    last_trace = torch.zeros((num_tiles, TRACE_WIDTH.value), dtype=torch.int64, device=q.device)\n"
     "    sm90_attn_fwd_kernel[(grid, )](", 1),
    ('tile_counter="*i32", qk_scale="fp32",', 'tile_counter="*i32", trace="*i64", qk_scale="fp32",', 1),
    # producer, per tile: start of its loads, SM, all its loads issued
    ("        kv_h = h // group_size\n",
     "        kv_h = h // group_size\n        _stamp(trace, tile, 0, 1)\n        _stamp(trace, tile, 1, 1, True)\n", 1),
    ("            kv_iter += 1\n        if SCHEDULER == 2:",
     "            kv_iter += 1\n        _stamp(trace, tile, 2, 1)\n        if SCHEDULER == 2:", 1),
    ("        mbarrier.wait(q_ready.index(WG), tile_iter & 1)\n",
     "        mbarrier.wait(q_ready.index(WG), tile_iter & 1)\n        _stamp(trace, tile, 3 + 4 * WG, 4)\n", 1),
    ("            s = warpgroup_mma_wait(0, deps=(s, ))\n            mbarrier.arrive(k_empty.index(stage))\n",
     "            s = warpgroup_mma_wait(0, deps=(s, ))\n            _stamp(trace, tile, 4 + 4 * WG, 4)\n"
     "            mbarrier.arrive(k_empty.index(stage))\n", 1),
    ("            o, p = warpgroup_mma_wait(0, deps=(o, p))\n            mbarrier.arrive(v_empty.index(last_stage))\n",
     "            o, p = warpgroup_mma_wait(0, deps=(o, p))\n            _stamp(trace, tile, 5 + 4 * WG, 4)\n"
     "            mbarrier.arrive(v_empty.index(last_stage))\n", 1),
    ("        gl.thread_barrier()  # each warp finished its own stores; now all of them have\n",
     "        gl.thread_barrier()  # each warp finished its own stores; now all of them have\n"
     "        _stamp(trace, tile, 6 + 4 * WG, 4)\n", 1),
]


def traced_module():
    source = pathlib.Path(sm90_fwd.__file__).read_text()
    for old, new, count in EDITS:
        found = source.count(old)
        if found != count:
            raise SystemExit(f"fwd_trace: expected {count} of {old[:60]!r} in sm90_fwd.py, found {found}")
        source = source.replace(old, new)
    return probe_module("fwd_trace", source)


def summarize(trace, block_count):
    """Per-tile phases in us, and the gaps between consecutive tiles on one SM."""
    t = {name: trace[:, i].astype(np.float64) for i, name in enumerate(FIELDS)}
    end = np.maximum(t["epi0"], t["epi1"])
    gaps, idle = [], []
    for sm in np.unique(t["smid"]):
        on_sm = np.flatnonzero(t["smid"] == sm)
        order = on_sm[np.argsort(t["start"][on_sm])]
        gaps.append(t["start"][order[1:]] - end[order[:-1]])
        idle.append(t["q0"][order[1:]] - end[order[:-1]])
    phases = {
        "launch gap (start - previous tile's end, same SM)": np.concatenate(gaps),
        "previous end -> Q landed, wg0 (same SM)": np.concatenate(idle),
        "start -> all loads issued (producer)": t["issued"] - t["start"],
        "Q wait, wg0 (start -> Q landed)": t["q0"] - t["start"],
        "Q wait, wg1": t["q1"] - t["start"],
        "first block, wg0 (Q landed -> S_0 done)": t["s0"] - t["q0"],
        "key loop, wg0 (S_0 done -> last PV done)": t["loop0"] - t["s0"],
        "key loop per block, wg0": (t["loop0"] - t["s0"]) / max(block_count - 1, 1),
        "epilogue, wg0 (last PV done -> O stored)": t["epi0"] - t["loop0"],
        "epilogue, wg1": t["epi1"] - t["loop1"],
        "wg1 end - wg0 end": t["epi1"] - t["epi0"],
        "tile total (start -> last epilogue done)": end - t["start"],
    }
    return {name: x / 1e3 for name, x in phases.items()}


def main(seqlens, scheduler):
    mod = traced_module()
    print(f"{'us per tile (mean / median / p10 / p90)':52s}")
    for seqlen in seqlens:
        torch.manual_seed(0)
        q, k, v = (torch.randn(batch_size(seqlen), seqlen, 8, 256, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for i in range(40):  # compile and warm the clocks, then 20 calls back to back; the last call's trace is kept
            if i == 20:
                start.record()
            mod.sm90_forward(q, k, v, 0.0625, False, scheduler=scheduler)
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / 20
        trace = mod.last_trace.cpu().numpy()
        assert (trace[:, [0, 3, 6, 7, 10]] > 0).all(), "a tile left a stamp unwritten"
        phases = summarize(trace, seqlen // sm90_fwd.CONFIGS[256].block_n)
        wall = (trace[:, [6, 10]].max() - trace[:, 0].min()) / 1e3
        rate = tflops("fwd", 256, False, seqlen, ms)
        print(f"\n## d=256 non-causal {seqlen // 1024}k, {scheduler}: {len(trace)} tiles, first start to last end "
              f"{wall:.0f} us; back to back {ms * 1e3:.0f} us per call ({rate:.0f} TFLOP/s, stamps included)")
        for name, x in phases.items():
            print(f"{name:52s} {x.mean():8.2f} {np.median(x):8.2f} {np.percentile(x, 10):8.2f} "
                  f"{np.percentile(x, 90):8.2f}")


def compile_only():
    from flash256.kernels.compile_target import dump_sass, ex2_under_wgmma, sass_stats
    mod = traced_module()
    for scheduler in ("single", "dynamic"):
        compiled = mod.compile_sm90(mod.CONFIGS[256], False, scheduler)
        sass = dump_sass(compiled)
        stats = sass_stats(compiled, sass)
        print(scheduler, {k: stats[k] for k in ("registers", "spill_stores", "spill_loads")}, "ex2 under PV",
              ex2_under_wgmma(sass))


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["--compile"]:
        compile_only()
    else:
        scheduler = "dynamic"
        if args[:1] == ["--scheduler"]:
            scheduler, args = args[1], args[2:]
        main([int(s) for s in args] or [1024, 4096, 16384], scheduler)
