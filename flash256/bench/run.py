"""The sweep: (headdim, seqlen, causal) x backend x direction -> Measurement records."""
from __future__ import annotations

import dataclasses
import functools
import gc
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, TextIO

import torch

from . import check as chk
from .backends import Backend, default_backend_names, get_backend
from .cli import BenchConfig
from .flops import attention_flops
from .records import (NOT_AVAILABLE, OK, SKIPPED, UNSUPPORTED, WRONG, CheckResult, Measurement,
                      Shape)
from .timing import Timer


@dataclass
class SweepResult:
    measurements: list[Measurement] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    elapsed_s: float = 0.0


def classify_error(e: BaseException) -> tuple[str, str]:
    """(cell status, note) for an exception raised by a backend."""
    msg = str(e).strip()
    note = f"{type(e).__name__}: {msg}"[:600]
    low = msg.lower()
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in low:
        return "err: OOM", note
    if isinstance(e, NotImplementedError) or "no available kernel" in low or "not supported" in low \
            or "unsupported" in low:
        return UNSUPPORTED, note
    return f"err: {type(e).__name__}", note


def free_memory(device: str, collect: bool = True) -> None:
    """Give cached GPU memory back between backends; collect=True also runs the garbage
    collector (autograd graphs kept alive by exception tracebacks; ~0.1 s, so once per shape)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return
    if collect:
        gc.collect()
    torch.cuda.empty_cache()


def shapes_for(cfg: BenchConfig, headdim: int) -> list[Shape]:
    """Shapes of one headdim, causal=False, in seqlen order."""
    nheads, nheads_kv = cfg.heads_for(headdim)
    return [Shape(cfg.batch_for(sk), sq, sk, nheads, nheads_kv, headdim, False, cfg.dtype, cfg.window, cfg.softcap)
            for sq, sk in zip(cfg.seqlens_q, cfg.seqlens)]


def rotated(items, r: int) -> list:
    """`items` starting at position r (mod its length). Interleaved timings start each round (or case) one item
    later: run in a fixed order, the third of a round read ~3% slow at 1k-2k (an A/A/A probe, NOTES.md, twenty-third
    session). The probes in scripts/ use it too."""
    items = list(items)
    return items[r % len(items):] + items[:r % len(items)]


class Sweep:
    """Runs every cell; keeps going when a backend fails."""

    def __init__(self, cfg: BenchConfig, backends: list[Backend], reference=None,
                 log: TextIO | None = None, timer: Timer | None = None):
        self.cfg, self.backends = cfg, backends
        self.log = log if log is not None else sys.stderr
        self.reference = reference or chk.default_reference()
        self.timer = timer or Timer(cfg.device)
        self.result = SweepResult()
        self.full_checks: dict[tuple[str, int, bool], CheckResult] = {}
        self.total = (len(cfg.headdims) * len(cfg.seqlens) * len(cfg.causal) * len(backends)
                      * len(cfg.directions))
        self.done = 0
        self.cases_started = 0
        self.t0 = time.perf_counter()

    # -------------------------------------------------------------- helpers
    def case_order(self) -> list[Backend]:
        """The backends in the order to time them for the next case: rotated by one place per case, so that no
        backend always runs first or last after the others have heated the GPU (a slot bias of ~3% was measured
        in the probes, NOTES.md)."""
        order = rotated(self.backends, self.cases_started)
        self.cases_started += 1
        return order

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    def over_budget(self) -> bool:
        return self.cfg.time_budget_s is not None and self.elapsed() > self.cfg.time_budget_s

    # -------------------------------------------------------------- checks
    def full_check(self, backend: Backend, shape: Shape) -> CheckResult | None:
        """Full check of backend on the check shape of (headdim, causal); once per key."""
        if self.cfg.check == "none" or backend.name in self.result.unavailable:
            return None
        key = (backend.name, shape.headdim, shape.causal)
        if key not in self.full_checks:
            cshape = chk.check_shape_for(shape)
            try:
                res = chk.full_check(backend, cshape, self.cfg.device, self.cfg.deterministic,
                                     "bwd" in self.cfg.directions, self.reference)
            except (Exception, torch.cuda.OutOfMemoryError) as e:  # noqa: BLE001
                status, note = classify_error(e)
                res = CheckResult(backend.name, cshape, "full", status, {}, note)
            free_memory(self.cfg.device, collect=False)
            self.full_checks[key] = res
            self.result.checks.append(res)
            self.say(f"check {backend.name:<18} {cshape.describe()}: {res.status} " + _errors_text(res))
        return self.full_checks[key]

    def checked_state(self, full: CheckResult | None, direction: str, sliced: CheckResult | None) -> str:
        if full is None and sliced is None:
            return "no"
        if sliced is not None and sliced.status == WRONG:
            return WRONG
        if full is not None:
            if full.status not in (OK, WRONG):  # the check itself raised
                return "err"
            tensors = ["out"] if direction == "fwd" else ["out", "dq", "dk", "dv"]
            if any(t in full.failed_tensors() for t in tensors):
                return WRONG
        return "yes"

    # -------------------------------------------------------------- one cell
    def measure(self, backend: Backend, direction: str, shape: Shape, inputs) -> Measurement:
        cfg = self.cfg
        flops = attention_flops(shape, direction)
        cell = functools.partial(Measurement, backend.name, direction, shape, flops=flops)
        if backend.name in self.result.unavailable:
            return cell(NOT_AVAILABLE, note=self.result.unavailable[backend.name])
        if self.over_budget():
            return cell(SKIPPED, note=f"time budget {cfg.time_budget_s:.0f} s spent")
        if isinstance(inputs, BaseException):
            status, note = classify_error(inputs)
            return cell(status, note="allocating inputs: " + note)
        full = self.full_check(backend, shape)
        q, k, v, dout = inputs
        sliced = None
        try:
            fwd = backend.build(q, k, v, shape, cfg.deterministic)
            if direction == "fwd":
                with torch.set_grad_enabled(cfg.fwd_grad):
                    out = fwd()  # untimed first call: compilation, autotuning
                    sliced = self.slice_check(backend, out, q, k, v, shape)
                    del out
                    timing = self.timer.measure(fwd, cfg.warmup_ms, cfg.rep_ms, cfg.min_reps, cfg.max_reps)
            else:
                with torch.enable_grad():
                    out = fwd()  # the graph the timed backward differentiates
                    sliced = self.slice_check(backend, out, q, k, v, shape)

                    def bwd():
                        return torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
                    bwd()  # untimed first call
                    timing = self.timer.measure(bwd, cfg.warmup_ms, cfg.rep_ms, cfg.min_reps, cfg.max_reps)
                    del out, bwd
        except (Exception, torch.cuda.OutOfMemoryError) as e:  # noqa: BLE001
            status, note = classify_error(e)
            del e
            if status == "err: OOM":
                free_memory(cfg.device)
            return cell(status, note=note, checked=self.checked_state(full, direction, sliced))
        checked = self.checked_state(full, direction, sliced)
        tflops = flops / (timing.median_ms * 1e-3) / 1e12
        note = "" if sliced is None or sliced.status != WRONG else "slice check: " + _errors_text(sliced)
        return cell(WRONG if checked == WRONG else OK, ms=timing.median_ms, tflops=tflops,
                    reps=timing.reps, checked=checked, note=note)

    def slice_check(self, backend: Backend, out, q, k, v, shape: Shape) -> CheckResult | None:
        if self.cfg.check != "all":
            return None
        try:
            res = chk.slice_check(backend.name, out.detach(), q, k, v, shape, self.reference)
        except (Exception, torch.cuda.OutOfMemoryError) as e:  # noqa: BLE001 - the check must not kill the cell
            res = CheckResult(backend.name, shape, "slice", "err: " + type(e).__name__, {}, str(e)[:300])
        self.result.checks.append(res)
        if res.status != OK:
            self.say(f"slice check {backend.name} {shape.describe()}: {res.status} {_errors_text(res)}")
        return res

    # -------------------------------------------------------------- the loop
    def run(self, on_group_done: Callable[[SweepResult], None] | None = None) -> SweepResult:
        for b in self.backends:
            reason = b.unavailable(self.cfg.device)
            if reason is not None:
                self.result.unavailable[b.name] = reason
                self.say(f"backend {b.name}: n/a ({reason})")
        try:
            for headdim in self.cfg.headdims:
                for base in shapes_for(self.cfg, headdim):
                    self.run_shape(base)
                    if on_group_done is not None:
                        on_group_done(self.result)
        except KeyboardInterrupt:
            self.result.interrupted = True
            self.say("interrupted: reporting what was measured")
        self.result.elapsed_s = self.elapsed()
        return self.result

    def run_shape(self, base: Shape) -> None:
        try:
            inputs = chk.make_inputs(base, self.cfg.device,
                                     requires_grad="bwd" in self.cfg.directions or self.cfg.fwd_grad)
        except (Exception, torch.cuda.OutOfMemoryError) as e:  # noqa: BLE001
            inputs = e
        for causal in self.cfg.causal:
            shape = dataclasses.replace(base, causal=causal)
            for backend in self.case_order():
                for direction in self.cfg.directions:
                    m = self.measure(backend, direction, shape, inputs)
                    self.result.measurements.append(m)
                    self.done += 1
                    self.say(f"[{self.done:>4}/{self.total}] {self.elapsed():7.1f}s {direction} "
                             f"{backend.name:<18} {shape.describe()}: {_cell_log(m)}")
                    if self.cfg.sleep_s and m.status not in (NOT_AVAILABLE, SKIPPED):
                        time.sleep(self.cfg.sleep_s)
                free_memory(self.cfg.device, collect=False)
        del inputs
        free_memory(self.cfg.device)


def _errors_text(res: CheckResult) -> str:
    if not res.errors:
        return res.note[:200]
    return ", ".join(f"{n} {err:.2e}{'<=' if err <= tol else ' > '}{tol:.2e}"
                     for n, (err, tol, _) in res.errors.items())


def _cell_log(m: Measurement) -> str:
    if m.ms is None:
        return m.status + (f" ({m.note[:160]})" if m.note else "")
    flag = "" if m.status == OK else f" {m.status}"
    return f"{m.tflops:7.1f} TFLOP/s  {m.ms:9.3f} ms  reps={m.reps} checked={m.checked}{flag}"


def quiet_sdpa_warnings() -> None:
    """SDPA explains at length why a forced backend refuses a shape; the cell already says
    'unsupported' and the note keeps the error, so keep the progress lines readable."""
    for pattern in (r".*kernel not used because", r".*has been runtime disabled", r"For dense input",
                    r".*require query, key and value", r"Memory efficient kernel not used",
                    r"Flash attention kernel not used", r"cuDNN attention kernel not used"):
        warnings.filterwarnings("ignore", message=pattern, category=UserWarning)


def main(cfg: BenchConfig) -> int:
    from . import report
    from .env import collect_env, sample_clocks_after

    if cfg.list_backends:
        print(report.backends_listing(cfg.device))
        return 0
    if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        print("error: CUDA is not available (this benchmark needs a GPU)", file=sys.stderr)
        return 2
    names = list(cfg.backends) if cfg.backends else default_backend_names(cfg.device)
    try:
        backends = [get_backend(n) for n in names]
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    env = collect_env(cfg)
    quiet_sdpa_warnings()
    sweep = Sweep(cfg, backends)
    print(f"flash256.bench: {sweep.total} cells, backends {', '.join(names)}", file=sys.stderr)

    def save_partial(res: SweepResult) -> None:
        if cfg.json_path:
            report.write_json(cfg.json_path, cfg, env, backends, res, complete=False)

    result = sweep.run(on_group_done=save_partial)
    sample_clocks_after(env, cfg.device)
    text = report.markdown_report(cfg, env, backends, result)
    print(text)
    if cfg.markdown_path:
        with open(cfg.markdown_path, "w") as f:
            f.write(text + "\n")
    if cfg.json_path:
        report.write_json(cfg.json_path, cfg, env, backends, result, complete=not result.interrupted)
        print(f"wrote {cfg.json_path}", file=sys.stderr)
    if cfg.plot_path:
        err = report.plot(cfg.plot_path, cfg, env, backends, result)
        print(f"plot: {err}" if err else f"wrote {cfg.plot_path}", file=sys.stderr)
    return 130 if result.interrupted else 0
