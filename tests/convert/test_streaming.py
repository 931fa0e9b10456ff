"""Conversion streams a layer at a time: checkpoints store a chunk per layer, to-hf reads one
layer of a stacked leaf from disk, from-hf writes the params-only checkpoint layer by layer, and
both give exactly what the whole-tree paths give."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from glm_jax import model, sharding
from glm_jax.config import CheckpointConfig, MeshConfig
from glm_jax.convert import hf, keymap
from glm_jax.model import spec
from glm_jax.train import checkpoint
from glm_jax.train.state import TrainState


def _leaves(params):
    return [(tuple(k.key for k in kp), leaf) for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]


def _recording(read):
    """`read`, noting every (path, layer) it is asked for."""
    calls = []

    def wrapped(path, layer):
        calls.append((path, layer))
        return read(path, layer)
    return wrapped, calls


def _whole_stacked_requests(calls):
    return [c for c in calls if c[0][0] == "layers" and c[1] is None]


@pytest.fixture(scope="module")
def sharded_params():
    """Random params laid out on a 4x2 (fsdp x tensor) mesh of the 8 simulated devices."""
    from glm_jax import config

    cfg = config.load(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "debug.py"),
                      ["model.num_layers=3"])
    mesh = sharding.make_mesh(MeshConfig(fsdp=4, tensor=2))
    params = jax.device_put(model.init_params(cfg.model, jax.random.key(0)),
                            sharding.tree_shardings(mesh, spec.param_specs(cfg.model)))
    return cfg, mesh, params


def test_to_hf_reads_single_layers_of_a_training_checkpoint_saved_on_a_mesh(sharded_params, tmp_path):
    cfg, _, params = sharded_params
    workdir = str(tmp_path / "run")
    checkpoint.write_stages(workdir, [("main", cfg)])
    ckpts = checkpoint.StageCheckpoints(checkpoint.stage_dir(workdir, "main"), CheckpointConfig(async_save=False))
    ckpts.save(TrainState(step=jnp.int32(5), params=params, opt_state={"count": jnp.int32(5)},
                          rng=jax.random.key_data(jax.random.key(1))), {"0": {"position": 0}}, [0])
    ckpts.close()
    directory, _ = checkpoint.locate_params(workdir)
    tree = ocp.StandardCheckpointer().metadata(directory).item_metadata.tree
    read = checkpoint.param_reader(directory)
    for path, leaf in _leaves(params):
        meta = tree
        for p in path:
            meta = meta[p]
        if path[0] == "layers":
            assert meta.storage.chunk_shape[0] == 1, path  # one chunk per layer: a layer reads alone
            for i in range(leaf.shape[0]):
                np.testing.assert_array_equal(read(path, i), np.asarray(leaf[i]), err_msg=str(path))
        np.testing.assert_array_equal(read(path, None), np.asarray(leaf), err_msg=str(path))
    # export asks for stacked leaves one layer at a time, and writes what the in-memory tree gives
    recorded, calls = _recording(read)
    streamed = dict(keymap.export_tensors(recorded, cfg.model, "thudm"))
    assert not _whole_stacked_requests(calls)
    for name, tensor in keymap.export_tensors(jax.tree.map(np.asarray, params), cfg.model, "thudm"):
        np.testing.assert_array_equal(streamed[name], tensor, err_msg=name)


def test_param_reader_also_reads_checkpoints_chunked_across_layers(sharded_params, tmp_path):
    cfg, _, params = sharded_params
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "params", params)  # orbax's default chunking: a device shard, all layers
    wi = ocp.StandardCheckpointer().metadata(tmp_path / "params").item_metadata.tree["layers"]["mlp"]["wi"]["kernel"]
    assert wi.storage.chunk_shape[0] == 3
    read = checkpoint.param_reader(str(tmp_path / "params"))
    for path, leaf in _leaves(params):
        if path[0] == "layers":
            for i in (2, 0, 1):
                np.testing.assert_array_equal(read(path, i), np.asarray(leaf[i]), err_msg=str(path))


@pytest.mark.parametrize("naming", keymap.NAMINGS)
def test_from_hf_writes_layer_by_layer_the_checkpoint_the_tree_would_give(sharded_params, tmp_path, naming):
    cfg, mesh, params = sharded_params
    params = jax.tree.map(np.asarray, params)
    params["layers"]["attn"]["k"]["bias"] = np.random.default_rng(0).normal(
        size=params["layers"]["attn"]["k"]["bias"].shape).astype(np.float32)  # a mixed-up QKV split would show
    hf_dir = str(tmp_path / "hf")
    hf.export(params, cfg.model, hf_dir, naming=naming, dtype="float32", max_shard_bytes=1 << 20)
    recorded, calls = _recording(hf.dir_reader(hf_dir, cfg.model))
    checkpoint.save_params(str(tmp_path / "streamed"), recorded, cfg)
    assert not _whole_stacked_requests(calls)
    checkpoint.save_params(str(tmp_path / "tree"), params, cfg)
    for m in (None, mesh):
        back, _ = checkpoint.restore_params(str(tmp_path / "streamed"), mesh=m)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), back, params)
    # one format: the same tree metadata (value types, keys) and per-layer chunks as a saved tree
    meta = [json.load(open(tmp_path / d / "params" / "_METADATA"))["tree_metadata"] for d in ("streamed", "tree")]
    assert meta[0] == meta[1]
    chunks = [ocp.StandardCheckpointer().metadata(tmp_path / d / "params").item_metadata.tree["layers"]["mlp"]["wi"]
              ["kernel"].storage.chunk_shape for d in ("streamed", "tree")]
    assert chunks[0] == chunks[1] == (1, *params["layers"]["mlp"]["wi"]["kernel"].shape[1:])
