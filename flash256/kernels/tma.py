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


def row_view(t: torch.Tensor, block_d: int) -> torch.Tensor:
    """(b, s, h, d) -> a 2-D (b*s, h*block_d) view whose row r = b*s + i holds all heads.

    Tiles loaded through it come out 2-D, with no reshape between the load and tl.dot,
    which lets Triton feed wgmma straight from shared memory (a reshape of a 4-D tile
    goes through registers and, at d=256, spills). A tile that runs past a sequence's
    end reads the next sequence's rows: kernels mask those, and store through the 4-D
    descriptors, which clip. Copies (zero-padding head_dim to block_d) only when the
    layout cannot be viewed so.
    """
    b, s, h, d = t.shape
    viewable = (d == block_d and t.stride(2) == d and (b == 1 or t.stride(0) == s * t.stride(1))
                and t.stride(1) % 8 == 0 and t.data_ptr() % 16 == 0)
    if not viewable:
        t = torch.nn.functional.pad(t, (0, block_d - d)).contiguous()
    return t.as_strided((b * s, h * block_d), (t.stride(1), 1))


def row_descriptor(t: torch.Tensor, rows: int, block_d: int) -> TensorDescriptor:
    return TensorDescriptor.from_tensor(row_view(t, block_d), [rows, block_d])
