"""Model features against the reference: softcap, learnable sinks, varlen, and combinations."""
import random

import pytest
import torch

import flash256
from flash256.reference import attention_ref
from flash256.testing import accuracy_check, check_against_reference, reference_results
from conftest import DEVICE
from test_attention import make_inputs, run_and_check


@pytest.mark.parametrize("softcap,causal", [(50.0, False), (5.0, True)])
@pytest.mark.parametrize("head_dim", [64, 256])
def test_softcap(softcap, causal, head_dim):
    torch.manual_seed(10)
    q, k, v = make_inputs(1, 97, 131, 4, 2, head_dim, torch.float16)
    q = q * 3  # large scores, so the cap really bends them
    run_and_check(q, k, v, causal=causal, softcap=softcap)


def _sink_case(causal, seqlens=(90, 120), window=(-1, -1), softcap=0.0, head_dim=64):
    torch.manual_seed(11)
    q, k, v = make_inputs(1, *seqlens, 4, 2, head_dim, torch.float16)
    sink = torch.randn(4, device=DEVICE, dtype=torch.float32) * 2
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sink)]
    out, lse = flash256.flash_attn_func(*leaves[:3], causal=causal, window_size=window,
                                        softcap=softcap, learnable_sink=leaves[3], return_lse=True)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    options = dict(causal=causal, window_size=window, softcap=softcap)
    results = []
    for upcast in (True, False):
        ref_leaves = [t.clone().requires_grad_() for t in (q, k, v, sink)]
        ref_out, ref_lse = attention_ref(*ref_leaves[:3], learnable_sink=ref_leaves[3],
                                         upcast=upcast, **options)
        results.append((ref_out, ref_lse, torch.autograd.grad(ref_out, ref_leaves, dout)))
    (ref_out, ref_lse, ref_grads), (low_out, _, low_grads) = results
    checks = [accuracy_check("out", out, ref_out, low_out)]
    checks += [accuracy_check(n, g, r, lo) for n, g, r, lo in zip(("dq", "dk", "dv"), grads, ref_grads, low_grads)]
    failures = [msg for ok, msg in checks if not ok]
    assert not failures, failures
    assert (lse - ref_lse).abs().max().item() < 1e-3
    # The sink gradient has no low-precision twin in the rule: compare with a relative bound.
    dsink, ref_dsink = grads[3], ref_grads[3]
    assert ref_dsink.abs().max() > 1e-3
    assert (dsink - ref_dsink).abs().max().item() <= 1e-2 * ref_dsink.abs().max().item() + 1e-4


@pytest.mark.parametrize("causal", [False, True])
def test_learnable_sink(causal):
    _sink_case(causal)


def test_sink_rows_without_keys():
    """seqlen_q > seqlen_k, causal: early rows see only the sink: out 0, lse = sink."""
    _sink_case(True, seqlens=(100, 40))


def test_combined_window_softcap_sink_gqa_causal():
    _sink_case(True, seqlens=(150, 170), window=(32, 0), softcap=30.0, head_dim=128)


def _random_case(seed):
    """One random combination of the options on a small shape: odd head dims and seqlens, one side of a window or
    both, GQA, bf16 or fp16. Such a sweep caught the interpreter's truncating bf16 casts (NOTES.md)."""
    rnd = random.Random(seed)
    nheads_kv = rnd.choice([1, 2])
    causal = rnd.random() < 0.5
    window = (rnd.choice([-1, 0, 5, 40]), 0 if causal else rnd.choice([-1, 0, 3, 50])) if rnd.random() < 0.4 \
        else (-1, -1)
    return dict(batch=rnd.choice([1, 2]), seqlens=(rnd.choice([1, 2, 17, 63, 65, 100, 129]),
                                                   rnd.choice([1, 3, 17, 64, 65, 100, 130])),
                heads=(nheads_kv * rnd.choice([1, 2, 3]), nheads_kv),
                head_dim=rnd.choice([8, 24, 40, 64, 72, 96, 128, 136, 200, 256]),
                dtype=rnd.choice([torch.bfloat16, torch.float16]),
                options=dict(causal=causal, window_size=window, softcap=rnd.choice([0.0, 0.0, 5.0])))


