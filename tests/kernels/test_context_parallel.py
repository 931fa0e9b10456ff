"""Context parallelism (sequence axis of the mesh) computes exactly what one shard computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import model, sharding
from glm_jax.config import MeshConfig, RunConfig
from glm_jax.kernels import context_parallel
from tests.conftest import tiny_model


def test_layout_balances_causal_work_and_round_trips():
    order = context_parallel.layout_order(16, 4)
    assert sorted(order) == list(range(16))
    per_shard = order.reshape(4, 4)
    work = [(s + 1).sum() for s in per_shard]  # keys visible to a shard's queries
    assert len(set(work)) == 1, work  # every shard does the same causal work
    x = jnp.arange(2 * 16).reshape(2, 16)
    np.testing.assert_array_equal(context_parallel.from_layout(context_parallel.to_layout(x, 4), 4), x)
    with pytest.raises(ValueError, match="multiple of 2 x the sequence axis"):
        context_parallel.layout_order(20, 4)


@pytest.mark.parametrize("backend, mesh_cfg", [
    ("reference", MeshConfig(fsdp=2, sequence=4)), ("reference", MeshConfig(fsdp=1, sequence=8)),
    ("reference", MeshConfig(fsdp=1, sequence=4, tensor=2)),
    pytest.param("flash", MeshConfig(fsdp=2, sequence=4), marks=pytest.mark.slow),
    pytest.param("flash", MeshConfig(fsdp=1, sequence=8), marks=pytest.mark.slow)],
    ids=["seq4xfsdp2", "seq8", "seq4xtp2", "flash-seq4xfsdp2", "flash-seq8"])
def test_forward_and_gradients_equal_single_shard_with_packing(backend, mesh_cfg):
    # blocks of 8 tile the 64 / (2 x 4) and 64 / (2 x 8) token chunks of each shard
    cfg, run = tiny_model(), RunConfig(attention=backend, attention_block_q=8, attention_block_kv=8)
    params = model.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 64), 0, cfg.vocab_size)
    # two packed documents whose boundary (20) falls inside a context-parallel chunk
    segment_ids = jnp.concatenate([jnp.full((2, 20), 1), jnp.full((2, 44), 2)], axis=1)
    positions = jnp.broadcast_to(jnp.concatenate([jnp.arange(20), jnp.arange(44)]), (2, 64))

    def loss(p):
        logits = model.forward(p, tokens, cfg, run, positions=positions, segment_ids=segment_ids)
        return (jax.nn.log_softmax(logits) * jax.nn.one_hot(jnp.roll(tokens, -1, 1), cfg.vocab_size)).sum()

    want_logits = model.forward(params, tokens, cfg, run, positions=positions, segment_ids=segment_ids)
    want_grads = jax.grad(loss)(params)
    ref = model.forward(params, tokens, cfg, RunConfig(), positions=positions,
                        segment_ids=segment_ids)
    np.testing.assert_allclose(want_logits, ref, atol=2e-5)  # one shard: every backend agrees
    mesh = sharding.make_mesh(mesh_cfg)
    with jax.set_mesh(mesh):
        sp = jax.device_put(params, sharding.tree_shardings(mesh, model.param_specs(cfg)))
        logits = jax.jit(lambda p: model.forward(p, tokens, cfg, run, positions=positions, segment_ids=segment_ids))(sp)
        grads = jax.jit(jax.grad(loss))(sp)
        hlo = jax.jit(jax.grad(loss)).lower(sp).compile().as_text()
    assert "all-gather" in hlo
    np.testing.assert_allclose(logits, want_logits, atol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4), grads, want_grads)
