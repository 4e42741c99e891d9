"""Reproducible minimax fits of 2^f for the exp2 emulation in `flash256.ex2`.

    python -m flash256.ex2_fit            # prints the coefficient tables and their errors

p(f) = 1 + c1 f + ... + cn f^n ~ 2^f, c0 fixed to 1 (so p(0) = 1 exactly and exp2(-inf) = +0.0),
minimising the maximum *relative* error |p(f) / 2^f - 1| on
  split="floor":   f in [0, 1)       (j = floor(x), FA4's split; needs add.rm on the GPU)
  split="nearest": f in [-0.5, 0.5]  (j = round-to-nearest-even(x): the plain fp32 magic add)

Method, in float64 with numpy/scipy:
  1. linear minimax on a dense grid: the relative error e(f) = sum_k c_k f^k 2^-f + 2^-f - 1 is
     linear in (c1..cn), so min_c max_grid |e| is a small linear program (scipy HiGHS). The basis
     functions all vanish at f = 0, so the classical Remez exchange is not guaranteed to apply
     on [-0.5, 0.5]; the LP needs no Haar condition. A 2^14-point grid gives the continuous
     optimum to a few parts in 1e4 of the error (checked against 2^16 points).
  2. fp32 rounding of the coefficients, then a small coordinate search over +-SEARCH_ULPS ulps of
     each coefficient, scoring the *device arithmetic* (fp32 Horner with fused multiply-adds,
     the bit-exact mirror `ex2.ex2_emulated`) by its max relative error against float64 2^x on
     every fp32 value of x in one period around -64 (all f the device sees there).

The tables in ex2.py were produced by this module (ex2.COEFFS); tests/test_ex2.py checks that
`fit()` reproduces the step-1 optimum and that the stored tables meet their error bounds.
"""
from __future__ import annotations

import numpy as np

INTERVALS = {"floor": (0.0, 1.0), "nearest": (-0.5, 0.5)}
SEARCH_ULPS = 4


def minimax_relative(degree: int, split: str, grid_points: int = 1 << 14):
    """Step 1: float64 coefficients (c1..cn) and the grid's max relative error."""
    from scipy.optimize import linprog

    lo, hi = INTERVALS[split]
    # Chebyshev-clustered grid (the error peaks crowd towards the ends)
    t = np.cos(np.linspace(np.pi, 0.0, grid_points))
    f = lo + (hi - lo) * (t + 1.0) / 2.0
    w = np.exp2(-f)
    a = np.stack([f ** k * w for k in range(1, degree + 1)], axis=1)  # e = a @ c - b
    b = 1.0 - w
    n = degree
    # variables (c1..cn, t): minimise t subject to  a c - b <= t  and  -(a c - b) <= t
    cost = np.zeros(n + 1)
    cost[-1] = 1.0
    ones = np.ones((len(f), 1))
    a_ub = np.vstack([np.hstack([a, -ones]), np.hstack([-a, -ones])])
    b_ub = np.concatenate([b, -b])
    # the errors are ~1e-8 at degree 5: HiGHS's default 1e-7 tolerances would swamp them
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * (n + 1), method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    if not res.success:
        raise RuntimeError(res.message)
    return res.x[:n], float(res.x[n])


def device_max_rel_error(coeffs, split: str, grid_points: int = (1 << 17) + 1, fused: bool = True,
                         offset: float = -64.0) -> float:
    """Max relative error of the fp32 device arithmetic (ex2.ex2_emulated) over one period of f.

    Default: x = f - 64 for every fp32 value in [lo - 64, hi - 64] (spacing 2^-17 is the fp32 ulp
    there), i.e. every f the device sees for j = -64.
    """
    import torch

    from .ex2 import ex2_emulated

    lo, hi = INTERVALS[split]
    x = torch.linspace(lo + offset, hi + offset, grid_points, dtype=torch.float64).to(torch.float32)
    y = ex2_emulated(x, coeffs=coeffs, split=split, fused=fused).double()
    ref = torch.exp2(x.double())
    return float(((y - ref) / ref).abs().max())


def fit(degree: int, split: str, search: bool = True):
    """(fp32 coefficient tuple c1..cn, float64 LP error, device max relative error)."""
    c64, err = minimax_relative(degree, split)
    c = [float(np.float32(v)) for v in c64]
    best = device_max_rel_error(c, split)
    if search:
        improved = True
        while improved:
            improved = False
            for k in range(degree):
                for step in [s for s in range(-SEARCH_ULPS, SEARCH_ULPS + 1) if s]:
                    trial = list(c)
                    v = np.float32(c[k])
                    trial[k] = float(np.nextafter(v, np.float32(np.inf if step > 0 else -np.inf)) if abs(step) == 1
                                     else _step_ulps(v, step))
                    e = device_max_rel_error(trial, split)
                    if e < best:
                        c, best, improved = trial, e, True
    return tuple(c), err, best


def _step_ulps(v: np.float32, n: int) -> np.float32:
    bits = np.array([v], dtype=np.float32).view(np.int32)[0]
    return np.array([bits + (n if v >= 0 else -n)], dtype=np.int32).view(np.float32)[0]


def main():
    for split in ("floor", "nearest"):
        for degree in (2, 3, 4, 5):
            c, err, dev = fit(degree, split)
            print(f"{split:8s} degree {degree}: LP rel err {err:.3e}, fp32 device rel err {dev:.3e}")
            print("    (" + ", ".join(repr(v) for v in c) + ")")


if __name__ == "__main__":
    main()
