"""Cross-entropy in fp32 with loss masks, an optional z-loss and LongAlign sequence weighting,
computed a chunk of the sequence at a time so that the logits [B, T, V] never exist whole.

Losses are returned as *sums* with their total weight so that gradient accumulation over
micro-batches gives exactly the full-batch mean: mean = sum over micro-batches / total weight.

Weighting (`train.loss_weighting`):
- "token": every target with loss_mask 1 weighs the same (the usual mean over tokens).
- "sequence": every packed sequence (a (row, segment id) pair with at least one counted target)
  weighs the same, whatever its length (LongAlign, arXiv 2401.18058): a token of a sequence with
  n counted targets weighs 1 / n, and the total weight is the number of sequences.

Tiling (`tiled_cross_entropy_sums`, the training path; eval computes logits only at the
positions it scores): the final hidden states [B, T, D] are cut into N = T / C chunks of C
positions (`train.loss_chunk`); a `lax.scan` computes each chunk's logits [B, C, V] (vocab
sharded over the `tensor` mesh axis by the rule table), reduces them to the sums and, when
differentiated (custom VJP), straight away to the gradients of the hidden states and the output
kernel, which wait for the backward pass. The logits are computed once (no recompute: remat
would cost 2 x D x V FLOPs more per token) and dropped: peak logits memory is B x C x V fp32
(and its cotangent) instead of B x T x V. The kernel's gradient accumulates sharded like the
kernel (one reduce-scatter per chunk: larger chunks, fewer collectives). Chunk n holds
positions n, n + N, n + 2N, ... (strided), so every chunk keeps the batch and sequence
shardings of the hidden states.

Letters: B batch, T sequence, C chunk, N chunks, D hidden, V vocab.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from glm_jax.sharding import constrain


KERNEL_AXES = ("embed", "vocab")  # logical axes of the output kernel [D, V] (glm_jax.model.spec)
# (h [B, C, D], kernel [D, V]) -> logits [B, C, V] fp32: h @ kernel (casts and sharding constraints aside;
# the tiled loss's backward computes the kernel's gradient as h^T d_logits)
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


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


def _scan_chunks(body, init, hidden, targets, weights, n: int):
    return jax.lax.scan(body, init, (_chunks(hidden, n), _chunks(targets, n), _chunks(weights.astype(jnp.float32), n)))


def _sums(logits_fn, z_loss, n, hidden, kernel, targets, weights):
    """(total, ce, z) chunk by chunk, no gradient work (the primal, e.g. in eval)."""
    def body(carry, xs):
        sums = cross_entropy_sums(logits_fn(xs[0], kernel), xs[1], xs[2], z_loss)
        return (carry[0] + sums["ce"], carry[1] + sums["z"]), None

    zero = jnp.zeros((), jnp.float32)
    (ce, z), _ = _scan_chunks(body, (zero, zero), hidden, targets, weights, n)
    return ce + z_loss * z, ce, z


def _sums_and_grads(logits_fn, z_loss, n, hidden, kernel, targets, weights):
    """The sums and, in the same pass over each chunk's logits, d total / d hidden [B, T, D] and
    d total / d kernel [D, V]: d total / d logits = w (softmax (1 + 2 z_loss log Z) - onehot)."""
    def body(carry, xs):
        h, t, w = xs
        logits, vjp = jax.vjp(lambda x: logits_fn(x, kernel), h)
        logits = logits.astype(jnp.float32)
        sums = cross_entropy_sums(logits, t, w, z_loss)
        log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        hit = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == t[..., None].astype(jnp.int32)
        d_logits = w[..., None] * (jnp.exp(logits - log_z) * (1.0 + 2.0 * z_loss * log_z) - hit.astype(jnp.float32))
        (dh,) = vjp(d_logits)
        # d kernel = h^T d_logits written out (logits_fn is h @ kernel): the product contracts the
        # positions of both operands and comes out [D, V], the kernel's layout. The dot_general VJP
        # computes d_logits^T h ([V, D]) and transposes it, for which XLA:CPU first copies the
        # [B, C, V] cotangent transposed.
        dk = jnp.einsum("bcd,bcv->dv", h, d_logits, preferred_element_type=jnp.float32)
        # the [D, V] accumulator stays sharded like the output kernel (a reduce-scatter per chunk)
        # instead of a replicated fp32 copy per device (2.3 GiB at GLM-4's D x V)
        dk = constrain(carry[2] + dk.astype(jnp.float32), KERNEL_AXES)
        return (carry[0] + sums["ce"], carry[1] + sums["z"], dk), dh

    zero = jnp.zeros((), jnp.float32)
    (ce, z, dk), dh = _scan_chunks(body, (zero, zero, jnp.zeros(kernel.shape, jnp.float32)), hidden, targets,
                                   weights, n)
    B, T = hidden.shape[:2]
    dh = jnp.moveaxis(dh, 0, 2).reshape(B, T, *hidden.shape[2:])  # undo _chunks
    return (ce + z_loss * z, ce, z), (dh, dk.astype(kernel.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _tiled(logits_fn, z_loss, n, hidden, kernel, targets, weights):
    return _sums(logits_fn, z_loss, n, hidden, kernel, targets, weights)


def _tiled_fwd(logits_fn, z_loss, n, hidden, kernel, targets, weights):
    args = [x.value for x in (hidden, kernel, targets, weights)]
    return _sums_and_grads(logits_fn, z_loss, n, *args)


def _tiled_bwd(logits_fn, z_loss, n, grads, g):
    g_total, g_ce, g_z = g
    if not (isinstance(g_ce, SymbolicZero) and isinstance(g_z, SymbolicZero)):
        raise NotImplementedError("tiled_cross_entropy_sums differentiates `total` only; `ce` and `z` are "
                                  "reported sums (differentiate total, with train.z_loss weighting z)")
    dh, dk = grads
    if isinstance(g_total, SymbolicZero):
        return jnp.zeros_like(dh), jnp.zeros_like(dk), None, None
    return (g_total * dh).astype(dh.dtype), g_total * dk, None, None


_tiled.defvjp(_tiled_fwd, _tiled_bwd, symbolic_zeros=True)


def tiled_cross_entropy_sums(logits_fn: LogitsFn, hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                             weights: jax.Array, z_loss: float, chunk: int) -> dict[str, jax.Array]:
    """`cross_entropy_sums(logits_fn(hidden, kernel), ...)` without ever holding all the logits.

    logits_fn(h [B, C, D], kernel [D, V]) -> [B, C, V] fp32 (the output layer, a pure function
    of its arguments); hidden [B, T, D]; targets [B, T] int; weights [B, T] (no gradient flows to
    them); chunk C = positions per chunk, min(chunk, T), must divide T. Same sums (to fp32
    rounding of the chunked summation order) and the same gradients of `total` for hidden and
    kernel as the full-logits path. Differentiated (custom VJP), the forward pass computes each
    chunk's logits once and turns them straight into the gradients, which wait for the
    backward pass: [B, T, D] for hidden, [D, V] for the kernel; nothing is recomputed, and one
    chunk's logits and their cotangent are alive at a time. Only `total` may be differentiated."""
    T = hidden.shape[1]
    C = min(chunk, T)
    if T % C:
        raise ValueError(f"config field `train.loss_chunk`: {chunk} must divide the sequence length {T}; "
                         f"e.g. {[c for c in (128, 256, 512, 1024, 2048) if T % c == 0] or [T]}")
    total, ce, z = _tiled(logits_fn, float(z_loss), T // C, hidden, kernel, targets, weights)
    return {"ce": ce, "z": z, "total": total}


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits [B, T, V] fp32, targets [B, T] int -> log p(target) [B, T] fp32 (iota pick, as above)."""
    logits = logits.astype(jnp.float32)
    vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    target_logit = jnp.sum(jnp.where(vocab == targets[..., None].astype(jnp.int32), logits, 0.0), axis=-1)
    return target_logit - jax.nn.logsumexp(logits, axis=-1)


def tiled_token_logprobs(logits_fn: LogitsFn, hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                         chunk: int) -> jax.Array:
    """`token_logprobs(logits_fn(hidden, kernel), targets)` [B, T] fp32, a chunk of C positions at a time.

    For losses that are not a fixed weighting of the tokens (DPO weighs each sequence's tokens by
    a function of the whole sequence's log-prob): each chunk's logits are rematerialized in the
    backward pass (jax.checkpoint), so one chunk's logits [B, C, V] are alive at a time, at the
    price of recomputing the output layer (2 x D x V FLOPs per token, ~3% of a GLM-4-9B step).
    Chunks are strided like `tiled_cross_entropy_sums`, keeping the batch and sequence shardings."""
    T = hidden.shape[1]
    C = min(chunk, T)
    if T % C:
        raise ValueError(f"config field `train.loss_chunk`: {chunk} must divide the sequence length {T}")
    n = T // C

    @jax.checkpoint
    def one(h, t):
        return token_logprobs(logits_fn(h, kernel), t)

    out = jax.lax.map(lambda xs: one(*xs), (_chunks(hidden, n), _chunks(targets, n)))  # [N, B, C]
    B = hidden.shape[0]
    return jnp.moveaxis(out, 0, 2).reshape(B, T)
