"""The attention entry point. `cfg.attention` picks the backend; every backend computes the same
numbers: causal attention within segments, grouped-query (each of K kv heads serves G = H / K
query heads), softmax in fp32.

Backends: "reference" (plain XLA, O(T^2) memory), "flash" and "splash" (Pallas kernels in
`glm_jax.kernels`).

Letters: B batch, T query length, S key length, H query heads, K kv heads, G heads per kv
group, E head dim.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from glm_jax.config import ModelConfig
from glm_jax.kernels.flash_attention import flash_attention
from glm_jax.kernels.shard import interpret_mode, per_shard
from glm_jax.kernels.splash import splash_attention


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """q [B, T, H, E], k/v [B, S, K, E], segment_ids [B, T] or None -> [B, T, H, E].

    K/V are not repeated: queries are viewed as [B, T, K, G, E] and contract against their
    group's kv head. Key i is visible to query t iff i <= t and both share a segment id."""
    B, T, H, E = q.shape
    K = k.shape[2]
    qg = q.reshape(B, T, K, H // K, E)
    logits = jnp.einsum("btkge,bske->bkgts", qg, k, preferred_element_type=jnp.float32)
    logits = logits * (1.0 / jnp.sqrt(jnp.float32(E)))
    mask = jnp.tril(jnp.ones((T, T), dtype=bool))[None]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bske->btkge", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(B, T, H, E).astype(q.dtype)


def _kernel_backend(kernel: Callable) -> Callable:
    """A Pallas kernel run per shard (shard_map over the current mesh), blocks and interpret
    mode from the config; interpret mode switches on by itself when the target is not a TPU."""
    def run(q, k, v, seg, cfg: ModelConfig):
        fn = functools.partial(kernel, block_q=cfg.attention_block_q, block_kv=cfg.attention_block_kv,
                               interpret=interpret_mode(cfg.attention_interpret))
        return per_shard(fn, q, k, v, seg)
    return run


def _backends() -> dict[str, Callable]:
    return {"reference": lambda q, k, v, seg, cfg: reference_attention(q, k, v, seg),
            "flash": _kernel_backend(flash_attention),
            "splash": _kernel_backend(splash_attention)}


def attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, cfg: ModelConfig) -> jax.Array:
    """q [B, T, H, E], k/v [B, T, K, E], segment_ids [B, T] or None -> [B, T, H, E]."""
    return _backends()[cfg.attention](q, k, v, segment_ids, cfg)
