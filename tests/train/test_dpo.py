"""DPO on packed pairs: sequence log-probs through packing equal each sequence run alone (must-show 2),
and the same loss and gradients on two meshes (must-show 5). (The step's reference argument is
neither changed nor donated: tests/train/test_post_train.py runs hundreds of steps with one.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import sharding
from glm_jax.config import MeshConfig
from glm_jax.data import loader
from glm_jax.model import forward, spec
from glm_jax.train import dpo, state as state_lib
from glm_jax.train.step import grads_and_sums

TINY = ("model.num_layers=1", "model.hidden_size=64", "model.num_heads=4", "model.kv_groups=2", "model.head_dim=16",
        "model.ffn_hidden_size=128", "train.objective='dpo'", "data.mixture='bundled_prefs'", "train.seq_len=512",
        "train.batch_size=8", "train.loss_chunk=128", "dpo.beta=0.5")


@pytest.fixture(scope="module")
def setup(cache_dir):
    from glm_jax import config
    from tests.conftest import REPO

    cfg = config.load(f"{REPO}/configs/debug.py", [f"data.cache_dir={cache_dir!r}", *TINY])
    batch = next(loader.make_iterator(cfg, rows=list(range(8))))
    params = spec.init_params(cfg.model, jax.random.key(0))
    ref = spec.init_params(cfg.model, jax.random.key(1))
    return cfg, batch, params, ref


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dpo_cache"))


def test_packed_sequence_logprobs_equal_each_sequence_run_alone(setup):
    cfg, batch, params, _ = setup
    seq, counts = jax.jit(dpo.sequence_logprobs, static_argnums=2)(params, batch, cfg)
    T = cfg.train.seq_len
    alone, where = {k: [] for k in ("tokens", "targets", "mask")}, []
    for b in range(len(batch["tokens"])):
        for s in range(1, int(batch["segment_ids"][b].max()) + 1):
            sel = batch["segment_ids"][b] == s
            n = int(sel.sum())
            for k, field in (("tokens", "tokens"), ("targets", "targets"), ("mask", "loss_mask")):
                alone[k].append(np.pad(batch[field][b][sel], (0, T - n)))  # the sequence alone, from position 0
            where.append((b, s))
    assert len(where) >= 16 and len({b for b, _ in where}) == 8  # several pairs in every row

    @jax.jit
    def alone_logprobs(tokens, targets, mask):  # the plain forward pass: full logits, no segments, no tiling
        logp = jax.nn.log_softmax(forward(params, tokens, cfg.model), axis=-1)
        return jnp.sum(jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0] * mask, axis=-1)

    want = np.asarray(alone_logprobs(*(np.stack(alone[k]) for k in ("tokens", "targets", "mask"))))
    got = np.asarray([seq[b, s] for b, s in where])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert np.all(np.asarray([counts[b, s] for b, s in where]) > 0) and np.all(got < 0)
    chosen, rejected = dpo.split_pairs(counts)
    assert int(jnp.sum((chosen > 0) & (rejected > 0))) == len(where) // 2  # every segment belongs to a pair


def _loss_and_grads(cfg, mesh_cfg, batch, params, ref):
    cfg = dataclasses.replace(cfg, mesh=mesh_cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    p_sh = state_lib.param_shardings(cfg, mesh)
    with jax.set_mesh(mesh):
        put = lambda tree: jax.device_put(tree, p_sh)  # noqa: E731
        fn = jax.jit(lambda p, b, r: grads_and_sums(p, b, cfg, p_sh, r))
        g, aux = fn(put(params), sharding.global_batch(batch, mesh, cfg.train.batch_size), put(ref))
        return jax.device_get((g, aux))


def test_same_dpo_loss_and_grads_on_two_meshes(setup):
    cfg, batch, params, ref = setup
    g8, a8 = _loss_and_grads(cfg, MeshConfig(fsdp=8), batch, params, ref)
    g42, a42 = _loss_and_grads(cfg, MeshConfig(fsdp=4, tensor=2), batch, params, ref)
    assert a8["pairs"] == a42["pairs"] >= 16
    np.testing.assert_allclose(a42["loss"], a8["loss"], rtol=1e-5)
    assert a42["preference_accuracy"] == a8["preference_accuracy"]
    # A reward is a small difference of two large log-prob sums (~1e3 here): equal to fp32 rounding of those.
    for k in ("rewards_chosen", "rewards_rejected"):
        np.testing.assert_allclose(a42[k], a8[k], atol=1e-3)
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(g8))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(y, x, atol=1e-5 * scale, rtol=1e-5), g8, g42)
    assert scale > 0
