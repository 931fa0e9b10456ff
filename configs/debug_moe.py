"""A GLM-4.5-shaped mixture of experts of a few million parameters that trains in seconds on CPU:
one dense layer then three MoE layers of 8 experts (top-2, 2 groups, a shared expert), QK-norm,
rotate-half rotary and the MTP module, so every GLM-4.5 code path runs.

    python -m glm_jax.model --config=configs/debug_moe.py
    python -m glm_jax.train --config=configs/debug_moe.py --workdir=/tmp/moe1 --config.mesh.expert=4 --config.mesh.fsdp=2
"""

from glm_jax import config


def get_config(arg=None):
    del arg
    c = config.default_config_dict()
    c.model.update(
        name="debug_moe",
        vocab_size=4096,  # the bundled tokenizer: 4086 BPE ranks + 10 GLM specials (data/tokenizer/)
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        kv_groups=2,
        head_dim=32,
        ffn_hidden_size=704,  # the dense first layer
        rms_norm_eps=1e-5,
        rope_ratio=100.0,  # GLM-4.5's theta 1e6
        rotary_style="half",
        qk_norm=True,
        num_experts=8,
        experts_per_token=2,
        moe_ffn_hidden_size=192,
        num_shared_experts=1,
        first_dense_layers=1,
        expert_groups=2,
        expert_groups_per_token=2,
        routed_scaling_factor=1.0,
        mtp_layers=1,
        max_seq_len=512,
        attention_block_q=128,
        attention_block_kv=128,
    )
    c.train.update(seq_len=256, batch_size=8, steps=200, lr=1e-3, warmup_steps=20, log_every=10,
                   mtp_loss_weight=0.3, router_bias_rate=1e-3)
    c.checkpoint.update(every_steps=50, keep=3)
    c.data.update(mixture="bundled_zh_en", tokenizer="")
    return c
