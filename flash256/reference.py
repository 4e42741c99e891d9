"""Plain PyTorch attention: the ground truth every kernel is tested against.

Supports every option of the public API (bottom-right causal, sliding window, softcap,
GQA/MQA). ``upcast=True`` computes in fp32 from the low-precision inputs (the reference);
``upcast=False`` does the same math in the input precision, which measures how much error
the input precision alone causes (the accuracy rule's yardstick). O(seqlen^2) memory:
for tests and small checks only.
"""
import math

import torch


def visibility_mask(seqlen_q: int, seqlen_k: int, causal: bool, window_size=(-1, -1),
                    device=None) -> torch.Tensor:
    """(seqlen_q, seqlen_k) bool: query i sees key j (bottom-right aligned, flash-attn >= 2.1)."""
    left, right = window_size
    if causal:
        right = 0
    rows = torch.arange(seqlen_q, device=device)[:, None]
    cols = torch.arange(seqlen_k, device=device)[None, :]
    rel = cols - rows - (seqlen_k - seqlen_q)
    mask = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if left >= 0:
        mask &= rel >= -left
    if right >= 0:
        mask &= rel <= right
    return mask


def attention_ref(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1),
                  softcap=0.0, learnable_sink=None, upcast=True):
    """q (b, s_q, h, d), k/v (b, s_k, h_kv, d) -> out (b, s_q, h, d), lse (b, h, s_q) fp32.

    learnable_sink (h,): one extra logit per head in every row's softmax denominator.
    Differentiable. Rows that see no key give out = 0 and lse = -inf (or the sink).
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    head_dim = q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    group = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q * scale, k)
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    mask = visibility_mask(q.shape[1], k.shape[1], causal, window_size, device=q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    if learnable_sink is not None:
        sink = learnable_sink.to(scores.dtype)[None, :, None, None].expand(*scores.shape[:3], 1)
        scores = torch.cat([scores, sink], dim=-1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
    lse = torch.logsumexp(scores.float(), dim=-1)
    probs = torch.softmax(scores, dim=-1)
    # Fully masked rows: softmax gives NaN; flash attention defines them as 0.
    probs = probs.masked_fill(~mask.any(dim=-1)[:, None], 0.0).to(v.dtype)
    if learnable_sink is not None:
        probs = probs[..., :-1]
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    return out.to(dtype), lse
