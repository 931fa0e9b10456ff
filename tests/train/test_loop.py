"""The loop in-process: config errors before compile, non-finite loss, stages, params checkpoints."""

import json
import os

import ml_collections
import numpy as np
import pytest

import jax

from glm_jax import config, sharding
from glm_jax.config import ConfigError
from glm_jax.train import checkpoint, loop, metrics, optimizer, state as state_lib
from tests.conftest import REPO
from tests.train import synthetic

SMALL = ["model.num_layers=1", "model.hidden_size=64", "model.ffn_hidden_size=128", "model.vocab_size=512",
         "train.seq_len=32", "train.batch_size=8", "mesh.fsdp=4", "mesh.tensor=2", "train.log_every=1",
         "checkpoint.every_steps=1"]


def _cd(*overrides):
    return config.apply_overrides(config.load_config_dict(os.path.join(REPO, "configs", "debug.py")),
                                  [*SMALL, *overrides])


class _Recorder:
    def __init__(self):
        self.calls = 0

    def __call__(self, cfg, **kw):
        self.calls += 1
        return synthetic.make_iterator(cfg, **kw)


@pytest.mark.parametrize("overrides, field", [
    (["mesh.data=3", "mesh.fsdp=1", "mesh.tensor=1"], "mesh"),
    (["model.num_heads=6", "model.kv_groups=2", "mesh.fsdp=2", "mesh.tensor=4"], "mesh.tensor"),
    (["mesh.fsdp=8", "mesh.tensor=1", "train.batch_size=4"], "train.batch_size"),
    (["run.attention=flash", "run.attention_block_q=128", "train.seq_len=160"], "train.seq_len"),  # 128 does not tile 160
])
def test_config_errors_name_the_field_before_anything_starts(tmp_path, overrides, field):
    data = _Recorder()
    with pytest.raises(ConfigError) as e:
        loop.run(_cd(*overrides), str(tmp_path), make_iterator=data)
    assert e.value.field == field
    assert data.calls == 0  # failed before the data pipeline, init or any compile


def test_a_later_stage_error_fails_before_the_first_stage_trains(tmp_path):
    cd = _cd()
    cd.stage_order = ("short", "long")
    cd.stages = ml_collections.ConfigDict({"short": {"train": {"steps": 1}},
                                           "long": {"train": {"batch_size": 4}, "mesh": {"fsdp": 8, "tensor": 1}}})
    data = _Recorder()
    with pytest.raises(ConfigError) as e:
        loop.run(cd, str(tmp_path), make_iterator=data)
    assert e.value.field == "stages.long.train.batch_size"
    assert data.calls == 0


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cd = _cd("train.lr=1e30", "train.grad_clip=0.0", "train.warmup_steps=0", "train.schedule='constant'",
             "train.steps=4", "checkpoint.async_save=False")
    with pytest.raises(loop.NonFiniteLossError, match=r"at step (\d+)") as e:
        loop.run(cd, str(tmp_path), make_iterator=synthetic.make_iterator)
    bad_step = int(str(e.value).split("at step ")[1].split(";")[0])
    assert bad_step >= 2
    params, _ = checkpoint.restore_params(str(tmp_path))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    steps = checkpoint.StageCheckpoints(checkpoint.stage_dir(str(tmp_path), "main"), read_only=True).all_steps()
    assert max(steps) == bad_step - 1


def _adam_count(workdir, stage, step, cfg):
    tx = optimizer.make_optimizer(cfg.train)
    ckpts = checkpoint.StageCheckpoints(checkpoint.stage_dir(workdir, stage), read_only=True)
    st, data_state = ckpts.restore(step, state_lib.sharded_abstract_state(cfg, sharding.make_mesh(cfg.mesh), tx))
    ckpts.close()
    counts = [int(v) for p, v in jax.tree_util.tree_flatten_with_path(st.opt_state)[0] if "count" in jax.tree_util.keystr(p)]
    return counts[0], data_state


def test_stages_chain_checkpoints_and_a_finished_run_is_skipped(tmp_path, capfd):
    """short (seq 32, rope 1, 3 steps) -> long (seq 64, rope_ratio 4, 2 steps, optimizer kept).
    long starts from short's last checkpoint with its own warmup (lr 0 at its first step, so its
    first checkpoint holds exactly short's params), Adam's count goes on, and the rerun skips both."""
    workdir = str(tmp_path / "run")
    cd = _cd("train.warmup_steps=1")
    cd.stage_order = ("short", "long")
    cd.stages = ml_collections.ConfigDict({
        "short": {"train": {"steps": 3}},
        "long": {"train": {"steps": 2, "seq_len": 64}, "model": {"rope_ratio": 4.0}}})
    result = loop.run(cd, workdir, make_iterator=synthetic.make_iterator)
    assert (result.status, result.step, result.stage) == ("finished", 5, "long")

    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)["stages"]
    assert [(s["name"], s["config"]["train"]["seq_len"], s["config"]["model"]["rope_ratio"]) for s in saved] == \
        [("short", 32, 1.0), ("long", 64, 4.0)]

    p3, cfg3 = checkpoint.restore_params(workdir, step=3)
    p4, cfg4 = checkpoint.restore_params(workdir, step=4)
    p5, cfg5 = checkpoint.restore_params(workdir)
    assert (cfg3.model.rope_ratio, cfg4.model.rope_ratio, cfg5.model.rope_ratio) == (1.0, 4.0, 4.0)
    jax.tree.map(np.testing.assert_array_equal, p4, p3)
    assert not np.array_equal(p5["output"]["kernel"], p4["output"]["kernel"])
    count, data_state = _adam_count(workdir, "long", 5, cfg5)
    assert count == 5  # kept: 3 updates in short + 2 in long
    assert sorted(data_state) == [str(r) for r in range(8)]  # grain's JSON state of each global row

    lines = metrics.read_rows(workdir)
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5]
    capfd.readouterr()
    again = loop.run(cd, workdir, make_iterator=synthetic.make_iterator)
    assert (again.status, again.step) == ("finished", 5)
    assert capfd.readouterr().out.count("finished earlier") == 2
    assert metrics.read_rows(workdir) == lines

    # A params-only checkpoint: restores on one device or sharded, and starts a new run.
    saved_dir = str(tmp_path / "params_only")
    checkpoint.save_params(saved_dir, p3, cfg3)
    back, cfg = checkpoint.restore_params(saved_dir)
    jax.tree.map(np.testing.assert_array_equal, back, p3)
    assert cfg.model == cfg3.model
    fresh = str(tmp_path / "from_params")
    loop.run(_cd("train.warmup_steps=1", "train.steps=1", f"train.init_from='{saved_dir}'"), fresh,
             make_iterator=synthetic.make_iterator)
    started, _ = checkpoint.restore_params(fresh)
    jax.tree.map(np.testing.assert_array_equal, started, p3)  # lr 0 at step 0: params unchanged


def test_init_from_a_missing_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="train.init_from"):
        loop.run(_cd(f"train.init_from='{tmp_path}/nothing'"), str(tmp_path / "w"),
                 make_iterator=synthetic.make_iterator)
