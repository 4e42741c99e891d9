"""Command line of ``python -m flash256.bench``."""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass

DEFAULT_SEQLENS = "1k,2k,4k,8k,16k,32k"
DTYPES = ("bf16", "fp16")


def parse_size(text: str) -> int:
    """'4096', '4k' (x1024), '1m' (x1024^2) -> int."""
    s = text.strip().lower()
    mult = 1
    if s.endswith("k"):
        s, mult = s[:-1], 1024
    elif s.endswith("m"):
        s, mult = s[:-1], 1024 * 1024
    try:
        value = int(s) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 4096, 4k, 128k)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def parse_size_list(text: str) -> list[int]:
    return [parse_size(x) for x in text.split(",") if x.strip()]


def parse_int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None


def parse_name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_window(text: str) -> tuple[int, int]:
    """'4096,0' -> (4096, 0): a sliding window (left, right), -1 unbounded on that side."""
    try:
        left, right = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window-size takes LEFT,RIGHT (e.g. 4096,0), not {text!r}") from None
    if left < -1 or right < -1:
        raise argparse.ArgumentTypeError(f"window sides must be >= -1 (-1: unbounded), not {text!r}")
    return left, right


def parse_causal(text: str) -> tuple[bool, ...]:
    t = text.strip().lower()
    table = {"true": (True,), "false": (False,), "both": (False, True),
             "yes": (True,), "no": (False,), "1": (True,), "0": (False,)}
    if t not in table:
        raise argparse.ArgumentTypeError(f"--causal must be true, false or both, not {text!r}")
    return table[t]


