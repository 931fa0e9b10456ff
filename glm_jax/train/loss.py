"""Cross-entropy in fp32 with loss masks, an optional z-loss and LongAlign sequence weighting.

Losses are returned as *sums* with their total weight so that gradient accumulation over
micro-batches gives exactly the full-batch mean: mean = sum over micro-batches / total weight.

Weighting (`train.loss_weighting`):
- "token": every target with loss_mask 1 weighs the same (the usual mean over tokens).
- "sequence": every packed sequence (a (row, segment id) pair with at least one counted target)
  weighs the same, whatever its length (LongAlign, arXiv 2401.18058): a token of a sequence with
  n counted targets weighs 1 / n, and the total weight is the number of sequences.

Letters: B batch, T sequence, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_weights(loss_mask: jax.Array, segment_ids: jax.Array, weighting: str) -> jax.Array:
    """loss_mask [B, T] float, segment_ids [B, T] int -> per-token weights [B, T] fp32."""
    mask = loss_mask.astype(jnp.float32)
    if weighting == "token":
        return mask
    B, T = segment_ids.shape
    # One bucket per (row, segment id); segment ids are < T + 1 (0 = padding, 1.. = documents).
    ids = (jnp.arange(B, dtype=jnp.int32)[:, None] * (T + 1) + segment_ids.astype(jnp.int32)).reshape(-1)
    counts = jax.ops.segment_sum(mask.reshape(-1), ids, num_segments=B * (T + 1))
    per_token = counts[ids].reshape(B, T)
    return jnp.where(mask > 0, mask / jnp.maximum(per_token, 1.0), 0.0)


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                       z_loss: float) -> dict[str, jax.Array]:
    """logits [B, T, V] fp32, targets [B, T] int, weights [B, T] -> weighted sums (fp32 scalars):
    `ce` (cross-entropy), `z` (log(Z)^2, GLM/PaLM z-loss) and `total` = ce + z_loss * z."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ce = jnp.sum((log_z - target_logit) * weights)
    z = jnp.sum(jnp.square(log_z) * weights)
    return {"ce": ce, "z": z, "total": ce + z_loss * z}
