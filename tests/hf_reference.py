"""transformers' reference model for one of our ModelConfigs, shared by the parity and conversion tests.

The family follows the config: Glm4MoeForCausalLM (GLM-4.5) when it has routed experts,
Glm4ForCausalLM (GLM-4-0414) when it has post-norms, else GlmForCausalLM (GLM-4).
`random_model` draws every parameter (norm scales around 1, biases and the routers' correction
bias non-zero), so a missing or misplaced term changes the logits."""

import jax
import jax.numpy as jnp
import numpy as np


def hf_config(cfg):
    """transformers' config of the family `cfg` belongs to, with `cfg`'s sizes."""
    import transformers

    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, attention_bias=cfg.qkv_bias, pad_token_id=None,
        max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                         "partial_rotary_factor": cfg.rotary_fraction})
    if cfg.moe.num_experts:
        return transformers.Glm4MoeConfig(
            **common, use_qk_norm=cfg.qk_norm, moe_intermediate_size=cfg.moe.ffn_hidden_size,
            num_experts_per_tok=cfg.moe.experts_per_token, n_shared_experts=cfg.moe.num_shared_experts,
            n_routed_experts=cfg.moe.num_experts, routed_scaling_factor=cfg.moe.routed_scaling_factor,
            n_group=cfg.moe.expert_groups, topk_group=cfg.moe.expert_groups_per_token,
            first_k_dense_replace=cfg.moe.first_dense_layers, norm_topk_prob=cfg.moe.norm_topk_prob,
            num_nextn_predict_layers=cfg.mtp_layers)
    if cfg.post_norms:
        return transformers.Glm4Config(**common)
    return transformers.GlmConfig(**common)


def hf_class(cfg):
    """The transformers model class of `cfg`'s family."""
    import transformers

    if cfg.moe.num_experts:
        return transformers.Glm4MoeForCausalLM
    return transformers.Glm4ForCausalLM if cfg.post_norms else transformers.GlmForCausalLM


def random_model(cfg, seed=0):
    """The transformers model of `cfg`'s family in eval mode, every parameter random."""
    import torch

    torch.manual_seed(seed)
    hf = hf_class(cfg)(hf_config(cfg)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if "norm" in name else 0.1) + (1.0 if "norm" in name else 0.0))
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.05)
    return hf


def state(hf):
    """The model's state dict as numpy arrays."""
    return {k: v.detach().numpy() for k, v in hf.state_dict().items()}


def params_from(hf, cfg):
    """Our params holding `hf`'s weights (through the converter's HF key map)."""
    from glm_jax.convert import keymap

    return jax.tree.map(jnp.asarray, keymap.import_tensors(state(hf), cfg, "hf"))


def logits(hf, tokens):
    """fp32 logits [B, T, V] of `hf` on integer tokens [B, T]."""
    import torch

    with torch.no_grad():
        return hf(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()
