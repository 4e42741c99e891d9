"""flash256.flash_attn_func against the reference: outputs, LSE and gradients.

On a CPU-only machine the portable kernels run in Triton's interpreter on a small matrix;
with a GPU the full matrix runs (marked gpu).
"""
from dataclasses import replace as dataclasses_replace

import pytest
import torch
import triton
import triton.language as tl

import flash256
from flash256.kernels.scores import round_to
from flash256.testing import check_against_reference, reference_results
from conftest import DEVICE, HAS_CUDA

HEADS = [(6, 6), (6, 3), (6, 1)]                       # MHA, GQA, MQA
SEQLENS = [(1, 1), (64, 1), (113, 203), (128, 217), (255, 256), (1024, 1024)]


def make_inputs(batch, seqlen_q, seqlen_k, nheads, nheads_kv, head_dim, dtype, device=DEVICE):
    q = torch.randn(batch, seqlen_q, nheads, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch, seqlen_k, nheads_kv, head_dim, device=device, dtype=dtype)
    v = torch.randn(batch, seqlen_k, nheads_kv, head_dim, device=device, dtype=dtype)
    return q, k, v


def run_and_check(q, k, v, backward=True, backend="auto", exp2_poly_fraction=None, **options):
    q_, k_, v_ = (t.clone().requires_grad_(backward) for t in (q, k, v))
    out, lse = flash256.attention(q_, k_, v_, return_lse=True, backend=backend,
                                  exp2_poly_fraction=exp2_poly_fraction, **options)
    actual = {"out": out.detach()}
    dout = None
    if backward:
        dout = torch.randn_like(out)
        actual.update(zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q_, k_, v_), dout)))
    if backward and k.shape[1] == 1:
        # One key per query: dK is exactly 0, and both references get exactly 0 from the
        # softmax-backward identity; the kernel's dS = P * (dP - rowsum(dO * O)) leaves
        # fp32 cancellation noise (~1e-5) instead. Bound that noise separately.
        assert actual.pop("dk").abs().max().item() < 1e-4
    failures = check_against_reference(actual, q, k, v, dout, **options)
    assert not failures, failures
    ref_lse = reference_results(q, k, v, **options)[0]["lse"]
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite), "lse must be -inf exactly for rows that see no key"
    assert (lse[finite] - ref_lse[finite]).abs().max().item() <= 1e-3 if finite.any() else True
    return out, lse


def assert_bitwise_repeatable(q, k, v, dout, causal, runs):
    """deterministic=True: every run's (dq, dk, dv) equals the first bit for bit, and the first meets the
    accuracy rule (the deterministic path is its own kernel build at d <= 128)."""
    grads = []
    for _ in range(runs):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = flash256.flash_attn_func(*leaves, causal=causal, deterministic=True)
        grads.append(torch.autograd.grad(out, leaves, dout))
    failures = check_against_reference(dict(zip(("dq", "dk", "dv"), grads[0])), q, k, v, dout, causal=causal)
    assert not failures, failures
    for run in grads[1:]:
        for a, b in zip(grads[0], run):
            assert torch.equal(a, b)


# --- CPU (interpreter) matrix: every head dim class, causal, GQA, ragged seqlens --------

CPU_CASES = [
    (d, causal, heads, seqlens)
    for d in (64, 128, 256)
    for causal in (False, True)
    for heads in [(4, 4), (4, 2), (4, 1)]
    for seqlens in [(1, 1), (64, 1), (113, 203), (255, 256)]
    if not (heads != (4, 2) and seqlens in [(1, 1), (64, 1)])
]


@pytest.mark.skipif(HAS_CUDA, reason="the GPU matrix below covers this")
@pytest.mark.parametrize("head_dim,causal,heads,seqlens", CPU_CASES)
def test_interpreter_fp16(head_dim, causal, heads, seqlens):
    torch.manual_seed(0)
    q, k, v = make_inputs(1, *seqlens, *heads, head_dim, torch.float16)
    run_and_check(q, k, v, causal=causal)


@pytest.mark.skipif(HAS_CUDA, reason="the GPU matrix below covers this")
@pytest.mark.parametrize("head_dim,causal,seqlens,heads", [(96, True, (113, 203), (4, 2)),
                                                           (192, False, (113, 203), (4, 2)),
                                                           (256, True, (113, 203), (4, 2)),
                                                           (128, False, (64, 1), (4, 4))])
def test_interpreter_bf16(head_dim, causal, seqlens, heads):
    """(64, 1) without GQA: every P is exactly 1, so both references' dV is the exact sum rounded once and the
    bound is ~0: it holds only if the kernels round fp32 -> bf16 to nearest even, as the GPU does
    (scores.round_to)."""
    torch.manual_seed(1)
    q, k, v = make_inputs(2, *seqlens, *heads, head_dim, torch.bfloat16)
    run_and_check(q, k, v, causal=causal)


