"""Portable attention forward in Triton language (any recent NVIDIA GPU, CPU interpreter).

One program computes BLOCK_M query rows of one (sequence, head): it streams the K/V tiles
those rows can see, keeps a running row max and row sum (online softmax, base 2), and
writes O and the natural-log LSE. Interior tiles skip the mask; only edge tiles (causal
diagonal, window borders, the ragged last key tile) pay for it. A learnable sink enters
as the initial (max, sum) = (sink, 1): one extra term in every row's denominator.
"""
import os

import torch
import triton
import triton.language as tl

from .. import configs
from ..ex2 import exp2_split
from .masking import key_tile_range, visible
from .scores import dot_operand, logits_base2, round_to, sequence_bounds, wide
from .tma import row_descriptor

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tiles(acc, row_max, row_sum, q, k_rows, v_rows, k_start, kv_col,
                  start, end, rows, diag, left, right, seqlen_q, seqlen_k, qk_scale, softcap_scale,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, SOFTCAP: tl.constexpr,
                  POLY_EIGHTHS: tl.constexpr, INTERPRETED_BF16: tl.constexpr):
    """Online softmax over key tiles [start, end): returns updated (acc, row_max, row_sum).

    POLY_EIGHTHS of each tile's columns take exp2 as an FMA polynomial (flash256.ex2)."""
    for n0 in tl.range(start, end, BLOCK_N):
        k = k_rows.load([k_start + n0, kv_col])
        v = v_rows.load([k_start + n0, kv_col])
        if INTERPRETED_BF16:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = logits_base2(tl.dot(q, tl.trans(k)), qk_scale, softcap_scale, SOFTCAP)
        if MASKED:
            cols = n0 + tl.arange(0, BLOCK_N)
            s = tl.where(visible(rows, cols, diag, left, right, seqlen_q, seqlen_k), s, -float("inf"))
        new_max = tl.maximum(row_max, tl.max(s, 1))
        if MASKED:
            # A row with nothing visible yet keeps max -inf; subtract 0 so exp2 gives 0, not NaN.
            new_max_safe = tl.where(new_max == -float("inf"), 0.0, new_max)
        else:
            new_max_safe = new_max
        p = exp2_split(s - new_max_safe[:, None], POLY_EIGHTHS)
        alpha = tl.math.exp2(row_max - new_max_safe)
        row_sum = row_sum * alpha + tl.sum(p, 1)
        p = dot_operand(p, v_rows.dtype, INTERPRETED_BF16)
        acc = acc * alpha[:, None] + tl.dot(p, v)
        row_max = new_max
    return acc, row_max, row_sum


