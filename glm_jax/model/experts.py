"""The routed experts' shared pieces, used by the local path (glm_jax.model.moe) and the
expert-parallel one (glm_jax.model.expert_parallel) alike: sort assignments by expert, one grouped
SwiGLU over them, the capacity rule, unsort and combine. A leaf: it imports neither path.

Letters: n tokens, k experts per token, A = n x k assignments, X experts, D hidden, C expert ffn,
R receivers (what a capacity caps: each expert on one device, each expert shard on an expert mesh).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from glm_jax.kernels.grouped_matmul import grouped_matmul


def sort_by_expert(experts: jax.Array, num_experts: int) -> tuple[jax.Array, jax.Array]:
    """experts [n, k] int -> (order [A]: the assignments sorted by expert, stably; counts [X] int32)."""
    flat = experts.reshape(-1)
    return jnp.argsort(flat, stable=True), jnp.bincount(flat, length=num_experts).astype(jnp.int32)


def grouped_ffn(xs: jax.Array, sizes: jax.Array, wi: jax.Array, wo: jax.Array, backend: str) -> jax.Array:
    """SwiGLU of assignments sorted by expert: xs [A, D], sizes [X'] (sum <= A; rows past the sum
    come out as zeros), wi [X', D, 2, C], wo [X', C, D] -> [A, D] in xs's dtype; `backend` one of
    config.MOE_MATMULS."""
    X, D, _, C = wi.shape
    h = grouped_matmul(xs, wi.reshape(X, D, 2 * C), sizes, backend).reshape(-1, 2, C)
    return grouped_matmul(jax.nn.silu(h[:, 0]) * h[:, 1], wo, sizes, backend)


def capacity(capacity_factor: float, assignments: int, receivers: int) -> int | None:
    """Rows one receiver accepts: capacity_factor x its even share of the assignments,
    ceil(cf x A / R); None when dropless (capacity_factor 0)."""
    return None if capacity_factor == 0 else math.ceil(capacity_factor * assignments / receivers)


def kept_counts(counts: jax.Array, receivers: int, cap: int | None) -> jax.Array:
    """counts [X] rows per expert, the X experts split into `receivers` runs of consecutive experts
    -> [X] rows each expert keeps when a receiver keeps its first `cap` rows, its lowest experts'
    first (all of them when cap is None)."""
    if cap is None:
        return counts
    per = counts.reshape(receivers, -1)
    before = jnp.cumsum(per, axis=1) - per  # rows of the receiver's lower experts
    return jnp.clip(cap - before, 0, per).reshape(-1)


def combine(y: jax.Array, order: jax.Array, weights: jax.Array, dtype) -> jax.Array:
    """y [A, D] in expert-sorted order (dropped rows 0), order [A] from sort_by_expert, weights
    [n, k] fp32 -> [n, D] in `dtype`: back to (token, slot) order, then the weighted sum over slots."""
    n, k = weights.shape
    y = jnp.zeros_like(y).at[order].set(y).reshape(n, k, -1)
    return jnp.einsum("nkd,nk->nd", y.astype(jnp.float32), weights).astype(dtype)
