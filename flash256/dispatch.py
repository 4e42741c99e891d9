"""Which implementation runs a call: one registry entry per backend and direction.

A backend says which calls it supports; `auto` takes the first supporting entry in
PREFERENCE order, so a faster kernel slots in for one (architecture, head_dim,
direction, feature set) without touching the others, and anything it does not cover
falls back to the portable kernels.
"""
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .kernels import sm90_bwd, sm90_fwd
from .kernels.portable_bwd import portable_backward
from .kernels.portable_fwd import portable_forward


@dataclass(frozen=True)
class AttentionArgs:
    """Everything but the tensors q, k, v (and dO, O, LSE) that a kernel needs."""
    softmax_scale: float
    causal: bool
    window: tuple[int, int]
    softcap: float
    sink: Optional[torch.Tensor]            # (nheads,) fp32 logits, or None
    cu_seqlens_q: Optional[torch.Tensor]    # (num_seqs + 1,) int32 for packed (varlen) inputs
    cu_seqlens_k: Optional[torch.Tensor]
    max_seqlen_q: int
    max_seqlen_k: int
    deterministic: bool
    exp2_poly_eighths: int = 0              # eighths of each score tile's exp2 on the FMA pipe


@dataclass(frozen=True)
class Implementation:
    name: str
    supports: Callable[[torch.Tensor, AttentionArgs], bool]   # (q, args) -> bool
    run: Callable


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _portable_supports(q: torch.Tensor, args: AttentionArgs) -> bool:
    return q.device.type == "cuda" or (q.device.type == "cpu" and interpreting())


def _sm90_supports(q: torch.Tensor, args: AttentionArgs) -> bool:
    """The Gluon forward covers plain, causal, sliding-window, soft-capped attention, learnable sinks
    and packed (varlen) batches at head_dim 64/128/256 on sm_90, any seqlens. seqlen_q == 1 came back
    from the portable kernel on 2026-12-02: the GPU matrix's (1, 1) and (64, 1) cases, which failed on
    2026-11-25 (before sizes stopped being specialised), pass through the Gluon kernel (NOTES.md)."""
    return (q.device.type == "cuda" and not interpreting()
            and torch.cuda.get_device_capability(q.device) == (9, 0)
            and q.shape[-1] in sm90_fwd.CONFIGS)


def _sm90_bwd_supports(q: torch.Tensor, args: AttentionArgs) -> bool:
    """The Gluon backward: plain, causal, sliding-window, soft-capped attention, learnable sinks and
    packed (varlen) batches at head_dim 64/128/256 on sm_90, any seqlens. d=256 is deterministic as it is; at
    d <= 128 the default adds dQ with fp32 reductions in varying order, and deterministic=True runs a
    two-kernel form instead (sm90_bwd.fuses_dq)."""
    return not interpreting() and sm90_bwd.sm90_bwd_supports(q, args)


def _sm90_forward(q, k, v, args):
    return sm90_fwd.sm90_forward(q, k, v, args.softmax_scale, args.causal, args.window, args.softcap, args.sink,
                                 poly_eighths=args.exp2_poly_eighths, cu_seqlens_q=args.cu_seqlens_q,
                                 cu_seqlens_k=args.cu_seqlens_k, max_seqlen_q=args.max_seqlen_q,
                                 max_seqlen_k=args.max_seqlen_k)


FORWARD = [Implementation("portable", _portable_supports, portable_forward),
           Implementation("sm90", _sm90_supports, _sm90_forward)]
BACKWARD = [Implementation("portable", _portable_supports, portable_backward),
            Implementation("sm90", _sm90_bwd_supports, sm90_bwd.sm90_backward)]
PREFERENCE = ("sm90", "portable")


def backend_names() -> tuple[str, ...]:
    return ("auto",) + tuple(sorted({impl.name for impl in FORWARD + BACKWARD}))


def available_backends(device) -> list[str]:
    """Implementations whose forward can run a plain bf16 d=256 call on `device` (bench uses this)."""
    probe_q = torch.empty(1, 1, 1, 256, device=device, dtype=torch.bfloat16)
    probe = AttentionArgs(1.0, False, (-1, -1), 0.0, None, None, None, 1, 1, False)
    return [impl.name for impl in FORWARD if impl.supports(probe_q, probe)]


def select(direction: str, q: torch.Tensor, args: AttentionArgs, backend: str = "auto") -> Implementation:
    """The implementation for one direction. A named backend without a kernel for this
    direction (e.g. a forward-only fast path) leaves that direction to `auto`."""
    if backend not in backend_names():
        raise ValueError(f"backend must be one of {backend_names()}, got {backend!r}")
    table = FORWARD if direction == "forward" else BACKWARD
    candidates = [impl for impl in table if impl.name == backend]
    if not candidates:
        candidates = sorted(table, key=lambda impl: PREFERENCE.index(impl.name))
    for impl in candidates:
        if impl.supports(q, args):
            return impl
    raise NotImplementedError(
        f"flash256 backend {backend!r} has no {direction} kernel for head_dim {q.shape[-1]}, "
        f"{q.dtype} on {q.device} with causal={args.causal}, window={args.window}, "
        f"softcap={args.softcap}, sink={args.sink is not None}, varlen={args.cu_seqlens_q is not None}")