@dataclass(frozen=True)
class BenchConfig:
    """Everything a run needs, resolved from the command line."""

    directions: tuple[str, ...]
    headdims: tuple[int, ...]
    seqlens: tuple[int, ...]  # key/value lengths, one table row each
    seqlens_q: tuple[int, ...]  # parallel to seqlens
    causal: tuple[bool, ...]
    total_seqlen: int
    batch_size: int | None
    nheads: int | None  # None: 2048 // headdim
    nheads_kv: int | None
    gqa_ratio: int | None
    dtype: str
    window: tuple[int, int]  # sliding window of every shape, (-1, -1): none
    softcap: float  # score soft-capping of every shape, 0: none
    deterministic: bool
    fwd_grad: bool  # time the forward with autograd recording (training forward) instead of no_grad
    warmup_ms: float
    rep_ms: float
    min_reps: int
    max_reps: int
    backends: tuple[str, ...] | None  # None: the default list
    check: str  # "all", "first" or "none"
    sleep_s: float
    time_budget_s: float | None
    json_path: str | None
    plot_path: str | None
    markdown_path: str | None
    device: str
    list_backends: bool
    command: str

    def batch_for(self, seqlen: int) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return max(1, self.total_seqlen // seqlen)

    def heads_for(self, headdim: int) -> tuple[int, int]:
        """(nheads, nheads_kv) for a head dimension."""
        nheads = self.nheads if self.nheads is not None else max(1, 2048 // headdim)
        if self.nheads_kv is not None:
            nheads_kv = self.nheads_kv
        elif self.gqa_ratio is not None:
            nheads_kv = nheads // self.gqa_ratio
        else:
            nheads_kv = nheads
        if nheads_kv < 1 or nheads % nheads_kv:
            raise ValueError(f"nheads={nheads} is not a multiple of nheads_kv={nheads_kv}")
        return nheads, nheads_kv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flash256.bench",
        description="Benchmark flash256 against cuDNN / FlashAttention / FlexAttention (TFLOP/s tables).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--fwd", action="store_true", help="time the forward (default when neither --fwd nor --bwd)")
    p.add_argument("--bwd", action="store_true", help="time the backward alone")
    p.add_argument("--headdim", type=parse_int_list, default=[256], help="head dim(s), comma list")
    p.add_argument("--seqlen", type=parse_size_list, default=parse_size_list(DEFAULT_SEQLENS),
                   help="key/value sequence length(s); k suffix = x1024, e.g. 1k,2k,...,128k")
    p.add_argument("--seqlen-q", type=parse_size_list, default=None,
                   help="query length(s): one value for all, or one per --seqlen (default: = seqlen)")
    p.add_argument("--causal", type=parse_causal, default=(False, True), help="true, false or both")
    p.add_argument("--total-seqlen", type=parse_size, default=32 * 1024,
                   help="batch = max(1, total_seqlen // seqlen)")
    p.add_argument("--batch-size", type=int, default=None, help="fixed batch size (overrides --total-seqlen)")
    p.add_argument("--nheads", type=int, default=None, help="query heads (default: 2048 // headdim)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--nheads-kv", type=int, default=None, help="key/value heads (default: nheads)")
    group.add_argument("--gqa-ratio", type=int, default=None, help="nheads_kv = nheads // ratio")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--window-size", type=parse_window, default=(-1, -1),
                   help="sliding window LEFT,RIGHT for every shape (flash-attn semantics, -1 unbounded), "
                        "e.g. 4096,0 with --causal true for a Gemma-2 local layer")
    p.add_argument("--softcap", type=float, default=0.0,
                   help="score soft-capping for every shape (Gemma 2: 50); backends without it are 'unsupported'")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic backward (passed to flash256 and fa4; SDPA/flex ignore it)")
    p.add_argument("--fwd-grad", action="store_true",
                   help="time the forward as in training (inputs require grad, autograd records, "
                        "backends save what the backward needs) instead of under torch.no_grad")
    # 250 ms: a power-capped GPU (700 W H100/H200) lowers its clock in steps over the first ~100 ms of
    # sustained load, so a short warm-up times whichever backend follows a pause at boost clocks (NOTES.md)
    p.add_argument("--warmup", type=float, default=250.0,
                   help="warm-up time per cell, ms (at least 1 call); long enough to reach the sustained clock")
    p.add_argument("--rep", type=float, default=100.0,
                   help="timed time per cell, ms: reps = rep / (one call's time), clamped to [min-reps, max-reps]")
    p.add_argument("--min-reps", type=int, default=3, help="fewest timed calls (long seqlens)")
    p.add_argument("--max-reps", type=int, default=1000, help="most timed calls (short seqlens)")
    p.add_argument("--backend", type=parse_name_list, default=None,
                   help="comma list of backends (see --list-backends); default: flash256 implementations "
                        "available on the device, sdpa-cudnn, sdpa-flash, fa4 if importable")
    p.add_argument("--list-backends", action="store_true", help="print the backends and their availability, exit")
    p.add_argument("--check", choices=("all", "first", "none"), default="all",
                   help="correctness: 'first' = full fwd(+bwd) check of every backend on a small shape made "
                        "from the first seqlen (batch<=2, seqlen<=2048) per (headdim, causal); 'all' = that, "
                        "plus a forward check on row slices of every measured shape")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep between cells (thermal)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; cells that would start later are 'skipped' and the reports are still written")
    p.add_argument("--json", dest="json_path", default=None, help="write every measurement + environment here")
    p.add_argument("--plot", dest="plot_path", default=None, help="write a PNG of TFLOP/s vs seqlen here")
    p.add_argument("--markdown", dest="markdown_path", default=None,
                   help="also write the markdown report (printed on stdout anyway) to this file")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser.parse_args(argv)
    directions = tuple(d for d, on in (("fwd", a.fwd), ("bwd", a.bwd)) if on) or ("fwd",)
    if a.seqlen_q is None:
        seqlens_q = list(a.seqlen)
    elif len(a.seqlen_q) == 1:
        seqlens_q = a.seqlen_q * len(a.seqlen)
    elif len(a.seqlen_q) == len(a.seqlen):
        seqlens_q = a.seqlen_q
    else:
        parser.error("--seqlen-q takes one value or one per --seqlen")
    if a.gqa_ratio is not None and a.gqa_ratio < 1:
        parser.error("--gqa-ratio must be >= 1")
    if a.batch_size is not None and a.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if not a.softcap >= 0:
        parser.error("--softcap must be >= 0")
    if a.min_reps < 1 or a.max_reps < a.min_reps:
        parser.error("need 1 <= --min-reps <= --max-reps")
    cfg = BenchConfig(
        directions=directions, headdims=tuple(a.headdim), seqlens=tuple(a.seqlen),
        seqlens_q=tuple(seqlens_q), causal=tuple(a.causal), total_seqlen=a.total_seqlen,
        batch_size=a.batch_size, nheads=a.nheads, nheads_kv=a.nheads_kv, gqa_ratio=a.gqa_ratio,
        dtype=a.dtype, window=a.window_size, softcap=a.softcap, deterministic=a.deterministic,
        fwd_grad=a.fwd_grad, warmup_ms=a.warmup, rep_ms=a.rep,
        min_reps=a.min_reps, max_reps=a.max_reps,
        backends=tuple(a.backend) if a.backend else None, check=a.check, sleep_s=a.sleep,
        time_budget_s=a.time_budget, json_path=a.json_path, plot_path=a.plot_path,
        markdown_path=a.markdown_path, device=a.device, list_backends=a.list_backends,
        command="python -m flash256.bench " + shlex.join(argv))
    for d in cfg.headdims:
        try:
            cfg.heads_for(d)
        except ValueError as e:
            parser.error(str(e))
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    from . import run  # imports torch; keep --help fast

    return run.main(cfg)
