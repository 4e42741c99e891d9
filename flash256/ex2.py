"""exp2 on the FMA pipe: FA4's polynomial emulation of MUFU.EX2, as building blocks.

Algorithm (per element, fp32; FA4 `flash_attn/cute/utils.py`, issue 6):

    x  = max(x, -127)                      # -inf -> -127 -> +0.0 below
    r  = x + 12582912.0                    # 1.5 * 2^23: j = r - 12582912 is an integer in the low
                                           #   mantissa bits of r (ulp(r) = 1)
    j  = r - 12582912.0                    # exact
    f  = x - j                             # exact (floor split: except x in (-0.5, 0), see below)
    p  = 1 + f*(c1 + f*(c2 + ... f*cn))    # Horner with fused multiply-adds: n FFMA
    bits(result) = (bits(r) << 23) + bits(p)   # int32, wrapping: the shift drops r's exponent and
                                               #   leaves j << 23; adding it to p's exponent field
                                               #   multiplies p by 2^j

Two splits of x = j + f (`split=`):
  "nearest"  r = RN(x + magic): j = round-half-even(x), f in [-0.5, 0.5]. The plain fp32 add does
             this, so it is portable (Triton's CPU interpreter, tl and Gluon, any GPU) and is the
             default. Own coefficients (ex2_fit.py).
  "floor"    r = RD(x + magic): j = floor(x), f in [0, 1): FA4's split and its published degree-3
             coefficients (FA4_DEGREE3). Needs `add.rm.f32` (inline PTX: GPU only). For the
             CPU interpreter, SPLIT_FLOOR_PORTABLE gets the same bits from the round-to-nearest add
             and a correction (r -= 1 where RN rounded up: a compare and two selects more).

Exactness of f: with "nearest", |f| <= 0.5 and f = x - j is always exact (|x| < 0.5 gives j = 0,
f = x). With "floor", x in (-0.5, 0) finer than 2^-24 has j = -1 and f = RN(1 + x) (= 1.0 for
|x| < 2^-25, giving p(1)/2 = 1 - 8.5e-5 with FA4's degree 3 instead of ~1): still within the error
bound, but FA4's "both exact" holds only for |x| >= 0.5 or x on the 2^-24 grid.

No FRND/F2I/MUFU: FMNMX, FADD x3, FFMA x n, and a shift+add (SHF/IADD3, IMAD.SHL or LEA).

Domain. For x in [-126, 127) the result is 2^x (1 + e) with |e| <= MAX_REL_ERR[(split, degree)]
(polynomial error plus fp32 rounding of the Horner steps). x <= -127 and -inf give exactly +0.0
(p(0) = 1 exactly because c0 = 1, and 1.0's bits minus 127 << 23 are 0). For x in (-127, -126) the
result is a non-negative subnormal-range bit pattern below 2^-126 (hardware ex2.approx.ftz flushes
these to 0; both are < 1.2e-38, far below anything a softmax P keeps). NaN: the clamp is a maxnum
(tl.maximum, FMNMX) on the GPU, so NaN becomes 0 there; the mirror uses torch.fmax likewise. +inf and
x >= 128 are outside the domain (softmax arguments are <= 0, or <= the lazy-rescale threshold).

Rounding of the Horner steps. The device code uses tl.fma / gl.fma (fma.rn.f32 -> FFMA, one rounding).
Triton's CPU interpreter implements tl.fma as fp32 a*b then + c (two roundings), so the mirror has
`fused=True` (GPU bits) and `fused=False` (interpreter bits); the error bounds hold for both.

Column split of a softmax tile (`exp2_split`): POLY_EIGHTHS of 8 contiguous column blocks go to the
polynomial, the rest (always including the last block) to MUFU.EX2. See its docstring.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAGIC = 12582912.0  # 1.5 * 2^23
MAGIC_BITS = 0x4B400000
CLAMP = -127.0

SPLIT_NEAREST = 0  # round-to-nearest magic add, f in [-0.5, 0.5] (portable, default)
SPLIT_FLOOR_ASM = 1  # add.rm.f32 inline PTX, f in [0, 1) (GPU only: FA4's exact sequence)
SPLIT_FLOOR_PORTABLE = 2  # RN add + correction to floor, f in [0, 1) (interpreter/tests; 2-3 ALU ops more)
_SPLIT_NAMES = {"nearest": SPLIT_NEAREST, "floor": SPLIT_FLOOR_ASM}

# FA4's published degree-3 coefficients for the floor split (Sollya fpminimax, relative, c0 = 1).
FA4_DEGREE3 = (0.695146143436431884765625, 0.227564394474029541015625, 0.077119089663028717041015625)

# (split, degree) -> (c1, ..., cn), fp32 values; c0 = 1. Produced by `python -m flash256.ex2_fit`
# (float64 linear-programming minimax of the relative error, fp32 rounding, +-4-ulp search scored by
# the fused fp32 device arithmetic). The floor degree-3 entry is FA4's published table; the fit's own
# (0.6951167583465576, 0.22764503955841064, 0.07706703990697861) is marginally better (8.565e-5 vs
# 8.769e-5) and not used, so that the GPU path is FA4's.
COEFFS = {
    ("floor", 2): (0.665960967540741, 0.3299323618412018),
    ("floor", 3): FA4_DEGREE3,
    ("floor", 4): (0.6930448412895203, 0.241280198097229, 0.052242472767829895, 0.013426683843135834),
    ("floor", 5): (0.6931512951850891, 0.24016448855400085, 0.05579991266131401, 0.009017028845846653,
                   0.0018671307479962707),
    ("nearest", 2): (0.7029417753219604, 0.2398640364408493),
    ("nearest", 3): (0.6932829022407532, 0.24221089482307434, 0.05500893294811249),
    ("nearest", 4): (0.6931241750717163, 0.24024097621440887, 0.05590641126036644, 0.009582852944731712),
    ("nearest", 5): (0.6931470036506653, 0.24022243916988373, 0.05550733581185341, 0.009671512991189957,
                     0.0013264730805531144),
}

# Max relative error vs float64 2^x for x in [-126, 8] (the error depends on f only while the result
# is normal), measured with ex2_emulated, fused and unfused, on: x = k/4096 over [-126, 8], every
# fp32 in one period at -64, and 2^20 steps over [-1, 0] and [-0.5, 0.5]; rounded up.
# Measured (fused / unfused): floor 2.0534e-3, 8.7687e-5 / 8.7690e-5, 2.955e-6 / 2.971e-6,
# 1.421e-7 / 1.636e-7; nearest 1.9634e-3, 1.0134e-4 / 1.0135e-4, 2.884e-6 / 2.891e-6,
# 1.664e-7 / 1.862e-7. tests/test_ex2.py asserts these bounds.
MAX_REL_ERR = {
    ("floor", 2): 2.06e-3, ("floor", 3): 8.8e-5, ("floor", 4): 3.0e-6, ("floor", 5): 1.7e-7,
    ("nearest", 2): 1.97e-3, ("nearest", 3): 1.02e-4, ("nearest", 4): 2.95e-6, ("nearest", 5): 1.9e-7,
}

DEGREES = (2, 3, 4, 5)


# --------------------------------------------------------------------------- PyTorch mirror

def _wrap_i32(v: torch.Tensor) -> torch.Tensor:
    """int64 -> int32 with two's-complement wrap-around (what SHF/IADD do on the GPU)."""
    return (((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)).to(torch.int32)


def _fma_f32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Correctly rounded fp32 fused multiply-add (fma.rn.f32), vectorised with float64.

    a*b of two fp32 values is exact in float64; s = RN64(a*b + c) plus the TwoSum error `err` is
    the exact sum. RN32(s) equals RN32(exact) unless s sits exactly on an fp32 rounding midpoint
    with err != 0 (double rounding); then the sign of err decides.
    """
    prod = a.double() * b.double()
    c64 = c.double().expand_as(prod)
    s = prod + c64
    bb = s - prod
    err = (prod - (s - bb)) + (c64 - bb)
    r = s.float()
    back = r.double()
    toward = torch.where(s > back, torch.tensor(float("inf")), torch.tensor(float("-inf"))).float()
    other = torch.nextafter(r, toward)
    mid = (back + other.double()) * 0.5
    pick_other = (s == mid) & (s != back) & (err * (other.double() - back) > 0)
    return torch.where(pick_other, other, r)


def _fma_unfused_f32(a, b, c):
    """fp32 a*b rounded, then + c rounded (Triton's CPU interpreter's tl.fma)."""
    return (a * b) + c


def split_parts(x: torch.Tensor, split: str = "nearest"):
    """(clamped x, r = x + magic as the device rounds it, j = r - magic, f = x - j), all fp32.

    "nearest": r = RN(x + magic), the default fp32 add. "floor": the GPU's add.rm.f32 (RD), emulated
    exactly: r = RN(x + magic), then r - 1 where r - magic > x (for |x| < 2^22, x + magic lies
    between two consecutive integers of r's binade; RN picked the upper one exactly when
    r - magic > x, and RD is then the lower one). r - magic and r - 1 are exact; x - j is exact
    except for the floor split's x in (-0.5, 0) finer than 2^-24 (f = RN(1 + x)).
    """
    if split not in _SPLIT_NAMES:
        raise ValueError(f"split must be 'nearest' or 'floor', not {split!r}")
    x = x.to(torch.float32)
    x = torch.fmax(x, torch.tensor(CLAMP, dtype=torch.float32, device=x.device))  # maxnum like FMNMX
    magic = torch.tensor(MAGIC, dtype=torch.float32, device=x.device)
    r = x + magic
    if split == "floor":
        r = torch.where(r - magic > x, r - 1.0, r)
    j = r - magic
    return x, r, j, x - j


def ex2_emulated(x: torch.Tensor, degree: int = 3, split: str = "nearest", coeffs=None,
                 fused: bool = True) -> torch.Tensor:
    """Bit-exact PyTorch mirror of the device exp2 emulation (fp32 in, fp32 out; any device).

    split: "nearest" (j = round-half-even(x)) or "floor" (j = floor(x), FA4; the GPU's add.rm.f32
      is emulated exactly, see split_parts).
    coeffs: (c1..cn) to use instead of COEFFS[(split, degree)] (the fitting routine passes these).
    fused: True mirrors the GPU (fma.rn.f32 -> FFMA, one rounding per Horner step); False mirrors
      Triton's CPU interpreter (tl.fma computed as two fp32 roundings).
    """
    if split not in _SPLIT_NAMES:
        raise ValueError(f"split must be 'nearest' or 'floor', not {split!r}")
    if degree not in DEGREES and coeffs is None:
        raise ValueError(f"degree must be one of {DEGREES}, not {degree!r}")
    c = COEFFS[(split, degree)] if coeffs is None else tuple(coeffs)
    x, r, _, f = split_parts(x, split)
    fma = _fma_f32 if fused else _fma_unfused_f32
    p = torch.full_like(f, c[-1])
    for ck in reversed((1.0, ) + c[:-1]):
        p = fma(p, f, torch.tensor(ck, dtype=torch.float32, device=x.device))
    bits = (r.view(torch.int32).long() << 23) + p.view(torch.int32).long()
    return _wrap_i32(bits).view(torch.float32)


def ex2_reference_rel_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|y / 2^x - 1| in float64."""
    ref = torch.exp2(x.double())
    return ((y.double() - ref) / ref).abs()


# --------------------------------------------------------------------------- tl device functions
# Coefficients reach the jit code as scalar constexpr globals _F3_1 = COEFFS[("floor", 3)][0], ...,
# _N5_5 = COEFFS[("nearest", 5)][4] (a jit function may read a module global only if it is a
# tl.constexpr; constexpr tuples do not index in the CPU interpreter).
for (_split, _degree), _c in COEFFS.items():
    for _k, _v in enumerate(_c, start=1):
        globals()[f"_{_split[0].upper()}{_degree}_{_k}"] = tl.constexpr(float(_v))


@triton.jit
def _horner(f, DEGREE: tl.constexpr, FLOOR: tl.constexpr):
    """1 + f*(c1 + f*(c2 + ... f*cn)): DEGREE fma (FFMA), innermost fma(f, cn, cn-1)."""
    tl.static_assert(DEGREE >= 2 and DEGREE <= 5, "exp2_poly: DEGREE must be 2, 3, 4 or 5")
    if FLOOR:
        if DEGREE == 2:
            p = tl.fma(f, _F2_2, _F2_1)
        elif DEGREE == 3:
            p = tl.fma(tl.fma(f, _F3_3, _F3_2), f, _F3_1)
        elif DEGREE == 4:
            p = tl.fma(tl.fma(tl.fma(f, _F4_4, _F4_3), f, _F4_2), f, _F4_1)
        else:
            p = tl.fma(tl.fma(tl.fma(tl.fma(f, _F5_5, _F5_4), f, _F5_3), f, _F5_2), f, _F5_1)
    else:
        if DEGREE == 2:
            p = tl.fma(f, _N2_2, _N2_1)
        elif DEGREE == 3:
            p = tl.fma(tl.fma(f, _N3_3, _N3_2), f, _N3_1)
        elif DEGREE == 4:
            p = tl.fma(tl.fma(tl.fma(f, _N4_4, _N4_3), f, _N4_2), f, _N4_1)
        else:
            p = tl.fma(tl.fma(tl.fma(tl.fma(f, _N5_5, _N5_4), f, _N5_3), f, _N5_2), f, _N5_1)
    return tl.fma(p, f, 1.0)


@triton.jit
def exp2_poly(x, DEGREE: tl.constexpr = 3, SPLIT: tl.constexpr = 0):
    """2^x of an fp32 tensor on the FMA/ALU pipes (no MUFU, FRND or F2I). Bit-identical to
    ex2_emulated(x, DEGREE, "nearest" if SPLIT == 0 else "floor") (fused on the GPU, unfused in
    the CPU interpreter).

    SPLIT: 0 = SPLIT_NEAREST (portable), 1 = SPLIT_FLOOR_ASM (add.rm.f32 inline PTX: GPU only),
    2 = SPLIT_FLOOR_PORTABLE (floor bits from the RN add plus a correction; runs in the interpreter).
    """
    x = tl.maximum(x, -127.0)
    if SPLIT == 1:
        r = tl.inline_asm_elementwise("add.rm.f32 $0, $1, 0f4B400000;", "=f,f", [x],
                                      dtype=tl.float32, is_pure=True, pack=1)
    else:
        r = x + 12582912.0
        if SPLIT == 2:
            r = tl.where(r - 12582912.0 > x, r - 1.0, r)
    f = x - (r - 12582912.0)
    p = _horner(f, DEGREE, SPLIT != 0)
    bits = (r.to(tl.int32, bitcast=True) << 23) + p.to(tl.int32, bitcast=True)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _exp2_block(x, POLY: tl.constexpr, DEGREE: tl.constexpr, SPLIT: tl.constexpr):
    if POLY:
        y = exp2_poly(x, DEGREE, SPLIT)
    else:
        y = tl.math.exp2(x)
    return y


@triton.jit
def _exp2_quarter(x, FIRST: tl.constexpr, POLY_EIGHTHS: tl.constexpr, DEGREE: tl.constexpr,
                  SPLIT: tl.constexpr):
    """Eighths FIRST, FIRST+1 of the tile: x is (M, N/8, 2) [.., b0]."""
    if FIRST + 2 <= POLY_EIGHTHS or FIRST >= POLY_EIGHTHS:
        y = _exp2_block(x, FIRST < POLY_EIGHTHS, DEGREE, SPLIT)
    else:
        a, b = tl.split(x)
        y = tl.join(_exp2_block(a, FIRST < POLY_EIGHTHS, DEGREE, SPLIT),
                    _exp2_block(b, FIRST + 1 < POLY_EIGHTHS, DEGREE, SPLIT))
    return y


@triton.jit
def _exp2_half(x, FIRST: tl.constexpr, POLY_EIGHTHS: tl.constexpr, DEGREE: tl.constexpr,
               SPLIT: tl.constexpr):
    """Eighths FIRST..FIRST+3: x is (M, N/8, 2, 2) [.., b0, b1]."""
    if FIRST + 4 <= POLY_EIGHTHS or FIRST >= POLY_EIGHTHS:
        y = _exp2_block(x, FIRST < POLY_EIGHTHS, DEGREE, SPLIT)
    else:
        a, b = tl.split(x)
        y = tl.join(_exp2_quarter(a, FIRST, POLY_EIGHTHS, DEGREE, SPLIT),
                    _exp2_quarter(b, FIRST + 2, POLY_EIGHTHS, DEGREE, SPLIT))
    return y


@triton.jit
def exp2_split(s, POLY_EIGHTHS: tl.constexpr, DEGREE: tl.constexpr = 3, SPLIT: tl.constexpr = 0):
    """2^s of an fp32 (M, N) tile: column block b = col // (N/8) (b = 0..7) goes to the polynomial
    (exp2_poly) when b < POLY_EIGHTHS, to MUFU.EX2 (tl.math.exp2) otherwise.

    POLY_EIGHTHS in 0..7 (static): 0 is plain tl.math.exp2; the last block (b = 7) is always on
    hardware (as FA4 keeps part of each row on MUFU; use exp2_poly for an all-polynomial tile).
    N must be a power of two >= 8.

    The tile is cut, not masked: s is reshaped to (M, 2, 2, 2, N/8) (the three bits of b), permuted
    so that b's bits are last, and tl.split in halves only where a half mixes the two kinds; the
    results are tl.join-ed back. Each element is computed once, so MUFU.EX2 falls and FFMA rises by
    the fraction (a tl.where of both results would issue every MUFU anyway). With a wgmma/mma
    accumulator layout b's bits are register bits of each thread (a thread holds 2 columns of every
    8-column group), so the reshape/split/join are register renames, no shuffles.
    """
    tl.static_assert(POLY_EIGHTHS >= 0 and POLY_EIGHTHS <= 7, "exp2_split: POLY_EIGHTHS must be in 0..7")
    if POLY_EIGHTHS == 0:
        y = tl.math.exp2(s)
    else:
        M: tl.constexpr = s.shape[0]
        N: tl.constexpr = s.shape[1]
        tl.static_assert(N >= 8 and N % 8 == 0, "exp2_split: N must be a multiple of 8")
        x = tl.permute(tl.reshape(s, (M, 2, 2, 2, N // 8)), (0, 4, 3, 2, 1))  # (M, lo, b0, b1, b2)
        a, b = tl.split(x)
        if POLY_EIGHTHS == 4:
            y = tl.join(_exp2_block(a, True, DEGREE, SPLIT), _exp2_block(b, False, DEGREE, SPLIT))
        else:
            y = tl.join(_exp2_half(a, 0, POLY_EIGHTHS, DEGREE, SPLIT),
                        _exp2_half(b, 4, POLY_EIGHTHS, DEGREE, SPLIT))
        y = tl.reshape(tl.permute(y, (0, 4, 3, 2, 1)), (M, N))
    return y


def exp2_split_reference(s: torch.Tensor, poly_eighths: int, degree: int = 3, split: str = "nearest",
                         fused: bool = True) -> torch.Tensor:
    """What exp2_split computes, with torch.exp2 standing in for MUFU.EX2 on the hardware columns."""
    n = s.shape[-1]
    poly_cols = (torch.arange(n, device=s.device) // (n // 8)) < poly_eighths
    return torch.where(poly_cols, ex2_emulated(s, degree, split, fused=fused), torch.exp2(s.float()))


# --------------------------------------------------------------------------- Gluon (sm_90 kernels)
# A Gluon kernel calls the tl functions above directly (its tensors carry their layouts through them); only the
# column split needs a wrapper, to hand the result back in the accumulator's own layout. The default split here
# is FA4's floor with add.rm.f32: Gluon runs on the GPU only, where the rounding mode costs nothing.
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402


@gluon.jit
def exp2_split_gl(s, POLY_EIGHTHS: gl.constexpr, DEGREE: gl.constexpr = 3, SPLIT: gl.constexpr = SPLIT_FLOOR_ASM):
    """exp2_split of a Gluon tile, returned in s's layout (same column blocks and bits as the tl version).

    The split must be in-thread: Gluon inserts no layout conversions, so the column bits of b must be
    register bits of s's layout (true for the wgmma accumulator NVMMADistributedLayout with N >= 64,
    where a thread owns 2 adjacent columns of every 8-column group; fails to compile otherwise).
    The final convert_layout(assert_trivial=True) only renames the inferred linear layout back to
    s's layout, and fails to compile if it would move data.
    """
    return gl.convert_layout(exp2_split(s, POLY_EIGHTHS, DEGREE, SPLIT), s.type.layout, assert_trivial=True)
