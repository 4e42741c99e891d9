"""Portable attention backward in Triton language, atomic-free and deterministic.

Three kernels, no atomics, no fp32 dQ buffer:
  1. preprocess: delta = rowsum(dO * O) per (head, row); the LSE gradient is folded in
     by the caller (delta -= dLSE).
  2. dK/dV: one program owns a K/V tile of one kv head and streams the Q/dO tiles of
     every query head in its GQA group, so the group reduction costs no extra pass.
  3. dQ: one program owns a Q/dO tile and streams the K/V tiles it sees.
Scores and probabilities are recomputed in both 2 and 3 (7 GEMMs per tile pair instead
of 5): the price of writing every gradient exactly once.

With S = scale * Q K^T (soft-capped if asked), P = exp(S - lse), dP = dO V^T,
dS = P * (dP - delta):  dV = P^T dO,  dK = scale * dS^T Q,  dQ = scale * dS K.
A learnable sink only changes lse; its gradient is -sum_rows exp(sink - lse) * delta.
"""
import torch
import triton
import triton.language as tl

from .. import configs
from .masking import key_tile_range, query_tile_range, visible, visible_t
from .portable_fwd import interpreted_bf16, score_scales, window_bounds
from .scores import dot_operand, logits_base2, round_to, sequence_bounds, softcap_grad, wide
from .tma import row_descriptor

LOG2E = 1.4426950408889634


