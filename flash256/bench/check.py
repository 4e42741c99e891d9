"""Correctness checks against the fp32 reference.

Rule (as in flash-attention's tests): for every tensor x of a backend,
    max|x - ref_fp32| <= 2 * max|ref_lowp - ref_fp32| + max|round(ref_fp32) - ref_fp32| + 1e-5
where ref_fp32 is the reference computed from the inputs upcast to fp32,
ref_lowp the same reference computed in the benchmark dtype (bf16/fp16),
and round() rounds to that dtype.

Two kinds of check:
  full   on a small shape derived from the first measured shape (batch <= 2,
         seqlens <= 2048, same heads / headdim / causal / dtype): out, and
         dq, dk, dv when the backward is benchmarked.
  slice  on every measured shape (--check all): the forward output of the
         shape itself on two blocks of <= 128 query rows (first rows of the
         first batch, last rows of the last batch) against the reference on
         those rows and the keys they see.  Cheap even at 128k.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from .records import OK, WRONG, CheckResult, Shape

CHECK_MAX_BATCH = 2
CHECK_MAX_SEQLEN = 2048
SLICE_ROWS = 128
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def local_attention_ref(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, upcast=True):
    """Plain PyTorch attention, bottom-right causal, GQA by repetition. Returns (out, lse)."""
    if window_size != (-1, -1) or softcap:
        raise NotImplementedError("local reference: no window / softcap")
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    seqlen_q, nheads, headdim = q.shape[1], q.shape[2], q.shape[3]
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    if nheads != nheads_kv:
        k = k.repeat_interleave(nheads // nheads_kv, dim=2)
        v = v.repeat_interleave(nheads // nheads_kv, dim=2)
    scale = softmax_scale if softmax_scale is not None else headdim ** -0.5
    scores = torch.einsum("bqhd,bkhd->bhqk", q * scale, k)
    if causal:
        i = torch.arange(seqlen_q, device=q.device)[:, None]
        j = torch.arange(seqlen_k, device=q.device)[None, :]
        scores = scores.masked_fill(j > i + seqlen_k - seqlen_q, float("-inf"))
    lse = torch.logsumexp(scores.float(), dim=-1)
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs.to(v.dtype), v)
    return out.to(dtype), lse


def default_reference():
    """flash256.reference.attention_ref when importable, else the local copy above."""
    try:
        from flash256.reference import attention_ref

        return attention_ref
    except Exception:  # noqa: BLE001
        return local_attention_ref


@contextlib.contextmanager
def ieee_fp32():
    """No TF32 in the fp32 reference."""
    matmul = torch.backends.cuda.matmul
    old = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32 = old


def compare(x: torch.Tensor, ref: torch.Tensor, ref_lowp: torch.Tensor) -> tuple[float, float, float]:
    """(max error of x, tolerance, max error of the low-precision reference)."""
    ref = ref.float()
    err = (x.float() - ref).abs().max().item()
    base = (ref_lowp.float() - ref).abs().max().item()
    rounding = (ref.to(x.dtype).float() - ref).abs().max().item()
    return err, 2 * base + rounding + 1e-5, base


def make_inputs(shape: Shape, device: str, requires_grad: bool, seed: int = 0):
    """q, k, v (leaves) and dout, standard normal."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = TORCH_DTYPES[shape.dtype]

    def randn(*size):
        return torch.randn(*size, device=device, dtype=dtype, generator=gen)

    b, sq, sk, d = shape.batch, shape.seqlen_q, shape.seqlen_k, shape.headdim
    q = randn(b, sq, shape.nheads, d).requires_grad_(requires_grad)
    k = randn(b, sk, shape.nheads_kv, d).requires_grad_(requires_grad)
    v = randn(b, sk, shape.nheads_kv, d).requires_grad_(requires_grad)
    dout = randn(b, sq, shape.nheads, d) if requires_grad else None
    return q, k, v, dout


def check_shape_for(shape: Shape) -> Shape:
    return dataclasses.replace(shape, batch=min(shape.batch, CHECK_MAX_BATCH),
                               seqlen_q=min(shape.seqlen_q, CHECK_MAX_SEQLEN),
                               seqlen_k=min(shape.seqlen_k, CHECK_MAX_SEQLEN))


