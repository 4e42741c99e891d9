"""Tile configurations of the portable tl kernels, with their resource accounting, and the Hopper
limits and register accounting the Gluon kernels' configurations (sm90_fwd.py, sm90_bwd.py) share.

Shared memory is counted for sm_90 (232448 B per block) with bf16/fp16 tiles; registers
are what the fp32 accumulators alone need per thread. `python -m flash256.inspect` compiles
each of these for sm_90a and checks the real numbers (no spills, shared memory in budget).
"""
from dataclasses import dataclass

SMEM_LIMIT_SM90 = 232448  # H100/H200 max dynamic shared memory per block (227 KB)
REGISTERS_PER_SM = 65536
WARPGROUP_ROWS = 64  # rows of one wgmma (m64)
HEAD_DIMS = (64, 128, 256)  # padded head dims the kernels are built for (BLOCK_D)


def padded_head_dim(head_dim: int) -> int:
    """The power-of-two tile width covering head_dim; TMA zero-fills the padding."""
    for block_d in HEAD_DIMS:
        if head_dim <= block_d:
            return block_d
    raise ValueError(f"head_dim {head_dim} > 256")


class WarpSpecializedResources:
    """Accounting shared by the Gluon kernels' frozen configurations: consumer warpgroups (two unless a
    configuration says otherwise) and the producer's warpgroup, registers moved with setmaxnreg per warpgroup.
    A subclass has consumer_regs, producer_regs, smem_total and describe()."""
    consumer_warpgroups = 2

    @property
    def register_budget(self) -> int:
        return 128 * (self.consumer_warpgroups * self.consumer_regs + self.producer_regs)

    @property
    def launch_maxnreg(self) -> int:
        # registers per thread at launch (before setmaxnreg): the register file spread over every warpgroup
        # (12 warps with two consumer warpgroups: the producer's one warp is padded to a warpgroup)
        return (REGISTERS_PER_SM // (128 * (self.consumer_warpgroups + 1))) // 8 * 8

    def check_resources(self) -> None:
        assert self.smem_total <= SMEM_LIMIT_SM90, self.describe()
        assert self.register_budget <= REGISTERS_PER_SM, self.describe()


@dataclass(frozen=True)
class TileConfig:
    block_m: int     # query rows per tile
    block_n: int     # key rows per tile
    num_warps: int
    num_stages: int  # software-pipelining depth of the tile loop

    def __str__(self):
        return f"m{self.block_m}n{self.block_n}w{self.num_warps}s{self.num_stages}"


# Forward: one program owns BLOCK_M query rows and streams K/V tiles.
#   d=256: Q 64 KB + (K 32 KB + V 32 KB) x 2 stages = 192 KB; O accumulator 128x256 fp32
#          over 256 threads = 128 regs/thread, S/P 128x64 = 32 regs/thread.
#   d=128: Q 32 KB + (K 16 KB + V 16 KB) x 3 = 128 KB; O 64 regs/thread (8 warps).
#   d=64:  Q 16 KB + (K 8 KB + V 8 KB) x 3 = 64 KB; O 64 regs/thread (4 warps).
FORWARD = {
    64: TileConfig(block_m=128, block_n=64, num_warps=4, num_stages=3),
    128: TileConfig(block_m=128, block_n=64, num_warps=8, num_stages=3),
    256: TileConfig(block_m=128, block_n=64, num_warps=8, num_stages=2),
}

# Backward, dK/dV kernel: one program owns BLOCK_N key rows (K, V resident in shared
# memory) and streams Q/dO tiles of every query head of its GQA group.
#   d=256: K 32 KB + V 32 KB + (Q 16 KB + dO 16 KB) x 2 = 128 KB; dK + dV 2 x 64x256
#          fp32 over 256 threads = 128 regs/thread; S^T, dP^T 64x32 fp32 = 8 regs each.
#          (BLOCK_M=64 doubles S^T/dP^T and spills.)
#   d=128: K 16 KB + V 16 KB + (Q 16 KB + dO 16 KB) x 2 = 96 KB; dK + dV 64 regs/thread.
# dQ kernel: one program owns BLOCK_M query rows (Q, dO resident) and streams K/V tiles.
#   d=256: Q 32 KB + dO 32 KB + (K 32 KB + V 32 KB) x 2 = 192 KB; dQ 64 regs/thread.
BACKWARD_DKDV = {
    64: TileConfig(block_m=64, block_n=128, num_warps=8, num_stages=2),
    128: TileConfig(block_m=64, block_n=64, num_warps=8, num_stages=2),
    256: TileConfig(block_m=32, block_n=64, num_warps=8, num_stages=2),
}
BACKWARD_DQ = {
    64: TileConfig(block_m=128, block_n=64, num_warps=8, num_stages=2),
    128: TileConfig(block_m=128, block_n=64, num_warps=8, num_stages=2),
    256: TileConfig(block_m=64, block_n=64, num_warps=8, num_stages=2),
}
# Preprocess (delta = rowsum(dO * O)): a bandwidth-bound row reduction.
PREPROCESS_BLOCK_M = 64


# exp2 emulation (flash256.ex2): eighths of each forward score tile whose exp2 runs as an FMA
# polynomial instead of MUFU.EX2, per (head_dim, causal). Overridden by the
# `exp2_poly_fraction` argument or FLASH256_EXP2_POLY_FRACTION. 0 everywhere: the H100 and H200 sweeps
# (BENCHMARKS.md, 0..7/8 at d 64/128/256) found no gain; the backward always uses the hardware exp2.
EXP2_POLY_EIGHTHS: dict[tuple[int, bool], int] = {}


def exp2_poly_eighths(head_dim: int, causal: bool) -> int:
    return EXP2_POLY_EIGHTHS.get((padded_head_dim(head_dim), causal), 0)
