"""Expert parallelism: routed experts split over the `expert` mesh axis, tokens sent to them and
back by all-to-all inside a `shard_map` (the only hand-placed collectives of the MoE block).

    out, stats = routed_experts(x [N, D], weights [N, k], experts [N, k], wi, wo, cfg)

Same contract and numbers as glm_jax.model.moe.routed_experts. Per device (inside the shard_map):
its n tokens' A = n x k assignments are sorted by expert; the ones for the X / P experts of
expert shard p go into row p of a send buffer [P, cap, D] (P = expert axis size), one all-to-all
over `expert` delivers them, the receiving shard runs its experts as one grouped matmul
(`moe.grouped_ffn`, after all-gathering its expert weights over `fsdp`; with a `tensor` axis each
tensor shard computes its slice of every expert's ffn and a psum over `tensor` adds them up), a
second all-to-all brings the results back, and they are unsorted and weighted like the local path.

Dropless: cap = A, the most a device can send to one shard, so nothing is ever cut (the buffers
are P x A rows: memory traded for never dropping). With `model.moe_capacity_factor` = cf > 0 the
buffers shrink to cap = ceil(cf x A / P) rows per destination and what does not fit is dropped
and counted.

`model.moe_dispatch_tokens` = m > 0 sends a device's tokens m at a time (a scan over n / m rounds,
each round rematerialized in the backward pass; unrolled with `model.scan_layers=False`), so the
buffers are P x m x k rows whatever n is: still dropless, same numbers, per-device memory bounded
at long sequences (GLM-4.5-Air at 8K tokens a device, expert=16: P x A x D bf16 = 8.6 GB a buffer
in one round) for n / m smaller all-to-alls.

Letters: N tokens, D hidden, k experts per token, A = n x k local assignments, X experts,
P expert shards, C expert ffn.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from glm_jax.config import ModelConfig
from glm_jax.model.moe import grouped_ffn
from glm_jax.sharding import sharding_for

AXIS = "expert"
TOKEN_AXES = ("data", "fsdp", "expert", "sequence")  # every axis tokens may be split over


def num_shards() -> int:
    """Size of the `expert` axis of the current mesh (1 without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty or AXIS not in mesh.axis_names else mesh.shape[AXIS]


def on_a_mesh() -> bool:
    """Is a mesh of more than one device set (`jax.set_mesh`)?"""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and mesh.size > 1


def _dispatch_local(x, weights, experts, wi, wo, cfg: ModelConfig, token_axes: tuple[str, ...]):
    """Inside the shard_map, one round: x [n, D], weights / experts [n, k] (global expert ids),
    wi [X/P, D, 2, C'], wo [X/P, C', D] (this shard's experts, gathered over fsdp; C' = C / tensor)
    -> ([n, D], load [X], dropped []) (the last two summed over `token_axes`, the mesh axes the
    tokens are split over)."""
    shards = jax.lax.axis_size(AXIS)
    n, k = experts.shape
    A = n * k
    local_experts = cfg.num_experts // shards
    cap = A if cfg.moe_capacity_factor == 0 else math.ceil(cfg.moe_capacity_factor * A / shards)

    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    sorted_experts = flat[order]
    dest = sorted_experts // local_experts  # ascending with the experts
    counts = jnp.bincount(dest, length=shards)
    rank = jnp.arange(A) - (jnp.cumsum(counts) - counts)[dest]
    keep = rank < cap
    slot = jnp.where(keep, rank, cap)  # cap = out of range: dropped by the scatter below
    send_x = jnp.zeros((shards, cap, x.shape[1]), x.dtype).at[dest, slot].set(x[order // k], mode="drop")
    send_e = jnp.full((shards, cap), local_experts, jnp.int32).at[dest, slot].set(
        sorted_experts - dest * local_experts, mode="drop")  # local expert id; local_experts = empty slot

    recv_x = jax.lax.all_to_all(send_x, AXIS, 0, 0, tiled=True).reshape(shards * cap, -1)
    recv_e = jax.lax.all_to_all(send_e, AXIS, 0, 0, tiled=True).reshape(-1)
    order2 = jnp.argsort(recv_e, stable=True)  # empty slots sort last and come out of grouped_ffn as 0
    sizes = jnp.bincount(recv_e, length=local_experts + 1)[:local_experts].astype(jnp.int32)
    y = grouped_ffn(recv_x[order2], sizes, wi, wo, cfg.moe_matmul)
    y = jax.lax.psum(y, "tensor")  # each tensor shard held a slice of every expert's ffn
    y = jnp.zeros_like(y).at[order2].set(y).reshape(shards, cap, -1)
    back = jax.lax.all_to_all(y, AXIS, 0, 0, tiled=True)  # back[p]: what shard p computed for us

    mine = jnp.where(keep[:, None], back[dest, jnp.minimum(slot, cap - 1)], jnp.zeros((), back.dtype))
    mine = jnp.zeros_like(mine).at[order].set(mine).reshape(n, k, -1)
    out = jnp.einsum("nkd,nk->nd", mine.astype(jnp.float32), weights).astype(x.dtype)
    load = jax.lax.psum(jnp.bincount(flat, length=cfg.num_experts).astype(jnp.float32), token_axes)
    dropped = jax.lax.psum(jnp.sum(~keep).astype(jnp.float32), token_axes)
    return out, load, dropped


def routed_experts(x: jax.Array, weights: jax.Array, experts: jax.Array, wi: jax.Array, wo: jax.Array,
                   cfg: ModelConfig, batch_shape: tuple[int, int]) -> tuple[jax.Array, dict]:
    """x [N, D], weights / experts [N, k] with N = B x T (`batch_shape`), wi [X, D, 2, C], wo [X, C, D]
    -> ([N, D], stats {load [X], dropped}), experts split over the `expert` mesh axis."""
    mesh = jax.sharding.get_abstract_mesh()
    B, T = batch_shape
    k = experts.shape[1]
    tok = sharding_for(mesh, (B, T), ("batch", "seq")).spec  # how the batch rows / positions lie
    used = tuple(a for e in tok for a in ((e,) if isinstance(e, str) else (e or ())))
    for name in mesh.axis_names:
        if name in TOKEN_AXES and mesh.shape[name] > 1 and name not in used:
            raise ValueError(f"expert parallelism needs the batch split over mesh axis {name!r} "
                             f"(train.batch_size / train.seq_len must divide over it): got token spec {tok}")
    row = P(*tok, None)
    # An fsdp axis of 1 stays out of the weights' specs: named there, the gathered weights would
    # count as varying over it while the tokens (whose spec drops size-1 axes) do not.
    fsdp = "fsdp" if mesh.shape["fsdp"] > 1 else None

    def local(x, w, e, wi, wo):
        bl, tl, D = x.shape
        n = bl * tl
        m = min(cfg.moe_dispatch_tokens or n, n)  # fewer tokens than a round: one round
        if n % m:
            raise ValueError(f"model.moe_dispatch_tokens={m} must divide the {n} tokens each device holds "
                             f"(batch rows x positions per device, {bl} x {tl}); pick a divisor or 0 (all at once)")
        if fsdp:
            wi = jax.lax.all_gather(wi, "fsdp", axis=1, tiled=True)  # once a layer, not once a round
            wo = jax.lax.all_gather(wo, "fsdp", axis=2, tiled=True)
        x, w, e = x.reshape(n // m, m, D), w.reshape(n // m, m, k), e.reshape(n // m, m, k)
        if n == m:
            out, load, dropped = _dispatch_local(x[0], w[0], e[0], wi, wo, cfg, used)
            return out.reshape(bl, tl, D), load, dropped

        @jax.checkpoint  # the backward pass keeps one round's buffers, not every round's
        def one_round(x, w, e, wi, wo):
            return _dispatch_local(x, w, e, wi, wo, cfg, used)

        def body(sums, xs):
            out, load, dropped = one_round(*xs, wi, wo)
            return (sums[0] + load, sums[1] + dropped), out

        zeros = (jnp.zeros((cfg.num_experts,), jnp.float32), jnp.zeros((), jnp.float32))
        # scan_layers=False leaves no while loop in a layer (rounds unrolled): what glm_jax.aot's
        # loop-free variants need, since XLA's cost analysis counts a loop body once.
        (load, dropped), out = jax.lax.scan(body, zeros, (x, w, e), unroll=not cfg.scan_layers)
        return out.reshape(bl, tl, D), load, dropped

    fn = jax.shard_map(local, mesh=mesh,
                       in_specs=(row, row, row, P(AXIS, fsdp, None, "tensor"), P(AXIS, "tensor", fsdp)),
                       out_specs=(row, P(), P()),
                       check_vma=cfg.moe_matmul != "megablox")  # megablox's pallas_call declares no varying axes
    D = x.shape[1]
    out, load, dropped = fn(x.reshape(B, T, D), weights.reshape(B, T, k), experts.reshape(B, T, k), wi, wo)
    return out.reshape(B * T, D), {"load": load, "dropped": dropped}
