"""Tests of the kernel-inspection tooling (flash256/kernels/compile_target.py, flash256/inspect.py).

Toy kernels are compiled for sm_90a on the CPU (triton's bundled ptxas/cuobjdump; no GPU, no C
compiler). Triton's cache makes reruns fast.

Compiling needs a process where TRITON_INTERPRET was off when triton was imported: with it on
(conftest.py turns it on for CPU machines) even triton's own tl.sum is an interpreter function.
So the test_compile_* tests are skipped in such a process and test_clean_process_runs_compile_tests
runs them in a child pytest with TRITON_INTERPRET=0.
"""
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma
from triton.runtime.jit import JITFunction

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
INTERPRET = triton.knobs.runtime.interpret
compiles = pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1: run by test_clean_process_runs_compile_tests")

from flash256 import inspect as cli  # noqa: E402
from flash256.kernels.compile_target import (  # noqa: E402
    InspectCase, compile_gluon, compile_tl, count_opcodes, ex2_under_wgmma, gluon_desc_type, problems, sass_stats,
    tl_desc_type)


# ----------------------------------------------------------------------------- toy kernels
# conftest.py sets TRITON_INTERPRET=1 on CPU machines, which turns @triton.jit into interpreter
# functions that cannot be compiled: build compilable JITFunctions directly.
compilable_jit = JITFunction


@compilable_jit
def _dot_exp2(a_desc, b_desc, o_ptr, BM: tl.constexpr, BN: tl.constexpr):
    # host tensor descriptors -> TMA loads into shared memory -> wgmma on sm_90a
    c = tl.dot(a_desc.load([0, 0]), b_desc.load([0, 0]))
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    tl.store(o_ptr + rm[:, None] * BN + rn[None, :], tl.math.exp2(c))


@compilable_jit
def _big_tile(x_ptr, o_ptr, BM: tl.constexpr, BN: tl.constexpr):
    # 128x128 fp32 live across a row reduction: 512 values per thread with one warp -> spills
    offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    x = tl.load(x_ptr + offs)
    tl.store(o_ptr + offs, x / tl.sum(x, axis=1)[:, None])


@gluon.jit
def _gl_wgmma(a_desc, b_desc, o_ptr, BM: gl.constexpr, BN: gl.constexpr):
    a_s = gl.allocate_shared_memory(a_desc.dtype, a_desc.block_type.shape, a_desc.layout)
    b_s = gl.allocate_shared_memory(b_desc.dtype, b_desc.block_type.shape, b_desc.layout)
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(a_desc, [0, 0], bar, a_s)
    tma.async_copy_global_to_shared(b_desc, [0, 0], bar, b_s)
    mbarrier.wait(bar, 0)
    mbarrier.invalidate(bar)
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BN, 16])
    acc = warpgroup_mma(a_s, b_s, gl.zeros([BM, BN], gl.float32, acc_layout))
    rm = gl.arange(0, BM, layout=gl.SliceLayout(1, acc_layout))
    rn = gl.arange(0, BN, layout=gl.SliceLayout(0, acc_layout))
    gl.store(o_ptr + rm[:, None] * BN + rn[None, :], gl.exp2(acc))


def dot_case(bm=64, bn=64, bk=64):
    sig = {"a_desc": tl_desc_type("fp16", [bm, bk]), "b_desc": tl_desc_type("fp16", [bk, bn]), "o_ptr": "*fp32"}
    return InspectCase("toy_dot", f"{bm}x{bn}x{bk}", lambda: compile_tl(_dot_exp2, sig, {"BM": bm, "BN": bn}))


def spill_case():
    return InspectCase("toy_spill", "128x128 w1", lambda: compile_tl(
        _big_tile, {"x_ptr": "*fp32", "o_ptr": "*fp32"}, {"BM": 128, "BN": 128}, num_warps=1))


def gluon_case():
    layout = gl.NVMMASharedLayout.get_default_for([64, 64], gl.float16)
    desc = gluon_desc_type("fp16", [64, 64], layout)
    sig = {"a_desc": desc, "b_desc": desc, "o_ptr": "*fp32"}
    return InspectCase("toy_gluon", "64x64x64", lambda: compile_gluon(_gl_wgmma, sig, {"BM": 64, "BN": 64}))


# ----------------------------------------------------------------------------- compile_target