@pytest.mark.parametrize("seed", range(3000, 3024))
def test_random_combinations(seed):
    case = _random_case(seed)
    torch.manual_seed(seed)
    q, k, v = make_inputs(case["batch"], *case["seqlens"], *case["heads"], case["head_dim"], case["dtype"])
    run_and_check(q, k, v, **case["options"])


def _varlen_case(seqlens_q, seqlens_k, causal=False, window=(-1, -1), softcap=0.0, sink=False,
                 head_dim=64, nheads=4, nheads_kv=2, dtype=torch.float16):
    """Varlen output and grads must equal running each sequence on its own (to rounding)."""
    torch.manual_seed(12)
    total_q, total_k = sum(seqlens_q), sum(seqlens_k)
    q = torch.randn(total_q, nheads, head_dim, device=DEVICE, dtype=dtype)
    k = torch.randn(total_k, nheads_kv, head_dim, device=DEVICE, dtype=dtype)
    v = torch.randn(total_k, nheads_kv, head_dim, device=DEVICE, dtype=dtype)
    sink_t = torch.randn(nheads, device=DEVICE) if sink else None
    cu_q = torch.tensor([0] + list(torch.tensor(seqlens_q).cumsum(0)), dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0] + list(torch.tensor(seqlens_k).cumsum(0)), dtype=torch.int32, device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = flash256.flash_attn_varlen_func(
        *leaves, cu_q, cu_k, max(seqlens_q), max(seqlens_k), causal=causal, window_size=window,
        softcap=softcap, learnable_sink=sink_t, return_lse=True)
    assert out.shape == q.shape and lse.shape == (nheads, total_q)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, leaves, dout)
    options = dict(causal=causal, window_size=window, softcap=softcap)
    if sink:
        options["learnable_sink"] = sink_t
    for b in range(len(seqlens_q)):
        sq, sk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if seqlens_q[b] == 0:
            continue
        seq = [t[s][None] for t, s in ((q, sq), (k, sk), (v, sk))]
        if seqlens_k[b] == 0:
            expected_lse = sink_t[:, None].expand(-1, seqlens_q[b]) if sink else float("-inf")
            assert torch.all(out[sq] == 0) and torch.all(dq[sq] == 0)
            assert torch.all(lse[:, sq] == expected_lse)
            continue
        actual = {"out": out[sq][None], "dq": dq[sq][None], "dk": dk[sk][None], "dv": dv[sk][None]}
        failures = check_against_reference(actual, *seq, dout[sq][None], **options)
        assert not failures, (b, failures)
        ref_lse = reference_results(*seq, **options)[0]["lse"][0]
        finite = torch.isfinite(ref_lse)
        assert torch.equal(torch.isfinite(lse[:, sq]), finite)
        assert (lse[:, sq][finite] - ref_lse[finite]).abs().max().item() < 1e-3


def test_varlen():
    _varlen_case([37, 64, 1, 100], [50, 64, 7, 100])


def test_varlen_causal_with_empty_sequences():
    _varlen_case([30, 0, 70, 20], [45, 10, 70, 0], causal=True)


def test_varlen_combined():
    _varlen_case([40, 90], [60, 90], causal=True, window=(24, 0), softcap=20.0, head_dim=128)


def test_varlen_sink():
    _varlen_case([40, 90, 12], [60, 90, 0], causal=True, sink=True)


def test_varlen_everything_combined():
    """Window + soft cap + GQA + causal + sink in one packed batch with an empty sequence."""
    _varlen_case([40, 0, 90], [60, 10, 90], causal=True, window=(24, 0), softcap=20.0, sink=True, head_dim=128)


@pytest.mark.gpu
@pytest.mark.parametrize("causal,window,softcap", [(False, (-1, -1), 0.0), (True, (-1, -1), 0.0),
                                                  (True, (100, 0), 30.0), (False, (64, 33), 0.0)])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_gpu_varlen(head_dim, causal, window, softcap):
    """Packed batches through auto dispatch (the Gluon kernels on Hopper): query and key tiles that run
    into the next sequence, empty and one-row sequences, a sequence longer than the others."""
    from flash256 import dispatch
    if torch.cuda.get_device_capability() == (9, 0):
        cu = torch.tensor([0, 8], device=DEVICE, dtype=torch.int32)
        args = dispatch.AttentionArgs(0.1, causal, window, softcap, None, cu, cu, 8, 8, False)
        q = torch.empty(1, 8, 4, head_dim, device=DEVICE, dtype=torch.bfloat16)
        assert dispatch.select("forward", q, args).name == dispatch.select("backward", q, args).name == "sm90"
    _varlen_case([1, 300, 0, 1000, 129, 64], [5, 517, 10, 1000, 0, 200], causal, window, softcap,
                 head_dim=head_dim, dtype=torch.bfloat16)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.875])
