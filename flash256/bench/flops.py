"""Exact FLOP counts for attention.

Forward: two matmuls (QK^T and PV), 2 FLOPs per multiply-add each, so
4 * batch * nheads * headdim * (number of visible (query, key) pairs).
Causal masks and sliding windows are bottom-right aligned (as in flash-attention):
query i sees keys j <= i + seqlen_k - seqlen_q (causal), within (left, right) of that
diagonal (window).  Backward counts 2.5x the forward (five matmuls instead of two).
"""
from __future__ import annotations

import torch

from .records import Shape

BWD_FACTOR = 2.5


def visible_pairs(seqlen_q: int, seqlen_k: int, causal: bool, window: tuple[int, int] = (-1, -1)) -> int:
    """Number of (query, key) pairs that are not masked out: query i sees key j iff
    -left <= j - (i + seqlen_k - seqlen_q) <= right (causal: right = 0; -1: unbounded)."""
    left, right = window
    if causal:
        right = 0
    if left < 0 and right < 0:
        return seqlen_q * seqlen_k
    diag = torch.arange(seqlen_q, dtype=torch.int64) + (seqlen_k - seqlen_q)  # each row's aligned key
    last = (diag + right).clamp(max=seqlen_k - 1) if right >= 0 else torch.full_like(diag, seqlen_k - 1)
    first = (diag - left).clamp(min=0) if left >= 0 else torch.zeros_like(diag)
    return int((last - first + 1).clamp(min=0).sum())


def attention_flops(shape: Shape, direction: str = "fwd") -> float:
    fwd = 4 * shape.batch * shape.nheads * shape.headdim * visible_pairs(
        shape.seqlen_q, shape.seqlen_k, shape.causal, shape.window)
    if direction == "fwd":
        return float(fwd)
    if direction == "bwd":
        return BWD_FACTOR * fwd
    raise ValueError(f"unknown direction {direction!r}")
