"""Compile Triton / Gluon kernels for a GPU target on a machine without a GPU, and read
registers, spills, shared memory and SASS opcode counts from the result.

Imports only triton and the standard library, so it works without importing flash256.

Signature strings (triton 3.6, the same strings `JITFunction` derives from real arguments):
  pointer           "*fp16", "*bf16", "*fp32", "*i32"  (global pointers; 16-byte aligned by default)
  scalar            "i32", "i64", "fp32", "i1"
  constexpr         give the value in `constexprs`; its signature entry may be omitted
                    (it is filled in as "constexpr")
  host descriptor   "tensordesc<bf16[1, 64, 1, 256]>"  (tl: triton.tools.tensor_descriptor) — use
                    tl_desc_type("bf16", [1, 64, 1, 256])
  gluon descriptor  "tensordesc<bf16[64, 256],NVMMASharedLayout(...)>" — use
                    gluon_desc_type("bf16", [64, 256], layout)

Typical use in a kernel module:
    def inspect_cases(arch):
        return [InspectCase("fwd", "128x64 w8 s2",
                            lambda: compile_tl(_fwd, {"Q": "*bf16", ...}, {"BLOCK_M": 128, ...},
                                               arch=arch, num_warps=8, num_stages=2))]
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from typing import Callable, Iterable, Mapping, NamedTuple

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.cache import get_cache_manager

# Largest dynamic shared memory a block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin).
# Triton compares metadata.shared with this at launch time only, so we check it ourselves.
MAX_SHARED_BYTES = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}


@dataclasses.dataclass(frozen=True)
class InspectCase:
    kernel: str
    config: str
    compile: Callable[[], "triton.compiler.CompiledKernel"]
    # Spill bytes (stores + loads) a configuration is known to need, with the reason in `config`; more fails.
    spill_budget: int = 0


# --------------------------------------------------------------------------- compiling

def tl_desc_type(dtype: str, block: Iterable[int]) -> str:
    """Signature string of a host TensorDescriptor argument of a @triton.jit kernel."""
    return f"tensordesc<{dtype}[{', '.join(str(b) for b in block)}]>"


def gluon_desc_type(dtype: str, block: Iterable[int], layout) -> str:
    """Signature string of a gluon hopper TensorDescriptor argument (layout: NVMMASharedLayout)."""
    # str_to_ty eval()s the text after the block shape, so the layout's repr must round-trip.
    return f"tensordesc<{dtype}[{', '.join(str(b) for b in block)}],{layout!r}>"


def _full_signature(fn, signature: Mapping[str, str], constexprs: Mapping[str, object]):
    """Signature and constexprs for every parameter, in the kernel's parameter order.

    Constexpr parameters that are not given take their default value, like a launch would.
    """
    sig, consts = {}, dict(constexprs)
    for p in fn.params:
        if p.name in consts or signature.get(p.name) == "constexpr" or p.is_constexpr:
            if p.name not in consts:
                if not p.has_default:
                    raise ValueError(f"{fn.__name__}: constexpr {p.name!r} has no value")
                consts[p.name] = p.default
            sig[p.name] = "constexpr"
        elif p.name in signature:
            sig[p.name] = signature[p.name]
        else:
            raise ValueError(f"{fn.__name__}: no signature type for parameter {p.name!r}")
    unknown = (set(signature) | set(constexprs)) - set(sig)
    if unknown:
        raise ValueError(f"{fn.__name__}: unknown parameters {sorted(unknown)}")
    return sig, consts


def _divisibility_attrs(sig: Mapping[str, str], divisible_by_16: Iterable[str] | None):
    """tt.divisibility=16 hints, as JITFunction adds for 16-aligned pointers / ints divisible by 16.

    Default: every pointer argument (torch allocations are 256-byte aligned). Without the hint
    loads are not vectorised and the SASS would not match what a real launch compiles.
    """
    names = [n for n, t in sig.items() if t.startswith("*")] if divisible_by_16 is None else list(divisible_by_16)
    index = {n: i for i, n in enumerate(sig)}
    return {(index[n], ): [["tt.divisibility", 16]] for n in names}


def _require_compilable(fn) -> None:
    if not hasattr(fn, "params"):  # e.g. triton.runtime.interpreter.InterpretedFunction
        raise TypeError(f"{getattr(fn, '__name__', fn)!r} is a {type(fn).__name__}, not a JITFunction: it was "
                        "decorated with TRITON_INTERPRET=1 set; compile in a process without it")


def _compile(source_cls, fn, signature, constexprs, arch, divisible_by_16, options):
    _require_compilable(fn)
    sig, consts = _full_signature(fn, signature, constexprs)
    src = source_cls(fn=fn, signature=sig, constexprs=consts, attrs=_divisibility_attrs(sig, divisible_by_16))
    # Triton runs `ptxas -v` but deletes its report unless dump_ptxas_log is set, which print()s
    # it: capture it so sass_stats need not run ptxas again (a cache hit prints nothing).
    out = io.StringIO()
    try:
        with triton.knobs.nvidia.scope(), contextlib.redirect_stdout(out):
            triton.knobs.nvidia.dump_ptxas_log = True
            # capability 90 -> ptxas --gpu-name=sm_90a (triton adds "a" for >= 90; wgmma needs it)
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception:
        sys.stderr.write(out.getvalue())  # triton prints the ptxas reproducer on failure
        raise
    if _SPILL_RE.search(out.getvalue()):
        _ptxas_log_cache(compiled).put(out.getvalue(), _ptxas_log_name(compiled), binary=False)
    return compiled


def compile_tl(fn, signature: Mapping[str, str], constexprs: Mapping[str, object], arch: int = 90,
               num_warps: int = 4, num_stages: int = 2, divisible_by_16: Iterable[str] | None = None,
               **options):
    """Compile a @triton.jit kernel for sm_<arch> without a GPU; returns a CompiledKernel.

    options: any triton CUDA option (maxnreg, num_ctas, enable_fp_fusion, ...).
    divisible_by_16: parameter names hinted divisible by 16 (default: all pointer parameters).
    """
    options = dict(num_warps=num_warps, num_stages=num_stages, **options)
    return _compile(ASTSource, fn, signature, constexprs, arch, divisible_by_16, options)


def compile_gluon(fn, signature: Mapping[str, str], constexprs: Mapping[str, object], arch: int = 90,
                  num_warps: int = 4, divisible_by_16: Iterable[str] | None = None, **options):
    """Compile a @gluon.jit kernel for sm_<arch> without a GPU; returns a CompiledKernel."""
    from triton.experimental.gluon._runtime import GluonASTSource
    options = dict(num_warps=num_warps, **options)
    return _compile(GluonASTSource, fn, signature, constexprs, arch, divisible_by_16, options)


# --------------------------------------------------------------------------- tools

def _cuobjdump() -> str:
    return triton.knobs.nvidia.cuobjdump.path


def _ptxas(arch: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas
    return get_ptxas(arch).path


def _run_on_cubin(args: list[str], cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([_cuobjdump(), *args, path], check=True, capture_output=True, text=True).stdout


def dump_sass(compiled) -> str:
    """cuobjdump -res-usage --dump-sass of the kernel: resource usage, then SASS.

    Disassembly takes ~2 s for an attention kernel, so the text is cached next to the kernel in
    triton's cache (keyed by the kernel's hash, like the cubin it is derived from).
    """
    cache, name = get_cache_manager(compiled.hash), f"{compiled.name[:150]}.res_sass"
    cached = cache.get_file(name)
    if cached is not None:
        with open(cached) as f:
            return f.read()
    text = _run_on_cubin(["-res-usage", "--dump-sass"], compiled.asm["cubin"])
    cache.put(text, name, binary=False)
    return text


def _ptxas_log_cache(compiled):
    return get_cache_manager(compiled.hash)  # the directory triton keeps this kernel in


def _ptxas_log_name(compiled) -> str:
    return f"{compiled.name[:150]}.ptxas_v.log"


def _ptxas_log(compiled) -> str:
    """`ptxas -v` report for the kernel's PTX, cached next to the kernel in triton's cache.

    Triton runs ptxas -v while compiling but deletes the log, and its metadata has no register or
    spill counts (those come from the driver at load time). _compile captures the report; failing
    that (kernel compiled elsewhere, or cached before) we re-run ptxas with triton's flags:
    ptxas is deterministic, so the numbers describe the cubin triton produced.
    """
    cache, name = _ptxas_log_cache(compiled), _ptxas_log_name(compiled)
    cached = cache.get_file(name)
    if cached is not None:
        with open(cached) as f:
            return f.read()
    md = compiled.metadata
    arch = md.target.arch
    flags = ["-lineinfo", "-v"] + ([] if md.enable_fp_fusion else ["--fmad=false"])
    flags += md.ptx_options.split() if md.ptx_options else []
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        cmd = [_ptxas(arch), *flags, f"--gpu-name={gpu}", ptx, "-o", os.path.join(tmp, "kernel.cubin")]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    cache.put(log, name, binary=False)
    return log


# --------------------------------------------------------------------------- parsing

_RES_RE = re.compile(r"Function (\S+):\s*\n\s*(.*)")
_SPILL_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS_RE = re.compile(r"Used (\d+) registers")
_SASS_ARCH_RE = re.compile(r"code for (sm_\w+)")
_SETMAXREG_RE = re.compile(r"USETMAXREG\.\S+\s+(?:U?P\w+,\s*)?(0x[0-9a-f]+|\d+)")
# one SASS instruction: /*0a30*/ [@!P0] OPCODE.MOD.MOD operands ;
_INSN_RE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)")


def parse_res_usage(text: str, function: str) -> dict:
    """REG / STACK / SHARED / LOCAL of `function` from `cuobjdump -res-usage`."""
    for name, fields in _RES_RE.findall(text):
        if name == function:
            kv = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", fields))
            return {k: int(v) for k, v in kv.items()}
    raise ValueError(f"no resource usage for {function!r} in:\n{text}")


def parse_ptxas_log(text: str) -> dict:
    """Registers of the entry function; spills summed over every function ptxas reports
    (non-inlined device functions have their own "Function properties"); largest stack frame."""
    spills = [tuple(map(int, m)) for m in _SPILL_RE.findall(text)]
    regs = _REGS_RE.findall(text)
    if not spills or len(regs) != 1:
        raise ValueError(f"unexpected ptxas -v output:\n{text}")
    return {"registers": int(regs[0]), "stack": max(s[0] for s in spills),
            "spill_stores": sum(s[1] for s in spills), "spill_loads": sum(s[2] for s in spills)}


def count_opcodes(sass: str) -> Counter:
    """Counts of SASS instructions by base opcode, plus "BASE.MOD" for the first modifier.

    The opcode is the whole first token after an optional predicate, split at its first dot, so
    "FFMA" counts FFMA and FFMA.FTZ/.SAT but not FFMA2 / HFMA2 / DFMA, "F2I" does not count F2IP,
    "LDL" counts LDL/LDL.64/LDL.128 but not LDS/LDSM, and "MUFU.EX2" counts MUFU.EX2 only.
    """
    counts = Counter()
    for base, mods in _INSN_RE.findall(sass):
        counts[base] += 1
        if mods:
            counts[base + "." + mods[1:].split(".")[0]] += 1
    return counts


_WGMMA_WAIT_RE = re.compile(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*(0x[0-9a-f]+)")


def ex2_under_wgmma(sass: str) -> int:
    """The most MUFU.EX2 found between a wgmma wait that leaves one group in flight (`wait(1)`) and the
    next full wait (`wait(0)`), in SASS order: exp2 work a warpgroup does while its own GEMM runs.

    The sm90 kernels write their softmax between those two waits; ptxas may still move the full wait
    above it (it did in the d=256 forward while the mask was a branch inside the key loop: 0 here, and no
    overlap; NOTES.md), so this counts what the machine will actually overlap.
    """
    best = count = 0
    inside = False
    for line in sass.splitlines():
        wait = _WGMMA_WAIT_RE.search(line)
        if wait:
            if inside:
                best = max(best, count)
            inside, count = int(wait.group(1), 16) == 1, 0
        elif inside and "MUFU.EX2" in line:
            count += 1
    return best


# Control bits: each Volta-or-later instruction is two 64-bit words; the second word's bits 41-63 are its control
# (4 stall cycles, yield, 3-bit write and read scoreboard indices with 7 for none, a 6-bit wait mask, 4 reuse bits).
# A variable-latency instruction (a load, MUFU, an mbarrier try-wait) sets a scoreboard; one that needs its result
# waits on it. cuobjdump prints both words as `/* 0x... */` comments.
_CONTROLLED_RE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*/\* (0x[0-9a-f]{16}) \*/")
_WORD_RE = re.compile(r"/\* (0x[0-9a-f]{16}) \*/")
_BACK_BRANCH_RE = re.compile(r"BRA (?:!?U?P\d, )?0x([0-9a-f]+)")
NO_SCOREBOARD = 7


class Instruction(NamedTuple):
    offset: int
    text: str
    stall: int
    write_sb: int
    read_sb: int
    waits: frozenset


def control_bits(high_word: int) -> tuple[int, int, int, frozenset]:
    """(stall cycles, write scoreboard, read scoreboard, scoreboards waited on) of an instruction's second word."""
    ctrl = high_word >> 41
    wait_mask = (ctrl >> 11) & 0x3F
    return ctrl & 0xF, (ctrl >> 5) & 7, (ctrl >> 8) & 7, frozenset(b for b in range(6) if wait_mask >> b & 1)


