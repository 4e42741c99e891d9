"""Markdown tables (TFLOP/s, ms, ratios), the JSON file and the PNG plot."""
from __future__ import annotations

import dataclasses
import json
import os

from .backends import BACKENDS, Backend, default_backend_names, get_backend
from .check import CHECK_MAX_BATCH, CHECK_MAX_SEQLEN, SLICE_ROWS
from .env import gpu_line, software_line
from .flops import BWD_FACTOR
from .records import OK, WRONG, CheckResult, Measurement, Shape

SCHEMA = "flash256.bench/1"


def size_label(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}m"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


def seqlen_label(shape: Shape) -> str:
    if shape.seqlen_q == shape.seqlen_k:
        return size_label(shape.seqlen_k)
    return f"{size_label(shape.seqlen_q)}x{size_label(shape.seqlen_k)}"


def format_cell(m: Measurement | None, field: str = "tflops") -> str:
    if m is None:
        return "-"
    if m.ms is None:
        return m.status
    value = _fmt_tflops(m.tflops) if field == "tflops" else f"{m.ms:.3f}"
    if m.status == WRONG:
        return f"WRONG ({value})"
    return value + ("?" if m.checked == "err" else "")


def _fmt_tflops(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.3g}"


def format_ratio(a: Measurement | None, b: Measurement | None) -> str:
    if a is None or b is None or not a.rankable or not b.rankable or not b.tflops:
        return "-"
    return f"{a.tflops / b.tflops:.2f}"


