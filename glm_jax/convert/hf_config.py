"""The bridge between our `ModelConfig` and a checkpoint directory's `config.json`.

Four formats: transformers' `GlmForCausalLM` ("glm"), its `Glm4ForCausalLM` ("glm4", GLM-4-0414:
`model.post_norms`) and `Glm4MoeForCausalLM` ("glm4_moe", GLM-4.5: `model.moe.num_experts` > 0), all
written with naming "hf", and THUDM's ChatGLM remote-code config
("chatglm", naming "thudm"), written with every field of the released glm-4-9b-chat config.json.

`FIELDS` (+ `MOE_FIELDS` for GLM-4.5) is the one table of numerics-changing fields: for each,
where each format states it.
`check_against` compares a checkpoint's config.json with our config through it and names the
config field to fix; `model_config_from_hf` builds a ModelConfig through it. rope theta is
written as 10000 x rope_ratio: transformers' own GLM converter writes 10000 whatever rope_ratio
was, which silently breaks chat / 1M models.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from glm_jax.config import ModelConfig, MoEConfig
from glm_jax.convert.keymap import ConversionError

_TORCH_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}

# THUDM's modeling_chatglm.py builds its rotary embedding over kv_channels // 2 dims: no config
# field changes it, so every THUDM checkpoint rotates half of each head's dims.
THUDM_ROTARY_FRACTION = 0.5

# The remote code the THUDM export points at (hub remote-code form "repo--module.Class", what
# save_pretrained writes for a model loaded from the hub), by tokenizer family.
THUDM_CODE_REPOS = {"glm4": "THUDM/glm-4-9b-chat", "chatglm3": "THUDM/chatglm3-6b"}

Getter = Callable[[dict], Any]  # config.json -> the value it states, or None when it does not state it


def _key(name: str, default: Any = None) -> Getter:
    return lambda d: d.get(name, default)


def _hf_rope(d: dict, key: str, default: float):
    rope = d.get("rope_parameters") or {}
    return rope.get(key, d.get(key, default))


def _moe(name: str, default: Any) -> Getter:
    """A Glm4Moe config key (its Glm4MoeConfig default when absent); what dense formats imply otherwise."""
    dense = {"n_routed_experts": 0, "num_experts_per_tok": 0, "moe_intermediate_size": 0, "n_shared_experts": 0,
             "first_k_dense_replace": 0, "num_nextn_predict_layers": 0}
    return lambda d: d.get(name, default) if d.get("model_type") == "glm4_moe" else dense.get(name, default)


@dataclasses.dataclass(frozen=True)
class Field:
    """One numerics-changing field: our ModelConfig attribute, how each format states it."""
    attr: str  # ModelConfig field (the one an error tells the user to fix)
    hf: Getter  # transformers' Glm / Glm4 config.json
    thudm: Getter  # THUDM ChatGLM config.json
    note: str = ""  # appended to the error: what the field means in the checkpoint


# Defaults are those of the format's own config class (what its code uses when the key is absent).
FIELDS = (
    Field("vocab_size", _key("vocab_size"), _key("padded_vocab_size")),
    Field("hidden_size", _key("hidden_size"), _key("hidden_size")),
    Field("num_layers", _key("num_hidden_layers"), _key("num_layers")),
    Field("num_heads", _key("num_attention_heads"), _key("num_attention_heads")),
    Field("kv_groups", lambda d: d.get("num_key_value_heads") or d.get("num_attention_heads"),
          lambda d: d.get("multi_query_group_num") if d.get("multi_query_attention") else d.get("num_attention_heads")),
    Field("head_dim", lambda d: d.get("head_dim") or (d["hidden_size"] // d["num_attention_heads"]
                                                      if "hidden_size" in d and "num_attention_heads" in d else None),
          lambda d: d.get("kv_channels") or (d["hidden_size"] // d["num_attention_heads"]
                                             if "hidden_size" in d and "num_attention_heads" in d else None)),
    Field("ffn_hidden_size", _key("intermediate_size"), _key("ffn_hidden_size")),
    Field("rms_norm_eps", _key("rms_norm_eps"), _key("layernorm_epsilon")),
    Field("rope_ratio", lambda d: float(_hf_rope(d, "rope_theta", 10000.0)) / 10000.0,
          lambda d: float(d.get("rope_ratio", 1.0)), "rope theta = 10000 x rope_ratio"),
    Field("rotary_fraction", lambda d: float(_hf_rope(d, "partial_rotary_factor", 0.5)),
          lambda d: THUDM_ROTARY_FRACTION,
          "the fraction of each head's dims that rotary acts on; THUDM's code fixes it at kv_channels // 2"),
    Field("qkv_bias", lambda d: d.get("attention_bias", d.get("model_type") != "glm4_moe"), _key("add_qkv_bias", False)),
    Field("post_norms", lambda d: d.get("model_type") == "glm4", lambda d: False,
          "RMSNorm on each sublayer's output (GLM-4-0414's Glm4ForCausalLM); ChatGLM has none"),
)

# GLM-4.5 (Glm4MoeForCausalLM): what a glm4_moe config.json adds; the other formats state none of
# these (a dense GLM-4: no experts, interleaved rotary).
MOE_FIELDS = (
    Field("rotary_style", lambda d: "half" if d.get("model_type") == "glm4_moe" else "interleaved",
          lambda d: "interleaved", "Glm4Moe rotates half of the rotary dims against the other half (pairs i, i+R/2)"),
    Field("qk_norm", _moe("use_qk_norm", False), lambda d: False),
    Field("moe.num_experts", _moe("n_routed_experts", 128), lambda d: 0),
    Field("moe.experts_per_token", _moe("num_experts_per_tok", 8), lambda d: 0),
    Field("moe.ffn_hidden_size", _moe("moe_intermediate_size", 1408), lambda d: 0),
    Field("moe.num_shared_experts", _moe("n_shared_experts", 1), lambda d: 0),
    Field("moe.first_dense_layers", _moe("first_k_dense_replace", 1), lambda d: 0),
    Field("moe.expert_groups", _moe("n_group", 1), lambda d: 1),
    Field("moe.expert_groups_per_token", _moe("topk_group", 1), lambda d: 1),
    Field("moe.norm_topk_prob", _moe("norm_topk_prob", True), lambda d: True),
    Field("moe.routed_scaling_factor", _moe("routed_scaling_factor", 1.0), lambda d: 1.0),
    Field("mtp_layers", _moe("num_nextn_predict_layers", 1), lambda d: 0,
          "the MTP layers the checkpoint keeps at index num_hidden_layers"),
)

# What every checkpoint we read or write has, whatever the config: (format, key, value, what it means).
_FIXED = (
    ("hf", "tie_word_embeddings", False, "an output layer untied from the embedding"),
    ("hf", "hidden_act", "silu", "a SwiGLU MLP"),
    ("thudm", "tie_word_embeddings", False, "an output layer untied from the embedding"),
    ("thudm", "rmsnorm", True, "RMSNorm (not LayerNorm)"),
    ("thudm", "add_bias_linear", False, "no bias on the dense / MLP projections"),
    ("thudm", "apply_residual_connection_post_layernorm", False, "residuals taken before the norm"),
    ("thudm", "post_layer_norm", True, "a final norm"),
)


def config_format(hf: dict) -> str:
    """'hf' for transformers' glm / glm4 config.json, 'thudm' for THUDM's chatglm one."""
    kind = hf.get("model_type")
    if kind == "chatglm":
        return "thudm"
    if kind in ("glm", "glm4", "glm4_moe"):
        return "hf"
    raise ConversionError(f"config.json model_type {kind!r}: expected 'glm', 'glm4', 'glm4_moe' (transformers) or "
                          f"'chatglm' (THUDM)")


def _get(cfg: ModelConfig, attr: str) -> Any:
    """A dotted field of the model config (`moe.num_experts`)."""
    for name in attr.split("."):
        cfg = getattr(cfg, name)
    return cfg


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-6)


def _mismatch(f: Field, theirs: Any, cfg: ModelConfig, source: str) -> ConversionError:
    note = f" ({f.note})" if f.note else ""
    return ConversionError(f"{source} means {f.attr}={theirs!r} but config {cfg.name!r} has model.{f.attr}="
                           f"{_get(cfg, f.attr)!r}{note}; fix model.{f.attr} (--config.model.{f.attr}={theirs!r}) "
                           f"or use the config that matches these weights")


def check_against(hf: dict, cfg: ModelConfig) -> None:
    """Raises ConversionError naming the first field where a checkpoint's config.json disagrees
    with `cfg` (fields the file does not state are taken at its format's default)."""
    fmt = config_format(hf)
    for f in FIELDS + MOE_FIELDS:
        theirs = (f.hf if fmt == "hf" else f.thudm)(hf)
        if theirs is not None and not _same(theirs, _get(cfg, f.attr)):
            raise _mismatch(f, theirs, cfg, f"checkpoint config.json ({hf.get('model_type')})")
    for where, key, value, meaning in _FIXED:
        if where == fmt and key in hf and hf[key] != value:
            raise ConversionError(f"checkpoint config.json has {key}={hf[key]!r}; glm_jax's GLM has {meaning} "
                                  f"({key}={value!r}), so these weights are not a model it can run")


_THUDM_IMPLIED = ("rotary_fraction", "post_norms")  # fixed by THUDM's code, whatever its config.json says


def check_thudm_weights(cfg: ModelConfig) -> None:
    """What any THUDM-named checkpoint implies, with or without a config.json: ChatGLM's fixed
    rotary fraction (0.5) and no post-norms. Raises ConversionError naming the field."""
    for f in FIELDS:
        if f.attr in _THUDM_IMPLIED and not _same(f.thudm({}), _get(cfg, f.attr)):
            raise _mismatch(f, f.thudm({}), cfg, "THUDM's ChatGLM format (naming 'thudm')")


def model_config_from_hf(hf: dict, name: str = "hf") -> ModelConfig:
    """Our ModelConfig for a checkpoint's config.json (transformers' Glm / Glm4 or THUDM's ChatGLM)."""
    fmt = config_format(hf)
    values = {f.attr: (f.hf if fmt == "hf" else f.thudm)(hf) for f in FIELDS + MOE_FIELDS}
    seq = hf.get("max_position_embeddings", 8192) if fmt == "hf" else hf.get("seq_length", 8192)
    values = {k: v for k, v in values.items() if v is not None}
    moe = MoEConfig(**{k.split(".", 1)[1]: values.pop(k) for k in list(values) if k.startswith("moe.")})
    return ModelConfig(name=name, max_seq_len=seq, moe=moe, **values)


def _transformers_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "unknown"


def _thudm_auto_map(code: str) -> dict[str, str]:
    if code not in THUDM_CODE_REPOS:
        raise ConversionError(f"THUDM remote code {code!r}: expected one of {sorted(THUDM_CODE_REPOS)}")
    repo = THUDM_CODE_REPOS[code]
    model = f"{repo}--modeling_chatglm.ChatGLMForConditionalGeneration"
    return {"AutoConfig": f"{repo}--configuration_chatglm.ChatGLMConfig", "AutoModel": model,
            "AutoModelForCausalLM": model, "AutoModelForSeq2SeqLM": model,
            "AutoModelForSequenceClassification": f"{repo}--modeling_chatglm.ChatGLMForSequenceClassification"}


def to_hf_config(cfg: ModelConfig, naming: str, dtype: str, eos_token_ids: list[int] | None = None,
                 pad_token_id: int | None = None, thudm_code: str = "glm4") -> dict[str, Any]:
    """config.json contents for a checkpoint of `cfg` written with `naming` in `dtype`.

    naming "thudm" writes every field of the released glm-4-9b-chat config.json, with `auto_map`
    pointing at `THUDM_CODE_REPOS[thudm_code]`'s remote code."""
    eos = (eos_token_ids if len(eos_token_ids) > 1 else eos_token_ids[0]) if eos_token_ids else None
    if naming == "hf":
        kind = ("Glm4MoeForCausalLM", "glm4_moe") if cfg.is_moe else (
            ("Glm4ForCausalLM", "glm4") if cfg.post_norms else ("GlmForCausalLM", "glm"))
        out = {
            "architectures": [kind[0]],
            "model_type": kind[1],
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
        if cfg.is_moe:
            moe = cfg.moe
            out.update({"moe_intermediate_size": moe.ffn_hidden_size, "n_routed_experts": moe.num_experts,
                        "num_experts_per_tok": moe.experts_per_token, "n_shared_experts": moe.num_shared_experts,
                        "first_k_dense_replace": moe.first_dense_layers, "n_group": moe.expert_groups,
                        "topk_group": moe.expert_groups_per_token, "norm_topk_prob": moe.norm_topk_prob,
                        "routed_scaling_factor": moe.routed_scaling_factor, "use_qk_norm": cfg.qk_norm,
                        "num_nextn_predict_layers": cfg.mtp_layers})
        if eos is not None:
            out["eos_token_id"] = eos
        out["pad_token_id"] = pad_token_id  # always stated: GlmConfig's default (151329) may lie outside our vocab
        return out
    if naming != "thudm":
        raise ConversionError(f"naming must be 'hf' or 'thudm', got {naming!r}")
    check_thudm_weights(cfg)  # rotary fraction / post-norms THUDM's code cannot represent
    return {
        "_name_or_path": f"glm_jax/{cfg.name}",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": _thudm_auto_map(thudm_code),
        "add_bias_linear": False,
        "add_qkv_bias": cfg.qkv_bias,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": cfg.ffn_hidden_size,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": cfg.hidden_size,
        "kv_channels": cfg.head_dim,
        "layernorm_epsilon": cfg.rms_norm_eps,
        "multi_query_attention": cfg.num_kv_heads != cfg.num_heads,
        "multi_query_group_num": cfg.num_kv_heads,
        "num_attention_heads": cfg.num_heads,
        "num_hidden_layers": cfg.num_layers,
        "num_layers": cfg.num_layers,
        "rope_ratio": cfg.rope_ratio,
        "original_rope": True,
        "padded_vocab_size": cfg.vocab_size,
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": cfg.max_seq_len,
        "use_cache": True,
        "torch_dtype": _TORCH_DTYPE[dtype],
        "transformers_version": _transformers_version(),
        "tie_word_embeddings": False,
        "eos_token_id": eos,
        "pad_token_id": pad_token_id,
    }
