"""GLM-4-32B-0414 (also GLM-4-32B-Base-0414, GLM-Z1-32B-0414: same shapes): 61 layers of width 6144,
no Q/K/V bias, a post-attention and a post-MLP RMSNorm in every layer (`model.post_norms`,
transformers' Glm4ForCausalLM), 32K context.

    python -m glm_jax.convert from-hf --hf=GLM-4-32B-0414/ --config=configs/glm4_32b_0414.py --out=CKPT
    python -m glm_jax.model --config=configs/glm4_32b_0414.py    # 32,566,081,536 parameters
    python -m glm_jax.aot --config=configs/glm4_32b_0414.py --topology=v5p:4x4x8

Sizes: the released config.json of THUDM/GLM-4-32B-0414 (now zai-org/GLM-4-32B-0414 on the HF hub,
https://huggingface.co/zai-org/GLM-4-32B-0414/raw/main/config.json; values as recorded in the public
GLM4 transformers audit that snapshots it, and the same in the hub copies of fine-tunes of it):
Glm4ForCausalLM, vocab_size 151552, hidden_size 6144, num_hidden_layers 61, num_attention_heads 48,
num_key_value_heads 2, head_dim 128, intermediate_size 23040, rms_norm_eps 1e-05, rope_theta
10000.0, partial_rotary_factor 0.5, attention_bias false, max_position_embeddings 32768,
tie_word_embeddings false. (GLM-Z1-Rumination-32B-0414 differs: 8 kv heads, 131072 context.)
"""

from glm_jax import config


def get_config(arg=None):
    del arg
    c = config.default_config_dict()
    c.model.update(
        name="glm4_32b_0414",
        vocab_size=151552,  # vocab_size
        hidden_size=6144,  # hidden_size
        num_layers=61,  # num_hidden_layers
        num_heads=48,  # num_attention_heads
        kv_groups=2,  # num_key_value_heads
        head_dim=128,  # head_dim
        ffn_hidden_size=23040,  # intermediate_size
        rms_norm_eps=1e-5,  # rms_norm_eps
        rope_ratio=1.0,  # rope_theta 10000.0
        rotary_fraction=0.5,  # partial_rotary_factor
        max_seq_len=32768,  # max_position_embeddings
        qkv_bias=False,  # attention_bias
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
