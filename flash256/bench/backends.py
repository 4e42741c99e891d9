"""One small adapter per attention implementation.

Every adapter takes q (b, s_q, h, d), k and v (b, s_k, h_kv, d) and the Shape (its causal,
window and softcap options) and returns a zero-argument callable that runs the forward and
returns out (b, s_q, h, d). The callable goes through autograd, so the runner times the
backward by differentiating its output. Causal masks and windows are bottom-right aligned
everywhere; an adapter that cannot express an option raises NotImplementedError, which the
table shows as 'unsupported'.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from .records import Shape

ForwardFn = Callable[[], torch.Tensor]
# build(q, k, v, shape, deterministic) -> forward callable
BuildFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Shape, bool], ForwardFn]


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    is_flash256: bool  # flash256 columns are compared (ratios) against every other column
    unavailable: Callable[[str], str | None]  # device -> None when usable, else the reason
    build: BuildFn


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _plain_only(shape: Shape, who: str) -> None:
    if shape.window != (-1, -1) or shape.softcap:
        raise NotImplementedError(f"{who}: no sliding window / softcap")


# ---------------------------------------------------------------- flash256

def _flash256_unavailable(impl: str | None, device: str) -> str | None:
    try:
        import flash256
        from flash256 import interface
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return f"flash256 import failed: {type(e).__name__}: {e}"
    if impl is None:
        return None if hasattr(flash256, "flash_attn_func") else "flash256.flash_attn_func missing"
    try:
        names = interface.available_backends(torch.device(device))
    except Exception as e:  # noqa: BLE001
        return f"available_backends failed: {type(e).__name__}: {e}"
    if impl not in names:
        return f"implementation {impl!r} not available on {device} (available: {', '.join(names) or 'none'})"
    return None


def _flash256_build(impl: str | None, exp2_eighths: int | None) -> BuildFn:
    exp2_fraction = None if exp2_eighths is None else exp2_eighths / 8

    def build(q, k, v, shape, deterministic):
        options = dict(causal=shape.causal, window_size=shape.window, softcap=shape.softcap,
                       deterministic=deterministic)
        if impl is None and exp2_fraction is None:
            from flash256 import flash_attn_func

            return lambda: _first(flash_attn_func(q, k, v, **options))
        from flash256.interface import attention

        return lambda: _first(attention(q, k, v, backend=impl or "auto", exp2_poly_fraction=exp2_fraction,
                                        **options))
    return build


def flash256_backend(impl: str | None = None, exp2_eighths: int | None = None) -> Backend:
    """impl None: flash256.flash_attn_func (auto dispatch); else interface.attention(backend=impl).
    exp2_eighths: the forward's exp2 emulation share in eighths (None: flash256's default)."""
    name = "flash256" if impl is None else f"flash256-{impl}"
    desc = "flash256.flash_attn_func (auto dispatch)" if impl is None else \
        f"flash256.interface.attention(backend={impl!r})"
    if exp2_eighths is not None:
        name += f":exp2={exp2_eighths}"
        desc += f", exp2_poly_fraction={exp2_eighths}/8"
    return Backend(name, desc, True, functools.partial(_flash256_unavailable, impl),
                   _flash256_build(impl, exp2_eighths))


def flash256_implementations(device: str) -> list[str] | None:
    """Implementation names usable on device, or None when flash256 cannot be imported."""
    try:
        from flash256 import interface

        return list(interface.available_backends(torch.device(device)))
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------- torch SDPA

def _cuda_only(device: str) -> str | None:
    return None if torch.device(device).type == "cuda" and torch.cuda.is_available() else "needs CUDA"


def _sdpa_build(kind: str) -> BuildFn:
    def build(q, k, v, shape, deterministic):
        _plain_only(shape, "torch SDPA")
        causal = shape.causal
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        backend = getattr(SDPBackend, kind)
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (b, h, s, d) views
        seqlen_q, seqlen_k = q.shape[1], k.shape[1]
        mask, is_causal = None, False
        if causal and seqlen_q == seqlen_k:
            is_causal = True
        elif causal:  # SDPA's is_causal is top-left aligned; ask for bottom-right explicitly
            from torch.nn.attention.bias import causal_lower_right

            mask = causal_lower_right(seqlen_q, seqlen_k)
        gqa = q.shape[2] != k.shape[2]

        def fwd():
            with sdpa_kernel(backend):
                out = sdpa(qt, kt, vt, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)
            return out.transpose(1, 2)
        return fwd
    return build


def sdpa_backend(name: str, kind: str, description: str) -> Backend:
    return Backend(name, description, False, _cuda_only, _sdpa_build(kind))


# ---------------------------------------------------------------- FlexAttention

@functools.lru_cache(maxsize=1)
def _flex_compiled():
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention

    # One compilation per (shape, mask, grad mode): a sweep needs more than dynamo's default 8,
    # past which flex silently falls back to the unfused (slow) implementation.
    for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 256))
    return torch.compile(flex_attention, dynamic=False)


def _flex_unavailable(device: str) -> str | None:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"flex_attention import failed: {e}"
    return _cuda_only(device)


def _flex_build(q, k, v, shape, deterministic):
    from torch.nn.attention.flex_attention import create_block_mask

    flex = _flex_compiled()
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    offset = seqlen_k - seqlen_q
    left, right = shape.visible_window()
    block_mask = None
    if left >= 0 or right >= 0:
        unbounded = seqlen_q + seqlen_k
        lo, hi = -left if left >= 0 else -unbounded, right if right >= 0 else unbounded

        def visible(b, h, q_idx, kv_idx):  # bottom-right aligned, as flash256.reference
            rel = kv_idx - q_idx - offset
            return (rel >= lo) & (rel <= hi)

        block_mask = create_block_mask(visible, None, None, seqlen_q, seqlen_k, device=q.device)
    score_mod = None
    if shape.softcap:
        cap = shape.softcap

        def score_mod(score, b, h, q_idx, kv_idx):
            return cap * torch.tanh(score / cap)
    gqa = q.shape[2] != k.shape[2]
    return lambda: flex(qt, kt, vt, score_mod=score_mod, block_mask=block_mask, enable_gqa=gqa).transpose(1, 2)


# ---------------------------------------------------------------- flash-attn-4 (CuTe DSL)

@functools.lru_cache(maxsize=1)
def _fa4_func():
    try:
        from flash_attn.cute import flash_attn_func
    except ImportError:
        from flash_attn.cute.interface import flash_attn_func
    return flash_attn_func


def _fa4_unavailable(device: str) -> str | None:
    try:
        _fa4_func()
    except Exception as e:  # noqa: BLE001
        return f"flash_attn.cute not importable ({type(e).__name__})"
    return _cuda_only(device)


def _fa4_build(q, k, v, shape, deterministic):
    fa4 = _fa4_func()
    options = dict(causal=shape.causal, deterministic=deterministic)
    if shape.window != (-1, -1):
        options["window_size"] = tuple(None if side < 0 else side for side in shape.window)
    if shape.softcap:
        options["softcap"] = shape.softcap
    return lambda: _first(fa4(q, k, v, **options))


# ---------------------------------------------------------------- registry

def _static_backends() -> dict[str, Backend]:
    items = [
        flash256_backend(None),
        flash256_backend("portable"),
        flash256_backend("sm90"),
        sdpa_backend("sdpa-cudnn", "CUDNN_ATTENTION", "torch SDPA, cuDNN backend"),
        sdpa_backend("sdpa-flash", "FLASH_ATTENTION", "torch SDPA, FlashAttention-2 backend"),
        sdpa_backend("sdpa-efficient", "EFFICIENT_ATTENTION", "torch SDPA, memory-efficient backend"),
        sdpa_backend("sdpa-math", "MATH", "torch SDPA, math backend (slow, memory hungry)"),
        Backend("flex", "FlexAttention under torch.compile (causal / window via block mask, softcap via score_mod)",
                False,
                _flex_unavailable, _flex_build),
        Backend("fa4", "flash-attn-4: flash_attn.cute.flash_attn_func", False, _fa4_unavailable, _fa4_build),
    ]
    return {b.name: b for b in items}


BACKENDS = _static_backends()


def get_backend(name: str) -> Backend:
    """A known name, flash256-<implementation>, or either with ':exp2=K' (K eighths of the
    forward's exp2 on the FMA polynomial, e.g. flash256:exp2=2) for the emulation sweep."""
    base, _, option = name.partition(":")
    if option:
        if not (option.startswith("exp2=") and option[5:].isdigit() and base.startswith("flash256")):
            raise KeyError(f"unknown backend option {name!r}; flash256 backends take ':exp2=K' (K in 0..7)")
        impl = None if base == "flash256" else base[len("flash256-"):]
        return flash256_backend(impl, int(option[5:]))
    if name in BACKENDS:
        return BACKENDS[name]
    if name.startswith("flash256-"):  # an implementation added after this file was written
        return flash256_backend(name[len("flash256-"):])
    raise KeyError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}, flash256-<implementation>, "
                   "flash256[-<implementation>]:exp2=K")


def default_backend_names(device: str) -> list[str]:
    impls = flash256_implementations(device)
    # flash256 not importable: keep a 'flash256' column so the table says why (n/a + reason).
    names = ["flash256"] if not impls else [f"flash256-{i}" for i in impls]
    names += ["sdpa-cudnn", "sdpa-flash"]
    if _fa4_unavailable(device) is None:
        names.append("fa4")
    return names
