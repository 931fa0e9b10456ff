"""Pallas attention kernels and the shard_map wrappers that place their collectives."""