@compiles
def test_compile_tl_dot_on_sm90a_uses_hgmma_and_ex2():
    stats = sass_stats(dot_case().compile())
    # cuobjdump prints "sm_90a" or, in some CUDA releases, "sm_90" for the same cubin; HGMMA exists on sm_90a only
    assert stats["sass_arch"] in ("sm_90a", "sm_90")
    assert stats["registers"] > 0
    assert stats["hgmma"] > 0
    assert stats["mufu_ex2"] > 0
    assert stats["spill_bytes"] == 0 and stats["ldl"] == 0 and stats["stl"] == 0
    assert stats["shared"] >= 2 * 64 * 64 * 2  # A and B tiles in shared memory
    assert problems(stats, 90) == []


@compiles
def test_compile_gluon_wgmma_with_layout_descriptors():
    stats = sass_stats(gluon_case().compile())
    assert stats["sass_arch"] == "sm_90a"
    assert stats["hgmma"] > 0 and stats["mufu_ex2"] > 0
    assert stats["spill_bytes"] == 0


@compiles
def test_compile_spills_are_detected():
    stats = sass_stats(spill_case().compile())
    assert stats["spill_stores"] > 0 and stats["spill_loads"] > 0
    assert stats["stl"] > 0 and stats["ldl"] > 0
    assert any("spill" in p for p in problems(stats, 90))
    # a case may declare the spill it is known to need (InspectCase.spill_budget): exactly that much passes
    assert problems(stats, 90, spill_budget=stats["spill_bytes"]) == []
    assert any("known" in p for p in problems(stats, 90, spill_budget=stats["spill_bytes"] - 1))


@compiles
def test_compile_sm90_dq_mask_keeps_no_column_indices():
    """The d=256 dQ kernel's masked (diagonal) loop. With the mask comparing column indices, ptxas hoisted them
    out of the loop and spilled them (causal 28 B stored per iteration, non-causal 4 B); compared as immediates
    (sm90_masking.visible_keys) nothing is left non-causal, and causal only the shared-memory base outside
    the loops."""
    from flash256.kernels.sm90_bwd import DQ_D256, compile_dq
    plain, causal = (sass_stats(compile_dq(DQ_D256, c)) for c in (False, True))
    assert plain["spill_stores"] == 0 and plain["spill_loads"] == 0, plain
    assert causal["spill_stores"] <= 4 and causal["stl"] <= 1, causal


@compiles
def test_compile_serialised_wgmma_is_a_problem():
    """The GEMM-split dK/dV kernel at d=256 with 128-row Q/dO tiles keeps its accumulator, S^T and the
    previous tile's operand live (224 registers): ptxas then makes every wgmma wait for the previous one
    (C7512), which removes all overlap. The shipped 64-row tiles (176 registers) keep them asynchronous."""
    from dataclasses import replace

    from flash256.kernels.sm90_bwd import DKDV_D256, compile_dkdv
    wide = sass_stats(compile_dkdv(replace(DKDV_D256, block_m=128, qdo_stages=1, p_buffers=1), False))
    assert wide["wgmma_serialized"] and any("serialised" in p for p in problems(wide, 90)), wide
    shipped = sass_stats(compile_dkdv(DKDV_D256, True))
    assert not shipped["wgmma_serialized"] and shipped["spill_bytes"] == 0 and not problems(shipped, 90), shipped


@compiles
def test_compile_d128_backward_splits_dq_into_head_dim_halves():
    """The d=128 fused dK/dV kernel (dq_halves) gives each warpgroup an m64n64 dQ GEMM pair over half the head
    dims (8 more HGMMA.64x64x16 per warpgroup) instead of warpgroup 0's m64n128 pair (8 HGMMA.64x128x16), and
    spills nothing; without it the same kernel is the d=64 form (warpgroup 0's whole dQ)."""
    from collections import Counter
    from dataclasses import replace

    from flash256.kernels.compile_target import dump_sass
    from flash256.kernels.sm90_bwd import DKDV_D64, DKDV_D128, compile_dkdv
    assert DKDV_D128.dq_halves and not DKDV_D64.dq_halves

    def shapes(cfg):
        return Counter(re.findall(r"HGMMA\.(64x\d+x16)", dump_sass(compile_dkdv(cfg, False))))
    halves, whole = shapes(DKDV_D128), shapes(replace(DKDV_D128, dq_halves=False))
    assert halves == {"64x64x16": 48, "64x128x16": 16}, halves  # S^T, dP^T, dQ halves | dV, dK
    assert whole == {"64x64x16": 32, "64x128x16": 24}, whole  # S^T, dP^T | dV, dK, dQ
    assert sass_stats(compile_dkdv(DKDV_D128, True))["spill_bytes"] == 0


