"""Bad config values fail at load, before any compile, with a message naming the field."""

import os

import pytest

from glm_jax import config
from glm_jax.config import ConfigError
from tests.conftest import REPO

DEBUG = os.path.join(REPO, "configs", "debug.py")


@pytest.mark.parametrize("override, field", [
    (["model.num_heads=32", "model.kv_groups=3"], "model.kv_groups"),
    (["model.rotary_fraction=0.3"], "model.rotary_fraction"),
    (["model.rms_norm_eps=0.0"], "model.rms_norm_eps"),
    (["model.attention='magic'"], "model.attention"),
    (["model.dtype='float8'"], "model.dtype"),
    (["train.grad_accum=3"], "train.grad_accum"),
    (["model.hidden_size='big'"], "model.hidden_size"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=f"`{field}`"):
        config.load(DEBUG, override)


def test_unknown_field_lists_valid_ones():
    with pytest.raises(ConfigError, match="model.n_heads"):
        config.load(DEBUG, ["model.n_heads=4"])
    cd = config.load_config_dict(DEBUG)
    cd.model.unlock() if hasattr(cd.model, "unlock") else None
    d = cd.to_dict()
    d["model"]["n_layers"] = 3
    with pytest.raises(ConfigError, match="`model.n_layers`.*valid fields"):
        config.from_config_dict(d)


def test_missing_config_file_is_named():
    with pytest.raises(ConfigError, match="no config file at 'configs/nope.py'"):
        config.load("configs/nope.py")


def test_overrides_apply_and_keep_types():
    cfg = config.load(DEBUG, ["train.lr=1e-2", "model.rope_ratio=4", "mesh.tensor=2"])
    assert cfg.train.lr == 0.01 and cfg.model.rope_ratio == 4.0 and cfg.mesh.tensor == 2
    assert cfg.model.rope_theta == 40000.0


def test_stages_resolve_in_order_and_inherit():
    cd = config.load_config_dict(DEBUG)
    cd.stage_order = ("short", "long")
    cd.stages = {"short": {"train": {"steps": 5}},
                 "long": {"train": {"seq_len": 1024}, "model": {"rope_ratio": 4.0}}}
    (n1, s1), (n2, s2) = config.resolve_stages(cd)
    assert (n1, n2) == ("short", "long")
    assert s1.train.steps == 5 and s2.train.steps == 5  # inherited from the previous stage
    assert s2.train.seq_len == 1024 and s2.model.rope_theta == 40000.0 and s1.model.rope_theta == 10000.0


def test_bad_stage_names_the_stage_field():
    cd = config.load_config_dict(DEBUG)
    cd.stage_order = ("a",)
    cd.stages = {"a": {"train": {"seqlen": 4}}}
    with pytest.raises(ConfigError, match="stages.a.train.seqlen"):
        config.resolve_stages(cd)
    cd.stages = {"a": {"train": {"steps": 0}}}
    with pytest.raises(ConfigError, match="stages.a.train.steps"):
        config.resolve_stages(cd)
    cd.stage_order = ("a", "b")
    with pytest.raises(ConfigError, match="stage_order"):
        config.resolve_stages(cd)
