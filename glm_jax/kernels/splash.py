"""JAX's splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) on local blocks.

    splash_attention(q [B, T, H, E], k/v [B, T, K, E], segment_ids [B, T] | None, ...) -> [B, T, H, E]

Causal mask, segment ids for packed rows, grouped-query attention (splash's MHA kernel maps
query head h to kv head h // G). Splash works on one batch row in a head-major layout [H, T, E]
and does not scale the logits, so queries are scaled by 1/sqrt(E) (in fp32, then cast back)
and the kernel is vmapped over the batch. Call it on local blocks: the model's entry point wraps
it in `glm_jax.kernels.shard.per_shard` (splash on a global sharded array gathers or fails).

Limits: splash's blocks must be multiples of 128; its mask metadata is a [H, T/bq, S/bkv] table
per kernel (kept in SMEM on TPU), which is what bounds the sequence length per shard.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa

_LANES = 128


def _block(name: str, block: int, n: int) -> int:
    b = min(block, n)
    if n % b or b % _LANES:
        raise ValueError(f"config field `{name}`: splash needs a block that is a multiple of {_LANES} and divides "
                         f"the sequence length {n}, got {b}; e.g. "
                         f"{[d for d in (128, 256, 512, 1024) if n % d == 0] or 'a length that is a multiple of 128'}")
    return b


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None = None, *,
                     block_q: int = 512, block_kv: int = 512, interpret: Any = False) -> jax.Array:
    """q [B, T, H, E], k/v [B, T, K, E], segment_ids [B, T] | None -> [B, T, H, E] in q's dtype."""
    B, T, H, E = q.shape
    S = k.shape[1]
    bq = _block("model.attention_block_q", block_q, T)
    bkv = _block("model.attention_block_kv", block_kv, S)
    blocks = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                           block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    mask = sa.MultiHeadMask([sa.CausalMask((T, S)) for _ in range(H)])
    kernel = sa.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)

    q = (q.astype(jnp.float32) * (1.0 / math.sqrt(E))).astype(q.dtype)
    hm = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, N, E] <-> [B, N, T, E]
    if segment_ids is None:
        out = jax.vmap(lambda q, k, v: kernel(q, k, v))(hm(q), hm(k), hm(v))
    else:
        seg = segment_ids.astype(jnp.int32)
        out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sa.SegmentIds(q=s, kv=s)))(
            hm(q), hm(k), hm(v), seg)
    return hm(out)
