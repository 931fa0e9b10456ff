"""Loss: masked fp32 cross-entropy, z-loss, token vs sequence (LongAlign) weighting."""

import numpy as np
import pytest


import jax.numpy as jnp

from glm_jax.train import loss


def _np_ce(logits, targets):
    z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return z - np.take_along_axis(logits, targets[..., None], -1)[..., 0], z


def _case():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 8, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(2, 8)).astype(np.int32)
    targets[0, 0] = 0  # token id 0 is a real token
    # row 0: a 6-token document (5 counted targets) and a 2-token one (1 counted); row 1: one doc + padding
    seg = np.array([[1, 1, 1, 1, 1, 1, 2, 2], [1, 1, 1, 1, 0, 0, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 0, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0]], np.float32)
    return logits, targets, seg, mask


def test_token_weighting_is_the_masked_mean_and_counts_token_zero():
    logits, targets, seg, mask = _case()
    w = loss.token_weights(jnp.asarray(mask), jnp.asarray(seg), "token")
    sums = loss.cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), w, z_loss=0.0)
    ce, _ = _np_ce(logits.astype(np.float64), targets)
    np.testing.assert_allclose(float(sums["ce"] / w.sum()), (ce * mask).sum() / mask.sum(), rtol=1e-6)
    assert float(w[0, 0]) == 1.0  # the target with id 0 counts


def test_sequence_weighting_gives_each_packed_sequence_equal_weight():
    logits, targets, seg, mask = _case()
    w = loss.token_weights(jnp.asarray(mask), jnp.asarray(seg), "sequence")
    ce, _ = _np_ce(logits.astype(np.float64), targets)
    per_seq = [ce[0, :5].mean(), ce[0, 6:7].mean(), ce[1, :3].mean()]  # three sequences, equal weight
    sums = loss.cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), w, z_loss=0.0)
    assert float(w.sum()) == 3.0
    np.testing.assert_allclose(float(sums["ce"] / w.sum()), np.mean(per_seq), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(w[0, :5]), 0.2, rtol=1e-6)
    assert float(w[0, 6]) == 1.0 and float(w[1, 4:].sum()) == 0.0


def test_z_loss_adds_the_weighted_mean_of_log_z_squared():
    logits, targets, seg, mask = _case()
    w = loss.token_weights(jnp.asarray(mask), jnp.asarray(seg), "token")
    sums = loss.cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), w, z_loss=1e-2)
    ce, z = _np_ce(logits.astype(np.float64), targets)
    expect = ((ce + 1e-2 * z ** 2) * mask).sum()
    np.testing.assert_allclose(float(sums["total"]), expect, rtol=1e-6)
    assert sums["total"].dtype == jnp.float32



# ---------------------------------------------------------------------------------------------
# Vocab-tiled loss (the training path) against the full-logits path
# ---------------------------------------------------------------------------------------------

def _full_logits_sums(params, batch, cfg):
    """The untiled reference: logits [B, T, V] whole, then cross_entropy_sums."""
    from glm_jax import model

    logits = model.forward(params, batch["tokens"], cfg.model, cfg.run, batch["positions"], batch["segment_ids"])
    w = loss.token_weights(batch["loss_mask"], batch["segment_ids"], cfg.train.loss_weighting)
    sums = loss.cross_entropy_sums(logits, batch["targets"], w, cfg.train.z_loss)
    return sums["total"], {"ce": sums["ce"], "z": sums["z"], "weight": jnp.sum(w)}


def _tiny_train_cfg(weighting, chunk, mesh=None):
    import dataclasses

    from glm_jax.config import Config, MeshConfig, TrainConfig
    from tests.conftest import tiny_model

    return Config(model=tiny_model(vocab_size=256), mesh=mesh or MeshConfig(fsdp=1),
                  train=dataclasses.replace(TrainConfig(), seq_len=32, batch_size=4, z_loss=1e-3,
                                            loss_weighting=weighting, loss_chunk=chunk))


