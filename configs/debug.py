"""A GLM-4-shaped model of a few million parameters that trains in seconds on CPU.

    python -m glm_jax.model --config=configs/debug.py
    python -m glm_jax.train --config=configs/debug.py --workdir=/tmp/run1 --config.mesh.fsdp=4 --config.mesh.tensor=2
"""

from glm_jax import config


def get_config(arg=None):
    del arg
    c = config.default_config_dict()
    c.model.update(
        name="debug",
        vocab_size=4096,  # the bundled tokenizer: 4086 BPE ranks + 10 GLM specials (data/tokenizer/)
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        kv_groups=2,
        head_dim=32,
        ffn_hidden_size=704,  # ~ 10/3 x hidden, rounded to a multiple of 64 like GLM-4's 13696
        rms_norm_eps=1.5625e-07,
        rope_ratio=1.0,
        max_seq_len=512,
    )
    c.run.update(
        attention_block_q=128,
        attention_block_kv=128,
    )
    c.train.update(seq_len=256, batch_size=8, steps=200, lr=1e-3, warmup_steps=20, log_every=10)
    c.checkpoint.update(every_steps=50, keep=3)
    # Bundled zh/en/code corpus (data/README.md), tokenized with the bundled tokenizer.
    c.data.update(mixture="bundled_zh_en", tokenizer="")
    return c
