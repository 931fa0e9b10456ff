"""KV-cache decoding: the same layers as `forward`, attending against a per-layer K/V cache.

    cache = init_cache(cfg, batch=B, max_len=S, run=run)
    logits, cache = extend(params, prompts, cache, cfg, run)   # prefill: prompts [B, T], right-padded
    cache = set_lengths(cache, prompt_lengths)                 # rows continue after their own prompt
    logits, cache = extend(params, next_tokens[:, None], cache, cfg, run)   # one step

Cache layout: k, v [L, B, S, K, E] (run.dtype; a MoE model's dense layers first, then its MoE layers) and `length` [B] int32 (tokens written per row).
New tokens of row b go to cache slots length[b] .. length[b] + T - 1 and take those positions
for rotary; a query at position p sees cache slots <= p, so slots past a row's length (padding
written during a batched prefill) are never read before they are overwritten.

Letters: L layers, B batch, T new tokens, S cache length, H heads, K kv heads, G = H / K, E head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glm_jax.config import ModelConfig, RunConfig
from glm_jax.model.layers import rms_norm, rotary_tables
from glm_jax.model.transformer import block, embed, logits_from_hidden


def init_cache(cfg: ModelConfig, batch: int, max_len: int, run: RunConfig = RunConfig()) -> dict:
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, run.jnp_dtype), "v": jnp.zeros(shape, run.jnp_dtype),
            "length": jnp.zeros((batch,), jnp.int32)}


def set_lengths(cache: dict, lengths: jax.Array) -> dict:
    return {**cache, "length": jnp.asarray(lengths, jnp.int32)}


def _write(cache_l: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """cache_l [B, S, K, E], new [B, T, K, E], start [B] -> cache with rows written at start[b]."""
    return jax.vmap(lambda c, x, s: jax.lax.dynamic_update_slice(c, x.astype(c.dtype), (s, 0, 0)))(cache_l, new, start)


def _cached_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, q_pos: jax.Array) -> jax.Array:
    """q [B, T, H, E], caches [B, S, K, E], q_pos [B, T] -> [B, T, H, E]; slot s visible iff s <= q_pos."""
    B, T, H, E = q.shape
    K = k_cache.shape[2]
    qg = q.reshape(B, T, K, H // K, E)
    logits = jnp.einsum("btkge,bske->bkgts", qg, k_cache, preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(E))
    visible = jnp.arange(k_cache.shape[1])[None, None, :] <= q_pos[:, :, None]  # [B, T, S]
    logits = jnp.where(visible[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_cache.dtype)
    out = jnp.einsum("bkgts,bske->btkge", probs, v_cache, preferred_element_type=jnp.float32)
    return out.reshape(B, T, H, E).astype(q.dtype)


def extend(params: dict, tokens: jax.Array, cache: dict, cfg: ModelConfig,
           run: RunConfig = RunConfig()) -> tuple[jax.Array, dict]:
    """Appends tokens [B, T] to every row's cache; returns logits [B, T, V] fp32 and the new cache."""
    start = cache["length"]
    positions = start[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
    cos, sin = rotary_tables(positions, cfg.rotary_dim, cfg.rope_theta)
    x = embed(params, tokens, run)

    def layer(x, xs):
        layer_params, k_cache, v_cache = xs

        def attend(q, k, v):
            k_new, v_new = _write(k_cache, k, start), _write(v_cache, v, start)
            return _cached_attention(q, k_new, v_new, positions), (k_new, v_new)

        return block(x, layer_params, cos, sin, attend, cfg, run)

    # the dense stack then (GLM-4.5) the MoE stack, each over its slice of the cache's L axis
    ks, vs, first = [], [], 0
    for name, n in (("layers", cfg.num_dense_layers), ("moe_layers", cfg.num_moe_layers)):
        if n:
            x, (k, v) = jax.lax.scan(layer, x, (params[name], cache["k"][first:first + n], cache["v"][first:first + n]))
            ks.append(k)
            vs.append(v)
            first += n
    k, v = (ks[0], vs[0]) if len(ks) == 1 else (jnp.concatenate(ks), jnp.concatenate(vs))
    x = rms_norm(x, params["final_norm"]["scale"], cfg.rms_norm_eps)
    return logits_from_hidden(params, x), {"k": k, "v": v, "length": start + tokens.shape[1]}
