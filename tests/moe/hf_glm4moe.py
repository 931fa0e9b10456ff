"""A random transformers Glm4MoeForCausalLM for one of our MoE ModelConfigs (shared by the MoE tests)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax.config import MoEConfig
from tests.conftest import tiny_model


def tiny_moe(**overrides):
    """3 layers (the first dense), 8 experts top-2 in 2 groups (1 per token), a shared expert,
    QK-norm, partial rotate-half rotary, Q/K/V bias: the parity model of the MoE issue. Overrides
    name fields of ModelConfig or of its `moe` section."""
    moe = dict(num_experts=8, experts_per_token=2, ffn_hidden_size=32, num_shared_experts=1, first_dense_layers=1,
               expert_groups=2, expert_groups_per_token=1, routed_scaling_factor=1.5)
    base = dict(name="tiny_moe", num_layers=3, num_heads=4, kv_groups=2, head_dim=16, hidden_size=64,
                ffn_hidden_size=96, rotary_style="half", qk_norm=True, rope_ratio=3.0)
    moe_fields = {f.name for f in dataclasses.fields(MoEConfig)} - {"ffn_hidden_size"}
    for k, v in overrides.items():
        (moe if k in moe_fields or k == "moe_ffn_hidden_size" else base)[k.removeprefix("moe_")
                                                                         if k == "moe_ffn_hidden_size" else k] = v
    return tiny_model(**base, moe=MoEConfig(**moe))


def glm4moe_config(cfg):
    import transformers

    return transformers.Glm4MoeConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, attention_bias=cfg.qkv_bias, pad_token_id=None,
        max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=False, use_qk_norm=cfg.qk_norm,
        moe_intermediate_size=cfg.moe.ffn_hidden_size, num_experts_per_tok=cfg.moe.experts_per_token,
        n_shared_experts=cfg.moe.num_shared_experts, n_routed_experts=cfg.moe.num_experts,
        routed_scaling_factor=cfg.moe.routed_scaling_factor, n_group=cfg.moe.expert_groups,
        topk_group=cfg.moe.expert_groups_per_token, first_k_dense_replace=cfg.moe.first_dense_layers,
        norm_topk_prob=cfg.moe.norm_topk_prob, num_nextn_predict_layers=cfg.mtp_layers,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                         "partial_rotary_factor": cfg.rotary_fraction})


def random_glm4moe(cfg, seed=0):
    """Every parameter random (norm scales around 1, biases and the correction bias non-zero)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf = transformers.Glm4MoeForCausalLM(glm4moe_config(cfg)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if "norm" in name else 0.1) + (1.0 if "norm" in name else 0.0))
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.05)
    return hf


def hf_state(hf):
    return {k: v.detach().numpy() for k, v in hf.state_dict().items()}


def hf_logits(hf, tokens):
    import torch

    with torch.no_grad():
        return hf(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def params_from(hf, cfg):
    from glm_jax.convert import keymap

    return jax.tree.map(jnp.asarray, keymap.import_tensors(hf_state(hf), cfg, "hf"))
