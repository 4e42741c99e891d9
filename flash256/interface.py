"""Public API: flash-attn's `flash_attn_func` / `flash_attn_varlen_func` conventions,
autograd, torch.compile.

Under torch.compile the kernels run inside two torch.library custom ops (`flash256::forward`,
`flash256::backward`) with fake implementations, so it traces through them without graph
breaks; autograd is registered on the forward op. In eager mode the same two functions run
under a plain autograd.Function: the custom-op layer costs ~130 us of Python per call, more
than a short sequence's kernels take. Inside them every input is 4-D (batch, seqlen, heads,
head_dim) — a packed varlen batch is (1, total, ...) — and LSE is kept as (heads, rows); the
public functions reshape at the edges.
"""
import math
import os
from typing import Optional

import torch

from . import configs, dispatch
from .dispatch import AttentionArgs

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256


# --- input checks ------------------------------------------------------------------------

def _check_tensor(name, t, ndim, layout):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {tuple(t.shape)}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float16 or bfloat16, got {t.dtype}")
    if t.numel() > 0 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dimension, got strides {t.stride()}")


def _check_common(q, k, v, softmax_scale, window_size, softcap, learnable_sink):
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not dispatch.interpreting():
        raise ValueError(f"q, k, v must be CUDA tensors, got {q.device} (CPU tensors run only "
                         "under Triton's interpreter, TRITON_INTERPRET=1)")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    head_dim, nheads, nheads_kv = q.shape[-1], q.shape[-2], k.shape[-2]
    if k.shape[-1] != head_dim:
        raise ValueError(f"k, v head_dim {k.shape[-1]} does not match q head_dim {head_dim}")
    if head_dim % 8 != 0 or not 8 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be a multiple of 8 in [8, {MAX_HEAD_DIM}], got {head_dim}")
    if nheads_kv == 0 or nheads % nheads_kv != 0:
        raise ValueError(f"nheads ({nheads}) must be a positive multiple of nheads_kv ({nheads_kv})")
    if softmax_scale is not None and not (isinstance(softmax_scale, (int, float))
                                          and math.isfinite(softmax_scale)):
        raise ValueError(f"softmax_scale must be a finite number or None, got {softmax_scale!r}")
    if len(window_size) != 2 or any(int(w) != w or w < -1 for w in window_size):
        raise ValueError(f"window_size must be (left, right) with -1 or integers >= 0, got {window_size!r}")
    if not (isinstance(softcap, (int, float)) and math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"softcap must be a finite number >= 0 (0 disables it), got {softcap!r}")
    if learnable_sink is not None:
        if not isinstance(learnable_sink, torch.Tensor) or learnable_sink.shape != (nheads,):
            raise ValueError(f"learnable_sink must be a tensor of shape (nheads,) = ({nheads},), "
                             f"got {getattr(learnable_sink, 'shape', type(learnable_sink).__name__)}")
        if not learnable_sink.is_floating_point() or learnable_sink.device != q.device:
            raise ValueError(f"learnable_sink must be a floating-point tensor on {q.device}, "
                             f"got {learnable_sink.dtype} on {learnable_sink.device}")


def _check_cu_seqlens(name, cu, total, device):
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"{name} must be a 1-D tensor of num_seqs + 1 offsets")
    if cu.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {cu.dtype}")
    if cu.device != device:
        raise ValueError(f"{name} must be on {device}, got {cu.device}")


# --- forward and backward: custom ops for torch.compile, an autograd.Function in eager ----

def _args(sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
          window_left, window_right, softcap, deterministic, exp2_poly_eighths=0) -> AttentionArgs:
    return AttentionArgs(softmax_scale, causal, (window_left, window_right), softcap, sink,
                         cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, deterministic,
                         exp2_poly_eighths)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink: Optional[torch.Tensor],
             cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
             max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, causal: bool,
             window_left: int, window_right: int, softcap: float, deterministic: bool,
             exp2_poly_eighths: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    args = _args(sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                 causal, window_left, window_right, softcap, deterministic, exp2_poly_eighths)
    batch, seqlen_q, nheads, _ = q.shape
    if q.numel() == 0 or k.numel() == 0 or (cu_seqlens_q is not None and cu_seqlens_q.numel() < 2):
        out = torch.zeros(q.shape, device=q.device, dtype=q.dtype)
        lse = torch.full((nheads, batch * seqlen_q), float("-inf"), device=q.device, dtype=torch.float32)
        if sink is not None:  # every row sees only the sink
            lse[:] = sink.float()[:, None]
        return out, lse
    impl = dispatch.select("forward", q, args, backend)
    return impl.run(q, k, v, args)


