"""GLM-4-9B-0414 (also GLM-Z1-9B-0414: same shapes): GLM-4-9B plus a post-attention and a post-MLP
RMSNorm in every layer (`model.post_norms`, transformers' Glm4ForCausalLM), RMSNorm eps 1e-5,
32K context.

    python -m glm_jax.convert from-hf --hf=GLM-4-9B-0414/ --config=configs/glm4_9b_0414.py --out=CKPT
    python -m glm_jax.model --config=configs/glm4_9b_0414.py     # 9,400,279,040 parameters

Sizes: the released config.json of THUDM/GLM-4-9B-0414 (now zai-org/GLM-4-9B-0414 on the HF hub,
https://huggingface.co/zai-org/GLM-4-9B-0414/raw/main/config.json; values as recorded in the public
GLM4 transformers audit that snapshots it): Glm4ForCausalLM, vocab_size 151552, hidden_size 4096,
num_hidden_layers 40, num_attention_heads 32, num_key_value_heads 2, head_dim 128,
intermediate_size 13696, rms_norm_eps 1e-05, rope_theta 10000.0, partial_rotary_factor 0.5,
attention_bias true, max_position_embeddings 32768, tie_word_embeddings false.
"""

from glm_jax import config


def get_config(arg=None):
    del arg
    c = config.default_config_dict()
    c.model.update(
        name="glm4_9b_0414",
        vocab_size=151552,  # vocab_size
        hidden_size=4096,  # hidden_size
        num_layers=40,  # num_hidden_layers
        num_heads=32,  # num_attention_heads
        kv_groups=2,  # num_key_value_heads
        head_dim=128,  # head_dim
        ffn_hidden_size=13696,  # intermediate_size
        rms_norm_eps=1e-5,  # rms_norm_eps (GLM-4-9B had 1.5625e-07)
        rope_ratio=1.0,  # rope_theta 10000.0
        rotary_fraction=0.5,  # partial_rotary_factor
        max_seq_len=32768,  # max_position_embeddings
        qkv_bias=True,  # attention_bias
        post_norms=True,  # Glm4ForCausalLM: post_self_attn_layernorm, post_mlp_layernorm
    )
    c.run.update(
        dtype="bfloat16",
        attention="flash",
        remat="full",
    )
    c.train.update(seq_len=8192, batch_size=256, steps=10000, lr=1e-4, warmup_steps=500)
    c.checkpoint.every_steps = 500
    return c
