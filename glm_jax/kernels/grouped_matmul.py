"""The MoE grouped matmul: rows sorted by group, each group times its own weight matrix.

    y = grouped_matmul(x [M, K], w [G, K, N], sizes [G] int32, backend)   # -> [M, N] in x's dtype

Row block i (the sizes[i] rows after those of groups < i) is multiplied by w[i]; rows past
sum(sizes) come out as zeros. Backends (`run.moe_matmul`):
  ragged_dot  `jax.lax.ragged_dot`: XLA's grouped matmul on every platform (the reference).
  megablox    the Pallas TPU grouped matmul that ships with JAX (jax.experimental.pallas.ops.tpu.
              megablox: `gmm` forward, `gmm`/`tgmm` backward), compiled by Mosaic on TPU and run in
              the Pallas interpreter elsewhere. Its row tile must divide M, so M is padded to a
              multiple of it (padded rows belong to no group); K and N need no multiple of the tile
              (megablox masks the last partial tile), so expert ffn sizes like GLM-4.5-Air's 1,408
              (a kernel with a 512 tile and no masking crashes on it) work as they are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.megablox import ops as megablox

from glm_jax.kernels.shard import interpret_mode

ROW_TILE = 128  # megablox's m tile: the padding unit of M
COL_TILES = (512, 512)  # its (k, n) tiles, capped at K / N


def grouped_matmul(x: jax.Array, w: jax.Array, sizes: jax.Array, backend: str = "ragged_dot") -> jax.Array:
    """x [M, K], w [G, K, N], sizes [G] int32 (sum <= M) -> [M, N] in x's dtype."""
    if backend == "ragged_dot":
        return jax.lax.ragged_dot(x, w.astype(x.dtype), sizes)
    if backend != "megablox":
        raise ValueError(f"run.moe_matmul={backend!r}: must be ragged_dot or megablox")
    M, K = x.shape
    N = w.shape[2]
    padded = -(-M // ROW_TILE) * ROW_TILE
    # megablox leaves rows past the groups unwritten, forward (y) and backward (dx): both masked
    in_a_group = (jnp.arange(M) < jnp.sum(sizes))[:, None]
    xp = jnp.pad(jnp.where(in_a_group, x, jnp.zeros((), x.dtype)), ((0, padded - M), (0, 0)))
    tiling = (ROW_TILE, min(COL_TILES[0], K), min(COL_TILES[1], N))
    y = megablox.gmm(xp, w.astype(x.dtype), sizes.astype(jnp.int32), x.dtype, tiling,
                     interpret=bool(interpret_mode(False)))[:M]
    return jnp.where(in_a_group, y, jnp.zeros((), y.dtype))
