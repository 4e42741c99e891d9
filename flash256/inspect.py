"""Compile every shipped kernel configuration for a GPU target (no GPU needed) and report
registers, spills, shared memory and SASS opcode counts.

    python -m flash256.inspect [--arch sm90] [--json] [--kernel SUBSTR] [--sass-dir DIR]

Each module named in KERNEL_MODULES (under flash256.kernels) provides
`inspect_cases(arch: int) -> list[InspectCase]`. Exit status 1 if any configuration spills (beyond the
few bytes a case may declare as known, with its reason), exceeds shared memory, fails to compile, or a
kernel module fails to import.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import re
import sys
import time

from flash256.kernels.compile_target import InspectCase, dump_sass, problems, sass_stats

KERNEL_MODULES = ("portable_fwd", "portable_bwd", "sm90_fwd", "sm90_bwd")

# (JSON field, table header) in display order
COLUMNS = (
    ("registers", "regs"), ("setmaxnreg", "setmaxnreg"), ("spill_stores", "spill_st"), ("spill_loads", "spill_ld"),
    ("shared", "shared"), ("stack", "stack"), ("hgmma", "HGMMA"), ("mufu_ex2", "MUFU.EX2"),
    ("ffma", "FFMA"), ("frnd", "FRND"), ("f2i", "F2I"), ("frnd_f2i", "FRND/F2I"), ("ldl", "LDL"), ("stl", "STL"),
    ("ex2_under_wgmma", "EX2|MMA"), ("load_waits_in_wgmma_issue", "LDG|MMA"),
)


def parse_arch(text: str) -> int:
    """"sm90", "sm_90", "sm_90a", "90" -> 90."""
    m = re.fullmatch(r"(?:sm_?)?(\d+)a?", text.strip().lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"bad arch {text!r} (expected e.g. sm90)")
    return int(m.group(1))


def collect_cases(arch: int, modules=None, kernel_filter: str | None = None):
    """(cases, errors): cases of every importable module; errors lists modules that failed to import."""
    cases, errors = [], []
    for name in KERNEL_MODULES if modules is None else modules:
        full = f"flash256.kernels.{name}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name not in (full, "flash256.kernels", "flash256"):
                errors.append(f"{full}: {e!r}")  # the module exists but one of its imports is missing
            else:
                print(f"inspect: skipping {full} (no such module)", file=sys.stderr)
            continue
        except Exception as e:  # a broken kernel module must not pass silently
            errors.append(f"{full}: {e!r}")
            continue
        if not hasattr(module, "inspect_cases"):
            print(f"inspect: skipping {full} (no inspect_cases)", file=sys.stderr)
            continue
        try:
            found = [_as_case(c) for c in _call_inspect_cases(module, arch)]
        except Exception as e:  # includes eager compiles inside inspect_cases
            errors.append(f"{full}.inspect_cases: {type(e).__name__}: {e}")
            continue
        cases += [c for c in found if kernel_filter is None or kernel_filter in c.kernel]
    return cases, errors


def _call_inspect_cases(module, arch: int):
    """inspect_cases(arch); tolerates a zero-argument inspect_cases() (with a warning)."""
    if inspect.signature(module.inspect_cases).parameters:
        return module.inspect_cases(arch)
    print(f"inspect: {module.__name__}.inspect_cases() takes no arch argument (contract: inspect_cases(arch))",
          file=sys.stderr)
    return module.inspect_cases()


def _as_case(case) -> InspectCase:
    """An InspectCase, or a mapping {"kernel", "config", "compile" | "compiled"} converted to one."""
    if isinstance(case, InspectCase):
        return case
    if "compile" in case:
        return InspectCase(case["kernel"], case["config"], case["compile"])
    compiled = case["compiled"]  # already compiled by the module
    return InspectCase(case["kernel"], case["config"], lambda: compiled)


def inspect_case(case: InspectCase, arch: int, sass_dir: str | None = None) -> dict:
    """One report row: kernel, config, arch, ok, problems, compile_s and sass_stats' fields."""
    row = {"kernel": case.kernel, "config": case.config, "arch": f"sm_{arch}{'a' if arch >= 90 else ''}"}
    start = time.perf_counter()
    try:
        # stdout carries the report (JSON lines): keep any compiler chatter off it
        with contextlib.redirect_stdout(sys.stderr):
            compiled = case.compile()
        sass = dump_sass(compiled)
        row.update(sass_stats(compiled, sass))
    except Exception as e:
        row.update(ok=False, problems=[f"compile failed: {type(e).__name__}: {str(e).strip()[:2000]}"])
        return row
    finally:
        row["compile_s"] = round(time.perf_counter() - start, 2)
    if sass_dir:
        write_sass(sass_dir, case, sass)
    row["arch"] = row.pop("sass_arch") or row["arch"]
    row["problems"] = problems(row, arch, case.spill_budget)
    row["ok"] = not row["problems"]
    return row


def write_sass(sass_dir: str, case: InspectCase, sass: str) -> None:
    os.makedirs(sass_dir, exist_ok=True)
    stem = re.sub(r"[^\w.+-]+", "_", f"{case.kernel}__{case.config}")
    with open(os.path.join(sass_dir, stem + ".sass"), "w") as f:
        f.write(sass)


def format_table(rows: list[dict]) -> str:
    headers = ["kernel", "config"] + [h for _, h in COLUMNS] + ["ok"]
    lines = [headers]
    for r in rows:
        cells = [r["kernel"], r["config"]] + [_cell(r.get(k, "-")) for k, _ in COLUMNS]
        lines.append(cells + ["ok" if r["ok"] else "FAIL"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    # text columns left-aligned, numbers right-aligned
    fmt = lambda line: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
    return "\n".join(fmt(line) for line in lines)


def _cell(value) -> str:
    if isinstance(value, list):  # setmaxnreg
        return "/".join(map(str, value)) or "-"
    return str(value)


def exit_status(rows: list[dict], import_errors: list[str] = ()) -> int:
    return 1 if import_errors or any(not r["ok"] for r in rows) else 0


def report_failures(rows: list[dict], import_errors: list[str]) -> None:
    for err in import_errors:
        print(f"inspect: FAILED to import {err}", file=sys.stderr)
    for r in rows:
        if not r["ok"]:
            print(f"inspect: FAIL {r['kernel']} [{r['config']}]: {'; '.join(r['problems'])}", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flash256.inspect", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=parse_arch, default=90, help="target, e.g. sm90 (default)")
    ap.add_argument("--json", action="store_true", help="one JSON object per configuration per line")
    ap.add_argument("--kernel", help="only kernels whose name contains this substring")
    ap.add_argument("--sass-dir", help="write <kernel>__<config>.sass (resource usage + SASS) here")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        # flash256's kernels were decorated as interpreter functions already: nothing to compile
        print("inspect: unset TRITON_INTERPRET; interpreter kernels cannot be compiled", file=sys.stderr)
        return 2

    cases, import_errors = collect_cases(args.arch, kernel_filter=args.kernel)
    rows = []
    for case in cases:
        rows.append(inspect_case(case, args.arch, args.sass_dir))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json and rows:
        print(format_table(rows))
    if not cases:
        print("inspect: no kernel configurations found", file=sys.stderr)
    report_failures(rows, import_errors)
    return exit_status(rows, import_errors)


if __name__ == "__main__":
    sys.exit(main())
