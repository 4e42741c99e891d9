"""flash256 inside real model code: small Gemma 2, Gemma 3, Qwen3-Next and gpt-oss models
from configs with random weights (no download), against transformers' eager attention."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import flash256.integrations.transformers as f256  # noqa: E402
from conftest import DEVICE  # noqa: E402

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=4,
              head_dim=256, max_position_embeddings=256, attention_dropout=0.0, num_hidden_layers=2)
CONFIGS = {
    # logit softcap 50 and a sliding window on alternate layers, GQA 2:1
    "gemma2": lambda: transformers.Gemma2Config(num_key_value_heads=2, sliding_window=16,
                                                attn_logit_softcapping=50.0, **COMMON),
    # sliding window on local layers, GQA 4:1, query_pre_attn_scalar scaling
    "gemma3": lambda: transformers.Gemma3TextConfig(
        num_key_value_heads=1, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
        **COMMON),
    # gated full attention beside linear attention, GQA 4:1 at head_dim 256
    "qwen3next": lambda: transformers.Qwen3NextConfig(
        num_key_value_heads=1, layer_types=["linear_attention", "full_attention"], **COMMON),
    # learnable sinks, sliding window
    "gptoss": lambda: transformers.GptOssConfig(
        num_key_value_heads=2, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
        num_local_experts=4, num_experts_per_tok=2, **{**COMMON, "head_dim": 64}),
}


def build(config, dtype, use_flash256, state=None):
    model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    if state is not None:
        model.load_state_dict(state)
    if use_flash256:
        f256.use_flash256(model)
    return model.to(device=DEVICE, dtype=dtype).train(False)


def logits_and_grad(model, ids):
    """Logits and the gradient of a loss w.r.t. every attention projection weight."""
    weights = [p for n, p in model.named_parameters() if "self_attn" in n and n.endswith("proj.weight")]
    logits = model(ids).logits
    grads = torch.autograd.grad(logits.float().logsumexp(-1).mean(), weights)
    return logits.detach().float(), [g.float() for g in grads]


@pytest.mark.parametrize("family", list(CONFIGS))
def test_model_matches_eager(family, monkeypatch):
    torch.manual_seed(0)
    config = CONFIGS[family]()
    reference = build(config, torch.float32, False)
    state = reference.state_dict()
    calls = []
    original = f256.flash_attn_func
    monkeypatch.setattr(f256, "flash_attn_func", lambda *a, **k: calls.append(1) or original(*a, **k))
    ids = torch.randint(0, config.vocab_size, (2, 40), device=DEVICE)

    ref_logits, ref_grads = logits_and_grad(reference, ids)
    low_logits, low_grads = logits_and_grad(build(config, torch.float16, False, state), ids)
    ours_logits, ours_grads = logits_and_grad(build(config, torch.float16, True, state), ids)
    assert calls, "flash256 was not called by the model"
    # The accuracy rule on the logits and on every attention weight gradient: flash256 in fp16
    # is at most twice as far from the fp32 eager model as eager attention in fp16 is.
    err, bound = (ours_logits - ref_logits).abs().max(), 2 * (low_logits - ref_logits).abs().max() + 1e-4
    assert err <= bound, (err, bound)
    for ours, low, ref in zip(ours_grads, low_grads, ref_grads):
        err, bound = (ours - ref).abs().max(), 2 * (low - ref).abs().max() + 1e-4
        assert err <= bound, (err, bound)


def test_compiled_training_step():
    """One torch.compile'd training step of a Gemma-2-style model through flash256."""
    torch.manual_seed(1)
    config = CONFIGS["gemma2"]()
    model = build(config, torch.float16, True).train(True)
    eager_model = copy.deepcopy(model)
    ids = torch.randint(0, config.vocab_size, (2, 32), device=DEVICE)

    def step(m):
        loss = m(ids, labels=ids).loss
        loss.backward()
        return loss.detach()

    compiled = torch.compile(step, backend="inductor" if DEVICE == "cuda" else "aot_eager")
    loss = compiled(model)
    expected = step(eager_model)
    assert torch.isfinite(loss) and abs(loss.item() - expected.item()) < 1e-2
    q_grad = model.model.layers[0].self_attn.q_proj.weight.grad
    q_grad_eager = eager_model.model.layers[0].self_attn.q_proj.weight.grad
    assert q_grad is not None and (q_grad.float() - q_grad_eager.float()).abs().max() < 1e-2


def test_padding_mask_is_rejected():
    torch.manual_seed(2)
    config = CONFIGS["gemma3"]()
    model = build(config, torch.float16, True)
    ids = torch.randint(0, config.vocab_size, (2, 12), device=DEVICE)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with pytest.raises(NotImplementedError, match="padding"):
        model(ids, attention_mask=mask)
