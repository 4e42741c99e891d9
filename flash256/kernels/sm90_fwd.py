"""Hopper (sm_90a) forward attention in Gluon, FA3 style.

One CTA computes a BLOCK_M-row query tile of one (batch, head) (128 rows; 192 at d=64) and is split into
warp-specialized partitions:

  * producer (1 warp, 24 registers): TMA loads of Q (one 64-row piece per consumer) and of K and V blocks into
    K_STAGES- and V_STAGES-deep shared-memory rings, each slot guarded by a "ready" and an "empty" mbarrier;
  * two consumer warpgroups (three at d=64; 4 warps each, 240 registers, 160 with three): warpgroup w owns rows
    [64 w, 64 w + 64) of the tile. Each runs QK^T and PV as async wgmma; P stays in registers as the
    A operand of the PV wgmma; the QK^T of block j+1 is issued before the softmax of block j
    (FA3's intra-warpgroup overlap), so the tensor cores work while the warpgroup does exp2.

O is staged in shared memory and written with a TMA store, which clips rows beyond seqlen_q: at d <= 128
in a buffer of its own, so each warpgroup frees its Q after the tile's last QK^T and a persistent CTA loads
the next tile's Q under the last PV; at d=256, with no room for that, in the warpgroup's own (dead) Q.
TMA loads zero-fill beyond seqlen_q / seqlen_k. In causal and windowed tiles, blocks that only other
warpgroups can see are released unread.

Conventions: q (B, Sq, H, D), k/v (B, Sk, Hkv, D); out (B, Sq, H, D); lse (H, B*Sq) float32, natural
log. Causal masking and sliding windows are bottom-right aligned (sm90_masking.py): query i sees key j
iff i + Sk - Sq - left <= j <= i + Sk - Sq + right (causal: right = 0); blocks outside the window are
never loaded. A soft cap applies tanh to the scores (MUFU.TANH) before the softmax. Rows that see no key
get out = 0 and lse = -inf.

Tiles are handed out by a scheduler: "single" (one tile per CTA, grid = number of tiles), "static"
(persistent grid of one CTA per SM, tile = pid + i * grid) or "dynamic" (persistent grid, the
producer takes the next tile from a global atomic counter and passes it to the consumers through
shared memory). Tile order is longest-first for causal and groups heads into L2-sized sections so
that concurrent CTAs share K/V in L2. Pick with the `scheduler` argument or FLASH256_SCHEDULER; the
default (`default_scheduler`) is "dynamic", except at d=256 with a window, soft cap or sink and with the exp2
polynomial ("single"; varlen: always "single").
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ..configs import SMEM_LIMIT_SM90, WARPGROUP_ROWS, WarpSpecializedResources
from ..ex2 import exp2_split_gl
from .portable_fwd import score_scales
from .sm90_masking import key_blocks, mask_arguments, soft_cap, unmasked_key_blocks, visible_keys, window_offsets
from .sm90_rows import clip_to_sequence, opaque_zero, sequence_rows, store_tile

L2_SECTION_BYTES = 32 * 1024 * 1024  # K+V bytes of the heads processed together (H100 L2: 50 MB)


# --------------------------------------------------------------------------------------------------
# Configurations and their resource accounting
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sm90FwdConfig(WarpSpecializedResources):
    head_dim: int
    block_n: int  # keys per K/V block
    k_stages: int  # depth of the K ring
    v_stages: int  # depth of the V ring
    block_m: int = 2 * WARPGROUP_ROWS  # consumer warpgroups x 64 rows: two, or three at d=64
    # Lazy O rescale: keep a row max that is stale by up to this many log2 units (P <= 2^t) and
    # rescale O only when some row of the warpgroup grew by more; 0 = rescale every block.
    rescale_threshold: float = 0.0
    # Head-dim columns of each warpgroup's Q held in registers as the A operand of QK^T (an RS wgmma
    # over those columns, SS over the rest), to spare shared-memory reads (and their energy); 0 = all SS.
    # On at d=256 (128 columns); d=128 with all of Q measured 0 to -3% (NOTES.md).
    q_reg_cols: int = 0
    # O staged for its TMA store in a buffer of its own instead of the warpgroup's dead Q: each warpgroup then
    # releases its Q right after the tile's last QK^T, and a persistent CTA's producer loads the next tile's Q
    # under the last PV and the epilogue instead of after the O store.
    o_stage: bool = False
    consumer_regs: int = 240  # setmaxnreg for each consumer warpgroup
    producer_regs: int = 24  # setmaxnreg for the producer warp (rounded up to a warpgroup)
    elem_bytes: int = 2  # fp16 / bf16

    # Shared memory (bytes). O is staged for its TMA store in the Q buffer, or with o_stage in one of its own.
    @property
    def smem_q(self) -> int:
        return self.block_m * self.head_dim * self.elem_bytes

    @property
    def smem_kv(self) -> int:
        return (self.k_stages + self.v_stages) * self.block_n * self.head_dim * self.elem_bytes

    @property
    def smem_o(self) -> int:
        return self.smem_q if self.o_stage else 0

    @property
    def smem_barriers(self) -> int:
        # ready + empty per K stage and per V stage, 4 for the Q halves (ready/empty), 2 for the tile id
        return 8 * (2 * (self.k_stages + self.v_stages) + 4 + 2)

    @property
    def smem_total(self) -> int:
        return self.smem_q + self.smem_kv + self.smem_o + self.smem_barriers + 16  # + tile-id slot

    # fp32 registers per consumer thread (128 threads per warpgroup, 64 rows each)
    @property
    def regs_o(self) -> int:
        return WARPGROUP_ROWS * self.head_dim // 128

    @property
    def regs_s(self) -> int:
        return WARPGROUP_ROWS * self.block_n // 128

    @property
    def regs_p(self) -> int:  # 16-bit P packed two per register
        return self.regs_s // 2

    @property
    def regs_q(self) -> int:  # 16-bit Q packed two per register
        return WARPGROUP_ROWS * self.q_reg_cols // 256

    @property
    def consumer_warpgroups(self) -> int:
        return self.block_m // WARPGROUP_ROWS

    def describe(self) -> str:
        return (f"d{self.head_dim}_m{self.block_m}_n{self.block_n}_k{self.k_stages}v{self.v_stages}"
                f"_r{self.rescale_threshold:g}" + (f"_qr{self.q_reg_cols}" if self.q_reg_cols else "") +
                ("_ostage" if self.o_stage else "") +
                f" smem={self.smem_total}B (Q {self.smem_q} + KV {self.smem_kv} + O {self.smem_o}) "
                f"regs/thread O={self.regs_o} S={self.regs_s} P={self.regs_p}" +
                (f" Q={self.regs_q}" if self.q_reg_cols else ""))

    def check(self) -> None:
        assert self.q_reg_cols in (0, 64, 128, 256) and self.q_reg_cols <= self.head_dim, self.describe()
        self.check_resources()


# d=256: Q 64 KB + K 2x32 KB + V 2x32 KB = 192 KB (+ barriers). A third K stage fits (224 KB + barriers,
# 229.7 KB compiled) but measured no gain and spills with a sink; 128x128 blocks (64 KB per K or V stage)
# cannot double-buffer.
# Registers/thread: O 128 + S 32 + P 16 + Q 32 (q_reg_cols=128) = 208 of 240 (FA3's 128x80 tile is not a
# power of two). Half of Q in registers spares 16 KB of shared-memory reads per warpgroup and key block:
# +2-6% on the H200 with the split key loops (NOTES.md); it spilled before the masks stopped keeping column
# indices live. All 256 columns spill.
CONFIG_D256 = Sm90FwdConfig(head_dim=256, block_n=64, k_stages=2, v_stages=2, q_reg_cols=128)
# d=128: Q 32 KB + K 2x32 KB + V 2x32 KB + O 32 KB = 192 KB. Registers: O 64 + S 64 + P 32 = 160. O staged apart
# from Q (o_stage; d=256 has no room for it): H100 +1-3% at 1k-2k, +6% at 1k causal, level at 8k (NOTES.md).
CONFIG_D128 = Sm90FwdConfig(head_dim=128, block_n=128, k_stages=2, v_stages=2, o_stage=True)
# d=64: three consumer warpgroups (FA3's 192-row tile): every K/V byte feeds 192 query rows, and a third
# warpgroup's softmax and wgmmas fill the gaps of the other two (d=64 does 4x d=256's exp2 per FLOP and ran with
# both the tensor and the MUFU pipe ~50% busy: latency-bound). Q 24 KB + K 3x16 KB + V 3x16 KB + O 24 KB = 144 KB.
# Registers: O 32 + S 64 + P 32 = 128 of 160 (3 x 160 + 24 per thread of each warpgroup fill the register
# file). H100, with the dynamic scheduler: +4-11% over the previous default (two warpgroups, one tile per CTA)
# at 1k-8k; against two warpgroups with the same scheduler +3-13%, except 1k causal (-8%); O staged apart from Q
# +2-5% at 1k-2k (NOTES.md).
CONFIG_D64 = Sm90FwdConfig(head_dim=64, block_n=128, k_stages=3, v_stages=3, block_m=3 * WARPGROUP_ROWS,
                           consumer_regs=160, o_stage=True)

CONFIGS = {cfg.head_dim: cfg for cfg in (CONFIG_D256, CONFIG_D128, CONFIG_D64)}
for _cfg in CONFIGS.values():
    _cfg.check()

SCHEDULERS = ("single", "static", "dynamic")
_SCHEDULER_IDS = {name: i for i, name in enumerate(SCHEDULERS)}


# --------------------------------------------------------------------------------------------------
# Device code
# --------------------------------------------------------------------------------------------------
@gluon.jit
def _tile_coords(tile, num_m_blocks, num_heads_total, heads_per_section, REVERSE_M: gl.constexpr):
    # Heads are grouped into sections whose K/V fit in L2; inside a section the m-block index is the
    # slow one, so concurrent CTAs work on the same few heads. Causal runs longest tiles first.
    section_tiles = num_m_blocks * heads_per_section
    section = tile // section_tiles
    first_head = section * heads_per_section
    heads_here = gl.minimum(heads_per_section, num_heads_total - first_head)
    local = tile - section * section_tiles
    m_block = local // heads_here
    bh = first_head + local - m_block * heads_here
    if REVERSE_M:
        m_block = num_m_blocks - 1 - m_block
    return m_block, bh


@gluon.jit
def _consumer_next_tile(tile, tile_iter, num_tiles, tile_slot, tile_ready, tile_empty,
                        SCHEDULER: gl.constexpr):
    # "single"/"static": the next tile is one grid further. "dynamic": the producer publishes it in
    # shared memory; read it, then tell the producer the slot is free. Every thread reads the one word:
    # no cross-warp reduction, and no per-thread address held in registers through the key loop.
    if SCHEDULER == 2:
        mbarrier.wait(tile_ready, (tile_iter - 1) & 1)
        tile = gl.max(tile_slot.load(gl.BlockedLayout([1], [32], [4], [0])), axis=0)
        mbarrier.arrive(tile_empty)
    elif SCHEDULER == 1:
        tile = tile + gl.num_programs(0)
    else:
        tile = num_tiles  # one tile per CTA
    return tile


@gluon.jit
def _per_tile(WG: gl.constexpr, tile_iter, SCHEDULER: gl.constexpr):
    # A persistent loop's buffer index WG, recomputed on each tile (opaque_zero): the Q and O staging addresses
    # derived from it are then not held in registers through the key loop, which left ptxas too few at d=256 to
    # keep the softmax's exp2 apart from the PV wgmma's operands (9 MUFU.EX2 under PV instead of 15, SASS).
    if SCHEDULER == 0:
        return WG
    return WG + opaque_zero(tile_iter)


@gluon.jit
def _apply_mask(s, row_start, col_start, seqlen_q, seqlen_k, window_left, window_right, s_layout: gl.constexpr,
                WG_ROWS: gl.constexpr, BLOCK_N: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
                RIGHT_BOUNDED: gl.constexpr):
    left_offset, right_offset = window_offsets(seqlen_q, seqlen_k, window_left, window_right)
    keep = visible_keys(row_start, col_start, seqlen_k, left_offset, right_offset, s_layout, WG_ROWS, BLOCK_N,
                        LEFT_BOUNDED, RIGHT_BOUNDED)
    return gl.where(keep, s, -float("inf"))


@gluon.jit
def _key_block(j, kv_iter, o, p, m_i, l_i, grow, q_buf, q_op, ring, rows, qk_scale, softcap_scale, masked,
               s_layout: gl.constexpr, p_layout: gl.constexpr, o_rows: gl.constexpr,
               WG_ROWS: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, K_STAGES: gl.constexpr,
               V_STAGES: gl.constexpr,
               LEFT_BOUNDED: gl.constexpr, RIGHT_BOUNDED: gl.constexpr, SOFTCAP: gl.constexpr,
               RESCALE_THRESHOLD: gl.constexpr, POLY_EIGHTHS: gl.constexpr, Q_REG_COLS: gl.constexpr):
    """Key block j >= lo + 1 of a consumer's loop: issue S_j = Q K_j^T, then O += P_{j-1} V_{j-1}; the
    softmax of S_j runs while PV_{j-1} is on the tensor cores. `masked`: a constexpr where the caller's loop
    holds only masked or only unmasked blocks, else a runtime flag. Returns the state for block j + 1."""
    k_smem, v_smem, k_ready, k_empty, v_ready, v_empty = ring
    row_start, q_len, k_len, window_left, window_right = rows
    stage = kv_iter % K_STAGES
    mbarrier.wait(k_ready.index(stage), (kv_iter // K_STAGES) & 1)
    s = _scores(q_buf, q_op, k_smem.index(stage), s_layout, WG_ROWS, BLOCK_N, HEAD_DIM, Q_REG_COLS)
    prev_stage = (kv_iter - 1) % V_STAGES  # block j-1's V
    mbarrier.wait(v_ready.index(prev_stage), ((kv_iter - 1) // V_STAGES) & 1)
    o = warpgroup_mma(p, v_smem.index(prev_stage), o, is_async=True)
    s = warpgroup_mma_wait(1, deps=(s, ))
    mbarrier.arrive(k_empty.index(stage))
    s = soft_cap(s, softcap_scale, SOFTCAP)
    if masked:
        s = _apply_mask(s, row_start, j * BLOCK_N, q_len, k_len, window_left, window_right, s_layout, WG_ROWS,
                        BLOCK_N, LEFT_BOUNDED, RIGHT_BOUNDED)
    m_new = gl.maximum(m_i, gl.max(s, axis=1))
    if RESCALE_THRESHOLD > 0:
        # Lazy rescale: keep the stale max (P <= 2^threshold) unless some row of the warpgroup grew by more
        # than the threshold; then O needs no multiply at all.
        grow = gl.max(((m_new - m_i) * qk_scale > RESCALE_THRESHOLD).to(gl.int32), axis=0)
        m_new = gl.where(grow > 0, m_new, m_i)
    m_scaled = gl.where(m_new == -float("inf"), 0.0, m_new * qk_scale)
    alpha = gl.exp2(m_i * qk_scale - m_scaled)
    p_f32 = exp2_split_gl(s * qk_scale - m_scaled[:, None], POLY_EIGHTHS)
    l_i = l_i * alpha + gl.sum(p_f32, axis=1)
    o, p = warpgroup_mma_wait(0, deps=(o, p))
    mbarrier.arrive(v_empty.index(prev_stage))
    o = _rescale(o, alpha, grow, o_rows, RESCALE_THRESHOLD)
    p = gl.convert_layout(p_f32.to(q_buf.dtype), p_layout)
    return kv_iter + 1, o, p, m_new, l_i, grow


@gluon.jit
def _rescale(o, alpha, grow, o_rows: gl.constexpr, RESCALE_THRESHOLD: gl.constexpr):
    """O *= alpha per row (with the lazy rescale: only when some row's max grew past the threshold)."""
    if RESCALE_THRESHOLD > 0:
        if grow > 0:
            o = o * gl.convert_layout(alpha, o_rows, assert_trivial=True)[:, None]
    else:
        o = o * gl.convert_layout(alpha, o_rows, assert_trivial=True)[:, None]
    return o


@gluon.jit
def _scores(q_buf, q_op, k_buf, s_layout: gl.constexpr, WG_ROWS: gl.constexpr, BLOCK_N: gl.constexpr,
            HEAD_DIM: gl.constexpr, Q_REG_COLS: gl.constexpr):
    """Issue S = Q K^T (async): Q's first Q_REG_COLS columns from registers (q_op), the rest from shared memory."""
    zero = gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout)
    if Q_REG_COLS == 0:
        s = warpgroup_mma(q_buf, k_buf.permute((1, 0)), zero, use_acc=False, is_async=True)
    else:
        s = warpgroup_mma(q_op, k_buf.slice(0, Q_REG_COLS, dim=1).permute((1, 0)), zero, use_acc=False,
                          is_async=True)
        for c in gl.static_range(1, HEAD_DIM // Q_REG_COLS):  # the rest in Q_REG_COLS-wide pieces
            s = warpgroup_mma(q_buf.slice(c * Q_REG_COLS, Q_REG_COLS, dim=1),
                              k_buf.slice(c * Q_REG_COLS, Q_REG_COLS, dim=1).permute((1, 0)), s, is_async=True)
    return s


@gluon.jit
def _producer(args, meta: gl.constexpr):
    (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, bars, tile_slot, tile_counter, cu_seqlens_q, cu_seqlens_k,
     seqlen_q, seqlen_k, num_m_blocks, num_heads, num_heads_total, group_size, heads_per_section, num_tiles,
     window_left, window_right) = args
    BLOCK_M, BLOCK_N, K_STAGES, V_STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, SCHEDULER, VARLEN = meta
    q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, tile_ready, tile_empty = bars
    WG_ROWS: gl.constexpr = 64
    CONSUMERS: gl.constexpr = BLOCK_M // WG_ROWS
    kv_iter = 0
    tile_iter = 0
    tile = gl.program_id(0)
    while tile < num_tiles:
        m_block, bh = _tile_coords(tile, num_m_blocks, num_heads_total, heads_per_section, RIGHT_BOUNDED)
        b = bh // num_heads
        h = bh - b * num_heads
        kv_h = h // group_size
        q_batch, q_first, q_len, _q_flat = sequence_rows(b, cu_seqlens_q, seqlen_q, VARLEN)
        k_batch, k_first, k_len, _k_flat = sequence_rows(b, cu_seqlens_k, seqlen_k, VARLEN)
        m_start = m_block * BLOCK_M
        for w in gl.static_range(CONSUMERS):
            mbarrier.wait(q_empty.index(w), (tile_iter & 1) ^ 1)
            mbarrier.expect(q_ready.index(w), q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(q_desc, [q_batch, q_first + m_start + w * WG_ROWS, h, 0],
                                            q_ready.index(w), q_smem.index(w))
        lo, hi = key_blocks(m_start, BLOCK_M, q_len, k_len, window_left, window_right, BLOCK_N,
                             LEFT_BOUNDED, RIGHT_BOUNDED)
        lo, hi = clip_to_sequence(lo, hi, m_start, q_len, VARLEN)
        for j in range(lo, hi):
            stage = kv_iter % K_STAGES
            mbarrier.wait(k_empty.index(stage), ((kv_iter // K_STAGES) & 1) ^ 1)
            mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [k_batch, k_first + j * BLOCK_N, kv_h, 0],
                                            k_ready.index(stage), k_smem.index(stage))
            stage = kv_iter % V_STAGES
            mbarrier.wait(v_empty.index(stage), ((kv_iter // V_STAGES) & 1) ^ 1)
            mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [k_batch, k_first + j * BLOCK_N, kv_h, 0],
                                            v_ready.index(stage), v_smem.index(stage))
            kv_iter += 1
        if SCHEDULER == 2:
            # Take the next tile from the global counter (the first grid-size tiles went to the
            # CTAs by program id) and hand it to both consumers once they have read the last one.
            tile = gl.atomic_add(tile_counter, 1) + gl.num_programs(0)
            mbarrier.wait(tile_empty, (tile_iter & 1) ^ 1)
            tile_slot.store(gl.full([1], tile, gl.int32, gl.BlockedLayout([1], [32], [1], [0])))
            mbarrier.arrive(tile_ready)
        else:
            tile += gl.num_programs(0)
        tile_iter += 1


@gluon.jit
def _release_unread(k_ready, k_empty, v_ready, v_empty, kv_iter, K_STAGES: gl.constexpr, V_STAGES: gl.constexpr):
    """A block the other warpgroup needs but these rows cannot see: release it unread."""
    stage = kv_iter % K_STAGES
    mbarrier.wait(k_ready.index(stage), (kv_iter // K_STAGES) & 1)
    mbarrier.arrive(k_empty.index(stage))
    stage = kv_iter % V_STAGES
    mbarrier.wait(v_ready.index(stage), (kv_iter // V_STAGES) & 1)
    mbarrier.arrive(v_empty.index(stage))
    return kv_iter + 1


@gluon.jit
def _consumer(args, WG: gl.constexpr, meta: gl.constexpr):
    # runtime arguments and constexprs arrive as one tuple each (see sm90_attn_fwd_kernel)
    (q_smem, o_smem, k_smem, v_smem, bars, tile_slot, o_desc, o_ptr, lse_ptr, sink_ptr, cu_seqlens_q, cu_seqlens_k,
     qk_scale, seqlen_q, seqlen_k, total_q, num_m_blocks, num_heads, num_heads_total, heads_per_section, num_tiles,
     window_left, window_right, softcap_scale) = args
    (BLOCK_M, BLOCK_N, HEAD_DIM, K_STAGES, V_STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP, HAS_SINK, SCHEDULER,
     RESCALE_THRESHOLD, POLY_EIGHTHS, VARLEN, Q_REG_COLS, O_STAGE) = meta
    q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, tile_ready, tile_empty = bars
    WG_ROWS: gl.constexpr = 64
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    q_op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    LN2: gl.constexpr = 0.6931471805599453

    q_buf = q_smem.index(WG)
    kv_iter = 0
    tile_iter = 0
    tile = gl.program_id(0)
    while tile < num_tiles:
        m_block, bh = _tile_coords(tile, num_m_blocks, num_heads_total, heads_per_section, RIGHT_BOUNDED)
        b = bh // num_heads
        h = bh - b * num_heads
        _q_batch, _q_first, q_len, _q_flat = sequence_rows(b, cu_seqlens_q, seqlen_q, VARLEN)
        _k_batch, _k_first, k_len, _k_flat = sequence_rows(b, cu_seqlens_k, seqlen_k, VARLEN)
        row_start = m_block * BLOCK_M + WG * WG_ROWS
        # The producer streams the blocks the whole 128-row tile sees; with a window or causal mask
        # this warpgroup's rows see a sub-range [lo, hi) and release the rest unread.
        tile_lo, tile_hi = key_blocks(m_block * BLOCK_M, BLOCK_M, q_len, k_len, window_left, window_right,
                                       BLOCK_N, LEFT_BOUNDED, RIGHT_BOUNDED)
        tile_lo, tile_hi = clip_to_sequence(tile_lo, tile_hi, m_block * BLOCK_M, q_len, VARLEN)
        lo, hi = key_blocks(row_start, WG_ROWS, q_len, k_len, window_left, window_right, BLOCK_N,
                             LEFT_BOUNDED, RIGHT_BOUNDED)
        lo = gl.minimum(gl.maximum(lo, tile_lo), tile_hi)
        hi = gl.minimum(gl.maximum(hi, lo), tile_hi)
        unmasked_lo, unmasked_hi = unmasked_key_blocks(row_start, WG_ROWS, q_len, k_len, window_left,
                                                    window_right, BLOCK_N, LEFT_BOUNDED, RIGHT_BOUNDED)
        for j in range(tile_lo, lo):
            kv_iter = _release_unread(k_ready, k_empty, v_ready, v_empty, kv_iter, K_STAGES, V_STAGES)

        m_i = gl.full([WG_ROWS], -float("inf"), gl.float32, s_rows)
        l_i = gl.zeros([WG_ROWS], gl.float32, s_rows)
        o = gl.zeros([WG_ROWS, HEAD_DIM], gl.float32, o_layout)
        mbarrier.wait(q_ready.index(WG), tile_iter & 1)
        q_op = 0
        if Q_REG_COLS > 0:
            q_op = q_smem.index(_per_tile(WG, tile_iter, SCHEDULER)).slice(0, Q_REG_COLS, dim=1).load(q_op_layout)
        if hi > lo:
            # First block: S = Q K^T, softmax, no O yet.
            stage = kv_iter % K_STAGES
            mbarrier.wait(k_ready.index(stage), (kv_iter // K_STAGES) & 1)
            s = _scores(q_buf, q_op, k_smem.index(stage), s_layout, WG_ROWS, BLOCK_N, HEAD_DIM, Q_REG_COLS)
            s = warpgroup_mma_wait(0, deps=(s, ))
            mbarrier.arrive(k_empty.index(stage))
            s = soft_cap(s, softcap_scale, SOFTCAP)
            if (lo < unmasked_lo) | (lo >= unmasked_hi):
                s = _apply_mask(s, row_start, lo * BLOCK_N, q_len, k_len, window_left, window_right,
                                s_layout, WG_ROWS, BLOCK_N, LEFT_BOUNDED, RIGHT_BOUNDED)
            m_i = gl.max(s, axis=1)
            m_scaled = gl.where(m_i == -float("inf"), 0.0, m_i * qk_scale)
            p_f32 = exp2_split_gl(s * qk_scale - m_scaled[:, None], POLY_EIGHTHS)
            l_i = gl.sum(p_f32, axis=1)
            p = gl.convert_layout(p_f32.to(dtype), p_layout)
            kv_iter += 1
            # (re)define O only now, so its zeros are not live through block 0's softmax
            o = gl.zeros([WG_ROWS, HEAD_DIM], gl.float32, o_layout)
            grow = gl.to_tensor(0)
            ring = (k_smem, v_smem, k_ready, k_empty, v_ready, v_empty)
            rows = (row_start, q_len, k_len, window_left, window_right)
            if HEAD_DIM != 256 or LEFT_BOUNDED or (VARLEN and RIGHT_BOUNDED) or POLY_EIGHTHS > 0:
                # One loop, the mask a branch in it. The split below measured 2-4% slower at d=64 and within
                # noise at d=128 (H200, 2026-12-02). A left window edge needs a third loop (masked blocks at
                # both ends), which spills 24-32 B causal, as the split does with causal varlen; the exp2
                # emulation's measurements (BENCHMARKS.md) are of this form.
                for j in range(lo + 1, hi):
                    kv_iter, o, p, m_i, l_i, grow = _key_block(
                        j, kv_iter, o, p, m_i, l_i, grow, q_buf, q_op, ring, rows, qk_scale, softcap_scale,
                        (j < unmasked_lo) | (j >= unmasked_hi), s_layout, p_layout, o_rows, WG_ROWS, BLOCK_N,
                        HEAD_DIM, K_STAGES, V_STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP, RESCALE_THRESHOLD,
                        POLY_EIGHTHS, Q_REG_COLS)
            else:
                # Unmasked blocks, then the masked ones (causal diagonal, ragged end) in a second loop, so that
                # the mask is no branch inside a loop: at the merge after such a branch ptxas waits for every
                # wgmma in flight, which put PV_{j-1}'s wait above the softmax of S_j (SASS: WARPGROUP.DEPBAR
                # before the first MUFU.EX2) and lost the intra-warpgroup overlap. H200: +2-7% (NOTES.md).
                last_unmasked = gl.minimum(gl.maximum(unmasked_hi, lo + 1), hi)
                for j in range(lo + 1, last_unmasked):
                    kv_iter, o, p, m_i, l_i, grow = _key_block(
                        j, kv_iter, o, p, m_i, l_i, grow, q_buf, q_op, ring, rows, qk_scale, softcap_scale, False,
                        s_layout, p_layout, o_rows, WG_ROWS, BLOCK_N, HEAD_DIM, K_STAGES, V_STAGES, LEFT_BOUNDED,
                        RIGHT_BOUNDED, SOFTCAP, RESCALE_THRESHOLD, POLY_EIGHTHS, Q_REG_COLS)
                for j in range(last_unmasked, hi):
                    kv_iter, o, p, m_i, l_i, grow = _key_block(
                        j, kv_iter, o, p, m_i, l_i, grow, q_buf, q_op, ring, rows, qk_scale, softcap_scale, True,
                        s_layout, p_layout, o_rows, WG_ROWS, BLOCK_N, HEAD_DIM, K_STAGES, V_STAGES, LEFT_BOUNDED,
                        RIGHT_BOUNDED, SOFTCAP, RESCALE_THRESHOLD, POLY_EIGHTHS, Q_REG_COLS)
            if O_STAGE:  # the last QK^T has read Q: the next tile's may load under the last PV
                mbarrier.arrive(q_empty.index(WG))
            last_stage = (kv_iter - 1) % V_STAGES
            mbarrier.wait(v_ready.index(last_stage), ((kv_iter - 1) // V_STAGES) & 1)
            o = warpgroup_mma(p, v_smem.index(last_stage), o, is_async=True)
            o, p = warpgroup_mma_wait(0, deps=(o, p))
            mbarrier.arrive(v_empty.index(last_stage))
        elif O_STAGE:
            mbarrier.arrive(q_empty.index(WG))
        for j in range(hi, tile_hi):
            kv_iter = _release_unread(k_ready, k_empty, v_ready, v_empty, kv_iter, K_STAGES, V_STAGES)

        # Epilogue: normalise, write lse, stage O in this warpgroup's O buffer (O_STAGE) or its now dead Q and store
        # it (sm90_rows.store_tile: rows past the sequence are not written); then the producer may reload that Q.
        m_row = m_i * qk_scale  # the row max in base-2 units (-inf: the row saw no key)
        if HAS_SINK:
            # the sink's logit joins the denominator: rescale to max(row max, sink), add its term
            sink2 = gl.load(sink_ptr + h).to(gl.float32) * 1.4426950408889634
            m_eff = gl.maximum(m_row, sink2)
            alpha = gl.exp2(m_row - m_eff)
            l_i = l_i * alpha + gl.exp2(sink2 - m_eff)
            o = o * gl.convert_layout(alpha / l_i, o_rows, assert_trivial=True)[:, None]
            lse = (m_eff + gl.log2(l_i)) * LN2
        else:
            l_o = gl.convert_layout(l_i, o_rows, assert_trivial=True)
            o = o * gl.where(l_o > 0.0, 1.0 / l_o, 0.0)[:, None]
            lse = gl.where(l_i > 0.0, (m_row + gl.log2(l_i)) * LN2, -float("inf"))
        # where the rows go: looked up again here rather than kept live through the key loop
        q_batch, q_first, q_len, q_flat = sequence_rows(b, cu_seqlens_q, seqlen_q, VARLEN)
        rows = row_start + gl.arange(0, WG_ROWS, s_rows)
        # int32 offset: H * total_q < 2^31 whenever q fits in memory; an int64 one spilled at d=256
        gl.store(lse_ptr + (h * total_q + q_flat) + rows, lse, mask=rows < q_len)
        store_tile(o.to(dtype), o_smem.index(_per_tile(WG, tile_iter, SCHEDULER)), o_desc, o_ptr, num_heads * HEAD_DIM,
                   q_batch, q_first, row_start, h, q_len, WG_ROWS, HEAD_DIM, 4, VARLEN)
        gl.thread_barrier()  # each warp finished its own stores; now all of them have
        if not O_STAGE:
            mbarrier.arrive(q_empty.index(WG))
        tile_iter += 1
        tile = _consumer_next_tile(tile, tile_iter, num_tiles, tile_slot, tile_ready, tile_empty,
                                   SCHEDULER)


# Sizes are not specialised (no recompiles for seqlen 1 or odd lengths); only the constexprs are.
@gluon.jit(do_not_specialize=["seqlen_q", "seqlen_k", "total_q", "num_heads", "group_size", "heads_per_section",
                              "num_m_blocks", "num_heads_total", "num_tiles", "window_left", "window_right"])
def sm90_attn_fwd_kernel(q_desc, k_desc, v_desc, o_desc, o_ptr, lse_ptr, sink_ptr, cu_seqlens_q, cu_seqlens_k,
                         tile_counter, qk_scale, seqlen_q, seqlen_k, total_q, num_heads, group_size,
                         heads_per_section, num_m_blocks, num_heads_total, num_tiles, window_left, window_right,
                         softcap_scale,
                         BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                         K_STAGES: gl.constexpr, V_STAGES: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
                         RIGHT_BOUNDED: gl.constexpr,
                         SOFTCAP: gl.constexpr, HAS_SINK: gl.constexpr, SCHEDULER: gl.constexpr,
                         RESCALE_THRESHOLD: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                         PRODUCER_REGS: gl.constexpr, POLY_EIGHTHS: gl.constexpr, VARLEN: gl.constexpr,
                         Q_REG_COLS: gl.constexpr, O_STAGE: gl.constexpr):
    WG_ROWS: gl.constexpr = 64
    CONSUMERS: gl.constexpr = BLOCK_M // WG_ROWS
    dtype: gl.constexpr = q_desc.dtype
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([WG_ROWS, HEAD_DIM], dtype)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    q_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, WG_ROWS, HEAD_DIM], q_layout)
    if O_STAGE:
        o_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, WG_ROWS, HEAD_DIM], q_layout)
    else:
        o_smem = q_smem
    k_smem = gl.allocate_shared_memory(dtype, [K_STAGES, BLOCK_N, HEAD_DIM], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [V_STAGES, BLOCK_N, HEAD_DIM], kv_layout)
    tile_slot = gl.allocate_shared_memory(gl.int32, [1], gl.SwizzledSharedLayout(1, 1, 1, [0]))

    q_ready = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [K_STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [K_STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [V_STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [V_STAGES, 1], mbarrier.MBarrierLayout())
    tile_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    tile_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for w in gl.static_range(CONSUMERS):
        mbarrier.init(q_ready.index(w), count=1)
        mbarrier.init(q_empty.index(w), count=1)
    # every consumer warpgroup releases each K and V slot
    for i in gl.static_range(K_STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=CONSUMERS)
    for i in gl.static_range(V_STAGES):
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(v_empty.index(i), count=CONSUMERS)
    mbarrier.init(tile_ready, count=1)
    mbarrier.init(tile_empty, count=CONSUMERS)
    bars = (q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, tile_ready, tile_empty)

    # warp_specialize passes a tuple of runtime values through to a partition, and a tuple of constexprs only as a
    # constexpr value (a plain tuple would turn them into runtime values): one of each per partition.
    consumer_args = (q_smem, o_smem, k_smem, v_smem, bars, tile_slot, o_desc, o_ptr, lse_ptr, sink_ptr, cu_seqlens_q,
                     cu_seqlens_k, qk_scale, seqlen_q, seqlen_k, total_q, num_m_blocks, num_heads, num_heads_total,
                     heads_per_section, num_tiles, window_left, window_right, softcap_scale)
    consumer_meta: gl.constexpr = (BLOCK_M, BLOCK_N, HEAD_DIM, K_STAGES, V_STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, SOFTCAP,
                                   HAS_SINK, SCHEDULER, RESCALE_THRESHOLD, POLY_EIGHTHS, VARLEN, Q_REG_COLS,
                                   O_STAGE)
    producer_args = (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, bars, tile_slot, tile_counter, cu_seqlens_q,
                     cu_seqlens_k, seqlen_q, seqlen_k, num_m_blocks, num_heads, num_heads_total, group_size,
                     heads_per_section, num_tiles, window_left, window_right)
    producer_meta: gl.constexpr = (BLOCK_M, BLOCK_N, K_STAGES, V_STAGES, LEFT_BOUNDED, RIGHT_BOUNDED, SCHEDULER, VARLEN)
    if CONSUMERS == 3:
        gl.warp_specialize([(_consumer, (consumer_args, 0, consumer_meta)),
                            (_consumer, (consumer_args, 1, consumer_meta)),
                            (_consumer, (consumer_args, 2, consumer_meta)),
                            (_producer, (producer_args, producer_meta))],
                           [4, 4, 1], [CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize([(_consumer, (consumer_args, 0, consumer_meta)),
                            (_consumer, (consumer_args, 1, consumer_meta)),
                            (_producer, (producer_args, producer_meta))],
                           [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


# --------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------
_GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}
_SIG_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_SM_COUNT: dict[int, int] = {}
_INT_PLACEHOLDERS: dict[torch.device, torch.Tensor] = {}


def int_placeholder(device: torch.device) -> torch.Tensor:
    """A one-element int32 tensor for pointer arguments a kernel variant never reads (the tile counter
    outside the dynamic scheduler, cu_seqlens outside varlen)."""
    if device not in _INT_PLACEHOLDERS:
        _INT_PLACEHOLDERS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _INT_PLACEHOLDERS[device]


def _tma_compatible(t: torch.Tensor) -> bool:
    size = t.element_size()
    return (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
            and all((stride * size) % 16 == 0 for stride in t.stride()[:-1]))


def _tma_operand(t: torch.Tensor) -> torch.Tensor:
    # TMA needs a 16-byte aligned base and 16-byte aligned strides; copy only when they are not.
    if _tma_compatible(t):
        return t
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


def io_block(head_dim: int, rows: int) -> list[int]:
    # TMA box over the (batch, seqlen, heads, head_dim) tensor: `rows` tokens of one head
    return [1, rows, 1, head_dim]


@functools.lru_cache(maxsize=None)
def smem_layout(head_dim: int, rows: int, gl_dtype):
    # cached: building the layout costs ~20 us of Python, paid per descriptor per call otherwise
    return gl.NVMMASharedLayout.get_default_for(io_block(head_dim, rows), gl_dtype)


def tma_descriptor(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """Descriptor of a (B, S, H, D) tensor whose box is `rows` tokens of one head (the sm90 kernels' tiles)."""
    head_dim = t.shape[-1]
    return TensorDescriptor(t, list(t.shape), list(t.stride()), io_block(head_dim, rows),
                            smem_layout(head_dim, rows, _GL_DTYPES[t.dtype]))


def default_scheduler(cfg: Sm90FwdConfig, window: tuple[int, int], softcap: float, has_sink: bool,
                      poly_eighths: int = 0) -> str:
    """"dynamic" (persistent grid, atomic tile counter): a persistent CTA loads its next tile's K/V while it
    finishes this one, and its L2-sectioned order keeps the SMs on the same K/V where one head's K and V outgrow
    the L2. H100 against "single" (one tile per CTA), NOTES.md: d <= 128 up to +14% at 1k-2k, level at 8k; d=256
    +2% at 1k-2k, level at 4k-32k, causal 64k +2-5%, non-causal 64k-128k level to -2.5% (H200: 128k +12%).
    "single" where the persistent kernel was not measured ahead: d=256 with a window, soft cap or sink, and the
    exp2 polynomial (poly_eighths > 0), which with the tile loop's scalars spills in the key loop at d <= 128."""
    if poly_eighths:
        return "single"
    plain = window == (-1, -1) and softcap == 0 and not has_sink
    return "dynamic" if cfg.head_dim <= 128 or plain else "single"


def _scheduler_name(scheduler: str | None, default: str) -> str:
    name = scheduler or os.environ.get("FLASH256_SCHEDULER") or default
    if name not in SCHEDULERS:
        raise ValueError(f"FLASH256_SCHEDULER / scheduler must be one of {SCHEDULERS}, got {name!r}")
    return name


def _heads_per_section(seqlen_k: int, cfg: Sm90FwdConfig, group_size: int) -> int:
    kv_bytes_per_query_head = 2 * seqlen_k * cfg.head_dim * cfg.elem_bytes / group_size
    return max(1, int(L2_SECTION_BYTES // max(kv_bytes_per_query_head, 1)))


def sm90_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float, causal: bool,
                 window: tuple[int, int] = (-1, -1), softcap: float = 0.0, sink: torch.Tensor | None = None,
                 scheduler: str | None = None, config: Sm90FwdConfig | None = None,
                 poly_eighths: int = 0, cu_seqlens_q: torch.Tensor | None = None,
                 cu_seqlens_k: torch.Tensor | None = None, max_seqlen_q: int = 0,
                 max_seqlen_k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention forward on Hopper. Returns (out (B, Sq, H, D), lse (H, B*Sq) float32, natural log).

    window: (left, right) flash-attn sliding window, -1 unbounded (causal forces right = 0); key blocks
    outside it are never loaded. softcap: scores become softcap * tanh(scores / softcap) when > 0.
    sink: (H,) fp32 learnable sink logits (one extra term in every row's softmax denominator) or None.
    scheduler: "single" | "static" | "dynamic" (default: FLASH256_SCHEDULER, else default_scheduler);
    config: a tuning override of CONFIGS[head_dim];
    poly_eighths: eighths of each score tile whose exp2 runs as an FMA polynomial (flash256.ex2).
    cu_seqlens_q / cu_seqlens_k: int32 offsets of packed sequences in (1, total, H, D) inputs, whose
    lengths are at most max_seqlen_q / max_seqlen_k (varlen; one CTA per tile, the "single" scheduler).
    """
    batch, seqlen_q, nheads, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    cfg = config or CONFIGS[head_dim]
    varlen = cu_seqlens_q is not None
    # persistent CTAs would have to agree on skipping the tiles past a short sequence: not worth it
    sched = "single" if varlen else _scheduler_name(
        scheduler, default_scheduler(cfg, window, softcap, sink is not None, poly_eighths))
    q, k, v = _tma_operand(q), _tma_operand(k), _tma_operand(v)
    out = torch.empty((batch, seqlen_q, nheads, head_dim), dtype=q.dtype, device=q.device)
    total_q = batch * seqlen_q
    lse = torch.empty((nheads, total_q), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    num_seqs = cu_seqlens_q.numel() - 1 if varlen else batch
    max_q, max_k = (max_seqlen_q, max_seqlen_k) if varlen else (seqlen_q, seqlen_k)

    q_desc = tma_descriptor(q, WARPGROUP_ROWS)
    o_desc = tma_descriptor(out, WARPGROUP_ROWS)
    k_desc = tma_descriptor(k, cfg.block_n)
    v_desc = tma_descriptor(v, cfg.block_n)

    group_size = nheads // nheads_kv
    num_m_blocks = triton.cdiv(max_q, cfg.block_m)
    num_heads_total = num_seqs * nheads
    num_tiles = num_m_blocks * num_heads_total
    if sched == "single":
        grid = num_tiles
    else:
        dev = q.device.index if q.device.index is not None else torch.cuda.current_device()
        if dev not in _SM_COUNT:
            _SM_COUNT[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
        grid = min(num_tiles, _SM_COUNT[dev])
    # the dynamic scheduler's tile counter must start at zero on every launch; others ignore it
    if sched == "dynamic":
        tile_counter = torch.zeros(1, dtype=torch.int32, device=q.device)
    else:
        tile_counter = int_placeholder(q.device)
    window_left, window_right, mask_flags = mask_arguments(max_q, max_k, causal, window)
    qk_scale, softcap_scale = score_scales(softmax_scale, softcap)
    sink_ptr = lse if sink is None else sink.float().contiguous()  # never read without a sink
    cu_q, cu_k = (cu_seqlens_q, cu_seqlens_k) if varlen else (int_placeholder(q.device), ) * 2
    sm90_attn_fwd_kernel[(grid, )](
        q_desc, k_desc, v_desc, o_desc, out, lse, sink_ptr, cu_q, cu_k, tile_counter, qk_scale,
        seqlen_q, seqlen_k, total_q, nheads, group_size, _heads_per_section(max_k, cfg, group_size),
        num_m_blocks, num_heads_total, num_tiles, window_left, window_right, softcap_scale,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=cfg.head_dim, K_STAGES=cfg.k_stages, V_STAGES=cfg.v_stages,
        SOFTCAP=softcap > 0, HAS_SINK=sink is not None, SCHEDULER=_SCHEDULER_IDS[sched],
        RESCALE_THRESHOLD=cfg.rescale_threshold, Q_REG_COLS=cfg.q_reg_cols, O_STAGE=cfg.o_stage,
        CONSUMER_REGS=cfg.consumer_regs,
        PRODUCER_REGS=cfg.producer_regs, POLY_EIGHTHS=poly_eighths, VARLEN=varlen, num_warps=4,
        maxnreg=cfg.launch_maxnreg, **mask_flags)
    return out, lse


# --------------------------------------------------------------------------------------------------
# Compiling without a GPU (for `python -m flash256.inspect` and resource checks)
# --------------------------------------------------------------------------------------------------
def compile_sm90(cfg: Sm90FwdConfig, causal: bool, scheduler: str = "single",
                 dtype: torch.dtype = torch.bfloat16, poly_eighths: int = 0, left_bounded: bool = False,
                 softcap: bool = False, sink: bool = False, varlen: bool = False):
    """triton.compile the kernel for sm_90a (GPUTarget('cuda', 90, 32)); needs no GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    gl_dtype, sig_dtype = _GL_DTYPES[dtype], _SIG_DTYPES[dtype]

    def desc_sig(rows):
        return f"tensordesc<{sig_dtype}{io_block(cfg.head_dim, rows)},{smem_layout(cfg.head_dim, rows, gl_dtype)!r}>"

    constexprs = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=cfg.head_dim,
                      K_STAGES=cfg.k_stages, V_STAGES=cfg.v_stages, LEFT_BOUNDED=left_bounded,
                      RIGHT_BOUNDED=bool(causal),
                      SOFTCAP=softcap, HAS_SINK=sink, SCHEDULER=_SCHEDULER_IDS[scheduler],
                      RESCALE_THRESHOLD=cfg.rescale_threshold, Q_REG_COLS=cfg.q_reg_cols, O_STAGE=cfg.o_stage,
                      CONSUMER_REGS=cfg.consumer_regs,
                      PRODUCER_REGS=cfg.producer_regs, POLY_EIGHTHS=poly_eighths, VARLEN=varlen)
    signature = dict(q_desc=desc_sig(WARPGROUP_ROWS), k_desc=desc_sig(cfg.block_n), v_desc=desc_sig(cfg.block_n),
                     o_desc=desc_sig(WARPGROUP_ROWS), o_ptr=f"*{sig_dtype}", lse_ptr="*fp32", sink_ptr="*fp32",
                     cu_seqlens_q="*i32", cu_seqlens_k="*i32", tile_counter="*i32", qk_scale="fp32",
                     seqlen_q="i32", seqlen_k="i32", total_q="i32", num_heads="i32", group_size="i32",
                     heads_per_section="i32", num_m_blocks="i32", num_heads_total="i32", num_tiles="i32",
                     window_left="i32", window_right="i32", softcap_scale="fp32")
    signature.update({name: "constexpr" for name in constexprs})
    # torch allocations are 16-byte aligned: the JIT marks such pointers divisible by 16, do the same
    aligned = {(list(signature).index(name), ): [["tt.divisibility", 16]]
               for name in ("o_ptr", "lse_ptr", "sink_ptr", "cu_seqlens_q", "cu_seqlens_k", "tile_counter")}
    src = GluonASTSource(sm90_attn_fwd_kernel, signature, constexprs=constexprs, attrs=aligned)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": 4, "maxnreg": cfg.launch_maxnreg})


def inspect_cases(arch: int = 90, schedulers: tuple[str, ...] = ()):
    """Shipped configurations for `python -m flash256.inspect`, compiled for sm_90a without a GPU.

    Each case with the scheduler default_scheduler picks for it (varlen: "single"); `schedulers` adds those
    schedulers for every configuration, causal and not.
    exp2 emulation variants (2 and 4 eighths on the FMA pipe) show MUFU.EX2 falling, FFMA rising.
    """
    from .compile_target import InspectCase
    if arch != 90:
        return []

    def case(cfg, causal, scheduler=None, label="", **options):
        window = (1024, 0) if options.get("left_bounded") else (-1, -1)
        scheduler = scheduler or default_scheduler(cfg, window, float(options.get("softcap", 0)),
                                                   options.get("sink", False), options.get("poly_eighths", 0))
        # the persistent tile loop's scalars exceed 160 registers between tiles (not in the key loop)
        budget = 32 if (cfg.consumer_warpgroups, causal, scheduler, options) == (3, False, "dynamic", {}) else 0
        return InspectCase("sm90_fwd", f"{cfg.describe()} causal={causal} scheduler={scheduler}{label}"
                           + (f" (spills {budget} B per tile, outside the key loop)" if budget else ""),
                           lambda: compile_sm90(cfg, causal, scheduler, **options), spill_budget=budget)

    cases = [case(cfg, causal, scheduler) for cfg in CONFIGS.values() for causal in (False, True)
             for scheduler in (None, ) + tuple(schedulers)]
    cases += [case(cfg, False, label=f" exp2_poly={eighths}/8", poly_eighths=eighths)
              for cfg in CONFIGS.values() for eighths in (2, 4)]
    # Gemma-style layers: causal sliding window with a soft cap; gpt-oss-style: a window with a sink
    cases += [case(cfg, True, label=" window=(L,0) softcap", left_bounded=True, softcap=True)
              for cfg in CONFIGS.values()]
    cases += [case(cfg, True, label=" window=(L,0) sink", left_bounded=True, sink=True) for cfg in CONFIGS.values()]
    cases += [case(cfg, causal, "single", label=" varlen", varlen=True)
              for cfg in CONFIGS.values() for causal in (False, True)]
    return cases


def resource_usage(compiled) -> dict:
    """Registers, spill stores/loads and shared memory of a compiled kernel, via triton's cuobjdump."""
    import re
    import subprocess
    import tempfile

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        res = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([cuobjdump, "--dump-sass", f.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", res)
    stack = re.search(r"STACK:(\d+)", res)
    return {
        "registers_at_launch": int(regs.group(1)) if regs else None,
        "stack_bytes": int(stack.group(1)) if stack else None,
        "local_loads_stores": len(re.findall(r"\b(?:LDL|STL)\b", sass)),
        "setmaxnreg": sorted({int(n, 16)
                              for n in re.findall(r"USETMAXREG\.[\w.]+ (?:UP\d, )?(0x[0-9a-f]+)", sass)}),
        "hgmma": len(re.findall(r"\bHGMMA\b", sass)),
        "shared_bytes": compiled.metadata.shared,
        "shared_ok": compiled.metadata.shared <= SMEM_LIMIT_SM90,
    }


if __name__ == "__main__":
    for case in inspect_cases(90, SCHEDULERS):
        print(case.config, resource_usage(case.compile()), flush=True)