def _status(errors: dict) -> str:
    return OK if all(err <= tol for err, tol, _ in errors.values()) else WRONG


def _ref_out(reference, q, k, v, shape: Shape, upcast):
    options = {} if shape.window == (-1, -1) and not shape.softcap else \
        {"window_size": shape.window, "softcap": shape.softcap}
    return reference(q, k, v, causal=shape.causal, upcast=upcast, **options)[0]


def full_check(backend, shape: Shape, device: str, deterministic: bool, with_bwd: bool,
               reference=None) -> CheckResult:
    """Run backend (and its backward) on shape; compare out (dq, dk, dv) with the reference."""
    reference = reference or default_reference()
    q, k, v, dout = make_inputs(shape, device, requires_grad=True, seed=1)
    out = backend.build(q, k, v, shape, deterministic)()
    leaves32 = [x.detach().float().requires_grad_() for x in (q, k, v)]
    leaves_lp = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    with ieee_fp32():
        ref32 = _ref_out(reference, *leaves32, shape, upcast=True)
    ref_lp = _ref_out(reference, *leaves_lp, shape, upcast=False)
    errors = {"out": compare(out.detach(), ref32.detach(), ref_lp.detach())}
    if with_bwd:
        grads = torch.autograd.grad(out, (q, k, v), dout)
        with ieee_fp32():
            grads32 = torch.autograd.grad(ref32, leaves32, dout.float())
        grads_lp = torch.autograd.grad(ref_lp, leaves_lp, dout)
        for name, g, g32, glp in zip(("dq", "dk", "dv"), grads, grads32, grads_lp):
            errors[name] = compare(g, g32, glp)
    return CheckResult(backend.name, shape, "full", _status(errors), errors)


def slice_blocks(shape: Shape, rows: int = SLICE_ROWS) -> list[tuple[int, int, int, int]]:
    """(batch index, first row, end row, keys seen) for the row blocks the slice check compares:
    the first visible rows of batch 0 and the last rows of the last batch.

    A block's reference on keys [0, keys) keeps the bottom-right alignment only if keys = end row +
    seqlen_k - seqlen_q; that is exact when no row sees keys right of its diagonal (causal, or a window
    with right = 0) and for the last rows (keys = seqlen_k). Other windowed first blocks are left out."""
    offset = shape.seqlen_k - shape.seqlen_q
    masked = shape.visible_window() != (-1, -1)
    right_bounded = shape.visible_window()[1] == 0
    # causal with seqlen_q > seqlen_k: rows before -offset see no key (output undefined), skip them
    first = max(0, -offset) if shape.causal else 0
    m = min(rows, shape.seqlen_q - first)
    if m <= 0:
        return []
    blocks = []
    for bi, r0 in ((0, first), (shape.batch - 1, shape.seqlen_q - m)):
        r1 = r0 + m
        if masked and not right_bounded and r1 != shape.seqlen_q:
            continue
        keys = min(shape.seqlen_k, r1 + offset) if masked else shape.seqlen_k
        if (bi, r0, r1, keys) not in blocks:
            blocks.append((bi, r0, r1, keys))
    return blocks


@torch.no_grad()
def slice_check(name: str, out: torch.Tensor, q, k, v, shape: Shape, reference=None,
                rows: int = SLICE_ROWS) -> CheckResult:
    """Compare row blocks of a full-size output with the reference on those rows.

    Rows [r0, r1) with keys [0, r1 + seqlen_k - seqlen_q) keep the bottom-right
    causal alignment, so the reference on the slice equals the full one.
    """
    reference = reference or default_reference()
    errors = {}
    for bi, r0, r1, keys in slice_blocks(shape, rows):
        qs = q.detach()[bi:bi + 1, r0:r1]
        ks, vs = k.detach()[bi:bi + 1, :keys], v.detach()[bi:bi + 1, :keys]
        with ieee_fp32():
            ref32 = _ref_out(reference, qs.float(), ks.float(), vs.float(), shape, upcast=True)
        ref_lp = _ref_out(reference, qs, ks, vs, shape, upcast=False)
        errors[f"out[b{bi},{r0}:{r1}]"] = compare(out[bi:bi + 1, r0:r1], ref32, ref_lp)
        del ref32, ref_lp
    return CheckResult(name, shape, "slice", _status(errors), errors)
