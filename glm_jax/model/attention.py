"""The attention entry point. `run.attention` picks the backend; every backend computes the same
numbers: causal attention within segments, grouped-query (each of K kv heads serves G = H / K
query heads), softmax in fp32.

Backends: "reference" (plain XLA, O(T^2) memory), "flash" and "splash" (Pallas kernels in
`glm_jax.kernels`), "dot_product" (`jax.nn.dot_product_attention`: cuDNN flash attention on
NVIDIA GPUs, XLA elsewhere).

Letters: B batch, T query length, S key length, H query heads, K kv heads, G heads per kv
group, E head dim.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from glm_jax.config import ConfigError, RunConfig
from glm_jax.kernels import context_parallel
from glm_jax.kernels.flash_attention import flash_attention
from glm_jax.kernels.shard import interpret_mode, per_shard
from glm_jax.kernels.splash import splash_attention


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [B, T, H, E], k/v [B, S, K, E], mask [B, T, S] bool (True = visible) -> [B, T, H, E].

    K/V are not repeated: queries are viewed as [B, K, G, T, E] and contract against their
    group's kv head. Softmax in fp32. The [T, S] matmuls run with the batch axes (B, K) leading
    and the probabilities laid out [B, K, G, T, S], the layout both matmuls of each pass read
    as they are (XLA:CPU otherwise materializes transposed copies of the probabilities). The
    backward pass (custom VJP) recomputes the probabilities from the saved log-sum-exp, as
    flash attention does, instead of keeping [B, K, G, T, S] fp32 per layer for it: the same
    numbers to fp32 rounding, one extra [T, S] matmul, and no O(T^2) residuals."""
    B, T, H, E = q.shape
    K = k.shape[2]
    qg = q.reshape(B, T, K, H // K, E).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, E]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, E]
    out = _grouped_attention(qg, kt, vt, mask)  # [B, K, G, T, E] fp32
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, E).astype(q.dtype)


def _scaled_logits(qg, kt, mask):
    """[B, K, G, T, S] fp32 logits / sqrt(E), masked entries at the fp32 minimum."""
    logits = jnp.einsum("bkgte,bkse->bkgts", qg, kt, preferred_element_type=jnp.float32)
    logits = logits * (1.0 / jnp.sqrt(jnp.float32(qg.shape[-1])))
    return jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)


def _grouped_attention_fwd(qg, kt, vt, mask):
    logits = _scaled_logits(qg, kt, mask)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    unnormalized = jnp.exp(logits - peak)
    total = jnp.sum(unnormalized, axis=-1, keepdims=True)
    probs = (unnormalized / total).astype(vt.dtype)  # = jax.nn.softmax(logits)
    out = jnp.einsum("bkgts,bkse->bkgte", probs, vt, preferred_element_type=jnp.float32)
    return out, (qg, kt, vt, mask, out, peak + jnp.log(total))


@jax.custom_vjp
def _grouped_attention(qg, kt, vt, mask):
    """qg [B, K, G, T, E], kt/vt [B, K, S, E], mask [B, T, S] -> [B, K, G, T, E] fp32."""
    return _grouped_attention_fwd(qg, kt, vt, mask)[0]


def _grouped_attention_bwd(res, d_out):
    qg, kt, vt, mask, out, log_z = res
    scale = 1.0 / jnp.sqrt(jnp.float32(qg.shape[-1]))
    probs = jnp.exp(_scaled_logits(qg, kt, mask) - log_z)  # masked entries: exactly 0
    d_out = d_out.astype(jnp.float32)
    # dv and dk contract over (g, t): written as [E, S] = X^T P, the operand XLA:CPU copies into a
    # transposed layout is the [G x T, E] one, not the [G x T, S] probabilities (8x smaller at S = 512).
    # They come out in the inputs' dtype (the result's): XLA:CPU has no bf16 x bf16 = f32 kernel for
    # this dot's layout, and a bf16 dot accumulates in fp32 anyway (MXU; XLA:CPU upcasts).
    dv = jnp.einsum("bkgte,bkgts->bkes", d_out.astype(vt.dtype), probs.astype(vt.dtype)).swapaxes(-1, -2)
    d_probs = jnp.einsum("bkgte,bkse->bkgts", d_out.astype(vt.dtype), vt, preferred_element_type=jnp.float32)
    d_logits = probs * (d_probs - jnp.sum(d_out * out, axis=-1, keepdims=True)) * scale
    dq = jnp.einsum("bkgts,bkse->bkgte", d_logits.astype(kt.dtype), kt, preferred_element_type=jnp.float32)
    dk = jnp.einsum("bkgte,bkgts->bkes", qg, d_logits.astype(qg.dtype)).swapaxes(-1, -2)
    return dq.astype(qg.dtype), dk.astype(kt.dtype), dv.astype(vt.dtype), None


_grouped_attention.defvjp(_grouped_attention_fwd, _grouped_attention_bwd)


