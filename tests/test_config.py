"""Bad config values fail at load, before any compile, with a message naming the field."""

import dataclasses
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
    (["run.attention='magic'"], "run.attention"),
    (["run.dtype='float8'"], "run.dtype"),
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


@pytest.mark.parametrize("old, new", [
    ("model.attention", "run.attention"),
    ("model.dtype", "run.dtype"),
    ("model.moe_dispatch_tokens", "run.moe_dispatch_tokens"),
    ("model.num_experts", "model.moe.num_experts"),
    ("model.moe_ffn_hidden_size", "model.moe.ffn_hidden_size"),
])
def test_old_field_names_error_naming_their_new_place(old, new):
    """The split of the architecture from how it runs moved fields: an old override, a config file
    or a stage that still uses one is refused with the new name, never silently ignored."""
    with pytest.raises(ConfigError, match=rf"`{old}`: has moved to `{new}`"):
        config.load(DEBUG, [f"{old}=1"])
    d = config.load_config_dict(DEBUG).to_dict()
    d["model"][old.split(".")[1]] = 1
    with pytest.raises(ConfigError, match=rf"`{old}`: has moved to `{new}`"):
        config.from_config_dict(d)
    d = config.load_config_dict(DEBUG).to_dict()
    d.update(stage_order=("a",), stages={"a": {"model": {old.split(".")[1]: 1}}})
    with pytest.raises(ConfigError, match=rf"`stages.a.{old}`: has moved to `{new}`"):
        config.resolve_stages(d)


def test_a_recorded_config_of_the_old_layout_reads_into_the_new_one():
    """A workdir's config.json written before the split still resumes: its moved fields land in
    their new places."""
    cfg = config.load(os.path.join(REPO, "configs", "debug_moe.py"), ["run.attention='flash'", "run.remat='full'"])
    new = config.from_config_dict(dataclasses.asdict(cfg))
    old = dataclasses.asdict(cfg)
    old["model"].update({f"moe_{k}" if k == "ffn_hidden_size" else k: v for k, v in old["model"].pop("moe").items()})
    old["model"].update(old.pop("run"))
    assert config.from_config_dict(config.upgrade_recorded(old)) == new == cfg


def test_the_sections_say_what_a_resumed_run_may_change():
    """Every run, mesh and checkpoint field is resumable; of the architecture none is; the few
    resumable fields elsewhere are declared where the field is."""
    cfg = config.load(DEBUG)
    for section in ("run", "mesh", "checkpoint"):
        assert all(config.is_resumable(f"{section}.{f.name}") for f in dataclasses.fields(getattr(cfg, section)))
    assert not any(config.is_resumable(f"model.{f.name}") for f in dataclasses.fields(cfg.model))
    assert not any(config.is_resumable(f"model.moe.{f.name}") for f in dataclasses.fields(cfg.model.moe))
    assert config.is_resumable("train.steps") and not config.is_resumable("train.lr")
    changed = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, moe_matmul="megablox"),
                                  model=dataclasses.replace(cfg.model, moe=dataclasses.replace(cfg.model.moe,
                                                                                               expert_groups=2)))
    assert config.differences(cfg, changed) == {"model.moe.expert_groups": (1, 2),
                                                "run.moe_matmul": ("ragged_dot", "megablox")}


def test_a_section_is_not_a_value():
    with pytest.raises(ConfigError, match="`model.moe`: is a section"):
        config.load(DEBUG, ["model.moe=3"])
