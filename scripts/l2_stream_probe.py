"""Does it matter to L2 whether the SMs stream the same tiles at the same time? (issue 5, causal dK/dV)

The d=256 dK/dV kernel streams a 64 KB Q/dO tile (64 rows of Q and of dO, one head) per 64 x 64 tile pair from
L2, ~5 TB/s over the GPU in the non-causal kernel. In a non-causal grid the CTAs of a head read their query
tiles in lockstep; in a causal grid each starts at its own diagonal and CTAs of different lengths replace each
other at different times, so no two read the same tile together. This kernel does nothing but that stream: one
CTA per SM, a STAGES-deep ring of (Q tile, dO tile) TMA loads, no compute; CTA c reads tiles start_c,
start_c + 1, ... of (B=1, S, H, 256) bf16 tensors (tile t = head t // (S/64), rows 64 (t % (S/64))...), with
    aligned     start_c = 0: every SM asks for the same tile at about the same time
    neighbour   start_c = c: as a causal wave, each CTA one tile further than the one before
    spread      start_c = 61 c mod n_tiles: no two CTAs near each other
and prints the L2-to-shared-memory bandwidth of each (TB/s, median of a few runs), for a working set that fits
L2 (H = 2 and 8) and one that does not (H = 32).

    python scripts/l2_stream_probe.py [STAGES]
"""
import pathlib
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository, from any directory
from flash256.kernels.sm90_fwd import tma_descriptor  # noqa: E402

ROWS = 64
HEAD_DIM = 256


@gluon.jit
def _load_tile(q_desc, do_desc, q_buf, do_buf, ready, tile, n_m, ROWS: gl.constexpr):
    head = tile // n_m
    row = (tile - head * n_m) * ROWS
    mbarrier.expect(ready, q_desc.block_type.nbytes + do_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [0, row, head, 0], ready, q_buf)
    tma.async_copy_global_to_shared(do_desc, [0, row, head, 0], ready, do_buf)


@gluon.jit
def stream_kernel(q_desc, do_desc, n_m, n_tiles, steps, stride, STAGES: gl.constexpr, ROWS: gl.constexpr):
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
    do_smem = gl.allocate_shared_memory(do_desc.dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
    start = gl.program_id(0) * stride
    for s in gl.static_range(STAGES):
        _load_tile(q_desc, do_desc, q_smem.index(s), do_smem.index(s), ready.index(s), (start + s) % n_tiles, n_m,
                   ROWS)
    for i in range(steps):
        stage = i % STAGES
        mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
        if i + STAGES < steps:  # nothing reads the buffer: refill it at once
            _load_tile(q_desc, do_desc, q_smem.index(stage), do_smem.index(stage), ready.index(stage),
                       (start + i + STAGES) % n_tiles, n_m, ROWS)


def compile_sm90(stages):
    """The kernel built for sm_90a without a GPU (tests/test_scripts.py)."""
    from flash256.kernels.compile_target import compile_gluon, gluon_desc_type
    from flash256.kernels.sm90_fwd import smem_layout
    desc = gluon_desc_type("bf16", [1, ROWS, 1, HEAD_DIM], smem_layout(HEAD_DIM, ROWS, gl.bfloat16))
    return compile_gluon(stream_kernel, dict(q_desc=desc, do_desc=desc, n_m="i32", n_tiles="i32", steps="i32",
                                             stride="i32"), dict(STAGES=stages, ROWS=ROWS), arch=90, num_warps=1)


def bandwidth(heads, seqlen, stride, stages, steps=1500):
    q, do = (torch.randn(1, seqlen, heads, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    q_desc, do_desc = tma_descriptor(q, ROWS), tma_descriptor(do, ROWS)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    n_m = seqlen // ROWS

    def run():
        stream_kernel[(sms, )](q_desc, do_desc, n_m, heads * n_m, steps, stride, STAGES=stages, ROWS=ROWS,
                               num_warps=1)
    ms = triton.testing.do_bench(run, warmup=100, rep=300, return_mode="median")
    return sms * steps * 2 * ROWS * HEAD_DIM * 2 / ms / 1e9


def main(stages):
    print(f"{torch.cuda.get_device_name()}, {stages} stages of 64 KB per SM, TB/s (two rounds)")
    print("| heads x 4k rows (MB) | aligned | neighbour | spread |\n|---|---|---|---|")
    for heads in (2, 8, 32):
        cells = [[bandwidth(heads, 4096, stride, stages) for stride in (0, 1, 61)] for _ in range(2)]
        mb = 2 * heads * 4096 * HEAD_DIM * 2 >> 20
        print(f"| {heads} ({mb}) | " + " | ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(*cells)) + " |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
