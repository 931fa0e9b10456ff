"""Choosing a backend by config: bad block sizes fail at config time naming the field; off TPU the
kernels switch to interpret mode by themselves; without a mesh the backends run unsharded."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.config import ConfigError, RunConfig
from glm_jax.kernels.shard import interpret_mode
from glm_jax.model.attention import attention


def test_splash_block_not_multiple_of_128_fails_at_config_time():
    with pytest.raises(ConfigError, match="run.attention_block_kv"):
        RunConfig(attention="splash", attention_block_q=128, attention_block_kv=64)


def test_interpret_mode_switches_on_off_tpu():
    assert jax.default_backend() == "cpu"
    assert interpret_mode(False) is True
    assert type(interpret_mode(False, checked=True)).__name__ == "InterpretParams"


@pytest.mark.parametrize("backend", ["flash", "splash"])
def test_backend_without_mesh_matches_reference(backend):
    run = RunConfig(attention_block_q=128, attention_block_kv=128)
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (2, 256, 8, 64))
    k, v = (jax.random.normal(kk, (2, 256, 2, 64)) for kk in ks[1:])
    seg = jnp.asarray(np.repeat([[0] * 100 + [1] * 156], 2, 0), jnp.int32)
    want = attention(q, k, v, seg, run)
    got = jax.jit(attention, static_argnums=4)(q, k, v, seg, dataclasses.replace(run, attention=backend))
    np.testing.assert_allclose(got, want, atol=2e-5)