@compiles
def test_compile_global_load_waits_inside_a_wgmma_issue():
    """load_waits_in_wgmma_issue (inspect's LDG|MMA) counts loop instructions that wait on a global load while a
    wgmma group is being issued. The shipped d=256 dK/dV kernel has one: warpgroup 0 scales its lse loads between
    the Q/dO wait and S^T's wgmmas (NOTES.md, sixteenth session). Removing it (-lse in base 2) shortened the traced
    tile but not the sustained backward (seventeenth session), so it stays. The d=256 forward and dQ kernels, whose
    loops load nothing from global memory, have none."""
    from flash256.kernels.compile_target import dump_sass, load_waits_in_wgmma_issue
    from flash256.kernels.sm90_bwd import DKDV_D256, DQ_D256, compile_dkdv, compile_dq
    from flash256.kernels.sm90_fwd import CONFIGS, compile_sm90
    assert load_waits_in_wgmma_issue(dump_sass(compile_dkdv(DKDV_D256, False))) == 1
    assert load_waits_in_wgmma_issue(dump_sass(compile_dq(DQ_D256, False))) == 0
    assert load_waits_in_wgmma_issue(dump_sass(compile_sm90(CONFIGS[256], False))) == 0


@compiles
def test_compile_shared_memory_limit():
    # 128x512 and 512x256 fp16 tiles: 384 KiB of shared memory, more than sm_90's 227 KiB
    stats = sass_stats(dot_case(128, 256, 512).compile())
    assert stats["shared"] > 232448
    assert any("shared memory" in p for p in problems(stats, 90))


@compiles
def test_compile_signature_errors():
    with pytest.raises(ValueError, match="no signature type"):
        compile_tl(_big_tile, {"x_ptr": "*fp32"}, {"BM": 16, "BN": 16})
    with pytest.raises(ValueError, match="unknown parameters"):
        compile_tl(_big_tile, {"x_ptr": "*fp32", "o_ptr": "*fp32", "bogus": "i32"}, {"BM": 16, "BN": 16})
    with pytest.raises(ValueError, match="no value"):
        compile_tl(_big_tile, {"x_ptr": "*fp32", "o_ptr": "*fp32"}, {"BM": 16})


def test_count_opcodes_matches_whole_opcodes():
    sass = """
        /*0000*/                   FFMA R1, R2, R3, R4 ;
        /*0010*/              @!P0 FFMA.FTZ R1, R2, R3, R4 ;
        /*0020*/                   FFMA2 R2, R4, R6, R8 ;
        /*0030*/                   HFMA2.MMA R2, -RZ, RZ, 0, 0 ;
        /*0040*/                   MUFU.EX2 R5, R5 ;
        /*0050*/                   MUFU.RCP R5, R5 ;
        /*0060*/                   F2I.FTZ.U32.TRUNC.NTZ R0, R1 ;
        /*0070*/                   F2IP.BF16.F32.PACK_AB R0, R1, R2 ;
        /*0080*/                   FRND.FLOOR R0, R1 ;
        /*0090*/              @UP0 HGMMA.64x64x16.F32 R24, gdesc[UR4], R24 ;
        /*00a0*/                   STL.128 [R1+0x10], R4 ;
        /*00b0*/                   LDL R4, [R1+0x10] ;
        /*00c0*/                   LDS R4, [R1] ;
                                                                           /* 0x000fe20000000800 */
    """
    ops = count_opcodes(sass)
    assert ops["FFMA"] == 2 and ops["MUFU.EX2"] == 1 and ops["MUFU"] == 2
    assert ops["F2I"] == 1 and ops["FRND"] == 1 and ops["HGMMA"] == 1
    assert ops["STL"] == 1 and ops["LDL"] == 1


def test_ex2_under_wgmma_counts_exp2_between_partial_and_full_wait():
    sass = """
        /*0000*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*0010*/                   MUFU.EX2 R1, R1 ;
        /*0020*/                   MUFU.EX2 R2, R2 ;
        /*0030*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0040*/                   MUFU.EX2 R3, R3 ;
        /*0050*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*0060*/                   MUFU.EX2 R4, R4 ;
        /*0070*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0080*/                   MUFU.EX2 R5, R5 ;
    """
    assert ex2_under_wgmma(sass) == 2  # the first window; exp2 after a full wait overlaps nothing
    assert ex2_under_wgmma(sass.replace("0x1 ;", "0x0 ;")) == 0


