"""Persistent tile scheduling shared by the sm90 kernels (the forward, the backward's d=256 dK/dV kernel).

A persistent grid runs one CTA per SM; each CTA walks a sequence of tiles. With the dynamic scheduler the
producer warp takes the next tile from a global atomic counter (the first grid-size tiles went to the CTAs
by program id) and hands it to the two consumer warpgroups through a one-slot mailbox in shared memory:
`tile_slot` (128 int32: one per consumer thread, so each reads it without a cross-thread step),
`tile_ready` (count 1: the producer's arrive) and `tile_empty` (count 2: both consumers have read it).
So CTAs take tiles in list order as they free up, as the hardware block scheduler would, but a CTA's next
tile can start loading while its consumers still finish the last one.
"""
import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

_SM_COUNT: dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """Number of SMs of a CUDA device (cached: the property query costs host time on every call)."""
    dev = device.index if device.index is not None else torch.cuda.current_device()
    if dev not in _SM_COUNT:
        _SM_COUNT[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
    return _SM_COUNT[dev]


@gluon.jit
def publish_next_tile(tile_counter, tile_slot, tile_ready, tile_empty, tile_iter):
    """Producer warp, after the loads of its tile_iter-th tile: take the next tile from the counter and post it
    once both consumers have read the last one. Returns it (>= the tile count: no more work)."""
    tile = gl.atomic_add(tile_counter, 1) + gl.num_programs(0)
    mbarrier.wait(tile_empty, (tile_iter & 1) ^ 1)
    tile_slot.store(gl.full([128], tile, gl.int32, gl.BlockedLayout([4], [32], [1], [0])))
    mbarrier.arrive(tile_ready)
    return tile


@gluon.jit
def consumer_next_tile(tile, tile_iter, num_tiles, tile_slot, tile_ready, tile_empty, SCHEDULER: gl.constexpr):
    """A consumer warpgroup's next tile after its tile_iter-th: SCHEDULER 0 ("single": one tile per CTA) ends
    the loop, 1 ("static") strides by the grid, 2 ("dynamic") reads the producer's post and frees the slot."""
    if SCHEDULER == 2:
        mbarrier.wait(tile_ready, (tile_iter - 1) & 1)
        tile = gl.max(tile_slot.load(gl.BlockedLayout([1], [32], [4], [0])), axis=0)
        mbarrier.arrive(tile_empty)
    elif SCHEDULER == 1:
        tile = tile + gl.num_programs(0)
    else:
        tile = num_tiles
    return tile
