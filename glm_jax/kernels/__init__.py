"""Pallas attention kernels and their per-shard (shard_map) wrappers. Imports only glm_jax.sharding."""
