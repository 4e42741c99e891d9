"""Per-sequence bounds and score transforms shared by the tl kernels, forward and backward.

Rows: every kernel addresses q/k/v as 2-D row views (see tma.py) in which sequence b starts
at row `start` and has `length` rows: b * seqlen for a padded batch, cu_seqlens[b] for a
packed (varlen) one. LSE and delta are kept as (nheads, total_rows) in that row order.

Scores: raw q.k products become base-2 logits, optionally soft-capped:
softcap * tanh(scale * qk / softcap), whose derivative factor is (1 - tanh^2).
"""
import triton
import triton.language as tl


@triton.jit
def sequence_bounds(batch, cu_seqlens, seqlen, VARLEN: tl.constexpr):
    """(first row, length) of sequence `batch`."""
    if VARLEN:
        start = tl.load(cu_seqlens + batch)
        return start, tl.load(cu_seqlens + batch + 1) - start
    return batch * seqlen, seqlen


@triton.jit
def round_to(x, dtype: tl.constexpr, INTERPRETED_BF16: tl.constexpr):
    """x.to(dtype), rounded to nearest even as the GPU's cvt.rn does. INTERPRETED_BF16 (dtype is bf16): Triton 3.6's
    interpreter truncates fp32 -> bf16 casts (0.9999999 -> 0.99609375, up to a whole ulp off) and flushes subnormals,
    so the bf16 bits are made here from the fp32 ones: CPU tests then see the GPU's bf16 numerics."""
    if INTERPRETED_BF16:
        tl.static_assert(dtype == tl.bfloat16)
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def dot_operand(x, dtype: tl.constexpr, INTERPRETED_BF16: tl.constexpr):
    """An fp32 tile (P, dS) as the next GEMM's operand: rounded to the inputs' precision, as on the tensor core; under
    the interpreter's bf16 back in fp32, as the tiles its dots take (it multiplies bf16 bit patterns)."""
    x = round_to(x, dtype, INTERPRETED_BF16)
    if INTERPRETED_BF16:
        x = x.to(tl.float32)
    return x


@triton.jit
def tanh(x):
    # exp2-based: runs in Triton's interpreter (libdevice does not) and saturates to +-1.
    return 1.0 - 2.0 / (tl.math.exp2(x * 2.8853900817779268) + 1.0)


@triton.jit
def logits_base2(qk, qk_scale, softcap_scale, SOFTCAP: tl.constexpr):
    """Raw q.k -> logits in base-2 units. With SOFTCAP, qk_scale is softcap * log2(e) and
    softcap_scale is softmax_scale / softcap; otherwise qk_scale is softmax_scale * log2(e)."""
    if SOFTCAP:
        return tanh(qk * softcap_scale) * qk_scale
    return qk * qk_scale


@triton.jit
def softcap_grad(ds, qk, softcap_scale, SOFTCAP: tl.constexpr):
    """Chain rule through the soft cap: dS_raw = dS * (1 - tanh^2) (softmax_scale applied later)."""
    if SOFTCAP:
        t = tanh(qk * softcap_scale)
        return ds * (1.0 - t * t)
    return ds


@triton.jit
def wide(x):
    """x as int64 before a product that may pass 2^31 (works for program ids, integer
    arguments and constexprs alike, unlike x.to)."""
    return tl.full([], 0, tl.int64) + x
