"""exp2 emulation building blocks (flash256/ex2.py): the bit algorithm, its accuracy per degree,
the tl device functions in Triton's CPU interpreter, and SASS instruction counts.

The SASS tests (test_compile_*) need a process where TRITON_INTERPRET was off when triton was
imported; in an interpreter process test_clean_process_runs_compile_tests runs them in a child
pytest with TRITON_INTERPRET=0 (as tests/test_inspect.py does).
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma

from flash256 import ex2

ROOT = Path(__file__).resolve().parents[1]
INTERPRET = triton.knobs.runtime.interpret
compiles = pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1: run by test_clean_process_runs_compile_tests")
interprets = pytest.mark.skipif(not INTERPRET, reason="runs the tl functions in the CPU interpreter")

SPLITS = ("floor", "nearest")
SMALLEST_NORMAL = 2.0 ** -126


def _dense_x():
    """Every 2^-10 over [-126, 0], every fp32 of one period at -64 (all f for that j), 2^18 steps over
    [-1, 0] and a few positive values (the lazy-rescale path may pass up to ~8)."""
    return torch.cat([
        torch.arange(-126 * 1024, 1, dtype=torch.float64) / 1024,
        torch.linspace(-64.5, -63.0, 3 * (1 << 16) + 1, dtype=torch.float64),
        -torch.arange(0, (1 << 18) + 1, dtype=torch.float64) / (1 << 18),
        torch.linspace(0.0, 8.0, 4097, dtype=torch.float64),
    ]).float()


# ----------------------------------------------------------------------------- PyTorch mirror

@pytest.mark.parametrize("fused", [True, False], ids=["fma", "unfused"])
@pytest.mark.parametrize("split", SPLITS)
def test_max_relative_error_per_degree(split, fused):
    x = _dense_x()
    for degree in ex2.DEGREES:
        err = ex2.ex2_reference_rel_error(x, ex2.ex2_emulated(x, degree, split, fused=fused)).max().item()
        bound = ex2.MAX_REL_ERR[(split, degree)]
        assert err <= bound, (split, degree, err, bound)
        assert err > 0.8 * bound, (split, degree, err, bound)  # the table is tight, not a typo


def test_fa4_published_degree3_error():
    """FA4's floor-split degree-3 coefficients: max relative error 8.76e-5 (fp32 arithmetic)."""
    x = _dense_x()
    err = ex2.ex2_reference_rel_error(x, ex2.ex2_emulated(x, 3, "floor")).max().item()
    assert 8.7e-5 < err < 8.8e-5
    assert ex2.COEFFS[("floor", 3)] == ex2.FA4_DEGREE3


