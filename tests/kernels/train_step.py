"""The real training loss and gradients (glm_jax.train.step.grads_and_sums) for the kernel tests,
on packed rows given as (tokens, segment_ids), with params sharded by the rule table."""

import jax
import jax.numpy as jnp

from glm_jax import config, model
from glm_jax.sharding import sharding_for, tree_shardings
from glm_jax.train.step import grads_and_sums


def batch_from(tokens, segment_ids):
    """The training batch of packed rows: next-token targets within each segment."""
    same_next = jnp.concatenate([segment_ids[:, 1:] == segment_ids[:, :-1],
                                 jnp.zeros_like(segment_ids[:, :1], bool)], axis=1)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
    idx = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    positions = idx - jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return {"tokens": tokens, "targets": jnp.roll(tokens, -1, axis=1), "positions": positions.astype(jnp.int32),
            "segment_ids": segment_ids, "loss_mask": same_next.astype(jnp.float32)}


def jitted_step(model_cfg, mesh, batch_shape):
    """jit of (params, tokens, segment_ids, run config) -> (mean loss, grads of the summed loss)."""
    p_shard = tree_shardings(mesh, model.param_specs(model_cfg))
    d_shard = sharding_for(mesh, batch_shape, ("batch", "seq"))

    def step(params, tokens, segment_ids, run):
        grads, sums = grads_and_sums(params, batch_from(tokens, segment_ids), config.Config(model=model_cfg, run=run))
        return sums["ce"] / sums["weight"], grads

    return jax.jit(step, static_argnums=3, in_shardings=(p_shard, d_shard, d_shard), out_shardings=(None, p_shard))