# ----------------------------------------------------------------------------- CLI

@compiles
def test_compile_cli_rows_and_exit_status(monkeypatch, capsys, tmp_path):
    toy = types.ModuleType("flash256.kernels._toy_inspect")
    toy.inspect_cases = lambda arch: [dot_case(), spill_case()]
    monkeypatch.setitem(sys.modules, toy.__name__, toy)
    monkeypatch.setattr(cli, "KERNEL_MODULES", ("_toy_inspect", "_no_such_module"))

    rc = cli.main(["--json", "--arch", "sm90", "--sass-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 1 and cli.exit_status(rows) == 1
    assert [(r["kernel"], r["ok"]) for r in rows] == [("toy_dot", True), ("toy_spill", False)]
    assert rows[0]["arch"] == "sm_90a" and rows[0]["hgmma"] > 0
    for key in ("registers", "spill_stores", "spill_loads", "shared", "stack", "frnd_f2i", "ldl", "stl"):
        assert key in rows[0]
    assert "_no_such_module" in err and "FAIL toy_spill" in err
    assert len(list(tmp_path.glob("*.sass"))) == 2

    assert cli.main(["--kernel", "toy_dot"]) == 0  # the table path, spilling kernel filtered out
    out, _ = capsys.readouterr()
    assert "HGMMA" in out.splitlines()[0] and "toy_dot" in out


def test_interpreted_kernels_are_refused_clearly():
    from triton.runtime.interpreter import InterpretedFunction
    with pytest.raises(TypeError, match="TRITON_INTERPRET"):
        compile_tl(InterpretedFunction(_big_tile.fn), {"x_ptr": "*fp32", "o_ptr": "*fp32"}, {"BM": 16, "BN": 16})


def test_exit_status_on_import_error():
    assert cli.exit_status([{"ok": True}]) == 0
    assert cli.exit_status([{"ok": True}], ["flash256.kernels.x: SyntaxError"]) == 1


def test_parse_arch():
    assert [cli.parse_arch(a) for a in ("sm90", "sm_90a", "90", "SM_100")] == [90, 90, 90, 100]


def test_clean_process_runs_compile_tests():
    if not INTERPRET:
        pytest.skip("the test_compile_* tests run in this process")
    env = dict(os.environ, TRITON_INTERPRET="0")  # conftest only setdefault()s it
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_compile_",
                           __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]


def test_shipped_kernels_fit_sm90():
    """The real CLI over every module in KERNEL_MODULES: each shipped configuration compiles for sm_90a
    without spills and within shared memory."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)  # interpreter kernels cannot be compiled
    proc = subprocess.run([sys.executable, "-m", "flash256.inspect", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert {r["kernel"].split("_")[0] for r in rows} >= {"portable", "sm90"}, proc.stderr[-4000:]
    bad = [(r["kernel"], r["config"], r["problems"]) for r in rows if not r["ok"]]
    assert not bad, f"{bad}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, proc.stderr[-4000:]
    # Each sm90 configuration's shared-memory accounting (smem=...B in its label) is what the kernel allocates:
    # the compiled kernel holds that much plus at most 1 KB the compiler adds (scheduler slots, alignment).
    accounted = [(r["config"], r["shared"], int(re.search(r"smem=(\d+)B", r["config"]).group(1)))
                 for r in rows if r["kernel"].startswith("sm90")]
    assert len(accounted) > 40 and all(0 <= shared - smem <= 1024 for _, shared, smem in accounted), \
        [(c[:60], shared, smem) for c, shared, smem in accounted if not 0 <= shared - smem <= 1024]
    # The d=256 forward's softmax overlaps its own PV GEMM (the default dynamic scheduler, plain and causal, and
    # non-causal varlen): ptxas once moved the wait above it (0 exp2 under the GEMM; NOTES.md), and the
    # persistent loop kept 9 while its Q/O shared-memory addresses sat in registers through the key loop.
    # The shipped code has 15-16 of 34; 12 leaves ptxas some room.
    fwd256 = [r for r in rows if r["kernel"] == "sm90_fwd" and r["config"].startswith("d256")
              and r["config"].endswith(("scheduler=dynamic", "causal=False scheduler=single varlen"))]
    assert len(fwd256) == 3 and all(r["ex2_under_wgmma"] >= 12 for r in fwd256), \
        [(r["config"], r["ex2_under_wgmma"]) for r in fwd256]