@pytest.mark.parametrize("split", SPLITS)
def test_split_parts(split):
    x = torch.cat([_dense_x(), torch.tensor([-126.5, -125.5, -0.5, 0.5, 1.5, -1e-30, -1e-45])])
    xc, r, j, f = ex2.split_parts(x, split)
    x64 = xc.double()
    want = torch.floor(x64) if split == "floor" else torch.round(x64)  # torch.round: half to even
    assert torch.equal(j.double(), want)
    exact = j.double() + f.double() == x64
    if split == "nearest":
        assert bool(exact.all())  # |x| < 0.5 gives j = 0, f = x
    else:
        # floor: f = x - j is exact except for x in (-0.5, 0) finer than 2^-24, where j = -1 and
        # f = RN(1 + x) (1.0 for |x| < 2^-25); the result then is p(f)/2, within the error bound
        assert bool((exact | ((x64 > -0.5) & (x64 < 0))).all())
        assert not bool(exact[x64 == -1e-30].any())
    lo, hi = (0.0, 1.0) if split == "floor" else (-0.5, 0.5)
    assert bool(((f >= lo) & (f <= hi)).all())
    assert split != "floor" or bool(((f < 1) | ((x64 > -0.5) & (x64 < 0))).all())
    assert torch.equal(r.view(torch.int32), ex2.MAGIC_BITS + j.to(torch.int32))  # j in r's low bits


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("degree", ex2.DEGREES)
def test_special_values(split, degree):
    e = lambda v: ex2.ex2_emulated(torch.tensor(v, dtype=torch.float32), degree, split)  # noqa: E731
    below = e([-float("inf"), -1e30, -200.0, -127.5, -127.0])
    assert torch.equal(below.view(torch.int32), torch.zeros(5, dtype=torch.int32))  # exactly +0.0
    assert torch.equal(e([0.0, -0.0]), torch.ones(2))
    tiny = e([-1e-45, -1e-38, -1e-30, -2.0 ** -26])
    if split == "nearest":
        assert torch.equal(tiny, torch.ones(4))  # j = 0, f = x, p(f) rounds to 1
    else:  # j = -1, f = RN(1 + x) = 1: p(1) / 2
        c = ex2.COEFFS[("floor", degree)]
        assert bool((tiny == tiny[0]).all()) and abs(tiny[0].item() - (1 + sum(c)) / 2) < 1e-7
        assert abs(tiny[0].item() - 1) <= ex2.MAX_REL_ERR[(split, degree)]
    for k in range(-126, 9):  # integers are exact: f = 0, p(0) = 1
        assert e([float(k)]).item() == 2.0 ** k
    tiny = e([-1e-7, -1e-5, -1e-3])
    ref = torch.exp2(torch.tensor([-1e-7, -1e-5, -1e-3], dtype=torch.float64))
    assert bool((((tiny.double() - ref) / ref).abs() <= ex2.MAX_REL_ERR[(split, degree)]).all())


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("degree", ex2.DEGREES)
def test_low_edge(split, degree):
    """(-127, -126): non-negative bit patterns below 2^-126 (hardware ex2.approx.ftz gives 0 there),
    continuous and non-decreasing into the normal range."""
    x = torch.linspace(-127.5, -125.0, 2561, dtype=torch.float64).float()
    y = ex2.ex2_emulated(x, degree, split)
    assert bool((y.view(torch.int32) >= 0).all())  # never a negative or NaN bit pattern
    sub = (x > -127) & (x < -126)
    assert bool((y[sub] < SMALLEST_NORMAL).all()) and bool((y[x <= -127] == 0).all())
    assert bool((y[1:] >= y[:-1]).all())
    normal = x >= -126
    assert ex2.ex2_reference_rel_error(x[normal], y[normal]).max().item() <= ex2.MAX_REL_ERR[(split, degree)]


def _neighbours(bounds, n: int) -> torch.Tensor:
    """(len(bounds), 2n+1): the 2n+1 consecutive fp32 values centred on each bound."""
    b = torch.tensor(bounds, dtype=torch.float32)
    down, up = [b], [b]
    for _ in range(n):
        down.append(torch.nextafter(down[-1], torch.tensor(-math.inf)))
        up.append(torch.nextafter(up[-1], torch.tensor(math.inf)))
    return torch.stack(down[::-1] + up[1:], dim=1)


@pytest.mark.parametrize("fused", [True, False], ids=["fma", "unfused"])
@pytest.mark.parametrize("split", SPLITS)
def test_monotonic_at_split_boundaries(split, fused):
    """Consecutive fp32 values around every point where j changes (integers for floor,
    half-integers for nearest) and every integer: no jump down where the split switches.

    Where consecutive x are finer than the result's ulp (|x| < 1: x's ulp <= 2^-24 moves 2^x by
    less than one ulp) Horner rounding may wiggle by one ulp (seen at -0.5 with "nearest"), so
    there the check allows 1 ulp; elsewhere the results never decrease."""
    bounds = [float(k) for k in range(-126, 1)] + [k + 0.5 for k in range(-126, 0)]
    xs = _neighbours(bounds, 64)
    assert bool((xs[:, 1:] > xs[:, :-1]).all())
    coarse = torch.tensor([abs(b) >= 1 for b in bounds])
    for degree in ex2.DEGREES:
        y = ex2.ex2_emulated(xs.reshape(-1), degree, split, fused=fused).view(xs.shape)
        assert bool((y[coarse, 1:] >= y[coarse, :-1]).all()), (split, degree)
        one_ulp_down = torch.nextafter(y[:, :-1], torch.tensor(-math.inf))
        assert bool((y[:, 1:] >= one_ulp_down).all()), (split, degree)


