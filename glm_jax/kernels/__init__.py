"""Pallas attention kernels and their per-shard wrappers (this package imports only glm_jax.sharding).

- `flash_attention.flash_attention`: ours; fwd + bwd (custom_vjp), causal with block skipping,
  GQA through index maps, segment ids; `q_offset` + `kv_segment_ids` let T local queries attend
  to a longer (e.g. all-gathered) K/V, the building block for context parallelism.
- `splash.splash_attention`: JAX's splash kernel with a causal mask, segment ids and GQA.
- `shard.per_shard`: runs either on each device's block inside `jax.shard_map` with specs from
  the logical rules; `shard.interpret_mode`: Pallas interpret mode off TPU.
- `context_parallel.attention`: the sequence axis of the mesh; local queries (a front and a back
  chunk per shard) against all-gathered K/V, through any backend that takes a query offset.

The model reaches them through `glm_jax.model.attention.attention` (`run.attention` = "flash" /
"splash"); the numbers equal the "reference" backend's.
"""
