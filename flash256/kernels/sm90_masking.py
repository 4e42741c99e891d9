"""Which (query, key) pairs see each other, and the soft cap, for the sm90 Gluon kernels.

The Gluon twin of masking.py / scores.py (shared by the forward and both backward kernels). The rule
is flash-attn's, bottom-right aligned: with diag = seqlen_k - seqlen_q, query i sees key j iff
i + diag - window_left <= j <= i + diag + window_right and j < seqlen_k. The host passes an unbounded
side with its *_BOUNDED flag off, so plain and causal attention (window_right = 0) compile to the same
code as before windows existed. Blocks outside the window are never loaded; blocks inside it that
every row sees whole need no element mask.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from .portable_fwd import window_bounds


def mask_arguments(seqlen_q: int, seqlen_k: int, causal: bool, window: tuple[int, int]) -> tuple[int, int, dict]:
    """(window_left, window_right, constexpr flags) for the kernels; an unbounded side is not masked."""
    left, right = window_bounds(seqlen_q, seqlen_k, causal, window)
    unbounded = seqlen_q + seqlen_k + 1  # keeps the kernels' int32 index arithmetic in range
    flags = dict(LEFT_BOUNDED=window[0] >= 0, RIGHT_BOUNDED=bool(causal) or window[1] >= 0)
    return min(left, unbounded), min(right, unbounded), flags


@gluon.jit
def key_blocks(row_start, num_rows, seqlen_q, seqlen_k, window_left, window_right, BLOCK_N: gl.constexpr,
               LEFT_BOUNDED: gl.constexpr, RIGHT_BOUNDED: gl.constexpr):
    """[lo, hi): the key blocks seen by query rows [row_start, row_start + num_rows)."""
    diag = seqlen_k - seqlen_q
    lo = 0
    hi = gl.cdiv(seqlen_k, BLOCK_N)
    if LEFT_BOUNDED:
        lo = gl.maximum(row_start + diag - window_left, 0) // BLOCK_N
    if RIGHT_BOUNDED:
        hi = gl.minimum(hi, gl.cdiv(gl.maximum(row_start + num_rows + diag + window_right, 0), BLOCK_N))
    return lo, hi


@gluon.jit
def unmasked_key_blocks(row_start, num_rows, seqlen_q, seqlen_k, window_left, window_right,
                        BLOCK_N: gl.constexpr, LEFT_BOUNDED: gl.constexpr, RIGHT_BOUNDED: gl.constexpr):
    """[lo, hi): the key blocks every row of [row_start, row_start + num_rows) sees whole (inside
    seqlen_k and the window); blocks outside it need the element mask."""
    diag = seqlen_k - seqlen_q
    lo = 0
    hi = seqlen_k // BLOCK_N
    if LEFT_BOUNDED:
        lo = gl.cdiv(gl.maximum(row_start + num_rows - 1 + diag - window_left, 0), BLOCK_N)
    if RIGHT_BOUNDED:
        hi = gl.minimum(hi, gl.maximum(row_start + diag + window_right + 1, 0) // BLOCK_N)
    return lo, hi


@gluon.jit
def window_offsets(seqlen_q, seqlen_k, window_left, window_right):
    """(left, right): query i sees keys [i + left, i + right) (before the seqlen_k bound)."""
    diag = seqlen_k - seqlen_q
    return diag - window_left, diag + window_right + 1


@gluon.jit
def visible_keys(row_start, col_start, seqlen_k, left_offset, right_offset, layout: gl.constexpr,
                 NUM_ROWS: gl.constexpr, BLOCK_N: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
                 RIGHT_BOUNDED: gl.constexpr):
    """(NUM_ROWS, BLOCK_N) mask of a score tile: rows from row_start, keys from col_start, offsets from
    window_offsets. Per-row bounds relative to the block, compared with per-register constant columns:
    in the wgmma accumulator layouts a thread holds columns 2 (lane % 4) + {0, 1} + 8 i, so `cols & 6` is
    the thread's own part and `cols - (cols & 6)` a constant per register. Moving the thread's part to the
    bound side turns each element's test into a register-vs-immediate compare, and no column index stays
    live: ptxas hoisted the 16 indices out of the key loops instead and spilled them (d=256 dQ kernel,
    causal: 28 B -> 4 B). Exact for any layout (both sides shift by the same amount); only the speed
    relies on the pattern."""
    rows = row_start + gl.arange(0, NUM_ROWS, gl.SliceLayout(1, layout))
    col_end = gl.full([NUM_ROWS], seqlen_k - col_start, gl.int32, gl.SliceLayout(1, layout))
    if RIGHT_BOUNDED:
        col_end = gl.minimum(col_end, rows + (right_offset - col_start))
    cols = gl.arange(0, BLOCK_N, gl.SliceLayout(0, layout))
    own = (cols & 6)[None, :]
    offset = cols[None, :] - own
    keep = offset < col_end[:, None] - own
    if LEFT_BOUNDED:
        keep = keep & (offset >= (rows + (left_offset - col_start))[:, None] - own)
    return keep


@gluon.jit
def query_tiles(n_start, seqlen_q, seqlen_k, window_left, window_right, BLOCK_M: gl.constexpr,
                BLOCK_N: gl.constexpr, LEFT_BOUNDED: gl.constexpr, RIGHT_BOUNDED: gl.constexpr):
    """The mirror of key_blocks for keys [n_start, n_start + BLOCK_N): (first query tile, number of
    tiles, [lo, hi) of the tiles that see the whole block). Query i sees key j iff
    j - diag - window_right <= i <= j - diag + window_left."""
    diag = seqlen_k - seqlen_q
    num_m = gl.cdiv(seqlen_q, BLOCK_M)
    first = 0
    end = num_m
    unmasked_lo = 0
    unmasked_hi = num_m
    if RIGHT_BOUNDED:
        first = gl.minimum(gl.maximum(n_start - diag - window_right, 0) // BLOCK_M, num_m)
        unmasked_lo = gl.cdiv(gl.maximum(n_start + BLOCK_N - 1 - diag - window_right, 0), BLOCK_M)
    if LEFT_BOUNDED:
        end = gl.minimum(gl.cdiv(gl.maximum(n_start + BLOCK_N - diag + window_left, 0), BLOCK_M), num_m)
        unmasked_hi = gl.maximum(n_start - diag + window_left + 1, 0) // BLOCK_M
    return first, gl.maximum(end - first, 0), unmasked_lo, unmasked_hi


@gluon.jit
def visible_queries_t(n_start, m_start, seqlen_q, seqlen_k, window_left, window_right, layout: gl.constexpr,
                      BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, LEFT_BOUNDED: gl.constexpr,
                      RIGHT_BOUNDED: gl.constexpr):
    """(BLOCK_N, BLOCK_M) mask of a transposed (keys x queries) tile. Queries past seqlen_q need none:
    their lse is +inf, so P is 0 there anyway."""
    base = n_start - (seqlen_k - seqlen_q) - m_start  # key n_start + r, query m_start + c: c vs r + base
    keys = gl.arange(0, BLOCK_N, gl.SliceLayout(1, layout))
    cols = gl.arange(0, BLOCK_M, gl.SliceLayout(0, layout))
    keep = gl.full([BLOCK_N, BLOCK_M], 1, gl.int1, layout)
    if RIGHT_BOUNDED:
        keep = cols[None, :] >= (keys + (base - window_right))[:, None]
    if LEFT_BOUNDED:
        keep = keep & (cols[None, :] <= (keys + (base + window_left))[:, None])
    return keep


@gluon.jit
def soft_cap(s, softcap_scale, SOFTCAP: gl.constexpr):
    """Raw q.k -> tanh(q.k * softmax_scale / softcap) (the kernels' qk_scale is then softcap * log2 e).
    One MUFU.TANH, max relative error 2^-11: below bf16's 2^-9 rounding of the scores themselves. The
    forward and backward use this same function, so the P the backward recomputes matches the lse."""
    if SOFTCAP:
        s = gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [s * softcap_scale], dtype=gl.float32,
                                      is_pure=True, pack=1)
    return s