def test_fma_emulation_is_correctly_rounded():
    """_fma_f32 against exact rational arithmetic, including double-rounding midpoint cases."""
    from fractions import Fraction
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(3000, generator=g) - 0.5).float()
    b = (torch.rand(3000, generator=g) * 2).float()
    c = (torch.rand(3000, generator=g) - 0.5).float()
    # double rounding: a*b + c = an fp32 midpoint +- 2^-70, which float64 rounds onto the midpoint
    #   (1 + 2^-23)(1 - 2^-24) + 2^-47 (1 + 2^-23) = 1 + 2^-24 + 2^-70        -> 1 + 2^-23
    #   (1 + 2^-22)(1 - 2^-24) + 2^-46 (1 - 2^-24) = 1 + 3 * 2^-24 - 2^-70    -> 1 + 2^-23
    a2 = torch.tensor([1 + 2 ** -23, 1 + 2 ** -22], dtype=torch.float32)
    b2 = torch.tensor([1 - 2 ** -24, 1 - 2 ** -24], dtype=torch.float32)
    c2 = torch.tensor([2 ** -47 * (1 + 2 ** -23), 2 ** -46 * (1 - 2 ** -24)], dtype=torch.float32)
    naive = (a2.double() * b2.double() + c2.double()).float()
    assert torch.equal(ex2._fma_f32(a2, b2, c2), torch.full((2, ), 1 + 2 ** -23))
    assert not bool((naive == 1 + 2 ** -23).any())  # these really are double-rounding cases
    a, b, c = torch.cat([a, a2]), torch.cat([b, b2]), torch.cat([c, c2])
    got = ex2._fma_f32(a, b, c)
    for ai, bi, ci, gi in zip(a.tolist(), b.tolist(), c.tolist(), got.tolist()):
        exact = Fraction(ai) * Fraction(bi) + Fraction(ci)
        lo = torch.tensor([float(exact)], dtype=torch.float64).float()  # candidate, then compare neighbours
        cands = [lo, torch.nextafter(lo, torch.tensor([math.inf])), torch.nextafter(lo, torch.tensor([-math.inf]))]
        best = min(cands, key=lambda v: (abs(Fraction(v.item()) - exact),
                                         v.view(torch.int32).item() & 1))  # ties to even
        assert gi == best.item(), (ai, bi, ci)


def test_fit_reproduces_lp_optimum():
    """ex2_fit.minimax_relative (step 1 of the tables) gives the documented continuous optima."""
    pytest.importorskip("scipy")
    from flash256 import ex2_fit
    c, err = ex2_fit.minimax_relative(3, "floor")
    assert abs(err - 8.559e-5) < 0.005e-5
    c, err = ex2_fit.minimax_relative(3, "nearest")
    assert abs(err - 1.0129e-4) < 0.0005e-4
    assert max(abs(u - v) for u, v in zip(c, ex2.COEFFS[("nearest", 3)])) < 1e-6  # table = LP + ulp search


# ----------------------------------------------------------------------------- tl functions, interpreter

