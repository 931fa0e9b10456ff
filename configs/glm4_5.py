"""GLM-4.5 (also GLM-4.5-Base, and GLM-4.6 / GLM-4.7 with the same shapes but 200K context):
355B total / 32B active mixture of experts with QK-norm, transformers' Glm4MoeForCausalLM, plus
its released multi-token-prediction (MTP) layer.

    python -m glm_jax.model --config=configs/glm4_5.py
    python -m glm_jax.aot --config=configs/glm4_5.py --topology=v5p:8x8x16 --config.train.seq_len=8192

Sizes: the released config.json of zai-org/GLM-4.5 (https://huggingface.co/zai-org/GLM-4.5/blob/main/config.json;
values as recorded by the public config.json of zai-org/GLM-4.7 (same architecture,
huggingface.co/zai-org/GLM-4.7/blob/refs%2Fpr%2F49/config.json) and NVIDIA Megatron-Bridge's
GLM 4.5 page, docs.nvidia.com/nemo/megatron-bridge/latest/models/llm/glm45.html: "92 transformer
layers (first 3 dense), 5120 hidden, 12288 FFN, 96 heads, 8 query groups, 160 experts, top-8,
2.5x scaling factor, MoE FFN 1536, QK LayerNorm, MTP 1 layer, 0.3 scaling factor, 131,072
context"): Glm4MoeForCausalLM, vocab_size 151552, hidden_size 5120, num_hidden_layers 92,
first_k_dense_replace 3, intermediate_size 12288, num_attention_heads 96, num_key_value_heads 8,
head_dim 128, attention_bias true, partial_rotary_factor 0.5, rope_theta 1000000, rms_norm_eps
1e-05, n_routed_experts 160, num_experts_per_tok 8, moe_intermediate_size 1536, n_shared_experts 1,
n_group 1, topk_group 1, norm_topk_prob true, routed_scaling_factor 2.5, use_qk_norm true,
num_nextn_predict_layers 1, max_position_embeddings 131072 (GLM-4.6/4.7: 202752).

Parameters (tests/moe/test_configs.py; the model card's 355B / 32B are rounded, no exact total is
published): 352,797,829,024 without the MTP layer (transformers' Glm4MoeForCausalLM built from
these sizes: 352,797,814,784 parameters + 89 x 160 e_score_correction_bias buffers), of which
32,080,373,664 active per token without the embedding and output layer ("32B"; 33,632,266,144
with them); 358,337,791,296 with the MTP layer, its own embedding and head included (the hub's
"358B" safetensors count).
"""

import os

from glm_jax import config


def get_config(arg=None):
    """GLM-4.5-Air's config with the fields in which GLM-4.5 differs (the rest is shared)."""
    del arg
    c = config.load_config_dict(os.path.join(os.path.dirname(__file__), "glm4_5_air.py"))
    c.model.update(
        name="glm4_5",
        hidden_size=5120,  # hidden_size
        num_layers=92,  # num_hidden_layers
        ffn_hidden_size=12288,  # intermediate_size (the 3 dense first layers)
        qk_norm=True,  # use_qk_norm
    )
    c.model.moe.update(
        num_experts=160,  # n_routed_experts
        ffn_hidden_size=1536,  # moe_intermediate_size
        first_dense_layers=3,  # first_k_dense_replace
        routed_scaling_factor=2.5,  # routed_scaling_factor
    )
    c.train.update(batch_size=512)
    c.mesh.update(expert=32)
    return c
