"""JAX's splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) on local blocks.

    splash_attention(q [B, T, H, E], k/v [B, T, K, E], segment_ids [B, T] | None, ...) -> [B, T, H, E]

Causal mask, segment ids for packed rows, grouped-query attention (splash's MHA kernel maps
query head h to kv head h // G). Splash works on one batch row in a head-major layout [H, T, E]
and does not scale the logits, so queries are scaled by 1/sqrt(E) (in fp32, then cast back)
and the kernel is vmapped over the batch. Call it on local blocks: the model's entry point wraps
it in `glm_jax.kernels.shard.per_shard` (splash on a global sharded array gathers or fails).

Limits: splash's blocks must be multiples of 128; its mask metadata is a [H, T/bq, S/bkv] table
per kernel (kept in SMEM on TPU), which is what bounds the sequence length per shard.

Cost: splash's pallas_calls declare no cost estimate, so XLA's cost analysis (and the AOT
planner) would count its FLOPs as zero. While our call traces (forward and, through a custom VJP,
backward), splash's module sees a `pallas` whose `pallas_call` adds the estimate of that phase
(fwd / dq / dkv) from the same block-sparse causal model as our flash kernel
(`flash_attention.attention_costs`, per batch row; vmap multiplies it by B).
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as _sa_kernel

from glm_jax.kernels.flash_attention import attention_costs

_LANES = 128


def _block(name: str, block: int, n: int) -> int:
    b = min(block, n)
    if n % b or b % _LANES:
        raise ValueError(f"config field `{name}`: splash needs a block that is a multiple of {_LANES} and divides "
                         f"the sequence length {n}, got {b}; e.g. "
                         f"{[d for d in (128, 256, 512, 1024) if n % d == 0] or 'a length that is a multiple of 128'}")
    return b


class _CostedPallas:
    """`jax.experimental.pallas` as splash's kernel module sees it during our calls: pallas_call
    gains the cost estimate of the kernel's phase, read from splash's kernel name
    (`splash_mha_{fwd|dq|dkv}...`)."""

    def __init__(self, costs: dict):
        self._costs = costs

    def __getattr__(self, name):
        return getattr(pl, name)

    def pallas_call(self, *args, **kwargs):
        phase = re.match(r"splash_m[hq]a_(fwd|dq|dkv)", kwargs.get("name") or "")
        if phase and kwargs.get("cost_estimate") is None:
            kwargs["cost_estimate"] = self._costs[phase.group(1)]
        return pl.pallas_call(*args, **kwargs)


@contextlib.contextmanager
def _declared(costs: dict):
    saved = _sa_kernel.pl
    _sa_kernel.pl = _CostedPallas(costs)
    try:
        yield
    finally:
        _sa_kernel.pl = saved


def _with_costs(fn: Callable, costs: dict) -> Callable:
    """call(kernel, *args) = fn(kernel, *args) whose splash kernels declare `costs`, forward and
    backward (custom VJP: the backward traces inside our own rule, so inside `_declared` too).
    The splash kernel (a pytree holding the mask metadata arrays) is an explicit argument, not a
    closure: under jit/shard_map its arrays are tracers of the enclosing trace. It gets no
    gradient."""
    @jax.custom_vjp
    def call(kernel, *args):
        with _declared(costs):
            return fn(kernel, *args)

    def fwd(kernel, *args):
        with _declared(costs):
            return jax.vjp(lambda *a: fn(kernel, *a), *args)

    def bwd(vjp, g):
        with _declared(costs):
            return (None, *vjp(g))

    call.defvjp(fwd, bwd)
    return call


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None = None, *,
                     block_q: int = 512, block_kv: int = 512, interpret: Any = False) -> jax.Array:
    """q [B, T, H, E], k/v [B, T, K, E], segment_ids [B, T] | None -> [B, T, H, E] in q's dtype."""
    B, T, H, E = q.shape
    S = k.shape[1]
    bq = _block("run.attention_block_q", block_q, T)
    bkv = _block("run.attention_block_kv", block_kv, S)
    blocks = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                           block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    mask = sa.MultiHeadMask([sa.CausalMask((T, S)) for _ in range(H)])
    kernel = sa.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)

    q = (q.astype(jnp.float32) * (1.0 / math.sqrt(E))).astype(q.dtype)
    hm = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, N, E] <-> [B, N, T, E]
    costs = attention_costs(1, H, k.shape[2], T, S, E, bq, bkv, q.dtype.itemsize, segment_ids is not None)
    if segment_ids is None:
        def run(kern, q, k, v):
            return jax.vmap(lambda q, k, v: kern(q, k, v))(q, k, v)
        out = _with_costs(run, costs)(kernel, hm(q), hm(k), hm(v))
    else:
        def run(kern, q, k, v, seg):
            return jax.vmap(lambda q, k, v, s: kern(q, k, v, segment_ids=sa.SegmentIds(q=s, kv=s)))(q, k, v, seg)
        out = _with_costs(run, costs)(kernel, hm(q), hm(k), hm(v), segment_ids.astype(jnp.int32))
    return hm(out)