@triton.jit
def attention_fwd_kernel(
    q_rows, k_rows, v_rows, o_ptr, lse_ptr, sink_ptr, cu_seqlens_q, cu_seqlens_k,
    qk_scale, softcap_scale, seqlen_q, seqlen_k, total_q, nheads, group_size, left, right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    REVERSE_M: tl.constexpr, VARLEN: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_SINK: tl.constexpr, POLY_EIGHTHS: tl.constexpr, INTERPRETED_BF16: tl.constexpr,
):
    batch = tl.program_id(1) // nheads
    head = tl.program_id(1) % nheads
    q_start, seqlen_q = sequence_bounds(batch, cu_seqlens_q, seqlen_q, VARLEN)
    k_start, seqlen_k = sequence_bounds(batch, cu_seqlens_k, seqlen_k, VARLEN)
    num_m = tl.cdiv(seqlen_q, BLOCK_M)
    pid_m = tl.program_id(0)
    if pid_m >= num_m:  # varlen: the grid covers the longest sequence
        return
    if REVERSE_M:  # causal: the longest row blocks start first
        pid_m = num_m - 1 - pid_m
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    diag = seqlen_k - seqlen_q

    q = q_rows.load([q_start + m0, head * BLOCK_D])
    if INTERPRETED_BF16:
        q = q.to(tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if HAS_SINK:
        row_max = tl.zeros([BLOCK_M], dtype=tl.float32) + tl.load(sink_ptr + head) * 1.4426950408889634
        row_sum = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    else:
        row_max = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
        row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)

    lo, interior_lo, interior_hi, hi = key_tile_range(
        m0, diag, left, right, seqlen_k, BLOCK_M, BLOCK_N)
    kv_col = (head // group_size) * BLOCK_D
    acc, row_max, row_sum = _attend_tiles(
        acc, row_max, row_sum, q, k_rows, v_rows, k_start, kv_col, lo, interior_lo, rows,
        diag, left, right, seqlen_q, seqlen_k, qk_scale, softcap_scale,
        BLOCK_N, True, SOFTCAP, POLY_EIGHTHS, INTERPRETED_BF16)
    acc, row_max, row_sum = _attend_tiles(
        acc, row_max, row_sum, q, k_rows, v_rows, k_start, kv_col, interior_lo, interior_hi, rows,
        diag, left, right, seqlen_q, seqlen_k, qk_scale, softcap_scale,
        BLOCK_N, False, SOFTCAP, POLY_EIGHTHS, INTERPRETED_BF16)
    acc, row_max, row_sum = _attend_tiles(
        acc, row_max, row_sum, q, k_rows, v_rows, k_start, kv_col, interior_hi, hi, rows,
        diag, left, right, seqlen_q, seqlen_k, qk_scale, softcap_scale,
        BLOCK_N, True, SOFTCAP, POLY_EIGHTHS, INTERPRETED_BF16)

    empty = row_sum == 0.0  # rows that see no key (and no sink): output 0, lse -inf
    row_sum = tl.where(empty, 1.0, row_sum)
    out = acc / row_sum[:, None]
    in_seq = rows < seqlen_q
    dims = tl.arange(0, BLOCK_D)
    o_offs = (q_start + rows).to(tl.int64)[:, None] * (nheads * HEAD_DIM) + head * HEAD_DIM + dims[None, :]
    tl.store(o_ptr + o_offs, round_to(out, o_ptr.dtype.element_ty, INTERPRETED_BF16),
             mask=in_seq[:, None] & (dims[None, :] < HEAD_DIM))
    lse = tl.where(empty, -float("inf"), (row_max + tl.math.log2(row_sum)) * 0.6931471805599453)
    tl.store(lse_ptr + wide(head) * total_q + q_start + rows, lse, mask=in_seq)


def window_bounds(seqlen_q: int, seqlen_k: int, causal: bool, window: tuple[int, int]):
    """(left, right) as kernel integers: an unbounded side becomes a number past any index."""
    unbounded = seqlen_q + seqlen_k + 1
    left, right = window
    left = unbounded if left < 0 else left
    right = 0 if causal else (unbounded if right < 0 else right)
    return left, right


def interpreted_bf16(dtype: torch.dtype) -> bool:
    """bf16 under Triton 3.6's interpreter, which multiplies bf16 bit patterns in tl.dot (the kernels upcast tiles
    to fp32 before their dots there) and truncates fp32 -> bf16 casts (they round with `round_to`)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and dtype == torch.bfloat16


def score_scales(softmax_scale: float, softcap: float):
    """(qk_scale, softcap_scale) for logits_base2."""
    if softcap > 0:
        return softcap * LOG2E, softmax_scale / softcap
    return softmax_scale * LOG2E, 1.0


def portable_forward(q, k, v, args):
    """Rows layout: q (b, s_q, h, d) and k/v (b, s_k, h_kv, d), or packed (1, total, h, d) with
    args.cu_seqlens_*. Returns out like q (contiguous) and lse (h, b * s_q) fp32."""
    batch, seqlen_q, nheads, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    varlen = args.cu_seqlens_q is not None
    num_seqs = args.cu_seqlens_q.numel() - 1 if varlen else batch
    max_q = args.max_seqlen_q if varlen else seqlen_q
    max_k = args.max_seqlen_k if varlen else seqlen_k
    total_q = batch * seqlen_q
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty(nheads, total_q, device=q.device, dtype=torch.float32)
    block_d = configs.padded_head_dim(head_dim)
    cfg = configs.FORWARD[block_d]
    left, right = window_bounds(max_q, max_k, args.causal, args.window)
    qk_scale, softcap_scale = score_scales(args.softmax_scale, args.softcap)
    grid = (triton.cdiv(max_q, cfg.block_m), num_seqs * nheads)
    attention_fwd_kernel[grid](
        row_descriptor(q, cfg.block_m, block_d), row_descriptor(k, cfg.block_n, block_d),
        row_descriptor(v, cfg.block_n, block_d), out, lse, args.sink, args.cu_seqlens_q,
        args.cu_seqlens_k, qk_scale, softcap_scale, seqlen_q, seqlen_k, total_q, nheads,
        nheads // nheads_kv, left, right,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, HEAD_DIM=head_dim,
        REVERSE_M=args.causal, VARLEN=varlen, SOFTCAP=args.softcap > 0,
        HAS_SINK=args.sink is not None, POLY_EIGHTHS=args.exp2_poly_eighths,
        INTERPRETED_BF16=interpreted_bf16(q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse


def inspect_cases(arch: int):
    """Each shipped forward configuration, compiled for `arch` without a GPU (bf16)."""
    from .compile_target import InspectCase, compile_tl, tl_desc_type

    def compile_one(block_d, cfg, causal, poly_eighths=0):
        rows = lambda n: tl_desc_type("bf16", [n, block_d])  # noqa: E731
        signature = dict(
            q_rows=rows(cfg.block_m), k_rows=rows(cfg.block_n), v_rows=rows(cfg.block_n),
            o_ptr="*bf16", lse_ptr="*fp32", sink_ptr="*fp32", cu_seqlens_q="*i32",
            cu_seqlens_k="*i32", qk_scale="fp32", softcap_scale="fp32", seqlen_q="i32",
            seqlen_k="i32", total_q="i32", nheads="i32", group_size="i32", left="i32", right="i32")
        constexprs = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
                          HEAD_DIM=block_d, REVERSE_M=causal, VARLEN=False, SOFTCAP=False,
                          HAS_SINK=False, POLY_EIGHTHS=poly_eighths, INTERPRETED_BF16=False)
        return compile_tl(attention_fwd_kernel, signature, constexprs, arch=arch,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    cases = [InspectCase("portable_fwd", f"d{block_d} {cfg} causal={causal}",
                         lambda d=block_d, c=cfg, causal=causal: compile_one(d, c, causal))
             for block_d, cfg in configs.FORWARD.items() for causal in (False, True)]
    # exp2 emulation: MUFU.EX2 falls and FFMA rises with the polynomial share
    cases += [InspectCase("portable_fwd", f"d{block_d} {cfg} causal=False exp2_poly={eighths}/8",
                          lambda d=block_d, c=cfg, k=eighths: compile_one(d, c, False, k))
              for block_d, cfg in configs.FORWARD.items() for eighths in (2, 4)]
    return cases
