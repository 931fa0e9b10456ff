"""The bridge between our `ModelConfig` and a checkpoint directory's `config.json`.

`to_hf_config` writes transformers' `GlmForCausalLM` config (naming "hf") or THUDM's ChatGLM
config (naming "thudm"). rope theta is written as 10000 x rope_ratio: transformers' own GLM
converter writes 10000 whatever rope_ratio was, which silently breaks chat / 1M models.
`check_against` compares a checkpoint's config.json with ours and names the first field that
disagrees in a way shapes cannot reveal (rope theta, rotary fraction, norm eps, bias).
"""

from __future__ import annotations

import math
from typing import Any

from glm_jax.config import ModelConfig
from glm_jax.convert.keymap import ConversionError

_TORCH_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def to_hf_config(cfg: ModelConfig, naming: str, dtype: str, eos_token_ids: list[int] | None = None,
                 pad_token_id: int | None = None) -> dict[str, Any]:
    """config.json contents for a checkpoint of `cfg` written with `naming` in `dtype`."""
    if naming == "hf":
        out = {
            "architectures": ["GlmForCausalLM"],
            "model_type": "glm",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.ffn_hidden_size,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": cfg.rms_norm_eps,
            "attention_bias": cfg.qkv_bias,
            "attention_dropout": 0.0,
            "max_position_embeddings": cfg.max_seq_len,
            "tie_word_embeddings": False,
            "initializer_range": cfg.init_std,
            "use_cache": True,
            # transformers >= 5 reads rope_parameters; 4.x reads the two top-level keys.
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                                "partial_rotary_factor": cfg.rotary_fraction},
            "rope_theta": cfg.rope_theta,
            "partial_rotary_factor": cfg.rotary_fraction,
            "torch_dtype": _TORCH_DTYPE[dtype],
            "dtype": _TORCH_DTYPE[dtype],
        }
    elif naming == "thudm":
        out = {
            "architectures": ["ChatGLMModel"],
            "model_type": "chatglm",
            "padded_vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "ffn_hidden_size": cfg.ffn_hidden_size,
            "num_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "multi_query_attention": cfg.num_kv_heads != cfg.num_heads,
            "multi_query_group_num": cfg.num_kv_heads,
            "kv_channels": cfg.head_dim,
            "layernorm_epsilon": cfg.rms_norm_eps,
            "rmsnorm": True,
            "add_qkv_bias": cfg.qkv_bias,
            "add_bias_linear": False,
            "apply_residual_connection_post_layernorm": False,
            "post_layer_norm": True,
            "rope_ratio": cfg.rope_ratio,
            "seq_length": cfg.max_seq_len,
            "torch_dtype": _TORCH_DTYPE[dtype],
        }
    else:
        raise ConversionError(f"naming must be 'hf' or 'thudm', got {naming!r}")
    if eos_token_ids:
        out["eos_token_id"] = eos_token_ids if len(eos_token_ids) > 1 else eos_token_ids[0]
    out["pad_token_id"] = pad_token_id  # always stated: GlmConfig's default (151329) may lie outside our vocab
    return out


def _hf_rope(hf: dict) -> tuple[float, float]:
    rope = hf.get("rope_parameters") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    fraction = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
    return float(theta), float(fraction)


def check_against(hf: dict, cfg: ModelConfig) -> None:
    """Raises ConversionError naming the first field where a checkpoint's config.json disagrees
    with `cfg` (only fields it states are compared)."""
    if hf.get("model_type") == "chatglm":
        pairs = [("padded_vocab_size", cfg.vocab_size, "model.vocab_size"),
                 ("num_layers", cfg.num_layers, "model.num_layers"),
                 ("multi_query_group_num", cfg.num_kv_heads, "model.kv_groups"),
                 ("layernorm_epsilon", cfg.rms_norm_eps, "model.rms_norm_eps"),
                 ("rope_ratio", cfg.rope_ratio, "model.rope_ratio")]
        stated = {k: hf[k] for k, _, _ in pairs if k in hf}
        stated.setdefault("rope_ratio", 1.0)  # THUDM configs omit it when it is 1
    else:
        theta, fraction = _hf_rope(hf)
        pairs = [("vocab_size", cfg.vocab_size, "model.vocab_size"),
                 ("num_hidden_layers", cfg.num_layers, "model.num_layers"),
                 ("num_key_value_heads", cfg.num_kv_heads, "model.kv_groups"),
                 ("rms_norm_eps", cfg.rms_norm_eps, "model.rms_norm_eps"),
                 ("rope_theta", cfg.rope_theta, "model.rope_ratio (rope theta = 10000 x rope_ratio)"),
                 ("partial_rotary_factor", cfg.rotary_fraction, "model.rotary_fraction"),
                 ("attention_bias", cfg.qkv_bias, "model.qkv_bias")]
        stated = {k: hf[k] for k, _, _ in pairs if k in hf}
        stated.update(rope_theta=theta, partial_rotary_factor=fraction)
    for key, ours, field in pairs:
        if key in stated and not math.isclose(float(stated[key]), float(ours), rel_tol=1e-6):
            raise ConversionError(f"checkpoint config.json has {key}={stated[key]!r} but config {cfg.name!r} has "
                                  f"{ours!r}; fix {field} or use the config that matches these weights")


def model_config_from_hf(hf: dict, name: str = "hf") -> ModelConfig:
    """Our ModelConfig for a checkpoint's config.json (transformers' Glm or THUDM's ChatGLM)."""
    if hf.get("model_type") == "chatglm":
        return ModelConfig(
            name=name, vocab_size=hf["padded_vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_layers"],
            num_heads=hf["num_attention_heads"],
            kv_groups=hf["multi_query_group_num"] if hf.get("multi_query_attention") else hf["num_attention_heads"],
            head_dim=hf.get("kv_channels", hf["hidden_size"] // hf["num_attention_heads"]),
            ffn_hidden_size=hf["ffn_hidden_size"], rms_norm_eps=hf["layernorm_epsilon"],
            rope_ratio=float(hf.get("rope_ratio", 1.0)), max_seq_len=hf.get("seq_length", 8192),
            qkv_bias=hf.get("add_qkv_bias", True))
    if hf.get("model_type") != "glm":
        raise ConversionError(f"config.json model_type {hf.get('model_type')!r}: expected 'glm' or 'chatglm'")
    theta, fraction = _hf_rope(hf)
    return ModelConfig(
        name=name, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], kv_groups=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        ffn_hidden_size=hf["intermediate_size"], rms_norm_eps=hf["rms_norm_eps"], rope_ratio=theta / 10000.0,
        rotary_fraction=fraction, max_seq_len=hf.get("max_position_embeddings", 8192),
        qkv_bias=hf.get("attention_bias", True))
