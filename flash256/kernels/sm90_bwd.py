"""Hopper (sm_90a) attention backward in Gluon: a dK/dV kernel and a dQ kernel, or one fused kernel.

Dispatched by default on sm_90 for d = 64/128/256: plain, causal, sliding-window and soft-capped
attention, learnable sinks and packed (varlen) batches (sm90_rows.py). d=256 is atomic-free: two kernels.
d <= 128 computes dQ inside the dK/dV kernel and adds it to an fp32 buffer with TMA bulk reductions, whose
order varies run to run; deterministic=True (and a window with a soft cap) runs that kernel without the dQ
part, then the dQ kernel. Measured on an H200 (BENCHMARKS.md, NOTES.md). In `python -m flash256.inspect`'s
default list; the d=256 dQ kernel and the d=128 dK/dV kernel spill a few bytes (the shared-memory bases the
wgmma descriptors start from, and bounds), declared in DQ_D256_KNOWN_SPILL_BYTES and
DKDV_D128_KNOWN_SPILL_BYTES.

With S = Q K^T, P = exp(scale S - lse), dP = dO V^T, dS = P * (dP - delta) (delta = rowsum(dO O) - dLSE):
    dV = P^T dO,   dK = scale dS^T Q,   dQ = scale dS K.

dK/dV kernel: one CTA per (key block, batch, kv head). K and V stay in shared memory; a producer warp
streams Q/dO tiles of every query head of the GQA group through a TMA ring (the group reduction happens in
the accumulators: no extra pass, no atomics). The transposed formulation keeps keys on the rows, so P^T and
dS^T come out of their GEMMs in the A-operand shape of the next GEMM. The two consumer warpgroups share a
tile's four GEMMs in one of two ways (Sm90BwdDkdvConfig.key_split):
  * GEMM split (d=256, 64 keys): warpgroup 0 computes S^T = K Q^T (wgmma, SS), P^T = exp2(...) in registers
    and dV += P^T dO (RS); warpgroup 1 dP^T = V dO^T (SS), dS^T = P^T * (dP^T - delta) and dK += dS^T Q (RS),
    taking P^T from warpgroup 0 through a small fp32 shared-memory exchange ring. Each owns one 64 x 256 fp32
    accumulator (128 registers/thread): both would not fit one warpgroup.
  * key split (d <= 128, 128 keys): each warpgroup owns 64 of the keys with both accumulators and all four
    GEMMs, and the Q/dO tiles are shared: every streamed byte feeds 128 keys, half the traffic per GEMM.
    P^T and dS^T stay in registers as the A operands of dV and dK (RS), each warpgroup taking a tile from its
    S^T to its dK before the next (the producer stages each tile's lse and delta in shared memory). dS^T also
    goes to shared memory for the tile's dQ = dS K over both warpgroups' keys (fused_dq): 5 GEMMs per tile instead
    of the two kernels' 7. At d=128 each warpgroup computes half of dQ's head dims (dq_halves), at d=64
    warpgroup 0 all of it.
Either way one warpgroup's elementwise work overlaps the other's GEMMs.

dQ kernel: one CTA per (128-query block, batch, head): one 8-warp consumer partition (two warpgroups,
64 query rows each, in lockstep) with Q and dO resident; K and V blocks stream through TMA rings.
(Two 4-warp partitions, as in the forward, spill at d=256: the worker partition keeps the 2 x 16
loop-invariant wgmma descriptors of Q and dO in ordinary registers; the default partition keeps them
in uniform registers.)
S = Q K^T and dP = dO V^T (SS), dS in registers as the A operand of dQ += dS K (RS); the dQ GEMM of
block j-1 runs while the warpgroup computes dS of block j.

Causal and sliding windows (bottom-right, sm90_masking.py: query i sees key j iff
i + Sk - Sq - left <= j <= i + Sk - Sq + right): tiles that see nothing are never loaded, only tiles
crossing a window edge are masked (P is masked after exp2, so rows with lse = -inf give 0, not NaN).
A soft cap multiplies dS by (1 - tanh^2): warpgroup 0 sends P^T (1 - tanh^2) to warpgroup 1.
Ragged ends: query rows past a sequence's end (zero-filled by TMA, or the next packed sequence's rows) get
lse = +inf, so P = 0; the dQ kernel masks keys past seqlen_k in its last block; dK/dV rows past seqlen_k
are clipped by the TMA store, or skipped by the masked store of a packed tile (sm90_rows.py).

Conventions as portable_backward: q/dout (B, Sq, H, D), k/v (B, Sk, Hkv, D), lse and delta (H, B*Sq)
fp32 with natural-log lse; dq/dk/dv in the input dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ..configs import WARPGROUP_ROWS, WarpSpecializedResources
from .portable_bwd import attention_delta
from .portable_fwd import score_scales
from .sm90_masking import (key_blocks, mask_arguments, query_tiles, soft_cap, unmasked_key_blocks, visible_keys,
                           visible_queries_t, window_offsets)
from .sm90_fwd import _GL_DTYPES, _SIG_DTYPES, _tma_operand, int_placeholder, io_block, smem_layout, tma_descriptor
from .sm90_rows import clip_to_sequence, sequence_rows, store_tile, tma_reduce_add, zero_rows_past

BARRIER_BYTES = 8
LOG2E = gl.constexpr(1.4426950408889634)  # lse is natural-log; the kernels work in base 2


# --------------------------------------------------------------------------------------------------
# Configurations and their resource accounting
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sm90BwdDkdvConfig(WarpSpecializedResources):
    """dK/dV kernel: BLOCK_N keys per CTA, BLOCK_M-row Q/dO tiles streamed. Two ways to share a tile's four
    GEMMs between the two consumer warpgroups:
      GEMM split (d=256): 64 keys; warpgroup 0 computes S^T, P^T and dV, warpgroup 1 dP^T, dS^T and dK (P^T
        crosses through shared memory). One accumulator per warpgroup: all d=256 leaves room for.
      key split (d <= 128): 128 keys; each warpgroup owns 64 of them with both accumulators and all four
        GEMMs. Every streamed Q/dO byte then feeds 128 keys instead of 64: half the Q/dO traffic per GEMM."""
    head_dim: int
    qdo_stages: int  # depth of the Q/dO ring (one stage = a Q tile + a dO tile)
    p_buffers: int = 0  # depth of the fp32 P^T exchange ring between the two warpgroups (GEMM split only)
    key_split: bool = False
    # key split, d <= 128: dQ = dS K of every tile computed here too (from both warpgroups' dS^T in shared memory)
    # and added to an fp32 dQ with TMA bulk reductions: no dQ kernel, 5 GEMMs instead of 7.
    # deterministic=True runs the same kernel without it, then the dQ kernel.
    fused_dq: bool = False
    # fused dQ split by head-dim halves: each warpgroup computes and reduces half of dQ's columns, issued between
    # its dV and dK (flash-attn-4's AtomLayoutMdQ=1 and order). Otherwise warpgroup 0 does the whole dQ after its
    # tile. Measured (H100, NOTES.md twenty-sixth session): d=128 +3-5% non-causal, level causal; d=64 -3..-5%.
    dq_halves: bool = False
    block_m: int = 64
    consumer_regs: int = 240
    producer_regs: int = 24
    elem_bytes: int = 2

    @property
    def block_n(self) -> int:
        return 2 * WARPGROUP_ROWS if self.key_split else WARPGROUP_ROWS

    @property
    def smem_kv(self) -> int:  # resident K and V; dV / dK are staged there for their TMA stores
        return 2 * self.block_n * self.head_dim * self.elem_bytes

    @property
    def smem_qdo(self) -> int:
        return self.qdo_stages * 2 * self.block_m * self.head_dim * self.elem_bytes

    @property
    def smem_p(self) -> int:
        """GEMM split: the fp32 P^T exchange ring. Key split: dS^T of two tiles per warpgroup, 16-bit, for the fused
        dQ (P^T and dS^T are register operands; without the fused dQ the kernel's token slot is never read, and the
        compiler drops it)."""
        if self.key_split:
            return 2 * 2 * WARPGROUP_ROWS * self.block_m * self.elem_bytes if self.fused_dq else 0
        return self.p_buffers * self.block_n * self.block_m * 4

    @property
    def smem_stats(self) -> int:  # key split: the base-2 lse and delta of each Q/dO stage's rows, fp32
        return 2 * self.qdo_stages * self.block_m * 4 if self.key_split else 0

    @property
    def smem_dq(self) -> int:  # fused dQ: one tile's fp32 dQ staged for its TMA reductions
        return self.block_m * self.head_dim * 4 if self.fused_dq else 0

    @property
    def smem_barriers(self) -> int:
        """kv_ready + ready/empty per Q/dO stage + GEMM split: ready/empty per P slot; key split: dS^T
        ready/free per slot."""
        return BARRIER_BYTES * (1 + 2 * self.qdo_stages + (4 if self.key_split else 2 * self.p_buffers))

    @property
    def smem_total(self) -> int:
        return self.smem_kv + self.smem_qdo + self.smem_p + self.smem_stats + self.smem_dq + self.smem_barriers

    # fp32 registers per consumer thread (a warpgroup = 128 threads; its wgmmas have 64 rows)
    @property
    def regs_acc(self) -> int:  # GEMM split: dV or dK; key split: both, 64 x head_dim each
        return (2 if self.key_split else 1) * WARPGROUP_ROWS * self.head_dim // 128

    @property
    def regs_s(self) -> int:  # S^T or dP^T (key split: both), 64 x block_m
        return (2 if self.key_split else 1) * WARPGROUP_ROWS * self.block_m // 128

    @property
    def regs_operand(self) -> int:  # GEMM split: P^T or dS^T in 16 bits, two per register (key split: see check)
        return 0 if self.key_split else self.regs_s // 2

    def describe(self) -> str:
        return (f"dkdv_d{self.head_dim}_n{self.block_n}_m{self.block_m}_s{self.qdo_stages}_p{self.p_buffers}"
                f"{'_keysplit' if self.key_split else ''}"
                f"{'_fuseddq' if self.fused_dq else ''}{'_dqhalves' if self.dq_halves else ''}"
                f" smem={self.smem_total}B (KV {self.smem_kv} + QdO "
                f"{self.smem_qdo} + P {self.smem_p} + stats {self.smem_stats} + dQ {self.smem_dq}) "
                f"regs/thread acc={self.regs_acc} S={self.regs_s} op={self.regs_operand}")

    def check(self) -> None:
        assert (self.p_buffers == 0) == self.key_split, self.describe()
        assert self.key_split or not self.fused_dq, self.describe()
        assert self.fused_dq or not self.dq_halves, self.describe()
        self.check_resources()
        # live in a consumer's inner loop: accumulators + S^T/dP^T + the operands + slack (addresses; holding
        # the previous tile's P^T/dS^T operands across the next S^T/dP^T, 224 of 240 at d=128, serialised the
        # wgmmas: the key split finishes each tile's dV/dK before the next tile's S^T, so its operands replace S^T
        # and dP^T, which regs_operand does not count)
        assert self.regs_acc + self.regs_s + self.regs_operand <= self.consumer_regs - 48, self.describe()


@dataclass(frozen=True)
class Sm90BwdDqConfig(WarpSpecializedResources):
    """dQ kernel: 2 x 64 query rows per CTA (both consumer warpgroups in one 8-warp partition, each
    owning 64 rows of every M = 128 wgmma), BLOCK_N-key K/V blocks. consumer_regs is what Triton gives
    that partition: (65536 - 128 * producer_regs) / 256 rounded down to 8 = 240."""
    head_dim: int
    k_stages: int
    v_stages: int
    block_n: int = 64
    block_m: int = 2 * WARPGROUP_ROWS
    consumer_regs: int = 240
    producer_regs: int = 24
    elem_bytes: int = 2

    @property
    def smem_qdo(self) -> int:  # resident Q and dO; dQ is staged in the Q half for its TMA store
        return 2 * self.block_m * self.head_dim * self.elem_bytes

    @property
    def smem_kv(self) -> int:
        return (self.k_stages + self.v_stages) * self.block_n * self.head_dim * self.elem_bytes

    @property
    def smem_barriers(self) -> int:  # q_ready per half + ready/empty per K and V stage
        return BARRIER_BYTES * (2 + 2 * self.k_stages + 2 * self.v_stages)

    @property
    def smem_total(self) -> int:
        return self.smem_qdo + self.smem_kv + self.smem_barriers

    @property
    def regs_acc(self) -> int:  # dQ, 64 x head_dim
        return WARPGROUP_ROWS * self.head_dim // 128

    @property
    def regs_s(self) -> int:  # S or dP, 64 x block_n
        return WARPGROUP_ROWS * self.block_n // 128

    @property
    def regs_operand(self) -> int:  # dS in 16 bits
        return self.regs_s // 2

    def describe(self) -> str:
        return (f"dq_d{self.head_dim}_m{self.block_m}_n{self.block_n}_k{self.k_stages}_v{self.v_stages} "
                f"smem={self.smem_total}B (QdO {self.smem_qdo} + KV {self.smem_kv}) "
                f"regs/thread acc={self.regs_acc} S+dP={2 * self.regs_s} op={self.regs_operand}")

    def check(self) -> None:
        assert self.block_m == 2 * WARPGROUP_ROWS, self.describe()
        self.check_resources()
        assert self.regs_acc + 2 * self.regs_s + self.regs_operand <= self.consumer_regs - 24, self.describe()


# d=256 dK/dV: K + V 64 KB, 2 Q/dO stages x 64 KB, 2 P^T slots x 16 KB = 224 KB (+ 72 B barriers).
# Registers: accumulator 128 + S^T 32 + operand 16 = 176 of 240.
DKDV_D256 = Sm90BwdDkdvConfig(head_dim=256, qdo_stages=2, p_buffers=2)
# d=128, key split, fused dQ: K + V 64 KB (128 keys), 2 stages x 32 KB (64-row Q/dO tiles), dS^T slots
# 32 KB, lse/delta 1 KB, dQ staging 32 KB = 193 KB (a third stage fits, and spills: NOTES.md). Registers dK + dV
# 128 + S^T + dP^T 64 = 192 of 240; each warpgroup's dQ half (32 more) lives while P^T and dS^T are operands.
DKDV_D128 = Sm90BwdDkdvConfig(head_dim=128, qdo_stages=2, key_split=True, fused_dq=True, dq_halves=True)
# d=64, key split, fused dQ: K + V 32 KB, 4 stages x 16 KB, dS^T 32 KB, lse/delta 2 KB, dQ 16 KB = 146 KB.
# Registers 64 + 64 + 32 (dQ 32).
DKDV_D64 = Sm90BwdDkdvConfig(head_dim=64, qdo_stages=4, key_split=True, fused_dq=True)

# d=256 dQ: Q + dO 128 KB, K 2 x 32 KB, V 1 x 32 KB = 224 KB. V is released right after the dP GEMM,
# K only after the dQ GEMM of the next iteration, so K gets the second stage.
# Registers: dQ 128 + S 32 + dP 32 + dS 16 = 208 of 240.
DQ_D256 = Sm90BwdDqConfig(head_dim=256, k_stages=2, v_stages=1)
# d=128: Q + dO 64 KB, 3 + 3 x 16 KB = 160 KB. Registers 64 + 64 + 16.
DQ_D128 = Sm90BwdDqConfig(head_dim=128, k_stages=3, v_stages=3)
# d=64: Q + dO 32 KB, 4 + 4 x 8 KB = 96 KB. Registers 32 + 64 + 16.
DQ_D64 = Sm90BwdDqConfig(head_dim=64, k_stages=4, v_stages=4)

DKDV_CONFIGS = {cfg.head_dim: cfg for cfg in (DKDV_D256, DKDV_D128, DKDV_D64)}
DQ_CONFIGS = {cfg.head_dim: cfg for cfg in (DQ_D256, DQ_D128, DQ_D64)}
for _cfg in (*DKDV_CONFIGS.values(), *DQ_CONFIGS.values()):
    _cfg.check()


# --------------------------------------------------------------------------------------------------
# dK/dV kernel
# --------------------------------------------------------------------------------------------------
@gluon.jit
def _dkdv_tile_coords(t, m_first, n_m, kv_head, group_size):
    """Tile t of the flattened (query head of the group, query tile) loop."""
    head_in_group = t // n_m
    m_block = m_first + t - head_in_group * n_m
    return kv_head * group_size + head_in_group, m_block


@gluon.jit
def _dkdv_cta_work(cu_seqlens_q, cu_seqlens_k, seqlen_q, seqlen_k, num_kv_heads, window_left, window_right,
                   BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
                   RIGHT_BOUNDED: gl.constexpr, VARLEN: gl.constexpr):
    """The CTA's keys [n_start, n_start + BLOCK_N) of kv head kv_head, the rows of its sequence
    (sm90_rows.sequence_rows: batch, first row, length, flattened first row; for Q and for K), and the query tiles
    that see those keys: m_first .. m_first + n_m - 1, unmasked in [unmasked_lo, unmasked_hi)."""
    n_start = gl.program_id(0) * BLOCK_N
    b = gl.program_id(1) // num_kv_heads
    kv_head = gl.program_id(1) - b * num_kv_heads
    q_rows = sequence_rows(b, cu_seqlens_q, seqlen_q, VARLEN)
    k_rows = sequence_rows(b, cu_seqlens_k, seqlen_k, VARLEN)
    k_len = k_rows[2]
    m_first, n_m, unmasked_lo, unmasked_hi = query_tiles(n_start, q_rows[2], k_len, window_left, window_right,
                                                         BLOCK_M, BLOCK_N, LEFT_BOUNDED, RIGHT_BOUNDED)
    _zero, n_m = clip_to_sequence(0, n_m, n_start, k_len, VARLEN)
    return n_start, kv_head, q_rows, k_rows, m_first, n_m, unmasked_lo, unmasked_hi


@gluon.jit
def _dkdv_producer(q_desc, do_desc, k_desc, v_desc, k_smem, v_smem, q_smem, do_smem, bars, cu_seqlens_q,
                   cu_seqlens_k, seqlen_q, seqlen_k, num_kv_heads, group_size, window_left, window_right,
                   stats, lse_ptr, delta_ptr, total_q,
                   BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                   LEFT_BOUNDED: gl.constexpr, RIGHT_BOUNDED: gl.constexpr, VARLEN: gl.constexpr,
                   STATS: gl.constexpr):
    """K and V of the CTA's BLOCK_N keys once, then every Q/dO tile that sees them (all query heads of the
    group) through the ring; with STATS also the tile's base-2 lse and delta into `stats` (a second arrive on
    the stage's ready barrier)."""
    kv_ready, qdo_ready, qdo_empty = bars
    n_start, kv_head, q_rows, k_rows, m_first, n_m, _lo, _hi = _dkdv_cta_work(
        cu_seqlens_q, cu_seqlens_k, seqlen_q, seqlen_k, num_kv_heads, window_left, window_right, BLOCK_M, BLOCK_N,
        LEFT_BOUNDED, RIGHT_BOUNDED, VARLEN)
    q_batch, q_first, q_len, q_flat = q_rows
    k_batch, k_first, _k_len, _k_flat = k_rows
    mbarrier.expect(kv_ready, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [k_batch, k_first + n_start, kv_head, 0], kv_ready, k_smem)
    tma.async_copy_global_to_shared(v_desc, [k_batch, k_first + n_start, kv_head, 0], kv_ready, v_smem)
    for t in range(group_size * n_m):
        head, m_block = _dkdv_tile_coords(t, m_first, n_m, kv_head, group_size)
        stage = t % STAGES
        mbarrier.wait(qdo_empty.index(stage), ((t // STAGES) & 1) ^ 1)
        mbarrier.expect(qdo_ready.index(stage), q_desc.block_type.nbytes + do_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_batch, q_first + m_block * BLOCK_M, head, 0],
                                        qdo_ready.index(stage), q_smem.index(stage))
        tma.async_copy_global_to_shared(do_desc, [q_batch, q_first + m_block * BLOCK_M, head, 0],
                                        qdo_ready.index(stage), do_smem.index(stage))
        if STATS:
            # the tile's base-2 lse and delta beside it in shared memory: the consumers read them where they
            # use them instead of holding 2 x 16 registers through the tile
            lse_smem, delta_smem = stats
            row_layout: gl.constexpr = gl.BlockedLayout([BLOCK_M // 32], [32], [1], [0])
            lse_smem.index(stage).store(_row_stats(lse_ptr, head, q_flat, m_block, q_len, total_q, float("inf"),
                                                   BLOCK_M, row_layout) * LOG2E)
            delta_smem.index(stage).store(_row_stats(delta_ptr, head, q_flat, m_block, q_len, total_q, 0.0,
                                                     BLOCK_M, row_layout))
            mbarrier.arrive(qdo_ready.index(stage))


@gluon.jit
def _row_stats(ptr, head, q_flat, m_block, q_len, total_q, other: gl.constexpr,
               BLOCK_M: gl.constexpr, layout: gl.constexpr):
    """lse or delta of one query tile of the sequence starting at flattened row q_flat, (H, B*Sq) fp32;
    rows past its length q_len read `other`."""
    rows = m_block * BLOCK_M + gl.arange(0, BLOCK_M, layout)
    base = ptr + head.to(gl.int64) * total_q + q_flat
    return gl.load(base + rows, mask=rows < q_len, other=other)


@gluon.jit
def _probabilities_t(s_t, lse2, n_start, m_block, unmasked_lo, unmasked_hi, qk_scale, softcap_scale,
                     seqlen_q, seqlen_k, window_left, window_right, layout: gl.constexpr, BLOCK_N: gl.constexpr,
                     BLOCK_M: gl.constexpr, LEFT_BOUNDED: gl.constexpr, RIGHT_BOUNDED: gl.constexpr,
                     SOFTCAP: gl.constexpr):
    """(P^T for dV, P^T for dS^T) of a (BLOCK_N keys from n_start) x (query tile m_block) tile, masked when the
    tile is outside [unmasked_lo, unmasked_hi). With a soft cap the second carries the cap's derivative
    (1 - tanh^2), so dS^T = P^T (dP^T - delta) needs no change."""
    t_cap = soft_cap(s_t, softcap_scale, SOFTCAP)
    p_t = gl.exp2(t_cap * qk_scale - lse2[None, :])
    if LEFT_BOUNDED or RIGHT_BOUNDED:
        if (m_block < unmasked_lo) | (m_block >= unmasked_hi):
            keep = visible_queries_t(n_start, m_block * BLOCK_M, seqlen_q, seqlen_k, window_left, window_right,
                                     layout, BLOCK_N, BLOCK_M, LEFT_BOUNDED, RIGHT_BOUNDED)
            p_t = gl.where(keep, p_t, 0.0)
    p_grad = p_t
    if SOFTCAP:
        p_grad = p_t * (1.0 - t_cap * t_cap)
    return p_t, p_grad


@gluon.jit
def _share_probabilities(s_t, t, lse2, n_start, m_block, unmasked_lo, unmasked_hi, qk_scale, softcap_scale,
                         seqlen_q, seqlen_k, window_left, window_right, p_smem, p_ready, p_empty,
                         layout: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr,
                         P_BUFFERS: gl.constexpr, LEFT_BOUNDED: gl.constexpr, RIGHT_BOUNDED: gl.constexpr,
                         SOFTCAP: gl.constexpr):
    """GEMM split: P^T of tile t, which warpgroup 0 keeps for dV; the P^T that dS^T needs goes to warpgroup 1
    through exchange slot t % P_BUFFERS."""
    p_t, p_grad = _probabilities_t(s_t, lse2, n_start, m_block, unmasked_lo, unmasked_hi, qk_scale, softcap_scale,
                                   seqlen_q, seqlen_k, window_left, window_right, layout, BLOCK_N, BLOCK_M,
                                   LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP)
    slot = t % P_BUFFERS
    mbarrier.wait(p_empty.index(slot), ((t // P_BUFFERS) & 1) ^ 1)
    p_smem.index(slot).store(p_grad)
    mbarrier.arrive(p_ready.index(slot))
    return p_t


@gluon.jit
def _received_score_grads(dp_t, delta, t, p_smem, p_ready, p_empty, layout: gl.constexpr,
                          P_BUFFERS: gl.constexpr):
    """dS^T = P^T (dP^T - delta) of tile t, P^T taken from warpgroup 0's exchange slot (arrives masked)."""
    slot = t % P_BUFFERS
    mbarrier.wait(p_ready.index(slot), (t // P_BUFFERS) & 1)
    p_t = p_smem.index(slot).load(layout)
    mbarrier.arrive(p_empty.index(slot))
    return p_t * (dp_t - delta[None, :])


@gluon.jit
def _dkdv_probabilities(k_smem, q_smem, do_smem, p_smem, dv_desc, dv_ptr, bars, lse_ptr, cu_seqlens_q, cu_seqlens_k,
                        qk_scale, softcap_scale, seqlen_q, seqlen_k, num_kv_heads, group_size, total_q,
                        window_left, window_right,
                        BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                        STAGES: gl.constexpr, P_BUFFERS: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
                        RIGHT_BOUNDED: gl.constexpr, SOFTCAP: gl.constexpr,
                        VARLEN: gl.constexpr, st_layout: gl.constexpr, acc_layout: gl.constexpr,
                        op_layout: gl.constexpr):
    """Warpgroup 0: S^T = K Q^T, P^T (shared with warpgroup 1), dV += P^T dO; stores dV."""
    kv_ready, qdo_ready, qdo_empty, p_ready, p_empty = bars
    dtype: gl.constexpr = k_smem.dtype
    col_layout: gl.constexpr = gl.SliceLayout(0, st_layout)

    n_start, kv_head, q_rows, k_rows, m_first, n_m, unmasked_lo, unmasked_hi = _dkdv_cta_work(
        cu_seqlens_q, cu_seqlens_k, seqlen_q, seqlen_k, num_kv_heads, window_left, window_right, BLOCK_M, BLOCK_N,
        LEFT_BOUNDED, RIGHT_BOUNDED, VARLEN)
    _q_batch, _q_first, q_len, q_flat = q_rows
    k_batch, k_first, k_len, _k_flat = k_rows
    n_tiles = group_size * n_m
    dv = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, acc_layout)
    mbarrier.wait(kv_ready, 0)
    if n_tiles > 0:
        # Tile 0: S^T and P^T only.
        head, m_block = _dkdv_tile_coords(0, m_first, n_m, kv_head, group_size)
        lse2 = _row_stats(lse_ptr, head, q_flat, m_block, q_len, total_q, float("inf"), BLOCK_M,
                          col_layout) * LOG2E
        mbarrier.wait(qdo_ready.index(0), 0)
        s_t = warpgroup_mma(k_smem, q_smem.index(0).permute((1, 0)),
                            gl.zeros([BLOCK_N, BLOCK_M], gl.float32, st_layout), use_acc=False, is_async=True)
        s_t = warpgroup_mma_wait(0, deps=(s_t, ))
        p_t = _share_probabilities(s_t, 0, lse2, n_start, m_block, unmasked_lo, unmasked_hi, qk_scale, softcap_scale,
                                   q_len, k_len, window_left, window_right, p_smem, p_ready, p_empty,
                                   st_layout, BLOCK_N, BLOCK_M, P_BUFFERS, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP)
        p_op = gl.convert_layout(p_t.to(dtype), op_layout)
        prev_stage = 0
        for t in range(1, n_tiles):
            # dV += P^T dO of tile t-1 issued before S^T of tile t: the Q/dO stage of tile t-1 is freed ~3 GEMMs
            # before the producer needs it, not ~1 (the other order measured 9-20% slower with this 2-stage ring)
            head, m_block = _dkdv_tile_coords(t, m_first, n_m, kv_head, group_size)
            stage = t % STAGES
            lse2 = _row_stats(lse_ptr, head, q_flat, m_block, q_len, total_q, float("inf"), BLOCK_M,
                              col_layout) * LOG2E
            dv = warpgroup_mma(p_op, do_smem.index(prev_stage), dv, is_async=True)
            mbarrier.wait(qdo_ready.index(stage), (t // STAGES) & 1)
            s_t = warpgroup_mma(k_smem, q_smem.index(stage).permute((1, 0)),
                                gl.zeros([BLOCK_N, BLOCK_M], gl.float32, st_layout), use_acc=False, is_async=True)
            dv, p_op = warpgroup_mma_wait(1, deps=(dv, p_op))
            mbarrier.arrive(qdo_empty.index(prev_stage))
            s_t = warpgroup_mma_wait(0, deps=(s_t, ))
            p_t = _share_probabilities(s_t, t, lse2, n_start, m_block, unmasked_lo, unmasked_hi, qk_scale,
                                       softcap_scale, q_len, k_len, window_left, window_right, p_smem, p_ready,
                                       p_empty, st_layout, BLOCK_N, BLOCK_M, P_BUFFERS, LEFT_BOUNDED, RIGHT_BOUNDED,
                                       SOFTCAP)
            p_op = gl.convert_layout(p_t.to(dtype), op_layout)
            prev_stage = stage
        dv = warpgroup_mma(p_op, do_smem.index(prev_stage), dv, is_async=True)
        dv, p_op = warpgroup_mma_wait(0, deps=(dv, p_op))
        mbarrier.arrive(qdo_empty.index(prev_stage))
    # K is dead (only this warpgroup reads it): stage dV there; rows past seqlen_k are not written.
    store_tile(dv.to(dtype), k_smem, dv_desc, dv_ptr, num_kv_heads * HEAD_DIM, k_batch, k_first, n_start, kv_head,
               k_len, BLOCK_N, HEAD_DIM, 4, VARLEN)


@gluon.jit
def _dkdv_score_grads(v_smem, q_smem, do_smem, p_smem, dk_desc, dk_ptr, bars, delta_ptr, cu_seqlens_q, cu_seqlens_k,
                      softmax_scale, seqlen_q, seqlen_k, num_kv_heads, group_size, total_q, window_left,
                      window_right, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                      STAGES: gl.constexpr, P_BUFFERS: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
                      RIGHT_BOUNDED: gl.constexpr, VARLEN: gl.constexpr,
                      st_layout: gl.constexpr, acc_layout: gl.constexpr, op_layout: gl.constexpr):
    """Warpgroup 1: dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += dS^T Q; stores scale * dK."""
    kv_ready, qdo_ready, qdo_empty, p_ready, p_empty = bars
    dtype: gl.constexpr = v_smem.dtype
    col_layout: gl.constexpr = gl.SliceLayout(0, st_layout)

    n_start, kv_head, q_rows, k_rows, m_first, n_m, _lo, _hi = _dkdv_cta_work(
        cu_seqlens_q, cu_seqlens_k, seqlen_q, seqlen_k, num_kv_heads, window_left, window_right, BLOCK_M, BLOCK_N,
        LEFT_BOUNDED, RIGHT_BOUNDED, VARLEN)
    _q_batch, _q_first, q_len, q_flat = q_rows
    k_batch, k_first, k_len, _k_flat = k_rows
    n_tiles = group_size * n_m
    dk = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, acc_layout)
    mbarrier.wait(kv_ready, 0)
    if n_tiles > 0:
        # Tile 0: dP^T and dS^T only. P^T arrives masked from warpgroup 0, so dS^T needs no mask.
        head, m_block = _dkdv_tile_coords(0, m_first, n_m, kv_head, group_size)
        delta = _row_stats(delta_ptr, head, q_flat, m_block, q_len, total_q, 0.0, BLOCK_M, col_layout)
        mbarrier.wait(qdo_ready.index(0), 0)
        dp_t = warpgroup_mma(v_smem, do_smem.index(0).permute((1, 0)),
                             gl.zeros([BLOCK_N, BLOCK_M], gl.float32, st_layout), use_acc=False, is_async=True)
        dp_t = warpgroup_mma_wait(0, deps=(dp_t, ))
        ds_t = _received_score_grads(dp_t, delta, 0, p_smem, p_ready, p_empty, st_layout, P_BUFFERS)
        ds_op = gl.convert_layout(ds_t.to(dtype), op_layout)
        prev_stage = 0
        for t in range(1, n_tiles):
            head, m_block = _dkdv_tile_coords(t, m_first, n_m, kv_head, group_size)
            stage = t % STAGES
            delta = _row_stats(delta_ptr, head, q_flat, m_block, q_len, total_q, 0.0, BLOCK_M, col_layout)
            dk = warpgroup_mma(ds_op, q_smem.index(prev_stage), dk, is_async=True)  # first, as dV in warpgroup 0
            mbarrier.wait(qdo_ready.index(stage), (t // STAGES) & 1)
            dp_t = warpgroup_mma(v_smem, do_smem.index(stage).permute((1, 0)),
                                 gl.zeros([BLOCK_N, BLOCK_M], gl.float32, st_layout), use_acc=False, is_async=True)
            dk, ds_op = warpgroup_mma_wait(1, deps=(dk, ds_op))
            mbarrier.arrive(qdo_empty.index(prev_stage))
            dp_t = warpgroup_mma_wait(0, deps=(dp_t, ))
            ds_t = _received_score_grads(dp_t, delta, t, p_smem, p_ready, p_empty, st_layout, P_BUFFERS)
            ds_op = gl.convert_layout(ds_t.to(dtype), op_layout)
            prev_stage = stage
        dk = warpgroup_mma(ds_op, q_smem.index(prev_stage), dk, is_async=True)
        dk, ds_op = warpgroup_mma_wait(0, deps=(dk, ds_op))
        mbarrier.arrive(qdo_empty.index(prev_stage))
    # V is dead (only this warpgroup reads it): stage dK there.
    store_tile((dk * softmax_scale).to(dtype), v_smem, dk_desc, dk_ptr, num_kv_heads * HEAD_DIM, k_batch, k_first,
               n_start, kv_head, k_len, BLOCK_N, HEAD_DIM, 4, VARLEN)


@gluon.jit
def _own_keys_scores(k_own, v_own, q_buf, do_buf, st_layout: gl.constexpr, ROWS: gl.constexpr,
                     BLOCK_M: gl.constexpr):
    """Key split: issue S^T = K Q^T and dP^T = V dO^T (async, SS) for this warpgroup's keys."""
    zero = gl.zeros([ROWS, BLOCK_M], gl.float32, st_layout)
    s_t = warpgroup_mma(k_own, q_buf.permute((1, 0)), zero, use_acc=False, is_async=True)
    dp_t = warpgroup_mma(v_own, do_buf.permute((1, 0)), zero, use_acc=False, is_async=True)
    return s_t, dp_t


@gluon.jit
def _own_keys_grads(s_t, dp_t, dv, dk, q_buf, do_buf, lse_buf, delta_buf, n_start, m_block, unmasked_lo,
                    unmasked_hi, qk_scale, softcap_scale, q_len, k_len, window_left, window_right, ds_buf, ds_smem,
                    k_smem, fused, t, head, q_batch, q_first, WARPGROUP: gl.constexpr,
                    dtype: gl.constexpr, st_layout: gl.constexpr, op_layout: gl.constexpr, ROWS: gl.constexpr,
                    BLOCK_M: gl.constexpr, HEAD_DIM: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
                    RIGHT_BOUNDED: gl.constexpr, SOFTCAP: gl.constexpr, FUSED_DQ: gl.constexpr,
                    DQ_HALVES: gl.constexpr):
    """Key split, one tile once its S^T and dP^T are issued: P^T and dS^T stay in registers as the A operands of
    dV += P^T dO (issued once dS^T is out) and dK += dS^T Q (RS: neither goes through shared memory, whose
    bandwidth the SS form spent 12% of on them, NOTES.md). With FUSED_DQ dS^T also goes to shared memory for the
    dQ GEMM: with DQ_HALVES this warpgroup's half of the head dims of dQ = dS K is issued between dV and dK and
    staged while dK runs (flash-attn-4's order); without, warpgroup 0 does the whole dQ after the tile
    (`_fused_dq`). Returns once all GEMMs are done: the tile's Q/dO stage is free."""
    col_layout: gl.constexpr = gl.SliceLayout(0, st_layout)
    s_t = warpgroup_mma_wait(1, deps=(s_t, ))
    p_t, p_grad = _probabilities_t(s_t, lse_buf.load(col_layout), n_start, m_block, unmasked_lo, unmasked_hi,
                                   qk_scale, softcap_scale, q_len, k_len, window_left, window_right, st_layout,
                                   ROWS, BLOCK_M, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP)
    p_op = gl.convert_layout(p_t.to(dtype), op_layout)
    dp_t = warpgroup_mma_wait(0, deps=(dp_t, ))
    ds_t = (p_grad * (dp_t - delta_buf.load(col_layout)[None, :])).to(dtype)
    dv = warpgroup_mma(p_op, do_buf, dv, is_async=True)
    if FUSED_DQ and DQ_HALVES:
        ds_ready, ds_free, dq_stage, dq_desc = fused
        HALF_D: gl.constexpr = HEAD_DIM // 2
        ds_op = gl.convert_layout(ds_t, op_layout)
        ds_smem.index(_ds_slot(WARPGROUP, t)).store(ds_t)  # (not ds_buf: other, unmeasured d=128 machine code)
        fence_async_shared()
        mbarrier.arrive(ds_ready.index(t % 2))
        dq = _issue_dq(t, ds_smem, k_smem.slice(WARPGROUP * HALF_D, HALF_D, dim=1), ds_ready, BLOCK_M)
        dk = warpgroup_mma(ds_op, q_buf, dk, is_async=True)
        dv, dq, p_op = warpgroup_mma_wait(1, deps=(dv, dq, p_op))
        mbarrier.arrive(ds_free.index(t % 2))
        _reduce_dq(dq, dq_stage.slice(WARPGROUP * HALF_D, HALF_D, dim=1), dq_desc, q_batch,
                   q_first + m_block * BLOCK_M, head, WARPGROUP * HALF_D)
    else:
        if FUSED_DQ:
            ds_buf.store(ds_t)
            fence_async_shared()
        ds_op = gl.convert_layout(ds_t, op_layout)
        dk = warpgroup_mma(ds_op, q_buf, dk, is_async=True)
    dv, dk, p_op, ds_op = warpgroup_mma_wait(0, deps=(dv, dk, p_op, ds_op))
    return dv, dk


@gluon.jit
def _ds_slot(warpgroup, t):
    """Key split: the shared-memory slot of tile t's dS^T of a warpgroup (two per warpgroup, alternating)."""
    return 2 * warpgroup + t % 2


@gluon.jit
def _issue_dq(t, ds_smem, k_cols, ds_ready, BLOCK_M: gl.constexpr):
    """DQ_HALVES: issue dQ = dS K of tile t over both warpgroups' keys, for the head-dim columns of k_cols (this
    warpgroup's half of K), once both dS^T of the tile are in."""
    ROWS: gl.constexpr = k_cols.shape[0] // 2
    COLS: gl.constexpr = k_cols.shape[1]
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, COLS, 16])
    mbarrier.wait(ds_ready.index(t % 2), (t // 2) & 1)
    dq = warpgroup_mma(ds_smem.index(_ds_slot(0, t)).permute((1, 0)), k_cols.slice(0, ROWS, dim=0),
                       gl.zeros([BLOCK_M, COLS], gl.float32, dq_layout), use_acc=False, is_async=True)
    return warpgroup_mma(ds_smem.index(_ds_slot(1, t)).permute((1, 0)), k_cols.slice(ROWS, ROWS, dim=0),
                         dq, is_async=True)


@gluon.jit
def _reduce_dq(dq, stage_cols, dq_desc, q_batch, row, head, col):
    """DQ_HALVES: stage this warpgroup's half of a tile's dQ (head-dim columns from col) in its half of the buffer
    and add it to the fp32 dQ with one TMA bulk reduction."""
    tma.store_wait(0)  # this warpgroup's reduction of the previous tile has read its half of the buffer
    stage_cols.store(dq)
    fence_async_shared()
    tma_reduce_add(dq_desc, [q_batch, row, head, col], stage_cols)


@gluon.jit
def _fused_dq(t, head, m_block, ds_smem, k_smem, fused, q_batch, q_first, BLOCK_M: gl.constexpr,
              HEAD_DIM: gl.constexpr):
    """Warpgroup 0 without DQ_HALVES: the whole dQ = dS K of tile t, after its own tile, in two reductions. (Not
    written with `_issue_dq` / `_reduce_dq`: that form compiles to other d=64 machine code than the one measured.)"""
    ds_ready, ds_free, dq_stage, dq_desc = fused
    ROWS: gl.constexpr = k_smem.shape[0] // 2
    HALF_D: gl.constexpr = HEAD_DIM // 2
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, HEAD_DIM, 16])
    slot = t % 2
    mbarrier.wait(ds_ready.index(slot), (t // 2) & 1)
    dq = warpgroup_mma(ds_smem.index(_ds_slot(0, t)).permute((1, 0)), k_smem.slice(0, ROWS, dim=0),
                       gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, dq_layout), use_acc=False, is_async=True)
    dq = warpgroup_mma(ds_smem.index(_ds_slot(1, t)).permute((1, 0)), k_smem.slice(ROWS, ROWS, dim=0),
                       dq, is_async=True)
    dq = warpgroup_mma_wait(0, deps=(dq, ))
    mbarrier.arrive(ds_free.index(slot))
    row = q_first + m_block * BLOCK_M
    tma.store_wait(0)  # the previous tile's reductions have read the buffer
    dq_stage.store(dq)
    fence_async_shared()
    tma_reduce_add(dq_desc, [q_batch, row, head, 0], dq_stage.slice(0, HALF_D, dim=1))
    tma_reduce_add(dq_desc, [q_batch, row, head, HALF_D], dq_stage.slice(HALF_D, HALF_D, dim=1))


@gluon.jit
def _dkdv_own_keys(args, WARPGROUP: gl.constexpr, meta: gl.constexpr):
    """Key split: keys [64 WARPGROUP, 64 WARPGROUP + 64) of the CTA's 128, with all four GEMMs of every tile
    (`_own_keys_grads`); the two warpgroups' tiles overlap each other's GEMMs. FUSED_DQ: once both warpgroups'
    dS^T of a tile are in, the tile's dQ = dS K is added too: by both warpgroups, a head-dim half each, inside
    `_own_keys_grads` with DQ_HALVES, by warpgroup 0 after the tile without (`_fused_dq`). Stores dV and
    scale * dK. Arguments as one runtime and one constexpr tuple (see sm90_attn_bwd_dkdv_kernel)."""
    (k_smem, v_smem, q_smem, do_smem, ds_smem, lse_smem, delta_smem, fused, dk_desc, dv_desc, dk_ptr, dv_ptr, bars,
     cu_seqlens_q, cu_seqlens_k, softmax_scale, qk_scale, softcap_scale, seqlen_q, seqlen_k, num_kv_heads, group_size,
     window_left, window_right) = args
    (BLOCK_M, HEAD_DIM, STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP, VARLEN, st_layout, acc_layout, op_layout,
     FUSED_DQ, DQ_HALVES) = meta
    kv_ready, qdo_ready, qdo_empty = bars
    dtype: gl.constexpr = k_smem.dtype
    ROWS: gl.constexpr = k_smem.shape[0] // 2  # one wgmma M
    k_own = k_smem.slice(WARPGROUP * ROWS, ROWS, dim=0)
    v_own = v_smem.slice(WARPGROUP * ROWS, ROWS, dim=0)

    cta_start = gl.program_id(0) * (2 * ROWS)
    n_start = cta_start + WARPGROUP * ROWS
    b = gl.program_id(1) // num_kv_heads
    kv_head = gl.program_id(1) - b * num_kv_heads
    q_batch, q_first, q_len, _q_flat = sequence_rows(b, cu_seqlens_q, seqlen_q, VARLEN)
    k_batch, k_first, k_len, _k_flat = sequence_rows(b, cu_seqlens_k, seqlen_k, VARLEN)
    ds_ready, ds_free, _dq_stage, _dq_desc = fused
    # The producer streams the tiles any of the CTA's keys see; the ones this warpgroup's keys see only in
    # part (or not at all) fall outside its own unmasked range and get the element mask.
    m_first, n_m, _lo, _hi = query_tiles(cta_start, q_len, k_len, window_left, window_right, BLOCK_M, 2 * ROWS,
                                         LEFT_BOUNDED, RIGHT_BOUNDED)
    _first, _n, unmasked_lo, unmasked_hi = query_tiles(n_start, q_len, k_len, window_left, window_right, BLOCK_M,
                                                       ROWS, LEFT_BOUNDED, RIGHT_BOUNDED)
    _zero, n_m = clip_to_sequence(0, n_m, cta_start, k_len, VARLEN)
    n_tiles = group_size * n_m
    dk = gl.zeros([ROWS, HEAD_DIM], gl.float32, acc_layout)
    dv = gl.zeros([ROWS, HEAD_DIM], gl.float32, acc_layout)
    mbarrier.wait(kv_ready, 0)
    if FUSED_DQ and VARLEN:  # dQ = dS K: keys past the sequence must be zero, as TMA leaves them unpacked
        if n_start + ROWS > k_len:
            zero_rows_past(k_own, n_start, k_len, ROWS, HEAD_DIM, 4)
    for t in range(n_tiles):
        stage = t % STAGES
        head, m_block = _dkdv_tile_coords(t, m_first, n_m, kv_head, group_size)
        mbarrier.wait(qdo_ready.index(stage), (t // STAGES) & 1)
        s_t, dp_t = _own_keys_scores(k_own, v_own, q_smem.index(stage), do_smem.index(stage), st_layout, ROWS,
                                      BLOCK_M)
        if FUSED_DQ:  # the dQ GEMM of tile t - 2 has read this slot's dS^T
            mbarrier.wait(ds_free.index(t % 2), ((t // 2) & 1) ^ 1)
        dv, dk = _own_keys_grads(s_t, dp_t, dv, dk, q_smem.index(stage), do_smem.index(stage),
                                 lse_smem.index(stage), delta_smem.index(stage), n_start, m_block, unmasked_lo,
                                 unmasked_hi, qk_scale, softcap_scale, q_len, k_len, window_left, window_right,
                                 ds_smem.index(_ds_slot(WARPGROUP, t)), ds_smem, k_smem, fused, t, head, q_batch,
                                 q_first, WARPGROUP, dtype, st_layout, op_layout, ROWS, BLOCK_M, HEAD_DIM,
                                 LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP, FUSED_DQ, DQ_HALVES)
        mbarrier.arrive(qdo_empty.index(stage))
        if FUSED_DQ and not DQ_HALVES:
            mbarrier.arrive(ds_ready.index(t % 2))
            if WARPGROUP == 0:
                _fused_dq(t, head, m_block, ds_smem, k_smem, fused, q_batch, q_first, BLOCK_M, HEAD_DIM)
    if FUSED_DQ:  # the last dQ GEMM (both warpgroups' with DQ_HALVES) has read these K rows
        if n_tiles > 0:
            mbarrier.wait(ds_free.index((n_tiles - 1) % 2), ((n_tiles - 1) // 2) & 1)
    # K and V are dead (no GEMM reads them any more): stage dV and dK there.
    store_tile(dv.to(dtype), k_own, dv_desc, dv_ptr, num_kv_heads * HEAD_DIM, k_batch, k_first, n_start, kv_head,
               k_len, ROWS, HEAD_DIM, 4, VARLEN)
    store_tile((dk * softmax_scale).to(dtype), v_own, dk_desc, dk_ptr, num_kv_heads * HEAD_DIM, k_batch, k_first,
               n_start, kv_head, k_len, ROWS, HEAD_DIM, 4, VARLEN)
    if FUSED_DQ:
        tma.store_wait(0)  # the last dQ reductions have read their staging buffer


# Sizes are not specialised (no recompiles for seqlen 1 or odd lengths); only the constexprs are.
@gluon.jit(do_not_specialize=["seqlen_q", "seqlen_k", "num_kv_heads", "group_size", "total_q", "window_left",
                              "window_right"])
def sm90_attn_bwd_dkdv_kernel(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, dk_ptr, dv_ptr, dq_desc, lse_ptr,
                              delta_ptr, cu_seqlens_q, cu_seqlens_k, softmax_scale, qk_scale, softcap_scale, seqlen_q,
                              seqlen_k, num_kv_heads, group_size, total_q, window_left, window_right,
                              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                              STAGES: gl.constexpr, P_BUFFERS: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
                              RIGHT_BOUNDED: gl.constexpr, SOFTCAP: gl.constexpr,
                              CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr,
                              KEY_SPLIT: gl.constexpr, VARLEN: gl.constexpr,
                              FUSED_DQ: gl.constexpr, DQ_HALVES: gl.constexpr):
    dtype: gl.constexpr = q_desc.dtype
    # the consumers' wgmma layouts (every wgmma here has 64 rows: one warpgroup's keys): S^T and dP^T
    # (64 x BLOCK_M), the dK / dV accumulators (64 x HEAD_DIM), P^T and dS^T as their A operand
    st_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, BLOCK_M, 16])
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, HEAD_DIM, 16])
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    qdo_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, HEAD_DIM], dtype)
    # fp32 P^T in the wgmma accumulator layout: 32-byte groups XOR-swizzled by row, so the 8 rows one
    # store instruction touches land in different banks
    p_layout: gl.constexpr = gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[1, 0])
    k_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_DIM], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_DIM], kv_layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], qdo_layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], qdo_layout)

    kv_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    qdo_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    qdo_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_ready, count=1)
    for i in gl.static_range(STAGES):
        # key split: the producer's expect (TMA bytes) and its arrive after staging lse and delta
        mbarrier.init(qdo_ready.index(i), count=2 if KEY_SPLIT else 1)
        mbarrier.init(qdo_empty.index(i), count=2)  # both warpgroups release each Q/dO stage
    ring = (kv_ready, qdo_ready, qdo_empty)
    if KEY_SPLIT:
        # dS^T of two tiles per warpgroup (slots: `_ds_slot`), the A operand of the dQ GEMMs (a token
        # allocation without FUSED_DQ)
        ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N // 2, BLOCK_M], dtype)
        ds_smem = gl.allocate_shared_memory(dtype, [4 if FUSED_DQ else 1, BLOCK_N // 2, BLOCK_M], ds_layout)
        ds_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        ds_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2):
            mbarrier.init(ds_ready.index(i), count=2)  # both warpgroups' dS^T of the tile are in
            mbarrier.init(ds_free.index(i), count=2 if DQ_HALVES else 1)  # the tile's dQ GEMMs have read them
        # one tile's fp32 dQ, staged for its TMA reductions (a token allocation without FUSED_DQ)
        dq_stage_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, HEAD_DIM // 2], gl.float32)
        dq_stage = gl.allocate_shared_memory(gl.float32, [BLOCK_M, HEAD_DIM if FUSED_DQ else 8], dq_stage_layout)
        fused = (ds_ready, ds_free, dq_stage, dq_desc)
        vec_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
        lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], vec_layout)
        delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], vec_layout)
        # a partition gets a tuple of runtime values and one of constexprs (a constexpr tuple) as one argument each
        own_keys_args = (k_smem, v_smem, q_smem, do_smem, ds_smem, lse_smem, delta_smem, fused, dk_desc, dv_desc, dk_ptr,
                         dv_ptr, ring, cu_seqlens_q, cu_seqlens_k, softmax_scale, qk_scale, softcap_scale, seqlen_q,
                         seqlen_k, num_kv_heads, group_size, window_left, window_right)
        own_keys_meta: gl.constexpr = (BLOCK_M, HEAD_DIM, STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP, VARLEN,
                                       st_layout, acc_layout, op_layout, FUSED_DQ, DQ_HALVES)
        gl.warp_specialize([
            (_dkdv_own_keys, (own_keys_args, 0, own_keys_meta)),
            (_dkdv_own_keys, (own_keys_args, 1, own_keys_meta)),
            (_dkdv_producer, (q_desc, do_desc, k_desc, v_desc, k_smem, v_smem, q_smem, do_smem, ring, cu_seqlens_q,
                              cu_seqlens_k, seqlen_q, seqlen_k, num_kv_heads, group_size, window_left, window_right,
                              (lse_smem, delta_smem), lse_ptr, delta_ptr, total_q,
                              BLOCK_M, BLOCK_N, STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, VARLEN, True)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
    else:  # GEMM split
        p_smem = gl.allocate_shared_memory(gl.float32, [P_BUFFERS, BLOCK_N, BLOCK_M], p_layout)
        p_ready = gl.allocate_shared_memory(gl.int64, [P_BUFFERS, 1], mbarrier.MBarrierLayout())
        p_empty = gl.allocate_shared_memory(gl.int64, [P_BUFFERS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(P_BUFFERS):
            mbarrier.init(p_ready.index(i), count=1)
            mbarrier.init(p_empty.index(i), count=1)
        bars = (kv_ready, qdo_ready, qdo_empty, p_ready, p_empty)

        gl.warp_specialize([
            (_dkdv_probabilities, (k_smem, q_smem, do_smem, p_smem, dv_desc, dv_ptr, bars, lse_ptr, cu_seqlens_q,
                                   cu_seqlens_k, qk_scale, softcap_scale, seqlen_q, seqlen_k, num_kv_heads, group_size,
                                   total_q, window_left, window_right, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, P_BUFFERS,
                                   LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP, VARLEN, st_layout, acc_layout,
                                   op_layout)),
            (_dkdv_score_grads, (v_smem, q_smem, do_smem, p_smem, dk_desc, dk_ptr, bars, delta_ptr, cu_seqlens_q,
                                 cu_seqlens_k, softmax_scale, seqlen_q, seqlen_k, num_kv_heads, group_size, total_q,
                                 window_left, window_right, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, P_BUFFERS,
                                 LEFT_BOUNDED, RIGHT_BOUNDED, VARLEN, st_layout, acc_layout, op_layout)),
            (_dkdv_producer, (q_desc, do_desc, k_desc, v_desc, k_smem, v_smem, q_smem, do_smem, ring, cu_seqlens_q,
                              cu_seqlens_k, seqlen_q, seqlen_k, num_kv_heads, group_size, window_left, window_right,
                              None, lse_ptr, delta_ptr, total_q,  # no row stats: STATS=False
                              BLOCK_M, BLOCK_N, STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, VARLEN, False)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


# --------------------------------------------------------------------------------------------------
# dQ kernel
# --------------------------------------------------------------------------------------------------
@gluon.jit
def _dq_tile(num_heads):
    """(batch, head) of this CTA."""
    bh = gl.program_id(1)
    b = bh // num_heads
    return b, bh - b * num_heads


@gluon.jit
def _dq_m_block(REVERSE: gl.constexpr):
    # causal runs the longest (last) query blocks first
    m_block = gl.program_id(0)
    if REVERSE:
        m_block = gl.num_programs(0) - 1 - m_block
    return m_block


@gluon.jit
def _dq_producer(q_desc, do_desc, k_desc, v_desc, q_smem, do_smem, k_smem, v_smem, bars, cu_seqlens_q,
                 cu_seqlens_k, seqlen_q, seqlen_k, num_heads, group_size, window_left, window_right,
                 BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, K_STAGES: gl.constexpr,
                 V_STAGES: gl.constexpr, LEFT_BOUNDED: gl.constexpr, RIGHT_BOUNDED: gl.constexpr,
                 VARLEN: gl.constexpr):
    q_ready, k_ready, k_empty, v_ready, v_empty = bars
    b, h = _dq_tile(num_heads)
    m_block = _dq_m_block(RIGHT_BOUNDED)
    kv_head = h // group_size
    q_batch, q_first, q_len, _q_flat = sequence_rows(b, cu_seqlens_q, seqlen_q, VARLEN)
    k_batch, k_first, k_len, _k_flat = sequence_rows(b, cu_seqlens_k, seqlen_k, VARLEN)
    mbarrier.expect(q_ready, q_desc.block_type.nbytes + do_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_batch, q_first + m_block * BLOCK_M, h, 0], q_ready, q_smem)
    tma.async_copy_global_to_shared(do_desc, [q_batch, q_first + m_block * BLOCK_M, h, 0], q_ready, do_smem)
    lo, hi = key_blocks(m_block * BLOCK_M, BLOCK_M, q_len, k_len, window_left, window_right, BLOCK_N,
                        LEFT_BOUNDED, RIGHT_BOUNDED)
    lo, hi = clip_to_sequence(lo, hi, m_block * BLOCK_M, q_len, VARLEN)
    for i in range(hi - lo):
        j = lo + i
        k_stage = i % K_STAGES
        mbarrier.wait(k_empty.index(k_stage), ((i // K_STAGES) & 1) ^ 1)
        mbarrier.expect(k_ready.index(k_stage), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [k_batch, k_first + j * BLOCK_N, kv_head, 0],
                                        k_ready.index(k_stage), k_smem.index(k_stage))
        v_stage = i % V_STAGES
        mbarrier.wait(v_empty.index(v_stage), ((i // V_STAGES) & 1) ^ 1)
        mbarrier.expect(v_ready.index(v_stage), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [k_batch, k_first + j * BLOCK_N, kv_head, 0],
                                        v_ready.index(v_stage), v_smem.index(v_stage))


@gluon.jit
def _dq_probabilities(s, lse2, qk_scale, softcap_scale, m_start, j, seqlen_k, left_offset, right_offset,
                      layout: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                      LEFT_BOUNDED: gl.constexpr, RIGHT_BOUNDED: gl.constexpr, SOFTCAP: gl.constexpr,
                      MASKED: gl.constexpr):
    """P of key block j, times the soft cap's derivative (1 - tanh^2) when there is one: all dS needs.
    Masked blocks also drop keys past seqlen_k: their K rows are zero, but P there is exp2(-lse), and a
    huge P times a zero K row would be NaN."""
    t = soft_cap(s, softcap_scale, SOFTCAP)
    p = gl.exp2(t * qk_scale - lse2[:, None])
    if MASKED:
        keep = visible_keys(m_start, j * BLOCK_N, seqlen_k, left_offset, right_offset, layout, BLOCK_M, BLOCK_N,
                            LEFT_BOUNDED, RIGHT_BOUNDED)
        p = gl.where(keep, p, 0.0)
    if SOFTCAP:
        p = p * (1.0 - t * t)
    return p


@gluon.jit
def _dq_blocks(dq, ds_op, prev_k_stage, lo, start, end, q_smem, do_smem, k_smem, v_smem, bars, lse2, delta,
               qk_scale, softcap_scale, m_start, seqlen_k, left_offset, right_offset,
               s_layout: gl.constexpr, op_layout: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
               K_STAGES: gl.constexpr, V_STAGES: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
               RIGHT_BOUNDED: gl.constexpr, SOFTCAP: gl.constexpr, MASKED: gl.constexpr):
    """Key blocks [start, end) (ring position j - lo), block start-1's dS pending in ds_op. Issue
    dQ += dS_{j-1} K_{j-1}, S_j and dP_j back to back; exp2 of S_j runs while dP_j is on the tensor cores."""
    q_ready, k_ready, k_empty, v_ready, v_empty = bars
    dtype: gl.constexpr = q_smem.dtype
    for j in range(start, end):
        i = j - lo
        k_stage = i % K_STAGES
        v_stage = i % V_STAGES
        dq = warpgroup_mma(ds_op, k_smem.index(prev_k_stage), dq, is_async=True)
        mbarrier.wait(k_ready.index(k_stage), (i // K_STAGES) & 1)
        s = warpgroup_mma(q_smem, k_smem.index(k_stage).permute((1, 0)),
                          gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(v_stage), (i // V_STAGES) & 1)
        dp = warpgroup_mma(do_smem, v_smem.index(v_stage).permute((1, 0)),
                           gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
        dq, ds_op, s = warpgroup_mma_wait(1, deps=(dq, ds_op, s))
        mbarrier.arrive(k_empty.index(prev_k_stage))
        p = _dq_probabilities(s, lse2, qk_scale, softcap_scale, m_start, j, seqlen_k, left_offset, right_offset,
                              s_layout, BLOCK_M, BLOCK_N, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP, MASKED)
        dp = warpgroup_mma_wait(0, deps=(dp, ))
        mbarrier.arrive(v_empty.index(v_stage))
        ds_op = gl.convert_layout((p * (dp - delta[:, None])).to(dtype), op_layout)
        prev_k_stage = k_stage
    return dq, ds_op, prev_k_stage


@gluon.jit
def _dq_consumer(q_smem, do_smem, k_smem, v_smem, dq_desc, dq_ptr, bars, lse_ptr, delta_ptr, cu_seqlens_q,
                 cu_seqlens_k, qk_scale, softmax_scale, softcap_scale, seqlen_q, seqlen_k, num_heads, total_q,
                 window_left, window_right, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                 K_STAGES: gl.constexpr, V_STAGES: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
                 RIGHT_BOUNDED: gl.constexpr, SOFTCAP: gl.constexpr, VARLEN: gl.constexpr):
    """Both consumer warpgroups in one 8-warp partition: warpgroup w computes rows [64 w, 64 w + 64)
    of every M = 128 wgmma (the layout splits it)."""
    q_ready, k_ready, k_empty, v_ready, v_empty = bars
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1],
                                                         instr_shape=[16, HEAD_DIM, 16])
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)

    b, h = _dq_tile(num_heads)
    m_block = _dq_m_block(RIGHT_BOUNDED)
    m_start = m_block * BLOCK_M
    q_batch, q_first, q_len, q_flat = sequence_rows(b, cu_seqlens_q, seqlen_q, VARLEN)
    _k_batch, _k_first, k_len, _k_flat = sequence_rows(b, cu_seqlens_k, seqlen_k, VARLEN)
    lo, hi = key_blocks(m_start, BLOCK_M, q_len, k_len, window_left, window_right, BLOCK_N, LEFT_BOUNDED,
                        RIGHT_BOUNDED)
    lo, hi = clip_to_sequence(lo, hi, m_start, q_len, VARLEN)
    unmasked_lo, unmasked_hi = unmasked_key_blocks(m_start, BLOCK_M, q_len, k_len, window_left, window_right,
                                                   BLOCK_N, LEFT_BOUNDED, RIGHT_BOUNDED)

    left_offset, right_offset = window_offsets(q_len, k_len, window_left, window_right)
    lse2 = _row_stats(lse_ptr, h, q_flat, m_block, q_len, total_q, float("inf"), BLOCK_M, row_layout) * LOG2E
    delta = _row_stats(delta_ptr, h, q_flat, m_block, q_len, total_q, 0.0, BLOCK_M, row_layout)
    dq = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, acc_layout)
    mbarrier.wait(q_ready, 0)
    if hi > lo:
        # First block: S, dP and dS only.
        mbarrier.wait(k_ready.index(0), 0)
        s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)),
                          gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(0), 0)
        dp = warpgroup_mma(do_smem, v_smem.index(0).permute((1, 0)),
                           gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
        s, dp = warpgroup_mma_wait(0, deps=(s, dp))
        mbarrier.arrive(v_empty.index(0))
        if (lo < unmasked_lo) | (lo >= unmasked_hi):
            p = _dq_probabilities(s, lse2, qk_scale, softcap_scale, m_start, lo, k_len, left_offset, right_offset,
                                  s_layout,
                                  BLOCK_M, BLOCK_N, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP, True)
        else:
            p = _dq_probabilities(s, lse2, qk_scale, softcap_scale, m_start, lo, k_len, left_offset, right_offset,
                                  s_layout,
                                  BLOCK_M, BLOCK_N, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP, False)
        ds_op = gl.convert_layout((p * (dp - delta[:, None])).to(dtype), op_layout)
        # Interior blocks need no mask: a loop without it, then one with it for the diagonal / ragged end
        # (a run-time branch inside one loop keeps both paths' values live and spills at d=256). With a
        # left window edge every block goes through the masked loop: a third loop for the edge blocks
        # spills scalars inside all three at d=256.
        masked_from = gl.minimum(gl.maximum(unmasked_hi, lo + 1), hi)
        if LEFT_BOUNDED:
            masked_from = lo + 1
        prev_k_stage = gl.to_tensor(0)
        dq, ds_op, prev_k_stage = _dq_blocks(dq, ds_op, prev_k_stage, lo, lo + 1, masked_from, q_smem, do_smem,
                                             k_smem, v_smem, bars, lse2, delta, qk_scale, softcap_scale, m_start,
                                             k_len, left_offset, right_offset, s_layout, op_layout, BLOCK_M,
                                             BLOCK_N, K_STAGES, V_STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP,
                                             False)
        dq, ds_op, prev_k_stage = _dq_blocks(dq, ds_op, prev_k_stage, lo, masked_from, hi, q_smem, do_smem,
                                             k_smem, v_smem, bars, lse2, delta, qk_scale, softcap_scale, m_start,
                                             k_len, left_offset, right_offset, s_layout, op_layout, BLOCK_M,
                                             BLOCK_N, K_STAGES, V_STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP, True)
        dq = warpgroup_mma(ds_op, k_smem.index(prev_k_stage), dq, is_async=True)
        dq, ds_op = warpgroup_mma_wait(0, deps=(dq, ds_op))
        mbarrier.arrive(k_empty.index(prev_k_stage))
    # Q is dead: stage dQ there; rows past seqlen_q are not written
    store_tile((dq * softmax_scale).to(dtype), q_smem, dq_desc, dq_ptr, num_heads * HEAD_DIM, q_batch, q_first,
               m_start, h, q_len, BLOCK_M, HEAD_DIM, 8, VARLEN)


@gluon.jit(do_not_specialize=["seqlen_q", "seqlen_k", "num_heads", "group_size", "total_q", "window_left",
                              "window_right"])
def sm90_attn_bwd_dq_kernel(q_desc, k_desc, v_desc, do_desc, dq_desc, dq_ptr, lse_ptr, delta_ptr, cu_seqlens_q,
                            cu_seqlens_k, softmax_scale, qk_scale, softcap_scale, seqlen_q, seqlen_k, num_heads,
                            group_size, total_q, window_left, window_right,
                            BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                            K_STAGES: gl.constexpr, V_STAGES: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
                            RIGHT_BOUNDED: gl.constexpr, SOFTCAP: gl.constexpr, PRODUCER_REGS: gl.constexpr,
                            VARLEN: gl.constexpr):
    dtype: gl.constexpr = q_desc.dtype
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, HEAD_DIM], dtype)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_layout)
    do_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_layout)
    k_smem = gl.allocate_shared_memory(dtype, [K_STAGES, BLOCK_N, HEAD_DIM], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [V_STAGES, BLOCK_N, HEAD_DIM], kv_layout)

    q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [K_STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [K_STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [V_STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [V_STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_ready, count=1)
    for i in gl.static_range(K_STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=1)  # one arrive by the 8-warp consumer partition
    for i in gl.static_range(V_STAGES):
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(v_empty.index(i), count=1)
    bars = (q_ready, k_ready, k_empty, v_ready, v_empty)

    gl.warp_specialize([
        (_dq_consumer, (q_smem, do_smem, k_smem, v_smem, dq_desc, dq_ptr, bars, lse_ptr, delta_ptr, cu_seqlens_q,
                        cu_seqlens_k, qk_scale, softmax_scale, softcap_scale, seqlen_q, seqlen_k, num_heads, total_q,
                        window_left, window_right, BLOCK_M, BLOCK_N, HEAD_DIM, K_STAGES, V_STAGES, LEFT_BOUNDED,
                        RIGHT_BOUNDED, SOFTCAP, VARLEN)),
        (_dq_producer, (q_desc, do_desc, k_desc, v_desc, q_smem, do_smem, k_smem, v_smem, bars, cu_seqlens_q,
                        cu_seqlens_k, seqlen_q, seqlen_k, num_heads, group_size, window_left, window_right,
                        BLOCK_M, BLOCK_N, K_STAGES, V_STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, VARLEN)),
    ], [1], [PRODUCER_REGS])


# --------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------
def sm90_bwd_supports(q: torch.Tensor, args) -> bool:
    """True when sm90_backward handles these inputs: plain, causal, sliding-window or soft-capped
    attention, with or without a learnable sink, packed or not, on sm_90 at d 64/128/256. A soft cap needs the
    forward's P exactly: the sm90 forward (MUFU.TANH) runs every seqlen_q but 1, which stays portable in both
    directions."""
    return (q.is_cuda and torch.cuda.get_device_capability(q.device) == (9, 0)
            and q.dtype in _GL_DTYPES and q.dim() == 4 and q.shape[-1] in DKDV_CONFIGS
            and q.stride(-1) == 1 and not (args.softcap > 0 and q.shape[1] == 1))


def sm90_backward(dout, q, k, v, out, lse, dlse, args):
    """Gradients (dq, dk, dv, dsink) of the forward's (out, lse); lse and dlse are (h, b*s_q) fp32. Packed
    (varlen) inputs are (1, total, h, d) with args.cu_seqlens_* and args.max_seqlen_*."""
    batch, seqlen_q, nheads, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    varlen = args.cu_seqlens_q is not None
    num_seqs = args.cu_seqlens_q.numel() - 1 if varlen else batch
    max_q, max_k = (args.max_seqlen_q, args.max_seqlen_k) if varlen else (seqlen_q, seqlen_k)
    dq = torch.empty((batch, seqlen_q, nheads, head_dim), dtype=q.dtype, device=q.device)
    dk = torch.empty((batch, seqlen_k, nheads_kv, head_dim), dtype=k.dtype, device=k.device)
    dv = torch.empty((batch, seqlen_k, nheads_kv, head_dim), dtype=v.dtype, device=v.device)
    if dq.numel() == 0 or dk.numel() == 0:
        dsink = None if args.sink is None else torch.zeros_like(args.sink, dtype=torch.float32)
        return dq.zero_(), dk.zero_(), dv.zero_(), dsink

    delta = attention_delta(out, dout, dlse)
    lse = lse.float().contiguous()
    q, k, v, dout = (_tma_operand(t) for t in (q, k, v, dout))
    total_q = batch * seqlen_q
    group_size = nheads // nheads_kv
    qk_scale, softcap_scale = score_scales(args.softmax_scale, args.softcap)
    window_left, window_right, mask_flags = mask_arguments(max_q, max_k, args.causal, args.window)
    # cu_seqlens are read only when VARLEN; any int32 pointer fills their place otherwise
    cu_q, cu_k = (args.cu_seqlens_q, args.cu_seqlens_k) if varlen else (int_placeholder(q.device), ) * 2

    descriptors = {}

    def desc(t, rows):  # both kernels take K and V in the same boxes: build each descriptor once
        if (id(t), rows) not in descriptors:
            descriptors[id(t), rows] = tma_descriptor(t, rows)
        return descriptors[id(t), rows]

    cfg = DKDV_CONFIGS[head_dim]
    fused_dq = fuses_dq(cfg, args.deterministic, mask_flags["LEFT_BOUNDED"], args.softcap > 0)
    # fused: the fp32 dQ the kernel's reductions add into (as FA2/FA3's dq_accum: 2 bytes per dQ byte more,
    # for the call); otherwise a token tensor for the unused descriptor, never read or written (empty: no fill
    # kernel for it)
    if fused_dq:
        dq_accum = torch.zeros(dq.shape, dtype=torch.float32, device=q.device)
    else:
        dq_accum = torch.empty((1, cfg.block_m, 1, head_dim), dtype=torch.float32, device=q.device)
    dq_box = _dq_accum_box(cfg)
    dq_desc = TensorDescriptor(dq_accum, list(dq_accum.shape), list(dq_accum.stride()), dq_box,
                               gl.NVMMASharedLayout.get_default_for(dq_box, gl.float32))
    sm90_attn_bwd_dkdv_kernel[(triton.cdiv(max_k, cfg.block_n), num_seqs * nheads_kv)](
        desc(q, cfg.block_m), desc(k, cfg.block_n), desc(v, cfg.block_n),
        desc(dout, cfg.block_m), tma_descriptor(dk, WARPGROUP_ROWS), tma_descriptor(dv, WARPGROUP_ROWS), dk, dv,
        dq_desc, lse, delta, cu_q, cu_k, args.softmax_scale, qk_scale, softcap_scale, seqlen_q, seqlen_k, nheads_kv,
        group_size, total_q, window_left, window_right,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=head_dim, STAGES=cfg.qdo_stages,
        P_BUFFERS=cfg.p_buffers, SOFTCAP=args.softcap > 0, **mask_flags, CONSUMER_REGS=cfg.consumer_regs,
        PRODUCER_REGS=cfg.producer_regs, KEY_SPLIT=cfg.key_split, VARLEN=varlen,
        FUSED_DQ=fused_dq, DQ_HALVES=fused_dq and cfg.dq_halves, num_warps=4, maxnreg=cfg.launch_maxnreg)

    cfg = DQ_CONFIGS[head_dim]
    if fused_dq:
        torch.mul(dq_accum, args.softmax_scale, out=dq)
    else:
        sm90_attn_bwd_dq_kernel[(triton.cdiv(max_q, cfg.block_m), num_seqs * nheads)](
            desc(q, cfg.block_m), desc(k, cfg.block_n), desc(v, cfg.block_n),
            desc(dout, cfg.block_m), tma_descriptor(dq, cfg.block_m), dq, lse, delta, cu_q, cu_k,
            args.softmax_scale, qk_scale, softcap_scale, seqlen_q, seqlen_k, nheads, group_size, total_q,
            window_left, window_right,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=head_dim, K_STAGES=cfg.k_stages,
            V_STAGES=cfg.v_stages, SOFTCAP=args.softcap > 0, **mask_flags, PRODUCER_REGS=cfg.producer_regs,
            VARLEN=varlen, num_warps=8, maxnreg=cfg.launch_maxnreg)
    dsink = None
    if args.sink is not None:
        # the kernels need nothing else (the sink only changes lse); d sink_h = -sum_rows P_sink * delta
        dsink = -(torch.exp(args.sink.float()[:, None] - lse) * delta).sum(1)
    return dq, dk, dv, dsink


# --------------------------------------------------------------------------------------------------
# Compiling without a GPU (for `python -m flash256.inspect --kernel sm90_bwd`)
# --------------------------------------------------------------------------------------------------
_SCALARS = dict(lse_ptr="*fp32", delta_ptr="*fp32", cu_seqlens_q="*i32", cu_seqlens_k="*i32",
                softmax_scale="fp32", qk_scale="fp32", softcap_scale="fp32",
                seqlen_q="i32", seqlen_k="i32", group_size="i32", total_q="i32", window_left="i32",
                window_right="i32")


def _desc_types(dtype: torch.dtype, head_dim: int, **rows_by_name) -> dict:
    from .compile_target import gluon_desc_type
    gl_dtype, sig_dtype = _GL_DTYPES[dtype], _SIG_DTYPES[dtype]
    return {name: gluon_desc_type(sig_dtype, io_block(head_dim, rows), smem_layout(head_dim, rows, gl_dtype))
            for name, rows in rows_by_name.items()}


def fuses_dq(cfg: Sm90BwdDkdvConfig, deterministic: bool, left_bounded: bool, softcap: bool) -> bool:
    """Whether the dK/dV kernel also computes dQ: where its config does, except deterministic=True (the
    fp32 reductions land in a different order each run) and a left window edge with a soft cap (the fused
    kernel spills 364 B there)."""
    return cfg.fused_dq and not deterministic and not (left_bounded and softcap)


def _dq_accum_box(cfg) -> list[int]:  # one TMA reduction: a tile's queries x half the head dims, fp32
    return [1, cfg.block_m, 1, cfg.head_dim // 2]


def _dq_accum_desc_type(cfg):
    from .compile_target import gluon_desc_type
    box = _dq_accum_box(cfg)
    return gluon_desc_type("fp32", box, gl.NVMMASharedLayout.get_default_for(box, gl.float32))


def compile_dkdv(cfg: Sm90BwdDkdvConfig, causal: bool, dtype: torch.dtype = torch.bfloat16, arch: int = 90,
                 left_bounded: bool = False, softcap: bool = False, varlen: bool = False,
                 deterministic: bool = False):
    from .compile_target import compile_gluon
    out_ptr = f"*{_SIG_DTYPES[dtype]}"
    signature = dict(_desc_types(dtype, cfg.head_dim, q_desc=cfg.block_m, k_desc=cfg.block_n,
                                 v_desc=cfg.block_n, do_desc=cfg.block_m, dk_desc=WARPGROUP_ROWS,
                                 dv_desc=WARPGROUP_ROWS), dk_ptr=out_ptr, dv_ptr=out_ptr,
                     dq_desc=_dq_accum_desc_type(cfg), num_kv_heads="i32", **_SCALARS)
    fused = fuses_dq(cfg, deterministic, left_bounded, softcap)
    constexprs = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=cfg.head_dim, STAGES=cfg.qdo_stages,
                      P_BUFFERS=cfg.p_buffers, LEFT_BOUNDED=left_bounded, RIGHT_BOUNDED=bool(causal),
                      SOFTCAP=softcap, CONSUMER_REGS=cfg.consumer_regs, PRODUCER_REGS=cfg.producer_regs,
                      KEY_SPLIT=cfg.key_split, VARLEN=varlen, FUSED_DQ=fused, DQ_HALVES=fused and cfg.dq_halves)
    return compile_gluon(sm90_attn_bwd_dkdv_kernel, signature, constexprs, arch=arch, num_warps=4,
                         maxnreg=cfg.launch_maxnreg)


def compile_dq(cfg: Sm90BwdDqConfig, causal: bool, dtype: torch.dtype = torch.bfloat16, arch: int = 90,
               left_bounded: bool = False, softcap: bool = False, varlen: bool = False):
    from .compile_target import compile_gluon
    signature = dict(_desc_types(dtype, cfg.head_dim, q_desc=cfg.block_m, k_desc=cfg.block_n,
                                 v_desc=cfg.block_n, do_desc=cfg.block_m, dq_desc=cfg.block_m),
                     dq_ptr=f"*{_SIG_DTYPES[dtype]}", num_heads="i32", **_SCALARS)
    constexprs = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=cfg.head_dim, K_STAGES=cfg.k_stages,
                      V_STAGES=cfg.v_stages, LEFT_BOUNDED=left_bounded, RIGHT_BOUNDED=bool(causal),
                      SOFTCAP=softcap, PRODUCER_REGS=cfg.producer_regs, VARLEN=varlen)
    return compile_gluon(sm90_attn_bwd_dq_kernel, signature, constexprs, arch=arch, num_warps=8,
                         maxnreg=cfg.launch_maxnreg)


# Spill bytes (stores + loads) ptxas is known to need, by (causal, window + soft cap, varlen): scalars parked
# in local memory -- the shared-memory bases of the wgmma descriptors, and with a window edge or packed
# sequences a few of their bounds (NOTES.md). `python -m flash256.inspect` fails above these.
DQ_D256_KNOWN_SPILL_BYTES = {(True, False, False): 12, (True, True, False): 20, (False, False, True): 20,
                             (True, False, True): 36}
# d=128 dK/dV kernel by (causal, window + soft cap, varlen, deterministic); fused unless deterministic. The fused
# builds (dQ halves) spill nothing; deterministic: 2 + 1 spill instructions per tile in the two consumer loops
# (SASS, 2026-12-07).
DKDV_D128_KNOWN_SPILL_BYTES = {(True, False, False, True): 48}


def inspect_cases(arch: int = 90):
    """Every shipped configuration, causal and not, bf16, compiled for sm_90a without a GPU; also packed
    sequences, at d=256 Gemma's layer (causal sliding window with a soft cap) and at d <= 128 the unfused
    dK/dV kernel deterministic=True runs."""
    from .compile_target import InspectCase
    if arch != 90:
        return []
    options = [(causal, False, varlen) for varlen in (False, True) for causal in (False, True)]
    cases = []

    def add(kernel, cfg, what, compile_fn, budget=0):
        label = f"{cfg.describe()} {what}" + (f" known_spill={budget}B" if budget else "")
        cases.append(InspectCase(kernel, label, compile_fn, budget))

    for head_dim in sorted(DKDV_CONFIGS, reverse=True):
        dkdv_cfg, dq_cfg = DKDV_CONFIGS[head_dim], DQ_CONFIGS[head_dim]
        dkdv_spills = DKDV_D128_KNOWN_SPILL_BYTES if head_dim == 128 else {}
        dq_spills = DQ_D256_KNOWN_SPILL_BYTES if head_dim == 256 else {}
        extra = [(True, True, False)] if head_dim == 256 else []
        for causal, window, varlen in options + extra:
            what = f"causal={causal}" + (" window=(L,0) softcap" if window else "") + (" varlen" if varlen else "")
            kwargs = dict(causal=causal, left_bounded=window, softcap=window, varlen=varlen)
            add("sm90_bwd_dkdv", dkdv_cfg, what, lambda c=dkdv_cfg, kw=kwargs: compile_dkdv(c, **kw),
                dkdv_spills.get((causal, window, varlen, False), 0))
            add("sm90_bwd_dq", dq_cfg, what, lambda c=dq_cfg, kw=kwargs: compile_dq(c, **kw),
                dq_spills.get((causal, window, varlen), 0))
        if dkdv_cfg.fused_dq:  # labelled as built: without the dQ part and its staging buffer
            unfused = replace(dkdv_cfg, fused_dq=False, dq_halves=False)
            add("sm90_bwd_dkdv", unfused, "causal=True deterministic",
                lambda c=unfused: compile_dkdv(c, True, deterministic=True),
                dkdv_spills.get((True, False, False, True), 0))
    return cases
