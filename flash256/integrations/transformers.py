"""flash256 as a Hugging Face transformers attention implementation.

    import flash256.integrations.transformers as f256
    model = AutoModelForCausalLM.from_config(config)          # or from_pretrained(...)
    f256.use_flash256(model)                                  # attn_implementation == "flash256"

transformers (5.x) resolves any implementation name containing "flash" at load time as a
flash-attn build or a Hub kernel (`attn_implementation="flash256"` in from_config raises
there), so `use_flash256` registers the function and sets the model's implementation name
directly; from then on every attention layer calls flash256. Where transformers accepts
registered names at load time, `register()` and `attn_implementation="flash256"` also work.

transformers hands the attention function q/k/v as (batch, heads, seq, head_dim) plus the
layer's options: `scaling`, `sliding_window` (a token sees itself and the W - 1 before it),
`softcap` (Gemma 2) and, for gpt-oss-style layers, `module.sinks`. The mask function is
transformers' flash-attention one: no mask at all unless there is padding, which flash256's
dense API cannot express (pack the batch with flash_attn_varlen_func instead).
"""
from ..interface import flash_attn_func

NAME = "flash256"


def flash256_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                               scaling=None, sliding_window=None, softcap=None, is_causal=None,
                               **kwargs):
    if dropout:
        raise NotImplementedError("flash256 has no attention dropout; use dropout=0 (eval, or "
                                  "attention_dropout=0.0 in the config)")
    if attention_mask is not None:
        raise NotImplementedError(
            "flash256 got an attention mask (padding): the dense API supports causal, sliding "
            "window and softcap masks only; pack padded sequences with flash_attn_varlen_func")
    if kwargs.get("output_attentions"):
        raise NotImplementedError("flash256 does not materialise attention weights")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    window = (sliding_window - 1, sliding_window - 1) if sliding_window else (-1, -1)
    out = flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                          softmax_scale=scaling, causal=bool(causal), window_size=window,
                          softcap=softcap or 0.0, learnable_sink=getattr(module, "sinks", None))
    return out, None


def use_flash256(model):
    """Switch a transformers model (and its sub-configs) to flash256 attention; returns it."""
    register()
    configs = [model.config] + [getattr(model.config, key) for key in getattr(model.config, "sub_configs", {})]
    for config in configs:
        if config is not None:
            config._attn_implementation_internal = NAME
    return model


def register() -> str:
    """Register "flash256" with transformers' attention and mask registries; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(NAME, flash256_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    return NAME


__all__ = ["register", "use_flash256", "flash256_attention_forward", "NAME"]
