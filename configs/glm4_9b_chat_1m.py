"""GLM-4-9B-chat-1M: 4 kv groups, rope_ratio 10000 (theta 1e8), 1,048,576-token context."""

import os

from glm_jax import config


def get_config(arg=None):
    c = config.load_config_dict(os.path.join(os.path.dirname(__file__), "glm4_9b.py"))
    c.model.update(name="glm4_9b_chat_1m", kv_groups=4, rope_ratio=10000.0, max_seq_len=1048576)
    return c