def markdown_table(header: list[str], rows: list[list[str]], numeric: bool = True) -> str:
    """Aligned markdown table; numeric: every column but the first right-aligned."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def right(i: int) -> bool:
        return numeric and i > 0

    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 1) + ":" if right(i) else "-" * (w + 2) for i, w in enumerate(widths))
             + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).rjust(w) if right(i) else str(c).ljust(w)
                                         for i, (c, w) in enumerate(zip(r, widths))) + " |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Group:
    direction: str
    headdim: int
    causal: bool

    def title(self) -> str:
        return f"{self.direction}, headdim {self.headdim}, {'causal' if self.causal else 'non-causal'}"


class Tables:
    """Index of the measurements by (group, seqlen row, backend)."""

    def __init__(self, measurements: list[Measurement], backend_names: list[str],
                 flash256_names: set[str] | None = None):
        self.backends = backend_names
        # flash256 columns get a ratio against every other column
        self.ours = flash256_names if flash256_names is not None else {n for n in backend_names if _is_flash256(n)}
        self.cells: dict[tuple, Measurement] = {}
        self.rows: dict[Group, list[Shape]] = {}
        for m in measurements:
            g = Group(m.direction, m.shape.headdim, m.shape.causal)
            self.cells[(g, m.shape, m.backend)] = m
            rows = self.rows.setdefault(g, [])
            if m.shape not in rows:
                rows.append(m.shape)

    def groups(self, directions, headdims, causals) -> list[Group]:
        out = [Group(d, h, c) for d in directions for h in headdims for c in causals]
        return [g for g in out if g in self.rows]

    def values(self, group: Group, field: str) -> str:
        header = ["seqlen", "batch"] + self.backends
        rows = [[seqlen_label(s), str(s.batch)] + [format_cell(self.cells.get((group, s, b)), field)
                                                    for b in self.backends] for s in self.rows[group]]
        return markdown_table(header, rows)

    def ratio_pairs(self) -> list[tuple[str, str]]:
        ours = [b for b in self.backends if b in self.ours]
        others = [b for b in self.backends if b not in self.ours]
        return [(a, b) for a in ours for b in others]

    def ratios(self, group: Group) -> str | None:
        pairs = self.ratio_pairs()
        if not pairs:
            return None
        header = ["seqlen"] + [f"{a}/{b}" for a, b in pairs]
        rows = [[seqlen_label(s)] + [format_ratio(self.cells.get((group, s, a)), self.cells.get((group, s, b)))
                                     for a, b in pairs] for s in self.rows[group]]
        return markdown_table(header, rows)


def _is_flash256(name: str) -> bool:
    return name == "flash256" or name.startswith("flash256-")


def header_lines(cfg, env: dict) -> list[str]:
    heads = "; ".join(f"d={d}: {h} q heads, {kv} kv heads" for d in cfg.headdims
                      for h, kv in [cfg.heads_for(d)])
    batch = (f"batch {cfg.batch_size}" if cfg.batch_size is not None
             else f"batch = max(1, {cfg.total_seqlen} // seqlen)")
    check = {"none": "not checked (--check none)",
             "first": f"full check (out{', dq, dk, dv' if 'bwd' in cfg.directions else ''}) per backend, "
                      f"headdim and causal, on the first seqlen's shape cut to batch <= {CHECK_MAX_BATCH}, "
                      f"seqlen <= {CHECK_MAX_SEQLEN}",
             "all": f"full check (out{', dq, dk, dv' if 'bwd' in cfg.directions else ''}) per backend, headdim "
                    f"and causal, on the first seqlen's shape cut to batch <= {CHECK_MAX_BATCH}, seqlen <= "
                    f"{CHECK_MAX_SEQLEN}; plus the forward output of every measured shape on {SLICE_ROWS}-row "
                    f"slices (first rows of batch 0, last rows of the last batch)"}[cfg.check]
    return [
        f"## flash256 benchmark, {env['date']}",
        "",
        f"- command: `{cfg.command}`",
        f"- GPU: {gpu_line(env)}",
        f"- software: {software_line(env)}",
        f"- shapes: {cfg.dtype}, {heads}, {batch}"
        + (f", sliding window (left, right) = {cfg.window}" if cfg.window != (-1, -1) else "")
        + (f", softcap {cfg.softcap:g}" if cfg.softcap else "")
        + (", deterministic backward" if cfg.deterministic else ""),
        f"- timing: median of CUDA-event-timed calls, L2 flushed before each; warm-up {cfg.warmup_ms:g} ms, "
        f"timed {cfg.rep_ms:g} ms ({cfg.min_reps}..{cfg.max_reps} calls, fewer for long seqlens); "
        + ("forward with autograd recording (--fwd-grad)" if cfg.fwd_grad else "forward under torch.no_grad")
        + "; backward = torch.autograd.grad(out, (q, k, v), dout) alone; backends in an order rotated by one per case",
        f"- FLOPs: forward 4·b·h·d·(visible query-key pairs; causal bottom-right aligned, counted exactly), "
        f"backward {BWD_FACTOR:g} × forward",
        f"- correctness: {check}; rule max|x - ref_fp32| <= 2·max|ref_{cfg.dtype} - ref_fp32| + rounding + 1e-5",
        "- cells: TFLOP/s; `WRONG (n)` failed the check and is never ranked; `n?` the check could not run; "
        "`n/a` backend unavailable; `unsupported` / `err: ...` raised on that shape (notes below)",
    ]


def notes_lines(result, backends: list[Backend]) -> list[str]:
    lines = []
    for name, reason in result.unavailable.items():
        lines.append(f"- {name}: n/a, {reason}")
    seen = set()
    for m in result.measurements:
        if m.status == OK or m.backend in result.unavailable or not m.note:
            continue
        key = (m.backend, m.status, m.note[:80])
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"- {m.backend} {m.direction} {m.shape.describe()}: {m.status}, {m.note[:300]}")
    if result.interrupted:
        lines.append("- the run was interrupted; tables are partial")
    return lines


def check_table(checks: list[CheckResult]) -> str | None:
    full = [c for c in checks if c.kind == "full"]
    if not full:
        return None
    names = ["out", "dq", "dk", "dv"]
    rows = []
    for c in full:
        errs = [f"{c.errors[n][0]:.1e} / {c.errors[n][1]:.1e}" if n in c.errors else "-" for n in names]
        rows.append([c.backend, str(c.shape.headdim), "yes" if c.shape.causal else "no",
                     f"b={c.shape.batch} s={seqlen_label(c.shape)}"] + errs + [c.status])
    return markdown_table(["backend", "d", "causal", "check shape"] + [f"{n} err / tol" for n in names]
                          + ["status"], rows, numeric=False)


def markdown_report(cfg, env: dict, backends: list[Backend], result) -> str:
    names = [b.name for b in backends]
    tables = Tables(result.measurements, names, {b.name for b in backends if b.is_flash256})
    out = header_lines(cfg, env)
    for g in tables.groups(cfg.directions, cfg.headdims, cfg.causal):
        out += ["", f"### {g.title()}: TFLOP/s", "", tables.values(g, "tflops")]
        ratios = tables.ratios(g)
        if ratios:
            out += ["", f"### {g.title()}: ratios (TFLOP/s over TFLOP/s)", "", ratios]
        out += ["", f"### {g.title()}: ms", "", tables.values(g, "ms")]
    checks = check_table(result.checks)
    if checks:
        out += ["", "### correctness (full check)", "", checks]
    bad_slices = [c for c in result.checks if c.kind == "slice" and c.status != OK]
    n_slices = sum(1 for c in result.checks if c.kind == "slice")
    if n_slices:
        out += ["", f"Slice checks: {n_slices - len(bad_slices)} of {n_slices} passed."]
    notes = notes_lines(result, backends)
    if notes:
        out += ["", "### notes", ""] + notes
    out += ["", f"Run time {result.elapsed_s:.0f} s."]
    return "\n".join(out)


# ------------------------------------------------------------------ JSON

def _jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None  # NaN is not JSON
    return obj


def _check_json(c: CheckResult) -> dict:
    return {"backend": c.backend, "kind": c.kind, "status": c.status, "shape": _jsonable(c.shape),
            "note": c.note,
            "errors": {n: {"max_err": _jsonable(e), "tol": _jsonable(t), "ref_lowp_err": _jsonable(b)}
                       for n, (e, t, b) in c.errors.items()}}


def json_document(cfg, env: dict, backends: list[Backend], result, complete: bool = True) -> dict:
    return {
        "schema": SCHEMA,
        "complete": complete,
        "interrupted": result.interrupted,
        "command": cfg.command,
        "date": env.get("date"),
        "env": env,
        "config": _jsonable(cfg),
        "backends": [{"name": b.name, "description": b.description, "is_flash256": b.is_flash256,
                      "unavailable": result.unavailable.get(b.name)} for b in backends],
        "flops": {"forward": "4*b*h*d*visible_pairs (causal bottom-right, exact)", "backward_factor": BWD_FACTOR},
        "measurements": [_jsonable(m) for m in result.measurements],
        "checks": [_check_json(c) for c in result.checks],
        "elapsed_s": result.elapsed_s,
    }


def write_json(path: str, cfg, env: dict, backends: list[Backend], result, complete: bool = True) -> None:
    doc = json_document(cfg, env, backends, result, complete)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
    os.replace(tmp, path)


# ------------------------------------------------------------------ plot

def plot(path: str, cfg, env: dict, backends: list[Backend], result) -> str | None:
    """TFLOP/s vs seqlen, one panel per (direction, causal). Returns an error text or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib not available ({e})"
    panels = [(d, c) for d in cfg.directions for c in cfg.causal]
    ncols = len(cfg.causal)
    nrows = len(cfg.directions)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 4.5 * nrows), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for (direction, causal), ax in zip(panels, axes.flat):
        for hi, headdim in enumerate(cfg.headdims):
            for bi, b in enumerate(backends):
                pts = sorted((m.shape.seqlen_k, m.tflops) for m in result.measurements
                             if m.backend == b.name and m.direction == direction and m.shape.causal == causal
                             and m.shape.headdim == headdim and m.rankable)
                if not pts:
                    continue
                label = b.name if len(cfg.headdims) == 1 else f"{b.name} d={headdim}"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[hi % len(styles)], marker="o",
                        color=f"C{bi % 10}", label=label, linewidth=2.2 if b.is_flash256 else 1.4)
        ax.set_xscale("log", base=2)
        ticks = sorted({m.shape.seqlen_k for m in result.measurements})
        if ticks:
            ax.set_xticks(ticks)
            ax.set_xticklabels([size_label(t) for t in ticks])
        ax.set_xlabel("seqlen")
        ax.set_ylabel("TFLOP/s")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{direction}, {'causal' if causal else 'non-causal'}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    hd = ",".join(str(d) for d in cfg.headdims)
    fig.suptitle(f"flash256 bench: {env.get('gpu', {}).get('name')}, {cfg.dtype}, headdim {hd}, {env.get('date')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# ------------------------------------------------------------------ --list-backends

def backends_listing(device: str) -> str:
    default = set(default_backend_names(device))
    names = list(BACKENDS)
    for n in default:
        if n not in names:
            names.append(n)
    rows = []
    for n in names:
        b = get_backend(n)
        reason = b.unavailable(device)
        rows.append([n, "yes" if reason is None else f"no: {reason}", "yes" if n in default else "",
                     b.description])
    return markdown_table(["backend", "available", "default", "what"], rows, numeric=False)
