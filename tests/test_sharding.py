"""Mesh from config, the rule table on params, global batches, and the embedding lookup."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from glm_jax import sharding
from glm_jax.config import ConfigError, MeshConfig
from glm_jax.model import param_specs
from tests import cli
from tests.conftest import tiny_model


def test_minus_one_fills_the_remaining_devices():
    assert sharding.mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == {"data": 2, "fsdp": 2, "expert": 1,
                                                                             "sequence": 1, "tensor": 2}
    with pytest.raises(ConfigError, match="mesh"):
        sharding.mesh_shape(MeshConfig(data=3, fsdp=1), 8)
    with pytest.raises(ConfigError, match="mesh.fsdp"):
        sharding.mesh_shape(MeshConfig(data=3, fsdp=-1), 8)


def test_param_shardings_follow_the_rule_table():
    mesh = sharding.make_mesh(MeshConfig(fsdp=2, tensor=4))
    sh = sharding.tree_shardings(mesh, param_specs(tiny_model()))
    assert sh["embed"]["embedding"].spec == P("tensor", "fsdp")
    assert sh["output"]["kernel"].spec == P("fsdp", "tensor")
    assert sh["layers"]["attn"]["q"]["kernel"].spec == P(None, "fsdp", "tensor", None)
    # 2 kv heads cannot split 4 ways: K/V weights replicate that dim, Q still shards.
    assert sh["layers"]["attn"]["k"]["kernel"].spec == P(None, "fsdp", None, None)
    assert sh["layers"]["mlp"]["wo"]["kernel"].spec == P(None, "tensor", "fsdp")


def test_on_an_expert_mesh_every_weight_matrix_is_split_over_every_device():
    """expert=4 x fsdp=2: routed experts over expert (experts) x fsdp (embed), every other matrix
    (attention, router, shared expert, embeddings, MTP) over fsdp x expert: each device holds an
    eighth of every matrix, none is repeated on the 4 expert shards (ZeRO-3 over both axes)."""
    from tests.conftest import tiny_moe

    mesh = sharding.make_mesh(MeshConfig(expert=4, fsdp=2))
    specs = param_specs(tiny_moe(mtp_layers=1))
    sh = sharding.tree_shardings(mesh, specs)
    assert sh["moe_layers"]["moe"]["experts"]["wi"]["kernel"].spec == P(None, "expert", "fsdp", None, None)
    assert sh["moe_layers"]["attn"]["q"]["kernel"].spec == P(None, ("fsdp", "expert"), None, None)
    leaves = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: hasattr(x, "logical_axes"))[0]
    for (path, spec), s in zip(leaves, jax.tree.leaves(sh)):
        if {"embed", "expert_embed"} & set(spec.logical_axes):  # every matrix (norm scales, biases replicate)
            assert np.prod(s.shard_shape(spec.shape)) * 8 == np.prod(spec.shape), jax.tree_util.keystr(path)
    # a dim fsdp x expert does not divide goes over fsdp alone, not replicated
    assert sharding.sharding_for(mesh, (6, 4), ("embed", None)).spec == P("fsdp", None)


def test_global_batch_assembles_rows_sharded_over_data_and_fsdp():
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    local = {"tokens": np.arange(8 * 16, dtype=np.int32).reshape(8, 16)}
    batch = sharding.global_batch(local, mesh, 8)
    assert batch["tokens"].sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(batch["tokens"]), local["tokens"])


_REMAT_PROBE = """
import os, sys
import jax, jax.numpy as jnp
from glm_jax import sharding
from glm_jax.config import MeshConfig
mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
table = jax.random.normal(jax.random.key(0), (256, 64))
tokens = jax.random.randint(jax.random.key(1), (8, 32), 0, 256)
lookup = {"plain": lambda t, x: t[x], "ours": sharding.embed_lookup}[sys.argv[1]]
with jax.set_mesh(mesh):
    table = jax.device_put(table, sharding.sharding_for(mesh, table.shape, ("vocab", "embed")))
    tokens = jax.device_put(tokens, sharding.batch_sharding(mesh, tokens.shape))
    embed = lambda t, x: sharding.constrain(lookup(t, x), ("batch", "seq", None))  # as the model does
    out = jax.jit(jax.value_and_grad(lambda t, x: jnp.sum(jnp.sin(embed(t, x)))))(table, tokens)
    print(float(out[0]))
"""


def _compile_log(which: str) -> str:
    # TF_CPP_MIN_LOG_LEVEL=0: XLA's warnings shown. The warning is printed by a compile, never by a cache hit.
    env = cli.env(TF_CPP_MIN_LOG_LEVEL=0, JAX_COMPILATION_CACHE_DIR=None)
    proc = cli.run("-c", _REMAT_PROBE, which, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def test_embed_lookup_avoids_full_rematerialization():
    """On a data x fsdp x tensor mesh the plain gather from the (vocab->tensor, embed->fsdp) table
    makes XLA rematerialise in full; our lookup compiles without that warning, same value."""
    plain, ours = _compile_log("plain"), _compile_log("ours")
    assert "Involuntary full rematerialization" in plain  # the probe detects the problem
    assert "Involuntary full rematerialization" not in ours
    assert plain.splitlines()[0] == ours.splitlines()[0]  # the printed loss


def test_embed_lookup_equals_the_plain_gather_forward_and_backward():
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    table = jax.random.normal(jax.random.key(0), (64, 32))
    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, 64)
    with jax.set_mesh(mesh):
        t = jax.device_put(table, sharding.sharding_for(mesh, table.shape, ("vocab", "embed")))
        x = jax.device_put(tokens, sharding.batch_sharding(mesh, tokens.shape))
        out, vjp = jax.vjp(sharding.embed_lookup, t, x)
        g = vjp(jnp.cos(out))[0]
    ref, ref_vjp = jax.vjp(lambda a: a[tokens], table)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref_vjp(jnp.cos(ref))[0]), rtol=0, atol=1e-6)
