"""Host-side tensor descriptors for (batch, seqlen, heads, head_dim) tensors.

Every portable kernel reads and writes its tiles through 4-D descriptors with a
(1, rows, 1, BLOCK_D) box: out-of-bounds rows and the head_dim padding are zero-filled
on load and clipped on store, so ragged seqlens and head dims need no load masks. On
Hopper this is TMA (and keeps tiles out of registers: the backward spills without it);
elsewhere Triton lowers descriptors to ordinary loads.
"""
import torch
from triton.tools.tensor_descriptor import TensorDescriptor


def tma_compatible(t: torch.Tensor) -> torch.Tensor:
    """t itself if a descriptor can address it (16-byte aligned base and strides), else a copy."""
    itemsize = t.element_size()
    aligned = t.data_ptr() % 16 == 0 and all(
        (s * itemsize) % 16 == 0 for s in t.stride()[:-1])
    return t if aligned and t.stride(-1) == 1 else t.contiguous()


def tile_descriptor(t: torch.Tensor, rows: int, block_d: int) -> TensorDescriptor:
    return TensorDescriptor.from_tensor(t, [1, rows, 1, block_d])