_forward_op = torch.library.custom_op("flash256::forward", _forward, mutates_args=())


@_forward_op.register_fake
def _(q, k, v, sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
      causal, window_left, window_right, softcap, deterministic, exp2_poly_eighths, backend):
    batch, seqlen_q, nheads, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), \
        q.new_empty((nheads, batch * seqlen_q), dtype=torch.float32)


def _backward(dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor,
              k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
              sink: Optional[torch.Tensor], cu_seqlens_q: Optional[torch.Tensor],
              cu_seqlens_k: Optional[torch.Tensor], max_seqlen_q: int, max_seqlen_k: int,
              softmax_scale: float, causal: bool, window_left: int, window_right: int,
              softcap: float, deterministic: bool, exp2_poly_eighths: int, backend: str
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    args = _args(sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                 causal, window_left, window_right, softcap, deterministic, exp2_poly_eighths)
    no_sink_grad = torch.zeros(0, device=q.device, dtype=torch.float32)
    if q.numel() == 0 or k.numel() == 0 or (cu_seqlens_q is not None and cu_seqlens_q.numel() < 2):
        dsink = torch.zeros_like(sink, dtype=torch.float32) if sink is not None else no_sink_grad
        if sink is not None and dlse is not None:  # lse == sink on every row
            dsink += dlse.sum(1)
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), dsink
    impl = dispatch.select("backward", q, args, backend)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    dq, dk, dv, dsink = impl.run(dout, q, k, v, out, lse, dlse, args)
    return dq, dk, dv, no_sink_grad if dsink is None else dsink


_backward_op = torch.library.custom_op("flash256::backward", _backward, mutates_args=())


@_backward_op.register_fake
def _(dout, dlse, q, k, v, out, lse, sink, *rest):
    dsink = torch.empty_like(sink, dtype=torch.float32) if sink is not None else q.new_empty(0, dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dsink


def _setup_context(ctx, inputs, output):
    q, k, v, sink, cu_seqlens_q, cu_seqlens_k, *options = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, sink, cu_seqlens_q, cu_seqlens_k)
    ctx.options = options
    # an unused lse (the usual case) sends dlse = None rather than a zero tensor to fill and subtract
    ctx.set_materialize_grads(False)


def _gradients(ctx, dout, dlse, backward):
    q, k, v, out, lse, sink, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, dsink = backward(dout, dlse, q, k, v, out, lse, sink, cu_seqlens_q, cu_seqlens_k, *ctx.options)
    dsink = dsink.to(sink.dtype) if sink is not None else None
    return (dq, dk, dv, dsink, None, None) + (None,) * len(ctx.options)


def _traced_gradients(ctx, dout, dlse):
    return _gradients(ctx, dout, dlse, _backward_op)


_forward_op.register_autograd(_traced_gradients, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same forward, context and gradients as the custom ops, without their dispatch."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _forward(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, dout, dlse):
        return _gradients(ctx, dout, dlse, _backward)


# --- public functions --------------------------------------------------------------------

def _exp2_poly_eighths(fraction, head_dim, causal) -> int:
    """The exp2 emulation share in eighths: argument, else FLASH256_EXP2_POLY_FRACTION, else the
    per-(head_dim, causal) default of configs.EXP2_POLY_EIGHTHS."""
    source = "exp2_poly_fraction"
    if fraction is None and os.environ.get("FLASH256_EXP2_POLY_FRACTION"):
        fraction, source = float(os.environ["FLASH256_EXP2_POLY_FRACTION"]), "FLASH256_EXP2_POLY_FRACTION"
    if fraction is None:
        return configs.exp2_poly_eighths(head_dim, causal)
    eighths = fraction * 8
    if not (0 <= eighths <= 7 and eighths == int(eighths)):
        raise ValueError(f"{source} must be a multiple of 1/8 in [0, 7/8] (the last eighth of "
                         f"each tile stays on the hardware exp2), got {fraction!r}")
    return int(eighths)


def _run(q4, k4, v4, learnable_sink, cu_q, cu_k, max_q, max_k, softmax_scale, causal,
         window_size, softcap, deterministic, exp2_poly_fraction, backend):
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q4.shape[-1])
    if backend not in dispatch.backend_names():
        raise ValueError(f"backend must be one of {dispatch.backend_names()}, got {backend!r}")
    eighths = _exp2_poly_eighths(exp2_poly_fraction, q4.shape[-1], causal)
    forward = _forward_op if torch.compiler.is_compiling() else _EagerAttention.apply
    return forward(q4, k4, v4, learnable_sink, cu_q, cu_k, int(max_q), int(max_k), float(softmax_scale),
                   bool(causal), int(window_size[0]), int(window_size[1]), float(softcap), bool(deterministic),
                   eighths, backend)