@pytest.mark.parametrize("head_dim,causal", [(64, True), (256, False)])
def test_exp2_emulation_meets_accuracy_rule(fraction, head_dim, causal):
    """The polynomial exp2 (flash256.ex2) keeps outputs and gradients within the rule."""
    torch.manual_seed(13)
    q, k, v = make_inputs(1, 130, 150, 4, 2, head_dim, torch.float16)
    run_and_check(q, k, v, causal=causal, exp2_poly_fraction=fraction)


def test_exp2_emulation_changes_bits_not_accuracy():
    """A real switch: the emulated forward differs in low bits from the hardware one."""
    torch.manual_seed(14)
    q, k, v = make_inputs(1, 256, 256, 2, 2, 64, torch.float16)
    hw = flash256.flash_attn_func(q, k, v, exp2_poly_fraction=0)
    poly = flash256.flash_attn_func(q, k, v, exp2_poly_fraction=0.75)
    assert not torch.equal(hw, poly)
    assert (hw.float() - poly.float()).abs().max().item() < 1e-2


def test_exp2_emulation_bad_fraction(monkeypatch):
    q, k, v = make_inputs(1, 8, 8, 2, 2, 64, torch.float16)
    with pytest.raises(ValueError, match="exp2_poly_fraction must be a multiple of 1/8"):
        flash256.flash_attn_func(q, k, v, exp2_poly_fraction=0.3)
    with pytest.raises(ValueError, match="exp2_poly_fraction"):
        flash256.flash_attn_func(q, k, v, exp2_poly_fraction=1.0)
    monkeypatch.setenv("FLASH256_EXP2_POLY_FRACTION", "2")
    with pytest.raises(ValueError, match="FLASH256_EXP2_POLY_FRACTION"):
        flash256.flash_attn_func(q, k, v)


@pytest.mark.parametrize("causal,window,expected", [
    (False, (-1, -1), (False, False)), (True, (-1, -1), (False, True)), (False, (16, 0), (True, True)),
    (True, (24, -1), (True, True)), (False, (-1, 5), (False, True)), (False, (7, -1), (True, False))])
def test_sm90_mask_arguments(causal, window, expected):
    """The Gluon kernels mask a window side only when its flag is on; causal forces right = 0; an
    unbounded or huge side is clamped so the kernels' int32 index arithmetic cannot overflow."""
    from flash256.kernels.sm90_masking import mask_arguments
    left, right, flags = mask_arguments(100, 300, causal, window)
    assert (flags["LEFT_BOUNDED"], flags["RIGHT_BOUNDED"]) == expected
    assert right == (0 if causal else (window[1] if window[1] >= 0 else 401))
    assert left == (window[0] if window[0] >= 0 else 401)
    assert mask_arguments(100, 300, False, (2**31 - 1, 2**31 - 1))[:2] == (401, 401)


def test_sm90_default_scheduler():
    """The Gluon forward goes persistent ("dynamic") by default; one tile per CTA only at d=256 with a window, soft
    cap or sink, and with the exp2 polynomial, where the persistent kernel did not measure ahead."""
    from flash256.kernels.sm90_fwd import CONFIGS, default_scheduler
    plain = dict(window=(-1, -1), softcap=0.0, has_sink=False)
    for d in (256, 128, 64):
        assert default_scheduler(CONFIGS[d], **plain) == "dynamic"
        assert default_scheduler(CONFIGS[d], **plain, poly_eighths=2) == "single"
    for change in (dict(window=(4096, 0)), dict(softcap=30.0), dict(has_sink=True)):
        assert default_scheduler(CONFIGS[256], **{**plain, **change}) == "single"
        for d in (128, 64):
            assert default_scheduler(CONFIGS[d], **{**plain, **change}) == "dynamic"
