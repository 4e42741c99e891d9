"""Which (query, key) pairs see each other: tile ranges and element masks.

Shared by every tl kernel, forward and backward. The rule (flash-attn >= 2.1) is
bottom-right aligned: with ``diag = seqlen_k - seqlen_q``, query ``i`` sees key ``j``
iff ``i + diag - left <= j <= i + diag + right`` and ``j < seqlen_k``. Causal is
``right = 0``; an unbounded side is passed as a number larger than any seqlen, so one
code path serves plain, causal and windowed attention.

A loop over tiles is split into *interior* tiles, where every pair is visible (no mask
work), and *edge* tiles (masked). The helpers return the tile-aligned bounds of both.
"""
import triton
import triton.language as tl


@triton.jit
def key_tile_range(m0, diag, left, right, seqlen_k,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key tiles seen by query rows [m0, m0 + BLOCK_M).

    Returns (lo, interior_lo, interior_hi, hi): tiles start at multiples of BLOCK_N in
    [lo, hi); those in [interior_lo, interior_hi) need no mask. hi <= lo means none.
    """
    first_key = tl.maximum(m0 + diag - left, 0)
    end_key = tl.minimum(m0 + BLOCK_M - 1 + diag + right + 1, seqlen_k)
    lo = (first_key // BLOCK_N) * BLOCK_N
    # Interior: every row of the block sees the whole tile.
    interior_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - 1 + diag - left, 0), BLOCK_N) * BLOCK_N
    interior_hi = (tl.minimum(m0 + diag + right + 1, seqlen_k) // BLOCK_N) * BLOCK_N
    interior_lo = tl.maximum(interior_lo, lo)
    interior_hi = tl.maximum(interior_hi, interior_lo)
    return lo, interior_lo, interior_hi, end_key


@triton.jit
def query_tile_range(n0, diag, left, right, seqlen_q,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query tiles that see key columns [n0, n0 + BLOCK_N); the mirror of key_tile_range.

    Query i sees key j iff j - diag - right <= i <= j - diag + left.
    """
    first_row = tl.maximum(n0 - diag - right, 0)
    end_row = tl.minimum(n0 + BLOCK_N - 1 - diag + left + 1, seqlen_q)
    lo = (first_row // BLOCK_M) * BLOCK_M
    interior_lo = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - diag - right, 0), BLOCK_M) * BLOCK_M
    interior_hi = (tl.minimum(n0 - diag + left + 1, seqlen_q) // BLOCK_M) * BLOCK_M
    interior_lo = tl.maximum(interior_lo, lo)
    interior_hi = tl.maximum(interior_hi, interior_lo)
    return lo, interior_lo, interior_hi, end_row


@triton.jit
def visible(rows, cols, diag, left, right, seqlen_q, seqlen_k):
    """Element mask for a tile: rows (M,) query indices, cols (N,) key indices -> (M, N)."""
    rel = cols[None, :] - rows[:, None] - diag
    return (rel >= -left) & (rel <= right) & (cols[None, :] < seqlen_k) & (rows[:, None] < seqlen_q)


@triton.jit
def visible_t(cols, rows, diag, left, right, seqlen_q, seqlen_k):
    """visible() for a transposed tile: cols (N,) key indices, rows (M,) queries -> (N, M)."""
    rel = cols[:, None] - rows[None, :] - diag
    return (rel >= -left) & (rel <= right) & (cols[:, None] < seqlen_k) & (rows[None, :] < seqlen_q)
