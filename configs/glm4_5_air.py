"""GLM-4.5-Air (also GLM-4.5-Air-Base: same shapes): 106B total / 12B active mixture of experts,
transformers' Glm4MoeForCausalLM, plus its released multi-token-prediction (MTP) layer.

    python -m glm_jax.model --config=configs/glm4_5_air.py
    python -m glm_jax.convert from-hf --hf=GLM-4.5-Air/ --config=configs/glm4_5_air.py --out=CKPT
    python -m glm_jax.train --config=configs/glm4_5_air.py --config.mesh.expert=16 --config.train.init_from=CKPT ...

Sizes: the released config.json of zai-org/GLM-4.5-Air
(https://huggingface.co/zai-org/GLM-4.5-Air/blob/main/config.json; the values as recorded by the
public config.json of PrimeIntellect/INTELLECT-3-Base, a GLM-4.5-Air-Base fine-tune with the same
shapes, and NVIDIA Megatron-Bridge's GLM 4.5 page, docs.nvidia.com/nemo/megatron-bridge/latest/models/llm/glm45.html):
Glm4MoeForCausalLM, vocab_size 151552, hidden_size 4096, num_hidden_layers 46, first_k_dense_replace 1,
intermediate_size 10944, num_attention_heads 96, num_key_value_heads 8, head_dim 128, attention_bias true,
partial_rotary_factor 0.5, rope_theta 1000000, rms_norm_eps 1e-05, n_routed_experts 128,
num_experts_per_tok 8, moe_intermediate_size 1408, n_shared_experts 1, n_group 1, topk_group 1,
norm_topk_prob true, routed_scaling_factor 1.0, use_qk_norm false, num_nextn_predict_layers 1,
max_position_embeddings 131072, tie_word_embeddings false. MTP loss weight 0.3: Megatron-Bridge's
GLM 4.5 recipe ("MTP with 1 layer, 0.3 scaling factor").

Parameters (tests/moe/test_configs.py; the model card's 106B / 12B are rounded, no exact total is
published): 106,852,251,264 without the MTP layer (transformers' Glm4MoeForCausalLM built from
these sizes: 106,852,245,504 parameters + 45 x 128 e_score_correction_bias buffers), of which
12,182,615,680 active per token without the embedding and output layer ("12B"; 13,424,129,664
with them); 110,468,824,832 with the MTP layer, its own embedding and head included (the hub's
"110B" safetensors count).
"""

from glm_jax import config


def get_config(arg=None):
    del arg
    c = config.default_config_dict()
    c.model.update(
        name="glm4_5_air",
        vocab_size=151552,  # vocab_size
        hidden_size=4096,  # hidden_size
        num_layers=46,  # num_hidden_layers
        num_heads=96,  # num_attention_heads
        kv_groups=8,  # num_key_value_heads
        head_dim=128,  # head_dim
        ffn_hidden_size=10944,  # intermediate_size (the dense first layer)
        rms_norm_eps=1e-5,  # rms_norm_eps
        rope_ratio=100.0,  # rope_theta 1,000,000
        rotary_fraction=0.5,  # partial_rotary_factor
        rotary_style="half",  # transformers' Glm4Moe: rotate-half
        max_seq_len=131072,  # max_position_embeddings
        qkv_bias=True,  # attention_bias
        qk_norm=False,  # use_qk_norm
        mtp_layers=1,  # num_nextn_predict_layers
    )
    c.model.moe.update(
        num_experts=128,  # n_routed_experts
        experts_per_token=8,  # num_experts_per_tok
        ffn_hidden_size=1408,  # moe_intermediate_size
        num_shared_experts=1,  # n_shared_experts
        first_dense_layers=1,  # first_k_dense_replace
        expert_groups=1,  # n_group
        expert_groups_per_token=1,  # topk_group
        norm_topk_prob=True,  # norm_topk_prob
        routed_scaling_factor=1.0,  # routed_scaling_factor
    )
    c.run.update(
        dtype="bfloat16",
        attention="flash",
        remat="full",
        # Expert parallelism sends a device's tokens 1,024 at a time: dropless buffers of
        # expert x 1024 x 8 rows instead of expert x 8192 x 8 at 8K tokens a device (145 GiB of
        # temporaries on v5p in one round; benchmarks/results/aot_glm4_5_air_8k.json).
        moe_dispatch_tokens=1024,
    )
    c.train.update(seq_len=8192, batch_size=256, steps=10000, lr=1e-5, warmup_steps=100, mtp_loss_weight=0.3)
    c.mesh.update(fsdp=-1, expert=16)
    c.checkpoint.every_steps = 500
    return c