def parse_instructions(sass: str) -> list[Instruction]:
    """Every instruction of a cuobjdump listing with its offset and decoded control bits."""
    lines = sass.splitlines()
    out = []
    for line, following in zip(lines, lines[1:]):
        m = _CONTROLLED_RE.match(line)
        second = _WORD_RE.search(following) if m else None
        if second:
            out.append(Instruction(int(m.group(1), 16), m.group(2), *control_bits(int(second.group(1), 16))))
    return out


def loops(instructions: list[Instruction], min_length: int = 16) -> list[list[Instruction]]:
    """The bodies of conditional backward branches (a loop's back edge), in code order. Unconditional ones are the
    way back from out-of-line code (an mbarrier wait's retry), and the shortest are spin loops: both left out."""
    bodies = []
    for ins in instructions:
        m = _BACK_BRANCH_RE.search(ins.text)
        if m and ins.text.startswith("@") and int(m.group(1), 16) < ins.offset:
            body = [x for x in instructions if int(m.group(1), 16) <= x.offset <= ins.offset]
            if len(body) >= min_length:
                bodies.append(body)
    return bodies


def opcode(text: str) -> str:
    return text.split()[1 if text.startswith("@") else 0].split(".")[0]


def waits_in_wgmma_issue(body: list[Instruction]) -> list[tuple[Instruction, set]]:
    """(instruction, opcodes that set what it waits on) for each instruction of a loop between a WARPGROUP.ARRIVE
    and the last wgmma of its group that waits on a scoreboard set in the loop by anything but an mbarrier wait
    (SYNCS): each such wait holds back the rest of the group's issue."""
    setters = {}
    for x in body:
        if x.write_sb != NO_SCOREBOARD:
            setters.setdefault(x.write_sb, set()).add(opcode(x.text))
    found, issuing = [], False
    for x in body:
        issuing = issuing or "WARPGROUP.ARRIVE" in x.text
        kinds = set().union(*(setters.get(b, set()) for b in x.waits))
        if issuing and "HGMMA" not in x.text and kinds - {"SYNCS"}:
            found.append((x, kinds))
        if "HGMMA" in x.text and "gsb0" in x.text:
            issuing = False
    return found


