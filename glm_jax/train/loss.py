"""Cross-entropy in fp32 with loss masks, an optional z-loss and LongAlign sequence weighting,
computed a chunk of the sequence at a time so that the logits [B, T, V] never exist whole.

Losses are returned as *sums* with their total weight so that gradient accumulation over
micro-batches gives exactly the full-batch mean: mean = sum over micro-batches / total weight.

Weighting (`train.loss_weighting`):
- "token": every target with loss_mask 1 weighs the same (the usual mean over tokens).
- "sequence": every packed sequence (a (row, segment id) pair with at least one counted target)
  weighs the same, whatever its length (LongAlign, arXiv 2401.18058): a token of a sequence with
  n counted targets weighs 1 / n, and the total weight is the number of sequences.

Tiling (`tiled_cross_entropy_sums`, the training and eval path): the final hidden states
[B, T, D] are cut into N = T / C chunks of C positions (`train.loss_chunk`); a `lax.scan` computes
each chunk's logits [B, C, V] (vocab sharded over the `tensor` mesh axis by the rule table),
reduces them to the sums and drops them; `jax.checkpoint` on the chunk makes the backward pass
recompute a chunk's logits instead of saving them (a hand-written VJP compiled to the same
temporaries on XLA:CPU, so the autodiff one stays). Peak logits memory is B x C x V fp32 (and
its cotangent) instead of B x T x V. Chunk n holds positions n, n + N, n + 2N, ... (strided), so
every chunk keeps the batch and sequence shardings of the hidden states.

Letters: B batch, T sequence, C chunk, N chunks, D hidden, V vocab.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]  # (h [B, C, D], kernel [D, V]) -> logits [B, C, V] fp32


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
    `ce` (cross-entropy), `z` (log(Z)^2, GLM/PaLM z-loss) and `total` = ce + z_loss * z.

    The target logit is picked by comparing against a vocab iota (elementwise, then a sum over
    V) rather than a gather, so a vocab-sharded V stays sharded."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    hit = vocab == targets[..., None].astype(jnp.int32)
    target_logit = jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
    ce = jnp.sum((log_z - target_logit) * weights)
    z = jnp.sum(jnp.square(log_z) * weights)
    return {"ce": ce, "z": z, "total": ce + z_loss * z}


def _chunks(x: jax.Array, n: int) -> jax.Array:
    """[B, T, ...] -> [N, B, T / N, ...]; chunk i holds positions i, i + N, i + 2N, ..."""
    B, T = x.shape[:2]
    return jnp.moveaxis(x.reshape(B, T // n, n, *x.shape[2:]), 2, 0)


def tiled_cross_entropy_sums(logits_fn: LogitsFn, hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                             weights: jax.Array, z_loss: float, chunk: int) -> dict[str, jax.Array]:
    """`cross_entropy_sums(logits_fn(hidden, kernel), ...)` without ever holding all the logits.

    logits_fn(h [B, C, D], kernel [D, V]) -> [B, C, V] fp32 (the output layer, a pure function
    of its arguments); hidden [B, T, D]; targets [B, T] int; weights [B, T] (no gradient flows to
    them); chunk C = positions per chunk, min(chunk, T), must divide T. Same sums (to fp32
    rounding of the chunked summation order) and the same gradients for hidden and kernel as the
    full-logits path; the backward pass recomputes each chunk's logits (`jax.checkpoint`) and
    keeps one chunk's logits and their cotangent alive at a time."""
    T = hidden.shape[1]
    C = min(chunk, T)
    if T % C:
        raise ValueError(f"config field `train.loss_chunk`: {chunk} must divide the sequence length {T}; "
                         f"e.g. {[c for c in (128, 256, 512, 1024, 2048) if T % c == 0] or [T]}")
    n = T // C

    @jax.checkpoint  # the backward pass recomputes a chunk's logits instead of saving them
    def one(h, kernel, t, w):
        sums = cross_entropy_sums(logits_fn(h, kernel), t, w, 0.0)
        return sums["ce"], sums["z"]

    def body(carry, xs):
        ce, z = one(xs[0], kernel, xs[1], xs[2])
        return (carry[0] + ce, carry[1] + z), None

    zero = jnp.zeros((), jnp.float32)
    (ce, z), _ = jax.lax.scan(body, (zero, zero), (_chunks(hidden, n), _chunks(targets, n),
                                                   _chunks(weights.astype(jnp.float32), n)))
    return {"ce": ce, "z": z, "total": ce + z_loss * z}
