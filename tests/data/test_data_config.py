"""The `data` config section: defaults point at the bundled data; bad values name the field."""

import pytest

from glm_jax import config
from glm_jax.config import ConfigError


def test_debug_config_uses_the_bundled_mixture_and_tokenizer(debug_cfg):
    from glm_jax.data.tokenizer import bundled_tokenizer

    assert debug_cfg.data.mixture == "bundled_zh_en" and debug_cfg.data.tokenizer == ""
    assert debug_cfg.model.vocab_size % 128 == 0 and debug_cfg.model.vocab_size >= bundled_tokenizer().vocab_size


@pytest.mark.parametrize("field, value", [("seed", -1), ("packing_bins", -2), ("read_threads", 0),
                                          ("num_workers", -1), ("mixture", "")])
def test_bad_data_fields_are_named(field, value):
    cd = config.default_config_dict()
    cd.model.update(name="x", vocab_size=128, hidden_size=64, num_layers=1, num_heads=4, kv_groups=2,
                    head_dim=16, ffn_hidden_size=64, max_seq_len=64)
    cd.data[field] = value
    with pytest.raises(ConfigError, match=f"data.{field}"):
        config.from_config_dict(cd)
