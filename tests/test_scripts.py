"""The device-call helpers in scripts/ stay in step with the kernel sources they patch: a stale patch
would only fail on the GPU, inside a device call."""
import importlib
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def _script(name):
    sys.path.insert(0, str(SCRIPTS))  # the probes import their sibling variants.py
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


def test_fwd_probe_patches_apply_to_the_shipped_forward():
    probe = _script("fwd_probe")
    assert {"hot", "noload", "q0"} <= set(probe.PATCHES)
    for name, pairs in probe.PATCHES.items():
        for old, new in pairs:
            assert probe.SOURCE.count(old) >= 1, (name, old[:120])
            assert old != new, name


def test_fwd_probe_patched_kernels_compile():
    """Every patched forward (fwd_probe's PATCHES and the diffs stored in scripts/patches/) still applies and
    compiles for sm_90a (every head dim; d=256 causal, with a window too): a patch whose replacement names something
    the kernel no longer has fails here, not on the GPU (a constexpr branch is traced only where it is taken, hence
    the window). In a child process without the interpreter."""
    code = textwrap.dedent("""
        import pathlib, sys; sys.path.insert(0, "scripts"); import fwd_probe
        stored = [f"{p.stem}={p}" for p in sorted(pathlib.Path("scripts/patches").glob("sm90_fwd_*.patch"))]
        for name in list(fwd_probe.PATCHES) + stored:
            module = fwd_probe.module_for(name)
            builds = [(cfg, False, False) for cfg in module.CONFIGS.values()]
            for cfg, causal, window in builds + [(module.CONFIG_D256, True, False), (module.CONFIG_D256, True, True)]:
                module.compile_sm90(cfg, causal, left_bounded=window)
            print(name.partition("=")[0], "ok")
        """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS.parent, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stored = [p.stem for p in sorted((SCRIPTS / "patches").glob("sm90_fwd_*.patch"))]
    names = list(_script("fwd_probe").PATCHES) + stored
    assert proc.stdout.split() == [w for name in names for w in (name, "ok")], proc.stdout


def test_l2_stream_probe_builds_for_sm90():
    """The L2 streaming probe's kernel compiles for sm_90a and issues its tile loads through TMA into a ring that
    fits shared memory (2 and 3 stages of 64 KB)."""
    code = textwrap.dedent("""
        import sys; sys.path.insert(0, "scripts"); import l2_stream_probe
        from flash256.kernels.compile_target import dump_sass
        for stages in (2, 3):
            compiled = l2_stream_probe.compile_sm90(stages)
            print(stages, compiled.metadata.shared, "UTMALDG" in dump_sass(compiled))
        """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS.parent, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert [row[0] for row in rows] == ["2", "3"] and all(row[2] == "True" for row in rows), proc.stdout
    for stages, shared, _ in rows:
        assert int(stages) * 2 * 64 * 256 * 2 <= int(shared) <= 232448, rows


def test_multicast_check_builds_a_multicast_tma_for_sm90():
    """The multicast probe's inline PTX gets through ptxas as a multicast TMA load, a remote mbarrier arrive and
    cluster barriers, and its one allocation sits where the asm's offsets assume (compiled_kernel asserts that)."""
    code = textwrap.dedent("""
        import sys; sys.path.insert(0, "scripts"); import multicast_check
        from flash256.kernels.compile_target import dump_sass
        sass = dump_sass(multicast_check.compiled_kernel())
        print(" ".join(op for op in ("UTMALDG.2D.MULTICAST", "SYNCS.ARRIVE.TRANS64.RED", "UCGABAR_ARV",
                                     "UCGABAR_WAIT") if op in sass))
        """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS.parent, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.split() == ["UTMALDG.2D.MULTICAST", "SYNCS.ARRIVE.TRANS64.RED", "UCGABAR_ARV",
                                   "UCGABAR_WAIT"], proc.stdout



def test_interleaved_rounds_start_one_variant_later():
    """The probes' rounds rotate the variant order (an A/A/A run read the third slot of a round ~3% slow at 1k), so
    over as many rounds as variants each one runs once in every slot."""
    rotated = _script("variants").rotated
    rounds = [rotated(["base", "a", "b"], r) for r in range(3)]
    assert rounds == [["base", "a", "b"], ["a", "b", "base"], ["b", "base", "a"]]
    assert all(sorted(slot) == ["a", "b", "base"] for slot in zip(*rounds))
    assert rotated(["base", "a"], 5) == ["a", "base"]

def test_bwd_probe_applies_backward_patches(tmp_path):
    """bwd_probe takes a variant as a unified diff against sm90_bwd.py, or against another such diff named on its
    first line: diffs made here apply, and so does every one stored under scripts/patches/ for a coming device call
    (measured ones are removed; NOTES.md has what each measured)."""
    import difflib
    probe = _script("bwd_probe")
    old = probe.SOURCE.splitlines(keepends=True)
    new = [line.replace("num_warps=4", "num_warps=8") for line in old]
    diff = tmp_path / "variant.patch"
    diff.write_text("".join(difflib.unified_diff(old, new, "a/flash256/kernels/sm90_bwd.py",
                                                 "b/flash256/kernels/sm90_bwd.py")))
    assert probe.patched_source(diff) == "".join(new) != probe.SOURCE
    # a variant of that variant, stored as its difference on top of it
    newer = [line.replace("num_warps=8", "num_warps=16") for line in new]
    delta = tmp_path / "variant_wider.patch"
    delta.write_text("on top of: variant.patch\n" + "".join(difflib.unified_diff(
        new, newer, "a/flash256/kernels/sm90_bwd.py", "b/flash256/kernels/sm90_bwd.py")))
    assert _script("variants").patch_chain(delta) == [diff.resolve(), delta.resolve()]
    assert probe.patched_source(delta) == "".join(newer)
    for patch in sorted((SCRIPTS / "patches").glob("sm90_bwd_*.patch")):
        patched = probe.patched_source(patch)
        assert patched != probe.SOURCE and "def sm90_backward(" in patched, patch
        compile(patched, str(patch), "exec")


def test_bwd_probe_times_only_variants_whose_check_finished(monkeypatch, capsys):
    """Each variant's correctness check runs in a child process, all at once, within a time limit: one that hangs
    is killed, and it and one that crashes are left out of the timing (and said so); one that finishes with wrong
    gradients is still timed (a probe)."""
    import subprocess
    probe = _script("bwd_probe")
    started, killed = [], []

    class FakeChild:
        def __init__(self, command, **kwargs):
            started.append(command)
            self.name = command[-1]
            self.returncode = 1 if self.name == "crashes" else 0

        def communicate(self, timeout=None):
            if self.name == "hangs" and timeout is not None:
                raise subprocess.TimeoutExpired(self.name, timeout)
            if self.name == "crashes":
                return "", "Traceback ...\nRuntimeError: boom"
            return f"{self.name}: FAIL dq max err 0.3", ""

        def kill(self):
            killed.append(self.name)

    monkeypatch.setattr(probe.subprocess, "Popen", FakeChild)
    assert probe.isolated_checks(["wrong=probe.patch", "hangs", "crashes"]) == ["wrong=probe.patch"]
    assert [c[-2:] for c in started] == [["--check", v] for v in ("wrong=probe.patch", "hangs", "crashes")]
    assert killed == ["hangs"]
    out = capsys.readouterr().out
    assert "wrong=probe.patch: FAIL" in out and "hangs: HANG" in out and "crashes: crashed" in out
    assert "RuntimeError: boom" in out


def test_bwd_probe_clocks_samples_every_variant_and_cudnn(monkeypatch, capsys):
    """--clocks: after a shape's timing rounds, each variant (dispatched first) and cuDNN run for the clock sample,
    and a second table gives the SM clock and power of each."""
    import types
    probe = _script("bwd_probe")
    dispatched, sampled = [], []
    monkeypatch.setattr(probe.torch.cuda, "get_device_name", lambda: "fake GPU")
    monkeypatch.setattr(probe, "isolated_checks", lambda variants: variants)
    monkeypatch.setattr(probe, "module_for", lambda variant: variant)
    monkeypatch.setattr(probe, "use", dispatched.append)
    monkeypatch.setattr(probe, "backward_call", lambda d, causal, seqlen, cudnn: "cudnn" if cudnn else "ours")
    monkeypatch.setattr(probe, "Timer", lambda device: types.SimpleNamespace(
        measure=lambda fn, warmup, rep: types.SimpleNamespace(median_ms=1.0)))

    def sample(fn):
        sampled.append((dispatched[-1], fn))
        return f"{1500 + len(sampled)} MHz 690 W"

    monkeypatch.setattr(probe, "sample_clocks", sample)
    monkeypatch.setattr(probe, "CASES", [(256, True, 4096)])
    monkeypatch.setattr(probe, "CLOCKS", True)
    probe.main(["base", "x=x.patch"])
    assert sampled == [("base", "ours"), ("x=x.patch", "ours"), ("x=x.patch", "cudnn")]
    out = capsys.readouterr().out
    assert "| 256 | 1 | 4096 | 1501 MHz 690 W | 1502 MHz 690 W | 1503 MHz 690 W |" in out


def test_bwd_probe_options_in_any_order_and_never_as_a_variant(monkeypatch):
    """Timing options come before the variants in any order; an option after a variant is an error (it used to be
    taken for a variant named "--clocks" and run as the shipped kernel)."""
    probe = _script("bwd_probe")
    monkeypatch.setattr(probe, "CASES", [(256, False, 1024), (128, True, 2048), (64, False, 2048)])
    monkeypatch.setattr(probe, "CLOCKS", False)
    assert probe.timing_args(["--clocks", "--dims", "128,64", "--seqlens", "2048", "x=y.patch"]) == ["x=y.patch"]
    assert probe.CLOCKS and probe.CASES == [(128, True, 2048), (64, False, 2048)]
    assert probe.timing_args([]) == ["base"]
    for argv in (["base", "--clocks"], ["--clock", "base"]):
        with pytest.raises(SystemExit, match="bwd_probe.py: (options go before|unknown option)"):
            probe.timing_args(argv)


def test_ncu_kernels_one_row_per_kernel():
    """ncu_kernels.py reads each kernel's section of a details page into its own row (a kernel without a metric
    leaves that cell empty, never the previous kernel's value), with its grid and block from the header and
    durations and shared memory converted from the unit the page prints."""
    tool = _script("ncu_kernels")
    page = textwrap.dedent("""\
        [523] python3.12@127.0.0.1
          sm90_attn_bwd_dkdv_kernel (64, 64, 1)x(384, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
            SM Frequency                    Ghz          1.87
            Elapsed Cycles                cycle    17,441,817
            Duration                         ms          9.28
            SM: Pipe Tensor Cycles Active                                                       %        58.78
            Issue Slots Busy                 %        20.95
            l1tex__data_pipe_lsu_wavefronts_mem_shared.sum.pct_of_peak_sustained_elapsed      %         75.54
            Registers Per Thread             register/thread             168
            Dynamic Shared Memory Per Block       Kbyte/block          229.38
          cudnn_generated_sdpa_bprop (132, 1, 1)x(384, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
            SM Frequency                    Ghz          1.65
            Duration                         us        850.00
            Dynamic Shared Memory Per Block        byte/block          512
        """)
    rows = tool.kernels(page)
    assert [name for name, _ in rows] == ["sm90_attn_bwd_dkdv_kernel", "cudnn_generated_sdpa_bprop"]
    assert rows[0][1] == {"grid": 4096, "threads": 384, "GHz": 1.87, "Mcycles": 17.441817, "ms": 9.28,
                          "tensor %": 58.78, "issue %": 20.95, "smem pipe %": 75.54, "regs": 168,
                          "smem KB": 229.38}
    assert rows[1][1] == {"grid": 132, "threads": 384, "GHz": 1.65, "ms": 0.85, "smem KB": 0.512}
    assert "| cudnn_generated_sdpa_bprop | 132 | 384 | 0.85 | 1.65 |  |" in tool.table(rows)


def test_ncu_source_top_shared_wavefronts_by_instruction_kind():
    """--smem sums ncu's per-instruction shared-memory wavefronts (and their ideal) by opcode and first two
    modifiers, predicated or not; instructions without shared-memory traffic are left out."""
    tool = _script("ncu_source_top")
    page = textwrap.dedent("""\
        "Kernel Name","k",
        "Address","Source","Instructions Executed","L1 Wavefronts Shared","L1 Wavefronts Shared Ideal"
        "0x10","      STS.64 [R7+UR4+0x30000], R24","128","512","256"
        "0x20","  @P0 STS.64 [R6+UR4+0x30400], R26","128","512","256"
        "0x30","      HGMMA.64x64x16.F32.BF16 R56, gdesc[UR52], RZ","16","128","128"
        "0x40","      FFMA R1, R2, R3, R4","1,000","0","0"
        """).splitlines()
    assert tool.shared_wavefronts(page) == {"STS.64": [1024, 512, 256], "HGMMA.64x64x16.F32": [128, 128, 16]}


def test_sass_fingerprint_compare_names_the_changed_builds(tmp_path, monkeypatch, capsys):
    """`compare` exits 1 and names every build whose SASS hash moved (or that appeared or went); 0 when all match."""
    tool = _script("sass_fingerprint")
    saved = tmp_path / "before.json"
    monkeypatch.setattr(tool, "fingerprints", lambda: {"fwd a": "1", "fwd b": "2", "bwd c": "3"})
    assert tool.main(["save", str(saved)]) == 0
    assert tool.main(["compare", str(saved)]) == 0
    assert "3 builds identical, 0 changed" in capsys.readouterr().out
    monkeypatch.setattr(tool, "fingerprints", lambda: {"fwd a": "1", "fwd b": "9", "bwd d": "4"})
    assert tool.main(["compare", str(saved)]) == 1
    out = capsys.readouterr().out
    assert "changed: fwd b" in out and "only before: bwd c" in out and "only now: bwd d" in out
    assert "1 builds identical, 1 changed" in out


def test_bwd_trace_summary_reads_the_stamps_as_written():
    """bwd_trace's per-tile figures from a synthetic trace with known latency (300), need (200 after the issue),
    period (1000) and warpgroup steps: tile 0 and the tiles past each CTA's count are left out, and warpgroup 0's
    four steps add up to its period."""
    import numpy as np
    trace = np.full((3, 6, 10), -1, np.int64)
    for cta, n in enumerate((5, 3, 1)):
        trace[cta, -1, :4] = (cta, 0, n, 0)
        for t in range(n):
            b = 1000 * t
            trace[cta, t] = (b, b + 300, b + 200, b + 250, b + 300, b + 500, b + 700, b + 310, b + 600, b + 800)
    rows, tiles, _header = _script("bwd_trace").summarize(trace)
    assert tiles == 4 + 2
    means = {name: float(np.nanmean(values)) for name, values in rows.items()}
    assert {name: means[name] for name in list(means)[:5]} == {
        "load latency (landed - issued)": 300, "slack, warpgroup 0 (needed - issued)": 200,
        "stall, warpgroup 0 (landed - needed, >= 0)": 100, "stall, warpgroup 1": 50, "tile period (warpgroup 0)": 1000}
    wg0 = [means[name] for name in means if name.startswith("wg0:")]
    assert wg0 == [100, 200, 200, 500] and sum(wg0) == means["tile period (warpgroup 0)"]
    assert means["wg1 dS done - wg0 P^T shared"] == 100



def test_bwd_trace_keysplit_summary_splits_each_period_into_its_steps():
    """The key-split figures from a synthetic trace (fields: issued, landed, need0, need1, got0, staged0, dq_done,
    got1, staged1, free1; period 1000): each warpgroup's steps add up to its period, tile 0 and tiles past a CTA's
    count are left out, and warpgroup 1's lead reads as the difference of the two staging stamps."""
    import numpy as np
    trace = np.full((2, 5, 10), -1, np.int64)
    for cta, n in enumerate((4, 2)):
        trace[cta, -1, :4] = (cta, 0, n, 0)
        for t in range(n):
            b = 1000 * t
            trace[cta, t] = (b, -1, b + 100, b, b + 150, b + 600, b + 900, b + 20, b + 420, b + 220)
    rows, tiles, _header = _script("bwd_trace").summarize_keysplit(trace)
    assert tiles == 3 + 1
    means = {name: float(np.nanmean(values)) for name, values in rows.items()}
    assert means["tile period (warpgroup 0)"] == means["tile period (warpgroup 1)"] == 1000
    wg0 = [means[name] for name in means if name.startswith("wg0:")]
    wg1 = [means[name] for name in means if name.startswith("wg1:")]
    assert wg0 == [50, 450, 300, 200] and sum(wg0) == 1000
    assert wg1 == [20, 200, 200, 580] and sum(wg1) == 1000
    assert means["wg1 ahead of wg0 (wg0 staged - wg1 staged)"] == 180

def test_sass_control_reads_scoreboards_and_finds_a_load_waited_on_before_a_wgmma():
    """sass_control decodes the control bits of real sm_90a encodings (lines of the shipped d=256 dK/dV kernel's
    warpgroup-0 loop in the sixteenth session: a global load setting scoreboard 5 and an FMUL waiting on it) and
    finds that wait among the loop's wgmma issues, inside the issue of S^T's group."""
    tool = _script("sass_control")
    pad = " " * 40
    lines = (
        ("78b0", "@!P4 LDG.E R10, desc[UR22][R16.64]", "0x00000016100ac981", "0x000362000c1e1900"),
        ("7d80", "HGMMA.64x256x16.F32.BF16 R24, R196, gdesc[UR4].tnspB, R24, gsb0", "0x43e00004c4187df0",
         "0x000fe20008001818"),
        ("7e00", "WARPGROUP.ARRIVE", "0x00000000000079c5", "0x000fe20000000000"),
        ("7e40", "FMUL R214, R214, 1.4426950216293334961", "0x3fb8aa3bd6d67820", "0x020fe20000400000"),
        ("8290", "HGMMA.64x64x16.F32.BF16 R152, gdesc[UR48], R152, gsb0", "0x00e00000309879f0",
         "0x000fe60008001898"),
        ("8a30", "@P1 BRA 0x74f0", "0xffffffe800ac1947", "0x000fea000383ffff"))
    listing = "\n".join(f"        /*{offset}*/  {text} ;  /* {low} */\n{pad}/* {high} */"
                        for offset, text, low, high in lines)
    ldg, hgmma, arrive, fmul, hgmma_s, branch = instructions = tool.parse_instructions(listing)
    assert (ldg.stall, ldg.write_sb, ldg.read_sb, ldg.waits) == (1, 5, 1, frozenset())
    assert (hgmma.write_sb, hgmma.waits) == (tool.NO_SCOREBOARD, frozenset())
    assert (fmul.write_sb, fmul.waits) == (tool.NO_SCOREBOARD, frozenset({5}))
    assert tool.describe(ldg).startswith("078b0 S1  W5 R1 wait[ ") and "wait[5" in tool.describe(fmul)
    [body] = tool.loops(instructions, min_length=4)
    assert tool.load_waits(body) == [hgmma, fmul, hgmma_s]
    # the FMUL waits for the load while S^T's wgmma group is being issued (after the ARRIVE, before its last wgmma)
    assert tool.waits_in_wgmma_issue(body) == [(fmul, {"LDG"})]


def test_fwd_trace_builds_its_stamped_kernel_for_sm90():
    """fwd_trace's edits each find their one place in the shipped sm90_fwd.py, the stamped kernel compiles for
    sm_90a with no spills under both schedulers it traces, and the host side hands the kernel a (tiles, 12) int64
    trace right after the tile counter (launch replaced, CPU tensors): a kernel change that moves a stamped line
    fails here, not in a device call."""
    code = textwrap.dedent("""
        import sys; sys.path.insert(0, "scripts"); import fwd_trace, torch
        from flash256.kernels.compile_target import dump_sass, sass_stats
        module = fwd_trace.traced_module()
        for scheduler in ("single", "dynamic"):
            compiled = module.compile_sm90(module.CONFIGS[256], False, scheduler)
            sass = dump_sass(compiled)
            stats = sass_stats(compiled, sass)
            print(stats["spill_stores"], stats["spill_loads"], sass.count("SR_GLOBALTIMERLO"))
        launches = []
        class Launcher:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: launches.append((grid, args))
        module.sm90_attn_fwd_kernel = Launcher()
        q = torch.randn(2, 256, 8, 256, dtype=torch.bfloat16)
        module.sm90_forward(q, q, q, 0.0625, False, scheduler="single")
        (grid, args), = launches
        trace = args[10]
        print(grid[0], *trace.shape, trace.dtype, trace is module.last_trace, args[9].dtype)
        """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS.parent, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    *builds, host = proc.stdout.splitlines()
    assert len(builds) == 2
    for build in builds:
        spill_stores, spill_loads, timer_reads = map(int, build.split())
        assert (spill_stores, spill_loads) == (0, 0)
        assert timer_reads == 2 + 4 * 2  # the producer's start and loads issued, four stamps per consumer warpgroup
    # 2 x 256 rows of 8 heads: 2 * 2 * 8 tiles of 128 rows, one CTA each; args[9] is the tile counter
    assert host.split() == ["32", "32", "12", "torch.int64", "True", "torch.int32"], host


def test_fwd_trace_summary_reads_the_stamps_as_written():
    """fwd_trace's phases from a synthetic trace: two SMs, two CTAs each, with known Q wait (2 us), first block
    (1 us), loop (27 us over 15 blocks), epilogue (2 / 2.5 us) and a 7 us gap before each SM's second CTA."""
    import numpy as np
    trace = np.zeros((4, 12), np.int64)
    for cta in range(4):
        s = 1000 + (cta // 2) * 40000
        trace[cta, :11] = (s, cta % 2, s + 500, s + 2000, s + 3000, s + 30000, s + 32000,
                           s + 2100, s + 3100, s + 30500, s + 33000)
    phases = {name: float(values.mean()) for name, values in _script("fwd_trace").summarize(trace, 16).items()}
    assert phases["launch gap (start - previous tile's end, same SM)"] == 7.0
    assert phases["previous end -> Q landed, wg0 (same SM)"] == 9.0  # the gap, then the second CTA's Q wait
    assert phases["Q wait, wg0 (start -> Q landed)"] == 2.0
    assert phases["first block, wg0 (Q landed -> S_0 done)"] == 1.0
    assert phases["key loop per block, wg0"] == 1.8
    assert phases["epilogue, wg1"] == 2.5
    assert phases["tile total (start -> last epilogue done)"] == 33.0
