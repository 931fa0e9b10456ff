"""Running an attention kernel per shard, and choosing interpret mode.

A Pallas TPU kernel is an opaque custom call to XLA's partitioner: called on a global sharded
array it would be gathered onto every device. `per_shard` runs it inside `jax.shard_map` on each
device's local block instead, with specs from our logical rules: batch over (data, fsdp), query
heads over tensor, kv heads over tensor when the tensor axis divides them.

When the tensor axis does not divide the kv heads (GLM-4's 2 kv heads on tensor=4), K/V arrive
replicated and each shard slices the one kv head its query heads belong to, so K/V are still
never repeated per query head. The sequence dim stays whole inside the map here (a sequence-sharded
input is gathered); context parallelism over the `sequence` axis lives in its own wrapper.

Letters: B batch, T query length, S key length, H query heads, K kv heads, E head dim.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

from glm_jax.sharding import sharding_for

# fn(q [B, T, h, E], k/v [B, S, k, E], segment_ids [B, T] | None) -> [B, T, h, E] on local blocks
AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array]


def target_is_tpu() -> bool:
    """True when the code being traced will run on TPU: the platform of the mesh set with
    `jax.set_mesh` (also a TPU topology mesh during AOT compiles on a CPU host), else the default
    backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    if device is not None:
        return device.platform == "tpu"
    return jax.default_backend() == "tpu"


def interpret_mode(force: bool, checked: bool = False) -> Any:
    """The `interpret` argument for our kernels: False (compile with Mosaic) on TPU unless forced;
    otherwise the Pallas interpreter, or with `checked` the TPU interpreter
    (`pltpu.InterpretParams()`: simulates VMEM/DMAs/semaphores and checks them; slower)."""
    if target_is_tpu() and not force:
        return False
    return pltpu.InterpretParams() if checked else True


def _axes(entry) -> tuple[str, ...]:
    return () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))


def per_shard(fn: AttentionFn, q: jax.Array, k: jax.Array, v: jax.Array,
              segment_ids: jax.Array | None) -> jax.Array:
    """Applies `fn` to each device's block of q [B, T, H, E], k/v [B, S, K, E], segment_ids [B, T]
    inside `jax.shard_map` over the mesh set with `jax.set_mesh`; calls it directly without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v, segment_ids)
    H, K = q.shape[2], k.shape[2]
    q_spec = sharding_for(mesh, q.shape, ("batch", None, "heads", None)).spec
    kv_spec = sharding_for(mesh, k.shape, ("batch", None, "kv_heads", None)).spec
    q_spec = P(*q_spec, *([None] * (4 - len(q_spec))))
    kv_spec = P(*kv_spec, *([None] * (4 - len(kv_spec))))
    batch = q_spec[0]
    kv_spec = P(batch, None, kv_spec[2], None)  # q and kv rows must land on the same devices
    head_axes = _axes(q_spec[2])
    slice_kv = bool(head_axes) and not _axes(kv_spec[2])
    if slice_kv:
        shards = 1
        for a in head_axes:
            shards *= mesh.shape[a]
        local_h, group = H // shards, H // K
        if group % local_h:
            raise ValueError(f"model.num_heads={H} over {shards} tensor shards gives {local_h} heads per shard, "
                             f"which straddle kv groups of {group} heads; use a tensor axis that divides "
                             f"the kv heads ({K}) or makes each shard's heads fall in one group")

    def local(q, k, v, seg):
        if slice_kv:
            kv_index = jax.lax.axis_index(head_axes) * local_h // group
            k = jax.lax.dynamic_slice_in_dim(k, kv_index, 1, axis=2)
            v = jax.lax.dynamic_slice_in_dim(v, kv_index, 1, axis=2)
        return fn(q, k, v, seg)

    seg_spec = None if segment_ids is None else P(batch, None)
    return jax.shard_map(local, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v, segment_ids)
