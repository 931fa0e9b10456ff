"""Context parallelism: the sequence is split over the mesh's `sequence` axis.

Layout. With N sequence shards the sequence is cut into 2N chunks and shard i holds chunks i and
2N-1-i (a front and a back chunk), so every shard does the same amount of causal attention work.
`to_layout` / `from_layout` permute a [B, T, ...] array into / out of this order; everything but
attention is position-wise, so the model permutes its inputs once on entry and its hidden states
once on exit.

Attention. Inside `jax.shard_map`, each shard all-gathers K/V (and their segment ids) along the
sequence axis (cheap: GLM-4 has 2-4 kv heads), puts them back in original order, and attends
each of its two query chunks against them with the chunk's offset in the sequence, so the
causal mask is exact and the result equals single-shard attention. The per-chunk attention is
passed in (`local_attention`): any backend that takes a query offset (reference, our flash
kernel) runs here, and the kernel skips the key blocks past the chunk.

Letters: B batch, T sequence (global), C = T / 2N chunk, H heads, K kv heads, E head dim.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from glm_jax.config import ConfigError
from glm_jax.sharding import sharding_for

AXIS = "sequence"


def num_shards() -> int:
    """Size of the sequence axis of the current mesh (1 when no mesh is set)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty or AXIS not in mesh.axis_names else mesh.shape[AXIS]


def check_seq_len(seq_len: int, shards: int) -> None:
    """The load-balanced layout cuts a sequence into 2 chunks per sequence shard."""
    if shards > 1 and seq_len % (2 * shards):
        raise ConfigError("train.seq_len", f"{seq_len} must be a multiple of {2 * shards}, a multiple of 2 x the "
                          f"sequence axis ({shards}), for the load-balanced context-parallel layout")


def layout_order(seq_len: int, shards: int) -> np.ndarray:
    """[T] original index of the token at each slot of the load-balanced layout."""
    check_seq_len(seq_len, shards)
    chunks = np.arange(seq_len).reshape(2 * shards, seq_len // (2 * shards))
    return np.concatenate([np.concatenate([chunks[i], chunks[2 * shards - 1 - i]]) for i in range(shards)])


def to_layout(x: jax.Array, shards: int) -> jax.Array:
    """[B, T, ...] in original order -> layout order."""
    return jnp.take(x, jnp.asarray(layout_order(x.shape[1], shards)), axis=1)


def from_layout(x: jax.Array, shards: int) -> jax.Array:
    """[B, T, ...] in layout order -> original order."""
    return jnp.take(x, jnp.asarray(np.argsort(layout_order(x.shape[1], shards))), axis=1)


def _mesh_axes(logical: str, mesh, dim: int):
    """Mesh axes a dim of size `dim` shards over inside the shard_map: as the arrays are sharded."""
    return sharding_for(mesh, (dim,), (logical,)).spec[0]


LocalAttention = Callable[..., jax.Array]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None,
              local_attention: LocalAttention) -> jax.Array:
    """q [B, T, H, E], k/v [B, T, K, E], segment_ids [B, T] or None, all in layout order and
    sharded over the sequence axis -> [B, T, H, E] in layout order.

    local_attention(q [b, C, h, E], k [b, T, k, E], v, q_seg [b, C], k_seg [b, T], q_offset)
    -> [b, C, h, E] runs on each shard for each of its two chunks (k/v in original order; query c
    of the chunk sits at position q_offset + c)."""
    mesh = jax.sharding.get_abstract_mesh()
    shards = mesh.shape[AXIS]
    B, T, H, E = q.shape
    K = k.shape[2]
    if segment_ids is None:
        segment_ids = jnp.ones((B, T), jnp.int32)
    batch = _mesh_axes("batch", mesh, B)
    heads = _mesh_axes("heads", mesh, H)
    kv_heads = _mesh_axes("kv_heads", mesh, K) if heads is not None else None
    group = H // K
    chunk = T // (2 * shards)

    def per_shard(q, k, v, seg):
        gather = lambda x: from_layout(jax.lax.all_gather(x, AXIS, axis=1, tiled=True), shards)  # noqa: E731
        k_all, v_all, seg_all = gather(k), gather(v), gather(seg)
        i = jax.lax.axis_index(AXIS)
        if heads is not None and kv_heads is None:
            # Q heads are split over the tensor axis but the few kv heads are not: give each
            # local query head its own group's kv head.
            h0 = jax.lax.axis_index(heads) * q.shape[2] if isinstance(heads, str) else 0
            pick = (h0 + jnp.arange(q.shape[2])) // group
            k_all, v_all = jnp.take(k_all, pick, axis=2), jnp.take(v_all, pick, axis=2)
        front, back = (local_attention(q[:, sl], k_all, v_all, seg[:, sl], seg_all, offset) for sl, offset in
                       ((slice(0, chunk), i * chunk), (slice(chunk, None), (2 * shards - 1 - i) * chunk)))
        return jnp.concatenate([front, back], axis=1)

    q_spec = P(batch, AXIS, heads, None)
    kv_spec = P(batch, AXIS, kv_heads, None)
    return jax.shard_map(per_shard, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, P(batch, AXIS)),
                         out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)
