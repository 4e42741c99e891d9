"""Where a sequence's rows live, and how a finished tile leaves: the varlen pieces of the sm90 kernels.

Fixed-length inputs are (B, S, H, D) and every TMA box stays inside one batch entry, so loads zero-fill
past a sequence's end and stores are clipped there. A packed (varlen) batch is one (1, total, H, D)
tensor: sequence b is rows [cu_seqlens[b], cu_seqlens[b + 1]), and the rows after it belong to the
next sequence. Loads may still read them (the kernels mask keys past the sequence's length, or zero
them with `zero_rows_past`, and give queries past it P = 0 through their lse), but a tile that runs
past its sequence must not be stored with TMA: `store_tile` writes such a tile with masked stores
instead. The backward's TMA reductions (`tma_reduce_add`) of dQ do run past it: they add exact zeros there.

lse and delta are (H, B*S) fp32 in both cases (varlen: (H, total)); `sequence_rows` also returns the
sequence's first row in those flattened rows.
"""
from triton._C.libtriton import ir
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, tma


@gluon.jit
def sequence_rows(b, cu_seqlens, seqlen, VARLEN: gl.constexpr):
    """(TMA batch coordinate, first row in that batch entry, length, first row in the flattened rows)
    of sequence b."""
    if VARLEN:
        start = gl.load(cu_seqlens + b)
        return 0, start, gl.load(cu_seqlens + b + 1) - start, start
    else:
        return b, 0, seqlen, b * seqlen


@gluon.jit
def _tma_store(smem, desc, batch, row, head):
    fence_async_shared()
    tma.async_copy_shared_to_global(desc, [batch, row, head, 0], smem)
    tma.store_wait(0)


@gluon.jit
def _masked_store(smem, ptr, row_stride, first_row, row_start, head, seq_len, ROWS: gl.constexpr,
                  HEAD_DIM: gl.constexpr, NUM_WARPS: gl.constexpr):
    # HEAD_DIM // 8 threads cover a row in 16-byte pieces (8, 16 or 32 of them for d 64/128/256)
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [256 // HEAD_DIM, HEAD_DIM // 8], [NUM_WARPS, 1], [1, 0])
    gl.thread_barrier()  # the staged tile is read back by other threads than wrote it
    values = smem.load(layout)
    rows = row_start + gl.arange(0, ROWS, gl.SliceLayout(1, layout))
    cols = gl.arange(0, HEAD_DIM, gl.SliceLayout(0, layout))
    offsets = ((first_row + rows).to(gl.int64) * row_stride + head * HEAD_DIM)[:, None] + cols[None, :]
    gl.store(ptr + offsets, values, mask=(rows < seq_len)[:, None])


@builtin
def tma_reduce_add(desc, coord, src, _semantic=None):
    """Add a shared-memory tile into global memory with one TMA bulk reduction (cp.reduce.async.bulk.tensor,
    SASS UTMAREDG): Gluon 3.6 builds the op but exports no wrapper for it. Wait with tma.store_wait."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, desc.handle, coord, src.handle)


@gluon.jit
def zero_rows_past(smem, row_start, seq_len, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_WARPS: gl.constexpr):
    """Zero the rows of a loaded (ROWS, HEAD_DIM) tile past its sequence's end, for a GEMM whose result
    they would otherwise reach: a packed batch puts the next sequence's rows there."""
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [256 // HEAD_DIM, HEAD_DIM // 8], [NUM_WARPS, 1], [1, 0])
    rows = row_start + gl.arange(0, ROWS, gl.SliceLayout(1, layout))
    values = smem.load(layout)
    smem.store(gl.where((rows < seq_len)[:, None], values, gl.zeros_like(values)))
    fence_async_shared()


@gluon.jit
def store_tile(tile, smem, desc, ptr, row_stride, batch, first_row, row_start, head, seq_len,
               ROWS: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_WARPS: gl.constexpr, VARLEN: gl.constexpr):
    """Write a (ROWS, HEAD_DIM) register tile to rows [row_start, row_start + ROWS) of one sequence and
    head, staged through `smem` (a dead operand buffer of the same shape). A TMA store where it is
    clipped correctly; a packed tile that runs past its sequence takes masked stores of 16-byte rows."""
    smem.store(tile)
    if VARLEN:
        if row_start + ROWS > seq_len:
            _masked_store(smem, ptr, row_stride, first_row, row_start, head, seq_len, ROWS, HEAD_DIM, NUM_WARPS)
        else:
            _tma_store(smem, desc, batch, first_row + row_start, head)
    else:
        _tma_store(smem, desc, batch, first_row + row_start, head)


@gluon.jit
def opaque_zero(x):
    """0 from an asm statement the compiler may neither fold nor move (x only gives it a place in the code).
    A shared-memory index offset by it is computed where it is used: a persistent loop then recomputes its
    per-thread addresses on each tile instead of holding them in registers through the key loop."""
    return gl.inline_asm_elementwise("mov.u32 $0, 0;", "=r,r", [x], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def clip_to_sequence(lo, hi, start, seq_len, VARLEN: gl.constexpr):
    """Blocks [lo, hi) of a tile starting at row `start` of its sequence; none when a packed sequence
    ends before it (the grid covers the longest sequence). Fixed-length grids have no such tiles."""
    if VARLEN:
        hi = gl.where(start < seq_len, hi, lo)
    return lo, hi