@triton.jit
def _round_to_bf16(x_ptr, o_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(o_ptr + offs, round_to(tl.load(x_ptr + offs), tl.bfloat16, True))


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter's own casts; the GPU rounds in hardware")
def test_interpreter_round_to_bf16_is_round_to_nearest_even():
    x = torch.tensor([0.9999999, 12.3102, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -0.0933838, 3.3e38, float("inf"),
                      -float("inf"), 1e-40, -2.5, 0.0, float("nan")] + [0.0] * 4)
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    _round_to_bf16[(1,)](x, out, x.numel())
    expected = x.to(torch.bfloat16)  # torch rounds to nearest even (ties: 1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6)
    assert torch.equal(out[:11].float(), expected[:11].float()), (out, expected)
    assert out[11].isnan()


# --- GPU matrix ------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "portable"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seqlens", SEQLENS)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 96, 128, 192, 256])
def test_gpu_matrix(head_dim, causal, heads, seqlens, dtype, backend):
    """auto runs the Hopper fast path where it applies (sm_90, d in 64/128/256)."""
    torch.manual_seed(0)
    q, k, v = make_inputs(2, *seqlens, *heads, head_dim, dtype)
    run_and_check(q, k, v, causal=causal, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "portable"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [128, 256])
def test_gpu_long(head_dim, causal, backend):
    torch.manual_seed(0)
    q, k, v = make_inputs(1, 4224, 4224, 4, 2, head_dim, torch.bfloat16)
    run_and_check(q, k, v, causal=causal, backend=backend)


@pytest.mark.gpu
def test_gpu_auto_uses_fast_path_on_hopper():
    from flash256 import dispatch
    q = torch.empty(1, 8, 2, 256, device="cuda", dtype=torch.bfloat16)
    args = dispatch.AttentionArgs(0.1, True, (-1, -1), 0.0, None, None, None, 8, 8, False)
    expected = "sm90" if torch.cuda.get_device_capability() == (9, 0) else "portable"
    assert dispatch.select("forward", q, args).name == expected
    assert dispatch.select("forward", q[:, :1], args).name == expected  # one query row too
    for direction in ("forward", "backward"):
        assert dispatch.select(direction, q, args).name == expected
        assert dispatch.select(direction, q, dataclasses_replace(args, softcap=5.0)).name == expected
        assert dispatch.select(direction, q, dataclasses_replace(args, window=(8, 0))).name == expected
        sink = torch.zeros(2, device="cuda")
        assert dispatch.select(direction, q, dataclasses_replace(args, sink=sink)).name == expected
        cu = torch.tensor([0, 8], device="cuda", dtype=torch.int32)
        varlen = dataclasses_replace(args, cu_seqlens_q=cu, cu_seqlens_k=cu)
        assert dispatch.select(direction, q, varlen).name == expected


@pytest.mark.gpu
@pytest.mark.parametrize("scheduler", ["single", "static", "dynamic"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_gpu_forward_schedulers(head_dim, causal, scheduler, monkeypatch):
    """Every tile scheduler of the Gluon forward (FLASH256_SCHEDULER) gives the reference's answer; the
    persistent ones run 272 tiles (17 x 2 x 8; d=64's 192-row tiles: 176) on at most one CTA per SM, so
    CTAs take several."""
    monkeypatch.setenv("FLASH256_SCHEDULER", scheduler)
    torch.manual_seed(4)
    q, k, v = make_inputs(2, 2100, 1500, 8, 2, head_dim, torch.bfloat16)
    run_and_check(q, k, v, causal=causal)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_gpu_deterministic_bitwise(head_dim, causal):
    """deterministic=True repeats bit for bit, GQA 6:1: the Gluon backward on Hopper (no atomics in either dK/dV
    split) and any faster atomic path must keep to it."""
    torch.manual_seed(9)
    q, k, v = make_inputs(2, 1024, 1024, 6, 1, head_dim, torch.bfloat16)
    assert_bitwise_repeatable(q, k, v, torch.randn_like(q), causal, runs=3)


@pytest.mark.gpu
def test_gpu_index_past_2_31():
    """batch * seqlen * nheads * head_dim > 2^31: 64-bit offsets everywhere."""
    torch.manual_seed(0)
    batch, seqlen, nheads, head_dim = 4100, 256, 8, 256
    assert batch * seqlen * nheads * head_dim > 2**31
    q, k, v = make_inputs(batch, seqlen, seqlen, nheads, nheads, head_dim, torch.bfloat16)
    q.requires_grad_(); k.requires_grad_(); v.requires_grad_()
    out = flash256.flash_attn_func(q, k, v, causal=True)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    tail = slice(batch - 3, batch)  # the last batches sit past 2^31 elements
    actual = {"out": out[tail].detach(), "dq": dq[tail], "dk": dk[tail], "dv": dv[tail]}
    failures = check_against_reference(actual, q[tail].detach(), k[tail].detach(),
                                       v[tail].detach(), dout[tail], causal=True)
    assert not failures, failures


# --- options ---------------------------------------------------------------------------

@pytest.mark.parametrize("window,causal", [((16, 0), False), ((32, 8), False), ((24, -1), True), ((-1, 5), False)])
def test_sliding_window(window, causal):
    torch.manual_seed(2)
    q, k, v = make_inputs(1, 113, 203, 4, 2, 64, torch.float16)
    run_and_check(q, k, v, causal=causal, window_size=window)


def test_softmax_scale():
    torch.manual_seed(3)
    q, k, v = make_inputs(1, 70, 90, 2, 1, 128, torch.float16)
    run_and_check(q, k, v, softmax_scale=0.3, causal=True)


def test_causal_rows_without_keys():
    """seqlen_q > seqlen_k, causal: the first rows see nothing -> out 0, lse -inf, grads 0."""
    torch.manual_seed(4)
    q, k, v = make_inputs(1, 100, 40, 2, 2, 64, torch.float16)
    out, lse = run_and_check(q, k, v, causal=True)
    assert torch.all(out[:, :60] == 0)
    assert torch.all(lse[:, :, :60] == float("-inf"))


def test_lse_gradient():
    """A loss through lse gets the gradient of logsumexp (folded into delta)."""
    torch.manual_seed(5)
    q, k, v = make_inputs(1, 80, 96, 2, 1, 64, torch.float16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = flash256.flash_attn_func(*leaves, causal=True, return_lse=True)
    dlse = torch.randn_like(lse)
    grads = torch.autograd.grad([out, lse], leaves, [torch.zeros_like(out), dlse])
    ref_leaves = [t.float().clone().requires_grad_() for t in (q, k, v)]
    from flash256.reference import attention_ref
    _, ref_lse = attention_ref(*ref_leaves, causal=True)
    ref_grads = torch.autograd.grad(ref_lse, ref_leaves, dlse, allow_unused=True)
    ref_grads = [torch.zeros_like(t) if g is None else g for t, g in zip(ref_leaves, ref_grads)]
    assert ref_grads[0].abs().max() > 0.1  # the lse path really carries a gradient
    for g, r in zip(grads, ref_grads):
        assert (g.float() - r).abs().max().item() < 1e-2 * max(1.0, r.abs().max().item())


def test_reference_results_with_dlse():
    """The test helper's gradients include <lse, dlse> when asked (the check script's lse cases use it)."""
    from flash256.reference import attention_ref
    from flash256.testing import reference_results
    torch.manual_seed(10)
    q, k, v = make_inputs(1, 40, 56, 2, 1, 64, torch.float16, device="cpu")
    dout, dlse = torch.randn_like(q), torch.randn(1, 2, 40)
    with_lse = reference_results(q, k, v, dout, dlse, causal=True)[0]
    leaves = [t.float().requires_grad_() for t in (q, k, v)]
    out, lse = attention_ref(*leaves, causal=True)
    expected = torch.autograd.grad((out * dout.float()).sum() + (lse * dlse).sum(), leaves)
    without = reference_results(q, k, v, dout, causal=True)[0]
    for name, e in zip(("dq", "dk", "dv"), expected):
        assert torch.allclose(with_lse[name].float(), e, atol=1e-3, rtol=1e-3)  # fp16 leaves: grads in fp16
    assert (with_lse["dq"] - without["dq"]).abs().max() > 1e-2


def test_deterministic_bitwise():
    torch.manual_seed(6)
    q, k, v = make_inputs(1, 130, 130, 4, 2, 64, torch.float16)
    assert_bitwise_repeatable(q, k, v, torch.ones_like(q), causal=True, runs=2)


def test_inputs_not_modified():
    torch.manual_seed(7)
    q, k, v = make_inputs(1, 65, 65, 2, 2, 64, torch.float16)
    copies = [t.clone() for t in (q, k, v)]
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = flash256.flash_attn_func(*leaves, causal=True)
    out.backward(torch.randn_like(out))
    for t, c in zip((q, k, v), copies):
        assert torch.equal(t.detach(), c)


def test_non_contiguous_inputs():
    """Strided views (e.g. a slice of a packed qkv tensor) give the same answer as copies."""
    torch.manual_seed(8)
    qkv = torch.randn(1, 77, 3, 4, 64, device=DEVICE, dtype=torch.float16)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out = flash256.flash_attn_func(q, k, v, causal=True)
    expected = flash256.flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("shape_q,shape_kv", [((0, 16, 2, 64), (0, 16, 2, 64)),
                                              ((2, 0, 2, 64), (2, 16, 2, 64)),
                                              ((2, 16, 2, 64), (2, 0, 2, 64))])
def test_empty_inputs(shape_q, shape_kv):
    q = torch.randn(shape_q, device=DEVICE, dtype=torch.float16, requires_grad=True)
    k = torch.randn(shape_kv, device=DEVICE, dtype=torch.float16, requires_grad=True)
    v = torch.randn(shape_kv, device=DEVICE, dtype=torch.float16, requires_grad=True)
    out, lse = flash256.flash_attn_func(q, k, v, return_lse=True)
    assert out.shape == q.shape and lse.shape == (shape_q[0], shape_q[2], shape_q[1])
    assert torch.all(out == 0)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape
