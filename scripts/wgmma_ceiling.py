"""How fast can the forward's GEMMs run, by key-block width N? (device call helper, issue 4)

    python scripts/wgmma_ceiling.py [pattern ...]  # table of TFLOP/s per (pattern, N), SM clock and power
    python scripts/wgmma_ceiling.py --compile  # CPU only: registers / spills of each variant

Every CTA holds a 128 x 256 Q (two 64-row halves, one per consumer warpgroup) and one N x 256 K and V
block resident in shared memory and loops over them ITERS times: no loads, no masking, so what is
measured is the tensor-core rate of the forward's instruction mix alone. Two 4-warp consumer
partitions run unsynchronised, like the real kernel's. Patterns:
  qk       S = Q K^T (SS wgmma, m64nNk16 x 16), wait
  pv       O += P V (RS wgmma, m64n256k16 x N/16), wait
  fwd      the forward's loop without the softmax: issue S_j, issue O += P_{j-1} V, wait(1), P = S_j, wait(0)
  fwd+sm   the same with the softmax's work on S_j (row max, exp2, row sum, O rescale)
  ser      no intra-warpgroup overlap (what fits the registers at N=128): S, wait, P = S, O += P V, wait
  ser+sm   the same with the softmax's work
FLOPs counted: 2 * 64 * N * 256 per GEMM per warpgroup.
"""
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fwd_probe import sample_clocks  # noqa: E402

HEAD_DIM = 256
HALF_M = 64
PATTERNS = {"qk": 0, "pv": 1, "fwd": 2, "fwd+sm": 3, "ser": 4, "ser+sm": 5}


@gluon.jit
def _fill(smem, src, ROWS: gl.constexpr, COLS: gl.constexpr):
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    r = gl.arange(0, ROWS, gl.SliceLayout(1, layout))
    c = gl.arange(0, COLS, gl.SliceLayout(0, layout))
    smem.store(gl.load(src + r[:, None] * COLS + c[None, :]))


@gluon.jit
def _softmax_work(s, m_i):
    """The online softmax's arithmetic on one score tile (row max, 2 x exp2, row sum), values unused."""
    m_new = gl.maximum(m_i, gl.max(s, axis=1))
    alpha = gl.exp2(m_i - m_new)
    p_f32 = gl.exp2(s * 0.0625 - m_new[:, None])
    return p_f32, alpha, m_new + gl.sum(p_f32, axis=1) * 1e-30


@gluon.jit
def _loop(q_smem, k_smem, v_smem, out_ptr, iters, WG: gl.constexpr, BLOCK_N: gl.constexpr,
          HEAD_DIM: gl.constexpr, PATTERN: gl.constexpr):
    HALF_M: gl.constexpr = 64
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    q_buf = q_smem.index(WG)
    k_t = k_smem.permute((1, 0))
    zero = gl.zeros([HALF_M, BLOCK_N], gl.float32, s_layout)
    o = gl.zeros([HALF_M, HEAD_DIM], gl.float32, o_layout)
    p = gl.convert_layout(zero.to(dtype), p_layout)
    s = zero
    m_i = gl.max(zero, axis=1)
    for _ in range(iters):
        if PATTERN == 0:
            s = warpgroup_mma(q_buf, k_t, zero, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=(s, ))
            o = o + gl.convert_layout(gl.max(s, axis=1), o_rows)[:, None] * 0.0  # keep s live, cheap
        elif PATTERN == 1:
            o = warpgroup_mma(p, v_smem, o, is_async=True)
            o = warpgroup_mma_wait(0, deps=(o, ))
        elif PATTERN >= 4:
            s = warpgroup_mma(q_buf, k_t, zero, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=(s, ))
            if PATTERN == 5:
                p_f32, alpha, m_i = _softmax_work(s, m_i)
                o = o * gl.convert_layout(alpha, o_rows)[:, None]
                p = gl.convert_layout(p_f32.to(dtype), p_layout)
            else:
                p = gl.convert_layout(s.to(dtype), p_layout)
            o = warpgroup_mma(p, v_smem, o, is_async=True)
            o = warpgroup_mma_wait(0, deps=(o, ))
        else:
            s = warpgroup_mma(q_buf, k_t, zero, use_acc=False, is_async=True)
            o = warpgroup_mma(p, v_smem, o, is_async=True)
            s = warpgroup_mma_wait(1, deps=(s, ))
            if PATTERN == 3:
                p_f32, alpha, m_i = _softmax_work(s, m_i)
                o, p = warpgroup_mma_wait(0, deps=(o, p))
                o = o * gl.convert_layout(alpha, o_rows)[:, None]
                p = gl.convert_layout(p_f32.to(dtype), p_layout)
            else:
                o, p = warpgroup_mma_wait(0, deps=(o, p))
                p = gl.convert_layout(s.to(dtype), p_layout)
    r = gl.arange(0, HALF_M, o_rows)
    c = gl.arange(0, HEAD_DIM, gl.SliceLayout(0, o_layout))
    out = out_ptr + (gl.program_id(0) * 2 + WG) * HALF_M * HEAD_DIM
    gl.store(out + r[:, None] * HEAD_DIM + c[None, :], o)


