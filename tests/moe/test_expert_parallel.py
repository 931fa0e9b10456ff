"""Expert-parallel dispatch (glm_jax.model.expert_parallel): the ragged all-to-all that carries only
the rows each device sends, as JAX documents it, and the capacity option's drops on an expert mesh.
Loss and gradients on whole models across meshes: tests/moe/test_meshes.py."""

import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from glm_jax import config, sharding
from glm_jax.model import expert_parallel
from tests.conftest import tiny_moe


def _ragged_on_expert_axis(operands, outputs, in_off, send, out_off, recv):
    """Per-device arguments stacked on a leading axis of P -> per-device results, run on an
    `expert` mesh axis of P CPU devices."""
    shards = len(operands)
    mesh = jax.make_mesh((shards,), ("expert",), devices=jax.devices()[:shards])
    spec = P("expert")
    args = [jax.device_put(np.concatenate(a), NamedSharding(mesh, spec))
            for a in (operands, outputs, in_off, send, out_off, recv)]
    fn = jax.jit(jax.shard_map(expert_parallel.ragged_all_to_all, mesh=mesh, in_specs=(spec,) * 6, out_specs=spec))
    return np.asarray(fn(*args)).reshape(shards, *outputs[0].shape)


def _documented(operands, outputs, in_off, send, out_off):
    """jax.lax.ragged_all_to_all's docstring, as loops: slice i of device s goes to device
    i // (K / P) at the offset the sender names."""
    shards, K = len(operands), len(in_off[0])
    result = [o.copy() for o in outputs]
    for s in range(shards):
        for i in range(K):
            rows = operands[s][in_off[s][i]:in_off[s][i] + send[s][i]]
            dest = i // (K // shards)
            result[dest][out_off[s][i]:out_off[s][i] + len(rows)] = rows
    return np.stack(result)


def test_cpu_ragged_all_to_all_follows_the_documented_semantics():
    # JAX's own example (axis of 2): results [1, 3, 0, 0] and [2, 2, 4, 0]
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    got = _ragged_on_expert_axis([np.array([1, 2, 2], np.float32), np.array([3, 4, 0], np.float32)],
                                 [np.zeros(4, np.float32)] * 2, [i32(0, 1), i32(0, 1)], [i32(1, 2), i32(1, 1)],
                                 [i32(0, 0), i32(1, 2)], [i32(1, 1), i32(2, 1)])
    np.testing.assert_array_equal(got, [[1, 3, 0, 0], [2, 2, 4, 0]])

    # 4 devices, 2 slices per destination (the dispatch's (shard, local expert) slices), offsets
    # out of order and empty slices (the return trip's), rows of 3 features
    rng = np.random.default_rng(0)
    shards, per, rows = 4, 2, 10
    send = rng.multinomial(rows - 2, np.ones(shards * per) / (shards * per), size=shards).astype(np.int32)
    recv = send.reshape(shards, shards, per).transpose(1, 0, 2).reshape(shards, -1)  # recv[d, (s, e)] = send[s, (d, e)]
    in_off, out_off = [], np.zeros_like(send)
    for s in range(shards):
        perm = rng.permutation(shards * per)  # slices laid out in the operand in a shuffled order
        starts = np.zeros(shards * per, np.int32)
        starts[perm] = np.cumsum(send[s][perm]) - send[s][perm]
        in_off.append(starts)
    for d in range(shards):  # receiver d: expert-major, sources in order within an expert
        at = 0
        for e in range(per):
            for s in range(shards):
                out_off[s, d * per + e] = at
                at += send[s, d * per + e]
    operands = [rng.standard_normal((rows, 3)).astype(np.float32) for _ in range(shards)]
    outputs = [np.full((shards * rows, 3), -1.0, np.float32) for _ in range(shards)]  # untouched rows keep it
    got = _ragged_on_expert_axis(operands, outputs, in_off, list(send), list(out_off), list(recv))
    np.testing.assert_array_equal(got, _documented(operands, outputs, in_off, send, out_off))


def test_capacity_drops_each_devices_rows_past_cap_per_destination_and_counts_them():
    """expert=4, 8 experts (2 a shard), k=2, cf=1: each device sends at most ceil(16 / 4) = 4 of its
    16 assignments to a shard, its lowest experts' first; most go to shard 0, so most are dropped.
    The output is what the kept assignments' experts compute, weighted; drops are counted."""
    cfg, run = tiny_moe(num_experts=8, experts_per_token=2), config.RunConfig(moe_capacity_factor=1.0)
    shards, B, T, D, C = 4, 4, 8, cfg.hidden_size, cfg.moe.ffn_hidden_size
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B * T, D)).astype(np.float32)
    experts = np.where(rng.random((B * T, 2)) < 0.8, rng.integers(0, 2, (B * T, 2)), rng.integers(0, 8, (B * T, 2)))
    experts[:, 1] = np.where(experts[:, 1] == experts[:, 0], (experts[:, 0] + 3) % 8, experts[:, 1])
    experts = experts.astype(np.int32)
    weights = rng.random((B * T, 2)).astype(np.float32)
    wi = (0.1 * rng.standard_normal((8, D, 2, C))).astype(np.float32)
    wo = (0.1 * rng.standard_normal((8, C, D))).astype(np.float32)

    mesh = sharding.make_mesh(config.MeshConfig(fsdp=1, expert=shards), jax.devices()[:shards])
    with jax.set_mesh(mesh):
        out, stats = jax.jit(lambda *a: expert_parallel.routed_experts(*a, cfg, run, (B, T)))(x, weights, experts, wi, wo)

    want, dropped = np.zeros_like(x), 0
    cap = math.ceil(run.moe_capacity_factor * T * 2 / shards)
    for b in range(B):  # row b is device b's: its T tokens' 2T assignments
        flat = experts[b * T:(b + 1) * T].reshape(-1)
        order = np.argsort(flat, kind="stable")
        rank = np.zeros(len(flat), int)
        for dest in range(shards):
            mine = order[flat[order] // 2 == dest]
            rank[mine] = np.arange(len(mine))
        for a in range(len(flat)):
            t, j = b * T + a // 2, a % 2
            if rank[a] >= cap:
                dropped += 1
                continue
            e = flat[a]
            h = x[t] @ wi[e].reshape(D, 2 * C)
            gate, up = h[:C], h[C:]
            want[t] += weights[t, j] * ((gate / (1 + np.exp(-gate)) * up) @ wo[e])
    assert dropped > 0.3 * B * T * 2  # the case does drop
    assert float(stats["dropped"]) == dropped
    np.testing.assert_array_equal(stats["load"], np.bincount(experts.reshape(-1), minlength=8))
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
