"""Which implementation runs a call: one registry entry per backend and direction.

A backend says which calls it supports; `auto` takes the first supporting entry in
PREFERENCE order, so a faster kernel slots in for one (architecture, head_dim,
direction) without touching the others, and anything it does not cover falls back to
the portable kernels.
"""
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .kernels.portable_bwd import portable_backward
from .kernels.portable_fwd import portable_forward


@dataclass(frozen=True)
class Problem:
    """What a kernel needs to know to say whether it supports a call."""
    device: torch.device
    dtype: torch.dtype
    head_dim: int
    causal: bool
    window: tuple[int, int]
    softcap: float
    deterministic: bool


@dataclass(frozen=True)
class Implementation:
    name: str
    supports: Callable[[Problem], bool]
    run: Callable


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _portable_supports(problem: Problem) -> bool:
    return problem.device.type == "cuda" or (problem.device.type == "cpu" and _interpreting())


FORWARD = [Implementation("portable", _portable_supports, portable_forward)]
BACKWARD = [Implementation("portable", _portable_supports, portable_backward)]
PREFERENCE = ("sm90", "portable")


def backend_names() -> tuple[str, ...]:
    return ("auto",) + tuple(sorted({impl.name for impl in FORWARD + BACKWARD}))


def available_backends(device) -> list[str]:
    """Implementations whose forward can run on `device` for some head_dim (bench uses this)."""
    device = torch.device(device)
    names = []
    for impl in FORWARD:
        probe = Problem(device, torch.bfloat16, 256, False, (-1, -1), 0.0, False)
        if impl.supports(probe) and impl.name not in names:
            names.append(impl.name)
    return names


def select(direction: str, problem: Problem, backend: str = "auto") -> Implementation:
    """The implementation for one direction. A named backend without a kernel for this
    direction (e.g. a forward-only fast path) leaves that direction to `auto`."""
    if backend not in backend_names():
        raise ValueError(f"backend must be one of {backend_names()}, got {backend!r}")
    table = FORWARD if direction == "forward" else BACKWARD
    candidates = [impl for impl in table if impl.name == backend]
    if not candidates:
        candidates = sorted(table, key=lambda impl: PREFERENCE.index(impl.name))
    for impl in candidates:
        if impl.supports(problem):
            return impl
    raise NotImplementedError(
        f"flash256 backend {backend!r} has no {direction} kernel for {problem}")
