"""GLM-4-9B-chat: GLM-4-9B with rope_ratio 500 (theta 5,000,000, 128K context)."""

import os

from glm_jax import config


def get_config(arg=None):
    c = config.load_config_dict(os.path.join(os.path.dirname(__file__), "glm4_9b.py"))
    c.model.update(name="glm4_9b_chat", rope_ratio=500.0, max_seq_len=131072)
    return c
