"""Does TMA multicast work from a Gluon kernel through inline PTX? (device call helper, issues 4 and 5)

    python scripts/multicast_check.py            # on a Hopper GPU: PASS or FAIL with what differed
    python scripts/multicast_check.py --compile  # CPU only: compile for sm_90a, show the SASS that matters

Triton 3.6 has no multicast TMA and its `num_ctas=2` layouts break Gluon kernels (NOTES.md, eighteenth session),
so this kernel is compiled for one CTA and launched in clusters of two anyway (the launcher takes the cluster size
from the packed metadata). Each CTA of a pair loads half of a 64 x 64 bf16 tile and multicasts it to both, so each
CTA ends up with the whole tile; then each arrives remotely on a barrier of its peer and waits for the peer's arrival
on its own. Every CTA writes the tile it holds: all of them must equal the input. What this exercises is what a
multicast K/V (forward) or Q/dO (backward) ring needs: shared-memory addresses from one allocation at a known offset
of `global_smem`, the tensor map as the kernel parameter `<kernel>_param_0`, `%cluster_ctarank`, cluster barriers
after the mbarrier inits and before exit, expect-tx on the local barrier while the peer's bytes land on it, and
`mapa` + a remote mbarrier arrive.
"""
import re
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

ROWS, COLS = 64, 64
TILE_BYTES = ROWS * COLS * 2
BAR_OFFSET = TILE_BYTES  # the barriers follow the tile in the one allocation
THREADS: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])


@gluon.jit
def _asm(code: gl.constexpr, arg):
    """Run `code` once per thread (128 threads, one element each) for its side effects; `$1` is `arg`."""
    return gl.inline_asm_elementwise(code, "=r,r", [arg], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def multicast_kernel(desc, out_ptr):
    blob = gl.allocate_shared_memory(gl.int64, [2048], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    tile = blob.slice(0, 1024)._reinterpret(gl.bfloat16, [64, 64], desc.layout)  # global_smem + 0
    bars = blob.slice(1024, 8)._reinterpret(gl.int64, [8, 1], mbarrier.MBarrierLayout())  # global_smem + 8192
    mbarrier.init(bars.index(0), count=1)  # the tile has landed (both halves)
    mbarrier.init(bars.index(1), count=1)  # the peer's remote arrive
    zero = gl.full([128], 0, gl.int32, THREADS)
    # the inits visible to the cluster, then every thread of both CTAs meets before any bytes or arrivals move
    _asm("fence.mbarrier_init.release.cluster; barrier.cluster.arrive.release; barrier.cluster.wait.acquire;"
         " mov.u32 $0, $1;", zero)
    mbarrier.expect(bars.index(0), 64 * 64 * 2)
    rank = _asm("mov.u32 $0, %cluster_ctarank;", zero)
    # thread 0 of each CTA: rows [32 rank, 32 rank + 32) into the same place in both CTAs, signalling both barriers
    issued = _asm("""{ .reg .b64 tm; .reg .u32 base, dst, bar, row, tid; .reg .pred leader;
        mov.u32 tid, %tid.x; setp.eq.u32 leader, tid, 0;
        mov.b64 tm, multicast_kernel_param_0; cvta.param.u64 tm, tm;
        mov.u32 base, global_smem; shl.b32 row, $1, 5;
        mad.lo.u32 dst, row, 128, base; add.u32 bar, base, 8192;
        @leader cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster
            [dst], [tm, {0, row}], [bar], 3;
        mov.u32 $0, 0; }""", rank)
    mbarrier.wait(bars.index(0), 0)
    # thread 0: arrive on the peer's second barrier (`rank + issued`: after the load above is issued); then wait
    # for the peer's arrival on ours
    _asm("""{ .reg .u32 local, remote, peer, tid; .reg .pred leader;
        mov.u32 tid, %tid.x; setp.eq.u32 leader, tid, 0;
        mov.u32 local, global_smem; add.u32 local, local, 8200; xor.b32 peer, $1, 1;
        mapa.shared::cluster.u32 remote, local, peer;
        @leader mbarrier.arrive.shared::cluster.b64 _, [remote];
        mov.u32 $0, 0; }""", rank + issued)
    mbarrier.wait(bars.index(1), 0)
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    x = tile.load(layout)
    r = gl.arange(0, 64, gl.SliceLayout(1, layout))
    c = gl.arange(0, 64, gl.SliceLayout(0, layout))
    gl.store(out_ptr + gl.program_id(0) * 4096 + r[:, None] * 64 + c[None, :], x)
    # no CTA exits while its peer may still arrive on it
    _asm("barrier.cluster.arrive.release; barrier.cluster.wait.acquire; mov.u32 $0, $1;", zero)


def _layout():
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)


def compiled_kernel(target=None):
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    signature = {"desc": f"tensordesc<bf16[32, 64],{_layout()!r}>", "out_ptr": "*bf16"}
    kernel = triton.compile(GluonASTSource(multicast_kernel, signature, constexprs={}),
                            target=target or GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    # the one allocation must start at global_smem + 0, so that the offsets written into the asm hold
    inits = re.findall(r"add\.s32\s+%r\d+, %r\d+, (\d+);\s*\n\s*// begin inline asm\s*\n\s*@%p\d+ mbarrier\.init",
                       kernel.asm["ptx"])
    assert inits == [str(BAR_OFFSET), str(BAR_OFFSET + 8)], inits
    return kernel


def main():
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    kernel = compiled_kernel(triton.runtime.driver.active.get_current_target())
    pairs = 66
    kernel.packed_metadata = (kernel.metadata.num_warps, 2, kernel.metadata.shared)  # clusters of two CTAs
    x = torch.randn(ROWS, COLS, device="cuda", dtype=torch.bfloat16)
    desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [32, 64], _layout())
    out = torch.zeros(2 * pairs, ROWS, COLS, device="cuda", dtype=torch.bfloat16)
    kernel[(pairs, 1, 1)](desc, out)
    torch.cuda.synchronize()
    wrong = [i for i in range(2 * pairs) if not torch.equal(out[i], x)]
    halves = [(i, torch.equal(out[i, :32], x[:32]), torch.equal(out[i, 32:], x[32:])) for i in wrong[:4]]
    print("PASS: every CTA holds the whole tile" if not wrong else
          f"FAIL: {len(wrong)} of {2 * pairs} CTAs differ; (cta, first half right, second half right): {halves}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--compile"]:
        from flash256.kernels.compile_target import dump_sass
        sass = dump_sass(compiled_kernel())
        print("\n".join(line.strip()[:100] for line in sass.splitlines()
                        if re.search(r"UTMALDG|SYNCS|UCGABAR|MEMBAR|MAPA|CCTL|FENCE", line)))
    else:
        main()
