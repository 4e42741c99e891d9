"""Public API: flash-attn's `flash_attn_func` conventions, autograd, torch.compile.

The kernels run inside two torch.library custom ops (`flash256::forward`,
`flash256::backward`) with fake implementations, so torch.compile traces through them
without graph breaks; autograd is registered on the forward op.
"""
import math

import torch

from . import dispatch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256


def _check_inputs(q, k, v, softmax_scale, window_size, softcap):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (batch, seqlen, nheads, headdim), "
                             f"got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float16 or bfloat16, got {t.dtype}")
        if t.numel() > 0 and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension, got strides {t.stride()}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not dispatch._interpreting():
        raise ValueError(f"q, k, v must be CUDA tensors, got {q.device} (CPU tensors run only "
                         "under Triton's interpreter, TRITON_INTERPRET=1)")
    batch, seqlen_q, nheads, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != batch:
        raise ValueError(f"k, v batch size {k.shape[0]} does not match q batch size {batch}")
    if k.shape[3] != head_dim:
        raise ValueError(f"k, v head_dim {k.shape[3]} does not match q head_dim {head_dim}")
    if head_dim % 8 != 0 or not 8 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be a multiple of 8 in [8, {MAX_HEAD_DIM}], got {head_dim}")
    nheads_kv = k.shape[2]
    if nheads_kv == 0 or nheads % nheads_kv != 0:
        raise ValueError(f"nheads ({nheads}) must be a positive multiple of nheads_kv ({nheads_kv})")
    if softmax_scale is not None and not (isinstance(softmax_scale, (int, float))
                                          and math.isfinite(softmax_scale)):
        raise ValueError(f"softmax_scale must be a finite number or None, got {softmax_scale!r}")
    if len(window_size) != 2 or any(int(w) != w or w < -1 for w in window_size):
        raise ValueError(f"window_size must be (left, right) with -1 or integers >= 0, got {window_size!r}")
    if softcap != 0.0:
        raise NotImplementedError("softcap is not implemented yet in flash256 (planned); pass softcap=0.0")


def _problem(q, causal, window, softcap, deterministic) -> dispatch.Problem:
    return dispatch.Problem(q.device, q.dtype, q.shape[-1], causal, window, softcap, deterministic)


@torch.library.custom_op("flash256::forward", mutates_args=())
def _forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float,
                causal: bool, window_left: int, window_right: int, softcap: float,
                deterministic: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch, seqlen_q, nheads, _ = q.shape
    if q.numel() == 0 or k.shape[1] == 0:
        out = torch.zeros_like(q, memory_format=torch.contiguous_format)
        lse = torch.full((batch, nheads, seqlen_q), float("-inf"), device=q.device, dtype=torch.float32)
        return out, lse
    window = (window_left, window_right)
    impl = dispatch.select("forward", _problem(q, causal, window, softcap, deterministic), backend)
    return impl.run(q, k, v, softmax_scale, causal, window)


@_forward_op.register_fake
def _(q, k, v, softmax_scale, causal, window_left, window_right, softcap, deterministic, backend):
    batch, seqlen_q, nheads, _ = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return out, q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32)


@torch.library.custom_op("flash256::backward", mutates_args=())
def _backward_op(dout: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, softmax_scale: float,
                 causal: bool, window_left: int, window_right: int, softcap: float,
                 deterministic: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if q.numel() == 0 or k.numel() == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    window = (window_left, window_right)
    impl = dispatch.select("backward", _problem(q, causal, window, softcap, deterministic), backend)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    return impl.run(dout, q, k, v, out, lse, dlse, softmax_scale, causal, window)


@_backward_op.register_fake
def _(dout, dlse, q, k, v, out, lse, softmax_scale, causal, window_left, window_right, softcap,
      deterministic, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, *options = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.options = options


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = _backward_op(dout, dlse, q, k, v, out, lse, *ctx.options)
    return (dq, dk, dv) + (None,) * len(ctx.options)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def attention(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
              return_lse=False, deterministic=False, backend="auto"):
    """flash_attn_func with a choice of implementation: backend is "auto" (the fastest that
    supports the call on this device), "portable" (tl kernels) or "sm90" (Hopper fast path)."""
    _check_inputs(q, k, v, softmax_scale, window_size, softcap)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    if backend not in dispatch.backend_names():
        raise ValueError(f"backend must be one of {dispatch.backend_names()}, got {backend!r}")
    out, lse = _forward_op(q, k, v, float(softmax_scale), bool(causal), int(window_size[0]),
                           int(window_size[1]), float(softcap), bool(deterministic), backend)
    return (out, lse) if return_lse else out


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    return_lse=False, deterministic=False):
    """Exact attention, flash-attn conventions.

    q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_kv, headdim);
    fp16 or bf16, nheads % nheads_kv == 0, headdim a multiple of 8 up to 256.
    causal masks bottom-right aligned (query i sees keys j <= i + seqlen_k - seqlen_q);
    window_size=(left, right) limits the keys each query sees (-1: unbounded).
    Returns out (batch, seqlen_q, nheads, headdim), or (out, lse) with lse
    (batch, nheads, seqlen_q) fp32, natural log, when return_lse. Differentiable in q, k, v
    (and through lse). deterministic=True asks for run-to-run bit-identical gradients.
    """
    return attention(q, k, v, softmax_scale, causal, window_size, softcap, return_lse, deterministic)


def available_backends(device) -> list[str]:
    return dispatch.available_backends(device)
