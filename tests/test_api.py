"""Bad input gets a clear exception naming the argument; the op traces under torch.compile."""
import pytest
import torch

import flash256
from conftest import DEVICE, HAS_CUDA


def qkv(shape_q=(1, 8, 2, 64), shape_kv=None, dtype=torch.float16, device=DEVICE):
    shape_kv = shape_kv or shape_q
    return (torch.randn(shape_q, dtype=dtype, device=device),
            torch.randn(shape_kv, dtype=dtype, device=device),
            torch.randn(shape_kv, dtype=dtype, device=device))


@pytest.mark.parametrize("mutate,error,match", [
    (lambda q, k, v: (q.float(), k, v), TypeError, "q must be float16 or bfloat16"),
    (lambda q, k, v: (q, k.bfloat16(), v), TypeError, "share one dtype"),
    (lambda q, k, v: (q[0], k, v), ValueError, "q must have 4 dimensions"),
    (lambda q, k, v: (q, k, v[:, :4]), ValueError, "k and v must have the same shape"),
    (lambda q, k, v: (q, k[:1].expand(2, -1, -1, -1), v[:1].expand(2, -1, -1, -1)), ValueError, "batch size"),
    (lambda q, k, v: (q, k[..., :32], v[..., :32]), ValueError, "head_dim"),
    (lambda q, k, v: (q[..., :60], k[..., :60], v[..., :60]), ValueError, "head_dim must be a multiple of 8"),
    (lambda q, k, v: (torch.randn(1, 8, 3, 64, dtype=q.dtype, device=q.device), k, v), ValueError,
     "multiple of nheads_kv"),
    (lambda q, k, v: (q.transpose(2, 3).contiguous().transpose(2, 3), k, v), ValueError,
     "q must have a contiguous last dimension"),
    (lambda q, k, v: ("q", k, v), TypeError, "q must be a torch.Tensor"),
])
def test_bad_inputs(mutate, error, match):
    with pytest.raises(error, match=match):
        flash256.flash_attn_func(*mutate(*qkv()))


def test_bad_varlen_inputs():
    q, k, v = (t[0] for t in qkv())
    cu = torch.tensor([0, 8], dtype=torch.int32, device=q.device)
    with pytest.raises(TypeError, match="cu_seqlens_q must be int32"):
        flash256.flash_attn_varlen_func(q, k, v, cu.long(), cu, 8, 8)
    with pytest.raises(ValueError, match="same length"):
        flash256.flash_attn_varlen_func(q, k, v, cu, torch.tensor([0, 4, 8], dtype=torch.int32,
                                                                  device=q.device), 8, 8)
    with pytest.raises(ValueError, match="q must have 3 dimensions"):
        flash256.flash_attn_varlen_func(q[None], k, v, cu, cu, 8, 8)


def test_head_dim_too_large():
    with pytest.raises(ValueError, match="head_dim must be a multiple of 8 in"):
        flash256.flash_attn_func(*qkv((1, 4, 1, 264)))


def test_bad_options():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="window_size"):
        flash256.flash_attn_func(q, k, v, window_size=(-2, 0))
    with pytest.raises(ValueError, match="softmax_scale"):
        flash256.flash_attn_func(q, k, v, softmax_scale=float("nan"))
    with pytest.raises(ValueError, match="softcap"):
        flash256.flash_attn_func(q, k, v, softcap=-1.0)
    with pytest.raises(ValueError, match="learnable_sink"):
        flash256.flash_attn_func(q, k, v, learnable_sink=torch.zeros(3, device=q.device))
    with pytest.raises(ValueError, match="backend must be one of"):
        flash256.attention(q, k, v, backend="cudnn")


@pytest.mark.skipif(not HAS_CUDA, reason="device mismatch needs a GPU")
def test_mixed_devices():
    q, k, v = qkv(device="cuda")
    with pytest.raises(ValueError, match="one device"):
        flash256.flash_attn_func(q, k.cpu(), v)


def test_cpu_tensors_need_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="must be CUDA tensors"):
        flash256.flash_attn_func(*qkv(device="cpu"))


def test_torch_compile_no_graph_break():
    torch.manual_seed(0)
    q, k, v = (t.requires_grad_() for t in qkv((1, 40, 2, 64)))

    def layer(q, k, v):
        return flash256.flash_attn_func(q * 2.0, k, v, causal=True).sum()

    compiled = torch.compile(layer, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    expected_loss = layer(q, k, v)
    expected = torch.autograd.grad(expected_loss, (q, k, v))
    assert torch.allclose(loss, expected_loss, rtol=1e-3, atol=1e-2)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, rtol=1e-3, atol=1e-3)


def test_eager_calls_skip_the_custom_op_layer():
    """Eager autograd runs the kernels under a plain autograd.Function (the custom ops' dispatch costs
    ~130 us of Python per call); the unused lse reaches the backward as None, not a zero tensor."""
    from flash256 import interface
    q, k, v = (t.requires_grad_() for t in qkv())
    seen = {}
    backward = interface._backward

    def spy(dout, dlse, *rest):
        seen["dlse"] = dlse
        return backward(dout, dlse, *rest)
    out = flash256.flash_attn_func(q, k, v)
    assert type(out.grad_fn).__name__ == "_EagerAttentionBackward"
    interface._backward = spy
    try:
        out.sum().backward()
    finally:
        interface._backward = backward
    assert "dlse" in seen and seen["dlse"] is None
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))


def test_available_backends():
    assert "portable" in flash256.available_backends(DEVICE)


@pytest.mark.skipif(HAS_CUDA, reason="dispatch without a GPU")
def test_interpreter_dispatch_is_portable():
    """Without a GPU both directions run the portable kernels; asking for the Gluon ones says why not."""
    from flash256 import dispatch
    q = torch.empty(1, 8, 2, 256, dtype=torch.float16)
    args = dispatch.AttentionArgs(0.1, True, (-1, -1), 0.0, None, None, None, 8, 8, False)
    for direction in ("forward", "backward"):
        assert dispatch.select(direction, q, args).name == "portable"
        with pytest.raises(NotImplementedError, match=f"no {direction} kernel for head_dim 256"):
            dispatch.select(direction, q, args, backend="sm90")
