"""A stand-in training step for the kernel tests: value_and_grad of next-token cross-entropy over
`model.forward` with params sharded by the rule table. (The real train step lives in
glm_jax/train; these tests switch to it once it is merged.)"""

import jax
import jax.numpy as jnp

from glm_jax import model
from glm_jax.sharding import sharding_for


def loss_fn(params, tokens, segment_ids, cfg):
    """Mean next-token cross-entropy within segments (a segment's last token predicts nothing)."""
    logits = model.forward(params, tokens, cfg, segment_ids=segment_ids)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    w = (segment_ids[:, 1:] == segment_ids[:, :-1]).astype(jnp.float32)
    return jnp.sum(nll * w) / jnp.sum(w)


def shardings(cfg, mesh, batch_shape):
    """(param shardings tree, data sharding) for `mesh`."""
    p = jax.tree.map(lambda s, axes: sharding_for(mesh, s.shape, axes), model.abstract_params(cfg),
                     model.logical_axes(cfg))
    return p, sharding_for(mesh, batch_shape, ("batch", "seq"))


def jitted_step(cfg, mesh, batch_shape):
    """jit of (params, tokens, segment_ids) -> (loss, grads) with explicit shardings."""
    p_shard, d_shard = shardings(cfg, mesh, batch_shape)
    return jax.jit(jax.value_and_grad(loss_fn), static_argnums=3, in_shardings=(p_shard, d_shard, d_shard),
                   out_shardings=(None, p_shard))
