"""A GLM-4.5-shaped mixture of experts of a few million parameters that trains in seconds on CPU:
one dense layer then three MoE layers of 8 experts (top-2, 2 groups, a shared expert), QK-norm,
rotate-half rotary and the MTP module, so every GLM-4.5 code path runs.

    python -m glm_jax.model --config=configs/debug_moe.py
    python -m glm_jax.train --config=configs/debug_moe.py --workdir=/tmp/moe1 --config.mesh.expert=4 --config.mesh.fsdp=2
"""

import os

from glm_jax import config


def get_config(arg=None):
    """configs/debug.py's model, data and schedule with GLM-4.5's layer structure."""
    del arg
    c = config.load_config_dict(os.path.join(os.path.dirname(__file__), "debug.py"))
    c.model.update(
        name="debug_moe",
        ffn_hidden_size=704,  # the dense first layer
        rms_norm_eps=1e-5,
        rope_ratio=100.0,  # GLM-4.5's theta 1e6
        rotary_style="half",
        qk_norm=True,
        mtp_layers=1,
    )
    c.model.moe.update(
        num_experts=8,
        experts_per_token=2,
        ffn_hidden_size=192,
        num_shared_experts=1,
        first_dense_layers=1,
        expert_groups=2,
        expert_groups_per_token=2,
        routed_scaling_factor=1.0,
    )
    c.train.update(mtp_loss_weight=0.3, router_bias_rate=1e-3)
    return c