@triton.jit
def _poly_kernel(x_ptr, o_ptr, N: tl.constexpr, DEGREE: tl.constexpr, SPLIT: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(o_ptr + offs, ex2.exp2_poly(tl.load(x_ptr + offs), DEGREE, SPLIT))


@triton.jit
def _split_kernel(x_ptr, o_ptr, M: tl.constexpr, N: tl.constexpr, POLY_EIGHTHS: tl.constexpr,
                  DEGREE: tl.constexpr):
    offs = tl.arange(0, M)[:, None] * N + tl.arange(0, N)[None, :]
    tl.store(o_ptr + offs, ex2.exp2_split(tl.load(x_ptr + offs), POLY_EIGHTHS, DEGREE))


def _interp_x():
    x = torch.cat([torch.tensor([-float("inf"), -1e30, -128.0, -127.25, -127.0, -126.75, -126.5, -126.25,
                                 -126.0, -0.0, 0.0, -1e-45, -1e-30, -1e-7, 0.5, -0.5, 1.5, 7.75]),
                   torch.linspace(-130.0, 8.0, 8192 - 18)]).float()
    return x


@interprets
@pytest.mark.parametrize("split", [ex2.SPLIT_NEAREST, ex2.SPLIT_FLOOR_PORTABLE], ids=["nearest", "floor"])
@pytest.mark.parametrize("degree", ex2.DEGREES)
def test_tl_exp2_poly_bit_exact(split, degree):
    """The tl function in the interpreter equals the mirror bit for bit (the interpreter's tl.fma
    rounds twice: fused=False; on the GPU it is fma.rn: fused=True)."""
    x = _interp_x()
    y = torch.empty_like(x)
    _poly_kernel[(1, )](x, y, x.numel(), degree, split)
    name = "nearest" if split == ex2.SPLIT_NEAREST else "floor"
    want = ex2.ex2_emulated(x, degree, name, fused=False)
    assert torch.equal(y.view(torch.int32), want.view(torch.int32))


@interprets
@pytest.mark.parametrize("n", [64, 128])
@pytest.mark.parametrize("poly_eighths", range(8))
def test_tl_exp2_split_columns(poly_eighths, n):
    """Column block b = col // (n/8) < POLY_EIGHTHS: the polynomial's bits; the others (always the
    last block): hardware exp2. Degree 2 (error 2e-3) tells the two apart."""
    m = 16
    g = torch.Generator().manual_seed(poly_eighths)
    x = (-30 * torch.rand(m, n, generator=g)).float()
    y = torch.empty_like(x)
    _split_kernel[(1, )](x, y, m, n, poly_eighths, 2)
    poly = (torch.arange(n) // (n // 8)) < poly_eighths
    want = ex2.exp2_split_reference(x, poly_eighths, 2, fused=False)
    assert torch.equal(y[:, poly].view(torch.int32), want[:, poly].view(torch.int32))
    assert ex2.ex2_reference_rel_error(x[:, ~poly], y[:, ~poly]).max().item() < 1e-6
    assert bool((~poly[-(n // 8):]).all())  # the last block is on hardware
    if poly_eighths:
        assert ex2.ex2_reference_rel_error(x[:, poly], y[:, poly]).max().item() > 1e-4  # really the polynomial


# ----------------------------------------------------------------------------- SASS counts (compiled)

@triton.jit
def _split_dot_kernel(a_desc, b_desc, o_ptr, BM: tl.constexpr, BN: tl.constexpr, POLY_EIGHTHS: tl.constexpr,
                      DEGREE: tl.constexpr):
    # s in the wgmma accumulator layout, as in the attention forward
    s = tl.dot(a_desc.load([0, 0]), b_desc.load([0, 0]))
    p = ex2.exp2_split(s - tl.max(s, 1)[:, None], POLY_EIGHTHS, DEGREE)
    tl.store(o_ptr + tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :], p)


@gluon.jit
def _gl_split_dot_kernel(a_desc, b_desc, o_ptr, BM: gl.constexpr, BN: gl.constexpr, POLY_EIGHTHS: gl.constexpr,
                         SPLIT: gl.constexpr):
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
    s = warpgroup_mma(a_s, b_s, gl.zeros([BM, BN], gl.float32, acc_layout))
    p = ex2.exp2_split_gl(s - gl.max(s, 1)[:, None], POLY_EIGHTHS, 3, SPLIT)
    rm = gl.arange(0, BM, layout=gl.SliceLayout(1, acc_layout))
    rn = gl.arange(0, BN, layout=gl.SliceLayout(0, acc_layout))
    gl.store(o_ptr + rm[:, None] * BN + rn[None, :], p)


def _counts(compiled):
    from flash256.kernels.compile_target import count_opcodes, dump_sass, sass_stats
    return sass_stats(compiled), count_opcodes(dump_sass(compiled))


@compiles
@pytest.mark.parametrize("split", [ex2.SPLIT_NEAREST, ex2.SPLIT_FLOOR_ASM, ex2.SPLIT_FLOOR_PORTABLE],
                         ids=["nearest", "floor_asm", "floor_portable"])
@pytest.mark.parametrize("degree", [3, 5])
def test_compile_exp2_poly_fma_only(split, degree):
    """One element per thread: DEGREE FFMA, 3 FADD (+2 for the portable floor), one shift+add
    (LEA), one FMNMX; no MUFU, FRND or F2I."""
    from flash256.kernels.compile_target import compile_tl
    c = compile_tl(_poly_kernel, {"x_ptr": "*fp32", "o_ptr": "*fp32"}, {"N": 128, "DEGREE": degree, "SPLIT": split},
                   num_warps=4)
    st, ops = _counts(c)
    assert ops["MUFU"] == 0 and st["frnd_f2i"] == 0 and ops["I2F"] == 0
    assert st["ffma"] == degree
    assert ops["FADD"] == (5 if split == ex2.SPLIT_FLOOR_PORTABLE else 3)
    assert ops["FADD.RM"] == (1 if split == ex2.SPLIT_FLOOR_ASM else 0)
    assert ops["FMNMX"] == 1 and ops["LEA"] + ops["SHF"] >= 1


# 128x64 fp32 tile, 8 warps: 32 values per thread
SPLIT_COUNTS = {pe: dict(mufu_ex2=32 - 4 * pe, ffma=3 * 4 * pe) for pe in (0, 2, 4, 6, 7)}


@compiles
def test_compile_exp2_split_counts():
    """MUFU.EX2 falls and FFMA rises in proportion to POLY_EIGHTHS; the split/join adds no shared
    memory traffic or shuffles (register renames in the wgmma accumulator layout)."""
    from flash256.kernels.compile_target import compile_tl, tl_desc_type
    sig = {"a_desc": tl_desc_type("fp16", [128, 64]), "b_desc": tl_desc_type("fp16", [64, 64]), "o_ptr": "*fp32"}
    base = None
    for pe, want in SPLIT_COUNTS.items():
        c = compile_tl(_split_dot_kernel, sig, {"BM": 128, "BN": 64, "POLY_EIGHTHS": pe, "DEGREE": 3}, num_warps=8)
        st, ops = _counts(c)
        got = {k: st[k] for k in want}
        assert got == want, (pe, got)
        assert st["frnd_f2i"] == 0 and st["spill_bytes"] == 0
        traffic = (ops["STS"], ops["LDS"], ops["SHFL"], ops["BAR"])
        base = traffic if base is None else base
        assert traffic == base, (pe, traffic, base)


@compiles
@pytest.mark.parametrize("split", [1, 0], ids=["floor_asm", "nearest"])
def test_compile_gluon_exp2_split_counts(split):
    """Gluon: the same split on a wgmma accumulator (64x64, one warpgroup: 32 values per thread)."""
    from flash256.kernels.compile_target import compile_gluon, gluon_desc_type
    a_l = gl.NVMMASharedLayout.get_default_for([64, 64], gl.float16)
    sig = {"a_desc": gluon_desc_type("fp16", [64, 64], a_l), "b_desc": gluon_desc_type("fp16", [64, 64], a_l),
           "o_ptr": "*fp32"}
    for pe in (0, 4, 7):
        c = compile_gluon(_gl_split_dot_kernel, sig, {"BM": 64, "BN": 64, "POLY_EIGHTHS": pe, "SPLIT": split},
                          num_warps=4)
        st, ops = _counts(c)
        assert (st["mufu_ex2"], st["ffma"]) == (32 - 4 * pe, 12 * pe), pe
        assert ops["FADD.RM"] == (4 * pe if split == 1 else 0)
        assert st["frnd_f2i"] == 0 and st["spill_bytes"] == 0 and ops["STS"] == 0 and ops["LDS"] == 0


def test_clean_process_runs_compile_tests():
    if not INTERPRET:
        pytest.skip("the test_compile_* tests run in this process")
    env = dict(os.environ, TRITON_INTERPRET="0")  # conftest only setdefault()s it
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_compile_",
                           __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]
