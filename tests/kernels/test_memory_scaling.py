"""The flash backend makes a long-context fwd+bwd's memory linear in sequence length (compiled
memory_analysis of the debug model, nothing executed); the reference backend is quadratic."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from glm_jax import model


def _temp_bytes(cfg, run, seq_len):
    def loss(p, tokens):
        return model.forward(p, tokens, cfg, run).mean()

    tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    compiled = jax.jit(jax.grad(loss)).lower(model.abstract_params(cfg), tokens).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("backend, lengths, growth", [
    ("flash", (4096, 8192, 16384, 32768), (1.8, 2.2)),   # x2 per doubling: O(T)
    ("reference", (4096, 8192), (3.5, 4.5)),            # x4 per doubling: O(T^2)
])
def test_fwd_bwd_memory_growth(debug_cfg, backend, lengths, growth):
    run = dataclasses.replace(debug_cfg.run, attention=backend, attention_block_q=512, attention_block_kv=512,
                              remat="full")
    temps = [_temp_bytes(debug_cfg.model, run, n) for n in lengths]
    ratios = [b / a for a, b in zip(temps, temps[1:])]
    assert all(growth[0] <= r <= growth[1] for r in ratios), (backend, temps, ratios)
