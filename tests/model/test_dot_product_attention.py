"""`run.attention=dot_product` (jax.nn.dot_product_attention; XLA on CPU, cuDNN on NVIDIA GPUs)
computes the reference backend's numbers: causal, grouped-query, packed segments."""

import numpy as np

import jax
import jax.numpy as jnp

from glm_jax import model
from glm_jax.config import ConfigError, MeshConfig, RunConfig
from glm_jax.model.attention import dot_product_attention, reference_attention
from glm_jax.sharding import make_mesh
from tests.conftest import tiny_model


def _qkv_seg(B=2, T=64, H=8, K=2, E=16):
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (B, T, H, E), jnp.float32)
    k = jax.random.normal(kk, (B, T, K, E), jnp.float32)
    v = jax.random.normal(kv, (B, T, K, E), jnp.float32)
    bounds = np.array([[0, 20, 41], [0, 64, 64]])  # row 0: three documents; row 1: one
    seg = jnp.asarray((np.arange(T)[None, :, None] >= bounds[:, None, :]).sum(-1), jnp.int32)
    return q, k, v, seg


def test_dot_product_matches_reference_causal_gqa_packed_values_and_grads():
    q, k, v, seg = _qkv_seg()
    for s in (None, seg):
        ref = reference_attention(q, k, v, s)
        out = dot_product_attention(q, k, v, s)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)

        def loss(fn, q, k, v):
            return jnp.sum(fn(q, k, v, s) * jnp.cos(jnp.arange(q.shape[-1], dtype=jnp.float32)))

        g_ref = jax.grad(lambda *a: loss(reference_attention, *a), argnums=(0, 1, 2))(q, k, v)
        g = jax.grad(lambda *a: loss(dot_product_attention, *a), argnums=(0, 1, 2))(q, k, v)
        for a, b in zip(g, g_ref):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # the segments matter: without them the packed row attends across documents
    assert not np.allclose(dot_product_attention(q, k, v, seg), dot_product_attention(q, k, v, None), atol=1e-3)


def test_model_with_dot_product_backend_equals_reference_on_a_sharded_mesh():
    cfg = tiny_model()
    params = model.init_params(cfg, jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (4, 32), 0, cfg.vocab_size)
    seg = jnp.asarray(np.repeat([[1] * 12 + [2] * 20], 4, 0), jnp.int32)
    ref = model.forward(params, tokens, cfg, segment_ids=seg)
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    dp = RunConfig(attention="dot_product")
    with jax.set_mesh(mesh):
        out = jax.jit(lambda p, t, s: model.forward(p, t, cfg, dp, segment_ids=s))(params, tokens, seg)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_dot_product_with_context_parallelism_is_refused_naming_the_field():
    import pytest

    cfg, run = tiny_model(), RunConfig(attention="dot_product")
    params = model.init_params(cfg, jax.random.key(1))
    tokens = jnp.zeros((2, 32), jnp.int32)
    with jax.set_mesh(make_mesh(MeshConfig(fsdp=2, sequence=4))):
        with pytest.raises(ConfigError, match=r"run.attention.*'dot_product' has no context-parallel path"):
            jax.eval_shape(lambda p, t: model.forward(p, t, cfg, run), params, tokens)
