"""GLM-4-9B base (rope_ratio 1, 8K context).

    python -m glm_jax.model --config=configs/glm4_9b.py
    python -m glm_jax.aot --config=configs/glm4_9b.py --topology=v5p:4x4x8
"""

from glm_jax import config


def get_config(arg=None):
    del arg
    c = config.default_config_dict()
    c.model.update(
        name="glm4_9b",
        vocab_size=151552,
        hidden_size=4096,
        num_layers=40,
        num_heads=32,
        kv_groups=2,
        head_dim=128,
        ffn_hidden_size=13696,
        rms_norm_eps=1.5625e-07,
        rope_ratio=1.0,
        max_seq_len=8192,
    )
    c.run.update(
        dtype="bfloat16",
        attention="flash",
        remat="full",
    )
    c.train.update(seq_len=8192, batch_size=256, steps=10000, lr=1e-4, warmup_steps=500)
    c.checkpoint.every_steps = 500
    return c
