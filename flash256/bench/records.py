"""Plain records shared by the benchmark modules."""
from __future__ import annotations

from dataclasses import dataclass, field

DIRECTIONS = ("fwd", "bwd")

# Cell statuses.  Only OK cells carry a trustworthy time; WRONG cells carry a
# time too (it is reported) but are never ranked.
OK = "ok"
WRONG = "WRONG"
NOT_AVAILABLE = "n/a"
UNSUPPORTED = "unsupported"
SKIPPED = "skipped"
# Errors are "err: <kind>", e.g. "err: OOM", "err: RuntimeError".


@dataclass(frozen=True)
class Shape:
    """One attention problem. q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_kv, headdim)."""

    batch: int
    seqlen_q: int
    seqlen_k: int
    nheads: int
    nheads_kv: int
    headdim: int
    causal: bool
    dtype: str  # "bf16" or "fp16"
    window: tuple[int, int] = (-1, -1)  # sliding window (left, right), flash-attn semantics, -1 unbounded
    softcap: float = 0.0  # scores -> softcap * tanh(scores / softcap) when > 0

    def describe(self) -> str:
        s = f"{self.seqlen_q}" if self.seqlen_q == self.seqlen_k else f"{self.seqlen_q}x{self.seqlen_k}"
        kv = "" if self.nheads_kv == self.nheads else f"/{self.nheads_kv}"
        return (f"b={self.batch} s={s} h={self.nheads}{kv} d={self.headdim} "
                f"causal={self.causal}{self.modifiers()} {self.dtype}")

    def visible_window(self) -> tuple[int, int]:
        """(left, right) around each row's bottom-right diagonal that a query sees; causal is right = 0."""
        return (self.window[0], 0) if self.causal else self.window

    def modifiers(self) -> str:
        """' window=L,R softcap=C' for the options that are set, '' for plain attention."""
        text = f" window={self.window[0]},{self.window[1]}" if self.window != (-1, -1) else ""
        return text + (f" softcap={self.softcap:g}" if self.softcap else "")


@dataclass(frozen=True)
class CheckResult:
    """Correctness of one backend on one shape: max errors against the fp32 reference."""

    backend: str
    shape: Shape
    kind: str  # "full" (whole tensors, fwd and bwd) or "slice" (rows of the forward output)
    status: str  # OK, WRONG, or "err: ..." when the check itself could not run
    # tensor name -> (max |x - ref_fp32|, tolerance, max |x_lowp_ref - ref_fp32|)
    errors: dict = field(default_factory=dict, hash=False, compare=False)
    note: str = ""

    def failed_tensors(self) -> list[str]:
        return [name for name, (err, tol, _) in self.errors.items() if not err <= tol]


@dataclass(frozen=True)
class Measurement:
    """One table cell: a backend timed on a shape in one direction."""

    backend: str
    direction: str  # "fwd" or "bwd"
    shape: Shape
    status: str  # OK, WRONG, NOT_AVAILABLE, UNSUPPORTED, SKIPPED or "err: ..."
    ms: float | None = None
    tflops: float | None = None
    flops: float = 0.0
    reps: int = 0
    checked: str = "no"  # "yes" (passed), "WRONG", "no" (not checked), "err" (check could not run)
    note: str = ""

    @property
    def rankable(self) -> bool:
        return self.status == OK and self.tflops is not None