def causal_segment_mask(q_index: jax.Array, k_index: jax.Array, q_segment_ids: jax.Array | None,
                        k_segment_ids: jax.Array | None) -> jax.Array:
    """q_index [T] / k_index [S] (token order in the sequence), segment ids [B, T] / [B, S] or
    None -> mask [B or 1, T, S]: key visible iff it comes no later and shares the segment."""
    mask = (k_index[None, :] <= q_index[:, None])[None]
    if q_segment_ids is not None:
        mask = mask & (q_segment_ids[:, :, None] == k_segment_ids[:, None, :])
    return mask


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """q [B, T, H, E], k/v [B, T, K, E], segment_ids [B, T] or None -> [B, T, H, E].

    Key i is visible to query t iff i <= t and both share a segment id. O(T^2) memory."""
    index = jnp.arange(q.shape[1])
    return masked_attention(q, k, v, causal_segment_mask(index, index, segment_ids, segment_ids))


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """q [B, T, H, E], k/v [B, T, K, E], segment_ids [B, T] or None -> [B, T, H, E].

    `jax.nn.dot_product_attention` with `is_causal=True` and grouped-query heads as they are
    (BTNH layout, no K/V repeat); it picks cuDNN's fused kernel on NVIDIA GPUs and XLA elsewhere
    (softmax in fp32 either way). Packed segments enter as a boolean mask [B, 1, T, T] (True =
    same segment), O(T^2) bools per row; the causal part is the kernel's own."""
    mask = None if segment_ids is None else (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True).astype(q.dtype)


def _kernel_backend(kernel: Callable) -> Callable:
    """A Pallas kernel run per shard (shard_map over the current mesh), blocks and interpret
    mode from the config; interpret mode switches on by itself when the target is not a TPU."""
    def call(q, k, v, seg, run: RunConfig):
        fn = functools.partial(kernel, block_q=run.attention_block_q, block_kv=run.attention_block_kv,
                               interpret=interpret_mode(run.attention_interpret))
        return per_shard(fn, q, k, v, seg)
    return call


def _backends() -> dict[str, Callable]:
    return {"reference": lambda q, k, v, seg, run: reference_attention(q, k, v, seg),
            "flash": _kernel_backend(flash_attention),
            "splash": _kernel_backend(splash_attention),
            # per shard like the kernels: a custom call (cuDNN) sees only local batch rows and heads
            "dot_product": lambda q, k, v, seg, run: per_shard(dot_product_attention, q, k, v, seg)}


def _context_parallel_backends() -> dict[str, Callable]:
    """Attention of a chunk of local queries against all-gathered K/V (original token order):
    fn(q [B, C, H, E], k/v [B, T, K, E], q_seg [B, C], k_seg [B, T], q_offset, run); query c
    sits at position q_offset + c. Used inside context_parallel's shard_map."""

    def reference(q, k, v, q_seg, k_seg, q_offset, run):
        q_index = q_offset + jnp.arange(q.shape[1])
        return masked_attention(q, k, v, causal_segment_mask(q_index, jnp.arange(k.shape[1]), q_seg, k_seg))

    def flash(q, k, v, q_seg, k_seg, q_offset, run):
        return flash_attention(q, k, v, q_seg, kv_segment_ids=k_seg, q_offset=q_offset, block_q=run.attention_block_q,
                               block_kv=run.attention_block_kv, interpret=interpret_mode(run.attention_interpret))

    return {"reference": reference, "flash": flash}


CONTEXT_PARALLEL_BACKENDS = ("reference", "flash")  # the keys of _context_parallel_backends()


def check_backend(run: RunConfig, seq_len: int, sequence_shards: int) -> None:
    """What the backends need of a sequence length and a `sequence` mesh axis: a context-parallel
    path, the load-balanced layout, and a Pallas query block that tiles each chunk of queries.
    Called before anything compiles (glm_jax.train.validation) and by `attention` when it traces."""
    if sequence_shards > 1 and run.attention not in CONTEXT_PARALLEL_BACKENDS:
        raise ConfigError("run.attention", f"{run.attention!r} has no context-parallel path; use one of "
                          f"{CONTEXT_PARALLEL_BACKENDS} with mesh.sequence > 1")
    context_parallel.check_seq_len(seq_len, sequence_shards)
    chunk = seq_len // (2 * sequence_shards) if sequence_shards > 1 else seq_len  # queries one call sees
    if run.attention in ("flash", "splash") and chunk % min(run.attention_block_q, chunk):
        raise ConfigError("train.seq_len", f"{seq_len} must tile into query blocks of run.attention_block_q="
                          f"{run.attention_block_q}" + (f" in each of its {2 * sequence_shards} context-parallel "
                          f"chunks" if sequence_shards > 1 else "") + "; change either")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, run: RunConfig) -> jax.Array:
    """q [B, T, H, E], k/v [B, T, K, E], segment_ids [B, T] or None -> [B, T, H, E].

    With a `sequence` mesh axis > 1 the inputs are in context_parallel's load-balanced layout
    and attention runs per sequence shard (see glm_jax.kernels.context_parallel)."""
    shards = context_parallel.num_shards()
    check_backend(run, q.shape[1], shards)
    if shards > 1:
        fn = _context_parallel_backends()[run.attention]
        return context_parallel.attention(q, k, v, segment_ids, lambda *a: fn(*a, run=run))
    return _backends()[run.attention](q, k, v, segment_ids, run)
