"""Expert parallelism: routed experts split over the `expert` mesh axis, tokens sent to them and
back by all-to-all inside a `shard_map` (the only hand-placed collectives of the MoE block).

    out, stats = routed_experts(x [N, D], weights [N, k], experts [N, k], wi, wo, cfg, run, (B, T))

Same contract and numbers as glm_jax.model.moe.routed_experts. Per device (inside the shard_map):
its n tokens' A = n x k assignments are sorted by expert and sent, in one ragged all-to-all over
`expert` (P = its size), as P x X/P slices, one per (destination shard, local expert): only the A
rows cross the interconnect, not a padded [P, A] buffer. The receiving shard lays them out
expert-major, so they arrive sorted for its one grouped matmul (`experts.grouped_ffn`, after
all-gathering its expert weights over `fsdp`; with a `tensor` axis each tensor shard computes its
slice of every expert's ffn and a psum over `tensor` adds them up); a second ragged all-to-all
(the mirror image) brings the results back, and they are unsorted and weighted like the local
path. Two small all-to-alls of [P, X/P] counts and offsets tell every device where its slices
land. XLA:CPU has no ragged all-to-all: there `ragged_all_to_all` runs the same semantics through
a dense all-to-all (glm_jax.aot counts the real op on TPU).

Dropless: a receiver's buffer holds P x cap rows with cap = A (every device could send all of its
rows to one shard), so nothing is ever cut; only the rows sent travel, and megablox's grouped
matmul visits only the tiles that hold rows (XLA counts ragged_dot over the whole buffer). With
`run.moe_capacity_factor` = cf > 0 each device sends at most cap = ceil(cf x A / P) rows to each
shard (glm_jax.model.experts.capacity, the receivers being the P shards; its lowest experts'
first) and what does not fit is dropped and counted.

`run.moe_dispatch_tokens` = m > 0 sends a device's tokens m at a time (a scan over n / m rounds,
each round rematerialized in the backward pass; unrolled with `run.scan_layers=False`), so the
receive buffers are P x m x k rows whatever n is: still dropless, same numbers, per-device memory
bounded at long sequences (GLM-4.5-Air at 8K tokens a device, expert=16: P x A x D bf16 = 8.6 GB
a buffer in one round).

Letters: N tokens, D hidden, k experts per token, A = n x k local assignments, X experts,
P expert shards, C expert ffn.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from glm_jax.config import ConfigError, ModelConfig, RunConfig
from glm_jax.model import experts as experts_lib
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


def ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes):
    """`jax.lax.ragged_all_to_all` over the `expert` axis (same arguments and result): only the rows
    each device sends cross the interconnect. XLA:CPU has no ragged all-to-all, so on CPU the same
    semantics run through a dense all-to-all of a [P, N] row buffer (P x the bytes; slices must not
    overlap in `operand`, as here)."""
    def emulated(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes):
        del recv_sizes  # implied by what the senders send
        shards = jax.lax.axis_size(AXIS)
        per_shard = input_offsets.shape[0] // shards
        rows = jnp.arange(operand.shape[0])
        # the slice each row belongs to: the last slice starting at or before it (a non-empty slice
        # sorts after empty ones with the same start)
        by_start = jnp.argsort(input_offsets * 2 + (send_sizes > 0))
        pos = jnp.searchsorted(input_offsets[by_start], rows, side="right") - 1
        i = by_start[jnp.maximum(pos, 0)]
        sent = (pos >= 0) & (rows < input_offsets[i] + send_sizes[i])
        dest = jnp.where(sent, i // per_shard, shards)  # shards: out of range, dropped
        target = output_offsets[i] + rows - input_offsets[i]
        buf = jnp.zeros((shards, *operand.shape), operand.dtype).at[dest, rows].set(operand, mode="drop")
        where = jnp.full((shards, operand.shape[0]), output.shape[0], jnp.int32).at[dest, rows].set(target, mode="drop")
        buf = jax.lax.all_to_all(buf, AXIS, 0, 0, tiled=True).reshape(-1, *operand.shape[1:])
        where = jax.lax.all_to_all(where, AXIS, 0, 0, tiled=True).reshape(-1)
        return output.at[where].set(buf, mode="drop")

    def ragged(*args):
        return jax.lax.ragged_all_to_all(*args, axis_name=AXIS)

    return jax.lax.platform_dependent(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes,
                                      cpu=emulated, default=ragged)


def check_dispatch_tokens(dispatch_tokens: int, tokens: int) -> None:
    """`run.moe_dispatch_tokens` must divide the tokens a device holds (or be 0 or >= them: one round)."""
    if 0 < dispatch_tokens < tokens and tokens % dispatch_tokens:
        raise ConfigError("run.moe_dispatch_tokens", f"{dispatch_tokens} must divide the {tokens} tokens each "
                          f"device holds (micro-batch rows x positions per device); valid: "
                          f"{[d for d in range(1, tokens + 1) if tokens % d == 0][-8:]} or 0 (all at once)")


def _dispatch_local(x, weights, experts, wi, wo, cfg: ModelConfig, run: RunConfig, token_axes: tuple[str, ...]):
    """Inside the shard_map, one round: x [n, D], weights / experts [n, k] (global expert ids),
    wi [X/P, D, 2, C'], wo [X/P, C', D] (this shard's experts, gathered over fsdp; C' = C / tensor)
    -> ([n, D], load [X], dropped []) (the last two summed over `token_axes`, the mesh axes the
    tokens are split over).

    The A = n x k assignments, sorted by expert, go out in P x X/P slices (destination shard, its
    local expert) by one ragged all-to-all; each receiver lays its buffer out expert-major (all
    sources' rows of its expert 0, then expert 1, ...), so they arrive sorted for the grouped
    matmul, and a second ragged all-to-all (the mirror image) brings the results back."""
    shards = jax.lax.axis_size(AXIS)
    n, k = experts.shape
    A = n * k
    local_experts = cfg.moe.num_experts // shards
    cap = experts_lib.capacity(run.moe_capacity_factor, A, shards)

    # by expert, so by (destination shard, local expert)
    order, counts = experts_lib.sort_by_expert(experts, cfg.moe.num_experts)
    in_offsets = jnp.cumsum(counts) - counts
    send = experts_lib.kept_counts(counts, shards, cap)  # each destination's first `cap` rows
    cap = A if cap is None else cap  # dropless: a destination may receive all of a source's rows

    # what each source sends me per local expert, and where in its rows those slices start
    recv, src_offsets = jax.lax.all_to_all(jnp.stack([send, in_offsets]).reshape(2, shards, local_experts),
                                           AXIS, 1, 1, tiled=True)  # each [source, expert]
    src_offsets = src_offsets.reshape(-1)
    sizes = jnp.sum(recv, axis=0)  # rows per local expert
    at = (jnp.cumsum(sizes) - sizes)[None] + jnp.cumsum(recv, axis=0) - recv  # [source, expert]: expert-major
    out_offsets = jax.lax.all_to_all(at, AXIS, 0, 0, tiled=True).reshape(-1)  # where my slices land

    # buffers made like the rows they receive (zeros_like keeps what they vary over in the shard_map)
    received = ragged_all_to_all(x[order // k], jnp.zeros_like(x, shape=(shards * cap, x.shape[1])),
                                 in_offsets, send, out_offsets, recv.reshape(-1))
    y = experts_lib.grouped_ffn(received, sizes, wi, wo, run.moe_matmul)  # rows past sum(sizes) come out as 0
    y = jax.lax.psum(y, "tensor")  # each tensor shard held a slice of every expert's ffn
    back = ragged_all_to_all(y, jnp.zeros_like(y, shape=(A, y.shape[1])), at.reshape(-1), recv.reshape(-1),
                             src_offsets, send)  # dropped rows stay 0

    out = experts_lib.combine(back, order, weights, x.dtype)
    load = jax.lax.psum(counts.astype(jnp.float32), token_axes)
    dropped = jax.lax.psum((A - jnp.sum(send)).astype(jnp.float32), token_axes)
    return out, load, dropped


def routed_experts(x: jax.Array, weights: jax.Array, experts: jax.Array, wi: jax.Array, wo: jax.Array,
                   cfg: ModelConfig, run: RunConfig, batch_shape: tuple[int, int]) -> tuple[jax.Array, dict]:
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
        check_dispatch_tokens(run.moe_dispatch_tokens, n)
        m = min(run.moe_dispatch_tokens or n, n)  # fewer tokens than a round: one round
        if fsdp:
            wi = jax.lax.all_gather(wi, "fsdp", axis=1, tiled=True)  # once a layer, not once a round
            wo = jax.lax.all_gather(wo, "fsdp", axis=2, tiled=True)
        x, w, e = x.reshape(n // m, m, D), w.reshape(n // m, m, k), e.reshape(n // m, m, k)
        if n == m:
            out, load, dropped = _dispatch_local(x[0], w[0], e[0], wi, wo, cfg, run, used)
            return out.reshape(bl, tl, D), load, dropped

        @jax.checkpoint  # the backward pass keeps one round's buffers, not every round's
        def one_round(x, w, e, wi, wo):
            return _dispatch_local(x, w, e, wi, wo, cfg, run, used)

        def body(sums, xs):
            out, load, dropped = one_round(*xs, wi, wo)
            return (sums[0] + load, sums[1] + dropped), out

        zeros = (jnp.zeros((cfg.moe.num_experts,), jnp.float32), jnp.zeros((), jnp.float32))
        # scan_layers=False leaves no while loop in a layer (rounds unrolled): what glm_jax.aot's
        # loop-free variants need, since XLA's cost analysis counts a loop body once.
        (load, dropped), out = jax.lax.scan(body, zeros, (x, w, e), unroll=not run.scan_layers)
        return out.reshape(bl, tl, D), load, dropped

    fn = jax.shard_map(local, mesh=mesh,
                       in_specs=(row, row, row, P(AXIS, fsdp, None, "tensor"), P(AXIS, "tensor", fsdp)),
                       out_specs=(row, P(), P()),
                       check_vma=run.moe_matmul != "megablox")  # megablox's pallas_call declares no varying axes
    D = x.shape[1]
    out, load, dropped = fn(x.reshape(B, T, D), weights.reshape(B, T, k), experts.reshape(B, T, k), wi, wo)
    return out.reshape(B * T, D), {"load": load, "dropped": dropped}