@pytest.mark.parametrize("weighting,sharded", [("token", False), ("sequence", True)])
def test_tiled_loss_and_gradients_equal_the_full_logits_path(weighting, sharded):
    """Packed rows (1-3 documents + padding), loss mask, z-loss: the tiled loss (4 chunks of 8
    positions) gives the full-logits sums and gradients to fp32 1e-5, on one device or with the
    vocab sharded over tensor=2 (fsdp=4)."""
    import jax

    from glm_jax import model, sharding
    from glm_jax.config import MeshConfig
    from glm_jax.train import step as step_lib
    from tests.train import synthetic

    cfg = _tiny_train_cfg(weighting, chunk=8)
    batch = jax.tree.map(jnp.asarray, next(synthetic.make_iterator(cfg, rows=range(cfg.train.batch_size))))
    assert float(batch["loss_mask"].sum()) < batch["loss_mask"].size  # masked targets exist
    assert int(batch["segment_ids"].max()) > 1  # some row packs several documents
    params = model.init_params(cfg.model, jax.random.key(0))
    for mesh_cfg in ([MeshConfig(fsdp=4, tensor=2)] if sharded else [None]):
        c = _tiny_train_cfg(weighting, chunk=8, mesh=mesh_cfg)
        devices = jax.devices()[:1] if mesh_cfg is None else jax.devices()
        mesh = sharding.make_mesh(c.mesh, devices)
        with jax.set_mesh(mesh):  # both paths on the same mesh: only the tiling differs
            ref_g, ref_aux = jax.jit(jax.grad(lambda p: _full_logits_sums(p, batch, c), has_aux=True))(params)
            g, aux = jax.jit(jax.grad(lambda p: step_lib.loss_sums(p, batch, c), has_aux=True))(params)
        for k in ("ce", "z", "weight"):
            np.testing.assert_allclose(float(aux[k]), float(ref_aux[k]), rtol=1e-5, err_msg=k)
        for path, a in jax.tree_util.tree_flatten_with_path(g)[0]:
            b = ref_g
            for p in path:
                b = b[p.key]
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{mesh_cfg} {jax.tree_util.keystr(path)}")
    assert float(ref_aux["z"]) > 0


def test_loss_chunk_that_does_not_divide_seq_len_is_refused():
    from glm_jax.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="train.loss_chunk"):
        TrainConfig(seq_len=96, loss_chunk=64)
    assert TrainConfig(seq_len=96, loss_chunk=512).loss_chunk == 512  # one chunk of the whole row


def test_tiled_loss_cuts_the_debug_train_steps_peak_memory_by_more_than_the_logits(monkeypatch):
    """The debug model's real train step (AdamW, donated state, 1 CPU device) at GLM-4's vocab
    V = 151,552, batch 8 x 256: fp32 logits [B, T, V] are 1,184 MiB. Measured (XLA:CPU, one
    compile each): full-logits path 4,050 MiB of temporaries, tiled with train.loss_chunk=32
    (8 chunks) 1,092 MiB, a drop of 2,958 MiB = 2.5 x the logits."""
    import jax

    from glm_jax import config, sharding
    from glm_jax.train import optimizer, state as state_lib, step as step_lib
    from tests.conftest import REPO

    cfg = config.load(f"{REPO}/configs/debug.py", ["model.vocab_size=151552", "mesh.fsdp=1", "train.loss_chunk=32"])
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    tx = optimizer.make_optimizer(cfg.train)

    def temp_bytes():
        with jax.set_mesh(mesh):
            fn = step_lib.make_train_step(cfg, mesh, tx=tx)
            compiled = fn.lower(state_lib.sharded_abstract_state(cfg, mesh, tx), step_lib.abstract_batch(cfg, mesh))
            return compiled.compile().memory_analysis().temp_size_in_bytes

    tiled = temp_bytes()
    monkeypatch.setattr(step_lib, "loss_sums", _full_logits_sums)
    full = temp_bytes()
    logits = cfg.train.batch_size * cfg.train.seq_len * cfg.model.vocab_size * 4
    assert full - tiled >= logits, (full / 2**20, tiled / 2**20, logits / 2**20)