@gluon.jit
def _second(q_smem, k_smem, v_smem, out_ptr, iters, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
            PATTERN: gl.constexpr):
    _loop(q_smem, k_smem, v_smem, out_ptr, iters, 1, BLOCK_N, HEAD_DIM, PATTERN)


@gluon.jit
def _idle():
    pass


@gluon.jit(do_not_specialize=["iters"])
def ceiling_kernel(q_ptr, k_ptr, v_ptr, out_ptr, iters, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                   PATTERN: gl.constexpr):
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([64, HEAD_DIM], dtype)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    q_smem = gl.allocate_shared_memory(dtype, [2, 64, HEAD_DIM], q_layout)
    k_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_DIM], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_DIM], kv_layout)
    _fill(q_smem.index(0), q_ptr, 64, HEAD_DIM)
    _fill(q_smem.index(1), q_ptr + 64 * HEAD_DIM, 64, HEAD_DIM)
    _fill(k_smem, k_ptr, BLOCK_N, HEAD_DIM)
    _fill(v_smem, v_ptr, BLOCK_N, HEAD_DIM)
    gl.thread_barrier()
    gl.warp_specialize([
        (_loop, (q_smem, k_smem, v_smem, out_ptr, iters, 0, BLOCK_N, HEAD_DIM, PATTERN)),
        (_second, (q_smem, k_smem, v_smem, out_ptr, iters, BLOCK_N, HEAD_DIM, PATTERN)),
        (_idle, ()),
    ], [4, 1], [240, 24])


def flops(pattern, n, iters, ctas):
    gemms = {"qk": 1, "pv": 1}.get(pattern, 2)
    return gemms * 2 * HALF_M * n * HEAD_DIM * 2 * iters * ctas


def run(pattern, n, iters=4000):
    dev = "cuda"
    ctas = torch.cuda.get_device_properties(0).multi_processor_count
    q = torch.randn(128, HEAD_DIM, device=dev, dtype=torch.bfloat16) * 0.1
    k = torch.randn(n, HEAD_DIM, device=dev, dtype=torch.bfloat16) * 0.1
    v = torch.randn(n, HEAD_DIM, device=dev, dtype=torch.bfloat16) * 0.1
    out = torch.empty(ctas * 128, HEAD_DIM, device=dev, dtype=torch.float32)

    def launch():
        ceiling_kernel[(ctas, )](q, k, v, out, iters, BLOCK_N=n, HEAD_DIM=HEAD_DIM, PATTERN=PATTERNS[pattern],
                                 num_warps=4, maxnreg=168)
    ms = triton.testing.do_bench(launch, warmup=20, rep=200, return_mode="median")
    return f"{flops(pattern, n, iters, ctas) / ms / 1e9:.0f} ({sample_clocks(launch)})"


def compile_only():
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    sys.path.insert(0, ".")
    from flash256.kernels.sm90_fwd import resource_usage
    for pattern, pid in PATTERNS.items():
        for n in (64, 128):
            constexprs = dict(BLOCK_N=n, HEAD_DIM=HEAD_DIM, PATTERN=pid)
            sig = dict(q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", out_ptr="*fp32", iters="i32")
            sig.update({name: "constexpr" for name in constexprs})
            src = GluonASTSource(ceiling_kernel, sig, constexprs=constexprs)
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": 168})
            print(pattern, n, resource_usage(compiled), flush=True)


if __name__ == "__main__":
    if "--compile" in sys.argv:
        compile_only()
        sys.exit()
    rows = []
    for pattern in sys.argv[1:] or PATTERNS:
        for n in (64, 128):
            try:
                rows.append((pattern, n, run(pattern, n)))
            except Exception as e:  # a variant that does not fit is reported, not fatal
                rows.append((pattern, n, f"failed: {type(e).__name__}: {str(e)[:80]}"))
            print(*rows[-1], flush=True)
    print("\n| pattern | N | TFLOP/s (SM clock, power) |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