def load_waits_in_wgmma_issue(sass: str) -> int:
    """How many instructions, over all loops, wait on a global load (LDG) while a wgmma group is being issued: a
    load's latency (an L2 round trip, ~1000 cycles under a TMA stream) stalls the GEMM's issue each iteration.
    The d=256 dK/dV kernel's lse scaling is one (NOTES.md, sixteenth session)."""
    return sum("LDG" in kinds for body in loops(parse_instructions(sass)) for _, kinds in waits_in_wgmma_issue(body))


def sass_stats(compiled, sass: str | None = None) -> dict:
    """Registers, spills, shared memory and selected SASS opcode counts of a CompiledKernel (sass: its
    dump_sass text, if you already have it).

    registers / stack / spill_* : `ptxas -v` (cross-checked against cuobjdump -res-usage REG)
    shared        : metadata.shared, the dynamic shared memory triton requests at launch
    static_shared : SHARED of -res-usage (static .nv.shared; on sm_90 kernels that use the
                    driver-reserved region it reads 1024)
    local         : LOCAL of -res-usage (per-thread local memory besides the stack)
    setmaxnreg    : distinct register counts of USETMAXREG (warp-specialized kernels; `registers`
                    is then only the count at launch)
    hgmma, mufu_ex2, ffma, frnd, f2i, ldl, stl : instruction counts in the SASS (static, all
                    functions of the cubin); frnd_f2i = frnd + f2i
    ex2_under_wgmma : see ex2_under_wgmma (0 for kernels without async wgmma)
    load_waits_in_wgmma_issue : see load_waits_in_wgmma_issue
    wgmma_serialized : ptxas reported (C7512) that it made every wgmma wait for the previous one (it does so
                    when the in-flight accumulators and operands do not fit the registers): no overlap at all
    """
    sass = dump_sass(compiled) if sass is None else sass
    res = parse_res_usage(sass, compiled.name)
    log = _ptxas_log(compiled)
    ptxas = parse_ptxas_log(log)
    if ptxas["registers"] != res.get("REG"):
        raise RuntimeError(f"ptxas re-run disagrees with the cubin: {ptxas['registers']} vs {res.get('REG')} regs")
    ops = count_opcodes(sass)
    arch = _SASS_ARCH_RE.search(sass)
    stats = {
        "sass_arch": arch.group(1) if arch else None,
        **ptxas,
        "spill_bytes": ptxas["spill_stores"] + ptxas["spill_loads"],
        "shared": compiled.metadata.shared,
        "static_shared": res.get("SHARED", 0),
        "local": res.get("LOCAL", 0),
        "num_warps": compiled.metadata.num_warps,
        "setmaxnreg": sorted({int(v, 0) for v in _SETMAXREG_RE.findall(sass)}),
        "hgmma": ops["HGMMA"],
        "mufu_ex2": ops["MUFU.EX2"],
        "ffma": ops["FFMA"],
        "frnd": ops["FRND"],
        "f2i": ops["F2I"],
        "ldl": ops["LDL"],
        "stl": ops["STL"],
        "ex2_under_wgmma": ex2_under_wgmma(sass),
        "load_waits_in_wgmma_issue": load_waits_in_wgmma_issue(sass),
        "wgmma_serialized": "wgmma.mma_async instructions are serialized" in log,
    }
    stats["frnd_f2i"] = stats["frnd"] + stats["f2i"]
    return stats


def problems(stats: Mapping, arch: int, spill_budget: int = 0) -> list[str]:
    """Why a configuration is not fit to run on sm_<arch> (empty list: fine); spill_budget: InspectCase's."""
    out = []
    if stats["spill_bytes"] > spill_budget:
        out.append(f"spills {stats['spill_stores']} B stores + {stats['spill_loads']} B loads"
                   + (f" (known: {spill_budget} B)" if spill_budget else ""))
    if stats.get("wgmma_serialized"):
        out.append("ptxas serialised the wgmmas (C7512: not enough registers for those in flight)")
    limit = MAX_SHARED_BYTES.get(arch)
    if limit is not None and stats["shared"] > limit:
        out.append(f"shared memory {stats['shared']} B > {limit} B")
    return out
