"""Portable attention backward in Triton language, atomic-free and deterministic.

Three kernels, no atomics, no fp32 dQ buffer:
  1. preprocess: delta_i = rowsum(dO_i * O_i) - dLSE_i (the LSE gradient folds in here).
  2. dK/dV: one program owns a K/V tile of one kv head and streams the Q/dO tiles of
     every query head in its GQA group, so the group reduction costs no extra pass.
  3. dQ: one program owns a Q/dO tile and streams the K/V tiles it sees.
Scores and probabilities are recomputed in both 2 and 3 (7 GEMMs per tile pair instead
of 5): the price of writing every gradient exactly once.

With S = scale * Q K^T, P = exp(S - lse), dP = dO V^T, dS = P * (dP - delta):
  dV = P^T dO,  dK = scale * dS^T Q,  dQ = scale * dS K.
"""
import torch
import triton
import triton.language as tl

from .. import configs
from .masking import key_tile_range, query_tile_range, visible, visible_t
from .portable_fwd import LOG2E, dots_in_fp32, window_bounds
from .tma import row_descriptor, tile_descriptor, tma_compatible


@triton.jit
def attention_bwd_preprocess_kernel(
    o_desc, do_desc, dlse_ptr, delta_ptr, seqlen_q, nheads,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HAS_DLSE: tl.constexpr,
):
    m0 = tl.program_id(0) * BLOCK_M
    batch = tl.program_id(1) // nheads
    head = tl.program_id(1) % nheads
    o = o_desc.load([batch, m0, head, 0]).reshape(BLOCK_M, BLOCK_D).to(tl.float32)
    do = do_desc.load([batch, m0, head, 0]).reshape(BLOCK_M, BLOCK_D).to(tl.float32)
    rows = m0 + tl.arange(0, BLOCK_M)
    offs = (batch * nheads + head).to(tl.int64) * seqlen_q + rows
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:
        delta -= tl.load(dlse_ptr + offs, mask=rows < seqlen_q, other=0.0)
    tl.store(delta_ptr + offs, delta, mask=rows < seqlen_q)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_rows, do_rows, lse_ptr, delta_ptr, batch, head, nheads,
                start, end, cols, diag, left, right, seqlen_q, seqlen_k, qk_scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                DOT_FP32: tl.constexpr):
    """Accumulate dK, dV (fp32, transposed formulation) over query tiles [start, end).

    Every tile is masked: separate interior/edge loops (as in the forward), or a run-time
    branch around the mask, hold more registers live and spill at d=128 and 256.
    """
    row_base = (batch * nheads + head).to(tl.int64) * seqlen_q
    for m0 in tl.range(start, end, BLOCK_M):
        q = q_rows.load([batch * seqlen_q + m0, head * BLOCK_D])
        do = do_rows.load([batch * seqlen_q + m0, head * BLOCK_D])
        rows = m0 + tl.arange(0, BLOCK_M)
        # Padding rows get lse = +inf, so their P is 0 even before masking.
        lse = tl.load(lse_ptr + row_base + rows, mask=rows < seqlen_q, other=float("inf"))
        delta = tl.load(delta_ptr + row_base + rows, mask=rows < seqlen_q, other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        # Transposed tiles (keys on rows): P^T and dS^T come out of their GEMMs already in
        # the A-operand shape of the dV and dK GEMMs, so nothing is transposed.
        s_t = tl.dot(k, tl.trans(q)) * qk_scale                     # (N, M), base-2 units
        p_t = tl.math.exp2(s_t - lse[None, :] * 1.4426950408889634)
        p_t = tl.where(visible_t(cols, rows, diag, left, right, seqlen_q, seqlen_k), p_t, 0.0)
        p_low = p_t.to(q_rows.dtype)
        if DOT_FP32:
            p_low = p_low.to(tl.float32)
        dv += tl.dot(p_low, do)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        ds_low = ds_t.to(q_rows.dtype)
        if DOT_FP32:
            ds_low = ds_low.to(tl.float32)
        dk += tl.dot(ds_low, q)
    return dk, dv


@triton.jit
def attention_bwd_dkdv_kernel(
    q_rows, k_rows, v_rows, do_rows, dk_desc, dv_desc, lse_ptr, delta_ptr,
    softmax_scale, qk_scale, seqlen_q, seqlen_k, nheads, nheads_kv, diag, left, right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    n0 = tl.program_id(0) * BLOCK_N
    batch = tl.program_id(1) // nheads_kv
    kv_head = tl.program_id(1) % nheads_kv
    group_size = nheads // nheads_kv
    cols = n0 + tl.arange(0, BLOCK_N)
    k = k_rows.load([batch * seqlen_k + n0, kv_head * BLOCK_D])
    v = v_rows.load([batch * seqlen_k + n0, kv_head * BLOCK_D])
    if DOT_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo, _, _, hi = query_tile_range(
        n0, diag, left, right, seqlen_q, BLOCK_M, BLOCK_N)
    for head in range(kv_head * group_size, (kv_head + 1) * group_size):
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_rows, do_rows, lse_ptr, delta_ptr, batch, head,
                             nheads, lo, hi, cols, diag, left, right,
                             seqlen_q, seqlen_k, qk_scale, BLOCK_M, BLOCK_N, BLOCK_D, DOT_FP32)
    dk *= softmax_scale
    dk_desc.store([batch, n0, kv_head, 0], dk.to(dk_desc.dtype).reshape(1, BLOCK_N, 1, BLOCK_D))
    dv_desc.store([batch, n0, kv_head, 0], dv.to(dv_desc.dtype).reshape(1, BLOCK_N, 1, BLOCK_D))


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_rows, v_rows, batch, kv_head, start, end, rows,
              diag, left, right, seqlen_q, seqlen_k, qk_scale,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              MASKED: tl.constexpr, DOT_FP32: tl.constexpr):
    """Accumulate dQ (fp32, unscaled) over key tiles [start, end)."""
    for n0 in tl.range(start, end, BLOCK_N):
        k = k_rows.load([batch * seqlen_k + n0, kv_head * BLOCK_D])
        v = v_rows.load([batch * seqlen_k + n0, kv_head * BLOCK_D])
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            cols = n0 + tl.arange(0, BLOCK_N)
            p = tl.where(visible(rows, cols, diag, left, right, seqlen_q, seqlen_k), p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        ds_low = ds.to(k_rows.dtype)
        if DOT_FP32:
            ds_low = ds_low.to(tl.float32)
        dq += tl.dot(ds_low, k)
    return dq


@triton.jit
def attention_bwd_dq_kernel(
    q_rows, k_rows, v_rows, do_rows, dq_desc, lse_ptr, delta_ptr,
    softmax_scale, qk_scale, seqlen_q, seqlen_k, nheads, group_size, diag, left, right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    REVERSE_M: tl.constexpr, DOT_FP32: tl.constexpr,
):
    num_m = tl.cdiv(seqlen_q, BLOCK_M)
    pid_m = tl.program_id(0)
    if REVERSE_M:
        pid_m = num_m - 1 - pid_m
    batch = tl.program_id(1) // nheads
    head = tl.program_id(1) % nheads
    kv_head = head // group_size
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    row_offs = (batch * nheads + head).to(tl.int64) * seqlen_q + rows
    lse = tl.load(lse_ptr + row_offs, mask=rows < seqlen_q, other=float("inf")) * 1.4426950408889634
    delta = tl.load(delta_ptr + row_offs, mask=rows < seqlen_q, other=0.0)
    q = q_rows.load([batch * seqlen_q + m0, head * BLOCK_D])
    do = do_rows.load([batch * seqlen_q + m0, head * BLOCK_D])
    if DOT_FP32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, interior_lo, interior_hi, hi = key_tile_range(
        m0, diag, left, right, seqlen_k, BLOCK_M, BLOCK_N)
    dq = _dq_tiles(dq, q, do, lse, delta, k_rows, v_rows, batch, kv_head, lo, interior_lo,
                   rows, diag, left, right, seqlen_q, seqlen_k, qk_scale,
                   BLOCK_N, BLOCK_D, True, DOT_FP32)
    dq = _dq_tiles(dq, q, do, lse, delta, k_rows, v_rows, batch, kv_head, interior_lo,
                   interior_hi, rows, diag, left, right, seqlen_q, seqlen_k, qk_scale,
                   BLOCK_N, BLOCK_D, False, DOT_FP32)
    dq = _dq_tiles(dq, q, do, lse, delta, k_rows, v_rows, batch, kv_head, interior_hi, hi,
                   rows, diag, left, right, seqlen_q, seqlen_k, qk_scale,
                   BLOCK_N, BLOCK_D, True, DOT_FP32)
    dq *= softmax_scale
    dq_desc.store([batch, m0, head, 0], dq.to(dq_desc.dtype).reshape(1, BLOCK_M, 1, BLOCK_D))


def portable_backward(dout, q, k, v, out, lse, dlse, softmax_scale: float, causal: bool,
                      window=(-1, -1)):
    """Gradients (dq, dk, dv) of the forward's (out, lse); dlse may be None."""
    batch, seqlen_q, nheads, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    block_d = configs.padded_head_dim(head_dim)
    dout, q, k, v, out = (tma_compatible(t) for t in (dout, q, k, v, out))
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    delta = torch.empty_like(lse)
    left, right = window_bounds(seqlen_q, seqlen_k, causal, window)
    diag = seqlen_k - seqlen_q
    qk_scale = softmax_scale * LOG2E
    dot_fp32 = dots_in_fp32(q.dtype)

    bm = configs.PREPROCESS_BLOCK_M
    attention_bwd_preprocess_kernel[(triton.cdiv(seqlen_q, bm), batch * nheads)](
        tile_descriptor(out, bm, block_d), tile_descriptor(dout, bm, block_d),
        dlse if dlse is not None else lse, delta, seqlen_q, nheads,
        BLOCK_M=bm, BLOCK_D=block_d, HAS_DLSE=dlse is not None)

    cfg = configs.BACKWARD_DKDV[block_d]
    attention_bwd_dkdv_kernel[(triton.cdiv(seqlen_k, cfg.block_n), batch * nheads_kv)](
        row_descriptor(q, cfg.block_m, block_d), row_descriptor(k, cfg.block_n, block_d),
        row_descriptor(v, cfg.block_n, block_d), row_descriptor(dout, cfg.block_m, block_d),
        tile_descriptor(dk, cfg.block_n, block_d), tile_descriptor(dv, cfg.block_n, block_d),
        lse, delta, softmax_scale, qk_scale, seqlen_q, seqlen_k, nheads, nheads_kv,
        diag, left, right,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, DOT_FP32=dot_fp32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    cfg = configs.BACKWARD_DQ[block_d]
    attention_bwd_dq_kernel[(triton.cdiv(seqlen_q, cfg.block_m), batch * nheads)](
        row_descriptor(q, cfg.block_m, block_d), row_descriptor(k, cfg.block_n, block_d),
        row_descriptor(v, cfg.block_n, block_d), row_descriptor(dout, cfg.block_m, block_d),
        tile_descriptor(dq, cfg.block_m, block_d), lse, delta,
        softmax_scale, qk_scale, seqlen_q, seqlen_k, nheads, nheads // nheads_kv,
        diag, left, right,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
        REVERSE_M=causal, DOT_FP32=dot_fp32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return dq, dk, dv


def inspect_cases(arch: int):
    """Each shipped backward configuration, compiled for `arch` without a GPU (bf16)."""
    from .compile_target import InspectCase, compile_tl, tl_desc_type

    scalars = dict(softmax_scale="fp32", qk_scale="fp32", seqlen_q="i32", seqlen_k="i32",
                   nheads="i32", diag="i32", left="i32", right="i32")

    def rows(n, block_d):
        return tl_desc_type("bf16", [n, block_d])

    def tile(n, block_d):
        return tl_desc_type("bf16", [1, n, 1, block_d])

    def dkdv(block_d, cfg):
        signature = dict(
            q_rows=rows(cfg.block_m, block_d), k_rows=rows(cfg.block_n, block_d),
            v_rows=rows(cfg.block_n, block_d), do_rows=rows(cfg.block_m, block_d),
            dk_desc=tile(cfg.block_n, block_d), dv_desc=tile(cfg.block_n, block_d),
            lse_ptr="*fp32", delta_ptr="*fp32", nheads_kv="i32", **scalars)
        return compile_tl(attention_bwd_dkdv_kernel, signature,
                          dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, DOT_FP32=False),
                          arch=arch, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    def dq(block_d, cfg):
        signature = dict(
            q_rows=rows(cfg.block_m, block_d), k_rows=rows(cfg.block_n, block_d),
            v_rows=rows(cfg.block_n, block_d), do_rows=rows(cfg.block_m, block_d),
            dq_desc=tile(cfg.block_m, block_d), lse_ptr="*fp32", delta_ptr="*fp32",
            group_size="i32", **scalars)
        return compile_tl(attention_bwd_dq_kernel, signature,
                          dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
                               REVERSE_M=True, DOT_FP32=False),
                          arch=arch, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    def preprocess(block_d):
        bm = configs.PREPROCESS_BLOCK_M
        signature = dict(o_desc=tile(bm, block_d), do_desc=tile(bm, block_d), dlse_ptr="*fp32",
                         delta_ptr="*fp32", seqlen_q="i32", nheads="i32")
        return compile_tl(attention_bwd_preprocess_kernel, signature,
                          dict(BLOCK_M=bm, BLOCK_D=block_d, HAS_DLSE=True), arch=arch, num_warps=4)

    cases = []
    for block_d in configs.HEAD_DIMS:
        cases.append(InspectCase("portable_bwd_preprocess", f"d{block_d}",
                                 lambda d=block_d: preprocess(d)))
        cfg = configs.BACKWARD_DKDV[block_d]
        cases.append(InspectCase("portable_bwd_dkdv", f"d{block_d} {cfg}",
                                 lambda d=block_d, c=cfg: dkdv(d, c)))
        cfg = configs.BACKWARD_DQ[block_d]
        cases.append(InspectCase("portable_bwd_dq", f"d{block_d} {cfg}",
                                 lambda d=block_d, c=cfg: dq(d, c)))
    return cases