def attention(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
              learnable_sink=None, return_lse=False, deterministic=False, backend="auto",
              exp2_poly_fraction=None):
    """flash_attn_func with a choice of implementation: backend is "auto" (the fastest that
    supports the call on this device), "portable" (tl kernels) or "sm90" (Hopper fast path)."""
    _check_tensor("q", q, 4, "(batch, seqlen, nheads, headdim)")
    _check_tensor("k", k, 4, "(batch, seqlen, nheads_kv, headdim)")
    _check_tensor("v", v, 4, "(batch, seqlen, nheads_kv, headdim)")
    _check_common(q, k, v, softmax_scale, window_size, softcap, learnable_sink)
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"k, v batch size {k.shape[0]} does not match q batch size {q.shape[0]}")
    out, lse = _run(q, k, v, learnable_sink, None, None, q.shape[1], k.shape[1], softmax_scale,
                    causal, window_size, softcap, deterministic, exp2_poly_fraction, backend)
    if not return_lse:
        return out
    batch, seqlen_q, nheads, _ = q.shape
    return out, lse.unflatten(1, (batch, seqlen_q)).transpose(0, 1)   # (batch, nheads, seqlen_q)


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    return_lse=False, deterministic=False, learnable_sink=None,
                    exp2_poly_fraction=None):
    """Exact attention, flash-attn conventions.

    q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_kv, headdim);
    fp16 or bf16, nheads % nheads_kv == 0, headdim a multiple of 8 up to 256.
    causal masks bottom-right aligned (query i sees keys j <= i + seqlen_k - seqlen_q);
    window_size=(left, right) limits the keys each query sees (-1: unbounded);
    softcap > 0 caps scores as softcap * tanh(scores / softcap); learnable_sink (nheads,)
    adds one logit per head to every softmax denominator (gpt-oss style; gets a gradient).
    Returns out (batch, seqlen_q, nheads, headdim), or (out, lse) with lse
    (batch, nheads, seqlen_q) fp32, natural log, when return_lse. Differentiable in q, k, v,
    learnable_sink (and through lse). deterministic=True asks for run-to-run bit-identical
    gradients. exp2_poly_fraction (a multiple of 1/8 up to 7/8) moves that share of the
    forward softmax's exp2 from the special-function unit to an FMA polynomial (FA4's trick;
    None: FLASH256_EXP2_POLY_FRACTION or the measured default, 0: off).
    """
    return attention(q, k, v, softmax_scale, causal, window_size, softcap, learnable_sink,
                     return_lse, deterministic, exp2_poly_fraction=exp2_poly_fraction)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                           return_lse=False, deterministic=False, learnable_sink=None,
                           exp2_poly_fraction=None, backend="auto"):
    """Attention over packed variable-length sequences, flash-attn conventions.

    q: (total_q, nheads, headdim), k, v: (total_k, nheads_kv, headdim); sequence b is rows
    cu_seqlens_q[b]:cu_seqlens_q[b+1] of q (int32 offsets, num_seqs + 1 of them, covering all
    rows) and the matching rows of k, v; max_seqlen_* bound the sequence lengths. Zero-length
    sequences are allowed. Returns out (total_q, nheads, headdim), or (out, lse) with lse
    (nheads, total_q) fp32.
    """
    _check_tensor("q", q, 3, "(total_q, nheads, headdim)")
    _check_tensor("k", k, 3, "(total_k, nheads_kv, headdim)")
    _check_tensor("v", v, 3, "(total_k, nheads_kv, headdim)")
    _check_common(q, k, v, softmax_scale, window_size, softcap, learnable_sink)
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length, got "
                         f"{cu_seqlens_q.numel()} and {cu_seqlens_k.numel()}")
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    out, lse = _run(q[None], k[None], v[None], learnable_sink, cu_seqlens_q, cu_seqlens_k,
                    max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_size, softcap,
                    deterministic, exp2_poly_fraction, backend)
    return (out[0], lse) if return_lse else out[0]


def available_backends(device) -> list[str]:
    return dispatch.available_backends(device)
