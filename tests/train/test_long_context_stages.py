"""configs/long_context.py resolves into valid stages; a bad stage fails before anything runs."""

import os

import pytest

from glm_jax import config
from glm_jax.config import ConfigError
from glm_jax.train import loop
from tests.conftest import REPO

LONG = os.path.join(REPO, "configs", "long_context.py")


def test_debug_plan_raises_rope_base_with_length_and_validates_on_8_devices():
    stages = config.resolve_stages(config.load_config_dict(LONG + ":model=debug"))
    assert [(n, c.train.seq_len, c.model.rope_theta) for n, c in stages] == \
        [("ctx512", 512, 10000.0), ("ctx2k", 2048, 500000.0), ("ctx8k", 8192, 5000000.0)]
    loop.validate(stages)  # every stage fits the 8 test devices (sequence axis for the long ones)
    # Each stage evaluates at its end, retrieval at its length and the next: 2K before and after ctx2k.
    assert [(c.eval.every_steps, c.eval.seqio_tasks) for _, c in stages] == [
        (200, "long_passkey_512,long_multikey_512,long_passkey_2048,long_multikey_2048"),
        (100, "long_passkey_2048,long_multikey_2048,long_passkey_8192,long_multikey_8192"),
        (50, "long_passkey_8192,long_multikey_8192")]
    nine_b = config.resolve_stages(config.load_config_dict(LONG + ":model=glm4_9b"))
    assert [c.model.rope_ratio for _, c in nine_b] == [1.0, 50.0, 500.0] and nine_b[-1][1].train.seq_len == 131072
    assert [(c.eval.every_steps, c.eval.seqio_tasks) for _, c in nine_b] == [(10000, ""), (2000, ""), (1000, "")]


def test_bad_stage_is_named_before_anything_runs(tmp_path):
    cd = config.load_config_dict(LONG + ":model=debug")
    cd.stages["ctx2k"]["train"]["seq_len"] = 2044  # not a multiple of 2 x sequence (4) x block
    cd.stages["ctx2k"]["train"]["loss_chunk"] = 4  # divides 2044, so only the mesh rule is broken
    with pytest.raises(ConfigError, match=r"stages\.ctx2k\.train\.seq_len.*multiple of 8"):
        loop.run(cd, str(tmp_path / "w"), make_iterator=None)
    assert not os.path.exists(tmp_path / "w" / "checkpoints")
    cd = config.load_config_dict(LONG + ":model=debug")
    cd.stages["ctx8k"]["train"]["seqlen"] = 4
    with pytest.raises(ConfigError, match=r"stages\.ctx8k\.train\.seqlen"):
        config.resolve_stages(cd)
    with pytest.raises(ConfigError, match="model='gpt'"):
        config.load_config_dict(LONG + ":model=gpt")
