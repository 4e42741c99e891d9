"""Time a zero-argument callable: warm-up, then the median of timed calls.

On CUDA each timed call is bracketed by CUDA events and preceded by a write
of a 256 MB buffer, which flushes the L2 cache (the same as
triton.testing.do_bench).  The number of calls adapts to the call's length:
reps = rep_ms / (median warm-up call), clamped to [min_reps, max_reps], so
long sequence lengths get few repetitions.  On CPU (tests) a wall clock
replaces the events.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float
    reps: int
    warmup_calls: int


class Timer:
    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"
        self._flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device) if self.cuda else None

    def _run(self, fn: Callable[[], object], n: int) -> list[float]:
        """Time n calls, each after an L2 flush; returns ms per call."""
        if not self.cuda:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
            return out
        # Queue everything, synchronise once (like do_bench): the GPU never waits for Python.
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for s, e in zip(starts, ends):
            self._flush.zero_()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]

    def measure(self, fn: Callable[[], object], warmup_ms: float, rep_ms: float,
                min_reps: int = 3, max_reps: int = 1000) -> Timing:
        """fn must already have run once (compilation and autotuning are not timed)."""
        warm = self._run(fn, 1)
        if warm[0] < warmup_ms:
            more = int(min(max_reps, warmup_ms / max(warm[0], 1e-3))) - 1
            warm += self._run(fn, max(0, more))
        estimate = max(statistics.median(warm), 1e-3)
        reps = int(min(max_reps, max(min_reps, round(rep_ms / estimate))))
        times = self._run(fn, reps)
        return Timing(statistics.median(times), min(times), max(times), reps, len(warm))
