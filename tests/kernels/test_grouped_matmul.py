"""The experts' grouped matmul: megablox's Pallas kernel (interpreted on CPU) gives ragged_dot's
values and gradients on ragged groups, and the debug-size MoE gives the same loss and gradients
with either backend on a mesh (megablox inside the per-device shard_map), dropless or with a capacity."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.kernels.grouped_matmul import grouped_matmul


def test_megablox_equals_ragged_dot_on_ragged_groups():
    # M, K, N not multiples of the 128 tile; an empty group; 20 rows past the groups (must be 0)
    M, K, N = 200, 48, 96
    x = jax.random.normal(jax.random.key(0), (M, K))
    w = jax.random.normal(jax.random.key(1), (4, K, N))
    sizes = jnp.array([50, 0, 70, 60], jnp.int32)

    def loss(backend):
        return lambda x, w: jnp.sum(jnp.sin(grouped_matmul(x, w, sizes, backend)))

    ref_y = grouped_matmul(x, w, sizes, "ragged_dot")
    y = grouped_matmul(x, w, sizes, "megablox")
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(y[180:]))
    ref_g = jax.grad(loss("ragged_dot"), argnums=(0, 1))(x, w)
    g = jax.grad(loss("megablox"), argnums=(0, 1))(x, w)
    for a, b in zip(g, ref_g):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(g[0][180:]))  # rows in no group get no gradient


@pytest.mark.slow
def test_moe_loss_and_grads_same_with_megablox_on_a_mesh():
    from tests.conftest import tiny_moe
    from tests.moe.test_meshes import loss_and_grads
    from tests.moe.test_train import train_cfg

    base = train_cfg(batch_size=2, seq_len=16, mtp_loss_weight=0.0)
    base = dataclasses.replace(base, model=tiny_moe(num_layers=2, vocab_size=128))  # one dense, one MoE layer
    # dropless with expert=1, and experts split over expert=2 with a capacity that drops (the
    # receive buffers then end where the kept rows do)
    for mesh, kw in ((dict(fsdp=2), {}), (dict(expert=2, fsdp=1), dict(moe_capacity_factor=1.0))):
        ref_g, ref = loss_and_grads(mesh, kw, base)
        g, aux = loss_and_grads(mesh, dict(kw, moe_matmul="megablox"), base)
        np.testing.assert_allclose(aux["ce"], ref["ce"], rtol=1e-5)
        np.testing.assert_array_equal(aux["stats"]["moe_layers"]["load"], ref["stats"]["moe_layers"]["load"])
        assert float(aux["stats"]["moe_layers"]["dropped"].sum()) == float(ref["stats"]["moe_layers"]["dropped"].sum())
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ref_g)[0], jax.tree.leaves(g)):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5, err_msg=f"{mesh} {jax.tree_util.keystr(path)}")
    assert float(ref["stats"]["moe_layers"]["dropped"].sum()) > 0
