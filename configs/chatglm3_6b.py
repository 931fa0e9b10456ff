"""ChatGLM3-6B: 65024 vocab, 28 layers, RMSNorm eps 1e-5 (SentencePiece tokenizer)."""

from glm_jax import config


def get_config(arg=None):
    del arg
    c = config.default_config_dict()
    c.model.update(
        name="chatglm3_6b",
        vocab_size=65024,
        hidden_size=4096,
        num_layers=28,
        num_heads=32,
        kv_groups=2,
        head_dim=128,
        ffn_hidden_size=13696,
        rms_norm_eps=1e-5,
        rope_ratio=1.0,
        max_seq_len=8192,
    )
    c.run.update(
        dtype="bfloat16",
        attention="flash",
        remat="full",
    )
    c.train.update(seq_len=8192, batch_size=256, steps=10000, lr=1e-4, warmup_steps=500)
    return c
