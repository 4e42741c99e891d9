"""Exact FLOP counts for attention.

Forward: two matmuls (QK^T and PV), 2 FLOPs per multiply-add each, so
4 * batch * nheads * headdim * (number of visible (query, key) pairs).
Causal masks are bottom-right aligned (as in flash-attention): query i sees
keys j <= i + seqlen_k - seqlen_q.  Backward counts 2.5x the forward
(five matmuls instead of two).
"""
from __future__ import annotations

from .records import Shape

BWD_FACTOR = 2.5


def visible_pairs(seqlen_q: int, seqlen_k: int, causal: bool) -> int:
    """Number of (query, key) pairs that are not masked out."""
    if not causal:
        return seqlen_q * seqlen_k
    # Query i sees min(seqlen_k, max(0, i + offset + 1)) keys, offset = seqlen_k - seqlen_q.
    # Since i <= seqlen_q - 1 the upper clamp never binds; rows i < first see nothing.
    offset = seqlen_k - seqlen_q
    first = max(0, -offset)
    n = seqlen_q - first
    if n <= 0:
        return 0
    lo = first + offset + 1  # keys seen by the first visible row
    hi = seqlen_k  # keys seen by the last row
    return n * (lo + hi) // 2


def attention_flops(shape: Shape, direction: str = "fwd") -> float:
    fwd = 4 * shape.batch * shape.nheads * shape.headdim * visible_pairs(
        shape.seqlen_q, shape.seqlen_k, shape.causal)
    if direction == "fwd":
        return float(fwd)
    if direction == "bwd":
        return BWD_FACTOR * fwd
    raise ValueError(f"unknown direction {direction!r}")
