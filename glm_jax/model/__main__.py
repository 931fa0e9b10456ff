"""Prints a model's parameter table and count without allocating the weights.

    python -m glm_jax.model --config=configs/glm4_9b.py
"""

from ml_collections import config_flags

from glm_jax import cli, config
from glm_jax.model import spec

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path of a configs/*.py file.", lock_config=True)


def main(argv):
    del argv
    cfg = config.from_config_dict(_CONFIG.value)
    m = cfg.model
    print(f"{m.name}: {m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads} heads / {m.num_kv_heads} kv heads "
          f"x {m.head_dim}, ffn {m.ffn_hidden_size}, vocab {m.vocab_size}, rope theta {m.rope_theta:g} "
          f"(rotary on {m.rotary_dim} of {m.head_dim} dims)")
    print(spec.format_table(m))


if __name__ == "__main__":
    cli.run(main, tensorflow=False)