@triton.jit
def attention_bwd_preprocess_kernel(o_ptr, do_ptr, delta_ptr, total_rows, nheads,
                                    stride_do_row, stride_do_head,
                                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                                    HEAD_DIM: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    head = tl.program_id(1)
    dims = tl.arange(0, BLOCK_D)
    mask = (rows < total_rows)[:, None] & (dims < HEAD_DIM)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    o = tl.load(o_ptr + rows64 * (nheads * HEAD_DIM) + head * HEAD_DIM + dims[None, :], mask=mask, other=0.0)
    do = tl.load(do_ptr + rows64 * stride_do_row + head * stride_do_head + dims[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_ptr + wide(head) * total_rows + rows, delta, mask=rows < total_rows)


@triton.jit
def _store_rows(ptr, tile, row0, rows, length, head, nheads,
                BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, INTERPRETED_BF16: tl.constexpr):
    """Store a (rows, BLOCK_D) tile into a contiguous (rows, nheads, HEAD_DIM) tensor."""
    dims = tl.arange(0, BLOCK_D)
    offs = (row0 + rows).to(tl.int64)[:, None] * (nheads * HEAD_DIM) + head * HEAD_DIM + dims[None, :]
    tl.store(ptr + offs, round_to(tile, ptr.dtype.element_ty, INTERPRETED_BF16),
             mask=(rows < length)[:, None] & (dims < HEAD_DIM)[None, :])


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_rows, do_rows, lse_ptr, delta_ptr, q_start, head, total_q,
                start, end, cols, diag, left, right, seqlen_q, seqlen_k, qk_scale, softcap_scale,
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, SOFTCAP: tl.constexpr,
                INTERPRETED_BF16: tl.constexpr):
    """Accumulate dK, dV (fp32, transposed formulation) over query tiles [start, end).

    Every tile is masked: separate interior/edge loops (as in the forward), or a run-time
    branch around the mask, hold more registers live and spill at d=128 and 256.
    """
    row_base = wide(head) * total_q + q_start
    for m0 in tl.range(start, end, BLOCK_M):
        q = q_rows.load([q_start + m0, head * BLOCK_D])
        do = do_rows.load([q_start + m0, head * BLOCK_D])
        rows = m0 + tl.arange(0, BLOCK_M)
        # Rows past the sequence get lse = +inf, so their P is 0 even before masking.
        lse = tl.load(lse_ptr + row_base + rows, mask=rows < seqlen_q, other=float("inf"))
        delta = tl.load(delta_ptr + row_base + rows, mask=rows < seqlen_q, other=0.0)
        if INTERPRETED_BF16:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        # Transposed tiles (keys on rows): P^T and dS^T come out of their GEMMs already in
        # the A-operand shape of the dV and dK GEMMs, so nothing is transposed.
        qk_t = tl.dot(k, tl.trans(q))                                     # (N, M)
        p_t = tl.math.exp2(logits_base2(qk_t, qk_scale, softcap_scale, SOFTCAP)
                           - lse[None, :] * 1.4426950408889634)
        p_t = tl.where(visible_t(cols, rows, diag, left, right, seqlen_q, seqlen_k), p_t, 0.0)
        dv += tl.dot(dot_operand(p_t, q_rows.dtype, INTERPRETED_BF16), do)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = softcap_grad(p_t * (dp_t - delta[None, :]), qk_t, softcap_scale, SOFTCAP)
        dk += tl.dot(dot_operand(ds_t, q_rows.dtype, INTERPRETED_BF16), q)
    return dk, dv


@triton.jit
def attention_bwd_dkdv_kernel(
    q_rows, k_rows, v_rows, do_rows, dk_ptr, dv_ptr, lse_ptr, delta_ptr,
    cu_seqlens_q, cu_seqlens_k, softmax_scale, qk_scale, softcap_scale,
    seqlen_q, seqlen_k, total_q, nheads, nheads_kv, left, right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    VARLEN: tl.constexpr, SOFTCAP: tl.constexpr, INTERPRETED_BF16: tl.constexpr,
):
    batch = tl.program_id(1) // nheads_kv
    kv_head = tl.program_id(1) % nheads_kv
    q_start, seqlen_q = sequence_bounds(batch, cu_seqlens_q, seqlen_q, VARLEN)
    k_start, seqlen_k = sequence_bounds(batch, cu_seqlens_k, seqlen_k, VARLEN)
    n0 = tl.program_id(0) * BLOCK_N
    if n0 >= seqlen_k:  # varlen: the grid covers the longest sequence
        return
    diag = seqlen_k - seqlen_q
    group_size = nheads // nheads_kv
    cols = n0 + tl.arange(0, BLOCK_N)
    k = k_rows.load([k_start + n0, kv_head * BLOCK_D])
    v = v_rows.load([k_start + n0, kv_head * BLOCK_D])
    if INTERPRETED_BF16:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo, _, _, hi = query_tile_range(n0, diag, left, right, seqlen_q, BLOCK_M, BLOCK_N)
    for head in range(kv_head * group_size, (kv_head + 1) * group_size):
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_rows, do_rows, lse_ptr, delta_ptr, q_start, head,
                             total_q, lo, hi, cols, diag, left, right, seqlen_q, seqlen_k,
                             qk_scale, softcap_scale, BLOCK_M, BLOCK_D, SOFTCAP, INTERPRETED_BF16)
    _store_rows(dk_ptr, dk * softmax_scale, k_start + n0, tl.arange(0, BLOCK_N), seqlen_k - n0,
                kv_head, nheads_kv, BLOCK_D, HEAD_DIM, INTERPRETED_BF16)
    _store_rows(dv_ptr, dv, k_start + n0, tl.arange(0, BLOCK_N), seqlen_k - n0,
                kv_head, nheads_kv, BLOCK_D, HEAD_DIM, INTERPRETED_BF16)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_rows, v_rows, k_start, kv_col, start, end, rows,
              diag, left, right, seqlen_q, seqlen_k, qk_scale, softcap_scale,
              BLOCK_N: tl.constexpr, MASKED: tl.constexpr, SOFTCAP: tl.constexpr,
              INTERPRETED_BF16: tl.constexpr):
    """Accumulate dQ (fp32, unscaled) over key tiles [start, end)."""
    for n0 in tl.range(start, end, BLOCK_N):
        k = k_rows.load([k_start + n0, kv_col])
        v = v_rows.load([k_start + n0, kv_col])
        if INTERPRETED_BF16:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k))
        p = tl.math.exp2(logits_base2(qk, qk_scale, softcap_scale, SOFTCAP) - lse[:, None])
        if MASKED:
            cols = n0 + tl.arange(0, BLOCK_N)
            p = tl.where(visible(rows, cols, diag, left, right, seqlen_q, seqlen_k), p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = softcap_grad(p * (dp - delta[:, None]), qk, softcap_scale, SOFTCAP)
        dq += tl.dot(dot_operand(ds, k_rows.dtype, INTERPRETED_BF16), k)
    return dq


@triton.jit
def attention_bwd_dq_kernel(
    q_rows, k_rows, v_rows, do_rows, dq_ptr, lse_ptr, delta_ptr, cu_seqlens_q, cu_seqlens_k,
    softmax_scale, qk_scale, softcap_scale, seqlen_q, seqlen_k, total_q, nheads, group_size,
    left, right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    REVERSE_M: tl.constexpr, VARLEN: tl.constexpr, SOFTCAP: tl.constexpr, INTERPRETED_BF16: tl.constexpr,
):
    batch = tl.program_id(1) // nheads
    head = tl.program_id(1) % nheads
    q_start, seqlen_q = sequence_bounds(batch, cu_seqlens_q, seqlen_q, VARLEN)
    k_start, seqlen_k = sequence_bounds(batch, cu_seqlens_k, seqlen_k, VARLEN)
    num_m = tl.cdiv(seqlen_q, BLOCK_M)
    pid_m = tl.program_id(0)
    if pid_m >= num_m:
        return
    if REVERSE_M:
        pid_m = num_m - 1 - pid_m
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    diag = seqlen_k - seqlen_q
    row_offs = wide(head) * total_q + q_start + rows
    lse = tl.load(lse_ptr + row_offs, mask=rows < seqlen_q, other=float("inf")) * 1.4426950408889634
    delta = tl.load(delta_ptr + row_offs, mask=rows < seqlen_q, other=0.0)
    q = q_rows.load([q_start + m0, head * BLOCK_D])
    do = do_rows.load([q_start + m0, head * BLOCK_D])
    if INTERPRETED_BF16:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, interior_lo, interior_hi, hi = key_tile_range(
        m0, diag, left, right, seqlen_k, BLOCK_M, BLOCK_N)
    kv_col = (head // group_size) * BLOCK_D
    dq = _dq_tiles(dq, q, do, lse, delta, k_rows, v_rows, k_start, kv_col, lo, interior_lo,
                   rows, diag, left, right, seqlen_q, seqlen_k, qk_scale, softcap_scale,
                   BLOCK_N, True, SOFTCAP, INTERPRETED_BF16)
    dq = _dq_tiles(dq, q, do, lse, delta, k_rows, v_rows, k_start, kv_col, interior_lo,
                   interior_hi, rows, diag, left, right, seqlen_q, seqlen_k, qk_scale,
                   softcap_scale, BLOCK_N, False, SOFTCAP, INTERPRETED_BF16)
    dq = _dq_tiles(dq, q, do, lse, delta, k_rows, v_rows, k_start, kv_col, interior_hi, hi,
                   rows, diag, left, right, seqlen_q, seqlen_k, qk_scale, softcap_scale,
                   BLOCK_N, True, SOFTCAP, INTERPRETED_BF16)
    _store_rows(dq_ptr, dq * softmax_scale, q_start + m0, tl.arange(0, BLOCK_M), seqlen_q - m0,
                head, nheads, BLOCK_D, HEAD_DIM, INTERPRETED_BF16)


def attention_delta(out, dout, dlse):
    """delta = rowsum(dO * O) - dLSE as (nheads, rows) fp32, the layout of the kernels' lse."""
    batch, seqlen_q, nheads, head_dim = out.shape
    total_q = batch * seqlen_q
    delta = torch.empty(nheads, total_q, device=out.device, dtype=torch.float32)
    block_d = configs.padded_head_dim(head_dim)
    bm = configs.PREPROCESS_BLOCK_M
    dout_rows = dout.reshape(total_q, nheads, head_dim)  # a view unless dout's batch stride is odd
    attention_bwd_preprocess_kernel[(triton.cdiv(total_q, bm), nheads)](
        out, dout_rows, delta, total_q, nheads, dout_rows.stride(0), dout_rows.stride(1),
        BLOCK_M=bm, BLOCK_D=block_d, HEAD_DIM=head_dim)
    if dlse is not None:
        delta -= dlse
    return delta


def portable_backward(dout, q, k, v, out, lse, dlse, args):
    """Gradients (dq, dk, dv) of the forward's (out, lse); lse and dlse are (h, rows)."""
    batch, seqlen_q, nheads, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    varlen = args.cu_seqlens_q is not None
    num_seqs = args.cu_seqlens_q.numel() - 1 if varlen else batch
    max_q = args.max_seqlen_q if varlen else seqlen_q
    max_k = args.max_seqlen_k if varlen else seqlen_k
    total_q = batch * seqlen_q
    block_d = configs.padded_head_dim(head_dim)
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    delta = attention_delta(out, dout, dlse)
    left, right = window_bounds(max_q, max_k, args.causal, args.window)
    qk_scale, softcap_scale = score_scales(args.softmax_scale, args.softcap)
    common = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, VARLEN=varlen, SOFTCAP=args.softcap > 0,
                  INTERPRETED_BF16=interpreted_bf16(q.dtype))

    cfg = configs.BACKWARD_DKDV[block_d]
    attention_bwd_dkdv_kernel[(triton.cdiv(max_k, cfg.block_n), num_seqs * nheads_kv)](
        row_descriptor(q, cfg.block_m, block_d), row_descriptor(k, cfg.block_n, block_d),
        row_descriptor(v, cfg.block_n, block_d), row_descriptor(dout, cfg.block_m, block_d),
        dk, dv, lse, delta, args.cu_seqlens_q, args.cu_seqlens_k, args.softmax_scale, qk_scale,
        softcap_scale, seqlen_q, seqlen_k, total_q, nheads, nheads_kv, left, right,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, **common,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    cfg = configs.BACKWARD_DQ[block_d]
    attention_bwd_dq_kernel[(triton.cdiv(max_q, cfg.block_m), num_seqs * nheads)](
        row_descriptor(q, cfg.block_m, block_d), row_descriptor(k, cfg.block_n, block_d),
        row_descriptor(v, cfg.block_n, block_d), row_descriptor(dout, cfg.block_m, block_d),
        dq, lse, delta, args.cu_seqlens_q, args.cu_seqlens_k, args.softmax_scale, qk_scale,
        softcap_scale, seqlen_q, seqlen_k, total_q, nheads, nheads // nheads_kv, left, right,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, REVERSE_M=args.causal, **common,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    dsink = None
    if args.sink is not None:
        # d sink_h = -sum over rows of P_sink * delta, P_sink = exp(sink_h - lse)
        p_sink = torch.exp(args.sink.float()[:, None] - lse)
        dsink = -(p_sink * delta).sum(1)
    return dq, dk, dv, dsink


def inspect_cases(arch: int):
    """Each shipped backward configuration, compiled for `arch` without a GPU (bf16)."""
    from .compile_target import InspectCase, compile_tl, tl_desc_type

    scalars = dict(cu_seqlens_q="*i32", cu_seqlens_k="*i32", softmax_scale="fp32",
                   qk_scale="fp32", softcap_scale="fp32", seqlen_q="i32", seqlen_k="i32",
                   total_q="i32", nheads="i32", left="i32", right="i32")
    flags = dict(VARLEN=False, SOFTCAP=False, INTERPRETED_BF16=False)

    def rows(cfg, block_d):
        def desc(n):
            return tl_desc_type("bf16", [n, block_d])
        return dict(q_rows=desc(cfg.block_m), k_rows=desc(cfg.block_n),
                    v_rows=desc(cfg.block_n), do_rows=desc(cfg.block_m))

    def dkdv(block_d, cfg):
        signature = dict(rows(cfg, block_d), dk_ptr="*bf16", dv_ptr="*bf16", lse_ptr="*fp32",
                         delta_ptr="*fp32", nheads_kv="i32", **scalars)
        constexprs = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
                          HEAD_DIM=block_d, **flags)
        return compile_tl(attention_bwd_dkdv_kernel, signature, constexprs, arch=arch,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    def dq(block_d, cfg):
        signature = dict(rows(cfg, block_d), dq_ptr="*bf16", lse_ptr="*fp32", delta_ptr="*fp32",
                         group_size="i32", **scalars)
        constexprs = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
                          HEAD_DIM=block_d, REVERSE_M=True, **flags)
        return compile_tl(attention_bwd_dq_kernel, signature, constexprs, arch=arch,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    def preprocess(block_d):
        signature = dict(o_ptr="*bf16", do_ptr="*bf16", delta_ptr="*fp32", total_rows="i32",
                         nheads="i32", stride_do_row="i32", stride_do_head="i32")
        constexprs = dict(BLOCK_M=configs.PREPROCESS_BLOCK_M, BLOCK_D=block_d, HEAD_DIM=block_d)
        return compile_tl(attention_bwd_preprocess_kernel, signature, constexprs, arch=arch,
                          num_warps=4)

    cases = []
    for block_d in configs.HEAD_DIMS:
        dkdv_cfg, dq_cfg = configs.BACKWARD_DKDV[block_d], configs.BACKWARD_DQ[block_d]
        cases += [
            InspectCase("portable_bwd_preprocess", f"d{block_d}", lambda d=block_d: preprocess(d)),
            InspectCase("portable_bwd_dkdv", f"d{block_d} {dkdv_cfg}",
                        lambda d=block_d, c=dkdv_cfg: dkdv(d, c)),
            InspectCase("portable_bwd_dq", f"d{block_d} {dq_cfg}",
                        lambda d=block_d, c=dq_cfg: dq(d, c)),
        ]
    return cases
